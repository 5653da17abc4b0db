//! What a node reports: [`NodeEvent`], [`PeerStatus`], [`NodeError`].

#[allow(unused_imports)]
use super::*;

/// Something a node did or saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// Listening on an address (give it to peers).
    Listening {
        /// The address, with `/p2p/<peer id>`.
        addr: Multiaddr,
    },
    /// A peer connected.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its address.
        addr: Multiaddr,
    },
    /// A peer's last connection closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A reconciliation with a peer finished.
    Synced {
        /// The peer.
        peer: PeerId,
        /// Channels compared.
        channels: usize,
        /// Entries received and stored.
        received: u64,
        /// Entries the peer acknowledged.
        sent: u64,
        /// Entries pushed, those the peer held already included.
        pushed: u64,
        /// Requests it took.
        round_trips: u32,
        /// Both hold the same entries of every shared channel now.
        in_sync: bool,
    },
    /// A peer acknowledged holding a channel's feeds up to a vector
    /// (delivery receipts): after a session, what the peer holds of the
    /// channel; after a live push, of the feeds pushed.
    Acknowledged {
        /// The peer.
        peer: PeerId,
        /// The channel.
        wire: WireId,
        /// What it holds.
        vector: Vector,
    },
    /// Something from the local replica an app shows: messages and read
    /// markers from other devices.
    Store(hearth_store::StoreEvent),
    /// A peer's input was refused.
    Rejected {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
        /// The peer was disconnected (forged or broken data, malformed frame).
        dropped: bool,
    },
    /// A peer speaks another version of the sync protocol: nothing is
    /// exchanged with it (it is not banned; one of the two needs updating).
    Incompatible {
        /// The peer.
        peer: PeerId,
        /// The sync protocols it offers.
        offers: Vec<String>,
    },
    /// A device proved it holds a link ticket's secret and waits for this
    /// user to confirm: show `code` and ask whether the new device shows the
    /// same, then call [`NodeHandle::confirm_link`]. Nothing is sent before.
    LinkRequested {
        /// The asking device's (temporary) peer id.
        peer: PeerId,
        /// The code it must show too (six digits).
        code: String,
    },
    /// A new device of this user received its link bundle.
    Linked {
        /// The new device's (temporary) peer id.
        peer: PeerId,
    },
    /// A circuit relay took this node's reservation: peers reach it through
    /// the relay (its `/p2p-circuit` address comes as [`NodeEvent::Listening`]).
    Reserved {
        /// The relay.
        relay: PeerId,
    },
    /// A reservation could not be made or renewed; it is tried again later.
    ReservationFailed {
        /// The relay.
        relay: PeerId,
        /// Why.
        error: String,
    },
    /// A hole punch (DCUtR) with a peer reached through a relay ended: on
    /// success the node talks to it directly and drops the relayed connection.
    HolePunch {
        /// The peer.
        peer: PeerId,
        /// Why it failed (`None`: direct now).
        error: Option<String>,
    },
    /// AutoNAT v2: a server dialed one of this node's addresses back (it is
    /// reachable there), or could not.
    Reachability {
        /// The address tested.
        addr: Multiaddr,
        /// Reachable from outside.
        reachable: bool,
    },
    /// A peer found through the DHT (it announced a channel this node holds)
    /// is connected; it is kept and redialed like a configured one.
    Discovered {
        /// The peer.
        peer: PeerId,
        /// Where it was reached.
        addr: Multiaddr,
    },
    /// Dialing a known peer failed; it is tried again later.
    DialFailed {
        /// The address.
        addr: Multiaddr,
        /// Why.
        error: String,
        /// When the next attempt is.
        retry_in: Duration,
    },
}

/// What a node knows about one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub peer: PeerId,
    /// Connected now.
    pub connected: bool,
    /// Its address, if known.
    pub addr: Option<Multiaddr>,
    /// The last reconciliation left both with the same entries of every shared channel.
    pub in_sync: bool,
    /// Entries the peer holds that this node lacks, as last seen.
    pub behind: u64,
    /// Entries this node holds that the peer lacks, as last seen.
    pub ahead: u64,
    /// Completed reconciliations with it.
    pub sessions: u64,
    /// The peer is a relay.
    pub relay: bool,
    /// The peer speaks another version of the sync protocol.
    pub incompatible: bool,
}

/// Errors of the node API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// libp2p could not be set up (transport, listen address).
    #[error("network setup failed: {0}")]
    Setup(String),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// No connection to that peer.
    #[error("not connected to {0}")]
    NotConnected(PeerId),
    /// A local storage error.
    #[error(transparent)]
    Store(#[from] hearth_store::Error),
    /// Linking a device failed.
    #[error("device link failed: {0}")]
    Link(String),
    /// Joining through an invite failed.
    #[error("the invite was not taken: {0}")]
    Join(String),
    /// What was waited for did not happen in time.
    #[error("timed out waiting for {0} after {1:?}")]
    Timeout(&'static str, Duration),
}
