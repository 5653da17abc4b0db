//! Entries sent before they are durable (issue 10, item 4).
//!
//! A group's own entries normally leave the device once the feed log's sync
//! that holds them ends: a device that sent an entry and then lost it in a
//! power cut would write a different entry at the same feed position, and
//! its peers would hold a fork. A sync node can instead send them as soon
//! as they are written to the log ([`crate::Store::send_early`]), a sync
//! earlier, on these terms:
//!
//! - **Before the first early entry** of a run, everything acknowledged so
//!   far is made durable in the log and a flag file (`early`, holding the
//!   run's id) is written durably; a clean close removes it after its
//!   checkpoint. From then on every write that makes an entry is
//!   acknowledged by the log's sync of its group (groups close at once), so
//!   nothing acknowledged lies past the durable log.
//! - **Before each early entry** leaves, the run's mark in a volatile file
//!   (`hearth-early-<run>` in `/dev/shm` or `$XDG_RUNTIME_DIR`, a tmpfs:
//!   gone with the machine's power) records how far each channel's own feed
//!   was sent. A process killed (`kill -9`) loses nothing written to the log
//!   (it is in the page cache), and its mark says so.
//! - **An open that finds the flag** (an unclean shutdown of such a run)
//!   compares the mark with the feeds the log brought back. When the mark
//!   is there and every feed reaches it, nothing sent was lost: the open
//!   goes on as after any crash. Otherwise (the machine went down, so the
//!   mark is gone; or a feed falls short of it) the device is **reborn**
//!   ([`hearth_core::Identity::reborn`]): a new device of the same user,
//!   which never writes to the old device's feeds again, so no entry of
//!   theirs can fork. Journal records past the durable log are dropped
//!   (none was acknowledged), and the entries that were sent and lost come
//!   back by sync, as the old device's, from the peers that got them. A
//!   failed log sync removes the mark at once (the thread that sees it,
//!   before anyone is told), since what it should have made durable may be
//!   lost though the page cache still shows it.
//! - **A write that changes nothing** (its group writes nothing to the
//!   log) is acknowledged by the log's sync up to its end too, never by
//!   the journal alone: a journal sync settles every record before it,
//!   whose entries may not be durable yet.
//!
//! The mark is a file of 64-byte slots, one per channel sent early in the
//! run: `wire [32] | seq u64 LE | check [8] | zero [16]`, the check being
//! the first 8 bytes of BLAKE3(`"hearth early mark"` ‖ run ‖ wire ‖ seq).
//! A slot is rewritten in place (one `pwrite` inside a page); a slot that
//! does not check counts as a loss. The flag is postcard `{ version u8
//! (1), run [16], device [16] }`. Neither holds anything secret (a
//! channel's wire id is on the wire); both are owner-only.
//!
//! The flag also names the device that sends early: an open that made it
//! a new device and was cut short before the flag went leaves a flag of
//! the old device, and the next open drops the run's journal records
//! again, but makes nothing new.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hearth_core::{DeviceId, WireId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The flag file in the store directory: a run that sends entries early
/// has not closed cleanly.
pub const EARLY_FILE: &str = "early";
const FLAG_VERSION: u8 = 1;
const SLOT: usize = 64;
const MARK_PREFIX: &str = "hearth-early-";
/// `statfs` type of a tmpfs (Linux).
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Most channels a mark holds (64 KiB); past it, a channel sent early
/// drops the mark (an unclean shutdown then makes the device a new one).
const MAX_SLOTS: u64 = 1024;

#[derive(Serialize, Deserialize)]
struct Flag {
    version: u8,
    run: [u8; 16],
    /// The device that sends early in the run.
    device: [u8; 16],
}

/// What a flag file says: the run, and the device that sent early in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyFlag {
    /// The run's id (names its mark).
    pub run: [u8; 16],
    /// The device that sent entries early in the run.
    pub device: DeviceId,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check(run: &[u8; 16], wire: &[u8; 32], seq: u64) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(b"hearth early mark");
    h.update(run);
    h.update(wire);
    h.update(&seq.to_le_bytes());
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.finalize().as_bytes()[..8]);
    c
}

/// The flag file's bytes.
pub fn encode_early_flag(flag: &EarlyFlag) -> Vec<u8> {
    postcard::to_stdvec(&Flag {
        version: FLAG_VERSION,
        run: flag.run,
        device: flag.device.0,
    })
    .expect("the flag encodes")
}

/// What a flag file says (`None`: not a flag this build reads).
pub fn decode_early_flag(bytes: &[u8]) -> Option<EarlyFlag> {
    postcard::from_bytes::<Flag>(bytes)
        .ok()
        .filter(|f| f.version == FLAG_VERSION)
        .map(|f| EarlyFlag {
            run: f.run,
            device: DeviceId(f.device),
        })
}

/// One slot of run `run`'s mark: `wire`'s own feed sent up to `seq`.
pub fn encode_early_slot(run: &[u8; 16], wire: &WireId, seq: u64) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    s[..32].copy_from_slice(wire.as_bytes());
    s[32..40].copy_from_slice(&seq.to_le_bytes());
    s[40..48].copy_from_slice(&check(run, wire.as_bytes(), seq));
    s
}

/// Whether `dir` is on a tmpfs (its content is gone when the machine
/// goes down).
#[allow(unsafe_code)]
fn on_tmpfs(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: an all-zero `statfs` is a valid value of the plain C struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable
        // struct, both outliving the call.
        let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        #[allow(clippy::unnecessary_cast)]
        let kind = st.f_type as i64;
        r == 0 && kind == TMPFS_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// Where marks go: `/dev/shm`, else `$XDG_RUNTIME_DIR`, each only if it is
/// a tmpfs. `None`: nowhere, and every unclean shutdown of a run that sent
/// early makes the device a new one.
pub(crate) fn mark_dir() -> Option<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    [Some(PathBuf::from("/dev/shm")), runtime]
        .into_iter()
        .flatten()
        .find(|d| on_tmpfs(d))
}

fn mark_path(dir: &Path, run: &[u8; 16]) -> PathBuf {
    dir.join(format!("{MARK_PREFIX}{}", hex(run)))
}

/// Where the mark of the early run whose flag the store at `store` holds
/// is (`None`: no flag, or nowhere to keep marks). A test removes it to
/// play a machine that went down.
pub fn early_mark_path(store: &Path) -> Option<PathBuf> {
    let flag = decode_early_flag(&fs::read(store.join(EARLY_FILE)).ok()?)?;
    Some(mark_path(&mark_dir()?, &flag.run))
}

/// A run that sends entries early: its flag is durable, its mark kept.
pub(crate) struct EarlyRun {
    run: [u8; 16],
    store: PathBuf,
    mark: Option<Mark>,
}

struct Mark {
    file: File,
    path: PathBuf,
    slots: HashMap<WireId, u64>,
}

/// What the feed log calls as one of its syncs fails (on the thread that
/// sees it, before anyone is told): the mark of `path` removed, so that an
/// unclean end from then on makes the device a new one.
fn drop_on_failure(path: PathBuf) -> crate::log::FailHook {
    std::sync::Arc::new(move || {
        tracing::warn!("a sync of the feed log failed: the mark of entries sent early is removed");
        let _ = fs::remove_file(&path);
    })
}

impl std::fmt::Debug for EarlyRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyRun")
            .field("run", &hex(&self.run))
            .field("mark", &self.mark.as_ref().map(|m| m.path.display().to_string()))
            .finish()
    }
}

impl EarlyRun {
    /// Start a run of `device` in the store at `store`: the flag written
    /// durably, then its mark created in `marks` ([`mark_dir`]; `None`: no
    /// mark).
    pub(crate) fn start(store: &Path, device: DeviceId, marks: Option<PathBuf>) -> Result<EarlyRun> {
        let mut run = [0u8; 16];
        hearth_core::random_bytes(&mut run)?;
        crate::durable::write_atomic(&store.join(EARLY_FILE), &encode_early_flag(&EarlyFlag { run, device }))?;
        let mark = marks.and_then(|dir| {
            let path = mark_path(&dir, &run);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => Some(Mark {
                    file,
                    path,
                    slots: HashMap::new(),
                }),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "no mark for entries sent early: an unclean shutdown will make this a new device");
                    None
                }
            }
        });
        Ok(EarlyRun {
            run,
            store: store.to_path_buf(),
            mark,
        })
    }

    /// Before `wire`'s own feed is sent up to `seq`: the mark says so. A
    /// mark that cannot be written is dropped (the open then makes this a new
    /// device), so an entry may always leave once this returns.
    pub(crate) fn mark(&mut self, wire: &WireId, seq: u64) {
        let Some(m) = &mut self.mark else { return };
        let n = m.slots.len() as u64;
        let at = match m.slots.get(wire) {
            Some(at) => *at,
            None if n < MAX_SLOTS => {
                m.slots.insert(*wire, n);
                n
            }
            None => {
                self.drop_mark("more channels than a mark holds");
                return;
            }
        };
        let bytes = encode_early_slot(&self.run, wire, seq);
        if let Err(e) = m.file.write_all_at(&bytes, at * SLOT as u64) {
            self.drop_mark(&e.to_string());
        }
    }

    /// The mark can no longer say what was sent (it cannot be written, or
    /// holds no more channels): removed, so that an unclean shutdown makes
    /// the device a new one. (A failed log sync removes it through the
    /// log's hook, `drop_on_failure`.)
    pub(crate) fn drop_mark(&mut self, why: &str) {
        if let Some(m) = self.mark.take() {
            tracing::warn!(why, "mark of entries sent early dropped");
            let _ = fs::remove_file(&m.path);
        }
    }

    /// A clean close, after its checkpoint (everything sent is durable):
    /// the flag is removed durably, then the mark.
    pub(crate) fn end(mut self) -> Result<()> {
        remove_durably(&self.store, EARLY_FILE)?;
        if let Some(m) = self.mark.take() {
            let _ = fs::remove_file(&m.path);
        }
        Ok(())
    }
}

impl crate::engine::Engine {
    /// Start sending this device's entries early (`false`: it cannot be
    /// reborn, its certificate chain being as long as chains go, so its
    /// entries keep waiting until they are durable). Runs between groups:
    /// everything acknowledged so far is in the log, made durable here
    /// before the flag is written.
    pub(crate) fn start_early(&mut self) -> Result<bool> {
        if self.early.is_some() {
            return Ok(true);
        }
        if !self.identity.can_be_reborn() {
            tracing::warn!("this device's certificate chain is as long as chains go: its entries leave once durable");
            return Ok(false);
        }
        self.log.sync()?;
        // The flag not written: entries keep waiting until they are
        // durable, and nothing else changes.
        let run = match EarlyRun::start(&self.dir, self.identity.device(), mark_dir()) {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(error = %e, "the flag of entries sent early cannot be written: they leave once durable");
                return Ok(false);
            }
        };
        self.log
            .on_sync_failure(run.mark.as_ref().map(|m| drop_on_failure(m.path.clone())));
        self.early = Some(run);
        Ok(true)
    }
}

fn remove_durably(dir: &Path, name: &str) -> Result<()> {
    match fs::remove_file(dir.join(name)) {
        Ok(()) => Ok(crate::durable::sync_dir(dir)?),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io(e)),
    }
}

/// What a run that sent entries early and did not close cleanly left.
#[derive(Debug)]
pub(crate) struct Left {
    /// The flag (`None`: it does not read).
    flag: Option<EarlyFlag>,
    /// How far each channel's own feed was sent (`None`: no mark, or one
    /// that does not check).
    sent: Option<Vec<(WireId, u64)>>,
}

/// The flag of a run that did not close cleanly, if any, and its mark in
/// `marks` ([`mark_dir`]).
pub(crate) fn left(store: &Path, marks: Option<&Path>) -> Result<Option<Left>> {
    let bytes = match fs::read(store.join(EARLY_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io(e)),
    };
    let flag = decode_early_flag(&bytes);
    let sent = flag.and_then(|f| {
        let bytes = fs::read(mark_path(marks?, &f.run)).ok()?;
        decode_early_mark(&f.run, &bytes)
    });
    Ok(Some(Left { flag, sent }))
}

/// A mark's slots, each a channel and how far its own feed was sent;
/// `None` if any slot does not check (or the file is cut mid-slot).
pub fn decode_early_mark(run: &[u8; 16], bytes: &[u8]) -> Option<Vec<(WireId, u64)>> {
    if !bytes.len().is_multiple_of(SLOT) {
        return None;
    }
    bytes
        .chunks(SLOT)
        .map(|s| {
            let wire: [u8; 32] = s[..32].try_into().expect("32 bytes");
            let seq = u64::from_le_bytes(s[32..40].try_into().expect("8 bytes"));
            (s[40..48] == check(run, &wire, seq) && s[48..].iter().all(|b| *b == 0)).then_some((WireId(wire), seq))
        })
        .collect()
}

impl Left {
    /// Whether the device the run sent early from is not `device` any more:
    /// an open reborn it already, and was cut short before the flag went
    /// (its records past the log are the run's, and go as they went then).
    pub(crate) fn reborn_since(&self, device: &DeviceId) -> bool {
        self.flag.is_some_and(|f| f.device != *device)
    }

    /// Whether entries sent early may have been lost: no mark that checks,
    /// or a channel whose own feed (`head`: its seq, `None` for a channel
    /// the store does not hold) falls short of what was sent.
    pub(crate) fn may_have_lost(&self, head: impl Fn(&WireId) -> Option<u64>) -> bool {
        match &self.sent {
            None => true,
            Some(sent) => sent.iter().any(|(wire, seq)| head(wire).is_none_or(|h| h < *seq)),
        }
    }

    /// Once the open made its outcome durable: the flag removed, then the mark.
    pub(crate) fn clear(self, store: &Path, marks: Option<&Path>) -> Result<()> {
        remove_durably(store, EARLY_FILE)?;
        if let (Some(f), Some(dir)) = (self.flag, marks) {
            let _ = fs::remove_file(mark_path(dir, &f.run));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(b: u8) -> WireId {
        WireId([b; 32])
    }

    #[test]
    fn slots_check_and_a_damaged_or_foreign_one_does_not() {
        let run = [7u8; 16];
        let mut bytes = encode_early_slot(&run, &wire(1), 5).to_vec();
        bytes.extend_from_slice(&encode_early_slot(&run, &wire(2), 9));
        assert_eq!(decode_early_mark(&run, &bytes), Some(vec![(wire(1), 5), (wire(2), 9)]));
        assert_eq!(decode_early_mark(&run, &[]), Some(vec![]));
        // Another run's slot, a changed seq, a torn file: no mark.
        assert_eq!(decode_early_mark(&[8u8; 16], &bytes), None);
        let mut changed = bytes.clone();
        changed[32] ^= 1;
        assert_eq!(decode_early_mark(&run, &changed), None);
        assert_eq!(decode_early_mark(&run, &bytes[..SLOT + 3]), None);
        let mut padded = bytes.clone();
        padded[SLOT - 1] = 1;
        assert_eq!(decode_early_mark(&run, &padded), None);
    }

    #[test]
    fn a_loss_is_a_feed_short_of_its_mark_or_no_mark() {
        let sent = Left {
            flag: Some(EarlyFlag {
                run: [1; 16],
                device: DeviceId([2; 16]),
            }),
            sent: Some(vec![(wire(1), 5), (wire(2), 9)]),
        };
        assert!(!sent.may_have_lost(|w| Some(if *w == wire(1) { 5 } else { 10 })));
        assert!(sent.may_have_lost(|w| Some(if *w == wire(1) { 4 } else { 10 })));
        assert!(
            sent.may_have_lost(|w| (*w == wire(1)).then_some(5)),
            "a channel the store lost"
        );
        let none = Left { flag: None, sent: None };
        assert!(none.may_have_lost(|_| Some(u64::MAX)));
        // Reborn already (an open cut short before the flag went): only
        // when the flag names another device.
        assert!(sent.reborn_since(&DeviceId([3; 16])));
        assert!(!sent.reborn_since(&DeviceId([2; 16])));
        assert!(!none.reborn_since(&DeviceId([3; 16])));
    }

    #[test]
    fn a_run_marks_in_place_and_its_clean_end_leaves_nothing() {
        let (store, marks) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (dir, m) = (store.path(), Some(marks.path()));
        let mut run = EarlyRun::start(dir, DeviceId([6; 16]), m.map(Path::to_path_buf)).unwrap();
        run.mark(&wire(1), 1);
        run.mark(&wire(2), 3);
        run.mark(&wire(1), 2);
        let left = left(dir, m).unwrap().expect("the flag");
        assert_eq!(left.sent, Some(vec![(wire(1), 2), (wire(2), 3)]));
        assert!(!left.may_have_lost(|_| Some(3)));
        // A store whose log sync failed drops the mark: any unclean end is a loss.
        run.drop_mark("test");
        let after = super::left(dir, m).unwrap().unwrap();
        assert!(after.sent.is_none() && after.may_have_lost(|_| Some(u64::MAX)));
        run.end().unwrap();
        assert!(super::left(dir, m).unwrap().is_none());
        assert_eq!(fs::read_dir(marks.path()).unwrap().count(), 0);
        // An open that finds both clears both.
        let mut run = EarlyRun::start(dir, DeviceId([6; 16]), m.map(Path::to_path_buf)).unwrap();
        run.mark(&wire(4), 1);
        drop(run);
        assert_eq!(fs::read_dir(marks.path()).unwrap().count(), 1);
        super::left(dir, m).unwrap().unwrap().clear(dir, m).unwrap();
        assert!(super::left(dir, m).unwrap().is_none());
        assert_eq!(fs::read_dir(marks.path()).unwrap().count(), 0);
        // A flag without its mark (the machine went down): a loss.
        let run = EarlyRun::start(dir, DeviceId([6; 16]), None).unwrap();
        drop(run);
        assert!(super::left(dir, m).unwrap().unwrap().may_have_lost(|_| Some(u64::MAX)));
    }
}
