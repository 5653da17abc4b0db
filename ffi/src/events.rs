//! [`EventStream`]: a store's [`Event`]s, awaited one by one.

use futures::StreamExt;

/// Something an app shows or reacts to ([`hearth::Event`], ids as text).
/// `local`: written on this device (an app that shows its own writes at
/// once can skip those).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A new top-level message.
    Message {
        /// The channel.
        channel: String,
        /// The message.
        id: String,
        /// Its author.
        author: String,
        /// Written here.
        local: bool,
    },
    /// A reply in a thread.
    Reply {
        /// The channel.
        channel: String,
        /// The reply.
        id: String,
        /// The thread's root.
        root: String,
        /// Its author.
        author: String,
        /// Written here.
        local: bool,
    },
    /// A message's text was replaced.
    Edited {
        /// The channel.
        channel: String,
        /// The message.
        msg: String,
        /// Who edited it.
        by: String,
        /// Written here.
        local: bool,
    },
    /// A message was deleted.
    Deleted {
        /// The channel.
        channel: String,
        /// The message.
        msg: String,
        /// Who deleted it (its author or a moderator).
        by: String,
        /// Written here.
        local: bool,
    },
    /// A reaction was added.
    ReactionAdded {
        /// The channel.
        channel: String,
        /// The message.
        msg: String,
        /// Who reacted.
        user: String,
        /// The reaction.
        emoji: String,
        /// Written here.
        local: bool,
    },
    /// A reaction was taken back.
    ReactionRemoved {
        /// The channel.
        channel: String,
        /// The message.
        msg: String,
        /// Whose reaction.
        user: String,
        /// The reaction.
        emoji: String,
        /// Written here.
        local: bool,
    },
    /// A user's read marker moved (a read receipt, for another user's).
    ReadMarker {
        /// The channel.
        channel: String,
        /// The reader.
        user: String,
        /// The newest message read.
        up_to: String,
        /// Written here.
        local: bool,
    },
    /// A channel appeared: created here (`local`), or joined.
    ChannelCreated {
        /// The channel.
        channel: String,
        /// Its name, when known yet (a `ChannelRenamed` follows when it comes).
        name: Option<String>,
        /// Created here.
        local: bool,
    },
    /// A channel was named or renamed.
    ChannelRenamed {
        /// The channel.
        channel: String,
        /// The new name.
        name: String,
        /// Written here.
        local: bool,
    },
    /// A user joined a channel or was added (back).
    MemberJoined {
        /// The channel.
        channel: String,
        /// Who.
        user: String,
    },
    /// A user left a channel or was removed.
    MemberLeft {
        /// The channel.
        channel: String,
        /// Who.
        user: String,
    },
    /// A delivery receipt: a device holds a writing device's messages up to
    /// one.
    Receipt {
        /// The channel.
        channel: String,
        /// The receiving user.
        user: String,
        /// The receiving device.
        device: String,
        /// The writing device.
        author: String,
        /// Its newest message held there.
        up_to: String,
    },
    /// A peer connected to the sync node.
    PeerConnected {
        /// The peer.
        peer: String,
        /// Where.
        addr: String,
    },
    /// A peer's last connection closed.
    PeerLost {
        /// The peer.
        peer: String,
    },
    /// Entries from peers were taken into a channel (a catch-up reports
    /// batch by batch).
    SyncProgress {
        /// The channel.
        channel: String,
        /// Entries taken in this batch.
        entries: u64,
        /// Messages they made.
        messages: u64,
    },
    /// A reconciliation with a peer finished.
    SyncDone {
        /// The peer.
        peer: String,
        /// Entries received.
        received: u64,
        /// Entries the peer acknowledged.
        sent: u64,
        /// Both hold the same entries of every shared channel now.
        in_sync: bool,
    },
    /// The subscriber fell behind and `missed` events were dropped: re-read
    /// what the screen shows.
    Lagged {
        /// Events missed.
        missed: u64,
    },
    /// A new device asks to become this user's, through a ticket of
    /// [`crate::Hearth::link_ticket`]: show `code`, ask the user whether the
    /// new device shows the same, and answer with
    /// [`crate::SyncHandle::confirm_link`].
    LinkRequested {
        /// The asking device's (temporary) peer id.
        peer: String,
        /// The six-digit code both devices show.
        code: String,
    },
    /// A new device of this user received what it asked for: it is linked.
    Linked {
        /// The new device's (temporary) peer id.
        peer: String,
    },
    /// An event of a newer hearth than these bindings know, described.
    Other {
        /// What it was (its debug form).
        description: String,
    },
}

impl From<hearth::Event> for Event {
    fn from(e: hearth::Event) -> Self {
        use hearth::Event as E;
        let s = |id: &dyn ToString| id.to_string();
        match e {
            E::Message {
                channel,
                id,
                author,
                local,
            } => Event::Message {
                channel: s(&channel),
                id: s(&id),
                author: s(&author),
                local,
            },
            E::Reply {
                channel,
                id,
                root,
                author,
                local,
            } => Event::Reply {
                channel: s(&channel),
                id: s(&id),
                root: s(&root),
                author: s(&author),
                local,
            },
            E::Edited {
                channel,
                msg,
                by,
                local,
            } => Event::Edited {
                channel: s(&channel),
                msg: s(&msg),
                by: s(&by),
                local,
            },
            E::Deleted {
                channel,
                msg,
                by,
                local,
            } => Event::Deleted {
                channel: s(&channel),
                msg: s(&msg),
                by: s(&by),
                local,
            },
            E::ReactionAdded {
                channel,
                msg,
                user,
                emoji,
                local,
            } => Event::ReactionAdded {
                channel: s(&channel),
                msg: s(&msg),
                user: s(&user),
                emoji,
                local,
            },
            E::ReactionRemoved {
                channel,
                msg,
                user,
                emoji,
                local,
            } => Event::ReactionRemoved {
                channel: s(&channel),
                msg: s(&msg),
                user: s(&user),
                emoji,
                local,
            },
            E::ReadMarker {
                channel,
                user,
                up_to,
                local,
            } => Event::ReadMarker {
                channel: s(&channel),
                user: s(&user),
                up_to: s(&up_to),
                local,
            },
            E::ChannelCreated { channel, name, local } => Event::ChannelCreated {
                channel: s(&channel),
                name,
                local,
            },
            E::ChannelRenamed { channel, name, local } => Event::ChannelRenamed {
                channel: s(&channel),
                name,
                local,
            },
            E::MemberJoined { channel, user } => Event::MemberJoined {
                channel: s(&channel),
                user: s(&user),
            },
            E::MemberLeft { channel, user } => Event::MemberLeft {
                channel: s(&channel),
                user: s(&user),
            },
            E::Receipt {
                channel,
                user,
                device,
                author,
                up_to,
            } => Event::Receipt {
                channel: s(&channel),
                user: s(&user),
                device: s(&device),
                author: s(&author),
                up_to: s(&up_to),
            },
            E::PeerConnected { peer, addr } => Event::PeerConnected {
                peer: s(&peer),
                addr: s(&addr),
            },
            E::PeerLost { peer } => Event::PeerLost { peer: s(&peer) },
            E::SyncProgress {
                channel,
                entries,
                messages,
            } => Event::SyncProgress {
                channel: s(&channel),
                entries,
                messages,
            },
            E::SyncDone {
                peer,
                received,
                sent,
                in_sync,
            } => Event::SyncDone {
                peer: s(&peer),
                received,
                sent,
                in_sync,
            },
            E::Lagged { missed } => Event::Lagged { missed },
            E::LinkRequested { peer, code } => Event::LinkRequested { peer: s(&peer), code },
            E::Linked { peer } => Event::Linked { peer: s(&peer) },
            // hearth::Event is non-exhaustive: a kind added later is still seen.
            other => Event::Other {
                description: format!("{other:?}"),
            },
        }
    }
}

/// The events of one subscription ([`crate::Hearth::subscribe`]), from the
/// moment it was made: local writes, peers' changes, and what sync does.
///
/// Await [`EventStream::next`] in a loop; it gives `None` once the store is
/// closed. Each subscription sees every event; make one per consumer.
#[derive(uniffi::Object)]
pub struct EventStream {
    /// A `Mutex` because the facade's stream is `Send` but not `Sync`, and
    /// UniFFI objects are shared; a second `next()` waits for the first.
    events: tokio::sync::Mutex<hearth::Events>,
}

impl EventStream {
    pub(crate) fn new(events: hearth::Events) -> Self {
        EventStream {
            events: tokio::sync::Mutex::new(events),
        }
    }
}

#[uniffi::export]
impl EventStream {
    /// The next event; `None` once the store is closed.
    ///
    /// Cancel-safe: a `next()` abandoned before it returns (an
    /// `asyncio.wait_for` timeout) loses no event; the next call gets it.
    /// That is why it is polled where it is awaited, not run as a task on
    /// the bindings' runtime like the other calls: a task would take the
    /// event and drop it with its abandoned result. The facade's stream
    /// needs no runtime to be polled (broadcast receivers).
    pub async fn next(&self) -> Option<Event> {
        self.events.lock().await.next().await.map(Event::from)
    }
}
