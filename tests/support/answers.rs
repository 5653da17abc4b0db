//! What a store answers about its content, as JSON, the check that a store
//! opened from a fixture of an older format answers as the code of that
//! format did, and directory copies: shared by the fixture, migration and
//! rebuild tests (`#[path]`-included).
#![allow(dead_code)] // each test file uses a part of it

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hearth::core::WireId;
use hearth::store::Store;
use hearth::{ChannelId, Config, KdfParams};
use serde_json::{Value, json};

/// Every feed of every channel: its device and its last seq, by channel
/// wire id (hex).
pub type Feeds = BTreeMap<String, BTreeMap<String, u64>>;

/// The passphrase of every fixture store.
pub const FIXTURE_PASS: &str = "fixture passphrase";

/// The fixtures of a store format (`v1`, `v2`, ..): the workspace's
/// `tests/fixtures/<format>/`, found from the including crate (the facade is
/// the workspace's root, the CLI a folder below it).
pub fn fixture(format: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = here
        .ancestors()
        .map(|d| d.join("tests/fixtures"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no tests/fixtures above {}", here.display()));
    all.join(format)
}

/// The config the fixtures are opened with.
pub fn fixture_config() -> Config {
    // Small epochs, so that a few dozen messages span several epoch documents.
    Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_epoch_messages(8)
}

/// What the code of `format` answered about its fixture store `name`
/// (`<name>.answers.json`): `answers` and `feeds`.
pub fn fixture_answers(format: &str, name: &str) -> Value {
    let path = fixture(format).join(format!("{name}.answers.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("answers")).expect("answers json")
}

/// Asserts that `s`, the fixture store `name` opened (and so migrated) by
/// today's code, answers what the code that wrote it answered (`expected`,
/// from [`fixture_answers`]), once it has sent the receipts it owed, as that
/// code had: the same content, this device's present and former ids taken as
/// one ([`this_device`]); every remote feed whole, and this device's own
/// feeds no shorter. Returns the feeds it holds.
pub async fn assert_answers_as_written(s: &Store, expected: &Value, name: &str) -> Feeds {
    s.flush_receipts().await.expect("receipts");
    let got = answers(s).await;
    assert_eq!(
        this_device(&got, s),
        this_device(&expected["answers"], s),
        "{name}: answers differ after migration"
    );
    let held = feeds(s).await;
    // Remote feeds come back exactly; this device's own feed may have more
    // entries (journal replay closes its own), never fewer.
    let want: Feeds = serde_json::from_value(expected["feeds"].clone()).expect("feeds json");
    let old_device = expected["answers"]["device"].as_str().expect("device");
    let new_id = s.whoami().device.to_string();
    for (wire, feeds) in &want {
        for (device, seq) in feeds {
            let mut have = held.get(wire).and_then(|f| f.get(device)).copied().unwrap_or(0);
            if device == old_device {
                // What this device wrote at this open (receipts owed) went
                // to its new feed.
                have += held.get(wire).and_then(|f| f.get(&new_id)).copied().unwrap_or(0);
            }
            assert!(have >= *seq, "{name}: feed {wire}/{device} has {have} of {seq}");
        }
    }
    held
}

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
pub async fn feeds(s: &Store) -> Feeds {
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
