//! Proof that an author forked a feed: two entries it signed that cannot both
//! be in one feed.
//!
//! A feed is a hash chain, so an author that signs two different entries at one
//! position (or an entry whose `prev` names something other than the entry
//! held before it) has forked it. Whoever holds both signed entries can show
//! anyone else that the *author* did it: a peer that merely forwarded one
//! branch is not to blame. Hearth keeps such a proof per feed, reports it and
//! refuses the second branch.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, MAX_ENTRY_BYTES};
use crate::error::{Error, Result};
use crate::id::{DeviceId, UserId, WireId};

/// Two entries of one feed, signed by its author, that cannot both be in it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkProof {
    /// An entry held (envelope bytes).
    pub first: Vec<u8>,
    /// The entry that conflicts with it: the same position with other bytes,
    /// or the next position naming another previous entry.
    pub second: Vec<u8>,
}

/// What a [`ForkProof`] shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    /// The channel.
    pub wire: WireId,
    /// The author who signed both entries.
    pub user: UserId,
    /// The forked feed's device.
    pub device: DeviceId,
    /// The position with two versions.
    pub seq: u64,
}

impl std::fmt::Debug for ForkProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.check() {
            Ok(fork) => write!(f, "ForkProof({fork:?})"),
            Err(_) => write!(f, "ForkProof(invalid)"),
        }
    }
}

impl ForkProof {
    /// The largest encoded proof.
    pub const MAX_BYTES: usize = 2 * MAX_ENTRY_BYTES + 16;

    /// Check the proof: both entries decode, carry valid signatures of the
    /// same author, name the same channel and device, and conflict.
    pub fn check(&self) -> Result<Fork> {
        let bad = |why: &'static str| Error::corrupted("fork proof", why);
        let a = Envelope::decode(&self.first)?;
        let b = Envelope::decode(&self.second)?;
        a.verify()?;
        b.verify()?;
        let (ha, hb) = (&a.header, &b.header);
        if ha.wire != hb.wire || ha.device != hb.device || ha.user != hb.user {
            return Err(bad("the entries are of different feeds"));
        }
        let conflict = if ha.seq == hb.seq {
            self.first != self.second
        } else {
            hb.seq.checked_sub(1) == Some(ha.seq) && hb.prev != Envelope::hash_of(&self.first)
        };
        if !conflict {
            return Err(bad("the entries do not conflict"));
        }
        Ok(Fork {
            wire: ha.wire,
            user: ha.user,
            device: ha.device,
            seq: ha.seq,
        })
    }

    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a fork proof encodes")
    }

    /// Decode and check what [`ForkProof::encode`] wrote (from the log, or a peer).
    pub fn decode(bytes: &[u8]) -> Result<(Self, Fork)> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(Error::TooLarge {
                what: "fork proof",
                size: bytes.len(),
                limit: Self::MAX_BYTES,
            });
        }
        let (proof, rest): (ForkProof, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted("fork proof", e))?;
        if !rest.is_empty() || proof.encode() != bytes {
            return Err(Error::corrupted("fork proof", "not in canonical encoding"));
        }
        let fork = proof.check()?;
        Ok((proof, fork))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelKeys;
    use crate::envelope::EntryBody;
    use crate::identity::Identity;

    fn entry(keys: &ChannelKeys, me: &Identity, seq: u64, prev: [u8; 32], change: u8) -> Vec<u8> {
        let body = EntryBody {
            epoch: 1,
            change: vec![change],
        };
        Envelope::seal(keys, me, seq, prev, &body).unwrap().0
    }

    #[test]
    fn both_kinds_of_fork_are_proved_and_nothing_else() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let one = entry(&keys, &me, 1, [0; 32], 1);
        let other_one = entry(&keys, &me, 1, [0; 32], 2);
        let two = entry(&keys, &me, 2, Envelope::hash_of(&one), 3);
        let two_on_other = entry(&keys, &me, 2, Envelope::hash_of(&other_one), 4);

        let same_seq = ForkProof {
            first: one.clone(),
            second: other_one.clone(),
        };
        let fork = same_seq.check().unwrap();
        assert_eq!((fork.user, fork.device, fork.seq), (me.user(), me.device(), 1));
        let next_seq = ForkProof {
            first: one.clone(),
            second: two_on_other,
        };
        assert_eq!(next_seq.check().unwrap().seq, 1);
        assert_eq!(ForkProof::decode(&next_seq.encode()).unwrap().0, next_seq);

        // A chain is no fork; neither is one entry twice, nor two feeds.
        for (first, second) in [
            (one.clone(), two.clone()),
            (one.clone(), one.clone()),
            (two.clone(), one.clone()),
            (
                one.clone(),
                entry(&keys, &Identity::generate("b").unwrap(), 1, [0; 32], 2),
            ),
        ] {
            assert!(ForkProof { first, second }.check().is_err());
        }
        // A forged second entry proves nothing.
        let mut forged = Envelope::decode(&other_one).unwrap();
        forged.body[0] ^= 1;
        let forged = postcard::to_stdvec(&forged).unwrap();
        assert!(
            ForkProof {
                first: one,
                second: forged
            }
            .check()
            .is_err()
        );
    }
}
