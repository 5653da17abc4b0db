//! The store root: a sealed digest of every feed head and the journal
//! watermark, written in every sled batch that moves either, so that a
//! rollback of sled rows (an older head or watermark put back, a head row
//! removed) is found at open. sled is derived from the feed log, so what
//! follows a mismatch is a rebuild from the log.
//!
//! ```text
//! M root = seal(record key, aad = tree | "Mroot", postcard { version 1, counter u64, watermark u64, heads [32] })
//! heads  = XOR over every head of blake3("hearth v1 root head" | wire | device | user | seq BE | hash)
//! ```
//!
//! The XOR makes the digest cheap to keep up to date (a head that moves is
//! taken out and put back in) and independent of row order. The counter grows
//! with every root written.

use hearth_core::{DeviceId, WireId};
use serde::{Deserialize, Serialize};

use crate::channel::FeedHead;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::*;

#[derive(Serialize, Deserialize)]
struct RootRecord {
    version: u8,
    counter: u64,
    watermark: u64,
    heads: [u8; 32],
}

/// One head's term in the digest.
pub(crate) fn head_term(wire: &WireId, device: &DeviceId, head: &FeedHead) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"hearth v1 root head");
    h.update(&wire.0);
    h.update(&device.0);
    h.update(&head.user.0);
    h.update(&head.seq.to_be_bytes());
    h.update(&head.hash);
    *h.finalize().as_bytes()
}

pub(crate) fn xor_into(acc: &mut [u8; 32], term: &[u8; 32]) {
    for (a, t) in acc.iter_mut().zip(term) {
        *a ^= t;
    }
}

impl Engine {
    /// A feed head moves (or appears): keep the digest up to date.
    pub(crate) fn root_head_moved(&mut self, wire: &WireId, device: &DeviceId, old: Option<&FeedHead>, new: &FeedHead) {
        if let Some(old) = old {
            xor_into(&mut self.root_heads, &head_term(wire, device, old));
        }
        xor_into(&mut self.root_heads, &head_term(wire, device, new));
    }

    /// Put the watermark and a new root into a batch that moves heads or the
    /// watermark.
    pub(crate) fn put_root(&mut self, batch: &mut sled::Batch) -> Result<()> {
        self.root_counter += 1;
        let rec = RootRecord {
            version: 1,
            counter: self.root_counter,
            watermark: self.watermark,
            heads: self.root_heads,
        };
        let plain = postcard::to_stdvec(&rec).expect("root encodes");
        batch.insert(META_WATERMARK, &self.watermark.to_be_bytes()[..]);
        batch.insert(META_ROOT, seal_record(&self.records, META_ROOT, &plain)?);
        Ok(())
    }

    /// At open, once the heads and the watermark are loaded: they must be the
    /// ones the last root was written with. A store without a root (written
    /// before format 3) gets one with its next batch.
    pub(crate) fn check_root(&mut self) -> Result<()> {
        let Some(v) = self.tree.get(META_ROOT)? else {
            return Ok(());
        };
        let plain = open_record(&self.records, META_ROOT, &v)?;
        let rec: RootRecord = postcard::from_bytes(&plain).map_err(|e| Error::corrupted("store root", e))?;
        if rec.version != 1 {
            return Err(Error::corrupted(
                "store root",
                format!("unknown version {}", rec.version),
            ));
        }
        if rec.heads != self.root_heads || rec.watermark != self.watermark {
            return Err(Error::corrupted(
                "store root",
                "sled's feed heads or journal watermark are not those of its last write: rows were rolled back or removed",
            ));
        }
        self.root_counter = rec.counter;
        Ok(())
    }
}
