//! Reconciliation, sans I/O: what to ask a peer and what to send it, given
//! version vectors. The node drives a [`Session`] by performing its
//! [`Action`]s (a request to the peer, a read or an ingest on the local
//! replica) and feeding the results back; tests drive it with in-memory replicas.
//!
//! A session starts with one Hello carrying an 8-byte digest per channel. When
//! every digest matches, the peers are in sync: one round trip, done. For each
//! channel that differs the peer returns its vector; the session then pulls
//! what it lacks (Fetch, in bounded batches, ingesting each before asking for
//! more: that is the backpressure) and pushes what the peer lacks (Push,
//! bounded batches, the peer's Ack carrying its new vector).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hearth_core::{DeviceId, Vector, WireId};
use hearth_store::{EntryBatch, IngestReport};
use serde_bytes::ByteBuf;

use hearth_core::SecretKey;

use crate::auth::{self, Claim, Ends, Keyring, Nonce, Vetting, WhoRole};
use crate::proto::{self, AccessBytes, BATCH_BYTES, BATCH_ENTRIES, ChannelDigest, Request, Response};
use hearth_core::peer::{RelayCert, RemovalNotice, TextDrop, Who};

/// Bytes of vectors one Hello answer carries at most (under `MAX_RESPONSE`).
const HELLO_ANSWER_BUDGET: usize = proto::MAX_RESPONSE * 3 / 4;

/// What a requester proves with: its access keys, the connection's ends and
/// this Hello's nonce; and whether the peer is a relay its user configured
/// (which is then granted the channels it does not prove).
#[derive(Clone, Debug)]
pub struct Auth {
    /// Access keys of the channels this side may prove.
    pub keys: Keyring,
    /// This side asks, the peer answers.
    pub ends: Ends,
    /// Fresh for this session.
    pub nonce: Nonce,
    /// The peer is a relay this user configured: grant it what it lacks.
    pub grant: bool,
    /// Revocation notices to hand the peer if it is a relay, by channel
    /// (sent for the channels it proves, before any entry is pushed).
    pub notices: Vec<(WireId, Vec<u8>)>,
    /// Removals to hand the peer if it is a relay (with the notices).
    pub removals: Vec<RemovalNotice>,
    /// Texts this store dropped, to hand the peer if it is a relay (with
    /// the notices).
    pub drops: Vec<TextDrop>,
    /// This device's proof for the Hello, with its chain (which the
    /// signature does not cover: it goes only with `introduce`); none: a relay.
    pub who: Option<Who>,
    /// Send the chain, and ask for the peer's (the first session with this
    /// peer in a run, or after the peer asked [`proto::WHO`]).
    pub introduce: bool,
    /// A relay's certificates, shown instead of a device proof.
    pub certs: Vec<RelayCert>,
    /// This device's certificate of the peer, a relay its user configured,
    /// to hand it with the grants (once a run).
    pub cert: Option<RelayCert>,
}

impl Auth {
    /// Proofs for a session from `me` to `peer` (peer id bytes), with a fresh nonce.
    pub fn new(keys: impl IntoIterator<Item = (WireId, SecretKey)>, me: Vec<u8>, peer: Vec<u8>) -> Self {
        Auth {
            keys: keys.into_iter().collect(),
            ends: Ends {
                requester: me,
                responder: peer,
            },
            nonce: auth::nonce(),
            grant: false,
            notices: Vec::new(),
            removals: Vec::new(),
            drops: Vec::new(),
            who: None,
            introduce: false,
            certs: Vec::new(),
            cert: None,
        }
    }

    /// Prove who this side is with `who` (its chain in it); with
    /// `introduce`, the chain goes in the first Hello.
    pub fn proving(mut self, who: Who, introduce: bool) -> Self {
        self.who = Some(who);
        self.introduce = introduce;
        self
    }

    /// Show these relay certificates (a relay asks).
    pub fn showing(mut self, certs: Vec<RelayCert>) -> Self {
        self.certs = certs;
        self
    }

    /// Hand the peer (a relay this user configured) this certificate.
    pub fn certifying(mut self, cert: Option<RelayCert>) -> Self {
        self.cert = cert;
        self
    }

    /// Hand the peer these removals if it is a relay.
    pub fn with_removals(mut self, removals: Vec<RemovalNotice>) -> Self {
        self.removals = removals;
        self
    }

    /// Hand the peer these text drops if it is a relay.
    pub fn with_drops(mut self, drops: Vec<TextDrop>) -> Self {
        self.drops = drops;
        self
    }

    /// Hand the peer these revocation notices if it is a relay.
    pub fn with_notices(mut self, notices: Vec<(WireId, Vec<u8>)>) -> Self {
        self.notices = notices;
        self
    }

    /// Grant the peer (a relay this user configured) the channels it lacks.
    pub fn granting(mut self, grant: bool) -> Self {
        self.grant = grant;
        self
    }
}

/// The Hello a replica holding `local` sends: the channels it holds a key
/// for, by tag (in `local`'s order).
pub fn hello(local: &[(WireId, Vector)], auth: &Auth, relay: bool) -> Request {
    Request::Hello {
        version: proto::VERSION,
        nonce: auth.nonce,
        summary: local
            .iter()
            .filter_map(|(w, v)| {
                let key = auth.keys.get(w)?;
                Some(ChannelDigest {
                    tag: auth::tag(key, &auth.nonce, &auth.ends),
                    digest: auth::digest(key, &auth.nonce, &v.digest()),
                })
            })
            .collect(),
        relay,
        who: auth.who.as_ref().map(|w| {
            let mut w = w.clone();
            if !auth.introduce {
                w.chain.clear();
            }
            Box::new(w)
        }),
        certs: if auth.who.is_some() {
            Vec::new()
        } else {
            auth.certs.clone()
        },
        want_chain: auth.introduce,
    }
}

/// A replica's answer to a Hello, and the channels the requester proved it holds.
///
/// `local` is what this replica holds; `keys` its access keys (a channel
/// without a key is never matched; a key without entries matches with an
/// empty vector). Matched channels whose digests differ come back with this
/// replica's vector, within the frame budget (channels left out still differ
/// at the next session, which takes them then).
pub fn answer_hello(
    local: &[(WireId, Vector)],
    keys: &Keyring,
    nonce: &Nonce,
    summary: &[ChannelDigest],
    ends: &Ends,
    i_am_relay: bool,
) -> (Response, Vec<WireId>) {
    let vectors: BTreeMap<&WireId, &Vector> = local.iter().map(|(w, v)| (w, v)).collect();
    let empty = Vector::default();
    let by_tag: BTreeMap<[u8; 8], (&WireId, &SecretKey)> =
        keys.iter().map(|(w, k)| (auth::tag(k, nonce, ends), (w, k))).collect();
    let mut found: Vec<Option<(&WireId, &SecretKey)>> = vec![None; summary.len()];
    let mut differ = Vec::new();
    let mut budget = HELLO_ANSWER_BUDGET;
    for (i, d) in summary.iter().enumerate() {
        // A tag listed twice is matched once.
        let Some(&(w, k)) = by_tag.get(&d.tag) else { continue };
        if found.iter().flatten().any(|(x, _)| *x == w) {
            continue;
        }
        found[i] = Some((w, k));
        let v = vectors.get(w).copied().unwrap_or(&empty);
        if auth::digest(k, nonce, &v.digest()) != d.digest {
            let size = 40 + v.0.len() * 60;
            if size <= budget {
                budget -= size;
                differ.push((i as u32, v.clone()));
            }
        }
    }
    let matched = auth::bitmap(summary.len(), |i| found[i].is_some());
    let proof = auth::answer(found.iter().flatten().map(|(_, k)| *k), nonce, ends, &matched);
    let proved = found.iter().flatten().map(|(w, _)| **w).collect();
    (
        Response::Hello {
            matched: ByteBuf::from(matched),
            proof,
            differ,
            relay: i_am_relay,
            who: None,
            certs: Vec::new(),
            removed: Vec::new(),
        },
        proved,
    )
}

/// The next thing a [`Session`] needs done.
#[derive(Debug)]
pub enum Action {
    /// Send this request to the peer; feed the answer to [`Session::on_response`].
    Send(Request),
    /// Read the local entries `have` lacks; feed them to [`Session::on_entries`].
    Read {
        /// The channel.
        wire: WireId,
        /// What the peer holds.
        have: Vector,
    },
    /// Check who the peer is (its answer's proof) for the channels it
    /// proved the access key of; feed the decision to [`Session::on_vetted`].
    Vet {
        /// What the peer claims.
        claim: Claim,
        /// The channels it proved.
        wires: Vec<WireId>,
    },
    /// Verify and store the peer's entries; feed the report to [`Session::on_ingested`].
    Ingest {
        /// The channel.
        wire: WireId,
        /// Envelope bytes.
        entries: Vec<Vec<u8>>,
    },
    /// Finished.
    Done,
}

/// What a session did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The Hello found every shared channel equal.
    pub in_sync_at_hello: bool,
    /// Channels compared.
    pub channels: usize,
    /// Entries received and stored.
    pub received: u64,
    /// Entries sent and acknowledged.
    pub sent: u64,
    /// Entries pushed, those the peer turned out to hold already included
    /// (`pushed - sent - refused_there` is what travelled for nothing).
    pub pushed: u64,
    /// Entries the peer sent that were refused here.
    pub refused_here: u64,
    /// Entries sent that the peer refused.
    pub refused_there: u64,
    /// Why the first refused entry was refused (either side).
    pub refusal: Option<String>,
    /// Something the peer sent proves it forged or broke data (see
    /// `hearth_store::Rejection::is_peer_fault`); decides whether it is dropped.
    pub fault_here: bool,
    /// The peer's vectors as last seen (for status and delivery receipts).
    pub peer: BTreeMap<WireId, Vector>,
    /// Requests sent.
    pub round_trips: u32,
    /// Bytes of the entries received (ingested, taken or not).
    pub entry_bytes_in: u64,
    /// Bytes of the entries sent.
    pub entry_bytes_out: u64,
    /// The session stopped on an unexpected answer.
    pub failed: Option<String>,
    /// Notices of this user's removal the peer handed (in its Hello
    /// answer), for the replica to check and keep.
    pub told: Vec<hearth_core::peer::RemovedNotice>,
    /// Of those, how many stand here (the replica took them or held them).
    pub told_here: u32,
    /// The peer said it is a relay.
    pub peer_relay: bool,
    /// Entries the peer sent that were refused for their content (see
    /// `hearth_store::Refusal::Content`): rate limited per peer by the node.
    pub failed_content: u64,
    /// Channels the peer proved it holds (in its answer to the Hello, or by
    /// taking a grant): the only ones it is served.
    pub proved: BTreeSet<WireId>,
    /// Channels granted to the peer (a relay this user configured).
    pub granted: usize,
    /// Revocation notices, removals and text drops (encoded) the peer (a
    /// relay) holds or settled of those sent to it, so that the node sends
    /// each only once.
    pub noted: Vec<Vec<u8>>,
    /// The peer (a relay) took this device's certificate of it.
    pub certified: bool,
    /// The peer holds this device's chain now (it was sent, and the peer
    /// answered): later sessions in this run leave it out.
    pub introduced: bool,
    /// Channels the peer proved the access key of but is not served: its
    /// user is removed there, its device revoked, or (a relay) no current
    /// member certified it.
    pub withheld: usize,
}

#[derive(Debug)]
enum Phase {
    Start,
    AwaitHello,
    AwaitVet,
    AwaitGranted,
    AwaitNoted,
    Pull,
    AwaitEntries,
    AwaitIngest,
    Push,
    AwaitRead,
    AwaitAck,
    Finished,
}

/// A Hello answer waiting for its vetting: the channels the peer proved,
/// and the vectors of those that differ (by index in the Hello).
type Answered = (Vec<WireId>, Vec<(u32, Vector)>);

/// One reconciliation with one peer.
#[derive(Debug)]
pub struct Session {
    local: BTreeMap<WireId, Vector>,
    relay: bool,
    /// The proofs of a full session (a push session has none: it runs only
    /// for channels the peer proved already).
    auth: Option<Auth>,
    /// The channels of the Hello, in its order.
    listed: Vec<WireId>,
    /// Proved channels not yet handed out by [`Session::take_proved`].
    fresh: Vec<WireId>,
    queue: VecDeque<WireId>,
    current: Option<WireId>,
    phase: Phase,
    outcome: Outcome,
    /// Entries of the batch being pushed (to count an ack).
    pushing: usize,
    /// Channels whose same-position forks were already probed this session.
    probed: BTreeSet<WireId>,
    /// Channels probed this session for forks at different positions
    /// ([`Session::probe_apart`]).
    probed_apart: BTreeSet<WireId>,
    /// The fetch or push under way is such a probe: the channel ends with it
    /// unless it moved something.
    probing: bool,
    /// The Hello answer being vetted: the channels proved, what differs,
    /// and the matched bitmap.
    answered: Option<Answered>,
}

impl Session {
    /// A full session: Hello, then every channel that differs.
    pub fn full(local: Vec<(WireId, Vector)>, relay: bool, auth: Auth) -> Self {
        let mut s = Self::new(local, relay);
        s.auth = Some(auth);
        s
    }

    fn new(local: Vec<(WireId, Vector)>, relay: bool) -> Self {
        Session {
            local: local.into_iter().collect(),
            relay,
            auth: None,
            listed: Vec::new(),
            fresh: Vec::new(),
            queue: VecDeque::new(),
            current: None,
            phase: Phase::Start,
            outcome: Outcome::default(),
            pushing: 0,
            probed: BTreeSet::new(),
            probed_apart: BTreeSet::new(),
            probing: false,
            answered: None,
        }
    }

    /// A push-only session for one channel whose peer vector is known (live
    /// push of new entries): no Hello.
    pub fn push(wire: WireId, local: Vector, peer: Vector) -> Self {
        let mut s = Session::new(vec![(wire, local)], false);
        s.outcome.peer.insert(wire, peer);
        s.queue.push_back(wire);
        s.phase = Phase::Pull;
        s.outcome.channels = 1;
        s
    }

    /// What the session found so far.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Channels the peer proved since the last call (the node serves the
    /// peer those at once, before the session ends).
    pub fn take_proved(&mut self) -> Vec<WireId> {
        std::mem::take(&mut self.fresh)
    }

    /// Take the outcome once done.
    pub fn into_outcome(self) -> Outcome {
        self.outcome
    }

    /// The first action.
    pub fn start(&mut self) -> Action {
        match self.phase {
            Phase::Start => {
                let Some(auth) = &self.auth else {
                    return self.fail("a full session needs proofs".into());
                };
                let local: Vec<(WireId, Vector)> = self
                    .local
                    .iter()
                    .filter(|(w, _)| auth.keys.contains_key(w))
                    .map(|(w, v)| (*w, v.clone()))
                    .collect();
                self.listed = local.iter().map(|(w, _)| *w).collect();
                let hello = hello(&local, auth, self.relay);
                self.phase = Phase::AwaitHello;
                self.outcome.round_trips += 1;
                Action::Send(hello)
            }
            Phase::AwaitHello => {
                // Again, with the chain (the peer asked who this is).
                let local: Vec<(WireId, Vector)> = self.listed.iter().map(|w| (*w, self.local[w].clone())).collect();
                let Some(auth) = self.auth.as_mut() else {
                    return self.fail("a full session needs proofs".into());
                };
                auth.introduce = true;
                let hello = hello(&local, auth, self.relay);
                self.outcome.round_trips += 1;
                Action::Send(hello)
            }
            // A push session goes straight to pushing (it never pulls).
            _ => {
                self.current = self.queue.pop_front();
                self.phase = Phase::Push;
                self.step()
            }
        }
    }

    fn fail(&mut self, why: String) -> Action {
        self.outcome.failed.get_or_insert(why);
        self.phase = Phase::Finished;
        Action::Done
    }

    fn refuse(slot: &mut Option<String>, reason: Option<String>) {
        if slot.is_none() {
            *slot = reason;
        }
    }

    /// Feed the peer's answer to the last [`Action::Send`].
    pub fn on_response(&mut self, resp: Response) -> Action {
        match (&self.phase, resp) {
            (
                Phase::AwaitHello,
                Response::Hello {
                    matched,
                    proof,
                    differ,
                    relay,
                    who,
                    certs,
                    removed,
                },
            ) => {
                self.outcome.told = removed;
                self.on_hello(&matched, proof, differ, relay, who, certs)
            }
            (Phase::AwaitGranted, Response::Granted { vectors }) => {
                let asked: BTreeSet<WireId> = self.ungranted().into_iter().collect();
                self.outcome.certified |= self.auth.as_ref().is_some_and(|a| a.cert.is_some());
                for (w, v) in vectors {
                    if asked.contains(&w) && self.outcome.proved.insert(w) {
                        self.fresh.push(w);
                        self.outcome.granted += 1;
                        self.outcome.peer.insert(w, v);
                        self.queue.push_back(w);
                    }
                }
                self.notify()
            }
            (Phase::AwaitNoted, Response::Noted { held }) => {
                let mut sent = self.notifying();
                sent.extend(self.removing().iter().map(RemovalNotice::encode));
                sent.extend(self.dropping().iter().map(TextDrop::encode));
                if held as usize >= sent.len() {
                    self.outcome.noted = sent;
                }
                self.next_channel()
            }
            (Phase::AwaitEntries, Response::Entries { entries, more: _ }) => {
                let wire = self.current.expect("pulling a channel");
                if entries.is_empty() {
                    if std::mem::take(&mut self.probing) {
                        return self.next_channel();
                    }
                    // The peer claimed entries it does not hand out: stop pulling.
                    self.phase = Phase::Push;
                    return self.step();
                }
                self.phase = Phase::AwaitIngest;
                Action::Ingest {
                    wire,
                    entries: entries.into_iter().map(ByteBuf::into_vec).collect(),
                }
            }
            (
                Phase::AwaitAck,
                Response::Ack {
                    vector,
                    accepted,
                    rejected,
                    reason,
                },
            ) => {
                let wire = self.current.expect("pushing a channel");
                self.outcome.sent += u64::from(accepted);
                self.outcome.refused_there += u64::from(rejected);
                Self::refuse(&mut self.outcome.refusal, reason);
                // Progress is what the peer's vector shows, not the count it
                // claims: an Ack saying "accepted" with a vector that never moves
                // would have the same batch sent forever.
                // The Ack names the pushed feeds only (protocol 12): they
                // take the heads it says, higher or lower than believed.
                let local = self.local.get(&wire).cloned().unwrap_or_default();
                let before = self.outcome.peer.get(&wire).cloned().unwrap_or_default();
                let mut after = before.clone();
                after.0.extend(vector.0);
                let progressed = lacking(&after, &local) < lacking(&before, &local);
                let probed = std::mem::take(&mut self.probing);
                // Refused where the peer is behind: its last entry of such a
                // feed may be another version of one held here.
                let probe = (!progressed && rejected > 0 && !probed)
                    .then(|| self.probe_apart(wire, &after, &local))
                    .flatten();
                self.outcome.peer.insert(wire, after);
                if let Some(have) = probe {
                    self.probing = true;
                    return self.fetch(wire, have);
                }
                if !progressed {
                    // Nothing taken: do not send the same batch forever.
                    return self.next_channel();
                }
                self.phase = Phase::Push;
                self.step()
            }
            (Phase::AwaitHello, Response::Refused { reason })
                if reason == proto::WHO && self.auth.as_ref().is_some_and(|a| !a.introduce && a.who.is_some()) =>
            {
                self.start()
            }
            (_, Response::Refused { reason }) => {
                // The peer does not serve this channel: go on with the others.
                Self::refuse(&mut self.outcome.refusal, Some(reason));
                if matches!(self.phase, Phase::AwaitHello) {
                    return self.fail("hello refused".into());
                }
                self.next_channel()
            }
            (phase, other) => {
                let why = format!("unexpected answer {} while {phase:?}", kind(&other));
                self.fail(why)
            }
        }
    }

    /// Feed the local entries asked for by [`Action::Read`].
    pub fn on_entries(&mut self, batch: Option<EntryBatch>) -> Action {
        let Some(wire) = self.current else {
            return self.fail("read without a channel".into());
        };
        match batch {
            Some(b) if !b.entries.is_empty() => {
                self.pushing = b.entries.len();
                self.outcome.pushed = self.outcome.pushed.saturating_add(b.entries.len() as u64);
                self.phase = Phase::AwaitAck;
                self.outcome.round_trips += 1;
                Action::Send(Request::Push {
                    wire,
                    entries: b.entries.into_iter().map(ByteBuf::from).collect(),
                })
            }
            _ => self.next_channel(),
        }
    }

    /// Feed the report of an [`Action::Ingest`].
    pub fn on_ingested(&mut self, report: Option<IngestReport>) -> Action {
        let Some(wire) = self.current else {
            return self.fail("ingest without a channel".into());
        };
        let Some(r) = report else {
            return self.next_channel();
        };
        self.outcome.received += r.accepted as u64;
        self.outcome.refused_here += r.rejected.len() as u64;
        Self::refuse(
            &mut self.outcome.refusal,
            r.rejected.first().map(|x| x.reason.to_string()),
        );
        // Duplicates are progress only when another session stored them
        // meanwhile (the vector moved); a peer answering every Fetch with
        // entries held here already would otherwise be asked forever.
        // Only a moved vector is progress: entries "accepted" by a batch that
        // was then rolled back (automerge refused it) move nothing.
        let progressed = self.local.get(&wire) != Some(&r.vector);
        self.outcome.fault_here |= r.rejected.iter().any(|x| x.is_peer_fault());
        self.outcome.failed_content += r
            .rejected
            .iter()
            .filter(|x| matches!(x.reason, hearth_store::Refusal::Content(_)))
            .count() as u64;
        let refused = !r.rejected.is_empty();
        self.local.insert(wire, r.vector);
        if std::mem::take(&mut self.probing) && !progressed {
            return self.next_channel();
        }
        if refused && !progressed {
            // Refused where this side is behind: the peer may hold another
            // version of this side's last entry of such a feed.
            let local = self.local.get(&wire).cloned().unwrap_or_default();
            let peer = self.outcome.peer.get(&wire).cloned().unwrap_or_default();
            if let Some(have) = self.probe_apart(wire, &local, &peer) {
                self.probing = true;
                self.phase = Phase::AwaitRead;
                return Action::Read { wire, have };
            }
        }
        self.phase = if progressed { Phase::Pull } else { Phase::Push };
        self.step()
    }

    /// Ask the peer for the entries of `wire` after `have`.
    fn fetch(&mut self, wire: WireId, have: Vector) -> Action {
        self.phase = Phase::AwaitEntries;
        self.outcome.round_trips += 1;
        Action::Send(Request::Fetch {
            wire,
            have,
            max_bytes: BATCH_BYTES as u32,
        })
    }

    /// A feed its author forked, each side holding one branch, at different
    /// positions: the side ahead holds a version of the other's last entry
    /// which the other never sends (the vectors show no lack that way), so
    /// only the side behind, refusing what follows, kept the proof. When a
    /// transfer from the side ahead to the side behind was refused and moved
    /// nothing, the side behind's last entry of each feed where it holds
    /// some but less is sent to the side ahead once, whichever side asked
    /// for the session: ingest there sees the two versions and keeps the
    /// proof too (or a duplicate, when the refusal was for another reason).
    /// The `have` of that transfer (a Fetch when this side is ahead, a Read
    /// of this side's entries when it is behind), or `None`: no such feed,
    /// a push-only session, or probed already in this session.
    fn probe_apart(&mut self, wire: WireId, behind: &Vector, ahead: &Vector) -> Option<Vector> {
        let apart: Vec<(DeviceId, hearth_core::FeedPos)> = behind
            .0
            .iter()
            .filter(|(d, p)| p.seq >= 1 && ahead.seq(d) > p.seq)
            .map(|(d, p)| (*d, *p))
            .collect();
        if apart.is_empty() || self.auth.is_none() || !self.probed_apart.insert(wire) {
            return None;
        }
        let mut have = ahead.clone();
        for (d, p) in apart {
            have.0.insert(d, p);
            have.step_back(&d);
        }
        Some(have)
    }

    /// The peer's answer to the Hello: check its proof of the access keys,
    /// then who it is.
    fn on_hello(
        &mut self,
        matched: &[u8],
        proof: [u8; 16],
        differ: Vec<(u32, Vector)>,
        relay: bool,
        who: Option<Box<Who>>,
        certs: Vec<RelayCert>,
    ) -> Action {
        let Some(auth) = self.auth.as_ref() else {
            return self.fail("a Hello answer to a push session".into());
        };
        let n = self.listed.len();
        if matched.len() != n.div_ceil(8) || (n..matched.len() * 8).any(|i| auth::bit(matched, i)) {
            self.outcome.fault_here = true;
            return self.fail("the Hello answer's bitmap does not fit the Hello".into());
        }
        let held: Vec<WireId> = (0..n)
            .filter(|i| auth::bit(matched, *i))
            .map(|i| self.listed[i])
            .collect();
        let want = auth::answer(held.iter().map(|w| &auth.keys[w]), &auth.nonce, &auth.ends, matched);
        if want != proof {
            // Only a peer that guessed or replayed a proof gets here.
            self.outcome.fault_here = true;
            return self.fail("the peer's membership proof does not check".into());
        }
        if differ.iter().any(|(i, _)| !auth::bit(matched, *i as usize)) {
            self.outcome.fault_here = true;
            return self.fail("the Hello answer names a channel it did not prove".into());
        }
        self.outcome.peer_relay = relay;
        self.outcome.channels = n;
        // A relay this user configured is trusted with what it is granted;
        // any other peer shows who it is.
        if (auth.grant && who.is_none()) || held.is_empty() {
            self.outcome.introduced |= auth.introduce;
            return self.serve_proved(held, differ);
        }
        let claim = Claim {
            who: who.map(|w| *w),
            certs,
            role: WhoRole::Answer,
            nonce: auth.nonce,
            ends: auth.ends.clone(),
            matched: matched.to_vec(),
        };
        self.answered = Some((held.clone(), differ));
        self.phase = Phase::AwaitVet;
        Action::Vet { claim, wires: held }
    }

    /// Feed the decision on the peer's claim asked by [`Action::Vet`].
    pub fn on_vetted(&mut self, vetting: Vetting) -> Action {
        let Some((held, differ)) = self.answered.take() else {
            return self.fail("a vetting nobody asked for".into());
        };
        match vetting {
            Vetting::Allowed { wires, .. } => {
                self.outcome.introduced |= self.auth.as_ref().is_some_and(|a| a.introduce);
                let allowed: BTreeSet<WireId> = wires.into_iter().collect();
                self.outcome.withheld = held.iter().filter(|w| !allowed.contains(w)).count();
                let held = held.into_iter().filter(|w| allowed.contains(w)).collect();
                self.serve_proved(held, differ)
            }
            // The peer's device is not known here: ask again, with this
            // side's chain and asking for the peer's.
            Vetting::Unknown if self.auth.as_ref().is_some_and(|a| !a.introduce && a.who.is_some()) => {
                self.phase = Phase::AwaitHello;
                self.start()
            }
            Vetting::Unknown => self.fail("the peer's device proof names a device it does not certify".into()),
            Vetting::Forged(why) => {
                self.outcome.fault_here = true;
                self.fail(format!("the peer's device proof does not check: {why}"))
            }
        }
    }

    /// Serve the peer the channels it proved and may be served: queue what
    /// differs, grant a relay this user configured what it lacks.
    fn serve_proved(&mut self, held: Vec<WireId>, differ: Vec<(u32, Vector)>) -> Action {
        self.outcome.in_sync_at_hello = true;
        for w in &held {
            if self.outcome.proved.insert(*w) {
                self.fresh.push(*w);
            }
            // Equal digests: the peer holds what this side holds.
            self.outcome.peer.insert(*w, self.local[w].clone());
        }
        for (i, v) in differ {
            let Some(w) = self.listed.get(i as usize).copied().filter(|w| held.contains(w)) else {
                continue;
            };
            self.outcome.in_sync_at_hello = false;
            if self.queue.contains(&w) {
                continue;
            }
            self.outcome.peer.insert(w, v);
            self.queue.push_back(w);
        }
        let ungranted = self.ungranted();
        let cert = self
            .auth
            .as_ref()
            .and_then(|a| a.grant.then(|| a.cert.clone()).flatten());
        if !ungranted.is_empty() || cert.is_some() {
            let grants = ungranted
                .iter()
                .map(|w| (*w, AccessBytes(*self.auth.as_ref().expect("checked").keys[w].expose())))
                .collect();
            self.outcome.in_sync_at_hello &= ungranted.is_empty();
            self.phase = Phase::AwaitGranted;
            self.outcome.round_trips += 1;
            return Action::Send(Request::Grant { grants, cert });
        }
        self.notify()
    }

    /// The notices to hand the peer: those of the channels it proved, if it
    /// is a relay (at most [`proto::MAX_NOTICES`]).
    fn notifying(&self) -> Vec<Vec<u8>> {
        match &self.auth {
            Some(a) if self.outcome.peer_relay => a
                .notices
                .iter()
                .filter(|(w, _)| self.outcome.proved.contains(w))
                .map(|(_, n)| n.clone())
                .take(proto::MAX_NOTICES)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The removals to hand the peer: those of the channels it proved, if
    /// it is a relay (at most [`proto::MAX_NOTICES`]).
    fn removing(&self) -> Vec<RemovalNotice> {
        match &self.auth {
            Some(a) if self.outcome.peer_relay => a
                .removals
                .iter()
                .filter(|r| self.outcome.proved.contains(&r.wire))
                .take(proto::MAX_NOTICES)
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The text drops to hand the peer: those of the channels it proved,
    /// if it is a relay (at most [`proto::MAX_NOTICES`], and no more than
    /// half a request frame of them: the rest go in a later session).
    fn dropping(&self) -> Vec<TextDrop> {
        match &self.auth {
            Some(a) if self.outcome.peer_relay => {
                let mut bytes = 0usize;
                a.drops
                    .iter()
                    .filter(|d| self.outcome.proved.contains(&d.wire))
                    .take(proto::MAX_NOTICES)
                    .take_while(|d| {
                        bytes += d.encode().len();
                        bytes <= proto::MAX_REQUEST / 2
                    })
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Hand a relay the revocation notices, removals and text drops of the
    /// channels it proved, before any entry goes either way; then on to the
    /// channels.
    fn notify(&mut self) -> Action {
        let notices = self.notifying();
        let removals = self.removing();
        let drops = self.dropping();
        if notices.is_empty() && removals.is_empty() && drops.is_empty() {
            return self.next_channel();
        }
        self.phase = Phase::AwaitNoted;
        self.outcome.round_trips += 1;
        Action::Send(Request::Revoke {
            notices: notices.into_iter().map(ByteBuf::from).collect(),
            removals,
            drops,
        })
    }

    /// Channels to grant the peer: those of the Hello it did not prove, when
    /// it is a relay this user configured.
    fn ungranted(&self) -> Vec<WireId> {
        match &self.auth {
            Some(a) if a.grant => self
                .listed
                .iter()
                .filter(|w| !self.outcome.proved.contains(w))
                .copied()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn next_channel(&mut self) -> Action {
        // A probe ends with its channel (one whose read found nothing to
        // send leaves no answer to clear it).
        self.probing = false;
        self.current = self.queue.pop_front();
        if self.current.is_none() {
            self.phase = Phase::Finished;
            return Action::Done;
        }
        self.phase = Phase::Pull;
        self.step()
    }

    /// Decide within the current channel: pull while we lack, then push while the peer lacks.
    fn step(&mut self) -> Action {
        let Some(wire) = self.current else {
            return self.next_channel();
        };
        let local = self.local.get(&wire).cloned().unwrap_or_default();
        let peer = self.outcome.peer.get(&wire).cloned().unwrap_or_default();
        if matches!(self.phase, Phase::Pull) {
            // A feed held to the same position under another hash on each
            // side was forked by its author, and neither side lacks anything
            // by position: ask once for the peer's version of that position,
            // so that ingest sees the two and keeps the proof.
            let forked = local.forks(&peer);
            let probe = !forked.is_empty() && self.probed.insert(wire);
            if probe || !local.lacks(&peer).is_empty() {
                let mut have = local;
                if probe {
                    for d in forked {
                        have.step_back(&d);
                    }
                }
                return self.fetch(wire, have);
            }
            self.phase = Phase::Push;
        }
        if !peer.lacks(&local).is_empty() {
            self.phase = Phase::AwaitRead;
            return Action::Read { wire, have: peer };
        }
        self.next_channel()
    }
}

/// How many entries `have` lacks of `other`.
fn lacking(have: &Vector, other: &Vector) -> u64 {
    have.lacks(other).iter().map(|m| m.len()).sum()
}

fn kind(r: &Response) -> &'static str {
    match r {
        Response::Hello { .. } => "Hello",
        Response::Entries { .. } => "Entries",
        Response::Ack { .. } => "Ack",
        Response::Refused { .. } => "Refused",
        Response::Link { .. } => "Link",
        Response::Granted { .. } => "Granted",
        Response::Joined { .. } => "Joined",
        Response::Noted { .. } => "Noted",
    }
}

/// Budget for one answer to Fetch, within the frame cap.
pub fn fetch_budget(max_bytes: u32) -> (usize, usize) {
    ((max_bytes as usize).min(BATCH_BYTES), BATCH_ENTRIES)
}

#[cfg(test)]
mod tests;
