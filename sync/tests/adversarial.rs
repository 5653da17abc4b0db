//! A malicious peer over real loopback TCP: forged entries behind a lying
//! replica, oversized and garbage frames from a raw libp2p client, a flood of
//! streams, replayed entries. The honest node refuses what is wrong, drops a
//! peer whose input proves forgery, loses nothing it held, stores nothing
//! forged, and keeps syncing with honest peers.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use hearth_core::{ChannelId, DeviceId, Envelope, FeedPos, SecretKey, Vector, WireId};
use hearth_store::{EntryBatch, IngestReport, Store};
use hearth_sync::proto::{self, MAX_REQUEST, PROTOCOL, Request, Response};
use hearth_sync::{Multiaddr, NodeEvent, NodeHandle, PeerId, Replica, ReplicaEvents, peer_of};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use serde_bytes::ByteBuf;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

mod support;
use support::{LISTEN, config, converged, node, pass, snapshot, start_node_on};

const PATIENCE: Duration = Duration::from_secs(30);

async fn start_node<R: Replica>(replica: R, secret: &SecretKey) -> (NodeHandle, Multiaddr) {
    start_node_on(replica, secret, LISTEN).await
}

/// The first event matching `want` within `timeout`.
async fn wait_for(
    events: &mut broadcast::Receiver<NodeEvent>,
    timeout: Duration,
    mut want: impl FnMut(&NodeEvent) -> bool,
) -> Option<NodeEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Ok(e)) if want(&e) => return Some(e),
            Ok(Ok(_)) => {}
        }
    }
}

/// Every entry a store holds of a channel, as stored.
async fn all_entries(s: &Store, wire: WireId) -> Vec<Vec<u8>> {
    s.entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries
}

/// The node answers, and within a few seconds.
async fn answers(n: &NodeHandle) {
    let status = tokio::time::timeout(Duration::from_secs(10), n.status()).await;
    assert!(matches!(status, Ok(Ok(_))), "the node stopped answering: {status:?}");
}

async fn connected(n: &NodeHandle, peer: PeerId) -> bool {
    n.status().await.unwrap().iter().any(|s| s.peer == peer && s.connected)
}

// ---------------------------------------------------------------------------
// An evil replica: a real member's store that corrupts what it serves.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forgery {
    /// A flipped bit in the signature.
    Signature,
    /// A flipped bit in the sealed body (the signature covers it).
    Body,
    /// Entry n+1 relabeled as entry n: no gap, but it does not chain.
    Seq,
    /// A flipped bit in the header's hash of the previous entry.
    Prev,
    /// Bytes that are no envelope at all.
    Garbage,
    /// Genuine entries of another channel, served as this one's.
    OtherChannel,
    /// Genuine entries with one left out (a gap, which is not forgery).
    Gap,
    /// Hello vectors with a feed it does not have; genuine entries served.
    ClaimsMore,
    /// Nothing forged: a plain member's store (whose ingests are counted).
    Honest,
    /// Honest, but each ingest takes [`SLOW_INGEST`] first.
    Slow,
    /// Genuine entries, then many feeds of one entry each, validly signed by
    /// their (made-up) authors but sealed under another key: each costs the
    /// receiver a decryption and is refused for its content.
    Content,
}

/// `n` first entries of new feeds for channel `wire`, signed, whose bodies do
/// not open under the channel's key.
fn unopenable(wire: WireId, n: usize) -> Vec<Vec<u8>> {
    let wrong = hearth_core::ChannelKeys::generate().unwrap();
    (0..n)
        .map(|_| {
            let me = hearth_core::Identity::generate("sock puppet").unwrap();
            let header = hearth_core::EntryHeader {
                version: hearth_core::ENVELOPE_V2,
                wire,
                user: me.user(),
                device: me.device(),
                seq: 1,
                prev: [0; 32],
                generation: 0,
                epoch: 0,
            };
            let hb = header.encode();
            let body = hearth_core::seal(wrong.feed_key(), &hb, b"not a change").unwrap();
            let certs = vec![me.device_cert().unwrap().clone()];
            let mut signed = hb.clone();
            signed.extend(postcard::to_stdvec(&certs).unwrap());
            signed.extend_from_slice(&body);
            let sig = me.device_keys().unwrap().sign(b"hearth v2 entry", &signed).to_vec();
            Envelope {
                header,
                certs,
                body,
                sig,
                pruned: None,
                segments: Vec::new(),
                pack: None,
            }
            .encode()
        })
        .collect()
}

/// How long each ingest of a [`Forgery::Slow`] replica takes.
const SLOW_INGEST: Duration = Duration::from_millis(400);

/// A feed no one writes: what [`Forgery::ClaimsMore`] claims to hold.
const PHANTOM: DeviceId = DeviceId([0xEE; 16]);

#[derive(Clone)]
struct Evil {
    store: Store,
    forgery: Forgery,
    /// Index of the first corrupted entry in each batch served.
    at: usize,
    other: WireId,
    /// The feed of every entry pushed to it.
    ingested: std::sync::Arc<std::sync::Mutex<Vec<DeviceId>>>,
}

fn reencode(bytes: &[u8], f: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let mut env = Envelope::decode(bytes).unwrap();
    f(&mut env);
    postcard::to_stdvec(&env).unwrap()
}

impl Evil {
    fn corrupt(&self, mut e: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        // A batch too short to reach `at` goes out genuine, so that what is
        // kept before the forgery does not depend on how batches fall.
        let at = self.at;
        if at >= e.len() {
            return e;
        }
        match self.forgery {
            Forgery::Signature => e[at] = reencode(&e[at], |env| env.sig[0] ^= 1),
            Forgery::Body => e[at] = reencode(&e[at], |env| env.body[0] ^= 0x80),
            Forgery::Prev => e[at] = reencode(&e[at], |env| env.header.prev[31] ^= 1),
            Forgery::Garbage => e[at] = vec![0xA5; 300],
            Forgery::Seq if at + 1 < e.len() => {
                e.remove(at);
                e[at] = reencode(&e[at], |env| env.header.seq -= 1);
            }
            Forgery::Seq => e[at] = reencode(&e[at], |env| env.header.prev = [0; 32]),
            // Genuine entries with one left out: a gap, not a forgery (a
            // forged seq fails its signature, checked first, and is a forgery).
            Forgery::Gap if at + 1 < e.len() => {
                e.remove(at);
                e.truncate(at + 1);
            }
            Forgery::Gap => e.clear(),
            Forgery::OtherChannel | Forgery::ClaimsMore | Forgery::Content | Forgery::Honest | Forgery::Slow => {}
        }
        e
    }
}

impl Replica for Evil {
    fn is_relay(&self) -> bool {
        false
    }

    async fn access_keys(&self) -> hearth_store::Result<Vec<(WireId, hearth_core::SecretKey)>> {
        Replica::access_keys(&self.store).await
    }

    async fn grant(
        &self,
        grants: Vec<(WireId, hearth_core::SecretKey)>,
    ) -> hearth_store::Result<Option<Vec<(WireId, Vector)>>> {
        Replica::grant(&self.store, grants).await
    }

    async fn admit(&self, req: hearth_store::JoinRequest) -> hearth_store::Result<Option<Vec<u8>>> {
        Replica::admit(&self.store, req).await
    }

    async fn notices(&self) -> hearth_store::Result<Vec<(WireId, Vec<u8>)>> {
        Replica::notices(&self.store).await
    }

    async fn note(
        &self,
        notices: Vec<Vec<u8>>,
        removals: Vec<hearth_core::peer::RemovalNotice>,
        drops: Vec<hearth_core::peer::TextDrop>,
        by: Option<hearth_core::peer::Certifier>,
    ) -> hearth_store::Result<Option<u32>> {
        Replica::note(&self.store, notices, removals, drops, by).await
    }

    async fn drops(&self) -> hearth_store::Result<Vec<hearth_core::peer::TextDrop>> {
        Replica::drops(&self.store).await
    }

    async fn removals(&self) -> hearth_store::Result<Vec<hearth_core::peer::RemovalNotice>> {
        Replica::removals(&self.store).await
    }

    async fn who(
        &self,
        role: hearth_core::peer::WhoRole,
        nonce: hearth_core::peer::Nonce,
        ends: hearth_core::peer::Ends,
        matched: Vec<u8>,
        with_chain: bool,
    ) -> hearth_store::Result<Option<hearth_core::peer::Who>> {
        Replica::who(&self.store, role, nonce, ends, matched, with_chain).await
    }

    async fn vet(
        &self,
        claim: hearth_core::peer::Claim,
        wires: Vec<WireId>,
    ) -> hearth_store::Result<hearth_core::peer::Vetting> {
        Replica::vet(&self.store, claim, wires).await
    }

    async fn serving(
        &self,
        device: hearth_core::peer::Certifier,
        wires: Vec<WireId>,
    ) -> hearth_store::Result<Vec<WireId>> {
        Replica::serving(&self.store, device, wires).await
    }

    async fn relay_cert(&self, relay: Vec<u8>) -> hearth_store::Result<Option<hearth_core::peer::RelayCert>> {
        Replica::relay_cert(&self.store, relay).await
    }

    async fn relay_certs(&self, wires: Vec<WireId>) -> hearth_store::Result<Vec<hearth_core::peer::RelayCert>> {
        Replica::relay_certs(&self.store, wires).await
    }

    async fn certify(
        &self,
        cert: hearth_core::peer::RelayCert,
        me: Vec<u8>,
        wires: Vec<WireId>,
    ) -> hearth_store::Result<()> {
        Replica::certify(&self.store, cert, me, wires).await
    }

    async fn vectors(&self) -> hearth_store::Result<Vec<(WireId, Vector)>> {
        let mut v = Replica::vectors(&self.store).await?;
        if self.forgery == Forgery::ClaimsMore {
            for (_, vector) in &mut v {
                vector.0.insert(
                    PHANTOM,
                    FeedPos {
                        seq: 1000,
                        hash: [7; 32],
                    },
                );
            }
        }
        Ok(v)
    }

    async fn entries_after(
        &self,
        wire: WireId,
        have: Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> hearth_store::Result<Option<EntryBatch>> {
        let Some(mut batch) = Replica::entries_after(&self.store, wire, have, max_bytes, max_entries).await? else {
            return Ok(None);
        };
        if self.forgery == Forgery::OtherChannel && !batch.entries.is_empty() {
            batch.entries = all_entries(&self.store, self.other).await;
        } else if self.forgery == Forgery::Content {
            batch.entries.extend(unopenable(wire, 300));
        } else {
            batch.entries = self.corrupt(batch.entries);
        }
        Ok(Some(batch))
    }

    async fn ingest(&self, wire: WireId, entries: Vec<Vec<u8>>) -> hearth_store::Result<Option<IngestReport>> {
        let feeds = entries
            .iter()
            .filter_map(|e| Envelope::decode(e).ok())
            .map(|e| e.header.device);
        self.ingested.lock().unwrap().extend(feeds);
        if self.forgery == Forgery::Slow {
            tokio::time::sleep(SLOW_INGEST).await;
        }
        Replica::ingest(&self.store, wire, entries).await
    }

    fn subscribe(&self) -> ReplicaEvents {
        Replica::subscribe(&self.store)
    }
}

/// An honest node dials a node serving `forgery` (from the `at`-th entry of
/// each batch on). It must report the peer (dropping it when the data is
/// forged), hold only genuine entries, and still converge with an honest peer.
async fn refuses_forgery(forgery: Forgery, at: usize) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let h = Store::create(dirs[0].path(), &pass(), "honest", config())
        .await
        .unwrap();
    let ch = h.create_channel("general").await.unwrap();
    let first = h.post(ch, "first").await.unwrap();
    for i in 0..4 {
        h.post(ch, &format!("honest {i}")).await.unwrap();
    }
    h.reply(first, "a reply").await.unwrap();
    h.react(first, "👍").await.unwrap();
    let keys = h.channel_keys(ch).await.unwrap();
    let wire = keys.wire();

    let e = Store::create(dirs[1].path(), &pass(), "mallory", config())
        .await
        .unwrap();
    e.join_channel(keys.clone()).await.unwrap();
    for i in 0..5 {
        e.post(ch, &format!("mallory {i}")).await.unwrap();
        // One feed entry per post (a checkpoint closes the group), so that
        // batches reach the forged position whatever the group timing.
        e.checkpoint().await.unwrap();
    }
    let elsewhere = e.create_channel("elsewhere").await.unwrap();
    for i in 0..3 {
        e.post(elsewhere, &format!("elsewhere {i}")).await.unwrap();
    }
    let other = e.channel_keys(elsewhere).await.unwrap().wire();
    let evil_device = e.whoami().device;

    let h2 = Store::create(dirs[2].path(), &pass(), "carol", config()).await.unwrap();
    h2.join_channel(keys).await.unwrap();
    for i in 0..3 {
        h2.post(ch, &format!("carol {i}")).await.unwrap();
    }

    let page_before = snapshot(&h, ch).await;
    let vector_before = h.vector(ch).await.unwrap();
    let held_before = all_entries(&h, wire).await;

    let evil = Evil {
        store: e.clone(),
        forgery,
        at,
        other,
        ingested: Default::default(),
    };
    let (ne, addr_e) = start_node(evil, &e.node_secret().await.unwrap()).await;
    let (nh, _) = node(&h).await;
    let mut events = nh.subscribe();
    nh.dial(addr_e).await.unwrap();
    let evil_peer = ne.peer_id();

    let forged = !matches!(forgery, Forgery::Gap | Forgery::ClaimsMore);
    match forgery {
        Forgery::ClaimsMore => {
            // Nothing to refuse: the session ends (it does not chase the
            // phantom feed forever) and the peer stays connected.
            let synced = wait_for(
                &mut events,
                PATIENCE,
                |e| matches!(e, NodeEvent::Synced { peer, .. } if *peer == evil_peer),
            )
            .await;
            assert!(synced.is_some(), "no session ended");
            // ... and does not start over and over.
            let mut more = 0;
            while wait_for(&mut events, Duration::from_secs(2), |e| {
                matches!(e, NodeEvent::Synced { .. })
            })
            .await
            .is_some()
            {
                more += 1;
                assert!(more < 20, "sessions with the liar never stop");
            }
            assert!(
                connected(&nh, evil_peer).await,
                "a liar without forged data was dropped"
            );
        }
        _ => {
            let rejected = wait_for(
                &mut events,
                PATIENCE,
                |e| matches!(e, NodeEvent::Rejected { peer, .. } if *peer == evil_peer),
            )
            .await;
            let Some(NodeEvent::Rejected { dropped, reason, .. }) = rejected else {
                panic!("{forgery:?}: no Rejected event");
            };
            assert_eq!(dropped, forged, "{forgery:?}: {reason}");
        }
    }
    answers(&nh).await;
    if forged {
        // Dropped, and kept out while banned (it is redialed and refused).
        let deadline = Instant::now() + PATIENCE;
        while connected(&nh, evil_peer).await {
            assert!(Instant::now() < deadline, "{forgery:?}: the forger is still connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !connected(&nh, evil_peer).await,
            "{forgery:?}: a banned peer reconnected"
        );
    }

    // Nothing held was lost; nothing forged was stored.
    let held_after: BTreeSet<Vec<u8>> = all_entries(&h, wire).await.into_iter().collect();
    assert!(
        held_before.iter().all(|b| held_after.contains(b)),
        "{forgery:?}: lost entries"
    );
    // What the forger's store holds is genuine (it writes receipts as it goes).
    let genuine_evil: BTreeSet<Vec<u8>> = all_entries(&e, wire).await.into_iter().collect();
    let mut from_evil = 0;
    for b in &held_after {
        let env = Envelope::decode(b).expect("stored entries decode");
        assert_eq!(env.header.wire, wire);
        if env.header.device == evil_device {
            assert!(genuine_evil.contains(b), "{forgery:?}: a forged entry was stored");
            from_evil += 1;
        }
    }
    if at == 0 && forgery != Forgery::ClaimsMore {
        assert_eq!(from_evil, 0, "{forgery:?}");
        assert_eq!(snapshot(&h, ch).await, page_before, "{forgery:?}");
        assert_eq!(h.vector(ch).await.unwrap(), vector_before, "{forgery:?}");
    } else if forgery == Forgery::ClaimsMore {
        assert!(!h.vector(ch).await.unwrap().0.contains_key(&PHANTOM));
    } else {
        // The genuine entries before the corrupted one are kept (the first
        // batch starts at the feed's first entry; a later one may start
        // further on, so more than `at` may arrive, all genuine as checked).
        assert!(from_evil >= at, "{forgery:?}: only {from_evil} genuine entries kept");
    }
    assert_eq!(h.channels().await.unwrap().len(), 1, "another channel leaked in");
    assert!(h.verify().await.unwrap().is_clean());

    // Still syncs with an honest peer and converges.
    let (n2, addr2) = node(&h2).await;
    nh.dial(addr2).await.unwrap();
    assert!(
        converged(&[&h, &h2], ch, PATIENCE).await,
        "{forgery:?}: no convergence with an honest peer afterwards"
    );
    let page = h.page(ch, None, 10_000).await.unwrap();
    for i in 0..4 {
        assert!(page.iter().any(|m| m.text.as_deref() == Some(&format!("honest {i}"))));
    }
    for s in [&h, &h2] {
        assert!(s.verify().await.unwrap().is_clean());
    }
    for n in [nh, ne, n2] {
        n.stop().await.unwrap();
    }
    for s in [h, e, h2] {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_signature_bit_is_refused_and_the_peer_dropped() {
    refuses_forgery(Forgery::Signature, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgery_mid_batch_keeps_only_the_genuine_prefix() {
    refuses_forgery(Forgery::Signature, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_body_bit_is_refused_and_the_peer_dropped() {
    refuses_forgery(Forgery::Body, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_seq_is_refused_and_the_peer_dropped() {
    refuses_forgery(Forgery::Seq, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_prev_hash_is_refused_and_the_peer_dropped() {
    refuses_forgery(Forgery::Prev, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_entries_are_refused_and_the_peer_dropped() {
    refuses_forgery(Forgery::Garbage, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_another_channel_are_refused_and_the_peer_dropped() {
    refuses_forgery(Forgery::OtherChannel, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_refused_without_dropping_the_peer() {
    refuses_forgery(Forgery::Gap, 0).await;
}

/// A peer that sends more entries failing for their content than a minute
/// allows (300 feeds of sock puppets, each entry signed but sealed under
/// another key) is disconnected for a while: not as a forger (the entries
/// are their authors'), but because each costs a decryption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_fail_for_their_content_are_rate_limited() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let h = Store::create(dirs[0].path(), &pass(), "honest", config())
        .await
        .unwrap();
    let ch = h.create_channel("general").await.unwrap();
    let keys = h.channel_keys(ch).await.unwrap();
    let e = Store::create(dirs[1].path(), &pass(), "mallory", config())
        .await
        .unwrap();
    e.join_channel(keys.clone()).await.unwrap();
    e.post(ch, "mallory's one real post").await.unwrap();
    let evil = Evil {
        store: e.clone(),
        forgery: Forgery::Content,
        at: 0,
        other: keys.wire(),
        ingested: Default::default(),
    };
    let (ne, addr_e) = start_node(evil, &e.node_secret().await.unwrap()).await;
    let (nh, _) = node(&h).await;
    let mut events = nh.subscribe();
    nh.dial(addr_e).await.unwrap();
    let evil_peer = ne.peer_id();
    let throttled = wait_for(&mut events, PATIENCE, |ev| {
        matches!(ev, NodeEvent::Rejected { peer, reason, dropped: true } if *peer == evil_peer && reason.starts_with("throttled"))
    })
    .await;
    assert!(throttled.is_some(), "the peer was not throttled");
    answers(&nh).await;
    // The genuine post got in; none of the puppets did.
    let texts: Vec<String> = h
        .page(ch, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    assert_eq!(texts, ["mallory's one real post"]);
    assert_eq!(
        h.vector(ch).await.unwrap().0.len(),
        2,
        "two feeds: the honest one and mallory's"
    );
    h.close().await.unwrap();
    e.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_claiming_more_than_is_served_ends_the_session() {
    refuses_forgery(Forgery::ClaimsMore, 0).await;
}

// ---------------------------------------------------------------------------
// A raw libp2p client speaking the sync protocol, or bytes that only look like it.

#[derive(Debug)]
enum Frame {
    /// Exactly these bytes, length prefix included.
    Raw(Vec<u8>),
    /// A well-formed request.
    Req(Request),
}

#[derive(Clone, Copy, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("this client serves nothing"))
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        proto::Codec.read_response(p, io).await
    }

    async fn write_request<T>(&mut self, p: &StreamProtocol, io: &mut T, frame: Frame) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match frame {
            Frame::Raw(bytes) => {
                io.write_all(&bytes).await?;
                io.flush().await
            }
            Frame::Req(r) => proto::Codec.write_request(p, io, proto::Framed::Valid(r)).await,
        }
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("this client serves nothing"))
    }
}

type Reply = oneshot::Sender<Result<Response, String>>;

/// The raw client's behaviours: requests, and raw streams (the live stream).
#[derive(libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct RawBehaviour {
    rr: request_response::Behaviour<RawCodec>,
    stream: libp2p_stream::Behaviour,
}

/// A connected raw client: send frames, see whether the connection lives.
struct RawPeer {
    id: PeerId,
    /// The node's peer id.
    node: PeerId,
    tx: mpsc::Sender<(Frame, Reply)>,
    open: watch::Receiver<bool>,
    /// Opens live streams to the node.
    control: libp2p_stream::Control,
}

impl RawPeer {
    async fn connect(target: &Multiaddr) -> RawPeer {
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| RawBehaviour {
                rr: request_response::Behaviour::with_codec(
                    RawCodec,
                    [(PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(90))
                        .with_max_concurrent_streams(1024),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        let peer = peer_of(target).expect("a /p2p/ address");
        swarm.dial(target.clone()).unwrap();
        // Connected before any request: a request to a peer not connected
        // would have the behaviour dial it by id, with no address.
        tokio::time::timeout(PATIENCE, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => return,
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("raw dial failed: {error}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("raw client connects");
        let id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let (tx, mut rx) = mpsc::channel::<(Frame, Reply)>(1024);
        let (open_tx, open) = watch::channel(true);
        tokio::spawn(async move {
            let mut pending: HashMap<request_response::OutboundRequestId, Reply> = HashMap::new();
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::Behaviour(RawBehaviourEvent::Rr(request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        })) => {
                            if let Some(r) = pending.remove(&request_id) {
                                let _ = r.send(Ok(response));
                            }
                        }
                        SwarmEvent::Behaviour(RawBehaviourEvent::Rr(request_response::Event::OutboundFailure {
                            request_id,
                            error,
                            ..
                        })) => {
                            if let Some(r) = pending.remove(&request_id) {
                                let _ = r.send(Err(error.to_string()));
                            }
                        }
                        SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                            let _ = open_tx.send(false);
                        }
                        _ => {}
                    },
                    cmd = rx.recv() => match cmd {
                        Some((frame, reply)) => {
                            let id = swarm.behaviour_mut().rr.send_request(&peer, frame);
                            pending.insert(id, reply);
                        }
                        None => return,
                    },
                }
            }
        });
        RawPeer {
            id,
            node: peer,
            tx,
            open,
            control,
        }
    }

    /// Open a live stream to the node.
    async fn live(&self) -> libp2p::Stream {
        self.control
            .clone()
            .open_stream(self.node, hearth_sync::live::LIVE_PROTOCOL)
            .await
            .expect("the node takes live streams")
    }

    /// Send a frame; the answer arrives on the receiver.
    async fn send(&self, frame: Frame) -> oneshot::Receiver<Result<Response, String>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((frame, tx)).await.expect("raw client task runs");
        rx
    }

    async fn request(&self, frame: Frame) -> Result<Response, String> {
        let rx = self.send(frame).await;
        match tokio::time::timeout(PATIENCE * 2, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("raw client stopped".into()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    /// Wait until the node closes the connection.
    async fn dropped(&mut self) -> bool {
        tokio::time::timeout(PATIENCE, self.open.wait_for(|open| !*open))
            .await
            .is_ok()
    }
}

fn prefixed(len: u32, body: &[u8]) -> Vec<u8> {
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A node holding a channel with a few messages, and an honest store (not yet
/// a node) that has joined it and written more.
struct Fixture {
    _dirs: Vec<tempfile::TempDir>,
    store: Store,
    peer_store: Store,
    channel: ChannelId,
    wire: WireId,
    node: NodeHandle,
    addr: Multiaddr,
}

impl Fixture {
    /// Proofs of the honest member's channel and device for a Hello from
    /// `raw` to the node, its chain in it or not.
    async fn member_auth(&self, raw: PeerId, chain: bool) -> hearth_sync::reconcile::Auth {
        let keys = self.peer_store.access_keys().await.unwrap();
        let auth = hearth_sync::reconcile::Auth::new(keys, raw.to_bytes(), self.node.peer_id().to_bytes());
        let who = self
            .peer_store
            .sync_who(
                hearth_core::peer::WhoRole::Hello,
                auth.nonce,
                auth.ends.clone(),
                Vec::new(),
                chain,
            )
            .await
            .unwrap();
        auth.proving(who, chain)
    }

    /// A raw client that proves membership of the channel (it holds the
    /// access key an honest member holds) with a valid Hello.
    async fn member_raw(&self) -> RawPeer {
        let raw = RawPeer::connect(&self.addr).await;
        // It says which device it is, with its chain (sync protocol 5).
        let auth = self.member_auth(raw.id, true).await;
        let local = self.peer_store.vectors().await.unwrap();
        let hello = hearth_sync::reconcile::hello(&local, &auth, false);
        match raw.request(Frame::Req(hello)).await {
            Ok(Response::Hello { matched, .. }) => assert_eq!(matched.as_slice(), [1], "the node proves its channel"),
            other => panic!("{other:?}"),
        }
        raw
    }
}

async fn fixture() -> Fixture {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let store = Store::create(dirs[0].path(), &pass(), "honest", config())
        .await
        .unwrap();
    let channel = store.create_channel("general").await.unwrap();
    for i in 0..20 {
        store.post(channel, &format!("honest {i}")).await.unwrap();
    }
    let keys = store.channel_keys(channel).await.unwrap();
    let peer_store = Store::create(dirs[1].path(), &pass(), "carol", config()).await.unwrap();
    peer_store.join_channel(keys.clone()).await.unwrap();
    for i in 0..5 {
        peer_store.post(channel, &format!("carol {i}")).await.unwrap();
    }
    let (node, addr) = node(&store).await;
    Fixture {
        _dirs: dirs,
        store,
        peer_store,
        channel,
        wire: keys.wire(),
        node,
        addr,
    }
}

impl Fixture {
    /// The honest peer connects; both converge.
    async fn honest_peer_converges(&self) -> NodeHandle {
        let (n, _) = node(&self.peer_store).await;
        n.dial(self.addr.clone()).await.unwrap();
        assert!(
            converged(&[&self.store, &self.peer_store], self.channel, PATIENCE).await,
            "the honest peer did not converge"
        );
        n
    }

    async fn finish(self, others: Vec<NodeHandle>) {
        for s in [&self.store, &self.peer_store] {
            assert!(s.verify().await.unwrap().is_clean());
        }
        self.node.stop().await.unwrap();
        for n in others {
            n.stop().await.unwrap();
        }
        self.store.close().await.unwrap();
        self.peer_store.close().await.unwrap();
    }
}

/// Proofs of a raw peer with no key.
fn stranger_auth() -> hearth_sync::reconcile::Auth {
    hearth_sync::reconcile::Auth::new([], Vec::new(), Vec::new())
}

/// Frames no honest peer sends, each with what it is.
fn malformed_frames(wire: WireId) -> Vec<(&'static str, Vec<u8>)> {
    // A Push whose entry count claims 2^32 - 1 entries, with none behind it.
    let mut lying = vec![2u8];
    lying.extend_from_slice(&wire.0);
    lying.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
    // A valid request with trailing bytes (not canonical).
    let mut trailing = hearth_sync::reconcile::hello(&[] as &[(WireId, Vector)], &stranger_auth(), false).encode();
    trailing.push(0);
    vec![
        // A length one past the cap, then junk: refused from the prefix alone.
        ("oversized", prefixed(MAX_REQUEST as u32 + 1, &[0x5A; 64 * 1024])),
        // A 4 GiB claim: were it allocated, this process would not survive it.
        ("4 GiB", prefixed(u32::MAX, &[0; 1024])),
        // Within the cap, but no request.
        ("garbage", prefixed(32, &[0xFF; 32])),
        ("lying count", prefixed(lying.len() as u32, &lying)),
        ("trailing bytes", prefixed(trailing.len() as u32, &trailing)),
    ]
}

/// A malformed frame from a fresh raw client is never answered; the node keeps
/// its data and answers its handle. Returns the client.
async fn refuses_frame(f: &Fixture, what: &str, frame: Vec<u8>) -> RawPeer {
    let before = snapshot(&f.store, f.channel).await;
    let raw = RawPeer::connect(&f.addr).await;
    let answer = raw.request(Frame::Raw(frame)).await;
    assert!(answer.is_err(), "{what}: answered {answer:?}");
    answers(&f.node).await;
    assert_eq!(snapshot(&f.store, f.channel).await, before, "{what}");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_frames_are_refused_and_the_node_stays_up() {
    let f = fixture().await;
    for (what, frame) in malformed_frames(f.wire) {
        refuses_frame(&f, what, frame).await;
    }
    // A prefix promising more than is ever sent: the stream just ends; the
    // node must not hang on it either.
    refuses_frame(&f, "short", prefixed(1000, &[0; 10])).await;

    // An unknown protocol version is refused politely, not dropped.
    let raw = RawPeer::connect(&f.addr).await;
    let answer = raw
        .request(Frame::Req(Request::Hello {
            version: 99,
            nonce: [0; 16],
            summary: Vec::new(),
            relay: false,
            who: None,
            certs: Vec::new(),
            want_chain: false,
        }))
        .await;
    assert!(matches!(answer, Ok(Response::Refused { .. })), "{answer:?}");
    assert!(connected(&f.node, raw.id).await);

    let n = f.honest_peer_converges().await;
    f.finish(vec![n]).await;
}

/// What `NodeEvent::Rejected` promises for a malformed frame: reported, and
/// the sender dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_reported_and_its_sender_dropped() {
    let f = fixture().await;
    for (what, frame) in malformed_frames(f.wire) {
        let mut events = f.node.subscribe();
        let mut raw = refuses_frame(&f, what, frame).await;
        let rejected = wait_for(
            &mut events,
            PATIENCE,
            |e| matches!(e, NodeEvent::Rejected { peer, .. } if *peer == raw.id),
        )
        .await;
        assert!(
            matches!(rejected, Some(NodeEvent::Rejected { dropped: true, .. })),
            "{what}: {rejected:?}"
        );
        assert!(raw.dropped().await, "{what}: the connection stays open");
    }
    let n = f.honest_peer_converges().await;
    f.finish(vec![n]).await;
}

/// Live pushes are pipelined: each goes out on the live stream without
/// waiting for the answer to the one before, so that a peer slow to take
/// them (here 400 ms an ingest) does not hold back what follows; each is
/// acknowledged once the peer took it, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pushes_go_out_without_waiting_for_the_answers_before() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let h = Store::create(dirs[0].path(), &pass(), "honest", config())
        .await
        .unwrap();
    let ch = h.create_channel("general").await.unwrap();
    h.post(ch, "first").await.unwrap();
    let keys = h.channel_keys(ch).await.unwrap();
    let s = Store::create(dirs[1].path(), &pass(), "slow", config()).await.unwrap();
    s.join_channel(keys.clone()).await.unwrap();
    let slow = Evil {
        store: s.clone(),
        forgery: Forgery::Slow,
        at: 0,
        other: keys.wire(),
        ingested: Default::default(),
    };
    let (ns, addr_s) = start_node(slow, &s.node_secret().await.unwrap()).await;
    let (nh, _) = node(&h).await;
    nh.dial(addr_s).await.unwrap();
    assert!(converged(&[&h, &s], ch, PATIENCE).await);
    // Settled: both sides' sessions and receipts done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut events = nh.subscribe();
    const POSTS: u64 = 4;
    for i in 0..POSTS {
        h.post(ch, &format!("live {i}")).await.unwrap();
        // One entry each: a read closes the writer's group.
        h.page(ch, None, 1).await.unwrap();
    }
    // The worker reports every post pushed before the slow peer has
    // acknowledged the first (one push at a time, each waiting for its
    // answer, would take 400 ms between them).
    let (mut pushed, mut first_ack) = (0u64, None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while first_ack.is_none() || pushed < POSTS {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            other => panic!("pushed {pushed}, acknowledged: {first_ack:?}; then {other:?}"),
        };
        match ev {
            NodeEvent::Synced { pushed: n, .. } => pushed += n,
            NodeEvent::Acknowledged { .. } if first_ack.is_none() => first_ack = Some(pushed),
            _ => {}
        }
    }
    assert_eq!(first_ack, Some(POSTS), "pushes waited for the answers before them");
    assert!(converged(&[&h, &s], ch, PATIENCE).await);
    assert_eq!(s.page(ch, None, 10).await.unwrap().len() as u64, POSTS + 1);
    nh.stop().await.unwrap();
    ns.stop().await.unwrap();
}

/// A member's live stream ([`hearth_sync::live`]): a feed's first entry
/// whole, the rest lean, each frame answered `Took` in one byte, and every
/// entry stored as its author wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_carries_a_feed_whole_then_lean_and_takes_it_all() {
    use hearth_sync::live::{FeedTable, LiveAck, decode_ack, encode_push, read_frame, write_frame};
    let f = fixture().await;
    // More entries of Carol's feed, one each (a read closes a writer's group).
    for i in 0..4 {
        f.peer_store.post(f.channel, &format!("carol live {i}")).await.unwrap();
        f.peer_store.page(f.channel, None, 1).await.unwrap();
    }
    let raw = f.member_raw().await;
    let mine = all_entries(&f.store, f.wire).await;
    let theirs: Vec<ByteBuf> = all_entries(&f.peer_store, f.wire)
        .await
        .into_iter()
        .filter(|e| !mine.contains(e))
        .map(ByteBuf::from)
        .collect();
    assert!(theirs.len() >= 5, "{} entries to push", theirs.len());
    let mut stream = raw.live().await;
    let mut table = FeedTable::default();
    let mut sent = 0;
    // Each frame waits for its answer: a `Took` for it alone.
    for part in [&theirs[..1], &theirs[1..]] {
        let frame = encode_push(&mut table, part, true);
        sent += frame.len();
        write_frame(&mut stream, &frame).await.unwrap();
        let ack = tokio::time::timeout(PATIENCE, read_frame(&mut stream, proto::MAX_RESPONSE))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(ack, [0, 1], "{:?}", decode_ack(&ack));
        assert_eq!(decode_ack(&ack).unwrap(), LiveAck::Took(1));
    }
    // Pipelined frames (the pusher does not wait): their `Took`s are held
    // back a moment and said for several at once, and a frame that waits
    // has them said with its own.
    let more: Vec<ByteBuf> = {
        for i in 0..3 {
            f.peer_store.post(f.channel, &format!("carol more {i}")).await.unwrap();
            f.peer_store.page(f.channel, None, 1).await.unwrap();
        }
        let held = all_entries(&f.store, f.wire).await;
        all_entries(&f.peer_store, f.wire)
            .await
            .into_iter()
            .filter(|e| !held.contains(e))
            .map(ByteBuf::from)
            .collect()
    };
    assert_eq!(more.len(), 3);
    for (i, e) in more.iter().enumerate() {
        let frame = encode_push(&mut table, std::slice::from_ref(e), i == 2);
        write_frame(&mut stream, &frame).await.unwrap();
    }
    let mut taken = 0;
    while taken < 3 {
        let ack = tokio::time::timeout(PATIENCE, read_frame(&mut stream, proto::MAX_RESPONSE))
            .await
            .expect("an answer in time")
            .unwrap();
        match decode_ack(&ack).unwrap() {
            LiveAck::Took(n) => taken += n,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(taken, 3, "one Took for each frame, no more");
    let stored = all_entries(&f.store, f.wire).await;
    assert!(more.iter().all(|e| stored.contains(&e.to_vec())));
    // The lean entries left out about 115 bytes each.
    let whole: usize = theirs.iter().map(|e| e.len()).sum();
    assert!(sent + 100 * (theirs.len() - 1) < whole, "{sent} bytes sent for {whole}");
    let stored = all_entries(&f.store, f.wire).await;
    assert!(
        theirs.iter().all(|e| stored.contains(&e.to_vec())),
        "every entry stored as written"
    );
    assert!(connected(&f.node, raw.id).await);
    let n = f.honest_peer_converges().await;
    f.finish(vec![n]).await;
}

/// Live frames no honest peer sends: reported, the sender dropped, nothing
/// stored, and the node keeps serving honest peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_live_frame_is_reported_and_its_sender_dropped() {
    use hearth_sync::live::{FeedTable, LiveEntry, LivePush, encode_push};
    let f = fixture().await;
    let theirs: Vec<ByteBuf> = all_entries(&f.peer_store, f.wire)
        .await
        .into_iter()
        .map(ByteBuf::from)
        .collect();
    let lean_first = {
        let mut table = FeedTable::default();
        let _ = encode_push(&mut table, &theirs[..1], false);
        encode_push(&mut table, &theirs[1..2], false)
    };
    let varint = |n: usize| hearth_core::write_leb128(n as u64);
    let framed = |body: &[u8]| [varint(body.len()), body.to_vec()].concat();
    // A lone lean entry's short frame (kind 1, feed 3), and the same in a
    // push of two entries.
    let unknown_feed = [&[1u8, 3][..], &[5; 40][..]].concat();
    let unknown_feed_in_two = [
        &[0u8][..],
        &postcard::to_stdvec(&LivePush {
            entries: vec![
                LiveEntry::Whole(theirs[0].clone()),
                LiveEntry::Next {
                    feed: 3,
                    lean: ByteBuf::from(vec![5; 40]),
                },
            ],
            wait: false,
        })
        .unwrap(),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", framed(&[0xff; 32])),
        ("a lean entry of a feed never sent", framed(&lean_first)),
        ("a feed index out of the table", framed(&unknown_feed)),
        (
            "a feed index out of the table, second of two",
            framed(&unknown_feed_in_two),
        ),
        (
            "over the cap",
            [varint(proto::MAX_REQUEST + 1), vec![0x5a; 4096]].concat(),
        ),
        ("a length not in its shortest form", vec![0x85, 0x00, 1, 2, 3, 4, 5]),
    ];
    for (what, bytes) in cases {
        let before = snapshot(&f.store, f.channel).await;
        let mut events = f.node.subscribe();
        let mut raw = f.member_raw().await;
        let mut stream = raw.live().await;
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        let rejected = wait_for(
            &mut events,
            PATIENCE,
            |e| matches!(e, NodeEvent::Rejected { peer, .. } if *peer == raw.id),
        )
        .await;
        assert!(
            matches!(rejected, Some(NodeEvent::Rejected { dropped: true, .. })),
            "{what}: {rejected:?}"
        );
        assert!(raw.dropped().await, "{what}: the connection stays open");
        answers(&f.node).await;
        assert_eq!(snapshot(&f.store, f.channel).await, before, "{what}");
    }
    let n = f.honest_peer_converges().await;
    f.finish(vec![n]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_streams_is_answered_or_refused_and_honest_peers_still_sync() {
    const CLIENTS: usize = 4;
    const EACH: usize = 125;
    let f = fixture().await;
    let honest = f.honest_peer_converges().await;
    let mut events = f.node.subscribe();
    let local = f.store.vectors().await.unwrap();
    let mut raws = Vec::new();
    let mut auths = Vec::new();
    for _ in 0..CLIENTS {
        let raw = f.member_raw().await;
        // Each says who it is (the chain went with `member_raw`'s Hello).
        auths.push(f.member_auth(raw.id, false).await);
        raws.push(raw);
    }
    let started = Instant::now();
    let mut answers_rx = Vec::new();
    for (c, raw) in raws.iter().enumerate() {
        for i in 0..EACH {
            // Mostly Hellos; every fifth a Fetch of the whole channel, which
            // holds a serving slot longer.
            let req = if i % 5 == 0 {
                Request::Fetch {
                    wire: f.wire,
                    have: Vector::default(),
                    max_bytes: proto::BATCH_BYTES as u32,
                }
            } else if (c + i) % 2 == 0 {
                hearth_sync::reconcile::hello(&local, &auths[c], false)
            } else {
                hearth_sync::reconcile::hello(&[] as &[(WireId, Vector)], &stranger_auth(), false)
            };
            answers_rx.push(raw.send(Frame::Req(req)).await);
        }
    }
    // While the flood is served: the node answers its handle, and an honest
    // peer's new messages arrive.
    answers(&f.node).await;
    for i in 0..10 {
        f.peer_store
            .post(f.channel, &format!("during the flood {i}"))
            .await
            .unwrap();
    }
    assert!(
        converged(&[&f.store, &f.peer_store], f.channel, PATIENCE * 2).await,
        "an honest peer starved by the flood"
    );
    let (mut answered, mut busy, mut failed) = (0, 0, 0);
    for rx in answers_rx {
        match tokio::time::timeout(PATIENCE * 3, rx)
            .await
            .expect("every request ends")
            .unwrap()
        {
            Ok(Response::Hello { .. } | Response::Entries { .. }) => answered += 1,
            Ok(Response::Refused { reason }) if reason.starts_with("busy") => busy += 1,
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(_) => failed += 1,
        }
    }
    eprintln!(
        "flood: {answered} answered, {busy} busy, {failed} streams dropped, in {:?}",
        started.elapsed()
    );
    assert_eq!(answered + busy + failed, CLIENTS * EACH);
    assert!(answered > 0);
    // Capacity limits are not misbehaviour: no flooder was reported as forging.
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, NodeEvent::Rejected { dropped: true, .. }), "{e:?}");
    }
    answers(&f.node).await;
    f.peer_store.post(f.channel, "after the flood").await.unwrap();
    assert!(converged(&[&f.store, &f.peer_store], f.channel, PATIENCE).await);
    f.finish(vec![honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_duplicated_entries_are_harmless() {
    let f = fixture().await;
    let mut events = f.node.subscribe();
    let raw = f.member_raw().await;
    let push = |entries: &[Vec<u8>]| {
        Frame::Req(Request::Push {
            wire: f.wire,
            entries: entries.iter().cloned().map(ByteBuf::from).collect(),
        })
    };
    let ack = |r: Result<Response, String>| match r {
        Ok(Response::Ack {
            accepted,
            rejected,
            reason,
            vector,
        }) => {
            assert_eq!(rejected, 0, "{reason:?}");
            (accepted, vector)
        }
        other => panic!("{other:?}"),
    };

    // The node's own entries, replayed to it: all duplicates.
    let own = all_entries(&f.store, f.wire).await;
    let before = snapshot(&f.store, f.channel).await;
    let vector = f.store.vector(f.channel).await.unwrap();
    assert_eq!(ack(raw.request(push(&own)).await), (0, vector.clone()));

    // New genuine entries, each twice within one batch: stored once.
    let theirs = all_entries(&f.peer_store, f.wire).await;
    let doubled: Vec<Vec<u8>> = theirs.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    let (accepted, _) = ack(raw.request(push(&doubled)).await);
    assert_eq!(accepted as usize, theirs.len());
    // Replayed again, reversed, and as a suffix alone: nothing new.
    let reversed: Vec<Vec<u8>> = theirs.iter().rev().cloned().collect();
    for batch in [&theirs[..], &reversed[..], &theirs[theirs.len() - 1..]] {
        let (accepted, vector) = ack(raw.request(push(batch)).await);
        assert_eq!(accepted, 0);
        // The Ack names the feeds pushed only (protocol 12), at their heads.
        let pushed: BTreeSet<_> = batch
            .iter()
            .map(|e| Envelope::decode(e).unwrap().header.device)
            .collect();
        assert_eq!(vector.0.keys().copied().collect::<BTreeSet<_>>(), pushed);
        let held = f.store.vector(f.channel).await.unwrap();
        assert!(vector.0.iter().all(|(d, p)| held.0.get(d) == Some(p)));
    }
    // The same new batch pushed 20 times at once: taken exactly once.
    for i in 0..5 {
        f.peer_store.post(f.channel, &format!("carol again {i}")).await.unwrap();
    }
    let have = f.store.vector(f.channel).await.unwrap();
    let fresh = f
        .peer_store
        .entries_after(f.wire, have, usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    assert!(!fresh.is_empty());
    let mut pending = Vec::new();
    for _ in 0..20 {
        pending.push(raw.send(push(&fresh)).await);
    }
    let mut total = 0;
    for rx in pending {
        let r = tokio::time::timeout(PATIENCE, rx).await.unwrap().unwrap();
        total += ack(r).0;
    }
    assert_eq!(total as usize, fresh.len());

    // Nothing lost, nothing refused, nobody dropped.
    let after = snapshot(&f.store, f.channel).await;
    assert!(after.len() > before.len());
    let page = f.store.page(f.channel, None, 10_000).await.unwrap();
    for i in 0..20 {
        assert!(page.iter().any(|m| m.text.as_deref() == Some(&format!("honest {i}"))));
    }
    for i in 0..5 {
        assert!(
            page.iter()
                .any(|m| m.text.as_deref() == Some(&format!("carol again {i}")))
        );
    }
    assert!(connected(&f.node, raw.id).await);
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, NodeEvent::Rejected { .. }), "{e:?}");
    }
    let n = f.honest_peer_converges().await;
    f.finish(vec![n]).await;
}

/// A raw client that knows a channel's wire id (as a relay does, or a member
/// removed from it) but not its access key: its Hello is answered with no
/// channel, and it can neither fetch nor push the channel's entries. Not a
/// ban: it broke no rule of the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_access_key_gets_nothing_and_gives_nothing() {
    let f = fixture().await;
    let mut events = f.node.subscribe();
    let raw = RawPeer::connect(&f.addr).await;
    let before = snapshot(&f.store, f.channel).await;
    // A Hello naming the channel as protocol 1 did (the wire id's first 8 bytes),
    // and one with a tag made under a wrong key.
    let wrong = hearth_sync::reconcile::Auth::new(
        [(f.wire, hearth_core::SecretKey::from_bytes([7; 32]))],
        raw.id.to_bytes(),
        f.node.peer_id().to_bytes(),
    );
    let local = f.store.vectors().await.unwrap();
    let mut guessed = hearth_sync::reconcile::hello(&local, &wrong, false);
    if let Request::Hello { summary, .. } = &mut guessed {
        summary.push(proto::ChannelDigest {
            tag: f.wire.0[..8].try_into().unwrap(),
            digest: [0; 6],
        });
    }
    match raw.request(Frame::Req(guessed)).await {
        Ok(Response::Hello {
            matched, proof, differ, ..
        }) => {
            assert_eq!((matched.as_slice(), proof, differ.len()), (&[0u8][..], [0; 16], 0));
        }
        other => panic!("{other:?}"),
    }
    let fetch = raw
        .request(Frame::Req(Request::Fetch {
            wire: f.wire,
            have: Vector::default(),
            max_bytes: proto::BATCH_BYTES as u32,
        }))
        .await;
    assert!(
        matches!(&fetch, Ok(Response::Refused { reason }) if reason == "unknown channel"),
        "{fetch:?}"
    );
    let theirs = all_entries(&f.peer_store, f.wire).await;
    let push = raw
        .request(Frame::Req(Request::Push {
            wire: f.wire,
            entries: theirs.into_iter().map(ByteBuf::from).collect(),
        }))
        .await;
    assert!(
        matches!(&push, Ok(Response::Refused { reason }) if reason == "unknown channel"),
        "{push:?}"
    );
    assert_eq!(snapshot(&f.store, f.channel).await, before, "nothing pushed was taken");
    assert!(connected(&f.node, raw.id).await);
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, NodeEvent::Rejected { .. }), "{e:?}");
    }
    let n = f.honest_peer_converges().await;
    f.finish(vec![n]).await;
}

/// A pushed batch that starts past the receiver's head is a gap, not forgery:
/// the entries are genuine. The rest of that feed in the batch ("follows a
/// refused entry") must not turn it into forgery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_gap_is_refused_without_dropping_the_peer() {
    let f = fixture().await;
    let mut events = f.node.subscribe();
    let raw = f.member_raw().await;
    let theirs = all_entries(&f.peer_store, f.wire).await;
    let gap = Frame::Req(Request::Push {
        wire: f.wire,
        entries: theirs[1..].iter().cloned().map(ByteBuf::from).collect(),
    });
    let answer = raw.request(gap).await;
    assert!(matches!(answer, Ok(Response::Ack { accepted: 0, .. })), "{answer:?}");
    let rejected = wait_for(
        &mut events,
        PATIENCE,
        |e| matches!(e, NodeEvent::Rejected { peer, .. } if *peer == raw.id),
    )
    .await;
    assert!(
        matches!(rejected, Some(NodeEvent::Rejected { dropped: false, .. })),
        "{rejected:?}"
    );
    assert!(connected(&f.node, raw.id).await);
    f.finish(Vec::new()).await;
}

/// A peer of an older protocol (`protocol`, e.g. `/hearth/sync/1`),
/// listening: it answers nothing (it negotiates nothing with this one
/// anyway).
async fn old_protocol_peer(protocol: &'static str) -> (PeerId, Multiaddr) {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.listen_on(LISTEN.parse().unwrap()).unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let id = *swarm.local_peer_id();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (id, addr.with(libp2p::multiaddr::Protocol::P2p(id)))
}

/// A peer that speaks only an older version of the sync protocol (1, or 2:
/// before invites ended) is reported as incompatible (in events and in
/// status), and neither banned nor told anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_an_older_protocol_is_reported_incompatible_not_banned() {
    for protocol in hearth_sync::proto::OLD_PROTOCOLS {
        a_peer_of_this_older_protocol_is_reported_incompatible(protocol).await;
    }
}

async fn a_peer_of_this_older_protocol_is_reported_incompatible(protocol: &'static str) {
    let f = fixture().await;
    let mut events = f.node.subscribe();
    let (old, addr) = old_protocol_peer(protocol).await;
    f.node.dial(addr).await.unwrap();
    let seen = wait_for(
        &mut events,
        PATIENCE,
        |e| matches!(e, NodeEvent::Incompatible { peer, .. } if *peer == old),
    )
    .await;
    assert!(seen.is_some(), "no incompatible event for a peer of {protocol}");
    let status = f.node.status().await.unwrap();
    let s = status.iter().find(|s| s.peer == old).expect("the peer is known");
    assert!(s.incompatible && s.connected, "{s:?}");
    // The session the dial started failed on negotiation, not on the peer's data.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(&e, NodeEvent::Rejected { peer, .. } if *peer == old), "{e:?}");
    }
    let n = f.honest_peer_converges().await;
    f.finish(vec![n]).await;
}

/// A live entry travels once: the member it was pushed to does not push it
/// back (its store's notice of the entry raced the answer that told its
/// node the sender holds it, and bounced about every other live message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_entry_is_not_pushed_back_to_its_sender() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Store::create(dirs[0].path(), &pass(), "a", config()).await.unwrap();
    let b = Store::create(dirs[1].path(), &pass(), "b", config()).await.unwrap();
    let ch = a.create_channel("general").await.unwrap();
    let wire = a.channel_keys(ch).await.unwrap().wire();
    b.join_channel(a.channel_keys(ch).await.unwrap()).await.unwrap();
    // `a` as a plain member whose node counts what is pushed to it.
    let counted = Evil {
        store: a.clone(),
        forgery: Forgery::Honest,
        at: 0,
        other: wire,
        ingested: Default::default(),
    };
    let me_a = a.device_cert().await.unwrap().body.device;
    let (na, _) = start_node(counted.clone(), &a.node_secret().await.unwrap()).await;
    let (nb, addr_b) = node(&b).await;
    na.dial(addr_b).await.unwrap();
    assert!(converged(&[&a, &b], ch, PATIENCE).await);
    counted.ingested.lock().unwrap().clear();
    for i in 0..30 {
        a.post(ch, &format!("live {i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(converged(&[&a, &b], ch, PATIENCE).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = counted.ingested.lock().unwrap().iter().filter(|d| **d == me_a).count();
    assert_eq!(back, 0, "b pushed {back} of a's own entries back to it");
    for n in [na, nb] {
        n.stop().await.unwrap();
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}
