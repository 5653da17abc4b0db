//! A crash at every named crash point (hearth_store::CRASH_POINTS: each
//! durable step of a write, a group commit, an ingest, a checkpoint and a
//! compaction) loses nothing acknowledged.
//!
//! For each point, a child process (this test binary, run again with
//! `CHILD_DIR` set) arms it (`hearth_store::crash_at`, cargo feature
//! `failpoints`) and runs one workload that passes every point: posts
//! (printing each id once acknowledged), an ingest of a peer's entries in
//! batches, a checkpoint, deletes, a compaction, more posts. It aborts at
//! the point (as a `kill -9` stops it). The parent then checks that the
//! child got there (a point never reached proves nothing), reopens the
//! store and finds every acknowledged post, every acknowledged delete, and
//! a clean verify; the peer's entries, taken again, leave the channel
//! whole. Each point is also crashed at a later pass (its fourth), in the
//! middle of the run.
//!
//! The same again with someone listening to the store's events, as a sync
//! node does: a write is then acknowledged once the feed log's sync that
//! covers its group ends, and its journal record is never synced (the
//! child passes `journal.synced` never, and finishes).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use hearth::store::{CRASH_POINTS, Store};
use hearth::{ChannelId, Config, Hearth, KdfParams, MessageId, Passphrase};

const CHILD_DIR: &str = "HEARTH_CRASH_POINT_DIR";
const CHILD_POINT: &str = "HEARTH_CRASH_POINT";
const CHILD_SKIP: &str = "HEARTH_CRASH_POINT_SKIP";
/// Set: the child listens to the store's events all along.
const CHILD_LISTEN: &str = "HEARTH_CRASH_POINT_LISTEN";
const PASS: &str = "crash points";
/// The peer's entries, one hex line each, beside the store.
const PEER_ENTRIES: &str = "peer-entries";

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child: does nothing unless run by the parent test.
#[test]
fn crash_points_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let point = std::env::var(CHILD_POINT).expect("a point");
    let skip: u64 = std::env::var(CHILD_SKIP).expect("a skip").parse().expect("a number");
    hearth::store::crash_at(&point, skip).expect("a known point");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // libtest has printed "test crash_points_child ... " without a newline.
        say("");
        let dir = Path::new(&dir);
        let h = Hearth::open(dir.join("store"), &Passphrase::new(PASS), config())
            .await
            .expect("the child's open");
        let _listening = std::env::var_os(CHILD_LISTEN).map(|_| h.plumbing().store().subscribe());
        let channel = h.resolve_channel("shared").await.expect("the channel");
        let mut mine = Vec::new();
        for i in 0..30 {
            let id = h.post(channel, &format!("first {i}")).await.expect("a post");
            say(&format!("ack {}", id.to_hex()));
            mine.push(id);
        }
        let entries: Vec<Vec<u8>> = std::fs::read_to_string(dir.join(PEER_ENTRIES))
            .expect("the peer's entries")
            .lines()
            .map(hex)
            .collect();
        let wire = h.plumbing().store().channel_keys(channel).await.expect("keys").wire();
        // Six parts: three now, one in each round below.
        let parts: Vec<&[Vec<u8>]> = entries.chunks(entries.len().div_ceil(6)).collect();
        assert_eq!(parts.len(), 6, "{} entries", entries.len());
        for part in &parts[..3] {
            h.plumbing().ingest(wire, part.to_vec()).await.expect("an ingest");
            say("ingested");
        }
        h.plumbing().checkpoint().await.expect("a checkpoint");
        say("checkpointed");
        for i in 0..10 {
            let id = h.post(channel, &format!("second {i}")).await.expect("a post");
            say(&format!("ack {}", id.to_hex()));
        }
        for id in mine.iter().take(5) {
            h.delete(*id).await.expect("a delete");
            say(&format!("deleted {}", id.to_hex()));
        }
        h.compact().await.expect("a compaction");
        say("compacted");
        for i in 0..10 {
            let id = h.post(channel, &format!("third {i}")).await.expect("a post");
            say(&format!("ack {}", id.to_hex()));
        }
        h.plumbing().checkpoint().await.expect("a checkpoint");
        // Several passes over every point, for the later crashes.
        for round in 0..3 {
            for i in 0..5 {
                let id = h.post(channel, &format!("round {round} {i}")).await.expect("a post");
                say(&format!("ack {}", id.to_hex()));
            }
            h.plumbing()
                .ingest(wire, parts[3 + round].to_vec())
                .await
                .expect("an ingest");
            h.plumbing().checkpoint().await.expect("a checkpoint");
            h.delete(mine[5 + round]).await.expect("a delete");
            say(&format!("deleted {}", mine[5 + round].to_hex()));
            h.compact().await.expect("a compaction");
        }
        h.close().await.expect("a close");
        say("closed");
    });
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A store the child opens, sharing a channel with a peer whose entries
/// wait beside it; returns the channel and how many messages the peer wrote.
async fn prepare(dir: &Path) -> (ChannelId, u64) {
    let pass = Passphrase::new(PASS);
    let peer = Store::create(dir.join("peer"), &pass, "peer", config())
        .await
        .expect("peer");
    let channel = peer.create_channel("shared").await.expect("a channel");
    // Listened, each write closes its own entry: enough entries for the
    // child's six parts, whatever the disk's speed (unlistened, writes
    // that come within a few milliseconds share one).
    let _listening = peer.subscribe();
    for i in 0..24 {
        let id = peer.post(channel, &format!("from the peer {i}")).await.expect("a post");
        if i % 4 == 0 {
            peer.react(id, "👍").await.expect("a reaction");
        }
    }
    let keys = peer.channel_keys(channel).await.expect("keys");
    let all = peer
        .entries_after(keys.wire(), Default::default(), usize::MAX, usize::MAX)
        .await
        .expect("entries");
    let lines: Vec<String> = all.entries.iter().map(|e| to_hex(e)).collect();
    std::fs::write(dir.join(PEER_ENTRIES), lines.join("\n")).expect("write the entries");
    let messages = peer.channel(channel).await.expect("the channel").messages;
    peer.close().await.expect("close");
    let me = Store::create(dir.join("store"), &pass, "me", config())
        .await
        .expect("store");
    me.join_channel_named(keys, "shared").await.expect("join");
    me.close().await.expect("close");
    (channel, messages)
}

/// Run the child armed at `point` (its `skip + 1`-th pass); returns what it
/// printed, and whether it crashed.
fn run_child(dir: &Path, point: &str, skip: u64, listen: bool) -> (Vec<String>, bool) {
    let mut cmd = Command::new(std::env::current_exe().expect("this binary"));
    cmd.args(["crash_points_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_POINT, point)
        .env(CHILD_SKIP, skip.to_string());
    if listen {
        cmd.env(CHILD_LISTEN, "1");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let out = child.stdout.take().expect("stdout");
    // A child that hangs (a writer never acknowledged, say) fails the test
    // instead of holding it up.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
        let _ = tx.send(lines);
    });
    let Ok(lines) = rx.recv_timeout(std::time::Duration::from_secs(300)) else {
        let _ = child.kill();
        panic!("{point} (pass {}): the child hung for 5 minutes", skip + 1);
    };
    let status = child.wait().expect("wait");
    let closed = lines.iter().any(|l| l == "closed");
    assert!(
        closed || !status.success(),
        "{point}: the child neither finished nor crashed: {status}"
    );
    (lines, !closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_point_loses_nothing_acknowledged() {
    crash_at_points(CRASH_POINTS, false).await;
}

/// Listened, a write's journal record is not synced: its acknowledgement
/// waits for the feed log's sync instead, so a crash right after the log's
/// batch or sled's, or in a checkpoint, must keep every write acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_a_listener_loses_nothing_acknowledged() {
    let points: Vec<&str> = CRASH_POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with("group.") || p.starts_with("checkpoint."))
        .collect();
    crash_at_points(&points, true).await;
    // And no write needed the journal's sync.
    let dir = tempfile::tempdir().expect("tempdir");
    prepare(dir.path()).await;
    let (lines, crashed) = run_child(dir.path(), "journal.synced", 0, true);
    assert!(
        !crashed,
        "a listened write synced its journal record: {:?}",
        lines.last()
    );
    assert!(lines.iter().filter(|l| l.starts_with("ack ")).count() >= 65);
}

async fn crash_at_points(points: &[&str], listen: bool) {
    let mut crashed_at = Vec::new();
    for point in points {
        for skip in [0, 3] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (channel, peer_messages) = prepare(dir.path()).await;
            let (lines, crashed) = run_child(dir.path(), point, skip, listen);
            assert!(crashed, "{point} (pass {}): never reached", skip + 1);
            crashed_at.push(format!("{point}#{}", skip + 1));
            let acked: Vec<MessageId> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("ack "))
                .map(|h| h.parse().expect("an id"))
                .collect();
            let deleted: Vec<MessageId> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("deleted "))
                .map(|h| h.parse().expect("an id"))
                .collect();
            let h = Hearth::open(dir.path().join("store"), &Passphrase::new(PASS), config())
                .await
                .unwrap_or_else(|e| panic!("{point}#{}: does not open after the crash: {e}", skip + 1));
            for id in &acked {
                let m = h
                    .message(*id)
                    .await
                    .unwrap_or_else(|e| panic!("{point}#{}: acknowledged {id} lost: {e}", skip + 1));
                // A delete the crash cut off before its acknowledgement may
                // have stood or not; an acknowledged one stands.
                assert!(
                    m.message.deleted || !deleted.contains(id),
                    "{point}#{}: the acknowledged delete of {id} is lost",
                    skip + 1
                );
            }
            let report = h.verify().await.expect("verify");
            assert!(report.is_clean(), "{point}#{}: {:?}", skip + 1, report.problems);
            // What a crash in an ingest lost comes again from the peer.
            let entries: Vec<Vec<u8>> = std::fs::read_to_string(dir.path().join(PEER_ENTRIES))
                .expect("entries")
                .lines()
                .map(hex)
                .collect();
            let wire = h.plumbing().store().channel_keys(channel).await.expect("keys").wire();
            h.plumbing().ingest(wire, entries).await.expect("ingest again");
            let held = h.channel(channel).await.expect("the channel").messages;
            assert!(
                held >= peer_messages + acked.len() as u64,
                "{point}#{}: {held} messages held, {peer_messages} + {} expected",
                skip + 1,
                acked.len()
            );
            h.close().await.expect("close");
        }
    }
    eprintln!("crashed at: {}", crashed_at.join(", "));
}
