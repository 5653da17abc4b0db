//! Power cuts on LazyFS (`tools/lazyfs`, through `support/lazyfs.rs`): a FUSE file
//! system that drops every write that was not fsynced when told to, which is what
//! losing power does to a page cache. A `kill -9` (see `crash.rs`) only loses what a
//! process had not yet handed to the kernel; a power cut also loses what the kernel
//! had not written, so it checks the fsyncs themselves.
//!
//! - `control_a_writer_without_fsync_loses_its_acknowledgements` proves the harness:
//!   records acknowledged after write() alone are all lost, records fdatasynced
//!   before their acknowledgement all survive.
//! - `posting_survives_power_cuts` runs the real `hearth` binary: streams posts,
//!   kills it at random moments (some while the store opens), cuts the power, and
//!   checks that the store opens, `verify` passes and every id that was printed (an
//!   id is printed only once its write is durable) is there with its exact text, and
//!   that nothing is there that was never written. Every third stream goes
//!   through the bulk path (`post --stdin --bulk`). Every fifth round a single
//!   `hearth post` runs to completion before the cut instead. A fresh store every
//!   five rounds, each cut once right after `init` and `channel create`. Every other
//!   round posts long, incompressible lines, so that sled writes blob files.
//!
//! LazyFS caches file data only: names (create, rename, unlink, mkdir) reach the
//! disk at once, so a missing directory fsync goes unnoticed here.
//!
//! Both need root and /dev/fuse, and skip with a notice otherwise (fail instead when
//! HEARTH_REQUIRE_POWERCUT=1). POWERCUT_ROUNDS (default 25) and POWERCUT_SEED change
//! the posting test; POWERCUT_KEEP=1 keeps the stores of a failed run for inspection.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hearth::MessageId;

#[path = "support/lazyfs.rs"]
mod lazyfs;
use lazyfs::LazyFs;

#[path = "../../tests/support/rng.rs"]
mod rng;
use rng::Rng;

// ---------------------------------------------------------------------------
// The control: the harness itself drops unsynced writes and keeps synced ones.

const CONTROL_RECORDS: usize = 1000;

/// Record `i` of writer `w`: fixed size, so that the survivors can be counted.
fn record(w: char, i: usize) -> String {
    let r = format!("{w} {i:06} the quick brown fox jumps over the lazy dog");
    format!("{r:<99}\n")
}

/// How many records, from the first, the file holds intact (0 if it is missing).
fn intact_records(path: &Path, w: char) -> usize {
    let data = std::fs::read(path).unwrap_or_default();
    data.chunks(100)
        .enumerate()
        .take_while(|(i, c)| *c == record(w, *i).as_bytes())
        .count()
}

#[test]
fn control_a_writer_without_fsync_loses_its_acknowledgements() {
    if !lazyfs::should_run("control_a_writer_without_fsync_loses_its_acknowledgements") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = LazyFs::mount(tmp.path());
    let dir = fs.mnt().join("control");
    std::fs::create_dir(&dir).expect("mkdir");
    lazyfs::sync_dir(fs.mnt());

    // A acknowledges each record once write() returns.
    let a_path = dir.join("a.log");
    let mut a = File::create(&a_path).expect("create a.log");
    lazyfs::sync_dir(&dir);
    let mut a_acked = 0;
    for i in 0..CONTROL_RECORDS {
        a.write_all(record('A', i).as_bytes()).expect("write A");
        a_acked += 1;
    }
    drop(a);

    // B acknowledges each record once fdatasync returns.
    let b_path = dir.join("b.log");
    let mut b = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&b_path)
        .expect("create b.log");
    lazyfs::sync_dir(&dir);
    let mut b_acked = 0;
    for i in 0..CONTROL_RECORDS {
        b.write_all(record('B', i).as_bytes()).expect("write B");
        b.sync_data().expect("fdatasync B");
        b_acked += 1;
    }
    drop(b);

    // Before the cut, both files read back whole (through LazyFS's cache).
    assert_eq!(intact_records(&a_path, 'A'), CONTROL_RECORDS, "A before the cut");
    assert_eq!(intact_records(&b_path, 'B'), CONTROL_RECORDS, "B before the cut");

    fs.cut();

    let a_left = intact_records(&a_path, 'A');
    let b_left = intact_records(&b_path, 'B');
    eprintln!(
        "control: A (write only) kept {a_left} of {a_acked} acknowledged records, \
         B (fdatasync each) kept {b_left} of {b_acked}"
    );
    assert!(a_left < a_acked, "the cut dropped nothing that A wrote without fsync");
    assert_eq!(a_left, 0, "A kept records it never synced");
    assert_eq!(
        std::fs::metadata(&a_path).map(|m| m.len()).unwrap_or(0),
        0,
        "A's file is not empty after the cut"
    );
    assert_eq!(b_left, b_acked, "B lost records it had fdatasynced");
    assert_eq!(
        std::fs::metadata(&b_path).expect("b.log").len(),
        (CONTROL_RECORDS * 100) as u64,
        "B's size"
    );
}

// ---------------------------------------------------------------------------
// The real binary, cut at random moments.

const PASS: &str = "power cut test passphrase";
const CHANNEL: &str = "cuts";
const DEFAULT_ROUNDS: u32 = 25;
const DEFAULT_SEED: u64 = 0x4845_4152_5448_4355;
/// Shortest and longest wait after the first acknowledged id before the kill.
const MIN_STREAM_MS: u64 = 20;
const MAX_STREAM_MS: u64 = 400;

/// Rounds on one store before the next starts afresh: `verify` and the read-back
/// check read the whole store, so a fresh one now and then keeps them fast.
const ROUNDS_PER_STORE: u32 = 5;

/// Rounds that run one `hearth post CHANNEL TEXT` to completion instead of a stream.
fn single_post(round: u32) -> bool {
    round.is_multiple_of(5)
}

/// Stream rounds through the bulk path (`post --stdin --bulk`: no journal,
/// each run of lines durable in the feed log before its ids are printed).
fn bulk_round(round: u32) -> bool {
    round % 3 == 1
}

/// Stream rounds killed while the store opens, before any id.
fn kill_during_open(round: u32) -> bool {
    round % 4 == 2
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

fn hearth(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.arg("--store")
        .arg(store)
        .env("HEARTH_PASSPHRASE", PASS)
        .env_remove("HEARTH_NEW_PASSPHRASE");
    c
}

/// Run to completion; `Err` (with the command, status and both outputs) unless it
/// exits 0.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n  stderr: {}\n  stdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{cmd:?}: output not UTF-8: {e}"))
}

/// Whether the lines of `round` are long (up to 1.6 KB): long lines fill feed
/// entries and snapshots past sled's blob threshold (about 128 KiB), so that sled
/// writes blob files, while short ones make many messages per round.
fn long_lines(round: u32) -> bool {
    round % 2 == 1
}

/// The text of line `n` of round `round`: unique across the whole test, of a
/// length that varies, and incompressible (hearth compresses what it stores).
fn text(round: u32, n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
    let mut r = Rng(((u64::from(round) << 32) | n as u64) ^ 0x7465_7874_6c69_6e65);
    let len = if single_post(round) {
        8 * 1024 + r.below(7 * 1024)
    } else if long_lines(round) {
        100 + r.below(1500)
    } else {
        r.below(60)
    };
    let filler: String = (0..len).map(|_| ALPHABET[r.below(ALPHABET.len())] as char).collect();
    format!("cut r{round:03} line {n:06}: {filler}.")
}

/// A text for an error message: its start and length.
fn short(t: &str) -> String {
    let start: String = t.chars().take(40).collect();
    format!("{start:?}... ({} bytes)", t.len())
}

/// Parse a text found in the store back into (round, line), if it is one of ours.
fn parse_text(t: &str) -> Option<(u32, usize)> {
    let rest = t.strip_prefix("cut r")?;
    let (round, rest) = rest.split_once(" line ")?;
    let (n, _) = rest.split_once(':')?;
    let (round, n) = (round.parse().ok()?, n.parse().ok()?);
    (text(round, n) == t).then_some((round, n))
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long after the spawn, meant to land while the store opens.
    AfterSpawn(Duration),
    /// This long after the first id is printed.
    AfterFirstId(Duration),
}

/// An acknowledged post: its id was printed (a complete line) by `hearth`.
struct Acked {
    id: MessageId,
    text: String,
    round: u32,
}

/// What one streaming child did before it was killed.
struct Stream {
    /// Ids printed, in input order: id `k` belongs to line `k`.
    acked: Vec<MessageId>,
    /// Lines fully written to the child's stdin.
    written: usize,
    /// Time from spawn to the first printed id, when there was one.
    first_id: Option<Duration>,
}

/// `hearth post CHANNEL --stdin`, fed lines until it is SIGKILLed at `kill`.
fn stream_round(store: &Path, round: u32, kill: Kill) -> Result<Stream, String> {
    let started = Instant::now();
    let mut child = hearth(store)
        .args(["post", CHANNEL, "--stdin"])
        .args(bulk_round(round).then_some("--bulk"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn hearth post --stdin: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");

    // Feed lines until the pipe breaks (the child is dead).
    let writer = thread::spawn(move || {
        let mut n = 0;
        while stdin.write_all(format!("{}\n", text(round, n)).as_bytes()).is_ok() {
            n += 1;
        }
        n
    });
    // Forward every complete line the child prints; a line cut by the kill was
    // never seen by a user, so it does not count as acknowledged.
    let (ids_tx, ids_rx) = mpsc::channel::<(Instant, Result<MessageId, String>)>();
    let reader = thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match out.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.last() != Some(&b'\n') => return,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    let id = s.parse::<MessageId>().map_err(|e| format!("bad id line {s:?}: {e}"));
                    if ids_tx.send((Instant::now(), id)).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let stderr_of = |child: &mut std::process::Child| {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    };
    let mut early = Vec::new();
    match kill {
        Kill::AfterSpawn(d) => thread::sleep(d.saturating_sub(started.elapsed())),
        Kill::AfterFirstId(d) => match ids_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(first) => {
                early.push(first);
                thread::sleep(d);
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                return Err(format!(
                    "hearth post --stdin printed no id within 60 s ({status:?}); stderr: {}",
                    stderr_of(&mut child)
                ));
            }
        },
    }
    if let Some(status) = child.try_wait().map_err(|e| format!("try_wait: {e}"))? {
        return Err(format!(
            "hearth post --stdin exited on its own ({status}) before the kill; stderr: {}",
            stderr_of(&mut child)
        ));
    }
    child.kill().map_err(|e| format!("SIGKILL the child: {e}"))?;
    let status = child.wait().map_err(|e| format!("wait for the child: {e}"))?;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("hearth post --stdin ended with {status}, not SIGKILL"));
    }
    let written = writer.join().expect("writer thread");
    reader.join().expect("reader thread");
    early.extend(ids_rx.try_iter());
    let first_id = early.first().map(|(t, _)| t.duration_since(started));
    let acked = early.into_iter().map(|(_, id)| id).collect::<Result<Vec<_>, _>>()?;
    Ok(Stream {
        acked,
        written,
        first_id,
    })
}

/// Figures of a run, printed at the end (and before a failure).
#[derive(Default)]
struct Figures {
    rounds: u32,
    stores: u32,
    cuts: u32,
    /// Distinct acknowledged posts.
    acked: usize,
    /// Acknowledged posts looked up after a cut, counted once per check.
    checked: usize,
    /// Stores that did not open after a cut.
    failed_opens: u32,
    /// Stores that opened but failed `verify`.
    verify_failures: u32,
    kills_before_first_id: u32,
    single_posts: u32,
    /// Files in sled's `db/blobs` (values past its blob threshold) at the end:
    /// only to show that the run made sled write some.
    sled_blobs: usize,
    /// LazyFS's cache usage at the fullest cut, in percent.
    peak_cache: f64,
    seed: u64,
    started: Option<Instant>,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "powercut summary: {} rounds on {} stores, {} cuts, {} acknowledged posts ({} checks of them after cuts), \
             {} stores failed to open, {} failed verify, {} kills before the first id, {} single posts, \
             {} sled blob files, peak LazyFS cache use {:.1}%, seed {}, {:.1} s",
            self.rounds,
            self.stores,
            self.cuts,
            self.acked,
            self.checked,
            self.failed_opens,
            self.verify_failures,
            self.kills_before_first_id,
            self.single_posts,
            self.sled_blobs,
            self.peak_cache,
            self.seed,
            self.started.map_or(0.0, |s| s.elapsed().as_secs_f64())
        )
    }
}

/// After a cut: the store opens and passes `verify`, every acknowledged post is
/// there with its text, and nothing is there that was never (fully) written, or twice.
fn check(
    store: &Path,
    when: &str,
    acked: &[Acked],
    written: &BTreeMap<u32, usize>,
    figures: &mut Figures,
) -> Result<(), String> {
    let out = hearth(store)
        .arg("verify")
        .output()
        .map_err(|e| format!("cannot run hearth verify: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = if stderr.contains("verify found") {
            figures.verify_failures += 1;
            "verify found problems"
        } else {
            figures.failed_opens += 1;
            "the store did not open"
        };
        return Err(format!(
            "after {when}: {what}: `hearth verify` exited {}:\n  stderr: {}\n  stdout: {}",
            out.status,
            stderr.trim_end(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        ));
    }

    let limit = written.values().sum::<usize>() + 10;
    let log = run(hearth(store)
        .args(["--json", "log", CHANNEL, "--limit"])
        .arg(limit.to_string()))
    .map_err(|e| format!("after {when}: reading the channel back: {e}"))?;
    let mut stored: BTreeMap<MessageId, String> = BTreeMap::new();
    let mut texts = BTreeSet::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("after {when}: bad log line {line:?}: {e}"))?;
        let id: MessageId = v["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("after {when}: log line without an id: {line}"))?;
        let t = v["text"]
            .as_str()
            .ok_or_else(|| format!("after {when}: message {id} without text: {line}"))?
            .to_string();
        let (round, n) = parse_text(&t).ok_or_else(|| format!("after {when}: text never written: {}", short(&t)))?;
        if n >= written.get(&round).copied().unwrap_or(0) {
            return Err(format!(
                "after {when}: round {round} line {n} stored but never fully written"
            ));
        }
        if !texts.insert(t.clone()) {
            return Err(format!("after {when}: line stored twice: {}", short(&t)));
        }
        if stored.insert(id, t).is_some() {
            return Err(format!("after {when}: id listed twice: {id}"));
        }
    }
    let mut lost = Vec::new();
    for a in acked {
        match stored.get(&a.id) {
            Some(t) if *t == a.text => {}
            Some(t) => {
                return Err(format!(
                    "after {when}: acknowledged id {} (round {}) has text {}, not {}",
                    a.id,
                    a.round,
                    short(t),
                    short(&a.text)
                ));
            }
            None => lost.push(a),
        }
    }
    figures.checked += acked.len();
    if let Some(first) = lost.first() {
        return Err(format!(
            "after {when}: {} of {} acknowledged posts lost ({} messages in the channel); first: id {} of \
             round {}, {}",
            lost.len(),
            acked.len(),
            stored.len(),
            first.id,
            first.round,
            short(&first.text)
        ));
    }
    Ok(())
}

/// The rounds; `Err` describes the first failure.
fn run_rounds(fs: &LazyFs, figures: &mut Figures) -> Result<(), String> {
    let rounds = env_u64("POWERCUT_ROUNDS").map_or(DEFAULT_ROUNDS, |r| r as u32);
    let mut store = fs.mnt().to_path_buf();
    let mut acked: Vec<Acked> = Vec::new();
    let mut written: BTreeMap<u32, usize> = BTreeMap::new();
    // The fastest spawn-to-first-id time seen: kills before it land during open.
    let mut open_time: Option<Duration> = None;
    for round in 1..=rounds {
        if (round - 1).is_multiple_of(ROUNDS_PER_STORE) {
            figures.stores += 1;
            store = fs.mnt().join(format!("s{}", figures.stores));
            acked.clear();
            written.clear();
            let setup = format!("init and channel create of {}", store.display());
            run(hearth(&store).args(["init", "--user", "alice"])).map_err(|e| format!("{setup}: {e}"))?;
            run(hearth(&store).args(["channel", "create", CHANNEL])).map_err(|e| format!("{setup}: {e}"))?;
            // Creating the store and the channel were acknowledged too.
            fs.cut();
            figures.cuts += 1;
            check(&store, &format!("the cut after {setup}"), &acked, &written, figures)?;
        }
        let mut rng = Rng(figures.seed ^ u64::from(round).wrapping_mul(0x1000_0000_01b3));
        let started = Instant::now();
        let desc;
        if single_post(round) {
            let t = text(round, 0);
            written.insert(round, 1);
            let out = run(hearth(&store).args(["post", CHANNEL, &t]))
                .map_err(|e| format!("round {round}: single post: {e}"))?;
            let id: MessageId = out
                .trim()
                .parse()
                .map_err(|e| format!("round {round}: single post printed {out:?}: {e}"))?;
            acked.push(Acked { id, text: t, round });
            figures.single_posts += 1;
            figures.acked += 1;
            desc = format!("one `hearth post` run to completion -> {id}");
        } else {
            let kill = match open_time {
                Some(open) if kill_during_open(round) => {
                    Kill::AfterSpawn(Duration::from_millis(rng.below_u64(open.as_millis() as u64)))
                }
                _ => Kill::AfterFirstId(Duration::from_millis(
                    MIN_STREAM_MS + rng.below_u64(MAX_STREAM_MS - MIN_STREAM_MS + 1),
                )),
            };
            let s = stream_round(&store, round, kill).map_err(|e| format!("round {round} ({kill:?}): {e}"))?;
            if let Some(t) = s.first_id {
                open_time = Some(open_time.map_or(t, |o| o.min(t)));
            }
            if s.acked.is_empty() {
                figures.kills_before_first_id += 1;
            }
            figures.acked += s.acked.len();
            desc = format!(
                "stream{}, kill -9 {kill:?} -> {} acked of {} written, first id after {:?}",
                if bulk_round(round) { " (bulk)" } else { "" },
                s.acked.len(),
                s.written,
                s.first_id
            );
            written.insert(round, s.written);
            acked.extend(s.acked.into_iter().enumerate().map(|(k, id)| Acked {
                id,
                text: text(round, k),
                round,
            }));
        }
        let run_time = started.elapsed();
        fs.cut();
        figures.cuts += 1;
        figures.rounds = round;
        let cut_time = started.elapsed() - run_time;
        check(
            &store,
            &format!("the cut of round {round} ({desc})"),
            &acked,
            &written,
            figures,
        )?;
        eprintln!(
            "round {round:3}: {desc}; run {:.2} s, cut {:.2} s, check {:.2} s",
            run_time.as_secs_f64(),
            cut_time.as_secs_f64(),
            (started.elapsed() - run_time - cut_time).as_secs_f64()
        );
    }
    Ok(())
}

#[test]
fn posting_survives_power_cuts() {
    if !lazyfs::should_run("posting_survives_power_cuts") {
        return;
    }
    let mut tmp = tempfile::tempdir().expect("tempdir");
    let fs = LazyFs::mount(tmp.path());
    let mut figures = Figures {
        seed: env_u64("POWERCUT_SEED").unwrap_or(DEFAULT_SEED),
        started: Some(Instant::now()),
        ..Figures::default()
    };
    let result = run_rounds(&fs, &mut figures);
    let root = fs.root().to_path_buf();
    figures.peak_cache = fs.peak_cache_usage();
    drop(fs); // unmount
    figures.sled_blobs = (1..=figures.stores)
        .map(|k| std::fs::read_dir(root.join(format!("s{k}/db/blobs"))).map_or(0, |d| d.count()))
        .sum();
    eprintln!("{figures}");
    if let Err(e) = result {
        let kept = if std::env::var("POWERCUT_KEEP").is_ok_and(|v| v == "1") {
            tmp.disable_cleanup(true);
            format!("the stores as the cut left them: {}", root.display())
        } else {
            "set POWERCUT_KEEP=1 to keep the stores".to_string()
        };
        panic!("power cut lost acknowledged data or broke the store: {e}\n({kept})");
    }
}
