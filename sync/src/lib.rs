//! # hearth-sync
//!
//! Peer-to-peer sync for Hearth over libp2p: devices of one user and members of
//! a channel reconcile the sealed feed entries of the channels they share.
//!
//! - [`proto`]: the frames and their capped codec;
//! - [`auth`]: the membership proofs a peer gives before it learns of a channel;
//! - [`reconcile`]: the sans-I/O reconciliation logic (what to ask, what to send);
//! - [`Replica`]: what a node syncs (a member's [`hearth_store::Store`], or a
//!   [`RelayStore`] that holds sealed entries without any channel key);
//! - [`start`]: the libp2p event loop, its [`NodeHandle`] and its events;
//! - [`listen`]: listen addresses kept across restarts.
//!
//! An app embeds this through the `hearth` facade (`Hearth::start_sync`);
//! relays, tests and tools start a node on a [`Replica`] themselves:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use hearth_sync::{Detached, NodeConfig, NodeEvent, start};
//!
//! // A node with nothing to sync (what a new device dials with to fetch its
//! // link bundle); a member's node syncs a `hearth_store::Store` the same way.
//! let secret = hearth_core::SecretKey::generate()?;
//! let node = start(Detached, &secret, NodeConfig {
//!     listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
//!     ..NodeConfig::default() // mDNS off; redial with backoff
//! })
//! .await?;
//! let addrs = node.wait_listening(Duration::from_secs(5)).await?;
//! assert!(addrs[0].to_string().ends_with(&format!("/p2p/{}", node.peer_id())));
//! let mut events = node.subscribe(); // peers, sessions, rejections, links
//! node.stop().await?; // or drop every handle
//! while let Ok(e) = events.try_recv() {
//!     assert!(!matches!(e, NodeEvent::Rejected { .. }));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod discovery;
pub mod drive;
pub mod listen;
pub mod live;
mod node;
pub mod proto;
pub mod reconcile;
mod relay;
mod replica;
pub mod ticket;

pub use libp2p::{Multiaddr, PeerId};
pub use node::{
    NodeConfig, NodeError, NodeEvent, NodeHandle, PeerStatus, is_relayed, peer_id_of_secret, peer_of, start,
};
pub use relay::{RelayConfig, RelayStats, RelayStore};
pub use replica::{Detached, Replica, ReplicaEvent, ReplicaEvents};
pub use ticket::{Ticket, TicketError};
