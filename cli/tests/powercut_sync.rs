//! Power cuts (LazyFS: every write not fsynced is lost) while a store takes in
//! a peer's entries (a catch-up, and live sync with the device's own posts
//! and delivery receipts in between), while it checkpoints, while a relay
//! stores entries (and compacts its files all along), while a store compacts
//! with posts beside it (killed at random, or stopped by a crash point at
//! each step of the compaction), while the passphrase changes, and while a
//! store of format 1 is migrated.
//!
//! Each round runs the writer in a child process (this test binary again, in
//! the mode `HEARTH_POWERCUT_CHILD` names), kills it at a random moment, cuts
//! the power, and checks: the store (or relay) opens, `verify` is clean, and
//! everything the child reported as acknowledged is there: its own posts
//! (acknowledged once durable), the vector it reported after an explicit
//! checkpoint (entries received are durable from the next checkpoint on), and
//! every entry a relay acknowledged (a relay acknowledges only durable
//! entries). In live sync the child also hands its own new entries out, as a
//! node does to its peers, and each one handed out must come back with the
//! same bytes (a peer holding the first version would see a fork). In
//! early sync (`Store::send_early`) the child sends each group's own
//! entries as soon as its event comes, before their log sync ends (in some
//! rounds it holds the syncs, so that the cut surely loses what it sent):
//! each one sent is there with the same bytes, or the power cut lost it and
//! the store reopened as a new device of the same user, which takes the lost
//! entries back (as a peer would give them) with no fork. The next round
//! goes on from what survived.
//!
//! Rounds per test: 20 (`POWERCUT_ROUNDS` to change; the posting test in
//! powercut.rs reads the same variable).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hearth::core::{ChannelKeys, DeviceId, EntryBody, Envelope, Identity, KdfParams, Vector, WireId};
use hearth::store::Store;
use hearth::sync::{RelayStore, Replica};
use hearth::{ChannelId, Config, MessageId, Passphrase};

#[path = "../../tests/support/answers.rs"]
mod answers;
#[path = "support/lazyfs.rs"]
mod lazyfs;
#[path = "../../tests/support/rng.rs"]
mod rng;
use lazyfs::LazyFs;
use rng::Rng;

const CHILD_ENV: &str = "HEARTH_POWERCUT_CHILD";
const PASS: &str = "power cut passphrase";

fn rounds() -> u32 {
    std::env::var("POWERCUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Retry an open that finds the store locked, for up to 5 s. The tests of
/// this file run in parallel threads of one process, and a child forked for
/// one of them shares every open file description of the process until it
/// execs, the lock of a store another thread just closed included (flock
/// locks belong to the description): a moment in which the store looks
/// locked to the next opener.
fn retry_locked<T>(mut open: impl FnMut() -> hearth::store::Result<T>) -> hearth::store::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match open() {
            Err(hearth::store::Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

async fn open_store(dir: &Path, pass: &Passphrase, config: Config) -> hearth::store::Result<Store> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(dir, pass, config.clone()).await {
            Err(hearth::store::Error::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// The source of the entries a round feeds: a channel with two writers
/// (alice's posts and bob's replies and reactions), exported as envelope bytes
/// in feed order, with the channel's keys. Made on the normal disk.
struct Source {
    keys: ChannelKeys,
    entries: Vec<Vec<u8>>,
}

fn source(dir: &Path) -> Source {
    rt().block_on(async {
        let pass = Passphrase::new("source");
        let a = Store::create(dir.join("a"), &pass, "alice", config()).await.expect("a");
        let b = Store::create(dir.join("b"), &pass, "bob", config()).await.expect("b");
        let c = a.create_channel("cuts").await.expect("channel");
        let keys = a.channel_keys(c).await.expect("keys");
        b.join_channel(keys.clone()).await.expect("join");
        let mut ids = Vec::new();
        for i in 0..1500 {
            ids.push(
                a.post(c, &format!("alice {i}: the quick brown fox"))
                    .await
                    .expect("post"),
            );
            if i % 40 == 0 {
                // Separate entries now and then, so that feeds have many.
                a.checkpoint().await.expect("checkpoint");
            }
        }
        let wire = keys.wire();
        let all = a
            .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
            .await
            .expect("entries");
        b.ingest(wire, all.entries).await.expect("ingest");
        for (i, id) in ids.iter().enumerate().step_by(7) {
            b.reply(*id, &format!("bob answers {i}")).await.expect("reply");
            if i % 21 == 0 {
                b.react(*id, "👍").await.expect("react");
                b.checkpoint().await.expect("checkpoint");
            }
        }
        let entries = b
            .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
            .await
            .expect("entries");
        a.close().await.expect("close");
        b.close().await.expect("close");
        Source {
            keys,
            entries: entries.entries,
        }
    })
}

fn save(src: &Source, path: &Path) {
    let mut out = Vec::new();
    out.extend_from_slice(src.keys.id().0.as_slice());
    out.extend_from_slice(src.keys.key().expose());
    for e in &src.entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    std::fs::write(path, out).expect("write entries");
}

fn load(path: &Path) -> Source {
    let b = std::fs::read(path).expect("read entries");
    let id = ChannelId(b[..32].try_into().expect("32"));
    let key = hearth::core::SecretKey::from_bytes(b[32..64].try_into().expect("32"));
    let mut entries = Vec::new();
    let mut pos = 64;
    while pos < b.len() {
        let n = u32::from_le_bytes(b[pos..pos + 4].try_into().expect("4")) as usize;
        entries.push(b[pos + 4..pos + 4 + n].to_vec());
        pos += 4 + n;
    }
    Source {
        keys: ChannelKeys::new(id, key),
        entries,
    }
}

/// The source's entries that `have` lacks, each feed in order.
fn missing<'a>(src: &'a Source, have: &Vector) -> Vec<&'a Vec<u8>> {
    src.entries
        .iter()
        .filter(|e| {
            let h = Envelope::decode(e).expect("source entry").header;
            h.seq > have.0.get(&h.device).map_or(0, |p| p.seq)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn vector_line(v: &Vector) -> String {
    v.0.iter()
        .map(|(d, p)| format!("{d}:{}", p.seq))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_vector(s: &str) -> BTreeMap<DeviceId, u64> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            let (d, n) = x.split_once(':').expect("device:seq");
            (d.parse().expect("device"), n.parse().expect("seq"))
        })
        .collect()
}

/// The child: `ingest` (catch-up batches), `live` (one entry at a time, with
/// own posts in between) or `relay`. Prints what is acknowledged:
/// `durable <vector>` after a checkpoint, `posted <id> <text>`, `acked <vector>`.
#[test]
fn powercut_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return; // not a child: nothing to do
    };
    let dir = PathBuf::from(std::env::var("HEARTH_POWERCUT_DIR").expect("dir"));
    if mode == "compact" {
        compact_child(&dir);
        return;
    }
    let src = load(Path::new(&std::env::var("HEARTH_POWERCUT_ENTRIES").expect("entries")));
    let mut rng = Rng(std::env::var("HEARTH_POWERCUT_SEED")
        .expect("seed")
        .parse()
        .expect("seed"));
    let wire = src.keys.wire();
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    // libtest has printed "test powercut_child ... " without a newline: end
    // that line, so that every acknowledgement starts one of its own.
    say(String::new());
    rt().block_on(async {
        if mode == "relay" {
            let relay = retry_locked(|| RelayStore::open(&dir)).expect("open the relay");
            // Compactions all along (a new log and a fresh sled swapped in
            // while entries come), so that cuts land in them too.
            {
                let relay = relay.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        relay.compact().await.expect("relay compaction");
                    }
                });
            }
            // Once the source is all stored, a feed of this child's own: a
            // relay checks signatures and chains, never bodies, so random
            // bodies of any size do (big ones make sled write blob files).
            let me = Identity::generate("relay child").expect("identity");
            let mut own: Vec<u8> = Vec::new();
            let (mut seq, mut prev) = (0u64, [0u8; 32]);
            loop {
                let have = relay
                    .vectors()
                    .await
                    .expect("vectors")
                    .into_iter()
                    .find(|(w, _)| *w == wire);
                let have = have.map(|(_, v)| v).unwrap_or_default();
                let todo = missing(&src, &have);
                let batch: Vec<Vec<u8>> = if todo.is_empty() {
                    let mut b = Vec::new();
                    for _ in 0..1 + rng.below(4) {
                        own.resize(64 + rng.below(20_000), 0);
                        own.iter_mut().for_each(|x| *x = rng.next() as u8);
                        seq += 1;
                        let body = EntryBody {
                            epoch: 1,
                            change: own.clone(),
                        };
                        let (bytes, hash) = Envelope::seal_next(&src.keys, &me, seq, prev, &body).expect("seal");
                        prev = hash;
                        b.push(bytes);
                    }
                    b
                } else {
                    let n = 1 + rng.below(8.min(todo.len()));
                    todo[..n].iter().map(|e| (*e).clone()).collect()
                };
                // Pauses, so that the rounds spread over the source.
                tokio::time::sleep(Duration::from_millis(rng.below(8) as u64)).await;
                let r = relay
                    .ingest(wire, batch)
                    .await
                    .expect("relay ingest")
                    .expect("a relay takes any channel");
                assert!(r.rejected.is_empty(), "{:?}", r.rejected);
                say(format!("acked {}", vector_line(&r.vector)));
            }
        }
        let store = open_store(&dir, &Passphrase::new(PASS), config())
            .await
            .expect("open the store");
        let channel = src.keys.id();
        let me = store.whoami().device;
        // As a node does: while someone listens, a group closes at once,
        // and the log's sync that lets its entries leave starts behind it.
        let _listening = (mode == "live").then(|| store.subscribe());
        // Early: as a node that sends early does, each group's own entries
        // go out as soon as its event comes, before their log sync ends.
        let live = mode == "live" || mode == "early";
        // Early rounds that hold the log's syncs after a few posts: the
        // entries of the group that waits are sent, never durable, and the
        // power cut loses them.
        let hold_after = (std::env::var_os("HEARTH_POWERCUT_HOLD").is_some()).then(|| 1 + rng.below(8) as u32);
        let mut held = Vec::new();
        if mode == "early" {
            assert!(store.send_early().await.expect("send early"));
            let mut events = store.subscribe();
            tokio::spawn(async move {
                while let Ok(e) = events.recv().await {
                    if let hearth::store::StoreEvent::Appended { outgoing: Some(o), .. } = e {
                        o.sendable().await.expect("sendable");
                        for e in o.entries() {
                            say_line(&format!("sent {}", hex(e)));
                        }
                    }
                }
            });
        }
        // Where this device's feed was last handed out up to.
        let mut handed: Option<hearth::core::FeedPos> = None;
        let mut posts = 0u32;
        loop {
            let have = store.vector(channel).await.expect("vector");
            let todo = missing(&src, &have);
            let n = if live { 1 } else { 1 + rng.below(400) };
            let batch: Vec<Vec<u8>> = todo.iter().take(n).map(|e| (*e).clone()).collect();
            if !batch.is_empty() {
                let r = store.ingest(wire, batch).await.expect("ingest");
                assert!(r.rejected.is_empty(), "{:?}", r.rejected);
            }
            // Live: up to three posts between two entries taken in, the
            // first building on a peer's entry, the others on this device's
            // own, each handed out once the log's sync behind it is done.
            let writes = if live { 1 + rng.below(3) } else { 1 };
            for _ in 0..writes {
                if !(live || todo.is_empty()) {
                    break;
                }
                if hold_after == Some(posts) && held.is_empty() {
                    held.push(hearth::store::hold_log_syncs());
                    say("holding".to_string());
                }
                // This device writes too: posts, acknowledged once durable.
                let text = format!("own post {posts} of round child {}", std::process::id());
                let id = store.post(channel, &text).await.expect("post");
                say(format!("posted {id} {text}"));
                // Early: now and then a write that changes nothing (no such
                // reaction), whose acknowledgement must not settle a post
                // before its entry is durable.
                if mode == "early" && rng.below(3) == 0 {
                    let s = store.clone();
                    tokio::spawn(async move { s.unreact(id, "🎉").await });
                }
                posts += 1;
                if mode == "live" {
                    // Handed out as to a peer that holds everything else.
                    let mut have = store.vector(channel).await.expect("vector");
                    have.0.remove(&me);
                    if let Some(p) = &handed {
                        have.0.insert(me, *p);
                    }
                    let batch = store
                        .entries_after(wire, have, usize::MAX, usize::MAX)
                        .await
                        .expect("entries after");
                    for e in &batch.entries {
                        let h = Envelope::decode(e).expect("own entry").header;
                        if h.device == me {
                            let hash = Envelope::hash_of(e);
                            say(format!("handed {me} {} {}", h.seq, hex(&hash)));
                            handed = Some(hearth::core::FeedPos { seq: h.seq, hash });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.below(5) as u64)).await;
            }
            if rng.below(6) == 0 {
                store.checkpoint().await.expect("checkpoint");
                let v = store.vector(channel).await.expect("vector");
                say(format!("durable {}", vector_line(&v)));
            }
        }
    });
}

/// One whole line on stdout, flushed (a line the kill cuts never counts).
fn say_line(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// The `compact` child: posts without a break, and beside it deletes and
/// compacts in a loop, printing `posted <id> <text>` and `deleted <id>` once
/// each is acknowledged.
fn compact_child(dir: &Path) {
    say_line("");
    // Armed to stop at a crash point (`point skip`), for the test of each
    // of a compaction's steps.
    if let Ok(arm) = std::env::var("HEARTH_POWERCUT_CRASH") {
        let (point, skip) = arm.split_once(' ').expect("point skip");
        hearth::store::crash_at(point, skip.parse().expect("skip")).expect("arm the crash point");
    }
    rt().block_on(async {
        let store = std::sync::Arc::new(
            open_store(dir, &Passphrase::new(PASS), config())
                .await
                .expect("open the store"),
        );
        let channel = store.channels().await.expect("channels")[0].id;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0u64.. {
                    let text = format!("post {i} of child {}", std::process::id());
                    let id = store.post(channel, &text).await.expect("post");
                    say_line(&format!("posted {id} {text}"));
                }
            })
        };
        for n in 0u64.. {
            let id = store.post(channel, &format!("doomed {n}")).await.expect("post");
            store.delete(id).await.expect("delete");
            say_line(&format!("deleted {id}"));
            let r = store.compact().await.expect("compact");
            // For the parent's report of a loss: where the compactions fell.
            say_line(&format!(
                "compacted records {} rewritten {} rows {} writes {} paused {:?} took {:?}",
                r.records, r.entries_rewritten, r.rows_copied, r.writes_applied, r.paused, r.took
            ));
        }
        writer.await.expect("writer");
    });
}

/// A compaction with writes beside it (online: a fresh sled and a new log
/// copied while the store takes posts), killed at a random moment, then the
/// power cut: the store opens, `verify` is clean, every acknowledged post is
/// there with its text, every acknowledged delete stays one, and no
/// compaction is left half done.
#[test]
fn an_online_compaction_with_writes_beside_it_survives_power_cuts() {
    if !lazyfs::should_run("compact online") {
        return;
    }
    let no_entries = PathBuf::from("unused");
    let mut rng = Rng(0xc0c1);
    compaction_rounds("compact online", rounds(), |dir, round| {
        run_child("compact", dir, &no_entries, &mut rng, round)
    });
}

/// The crash points a compaction with writes beside it passes: the
/// journal's sync of a post, the checkpoints (at its start and its pause,
/// and every 2 s), and each step of the compaction.
const COMPACTION_STEPS: &[(&str, u64)] = &[
    ("journal.synced", 400),
    ("checkpoint.log_synced", 12),
    ("checkpoint.sled_flushed", 12),
    ("checkpoint.synced", 12),
    ("compact.paused", 6),
    ("compact.prepared", 6),
    ("compact.committed", 6),
    ("compact.old_log_moved", 6),
    ("compact.new_log_moved", 6),
    ("compact.swapped", 6),
    ("compact.purged", 6),
];

/// The same, but the child stops at one of the compaction's steps (a crash
/// point: it aborts there, as a kill would stop it, at a random pass below
/// the step's bound) and the power is cut right then: each step of the
/// swap, and the checkpoints and journal syncs around it, with posts
/// coming all along. Each step twice (`POWERCUT_ROUNDS` / 10 times).
#[test]
fn an_online_compaction_cut_at_each_of_its_steps_loses_nothing() {
    if !lazyfs::should_run("compact steps") {
        return;
    }
    let mut rng = Rng(0xc0c2);
    let rounds = COMPACTION_STEPS.len() as u32 * (rounds() / 10).max(1);
    compaction_rounds("compact steps", rounds, |dir, round| {
        let (point, bound) = COMPACTION_STEPS[round as usize % COMPACTION_STEPS.len()];
        crash_child(dir, point, rng.below_u64(bound), round)
    });
}

/// A thread that sends each line `child` prints.
fn read_lines(child: &mut Child) -> (std::thread::JoinHandle<()>, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (reader, rx)
}

/// Run the `compact` child armed to abort at `point`'s `skip + 1`-th pass,
/// and collect what it acknowledged until it did.
fn crash_child(dir: &Path, point: &str, skip: u64, round: u32) -> Acked {
    let mut child = child_command("compact", dir)
        .env("HEARTH_POWERCUT_CRASH", format!("{point} {skip}"))
        .spawn()
        .expect("spawn the child");
    let (reader, rx) = read_lines(&mut child);
    let mut acked = Acked::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => take_line("compact", line, &mut acked),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait");
                panic!(
                    "compact steps round {round}: {point} (pass {}) not reached in 60 s; stderr: {}",
                    skip + 1,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let out = child.wait_with_output().expect("wait");
    reader.join().expect("reader");
    assert!(
        out.status.code().is_none(),
        "compact steps round {round}: the child did not stop at {point} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    acked
}

/// Rounds of a child posting beside compactions in a store made here, each
/// followed by the power cut and the checks (see
/// [`an_online_compaction_with_writes_beside_it_survives_power_cuts`]).
fn compaction_rounds(what: &str, rounds: u32, mut child: impl FnMut(&Path, u32) -> Acked) {
    let tmp = tempfile::tempdir().expect("tmp");
    let fs = LazyFs::mount(&tmp.path().join("lazy"));
    let dir = fs.mnt().join("store");
    let pass = Passphrase::new(PASS);
    rt().block_on(async {
        let s = Store::create(&dir, &pass, "erin", config()).await.expect("create");
        let c = s.create_channel("c").await.expect("channel");
        for i in 0..200 {
            s.post(c, &format!("history {i}")).await.expect("post");
        }
        s.close().await.expect("close");
    });
    // Each acknowledged post with the round it came in, and each round's
    // lines: what a loss is reported with.
    let (mut posts, mut deleted) = (Vec::new(), Vec::new());
    let mut said: Vec<Vec<String>> = Vec::new();
    // HEARTH_POWERCUT_KEEP=DIR: each round's durable state (right after
    // the cut, before anything opens it) copied there, the last two kept.
    let keep = std::env::var_os("HEARTH_POWERCUT_KEEP").map(PathBuf::from);
    for round in 0..rounds {
        let acked = child(&dir, round);
        fs.cut();
        if let Some(keep) = &keep {
            let to = keep.join(format!("round-{round}"));
            let _ = std::fs::remove_dir_all(&to);
            copy_durably(&fs.root().join("store"), &to);
            let _ = std::fs::remove_dir_all(keep.join(format!("round-{}", round.wrapping_sub(2))));
        }
        posts.extend(acked.posts.into_iter().map(|(id, text)| (id, text, round)));
        deleted.extend(acked.deleted);
        said.push(acked.said);
        rt().block_on(async {
            let s = open_store(&dir, &pass, config())
                .await
                .unwrap_or_else(|e| panic!("{what} round {round}: the store does not open after the cut: {e}"));
            let report = s.verify().await.expect("verify");
            assert!(report.is_clean(), "{what} round {round}: verify: {:?}", report.problems);
            let mut lost = Vec::new();
            for (i, (id, text, when)) in posts.iter().enumerate() {
                match s.message(*id).await {
                    Ok(m) => assert_eq!(m.message.text.as_deref(), Some(text.as_str()), "{what} round {round}"),
                    Err(e) => lost.push((i, format!("#{i} {id} ({text:?}, acknowledged in round {when}): {e}"))),
                }
            }
            if !lost.is_empty() {
                panic!(
                    "{what} round {round}: {} of {} acknowledged posts are gone:\n  {}\nopen: {:?}\n{}",
                    lost.len(),
                    posts.len(),
                    lost.iter()
                        .take(12)
                        .map(|(_, l)| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n  "),
                    s.open_report(),
                    where_lost(&said, &posts, &lost)
                );
            }
            for id in &deleted {
                let m = s.message(*id).await.expect("deleted message").message;
                assert!(m.deleted && m.text.is_none(), "{what} round {round}: {id} is back");
            }
            s.close().await.expect("close");
        });
        for left in ["compact", "compacted", "compact.tmp", "log.old"] {
            assert!(
                !dir.join(left).exists(),
                "{what} round {round}: {left} left after an open"
            );
        }
    }
    eprintln!(
        "powercut {what} summary: {rounds} cuts, {} posts and {} deletes acknowledged, all there",
        posts.len(),
        deleted.len()
    );
}

/// The lines of the rounds that acknowledged the first lost posts, around
/// each: where the compactions fell.
fn where_lost(said: &[Vec<String>], posts: &[(MessageId, String, u32)], lost: &[(usize, String)]) -> String {
    let mut out = String::new();
    for (i, _) in lost.iter().take(3) {
        let (id, _, round) = &posts[*i];
        let id = id.to_string();
        let lines = &said[*round as usize];
        let at = lines.iter().position(|x| x.contains(&id)).unwrap_or(0);
        let compactions = lines.iter().filter(|x| x.starts_with("compacted")).count();
        out += &format!(
            "{id}: line {at} of {} in round {round} ({compactions} compactions that round); around it:\n",
            lines.len()
        );
        for x in &lines[at.saturating_sub(6)..(at + 6).min(lines.len())] {
            out += &format!("    {x}\n");
        }
    }
    out
}

/// Take one line a child printed into `acked`.
fn take_line(mode: &str, line: String, acked: &mut Acked) {
    if mode == "compact" {
        acked.said.push(line.clone());
    }
    let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    match kind {
        "durable" | "acked" => {
            for (d, s) in parse_vector(rest) {
                let e = acked.durable.entry(d).or_default();
                *e = (*e).max(s);
            }
            acked.lines += 1;
        }
        "posted" => {
            let (id, text) = rest.split_once(' ').expect("id text");
            acked.posts.push((id.parse().expect("message id"), text.to_string()));
            acked.lines += 1;
        }
        "deleted" => {
            acked.deleted.push(rest.parse().expect("message id"));
            acked.lines += 1;
        }
        "sent" => acked.sent.push(unhex(rest)),
        "handed" => {
            let mut it = rest.split(' ');
            let (d, seq, hash) = (it.next(), it.next(), it.next());
            if let (Some(d), Some(seq), Some(hash)) = (d, seq, hash) {
                acked
                    .handed
                    .push((d.parse().expect("device"), seq.parse().expect("seq"), hash.to_string()));
            }
        }
        _ => {}
    }
}

/// What a child reported before it was killed.
#[derive(Default)]
struct Acked {
    /// Per feed, the highest seq reported durable.
    durable: BTreeMap<DeviceId, u64>,
    posts: Vec<(MessageId, String)>,
    /// Deletes acknowledged (`compact` mode).
    deleted: Vec<MessageId>,
    /// Own entries handed out (`live` mode): device, seq, hash in hex.
    handed: Vec<(DeviceId, u64, String)>,
    /// Own entries sent before they were durable (`early` mode).
    sent: Vec<Vec<u8>>,
    lines: usize,
    /// Every line the child printed, in order (`compact` mode: for the
    /// report of a loss).
    said: Vec<String>,
}

/// This test binary run again as the child `mode` on the store in `dir`,
/// its output piped.
fn child_command(mode: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "powercut_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, mode)
        .env("HEARTH_POWERCUT_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn spawn_child(mode: &str, dir: &Path, entries: &Path, seed: u64, hold: bool) -> Child {
    let mut cmd = child_command(mode, dir);
    if hold {
        cmd.env("HEARTH_POWERCUT_HOLD", "1");
    }
    cmd.env("HEARTH_POWERCUT_ENTRIES", entries)
        .env("HEARTH_POWERCUT_SEED", seed.to_string())
        .spawn()
        .expect("spawn the child")
}

/// Run a child for a random time after its first acknowledgement (or kill it
/// while it opens), then SIGKILL it and collect what it acknowledged.
fn run_child(mode: &str, dir: &Path, entries: &Path, rng: &mut Rng, round: u32) -> Acked {
    // Early, every fourth round: the child holds its log's syncs after a
    // few posts (and the kill comes right as an entry is sent).
    let hold = mode == "early" && round % 4 == 1;
    let mut child = spawn_child(mode, dir, entries, rng.next(), hold);
    let (reader, rx) = read_lines(&mut child);
    let during_open = round % 7 == 3;
    let started = Instant::now();
    let mut acked = Acked::default();
    let take = |line: String, acked: &mut Acked| take_line(mode, line, acked);
    if during_open {
        std::thread::sleep(Duration::from_millis(rng.below(60) as u64));
    } else {
        // Wait for a first acknowledgement, then go on a random while.
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let first = line.starts_with("durable") || line.starts_with("acked") || line.starts_with("posted");
                    take(line, &mut acked);
                    if first {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("wait");
                    panic!(
                        "{mode} round {round}: no acknowledgement in 60 s ({:?}); stderr: {}",
                        started.elapsed(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        if hold {
            // Until the child holds its syncs; the kill then comes as the
            // entry that waits for one is sent.
            loop {
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) if line == "holding" => break,
                    Ok(line) => take(line, &mut acked),
                    Err(_) => {
                        let _ = child.kill();
                        panic!("{mode} round {round}: the child never held its log's syncs");
                    }
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(20 + rng.below(600) as u64));
        }
        // Live, every other round: killed right as a post is acknowledged,
        // when what made it durable has only just ended (the log's sync,
        // its journal record being left unsynced while listened).
        // Early, every other round: killed right as an entry is sent,
        // while its log sync is likely still under way.
        let at = if mode == "early" { "sent" } else { "posted" };
        if (mode == "live" || mode == "early") && round % 2 == 1 {
            loop {
                let line = match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) => line,
                    // The child ended on its own: the check below says how.
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let _ = child.kill();
                        panic!("live round {round}: no post acknowledged in 30 s");
                    }
                };
                let posted = line.starts_with(at);
                take(line, &mut acked);
                if posted {
                    break;
                }
            }
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    while let Ok(line) = rx.try_recv() {
        take(line, &mut acked);
    }
    assert!(
        status.code().is_none() || status.success(),
        "{mode} round {round}: the child failed on its own ({status})"
    );
    acked
}

/// What [`check_store`] found: the channel's vector, whether sled was
/// rebuilt, whether the device was reborn (entries sent early were lost).
struct Checked {
    vector: Vector,
    rebuilt: u64,
    reborn: u64,
}

fn check_store(dir: &Path, src: &Source, acked: &Acked, mode: &str, round: u32) -> Checked {
    rt().block_on(async {
        let s = open_store(dir, &Passphrase::new(PASS), config())
            .await
            .unwrap_or_else(|e| panic!("{mode} round {round}: the store does not open after the cut: {e}"));
        let report = s.verify().await.expect("verify");
        assert!(report.is_clean(), "{mode} round {round}: verify: {:?}", report.problems);
        let channel = src.keys.id();
        let v = s.vector(channel).await.expect("vector");
        for (d, seq) in &acked.durable {
            let have = v.0.get(d).map_or(0, |p| p.seq);
            assert!(
                have >= *seq,
                "{mode} round {round}: feed {d} has {have} entries, {seq} were durable"
            );
        }
        for (id, text) in &acked.posts {
            let m = s
                .message(*id)
                .await
                .unwrap_or_else(|e| panic!("{mode} round {round}: acknowledged post {id} is gone: {e}"));
            assert_eq!(m.message.text.as_deref(), Some(text.as_str()), "{mode} round {round}");
        }
        // Every own entry handed out is there, with the same bytes.
        if !acked.handed.is_empty() {
            let all = s
                .entries_after(src.keys.wire(), Vector::default(), usize::MAX, usize::MAX)
                .await
                .expect("entries");
            for (d, seq, hash) in &acked.handed {
                let found = all.entries.iter().find(|e| {
                    let h = Envelope::decode(e).expect("entry").header;
                    h.device == *d && h.seq == *seq
                });
                let found = found.unwrap_or_else(|| panic!("{mode} round {round}: handed-out entry {d}:{seq} is gone"));
                assert_eq!(
                    &hex(&Envelope::hash_of(found)),
                    hash,
                    "{mode} round {round}: entry {d}:{seq} came back with other bytes (a fork)"
                );
            }
        }
        // Every own entry sent early is there with the same bytes; or the
        // power cut lost some, and the device was reborn: then the peer
        // that got them gives them back, and they are taken as the old
        // device's, with no fork.
        let reborn = s.open_report().reborn_from;
        if !acked.sent.is_empty() {
            let all = s
                .entries_after(src.keys.wire(), Vector::default(), usize::MAX, usize::MAX)
                .await
                .expect("entries");
            let mut lost = Vec::new();
            for e in &acked.sent {
                let h = Envelope::decode(e).expect("sent entry").header;
                let found = all.entries.iter().find(|x| {
                    let x = Envelope::decode(x).expect("entry").header;
                    x.device == h.device && x.seq == h.seq
                });
                match found {
                    Some(x) => assert_eq!(
                        Envelope::hash_of(x),
                        Envelope::hash_of(e),
                        "{mode} round {round}: entry {}:{} came back with other bytes (a fork)",
                        h.device,
                        h.seq
                    ),
                    None => {
                        assert_eq!(
                            reborn,
                            Some(h.device),
                            "{mode} round {round}: entry {}:{} was sent, is lost, and the device was not reborn",
                            h.device,
                            h.seq
                        );
                        assert!(s.whoami().former.contains(&h.device));
                        lost.push(e.clone());
                    }
                }
            }
            if !lost.is_empty() {
                let r = s.ingest(src.keys.wire(), lost).await.expect("the lost entries back");
                assert!(r.rejected.is_empty(), "{mode} round {round}: {:?}", r.rejected);
                let report = s.verify().await.expect("verify");
                assert!(report.is_clean(), "{mode} round {round}: verify: {:?}", report.problems);
            }
        }
        // What was received is a verified prefix of each source feed.
        for (d, p) in &v.0 {
            if let Some(e) = src.entries.iter().find(|e| {
                let h = Envelope::decode(e).expect("entry").header;
                h.device == *d && h.seq == p.seq
            }) {
                assert_eq!(
                    Envelope::hash_of(e),
                    p.hash,
                    "{mode} round {round}: feed {d} differs from the source"
                );
            }
        }
        let rebuilt = u64::from(s.open_report().rebuilt.is_some());
        s.close().await.expect("close");
        Checked {
            vector: v,
            rebuilt,
            reborn: u64::from(reborn.is_some()),
        }
    })
}

fn store_rounds(mode: &str) {
    if !lazyfs::should_run(mode) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let src = source(&tmp.path().join("source"));
    let entries = tmp.path().join("entries");
    save(&src, &entries);
    let fs = LazyFs::mount(&tmp.path().join("lazy"));
    let dir = fs.mnt().join("store");
    rt().block_on(async {
        let s = Store::create(&dir, &Passphrase::new(PASS), "carol", config())
            .await
            .expect("create");
        s.join_channel(src.keys.clone()).await.expect("join");
        s.close().await.expect("close");
    });
    let mut rng = Rng(0x5eed_0000 + mode.len() as u64);
    let (mut posts, mut handed, mut sent, mut rebuilt, mut reborn, mut last) =
        (0usize, 0usize, 0usize, 0u64, 0u64, Vector::default());
    let started = Instant::now();
    for round in 0..rounds() {
        let acked = run_child(mode, &dir, &entries, &mut rng, round);
        if round % 3 == 1 {
            // Killed, then opened and closed again (catch-up, journal replay,
            // checkpoint, empty journal) before the power goes: what the
            // killed process wrote but never fsynced must be made durable by
            // that open, not merely read back from the page cache.
            rt().block_on(async {
                let s = open_store(&dir, &Passphrase::new(PASS), config())
                    .await
                    .expect("reopen");
                s.close().await.expect("close");
            });
        }
        fs.cut();
        posts += acked.posts.len();
        handed += acked.handed.len();
        sent += acked.sent.len();
        let c = check_store(&dir, &src, &acked, mode, round);
        rebuilt += c.rebuilt;
        reborn += c.reborn;
        last = c.vector;
    }
    if mode == "early" && rounds() >= 8 {
        // Rounds 5 and 9 hold the syncs, and are not reopened before the cut.
        assert!(
            reborn > 0,
            "no power cut lost an entry sent early: the test missed its point"
        );
    }
    let received: u64 = last.0.values().map(|p| p.seq).sum();
    eprintln!(
        "powercut {mode} summary: {} cuts, {posts} acknowledged own posts checked, {handed} own entries handed out \
         checked, {sent} own entries sent early checked, {reborn} devices reborn, {received} entries held at the end, \
         {rebuilt} opens rebuilt sled, 0 stores failed to open, {:.1} s, peak LazyFS cache use {:.1}%",
        rounds(),
        started.elapsed().as_secs_f64(),
        fs.peak_cache_usage()
    );
}

#[test]
fn ingest_of_a_catch_up_survives_power_cuts() {
    store_rounds("ingest");
}

#[test]
fn live_sync_with_own_posts_survives_power_cuts() {
    store_rounds("live");
}

#[test]
fn own_entries_sent_early_survive_power_cuts_without_a_fork() {
    store_rounds("early");
}

#[test]
fn a_relay_storing_entries_survives_power_cuts() {
    if !lazyfs::should_run("relay") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let src = source(&tmp.path().join("source"));
    let entries = tmp.path().join("entries");
    save(&src, &entries);
    let fs = LazyFs::mount(&tmp.path().join("lazy"));
    let dir = fs.mnt().join("relay");
    let wire: WireId = src.keys.wire();
    let mut rng = Rng(0x7e1a_7000);
    let (mut acks, mut in_compaction) = (0usize, 0usize);
    let started = Instant::now();
    for round in 0..rounds() {
        let acked = run_child("relay", &dir, &entries, &mut rng, round);
        acks += acked.lines;
        fs.cut();
        in_compaction += usize::from(dir.join("compact.tmp").exists() || dir.join("compacted").exists());
        let relay = retry_locked(|| RelayStore::open(&dir))
            .unwrap_or_else(|e| panic!("relay round {round}: the relay does not open after the cut: {e}"));
        let held = rt().block_on(async {
            let v = relay.vectors().await.expect("vectors");
            v.into_iter()
                .find(|(w, _)| *w == wire)
                .map(|(_, v)| v)
                .unwrap_or_default()
        });
        for (d, seq) in &acked.durable {
            let have = held.0.get(d).map_or(0, |p| p.seq);
            assert!(
                have >= *seq,
                "relay round {round}: feed {d} has {have} entries, {seq} were acknowledged"
            );
        }
        // Everything held reads back as an unbroken chain.
        let all = rt().block_on(relay.entries_after(wire, Vector::default(), usize::MAX, usize::MAX));
        let all = all.expect("entries").unwrap_or_default();
        assert_eq!(all.entries.len() as u64, held.0.values().map(|p| p.seq).sum::<u64>());
        drop(relay);
    }
    eprintln!(
        "powercut relay summary: {} cuts ({in_compaction} in a compaction), {acks} acknowledgements checked, \
         0 relays failed to open, {:.1} s",
        rounds(),
        started.elapsed().as_secs_f64()
    );
}

/// `hearth passwd`, killed at a random moment, then the power cut: the store
/// opens with the old or the new passphrase (the new one, if `passwd`
/// finished), never with neither.
#[test]
fn a_passphrase_change_survives_power_cuts() {
    if !lazyfs::should_run("passwd") {
        return;
    }
    passphrase_changes_survive_power_cuts(&[]);
}

/// `hearth passwd --rotate-key` (a new master key, the log re-written under
/// it, sled rebuilt), killed at a random moment, then the power cut: the
/// same promise, and what was written is all there.
#[test]
fn a_key_rotation_survives_power_cuts() {
    if !lazyfs::should_run("rotate") {
        return;
    }
    passphrase_changes_survive_power_cuts(&["--rotate-key"]);
}

fn passphrase_changes_survive_power_cuts(flags: &[&str]) {
    let tmp = tempfile::tempdir().expect("tmp");
    let fs = LazyFs::mount(&tmp.path().join("lazy"));
    let dir = fs.mnt().join("store");
    let hearth = |pass: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
        c.arg("--store").arg(&dir).env("HEARTH_PASSPHRASE", pass);
        c
    };
    let ok = |c: &mut Command| c.output().expect("run hearth").status.success();
    assert!(ok(hearth("pass-0").args(["init", "--user", "dana"])));
    assert!(ok(hearth("pass-0").args(["channel", "create", "c"])));
    assert!(ok(hearth("pass-0").args(["post", "c", "written before the changes"])));
    // How long a whole `passwd` takes here (two Argon2id runs, the rename):
    // kills land anywhere in 1.3 times that, so some land in the
    // derivations, some around the rename, and some after it finished.
    let t = Instant::now();
    for i in 0..10 {
        assert!(ok(hearth("pass-0").args(["post", "c", &format!("more {i}")])));
    }
    assert!(ok(hearth("pass-0")
        .arg("passwd")
        .args(flags)
        .env("HEARTH_NEW_PASSPHRASE", "pass-0")));
    let window = (t.elapsed().as_millis() as usize * 13 / 10).max(50);
    let mut rng = Rng(0x9a55);
    let (mut current, mut finished) = (0u32, 0u32);
    for round in 0..rounds() {
        let new = format!("pass-{}", round + 1);
        let mut child = hearth(&format!("pass-{current}"))
            .arg("passwd")
            .args(flags)
            .env("HEARTH_NEW_PASSPHRASE", &new)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn passwd");
        std::thread::sleep(Duration::from_millis(rng.below(window) as u64));
        let done = matches!(child.try_wait(), Ok(Some(s)) if s.success());
        let _ = child.kill();
        let _ = child.wait();
        fs.cut();
        let opens_with = |p: &str| ok(hearth(p).arg("verify"));
        let (old_ok, new_ok) = (opens_with(&format!("pass-{current}")), opens_with(&new));
        assert!(
            old_ok != new_ok,
            "round {round}: old opens: {old_ok}, new opens: {new_ok}"
        );
        assert!(
            !done || new_ok,
            "round {round}: passwd finished, yet the new passphrase does not open"
        );
        if new_ok {
            current = round + 1;
            finished += 1;
        }
        let out = hearth(&format!("pass-{current}"))
            .args(["log", "c"])
            .output()
            .expect("log");
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            log.contains("written before the changes") && log.contains("more 9"),
            "round {round}: {log}"
        );
    }
    eprintln!(
        "powercut passwd {flags:?} summary: {} cuts, {finished} changes took effect, 0 stores failed to open",
        rounds()
    );
}

/// `hearth compact` (a new log written, committed by a rename, swapped in;
/// sled and the journal deleted), killed at a random moment, then the power
/// cut: the store opens, `verify` is clean, every acknowledged post is there
/// and every deleted message stays deleted. Each round posts and deletes
/// first, so that every compaction has a text to drop.
#[test]
fn a_compaction_survives_power_cuts() {
    if !lazyfs::should_run("compact") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let fs = LazyFs::mount(&tmp.path().join("lazy"));
    let dir = fs.mnt().join("store");
    let hearth = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
        c.arg("--store").arg(&dir).env("HEARTH_PASSPHRASE", PASS);
        c
    };
    let run = |c: &mut Command| {
        let out = c.output().expect("run hearth");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(hearth().args(["init", "--user", "erin"]));
    run(hearth().args(["channel", "create", "c"]));
    run(hearth().args(["post", "c", "kept from the start"]));
    // How long a whole compaction takes here: kills land anywhere in 1.3
    // times that.
    let t = Instant::now();
    run(hearth().arg("compact"));
    let window = (t.elapsed().as_millis() as usize * 13 / 10).max(50);
    let mut rng = Rng(0xc0c0);
    let (mut kept, mut gone, mut finished) = (vec!["kept from the start".to_string()], Vec::new(), 0u32);
    for round in 0..rounds() {
        let keep = format!("kept {round}");
        let drop = format!("dropped {round}");
        run(hearth().args(["post", "c", &keep]));
        let id = run(hearth().args(["post", "c", &drop]));
        run(hearth().args(["delete", &id]));
        kept.push(keep);
        gone.push(drop);
        let mut child = hearth()
            .arg("compact")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn compact");
        std::thread::sleep(Duration::from_millis(rng.below(window) as u64));
        finished += u32::from(matches!(child.try_wait(), Ok(Some(s)) if s.success()));
        let _ = child.kill();
        let _ = child.wait();
        fs.cut();
        run(hearth().arg("verify"));
        let log = run(hearth().args(["log", "c", "--limit", "1000"]));
        for k in &kept {
            assert!(log.contains(k.as_str()), "round {round}: {k} is missing:\n{log}");
        }
        for g in &gone {
            assert!(!log.contains(g.as_str()), "round {round}: {g} is back:\n{log}");
        }
        for left in ["compact", "compacted", "compact.tmp", "log.old"] {
            assert!(!dir.join(left).exists(), "round {round}: {left} left after an open");
        }
    }
    eprintln!(
        "powercut compact summary: {} cuts, {finished} compactions finished before the kill, 0 stores failed to open",
        rounds()
    );
}

/// `hearth backup FILE` of a store, killed at a random moment (or let
/// finish), then the power cut: the store opens and verifies; a backup that
/// reported done reads whole (`backup --check`), and one that did not either
/// never got its name or reads whole too. Then `hearth restore` of the last
/// good backup, killed at a random moment, then the power cut: the directory
/// is either no store at all or a store that opens, verifies and holds every
/// post of that backup; a restore run again to its end over whatever was
/// left works, and survives a cut right after it returned.
#[test]
fn a_backup_and_a_restore_survive_power_cuts() {
    if !lazyfs::should_run("backup") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let fs = LazyFs::mount(&tmp.path().join("lazy"));
    let dir = fs.mnt().join("store");
    let hearth = |store: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
        c.arg("--store").arg(store).env("HEARTH_PASSPHRASE", PASS);
        c
    };
    let run = |c: &mut Command| {
        let out = c.output().expect("run hearth");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let checks = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["backup", "--check"])
            .arg(file)
            .env("HEARTH_PASSPHRASE", PASS)
            .output()
            .expect("run hearth")
            .status
            .success()
    };
    run(hearth(&dir).args(["init", "--user", "erin"]));
    run(hearth(&dir).args(["channel", "create", "c"]));
    // Some bulk, so that a backup and a restore take long enough to be cut.
    let mut input = String::new();
    for i in 0..3000 {
        input.push_str(&format!("{{\"text\": \"bulk message {i} of the store backed up\"}}\n"));
    }
    std::fs::write(tmp.path().join("bulk.jsonl"), input).expect("write");
    run(hearth(&dir).args(["import", "c"]).arg(tmp.path().join("bulk.jsonl")));
    let file = |n: u32| fs.mnt().join(format!("backup-{n}"));
    let t = Instant::now();
    run(hearth(&dir).arg("backup").arg(file(1000)));
    let window = (t.elapsed().as_millis() as usize * 13 / 10).max(50);
    let mut rng = Rng(0xbacc);
    let (mut kept, mut good, mut finished) = (Vec::new(), None::<(PathBuf, usize)>, 0u32);
    let rounds = rounds().div_ceil(2);
    for round in 0..rounds {
        let keep = format!("kept {round}");
        run(hearth(&dir).args(["post", "c", &keep]));
        kept.push(keep);
        let mut child = hearth(&dir)
            .arg("backup")
            .arg(file(round))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backup");
        std::thread::sleep(Duration::from_millis(rng.below(window) as u64));
        let done = matches!(child.try_wait(), Ok(Some(s)) if s.success());
        let _ = child.kill();
        let _ = child.wait();
        fs.cut();
        run(hearth(&dir).arg("verify"));
        if done {
            finished += 1;
            assert!(
                checks(&file(round)),
                "round {round}: a backup reported done does not read whole"
            );
        }
        if file(round).exists() {
            assert!(
                checks(&file(round)),
                "round {round}: a backup under its name does not read whole"
            );
            good = Some((file(round), kept.len()));
        }
    }
    let (good, holds) = good.unwrap_or((file(1000), 0));
    assert!(checks(&good));
    let t = Instant::now();
    run(hearth(&fs.mnt().join("timing")).arg("restore").arg(&good));
    let window = (t.elapsed().as_millis() as usize * 13 / 10).max(50);
    let (mut stores, mut none) = (0u32, 0u32);
    for round in 0..rounds {
        let target = fs.mnt().join(format!("restored-{round}"));
        let mut child = hearth(&target)
            .arg("restore")
            .arg(&good)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn restore");
        std::thread::sleep(Duration::from_millis(rng.below(window) as u64));
        let _ = child.kill();
        let _ = child.wait();
        fs.cut();
        let has_store = target.join("header").exists();
        if !has_store {
            none += 1;
            // What was left goes: the restore runs again, to its end.
            run(hearth(&target).arg("restore").arg(&good));
            fs.cut();
        }
        stores += u32::from(has_store);
        run(hearth(&target).arg("verify"));
        let log = run(hearth(&target).args(["log", "c", "--limit", "100000"]));
        assert!(
            log.contains("bulk message 2999 "),
            "round {round}: the bulk is missing after a restore"
        );
        for k in &kept[..holds] {
            assert!(
                log.contains(k.as_str()),
                "round {round}: {k} is missing after a restore:\n{log}"
            );
        }
    }
    eprintln!(
        "powercut backup summary: {} cuts; {finished} of {rounds} backups finished before the kill; \
         restores: {stores} whole before the cut, {none} left no store (each restored again, then cut)",
        rounds * 2 + none
    );
}

/// Copy a directory tree and fsync every file and directory of the copy.
fn copy_durably(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_durably(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
            std::fs::File::open(&target).and_then(|f| f.sync_all()).expect("fsync");
        }
    }
    lazyfs::sync_dir(to);
}

/// The format 1 fixture store (a crash image with a journal to replay) is
/// opened by `hearth verify`, which migrates it, and killed at a random
/// moment, then the power is cut: the store opens and answers exactly what
/// the code that wrote it answered (tests/fixtures/v1/alice.answers.json).
#[test]
fn a_migration_survives_power_cuts() {
    if !lazyfs::should_run("migration") {
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v1");
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("alice.answers.json")).expect("answers")).expect("json");
    let tmp = tempfile::tempdir().expect("tmp");
    let fs = LazyFs::mount(&tmp.path().join("lazy"));
    let pass = Passphrase::new("fixture passphrase");
    let config = Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_epoch_messages(8);
    let mut rng = Rng(0x316a);
    // How long a whole migrating `verify` takes here: kills spread over it.
    let t = Instant::now();
    copy_durably(&fixtures.join("alice"), &fs.mnt().join("timing"));
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--store")
        .arg(fs.mnt().join("timing"))
        .arg("verify")
        .env("HEARTH_PASSPHRASE", "fixture passphrase")
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let window = (t.elapsed().as_millis() as usize * 13 / 10).max(50);
    let (mut migrated_before_cut, mut started) = (0u32, 0u32);
    for round in 0..rounds() {
        let dir = fs.mnt().join(format!("alice-{round}"));
        copy_durably(&fixtures.join("alice"), &dir);
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .arg("--store")
            .arg(&dir)
            .arg("verify")
            .env("HEARTH_PASSPHRASE", "fixture passphrase")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn verify");
        std::thread::sleep(Duration::from_millis(rng.below(window) as u64));
        if matches!(child.try_wait(), Ok(Some(s)) if s.success()) {
            migrated_before_cut += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        fs.cut();
        started += u32::from(dir.join("log").exists() || dir.join("log.tmp").exists());
        rt().block_on(async {
            let s = open_store(&dir, &pass, config.clone())
                .await
                .unwrap_or_else(|e| panic!("migration round {round}: the store does not open after the cut: {e}"));
            s.flush_receipts().await.expect("receipts");
            assert_eq!(
                answers::this_device(&answers::answers(&s).await, &s),
                answers::this_device(&want["answers"], &s),
                "migration round {round}: answers differ"
            );
            s.close().await.expect("close");
        });
    }
    eprintln!(
        "powercut migration summary: {} cuts, {started} with the migration under way or done at the cut, \
         {migrated_before_cut} finished before it, 0 stores failed to open or answered differently",
        rounds()
    );
}
