//! The state machine driven by hand against in-memory replicas: no store, no
//! socket, no runtime. A fake entry is `device (16 B) | seq (8 B, BE) | branch
//! (1 B) | filler`, so the fake can check that every feed arrives in order
//! without crypto; the branch stands for the previous entry's hash (a fork).

use super::*;
use hearth_core::{DeviceId, FeedPos};
use std::collections::BTreeSet;

use crate::proto::{MAX_REQUEST, MAX_RESPONSE};

/// Bytes of a fake entry before its filler.
const HEAD: usize = 25;

/// A session that takes more actions than this is taken to loop.
const MAX_ACTIONS: usize = 10_000;

fn wire(n: u8) -> WireId {
    WireId([n; 32])
}

/// The access key of a fake channel.
fn access(w: &WireId) -> SecretKey {
    SecretKey::from_bytes(*blake3::hash(&w.0).as_bytes())
}

/// The requester's and the responder's peer ids in every test session.
fn ends() -> Ends {
    Ends {
        requester: b"peer a".to_vec(),
        responder: b"peer b".to_vec(),
    }
}

fn device(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

/// Entry `seq` of `device`'s feed, `size` bytes long. The same position always
/// has the same bytes, so replicas that wrote it separately agree on it.
fn entry(device: DeviceId, seq: u64, size: usize) -> Vec<u8> {
    entry_on(device, seq, size, 0)
}

/// Entry `seq` of `device`'s feed on a branch: 0 is the feed as its author
/// wrote it; another is a branch of a fork, which may follow branch 0 or
/// itself only (an author that forked signed two entries onto one).
fn entry_on(device: DeviceId, seq: u64, size: usize, branch: u8) -> Vec<u8> {
    let mut e = Vec::with_capacity(size.max(HEAD));
    e.extend(device.0);
    e.extend(seq.to_be_bytes());
    e.push(branch);
    e.resize(size.max(HEAD), seq as u8);
    e
}

fn parse(bytes: &[u8]) -> Option<(DeviceId, u64)> {
    let device = DeviceId(bytes.get(..16)?.try_into().ok()?);
    let seq = u64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?);
    bytes.get(24)?;
    Some((device, seq))
}

/// A replica in memory: channel -> device -> the feed's entries (seq 1 first).
#[derive(Clone, Debug, Default)]
struct Fake {
    relay: bool,
    channels: BTreeMap<WireId, BTreeMap<DeviceId, Vec<Vec<u8>>>>,
    /// A relay's granted channels.
    grants: BTreeSet<WireId>,
    /// Revocation notices a relay took.
    notices: Vec<Vec<u8>>,
    /// Channels whose peers this replica serves nothing (its roster
    /// removed them): what `Replica::vet` withholds.
    barred: BTreeSet<WireId>,
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

    /// Make `d`'s feed in `w` go on to `seq` on a branch of a fork.
    fn branch(&mut self, w: WireId, d: DeviceId, seq: u64, branch: u8, size: usize) -> &mut Self {
        let feed = self.channels.entry(w).or_default().entry(d).or_default();
        while (feed.len() as u64) < seq {
            let next = feed.len() as u64 + 1;
            feed.push(entry_on(d, next, size, branch));
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

    /// A member's keys are its channels'; a relay's are those granted.
    fn keys(&self) -> Keyring {
        let wires: Vec<WireId> = if self.relay {
            self.grants.iter().copied().collect()
        } else {
            self.channels.keys().copied().collect()
        };
        wires.iter().map(|w| (*w, access(w))).collect()
    }

    /// A relay granted `w` by a member.
    fn granted(&mut self, w: WireId) -> &mut Self {
        self.grants.insert(w);
        self
    }

    /// Proofs for a session from this replica (always "peer a").
    fn auth(&self) -> Auth {
        let mut a = Auth::new(self.keys(), ends().requester, ends().responder);
        a.nonce = [self.channels.len() as u8; 16];
        a
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
            } else if seq == held + 1
                && held > 0
                && feed[held as usize - 1][24] != 0
                && feed[held as usize - 1][24] != bytes[24]
            {
                // Signed onto another version of the entry held last.
                report
                    .rejected
                    .push(reject(hearth_store::Refusal::Forked { seq: held }));
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
            Request::Hello { summary, nonce, .. } => {
                answer_hello(&self.vectors(), &self.keys(), &nonce, &summary, &ends(), self.relay).0
            }
            Request::Grant { grants, .. } if self.relay => {
                let mut vectors = Vec::new();
                for (w, k) in grants {
                    if k.0 == *access(&w).expose() {
                        self.grants.insert(w);
                        self.channels.entry(w).or_default();
                        vectors.push((w, self.vector(&w)));
                    }
                }
                Response::Granted { vectors }
            }
            Request::Grant { .. } => Response::Refused {
                reason: "not a relay".into(),
            },
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
                let entries: Vec<Vec<u8>> = entries.into_iter().map(ByteBuf::into_vec).collect();
                // The feeds pushed (fake entries: their device in front).
                let pushed = Vector(
                    entries
                        .iter()
                        .filter_map(|e| parse(e))
                        .map(|(d, seq)| (d, hearth_core::FeedPos { seq, hash: [0; 32] }))
                        .collect(),
                );
                match self.ingest(wire, entries) {
                    // As a node answers (protocol 12): the pushed feeds only.
                    Some(r) => Response::Ack {
                        vector: crate::drive::acked(r.vector, &pushed),
                        accepted: r.accepted as u32,
                        rejected: r.rejected.len() as u32,
                        reason: r.rejected.first().map(|x| x.reason.to_string()),
                    },
                    None => Response::Refused {
                        reason: "unknown channel".into(),
                    },
                }
            }
            Request::Revoke { notices, .. } if self.relay => {
                self.notices.extend(notices.into_iter().map(ByteBuf::into_vec));
                Response::Noted {
                    held: self.notices.len() as u32,
                }
            }
            Request::Link { .. } | Request::Join { .. } | Request::Revoke { .. } => Response::Refused {
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
    grants: usize,
    revokes: usize,
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
                    Request::Grant { .. } => run.grants += 1,
                    Request::Revoke { .. } => {
                        assert_eq!(run.pushes + run.fetches, 0, "notices go before any entry");
                        run.revokes += 1
                    }
                    Request::Fetch { .. } => run.fetches += 1,
                    Request::Push { entries, .. } => {
                        run.pushes += 1;
                        run.batches.push(entries.len());
                    }
                    Request::Link { .. } => panic!("a session never asks for a link bundle"),
                    Request::Join { .. } => panic!("a session never asks to join"),
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
            Action::Vet { wires, .. } => session.on_vetted(Vetting::Allowed {
                wires: wires.into_iter().filter(|w| !local.barred.contains(w)).collect(),
                device: None,
            }),
            Action::Done => {
                run.outcome = session.into_outcome();
                assert_eq!(
                    run.outcome.round_trips as usize,
                    run.hellos + run.grants + run.revokes + run.fetches + run.pushes,
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
    let session = Session::full(a.vectors(), a.relay, a.auth());
    drive(session, a, |req| b.serve(req))
}

/// A full session from member `a` to `b`, a relay `a`'s user configured.
fn sync_granting(a: &mut Fake, b: &mut Fake) -> Run {
    let session = Session::full(a.vectors(), a.relay, a.auth().granting(true));
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
fn a_peer_its_replica_withholds_a_channel_from_is_neither_pulled_from_nor_pushed_to() {
    // `a` holds more of channel 2 than `b`, `b` more of channel 1; `a`'s
    // roster removed `b`'s user from channel 1 (what `Replica::vet` decides).
    let mut a = populated();
    let mut b = populated();
    a.write(wire(2), device(9), 5, 100);
    b.write(wire(1), device(8), 4, 100);
    a.barred.insert(wire(1));
    let run = sync(&mut a, &mut b);
    let o = &run.outcome;
    clean(o);
    assert_eq!(o.withheld, 1);
    assert!(!o.proved.contains(&wire(1)) && !o.peer.contains_key(&wire(1)), "{o:?}");
    assert_eq!((o.received, o.sent), (0, 5), "channel 2 pushed, channel 1 left alone");
    assert_eq!(a.vector(&wire(1)).0.get(&device(8)), None, "nothing pulled from it");
}

#[test]
fn a_hello_for_100_channels_is_under_2_kb_both_ways() {
    let mut a = Fake::default();
    for c in 0..100 {
        for d in 1..=4 {
            a.write(wire(c), device(d), 7, HEAD);
        }
    }
    let auth = a.auth();
    let req = hello(&a.vectors(), &auth, false);
    let (in_sync, proved) = answer_hello(&a.vectors(), &a.keys(), &auth.nonce, summary(&req), &ends(), false);
    assert_eq!(proved.len(), 100);
    let (req_len, resp_len) = (req.encode().len(), in_sync.encode().len());
    eprintln!("hello for 100 channels: request {req_len} B, in-sync answer {resp_len} B");
    assert!(req_len + resp_len < 2048, "{req_len} + {resp_len}");

    // When every channel differs the answer carries the vectors, and still fits a frame.
    let mut b = a.clone();
    for c in 0..100 {
        b.write(wire(c), device(1), 8, HEAD);
    }
    let differ = answer_hello(&b.vectors(), &b.keys(), &auth.nonce, summary(&req), &ends(), false)
        .0
        .encode()
        .len();
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
    let keys: Keyring = [(wire(1), access(&wire(1)))].into();
    move |req| match req {
        Request::Hello { nonce, summary, .. } => {
            answer_hello(&[(wire(1), claimed.clone())], &keys, &nonce, &summary, &ends(), false).0
        }
        Request::Fetch { have, .. } => fetch(&have),
        Request::Push { .. } => push(),
        Request::Link { .. } | Request::Grant { .. } | Request::Join { .. } | Request::Revoke { .. } => {
            panic!("not asked of a member")
        }
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
        Session::full(local.vectors(), false, local.auth()),
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
        Session::full(local.vectors(), false, local.auth()),
        &mut local.clone(),
        liar(claimed.clone(), stale, unchanged),
    );
    assert_eq!((run.fetches, run.outcome.received, run.outcome.failed), (1, 0, None));

    // The peer claims nothing (so it lacks everything here) and its Acks never
    // move its vector: one Push, then stop.
    let none = |_: &Vector| -> Response { panic!("nothing to pull") };
    let run = drive(
        Session::full(local.vectors(), false, local.auth()),
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
        Session::full(local.vectors(), false, local.auth()),
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
    let run = drive(
        Session::full(local.vectors(), false, local.auth()),
        &mut local.clone(),
        partial,
    );
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
        who: None,
        certs: Vec::new(),
        removed: Vec::new(),
        matched: ByteBuf::new(),
        proof: [0; 16],
        differ: vec![],
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
        let run = drive(
            Session::full(local.vectors(), false, local.auth()),
            &mut local.clone(),
            |req| answer(&req).unwrap_or_else(|| peer.serve(req)),
        );
        assert!(run.outcome.failed.is_some(), "{what}: {:?}", run.outcome);
        assert_eq!(
            run.outcome.round_trips,
            (run.hellos + run.grants + run.fetches + run.pushes) as u32
        );
    }

    // A refused Fetch or Push is not a failure: the session goes on with the
    // next channel (here: none).
    for on_fetch in [true, false] {
        let run = drive(
            Session::full(local.vectors(), false, local.auth()),
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
fn answer_hello_matches_only_channels_whose_key_it_holds() {
    let (both, only_req, only_resp) = (wire(1), wire(2), wire(3));
    let mut requester = Fake::default();
    requester
        .write(only_req, device(1), 2, HEAD)
        .write(both, device(1), 3, HEAD);
    let mut responder = Fake::default();
    responder
        .write(both, device(1), 2, HEAD)
        .write(only_resp, device(2), 4, HEAD);
    let auth = requester.auth();
    let req = hello(&requester.vectors(), &auth, false);
    let (got, proved) = answer_hello(
        &responder.vectors(),
        &responder.keys(),
        &auth.nonce,
        summary(&req),
        &ends(),
        false,
    );
    // `both` is the Hello's first channel (wire order).
    let matched = auth::bitmap(2, |i| i == 0);
    let proof = auth::answer([&access(&both)], &auth.nonce, &ends(), &matched);
    assert_eq!(
        got,
        Response::Hello {
            who: None,
            certs: Vec::new(),
            removed: Vec::new(),
            matched: ByteBuf::from(matched),
            proof,
            differ: vec![(0, responder.vector(&both))],
            relay: false,
        }
    );
    assert_eq!(proved, vec![both]);

    // A stranger (no key) matches nothing and proves nothing; a Hello names
    // no channel it can recognise.
    let (got, proved) = answer_hello(&[], &Keyring::new(), &auth.nonce, summary(&req), &ends(), false);
    assert!(proved.is_empty());
    assert_eq!(
        got,
        Response::Hello {
            who: None,
            certs: Vec::new(),
            removed: Vec::new(),
            matched: ByteBuf::from(vec![0]),
            proof: [0; 16],
            differ: vec![],
            relay: false,
        }
    );
    let tags: Vec<[u8; 8]> = summary(&req).iter().map(|d| d.tag).collect();
    assert!(tags.iter().all(|t| t[..] != both.0[..8] && t[..] != only_req.0[..8]));
    // Another nonce, other tags: two Hellos cannot be linked by their tags.
    let mut again = requester.auth();
    again.nonce = [99; 16];
    let req2 = hello(&requester.vectors(), &again, false);
    assert!(summary(&req2).iter().all(|d| !tags.contains(&d.tag)));
    // Nor proofs made for another pair of peers.
    let other_pair = Ends {
        requester: b"peer a".to_vec(),
        responder: b"peer c".to_vec(),
    };
    let (_, proved) = answer_hello(
        &responder.vectors(),
        &responder.keys(),
        &auth.nonce,
        summary(&req),
        &other_pair,
        false,
    );
    assert!(proved.is_empty(), "a proof is good for one pair of peers");
}

#[test]
fn a_forged_or_inconsistent_answer_fails_the_session_as_the_peers_fault() {
    let w = wire(1);
    let mut local = Fake::default();
    local.write(w, device(1), 5, HEAD);
    let mut peer = Fake::default();
    peer.write(w, device(2), 5, HEAD);
    let forged: [(&str, Answer); 3] = [
        (
            "a proof without the key",
            Box::new(|r| {
                matches!(r, Request::Hello { .. }).then(|| Response::Hello {
                    who: None,
                    certs: Vec::new(),
                    removed: Vec::new(),
                    matched: ByteBuf::from(vec![1]),
                    proof: [7; 16],
                    differ: vec![(0, Vector::default())],
                    relay: false,
                })
            }),
        ),
        (
            "a bitmap of the wrong size",
            Box::new(|r| {
                matches!(r, Request::Hello { .. }).then(|| Response::Hello {
                    who: None,
                    certs: Vec::new(),
                    removed: Vec::new(),
                    matched: ByteBuf::from(vec![0, 0]),
                    proof: [0; 16],
                    differ: vec![],
                    relay: false,
                })
            }),
        ),
        (
            "a differing channel it did not prove",
            Box::new(|r| {
                matches!(r, Request::Hello { .. }).then(|| Response::Hello {
                    who: None,
                    certs: Vec::new(),
                    removed: Vec::new(),
                    matched: ByteBuf::from(vec![0]),
                    proof: [0; 16],
                    differ: vec![(0, Vector::default())],
                    relay: false,
                })
            }),
        ),
    ];
    for (what, answer) in forged {
        let mut peer = peer.clone();
        let session = Session::full(local.vectors(), false, local.auth());
        let run = drive(session, &mut local.clone(), |req| {
            answer(&req).unwrap_or_else(|| peer.serve(req))
        });
        assert!(run.outcome.failed.is_some(), "{what}: {:?}", run.outcome);
        assert!(run.outcome.fault_here, "{what}");
        assert!(run.outcome.proved.is_empty(), "{what}");
        assert_eq!((run.fetches, run.pushes), (0, 0), "{what}: nothing served after it");
    }
}

#[test]
fn a_member_grants_its_relay_and_no_other_peer_learns_its_channels() {
    let (a_only, shared) = (wire(1), wire(2));
    let mut member = Fake::default();
    member
        .write(a_only, device(1), 6, HEAD)
        .write(shared, device(1), 3, HEAD)
        .write(shared, device(2), 2, HEAD);

    // A relay its user configured: granted every channel it did not prove,
    // then synced both ways.
    let (mut m, mut r) = (member.clone(), Fake::relay());
    r.write(shared, device(2), 4, HEAD);
    let run = sync_granting(&mut m, &mut r);
    clean(&run.outcome);
    assert_eq!((run.hellos, run.grants), (1, 1));
    assert_eq!(run.outcome.granted, 2);
    assert_eq!((run.outcome.sent, run.outcome.received), (6 + 3, 2));
    assert_eq!(m.vectors(), r.vectors());
    assert_eq!(r.grants, [a_only, shared].into());
    // Granted once: the next session proves both in one round trip.
    let run = sync_granting(&mut m, &mut r);
    assert!(run.outcome.in_sync_at_hello);
    assert_eq!((run.outcome.round_trips, run.grants), (1, 0));

    // Revocation notices go to a relay, for the channels it proved only,
    // before any entry, once; never to a member.
    let notices = vec![
        (shared, b"notice of shared".to_vec()),
        (wire(9), b"another channel".to_vec()),
    ];
    let session = Session::full(m.vectors(), m.relay, m.auth().with_notices(notices.clone()));
    let run = drive(session, &mut m, |req| r.serve(req));
    clean(&run.outcome);
    assert_eq!(run.revokes, 1);
    assert_eq!(r.notices, vec![b"notice of shared".to_vec()]);
    assert_eq!(run.outcome.noted, vec![b"notice of shared".to_vec()]);
    let mut other = member.clone();
    let session = Session::full(m.vectors(), m.relay, m.auth().with_notices(notices));
    let run = drive(session, &mut m, |req| other.serve(req));
    assert_eq!((run.revokes, run.outcome.noted.len()), (0, 0), "a member takes none");

    // A relay nobody configured holds the same channel's entries, but no key:
    // it proves nothing, so it is given nothing and told nothing.
    let (mut m, mut r) = (member.clone(), Fake::relay());
    r.write(shared, device(2), 4, HEAD);
    let run = sync(&mut m, &mut r);
    clean(&run.outcome);
    assert!(run.outcome.proved.is_empty());
    assert_eq!((run.outcome.sent, run.outcome.received, run.grants), (0, 0, 0));
    assert_eq!(r.vector(&shared).seq(&device(1)), 0);

    // A relay granted one channel (by another member) syncing with the
    // member: that channel only.
    let (mut r, mut m) = (Fake::relay(), member.clone());
    r.granted(shared).write(shared, device(2), 4, HEAD);
    let run = sync(&mut r, &mut m);
    clean(&run.outcome);
    assert_eq!(run.outcome.proved, [shared].into());
    assert_eq!(r.vector(&shared), m.vector(&shared));
    assert!(!r.channels.contains_key(&a_only), "a channel not proved is not given");

    // A member of another channel learns nothing either.
    let mut other = Fake::default();
    other.write(wire(9), device(5), 2, HEAD);
    let mut m = member.clone();
    let run = sync(&mut other, &mut m);
    assert!(run.outcome.proved.is_empty() && run.outcome.peer.is_empty());
    assert_eq!((run.outcome.sent, run.outcome.received), (0, 0));
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

/// A feed its author forked, each replica holding one branch, one of them
/// further on: whichever side asks for the session, the side ahead is
/// handed the other's version of the position where they part (once), so
/// that both refuse the other branch and keep the proof, not only the side
/// behind. Neither takes the other's branch, and a session never loops.
#[test]
fn replicas_on_two_branches_of_a_fork_at_different_positions_both_see_it() {
    let w = wire(1);
    let branches = || {
        let (mut behind, mut ahead) = (Fake::default(), Fake::default());
        behind.write(w, device(1), 3, 60).branch(w, device(1), 4, 1, 60);
        ahead.write(w, device(1), 3, 60).branch(w, device(1), 5, 2, 60);
        behind.write(w, device(2), 2, 60);
        (behind, ahead)
    };
    // Asked by the side ahead: its entry 5 is refused there; then it
    // fetches the other's entry 4 and refuses it here.
    let (mut behind, mut ahead) = branches();
    let run = sync(&mut ahead, &mut behind);
    assert_eq!(run.outcome.failed, None);
    assert_eq!((run.outcome.refused_there, run.outcome.refused_here), (1, 1));
    assert_eq!(
        (run.pushes, run.fetches),
        (1, 2),
        "the pull of device 2, the push, the probe"
    );
    // Asked by the side behind: the other's entry 5 is refused here; then
    // it pushes its own entry 4, refused there.
    let (mut behind, mut ahead) = branches();
    let run = sync(&mut behind, &mut ahead);
    assert_eq!(run.outcome.failed, None);
    assert_eq!((run.outcome.refused_here, run.outcome.refused_there), (1, 1));
    assert_eq!(
        (run.pushes, run.fetches),
        (1, 1),
        "device 2's entries go with the probe"
    );
    assert_eq!(
        ahead.vector(&w).seq(&device(2)),
        2,
        "device 2 still reached the side ahead"
    );
    for (f, seq, branch) in [(&behind, 4, 1), (&ahead, 5, 2)] {
        let feed = &f.channels[&w][&device(1)];
        assert_eq!(feed.len() as u64, seq, "each keeps its branch");
        assert_eq!(feed.last().unwrap()[24], branch);
    }
    // A push-only session (live) does not probe.
    let (mut behind, mut ahead) = branches();
    let session = Session::push(w, ahead.vector(&w), behind.vector(&w));
    let run = drive(session, &mut ahead, |req| behind.serve(req));
    assert_eq!((run.pushes, run.fetches, run.outcome.refused_there), (1, 0, 1));
}
