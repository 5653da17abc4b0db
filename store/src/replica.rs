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
        /// This device's new entries, for a sync node to push without
        /// asking the store for them (`None`: ask it).
        outgoing: Option<Outgoing>,
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

/// Most entries of one channel a group's [`Outgoing`] carries; a group with
/// more (a bulk import's) is read from the store.
pub(crate) const OUTGOING_MAX: usize = 16;
/// Most bytes of entries one [`Outgoing`] carries: an event queue a
/// subscriber stopped reading holds at most its 4,096 events' worth.
pub(crate) const OUTGOING_BYTES: usize = 8 << 10;

/// A group's new entries of one channel: (seq, bytes).
pub(crate) type Fresh = Vec<(u64, Vec<u8>)>;

/// This device's entries of one channel that a group just wrote, handed to
/// the store's listeners with its [`StoreEvent::Appended`], so that a sync
/// node can push them to a peer that holds everything else without asking
/// the store's thread (which is applying the group's sled batch meanwhile;
/// ARCHITECTURE.md, "Sync"). They may leave once [`Outgoing::durable`]
/// resolves: the fork invariant, as for [`crate::Store::entries_after`].
#[derive(Clone)]
pub struct Outgoing(std::sync::Arc<OutgoingInner>);

struct OutgoingInner {
    wire: WireId,
    /// The channel's vector once the group is in.
    vector: Vector,
    device: DeviceId,
    /// The seq of `entries[0]`; the last is the feed's head in `vector`.
    first: u64,
    entries: Vec<Vec<u8>>,
    durable: Option<crate::log::Durable>,
    /// They may leave before they are durable (`crate::early`).
    early: bool,
}

impl Outgoing {
    /// `entries` (seq, bytes) must be consecutive and end at `device`'s
    /// position in `vector`; `None` otherwise.
    pub(crate) fn new(
        wire: WireId,
        vector: Vector,
        device: DeviceId,
        entries: Fresh,
        durable: Option<crate::log::Durable>,
        early: bool,
    ) -> Option<Outgoing> {
        let first = entries.first()?.0;
        let consecutive = entries.iter().zip(first..).all(|((seq, _), want)| *seq == want);
        let last = first + entries.len() as u64 - 1;
        if !consecutive || vector.seq(&device) != last {
            return None;
        }
        Some(Outgoing(std::sync::Arc::new(OutgoingInner {
            wire,
            vector,
            device,
            first,
            entries: entries.into_iter().map(|(_, b)| b).collect(),
            durable,
            early,
        })))
    }

    /// The channel's wire id.
    pub fn wire(&self) -> WireId {
        self.0.wire
    }

    /// The channel's vector once these entries were in (entries stored
    /// since are not in it: they come with events of their own).
    pub fn vector(&self) -> &Vector {
        &self.0.vector
    }

    /// What [`crate::Store::entries_after`] would give a peer holding
    /// `have`, when that is some of these entries (within the budget):
    /// `have` holds everything of [`Outgoing::vector`] but the tail of this
    /// device's feed that these entries are. `None`: ask the store.
    pub fn entries_after(&self, have: &Vector, max_bytes: usize, max_entries: usize) -> Option<EntryBatch> {
        let o = &self.0;
        let missing = have.lacks(&o.vector);
        let from = match missing.as_slice() {
            [] => return Some(EntryBatch::default()),
            [m] if m.device == o.device && m.from >= o.first => m.from,
            _ => return None,
        };
        let take = &o.entries[usize::try_from(from - o.first).ok()?..];
        let bytes: usize = take.iter().map(Vec::len).sum();
        if take.len() > max_entries || (bytes > max_bytes && take.len() > 1) {
            return None;
        }
        Some(EntryBatch {
            entries: take.to_vec(),
            more: false,
        })
    }

    /// Resolves once the feed log holds the entries durably. An error if
    /// its sync failed.
    pub async fn durable(&self) -> Result<()> {
        match &self.0.durable {
            Some(d) => d.wait().await,
            None => Ok(()),
        }
    }

    /// Resolves once the entries may leave the device: at once when the
    /// store sends entries early ([`crate::Store::send_early`]: they are in
    /// the log, and a loss of them makes this a new device at the next
    /// open), else once they are durable ([`Outgoing::durable`]).
    pub async fn sendable(&self) -> Result<()> {
        if self.0.early { Ok(()) } else { self.durable().await }
    }

    /// The entries, in feed order (the last is this device's head in
    /// [`Outgoing::vector`]).
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.0.entries
    }

    /// Whether the entries may leave before they are durable
    /// ([`Outgoing::sendable`]).
    pub fn early(&self) -> bool {
        self.0.early
    }
}

impl PartialEq for Outgoing {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Outgoing {}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.0;
        f.debug_struct("Outgoing")
            .field("wire", &o.wire.short())
            .field("device", &o.device)
            .field("seqs", &(o.first..o.first + o.entries.len() as u64))
            .finish_non_exhaustive()
    }
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
