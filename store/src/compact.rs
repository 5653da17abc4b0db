//! Compaction: the bytes of dropped texts leave every file of the store,
//! while the store runs.
//!
//! A delete drops a text from the epoch document and from the stored entry
//! that carried it ([`crate::prune`]), but the old bytes stay where they were
//! written: in the feed log (append-only), in sled's old pages, and in the
//! journal's old records. Compaction rewrites all three, as SQLite's VACUUM
//! copies a database into a fresh file, without stopping reads and writes:
//!
//! 1. in the store task (a checkpoint, then a moment): a subscription to
//!    every write sled takes from then on, and two threads;
//! 2. in the background, while the store goes on: `compact.tmp/log/` written
//!    from the log up to that point, each entry as sled holds it (dropped
//!    texts gone), fork proofs without texts, every other record as it is;
//!    then every row of sled copied into a fresh sled, `compact.tmp/db/`;
//!    then every write sled took since the subscription applied to the copy,
//!    in order (a key's last write wins), and so on as they come;
//! 3. the pause, in the store task once the copy has caught up (writes wait;
//!    their journal records are durable meanwhile): a checkpoint, the last
//!    writes applied, the log's tail copied after the new log, the copy's
//!    log positions set to the new log's, both made durable;
//!    `compact.tmp/` renamed `compacted/`: **the commit**;
//! 4. the swap: `log/` becomes `log.old/`, `compacted/log/` becomes `log/`,
//!    `db/` (sled, with its old pages) is deleted and `compacted/db/` takes
//!    its place, `log.old/` is deleted; sled is opened again and the store
//!    goes on. A thread of its own then zeroes the journal's file past the
//!    records written since the checkpoint, and `compacted/` goes last.
//!
//! An open finishes or drops what it finds: `compact.tmp/` was never
//! committed and is dropped (the old log and sled are whole); `compacted/`
//! is committed and its swap is finished (each step checks what is already
//! done), and the journal is zeroed once replayed. A `compact/` (store
//! format 9's compaction, on a closed store) carries no sled: the old one is
//! deleted and built afresh from the new log.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_core::{ChannelKeys, Envelope, ForkProof, WireId};

use crate::durable::{SledFiles, create_private_dir, sync_dir};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::{self, Log, LogPos, LogRecord, kind};
use crate::rotate::LOG_OLD_DIR;

/// Where a compaction writes the new log and sled.
pub const COMPACT_TMP_DIR: &str = "compact.tmp";
/// A committed compaction (its new `log/` and fresh `db/`), until its swap
/// is done and the journal zeroed.
pub const COMPACTED_DIR: &str = "compacted";
/// A compaction of store format 9 (a new log, no sled), committed on a
/// closed store, until its swap is done.
pub const LEGACY_COMPACT_DIR: &str = "compact";
/// Rows copied into a fresh sled per batch (a compaction's and a
/// restore's). sled 0.34's file depends on it (rows written in key order,
/// file after a flush; docs/lifecycle.md, "Measured"): 50,000 rows of 80
/// to 400 bytes (12.9 MB) take 26.2 MB at 128 or 256 rows a batch, 27.8
/// at 1,024 and 40.4 at 4,096; with one row in 20 of 16 to 20 KB (an
/// entry; 22.9 MB), 39.8 MB at 256, 47.7 at 1,024 and 58.3 at 4,096. One
/// row a batch is worst (five times the rows).
pub(crate) const COPY_BATCH: usize = 256;

/// Where a compaction stops early, for tests of what an open then finds (a
/// crash at that step: the store stops writing there). `None`: run to the end.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CompactStop {
    /// With `compact.tmp/` written, before the commit.
    Prepared,
    /// Right after the commit, before the swap.
    Committed,
    /// In the swap: after `log/` became `log.old/`.
    OldLogMoved,
    /// In the swap: after the new log moved in, before the new sled does.
    NewLogMoved,
}

/// How far a running compaction is, for a progress display: rows of sled
/// copied of about how many.
#[derive(Debug, Default)]
pub struct CompactProgress {
    /// About how many rows sled holds (counted when the copy starts).
    pub rows_total: AtomicU64,
    /// Rows copied so far.
    pub rows_copied: AtomicU64,
    /// Writes taken meanwhile, applied to the copy.
    pub writes_applied: AtomicU64,
}

/// Texts dropped from stored entries since the last compaction: what the
/// automatic one goes by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompactDue {
    /// When the first was dropped (unix ms).
    pub since_ms: u64,
    /// Bytes dropped since (what the stored entries shrank by; the old
    /// bytes are dead space in the log, sled and the journal).
    pub bytes: u64,
}

impl CompactDue {
    /// `bytes` more dropped.
    pub(crate) fn after(before: Option<CompactDue>, bytes: u64) -> CompactDue {
        match before {
            Some(d) => CompactDue {
                since_ms: d.since_ms,
                bytes: d.bytes.saturating_add(bytes),
            },
            None => CompactDue {
                since_ms: crate::engine::now_ms(),
                bytes,
            },
        }
    }

    /// Whether an automatic compaction is due under `config`.
    pub(crate) fn due(&self, config: &crate::Config) -> bool {
        config.compact_after.is_some_and(|after| {
            self.bytes >= config.compact_dead_bytes
                || crate::engine::now_ms().saturating_sub(self.since_ms) >= after.as_millis() as u64
        })
    }
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Log records copied.
    pub records: u64,
    /// Entries written without the segments dropped from them.
    pub entries_rewritten: u64,
    /// Texts left out (of the entries rewritten).
    pub texts_dropped: u64,
    /// Bytes of the log before and after.
    pub log_bytes_before: u64,
    /// Bytes of the new log.
    pub log_bytes_after: u64,
    /// Bytes of the whole store directory before (sled, log, journal).
    pub store_bytes_before: u64,
    /// Rows of sled copied into the fresh one.
    pub rows_copied: u64,
    /// Writes the store took while the copy ran, applied to it.
    pub writes_applied: u64,
    /// How long reads and writes waited: the pause, commit and swap.
    pub paused: Duration,
    /// How long it took, from the start to the swap.
    pub took: Duration,
}

/// The bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// An entry without its texts (for a fork proof, which needs none).
fn bare(bytes: &[u8]) -> Vec<u8> {
    match Envelope::decode(bytes) {
        Ok(mut env) if env.holds_texts() => {
            env.strip_texts();
            env.encode()
        }
        _ => bytes.to_vec(),
    }
}

/// A sled row as the fresh sled holds it: a fork proof without the texts
/// its two entries came with, every other row as it is.
fn held_row(key: &[u8], value: sled::IVec) -> sled::IVec {
    if key.first() != Some(&T_FORKS) {
        return value;
    }
    match ForkProof::decode(&value) {
        Ok((mut proof, _)) => {
            proof.first = bare(&proof.first);
            proof.second = bare(&proof.second);
            proof.encode().into()
        }
        Err(_) => value,
    }
}

/// Where a background copy of the store goes: a compaction's new log and
/// fresh sled ([`Fresh`]), or a backup file (`crate::backup`).
pub(crate) trait CopySink: Send + 'static {
    /// One batch of log records `(kind, body)`, as the copy holds them.
    fn log_batch(&mut self, records: Vec<(u8, Vec<u8>)>) -> Result<()>;
    /// The log records so far must be durable (where that means anything).
    fn log_synced(&mut self) -> Result<()>;
    /// Rows of sled, in key order, then as written since; `None` removes.
    fn rows(&mut self, rows: Vec<(sled::IVec, Option<sled::IVec>)>) -> Result<()>;
    /// Every row of sled is copied; the writes taken meanwhile follow.
    fn rows_copied(&mut self) -> Result<()>;
}

/// A compaction's copy: the new log and the fresh sled in `compact.tmp/`.
pub(crate) struct Fresh {
    staging: PathBuf,
    log: Log,
    db: Option<(sled::Db, sled::Tree)>,
    /// The name of the one tree the rows go to (a store's, or a relay's).
    tree_name: &'static str,
}

impl Fresh {
    /// A new copy in `dir`'s `compact.tmp/` (one left by a copy given up
    /// goes first), its rows for the tree `tree_name`.
    fn create(dir: &Path, tree_name: &'static str) -> Result<Fresh> {
        let staging = dir.join(COMPACT_TMP_DIR);
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        create_private_dir(&staging)?;
        Ok(Fresh {
            log: Log::create(&staging.join(log::LOG_DIR))?,
            staging,
            db: None,
            tree_name,
        })
    }

    /// All but the commit: the copy's log positions set to its new log's
    /// end (with `extra` rows), everything made durable and owner-only.
    /// Returns the new log's end and size.
    fn seal(mut self, extra: sled::Batch) -> Result<(LogPos, u64)> {
        let end = self.log.end();
        let fresh = self.db()?.clone();
        let mut b = sled::Batch::default();
        b.insert(META_LOG, &end.encode()[..]);
        b.insert(META_LOG_SYNCED, &end.encode()[..]);
        fresh.apply_batch(b)?;
        fresh.apply_batch(extra)?;
        drop(fresh);
        let Fresh { log, db, staging, .. } = self;
        drop(log);
        if let Some((db, tree)) = db {
            db.flush()?;
            drop(tree);
            drop(db);
        }
        // sled made its files with the process umask: owner only, as the
        // store's own.
        crate::durable::make_private(&staging)?;
        SledFiles::new(&staging.join(DB_DIR)).sync()?;
        sync_dir(&staging.join(DB_DIR))?;
        sync_dir(&staging)?;
        Ok((end, dir_bytes(&staging.join(log::LOG_DIR))))
    }

    fn db(&mut self) -> Result<&sled::Tree> {
        if self.db.is_none() {
            let db = crate::open::open_sled_at(&self.staging.join(DB_DIR))?;
            let tree = db.open_tree(self.tree_name)?;
            self.db = Some((db, tree));
        }
        Ok(&self.db.as_ref().expect("opened above").1)
    }
}

impl CopySink for Fresh {
    fn log_batch(&mut self, records: Vec<(u8, Vec<u8>)>) -> Result<()> {
        let mut buf = Vec::new();
        for (k, body) in &records {
            log::encode_record(&mut buf, *k, body);
        }
        self.log.append(&buf)?;
        Ok(())
    }

    fn log_synced(&mut self) -> Result<()> {
        self.log.sync()
    }

    fn rows(&mut self, rows: Vec<(sled::IVec, Option<sled::IVec>)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in rows {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.db()?.apply_batch(batch)?;
        Ok(())
    }

    fn rows_copied(&mut self) -> Result<()> {
        // Durable now, in the background: the pause flushes only what follows.
        self.db()?;
        if let Some((db, _)) = &self.db {
            db.flush()?;
        }
        SledFiles::new(&self.staging.join(DB_DIR)).sync()?;
        Ok(())
    }
}

/// Copy the log from `from` (up to `upto`, a batch boundary, if given: the
/// store may be appending past it) into `sink`: each entry as `tree` holds
/// it now (its dropped texts gone), fork proofs without texts, every other
/// record as it is. Returns where the copy stopped in the old log.
#[allow(clippy::too_many_arguments)]
fn copy_log(
    dir: &Path,
    (from, upto): (LogPos, Option<LogPos>),
    tree: &sled::Tree,
    keys: &HashMap<WireId, ChannelKeys>,
    sink: &mut dyn CopySink,
    report: &mut CompactReport,
    abort: &AtomicBool,
) -> Result<LogPos> {
    let mut reached = from;
    let scanned = log::scan(&dir.join(log::LOG_DIR), from, |batch| {
        if abort.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if upto.is_some_and(|u| batch.end > u) {
            return Ok(false);
        }
        reached = batch.end;
        let mut records = Vec::with_capacity(batch.records.len());
        for r in batch.records {
            // A relay's text drop logged before the copy began is in its
            // entry's row, which the copy takes: left out. One in the tail
            // (taken while the copy ran) may name an entry copied before it:
            // kept (replayed, it changes nothing once applied).
            if r.kind == kind::DROP && upto.is_some() {
                continue;
            }
            report.records += 1;
            records.push(as_held(tree, keys, r, report)?);
        }
        sink.log_batch(records)?;
        Ok(true)
    })?;
    // Past `upto` the store may be writing a batch: not the log's fault.
    if let Some(why) = scanned.stopped
        && upto.is_none_or(|u| reached < u)
    {
        return Err(Error::corrupted(
            "feed log",
            format!("{why}; run `repair` before compacting"),
        ));
    }
    sink.log_synced()?;
    Ok(reached)
}

/// A log record as the new log holds it.
fn as_held(
    tree: &sled::Tree,
    keys: &HashMap<WireId, ChannelKeys>,
    r: LogRecord,
    report: &mut CompactReport,
) -> Result<(u8, Vec<u8>)> {
    let body = match r.kind {
        kind::ENTRY if r.body.first().is_some_and(|v| *v >= hearth_core::ENVELOPE_V3) => {
            let env = Envelope::decode(&r.body)?;
            match tree.get(feed_key(&env.header.wire, &env.header.device, env.header.seq))? {
                Some(row) if row.as_ref() != r.body.as_slice() => {
                    let now = Envelope::decode(&row)?;
                    if now.hash() != env.hash() {
                        return Err(Error::corrupted(
                            "feed log",
                            "an entry differs from the one sled holds at its place",
                        ));
                    }
                    report.entries_rewritten += 1;
                    if let Some(keys) = keys.get(&env.header.wire) {
                        report.texts_dropped +=
                            env.open_texts(keys).len().saturating_sub(now.open_texts(keys).len()) as u64;
                    }
                    row.to_vec()
                }
                _ => r.body,
            }
        }
        kind::FORK => match ForkProof::decode(&r.body) {
            Ok((mut proof, _)) => {
                proof.first = bare(&proof.first);
                proof.second = bare(&proof.second);
                proof.encode()
            }
            Err(_) => r.body,
        },
        _ => r.body,
    };
    Ok((r.kind, body))
}

/// What the background part of a copy hands over.
pub(crate) struct Copied<S> {
    pub(crate) sink: S,
    /// The old log position the copy of the log covers.
    pub(crate) covered: LogPos,
    pub(crate) report: CompactReport,
}

/// A copy under way (a compaction's, or a backup's): its background threads
/// and what they share.
pub(crate) struct Running<S> {
    /// Where the copy is written (a directory or a file): removed if it is
    /// given up.
    staging: PathBuf,
    /// The live tree: the drain's mark is written there to end it. Let go
    /// once the drain ended (the swap drops the old sled, files and all).
    tree: Option<sled::Tree>,
    /// Set to give up (the store closes).
    abort: Arc<AtomicBool>,
    /// Set once the copy has caught up with the writes taken meanwhile.
    caught: Arc<AtomicBool>,
    /// Texts dropped before the copy started (those dropped since may be in
    /// the copy: they stay due).
    due_at_start: Option<CompactDue>,
    drain: Option<JoinHandle<()>>,
    copier: Option<JoinHandle<Result<Copied<S>>>>,
    pub(crate) started: Instant,
}

impl<S> Running<S> {
    /// Whether the pause can come: the copy caught up (or failed).
    pub(crate) fn ready(&self) -> bool {
        self.caught.load(Ordering::SeqCst) || self.copier.as_ref().is_none_or(|c| c.is_finished())
    }

    /// Stop the threads; what they return goes (the store closes, or the
    /// pause failed).
    pub(crate) fn stop(&mut self) -> Option<Result<Copied<S>>> {
        if let Some(d) = self.drain.take() {
            if let Some(tree) = self.tree.take() {
                end_drain(&tree);
            }
            let _ = d.join();
        }
        self.tree = None;
        self.copier.take().map(|c| {
            c.join()
                .unwrap_or_else(|_| Err(Error::corrupted("copy", "its copy thread panicked")))
        })
    }

    /// Give up: the threads stop, what they wrote goes.
    pub(crate) fn abandon(mut self) {
        self.abort.store(true, Ordering::SeqCst);
        drop(self.stop());
        let _ = if self.staging.is_dir() {
            fs::remove_dir_all(&self.staging)
        } else {
            fs::remove_file(&self.staging)
        };
    }
}

/// A key in no table, written and removed at once to end a copy's drain
/// (sled's blocking iterator wakes only for a write).
const DRAIN_MARK: &[u8] = b"\xffhearth copy drain mark";

/// End a copy's drain: every write before the mark is in its queue when it
/// stops.
fn end_drain(tree: &sled::Tree) {
    let _ = tree.insert(DRAIN_MARK, &[][..]);
    let _ = tree.remove(DRAIN_MARK);
}

/// The background part: the log up to `covered`, then every row of `tree`,
/// then the writes taken meanwhile, until told to stop.
#[allow(clippy::too_many_arguments)]
fn copy_in_background<S: CopySink>(
    dir: PathBuf,
    mut sink: S,
    covered: LogPos,
    tree: sled::Tree,
    keys: HashMap<WireId, ChannelKeys>,
    queue: Arc<Mutex<Vec<sled::Event>>>,
    (drained, abort, caught): (Arc<AtomicBool>, Arc<AtomicBool>, Arc<AtomicBool>),
    progress: Arc<CompactProgress>,
    mut report: CompactReport,
) -> Result<Copied<S>> {
    let covered = copy_log(
        &dir,
        (LogPos::START, Some(covered)),
        &tree,
        &keys,
        &mut sink,
        &mut report,
        &abort,
    )?;
    progress.rows_total.store(tree.len() as u64, Ordering::Relaxed);
    let mut rows = Vec::with_capacity(COPY_BATCH);
    let mut n = 0u64;
    for row in tree.iter() {
        let (k, v) = row?;
        let v = held_row(&k, v);
        rows.push((k, Some(v)));
        n += 1;
        if rows.len() == COPY_BATCH {
            sink.rows(std::mem::replace(&mut rows, Vec::with_capacity(COPY_BATCH)))?;
            progress.rows_copied.store(n, Ordering::Relaxed);
            if abort.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
        }
    }
    sink.rows(rows)?;
    progress.rows_copied.store(n, Ordering::Relaxed);
    report.rows_copied = n;
    sink.rows_copied()?;
    // The writes since the subscription, in order: a key's last one wins.
    loop {
        let done = drained.load(Ordering::SeqCst);
        let events = std::mem::take(&mut *queue.lock().map_err(|_| Error::Closed)?);
        if events.is_empty() {
            caught.store(true, Ordering::SeqCst);
            if done {
                break;
            }
            if abort.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let n = events.len() as u64;
        let rows = events
            .into_iter()
            .map(|e| match e {
                sled::Event::Insert { key, value } => {
                    let value = held_row(&key, value);
                    (key, Some(value))
                }
                sled::Event::Remove { key } => (key, None),
            })
            .collect();
        sink.rows(rows)?;
        report.writes_applied += n;
        progress.writes_applied.fetch_add(n, Ordering::Relaxed);
    }
    Ok(Copied { sink, covered, report })
}

/// Start a copy of the log and sled of `dir` into `sink` in the
/// background: the log up to `log_end`, every row of `tree`, then every
/// write `tree` takes from now on (the caller holds off writes while this
/// runs, and took a checkpoint), until the pause ([`end_copy_at`]).
/// `staging` is where the sink writes, removed if the copy is given up.
pub(crate) fn start_copy_at<S: CopySink>(
    dir: &Path,
    tree: &sled::Tree,
    log_end: LogPos,
    keys: HashMap<WireId, ChannelKeys>,
    sink: S,
    staging: PathBuf,
    progress: Arc<CompactProgress>,
) -> Result<Running<S>> {
    let report = CompactReport {
        log_bytes_before: dir_bytes(&dir.join(log::LOG_DIR)),
        store_bytes_before: dir_bytes(dir),
        ..CompactReport::default()
    };
    let queue: Arc<Mutex<Vec<sled::Event>>> = Arc::default();
    let (abort, caught, drained) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    // Every write from here on, in order: this thread is sled's only
    // writer, and none is under way. sled's blocking iterator, not its
    // waits with a timeout: sled 0.34 answers those with `Disconnected`
    // both when they time out and, for good, once a write that changed
    // nothing (a value put again, a key removed that was not there) left
    // its notice unfilled; stopping on it lost the writes after it, and a
    // copy committed without them (a relay's power-cut test found it on a
    // loaded machine). The pause ends the drain by writing its mark.
    let mut subscriber = tree.watch_prefix(Vec::<u8>::new());
    let drain = {
        let (queue, abort, drained) = (queue.clone(), abort.clone(), drained.clone());
        crate::placement::spawn_unplaced(
            std::thread::Builder::new().name("hearth-copy-drain".into()),
            move || {
                for e in &mut subscriber {
                    let key = match &e {
                        sled::Event::Insert { key, .. } | sled::Event::Remove { key } => key,
                    };
                    if key.as_ref() == DRAIN_MARK {
                        break;
                    }
                    match queue.lock() {
                        Ok(mut q) => q.push(e),
                        Err(_) => {
                            // Writes from here on would be lost: the copy
                            // must not be committed.
                            abort.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                }
                drained.store(true, Ordering::SeqCst);
            },
        )?
    };
    let copier = {
        let (dir, copied) = (dir.to_path_buf(), tree.clone());
        let covered = log_end;
        let flags = (drained, abort.clone(), caught.clone());
        let spawned =
            crate::placement::spawn_unplaced(std::thread::Builder::new().name("hearth-copy".into()), move || {
                copy_in_background(dir, sink, covered, copied, keys, queue, flags, progress, report)
            });
        match spawned {
            Ok(c) => c,
            Err(e) => {
                // The drain thread stops, and with it the subscription.
                abort.store(true, Ordering::SeqCst);
                end_drain(tree);
                let _ = drain.join();
                return Err(e.into());
            }
        }
    };
    Ok(Running {
        staging,
        tree: Some(tree.clone()),
        abort,
        caught,
        drain: Some(drain),
        copier: Some(copier),
        started: Instant::now(),
        due_at_start: None,
    })
}

/// The pause of a copy (no write comes meanwhile, and `tree` holds every
/// write): the threads stop once the copy has taken every write, and the
/// log's tail goes after the log copied so far. Returns the copy, which
/// nothing writes any more.
pub(crate) fn end_copy_at<S: CopySink>(
    dir: &Path,
    tree: &sled::Tree,
    keys: &HashMap<WireId, ChannelKeys>,
    running: &mut Running<S>,
) -> Result<Copied<S>> {
    let mut copied = running
        .stop()
        .unwrap_or_else(|| Err(Error::corrupted("copy", "no copy under way")))?;
    let never = AtomicBool::new(false);
    copy_log(
        dir,
        (copied.covered, None),
        tree,
        keys,
        &mut copied.sink,
        &mut copied.report,
        &never,
    )?;
    Ok(copied)
}

impl Engine {
    /// Start a compaction: a checkpoint, then the copy in the background
    /// (steps 1 and 2 of the module docs). The store goes on meanwhile.
    pub(crate) fn start_compaction(&mut self, progress: Arc<CompactProgress>) -> Result<Running<Fresh>> {
        if self.dir.join(COMPACTED_DIR).exists() {
            return Err(Error::invalid(
                "compaction",
                "the last one is still zeroing the journal; try again in a moment",
            ));
        }
        self.checkpoint()?;
        let sink = Fresh::create(&self.dir, TREE)?;
        let staging = sink.staging.clone();
        self.start_copy(sink, staging, progress)
    }

    /// Start a copy of the store into `sink` in the background (the caller
    /// took a checkpoint): the log so far, every row of sled, then every
    /// write sled takes from now on, until the pause. `staging` is where the
    /// sink writes, removed if the copy is given up.
    pub(crate) fn start_copy<S: CopySink>(
        &mut self,
        sink: S,
        staging: PathBuf,
        progress: Arc<CompactProgress>,
    ) -> Result<Running<S>> {
        let keys: HashMap<WireId, ChannelKeys> = self
            .channels
            .values()
            .map(|ch| (ch.keys.wire(), ch.keys.clone()))
            .collect();
        let mut running = start_copy_at(&self.dir, &self.tree, self.log.end(), keys, sink, staging, progress)?;
        running.due_at_start = self.dropped_since_compaction;
        Ok(running)
    }

    /// The pause of a copy (the caller took a checkpoint, so sled holds
    /// every write): the threads stop once the copy has taken every write,
    /// and the log's tail goes after the log copied so far. Returns the
    /// copy, which nothing writes any more.
    pub(crate) fn end_copy<S: CopySink>(&mut self, running: &mut Running<S>) -> Result<Copied<S>> {
        let keys: HashMap<WireId, ChannelKeys> = self
            .channels
            .values()
            .map(|ch| (ch.keys.wire(), ch.keys.clone()))
            .collect();
        end_copy_at(&self.dir, &self.tree, &keys, running)
    }

    /// The pause, the commit and the swap (steps 3 and 4): called by the store
    /// task once [`Running::ready`], with the group closed, a checkpoint
    /// taken and the journal cleared. An error before the commit leaves the
    /// store as it was (`compact.tmp/` removed); `committed` says whether it
    /// got past the commit, after which any error means the store must stop
    /// (an open finishes the swap). The committed directory stays until the
    /// journal is zeroed ([`done`]).
    pub(crate) fn finish_compaction(
        &mut self,
        mut running: Running<Fresh>,
        stop: Option<CompactStop>,
        committed: &mut bool,
    ) -> Result<CompactReport> {
        let paused = Instant::now();
        crash_point!("compact.paused");
        let staging = running.staging.clone();
        let due_at_start = running.due_at_start;
        let copied = self.end_copy(&mut running);
        // A stand-in holds sled's place in the swap (made now: a failure
        // here still leaves the store as it was).
        let prepared = copied
            .and_then(|c| self.seal_compaction(c, due_at_start))
            .and_then(|sealed| Ok((sealed, sled::Config::new().temporary(true).open()?)));
        let ((end, mut report, still_due), standin) = match prepared {
            Ok(p) => p,
            Err(e) => {
                running.abandon();
                return Err(e);
            }
        };
        if stop == Some(CompactStop::Prepared) {
            return Ok(report);
        }
        crash_point!("compact.prepared");
        // The commit point.
        *committed = true;
        let done_dir = self.dir.join(COMPACTED_DIR);
        fs::rename(&staging, &done_dir).map_err(at("commit: rename", &staging))?;
        sync_dir(&self.dir)?;
        // What the new sled says is due is what is due from now on.
        self.dropped_since_compaction = still_due;
        if stop == Some(CompactStop::Committed) {
            return Ok(report);
        }
        crash_point!("compact.committed");
        // sled is let go before its directory goes, then opened again on the
        // fresh one; the old log's file is closed before its directory goes.
        self.tree = standin.open_tree(TREE)?;
        self.db = standin;
        if !crate::rotate::move_log_in(&self.dir, &done_dir, stop == Some(CompactStop::OldLogMoved))?
            || stop == Some(CompactStop::NewLogMoved)
        {
            return Ok(report);
        }
        let hook = self.log.hook_slot();
        self.log = Log::open_at(&self.dir.join(log::LOG_DIR), end)?;
        self.log.take_hook(hook);
        finish(&self.dir)?;
        self.db = crate::open::open_sled(&self.dir)?;
        self.tree = self.db.open_tree(TREE)?;
        self.sled_files = SledFiles::new(&self.dir.join(DB_DIR));
        crash_point!("compact.swapped");
        report.paused = paused.elapsed();
        report.took = running.started.elapsed();
        Ok(report)
    }

    /// The copy's log positions set to the new log's, both durable: all but
    /// the rename that commits. Texts dropped since the copy started may
    /// still be in it: they stay due, for the next compaction. Returns the
    /// new log's end.
    fn seal_compaction(
        &mut self,
        copied: Copied<Fresh>,
        due_at_start: Option<CompactDue>,
    ) -> Result<(LogPos, CompactReport, Option<CompactDue>)> {
        let Copied { sink, mut report, .. } = copied;
        let mut b = sled::Batch::default();
        let still_due = match (self.dropped_since_compaction, due_at_start) {
            (Some(now), Some(then)) if now.bytes > then.bytes => Some(CompactDue {
                since_ms: crate::engine::now_ms(),
                bytes: now.bytes - then.bytes,
            }),
            (Some(now), None) => Some(now),
            _ => None,
        };
        match still_due {
            Some(due) => {
                let plain = postcard::to_stdvec(&due).expect("compaction due encodes");
                b.insert(META_COMPACT_DUE, seal_record(&self.records, META_COMPACT_DUE, &plain)?);
            }
            None => b.remove(META_COMPACT_DUE),
        }
        let (end, log_bytes) = sink.seal(b)?;
        report.log_bytes_after = log_bytes;
        Ok((end, report, still_due))
    }
}

/// A compaction of a directory that holds a feed log and a sled tree of
/// the store's layout (`F` rows, `M log` positions): a relay's. The same
/// steps as a store's, driven by its owner: [`DirCompaction::start`] with
/// writes held off for a moment, [`DirCompaction::ready`] polled while
/// writes go on, [`DirCompaction::commit`] with writes held off again (the
/// pause), then [`swap_compacted`] once the owner let go of its sled, and
/// [`recover_dir_compaction`] at every open.
pub struct DirCompaction {
    running: Running<Fresh>,
    dir: PathBuf,
}

impl DirCompaction {
    /// Start: `compact.tmp/` made, every write `tree` (named `tree_name`)
    /// takes from now on followed, the copy started in the background. No
    /// write may come during this call; the log must end at `log_end`,
    /// durable, and sled must hold every batch of it.
    pub fn start(
        dir: &Path,
        (tree, tree_name): (&sled::Tree, &'static str),
        log_end: LogPos,
        progress: Arc<CompactProgress>,
    ) -> Result<Self> {
        if dir.join(COMPACTED_DIR).exists() {
            return Err(Error::invalid("compaction", "the last one is not swapped in yet"));
        }
        let sink = Fresh::create(dir, tree_name)?;
        let staging = sink.staging.clone();
        let running = start_copy_at(dir, tree, log_end, HashMap::new(), sink, staging, progress)?;
        Ok(DirCompaction {
            running,
            dir: dir.to_path_buf(),
        })
    }

    /// Whether the copy has caught up with the writes (the pause can come).
    pub fn ready(&self) -> bool {
        self.running.ready()
    }

    /// The pause (no write may come, and `tree` holds every write): the
    /// last writes and the log's tail into the copy, its log positions set
    /// to the new log's, all durable, then the commit (`compact.tmp/`
    /// renamed `compacted/`). Returns the new log's end. An error leaves
    /// the directory as it was.
    pub fn commit(mut self, tree: &sled::Tree) -> Result<(LogPos, CompactReport)> {
        let paused = Instant::now();
        let sealed = end_copy_at(&self.dir, tree, &HashMap::new(), &mut self.running).and_then(|copied| {
            let Copied { sink, mut report, .. } = copied;
            let (end, log_bytes) = sink.seal(sled::Batch::default())?;
            report.log_bytes_after = log_bytes;
            Ok((end, report))
        });
        let (end, mut report) = match sealed {
            Ok(s) => s,
            Err(e) => {
                self.running.abandon();
                return Err(e);
            }
        };
        let staging = self.dir.join(COMPACT_TMP_DIR);
        fs::rename(&staging, self.dir.join(COMPACTED_DIR)).map_err(at("commit: rename", &staging))?;
        sync_dir(&self.dir)?;
        report.paused = paused.elapsed();
        report.took = self.running.started.elapsed();
        Ok((end, report))
    }

    /// Give up (the owner closes): the copy stops, `compact.tmp/` goes.
    pub fn abandon(self) {
        self.running.abandon();
    }
}

/// Swap a committed [`DirCompaction`] in, once the owner let go of its
/// sled (and of the log's file): the new log in, the fresh sled in place
/// of the old, `compacted/` removed. Each step is skipped when done.
pub fn swap_compacted(dir: &Path) -> Result<()> {
    crate::rotate::move_log_in(dir, &dir.join(COMPACTED_DIR), false)?;
    finish(dir)?;
    done(dir)
}

/// At the open of a directory a [`DirCompaction`] may have been cut short
/// in: `compact.tmp/` dropped, a committed one swapped in.
pub fn recover_dir_compaction(dir: &Path) -> Result<()> {
    if recover(dir)? {
        done(dir)?;
    }
    Ok(())
}

/// An I/O error that says which step on which path failed.
fn at(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("compaction: {what} {}", path.display());
    move |e| Error::Io(std::io::Error::new(e.kind(), format!("{context}: {e}")))
}

/// `remove_dir_all`, waiting a little while a file in it is still open
/// elsewhere in this process (a sled thread letting go of the old database):
/// on some file systems (FUSE) an open file that is unlinked stays as a
/// hidden file until it is closed, and the directory is not empty until then.
fn remove_dir_patiently(path: &Path, what: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            // Removed meanwhile (an open finishing it while the store that
            // compacted lets go): done.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => return other.map_err(at(what, path)),
        }
    }
}

/// At open (under the store's lock): finish or drop a compaction that was
/// interrupted. Returns whether one was committed: its directory then stays
/// until the journal has been replayed and zeroed ([`done`]).
pub(crate) fn recover(dir: &Path) -> Result<bool> {
    let tmp = dir.join(COMPACT_TMP_DIR);
    if tmp.exists() {
        remove_dir_patiently(&tmp, "drop")?;
        sync_dir(dir)?;
    }
    // Store format 9's compaction, on a closed store, brought no sled: the
    // old one goes with the journal (empty: the store was closed), and the
    // next open builds sled from the new log.
    let legacy = dir.join(LEGACY_COMPACT_DIR);
    if legacy.exists() {
        crate::rotate::move_log_in(dir, &legacy, false)?;
        for d in [DB_DIR, LOG_OLD_DIR] {
            if dir.join(d).exists() {
                remove_dir_patiently(&dir.join(d), "remove")?;
            }
        }
        if dir.join(JOURNAL_FILE).exists() {
            fs::remove_file(dir.join(JOURNAL_FILE))?;
        }
        sync_dir(dir)?;
        remove_dir_patiently(&legacy, "remove")?;
        sync_dir(dir)?;
    }
    if dir.join(COMPACTED_DIR).exists() {
        crate::rotate::move_log_in(dir, &dir.join(COMPACTED_DIR), false)?;
        finish(dir)?;
        return Ok(true);
    }
    Ok(false)
}

/// The rest of the swap once the new log is in; every step is skipped when
/// already done: the fresh sled takes the old one's place, `log.old/` goes.
fn finish(dir: &Path) -> Result<()> {
    let committed = dir.join(COMPACTED_DIR);
    let (live, fresh) = (dir.join(DB_DIR), committed.join(DB_DIR));
    if fresh.exists() {
        if live.exists() {
            remove_dir_patiently(&live, "remove the old sled")?;
        }
        fs::rename(&fresh, &live).map_err(at("move the fresh sled to", &live))?;
        sync_dir(dir)?;
        sync_dir(&committed)?;
    }
    if dir.join(LOG_OLD_DIR).exists() {
        remove_dir_patiently(&dir.join(LOG_OLD_DIR), "remove")?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Once the journal's old records are zeroed: the committed compaction's
/// directory (empty by now) goes, and with it the mark that an open must
/// zero the journal.
pub(crate) fn done(dir: &Path) -> Result<()> {
    let committed = dir.join(COMPACTED_DIR);
    if committed.exists() {
        remove_dir_patiently(&committed, "remove")?;
        sync_dir(dir)?;
    }
    Ok(())
}
