//! Running a [`Session`] against a replica, and answering a peer's requests.
//! Both are independent of the transport: the node plugs libp2p in, tests plug
//! in a direct call to the other replica.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use hearth_core::{SecretKey, WireId};
use serde_bytes::ByteBuf;

use crate::Replica;
use crate::auth::Ends;
use crate::proto::{BATCH_BYTES, BATCH_ENTRIES, Request, Response};
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
    /// Hashes of the revocation notices the peer (a relay) holds: each is
    /// sent once (shared by the node across this peer's connections).
    noted: Arc<Mutex<BTreeSet<[u8; 32]>>>,
}

impl Conn {
    /// A new connection between `me` and `peer`: nothing proved yet.
    pub fn new(me: Vec<u8>, peer: Vec<u8>) -> Self {
        Conn {
            me,
            peer,
            proven: Arc::default(),
            noted: Arc::default(),
        }
    }

    /// Share `noted` (the notices the peer holds, as far as this node knows)
    /// with the node's other connections to the peer.
    pub fn with_noted(mut self, noted: Arc<Mutex<BTreeSet<[u8; 32]>>>) -> Self {
        self.noted = noted;
        self
    }

    fn noted(&self) -> std::sync::MutexGuard<'_, BTreeSet<[u8; 32]>> {
        self.noted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record channels the peer proved.
    pub fn prove(&self, wires: impl IntoIterator<Item = WireId>) {
        self.proven.lock().unwrap_or_else(PoisonError::into_inner).extend(wires);
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
        {
            let noted = self.noted();
            notices.retain(|(_, n)| !noted.contains(blake3::hash(n).as_bytes()));
        }
        Ok(Session::full(
            local,
            replica.is_relay(),
            self.auth(keys).granting(grant).with_notices(notices),
        ))
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
pub async fn run_session<R, F, Fut>(mut session: Session, replica: &R, conn: &Conn, mut send: F) -> Outcome
where
    R: Replica,
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Response, String>>,
{
    let mut action = session.start();
    loop {
        action = match action {
            Action::Send(req) => match send(req).await {
                Ok(resp) => {
                    let next = session.on_response(resp);
                    conn.prove(session.take_proved());
                    next
                }
                Err(e) => return failed(session, e),
            },
            Action::Read { wire, have } => match replica.entries_after(wire, have, BATCH_BYTES, BATCH_ENTRIES).await {
                Ok(batch) => session.on_entries(batch),
                Err(e) => return failed(session, e.to_string()),
            },
            Action::Ingest { wire, entries } => match replica.ingest(wire, entries).await {
                Ok(report) => session.on_ingested(report),
                Err(e) => return failed(session, e.to_string()),
            },
            Action::Done => {
                let o = session.into_outcome();
                conn.noted().extend(o.noted.iter().map(|n| *blake3::hash(n).as_bytes()));
                return o;
            }
        }
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
    /// For a Push: the channel and this replica's vector after it.
    pub acked: Option<(hearth_core::WireId, hearth_core::Vector)>,
    /// For a Fetch of a channel held here: what the peer said it holds.
    pub learned: Option<(hearth_core::WireId, hearth_core::Vector)>,
    /// For a Push stored whole: the feed positions it shows the peer holds
    /// (each pushed feed up to its highest pushed entry), so that they are not
    /// pushed back to it.
    pub held: Option<(hearth_core::WireId, hearth_core::Vector)>,
}

/// Each feed of `entries` up to its highest entry there. Only meaningful for
/// entries that were verified (the caller checks the ingest took them all).
fn pushed_heads(entries: &[Vec<u8>]) -> hearth_core::Vector {
    let mut v = hearth_core::Vector::default();
    for e in entries {
        if let Ok(env) = hearth_core::Envelope::decode(e) {
            let pos = hearth_core::FeedPos {
                seq: env.header.seq,
                hash: hearth_core::Envelope::hash_of(e),
            };
            let p = v.0.entry(env.header.device).or_insert(pos);
            if pos.seq > p.seq {
                *p = pos;
            }
        }
    }
    v
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
        } => {
            if version != crate::proto::VERSION {
                Response::Refused {
                    reason: format!(
                        "protocol version {version} not spoken (this node speaks {})",
                        crate::proto::VERSION
                    ),
                }
            } else {
                match (replica.vectors().await, replica.access_keys().await) {
                    (Ok(local), Ok(keys)) => {
                        let keys = keys.into_iter().collect();
                        let (resp, proved) = answer_hello(
                            &local,
                            &keys,
                            &nonce,
                            &summary,
                            &conn.ends_as_responder(),
                            replica.is_relay(),
                        );
                        // Before the answer leaves: the peer fetches at once.
                        conn.prove(proved);
                        resp
                    }
                    (Err(e), _) | (_, Err(e)) => refused(e),
                }
            }
        }
        Request::Grant { grants } => {
            let grants = grants
                .into_iter()
                .map(|(w, k)| (w, SecretKey::from_bytes(k.0)))
                .collect();
            match replica.grant(grants).await {
                Ok(Some(vectors)) => {
                    conn.prove(vectors.iter().map(|(w, _)| *w));
                    Response::Granted { vectors }
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
                    served.learned = Some((wire, have));
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
        Request::Revoke { notices } => {
            let notices: Vec<Vec<u8>> = notices
                .into_iter()
                .map(ByteBuf::into_vec)
                .filter(|n| hearth_core::member::RevocationNotice::decode(n).is_ok_and(|n| conn.proved(&n.wire)))
                .collect();
            match replica.note(notices).await {
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
            let heads = pushed_heads(&entries);
            match replica.ingest(wire, entries).await {
                Ok(Some(r)) => {
                    if r.rejected.is_empty() {
                        served.held = Some((wire, heads));
                    }
                    served.accepted = r.accepted as u64;
                    served.rejected = r.rejected.len() as u64;
                    served.reason = r.rejected.first().map(|x| x.reason.to_string());
                    served.malicious = r.rejected.iter().any(|x| x.is_peer_fault());
                    served.failed_content = r
                        .rejected
                        .iter()
                        .filter(|x| matches!(x.reason, hearth_store::Refusal::Content(_)))
                        .count() as u64;
                    served.acked = Some((wire, r.vector.clone()));
                    Response::Ack {
                        vector: r.vector,
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

fn refused(e: hearth_store::Error) -> Response {
    Response::Refused { reason: e.to_string() }
}
