//! The store task: one thread owns the [`Engine`]; a second owns the journal
//! file and does the group commit.
//!
//! ```text
//!  handles ──cmd──▶ store thread: prepare ──record──▶ journal thread: write + fdatasync (all queued records) → acks
//!                                 └─ stage, then finish_batch (automerge commit, seal, sign, sled batch),
//!                                    while the fsync runs
//! ```
//! Records queued while an fsync is in flight share the next one, so concurrent
//! writers share one fsync, and the CRDT work of a write overlaps the fsync of
//! its journal record. A reply waits for both (see [`Join`]). A query first
//! closes the current group, so it sees every write queued before it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hearth_core::Passphrase;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, Outcome, Write};
use crate::error::{Error, Result};
use crate::journal::{Journal, encode_record};

/// Journal records queued to the journal thread before the store thread waits
/// (the journal thread takes every queued record into one write and one fsync).
const JOURNAL_QUEUE: usize = 8192;

type Ack = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) type Query = Box<dyn FnOnce(&mut Engine) + Send>;

pub(crate) enum Cmd {
    Write(Write, oneshot::Sender<Result<Outcome>>),
    Query(Query),
    Passwd(Passphrase, oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

enum JournalMsg {
    Group(Vec<u8>, Vec<Ack>),
    Clear(oneshot::Sender<Result<()>>),
}

fn journal_thread(mut journal: Journal, rx: std_mpsc::Receiver<JournalMsg>, poisoned: Arc<AtomicBool>) {
    let mut next = rx.recv().ok();
    while let Some(msg) = next.take() {
        match msg {
            JournalMsg::Group(bytes, acks) => {
                // Take every group already queued: one write and one fsync for all.
                let mut buf = bytes;
                let mut all = acks;
                while let Ok(m) = rx.try_recv() {
                    match m {
                        JournalMsg::Group(b, a) => {
                            buf.extend_from_slice(&b);
                            all.extend(a);
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                let res = if poisoned.load(Ordering::SeqCst) {
                    Err(Error::Poisoned)
                } else {
                    journal.append_durable(&buf)
                };
                match res {
                    Ok(()) => all.into_iter().for_each(|a| a(Ok(()))),
                    Err(e) => {
                        poisoned.store(true, Ordering::SeqCst);
                        let text = e.to_string();
                        all.into_iter()
                            .for_each(|a| a(Err(Error::Io(std::io::Error::other(text.clone())))));
                    }
                }
            }
            JournalMsg::Clear(done) => {
                let res = journal.clear();
                if res.is_err() {
                    poisoned.store(true, Ordering::SeqCst);
                }
                let _ = done.send(res);
            }
        }
        if next.is_none() {
            next = rx.recv().ok();
        }
    }
}

/// The reply of a write waits for two things: its journal record being durable
/// (journal thread) and its ops being staged (store thread). Whichever comes
/// second sends the reply.
struct Join {
    journal: Option<Result<()>>,
    staged: Option<Result<()>>,
    reply: Option<oneshot::Sender<Result<Outcome>>>,
    outcome: Outcome,
}

impl Join {
    fn settle(&mut self) {
        if self.journal.is_none() || self.staged.is_none() {
            return;
        }
        let (Some(journal), Some(staged), Some(reply)) = (self.journal.take(), self.staged.take(), self.reply.take())
        else {
            return;
        };
        let _ = reply.send(journal.and(staged).map(|()| self.outcome));
    }
}

struct Actor {
    engine: Engine,
    journal: std_mpsc::SyncSender<JournalMsg>,
    journal_thread: Option<std::thread::JoinHandle<()>>,
    poisoned: Arc<AtomicBool>,
    /// Highest journal seq handed to the journal thread but not yet in a sled batch.
    unbatched: Option<u64>,
    next_seq: u64,
    journal_bytes: u64,
    last_checkpoint: Instant,
}

impl Actor {
    /// Journal first, then stage: the record goes to the journal thread as soon
    /// as the write is validated, so its fsync runs while this thread does the
    /// automerge work (and while the next writes of the group are validated).
    fn write(&mut self, w: Write, reply: oneshot::Sender<Result<Outcome>>) {
        if self.poisoned.load(Ordering::SeqCst) {
            let _ = reply.send(Err(Error::Poisoned));
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
            let _ = reply.send(Ok(outcome));
            return;
        }
        let seq = self.next_seq;
        let bytes = match encode_record(&self.engine.records, seq, &entries) {
            Ok(b) => b,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.next_seq += 1;
        self.journal_bytes += bytes.len() as u64;
        let join = Arc::new(Mutex::new(Join {
            journal: None,
            staged: None,
            reply: Some(reply),
            outcome,
        }));
        let j = join.clone();
        let ack: Ack = Box::new(move |r| {
            let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
            j.journal = Some(r);
            j.settle();
        });
        if let Err(std_mpsc::SendError(JournalMsg::Group(_, acks))) =
            self.journal.send(JournalMsg::Group(bytes, vec![ack]))
        {
            acks.into_iter().for_each(|a| a(Err(Error::Closed)));
        }
        // A record is replayed exactly as staged here, so even a staging error
        // leaves the journal and the documents in agreement.
        let staged = self.engine.apply(&entries);
        self.unbatched = Some(seq);
        let mut j = join.lock().unwrap_or_else(|p| p.into_inner());
        j.staged = Some(staged);
        j.settle();
    }

    /// Close the group: one automerge change per touched epoch, one sled batch.
    fn close_group(&mut self) -> Result<()> {
        match self.unbatched.take() {
            Some(seq) => self.engine.finish_batch(seq),
            None => Ok(()),
        }
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.close_group()?;
        self.engine.checkpoint()?;
        let (tx, rx) = oneshot::channel();
        self.journal.send(JournalMsg::Clear(tx)).map_err(|_| Error::Closed)?;
        rx.blocking_recv().map_err(|_| Error::Closed)??;
        self.journal_bytes = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn housekeeping(&mut self) -> Result<()> {
        self.engine.evict()?;
        let due = self.last_checkpoint.elapsed() >= self.engine.config.checkpoint_interval;
        if self.journal_bytes >= self.engine.config.checkpoint_bytes
            || (due && (self.journal_bytes > 0 || self.engine.dirty))
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn shutdown(mut self) -> Result<()> {
        // A poisoned store leaves the disk as it is: the journal and sled's
        // atomic batches are what a reopen recovers from.
        let res = if self.poisoned.load(Ordering::SeqCst) {
            Err(Error::Poisoned)
        } else {
            self.close_group().and_then(|()| self.engine.snapshot_all()).and_then(|()| self.checkpoint())
        };
        drop(self.journal);
        if let Some(t) = self.journal_thread.take() {
            let _ = t.join();
        }
        res
    }
}

/// Run the store task on the current thread until closed.
pub(crate) fn run(engine: Engine, journal: Journal, mut rx: mpsc::Receiver<Cmd>) {
    let poisoned = Arc::new(AtomicBool::new(false));
    let (jtx, jrx) = std_mpsc::sync_channel(JOURNAL_QUEUE);
    let p = poisoned.clone();
    let journal_thread = std::thread::Builder::new()
        .name("hearth-journal".into())
        .spawn(move || journal_thread(journal, jrx, p))
        .expect("spawn the journal thread");
    let next_seq = engine.watermark + 1;
    let max_batch = engine.config.max_batch_ops;
    let interval = engine.config.checkpoint_interval;
    let mut actor = Actor {
        engine,
        journal: jtx,
        journal_thread: Some(journal_thread),
        poisoned,
        unbatched: None,
        next_seq,
        journal_bytes: 0,
        last_checkpoint: Instant::now(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a timer runtime");
    let mut close_reply = None;
    loop {
        let first = rt.block_on(async { tokio::time::timeout(interval, rx.recv()).await });
        let mut cmds = match first {
            Err(_) => {
                if let Err(e) = actor.housekeeping() {
                    actor.poisoned.store(true, Ordering::SeqCst);
                    eprintln!("hearth: checkpoint failed: {e}");
                }
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
                        eprintln!("hearth: group commit failed: {e}");
                    }
                    q(&mut actor.engine);
                }
                Cmd::Passwd(p, reply) => {
                    let _ = reply.send(actor.close_group().and_then(|()| actor.engine.change_passphrase(&p)));
                }
                Cmd::Close(_) => unreachable!("handled above"),
            }));
            if run.is_err() {
                actor.poisoned.store(true, Ordering::SeqCst);
            }
        }
        if close_reply.is_some() {
            break;
        }
        if let Err(e) = actor.close_group().and_then(|()| actor.housekeeping()) {
            actor.poisoned.store(true, Ordering::SeqCst);
            eprintln!("hearth: group commit failed: {e}");
        }
    }
    // Refuse what is still queued, then close: snapshots, checkpoint, empty journal.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Cmd::Write(_, r) => drop(r.send(Err(Error::Closed))),
            Cmd::Passwd(_, r) | Cmd::Close(r) => drop(r.send(Err(Error::Closed))),
            Cmd::Query(q) => drop(q),
        }
    }
    let res = actor.shutdown();
    if let Some(reply) = close_reply {
        let _ = reply.send(res);
    }
}
