//! Nodes over real loopback sockets (TCP and QUIC): devices converge.

use std::time::Duration;

use hearth_core::Passphrase;
use hearth_store::Store;
use hearth_sync::{Multiaddr, NodeHandle};

mod support;
use support::{config, converged, next_event, start_node_on, two_members};

async fn node(store: &Store, listen: &str) -> (NodeHandle, Multiaddr) {
    start_node_on(store.clone(), &store.node_secret().await.unwrap(), listen).await
}

async fn three_devices_converge(listen: &str) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let mut stores = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        stores.push(
            Store::create(d.path(), &pass, &format!("user{i}"), config())
                .await
                .unwrap(),
        );
    }
    let (a, b, c) = (&stores[0], &stores[1], &stores[2]);
    let ch = a.create_channel("general").await.unwrap();
    let first = a.post(ch, "before anyone joined").await.unwrap();
    let keys = a.channel_keys(ch).await.unwrap();
    b.join_channel(keys.clone()).await.unwrap();
    c.join_channel(keys).await.unwrap();

    let (na, addr_a) = node(a, listen).await;
    let (nb, addr_b) = node(b, listen).await;
    let (nc, _) = node(c, listen).await;
    // A chain: c - b - a. What c writes reaches a through b.
    nb.dial(addr_a.clone()).await.unwrap();
    nc.dial(addr_b.clone()).await.unwrap();
    assert!(converged(&[a, b, c], ch, Duration::from_secs(20)).await, "initial sync");
    assert_eq!(
        c.message(first).await.unwrap().message.text.as_deref(),
        Some("before anyone joined")
    );

    // Concurrent writes everywhere.
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for j in 0..30 {
                mine.push(s.post(ch, &format!("user{i} says {j}")).await.unwrap());
            }
            s.reply(first, &format!("reply from {i}")).await.unwrap();
            s.react(first, "👍").await.unwrap();
            s.edit(mine[0], "edited").await.unwrap();
            s.delete(mine[1]).await.unwrap();
            s.mark_read(ch, None).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        converged(&[a, b, c], ch, Duration::from_secs(30)).await,
        "after concurrent writes"
    );
    let m = a.message(first).await.unwrap().message;
    assert_eq!(m.reply_count, 3);
    assert_eq!(m.reactions.get("👍").map(|u| u.len()), Some(3));
    assert_eq!(a.page(ch, None, 1000).await.unwrap().len(), 1 + 90);
    // Receipts: both other devices stored Alice's first message and read past it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = a.receipts(first).await.unwrap();
        let want_delivered = [b.whoami().device, c.whoami().device];
        let delivered: Vec<_> = r.delivered.iter().map(|(_, d)| *d).collect();
        if want_delivered.iter().all(|d| delivered.contains(d)) && r.read.len() == 2 {
            assert!(r.read.contains(&b.whoami().user) && r.read.contains(&c.whoami().user));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "receipts never arrived: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        converged(&[a, b, c], ch, Duration::from_secs(20)).await,
        "after receipts"
    );
    for s in &stores {
        assert!(s.verify().await.unwrap().is_clean());
    }
    for n in [na, nb, nc] {
        n.stop().await.unwrap();
    }
    for s in stores {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_over_tcp() {
    three_devices_converge("/ip4/127.0.0.1/tcp/0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_over_quic() {
    three_devices_converge("/ip4/127.0.0.1/udp/0/quic-v1").await;
}

/// Nodes of `a` and `b` on loopback TCP, `a` dialing `b`, converged on `ch`;
/// and `b`'s address.
async fn connected(a: &Store, b: &Store, ch: hearth_core::ChannelId) -> (NodeHandle, NodeHandle, Multiaddr) {
    let (na, _) = node(a, "/ip4/127.0.0.1/tcp/0").await;
    let (nb, addr_b) = node(b, "/ip4/127.0.0.1/tcp/0").await;
    na.dial(addr_b.clone()).await.unwrap();
    assert!(converged(&[a, b], ch, Duration::from_secs(20)).await);
    (na, nb, addr_b)
}

/// A peer that goes away and comes back on the same address is redialed (with
/// backoff) without anyone asking, and what was written meanwhile arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_peer_is_redialed_when_it_comes_back() {
    let (_dirs, a, b, ch) = two_members().await;
    let (na, nb, addr_b) = connected(&a, &b, ch).await;

    // B goes away; A keeps writing; B comes back on the same address.
    nb.stop().await.unwrap();
    let mut late = Vec::new();
    for i in 0..5 {
        late.push(a.post(ch, &format!("while b was away {i}")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listen: String = addr_b.to_string().split("/p2p/").next().unwrap().to_string();
    let (nb, _) = node(&b, &listen).await;
    let mut waited = 0;
    while b.message(late[4]).await.is_err() {
        assert!(waited < 400, "A never redialed B");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(converged(&[&a, &b], ch, Duration::from_secs(20)).await);
    for n in [na, nb] {
        n.stop().await.unwrap();
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A removal is checked at once on the connections a node has: the removed
/// member's node, connected all along, is pushed nothing written after it
/// (without waiting for the next anti-entropy session, 30 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_live_connection_is_checked_again_at_once() {
    let (_dirs, a, b, ch) = two_members().await;
    b.post(ch, "b was here").await.unwrap();
    let (na, nb, _) = connected(&a, &b, ch).await;
    // Live pushes work while b is a member.
    let seen = a.post(ch, "while b is a member").await.unwrap();
    let mut waited = 0;
    while b.message(seen).await.is_err() {
        assert!(waited < 400, "a live push never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }

    a.remove_member(ch, b.whoami().user).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        a.post(ch, &format!("after the removal {i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let me = a.whoami().device;
    let (held_a, held_b) = (
        a.vector(ch).await.unwrap().seq(&me),
        b.vector(ch).await.unwrap().seq(&me),
    );
    assert!(
        held_b + 3 <= held_a,
        "b was pushed what a wrote after the removal: {held_b} of {held_a}"
    );
    for n in [na, nb] {
        n.stop().await.unwrap();
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A long catch-up travels once: the accepting side's own session waits until
/// the dialer has stopped fetching, instead of pushing the same history
/// alongside the pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_is_not_pushed_alongside_the_pull() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let a = Store::create(dirs[0].path(), &pass, "a", config()).await.unwrap();
    let b = Store::create(dirs[1].path(), &pass, "b", config()).await.unwrap();
    let ch = a.create_channel("general").await.unwrap();
    // About 3 MB: a catch-up of several batches (512 KiB each), long past the
    // accepting side's first wait.
    // Texts that do not compress (automerge deflates changes).
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut text = || {
        (0..1000)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                char::from(b'a' + (seed >> 59) as u8 % 26)
            })
            .collect::<String>()
    };
    for round in 0..30 {
        let texts: Vec<String> = (0..100).map(|_| text()).collect();
        let posts = texts.iter().map(|t| a.post(ch, t));
        for r in futures::future::join_all(posts).await {
            r.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    b.join_channel(a.channel_keys(ch).await.unwrap()).await.unwrap();
    let (na, addr_a) = node(&a, "/ip4/127.0.0.1/tcp/0").await;
    let (nb, _) = node(&b, "/ip4/127.0.0.1/tcp/0").await;
    let mut a_events = na.subscribe();
    let mut b_events = nb.subscribe();
    nb.dial(addr_a).await.unwrap();
    assert!(converged(&[&a, &b], ch, Duration::from_secs(120)).await);

    // The dialer's catch-up took several requests ...
    let pulled = loop {
        match tokio::time::timeout(Duration::from_secs(30), b_events.recv()).await {
            Ok(Ok(hearth_sync::NodeEvent::Synced {
                received, round_trips, ..
            })) if received > 0 => {
                break round_trips;
            }
            Ok(Ok(_)) => {}
            other => panic!("no catch-up session: {other:?}"),
        }
    };
    assert!(pulled >= 4, "a catch-up of {pulled} requests proves nothing");
    // ... and the accepting side's own session, once it ran, found nothing to
    // push: it did not send the history the dialer was pulling.
    let pushed = loop {
        match tokio::time::timeout(Duration::from_secs(30), a_events.recv()).await {
            Ok(Ok(hearth_sync::NodeEvent::Synced { pushed, channels, .. })) if channels > 0 => break pushed,
            Ok(Ok(_)) => {}
            other => panic!("the accepting side never reconciled: {other:?}"),
        }
    };
    assert_eq!(pushed, 0, "the accepting side pushed entries the dialer was pulling");
    for n in [na, nb] {
        n.stop().await.unwrap();
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// One host may hold only so many connections to a node (`max_per_ip`):
/// beyond, each new one is closed at once and reported; the ones within
/// the limit keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_ip_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let hub = Store::create(tmp.path().join("hub"), &pass, "hub", config())
        .await
        .unwrap();
    let cfg = hearth_sync::NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        max_per_ip: 2,
        ..hearth_sync::NodeConfig::default()
    };
    let node = hearth_sync::start(hub.clone(), &hub.node_secret().await.unwrap(), cfg)
        .await
        .unwrap();
    let mut events = node.subscribe();
    let mut addr = Vec::new();
    while addr.is_empty() {
        addr = node.listen_addrs().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut others = Vec::new();
    for i in 0..4 {
        let s = Store::create(tmp.path().join(format!("s{i}")), &pass, "s", config())
            .await
            .unwrap();
        let (n, _) = start_node_on(s.clone(), &s.node_secret().await.unwrap(), "/ip4/127.0.0.1/tcp/0").await;
        n.dial(addr[0].clone()).await.unwrap();
        others.push((s, n));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    while refused < 2 && std::time::Instant::now() < deadline {
        if let Ok(Ok(hearth_sync::NodeEvent::Rejected { reason, dropped, .. })) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            assert!(dropped);
            assert!(reason.contains("connections from 127.0.0.1"), "{reason}");
            refused += 1;
        }
    }
    assert!(refused >= 2, "the third and fourth host connections were refused");
    let connected = node.status().await.unwrap().iter().filter(|p| p.connected).count();
    assert!(connected <= 2, "{connected} connected");
    for (s, n) in others {
        n.stop().await.ok();
        s.close().await.unwrap();
    }
    node.stop().await.ok();
    hub.close().await.unwrap();
}

/// Start a node for `replica` on a free loopback port, trusting `relays`.
async fn node_trusting<R: hearth_sync::Replica>(
    replica: R,
    secret: &hearth_core::SecretKey,
    relays: Vec<hearth_sync::PeerId>,
) -> (NodeHandle, Multiaddr) {
    let n = hearth_sync::start(
        replica,
        secret,
        hearth_sync::NodeConfig {
            listen: vec![support::LISTEN.parse().unwrap()],
            relays,
            ..hearth_sync::NodeConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = loop {
        if let Some(a) = n.listen_addrs().await.unwrap().into_iter().next() {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (n, addr)
}

/// Connect `n` to `addr` and run sessions until one ends cleanly; its outcome.
async fn session_with(n: &NodeHandle, addr: &Multiaddr) -> hearth_sync::reconcile::Outcome {
    let peer = hearth_sync::peer_of(addr).unwrap();
    n.dial(addr.clone()).await.unwrap();
    n.wait_connected(peer, Duration::from_secs(20)).await.unwrap();
    for _ in 0..50 {
        match n.sync_with(peer).await {
            Ok(o) if o.failed.is_none() => return o,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("no clean session with {peer}");
}

/// Serve only members: a stranger, a member of another channel and a relay
/// nobody configured dial a member's node and learn no channel, no vector,
/// no entry; the relay its user configured carries both of its channels,
/// serves a stranger nothing, and serves a member of one channel that
/// channel only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_learn_nothing_from_a_member_or_a_relay() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let store = |i: usize, name: &'static str| {
        let (dir, pass) = (dirs[i].path().to_path_buf(), pass.clone());
        async move { Store::create(dir, &pass, name, config()).await.unwrap() }
    };
    let (alice, bob, carol, stranger) = (
        store(0, "alice").await,
        store(1, "bob").await,
        store(2, "carol").await,
        store(3, "stranger").await,
    );
    let general = alice.create_channel("general").await.unwrap();
    let secret = alice.create_channel("secret").await.unwrap();
    for i in 0..5 {
        alice.post(general, &format!("general {i}")).await.unwrap();
        alice.post(secret, &format!("secret {i}")).await.unwrap();
    }
    bob.join_channel(alice.channel_keys(general).await.unwrap())
        .await
        .unwrap();
    let other = carol.create_channel("other").await.unwrap();
    carol.post(other, "carol's own").await.unwrap();
    let unconfigured = hearth_sync::RelayStore::open(&dirs[4].path().join("relay")).unwrap();
    let trusted = hearth_sync::RelayStore::open(&dirs[5].path().join("relay")).unwrap();
    let relay_secret = |b: u8| hearth_core::SecretKey::from_bytes([b; 32]);
    let (n_unconfigured, _) = node_trusting(unconfigured.clone(), &relay_secret(1), vec![]).await;
    let (n_trusted, addr_trusted) = node_trusting(trusted.clone(), &relay_secret(2), vec![]).await;
    let trusted_id = hearth_sync::peer_id_of_secret(&relay_secret(2)).unwrap();
    let (n_alice, addr_alice) =
        node_trusting(alice.clone(), &alice.node_secret().await.unwrap(), vec![trusted_id]).await;

    // A stranger (no channel), a member of another channel, a relay nobody
    // configured: each dials Alice and runs a full session.
    let (n_stranger, _) = node(&stranger, support::LISTEN).await;
    let (n_carol, _) = node(&carol, support::LISTEN).await;
    for (who, n) in [
        ("stranger", &n_stranger),
        ("carol", &n_carol),
        ("relay", &n_unconfigured),
    ] {
        let o = session_with(n, &addr_alice).await;
        assert!(o.proved.is_empty(), "{who}: {o:?}");
        assert!(o.peer.is_empty(), "{who} learned a vector: {o:?}");
        assert_eq!((o.received, o.sent), (0, 0), "{who}");
    }
    assert!(stranger.channels().await.unwrap().is_empty());
    assert_eq!(carol.channels().await.unwrap().len(), 1);
    assert_eq!(unconfigured.stats().entries, 0);
    assert_eq!(unconfigured.stats().channels, 0);
    // Alice learned none of theirs either, and banned nobody: no rule broken.
    assert_eq!(alice.channels().await.unwrap().len(), 2);
    let status = n_alice.status().await.unwrap();
    assert!(status.iter().all(|s| s.connected), "{status:?}");

    // The relay Alice configured: granted and filled with both channels.
    n_alice.dial(addr_trusted.clone()).await.unwrap();
    let all = alice.vectors().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut held = hearth_sync::Replica::vectors(&trusted).await.unwrap();
        held.sort_by_key(|(w, _)| *w);
        let mut want = all.clone();
        want.sort_by_key(|(w, _)| *w);
        if held == want {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay holds {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(trusted.stats().granted_channels, 2);

    // The stranger and Carol get nothing from the relay either.
    for (who, n) in [("stranger", &n_stranger), ("carol", &n_carol)] {
        let o = session_with(n, &addr_trusted).await;
        assert!(o.proved.is_empty() && o.peer.is_empty(), "{who}: {o:?}");
        assert_eq!(o.received, 0, "{who}");
    }
    assert!(stranger.channels().await.unwrap().is_empty());

    // Bob, a member of `general` only, gets `general` from the relay alone
    // (Alice is not dialed), and nothing of `secret`.
    let (n_bob, _) = node(&bob, support::LISTEN).await;
    let o = session_with(&n_bob, &addr_trusted).await;
    assert_eq!(o.proved.len(), 1, "{o:?}");
    // Everything the relay was filled with (Alice may have written a receipt
    // since, which the relay need not hold yet).
    let general_wire = alice.channel_keys(general).await.unwrap().wire();
    let filled = &all.iter().find(|(w, _)| *w == general_wire).expect("general").1;
    assert!(bob.vector(general).await.unwrap().covers(filled), "{o:?}");
    assert_eq!(bob.page(general, None, 100).await.unwrap().len(), 5);
    assert_eq!(bob.channels().await.unwrap().len(), 1);
    for n in [n_alice, n_bob, n_carol, n_stranger, n_trusted, n_unconfigured] {
        n.stop().await.unwrap();
    }
    for s in [alice, bob, carol, stranger] {
        s.close().await.unwrap();
    }
}

/// A new device on a fresh key, connected to `addr`.
async fn new_device(addr: &Multiaddr) -> NodeHandle {
    let key = hearth_core::SecretKey::generate().unwrap();
    let n = hearth_sync::start(hearth_sync::Detached, &key, hearth_sync::NodeConfig::default())
        .await
        .unwrap();
    n.dial(addr.clone()).await.unwrap();
    n.wait_connected(hearth_sync::peer_of(addr).unwrap(), Duration::from_secs(20))
        .await
        .unwrap();
    n
}

/// Linking a device: the linking node reports the asking device with the
/// code the new device shows, and sends nothing until its user confirms;
/// another holder of the ticket is turned away meanwhile; the offer is used
/// once; a decline or the end of the offer ends it. What the new device
/// gets is a chain the linking device issued for the keys it sent, never
/// the user key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_link_waits_for_the_code_to_be_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Store::create(dir.path(), &Passphrase::new("pw"), "alice", config())
        .await
        .unwrap();
    alice.create_channel("general").await.unwrap();
    let (node, addr) = node(&alice, support::LISTEN).await;
    let linking = node.peer_id();
    let offer = |valid_for: Duration| {
        let (node, alice) = (node.clone(), alice.clone());
        async move {
            let _ = &alice;
            let secret = hearth_core::SecretKey::generate().unwrap();
            node.offer_link(secret.clone(), valid_for).await.unwrap();
            secret
        }
    };
    let mut events = node.subscribe();

    let secret = offer(Duration::from_secs(600)).await;
    let phone = new_device(&addr).await;
    let code = phone.link_code(linking, &secret);
    let phone_keys = hearth_core::device::DeviceKeys::generate().unwrap();
    let public = phone_keys.public();
    let fetch = tokio::spawn({
        let (phone, secret) = (phone.clone(), secret.clone());
        async move { phone.fetch_link(linking, &secret, public).await }
    });
    let (asking, shown) = next_event(&mut events, |e| match e {
        hearth_sync::NodeEvent::LinkRequested { peer, code } => Some((peer, code)),
        _ => None,
    })
    .await;
    assert_eq!((asking, &shown), (phone.peer_id(), &code), "both devices show one code");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!fetch.is_finished(), "the bundle left before the code was confirmed");
    // Someone else with the ticket, asking meanwhile: turned away, with
    // another code than the phone's.
    let thief = new_device(&addr).await;
    assert_ne!(thief.link_code(linking, &secret), code);
    let thief_keys = hearth_core::device::DeviceKeys::generate().unwrap().public();
    let e = thief.fetch_link(linking, &secret, thief_keys).await.unwrap_err();
    assert!(e.to_string().contains("another device"), "{e}");
    assert!(
        node.confirm_link(thief.peer_id(), true).await.is_err(),
        "only the asking device can be confirmed"
    );

    node.confirm_link(asking, true).await.unwrap();
    let bundle = fetch.await.unwrap().unwrap();
    assert_eq!(bundle.name, "alice");
    assert_eq!(bundle.channels.len(), 1);
    // A chain through Alice's device, for the phone's keys: no user key.
    let certified = hearth_core::device::verify_chain(&bundle.chain).unwrap();
    assert_eq!((certified.keys, certified.user), (public, alice.whoami().user));
    assert_eq!(
        hearth_core::device::issuers(&bundle.chain),
        vec![(
            alice.whoami().device,
            alice.device_cert().await.unwrap().body.keys.signing
        )]
    );
    let linked = hearth_core::Identity::linked(phone_keys, bundle.chain, "alice").unwrap();
    assert!(!linked.holds_user_key());
    // Used once.
    let e = phone.fetch_link(linking, &secret, public).await.unwrap_err();
    assert!(e.to_string().contains("no device link is on offer"), "{e}");

    // Declined: the asking device gets nothing, and the offer is over.
    let secret = offer(Duration::from_secs(600)).await;
    let other = new_device(&addr).await;
    let fetch = tokio::spawn({
        let (other, secret) = (other.clone(), secret.clone());
        async move { other.fetch_link(linking, &secret, public).await }
    });
    let asking = next_event(&mut events, |e| match e {
        hearth_sync::NodeEvent::LinkRequested { peer, .. } => Some(peer),
        _ => None,
    })
    .await;
    node.confirm_link(asking, false).await.unwrap();
    assert!(fetch.await.unwrap().is_err());
    assert!(other.fetch_link(linking, &secret, public).await.is_err());

    // An offer past its end answers nobody.
    let secret = offer(Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = new_device(&addr).await;
    let e = late.fetch_link(linking, &secret, public).await.unwrap_err();
    assert!(e.to_string().contains("no device link is on offer"), "{e}");
    for n in [node, phone, thief, other, late] {
        n.stop().await.unwrap();
    }
    alice.close().await.unwrap();
}
