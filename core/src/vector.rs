//! Version vectors: for each device feed of a channel, how far a replica holds it.
//!
//! Feeds are hash chains, so a position (seq, hash of entry seq) names the whole
//! prefix 1..=seq. Two replicas that agree on every position hold the same
//! entries; [`Vector::digest`] compresses that into 8 bytes for the
//! one-round-trip check that two peers are already in sync.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::EntryHash;
use crate::id::DeviceId;

/// How far a replica holds one device's feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPos {
    /// Highest sequence number held (entries 1..=seq are all present).
    pub seq: u64,
    /// Hash of entry `seq`.
    pub hash: EntryHash,
}

/// A channel's version vector: device -> position. Devices with nothing held are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vector(pub BTreeMap<DeviceId, FeedPos>);

/// A run of entries one replica lacks: `device`'s feed, seqs `from..=to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The feed.
    pub device: DeviceId,
    /// First missing seq.
    pub from: u64,
    /// Last missing seq.
    pub to: u64,
}

impl Missing {
    /// Number of entries in the run.
    pub fn len(&self) -> u64 {
        (self.to - self.from).saturating_add(1)
    }

    /// Whether the run is empty (never, for runs [`Vector::lacks`] returns).
    pub fn is_empty(&self) -> bool {
        self.to < self.from
    }
}

impl Vector {
    /// The highest seq held of `device` (0: none).
    pub fn seq(&self, device: &DeviceId) -> u64 {
        self.0.get(device).map_or(0, |p| p.seq)
    }

    /// Entries held in all.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0u64, |s, p| s.saturating_add(p.seq))
    }

    /// An 8-byte digest of every position: equal digests mean equal vectors
    /// (up to a 2^-64 chance), hence the same entries.
    pub fn digest(&self) -> [u8; 8] {
        let mut h = blake3::Hasher::new();
        h.update(b"hearth vector v1");
        for (d, p) in &self.0 {
            h.update(&d.0);
            h.update(&p.seq.to_be_bytes());
            h.update(&p.hash);
        }
        let mut out = [0; 8];
        out.copy_from_slice(&h.finalize().as_bytes()[..8]);
        out
    }

    /// What `self` lacks of what `other` holds, feed by feed.
    pub fn lacks(&self, other: &Vector) -> Vec<Missing> {
        other
            .0
            .iter()
            .filter_map(|(d, p)| {
                let have = self.seq(d);
                (p.seq > have).then_some(Missing {
                    device: *d,
                    from: have + 1,
                    to: p.seq,
                })
            })
            .collect()
    }

    /// Devices where both hold the same seq under different hashes: one of the
    /// two forked from the other (an equivocating writer or a corrupted replica).
    pub fn forks(&self, other: &Vector) -> Vec<DeviceId> {
        self.0
            .iter()
            .filter(|(d, p)| other.0.get(d).is_some_and(|q| q.seq == p.seq && q.hash != p.hash))
            .map(|(d, _)| *d)
            .collect()
    }

    /// Claim one entry less of `device`'s feed (to be sent its last entry
    /// again: a peer's version of it, when the hashes differ). The hash of
    /// the position claimed is not known, so it is left zero.
    pub fn step_back(&mut self, device: &DeviceId) {
        match self.0.get_mut(device) {
            Some(p) if p.seq > 1 => {
                p.seq -= 1;
                p.hash = [0; 32];
            }
            Some(_) => {
                self.0.remove(device);
            }
            None => {}
        }
    }

    /// Whether `self` holds at least everything `other` holds.
    pub fn covers(&self, other: &Vector) -> bool {
        self.lacks(other).is_empty()
    }

    /// Raise positions to `other`'s where it is ahead (what a peer holds after
    /// acknowledging more).
    pub fn merge(&mut self, other: &Vector) {
        for (d, p) in &other.0 {
            let e = self.0.entry(*d).or_insert(*p);
            if p.seq > e.seq {
                *e = *p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[(u8, u64)]) -> Vector {
        Vector(
            items
                .iter()
                .map(|&(d, s)| {
                    (
                        DeviceId([d; 16]),
                        FeedPos {
                            seq: s,
                            hash: [d ^ s as u8; 32],
                        },
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn lacks_covers_digest_and_forks() {
        let a = v(&[(1, 5), (2, 3)]);
        let b = v(&[(1, 7), (3, 2)]);
        assert_eq!(
            a.lacks(&b),
            vec![
                Missing {
                    device: DeviceId([1; 16]),
                    from: 6,
                    to: 7
                },
                Missing {
                    device: DeviceId([3; 16]),
                    from: 1,
                    to: 2
                }
            ]
        );
        assert_eq!(
            b.lacks(&a),
            vec![Missing {
                device: DeviceId([2; 16]),
                from: 1,
                to: 3
            }]
        );
        assert!(!a.covers(&b));
        assert!(a.covers(&v(&[(1, 2)])));
        assert_eq!(a.digest(), v(&[(1, 5), (2, 3)]).digest());
        assert_ne!(a.digest(), b.digest());
        let mut forked = a.clone();
        forked.0.get_mut(&DeviceId([1; 16])).unwrap().hash = [0; 32];
        assert_ne!(a.digest(), forked.digest());
        assert_eq!(a.forks(&forked), vec![DeviceId([1; 16])]);
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m.seq(&DeviceId([1; 16])), 7);
        assert_eq!(m.seq(&DeviceId([2; 16])), 3);
        assert_eq!(m.total(), 12);
    }
}
