//! Bad input gets a typed error, never a panic, and never costs stored data:
//! wrong passphrase, a store opened twice, oversized and empty texts, ids and
//! channels that do not exist, directories that are not stores, and damaged
//! files (header, journal, sled's own files). Whatever a damaged store returns,
//! every text it returns is one that was written for that id.
//!
//! A store task that panics shows up as `Error::Closed` on a handle that was
//! never closed; the checks below treat that as the failure it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth::{ChannelId, Config, Error, Hearth, KdfParams, MAX_TEXT_BYTES, MessageId, Passphrase};

const PASS: &str = "bad input passphrase";

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn pass() -> Passphrase {
    Passphrase::new(PASS)
}

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// What was written, in order: id and the text it must read back as.
#[derive(Clone, Default)]
struct Written {
    channel: Option<ChannelId>,
    /// Checkpointed before any damage.
    early: Vec<(MessageId, String)>,
    /// Written after the checkpoint, one journal record each.
    late: Vec<(MessageId, String)>,
    /// A thread root among `early`.
    root: Option<MessageId>,
}

impl Written {
    fn channel(&self) -> ChannelId {
        self.channel.expect("a channel")
    }

    fn texts(&self) -> BTreeMap<MessageId, String> {
        self.early.iter().chain(&self.late).cloned().collect()
    }
}

async fn create(dir: &Path, config: Config) -> Hearth {
    Hearth::create(dir, &pass(), "bad-input tester", config)
        .await
        .expect("create")
}

async fn open(dir: &Path) -> Hearth {
    Hearth::open(dir, &pass(), config()).await.expect("open")
}

/// A channel with posts, replies, an edit and a reaction, checkpointed; then
/// `late` more posts that only the journal holds (no timed checkpoint).
async fn populate(h: &Hearth, early: usize, late: usize) -> Written {
    let mut w = populate_early(h, early).await;
    post_late(h, &mut w, late).await;
    w
}

async fn populate_early(h: &Hearth, early: usize) -> Written {
    let channel = h.create_channel("general").await.expect("channel");
    let mut w = Written {
        channel: Some(channel),
        ..Written::default()
    };
    for i in 0..early {
        let id = h.post(channel, &format!("early post {i}")).await.expect("post");
        w.early.push((id, format!("early post {i}")));
        if i == 0 {
            w.root = Some(id);
        }
        if i % 5 == 4 {
            let r = h
                .reply(w.root.expect("root"), &format!("early reply {i}"))
                .await
                .expect("reply");
            w.early.push((r, format!("early reply {i}")));
        }
    }
    let (edited, _) = w.early[1].clone();
    h.edit(edited, "early post 1, edited").await.expect("edit");
    w.early[1].1 = "early post 1, edited".into();
    h.react(w.early[2].0, "👍").await.expect("react");
    h.plumbing().store().checkpoint().await.expect("checkpoint");
    w
}

async fn post_late(h: &Hearth, w: &mut Written, late: usize) {
    for i in 0..late {
        let id = h.post(w.channel(), &format!("late post {i}")).await.expect("post");
        w.late.push((id, format!("late post {i}")));
    }
}

/// Read everything that can be read, asserting no panic (a dead store task) and
/// no wrong text; returns which written ids read back and whether verify was clean.
struct Probe {
    readable: BTreeMap<MessageId, String>,
    clean: bool,
    errors: Vec<String>,
}

fn closed_means_panic<T>(what: &str, r: Result<T, Error>, errors: &mut Vec<String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(Error::Closed) => panic!("{what}: the store task died (a panic) on a handle that was never closed"),
        Err(e) => {
            errors.push(format!("{what}: {e}"));
            None
        }
    }
}

async fn probe(h: &Hearth, w: &Written, ctx: &str) -> Probe {
    let texts = w.texts();
    let mut p = Probe {
        readable: BTreeMap::new(),
        clean: false,
        errors: Vec::new(),
    };
    let check = |id: &MessageId, text: &Option<String>| {
        if let Some(t) = text {
            assert_eq!(Some(t), texts.get(id), "{ctx}: wrong text for {id}");
        }
    };
    for (id, _) in texts.iter() {
        // A message that is not there shows in `readable`; NotFound is no error here.
        let r = h.message(*id).await;
        if matches!(r, Err(Error::NotFound { .. })) {
            continue;
        }
        if let Some(loc) = closed_means_panic("message", r, &mut p.errors) {
            check(id, &loc.message.text);
            assert_eq!(loc.message.id, *id, "{ctx}");
            if let Some(t) = loc.message.text {
                p.readable.insert(*id, t);
            }
        }
    }
    if let Some(channels) = closed_means_panic("channels", h.channels().await, &mut p.errors) {
        for c in channels {
            let mut before = None;
            while let Some(page) = closed_means_panic("page", h.page(c.id, before, 16).await, &mut p.errors) {
                let Some(last) = page.last() else { break };
                assert!(
                    before.is_none_or(|b| last.id < b),
                    "{ctx}: paging does not move back in time"
                );
                before = Some(last.id);
                page.iter().for_each(|m| check(&m.id, &m.text));
            }
        }
    }
    if let Some(root) = w.root
        && let Some(t) = closed_means_panic("thread", h.thread(root).await, &mut p.errors)
    {
        check(&t.root.id, &t.root.text);
        t.replies.iter().for_each(|m| check(&m.id, &m.text));
    }
    if let Some(r) = closed_means_panic("verify", h.verify().await, &mut p.errors) {
        p.clean = r.is_clean();
    }
    closed_means_panic("stats", h.stats().await, &mut p.errors);
    p
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn flip(path: &Path, pos: usize, mask: u8) {
    let mut b = std::fs::read(path).expect("read");
    b[pos] ^= mask;
    std::fs::write(path, b).expect("write");
}

fn is_prefix(recovered: &BTreeMap<MessageId, String>, late: &[(MessageId, String)]) -> usize {
    let n = late.iter().take_while(|(id, _)| recovered.contains_key(id)).count();
    assert!(
        late[n..].iter().all(|(id, _)| !recovered.contains_key(id)),
        "recovered late posts are not a prefix"
    );
    n
}

// ----- passphrase, lock, directories -----

#[tokio::test]
async fn a_wrong_passphrase_is_told_apart_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = create(tmp.path(), config()).await;
    let w = populate(&h, 3, 0).await;
    h.close().await.expect("close");
    for wrong in ["bad input passphrasE", "", "bad input passphrase "] {
        let r = Hearth::open(tmp.path(), &Passphrase::new(wrong), config()).await;
        assert!(matches!(r, Err(Error::WrongPassphrase)), "{wrong:?}: {r:?}");
    }
    let h = open(tmp.path()).await;
    let p = probe(&h, &w, "after wrong passphrases").await;
    assert_eq!(p.readable, w.texts());
    assert!(p.clean && p.errors.is_empty(), "{:?}", p.errors);
    h.close().await.expect("close");
}

#[tokio::test]
async fn a_store_open_twice_is_locked_until_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = create(tmp.path(), config()).await;
    let w = populate(&h, 3, 0).await;
    let again = Hearth::open(tmp.path(), &pass(), config()).await;
    assert!(
        matches!(again, Err(Error::Locked { ref path }) if path.ends_with(tmp.path().file_name().unwrap())),
        "{again:?}"
    );
    // Locked comes first, whatever the passphrase (the key is unlocked
    // while the lock is taken, on another thread).
    let wrong = Hearth::open(tmp.path(), &Passphrase::new("not the passphrase"), config()).await;
    assert!(matches!(wrong, Err(Error::Locked { .. })), "{wrong:?}");
    // The holder is unharmed.
    assert_eq!(
        h.message(w.early[0].0).await.expect("message").message.text.as_deref(),
        Some("early post 0")
    );
    h.close().await.expect("close");
    let h = open(tmp.path()).await;
    assert_eq!(probe(&h, &w, "reopened").await.readable, w.texts());
    h.close().await.expect("close");
}

#[tokio::test]
async fn directories_that_are_not_stores_and_stores_that_exist() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let r = Hearth::open(&empty, &pass(), config()).await;
    assert!(matches!(r, Err(Error::NotAStore { .. })), "{r:?}");
    // Nothing is made in it (no lock file either).
    assert_eq!(std::fs::read_dir(&empty).expect("read_dir").count(), 0);
    let missing = tmp.path().join("missing");
    let r = Hearth::open(&missing, &pass(), config()).await;
    assert!(matches!(r, Err(Error::NotAStore { .. })), "{r:?}");
    assert!(!missing.exists(), "opening must not create the directory");
    assert!(!Hearth::exists(&empty));

    let store = tmp.path().join("store");
    let h = create(&store, config()).await;
    let w = populate(&h, 3, 0).await;
    h.close().await.expect("close");
    assert!(Hearth::exists(&store));
    let r = Hearth::create(&store, &Passphrase::new("another"), "mallory", config()).await;
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    let h = open(&store).await;
    assert_eq!(h.whoami().name, "bad-input tester");
    assert_eq!(probe(&h, &w, "after a refused create").await.readable, w.texts());
    h.close().await.expect("close");
}

// ----- bad writes and unknown ids -----

#[tokio::test]
async fn bad_writes_are_refused_with_typed_errors_and_store_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = create(tmp.path(), config()).await;
    let w = populate(&h, 3, 0).await;
    let (c, m) = (w.channel(), w.early[0].0);
    let big = "x".repeat(MAX_TEXT_BYTES + 1);
    let big_multibyte = "é".repeat(MAX_TEXT_BYTES / 2 + 1);
    let before = h.stats().await.expect("stats");

    for (what, r) in [
        ("post", h.post(c, &big).await.map(drop)),
        ("post, multibyte", h.post(c, &big_multibyte).await.map(drop)),
        ("reply", h.reply(m, &big).await.map(drop)),
        ("edit", h.edit(m, &big).await),
        ("channel name", h.create_channel(&"n".repeat(1000)).await.map(drop)),
        ("rename", h.rename_channel(c, &"n".repeat(1000)).await),
        ("reaction", h.react(m, &"👍".repeat(100)).await),
    ] {
        assert!(matches!(r, Err(Error::TooLarge { .. })), "{what}: {r:?}");
    }
    for (what, r) in [
        ("post", h.post(c, "").await.map(drop)),
        ("reply", h.reply(m, "").await.map(drop)),
        ("edit", h.edit(m, "").await),
        ("reaction", h.react(m, "").await),
        ("reaction with a space", h.react(m, "thumbs up").await),
        ("channel name with a newline", h.create_channel("a\nb").await.map(drop)),
    ] {
        assert!(matches!(r, Err(Error::Invalid { .. })), "{what}: {r:?}");
    }
    // The limit itself is accepted.
    let max = "y".repeat(MAX_TEXT_BYTES);
    let max_id = h.post(c, &max).await.expect("a text of exactly MAX_TEXT_BYTES");

    let after = h.stats().await.expect("stats");
    assert_eq!(after.messages, before.messages + 1);
    assert_eq!(after.channels, before.channels);
    h.close().await.expect("close");
    let h = open(tmp.path()).await;
    let mut expect = w.clone();
    expect.early.push((max_id, max));
    let p = probe(&h, &expect, "after refused writes").await;
    assert_eq!(p.readable, expect.texts());
    assert!(p.clean && p.errors.is_empty(), "{:?}", p.errors);
    assert!(h.message(m).await.expect("message").message.reactions.is_empty());
    h.close().await.expect("close");
}

#[tokio::test]
async fn unknown_messages_and_channels_are_not_found() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = create(tmp.path(), config()).await;
    let w = populate(&h, 3, 0).await;
    let c = w.channel();
    let real = w.early[0].0;
    // Well-formed ids that name nothing: a real id with its clock moved, one in
    // an epoch the channel does not have, one of a channel tag nobody uses.
    let mut shifted = real.0;
    shifted[7] ^= 0x55;
    let mut far_epoch = real.0;
    far_epoch[8..12].copy_from_slice(&9_999u32.to_be_bytes());
    let mut other_tag = real.0;
    other_tag[12] ^= 0xff;
    // The library takes any 20 bytes, even an id in the metadata epoch (0).
    let mut meta_epoch = real.0;
    meta_epoch[8..12].copy_from_slice(&0u32.to_be_bytes());
    for ghost in [
        MessageId(shifted),
        MessageId(far_epoch),
        MessageId(other_tag),
        MessageId(meta_epoch),
    ] {
        let nf = |what: &str, r: Result<(), Error>| {
            assert!(
                matches!(r, Err(Error::NotFound { what: "message", .. })),
                "{what} {ghost}: {r:?}"
            );
        };
        nf("message", h.message(ghost).await.map(drop));
        nf("thread", h.thread(ghost).await.map(drop));
        nf("react", h.react(ghost, "👍").await);
        nf("unreact", h.unreact(ghost, "👍").await);
        nf("edit", h.edit(ghost, "new text").await);
        nf("delete", h.delete(ghost).await);
        nf("reply", h.reply(ghost, "hello?").await.map(drop));
        nf("reply queued", {
            match h.queue_post(c, "hello?", Some(ghost)).await {
                Ok(ack) => ack.await.map(drop),
                Err(e) => Err(e),
            }
        });
        nf("mark_read", h.mark_read(c, Some(ghost)).await);
        nf("page cursor", h.page(c, Some(ghost), 10).await.map(drop));
    }

    let ghost = ChannelId([0x42; 32]);
    let nf = |what: &str, r: Result<(), Error>| {
        assert!(
            matches!(r, Err(Error::NotFound { what: "channel", .. })),
            "{what}: {r:?}"
        );
    };
    nf("post", h.post(ghost, "into the void").await.map(drop));
    nf("page", h.page(ghost, None, 10).await.map(drop));
    nf("rename", h.rename_channel(ghost, "x").await);
    nf("mark_read", h.mark_read(ghost, None).await);
    nf("unread", h.unread(ghost).await.map(drop));
    nf("channel", h.channel(ghost).await.map(drop));
    nf("members", h.members(ghost).await.map(drop));
    nf("resolve by name", h.resolve_channel("no such channel").await.map(drop));
    nf("resolve by id", h.resolve_channel(&ghost.to_hex()).await.map(drop));
    nf("resolve by prefix", h.resolve_channel("4242").await.map(drop));

    let p = probe(&h, &w, "after unknown ids").await;
    assert_eq!(p.readable, w.texts());
    assert!(p.clean && p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(h.stats().await.expect("stats").messages, w.early.len() as u64);
    h.close().await.expect("close");
}

/// Regression: `Engine::page` computed `limit - 1` when deciding whether to load
/// another epoch; with `limit == 0` that underflowed and panicked the store task
/// in builds with overflow checks.
#[tokio::test]
async fn a_page_of_zero_messages_is_empty_and_harmless() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = create(tmp.path(), config()).await;
    let w = populate(&h, 3, 0).await;
    let page = h.page(w.channel(), None, 0).await;
    assert!(matches!(page, Ok(ref p) if p.is_empty()), "{page:?}");
    let p = probe(&h, &w, "after a page of 0").await;
    assert_eq!(p.readable, w.texts());
    h.close().await.expect("close");
}

// ----- damaged files -----

#[tokio::test]
async fn a_damaged_header_is_corrupted_not_a_wrong_passphrase() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = create(tmp.path(), config()).await;
    let w = populate(&h, 3, 0).await;
    h.close().await.expect("close");
    let path = tmp.path().join("header");
    let good = std::fs::read(&path).expect("header");

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for len in [0, 1, 8, 9, good.len() / 2, good.len() - 32, good.len() - 1] {
        cases.push((format!("truncated to {len}"), good[..len].to_vec()));
    }
    cases.push(("a byte appended".into(), [good.as_slice(), &[0]].concat()));
    cases.push(("oversized".into(), vec![7; 10_000]));
    for pos in 0..good.len() {
        let mut b = good.clone();
        b[pos] ^= 1 << (pos % 8);
        cases.push((format!("bit flipped at {pos}"), b));
    }
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).expect("write header");
        let r = Hearth::open(tmp.path(), &pass(), config()).await;
        match r {
            Err(Error::Corrupted { .. }) => {}
            Err(Error::TooLarge { .. }) if what == "oversized" => {}
            // The version byte: a version this build does not read.
            Err(Error::UnsupportedFormat { .. }) if what == "bit flipped at 8" => {}
            other => panic!("header {what}: {other:?}"),
        }
    }
    std::fs::write(&path, &good).expect("restore header");
    let h = open(tmp.path()).await;
    let p = probe(&h, &w, "restored header").await;
    assert_eq!(p.readable, w.texts());
    assert!(p.clean, "{:?}", p.errors);
    h.close().await.expect("close");
}

/// A store image as a SIGKILL would leave it: `late` posts acknowledged (their
/// journal records fsynced) but not checkpointed. Copied while the store is open
/// and idle, which is what the disk holds if the process dies at that moment.
/// Also returns the journal as it was before the late posts.
async fn crash_image(dir: &Path, early: usize, late: usize) -> (Written, Vec<u8>) {
    let live = dir.with_extension("live");
    let h = create(&live, config().with_checkpoint_interval(Duration::from_secs(3600))).await;
    let mut w = populate_early(&h, early).await;
    let before = std::fs::read(live.join("journal")).expect("journal");
    post_late(&h, &mut w, late).await;
    copy_dir(&live, dir);
    h.close().await.expect("close");
    std::fs::remove_dir_all(&live).expect("rm");
    (w, before)
}

/// Where the late posts' records are in the journal: the records (framed as
/// `len u32 LE` then `len` bytes, from offset 0) whose bytes changed since
/// `before`. Each late post is its own group commit, so there is one per post,
/// in order. Whatever follows the last record (zeros, stale records, nothing)
/// is not needed.
fn late_records(before: &[u8], after: &[u8], late: usize) -> Vec<(usize, usize)> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos + 4 <= after.len() {
        let len = u32::from_le_bytes(after[pos..pos + 4].try_into().expect("4")) as usize;
        if len < 16 || pos + 4 + len > after.len() {
            break;
        }
        records.push((pos, pos + 4 + len));
        pos += 4 + len;
    }
    let changed: Vec<(usize, usize)> = records
        .into_iter()
        .filter(|&(s, e)| before.get(s..e) != Some(&after[s..e]))
        .collect();
    assert_eq!(changed.len(), late, "one new journal record per late post: {changed:?}");
    assert!(
        changed.windows(2).all(|p| p[0].1 == p[1].0),
        "late records are contiguous: {changed:?}"
    );
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_loses_no_checkpointed_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("image");
    let (w, before) = crash_image(&image, 10, 6).await;
    let journal = std::fs::read(image.join("journal")).expect("journal");
    let late = late_records(&before, &journal, w.late.len());
    let (late_start, late_end) = (late[0].0, late[late.len() - 1].1);
    // Late posts that damage at `pos` leaves intact: those whose record ends
    // before it (a reader stops at the first bad record).
    let kept_by = |pos: usize| late.iter().take_while(|(_, end)| *end <= pos).count();

    // The undamaged image recovers everything (the test's own baseline).
    let mut cases: Vec<(String, Vec<u8>, usize)> = vec![("undamaged".into(), journal.clone(), w.late.len())];
    let mut rng = Rng(0x0bad_f00d);
    // Cuts inside each late record (its length, checksum, sequence, sealed body),
    // before them, and after them.
    let mut cuts: Vec<usize> = vec![0, 1, late_end, journal.len() - 1];
    for (start, end) in &late {
        cuts.extend([*start + 1, *start + 14, *end - 1]);
    }
    cuts.extend((0..2).map(|_| rng.below(late_start.max(1))));
    for cut in cuts {
        cases.push((format!("truncated to {cut}"), journal[..cut].to_vec(), kept_by(cut)));
    }
    let mut positions: Vec<usize> = vec![rng.below(late_start.max(1)), rng.below(late_start.max(1))];
    for (start, end) in &late {
        positions.extend([
            *start + rng.below(4),
            *start + 4 + rng.below(4),
            *start + 8 + rng.below(8),
        ]);
        positions.push(*start + 16 + rng.below(*end - *start - 16));
    }
    positions.extend(
        (0..2)
            .map(|_| late_end + rng.below(journal.len() - late_end))
            .filter(|p| *p < journal.len()),
    );
    for pos in positions {
        let mut b = journal.clone();
        b[pos] ^= 1 << rng.below(8);
        cases.push((format!("bit flipped at {pos}"), b, kept_by(pos)));
    }
    // Garbage right after the last record (a torn write).
    let mut garbage = journal.clone();
    garbage.resize(garbage.len().max(late_end + 40), 0);
    garbage[late_end..late_end + 40].fill(0xff);
    cases.push(("garbage after the records".into(), garbage, w.late.len()));

    for (i, (what, bytes, min_late)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        copy_dir(&image, &dir);
        std::fs::write(dir.join("journal"), bytes).expect("damage the journal");
        let h = Hearth::open(&dir, &pass(), config())
            .await
            .unwrap_or_else(|e| panic!("journal {what}: a damaged journal must not stop the open: {e}"));
        let p = probe(&h, &w, &format!("journal {what}")).await;
        assert!(p.errors.is_empty(), "journal {what}: {:?}", p.errors);
        assert!(p.clean, "journal {what}: verify is not clean");
        for (id, text) in &w.early {
            assert_eq!(
                p.readable.get(id),
                Some(text),
                "journal {what}: checkpointed message lost"
            );
        }
        let kept = is_prefix(&p.readable, &w.late);
        assert!(
            kept >= *min_late,
            "journal {what}: kept {kept} late posts, {min_late} were intact"
        );
        // The store keeps working: a new post survives a clean reopen.
        let id = h
            .post(w.channel(), "after the damage")
            .await
            .expect("post after damage");
        h.close().await.expect("close");
        let h = open(&dir).await;
        let mut with_new = w.clone();
        with_new.early.push((id, "after the damage".into()));
        let p = probe(&h, &with_new, what).await;
        assert_eq!(
            p.readable.get(&id).map(String::as_str),
            Some("after the damage"),
            "journal {what}"
        );
        assert_eq!(
            is_prefix(&p.readable, &w.late),
            kept,
            "journal {what}: reopen changed it"
        );
        assert!(h.verify().await.expect("verify").is_clean(), "journal {what}");
        h.close().await.expect("close");
        std::fs::remove_dir_all(&dir).expect("rm");
    }
}

/// The sled files of a cleanly closed store.
fn sled_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("db"))
        .expect("db dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.ends_with("db")) && files.iter().any(|p| p.ends_with("conf")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.file_name().unwrap().to_string_lossy().starts_with("snap.")),
        "{files:?}"
    );
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_sled_files_give_errors_never_panics_or_wrong_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("image");
    let h = create(&image, config()).await;
    let w = populate(&h, 30, 10).await;
    h.close().await.expect("close");
    // sled writes its snapshot file when it recovers: reopen once.
    open(&image).await.close().await.expect("close");
    let files = sled_files(&image);

    let mut rng = Rng(0x51ed);
    let mut cases: Vec<(PathBuf, usize, u8)> = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        // Mostly bytes that hold something (sled preallocates zeroed segments),
        // a few anywhere.
        let live: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
        let n = if f.ends_with("db") { 90 } else { 25 };
        for k in 0..n {
            let pos = if k % 6 == 5 || live.is_empty() {
                rng.below(bytes.len())
            } else {
                live[rng.below(live.len())]
            };
            cases.push((
                f.strip_prefix(&image).expect("under").to_path_buf(),
                pos,
                1 << rng.below(8),
            ));
        }
    }

    let (mut refused, mut flagged, mut intact, mut partial) = (0, 0, 0, 0);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let dir = tmp.path().join("case");
    for (file, pos, mask) in &cases {
        let what = format!("{} byte {pos} ^ {mask:#04x}", file.display());
        copy_dir(&image, &dir);
        flip(&dir.join(file), *pos, *mask);
        match Hearth::open(&dir, &pass(), config()).await {
            Err(Error::Closed) => panic!("{what}: the open panicked"),
            Err(e @ (Error::WrongPassphrase | Error::NotAStore { .. } | Error::Locked { .. })) => {
                panic!("{what}: damage in sled reported as {e:?}")
            }
            Err(e) => {
                refused += 1;
                *kinds
                    .entry(format!("{e}").split(':').next().unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
            Ok(h) => {
                let p = probe(&h, &w, &what).await;
                if !p.clean || !p.errors.is_empty() {
                    flagged += 1;
                } else if p.readable == w.texts() {
                    intact += 1;
                } else {
                    partial += 1;
                }
                closed_means_panic("close", h.close().await, &mut Vec::new());
            }
        }
        std::fs::remove_dir_all(&dir).expect("rm");
    }
    eprintln!(
        "{} sled flips: {refused} refused at open, {flagged} flagged, {intact} intact, {partial} silently partial; {kinds:?}",
        cases.len()
    );
    // Opening with a clean verify and no query error means every message is there.
    assert_eq!(partial, 0, "damage in sled dropped data behind a clean verify");
    // Flips in bytes sled no longer reads must not stop the store (and this
    // exercises the checks on an opened damaged store).
    assert!(intact > 0, "every flip stopped the store");
}
