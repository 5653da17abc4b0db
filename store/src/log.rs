//! The feed log: Hearth's own append-only files, from which sled is rebuilt.
//!
//! sled answers every query, but it is not trusted to survive a power cut or a
//! damaged disk (sled issues 1527 and 1533; ARCHITECTURE.md, "Durability"). The
//! log keeps what cannot be derived: the identity and the channel keys (sealed
//! under the record key) and every feed entry (envelope bytes, sealed and signed
//! by their author), in the order sled applied them, each batch closed by a
//! commit record (sealed: the journal watermark and the HLC high-water mark
//! that batch reached). Everything else in sled (heads, epoch logs, summaries,
//! snapshots, owed receipts) is derived from those.
//!
//! The rules that make it the source of truth (ARCHITECTURE.md has the whole
//! argument):
//! - a batch is written to the log before its sled batch is applied, and sled
//!   records the log position it has reached in that same sled batch, so after
//!   a process crash the log is never behind sled;
//! - a checkpoint fsyncs the log first, then records that position in sled as
//!   synced, then flushes and fsyncs sled: the synced position sled holds is
//!   always inside the durable log;
//! - at open, the log is read from that synced position to its end; sled
//!   catches up on any batch past its own position, and if sled is missing,
//!   damaged, or claims a position the log does not reach (it got ahead of the
//!   log in a power cut), it is rebuilt from the whole log.
//!
//! Layout (docs/format.md): `log/<segment, 8 hex digits>`, segments from 1, each
//! at most about [`SEGMENT_BYTES`]:
//!
//! ```text
//! segment = magic "HEARTHLG" | version u8 = 1 | segment u32 BE | record*
//! record  = len u32 LE (bytes after crc) | crc32 u32 LE (of kind | body) | kind u8 | body
//! ```
//!
//! Reading stops at the first record that is torn, fails its CRC or is of an
//! unknown kind; what follows the last commit record is an unfinished batch
//! (never applied to sled, or applied only in a process that then crashed before
//! anything of it was synced) and is cut off before the log is appended to.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The log directory in a store (or relay) directory.
pub const LOG_DIR: &str = "log";
/// A segment is closed and the next one started once it passes this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest segment file read back: a segment is closed past [`SEGMENT_BYTES`]
/// at a batch boundary, and no batch comes near the rest.
const MAX_SEGMENT_FILE: u64 = 4 * SEGMENT_BYTES;
/// Largest record body accepted when reading (an entry is at most 96 KiB).
pub const MAX_LOG_RECORD: usize = 1 << 20;
/// Magic bytes that open a segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"HEARTHLG";
/// The log format this build writes and reads.
pub const LOG_VERSION: u8 = 1;
/// Bytes of a segment's head (magic, version, segment number).
pub const SEGMENT_HEAD: u64 = 8 + 1 + 4;
const RECORD_HEAD: usize = 4 + 4;

/// Kinds of log records.
pub mod kind {
    /// The device's identity, sealed under the record key.
    pub const IDENTITY: u8 = 1;
    /// A channel's keys (`ChannelRecord`), sealed under the record key.
    pub const CHANNEL: u8 = 2;
    /// A feed entry: envelope bytes exactly as stored and sent.
    pub const ENTRY: u8 = 3;
    /// End of a batch: sealed postcard([`super::Commit`]).
    pub const COMMIT: u8 = 4;
    /// A fork proof (postcard [`hearth_core::ForkProof`]; not sealed: it is two
    /// envelopes, as public as entries). From store format 3.
    pub const FORK: u8 = 5;
    /// A channel's access key granted to a relay by a member: wire id (32
    /// bytes), then the key (32 bytes). Relays only, from relay format 4.
    pub const GRANT: u8 = 6;
    /// A revocation notice a relay took (postcard
    /// `hearth_core::member::RevocationNotice`; not sealed: it travels in the
    /// clear). Relays only, from relay format 6.
    pub const REVOKE: u8 = 7;
    /// A relay certificate a relay keeps for a channel: the wire id (32
    /// bytes), then postcard `hearth_core::peer::RelayCert` (not sealed: a
    /// relay shows it to anyone that proves the channel). Relays only, from
    /// relay format 7.
    pub const CERT: u8 = 8;
    /// A removal a relay took (postcard `hearth_core::peer::RemovalNotice`,
    /// not sealed). Relays only, from relay format 7.
    pub const REMOVE: u8 = 9;
    /// A notice of this user's removal from a channel that a member handed
    /// this device (postcard `hearth_core::peer::RemovedNotice`, sealed
    /// under the record key). Stores only, from store format 8.
    pub const TOLD: u8 = 10;
    /// A text drop a relay took (postcard `hearth_core::peer::TextDrop`, not
    /// sealed: the pack in it is sealed already): the entry it names holds
    /// that pack from then on. Relays only, from relay format 11.
    pub const DROP: u8 = 11;
    /// A channel's expiry floor (retention): wire id (32 bytes) | message
    /// id (24 bytes), sealed under the record key: what expired there stays
    /// expired after a rebuild (the `M expired` row). Stores only, from
    /// store format 12.
    pub const EXPIRED: u8 = 12;
}

/// What a commit record says: how far the batch it closes took the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The last journal record whose effects are in the log up to here.
    pub watermark: u64,
    /// The highest HLC timestamp issued or seen up to here.
    pub hlc: u64,
}

/// A place in the log: a segment and a byte offset in it (a record boundary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    /// Segment number (from 1).
    pub segment: u32,
    /// Byte offset in the segment.
    pub offset: u64,
}

impl LogPos {
    /// The first record of the log.
    pub const START: LogPos = LogPos {
        segment: 1,
        offset: SEGMENT_HEAD,
    };

    /// `segment u32 BE | offset u64 BE`, as sled keeps it.
    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.segment.to_be_bytes());
        b[4..].copy_from_slice(&self.offset.to_be_bytes());
        b
    }

    /// Decode [`LogPos::encode`].
    pub fn decode(b: &[u8]) -> Result<LogPos> {
        if b.len() != 12 {
            return Err(Error::corrupted("log position", "bad length"));
        }
        Ok(LogPos {
            segment: u32::from_be_bytes(b[..4].try_into().expect("4 bytes")),
            offset: u64::from_be_bytes(b[4..].try_into().expect("8 bytes")),
        })
    }
}

impl std::fmt::Display for LogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}:{}", self.segment, self.offset)
    }
}

/// Append one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(body);
    out.extend_from_slice(&((1 + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

/// The head of segment `n`.
pub fn segment_head(n: u32) -> [u8; SEGMENT_HEAD as usize] {
    let mut h = [0u8; SEGMENT_HEAD as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8] = LOG_VERSION;
    h[9..].copy_from_slice(&n.to_be_bytes());
    h
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Its kind (see [`kind`]).
    pub kind: u8,
    /// Its body.
    pub body: Vec<u8>,
    /// The offset just past it.
    pub end: u64,
}

/// What [`decode_segment`] read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DecodedSegment {
    /// Every readable record from the starting offset, in order.
    pub records: Vec<LogRecord>,
    /// Why reading stopped before the end of the bytes, if it did.
    pub stopped: Option<String>,
}

/// Decode a segment's bytes (the whole file) from `from` (a record boundary,
/// or 0 for the segment's start). Never panics: it stops at the first record
/// that is torn, oversized, fails its CRC or has an unknown kind, and says why.
pub fn decode_segment(bytes: &[u8], segment: u32, from: u64) -> DecodedSegment {
    let head = &bytes[..bytes.len().min(SEGMENT_HEAD as usize)];
    let base = usize::try_from(from)
        .unwrap_or(usize::MAX)
        .max(SEGMENT_HEAD as usize)
        .min(bytes.len());
    decode_parts(head, &bytes[base..], segment, base as u64)
}

/// [`decode_segment`] of a segment read in two parts: its head, and its bytes
/// from offset `base` on (so that reading a segment's tail needs no read of
/// the rest).
fn decode_parts(head: &[u8], tail: &[u8], segment: u32, base: u64) -> DecodedSegment {
    let mut d = DecodedSegment::default();
    if head != segment_head(segment) {
        d.stopped = Some(match head.get(8) {
            Some(v) if head.starts_with(SEGMENT_MAGIC) && *v != LOG_VERSION => {
                format!("segment {segment:08x}: log format version {v} (this build reads {LOG_VERSION})")
            }
            _ => format!("segment {segment:08x}: bad or torn segment head"),
        });
        return d;
    }
    let mut at = 0usize;
    while at < tail.len() {
        let pos = base as usize + at;
        let rest = &tail[at..];
        if rest.len() < RECORD_HEAD + 1 {
            d.stopped = Some(format!("torn record head at {segment:08x}:{pos}"));
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > MAX_LOG_RECORD + 1 || rest.len() < RECORD_HEAD + len {
            d.stopped = Some(format!("torn or oversized record at {segment:08x}:{pos}"));
            break;
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let data = &rest[RECORD_HEAD..RECORD_HEAD + len];
        if crc32fast::hash(data) != crc {
            d.stopped = Some(format!("checksum mismatch at {segment:08x}:{pos}"));
            break;
        }
        if !(kind::IDENTITY..=kind::EXPIRED).contains(&data[0]) {
            d.stopped = Some(format!("unknown record kind {} at {segment:08x}:{pos}", data[0]));
            break;
        }
        at += RECORD_HEAD + len;
        d.records.push(LogRecord {
            kind: data[0],
            body: data[1..].to_vec(),
            end: base + at as u64,
        });
    }
    d
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08x}"))
}

/// Segment numbers present in a log directory, ascending.
fn segments(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        if let Some(n) = name
            .to_str()
            .filter(|s| s.len() == 8)
            .and_then(|s| u32::from_str_radix(s, 16).ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// A batch read back: its records (the commit record last) and where it ends.
#[derive(Debug)]
pub struct LogBatch {
    /// The records, in order; the last is the commit record.
    pub records: Vec<LogRecord>,
    /// The position just past the commit record.
    pub end: LogPos,
}

/// Where reading the log ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanEnd {
    /// Just past the last complete batch: where the next batch goes.
    pub end: LogPos,
    /// Why the readable part ended before the files did (a batch torn by a
    /// crash, damage), if it did.
    pub stopped: Option<String>,
}

/// Read the log in `dir` from `from` (a batch boundary), handing each complete
/// batch to `f` in order; `f` returns `false` to stop early. Fails if `from`
/// is past what the files hold; a torn tail only ends the reading.
pub fn scan(dir: &Path, from: LogPos, mut f: impl FnMut(LogBatch) -> Result<bool>) -> Result<ScanEnd> {
    let segs = segments(dir)?;
    if !segs.contains(&from.segment) {
        return Err(Error::corrupted(
            "feed log",
            format!("segment {:08x} is missing", from.segment),
        ));
    }
    let mut end = ScanEnd {
        end: from,
        stopped: None,
    };
    let mut batch = Vec::new();
    for &n in segs.iter().filter(|n| **n >= from.segment) {
        let mut file = File::open(segment_path(dir, n))?;
        let len = file.metadata()?.len();
        if len > MAX_SEGMENT_FILE {
            // Hearth never writes one this big: damage, not a log to read
            // into memory.
            end.stopped = Some(format!("segment {n:08x} is {len} bytes, more than any Hearth writes"));
            return Ok(end);
        }
        let start = if n == from.segment {
            if from.offset > len {
                return Err(Error::corrupted(
                    "feed log",
                    format!("position {from} is past the end of its segment"),
                ));
            }
            from.offset.max(SEGMENT_HEAD)
        } else {
            SEGMENT_HEAD
        };
        // Only the head and what follows `start` are read: an open reads the
        // log from the last checkpoint's position, usually at its very end.
        let mut head = Vec::new();
        (&mut file).take(SEGMENT_HEAD).read_to_end(&mut head)?;
        let mut tail = Vec::new();
        if len > start {
            file.seek(SeekFrom::Start(start))?;
            file.read_to_end(&mut tail)?;
        }
        if n != from.segment && n != end.end.segment + 1 {
            end.stopped = Some(format!("segment {:08x} is missing", end.end.segment + 1));
            return Ok(end);
        }
        let decoded = decode_parts(&head, &tail, n, start);
        for r in decoded.records {
            let is_commit = r.kind == kind::COMMIT;
            let at = r.end;
            batch.push(r);
            if is_commit {
                let b = LogBatch {
                    records: std::mem::take(&mut batch),
                    end: LogPos { segment: n, offset: at },
                };
                end.end = b.end;
                if !f(b)? {
                    return Ok(end);
                }
            }
        }
        if !batch.is_empty() || decoded.stopped.is_some() {
            // An unfinished batch or a torn record ends what can be read; a
            // later segment could only follow a finished one.
            end.stopped = decoded
                .stopped
                .or_else(|| Some(format!("unfinished batch at the end of segment {n:08x}")));
            return Ok(end);
        }
        // A segment with no complete batch (a crash right after it was
        // created) does not move the end: the next batch goes where the last
        // one ended, and `Log::open_at` sets the empty segment aside.
    }
    Ok(end)
}

/// How far the log reaches from `from`, and whether `target` is one of its
/// batch ends on the way (or `from` itself). A sled (of a store or a relay)
/// whose position is not is ahead of the log: it holds batches the log lost.
pub fn reach(dir: &Path, from: LogPos, target: LogPos) -> Result<(ScanEnd, bool)> {
    let mut reaches = from == target;
    let end = scan(dir, from, |b| {
        reaches |= b.end == target;
        Ok(true)
    })?;
    Ok((end, reaches))
}

/// The log, open for appending.
pub struct Log {
    dir: PathBuf,
    file: File,
    segment: u32,
    /// Where the next batch goes.
    end: u64,
    /// The position up to which the log is durable.
    synced: LogPos,
    /// Whether a segment was created since the directory was last fsynced.
    dir_unsynced: bool,
    /// Syncs run on a thread of their own ([`Log::durable_behind`]), once
    /// one was asked for.
    behind: Option<Behind>,
    /// That thread keeps the cores awake through each sync ([`crate::awake`]).
    awake: bool,
    /// Called as a sync fails, here or on the sync thread, before the
    /// failure is told to anyone ([`Log::on_sync_failure`]).
    fail_hook: FailHookSlot,
}

/// What to do at once when a sync of the log fails.
pub(crate) type FailHook = std::sync::Arc<dyn Fn() + Send + Sync>;
/// Where a log keeps its [`FailHook`], shared with its sync thread.
pub(crate) type FailHookSlot = std::sync::Arc<std::sync::Mutex<Option<FailHook>>>;

fn call_hook(slot: &FailHookSlot) {
    let hook = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(h) = hook {
        h();
    }
}

/// A thread that makes the log durable while its caller goes on, and what
/// it made durable.
struct Behind {
    /// A segment's file (a second handle) and the position to sync it up to.
    jobs: std::sync::mpsc::Sender<(std::sync::Arc<File>, LogPos)>,
    /// The second handle of the current segment, and its number.
    handle: Option<(u32, std::sync::Arc<File>)>,
    flushed: tokio::sync::watch::Receiver<Flushed>,
    /// The furthest position asked for.
    asked: LogPos,
}

/// Up to where the syncs behind made the log durable, and whether one failed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flushed {
    pub(crate) upto: LogPos,
    pub(crate) failed: bool,
}

impl Behind {
    fn start(awake: bool, hook: FailHookSlot) -> Result<Behind> {
        let (jobs, rx) = std::sync::mpsc::channel::<(std::sync::Arc<File>, LogPos)>();
        let (tx, flushed) = tokio::sync::watch::channel(Flushed::default());
        std::thread::Builder::new()
            .name("hearth-log-sync".into())
            .spawn(move || {
                while let Ok(mut job) = rx.recv() {
                    // The newest job's segment is the last one: those before
                    // it were synced whole before it was made.
                    while let Ok(next) = rx.try_recv() {
                        job = next;
                    }
                    #[cfg(feature = "failpoints")]
                    fail::fail_point!("log.sync_behind");
                    let on = crate::awake::Awake::begin(awake);
                    // A failure a test asks for (`crate::fail_log_syncs`).
                    #[cfg(feature = "failpoints")]
                    let injected = (|| {
                        fail::fail_point!("log.sync_behind_fails", |_| true);
                        false
                    })();
                    #[cfg(not(feature = "failpoints"))]
                    let injected = false;
                    let synced = if injected {
                        Err(std::io::Error::other("a sync failure a test asked for"))
                    } else {
                        job.0.sync_data()
                    };
                    drop(on);
                    if synced.is_err() {
                        call_hook(&hook);
                    }
                    tx.send_modify(|f| match synced {
                        Ok(()) => f.upto = f.upto.max(job.1),
                        Err(_) => f.failed = true,
                    });
                }
            })?;
        Ok(Behind {
            jobs,
            handle: None,
            flushed,
            asked: LogPos::default(),
        })
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("end", &self.end())
            .field("synced", &self.synced)
            .finish()
    }
}

impl Log {
    /// Create an empty log in `dir` (which must not hold one), durable at once.
    pub fn create(dir: &Path) -> Result<Log> {
        crate::durable::create_private_dir(dir)?;
        let file = new_segment(dir, 1)?;
        file.sync_all()?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(Log {
            dir: dir.to_path_buf(),
            file,
            segment: 1,
            end: SEGMENT_HEAD,
            synced: LogPos::START,
            dir_unsynced: false,
            behind: None,
            awake: false,
            fail_hook: FailHookSlot::default(),
        })
    }

    /// Open the log in `dir` for appending at `end` (what [`scan`] found):
    /// anything past it (an unfinished batch, a torn record, segments after
    /// it) is cut off first, durably, so it can never be read as part of a
    /// later batch.
    pub fn open_at(dir: &Path, end: LogPos) -> Result<Log> {
        Self::open_inner(dir, end, false)
    }

    /// [`Log::open_at`] a log known durable up to `end` (sled's record of
    /// the last checkpoint says so): nothing past it to set aside, nothing
    /// to cut, and nothing to fsync again.
    pub fn open_durable(dir: &Path, end: LogPos) -> Result<Log> {
        Self::open_inner(dir, end, true)
    }

    fn open_inner(dir: &Path, end: LogPos, durable: bool) -> Result<Log> {
        let mut moved = false;
        for n in segments(dir)?.into_iter().filter(|n| *n > end.segment) {
            moved = true;
            // Never read past `end`: a crash left it unfinished (or damage cut
            // the log before it). Kept aside, not deleted.
            fs::rename(segment_path(dir, n), dir.join(format!("{n:08x}.orphaned")))?;
        }
        let path = segment_path(dir, end.segment);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let cut = file.metadata()?.len() != end.offset;
        if cut {
            file.set_len(end.offset)?;
        }
        // What was read back may sit only in the page cache (the process that
        // wrote it was killed before a checkpoint): it is called synced below,
        // so make it so, and the segment's directory entry with it.
        if !durable || cut || moved {
            file.sync_all()?;
            sync_dir(dir)?;
        }
        Ok(Log {
            dir: dir.to_path_buf(),
            file,
            segment: end.segment,
            end: end.offset,
            synced: end,
            dir_unsynced: false,
            behind: None,
            awake: false,
            fail_hook: FailHookSlot::default(),
        })
    }

    /// Where the next batch goes.
    pub fn end(&self) -> LogPos {
        LogPos {
            segment: self.segment,
            offset: self.end,
        }
    }

    /// Keep the cores awake through the syncs behind (`Config::awake_flushes`),
    /// from the next one that starts its thread.
    pub fn set_awake(&mut self, on: bool) {
        self.awake = on;
    }

    /// Up to where the log is durable.
    pub fn synced(&self) -> LogPos {
        self.synced
    }

    /// Bytes written since the last [`Log::sync`] (a checkpoint is due past a limit).
    pub fn unsynced_bytes(&self) -> u64 {
        if self.synced.segment == self.segment {
            self.end - self.synced.offset
        } else {
            self.end + SEGMENT_BYTES
        }
    }

    /// Append a batch (encoded records, the commit record last); returns the
    /// position just past it. Not durable until [`Log::sync`].
    pub fn append(&mut self, batch: &[u8]) -> Result<LogPos> {
        if self.end >= SEGMENT_BYTES {
            // The full segment is made durable before the next one exists, so
            // a later segment only ever follows a complete one.
            if let Err(e) = self.file.sync_data() {
                call_hook(&self.fail_hook);
                return Err(e.into());
            }
            let next = self.segment + 1;
            self.file = new_segment(&self.dir, next)?;
            self.segment = next;
            self.end = SEGMENT_HEAD;
            self.dir_unsynced = true;
        }
        self.file.write_all_at(batch, self.end)?;
        self.end += batch.len() as u64;
        Ok(self.end())
    }

    /// Make everything appended durable: the segment's data, and the directory
    /// when a segment was created. An error if a sync behind failed: what
    /// it should have made durable may be lost, whatever a later fsync says.
    pub fn sync(&mut self) -> Result<()> {
        self.take_flushed()?;
        let synced = (|| {
            if self.synced != self.end() {
                self.file.sync_data()?;
            }
            if self.dir_unsynced {
                // A new segment's own size and entry: sync_all, then the directory.
                self.file.sync_all()?;
                sync_dir(&self.dir)?;
                self.dir_unsynced = false;
            }
            Result::Ok(())
        })();
        if let Err(e) = synced {
            call_hook(&self.fail_hook);
            return Err(e);
        }
        self.synced = self.end();
        Ok(())
    }

    /// Call `hook` as soon as a sync fails, on whichever thread sees it,
    /// before the failure is told (`None`: no hook).
    pub(crate) fn on_sync_failure(&mut self, hook: Option<FailHook>) {
        *self.fail_hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// The hook a log that replaces this one takes over ([`Log::take_hook`]).
    pub(crate) fn hook_slot(&self) -> FailHookSlot {
        self.fail_hook.clone()
    }

    /// Take over `slot` (the hook of the log this one replaces).
    pub(crate) fn take_hook(&mut self, slot: FailHookSlot) {
        self.fail_hook = slot;
    }

    /// What the syncs behind made durable, taken into `synced`.
    fn take_flushed(&mut self) -> Result<()> {
        let Some(b) = &self.behind else { return Ok(()) };
        let f = *b.flushed.borrow();
        if f.failed {
            return Err(sync_failed());
        }
        self.synced = self.synced.max(f.upto);
        Ok(())
    }

    /// Make the log durable up to `upto` without waiting here: `None` when
    /// it is already (or was made so here, for a segment new since the
    /// directory was synced), else a future that resolves once a sync on
    /// the log's own thread got there. Asked right after a batch is
    /// appended, the sync runs while the caller goes on.
    pub fn durable_behind(&mut self, upto: LogPos) -> Result<Option<DurableWait>> {
        let durable = self.durable_shared(upto)?;
        Ok(durable.map(|d| -> DurableWait { Box::pin(async move { d.wait().await }) }))
    }

    /// As [`Log::durable_behind`], as a `Durable` that any number of
    /// waiters can share (`None`: durable already).
    pub fn durable_shared(&mut self, upto: LogPos) -> Result<Option<Durable>> {
        self.take_flushed()?;
        if self.synced >= upto {
            return Ok(None);
        }
        if self.dir_unsynced {
            self.sync()?;
            return Ok(None);
        }
        if self.behind.is_none() {
            self.behind = Some(Behind::start(self.awake, self.fail_hook.clone())?);
        }
        let end = self.end();
        let handle = match &self.behind {
            Some(Behind {
                handle: Some((segment, f)),
                ..
            }) if *segment == self.segment => f.clone(),
            // Its own open of the segment, not a `dup`: a writeback error is
            // reported once to each open file, and the sync thread's report
            // must not be taken from the store thread's own syncs (an
            // inline one would then succeed before the failure is told).
            _ => std::sync::Arc::new(
                OpenOptions::new()
                    .read(true)
                    .open(segment_path(&self.dir, self.segment))?,
            ),
        };
        let b = self.behind.as_mut().expect("started above");
        b.handle = Some((self.segment, handle.clone()));
        if b.asked < upto {
            b.jobs
                .send((handle, end))
                .map_err(|_| Error::Io(std::io::Error::other("the feed log's sync thread is gone")))?;
            b.asked = end;
        }
        Ok(Some(Durable {
            flushed: b.flushed.clone(),
            upto,
        }))
    }
}

/// Resolves once the log is durable up to a position ([`Log::durable_behind`]).
pub type DurableWait = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// The log's durability up to a position, to wait for from any task
/// ([`Log::durable_shared`]).
#[derive(Clone, Debug)]
pub struct Durable {
    flushed: tokio::sync::watch::Receiver<Flushed>,
    upto: LogPos,
}

impl Durable {
    /// Wait until the log's own thread made it durable up to the position;
    /// an error if a sync failed (or the log is gone).
    pub async fn wait(&self) -> Result<()> {
        let mut flushed = self.flushed.clone();
        let upto = self.upto;
        let reached = flushed
            .wait_for(|f| f.failed || f.upto >= upto)
            .await
            .map(|f| !f.failed);
        match reached {
            Ok(true) => Ok(()),
            _ => Err(sync_failed()),
        }
    }

    /// Whether the log's thread got there, without waiting: `None` not
    /// yet, else how it went (an error if a sync failed or the log is
    /// gone).
    pub fn reached(&self) -> Option<Result<()>> {
        let gone = self.flushed.has_changed().is_err();
        let f = *self.flushed.borrow();
        if f.failed {
            Some(Err(sync_failed()))
        } else if f.upto >= self.upto {
            Some(Ok(()))
        } else if gone {
            Some(Err(sync_failed()))
        } else {
            None
        }
    }

    /// A durability to drive by hand (tests): the sender says how far the
    /// log is durable.
    #[cfg(test)]
    pub(crate) fn manual(upto: LogPos) -> (tokio::sync::watch::Sender<Flushed>, Durable) {
        let (tx, flushed) = tokio::sync::watch::channel(Flushed::default());
        (tx, Durable { flushed, upto })
    }
}

fn sync_failed() -> Error {
    Error::Io(std::io::Error::other("a sync of the feed log failed"))
}

fn new_segment(dir: &Path, n: u32) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(segment_path(dir, n))?;
    file.write_all_at(&segment_head(n), 0)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, b) in items {
            encode_record(&mut out, *k, b);
        }
        out
    }

    /// Each batch's records as (kind, body).
    type Batches = Vec<Vec<(u8, Vec<u8>)>>;

    fn read_all(dir: &Path, from: LogPos) -> (Batches, ScanEnd) {
        let mut out = Vec::new();
        let end = scan(dir, from, |b| {
            out.push(b.records.into_iter().map(|r| (r.kind, r.body)).collect());
            Ok(true)
        })
        .unwrap();
        (out, end)
    }

    #[test]
    fn batches_round_trip_and_an_unfinished_batch_is_cut_off() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let mut log = Log::create(&dir).unwrap();
        let b1 = log
            .append(&batch(&[(kind::ENTRY, b"one"), (kind::COMMIT, b"c1")]))
            .unwrap();
        log.append(&batch(&[(kind::ENTRY, b"two"), (kind::COMMIT, b"c2")]))
            .unwrap();
        // A batch torn by a crash: records without their commit.
        log.append(&batch(&[(kind::ENTRY, b"three")])).unwrap();
        log.sync().unwrap();
        drop(log);
        let (all, end) = read_all(&dir, LogPos::START);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1][0], (kind::ENTRY, b"two".to_vec()));
        assert!(end.stopped.is_some());
        let (tail, _) = read_all(&dir, b1);
        assert_eq!(tail.len(), 1, "reading from a batch boundary");
        let mut log = Log::open_at(&dir, end.end).unwrap();
        log.append(&batch(&[(kind::ENTRY, b"four"), (kind::COMMIT, b"c4")]))
            .unwrap();
        drop(log);
        let (all, end) = read_all(&dir, LogPos::START);
        assert_eq!(all.len(), 3, "the unfinished batch is gone, the new one follows");
        assert_eq!(all[2][0], (kind::ENTRY, b"four".to_vec()));
        assert_eq!(end.stopped, None);
        assert!(
            scan(
                &dir,
                LogPos {
                    segment: 1,
                    offset: 1 << 30
                },
                |_| Ok(true)
            )
            .is_err()
        );
    }

    #[test]
    fn torn_and_flipped_records_end_the_readable_part() {
        let bytes = {
            let mut b = segment_head(1).to_vec();
            b.extend(batch(&[(kind::ENTRY, b"abc"), (kind::COMMIT, b"c")]));
            b
        };
        for cut in 0..bytes.len() {
            let d = decode_segment(&bytes[..cut], 1, 0);
            assert!(d.records.len() < 2);
        }
        for i in SEGMENT_HEAD as usize..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let d = decode_segment(&b, 1, 0);
            assert!(d.records.len() < 2 && d.stopped.is_some(), "flip at {i}");
        }
        assert_eq!(decode_segment(&bytes, 1, 0).records.len(), 2);
        assert!(
            decode_segment(&bytes, 2, 0).stopped.is_some(),
            "the segment number is checked"
        );
    }

    /// A crash right after a new segment was created leaves it holding only
    /// its head: the end stays where the last batch ended (so sled's
    /// position is still found there), and opening sets the empty segment aside.
    #[test]
    fn a_segment_with_no_batch_does_not_move_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let mut log = Log::create(&dir).unwrap();
        let b1 = log
            .append(&batch(&[(kind::ENTRY, b"a"), (kind::COMMIT, b"c")]))
            .unwrap();
        log.sync().unwrap();
        drop(log);
        drop(new_segment(&dir, 2).unwrap());
        let (all, end) = read_all(&dir, LogPos::START);
        assert_eq!((all.len(), end.end), (1, b1));
        let (reach_end, reaches) = reach(&dir, LogPos::START, b1).unwrap();
        assert!(reaches && reach_end.end == b1);
        let mut log = Log::open_at(&dir, end.end).unwrap();
        assert!(dir.join("00000002.orphaned").exists());
        let b2 = log
            .append(&batch(&[(kind::ENTRY, b"b"), (kind::COMMIT, b"c")]))
            .unwrap();
        assert_eq!(b2.segment, 1);
        drop(log);
        assert_eq!(read_all(&dir, LogPos::START).0.len(), 2);
    }

    #[test]
    fn segments_roll_over_and_read_across() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let mut log = Log::create(&dir).unwrap();
        log.append(&batch(&[(kind::ENTRY, b"a"), (kind::COMMIT, b"c")]))
            .unwrap();
        log.end = SEGMENT_BYTES; // pretend the first segment is full
        let end = log
            .append(&batch(&[(kind::ENTRY, b"b"), (kind::COMMIT, b"c")]))
            .unwrap();
        assert_eq!(end.segment, 2);
        log.sync().unwrap();
        drop(log);
        // Segment 1 is shorter than SEGMENT_BYTES here; reading goes on into 2.
        let (all, e) = read_all(&dir, LogPos::START);
        assert_eq!(all.len(), 2);
        assert_eq!(e.end, end);
    }

    /// A sync asked behind runs on the log's own thread: its wait resolves
    /// once the log is durable up to the position asked, which the log then
    /// knows without syncing again; a segment new since the directory was
    /// synced is synced at once, with the directory.
    #[test]
    fn a_sync_behind_makes_the_log_durable_while_its_caller_goes_on() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let mut log = Log::create(&dir).unwrap();
        assert!(log.durable_behind(log.end()).unwrap().is_none(), "nothing written yet");
        let first = log
            .append(&batch(&[(kind::ENTRY, b"a"), (kind::COMMIT, b"c")]))
            .unwrap();
        let wait = log.durable_behind(first).unwrap().expect("not durable yet");
        // More is written while the sync runs; the first wait is for `first`.
        let second = log
            .append(&batch(&[(kind::ENTRY, b"b"), (kind::COMMIT, b"c")]))
            .unwrap();
        rt.block_on(wait).unwrap();
        assert!(log.synced() < second);
        let wait = log
            .durable_behind(second)
            .unwrap()
            .expect("the second batch is not durable yet");
        rt.block_on(wait).unwrap();
        assert!(log.durable_behind(second).unwrap().is_none());
        assert_eq!(log.synced(), second);
        assert_eq!(log.unsynced_bytes(), 0);
        // A new segment: synced here, directory and all.
        log.end = SEGMENT_BYTES;
        let third = log
            .append(&batch(&[(kind::ENTRY, b"d"), (kind::COMMIT, b"c")]))
            .unwrap();
        assert_eq!(third.segment, 2);
        assert!(log.durable_behind(third).unwrap().is_none());
        assert_eq!(log.synced(), third);
        let fourth = log
            .append(&batch(&[(kind::ENTRY, b"e"), (kind::COMMIT, b"c")]))
            .unwrap();
        rt.block_on(log.durable_behind(fourth).unwrap().expect("in segment 2"))
            .unwrap();
        assert!(log.durable_behind(fourth).unwrap().is_none());
        drop(log);
        let (all, e) = read_all(&dir, LogPos::START);
        assert_eq!(all.len(), 4);
        assert_eq!(e.end, fourth);
    }
}
