//! [`Hearth::subscribe`]: one stream of app-level [`Event`]s, from the
//! store (what changed, local or remote) and from the sync node (peers,
//! sync progress).

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::Stream;
use hearth_core::{ChannelId, DeviceId, MessageId, UserId};
use hearth_store::ChatEvent;
use hearth_sync::{Multiaddr, NodeEvent, NodeHandle, PeerId};
use tokio::sync::broadcast;

use crate::Hearth;

/// Node events buffered per subscriber.
const NODE_QUEUE: usize = 1024;

/// Something an app shows or reacts to. `local`: written on this device
/// (an app that shows its own writes at once can skip those).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new top-level message.
    Message {
        /// The channel.
        channel: ChannelId,
        /// The message.
        id: MessageId,
        /// Its author.
        author: UserId,
        /// Written here.
        local: bool,
    },
    /// A reply in a thread.
    Reply {
        /// The channel.
        channel: ChannelId,
        /// The reply.
        id: MessageId,
        /// The thread's root.
        root: MessageId,
        /// Its author.
        author: UserId,
        /// Written here.
        local: bool,
    },
    /// A message's text was replaced.
    Edited {
        /// The channel.
        channel: ChannelId,
        /// The message.
        msg: MessageId,
        /// Who edited it.
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
        /// Who deleted it (its author or a moderator).
        by: UserId,
        /// Written here.
        local: bool,
    },
    /// A reaction was added.
    ReactionAdded {
        /// The channel.
        channel: ChannelId,
        /// The message.
        msg: MessageId,
        /// Who reacted.
        user: UserId,
        /// The reaction.
        emoji: String,
        /// Written here.
        local: bool,
    },
    /// A reaction was taken back.
    ReactionRemoved {
        /// The channel.
        channel: ChannelId,
        /// The message.
        msg: MessageId,
        /// Whose reaction.
        user: UserId,
        /// The reaction.
        emoji: String,
        /// Written here.
        local: bool,
    },
    /// A user's read marker moved (a read receipt, for another user's).
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
    /// A channel appeared: created here (`local`), or joined.
    ChannelCreated {
        /// The channel.
        channel: ChannelId,
        /// Its name, when known yet (a [`Event::ChannelRenamed`] follows
        /// when it comes).
        name: Option<String>,
        /// Created here.
        local: bool,
    },
    /// A channel was named or renamed.
    ChannelRenamed {
        /// The channel.
        channel: ChannelId,
        /// The new name.
        name: String,
        /// Written here.
        local: bool,
    },
    /// A user joined a channel or was added (back).
    MemberJoined {
        /// The channel.
        channel: ChannelId,
        /// Who.
        user: UserId,
    },
    /// A user left a channel or was removed.
    MemberLeft {
        /// The channel.
        channel: ChannelId,
        /// Who.
        user: UserId,
    },
    /// A delivery receipt: a device holds a writing device's messages up to
    /// one.
    Receipt {
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
    /// A peer connected to the sync node.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Where.
        addr: Multiaddr,
    },
    /// A peer's last connection closed.
    PeerLost {
        /// The peer.
        peer: PeerId,
    },
    /// Entries from peers were taken into a channel (a catch-up reports
    /// batch by batch).
    SyncProgress {
        /// The channel.
        channel: ChannelId,
        /// Entries taken in this batch.
        entries: u64,
        /// Messages they made.
        messages: u64,
    },
    /// A reconciliation with a peer finished.
    SyncDone {
        /// The peer.
        peer: PeerId,
        /// Entries received.
        received: u64,
        /// Entries the peer acknowledged.
        sent: u64,
        /// Both hold the same entries of every shared channel now.
        in_sync: bool,
    },
    /// A new device asks to become this user's, through a ticket of
    /// [`Hearth::link_ticket`]: show `code`, ask the user whether the new
    /// device shows the same, and answer with
    /// [`crate::SyncHandle::confirm_link`]. Nothing is sent before.
    LinkRequested {
        /// The asking device's (temporary) peer id.
        peer: PeerId,
        /// The six-digit code both devices show.
        code: String,
    },
    /// A new device of this user received what it asked for: it is linked.
    Linked {
        /// The new device's (temporary) peer id.
        peer: PeerId,
    },
    /// The subscriber fell behind and `missed` events were dropped: re-read
    /// what the screen shows.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

impl Event {
    /// The event of a store's chat event.
    pub fn of_chat(e: ChatEvent) -> Option<Event> {
        Some(match e {
            ChatEvent::Posted {
                channel,
                id,
                author,
                reply_to: None,
                local,
            } => Event::Message {
                channel,
                id,
                author,
                local,
            },
            ChatEvent::Posted {
                channel,
                id,
                author,
                reply_to: Some(root),
                local,
            } => Event::Reply {
                channel,
                id,
                root,
                author,
                local,
            },
            ChatEvent::Edited {
                channel,
                msg,
                by,
                local,
            } => Event::Edited {
                channel,
                msg,
                by,
                local,
            },
            ChatEvent::Deleted {
                channel,
                msg,
                by,
                local,
            } => Event::Deleted {
                channel,
                msg,
                by,
                local,
            },
            ChatEvent::Reaction {
                channel,
                msg,
                user,
                emoji,
                added,
                local,
            } => {
                if added {
                    Event::ReactionAdded {
                        channel,
                        msg,
                        user,
                        emoji,
                        local,
                    }
                } else {
                    Event::ReactionRemoved {
                        channel,
                        msg,
                        user,
                        emoji,
                        local,
                    }
                }
            }
            ChatEvent::ReadMarker {
                channel,
                user,
                up_to,
                local,
            } => Event::ReadMarker {
                channel,
                user,
                up_to,
                local,
            },
            ChatEvent::ChannelAdded { channel, name, local } => Event::ChannelCreated { channel, name, local },
            ChatEvent::Renamed { channel, name, local } => Event::ChannelRenamed { channel, name, local },
            ChatEvent::MemberJoined { channel, user } => Event::MemberJoined { channel, user },
            ChatEvent::MemberLeft { channel, user } => Event::MemberLeft { channel, user },
            ChatEvent::Delivered {
                channel,
                user,
                device,
                author,
                up_to,
            } => Event::Receipt {
                channel,
                user,
                device,
                author,
                up_to,
            },
            ChatEvent::Received {
                channel,
                entries,
                messages,
            } => Event::SyncProgress {
                channel,
                entries,
                messages,
            },
            _ => return None,
        })
    }

    /// The event of a sync node's event, for those an app sees.
    pub fn of_node(e: NodeEvent) -> Option<Event> {
        Some(match e {
            NodeEvent::PeerConnected { peer, addr } => Event::PeerConnected { peer, addr },
            NodeEvent::PeerDisconnected { peer } => Event::PeerLost { peer },
            NodeEvent::LinkRequested { peer, code } => Event::LinkRequested { peer, code },
            NodeEvent::Linked { peer } => Event::Linked { peer },
            NodeEvent::Synced {
                peer,
                received,
                sent,
                in_sync,
                ..
            } => Event::SyncDone {
                peer,
                received,
                sent,
                in_sync,
            },
            _ => return None,
        })
    }
}

/// The stream of [`Event`]s of [`Hearth::subscribe`]. It ends when the
/// store is closed.
pub struct Events(Pin<Box<dyn Stream<Item = Event> + Send>>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// A broadcast receiver as a stream of events, `Lagged` included.
fn stream_of<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
    map: fn(T) -> Option<Event>,
) -> impl Stream<Item = Event> + Send {
    futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if let Some(e) = map(e) {
                        return Some((e, rx));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => return Some((Event::Lagged { missed }, rx)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// The node side of a [`Hearth`]'s events: a channel made on first
/// subscription, fed from whichever node runs by a task that runs only
/// while both exist.
#[derive(Default)]
pub(crate) struct NodeSide {
    /// Made on first subscription; `None` again once the store closed.
    tx: Mutex<(Option<broadcast::Sender<Event>>, bool)>,
    forwarder: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for NodeSide {
    fn drop(&mut self) {
        self.stop_forwarding();
    }
}

impl NodeSide {
    fn sender(&self) -> std::sync::MutexGuard<'_, (Option<broadcast::Sender<Event>>, bool)> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A subscription, and whether it is the first.
    fn subscribe(&self) -> (broadcast::Receiver<Event>, bool) {
        let mut tx = self.sender();
        if tx.1 {
            // Closed: a subscription that ends at once.
            return (broadcast::channel(1).1, false);
        }
        let first = tx.0.is_none();
        (
            tx.0.get_or_insert_with(|| broadcast::channel(NODE_QUEUE).0).subscribe(),
            first,
        )
    }

    /// The store closed: every subscription's node side ends.
    pub(crate) fn close(&self) {
        self.stop_forwarding();
        *self.sender() = (None, true);
    }

    /// Forward `node`'s events, if anyone subscribed.
    pub(crate) fn forward(&self, node: &NodeHandle) {
        let Some(tx) = self.sender().0.clone() else { return };
        let mut events = node.subscribe();
        let task = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if let Some(e) = Event::of_node(e) {
                            let _ = tx.send(e);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = tx.send(Event::Lagged { missed });
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        if let Some(old) = self.forwarder.lock().unwrap_or_else(|e| e.into_inner()).replace(task) {
            old.abort();
        }
    }

    pub(crate) fn stop_forwarding(&self) {
        if let Some(t) = self.forwarder.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

impl Hearth {
    /// Every change an app shows, local writes and peers' alike, and what
    /// sync does: new messages and replies, edits, deletes, reactions, read
    /// markers, channels created or renamed, members joined or left,
    /// delivery receipts, peers connected or lost, sync progress and sync
    /// done. [`Event::Lagged`] says events were dropped (the subscriber fell
    /// more than 16,384 behind): re-read what the screen shows.
    ///
    /// Events are built only while someone subscribes; sync events come
    /// from the node started with [`Hearth::start_sync`], whenever it is
    /// started.
    pub fn subscribe(&self) -> Events {
        let chat = stream_of(self.store.chat_events(), Event::of_chat);
        let (node, first) = self.sync.events.subscribe();
        let node = stream_of(node, Some);
        if first && let Some(running) = self.sync_handle() {
            self.sync.events.forward(&running.node);
        }
        Events(Box::pin(futures::stream::select(chat, node)))
    }
}
