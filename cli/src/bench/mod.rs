//! `hearth bench`: Hearth side by side with the SQLite baseline (WAL,
//! synchronous=FULL, the same sealed messages, one row per transaction), in one
//! run, so the ratios hold on a noisy machine.
//!
//! Measured: durable post throughput and p50/p99 latency with 1 and 8 writers,
//! next to the bare flush of a record (buffered + `fdatasync`, and direct),
//! taken in each round right before the writes;
//! streaming (bulk) post rate; cold open + newest 50 of a channel holding
//! `--big` messages (in a fresh child process, the Argon2id unlock reported
//! apart); warm page of 50; RSS with that store open and 10 channels cached;
//! bytes on disk per message.
//!
//! `hearth bench sync` measures sync instead, against a naive automerge
//! baseline: see [`sync`]. `hearth bench trust` measures a member's removal
//! with its key rotation: see [`trust`].

pub mod lifecycle;
pub mod sqlite;
pub mod sync;
pub mod trust;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hearth::core::{ChannelId as CoreChannelId, SecretKey};
use hearth::store::{Pending, Write};
use hearth::{ChannelId, Config, Hearth, KdfParams, Passphrase};
use serde::Serialize;
use serde_json::json;

/// Options of `hearth bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Durable posts per write test (split between writers).
    #[arg(long, default_value_t = 4000)]
    pub messages: usize,
    /// Messages in the big channel for the cold-open, page, RSS and disk figures.
    #[arg(long, default_value_t = 1_000_000)]
    pub big: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    pub text_len: usize,
    /// Working directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Internal: open the big store in this directory and print the cold figures.
    #[arg(long, hide = true)]
    pub probe: Option<PathBuf>,
    /// Internal: the probe's big channel (hex), so that its first page
    /// comes right after the open, as SQLite's does (without it, the probe
    /// reads the channel list first, which loads every channel's summaries).
    #[arg(long, hide = true)]
    pub probe_channel: Option<String>,
    /// Internal: open the SQLite baseline's big database in this directory
    /// in this fresh process, after an Argon2id unlock as the store's, and
    /// print its cold figures (with `--probe-channel`).
    #[arg(long, hide = true)]
    pub probe_sqlite: Option<PathBuf>,
    /// Another benchmark instead of the storage one.
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
}

/// Benchmarks other than the default storage one.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchMode {
    /// Sync over loopback against one automerge document per channel.
    Sync(sync::SyncArgs),
    /// Removing a member (with its key rotation) in a channel of many devices.
    Trust(trust::TrustArgs),
    /// Deleting a message and compacting, in a big channel.
    Lifecycle(lifecycle::LifecycleArgs),
}

const PASS: &str = "bench passphrase";
/// Fresh-process cold opens of each side in a `hearth bench` run.
const COLD_RUNS: usize = 5;
/// Rounds of each write measurement.
const ROUNDS: usize = 3;

/// The round whose `rate` is the median of `rounds` (the upper one of an
/// even count); `None` when there are none.
fn median_round<T>(rounds: Vec<T>, rate: impl Fn(&T) -> f64) -> Option<T> {
    let mut rates: Vec<f64> = rounds.iter().map(&rate).collect();
    rates.sort_by(f64::total_cmp);
    let m = *rates.get(rates.len() / 2)?;
    rounds.into_iter().find(|r| rate(r) == m)
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// One write figure of Hearth.
#[derive(Serialize, Debug, Clone)]
struct HearthWrites {
    writers: usize,
    messages: usize,
    msgs_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn hearth_writers(
    h: &Hearth,
    channel: ChannelId,
    writers: usize,
    total: usize,
    text_len: usize,
) -> Result<HearthWrites> {
    let per = total / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let text = sqlite::bench_text((w * per + i) as u64, text_len);
                let t = Instant::now();
                h.post(channel, &text).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, hearth::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(HearthWrites {
        writers,
        messages: lat.len(),
        msgs_per_sec: lat.len() as f64 / secs,
        p50_us: percentile_us(&lat, 0.5),
        p99_us: percentile_us(&lat, 0.99),
    })
}

/// Post `n` messages with many in flight (the `post --stdin` / import path).
async fn hearth_stream(h: &Hearth, channel: ChannelId, n: usize, text_len: usize, seed: u64) -> Result<f64> {
    let start = Instant::now();
    let mut queue: std::collections::VecDeque<Pending> = Default::default();
    for i in 0..n {
        let text = sqlite::bench_text(seed + i as u64, text_len);
        queue.push_back(
            h.plumbing()
                .store()
                .submit(Write::Post {
                    channel,
                    text,
                    reply_to: None,
                })
                .await?,
        );
        if queue.len() >= 4096 {
            queue.pop_front().expect("non-empty").await?;
        }
    }
    while let Some(p) = queue.pop_front() {
        p.await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The bulk path ([`hearth::Hearth::import_posts`]): `n` posts in calls of
/// [`hearth::IMPORT_CHUNK`], made on another thread while the store takes
/// the one before; posts a second.
async fn hearth_import(h: &Hearth, channel: ChannelId, n: usize, text_len: usize) -> Result<f64> {
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<hearth::ImportPost>>(2);
    let maker = std::thread::spawn(move || {
        for from in (0..n).step_by(hearth::IMPORT_CHUNK) {
            let posts = (from..n.min(from + hearth::IMPORT_CHUNK))
                .map(|i| hearth::ImportPost {
                    text: sqlite::bench_text(i as u64, text_len),
                    reply_to: None,
                })
                .collect();
            if tx.blocking_send(posts).is_err() {
                return;
            }
        }
    });
    while let Some(posts) = rx.recv().await {
        h.import_posts(channel, posts).await?;
    }
    maker.join().map_err(|_| anyhow!("the post maker panicked"))?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Cold figures of the big store, measured in a fresh process.
#[derive(Serialize, serde::Deserialize, Debug, Clone)]
struct Probe {
    unlock_ms: f64,
    open_ms: f64,
    open_without_unlock_ms: f64,
    first_page_ms: f64,
    /// From the call that opens the store to its first page of 50 back, the
    /// Argon2id unlock apart, in ms: what an app waits for (with
    /// `--probe-channel`, as SQLite's figure is timed; without it, the
    /// channel list read in between is in it too).
    open_page_wall_ms: f64,
    warm_page_p50_us: f64,
    warm_page_p99_us: f64,
    rss_mb: f64,
    cached_channels: usize,
    /// sled's own open of the same store's database, after the store closed
    /// (the floor of any open built on sled), in ms.
    sled_open_ms: f64,
}

/// The SQLite baseline's cold figures in a fresh process, as the store's
/// are taken: its row key derived from the bench passphrase by Argon2id
/// with the store's default parameters (an app on SQLite unlocks too), then
/// the database opened and its newest 50 read and opened.
#[derive(Serialize, serde::Deserialize, Debug, Clone)]
struct SqliteProbe {
    unlock_ms: f64,
    /// From the open's call to the page back, the unlock apart.
    open_page_ms: f64,
}

/// The SQLite baseline's row key: Argon2id of the bench passphrase with the
/// store's default parameters, under a salt kept beside the database.
fn sqlite_key(dir: &Path) -> Result<SecretKey> {
    let salt_path = dir.join("salt");
    let salt: [u8; 16] = match std::fs::read(&salt_path) {
        Ok(b) => b
            .try_into()
            .map_err(|_| anyhow!("{}: not 16 bytes", salt_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut salt = [0u8; 16];
            hearth::core::random_bytes(&mut salt)?;
            std::fs::create_dir_all(dir)?;
            std::fs::write(&salt_path, salt)?;
            salt
        }
        Err(e) => return Err(e.into()),
    };
    Ok(KdfParams::default().derive(&Passphrase::new(PASS), &salt)?)
}

fn probe_sqlite(dir: &Path, channel: CoreChannelId) -> Result<SqliteProbe> {
    let t = Instant::now();
    let key = sqlite_key(dir)?;
    let unlock = t.elapsed();
    let open_page = sqlite::cold_open_newest(dir, &key, &channel)?;
    Ok(SqliteProbe {
        unlock_ms: unlock.as_secs_f64() * 1e3,
        open_page_ms: open_page.as_secs_f64() * 1e3,
    })
}

/// The cold figures of both sides, each in a fresh process, alternating
/// `runs` times: medians of the open and first page (unlock apart).
fn cold_runs(
    hdir: &Path,
    hchannel: ChannelId,
    sdir: &Path,
    schannel: &CoreChannelId,
    runs: usize,
) -> Result<(Vec<Probe>, Vec<SqliteProbe>)> {
    let exe = std::env::current_exe()?;
    // `hearth bench FLAG DIR --probe-channel HEX` in a fresh process: its stdout.
    let child = |flag: &str, dir: &Path, channel: String| -> Result<Vec<u8>> {
        let out = std::process::Command::new(&exe)
            .args(["bench", flag])
            .arg(dir)
            .args(["--probe-channel", &channel])
            .output()
            .context("running a cold-open probe")?;
        if !out.status.success() {
            bail!("cold-open probe failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    };
    let (mut h, mut s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = child("--probe", hdir, hchannel.to_hex())?;
        h.push(serde_json::from_slice::<Probe>(&out).context("reading the probe's figures")?);
        let out = child("--probe-sqlite", sdir, schannel.to_hex())?;
        s.push(serde_json::from_slice::<SqliteProbe>(&out).context("reading the SQLite probe's figures")?);
    }
    Ok((h, s))
}

/// The bare cost of what bounds one durable writer: overwrite a record's
/// worth of a preallocated file in place and make it durable, `n` times,
/// in one of the journal's two ways ([`SyncWay`]).
#[derive(Serialize, Debug)]
struct FsyncFloor {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    record_bytes: usize,
}

/// How a floor's writes reach the disk.
#[derive(Clone, Copy)]
enum SyncWay {
    /// A buffered write, then `fdatasync` (SQLite's way, and the journal's
    /// where direct I/O is refused).
    Fdatasync,
    /// One `pwrite` of the record's whole 4 KiB blocks through a handle
    /// opened `O_DIRECT | O_DSYNC` (the journal's way where it can).
    DirectDsync,
}

fn sync_floor(dir: &Path, n: usize, record_bytes: usize, way: SyncWay) -> Result<FsyncFloor> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4096;
    let path = dir.join("sync-floor");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    // Allocated and written once, as the journal's file is before use.
    let size = (n * record_bytes).next_multiple_of(BLOCK) + BLOCK;
    f.write_all_at(&vec![0u8; size], 0)?;
    f.sync_all()?;
    let direct = match way {
        SyncWay::Fdatasync => None,
        SyncWay::DirectDsync => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(&path)
                .context("opening the floor's file for direct I/O")?,
        ),
    };
    let record = vec![0xa5u8; record_bytes];
    // A block-aligned window over the blocks a record touches.
    let mut buf = vec![0xa5u8; record_bytes + 3 * BLOCK];
    let skip = buf.as_ptr().align_offset(BLOCK);
    let window = &mut buf[skip..];
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let at = i * record_bytes;
        match &direct {
            None => {
                f.write_all_at(&record, at as u64)?;
                f.sync_data()?;
            }
            Some(d) => {
                let first = at - at % BLOCK;
                let span = (at + record_bytes - first).next_multiple_of(BLOCK);
                d.write_all_at(&window[..span], first as u64)?;
            }
        }
        lat.push(t.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    drop((f, direct));
    std::fs::remove_file(&path)?;
    lat.sort_unstable();
    Ok(FsyncFloor {
        ops_per_sec: n as f64 / secs,
        p50_us: percentile_us(&lat, 0.5),
        p99_us: percentile_us(&lat, 0.99),
        record_bytes,
    })
}

async fn probe(dir: &Path, channel: Option<&str>) -> Result<Probe> {
    let pass = Passphrase::new(PASS);
    let called = Instant::now();
    // The store times its own Argon2id unlock, so the rest of the open is exact.
    let h = Hearth::open(dir, &pass, Config::default()).await?;
    let (unlock, open) = (
        h.plumbing().store().open_timings().unlock,
        h.plumbing().store().open_timings().total,
    );
    // With the channel given, its first page comes right after the open, as
    // SQLite's is timed; without it, the channel list is read first.
    let listed = match channel {
        Some(_) => None,
        None => Some(h.channels().await?),
    };
    let big: hearth::ChannelId = match (channel, &listed) {
        (Some(hex), _) => hex.parse().context("--probe-channel")?,
        (None, Some(list)) => {
            list.iter()
                .max_by_key(|c| c.messages)
                .context("the big store has no channel")?
                .id
        }
        (None, None) => bail!("no channel to probe"),
    };
    let t = Instant::now();
    let page = h.page(big, None, 50).await?;
    let first_page = t.elapsed();
    let open_page_wall = called
        .elapsed()
        .saturating_sub(h.plumbing().store().open_timings().unlock);
    if page.len() != 50 {
        bail!("the big channel returned {} messages instead of 50", page.len());
    }
    let channels = match listed {
        Some(list) => list,
        None => h.channels().await?,
    };
    let mut lat = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(h.page(big, None, 50).await?);
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    // Cache 10 channels: the big one and nine more.
    for c in channels.iter().take(10) {
        h.page(c.id, None, 50).await?;
    }
    let rss = rss_bytes();
    h.close().await?;
    // sled's lock is let go a moment after the store's close: the open that
    // succeeds is the one timed.
    let cfg = sled::Config::new()
        .path(dir.join("db"))
        .mode(sled::Mode::HighThroughput);
    let mut tries = 0;
    let sled_open = loop {
        let t = Instant::now();
        match cfg.open() {
            Ok(db) => {
                let took = t.elapsed();
                drop(db);
                // sled wrote a snapshot under the process umask: owner-only,
                // as the store keeps every file.
                owner_only_files(&dir.join("db"))?;
                break took;
            }
            Err(e) if tries >= 500 => return Err(e).context("sled's own open"),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    Ok(Probe {
        unlock_ms: unlock.as_secs_f64() * 1e3,
        open_ms: open.as_secs_f64() * 1e3,
        open_without_unlock_ms: (open.saturating_sub(unlock)).as_secs_f64() * 1e3,
        first_page_ms: first_page.as_secs_f64() * 1e3,
        open_page_wall_ms: open_page_wall.as_secs_f64() * 1e3,
        warm_page_p50_us: percentile_us(&lat, 0.5),
        warm_page_p99_us: percentile_us(&lat, 0.99),
        rss_mb: rss as f64 / (1 << 20) as f64,
        cached_channels: channels.len().min(10),
        sled_open_ms: sled_open.as_secs_f64() * 1e3,
    })
}

/// Make the files directly in `dir` readable by their owner only.
fn owner_only_files(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Run `hearth bench`.
pub async fn run(args: &BenchArgs, json_out: bool) -> Result<ExitCode> {
    match &args.mode {
        Some(BenchMode::Sync(sync_args)) => return sync::run(sync_args, json_out).await,
        Some(BenchMode::Trust(trust_args)) => return trust::run(trust_args, json_out).await,
        Some(BenchMode::Lifecycle(args)) => return lifecycle::run(args, json_out).await,
        None => {}
    }
    if let Some(dir) = &args.probe {
        let p = probe(dir, args.probe_channel.as_deref()).await?;
        println!("{}", serde_json::to_string(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = &args.probe_sqlite {
        let channel = args
            .probe_channel
            .as_deref()
            .context("--probe-sqlite needs --probe-channel")?;
        let p = probe_sqlite(dir, channel.parse().context("--probe-channel")?)?;
        println!("{}", serde_json::to_string(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    let tmp;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let say = |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    };
    let pass = Passphrase::new(PASS);
    let n = args.messages.max(8);

    // Durable writes, Hearth then SQLite, same sizes.
    say(format!(
        "writes: {n} durable posts of {} bytes, 1 and 8 writers",
        args.text_len
    ));
    let wdir = root.join("hearth-writes");
    let h = Hearth::create(&wdir, &pass, "bench", Config::default()).await?;
    let ch = h.create_channel("writes").await?;
    // Rounds alternate Hearth and SQLite so that neither always runs first (the
    // machine's background writeback and noise shift over a run); the median
    // round of each side is reported.
    let (mut hr1, mut hr8, mut sr1, mut sr8) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The bare flush floors are taken in each round, right before the one
    // writer's rounds, since the disk's speed moves within a run (a post's
    // record: its text and about 200 bytes around it). Where the file
    // system refuses direct I/O the journal writes buffered, and there is
    // no direct floor.
    let (mut floors, mut direct_floors) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        floors.push(sync_floor(&root, n.min(4000), args.text_len + 200, SyncWay::Fdatasync)?);
        if let Ok(f) = sync_floor(&root, n.min(4000), args.text_len + 200, SyncWay::DirectDsync) {
            direct_floors.push(f);
        }
        hr1.push(hearth_writers(&h, ch, 1, n, args.text_len).await?);
        let d = root.join(format!("sqlite-1-{round}"));
        std::fs::create_dir_all(&d)?;
        sr1.push(sqlite::run_writers(&d, 1, n, args.text_len)?);
        hr8.push(hearth_writers(&h, ch, 8, n, args.text_len).await?);
        let d = root.join(format!("sqlite-8-{round}"));
        std::fs::create_dir_all(&d)?;
        sr8.push(sqlite::run_writers(&d, 8, n / 8, args.text_len)?);
    }
    let stream = hearth_stream(&h, ch, n.max(20_000), args.text_len, 1 << 40).await?;
    h.close().await?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let runs_1 = json!({
        "hearth": hr1.iter().map(|w| w.msgs_per_sec).collect::<Vec<_>>(),
        "sqlite": sr1.iter().map(|w| w.msgs_per_sec).collect::<Vec<_>>(),
        "fdatasync_floor": floors.iter().map(|f| f.ops_per_sec).collect::<Vec<_>>(),
        "direct_dsync_floor": direct_floors.iter().map(|f| f.ops_per_sec).collect::<Vec<_>>(),
    });
    let hearth_rate = |w: &HearthWrites| w.msgs_per_sec;
    let sqlite_rate = |w: &sqlite::WriteReport| w.msgs_per_sec;
    let [h1, h8] = [hr1, hr8].map(|v| median_round(v, hearth_rate).expect("ROUNDS rounds"));
    let [s1, s8] = [sr1, sr8].map(|v| median_round(v, sqlite_rate).expect("ROUNDS rounds"));
    // None: no round took direct I/O.
    let [floor, direct_floor] = [floors, direct_floors].map(|v| median_round(v, |f| f.ops_per_sec));

    // The big channel, built with the bulk path, on both sides.
    say(format!("big channel: {} messages (bulk path)", args.big));
    let bdir = root.join("hearth-big");
    let h = Hearth::create(&bdir, &pass, "bench", Config::default()).await?;
    let big = h.create_channel("big").await?;
    let t = Instant::now();
    let bulk_rate = hearth_import(&h, big, args.big, args.text_len).await?;
    let build_secs = t.elapsed().as_secs_f64();
    for i in 0..9 {
        let c = h.create_channel(&format!("side-{i}")).await?;
        hearth_stream(&h, c, 200, args.text_len, 1 << 50).await?;
    }
    h.close().await?;
    let hearth_disk = hearth::Hearth::open(&bdir, &pass, Config::default().with_kdf(KdfParams::default())).await?;
    let stats = hearth_disk.stats().await?;
    hearth_disk.close().await?;

    let sdir = root.join("sqlite-big");
    std::fs::create_dir_all(&sdir)?;
    let key = sqlite_key(&sdir)?;
    let sch = CoreChannelId::generate()?;
    let t = Instant::now();
    sqlite::SqliteBaseline::open(&sdir, &key)?.bulk_fill(&sch, args.big, args.text_len)?;
    let sqlite_build = t.elapsed().as_secs_f64();
    // In this process, as before (SQLite's code and allocator warm here).
    let sqlite_cold = sqlite::cold_open_newest(&sdir, &key, &sch)?;
    // Both cold in fresh processes (nothing of either store in memory),
    // each after its Argon2id unlock, alternating.
    let (hruns, sruns) = cold_runs(&bdir, big, &sdir, &sch, COLD_RUNS)?;
    let mut walls: Vec<f64> = hruns.iter().map(|p| p.open_page_wall_ms).collect();
    let wall = median(&mut walls);
    let probe = hruns
        .iter()
        .find(|p| p.open_page_wall_ms == wall)
        .cloned()
        .expect("the median is one of them");
    let mut sopens: Vec<f64> = sruns.iter().map(|p| p.open_page_ms).collect();
    let sqlite_fresh = median(&mut sopens);
    let sqlite_page = sqlite::page_latency(&sdir, &key, &sch, 2000)?;
    let sqlite_disk = sqlite::disk_bytes(&sdir)?;

    let plain = (args.big + 9 * 200) as f64 * args.text_len as f64;
    let report = json!({
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
        "text_len": args.text_len,
        "writes_1": {"hearth": h1, "sqlite": s1, "ratio": h1.msgs_per_sec / s1.msgs_per_sec},
        "writes_1_rounds": runs_1,
        "writes_8": {"hearth": h8, "sqlite": s8, "ratio": h8.msgs_per_sec / s8.msgs_per_sec},
        "stream_msgs_per_sec": stream,
        "fdatasync_floor": floor,
        "direct_dsync_floor": direct_floor,
        "big": {
            "messages": args.big,
            "hearth_build_secs": build_secs, "hearth_bulk_msgs_per_sec": bulk_rate,
            "sqlite_build_secs": sqlite_build,
            "hearth_cold": probe,
            "hearth_cold_open_page_runs_ms": walls,
            "sqlite_cold_open_newest_ms": sqlite_cold.as_secs_f64() * 1e3,
            "sqlite_cold_fresh": {"open_page_ms": sqlite_fresh, "runs_ms": sopens, "unlock_ms": sruns.first().map(|p| p.unlock_ms)},
            "sqlite_warm_page": sqlite_page,
            "hearth_disk_bytes": stats.disk_bytes,
            "hearth_disk_per_plaintext": stats.disk_bytes as f64 / plain,
            "sqlite_disk_bytes": sqlite_disk,
            "sqlite_disk_per_plaintext": sqlite_disk as f64 / (args.big as f64 * args.text_len as f64),
        },
    });
    if json_out {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "hearth bench ({} cores, {}-byte messages)",
        r["machine"]["cores"], r["text_len"]
    );
    println!("{:<44} {:>14} {:>14} {:>8}", "metric", "hearth", "sqlite", "ratio");
    for (name, k) in [
        ("durable post, 1 writer (msg/s)", "writes_1"),
        ("durable post, 8 writers (msg/s)", "writes_8"),
    ] {
        let w = &r[k];
        println!(
            "{:<44} {:>14.0} {:>14.0} {:>8.2}",
            name,
            f(&w["hearth"]["msgs_per_sec"]),
            f(&w["sqlite"]["msgs_per_sec"]),
            f(&w["ratio"])
        );
        println!(
            "{:<44} {:>14.0} {:>14.0}",
            "  p50 latency (us)",
            f(&w["hearth"]["p50_us"]),
            f(&w["sqlite"]["p50_us"])
        );
        println!(
            "{:<44} {:>14.0} {:>14.0}",
            "  p99 latency (us)",
            f(&w["hearth"]["p99_us"]),
            f(&w["sqlite"]["p99_us"])
        );
    }
    for (key, name) in [
        ("fdatasync_floor", "bare overwrite + fdatasync (ops/s)"),
        ("direct_dsync_floor", "bare overwrite, O_DIRECT|O_DSYNC (ops/s)"),
    ] {
        let fl = &r[key];
        if fl.is_null() {
            println!("{name:<44} {:>14}", "no direct I/O here");
            continue;
        }
        println!(
            "{:<44} {:>14.0}   p50/p99 {:.0}/{:.0} us",
            name,
            f(&fl["ops_per_sec"]),
            f(&fl["p50_us"]),
            f(&fl["p99_us"])
        );
    }
    println!(
        "{:<44} {:>14.0}",
        "streaming post (msg/s, durable)",
        f(&r["stream_msgs_per_sec"])
    );
    let b = &r["big"];
    println!("big channel: {} messages", b["messages"]);
    println!(
        "{:<44} {:>14.1} {:>14.1}",
        "  build (s)",
        f(&b["hearth_build_secs"]),
        f(&b["sqlite_build_secs"])
    );
    println!(
        "{:<44} {:>14.1}",
        "  unlock, Argon2id (ms)",
        f(&b["hearth_cold"]["unlock_ms"])
    );
    println!(
        "{:<44} {:>14.2} {:>14.2}",
        "  cold open + newest 50, unlock apart (ms)",
        f(&b["hearth_cold"]["open_without_unlock_ms"]) + f(&b["hearth_cold"]["first_page_ms"]),
        f(&b["sqlite_cold_open_newest_ms"])
    );
    println!(
        "{:<44} {:>14.2} {:>14.2}",
        "  the same, call to page back, fresh processes",
        f(&b["hearth_cold"]["open_page_wall_ms"]),
        f(&b["sqlite_cold_fresh"]["open_page_ms"])
    );
    println!(
        "{:<44} {:>14.1}",
        "    the floor: sled's own open (ms)",
        f(&b["hearth_cold"]["sled_open_ms"])
    );
    println!(
        "{:<44} {:>14.1} {:>14.1}",
        "  warm page of 50, p50 (us)",
        f(&b["hearth_cold"]["warm_page_p50_us"]),
        f(&b["sqlite_warm_page"]["p50_us"])
    );
    println!(
        "{:<44} {:>14.1}",
        "  RSS, store open + 10 channels cached (MB)",
        f(&b["hearth_cold"]["rss_mb"])
    );
    println!(
        "{:<44} {:>14.2} {:>14.2}",
        "  disk / plaintext bytes",
        f(&b["hearth_disk_per_plaintext"]),
        f(&b["sqlite_disk_per_plaintext"])
    );
}

#[cfg(test)]
mod tests {
    use super::median_round;

    #[test]
    fn the_median_round_is_the_middle_rate_kept_whole() {
        let rounds = vec![("a", 3.0), ("b", 1.0), ("c", 2.0)];
        assert_eq!(median_round(rounds, |r| r.1), Some(("c", 2.0)));
        assert_eq!(median_round(vec![("a", 1.0), ("b", 2.0)], |r| r.1), Some(("b", 2.0)));
        assert_eq!(median_round(Vec::<(&str, f64)>::new(), |r| r.1), None);
    }
}
