//! Front pages: each channel's newest messages, persisted and sealed, so that
//! the first page after an open needs no epoch document (store format 14).
//!
//! A clean close writes, for every channel whose messages it had loaded,
//! the newest [`FRONT_LEN`] top-level messages as [`Engine::page`] returns
//! them, in one sealed row (`N | wire`), with a stamp of what they were
//! computed from: a BLAKE3 of the channel's feed heads, its key generations
//! and its dead and stubbed epochs. Everything a page shows is a function
//! of those (the feeds' contents, the roster and its cuts, who owns which
//! device, the retention), and of the time when the channel has a
//! retention, so the row also keeps the retention and expiry floor it was
//! computed under and the lowest message id its messages and their counted
//! replies have: a later floor at or below that id changes nothing in it.
//!
//! `page(None, n)` with `n <= FRONT_LEN` answers from the row (read once,
//! then kept in memory) while the channel has no message epoch loaded and
//! nothing staged, the stamp matches and the floor allows it; any doubt
//! (no row, a stamp that moved, a row that does not open or decode) is a
//! miss, and the page is computed as before.
//!
//! The row holds texts, so it must never outlive their deletion: every
//! sled batch that stores entries of the channel, drops texts from its
//! stored entries (a delete's prune, retention's expiry) or kills an epoch
//! of it removes the row in that same batch ([`Engine::unfront`]). sled
//! recovers a prefix of its batches, so no crash can keep the row while
//! losing the drop that removed it. Nothing else removes it: it stays valid
//! across opens that only read.

use std::collections::HashSet;

use hearth_core::{ChannelId, META_EPOCH, Message, MessageId, UserId, WireId};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::Result;
use crate::layout::{T_FRONTS, channel_prefix, open_record, seal_record};

/// How many top-level messages a front page holds: `page(None, n)` is
/// answered from it for `n` up to this.
pub const FRONT_LEN: usize = 100;

/// Most bytes a row's plaintext takes (far below sled's blob threshold):
/// a page of long messages keeps only its newest ones that fit.
const FRONT_MAX_BYTES: usize = 64 * 1024;

/// Version of the row's plaintext.
const FRONT_VERSION: u8 = 1;

/// A message as the row stores it: every field of [`Message`], none left
/// out (postcard has no field names to skip by).
#[derive(Serialize, Deserialize)]
struct StoredMessage {
    id: MessageId,
    author: UserId,
    text: Option<String>,
    reply_to: Option<MessageId>,
    edited: bool,
    deleted: bool,
    dropped: bool,
    reactions: std::collections::BTreeMap<String, std::collections::BTreeSet<UserId>>,
    reply_count: u32,
}

impl From<&Message> for StoredMessage {
    fn from(m: &Message) -> Self {
        StoredMessage {
            id: m.id,
            author: m.author,
            text: m.text.clone(),
            reply_to: m.reply_to,
            edited: m.edited,
            deleted: m.deleted,
            dropped: m.dropped,
            reactions: m.reactions.clone(),
            reply_count: m.reply_count,
        }
    }
}

impl From<StoredMessage> for Message {
    fn from(m: StoredMessage) -> Self {
        Message {
            id: m.id,
            author: m.author,
            text: m.text,
            reply_to: m.reply_to,
            edited: m.edited,
            deleted: m.deleted,
            dropped: m.dropped,
            reactions: m.reactions,
            reply_count: m.reply_count,
        }
    }
}

/// The row's plaintext.
#[derive(Serialize, Deserialize)]
struct FrontRow {
    version: u8,
    stamp: [u8; 32],
    retention: Option<u64>,
    floor: Option<MessageId>,
    lowest: Option<MessageId>,
    /// The largest `limit` it answers for: [`FRONT_LEN`], or fewer when
    /// only the newest messages fit in [`FRONT_MAX_BYTES`].
    answers: u32,
    messages: Vec<StoredMessage>,
}

/// A channel's front page, held in memory once read.
#[derive(Clone, Debug)]
pub(crate) struct Front {
    /// [`Engine::front_stamp`] of the channel it was computed from.
    stamp: [u8; 32],
    /// The channel's retention then, in seconds.
    retention: Option<u64>,
    /// The expiry floor it was computed under.
    floor: Option<MessageId>,
    /// The lowest id among its messages and their replies.
    lowest: Option<MessageId>,
    /// The largest `limit` it answers for.
    answers: usize,
    /// The newest top-level messages, newest first.
    messages: Vec<Message>,
}

/// What the engine knows of front pages.
#[derive(Debug, Default)]
pub(crate) struct Fronts {
    /// Rows read (or written) this session, by channel; `None`: no usable row.
    held: std::collections::HashMap<ChannelId, Option<Front>>,
    /// Channels whose row is known to be absent from sled (removed this
    /// session): nothing more to remove.
    absent: HashSet<WireId>,
}

fn front_key(wire: &WireId) -> [u8; 33] {
    channel_prefix(T_FRONTS, wire)
}

impl Engine {
    /// What a front page of `channel` is valid for: its feed heads, key
    /// generations, dead and stubbed epochs, and whether a removal notice
    /// holds its writes.
    fn front_stamp(&self, channel: &ChannelId) -> Result<[u8; 32]> {
        let ch = self.channel(channel)?;
        let mut h = blake3::Hasher::new_derive_key("hearth v1 front page stamp");
        h.update(&ch.keys.wire().0);
        h.update(&(ch.heads.len() as u64).to_le_bytes());
        for (device, head) in &ch.heads {
            h.update(&device.0);
            h.update(&head.user.0);
            h.update(&head.seq.to_le_bytes());
            h.update(&head.hash);
        }
        let generations = ch.keys.generations();
        h.update(&(generations.len() as u64).to_le_bytes());
        for (g, _) in generations {
            h.update(&g.to_le_bytes());
        }
        for set in [&ch.dead, &ch.stubbed] {
            h.update(&(set.len() as u64).to_le_bytes());
            for e in set {
                h.update(&e.to_le_bytes());
            }
        }
        h.update(&[u8::from(ch.told.is_some())]);
        Ok(*h.finalize().as_bytes())
    }

    /// Whether the channel has a message epoch loaded or anything staged:
    /// a page is computed from what is loaded then.
    fn channel_busy(&self, channel: &ChannelId) -> bool {
        self.touched.keys().any(|(c, _)| c == channel)
            || self.epochs.keys().any(|(c, e)| c == channel && *e != META_EPOCH)
    }

    /// The newest `limit` top-level messages of `channel` from its front
    /// page, if it has a valid one (`None`: compute them).
    pub(crate) fn front_page(&mut self, channel: &ChannelId, limit: usize) -> Result<Option<Vec<Message>>> {
        if limit > FRONT_LEN || self.channel_busy(channel) {
            return Ok(None);
        }
        let wire = self.channel(channel)?.keys.wire();
        if !self.fronts.held.contains_key(channel) {
            let read = self.read_front(&wire);
            self.fronts.held.insert(*channel, read);
        }
        let Some(front) = self.fronts.held.get(channel).cloned().flatten() else {
            return Ok(None);
        };
        if limit > front.answers {
            return Ok(None);
        }
        let usable = front.stamp == self.front_stamp(channel)? && {
            // The floor now, under the retention the row was computed with
            // (the stamp says it has not changed).
            let now = self.expiry_floor_under(channel, front.retention)?;
            // A floor that went back (a clock set back) could show more;
            // one past the lowest id would show less.
            now >= front.floor && now.is_none_or(|f| front.lowest.is_none_or(|l| f <= l))
        };
        if !usable {
            self.fronts.held.insert(*channel, None);
            return Ok(None);
        }
        Ok(Some(front.messages.into_iter().take(limit).collect()))
    }

    /// The channel's row, opened and decoded; `None` on any failure.
    fn read_front(&self, wire: &WireId) -> Option<Front> {
        let k = front_key(wire);
        let sealed = self.tree.get(k).ok()??;
        let plain = open_record(&self.records, &k, &sealed).ok()?;
        let row: FrontRow = postcard::from_bytes(&plain).ok()?;
        let answers = row.answers as usize;
        if row.version != FRONT_VERSION || answers > FRONT_LEN || row.messages.len() > FRONT_LEN {
            return None;
        }
        Some(Front {
            stamp: row.stamp,
            retention: row.retention,
            floor: row.floor,
            lowest: row.lowest,
            answers,
            messages: row.messages.into_iter().map(Message::from).collect(),
        })
    }

    /// Remove the channel's row in `batch`: the batch stores its entries or
    /// drops texts of it. Once per session (the row is not written again
    /// before the close).
    pub(crate) fn unfront(&mut self, wire: &WireId, batch: &mut sled::Batch) {
        if let Some(k) = self.unfront_key(wire) {
            batch.remove(&k[..]);
        }
    }

    /// The key [`Engine::unfront`] removes, for a batch the engine holds
    /// itself; `None`: nothing to remove.
    pub(crate) fn unfront_key(&mut self, wire: &WireId) -> Option<[u8; 33]> {
        if let Some(channel) = self.by_wire.get(wire) {
            self.fronts.held.insert(*channel, None);
        }
        self.fronts.absent.insert(*wire).then(|| front_key(wire))
    }

    /// Write the front page of every channel whose messages are loaded, or
    /// that the bulk path wrote to (its epochs deferred, `crate::bulk`)
    /// (called at a clean close, before the checkpoint). A channel whose
    /// page cannot be computed keeps no row; the close goes on.
    pub(crate) fn write_fronts(&mut self) -> Result<()> {
        let due: Vec<ChannelId> = self
            .channels
            .keys()
            .filter(|c| {
                self.epochs.keys().any(|(ch, e)| ch == *c && *e != META_EPOCH)
                    || self.bulk_tails.keys().any(|(ch, _)| ch == *c)
            })
            .copied()
            .collect();
        let mut batch = sled::Batch::default();
        for channel in due {
            if let Ok((wire, row)) = self.front_row(&channel) {
                let k = front_key(&wire);
                batch.insert(&k[..], seal_record(&self.records, &k, &row)?);
                self.fronts.absent.remove(&wire);
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The channel's row as it would be written now.
    fn front_row(&mut self, channel: &ChannelId) -> Result<(WireId, Vec<u8>)> {
        let messages = self.page(channel, None, FRONT_LEN)?;
        let retention = self.retention(channel)?;
        let floor = self.expiry_floor(channel)?;
        let mut lowest = messages.iter().map(|m| m.id).min();
        for m in &messages {
            // Replies live in their root's epoch, which the page loaded.
            self.ensure_epoch(*channel, m.id.epoch(), false)?;
            let le = self
                .loaded(channel, m.id.epoch())
                .ok_or_else(|| crate::error::Error::corrupted("front page", "a message's epoch does not load"))?;
            for r in le.view.replies(&m.id) {
                lowest = Some(lowest.map_or(r.id, |l| l.min(r.id)));
            }
        }
        let mut row = FrontRow {
            version: FRONT_VERSION,
            stamp: self.front_stamp(channel)?,
            retention,
            floor,
            lowest,
            answers: FRONT_LEN as u32,
            messages: messages.iter().map(StoredMessage::from).collect(),
        };
        let mut plain = postcard::to_stdvec(&row).expect("front page encodes");
        while plain.len() > FRONT_MAX_BYTES && !row.messages.is_empty() {
            // The oldest go first; the row answers for what it keeps.
            let keep = row.messages.len() / 2;
            row.messages.truncate(keep);
            row.answers = keep as u32;
            plain = postcard::to_stdvec(&row).expect("front page encodes");
        }
        let wire = self.channel(channel)?.keys.wire();
        Ok((wire, plain))
    }
}
