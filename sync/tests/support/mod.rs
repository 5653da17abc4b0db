//! Helpers shared by the loopback network tests (`#[path]`-free: `mod support;`).
#![allow(dead_code)]

use std::time::Duration;

use hearth_core::{ChannelId, KdfParams, Passphrase, SecretKey};
use hearth_store::{Config, Store};
use hearth_sync::{Multiaddr, NodeConfig, NodeHandle, Replica};

/// A free loopback TCP port.
pub const LISTEN: &str = "/ip4/127.0.0.1/tcp/0";

/// Store config for tests: the fast (insecure) KDF.
pub fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// The passphrase of every test store.
pub fn pass() -> Passphrase {
    Passphrase::new("pw")
}

/// Start a node on `replica` listening on `listen`; returns it and its address.
/// With `HEARTH_TEST_TRACE` set, its events go to stderr.
pub async fn start_node_on<R: Replica>(replica: R, secret: &SecretKey, listen: &str) -> (NodeHandle, Multiaddr) {
    let cfg = NodeConfig {
        listen: vec![listen.parse().unwrap()],
        ..NodeConfig::default()
    };
    start_node_with(replica, secret, cfg).await
}

/// Start a node on `replica` as `cfg` says (it must listen somewhere);
/// returns it and its first address.
pub async fn start_node_with<R: Replica>(replica: R, secret: &SecretKey, cfg: NodeConfig) -> (NodeHandle, Multiaddr) {
    let n = hearth_sync::start(replica, secret, cfg).await.unwrap();
    if std::env::var_os("HEARTH_TEST_TRACE").is_some() {
        let mut ev = n.subscribe();
        let me = n.peer_id().to_string();
        tokio::spawn(async move {
            while let Ok(e) = ev.recv().await {
                eprintln!("[{}] {e:?}", &me[me.len() - 4..]);
            }
        });
    }
    let mut addrs = Vec::new();
    for _ in 0..100 {
        addrs = n.listen_addrs().await.unwrap();
        if !addrs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (n.clone(), addrs.into_iter().next().expect("a listen address"))
}

/// A node for a store on a free loopback TCP port.
pub async fn node(store: &Store) -> (NodeHandle, Multiaddr) {
    start_node_on(store.clone(), &store.node_secret().await.unwrap(), LISTEN).await
}

/// Everything a user sees of a channel, for comparing replicas.
pub async fn snapshot(s: &Store, c: ChannelId) -> String {
    let page = s.page(c, None, 10_000).await.unwrap();
    let mut out = format!("{page:?}");
    for m in &page {
        if m.reply_count > 0 {
            out += &format!("{:?}", s.thread(m.id).await.unwrap());
        }
    }
    out += &format!("{:?}", s.members(c).await.unwrap());
    out
}

/// Whether every store reaches the same vector and the same view of `c` in time.
pub async fn converged(stores: &[&Store], c: ChannelId, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Vectors first: cheap, and they must match before pages can.
        let v0 = stores[0].vector(c).await.ok();
        let mut same = true;
        for s in &stores[1..] {
            same &= s.vector(c).await.ok() == v0;
        }
        if same {
            let first = snapshot(stores[0], c).await;
            for s in &stores[1..] {
                same &= snapshot(s, c).await == first;
            }
        }
        if same {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait for the first event `want` picks (or panic after 20 s).
pub async fn next_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<hearth_sync::NodeEvent>,
    mut want: impl FnMut(hearth_sync::NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(e) = events.recv().await
                && let Some(t) = want(e)
            {
                return t;
            }
        }
    })
    .await
    .expect("the event came")
}

/// Two users' stores holding one channel (made by `a`).
pub async fn two_members() -> (Vec<tempfile::TempDir>, Store, Store, ChannelId) {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Store::create(dirs[0].path(), &pass(), "a", config()).await.unwrap();
    let b = Store::create(dirs[1].path(), &pass(), "b", config()).await.unwrap();
    let ch = a.create_channel("general").await.unwrap();
    b.join_channel(a.channel_keys(ch).await.unwrap()).await.unwrap();
    (dirs, a, b, ch)
}
