//! # hearth
//!
//! An embeddable, encrypted, local-first storage engine for chat apps: channels,
//! threads, reactions, edits, deletes and read markers that work offline, stay
//! encrypted on the device and survive crashes with nothing acknowledged lost.
//!
//! This crate is the embedding API: a [`Hearth`] handle over the local engine
//! (`hearth-store`). Every user action becomes an automerge change, sealed with
//! XChaCha20-Poly1305 into the device's hash-chained, signed feed in a sled commit
//! log; the keys come from a passphrase through Argon2id. Peer-to-peer sync
//! (`hearth-sync`, re-exported as [`sync`]) runs on the same handle:
//! [`Hearth::start_node`] reconciles every channel with the peers it meets over
//! libp2p and reports what happens as [`sync::NodeEvent`]s.
//!
//! It is not a chat client and not a server: there is no server.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use hearth::{Config, Hearth, KdfParams, Passphrase};
//!
//! let dir = tempfile::tempdir()?;
//! let pass = Passphrase::new("correct horse battery staple");
//! // Tests may lower the Argon2id cost; real stores keep the default.
//! let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
//! let hearth = Hearth::create(dir.path(), &pass, "alice", config.clone()).await?;
//! let general = hearth.create_channel("general").await?;
//! let root = hearth.post(general, "lunch?").await?;
//! let reply = hearth.reply(root, "yes, 12:30").await?;
//! hearth.react(reply, "👍").await?;
//! hearth.edit(root, "lunch at noon?").await?;
//! hearth.close().await?;
//!
//! let hearth = Hearth::open(dir.path(), &pass, config).await?;
//! let thread = hearth.thread(root).await?;
//! assert_eq!(thread.root.text.as_deref(), Some("lunch at noon?"));
//! assert!(thread.root.edited);
//! assert_eq!(thread.replies[0].reactions["👍"].len(), 1);
//! hearth.close().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

use std::ops::Deref;
use std::path::Path;

mod export;
pub use export::{EXPORT_FORMAT, EXPORT_VERSION, Export, ExportChannel, ExportMessage, ImportReport};

/// The pure core (ids, clock, crypto, document model, byte formats), re-exported whole.
pub use hearth_core as core;
pub use hearth_core::{ChannelId, DeviceId, KdfParams, MAX_TEXT_BYTES, Message, MessageId, Passphrase, Role, UserId};
pub use hearth_store::{
    BackupInfo, BackupReport, BackupSummary, ChannelInfo, CompactProgress, CompactReport, Config, DeviceInfo, Error,
    IMPORT_CHUNK, ImportPost, InviteInfo, JoinRequest, Located, MemberInfo, MigrationPlan, NewInvite, OpenReport,
    OpenTimings, Outcome, Pending, Problem, Receipts, RestoreReport, Result, RosterInfo, STORE_FORMAT, Stats, Store,
    StoreEvent, Thread, VerifyReport, Whoami, Write, check_backup, copy_dir_durably, create_private_dir, dir_bytes,
    make_private, write_atomic,
};
/// Sync over libp2p: nodes, events, tickets, relays.
pub use hearth_sync as sync;

/// A Hearth store, opened with its passphrase.
///
/// Every method of [`Store`] is available on it (posting, reacting, editing,
/// deleting, read markers, pages, threads, unread counts, stats, verify);
/// writes return only once durable. Clones share one store.
#[derive(Clone, Debug)]
pub struct Hearth {
    store: Store,
}

/// The sealed file beside the store that keeps invites not let in through yet.
const INVITES_FILE: &str = "invites";

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

/// How long a link ticket is good for.
pub const LINK_TTL: std::time::Duration = std::time::Duration::from_secs(600);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Hearth {
    /// Create a store in `dir` for a new user named `user_name`.
    pub async fn create(dir: impl AsRef<Path>, pass: &Passphrase, user_name: &str, config: Config) -> Result<Self> {
        Ok(Hearth {
            store: Store::create(dir, pass, user_name, config).await?,
        })
    }

    /// Open the store in `dir`. Writes acknowledged before a crash are recovered.
    pub async fn open(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<Self> {
        Ok(Hearth {
            store: Store::open(dir, pass, config).await?,
        })
    }

    /// Open the store in `dir` after rebuilding its database from the feed
    /// log, whatever state it is in (see [`Store::repair`]).
    pub async fn repair(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<Self> {
        Ok(Hearth {
            store: Store::repair(dir, pass, config).await?,
        })
    }

    /// Replace the store's master key, wrapping the new one under `new_pass`
    /// (see [`Store::rotate_master_key`]). The store must not be open.
    pub async fn rotate_master_key(
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        new_pass: &Passphrase,
        config: Config,
    ) -> Result<hearth_store::RotateReport> {
        Store::rotate_master_key(dir, pass, new_pass, config).await
    }

    /// What opening the store in `dir` would migrate, writing nothing (see
    /// [`Store::migration_plan`]).
    pub async fn migration_plan(dir: impl AsRef<Path>, pass: &Passphrase) -> Result<MigrationPlan> {
        Store::migration_plan(dir, pass).await
    }

    /// Drop the bytes of deleted texts from every file of the store in
    /// `dir` (see [`Store::compact`], which does it on a store that is open
    /// and in use). The store must not be open elsewhere.
    pub async fn compact(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<CompactReport> {
        Store::compact_dir(dir, pass, config).await
    }

    /// Restore the backup at `file` into `dir` (see [`Store::restore`]): the
    /// store continues as a new device of the same user. Open it afterwards.
    pub async fn restore(
        file: impl AsRef<Path>,
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        progress: std::sync::Arc<CompactProgress>,
    ) -> Result<RestoreReport> {
        Store::restore(file, dir, pass, progress).await
    }

    /// Whether `dir` holds a store.
    pub fn exists(dir: impl AsRef<Path>) -> bool {
        Store::exists(dir)
    }

    /// The local engine.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Start a sync node for this store: it listens and dials as `config` says,
    /// reconciles every shared channel with each peer it meets, pushes new
    /// entries at once and runs anti-entropy. Its network identity (peer id) is
    /// derived from the store's key, so it is the same on every start.
    /// Stop it with [`sync::NodeHandle::stop`] before closing the store.
    pub async fn start_node(&self, config: sync::NodeConfig) -> std::result::Result<sync::NodeHandle, sync::NodeError> {
        let secret = self.store.node_secret().await?;
        sync::start(self.store.clone(), &secret, config).await
    }

    /// Invite someone into a channel (admins and owners): a ticket with an
    /// invite's id and secret and the addresses of a node that serves the
    /// channel, never a channel key. Any member's node lets its holder in
    /// until `valid_for` has passed (if given), `uses` devices' users have
    /// joined (0: any number) or the invite is revoked
    /// ([`Store::revoke_invite`]).
    pub async fn invite(
        &self,
        channel: ChannelId,
        addrs: Vec<sync::Multiaddr>,
        valid_for: Option<std::time::Duration>,
        uses: u32,
    ) -> Result<sync::ticket::Ticket> {
        let new = self.store.create_invite(channel, valid_for, uses).await?;
        let expires = new.expires.map(|ms| ms.div_ceil(1000));
        sync::ticket::Ticket::join(new.channel, new.name, new.id, new.secret, expires, addrs).map_err(|e| {
            Error::Invalid {
                what: "ticket".into(),
                detail: e.to_string(),
            }
        })
    }

    /// Join the channel of an invite ticket. A ticket of before invites
    /// ended carries the channel key: the channel is joined at once. Any
    /// other is kept (sealed, beside the store) until a member's node lets
    /// this device in: [`Hearth::join_through`], which `hearth join`,
    /// `hearth sync` and `hearth node` call with every peer they reach.
    pub async fn join(&self, ticket: &sync::ticket::Ticket) -> Result<Joined> {
        match ticket {
            sync::ticket::Ticket::Invite { name, .. } => {
                let keys = ticket.channel_keys().expect("an invite of before invites ended");
                let channel = if name.is_empty() {
                    self.store.join_channel(keys).await?
                } else {
                    self.store.join_channel_named(keys, name).await?
                };
                Ok(Joined::Channel(channel))
            }
            sync::ticket::Ticket::Join {
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
            sync::ticket::Ticket::Link { .. } => Err(Error::Invalid {
                what: "ticket".into(),
                detail: "a link ticket: use it with `hearth init --link`".into(),
            }),
        }
    }

    /// The invites this device was given and not let in through yet.
    pub async fn pending_invites(&self) -> Result<Vec<sync::ticket::Ticket>> {
        let Some(bytes) = self.store.read_private_file(INVITES_FILE).await? else {
            return Ok(Vec::new());
        };
        let bytes = zeroize::Zeroizing::new(bytes);
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::Invalid {
            what: INVITES_FILE.into(),
            detail: "not text".into(),
        })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.parse().map_err(|e: sync::ticket::TicketError| Error::Invalid {
                    what: INVITES_FILE.into(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    async fn save_pending(&self, pending: &[sync::ticket::Ticket]) -> Result<()> {
        let mut text = zeroize::Zeroizing::new(String::new());
        for t in pending {
            text.push_str(&zeroize::Zeroizing::new(t.to_string()));
            text.push('\n');
        }
        self.store
            .write_private_file(INVITES_FILE, text.as_bytes().to_vec())
            .await
    }

    /// Ask `peer` (connected to `node`) to let this device in through each
    /// pending invite ([`Hearth::join`]). A channel let in is joined with
    /// every key generation and answers to its name; its history comes with
    /// the next sync with the peer. An invite past its end is dropped; one
    /// the peer refuses stays pending (another member may know it), and the
    /// refusal is reported.
    pub async fn join_through(&self, node: &sync::NodeHandle, peer: sync::PeerId) -> Result<JoinAttempt> {
        let mut attempt = JoinAttempt::default();
        let pending = self.pending_invites().await?;
        if pending.is_empty() {
            return Ok(attempt);
        }
        let mut keep = Vec::new();
        for ticket in pending {
            let sync::ticket::Ticket::Join {
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

    /// A channel by id, unique id prefix or name ([`Store::resolve_channel`]);
    /// the name of an invite still pending gives a clear error.
    pub async fn resolve_channel(&self, input: &str) -> Result<ChannelId> {
        match self.store.resolve_channel(input).await {
            Err(Error::NotFound { what, id }) => {
                let pending = self.pending_invites().await.unwrap_or_default();
                let waiting = pending.iter().any(|t| {
                    matches!(t, sync::ticket::Ticket::Join { name, channel, .. }
                        if name == input || channel.to_hex().starts_with(input))
                });
                if waiting {
                    Err(Error::NotAllowed {
                        action: format!("use channel {input}"),
                        why: "no member has let this device in yet: run `hearth node` (or `hearth sync`) while \
                              a member's node is reachable"
                            .into(),
                    })
                } else {
                    Err(Error::NotFound { what, id })
                }
            }
            other => other,
        }
    }

    /// Offer to link a new device of this user through a running node: returns
    /// a one-time ticket (with `addrs`, where the node can be reached), good for
    /// [`LINK_TTL`]. The first device that presents it is reported by the node
    /// ([`sync::NodeEvent::LinkRequested`], with a six-digit code); once this
    /// user confirms that the new device shows the same code
    /// ([`sync::NodeHandle::confirm_link`]), it gets a certificate chain this
    /// device issues for the keys it sent (never the user key), the user's
    /// name and the channel keys, sealed under the ticket's secret (see
    /// [`Hearth::create_linked`]). A revocation of this device reaches the
    /// devices it linked.
    pub async fn link_ticket(
        &self,
        node: &sync::NodeHandle,
        addrs: Vec<sync::Multiaddr>,
    ) -> Result<sync::ticket::Ticket> {
        let secret = hearth_core::SecretKey::generate()?;
        node.offer_link(secret.clone(), LINK_TTL)
            .await
            .map_err(|_| Error::Closed)?;
        let expires = unix_now().saturating_add(LINK_TTL.as_secs());
        sync::ticket::Ticket::link(secret, addrs, expires).map_err(|e| Error::Invalid {
            what: "ticket".into(),
            detail: e.to_string(),
        })
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
        ticket: &sync::ticket::Ticket,
        config: Config,
        timeout: std::time::Duration,
        mut show_code: impl FnMut(&str) + Send,
    ) -> std::result::Result<Self, sync::NodeError> {
        let sync::ticket::Ticket::Link { secret, addrs, expires } = ticket else {
            return Err(sync::NodeError::Link("not a link ticket".into()));
        };
        if expires.is_some_and(|e| e <= unix_now()) {
            return Err(sync::NodeError::Link(
                "the link ticket has expired: make a new one with `hearth link`".into(),
            ));
        }
        let node_key = hearth_core::SecretKey::generate().map_err(Error::from)?;
        let keys = hearth_core::device::DeviceKeys::generate().map_err(Error::from)?;
        let public = keys.public();
        let node = sync::start(sync::Detached, &node_key, sync::NodeConfig::default()).await?;
        let fetch = async {
            let mut last = sync::NodeError::Link("the ticket has no address".into());
            for addr in addrs {
                let Some(peer) = sync::peer_of(addr) else { continue };
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
            Err(sync::NodeError::Link(
                "no answer from the linking device in time".into(),
            ))
        });
        node.stop().await.ok();
        let bundle = bundle?;
        Ok(Hearth {
            store: Store::create_linked(dir, pass, keys, &bundle, config).await?,
        })
    }

    /// Close the store cleanly (snapshot, checkpoint, unlock).
    pub async fn close(self) -> Result<()> {
        self.store.close().await
    }
}

impl Deref for Hearth {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}
