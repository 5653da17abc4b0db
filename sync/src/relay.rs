//! A relay's replica: the sealed feed entries of any channel peers push to it,
//! kept and handed to the others. It holds no channel key and cannot read a word.
//!
//! ```text
//! <dir>/LOCK   locked while a relay has the directory open
//! <dir>/log/   the feed log: every entry stored, fsynced before it is acknowledged
//! <dir>/db/    sled, one tree `hearth-relay.v1`, derived from the log (see `disk`):
//!   F | wire [32] | device [16] | seq u64 BE  -> envelope bytes
//!   H | wire [32] | device [16]               -> postcard(RelayHead {user, seq, hash, bytes})
//!   M format | M log | M logsynced            -> format 6; log positions
//!   (and K fork proofs, D device chains, G access grants, V revocation
//!   notices: see the table constants)
//! ```
//!
//! A relay checks what needs no key: the canonical encoding under the size cap,
//! the author's signature and the hash chain of every feed (no gap, no fork, the
//! previous hash, one user per device), with the same rules and reasons as a
//! member's ingest. It cannot check the body (AEAD) or the automerge change; the
//! members it hands entries to do. On disk and in memory it has wire ids, user and
//! device ids, sizes, counts and timing: never a channel name or message text.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use hearth_core::device::DeviceCert;
use hearth_core::{DeviceId, EntryHash, FeedPos, SecretKey, UserId, Vector, WireId};
use hearth_store::{
    Admission, DeviceChains, EntryBatch, Error, Feeds, Head, IngestReport, LogPos, Refusal, Result, Verdict, log_kind,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{Replica, ReplicaEvent};

mod disk;
mod members;

/// The one sled tree of a relay; the version is in the name.
const TREE: &str = "hearth-relay.v1";
/// `F | wire [32] | device [16] | seq u64 BE` -> envelope bytes.
const T_FEEDS: u8 = b'F';
/// `H | wire [32] | device [16]` -> postcard([`RelayHead`]): the version vectors.
const T_HEADS: u8 = b'H';
/// `K | wire [32] | device [16]` -> postcard([`hearth_core::ForkProof`]): the
/// first proof that the feed's author forked it.
const T_FORKS: u8 = b'K';
/// `D | wire [32] | device [16]` -> postcard(chain of device certificates):
/// the chain that certifies the key a device signs its feed with (format 5).
const T_CHAINS: u8 = b'D';
/// `G | wire [32]` -> the channel's access key (32 bytes), granted by a
/// member: proofs of membership of the channel are checked against it.
const T_GRANTS: u8 = b'G';
/// `V | wire [32] | device [16]` -> a revocation notice a member handed the
/// relay (postcard `hearth_core::member::RevocationNotice`, checked when
/// taken): the device's entries past its cut are refused and not served
/// (format 6).
const T_REVOKED: u8 = b'V';
/// `A | wire [32] | device [16] | seq u64 BE` -> u64 BE: when the relay took
/// that entry (unix ms), for an entry of a message epoch that still holds a
/// pack: its texts go once older than the relay's retention (format 11;
/// derived from the log, whose commit records carry the time).
const T_ARRIVED: u8 = b'A';
/// Most revocation notices one channel holds here.
const MAX_NOTICES_PER_CHANNEL: usize = 1024;
/// Locked (`File::try_lock`) while open, so two relays never share a directory.
const LOCK_FILE: &str = "LOCK";
/// The sled database directory.
const DB_DIR: &str = "db";
/// Events buffered for a slow subscriber before it sees `Lagged`.
const EVENT_CAPACITY: usize = 1024;
/// sled's page cache: a relay reads each entry about once per member.
const CACHE_BYTES: u64 = 16 << 20;

/// Limits of a relay.
///
/// Defaults: `max_channels` 10 000, `max_bytes` 10 GiB, `max_bytes_per_user`
/// 1 GiB, `retention` 30 days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Most channels held; entries of further channels are refused. Default 10 000.
    pub max_channels: usize,
    /// Most envelope bytes held in all; entries beyond are refused. Default 10 GiB.
    pub max_bytes: u64,
    /// Most envelope bytes held of one author (user), over all its devices
    /// and channels: one member cannot fill the relay for everyone. Default 1 GiB.
    pub max_bytes_per_user: u64,
    /// How long the relay keeps the texts of an entry after it took it
    /// ([`RelayStore::expire`]; `None`: for ever). Default 30 days.
    pub retention: Option<std::time::Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_channels: 10_000,
            max_bytes: 10 << 30,
            max_bytes_per_user: 1 << 30,
            retention: Some(std::time::Duration::from_secs(30 * 86_400)),
        }
    }
}

impl RelayConfig {
    /// Set [`RelayConfig::max_channels`].
    pub fn with_max_channels(self, max_channels: usize) -> Self {
        RelayConfig { max_channels, ..self }
    }

    /// Set [`RelayConfig::max_bytes`].
    pub fn with_max_bytes(self, max_bytes: u64) -> Self {
        RelayConfig { max_bytes, ..self }
    }

    /// Set [`RelayConfig::retention`].
    pub fn with_retention(self, retention: Option<std::time::Duration>) -> Self {
        RelayConfig { retention, ..self }
    }

    /// Set [`RelayConfig::max_bytes_per_user`].
    pub fn with_max_bytes_per_user(self, max_bytes_per_user: u64) -> Self {
        RelayConfig {
            max_bytes_per_user,
            ..self
        }
    }
}

/// What a relay holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Channels with at least one entry.
    pub channels: usize,
    /// Device feeds over all channels.
    pub feeds: usize,
    /// Entries held.
    pub entries: u64,
    /// Envelope bytes held (keys and sled overhead not counted).
    pub bytes: u64,
    /// Feeds whose author signed two versions of them (a proof is held; the
    /// second branch is refused).
    pub forked_feeds: u64,
    /// Channels whose access key a member granted: the only ones this relay
    /// serves (to peers that prove membership with that key).
    pub granted_channels: usize,
    /// Bytes of the held entries text drops replaced since this relay
    /// opened or last compacted: their old bytes are still in its files
    /// until the next compaction ([`RelayStore::compact`]).
    pub dropped_bytes: u64,
}

/// The head of one feed: an `H` row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RelayHead {
    /// The user who signs this feed.
    user: UserId,
    /// Highest seq held (entries 1..=seq are all present).
    seq: u64,
    /// Hash of entry `seq`.
    hash: EntryHash,
    /// Envelope bytes of entries 1..=seq, so that opening needs no scan of `F`.
    bytes: u64,
}

/// What a relay keeps in memory: every durable head.
#[derive(Default)]
struct State {
    feeds: BTreeMap<WireId, BTreeMap<DeviceId, RelayHead>>,
    bytes: u64,
    entries: u64,
    forks: u64,
    /// Envelope bytes held per author, over every channel.
    by_user: BTreeMap<UserId, u64>,
    /// Access keys granted by members, by channel (the first grant stands).
    grants: BTreeMap<WireId, SecretKey>,
    /// Per channel and device: the key its feed is signed with and the
    /// chain that certifies it.
    chains: BTreeMap<WireId, DeviceChains>,
    /// Per channel, revoked devices, from members' notices.
    revoked: BTreeMap<WireId, BTreeMap<DeviceId, Held>>,
    /// Per channel, the certificates of this relay by the users that
    /// configured it (`members`), with who made each.
    certs: BTreeMap<WireId, BTreeMap<UserId, (hearth_core::peer::RelayCert, hearth_core::peer::Certifier)>>,
    /// Per channel, users a certifying user removed (`members`).
    removed: BTreeMap<WireId, BTreeMap<UserId, hearth_core::peer::RemovalNotice>>,
    /// Bytes of the held entries text drops replaced since this relay
    /// opened (they stay in the log's old records until it is compacted).
    dropped_bytes: u64,
}

/// A read handle on a relay's sled tree (see [`Inner::tree`]).
struct TreeRef<'a>(RwLockReadGuard<'a, (sled::Db, sled::Tree)>);

impl std::ops::Deref for TreeRef<'_> {
    type Target = sled::Tree;

    fn deref(&self) -> &sled::Tree {
        &self.0.1
    }
}

/// A text drop taken: the drop, the entry as it is held from then on, the
/// bytes it shrank by, and the entry's author.
struct DroppedRow(hearth_core::peer::TextDrop, Vec<u8>, i64, UserId);

/// What a drop takes from an entry of `before` bytes that becomes `after`
/// (negative: a format 5 pack that grew, within what its dropped slots may
/// take: `hearth_core::peer::TextDrop::apply`).
fn shrink_of(before: usize, after: usize) -> i64 {
    before as i64 - after as i64
}

/// `v` less `shrink` (more, when it is negative), within range.
fn less(v: u64, shrink: i64) -> u64 {
    if shrink >= 0 {
        v.saturating_sub(shrink as u64)
    } else {
        v.saturating_add(shrink.unsigned_abs())
    }
}

/// A revocation notice held: what it says, and its bytes (handed on to
/// peers that ask).
#[derive(Clone, Debug)]
struct Held {
    /// The user whose device it revokes.
    user: UserId,
    /// The last entry of the device's feed that stays.
    upto: u64,
    /// The encoded notice.
    bytes: Vec<u8>,
}

impl Held {
    /// A notice's bytes, if it decodes and verifies: its channel, device
    /// and what it says.
    fn check(bytes: Vec<u8>) -> Option<(WireId, DeviceId, Held)> {
        let n = hearth_core::member::RevocationNotice::decode(&bytes).ok()?;
        let user = n.verify().ok()?;
        Some((
            n.wire,
            n.device,
            Held {
                user,
                upto: n.upto,
                bytes,
            },
        ))
    }
}

impl State {
    /// The last entry of `device`'s feed (of `user`, signed with `key`) in
    /// `wire` that a revocation keeps, if one cuts it: its own notice; or a
    /// notice of another device of the same user signed with the same key
    /// (a device that moved to its keyed id), or of a device its chain was
    /// issued through (linked by it, or by a device it linked), which cut it
    /// from its start.
    fn revocation_cut(&self, wire: &WireId, device: &DeviceId, user: &UserId, key: Option<[u8; 32]>) -> Option<u64> {
        let notes = self.revoked.get(wire)?;
        if let Some(h) = notes.get(device)
            && h.user == *user
        {
            return Some(h.upto);
        }
        let chains = self.chains.get(wire);
        let through = chains
            .and_then(|c| c.get(device))
            .map(|(_, chain)| hearth_core::device::issuers(chain))
            .unwrap_or_default();
        self.revoked_through(wire, user, key, &through).then_some(0)
    }

    /// Whether a notice held for `wire` revokes a device of `user` whose
    /// key is `key`, or one of `through` (devices a chain was issued
    /// through, by id or key).
    pub(super) fn revoked_through(
        &self,
        wire: &WireId,
        user: &UserId,
        key: Option<[u8; 32]>,
        through: &[(DeviceId, [u8; 32])],
    ) -> bool {
        let Some(notes) = self.revoked.get(wire) else {
            return false;
        };
        let chains = self.chains.get(wire);
        notes.iter().any(|(d, h)| {
            h.user == *user && {
                let revoked_key = chains.and_then(|c| c.get(d)).map(|(k, _)| *k);
                through.iter().any(|(t, tk)| t == d || Some(*tk) == revoked_key)
                    || (key.is_some() && revoked_key == key)
            }
        })
    }

    /// The last entry of `device`'s feed (of `user`, signed with `key`) in
    /// `wire` that stays, if a revocation or a removal cuts it: the lower.
    fn cut(&self, wire: &WireId, device: &DeviceId, user: &UserId, key: Option<[u8; 32]>) -> Option<u64> {
        let removal = self.removal(wire, user).and_then(|r| r.cut(device));
        removal
            .into_iter()
            .chain(self.revocation_cut(wire, device, user, key))
            .min()
    }

    fn vector(&self, wire: &WireId) -> Option<Vector> {
        self.feeds.get(wire).map(|f| {
            Vector(
                f.iter()
                    .map(|(d, h)| {
                        (
                            *d,
                            FeedPos {
                                seq: h.seq,
                                hash: h.hash,
                            },
                        )
                    })
                    .collect(),
            )
        })
    }
}

/// A relay's store of sealed entries: a cheap, cloneable handle.
///
/// Disk work runs on tokio's blocking pool. An ingest returns once its accepted
/// entries are durable (sled flush, then fsync of sled's files), so its
/// acknowledged vector is a promise kept across a power loss.
#[derive(Clone)]
pub struct RelayStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    config: RelayConfig,
    /// sled, and its one tree: replaced by a compaction (readers hold it
    /// for each call: [`Inner::tree`]).
    sled: RwLock<(sled::Db, sled::Tree)>,
    /// Held by the compaction under way: one at a time.
    compacting: Mutex<()>,
    /// Ingests run one at a time: each checks chains against the heads the
    /// previous one left, and appends to the log.
    write: Mutex<disk::Writer>,
    /// Heads of durable entries only: readers never hand out an entry a crash
    /// could take back.
    state: RwLock<State>,
    /// Set when a write failed to reach the disk; further ingests are refused
    /// (the page cache may claim data the disk lost) until the relay is reopened.
    poisoned: AtomicBool,
    events: broadcast::Sender<ReplicaEvent>,
    /// Devices whose chains peers sent with their proofs: user and key.
    peer_keys: Mutex<std::collections::HashMap<DeviceId, hearth_core::peer::Certifier>>,
    _lock: File,
}

impl std::fmt::Debug for RelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStore").field("dir", &self.inner.dir).finish()
    }
}

impl RelayStore {
    /// Open (or create) the relay in `dir` with the default [`RelayConfig`].
    pub fn open(dir: &Path) -> Result<RelayStore> {
        Self::open_with(dir, RelayConfig::default())
    }

    /// Open (or create) the relay in `dir` (blocking file I/O). Fails with [`Error::Locked`] when
    /// another relay has it open, and with [`Error::Corrupted`] (never a panic)
    /// when sled cannot read its files.
    pub fn open_with(dir: &Path, config: RelayConfig) -> Result<RelayStore> {
        let relay = Self::open_dir(dir, config)?;
        // The files sled made in this open.
        hearth_store::make_private(dir)?;
        Ok(relay)
    }

    fn open_dir(dir: &Path, config: RelayConfig) -> Result<RelayStore> {
        let existed = dir.exists();
        hearth_store::create_private_dir(dir)?;
        if !existed && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The new directory's entry must survive a power loss too.
            File::open(parent)?.sync_all()?;
        }
        let lock = lock(dir)?;
        // Owner-only, as a store (its node key and what it holds are nobody
        // else's business); sled makes its files with the process umask.
        hearth_store::make_private(dir)?;
        disk::clear_unfinished(dir)?;
        // A compaction cut short: dropped, or (committed) swapped in.
        hearth_store::recover_dir_compaction(dir)?;
        let cfg = sled_config(dir);
        // sled 0.34 can panic on damaged files (issues 1527, 1533): a typed error
        // instead of taking the process down.
        let open_sled = || {
            catch_unwind(AssertUnwindSafe(|| -> Result<_> {
                let db = hearth_store::open_sled_config(&cfg).map_err(sled_error)?;
                let tree = db.open_tree(TREE).map_err(sled_error)?;
                Ok((db, tree))
            }))
            .unwrap_or_else(|_| Err(corrupted("relay database", "sled panicked while opening it")))
        };
        let log_dir = dir.join(hearth_store::LOG_DIR);
        if !log_dir.exists() && dir.join(DB_DIR).exists() {
            // Format 1: the log is written from sled first, from a durable
            // copy (opening sled writes to it; a power cut then must not
            // touch the only copy).
            disk::migrate_from_copy(dir, TREE)?;
        }
        let opened = open_sled();
        if !log_dir.exists() {
            match &opened {
                // A new relay.
                Ok(_) => drop(hearth_store::FeedLog::create(&log_dir)?),
                Err(_) => return opened.map(|_| unreachable!("an error")),
            }
        }
        let standing = match &opened {
            Ok((_, tree)) => disk::standing(tree, &log_dir).unwrap_or_else(|e| disk::Standing::Rebuild(e.to_string())),
            Err(e) => disk::Standing::Rebuild(format!("sled does not open: {e}")),
        };
        let mut lock = Some(lock);
        let why = match standing {
            disk::Standing::Usable { applied, end } => {
                let (db, tree) = opened?;
                match Self::start(
                    dir,
                    config.clone(),
                    db,
                    tree,
                    lock.take().expect("the lock"),
                    applied,
                    end,
                ) {
                    Ok(relay) => return Ok(relay),
                    // A blob file a power cut emptied reads as an I/O error:
                    // sled is rebuilt (a bad log fails again below).
                    Err(e) => format!("sled is damaged: {e}"),
                }
            }
            disk::Standing::Rebuild(why) => {
                drop(opened);
                why
            }
        };
        // Derived data: dropped and built again from the log.
        eprintln!("hearth relay: rebuilding {} from its log: {why}", dir.display());
        // A failed start released the lock with its sled: take it again.
        let lock = match lock {
            Some(l) => l,
            None => self::lock(dir)?,
        };
        if dir.join(DB_DIR).exists() {
            fs::remove_dir_all(dir.join(DB_DIR))?;
        }
        let (db, tree) = open_sled()?;
        let end = disk::log_end(&log_dir)?;
        let mut b = sled::Batch::default();
        b.insert(disk::META_FORMAT, &[disk::RELAY_FORMAT][..]);
        b.insert(disk::META_LOG, &LogPos::START.encode()[..]);
        tree.apply_batch(b).map_err(sled_error)?;
        Self::start(dir, config, db, tree, lock, LogPos::START, end)
    }

    /// Load sled's heads, apply the log's batches past `applied`, checkpoint.
    fn start(
        dir: &Path,
        config: RelayConfig,
        db: sled::Db,
        tree: sled::Tree,
        lock: File,
        applied: LogPos,
        end: LogPos,
    ) -> Result<RelayStore> {
        let state = load(&tree)?;
        let log = hearth_store::FeedLog::open_at(&dir.join(hearth_store::LOG_DIR), end)?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let inner = Inner {
            dir: dir.to_path_buf(),
            config,
            sled: RwLock::new((db, tree)),
            compacting: Mutex::new(()),
            write: Mutex::new(disk::Writer::new(log, dir)),
            state: RwLock::new(state),
            poisoned: AtomicBool::new(false),
            peer_keys: Mutex::default(),
            events,
            _lock: lock,
        };
        let caught_up = inner
            .catch_up(applied)
            .and_then(|_| inner.checkpoint(&mut inner.write.lock().unwrap_or_else(PoisonError::into_inner)));
        if let Err(e) = caught_up {
            // Nothing more may reach this sled, not even the checkpoint at drop.
            inner.poisoned.store(true, Ordering::SeqCst);
            return Err(e);
        }
        // sled may just have created `db/`: its entry must be durable too.
        hearth_store::sync_dir(dir)?;
        Ok(RelayStore { inner: Arc::new(inner) })
    }

    /// Drop the texts (packs) of entries taken longer ago than the relay's
    /// retention ([`RelayConfig::retention`]; entries of a channel's
    /// metadata epoch apart); returns how many. `hearth relay` does it every
    /// minute; the bytes leave the files at the next compaction.
    pub async fn expire(&self) -> Result<u64> {
        match self.inner.config.retention {
            Some(r) => self.blocking(move |i| i.expire(r)).await,
            None => Ok(0),
        }
    }

    /// Compact the relay's files (see [`RelayStore::compact_with`]).
    pub async fn compact(&self) -> Result<hearth_store::CompactReport> {
        self.compact_with(Arc::default()).await
    }

    /// Compact the relay's files while it runs: the bytes of texts members
    /// dropped (deletes) leave its log and sled, copied afresh and swapped
    /// in at a pause of milliseconds. `hearth relay` does it on its own once
    /// texts were dropped ([`RelayStats::dropped_bytes`]).
    pub async fn compact_with(
        &self,
        progress: Arc<hearth_store::CompactProgress>,
    ) -> Result<hearth_store::CompactReport> {
        self.blocking(move |i| i.compact(progress)).await
    }

    /// What the relay holds.
    pub fn stats(&self) -> RelayStats {
        let st = self.inner.state();
        RelayStats {
            channels: st.feeds.len(),
            feeds: st.feeds.values().map(BTreeMap::len).sum(),
            entries: st.entries,
            bytes: st.bytes,
            forked_feeds: st.forks,
            granted_channels: st.grants.len(),
            dropped_bytes: st.dropped_bytes,
        }
    }

    /// Run disk work on the blocking pool. A panic there (sled on a damaged
    /// page) becomes an error: the node keeps serving.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(corrupted("relay database", "sled panicked")),
            Err(_) => Err(Error::Closed),
        }
    }
}

impl Replica for RelayStore {
    fn is_relay(&self) -> bool {
        true
    }

    async fn vectors(&self) -> Result<Vec<(WireId, Vector)>> {
        self.blocking(|i| {
            let wires: Vec<WireId> = i.state().feeds.keys().copied().collect();
            let mut out = Vec::with_capacity(wires.len());
            for w in wires {
                if let Some(v) = i.served_vector(&w)? {
                    out.push((w, v));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn notices(&self) -> Result<Vec<(WireId, Vec<u8>)>> {
        let st = self.inner.state();
        Ok(st
            .revoked
            .iter()
            .flat_map(|(w, m)| m.values().map(|h| (*w, h.bytes.clone())))
            .collect())
    }

    async fn note(
        &self,
        notices: Vec<Vec<u8>>,
        removals: Vec<hearth_core::peer::RemovalNotice>,
        drops: Vec<hearth_core::peer::TextDrop>,
        by: Option<hearth_core::peer::Certifier>,
    ) -> Result<Option<u32>> {
        self.blocking(move |i| i.note(notices, removals, drops, by))
            .await
            .map(Some)
    }

    async fn drops(&self) -> Result<Vec<hearth_core::peer::TextDrop>> {
        Ok(Vec::new())
    }

    async fn removals(&self) -> Result<Vec<hearth_core::peer::RemovalNotice>> {
        Ok(Vec::new())
    }

    async fn who(
        &self,
        _: hearth_core::peer::WhoRole,
        _: hearth_core::peer::Nonce,
        _: hearth_core::peer::Ends,
        _: Vec<u8>,
        _: bool,
    ) -> Result<Option<hearth_core::peer::Who>> {
        Ok(None)
    }

    async fn vet(&self, claim: hearth_core::peer::Claim, wires: Vec<WireId>) -> Result<hearth_core::peer::Vetting> {
        self.blocking(move |i| Ok(i.vet(&claim, &wires))).await
    }

    async fn serving(&self, device: hearth_core::peer::Certifier, wires: Vec<WireId>) -> Result<Vec<WireId>> {
        let st = self.inner.state();
        Ok(wires.into_iter().filter(|w| st.serves(w, &device)).collect())
    }

    async fn relay_cert(&self, _: Vec<u8>) -> Result<Option<hearth_core::peer::RelayCert>> {
        Ok(None)
    }

    async fn relay_certs(&self, wires: Vec<WireId>) -> Result<Vec<hearth_core::peer::RelayCert>> {
        Ok(self.inner.certs_for(&wires))
    }

    async fn certify(&self, cert: hearth_core::peer::RelayCert, me: Vec<u8>, wires: Vec<WireId>) -> Result<()> {
        self.blocking(move |i| i.certify(cert, &me, wires)).await
    }

    async fn access_keys(&self) -> Result<Vec<(WireId, SecretKey)>> {
        Ok(self.inner.state().grants.iter().map(|(w, k)| (*w, k.clone())).collect())
    }

    async fn grant(&self, grants: Vec<(WireId, SecretKey)>) -> Result<Option<Vec<(WireId, Vector)>>> {
        self.blocking(move |i| i.grant(grants)).await.map(Some)
    }

    async fn admit(&self, _: hearth_store::JoinRequest) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    async fn entries_after(
        &self,
        wire: WireId,
        have: Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<Option<EntryBatch>> {
        self.blocking(move |i| i.entries_after(&wire, &have, max_bytes, max_entries))
            .await
    }

    async fn ingest(&self, wire: WireId, entries: Vec<Vec<u8>>) -> Result<Option<IngestReport>> {
        self.blocking(move |i| {
            let r = catch_unwind(AssertUnwindSafe(|| i.ingest(&wire, entries)));
            r.unwrap_or_else(|_| {
                // A half-applied batch: refuse writes until a reopen reloads the heads.
                i.poisoned.store(true, Ordering::SeqCst);
                Err(corrupted("relay database", "sled panicked"))
            })
        })
        .await
        .map(Some)
    }

    fn subscribe(&self) -> crate::ReplicaEvents {
        crate::ReplicaEvents::new(self.inner.events.subscribe())
    }
}

impl Inner {
    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// sled's tree, held for as long as the handle lives: a compaction
    /// replaces the database only once no handle is held (sled reads some
    /// pages from files by path, which the swap moves).
    fn tree(&self) -> TreeRef<'_> {
        TreeRef(self.sled.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A handle on sled (a compaction replaces it).
    fn db(&self) -> sled::Db {
        self.sled.read().unwrap_or_else(PoisonError::into_inner).0.clone()
    }

    /// Compact: a new log (each entry as its row holds it: dropped texts
    /// gone, drop records folded in) and a fresh sled, copied while the
    /// relay takes entries, then swapped in at a pause of milliseconds in
    /// which ingests wait (`hearth_store::DirCompaction`, the store's
    /// compaction on a relay's files). Interrupted at any moment, the next
    /// open finishes or drops it.
    fn compact(&self, progress: Arc<hearth_store::CompactProgress>) -> Result<hearth_store::CompactReport> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let Ok(_one) = self.compacting.try_lock() else {
            return Err(Error::Invalid {
                what: "relay compaction".into(),
                detail: "one is under way".into(),
            });
        };
        let (copy, dropped_at_start) = {
            let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
            self.checkpoint(&mut w)?;
            let copy = hearth_store::DirCompaction::start(&self.dir, (&*self.tree(), TREE), w.log.end(), progress)?;
            (copy, self.state().dropped_bytes)
        };
        while !copy.ready() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // The pause: no ingest until the files are swapped.
        let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if self.poisoned.load(Ordering::SeqCst) {
            copy.abandon();
            return Err(Error::Poisoned);
        }
        let (end, report) = copy.commit(&self.tree())?;
        // Committed: from here a failure poisons (the next open finishes
        // the swap). Readers wait for the new sled; the old one is let go
        // (a stand-in holds its place) before its directory goes.
        let swapped = (|| -> Result<()> {
            let mut held = self.sled.write().unwrap_or_else(PoisonError::into_inner);
            let standin = sled::Config::new().temporary(true).open().map_err(sled_error)?;
            let standin_tree = standin.open_tree(TREE).map_err(sled_error)?;
            *held = (standin, standin_tree);
            hearth_store::swap_compacted(&self.dir)?;
            let db = hearth_store::open_sled_config(&sled_config(&self.dir)).map_err(sled_error)?;
            let tree = db.open_tree(TREE).map_err(sled_error)?;
            *held = (db, tree);
            drop(held);
            let log = hearth_store::FeedLog::open_at(&self.dir.join(hearth_store::LOG_DIR), end)?;
            *w = disk::Writer::new(log, &self.dir);
            hearth_store::make_private(&self.dir)?;
            Ok(())
        })();
        if let Err(e) = swapped {
            self.poisoned.store(true, Ordering::SeqCst);
            return Err(e);
        }
        // Drops taken while it copied may still be in the copy's log (their
        // records are): they stay due.
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        st.dropped_bytes = st.dropped_bytes.saturating_sub(dropped_at_start);
        Ok(report)
    }

    /// Take access grants: a channel's first grant stands (a later one with
    /// another key is ignored: the granter cannot prove it holds the channel
    /// under the key already held), at most `max_channels` in all. Durable
    /// (log, fsynced) before it is answered. The channels taken, with what
    /// this relay holds of them.
    fn grant(&self, grants: Vec<(WireId, SecretKey)>) -> Result<Vec<(WireId, Vector)>> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        let mut new = BTreeMap::new();
        {
            let st = self.state();
            for (wire, key) in grants {
                match st.grants.get(&wire).or(new.get(&wire)) {
                    Some(held) if held == &key => taken.push(wire),
                    Some(_) => {}
                    None if st.grants.len() + new.len() < self.config.max_channels => {
                        taken.push(wire);
                        new.insert(wire, key);
                    }
                    None => {}
                }
            }
        }
        if !new.is_empty() {
            let mut batch = sled::Batch::default();
            let bodies: Vec<Vec<u8>> = new
                .iter()
                .map(|(wire, key)| {
                    batch.insert(&grant_key(wire)[..], &key.expose()[..]);
                    let mut body = wire.0.to_vec();
                    body.extend_from_slice(key.expose());
                    body
                })
                .collect();
            let records: Vec<(u8, &[u8])> = bodies.iter().map(|b| (log_kind::GRANT, b.as_slice())).collect();
            let written = self.write(&mut w, batch, &records, None);
            if written.is_err() {
                self.poisoned.store(true, Ordering::SeqCst);
            }
            written?;
            self.state
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .grants
                .extend(new);
        }
        drop(w);
        taken
            .into_iter()
            .map(|wire| Ok((wire, self.served_vector(&wire)?.unwrap_or_default())))
            .collect()
    }

    /// The vector this relay serves of a channel: a revoked device's feed
    /// ends at its cut (what it holds past the cut, taken before the notice,
    /// is not handed out).
    fn served_vector(&self, wire: &WireId) -> Result<Option<Vector>> {
        let cuts: Vec<(DeviceId, u64)> = {
            let st = self.state();
            let Some(feeds) = st.feeds.get(wire) else {
                return Ok(None);
            };
            let chains = st.chains.get(wire);
            feeds
                .iter()
                .filter_map(|(d, h)| {
                    let key = chains.and_then(|c| c.get(d)).map(|(k, _)| *k);
                    st.cut(wire, d, &h.user, key)
                        .filter(|upto| *upto < h.seq)
                        .map(|upto| (*d, upto))
                })
                .collect()
        };
        let mut v = self.state().vector(wire).unwrap_or_default();
        for (device, upto) in cuts {
            if upto == 0 {
                v.0.remove(&device);
                continue;
            }
            let bytes = self
                .tree()
                .get(feed_key(wire, &device, upto))
                .map_err(sled_error)?
                .ok_or_else(|| corrupted("relay feed", format!("entry {device}/{upto} is missing")))?;
            v.0.insert(
                device,
                FeedPos {
                    seq: upto,
                    hash: hearth_core::Envelope::hash_of(&bytes),
                },
            );
        }
        Ok(Some(v))
    }

    /// Take members' revocation notices (encoded `RevocationNotice`s): each
    /// must verify, be of a channel granted here, and revoke a device of
    /// the revoking device's own user (as far as the chains held tell); the
    /// first notice of a device stands, at most
    /// [`MAX_NOTICES_PER_CHANNEL`] a channel. And text drops (see
    /// [`Inner::drops_taken`]). Durable (log, fsynced) before it is
    /// answered. Returns how many this relay holds of those sent (a drop
    /// counts once settled: taken, already held, or not to be taken).
    fn note(
        &self,
        notices: Vec<Vec<u8>>,
        removals: Vec<hearth_core::peer::RemovalNotice>,
        drops: Vec<hearth_core::peer::TextDrop>,
        by: Option<hearth_core::peer::Certifier>,
    ) -> Result<u32> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let settled = drops.len() as u32;
        let dropped = self.drops_taken(drops, by.as_ref())?;
        let (removed, mut held) = self.removals_taken(removals, by);
        held += settled;
        let mut new: BTreeMap<(WireId, DeviceId), Held> = BTreeMap::new();
        {
            let st = self.state();
            for bytes in notices {
                let Some((wire, device, h)) = Held::check(bytes) else {
                    continue;
                };
                if !st.grants.contains_key(&wire) {
                    continue;
                }
                let owner = st
                    .feeds
                    .get(&wire)
                    .and_then(|f| f.get(&device))
                    .map(|head| head.user)
                    .or_else(|| {
                        st.chains
                            .get(&wire)
                            .and_then(|c| c.get(&device))
                            .and_then(|(_, chain)| chain.last().map(|c| c.body.user))
                    });
                if owner.is_some_and(|o| o != h.user) {
                    continue;
                }
                let here = st.revoked.get(&wire);
                if here.is_some_and(|m| m.contains_key(&device)) || new.contains_key(&(wire, device)) {
                    held += 1;
                    continue;
                }
                let count = here.map_or(0, BTreeMap::len) + new.keys().filter(|(w, _)| *w == wire).count();
                if count >= MAX_NOTICES_PER_CHANNEL {
                    continue;
                }
                new.insert((wire, device), h);
            }
        }
        if !new.is_empty() || !removed.is_empty() || !dropped.is_empty() {
            let mut batch = sled::Batch::default();
            let drop_bodies = self.drop_rows(&mut batch, &dropped);
            for ((wire, device), h) in &new {
                batch.insert(&prefixed(T_REVOKED, wire, device)[..], &h.bytes[..]);
            }
            let bodies: Vec<Vec<u8>> = removed.iter().map(|r| r.encode()).collect();
            for (r, body) in removed.iter().zip(&bodies) {
                batch.insert(&members::user_key(members::T_REMOVED, &r.wire, &r.user)[..], &body[..]);
            }
            let records: Vec<(u8, &[u8])> = new
                .values()
                .map(|h| (log_kind::REVOKE, h.bytes.as_slice()))
                .chain(bodies.iter().map(|b| (log_kind::REMOVE, b.as_slice())))
                .chain(drop_bodies.iter().map(|b| (log_kind::DROP, b.as_slice())))
                .collect();
            let written = self.write(&mut w, batch, &records, None);
            if written.is_err() {
                self.poisoned.store(true, Ordering::SeqCst);
            }
            written?;
            held += new.len() as u32;
            let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
            Self::account_drops(&mut st, &dropped);
            for ((wire, device), h) in new {
                st.revoked.entry(wire).or_default().insert(device, h);
            }
            for r in removed {
                st.take_removal(r);
            }
            drop(st);
            let _ = self.events.send(ReplicaEvent::Recheck);
        }
        Ok(held)
    }

    /// Drop the packs of entries taken longer ago than `retention` (their
    /// texts: a relay cannot open a pack to keep some), entries of the
    /// metadata epoch apart; returns how many. The bytes leave the files at
    /// the next compaction.
    fn expire(&self, retention: std::time::Duration) -> Result<u64> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut total = 0u64;
        loop {
            let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
            let tree = self.tree();
            let mut rows: Vec<DroppedRow> = Vec::new();
            let mut stale = Vec::new();
            {
                let st = self.state();
                for row in tree.scan_prefix([T_ARRIVED]) {
                    let (k, v) = row.map_err(sled_error)?;
                    let at = v
                        .get(..8)
                        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                    if at >= cutoff {
                        continue;
                    }
                    let place = (k.len() == 57)
                        .then(|| {
                            let wire = WireId::from_slice(&k[1..33]).ok()?;
                            let device = DeviceId::from_slice(&k[33..49]).ok()?;
                            Some((wire, device, u64::from_be_bytes(k[49..57].try_into().ok()?)))
                        })
                        .flatten();
                    let Some((wire, device, seq)) = place else {
                        stale.push(k);
                        continue;
                    };
                    let (Some(head), Some(bytes)) = (
                        st.feeds.get(&wire).and_then(|f| f.get(&device)),
                        tree.get(feed_key(&wire, &device, seq)).map_err(sled_error)?,
                    ) else {
                        stale.push(k);
                        continue;
                    };
                    let Ok(env) = hearth_core::Envelope::decode(&bytes) else {
                        stale.push(k);
                        continue;
                    };
                    let d = hearth_core::peer::TextDrop {
                        wire,
                        device,
                        seq,
                        entry: env.hash(),
                        pack: None,
                    };
                    match d.apply(&bytes) {
                        Ok(Some(after)) => {
                            let shrink = shrink_of(bytes.len(), after.len());
                            rows.push(DroppedRow(d, after, shrink, head.user));
                        }
                        _ => stale.push(k),
                    }
                    if rows.len() + stale.len() >= EXPIRE_BATCH {
                        break;
                    }
                }
            }
            if rows.is_empty() && stale.is_empty() {
                return Ok(total);
            }
            let mut batch = sled::Batch::default();
            for k in &stale {
                batch.remove(k.clone());
            }
            let bodies = self.drop_rows(&mut batch, &rows);
            let records: Vec<(u8, &[u8])> = bodies.iter().map(|b| (log_kind::DROP, b.as_slice())).collect();
            let written = if records.is_empty() {
                self.tree().apply_batch(batch).map_err(sled_error)
            } else {
                self.write(&mut w, batch, &records, None)
            };
            if written.is_err() {
                self.poisoned.store(true, Ordering::SeqCst);
            }
            written?;
            total += rows.len() as u64;
            Self::account_drops(&mut self.state.write().unwrap_or_else(PoisonError::into_inner), &rows);
        }
    }

    /// The text drops to take of `drops`, each with the entry as it will
    /// be held and how many bytes it shrinks by: a drop is taken from `by`,
    /// a device of the entry's author this relay serves the channel, for an
    /// entry held here with the very hash it names, when the entry gets
    /// smaller (a relay cannot open a pack: it takes the author's word that
    /// the texts in it are the ones to keep).
    fn drops_taken(
        &self,
        drops: Vec<hearth_core::peer::TextDrop>,
        by: Option<&hearth_core::peer::Certifier>,
    ) -> Result<Vec<DroppedRow>> {
        let Some(by) = by else {
            return Ok(Vec::new());
        };
        let st = self.state();
        let mut out: Vec<DroppedRow> = Vec::new();
        for d in drops {
            let Some(head) = st.feeds.get(&d.wire).and_then(|f| f.get(&d.device)) else {
                continue;
            };
            // The author's devices only: any member may certify a relay, and
            // a pack's texts are the author's to drop (an admin's delete of
            // another's message leaves the relay at its retention).
            if d.seq > head.seq || by.user != head.user || !st.serves(&d.wire, by) {
                continue;
            }
            // Two drops of one entry in a request: the later one names the
            // entry as the first leaves it only if the hash is the same
            // (it is: the pack is outside the hash), so each applies in turn.
            let before = match out
                .iter()
                .rev()
                .find(|r| (r.0.wire, r.0.device, r.0.seq) == (d.wire, d.device, d.seq))
            {
                Some(r) => r.1.clone(),
                None => match self
                    .tree()
                    .get(feed_key(&d.wire, &d.device, d.seq))
                    .map_err(sled_error)?
                {
                    Some(v) => v.to_vec(),
                    None => continue,
                },
            };
            if let Ok(Some(after)) = d.apply(&before) {
                let shrink = shrink_of(before.len(), after.len());
                out.push(DroppedRow(d, after, shrink, head.user));
            }
        }
        Ok(out)
    }

    /// The `F` rows (and the heads' byte counts) of the drops taken, into
    /// `batch`; returns the log records' bodies.
    fn drop_rows(&self, batch: &mut sled::Batch, rows: &[DroppedRow]) -> Vec<Vec<u8>> {
        let st = self.state();
        let mut heads: BTreeMap<(WireId, DeviceId), RelayHead> = BTreeMap::new();
        for DroppedRow(d, after, shrink, _) in rows {
            batch.insert(&feed_key(&d.wire, &d.device, d.seq)[..], &after[..]);
            if d.pack.is_none() {
                // No pack left: nothing of it to expire.
                let mut k = feed_key(&d.wire, &d.device, d.seq);
                k[0] = T_ARRIVED;
                batch.remove(&k[..]);
            }
            if let Some(h) = st.feeds.get(&d.wire).and_then(|f| f.get(&d.device)) {
                let h = heads.entry((d.wire, d.device)).or_insert(*h);
                h.bytes = less(h.bytes, *shrink);
            }
        }
        for ((wire, device), h) in heads {
            batch.insert(
                &prefixed(T_HEADS, &wire, &device)[..],
                postcard::to_stdvec(&h).expect("a head encodes"),
            );
        }
        rows.iter().map(|r| r.0.encode()).collect()
    }

    /// What the drops taken free: the heads' bytes, the relay's, the authors'.
    fn account_drops(st: &mut State, rows: &[DroppedRow]) {
        for DroppedRow(d, after, shrink, user) in rows {
            if let Some(h) = st.feeds.get_mut(&d.wire).and_then(|f| f.get_mut(&d.device)) {
                h.bytes = less(h.bytes, *shrink);
            }
            st.bytes = less(st.bytes, *shrink);
            if let Some(b) = st.by_user.get_mut(user) {
                *b = less(*b, *shrink);
            }
            // The entry as it was is dead in the files, whole.
            st.dropped_bytes += (after.len() as i64 + shrink).max(0) as u64;
        }
    }

    /// A drop record of the log, replayed (a catch-up or a rebuild): it was
    /// checked when taken, so it applies to the entry it names, if held.
    pub(super) fn replay_drop(&self, batch: &mut sled::Batch, body: &[u8]) -> Result<()> {
        let Ok(d) = hearth_core::peer::TextDrop::decode(body) else {
            return Ok(());
        };
        let Some(user) = self
            .state()
            .feeds
            .get(&d.wire)
            .and_then(|f| f.get(&d.device))
            .map(|h| h.user)
        else {
            return Ok(());
        };
        let Some(before) = self
            .tree()
            .get(feed_key(&d.wire, &d.device, d.seq))
            .map_err(sled_error)?
        else {
            return Ok(());
        };
        if let Ok(Some(after)) = d.apply(&before) {
            let shrink = shrink_of(before.len(), after.len());
            let rows = [DroppedRow(d, after, shrink, user)];
            self.drop_rows(batch, &rows);
            // The rows go to sled before the next drop of the same entry
            // reads them.
            self.tree().apply_batch(std::mem::take(batch)).map_err(sled_error)?;
            Self::account_drops(&mut self.state.write().unwrap_or_else(PoisonError::into_inner), &rows);
        }
        Ok(())
    }

    /// The entries `have` lacks, feed by feed in seq order, within a budget.
    fn entries_after(
        &self,
        wire: &WireId,
        have: &Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<Option<EntryBatch>> {
        // A compaction that failed half-way may have left a stand-in.
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let Some(mine) = self.served_vector(wire)? else {
            return Ok(None);
        };
        let mut batch = EntryBatch::default();
        let mut bytes = 0usize;
        for run in have.lacks(&mine) {
            let mut expect = run.from;
            let from = feed_key(wire, &run.device, run.from);
            let to = feed_key(wire, &run.device, run.to);
            for row in self.tree().range(from..=to) {
                let (k, v) = row.map_err(sled_error)?;
                if k.len() != 57 || k[49..] != expect.to_be_bytes() {
                    return Err(corrupted(
                        "relay feed",
                        format!("entry {}/{expect} is missing", run.device),
                    ));
                }
                if batch.entries.len() >= max_entries || (bytes + v.len() > max_bytes && !batch.entries.is_empty()) {
                    batch.more = true;
                    return Ok(Some(batch));
                }
                bytes += v.len();
                batch.entries.push(v.to_vec());
                expect += 1;
            }
            if expect != run.to + 1 {
                return Err(corrupted(
                    "relay feed",
                    format!("entry {}/{expect} is missing", run.device),
                ));
            }
        }
        Ok(Some(batch))
    }

    /// Check a peer's entries of one channel and store those that pass, durably.
    fn ingest(&self, wire: &WireId, entries: Vec<Vec<u8>>) -> Result<IngestReport> {
        self.ingest_at(wire, entries, None, now_ms())
    }

    /// [`Inner::ingest`], or with `replay`, the same checks on entries of the
    /// relay's own log being applied to sled again at open (up to that log
    /// position; nothing is logged again, and the size limits, which held when
    /// they were first stored, are not applied again).
    fn ingest_at(
        &self,
        wire: &WireId,
        entries: Vec<Vec<u8>>,
        replay: Option<LogPos>,
        arrived: u64,
    ) -> Result<IngestReport> {
        let mut writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let mut by_user: BTreeMap<UserId, u64> = BTreeMap::new();
        let (held, chains, no_room, bytes_before) = {
            let st = self.state();
            let held = st.feeds.get(wire).cloned().unwrap_or_default();
            let chains = st.chains.get(wire).cloned().unwrap_or_default();
            let full = !st.feeds.contains_key(wire) && st.feeds.len() >= self.config.max_channels;
            let no_room = (full && replay.is_none())
                .then(|| format!("it holds the maximum of {} channels", self.config.max_channels));
            (held, chains, no_room, st.bytes)
        };
        let mut report = IngestReport::default();
        let mut admission = Admission::new(*wire, None);
        // Sizes of the feeds this batch moves (for the relay's quota).
        let mut sizes: BTreeMap<DeviceId, u64> = BTreeMap::new();
        let mut added = 0u64;
        let feeds = RelayFeeds {
            tree: &self.tree(),
            wire,
            held: &held,
            chains: &chains,
        };
        for bytes in entries {
            let env = match admission.check(&feeds, &bytes)? {
                Verdict::Next(env) => *env,
                Verdict::Duplicate => {
                    report.duplicates += 1;
                    continue;
                }
                Verdict::Refused(r) => {
                    report.rejected.push(r);
                    continue;
                }
            };
            let device = env.header.device;
            if replay.is_none() {
                let key = env
                    .device_key()
                    .ok()
                    .flatten()
                    .or_else(|| chains.get(&device).map(|(k, _)| *k));
                // A chain issued through a revoked device (this entry's, the
                // one held, or one this batch brought) cuts it from its start.
                let through = if env.certs.is_empty() {
                    chains
                        .get(&device)
                        .map(|(_, c)| c.as_slice())
                        .or_else(|| admission.new_chains().get(&device).map(Vec::as_slice))
                        .map(hearth_core::device::issuers)
                        .unwrap_or_default()
                } else {
                    hearth_core::device::issuers(&env.certs)
                };
                let cut = {
                    let st = self.state();
                    let through = st.revoked_through(wire, &env.header.user, None, &through).then_some(0);
                    st.cut(wire, &device, &env.header.user, key)
                        .into_iter()
                        .chain(through)
                        .min()
                };
                if let Some(upto) = cut
                    && env.header.seq > upto
                {
                    report.rejected.push(admission.refuse(&env, Refusal::Revoked));
                    continue;
                }
            }
            if let Some(why) = &no_room {
                report.rejected.push(admission.refuse(&env, Refusal::Full(why.clone())));
                continue;
            }
            let total = bytes_before + added + bytes.len() as u64;
            if total > self.config.max_bytes && replay.is_none() {
                let why = format!("it holds at most {} bytes of entries", self.config.max_bytes);
                report.rejected.push(admission.refuse(&env, Refusal::Full(why)));
                continue;
            }
            let len = bytes.len() as u64;
            let before = self.state().by_user.get(&env.header.user).copied().unwrap_or(0);
            let author = by_user.entry(env.header.user).or_insert(0);
            if before + *author + len > self.config.max_bytes_per_user && replay.is_none() {
                let why = format!(
                    "it holds at most {} bytes of one author's entries",
                    self.config.max_bytes_per_user
                );
                report.rejected.push(admission.refuse(&env, Refusal::Full(why)));
                continue;
            }
            *author += len;
            let size = sizes
                .entry(device)
                .or_insert_with(|| held.get(&device).map_or(0, |h| h.bytes));
            *size += len;
            added += len;
            admission.accept(&env, bytes);
        }
        let heads: BTreeMap<DeviceId, RelayHead> = admission
            .heads()
            .iter()
            .map(|(d, h)| {
                let head = RelayHead {
                    user: h.user,
                    seq: h.seq,
                    hash: h.hash,
                    bytes: sizes.get(d).copied().unwrap_or(0),
                };
                (*d, head)
            })
            .collect();
        let new_chains: DeviceChains = admission
            .new_chains()
            .iter()
            .filter_map(|(d, c)| Some((*d, (hearth_store::chain_key(c)?, c.clone()))))
            .collect();
        let (accepted, forks) = admission.into_accepted();
        // The first proof of each feed not yet forked here.
        let mut proofs: BTreeMap<DeviceId, Vec<u8>> = BTreeMap::new();
        for proof in forks {
            if let Ok(fork) = proof.check()
                && !proofs.contains_key(&fork.device)
                && self
                    .tree()
                    .get(prefixed(T_FORKS, wire, &fork.device))
                    .map_err(sled_error)?
                    .is_none()
            {
                proofs.insert(fork.device, proof.encode());
            }
        }
        if !accepted.is_empty() || !proofs.is_empty() {
            let rows = Rows {
                accepted: &accepted,
                heads: &heads,
                proofs: &proofs,
                chains: &new_chains,
            };
            self.store(&mut writer, wire, rows, replay, arrived)?;
            let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
            st.feeds.entry(*wire).or_default().extend(heads);
            st.chains.entry(*wire).or_default().extend(new_chains);
            st.bytes += added;
            st.entries += accepted.len() as u64;
            st.forks += proofs.len() as u64;
            for (user, added) in by_user {
                *st.by_user.entry(user).or_insert(0) += added;
            }
            report.accepted = accepted.len();
        }
        report.vector = self.served_vector(wire)?.unwrap_or_default();
        if report.accepted > 0 {
            let _ = self.events.send(ReplicaEvent::Appended(*wire, None));
        }
        Ok(report)
    }

    /// Write accepted entries and new fork proofs to the log (durably) and,
    /// with their heads, to sled as one batch.
    fn store(
        &self,
        writer: &mut disk::Writer,
        wire: &WireId,
        rows: Rows<'_>,
        replay: Option<LogPos>,
        arrived: u64,
    ) -> Result<()> {
        let Rows {
            accepted,
            heads,
            proofs,
            chains,
        } = rows;
        let mut batch = sled::Batch::default();
        // Derived from the entries (their first chain), so rebuilt with them.
        for (device, (_, chain)) in chains {
            let value = postcard::to_stdvec(chain).expect("a chain encodes");
            batch.insert(&prefixed(T_CHAINS, wire, device)[..], value);
        }
        for ((device, seq), bytes) in accepted {
            batch.insert(&feed_key(wire, device, *seq)[..], &bytes[..]);
            // When it came, for the relay's retention: entries that hold a
            // pack, of a message epoch.
            if let Ok(env) = hearth_core::Envelope::decode(bytes)
                && env.pack.is_some()
                && env.header.epoch != hearth_core::META_EPOCH
            {
                let mut k = feed_key(wire, device, *seq);
                k[0] = T_ARRIVED;
                batch.insert(&k[..], &arrived.to_be_bytes()[..]);
            }
        }
        for (device, head) in heads {
            let value = postcard::to_stdvec(head).expect("a head encodes");
            batch.insert(&prefixed(T_HEADS, wire, device)[..], value);
        }
        for (device, proof) in proofs {
            batch.insert(&prefixed(T_FORKS, wire, device)[..], &proof[..]);
        }
        // Each feed's entries in seq order (the map's order), so that the log
        // replays without a gap; proofs after them.
        let records: Vec<(u8, &[u8])> = accepted
            .values()
            .map(|e| (log_kind::ENTRY, e.as_slice()))
            .chain(proofs.values().map(|p| (log_kind::FORK, p.as_slice())))
            .collect();
        let written = self.write(writer, batch, &records, replay);
        if written.is_err() {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        written
    }
}

impl Drop for Inner {
    /// A relay that stops makes sled durable, so the next open has no log to
    /// apply again (it would, safely, if this did not happen).
    fn drop(&mut self) {
        let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self.checkpoint(&mut w);
    }
}

fn lock(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::Io(e)),
    }
}

/// Every head, with the totals they imply.
fn load(tree: &sled::Tree) -> Result<State> {
    let mut st = State::default();
    for row in tree.scan_prefix([T_HEADS]) {
        let (k, v) = row.map_err(sled_error)?;
        if k.len() != 49 {
            return Err(corrupted("relay heads", "key of the wrong length"));
        }
        let wire = WireId(k[1..33].try_into().expect("32 bytes"));
        let device = DeviceId(k[33..49].try_into().expect("16 bytes"));
        let head: RelayHead = postcard::from_bytes(&v).map_err(|e| corrupted("relay heads", e))?;
        st.bytes += head.bytes;
        st.entries += head.seq;
        *st.by_user.entry(head.user).or_insert(0) += head.bytes;
        st.feeds.entry(wire).or_default().insert(device, head);
    }
    st.forks = tree.scan_prefix([T_FORKS]).count() as u64;
    for row in tree.scan_prefix([T_CHAINS]) {
        let (k, v) = row.map_err(sled_error)?;
        if k.len() != 49 {
            return Err(corrupted("relay device chains", "key of the wrong length"));
        }
        let wire = WireId(k[1..33].try_into().expect("32 bytes"));
        let device = DeviceId(k[33..49].try_into().expect("16 bytes"));
        let chain: Vec<DeviceCert> = postcard::from_bytes(&v).map_err(|e| corrupted("relay device chains", e))?;
        let key = hearth_store::chain_key(&chain).ok_or_else(|| corrupted("relay device chains", "does not verify"))?;
        st.chains.entry(wire).or_default().insert(device, (key, chain));
    }
    for row in tree.scan_prefix([T_REVOKED]) {
        let (k, v) = row.map_err(sled_error)?;
        let (wire, device, h) =
            Held::check(v.to_vec()).ok_or_else(|| corrupted("relay revocations", "a notice that does not verify"))?;
        if k.len() != 49 || k[1..33] != wire.0 || k[33..49] != device.0 {
            return Err(corrupted("relay revocations", "a key that is not its notice's"));
        }
        st.revoked.entry(wire).or_default().insert(device, h);
    }
    for row in tree.scan_prefix([T_GRANTS]) {
        let (k, v) = row.map_err(sled_error)?;
        let mut body = k[1..].to_vec();
        body.extend_from_slice(&v);
        let (wire, key) = decode_grant(&body).ok_or_else(|| corrupted("relay grants", "a row of the wrong length"))?;
        st.grants.insert(wire, key);
    }
    Inner::load_members(tree, &mut st)?;
    Ok(st)
}

/// The sled key of a channel's grant.
fn grant_key(wire: &WireId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = T_GRANTS;
    k[1..].copy_from_slice(&wire.0);
    k
}

/// A grant log record's body: wire id, then key.
fn decode_grant(body: &[u8]) -> Option<(WireId, SecretKey)> {
    let (wire, key) = (body.get(..32)?, body.get(32..)?);
    Some((
        WireId(wire.try_into().ok()?),
        SecretKey::from_bytes(key.try_into().ok()?),
    ))
}

/// A relay's stored feeds of one channel, for [`Admission`].
struct RelayFeeds<'a> {
    tree: &'a sled::Tree,
    wire: &'a WireId,
    held: &'a BTreeMap<DeviceId, RelayHead>,
    chains: &'a DeviceChains,
}

/// What one ingest writes.
struct Rows<'a> {
    accepted: &'a BTreeMap<(DeviceId, u64), Vec<u8>>,
    heads: &'a BTreeMap<DeviceId, RelayHead>,
    proofs: &'a BTreeMap<DeviceId, Vec<u8>>,
    chains: &'a DeviceChains,
}

impl Feeds for RelayFeeds<'_> {
    fn head(&self, device: &DeviceId) -> Option<Head> {
        self.held.get(device).map(|h| Head {
            user: h.user,
            seq: h.seq,
            hash: h.hash,
            key: self.chains.get(device).map(|(k, _)| *k),
        })
    }

    fn chain(&self, device: &DeviceId) -> Option<Vec<DeviceCert>> {
        self.chains.get(device).map(|(_, c)| c.clone())
    }

    fn entry(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree
            .get(feed_key(self.wire, device, seq))
            .map_err(sled_error)?
            .map(|v| v.to_vec()))
    }
}

/// `tag | wire | device`: a head key, or the prefix of a feed's entries.
/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Entries one expiry batch drops at most (each batch is one log write).
const EXPIRE_BATCH: usize = 1024;

/// How a relay opens its sled.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir.join(DB_DIR))
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
}

fn prefixed(tag: u8, wire: &WireId, device: &DeviceId) -> [u8; 49] {
    let mut k = [0u8; 49];
    k[0] = tag;
    k[1..33].copy_from_slice(&wire.0);
    k[33..].copy_from_slice(&device.0);
    k
}

/// Key of a feed entry.
fn feed_key(wire: &WireId, device: &DeviceId, seq: u64) -> [u8; 57] {
    let mut k = [0u8; 57];
    k[..49].copy_from_slice(&prefixed(T_FEEDS, wire, device));
    k[49..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn corrupted(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Corrupted {
        what: what.into(),
        detail: detail.to_string(),
    }
}

fn sled_error(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => Error::Io(io),
        other => corrupted("relay database", other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::{ChannelKeys, ENVELOPE_VERSION, EntryBody, EntryHeader, Envelope, Identity};

    /// Entry `seq` of `me`'s feed; `fill` tells apart two entries at one position.
    fn entry(keys: &ChannelKeys, me: &Identity, seq: u64, prev: EntryHash, fill: u8) -> (Vec<u8>, EntryHash) {
        let body = EntryBody {
            epoch: 1,
            change: vec![fill; 32],
        };
        Envelope::seal_next(keys, me, seq, prev, &body).unwrap()
    }

    /// Entries 1..=n of `me`'s feed.
    fn chain(keys: &ChannelKeys, me: &Identity, n: u64) -> Vec<(Vec<u8>, EntryHash)> {
        let mut out: Vec<(Vec<u8>, EntryHash)> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map_or([0; 32], |e| e.1);
            out.push(entry(keys, me, seq, prev, seq as u8));
        }
        out
    }

    /// A validly signed entry by `signer` claiming `device`'s feed
    /// (`Envelope::seal` always writes the signer's own device). The relay
    /// never opens bodies, so any bytes do.
    fn claimed(wire: WireId, signer: &Identity, device: DeviceId, seq: u64, prev: EntryHash) -> Vec<u8> {
        let header = EntryHeader {
            version: ENVELOPE_VERSION,
            wire,
            user: signer.user(),
            device,
            seq,
            prev,
            generation: 0,
            epoch: 0,
        };
        let body = vec![7u8; 40];
        let mut signed = postcard::to_stdvec(&header).unwrap();
        signed.extend_from_slice(&body);
        let sig = signer.sign(&signed).unwrap().to_vec();
        postcard::to_stdvec(&Envelope {
            header,
            certs: Vec::new(),
            body,
            sig,
            pruned: None,
            segments: Vec::new(),
            pack: None,
        })
        .unwrap()
    }

    async fn ingest(relay: &RelayStore, wire: WireId, entries: &[&Vec<u8>]) -> IngestReport {
        let entries = entries.iter().map(|e| (*e).clone()).collect();
        relay
            .ingest(wire, entries)
            .await
            .unwrap()
            .expect("a relay takes any channel")
    }

    fn reasons(r: &IngestReport) -> Vec<String> {
        r.rejected.iter().map(|x| x.reason.to_string()).collect()
    }

    #[tokio::test]
    async fn chain_rules_match_a_members_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayStore::open(dir.path()).unwrap();
        let mut events = relay.subscribe();
        let keys = ChannelKeys::generate().unwrap();
        let wire = keys.wire();
        let a = Identity::generate("a").unwrap();
        let e = chain(&keys, &a, 5);

        // A gap refuses the entry and everything after it from that device.
        let r = ingest(&relay, wire, &[&e[0].0, &e[2].0, &e[3].0]).await;
        assert_eq!(r.accepted, 1);
        assert_eq!(
            reasons(&r),
            ["gap in the feed: expected entry 2", "follows a refused entry"]
        );
        assert_eq!(r.rejected[0].device, Some(a.device()));
        assert_eq!(r.rejected[0].seq, Some(3));
        assert_eq!(r.vector.seq(&a.device()), 1);
        assert_eq!(events.try_recv().unwrap(), ReplicaEvent::Appended(wire, None));

        // Same bytes again are duplicates; the rest chains on.
        let r = ingest(&relay, wire, &[&e[0].0, &e[1].0, &e[2].0, &e[2].0]).await;
        assert_eq!((r.accepted, r.duplicates, r.rejected.len()), (2, 2, 0));
        assert_eq!(r.vector.seq(&a.device()), 3);
        assert_eq!(events.try_recv().unwrap(), ReplicaEvent::Appended(wire, None));

        // Other bytes at a held position: a fork, refused with what follows.
        let (fork, _) = entry(&keys, &a, 2, e[0].1, 99);
        let r = ingest(&relay, wire, &[&fork, &e[3].0]).await;
        assert_eq!(r.accepted, 0);
        assert!(reasons(&r)[0].contains("forked feed"), "{r:?}");
        assert_eq!(reasons(&r)[1], "follows a refused entry");
        assert!(events.try_recv().is_err(), "nothing appended, nothing announced");

        // A wrong previous hash (signed onto another entry 3: a fork too);
        // a broken signature.
        let (unchained, _) = entry(&keys, &a, 4, [9; 32], 4);
        let r = ingest(&relay, wire, &[&unchained]).await;
        assert_eq!(r.rejected[0].reason, Refusal::Forked { seq: 3 });
        // The signature's last byte (format 4: before the absent pack).
        let mut unsigned = e[3].0.clone();
        let n = unsigned.len();
        unsigned[n - 2] ^= 1;
        let r = ingest(&relay, wire, &[&unsigned]).await;
        assert_eq!(r.rejected[0].reason, Refusal::BadSignature);
        assert!(r.rejected[0].is_peer_fault());

        // Entries of another channel; bytes that are no entry at all.
        let other = chain(&ChannelKeys::generate().unwrap(), &a, 1);
        assert_eq!(
            reasons(&ingest(&relay, wire, &[&other[0].0]).await),
            ["entry of another channel"]
        );
        let r = ingest(&relay, wire, &[&vec![1, 2, 3]]).await;
        assert_eq!((r.rejected[0].device, r.rejected[0].seq), (None, None));

        // Another user may not write into a device's feed, whether the device
        // was bound before this batch or earlier in it.
        let b = Identity::generate("b").unwrap();
        let r = ingest(&relay, wire, &[&e[3].0, &claimed(wire, &b, a.device(), 5, e[3].1)]).await;
        assert_eq!(r.accepted, 1);
        assert_eq!(reasons(&r), ["device belongs to another user"]);
        let d = DeviceId([5; 16]);
        let first = claimed(wire, &a, d, 1, [0; 32]);
        let second = claimed(wire, &b, d, 2, Envelope::hash_of(&first));
        let r = ingest(&relay, wire, &[&first, &second]).await;
        assert_eq!(r.accepted, 1);
        assert_eq!(reasons(&r), ["device belongs to another user"]);

        let held = relay.vectors().await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].1.seq(&a.device()), 4);
        assert_eq!(held[0].1.seq(&d), 1);
        let bytes: u64 = e[..4].iter().map(|x| x.0.len() as u64).sum::<u64>() + first.len() as u64;
        assert_eq!(
            relay.stats(),
            RelayStats {
                channels: 1,
                feeds: 2,
                entries: 5,
                bytes,
                forked_feeds: 1,
                granted_channels: 0,
                dropped_bytes: 0,
            }
        );
    }

    #[tokio::test]
    async fn device_signed_feeds_are_checked_with_the_chain_kept() {
        use hearth_core::EntryBody;
        let dir = tempfile::tempdir().unwrap();
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let wire = keys.wire();
        let body = |b: u8| EntryBody {
            epoch: 1,
            change: vec![b; 8],
        };
        let chain = vec![me.device_cert().unwrap().clone()];
        let seal =
            |seq: u64, prev, certs| Envelope::seal_v2(&keys, &me, seq, prev, &body(seq as u8), 0, certs).unwrap();
        let (e1, h1) = seal(1, [0; 32], chain);
        let (e2, h2) = seal(2, h1, Vec::new());
        let relay = RelayStore::open(dir.path()).unwrap();
        let r = ingest(&relay, wire, &[&e1, &e2]).await;
        assert_eq!((r.accepted, r.rejected.len()), (2, 0), "{r:?}");
        drop(relay);
        // The key is kept: a later entry without a chain verifies after a
        // reopen, and after a rebuild of the database from the log.
        let relay = RelayStore::open(dir.path()).unwrap();
        let (e3, h3) = seal(3, h2, Vec::new());
        assert_eq!(ingest(&relay, wire, &[&e3]).await.accepted, 1);
        drop(relay);
        std::fs::remove_dir_all(dir.path().join(DB_DIR)).unwrap();
        let relay = RelayStore::open(dir.path()).unwrap();
        let (e4, _) = seal(4, h3, Vec::new());
        assert_eq!(ingest(&relay, wire, &[&e4]).await.accepted, 1);
        // Another device's entry without a chain, claiming a free position:
        // refused as a forgery (nothing certifies its key).
        let other = Identity::generate("b").unwrap();
        let (stray, _) = Envelope::seal_v2(&keys, &other, 1, [0; 32], &body(9), 0, Vec::new()).unwrap();
        assert_eq!(reasons(&ingest(&relay, wire, &[&stray]).await), ["bad signature"]);
    }

    /// Revocation on a relay (issue 8, item 1): a member's notice, signed by
    /// another device of the revoked device's own user, cuts the device's
    /// feed there: later entries are refused (not the forwarder's fault),
    /// what was taken past the cut is no longer served, and it all survives
    /// a reopen and a rebuild. Notices of another user, of a device revoking
    /// itself, with a bad signature or for a channel not granted are not taken.
    #[tokio::test]
    async fn revocation_notices_cut_a_devices_feed_for_good() {
        use hearth_core::member::{RevocationNotice, sign_revocation};
        let dir = tempfile::tempdir().unwrap();
        let keys = ChannelKeys::generate().unwrap();
        let wire = keys.wire();
        let a = Identity::generate("a").unwrap();
        let stolen = Identity::new_device(&a.secret().unwrap(), "a").unwrap();
        let mallory = Identity::generate("m").unwrap();
        let feed = chain(&keys, &stolen, 6);
        let mine = chain(&keys, &a, 2);
        let notice = |by: &Identity, device: DeviceId, upto: u64, wire: WireId| {
            RevocationNotice::new(
                wire,
                device,
                upto,
                vec![by.device_cert().unwrap().clone()],
                sign_revocation(by.device_keys().unwrap(), &wire, &device, upto),
            )
            .encode()
        };
        let relay = RelayStore::open(dir.path()).unwrap();
        relay.grant(vec![(wire, keys.access().clone())]).await.unwrap();
        let r = ingest(&relay, wire, &[&feed[0].0, &feed[1].0, &feed[2].0, &mine[0].0]).await;
        assert_eq!(r.accepted, 4);
        let mut forged = notice(&a, stolen.device(), 1, wire);
        let at = forged.len() - 10;
        forged[at] ^= 1;
        let refused = vec![
            notice(&mallory, stolen.device(), 1, wire),
            notice(&stolen, stolen.device(), 1, wire),
            forged,
            notice(&a, stolen.device(), 1, WireId([7; 32])),
        ];
        assert_eq!(
            relay.note(refused, Vec::new(), Vec::new(), None).await.unwrap(),
            Some(0)
        );
        assert_eq!(relay.notices().await.unwrap(), Vec::new());
        let good = notice(&a, stolen.device(), 2, wire);
        assert_eq!(
            relay
                .note(vec![good.clone(), good.clone()], Vec::new(), Vec::new(), None)
                .await
                .unwrap(),
            Some(2)
        );
        // The first notice of a device stands.
        assert_eq!(
            relay
                .note(vec![notice(&a, stolen.device(), 5, wire)], Vec::new(), Vec::new(), None)
                .await
                .unwrap(),
            Some(1)
        );
        let (sd, ad) = (stolen.device(), a.device());
        let check = |relay: RelayStore| {
            let (feed, mine, good) = (feed.clone(), mine.clone(), good.clone());
            async move { check_cut(relay, wire, sd, ad, feed, mine, good).await }
        };
        check(relay.clone()).await;
        drop(relay);
        check(RelayStore::open(dir.path()).unwrap()).await;
        std::fs::remove_dir_all(dir.path().join(DB_DIR)).unwrap();
        check(RelayStore::open(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn certificates_and_removals_come_from_certifying_users_and_last() {
        use hearth_core::peer::{Certifier, RelayCert, RemovalNotice};
        let dir = tempfile::tempdir().unwrap();
        let keys = ChannelKeys::generate().unwrap();
        let wire = keys.wire();
        let me = b"this relay".to_vec();
        let (a, b, m) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
            Identity::generate("m").unwrap(),
        );
        let cert = |id: &Identity, relay: &[u8]| {
            RelayCert::sign(
                id.device_keys().unwrap(),
                vec![id.device_cert().unwrap().clone()],
                relay,
            )
        };
        let by = |id: &Identity| Certifier {
            user: id.user(),
            device: id.device(),
            key: id.device_keys().unwrap().public().signing,
            via: Vec::new(),
        };
        let removal = |user: &Identity| RemovalNotice {
            wire,
            user: user.user(),
            left: false,
            cuts: vec![(user.device(), 1)],
            at: 10,
            back: false,
        };
        let relay = RelayStore::open(dir.path()).unwrap();
        // Not granted yet: no certificate is kept for the channel.
        relay.certify(cert(&a, &me), me.clone(), vec![wire]).await.unwrap();
        assert!(relay.relay_certs(vec![wire]).await.unwrap().is_empty());
        relay.grant(vec![(wire, keys.access().clone())]).await.unwrap();
        // One naming another relay is refused.
        assert!(
            relay
                .certify(cert(&a, b"another"), me.clone(), vec![wire])
                .await
                .is_err()
        );
        relay.certify(cert(&a, &me), me.clone(), vec![wire]).await.unwrap();
        relay.certify(cert(&a, &me), me.clone(), vec![wire]).await.unwrap();
        relay.certify(cert(&b, &me), me.clone(), vec![wire]).await.unwrap();
        assert_eq!(relay.relay_certs(vec![wire]).await.unwrap().len(), 2);
        // Removals: not from a device that proved nothing, nor from a user
        // that did not certify the relay, nor of oneself.
        let held = |r: Option<u32>| r.unwrap();
        assert_eq!(
            held(relay.note(vec![], vec![removal(&b)], Vec::new(), None).await.unwrap()),
            0
        );
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![removal(&b)], Vec::new(), Some(by(&m)))
                    .await
                    .unwrap()
            ),
            0
        );
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![removal(&a)], Vec::new(), Some(by(&a)))
                    .await
                    .unwrap()
            ),
            0
        );
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![removal(&b)], Vec::new(), Some(by(&a)))
                    .await
                    .unwrap()
            ),
            1
        );
        // The removed user's own removals are not taken any more.
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![removal(&a)], Vec::new(), Some(by(&b)))
                    .await
                    .unwrap()
            ),
            0
        );
        let check = |relay: RelayStore| {
            let (wire, a, b) = (wire, by(&a), by(&b));
            async move {
                let shown = relay.relay_certs(vec![wire]).await.unwrap();
                assert_eq!(shown.len(), 1, "a removed user's certificate is not shown");
                assert_eq!(shown[0].verify().unwrap().user, a.user);
                assert_eq!(relay.serving(a, vec![wire]).await.unwrap(), vec![wire]);
                assert!(relay.serving(b, vec![wire]).await.unwrap().is_empty());
            }
        };
        check(relay.clone()).await;
        drop(relay);
        check(RelayStore::open(dir.path()).unwrap()).await;
        std::fs::remove_dir_all(dir.path().join(DB_DIR)).unwrap();
        check(RelayStore::open(dir.path()).unwrap()).await;
        // The latest op of a user stands: Bob added back (a later clock) is
        // served again and his certificate shown; a notice older than the one
        // held changes nothing; removed once more, he is not served.
        let relay = RelayStore::open(dir.path()).unwrap();
        let back = |user: &Identity, at| RemovalNotice {
            wire,
            user: user.user(),
            left: false,
            cuts: Vec::new(),
            at,
            back: true,
        };
        let served = |relay: RelayStore, who: Certifier| async move {
            !relay.serving(who, vec![wire]).await.unwrap().is_empty()
        };
        // A clock from the far future is refused (it would stand for good).
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![back(&b, u64::MAX)], Vec::new(), Some(by(&a)))
                    .await
                    .unwrap()
            ),
            0
        );
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![back(&b, 5)], Vec::new(), Some(by(&a)))
                    .await
                    .unwrap()
            ),
            1
        );
        assert!(!served(relay.clone(), by(&b)).await, "older than the removal held");
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![back(&b, 20)], Vec::new(), Some(by(&a)))
                    .await
                    .unwrap()
            ),
            1
        );
        assert!(served(relay.clone(), by(&b)).await);
        assert_eq!(relay.relay_certs(vec![wire]).await.unwrap().len(), 2);
        let again = RemovalNotice { at: 30, ..removal(&b) };
        assert_eq!(
            held(relay.note(vec![], vec![again], Vec::new(), Some(by(&a))).await.unwrap()),
            1
        );
        assert!(!served(relay.clone(), by(&b)).await);
        drop(relay);
        assert!(
            !served(RelayStore::open(dir.path()).unwrap(), by(&b)).await,
            "after a reopen"
        );
        std::fs::remove_dir_all(dir.path().join(DB_DIR)).unwrap();
        assert!(
            !served(RelayStore::open(dir.path()).unwrap(), by(&b)).await,
            "after a rebuild"
        );
        let relay = RelayStore::open(dir.path()).unwrap();
        assert!(served(relay.clone(), by(&a)).await);
        assert_eq!(
            held(
                relay
                    .note(vec![], vec![back(&b, 40)], Vec::new(), Some(by(&a)))
                    .await
                    .unwrap()
            ),
            1
        );
        drop(relay);
        std::fs::remove_dir_all(dir.path().join(DB_DIR)).unwrap();
        assert!(
            served(RelayStore::open(dir.path()).unwrap(), by(&b)).await,
            "the latest, after a rebuild"
        );
    }

    async fn check_cut(
        relay: RelayStore,
        wire: WireId,
        stolen: DeviceId,
        a: DeviceId,
        feed: Vec<(Vec<u8>, EntryHash)>,
        mine: Vec<(Vec<u8>, EntryHash)>,
        good: Vec<u8>,
    ) {
        {
            let v = relay.vectors().await.unwrap()[0].1.clone();
            assert_eq!(v.seq(&stolen), 2, "served up to the cut");
            assert!(v.seq(&a) >= 1);
            let b = relay
                .entries_after(wire, Vector::default(), 1 << 20, 100)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                b.entries.len() as u64,
                2 + v.seq(&a),
                "the entry taken past the cut is not handed out"
            );
            assert!(!b.entries.contains(&feed[2].0));
            let r = ingest(&relay, wire, &[&feed[3].0, &feed[4].0, &mine[1].0]).await;
            assert_eq!(r.rejected[0].reason, Refusal::Revoked, "{r:?}");
            assert!(!r.rejected[0].is_peer_fault());
            assert_eq!(relay.notices().await.unwrap(), vec![(wire, good.clone())]);
        }
    }

    #[tokio::test]
    async fn grants_are_durable_and_the_first_stands() {
        let dir = tempfile::tempdir().unwrap();
        let (w1, w2) = (WireId([1; 32]), WireId([2; 32]));
        let key = |b: u8| SecretKey::from_bytes([b; 32]);
        {
            let relay = RelayStore::open_with(dir.path(), RelayConfig::default().with_max_channels(2)).unwrap();
            let got = relay.grant(vec![(w1, key(1)), (w2, key(2))]).await.unwrap().unwrap();
            assert_eq!(got, vec![(w1, Vector::default()), (w2, Vector::default())]);
            // Another key for a granted channel is not taken; the same one is.
            let got = relay.grant(vec![(w1, key(9)), (w2, key(2))]).await.unwrap().unwrap();
            assert_eq!(got, vec![(w2, Vector::default())]);
            // Beyond max_channels: not taken.
            let got = relay.grant(vec![(WireId([3; 32]), key(3))]).await.unwrap().unwrap();
            assert!(got.is_empty());
            assert_eq!(relay.stats().granted_channels, 2);
        }
        let keys = |relay: &RelayStore| {
            let relay = relay.clone();
            async move {
                let mut k = relay.access_keys().await.unwrap();
                k.sort_by_key(|(w, _)| *w);
                k
            }
        };
        let relay = RelayStore::open(dir.path()).unwrap();
        assert_eq!(keys(&relay).await, vec![(w1, key(1)), (w2, key(2))], "after a reopen");
        drop(relay);
        std::fs::remove_dir_all(dir.path().join(DB_DIR)).unwrap();
        let relay = RelayStore::open(dir.path()).unwrap();
        assert_eq!(
            keys(&relay).await,
            vec![(w1, key(1)), (w2, key(2))],
            "rebuilt from the log"
        );
    }

    #[tokio::test]
    async fn hands_out_what_a_peer_lacks_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayStore::open(dir.path()).unwrap();
        assert!(relay.is_relay());
        let keys = ChannelKeys::generate().unwrap();
        let wire = keys.wire();
        assert_eq!(
            relay
                .entries_after(wire, Vector::default(), 1 << 20, 100)
                .await
                .unwrap(),
            None
        );
        let a = Identity::generate("a").unwrap();
        let e = chain(&keys, &a, 5);
        let all: Vec<Vec<u8>> = e.iter().map(|x| x.0.clone()).collect();
        relay.ingest(wire, all.clone()).await.unwrap();
        let b = relay
            .entries_after(wire, Vector::default(), 1 << 20, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((b.entries, b.more), (all[..2].to_vec(), true));
        let b = relay
            .entries_after(wire, Vector::default(), 1, 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (b.entries.len(), b.more),
            (1, true),
            "one entry even over the byte budget"
        );
        let mut have = Vector::default();
        have.0.insert(a.device(), FeedPos { seq: 3, hash: e[2].1 });
        let b = relay.entries_after(wire, have, 1 << 20, 100).await.unwrap().unwrap();
        assert_eq!((b.entries, b.more), (all[3..].to_vec(), false));
        let full = relay.vectors().await.unwrap()[0].1.clone();
        assert_eq!(
            relay.entries_after(wire, full, 1 << 20, 100).await.unwrap(),
            Some(EntryBatch::default())
        );
    }

    #[tokio::test]
    async fn locked_while_open_and_reopens_with_the_same_heads() {
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayStore::open(dir.path()).unwrap();
        let keys = ChannelKeys::generate().unwrap();
        let a = Identity::generate("a").unwrap();
        let e = chain(&keys, &a, 3);
        relay
            .ingest(keys.wire(), e.iter().map(|x| x.0.clone()).collect())
            .await
            .unwrap();
        assert!(matches!(RelayStore::open(dir.path()), Err(Error::Locked { .. })));
        let (vectors, stats) = (relay.vectors().await.unwrap(), relay.stats());
        drop(relay);
        let relay = RelayStore::open(dir.path()).unwrap();
        assert_eq!(relay.vectors().await.unwrap(), vectors);
        assert_eq!(relay.stats(), stats);
        let r = ingest(&relay, keys.wire(), &[&e[2].0]).await;
        assert_eq!(r.duplicates, 1, "held entries are still recognised");
    }

    #[tokio::test]
    async fn refuses_channels_and_bytes_beyond_its_limits() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::generate("a").unwrap();
        let (k1, k2) = (ChannelKeys::generate().unwrap(), ChannelKeys::generate().unwrap());
        let e1 = chain(&k1, &a, 3);
        let cap = (e1[0].0.len() + e1[1].0.len()) as u64;
        let config = RelayConfig::default().with_max_channels(1).with_max_bytes(cap);
        let relay = RelayStore::open_with(dir.path(), config).unwrap();
        let r = ingest(&relay, k1.wire(), &[&e1[0].0, &e1[1].0, &e1[2].0]).await;
        assert_eq!(r.accepted, 2);
        assert!(reasons(&r)[0].starts_with("relay is full"), "{r:?}");
        let e2 = chain(&k2, &a, 1);
        let r = ingest(&relay, k2.wire(), &[&e2[0].0]).await;
        assert_eq!(reasons(&r), ["relay is full: it holds the maximum of 1 channels"]);
        assert_eq!(r.vector, Vector::default());
        assert_eq!(relay.stats().channels, 1);
        assert_eq!(relay.stats().bytes, cap);
    }

    /// One author cannot fill a relay for everyone: its quota covers all its
    /// devices and channels, survives a reopen, and others still get in.
    #[tokio::test]
    async fn one_authors_entries_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Identity::generate("a").unwrap(), Identity::generate("b").unwrap());
        let a2 = Identity::new_device(&a.secret().unwrap(), "a").unwrap();
        let (k1, k2) = (ChannelKeys::generate().unwrap(), ChannelKeys::generate().unwrap());
        let (ea, ea2, eb) = (chain(&k1, &a, 2), chain(&k2, &a2, 2), chain(&k1, &b, 2));
        let cap = (ea[0].0.len() + ea[1].0.len() + ea2[0].0.len()) as u64;
        let config = RelayConfig::default().with_max_bytes_per_user(cap);
        let relay = RelayStore::open_with(dir.path(), config.clone()).unwrap();
        assert_eq!(ingest(&relay, k1.wire(), &[&ea[0].0, &ea[1].0]).await.accepted, 2);
        let r = ingest(&relay, k2.wire(), &[&ea2[0].0, &ea2[1].0]).await;
        assert_eq!(r.accepted, 1, "another device of the same user, in another channel");
        assert_eq!(
            reasons(&r),
            [format!(
                "relay is full: it holds at most {cap} bytes of one author's entries"
            )]
        );
        assert!(!r.rejected[0].is_peer_fault());
        assert_eq!(ingest(&relay, k1.wire(), &[&eb[0].0, &eb[1].0]).await.accepted, 2);
        drop(relay);
        let relay = RelayStore::open_with(dir.path(), config).unwrap();
        assert_eq!(
            ingest(&relay, k2.wire(), &[&ea2[1].0]).await.accepted,
            0,
            "after a reopen too"
        );
    }

    #[test]
    fn damaged_files_give_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DB_DIR)).unwrap();
        for name in ["conf", "db"] {
            fs::write(dir.path().join(DB_DIR).join(name), [0xA5; 4096]).unwrap();
        }
        assert!(RelayStore::open(dir.path()).is_err());
    }
}
