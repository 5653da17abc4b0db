//! The live stream (`/hearth/live/2`): one long-lived libp2p stream per peer
//! and direction that carries the Pushes of a connection, so that a live
//! message costs one frame each way instead of a request-response stream
//! (multistream-select both ways, a yamux open and two closes, each write its
//! own Noise frame).
//!
//! ```text
//! frame:  varint length | postcard body          (each way, one write a frame)
//! pusher -> receiver:  LivePush { entries: [Whole(entry bytes) | Next { feed, lean bytes }], wait }
//! receiver -> pusher:  LiveAck::Took(n)            the next n frames: every entry stored, heads = those pushed
//!                    | LiveAck::Said(Response)      anything else: the Ack or refusal a Push gets
//! ```
//!
//! Both ends keep a [`FeedTable`] of the stream: every entry that decodes,
//! whole or lean, in the order sent, sets its feed's row (wire, user, device,
//! seq, hash; a new feed gets the next index, up to [`MAX_LIVE_FEEDS`]). The
//! pusher sends an entry lean ([`hearth_core::Envelope::encode_lean`]: no
//! wire, user, device, seq or prev, about 115 bytes fewer, and no nonce
//! that the row's body nonce and the entry's seq imply, 24 bytes each for
//! the body and the texts) when the row of its feed is the entry just
//! before it; the receiver rebuilds it from that row. (`/hearth/live/1`
//! sent every nonce; a peer that speaks only it is pushed to by requests.) The table is a function of the frames alone, so both ends agree on
//! it without saying so; a wrong rebuild can only give an entry whose
//! signature fails, which the store refuses as it refuses any forgery.
//!
//! The receiver answers frames in order, so a pusher need not wait: the
//! Pushes of a live session (what the store just wrote) go out one after
//! the other without waiting for the answers before (up to [`LIVE_WINDOW`]
//! unanswered), and a task reads the answers as they come, reporting each
//! to the worker (the peer acknowledged; or it did not take everything, so
//! what it holds is learnt again by a full session). A full session's
//! Pushes wait for their answers, as requests do, and say so
//! ([`LivePush::wait`]); for the others the receiver holds `Took` back up
//! to [`ACK_DELAY`] and says it once for up to [`ACK_BATCH`] frames, so
//! that a conversation's messages share their Acks.
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
pub const LIVE_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/live/2");
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
    /// The pusher waits for the answer (a full session's push): answer at
    /// once. Otherwise (a live push, pipelined) a `Took` may wait up to
    /// [`ACK_DELAY`] to be said for several frames at once.
    pub wait: bool,
}

/// Longest a receiver holds back `Took` for frames whose pusher does not
/// wait, so as to say it once for several.
pub const ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(25);
/// Most frames one `Took` is held back for.
pub const ACK_BATCH: u32 = 16;

/// A receiver's answer to [`LivePush`] frames, in the order they came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveAck {
    /// For each of the next this many frames (1 to [`ACK_BATCH`]): every
    /// entry was stored, and this node's heads of the feeds pushed are the
    /// entries pushed (the Ack a Push would get, said in two bytes).
    Took(u32),
    /// The answer a Push would get (an Ack or a refusal), when it says more
    /// than `Took`.
    Said(Response),
}

/// A [`LiveAck`] as sent: a response as its own frame encodes it.
#[derive(Serialize, Deserialize)]
enum AckWire {
    Took(u32),
    Said(ByteBuf),
}

/// Why a live frame was refused: the peer's fault.
#[derive(Debug, thiserror::Error)]
#[error("malformed live frame: {0}")]
pub struct Malformed(pub String);

/// The feeds a live stream has carried, as both ends see them.
#[derive(Clone, Default)]
pub struct FeedTable {
    index: HashMap<(WireId, DeviceId), u32>,
    feeds: Vec<LeanContext>,
}

impl FeedTable {
    /// Record an entry sent or received on the stream, and raise `heads`
    /// to it ([`crate::drive::pushed_heads`], without decoding and hashing
    /// the entry a second time).
    fn note(&mut self, env: &Envelope, heads: &mut hearth_core::Vector) {
        let key = (env.header.wire, env.header.device);
        let row = env.lean_context();
        let pos = hearth_core::FeedPos {
            seq: row.seq,
            hash: row.hash,
        };
        let head = heads.0.entry(row.device).or_insert(pos);
        if pos.seq > head.seq {
            *head = pos;
        }
        match self.index.get(&key) {
            Some(&i) => self.feeds[i as usize] = row,
            None if self.feeds.len() < MAX_LIVE_FEEDS => {
                self.index.insert(key, self.feeds.len() as u32);
                self.feeds.push(row);
            }
            None => {}
        }
    }

    /// The row of `env`'s feed, if the table holds one.
    fn row_of(&self, env: &Envelope) -> Option<u32> {
        self.index.get(&(env.header.wire, env.header.device)).copied()
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
/// allows; records them in the table. `wait`: see [`LivePush::wait`].
pub fn encode_push(table: &mut FeedTable, entries: &[ByteBuf], wait: bool) -> Vec<u8> {
    encode_push_heads(table, entries, wait).0
}

/// [`encode_push`], and the heads of the feeds pushed.
fn encode_push_heads(table: &mut FeedTable, entries: &[ByteBuf], wait: bool) -> (Vec<u8>, hearth_core::Vector) {
    let mut heads = hearth_core::Vector::default();
    let entries = entries
        .iter()
        .map(|bytes| match Envelope::decode(bytes) {
            Ok(env) => {
                // Lean when the row is the entry just before this one.
                let lean = table
                    .row_of(&env)
                    .and_then(|feed| Some((feed, env.encode_lean(&table.feeds[feed as usize])?)))
                    .map(|(feed, lean)| LiveEntry::Next {
                        feed,
                        lean: ByteBuf::from(lean),
                    });
                table.note(&env, &mut heads);
                lean.unwrap_or_else(|| LiveEntry::Whole(bytes.clone()))
            }
            Err(_) => LiveEntry::Whole(bytes.clone()),
        })
        .collect();
    (frame_of(&LivePush { entries, wait }), heads)
}

/// The first byte of a pusher's frame body.
mod kind {
    /// The rest is a postcard [`super::LivePush`].
    pub const PUSH: u8 = 0;
    /// One lean entry, the pusher not waiting: `varint feed | lean bytes`.
    pub const ONE: u8 = 1;
    /// One lean entry, the pusher waiting.
    pub const ONE_WAIT: u8 = 2;
}

/// A pusher's frame body: a push of one lean entry (a live message) in
/// its short form, which the frame's length bounds (no count, no length of
/// its own: 4 bytes fewer); any other as postcard.
fn frame_of(push: &LivePush) -> Vec<u8> {
    match &push.entries[..] {
        [LiveEntry::Next { feed, lean }] => {
            let mut out = vec![if push.wait { kind::ONE_WAIT } else { kind::ONE }];
            out.extend(hearth_core::write_leb128(u64::from(*feed)));
            out.extend_from_slice(lean);
            out
        }
        _ => {
            let mut out = vec![kind::PUSH];
            out.extend(postcard::to_stdvec(push).expect("a live push encodes"));
            out
        }
    }
}

/// Read a pusher's frame body ([`frame_of`]), which must be in its one
/// encoding.
fn push_of(frame: &[u8]) -> Result<LivePush, Malformed> {
    let push = match frame.split_first() {
        Some((&kind::PUSH, rest)) => postcard::from_bytes(rest).map_err(|e| Malformed(e.to_string()))?,
        Some((&k @ (kind::ONE | kind::ONE_WAIT), rest)) => {
            let (feed, n) = hearth_core::read_leb128(rest).ok_or_else(|| Malformed("feed index".into()))?;
            let feed = u32::try_from(feed).map_err(|_| Malformed("feed index".into()))?;
            LivePush {
                entries: vec![LiveEntry::Next {
                    feed,
                    lean: ByteBuf::from(&rest[n..]),
                }],
                wait: k == kind::ONE_WAIT,
            }
        }
        _ => return Err(Malformed("unknown frame kind".into())),
    };
    if frame_of(&push) != frame {
        return Err(Malformed("not in canonical encoding".into()));
    }
    Ok(push)
}

/// A receiver's reading of a pusher's frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The channel.
    pub wire: WireId,
    /// The entries as stored (lean ones rebuilt).
    pub entries: Vec<ByteBuf>,
    /// [`LivePush::wait`].
    pub wait: bool,
    /// The heads of the feeds pushed: for each feed, the last entry of it
    /// in the frame.
    pub heads: hearth_core::Vector,
}

/// A receiver's reading of a pusher's frame: its channel and its entries as
/// stored (lean ones rebuilt); records them in the table. Entries that do
/// not decode are passed on as they came (the store refuses them).
pub fn decode_push(table: &mut FeedTable, frame: &[u8]) -> Result<Pushed, Malformed> {
    let push = push_of(frame)?;
    if push.entries.is_empty() || push.entries.len() > BATCH_ENTRIES {
        return Err(Malformed(format!("{} entries", push.entries.len())));
    }
    let mut wire = None;
    let mut heads = hearth_core::Vector::default();
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
            table.note(&env, &mut heads);
        }
        out.push(bytes);
    }
    let wire = wire.ok_or_else(|| Malformed("no entry decodes".into()))?;
    Ok(Pushed {
        wire,
        entries: out,
        wait: push.wait,
        heads,
    })
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
        AckWire::Took(n) if (1..=ACK_BATCH).contains(&n) => Ok(LiveAck::Took(n)),
        AckWire::Took(n) => Err(Malformed(format!("took {n} frames"))),
        AckWire::Said(bytes) => match Response::decode(&bytes).map_err(|e| Malformed(e.to_string()))? {
            r @ (Response::Ack { .. } | Response::Refused { .. }) => Ok(LiveAck::Said(r)),
            _ => Err(Malformed("an answer that is neither an Ack nor a refusal".into())),
        },
    }
}

/// Encode a receiver's answer.
pub fn encode_ack(ack: &LiveAck) -> Vec<u8> {
    let wire = match ack {
        LiveAck::Took(n) => AckWire::Took(*n),
        LiveAck::Said(r) => AckWire::Said(ByteBuf::from(r.encode())),
    };
    postcard::to_stdvec(&wire).expect("a live ack encodes")
}

/// How long a live stream that failed to open is left before it is tried again.
const REOPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
/// Most live Pushes a worker has unanswered on its stream at once.
pub const LIVE_WINDOW: usize = 64;

/// A Push on the live stream, waiting for its answer.
struct InFlight {
    wire: WireId,
    /// The heads of the feeds pushed ([`crate::drive::pushed_heads`]).
    heads: hearth_core::Vector,
    entries: u32,
    /// Who waits for the answer; `None`: nobody (a pipelined live push).
    reply: Option<tokio::sync::oneshot::Sender<Result<Response, String>>>,
}

/// What the reader of a live stream reports to, for pushes nobody waits for.
#[derive(Clone)]
pub(crate) struct LiveReports {
    /// A pipelined push was taken: the peer holds these heads.
    pub taken: std::sync::Arc<dyn Fn(WireId, hearth_core::Vector) + Send + Sync>,
    /// A pipelined push was not taken whole, or the stream broke with such
    /// pushes unanswered: what the peer holds must be learnt again.
    pub relearn: std::sync::Arc<dyn Fn() + Send + Sync>,
}

/// The live stream a worker writes on; a task of its own reads the answers.
struct Open {
    write: futures::io::WriteHalf<libp2p::Stream>,
    table: FeedTable,
    inflight: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<InFlight>>>,
    /// Free places in the window: the reader gives one back per answer.
    window: std::sync::Arc<tokio::sync::Semaphore>,
    /// The reader saw the stream end or break.
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A worker's end of its peer's live stream: opened at the first Push,
/// kept while it works, opened again after a failure (not sooner than
/// [`REOPEN_AFTER`]), and given up for good when the peer does not speak
/// the protocol. Pushes of a live session are pipelined: each goes out
/// without waiting for the one before to be answered (up to
/// [`LIVE_WINDOW`]), and the answers are read in order by a task that
/// reports them ([`LiveReports`]); a session's pushes wait for their answer.
pub(crate) struct LiveLink {
    control: libp2p_stream::Control,
    peer: libp2p::PeerId,
    timeout: std::time::Duration,
    reports: LiveReports,
    open: Option<Open>,
    /// The peer does not speak the protocol.
    off: bool,
    /// Not before then: the last open failed.
    retry_at: Option<std::time::Instant>,
}

impl LiveLink {
    pub(crate) fn new(
        control: libp2p_stream::Control,
        peer: libp2p::PeerId,
        timeout: std::time::Duration,
        reports: LiveReports,
    ) -> Self {
        LiveLink {
            control,
            peer,
            timeout,
            reports,
            open: None,
            off: false,
            retry_at: None,
        }
    }

    /// Open the stream if it is not, and start its reader.
    async fn ensure_open(&mut self) -> bool {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.broken.load(std::sync::atomic::Ordering::SeqCst))
        {
            self.open = None;
        }
        if self.open.is_some() {
            return true;
        }
        if self.off || self.retry_at.is_some_and(|t| t > std::time::Instant::now()) {
            return false;
        }
        let stream = match tokio::time::timeout(self.timeout, self.control.open_stream(self.peer, LIVE_PROTOCOL)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
                self.off = true;
                return false;
            }
            Ok(Err(_)) | Err(_) => {
                self.retry_at = Some(std::time::Instant::now() + REOPEN_AFTER);
                return false;
            }
        };
        let (read, write) = stream.split();
        let open = Open {
            write,
            table: FeedTable::default(),
            inflight: Default::default(),
            window: std::sync::Arc::new(tokio::sync::Semaphore::new(LIVE_WINDOW)),
            broken: Default::default(),
        };
        tokio::spawn(read_answers(
            read,
            open.inflight.clone(),
            open.window.clone(),
            open.broken.clone(),
            self.reports.clone(),
        ));
        self.open = Some(open);
        true
    }

    /// Open the live stream now, if it is not open and may be.
    pub(crate) async fn warm(&mut self) {
        self.ensure_open().await;
    }

    /// Push `entries` of `wire` over the live stream; `None` when there is
    /// none (push by request). Pipelined (`wait` false): the answer is the
    /// Ack a Push that took everything gets, given once the frame is
    /// written, and what the peer really answers goes to [`LiveReports`].
    /// Otherwise the peer's answer. A stream that fails mid-push is dropped,
    /// and the push fails (the entries go again, as after a failed request).
    pub(crate) async fn push(
        &mut self,
        wire: WireId,
        entries: &[ByteBuf],
        wait: bool,
    ) -> Option<Result<Response, String>> {
        if entries.is_empty() || !self.ensure_open().await {
            return None;
        }
        let timeout = self.timeout;
        let open = self.open.as_mut()?;
        // A place in the window: the peer answers in order, so a full
        // window that stays full means the stream is stuck.
        match tokio::time::timeout(timeout, open.window.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => {
                self.open = None;
                return Some(Err("live stream: no answer in time".into()));
            }
        }
        let (frame, heads) = encode_push_heads(&mut open.table, entries, wait);
        let (reply, answer) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        open.inflight.lock().expect("in-flight list").push_back(InFlight {
            wire,
            heads: heads.clone(),
            entries: entries.len() as u32,
            reply,
        });
        let written = tokio::time::timeout(timeout, write_frame(&mut open.write, &frame)).await;
        if !matches!(written, Ok(Ok(()))) {
            self.open = None;
            return Some(Err("live stream: the frame did not go out".into()));
        }
        let Some(answer) = answer else {
            return Some(Ok(Response::Ack {
                vector: heads,
                accepted: entries.len() as u32,
                rejected: 0,
                reason: None,
            }));
        };
        let result = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("live stream closed".into()),
            Err(_) => Err("live stream: no answer in time".into()),
        };
        if result.is_err() {
            self.open = None;
        }
        Some(result)
    }
}

/// Read a live stream's answers in order, hand each to its push, and give
/// its place in the window back. When the stream ends or breaks, every
/// push still waiting fails, and pipelined ones unanswered are relearnt.
async fn read_answers(
    mut read: futures::io::ReadHalf<libp2p::Stream>,
    inflight: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<InFlight>>>,
    window: std::sync::Arc<tokio::sync::Semaphore>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reports: LiveReports,
) {
    let why = loop {
        let frame = match read_frame(&mut read, crate::proto::MAX_RESPONSE).await {
            Ok(f) => f,
            Err(e) => break format!("live stream: {e}"),
        };
        let ack = match decode_ack(&frame) {
            Ok(a) => a,
            Err(e) => break e.to_string(),
        };
        let (taken, answer) = match ack {
            LiveAck::Took(n) => (n as usize, None),
            LiveAck::Said(r) => (1, Some(r)),
        };
        let pushes: Vec<InFlight> = {
            let mut list = inflight.lock().expect("in-flight list");
            if list.len() < taken {
                break "live stream: an answer to no push".into();
            }
            list.drain(..taken).collect()
        };
        window.add_permits(taken);
        for push in pushes {
            let answer = answer.clone().unwrap_or_else(|| Response::Ack {
                vector: push.heads.clone(),
                accepted: push.entries,
                rejected: 0,
                reason: None,
            });
            match (push.reply, &answer) {
                (Some(reply), _) => {
                    let _ = reply.send(Ok(answer));
                }
                // Taken, some of it held already: the peer holds at least
                // what was pushed.
                (
                    None,
                    Response::Ack {
                        rejected: 0, vector, ..
                    },
                ) if vector.covers(&push.heads) => (reports.taken)(push.wire, vector.clone()),
                (None, _) => (reports.relearn)(),
            }
        }
    };
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let left: Vec<InFlight> = inflight.lock().expect("in-flight list").drain(..).collect();
    let mut relearn = false;
    for push in left {
        match push.reply {
            Some(reply) => {
                let _ = reply.send(Err(why.clone()));
            }
            None => relearn = true,
        }
    }
    if relearn {
        (reports.relearn)();
    }
}

#[cfg(test)]
mod tests {
    use hearth_core::{ChannelKeys, EntryBody, Identity, Nonces};

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
                let (bytes, hash) = Envelope::seal_v5(
                    keys,
                    me,
                    u64::from(i),
                    prev,
                    &body,
                    0,
                    chain,
                    &[],
                    Nonces::Counted([7; 15]),
                )
                .unwrap();
                prev = hash;
                ByteBuf::from(bytes)
            })
            .collect()
    }

    fn kinds(frame: &[u8]) -> Vec<bool> {
        let push = push_of(frame).unwrap();
        push.entries
            .iter()
            .map(|e| matches!(e, LiveEntry::Next { .. }))
            .collect()
    }

    #[test]
    fn pushed_heads_name_each_feeds_highest_entry_that_decodes() {
        let keys = ChannelKeys::generate().unwrap();
        let (a, b) = (Identity::generate("a").unwrap(), Identity::generate("b").unwrap());
        let (fa, fb) = (feed(&keys, &a, 4), feed(&keys, &b, 2));
        let pos = |e: &ByteBuf| {
            let env = Envelope::decode(e).unwrap();
            (
                env.header.device,
                hearth_core::FeedPos {
                    seq: env.header.seq,
                    hash: env.hash(),
                },
            )
        };
        // The last of a's feed is cut short: its header still reads, the
        // entry does not decode, and the one before it counts.
        let mut cut = fa[3].to_vec();
        cut.truncate(cut.len() - 3);
        let batch: Vec<Vec<u8>> = vec![
            fa[0].to_vec(),
            fb[0].to_vec(),
            fa[1].to_vec(),
            b"garbage".to_vec(),
            fb[1].to_vec(),
            fa[2].to_vec(),
            cut,
        ];
        let heads = crate::drive::pushed_heads(batch.iter().map(Vec::as_slice));
        assert_eq!(heads, hearth_core::Vector([pos(&fa[2]), pos(&fb[1])].into()));
        assert_eq!(
            crate::drive::pushed_heads(fa.iter().map(|e| e.as_ref())),
            hearth_core::Vector([pos(&fa[3])].into())
        );
    }

    #[test]
    fn entries_after_the_first_of_a_feed_travel_lean_and_come_back_the_same_bytes() {
        let (keys, me) = (ChannelKeys::generate().unwrap(), Identity::generate("a").unwrap());
        let entries = feed(&keys, &me, 5);
        let (mut tx, mut rx) = (FeedTable::default(), FeedTable::default());
        let first = encode_push(&mut tx, &entries[..1], false);
        assert_eq!(kinds(&first), [false]);
        let rest = encode_push(&mut tx, &entries[1..3], true);
        assert_eq!(kinds(&rest), [true, true]);
        let wire = Envelope::decode(&entries[0]).unwrap().header.wire;
        assert_eq!(
            decode_push(&mut rx, &first).unwrap(),
            Pushed {
                wire,
                entries: entries[..1].to_vec(),
                wait: false,
                heads: crate::drive::pushed_heads(entries[..1].iter().map(|e| e.as_ref())),
            }
        );
        assert_eq!(
            decode_push(&mut rx, &rest).unwrap(),
            Pushed {
                wire,
                entries: entries[1..3].to_vec(),
                wait: true,
                heads: crate::drive::pushed_heads(entries[1..3].iter().map(|e| e.as_ref())),
            }
        );
        // Lean: wire, user, device, seq and prev left out of each.
        let whole: usize = entries[1..3].iter().map(|e| e.len()).sum();
        assert!(
            rest.len() + 2 * 100 < whole,
            "{} lean bytes against {whole} whole",
            rest.len()
        );
        // A gap (entry 4 never sent here) travels whole, and the feed goes
        // on lean after it.
        let after_gap = encode_push(&mut tx, &entries[4..5], false);
        assert_eq!(kinds(&after_gap), [false]);
        assert_eq!(
            decode_push(&mut rx, &after_gap).unwrap().entries,
            entries[4..5].to_vec()
        );
        assert_eq!((tx.len(), rx.len()), (1, 1));
    }

    #[test]
    fn a_frame_a_table_cannot_rebuild_is_malformed_and_a_wrong_rebuild_does_not_verify() {
        let (keys, me) = (ChannelKeys::generate().unwrap(), Identity::generate("a").unwrap());
        let entries = feed(&keys, &me, 3);
        let mut tx = FeedTable::default();
        let _ = encode_push(&mut tx, &entries[..1], false);
        let lean = encode_push(&mut tx, &entries[1..2], false);
        // A receiver that never saw the feed cannot rebuild its next entry.
        let err = decode_push(&mut FeedTable::default(), &lean).unwrap_err();
        assert!(err.0.contains("never sent"), "{err}");
        // One that holds another entry as the feed's last rebuilds one whose
        // signature fails (the store refuses it as a forgery).
        let mut rx = FeedTable::default();
        let _ = decode_push(&mut rx, &encode_push(&mut FeedTable::default(), &entries[..1], false)).unwrap();
        let rebuilt = decode_push(&mut rx, &encode_push(&mut tx, &entries[2..3], false))
            .unwrap()
            .entries;
        assert_ne!(rebuilt[0], entries[2]);
        let key = Envelope::decode(&entries[0]).unwrap().device_key().unwrap().unwrap();
        assert!(Envelope::decode(&rebuilt[0]).unwrap().verify_with(&key).is_err());
        Envelope::decode(&entries[2]).unwrap().verify_with(&key).unwrap();
        // Entries of two channels in one frame are refused.
        let other = feed(&ChannelKeys::generate().unwrap(), &me, 1);
        let mixed = encode_push(
            &mut FeedTable::default(),
            &[entries[0].clone(), other[0].clone()],
            false,
        );
        assert!(decode_push(&mut FeedTable::default(), &mixed).is_err());
        // No entries, trailing bytes and garbage are refused.
        let empty = frame_of(&LivePush {
            entries: Vec::new(),
            wait: false,
        });
        assert!(decode_push(&mut FeedTable::default(), &empty).is_err());
        // A lone lean entry takes the short form: the long one is refused,
        // as are an unknown kind and a feed index in a longer varint.
        let Some(&[kind::ONE, 0, ref rest @ ..]) = lean.get(..) else {
            panic!("a lone lean entry of feed 0 in the short form")
        };
        let long = [
            &[kind::PUSH][..],
            &postcard::to_stdvec(&push_of(&lean).unwrap()).unwrap(),
        ]
        .concat();
        let mut with_first = FeedTable::default();
        let _ = decode_push(
            &mut with_first,
            &encode_push(&mut FeedTable::default(), &entries[..1], false),
        )
        .unwrap();
        assert!(decode_push(&mut with_first, &long).unwrap_err().0.contains("canonical"));
        let overlong = [&[kind::ONE, 0x80, 0x00][..], rest].concat();
        assert!(decode_push(&mut with_first, &overlong).is_err());
        assert!(decode_push(&mut with_first, &[&[3u8][..], rest].concat()).is_err());
        let mut waiting = lean.clone();
        waiting[0] = kind::ONE_WAIT;
        assert!(decode_push(&mut with_first, &waiting).unwrap().wait);
        let mut trailing = encode_push(&mut FeedTable::default(), &entries[..1], false);
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
    fn an_ack_is_two_bytes_for_frames_all_taken_and_a_response_otherwise() {
        assert_eq!(encode_ack(&LiveAck::Took(1)), [0, 1]);
        assert_eq!(decode_ack(&[0, 3]).unwrap(), LiveAck::Took(3));
        // Took for no frame, or for more than a batch, is malformed.
        assert!(decode_ack(&[0, 0]).is_err());
        assert!(decode_ack(&encode_ack(&LiveAck::Took(ACK_BATCH + 1))).is_err());
        let refused = LiveAck::Said(Response::Refused {
            reason: "unknown channel".into(),
        });
        assert_eq!(decode_ack(&encode_ack(&refused)).unwrap(), refused);
        let entries = LiveAck::Said(Response::Entries {
            entries: Vec::new(),
            more: false,
        });
        assert!(decode_ack(&encode_ack(&entries)).is_err());
        assert!(decode_ack(&[0, 1, 0]).is_err(), "trailing bytes");
    }
}
