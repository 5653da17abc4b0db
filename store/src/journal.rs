//! The write-ahead journal: the durable record of every acknowledged write.
//!
//! A write is acknowledged once its journal record is on disk (one `fdatasync`
//! for every record queued at that moment). Applying it to automerge and to sled
//! happens alongside, and sled is flushed only at checkpoints, after which the
//! journal starts over. On open, records past sled's watermark are replayed. This
//! keeps the durable record small and early and the CRDT work off the
//! acknowledgement path (ARCHITECTURE.md explains why this beats flushing sled).
//!
//! The file is preallocated with zeros and overwritten in place, like SQLite's
//! WAL: an `fdatasync` that does not change the file's size or allocation needs
//! no metadata journal commit, which measured about 3x cheaper here.
//!
//! File format (docs/format.md): a sequence of records
//! `len u32 LE | crc32 u32 LE | run u64 LE | seq u64 LE | sealed`, where `len`
//! counts the bytes after itself, the CRC covers `run | seq | sealed`, and `sealed`
//! is `seal(record key, aad = "journal" | run BE | seq BE, postcard(Vec<JournalEntry>))`.
//! `run` is random per restart of the journal and `seq` grows by one per record,
//! so the readable part ends at the first record that is torn, fails its CRC,
//! belongs to an earlier run (stale bytes past the end) or breaks the sequence.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use hearth_core::{ChannelId, Op, SecretKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest journal record accepted when reading (a record is one write: a few
/// entries of at most 16 KiB of text each).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// Bytes of zeros the journal file is kept at, at least. The default checkpoint
/// threshold (4 MiB) keeps a journal inside it; past it the file just grows.
pub const PREALLOCATED_BYTES: u64 = 8 << 20;
const RECORD_HEAD: usize = 4 + 4 + 8 + 8;

/// One journaled write. Its `Debug` never prints a channel key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalEntry {
    /// A channel this device created or joined: its key must be durable before
    /// anything is written to it.
    Channel {
        /// Channel id.
        id: ChannelId,
        /// Channel key.
        key: [u8; 32],
    },
    /// An operation on a channel.
    Op {
        /// The channel.
        channel: ChannelId,
        /// The op (message ids already assigned, so replay reproduces them).
        op: Op,
    },
    /// A channel joined from an invite that named it: as `Channel`, plus the
    /// name shown until the channel's own name arrives by sync.
    Joined {
        /// Channel id.
        id: ChannelId,
        /// Channel key.
        key: [u8; 32],
        /// The name the invite gave it.
        name: String,
    },
}

impl std::fmt::Debug for JournalEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalEntry::Channel { id, .. } => f
                .debug_struct("Channel")
                .field("id", id)
                .field("key", &"<redacted>")
                .finish(),
            JournalEntry::Op { channel, op } => f.debug_struct("Op").field("channel", channel).field("op", op).finish(),
            JournalEntry::Joined { id, .. } => f
                .debug_struct("Joined")
                .field("id", id)
                .field("key", &"<redacted>")
                .finish_non_exhaustive(),
        }
    }
}

/// A decoded journal record: one write (its entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// Sequence number, increasing across the life of the store.
    pub seq: u64,
    /// The writes of the group, in order.
    pub entries: Vec<JournalEntry>,
}

/// Bytes of a journal nonce's prefix ([`encode_record_under`]).
pub const NONCE_PREFIX: usize = 16;

/// Encode one record, sealed under a random nonce.
pub fn encode_record(key: &SecretKey, run: u64, seq: u64, entries: &[JournalEntry]) -> Result<Vec<u8>> {
    let mut prefix = [0u8; NONCE_PREFIX];
    hearth_core::random_bytes(&mut prefix)?;
    encode_record_under(key, &prefix, run, seq, entries)
}

/// Encode one record, sealed under the nonce `prefix | seq u64 LE`. The
/// caller draws `prefix` at random for a stretch of records whose `seq`s
/// never repeat (the store thread: once when it starts), so that no nonce
/// seals two records: this saves a call for random bytes per write.
pub fn encode_record_under(
    key: &SecretKey,
    prefix: &[u8; NONCE_PREFIX],
    run: u64,
    seq: u64,
    entries: &[JournalEntry],
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 24];
    nonce[..NONCE_PREFIX].copy_from_slice(prefix);
    nonce[NONCE_PREFIX..].copy_from_slice(&seq.to_le_bytes());
    // Built in one buffer, length and checksum filled in last: a post's
    // record is sealed on its writer's path before the fsync, where a
    // Vec grown a byte at a time and two more copies cost about 1 µs.
    let mut out = Vec::with_capacity(RECORD_CAPACITY);
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&run.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    hearth_core::seal_with_nonce_into(key, &aad(run, seq), nonce, &mut out, |out| {
        let plain =
            postcard::to_extend(entries, std::mem::take(out)).map_err(|e| Error::invalid("journal record", e))?;
        *out = plain;
        Ok::<(), Error>(())
    })?;
    let len = u32::try_from(out.len() - 4).map_err(|_| Error::invalid("journal record", "too long"))?;
    let crc = crc32fast::hash(&out[8..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A record's first allocation: a post of a few hundred bytes of text
/// fits, so its encoding never grows the buffer.
const RECORD_CAPACITY: usize = 1024;

fn aad(run: u64, seq: u64) -> [u8; 23] {
    let mut a = [0u8; 23];
    a[..7].copy_from_slice(b"journal");
    a[7..15].copy_from_slice(&run.to_be_bytes());
    a[15..].copy_from_slice(&seq.to_be_bytes());
    a
}

/// Every record `key` opens anywhere in `bytes`, stale ones of earlier runs
/// included (found at any offset: a length that fits, a good checksum, then
/// the seal), as (offset, plaintext). For audits ([`crate::Store::find_text`]),
/// not for replay.
pub fn every_sealed_record(key: &SecretKey, bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + RECORD_HEAD <= bytes.len() {
        let rest = &bytes[pos..];
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if (RECORD_HEAD - 4..=MAX_RECORD_BYTES).contains(&len) && rest.len() >= 4 + len {
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let body = &rest[8..4 + len];
            if crc32fast::hash(body) == crc {
                let run = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                let seq = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
                if let Ok(plain) = hearth_core::open(key, &aad(run, seq), &body[16..], "journal record") {
                    out.push((pos, plain));
                    pos += 4 + len;
                    continue;
                }
            }
        }
        pos += 1;
    }
    out
}

/// What reading a journal found.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// Every readable record, in order.
    pub records: Vec<JournalRecord>,
    /// Bytes of readable records.
    pub valid_len: usize,
    /// Why reading stopped before a zero-filled end, if it did (a write torn by a
    /// crash, stale bytes of an earlier run, or damage).
    pub stopped: Option<String>,
}

/// Decode journal bytes. Never panics; stops at zeros (the preallocated end), or
/// at the first record that is torn, fails its CRC, belongs to another run than
/// the first record, breaks the sequence or does not open.
pub fn decode_records(key: &SecretKey, bytes: &[u8]) -> Decoded {
    decode_prefix(key, bytes).0
}

/// [`decode_records`], and whether it stopped because `bytes` ended inside a
/// record (more of the file may complete it).
fn decode_prefix(key: &SecretKey, bytes: &[u8]) -> (Decoded, bool) {
    let mut d = Decoded::default();
    let mut cut = false;
    let mut pos = 0usize;
    let mut last: Option<(u64, u64)> = None;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        // Zeros end the records only where a whole header's worth is held:
        // fewer bytes may be the start of a record whose length's low byte
        // is 0 (the rest of the file completes it).
        if rest.len() >= RECORD_HEAD && rest[..RECORD_HEAD].iter().all(|b| *b == 0) {
            break;
        }
        // Bytes that do not form a good record end the readable part. They are
        // worth reporting only if they claim the run being read (a torn write of
        // this run, or damage); otherwise they are stale bytes of an earlier run,
        // left behind when the journal started over: the normal end.
        let claims_run = rest.len() >= 16 && last.is_some_and(|(r, _)| rest[8..16] == r.to_le_bytes());
        let mut stop = |why: String| {
            if claims_run {
                d.stopped = Some(why);
            }
        };
        if rest.len() < RECORD_HEAD {
            cut = true;
            if rest.iter().any(|b| *b != 0) {
                stop(format!("torn record header at byte {pos}"));
            }
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if !(RECORD_HEAD - 4..=MAX_RECORD_BYTES).contains(&len) || rest.len() < 4 + len {
            cut = rest.len() < 4 + len;
            stop(format!("torn or oversized record at byte {pos}"));
            break;
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let body = &rest[8..4 + len];
        if crc32fast::hash(body) != crc {
            stop(format!("checksum mismatch at byte {pos}"));
            break;
        }
        let run = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        if let Some((r, s)) = last {
            if run != r {
                // Stale bytes of an earlier run: the normal end after a restart.
                break;
            }
            if s.checked_add(1) != Some(seq) {
                d.stopped = Some(format!("record out of sequence at byte {pos}"));
                break;
            }
        }
        let entries = hearth_core::open(key, &aad(run, seq), &body[16..], "journal record")
            .map_err(Error::from)
            .and_then(|plain| {
                postcard::from_bytes::<Vec<JournalEntry>>(&plain).map_err(|e| Error::corrupted("journal record", e))
            });
        match entries {
            Ok(entries) => d.records.push(JournalRecord { seq, entries }),
            Err(e) => {
                d.stopped = Some(format!("record at byte {pos}: {e}"));
                break;
            }
        }
        last = Some((run, seq));
        pos += 4 + len;
        d.valid_len = pos;
    }
    (d, cut)
}

/// The first bytes read of the journal at an open: after a clean close its
/// first record header is zeroed, so this is all there is to read.
const FIRST_READ: usize = 4 << 10;

/// The journal's file and its first bytes, read without the key: the
/// thread that opens sled during the Argon2id unlock reads them, so that
/// the open's part after the unlock only decodes ([`Journal::open_read`]).
pub struct JournalFile {
    file: File,
    /// The file's length when it was opened.
    len: u64,
    /// Its first [`FIRST_READ`] bytes (all of it when it is shorter).
    head: Vec<u8>,
}

impl JournalFile {
    /// Open the journal's file (creating it, owner-only, if there is none)
    /// and read its first bytes.
    pub fn read(path: &Path) -> Result<JournalFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut head = vec![0u8; (FIRST_READ as u64).min(len) as usize];
        file.read_exact_at(&mut head, 0)?;
        Ok(JournalFile { file, len, head })
    }
}

/// Read the journal's records from the start of its file, reading no
/// further than they go: the file is preallocated (8 MiB of it, mostly
/// zeros or an earlier run's records), and reading all of it took about 6
/// ms of a cold open that is otherwise about as long. Each read appends the
/// next bytes, four times as many as were held, so decoding again from the
/// start stays linear. The records end only where something held ends
/// them (zeros, another run's or a bad record): bytes that end inside a
/// record, or right at a record's end, are followed by more. (Until the
/// thirty-third session a record that ended right at the first read's end,
/// 4 KiB, ended the journal there, and the records after it were never
/// replayed: acknowledged writes lost at a crash, about one crash in 150
/// with more than 4 KiB of records.)
fn read_records(jf: &mut JournalFile, key: &SecretKey) -> Result<Decoded> {
    let head = std::mem::take(&mut jf.head);
    let file = &jf.file;
    read_on(key, head, jf.len, |buf, at| file.read_exact_at(buf, at))
}

/// [`read_records`] over any reader: `bytes` are the file's first ones, `len`
/// its length, `read_at` fills a buffer from an offset.
fn read_on(
    key: &SecretKey,
    mut bytes: Vec<u8>,
    len: u64,
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> Result<Decoded> {
    loop {
        let (decoded, cut) = decode_prefix(key, &bytes);
        let held = bytes.len();
        let more = cut || decoded.valid_len == held;
        if !more || held as u64 >= len {
            return Ok(decoded);
        }
        let upto = (held.max(FIRST_READ) as u64).saturating_mul(4).min(len);
        bytes.resize(upto as usize, 0);
        read_at(&mut bytes[held..], held as u64)?;
    }
}

/// [`decode_records`] of `data` as an open reads a journal file that holds
/// it: its first 4 KiB, then more while the records go on. It must find
/// what decoding the whole does (the `journal` fuzz target checks it).
pub fn decode_records_as_read(key: &SecretKey, data: &[u8]) -> Decoded {
    let head = data[..FIRST_READ.min(data.len())].to_vec();
    read_on(key, head, data.len() as u64, |buf, at| {
        let at = at as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    })
    .expect("reading from memory cannot fail")
}

/// The alignment of direct writes: the offset, length and address of
/// every buffer. 4 KiB suits disks of 512-byte and of 4 KiB sectors.
const DIRECT_ALIGN: usize = 4096;

/// The journal's blocks from the one that holds the next record's start,
/// as they are on disk: the current run's records up to the write offset,
/// zeros after. A direct write rewrites whole blocks, so each append copies
/// its record in and writes the blocks it touches.
struct Tail {
    /// Backing bytes; the window starts at the first 4 KiB-aligned address
    /// in them (safe code cannot ask the allocator for an alignment of a
    /// `Vec<u8>`, so it is over-allocated by one block instead).
    buf: Vec<u8>,
    /// The file offset of the window's first byte (a multiple of
    /// [`DIRECT_ALIGN`]).
    start: u64,
}

impl Tail {
    /// The window for a next record at `offset`: the bytes of the file
    /// before it in its block, zeros after.
    fn at(file: &File, offset: u64) -> std::io::Result<Tail> {
        let mut tail = Tail {
            buf: vec![0u8; 2 * DIRECT_ALIGN],
            start: offset & !(DIRECT_ALIGN as u64 - 1),
        };
        let used = (offset - tail.start) as usize;
        let start = tail.start;
        file.read_exact_at(&mut tail.window()[..used], start)?;
        Ok(tail)
    }

    /// The aligned window.
    fn window(&mut self) -> &mut [u8] {
        let skip = self.buf.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.buf[skip..]
    }

    /// Make the window at least `len` bytes, keeping its first `used`.
    fn reserve(&mut self, used: usize, len: usize) {
        if self.window().len() >= len {
            return;
        }
        let mut bigger = Tail {
            buf: vec![0u8; len.next_power_of_two() + DIRECT_ALIGN],
            start: self.start,
        };
        bigger.window()[..used].copy_from_slice(&self.window()[..used]);
        *self = bigger;
    }

    /// Zero the window's first `used` bytes and move it to offset 0.
    fn reset(&mut self, used: usize) {
        self.window()[..used].fill(0);
        self.start = 0;
    }
}

/// How records reach the disk.
enum Sync {
    /// Through a second handle on the file opened `O_DIRECT | O_DSYNC`: one
    /// `pwrite` of whole blocks that returns once they are on stable
    /// storage. Measured about twice as fast as a buffered write and an
    /// `fdatasync` here (ARCHITECTURE.md, "The journal written direct").
    Direct { file: File, tail: Tail },
    /// A buffered write, then `fdatasync`: where the file system refuses
    /// direct I/O (tmpfs, some FUSE and network file systems).
    Buffered,
}

/// Open a second handle on the journal for direct, synchronous writes of
/// records from `offset` on, if the file system allows it.
fn open_direct(path: &Path, file: &File, offset: u64) -> Result<Sync> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
    {
        Ok(direct) => Ok(Sync::Direct {
            file: direct,
            tail: Tail::at(file, offset)?,
        }),
        Err(_) => Ok(Sync::Buffered),
    }
}

/// The open journal file.
pub struct Journal {
    file: File,
    /// How appends are made durable.
    sync: Sync,
    /// Where the next record goes.
    offset: u64,
    /// The current run: records of this run are written from offset 0 on.
    run: u64,
    /// How far the file may hold records of earlier runs (its length at
    /// open, then the furthest offset written): what [`Journal::purge`] zeroes.
    high: u64,
}

fn random_run() -> Result<u64> {
    let mut b = [0u8; 8];
    hearth_core::random_bytes(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

impl Journal {
    /// Open (creating and preallocating if needed) the journal and read what it
    /// holds. The caller replays what it needs, makes it durable elsewhere and
    /// then calls [`Journal::clear`]; until then nothing is written.
    pub fn open(path: &Path, key: &SecretKey) -> Result<(Journal, Decoded)> {
        Self::open_read(path, JournalFile::read(path)?, key)
    }

    /// [`Journal::open`] of a file whose first bytes were read already.
    pub fn open_read(path: &Path, jf: JournalFile, key: &SecretKey) -> Result<(Journal, Decoded)> {
        Self::open_with(path, jf, key, true)
    }

    /// [`Journal::open_read`], writing direct where the file system allows
    /// it if `direct`, else always buffered with an `fdatasync`.
    fn open_with(path: &Path, mut jf: JournalFile, key: &SecretKey, direct: bool) -> Result<(Journal, Decoded)> {
        let decoded = read_records(&mut jf, key)?;
        let JournalFile { file, len, .. } = jf;
        if len < PREALLOCATED_BYTES {
            // Real zeros, not a sparse extension: writes into holes or unwritten
            // extents would change the allocation and cost a metadata commit.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < PREALLOCATED_BYTES {
                let n = (PREALLOCATED_BYTES - at).min(zeros.len() as u64);
                file.write_all_at(&zeros[..n as usize], at)?;
                at += n;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let sync = if direct {
            open_direct(path, &file, decoded.valid_len as u64)?
        } else {
            Sync::Buffered
        };
        Ok((
            Journal {
                file,
                sync,
                offset: decoded.valid_len as u64,
                run: random_run()?,
                high: len.max(PREALLOCATED_BYTES),
            },
            decoded,
        ))
    }

    /// The run new records must carry.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// Write records in place and make them durable.
    pub fn append_durable(&mut self, bytes: &[u8]) -> Result<()> {
        if let Sync::Direct { file, tail } = &mut self.sync {
            match append_direct(file, tail, self.offset, bytes) {
                Ok(()) => {
                    self.advance(bytes.len());
                    crash_point!("journal.written");
                    return Ok(());
                }
                // The file system took the handle but not the write (its
                // alignment or direct I/O itself): write buffered from now on.
                // The buffered write below covers whatever part of the record
                // a refused direct write may have left.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(error = %e, "the journal's file system refused a direct write: writing buffered");
                    self.sync = Sync::Buffered;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.file.write_all_at(bytes, self.offset)?;
        self.advance(bytes.len());
        crash_point!("journal.written");
        self.file.sync_data()?;
        Ok(())
    }

    fn advance(&mut self, written: usize) {
        self.offset += written as u64;
        self.high = self.high.max(self.offset);
    }

    /// The next record goes at offset 0, with zeros after it (the run
    /// started over, or the file was marked empty).
    fn rewind(&mut self) {
        if let Sync::Direct { tail, .. } = &mut self.sync {
            tail.reset((self.offset - tail.start) as usize);
        }
        self.offset = 0;
    }

    /// Start over: everything written so far is durable in sled. No I/O: the old
    /// records stay on disk until overwritten, and reading stops at the first of
    /// them (another run) or is harmless (all at or below sled's watermark).
    pub fn clear(&mut self, run: u64) {
        self.rewind();
        self.run = run;
    }

    /// After a clean close: zero the first record's header so that the next open
    /// finds an empty journal at once (no stale records to read past, no
    /// checkpoint to take before starting over).
    pub fn mark_empty(&mut self) -> Result<()> {
        self.file.write_all_at(&[0u8; RECORD_HEAD], 0)?;
        self.file.sync_data()?;
        self.rewind();
        Ok(())
    }

    /// Zero every byte past the current run's records (old runs' records,
    /// which hold the texts of their writes), durably; the current run's
    /// records stay as they are, so a crash at any moment loses nothing. A
    /// compaction does this once sled holds everything (the journal was
    /// cleared) so that no deleted text is left in the journal's file.
    pub fn purge(&mut self) -> Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.offset;
        while at < self.high {
            let n = (self.high - at).min(zeros.len() as u64);
            self.file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        self.file.sync_data()?;
        self.high = self.offset;
        Ok(())
    }

    /// A fresh run id for [`Journal::clear`].
    pub fn new_run() -> Result<u64> {
        random_run()
    }
}

/// Write `bytes` at `offset` through the direct handle: the blocks from the
/// one that holds `offset` to the one that holds the record's end, with the
/// run's earlier records before it in the first block (rewritten as they
/// are, as a page cache's writeback would) and zeros after it. The window
/// keeps only the record's bytes of a write that failed out, so that it
/// still holds zeros past `offset`.
fn append_direct(file: &File, tail: &mut Tail, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let block = offset & !(DIRECT_ALIGN as u64 - 1);
    let used = (offset - tail.start) as usize;
    if block != tail.start {
        // The records before `block` are on disk for good: keep only what
        // the first block still holds.
        let from = (block - tail.start) as usize;
        let w = tail.window();
        w.copy_within(from..used, 0);
        w[used - from..used].fill(0);
        tail.start = block;
    }
    let at = (offset - block) as usize;
    let end = at + bytes.len();
    let span = end.next_multiple_of(DIRECT_ALIGN);
    tail.reserve(at, span);
    let w = tail.window();
    w[at..end].copy_from_slice(bytes);
    let written = file.write_all_at(&w[..span], block);
    if written.is_err() {
        w[at..end].fill(0);
    }
    written
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hearth_core::MessageId;
    use std::os::unix::fs::OpenOptionsExt;

    /// A small entry, distinct for each `i`.
    pub(crate) fn entry(i: u8) -> JournalEntry {
        JournalEntry::Op {
            channel: ChannelId([i; 32]),
            op: Op::ReadUpTo {
                msg: MessageId([i; 24]),
            },
        }
    }

    /// A purge zeroes every byte past the current run's records, and keeps
    /// those: what an old run wrote is gone from the file.
    #[test]
    fn a_purge_zeroes_old_runs_and_keeps_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let key = SecretKey::from_bytes([4; 32]);
        let (mut j, _) = Journal::open(&path, &key).unwrap();
        // More than a block of them: a direct write zeroes the rest of the
        // block it writes, so only those past the first block stay.
        let old: Vec<Vec<u8>> = (1..=200)
            .map(|i| encode_record(&key, j.run(), i, &[entry(i as u8)]).unwrap())
            .collect();
        for r in &old {
            j.append_durable(r).unwrap();
        }
        j.clear(Journal::new_run().unwrap());
        let live = encode_record(&key, j.run(), 201, &[entry(201)]).unwrap();
        j.append_durable(&live).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.windows(old[150].len()).any(|w| w == old[150]),
            "the old run is still there"
        );
        j.purge().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // The live record, then zeros: no old record is left anywhere.
        assert_eq!(bytes[..live.len()], live[..]);
        assert!(bytes[live.len()..].iter().all(|b| *b == 0));
        let d = decode_records(&key, &bytes);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.records[0].seq, 201);
        // Appending goes on after it.
        j.append_durable(&encode_record(&key, j.run(), 202, &[entry(202)]).unwrap())
            .unwrap();
        assert_eq!(decode_records(&key, &std::fs::read(&path).unwrap()).records.len(), 2);
    }

    #[test]
    fn records_round_trip_and_torn_tails_stop_reading() {
        let key = SecretKey::from_bytes([4; 32]);
        let mut bytes = encode_record(&key, 9, 1, &[entry(1)]).unwrap();
        let first = bytes.len();
        bytes.extend(encode_record(&key, 9, 2, &[entry(2), entry(3)]).unwrap());
        let d = decode_records(&key, &bytes);
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.records[1].entries, vec![entry(2), entry(3)]);
        assert!(d.stopped.is_none());
        for cut in 0..bytes.len() {
            let d = decode_records(&key, &bytes[..cut]);
            assert_eq!(d.records.len(), usize::from(cut >= first));
        }
        let mut flipped = bytes.clone();
        flipped[first + 30] ^= 1;
        let d = decode_records(&key, &flipped);
        assert_eq!(d.records.len(), 1);
        assert!(d.stopped.is_some());
        assert_eq!(decode_records(&SecretKey::from_bytes([5; 32]), &bytes).records.len(), 0);
        // Zeros after the records are the preallocated end, not damage.
        bytes.extend([0u8; 100]);
        let d = decode_records(&key, &bytes);
        assert_eq!((d.records.len(), d.stopped), (2, None));
    }

    /// Records sealed under one prefix (the store thread's) take the nonce
    /// `prefix | seq`, distinct per record, and read back like any other.
    #[test]
    fn records_under_a_prefix_have_counted_nonces_and_read_back() {
        let key = SecretKey::from_bytes([4; 32]);
        let prefix = [7u8; NONCE_PREFIX];
        let a = encode_record_under(&key, &prefix, 9, 1, &[entry(1)]).unwrap();
        let b = encode_record_under(&key, &prefix, 9, 2, &[entry(1)]).unwrap();
        // After len, crc, run and seq: the nonce.
        let nonce = |r: &[u8]| r[RECORD_HEAD..RECORD_HEAD + 24].to_vec();
        assert_eq!(nonce(&a), [&prefix[..], &1u64.to_le_bytes()].concat());
        assert_eq!(nonce(&b), [&prefix[..], &2u64.to_le_bytes()].concat());
        // Same plaintext, different nonces: different boxes.
        assert_ne!(a[RECORD_HEAD..], b[RECORD_HEAD..]);
        let d = decode_records(&key, &[a, b].concat());
        assert_eq!((d.records.len(), d.stopped), (2, None));
        assert_eq!(d.records[1].entries, vec![entry(1)]);
    }

    /// A record is built in one buffer: the same bytes as its framing
    /// around a box of `seal_with_nonce` (the format of every journal
    /// written before), for a small record and one past the buffer's
    /// first allocation.
    #[test]
    fn records_are_the_bytes_of_their_framed_box() {
        let key = SecretKey::from_bytes([4; 32]);
        let prefix = [7u8; NONCE_PREFIX];
        let long = JournalEntry::Op {
            channel: ChannelId([2; 32]),
            op: Op::Post {
                id: MessageId([3; 24]),
                text: "long ".repeat(1000),
                reply_to: None,
            },
        };
        for (seq, entries) in [
            (1u64, vec![entry(1)]),
            (2, vec![entry(2), long.clone()]),
            (3, vec![long]),
        ] {
            let record = encode_record_under(&key, &prefix, 9, seq, &entries).unwrap();
            let mut nonce = [0u8; 24];
            nonce[..NONCE_PREFIX].copy_from_slice(&prefix);
            nonce[NONCE_PREFIX..].copy_from_slice(&seq.to_le_bytes());
            let plain = postcard::to_stdvec(&entries).unwrap();
            let sealed = hearth_core::seal_with_nonce(&key, &aad(9, seq), &plain, nonce).unwrap();
            let mut framed = Vec::new();
            framed.extend_from_slice(&((4 + 8 + 8 + sealed.len()) as u32).to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&9u64.to_le_bytes());
            crc.update(&seq.to_le_bytes());
            crc.update(&sealed);
            framed.extend_from_slice(&crc.finalize().to_le_bytes());
            framed.extend_from_slice(&9u64.to_le_bytes());
            framed.extend_from_slice(&seq.to_le_bytes());
            framed.extend_from_slice(&sealed);
            assert_eq!(record, framed, "record {seq}");
            assert_eq!(decode_records(&key, &record).records[0].entries, entries);
        }
    }

    /// A record of exactly `want` bytes (a post whose text is as long as
    /// that takes).
    fn record_of_len(key: &SecretKey, run: u64, seq: u64, want: usize) -> Vec<u8> {
        (0..want)
            .map(|n| {
                let post = JournalEntry::Op {
                    channel: ChannelId([7; 32]),
                    op: Op::Post {
                        id: MessageId([seq as u8; 24]),
                        text: "t".repeat(n),
                        reply_to: None,
                    },
                };
                encode_record(key, run, seq, &[post]).unwrap()
            })
            .find(|r| r.len() == want)
            .unwrap_or_else(|| panic!("no record of {want} bytes"))
    }

    /// Records from seq 1 that end exactly at byte `at` of the file.
    fn records_up_to(key: &SecretKey, run: u64, at: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut seq = 0;
        // Small records while a last one of 200 to 400 bytes still fits.
        while at - bytes.len() > 400 {
            seq += 1;
            bytes.extend(encode_record(key, run, seq, &[entry(seq as u8)]).unwrap());
        }
        seq += 1;
        bytes.extend(record_of_len(key, run, seq, at - bytes.len()));
        assert_eq!(bytes.len(), at);
        bytes
    }

    /// Append records from seq `from` until `bytes` holds `n` more.
    fn more_records(key: &SecretKey, run: u64, bytes: &mut Vec<u8>, from: u64, n: u64) -> u64 {
        for seq in from..from + n {
            bytes.extend(encode_record(key, run, seq, &[entry(seq as u8)]).unwrap());
        }
        from + n - 1
    }

    /// Write `bytes` as the journal's records, open it again, and check
    /// that every record up to `last` is read, in order.
    fn reads_all(key: &SecretKey, bytes: &[u8], last: u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path, key).unwrap();
        j.append_durable(bytes).unwrap();
        drop(j);
        let (j, d) = Journal::open(&path, key).unwrap();
        assert_eq!(d.stopped, None);
        assert_eq!(d.records.len() as u64, last, "every record is read");
        assert!(d.records.iter().zip(1..).all(|(r, s)| r.seq == s));
        assert_eq!(j.offset, bytes.len() as u64);
    }

    #[test]
    fn records_that_end_right_where_a_read_ends_are_followed_by_the_rest() {
        // A power-cut test found it: a record ended at byte 4,096, the first
        // read's end, and the 29 acknowledged records after it were never
        // replayed. The later reads end at 16 and 64 KiB.
        let key = SecretKey::from_bytes([5; 32]);
        for at in [FIRST_READ, 4 * FIRST_READ, 16 * FIRST_READ] {
            let mut bytes = records_up_to(&key, 42, at);
            let next = decode_records(&key, &bytes).records.len() as u64 + 1;
            let last = more_records(&key, 42, &mut bytes, next, 40);
            reads_all(&key, &bytes, last);
        }
    }

    #[test]
    fn a_record_whose_first_held_byte_is_zero_is_read_whole() {
        // The first read ends one byte into a record whose length's low byte
        // is 0 (a record of 260 bytes): that byte is no end of the records.
        let key = SecretKey::from_bytes([6; 32]);
        let mut bytes = records_up_to(&key, 42, FIRST_READ - 1);
        let next = decode_records(&key, &bytes).records.len() as u64 + 1;
        let r = record_of_len(&key, 42, next, 260);
        assert_eq!(r[0], 0, "its length's low byte");
        bytes.extend(r);
        let last = more_records(&key, 42, &mut bytes, next + 1, 40);
        reads_all(&key, &bytes, last);
    }

    /// An open reads no further than the records go, in reads that grow:
    /// records well past the first read, one of them straddling two reads,
    /// all come back, and a torn tail is still reported.
    #[test]
    fn an_open_reads_records_past_its_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes([4; 32]);
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path, &key).unwrap();
        let run = j.run();
        let mut bytes = Vec::new();
        let mut seq = 0;
        // Small records up to near the first read's end, then one record of
        // 2,000 entries across its end, then more small ones.
        while bytes.len() < FIRST_READ - 2000 {
            seq += 1;
            bytes.extend(encode_record(&key, run, seq, &[entry(seq as u8)]).unwrap());
        }
        seq += 1;
        let big: Vec<JournalEntry> = (0..2000).map(|i| entry(i as u8)).collect();
        let r = encode_record(&key, run, seq, &big).unwrap();
        assert!(r.len() > 4 * 2000, "the record straddles the first read");
        bytes.extend(r);
        for _ in 0..3000 {
            seq += 1;
            bytes.extend(encode_record(&key, run, seq, &[entry(seq as u8)]).unwrap());
        }
        // A torn record of the same run after them.
        let torn = encode_record(&key, run, seq + 1, &[entry(1)]).unwrap();
        bytes.extend(&torn[..torn.len() - 3]);
        j.append_durable(&bytes).unwrap();
        drop(j);
        let (j, d) = Journal::open(&path, &key).unwrap();
        assert!(j.offset > 4 * FIRST_READ as u64, "records past two reads");
        assert_eq!(d.records.len() as u64, seq);
        assert!(d.records.iter().zip(1..).all(|(r, s)| r.seq == s));
        assert_eq!(
            d.records
                .iter()
                .find(|r| r.entries.len() == 2000)
                .map(|r| r.entries.clone()),
            Some(big)
        );
        assert!(d.stopped.is_some(), "the torn record is reported");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATED_BYTES);
    }

    /// A journal written direct leaves the same records on disk as one
    /// written buffered, through records inside one block, across blocks
    /// and of many blocks, a run started over, a reopen that goes on after
    /// its records, and a clean close; each read back after every step.
    #[test]
    fn direct_and_buffered_journals_write_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes([4; 32]);
        let paths = [dir.path().join("direct"), dir.path().join("buffered")];
        let open = |path: &Path, direct: bool| Journal::open_with(path, JournalFile::read(path).unwrap(), &key, direct);
        let (mut direct, _) = open(&paths[0], true).unwrap();
        let (mut buffered, _) = open(&paths[1], false).unwrap();
        let probe = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&paths[0]);
        if probe.is_ok() {
            assert!(matches!(direct.sync, Sync::Direct { .. }), "direct I/O is there to use");
        } else {
            eprintln!(
                "notice: no direct I/O in {}: both journals write buffered",
                dir.path().display()
            );
        }
        let run = direct.run();
        // Record sizes: small ones filling blocks, one of about 3 blocks,
        // one ending on a block's end.
        let mut sizes: Vec<usize> = vec![1; 60];
        sizes.push(300);
        sizes.extend([1; 10]);
        let seq = std::cell::Cell::new(0u64);
        let mut expect = Vec::new();
        let append = |direct: &mut Journal, buffered: &mut Journal, run: u64, n: usize, expect: &mut Vec<u64>| {
            let next = seq.get() + 1;
            let entries: Vec<JournalEntry> = (0..n).map(|i| entry((next as usize + i) as u8)).collect();
            let r = encode_record(&key, run, next, &entries).unwrap();
            direct.append_durable(&r).unwrap();
            buffered.append_durable(&r).unwrap();
            expect.push(next);
            seq.set(next);
        };
        let check = |direct: &Journal, expect: &[u64]| {
            let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
            let upto = direct.offset as usize;
            assert_eq!(bytes[0][..upto], bytes[1][..upto]);
            for b in &bytes {
                let d = decode_records(&key, b);
                assert_eq!(d.records.iter().map(|r| r.seq).collect::<Vec<_>>(), expect);
                assert_eq!(d.stopped, None);
            }
        };
        for n in &sizes {
            append(&mut direct, &mut buffered, run, *n, &mut expect);
        }
        check(&direct, &expect);
        // One that ends exactly on a block's end, then one after it.
        let post = |len: usize| {
            let op = Op::Post {
                id: MessageId([1; 24]),
                text: "x".repeat(len),
                reply_to: None,
            };
            vec![JournalEntry::Op {
                channel: ChannelId([1; 32]),
                op,
            }]
        };
        let r = (0..2 * DIRECT_ALIGN)
            .map(|len| encode_record(&key, run, seq.get() + 1, &post(len)).unwrap())
            .find(|r| (direct.offset as usize + r.len()).is_multiple_of(DIRECT_ALIGN))
            .expect("a text length that ends on a block");
        seq.set(seq.get() + 1);
        direct.append_durable(&r).unwrap();
        buffered.append_durable(&r).unwrap();
        expect.push(seq.get());
        assert!(direct.offset.is_multiple_of(DIRECT_ALIGN as u64));
        append(&mut direct, &mut buffered, run, 1, &mut expect);
        check(&direct, &expect);
        // The run starts over: shorter than the old one.
        let run = Journal::new_run().unwrap();
        direct.clear(run);
        buffered.clear(run);
        expect.clear();
        for n in [1, 2, 500, 1] {
            append(&mut direct, &mut buffered, run, n, &mut expect);
        }
        check(&direct, &expect);
        // Reopened without a checkpoint: appends go on after the records.
        drop((direct, buffered));
        let (mut direct, d) = open(&paths[0], true).unwrap();
        assert_eq!(d.records.len(), expect.len());
        let (mut buffered, _) = open(&paths[1], false).unwrap();
        for n in [3, 1, 1] {
            append(&mut direct, &mut buffered, run, n, &mut expect);
        }
        check(&direct, &expect);
        direct.mark_empty().unwrap();
        buffered.mark_empty().unwrap();
        check(&direct, &[]);
    }

    #[test]
    fn debug_never_prints_a_channel_key() {
        let e = JournalEntry::Channel {
            id: ChannelId([1; 32]),
            key: [0xee; 32],
        };
        let text = format!("{e:?}");
        assert!(!text.contains("238") && !text.contains("ee"), "{text}");
    }

    #[test]
    fn stale_records_of_an_earlier_run_or_sequence_are_not_read() {
        let key = SecretKey::from_bytes([4; 32]);
        let mut bytes = encode_record(&key, 1, 5, &[entry(1)]).unwrap();
        bytes.extend(encode_record(&key, 2, 6, &[entry(2)]).unwrap());
        assert_eq!(decode_records(&key, &bytes).records.len(), 1);
        let mut bytes = encode_record(&key, 1, 5, &[entry(1)]).unwrap();
        bytes.extend(encode_record(&key, 1, 7, &[entry(2)]).unwrap());
        assert_eq!(decode_records(&key, &bytes).records.len(), 1);
    }

    #[test]
    fn a_new_run_overwrites_in_place_and_old_bytes_after_it_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes([4; 32]);
        let path = dir.path().join("j");
        let (mut j, d) = Journal::open(&path, &key).unwrap();
        assert!(d.records.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATED_BYTES);
        let run = j.run();
        for seq in 1..=3 {
            j.append_durable(&encode_record(&key, run, seq, &[entry(seq as u8)]).unwrap())
                .unwrap();
        }
        drop(j);
        let (mut j, d) = Journal::open(&path, &key).unwrap();
        assert_eq!(d.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let run = Journal::new_run().unwrap();
        j.clear(run);
        j.append_durable(&encode_record(&key, run, 4, &[entry(4)]).unwrap())
            .unwrap();
        drop(j);
        let (_, d) = Journal::open(&path, &key).unwrap();
        assert_eq!(d.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
        assert!(
            d.stopped.is_none(),
            "the stale record of the first run ends the readable part quietly"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATED_BYTES);
    }
}
