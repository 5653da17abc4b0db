//! The store as a sync replica: what sync needs from it besides ingest
//! (version vectors, the entries a peer lacks, channel keys by wire id), the
//! receipts of a message, and the events it sends its subscribers (the sync
//! node, an app's UI).

use std::collections::BTreeSet;

use hearth_core::{ChannelId, ChannelKeys, DeviceId, Epoch, FeedPos, META_EPOCH, MessageId, UserId, Vector, WireId};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::*;

/// Something the store tells its subscribers (the sync node, an app's UI).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEvent {
    /// New feed entries are stored for a channel: local writes (`local`) or a
    /// peer's. A sync node pushes them to the other peers.
    Appended {
        /// The channel.
        channel: ChannelId,
        /// Its wire id.
        wire: WireId,
        /// Written here (not received).
        local: bool,
    },
    /// Messages written on another device arrived.
    Received {
        /// The channel.
        channel: ChannelId,
        /// Their author.
        author: UserId,
        /// The writing device.
        device: DeviceId,
        /// The new messages, in feed order.
        messages: Vec<MessageId>,
    },
    /// A device reported holding a writing device's messages up to one
    /// (a delivery receipt).
    Delivered {
        /// The channel.
        channel: ChannelId,
        /// The receiving user.
        user: UserId,
        /// The receiving device.
        device: DeviceId,
        /// The writing device.
        author: DeviceId,
        /// Its newest message held there.
        up_to: MessageId,
    },
    /// A feed's author signed two versions of it: its other branch is refused
    /// here, and the proof kept (`verify` and `stats` report it). The peer
    /// that sent it is not blamed.
    Forked {
        /// The channel.
        channel: ChannelId,
        /// The author who signed both versions.
        user: UserId,
        /// The forked feed's device.
        device: DeviceId,
        /// The position with two versions.
        seq: u64,
    },
    /// A device of another user (or another device of ours) marked the channel
    /// read up to a message.
    Read {
        /// The channel.
        channel: ChannelId,
        /// The reader.
        user: UserId,
        /// The newest message they have read.
        up_to: MessageId,
    },
    /// The channel's roster moved (a membership op was written here or
    /// arrived): who may be served the channel may have changed, so a sync
    /// node checks its peers again.
    Roster {
        /// The channel.
        channel: ChannelId,
    },
}

/// Who holds and who has read a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipts {
    /// Devices (with their users) that have stored it, the writing device apart.
    pub delivered: Vec<(UserId, DeviceId)>,
    /// Users whose read marker is at or past it, the author apart.
    pub read: Vec<UserId>,
}

/// A batch of a feed's entries for a peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryBatch {
    /// Envelope bytes, each feed in seq order.
    pub entries: Vec<Vec<u8>>,
    /// More entries are missing beyond this batch's byte or count budget.
    pub more: bool,
}

impl Engine {
    /// The keys of the channel `wire` names (to open entries ahead).
    pub(crate) fn keys_by_wire(&self, wire: &WireId) -> Result<ChannelKeys> {
        Ok(self.channel(&self.channel_by_wire(wire)?)?.keys.clone())
    }

    pub(crate) fn channel_by_wire(&self, wire: &WireId) -> Result<ChannelId> {
        self.by_wire.get(wire).copied().ok_or_else(|| Error::NotFound {
            what: "channel",
            id: wire.short(),
        })
    }

    /// The version vector of a channel.
    pub(crate) fn vector_of(&self, channel: &ChannelId) -> Result<Vector> {
        let ch = self.channel(channel)?;
        Ok(Vector(
            ch.heads
                .iter()
                .map(|(d, h)| {
                    (
                        *d,
                        FeedPos {
                            seq: h.seq,
                            hash: h.hash,
                        },
                    )
                })
                .collect(),
        ))
    }

    /// Every channel's wire id and vector.
    pub(crate) fn vectors(&self) -> Result<Vec<(WireId, Vector)>> {
        self.channels
            .values()
            .map(|ch| Ok((ch.keys.wire(), self.vector_of(&ch.keys.id())?)))
            .collect()
    }

    /// Every channel's wire id and access key (membership proofs in sync).
    pub(crate) fn access_keys(&self) -> Vec<(WireId, hearth_core::SecretKey)> {
        self.channels
            .values()
            .map(|ch| (ch.keys.wire(), ch.keys.access().clone()))
            .collect()
    }

    /// A channel's keys (to invite someone).
    pub(crate) fn channel_keys(&self, channel: &ChannelId) -> Result<ChannelKeys> {
        Ok(self.channel(channel)?.keys.clone())
    }

    /// The entries `have` lacks, feed by feed in seq order, within a budget.
    ///
    /// Entries of this device are only handed out once durable in the feed
    /// log: an entry beyond the log's durable part could be produced again
    /// differently by journal replay after a crash, and a peer holding the
    /// first version would then see a fork. So this makes the log durable
    /// first when it holds entries of this device that are not. The log
    /// alone, not sled: after a crash the open applies the log's batches
    /// beyond sled (`recover::catch_up`) before the journal, and each batch's
    /// commit record carries the journal watermark it covers, so the replay
    /// skips what those entries hold and the same bytes come back.
    ///
    /// The log is made durable on its own thread ([`crate::log::Log::durable_behind`],
    /// started when the entries were written if someone listens): the
    /// batch comes with what to wait for before it may leave.
    pub(crate) fn entries_after(
        &mut self,
        wire: &WireId,
        have: &Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<(EntryBatch, Option<crate::log::DurableWait>)> {
        let channel = self.channel_by_wire(wire)?;
        let mine = self.vector_of(&channel)?;
        let missing = have.lacks(&mine);
        if missing.is_empty() {
            return Ok((EntryBatch::default(), None));
        }
        let me = self.identity.device();
        let mut wait = None;
        if self.own_unsynced && missing.iter().any(|m| m.device == me) {
            wait = self.log.durable_behind(self.own_end)?;
            self.own_unsynced = wait.is_some();
        }
        let batch = self.read_entries(wire, missing, max_bytes, max_entries)?;
        Ok((batch, wait))
    }

    /// The entries of `missing`, feed by feed, within a budget.
    fn read_entries(
        &self,
        wire: &WireId,
        missing: Vec<hearth_core::Missing>,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<EntryBatch> {
        let mut batch = EntryBatch::default();
        let mut bytes = 0usize;
        for run in missing {
            let from = feed_key(wire, &run.device, run.from);
            let to = feed_key(wire, &run.device, run.to);
            let mut expect = run.from;
            for row in self.tree.range(from..=to) {
                let (k, v) = row?;
                if key_u64(&k[49..])? != expect {
                    return Err(Error::corrupted(
                        "feed",
                        format!("entry {}/{expect} is missing", run.device),
                    ));
                }
                if batch.entries.len() >= max_entries || (bytes + v.len() > max_bytes && !batch.entries.is_empty()) {
                    batch.more = true;
                    return Ok(batch);
                }
                bytes += v.len();
                batch.entries.push(v.to_vec());
                expect += 1;
            }
            if expect != run.to + 1 {
                return Err(Error::corrupted(
                    "feed",
                    format!("entry {}/{expect} is missing", run.device),
                ));
            }
        }
        Ok(batch)
    }
}

impl Engine {
    /// Delivery and read receipts of a message.
    pub(crate) fn receipts(&mut self, msg: &MessageId) -> Result<Receipts> {
        let located = self.get_message(msg)?;
        let channel = located.channel;
        let author = located.message.author;
        let ch = self.channel(&channel)?;
        let writer = ch
            .devices
            .iter()
            .find(|(d, u)| hearth_core::writer_tag(u, d) == msg.writer())
            .map(|(d, _)| *d);
        let later: Vec<Epoch> = ch
            .summaries
            .iter()
            .filter(|(e, s)| **e != META_EPOCH && s.max.is_some_and(|m| m >= *msg))
            .map(|(e, _)| *e)
            .collect();
        let mut out = Receipts::default();
        if self.ensure_epoch(channel, META_EPOCH, false)?
            && let (Some(le), Some(writer)) = (self.loaded(&channel, META_EPOCH), writer)
        {
            for ((user, device), marks) in &le.view.delivered {
                if *device != writer && marks.get(&writer).is_some_and(|m| m >= msg) {
                    out.delivered.push((*user, *device));
                }
            }
        }
        let mut readers = BTreeSet::new();
        for e in later {
            if self.ensure_epoch(channel, e, false)?
                && let Some(le) = self.loaded(&channel, e)
            {
                readers.extend(
                    le.view
                        .read_markers()
                        .filter(|(u, m)| *m >= msg && **u != author)
                        .map(|(u, _)| *u),
                );
            }
        }
        out.read = readers.into_iter().collect();
        Ok(out)
    }
}
