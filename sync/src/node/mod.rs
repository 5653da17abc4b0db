//! The node: one task owns the libp2p swarm; a worker task per connected peer
//! runs reconciliation sessions with it; inbound requests are served by short
//! tasks under a concurrency limit. Everything talks to the swarm task through
//! bounded channels; [`NodeHandle`] is the cloneable outside view.
//!
//! ```text
//!   replica events ──▶ swarm task ──Work──▶ peer worker ──run_session──▶ Request ──▶ swarm ──▶ peer
//!   peer ──Request──▶ swarm task ──spawn──▶ serve(replica) ──Respond──▶ swarm task ──▶ peer
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hearth_core::{Vector, WireId};
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, identify, kad, mdns, noise, ping, relay,
    tcp, yamux,
};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tracing::Instrument;

use crate::drive::{Conn, Served, run_session, run_session_with, serve};
use crate::proto::{self, Framed, Request, Response};
use crate::reconcile::{Outcome, Session};
use crate::{Replica, ReplicaEvent};
mod config;
mod discovery;
mod events;
mod handle;
mod swarm;
mod worker;

pub use config::NodeConfig;
pub use events::{NodeError, NodeEvent, PeerStatus};
use handle::{Acks, acknowledged, keypair};
pub use handle::{NodeHandle, peer_id_of_secret, peer_of};
use worker::{LiveServing, Worker, serve_live, spawn_worker};

/// What a linking node answers while its user has not confirmed the code.
const AWAITING_CONFIRMATION: &str = "awaiting confirmation of the code on the linking device";

/// A device link on offer.
struct LinkOffer {
    secret: hearth_core::SecretKey,
    /// When the offer ends.
    until: Instant,
    /// The device that proved the secret first, and whether this user
    /// confirmed its code.
    asking: Option<(PeerId, bool)>,
}

/// How long the accepting side of a new connection waits before its own session.
const LISTENER_SESSION_DELAY: Duration = Duration::from_millis(300);
/// Peers whose held notices a node remembers (past it, it forgets them all
/// and sends each notice once more).
const MAX_NOTED_PEERS: usize = 1024;
/// The accepting side's session waits until the peer has not fetched from it
/// for this long (a catch-up fetches batch after batch, each ingested before
/// the next is asked for), and while the last answer it fetched left
/// entries out (it will fetch again, however long its ingest takes).
const PEER_SESSION_QUIET: Duration = Duration::from_secs(2);
/// ... but not for longer than this after connecting.
const PEER_SESSION_PATIENCE: Duration = Duration::from_secs(30);

// `limits` comes first: the derive asks each field in order whether to take a
// connection, and request-response records one as soon as it is asked; denied
// by a later field, it kept a phantom connection (a debug-build panic on close,
// requests routed to a dead connection; rust-libp2p PR #6601).
#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    rr: request_response::Behaviour<proto::Codec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::v2::client::Behaviour,
    autonat_server: Toggle<autonat::v2::server::Behaviour>,
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// The live streams ([`crate::live`]).
    stream: libp2p_stream::Behaviour,
}

/// How a node that serves circuits (`NodeConfig::serve_circuits`) limits
/// them: as libp2p's defaults (rate limits per peer and per IP included),
/// but a circuit is cut at 64 MiB or an hour, not at 128 KiB or 2 minutes:
/// when the NATs allow no hole punch, a relayed connection carries a whole
/// sync, and the nodes redial when it ends. Bounded still, so that a relay
/// open to anyone lends only so much of its bandwidth to one connection.
fn circuit_limits() -> relay::Config {
    relay::Config {
        max_reservations: 1024,
        max_circuits: 256,
        max_circuit_duration: Duration::from_secs(3600),
        max_circuit_bytes: 64 << 20,
        ..relay::Config::default()
    }
}

/// Whether an address goes through a circuit relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The relay part of a relayed address (up to `/p2p-circuit`).
fn relay_part(addr: &Multiaddr) -> Option<Multiaddr> {
    is_relayed(addr).then(|| addr.iter().take_while(|p| *p != Protocol::P2pCircuit).collect())
}

/// How long after the DHT's first peer the first discovery round runs.
const DISCOVERY_FIRST: Duration = Duration::from_millis(500);
/// The wait after the first discovery round. Each later wait is twice the
/// one before, up to `NodeConfig::discovery_interval`: a first round can run
/// before the peers it looks for have announced (they start at about the
/// same time), and a round is a few small DHT queries.
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);

/// The wait before the discovery round after one that waited `last`
/// (`None`: after the first round), never more than `interval`.
fn discovery_wait(last: Option<Duration>, interval: Duration) -> Duration {
    last.map_or(DISCOVERY_RETRY, |w| w.saturating_mul(2)).min(interval)
}
/// How often a dial through a relay checks whether the relay is ready.
const RELAY_FIRST: Duration = Duration::from_millis(100);
/// The protocol by which a peer tells it serves circuits.
const HOP: &str = "/libp2p/circuit/relay/0.2.0/hop";
/// First wait before a reservation that failed or ended is asked again.
const RESERVE_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between such attempts.
const RESERVE_RETRY_MAX: Duration = Duration::from_secs(60);

enum Cmd {
    Request(PeerId, Request, oneshot::Sender<Result<Response, String>>),
    Respond(PeerId, ResponseChannel<Response>, Response, Served),
    /// A peer opened a live stream.
    LiveStream(PeerId, libp2p::Stream),
    /// A live Push was served.
    LiveServed(PeerId, Served),
    /// A peer sent a live frame that is not one.
    LiveMalformed(PeerId, String),
    SessionDone(PeerId, Outcome, SyncState),
    Dial(Multiaddr, oneshot::Sender<Result<(), NodeError>>),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Listening(oneshot::Sender<Vec<Multiaddr>>),
    SyncWith(PeerId, oneshot::Sender<Result<Outcome, NodeError>>),
    OfferLink(hearth_core::SecretKey, Duration),
    /// A confirmed link's answer is ready (its bundle built and sealed).
    LinkAnswer(PeerId, ResponseChannel<Response>, Response),
    ConfirmLink(PeerId, bool, oneshot::Sender<Result<(), NodeError>>),
    /// A discovery round's keys: those to announce, those to look up.
    Discover(Vec<[u8; 32]>, Vec<[u8; 32]>),
    /// Start a discovery round now.
    DiscoverNow,
    Stop(oneshot::Sender<()>),
}

/// Where a peer stands after a session.
#[derive(Clone, Copy, Debug, Default)]
struct SyncState {
    in_sync: bool,
    behind: u64,
    ahead: u64,
}

enum Work {
    Reconcile(Option<oneshot::Sender<Result<Outcome, NodeError>>>),
    /// The accepting side's own session, after the dialer's: put off while the
    /// peer is still fetching from here (its session moves both ways already;
    /// a second one at the same time would push the same entries again).
    ReconcileAfterPeer,
    /// Push a channel's new entries; this device's, handed over, when the
    /// store gave them with its event.
    Push(WireId, Option<hearth_store::Outgoing>),
    /// The peer holds at least this: said so in a Fetch (its session is
    /// running), or pushed these entries.
    Learned(WireId, Vector, Told),
}

/// How a node learned what a peer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    /// The peer pushed entries.
    Pushed,
    /// The peer fetched; `more` when the answer left entries out (its
    /// catch-up will fetch again).
    Fetched { more: bool },
}

/// Start a node syncing `replica` under the network identity `secret`.
pub async fn start<R: Replica>(
    replica: R,
    secret: &hearth_core::SecretKey,
    config: NodeConfig,
) -> Result<NodeHandle, NodeError> {
    let kp = keypair(secret)?;
    let setup = |e: &dyn std::fmt::Display| NodeError::Setup(e.to_string());
    let cfg = config.clone();
    let mut swarm: Swarm<Behaviour> = SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            let rr = request_response::Behaviour::with_codec(
                proto::Codec,
                [(proto::PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(cfg.request_timeout)
                    .with_max_concurrent_streams(cfg.max_streams),
            );
            let identify = identify::Behaviour::new(identify::Config::new("/hearth/1".into(), key.public()));
            let ping = ping::Behaviour::new(ping::Config::new());
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(cfg.max_connections))
                    .with_max_established_per_peer(Some(cfg.max_per_peer))
                    .with_max_pending_incoming(Some(64)),
            );
            let mdns = if cfg.mdns {
                Toggle::from(Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?))
            } else {
                Toggle::from(None)
            };
            let me = key.public().to_peer_id();
            Ok(Behaviour {
                rr,
                identify,
                ping,
                limits,
                mdns,
                relay_client,
                relay_server: Toggle::from(cfg.serve_circuits.then(|| relay::Behaviour::new(me, circuit_limits()))),
                dcutr: dcutr::Behaviour::new(me),
                autonat: autonat::v2::client::Behaviour::default(),
                autonat_server: Toggle::from(cfg.serve_circuits.then(autonat::v2::server::Behaviour::default)),
                kad: Toggle::from(cfg.discovery.then(|| {
                    let mut c = kad::Config::new(crate::discovery::KAD_PROTOCOL);
                    // Records outlive the periods they are announced for,
                    // and are announced again every round.
                    c.set_provider_record_ttl(Some(crate::discovery::PERIOD * 4));
                    c.set_provider_publication_interval(None);
                    let mut k = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), c);
                    // A public node serves the DHT; others only when their
                    // addresses are confirmed reachable (libp2p's own rule).
                    k.set_mode(cfg.serve_circuits.then_some(kad::Mode::Server));
                    k
                })),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_timeout))
        .build();
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| {
            // The transport's error says nothing by itself; its sources do.
            let mut why = format!("listen on {addr}");
            let mut cause: Option<&dyn std::error::Error> = Some(&e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !text.is_empty() {
                    why.push_str(": ");
                    why.push_str(&text);
                }
                cause = c.source();
            }
            NodeError::Setup(why)
        })?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(4096);
    let live = swarm.behaviour().stream.new_control();
    let mut incoming = live
        .clone()
        .accept(crate::live::LIVE_PROTOCOL)
        .map_err(|e| setup(&format!("{e:?}")))?;
    {
        let cmd = cmd_tx.clone();
        tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                if cmd.send(Cmd::LiveStream(peer, stream)).await.is_err() {
                    return;
                }
            }
        });
    }
    let (alive, handles_gone) = oneshot::channel();
    let acks = Acks::default();
    let handle = NodeHandle {
        cmd: cmd_tx.clone(),
        events: events.clone(),
        peer_id: *swarm.local_peer_id(),
        listeners: config.listen.len(),
        acks: acks.clone(),
        _alive: Arc::new(alive),
    };
    let mut node = Loop {
        swarm,
        replica: replica.clone(),
        config: config.clone(),
        cmd_tx,
        events,
        pending: HashMap::new(),
        peers: HashMap::new(),
        known: BTreeMap::new(),
        banned: HashMap::new(),
        listening: Vec::new(),
        link: None,
        inbound: Arc::new(Semaphore::new(config.max_inbound)),
        per_ip: HashMap::new(),
        failed_content: HashMap::new(),
        noted: HashMap::new(),
        identified: HashMap::new(),
        reservations: HashMap::new(),
        reserve_next: HashMap::new(),
        relayed: HashMap::new(),
        providing: BTreeSet::new(),
        discovering: BTreeSet::new(),
        next_discovery: None,
        discovery_wait: None,
        told: HashMap::new(),
        reported: BTreeSet::new(),
        acks,
        live,
    };
    if config.send_early {
        replica.send_early().await.map_err(|e| setup(&e))?;
    }
    for addr in &config.bootstrap {
        if let (Some(peer), Some(kad)) = (peer_of(addr), node.swarm.behaviour_mut().kad.as_mut()) {
            kad.add_address(&peer, addr.clone());
        }
    }
    for addr in config.peers.into_iter().chain(config.via).chain(config.bootstrap) {
        node.add_known(addr, true);
    }
    let replica_events = replica.subscribe();
    tokio::spawn(node.run(cmd_rx, replica_events, handles_gone));
    Ok(handle)
}

struct PeerState {
    work: mpsc::UnboundedSender<Work>,
    status: PeerStatus,
    /// What the peer proved on this connection (shared with its worker and
    /// the tasks serving its requests).
    conn: Conn,
    /// Live streams of the peer being served ([`crate::live::MAX_LIVE_STREAMS`]).
    live_in: Arc<std::sync::atomic::AtomicUsize>,
}

/// A peer we keep dialing.
struct Known {
    addr: Multiaddr,
    peer: Option<PeerId>,
    backoff: Duration,
    next: Option<Instant>,
}

struct Loop<R: Replica> {
    swarm: Swarm<Behaviour>,
    replica: R,
    config: NodeConfig,
    cmd_tx: mpsc::Sender<Cmd>,
    events: broadcast::Sender<NodeEvent>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    peers: HashMap<PeerId, PeerState>,
    known: BTreeMap<String, Known>,
    banned: HashMap<PeerId, Instant>,
    listening: Vec<Multiaddr>,
    /// A one-time device link on offer.
    link: Option<LinkOffer>,
    inbound: Arc<Semaphore>,
    /// Established connections per remote IP address.
    per_ip: HashMap<std::net::IpAddr, u32>,
    /// Per peer: the start of the current minute and the entries it sent
    /// that failed for their content in it.
    failed_content: HashMap<PeerId, (Instant, u64)>,
    /// Per peer, what this node knows it holds: the revocation notices and
    /// removals (a relay), this device's chain, its certificate (a relay
    /// this user configured); each is sent once a run (`Conn::with_memo`).
    noted: HashMap<PeerId, Arc<std::sync::Mutex<crate::drive::PeerMemo>>>,
    /// Connected peers whose identify came (a relay among them has told
    /// this node its observed address, which a hole punch needs first).
    /// Per peer: whether it serves circuits.
    identified: HashMap<PeerId, bool>,
    /// Circuit relays listened through: the listener of each.
    reservations: HashMap<PeerId, ListenerId>,
    /// Per circuit relay whose reservation ended: when to ask again, and
    /// the wait after that.
    reserve_next: HashMap<PeerId, (Instant, Duration)>,
    /// Relayed connections, per peer (closed once a hole punch gives a
    /// direct one: request-response spreads requests over all of them).
    relayed: HashMap<PeerId, BTreeSet<ConnectionId>>,
    /// Discovery keys this node announces itself under.
    providing: BTreeSet<[u8; 32]>,
    /// Peers found through the DHT and dialed, not connected yet.
    discovering: BTreeSet<PeerId>,
    /// When the next discovery round is due (`None`: once the DHT knows a peer).
    next_discovery: Option<Instant>,
    /// The wait that set `next_discovery` after the last round (`None`
    /// before the first round): see [`discovery_wait`].
    discovery_wait: Option<Duration>,
    /// Per connected peer: the addresses it told (identify), those a peer
    /// elsewhere can use (no loopback unless reached over loopback).
    told: HashMap<PeerId, Vec<Multiaddr>>,
    /// What each peer acknowledged holding (shared with the handles).
    acks: Acks,
    /// Connected peers reported found through the DHT (once a connection).
    reported: BTreeSet<PeerId>,
    /// Opens the live streams of the workers ([`crate::live`]).
    live: libp2p_stream::Control,
}

/// The IP address a multiaddr starts with.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(a.into()),
        Protocol::Ip6(a) => Some(a.into()),
        _ => None,
    })
}

impl<R: Replica> Loop<R> {
    fn emit(&self, e: NodeEvent) {
        let _ = self.events.send(e);
    }

    /// Keep dialing `addr`. With `dial_now`, the next tick dials it; without,
    /// the caller dials it and the outcome schedules the next attempt.
    fn add_known(&mut self, addr: Multiaddr, dial_now: bool) {
        let key = addr.to_string();
        self.known.entry(key).or_insert(Known {
            peer: peer_of(&addr),
            addr,
            backoff: self.config.redial_min,
            next: dial_now.then(Instant::now),
        });
    }

    /// Close every connection (the node is stopping).
    fn hang_up(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// When a banned peer may be dialed again.
    fn banned_until(&self, peer: &PeerId) -> Option<Instant> {
        self.banned.get(peer).copied().filter(|t| *t > Instant::now())
    }

    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut replica_events: crate::ReplicaEvents,
        mut handles_gone: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_anti_entropy = Instant::now();
        let mut replica_open = true;
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                // Every handle is dropped: nobody can use or stop the node.
                _ = &mut handles_gone => {
                    self.hang_up();
                    return;
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Stop(done)) => {
                        self.hang_up();
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.on_cmd(c),
                    None => return,
                },
                ev = replica_events.recv(), if replica_open => match ev {
                    Ok(ReplicaEvent::Appended(wire, outgoing)) => {
                        for p in self.peers.values() {
                            let _ = p.work.send(Work::Push(wire, outgoing.clone()));
                        }
                    }
                    Ok(ReplicaEvent::Store(e)) => self.emit(NodeEvent::Store(e)),
                    // A full session with each peer checks who it is
                    // against the rosters again (a removed member's
                    // connection stops being served).
                    Ok(ReplicaEvent::Lagged | ReplicaEvent::Recheck) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        for p in self.peers.values() {
                            let _ = p.work.send(Work::Reconcile(None));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => replica_open = false,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.banned.retain(|_, until| *until > now);
                    self.redial();
                    if self.next_discovery.is_some_and(|t| t <= now) {
                        let wait = discovery_wait(self.discovery_wait, self.config.discovery_interval);
                        self.discovery_wait = Some(wait);
                        self.next_discovery = Some(now + wait);
                        self.start_discovery();
                    }
                    if last_anti_entropy.elapsed() >= self.config.anti_entropy {
                        last_anti_entropy = Instant::now();
                        for p in self.peers.values() {
                            let _ = p.work.send(Work::Reconcile(None));
                        }
                    }
                }
            }
        }
    }

    fn redial(&mut self) {
        let now = Instant::now();
        let connected: BTreeSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut dial = Vec::new();
        let mut relays = Vec::new();
        for k in self.known.values_mut() {
            if k.peer.is_some_and(|p| connected.contains(&p)) {
                continue;
            }
            if k.next.is_some_and(|t| t <= now) {
                // Through a relay: first to the relay itself, until its
                // identify tells this node its observed address (a hole
                // punch offers those); the relay is then a known peer.
                if let Some(relay) = relay_part(&k.addr)
                    && peer_of(&relay).is_some_and(|r| !self.identified.contains_key(&r))
                {
                    k.next = Some(now + RELAY_FIRST);
                    relays.push(relay);
                    continue;
                }
                k.next = None; // the outcome of this dial schedules the next one
                dial.push(k.addr.clone());
            }
        }
        for relay in relays {
            self.add_known(relay, true);
        }
        self.reserve_due();
        for addr in dial {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                self.dial_failed(&addr, e.to_string());
            }
        }
    }

    fn dial_failed(&mut self, addr: &Multiaddr, error: String) {
        let max = self.config.redial_max;
        let Some(k) = self.known.get_mut(&addr.to_string()) else {
            return;
        };
        let retry_in = k.backoff;
        k.next = Some(Instant::now() + retry_in);
        k.backoff = (k.backoff * 2).min(max);
        self.emit(NodeEvent::DialFailed {
            addr: addr.clone(),
            error,
            retry_in,
        });
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request(peer, req, reply) => {
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(format!("not connected to {peer}")));
                    return;
                }
                let id = self.swarm.behaviour_mut().rr.send_request(&peer, Framed::Valid(req));
                self.pending.insert(id, reply);
            }
            Cmd::Respond(peer, channel, resp, served) => {
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, resp);
                self.after_serving(peer, served);
            }
            Cmd::LiveStream(peer, stream) => {
                // Only a peer connected and not banned, with few streams open.
                let Some(p) = self.peers.get(&peer) else { return };
                if self.banned_until(&peer).is_some()
                    || p.live_in.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= crate::live::MAX_LIVE_STREAMS
                {
                    p.live_in.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                tokio::spawn(serve_live(
                    peer,
                    stream,
                    LiveServing {
                        replica: self.replica.clone(),
                        conn: p.conn.clone(),
                        work: p.work.clone(),
                        inbound: self.inbound.clone(),
                        cmd: self.cmd_tx.clone(),
                        streams: p.live_in.clone(),
                    },
                ));
            }
            Cmd::LiveServed(peer, served) => self.after_serving(peer, served),
            Cmd::LiveMalformed(peer, why) => self.reject(peer, why, true),
            Cmd::SessionDone(peer, outcome, state) => self.session_done(peer, outcome, state),
            Cmd::Dial(addr, reply) => {
                // Through a relay not identified yet: the next tick dials the
                // relay first (`redial`).
                if relay_part(&addr)
                    .and_then(|r| peer_of(&r))
                    .is_some_and(|r| !self.identified.contains_key(&r))
                {
                    self.add_known(addr, true);
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.add_known(addr.clone(), false);
                let r = self.swarm.dial(addr).map_err(|e| NodeError::Setup(e.to_string()));
                let _ = reply.send(r);
            }
            Cmd::Status(reply) => {
                let mut out: Vec<PeerStatus> = self.peers.values().map(|p| p.status.clone()).collect();
                for k in self.known.values() {
                    if let Some(p) = k.peer
                        && !self.peers.contains_key(&p)
                    {
                        out.push(PeerStatus {
                            peer: p,
                            connected: false,
                            addr: Some(k.addr.clone()),
                            in_sync: false,
                            behind: 0,
                            ahead: 0,
                            sessions: 0,
                            relay: false,
                            incompatible: false,
                        });
                    }
                }
                let _ = reply.send(out);
            }
            Cmd::Listening(reply) => {
                let _ = reply.send(self.listening.clone());
            }
            Cmd::SyncWith(peer, reply) => match self.peers.get(&peer) {
                Some(p) => {
                    let _ = p.work.send(Work::Reconcile(Some(reply)));
                }
                None => {
                    let _ = reply.send(Err(NodeError::NotConnected(peer)));
                }
            },
            Cmd::OfferLink(secret, valid_for) => {
                self.link = Some(LinkOffer {
                    secret,
                    until: Instant::now() + valid_for,
                    asking: None,
                })
            }
            Cmd::LinkAnswer(peer, channel, resp) => {
                if matches!(resp, Response::Link { .. }) {
                    self.emit(NodeEvent::Linked { peer });
                }
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, resp);
            }
            Cmd::DiscoverNow => self.start_discovery(),
            Cmd::Discover(announce, lookup) => self.discover(announce, lookup),
            Cmd::ConfirmLink(peer, accept, reply) => {
                let r = match &mut self.link {
                    Some(o) if o.asking.is_some_and(|(p, _)| p == peer) => {
                        if accept {
                            o.asking = Some((peer, true));
                        } else {
                            self.link = None;
                        }
                        Ok(())
                    }
                    _ => Err(NodeError::Link(format!("{peer} is not asking to link"))),
                };
                let _ = reply.send(r);
            }
            Cmd::Stop(_) => unreachable!("handled by the loop"),
        }
    }

    fn after_serving(&mut self, peer: PeerId, served: Served) {
        // A Fetch of a channel held here says what the peer has, and will
        // have once it takes the answer (what a Push says, its worker learnt
        // when it arrived).
        if let (Some(p), Some((wire, have))) = (self.peers.get(&peer), served.learned) {
            let _ = p
                .work
                .send(Work::Learned(wire, have, Told::Fetched { more: served.more }));
        }
        if served.rejected > 0 {
            let reason = served.reason.unwrap_or_default();
            self.reject(peer, reason, served.malicious);
        }
        self.count_failed_content(peer, served.failed_content);
    }

    /// Rate limit on entries that fail for their content, per peer and minute.
    fn count_failed_content(&mut self, peer: PeerId, n: u64) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        // Kept across reconnections (a reconnect must not reset the count);
        // minutes that are over are dropped once there are many.
        if self.failed_content.len() > 1024 {
            self.failed_content
                .retain(|_, w| now.duration_since(w.0) < Duration::from_secs(60));
        }
        let w = self.failed_content.entry(peer).or_insert((now, 0));
        if now.duration_since(w.0) >= Duration::from_secs(60) {
            *w = (now, 0);
        }
        w.1 += n;
        if w.1 > self.config.max_failed_content_per_minute {
            let reason = format!(
                "throttled: more than {} entries that fail for their content in a minute",
                self.config.max_failed_content_per_minute
            );
            self.failed_content.remove(&peer);
            self.reject(peer, reason, true);
        }
    }

    /// Answer a device's Link request (see [`NodeHandle::offer_link`]):
    /// refused until this user confirmed the code; once confirmed, the
    /// bundle for `keys` is built by the replica and sealed off the loop.
    fn answer_link(
        &mut self,
        peer: PeerId,
        proof: [u8; 32],
        keys: hearth_core::device::DevicePublic,
        channel: ResponseChannel<Response>,
    ) {
        let refused = |reason: &str| Response::Refused { reason: reason.into() };
        if self.link.as_ref().is_some_and(|o| o.until <= Instant::now()) {
            self.link = None;
        }
        let resp = match &mut self.link {
            None => refused("no device link is on offer here (it ended, was used or was declined)"),
            Some(offer) if hearth_core::link_proof(&offer.secret, &peer.to_bytes()) != proof => {
                // Only a guess gets here: the secret is the ticket's.
                self.reject(peer, "wrong device link proof".into(), true);
                refused("no such device link")
            }
            Some(offer) => match offer.asking {
                None => {
                    offer.asking = Some((peer, false));
                    let code =
                        hearth_core::link_code(&offer.secret, &self.swarm.local_peer_id().to_bytes(), &peer.to_bytes());
                    self.emit(NodeEvent::LinkRequested { peer, code });
                    refused(AWAITING_CONFIRMATION)
                }
                Some((p, false)) if p == peer => refused(AWAITING_CONFIRMATION),
                Some((p, true)) if p == peer => {
                    let offer = self.link.take().expect("an offer");
                    let (replica, tx) = (self.replica.clone(), self.cmd_tx.clone());
                    tokio::spawn(async move {
                        let resp = match replica.link_bundle(keys).await {
                            Ok(Some(bundle)) => match bundle.seal(&offer.secret) {
                                Ok(sealed) => Response::Link {
                                    sealed: serde_bytes::ByteBuf::from(sealed),
                                },
                                Err(e) => refused(&format!("the bundle could not be sealed: {e}")),
                            },
                            Ok(None) => refused("this node links no devices"),
                            Err(e) => refused(&format!("no bundle for this device: {e}")),
                        };
                        let _ = tx.send(Cmd::LinkAnswer(peer, channel, resp)).await;
                    });
                    return;
                }
                Some(_) => refused("another device is linking with this ticket"),
            },
        };
        let _ = self.swarm.behaviour_mut().rr.send_response(channel, resp);
    }

    /// Report, once per connection, a peer that speaks another version of the
    /// sync protocol. It is not banned.
    fn incompatible(&mut self, peer: PeerId, offers: Vec<String>) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.status.incompatible {
                return;
            }
            p.status.incompatible = true;
        }
        self.emit(NodeEvent::Incompatible { peer, offers });
    }

    /// Report a peer's bad input; drop and ban it if the input was forged or broken.
    fn reject(&mut self, peer: PeerId, reason: String, drop: bool) {
        tracing::warn!(%peer, reason = %reason, dropped = drop, "peer input rejected");
        if drop {
            self.banned.insert(peer, Instant::now() + self.config.ban);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.emit(NodeEvent::Rejected {
            peer,
            reason,
            dropped: drop,
        });
    }

    fn session_done(&mut self, peer: PeerId, outcome: Outcome, state: SyncState) {
        if outcome.refused_here > 0 || outcome.fault_here {
            let reason = outcome
                .refusal
                .clone()
                .or_else(|| outcome.failed.clone())
                .unwrap_or_default();
            self.reject(peer, reason, outcome.fault_here);
        }
        self.count_failed_content(peer, outcome.failed_content);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if outcome.failed.is_none() {
            p.status.sessions += 1;
        }
        p.status.in_sync = state.in_sync;
        p.status.behind = state.behind;
        p.status.ahead = state.ahead;
        p.status.relay |= outcome.peer_relay;
        for (wire, vector) in &outcome.peer {
            acknowledged(&self.acks, &self.events, peer, *wire, vector.clone());
        }
    }

    /// A listen address, ending in `/p2p/<this node>` (a circuit's does already).
    fn with_me(&self, addr: Multiaddr) -> Multiaddr {
        let me = *self.swarm.local_peer_id();
        if peer_of(&addr) == Some(me) {
            addr
        } else {
            addr.with(Protocol::P2p(me))
        }
    }
}
