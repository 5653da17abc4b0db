//! Discovery through Hearth's DHT on loopback: members that know only a
//! bootstrap node find each other by their channel's rotating key, and find
//! each other again when an address changes; a stranger finds nobody.

use std::time::Duration;

use hearth_store::Store;
use hearth_sync::{Multiaddr, NodeConfig, NodeEvent, NodeHandle, PeerId};

mod support;
use support::{LISTEN, config, converged, pass, start_node_with};

/// A node that serves the DHT (as a relay does), on a store with no channel.
async fn bootstrap_node(dir: &tempfile::TempDir) -> (Store, NodeHandle, Multiaddr) {
    let s = Store::create(dir.path(), &pass(), "dht", config()).await.unwrap();
    let cfg = NodeConfig {
        listen: vec![LISTEN.parse().unwrap()],
        serve_circuits: true,
        ..NodeConfig::default()
    };
    let (n, addr) = start_node_with(s.clone(), &s.node_secret().await.unwrap(), cfg).await;
    (s, n, addr)
}

/// A node for `s` that knows only `bootstrap`, listening on `listen`.
async fn discovering(s: &Store, bootstrap: &Multiaddr, listen: &str) -> (NodeHandle, Multiaddr) {
    let cfg = NodeConfig {
        listen: vec![listen.parse().unwrap()],
        bootstrap: vec![bootstrap.clone()],
        discovery_interval: Duration::from_secs(1),
        ..NodeConfig::default()
    };
    start_node_with(s.clone(), &s.node_secret().await.unwrap(), cfg).await
}

/// The next time `events` report `other` discovered.
async fn found(events: &mut tokio::sync::broadcast::Receiver<NodeEvent>, other: PeerId) -> (PeerId, Multiaddr) {
    loop {
        match events.recv().await {
            Ok(NodeEvent::Discovered { peer, addr }) if peer == other => return (peer, addr),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Wait until one of two nodes reports the other discovered (whichever
/// dials first; the other then finds it connected already): who found whom
/// where.
async fn met(
    x: (&NodeHandle, &mut tokio::sync::broadcast::Receiver<NodeEvent>),
    y: (&NodeHandle, &mut tokio::sync::broadcast::Receiver<NodeEvent>),
) -> (PeerId, Multiaddr) {
    let (xid, yid) = (x.0.peer_id(), y.0.peer_id());
    let (fx, fy) = (found(x.1, yid), found(y.1, xid));
    tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            r = fx => r,
            r = fy => r,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{xid} and {yid} never found each other"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_each_other_through_the_dht_and_again_after_moving() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (_d, dht, dht_addr) = bootstrap_node(&dirs[0]).await;
    let a = Store::create(dirs[1].path(), &pass(), "alice", config()).await.unwrap();
    let b = Store::create(dirs[2].path(), &pass(), "bob", config()).await.unwrap();
    let stranger = Store::create(dirs[3].path(), &pass(), "eve", config()).await.unwrap();
    let ch = a.create_channel("general").await.unwrap();
    b.join_channel(a.channel_keys(ch).await.unwrap()).await.unwrap();
    stranger.create_channel("elsewhere").await.unwrap();
    a.post(ch, "found you").await.unwrap();

    let (na, a_addr) = discovering(&a, &dht_addr, LISTEN).await;
    let mut a_events = na.subscribe();
    let (ne, _) = discovering(&stranger, &dht_addr, LISTEN).await;
    let mut e_events = ne.subscribe();
    let (nb, b_addr) = discovering(&b, &dht_addr, LISTEN).await;
    let mut b_events = nb.subscribe();
    // Neither knows the other's address: the DHT gives it.
    let (found, at) = met((&na, &mut a_events), (&nb, &mut b_events)).await;
    assert_eq!(hearth_sync::peer_of(&at), Some(found));
    let expected = if found == na.peer_id() { &a_addr } else { &b_addr };
    assert_eq!(&at, expected, "reached elsewhere than where it listens");
    assert!(converged(&[&a, &b], ch, Duration::from_secs(20)).await);

    // Alice moves: a new port. They find each other again, no new ticket.
    na.stop().await.unwrap();
    while b_events.try_recv().is_ok() {}
    let (na, moved) = discovering(&a, &dht_addr, LISTEN).await;
    assert_ne!(moved, a_addr, "the same address after the move");
    let mut a_events = na.subscribe();
    let (found, at) = met((&na, &mut a_events), (&nb, &mut b_events)).await;
    if found == na.peer_id() {
        assert_eq!(at, moved, "bob reached alice at her old address");
    }
    let id = a.post(ch, "moved").await.unwrap();
    assert!(converged(&[&a, &b], ch, Duration::from_secs(20)).await);
    assert_eq!(b.message(id).await.unwrap().message.text.as_deref(), Some("moved"));

    // The stranger, in the same DHT all along, found neither of them.
    let mut found = Vec::new();
    while let Ok(e) = e_events.try_recv() {
        if let NodeEvent::Discovered { peer, .. } = e {
            found.push(peer);
        }
    }
    assert!(found.is_empty(), "the stranger found {found:?}");
    for n in [na, nb, ne, dht] {
        n.stop().await.unwrap();
    }
}
