//! Encryption at rest: no file under a store directory holds a message text, an
//! edit, a reaction, a channel name (old or new), the user's name, a channel id
//! or the passphrase as raw bytes — after a clean close, and while the store is
//! still open, both with acknowledged writes only in the journal and after a
//! forced checkpoint has pushed them into sled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth::{ChannelId, Config, Hearth, KdfParams, MessageId, Passphrase};

const PASS: &str = "at-rest passphrase ocelot-verdigris-7731";
const USER: &str = "Zebulon Quixote-Userlandia";
const CHANNEL_A: &str = "channel-aardvark-marmalade";
const CHANNEL_A_RENAMED: &str = "renamed-xylophone-lagoon";
const CHANNEL_B: &str = "channel-quokka-tangerine";
const REACTION: &str = ":zanzibar-reaction:";
/// Every marker text carries this, so a partial leak of any of them is caught too.
const FRAGMENT: &str = "pomegranate-syzygy";
const MESSAGES: usize = 100;

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn marker(kind: &str, i: usize) -> String {
    format!(
        "{kind}-{i:03}-{FRAGMENT}-{:08x}",
        (i as u64 + 1).wrapping_mul(0x9e37_79b9) as u32
    )
}

/// The byte strings that must never reach the disk.
struct Needles {
    items: Vec<(String, Vec<u8>)>,
}

impl Needles {
    fn new() -> Self {
        let mut n = Needles { items: Vec::new() };
        for s in [PASS, USER, CHANNEL_A, CHANNEL_A_RENAMED, CHANNEL_B, REACTION, FRAGMENT] {
            n.push(s, s.as_bytes());
        }
        n
    }

    fn push(&mut self, label: impl Into<String>, bytes: &[u8]) {
        assert!(bytes.len() >= 8, "needles are at least 8 bytes");
        self.items.push((label.into(), bytes.to_vec()));
    }

    fn text(&mut self, s: &str) {
        self.push(s, s.as_bytes());
    }

    fn channel(&mut self, id: ChannelId) {
        self.push(format!("channel id {id} (raw)"), id.as_bytes());
        self.push(format!("channel id {id} (hex)"), id.to_hex().as_bytes());
    }

    /// Every needle found in `hay`, in one pass whatever the number of needles:
    /// a table of first byte pairs filters positions, a map of 8-byte prefixes
    /// finds candidates (zero-filled regions cost next to nothing).
    fn find_in(&self, hay: &[u8]) -> Vec<&str> {
        let mut pairs = vec![false; 1 << 16];
        let mut by_prefix: HashMap<&[u8], Vec<&(String, Vec<u8>)>> = HashMap::new();
        for item in &self.items {
            pairs[usize::from(item.1[0]) << 8 | usize::from(item.1[1])] = true;
            by_prefix.entry(&item.1[..8]).or_default().push(item);
        }
        let mut found = Vec::new();
        for (start, w) in hay.windows(8).enumerate() {
            if !pairs[usize::from(w[0]) << 8 | usize::from(w[1])] {
                continue;
            }
            for (label, bytes) in by_prefix.get(w).into_iter().flatten() {
                if hay[start..].starts_with(bytes) && !found.contains(&label.as_str()) {
                    found.push(label.as_str());
                }
            }
        }
        found
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() { files_under(&p, out) } else { out.push(p) }
    }
}

/// Scan every file under `dir`; returns the bytes scanned per top-level name.
fn assert_no_plaintext(dir: &Path, needles: &Needles, when: &str) -> HashMap<String, u64> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    let mut sizes: HashMap<String, u64> = HashMap::new();
    for f in &files {
        let bytes = std::fs::read(f).expect("read a store file");
        let found = needles.find_in(&bytes);
        assert!(found.is_empty(), "{when}: {} holds plaintext: {found:?}", f.display());
        let name = needles.find_in(f.strip_prefix(dir).expect("under dir").as_os_str().as_encoded_bytes());
        assert!(
            name.is_empty(),
            "{when}: a file name holds plaintext: {}: {name:?}",
            f.display()
        );
        let top = f
            .strip_prefix(dir)
            .expect("under dir")
            .components()
            .next()
            .expect("a name");
        *sizes.entry(top.as_os_str().to_string_lossy().into_owned()).or_default() += bytes.len() as u64;
    }
    assert!(
        sizes.get("db").is_some_and(|&n| n > 0),
        "{when}: no sled files scanned: {sizes:?}"
    );
    assert!(
        sizes.contains_key("header") && sizes.contains_key("journal"),
        "{when}: {sizes:?}"
    );
    sizes
}

struct Written {
    a: ChannelId,
    b: ChannelId,
    /// Every message with the text it must read back as.
    texts: Vec<(MessageId, String)>,
    reacted: Vec<MessageId>,
}

/// 100 posts over two channels, some edited, some reacted to, some replied to,
/// one channel renamed.
async fn populate(h: &Hearth, needles: &mut Needles) -> Written {
    let a = h.create_channel(CHANNEL_A).await.expect("create a");
    let b = h.create_channel(CHANNEL_B).await.expect("create b");
    needles.channel(a);
    needles.channel(b);
    let mut w = Written {
        a,
        b,
        texts: Vec::new(),
        reacted: Vec::new(),
    };
    for i in 0..MESSAGES {
        let text = marker("post", i);
        needles.text(&text);
        let id = h.post(if i % 3 == 0 { b } else { a }, &text).await.expect("post");
        let mut current = text;
        if i % 4 == 0 {
            current = marker("edit", i);
            needles.text(&current);
            h.edit(id, &current).await.expect("edit");
        }
        if i % 5 == 0 {
            h.react(id, REACTION).await.expect("react");
            w.reacted.push(id);
        }
        if i % 7 == 0 {
            let reply = marker("reply", i);
            needles.text(&reply);
            let r = h.reply(id, &reply).await.expect("reply");
            w.texts.push((r, reply));
        }
        w.texts.push((id, current));
    }
    h.rename_channel(a, CHANNEL_A_RENAMED).await.expect("rename");
    w
}

/// The data really was written: every text reads back (so the scan did not pass
/// because nothing reached the disk).
async fn assert_readable(h: &Hearth, w: &Written) {
    for (id, text) in &w.texts {
        assert_eq!(
            h.message(*id).await.expect("message").message.text.as_deref(),
            Some(text.as_str())
        );
    }
    for id in &w.reacted {
        assert_eq!(
            h.message(*id).await.expect("message").message.reactions[REACTION].len(),
            1
        );
    }
    assert_eq!(h.channel(w.a).await.expect("a").name, CHANNEL_A_RENAMED);
    assert_eq!(h.channel(w.b).await.expect("b").name, CHANNEL_B);
    assert_eq!(h.whoami().name, USER);
}

#[test]
fn needle_search_finds_what_it_looks_for() {
    let mut n = Needles::new();
    n.text(&marker("post", 7));
    let hay = [b"xx".as_slice(), marker("post", 7).as_bytes(), b"yy", USER.as_bytes()].concat();
    let mut found = n.find_in(&hay);
    found.sort();
    let mut expect = vec![marker("post", 7), USER.to_string(), FRAGMENT.to_string()];
    expect.sort();
    assert_eq!(found, expect);
    assert!(n.find_in(b"nothing to see here, really nothing").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_holds_no_plaintext() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let pass = Passphrase::new(PASS);
    let mut needles = Needles::new();
    let h = Hearth::create(&dir, &pass, USER, config()).await.expect("create");
    let w = populate(&h, &mut needles).await;
    h.close().await.expect("close");
    let sizes = assert_no_plaintext(&dir, &needles, "after close");
    assert!(sizes["db"] > 4096, "{sizes:?}");

    // Reopening (which reads, snapshots and checkpoints) leaks nothing either.
    let h = Hearth::open(&dir, &pass, config()).await.expect("reopen");
    assert_readable(&h, &w).await;
    let report = h.verify().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    h.close().await.expect("close");
    assert_no_plaintext(&dir, &needles, "after reopen and close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_store_holds_no_plaintext_in_its_journal_or_sled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let pass = Passphrase::new(PASS);
    let mut needles = Needles::new();
    // No timed checkpoint: the writes stay in the journal until we force one.
    let config = config().with_checkpoint_interval(Duration::from_secs(3600));
    let h = Hearth::create(&dir, &pass, USER, config).await.expect("create");
    let w = populate(&h, &mut needles).await;
    assert_readable(&h, &w).await;

    // The acknowledged writes are in the journal (whatever its layout: it has
    // bytes that are not zero) while the scan runs.
    let journal = std::fs::read(dir.join("journal")).expect("journal");
    assert!(journal.iter().any(|b| *b != 0), "the writes should be in the journal");
    assert_no_plaintext(&dir, &needles, "open, before a checkpoint");

    h.plumbing().store().checkpoint().await.expect("checkpoint");
    assert_no_plaintext(&dir, &needles, "open, after a checkpoint");

    // More writes on top of the checkpoint, still open.
    let late = marker("late", 0);
    needles.text(&late);
    let id = h.post(w.b, &late).await.expect("post");
    assert_no_plaintext(&dir, &needles, "open, after a late post");
    assert_eq!(
        h.message(id).await.expect("message").message.text.as_deref(),
        Some(late.as_str())
    );
    h.close().await.expect("close");
    assert_no_plaintext(&dir, &needles, "after close");
}

/// Regression: `Store::checkpoint` ("make every acknowledged write durable in
/// sled and empty the journal now") used to flush sled only and leave the
/// journal's bytes counted in `Stats::journal_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_checkpoint_empties_the_journal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let config = config().with_checkpoint_interval(Duration::from_secs(3600));
    let h = Hearth::create(&dir, &Passphrase::new(PASS), USER, config)
        .await
        .expect("create");
    let c = h.create_channel(CHANNEL_B).await.expect("channel");
    h.post(c, &marker("post", 0)).await.expect("post");
    assert!(
        h.stats().await.expect("stats").journal_bytes > 0,
        "the post is in the journal"
    );
    h.plumbing().store().checkpoint().await.expect("checkpoint");
    assert_eq!(
        h.stats().await.expect("stats").journal_bytes,
        0,
        "journal left after checkpoint()"
    );
    h.close().await.expect("close");
}

/// Every directory under a store and its relay is 0700 and every file 0600,
/// whatever the umask (sled makes its files with it); a store found looser
/// (copied by hand, restored from a backup) is tightened at open and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_relay_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    fn loose(dir: &Path) -> Vec<(PathBuf, u32)> {
        let mut paths = vec![dir.to_path_buf()];
        let mut i = 0;
        while i < paths.len() {
            if paths[i].is_dir() {
                let more: Vec<PathBuf> = std::fs::read_dir(&paths[i])
                    .expect("read_dir")
                    .map(|e| e.expect("entry").path())
                    .collect();
                paths.extend(more);
            }
            i += 1;
        }
        paths
            .into_iter()
            .filter_map(|p| {
                let mode = std::fs::symlink_metadata(&p).ok()?.permissions().mode() & 0o777;
                let want = if p.is_dir() { 0o700 } else { 0o600 };
                (mode & !want != 0).then_some((p, mode))
            })
            .collect()
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("store");
    let pass = Passphrase::new(PASS);
    let h = Hearth::create(&dir, &pass, USER, config()).await.expect("create");
    let c = h.create_channel(CHANNEL_A).await.expect("channel");
    for i in 0..50 {
        h.post(c, &marker("perm", i)).await.expect("post");
    }
    h.plumbing().store().checkpoint().await.expect("checkpoint");
    assert_eq!(loose(&dir), vec![], "an open store");
    h.close().await.expect("close");
    assert_eq!(loose(&dir), vec![], "a closed store");

    // Loosened by hand: the next open tightens it and reports what it found.
    for p in [dir.clone(), dir.join("db")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for p in [dir.join("header"), dir.join("journal"), dir.join("db").join("conf")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let h = Hearth::open(&dir, &pass, config()).await.expect("open");
    let mut found = h.open_report().loose_permissions.clone();
    found.sort();
    assert_eq!(found, [".", "db", "db/conf", "header", "journal"].map(String::from));
    assert_eq!(loose(&dir), vec![]);
    h.close().await.expect("close");
    let h = Hearth::open(&dir, &pass, config()).await.expect("open");
    assert!(h.open_report().loose_permissions.is_empty(), "tight now");
    h.close().await.expect("close");

    let relay_dir = tmp.path().join("relay");
    let relay = hearth::sync::RelayStore::open(&relay_dir).expect("relay");
    drop(relay);
    assert_eq!(loose(&relay_dir), vec![], "a relay");
}
