//! The naive baseline: one automerge document per channel, automerge's
//! own sync protocol over a plain TCP stream with length-prefixed frames.

#[allow(unused_imports)]
use super::*;

/// One replica of the baseline: one automerge document per channel and one
/// sync state per document for the one peer, over a TCP stream.
pub(super) struct AmPeer {
    pub(super) docs: Vec<AutoCommit>,
    pub(super) states: Vec<am::State>,
    pub(super) stream: TcpStream,
}

/// What one sync round (to quiescence) did on one side.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// Frames sent that carried at least one sync message.
    pub(super) frames: u32,
    /// Automerge sync messages sent.
    pub(super) messages: u32,
    pub(super) sent: u64,
    /// When a received message first added changes to a document.
    pub(super) changed_at: Option<Instant>,
}

pub(super) async fn write_frame(s: &mut TcpStream, frame: &[u8]) -> Result<()> {
    s.write_all(&(frame.len() as u32).to_be_bytes()).await?;
    s.write_all(frame).await?;
    Ok(())
}

pub(super) async fn read_frame(s: &mut TcpStream) -> Result<Vec<u8>> {
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
pub(super) fn am_doc(n: usize, text_len: usize, seed: u64) -> Result<AutoCommit> {
    let mut d = AutoCommit::new();
    d.put_object(ROOT, "messages", ObjType::Map)?;
    d.commit();
    for i in 0..n {
        am_post(&mut d, seed + i as u64, &bench_text(seed + i as u64, text_len))?;
    }
    Ok(d)
}

pub(super) fn am_post(d: &mut AutoCommit, seq: u64, text: &str) -> Result<()> {
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
pub(super) async fn am_connect() -> Result<(TcpStream, TcpStream, Proxy)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = Proxy::start(listener.local_addr()?).await?;
    let (dialer, accepted) = tokio::join!(TcpStream::connect(proxy.addr), listener.accept());
    let (dialer, accepted) = (dialer?, accepted?.0);
    dialer.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    Ok((dialer, accepted, proxy))
}

/// Run a round on both sides (the dialer `b` first) and return both reports.
pub(super) async fn am_round(a: &mut AmPeer, b: &mut AmPeer, a_first: bool) -> Result<(Round, Round)> {
    let (ra, rb) = tokio::join!(a.round(a_first), b.round(!a_first));
    Ok((ra?, rb?))
}

#[derive(Debug, Default)]
pub(super) struct AmCatchup {
    pub(super) build_secs: f64,
    pub(super) secs: f64,
    pub(super) frames: u32,
    pub(super) messages: u32,
    pub(super) bytes: Bytes,
    /// Sorted times of one-change applies into a document holding the history.
    pub(super) live_apply: Vec<Duration>,
}

/// A document with `n` messages; a fresh peer connects and syncs it to
/// quiescence. Then (if `samples` > 0) live changes on the same connection.
/// Wait until the store reports a peer's entries stored in `channel` (every
/// such report already queued is taken too), or `at_most`.
pub(super) async fn appended_from_peer(
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

pub(super) async fn am_catchup(
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
pub(super) struct AmReconnect {
    pub(super) frames: u32,
    pub(super) messages: u32,
    pub(super) bytes: Bytes,
    pub(super) fresh_bytes: Bytes,
}

/// `channels` documents synced between two peers; their sync states are
/// persisted (encoded), the connection dropped; a new connection with the
/// decoded states syncs again.
pub(super) async fn am_reconnect(channels: usize, per_channel: usize, text_len: usize) -> Result<AmReconnect> {
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
