//! Hearth's side: catch-up, live delivery and apply, reconnect.

#[allow(unused_imports)]
use super::*;

/// What catching up cost Hearth.
#[derive(Debug, Default)]
pub(super) struct HearthCatchup {
    pub(super) build_secs: f64,
    pub(super) secs: f64,
    pub(super) round_trips: u32,
    pub(super) received: u64,
    pub(super) bytes: Bytes,
    pub(super) entries: usize,
    pub(super) envelope_bytes: u64,
    pub(super) apply_secs: f64,
    /// The first page read after the last message arrived (in `secs`).
    pub(super) first_page_secs: f64,
    /// Sorted times of single-entry live applies into a member holding the history.
    pub(super) live_apply: Vec<Duration>,
}

/// Live delivery figures, microseconds.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    /// Hearth: the writer's durable post alone; baseline: sync to quiescence.
    pub(super) other_p50_us: f64,
    pub(super) other_p99_us: f64,
    pub(super) bytes_per_message: f64,
    /// The bytes of the run each way (`up`: from the dialer, the receiver).
    pub(super) bytes: Bytes,
    /// The slowest deliveries, slowest first: (sample index, microseconds).
    pub(super) slowest: Vec<(usize, f64)>,
}

/// How many of the slowest deliveries a run reports.
const SLOWEST: usize = 5;

pub(super) fn live_stats(deliver: &mut [Duration], other: &mut [Duration], bytes: Bytes) -> Live {
    let mut slowest: Vec<(usize, f64)> = deliver
        .iter()
        .enumerate()
        .map(|(i, d)| (i, d.as_secs_f64() * 1e6))
        .collect();
    slowest.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    slowest.truncate(SLOWEST);
    deliver.sort_unstable();
    other.sort_unstable();
    Live {
        p50_us: percentile_us(deliver, 0.5),
        p99_us: percentile_us(deliver, 0.99),
        other_p50_us: percentile_us(other, 0.5),
        other_p99_us: percentile_us(other, 0.99),
        bytes_per_message: bytes.total() as f64 / deliver.len().max(1) as f64,
        bytes,
        slowest,
    }
}

/// Verify and store `entries` in a fresh member, in the protocol's batches:
/// the remote apply path without the network. Returns the seconds it took and
/// the member, still open, holding the whole history.
pub(super) async fn apply_rate(
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
pub(super) async fn live_apply(
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
pub(super) fn am_live_apply(
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
pub(super) async fn hearth_catchup(
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
pub(super) async fn hearth_live(
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
pub(super) struct HearthReconnect {
    pub(super) round_trips: u32,
    pub(super) in_sync_at_hello: bool,
    pub(super) session: Bytes,
    pub(super) first_session_round_trips: u32,
    pub(super) connection: Bytes,
    pub(super) idle_connect: Bytes,
}

/// Two replicas share `channels` channels, fully synced; the member's node is
/// stopped and started again, redials through the proxy, and runs one sync.
pub(super) async fn hearth_reconnect(
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
