//! Bringing sled in line with the feed log ([`crate::log`]) at open.
//!
//! - **Catch-up**: after a crash, sled may lag the log by the batches it had
//!   not written out; they are applied again from the log (ingest of each
//!   batch's entries, this device's own included, duplicates recognised).
//! - **Rebuild**: when sled is missing, does not open, is damaged, or claims a
//!   log position the log does not reach (it got ahead of the log's durable
//!   part in a power cut), a fresh sled is built from the whole log.
//! - **Migration**: a store of format 1 had no log; its log is written from
//!   sled (into `log.tmp/`, renamed into place once durable).
//!
//! Each of them is safe to interrupt at any moment: sled records the log
//! position it reached with every batch it applies, so the next open goes on
//! from there, and a migration that did not finish leaves only `log.tmp/`,
//! which the next open deletes and starts again.

use std::collections::BTreeMap;
use std::path::Path;

use hearth_core::{ChannelRecord, Identity, SecretKey, Timestamp, WireId};

use crate::channel::FeedHead;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::{self, Log, LogBatch, LogPos, kind};
use crate::open::OpenReport;

/// Log records gathered from consecutive batches are applied together up to
/// about this many entries or bytes: automerge applies a batch of changes for
/// the cost of one, and a rebuild of a store written one post at a time would
/// otherwise pay that cost per post.
const APPLY_ENTRIES: usize = 2048;
const APPLY_BYTES: usize = 8 << 20;

/// Seal a log record that is not sealed already (identity, channel keys,
/// commit) under the record key, bound to its kind.
pub(crate) fn seal(records: &SecretKey, kind: u8, plain: &[u8]) -> Result<Vec<u8>> {
    Ok(hearth_core::seal(records, &aad(kind), plain)?)
}

/// Open a record sealed by [`seal`].
pub(crate) fn open(records: &SecretKey, kind: u8, sealed: &[u8]) -> Result<Vec<u8>> {
    Ok(hearth_core::open(records, &aad(kind), sealed, "feed log record")?)
}

/// Associated data of a sealed log record: the log's name and the record's kind.
fn aad(kind: u8) -> [u8; 14] {
    let mut a = [0u8; 14];
    a[..13].copy_from_slice(b"hearth.log.v1");
    a[13] = kind;
    a
}

/// Decode a commit record.
pub(crate) fn open_commit(records: &SecretKey, sealed: &[u8]) -> Result<log::Commit> {
    postcard::from_bytes(&open(records, kind::COMMIT, sealed)?).map_err(|e| Error::corrupted("log commit", e))
}

/// The identity the log holds last (the first batch holds one; a store of
/// format 3 or older appended another when its device got keys), for a
/// rebuild. It must be of the same user and device as the first.
pub(crate) fn identity_from_log(log_dir: &Path, records: &SecretKey) -> Result<Identity> {
    let mut first: Option<Identity> = None;
    let mut last: Option<Identity> = None;
    let mut bad = None;
    log::scan(log_dir, LogPos::START, |b| {
        if first.is_none() && !b.records.iter().any(|r| r.kind == kind::IDENTITY) {
            bad = Some("no identity record at its start");
            return Ok(false);
        }
        for r in b.records.into_iter().filter(|r| r.kind == kind::IDENTITY) {
            let id = Identity::decode(&open(records, kind::IDENTITY, &r.body)?)?;
            match &first {
                None => first = Some(id.clone()),
                Some(f) if f.user() != id.user() || !id.is_this_device(&f.device()) => {
                    bad = Some("identity of another device");
                    return Ok(false);
                }
                Some(_) => {}
            }
            if let Some(l) = &last
                && !id.is_this_device(&l.device())
            {
                bad = Some("an identity older than one before it");
                return Ok(false);
            }
            last = Some(id);
        }
        Ok(true)
    })?;
    if let Some(why) = bad {
        return Err(Error::corrupted("feed log", why));
    }
    last.ok_or_else(|| Error::corrupted("feed log", "no identity record at its start"))
}

/// How far the log reaches from `from`, and whether `target` is a batch end
/// on the way ([`log::reach`]).
pub(crate) struct Reach {
    pub end: LogPos,
    pub stopped: Option<String>,
    pub reaches: bool,
}

pub(crate) fn reach(log_dir: &Path, from: LogPos, target: LogPos) -> Result<Reach> {
    let (end, reaches) = log::reach(log_dir, from, target)?;
    Ok(Reach {
        end: end.end,
        stopped: end.stopped,
        reaches,
    })
}

/// Records of consecutive batches waiting to be applied.
#[derive(Default)]
struct Pending {
    /// The last identity record: the log's, which sled may not have yet
    /// (a device given its keys, format 4, just before a power cut).
    identity: Option<Identity>,
    channels: Vec<Vec<u8>>,
    /// Entries per channel, each feed's in log order.
    entries: BTreeMap<WireId, Vec<Vec<u8>>>,
    /// Fork proofs (applied after the entries they are about).
    forks: Vec<Vec<u8>>,
    /// Notices of this user's removal a member handed (format 8), sealed.
    told: Vec<Vec<u8>>,
    /// Expiry floors (format 12), sealed.
    expired: Vec<Vec<u8>>,
    count: usize,
    bytes: usize,
    commit: log::Commit,
    end: Option<LogPos>,
}

/// Apply the log's batches after `from` (sled's position) to sled.
pub(crate) fn catch_up(engine: &mut Engine, from: LogPos, report: &mut OpenReport) -> Result<()> {
    let log_dir = engine.dir.join(crate::log::LOG_DIR);
    engine.replaying = true;
    let mut pending = Pending::default();
    let res = log::scan(&log_dir, from, |b| {
        gather(engine, b, &mut pending, report)?;
        if pending.count >= APPLY_ENTRIES || pending.bytes >= APPLY_BYTES {
            apply(engine, &mut pending, report)?;
        }
        Ok(true)
    })
    .and_then(|_| apply(engine, &mut pending, report));
    engine.replaying = false;
    res
}

fn gather(engine: &Engine, b: LogBatch, p: &mut Pending, report: &mut OpenReport) -> Result<()> {
    report.log_batches += 1;
    for r in b.records {
        match r.kind {
            kind::IDENTITY => {
                let id = Identity::decode(&open(&engine.records, kind::IDENTITY, &r.body)?)?;
                let this = &engine.identity;
                if id.user() != this.user() || !(id.is_this_device(&this.device()) || this.is_this_device(&id.device()))
                {
                    return Err(Error::corrupted("feed log", "identity of another device"));
                }
                // One from before the device moved to its keyed id (a rebuild
                // starts from the last identity the log holds) is not taken.
                let newer = p.identity.as_ref().unwrap_or(this);
                if id.is_this_device(&newer.device()) {
                    p.identity = Some(id);
                }
            }
            kind::CHANNEL => p.channels.push(r.body),
            kind::FORK => p.forks.push(r.body),
            kind::TOLD => p.told.push(r.body),
            kind::EXPIRED => p.expired.push(r.body),
            kind::ENTRY => {
                let env = hearth_core::Envelope::decode(&r.body)?;
                p.count += 1;
                p.bytes += r.body.len();
                report.log_entries += 1;
                p.entries.entry(env.header.wire).or_default().push(r.body);
            }
            kind::COMMIT => {
                let c = open_commit(&engine.records, &r.body)?;
                p.commit.watermark = p.commit.watermark.max(c.watermark);
                p.commit.hlc = p.commit.hlc.max(c.hlc);
            }
            _ => {}
        }
    }
    p.end = Some(b.end);
    Ok(())
}

fn apply(engine: &mut Engine, p: &mut Pending, report: &mut OpenReport) -> Result<()> {
    let Some(end) = p.end.take() else {
        return Ok(());
    };
    // The log holds more than sled: the channels need their summaries.
    engine.ensure_summaries()?;
    let mut batch = sled::Batch::default();
    // Before the entries: this device's own may be signed by the keys it holds.
    if let Some(id) = p.identity.take() {
        let plain = zeroize::Zeroizing::new(id.encode());
        if *plain != *zeroize::Zeroizing::new(engine.identity.encode()) {
            batch.insert(META_IDENTITY, seal_record(&engine.records, META_IDENTITY, &plain)?);
            engine.take_identity(id);
        }
    }
    for sealed in std::mem::take(&mut p.channels) {
        let plain = open(&engine.records, kind::CHANNEL, &sealed)?;
        let (keys, invited) = ChannelRecord::decode_named(&plain)?;
        let id = keys.id();
        match engine.channels.get_mut(&id) {
            None => {
                let k = channel_key(&keys.wire());
                batch.insert(&k[..], seal_record(&engine.records, &k, &plain)?);
                engine.load_channel(keys)?;
                if let Some(ch) = engine.channels.get_mut(&id) {
                    ch.invited_name = invited;
                }
            }
            // A later record of a known channel brings key generations.
            Some(ch) => {
                let mut added = false;
                for (n, key) in keys.generations() {
                    added |= ch.keys.add_generation(n, key.clone());
                }
                if added {
                    let k = channel_key(&ch.keys.wire());
                    let record = ChannelRecord::encode_named(&ch.keys, ch.invited_name.as_deref());
                    batch.insert(&k[..], seal_record(&engine.records, &k, &record)?);
                }
            }
        }
    }
    engine.tree.apply_batch(batch)?;
    // Expiry floors before the entries: whether a stub's epoch dies
    // depends on what is expired.
    for sealed in std::mem::take(&mut p.expired) {
        match open(&engine.records, kind::EXPIRED, &sealed).and_then(|plain| engine.replay_floor(&plain)) {
            Ok(true) => {}
            Ok(false) => report
                .skipped
                .push("an expiry floor of a channel with no key record".into()),
            Err(e) => report.skipped.push(format!("feed log expiry floor: {e}")),
        }
    }
    for (wire, entries) in std::mem::take(&mut p.entries) {
        match engine.ingest(&wire, entries) {
            Ok(r) => {
                for x in r.rejected {
                    report.skipped.push(format!(
                        "feed log entry {}/{}: {}",
                        x.device.map(|d| d.to_string()).unwrap_or_default(),
                        x.seq.unwrap_or(0),
                        x.reason
                    ));
                }
            }
            Err(Error::NotFound { .. }) => report
                .skipped
                .push("feed log entries of a channel with no key record".to_string()),
            Err(e) => return Err(e),
        }
        engine.evict()?;
    }
    let mut batch = sled::Batch::default();
    for bytes in std::mem::take(&mut p.forks) {
        match hearth_core::ForkProof::decode(&bytes) {
            Ok((_, fork)) if engine.by_wire.contains_key(&fork.wire) => {
                batch.insert(&prefixed(T_FORKS, &fork.wire, &fork.device)[..], bytes);
            }
            Ok(_) => report
                .skipped
                .push("a fork proof of a channel with no key record".into()),
            Err(e) => report.skipped.push(format!("feed log fork proof: {e}")),
        }
    }
    for sealed in std::mem::take(&mut p.told) {
        let told = open(&engine.records, kind::TOLD, &sealed)
            .and_then(|plain| Ok(hearth_core::peer::RemovedNotice::decode(&plain)?));
        match told {
            Ok(n) => match engine.by_wire.get(&n.wire).copied() {
                Some(channel) => {
                    let k = crate::layout::channel_prefix(crate::layout::T_TOLD, &n.wire);
                    batch.insert(&k[..], seal_record(&engine.records, &k, &n.encode())?);
                    if let Some(ch) = engine.channels.get_mut(&channel) {
                        ch.told = Some(n);
                    }
                }
                None => report
                    .skipped
                    .push("a notice of a removal from a channel with no key record".into()),
            },
            Err(e) => report.skipped.push(format!("feed log notice of a removal: {e}")),
        }
    }
    engine.tree.apply_batch(batch)?;
    engine.watermark = engine.watermark.max(p.commit.watermark);
    engine.hlc.observe(Timestamp(p.commit.hlc));
    let mut batch = sled::Batch::default();
    engine.put_root(&mut batch)?;
    batch.insert(META_HLC, hlc_value(&engine.records, engine.hlc.last().0)?);
    batch.insert(META_LOG, &end.encode()[..]);
    engine.tree.apply_batch(batch)?;
    engine.dirty = true;
    p.count = 0;
    p.bytes = 0;
    Ok(())
}

/// Write the feed log of a format 1 store from its sled tree: the identity,
/// every channel's keys, every feed entry in order, in batches closed by
/// commit records carrying sled's watermark and clock. Written into
/// `log.tmp/` and renamed to `log/` once durable, so an interrupted migration
/// leaves no log at all. Returns how many entries it wrote.
pub(crate) fn migrate(dir: &Path, tree: &sled::Tree, records: &SecretKey, identity: &Identity) -> Result<u64> {
    let tmp = dir.join(LOG_TMP_DIR);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let mut log = Log::create(&tmp)?;
    let meta = |k: &[u8]| -> Result<u64> { tree.get(k)?.map(|v| key_u64(&v)).transpose().map(|v| v.unwrap_or(0)) };
    let commit = log::Commit {
        watermark: meta(META_WATERMARK)?,
        hlc: tree
            .get(META_HLC)?
            .map(|v| read_hlc(records, &v))
            .transpose()?
            .unwrap_or(0),
    };
    let sealed_commit = seal(
        records,
        kind::COMMIT,
        &postcard::to_stdvec(&commit).expect("commit encodes"),
    )?;
    let mut buf = Vec::new();
    let mut count = 0usize;
    let flush = |buf: &mut Vec<u8>, log: &mut Log| -> Result<()> {
        log::encode_record(buf, kind::COMMIT, &sealed_commit);
        log.append(buf)?;
        buf.clear();
        Ok(())
    };
    log::encode_record(
        &mut buf,
        kind::IDENTITY,
        &seal(records, kind::IDENTITY, &identity.encode())?,
    );
    let mut wires = Vec::new();
    for row in tree.scan_prefix([T_CHANNELS]) {
        let (k, v) = row?;
        let plain = open_record(records, &k, &v)?;
        let keys = ChannelRecord::decode(&plain)?;
        log::encode_record(&mut buf, kind::CHANNEL, &seal(records, kind::CHANNEL, &plain)?);
        wires.push(keys.wire());
    }
    flush(&mut buf, &mut log)?;
    let mut entries = 0u64;
    for wire in wires {
        for row in tree.scan_prefix(channel_prefix(T_HEADS, &wire)) {
            let (k, v) = row?;
            let head: FeedHead = postcard::from_bytes(&v).map_err(|e| Error::corrupted("feed head", e))?;
            let device = hearth_core::DeviceId::from_slice(&k[33..])?;
            for seq in 1..=head.seq {
                let bytes = tree
                    .get(feed_key(&wire, &device, seq))?
                    .ok_or_else(|| Error::corrupted("feed", format!("entry {device}/{seq} is missing")))?;
                log::encode_record(&mut buf, kind::ENTRY, &bytes);
                entries += 1;
                count += 1;
                if count >= APPLY_ENTRIES || buf.len() >= APPLY_BYTES {
                    flush(&mut buf, &mut log)?;
                    count = 0;
                }
            }
        }
    }
    if count > 0 {
        flush(&mut buf, &mut log)?;
    }
    log.sync()?;
    drop(log);
    std::fs::rename(&tmp, dir.join(crate::log::LOG_DIR))?;
    crate::durable::sync_dir(dir)?;
    Ok(entries)
}
