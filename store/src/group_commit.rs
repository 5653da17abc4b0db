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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::journal::Journal;

/// Most fsync times kept for the store thread between two looks.
const MAX_TIMED: usize = 256;

/// The journal and its queue of records not yet durable.
pub(crate) struct GroupCommit {
    /// Held through a group's write and fsync (by its leader), and by the
    /// store thread while it clears, empties or purges the journal.
    io: Mutex<Journal>,
    queue: Mutex<Queue>,
    /// The store is poisoned: nothing more is written.
    poisoned: Arc<AtomicBool>,
    /// Records queued and not yet durable. The store thread does not spin
    /// while there are any ([`crate::actor`]): a busy core slows the fsync.
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
            }),
            poisoned,
            pending: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            store_thread: OnceLock::new(),
            store_cpu: AtomicUsize::new(usize::MAX),
            fsync_ns: AtomicU64::new(0),
            timing: AtomicBool::new(false),
            writers_synced: AtomicU64::new(0),
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

    /// The store's poisoned flag (shared with the store thread).
    pub(crate) fn poisoned(&self) -> Arc<AtomicBool> {
        self.poisoned.clone()
    }

    /// The store thread: queue record `seq` (one more than the last).
    pub(crate) fn queue(&self, seq: u64, record: &[u8]) {
        let mut q = lock(&self.queue);
        q.bytes.extend_from_slice(record);
        q.records += 1;
        q.last = seq;
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// Records are queued and not yet durable.
    pub(crate) fn busy(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    /// How long an fsync begun at `since` should still take.
    pub(crate) fn left(&self, since: Instant) -> Duration {
        Duration::from_nanos(self.fsync_ns.load(Ordering::Relaxed)).saturating_sub(since.elapsed())
    }

    /// Resolve once record `seq` is durable: lead a group if none is under
    /// way (blocking this thread for its write and fsync), or wait for the
    /// one under way (its leader wakes this writer when it is done).
    pub(crate) fn poll_durable(&self, seq: u64, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            {
                let mut q = lock(&self.queue);
                if let Some(done) = settled(&q, seq) {
                    return Poll::Ready(done);
                }
                if q.leading {
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
                return Poll::Ready(settled(&lock(&self.queue), seq).unwrap_or_else(|| {
                    Err(Error::corrupted(
                        "journal",
                        "a write's record is missing from the queue",
                    ))
                }));
            }
        }
    }

    /// The store thread: make the records queued durable if no writer
    /// leads a group (writes nobody awaits, such as scheduled receipts, and
    /// writes whose futures were dropped).
    pub(crate) fn sync_unclaimed(&self) {
        {
            let mut q = lock(&self.queue);
            if q.leading || q.records == 0 {
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
                Some(Ok(())) => q.durable = q.durable.max(upto),
                Some(Err(Error::Poisoned)) => {
                    q.failed.get_or_insert(None);
                }
                Some(Err(e)) => {
                    self.poisoned.store(true, Ordering::SeqCst);
                    q.failed.get_or_insert_with(|| Some(e.to_string()));
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
            self.synced(records);
        }
        waiting.into_iter().for_each(Waker::wake);
        records > 0
    }

    /// `n` records are durable (or failed): wake the store thread if it
    /// sleeps on them.
    fn synced(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::SeqCst);
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
        let records = {
            let mut q = lock(&self.queue);
            q.bytes.clear();
            q.durable = q.durable.max(upto);
            std::mem::take(&mut q.records)
        };
        journal.clear(run);
        drop(journal);
        self.synced(records);
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
            self.gc.queue(seq, &r);
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
            let waker = Waker::from(waker.clone());
            self.gc.poll_durable(seq, &mut Context::from_waker(&waker))
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
            gc.poll_durable(1, &mut Context::from_waker(&w))
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
        assert!(matches!(leader.join().unwrap(), Poll::Ready(Ok(()))));
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
}
