//! Backups (`hearth backup`, `hearth restore`): one sealed file holding a
//! consistent copy of an open store, and the restore that continues from it
//! as a new device of the same user.
//!
//! A backup is a compaction's copy written out instead of swapped in
//! ([`crate::compact`]): in the background, the feed log (each entry as sled
//! holds it) and every row of sled, then
//! every write sled took meanwhile; then a pause of milliseconds in the store
//! task (a checkpoint, the last writes, the log's tail), after which the
//! file holds the store as it was at that pause, and nothing more is added
//! but its end. The file is written beside its name (`FILE.<id>.tmp`),
//! made durable, then renamed: a backup that was reported done is whole.
//! A text deleted before the backup began is not in it; one deleted while
//! it was written may be (its entry was copied before the delete), and
//! leaves the restored store at its first compaction, which a restore
//! makes due at once.
//!
//! A restore writes the log and sled back as they were (no rebuild: that
//! would replay every entry), and the store continues as a **new device** of
//! the user ([`hearth_core::Identity::restored`]): new device keys and id,
//! its own network key (a new peer id), the same user and name. The device
//! backed up may have written on after the backup; its feeds are another
//! device's to the restored store, so what it wrote arrives by sync like any
//! device's, and no feed sequence number is ever used twice. The backed-up
//! device's identity records are left out of the restored log (the new
//! identity takes the first one's place), so the log names one device.
//!
//! File format (docs/format.md, "Backup file"):
//!
//! ```text
//! file   = head | chunk*
//! head   = magic "HEARTHBK" | version u8 = 1 | file id [16] | header len u32 LE | store header
//! chunk  = len u32 LE (bit 31: the last chunk) | sealed
//! sealed = seal(derive(master, Backup), aad = "hearth.backup.v1" | file id | index u64 BE | last u8,
//!               postcard(Item)*)
//! ```
//!
//! The store header (the master key wrapped under the passphrase) is in the
//! clear, as in a store: the passphrase of the moment of the backup opens
//! it. Each chunk is bound to the file, its place and whether it is the
//! last, so chunks cannot be dropped, reordered, moved between backups or
//! cut off at the end. The items are, in order: the identity (the sealed
//! row, as sled held it), the log's records with a mark after each batch,
//! sled's rows, the writes taken meanwhile (rows and removals), the log's
//! tail, and the [`BackupSummary`], the last item of the last chunk.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hearth_core::{
    DeviceId, Envelope, ForkProof, HEADER_MAX_LEN, Identity, Passphrase, SecretKey, StoreHeader, UserId,
};
use serde::{Deserialize, Serialize};

use crate::compact::{CompactProgress, CopySink};
use crate::durable::{SledFiles, create_private_dir, sync_dir};
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::{self, Log, kind};

/// Magic bytes that open a backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"HEARTHBK";
/// The backup format this build writes and reads.
pub const BACKUP_VERSION: u8 = 1;
/// Plaintext bytes gathered before a chunk is sealed.
const CHUNK_PLAIN: usize = 1 << 20;
/// Largest sealed chunk read back: a chunk is sealed once it passes
/// 1 MiB of plaintext, and no item comes near the rest (a log record is at most
/// 1 MiB, a row less).
pub const MAX_BACKUP_CHUNK: usize = 4 << 20;
/// Bit 31 of a chunk's length word: the last chunk.
const LAST_CHUNK: u32 = 1 << 31;
/// Marks a directory a restore is writing (removed once its header is in):
/// a restore runs again over what one cut short left, and into no other
/// directory that is not empty.
const RESTORING_FILE: &str = "restoring";

/// One item of a backup's stream.
#[derive(Serialize, Deserialize)]
enum Item {
    /// The identity row as sled held it when the copy started (sealed).
    Identity(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A feed-log record: kind, body.
    Record(u8, #[serde(with = "serde_bytes")] Vec<u8>),
    /// The records since the last mark form one batch of the log (the last
    /// of them a commit record).
    BatchEnd,
    /// A row of sled: key, value.
    Row(
        #[serde(with = "serde_bytes")] Vec<u8>,
        #[serde(with = "serde_bytes")] Vec<u8>,
    ),
    /// A row removed by a write taken while the copy ran.
    Removed(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The end: what the file holds.
    End(BackupSummary),
}

/// What a backup file holds, as its last item says (and its reader checks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The store format of the store backed up.
    pub store_format: u8,
    /// The user.
    pub user: UserId,
    /// The device backed up (a restore continues as a new one).
    pub device: DeviceId,
    /// When the backup's pause was (unix ms): the file holds the store as it
    /// was then.
    pub taken_ms: u64,
    /// Channels the store had.
    pub channels: u32,
    /// Feed-log records and batches in the file.
    pub log_records: u64,
    /// Log batches.
    pub log_batches: u64,
    /// Rows of sled in the file, the writes taken meanwhile included.
    pub rows: u64,
}

/// What [`crate::Store::backup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Feed-log records written.
    pub log_records: u64,
    /// Rows of sled copied.
    pub rows_copied: u64,
    /// Writes the store took while the copy ran, written after the rows.
    pub writes_applied: u64,
    /// How long reads and writes waited (the pause).
    pub paused: Duration,
    /// How long it took, from the start to the file made durable.
    pub took: Duration,
}

/// What [`check_backup`] found: a backup that reads whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackupInfo {
    /// What the file says it holds (its counts checked).
    pub summary: BackupSummary,
    /// The identity's user name.
    pub name: String,
    /// Chunks read.
    pub chunks: u64,
    /// Bytes read (the whole file).
    pub bytes: u64,
}

/// What [`crate::Store::restore`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// What the backup held.
    pub info: BackupInfo,
    /// The device the restored store writes as (new; the backed-up one is
    /// `info.summary.device`).
    pub device: DeviceId,
    /// How long it took (unlocking the master key apart).
    pub took: Duration,
}

/// The first 8 bytes of `id` in hex (a temporary file's name).
fn hex8(id: &[u8; 16]) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn chunk_aad(file_id: &[u8; 16], index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + 16 + 8 + 1);
    a.extend_from_slice(b"hearth.backup.v1");
    a.extend_from_slice(file_id);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(last as u8);
    a
}

fn corrupted(detail: impl std::fmt::Display) -> Error {
    Error::corrupted("backup file", detail.to_string())
}

// ----- writing -----

/// A backup file being written: the sink of a backup's copy.
pub(crate) struct BackupWriter {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    key: SecretKey,
    file_id: [u8; 16],
    index: u64,
    plain: Vec<u8>,
    bytes: u64,
    summary: BackupSummary,
    finished: bool,
}

impl BackupWriter {
    /// Start the file `path` (written as `path.tmp` until done): its head,
    /// then `identity_row` (the sealed identity row).
    pub(crate) fn create(
        path: &Path,
        header: &[u8],
        master: &SecretKey,
        identity: &Identity,
        identity_row: Vec<u8>,
    ) -> Result<BackupWriter> {
        let mut file_id = [0u8; 16];
        hearth_core::random_bytes(&mut file_id)?;
        // A name of its own (two backups to one path never share it), made
        // new: never an old file's mode, never through a link.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", hex8(&file_id)));
        let tmp = PathBuf::from(tmp);
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?
        };
        let mut head = Vec::with_capacity(8 + 1 + 16 + 4 + header.len());
        head.extend_from_slice(BACKUP_MAGIC);
        head.push(BACKUP_VERSION);
        head.extend_from_slice(&file_id);
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(header);
        let mut w = BackupWriter {
            file,
            tmp,
            path: path.to_path_buf(),
            key: hearth_core::derive(master, hearth_core::Purpose::Backup),
            file_id,
            index: 0,
            plain: Vec::with_capacity(CHUNK_PLAIN + (64 << 10)),
            bytes: 0,
            summary: BackupSummary {
                store_format: STORE_FORMAT,
                user: identity.user(),
                device: identity.device(),
                taken_ms: 0,
                channels: 0,
                log_records: 0,
                log_batches: 0,
                rows: 0,
            },
            finished: false,
        };
        w.write(&head)?;
        w.push(&Item::Identity(identity_row))?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn push(&mut self, item: &Item) -> Result<()> {
        postcard::to_io(item, &mut self.plain).map_err(|e| corrupted(format!("an item does not encode: {e}")))?;
        if self.plain.len() >= CHUNK_PLAIN {
            self.seal_chunk(false)?;
        }
        Ok(())
    }

    fn seal_chunk(&mut self, last: bool) -> Result<()> {
        let sealed = hearth_core::seal(&self.key, &chunk_aad(&self.file_id, self.index, last), &self.plain)?;
        self.plain.clear();
        let len = sealed.len() as u32 | if last { LAST_CHUNK } else { 0 };
        self.write(&len.to_le_bytes())?;
        self.write(&sealed)?;
        self.index += 1;
        Ok(())
    }

    /// The end: the summary (`taken_ms`: when the pause was), the last
    /// chunk, the file made durable and renamed to its name. Returns the
    /// file's size.
    pub(crate) fn finish(mut self, channels: u32, taken_ms: u64) -> Result<u64> {
        self.summary.channels = channels;
        self.summary.taken_ms = taken_ms;
        let end = Item::End(self.summary.clone());
        postcard::to_io(&end, &mut self.plain).map_err(|e| corrupted(format!("the end does not encode: {e}")))?;
        self.seal_chunk(true)?;
        self.file.sync_all()?;
        fs::rename(&self.tmp, &self.path)?;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        self.finished = true;
        Ok(self.bytes)
    }

    /// Where the file is written until it is done.
    pub(crate) fn tmp_path(&self) -> &Path {
        &self.tmp
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl CopySink for BackupWriter {
    fn log_batch(&mut self, records: Vec<(u8, Vec<u8>)>) -> Result<()> {
        self.summary.log_records += records.len() as u64;
        self.summary.log_batches += 1;
        for (k, body) in records {
            self.push(&Item::Record(k, body))?;
        }
        self.push(&Item::BatchEnd)
    }

    fn log_synced(&mut self) -> Result<()> {
        Ok(())
    }

    fn rows(&mut self, rows: Vec<(sled::IVec, Option<sled::IVec>)>) -> Result<()> {
        self.summary.rows += rows.len() as u64;
        for (k, v) in rows {
            match v {
                Some(v) => self.push(&Item::Row(k.to_vec(), v.to_vec()))?,
                None => self.push(&Item::Removed(k.to_vec()))?,
            }
        }
        Ok(())
    }

    fn rows_copied(&mut self) -> Result<()> {
        Ok(())
    }
}

impl crate::engine::Engine {
    /// Start a backup into `path` (the caller took a checkpoint): the file
    /// begun with the store's header and identity, then the copy in the
    /// background, as a compaction's ([`crate::compact`]).
    pub(crate) fn start_backup(
        &mut self,
        path: &Path,
        progress: Arc<CompactProgress>,
    ) -> Result<crate::compact::Running<BackupWriter>> {
        if path.is_dir() {
            return Err(Error::invalid(
                "backup file",
                format!("{} is a directory", path.display()),
            ));
        }
        // Never a file of the store itself (a backup renamed over its header).
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let store = fs::canonicalize(&self.dir)?;
        if fs::canonicalize(parent).is_ok_and(|p| p.starts_with(&store)) {
            return Err(Error::invalid(
                "backup file",
                format!("{} is inside the store directory", path.display()),
            ));
        }
        let header = crate::open::read_header(&self.dir)?.encode();
        let row = self
            .tree
            .get(META_IDENTITY)?
            .ok_or_else(|| Error::corrupted("identity", "missing"))?;
        let writer = BackupWriter::create(path, &header, &self.master, &self.identity, row.to_vec())?;
        let staging = writer.tmp_path().to_path_buf();
        self.start_copy(writer, staging, progress)
    }
}

// ----- reading -----

/// The clear head of a backup file: its id and the store header.
struct Head {
    file_id: [u8; 16],
    header: StoreHeader,
    /// The header's bytes, as a restored store keeps them.
    header_bytes: Vec<u8>,
    len: u64,
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupted(format!("the file ends inside {what}")),
        _ => Error::Io(e),
    })
}

fn read_head(r: &mut impl Read) -> Result<Head> {
    let mut fixed = [0u8; 8 + 1 + 16 + 4];
    read_exact_or(r, &mut fixed, "its head")?;
    if &fixed[..8] != BACKUP_MAGIC {
        return Err(Error::invalid("backup file", "not a Hearth backup (no HEARTHBK magic)"));
    }
    if fixed[8] != BACKUP_VERSION {
        return Err(Error::UnsupportedFormat {
            what: "backup file".into(),
            found: fixed[8],
            expected: BACKUP_VERSION,
        });
    }
    let file_id: [u8; 16] = fixed[9..25].try_into().expect("16 bytes");
    let len = u32::from_le_bytes(fixed[25..29].try_into().expect("4 bytes")) as usize;
    if len > HEADER_MAX_LEN {
        return Err(corrupted(format!("a store header of {len} bytes")));
    }
    let mut header_bytes = vec![0u8; len];
    read_exact_or(r, &mut header_bytes, "its store header")?;
    let header = StoreHeader::decode(&header_bytes)?;
    Ok(Head {
        file_id,
        header,
        header_bytes,
        len: (fixed.len() + len) as u64,
    })
}

/// The chunks of a backup, opened in order, as items.
struct Reader<R> {
    r: R,
    key: SecretKey,
    file_id: [u8; 16],
    index: u64,
    plain: Vec<u8>,
    pos: usize,
    last: bool,
    ended: bool,
    bytes: u64,
}

impl<R: Read> Reader<R> {
    fn new(r: R, master: &SecretKey, head: &Head) -> Self {
        Reader {
            r,
            key: hearth_core::derive(master, hearth_core::Purpose::Backup),
            file_id: head.file_id,
            index: 0,
            plain: Vec::new(),
            pos: 0,
            last: false,
            ended: false,
            bytes: head.len,
        }
    }

    /// The next item; `None` after the end, which must be the last item of
    /// the last chunk, with nothing after it in the file.
    fn next(&mut self) -> Result<Option<Item>> {
        if self.ended {
            return Ok(None);
        }
        while self.pos == self.plain.len() {
            if self.last {
                return Err(corrupted("its last chunk has no end"));
            }
            self.read_chunk()?;
        }
        let (item, rest) = postcard::take_from_bytes::<Item>(&self.plain[self.pos..])
            .map_err(|e| corrupted(format!("an item: {e}")))?;
        self.pos = self.plain.len() - rest.len();
        if matches!(item, Item::End(_)) {
            if !self.last || !rest.is_empty() {
                return Err(corrupted("its end is not the last item of the last chunk"));
            }
            let mut probe = [0u8; 1];
            if self.r.read(&mut probe)? != 0 {
                return Err(corrupted("bytes follow its last chunk"));
            }
            self.ended = true;
        }
        Ok(Some(item))
    }

    fn read_chunk(&mut self) -> Result<()> {
        let mut word = [0u8; 4];
        read_exact_or(&mut self.r, &mut word, "a chunk's length (cut short?)")?;
        let word = u32::from_le_bytes(word);
        let last = word & LAST_CHUNK != 0;
        let len = (word & !LAST_CHUNK) as usize;
        if len > MAX_BACKUP_CHUNK {
            return Err(corrupted(format!("a chunk of {len} bytes")));
        }
        let mut sealed = vec![0u8; len];
        read_exact_or(&mut self.r, &mut sealed, "a chunk (cut short?)")?;
        self.plain = hearth_core::open(
            &self.key,
            &chunk_aad(&self.file_id, self.index, last),
            &sealed,
            "backup chunk",
        )
        .map_err(|_| {
            corrupted(format!(
                "chunk {} does not open: damaged, out of place, or of another backup",
                self.index
            ))
        })?;
        self.bytes += 4 + len as u64;
        self.pos = 0;
        self.index += 1;
        self.last = last;
        Ok(())
    }
}

/// What a stream of items must be, checked as it is read (by
/// [`check_backup`] and by a restore, before anything it wrote counts).
struct Checker {
    records_key: SecretKey,
    identity: Option<Identity>,
    batch_open: bool,
    last_kind: Option<u8>,
    seen: BackupSummary,
    rows_started: bool,
}

impl Checker {
    fn new(master: &SecretKey) -> Self {
        Checker {
            records_key: hearth_core::derive(master, hearth_core::Purpose::LocalRecords),
            identity: None,
            batch_open: false,
            last_kind: None,
            seen: BackupSummary {
                store_format: 0,
                user: UserId([0; 32]),
                device: DeviceId([0; 16]),
                taken_ms: 0,
                channels: 0,
                log_records: 0,
                log_batches: 0,
                rows: 0,
            },
            rows_started: false,
        }
    }

    /// Check one item; an error says what is wrong with the file.
    fn item(&mut self, item: &Item) -> Result<()> {
        match item {
            Item::Identity(sealed) => {
                if self.identity.is_some() {
                    return Err(corrupted("two identities"));
                }
                let plain = zeroize::Zeroizing::new(open_record(&self.records_key, META_IDENTITY, sealed)?);
                self.identity = Some(Identity::decode(&plain)?);
            }
            _ if self.identity.is_none() => return Err(corrupted("it does not start with the identity")),
            Item::Record(k, body) => {
                self.check_record(*k, body)?;
                self.batch_open = true;
                self.last_kind = Some(*k);
                self.seen.log_records += 1;
            }
            Item::BatchEnd => {
                if self.last_kind != Some(kind::COMMIT) {
                    return Err(corrupted("a log batch not closed by a commit record"));
                }
                self.batch_open = false;
                self.last_kind = None;
                self.seen.log_batches += 1;
            }
            Item::Row(k, _) | Item::Removed(k) => {
                if k.is_empty() || (table_name(k[0]) == "unknown" && k[0] != T_META) {
                    return Err(corrupted("a row of no table"));
                }
                if self.batch_open {
                    return Err(corrupted("a row inside a log batch"));
                }
                self.rows_started = true;
                self.seen.rows += 1;
            }
            Item::End(s) => {
                let id = self.identity.as_ref().expect("checked above");
                if self.batch_open {
                    return Err(corrupted("it ends inside a log batch"));
                }
                if (s.log_records, s.log_batches, s.rows)
                    != (self.seen.log_records, self.seen.log_batches, self.seen.rows)
                {
                    return Err(corrupted(format!(
                        "it says {} log records in {} batches and {} rows, and holds {}, {} and {}",
                        s.log_records,
                        s.log_batches,
                        s.rows,
                        self.seen.log_records,
                        self.seen.log_batches,
                        self.seen.rows
                    )));
                }
                if (s.user, s.device) != (id.user(), id.device()) {
                    return Err(corrupted("its end names another device than its identity"));
                }
                if s.store_format > STORE_FORMAT {
                    return Err(Error::UnsupportedFormat {
                        what: "backup of a store".into(),
                        found: s.store_format,
                        expected: STORE_FORMAT,
                    });
                }
                if self.seen.log_batches == 0 || !self.rows_started {
                    return Err(corrupted("it holds no log or no rows"));
                }
            }
        }
        Ok(())
    }

    fn check_record(&self, k: u8, body: &[u8]) -> Result<()> {
        if body.len() > log::MAX_LOG_RECORD {
            return Err(corrupted(format!("a log record of {} bytes", body.len())));
        }
        match k {
            kind::IDENTITY => {
                let plain = zeroize::Zeroizing::new(crate::recover::open(&self.records_key, k, body)?);
                let id = Identity::decode(&plain)?;
                let this = self.identity.as_ref().expect("checked before");
                if id.user() != this.user() {
                    return Err(corrupted("an identity record of another user"));
                }
            }
            kind::CHANNEL | kind::COMMIT | kind::TOLD | kind::EXPIRED => {
                crate::recover::open(&self.records_key, k, body)?;
            }
            kind::ENTRY => {
                Envelope::decode(body)?;
            }
            kind::FORK => {
                ForkProof::decode(body)?;
            }
            other => {
                return Err(corrupted(format!(
                    "a log record of kind {other}, which stores do not write"
                )));
            }
        }
        Ok(())
    }

    fn info(self, reader_chunks: u64, bytes: u64, summary: BackupSummary) -> BackupInfo {
        BackupInfo {
            name: self.identity.map(|i| i.name().to_string()).unwrap_or_default(),
            summary,
            chunks: reader_chunks,
            bytes,
        }
    }
}

/// Read a whole backup with its master key known: every chunk opened in
/// order, every item checked (the identity opens, each log record is of a
/// kind a store writes and decodes or opens, each batch closes with a
/// commit, each row is of a table), the counts matched with its end. What a
/// fuzz target runs: it never panics.
pub fn check_backup_bytes(master: &SecretKey, bytes: &[u8]) -> Result<BackupInfo> {
    let mut r = bytes;
    let head = read_head(&mut r)?;
    check_items(Reader::new(r, master, &head), master, |_| Ok(()))
}

/// Read and check every item (see [`check_backup_bytes`]), handing each to
/// `each` once it passed.
fn check_items<R: Read>(
    mut reader: Reader<R>,
    master: &SecretKey,
    mut each: impl FnMut(Item) -> Result<()>,
) -> Result<BackupInfo> {
    let mut checker = Checker::new(master);
    while let Some(item) = reader.next()? {
        checker.item(&item)?;
        if let Item::End(summary) = item {
            return Ok(checker.info(reader.index, reader.bytes, summary));
        }
        each(item)?;
    }
    Err(corrupted("it has no end"))
}

/// Check the backup file at `path` (`hearth backup --check`): the passphrase
/// of the moment of the backup opens its header, and the whole file reads
/// (see [`check_backup_bytes`]). Nothing is written.
pub fn check_backup(path: &Path, pass: &Passphrase) -> Result<BackupInfo> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let head = read_head(&mut r)?;
    let master = head.header.unwrap(pass)?;
    check_items(Reader::new(r, &master, &head), &master, |_| Ok(()))
}

/// Restore the backup at `file` into `dir` (which must not hold a store)
/// under the passphrase of the moment of the backup: the log and sled
/// written back, the device made a new one ([`Identity::restored`]), the
/// header written last (its presence is what makes `dir` a store, so a
/// restore cut short leaves no store, and the next one starts afresh).
/// The file is checked as it is read; a damaged one leaves no store.
pub(crate) fn restore(file: &Path, dir: &Path, pass: &Passphrase, progress: &CompactProgress) -> Result<RestoreReport> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(file)?);
    let head = read_head(&mut r)?;
    let master = head.header.unwrap(pass)?;
    let started = Instant::now();
    let existed = dir.exists();
    create_private_dir(dir)?;
    if !existed && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    if dir.join(HEADER_FILE).exists() {
        return Err(Error::AlreadyExists {
            path: dir.to_path_buf(),
        });
    }
    let _lock = crate::open::lock(dir)?;
    // Only into a directory that holds nothing, or what a restore cut short
    // left (its mark): never over anyone's files.
    // The mark's own temporary file counts as the mark's: a cut between
    // its creation and its rename leaves it alone.
    let marker = dir.join(RESTORING_FILE);
    let marker_tmp = format!("{RESTORING_FILE}.tmp");
    let foreign = fs::read_dir(dir)?.flatten().any(|e| {
        let name = e.file_name();
        name != LOCK_FILE && name != RESTORING_FILE && name != marker_tmp.as_str()
    });
    if !foreign && !marker.exists() {
        let _ = fs::remove_file(dir.join(&marker_tmp));
    }
    if foreign && !marker.exists() {
        return Err(Error::invalid(
            "restore",
            format!("{} is not empty: restore into a new or empty directory", dir.display()),
        ));
    }
    crate::durable::write_atomic(&marker, b"")?;
    crate::open::remove_leftovers(dir)?;
    let restored = restore_into(r, dir, &head, &master, progress);
    match restored {
        Ok(mut report) => {
            fs::remove_file(&marker)?;
            sync_dir(dir)?;
            report.took = started.elapsed();
            tracing::info!(
                dir = %dir.display(),
                bytes = report.info.bytes,
                took_ms = report.took.as_secs_f64() * 1e3,
                "store restored from a backup"
            );
            Ok(report)
        }
        Err(e) => {
            // A file that does not read leaves nothing behind.
            let _ = crate::open::remove_leftovers(dir);
            let _ = fs::remove_file(&marker);
            tracing::warn!(dir = %dir.display(), error = %e, "restore failed");
            Err(e)
        }
    }
}

/// The body of [`restore`], into `dir` (locked, and empty but for its mark).
fn restore_into(
    r: impl Read,
    dir: &Path,
    head: &Head,
    master: &SecretKey,
    progress: &CompactProgress,
) -> Result<RestoreReport> {
    let records_key = hearth_core::derive(master, hearth_core::Purpose::LocalRecords);
    let mut log = Log::create(&dir.join(log::LOG_DIR))?;
    let db = crate::open::open_sled(dir)?;
    let tree = db.open_tree(TREE)?;
    let mut restored: Option<Identity> = None;
    let mut identity_written = false;
    let mut buf = Vec::new();
    let mut rows = sled::Batch::default();
    let mut staged = 0usize;
    let reader = Reader::new(r, master, head);
    let info = check_items(reader, master, |item| {
        match item {
            Item::Identity(sealed) => {
                let plain = zeroize::Zeroizing::new(open_record(&records_key, META_IDENTITY, &sealed)?);
                restored = Some(Identity::decode(&plain)?.restored()?);
            }
            // The backed-up device's identity records: the first one's
            // place takes the new device's, the others go.
            Item::Record(kind::IDENTITY, _) => {
                if !identity_written {
                    let id = restored.as_ref().expect("the checker saw the identity first");
                    let plain = zeroize::Zeroizing::new(id.encode());
                    let sealed = crate::recover::seal(&records_key, kind::IDENTITY, &plain)?;
                    log::encode_record(&mut buf, kind::IDENTITY, &sealed);
                    identity_written = true;
                }
            }
            Item::Record(k, body) => log::encode_record(&mut buf, k, &body),
            Item::BatchEnd => {
                log.append(&buf)?;
                buf.clear();
            }
            Item::Row(k, v) => {
                rows.insert(k, v);
                staged += 1;
            }
            Item::Removed(k) => {
                rows.remove(k);
                staged += 1;
            }
            Item::End(_) => {}
        }
        if staged >= crate::compact::COPY_BATCH {
            tree.apply_batch(std::mem::take(&mut rows))?;
            progress.rows_copied.fetch_add(staged as u64, Ordering::Relaxed);
            staged = 0;
        }
        Ok(())
    })?;
    let identity = restored.ok_or_else(|| corrupted("no identity"))?;
    if !identity_written {
        return Err(corrupted("its log holds no identity record"));
    }
    log.sync()?;
    let end = log.end();
    drop(log);
    rows.insert(META_LOG, &end.encode()[..]);
    rows.insert(META_LOG_SYNCED, &end.encode()[..]);
    let plain = zeroize::Zeroizing::new(identity.encode());
    rows.insert(META_IDENTITY, seal_record(&records_key, META_IDENTITY, &plain)?);
    // A text deleted while the backup was written may be in its log's
    // copy: the restored store compacts itself at once (due since ever).
    let due = crate::compact::CompactDue {
        since_ms: 0,
        bytes: u64::MAX / 2,
    };
    let plain = postcard::to_stdvec(&due).expect("compaction due encodes");
    rows.insert(META_COMPACT_DUE, seal_record(&records_key, META_COMPACT_DUE, &plain)?);
    tree.apply_batch(rows)?;
    progress.rows_copied.fetch_add(staged as u64, Ordering::Relaxed);
    db.flush()?;
    drop(tree);
    drop(db);
    SledFiles::new(&dir.join(DB_DIR)).sync()?;
    sync_dir(&dir.join(DB_DIR))?;
    crate::durable::make_private(dir)?;
    sync_dir(dir)?;
    // Last: the header makes the directory a store.
    crate::durable::write_atomic(&dir.join(HEADER_FILE), &head.header_bytes)?;
    Ok(RestoreReport {
        info,
        device: identity.device(),
        took: Duration::ZERO,
    })
}
