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
//!
//! An epoch whose every message expired, and which is not the channel's
//! newest, dies: its document, snapshot, epoch log and summary are dropped,
//! and each of its stored entries is cut to a stub (the body pruned to its
//! hash: the feed still verifies and chains, and opens to nothing). Peers
//! receive the stubs and take them into their feeds; the epoch of one dies
//! there too when it is behind the newest and nothing shown in it, or
//! coming with it, is younger than the retention
//! ([`Engine::epochs_to_kill`]); an entry of a dead epoch that comes later
//! is cut to a stub on arrival. Dead epochs are listed in `M dead` (store
//! format 12); a rebuild from a compacted log learns them again from the
//! stubs.

use std::collections::{BTreeMap, BTreeSet};

use hearth_core::{ChannelId, Envelope, Epoch, META_EPOCH, MessageId, Timestamp};

use crate::engine::{Engine, now_ms};
use crate::error::Result;
use crate::layout::{
    T_ELOG, T_EPOCHS, T_SNAPS, T_UNOPENED, channel_prefix, dead_key, decode_elog_value, epoch_key, expired_key,
    feed_key, open_record, seal_record, stubbed_key, unopened_key,
};

/// `bytes` (an entry) cut to a stub, with the bytes that saves; `None` when
/// it is one already, or of a format that cannot be (before format 3).
pub(crate) fn stub_of(bytes: &[u8]) -> Result<Option<(Envelope, Vec<u8>)>> {
    let mut env = Envelope::decode(bytes)?;
    if env.pruned.is_some() || env.header.version < hearth_core::ENVELOPE_V3 {
        return Ok(None);
    }
    env.prune_body();
    let stub = env.encode();
    Ok(Some((env, stub)))
}

impl Engine {
    /// The channel's retention, in seconds (`None`: for ever).
    pub(crate) fn retention(&mut self, channel: &ChannelId) -> Result<Option<u64>> {
        self.channel(channel)?;
        if self.loaded(channel, META_EPOCH).is_none()
            && let Some(known) = self.retention_known.get(channel)
        {
            return Ok(*known);
        }
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        Ok(self.loaded(channel, META_EPOCH).and_then(|le| le.view.retention))
    }

    /// The lowest message id that is not expired (ids order by time
    /// first): every message below it is (`None`: nothing expired). It
    /// never goes back: a retention lengthened or turned off leaves what
    /// expired expired (its texts are gone).
    pub(crate) fn expiry_floor(&mut self, channel: &ChannelId) -> Result<Option<MessageId>> {
        let retention = self.retention(channel)?;
        self.expiry_floor_under(channel, retention)
    }

    /// [`Engine::expiry_floor`] of a channel whose retention is `retention`
    /// (seconds), without asking its metadata epoch.
    pub(crate) fn expiry_floor_under(
        &mut self,
        channel: &ChannelId,
        retention: Option<u64>,
    ) -> Result<Option<MessageId>> {
        let now = retention.map(|secs| {
            let ts = Timestamp::from_millis(now_ms().saturating_sub(secs.saturating_mul(1000)));
            let mut b = [0u8; MessageId::LEN];
            b[..8].copy_from_slice(&ts.0.to_be_bytes());
            MessageId(b)
        });
        Ok(now.max(self.expired_high(channel)?))
    }

    /// The highest floor applied in the channel (`M expired`).
    pub(crate) fn expired_high(&mut self, channel: &ChannelId) -> Result<Option<MessageId>> {
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

    /// Record that the channel expired up to `floor`: in sled and in the
    /// feed log (so that a rebuild keeps it).
    fn raise_expired(&mut self, channel: &ChannelId, floor: MessageId) -> Result<()> {
        if self.expired_high(channel)?.is_some_and(|h| h >= floor) {
            return Ok(());
        }
        let wire = self.channel(channel)?.keys.wire();
        let mut plain = wire.0.to_vec();
        plain.extend_from_slice(&floor.0);
        let sealed = self.seal_log(crate::log::kind::EXPIRED, &plain)?;
        self.log_record(crate::log::kind::EXPIRED, &sealed);
        let mut batch = sled::Batch::default();
        self.put_floor(&wire, floor, &mut batch)?;
        self.write_log_batch(&mut batch)?;
        self.tree.apply_batch(batch)?;
        self.expired_high.insert(*channel, Some(floor));
        self.dirty = true;
        Ok(())
    }

    /// The `M expired` row of a channel, in `batch`.
    fn put_floor(&self, wire: &hearth_core::WireId, floor: MessageId, batch: &mut sled::Batch) -> Result<()> {
        let k = expired_key(wire);
        batch.insert(k.clone(), seal_record(&self.records, &k, &floor.0)?);
        Ok(())
    }

    /// A floor replayed from the feed log (`kind::EXPIRED`): raised in
    /// sled if higher. `false`: the record names no channel held here.
    pub(crate) fn replay_floor(&mut self, plain: &[u8]) -> Result<bool> {
        let (Some(wire), Some(id)) = (plain.get(..32), plain.get(32..)) else {
            return Err(crate::error::Error::corrupted("expiry floor record", "too short"));
        };
        let id: [u8; MessageId::LEN] = id
            .try_into()
            .map_err(|_| crate::error::Error::corrupted("expiry floor record", "not a message id"))?;
        let wire = hearth_core::WireId::from_slice(wire)?;
        let Some(channel) = self.by_wire.get(&wire).copied() else {
            return Ok(false);
        };
        let floor = MessageId(id);
        if self.expired_high(&channel)?.is_none_or(|h| h < floor) {
            let mut batch = sled::Batch::default();
            self.put_floor(&wire, floor, &mut batch)?;
            self.tree.apply_batch(batch)?;
            self.expired_high.insert(channel, Some(floor));
            self.dirty = true;
        }
        Ok(true)
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

    /// Of the epochs stubs came for (`fresh`, in this batch, and those of
    /// earlier batches that are not dead), those that die here: below the
    /// newest epoch known, stubs and the batch included (a stub never
    /// kills the epoch new posts go to, nor one ahead of it), with no
    /// message the store shows there or the batch brings that is not
    /// expired (where the store can tell, a stub of a live epoch kills
    /// nothing: it stays in its feed, its change missing, as a dropped
    /// pack's texts are). A stub of an epoch that does not die is kept all
    /// the same, so that its feed goes on, and its epoch is weighed again
    /// with the next batch (a catch-up comes in batches of a few thousand
    /// entries: the epoch that makes an older one die may come later).
    pub(crate) fn epochs_to_kill(
        &mut self,
        channel: &ChannelId,
        fresh: &BTreeSet<Epoch>,
        accepted: &BTreeMap<Epoch, Vec<crate::ingest::Accepted>>,
    ) -> Result<BTreeSet<Epoch>> {
        let ch = self.channel(channel)?;
        if fresh.is_empty() && ch.stubbed.is_empty() {
            return Ok(BTreeSet::new());
        }
        let floor = self.expiry_floor(channel)?;
        let ch = self.channel(channel)?;
        let newest = [
            ch.summaries.keys().next_back(),
            accepted.keys().next_back(),
            ch.stubbed.last(),
            fresh.last(),
            ch.dead.last(),
        ]
        .into_iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(META_EPOCH);
        let expired = |id: &MessageId| floor.is_some_and(|f| *id < f);
        let mut kill = BTreeSet::new();
        for &e in ch.stubbed.union(fresh) {
            if e == META_EPOCH || e >= newest || ch.dead.contains(&e) {
                continue;
            }
            let shown_live = ch.summaries.get(&e).is_some_and(|s| s.max.is_none_or(|m| !expired(&m)));
            let coming_live = accepted
                .get(&e)
                .is_some_and(|list| list.iter().any(|a| a.effects.posts.iter().any(|p| !expired(p))));
            if !shown_live && !coming_live {
                kill.insert(e);
            }
        }
        Ok(kill)
    }

    /// The `M dead` and `M stubbed` rows of a channel, in `batch`.
    pub(crate) fn put_epoch_marks(&self, channel: &ChannelId, batch: &mut sled::Batch) -> Result<()> {
        let ch = self.channel(channel)?;
        let wire = ch.keys.wire();
        for (k, set) in [(dead_key(&wire), &ch.dead), (stubbed_key(&wire), &ch.stubbed)] {
            if set.is_empty() {
                // Always: an insert of the row may be earlier in this very
                // batch (epochs killed one after the other), and sled keeps
                // a batch's last write of a key.
                batch.remove(k);
            } else {
                let plain = postcard::to_stdvec(set).expect("a set of epochs encodes");
                batch.insert(k.clone(), seal_record(&self.records, &k, &plain)?);
            }
        }
        Ok(())
    }

    /// Kill `epoch` of `channel` (see the module docs): its stored entries
    /// cut to stubs, its document's rows removed, all in `batch` (the rows
    /// it reads are applied); returns the bytes that drops. This device's
    /// own entries that carried texts become text drops for the relays.
    pub(crate) fn kill_epoch(&mut self, channel: ChannelId, epoch: Epoch, batch: &mut sled::Batch) -> Result<u64> {
        debug_assert_ne!(epoch, META_EPOCH, "the metadata epoch never dies");
        self.deferred.remove(&(channel, epoch));
        self.cache_dropped(channel, epoch);
        let wire = self.channel(&channel)?.keys.wire();
        self.unfront(&wire, batch);
        let me = self.identity.device();
        let mut dropped = 0u64;
        let mut entries = Vec::new();
        for row in self.tree.scan_prefix(epoch_key(T_ELOG, &wire, epoch)) {
            let (k, v) = row?;
            dropped += (k.len() + v.len()) as u64;
            batch.remove(k);
            entries.push(decode_elog_value(&v)?);
        }
        // Entries held sealed (a key generation not held) whose header
        // names the epoch.
        for row in self.tree.scan_prefix(channel_prefix(T_UNOPENED, &wire)) {
            let (k, _) = row?;
            let device = hearth_core::DeviceId::from_slice(&k[33..49])
                .map_err(|_| crate::Error::corrupted("sled key", "unopened row"))?;
            let seq = crate::layout::key_u64(&k)?;
            if let Some(bytes) = self.tree.get(feed_key(&wire, &device, seq))?
                && Envelope::decode(&bytes)
                    .is_ok_and(|e| e.header.version >= hearth_core::ENVELOPE_V3 && e.header.epoch == epoch)
            {
                batch.remove(&unopened_key(&wire, &device, seq)[..]);
                entries.push((device, seq));
            }
        }
        let mut drops = false;
        for (device, seq) in entries {
            let k = feed_key(&wire, &device, seq);
            let Some(bytes) = self.tree.get(k)? else { continue };
            let mut env = Envelope::decode(&bytes)?;
            if env.pruned.is_some() || env.header.version < hearth_core::ENVELOPE_V3 {
                continue;
            }
            // This device's own entries that carried texts tell the relays
            // that they are gone (format 4 only, as in `crate::prune`).
            let texts = device == me && env.header.version >= hearth_core::ENVELOPE_V4 && env.holds_texts();
            env.prune_body();
            let stub = env.encode();
            dropped += bytes.len().saturating_sub(stub.len()) as u64;
            if texts {
                crate::prune::keep_drop(batch, &env);
                drops = true;
            }
            batch.insert(&k[..], stub);
        }
        for row in self.tree.scan_prefix(epoch_key(T_SNAPS, &wire, epoch)) {
            let (k, v) = row?;
            dropped += (k.len() + v.len()) as u64;
            batch.remove(k);
        }
        batch.remove(&epoch_key(T_EPOCHS, &wire, epoch)[..]);
        self.summary_rows.remove_in(&wire, batch);
        self.epochs.remove(&(channel, epoch));
        self.expired.remove(&(channel, epoch));
        let ch = self.channels.get_mut(&channel).expect("checked above");
        ch.summaries.remove(&epoch);
        ch.cuts.remove(&epoch);
        ch.dead.insert(epoch);
        ch.stubbed.remove(&epoch);
        self.put_epoch_marks(&channel, batch)?;
        if drops {
            self.drops_due.insert(wire);
        }
        Ok(dropped)
    }

    /// Kill every epoch of `channel` whose messages all expired (the
    /// newest and the metadata epoch excepted), at most `budget` of them;
    /// returns how many, and how many messages they held.
    fn kill_expired(&mut self, channel: ChannelId, floor: MessageId, budget: usize) -> Result<(usize, u64)> {
        let ch = self.channel(&channel)?;
        let newest = ch.summaries.keys().next_back().copied();
        let due: Vec<Epoch> = ch
            .summaries
            .iter()
            .filter(|(e, s)| **e != META_EPOCH && Some(**e) != newest && s.max.is_some_and(|m| m < floor))
            .map(|(e, _)| *e)
            .take(budget)
            .collect();
        if due.is_empty() {
            return Ok((0, 0));
        }
        let messages = due.iter().filter_map(|e| ch.summaries.get(e)).map(|s| s.messages).sum();
        // The floor first (in the feed log too): what a kill drops stays
        // expired once the retention is lengthened, even when a crash
        // comes between the two.
        self.raise_expired(&channel, floor)?;
        let mut batch = sled::Batch::default();
        let mut dropped = 0;
        for e in &due {
            dropped += self.kill_epoch(channel, *e, &mut batch)?;
        }
        self.note_dropped(&mut batch, dropped)?;
        self.tree.apply_batch(batch)?;
        let wires = std::mem::take(&mut self.drops_due);
        self.cap_drops(wires)?;
        self.dirty = true;
        Ok((due.len(), messages))
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
            // Epochs wholly expired die first (nothing to load).
            let (killed, messages) = self.kill_expired(channel, floor, left)?;
            left -= killed;
            dropped += messages;
            if left == 0 {
                if dropped > before {
                    self.raise_expired(&channel, floor)?;
                }
                break;
            }
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
                self.attribute_texts(channel, epoch)?;
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
