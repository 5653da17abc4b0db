//! Compaction under kill -9, while the store is written: a child process (this
//! test binary, run again with `CHILD_DIR` set) posts without a break, and
//! deletes and compacts in a loop beside it, printing each post's id once it is
//! acknowledged, each delete once it is, and each compaction once it is done.
//! The parent SIGKILLs it at a random moment (most land in a compaction: the
//! child does little else), opens the store and checks that every
//! acknowledged post is there with its text, every acknowledged delete stays a
//! delete, `verify` is clean and no compaction is left half done. Then the
//! next round, on the same store.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_core::{KdfParams, MessageId, Passphrase};
use hearth_store::{Config, Store};

#[path = "../../tests/support/rng.rs"]
mod rng;
use rng::Rng;

const CHILD_DIR: &str = "HEARTH_COMPACT_CRASH_DIR";
const CHILD_ROUND: &str = "HEARTH_COMPACT_CRASH_ROUND";
const PASS: &str = "compact crash passphrase";
const ROUNDS: u32 = 12;

fn config() -> Config {
    let mut c = Config::default().with_kdf(KdfParams::INSECURE_FAST);
    // Only the compactions the child asks for.
    c.compact_after = None;
    c
}

/// One line to stdout, whole, flushed: a line cut by the kill never counts.
fn say(out: &Mutex<std::io::Stdout>, line: String) {
    let mut o = out.lock().unwrap();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// The child: does nothing unless run by the parent test.
#[test]
fn compact_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u32 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let s = Arc::new(Store::open(&dir, &Passphrase::new(PASS), config()).await.unwrap());
        let general = s.channels().await.unwrap()[0].id;
        let out = Arc::new(Mutex::new(std::io::stdout()));
        // libtest has printed "test compact_crash_child ... " without a
        // newline: end that line, so that every acknowledgement has its own.
        say(&out, String::new());
        let writer = {
            let (s, out) = (s.clone(), out.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let text = format!("round {round} post {i}");
                    let id = s.post(general, &text).await.unwrap();
                    say(&out, format!("P {id} {text}"));
                }
            })
        };
        for n in 0.. {
            let id = s.post(general, &format!("round {round} doomed {n}")).await.unwrap();
            s.delete(id).await.unwrap();
            say(&out, format!("D {id}"));
            s.compact().await.unwrap();
            say(&out, "C".to_string());
        }
        writer.await.unwrap();
    });
}

/// What a child printed before it was killed.
#[derive(Default)]
struct Printed {
    posts: Vec<(MessageId, String)>,
    deletes: Vec<MessageId>,
    compactions: u32,
}

fn run_child(dir: &Path, round: u32, kill_after: Duration) -> Printed {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["compact_crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = Arc::new(Mutex::new(Printed::default()));
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                // Only whole lines: one the kill cut was never acknowledged.
                if let Some(l) = line.strip_suffix('\n') {
                    let mut p = printed.lock().unwrap();
                    if let Some(rest) = l.strip_prefix("P ") {
                        let (id, text) = rest.split_once(' ').unwrap();
                        p.posts.push((id.parse().unwrap(), text.to_string()));
                        let _ = first_tx.send(());
                    } else if let Some(id) = l.strip_prefix("D ") {
                        p.deletes.push(id.parse().unwrap());
                    } else if l == "C" {
                        p.compactions += 1;
                    }
                }
                line.clear();
            }
        })
    };
    // Killed this long after its first acknowledged post (the open apart).
    first_rx.recv_timeout(Duration::from_secs(60)).expect("the child posts");
    std::thread::sleep(kill_after);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    // Killed, not failed: a child that panicked (a compaction that returned
    // an error) exits on its own with 101.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child died of something else: {status:?}"
    );
    reader.join().unwrap();
    Arc::into_inner(printed).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_killed_at_any_moment_loses_nothing() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let pass = Passphrase::new(PASS);
    let s = Store::create(&dir, &pass, "alice", config()).await.unwrap();
    let general = s.create_channel("general").await.unwrap();
    // Some history, so that a compaction has something to copy.
    for i in 0..300 {
        s.post(general, &format!("history {i}")).await.unwrap();
    }
    s.close().await.unwrap();
    let mut rng = Rng(0xdead_c0de);
    let (mut posts, mut deletes, mut compactions, mut midway) = (Vec::new(), Vec::new(), 0, 0);
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.below_u64(800));
        let d = dir.clone();
        let printed = tokio::task::spawn_blocking(move || run_child(&d, round, kill_after))
            .await
            .unwrap();
        posts.extend(printed.posts);
        deletes.extend(printed.deletes);
        compactions += printed.compactions;
        // Killed in the middle of one: its directory is there for the open.
        midway += u32::from(dir.join("compact.tmp").exists() || dir.join("compacted").exists());
        let t = Instant::now();
        let s = Store::open(&dir, &pass, config()).await.unwrap();
        let opened = t.elapsed();
        for left in ["compact", "compacted", "compact.tmp", "log.old"] {
            assert!(!dir.join(left).exists(), "round {round}: {left} left after an open");
        }
        for (id, text) in &posts {
            let m = s.message(*id).await.unwrap().message;
            assert_eq!(m.text.as_deref(), Some(text.as_str()), "round {round}: {id}");
        }
        for id in &deletes {
            let m = s.message(*id).await.unwrap().message;
            assert!(m.deleted && m.text.is_none(), "round {round}: {id} is back");
        }
        assert!(s.verify().await.unwrap().is_clean(), "round {round}");
        s.close().await.unwrap();
        eprintln!(
            "round {round}: killed {kill_after:?} after the first post; {} posts, {} deletes, {compactions} \
             compactions so far ({midway} kills in the middle of one); reopened in {opened:?}",
            posts.len(),
            deletes.len()
        );
    }
    assert!(compactions > 0, "some compactions finished between the kills");
    // The kills land in compactions (the child does little else): a round
    // whose kill cut one short is what this test is for.
    assert!(midway > 0, "no kill landed in the middle of a compaction");
}
