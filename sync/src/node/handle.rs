//! [`NodeHandle`], the cloneable outside view of a node, and what it
//! knows of each peer's share of a channel.

#[allow(unused_imports)]
use super::*;

/// What each peer acknowledged holding, per channel (wire id): merged
/// from its sessions and its live acknowledgements.
pub(super) type Acks = Arc<std::sync::Mutex<HashMap<(PeerId, WireId), Vector>>>;

/// Note that `peer` acknowledged holding `vector` of `wire`, and say so.
pub(super) fn acknowledged(
    acks: &Acks,
    events: &broadcast::Sender<NodeEvent>,
    peer: PeerId,
    wire: WireId,
    vector: Vector,
) {
    acks.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((peer, wire))
        .or_default()
        .merge(&vector);
    let _ = events.send(NodeEvent::Acknowledged { peer, wire, vector });
}

/// The cloneable handle of a running node. The node runs until
/// [`NodeHandle::stop`] or until its last handle is dropped.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) cmd: mpsc::Sender<Cmd>,
    pub(super) events: broadcast::Sender<NodeEvent>,
    pub(super) peer_id: PeerId,
    /// The listen addresses it was started with (each gives at least one).
    pub(super) listeners: usize,
    pub(super) acks: Acks,
    /// Dropped with the last handle: the node's loop then stops.
    pub(super) _alive: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").field("peer_id", &self.peer_id).finish()
    }
}

impl NodeHandle {
    /// Whether `other` is a handle of the same running node (two nodes of
    /// one store, one after the other, share a peer id but not this).
    pub fn same_node(&self, other: &NodeHandle) -> bool {
        Arc::ptr_eq(&self._alive, &other._alive)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Per peer that acknowledged holding anything of the channel `wire`
    /// since the node started: what it holds, as it last said (in a session
    /// or acknowledging live pushes), by peer id.
    pub fn acknowledged(&self, wire: &WireId) -> Vec<(PeerId, Vector)> {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(PeerId, Vector)> = acks
            .iter()
            .filter(|((_, w), _)| w == wire)
            .map(|((peer, _), v)| (*peer, v.clone()))
            .collect();
        all.sort_by_key(|(p, _)| *p);
        all
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The addresses the node listens on, with `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(Cmd::Listening).await
    }

    /// The listen addresses once every listener the node was started with
    /// is up (a node started with none has none: it returns at once). Fails
    /// when they are not up within `timeout`.
    pub async fn wait_listening(&self, timeout: Duration) -> Result<Vec<Multiaddr>, NodeError> {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let addrs = self.listen_addrs().await?;
            if addrs.len() >= self.listeners {
                return Ok(addrs);
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return Err(NodeError::Timeout("listening", timeout)),
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(NodeError::Stopped),
                Ok(_) => {}
            }
        }
    }

    /// Dial a peer and keep it: it is redialed with backoff whenever the
    /// connection is lost.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.ask(|tx| Cmd::Dial(addr, tx)).await?
    }

    /// Every peer the node knows, connected or not.
    pub async fn status(&self) -> Result<Vec<PeerStatus>, NodeError> {
        self.ask(Cmd::Status).await
    }

    /// Announce this node's channels and look their peers up in the DHT now
    /// (a round also runs every `NodeConfig::discovery_interval`).
    pub async fn discover(&self) -> Result<(), NodeError> {
        self.cmd.send(Cmd::DiscoverNow).await.map_err(|_| NodeError::Stopped)
    }

    /// Run a full reconciliation with a connected peer now and return what it did.
    pub async fn sync_with(&self, peer: PeerId) -> Result<Outcome, NodeError> {
        self.ask(|tx| Cmd::SyncWith(peer, tx)).await?
    }

    /// Wait until a peer is connected (or the timeout passes).
    pub async fn wait_connected(&self, peer: PeerId, timeout: Duration) -> Result<(), NodeError> {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.status().await?.iter().any(|s| s.peer == peer && s.connected) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return Err(NodeError::NotConnected(peer)),
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(NodeError::Stopped),
                Ok(_) => {}
            }
        }
    }

    /// Offer a device link for `valid_for`: the first peer that proves it
    /// holds `secret` (a link ticket's) is reported ([`NodeEvent::LinkRequested`],
    /// with the code both devices show) and, once this user confirms it
    /// ([`NodeHandle::confirm_link`]), gets the replica's
    /// [`hearth_core::LinkBundle`] for the keys it sent (a certificate chain
    /// this device issues for them, never the user key), sealed under the
    /// secret. One device, once: a decline or the end of `valid_for` ends
    /// the offer.
    pub async fn offer_link(&self, secret: hearth_core::SecretKey, valid_for: Duration) -> Result<(), NodeError> {
        self.cmd
            .send(Cmd::OfferLink(secret, valid_for))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Answer a [`NodeEvent::LinkRequested`]: `accept` when the asking device
    /// shows the same code (it gets the bundle at its next request), or not
    /// (the offer ends). Fails when that device is not the one asking.
    pub async fn confirm_link(&self, peer: PeerId, accept: bool) -> Result<(), NodeError> {
        self.ask(|tx| Cmd::ConfirmLink(peer, accept, tx)).await?
    }

    /// The code this (new) device shows while it asks `peer` for the link
    /// bundle of `secret`: the linking device shows the same one.
    pub fn link_code(&self, peer: PeerId, secret: &hearth_core::SecretKey) -> String {
        hearth_core::link_code(secret, &peer.to_bytes(), &self.peer_id.to_bytes())
    }

    /// Ask a connected peer for the link bundle of a link ticket's secret,
    /// for this new device's public `keys`, and keep asking while its user
    /// has not confirmed the code yet (the caller bounds the wait). Fails
    /// when the offer is declined, used or over.
    pub async fn fetch_link(
        &self,
        peer: PeerId,
        secret: &hearth_core::SecretKey,
        keys: hearth_core::device::DevicePublic,
    ) -> Result<hearth_core::LinkBundle, NodeError> {
        let proof = hearth_core::link_proof(secret, &self.peer_id.to_bytes());
        loop {
            let resp = self
                .ask(|tx| Cmd::Request(peer, Request::Link { proof, keys }, tx))
                .await?
                .map_err(NodeError::Link)?;
            match resp {
                Response::Link { sealed } => {
                    let bundle = hearth_core::LinkBundle::open(secret, &sealed)
                        .map_err(|e| NodeError::Link(format!("the bundle does not open: {e}")))?;
                    let certified = hearth_core::device::verify_chain(&bundle.chain)
                        .map_err(|e| NodeError::Link(format!("the certificate chain does not verify: {e}")))?;
                    if certified.keys != keys {
                        return Err(NodeError::Link(
                            "the certificate chain is not of this device's keys".into(),
                        ));
                    }
                    return Ok(bundle);
                }
                Response::Refused { reason } if reason == AWAITING_CONFIRMATION => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Response::Refused { reason } => return Err(NodeError::Link(reason)),
                _ => return Err(NodeError::Link("unexpected answer".into())),
            }
        }
    }

    /// Ask a connected member's node to let this device in through an
    /// invite: the channel's keys sealed to this device (open them with
    /// `hearth_store::Store::accept_invite`). Fails when the invite is
    /// unknown there, closed, or the node is a relay.
    pub async fn join_through(&self, peer: PeerId, req: hearth_store::JoinRequest) -> Result<Vec<u8>, NodeError> {
        let request = Request::Join {
            invite: req.invite,
            user: req.user,
            chain: req.chain,
            sig: serde_bytes::ByteArray::new(req.sig),
        };
        let resp = self
            .ask(|tx| Cmd::Request(peer, request, tx))
            .await?
            .map_err(NodeError::Join)?;
        match resp {
            Response::Joined { sealed } => Ok(sealed.into_vec()),
            Response::Refused { reason } => Err(NodeError::Join(reason)),
            _ => Err(NodeError::Join("unexpected answer".into())),
        }
    }

    /// Stop the node: close every connection; in-flight requests are dropped
    /// (the peer retries). Nothing acknowledged is lost: the replica is durable.
    pub async fn stop(&self) -> Result<(), NodeError> {
        self.ask(Cmd::Stop).await
    }
}

/// The peer id a node started with this secret has.
pub fn peer_id_of_secret(secret: &hearth_core::SecretKey) -> Result<PeerId, NodeError> {
    Ok(keypair(secret)?.public().to_peer_id())
}

pub(super) fn keypair(secret: &hearth_core::SecretKey) -> Result<libp2p::identity::Keypair, NodeError> {
    let mut bytes = *secret.expose();
    let kp = libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| NodeError::Setup(e.to_string()));
    zeroize::Zeroize::zeroize(&mut bytes);
    kp
}

/// The peer an address reaches: its last `/p2p/` part (a relayed address
/// names the relay first, then the peer).
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}
