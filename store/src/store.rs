//! The [`Store`] handle: cloneable, async, talks to the store task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_core::{
    ChannelId, ChannelKeys, DeviceId, MemberAction, Message, MessageId, Passphrase, Role, UserId, Vector, WireId,
};
use tokio::sync::{mpsc, oneshot};

use crate::actor::{self, Cmd, Written};
use crate::backup::{BackupReport, RestoreReport};
use crate::compact::{CompactProgress, CompactReport, CompactStop};
use crate::config::Config;
use crate::engine::{Engine, Outcome, Write};
use crate::error::{Error, Result};
use crate::group_commit::{GroupCommit, Settled};
use crate::ingest::IngestReport;
use crate::open::{self, OpenReport};
use crate::query::{ChannelInfo, DeviceInfo, Located, RosterInfo, Thread};
use crate::replica::{EntryBatch, Receipts, StoreEvent};
use crate::rotate::{RotateReport, StopAt};
use crate::verify::{ChannelStats, Stats, VerifyReport};

/// Longest an open's caller waits awake for the open's end once the key is
/// unlocked (`Store::start`); an open that takes longer is waited for parked.
const OPEN_SPIN: std::time::Duration = std::time::Duration::from_millis(3);
/// Longest a page's caller waits awake for its reply ([`Store::page`]).
const PAGE_SPIN: std::time::Duration = std::time::Duration::from_micros(250);

/// The store thread's reply, waited for awake for at most `spin`, then
/// parked. Awake is spinning, not yielding (a thread at idle priority
/// that is yielded to keeps the core for a whole time slice), and only on
/// another core than the store thread's (`store_cpu`): on the same one,
/// the spin would keep the store thread from making the reply, so the
/// caller parks at once, and is woken by a thread that is running there.
async fn reply_awake<T>(
    mut rx: oneshot::Receiver<Result<T>>,
    spin: std::time::Duration,
    store_cpu: &std::sync::atomic::AtomicUsize,
) -> Result<T> {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(r) => return r,
            Err(oneshot::error::TryRecvError::Closed) => return Err(Error::Closed),
            Err(oneshot::error::TryRecvError::Empty)
                if start.elapsed() < spin
                    && crate::placement::current_cpu()
                        .is_some_and(|c| c != store_cpu.load(std::sync::atomic::Ordering::Relaxed)) =>
            {
                std::hint::spin_loop()
            }
            Err(oneshot::error::TryRecvError::Empty) => break,
        }
    }
    rx.await.map_err(|_| Error::Closed)?
}

/// Batches of at least this many bytes (and two entries) are opened ahead,
/// on worker threads ([`Store::ingest`]); a live entry is a few hundred bytes.
/// Debug builds (the tests) open every batch of two entries or more
/// ahead, and check it against the store's own opening.
const OPEN_AHEAD_BYTES: usize = if cfg!(debug_assertions) { 1 } else { 64 * 1024 };

/// Whether a batch is opened off the store's thread (`Store::open_ahead`).
fn opens_ahead(entries: &[Vec<u8>]) -> bool {
    entries.len() >= 2 && entries.iter().map(Vec::len).sum::<usize>() >= OPEN_AHEAD_BYTES
}

/// A submitted write; resolves to its [`Outcome`] once durable.
///
/// The write's journal record is made durable by the task that awaits it
/// (with every other record queued by then: a group commit), so the first
/// poll after the store took the write blocks its thread for one write and
/// fdatasync of the journal, about 0.1 ms, unless another writer's group
/// is under way (then it waits for that one, without blocking). Awaiting on
/// the writer's own thread is what lets a lone writer's acknowledgement
/// come without a thread woken after the fsync (ARCHITECTURE.md).
///
/// While someone listens to the store's events ([`Store::subscribe`], a
/// sync node), the write's group closes at once and goes to the feed log,
/// whose sync lets its entries leave: the write is then durable once that
/// sync ends, and its journal record is not synced (one flush, not two).
pub struct Pending {
    state: PendingState,
    journal: Arc<GroupCommit>,
}

enum PendingState {
    /// The store thread has not taken the write yet.
    Taking(oneshot::Receiver<Result<Written>>),
    /// Taken: its record to be made durable, then its staging to end.
    Syncing(Syncing),
    Done,
}

/// `Pending` stays `Send + Sync + Unpin`, as it was before it could wait
/// for a log sync: an app may hold one across threads and awaits.
const _: fn() = || {
    fn check<T: Send + Sync + Unpin>() {}
    check::<Pending>();
};

/// The log's sync a deferred write waits for.
type CoverWait = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + Sync>>;

/// What a taken write still waits for.
struct Syncing {
    /// Its record, until durable or covered.
    seq: Option<u64>,
    /// The log's sync that covers its record, and the last record it covers.
    cover: Option<(u64, CoverWait)>,
    outcome: Outcome,
    staged: Option<oneshot::Receiver<Result<()>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// How long a writer looks for the store thread's answer before it sleeps,
/// when no fsync is in flight: the store takes a write in about 10 µs, and
/// a wake-up costs 10 to 20 µs more on this machine's VM.
const TAKE_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

impl std::future::Future for Pending {
    type Output = Result<Outcome>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let done = self.step(cx);
        if done.is_ready() {
            self.state = PendingState::Done;
        }
        done
    }
}

impl Pending {
    /// Take the store thread's answer, make the record durable, then wait
    /// for the staging: each step once.
    fn step(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<Outcome>> {
        use std::task::{Poll, ready};
        loop {
            match &mut self.state {
                PendingState::Taking(rx) => {
                    let mut got = rx.try_recv();
                    if matches!(got, Err(oneshot::error::TryRecvError::Empty)) && !self.journal.busy() {
                        let start = std::time::Instant::now();
                        while matches!(got, Err(oneshot::error::TryRecvError::Empty)) && start.elapsed() < TAKE_SPIN {
                            std::thread::yield_now();
                            got = rx.try_recv();
                        }
                    }
                    let Written { seq, outcome, staged } = match got {
                        Ok(w) => w?,
                        Err(oneshot::error::TryRecvError::Closed) => return Poll::Ready(Err(Error::Closed)),
                        Err(oneshot::error::TryRecvError::Empty) => {
                            ready!(std::pin::Pin::new(rx).poll(cx)).map_err(|_| Error::Closed)??
                        }
                    };
                    self.state = PendingState::Syncing(Syncing {
                        seq,
                        cover: None,
                        outcome,
                        staged,
                    });
                }
                PendingState::Syncing(w) => {
                    if let Some(s) = w.seq {
                        if let Settled::Cover(c) = ready!(self.journal.poll_settle(s, cx))? {
                            let durable = c.durable;
                            w.cover = Some((c.upto, Box::pin(async move { durable.wait().await })));
                        }
                        w.seq = None;
                    }
                    if let Some((upto, wait)) = &mut w.cover {
                        let res = ready!(wait.as_mut().poll(cx));
                        self.journal.covered(*upto, &res);
                        res?;
                        w.cover = None;
                    }
                    if let Some(rx) = &mut w.staged {
                        ready!(std::pin::Pin::new(rx).poll(cx)).map_err(|_| Error::Closed)??;
                        w.staged = None;
                    }
                    return Poll::Ready(Ok(w.outcome));
                }
                PendingState::Done => return Poll::Ready(Err(Error::Closed)),
            }
        }
    }
}

/// Who this store belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Whoami {
    /// The user id.
    pub user: UserId,
    /// This device.
    pub device: DeviceId,
    /// Ids this device wrote under before it moved to its keyed id (store
    /// format 7), oldest first.
    pub former: Vec<DeviceId>,
    /// The user's display name.
    pub name: String,
    /// The store directory.
    pub dir: PathBuf,
}

struct Shared {
    events: tokio::sync::broadcast::Sender<StoreEvent>,
    chat: crate::events::ChatEvents,
    receipts_scheduled: std::sync::atomic::AtomicBool,
    receipt_delay: std::time::Duration,
    whoami: Whoami,
    report: OpenReport,
    timings: OpenTimings,
    /// The threads that open a catch-up's entries.
    opener: crate::opener::Opener,
}

/// How long opening took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenTimings {
    /// The Argon2id derivation that unlocks the store (0 for a new store).
    pub unlock: std::time::Duration,
    /// Everything: unlock, sled, channel states, journal replay.
    pub total: std::time::Duration,
}

/// A handle to an open store. Clones share the store; the store closes when
/// [`Store::close`] is called or the last handle is dropped. Dropping closes in
/// the background: call [`Store::close`] to wait until the lock is released
/// (before reopening the same directory, for example).
///
/// Every write method returns once the write is durable (its journal record is
/// fsynced; concurrent writes share one fsync).
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    journal: Arc<GroupCommit>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("whoami", &self.shared.whoami)
            .finish_non_exhaustive()
    }
}

pub(crate) const PRIVATE_FILE_MAGIC: &[u8; 8] = b"HEARTHSF";

pub(crate) fn file_aad(name: &str) -> Vec<u8> {
    let mut aad = b"hearth.file.v1".to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !name.starts_with('.')
        && ![
            "header",
            "header.tmp",
            "journal",
            "LOCK",
            "db",
            "log",
            "log.tmp",
            "db.v1",
            "log.old",
            "rotate",
            "rotate.tmp",
            "compact",
            "compact.tmp",
            "compacted",
        ]
        .contains(&name);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "file name".into(),
            detail: format!("{name:?} is not a plain file name"),
        })
    }
}

fn expect_message(o: Outcome) -> Result<MessageId> {
    match o {
        Outcome::Message(m) => Ok(m),
        _ => Err(Error::corrupted("store task", "unexpected reply")),
    }
}

/// A store closed cleanly just now (under its lock): nothing may wait in
/// its journal before a rotation or a compaction replaces its files.
fn closed_cleanly(dir: &Path, master: &hearth_core::SecretKey) -> Result<()> {
    let records = hearth_core::derive(master, hearth_core::Purpose::LocalRecords);
    let (journal, decoded) = crate::journal::Journal::open(&dir.join(crate::layout::JOURNAL_FILE), &records)?;
    drop(journal);
    if !decoded.records.is_empty() {
        return Err(Error::corrupted("journal", "records left after a clean close"));
    }
    Ok(())
}

/// The open, as a tracing event (after the caller has its store).
fn trace_open(engine: &Engine, report: &OpenReport, timings: OpenTimings) {
    tracing::info!(
        dir = %engine.dir.display(),
        channels = engine.channels.len(),
        unlock_ms = timings.unlock.as_secs_f64() * 1e3,
        open_ms = timings.total.as_secs_f64() * 1e3,
        replayed_records = report.replayed_records,
        log_entries = report.log_entries,
        rebuilt = report.rebuilt.as_deref(),
        migrated_from = report.migrated_from,
        journal_tail = report.journal_tail.as_deref(),
        skipped = report.skipped.len(),
        "store opened"
    );
    for s in &report.skipped {
        tracing::warn!(what = %s, "skipped at the open");
    }
}

/// `Store::start`'s `ahead` for a store that is made, not opened.
fn send_nothing(to: std::sync::mpsc::SyncSender<()>) {
    let _ = to.send(());
}

impl Store {
    /// Start the store thread, which runs `opener` and then the store;
    /// `ahead` runs here meanwhile, and what it sends goes to `opener`,
    /// which takes it when it needs it (the part of an open that needs
    /// neither the key nor the store thread: [`open::start`]; the open
    /// takes it once the key is unlocked).
    async fn start<A, F>(config: Config, ahead: impl FnOnce(std::sync::mpsc::SyncSender<A>), opener: F) -> Result<Store>
    where
        A: Send + 'static,
        F: FnOnce(
                Config,
                open::Unlocked,
                std::sync::mpsc::Receiver<A>,
            ) -> Result<(Engine, crate::journal::Journal, OpenReport)>
            + Send
            + 'static,
    {
        let config = config.clamped();
        let receipt_delay = config.receipt_delay;
        let (tx, rx) = mpsc::channel(config.command_queue);
        let (ready_tx, mut ready_rx) = oneshot::channel();
        let (unlocked_tx, unlocked_rx) = oneshot::channel();
        let (ahead_tx, ahead_rx) = std::sync::mpsc::sync_channel(1);
        let started = std::time::Instant::now();
        std::thread::Builder::new().name("hearth-store".into()).spawn(move || {
            // A panic while opening (a bug, or a library on damaged bytes)
            // must reach the caller as an error, not as `Closed`.
            let unlocked: open::Unlocked = Box::new(move || {
                let _ = unlocked_tx.send(());
            });
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| opener(config, unlocked, ahead_rx)))
                .unwrap_or_else(|_| Err(Error::corrupted("store", "opening it failed unexpectedly")));
            match opened {
                Ok((mut engine, journal, report)) => {
                    let timings = OpenTimings {
                        unlock: engine.unlock_time,
                        total: started.elapsed(),
                    };
                    let whoami = Whoami {
                        user: engine.identity.user(),
                        device: engine.identity.device(),
                        former: engine.identity.former().to_vec(),
                        name: engine.identity.name().to_string(),
                        dir: engine.dir.clone(),
                    };
                    // Receipts owed when the store last stopped (a crash while
                    // they gathered) are written soon.
                    let owed = engine.channels.values().any(|ch| !ch.owed.is_empty());
                    // Traced once the caller has its store: nothing of
                    // tracing on the open's path.
                    let traced = report.clone();
                    let events = (engine.events.clone(), engine.chat.clone());
                    let mut journal = GroupCommit::new(journal, engine.watermark, Arc::default());
                    journal.awake = engine.config.awake_flushes.then(|| engine.events.clone());
                    engine.log.set_awake(engine.config.awake_flushes);
                    let journal = Arc::new(journal);
                    let _ = ready_tx.send(Ok((whoami, report, timings, events, owed, journal.clone())));
                    trace_open(&engine, &traced, timings);
                    actor::run(engine, journal, rx);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store did not open");
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        ahead(ahead_tx);
        // Once the key is unlocked, the rest of an open is about half a
        // millisecond: this thread waits for it awake instead of parked, so
        // that the reply does not wait for a parked thread (often on a
        // halted core) to be woken, 20 to 250 µs (docs/reach.md, "After the
        // twelfth session"). At most `OPEN_SPIN`: an open that replays or
        // rebuilds is waited for parked.
        let ready = match unlocked_rx.await {
            Ok(()) => {
                let spun = std::time::Instant::now();
                loop {
                    match ready_rx.try_recv() {
                        Ok(r) => break Some(r),
                        Err(oneshot::error::TryRecvError::Closed) => return Err(Error::Closed),
                        Err(oneshot::error::TryRecvError::Empty) if spun.elapsed() < OPEN_SPIN => {
                            std::thread::yield_now()
                        }
                        Err(oneshot::error::TryRecvError::Empty) => break None,
                    }
                }
            }
            Err(_) => None,
        };
        let ready = match ready {
            Some(r) => r,
            None => ready_rx.await.map_err(|_| Error::Closed)?,
        };
        let (whoami, report, timings, (events, chat), owed, journal) = ready?;
        let store = Store {
            tx,
            journal,
            shared: Arc::new(Shared {
                events,
                chat,
                receipts_scheduled: Default::default(),
                receipt_delay,
                whoami,
                report,
                timings,
                opener: Default::default(),
            }),
        };
        if owed {
            store.schedule_receipts();
        }
        Ok(store)
    }

    /// Create a new store in `dir` (created if missing) for a new user.
    pub async fn create(dir: impl AsRef<Path>, pass: &Passphrase, user_name: &str, config: Config) -> Result<Store> {
        let dir = open::abs(dir.as_ref());
        let (pass, name) = (pass.clone(), user_name.to_string());
        Self::start(config, send_nothing, move |c, _, _| {
            let (e, j) = open::create(&dir, &pass, &name, c)?;
            Ok((e, j, OpenReport::default()))
        })
        .await
    }

    /// Create a new store in `dir` for an identity made elsewhere (tools and
    /// tests that keep the user key apart, as `hearth_core::Identity::generate`
    /// makes it).
    pub async fn create_as(
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        identity: hearth_core::Identity,
        config: Config,
    ) -> Result<Store> {
        let dir = open::abs(dir.as_ref());
        let pass = pass.clone();
        Self::start(config, send_nothing, move |c, _, _| {
            let (e, j) = open::create_as(&dir, &pass, identity, c)?;
            Ok((e, j, OpenReport::default()))
        })
        .await
    }

    /// Create a store in `dir` for a new device of an existing user, from its
    /// own `keys` (whose public half it sent to be linked) and the bundle a
    /// device of that user sent back for them (see `hearth link`): same
    /// user, its own device id, a certificate chain through the linking
    /// device and no user key, every channel joined (their history arrives
    /// by sync). A bundle whose chain is not of `keys` is refused.
    pub async fn create_linked(
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        keys: hearth_core::device::DeviceKeys,
        bundle: &hearth_core::LinkBundle,
        config: Config,
    ) -> Result<Store> {
        let dir = open::abs(dir.as_ref());
        let pass = pass.clone();
        let identity = hearth_core::Identity::linked(keys, bundle.chain.clone(), &bundle.name)?;
        let store = Self::create_as(dir, &pass, identity, config).await?;
        for keys in &bundle.channels {
            store.join_channel(keys.clone()).await?;
        }
        Ok(store)
    }

    /// What the new device of this user whose public keys are `keys` needs
    /// (see [`Store::create_linked`]): a certificate of those keys issued by
    /// this device, after this device's own chain (never the user key), the
    /// user's name and every channel key. Seal it before it leaves.
    pub async fn link_bundle(&self, keys: hearth_core::device::DevicePublic) -> Result<hearth_core::LinkBundle> {
        self.query(move |e| {
            Ok(hearth_core::LinkBundle {
                chain: e.identity.certify_device(keys)?,
                name: e.identity.name().to_string(),
                channels: e.channels.values().map(|c| c.keys.clone()).collect(),
            })
        })
        .await
    }

    /// Open the store in `dir`, replaying writes acknowledged before a crash.
    pub async fn open(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<Store> {
        let dir = open::abs(dir.as_ref());
        let pass = pass.clone();
        let at = dir.clone();
        // Read here, so that the store thread unlocks the key as soon as
        // it runs.
        let header = open::read_header(&dir);
        let store = header.is_ok();
        Self::start(
            config,
            move |to| open::start(&at, false, store, to),
            move |c, unlocked, started| open::open(&dir, &pass, header, c, false, Some(unlocked), started),
        )
        .await
    }

    /// Open the store in `dir` after rebuilding its sled database from the
    /// feed log (the identity, channel keys and every feed entry, kept in
    /// Hearth's own fsync-disciplined files), whatever state sled is in. An
    /// open does this on its own when sled is missing, does not open or is
    /// damaged; this is for a store that opens but answers wrongly. What was
    /// done is in [`Store::open_report`].
    pub async fn repair(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<Store> {
        let dir = open::abs(dir.as_ref());
        let pass = pass.clone();
        let at = dir.clone();
        let header = open::read_header(&dir);
        let store = header.is_ok();
        Self::start(
            config,
            move |to| open::start(&at, true, store, to),
            move |c, _, started| open::open(&dir, &pass, header, c, true, None, started),
        )
        .await
    }

    /// Replace the master key of the store in `dir` and wrap the new one under
    /// `new_pass` (which may be the same passphrase): nothing the old key
    /// opened stays sealed under it (feed log records, sled rows, node files;
    /// see the `rotate` module). The store is opened with `pass` and closed
    /// cleanly first, so it must not be open elsewhere. The node's peer id
    /// changes with the key: tickets printed before no longer reach it.
    /// Interrupted at any moment, the next open finishes or drops it.
    pub async fn rotate_master_key(
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        new_pass: &Passphrase,
        config: Config,
    ) -> Result<RotateReport> {
        Self::rotate_master_key_until(dir, pass, new_pass, config, None).await
    }

    /// [`Store::rotate_master_key`], stopping at `stop` (as a crash there would).
    #[doc(hidden)]
    pub async fn rotate_master_key_until(
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        new_pass: &Passphrase,
        config: Config,
        stop: Option<StopAt>,
    ) -> Result<RotateReport> {
        let dir = open::abs(dir.as_ref());
        let store = Store::open(&dir, pass, config.clone()).await?;
        let master = store.query(|e| Ok(e.master.clone())).await?;
        store.close().await?;
        let new_pass = new_pass.clone();
        tokio::task::spawn_blocking(move || {
            let _lock = open::lock(&dir)?;
            closed_cleanly(&dir, &master)?;
            crate::rotate::rotate(&dir, &master, &new_pass, &config, stop)
        })
        .await
        .map_err(|_| Error::Closed)?
    }

    /// Compact the store (`hearth compact`, or automatically: see
    /// [`Config::compact_after`]): the bytes of every text dropped by a delete
    /// leave the feed log, sled and the journal (see the `compact` module).
    /// Reads and writes go on while it copies; they wait only for the short
    /// pause that swaps the files in. Interrupted at any moment (a crash, a
    /// power cut), the next open finishes or drops it; nothing acknowledged
    /// is lost either way. A call while one runs waits for that one.
    pub async fn compact(&self) -> Result<CompactReport> {
        self.compact_with(Arc::default()).await
    }

    /// [`Store::compact`], with its progress shared (for a progress bar).
    pub async fn compact_with(&self, progress: Arc<CompactProgress>) -> Result<CompactReport> {
        self.compact_inner(None, progress).await
    }

    /// [`Store::compact`], stopping at `stop` as a crash there would: the
    /// store writes nothing more (it is poisoned), for tests of what the next
    /// open finds.
    #[doc(hidden)]
    pub async fn compact_until(&self, stop: CompactStop) -> Result<CompactReport> {
        self.compact_inner(Some(stop), Arc::default()).await
    }

    async fn compact_inner(&self, stop: Option<CompactStop>, progress: Arc<CompactProgress>) -> Result<CompactReport> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Compact(stop, progress, tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Open the store in `dir`, compact it ([`Store::compact`]) and close it.
    pub async fn compact_dir(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<CompactReport> {
        let store = Store::open(dir, pass, config).await?;
        let report = store.compact().await;
        let closed = store.close().await;
        let report = report?;
        closed?;
        Ok(report)
    }

    /// Set how long the channel keeps its messages on every member's device
    /// (admins and owners; `None`: for ever): a message older than that, by
    /// its time, is expired (see the `retention` module).
    pub async fn set_retention(&self, channel: ChannelId, keep: Option<std::time::Duration>) -> Result<()> {
        let secs = keep.map_or(0, |d| d.as_secs().max(1));
        self.submit(Write::SetRetention { channel, secs }).await?.await?;
        Ok(())
    }

    /// The channel's retention (`None`: for ever).
    pub async fn retention(&self, channel: ChannelId) -> Result<Option<std::time::Duration>> {
        self.query(move |e| Ok(e.retention(&channel)?.map(std::time::Duration::from_secs)))
            .await
    }

    /// Drop the texts of every expired message now (the store does it on
    /// its own, a few epochs a second); returns how many messages lost
    /// texts. Their old bytes leave the files at the next compaction.
    pub async fn expire(&self) -> Result<u64> {
        self.mutate(|e| {
            let n = e.expire(usize::MAX)?;
            e.apply_prune_rows()?;
            Ok(n)
        })
        .await
    }

    /// The texts this store dropped from stored entries (deletes), kept
    /// for the relays it syncs with, which hold those entries and cannot
    /// open them (sync protocol 9; at most 4096 per channel).
    pub async fn text_drops(&self) -> Result<Vec<hearth_core::peer::TextDrop>> {
        self.query(|e| e.text_drops()).await
    }

    /// Write a backup of this store to the file `path` (`hearth backup`):
    /// a consistent copy, taken while reads and writes go on (they wait
    /// only for a pause of milliseconds), sealed under a key derived from
    /// the master key, with the store's header in the clear, so that the
    /// passphrase of this moment opens it. Texts deleted before it began
    /// are not in it (see the `backup` module for one deleted meanwhile).
    /// The file is written as `path.<id>.tmp`, made durable, then renamed: once
    /// this returns, it is whole. One copy runs at a time: a backup asked
    /// for during a compaction or another backup starts after it. See the
    /// `backup` module for the format.
    pub async fn backup(&self, path: impl AsRef<Path>) -> Result<BackupReport> {
        self.backup_with(path, Arc::default()).await
    }

    /// [`Store::backup`], with its progress shared (for a progress bar).
    pub async fn backup_with(&self, path: impl AsRef<Path>, progress: Arc<CompactProgress>) -> Result<BackupReport> {
        let (tx, rx) = oneshot::channel();
        let job = crate::actor::BackupJob {
            path: open::abs(path.as_ref()),
            progress,
            reply: tx,
        };
        self.tx.send(Cmd::Backup(job)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Restore the backup at `file` into `dir`, which must not hold a store
    /// (`hearth restore`), under the passphrase of the moment of the backup
    /// (a wrong one is [`Error::WrongPassphrase`]). The restored store
    /// continues as a new device of the same user
    /// ([`hearth_core::Identity::restored`]: its own device keys, id and
    /// peer id), so it never reuses a feed sequence number the device
    /// backed up may have used since; what that device wrote after the
    /// backup arrives by sync. The file is checked as it is read: a damaged
    /// one leaves no store behind. Open the store afterwards as any other.
    pub async fn restore(
        file: impl AsRef<Path>,
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        progress: Arc<CompactProgress>,
    ) -> Result<RestoreReport> {
        let (file, dir) = (file.as_ref().to_path_buf(), open::abs(dir.as_ref()));
        let pass = pass.clone();
        tokio::task::spawn_blocking(move || crate::backup::restore(&file, &dir, &pass, &progress))
            .await
            .map_err(|_| Error::corrupted("restore", "its task panicked"))?
    }

    /// What opening the store in `dir` would migrate (`hearth migrate
    /// --check`), writing nothing to it but the lock file an open takes: its
    /// format now, this build's, and the steps in between (sled is read from
    /// a private copy in the temporary directory, removed after). The store
    /// must not be open; `pass` is checked.
    pub async fn migration_plan(dir: impl AsRef<Path>, pass: &Passphrase) -> Result<open::MigrationPlan> {
        let dir = open::abs(dir.as_ref());
        let pass = pass.clone();
        tokio::task::spawn_blocking(move || open::migration_plan(&dir, &pass))
            .await
            .map_err(|_| Error::Closed)?
    }

    /// Whether `dir` holds a store.
    pub fn exists(dir: impl AsRef<Path>) -> bool {
        open::exists(dir.as_ref())
    }

    /// Who the store belongs to.
    pub fn whoami(&self) -> &Whoami {
        &self.shared.whoami
    }

    /// How long opening took, the Argon2id unlock apart.
    pub fn open_timings(&self) -> OpenTimings {
        self.shared.timings
    }

    /// What opening found (journal replay after a crash).
    pub fn open_report(&self) -> &OpenReport {
        &self.shared.report
    }

    pub(crate) async fn write(&self, w: Write) -> Result<Outcome> {
        self.submit(w).await?.await
    }

    /// Queue a write and return at once with a future of its acknowledgement.
    ///
    /// Writes are applied in the order they are submitted, so a caller can keep
    /// many in flight (a bulk import) and still get ids in input order; each
    /// [`Pending`] resolves once its write is durable (awaiting it is what
    /// makes it so, for it and the writes queued with it; one nobody awaits
    /// is made durable by the store thread within a few milliseconds).
    pub async fn submit(&self, w: Write) -> Result<Pending> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Write(w, tx)).await.map_err(|_| Error::Closed)?;
        Ok(Pending {
            state: PendingState::Taking(rx),
            journal: self.journal.clone(),
        })
    }

    /// The bulk path: take `posts` into `channel`, in order, and give their
    /// ids (in the same order), as [`Write::Post`]s would be taken, but
    /// without the journal and, in the epochs the import fills, without
    /// staging each post in automerge (`crate::bulk`). About ten times the
    /// rate of posts submitted one by one (README, "Performance").
    ///
    /// At most [`IMPORT_CHUNK`](crate::IMPORT_CHUNK) posts a call
    /// ([`Error::TooLarge`] otherwise): a longer import is several calls,
    /// each taken whole or not at all. Every post is checked first (its
    /// text, the message it replies to, the right to post); an input error
    /// takes none of them. A failure after the checks (an I/O error) poisons
    /// the store, as a group that fails to close does: the next open starts
    /// from what is on disk. The posts are durable (in the fdatasync'd feed
    /// log) when the call returns; a crash before that keeps none, or whole
    /// entries of them, of a call that never returned.
    pub async fn import_posts(&self, channel: ChannelId, posts: Vec<crate::ImportPost>) -> Result<Vec<MessageId>> {
        if posts.len() > crate::IMPORT_CHUNK {
            return Err(Error::TooLarge {
                what: "bulk import call (posts)".into(),
                size: posts.len(),
                limit: crate::IMPORT_CHUNK,
            });
        }
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        self.mutate(move |e| e.import_posts(channel, posts)).await
    }

    pub(crate) async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.query_as(true, f).await
    }

    /// A query; `summaries`: it reads the channels' epoch summaries, which
    /// the open may have left for later ([`Engine::ensure_summaries`]).
    /// Only a page, which can answer from a front page without them, and
    /// calls it itself when it cannot, says no.
    async fn query_as<T: Send + 'static>(
        &self,
        summaries: bool,
        f: impl FnOnce(&mut Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let rx = self.send_query(summaries, f).await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Send a query ([`Store::query_as`]); its reply comes on the receiver.
    async fn send_query<T: Send + 'static>(
        &self,
        summaries: bool,
        f: impl FnOnce(&mut Engine) -> Result<T> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (tx, rx) = oneshot::channel();
        let q: actor::Query = Box::new(move |e: &mut Engine| {
            let ready = if summaries { e.ensure_summaries() } else { Ok(()) };
            let _ = tx.send(ready.and_then(|()| f(e)));
        });
        self.tx.send(Cmd::Query(q)).await.map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    pub(crate) async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let m: actor::Mutation = Box::new(move |e: &mut Engine, ready: Result<()>| {
            let r = ready.and_then(|()| e.ensure_summaries()).and_then(|()| f(e));
            // Input errors leave the engine as it was; anything else happened
            // half-way through a change and poisons the store.
            let failed = matches!(
                &r,
                Err(Error::Io(_) | Error::Corrupted { .. } | Error::UnsupportedFormat { .. })
            );
            let _ = tx.send(r);
            if failed { Err(()) } else { Ok(()) }
        });
        self.tx.send(Cmd::Mutate(m)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Let this device's new entries leave as soon as they are written to
    /// the feed log, a sync before they are durable (a sync node calls it
    /// as it starts): each group's [`Outgoing`](crate::Outgoing) is then
    /// [`sendable`](crate::Outgoing::sendable) at once. From now until a
    /// clean close, every write is acknowledged by the log's sync of its
    /// group. Should the machine go down (or a sync of the log fail) before
    /// a clean close, the next open cannot know that nothing sent was lost,
    /// and continues as a new device of the same user
    /// ([`OpenReport::reborn_from`](crate::OpenReport::reborn_from)); a
    /// process killed loses nothing written, and stays the same device
    /// where a tmpfs holds the run's mark. ARCHITECTURE.md, "Entries that
    /// leave before they are durable".
    ///
    /// `false` (and nothing changes) for a device that cannot be reborn:
    /// linked through a chain of certificates as long as chains go.
    pub async fn send_early(&self) -> Result<bool> {
        self.mutate(|e| e.start_early()).await
    }

    /// Subscribe to [`StoreEvent`]s: new entries, messages and read markers
    /// from other devices. A receiver that falls behind by more than a few
    /// thousand events gets `Lagged` and should re-read what it shows.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.shared.events.subscribe()
    }

    /// Subscribe to [`crate::ChatEvent`]s: what changed, in chat terms,
    /// local writes and peers' alike (new messages and replies, edits,
    /// deletes, reactions, read markers, channels added and renamed,
    /// members joined and left, delivery receipts, progress of what peers
    /// send). A local write's events go out when its group commits; a
    /// peer's, when the batch that brought them is applied. A receiver that
    /// falls behind by more than 16,384 events gets `Lagged` and should
    /// re-read what it shows. Nothing is built while nobody listens.
    pub fn chat_events(&self) -> tokio::sync::broadcast::Receiver<crate::ChatEvent> {
        self.shared.chat.subscribe()
    }

    /// The secret of this device's network identity (its libp2p ed25519 key),
    /// derived from the store's master key (or, on a device restored from a
    /// backup, its own: [`hearth_core::Identity::node_secret`]): the same
    /// peer id on every start.
    pub async fn node_secret(&self) -> Result<hearth_core::SecretKey> {
        self.query(|e| {
            Ok(e.identity
                .node_secret()
                .unwrap_or_else(|| hearth_core::derive(&e.master, hearth_core::Purpose::NodeKey)))
        })
        .await
    }

    /// Replace a small file beside the store (a node's addresses, its known
    /// peers), sealed under the store's keys: atomically and durably, owner
    /// only. `name` is a plain file name. Format: magic `HEARTHSF` | sealed
    /// bytes (AAD `"hearth.file.v1" | name`).
    pub async fn write_private_file(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        check_file_name(name)?;
        let name = name.to_string();
        self.query(move |e| {
            let sealed = hearth_core::seal(&e.records, &file_aad(&name), &bytes)?;
            let mut out = PRIVATE_FILE_MAGIC.to_vec();
            out.extend_from_slice(&sealed);
            crate::durable::write_atomic(&e.dir.join(&name), &out)?;
            Ok(())
        })
        .await
    }

    /// Read what [`Store::write_private_file`] wrote (`None` if there is no
    /// such file). A file without the magic is from before files were sealed
    /// (plain text): it is returned as it is, and sealed at the next write.
    pub async fn read_private_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        check_file_name(name)?;
        let name = name.to_string();
        self.query(move |e| {
            let bytes = match std::fs::read(e.dir.join(&name)) {
                Ok(b) => b,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err.into()),
            };
            match bytes.strip_prefix(PRIVATE_FILE_MAGIC) {
                Some(sealed) => Ok(Some(hearth_core::open(
                    &e.records,
                    &file_aad(&name),
                    sealed,
                    "private file",
                )?)),
                None => Ok(Some(bytes)),
            }
        })
        .await
    }

    /// Every channel's wire id and version vector.
    pub async fn vectors(&self) -> Result<Vec<(WireId, Vector)>> {
        self.query(|e| e.vectors()).await
    }

    /// This device's certificate: its own signing and key-agreement keys,
    /// bound to its user by the user key, or by the device that linked it
    /// (a device of a store written before devices had keys keeps its id:
    /// `legacy`).
    pub async fn device_cert(&self) -> Result<hearth_core::device::DeviceCert> {
        self.query(|e| {
            e.identity
                .device_cert()
                .cloned()
                .ok_or_else(|| Error::corrupted("identity", "no device keys"))
        })
        .await
    }

    /// This device's certificate chain: its own certificate last, after
    /// those of the devices it was linked through, if any.
    pub async fn device_chain(&self) -> Result<Vec<hearth_core::device::DeviceCert>> {
        self.query(|e| {
            e.identity
                .device_chain()
                .map(<[_]>::to_vec)
                .ok_or_else(|| Error::corrupted("identity", "no device keys"))
        })
        .await
    }

    /// Every channel's wire id and access key, with which this device proves
    /// to a peer that it holds the channel (see hearth-sync's protocol).
    pub async fn access_keys(&self) -> Result<Vec<(WireId, hearth_core::SecretKey)>> {
        self.query(|e| Ok(e.access_keys())).await
    }

    /// One channel's version vector.
    pub async fn vector(&self, channel: ChannelId) -> Result<Vector> {
        self.query(move |e| e.vector_of(&channel)).await
    }

    /// The entries of a channel (by wire id) that `have` lacks, feed by feed in
    /// order, at most `max_entries` and about `max_bytes` (at least one entry).
    /// Only durable entries leave the store: with entries of this device
    /// the feed log has not made durable yet, this returns once it has
    /// (the sync runs on the log's own thread, and the store goes on
    /// meanwhile).
    pub async fn entries_after(
        &self,
        wire: WireId,
        have: Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<EntryBatch> {
        let (batch, durable) = self
            .mutate(move |e| e.entries_after(&wire, &have, max_bytes, max_entries))
            .await?;
        if let Some(durable) = durable {
            durable.await?;
        }
        Ok(batch)
    }

    /// Verify and store a peer's entries for a channel (by wire id). What was
    /// accepted is visible at once and durable at the next checkpoint (after
    /// `checkpoint_interval` at the store's first quiet moment, within twice
    /// that); refused entries are listed, never stored, and
    /// never stop the rest of the batch.
    ///
    /// New messages get this device's delivery receipt: a small local write,
    /// queued (not awaited), that travels back to their writers by sync.
    pub async fn ingest(&self, wire: WireId, entries: Vec<Vec<u8>>) -> Result<IngestReport> {
        let entries = self.open_ahead(wire, entries).await?;
        let report = self.mutate(move |e| e.ingest_opened(&wire, entries)).await?;
        if !report.newest.is_empty() || report.keys_owed {
            self.schedule_receipts();
        }
        Ok(report)
    }

    /// A large batch (a catch-up's) is opened on worker threads before it
    /// reaches the store's (`crate::opener`): the signature, the AEAD, the
    /// change's decoding and checks, and the text pack's root are the same
    /// work wherever they run, and the store's thread would do them one
    /// entry after the other while the other cores wait. A batch handed
    /// over ahead ([`Store::prepare`]) is taken as it was opened. A small
    /// batch (a live message) goes straight to the store: asking for the
    /// keys would cost it a round trip. ARCHITECTURE.md, "Sync".
    async fn open_ahead(&self, wire: WireId, entries: Vec<Vec<u8>>) -> Result<Vec<crate::ingest::ToIngest>> {
        if !opens_ahead(&entries) {
            return Ok(entries.into_iter().map(|b| (b, None)).collect());
        }
        if let Some(opened) = self.shared.opener.take(&wire, &entries).await {
            return Ok(opened);
        }
        match self.start_opening(wire, entries).await {
            Ok(batch) => Ok(batch.wait().await),
            Err(entries) => Ok(entries.into_iter().map(|b| (b, None)).collect()),
        }
    }

    /// Queue a batch on the opening threads; its entries back when the
    /// channel is not this store's (the store says so when it ingests).
    async fn start_opening(
        &self,
        wire: WireId,
        entries: Vec<Vec<u8>>,
    ) -> std::result::Result<Arc<crate::opener::Batch>, Vec<Vec<u8>>> {
        let Ok((keys, held)) = self
            .query(move |e| {
                let keys = e.keys_by_wire(&wire)?;
                let held = e
                    .channel(&e.channel_by_wire(&wire)?)?
                    .chains
                    .iter()
                    .map(|(d, (k, _))| (*d, *k))
                    .collect();
                Ok((keys, held))
            })
            .await
        else {
            return Err(entries);
        };
        Ok(self.shared.opener.start(wire, keys, held, entries))
    }

    /// Start opening a batch of a channel's entries that [`Store::ingest`]
    /// will be handed next (a catch-up's next batch, arrived while the one
    /// before is being taken): it is opened on the worker threads once
    /// the batches queued before it are, while the store's thread takes
    /// those, and `ingest` of the same entries takes what was opened. A
    /// hint: nothing is stored, and `ingest` of other entries opens them
    /// as usual.
    pub async fn prepare(&self, wire: WireId, entries: Vec<Vec<u8>>) {
        if !opens_ahead(&entries) {
            return;
        }
        if let Ok(batch) = self.start_opening(wire, entries).await {
            self.shared.opener.keep(batch);
        }
    }

    /// Write the delivery receipts owed in [`Config::receipt_delay`], as one
    /// entry per channel: a live chat then costs one receipt entry per channel
    /// and period, not one per received batch. The engine records what is owed
    /// with the messages it is for, so [`Store::close`] writes what is still
    /// gathering, and after a crash the next open does.
    fn schedule_receipts(&self) {
        if self
            .shared
            .receipts_scheduled
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(store.shared.receipt_delay).await;
            store
                .shared
                .receipts_scheduled
                .store(false, std::sync::atomic::Ordering::SeqCst);
            // Queued, not awaited: a failure shows on the next write.
            let _ = store.submit(Write::OwedReceipts).await;
        });
    }

    /// Write the delivery receipts still gathering now, and wait until they
    /// are durable (a one-shot sync does this before its last round, so that
    /// the peer gets them). Returns how many channels had receipts waiting.
    pub async fn flush_receipts(&self) -> Result<usize> {
        match self.submit(Write::OwedReceipts).await?.await? {
            Outcome::Receipts(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// Who has stored a message (devices) and who has read it (users).
    pub async fn receipts(&self, msg: MessageId) -> Result<Receipts> {
        self.query(move |e| e.receipts(&msg)).await
    }

    /// A channel's keys, to invite someone into it.
    pub async fn channel_keys(&self, channel: ChannelId) -> Result<ChannelKeys> {
        self.query(move |e| e.channel_keys(&channel)).await
    }

    /// Join a channel from its keys (an invite). Its history arrives by sync.
    pub async fn join_channel(&self, keys: ChannelKeys) -> Result<ChannelId> {
        match self.write(Write::Join { keys, name: None }).await? {
            Outcome::Channel(c) => Ok(c),
            _ => Err(Error::corrupted("store task", "unexpected reply")),
        }
    }

    /// Join a channel from an invite that named it: it answers to `name` at
    /// once, offline, until its own name arrives by sync (then that one).
    pub async fn join_channel_named(&self, keys: ChannelKeys, name: &str) -> Result<ChannelId> {
        match self
            .write(Write::Join {
                keys,
                name: Some(name.to_string()),
            })
            .await?
        {
            Outcome::Channel(c) => Ok(c),
            _ => Err(Error::corrupted("store task", "unexpected reply")),
        }
    }

    /// Create a channel; returns its id.
    pub async fn create_channel(&self, name: &str) -> Result<ChannelId> {
        match self.write(Write::CreateChannel { name: name.to_string() }).await? {
            Outcome::Channel(c) => Ok(c),
            _ => Err(Error::corrupted("store task", "unexpected reply")),
        }
    }

    /// Rename a channel.
    pub async fn rename_channel(&self, channel: ChannelId, name: &str) -> Result<()> {
        self.write(Write::Rename {
            channel,
            name: name.to_string(),
        })
        .await
        .map(drop)
    }

    /// Post a top-level message.
    pub async fn post(&self, channel: ChannelId, text: &str) -> Result<MessageId> {
        expect_message(
            self.write(Write::Post {
                channel,
                text: text.to_string(),
                reply_to: None,
            })
            .await?,
        )
    }

    /// Reply in the thread of `to` (a root or any reply of it).
    pub async fn reply(&self, to: MessageId, text: &str) -> Result<MessageId> {
        expect_message(
            self.write(Write::Reply {
                to,
                text: text.to_string(),
            })
            .await?,
        )
    }

    /// Add the local user's reaction to a message.
    pub async fn react(&self, msg: MessageId, emoji: &str) -> Result<()> {
        self.write(Write::React {
            msg,
            emoji: emoji.to_string(),
            remove: false,
        })
        .await
        .map(drop)
    }

    /// Remove the local user's reaction from a message.
    pub async fn unreact(&self, msg: MessageId, emoji: &str) -> Result<()> {
        self.write(Write::React {
            msg,
            emoji: emoji.to_string(),
            remove: true,
        })
        .await
        .map(drop)
    }

    /// Edit one of the local user's messages.
    pub async fn edit(&self, msg: MessageId, text: &str) -> Result<()> {
        self.write(Write::Edit {
            msg,
            text: text.to_string(),
        })
        .await
        .map(drop)
    }

    /// Delete one of the local user's messages (its text leaves every view).
    pub async fn delete(&self, msg: MessageId) -> Result<()> {
        self.write(Write::Delete { msg }).await.map(drop)
    }

    /// Mark a channel read up to a message, or up to its newest message.
    pub async fn mark_read(&self, channel: ChannelId, up_to: Option<MessageId>) -> Result<()> {
        self.write(Write::MarkRead { channel, up_to }).await.map(drop)
    }

    /// Top-level messages of a channel older than `before`, newest first.
    ///
    /// The reply is waited for awake for at most 250 µs, on another core
    /// than the store thread's: a page is what a screen waits for, and a
    /// caller parked for the 20 to 100 µs a page takes is often woken 200
    /// µs late on this kind of machine (its virtual CPU halted meanwhile),
    /// later than the page itself.
    pub async fn page(&self, channel: ChannelId, before: Option<MessageId>, limit: usize) -> Result<Vec<Message>> {
        let rx = self.send_query(false, move |e| e.page(&channel, before, limit)).await?;
        reply_awake(rx, PAGE_SPIN, &self.journal.store_cpu).await
    }

    /// Where in the store's files a key reachable from the passphrase opens
    /// something that holds `needle` (journal records, stale ones too; feed
    /// entries in the log and in sled; every sealed sled row): an audit of
    /// what a delete and a compaction left. After a delete and a compaction,
    /// a deleted text is found nowhere. It reads every file: slow on a big
    /// store.
    pub async fn find_text(&self, needle: &str) -> Result<Vec<String>> {
        let needle = needle.to_string();
        self.query(move |e| e.find_text(&needle)).await
    }

    /// Every message of a channel, top-level and replies, deleted ones too
    /// (without their text), oldest first: what an export holds (one pass
    /// over every epoch; for a screen, use [`Store::page`]).
    pub async fn all_messages(&self, channel: ChannelId) -> Result<Vec<Message>> {
        self.query(move |e| e.all_messages(&channel)).await
    }

    /// A thread (root and replies, oldest first), given its root or a reply.
    pub async fn thread(&self, msg: MessageId) -> Result<Thread> {
        self.query(move |e| e.thread(&msg)).await
    }

    /// One message with its reactions, edit and deletion state and reply count.
    pub async fn message(&self, msg: MessageId) -> Result<Located> {
        self.query(move |e| e.get_message(&msg)).await
    }

    /// Unread messages in a channel for the local user.
    pub async fn unread(&self, channel: ChannelId) -> Result<u64> {
        self.query(move |e| e.unread(&channel)).await
    }

    /// Every channel with its name, size and unread count.
    pub async fn channels(&self) -> Result<Vec<ChannelInfo>> {
        self.query(|e| e.list_channels()).await
    }

    /// One channel's entry.
    pub async fn channel(&self, channel: ChannelId) -> Result<ChannelInfo> {
        self.query(move |e| e.channel_info(&channel)).await
    }

    /// Find a channel by id, unique id prefix or name.
    pub async fn resolve_channel(&self, input: &str) -> Result<ChannelId> {
        let input = input.to_string();
        self.query(move |e| e.resolve_channel(&input)).await
    }

    /// Display names of a channel's members.
    pub async fn members(&self, channel: ChannelId) -> Result<BTreeMap<UserId, String>> {
        self.query(move |e| e.members(&channel)).await
    }

    /// A channel's roster: owners, admins and members (every writer not
    /// removed is a member), then removed users.
    pub async fn roster(&self, channel: ChannelId) -> Result<RosterInfo> {
        self.query(move |e| e.roster_info(&channel)).await
    }

    /// A user of a channel's roster by user id, unique prefix or display name.
    pub async fn resolve_member(&self, channel: ChannelId, input: &str) -> Result<UserId> {
        let input = input.to_string();
        self.query(move |e| e.resolve_member(&channel, &input)).await
    }

    /// Remove `user` from a channel (admins remove members and admins, owners
    /// anyone but the last owner). Its devices' entries after the ones held
    /// here are refused from then on. The local user: see [`Store::leave`].
    pub async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<()> {
        self.member(channel, MemberAction::Remove { user, upto: Vec::new() })
            .await
    }

    /// Leave a channel (the last owner cannot): nothing more can be written
    /// in it here.
    pub async fn leave(&self, channel: ChannelId) -> Result<()> {
        let me = self.whoami().user;
        self.remove_member(channel, me).await
    }

    /// Give `user` a role in a channel (admins make members and admins,
    /// owners anything; the last owner stays an owner).
    pub async fn set_role(&self, channel: ChannelId, user: UserId, role: Role) -> Result<()> {
        self.member(channel, MemberAction::SetRole { user, role }).await
    }

    /// Add `user` (back) to a channel with `role`: undoes a removal.
    pub async fn add_member(&self, channel: ChannelId, user: UserId, role: Role) -> Result<()> {
        self.member(channel, MemberAction::Add { user, role }).await
    }

    /// This user's devices: this one, and every one that wrote in a channel
    /// held here, with the channels that revoke it.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.query(|e| e.devices()).await
    }

    /// Revoke another device of this user in every channel this user is a
    /// member of: its entries past the last one held here are not shown, it
    /// gets no key of the new generation each channel starts, and it cannot
    /// write there once it learns of it. Every other id known here under the
    /// same key (the device moved to its keyed id, store format 7) is
    /// revoked with it, and so is every device linked through it (by it, or
    /// by a device it linked): their chains run through it. A device
    /// cannot revoke one it was itself linked through. Returns the
    /// channels written to.
    pub async fn revoke_device(&self, device: DeviceId) -> Result<usize> {
        let me = self.whoami();
        if device == me.device || me.former.contains(&device) {
            return Err(Error::NotAllowed {
                action: "revoke this device".into(),
                why: "a device cannot revoke itself; revoke it from another device of yours".into(),
            });
        }
        let ids = self
            .query(move |e| {
                let ids = e.ids_of_device(&device)?;
                let through = e
                    .identity
                    .device_chain()
                    .map(hearth_core::device::issuers)
                    .unwrap_or_default();
                if through.iter().any(|(d, _)| ids.contains(d)) || ids.iter().any(|d| e.identity.is_this_device(d)) {
                    return Err(Error::NotAllowed {
                        action: "revoke this device".into(),
                        why: "this device was linked through it, and would be revoked with it; revoke it \
                              from a device that was not"
                            .into(),
                    });
                }
                Ok(ids)
            })
            .await?;
        let mut n = 0;
        for info in self.channels().await? {
            let mut wrote = false;
            for device in &ids {
                let action = MemberAction::RevokeDevice {
                    user: me.user,
                    device: *device,
                    upto: 0,
                };
                // Channels this user was removed from, or where the device
                // is revoked already, are left as they are.
                match self.member(info.id, action).await {
                    Ok(()) => wrote = true,
                    Err(Error::NotAllowed { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            n += usize::from(wrote);
        }
        Ok(n)
    }

    /// The revocation notices relays should hold, by channel (encoded
    /// `hearth_core::member::RevocationNotice`s): the sync layer hands them
    /// to relays, which then refuse the revoked devices' entries past their
    /// cut.
    pub async fn revocation_notices(&self) -> Result<Vec<(WireId, Vec<u8>)>> {
        self.query(|e| e.revocation_notices()).await
    }

    async fn member(&self, channel: ChannelId, action: MemberAction) -> Result<()> {
        self.write(Write::Member { channel, action }).await.map(drop)
    }

    /// Counts and sizes.
    pub async fn stats(&self) -> Result<Stats> {
        self.query(|e| Ok(e.stats())).await
    }

    /// One channel's counts and sizes: messages, entries and their bytes,
    /// feeds, epochs and how many of them are in memory, and what this
    /// device holds of it. Reads every entry's row: about a second a
    /// million entries.
    pub async fn channel_stats(&self, channel: ChannelId) -> Result<ChannelStats> {
        self.query(move |e| e.channel_stats(channel)).await
    }

    /// Decrypt and check every record; see [`VerifyReport`].
    pub async fn verify(&self) -> Result<VerifyReport> {
        self.query(|e| e.verify()).await
    }

    /// Make every acknowledged write durable in sled and empty the journal now
    /// (it happens on its own every `checkpoint_interval`).
    pub async fn checkpoint(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Checkpoint(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Change the passphrase: only the wrapped key in the header is rewritten,
    /// atomically.
    pub async fn change_passphrase(&self, new: &Passphrase) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Passwd(new.clone(), tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Close the store: snapshot, checkpoint, release the lock. Other clones get
    /// [`Error::Closed`] afterwards.
    pub async fn close(self) -> Result<()> {
        // Receipts still gathering go in first (the close waits for them).
        let _ = self.submit(Write::OwedReceipts).await;
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Close(tx)).await.map_err(|_| Error::Closed)?;
        let closed = rx.await.map_err(|_| Error::Closed);
        // Its chat events end (the store thread sends none after the close).
        self.shared.chat.close();
        closed?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reply_is_had_whether_it_comes_within_the_spin_or_after_it() {
        let elsewhere = AtomicUsize::new(usize::MAX);
        // Already there.
        let (tx, rx) = oneshot::channel();
        tx.send(Ok(1)).unwrap();
        assert_eq!(reply_awake(rx, PAGE_SPIN, &elsewhere).await.unwrap(), 1);
        // Long after the spin: waited for parked.
        let (tx, rx) = oneshot::channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(Ok(2)).unwrap();
        });
        assert_eq!(reply_awake(rx, PAGE_SPIN, &elsewhere).await.unwrap(), 2);
        t.join().unwrap();
        // With the store thread on this very core, no spin at all.
        let here = AtomicUsize::new(crate::placement::current_cpu().unwrap_or(usize::MAX));
        let (tx, rx) = oneshot::channel();
        let t = std::thread::spawn(move || tx.send(Ok(3)).unwrap());
        assert_eq!(reply_awake(rx, PAGE_SPIN, &here).await.unwrap(), 3);
        t.join().unwrap();
    }

    #[tokio::test]
    async fn a_reply_never_sent_is_closed() {
        let (tx, rx) = oneshot::channel::<Result<u8>>();
        drop(tx);
        let r = reply_awake(rx, PAGE_SPIN, &AtomicUsize::new(usize::MAX)).await;
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    }
}
