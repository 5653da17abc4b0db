//! The state machine driven by hand against in-memory replicas: no store, no
//! socket, no runtime. A fake entry is `device (16 B) | seq (8 B, BE) | filler`,
//! so the fake can check that every feed arrives in order without crypto.

use super::*;
use hearth_core::{DeviceId, FeedPos};

use crate::proto::{MAX_REQUEST, MAX_RESPONSE};

/// Bytes of a fake entry before its filler.
const HEAD: usize = 24;

/// A session that takes more actions than this is taken to loop.
const MAX_ACTIONS: usize = 10_000;

fn wire(n: u8) -> WireId {
    WireId([n; 32])
}

fn device(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

/// Entry `seq` of `device`'s feed, `size` bytes long. The same position always
/// has the same bytes, so replicas that wrote it separately agree on it.
fn entry(device: DeviceId, seq: u64, size: usize) -> Vec<u8> {
    let mut e = Vec::with_capacity(size.max(HEAD));
    e.extend(device.0);
    e.extend(seq.to_be_bytes());
    e.resize(size.max(HEAD), seq as u8);
    e
}

fn parse(bytes: &[u8]) -> Option<(DeviceId, u64)> {
    let device = DeviceId(bytes.get(..16)?.try_into().ok()?);
    let seq = u64::from_be_bytes(bytes.get(16..HEAD)?.try_into().ok()?);
    Some((device, seq))
}

/// A replica in memory: channel -> device -> the feed's entries (seq 1 first).
#[derive(Clone, Debug, Default)]
struct Fake {
    relay: bool,
    channels: BTreeMap<WireId, BTreeMap<DeviceId, Vec<Vec<u8>>>>,
}

impl Fake {
    fn relay() -> Self {
        Fake {
            relay: true,
            ..Fake::default()
        }
    }

    /// Hold a channel (a member joins it) without entries.
    fn join(&mut self, w: WireId) -> &mut Self {
        self.channels.entry(w).or_default();
        self
    }

    /// Make `d`'s feed in `w` hold entries `1..=seq`, each `size` bytes.
    fn write(&mut self, w: WireId, d: DeviceId, seq: u64, size: usize) -> &mut Self {
        let feed = self.channels.entry(w).or_default().entry(d).or_default();
        while (feed.len() as u64) < seq {
            let next = feed.len() as u64 + 1;
            feed.push(entry(d, next, size));
        }
        self
    }

    fn vector(&self, w: &WireId) -> Vector {
        Vector(
            self.channels[w]
                .iter()
                .filter(|(_, feed)| !feed.is_empty())
                .map(|(d, feed)| {
                    let last = feed.last().expect("not empty");
                    (
                        *d,
                        FeedPos {
                            seq: feed.len() as u64,
                            hash: *blake3::hash(last).as_bytes(),
                        },
                    )
                })
                .collect(),
        )
    }

    fn vectors(&self) -> Vec<(WireId, Vector)> {
        self.channels.keys().map(|w| (*w, self.vector(w))).collect()
    }

    /// What the store's `entries_after` does: feed by feed, in seq order, at
    /// least one entry, then within both budgets.
    fn entries_after(&self, w: &WireId, have: &Vector, max_bytes: usize, max_entries: usize) -> Option<EntryBatch> {
        let feeds = self.channels.get(w)?;
        let mut batch = EntryBatch::default();
        let mut bytes = 0;
        for run in have.lacks(&self.vector(w)) {
            for seq in run.from..=run.to {
                let e = &feeds[&run.device][seq as usize - 1];
                if batch.entries.len() >= max_entries || (bytes + e.len() > max_bytes && !batch.entries.is_empty()) {
                    batch.more = true;
                    return Some(batch);
                }
                bytes += e.len();
                batch.entries.push(e.clone());
            }
        }
        Some(batch)
    }

    /// What the store's `ingest` does, minus crypto: in order, no gap, no fork.
    fn ingest(&mut self, w: WireId, entries: Vec<Vec<u8>>) -> Option<IngestReport> {
        if !self.channels.contains_key(&w) && !self.relay {
            return None;
        }
        let feeds = self.channels.entry(w).or_default();
        let mut report = IngestReport::default();
        for bytes in entries {
            let reject = |reason: hearth_store::Refusal| hearth_store::Rejection {
                device: None,
                seq: None,
                reason,
            };
            let Some((d, seq)) = parse(&bytes) else {
                report
                    .rejected
                    .push(reject(hearth_store::Refusal::Malformed("no entry".into())));
                continue;
            };
            let feed = feeds.entry(d).or_default();
            let held = feed.len() as u64;
            if seq == 0 {
                report
                    .rejected
                    .push(reject(hearth_store::Refusal::Malformed("seq 0".into())));
            } else if seq <= held {
                if feed[seq as usize - 1] == bytes {
                    report.duplicates += 1;
                } else {
                    report.rejected.push(reject(hearth_store::Refusal::Forked { seq }));
                }
            } else if seq == held + 1 {
                feed.push(bytes);
                report.accepted += 1;
            } else {
                report
                    .rejected
                    .push(reject(hearth_store::Refusal::Gap { expected: held + 1 }));
            }
        }
        report.vector = self.vector(&w);
        Some(report)
    }

    /// What `drive::serve` answers.
    fn serve(&mut self, req: Request) -> Response {
        match req {
            Request::Hello { summary, relay, .. } => answer_hello(&self.vectors(), &summary, relay, self.relay),
            Request::Fetch { wire, have, max_bytes } => {
                let (bytes, count) = fetch_budget(max_bytes);
                match self.entries_after(&wire, &have, bytes, count) {
                    Some(b) => Response::Entries {
                        entries: b.entries.into_iter().map(ByteBuf::from).collect(),
                        more: b.more,
                    },
                    None => Response::Refused {
                        reason: "unknown channel".into(),
                    },
                }
            }
            Request::Push { wire, entries } => {
                match self.ingest(wire, entries.into_iter().map(ByteBuf::into_vec).collect()) {
                    Some(r) => Response::Ack {
                        vector: r.vector,
                        accepted: r.accepted as u32,
                        rejected: r.rejected.len() as u32,
                        reason: r.rejected.first().map(|x| x.reason.to_string()),
                    },
                    None => Response::Refused {
                        reason: "unknown channel".into(),
                    },
                }
            }
            Request::Link { .. } => Response::Refused {
                reason: "no link offer".into(),
            },
        }
    }
}

/// What crossed the wire in one session.
#[derive(Debug, Default)]
struct Run {
    outcome: Outcome,
    hellos: usize,
    fetches: usize,
    pushes: usize,
    /// Entries in each Entries answer and each Push, in order.
    batches: Vec<usize>,
    largest_request: usize,
    largest_response: usize,
}

/// Drive `session` on `local`, with `peer` answering each request. Every frame
/// goes through its codec, so the frame caps hold too.
fn drive(mut session: Session, local: &mut Fake, mut peer: impl FnMut(Request) -> Response) -> Run {
    let mut run = Run::default();
    let mut action = session.start();
    for _ in 0..MAX_ACTIONS {
        action = match action {
            Action::Send(req) => {
                let bytes = req.encode();
                assert!(bytes.len() <= MAX_REQUEST, "request of {} bytes", bytes.len());
                run.largest_request = run.largest_request.max(bytes.len());
                let req = Request::decode(&bytes).expect("requests decode");
                match &req {
                    Request::Hello { .. } => run.hellos += 1,
                    Request::Fetch { .. } => run.fetches += 1,
                    Request::Push { entries, .. } => {
                        run.pushes += 1;
                        run.batches.push(entries.len());
                    }
                    Request::Link { .. } => panic!("a session never asks for a link bundle"),
                }
                let resp = peer(req);
                let bytes = resp.encode();
                assert!(bytes.len() <= MAX_RESPONSE, "response of {} bytes", bytes.len());
                run.largest_response = run.largest_response.max(bytes.len());
                let resp = Response::decode(&bytes).expect("responses decode");
                if let Response::Entries { entries, .. } = &resp {
                    run.batches.push(entries.len());
                }
                session.on_response(resp)
            }
            Action::Read { wire, have } => {
                session.on_entries(local.entries_after(&wire, &have, BATCH_BYTES, BATCH_ENTRIES))
            }
            Action::Ingest { wire, entries } => session.on_ingested(local.ingest(wire, entries)),
            Action::Done => {
                run.outcome = session.into_outcome();
                assert_eq!(
                    run.outcome.round_trips as usize,
                    run.hellos + run.fetches + run.pushes,
                    "round trips count requests"
                );
                return run;
            }
        };
    }
    panic!("the session did not end within {MAX_ACTIONS} actions");
}

/// A full session from `a` to `b`.
fn sync(a: &mut Fake, b: &mut Fake) -> Run {
    let session = Session::full(a.vectors(), a.relay);
    drive(session, a, |req| b.serve(req))
}

fn clean(o: &Outcome) {
    assert_eq!(o.failed, None);
    assert_eq!((o.refused_here, o.refused_there, &o.refusal), (0, 0, &None));
}

/// Three channels, a few feeds each, small entries.
fn populated() -> Fake {
    let mut f = Fake::default();
    for c in 1..=3 {
        for d in 1..=3 {
            f.write(wire(c), device(d), u64::from(c * d), 100);
        }
    }
    f
}

#[test]
fn identical_replicas_settle_in_one_round_trip() {
    let mut a = populated();
    let mut b = a.clone();
    let run = sync(&mut a, &mut b);
    let o = &run.outcome;
    clean(o);
    assert!(o.in_sync_at_hello);
    assert_eq!((o.round_trips, o.channels, o.received, o.sent), (1, 3, 0, 0));
    assert_eq!(run.hellos, 1);
}

#[test]
fn a_hello_for_100_channels_is_under_2_kb_both_ways() {
    let mut a = Fake::default();
    for c in 0..100 {
        for d in 1..=4 {
            a.write(wire(c), device(d), 7, HEAD);
        }
    }
    let req = hello(&a.vectors(), false);
    let in_sync = answer_hello(&a.vectors(), summary(&req), false, false);
    let (req_len, resp_len) = (req.encode().len(), in_sync.encode().len());
    // Every channel of a relay requester that the responder also holds: still nothing to list.
    let relay_resp_len = answer_hello(&a.vectors(), summary(&req), true, true).encode().len();
    eprintln!("hello for 100 channels: request {req_len} B, in-sync answer {resp_len} B (relay {relay_resp_len} B)");
    assert!(req_len < 2048, "{req_len}");
    assert!(resp_len < 2048 && relay_resp_len < 2048, "{resp_len} {relay_resp_len}");

    // When every channel differs the answer carries the vectors, and still fits a frame.
    let mut b = a.clone();
    for c in 0..100 {
        b.write(wire(c), device(1), 8, HEAD);
    }
    let differ = answer_hello(&b.vectors(), summary(&req), false, false).encode().len();
    eprintln!("hello for 100 channels: answer when all differ {differ} B");
    assert!(differ < MAX_RESPONSE);
    let run = sync(&mut a, &mut b);
    clean(&run.outcome);
    assert_eq!(
        (run.hellos, run.fetches, run.pushes, run.outcome.received),
        (1, 100, 0, 100)
    );
}

fn summary(req: &Request) -> &[proto::ChannelDigest] {
    match req {
        Request::Hello { summary, .. } => summary,
        other => panic!("not a hello: {other:?}"),
    }
}

#[test]
fn disjoint_and_overlapping_replicas_converge_both_ways_in_one_session() {
    let (shared, joined, only_a) = (wire(1), wire(2), wire(3));
    let mut a = Fake::default();
    a.write(shared, device(1), 10, 50)
        .write(shared, device(2), 5, 50)
        .write(joined, device(1), 4, 50)
        .write(only_a, device(1), 3, 50);
    let mut b = Fake::default();
    // Device 2's feed overlaps (b holds more of it); device 3's is b's alone.
    b.write(shared, device(2), 8, 50)
        .write(shared, device(3), 7, 50)
        .join(joined);

    for a_starts in [true, false] {
        let (mut a, mut b) = (a.clone(), b.clone());
        let run = if a_starts {
            sync(&mut a, &mut b)
        } else {
            sync(&mut b, &mut a)
        };
        let o = &run.outcome;
        clean(o);
        assert!(!o.in_sync_at_hello);
        let (to_a, to_b) = (3 + 7, 10 + 4);
        let (received, sent) = if a_starts { (to_a, to_b) } else { (to_b, to_a) };
        assert_eq!((o.received, o.sent), (received, sent), "a starts: {a_starts}");
        for w in [shared, joined] {
            assert_eq!(a.vector(&w), b.vector(&w));
            assert_eq!(o.peer[&w], a.vector(&w), "the outcome knows the peer's new vector");
        }
        assert!(
            !b.channels.contains_key(&only_a),
            "a member never takes a channel it lacks"
        );
        assert!(sync(&mut a, &mut b).outcome.in_sync_at_hello);
        assert!(sync(&mut b, &mut a).outcome.in_sync_at_hello);
    }
}

#[test]
fn a_large_backlog_moves_in_bounded_batches() {
    let w = wire(1);
    let n = 2 * BATCH_ENTRIES as u64 + 100;
    let mut full = Fake::default();
    full.write(w, device(1), n / 2, HEAD)
        .write(w, device(2), n - n / 2, HEAD);
    let mut empty = Fake::default();
    empty.join(w);
    let trips = n.div_ceil(BATCH_ENTRIES as u64) as usize;

    // Pulled: Fetch after Fetch, each answer within the count budget.
    let (mut a, mut b) = (empty.clone(), full.clone());
    let run = sync(&mut a, &mut b);
    clean(&run.outcome);
    assert_eq!((run.fetches, run.pushes, run.outcome.received), (trips, 0, n));
    assert!(run.batches.iter().all(|&k| k <= BATCH_ENTRIES), "{:?}", run.batches);
    assert_eq!(a.vector(&w), b.vector(&w));

    // Pushed: the same bounds the other way.
    let (mut a, mut b) = (full.clone(), empty.clone());
    let run = sync(&mut a, &mut b);
    clean(&run.outcome);
    assert_eq!((run.fetches, run.pushes, run.outcome.sent), (0, trips, n));
    assert!(run.batches.iter().all(|&k| k <= BATCH_ENTRIES), "{:?}", run.batches);
    assert_eq!(a.vector(&w), b.vector(&w));

    // Big entries: the byte budget binds first.
    let size = 90 * 1024;
    let per_batch = BATCH_BYTES / size;
    let mut big = Fake::default();
    big.write(w, device(1), 40, size);
    let (mut a, mut b) = (empty.clone(), big.clone());
    let run = sync(&mut a, &mut b);
    clean(&run.outcome);
    assert_eq!(run.fetches, 40usize.div_ceil(per_batch));
    assert!(run.batches.iter().all(|&k| k <= per_batch), "{:?}", run.batches);
    assert!(run.largest_response <= BATCH_BYTES + 1024, "{}", run.largest_response);
    let (mut a, mut b) = (big, empty);
    let run = sync(&mut a, &mut b);
    clean(&run.outcome);
    assert_eq!(run.pushes, 40usize.div_ceil(per_batch));
    assert!(run.largest_request <= BATCH_BYTES + 1024, "{}", run.largest_request);
    assert_eq!(a.vector(&w), b.vector(&w));
}

/// A peer that claims `claimed` for channel 1 in its Hello, then answers
/// Fetch and Push with `fetch` and `push`.
fn liar(
    claimed: Vector,
    fetch: impl Fn(&Vector) -> Response,
    push: impl Fn() -> Response,
) -> impl FnMut(Request) -> Response {
    move |req| match req {
        Request::Hello { .. } => Response::Hello {
            differ: vec![(wire(1), claimed.clone())],
            extra: vec![],
            want: vec![],
            relay: false,
        },
        Request::Fetch { have, .. } => fetch(&have),
        Request::Push { .. } => push(),
        Request::Link { .. } => panic!("a session never asks for a link bundle"),
    }
}

#[test]
fn a_peer_that_withholds_entries_or_acks_without_progress_does_not_stall_the_session() {
    let w = wire(1);
    let mut local = Fake::default();
    local.write(w, device(1), 5, HEAD);
    let mut ahead = local.clone();
    ahead.write(w, device(1), 9, HEAD).write(w, device(2), 3, HEAD);
    let claimed = ahead.vector(&w);
    let unchanged = || Response::Ack {
        vector: Vector::default(),
        accepted: 0,
        rejected: 0,
        reason: None,
    };

    // Empty Entries: stop pulling, go on to push.
    let empty = |_: &Vector| Response::Entries {
        entries: vec![],
        more: true,
    };
    let run = drive(
        Session::full(local.vectors(), false),
        &mut local.clone(),
        liar(claimed.clone(), empty, unchanged),
    );
    assert_eq!((run.fetches, run.pushes, run.outcome.failed), (1, 0, None));

    // Entries that are all already held (the same first entry, again and
    // again): nothing changes here, so pulling stops.
    let first = local.channels[&w][&device(1)][0].clone();
    let stale = |_: &Vector| Response::Entries {
        entries: vec![ByteBuf::from(first.clone())],
        more: true,
    };
    let run = drive(
        Session::full(local.vectors(), false),
        &mut local.clone(),
        liar(claimed.clone(), stale, unchanged),
    );
    assert_eq!((run.fetches, run.outcome.received, run.outcome.failed), (1, 0, None));

    // The peer claims nothing (so it lacks everything here) and its Acks never
    // move its vector: one Push, then stop.
    let none = |_: &Vector| -> Response { panic!("nothing to pull") };
    let run = drive(
        Session::full(local.vectors(), false),
        &mut local.clone(),
        liar(Vector::default(), none, unchanged),
    );
    assert_eq!((run.pushes, run.outcome.sent, run.outcome.failed), (1, 0, None));

    // Nor when the Ack claims entries were accepted but the vector says otherwise.
    let claims = || Response::Ack {
        vector: Vector::default(),
        accepted: 5,
        rejected: 0,
        reason: None,
    };
    let run = drive(
        Session::full(local.vectors(), false),
        &mut local.clone(),
        liar(Vector::default(), none, claims),
    );
    assert_eq!((run.pushes, run.outcome.failed), (1, None));

    // A peer that really takes part of each batch is still followed to the end.
    let mut taker = Fake::default();
    taker.join(w);
    let partial = move |req: Request| match req {
        Request::Push { wire, mut entries } => {
            entries.truncate(2);
            taker.serve(Request::Push { wire, entries })
        }
        other => taker.serve(other),
    };
    let run = drive(Session::full(local.vectors(), false), &mut local.clone(), partial);
    assert_eq!((run.pushes, run.outcome.sent, run.outcome.failed), (3, 5, None));
}

/// A wrong answer to some requests (`None`: let the honest peer answer).
type Answer = Box<dyn Fn(&Request) -> Option<Response>>;

#[test]
fn unexpected_answers_fail_the_session() {
    let w = wire(1);
    let mut local = Fake::default();
    local.write(w, device(1), 5, HEAD);
    let mut peer = Fake::default();
    peer.write(w, device(2), 5, HEAD);
    let entries = || Response::Entries {
        entries: vec![],
        more: false,
    };
    let ack = || Response::Ack {
        vector: Vector::default(),
        accepted: 0,
        rejected: 0,
        reason: None,
    };
    let hello = || Response::Hello {
        differ: vec![],
        extra: vec![],
        want: vec![],
        relay: false,
    };
    let refused = || Response::Refused { reason: "no".into() };
    let link = || Response::Link {
        sealed: ByteBuf::from(vec![1, 2, 3]),
    };
    let wrong: [(&str, Answer); 6] = [
        (
            "entries to a hello",
            Box::new(move |r| matches!(r, Request::Hello { .. }).then(entries)),
        ),
        (
            "an ack to a hello",
            Box::new(move |r| matches!(r, Request::Hello { .. }).then(ack)),
        ),
        (
            "a refused hello",
            Box::new(move |r| matches!(r, Request::Hello { .. }).then(refused)),
        ),
        (
            "an ack to a fetch",
            Box::new(move |r| matches!(r, Request::Fetch { .. }).then(ack)),
        ),
        (
            "a hello to a push",
            Box::new(move |r| matches!(r, Request::Push { .. }).then(hello)),
        ),
        (
            "a link bundle to a fetch",
            Box::new(move |r| matches!(r, Request::Fetch { .. }).then(link)),
        ),
    ];
    for (what, answer) in wrong {
        let mut peer = peer.clone();
        let run = drive(Session::full(local.vectors(), false), &mut local.clone(), |req| {
            answer(&req).unwrap_or_else(|| peer.serve(req))
        });
        assert!(run.outcome.failed.is_some(), "{what}: {:?}", run.outcome);
        assert_eq!(
            run.outcome.round_trips,
            run.hellos as u32 + run.fetches as u32 + run.pushes as u32
        );
    }

    // A refused Fetch or Push is not a failure: the session goes on with the
    // next channel (here: none).
    for on_fetch in [true, false] {
        let run = drive(
            Session::full(local.vectors(), false),
            &mut local.clone(),
            |req| match req {
                Request::Fetch { .. } if on_fetch => refused(),
                Request::Push { .. } => refused(),
                other => peer.clone().serve(other),
            },
        );
        assert_eq!(run.outcome.failed, None);
        assert_eq!(run.outcome.refusal.as_deref(), Some("no"));
    }
}

#[test]
fn answer_hello_lists_what_a_relay_wants_and_what_a_relay_may_take() {
    let (both, only_req, only_resp) = (wire(1), wire(2), wire(3));
    let mut requester = Fake::default();
    requester
        .write(both, device(1), 3, HEAD)
        .write(only_req, device(1), 2, HEAD);
    let mut responder = Fake::default();
    responder
        .write(both, device(1), 2, HEAD)
        .write(only_resp, device(2), 4, HEAD);
    let req = hello(&requester.vectors(), false);
    let local = responder.vectors();
    let differ = vec![(both, responder.vector(&both))];

    let cases = [
        // (requester is a relay, responder is a relay) -> (extra, want)
        ((false, false), (vec![], vec![])),
        ((false, true), (vec![], vec![proto::tag(&only_req)])),
        ((true, false), (vec![(only_resp, responder.vector(&only_resp))], vec![])),
    ];
    for ((requester_relay, i_am_relay), (extra, want)) in cases {
        let got = answer_hello(&local, summary(&req), requester_relay, i_am_relay);
        assert_eq!(
            got,
            Response::Hello {
                differ: differ.clone(),
                extra,
                want,
                relay: i_am_relay
            }
        );
    }
}

#[test]
fn relays_take_every_channel_members_only_their_own() {
    let (a_only, shared, b_only) = (wire(1), wire(2), wire(3));
    let mut member = Fake::default();
    member
        .write(a_only, device(1), 6, HEAD)
        .write(shared, device(1), 3, HEAD)
        .write(shared, device(2), 2, HEAD);

    // A member syncing with a relay: the relay wants everything it lacks.
    let (mut m, mut r) = (member.clone(), Fake::relay());
    r.write(shared, device(2), 4, HEAD);
    let run = sync(&mut m, &mut r);
    clean(&run.outcome);
    assert_eq!((run.outcome.sent, run.outcome.received), (6 + 3, 2));
    assert_eq!(m.vectors(), r.vectors());

    // A relay syncing with a member: the member lists its other channels as
    // extra, the relay takes them; the member takes none of the relay's.
    let (mut r, mut m) = (Fake::relay(), member.clone());
    r.write(b_only, device(3), 2, HEAD).write(shared, device(2), 4, HEAD);
    let run = sync(&mut r, &mut m);
    clean(&run.outcome);
    assert_eq!((run.outcome.received, run.outcome.sent), (6 + 3, 2));
    assert_eq!(r.vector(&a_only), m.vector(&a_only));
    assert_eq!(r.vector(&shared), m.vector(&shared));
    assert!(!m.channels.contains_key(&b_only));
    assert!(sync(&mut r, &mut m).outcome.in_sync_at_hello);

    // A member ignores channels a peer offers it unasked.
    let mut m = member.clone();
    let offered = Fake::default().write(b_only, device(3), 2, HEAD).vector(&b_only);
    let run = drive(Session::full(m.vectors(), false), &mut m, |req| match req {
        Request::Hello { .. } => Response::Hello {
            differ: vec![],
            extra: vec![(b_only, offered.clone())],
            want: vec![],
            relay: false,
        },
        other => panic!("asked {other:?}"),
    });
    assert_eq!((run.outcome.round_trips, run.outcome.failed), (1, None));
    assert!(!m.channels.contains_key(&b_only));
}

#[test]
fn a_push_session_only_pushes() {
    let w = wire(1);
    let mut local = Fake::default();
    local.write(w, device(1), 10, HEAD);
    let mut peer = Fake::default();
    // The peer holds entries the local side lacks: a push session leaves them.
    peer.write(w, device(1), 4, HEAD).write(w, device(2), 3, HEAD);
    let before = local.clone();
    let session = Session::push(w, local.vector(&w), peer.vector(&w));
    let run = drive(session, &mut local, |req| peer.serve(req));
    clean(&run.outcome);
    assert_eq!((run.hellos, run.fetches, run.pushes), (0, 0, 1));
    assert_eq!((run.outcome.sent, run.outcome.received), (6, 0));
    assert_eq!(local.vectors(), before.vectors());
    assert_eq!(peer.vector(&w).seq(&device(1)), 10);
    assert_eq!(run.outcome.peer[&w], peer.vector(&w));

    // A peer that already holds everything: nothing is sent at all.
    let session = Session::push(w, local.vector(&w), peer.vector(&w));
    let run = drive(session, &mut local, |req| -> Response { panic!("sent {req:?}") });
    assert_eq!(run.outcome.round_trips, 0);
}
