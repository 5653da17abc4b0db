//! The wire protocol: request/response frames over libp2p request-response,
//! each a postcard value behind a 4-byte big-endian length.
//!
//! ```text
//! Hello  {version, nonce, summary: [(tag 8 B, digest 6 B)], relay, who, certs, want_chain}
//!     -> Hello {matched: bitmap, proof 16 B, differ: [(index, vector)], relay, who, certs, removed}
//! Fetch  {wire, have: vector, max_bytes}       -> Entries {entries, more}
//! Push   {wire, entries}                       -> Ack {vector, accepted, rejected}
//! Grant  {grants: [(wire, access key)], cert}  -> Granted {vectors}   (to a relay)
//! Join   {invite, user, chain, sig}            -> Joined {sealed}     (from anyone)
//! Revoke {notices: [revocation notice], removals, drops} -> Noted {held} (to a relay)
//! Link   {proof, keys}                         -> Link {sealed}       (a new device)
//! ```
//!
//! Pushes take a long-lived stream of their own where the peer speaks it
//! ([`crate::live`], `/hearth/live/2`): the same Push and Ack, with lean
//! entries, and an Ack of two bytes for several Pushes.
//!
//! Protocol 12 changes what an Ack says: the receiver's heads of the feeds
//! the Push carried only (the pusher knows the rest of its vector from the
//! Hello or the Acks before), so a live message's Ack does not grow with
//! the channel's devices. The frames are the same.
//!
//! Protocol 11 carries feed entries of format 5 (texts named by slot, one
//! root over them in the sealed body: `hearth_core::textpack`); protocol
//! 10 carries stubs (entries of dead epochs cut to their body's hash). The
//! frames are the same.
//!
//! Protocol 9 adds text drops to Revoke: the packs a member's store sealed
//! again without a deleted message's texts (`hearth_core::peer::TextDrop`),
//! which a relay takes from the entry's author, so that it stops serving a
//! deleted or expired text.
//!
//! Protocol 8 carries feed entries of format 4 (an entry's texts in one
//! pack), protocol 7 those of format 3 (a segment per text): the frames are
//! the same, but a peer of an older protocol cannot read the entries.
//!
//! Protocol 6 changes Link: the new device sends its public keys, and the
//! linking device answers with a certificate chain it issued for them
//! instead of the user key (`hearth_core::LinkBundle` version 2); and the
//! answer to a Hello carries, for the channels the requester proved but is
//! served no more, the notices of its user's removal (`removed`), signed by
//! the removing admin, which its store keeps and then writes there no more.
//!
//! Protocol 5 adds who asks (`hearth_core::peer`): a Hello and its answer
//! carry the device's proof (`who`, its chain when the other side may not
//! hold it, or asked for it with `want_chain`), or, from a relay, the relay
//! certificates of the users that configured it (`certs`). A channel is
//! served only to a device its roster neither removes nor revokes, or to a
//! relay a current member certified; a proof without a chain for a device
//! the responder does not know is answered `Refused` [`WHO`], and the
//! requester says it again with its chain. A Grant carries the granting
//! device's relay certificate; Revoke, the removals of the channels.
//!
//! Protocol 4 adds Revoke: a member hands a relay the revocation notices of
//! the channels the relay proved (`hearth_core::member::RevocationNotice`,
//! signed by the revoking device), and the relay refuses and stops serving
//! the revoked devices' entries past their cut.
//! Protocol 3 adds Join: the holder of an invite asks a member's node to let
//! it in (`hearth_store::Store::admit`); it needs no proof of a channel.
//! Protocol 2: a channel is named in a Hello only by a tag its members can
//! compute, and listed, fetched or pushed only between peers that proved
//! they hold it on this connection ([`crate::auth`]). Two peers already in
//! sync settle every channel with one Hello: 14 bytes a channel out, a bitmap
//! and 16 bytes back. A member grants the relays its user configured the
//! access keys (never the content keys) of its channels, so that they can
//! check other members' proofs. Frames are capped before anything is
//! allocated; entries travel as the exact bytes stored (sealed once).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hearth_core::{Vector, WireId};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

/// The protocol name (the version is in it).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/sync/12");
/// Protocol version carried in Hello.
pub const VERSION: u16 = 12;
/// Names of earlier versions of the protocol, which this node does not speak:
/// a peer offering only these is reported as incompatible, not banned.
pub const OLD_PROTOCOLS: [&str; 11] = [
    "/hearth/sync/1",
    "/hearth/sync/2",
    "/hearth/sync/3",
    "/hearth/sync/4",
    "/hearth/sync/5",
    "/hearth/sync/6",
    "/hearth/sync/7",
    "/hearth/sync/8",
    "/hearth/sync/9",
    "/hearth/sync/10",
    "/hearth/sync/11",
];
/// The reason of a Hello refused for a device proof without a chain that
/// the responder cannot check: say it again with the chain.
pub const WHO: &str = "who are you? (send your certificate chain)";
/// Most relay certificates in a Hello or its answer.
pub const MAX_CERTS: usize = 64;
/// Largest request frame (a push batch).
pub const MAX_REQUEST: usize = 1 << 20;
/// Largest response frame (an entries batch).
pub const MAX_RESPONSE: usize = 2 << 20;
/// Largest batch of entries a side sends in one frame, in bytes.
pub const BATCH_BYTES: usize = 512 * 1024;
/// Largest number of entries in one frame.
pub const BATCH_ENTRIES: usize = 2048;
/// Most certificates in a Join's chain.
pub const MAX_JOIN_CHAIN: usize = 8;
/// Most channels in one Hello.
pub const MAX_CHANNELS: usize = 16_384;
/// Most revocation notices in one Revoke.
pub const MAX_NOTICES: usize = 256;

/// The first 8 bytes of a wire id: enough to name a channel in a Hello.
pub type WireTag = [u8; 8];

/// A wire id's tag.
pub fn tag(wire: &WireId) -> WireTag {
    let mut t = [0; 8];
    t.copy_from_slice(&wire.0[..8]);
    t
}

/// One channel in a Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDigest {
    /// [`crate::auth::tag`]: names the channel to a peer holding its access key.
    pub tag: [u8; 8],
    /// [`crate::auth::digest`] of the sender's [`Vector::digest`].
    pub digest: [u8; 6],
}

/// A channel's access key as a Grant carries it (never shown by `Debug`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct AccessBytes(pub [u8; 32]);

impl std::fmt::Debug for AccessBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessBytes(<redacted>)")
    }
}

/// Most bytes of a Hello answer's `matched` bitmap.
pub const MAX_BITMAP: usize = MAX_CHANNELS.div_ceil(8);

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Compare every channel the sender holds.
    Hello {
        /// Protocol version.
        version: u16,
        /// Fresh for this Hello: the answer's proof covers it.
        nonce: [u8; 16],
        /// The sender's channels, each named by a tag only members can compute.
        summary: Vec<ChannelDigest>,
        /// The sender is a relay (shown in status).
        relay: bool,
        /// The sending device's proof (none from a relay).
        who: Option<Box<hearth_core::peer::Who>>,
        /// A relay's certificates by the users that configured it.
        certs: Vec<hearth_core::peer::RelayCert>,
        /// Answer with the responder's certificate chain.
        want_chain: bool,
    },
    /// Ask for the entries `have` lacks.
    Fetch {
        /// The channel.
        wire: WireId,
        /// What the sender holds.
        have: Vector,
        /// Budget for the answer.
        max_bytes: u32,
    },
    /// Entries the receiver lacks, each feed in order.
    Push {
        /// The channel.
        wire: WireId,
        /// Envelope bytes.
        entries: Vec<serde_bytes::ByteBuf>,
    },
    /// A new device of the user asks for its link bundle (`hearth link`).
    Link {
        /// [`hearth_core::link_proof`] of the link secret over the requester's peer id.
        proof: [u8; 32],
        /// The new device's public keys, which the linking device certifies
        /// (protocol 6).
        keys: hearth_core::device::DevicePublic,
    },
    /// A member gives a relay its user configured the access keys of channels
    /// the relay did not prove it holds, so that the relay carries them and
    /// can check other members' proofs. Only a relay takes it.
    Grant {
        /// Channels and their access keys.
        grants: Vec<(WireId, AccessBytes)>,
        /// The granting device's certificate of the relay, which the relay
        /// keeps for the channels of this connection and shows members.
        cert: Option<hearth_core::peer::RelayCert>,
    },
    /// The holder of an invite asks to be let in (any member's node answers;
    /// no proof of a channel is needed).
    Join {
        /// The invite's id.
        invite: [u8; 16],
        /// The joining user.
        user: hearth_core::UserId,
        /// The joining device's certificate chain.
        chain: Vec<hearth_core::device::DeviceCert>,
        /// `hearth_core::member::sign_join` by the invite's secret.
        sig: serde_bytes::ByteArray<64>,
    },
    /// A member hands a relay revocation notices (encoded
    /// `hearth_core::member::RevocationNotice`s) of channels the relay
    /// proved. Only a relay takes it.
    Revoke {
        /// The notices.
        notices: Vec<serde_bytes::ByteBuf>,
        /// Removals of channels the relay proved (taken from a user that
        /// certified the relay for the channel only).
        removals: Vec<hearth_core::peer::RemovalNotice>,
        /// Texts the sender's store dropped from entries of channels the
        /// relay proved (protocol 9): taken from a device of the entry's
        /// author.
        drops: Vec<hearth_core::peer::TextDrop>,
    },
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to Hello.
    Hello {
        /// Bit `i` set: the responder holds the channel of the Hello's `i`-th tag.
        matched: serde_bytes::ByteBuf,
        /// [`crate::auth::answer`] over `matched`: the responder holds them all.
        proof: [u8; 16],
        /// Matched channels whose vectors differ, by their index in the
        /// Hello: the responder's vector.
        differ: Vec<(u32, Vector)>,
        /// The responder is a relay.
        relay: bool,
        /// The responding device's proof over `matched` too (none from a relay).
        who: Option<Box<hearth_core::peer::Who>>,
        /// A relay's certificates of the channels matched.
        certs: Vec<hearth_core::peer::RelayCert>,
        /// Notices of the requesting user's removal from channels it proved
        /// but is served no more (protocol 6; at most 64), so that its
        /// devices learn of it ([`hearth_core::peer::RemovedNotice`]).
        removed: Vec<hearth_core::peer::RemovedNotice>,
    },
    /// Answer to Fetch.
    Entries {
        /// Envelope bytes, each feed in order.
        entries: Vec<serde_bytes::ByteBuf>,
        /// More is missing beyond this batch.
        more: bool,
    },
    /// Answer to Push: the receiver's vector after storing what it accepted.
    Ack {
        /// The receiver's vector of the channel.
        vector: Vector,
        /// Entries accepted.
        accepted: u32,
        /// Entries refused.
        rejected: u32,
        /// Why the first refused entry was refused.
        reason: Option<String>,
    },
    /// Answer to Link: the sealed [`hearth_core::LinkBundle`] (its chain
    /// certifies the keys the Link sent).
    Link {
        /// The bundle, sealed under the link secret.
        sealed: serde_bytes::ByteBuf,
    },
    /// The request was not served.
    Refused {
        /// Why.
        reason: String,
    },
    /// Answer to Grant: the relay's vector of each channel it took.
    Granted {
        /// Channels granted and what the relay holds of them.
        vectors: Vec<(WireId, Vector)>,
    },
    /// Answer to Join: the channel's keys and name, sealed to the joining
    /// device (`hearth_store::Store::accept_invite` opens them).
    Joined {
        /// The sealed channel record.
        sealed: serde_bytes::ByteBuf,
    },
    /// Answer to Revoke: how many of the notices the relay holds now.
    Noted {
        /// Notices held (taken now or before).
        held: u32,
    },
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Longer than the cap for its direction.
    #[error("frame of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Claimed size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Does not decode, or not in canonical form, or over a count limit.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn check_len(size: usize, limit: usize) -> Result<(), FrameError> {
    if size > limit {
        Err(FrameError::TooLarge { size, limit })
    } else {
        Ok(())
    }
}

fn decode<T: for<'de> Deserialize<'de> + Serialize>(bytes: &[u8], limit: usize) -> Result<T, FrameError> {
    check_len(bytes.len(), limit)?;
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed("trailing bytes".into()));
    }
    // One frame, one encoding: postcard takes over-long varints, and a map
    // (a vector) in any order or with repeated keys. Found by fuzzing
    // (fuzz/corpus/sync_request/crash-*). Re-encoding costs one copy.
    if postcard::to_stdvec(&v).map_err(|e| FrameError::Malformed(e.to_string()))? != bytes {
        return Err(FrameError::Malformed("not in canonical encoding".into()));
    }
    Ok(v)
}

/// A Hello's proofs within their counts: at most [`MAX_CERTS`] relay
/// certificates, chains of at most 8.
fn proofs_fit(who: &Option<Box<hearth_core::peer::Who>>, certs: &[hearth_core::peer::RelayCert]) -> bool {
    use hearth_core::peer::MAX_CHAIN;
    certs.len() <= MAX_CERTS
        && certs.iter().all(|c| c.chain.len() <= MAX_CHAIN)
        && who.as_ref().is_none_or(|w| w.chain.len() <= MAX_CHAIN)
}

impl Request {
    /// Decode a request frame body (after the length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let r: Request = decode(bytes, MAX_REQUEST)?;
        match &r {
            Request::Hello { summary, .. } if summary.len() > MAX_CHANNELS => {
                Err(FrameError::Malformed("too many channels".into()))
            }
            Request::Hello { who, certs, .. } if !proofs_fit(who, certs) => {
                Err(FrameError::Malformed("too many certificates".into()))
            }
            Request::Push { entries, .. } if entries.len() > BATCH_ENTRIES => {
                Err(FrameError::Malformed("too many entries".into()))
            }
            Request::Grant { grants, .. } if grants.len() > MAX_CHANNELS => {
                Err(FrameError::Malformed("too many channels".into()))
            }
            Request::Join { chain, .. } if chain.len() > MAX_JOIN_CHAIN => {
                Err(FrameError::Malformed("a certificate chain longer than 8".into()))
            }
            Request::Revoke {
                notices,
                removals,
                drops,
            } if notices.len() > MAX_NOTICES || removals.len() > MAX_NOTICES || drops.len() > MAX_NOTICES => {
                Err(FrameError::Malformed("too many notices".into()))
            }
            Request::Revoke { removals, .. } if removals.iter().any(|r| r.check().is_err()) => {
                Err(FrameError::Malformed("a removal notice out of form".into()))
            }
            _ => Ok(r),
        }
    }

    /// Encode a request frame body.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("requests encode")
    }
}

impl Response {
    /// Decode a response frame body (after the length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let r: Response = decode(bytes, MAX_RESPONSE)?;
        match &r {
            Response::Hello { matched, differ, .. } if matched.len() > MAX_BITMAP || differ.len() > MAX_CHANNELS => {
                Err(FrameError::Malformed("too many channels".into()))
            }
            Response::Hello { who, certs, .. } if !proofs_fit(who, certs) => {
                Err(FrameError::Malformed("too many certificates".into()))
            }
            Response::Hello { removed, .. }
                if removed.len() > MAX_CERTS
                    || removed.iter().any(|n| n.chain.len() > hearth_core::peer::MAX_CHAIN) =>
            {
                Err(FrameError::Malformed("too many notices of a removal".into()))
            }
            Response::Granted { vectors } if vectors.len() > MAX_CHANNELS => {
                Err(FrameError::Malformed("too many channels".into()))
            }
            Response::Entries { entries, .. } if entries.len() > BATCH_ENTRIES => {
                Err(FrameError::Malformed("too many entries".into()))
            }
            _ => Ok(r),
        }
    }

    /// Encode a response frame body.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("responses encode")
    }
}

/// A request as the codec reads it: a frame that is over its cap or does not
/// decode still reaches the node (as `Malformed`), which reports the peer and
/// drops it; libp2p itself would only log a failed read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// A well-formed request.
    Valid(Request),
    /// Why the frame was refused.
    Malformed(String),
}

/// The libp2p codec: length-prefixed postcard frames, capped before allocating.
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    check_len(len, limit).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8], limit: usize) -> io::Result<()> {
    check_len(bytes.len(), limit).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // One write: yamux sends each write as a frame of its own and Noise
    // seals each frame apart, so the length prefix on its own cost 34 bytes
    // on the wire (and a wake-up of the receiver) for its 4.
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(bytes);
    io.write_all(&frame).await?;
    io.flush().await
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Framed;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Framed>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, MAX_REQUEST).await {
            Ok(bytes) => Ok(match Request::decode(&bytes) {
                Ok(r) => Framed::Valid(r),
                Err(e) => Framed::Malformed(e.to_string()),
            }),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Framed::Malformed(e.to_string())),
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        Response::decode(&read_frame(io, MAX_RESPONSE).await?).map_err(invalid)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Framed) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Framed::Valid(r) => write_frame(io, &r.encode(), MAX_REQUEST).await,
            Framed::Malformed(why) => Err(io::Error::new(io::ErrorKind::InvalidInput, why)),
        }
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res.encode(), MAX_RESPONSE).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::FeedPos;

    #[test]
    fn frames_round_trip_and_caps_hold() {
        let v = Vector([(hearth_core::DeviceId([1; 16]), FeedPos { seq: 3, hash: [2; 32] })].into());
        let reqs = [
            Request::Hello {
                version: VERSION,
                nonce: [4; 16],
                summary: vec![ChannelDigest {
                    tag: [1; 8],
                    digest: [2; 6],
                }],
                relay: false,
                who: None,
                certs: Vec::new(),
                want_chain: false,
            },
            Request::Fetch {
                wire: WireId([3; 32]),
                have: v.clone(),
                max_bytes: 100,
            },
            Request::Push {
                wire: WireId([3; 32]),
                entries: vec![serde_bytes::ByteBuf::from(vec![1, 2, 3])],
            },
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let resp = Response::Ack {
            vector: v,
            accepted: 1,
            rejected: 0,
            reason: None,
        };
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        assert!(matches!(
            Request::decode(&vec![0; MAX_REQUEST + 1]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(Request::decode(&[9, 9, 9]).is_err());
        let grant = Request::Grant {
            grants: vec![(WireId([3; 32]), AccessBytes([9; 32]))],
            cert: None,
        };
        assert_eq!(Request::decode(&grant.encode()).unwrap(), grant);
        assert!(!format!("{grant:?}").contains("9, 9"), "access keys stay out of Debug");
        let mut trailing = Request::Hello {
            version: 1,
            nonce: [0; 16],
            summary: vec![],
            relay: false,
            who: None,
            certs: Vec::new(),
            want_chain: false,
        }
        .encode();
        trailing.push(0);
        assert!(Request::decode(&trailing).is_err());
    }

    #[tokio::test]
    async fn the_codec_refuses_an_oversized_length_before_reading_it() {
        use libp2p::request_response::Codec as _;
        let mut frame = ((MAX_REQUEST + 1) as u32).to_be_bytes().to_vec();
        frame.extend([0; 16]);
        let mut io = futures::io::Cursor::new(frame);
        let got = Codec.read_request(&PROTOCOL, &mut io).await.unwrap();
        assert!(matches!(got, Framed::Malformed(_)), "{got:?}");
        // Nothing beyond the prefix was consumed.
        assert_eq!(io.position(), 4);
    }
}
