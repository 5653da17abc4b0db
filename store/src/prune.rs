//! Deletes that delete: the texts of a deleted message leave the store.
//!
//! A text rides in a segment of the feed entry that posts or edits it
//! ([`hearth_core::content`]); the entry signs each segment's id and hash,
//! not its bytes, so dropping them leaves the feed verifiable. When a delete
//! counts (the view says the message is deleted, whoever's store it
//! reaches), its texts are dropped from the epoch document and from any
//! entry not closed yet (a post deleted in the same group never leaves in a
//! segment), and every stored entry that carries them is rewritten without
//! their bytes (`F` rows), once the batch that wrote it is applied. The feed
//! log, sled's old pages and the journal still hold the old bytes until the
//! next compaction ([`crate::compact`]; run by hand so far).
//!
//! Nothing here has to survive a crash: an epoch that loads with a text of a
//! deleted message still held (a crash between the batch of a delete and
//! the rewrite of the rows, a rebuild from a log that still holds the
//! segment) drops it again then. The one text a load would not find, an
//! older edit's that arrives after its message's delete (the document names
//! only a message's current texts), never reaches a row: the ingest stores
//! its entry without it, in the same batch (`crate::sync`).

use std::collections::BTreeMap;

use hearth_core::{ChannelId, ContentId, DeviceId, Envelope, Epoch, MessageId, WireId};

use crate::engine::Engine;
use crate::error::Result;
use crate::layout::{MAX_DROPS_PER_CHANNEL, META_COMPACT_DUE, T_DROPS, feed_key, seal_record};

/// Stored entries whose segment bytes go: (wire, device, seq) -> content ids.
pub(crate) type PruneRows = BTreeMap<(WireId, DeviceId, u64), Vec<ContentId>>;

impl Engine {
    /// Drop the texts of every message queued as deleted whose deletion
    /// counts from documents and pending segments, and note the stored
    /// entries to rewrite ([`Engine::apply_prune_rows`]).
    pub(crate) fn run_prunes(&mut self) -> Result<()> {
        while !self.prune_queue.is_empty() {
            let queue = std::mem::take(&mut self.prune_queue);
            for (channel, epoch, msg) in queue {
                if self.ensure_epoch(channel, epoch, false)? {
                    self.drop_texts_of(channel, epoch, &msg)?;
                }
            }
        }
        Ok(())
    }

    /// Drop the texts of `msg` if the view says it is deleted.
    pub(crate) fn drop_texts_of(&mut self, channel: ChannelId, epoch: Epoch, msg: &MessageId) -> Result<()> {
        self.drop_texts(channel, epoch, msg, false)
    }

    /// Drop the texts of `msg`: when the view says it is deleted, or
    /// whatever it says with `expired` (retention).
    pub(crate) fn drop_texts(
        &mut self,
        channel: ChannelId,
        epoch: Epoch,
        msg: &MessageId,
        expired: bool,
    ) -> Result<()> {
        let wire = self.channel(&channel)?.keys.wire();
        let Some(le) = self.epochs.get(&(channel, epoch)) else {
            return Ok(());
        };
        // Only a delete that counts (the author's, by the view's rules).
        if !expired && !le.view.is_deleted(msg) {
            return Ok(());
        }
        // All of its texts, an edit's older ones too.
        self.attribute_texts(channel, epoch)?;
        let Some(le) = self.epochs.get_mut(&(channel, epoch)) else {
            return Ok(());
        };
        let ids = le.doc.text_ids(msg);
        if ids.is_empty() {
            return Ok(());
        }
        le.doc.drop_texts(&ids);
        for id in ids {
            for (device, seq) in le.segments.remove(&id).unwrap_or_default() {
                self.prune_rows.entry((wire, device, seq)).or_default().push(id);
            }
        }
        Ok(())
    }

    /// Tell the loaded epoch's document the messages of the format 5 texts
    /// it holds without them (loaded from packs, which do not say): the
    /// changes of the entries that carry them are opened and decoded, once
    /// an epoch is loaded, and only when a delete or an expiry needs it.
    pub(crate) fn attribute_texts(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let Some(le) = self.epochs.get(&(channel, epoch)) else {
            return Ok(());
        };
        if !le.doc.unattributed() {
            return Ok(());
        }
        let entries: std::collections::BTreeSet<(DeviceId, u64)> = le
            .doc
            .unattributed_ids()
            .iter()
            .filter_map(|id| le.segments.get(id))
            .flatten()
            .copied()
            .collect();
        let ch = self.channel(&channel)?;
        let wire = ch.keys.wire();
        let mut named = Vec::new();
        for (device, seq) in entries {
            let Some(bytes) = self.tree.get(feed_key(&wire, &device, seq))? else {
                continue;
            };
            // An entry that no longer opens names nothing.
            if let Ok((_, slots)) = Envelope::decode(&bytes).and_then(|e| e.slots(&ch.keys)) {
                named.extend(slots.into_iter().map(|(_, msg, id)| (msg, id)));
            }
        }
        if let Some(le) = self.epochs.get_mut(&(channel, epoch)) {
            le.doc.attribute(named);
        }
        Ok(())
    }

    /// Rewrite the stored entries noted by [`Engine::run_prunes`] without
    /// the dropped segments' bytes. Called once the batches that wrote them
    /// are applied.
    pub(crate) fn apply_prune_rows(&mut self) -> Result<()> {
        if self.prune_rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.prune_rows);
        let mut batch = sled::Batch::default();
        let mut dropped = 0u64;
        let mut drops_in = std::collections::BTreeSet::new();
        for ((wire, device, seq), ids) in rows {
            // The channel's front page may hold the texts that go.
            self.unfront(&wire, &mut batch);
            let k = feed_key(&wire, &device, seq);
            let Some(bytes) = self.tree.get(k)? else { continue };
            let mut env = Envelope::decode(&bytes)?;
            let Some(keys) = self
                .by_wire
                .get(&wire)
                .and_then(|c| self.channels.get(c))
                .map(|ch| &ch.keys)
            else {
                continue;
            };
            env.retain_texts(keys, |id| !ids.contains(id))?;
            let now = env.encode();
            if now != bytes.as_ref() {
                // The entry as it was is dead in the log and sled's old
                // pages, whole (a format 5 pack can even grow).
                dropped += bytes.len() as u64;
                batch.insert(&k[..], now);
                // For the relays, which hold the entry and cannot open it.
                if env.header.version >= hearth_core::ENVELOPE_V4 {
                    keep_drop(&mut batch, &env);
                    drops_in.insert(wire);
                }
            }
        }
        self.note_dropped(&mut batch, dropped)?;
        self.tree.apply_batch(batch)?;
        self.cap_drops(drops_in)?;
        self.dirty = true;
        Ok(())
    }

    /// Debug builds (every test): no entry the batch just written stored
    /// carries a text the prune after it drops (the batch stores such an
    /// entry without it: a crash between the two must not leave it).
    #[cfg(debug_assertions)]
    pub(crate) fn assert_stored_pruned(&self, wire: &WireId, stored: &std::collections::BTreeSet<(DeviceId, u64)>) {
        let Some(keys) = self
            .by_wire
            .get(wire)
            .and_then(|c| self.channels.get(c))
            .map(|ch| &ch.keys)
        else {
            return;
        };
        for ((w, device, seq), ids) in &self.prune_rows {
            if w != wire || !stored.contains(&(*device, *seq)) {
                continue;
            }
            let Ok(Some(bytes)) = self.tree.get(feed_key(w, device, *seq)) else {
                continue;
            };
            let Ok(mut env) = Envelope::decode(&bytes) else {
                continue;
            };
            if env.retain_texts(keys, |id| !ids.contains(id)).is_ok() {
                assert!(
                    env.encode() == bytes.as_ref(),
                    "a text the batch found deleted was stored"
                );
            }
        }
    }

    /// Count `bytes` dropped from stored rows towards the next automatic
    /// compaction (`M compactdue`, in `batch`).
    pub(crate) fn note_dropped(&mut self, batch: &mut sled::Batch, bytes: u64) -> Result<()> {
        if bytes > 0 {
            let due = crate::compact::CompactDue::after(self.dropped_since_compaction, bytes);
            let plain = postcard::to_stdvec(&due).expect("compaction due encodes");
            batch.insert(META_COMPACT_DUE, seal_record(&self.records, META_COMPACT_DUE, &plain)?);
            self.dropped_since_compaction = Some(due);
        }
        Ok(())
    }

    /// The oldest text drops of these channels go past the cap.
    pub(crate) fn cap_drops(&mut self, drops_in: std::collections::BTreeSet<WireId>) -> Result<()> {
        for wire in drops_in {
            let prefix = crate::layout::channel_prefix(T_DROPS, &wire);
            let n = self.tree.scan_prefix(prefix).count();
            if n > MAX_DROPS_PER_CHANNEL {
                let mut aged: Vec<(u64, sled::IVec)> = Vec::with_capacity(n);
                for row in self.tree.scan_prefix(prefix) {
                    let (k, v) = row?;
                    aged.push((drop_time(&v), k));
                }
                aged.sort();
                let mut b = sled::Batch::default();
                for (_, k) in aged.into_iter().take(n - MAX_DROPS_PER_CHANNEL) {
                    b.remove(k);
                }
                self.tree.apply_batch(b)?;
            }
        }
        Ok(())
    }

    /// The text drops this store keeps for relays, of the channels it holds.
    /// Newest first (a session hands a relay only so many); a row that does
    /// not decode is left out (it only ever told relays something).
    pub(crate) fn text_drops(&self) -> Result<Vec<hearth_core::peer::TextDrop>> {
        let mut out = Vec::new();
        for row in self.tree.scan_prefix([T_DROPS]) {
            let (_, v) = row?;
            if let Some(d) = v.get(8..).and_then(|b| hearth_core::peer::TextDrop::decode(b).ok()) {
                out.push((drop_time(&v), d));
            }
        }
        out.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// After an epoch loaded: a text of a deleted message still held (a
    /// prune a crash cut short, a rebuild from a log that holds it) is
    /// dropped now.
    pub(crate) fn prune_loaded(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let Some(le) = self.epochs.get(&(channel, epoch)) else {
            return Ok(());
        };
        let mut deleted: Vec<MessageId> = le
            .doc
            .text_messages()
            .into_iter()
            .filter(|m| le.view.is_deleted(m))
            .collect();
        // Format 5 texts loaded from packs: a deleted message the document
        // still names a held text for.
        if le.doc.unattributed() {
            deleted.extend(
                le.view
                    .messages()
                    .filter(|m| m.deleted && !le.doc.text_ids(&m.id).is_empty())
                    .map(|m| m.id),
            );
        }
        for msg in deleted {
            self.drop_texts_of(channel, epoch, &msg)?;
        }
        Ok(())
    }
}

/// Keep `env` (a stored entry that lost texts) as a text drop for the
/// relays (`P` row, in `batch`).
pub(crate) fn keep_drop(batch: &mut sled::Batch, env: &Envelope) {
    let h = &env.header;
    let drop = hearth_core::peer::TextDrop {
        wire: h.wire,
        device: h.device,
        seq: h.seq,
        entry: env.hash(),
        pack: env.pack.clone().map(serde_bytes::ByteBuf::from),
    };
    let mut dk = feed_key(&h.wire, &h.device, h.seq);
    dk[0] = T_DROPS;
    let mut v = crate::engine::now_ms().to_be_bytes().to_vec();
    v.extend_from_slice(&drop.encode());
    batch.insert(&dk[..], v);
}

/// When a `P` row's drop was made (unix ms; 0 for a row too short).
fn drop_time(v: &[u8]) -> u64 {
    v.get(..8)
        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}
