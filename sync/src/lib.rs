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
pub use replica::{Detached, Replica, ReplicaEvent};
pub use ticket::{Ticket, TicketError};
