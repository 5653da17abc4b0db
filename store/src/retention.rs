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
use crate::layout::{expired_key, open_record, seal_record};

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
    /// first): every message below it is (`None`: nothing expired). It
    /// never goes back: a retention lengthened or turned off leaves what
    /// expired expired (its texts are gone).
    pub(crate) fn expiry_floor(&mut self, channel: &ChannelId) -> Result<Option<MessageId>> {
        let now = self.expired_before(channel)?.map(|ts| {
            let mut b = [0u8; MessageId::LEN];
            b[..8].copy_from_slice(&ts.0.to_be_bytes());
            MessageId(b)
        });
        Ok(now.max(self.expired_high(channel)?))
    }

    /// The highest floor applied in the channel (`M expired`).
    fn expired_high(&mut self, channel: &ChannelId) -> Result<Option<MessageId>> {
        if let Some(h) = self.expired_high.get(channel) {
            return Ok(*h);
        }
        let k = expired_key(&self.channel(channel)?.keys.wire());
        let high = match self.tree.get(&k)? {
            Some(v) => {
                let plain = open_record(&self.records, &k, &v)?;
                let id: [u8; MessageId::LEN] = plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| crate::error::Error::corrupted("expiry floor", "not a message id"))?;
                Some(MessageId(id))
            }
            None => None,
        };
        self.expired_high.insert(*channel, high);
        Ok(high)
    }

    /// Record that the channel expired up to `floor`.
    fn raise_expired(&mut self, channel: &ChannelId, floor: MessageId) -> Result<()> {
        if self.expired_high(channel)?.is_some_and(|h| h >= floor) {
            return Ok(());
        }
        let k = expired_key(&self.channel(channel)?.keys.wire());
        self.tree.insert(&k, seal_record(&self.records, &k, &floor.0)?)?;
        self.expired_high.insert(*channel, Some(floor));
        self.dirty = true;
        Ok(())
    }

    /// Whether `msg` is a reply whose thread's root expired: the thread
    /// went with its root (no read reaches its replies any more).
    pub(crate) fn root_expired(&mut self, channel: &ChannelId, msg: &MessageId) -> Result<bool> {
        let Some(floor) = self.expiry_floor(channel)? else {
            return Ok(false);
        };
        if !self.ensure_epoch(*channel, msg.epoch(), false)? {
            return Ok(false);
        }
        Ok(self
            .loaded(channel, msg.epoch())
            .and_then(|le| le.view.get(msg))
            .and_then(|m| m.reply_to)
            .is_some_and(|root| root < floor))
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

    /// Drop the texts of expired messages, loading at most `budget` epochs
    /// (the channels take turns); returns how many messages lost texts.
    /// Each epoch is looked at only for the messages that expired since the
    /// last pass (or all of it again, when a message came into it since).
    /// The stored entries are rewritten once the open group is applied
    /// ([`Engine::apply_prune_rows`]).
    pub(crate) fn expire(&mut self, budget: usize) -> Result<u64> {
        let mut dropped = 0u64;
        let mut left = budget;
        let channels: Vec<ChannelId> = self.channels.keys().copied().collect();
        if channels.is_empty() {
            return Ok(0);
        }
        let start = self.expire_turn % channels.len();
        self.expire_turn = self.expire_turn.wrapping_add(1);
        for channel in channels[start..].iter().chain(&channels[..start]).copied() {
            if left == 0 {
                break;
            }
            let Some(floor) = self.expiry_floor(&channel)? else {
                continue;
            };
            let before = dropped;
            // Epochs with messages below the floor not looked at since they
            // expired (their count unchanged since the last pass).
            let due: Vec<(Epoch, MessageId, u64)> = self
                .channel(&channel)?
                .summaries
                .iter()
                .filter(|(e, _)| **e != META_EPOCH)
                .filter_map(|(e, s)| {
                    let min = s.min?;
                    if min >= floor {
                        return None;
                    }
                    let from = match self.expired.get(&(channel, *e)) {
                        Some((done, count)) if *count == s.messages => *done,
                        _ => min,
                    };
                    let max = s.max?;
                    (from < floor && from <= max).then_some((*e, from, s.messages))
                })
                .collect();
            for (epoch, from, count) in due {
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
                            .ids_in(from..floor)
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
                self.expired.insert((channel, epoch), (floor, count));
            }
            // Only a pass that dropped texts moves the mark: those messages
            // cannot come back with their texts.
            if dropped > before {
                self.raise_expired(&channel, floor)?;
            }
        }
        Ok(dropped)
    }
}
