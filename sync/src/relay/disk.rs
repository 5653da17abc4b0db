//! A relay's files: the feed log (the source of truth, fsynced before every
//! acknowledgement) and sled (heads and entries by position, derived from the
//! log and rebuilt from it when it is missing, damaged or ahead of the log).
//!
//! ```text
//! <dir>/LOCK   locked while a relay has the directory open
//! <dir>/log/   the feed log (hearth_store::FeedLog): entry records, each ingest's
//!              batch closed by a commit record
//! <dir>/db/    sled, one tree `hearth-relay.v1` (F and H rows, M meta rows)
//! ```
//!
//! The same rules as a member store's (hearth-store's `log` module): a batch
//! goes to the log (and, for a relay, is fsynced there) before its sled batch
//! is applied, and that sled batch records the log position it reached; sled
//! is checkpointed every few MiB of log, recording first how far the log was
//! durable. At open, sled catches up on the log's batches past its position,
//! or is rebuilt from the whole log.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use hearth_store::{
    Error, FeedLog, LogBatch, LogCommit, LogPos, Result, SledFiles, encode_log_record, log_kind, log_reach, scan_log,
};

use super::{Inner, sled_error};

/// Meta rows of the relay tree.
pub(super) const META_FORMAT: &[u8] = b"Mformat";
/// The end of the last log batch applied to sled (in that batch).
pub(super) const META_LOG: &[u8] = b"Mlog";
/// How far the log was durable at sled's last checkpoint.
pub(super) const META_LOG_SYNCED: &[u8] = b"Mlogsynced";
/// 1: sled only. 2: the feed log is the source of truth. 3: fork proofs
/// (log record kind 5, table `K`); a format 2 relay is only marked. 4: access
/// grants (log record kind 6, table `G`); a format 3 relay is only marked.
/// 5: device chains of format 2 entries (table `D`, derived from the
/// entries); a format 4 relay is only marked. 6: revocation notices (log
/// record kind 7, table `V`); a format 5 relay is only marked. 7: relay
/// certificates (log record kind 8, table `C`) and removals (kind 9, table
/// `X`); a format 6 relay is only marked. 8: a removal carries the clock of
/// its op and may say the user was added back; the latest of a user stands
/// (kind 9 records and `X` rows of format 7, with no clock, still read, as
/// the oldest); a format 7 relay is only marked. 9: feed entries of format
/// 3 (droppable segments, outside the entry hash); a format 8 relay is only
/// marked. 10: feed entries of format 4 (one pack of texts, outside the
/// signature and the hash); a format 9 relay is only marked. 11: text
/// drops (log record kind 11): an entry's pack replaced by the one a
/// member's store holds after a delete; when each entry was taken (table
/// `A`, from the commit records' clock), for the relay's retention; a
/// format 10 relay is only marked.
pub(super) const RELAY_FORMAT: u8 = 11;
/// sled is checkpointed once this much log was written since the last time
/// (the log itself is durable at every acknowledgement).
const CHECKPOINT_BYTES: u64 = 4 << 20;
const LOG_TMP_DIR: &str = "log.tmp";
/// A migration's copy of a format 1 sled.
const DB_COPY_DIR: &str = "db.v1";
/// Entries a migration puts in one log batch.
const MIGRATE_BATCH: usize = 2048;

/// What the relay writes with: the log and sled's files (behind the writer lock).
pub(super) struct Writer {
    pub log: FeedLog,
    sled_files: SledFiles,
    since_checkpoint: u64,
}

impl Writer {
    pub fn new(log: FeedLog, dir: &Path) -> Writer {
        Writer {
            log,
            sled_files: SledFiles::new(&dir.join(super::DB_DIR)),
            since_checkpoint: 0,
        }
    }
}

/// What opening found: where sled stands against the log.
pub(super) enum Standing {
    /// sled is usable: it applied the log up to `applied`; the log ends at `end`.
    Usable { applied: LogPos, end: LogPos },
    /// sled must be rebuilt from the log, for this reason.
    Rebuild(String),
}

/// Where sled stands against the log in `log_dir`.
pub(super) fn standing(tree: &sled::Tree, log_dir: &Path) -> Result<Standing> {
    let pos = |k: &[u8]| -> Result<Option<LogPos>> {
        tree.get(k).map_err(sled_error)?.map(|v| LogPos::decode(&v)).transpose()
    };
    let format = tree
        .get(META_FORMAT)
        .map_err(sled_error)?
        .map_or(1, |v| v.first().copied().unwrap_or(0));
    let (synced, applied) = match format {
        // Migrated: sled is exactly what its new log holds.
        1 => (LogPos::START, None),
        2..=RELAY_FORMAT => match pos(META_LOG)? {
            Some(a) => (pos(META_LOG_SYNCED)?.unwrap_or(LogPos::START), Some(a)),
            None => return Ok(Standing::Rebuild("sled has no log position".into())),
        },
        // A newer relay's: its log may hold records this build cannot read,
        // so nothing is touched.
        newer if newer > RELAY_FORMAT && newer != 0xff => {
            return Err(Error::UnsupportedFormat {
                what: "relay".into(),
                found: newer,
                expected: RELAY_FORMAT,
            });
        }
        other => return Ok(Standing::Rebuild(format!("sled has an unknown format {other}"))),
    };
    let target = applied.unwrap_or(synced);
    let (end, reaches) = log_reach(log_dir, synced, target)?;
    if !reaches {
        return Ok(Standing::Rebuild(format!(
            "sled has applied the log up to {target}, which the log does not reach (it ends at {})",
            end.end
        )));
    }
    // A format 1 tree is a migrated relay (its log is a copy of it), unless it
    // is empty: a new or lost database, which the whole log must fill.
    let empty = tree.scan_prefix([super::T_HEADS]).next().is_none();
    let applied = match applied {
        Some(a) => a,
        None if empty => LogPos::START,
        None => end.end,
    };
    if format == 1 {
        let mut b = sled::Batch::default();
        b.insert(META_FORMAT, &[RELAY_FORMAT][..]);
        b.insert(META_LOG, &applied.encode()[..]);
        tree.apply_batch(b).map_err(sled_error)?;
    } else if format < RELAY_FORMAT {
        // Formats 2 to 10: the new records and tables start empty, but for
        // when each entry came (format 11), unknown before: taken as now.
        let now = super::now_ms().to_be_bytes();
        let mut b = sled::Batch::default();
        for row in tree.scan_prefix([super::T_FEEDS]) {
            let (k, v) = row.map_err(sled_error)?;
            if let Ok(env) = hearth_core::Envelope::decode(&v)
                && env.pack.is_some()
                && env.header.epoch != hearth_core::META_EPOCH
            {
                let mut k = k.to_vec();
                k[0] = super::T_ARRIVED;
                b.insert(k, &now[..]);
            }
        }
        b.insert(META_FORMAT, &[RELAY_FORMAT][..]);
        tree.apply_batch(b).map_err(sled_error)?;
    }
    Ok(Standing::Usable { applied, end: end.end })
}

/// The end of the log's readable part (from its start).
pub(super) fn log_end(log_dir: &Path) -> Result<LogPos> {
    Ok(scan_log(log_dir, LogPos::START, |_| Ok(true))?.end)
}

/// Write the log of a format 1 relay from its sled tree (every feed in order),
/// into `log.tmp/`, renamed to `log/` once durable.
pub(super) fn migrate(dir: &Path, tree: &sled::Tree) -> Result<()> {
    let tmp = dir.join(LOG_TMP_DIR);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let mut log = FeedLog::create(&tmp)?;
    let mut buf = Vec::new();
    let mut n = 0usize;
    let commit = postcard::to_stdvec(&LogCommit::default()).expect("a commit encodes");
    // F keys sort by wire, device, seq: each feed in order.
    for row in tree.scan_prefix([super::T_FEEDS]) {
        let (_, v) = row.map_err(sled_error)?;
        encode_log_record(&mut buf, log_kind::ENTRY, &v);
        n += 1;
        if n.is_multiple_of(MIGRATE_BATCH) {
            encode_log_record(&mut buf, log_kind::COMMIT, &commit);
            log.append(&buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        encode_log_record(&mut buf, log_kind::COMMIT, &commit);
        log.append(&buf)?;
    }
    log.sync()?;
    drop(log);
    fs::rename(&tmp, dir.join(hearth_store::LOG_DIR))?;
    hearth_store::sync_dir(dir)?;
    Ok(())
}

/// Migrate a format 1 relay: copy its sled durably, write the log from the
/// copy, drop the copy. The original sled is never opened before the log
/// exists.
pub(super) fn migrate_from_copy(dir: &Path, tree_name: &str) -> Result<()> {
    let copy = dir.join(DB_COPY_DIR);
    if copy.exists() {
        fs::remove_dir_all(&copy)?;
    }
    hearth_store::copy_dir_durably(&dir.join(super::DB_DIR), &copy)?;
    {
        let cfg = sled::Config::new().path(&copy).flush_every_ms(None);
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hearth_store::open_sled_config(&cfg)))
            .unwrap_or_else(|_| Err(sled::Error::Unsupported("sled panicked while opening it".into())))
            .map_err(sled_error)?;
        let tree = db.open_tree(tree_name).map_err(sled_error)?;
        migrate(dir, &tree)?;
    }
    fs::remove_dir_all(&copy)?;
    Ok(())
}

/// Remove a migration that did not finish.
pub(super) fn clear_unfinished(dir: &Path) -> Result<()> {
    for d in [LOG_TMP_DIR, DB_COPY_DIR] {
        if dir.join(d).exists() {
            fs::remove_dir_all(dir.join(d))?;
        }
    }
    Ok(())
}

impl Inner {
    /// Apply the log's batches after `from` to sled (a catch-up after a
    /// crash, or a whole rebuild from `LogPos::START`).
    pub(super) fn catch_up(&self, from: LogPos) -> Result<u64> {
        let log_dir = self.dir.join(hearth_store::LOG_DIR);
        let mut batches = 0u64;
        scan_log(&log_dir, from, |b: LogBatch| {
            batches += 1;
            let end = b.end;
            let mut by_wire: std::collections::BTreeMap<hearth_core::WireId, Vec<Vec<u8>>> = Default::default();
            let mut batch = sled::Batch::default();
            let mut forks = 0;
            // When the batch was taken (its commit record's clock, from relay
            // format 11; before, unknown: taken as now).
            let arrived = b
                .records
                .iter()
                .rev()
                .find(|r| r.kind == log_kind::COMMIT)
                .and_then(|r| postcard::from_bytes::<LogCommit>(&r.body).ok())
                .map(|c| c.hlc)
                .filter(|t| *t > 0)
                .unwrap_or_else(super::now_ms);
            for r in b.records {
                match r.kind {
                    log_kind::ENTRY => {
                        let env = hearth_core::Envelope::decode(&r.body)?;
                        by_wire.entry(env.header.wire).or_default().push(r.body);
                    }
                    // A proof that does not check is skipped: it only ever
                    // reported a fork, and entries are what the log is for.
                    log_kind::FORK => {
                        if let Ok((_, fork)) = hearth_core::ForkProof::decode(&r.body) {
                            let k = super::prefixed(super::T_FORKS, &fork.wire, &fork.device);
                            if self.tree().get(k).map_err(sled_error)?.is_none() {
                                forks += 1;
                            }
                            batch.insert(&k[..], r.body);
                        }
                    }
                    // Checked when taken; one that does not decode now is
                    // skipped (it only ever refused entries).
                    log_kind::REVOKE => {
                        if let Some((wire, device, h)) = super::Held::check(r.body) {
                            batch.insert(&super::prefixed(super::T_REVOKED, &wire, &device)[..], &h.bytes[..]);
                            let mut st = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                            st.revoked.entry(wire).or_default().entry(device).or_insert(h);
                        }
                    }
                    log_kind::CERT => {
                        if let Some((wire, cert, by)) = r
                            .body
                            .get(..32)
                            .and_then(|w| super::members::decode_cert(w, &r.body[32..]))
                        {
                            batch.insert(
                                &super::members::user_key(super::members::T_CERTS, &wire, &by.user)[..],
                                &r.body[32..],
                            );
                            self.state
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .take_cert(wire, cert, by);
                        }
                    }
                    log_kind::REMOVE => {
                        if let Ok(n) = hearth_core::peer::RemovalNotice::decode_kept(&r.body) {
                            let key = super::members::user_key(super::members::T_REMOVED, &n.wire, &n.user);
                            let kept = self
                                .state
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .take_removal(n);
                            if kept {
                                batch.insert(&key[..], &r.body[..]);
                            }
                        }
                    }
                    log_kind::DROP => self.replay_drop(&mut batch, &r.body)?,
                    log_kind::GRANT => {
                        if let Some((wire, key)) = super::decode_grant(&r.body) {
                            batch.insert(&super::grant_key(&wire)[..], &r.body[32..]);
                            self.state
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .grants
                                .entry(wire)
                                .or_insert(key);
                        }
                    }
                    _ => {}
                }
            }
            for (wire, entries) in by_wire {
                self.ingest_at(&wire, entries, Some(end), arrived)?;
            }
            self.state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .forks += forks;
            batch.insert(META_LOG, &end.encode()[..]);
            self.tree().apply_batch(batch).map_err(sled_error)?;
            Ok(true)
        })?;
        Ok(batches)
    }

    /// Log accepted entries (fsynced: the acknowledgement is a promise kept
    /// across a power cut), then apply their sled rows with the log position
    /// reached. When replaying the log, `replay` is that position and nothing
    /// is logged again.
    pub(super) fn write(
        &self,
        w: &mut Writer,
        mut batch: sled::Batch,
        records: &[(u8, &[u8])],
        replay: Option<LogPos>,
    ) -> Result<()> {
        // A replayed batch may span several channels, each written here on
        // its own: only `catch_up` records the position, once all are in, or
        // an interrupted replay would skip the rest.
        let end = match replay {
            Some(_) => None,
            None => Some({
                let mut buf = Vec::new();
                for (kind, body) in records {
                    encode_log_record(&mut buf, *kind, body);
                }
                // A relay's commit carries the time (unix ms) in its clock:
                // when the batch's entries were taken, for the retention.
                let commit = LogCommit {
                    watermark: 0,
                    hlc: super::now_ms(),
                };
                let commit = postcard::to_stdvec(&commit).expect("a commit encodes");
                encode_log_record(&mut buf, log_kind::COMMIT, &commit);
                let end = w.log.append(&buf)?;
                w.log.sync()?;
                w.since_checkpoint += buf.len() as u64;
                end
            }),
        };
        if let Some(end) = end {
            batch.insert(META_LOG, &end.encode()[..]);
        }
        self.tree().apply_batch(batch).map_err(sled_error)?;
        if w.since_checkpoint >= CHECKPOINT_BYTES {
            self.checkpoint(w)?;
        }
        Ok(())
    }

    /// Make sled durable: record how far the log is durable, flush, fsync
    /// every file of sled.
    pub(super) fn checkpoint(&self, w: &mut Writer) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        self.tree()
            .insert(META_LOG_SYNCED, &w.log.synced().encode()[..])
            .map_err(sled_error)?;
        self.db().flush().map_err(sled_error)?;
        w.sled_files.sync()?;
        w.since_checkpoint = 0;
        Ok(())
    }
}
