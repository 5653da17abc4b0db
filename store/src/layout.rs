//! The on-disk layout: files in the store directory, the sled tree and its keys.
//! docs/format.md describes the same; keep them in step.
//!
//! Integers in keys are fixed-width big-endian so that sled's byte order is
//! numeric order. The tree name carries a version suffix.

use hearth_core::{DeviceId, Epoch, SecretKey, WireId};

use crate::error::{Error, Result};

/// The clear header (Argon2id parameters, salt, wrapped master key).
pub const HEADER_FILE: &str = "header";
/// Held locked (flock) while a process has the store open.
pub const LOCK_FILE: &str = "LOCK";
/// The sled database directory: derived state, rebuilt from the feed log
/// ([`crate::log`]) when it is missing or damaged.
pub const DB_DIR: &str = "db";
/// Where a migration writes the feed log before it is renamed into place.
pub const LOG_TMP_DIR: &str = "log.tmp";
/// A migration's durable copy of a format 1 sled, which it opens and reads
/// (opening sled writes to it) so that the original stays untouched until
/// the log exists.
pub const DB_COPY_DIR: &str = "db.v1";
/// The write-ahead journal of acknowledged operations.
pub const JOURNAL_FILE: &str = "journal";

/// The one sled tree every record lives in. One tree makes every group commit a
/// single atomic `sled::Batch`: entries, heads, summaries and the journal
/// watermark land together or not at all. Tables are told apart by a one-byte
/// prefix; the version is in the tree name.
pub const TREE: &str = "hearth.v1";

/// `M | name` -> meta values (below).
pub const T_META: u8 = b'M';
/// `C | wire id [32]` -> sealed channel record.
pub const T_CHANNELS: u8 = b'C';
/// `F | wire id [32] | device [16] | seq u64` -> envelope bytes (the commit log).
pub const T_FEEDS: u8 = b'F';
/// `H | wire id [32] | device [16]` -> postcard(FeedHead): the version vector.
pub const T_HEADS: u8 = b'H';
/// `E | wire id [32] | epoch u32` -> sealed postcard(EpochSummary).
pub const T_EPOCHS: u8 = b'E';
/// `L | wire id [32] | epoch u32 | ingest u64` -> device [16] | seq u64: the
/// entries of an epoch in the order this store applied them.
pub const T_ELOG: u8 = b'L';
/// `S | wire id [32] | epoch u32 | chunk u16` -> sealed chunk of an automerge save.
pub const T_SNAPS: u8 = b'S';
/// `R | wire id [32]` -> sealed postcard(map writer device -> message id): the
/// delivery receipts this device owes for messages it stored, until it has
/// written them (they survive a crash in the gathering window).
pub const T_OWED: u8 = b'R';
/// `K | wire id [32] | device [16]` -> postcard(ForkProof): the author of
/// that feed signed two versions of it (the first proof found is kept).
pub const T_FORKS: u8 = b'K';
/// `D | wire [32] | device [16]` -> sealed postcard(chain of device
/// certificates): the chain that certifies the key the device signs its
/// feed in this channel with (format 5).
pub const T_CHAINS: u8 = b'D';

/// `B | wire [32]` -> sealed postcard(`RemovedNotice`): a member told this
/// device that its user was removed from the channel, by an admin's signed
/// removal it does not hold (format 8). It writes nothing more there until
/// its roster holds that removal (and so decides).
pub const T_TOLD: u8 = b'B';

/// `P | wire [32] | device [16] | seq u64` -> when (unix ms u64 BE) |
/// postcard(`TextDrop`): this
/// store dropped texts from that stored entry (a delete): the pack it holds
/// now, for the relays it syncs with, which cannot drop a text themselves
/// (store format 11; at most [`MAX_DROPS_PER_CHANNEL`] per channel, the
/// oldest going first).
pub const T_DROPS: u8 = b'P';
/// Most text drops one channel keeps for relays.
pub const MAX_DROPS_PER_CHANNEL: usize = 4096;

/// `U | wire [32] | device [16] | seq u64` -> generation u32 (LE): a feed
/// entry held but not opened yet, sealed under a key generation this device
/// does not hold (format 6). It is applied when the key arrives.
pub const T_UNOPENED: u8 = b'U';

/// `N | wire [32]` -> sealed postcard(front page): the channel's newest
/// top-level messages as a page shows them, with what they were computed
/// from (store format 14, [`crate::front`]).
pub const T_FRONTS: u8 = b'N';

/// `A | wire [32] | chunk u16` -> sealed chunk of postcard(copy of every
/// `E` row of the channel, with a stamp of its feed heads): read by an open
/// instead of the `E` rows, written at a clean close, removed by every
/// batch that writes or removes an `E` row (store format 15,
/// [`crate::summaries`]).
pub const T_ALL_SUMMARIES: u8 = b'A';

/// Key of an entry waiting for its key generation.
pub fn unopened_key(wire: &WireId, device: &DeviceId, seq: u64) -> [u8; 57] {
    let mut k = feed_key(wire, device, seq);
    k[0] = T_UNOPENED;
    k
}

/// Sealed [`hearth_core::Identity`].
pub const META_IDENTITY: &[u8] = b"Midentity";
/// u64 BE: the last journal sequence number whose effects are in sled.
pub const META_WATERMARK: &[u8] = b"Mwatermark";
/// u64 BE: the highest HLC timestamp issued, so the clock never repeats after a restart.
pub const META_HLC: &[u8] = b"Mhlc";
/// Sealed store root (see `root.rs`): digest of every feed head, the
/// watermark and a counter, written with every batch that moves them.
pub const META_ROOT: &[u8] = b"Mroot";
/// u8: the store format of this sled tree ([`STORE_FORMAT`]); absent in format 1.
pub const META_FORMAT: &[u8] = b"Mformat";
/// [`crate::log::LogPos`]: the end of the last feed-log batch applied to sled,
/// written in the same sled batch as that batch's rows.
pub const META_LOG: &[u8] = b"Mlog";
/// [`crate::log::LogPos`]: how far the feed log was durable at the last
/// checkpoint (recorded after the log's fsync, before sled's flush), so it is
/// always inside the durable log. Reading at open starts here.
pub const META_LOG_SYNCED: &[u8] = b"Mlogsynced";
/// Sealed postcard [`crate::compact::CompactDue`]: texts dropped from stored
/// entries since the last compaction (store format 10), for the automatic one.
pub const META_COMPACT_DUE: &[u8] = b"Mcompactdue";
/// `M expired | wire [32]` -> sealed message id [24]: the highest expiry
/// floor applied in that channel (store format 11): messages below it stay
/// expired when its retention is later lengthened or turned off (their
/// texts are gone).
pub const META_EXPIRED: &[u8] = b"Mexpired";

/// `M dead | wire [32]` -> sealed postcard([u32]): the channel's dead epochs
/// (store format 12): every message of each expired, its document, snapshot,
/// epoch log and summary dropped, its entries held as stubs (bodies pruned
/// to their hashes). Absent: none.
pub const META_DEAD: &[u8] = b"Mdead";

/// `M stubbed | wire [32]` -> sealed postcard([u32]): epochs of the channel
/// that stubs came for and that are not dead (store format 12): a later
/// batch that brings a newer epoch may kill them. Absent: none.
pub const META_STUBBED: &[u8] = b"Mstubbed";

/// Key of a channel's [`META_STUBBED`] row.
pub fn stubbed_key(wire: &WireId) -> Vec<u8> {
    let mut k = META_STUBBED.to_vec();
    k.extend_from_slice(&wire.0);
    k
}

/// Key of a channel's [`META_DEAD`] row.
pub fn dead_key(wire: &WireId) -> Vec<u8> {
    let mut k = META_DEAD.to_vec();
    k.extend_from_slice(&wire.0);
    k
}

/// Key of a channel's [`META_EXPIRED`] row.
pub fn expired_key(wire: &WireId) -> Vec<u8> {
    let mut k = META_EXPIRED.to_vec();
    k.extend_from_slice(&wire.0);
    k
}

/// The store format this build writes. 1: everything in sled, no feed log.
/// 2: the feed log (`log/`) is the source of truth and sled is derived.
/// 3: fork proofs (log record kind 5, table `K`).
/// 4: the device has its own keys and certificate (identity record version 2,
/// appended to the log as a second identity record by the migration).
/// 5: feed entries of format 2, signed by device keys; each feed's device
/// chain kept (table `T_CHAINS`, derived from the entries); 4 is only marked.
/// 6: channel rosters (membership ops `mo:` in epoch 0 documents, which
/// older builds refuse as unknown keys); 5 is only marked.
/// 7: the device writes under its keyed id (identity record version 3, with
/// its former ids; appended to the log by the migration), which no legacy
/// binding or format 1 entry may claim; 6 is only marked.
/// 8: a device linked by another device holds no user key, and its identity
/// keeps its whole certificate chain (identity record version 4, which
/// every identity written from now on is); a device told of its user's
/// removal keeps the notice (log kind 10, table `T_TOLD`); 7 is only marked.
/// 9: feed entries of format 3: texts ride in droppable segments beside the
/// change, which names them by content id; a deleted message's texts are
/// dropped from its stored entries; `compact.tmp/` and `compact/` during a
/// compaction; 8 is only marked.
/// 10: feed entries of format 4: an entry's texts sealed together in one
/// pack, deflated; 9 is only marked.
/// 11: a store restored from a backup holds an identity of record version 5
/// (the device's own network key, since it shares the master key with the
/// device backed up); the texts a delete dropped from stored entries are
/// kept for relays (table `P`); 10 is only marked.
/// 12: dead epochs (retention): every message of an epoch expired, its
/// document's rows dropped, its entries held as stubs (bodies pruned to
/// their hashes), listed in `M dead` (and `M stubbed`); 11 is only marked.
/// 13: feed entries of format 5: the change names each text by its slot in
/// the entry's pack, and the sealed body carries one root over them
/// (`hearth_core::textpack`); 12 is only marked.
/// 14: front pages (table `T_FRONTS`): each channel's newest messages,
/// sealed, written at a clean close and removed by any batch that stores
/// its entries or drops its texts; 13 is only marked.
/// 15: summary copies (table `T_ALL_SUMMARIES`): each channel's epoch
/// summaries in one sealed row, written at a clean close and removed by any
/// batch that writes an epoch summary; 14 is only marked.
/// 16: feed entries of format 6: the sealed body holds its change without
/// the chunk's framing and actor, which the entry says already
/// (`hearth_core::chunk::strip_change`), and no epoch but the header's;
/// 15 is only marked.
/// 17: the `early` file of a run that sends its entries before they are
/// durable (`crate::early`), whose unclean end makes the device a new
/// one, its old id kept as a former one (an identity record appended);
/// 16 is only marked.
pub const STORE_FORMAT: u8 = 17;

/// What opening a store of format `from` does to bring it to
/// [`STORE_FORMAT`], step by step (`hearth migrate --check`). Empty when
/// there is nothing to do.
pub fn migration_steps(from: u8) -> Vec<&'static str> {
    let mut steps = Vec::new();
    if from < 2 {
        steps.push(
            "1 -> 2: the feed log (log/) is written from a durable copy of sled (db.v1/), through log.tmp/; \
             sled is then derived from it",
        );
    }
    if from < 4 {
        steps.push(
            "3 -> 4: the device gets keys of its own, certified by its user (an identity record of version 2 \
             appended to the log)",
        );
    }
    if from < 7 {
        steps.push(
            "6 -> 7: the device moves to an id derived from its keys (an identity record of version 3 appended \
             to the log; its old id kept as a former one); it writes new feeds from then on",
        );
    }
    if from < STORE_FORMAT {
        steps.push(
            "the other steps only mark sled: the rows and kinds of record they add come with the content that \
             needs them (fork proofs, device chains, rosters, notices, texts beside their changes, packs, \
             a restored device's own network key, dead epochs, texts named by slot, front pages, summary copies, changes without their framing, \
             the flag of a run that sends entries early)",
        );
        steps.push("sled's format row set to the current format, and the store checkpointed");
    }
    steps
}

/// Name of a table, for error messages and record AAD.
pub fn table_name(tag: u8) -> &'static str {
    match tag {
        T_META => "meta",
        T_CHANNELS => "channels",
        T_FEEDS => "feeds",
        T_HEADS => "heads",
        T_EPOCHS => "epochs",
        T_ELOG => "elog",
        T_SNAPS => "snaps",
        T_OWED => "owed receipts",
        T_FORKS => "forks",
        T_CHAINS => "device chains",
        T_UNOPENED => "unopened entries",
        T_TOLD => "removals told",
        T_DROPS => "text drops",
        T_FRONTS => "front pages",
        T_ALL_SUMMARIES => "summary copies",
        _ => "unknown",
    }
}

/// Key of a channel record.
pub fn channel_key(wire: &WireId) -> [u8; 33] {
    channel_prefix(T_CHANNELS, wire)
}

/// Largest plaintext chunk of a snapshot: records stay far below sled's blob threshold.
pub const SNAPSHOT_CHUNK: usize = 48 * 1024;

/// Key of a feed entry.
pub fn feed_key(wire: &WireId, device: &DeviceId, seq: u64) -> [u8; 57] {
    let mut k = [0u8; 57];
    k[..49].copy_from_slice(&prefixed(T_FEEDS, wire, device));
    k[49..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `tag | wire | device`: a head key, or the prefix of a feed's entries.
pub fn prefixed(tag: u8, wire: &WireId, device: &DeviceId) -> [u8; 49] {
    let mut k = [0u8; 49];
    k[0] = tag;
    k[1..33].copy_from_slice(&wire.0);
    k[33..].copy_from_slice(&device.0);
    k
}

/// `tag | wire`: the prefix of a channel's rows in one table.
pub fn channel_prefix(tag: u8, wire: &WireId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = tag;
    k[1..].copy_from_slice(&wire.0);
    k
}

/// Key of a feed head (and prefix of its entries).
pub fn head_key(wire: &WireId, device: &DeviceId) -> [u8; 49] {
    prefixed(T_HEADS, wire, device)
}

/// Key of an epoch summary (and prefix of its elog and snapshot keys).
pub fn epoch_key(tag: u8, wire: &WireId, epoch: Epoch) -> [u8; 37] {
    let mut k = [0u8; 37];
    k[..33].copy_from_slice(&channel_prefix(tag, wire));
    k[33..].copy_from_slice(&epoch.to_be_bytes());
    k
}

/// Key of an epoch log row.
pub fn elog_key(wire: &WireId, epoch: Epoch, ingest: u64) -> [u8; 45] {
    let mut k = [0u8; 45];
    k[..37].copy_from_slice(&epoch_key(T_ELOG, wire, epoch));
    k[37..].copy_from_slice(&ingest.to_be_bytes());
    k
}

/// Value of an epoch log row.
pub fn elog_value(device: &DeviceId, seq: u64) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..16].copy_from_slice(&device.0);
    v[16..].copy_from_slice(&seq.to_be_bytes());
    v
}

/// Decode an epoch log value.
pub fn decode_elog_value(v: &[u8]) -> Result<(DeviceId, u64)> {
    if v.len() != 24 {
        return Err(Error::corrupted("epoch log", "bad row length"));
    }
    let device = DeviceId::from_slice(&v[..16])?;
    Ok((device, u64::from_be_bytes(v[16..].try_into().expect("8 bytes"))))
}

/// Key of a snapshot chunk.
pub fn snap_key(wire: &WireId, epoch: Epoch, chunk: u16) -> [u8; 39] {
    let mut k = [0u8; 39];
    k[..37].copy_from_slice(&epoch_key(T_SNAPS, wire, epoch));
    k[37..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// Trailing big-endian u64 of a key.
pub fn key_u64(key: &[u8]) -> Result<u64> {
    let n = key.len();
    if n < 8 {
        return Err(Error::corrupted("sled key", "too short"));
    }
    Ok(u64::from_be_bytes(key[n - 8..].try_into().expect("8 bytes")))
}

/// Seal a local record bound to its tree and key, so it cannot be moved.
/// The key itself is the associated data: it names the table and the row.
pub fn seal_record(key: &SecretKey, k: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    Ok(hearth_core::seal(key, &record_aad(k), plain)?)
}

/// The clock row's value (`M hlc`): the HLC high-water mark, sealed (it
/// tells when the store was last written, to the millisecond).
pub fn hlc_value(key: &SecretKey, hlc: u64) -> Result<Vec<u8>> {
    seal_record(key, META_HLC, &hlc.to_be_bytes())
}

/// Read the clock row: sealed from format 3 on, a plain u64 BE before.
pub fn read_hlc(key: &SecretKey, v: &[u8]) -> Result<u64> {
    if v.len() == 8 {
        return key_u64(v);
    }
    key_u64(&open_record(key, META_HLC, v)?)
}

/// Open a record sealed by [`seal_record`].
pub fn open_record(key: &SecretKey, k: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let what = table_name(k.first().copied().unwrap_or(0));
    Ok(hearth_core::open(key, &record_aad(k), sealed, what)?)
}

fn record_aad(k: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(TREE.len() + 1 + k.len());
    aad.extend_from_slice(TREE.as_bytes());
    aad.push(0);
    aad.extend_from_slice(k);
    aad
}

#[cfg(test)]
mod clock_row_tests {
    use super::*;

    #[test]
    fn the_clock_row_is_sealed_and_old_plain_rows_still_read() {
        let key = SecretKey::from_bytes([7; 32]);
        let v = hlc_value(&key, 0x0123_4567_89ab_cdef).unwrap();
        assert!(!v.windows(8).any(|w| w == 0x0123_4567_89ab_cdefu64.to_be_bytes()));
        assert_eq!(read_hlc(&key, &v).unwrap(), 0x0123_4567_89ab_cdef);
        assert!(read_hlc(&SecretKey::from_bytes([8; 32]), &v).is_err());
        assert_eq!(read_hlc(&key, &42u64.to_be_bytes()).unwrap(), 42);
    }
}
