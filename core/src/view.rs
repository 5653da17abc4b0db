//! Materialised views: what queries return, derived from epoch documents.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::id::{DeviceId, MessageId, UserId};
use crate::op::Op;

/// One message as every replica shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its id (sorts by time).
    pub id: MessageId,
    /// Who posted it.
    pub author: UserId,
    /// The current text (the newest edit), or `None` once deleted.
    pub text: Option<String>,
    /// The root of its thread, for a reply.
    pub reply_to: Option<MessageId>,
    /// Whether the author edited it.
    pub edited: bool,
    /// Whether the author deleted it (a tombstone).
    pub deleted: bool,
    /// Whether its text was dropped though it was not deleted: expired, or
    /// its segment never reached this device (`text` is `None`). Left out
    /// of serialized forms when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// Reactions: emoji to the users who added it (add-wins per emoji and user).
    pub reactions: BTreeMap<String, BTreeSet<UserId>>,
    /// Replies in its thread that are not deleted.
    pub reply_count: u32,
}

/// The view of one epoch: messages, threads, read markers and metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochView {
    messages: BTreeMap<MessageId, Message>,
    /// Thread root to reply ids. Replies live in their root's epoch, so a thread
    /// never spans epochs.
    threads: BTreeMap<MessageId, BTreeSet<MessageId>>,
    read: BTreeMap<UserId, MessageId>,
    /// Messages not deleted, by author (no zero counts), kept with
    /// `messages` so that [`EpochView::stats`] needs no pass over them.
    live_by: BTreeMap<UserId, u64>,
    /// The channel name (metadata epoch only).
    pub name: Option<String>,
    /// Display names of members (metadata epoch only).
    pub names: BTreeMap<UserId, String>,
    /// Delivery receipts (metadata epoch only): for each receiving device (and
    /// its user), the newest message held of each writing device's feed.
    pub delivered: BTreeMap<(UserId, DeviceId), BTreeMap<DeviceId, MessageId>>,
    /// The roster (metadata epoch only).
    pub roster: crate::member::Roster,
    /// How long messages are kept, in seconds (metadata epoch only; `None`:
    /// for ever): the latest setting by an admin or owner.
    pub retention: Option<u64>,
}

impl EpochView {
    /// Insert or replace a message.
    pub fn insert(&mut self, m: Message) {
        if let Some(root) = m.reply_to {
            self.threads.entry(root).or_default().insert(m.id);
        }
        let (author, live) = (m.author, !m.deleted);
        if let Some(old) = self.messages.insert(m.id, m)
            && !old.deleted
        {
            self.unlive(&old.author);
        }
        if live {
            *self.live_by.entry(author).or_default() += 1;
        }
    }

    /// One message of `author` fewer that is not deleted.
    fn unlive(&mut self, author: &UserId) {
        if let Some(n) = self.live_by.get_mut(author) {
            *n -= 1;
            if *n == 0 {
                self.live_by.remove(author);
            }
        }
    }

    /// Apply an op that `author` just wrote locally, without reading the
    /// document back: a local op supersedes every value its author has seen, so
    /// its effect on the view is known. Must agree with [`crate::EpochDoc::view`]
    /// (tests compare the two). Metadata ops are not handled here, and a read
    /// marker must only move forward (the document keeps each device's last one).
    pub fn apply_local(&mut self, author: &UserId, op: &Op) {
        match op {
            Op::Post { id, text, reply_to } => self.insert(Message {
                id: *id,
                author: *author,
                text: Some(text.clone()),
                reply_to: *reply_to,
                edited: false,
                deleted: false,
                dropped: false,
                reactions: BTreeMap::new(),
                reply_count: 0,
            }),
            Op::React { msg, emoji } => {
                if let Some(m) = self.messages.get_mut(msg).filter(|m| !m.deleted) {
                    m.reactions.entry(emoji.clone()).or_default().insert(*author);
                }
            }
            Op::Unreact { msg, emoji } => {
                if let Some(m) = self.messages.get_mut(msg)
                    && let Some(users) = m.reactions.get_mut(emoji)
                {
                    users.remove(author);
                    if users.is_empty() {
                        m.reactions.remove(emoji);
                    }
                }
            }
            Op::Edit { msg, text } => {
                if let Some(m) = self.messages.get_mut(msg).filter(|m| m.author == *author && !m.deleted) {
                    m.text = Some(text.clone());
                    m.edited = true;
                    m.dropped = false;
                }
            }
            Op::Delete { msg } => {
                let mut was_live = false;
                if let Some(m) = self.messages.get_mut(msg).filter(|m| m.author == *author) {
                    was_live = !m.deleted;
                    m.text = None;
                    m.edited = false;
                    m.deleted = true;
                    m.dropped = false;
                    m.reactions.clear();
                }
                if was_live {
                    self.unlive(author);
                }
            }
            Op::ReadUpTo { msg } => self.mark_read(*author, *msg),
            Op::CreateChannel { .. }
            | Op::Rename { .. }
            | Op::SetName { .. }
            | Op::Delivered { .. }
            | Op::Member { .. }
            | Op::Keys { .. }
            | Op::SetRetention { .. } => {}
        }
    }

    /// Add a reaction to a message that is not deleted (used when building a view).
    pub fn add_reaction(&mut self, msg: &MessageId, user: UserId, emoji: String) {
        if let Some(m) = self.messages.get_mut(msg).filter(|m| !m.deleted) {
            m.reactions.entry(emoji).or_default().insert(user);
        }
    }

    /// Move a user's read marker forward (never back).
    pub fn mark_read(&mut self, user: UserId, msg: MessageId) {
        let e = self.read.entry(user).or_insert(msg);
        if msg > *e {
            *e = msg;
        }
    }

    /// Record that `device` (of `user`) holds `author`'s messages up to `msg`
    /// (forward only).
    pub fn mark_delivered(&mut self, user: UserId, device: DeviceId, author: DeviceId, msg: MessageId) {
        let e = self
            .delivered
            .entry((user, device))
            .or_default()
            .entry(author)
            .or_insert(msg);
        if msg > *e {
            *e = msg;
        }
    }

    /// A user's read marker in this epoch.
    pub fn read_marker(&self, user: &UserId) -> Option<MessageId> {
        self.read.get(user).copied()
    }

    /// Every read marker in this epoch.
    pub fn read_markers(&self) -> impl Iterator<Item = (&UserId, &MessageId)> {
        self.read.iter()
    }

    fn with_replies(&self, m: &Message) -> Message {
        let mut m = m.clone();
        m.reply_count = self
            .threads
            .get(&m.id)
            .map(|r| {
                r.iter()
                    .filter(|id| self.messages.get(id).is_some_and(|x| !x.deleted))
                    .count() as u32
            })
            .unwrap_or(0);
        m
    }

    /// One message, with its reply count.
    pub fn get(&self, id: &MessageId) -> Option<Message> {
        self.messages.get(id).map(|m| self.with_replies(m))
    }

    /// Whether the epoch holds a message.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.messages.contains_key(id)
    }

    /// Whether the epoch holds a message and it is deleted.
    pub fn is_deleted(&self, id: &MessageId) -> bool {
        self.messages.get(id).is_some_and(|m| m.deleted)
    }

    /// Top-level messages (not replies) older than `before`, newest first.
    pub fn page(&self, before: Option<MessageId>, limit: usize) -> Vec<Message> {
        let range = match before {
            Some(b) => self.messages.range(..b),
            None => self.messages.range(..),
        };
        range
            .rev()
            .filter(|(_, m)| m.reply_to.is_none())
            .take(limit)
            .map(|(_, m)| self.with_replies(m))
            .collect()
    }

    /// How many replies of `root` are `floor` or newer (retention: the
    /// older ones expired).
    pub fn replies_from(&self, root: &MessageId, floor: MessageId) -> u32 {
        self.threads
            .get(root)
            .map_or(0, |ids| ids.range(floor..).count() as u32)
    }

    /// The replies of a thread, oldest first.
    pub fn replies(&self, root: &MessageId) -> Vec<Message> {
        self.threads
            .get(root)
            .map(|ids| ids.iter().filter_map(|id| self.get(id)).collect())
            .unwrap_or_default()
    }

    /// Messages newer than `after` that `user` did not write and that are not
    /// deleted: the unread count of this epoch.
    pub fn unread(&self, user: &UserId, after: Option<MessageId>) -> u64 {
        let range = match after {
            Some(a) => self
                .messages
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.messages.range(..),
        };
        range.filter(|(_, m)| m.author != *user && !m.deleted).count() as u64
    }

    /// [`EpochView::unread`], of messages from `floor` on (retention: the
    /// ones below it expired).
    pub fn unread_from(&self, user: &UserId, after: Option<MessageId>, floor: Option<MessageId>) -> u64 {
        match floor {
            None => self.unread(user, after),
            Some(f) => self
                .messages
                .range(f..)
                .filter(|(id, m)| after.is_none_or(|a| **id > a) && m.author != *user && !m.deleted)
                .count() as u64,
        }
    }

    /// Number of messages (replies and tombstones included).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the epoch holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Counts and bounds of the epoch, from counts kept as messages change
    /// (no pass over them: a summary is refreshed at every write).
    pub fn stats(&self, me: &UserId) -> EpochStats {
        let mut st = EpochStats {
            messages: self.messages.len() as u64,
            ..EpochStats::default()
        };
        st.min = self.messages.keys().next().copied();
        st.max = self.messages.keys().next_back().copied();
        // From each end to the first top-level message: a reply is newer
        // than its root, which lives in the same epoch.
        let top = |m: &&Message| m.reply_to.is_none();
        st.top_min = self.messages.values().find(top).map(|m| m.id);
        st.top_max = self.messages.values().rev().find(top).map(|m| m.id);
        let live: u64 = self.live_by.values().sum();
        st.others_live = live - self.live_by.get(me).copied().unwrap_or(0);
        st
    }

    /// Every message in id order (for comparisons and exports).
    pub fn messages(&self) -> impl Iterator<Item = Message> + '_ {
        self.messages.values().map(|m| self.with_replies(m))
    }

    /// The ids of the messages in `range`, in order.
    pub fn ids_in(&self, range: impl std::ops::RangeBounds<MessageId>) -> impl Iterator<Item = MessageId> + '_ {
        self.messages.range(range).map(|(id, _)| *id)
    }
}

/// Counts and bounds of an epoch (see [`EpochView::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochStats {
    /// Messages, replies and tombstones included.
    pub messages: u64,
    /// Messages by other users that are not deleted.
    pub others_live: u64,
    /// Oldest message id.
    pub min: Option<MessageId>,
    /// Newest message id.
    pub max: Option<MessageId>,
    /// Oldest top-level message id.
    pub top_min: Option<MessageId>,
    /// Newest top-level message id.
    pub top_max: Option<MessageId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `stats` said before it kept counts: one pass over the messages.
    fn counted(view: &EpochView, me: &UserId) -> EpochStats {
        let all: Vec<&Message> = view.messages.values().collect();
        let tops: Vec<MessageId> = all.iter().filter(|m| m.reply_to.is_none()).map(|m| m.id).collect();
        EpochStats {
            messages: all.len() as u64,
            others_live: all.iter().filter(|m| m.author != *me && !m.deleted).count() as u64,
            min: all.first().map(|m| m.id),
            max: all.last().map(|m| m.id),
            top_min: tops.first().copied(),
            top_max: tops.last().copied(),
        }
    }

    fn id(n: u64) -> MessageId {
        let mut b = [0u8; MessageId::LEN];
        b[..8].copy_from_slice(&n.to_be_bytes());
        MessageId(b)
    }

    #[test]
    fn kept_counts_agree_with_a_pass_over_the_messages() {
        let users = [UserId([1; 32]), UserId([2; 32]), UserId([3; 32])];
        let mut view = EpochView::default();
        let mut roots = Vec::new();
        // A fixed pseudo-random walk of posts, replies, deletes (twice
        // over, and of others' messages, which do nothing) and messages
        // read back from a document (inserted again, deleted or not).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 1..600u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let who = users[(x % 3) as usize];
            let post = |reply_to| Op::Post {
                id: id(n),
                text: format!("m{n}"),
                reply_to,
            };
            match x % 7 {
                0 | 1 => {
                    view.apply_local(&who, &post(None));
                    roots.push(id(n));
                }
                2 if !roots.is_empty() => {
                    let root = roots[(x as usize / 7) % roots.len()];
                    view.apply_local(&who, &post(Some(root)));
                }
                3 | 4 => {
                    let target = id(1 + (x / 7) % n);
                    view.apply_local(&who, &Op::Delete { msg: target });
                }
                5 => {
                    let target = id(1 + (x / 7) % n);
                    if let Some(mut m) = view.messages.get(&target).cloned() {
                        m.deleted = x.is_multiple_of(2);
                        view.insert(m);
                    }
                }
                _ => view.apply_local(&who, &post(None)),
            }
            for me in &users {
                assert_eq!(view.stats(me), counted(&view, me), "after step {n}");
            }
        }
        assert!(view.stats(&users[0]).others_live > 0);
    }
}
