//! Entries sent before they are durable (`Store::send_early`; ARCHITECTURE.md,
//! "Entries that leave before they are durable").
//!
//! - An early run's entries may leave while the log's sync that makes them
//!   durable is held, and their writes are acknowledged only after it; a
//!   clean close ends the run (its flag and mark go) and the store reopens
//!   as the same device.
//! - A process killed (`kill -9`) in an early run loses nothing written: it
//!   reopens as the same device. A power cut that lost entries already sent
//!   (the log cut back, the tmpfs mark gone with the machine) reopens as a
//!   new device of the same user, which never writes to the old feeds; the
//!   entries that were sent come back to it from the peer that got them,
//!   and nobody sees a fork.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hearth::store::{
    EARLY_FILE, EarlyFlag, Outgoing, Store, StoreEvent, early_mark_path, encode_early_flag, fail_log_syncs,
    hold_log_syncs,
};
use hearth::{Config, KdfParams, MessageId, Passphrase};
use tokio::sync::broadcast;

const CHILD_DIR: &str = "HEARTH_EARLY_CHILD_DIR";
const PASS: &str = "early passphrase";
/// Posts the child makes, and how many of them the power cut loses.
const POSTS: usize = 12;
const LOST: usize = 4;
const BIG: usize = 1 << 20;

fn config() -> Config {
    // No delivery receipts: they would be groups of their own.
    Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_receipt_delay(Duration::from_secs(3600))
}

/// The fail points are the process's: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The next local `Appended` event's handed-over entries.
async fn next_local(events: &mut broadcast::Receiver<StoreEvent>) -> Outgoing {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("an Appended event")
            .expect("events");
        if let StoreEvent::Appended {
            local: true,
            outgoing: Some(o),
            ..
        } = e
        {
            return o;
        }
    }
}

/// A store of Alice's at `path` with one channel.
async fn alice(path: &Path, pass: &Passphrase) -> (Store, hearth::ChannelId) {
    let store = Store::create(path, pass, "alice", config()).await.unwrap();
    let channel = store.create_channel("general").await.unwrap();
    (store, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_entry_leaves_before_its_sync_and_its_write_waits_for_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, pass) = (dir.path().join("a"), Passphrase::new(PASS));
    let (store, channel) = alice(&path, &pass).await;
    let me = store.whoami().device;
    assert!(!path.join(EARLY_FILE).exists());
    assert!(store.send_early().await.unwrap(), "an owner's device can be reborn");
    // From now on: the channel's own group closed before the run started.
    let mut events = store.subscribe();
    assert!(path.join(EARLY_FILE).exists(), "the run's flag before any entry leaves");

    let before = store.post(channel, "before the hold").await.unwrap();
    let _ = next_local(&mut events).await;
    let hold = hold_log_syncs();
    let s = store.clone();
    let post = tokio::spawn(async move { s.post(channel, "sent early").await });
    let o = next_local(&mut events).await;
    // A write that changes nothing (no such reaction): its group writes
    // nothing to the log, and it waits for the log's sync all the same,
    // which a journal sync of its own would not (and would settle the post
    // before its entry is durable).
    let s = store.clone();
    let noop = tokio::spawn(async move { s.unreact(before, "🎉").await });
    assert!(o.early());
    tokio::time::timeout(Duration::from_secs(5), o.sendable())
        .await
        .expect("an early entry may leave while its log sync is held")
        .unwrap();
    let mut before = o.vector().clone();
    before.step_back(&me);
    assert_eq!(o.entries_after(&before, BIG, 64).unwrap().entries.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!post.is_finished(), "a write acknowledged before its group is durable");
    assert!(
        !noop.is_finished(),
        "a write that changed nothing acknowledged by the journal alone"
    );
    drop(hold);
    tokio::time::timeout(Duration::from_secs(20), noop)
        .await
        .expect("acknowledged once the sync goes on")
        .unwrap()
        .unwrap();
    let id = tokio::time::timeout(Duration::from_secs(20), post)
        .await
        .expect("acknowledged once the sync goes on")
        .unwrap()
        .unwrap();
    o.durable().await.unwrap();

    // A clean close ends the run: no flag, no mark, the same device.
    let mark = early_mark_path(&path);
    store.close().await.unwrap();
    assert!(!path.join(EARLY_FILE).exists());
    assert!(mark.is_none_or(|m| !m.exists()), "the mark outlived a clean close");
    let again = Store::open(&path, &pass, config()).await.unwrap();
    assert_eq!(again.open_report().reborn_from, None);
    assert_eq!(again.whoami().device, me);
    assert_eq!(
        again.message(id).await.unwrap().message.text.as_deref(),
        Some("sent early")
    );
    again.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_sync_drops_the_mark_and_the_next_open_makes_a_new_device() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, pass) = (dir.path().join("a"), Passphrase::new(PASS));
    let (store, channel) = alice(&path, &pass).await;
    let old = store.whoami().device;
    assert!(store.send_early().await.unwrap());
    let Some(mark) = early_mark_path(&path) else {
        eprintln!("no tmpfs for marks here: nothing to drop");
        return;
    };
    assert!(mark.exists());
    store.post(channel, "durable").await.unwrap();
    // The sync that would make the next post durable fails: the post is
    // refused, and its entry may have left; the mark goes at once, before
    // the writer hears of it.
    let fail = fail_log_syncs();
    assert!(store.post(channel, "sent, never durable").await.is_err());
    assert!(!mark.exists(), "the mark outlived a failed log sync");
    drop(fail);
    assert!(store.close().await.is_err(), "a poisoned store");
    assert!(path.join(EARLY_FILE).exists(), "no clean close: the flag stays");
    let again = Store::open(&path, &pass, config()).await.unwrap();
    assert_eq!(again.open_report().reborn_from, Some(old));
    assert_ne!(again.whoami().device, old);
    let texts: Vec<Option<String>> = again
        .all_messages(channel)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(texts.contains(&Some("durable".to_string())));
    again.close().await.unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The feed log's newest segment of the store at `dir`.
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// The child: does nothing unless run by the parent test. Sends early,
/// posts, and prints each post's entries (what a peer would have got), the
/// log's length and the post's id once acknowledged; then waits to be
/// killed.
#[test]
fn early_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let rt = rt();
    rt.block_on(async move {
        let s = Store::open(&dir, &Passphrase::new(PASS), config()).await.unwrap();
        let channel = s.channels().await.unwrap()[0].id;
        let me = s.whoami().device;
        assert!(s.send_early().await.unwrap());
        let mut events = s.subscribe();
        // End libtest's "test early_child ... " line.
        println!();
        for i in 0..POSTS {
            let id = s.post(channel, &format!("early {i}")).await.unwrap();
            let o = next_local(&mut events).await;
            assert!(o.early());
            let mut before = o.vector().clone();
            before.step_back(&me);
            for e in o.entries_after(&before, BIG, 64).unwrap().entries {
                println!("E {}", hex(&e));
            }
            let len = std::fs::metadata(newest_segment(Path::new(&dir))).unwrap().len();
            println!("L {len}");
            println!("P {id}");
        }
        println!("DONE");
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

/// What the child printed: entries, log lengths and ids, one per post.
struct Printed {
    entries: Vec<Vec<u8>>,
    lens: Vec<u64>,
    ids: Vec<MessageId>,
}

fn run_child(dir: &Path) -> Printed {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["early_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut p = Printed {
        entries: Vec::new(),
        lens: Vec::new(),
        ids: Vec::new(),
    };
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(e) = line.strip_prefix("E ") {
            p.entries.push(unhex(e));
        } else if let Some(l) = line.strip_prefix("L ") {
            p.lens.push(l.parse().unwrap());
        } else if let Some(id) = line.strip_prefix("P ") {
            p.ids.push(id.parse().unwrap());
        } else if line == "DONE" {
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the child died of something else: {status:?}");
    assert_eq!((p.entries.len(), p.lens.len(), p.ids.len()), (POSTS, POSTS, POSTS));
    p
}

async fn texts(s: &Store, channel: hearth::ChannelId) -> Vec<String> {
    let mut t: Vec<String> = s
        .all_messages(channel)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    t.sort();
    t
}

async fn clean(s: &Store, who: &str) {
    let v = s.verify().await.unwrap();
    assert!(v.problems.is_empty(), "{who}: {:?}", v.problems);
    assert!(v.forks.is_empty(), "{who}: a fork: {:?}", v.forks);
}

#[test]
fn entries_sent_early_and_lost_in_a_power_cut_come_back_to_a_reborn_device() {
    if std::env::var_os(CHILD_DIR).is_some() {
        return;
    }
    let rt = rt();
    let _one = rt.block_on(ONE_AT_A_TIME.lock());
    let root = tempfile::tempdir().unwrap();
    let (a_dir, killed_dir, cut_dir) = (
        root.path().join("a"),
        root.path().join("killed"),
        root.path().join("cut"),
    );
    let pass = Passphrase::new(PASS);
    let (b, channel, wire, old) = rt.block_on(async {
        let a = Store::create(&a_dir, &pass, "alice", config()).await.unwrap();
        let b = Store::create(root.path().join("b"), &pass, "bob", config())
            .await
            .unwrap();
        let channel = a.create_channel("general").await.unwrap();
        let keys = a.channel_keys(channel).await.unwrap();
        let wire = keys.wire();
        b.join_channel(keys).await.unwrap();
        a.post(channel, "before").await.unwrap();
        let batch = a
            .entries_after(wire, b.vector(channel).await.unwrap(), BIG, 64)
            .await
            .unwrap();
        b.ingest(wire, batch.entries).await.unwrap();
        let old = a.whoami().device;
        a.close().await.unwrap();
        (b, channel, wire, old)
    });
    let head = rt.block_on(b.vector(channel)).unwrap().seq(&old);

    let printed = run_child(&a_dir);
    // The state a kill -9 leaves (everything written is in the page cache),
    // twice: once as it is, once cut back as a power cut would have cut it
    // had the last syncs not ended.
    hearth::store::copy_dir_durably(&a_dir, &killed_dir).unwrap();
    hearth::store::copy_dir_durably(&a_dir, &cut_dir).unwrap();
    let mark = early_mark_path(&a_dir);
    if mark.is_none() {
        eprintln!("no tmpfs for marks here: a killed process is reborn too");
    }

    rt.block_on(async {
        let all: Vec<String> = std::iter::once("before".to_string())
            .chain((0..POSTS).map(|i| format!("early {i}")))
            .collect();
        let mut all_sorted = all.clone();
        all_sorted.sort();

        // Killed: the same device, nothing lost, the run's flag and mark gone.
        let killed = Store::open(&killed_dir, &pass, config()).await.unwrap();
        if let Some(m) = &mark {
            assert_eq!(killed.open_report().reborn_from, None, "a kill -9 loses nothing sent");
            assert_eq!(killed.whoami().device, old);
            assert!(!m.exists());
        }
        assert!(!killed_dir.join(EARLY_FILE).exists());
        assert_eq!(texts(&killed, channel).await, all_sorted);
        clean(&killed, "killed").await;

        // Cut: the machine went down (no mark), the log lost the last posts.
        let seg = newest_segment(&cut_dir);
        let keep = printed.lens[POSTS - LOST - 1];
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(keep)
            .unwrap();
        if let Some(m) = &mark {
            let _ = std::fs::remove_file(m);
        }
        let cut = Store::open(&cut_dir, &pass, config()).await.unwrap();
        let report = cut.open_report().clone();
        assert_eq!(report.reborn_from, Some(old), "{report:?}");
        let me = cut.whoami().clone();
        assert_ne!(me.device, old, "a new device");
        assert_eq!(me.former, vec![old], "the old id a former one");
        assert!(!cut_dir.join(EARLY_FILE).exists());
        assert_eq!(
            cut.vector(channel).await.unwrap().seq(&old),
            head + (POSTS - LOST) as u64
        );
        for id in &printed.ids[POSTS - LOST..] {
            assert!(cut.message(*id).await.is_err(), "a post the power cut lost is there");
        }
        clean(&cut, "reborn").await;
        // An open that reborn it and was cut short before the flag went
        // leaves the old device's flag: the next open keeps the new device.
        cut.close().await.unwrap();
        let flag = EarlyFlag {
            run: [9; 16],
            device: old,
        };
        std::fs::write(cut_dir.join(EARLY_FILE), encode_early_flag(&flag)).unwrap();
        let cut = Store::open(&cut_dir, &pass, config()).await.unwrap();
        assert_eq!(cut.open_report().reborn_from, None);
        assert_eq!(cut.whoami().device, me.device);
        assert!(!cut_dir.join(EARLY_FILE).exists());

        // The peer got every entry as it was sent; the reborn device gets
        // the lost ones back from it, as the old device's.
        let got = b.ingest(wire, printed.entries.clone()).await.unwrap();
        assert!(got.rejected.is_empty(), "{:?}", got.rejected);
        assert_eq!(texts(&b, channel).await, all_sorted);
        let back = b
            .entries_after(wire, cut.vector(channel).await.unwrap(), BIG, 64)
            .await
            .unwrap();
        let got = cut.ingest(wire, back.entries).await.unwrap();
        assert!(got.rejected.is_empty(), "{:?}", got.rejected);
        assert_eq!(texts(&cut, channel).await, all_sorted);
        for id in &printed.ids {
            assert_eq!(cut.message(*id).await.unwrap().message.author, me.user);
        }

        // Both write on: the reborn device in a feed of its own, the killed
        // image in the old one (a fork only if the reborn device wrote it).
        cut.post(channel, "after the power cut").await.unwrap();
        killed.post(channel, "after the kill").await.unwrap();
        for from in [&cut, &killed] {
            let batch = from
                .entries_after(wire, b.vector(channel).await.unwrap(), BIG, 64)
                .await
                .unwrap();
            let got = b.ingest(wire, batch.entries).await.unwrap();
            assert!(got.rejected.is_empty(), "{:?}", got.rejected);
        }
        let v = b.vector(channel).await.unwrap();
        assert_eq!(v.seq(&me.device), 1, "the reborn device's own feed");
        clean(&b, "bob").await;
        clean(&cut, "reborn").await;
        cut.close().await.unwrap();
        killed.close().await.unwrap();
        b.close().await.unwrap();
    });
}
