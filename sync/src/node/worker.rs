//! The worker of one connected peer (its sessions, pushes and live
//! stream) and the serving of a peer's live stream.

#[allow(unused_imports)]
use super::*;

/// Who a worker syncs with.
pub(super) struct Worker {
    pub(super) peer: PeerId,
    /// What the peer proved on this connection.
    pub(super) conn: Conn,
    /// The peer is a relay this user configured: grant it every channel.
    pub(super) grant: bool,
    /// Opens the peer's live stream, which its Pushes take when it has
    /// one, and how long an answer on it may take.
    pub(super) live: (libp2p_stream::Control, Duration),
}

/// What serving a peer's live stream needs.
pub(super) struct LiveServing<R> {
    pub(super) replica: R,
    pub(super) conn: Conn,
    pub(super) work: mpsc::UnboundedSender<Work>,
    pub(super) inbound: Arc<Semaphore>,
    pub(super) cmd: mpsc::Sender<Cmd>,
    /// The peer's count of live streams served, which this one leaves.
    pub(super) streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// Serve a peer's live stream: each frame a Push (see [`crate::live`]),
/// answered in order, until the stream ends or breaks the protocol.
pub(super) async fn serve_live<R: Replica>(peer: PeerId, stream: libp2p::Stream, s: LiveServing<R>) {
    use futures::AsyncReadExt;

    use crate::live::{self, LiveAck};
    let (mut read, mut write) = stream.split();
    // Frames are read by a task of their own, so that waiting for the next
    // one can give way to saying `Took` for those held back.
    let (frames_tx, mut frames) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let reader = tokio::spawn(async move {
        loop {
            let frame = live::read_frame(&mut read, proto::MAX_REQUEST).await;
            let end = frame.is_err();
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let mut table = live::FeedTable::default();
    // `Took` held back: for how many frames, and until when.
    let (mut held, mut due): (u32, Option<tokio::time::Instant>) = (0, None);
    loop {
        let next = match due {
            Some(d) => tokio::select! {
                f = frames.recv() => Some(f),
                () = tokio::time::sleep_until(d) => None,
            },
            None => Some(frames.recv().await),
        };
        let frame = match next {
            None => {
                if live::write_frame(&mut write, &live::encode_ack(&LiveAck::Took(held)))
                    .await
                    .is_err()
                {
                    break;
                }
                (held, due) = (0, None);
                continue;
            }
            Some(None) => break,
            Some(Some(Ok(f))) => f,
            Some(Some(Err(e))) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let _ = s
                        .cmd
                        .send(Cmd::LiveMalformed(peer, format!("malformed live frame: {e}")))
                        .await;
                }
                break;
            }
        };
        let pushed = match live::decode_push(&mut table, &frame) {
            Ok(x) => x,
            Err(e) => {
                let _ = s.cmd.send(Cmd::LiveMalformed(peer, e.to_string())).await;
                break;
            }
        };
        let (wire, n) = (pushed.wire, pushed.entries.len());
        // As for a Push request: the worker learns what the peer holds
        // before the ingest, so that the store's notice does not send it back.
        let heads = pushed.heads;
        if s.conn.proved(&wire) {
            let _ = s.work.send(Work::Learned(wire, heads.clone(), Told::Pushed));
        }
        let Ok(permit) = s.inbound.clone().acquire_owned().await else {
            break;
        };
        let request = Request::Push {
            wire,
            entries: pushed.entries,
        };
        let (resp, served) = serve(&s.replica, request, &s.conn).await;
        drop(permit);
        let _ = s.cmd.send(Cmd::LiveServed(peer, served)).await;
        let took = matches!(&resp, Response::Ack { vector, accepted, rejected: 0, .. }
            if *accepted as usize == n && *vector == heads);
        // A pipelined push taken: said later, for several at once.
        if took && !pushed.wait && held + 1 < live::ACK_BATCH {
            held += 1;
            due.get_or_insert_with(|| tokio::time::Instant::now() + live::ACK_DELAY);
            continue;
        }
        let mut out = Vec::new();
        if took {
            out.push(LiveAck::Took(held + 1));
        } else {
            if held > 0 {
                out.push(LiveAck::Took(held));
            }
            out.push(LiveAck::Said(resp));
        }
        (held, due) = (0, None);
        let mut sent = Ok(());
        for ack in out {
            sent = sent.and(live::write_frame(&mut write, &live::encode_ack(&ack)).await);
        }
        if sent.is_err() {
            break;
        }
    }
    reader.abort();
    s.streams.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

/// The worker of one connected peer: runs its sessions one at a time.
pub(super) fn spawn_worker<R: Replica>(
    Worker {
        peer,
        conn,
        grant,
        live,
    }: Worker,
    replica: R,
    cmd: mpsc::Sender<Cmd>,
    (events, acks): (broadcast::Sender<NodeEvent>, Acks),
) -> mpsc::UnboundedSender<Work> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
    // Weak: the worker ends when the node drops the peer's sender.
    let me = tx.downgrade();
    // What the live stream's reader says of pipelined pushes: taken (the
    // peer acknowledged them), or not whole (learn what it holds again).
    let reports = crate::live::LiveReports {
        taken: {
            let (events, acks) = (events.clone(), acks.clone());
            Arc::new(move |wire, vector| acknowledged(&acks, &events, peer, wire, vector))
        },
        relearn: {
            let me = me.clone();
            Arc::new(move || {
                if let Some(tx) = me.upgrade() {
                    let _ = tx.send(Work::Reconcile(None));
                }
            })
        },
    };
    // Sessions run one at a time: the lock only lets `send` hold it.
    let live = Arc::new(tokio::sync::Mutex::new(crate::live::LiveLink::new(
        live.0, peer, live.1, reports,
    )));
    // Set when a live session's push was pipelined: its Ack is the
    // reader's to report, not the session's.
    let pipelined = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(
        async move {
            // What the peer holds, as last acknowledged.
            let mut known: BTreeMap<WireId, Vector> = BTreeMap::new();
            // When the peer last fetched from here (its session is running).
            let mut peer_fetched: Option<(Instant, bool)> = None;
            let connected = Instant::now();
            'work: while let Some(first) = rx.recv().await {
                let mut reconcile = false;
                let mut after_peer = false;
                let mut fetched_now = false;
                let mut replies = Vec::new();
                // Each with this device's new entries when the store handed
                // them over (the newest group's; none if any push lacked them).
                let mut pushes: BTreeMap<WireId, Option<hearth_store::Outgoing>> = BTreeMap::new();
                let mut absorb = |w: Work, known: &mut BTreeMap<WireId, Vector>| match w {
                    Work::Reconcile(r) => {
                        reconcile = true;
                        replies.extend(r);
                    }
                    Work::ReconcileAfterPeer => after_peer = true,
                    Work::Push(wire, outgoing) => {
                        let given = pushes.entry(wire).or_insert_with(|| outgoing.clone());
                        *given = given.as_ref().and(outgoing);
                    }
                    Work::Learned(wire, v, told) => {
                        learn(&acks, peer, known, wire, &v, told);
                        if let Told::Fetched { more } = told {
                            peer_fetched = Some((Instant::now(), more));
                            fetched_now = true;
                        }
                    }
                };
                absorb(first, &mut known);
                while let Ok(w) = rx.try_recv() {
                    absorb(w, &mut known);
                }
                if after_peer && !reconcile {
                    // Fetching lately, or sure to fetch again: the last
                    // answer left entries out (an ingest of a batch may take
                    // longer than the quiet on a busy disk).
                    let peer_busy = peer_fetched.is_some_and(|(t, more)| more || t.elapsed() < PEER_SESSION_QUIET);
                    if peer_busy && connected.elapsed() < PEER_SESSION_PATIENCE {
                        // Weak until it fires: a peer gone meanwhile ends the worker.
                        let me = me.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(LISTENER_SESSION_DELAY).await;
                            if let Some(tx) = me.upgrade() {
                                let _ = tx.send(Work::ReconcileAfterPeer);
                            }
                        });
                    } else {
                        reconcile = true;
                    }
                }
                // Only learned what the peer pushed (or a session put off): no
                // session ran, so neither the store nor the status need a look.
                if !reconcile && pushes.is_empty() && !fetched_now {
                    continue;
                }
                // Pushes of entries handed over with their event need not ask
                // the store (its thread is applying their group meanwhile):
                // each came with its channel's vector.
                let handed: Option<Vec<(WireId, Vector)>> = (!reconcile && !pushes.is_empty())
                    .then(|| {
                        pushes
                            .iter()
                            .map(|(w, o)| o.as_ref().map(|o| (*w, o.vector().clone())))
                            .collect()
                    })
                    .flatten();
                let mut local = handed.clone().unwrap_or_default();
                let mut later = Vec::new();
                // Twice at most: the vectors handed over are as of their
                // group, and the peer may hold more since (it pushed to
                // here): then they are read from the store after all, or the
                // push session would fetch what this device holds already.
                for read in [handed.is_none(), true] {
                    if read {
                        local = match replica.vectors().await {
                            Ok(v) => v,
                            // The store is gone or failing: this round's
                            // work is dropped, as it always was.
                            Err(_) => continue 'work,
                        };
                    }
                    // What the peer pushed is learned before its ingest
                    // starts, so every entry of its in `local` was learned by
                    // now: take what came while the vectors were read, or an
                    // entry it pushed meanwhile would be pushed back to it.
                    // The rest waits for the next round.
                    while let Ok(w) = rx.try_recv() {
                        match w {
                            Work::Learned(wire, v, told) => {
                                learn(&acks, peer, &mut known, wire, &v, told);
                                if let Told::Fetched { more } = told {
                                    peer_fetched = Some((Instant::now(), more));
                                }
                            }
                            other => later.push(other),
                        }
                    }
                    let stale = handed.is_some()
                        && !read
                        && local
                            .iter()
                            .any(|(w, mine)| known.get(w).is_some_and(|theirs| !mine.covers(theirs)));
                    if !stale {
                        break;
                    }
                }
                if let Some(tx) = me.upgrade() {
                    for w in later {
                        let _ = tx.send(w);
                    }
                }
                // A push to a channel the peer's vector is unknown for needs a Hello.
                if pushes.keys().any(|w| !known.contains_key(w)) {
                    reconcile = true;
                }
                // A Push takes the live stream when the peer has one: a live
                // session's (`wait` false) pipelined, a full session's answered.
                let sender = |wait: bool| {
                    let (cmd, live, pipelined) = (cmd.clone(), live.clone(), pipelined.clone());
                    move |req: Request| {
                        let (cmd, live, pipelined) = (cmd.clone(), live.clone(), pipelined.clone());
                        async move {
                            if let Request::Push { wire, entries } = &req
                                && let Some(answer) = live.lock().await.push(*wire, entries, wait).await
                            {
                                if !wait && answer.is_ok() {
                                    pipelined.store(true, std::sync::atomic::Ordering::SeqCst);
                                }
                                return answer;
                            }
                            let (tx, rx) = oneshot::channel();
                            cmd.send(Cmd::Request(peer, req, tx))
                                .await
                                .map_err(|_| "node stopped".to_string())?;
                            rx.await.map_err(|_| "node stopped".to_string())?
                        }
                    }
                };
                let session_started = Instant::now();
                let outcome = if reconcile {
                    let o = match conn.session(&replica, grant).await {
                        Ok(session) => run_session(session, &replica, &conn, sender(true)).await,
                        Err(e) => Outcome {
                            failed: Some(e.to_string()),
                            ..Outcome::default()
                        },
                    };
                    // Merged, not replaced: the session's view of the peer
                    // is as of its Hello, and a live push that came during
                    // the session may have taught more (replaced, what the
                    // peer had pushed meanwhile went back to it).
                    for (w, v) in &o.peer {
                        known.entry(*w).or_default().merge(v);
                    }
                    // The live stream is opened once a session has settled what
                    // the peer holds, not at the first live push, which would
                    // wait for the stream's negotiation (a round trip).
                    if o.failed.is_none() && !o.peer.is_empty() {
                        let live = live.clone();
                        tokio::spawn(async move { live.lock().await.warm().await });
                    }
                    o
                } else {
                    let mut total = Outcome::default();
                    for (wire, outgoing) in pushes {
                        let (Some(mine), Some(theirs)) = (
                            local.iter().find(|(w, _)| *w == wire).map(|(_, v)| v.clone()),
                            known.get(&wire).cloned(),
                        ) else {
                            continue;
                        };
                        // Only channels the peer proved on this connection.
                        if theirs.covers(&mine) || !conn.proved(&wire) {
                            continue;
                        }
                        let session = Session::push(wire, mine, theirs);
                        let o = run_session_with(session, &replica, &conn, sender(false), outgoing.as_ref()).await;
                        // Pipelined, the peer's vector is what it will hold once
                        // it takes the pushes; their Acks are the reader's.
                        let unanswered = pipelined.swap(false, std::sync::atomic::Ordering::SeqCst);
                        if let Some(v) = o.peer.get(&wire) {
                            known.insert(wire, v.clone());
                        }
                        total.sent += o.sent;
                        total.pushed += o.pushed;
                        total.round_trips += o.round_trips;
                        total.entry_bytes_out += o.entry_bytes_out;
                        total.refused_there += o.refused_there;
                        total.failed = total.failed.or(o.failed);
                        if !unanswered {
                            total.peer.extend(o.peer);
                        }
                        total.channels += 1;
                    }
                    total
                };
                // In sync: for every channel both hold, the same vector.
                let local_after = replica.vectors().await.unwrap_or(local);
                let mut in_sync = outcome.failed.is_none();
                let (mut behind, mut ahead) = (0u64, 0u64);
                for (w, mine) in &local_after {
                    if let Some(theirs) = known.get(w) {
                        let b: u64 = mine.lacks(theirs).iter().fold(0u64, |s, m| s.saturating_add(m.len()));
                        let a: u64 = theirs.lacks(mine).iter().fold(0u64, |s, m| s.saturating_add(m.len()));
                        behind = behind.saturating_add(b);
                        ahead = ahead.saturating_add(a);
                        in_sync &= a == 0 && b == 0;
                    }
                }
                if reconcile || outcome.sent > 0 {
                    let _ = events.send(NodeEvent::Synced {
                        peer,
                        channels: outcome.channels,
                        received: outcome.received,
                        sent: outcome.sent,
                        pushed: outcome.pushed,
                        round_trips: outcome.round_trips,
                        in_sync,
                    });
                }
                // (A session that only learned the peer's vector moved nothing.)
                if reconcile || outcome.sent > 0 || outcome.received > 0 {
                    tracing::info!(
                        %peer,
                        full = reconcile,
                        channels = outcome.channels,
                        wires = %short_wires(outcome.peer.keys()),
                        received = outcome.received,
                        sent = outcome.sent,
                        bytes_in = outcome.entry_bytes_in,
                        bytes_out = outcome.entry_bytes_out,
                        round_trips = outcome.round_trips,
                        millis = session_started.elapsed().as_secs_f64() * 1e3,
                        in_sync,
                        behind,
                        ahead,
                        failed = outcome.failed.as_deref(),
                        "sync session"
                    );
                }
                let state = SyncState { in_sync, behind, ahead };
                let _ = cmd.send(Cmd::SessionDone(peer, outcome.clone(), state)).await;
                for r in replies {
                    let _ = r.send(Ok(outcome.clone()));
                }
            }
        }
        .instrument(tracing::info_span!("peer", %peer)),
    );
    tx
}

/// Channels' wire ids in tracing: the first 8 bytes of each in hex, comma
/// separated.
pub(super) fn short_wires<'a>(wires: impl Iterator<Item = &'a WireId>) -> String {
    wires.map(WireId::short).collect::<Vec<_>>().join(",")
}

/// What the peer asked for (`fetched`: its whole vector of the channel) or
/// pushed (its pushed feeds' heads), it holds.
fn learn(acks: &Acks, peer: PeerId, known: &mut BTreeMap<WireId, Vector>, wire: WireId, v: &Vector, told: Told) {
    acks.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((peer, wire))
        .or_default()
        .merge(v);
    if matches!(told, Told::Fetched { .. }) {
        known.entry(wire).or_default().merge(v);
    } else if let Some(k) = known.get_mut(&wire) {
        // Pushed feeds only: a part of the peer's vector, that can only
        // raise one already known.
        k.merge(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_rounds_come_sooner_at_first_then_every_interval() {
        let interval = Duration::from_secs(300);
        let mut last = None;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let wait = discovery_wait(last, interval);
            waits.push(wait.as_secs());
            last = Some(wait);
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        // An interval shorter than the first retry is kept to.
        let short = Duration::from_secs(1);
        assert_eq!(discovery_wait(None, short), short);
        assert_eq!(discovery_wait(Some(short), short), short);
    }
}
