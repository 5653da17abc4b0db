//! Many nodes over real loopback TCP: twenty in a sparse mesh, two halves
//! partitioned and healed, a node that was offline for a thousand messages.

use std::time::{Duration, Instant};

use hearth_core::ChannelId;
use hearth_store::Store;

mod support;
use support::{config, converged, node, pass, snapshot};

/// `n` stores in `dirs`; the first creates a channel the others join by its keys.
async fn stores(dirs: &[tempfile::TempDir]) -> (Vec<Store>, ChannelId) {
    let mut out = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        out.push(
            Store::create(d.path(), &pass(), &format!("user{i}"), config())
                .await
                .unwrap(),
        );
    }
    let ch = out[0].create_channel("general").await.unwrap();
    let keys = out[0].channel_keys(ch).await.unwrap();
    for s in &out[1..] {
        s.join_channel(keys.clone()).await.unwrap();
    }
    (out, ch)
}

async fn texts(s: &Store, c: ChannelId) -> Vec<String> {
    let page = s.page(c, None, 10_000).await.unwrap();
    page.into_iter().filter_map(|m| m.text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_in_a_sparse_mesh_converge() {
    const N: usize = 20;
    const EACH: usize = 3;
    let t0 = Instant::now();
    let dirs: Vec<_> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
    let (stores, ch) = stores(&dirs).await;
    let mut nodes = Vec::new();
    for s in &stores {
        nodes.push(node(s).await);
    }
    // A ring, each node dialing the next, and a chord from every fifth node
    // across the ring: diameter about 5, every node dialing 1-2 others.
    for i in 0..N {
        nodes[i].0.dial(nodes[(i + 1) % N].1.clone()).await.unwrap();
        if i % 5 == 0 {
            nodes[i].0.dial(nodes[(i + N / 2) % N].1.clone()).await.unwrap();
        }
    }
    let setup = t0.elapsed();
    let t1 = Instant::now();
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let first = s.post(ch, &format!("user{i} says 0")).await.unwrap();
            for j in 1..EACH {
                s.post(ch, &format!("user{i} says {j}")).await.unwrap();
            }
            s.react(first, "👍").await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<&Store> = stores.iter().collect();
    assert!(
        converged(&all, ch, Duration::from_secs(90)).await,
        "{N} nodes did not converge"
    );
    let converge = t1.elapsed();
    let page = stores[N - 1].page(ch, None, 10_000).await.unwrap();
    assert_eq!(page.len(), N * EACH);
    assert_eq!(page.iter().filter(|m| m.reactions.contains_key("👍")).count(), N);
    assert_eq!(stores[0].members(ch).await.unwrap().len(), N);
    for s in &stores {
        assert!(s.verify().await.unwrap().is_clean());
    }
    eprintln!("{N} nodes: setup {setup:?}, converged {converge:?} after the writes");
    for (n, _) in nodes {
        n.stop().await.unwrap();
    }
    for s in stores {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_halves_converge_after_healing() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (stores, ch) = stores(&dirs).await;
    let (a, b, c, d) = (&stores[0], &stores[1], &stores[2], &stores[3]);
    let root = a.post(ch, "before the split").await.unwrap();
    let doomed = a.post(ch, "deleted on one side").await.unwrap();
    let theirs = c.post(ch, "c's, before the split").await.unwrap();
    let (na, addr_a) = node(a).await;
    let (nb, _) = node(b).await;
    let (nc, addr_c) = node(c).await;
    let (nd, _) = node(d).await;
    // A - B - C - D, the link B - C being the bridge.
    nb.dial(addr_a.clone()).await.unwrap();
    nb.dial(addr_c.clone()).await.unwrap();
    nd.dial(addr_c.clone()).await.unwrap();
    assert!(
        converged(&[a, b, c, d], ch, Duration::from_secs(30)).await,
        "before the split"
    );

    // Split: B's node stops (dropping both of its links) and comes back
    // linked to A only. C never dialed B, so it does not redial it.
    nb.stop().await.unwrap();
    let (nb, addr_b) = node(b).await;
    nb.dial(addr_a.clone()).await.unwrap();
    nb.wait_connected(na.peer_id(), Duration::from_secs(30)).await.unwrap();

    // Concurrent writes on both sides to the same messages: only an author
    // edits or deletes, so each side edits its own and touches the other's.
    a.edit(root, "edited by a").await.unwrap();
    c.edit(theirs, "edited by c").await.unwrap();
    a.delete(doomed).await.unwrap();
    for (i, s) in stores.iter().enumerate() {
        for m in [root, theirs] {
            s.react(m, "👍").await.unwrap();
            s.react(m, if i < 2 { "left" } else { "right" }).await.unwrap();
        }
        if i >= 2 {
            // The right half has not seen the delete.
            s.react(doomed, "👀").await.unwrap();
        }
        s.reply(root, &format!("reply from {i}")).await.unwrap();
        s.reply(theirs, &format!("reply from {i}")).await.unwrap();
        for j in 0..5 {
            s.post(ch, &format!("user{i} while split {j}")).await.unwrap();
        }
    }
    b.unreact(root, "👍").await.unwrap();
    d.unreact(root, "👍").await.unwrap();
    assert!(converged(&[a, b], ch, Duration::from_secs(30)).await, "left half");
    assert!(converged(&[c, d], ch, Duration::from_secs(30)).await, "right half");
    assert_ne!(
        snapshot(a, ch).await,
        snapshot(c, ch).await,
        "the halves were not split"
    );
    assert!(!texts(a, ch).await.iter().any(|t| t.starts_with("user2")));

    // Heal.
    let t = Instant::now();
    nc.dial(addr_b).await.unwrap();
    assert!(
        converged(&[a, b, c, d], ch, Duration::from_secs(60)).await,
        "after healing"
    );
    eprintln!("partition healed in {:?}", t.elapsed());
    let m = d.message(root).await.unwrap().message;
    assert_eq!(m.text.as_deref(), Some("edited by a"));
    assert_eq!(m.reply_count, 4);
    assert_eq!(m.reactions.get("👍").map(|u| u.len()), Some(2));
    assert_eq!(m.reactions.get("left").map(|u| u.len()), Some(2));
    assert_eq!(m.reactions.get("right").map(|u| u.len()), Some(2));
    let t = a.message(theirs).await.unwrap().message;
    assert_eq!(t.text.as_deref(), Some("edited by c"));
    assert_eq!(t.reply_count, 4);
    assert_eq!(t.reactions.get("👍").map(|u| u.len()), Some(4));
    assert!(c.message(doomed).await.unwrap().message.deleted);
    assert_eq!(a.page(ch, None, 10_000).await.unwrap().len(), 3 + 4 * 5);
    for s in &stores {
        assert!(s.verify().await.unwrap().is_clean());
    }
    for n in [na, nb, nc, nd] {
        n.stop().await.unwrap();
    }
    for s in stores {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_for_a_thousand_messages_catches_up() {
    const PER_WRITER: usize = 500;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut stores, ch) = stores(&dirs).await;
    let z = stores.pop().unwrap();
    let (x, y) = (&stores[0], &stores[1]);
    x.post(ch, "while everyone is online").await.unwrap();
    let (nx, addr_x) = node(x).await;
    let (ny, addr_y) = node(y).await;
    let (nz, _) = node(&z).await;
    ny.dial(addr_x.clone()).await.unwrap();
    nz.dial(addr_x.clone()).await.unwrap();
    assert!(converged(&[x, y, &z], ch, Duration::from_secs(30)).await);
    let z_peer = nz.peer_id();

    // Z goes away entirely: node stopped, store closed.
    nz.stop().await.unwrap();
    z.close().await.unwrap();

    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..PER_WRITER {
                s.post(ch, &format!("user{i} offline {j}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let written = t.elapsed();
    assert!(converged(&[x, y], ch, Duration::from_secs(60)).await);

    // Z comes back with the same identity, dials one peer, catches up.
    let t = Instant::now();
    let z = Store::open(dirs[2].path(), &pass(), config()).await.unwrap();
    let (nz, _) = node(&z).await;
    assert_eq!(nz.peer_id(), z_peer);
    nz.dial(addr_y).await.unwrap();
    assert!(
        converged(&[x, y, &z], ch, Duration::from_secs(120)).await,
        "the returning node did not catch up"
    );
    eprintln!(
        "catch-up: {} messages written in {written:?}; caught up in {:?}",
        2 * PER_WRITER,
        t.elapsed()
    );
    assert_eq!(z.page(ch, None, 10_000).await.unwrap().len(), 1 + 2 * PER_WRITER);
    for s in [x, y, &z] {
        assert!(s.verify().await.unwrap().is_clean());
    }
    for n in [nx, ny, nz] {
        n.stop().await.unwrap();
    }
    for s in stores {
        s.close().await.unwrap();
    }
    z.close().await.unwrap();
}

/// A catch-up of several batches (each Fetch answer is at most
/// `BATCH_BYTES`) fetches the next batch while it ingests one
/// (`drive::run_session`), into a member that defers the epochs it has not
/// read (`Config::lazy_epochs`): nothing is missed or doubled, and what the
/// member reads is what the writer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_of_several_batches_fetches_ahead_and_misses_nothing() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (stores, ch) = stores(&dirs).await;
    let (x, y) = (&stores[0], &stores[1]);
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let x = x.clone();
        tasks.push(tokio::spawn(async move {
            // Texts that do not compress (changes are compressed).
            let mut r = 0x9e37_79b9_7f4a_7c15u64 ^ w;
            for i in 0..160 {
                let long: String = (0..4000)
                    .map(|_| {
                        r ^= r << 13;
                        r ^= r >> 7;
                        r ^= r << 17;
                        char::from(b'a' + (r % 26) as u8)
                    })
                    .collect();
                x.post(ch, &format!("{w}/{i} {long}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wire = x.channel_keys(ch).await.unwrap().wire();
    let held = x
        .entries_after(wire, hearth_core::Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap();
    let bytes: usize = held.entries.iter().map(Vec::len).sum();
    assert!(
        bytes > 2 * hearth_sync::proto::BATCH_BYTES,
        "{bytes} bytes: at least three batches"
    );

    let (nx, addr_x) = node(x).await;
    let (ny, _) = node(y).await;
    let mut ev = ny.subscribe();
    ny.dial(addr_x).await.unwrap();
    assert!(converged(&[x, y], ch, Duration::from_secs(60)).await);
    let synced = support::next_event(&mut ev, |e| match e {
        hearth_sync::NodeEvent::Synced {
            round_trips, received, ..
        } if received > 0 => Some((round_trips, received)),
        _ => None,
    })
    .await;
    assert!(synced.0 >= 4, "{synced:?}: a Hello and three Fetches at least");
    assert!(synced.1 >= held.entries.len() as u64, "{synced:?}");
    assert_eq!(snapshot(x, ch).await, snapshot(y, ch).await);
    assert_eq!(y.page(ch, None, 1000).await.unwrap().len(), 640);
    assert!(y.verify().await.unwrap().is_clean());
    for n in [nx, ny] {
        n.stop().await.unwrap();
    }
    for s in stores {
        s.close().await.unwrap();
    }
}
