//! The store side of `hearth chat`: what the screen asks for ([`Action`]),
//! done one after another on the store, and what comes of it ([`Update`]).
//! The screen never waits on the store: it sends, and draws what comes back.

use std::collections::BTreeMap;

use hearth::store::Thread;
use hearth::sync::ticket::Ticket;
use hearth::{ChannelId, ChannelInfo, Hearth, Message, MessageId, SyncHandle, UserId};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Messages read at once: the newest this many when a channel opens, then
/// this many older ones each time the view scrolls past the top.
pub const PAGE: usize = 200;

/// What the screen asks of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read again what the screen shows: the channel list, and the open
    /// channel's newest `limit` messages (marking them read), its members'
    /// names and the open thread.
    Refresh {
        /// The open channel.
        channel: Option<ChannelId>,
        /// How many of its newest messages to read.
        limit: usize,
        /// The open thread's root.
        thread: Option<MessageId>,
        /// The user sees the newest messages (not scrolled up, no box over
        /// them): mark the channel read.
        seen: bool,
    },
    /// The page of messages before `before`.
    Older {
        /// The channel.
        channel: ChannelId,
        /// The oldest message held.
        before: MessageId,
    },
    /// Post in a channel.
    Post {
        /// The channel.
        channel: ChannelId,
        /// The text.
        text: String,
    },
    /// Reply in a thread.
    Reply {
        /// The root or any reply.
        to: MessageId,
        /// The text.
        text: String,
    },
    /// Add or take back a reaction.
    React {
        /// The message.
        msg: MessageId,
        /// The reaction.
        emoji: String,
        /// Take it back.
        remove: bool,
    },
    /// Replace a message's text.
    Edit {
        /// The message.
        msg: MessageId,
        /// The new text.
        text: String,
    },
    /// Delete a message.
    Delete {
        /// The message.
        msg: MessageId,
    },
    /// An invite ticket for a channel.
    Invite {
        /// The channel.
        channel: ChannelId,
        /// How long it lets people in (`None`: until revoked).
        expires: Option<std::time::Duration>,
    },
    /// Join from a ticket.
    Join(String),
    /// A new channel.
    Create(String),
    /// Rename a channel.
    Rename {
        /// The channel.
        channel: ChannelId,
        /// Its new name.
        name: String,
    },
}

/// What the store answered.
#[derive(Clone, Debug)]
pub enum Update {
    /// The channels, with unread counts.
    Channels(Vec<ChannelInfo>),
    /// Display names of a channel's members.
    Names(BTreeMap<UserId, String>),
    /// Top-level messages of a channel, newest first.
    Page {
        /// The channel.
        channel: ChannelId,
        /// The messages.
        messages: Vec<Message>,
        /// Those before this one (what [`Action::Older`] asked), else the
        /// newest.
        before: Option<MessageId>,
        /// More are older still.
        more: bool,
    },
    /// The page before this message could not be read.
    NoOlder(MessageId),
    /// The peers connected now.
    Peers(Vec<hearth::PeerId>),
    /// A thread, read again.
    Thread(Thread),
    /// A channel made or joined here: open it.
    Opened(ChannelId),
    /// An invite ticket to show.
    Ticket {
        /// The channel's name.
        name: String,
        /// The ticket.
        ticket: String,
    },
    /// Something to say on the status line.
    Notice(String),
    /// Something failed: said on the status line, in red.
    Failed(String),
    /// A refresh ended (read, or failed).
    Refreshed,
}

/// Do `actions` in order until the screen goes, answering on `updates`.
/// Refreshes queued behind one another are done once (the screen keeps
/// one in flight, but a refresh may queue behind a write).
pub async fn work(
    h: Hearth,
    node: Option<SyncHandle>,
    mut actions: UnboundedReceiver<Action>,
    updates: UnboundedSender<Update>,
) {
    while let Some(first) = actions.recv().await {
        let mut batch = vec![first];
        while let Ok(a) = actions.try_recv() {
            batch.push(a);
        }
        // The last refresh reads everything the earlier ones would have.
        let last_refresh = batch.iter().rposition(|a| matches!(a, Action::Refresh { .. }));
        for (i, action) in batch.into_iter().enumerate() {
            if matches!(action, Action::Refresh { .. }) && Some(i) != last_refresh {
                continue;
            }
            let refresh = matches!(action, Action::Refresh { .. });
            if let Err(e) = act(&h, node.as_ref(), action, &updates).await {
                let _ = updates.send(Update::Failed(crate::output::one_line(&e)));
            }
            if refresh {
                let _ = updates.send(Update::Refreshed);
            }
        }
    }
}

async fn act(
    h: &Hearth,
    node: Option<&SyncHandle>,
    action: Action,
    updates: &UnboundedSender<Update>,
) -> anyhow::Result<()> {
    let send = |u| {
        let _ = updates.send(u);
    };
    match action {
        Action::Refresh {
            channel,
            limit,
            thread,
            seen,
        } => {
            if let Some(node) = node {
                let peers = node.status().await?;
                send(Update::Peers(
                    peers.into_iter().filter(|p| p.connected).map(|p| p.peer).collect(),
                ));
            }
            let mut channels = h.channels().await?;
            if let Some(channel) = channel
                && channels.iter().any(|c| c.id == channel)
            {
                // What the user sees is read: the marker goes to peers as
                // this user's read receipt. A channel this user may no
                // longer write in keeps its count.
                if seen
                    && channels.iter().any(|c| c.id == channel && c.unread > 0)
                    && h.mark_read(channel, None).await.is_ok()
                {
                    channels = h.channels().await?;
                }
                send(Update::Names(h.members(channel).await?));
                let messages = h.page(channel, None, limit).await?;
                let more = messages.len() == limit;
                send(Update::Page {
                    channel,
                    messages,
                    before: None,
                    more,
                });
            }
            send(Update::Channels(channels));
            if let Some(root) = thread {
                send(Update::Thread(h.thread(root).await?));
            }
        }
        Action::Older { channel, before } => {
            let messages = match h.page(channel, Some(before), PAGE).await {
                Ok(m) => m,
                Err(e) => {
                    send(Update::NoOlder(before));
                    return Err(e.into());
                }
            };
            let more = messages.len() == PAGE;
            send(Update::Page {
                channel,
                messages,
                before: Some(before),
                more,
            });
        }
        Action::Post { channel, text } => drop(h.post(channel, &text).await?),
        Action::Reply { to, text } => drop(h.reply(to, &text).await?),
        Action::React { msg, emoji, remove } => {
            if remove {
                h.unreact(msg, &emoji).await?
            } else {
                h.react(msg, &emoji).await?
            }
        }
        Action::Edit { msg, text } => h.edit(msg, &text).await?,
        Action::Delete { msg } => h.delete(msg).await?,
        Action::Invite { channel, expires } => {
            let addrs = match node {
                Some(node) => node.listen_addrs().await?,
                None => crate::net::ticket_addrs(h).await?,
            };
            let ticket = h.invite(channel, addrs.clone(), expires, 0).await?;
            if addrs.is_empty() {
                send(Update::Notice(
                    "the ticket carries no address: run hearth chat with a node (not --offline) once".into(),
                ));
            }
            send(Update::Ticket {
                name: h.channel(channel).await?.name,
                ticket: ticket.to_string(),
            });
        }
        Action::Join(text) => {
            // Copied from a screen, a ticket may come in pieces.
            let text: String = text.split_whitespace().collect();
            let ticket: Ticket = text.parse().map_err(|e| anyhow::anyhow!("not a ticket: {e}"))?;
            let joined = h.join(&ticket).await?;
            crate::net::remember_peers(h, ticket.addrs()).await?;
            // Connected, a member's node lets this device in (`net::tend`).
            if let Some(node) = node {
                for a in ticket.addrs() {
                    let _ = node.dial(a.clone()).await;
                }
            }
            match joined {
                hearth::Joined::Channel(c) => send(Update::Opened(c)),
                hearth::Joined::Pending { name, .. } => send(Update::Notice(format!(
                    "kept the invite to #{name}: joined once a member's node lets this device in"
                ))),
            }
        }
        Action::Create(name) => send(Update::Opened(h.create_channel(&name).await?)),
        Action::Rename { channel, name } => h.rename_channel(channel, &name).await?,
    }
    Ok(())
}
