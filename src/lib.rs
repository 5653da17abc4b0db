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
//! [`Hearth::start_sync`] starts the node the store owns, which reconciles
//! every channel with the peers it meets over libp2p; its [`SyncHandle`]
//! waits until it listens, connects, and syncs until both sides are equal.
//! Every call fails with one [`Error`] enum; the sync plumbing (vectors,
//! raw entries, ingest) is apart, on [`Hearth::plumbing`].
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

mod error;
mod events;
mod export;
mod hearth;
mod invites;
mod node;
mod plumbing;

pub use error::{Error, Result};
pub use events::{Event, Events};
pub use export::{EXPORT_FORMAT, EXPORT_VERSION, Export, ExportChannel, ExportMessage, ImportReport};
pub use hearth::{Ack, Hearth};
pub use invites::{JoinAttempt, Joined, LINK_TTL};
pub use node::{ChannelStats, PeerLack, SyncHandle, SyncReport};
pub use plumbing::Plumbing;

/// The pure core (ids, clock, crypto, document model, byte formats), re-exported whole.
pub use hearth_core as core;
pub use hearth_core::{ChannelId, DeviceId, KdfParams, MAX_TEXT_BYTES, Message, MessageId, Passphrase, Role, UserId};
/// The engine underneath (sled, the journal, the feed log), re-exported
/// whole for tools; [`Hearth`] is the API.
pub use hearth_store as store;
pub use hearth_store::{
    BackupInfo, BackupReport, BackupSummary, ChannelInfo, CompactProgress, CompactReport, Config, DeviceInfo,
    IMPORT_CHUNK, ImportPost, InviteInfo, Located, MemberInfo, MigrationPlan, OpenReport, OpenTimings, Problem,
    Receipts, RestoreReport, RosterInfo, STORE_FORMAT, Stats, Thread, VerifyReport, Whoami, check_backup,
};
/// Sync over libp2p: nodes, events, tickets, relays.
pub use hearth_sync as sync;
pub use hearth_sync::{Multiaddr, NodeConfig, NodeEvent, PeerId, PeerStatus, Ticket};

/// The README's examples, compiled with the doctests (so that they stay true).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
