//! `hearth bench sync`: Hearth's sync over libp2p side by side with the naive
//! baseline (one automerge document per channel, automerge's own sync protocol
//! over a plain TCP stream with length-prefixed frames), in one run, over
//! loopback only (mDNS stays off).
//!
//! Measured: catch-up of a fresh member that missed N messages (time and rate
//! from dial to every message present); bytes on the wire per message against
//! the sealed envelopes; remote apply (ingest) rate; live apply of one remote
//! message into a replica holding the whole history; reconnect of two replicas
//! already in sync over many channels (round trips and bytes, the libp2p
//! handshake apart); live delivery latency between two connected replicas.
//!
//! Bytes are counted by a TCP proxy on 127.0.0.1 that both sides, Hearth and
//! the baseline, go through: the dialer connects to the proxy, the proxy to
//! the listener, and every byte copied is counted per direction.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use automerge::sync::{self as am, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjType, ROOT, ReadDoc, ScalarValue};
use hearth::core::{Vector, WireId};
use hearth::store::StoreEvent;
use hearth::sync::proto::{BATCH_BYTES, BATCH_ENTRIES};
use hearth::sync::{Multiaddr, NodeConfig, NodeEvent, PeerId};
use hearth::{ChannelId, Config, Hearth, KdfParams, MessageId, Passphrase, SyncHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sqlite::bench_text;
use super::{hearth_stream, percentile_us};

/// Options of `hearth bench sync`.
#[derive(clap::Args, Debug, Clone)]
pub struct SyncArgs {
    /// Messages a fresh member has missed (catch-up test).
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Also run the catch-up with 100,000 messages.
    #[arg(long)]
    pub full: bool,
    /// Channels both replicas share in the reconnect test.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Messages per channel in the reconnect test.
    #[arg(long, default_value_t = 20)]
    pub per_channel: usize,
    /// Live delivery samples.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    pub text_len: usize,
    /// Working directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Messages per epoch document in Hearth's stores (default: the store's).
    #[arg(long)]
    pub epoch_messages: Option<usize>,
    /// Apply every received entry on arrival (`Config::lazy_epochs` off), to
    /// compare with deferred epochs.
    #[arg(long)]
    pub eager: bool,
}

const PASS: &str = "bench passphrase";
/// Pause between live samples, so each one is a lone message.
const LIVE_GAP: Duration = Duration::from_millis(5);
/// How long any one wait may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(600);

/// Where the bench's stores go, and how they are configured.
struct Root {
    dir: PathBuf,
    config: Config,
}

async fn create(root: &Root, name: &str) -> Result<Hearth> {
    let config = root.config.clone();
    Ok(Hearth::create(root.dir.join(name), &Passphrase::new(PASS), name, config).await?)
}

// ---------------------------------------------------------------- transport

/// Bytes copied by a [`Proxy`]: `up` from the dialer to the listener.
#[derive(Clone, Copy, Debug, Default)]
struct Bytes {
    up: u64,
    down: u64,
    /// Connections the proxy accepted.
    conns: u64,
}

impl Bytes {
    fn total(self) -> u64 {
        self.up + self.down
    }

    fn since(self, before: Bytes) -> Bytes {
        Bytes {
            up: self.up - before.up,
            down: self.down - before.down,
            conns: self.conns - before.conns,
        }
    }

    fn json(self) -> Value {
        json!({"up": self.up, "down": self.down, "total": self.total(), "connections": self.conns})
    }
}

/// A counting TCP proxy on loopback in front of one upstream address.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    conns: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let conns = Arc::new(AtomicU64::new(0));
        let (u, d, c) = (up.clone(), down.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                // Small frames must not wait for Nagle: both ends set it too.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, u.clone()));
                tokio::spawn(pump(sr, cw, d.clone()));
            }
        });
        Ok(Proxy {
            addr,
            up,
            down,
            conns,
            accept,
        })
    }

    fn bytes(&self) -> Bytes {
        Bytes {
            up: self.up.load(Ordering::SeqCst),
            down: self.down.load(Ordering::SeqCst),
            conns: self.conns.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Open connections end when their ends close; only stop accepting.
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The TCP socket address of a node's `/ip4/../tcp/../p2p/..` listen address.
fn socket_of(addr: &Multiaddr) -> Result<SocketAddr> {
    let s = addr.to_string();
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", ip, "tcp", port, ..] => Ok(format!("{ip}:{port}").parse()?),
        _ => bail!("not a TCP address: {s}"),
    }
}

/// The address of `peer` behind a proxy.
fn via(proxy: &Proxy, peer: PeerId) -> Result<Multiaddr> {
    Ok(format!("/ip4/{}/tcp/{}/p2p/{peer}", proxy.addr.ip(), proxy.addr.port()).parse()?)
}

/// Start a loopback-only node (mDNS off, as by default) and wait for its address.
async fn start_node(h: &Hearth) -> Result<(SyncHandle, SocketAddr)> {
    let node = h
        .start_sync(NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..NodeConfig::default()
        })
        .await?;
    for _ in 0..500 {
        if let Some(a) = node.listen_addrs().await?.first() {
            let sock = socket_of(a)?;
            return Ok((node, sock));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the node never listened")
}

/// Wait for the next `Synced` event of a node.
async fn next_synced(ev: &mut tokio::sync::broadcast::Receiver<NodeEvent>, within: Duration) -> Result<NodeEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Err(_) => bail!("no Synced event within {within:?}"),
            Ok(Ok(e @ NodeEvent::Synced { .. })) => {
                if std::env::var_os("HEARTH_BENCH_TRACE").is_some() {
                    eprintln!("{e:?}");
                }
                return Ok(e);
            }
            Ok(Ok(e)) if std::env::var_os("HEARTH_BENCH_TRACE").is_some() => eprintln!("{e:?}"),
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => bail!("node events closed: {e}"),
        }
    }
}

// ---------------------------------------------------------------- Hearth side

/// What catching up cost Hearth.
#[derive(Debug, Default)]
struct HearthCatchup {
    build_secs: f64,
    secs: f64,
    round_trips: u32,
    received: u64,
    bytes: Bytes,
    entries: usize,
    envelope_bytes: u64,
    apply_secs: f64,
    /// The first page read after the last message arrived (in `secs`).
    first_page_secs: f64,
    /// Sorted times of single-entry live applies into a member holding the history.
    live_apply: Vec<Duration>,
}

/// Live delivery figures, microseconds.
#[derive(Debug, Default)]
struct Live {
    p50_us: f64,
    p99_us: f64,
    /// Hearth: the writer's durable post alone; baseline: sync to quiescence.
    other_p50_us: f64,
    other_p99_us: f64,
    bytes_per_message: f64,
    /// The bytes of the run each way (`up`: from the dialer, the receiver).
    bytes: Bytes,
}

fn live_stats(deliver: &mut [Duration], other: &mut [Duration], bytes: Bytes) -> Live {
    deliver.sort_unstable();
    other.sort_unstable();
    Live {
        p50_us: percentile_us(deliver, 0.5),
        p99_us: percentile_us(deliver, 0.99),
        other_p50_us: percentile_us(other, 0.5),
        other_p99_us: percentile_us(other, 0.99),
        bytes_per_message: bytes.total() as f64 / deliver.len().max(1) as f64,
        bytes,
    }
}

/// Verify and store `entries` in a fresh member, in the protocol's batches:
/// the remote apply path without the network. Returns the seconds it took and
/// the member, still open, holding the whole history.
async fn apply_rate(
    root: &Root,
    keys: hearth::core::ChannelKeys,
    wire: WireId,
    entries: &[Vec<u8>],
) -> Result<(f64, Hearth)> {
    let c = create(root, &format!("apply-{}", entries.len())).await?;
    c.plumbing().store().join_channel(keys).await?;
    let mut batches: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut bytes = 0;
    for e in entries {
        let last = batches.last_mut().expect("non-empty");
        if !last.is_empty() && (last.len() >= BATCH_ENTRIES || bytes + e.len() > BATCH_BYTES) {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += e.len();
        batches.last_mut().expect("non-empty").push(e.clone());
    }
    let t = Instant::now();
    for b in batches {
        let r = c.plumbing().store().ingest(wire, b).await?;
        ensure!(
            r.rejected.is_empty(),
            "ingest refused entries: {:?}",
            r.rejected.first()
        );
    }
    Ok((t.elapsed().as_secs_f64(), c))
}

/// Live apply of one remote message into a member that holds the whole
/// history: the writer posts one message at a time, and the member ingests the
/// entry it lacks. Only the ingest is timed (size-capped decode, signature,
/// chain, AEAD, change checks, automerge apply, view update, sled batch, store
/// event); no network. Returns the sorted times.
async fn live_apply(
    writer: &Hearth,
    member: &Hearth,
    ch: ChannelId,
    samples: usize,
    text_len: usize,
) -> Result<Vec<Duration>> {
    let wire = writer.plumbing().store().channel_keys(ch).await?.wire();
    // First what was written since the member caught up (the live-delivery
    // samples, the other member's receipts), untimed.
    let have = member.plumbing().store().vector(ch).await?;
    let missed = writer
        .plumbing()
        .store()
        .entries_after(wire, have, usize::MAX, usize::MAX)
        .await?;
    member.plumbing().store().ingest(wire, missed.entries).await?;
    // The member shows the channel, as an app does: its newest epoch is
    // read (applied, if the catch-up deferred it), and so is each new
    // message (untimed), so that every timed ingest applies its change.
    member.page(ch, None, 50).await?;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = writer.post(ch, &bench_text((1 << 46) + i as u64, text_len)).await?;
        let have = member.plumbing().store().vector(ch).await?;
        let batch = writer
            .plumbing()
            .store()
            .entries_after(wire, have, usize::MAX, usize::MAX)
            .await?;
        let t = Instant::now();
        let r = member.plumbing().store().ingest(wire, batch.entries).await?;
        times.push(t.elapsed());
        ensure!(
            r.messages == 1 && r.rejected.is_empty(),
            "live entry not applied: {r:?}"
        );
        ensure!(member.page(ch, None, 1).await?.first().map(|m| m.id) == Some(id));
    }
    times.sort_unstable();
    Ok(times)
}

/// The baseline's live apply: one change (one new message) applied to a
/// document that holds the whole history, in memory (the baseline persists
/// nothing). Returns the sorted times.
fn am_live_apply(
    writer: &mut AutoCommit,
    member: &mut AutoCommit,
    samples: usize,
    text_len: usize,
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let seq = (1 << 46) + i as u64;
        am_post(writer, seq, &bench_text(seq, text_len))?;
        let change = writer.get_last_local_change().context("no change made")?;
        let t = Instant::now();
        member.apply_changes([change])?;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    Ok(times)
}

/// A writer with `n` posts, a fresh member that dials it through the proxy and
/// catches up; then (if `samples` > 0) live delivery on the same connection.
async fn hearth_catchup(
    root: &Root,
    n: usize,
    text_len: usize,
    samples: usize,
    apply_samples: usize,
) -> Result<(HearthCatchup, Option<Live>)> {
    let mut r = HearthCatchup::default();
    let a = create(root, &format!("writer-{n}")).await?;
    let ch = a.create_channel("catch-up").await?;
    let t = Instant::now();
    hearth_stream(&a, ch, n, text_len, 0).await?;
    r.build_secs = t.elapsed().as_secs_f64();
    let keys = a.plumbing().store().channel_keys(ch).await?;
    let wire = keys.wire();
    let all = a
        .plumbing()
        .store()
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await?;
    r.entries = all.entries.len();
    r.envelope_bytes = all.entries.iter().map(|e| e.len() as u64).sum();
    let (apply_secs, member) = apply_rate(root, keys.clone(), wire, &all.entries).await?;
    r.apply_secs = apply_secs;
    drop(all);

    let b = create(root, &format!("member-{n}")).await?;
    b.plumbing().store().join_channel(keys).await?;
    let (na, a_sock) = start_node(&a).await?;
    let (nb, _) = start_node(&b).await?;
    let proxy = Proxy::start(a_sock).await?;
    let target = a.plumbing().store().vector(ch).await?;
    let mut ev = nb.events();
    let mut stored = b.plumbing().store().subscribe();
    let t0 = Instant::now();
    nb.dial(via(&proxy, na.peer_id())?).await?;
    loop {
        if b.plumbing().store().vector(ch).await?.covers(&target) && b.channel(ch).await?.messages >= n as u64 {
            break;
        }
        ensure!(t0.elapsed() < PATIENCE, "catch-up of {n} did not finish");
        // Looked at again when the store says entries arrived, as an app's
        // view would be (the baseline's end is exact too): a fixed poll
        // added up to its period to the figure.
        appended_from_peer(&mut stored, ch, Duration::from_millis(20)).await;
    }
    // Counted in the catch-up: the channel's first page, as an app opening
    // the channel reads it (it applies the newest epochs a deferred
    // catch-up left unapplied).
    let t = Instant::now();
    let first = b.page(ch, None, 50).await?;
    ensure!(first.len() == 50, "the first page holds {} messages", first.len());
    r.first_page_secs = t.elapsed().as_secs_f64();
    r.secs = t0.elapsed().as_secs_f64();
    r.bytes = proxy.bytes();
    // The session that pulled the history (the dialer's, on connect). The
    // writer's group commit packs the bulk-posted messages into few entries,
    // so `received` counts entries, not messages.
    while r.received == 0 {
        if let NodeEvent::Synced {
            round_trips, received, ..
        } = next_synced(&mut ev, Duration::from_secs(30)).await?
        {
            r.round_trips = round_trips;
            r.received = received;
        }
    }

    let live = if samples > 0 {
        Some(hearth_live(&a, (&b, &nb), ch, &proxy, samples, text_len).await?)
    } else {
        None
    };
    na.stop().await;
    nb.stop().await;
    b.close().await?;
    r.live_apply = live_apply(&a, &member, ch, apply_samples, text_len).await?;
    member.close().await?;
    a.close().await?;
    Ok((r, live))
}

/// Post on `a`, time until `b`'s node reports the message received. `b`
/// then reads it, as an app showing the channel does (untimed), so that
/// every sample is applied on arrival: an epoch opened by the samples is
/// read, not deferred (`Config::lazy_epochs`).
async fn hearth_live(
    a: &Hearth,
    (b, nb): (&Hearth, &SyncHandle),
    ch: ChannelId,
    proxy: &Proxy,
    samples: usize,
    text_len: usize,
) -> Result<Live> {
    // Let the receipts of the catch-up settle before counting bytes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Stamp arrivals in their own task: the waiting loop below may run late.
    let mut ev = nb.events();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(MessageId, Instant)>();
    let stamp = tokio::spawn(async move {
        loop {
            match ev.recv().await {
                Ok(NodeEvent::Store(StoreEvent::Received { messages, .. })) => {
                    let at = Instant::now();
                    for m in messages {
                        let _ = tx.send((m, at));
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    let before = proxy.bytes();
    let (mut deliver, mut acked) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let mut seen: HashMap<MessageId, Instant> = HashMap::new();
    for i in 0..samples {
        let text = bench_text((1 << 45) + i as u64, text_len);
        let t = Instant::now();
        let id = a.post(ch, &text).await?;
        acked.push(t.elapsed());
        let at = loop {
            if let Some(at) = seen.remove(&id) {
                break at;
            }
            let (m, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("a live message never arrived")?
                .context("node events closed")?;
            seen.insert(m, at);
        };
        deliver.push(at - t);
        ensure!(b.page(ch, None, 1).await?.first().map(|m| m.id) == Some(id));
        tokio::time::sleep(LIVE_GAP).await;
    }
    let bytes = proxy.bytes().since(before);
    stamp.abort();
    Ok(live_stats(&mut deliver, &mut acked, bytes))
}

/// Reconnect figures of Hearth.
#[derive(Debug, Default)]
struct HearthReconnect {
    round_trips: u32,
    in_sync_at_hello: bool,
    session: Bytes,
    first_session_round_trips: u32,
    connection: Bytes,
    idle_connect: Bytes,
}

/// Two replicas share `channels` channels, fully synced; the member's node is
/// stopped and started again, redials through the proxy, and runs one sync.
async fn hearth_reconnect(
    root: &Root,
    channels: usize,
    per_channel: usize,
    text_len: usize,
) -> Result<HearthReconnect> {
    let mut r = HearthReconnect::default();
    // The libp2p handshake alone (noise, yamux, identify, an empty Hello).
    {
        let e1 = create(root, "idle-a").await?;
        let e2 = create(root, "idle-b").await?;
        let (n1, s1) = start_node(&e1).await?;
        let (n2, _) = start_node(&e2).await?;
        let proxy = Proxy::start(s1).await?;
        let mut ev = n2.events();
        n2.dial(via(&proxy, n1.peer_id())?).await?;
        next_synced(&mut ev, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.idle_connect = proxy.bytes();
        n1.stop().await;
        n2.stop().await;
        e1.close().await?;
        e2.close().await?;
    }

    let a = create(root, "reconnect-a").await?;
    let b = create(root, "reconnect-b").await?;
    for i in 0..channels {
        let c = a.create_channel(&format!("c{i}")).await?;
        hearth_stream(&a, c, per_channel, text_len, (i * per_channel) as u64).await?;
        b.plumbing()
            .store()
            .join_channel(a.plumbing().store().channel_keys(c).await?)
            .await?;
    }
    let (na, a_sock) = start_node(&a).await?;
    let (nb, _) = start_node(&b).await?;
    nb.dial(format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", a_sock.port(), na.peer_id()).parse()?)
        .await?;
    // Fully synced: the same vectors on both sides (receipts included), stable.
    let t = Instant::now();
    let mut stable = 0;
    while stable < 10 {
        let va: BTreeMap<WireId, Vector> = a.plumbing().store().vectors().await?.into_iter().collect();
        let vb: BTreeMap<WireId, Vector> = b.plumbing().store().vectors().await?.into_iter().collect();
        stable = if va == vb { stable + 1 } else { 0 };
        ensure!(t.elapsed() < PATIENCE, "the reconnect replicas never converged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nb.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (nb, _) = start_node(&b).await?;
    let proxy = Proxy::start(a_sock).await?;
    let mut ev = nb.events();
    nb.dial(via(&proxy, na.peer_id())?).await?;
    if let NodeEvent::Synced { round_trips, .. } = next_synced(&mut ev, Duration::from_secs(30)).await? {
        r.first_session_round_trips = round_trips;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.connection = proxy.bytes();
    let outcome = nb.sync_with(na.peer_id()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.session = proxy.bytes().since(r.connection);
    r.round_trips = outcome.round_trips;
    r.in_sync_at_hello = outcome.in_sync_at_hello;
    na.stop().await;
    nb.stop().await;
    a.close().await?;
    b.close().await?;
    Ok(r)
}

// ---------------------------------------------------------------- baseline

/// One replica of the baseline: one automerge document per channel and one
/// sync state per document for the one peer, over a TCP stream.
struct AmPeer {
    docs: Vec<AutoCommit>,
    states: Vec<am::State>,
    stream: TcpStream,
}

/// What one sync round (to quiescence) did on one side.
#[derive(Debug, Default)]
struct Round {
    /// Frames sent that carried at least one sync message.
    frames: u32,
    /// Automerge sync messages sent.
    messages: u32,
    sent: u64,
    /// When a received message first added changes to a document.
    changed_at: Option<Instant>,
}

async fn write_frame(s: &mut TcpStream, frame: &[u8]) -> Result<()> {
    s.write_all(&(frame.len() as u32).to_be_bytes()).await?;
    s.write_all(frame).await?;
    Ok(())
}

async fn read_frame(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame).await?;
    Ok(frame)
}

impl AmPeer {
    /// Run automerge's sync protocol to quiescence, in turns: each turn one
    /// side sends a frame holding every document's next sync message (empty
    /// when none has one). Two empty frames in a row end the round on both
    /// sides, since a side that received nothing has nothing new to say.
    async fn round(&mut self, first: bool) -> Result<Round> {
        let mut r = Round::default();
        let (mut mine, mut last_empty) = (first, false);
        loop {
            let empty = if mine {
                let mut frame = Vec::new();
                for (i, (d, s)) in self.docs.iter_mut().zip(&mut self.states).enumerate() {
                    if let Some(m) = d.sync().generate_sync_message(s) {
                        let bytes = m.encode();
                        frame.extend_from_slice(&(i as u32).to_be_bytes());
                        frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                        frame.extend_from_slice(&bytes);
                        r.messages += 1;
                    }
                }
                write_frame(&mut self.stream, &frame).await?;
                r.sent += 4 + frame.len() as u64;
                r.frames += u32::from(!frame.is_empty());
                frame.is_empty()
            } else {
                let frame = read_frame(&mut self.stream).await?;
                let mut rest = &frame[..];
                while !rest.is_empty() {
                    ensure!(rest.len() >= 8, "truncated frame");
                    let i = u32::from_be_bytes(rest[..4].try_into()?) as usize;
                    let n = u32::from_be_bytes(rest[4..8].try_into()?) as usize;
                    ensure!(i < self.docs.len() && rest.len() >= 8 + n, "bad frame");
                    let m = am::Message::decode(&rest[8..8 + n])?;
                    let heads: Vec<ChangeHash> = self.docs[i].get_heads();
                    self.docs[i].sync().receive_sync_message(&mut self.states[i], m)?;
                    if r.changed_at.is_none() && self.docs[i].get_heads() != heads {
                        r.changed_at = Some(Instant::now());
                    }
                    rest = &rest[8 + n..];
                }
                frame.is_empty()
            };
            if empty && last_empty {
                return Ok(r);
            }
            last_empty = empty;
            mine = !mine;
        }
    }

    /// Messages in document `i`.
    fn count(&self, i: usize) -> usize {
        match self.docs[i].get(ROOT, "messages") {
            Ok(Some((_, obj))) => self.docs[i].length(&obj),
            _ => 0,
        }
    }
}

/// A new baseline document holding `n` messages, one commit each (as Hearth
/// makes one change per message): `messages/<id>` = {author, ts, text}.
fn am_doc(n: usize, text_len: usize, seed: u64) -> Result<AutoCommit> {
    let mut d = AutoCommit::new();
    d.put_object(ROOT, "messages", ObjType::Map)?;
    d.commit();
    for i in 0..n {
        am_post(&mut d, seed + i as u64, &bench_text(seed + i as u64, text_len))?;
    }
    Ok(d)
}

fn am_post(d: &mut AutoCommit, seq: u64, text: &str) -> Result<()> {
    let msgs = d.get(ROOT, "messages")?.context("no messages map")?.1;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    // A 26-character id that sorts by time, like Hearth's.
    let id = format!("{ms:013x}{seq:013x}");
    let m = d.put_object(&msgs, id.as_str(), ObjType::Map)?;
    d.put(&m, "author", "a7f3c9e1b2d4a6f8c0e2b4d6f8a0c2e4")?;
    d.put(&m, "ts", ScalarValue::Timestamp(ms))?;
    d.put(&m, "text", text)?;
    d.commit();
    Ok(())
}

/// Connect a dialer to a listener through a new proxy.
async fn am_connect() -> Result<(TcpStream, TcpStream, Proxy)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = Proxy::start(listener.local_addr()?).await?;
    let (dialer, accepted) = tokio::join!(TcpStream::connect(proxy.addr), listener.accept());
    let (dialer, accepted) = (dialer?, accepted?.0);
    dialer.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    Ok((dialer, accepted, proxy))
}

/// Run a round on both sides (the dialer `b` first) and return both reports.
async fn am_round(a: &mut AmPeer, b: &mut AmPeer, a_first: bool) -> Result<(Round, Round)> {
    let (ra, rb) = tokio::join!(a.round(a_first), b.round(!a_first));
    Ok((ra?, rb?))
}

#[derive(Debug, Default)]
struct AmCatchup {
    build_secs: f64,
    secs: f64,
    frames: u32,
    messages: u32,
    bytes: Bytes,
    /// Sorted times of one-change applies into a document holding the history.
    live_apply: Vec<Duration>,
}

/// A document with `n` messages; a fresh peer connects and syncs it to
/// quiescence. Then (if `samples` > 0) live changes on the same connection.
/// Wait until the store reports a peer's entries stored in `channel` (every
/// such report already queued is taken too), or `at_most`.
async fn appended_from_peer(
    events: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
    channel: ChannelId,
    at_most: Duration,
) {
    let from_peer = |e: &Result<StoreEvent, tokio::sync::broadcast::error::RecvError>| match e {
        Ok(StoreEvent::Appended { channel: c, local, .. }) => *c == channel && !*local,
        Ok(_) => false,
        // Reports were missed: look now.
        Err(_) => true,
    };
    let deadline = tokio::time::Instant::now() + at_most;
    while let Ok(e) = tokio::time::timeout_at(deadline, events.recv()).await {
        if from_peer(&e) {
            break;
        }
    }
    while events.try_recv().is_ok() {}
}

async fn am_catchup(
    n: usize,
    text_len: usize,
    samples: usize,
    apply_samples: usize,
) -> Result<(AmCatchup, Option<Live>)> {
    let mut r = AmCatchup::default();
    let t = Instant::now();
    let doc = am_doc(n, text_len, 0)?;
    r.build_secs = t.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let (dialer, accepted, proxy) = am_connect().await?;
    let mut a = AmPeer {
        docs: vec![doc],
        states: vec![am::State::new()],
        stream: accepted,
    };
    let mut b = AmPeer {
        docs: vec![AutoCommit::new()],
        states: vec![am::State::new()],
        stream: dialer,
    };
    let (ra, rb) = am_round(&mut a, &mut b, false).await?;
    r.secs = t0.elapsed().as_secs_f64();
    r.bytes = proxy.bytes();
    r.frames = ra.frames + rb.frames;
    r.messages = ra.messages + rb.messages;
    ensure!(
        b.count(0) == n,
        "the baseline peer holds {} of {n} messages",
        b.count(0)
    );

    if samples == 0 {
        r.live_apply = am_live_apply(&mut a.docs[0], &mut b.docs[0], apply_samples, text_len)?;
        return Ok((r, None));
    }
    let before = proxy.bytes();
    let (mut deliver, mut quiet) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for i in 0..samples {
        let t = Instant::now();
        am_post(
            &mut a.docs[0],
            (1 << 45) + i as u64,
            &bench_text((1 << 45) + i as u64, text_len),
        )?;
        let (_, rb) = am_round(&mut a, &mut b, true).await?;
        quiet.push(t.elapsed());
        deliver.push(rb.changed_at.context("a live change never arrived")? - t);
        tokio::time::sleep(LIVE_GAP).await;
    }
    let bytes = proxy.bytes().since(before);
    r.live_apply = am_live_apply(&mut a.docs[0], &mut b.docs[0], apply_samples, text_len)?;
    Ok((r, Some(live_stats(&mut deliver, &mut quiet, bytes))))
}

#[derive(Debug, Default)]
struct AmReconnect {
    frames: u32,
    messages: u32,
    bytes: Bytes,
    fresh_bytes: Bytes,
}

/// `channels` documents synced between two peers; their sync states are
/// persisted (encoded), the connection dropped; a new connection with the
/// decoded states syncs again.
async fn am_reconnect(channels: usize, per_channel: usize, text_len: usize) -> Result<AmReconnect> {
    let mut r = AmReconnect::default();
    let mut docs = Vec::with_capacity(channels);
    for i in 0..channels {
        docs.push(am_doc(per_channel, text_len, (i * per_channel) as u64)?);
    }
    let (dialer, accepted, proxy) = am_connect().await?;
    let mut a = AmPeer {
        states: (0..channels).map(|_| am::State::new()).collect(),
        docs,
        stream: accepted,
    };
    let mut b = AmPeer {
        docs: (0..channels).map(|_| AutoCommit::new()).collect(),
        states: (0..channels).map(|_| am::State::new()).collect(),
        stream: dialer,
    };
    am_round(&mut a, &mut b, false).await?;
    r.fresh_bytes = proxy.bytes();
    for i in 0..channels {
        ensure!(b.count(i) == per_channel, "baseline channel {i} did not sync");
    }
    drop(proxy);
    let persist = |p: &AmPeer| -> Result<Vec<am::State>> {
        p.states.iter().map(|s| Ok(am::State::decode(&s.encode())?)).collect()
    };
    let (sa, sb) = (persist(&a)?, persist(&b)?);
    let (dialer, accepted, proxy) = am_connect().await?;
    let mut a = AmPeer {
        docs: a.docs,
        states: sa,
        stream: accepted,
    };
    let mut b = AmPeer {
        docs: b.docs,
        states: sb,
        stream: dialer,
    };
    let (ra, rb) = am_round(&mut a, &mut b, false).await?;
    r.bytes = proxy.bytes();
    r.frames = ra.frames + rb.frames;
    r.messages = ra.messages + rb.messages;
    Ok(r)
}

// ---------------------------------------------------------------- report

/// Run `hearth bench sync`: print one JSON object per metric with `--json`,
/// a table otherwise.
pub async fn run(args: &SyncArgs, json_out: bool) -> Result<std::process::ExitCode> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    // Benches may lower the Argon2id cost: unlocking is not what is measured here.
    let mut config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
    config = config.with_lazy_epochs(!args.eager);
    if let Some(n) = args.epoch_messages {
        config = config.with_epoch_messages(n);
    }
    let root = Root { dir, config };
    let say = |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    };
    let mut metrics = vec![json!({
        "metric": "setup",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "text_len": args.text_len,
        "kdf": "KdfParams::INSECURE_FAST (bench only: unlock is not measured here)",
        "epoch_messages": root.config.epoch_messages,
        "lazy_epochs": root.config.lazy_epochs,
        "transport": "loopback; Hearth: libp2p TCP+noise+yamux; baseline: TCP, u32-length frames; both through a counting TCP proxy",
        "mdns": false,
    })];
    let mut sizes = vec![args.messages.max(1)];
    if args.full && !sizes.contains(&100_000) {
        sizes.push(100_000);
    }
    for (k, &n) in sizes.iter().enumerate() {
        // Live delivery runs once, on the first (smaller) history.
        let samples = if k == 0 { args.samples } else { 0 };
        say(format!("catch-up of {n} messages: Hearth"));
        let (h, h_live) = hearth_catchup(&root, n, args.text_len, samples, args.samples).await?;
        say(format!("catch-up of {n} messages: automerge baseline"));
        let (b, b_live) = am_catchup(n, args.text_len, samples, args.samples).await?;
        let nf = n as f64;
        metrics.push(json!({
            "metric": "catch_up", "messages": n,
            "hearth": {
                "secs": h.secs, "msgs_per_sec": nf / h.secs,
                "round_trips": h.round_trips, "entries_received": h.received,
                "writer_build_secs": h.build_secs, "first_page_secs": h.first_page_secs,
            },
            "automerge": {
                "secs": b.secs, "msgs_per_sec": nf / b.secs,
                "frames": b.frames, "sync_messages": b.messages,
                "writer_build_secs": b.build_secs,
            },
            "speedup": b.secs / h.secs,
            "target_secs_10k": 1.0,
        }));
        metrics.push(json!({
            "metric": "wire_bytes", "messages": n,
            "hearth": {
                "bytes": h.bytes.json(), "per_message": h.bytes.total() as f64 / nf,
                "entries": h.entries, "envelope_bytes": h.envelope_bytes,
                "envelope_per_message": h.envelope_bytes as f64 / nf,
                "wire_per_envelope_byte": h.bytes.total() as f64 / h.envelope_bytes as f64,
            },
            "automerge": {"bytes": b.bytes.json(), "per_message": b.bytes.total() as f64 / nf},
            "hearth_over_automerge": h.bytes.total() as f64 / b.bytes.total() as f64,
        }));
        metrics.push(json!({
            "metric": "remote_apply", "messages": n,
            "hearth": {
                "ingest_msgs_per_sec": nf / h.apply_secs,
                "ingest_entries": h.entries,
                "ingest_secs": h.apply_secs,
                "catch_up_msgs_per_sec": nf / h.secs,
            },
            "target_msgs_per_sec": 20_000,
        }));
        if args.samples > 0 {
            metrics.push(json!({
                "metric": "live_apply", "history": n, "samples": args.samples,
                "hearth": {
                    "p50_us": percentile_us(&h.live_apply, 0.5),
                    "p99_us": percentile_us(&h.live_apply, 0.99),
                    "what": "Store::ingest of one remote entry: verify, decrypt, apply, view, sled batch",
                },
                "automerge": {
                    "p50_us": percentile_us(&b.live_apply, 0.5),
                    "p99_us": percentile_us(&b.live_apply, 0.99),
                    "what": "apply_changes of one change, in memory",
                },
                "target_p99_us": 1000,
            }));
        }
        if let (Some(h), Some(b)) = (h_live, b_live) {
            metrics.push(json!({
                "metric": "live_delivery", "history": n, "samples": samples,
                "hearth": {
                    "p50_us": h.p50_us, "p99_us": h.p99_us,
                    "writer_durable_post_p50_us": h.other_p50_us,
                    "writer_durable_post_p99_us": h.other_p99_us,
                    "bytes_per_message": h.bytes_per_message,
                    "bytes": h.bytes.json(),
                },
                "automerge": {
                    "p50_us": b.p50_us, "p99_us": b.p99_us,
                    "quiescent_p50_us": b.other_p50_us, "quiescent_p99_us": b.other_p99_us,
                    "bytes_per_message": b.bytes_per_message,
                    "bytes": b.bytes.json(),
                },
            }));
        }
    }

    say(format!(
        "reconnect in sync: {} channels x {} messages",
        args.channels, args.per_channel
    ));
    let h = hearth_reconnect(&root, args.channels, args.per_channel, args.text_len).await?;
    let b = am_reconnect(args.channels, args.per_channel, args.text_len).await?;
    metrics.push(json!({
        "metric": "reconnect_in_sync", "channels": args.channels, "per_channel": args.per_channel,
        "hearth": {
            "round_trips": h.round_trips, "in_sync_at_hello": h.in_sync_at_hello,
            "session_bytes": h.session.json(),
            "on_connect_session_round_trips": h.first_session_round_trips,
            "connection_bytes_incl_handshake_and_on_connect_session": h.connection.json(),
            "idle_connect_bytes_libp2p_handshake_identify_empty_hello": h.idle_connect.json(),
        },
        "automerge": {
            "frames": b.frames, "sync_messages": b.messages, "bytes": b.bytes.json(),
            "first_sync_bytes": b.fresh_bytes.json(),
        },
        "target": "1 round trip, < 2 KB for 100 channels",
    }));

    if json_out {
        for m in &metrics {
            println!("{m}");
        }
    } else {
        print_table(&metrics);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_table(metrics: &[Value]) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let row = |name: &str, h: String, b: String, g: String| println!("{name:<46} {h:>14} {b:>14} {g:>8}");
    let setup = &metrics[0];
    println!(
        "hearth bench sync ({} cores, {}-byte messages, {}-message epochs, KDF INSECURE_FAST; loopback through a counting proxy, mDNS off)",
        setup["cores"], setup["text_len"], setup["epoch_messages"]
    );
    row("metric", "hearth".into(), "automerge".into(), "gain".into());
    for m in &metrics[1..] {
        let (h, b) = (&m["hearth"], &m["automerge"]);
        match m["metric"].as_str().unwrap_or("") {
            "catch_up" => {
                println!("catch-up of {} missed messages", m["messages"]);
                row(
                    "  dial to all present (ms)",
                    format!("{:.0}", f(&h["secs"]) * 1e3),
                    format!("{:.0}", f(&b["secs"]) * 1e3),
                    format!("{:.2}", f(&m["speedup"])),
                );
                row(
                    "  throughput (msg/s)",
                    format!("{:.0}", f(&h["msgs_per_sec"])),
                    format!("{:.0}", f(&b["msgs_per_sec"])),
                    String::new(),
                );
                row(
                    "  requests / non-empty frames",
                    h["round_trips"].to_string(),
                    b["frames"].to_string(),
                    String::new(),
                );
                row(
                    "  writer build (s)",
                    format!("{:.1}", f(&h["writer_build_secs"])),
                    format!("{:.1}", f(&b["writer_build_secs"])),
                    String::new(),
                );
            }
            "wire_bytes" => {
                row(
                    "  wire bytes, both ways (per message)",
                    format!("{:.0}", f(&h["per_message"])),
                    format!("{:.0}", f(&b["per_message"])),
                    format!("{:.2}", 1.0 / f(&m["hearth_over_automerge"])),
                );
                row(
                    "  wire bytes total",
                    h["bytes"]["total"].to_string(),
                    b["bytes"]["total"].to_string(),
                    String::new(),
                );
                row(
                    "  sealed envelope bytes (per message)",
                    format!("{:.0}", f(&h["envelope_per_message"])),
                    String::new(),
                    String::new(),
                );
                row(
                    "  wire / envelope bytes",
                    format!("{:.3}", f(&h["wire_per_envelope_byte"])),
                    String::new(),
                    String::new(),
                );
            }
            "remote_apply" => {
                row(
                    "  remote apply, ingest batches (msg/s)",
                    format!("{:.0}", f(&h["ingest_msgs_per_sec"])),
                    String::new(),
                    String::new(),
                );
            }
            "live_apply" => {
                println!(
                    "live apply of one remote message ({} samples, {} messages of history)",
                    m["samples"], m["history"]
                );
                for p in ["p50", "p99"] {
                    let k = format!("{p}_us");
                    row(
                        &format!("  ingest one entry, {p} (us)"),
                        format!("{:.0}", f(&h[&k])),
                        format!("{:.0}", f(&b[&k])),
                        format!("{:.2}", f(&b[&k]) / f(&h[&k])),
                    );
                }
            }
            "live_delivery" => {
                println!(
                    "live delivery ({} samples, {} messages of history)",
                    m["samples"], m["history"]
                );
                row(
                    "  post to received, p50 (us)",
                    format!("{:.0}", f(&h["p50_us"])),
                    format!("{:.0}", f(&b["p50_us"])),
                    format!("{:.2}", f(&b["p50_us"]) / f(&h["p50_us"])),
                );
                row(
                    "  post to received, p99 (us)",
                    format!("{:.0}", f(&h["p99_us"])),
                    format!("{:.0}", f(&b["p99_us"])),
                    format!("{:.2}", f(&b["p99_us"]) / f(&h["p99_us"])),
                );
                row(
                    "  of which durable post on writer, p50/p99",
                    format!(
                        "{:.0}/{:.0}",
                        f(&h["writer_durable_post_p50_us"]),
                        f(&h["writer_durable_post_p99_us"])
                    ),
                    String::new(),
                    String::new(),
                );
                row(
                    "  baseline to quiescence, p50/p99 (us)",
                    String::new(),
                    format!("{:.0}/{:.0}", f(&b["quiescent_p50_us"]), f(&b["quiescent_p99_us"])),
                    String::new(),
                );
                row(
                    "  wire bytes per live message",
                    format!("{:.0}", f(&h["bytes_per_message"])),
                    format!("{:.0}", f(&b["bytes_per_message"])),
                    String::new(),
                );
            }
            "reconnect_in_sync" => {
                println!(
                    "reconnect, already in sync ({} channels x {} messages)",
                    m["channels"], m["per_channel"]
                );
                row(
                    "  round trips / non-empty frames",
                    h["round_trips"].to_string(),
                    b["frames"].to_string(),
                    String::new(),
                );
                row(
                    "  bytes of the sync, both ways",
                    h["session_bytes"]["total"].to_string(),
                    b["bytes"]["total"].to_string(),
                    format!("{:.2}", f(&b["bytes"]["total"]) / f(&h["session_bytes"]["total"])),
                );
                row(
                    "  proxied connections (idle / reconnect)",
                    format!(
                        "{}/{}",
                        h["idle_connect_bytes_libp2p_handshake_identify_empty_hello"]["connections"],
                        h["connection_bytes_incl_handshake_and_on_connect_session"]["connections"]
                    ),
                    String::new(),
                    String::new(),
                );
                row(
                    "  libp2p handshake (idle connect), both ways",
                    h["idle_connect_bytes_libp2p_handshake_identify_empty_hello"]["total"].to_string(),
                    String::new(),
                    String::new(),
                );
                row(
                    "  connection so far (handshake + on-connect sync)",
                    h["connection_bytes_incl_handshake_and_on_connect_session"]["total"].to_string(),
                    String::new(),
                    String::new(),
                );
                row(
                    "  baseline first sync of all docs (bytes)",
                    String::new(),
                    b["first_sync_bytes"]["total"].to_string(),
                    String::new(),
                );
            }
            _ => {}
        }
    }
    println!("gain: > 1 means Hearth is faster or smaller than the baseline.");
}
