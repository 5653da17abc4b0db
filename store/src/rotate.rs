//! Replacing a store's master key (`hearth passwd --rotate-key`).
//!
//! Changing the passphrase only rewraps the master key (the header). Rotating
//! the key replaces the master key itself, so that nothing the old key (or a
//! copy of the old header and the old passphrase) could open stays readable:
//!
//! 1. the store is closed cleanly first (the journal is empty, the log holds
//!    everything, sled is derived from it);
//! 2. `rotate.tmp/log/` is written: the feed log again, its sealed records
//!    (identity, channel keys, commits) re-sealed under the new record key,
//!    entries and fork proofs copied as they are (they are sealed under
//!    channel keys, not the master key); `rotate.tmp/<file>` for each sealed
//!    node file (`Store::write_private_file`), re-sealed; then
//!    `rotate.tmp/header`, wrapping the new master key under the (new)
//!    passphrase; all durable, then `rotate.tmp/` is renamed `rotate/`;
//! 3. **commit**: `rotate/header` is renamed over `header`;
//! 4. the swap: `log/` becomes `log.old/`, `rotate/log/` becomes `log/`, the
//!    node files move in, `db/` (sealed rows) and `journal` are deleted (the
//!    next open rebuilds sled from the new log and makes a new journal), then
//!    `log.old/` and `rotate/` go.
//!
//! An open finishes or drops what it finds: `rotate.tmp/`, or `rotate/` with
//! its header still in it, never committed and is dropped (the old header and
//! log are whole); `rotate/` without a header committed, and the swap is done
//! (each step checks what is already done). The node's peer id, derived from
//! the master key, changes with it.

use std::fs;
use std::path::Path;

use hearth_core::{Passphrase, SecretKey, StoreHeader};

use crate::config::Config;
use crate::durable::{create_private_dir, sync_dir, write_atomic};
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::{self, Log, LogPos, kind};
use crate::recover;

/// Where a rotation is prepared.
pub const ROTATE_TMP_DIR: &str = "rotate.tmp";
/// A prepared rotation (complete and durable), until its swap is done.
pub const ROTATE_DIR: &str = "rotate";
/// The old log while the new one is moved in.
pub const LOG_OLD_DIR: &str = "log.old";

/// Where a rotation stops early, for tests of what an open then finds (a
/// crash at that step). `None`: run to the end.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopAt {
    /// With `rotate.tmp/` complete, before it is renamed `rotate/`.
    Prepared,
    /// With `rotate/` in place, before the commit.
    HeaderWritten,
    /// Right after the commit (the header renamed), before the swap.
    Committed,
    /// In the swap: after `log/` became `log.old/`.
    OldLogMoved,
    /// In the swap: after the new log moved in.
    NewLogMoved,
}

/// What a rotation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotateReport {
    /// Log batches re-written.
    pub batches: u64,
    /// Records re-sealed under the new record key.
    pub resealed: u64,
    /// Node files re-sealed.
    pub files: u64,
}

/// Whether a file in the store directory is one of the store's own (never a
/// node file, which are the other regular files carrying the sealed magic).
fn is_store_file(name: &str) -> bool {
    [HEADER_FILE, JOURNAL_FILE, LOCK_FILE, "header.tmp"].contains(&name)
}

/// Rotate the master key of the closed store in `dir` (the caller holds its
/// lock, and closed it cleanly). `master` is the current key.
pub(crate) fn rotate(
    dir: &Path,
    master: &SecretKey,
    new_pass: &Passphrase,
    config: &Config,
    stop: Option<StopAt>,
) -> Result<RotateReport> {
    let old_records = hearth_core::derive(master, hearth_core::Purpose::LocalRecords);
    let new_master = SecretKey::generate()?;
    let new_records = hearth_core::derive(&new_master, hearth_core::Purpose::LocalRecords);
    // Weak KDF parameters are refused before anything is written.
    let header = StoreHeader::wrap(&new_master, new_pass, config.kdf)?;
    let staging = dir.join(ROTATE_TMP_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    create_private_dir(&staging)?;
    let mut report = RotateReport::default();

    // The log, re-sealed batch by batch.
    let mut new_log = Log::create(&staging.join(log::LOG_DIR))?;
    // A restored device's own network key is replaced too: the peer id
    // changes with the key, as for any store.
    let node = SecretKey::generate()?;
    let scanned = log::scan(&dir.join(log::LOG_DIR), LogPos::START, |batch| {
        let mut buf = Vec::new();
        for r in batch.records {
            let body = match r.kind {
                kind::IDENTITY => {
                    report.resealed += 1;
                    let plain = zeroize::Zeroizing::new(recover::open(&old_records, r.kind, &r.body)?);
                    let id = hearth_core::Identity::decode(&plain)?;
                    if id.node_secret().is_some() {
                        let id = id.with_node_secret(&node);
                        recover::seal(&new_records, r.kind, &zeroize::Zeroizing::new(id.encode()))?
                    } else {
                        recover::seal(&new_records, r.kind, &plain)?
                    }
                }
                kind::CHANNEL | kind::COMMIT | kind::TOLD | kind::EXPIRED => {
                    report.resealed += 1;
                    let plain = recover::open(&old_records, r.kind, &r.body)?;
                    recover::seal(&new_records, r.kind, &plain)?
                }
                _ => r.body,
            };
            log::encode_record(&mut buf, r.kind, &body);
        }
        new_log.append(&buf)?;
        report.batches += 1;
        Ok(true)
    })?;
    if let Some(why) = scanned.stopped {
        // A store closed cleanly has no torn tail: this is damage, which a
        // rotation must not paper over (`repair` first).
        return Err(Error::corrupted(
            "feed log",
            format!("{why}; run `repair` before rotating the key"),
        ));
    }
    new_log.sync()?;
    drop(new_log);

    // Node files, re-sealed; one that does not open is dropped (it was
    // unreadable already, and would be unreadable under either key).
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type()?.is_file() || is_store_file(&name) {
            continue;
        }
        let bytes = fs::read(e.path())?;
        let Some(sealed) = bytes.strip_prefix(crate::store::PRIVATE_FILE_MAGIC) else {
            continue;
        };
        let aad = crate::store::file_aad(&name);
        match hearth_core::open(&old_records, &aad, sealed, "private file") {
            Ok(plain) => {
                let mut out = crate::store::PRIVATE_FILE_MAGIC.to_vec();
                out.extend_from_slice(&hearth_core::seal(&new_records, &aad, &plain)?);
                write_atomic(&staging.join(&name), &out)?;
                report.files += 1;
            }
            Err(_) => fs::remove_file(e.path())?,
        }
    }
    write_atomic(&staging.join(HEADER_FILE), &header.encode())?;
    sync_dir(&staging)?;
    if stop == Some(StopAt::Prepared) {
        return Ok(report);
    }
    let staging = dir.join(ROTATE_DIR);
    fs::rename(dir.join(ROTATE_TMP_DIR), &staging)?;
    sync_dir(dir)?;
    if stop == Some(StopAt::HeaderWritten) {
        return Ok(report);
    }
    // The commit point.
    fs::rename(staging.join(HEADER_FILE), dir.join(HEADER_FILE))?;
    sync_dir(dir)?;
    sync_dir(&staging)?;
    if stop == Some(StopAt::Committed) {
        return Ok(report);
    }
    finish(dir, stop)?;
    Ok(report)
}

/// At open (under the store's lock): finish or drop a rotation that was
/// interrupted. Returns whether there was one.
pub(crate) fn recover(dir: &Path) -> Result<bool> {
    let (tmp, staging) = (dir.join(ROTATE_TMP_DIR), dir.join(ROTATE_DIR));
    let mut found = false;
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
        found = true;
    }
    if staging.join(HEADER_FILE).exists() {
        // Prepared, never committed: the old header and log are whole.
        fs::remove_dir_all(&staging)?;
        found = true;
    } else if staging.exists() {
        finish(dir, None)?;
        found = true;
    }
    if found {
        sync_dir(dir)?;
    }
    Ok(found)
}

/// Move `staging/log/` in as the store's log, the live one becoming
/// `log.old/`; each step is skipped when already done. With
/// `stop_when_old_moved`, stops (returns `false`) right after the live log
/// moved aside, as a crash there would.
pub(crate) fn move_log_in(dir: &Path, staging: &Path, stop_when_old_moved: bool) -> Result<bool> {
    let (live, old, new) = (
        dir.join(log::LOG_DIR),
        dir.join(LOG_OLD_DIR),
        staging.join(log::LOG_DIR),
    );
    if new.exists() {
        if live.exists() {
            if old.exists() {
                fs::remove_dir_all(&old)?;
            }
            fs::rename(&live, &old)?;
            sync_dir(dir)?;
            crash_point!("compact.old_log_moved");
        }
        if stop_when_old_moved {
            return Ok(false);
        }
        fs::rename(&new, &live)?;
        sync_dir(dir)?;
        sync_dir(staging)?;
        crash_point!("compact.new_log_moved");
    }
    Ok(true)
}

/// The swap after the commit; every step is skipped when already done.
fn finish(dir: &Path, stop: Option<StopAt>) -> Result<()> {
    let staging = dir.join(ROTATE_DIR);
    if !move_log_in(dir, &staging, stop == Some(StopAt::OldLogMoved))? || stop == Some(StopAt::NewLogMoved) {
        return Ok(());
    }
    for e in fs::read_dir(&staging)? {
        let e = e?;
        if e.file_type()?.is_file() {
            fs::rename(e.path(), dir.join(e.file_name()))?;
        }
    }
    sync_dir(dir)?;
    // Sealed under the old key: sled is rebuilt from the new log at the next
    // open, and a new journal made (the old one was empty).
    for d in [DB_DIR, LOG_OLD_DIR] {
        if dir.join(d).exists() {
            fs::remove_dir_all(dir.join(d))?;
        }
    }
    if dir.join(JOURNAL_FILE).exists() {
        fs::remove_file(dir.join(JOURNAL_FILE))?;
    }
    fs::remove_dir_all(&staging)?;
    sync_dir(dir)?;
    Ok(())
}
