//! The write-ahead journal: the durable record of every acknowledged write.
//!
//! A write is acknowledged once its journal record is on disk (one `fdatasync`
//! per group of concurrent writes). Applying it to automerge and to sled happens
//! alongside, and sled is flushed only at checkpoints, after which the journal is
//! emptied. On open, records past sled's watermark are replayed. This keeps the
//! durable record small and early and the CRDT work off the acknowledgement path
//! (ARCHITECTURE.md explains why this beats flushing sled per write).
//!
//! File format (docs/format.md): a sequence of records
//! `len u32 LE | crc32 u32 LE | seq u64 LE | sealed`, where `len` counts the bytes
//! after itself, the CRC covers `seq | sealed`, and `sealed` is
//! `seal(record key, aad = "journal" | seq BE, postcard(Vec<JournalEntry>))`.
//! A torn or corrupt tail (a record never acknowledged) ends the readable part.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use hearth_core::{ChannelId, Op, SecretKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest journal record accepted when reading (a group of up to
/// `max_batch_ops` ops of at most 16 KiB each stays far below it).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
const RECORD_HEAD: usize = 4 + 4 + 8;

/// One journaled write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A decoded journal record: one group commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// Sequence number, increasing across the life of the store.
    pub seq: u64,
    /// The writes of the group, in order.
    pub entries: Vec<JournalEntry>,
}

fn aad(seq: u64) -> [u8; 15] {
    let mut a = [0u8; 15];
    a[..7].copy_from_slice(b"journal");
    a[7..].copy_from_slice(&seq.to_be_bytes());
    a
}

/// Encode one record.
pub fn encode_record(key: &SecretKey, seq: u64, entries: &[JournalEntry]) -> Result<Vec<u8>> {
    let plain = postcard::to_stdvec(entries).map_err(|e| Error::invalid("journal record", e))?;
    let sealed = hearth_core::seal(key, &aad(seq), &plain)?;
    let len = 4 + 8 + sealed.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&sealed);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// What reading a journal found.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Every readable record, in order.
    pub records: Vec<JournalRecord>,
    /// Bytes of readable records.
    pub valid_len: usize,
    /// Why reading stopped before the end, if it did (a torn tail after a crash,
    /// or damage).
    pub stopped: Option<String>,
}

/// Decode journal bytes. Never panics; stops at the first record that is torn,
/// fails its CRC, is out of sequence or does not open.
pub fn decode_records(key: &SecretKey, bytes: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    let mut pos = 0usize;
    let mut last_seq: Option<u64> = None;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < RECORD_HEAD {
            d.stopped = Some(format!("torn record header at byte {pos}"));
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if !(12..=MAX_RECORD_BYTES).contains(&len) || rest.len() < 4 + len {
            d.stopped = Some(format!("torn or oversized record at byte {pos}"));
            break;
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let body = &rest[8..4 + len];
        if crc32fast::hash(body) != crc {
            d.stopped = Some(format!("checksum mismatch at byte {pos}"));
            break;
        }
        let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        if last_seq.is_some_and(|l| seq <= l) {
            d.stopped = Some(format!("sequence goes backwards at byte {pos}"));
            break;
        }
        let entries = hearth_core::open(key, &aad(seq), &body[8..], "journal record")
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
        last_seq = Some(seq);
        pos += 4 + len;
        d.valid_len = pos;
    }
    d
}

/// The open journal file.
pub struct Journal {
    file: File,
}

impl Journal {
    /// Open (creating if needed) the journal and read what it holds. A torn tail is
    /// cut off so that new records follow the last good one.
    pub fn open(path: &Path, key: &SecretKey) -> Result<(Journal, Decoded)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let decoded = decode_records(key, &bytes);
        if decoded.valid_len < bytes.len() {
            file.set_len(decoded.valid_len as u64)?;
            file.sync_all()?;
        }
        Ok((Journal { file }, decoded))
    }

    /// Append bytes and make them durable.
    pub fn append_durable(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes)?;
        self.file.sync_data()?;
        Ok(())
    }

    /// Empty the journal: everything in it is durable in sled.
    pub fn clear(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::MessageId;

    fn entry(i: u8) -> JournalEntry {
        JournalEntry::Op {
            channel: ChannelId([i; 32]),
            op: Op::ReadUpTo {
                msg: MessageId([i; 24]),
            },
        }
    }

    #[test]
    fn records_round_trip_and_torn_tails_stop_reading() {
        let key = SecretKey::from_bytes([4; 32]);
        let mut bytes = encode_record(&key, 1, &[entry(1)]).unwrap();
        let first = bytes.len();
        bytes.extend(encode_record(&key, 2, &[entry(2), entry(3)]).unwrap());
        let d = decode_records(&key, &bytes);
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.records[1].entries, vec![entry(2), entry(3)]);
        assert!(d.stopped.is_none());
        for cut in 0..bytes.len() {
            let d = decode_records(&key, &bytes[..cut]);
            assert_eq!(d.records.len(), usize::from(cut >= first));
        }
        let mut flipped = bytes.clone();
        flipped[first + 20] ^= 1;
        let d = decode_records(&key, &flipped);
        assert_eq!(d.records.len(), 1);
        assert!(d.stopped.is_some());
        assert_eq!(decode_records(&SecretKey::from_bytes([5; 32]), &bytes).records.len(), 0);
    }

    #[test]
    fn open_cuts_a_torn_tail_so_appends_follow_good_records() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes([4; 32]);
        let path = dir.path().join("j");
        let (mut j, d) = Journal::open(&path, &key).unwrap();
        assert!(d.records.is_empty());
        j.append_durable(&encode_record(&key, 1, &[entry(1)]).unwrap()).unwrap();
        j.append_durable(&[9, 9, 9]).unwrap();
        drop(j);
        let (mut j, d) = Journal::open(&path, &key).unwrap();
        assert_eq!(d.records.len(), 1);
        j.append_durable(&encode_record(&key, 2, &[entry(2)]).unwrap()).unwrap();
        drop(j);
        let (_, d) = Journal::open(&path, &key).unwrap();
        assert_eq!(d.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    }
}
