//! Invites and device links: tickets out, tickets in.

use std::path::Path;

use hearth_core::{ChannelId, Passphrase};
use hearth_store::{Config, Store};
use hearth_sync::ticket::Ticket;
use hearth_sync::{Multiaddr, PeerId};

use crate::Hearth;
use crate::error::{Error, Result};

/// The sealed file beside the store that keeps invites not let in through yet.
const INVITES_FILE: &str = "invites";

/// How long a link ticket is good for.
pub const LINK_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// What [`Hearth::join`] did with a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Joined {
    /// The channel is joined.
    Channel(ChannelId),
    /// The invite is kept until a member's node lets this device in.
    Pending {
        /// The channel.
        channel: ChannelId,
        /// Its name, as the ticket says.
        name: String,
    },
}

/// What [`Hearth::join_through`] did with the pending invites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinAttempt {
    /// Channels joined, with their names.
    pub joined: Vec<(ChannelId, String)>,
    /// Invites the peer did not take (by channel name), with why.
    pub refused: Vec<(String, String)>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Hearth {
    /// Invite someone into a channel (admins and owners): a ticket with an
    /// invite's id and secret and the addresses of a node that serves the
    /// channel (`addrs`; with sync running, [`crate::SyncHandle::listen_addrs`]),
    /// never a channel key. Any member's node lets its holder in until
    /// `valid_for` has passed (if given), `uses` devices' users have joined
    /// (0: any number) or the invite is revoked ([`Hearth::revoke_invite`]).
    pub async fn invite(
        &self,
        channel: ChannelId,
        addrs: Vec<Multiaddr>,
        valid_for: Option<std::time::Duration>,
        uses: u32,
    ) -> Result<Ticket> {
        let new = self.store.create_invite(channel, valid_for, uses).await?;
        let expires = new.expires.map(|ms| ms.div_ceil(1000));
        Ok(Ticket::join(new.channel, new.name, new.id, new.secret, expires, addrs)?)
    }

    /// The invites of a channel that can still let someone in.
    pub async fn invites(&self, channel: ChannelId) -> Result<Vec<hearth_store::InviteInfo>> {
        Ok(self.store.invites(channel).await?)
    }

    /// An invite of a channel by its id or a unique prefix of it (as
    /// [`Hearth::invites`] lists them).
    pub async fn resolve_invite(&self, channel: ChannelId, input: &str) -> Result<hearth_core::member::InviteId> {
        Ok(self.store.resolve_invite(channel, input).await?)
    }

    /// Revoke an invite: nobody joins through it any more.
    pub async fn revoke_invite(&self, channel: ChannelId, invite: hearth_core::member::InviteId) -> Result<()> {
        Ok(self.store.revoke_invite(channel, invite).await?)
    }

    /// Join the channel of an invite ticket. A ticket of before invites
    /// ended carries the channel key: the channel is joined at once. Any
    /// other is kept (sealed, beside the store) until a member's node lets
    /// this device in: [`Hearth::join_through`], which
    /// [`crate::SyncHandle::sync_until_equal`] calls.
    pub async fn join(&self, ticket: &Ticket) -> Result<Joined> {
        match ticket {
            Ticket::Invite { name, .. } => {
                let keys = ticket.channel_keys().ok_or_else(|| Error::BadTicket {
                    detail: "an invite without its channel's keys".into(),
                })?;
                let channel = if name.is_empty() {
                    self.store.join_channel(keys).await?
                } else {
                    self.store.join_channel_named(keys, name).await?
                };
                Ok(Joined::Channel(channel))
            }
            Ticket::Join {
                channel, name, expires, ..
            } => {
                if self.store.channel(*channel).await.is_ok() {
                    return Ok(Joined::Channel(*channel));
                }
                if expires.is_some_and(|e| e <= unix_now()) {
                    return Err(Error::NotAllowed {
                        action: "join through this invite".into(),
                        why: "it has expired: ask for a new one".into(),
                    });
                }
                let mut pending = self.pending_invites().await?;
                pending.retain(|t| t.invite_id() != ticket.invite_id());
                pending.push(ticket.clone());
                self.save_pending(&pending).await?;
                Ok(Joined::Pending {
                    channel: *channel,
                    name: name.clone(),
                })
            }
            Ticket::Link { .. } => Err(Error::BadTicket {
                detail: "a link ticket: use it with `hearth init --link` (Hearth::create_linked)".into(),
            }),
        }
    }

    /// The invites this device was given and not let in through yet.
    pub async fn pending_invites(&self) -> Result<Vec<Ticket>> {
        let Some(bytes) = self.store.read_private_file(INVITES_FILE).await? else {
            return Ok(Vec::new());
        };
        let bytes = zeroize::Zeroizing::new(bytes);
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::Corrupted {
            what: INVITES_FILE.into(),
            detail: "not text".into(),
        })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.parse().map_err(|e: hearth_sync::TicketError| Error::Corrupted {
                    what: INVITES_FILE.into(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// Whether a pending invite is of the channel named (or id-prefixed) `input`.
    pub(crate) async fn invite_pending(&self, input: &str) -> bool {
        let pending = self.pending_invites().await.unwrap_or_default();
        pending.iter().any(|t| {
            matches!(t, Ticket::Join { name, channel, .. }
                if name == input || channel.to_hex().starts_with(input))
        })
    }

    async fn save_pending(&self, pending: &[Ticket]) -> Result<()> {
        let mut text = zeroize::Zeroizing::new(String::new());
        for t in pending {
            text.push_str(&zeroize::Zeroizing::new(t.to_string()));
            text.push('\n');
        }
        Ok(self
            .store
            .write_private_file(INVITES_FILE, text.as_bytes().to_vec())
            .await?)
    }

    /// Ask `peer` (connected to the running node) to let this device in
    /// through each pending invite ([`Hearth::join`]). A channel let in is
    /// joined with every key generation and answers to its name; its
    /// history comes with the next sync with the peer. An invite past its
    /// end is dropped; one the peer refuses stays pending (another member
    /// may know it), and the refusal is reported.
    pub async fn join_through(&self, peer: PeerId) -> Result<JoinAttempt> {
        let mut attempt = JoinAttempt::default();
        let pending = self.pending_invites().await?;
        if pending.is_empty() {
            return Ok(attempt);
        }
        let node = self.running()?.node;
        let mut keep = Vec::new();
        for ticket in pending {
            let Ticket::Join {
                channel,
                name,
                invite,
                secret,
                expires,
                ..
            } = &ticket
            else {
                continue;
            };
            if self.store.channel(*channel).await.is_ok() {
                continue;
            }
            if expires.is_some_and(|e| e <= unix_now()) {
                attempt.refused.push((name.clone(), "the invite has expired".into()));
                continue;
            }
            let req = self.store.join_request(*invite, secret).await?;
            match node.join_through(peer, req).await {
                Ok(sealed) => {
                    let id = self.store.accept_invite(*invite, sealed).await?;
                    // The name the channel has now (it may have changed since
                    // the ticket was made).
                    let name = self.store.channel(id).await.map_or_else(|_| name.clone(), |c| c.name);
                    attempt.joined.push((id, name));
                }
                Err(e) => {
                    attempt.refused.push((name.clone(), e.to_string()));
                    keep.push(ticket.clone());
                }
            }
        }
        self.save_pending(&keep).await?;
        Ok(attempt)
    }

    /// Offer to link a new device of this user through the running node:
    /// returns a one-time ticket (with `addrs`, where the node can be
    /// reached), good for [`LINK_TTL`]. The first device that presents it
    /// is reported by the node ([`hearth_sync::NodeEvent::LinkRequested`],
    /// with a six-digit code); once this user confirms that the new device
    /// shows the same code ([`crate::SyncHandle::confirm_link`]), it gets a
    /// certificate chain this device issues for the keys it sent (never the
    /// user key), the user's name and the channel keys, sealed under the
    /// ticket's secret (see [`Hearth::create_linked`]). A revocation of this
    /// device reaches the devices it linked.
    pub async fn link_ticket(&self, addrs: Vec<Multiaddr>) -> Result<Ticket> {
        let node = self.running()?.node;
        let secret = hearth_core::SecretKey::generate()?;
        node.offer_link(secret.clone(), LINK_TTL).await?;
        let expires = unix_now().saturating_add(LINK_TTL.as_secs());
        Ok(Ticket::link(secret, addrs, expires)?)
    }

    /// Create a store in `dir` for a new device of the user who made a link
    /// ticket: reach the ticket's node, show the code (`show_code`: the
    /// linking device shows the same one, and its user confirms it there),
    /// send this device's new public keys and fetch the sealed bundle once
    /// confirmed, then create the store as that user, certified by the
    /// linking device, with its own device id and every channel joined
    /// (their history arrives by sync). Fails at once for a ticket past its
    /// end.
    pub async fn create_linked(
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        ticket: &Ticket,
        config: Config,
        timeout: std::time::Duration,
        mut show_code: impl FnMut(&str) + Send,
    ) -> Result<Self> {
        let Ticket::Link { secret, addrs, expires } = ticket else {
            return Err(Error::BadTicket {
                detail: "not a link ticket".into(),
            });
        };
        if expires.is_some_and(|e| e <= unix_now()) {
            return Err(Error::Link(
                "the link ticket has expired: make a new one with `hearth link`".into(),
            ));
        }
        let node_key = hearth_core::SecretKey::generate()?;
        let keys = hearth_core::device::DeviceKeys::generate()?;
        let public = keys.public();
        let node = hearth_sync::start(hearth_sync::Detached, &node_key, hearth_sync::NodeConfig::default()).await?;
        let fetch = async {
            let mut last = hearth_sync::NodeError::Link("the ticket has no address".into());
            for addr in addrs {
                let Some(peer) = hearth_sync::peer_of(addr) else {
                    continue;
                };
                if let Err(e) = node.dial(addr.clone()).await {
                    last = e;
                    continue;
                }
                match node.wait_connected(peer, timeout).await {
                    Ok(()) => {
                        show_code(&node.link_code(peer, secret));
                        return node.fetch_link(peer, secret, public).await;
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let bundle = tokio::time::timeout(timeout, fetch).await.unwrap_or_else(|_| {
            Err(hearth_sync::NodeError::Link(
                "no answer from the linking device in time".into(),
            ))
        });
        node.stop().await.ok();
        let bundle = bundle?;
        Ok(Hearth::wrap(
            Store::create_linked(dir, pass, keys, &bundle, config).await?,
        ))
    }
}
