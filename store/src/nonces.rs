//! The nonces of this device's new entries: counted under a prefix drawn
//! at random for each run of the engine ([`hearth_core::Nonces::Counted`]),
//! so that a live stream carries neither nonce of an entry whose feed it
//! has carried (ARCHITECTURE.md, "Counted nonces").
//!
//! A nonce must never seal two plaintexts under one key. Within a run the
//! prefix is fixed and the counter is the entry's seq, which grows with
//! every entry of a feed; a seal of a seq no higher than one already sealed
//! in the run (an entry sealed, then not written, and sealed again with
//! other content) draws a new prefix first. Across runs (a restart, a
//! crash, a store restored from a backup on another machine) the prefixes
//! are independent draws of 120 bits.

use std::collections::HashMap;

use hearth_core::{NONCE_PREFIX_LEN, Nonces, WireId, random_bytes};

use crate::error::Result;

/// The prefix of this run and the highest seq sealed under it, by feed.
pub(crate) struct FeedNonces {
    prefix: [u8; NONCE_PREFIX_LEN],
    sealed: HashMap<WireId, u64>,
}

impl FeedNonces {
    /// A fresh prefix.
    pub(crate) fn new() -> Result<Self> {
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        random_bytes(&mut prefix)?;
        Ok(FeedNonces {
            prefix,
            sealed: HashMap::new(),
        })
    }

    /// The nonces to seal entry `seq` of this device's feed of `wire` with.
    pub(crate) fn for_entry(&mut self, wire: WireId, seq: u64) -> Result<Nonces> {
        if self.sealed.get(&wire).is_some_and(|&done| seq <= done) {
            *self = FeedNonces::new()?;
        }
        self.sealed.insert(wire, seq);
        Ok(Nonces::Counted(self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_sealed_again_gets_a_new_prefix() {
        let (a, b) = (WireId([1; 32]), WireId([2; 32]));
        let mut n = FeedNonces::new().unwrap();
        let Nonces::Counted(first) = n.for_entry(a, 1).unwrap() else {
            panic!("counted")
        };
        assert_eq!(n.for_entry(a, 2).unwrap(), Nonces::Counted(first));
        assert_eq!(n.for_entry(b, 1).unwrap(), Nonces::Counted(first), "another feed");
        let Nonces::Counted(again) = n.for_entry(a, 2).unwrap() else {
            panic!("counted")
        };
        assert_ne!(again, first, "seq 2 of feed a sealed twice");
        assert_eq!(
            n.for_entry(b, 1).unwrap(),
            Nonces::Counted(again),
            "a new prefix sealed nothing yet"
        );
        assert_ne!(FeedNonces::new().unwrap().prefix, again, "each run draws its own");
    }
}
