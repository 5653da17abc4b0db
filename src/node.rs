//! Sync on a [`Hearth`]: the node it owns ([`Hearth::start_sync`]), the
//! handle an app drives it with ([`SyncHandle`]), and what it knows of each
//! peer's share of a channel.

use std::sync::Mutex;
use std::time::Duration;

use hearth_core::{Vector, WireId};
use hearth_sync::{Multiaddr, NodeConfig, NodeEvent, NodeHandle, PeerId, PeerStatus};
use tokio::sync::broadcast;

use crate::Hearth;
use crate::error::{Error, Result};

/// The node a [`Hearth`] owns, while it runs.
#[derive(Default)]
pub(crate) struct Syncing {
    running: Mutex<Option<NodeHandle>>,
    /// The node side of [`Hearth::subscribe`].
    pub(crate) events: crate::events::NodeSide,
}

impl Syncing {
    pub(crate) fn is_running(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<NodeHandle>> {
        // A panic while holding it left nothing half-done: the guarded value
        // is replaced whole.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn node(&self) -> Option<NodeHandle> {
        self.lock().clone()
    }

    /// Stop the node, if one runs; wait until it has.
    pub(crate) async fn stop(&self) {
        self.stop_if(|_| true).await;
    }

    /// Stop the running node if `which` says it is the one.
    async fn stop_if(&self, which: impl FnOnce(&NodeHandle) -> bool) {
        let running = {
            let mut running = self.lock();
            if running.as_ref().is_some_and(which) {
                running.take()
            } else {
                None
            }
        };
        if let Some(node) = running {
            self.events.stop_forwarding();
            let _ = node.stop().await;
        }
    }

    /// Per peer that acknowledged anything of the channel `wire`: how many
    /// entries of `have` it lacks.
    pub(crate) fn lacking(&self, wire: &WireId, have: &Vector) -> Vec<PeerLack> {
        let Some(node) = self.node() else {
            return Vec::new();
        };
        node.acknowledged(wire)
            .into_iter()
            .map(|(peer, theirs)| PeerLack {
                peer,
                lacks: theirs.lacks(have).iter().map(|m| m.to - m.from + 1).sum(),
            })
            .collect()
    }
}

/// How many of a channel's entries a peer lacks, as it last acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLack {
    /// The peer.
    pub peer: PeerId,
    /// Entries held here that it has not acknowledged.
    pub lacks: u64,
}

/// One channel's counts and sizes ([`Hearth::channel_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelStats {
    /// What the store holds: messages, entries and their bytes, feeds,
    /// epochs and those in memory.
    pub store: hearth_store::ChannelStats,
    /// Per peer met since sync started: what it still lacks.
    pub peers: Vec<PeerLack>,
}

/// What [`SyncHandle::sync_until_equal`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The address the peer was reached at.
    pub via: Option<Multiaddr>,
    /// Entries received and stored, over every session with the peer
    /// meanwhile (the one the node runs on connect too).
    pub received: u64,
    /// Entries the peer acknowledged.
    pub sent: u64,
    /// Pending invites the peer did not let this device in through (channel
    /// name, why); those it did are joined.
    pub refused: Vec<(String, String)>,
    /// Channels joined through it.
    pub joined: Vec<(hearth_core::ChannelId, String)>,
}

/// The handle of a [`Hearth`]'s running sync node. Clones share the node;
/// it stops with [`Hearth::close`], [`Hearth::stop_sync`], or once the
/// store and every handle are dropped.
#[derive(Clone, Debug)]
pub struct SyncHandle {
    pub(crate) node: NodeHandle,
    pub(crate) hearth: Hearth,
}

impl Hearth {
    /// Start syncing: a libp2p node that listens and dials as `config` says,
    /// reconciles every shared channel with each peer it meets, pushes new
    /// entries at once and runs anti-entropy. Its peer id is derived from
    /// the store's key, so it is the same on every start. One node a store:
    /// [`Error::SyncRunning`] if it runs already.
    pub async fn start_sync(&self, config: NodeConfig) -> Result<SyncHandle> {
        if self.sync.is_running() {
            return Err(Error::SyncRunning);
        }
        let secret = self.store.node_secret().await?;
        let node = hearth_sync::start(self.store.clone(), &secret, config).await?;
        let raced = {
            let mut running = self.sync.lock();
            let raced = running.is_some();
            if !raced {
                *running = Some(node.clone());
            }
            raced
        };
        if raced {
            // Another clone started one meanwhile: this one goes.
            let _ = node.stop().await;
            return Err(Error::SyncRunning);
        }
        self.sync.events.forward(&node);
        Ok(SyncHandle {
            node,
            hearth: self.clone(),
        })
    }

    /// The running sync node's handle, if sync runs.
    pub fn sync_handle(&self) -> Option<SyncHandle> {
        self.sync.node().map(|node| SyncHandle {
            node,
            hearth: self.clone(),
        })
    }

    /// Stop syncing (nothing acknowledged is lost; peers retry). Does
    /// nothing when sync is not running.
    pub async fn stop_sync(&self) {
        self.sync.stop().await;
    }

    /// The running node, or [`Error::SyncNotRunning`].
    pub(crate) fn running(&self) -> Result<SyncHandle> {
        self.sync_handle().ok_or(Error::SyncNotRunning)
    }
}

impl SyncHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// The node underneath, for relays, tests and tools that drive libp2p
    /// themselves (see [`hearth_sync::NodeHandle`]).
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// The node's events from now on (peers, sessions, rejections, links,
    /// reachability).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.node.subscribe()
    }

    /// The addresses it listens on now, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        Ok(self.node.listen_addrs().await?)
    }

    /// The listen addresses once every listener it was started with is up.
    pub async fn wait_listening(&self, timeout: Duration) -> Result<Vec<Multiaddr>> {
        Ok(self.node.wait_listening(timeout).await?)
    }

    /// Dial a peer (the address ends in `/p2p/<peer id>`) and keep it: it
    /// is redialed with backoff whenever the connection is lost.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        Ok(self.node.dial(addr).await?)
    }

    /// Dial one peer at each of `addrs` at once (all of them its, ending in
    /// its `/p2p/<peer id>`: some may be private, one a circuit through a
    /// relay) and wait until it is connected.
    pub async fn connect(&self, addrs: &[Multiaddr], timeout: Duration) -> Result<PeerId> {
        let first = addrs.first().ok_or_else(|| Error::Invalid {
            what: "address".into(),
            detail: "no address given".into(),
        })?;
        let peer = hearth_sync::peer_of(first).ok_or_else(|| Error::Invalid {
            what: "address".into(),
            detail: format!("{first} does not end in /p2p/<peer id>"),
        })?;
        for addr in addrs {
            if hearth_sync::peer_of(addr) != Some(peer) {
                return Err(Error::Invalid {
                    what: "address".into(),
                    detail: format!("{addr} is not an address of {peer}"),
                });
            }
            self.node.dial(addr.clone()).await?;
        }
        self.wait_connected(peer, timeout).await?;
        Ok(peer)
    }

    /// Wait until `peer` is connected.
    pub async fn wait_connected(&self, peer: PeerId, timeout: Duration) -> Result<()> {
        match self.node.wait_connected(peer, timeout).await {
            Err(hearth_sync::NodeError::NotConnected(_)) => Err(Error::Timeout {
                what: "the peer to connect",
                after: timeout,
            }),
            other => Ok(other?),
        }
    }

    /// Every peer the node knows, connected or not.
    pub async fn status(&self) -> Result<Vec<PeerStatus>> {
        Ok(self.node.status().await?)
    }

    /// Announce this node's channels and look their peers up now.
    pub async fn discover(&self) -> Result<()> {
        Ok(self.node.discover().await?)
    }

    /// One full reconciliation with a connected peer now.
    pub async fn sync_with(&self, peer: PeerId) -> Result<hearth_sync::reconcile::Outcome> {
        Ok(self.node.sync_with(peer).await?)
    }

    /// Sync with `peer` until both hold the same entries of every channel
    /// they share, delivery receipts included: wait until it is connected,
    /// let pending invites in through it ([`Hearth::join`]), then reconcile
    /// until a session finds everything equal. [`Error::Timeout`] after
    /// `timeout`.
    pub async fn sync_until_equal(&self, peer: PeerId, timeout: Duration) -> Result<SyncReport> {
        tokio::time::timeout(timeout, self.until_equal(peer))
            .await
            .unwrap_or(Err(Error::Timeout {
                what: "both sides to hold the same entries",
                after: timeout,
            }))
    }

    async fn until_equal(&self, peer: PeerId) -> Result<SyncReport> {
        // Count every session with the peer: the one the node starts on connect too.
        let mut events = self.node.subscribe();
        let forever = Duration::from_secs(365 * 24 * 3600);
        self.wait_connected(peer, forever).await?;
        let via = self
            .node
            .status()
            .await?
            .into_iter()
            .find(|s| s.peer == peer)
            .and_then(|s| s.addr);
        let attempt = self.hearth.join_through(peer).await?;
        loop {
            let o = self.node.sync_with(peer).await?;
            // This device's delivery receipts for what arrived (in this session or
            // in the one the node ran on connect) go in now: if there were any,
            // one more round carries them, so both sides end with the same entries.
            let receipts = self.hearth.store.flush_receipts().await?;
            if o.failed.is_none() && o.in_sync_at_hello && receipts == 0 {
                let (mut received, mut sent) = (0, 0);
                while let Ok(e) = events.try_recv() {
                    if let NodeEvent::Synced {
                        peer: p,
                        received: r,
                        sent: s,
                        ..
                    } = e
                        && p == peer
                    {
                        received += r;
                        sent += s;
                    }
                }
                return Ok(SyncReport {
                    via,
                    received,
                    sent,
                    refused: attempt.refused,
                    joined: attempt.joined,
                });
            }
            if o.failed.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.wait_connected(peer, forever).await?;
            }
        }
    }

    /// Answer a link request ([`NodeEvent::LinkRequested`]): `accept` when
    /// the new device shows the same code.
    pub async fn confirm_link(&self, peer: PeerId, accept: bool) -> Result<()> {
        Ok(self.node.confirm_link(peer, accept).await?)
    }

    /// Stop this node (the store stays open). A handle of a node stopped
    /// already, and replaced since, leaves the new one running.
    pub async fn stop(&self) {
        self.hearth.sync.stop_if(|n| n.same_node(&self.node)).await;
        let _ = self.node.stop().await;
    }
}
