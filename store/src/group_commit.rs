//! The journal as the writers share it: the store thread queues each
//! write's record (in sequence order), and the writers make them durable
//! themselves. The first writer to wait for its record while no fsync is
//! under way becomes the group's leader: it writes every record queued in
//! one `pwrite` and fdatasyncs it on its own thread; writers that come while
//! it syncs wait (as futures, not threads) and are woken when it is done, and
//! the next of them leads the next group.
//!
//! So a lone writer's acknowledgement needs no other thread woken after its
//! fsync (the fsync returns on the thread that waits for it, as in SQLite),
//! and the store thread's CRDT work for the write runs while the writer
//! syncs (ARCHITECTURE.md, "The writer makes its own fsync").
//!
//! While someone listens to the store's events (a sync node), a group
//! closes at once and the feed log's sync that lets its entries leave
//! starts right behind it: the records of such writes are *deferred*
//! (`queue(.., true)`), their writers lead no journal group but wait for
//! the store thread to say which log sync covers them ([`GroupCommit::cover`]),
//! and their write is durable once that sync ends, one flush instead of
//! two. Their bytes stay queued and go out with the next group a writer
//! leads (the journal's records must follow each other), or are dropped
//! by the next checkpoint (ARCHITECTURE.md, "A live post is made durable
//! by the log's sync").

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::log::Durable;

/// Most fsync times kept for the store thread between two looks.
const MAX_TIMED: usize = 256;
/// Most log syncs kept as covers at once; past it the oldest is dropped
/// (its writers wait for a later one, which covers them too).
const MAX_COVERS: usize = 64;

/// The journal and its queue of records not yet durable.
pub(crate) struct GroupCommit {
    /// Held through a group's write and fsync (by its leader), and by the
    /// store thread while it clears, empties or purges the journal.
    io: Mutex<Journal>,
    queue: Mutex<Queue>,
    /// The store is poisoned: nothing more is written.
    poisoned: Arc<AtomicBool>,
    /// Records queued and not yet durable (none once a group failed). The
    /// store thread does not spin while there are any ([`crate::actor`]):
    /// a busy core slows the fsync.
    pending: AtomicUsize,
    /// The store thread sleeps, waiting for a command or for the fsync's end.
    pub(crate) parked: AtomicBool,
    /// The store thread, to wake.
    pub(crate) store_thread: OnceLock<std::thread::Thread>,
    /// The CPU the store thread was on when it last looked for a command
    /// (`usize::MAX`: not known). A caller that waits awake for a reply
    /// does not spin on it (`Store::page`).
    pub(crate) store_cpu: AtomicUsize,
    /// Moving average of the journal's fsync time, in nanoseconds.
    fsync_ns: AtomicU64,
    /// The store thread measures where to run ([`crate::placement`]): the
    /// writers' fsyncs are timed into `Queue::timed`.
    timing: AtomicBool,
    /// Groups written and synced by writers (not by the store thread).
    writers_synced: AtomicU64,
    /// Deferred records or covers may be queued ([`GroupCommit::cover`]).
    watching: AtomicBool,
    /// The store's events, when the cores are kept awake through an fsync
    /// ([`crate::awake`]) while anything listens to them (a node's peer, an
    /// app's screen waits on the write).
    pub(crate) awake: Option<tokio::sync::broadcast::Sender<crate::StoreEvent>>,
}

struct Queue {
    /// The records queued, in sequence order, for the next group.
    bytes: Vec<u8>,
    /// How many records `bytes` holds.
    records: usize,
    /// The sequence number of the last record queued.
    last: u64,
    /// Every record up to this sequence number is durable (in the journal
    /// or, after a checkpoint, in sled).
    durable: u64,
    /// A group's write or fsync failed (its text), or the store was poisoned
    /// (`None` inside): nothing more is durable.
    failed: Option<Option<String>>,
    /// A writer leads a group (it writes and syncs, or is about to).
    leading: bool,
    /// Writers waiting for the group under way.
    waiting: Vec<Waker>,
    /// Writers' fsyncs (write included) in microseconds, while
    /// `GroupCommit::timing`.
    timed: Vec<u32>,
    /// Records up to this sequence number are deferred: the store thread
    /// will cover them by a log sync, or give them back to the writers
    /// ([`GroupCommit::undefer`]). Zero or at most `durable`: none.
    deferred: u64,
    /// Log syncs under way, each covering the records up to its `upto`,
    /// oldest first.
    covers: VecDeque<Cover>,
}

/// A log sync under way that makes every record up to `upto` durable: the
/// log's batch it reaches carries `upto` as its journal watermark.
#[derive(Clone, Debug)]
pub(crate) struct Cover {
    /// The last record covered.
    pub(crate) upto: u64,
    /// The log's sync to wait for.
    pub(crate) durable: Durable,
}

/// How a writer's record becomes durable ([`GroupCommit::poll_settle`]).
#[derive(Debug)]
pub(crate) enum Settled {
    /// It is durable.
    Durable,
    /// It will be once this log sync ends ([`GroupCommit::covered`]).
    Cover(Cover),
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupCommit {
    /// Share `journal`, every record up to `durable` being durable.
    pub(crate) fn new(journal: Journal, durable: u64, poisoned: Arc<AtomicBool>) -> GroupCommit {
        GroupCommit {
            io: Mutex::new(journal),
            queue: Mutex::new(Queue {
                bytes: Vec::new(),
                records: 0,
                last: durable,
                durable,
                failed: None,
                leading: false,
                waiting: Vec::new(),
                timed: Vec::new(),
                deferred: 0,
                covers: VecDeque::new(),
            }),
            poisoned,
            pending: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            store_thread: OnceLock::new(),
            store_cpu: AtomicUsize::new(usize::MAX),
            fsync_ns: AtomicU64::new(0),
            timing: AtomicBool::new(false),
            writers_synced: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            awake: None,
        }
    }

    /// Groups the writers have written and synced so far.
    pub(crate) fn writers_synced(&self) -> u64 {
        self.writers_synced.load(Ordering::Relaxed)
    }

    /// The store thread: time the writers' fsyncs from now on (`on`), or
    /// stop; the times measured since the last call, in microseconds.
    pub(crate) fn timings(&self, on: bool) -> Vec<u32> {
        self.timing.store(on, Ordering::Relaxed);
        std::mem::take(&mut lock(&self.queue).timed)
    }

    /// Deferred records or covers may be queued: the store thread's
    /// looks (`undefer`, `reap`) take no lock when not.
    fn update_watch(&self, q: &Queue) {
        self.watching
            .store(q.deferred > q.durable || !q.covers.is_empty(), Ordering::SeqCst);
    }

    /// The store's poisoned flag (shared with the store thread).
    pub(crate) fn poisoned(&self) -> Arc<AtomicBool> {
        self.poisoned.clone()
    }

    /// The store thread: queue record `seq` (one more than the last);
    /// `deferred`: the store thread will cover it by a log sync (or give
    /// it back, [`GroupCommit::undefer`]), so its writer leads no group.
    pub(crate) fn queue(&self, seq: u64, record: &[u8], deferred: bool) {
        let mut q = lock(&self.queue);
        q.bytes.extend_from_slice(record);
        q.records += 1;
        q.last = seq;
        if deferred {
            q.deferred = seq;
        }
        self.recount(&q);
    }

    /// Whether deferred records or covers may be queued (their writers,
    /// not the journal's fsync, wake the store thread).
    pub(crate) fn covering(&self) -> bool {
        self.watching.load(Ordering::SeqCst)
    }

    /// Whether records wait for the store thread's cover.
    pub(crate) fn deferring(&self) -> bool {
        if !self.watching.load(Ordering::SeqCst) {
            return false;
        }
        let q = lock(&self.queue);
        q.deferred > q.durable
    }

    /// The store thread, once the group holding every deferred record is
    /// in the feed log: the log's sync `durable` (`None`: the log is
    /// durable there already) makes every record up to `upto` durable.
    /// Wakes the writers waiting for it.
    pub(crate) fn cover(&self, upto: u64, durable: Option<Durable>) {
        let waiting = {
            let mut q = lock(&self.queue);
            if q.deferred <= upto {
                q.deferred = 0;
            }
            match durable {
                None => self.advance(&mut q, upto),
                Some(durable) if upto > q.durable => {
                    if q.covers.len() >= MAX_COVERS {
                        q.covers.pop_front();
                    }
                    q.covers.push_back(Cover { upto, durable });
                }
                Some(_) => {}
            }
            self.update_watch(&q);
            std::mem::take(&mut q.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }

    /// The store thread: the deferred records will not be covered (their
    /// group wrote nothing to the log, the log failed, or the group does
    /// not close at once): their writers make them durable in the journal.
    pub(crate) fn undefer(&self) {
        if !self.watching.load(Ordering::SeqCst) {
            return;
        }
        let waiting = {
            let mut q = lock(&self.queue);
            if q.deferred <= q.durable {
                return;
            }
            q.deferred = 0;
            self.update_watch(&q);
            std::mem::take(&mut q.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }

    /// A cover's log sync ended (`res`): its records are durable, or, if
    /// it failed, nothing more is (the store is poisoned).
    pub(crate) fn covered(&self, upto: u64, res: &Result<()>) {
        let waiting = {
            let mut q = lock(&self.queue);
            match res {
                Ok(()) => {
                    q.covers.retain(|c| c.upto > upto);
                    self.advance(&mut q, upto);
                }
                Err(e) => {
                    self.poisoned.store(true, Ordering::SeqCst);
                    q.failed.get_or_insert_with(|| Some(e.to_string()));
                    q.covers.clear();
                    self.recount(&q);
                }
            }
            std::mem::take(&mut q.waiting)
        };
        self.wake_store();
        waiting.into_iter().for_each(Waker::wake);
    }

    /// The store thread: take in the covers whose sync ended (for writes
    /// nobody awaits, whose writers would have). The furthest one that
    /// ended settles every record up to it; one that failed fails the store.
    pub(crate) fn reap(&self) {
        if !self.watching.load(Ordering::SeqCst) {
            return;
        }
        let done = {
            let q = lock(&self.queue);
            let mut done = None;
            for c in &q.covers {
                match c.durable.reached() {
                    Some(Err(e)) => {
                        done = Some((c.upto, Err(e)));
                        break;
                    }
                    Some(Ok(())) => done = Some((c.upto, Ok(()))),
                    None => {}
                }
            }
            done
        };
        if let Some((upto, res)) = done {
            self.covered(upto, &res);
        }
    }

    /// Every record up to `upto` is durable.
    fn advance(&self, q: &mut Queue, upto: u64) {
        q.durable = q.durable.max(upto);
        self.recount(q);
    }

    /// Keep `pending` right: the records queued and not durable, none once
    /// nothing more can become durable.
    fn recount(&self, q: &Queue) {
        self.update_watch(q);
        let n = if q.failed.is_some() {
            0
        } else {
            q.last.saturating_sub(q.durable)
        };
        self.pending
            .store(usize::try_from(n).unwrap_or(usize::MAX), Ordering::SeqCst);
    }

    /// Records are queued and not yet durable.
    pub(crate) fn busy(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    /// How long an fsync begun at `since` should still take.
    pub(crate) fn left(&self, since: Instant) -> Duration {
        Duration::from_nanos(self.fsync_ns.load(Ordering::Relaxed)).saturating_sub(since.elapsed())
    }

    /// Resolve once record `seq` is durable, or with the log sync that
    /// will make it so (a deferred record, once the store thread covered
    /// it): lead a group if none is under way (blocking this thread for its
    /// write and fsync), or wait for the one under way (its leader wakes
    /// this writer when it is done) or for the store thread's cover.
    pub(crate) fn poll_settle(&self, seq: u64, cx: &mut Context<'_>) -> Poll<Result<Settled>> {
        loop {
            {
                let mut q = lock(&self.queue);
                if let Some(done) = settled(&q, seq) {
                    return Poll::Ready(done.map(|()| Settled::Durable));
                }
                if let Some(c) = q.covers.iter().find(|c| c.upto >= seq) {
                    return Poll::Ready(Ok(Settled::Cover(c.clone())));
                }
                if q.leading || seq <= q.deferred {
                    q.waiting.push(cx.waker().clone());
                    return Poll::Pending;
                }
                q.leading = true;
            }
            // Taken only by a leader (there is one at a time) or, briefly, by
            // the store thread (a checkpoint's clear, a purge, the close).
            let journal = lock(&self.io);
            if !self.lead(journal, true) {
                // Nothing was queued, yet `seq` is not durable: it cannot
                // become so (a bug; the write is not acknowledged).
                let done = settled(&lock(&self.queue), seq).unwrap_or_else(|| {
                    Err(Error::corrupted(
                        "journal",
                        "a write's record is missing from the queue",
                    ))
                });
                return Poll::Ready(done.map(|()| Settled::Durable));
            }
        }
    }

    /// The store thread: make the records queued durable if no writer
    /// leads a group (writes nobody awaits, such as scheduled receipts, and
    /// writes whose futures were dropped), unless a cover or the store
    /// thread's close will.
    pub(crate) fn sync_unclaimed(&self) {
        {
            let mut q = lock(&self.queue);
            let claimed = q.durable.max(q.deferred).max(q.covers.back().map_or(0, |c| c.upto));
            if q.leading || q.records == 0 || q.last <= claimed {
                return;
            }
            q.leading = true;
        }
        self.lead(lock(&self.io), false);
    }

    /// As the group's leader (a writer if `writer`, else the store thread):
    /// write and sync every record queued, as one group, then wake the
    /// writers that waited. False when nothing was queued.
    fn lead(&self, mut journal: MutexGuard<'_, Journal>, writer: bool) -> bool {
        let (bytes, upto, records) = {
            let mut q = lock(&self.queue);
            (std::mem::take(&mut q.bytes), q.last, std::mem::take(&mut q.records))
        };
        let mut took = None;
        let res = if records == 0 {
            None
        } else if self.poisoned.load(Ordering::SeqCst) {
            Some(Err(Error::Poisoned))
        } else {
            let t = Instant::now();
            let listened = self.awake.as_ref().is_some_and(|e| e.receiver_count() > 0);
            let awake = crate::awake::Awake::begin(listened);
            let r = journal.append_durable(&bytes);
            drop(awake);
            let d = t.elapsed();
            self.timed(d);
            if writer {
                self.writers_synced.fetch_add(1, Ordering::Relaxed);
            }
            took = Some(d);
            Some(r)
        };
        if let Some(Ok(())) = res {
            crash_point!("journal.synced");
        }
        let waiting = {
            let mut q = lock(&self.queue);
            match &res {
                None => {}
                Some(Ok(())) => self.advance(&mut q, upto),
                Some(Err(Error::Poisoned)) => {
                    q.failed.get_or_insert(None);
                    self.recount(&q);
                }
                Some(Err(e)) => {
                    self.poisoned.store(true, Ordering::SeqCst);
                    q.failed.get_or_insert_with(|| Some(e.to_string()));
                    self.recount(&q);
                }
            }
            q.leading = false;
            if let Some(d) = took.filter(|_| writer && self.timing.load(Ordering::Relaxed))
                && q.timed.len() < MAX_TIMED
            {
                q.timed.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
            }
            std::mem::take(&mut q.waiting)
        };
        drop(journal);
        if records > 0 {
            self.wake_store();
        }
        waiting.into_iter().for_each(Waker::wake);
        records > 0
    }

    /// Records became durable (or failed): wake the store thread if it
    /// sleeps on them.
    fn wake_store(&self) {
        if self.parked.swap(false, Ordering::SeqCst)
            && let Some(t) = self.store_thread.get()
        {
            t.unpark();
        }
    }

    /// One more fsync took `d` (a stall of more than 4 times the average
    /// counts as 4 times).
    fn timed(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let old = self.fsync_ns.load(Ordering::Relaxed);
        let avg = if old == 0 {
            ns
        } else {
            old.saturating_mul(7).saturating_add(ns.min(old.saturating_mul(4))) / 8
        };
        self.fsync_ns.store(avg, Ordering::Relaxed);
    }

    /// The store thread, after a checkpoint made everything up to `upto`
    /// durable in sled: start a new run (records queued and not written
    /// are durable now, and dropped).
    pub(crate) fn clear(&self, run: u64, upto: u64) {
        let mut journal = lock(&self.io);
        let waiting = {
            let mut q = lock(&self.queue);
            q.bytes.clear();
            q.records = 0;
            q.covers.clear();
            self.advance(&mut q, upto);
            // Writers waiting for a cover: durable now.
            std::mem::take(&mut q.waiting)
        };
        journal.clear(run);
        drop(journal);
        self.wake_store();
        waiting.into_iter().for_each(Waker::wake);
    }

    /// The store thread: run `f` on the journal (after the group under
    /// way, if any).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Journal) -> T) -> T {
        f(&mut lock(&self.io))
    }
}

fn settled(q: &Queue, seq: u64) -> Option<Result<()>> {
    if q.durable >= seq {
        return Some(Ok(()));
    }
    q.failed.as_ref().map(|f| match f {
        Some(text) => Err(Error::Io(std::io::Error::other(text.clone()))),
        None => Err(Error::Poisoned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::entry;
    use crate::journal::{decode_records, encode_record};
    use hearth_core::SecretKey;
    use std::task::Wake;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        key: SecretKey,
        run: u64,
        gc: Arc<GroupCommit>,
        poisoned: Arc<AtomicBool>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let key = SecretKey::from_bytes([7; 32]);
        let (journal, _) = Journal::open(&path, &key).unwrap();
        let run = journal.run();
        let poisoned = Arc::new(AtomicBool::new(false));
        let gc = Arc::new(GroupCommit::new(journal, 0, poisoned.clone()));
        Fixture {
            _dir: dir,
            path,
            key,
            run,
            gc,
            poisoned,
        }
    }

    impl Fixture {
        fn queue(&self, seq: u64) {
            let r = encode_record(&self.key, self.run, seq, &[entry(seq as u8)]).unwrap();
            self.gc.queue(seq, &r, false);
        }

        fn queue_deferred(&self, seq: u64) {
            let r = encode_record(&self.key, self.run, seq, &[entry(seq as u8)]).unwrap();
            self.gc.queue(seq, &r, true);
        }

        fn on_disk(&self) -> Vec<u64> {
            let bytes = std::fs::read(&self.path).unwrap();
            decode_records(&self.key, &bytes)
                .records
                .iter()
                .map(|r| r.seq)
                .collect()
        }

        fn poll(&self, seq: u64, waker: &Arc<Count>) -> Poll<Result<()>> {
            self.settle(seq, waker).map(|r| {
                r.map(|s| match s {
                    Settled::Durable => (),
                    Settled::Cover(c) => panic!("record {seq} covered up to {}", c.upto),
                })
            })
        }

        fn settle(&self, seq: u64, waker: &Arc<Count>) -> Poll<Result<Settled>> {
            let waker = Waker::from(waker.clone());
            self.gc.poll_settle(seq, &mut Context::from_waker(&waker))
        }
    }

    /// The first writer to wait leads: it writes every record queued, in
    /// order, with one fsync, and the others find theirs durable.
    #[test]
    fn a_leader_writes_every_record_queued_as_one_group() {
        let f = fixture();
        for seq in 1..=3 {
            f.queue(seq);
        }
        assert!(f.gc.busy());
        let w = Arc::new(Count::default());
        assert!(matches!(f.poll(2, &w), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), vec![1, 2, 3]);
        assert!(!f.gc.busy(), "every record queued is durable");
        assert!(matches!(f.poll(3, &w), Poll::Ready(Ok(()))));
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
        // The next group goes after the first.
        f.queue(4);
        assert!(matches!(f.poll(4, &w), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), vec![1, 2, 3, 4]);
        assert_eq!(w.0.load(Ordering::SeqCst), 0, "nobody waited");
    }

    /// A writer that comes while a group is under way does not block: it
    /// waits, is woken when the group ends, and its record is durable then
    /// (queued before the leader took the queue) or it leads the next group.
    #[test]
    fn a_writer_during_a_group_waits_and_is_woken() {
        let f = fixture();
        f.queue(1);
        f.queue(2);
        // The store thread holds the journal (a purge, say), so the leader
        // blocks on it after it took the lead.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let gc = f.gc.clone();
        let holder = std::thread::spawn(move || {
            gc.with(|_| {
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            })
        });
        held_rx.recv().unwrap();
        let gc = f.gc.clone();
        let leader = std::thread::spawn(move || {
            let w = Waker::from(Arc::new(Count::default()));
            gc.poll_settle(1, &mut Context::from_waker(&w))
        });
        while !lock(&f.gc.queue).leading {
            std::thread::yield_now();
        }
        let w = Arc::new(Count::default());
        assert!(f.poll(2, &w).is_pending(), "a group is under way");
        f.queue(3);
        let w3 = Arc::new(Count::default());
        assert!(f.poll(3, &w3).is_pending());
        go_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(matches!(leader.join().unwrap(), Poll::Ready(Ok(Settled::Durable))));
        assert_eq!(w.0.load(Ordering::SeqCst), 1, "woken at the group's end");
        assert_eq!(w3.0.load(Ordering::SeqCst), 1);
        // Both were queued before the leader took the queue.
        assert!(matches!(f.poll(2, &w), Poll::Ready(Ok(()))));
        assert!(matches!(f.poll(3, &w3), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), vec![1, 2, 3]);
    }

    /// A checkpoint made everything durable in sled: the records queued are
    /// durable without being written, and the journal starts a new run.
    #[test]
    fn a_clear_makes_the_records_queued_durable() {
        let f = fixture();
        f.queue(1);
        f.queue(2);
        f.gc.clear(Journal::new_run().unwrap(), 2);
        assert!(!f.gc.busy());
        let w = Arc::new(Count::default());
        assert!(matches!(f.poll(2, &w), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), Vec::<u64>::new());
    }

    /// A poisoned store writes nothing more: its waiting writers get
    /// `Poisoned`, and so do the later ones.
    #[test]
    fn a_poisoned_store_writes_no_record() {
        let f = fixture();
        f.queue(1);
        f.poisoned.store(true, Ordering::SeqCst);
        let w = Arc::new(Count::default());
        assert!(matches!(f.poll(1, &w), Poll::Ready(Err(Error::Poisoned))));
        f.queue(2);
        assert!(matches!(f.poll(2, &w), Poll::Ready(Err(Error::Poisoned))));
        assert_eq!(f.on_disk(), Vec::<u64>::new());
    }

    /// Records nobody waits for are synced by the store thread; with a
    /// group under way it leaves them to its leader.
    #[test]
    fn unclaimed_records_are_synced_by_the_store_thread() {
        let f = fixture();
        f.queue(1);
        lock(&f.gc.queue).leading = true;
        f.gc.sync_unclaimed();
        assert!(f.gc.busy(), "a leader is at work: nothing done here");
        lock(&f.gc.queue).leading = false;
        f.gc.sync_unclaimed();
        assert!(!f.gc.busy());
        assert_eq!(f.on_disk(), vec![1]);
        let w = Arc::new(Count::default());
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
    }

    fn pos(offset: u64) -> crate::log::LogPos {
        crate::log::LogPos { segment: 1, offset }
    }

    fn flushed(upto: u64, failed: bool) -> crate::log::Flushed {
        crate::log::Flushed {
            upto: pos(upto),
            failed,
        }
    }

    /// A deferred record's writer leads no group: it waits for the store
    /// thread's cover, then for that log sync, and the record is durable
    /// without a journal write. Its bytes go out with the next group a
    /// writer leads, so the journal's records still follow each other.
    #[test]
    fn a_deferred_record_is_durable_by_its_cover() {
        let f = fixture();
        f.queue_deferred(1);
        f.queue_deferred(2);
        assert!(f.gc.deferring());
        let w = Arc::new(Count::default());
        assert!(f.settle(2, &w).is_pending(), "no cover yet: it waits");
        assert!(f.on_disk().is_empty(), "and leads no group");
        // Nobody syncs them meanwhile: the store thread's close will cover them.
        f.gc.sync_unclaimed();
        assert!(f.on_disk().is_empty());
        let (tx, durable) = crate::log::Durable::manual(pos(100));
        f.gc.cover(2, Some(durable));
        assert_eq!(w.0.load(Ordering::SeqCst), 1, "woken by the cover");
        assert!(!f.gc.deferring());
        let Poll::Ready(Ok(Settled::Cover(c))) = f.settle(2, &w) else {
            panic!("covered")
        };
        assert_eq!(c.upto, 2);
        assert!(c.durable.reached().is_none(), "the log's sync is under way");
        assert!(f.gc.busy(), "not durable until it ends");
        f.gc.sync_unclaimed();
        assert!(f.on_disk().is_empty(), "a cover is under way: nothing unclaimed");
        tx.send(flushed(150, false)).unwrap();
        let res = c.durable.reached().expect("reached");
        assert!(res.is_ok());
        f.gc.covered(c.upto, &res);
        assert!(!f.gc.busy());
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
        assert!(matches!(f.poll(2, &w), Poll::Ready(Ok(()))));
        assert!(f.on_disk().is_empty(), "durable by the log alone");
        // The next record's leader writes the covered ones before it.
        f.queue(3);
        assert!(matches!(f.poll(3, &w), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), vec![1, 2, 3]);
    }

    /// A cover nobody waits for (a write whose future was dropped) is taken
    /// in by the store thread once its sync ended.
    #[test]
    fn the_store_thread_reaps_a_cover_nobody_waits_for() {
        let f = fixture();
        f.queue_deferred(1);
        let (tx, durable) = crate::log::Durable::manual(pos(10));
        f.gc.cover(1, Some(durable));
        f.gc.reap();
        assert!(f.gc.busy(), "its sync is under way");
        tx.send(flushed(10, false)).unwrap();
        f.gc.reap();
        assert!(!f.gc.busy());
        let w = Arc::new(Count::default());
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
        // A cover whose log is gone (its thread ended) fails the store.
        f.queue_deferred(2);
        let (tx, durable) = crate::log::Durable::manual(pos(20));
        f.gc.cover(2, Some(durable));
        drop(tx);
        f.gc.reap();
        assert!(f.poisoned.load(Ordering::SeqCst));
        assert!(matches!(f.poll(2, &w), Poll::Ready(Err(Error::Io(_)))));
        assert!(!f.gc.busy(), "nothing more can become durable");
    }

    /// Records given back (their group wrote nothing to the log, or does
    /// not close now) are synced by their writers; a cover that comes
    /// with the log durable already makes them durable at once.
    #[test]
    fn undeferred_records_go_to_the_journal_and_a_durable_cover_settles_at_once() {
        let f = fixture();
        f.queue_deferred(1);
        let w = Arc::new(Count::default());
        assert!(f.settle(1, &w).is_pending());
        f.gc.undefer();
        assert_eq!(w.0.load(Ordering::SeqCst), 1, "woken to lead");
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), vec![1]);
        f.queue_deferred(2);
        f.gc.cover(2, None);
        assert!(!f.gc.busy());
        assert!(matches!(f.poll(2, &w), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), vec![1], "durable in the log already");
    }

    /// A cover's sync that fails fails its writers and poisons the store:
    /// nothing more is acknowledged.
    #[test]
    fn a_failed_cover_fails_its_writers_and_the_store() {
        let f = fixture();
        f.queue_deferred(1);
        let (tx, durable) = crate::log::Durable::manual(pos(10));
        f.gc.cover(1, Some(durable));
        let w = Arc::new(Count::default());
        let Poll::Ready(Ok(Settled::Cover(c))) = f.settle(1, &w) else {
            panic!("covered")
        };
        tx.send(flushed(0, true)).unwrap();
        let res = c.durable.reached().expect("reached");
        assert!(res.is_err());
        f.gc.covered(c.upto, &res);
        assert!(f.poisoned.load(Ordering::SeqCst));
        assert!(matches!(f.poll(1, &w), Poll::Ready(Err(Error::Io(_)))));
        f.queue(2);
        assert!(matches!(f.poll(2, &w), Poll::Ready(Err(_))));
        assert!(f.on_disk().is_empty());
    }

    /// A checkpoint's clear makes the deferred records durable and wakes
    /// their writers.
    #[test]
    fn a_clear_wakes_the_writers_of_deferred_records() {
        let f = fixture();
        f.queue_deferred(1);
        let w = Arc::new(Count::default());
        assert!(f.settle(1, &w).is_pending());
        f.gc.clear(Journal::new_run().unwrap(), 1);
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
        assert!(!f.gc.busy());
    }

    /// A cover short of the deferred records (a batch whose watermark is
    /// below them) settles what it covers and leaves the rest deferred
    /// until they are given back; past `MAX_COVERS` the oldest cover goes,
    /// and its records wait for a later one, which covers them too.
    #[test]
    fn a_short_cover_leaves_the_rest_deferred_and_old_covers_give_way() {
        let f = fixture();
        f.queue_deferred(1);
        f.queue_deferred(2);
        f.gc.cover(1, None);
        let w = Arc::new(Count::default());
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
        assert!(f.settle(2, &w).is_pending(), "still deferred");
        assert!(f.gc.deferring());
        f.gc.undefer();
        assert!(matches!(f.poll(2, &w), Poll::Ready(Ok(()))));
        assert_eq!(f.on_disk(), vec![1, 2], "its leader wrote the covered one too");
        assert!(!f.gc.covering(), "nothing deferred, no cover");
        // More covers than are kept: the first records find a later one.
        let mut senders = Vec::new();
        for seq in 3..3 + MAX_COVERS as u64 + 2 {
            f.queue_deferred(seq);
            let (tx, durable) = crate::log::Durable::manual(pos(seq));
            f.gc.cover(seq, Some(durable));
            senders.push(tx);
        }
        let Poll::Ready(Ok(Settled::Cover(c))) = f.settle(3, &w) else {
            panic!("covered")
        };
        assert_eq!(c.upto, 5, "the oldest two gave way");
        assert!(f.gc.covering());
        let last = senders.last().unwrap();
        last.send(flushed(1000, false)).unwrap();
        f.gc.reap();
        assert!(!f.gc.busy());
        assert!(!f.gc.covering());
        assert!(matches!(f.poll(3, &w), Poll::Ready(Ok(()))));
    }

    /// A leader that writes deferred records (they came before its own)
    /// settles them: their writers find them durable, and the store thread
    /// has nothing left to look at.
    #[test]
    fn a_leader_settles_the_deferred_records_before_its_own() {
        let f = fixture();
        f.queue_deferred(1);
        f.queue(2);
        let w = Arc::new(Count::default());
        assert!(f.settle(1, &w).is_pending());
        assert!(matches!(f.poll(2, &w), Poll::Ready(Ok(()))));
        assert_eq!(w.0.load(Ordering::SeqCst), 1, "the deferred writer is woken");
        assert!(matches!(f.poll(1, &w), Poll::Ready(Ok(()))));
        assert!(!f.gc.covering());
        assert!(!f.gc.busy());
    }
}
