//! Retention: a channel keeps its messages for a time its admins set
//! (`Op::SetRetention`, CRDT data in the metadata epoch), on every member's
//! device.
//!
//! A message older than the retention (by the time in its id) is expired:
//! no read shows it (pages, threads, single messages, exports, counts), and
//! the store drops its texts a few epochs at a time in the background, the
//! way a delete drops them ([`crate::prune`]): from the epoch document and
//! from every stored entry that carries them (a pack sealed again without
//! them, kept for relays as a `TextDrop`), and the next compaction, which
//! that schedules, takes the old bytes out of every file. A peer that was
//! away longer than the retention, or a member that joins later, receives
//! entries whose packs no longer hold the expired texts, and hides what it
//! still holds the same way.

use hearth_core::{ChannelId, Epoch, META_EPOCH, MessageId, Timestamp};

use crate::engine::{Engine, now_ms};
use crate::error::Result;

impl Engine {
    /// The channel's retention, in seconds (`None`: for ever).
    pub(crate) fn retention(&mut self, channel: &ChannelId) -> Result<Option<u64>> {
        self.channel(channel)?;
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        Ok(self.loaded(channel, META_EPOCH).and_then(|le| le.view.retention))
    }

    /// The time before which the channel's messages are expired (`None`:
    /// no retention).
    pub(crate) fn expired_before(&mut self, channel: &ChannelId) -> Result<Option<Timestamp>> {
        Ok(self
            .retention(channel)?
            .map(|secs| Timestamp::from_millis(now_ms().saturating_sub(secs.saturating_mul(1000)))))
    }

    /// The lowest message id that is not expired (ids order by time
    /// first): every message below it is (`None`: no retention).
    pub(crate) fn expiry_floor(&mut self, channel: &ChannelId) -> Result<Option<MessageId>> {
        Ok(self.expired_before(channel)?.map(|ts| {
            let mut b = [0u8; MessageId::LEN];
            b[..8].copy_from_slice(&ts.0.to_be_bytes());
            MessageId(b)
        }))
    }

    /// Messages of the channel that are not expired, replies and tombstones
    /// included (the summaries' count, less what expired).
    pub(crate) fn live_message_count(&mut self, channel: &ChannelId) -> Result<u64> {
        let Some(floor) = self.expiry_floor(channel)? else {
            return Ok(self.channel(channel)?.message_count());
        };
        let mut total = 0;
        let mut straddling = Vec::new();
        for (e, s) in &self.channel(channel)?.summaries {
            match (s.min, s.max) {
                _ if *e == META_EPOCH => {}
                (Some(min), _) if min >= floor => total += s.messages,
                (_, Some(max)) if max < floor => {}
                (None, _) | (_, None) => {}
                _ => straddling.push(*e),
            }
        }
        for e in straddling {
            if self.ensure_epoch(*channel, e, false)?
                && let Some(le) = self.loaded(channel, e)
            {
                total += le.view.messages().filter(|m| m.id >= floor).count() as u64;
            }
        }
        Ok(total)
    }

    /// Drop the texts of expired messages, in at most `budget` epochs (the
    /// oldest first); returns how many messages lost texts. The stored
    /// entries are rewritten once the open group is applied
    /// ([`Engine::apply_prune_rows`]).
    pub(crate) fn expire(&mut self, budget: usize) -> Result<u64> {
        let mut dropped = 0u64;
        let mut left = budget;
        let channels: Vec<ChannelId> = self.channels.keys().copied().collect();
        for channel in channels {
            if left == 0 {
                break;
            }
            let Some(cutoff) = self.expired_before(&channel)? else {
                continue;
            };
            let done = self.expired.get(&channel).cloned().unwrap_or_default();
            let due: Vec<(Epoch, bool)> = self
                .channel(&channel)?
                .summaries
                .iter()
                .filter(|(e, _)| **e != META_EPOCH && !done.contains(e))
                .filter_map(|(e, s)| {
                    let (min, max) = (s.min?, s.max?);
                    (min.timestamp() < cutoff).then_some((*e, max.timestamp() < cutoff))
                })
                .collect();
            for (epoch, whole) in due {
                if left == 0 {
                    break;
                }
                left -= 1;
                if !self.ensure_epoch(channel, epoch, false)? {
                    continue;
                }
                let expired: Vec<MessageId> = self
                    .loaded(&channel, epoch)
                    .map(|le| {
                        le.view
                            .messages()
                            .filter(|m| m.id.timestamp() < cutoff)
                            .map(|m| m.id)
                            .filter(|id| !le.doc.text_ids(id).is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                for msg in &expired {
                    self.drop_texts(channel, epoch, msg, true)?;
                }
                if !expired.is_empty() {
                    // The view shows those texts as dropped now, as one
                    // read back from the document does.
                    let devices = self.channel(&channel)?.devices.clone();
                    if let Some(le) = self.epochs.get_mut(&(channel, epoch)) {
                        le.view = le.doc.view(&devices);
                    }
                }
                dropped += expired.len() as u64;
                if whole {
                    self.expired.entry(channel).or_default().insert(epoch);
                }
            }
        }
        Ok(dropped)
    }
}
