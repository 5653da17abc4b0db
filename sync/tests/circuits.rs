//! Reach through circuit relays on loopback: a node listens through a relay
//! (`NodeConfig::via`), a peer reaches it by its `/p2p-circuit` address and
//! syncs, and DCUtR makes the connection direct. Behind real NATs this is
//! `cli/tests/netlab.rs`'s hole-punch scenario.

use std::time::Duration;

use hearth_core::ChannelId;
use hearth_store::Store;
use hearth_sync::{Multiaddr, NodeConfig, NodeEvent, NodeHandle, PeerId};

mod support;
use support::{LISTEN, config, converged, next_event, pass, start_node_with};

/// Alice and Bob, members of one channel with a post each.
async fn members(dirs: &[tempfile::TempDir]) -> (Store, Store, ChannelId) {
    let a = Store::create(dirs[0].path(), &pass(), "alice", config()).await.unwrap();
    let b = Store::create(dirs[1].path(), &pass(), "bob", config()).await.unwrap();
    let ch = a.create_channel("general").await.unwrap();
    b.join_channel(a.channel_keys(ch).await.unwrap()).await.unwrap();
    a.post(ch, "from alice").await.unwrap();
    b.post(ch, "from bob").await.unwrap();
    (a, b, ch)
}

/// A node serving circuits, on a store of its own that holds no channel.
async fn circuit_relay(dir: &tempfile::TempDir) -> (Store, NodeHandle, Multiaddr) {
    let r = Store::create(dir.path(), &pass(), "relay", config()).await.unwrap();
    let secret = r.node_secret().await.unwrap();
    let cfg = NodeConfig {
        listen: vec![LISTEN.parse().unwrap()],
        serve_circuits: true,
        ..NodeConfig::default()
    };
    let (n, addr) = start_node_with(r.clone(), &secret, cfg).await;
    (r, n, addr)
}

/// Bob's node, listening through `relay`: its circuit address once the
/// relay took the reservation.
async fn listening_through(b: &Store, relay: &Multiaddr, listen: bool) -> (NodeHandle, Multiaddr) {
    let secret = b.node_secret().await.unwrap();
    let cfg = NodeConfig {
        // Without an address of its own, only the circuit reaches it.
        listen: if listen {
            vec![LISTEN.parse().unwrap()]
        } else {
            Vec::new()
        },
        via: vec![relay.clone()],
        // Not through the DHT: on loopback it would hand each the other's
        // direct address before any circuit.
        discovery: false,
        ..NodeConfig::default()
    };
    let n = hearth_sync::start(b.clone(), &secret, cfg).await.unwrap();
    let mut events = n.subscribe();
    let relay_id = hearth_sync::peer_of(relay).unwrap();
    next_event(&mut events, |e| {
        matches!(e, NodeEvent::Reserved { relay } if relay == relay_id).then_some(())
    })
    .await;
    let circuit = loop {
        let found = n
            .listen_addrs()
            .await
            .unwrap()
            .into_iter()
            .find(hearth_sync::is_relayed);
        if let Some(a) = found {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(hearth_sync::peer_of(&circuit), Some(n.peer_id()), "{circuit}");
    (n, circuit)
}

/// A node for `s` on loopback, not in the DHT.
async fn plain_node(s: &Store) -> (NodeHandle, Multiaddr) {
    let cfg = NodeConfig {
        listen: vec![LISTEN.parse().unwrap()],
        discovery: false,
        ..NodeConfig::default()
    };
    start_node_with(s.clone(), &s.node_secret().await.unwrap(), cfg).await
}

/// Whether `n` talks to `peer` over a direct (not relayed) connection.
async fn direct(n: &NodeHandle, peer: PeerId) -> bool {
    n.status()
        .await
        .unwrap()
        .iter()
        .any(|s| s.peer == peer && s.connected && s.addr.as_ref().is_some_and(|a| !hearth_sync::is_relayed(a)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reached_through_a_relay_syncs_then_goes_direct() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, ch) = members(&dirs).await;
    let (_r, relay, relay_addr) = circuit_relay(&dirs[2]).await;
    let (nb, circuit) = listening_through(&b, &relay_addr, true).await;
    let (na, _) = plain_node(&a).await;
    let mut a_events = na.subscribe();
    na.dial(circuit).await.unwrap();
    // First through the relay, then the hole punch: both ends on loopback,
    // so it succeeds, and the relayed connection is dropped.
    let b_id = nb.peer_id();
    let via = next_event(&mut a_events, |e| match e {
        NodeEvent::PeerConnected { peer, addr } if peer == b_id => Some(addr),
        _ => None,
    })
    .await;
    assert!(hearth_sync::is_relayed(&via), "{via}");
    assert!(converged(&[&a, &b], ch, Duration::from_secs(20)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !direct(&na, b_id).await {
        assert!(tokio::time::Instant::now() < deadline, "no direct connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What is written now goes over the direct connection.
    let id = a.post(ch, "after the hole punch").await.unwrap();
    assert!(converged(&[&a, &b], ch, Duration::from_secs(20)).await);
    assert_eq!(
        b.message(id).await.unwrap().message.text.as_deref(),
        Some("after the hole punch")
    );
    for n in [na, nb, relay] {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_an_address_of_its_own_syncs_over_the_circuit() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, ch) = members(&dirs).await;
    let (_r, relay, relay_addr) = circuit_relay(&dirs[2]).await;
    let (nb, circuit) = listening_through(&b, &relay_addr, false).await;
    let (na, _) = plain_node(&a).await;
    na.dial(circuit).await.unwrap();
    assert!(converged(&[&a, &b], ch, Duration::from_secs(20)).await);
    // A steady stream over the circuit: Hearth's relays do not cut it at
    // libp2p's default 128 KiB.
    let mut last = None;
    for i in 0..200 {
        last = Some(a.post(ch, &format!("{i}: {}", "x".repeat(1000))).await.unwrap());
    }
    assert!(converged(&[&a, &b], ch, Duration::from_secs(30)).await);
    assert!(b.message(last.unwrap()).await.is_ok());
    let status = na.status().await.unwrap();
    let to_b = status.iter().find(|s| s.peer == nb.peer_id()).unwrap();
    assert!(
        to_b.connected && to_b.addr.as_ref().is_some_and(hearth_sync::is_relayed),
        "{to_b:?}"
    );
    for n in [na, nb, relay] {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_serves_no_circuits_is_reported() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, _) = members(&dirs).await;
    let (na, a_addr) = support::node(&a).await;
    let cfg = NodeConfig {
        via: vec![a_addr],
        ..NodeConfig::default()
    };
    let nb = hearth_sync::start(b.clone(), &b.node_secret().await.unwrap(), cfg)
        .await
        .unwrap();
    let mut events = nb.subscribe();
    let a_id = na.peer_id();
    let why = next_event(&mut events, |e| match e {
        NodeEvent::ReservationFailed { relay, error } if relay == a_id => Some(error),
        _ => None,
    })
    .await;
    assert!(why.contains("does not serve circuits"), "{why}");
    nb.stop().await.unwrap();
    na.stop().await.unwrap();
}
