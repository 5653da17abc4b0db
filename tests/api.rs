//! The embedding API as a chat app uses it: typed errors, queued writes,
//! the sync node a `Hearth` owns, syncing until equal, per-channel stats.

use std::time::Duration;

use hearth::{Config, Error, Hearth, KdfParams, NodeConfig, Passphrase};

type Res = Result<(), Box<dyn std::error::Error>>;

const T: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn loopback() -> NodeConfig {
    NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("an address")],
        ..NodeConfig::default()
    }
}

/// Whether something accepts TCP connections at a node's (loopback) address.
fn accepts(addr: &hearth::Multiaddr) -> bool {
    let text = addr.to_string();
    let port: u16 = text
        .split("/tcp/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("a TCP address");
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Wait until nothing accepts connections at `addr` any more.
async fn until_closed(addr: &hearth::Multiaddr) -> bool {
    for _ in 0..500 {
        if !accepts(addr) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn errors_are_typed_and_say_what_to_do() -> Res {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let alice = Hearth::create(dir.path().join("a"), &pass, "alice", config()).await?;
    let bob = Hearth::create(dir.path().join("b"), &pass, "bob", config()).await?;
    let c = alice.create_channel("general").await?;
    let m = alice.post(c, "hello").await?;

    // Unknown ids, from every kind of call.
    let ghost = bob.create_channel("elsewhere").await?;
    assert!(matches!(
        alice.post(ghost, "x").await,
        Err(Error::NotFound { what: "channel", .. })
    ));
    let theirs = bob.post(ghost, "not yours").await?;
    assert!(matches!(
        alice.edit(theirs, "x").await,
        Err(Error::NotFound { what: "message", .. })
    ));
    assert!(matches!(
        alice.queue_post(c, "x", Some(theirs)).await?.await,
        Err(Error::NotFound { .. })
    ));
    // Input over its limit.
    let long = "x".repeat(hearth::MAX_TEXT_BYTES + 1);
    assert!(matches!(alice.post(c, &long).await, Err(Error::TooLarge { .. })));
    // Sync calls without sync running, and a second node for one store.
    assert!(matches!(
        alice.link_ticket(Vec::new()).await,
        Err(Error::SyncNotRunning)
    ));
    let node = alice.start_sync(loopback()).await?;
    assert!(matches!(alice.start_sync(loopback()).await, Err(Error::SyncRunning)));
    // A link ticket is not an invite.
    let link = alice.link_ticket(node.wait_listening(T).await?).await?;
    assert!(matches!(bob.join(&link).await, Err(Error::BadTicket { .. })));
    // Bad ticket text converts too.
    let parsed: Result<hearth::Ticket, _> = "hearth:nonsense".parse();
    let e: Error = parsed.expect_err("not a ticket").into();
    assert!(matches!(e, Error::BadTicket { .. }), "{e:?}");
    // An author's own message still edits; the store is unharmed by all of it.
    alice.edit(m, "hello, edited").await?;
    assert_eq!(alice.thread(m).await?.root.text.as_deref(), Some("hello, edited"));
    let adir = alice.whoami().dir.clone();
    alice.close().await?;
    bob.close().await?;

    assert!(matches!(
        Hearth::open(&adir, &Passphrase::new("wrong"), config()).await,
        Err(Error::WrongPassphrase)
    ));
    assert!(matches!(
        Hearth::open(dir.path().join("nothing"), &pass, config()).await,
        Err(Error::NotAStore { .. })
    ));
    let again = Hearth::open(&adir, &pass, config()).await?;
    assert!(matches!(
        Hearth::open(&adir, &pass, config()).await,
        Err(Error::Locked { .. })
    ));
    again.close().await?;
    Ok(())
}

#[tokio::test]
async fn queued_posts_are_acknowledged_in_order_with_their_ids() -> Res {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let h = Hearth::create(dir.path(), &pass, "alice", config()).await?;
    let c = h.create_channel("general").await?;
    let root = h.post(c, "root").await?;
    let mut acks = Vec::new();
    for i in 0..50 {
        let reply_to = (i % 5 == 0).then_some(root);
        acks.push(h.queue_post(c, &format!("m{i}"), reply_to).await?);
    }
    acks.push(h.queue_reply(root, "last reply").await?);
    let mut ids = Vec::new();
    for a in acks {
        ids.push(a.await?);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ids come in the order the posts were queued");
    let all = h.all_messages(c).await?;
    assert_eq!(all.len(), 52);
    assert_eq!(h.thread(root).await?.replies.len(), 11);
    h.close().await?;
    Ok(())
}

#[tokio::test]
async fn two_stores_sync_until_equal_and_close_stops_the_node() -> Res {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let alice = Hearth::create(dir.path().join("a"), &pass, "alice", config()).await?;
    let bob = Hearth::create(dir.path().join("b"), &pass, "bob", config()).await?;
    let c = alice.create_channel("general").await?;
    for i in 0..20 {
        alice.post(c, &format!("m{i}")).await?;
    }
    let a_node = alice.start_sync(loopback()).await?;
    let a_addrs = a_node.wait_listening(T).await?;
    assert!(!a_addrs.is_empty());
    let ticket = alice.invite(c, a_addrs.clone(), None, 0).await?;
    assert!(matches!(bob.join(&ticket).await?, hearth::Joined::Pending { .. }));

    let b_node = bob.start_sync(NodeConfig::default()).await?;
    let peer = b_node.connect(&a_addrs, T).await?;
    assert_eq!(peer, a_node.peer_id());
    let report = b_node.sync_until_equal(peer, T).await?;
    assert_eq!(report.joined.len(), 1, "let in through the pending invite");
    assert!(report.refused.is_empty());
    assert_eq!(bob.channel(c).await?.messages, 20);
    assert_eq!(
        bob.plumbing().vector(c).await?,
        alice.plumbing().vector(c).await?,
        "both hold the same entries"
    );

    // Per-channel stats: counts and sizes, and per peer what it lacks.
    let stats = alice.channel_stats(c).await?;
    assert_eq!(stats.store.messages, 20);
    assert_eq!(stats.store.feeds, 2, "alice's feed and bob's (his join)");
    assert!(stats.store.entry_bytes > 20 * 5);
    assert!(stats.store.epochs >= 1);
    let lack = |s: &hearth::ChannelStats| s.peers.iter().find(|p| p.peer == b_node.peer_id()).map(|p| p.lacks);
    assert_eq!(lack(&stats), Some(0), "bob acknowledged everything: {stats:?}");

    // Bob goes offline; alice writes on: bob lacks those entries.
    bob.stop_sync().await;
    assert!(bob.sync_handle().is_none());
    for i in 0..3 {
        alice.post(c, &format!("offline {i}")).await?;
    }
    let stats = alice.channel_stats(c).await?;
    assert!(lack(&stats).is_some_and(|n| n >= 1), "{stats:?}");
    // Back online: equal again, nothing lacking.
    let b_node = bob.start_sync(NodeConfig::default()).await?;
    b_node.connect(&a_addrs, T).await?;
    b_node.sync_until_equal(peer, T).await?;
    assert_eq!(bob.channel(c).await?.messages, 23);
    let deadline = tokio::time::Instant::now() + T;
    while lack(&alice.channel_stats(c).await?) != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "alice never saw bob catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A handle of the node stopped earlier leaves the running one alone.
    let old = bob.sync_handle().expect("bob's node");
    old.stop().await;
    let b_node = bob.start_sync(NodeConfig::default()).await?;
    b_node.connect(&a_addrs, T).await?;
    old.stop().await;
    assert!(bob.sync_handle().is_some_and(|n| n.node().same_node(b_node.node())));
    assert!(
        b_node.listen_addrs().await.is_ok(),
        "a stale handle stopped the new node"
    );

    // Closing the store stops its node: nothing listens there any more.
    assert!(accepts(&a_addrs[0]));
    alice.close().await?;
    assert!(
        until_closed(&a_addrs[0]).await,
        "alice's node still listens after close"
    );
    assert!(
        a_node.listen_addrs().await.is_err(),
        "its handle reports the node stopped"
    );
    bob.close().await?;
    Ok(())
}

#[tokio::test]
async fn dropping_every_handle_stops_a_node() -> Res {
    let secret = hearth::core::SecretKey::generate()?;
    let node = hearth::sync::start(hearth::sync::Detached, &secret, loopback()).await?;
    let addrs = node.wait_listening(T).await?;
    assert!(accepts(&addrs[0]));
    let clone = node.clone();
    drop(node);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(accepts(&addrs[0]), "a clone still holds the node");
    drop(clone);
    assert!(until_closed(&addrs[0]).await, "the node runs on with no handle left");
    Ok(())
}

#[tokio::test]
async fn dropping_the_store_and_its_sync_handles_stops_the_node() -> Res {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let h = Hearth::create(dir.path(), &pass, "alice", config()).await?;
    let node = h.start_sync(loopback()).await?;
    let addrs = node.wait_listening(T).await?;
    let h2 = h.clone();
    drop(h);
    drop(node);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(accepts(&addrs[0]), "a clone of the store keeps its node");
    drop(h2);
    assert!(until_closed(&addrs[0]).await, "the node runs on with no store left");
    Ok(())
}
