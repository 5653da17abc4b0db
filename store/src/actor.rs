//! The store task: one thread owns the [`Engine`]; the writers make their
//! journal records durable themselves ([`GroupCommit`]).
//!
//! ```text
//!  handle ──cmd──▶ store thread: prepare, queue the record ──reply──▶ handle: write + fdatasync
//!                                 └─ stage, then finish_batch            (every record queued: a group)
//!                                    (automerge commit, seal, sign,      then the staging's result
//!                                    sled batch), while the fsync runs
//! ```
//! Records queued while an fsync is in flight share the next one, so concurrent
//! writers share one fsync, and the CRDT work of a write overlaps the fsync of
//! its journal record. A write resolves once both are done ([`Written`]). A
//! query first closes the current group, so it sees every write queued before
//! it.
//!
//! The store thread looks for its next command for a moment before it
//! sleeps (a wake-up costs more than the look), but not while a record of
//! its is being synced: on this machine's VM a busy core slows a concurrent
//! fdatasync by 40 µs or more, half the fsync itself ([`sleep_on_sync`],
//! docs/reach.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hearth_core::Passphrase;
use tokio::sync::{mpsc, oneshot};

use crate::compact::{CompactProgress, CompactReport, CompactStop};
use crate::engine::{Engine, Outcome, Write};
use crate::error::{Error, Result};
use crate::group_commit::GroupCommit;
use crate::journal::{Journal, NONCE_PREFIX, encode_record_under};
use crate::placement::{Placement, set_thread_cpus, spawn_unplaced};

/// After an automatic compaction failed to start or finish, how long before
/// the next try.
const AUTO_COMPACT_RETRY: Duration = Duration::from_secs(60);
/// How often the store drops expired texts (retention), and how many
/// epochs it looks at each time.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
const EXPIRE_EPOCHS: usize = 4;
/// How long the store waits without a command before a checkpoint that is
/// due on time (not on size) runs. A checkpoint holds the store's thread
/// 1 to 6 ms (log sync, sled flush, an fsync of each sled file); in
/// `hearth bench sync` one run right after a live post held the entry's
/// push to peers (the node's next command) for 5.8 ms. A checkpoint
/// overdue by a whole interval more runs right after a command.
const QUIET: Duration = Duration::from_millis(2);
/// How often the store task looks at a compaction's copy while it runs.
const COMPACT_POLL: Duration = Duration::from_millis(5);

/// Longest time staged ops wait before they are closed into feed entries.
const FINISH_AFTER: Duration = Duration::from_millis(5);
/// A group waits for its writers to pause this long before it closes.
const IDLE_BEFORE_CLOSE: Duration = Duration::from_millis(1);
/// ... but closes this long after its first op at the latest.
const FINISH_AT_MOST: Duration = Duration::from_millis(50);
/// The same when someone listens to store events (a sync node pushing new
/// entries to peers, an app's UI): no wait, since a peer waits on it. The
/// group closes as soon as the commands queued are done (a burst still
/// shares one entry), while the journal's fdatasync of the write is still
/// under way on its thread. A 1 ms wait was 1 to 2 ms with the timer's
/// granularity: about half of live delivery (ARCHITECTURE.md, "Sync").
const FINISH_AFTER_LIVE: Duration = Duration::ZERO;

pub(crate) type Query = Box<dyn FnOnce(&mut Engine) + Send>;

/// A change to the engine outside the write path (sync ingest). It gets whether
/// the store is usable (not poisoned, group closed), replies to its caller
/// itself, and returns `Err` when the engine failed mid-way: the store is then
/// poisoned, like after a failed group close.
pub(crate) type Mutation = Box<dyn FnOnce(&mut Engine, Result<()>) -> std::result::Result<(), ()> + Send>;

/// A write taken by the store thread: its record's sequence number (none
/// when it wrote nothing), what it did, and its staging's result to come.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) seq: Option<u64>,
    pub(crate) outcome: Outcome,
    pub(crate) staged: Option<oneshot::Receiver<Result<()>>>,
}

pub(crate) enum Cmd {
    Write(Write, oneshot::Sender<Result<Written>>),
    Query(Query),
    Mutate(Mutation),
    Passwd(Passphrase, oneshot::Sender<Result<()>>),
    Checkpoint(oneshot::Sender<Result<()>>),
    /// Start a compaction (or wait for the one under way); the reply comes
    /// once it is done.
    Compact(
        Option<CompactStop>,
        Arc<CompactProgress>,
        oneshot::Sender<Result<CompactReport>>,
    ),
    /// Write a backup to the file; the reply comes once it is durable.
    Backup(BackupJob),
    Close(oneshot::Sender<Result<()>>),
}

/// A backup asked for: the file, its progress, who waits.
pub(crate) struct BackupJob {
    pub(crate) path: std::path::PathBuf,
    pub(crate) progress: Arc<CompactProgress>,
    pub(crate) reply: oneshot::Sender<Result<crate::backup::BackupReport>>,
}

/// A backup under way, and who waits for it.
struct BackingUp {
    running: crate::compact::Running<crate::backup::BackupWriter>,
    path: std::path::PathBuf,
    reply: oneshot::Sender<Result<crate::backup::BackupReport>>,
}

/// A compaction under way, and who waits for it.
struct Compacting {
    running: crate::compact::Running<crate::compact::Fresh>,
    stop: Option<CompactStop>,
    waiters: Vec<oneshot::Sender<Result<CompactReport>>>,
}

/// Gives the deferred records back to their writers when the store thread
/// ends ([`run`]), and poisons the store if it ends in a panic.
struct ReleaseDeferred(Arc<GroupCommit>);

impl Drop for ReleaseDeferred {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned().store(true, Ordering::SeqCst);
        }
        self.0.undefer();
    }
}

/// Wakes the store thread when a command comes while it sleeps on an fsync.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

struct Actor {
    engine: Engine,
    journal: Arc<GroupCommit>,
    /// When the last journal record was queued.
    sent: Option<Instant>,
    poisoned: Arc<AtomicBool>,
    /// The journal run new records carry.
    run: u64,
    /// When the oldest op not yet closed into a feed entry was staged.
    staged_since: Option<Instant>,
    /// When the last write was staged.
    last_write: Option<Instant>,
    /// Ops staged since then.
    staged_ops: usize,
    /// Highest journal seq queued but not yet in a sled batch.
    unbatched: Option<u64>,
    next_seq: u64,
    journal_bytes: u64,
    last_checkpoint: Instant,
    /// A compaction under way.
    compaction: Option<Compacting>,
    /// A backup under way (one copy runs at a time).
    backup: Option<BackingUp>,
    /// Backups asked for while another copy ran, in order.
    backups_waiting: std::collections::VecDeque<BackupJob>,
    /// Backups whose file's end is being written, and compactions' purges
    /// of the journal's old records.
    finishing: Vec<std::thread::JoinHandle<()>>,
    /// When expired texts were last dropped (retention).
    last_expiry: Instant,
    /// No automatic compaction before then (after one failed).
    auto_compact_after: Instant,
    /// Where this thread runs ([`crate::placement`]).
    placement: Placement,
    /// The journal records' nonce prefix, drawn at random when this thread
    /// starts: `next_seq` never repeats while it runs.
    nonce_prefix: [u8; NONCE_PREFIX],
}

impl Actor {
    /// Journal first, then stage: the record is queued and the writer told
    /// as soon as the write is validated, so its fsync (on the writer's
    /// thread) runs while this thread does the automerge work (and while the
    /// next writes of the group are validated).
    fn write(&mut self, w: Write, reply: oneshot::Sender<Result<Written>>) {
        if self.poisoned.load(Ordering::SeqCst) {
            let _ = reply.send(Err(Error::Poisoned));
            return;
        }
        if let Err(e) = self.summaries() {
            let _ = reply.send(Err(e));
            return;
        }
        let (entries, outcome) = match self.engine.prepare(w) {
            Ok(x) => x,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if entries.is_empty() {
            let _ = reply.send(Ok(Written {
                seq: None,
                outcome,
                staged: None,
            }));
            return;
        }
        let seq = self.next_seq;
        let bytes = match encode_record_under(&self.engine.records, &self.nonce_prefix, self.run, seq, &entries) {
            Ok(b) => b,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.next_seq += 1;
        self.journal_bytes += bytes.len() as u64;
        // Listened: the group closes at once and goes to the feed log,
        // whose sync covers the record (`cover`): its writer leads no
        // journal group.
        let deferred = self.finish_after().is_zero();
        self.journal.queue(seq, &bytes, deferred);
        self.sent = Some(Instant::now());
        let (staged_tx, staged_rx) = oneshot::channel();
        let _ = reply.send(Ok(Written {
            seq: Some(seq),
            outcome,
            staged: Some(staged_rx),
        }));
        // A record is replayed exactly as staged here, so even a staging error
        // leaves the journal and the documents in agreement.
        let staged = self.engine.apply(&entries);
        self.unbatched = Some(seq);
        self.staged_since.get_or_insert_with(Instant::now);
        self.last_write = Some(Instant::now());
        self.staged_ops += entries.len();
        let _ = staged_tx.send(staged);
    }

    /// Close the group: one automerge change per touched epoch, one sled batch.
    ///
    /// A group that fails to close cannot be retried (its automerge change and
    /// feed position are spent), so any error poisons the store: nothing more
    /// reaches sled and the journal is never cleared, and a reopen replays the
    /// group from the journal. A poisoned store does nothing here.
    fn close_group(&mut self) -> Result<()> {
        self.guard()?;
        self.engine.journal_pending = self.journal_bytes;
        self.staged_since = None;
        self.staged_ops = 0;
        self.engine.logged = None;
        let res = match self.unbatched.take() {
            Some(seq) => self.engine.finish_batch(seq),
            None if self.engine.rows_pending => self.engine.finish_batch(self.engine.watermark),
            None => Ok(()),
        };
        let res = self.poison_on(res);
        let covered = self.cover(res.is_ok());
        res.and(covered)
    }

    /// After a group's close (`closed`: it went well): the deferred
    /// records are durable once the feed log's sync that reaches the
    /// group's batch ends (that batch's commit carries their watermark);
    /// when the group wrote nothing to the log, their writers make them
    /// durable in the journal.
    fn cover(&mut self, closed: bool) -> Result<()> {
        let logged = self.engine.logged.take();
        if !self.journal.deferring() {
            return Ok(());
        }
        // A group that wrote nothing to the log (its ops changed nothing) in
        // a run that sends early: covered by the log's sync up to its end,
        // never by the journal alone, whose sync would settle the records
        // before it whose entries are not durable yet; an unclean end that
        // makes the device a new one drops every record past the durable log.
        let early = || (self.engine.watermark, self.engine.log.end());
        let target = match logged {
            Some(l) if closed => Some(l),
            None if closed && self.engine.early.is_some() => Some(early()),
            _ => None,
        };
        let Some((upto, end)) = target else {
            self.journal.undefer();
            return Ok(());
        };
        match self.engine.log.durable_shared(end) {
            Ok(durable) => {
                self.journal.cover(upto, durable);
                Ok(())
            }
            Err(e) => {
                // The writers lead then, and hear `Poisoned`.
                self.poisoned.store(true, Ordering::SeqCst);
                self.journal.undefer();
                Err(e)
            }
        }
    }

    /// Take the writers' fsync times measured since the last look, and
    /// change this thread's CPU mask if the placement says so.
    fn place(&mut self) {
        let synced = self.journal.writers_synced();
        if !self.placement.due(synced) {
            return;
        }
        let was = self.placement.measuring();
        let timed = if was { self.journal.timings(true) } else { Vec::new() };
        let now = Instant::now();
        let read = || std::fs::read_to_string("/proc/interrupts").ok();
        if let Some(cpus) = self
            .placement
            .observe(&timed, synced, now)
            .or_else(|| self.placement.by_interrupts(synced, now, read))
        {
            // Refused (a cpuset changed under the app): the thread keeps the
            // mask it has, which is only slower.
            let _ = set_thread_cpus(&cpus);
        }
        let measuring = self.placement.measuring();
        if measuring != was {
            self.journal.timings(measuring);
        }
    }

    /// How long staged ops may still wait before they are closed: with no
    /// one listening, until the writers pause (`IDLE_BEFORE_CLOSE`) at least
    /// `FINISH_AFTER` after the first op, and never past `FINISH_AT_MOST`
    /// (a close is a stall of the store's thread: in a pause it delays no
    /// writer); with listeners, at once.
    fn close_wait(&self) -> Duration {
        let Some(since) = self.staged_since else {
            return Duration::ZERO;
        };
        let after = self.finish_after();
        if after.is_zero() {
            return Duration::ZERO;
        }
        let first = after.saturating_sub(since.elapsed());
        let idle = self
            .last_write
            .map_or(Duration::ZERO, |t| IDLE_BEFORE_CLOSE.saturating_sub(t.elapsed()));
        first.max(idle).min(FINISH_AT_MOST.saturating_sub(since.elapsed()))
    }

    fn finish_after(&self) -> Duration {
        // A run that sends entries early acknowledges every write by the
        // log's sync of its group (`crate::early`): its groups close at once.
        if self.engine.early.is_some() || self.engine.events.receiver_count() > 0 {
            FINISH_AFTER_LIVE
        } else {
            FINISH_AFTER
        }
    }

    /// [`Engine::ensure_summaries`], before any command but a query (which
    /// calls it itself, `Store::query`); a failure poisons the store, and a
    /// poisoned store does not try again here (housekeeping would report the
    /// same failure at every turn).
    fn summaries(&mut self) -> Result<()> {
        if self.engine.summaries_due.is_empty() {
            return Ok(());
        }
        self.guard()?;
        let res = self.engine.ensure_summaries();
        self.poison_on(res)
    }

    fn guard(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison_on<T>(&self, res: Result<T>) -> Result<T> {
        if res.is_err() {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        res
    }

    /// Make sled durable, then let the journal start over. Never clears the
    /// journal of a poisoned store, nor when sled lags behind the journal.
    fn checkpoint(&mut self) -> Result<()> {
        self.close_group()?;
        let flushed = self.engine.checkpoint();
        self.poison_on(flushed)?;
        self.guard()?;
        if self.engine.watermark + 1 != self.next_seq {
            return self.poison_on(Err(Error::corrupted("store task", "sled lags behind the journal")));
        }
        let run = Journal::new_run()?;
        self.journal.clear(run, self.engine.watermark);
        self.run = run;
        self.journal_bytes = 0;
        self.engine.journal_pending = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Start a compaction, or add the caller to the one under way.
    fn compact(
        &mut self,
        stop: Option<CompactStop>,
        progress: Arc<CompactProgress>,
        reply: Option<oneshot::Sender<Result<CompactReport>>>,
    ) {
        if let Some(c) = &mut self.compaction {
            c.waiters.extend(reply);
            return;
        }
        if self.backup.is_some() {
            match reply {
                Some(r) => drop(r.send(Err(Error::invalid(
                    "compaction",
                    "a backup is being written; try again once it is done",
                )))),
                None => self.auto_compact_after = Instant::now() + COMPACT_POLL * 20,
            }
            return;
        }
        // Expired texts (retention) are dropped first, so that this
        // compaction takes them out too.
        let started = self
            .guard()
            .and_then(|()| self.checkpoint())
            .and_then(|()| self.engine.expire(usize::MAX))
            .and_then(|_| self.engine.apply_prune_rows())
            .and_then(|()| self.engine.start_compaction(progress));
        match started {
            Ok(running) => {
                self.compaction = Some(Compacting {
                    running,
                    stop,
                    waiters: reply.into_iter().collect(),
                })
            }
            Err(e) => match reply {
                Some(r) => drop(r.send(Err(e))),
                None => {
                    eprintln!("hearth: an automatic compaction did not start: {e}");
                    self.auto_compact_after = Instant::now() + AUTO_COMPACT_RETRY;
                }
            },
        }
    }

    /// Once the copy of a compaction under way caught up: the pause, the
    /// commit and the swap, then the journal's old records zeroed.
    fn poll_compaction(&mut self) {
        if !self.compaction.as_ref().is_some_and(|c| c.running.ready()) {
            return;
        }
        let Some(Compacting { running, stop, waiters }) = self.compaction.take() else {
            return;
        };
        let mut committed = false;
        let res = match self.checkpoint() {
            Err(e) => {
                running.abandon();
                Err(e)
            }
            Ok(()) => self.engine.finish_compaction(running, stop, &mut committed),
        };
        let res = match res {
            // A test's stop is a crash there: nothing more is written.
            Ok(report) if stop.is_some() => {
                self.poisoned.store(true, Ordering::SeqCst);
                Ok(report)
            }
            Ok(report) => {
                tracing::info!(
                    records = report.records,
                    entries_rewritten = report.entries_rewritten,
                    texts_dropped = report.texts_dropped,
                    log_bytes_before = report.log_bytes_before,
                    log_bytes_after = report.log_bytes_after,
                    writes_applied = report.writes_applied,
                    paused_ms = report.paused.as_secs_f64() * 1e3,
                    took_ms = report.took.as_secs_f64() * 1e3,
                    "compaction committed"
                );
                // A thread of its own zeroes the old records (writers wait
                // for the journal meanwhile); the callers hear once that is
                // done, while this thread goes on. Then the committed
                // directory goes: until then an open after a crash zeroes
                // the journal itself.
                let (dir, journal) = (self.engine.dir.clone(), self.journal.clone());
                let purge = spawn_unplaced(std::thread::Builder::new(), move || {
                    let res = journal.with(Journal::purge).and_then(|()| {
                        crash_point!("compact.purged");
                        crate::compact::done(&dir)
                    });
                    reply_all(waiters, res.map(|()| report));
                });
                match purge {
                    Ok(t) => self.finishing.push(t),
                    // No thread: the waiters' replies were dropped with the
                    // closure (they hear `Closed`); an open zeroes the journal.
                    Err(e) => report_failure(&e.into()),
                }
                return;
            }
            Err(e) => {
                // Committed but not all swapped in: only an open can finish
                // it, and this store may run on a stand-in.
                if committed {
                    self.poisoned.store(true, Ordering::SeqCst);
                }
                tracing::warn!(error = %e, committed, "compaction failed");
                if waiters.is_empty() {
                    eprintln!("hearth: an automatic compaction failed: {e}");
                    self.auto_compact_after = Instant::now() + AUTO_COMPACT_RETRY;
                }
                Err(e)
            }
        };
        reply_all(waiters, res);
    }

    /// Start the next backup asked for, if no copy runs.
    fn next_backup(&mut self) {
        if self.compaction.is_some() || self.backup.is_some() {
            return;
        }
        let Some(BackupJob { path, progress, reply }) = self.backups_waiting.pop_front() else {
            return;
        };
        let started = self
            .guard()
            .and_then(|()| self.checkpoint())
            .and_then(|()| self.engine.start_backup(&path, progress));
        match started {
            Ok(running) => self.backup = Some(BackingUp { running, path, reply }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "backup failed");
                drop(reply.send(Err(e)));
            }
        }
    }

    /// Once a backup's copy caught up: the pause (a checkpoint, the last
    /// writes, the log's tail), then the file is finished off this thread.
    fn poll_backup(&mut self) {
        if self.backup.is_none() {
            self.next_backup();
        }
        if !self.backup.as_ref().is_some_and(|b| b.running.ready()) {
            return;
        }
        let Some(BackingUp {
            mut running,
            path,
            reply,
        }) = self.backup.take()
        else {
            return;
        };
        let paused = Instant::now();
        let copied = self.checkpoint().and_then(|()| self.engine.end_copy(&mut running));
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                running.abandon();
                tracing::warn!(path = %path.display(), error = %e, "backup failed");
                let _ = reply.send(Err(e));
                self.next_backup();
                return;
            }
        };
        let paused = paused.elapsed();
        let channels = self.engine.channels.len() as u32;
        let started = running.started;
        let taken_ms = crate::engine::now_ms();
        // The file's end is written off this thread; a close waits for it.
        self.finishing.retain(|t| !t.is_finished());
        let finishing = spawn_unplaced(std::thread::Builder::new(), move || {
            let report = copied.report;
            let res = copied
                .sink
                .finish(channels, taken_ms)
                .map(|bytes| crate::backup::BackupReport {
                    path,
                    bytes,
                    log_records: report.records,
                    rows_copied: report.rows_copied,
                    writes_applied: report.writes_applied,
                    paused,
                    took: started.elapsed(),
                });
            match &res {
                Ok(r) => tracing::info!(
                    path = %r.path.display(),
                    bytes = r.bytes,
                    log_records = r.log_records,
                    rows = r.rows_copied,
                    writes_applied = r.writes_applied,
                    paused_ms = r.paused.as_secs_f64() * 1e3,
                    took_ms = r.took.as_secs_f64() * 1e3,
                    "backup written"
                ),
                Err(e) => tracing::warn!(error = %e, "backup failed"),
            }
            let _ = reply.send(res);
        });
        match finishing {
            Ok(t) => self.finishing.push(t),
            // No thread: the caller's reply went with the closure (it hears
            // `Closed`); the file was never finished, so it is no backup.
            Err(e) => tracing::warn!(error = %e, "backup failed: no thread to finish it"),
        }
        self.next_backup();
    }

    /// `quiet`: how long the store went without a command (zero: it just
    /// took one).
    fn housekeeping(&mut self, quiet: Duration) -> Result<()> {
        // Summaries the open left for later: loaded once the first command
        // that did without them (a front page) has replied.
        self.summaries()?;
        // Epochs a page answered from their posts: loaded now that it replied.
        self.engine.load_answered();
        // Retention: a few epochs' expired texts dropped, once a second.
        if self.last_expiry.elapsed() >= EXPIRE_EVERY {
            self.last_expiry = Instant::now();
            if self.engine.expire(EXPIRE_EPOCHS)? > 0 {
                self.engine.apply_prune_rows()?;
            }
        }
        if self.compaction.is_none()
            && self.backup.is_none()
            && Instant::now() >= self.auto_compact_after
            && self
                .engine
                .dropped_since_compaction
                .is_some_and(|d| d.due(&self.engine.config))
        {
            self.compact(None, Arc::default(), None);
        }
        // Last, so that the cache is back within its bound before the next
        // command: expiring loads epochs (and each channel's meta epoch).
        self.engine.evict()?;
        // The feed log counts too: a long catch-up writes no journal, and
        // what it stored is durable only once checkpointed. (Not the sum:
        // local writes fill both, and would checkpoint twice as often.)
        let unsynced = self.journal_bytes.max(self.engine.log.unsynced_bytes());
        let on_time = checkpoint_now(self.checkpoint_due(), quiet, self.engine.config.checkpoint_interval);
        if unsynced >= self.engine.config.checkpoint_bytes || on_time {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// How late the checkpoint is; `None`: not due (too soon, or nothing
    /// to make durable).
    fn checkpoint_due(&self) -> Option<Duration> {
        let since = self.last_checkpoint.elapsed();
        let interval = self.engine.config.checkpoint_interval;
        (since >= interval && (self.journal_bytes > 0 || self.engine.dirty)).then(|| since - interval)
    }

    fn shutdown(mut self) -> Result<()> {
        if let Some(c) = self.compaction.take() {
            c.running.abandon();
            for w in c.waiters {
                let _ = w.send(Err(Error::Closed));
            }
        }
        if let Some(b) = self.backup.take() {
            b.running.abandon();
            let _ = b.reply.send(Err(Error::Closed));
        }
        for b in self.backups_waiting.drain(..) {
            let _ = b.reply.send(Err(Error::Closed));
        }
        for t in self.finishing.drain(..) {
            let _ = t.join();
        }
        for t in self.engine.readers_ending.drain(..) {
            let _ = t.join();
        }
        // A poisoned store leaves the disk as it is: the journal and sled's
        // atomic batches are what a reopen recovers from.
        if self.poisoned.load(Ordering::SeqCst) {
            Err(Error::Poisoned)
        } else {
            self.summaries()
                .and_then(|()| self.close_group())
                .and_then(|()| self.engine.write_fronts())
                .and_then(|()| self.engine.snapshot_all())
                .and_then(|()| self.engine.write_summary_copies())
                .and_then(|()| self.checkpoint())
                .and_then(|()| self.journal.with(Journal::mark_empty))
                // Everything sent early is durable now: the run ends cleanly.
                .and_then(|()| self.engine.early.take().map_or(Ok(()), crate::early::EarlyRun::end))
        }
    }
}

/// Whether a checkpoint `late` past its time (`None`: not due) runs now,
/// `quiet` after the store's last command (zero: right after one): once
/// the store was quiet for [`QUIET`], or once overdue by another
/// `interval`.
fn checkpoint_now(late: Option<Duration>, quiet: Duration, interval: Duration) -> bool {
    late.is_some_and(|late| quiet >= QUIET || late >= interval)
}

/// Tell everyone waiting for a compaction how it went: the first gets the
/// error itself, the others its text.
fn reply_all(waiters: Vec<oneshot::Sender<Result<CompactReport>>>, res: Result<CompactReport>) {
    let copy = match &res {
        Ok(report) => Ok(report.clone()),
        Err(e) => Err(e.to_string()),
    };
    let mut first = Some(res);
    for w in waiters {
        let r = first
            .take()
            .unwrap_or_else(|| copy.clone().map_err(|text| Error::corrupted("compaction", text)));
        let _ = w.send(r);
    }
}

/// What [`spin_recv`] found instead of a command.
enum Spun {
    /// Every handle is gone.
    Closed,
    /// Nothing came for [`SPIN`].
    Idle,
    /// Nothing yet, and a record of this store's is being synced.
    Syncing,
}

/// Look for a command for a few microseconds before parking: a caller that
/// sends its next command right after a reply (a writer loop, a page walk) then
/// skips a thread wake-up on each side, which costs more than the spin. Not
/// while a record of this store's is being synced ([`sleep_on_sync`]), unless `early` (the
/// fsync is about to end, [`sleep_on_sync`]).
fn spin_recv(rx: &mut mpsc::Receiver<Cmd>, journal: &GroupCommit, early: bool) -> std::result::Result<Cmd, Spun> {
    let start = Instant::now();
    journal
        .store_cpu
        .store(crate::placement::current_cpu().unwrap_or(usize::MAX), Ordering::Relaxed);
    loop {
        match rx.try_recv() {
            Ok(c) => return Ok(c),
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(Spun::Closed),
            Err(mpsc::error::TryRecvError::Empty) if !early && journal.busy() => return Err(Spun::Syncing),
            Err(mpsc::error::TryRecvError::Empty) if start.elapsed() > SPIN => return Err(Spun::Idle),
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// Sleep while a record of this store's is being synced, until a command
/// comes, the fsync ends, or `wait` passes: `Ok(None)` is "look again".
///
/// A core kept busy while an fdatasync is in flight slows the fdatasync (by
/// 35 to 45 µs against a floor of 80 µs on this machine's VM, whether the
/// loop yields or pauses; work that ends and sleeps costs little), so this
/// thread, its write staged, sleeps instead of looking for the next command.
/// `Err` when `wait` is zero (a group is due to close, and the fsync's time
/// suits that work).
///
/// The sleep ends [`WAKE_AHEAD`] before the fsync of the record queued at
/// `sent` should end (its moving average), and `early` is set: the thread
/// then looks in a loop again, up and ready when the writer's next command
/// comes (a wake-up at that moment costs 10 to 20 µs on this machine's VM,
/// a look that overlaps the fsync's last microseconds little). If the fsync
/// ends first, its leader wakes this thread.
fn sleep_on_sync(
    rx: &mut mpsc::Receiver<Cmd>,
    journal: &GroupCommit,
    wait: Duration,
    sent: Option<Instant>,
    early: &mut bool,
) -> std::result::Result<Option<Option<Cmd>>, ()> {
    if wait.is_zero() {
        return Err(());
    }
    // Records covered by a log sync: their writer wakes this thread when it
    // ends (the journal's average says nothing of it), and a core kept
    // busy meanwhile would slow that sync, which acknowledges them.
    let ahead = if journal.covering() { None } else { sent };
    let nap = match ahead.map(|t| journal.left(t).saturating_sub(WAKE_AHEAD)) {
        Some(d) if d.is_zero() => {
            *early = true;
            return Ok(None);
        }
        Some(d) if d < wait => {
            *early = true;
            d
        }
        _ => wait,
    };
    journal.parked.store(true, Ordering::SeqCst);
    // Either the group's leader sees `parked` (and wakes this thread), or
    // this thread sees the records durable.
    if !journal.busy() {
        journal.parked.store(false, Ordering::SeqCst);
        return Ok(None);
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let got = match rx.poll_recv(&mut std::task::Context::from_waker(&waker)) {
        std::task::Poll::Ready(c) => Ok(Some(c)),
        std::task::Poll::Pending => {
            std::thread::park_timeout(nap);
            match rx.try_recv() {
                Ok(c) => Ok(Some(Some(c))),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(Some(None)),
                Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            }
        }
    };
    journal.parked.store(false, Ordering::SeqCst);
    got
}

/// Make this thread's timed sleeps wake within a microsecond of their time
/// (Linux lets a normal thread's timers be 50 µs late, most of an fsync):
/// [`sleep_on_sync`] times its wake-up to the fsync's end.
#[allow(unsafe_code)]
fn precise_timers() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer and changes only this
    // thread's timer slack; it touches no memory of this process.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

/// Say once, on stderr, why the store stopped accepting writes (the callers get
/// `Poisoned`; this is for whoever reads the app's log).
fn report_failure(e: &Error) {
    if !matches!(e, Error::Poisoned) {
        eprintln!("hearth: the store stopped accepting writes: {e}");
    }
}

/// How long before a journal fsync should end the store thread wakes to
/// look for its next command ([`sleep_on_sync`]).
/// (60 µs measured best of 0 to 80 and never sleeping, in alternating
/// runs of `hearth bench`: 1.14x SQLite on average, the others 0.96x to
/// 1.11x; the figure is noisy, docs/reach.md.)
const WAKE_AHEAD: Duration = Duration::from_micros(60);
/// Records queued this long with no writer syncing them (writes nobody
/// awaits, such as scheduled receipts) are synced by the store thread.
const UNCLAIMED: Duration = Duration::from_millis(1);
/// How long [`spin_recv`] looks before parking.
const SPIN: Duration = Duration::from_micros(500);

/// Run the store task on the current thread until closed; the writers
/// make `journal`'s records durable.
pub(crate) fn run(engine: Engine, journal: Arc<GroupCommit>, mut rx: mpsc::Receiver<Cmd>) {
    let run = journal.with(|j| j.run());
    let poisoned = journal.poisoned();
    // `set` fails only if this store's thread was set before, which cannot be.
    let _ = journal.store_thread.set(std::thread::current());
    let next_seq = engine.watermark + 1;
    let max_batch = engine.config.max_batch_ops;
    let interval = engine.config.checkpoint_interval;
    precise_timers();
    let placement = Placement::for_this_thread(engine.config.place_store_thread);
    let mut nonce_prefix = [0u8; NONCE_PREFIX];
    if let Err(e) = hearth_core::random_bytes(&mut nonce_prefix) {
        // No randomness, no nonce to seal under: refuse every write.
        poisoned.store(true, Ordering::SeqCst);
        report_failure(&Error::from(e));
    }
    // However this thread ends (a panic in a group's close included), no
    // writer is left waiting for a cover: it is given back its record, and
    // after a panic the store is poisoned, so that it hears `Poisoned`.
    let _release = ReleaseDeferred(journal.clone());
    let mut actor = Actor {
        engine,
        journal,
        sent: None,
        poisoned,
        run,
        staged_since: None,
        last_write: None,
        staged_ops: 0,
        unbatched: None,
        next_seq,
        journal_bytes: 0,
        last_checkpoint: Instant::now(),
        compaction: None,
        backup: None,
        backups_waiting: Default::default(),
        finishing: Vec::new(),
        auto_compact_after: Instant::now(),
        last_expiry: Instant::now(),
        placement,
        nonce_prefix,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a timer runtime");
    let mut close_reply = None;
    // Set by `sleep_on_sync`: look in a loop although an fsync is in flight.
    let mut early = false;
    loop {
        actor.place();
        // With ops staged, wake up in time to close them into feed entries.
        let wait = match actor.staged_since {
            Some(_) => actor.close_wait(),
            None => interval,
        };
        let wait = if actor.compaction.is_some() || actor.backup.is_some() {
            wait.min(COMPACT_POLL)
        } else {
            wait
        };
        // A checkpoint due: run it once the store is quiet (`QUIET`).
        let wait = if actor.checkpoint_due().is_some() {
            wait.min(QUIET)
        } else {
            wait
        };
        // Records nobody syncs: this thread makes them durable itself, and
        // does not sleep past that (nor past a cover's sync, when nobody
        // waits for it).
        actor.journal.reap();
        let wait = if actor.journal.busy() {
            if actor.sent.is_some_and(|t| t.elapsed() >= UNCLAIMED) {
                actor.journal.sync_unclaimed();
            }
            wait.min(UNCLAIMED)
        } else {
            wait
        };
        let e = std::mem::take(&mut early);
        let first = match spin_recv(&mut rx, &actor.journal, e) {
            Ok(c) => Ok(Some(c)),
            Err(Spun::Closed) => Ok(None),
            Err(Spun::Idle) => rt
                .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                .map_err(drop),
            Err(Spun::Syncing) => match sleep_on_sync(&mut rx, &actor.journal, wait, actor.sent, &mut early) {
                Ok(None) => continue,
                Ok(Some(c)) => Ok(c),
                Err(()) => Err(()),
            },
        };
        let mut cmds = match first {
            Err(()) => {
                if let Err(e) = actor.close_group().and_then(|()| actor.housekeeping(wait)) {
                    actor.poisoned.store(true, Ordering::SeqCst);
                    report_failure(&e);
                }
                actor.poll_compaction();
                actor.poll_backup();
                continue;
            }
            Ok(None) => break,
            Ok(Some(c)) => vec![c],
        };
        while cmds.len() < max_batch {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        for cmd in cmds {
            if let Cmd::Close(reply) = cmd {
                close_reply = Some(reply);
                break;
            }
            // A panic is a bug; it must not take the embedding app down. The
            // caller's reply is dropped (it sees `Closed`), and the store refuses
            // writes from then on: its in-memory state is suspect, while what is
            // on disk is intact and a reopen recovers every acknowledged write.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cmd {
                Cmd::Write(w, reply) => actor.write(w, reply),
                Cmd::Query(q) => {
                    if let Err(e) = actor.close_group() {
                        actor.poisoned.store(true, Ordering::SeqCst);
                        report_failure(&e);
                    }
                    q(&mut actor.engine);
                }
                Cmd::Mutate(m) => {
                    let ready = actor.close_group();
                    if m(&mut actor.engine, ready).is_err() {
                        actor.poisoned.store(true, Ordering::SeqCst);
                    }
                }
                Cmd::Passwd(p, reply) => {
                    let _ = reply.send(
                        actor
                            .summaries()
                            .and_then(|()| actor.close_group())
                            .and_then(|()| actor.engine.change_passphrase(&p)),
                    );
                }
                Cmd::Checkpoint(reply) => {
                    let _ = reply.send(actor.summaries().and_then(|()| actor.checkpoint()));
                }
                Cmd::Compact(stop, progress, reply) => match actor.summaries() {
                    Ok(()) => actor.compact(stop, progress, Some(reply)),
                    Err(e) => drop(reply.send(Err(e))),
                },
                Cmd::Backup(job) => match actor.summaries() {
                    Ok(()) => {
                        actor.backups_waiting.push_back(job);
                        actor.next_backup();
                    }
                    Err(e) => drop(job.reply.send(Err(e))),
                },
                Cmd::Close(_) => unreachable!("handled above"),
            }));
            if run.is_err() {
                actor.poisoned.store(true, Ordering::SeqCst);
            }
        }
        if close_reply.is_some() {
            break;
        }
        // Closing a group (automerge commit, seal, sign, sled batch) costs about
        // as much as an fsync. Writes are already durable in the journal, so a
        // lone writer's ops wait a little and share one entry with the next ones
        // instead of paying that cost each.
        let due = actor.staged_since.is_some() && actor.close_wait().is_zero();
        if (due || actor.staged_ops >= max_batch || actor.staged_since.is_none())
            && let Err(e) = actor.close_group().and_then(|()| actor.housekeeping(Duration::ZERO))
        {
            actor.poisoned.store(true, Ordering::SeqCst);
            report_failure(&e);
        }
        // Deferred records whose group does not close now (the listeners
        // went): their writers sync them.
        actor.journal.undefer();
        actor.poll_compaction();
        actor.poll_backup();
    }
    // Refuse what is still queued, then close: snapshots, checkpoint, empty journal.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Cmd::Write(_, r) => drop(r.send(Err(Error::Closed))),
            Cmd::Passwd(_, r) | Cmd::Checkpoint(r) | Cmd::Close(r) => drop(r.send(Err(Error::Closed))),
            Cmd::Compact(_, _, r) => drop(r.send(Err(Error::Closed))),
            Cmd::Backup(b) => drop(b.reply.send(Err(Error::Closed))),
            Cmd::Query(q) => drop(q),
            Cmd::Mutate(m) => drop(m(&mut actor.engine, Err(Error::Closed))),
        }
    }
    let res = actor.shutdown();
    if let Some(reply) = close_reply {
        let _ = reply.send(res);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_due_waits_for_a_quiet_store_until_overdue() {
        let (ms, interval) = (Duration::from_millis, Duration::from_secs(2));
        // Not due: never.
        assert!(!checkpoint_now(None, ms(5), interval));
        assert!(!checkpoint_now(None, Duration::ZERO, interval));
        // Due, right after a command: not yet; quiet: now.
        assert!(!checkpoint_now(Some(ms(1)), Duration::ZERO, interval));
        assert!(!checkpoint_now(Some(ms(1999)), Duration::ZERO, interval));
        assert!(checkpoint_now(Some(ms(1)), QUIET, interval));
        assert!(checkpoint_now(Some(Duration::ZERO), ms(3), interval));
        // A shorter wait without a command (a group's close) is not quiet.
        assert!(!checkpoint_now(Some(ms(1)), ms(1), interval));
        // Overdue by another interval: even right after a command.
        assert!(checkpoint_now(Some(ms(2000)), Duration::ZERO, interval));
    }
}
