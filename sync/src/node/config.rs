//! [`NodeConfig`]: how a node runs.

#[allow(unused_imports)]
use super::*;

/// How a node runs. Defaults: no listen address, no peers, mDNS off,
/// anti-entropy every 30 s, redial backoff 250 ms doubling to 30 s, no
/// circuits served, discovery on (with any DHT node it meets) every 5 min.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Addresses to listen on (e.g. `/ip4/127.0.0.1/tcp/0`, `/ip4/127.0.0.1/udp/0/quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial and keep dialing (with `/p2p/<peer id>` when known).
    pub peers: Vec<Multiaddr>,
    /// Discover peers on the local network by mDNS. It multicasts on the real
    /// network interfaces: off unless a user asks for it.
    pub mdns: bool,
    /// Full reconciliation with every connected peer this often.
    pub anti_entropy: Duration,
    /// First redial delay after a failed or lost connection to a known peer.
    pub redial_min: Duration,
    /// Longest redial delay.
    pub redial_max: Duration,
    /// Most connections in all.
    pub max_connections: u32,
    /// Most connections to one peer.
    pub max_per_peer: u32,
    /// Most connections from one IP address (one host opening many peer
    /// ids); beyond, a new connection is closed at once.
    pub max_per_ip: u32,
    /// A connection with no request in flight for this long is closed (a
    /// connected peer reconciles every `anti_entropy`, so only idle strangers
    /// and departed peers are).
    pub idle_timeout: Duration,
    /// Most inbound requests served at once (beyond: answered "busy").
    pub max_inbound: usize,
    /// Most concurrent request streams per connection.
    pub max_streams: usize,
    /// How long a request may take.
    pub request_timeout: Duration,
    /// How long a peer that sent forged or broken data stays disconnected.
    pub ban: Duration,
    /// Most entries a peer may send in a minute that are refused for their
    /// content (signed by a member, but not opening or breaking the document
    /// rules: each costs a decryption and a decode). Beyond, the peer is
    /// disconnected for `ban` like a faulty one, though the fault may be the
    /// authors' it forwarded.
    pub max_failed_content_per_minute: u64,
    /// Relays this user configured (by peer id): each is granted the access
    /// key (never the content key) of every channel it does not prove it
    /// holds, so that it carries them and serves them to members who prove
    /// membership. Any other peer learns only of the channels it proves.
    /// Those that also serve circuits are listened through, as `via`'s are.
    pub relays: Vec<PeerId>,
    /// Circuit relays (addresses ending in `/p2p/<relay id>`) to listen
    /// through: the node keeps a reservation on each, so that peers reach it
    /// by `<relay address>/p2p-circuit/p2p/<this node>` from anywhere, and
    /// DCUtR then upgrades such a connection to a direct one when the NATs
    /// on both sides allow it. They learn nothing of the channels (unlike
    /// `relays`): a circuit carries only what the two ends encrypted.
    pub via: Vec<Multiaddr>,
    /// Serve circuits to others (circuit relay v2, and AutoNAT v2 checks of
    /// their addresses): a node with a public address. Its listen addresses
    /// are announced as its own (a relay must tell its clients where it is).
    pub serve_circuits: bool,
    /// Find the peers of this node's channels through Hearth's DHT
    /// (`crate::discovery`): announce each channel under its rotating
    /// discovery key, look the others up, dial what is found.
    pub discovery: bool,
    /// DHT nodes to start from (addresses ending in `/p2p/<peer id>`);
    /// dialed and kept like `peers`.
    pub bootstrap: Vec<Multiaddr>,
    /// How often the node announces its channels and looks their peers up,
    /// once it has been running a while: the first rounds come sooner (2 s
    /// after the first one, then twice as long each time, up to this).
    pub discovery_interval: Duration,
    /// Send this device's new entries as soon as they are written to the
    /// store's log, a sync before they are durable
    /// ([`hearth_store::Store::send_early`]): a message reaches the peers
    /// sooner, and never waits for a disk that stalls. The cost: after an
    /// unclean shutdown that may have lost entries already sent (the
    /// machine went down), the store continues as a new device of its user.
    pub send_early: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Vec::new(),
            peers: Vec::new(),
            mdns: false,
            anti_entropy: Duration::from_secs(30),
            redial_min: Duration::from_millis(250),
            redial_max: Duration::from_secs(30),
            max_connections: 256,
            // A relayed and a direct connection, a simultaneous open of the
            // hole punch, an AutoNAT dial-back.
            max_per_peer: 4,
            max_per_ip: 16,
            idle_timeout: Duration::from_secs(300),
            max_inbound: 64,
            max_streams: 32,
            request_timeout: Duration::from_secs(30),
            ban: Duration::from_secs(60),
            max_failed_content_per_minute: 256,
            relays: Vec::new(),
            via: Vec::new(),
            serve_circuits: false,
            discovery: true,
            bootstrap: Vec::new(),
            discovery_interval: Duration::from_secs(300),
            send_early: true,
        }
    }
}
