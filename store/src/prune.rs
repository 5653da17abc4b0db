//! Deletes that delete: the texts of a deleted message leave the store.
//!
//! A text rides in a segment of the feed entry that posts or edits it
//! ([`hearth_core::content`]); segments are outside the entry's signature and
//! hash, so dropping one leaves the feed verifiable. When a delete counts
//! (the view says the message is deleted, whoever's store it reaches), its
//! texts are dropped from the epoch document, from any entry not closed yet
//! (a post deleted in the same group never leaves in a segment), and from
//! every stored entry that carries them (`F` rows rewritten). The feed log,
//! sled's old pages and the journal still hold the old bytes until the next
//! compaction ([`crate::compact`]), which this schedules. A rebuild from the
//! log drops them again: the delete is in the log too.

use std::collections::BTreeMap;

use hearth_core::{ContentId, DeviceId, Envelope, WireId};

use crate::engine::Engine;
use crate::error::Result;
use crate::layout::feed_key;

impl Engine {
    /// Drop the texts of every message queued as deleted whose deletion
    /// counts, from documents, pending segments and stored entries.
    pub(crate) fn run_prunes(&mut self) -> Result<()> {
        if self.prune_queue.is_empty() {
            return Ok(());
        }
        let queue = std::mem::take(&mut self.prune_queue);
        let mut rows: BTreeMap<(WireId, DeviceId, u64), Vec<ContentId>> = BTreeMap::new();
        let mut dropped = 0usize;
        for (channel, epoch, msg) in queue {
            if !self.ensure_epoch(channel, epoch, false)? {
                continue;
            }
            let wire = self.channel(&channel)?.keys.wire();
            let le = self.epochs.get_mut(&(channel, epoch)).expect("ensure_epoch loaded it");
            // Only a delete that counts (the author's, by the view's rules).
            if !le.view.get(&msg).is_some_and(|m| m.deleted) {
                continue;
            }
            let ids = le.doc.text_ids(&msg);
            dropped += ids.len();
            le.doc.drop_texts(&ids);
            for id in ids {
                if let Some((device, seq)) = le.segments.remove(&id) {
                    rows.entry((wire, device, seq)).or_default().push(id);
                }
            }
        }
        if rows.is_empty() {
            self.compaction_owed |= dropped > 0;
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for ((wire, device, seq), ids) in rows {
            let k = feed_key(&wire, &device, seq);
            let Some(bytes) = self.tree.get(k)? else { continue };
            let mut env = Envelope::decode(&bytes)?;
            if env.drop_segments(&ids) > 0 {
                batch.insert(&k[..], env.encode());
            }
        }
        self.tree.apply_batch(batch)?;
        self.dirty = true;
        self.compaction_owed = true;
        Ok(())
    }
}
