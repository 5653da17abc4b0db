//! Chat events: what an app shows, local and remote alike
//! ([`crate::Store::chat_events`]).
//!
//! The engine's own [`crate::StoreEvent`]s drive sync (new entries to push);
//! these say what changed in chat terms. They go on a channel of their own,
//! made when the first app subscribes (an open makes none: its slots cost
//! memory first touched), and are built only while someone listens. A
//! local write's events go out when its group commits; a peer's, when the
//! batch that brought them is applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hearth_core::{ChangeEffects, ChannelId, DeviceId, Happening, MessageId, Op, UserId};
use tokio::sync::broadcast;

/// Chat events buffered per subscriber; one that falls further behind is
/// told it lagged (and should re-read what it shows).
const CHAT_QUEUE: usize = 16_384;

/// A change an app shows. `local`: written on this device.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChatEvent {
    /// A new top-level message, or a reply (`reply_to`: its thread's root).
    Posted {
        /// The channel.
        channel: ChannelId,
        /// The message.
        id: MessageId,
        /// Its author.
        author: UserId,
        /// The thread's root, for a reply.
        reply_to: Option<MessageId>,
        /// Written here.
        local: bool,
    },
    /// A message's text was replaced.
    Edited {
        /// The channel.
        channel: ChannelId,
        /// The message.
        msg: MessageId,
        /// Who edited it (its author).
        by: UserId,
        /// Written here.
        local: bool,
    },
    /// A message was deleted.
    Deleted {
        /// The channel.
        channel: ChannelId,
        /// The message.
        msg: MessageId,
        /// Who deleted it (its author, or a moderator).
        by: UserId,
        /// Written here.
        local: bool,
    },
    /// A reaction was added (`added`) or taken back.
    Reaction {
        /// The channel.
        channel: ChannelId,
        /// The message.
        msg: MessageId,
        /// Who reacted.
        user: UserId,
        /// The reaction.
        emoji: String,
        /// Added, or taken back.
        added: bool,
        /// Written here.
        local: bool,
    },
    /// A user's read marker moved.
    ReadMarker {
        /// The channel.
        channel: ChannelId,
        /// The reader.
        user: UserId,
        /// The newest message read.
        up_to: MessageId,
        /// Written here.
        local: bool,
    },
    /// A channel appeared in this store: created here, or joined.
    ChannelAdded {
        /// The channel.
        channel: ChannelId,
        /// Its name, when known yet.
        name: Option<String>,
        /// Created here (not joined).
        local: bool,
    },
    /// A channel was named or renamed.
    Renamed {
        /// The channel.
        channel: ChannelId,
        /// The new name.
        name: String,
        /// Written here.
        local: bool,
    },
    /// A user joined a channel, or was added (back).
    MemberJoined {
        /// The channel.
        channel: ChannelId,
        /// Who.
        user: UserId,
    },
    /// A user left a channel, or was removed.
    MemberLeft {
        /// The channel.
        channel: ChannelId,
        /// Who.
        user: UserId,
    },
    /// A device holds a writing device's messages up to one (a delivery
    /// receipt).
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
    /// Entries from peers were taken into a channel: `entries` of them,
    /// making `messages` messages (a catch-up reports batch by batch).
    Received {
        /// The channel.
        channel: ChannelId,
        /// Entries taken.
        entries: u64,
        /// Messages they made.
        messages: u64,
    },
}

/// The chat events' channel, made on first subscription and dropped when
/// the store closes (so that every subscription ends then).
#[derive(Clone, Default)]
pub(crate) struct ChatEvents(Arc<Mutex<Channel>>, Arc<AtomicBool>);

#[derive(Default)]
struct Channel {
    tx: Option<broadcast::Sender<ChatEvent>>,
    closed: bool,
}

impl ChatEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, Channel> {
        // Nothing is left half-done under it: a panic there poisons nothing.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ChatEvent> {
        let mut c = self.lock();
        if c.closed {
            // Closed: a subscription that ends at once.
            return broadcast::channel(1).1;
        }
        self.1.store(true, Ordering::Relaxed);
        c.tx.get_or_insert_with(|| broadcast::channel(CHAT_QUEUE).0).subscribe()
    }

    /// Whether anyone listens (events are built only then). Without a
    /// subscription ever, no lock is taken: the write path pays a load.
    pub(crate) fn listening(&self) -> bool {
        self.1.load(Ordering::Relaxed) && self.lock().tx.as_ref().is_some_and(|tx| tx.receiver_count() > 0)
    }

    pub(crate) fn send(&self, events: impl IntoIterator<Item = ChatEvent>) {
        if let Some(tx) = &self.lock().tx {
            for e in events {
                let _ = tx.send(e);
            }
        }
    }

    /// The store closed: every subscription ends.
    pub(crate) fn close(&self) {
        let mut c = self.lock();
        c.closed = true;
        c.tx = None;
    }
}

/// The event a local op makes, if any (keys, receipts, display names and
/// retention make none; a channel's creation is [`ChatEvent::ChannelAdded`]).
pub(crate) fn of_local_op(channel: ChannelId, me: UserId, op: &Op) -> Option<ChatEvent> {
    let local = true;
    Some(match op {
        Op::Post { id, reply_to, .. } => ChatEvent::Posted {
            channel,
            id: *id,
            author: me,
            reply_to: *reply_to,
            local,
        },
        Op::Edit { msg, .. } => ChatEvent::Edited {
            channel,
            msg: *msg,
            by: me,
            local,
        },
        Op::Delete { msg } => ChatEvent::Deleted {
            channel,
            msg: *msg,
            by: me,
            local,
        },
        Op::React { msg, emoji } | Op::Unreact { msg, emoji } => ChatEvent::Reaction {
            channel,
            msg: *msg,
            user: me,
            emoji: emoji.clone(),
            added: matches!(op, Op::React { .. }),
            local,
        },
        Op::ReadUpTo { msg } => ChatEvent::ReadMarker {
            channel,
            user: me,
            up_to: *msg,
            local,
        },
        Op::Rename { name } => ChatEvent::Renamed {
            channel,
            name: name.clone(),
            local,
        },
        Op::Member { body, .. } => happened(channel, me, Happening::of_member_op(&me, body)?, true),
        _ => return None,
    })
}

/// The events of a peer's change written by `author`.
pub(crate) fn of_remote_change(channel: ChannelId, author: UserId, effects: &ChangeEffects, out: &mut Vec<ChatEvent>) {
    for id in &effects.posts {
        let reply_to = effects.reply_roots.iter().find(|(r, _)| r == id).map(|(_, root)| *root);
        out.push(ChatEvent::Posted {
            channel,
            id: *id,
            author,
            reply_to,
            local: false,
        });
    }
    for h in &effects.happenings {
        out.push(happened(channel, author, h.clone(), false));
    }
}

fn happened(channel: ChannelId, author: UserId, h: Happening, local: bool) -> ChatEvent {
    match h {
        Happening::Edited(msg) => ChatEvent::Edited {
            channel,
            msg,
            by: author,
            local,
        },
        Happening::Deleted(msg) => ChatEvent::Deleted {
            channel,
            msg,
            by: author,
            local,
        },
        Happening::Reacted { msg, emoji, added } => ChatEvent::Reaction {
            channel,
            msg,
            user: author,
            emoji,
            added,
            local,
        },
        Happening::ReadUpTo(up_to) => ChatEvent::ReadMarker {
            channel,
            user: author,
            up_to,
            local,
        },
        Happening::Renamed(name) => ChatEvent::Renamed { channel, name, local },
        Happening::Joined(user) => ChatEvent::MemberJoined { channel, user },
        Happening::Left(user) => ChatEvent::MemberLeft { channel, user },
    }
}
