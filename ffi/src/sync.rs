//! Sync: [`Hearth::start_sync`] starts the store's libp2p node, and its
//! [`SyncHandle`] listens, connects and syncs with peers.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{HearthError, parse_addrs, parse_peer};
use crate::on_runtime;
use crate::store::Hearth;
use crate::types::{JoinedChannel, PeerStatus, Refusal};

/// How the sync node runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct SyncConfig {
    /// Addresses to listen on, such as `/ip4/0.0.0.0/tcp/4001`, or
    /// `/ip4/127.0.0.1/tcp/0` for a free port on loopback (read the port from
    /// [`SyncHandle::wait_listening`]). Default: none (the node only dials).
    #[uniffi(default)]
    pub listen: Vec<String>,
    /// Peers to dial and keep dialing (addresses ending in `/p2p/<peer id>`).
    /// Default: none.
    #[uniffi(default)]
    pub peers: Vec<String>,
    /// Find peers on the local network by mDNS (it multicasts on the real
    /// network interfaces). Default: false.
    #[uniffi(default)]
    pub mdns: bool,
}

impl SyncConfig {
    fn node_config(&self) -> Result<hearth::NodeConfig, HearthError> {
        Ok(hearth::NodeConfig {
            listen: parse_addrs(&self.listen)?,
            peers: parse_addrs(&self.peers)?,
            mdns: self.mdns,
            ..hearth::NodeConfig::default()
        })
    }
}

/// What [`SyncHandle::sync_until_equal`] did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// The address the peer was reached at.
    pub via: Option<String>,
    /// Entries received and stored while the call ran (those of a session
    /// the node ran on connecting, before the call, are not counted).
    pub received: u64,
    /// Entries the peer acknowledged.
    pub sent: u64,
    /// Channels joined through the peer (pending invites it let in).
    pub joined: Vec<JoinedChannel>,
    /// Pending invites the peer did not let this device in through.
    pub refused: Vec<Refusal>,
}

impl From<hearth::SyncReport> for SyncReport {
    fn from(r: hearth::SyncReport) -> Self {
        SyncReport {
            via: r.via.map(|a| a.to_string()),
            received: r.received,
            sent: r.sent,
            joined: r
                .joined
                .into_iter()
                .map(|(channel, name)| JoinedChannel {
                    channel: channel.to_string(),
                    name,
                })
                .collect(),
            refused: r.refused.into_iter().map(|(name, why)| Refusal { name, why }).collect(),
        }
    }
}

#[uniffi::export]
impl Hearth {
    /// Start syncing: a node that listens and dials as `config` says,
    /// reconciles every shared channel with each peer it meets and pushes
    /// new entries at once. Its peer id is the same on every start.
    /// [`HearthError::SyncRunning`] if it runs already,
    /// [`HearthError::Network`] if a listen address cannot be used.
    pub async fn start_sync(&self, config: SyncConfig) -> Result<Arc<SyncHandle>, HearthError> {
        let config = config.node_config()?;
        let inner = self.run(|h| async move { h.start_sync(config).await }).await?;
        Ok(Arc::new(SyncHandle { inner }))
    }

    /// The running sync node's handle, if sync runs.
    pub fn sync_handle(&self) -> Option<Arc<SyncHandle>> {
        self.inner().sync_handle().map(|inner| Arc::new(SyncHandle { inner }))
    }

    /// Stop syncing (nothing acknowledged is lost); nothing happens when
    /// sync is not running.
    pub async fn stop_sync(&self) -> Result<(), HearthError> {
        self.run(|h| async move {
            h.stop_sync().await;
            Ok(())
        })
        .await
    }
}

/// The handle of a store's running sync node.
#[derive(uniffi::Object)]
pub struct SyncHandle {
    inner: hearth::SyncHandle,
}

impl SyncHandle {
    /// Run `call` on the facade's handle as a task on the bindings' runtime.
    async fn run<T, F>(&self, call: impl FnOnce(hearth::SyncHandle) -> F) -> Result<T, HearthError>
    where
        T: Send + 'static,
        F: Future<Output = hearth::Result<T>> + Send + 'static,
    {
        let call = call(self.inner.clone());
        on_runtime(async move { Ok(call.await?) }).await
    }
}

/// The longest wait taken: a foreign `Duration` may be any size (a Kotlin
/// `Long.MAX_VALUE` seconds), and a deadline past the clock's range would
/// panic. A year is as good as for ever here.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `timeout`, at most [`LONGEST_WAIT`].
fn bounded(timeout: Duration) -> Duration {
    timeout.min(LONGEST_WAIT)
}

/// Addresses as text.
fn texts(addrs: Vec<hearth::Multiaddr>) -> Vec<String> {
    addrs.iter().map(ToString::to_string).collect()
}

#[uniffi::export]
impl SyncHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> String {
        self.inner.peer_id().to_string()
    }

    /// The addresses it listens on now, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<String>, HearthError> {
        Ok(texts(self.run(|s| async move { s.listen_addrs().await }).await?))
    }

    /// The listen addresses once every listener it was started with is up;
    /// [`HearthError::Timeout`] after `timeout`.
    pub async fn wait_listening(&self, timeout: Duration) -> Result<Vec<String>, HearthError> {
        let timeout = bounded(timeout);
        Ok(texts(
            self.run(move |s| async move { s.wait_listening(timeout).await })
                .await?,
        ))
    }

    /// Dial a peer and keep it: it is redialed whenever the connection is
    /// lost. The address ends in `/p2p/<peer id>`.
    pub async fn dial(&self, addr: String) -> Result<(), HearthError> {
        let addr = crate::error::parse_addr(&addr)?;
        self.run(move |s| async move { s.dial(addr).await }).await
    }

    /// Dial one peer at each of `addrs` (all of them its, ending in its
    /// `/p2p/<peer id>`) and wait until it is connected; returns its peer id.
    pub async fn connect(&self, addrs: Vec<String>, timeout: Duration) -> Result<String, HearthError> {
        let (addrs, timeout) = (parse_addrs(&addrs)?, bounded(timeout));
        let peer = self
            .run(move |s| async move { s.connect(&addrs, timeout).await })
            .await?;
        Ok(peer.to_string())
    }

    /// Sync with `peer` until both hold the same entries of every channel
    /// they share: wait until it is connected, let pending invites in
    /// through it, then reconcile until a session finds everything equal.
    /// [`HearthError::Timeout`] after `timeout`.
    pub async fn sync_until_equal(&self, peer: String, timeout: Duration) -> Result<SyncReport, HearthError> {
        let (peer, timeout) = (parse_peer(&peer)?, bounded(timeout));
        let report = self
            .run(move |s| async move { s.sync_until_equal(peer, timeout).await })
            .await?;
        Ok(report.into())
    }

    /// Answer a device asking to be linked ([`crate::Event::LinkRequested`]):
    /// `accept` only when the new device shows the same code. Nothing
    /// leaves this device before.
    pub async fn confirm_link(&self, peer: String, accept: bool) -> Result<(), HearthError> {
        let peer = parse_peer(&peer)?;
        self.run(move |s| async move { s.confirm_link(peer, accept).await })
            .await
    }

    /// Every peer the node knows, connected or not.
    pub async fn status(&self) -> Result<Vec<PeerStatus>, HearthError> {
        let status = self.run(|s| async move { s.status().await }).await?;
        Ok(status.into_iter().map(PeerStatus::from).collect())
    }

    /// Stop this node; the store stays open.
    pub async fn stop(&self) -> Result<(), HearthError> {
        self.run(|s| async move {
            s.stop().await;
            Ok(())
        })
        .await
    }
}
