//! Making the engine's state durable: feed-log batches written ahead of their
//! sled batches, checkpoints (log, then sled and every file of it), epoch
//! snapshots and the eviction that takes them. ARCHITECTURE.md, "Durability",
//! has the order and why.

use hearth_core::{ChannelId, Epoch, META_EPOCH};

use crate::engine::{Engine, summary_row};
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::{self, kind};

impl Engine {
    /// Queue a record for the feed log; it goes with the next sled batch.
    pub(crate) fn log_record(&mut self, kind: u8, body: &[u8]) {
        if !self.replaying {
            log::encode_record(&mut self.log_buf, kind, body);
        }
    }

    /// Seal a log record that is not already sealed (identity, channel keys,
    /// commit) under the record key, bound to its kind.
    pub(crate) fn seal_log(&self, kind: u8, plain: &[u8]) -> Result<Vec<u8>> {
        crate::recover::seal(&self.records, kind, plain)
    }

    /// Write the queued log records, closed by a commit record, to the log,
    /// and record the log position reached in `batch`, which the caller
    /// applies next: sled never holds a row the log does not (see
    /// [`crate::log`]). Nothing to write, nothing done.
    pub(crate) fn write_log_batch(&mut self, batch: &mut sled::Batch) -> Result<()> {
        if self.log_buf.is_empty() {
            return Ok(());
        }
        let commit = log::Commit {
            watermark: self.watermark,
            hlc: self.hlc.last().0,
        };
        let sealed = self.seal_log(kind::COMMIT, &postcard::to_stdvec(&commit).expect("commit encodes"))?;
        log::encode_record(&mut self.log_buf, kind::COMMIT, &sealed);
        let end = self.log.append(&self.log_buf);
        self.log_buf.clear();
        let end = end?;
        batch.insert(META_LOG, &end.encode()[..]);
        self.logged = Some((self.watermark, end));
        Ok(())
    }

    /// Drop least recently used epochs beyond the cache size, snapshotting those
    /// with a long tail first. Never drops an epoch with staged ops.
    pub(crate) fn evict(&mut self) -> Result<()> {
        while self.epochs.len() > self.config.cached_epochs {
            let victim = self
                .epochs
                .iter()
                .filter(|(k, _)| !self.touched.contains_key(k))
                .min_by_key(|(_, le)| le.used)
                .map(|(k, _)| *k);
            let Some((channel, epoch)) = victim else { break };
            // Posts whose changes never reached automerge (`EpochDoc`'s
            // deferred posts) are not brought in to be snapshotted on their
            // way out: a later read loads the epoch from its entries, which
            // costs what bringing them in would.
            if !self
                .epochs
                .get(&(channel, epoch))
                .is_some_and(|le| le.doc.has_deferred())
            {
                self.maybe_snapshot(channel, epoch, self.config.snapshot_entries)?;
            }
            if let Some(le) = self.epochs.remove(&(channel, epoch))
                && epoch == META_EPOCH
            {
                self.retention_known.insert(channel, le.view.retention);
            }
        }
        Ok(())
    }

    /// Snapshot an epoch if at least `min_tail` entries follow its snapshot.
    pub(crate) fn maybe_snapshot(&mut self, channel: ChannelId, epoch: Epoch, min_tail: u64) -> Result<()> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        let Some(le) = self.epochs.get_mut(&(channel, epoch)) else {
            return Ok(());
        };
        let Some(s) = ch.summaries.get_mut(&epoch) else {
            return Ok(());
        };
        if s.entries == 0 || s.entries - s.snapshot_upto < min_tail.max(1) {
            return Ok(());
        }
        let wire = ch.keys.wire();
        let bytes = le.doc.save()?;
        let mut batch = sled::Batch::default();
        let chunks: Vec<&[u8]> = bytes.chunks(SNAPSHOT_CHUNK).collect();
        let count = u16::try_from(chunks.len()).map_err(|_| Error::TooLarge {
            what: "epoch snapshot".into(),
            size: bytes.len(),
            limit: SNAPSHOT_CHUNK * u16::MAX as usize,
        })?;
        for (i, c) in chunks.iter().enumerate() {
            let k = snap_key(&wire, epoch, i as u16);
            batch.insert(&k[..], seal_record(&self.records, &k, c)?);
        }
        for i in count..s.snapshot_chunks {
            batch.remove(&snap_key(&wire, epoch, i)[..]);
        }
        s.snapshot_upto = s.entries;
        s.snapshot_chunks = count;
        let (k, v) = summary_row(&self.records, &wire, epoch, s)?;
        batch.insert(&k[..], v);
        self.summary_rows.remove_in(&wire, &mut batch);
        self.tree.apply_batch(batch)?;
        self.dirty = true;
        Ok(())
    }

    /// Make everything written so far durable: first the feed log, then sled
    /// (flushed, then every file of it fsynced by us: sled 0.34's flush ends
    /// in sync_file_range, which does not survive power loss, and it never
    /// fsyncs its blob files). The log's synced position goes into sled
    /// between the two, so sled never names a durable log position that is not.
    pub(crate) fn checkpoint(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        self.apply_prune_rows()?;
        self.log.sync()?;
        crash_point!("checkpoint.log_synced");
        self.tree.insert(META_LOG_SYNCED, &self.log.synced().encode()[..])?;
        let flushed = self.db.flush()?;
        crash_point!("checkpoint.sled_flushed");
        self.sled_files.sync()?;
        crash_point!("checkpoint.synced");
        self.dirty = false;
        self.own_unsynced = false;
        tracing::debug!(
            log = %self.log.synced(),
            sled_bytes = flushed,
            micros = started.elapsed().as_micros() as u64,
            "checkpoint"
        );
        Ok(())
    }

    /// Snapshot every loaded epoch with a tail (on close).
    pub(crate) fn snapshot_all(&mut self) -> Result<()> {
        let keys: Vec<(ChannelId, Epoch)> = self.epochs.keys().copied().collect();
        for (c, e) in keys {
            self.maybe_snapshot(c, e, 1)?;
        }
        Ok(())
    }
}
