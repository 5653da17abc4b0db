//! Compaction: the bytes of dropped texts leave every file of the store.
//!
//! A delete drops a text from the epoch document and from the stored entry
//! that carried it ([`crate::prune`]), but the old bytes stay where they were
//! written: in the feed log (append-only), in sled's old pages, and in the
//! journal's old records. Compaction rewrites all three, as SQLite's VACUUM
//! copies a database into a fresh file:
//!
//! 1. in the store task, with the group closed and a checkpoint taken,
//!    `compact.tmp/log/` is written from the log: each entry as sled holds it
//!    now (its dropped segments gone), fork proofs without segments, every
//!    other record as it is;
//! 2. the store is closed cleanly (the journal is empty) and, under its lock,
//!    whatever the log gained meanwhile is copied after it (those batches
//!    are newer than any drop it covers); `compact.tmp/` is made durable and
//!    renamed `compact/`: **the commit**;
//! 3. the swap: `log/` becomes `log.old/`, `compact/log/` becomes `log/`,
//!    then `db/` (sled, with its old pages), the journal (empty, but its file
//!    still holds old records) and `log.old/` are deleted, then `compact/`.
//!    The next open builds a fresh sled from the new log (and a new journal).
//!
//! An open finishes or drops what it finds: `compact.tmp/` was never
//! committed and is dropped (the old log is whole); `compact/` is committed
//! and its swap is finished (each step checks what is already done).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use hearth_core::{ChannelKeys, Envelope, ForkProof, WireId};

use crate::durable::{create_private_dir, sync_dir};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::{self, Log, LogPos, kind};
use crate::rotate::LOG_OLD_DIR;

/// Where a compaction writes the new log.
pub const COMPACT_TMP_DIR: &str = "compact.tmp";
/// A committed compaction, until its swap is done.
pub const COMPACT_DIR: &str = "compact";

/// Where a compaction stops early, for tests of what an open then finds (a
/// crash at that step). `None`: run to the end.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CompactStop {
    /// With `compact.tmp/` written, before the commit.
    Prepared,
    /// Right after the commit, before the swap.
    Committed,
    /// In the swap: after `log/` became `log.old/`.
    OldLogMoved,
    /// In the swap: after the new log moved in, before sled and the journal go.
    NewLogMoved,
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

/// An entry without its segments' bytes (for a fork proof, which needs
/// none).
fn bare(bytes: &[u8]) -> Vec<u8> {
    match Envelope::decode(bytes) {
        Ok(mut env) if env.holds_texts() => {
            env.strip_texts();
            env.encode()
        }
        _ => bytes.to_vec(),
    }
}

impl Engine {
    /// Step 1: write `staging/log/` from the log, each entry as sled holds it.
    /// Returns the position of the old log it covers and the new log's end.
    pub(crate) fn write_compacted_log(&mut self, staging: &Path) -> Result<(LogPos, LogPos, CompactReport)> {
        self.checkpoint()?;
        let mut report = CompactReport {
            log_bytes_before: dir_bytes(&self.dir.join(log::LOG_DIR)),
            store_bytes_before: dir_bytes(&self.dir),
            ..CompactReport::default()
        };
        if staging.exists() {
            fs::remove_dir_all(staging)?;
        }
        create_private_dir(staging)?;
        let mut new_log = Log::create(&staging.join(log::LOG_DIR))?;
        let tree = self.tree.clone();
        let keys: HashMap<WireId, ChannelKeys> = self
            .channels
            .values()
            .map(|ch| (ch.keys.wire(), ch.keys.clone()))
            .collect();
        let scanned = log::scan(&self.dir.join(log::LOG_DIR), LogPos::START, |batch| {
            let mut buf = Vec::new();
            for r in batch.records {
                report.records += 1;
                let body = match r.kind {
                    kind::ENTRY if r.body.first().is_some_and(|v| *v >= hearth_core::ENVELOPE_V3) => {
                        let env = Envelope::decode(&r.body)?;
                        let held = tree.get(feed_key(&env.header.wire, &env.header.device, env.header.seq))?;
                        match held {
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
                log::encode_record(&mut buf, r.kind, &body);
            }
            new_log.append(&buf)?;
            Ok(true)
        })?;
        if let Some(why) = scanned.stopped {
            return Err(Error::corrupted(
                "feed log",
                format!("{why}; run `repair` before compacting"),
            ));
        }
        new_log.sync()?;
        Ok((scanned.end, new_log.end(), report))
    }
}

/// Steps 2 and 3, on the closed store in `dir` (the caller holds its lock):
/// copy what the old log gained past `covered`, commit, swap.
pub(crate) fn commit(
    dir: &Path,
    covered: LogPos,
    new_end: LogPos,
    report: &mut CompactReport,
    stop: Option<CompactStop>,
) -> Result<()> {
    let staging = dir.join(COMPACT_TMP_DIR);
    let mut new_log = Log::open_at(&staging.join(log::LOG_DIR), new_end)?;
    let tail = log::scan(&dir.join(log::LOG_DIR), covered, |batch| {
        let mut buf = Vec::new();
        for r in batch.records {
            report.records += 1;
            log::encode_record(&mut buf, r.kind, &r.body);
        }
        new_log.append(&buf)?;
        Ok(true)
    })?;
    if let Some(why) = tail.stopped {
        return Err(Error::corrupted("feed log", why));
    }
    new_log.sync()?;
    drop(new_log);
    report.log_bytes_after = dir_bytes(&staging.join(log::LOG_DIR));
    sync_dir(&staging)?;
    if stop == Some(CompactStop::Prepared) {
        return Ok(());
    }
    // The commit point.
    fs::rename(&staging, dir.join(COMPACT_DIR))?;
    sync_dir(dir)?;
    if stop == Some(CompactStop::Committed) {
        return Ok(());
    }
    finish(dir, stop)
}

/// At open (under the store's lock): finish or drop a compaction that was
/// interrupted. Returns whether there was one.
pub(crate) fn recover(dir: &Path) -> Result<bool> {
    let (tmp, done) = (dir.join(COMPACT_TMP_DIR), dir.join(COMPACT_DIR));
    let mut found = false;
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
        found = true;
    }
    if done.exists() {
        finish(dir, None)?;
        found = true;
    }
    if found {
        sync_dir(dir)?;
    }
    Ok(found)
}

/// The swap after the commit; every step is skipped when already done.
fn finish(dir: &Path, stop: Option<CompactStop>) -> Result<()> {
    let staging = dir.join(COMPACT_DIR);
    if !crate::rotate::move_log_in(dir, &staging, stop == Some(CompactStop::OldLogMoved))?
        || stop == Some(CompactStop::NewLogMoved)
    {
        return Ok(());
    }
    // sled (with its old pages) is built afresh from the new log at the next
    // open, and a new journal made (the old one was empty; its file still
    // held old records).
    for d in [DB_DIR, LOG_OLD_DIR] {
        if dir.join(d).exists() {
            fs::remove_dir_all(dir.join(d))?;
        }
    }
    if dir.join(JOURNAL_FILE).exists() {
        fs::remove_file(dir.join(JOURNAL_FILE))?;
    }
    sync_dir(dir)?;
    fs::remove_dir_all(&staging)?;
    sync_dir(dir)?;
    Ok(())
}
