//! Migrations under kill -9. A child process (this test binary, run again
//! with `CHILD_DIR` set) opens a copy of a fixture store of an older format,
//! which migrates it in place, and prints a line when the open has returned;
//! the parent SIGKILLs it at a random moment of that open, several times on
//! the same copy, then opens the copy itself: it must open (finishing or
//! redoing the migration), verify clean, and answer exactly what the code of
//! its format answered (`tests/fixtures/<format>/<store>.answers.json`, the
//! check of tests/fixtures.rs); the next open has nothing left to migrate.
//!
//! The formats whose open does more than mark sled's format row: 1 writes
//! its feed log (from a copy of sled, through `log.tmp/`), 2 and 3 give the
//! device keys of its own, and 1 to 6 move the device to its keyed id (each
//! an identity record appended to the log). The opens of 7, 8 and 9 only
//! mark the row (store/src/open.rs), which a kill leaves marked or not.
//!
//! The kills are spread over the time one open of a fresh copy takes, timed
//! first; a kill that lands after the open returned (the child had printed
//! its line) proves nothing about the migration, and ends the kills on that
//! copy. How many landed inside is printed.
//!
//! Now and then a kill leaves sled unable to open (sled 0.34 after a kill in
//! its own writes: its issues 1509, 1527 and 1533), and the next open builds
//! it afresh from the feed log: that path must answer the same too.
//!
//! `HEARTH_MIGRATE_CRASH_SEED=<n>` replays the kill moments of a run (where
//! they land still depends on the machine).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use hearth::Passphrase;
use hearth::store::Store;
use serde_json::Value;

#[path = "support/answers.rs"]
mod answers;
use answers::{FIXTURE_PASS, assert_answers_as_written, copy_dir, fixture, fixture_answers, fixture_config};
#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const CHILD_DIR: &str = "HEARTH_MIGRATE_CRASH_DIR";
const SEED: &str = "HEARTH_MIGRATE_CRASH_SEED";
/// The formats whose open migrates (see the module docs).
const FORMATS: [u8; 6] = [1, 2, 3, 4, 5, 6];
/// The crash image (a journal to replay, receipts owed) and a linked device
/// closed cleanly.
const STORES: [&str; 2] = ["alice", "alice-phone"];
/// Copies of each store killed, and the kills on each at the most.
const COPIES: usize = 4;
const KILLS: usize = 4;
/// What the child prints when its open has returned.
const OPENED: &str = "opened";

/// The child: does nothing unless run by the parent test.
#[test]
fn migrate_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // libtest has printed "test migrate_crash_child ... " without a
        // newline: end that line, so that each line of ours is whole.
        say("");
        say("opening");
        let _open = Store::open(&dir, &Passphrase::new(FIXTURE_PASS), fixture_config())
            .await
            .expect("the child's open");
        say(OPENED);
        // Killed here, or earlier.
        std::future::pending::<()>().await;
    });
}

/// One line to stdout, whole, flushed.
fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// A child opening the store in `dir`, and its lines as they come.
fn spawn_child(dir: &Path) -> (Child, Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .args(["migrate_crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Wait for the child's line `want`.
fn expect_line(rx: &Receiver<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == want => return,
            Ok(_) => {}
            Err(e) => panic!("the child did not print {want:?}: {e} (its stderr is above)"),
        }
    }
}

/// SIGKILL the child and check that it died of it: a child whose open failed
/// exits on its own, with 101.
fn kill(mut child: Child, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{what}: the child died of something else ({status:?}): its open failed? (its stderr is above)"
    );
}

/// How long a child's open of a fresh copy of `store` takes, from its
/// "opening" line to its "opened" one: the shorter of two, so that one slowed
/// by a busy machine does not spread the kills past the migration.
fn time_an_open(store: &Path, tmp: &Path) -> Duration {
    (0..2)
        .map(|i| {
            let dir = tmp.join(format!("timed-{i}"));
            copy_dir(store, &dir);
            let (child, rx) = spawn_child(&dir);
            expect_line(&rx, "opening");
            let t = Instant::now();
            expect_line(&rx, OPENED);
            let took = t.elapsed();
            kill(child, "a timed open");
            took
        })
        .min()
        .expect("two")
}

/// Kill a child opening `dir` `after` its "opening" line; whether it was
/// still inside its open then.
fn kill_one_open(dir: &Path, after: Duration, what: &str) -> bool {
    let (child, rx) = spawn_child(dir);
    expect_line(&rx, "opening");
    std::thread::sleep(after);
    kill(child, what);
    // The reader has every whole line the child printed before it died.
    !rx.iter().any(|l| l == OPENED)
}

/// The copy in `dir`, killed in its migration, opened by this process:
/// it opens, has nothing half done, moved its device once, answers as its
/// fixture did and verifies clean (which also checks that the feed log
/// holds what sled does); the open after has nothing to do. Returns what
/// the first open found.
async fn check(dir: &Path, expected: &Value, what: &str) -> String {
    let pass = Passphrase::new(FIXTURE_PASS);
    let s = Store::open(dir, &pass, fixture_config())
        .await
        .unwrap_or_else(|e| panic!("{what}: the store does not open after the kills: {e}"));
    let report = s.open_report();
    let moved = if report.moved_from.is_some() { "now" } else { "before" };
    let found = format!(
        "migrated from {:?}, moved {moved}, sled rebuilt: {:?}",
        report.migrated_from, report.rebuilt
    );
    for left in ["log.tmp", "db.v1"] {
        assert!(!dir.join(left).exists(), "{what}: {left} left after an open");
    }
    let me = s.whoami();
    assert!(hearth::core::device::is_keyed_id(&me.device), "{what}: on its keyed id");
    let old = expected["answers"]["device"].as_str().expect("device");
    let former: Vec<String> = me.former.iter().map(|d| d.to_string()).collect();
    assert_eq!(former, [old], "{what}: moved once, from its old id");
    assert_answers_as_written(&s, expected, what).await;
    let v = s.verify().await.expect("verify");
    assert!(v.is_clean(), "{what}: {v:?}");
    let cert = s.device_cert().await.expect("a device certificate");
    s.close().await.expect("close");
    let s = Store::open(dir, &pass, fixture_config()).await.expect("reopen");
    let report = s.open_report();
    assert_eq!(
        (report.migrated_from, report.moved_from),
        (None, None),
        "{what}: migrated once"
    );
    assert_eq!(s.device_cert().await.expect("cert"), cert, "{what}: the same keys");
    s.close().await.expect("close");
    found
}

#[test]
fn a_migration_killed_at_any_moment_resumes_and_answers_the_same() {
    let seed = std::env::var(SEED).map_or(0x6d69_6772_6174_6521, |s| {
        s.parse().unwrap_or_else(|_| panic!("{SEED}={s}: not a number"))
    });
    eprintln!("seed {seed} ({SEED}={seed} replays it)");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    let mut summary = Vec::new();
    for number in FORMATS {
        let format = format!("v{number}");
        let (mut kills, mut inside) = (0, 0);
        for name in STORES {
            let store = fixture(&format).join(name);
            let expected = fixture_answers(&format, name);
            let here = tmp.path().join(format!("{format}-{name}"));
            let took = time_an_open(&store, &here);
            for copy in 0..COPIES {
                let dir = here.join(format!("copy-{copy}"));
                copy_dir(&store, &dir);
                let what =
                    |at: &[Duration]| format!("{format}/{name} copy {copy} (seed {seed}, kills at {at:?} of {took:?})");
                let (mut at, mut landed) = (Vec::new(), 0);
                for _ in 0..KILLS {
                    let after = Duration::from_micros(rng.below_u64(took.as_micros() as u64));
                    at.push(after);
                    kills += 1;
                    if !kill_one_open(&dir, after, &what(&at)) {
                        // Migrated: the kills to come would land in opens of
                        // a store of today's format.
                        break;
                    }
                    landed += 1;
                }
                inside += landed;
                let what = what(&at);
                let found = rt.block_on(check(&dir, &expected, &what));
                eprintln!("{what}: {landed} inside; then opened: {found}");
            }
        }
        summary.push(format!("{format}: {kills} kills, {inside} inside the migrating open"));
        assert!(
            inside > 0,
            "{format}: no kill landed inside the migration (seed {seed})"
        );
    }
    eprintln!("{}", summary.join("\n"));
}
