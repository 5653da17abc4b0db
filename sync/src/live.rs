//! The live stream (`/hearth/live/1`): one long-lived libp2p stream per peer
//! and direction that carries the Pushes of a connection, so that a live
//! message costs one frame each way instead of a request-response stream
//! (multistream-select both ways, a yamux open and two closes, each write its
//! own Noise frame).
//!
//! ```text
//! frame:  varint length | postcard body          (each way, one write a frame)
//! pusher -> receiver:  LivePush { entries: [Whole(entry bytes) | Next { feed, lean bytes }] }
//! receiver -> pusher:  LiveAck::Took               every entry stored, the heads are those pushed
//!                    | LiveAck::Said(Response)      anything else: the Ack or refusal a Push gets
//! ```
//!
//! Both ends keep a [`FeedTable`] of the stream: every entry that decodes,
//! whole or lean, in the order sent, sets its feed's row (wire, user, device,
//! seq, hash; a new feed gets the next index, up to [`MAX_LIVE_FEEDS`]). The
//! pusher sends an entry lean ([`hearth_core::Envelope::encode_lean`]: no
//! wire, user, device, seq or prev, about 115 bytes fewer) when the row of
//! its feed is the entry just before it; the receiver rebuilds it from that
//! row. The table is a function of the frames alone, so both ends agree on
//! it without saying so; a wrong rebuild can only give an entry whose
//! signature fails, which the store refuses as it refuses any forgery.
//!
//! Every entry of a frame belongs to one channel (that of its first entry
//! that decodes), proved on the connection as a Push's must be. A frame that
//! does not decode, names a feed index the table has not got, rebuilds to a
//! malformed entry or mixes channels is the peer's fault: the stream ends
//! and the peer is refused as for a malformed request. A peer without the
//! protocol (a Hearth relay, an older node) is pushed to by requests.

use std::collections::HashMap;
use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hearth_core::{DeviceId, Envelope, LeanContext, WireId};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::proto::{BATCH_ENTRIES, Response};

/// The live stream's protocol name.
pub const LIVE_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/live/1");
/// Most feeds a live stream's table names (later feeds travel whole).
pub const MAX_LIVE_FEEDS: usize = 4096;
/// Most live streams a peer may hold open to this node at once (one, and
/// its successor while the broken one is being torn down).
pub const MAX_LIVE_STREAMS: usize = 4;

/// One entry of a live Push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LiveEntry {
    /// The entry's bytes as stored.
    Whole(ByteBuf),
    /// The entry after the one the table's row `feed` holds, lean.
    Next {
        /// The feed's index in the stream's table.
        feed: u32,
        /// [`Envelope::encode_lean`] of the entry.
        lean: ByteBuf,
    },
}

/// A pusher's frame: entries of one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePush {
    /// The entries, in feed order.
    pub entries: Vec<LiveEntry>,
}

/// A receiver's answer to one [`LivePush`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveAck {
    /// Every entry was stored, and this node's heads of the feeds pushed are
    /// the entries pushed (the Ack a Push would get, said in one byte).
    Took,
    /// The answer a Push would get (an Ack or a refusal), when it says more
    /// than `Took`.
    Said(Response),
}

/// A [`LiveAck`] as sent: a response as its own frame encodes it.
#[derive(Serialize, Deserialize)]
enum AckWire {
    Took,
    Said(ByteBuf),
}

/// Why a live frame was refused: the peer's fault.
#[derive(Debug, thiserror::Error)]
#[error("malformed live frame: {0}")]
pub struct Malformed(pub String);

/// The feeds a live stream has carried, as both ends see them.
#[derive(Default)]
pub struct FeedTable {
    index: HashMap<(WireId, DeviceId), u32>,
    feeds: Vec<LeanContext>,
}

impl FeedTable {
    /// Record an entry sent or received on the stream.
    fn note(&mut self, env: &Envelope) {
        let key = (env.header.wire, env.header.device);
        let row = env.lean_context();
        match self.index.get(&key) {
            Some(&i) => self.feeds[i as usize] = row,
            None if self.feeds.len() < MAX_LIVE_FEEDS => {
                self.index.insert(key, self.feeds.len() as u32);
                self.feeds.push(row);
            }
            None => {}
        }
    }

    /// The row `env` follows, when it is the next entry of a feed the table holds.
    fn follows(&self, env: &Envelope) -> Option<u32> {
        let i = *self.index.get(&(env.header.wire, env.header.device))?;
        let row = &self.feeds[i as usize];
        (row.user == env.header.user && row.seq.checked_add(1) == Some(env.header.seq) && row.hash == env.header.prev)
            .then_some(i)
    }

    /// How many feeds the table names.
    pub fn len(&self) -> usize {
        self.feeds.len()
    }

    /// Whether the table names no feed.
    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }
}

/// A pusher's frame for `entries` (bytes as stored), lean where the table
/// allows; records them in the table.
pub fn encode_push(table: &mut FeedTable, entries: &[ByteBuf]) -> Vec<u8> {
    let entries = entries
        .iter()
        .map(|bytes| match Envelope::decode(bytes) {
            Ok(env) => {
                let lean = table
                    .follows(&env)
                    .and_then(|feed| Some((feed, env.encode_lean()?)))
                    .map(|(feed, lean)| LiveEntry::Next {
                        feed,
                        lean: ByteBuf::from(lean),
                    });
                table.note(&env);
                lean.unwrap_or_else(|| LiveEntry::Whole(bytes.clone()))
            }
            Err(_) => LiveEntry::Whole(bytes.clone()),
        })
        .collect();
    postcard::to_stdvec(&LivePush { entries }).expect("a live push encodes")
}

/// A receiver's reading of a pusher's frame: its channel and its entries as
/// stored (lean ones rebuilt); records them in the table. Entries that do
/// not decode are passed on as they came (the store refuses them).
pub fn decode_push(table: &mut FeedTable, frame: &[u8]) -> Result<(WireId, Vec<ByteBuf>), Malformed> {
    let push: LivePush = postcard::from_bytes(frame).map_err(|e| Malformed(e.to_string()))?;
    if push.entries.is_empty() || push.entries.len() > BATCH_ENTRIES {
        return Err(Malformed(format!("{} entries", push.entries.len())));
    }
    if postcard::to_stdvec(&push).ok().as_deref() != Some(frame) {
        return Err(Malformed("not in canonical encoding".into()));
    }
    let mut wire = None;
    let mut out = Vec::with_capacity(push.entries.len());
    for e in push.entries {
        let (env, bytes) = match e {
            LiveEntry::Whole(bytes) => match Envelope::decode(&bytes) {
                Ok(env) => (Some(env), bytes),
                Err(_) => (None, bytes),
            },
            LiveEntry::Next { feed, lean } => {
                let row = table
                    .feeds
                    .get(feed as usize)
                    .ok_or_else(|| Malformed(format!("feed {feed} was never sent")))?;
                let env = Envelope::decode_lean(&lean, row).map_err(|e| Malformed(e.to_string()))?;
                let bytes = ByteBuf::from(env.encode());
                (Some(env), bytes)
            }
        };
        if let Some(env) = env {
            if *wire.get_or_insert(env.header.wire) != env.header.wire {
                return Err(Malformed("entries of more than one channel".into()));
            }
            table.note(&env);
        }
        out.push(bytes);
    }
    let wire = wire.ok_or_else(|| Malformed("no entry decodes".into()))?;
    Ok((wire, out))
}

/// Write one frame (its length and body in one write) and flush it.
pub async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> io::Result<()> {
    let n = u32::try_from(body.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut frame = hearth_core::write_leb128(u64::from(n));
    frame.extend_from_slice(body);
    s.write_all(&frame).await?;
    s.flush().await
}

/// Read one frame of at most `max` bytes. A length over `max`, or not in
/// its shortest form, is [`io::ErrorKind::InvalidData`] (nothing is
/// allocated for it); a stream closed between frames is
/// [`io::ErrorKind::UnexpectedEof`].
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> io::Result<Vec<u8>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut len: u64 = 0;
    for i in 0..5 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            if b[0] == 0 && i > 0 {
                return Err(bad("frame length not in its shortest form"));
            }
            if len > max as u64 {
                return Err(bad("frame over its cap"));
            }
            let mut body = vec![0u8; len as usize];
            s.read_exact(&mut body).await?;
            return Ok(body);
        }
    }
    Err(bad("frame length too long"))
}

/// Decode a receiver's answer: `Took`, or an Ack or a refusal within a
/// response frame's caps.
pub fn decode_ack(frame: &[u8]) -> Result<LiveAck, Malformed> {
    let ack: AckWire = postcard::from_bytes(frame).map_err(|e| Malformed(e.to_string()))?;
    if postcard::to_stdvec(&ack).ok().as_deref() != Some(frame) {
        return Err(Malformed("not in canonical encoding".into()));
    }
    match ack {
        AckWire::Took => Ok(LiveAck::Took),
        AckWire::Said(bytes) => match Response::decode(&bytes).map_err(|e| Malformed(e.to_string()))? {
            r @ (Response::Ack { .. } | Response::Refused { .. }) => Ok(LiveAck::Said(r)),
            _ => Err(Malformed("an answer that is neither an Ack nor a refusal".into())),
        },
    }
}

/// Encode a receiver's answer.
pub fn encode_ack(ack: &LiveAck) -> Vec<u8> {
    let wire = match ack {
        LiveAck::Took => AckWire::Took,
        LiveAck::Said(r) => AckWire::Said(ByteBuf::from(r.encode())),
    };
    postcard::to_stdvec(&wire).expect("a live ack encodes")
}

/// How long a live stream that failed to open is left before it is tried again.
const REOPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// A worker's end of its peer's live stream: opened at the first Push,
/// kept while it works, opened again after a failure (not sooner than
/// [`REOPEN_AFTER`]), and given up for good when the peer does not speak
/// the protocol.
pub(crate) struct LiveLink {
    control: libp2p_stream::Control,
    peer: libp2p::PeerId,
    timeout: std::time::Duration,
    open: Option<(libp2p::Stream, FeedTable)>,
    /// The peer does not speak the protocol.
    off: bool,
    /// Not before then: the last open failed.
    retry_at: Option<std::time::Instant>,
}

impl LiveLink {
    pub(crate) fn new(control: libp2p_stream::Control, peer: libp2p::PeerId, timeout: std::time::Duration) -> Self {
        LiveLink {
            control,
            peer,
            timeout,
            open: None,
            off: false,
            retry_at: None,
        }
    }

    /// Push `entries` of `wire` over the live stream, and the answer a Push
    /// request would have had; `None` when there is no live stream (push by
    /// request). A stream that fails mid-push is dropped, and the push
    /// fails (the entries go again in the next, as after a failed request).
    pub(crate) async fn push(&mut self, entries: &[ByteBuf]) -> Option<Result<Response, String>> {
        if entries.is_empty() || self.off || self.retry_at.is_some_and(|t| t > std::time::Instant::now()) {
            return None;
        }
        if self.open.is_none() {
            match tokio::time::timeout(self.timeout, self.control.open_stream(self.peer, LIVE_PROTOCOL)).await {
                Ok(Ok(s)) => self.open = Some((s, FeedTable::default())),
                Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
                    self.off = true;
                    return None;
                }
                Ok(Err(_)) | Err(_) => {
                    self.retry_at = Some(std::time::Instant::now() + REOPEN_AFTER);
                    return None;
                }
            }
        }
        let (stream, table) = self.open.as_mut()?;
        let frame = encode_push(table, entries);
        let answer = tokio::time::timeout(self.timeout, async {
            write_frame(stream, &frame).await?;
            read_frame(stream, crate::proto::MAX_RESPONSE).await
        })
        .await;
        let result = match answer {
            Ok(Ok(bytes)) => match decode_ack(&bytes) {
                Ok(LiveAck::Took) => Ok(Response::Ack {
                    vector: crate::drive::pushed_heads(entries.iter().map(|e| e.as_ref())),
                    accepted: entries.len() as u32,
                    rejected: 0,
                    reason: None,
                }),
                Ok(LiveAck::Said(r)) => Ok(r),
                Err(e) => Err(e.to_string()),
            },
            Ok(Err(e)) => Err(format!("live stream: {e}")),
            Err(_) => Err("live stream: no answer in time".into()),
        };
        if result.is_err() {
            self.open = None;
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use hearth_core::{ChannelKeys, EntryBody, Identity};

    use super::*;

    /// A feed of `n` format 5 entries of one device, on `keys`' channel.
    fn feed(keys: &ChannelKeys, me: &Identity, n: u8) -> Vec<ByteBuf> {
        let mut prev = [0; 32];
        (1..=n)
            .map(|i| {
                let body = EntryBody {
                    epoch: 3,
                    change: vec![i; 60],
                };
                let chain = if i == 1 {
                    vec![me.device_cert().unwrap().clone()]
                } else {
                    Vec::new()
                };
                let (bytes, hash) = Envelope::seal_v5(keys, me, u64::from(i), prev, &body, 0, chain, &[]).unwrap();
                prev = hash;
                ByteBuf::from(bytes)
            })
            .collect()
    }

    fn kinds(frame: &[u8]) -> Vec<bool> {
        let push: LivePush = postcard::from_bytes(frame).unwrap();
        push.entries
            .iter()
            .map(|e| matches!(e, LiveEntry::Next { .. }))
            .collect()
    }

    #[test]
    fn entries_after_the_first_of_a_feed_travel_lean_and_come_back_the_same_bytes() {
        let (keys, me) = (ChannelKeys::generate().unwrap(), Identity::generate("a").unwrap());
        let entries = feed(&keys, &me, 5);
        let (mut tx, mut rx) = (FeedTable::default(), FeedTable::default());
        let first = encode_push(&mut tx, &entries[..1]);
        assert_eq!(kinds(&first), [false]);
        let rest = encode_push(&mut tx, &entries[1..3]);
        assert_eq!(kinds(&rest), [true, true]);
        let wire = Envelope::decode(&entries[0]).unwrap().header.wire;
        assert_eq!(decode_push(&mut rx, &first).unwrap(), (wire, entries[..1].to_vec()));
        assert_eq!(decode_push(&mut rx, &rest).unwrap(), (wire, entries[1..3].to_vec()));
        // Lean: wire, user, device, seq and prev left out of each.
        let whole: usize = entries[1..3].iter().map(|e| e.len()).sum();
        assert!(
            rest.len() + 2 * 100 < whole,
            "{} lean bytes against {whole} whole",
            rest.len()
        );
        // A gap (entry 4 never sent here) travels whole, and the feed goes
        // on lean after it.
        let after_gap = encode_push(&mut tx, &entries[4..5]);
        assert_eq!(kinds(&after_gap), [false]);
        assert_eq!(decode_push(&mut rx, &after_gap).unwrap().1, entries[4..5].to_vec());
        assert_eq!((tx.len(), rx.len()), (1, 1));
    }

    #[test]
    fn a_frame_a_table_cannot_rebuild_is_malformed_and_a_wrong_rebuild_does_not_verify() {
        let (keys, me) = (ChannelKeys::generate().unwrap(), Identity::generate("a").unwrap());
        let entries = feed(&keys, &me, 3);
        let mut tx = FeedTable::default();
        let _ = encode_push(&mut tx, &entries[..1]);
        let lean = encode_push(&mut tx, &entries[1..2]);
        // A receiver that never saw the feed cannot rebuild its next entry.
        let err = decode_push(&mut FeedTable::default(), &lean).unwrap_err();
        assert!(err.0.contains("never sent"), "{err}");
        // One that holds another entry as the feed's last rebuilds one whose
        // signature fails (the store refuses it as a forgery).
        let mut rx = FeedTable::default();
        let _ = decode_push(&mut rx, &encode_push(&mut FeedTable::default(), &entries[..1])).unwrap();
        let (_, rebuilt) = decode_push(&mut rx, &encode_push(&mut tx, &entries[2..3])).unwrap();
        assert_ne!(rebuilt[0], entries[2]);
        let key = Envelope::decode(&entries[0]).unwrap().device_key().unwrap().unwrap();
        assert!(Envelope::decode(&rebuilt[0]).unwrap().verify_with(&key).is_err());
        Envelope::decode(&entries[2]).unwrap().verify_with(&key).unwrap();
        // Entries of two channels in one frame are refused.
        let other = feed(&ChannelKeys::generate().unwrap(), &me, 1);
        let mixed = encode_push(&mut FeedTable::default(), &[entries[0].clone(), other[0].clone()]);
        assert!(decode_push(&mut FeedTable::default(), &mixed).is_err());
        // No entries, trailing bytes and garbage are refused.
        let empty = postcard::to_stdvec(&LivePush { entries: Vec::new() }).unwrap();
        assert!(decode_push(&mut FeedTable::default(), &empty).is_err());
        let mut trailing = encode_push(&mut FeedTable::default(), &entries[..1]);
        trailing.push(0);
        assert!(decode_push(&mut FeedTable::default(), &trailing).is_err());
        assert!(decode_push(&mut FeedTable::default(), b"\x01\x01\xff\xff\xff\xff\x0f").is_err());
    }

    #[test]
    fn frames_carry_their_length_in_its_shortest_form_under_a_cap() {
        futures::executor::block_on(async {
            let mut buf = Vec::new();
            for body in [&b""[..], &[7u8; 127][..], &[9u8; 300][..]] {
                let mut one = Vec::new();
                write_frame(&mut one, body).await.unwrap();
                assert_eq!(one.len(), body.len() + if body.len() < 128 { 1 } else { 2 });
                buf.extend(one);
            }
            let mut r = futures::io::Cursor::new(buf);
            assert_eq!(read_frame(&mut r, 300).await.unwrap(), b"");
            assert_eq!(read_frame(&mut r, 300).await.unwrap(), vec![7u8; 127]);
            assert_eq!(read_frame(&mut r, 300).await.unwrap(), vec![9u8; 300]);
            let end = read_frame(&mut r, 300).await.unwrap_err();
            assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
            let over = read_frame(&mut futures::io::Cursor::new(vec![0xad, 0x02]), 300)
                .await
                .unwrap_err();
            assert_eq!(over.kind(), io::ErrorKind::InvalidData);
            let long = read_frame(&mut futures::io::Cursor::new(vec![0x81, 0x00, 0]), 300)
                .await
                .unwrap_err();
            assert_eq!(long.kind(), io::ErrorKind::InvalidData);
        });
    }

    #[test]
    fn an_ack_is_one_byte_when_everything_was_taken_and_a_response_otherwise() {
        assert_eq!(encode_ack(&LiveAck::Took), [0]);
        assert_eq!(decode_ack(&[0]).unwrap(), LiveAck::Took);
        let refused = LiveAck::Said(Response::Refused {
            reason: "unknown channel".into(),
        });
        assert_eq!(decode_ack(&encode_ack(&refused)).unwrap(), refused);
        let entries = LiveAck::Said(Response::Entries {
            entries: Vec::new(),
            more: false,
        });
        assert!(decode_ack(&encode_ack(&entries)).is_err());
        assert!(decode_ack(&[0, 0]).is_err());
    }
}
