//! Running a [`Session`] against a replica, and answering a peer's requests.
//! Both are independent of the transport: the node plugs libp2p in, tests plug
//! in a direct call to the other replica.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use hearth_core::{SecretKey, WireId};
use serde_bytes::ByteBuf;

use crate::Replica;
use crate::auth::{Claim, Ends, Vetting, WhoRole};
use crate::proto::{BATCH_BYTES, BATCH_ENTRIES, Request, Response};
use hearth_core::peer::Certifier;

/// What a node remembers of a peer across its connections in one run.
#[derive(Debug, Default)]
pub struct PeerMemo {
    /// Hashes of the revocation notices, removals and text drops the peer
    /// (a relay) holds or settled: each is sent once.
    pub noted: BTreeSet<[u8; 32]>,
    /// The peer holds this device's chain: Hellos leave it out.
    pub introduced: bool,
    /// The peer (a relay this user configured) holds this device's
    /// certificate of it.
    pub certified: bool,
}
use crate::reconcile::{Action, Auth, Outcome, Session, answer_hello, fetch_budget};

/// One side's view of a connection: who is who (peer id bytes, as Noise
/// authenticated them), and the channels the peer proved it holds on this
/// connection. Those are the only channels served to it (Fetch, Push), and
/// the only ones pushed to it. Cheap to clone: clones share the proofs.
#[derive(Clone, Debug)]
pub struct Conn {
    me: Vec<u8>,
    peer: Vec<u8>,
    proven: Arc<Mutex<BTreeSet<WireId>>>,
    /// What this node remembers of the peer (shared by the node across
    /// this peer's connections).
    memo: Arc<Mutex<PeerMemo>>,
    /// The peer is a relay this user configured: served without a device
    /// proof or a certificate.
    trusted: bool,
    /// The device the peer proved itself on its last Hello here.
    device: Arc<Mutex<Option<Certifier>>>,
}

impl Conn {
    /// A new connection between `me` and `peer`: nothing proved yet.
    pub fn new(me: Vec<u8>, peer: Vec<u8>) -> Self {
        Conn {
            me,
            peer,
            proven: Arc::default(),
            memo: Arc::default(),
            trusted: false,
            device: Arc::default(),
        }
    }

    /// Share `memo` (what this node knows of the peer) with the node's
    /// other connections to the peer.
    pub fn with_memo(mut self, memo: Arc<Mutex<PeerMemo>>) -> Self {
        self.memo = memo;
        self
    }

    /// The peer is a relay this user configured.
    pub fn trusting(mut self, trusted: bool) -> Self {
        self.trusted = trusted;
        self
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, PeerMemo> {
        self.memo.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record channels the peer proved.
    pub fn prove(&self, wires: impl IntoIterator<Item = WireId>) {
        self.proven.lock().unwrap_or_else(PoisonError::into_inner).extend(wires);
    }

    /// Stop serving the peer these channels (its proof of the access key
    /// stands, but it is no longer a member there).
    pub fn unprove(&self, wires: impl IntoIterator<Item = WireId>) {
        let mut p = self.proven.lock().unwrap_or_else(PoisonError::into_inner);
        for w in wires {
            p.remove(&w);
        }
    }

    /// The device the peer proved itself on its last Hello here, if any.
    pub fn device(&self) -> Option<Certifier> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether the peer proved `wire` on this connection.
    pub fn proved(&self, wire: &WireId) -> bool {
        self.proven
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(wire)
    }

    /// Proofs for a session this side starts, with a fresh nonce.
    pub fn auth(&self, keys: Vec<(WireId, SecretKey)>) -> Auth {
        Auth::new(keys, self.me.clone(), self.peer.clone())
    }

    /// A full session of `replica` with the peer: its vectors, its keys;
    /// with `grant` (the peer is a relay this user configured), the grants
    /// it lacks and the revocation notices it is not known to hold (each
    /// relay hears them from its own users' devices; a member's session
    /// with another member reads no roster for them).
    pub async fn session<R: Replica>(&self, replica: &R, grant: bool) -> hearth_store::Result<Session> {
        let local = replica.vectors().await?;
        let keys = replica.access_keys().await?;
        let mut notices = if grant { replica.notices().await? } else { Vec::new() };
        let mut removals = if grant { replica.removals().await? } else { Vec::new() };
        // Any relay that proves a channel may take the drops of it (it
        // checks who sends them).
        let mut drops = replica.drops().await?;
        let (introduce, certified) = {
            let memo = self.memo();
            notices.retain(|(_, n)| !memo.noted.contains(blake3::hash(n).as_bytes()));
            removals.retain(|r| !memo.noted.contains(blake3::hash(&r.encode()).as_bytes()));
            drops.retain(|d| !memo.noted.contains(blake3::hash(&d.encode()).as_bytes()));
            (!memo.introduced, memo.certified)
        };
        let auth = self
            .auth(keys)
            .granting(grant)
            .with_notices(notices)
            .with_removals(removals)
            .with_drops(drops);
        let (nonce, ends) = (auth.nonce, auth.ends.clone());
        let auth = match replica.who(WhoRole::Hello, nonce, ends, Vec::new(), true).await? {
            Some(who) => auth.proving(who, introduce),
            None => {
                let wires: Vec<WireId> = local.iter().map(|(w, _)| *w).collect();
                auth.showing(replica.relay_certs(wires).await?)
            }
        };
        let cert = if grant && !certified {
            replica.relay_cert(self.peer.clone()).await?
        } else {
            None
        };
        Ok(Session::full(local, replica.is_relay(), auth.certifying(cert)))
    }

    fn ends_as_responder(&self) -> Ends {
        Ends {
            requester: self.peer.clone(),
            responder: self.me.clone(),
        }
    }
}

/// Run a session to the end. `send` delivers a request to the peer and returns
/// its answer (or why there is none). Channels the peer proves are recorded
/// in `conn` as soon as they are. A local storage error ends the session
/// with `failed` set.
pub async fn run_session<R, F, Fut>(session: Session, replica: &R, conn: &Conn, send: F) -> Outcome
where
    R: Replica,
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Response, String>>,
{
    run_session_with(session, replica, conn, send, None).await
}

/// [`run_session`], reading the entries `ready` holds from it rather than
/// from the replica (this device's new entries, handed over with the
/// store's event: [`hearth_store::Outgoing`]) once they may leave: once
/// durable, or at once when the store sends early
/// ([`hearth_store::Outgoing::sendable`]).
pub async fn run_session_with<R, F, Fut>(
    session: Session,
    replica: &R,
    conn: &Conn,
    send: F,
    ready: Option<&hearth_store::Outgoing>,
) -> Outcome
where
    R: Replica,
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Response, String>>,
{
    let mut bytes = (0, 0);
    let mut o = drive(session, (replica, ready), conn, send, &mut bytes).await;
    (o.entry_bytes_in, o.entry_bytes_out) = bytes;
    o
}

/// The entries `have` lacks: from `ready` when it holds them all.
async fn read<R: Replica>(
    replica: &R,
    ready: Option<&hearth_store::Outgoing>,
    wire: WireId,
    have: hearth_core::Vector,
) -> hearth_store::Result<Option<hearth_store::EntryBatch>> {
    let handed = ready
        .filter(|o| o.wire() == wire)
        .and_then(|o| Some((o, o.entries_after(&have, BATCH_BYTES, BATCH_ENTRIES)?)));
    let Some((o, batch)) = handed else {
        return replica.entries_after(wire, have, BATCH_BYTES, BATCH_ENTRIES).await;
    };
    // Every debug build (all the tests) asks the replica too: what was
    // handed over is what it would send (by feed position: a delete since
    // may have dropped a text of its copy), unless it stored more since.
    #[cfg(debug_assertions)]
    if let Ok(Some(full)) = replica
        .entries_after(wire, have.clone(), BATCH_BYTES, BATCH_ENTRIES)
        .await
        && !full.more
    {
        let at = |b: &Vec<u8>| hearth_core::Envelope::peek_feed(b);
        let stored: Vec<_> = full.entries.iter().map(at).collect();
        assert!(
            batch.entries.iter().all(|e| stored.contains(&at(e))),
            "handed-over entries the replica would not send"
        );
    }
    o.sendable().await.map(|()| Some(batch))
}

/// [`run_session`]; `bytes`: the entries' bytes received and sent.
async fn drive<R, F, Fut>(
    mut session: Session,
    (replica, ready): (&R, Option<&hearth_store::Outgoing>),
    conn: &Conn,
    mut send: F,
    bytes: &mut (u64, u64),
) -> Outcome
where
    R: Replica,
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Response, String>>,
{
    let mut action = session.start();
    // A catch-up fetches the next batch while it ingests this one: the Fetch
    // the session will ask for next if every entry is taken goes out beside
    // the ingest, and its answer stands in for the next Fetch's if that one
    // holds all it held (entries after a lower vector are a good answer:
    // those held already are duplicates); otherwise it is dropped.
    let mut fetched: Option<(Request, bool)> = None;
    let mut ahead: Option<(Request, Result<Response, String>)> = None;
    loop {
        action = match action {
            Action::Send(req) => {
                let resp = match ahead.take() {
                    Some((sent, resp)) if answers(&sent, &req) => resp,
                    _ => send(req.clone()).await,
                };
                match resp {
                    Ok(resp) => {
                        fetched = match (&req, &resp) {
                            (Request::Fetch { .. }, Response::Entries { more, .. }) => Some((req, *more)),
                            _ => None,
                        };
                        let next = session.on_response(resp);
                        conn.prove(session.take_proved());
                        next
                    }
                    Err(e) => return failed(session, e),
                }
            }
            Action::Read { wire, have } => match read(replica, ready, wire, have).await {
                Ok(batch) => {
                    bytes.1 += batch
                        .iter()
                        .flat_map(|b| &b.entries)
                        .map(|e| e.len() as u64)
                        .sum::<u64>();
                    session.on_entries(batch)
                }
                Err(e) => return failed(session, e.to_string()),
            },
            Action::Ingest { wire, entries } => {
                bytes.0 += entries.iter().map(|e| e.len() as u64).sum::<u64>();
                let next = match fetched.take() {
                    Some((
                        Request::Fetch {
                            wire: w,
                            have,
                            max_bytes,
                        },
                        true,
                    )) if w == wire => {
                        let mut have = have;
                        have.merge(&pushed_heads(entries.iter().map(Vec::as_slice)));
                        Some(Request::Fetch { wire, have, max_bytes })
                    }
                    _ => None,
                };
                let ingested = match next {
                    Some(next) => {
                        // The next batch starts opening as soon as it
                        // arrives, behind this one (`Replica::prepare`).
                        let ahead_of = async {
                            let resp = send(next.clone()).await;
                            if let Ok(Response::Entries { entries, .. }) = &resp {
                                replica
                                    .prepare(wire, entries.iter().map(|e| e.to_vec()).collect())
                                    .await;
                            }
                            resp
                        };
                        let (ingested, resp) = tokio::join!(replica.ingest(wire, entries), ahead_of);
                        ahead = Some((next, resp));
                        ingested
                    }
                    None => replica.ingest(wire, entries).await,
                };
                match ingested {
                    Ok(report) => session.on_ingested(report),
                    Err(e) => return failed(session, e.to_string()),
                }
            }
            Action::Vet { claim, wires } => match replica.vet(claim, wires.clone()).await {
                Ok(v) => {
                    if let Vetting::Allowed { wires: allowed, .. } = &v {
                        conn.unprove(wires.into_iter().filter(|w| !allowed.contains(w)));
                    }
                    let next = session.on_vetted(v);
                    conn.prove(session.take_proved());
                    next
                }
                Err(e) => return failed(session, e.to_string()),
            },
            Action::Done => {
                let mut o = session.into_outcome();
                if !o.told.is_empty() {
                    match replica.take_told(std::mem::take(&mut o.told)).await {
                        Ok(n) => o.told_here = n,
                        Err(e) => {
                            o.failed.get_or_insert(e.to_string());
                        }
                    }
                }
                let mut memo = conn.memo();
                memo.noted.extend(o.noted.iter().map(|n| *blake3::hash(n).as_bytes()));
                memo.introduced |= o.introduced;
                memo.certified |= o.certified;
                return o;
            }
        }
    }
}

/// Whether the answer to Fetch `sent` answers Fetch `next` too.
fn answers(sent: &Request, next: &Request) -> bool {
    match (sent, next) {
        (
            Request::Fetch { wire, have, max_bytes },
            Request::Fetch {
                wire: w,
                have: h,
                max_bytes: m,
            },
        ) => wire == w && max_bytes == m && h.covers(have),
        _ => false,
    }
}

fn failed(session: Session, why: String) -> Outcome {
    let mut o = session.into_outcome();
    o.failed.get_or_insert(why);
    o
}

/// What serving one request did, besides the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Entries of a Push stored.
    pub accepted: u64,
    /// Entries of a Push refused, and why the first was.
    pub rejected: u64,
    /// Why the first refused entry was refused.
    pub reason: Option<String>,
    /// Refusals that prove the peer sent forged or broken data (not a mere gap).
    pub malicious: bool,
    /// Entries of a Push refused for their content (signed by their author,
    /// but not opening or not valid): not the peer's fault, but rate limited.
    pub failed_content: u64,
    /// For a Fetch of a channel held here: what the peer said it holds, with
    /// the feeds' entries the answer sends it.
    pub learned: Option<(hearth_core::WireId, hearth_core::Vector)>,
    /// For a Fetch: the answer left entries out, so the peer's session will
    /// fetch again once it has taken these (a catch-up under way).
    pub more: bool,
}

/// Each feed of `entries` up to its highest entry there: what the peer that
/// pushed them holds (verified or not: a peer that pushes forgeries only
/// goes without what it claimed to hold).
pub(crate) fn pushed_heads<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> hearth_core::Vector {
    let entries: Vec<&[u8]> = entries.into_iter().collect();
    let mut v = hearth_core::Vector::default();
    // From the last: only an entry past the highest decoded of its feed is
    // decoded (a batch holds each feed's entries in order, so mostly its
    // last one).
    for e in entries.into_iter().rev() {
        let Some((device, seq)) = hearth_core::Envelope::peek_feed(e) else {
            continue;
        };
        if v.0.get(&device).is_some_and(|p| p.seq >= seq) {
            continue;
        }
        if let Ok(env) = hearth_core::Envelope::decode(e) {
            let pos = hearth_core::FeedPos {
                seq: env.header.seq,
                hash: env.hash(),
            };
            let p = v.0.entry(env.header.device).or_insert(pos);
            if pos.seq > p.seq {
                *p = pos;
            }
        }
    }
    v
}

/// What an Ack says (protocol 12): of `vector`, this side's vector after
/// taking a Push, the feeds the Push carried (`pushed`: [`pushed_heads`]).
pub(crate) fn acked(vector: hearth_core::Vector, pushed: &hearth_core::Vector) -> hearth_core::Vector {
    hearth_core::Vector(vector.0.into_iter().filter(|(d, _)| pushed.0.contains_key(d)).collect())
}

/// The answer to a request for a channel the peer did not prove: the same
/// as for a channel not held, so that it learns nothing.
fn unknown() -> Response {
    Response::Refused {
        reason: "unknown channel".into(),
    }
}

/// Answer one request from the peer of `conn`. A Hello records the channels
/// the peer proved; Fetch and Push are served only for those.
pub async fn serve<R: Replica>(replica: &R, req: Request, conn: &Conn) -> (Response, Served) {
    let mut served = Served::default();
    let resp = match req {
        Request::Hello {
            version,
            nonce,
            summary,
            relay: _,
            who,
            certs,
            want_chain,
        } => {
            if version != crate::proto::VERSION {
                Response::Refused {
                    reason: format!(
                        "protocol version {version} not spoken (this node speaks {})",
                        crate::proto::VERSION
                    ),
                }
            } else {
                let claim = Claim {
                    who: who.map(|w| *w),
                    certs,
                    role: WhoRole::Hello,
                    nonce,
                    ends: conn.ends_as_responder(),
                    matched: Vec::new(),
                };
                match answer(replica, conn, claim, &summary, want_chain).await {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(forged)) => {
                        served.malicious = true;
                        served.reason = Some(forged.clone());
                        Response::Refused { reason: forged }
                    }
                    Err(e) => refused(e),
                }
            }
        }
        Request::Grant { grants, cert } => {
            let grants = grants
                .into_iter()
                .map(|(w, k)| (w, SecretKey::from_bytes(k.0)))
                .collect();
            match replica.grant(grants).await {
                Ok(Some(mut vectors)) => {
                    // Served only to a device that may be (a removed
                    // member's grant proves nothing), or from a relay this
                    // user configured.
                    if !conn.trusted {
                        let wires = vectors.iter().map(|(w, _)| *w).collect();
                        let allowed = match conn.device() {
                            Some(d) => match replica.serving(d, wires).await {
                                Ok(a) => a,
                                Err(e) => return (refused(e), served),
                            },
                            None => Vec::new(),
                        };
                        vectors.retain(|(w, _)| allowed.contains(w));
                    }
                    conn.prove(vectors.iter().map(|(w, _)| *w));
                    // The certificate stands for the channels of this
                    // connection (proved or just granted).
                    let kept = match cert {
                        Some(c) => {
                            let wires = conn
                                .proven
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .iter()
                                .copied()
                                .collect();
                            replica.certify(c, conn.me.clone(), wires).await
                        }
                        None => Ok(()),
                    };
                    match kept {
                        Ok(()) => Response::Granted { vectors },
                        Err(e) => refused(e),
                    }
                }
                Ok(None) => Response::Refused {
                    reason: "only a relay takes grants".into(),
                },
                Err(e) => refused(e),
            }
        }
        Request::Fetch { wire, .. } | Request::Push { wire, .. } if !conn.proved(&wire) => unknown(),
        Request::Fetch { wire, have, max_bytes } => {
            let (bytes, count) = fetch_budget(max_bytes);
            match replica.entries_after(wire, have.clone(), bytes, count).await {
                Ok(Some(b)) => {
                    // What the peer holds once it takes this answer: a push
                    // to it must not send the same entries again (a catch-up
                    // that ingests fast gets its receipts back here before
                    // it fetches again, and they set off a push).
                    let mut learned = have;
                    learned.merge(&pushed_heads(b.entries.iter().map(Vec::as_slice)));
                    served.learned = Some((wire, learned));
                    served.more = b.more;
                    Response::Entries {
                        entries: b.entries.into_iter().map(ByteBuf::from).collect(),
                        more: b.more,
                    }
                }
                Ok(None) => unknown(),
                Err(e) => refused(e),
            }
        }
        // Anyone may ask to be let in through an invite: the invite's
        // signature, not a channel proof, decides.
        Request::Join {
            invite,
            user,
            chain,
            sig,
        } => {
            let req = hearth_store::JoinRequest {
                invite,
                user,
                chain,
                sig: sig.into_array(),
            };
            match replica.admit(req).await {
                Ok(Some(sealed)) => Response::Joined {
                    sealed: ByteBuf::from(sealed),
                },
                Ok(None) => Response::Refused {
                    reason: "a relay lets nobody in: ask a member's node".into(),
                },
                Err(e) => refused(e),
            }
        }
        // Notices of channels the peer proved on this connection only (a
        // stranger fills no relay with them).
        Request::Revoke {
            notices,
            removals,
            drops,
        } => {
            let notices: Vec<Vec<u8>> = notices
                .into_iter()
                .map(ByteBuf::into_vec)
                .filter(|n| hearth_core::member::RevocationNotice::decode(n).is_ok_and(|n| conn.proved(&n.wire)))
                .collect();
            let removals = removals.into_iter().filter(|r| conn.proved(&r.wire)).collect();
            let drops = drops.into_iter().filter(|d| conn.proved(&d.wire)).collect();
            match replica.note(notices, removals, drops, conn.device()).await {
                Ok(Some(held)) => Response::Noted { held },
                Ok(None) => Response::Refused {
                    reason: "only a relay takes revocation notices".into(),
                },
                Err(e) => refused(e),
            }
        }
        // Only a node with a link offer answers Link (it does so itself).
        Request::Link { .. } => Response::Refused {
            reason: "no device link is on offer here".into(),
        },
        Request::Push { wire, entries } => {
            let entries: Vec<Vec<u8>> = entries.into_iter().map(ByteBuf::into_vec).collect();
            let heads = pushed_heads(entries.iter().map(Vec::as_slice));
            match replica.ingest(wire, entries).await {
                Ok(Some(r)) => {
                    served.accepted = r.accepted as u64;
                    served.rejected = r.rejected.len() as u64;
                    served.reason = r.rejected.first().map(|x| x.reason.to_string());
                    served.malicious = r.rejected.iter().any(|x| x.is_peer_fault());
                    served.failed_content = r
                        .rejected
                        .iter()
                        .filter(|x| matches!(x.reason, hearth_store::Refusal::Content(_)))
                        .count() as u64;
                    Response::Ack {
                        vector: acked(r.vector, &heads),
                        accepted: r.accepted as u32,
                        rejected: r.rejected.len() as u32,
                        reason: served.reason.clone(),
                    }
                }
                Ok(None) => unknown(),
                Err(e) => refused(e),
            }
        }
    };
    (resp, served)
}

/// The answer to a Hello: the channels the peer proved the access key of
/// and may be served (see [`Replica::vet`]), this side's own proof, and
/// (`Err`) why a proof the peer sent was forged.
async fn answer<R: Replica>(
    replica: &R,
    conn: &Conn,
    claim: Claim,
    summary: &[crate::proto::ChannelDigest],
    want_chain: bool,
) -> hearth_store::Result<Result<Response, String>> {
    let local = replica.vectors().await?;
    let mut keys: crate::auth::Keyring = replica.access_keys().await?.into_iter().collect();
    let ends = conn.ends_as_responder();
    let (_, candidates) = answer_hello(&local, &keys, &claim.nonce, summary, &ends, replica.is_relay());
    let (allowed, device) = if conn.trusted && claim.who.is_none() {
        (candidates.clone(), None)
    } else if candidates.is_empty() && claim.who.is_none() {
        (Vec::new(), None)
    } else {
        match replica.vet(claim.clone(), candidates.clone()).await? {
            Vetting::Allowed { wires, device } => (wires, device),
            Vetting::Unknown => {
                return Ok(Ok(Response::Refused {
                    reason: crate::proto::WHO.into(),
                }));
            }
            Vetting::Forged(why) => return Ok(Err(format!("a forged device proof: {why}"))),
        }
    };
    *conn.device.lock().unwrap_or_else(PoisonError::into_inner) = device.clone();
    // A member no more (removed, revoked): served nothing, as a stranger,
    // but told of its removal where an admin signed it.
    let withheld: Vec<WireId> = candidates.iter().filter(|w| !allowed.contains(w)).copied().collect();
    let told = match &device {
        Some(d) if !withheld.is_empty() => replica.told(d.user, withheld.clone()).await?,
        _ => Vec::new(),
    };
    conn.unprove(withheld);
    keys.retain(|w, _| allowed.contains(w));
    let (mut resp, proved) = answer_hello(&local, &keys, &claim.nonce, summary, &ends, replica.is_relay());
    if let Response::Hello {
        matched,
        who,
        certs,
        removed,
        ..
    } = &mut resp
    {
        *removed = told;
        *who = replica
            .who(WhoRole::Answer, claim.nonce, ends, matched.to_vec(), want_chain)
            .await?
            .map(Box::new);
        if who.is_none() {
            *certs = replica.relay_certs(proved.clone()).await?;
        }
    }
    // Before the answer leaves: the peer fetches at once.
    conn.prove(proved);
    Ok(Ok(resp))
}

fn refused(e: hearth_store::Error) -> Response {
    Response::Refused { reason: e.to_string() }
}
