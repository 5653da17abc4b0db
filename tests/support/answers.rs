//! What a store answers about its content, as JSON, and directory copies:
//! shared by the fixture and rebuild tests (`#[path]`-included).
#![allow(dead_code)] // each test file uses a part of it

use std::collections::BTreeMap;
use std::path::Path;

use hearth::core::WireId;
use hearth::{ChannelId, Store};
use serde_json::{Value, json};

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Everything a store answers about its content, as JSON (sorted, so two
/// stores with the same content give the same text).
pub async fn answers(s: &Store) -> Value {
    let me = s.whoami();
    let mut channels = BTreeMap::new();
    for info in s.channels().await.expect("channels") {
        let c = info.id;
        let page = s.page(c, None, 100_000).await.expect("page");
        let mut threads = BTreeMap::new();
        let mut receipts = BTreeMap::new();
        for m in &page {
            let t = s.thread(m.id).await.expect("thread");
            for msg in std::iter::once(&t.root).chain(&t.replies) {
                let r = s.receipts(msg.id).await.expect("receipts");
                let mut delivered: Vec<String> = r.delivered.iter().map(|(u, d)| format!("{u}/{d}")).collect();
                delivered.sort();
                let read: Vec<String> = r.read.iter().map(|u| u.to_string()).collect();
                receipts.insert(msg.id.to_string(), json!({ "delivered": delivered, "read": read }));
                let located = s.message(msg.id).await.expect("message");
                assert_eq!(located.channel, c);
                assert_eq!(&located.message, msg);
            }
            threads.insert(m.id.to_string(), serde_json::to_value(&t).expect("thread json"));
        }
        let members: BTreeMap<String, String> = s
            .members(c)
            .await
            .expect("members")
            .into_iter()
            .map(|(u, n)| (u.to_string(), n))
            .collect();
        channels.insert(
            c.to_string(),
            json!({
                "info": info,
                "unread": s.unread(c).await.expect("unread"),
                "page": page,
                "threads": threads,
                "receipts": receipts,
                "members": members,
            }),
        );
    }
    let report = s.verify().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    json!({
        "user": me.user.to_string(),
        "device": me.device.to_string(),
        "name": me.name,
        "channels": channels,
    })
}

/// Answers with this device's ids (present and former) written as one:
/// a device that moved to its keyed id (store format 7) is the same device,
/// whose receipts written after the move name its new id.
pub fn this_device(answers: &Value, s: &Store) -> Value {
    let me = s.whoami();
    let mut text = answers.to_string();
    for id in std::iter::once(&me.device).chain(&me.former) {
        text = text.replace(&id.to_string(), "this-device");
    }
    serde_json::from_str(&text).expect("json")
}

/// Every feed of every channel (device and seq): what sync would see.
pub async fn feeds(s: &Store) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (wire, v) in s.vectors().await.expect("vectors") {
        let feeds = v.0.iter().map(|(d, p)| (d.to_string(), p.seq)).collect();
        out.insert(hex(&wire), feeds);
    }
    out
}

fn hex(w: &WireId) -> String {
    w.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// Move what `from` holds of a channel that `to` lacks.
pub async fn pull(from: &Store, to: &Store, channel: ChannelId) {
    let wire = from.channel_keys(channel).await.expect("keys").wire();
    loop {
        let have = to.vector(channel).await.expect("vector");
        let batch = from.entries_after(wire, have, 64 * 1024, 64).await.expect("entries");
        if batch.entries.is_empty() {
            return;
        }
        let r = to.ingest(wire, batch.entries).await.expect("ingest");
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    }
}

/// Every file under `dir`, at any depth.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether any file under `dir` holds `needle`.
pub fn holds(dir: &Path, needle: &[u8]) -> bool {
    files(dir)
        .iter()
        .any(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
}
