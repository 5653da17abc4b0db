//! Creating, opening and re-keying a store directory.
//!
//! ```text
//! <dir>/header    clear: Argon2id parameters, salt, wrapped master key (written last at create)
//! <dir>/LOCK      flock'ed while open
//! <dir>/journal   write-ahead journal of acknowledged writes
//! <dir>/db/       sled
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use hearth_core::{HEADER_MAX_LEN, Identity, Passphrase, SecretKey, StoreHeader};
use serde::Serialize;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::layout::*;

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
    /// Journal entries that could not be applied (reported, skipped).
    pub skipped: Vec<String>,
}

fn lock(dir: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
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
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Replace the header atomically: write a temporary file, fsync, rename, fsync the directory.
pub(crate) fn write_header(dir: &Path, header: &StoreHeader) -> Result<()> {
    let tmp = dir.join(format!("{HEADER_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &header.encode())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(HEADER_FILE))?;
    sync_dir(dir)
}

fn open_sled(dir: &Path) -> Result<sled::Db> {
    let cfg = sled::Config::new()
        .path(dir.join(DB_DIR))
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
    fs::create_dir_all(dir)?;
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
    // No header means any leftover is an interrupted `create`: start afresh.
    if dir.join(DB_DIR).exists() {
        fs::remove_dir_all(dir.join(DB_DIR))?;
    }
    let _ = fs::remove_file(dir.join(JOURNAL_FILE));
    let master = SecretKey::generate()?;
    let header = StoreHeader::wrap(&master, pass, config.kdf)?;
    let db = open_sled(dir)?;
    let mut engine = Engine::new(dir.to_path_buf(), config, db, master, identity, lock)?;
    let sealed = seal_record(&engine.records, META_IDENTITY, &engine.identity.encode())?;
    engine.tree.insert(META_IDENTITY, sealed)?;
    engine.checkpoint()?;
    let (journal, _) = Journal::open(&dir.join(JOURNAL_FILE), &engine.records)?;
    // The header is written last: its presence is what makes the directory a store.
    write_header(dir, &header)?;
    Ok((engine, journal))
}

fn read_header(dir: &Path) -> Result<StoreHeader> {
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

/// Open an existing store and replay its journal.
pub(crate) fn open(dir: &Path, pass: &Passphrase, config: Config) -> Result<(Engine, Journal, OpenReport)> {
    let header = read_header(dir)?;
    let lock = lock(dir)?;
    let started = std::time::Instant::now();
    let master = header.unwrap(pass)?;
    let unlock_time = started.elapsed();
    let db = open_sled(dir)?;
    let tree = db.open_tree(TREE)?;
    let records = hearth_core::derive(&master, hearth_core::Purpose::LocalRecords);
    let sealed = tree
        .get(META_IDENTITY)?
        .ok_or_else(|| Error::corrupted("identity", "missing"))?;
    let identity = Identity::decode(&open_record(&records, META_IDENTITY, &sealed)?)?;
    let mut engine = Engine::new(dir.to_path_buf(), config, db, master, identity, lock)?;
    engine.unlock_time = unlock_time;
    engine.load()?;
    let (mut journal, decoded) = Journal::open(&dir.join(JOURNAL_FILE), &engine.records)?;
    let mut report = OpenReport {
        journal_tail: decoded.stopped,
        ..OpenReport::default()
    };
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
    // Whatever the journal held must be durable in sled before the journal
    // starts over: after a process crash, sled's recovered state may still sit
    // only in the page cache.
    if !journal_empty {
        engine.snapshot_all()?;
        engine.checkpoint()?;
        journal.clear(Journal::new_run()?);
    }
    Ok((engine, journal, report))
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
