//! Creating, opening and re-keying a store directory.
//!
//! ```text
//! <dir>/header    clear: Argon2id parameters, salt, wrapped master key (written last at create)
//! <dir>/LOCK      flock'ed while open
//! <dir>/journal   write-ahead journal of acknowledged writes
//! <dir>/log/      the feed log: identity, channel keys, feed entries (the source of truth)
//! <dir>/db/       sled: everything else, derived from the log (rebuilt when damaged)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use hearth_core::{ChannelId, HEADER_MAX_LEN, Identity, Passphrase, SecretKey, StoreHeader};
use serde::Serialize;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::journal::{Journal, JournalFile};
use crate::layout::*;
use crate::log::{Log, LogPos};
use crate::recover;
use crate::summaries::CopySink;

/// What opening a store found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpenReport {
    /// Journal records replayed into sled (writes acknowledged before a crash
    /// that had not reached a checkpoint).
    pub replayed_records: u64,
    /// Operations in those records.
    pub replayed_ops: u64,
    /// Why the journal's tail was cut, if it was (a write torn by a crash; such a
    /// write was never acknowledged).
    pub journal_tail: Option<String>,
    /// Journal entries or feed-log entries that could not be applied
    /// (reported, skipped).
    pub skipped: Vec<String>,
    /// The store format the store was migrated from, if it was of an earlier one.
    pub migrated_from: Option<u8>,
    /// Why sled was rebuilt from the feed log, if it was (it did not open, was
    /// damaged or missing, had got ahead of the log in a power cut, or a repair
    /// asked for it).
    pub rebuilt: Option<String>,
    /// Feed-log batches applied to sled at this open (sled lagged the log after
    /// a crash, or was rebuilt).
    pub log_batches: u64,
    /// Feed entries in those batches.
    pub log_entries: u64,
    /// Why the feed log's readable part ended before its files did (a batch
    /// torn by a crash, which was never acknowledged; or damage), if it did.
    pub log_tail: Option<String>,
    /// Paths in the store directory (`.` for the directory itself) that other
    /// accounts could read or write: tightened to 0700 (directories) and 0600
    /// (files) by this open. Empty on a store only Hearth has touched.
    pub loose_permissions: Vec<String>,
    /// The id this device wrote under until this open, if it moved to its
    /// keyed id now (a store of format 6 or older: see
    /// [`hearth_core::Identity::with_keyed_id`]).
    pub moved_from: Option<hearth_core::DeviceId>,
    /// Channels whose epoch summaries this open read from their one-row
    /// copy, written at the last clean close, instead of one row per epoch
    /// (store format 15), before it returned. After a clean close the open
    /// leaves them for later (they are read on a second thread and taken
    /// when something first needs them), so this is 0 then:
    /// [`crate::Stats::summary_copies`] counts them all.
    pub summary_copies: u64,
    /// The id this device wrote under until this open, if it was reborn now
    /// as a new device of the same user: its last run sent entries before
    /// they were durable ([`crate::Store::send_early`]) and ended uncleanly,
    /// and some of them may have been lost ([`hearth_core::Identity::reborn`]).
    pub reborn_from: Option<hearth_core::DeviceId>,
    /// Journal records past the durable feed log that such an open dropped
    /// (none was acknowledged: a run that sends early acknowledges a write
    /// once its group is durable in the log).
    pub dropped_unacknowledged: u64,
}

pub(crate) fn lock(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::Io(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    Ok(crate::durable::sync_dir(dir)?)
}

/// Replace the header atomically: write a temporary file, fsync, rename, fsync the directory.
pub(crate) fn write_header(dir: &Path, header: &StoreHeader) -> Result<()> {
    Ok(crate::durable::write_atomic(&dir.join(HEADER_FILE), &header.encode())?)
}

pub(crate) fn open_sled(dir: &Path) -> Result<sled::Db> {
    open_sled_at(&dir.join(DB_DIR))
}

/// Read the rows an open reads after the unlock (sled's standing, the
/// channels with their heads, chains, summary copies, notices and owed
/// receipts, and the front pages), so that sled has their pages in memory
/// when the open needs them: done on the thread that opens sled during the
/// Argon2id unlock, it takes about a fifth off the open's part after the
/// unlock at a million messages (1.6 to 1.7 ms to 1.3 to 1.5 ms, `hearth
/// bench --probe`). Only reads; what fails to read here fails again, and is
/// reported, when the open reads it.
fn warm(tree: &sled::Tree) {
    for table in [
        T_META,
        T_CHANNELS,
        T_HEADS,
        T_CHAINS,
        T_ALL_SUMMARIES,
        T_FRONTS,
        T_TOLD,
        T_OWED,
    ] {
        for row in tree.scan_prefix([table]) {
            std::hint::black_box(row.ok());
        }
    }
}

/// The store's sled and its one tree.
fn open_sled_tree(dir: &Path) -> Result<(sled::Db, sled::Tree)> {
    let db = open_sled(dir)?;
    let tree = db.open_tree(TREE)?;
    Ok((db, tree))
}

pub(crate) fn open_sled_at(path: &Path) -> Result<sled::Db> {
    let cfg = sled::Config::new()
        .path(path)
        .cache_capacity(32 << 20)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    // sled 0.34 can panic on damaged files (issues 1527, 1533): turn that into a
    // typed error instead of taking the embedding process down.
    match catch_unwind(AssertUnwindSafe(|| open_sled_config(&cfg))) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) => Err(Error::Io(e)),
        Ok(Err(e)) => Err(Error::corrupted("sled database", e)),
        Err(_) => Err(Error::corrupted("sled database", "sled panicked while opening it")),
    }
}

/// Open a sled database whose directory the caller holds locked (its own
/// `LOCK` file, taken first).
///
/// sled takes a lock of its own on `db/db`, and releases it only when the last of
/// its background I/O threads lets go of the file, which can be a moment after
/// the previous `Db` in this process was dropped. Since the caller's lock rules
/// out any other opener, a busy sled lock can only be that moment: wait for it
/// (up to 5 s) instead of failing a reopen that follows a close.
pub fn open_sled_config(cfg: &sled::Config) -> sled::Result<sled::Db> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match cfg.open() {
            Err(sled::Error::Io(e)) if is_sled_lock_busy(&e) && start.elapsed() < PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// sled 0.34 reports a busy lock only as an `Other` error with this text.
fn is_sled_lock_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().starts_with("could not acquire lock")
}

/// Create a new store.
pub(crate) fn create(dir: &Path, pass: &Passphrase, user_name: &str, config: Config) -> Result<(Engine, Journal)> {
    hearth_core::Op::SetName {
        name: user_name.to_string(),
    }
    .validate()?;
    create_as(dir, pass, Identity::generate(user_name)?, config)
}

/// Create a new store for an identity (a new user, or a new device of a user).
pub(crate) fn create_as(
    dir: &Path,
    pass: &Passphrase,
    identity: Identity,
    config: Config,
) -> Result<(Engine, Journal)> {
    let existed = dir.exists();
    crate::durable::create_private_dir(dir)?;
    if !existed && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The new directory's entry must survive a power loss too.
        sync_dir(parent)?;
    }
    if dir.join(HEADER_FILE).exists() {
        return Err(Error::AlreadyExists {
            path: dir.to_path_buf(),
        });
    }
    let lock = lock(dir)?;
    remove_leftovers(dir)?;
    let master = SecretKey::generate()?;
    let header = StoreHeader::wrap(&master, pass, config.kdf)?;
    let log = Log::create(&dir.join(crate::log::LOG_DIR))?;
    let db = open_sled(dir)?;
    let mut engine = Engine::new(dir.to_path_buf(), config, db, master, identity, lock, log, None)?;
    let identity = engine.identity.encode();
    let sealed = seal_record(&engine.records, META_IDENTITY, &identity)?;
    let mut batch = sled::Batch::default();
    batch.insert(META_IDENTITY, sealed);
    batch.insert(META_FORMAT, &[STORE_FORMAT][..]);
    let sealed = engine.seal_log(crate::log::kind::IDENTITY, &identity)?;
    engine.log_record(crate::log::kind::IDENTITY, &sealed);
    engine.write_log_batch(&mut batch)?;
    engine.tree.apply_batch(batch)?;
    engine.checkpoint()?;
    let (journal, _) = Journal::open(&dir.join(JOURNAL_FILE), &engine.records)?;
    // sled made its files with the process umask.
    crate::durable::make_private(dir)?;
    // The header is written last: its presence is what makes the directory a store.
    write_header(dir, &header)?;
    Ok((engine, journal))
}

/// In a directory without a header (held locked), whatever a store keeps
/// is what an interrupted `create` or `restore` left: it goes, so that the
/// next one starts afresh.
pub(crate) fn remove_leftovers(dir: &Path) -> Result<()> {
    use crate::compact::{COMPACT_TMP_DIR, COMPACTED_DIR, LEGACY_COMPACT_DIR};
    use crate::rotate::{LOG_OLD_DIR, ROTATE_DIR, ROTATE_TMP_DIR};
    for d in [
        DB_DIR,
        crate::log::LOG_DIR,
        LOG_TMP_DIR,
        DB_COPY_DIR,
        COMPACT_TMP_DIR,
        COMPACTED_DIR,
        LEGACY_COMPACT_DIR,
        ROTATE_TMP_DIR,
        ROTATE_DIR,
        LOG_OLD_DIR,
    ] {
        if dir.join(d).exists() {
            fs::remove_dir_all(dir.join(d))?;
        }
    }
    match fs::remove_file(dir.join(JOURNAL_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

pub(crate) fn read_header(dir: &Path) -> Result<StoreHeader> {
    let path = dir.join(HEADER_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotAStore {
                path: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    f.by_ref().take(HEADER_MAX_LEN as u64 + 1).read_to_end(&mut bytes)?;
    Ok(StoreHeader::decode(&bytes)?)
}

/// The identity sealed in a sled tree.
fn read_identity(tree: &sled::Tree, records: &SecretKey) -> Result<Identity> {
    let sealed = tree
        .get(META_IDENTITY)?
        .ok_or_else(|| Error::corrupted("identity", "missing"))?;
    let plain = open_record(records, META_IDENTITY, &sealed)?;
    // Sealed by this store once its chain was verified: not verified again.
    Ok(Identity::decode_sealed(&plain)?)
}

/// Where a sled tree stands against the feed log: sled's position, and how
/// far the log reaches. `Err` says why sled must be rebuilt instead.
struct Standing {
    identity: Identity,
    /// Log position sled has applied (for a store just migrated from format
    /// 1: the end of its new log, which is sled's content exactly).
    applied: LogPos,
    end: LogPos,
    /// The log is durable up to `end`: the last checkpoint recorded so.
    durable: bool,
    stopped: Option<String>,
    format: u8,
}

fn standing(
    tree: &sled::Tree,
    records: &SecretKey,
    position: std::result::Result<Position, String>,
) -> std::result::Result<Standing, String> {
    let identity = read_identity(tree, records).map_err(|e| format!("sled's identity: {e}"))?;
    let p = position?;
    Ok(Standing {
        identity,
        applied: p.applied,
        end: p.end,
        durable: p.durable,
        stopped: p.stopped,
        format: p.format,
    })
}

/// [`Standing`] but the identity: what needs no key (sled's unsealed
/// format and log positions, and a scan of the log from its synced
/// position), so the thread that opens sled reads it during the unlock.
struct Position {
    applied: LogPos,
    end: LogPos,
    durable: bool,
    stopped: Option<String>,
    format: u8,
}

fn position(tree: &sled::Tree, log_dir: &Path) -> std::result::Result<Position, String> {
    let meta = |k: &[u8]| tree.get(k).map_err(|e| format!("sled: {e}"));
    let format = match meta(META_FORMAT)? {
        None => 1,
        Some(v) if v.len() == 1 => v[0],
        Some(_) => return Err("sled's format row is damaged".into()),
    };
    let pos = |k: &[u8]| -> std::result::Result<Option<LogPos>, String> {
        meta(k)?
            .map(|v| LogPos::decode(&v))
            .transpose()
            .map_err(|e| format!("sled's log position: {e}"))
    };
    let (synced, applied) = if format == 1 {
        // Its log was written from it by a migration: read all of it once.
        (LogPos::START, None)
    } else {
        let applied = pos(META_LOG)?.ok_or("sled has no log position")?;
        (pos(META_LOG_SYNCED)?.unwrap_or(LogPos::START), Some(applied))
    };
    let target = applied.unwrap_or(synced);
    let reach = recover::reach(log_dir, synced, target).map_err(|e| format!("feed log: {e}"))?;
    if !reach.reaches {
        return Err(format!(
            "sled has applied the feed log up to {target}, which the log does not reach (it ends at {}): \
             sled got ahead of the log's durable part, as after a power cut",
            reach.end
        ));
    }
    Ok(Position {
        applied: applied.unwrap_or(reach.end),
        end: reach.end,
        durable: format != 1 && synced == reach.end,
        stopped: reach.stopped,
        format,
    })
}

/// What the thread that opens sled reads once the key is unlocked: the
/// summary copies and the channels' states.
type Ahead = (crate::summaries::Ahead, crate::engine::ChannelsAhead);

/// What the thread that opens sled during the Argon2id unlock gives the
/// open: everything of the open that needs no key.
struct Opened {
    /// Paths whose permissions were tightened to owner-only.
    loose: Vec<PathBuf>,
    /// sled, its rows read ([`warm`]).
    sled: Result<(sled::Db, sled::Tree)>,
    /// The key-free part of sled's standing ([`position`]).
    position: Option<std::result::Result<Position, String>>,
    /// Whether sled holds entries waiting for a later key generation
    /// (`T_UNOPENED`), as sled stood when opened.
    waiting: bool,
    /// The journal's file and its first bytes.
    journal: Result<JournalFile>,
    events: Events,
}

/// The store's event channel, made ahead ([`crate::engine::event_channel`]).
type Events = tokio::sync::broadcast::Sender<crate::StoreEvent>;

/// The thread that takes the store's lock, sees to what a crash left
/// ([`prepare`]) and opens sled while Argon2id unlocks the key on the store
/// thread (none of it needs the key): its work, a few milliseconds, is
/// hidden in the unlock's hundreds, and so is making what the store's
/// first command would wait for; the unlock begins as soon as the store
/// thread runs (the header read before it starts), 0.05 to 0.1 ms sooner
/// than when the lock and the recovery came first on that thread. Once
/// the key is there, it reads the channels' states while the open's own
/// thread reads the standing and makes the engine. Then it waits until
/// the store first asks for the channels' summaries
/// (`Engine::ensure_summaries`: after its first command, or in an open
/// that replays) to read their copies
/// ([`crate::summaries::read_copies_ahead`]); after a clean close the open
/// does not wait for them. It reads them at idle priority
/// ([`idle_priority`]), and not before it is asked: they are read ahead of
/// need, and must not slow the open and the first page, which is what
/// they did at normal priority on two cores (the caller, the store thread
/// and this one all runnable), and at idle priority too, read from the
/// unlock on (a thread that yields to one at idle priority gives it the
/// core for a whole time slice, 0.3 to 0.5 ms).
pub(crate) struct Early {
    /// The store's lock and what a crash left, seen to first ([`prepare`]).
    prepared: std::sync::mpsc::Receiver<Result<Prepared>>,
    opened: std::sync::mpsc::Receiver<Result<Opened>>,
    key: std::sync::mpsc::SyncSender<Unlocking>,
    thread: std::thread::JoinHandle<()>,
}

/// What the thread that opened sled gets once the key is unlocked: the
/// records key, where copies go, and where the channels' states go.
type Unlocking = (
    SecretKey,
    CopySink,
    std::sync::mpsc::SyncSender<Result<Vec<crate::engine::ChannelRead>>>,
    crate::summaries::Asked,
);

/// What `rx` brings, waited for awake (yielding) for at most `spin`
/// (`None`: for as long as it takes), then parked. A thread parked through
/// the unlock (about 0.1 s or more) is slow to wake on this kind of machine,
/// and what such a thread does next is on the open's path. `None`: the
/// sender went (the open stopped: a wrong passphrase, or an error).
pub(crate) fn recv_awake<T>(rx: &std::sync::mpsc::Receiver<T>, spin: Option<std::time::Duration>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(t) => return Some(t),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
            Err(std::sync::mpsc::TryRecvError::Empty) if spin.is_none_or(|s| start.elapsed() < s) => {
                std::thread::yield_now()
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// What an open sees to before anything else, under the store's lock, on
/// the open's second thread while Argon2id unlocks the key ([`prepare`]).
pub(crate) struct Prepared {
    lock: File,
    /// A key rotation was finished or dropped: the header may be another.
    rotated: bool,
    /// A compaction was finished or dropped.
    compacted: bool,
    /// The thread goes on to open sled: neither a rebuild nor a format 1
    /// store (whose sled is copied before anything opens it).
    opens_sled: bool,
}

/// Take the store's lock, then finish or drop what a crash left: a key
/// rotation, a compaction (its fresh sled and new log swapped in if it was
/// committed). Before sled is opened.
fn prepare(dir: &Path, rebuild: bool) -> Result<Prepared> {
    let lock = lock(dir)?;
    let rotated = crate::rotate::recover(dir)?;
    let compacted = crate::compact::recover(dir)?;
    Ok(Prepared {
        lock,
        rotated,
        compacted,
        opens_sled: !rebuild && dir.join(crate::log::LOG_DIR).exists(),
    })
}

impl Early {
    fn start(at: PathBuf, rebuild: bool) -> Option<Early> {
        let (opened_tx, opened) = std::sync::mpsc::sync_channel(1);
        let (key, key_rx) = std::sync::mpsc::sync_channel::<Unlocking>(1);
        let (prepared_tx, prepared) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("hearth-open".into())
            .spawn(move || {
                // Nothing is touched before this thread holds the store's
                // lock and has finished what a crash left.
                match prepare(&at, rebuild) {
                    Ok(p) => {
                        let opens = p.opens_sled;
                        if prepared_tx.send(Ok(p)).is_err() || !opens {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = prepared_tx.send(Err(e));
                        return;
                    }
                }
                // Permissions are tightened first: anything looser than
                // owner-only is reported, since other accounts could read it
                // until now.
                let loose = match crate::durable::make_private(&at) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e.into()));
                        return;
                    }
                };
                let sled = open_sled_tree(&at);
                let tree = sled.as_ref().ok().map(|(_, t)| t.clone());
                let position = tree.as_ref().map(|tree| {
                    warm(tree);
                    position(tree, &at.join(crate::log::LOG_DIR))
                });
                let waiting = tree
                    .as_ref()
                    .is_some_and(|t| t.scan_prefix([T_UNOPENED]).next().is_some());
                // The files sled made as it opened (a snapshot): owner-only.
                // (Not reported: they are not loose, only new.)
                if let Err(e) = crate::durable::make_private_shallow(&at.join(DB_DIR)) {
                    let _ = opened_tx.send(Err(e.into()));
                    return;
                }
                let journal = JournalFile::read(&at.join(JOURNAL_FILE));
                let opened = Opened {
                    loose,
                    sled,
                    position,
                    waiting,
                    journal,
                    events: crate::engine::event_channel(),
                };
                if opened_tx.send(Ok(opened)).is_err() {
                    return;
                }
                // No key (a wrong passphrase): the tree is let go at once.
                if let (Some(tree), Some((records, sink, channels, asked))) = (tree, recv_awake(&key_rx, None)) {
                    let _ = channels.send(crate::engine::read_channels(&tree, &records, true));
                    // The copies once the store asks for summaries (after
                    // its first command, or in an open that replays): not
                    // during the open's tail and its front page.
                    crate::summaries::read_when_asked(&tree, &records, &sink, asked);
                }
            })
            .ok()?;
        Some(Early {
            prepared,
            opened,
            key,
            thread,
        })
    }

    /// What the thread saw to first ([`prepare`]), and the thread itself if
    /// it goes on to open sled.
    fn prepared(self) -> Result<(Prepared, Option<Early>)> {
        let prepared = self
            .prepared
            .recv()
            .unwrap_or_else(|_| Err(Error::corrupted("store", "the open's thread panicked")));
        match prepared {
            Ok(p) if p.opens_sled => Ok((p, Some(self))),
            other => {
                let _ = self.thread.join();
                other.map(|p| (p, None))
            }
        }
    }

    /// What the thread opened, once the unlock is done; `records` (the
    /// unlocked records key, `None` for a wrong passphrase) lets it go on
    /// to the summary copies.
    fn opened(self, records: Option<SecretKey>) -> Result<(Opened, Option<Ahead>)> {
        let opened = self.opened.recv();
        let (copies, asked) = crate::summaries::Ahead::new();
        let (channels_tx, channels) = std::sync::mpsc::sync_channel(1);
        let ahead = if records.is_some_and(|r| self.key.send((r, copies.sink(), channels_tx, asked)).is_ok()) {
            Some((copies.reading_on(self.thread), crate::engine::ChannelsAhead(channels)))
        } else {
            // Nothing more for it to do: the tree it holds is let go before
            // the caller closes sled (or reports a wrong passphrase).
            drop(self.key);
            let _ = self.thread.join();
            None
        };
        let opened = opened.unwrap_or_else(|_| Err(Error::corrupted("store", "the open's thread panicked")))?;
        Ok((opened, ahead))
    }
}

/// What an open does on its caller's thread once the store thread is
/// started, which unlocks the key meanwhile: the thread that takes the
/// lock, sees to what a crash left and opens sled ([`Early`]; none if it
/// could not be started: the store thread does the first two itself).
pub(crate) type Started = Option<Early>;

/// The header, read on the caller's thread before the store thread starts,
/// so that the store thread unlocks the key as soon as it runs.
pub(crate) type Header = Result<StoreHeader>;

/// Begin opening the store in `dir` ([`Started`]), for the store thread,
/// if its header read (`store`): a directory that is not a store is left
/// as it is.
pub(crate) fn start(dir: &Path, rebuild: bool, store: bool, to: std::sync::mpsc::SyncSender<Started>) {
    if store {
        let _ = to.send(Early::start(dir.to_path_buf(), rebuild));
    }
}

/// Open an existing store: bring sled in line with the feed log (migrating a
/// format 1 store, catching up after a crash, rebuilding sled when it is
/// missing or damaged, or when `rebuild` asks for it), then replay the journal.
/// Called once an open's key is unlocked (the rest of the open is short),
/// so that its caller can wait awake from then on (`Store::start`).
pub(crate) type Unlocked = Box<dyn FnOnce() + Send>;

pub(crate) fn open(
    dir: &Path,
    pass: &Passphrase,
    header: Header,
    config: Config,
    rebuild: bool,
    unlocked: Option<Unlocked>,
    started: std::sync::mpsc::Receiver<Started>,
) -> Result<(Engine, Journal, OpenReport)> {
    // The unlock first: the lock, what a crash left and sled are seen to on
    // the open's second thread meanwhile ([`Early`]).
    let header = header?;
    let unlocking = std::time::Instant::now();
    let mut master = header.unwrap(pass);
    let mut unlock_time = unlocking.elapsed();
    let early = started.recv().ok().flatten();
    let (prepared, early) = match early {
        Some(e) => e.prepared()?,
        None => (prepare(dir, rebuild)?, None),
    };
    let Prepared {
        lock,
        rotated,
        compacted,
        ..
    } = prepared;
    let mut lock = Some(lock);
    if rotated {
        // A key rotation was finished (or dropped): the header may be the
        // new one, under which the key is unlocked again.
        let header = read_header(dir)?;
        let unlocking = std::time::Instant::now();
        master = header.unwrap(pass);
        unlock_time += unlocking.elapsed();
    }
    let records = master
        .as_ref()
        .ok()
        .map(|m| hearth_core::derive(m, hearth_core::Purpose::LocalRecords));
    let (early, copies_ahead) = match early {
        Some(e) => {
            let (opened, ahead) = e.opened(records.clone())?;
            (Some(opened), ahead)
        }
        None => (None, None),
    };
    let (loose, early_sled, early_position, early_waiting, early_journal, events) = match early {
        Some(o) => (
            o.loose,
            Some(o.sled),
            o.position,
            Some(o.waiting),
            Some(o.journal),
            Some(o.events),
        ),
        None => (crate::durable::make_private(dir)?, None, None, None, None, None),
    };
    let master = match master {
        Ok(m) => {
            if let Some(tell) = unlocked {
                tell();
            }
            m
        }
        Err(e) => {
            // sled, closed again, wrote its snapshot under the process
            // umask: owner only, like every other file of the store.
            drop(early_sled);
            crate::durable::make_private(dir)?;
            return Err(e.into());
        }
    };
    let records = records.unwrap_or_else(|| hearth_core::derive(&master, hearth_core::Purpose::LocalRecords));
    // Read before sled is brought in line, so that the open knows whether
    // it replays anything (a clean close leaves it empty).
    let journal_path = dir.join(JOURNAL_FILE);
    let (mut journal, mut decoded) = match early_journal {
        Some(jf) => Journal::open_read(&journal_path, jf?, &records)?,
        None => Journal::open(&journal_path, &records)?,
    };
    let mut report = OpenReport {
        loose_permissions: loose.iter().map(|p| p.display().to_string()).collect(),
        ..OpenReport::default()
    };
    let log_dir = dir.join(crate::log::LOG_DIR);
    if dir.join(LOG_TMP_DIR).exists() {
        // A migration that did not finish: it starts again below.
        fs::remove_dir_all(dir.join(LOG_TMP_DIR))?;
    }
    if dir.join(DB_COPY_DIR).exists() {
        fs::remove_dir_all(dir.join(DB_COPY_DIR))?;
    }
    if !log_dir.exists() {
        // Format 1: sled is all there is (if it does not open, nothing can
        // be rebuilt), so the log is written from it first, from a durable
        // copy: opening sled writes to it (its recovery), and a power cut in
        // that must not touch the only copy of the store.
        let copy = dir.join(DB_COPY_DIR);
        crate::durable::copy_dir_durably(&dir.join(DB_DIR), &copy)?;
        {
            let db = open_sled_at(&copy)?;
            let tree = db.open_tree(TREE)?;
            let identity = read_identity(&tree, &records)?;
            recover::migrate(dir, &tree, &records, &identity)?;
        }
        fs::remove_dir_all(&copy)?;
        report.migrated_from = Some(1);
    }
    let sled = early_sled.unwrap_or_else(|| open_sled_tree(dir));
    let (mut copies_ahead, mut events) = (copies_ahead, events);
    let mut why = None;
    let mut engine = None;
    // Whether sled is as the second thread opened it: the open brought in
    // nothing from the log and migrated nothing (so far).
    let mut as_opened = false;
    if rebuild {
        drop(sled);
        why = Some("a repair asked for it".to_string());
    } else {
        match sled {
            Err(e) => why = Some(format!("sled does not open: {e}")),
            Ok((db, tree)) => match standing(
                &tree,
                &records,
                early_position.unwrap_or_else(|| position(&tree, &log_dir)),
            ) {
                Err(w) => why = Some(w),
                Ok(st) if st.format > STORE_FORMAT => {
                    // Written by a newer Hearth: leave it as it is.
                    return Err(Error::UnsupportedFormat {
                        what: "store".into(),
                        found: st.format,
                        expected: STORE_FORMAT,
                    });
                }
                Ok(st) => {
                    let log = if st.durable {
                        Log::open_durable(&log_dir, st.end)?
                    } else {
                        Log::open_at(&log_dir, st.end)?
                    };
                    let mut e = Engine::new(
                        dir.to_path_buf(),
                        config.clone(),
                        db,
                        master.clone(),
                        st.identity,
                        lock.take().expect("the lock"),
                        log,
                        events.take(),
                    )?;
                    report.log_tail = st.stopped;
                    if let Some((copies, channels)) = copies_ahead.take() {
                        e.copies_ahead = Some(copies);
                        e.channels_ahead = Some(channels);
                    }
                    if st.format == 1 {
                        // Just migrated: sled's content is exactly the new log.
                        // Durably so before anything else reaches the log, or
                        // a crash could leave a format 1 sled beside a log
                        // that holds more than it.
                        let mut b = sled::Batch::default();
                        b.insert(META_FORMAT, &[STORE_FORMAT][..]);
                        b.insert(META_LOG, &st.applied.encode()[..]);
                        e.tree.apply_batch(b)?;
                        e.checkpoint()?;
                    } else if st.format < STORE_FORMAT {
                        // Format 2 to 3 adds only a log record kind and a
                        // table (fork proofs), both empty until a fork is
                        // seen; 3 to 4 gives the device keys, at the end of
                        // this open (`give_device_keys`), once sled has
                        // caught up with the log; 4 to 5 and 5 to 6 add
                        // derived rows and new kinds of content only; 6 to 7
                        // moves the device to its keyed id, once the journal
                        // is replayed (`move_to_keyed_id`); 7 to 8 changes
                        // only identity records written from then on; 16 to
                        // 17 adds the `early` file (`crate::early`), absent
                        // until a run sends early. The store is marked here.
                        e.tree.insert(META_FORMAT, &[STORE_FORMAT][..])?;
                        e.dirty = true;
                        report.migrated_from = Some(st.format);
                    }
                    // After a clean close the channels' summaries are left for
                    // later (`Engine::ensure_summaries`); anything to catch
                    // up or replay needs them first, and a failure to read
                    // them here rebuilds sled like any other.
                    let quiet = decoded.records.is_empty() && st.applied == st.end;
                    match e
                        .load()
                        .and_then(|()| e.check_root())
                        .and_then(|()| if quiet { Ok(()) } else { e.ensure_summaries() })
                        // Nothing past what sled applied: nothing to scan.
                        .and_then(|()| {
                            if st.applied == st.end {
                                Ok(())
                            } else {
                                recover::catch_up(&mut e, st.applied, &mut report)
                            }
                        }) {
                        Ok(()) => {
                            as_opened = early_waiting.is_some() && st.applied == st.end && st.format == STORE_FORMAT;
                            engine = Some(e)
                        }
                        // Any failure here is sled's (a blob file a power cut
                        // emptied reads as an I/O error) or the log's; a
                        // rebuild cures the first and fails again on the second.
                        Err(err) => {
                            why = Some(format!("sled is damaged: {err}"));
                            lock = Some(e._lock);
                        }
                    }
                }
            },
        }
    }
    let mut engine = match engine {
        Some(e) => e,
        None => {
            // The thread reading copies ahead holds the old sled: it ends first.
            drop(copies_ahead.take());
            tracing::warn!(
                dir = %dir.display(),
                why = why.as_deref().unwrap_or(""),
                "rebuilding sled from the feed log"
            );
            report.rebuilt = why;
            report.log_batches = 0;
            report.log_entries = 0;
            report.skipped.clear();
            rebuild_sled(dir, config, master, lock.take().expect("the lock"), &mut report)?
        }
    };
    engine.unlock_time = unlock_time;
    // Before the journal is replayed, so that what it brings back is signed
    // by the device's own key.
    let had_keys = engine.identity.device_keys().is_some();
    if !had_keys {
        engine.ensure_summaries()?;
    }
    give_device_keys(&mut engine)?;
    // A run that sent entries early and ended uncleanly: if the log may have
    // lost some of them, this device is reborn before anything is replayed.
    let marks = crate::early::mark_dir();
    let left = crate::early::left(dir, marks.as_deref())?;
    if let Some(l) = &left {
        let device = engine.identity.device();
        if l.reborn_since(&device) {
            // An open reborn it already and was cut short before the flag
            // went: the run's records past the log go, as they went then
            // (and the journal is cleared below).
            decoded.records.retain(|r| r.seq <= engine.watermark);
            engine.dirty = true;
        } else if l.may_have_lost(|wire| {
            let channel = engine.channel_by_wire(wire).ok()?;
            Some(engine.vector_of(&channel).ok()?.seq(&device))
        }) {
            rebirth(&mut engine, &mut decoded.records, &mut report)?;
        }
    }
    // Entries held sealed whose key generation arrived later in the log (one
    // look at the table first, which the second thread took if nothing has
    // been brought into sled since: it is empty but for such entries).
    let waiting = match early_waiting {
        Some(w) if as_opened => w,
        _ => engine.tree.scan_prefix([T_UNOPENED]).next().is_some(),
    };
    let ids: Vec<ChannelId> = if waiting {
        engine.channels.keys().copied().collect()
    } else {
        Vec::new()
    };
    for id in ids {
        let wire = engine.channel(&id)?.keys.wire();
        if engine
            .tree
            .scan_prefix(channel_prefix(T_UNOPENED, &wire))
            .next()
            .is_some()
        {
            engine.ensure_summaries()?;
            engine.open_waiting(id, &mut crate::IngestReport::default())?;
        }
    }
    report.journal_tail = decoded.stopped;
    let mut last = engine.watermark;
    let journal_empty = decoded.records.is_empty();
    // Replay in groups, as the store task writes them: one feed entry per touched
    // epoch per group, not one per record.
    let group = engine.config.max_batch_ops.max(1);
    let mut staged = 0usize;
    for rec in decoded.records {
        last = last.max(rec.seq);
        if rec.seq <= engine.watermark {
            continue;
        }
        report.replayed_records += 1;
        report.replayed_ops += rec.entries.len() as u64;
        if let Err(e) = engine.apply(&rec.entries) {
            report.skipped.push(format!("journal record {}: {e}", rec.seq));
        }
        staged += rec.entries.len();
        if staged >= group {
            engine.finish_batch(rec.seq)?;
            engine.evict()?;
            staged = 0;
        }
    }
    if staged > 0 {
        engine.finish_batch(last)?;
    }
    engine.watermark = last;
    // Whatever the journal held, and whatever the log brought back, must be
    // durable in sled before the journal starts over: after a process crash,
    // sled's recovered state may still sit only in the page cache.
    // A device not on its keyed id yet (format 6 or older) moves to it, once
    // everything written under its old id is in sled and the log and the
    // journal is empty: journal records name message ids of the old id.
    let moving = !engine.identity.on_keyed_id();
    if !journal_empty || engine.dirty || moving || compacted {
        engine.ensure_summaries()?;
        engine.snapshot_all()?;
        engine.checkpoint()?;
        journal.clear(Journal::new_run()?);
    }
    // The last run's flag and mark go once what this open made of them is
    // durable (a rebirth among it).
    if let Some(l) = left {
        l.clear(dir, marks.as_deref())?;
    }
    // What the journal held is in sled now: its old records (texts a
    // compaction dropped among them) are zeroed.
    if compacted {
        journal.purge()?;
        crate::compact::done(dir)?;
    }
    if moving {
        report.moved_from = Some(engine.identity.device());
        move_to_keyed_id(&mut engine)?;
    }
    // Files sled made in this open: all of them after a rebuild or a
    // migration; otherwise at most its own files at the top of `db/` (a
    // snapshot), since the blobs a write makes are seen to by the
    // checkpoint that syncs them. The rest of the store was seen to
    // before the unlock (a walk of every blob costs milliseconds), and
    // sled's own files as it opened by the second thread: an open that
    // wrote nothing since has nothing to see to.
    let wrote = !as_opened || !had_keys || waiting || !journal_empty || engine.dirty || moving || compacted;
    if report.rebuilt.is_some() || report.migrated_from.is_some() {
        crate::durable::make_private(&dir.join(DB_DIR))?;
    } else if wrote {
        crate::durable::make_private_shallow(&dir.join(DB_DIR))?;
    }
    report.summary_copies = engine.summary_rows.read;
    Ok((engine, journal, report))
}

/// Build a fresh sled from the whole feed log (the old one, if any, is
/// deleted: it is derived data, sealed like the rest).
fn rebuild_sled(dir: &Path, config: Config, master: SecretKey, lock: File, report: &mut OpenReport) -> Result<Engine> {
    let log_dir = dir.join(crate::log::LOG_DIR);
    let records = hearth_core::derive(&master, hearth_core::Purpose::LocalRecords);
    let identity = recover::identity_from_log(&log_dir, &records)?;
    let reach = recover::reach(&log_dir, LogPos::START, LogPos::START)?;
    report.log_tail = reach.stopped;
    if dir.join(DB_DIR).exists() {
        fs::remove_dir_all(dir.join(DB_DIR))?;
    }
    let db = open_sled(dir)?;
    let log = Log::open_at(&log_dir, reach.end)?;
    let mut engine = Engine::new(dir.to_path_buf(), config, db, master, identity, lock, log, None)?;
    let sealed = seal_record(&engine.records, META_IDENTITY, &engine.identity.encode())?;
    let mut b = sled::Batch::default();
    b.insert(META_IDENTITY, sealed);
    b.insert(META_FORMAT, &[STORE_FORMAT][..]);
    b.insert(META_LOG, &LogPos::START.encode()[..]);
    engine.tree.apply_batch(b)?;
    engine.dirty = true;
    recover::catch_up(&mut engine, LogPos::START, report)?;
    sync_dir(dir)?;
    Ok(engine)
}

/// A device of a store written before devices had keys (format 3 and older)
/// gets its own keys now, certified by the user key as keeping its device id:
/// the new identity record goes to the log (the source of truth) and sled in
/// one batch, after sled has caught up with the log and before the journal
/// is replayed, so that a crash leaves either the old identity (and this runs
/// again) or the new one.
fn give_device_keys(engine: &mut Engine) -> Result<()> {
    if engine.identity.device_keys().is_some() {
        return Ok(());
    }
    let identity = engine.identity.clone().with_device_keys()?;
    write_identity(engine, identity)?;
    engine.dirty = true;
    Ok(())
}

/// Move this device to its keyed id ([`hearth_core::device::device_id_of`]):
/// the identity record (its old id kept as a former one) goes to the log and
/// sled in one batch, as in [`give_device_keys`], so that a crash leaves
/// either identity, and the move runs again or is done. What it writes from
/// then on is a new feed in each channel, whose first entry carries a chain
/// no one can squat; its old feeds stay as they are (a former device).
fn move_to_keyed_id(engine: &mut Engine) -> Result<()> {
    let identity = engine.identity.clone().with_keyed_id()?;
    write_identity(engine, identity)?;
    engine.checkpoint()
}

/// This device reborn as a new device of its user (`crate::early`): the
/// journal's records past the durable log (none acknowledged) dropped, the
/// new identity to the log and sled in one batch, as in [`give_device_keys`];
/// the open's checkpoint makes it durable before the last run's flag goes.
/// A crash in between leaves the old identity (the next open makes the
/// device new again) or the new one (the next open only drops the run's
/// records, `Left::reborn_since`): the old feeds are never written again.
fn rebirth(
    engine: &mut Engine,
    records: &mut Vec<crate::journal::JournalRecord>,
    report: &mut OpenReport,
) -> Result<()> {
    let from = engine.identity.device();
    let before = records.len();
    records.retain(|r| r.seq <= engine.watermark);
    engine.ensure_summaries()?;
    let reborn = engine.identity.reborn()?;
    let to = reborn.device();
    write_identity(engine, reborn)?;
    engine.dirty = true;
    report.reborn_from = Some(from);
    report.dropped_unacknowledged = (before - records.len()) as u64;
    tracing::warn!(
        from = %from,
        to = %to,
        dropped = report.dropped_unacknowledged,
        "entries sent early may have been lost in an unclean shutdown: this device continues as a new device of its user"
    );
    Ok(())
}

/// A newer identity record of this device to the log and sled, in one batch
/// that also marks the store's format; then this device's identity.
fn write_identity(engine: &mut Engine, identity: hearth_core::Identity) -> Result<()> {
    let plain = zeroize::Zeroizing::new(identity.encode());
    let sealed = engine.seal_log(crate::log::kind::IDENTITY, &plain)?;
    engine.log_record(crate::log::kind::IDENTITY, &sealed);
    let mut batch = sled::Batch::default();
    batch.insert(META_IDENTITY, seal_record(&engine.records, META_IDENTITY, &plain)?);
    batch.insert(META_FORMAT, &[STORE_FORMAT][..]);
    engine.write_log_batch(&mut batch)?;
    engine.tree.apply_batch(batch)?;
    engine.take_identity(identity);
    Ok(())
}

impl Engine {
    /// Rewrap the master key under a new passphrase (only the header changes).
    pub(crate) fn change_passphrase(&mut self, new: &Passphrase) -> Result<()> {
        let header = StoreHeader::wrap(&self.master, new, self.config.kdf)?;
        write_header(&self.dir, &header)
    }
}

/// Whether `dir` holds a store (has a header).
pub fn exists(dir: &Path) -> bool {
    dir.join(HEADER_FILE).exists()
}

pub(crate) fn abs(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// What opening a store would migrate ([`crate::Store::migration_plan`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MigrationPlan {
    /// The store's format now (`None`: its sled does not open, and the next
    /// open builds it afresh from the feed log, in the current format).
    pub from: Option<u8>,
    /// The format this build writes.
    pub to: u8,
    /// What the next open does, in order (empty: nothing).
    pub steps: Vec<String>,
}

/// Read what opening the store in `dir` would migrate, writing nothing to it:
/// the passphrase is checked, and sled is read from a copy (opening sled
/// writes to it).
pub(crate) fn migration_plan(dir: &Path, pass: &Passphrase) -> Result<MigrationPlan> {
    let header = read_header(dir)?;
    let _lock = lock(dir)?;
    let master = header.unwrap(pass)?;
    let records = hearth_core::derive(&master, hearth_core::Purpose::LocalRecords);
    let mut steps: Vec<String> = Vec::new();
    for (what, done) in [
        (
            crate::rotate::ROTATE_DIR,
            "a key rotation that was committed is finished",
        ),
        (
            crate::compact::COMPACTED_DIR,
            "a compaction that was committed is finished",
        ),
        (
            crate::compact::LEGACY_COMPACT_DIR,
            "a compaction that was committed is finished",
        ),
    ] {
        if dir.join(what).exists() {
            steps.push(done.to_string());
        }
    }
    // A swap a crash interrupted (the old log moved aside, the new one not
    // yet in) is finished before anything else: no log then is no format 1.
    let swapping = [
        crate::rotate::LOG_OLD_DIR,
        crate::rotate::ROTATE_DIR,
        crate::compact::COMPACTED_DIR,
        crate::compact::LEGACY_COMPACT_DIR,
    ]
    .iter()
    .any(|d| dir.join(d).exists());
    let from = if !dir.join(crate::log::LOG_DIR).exists() && !swapping {
        Some(1)
    } else if dir.join(crate::compact::LEGACY_COMPACT_DIR).exists() {
        // Its swap deletes sled, which is built afresh from the new log.
        steps.push("sled is built afresh from the feed log".to_string());
        None
    } else {
        // sled is read from a private copy (opening sled writes to it),
        // removed on every path.
        struct Copy(std::path::PathBuf);
        impl Drop for Copy {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let mut tag = [0u8; 8];
        hearth_core::random_bytes(&mut tag)?;
        let copy = Copy(std::env::temp_dir().join(format!("hearth-migrate-check-{}", u64::from_le_bytes(tag))));
        crate::durable::create_private_dir(&copy.0)?;
        copy_files_private(&dir.join(DB_DIR), &copy.0)?;
        let read = open_sled_at(&copy.0).and_then(|db| {
            let tree = db.open_tree(TREE)?;
            let identity = read_identity(&tree, &records)?;
            let format = match tree.get(META_FORMAT)? {
                None => 1,
                Some(v) if v.len() == 1 => v[0],
                Some(_) => return Err(Error::corrupted("sled", "its format row is damaged")),
            };
            Ok((format, identity.on_keyed_id()))
        });
        let read = read.map(|(f, keyed)| {
            // A migration cut after sled was marked, before the device moved
            // to its keyed id: the next open still moves it.
            if f >= 7 && !keyed {
                steps.push(
                    "the device moves to an id derived from its keys (a migration from format 6 or older was cut \
                     short before it moved)"
                        .to_string(),
                );
            }
            f
        });
        match read {
            Ok(f) if f > STORE_FORMAT => {
                return Err(Error::UnsupportedFormat {
                    what: "store".into(),
                    found: f,
                    expected: STORE_FORMAT,
                });
            }
            Ok(f) => Some(f),
            Err(e) => {
                steps.push(format!(
                    "sled does not open as it is ({e}): it is built afresh from the feed log"
                ));
                None
            }
        }
    };
    if let Some(f) = from {
        steps.extend(migration_steps(f).into_iter().map(str::to_string));
    }
    Ok(MigrationPlan {
        from,
        to: STORE_FORMAT,
        steps,
    })
}

/// Copy the files under `from` to `to` (which exists, private), each file
/// owner-only, without fsyncs: a throwaway copy.
fn copy_files_private(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    for e in fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            crate::durable::create_private_dir(&target)?;
            copy_files_private(&e.path(), &target)?;
        } else {
            let mut src = File::open(e.path())?;
            let mut dst = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)?;
            std::io::copy(&mut src, &mut dst)?;
        }
    }
    Ok(())
}

/// Lower the calling thread's priority to nice value `nice` (Linux keeps a
/// nice value per thread). Lowering needs no privilege; where it fails the
/// thread goes on as it was.
#[allow(unsafe_code)]
pub(crate) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: system calls on the calling thread, without pointers.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Put the calling thread in the idle scheduling class (`SCHED_IDLE`): it
/// runs only on a core nothing else wants. Lowering a thread's own priority
/// needs no privilege; where it fails the thread goes on as it was.
#[allow(unsafe_code)]
pub(crate) fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a system call on the calling thread (0) with a valid,
        // initialized parameter that outlives the call.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
        }
    }
}
