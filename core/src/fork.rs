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

use crate::device::{DeviceCert, verify_chain};
use crate::envelope::{ENVELOPE_V2, Envelope, MAX_ENTRY_BYTES, MAX_ENTRY_CERTS};
use crate::error::{Error, Result};
use crate::id::{DeviceId, UserId, WireId};

/// Two entries of one feed, signed by its author, that cannot both be in it.
///
/// Encoded as postcard `{ first, second }`; a proof of format 2 entries
/// without their chain also carries the chain that certifies the device key
/// they are signed with, as `0x00 | postcard { first, second, certs }` (a
/// first entry is never empty, so the leading zero tells them apart).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkProof {
    /// An entry held (envelope bytes).
    pub first: Vec<u8>,
    /// The entry that conflicts with it: the same position with other bytes,
    /// or the next position naming another previous entry.
    pub second: Vec<u8>,
    /// The device's certificate chain, for format 2 entries that do not
    /// carry it themselves (empty otherwise).
    #[serde(skip)]
    pub certs: Vec<DeviceCert>,
}

/// A proof with a chain, as encoded after its leading zero.
#[derive(Serialize, Deserialize)]
struct WithChain {
    first: Vec<u8>,
    second: Vec<u8>,
    certs: Vec<DeviceCert>,
}

/// Verify an entry's signature: its own chain, else `certs`, for a format 2
/// entry; the user's key for format 1.
fn verify_entry(env: &Envelope, certs: &[DeviceCert]) -> Result<()> {
    if env.header.version < ENVELOPE_V2 || !env.certs.is_empty() || certs.is_empty() {
        return env.verify();
    }
    let body = verify_chain(certs)?;
    if body.user != env.header.user || body.device != env.header.device {
        return Err(Error::corrupted("fork proof", "a certificate of another device"));
    }
    env.verify_with(&body.keys.signing)
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
        verify_entry(&a, &self.certs)?;
        verify_entry(&b, &self.certs)?;
        let (ha, hb) = (&a.header, &b.header);
        if ha.wire != hb.wire || ha.device != hb.device || ha.user != hb.user {
            return Err(bad("the entries are of different feeds"));
        }
        // Two copies of one format 3 entry may differ in the segments each
        // still carries: only what the hash covers conflicts.
        let conflict = if ha.seq == hb.seq {
            a.hash() != b.hash()
        } else {
            hb.seq.checked_sub(1) == Some(ha.seq) && hb.prev != a.hash()
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

    /// Encode (see the type's docs).
    pub fn encode(&self) -> Vec<u8> {
        if self.certs.is_empty() {
            return postcard::to_stdvec(self).expect("a fork proof encodes");
        }
        let mut out = vec![0];
        out.extend(
            postcard::to_stdvec(&WithChain {
                first: self.first.clone(),
                second: self.second.clone(),
                certs: self.certs.clone(),
            })
            .expect("a fork proof encodes"),
        );
        out
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
        let corrupted = |e: &dyn std::fmt::Display| Error::corrupted("fork proof", e.to_string());
        let (proof, rest) = match bytes.split_first() {
            Some((0, tail)) => {
                let (w, rest): (WithChain, &[u8]) = postcard::take_from_bytes(tail).map_err(|e| corrupted(&e))?;
                if w.certs.is_empty() || w.certs.len() > MAX_ENTRY_CERTS {
                    return Err(corrupted(&"a chain of the wrong length"));
                }
                let proof = ForkProof {
                    first: w.first,
                    second: w.second,
                    certs: w.certs,
                };
                (proof, rest)
            }
            _ => postcard::take_from_bytes::<ForkProof>(bytes).map_err(|e| corrupted(&e))?,
        };
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
            certs: Vec::new(),
        };
        let fork = same_seq.check().unwrap();
        assert_eq!((fork.user, fork.device, fork.seq), (me.user(), me.device(), 1));
        let next_seq = ForkProof {
            first: one.clone(),
            second: two_on_other,
            certs: Vec::new(),
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
            let certs = Vec::new();
            assert!(ForkProof { first, second, certs }.check().is_err());
        }
        // A forged second entry proves nothing.
        let mut forged = Envelope::decode(&other_one).unwrap();
        forged.body[0] ^= 1;
        let forged = postcard::to_stdvec(&forged).unwrap();
        assert!(
            ForkProof {
                first: one,
                second: forged,
                certs: Vec::new(),
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn a_fork_of_device_signed_entries_is_proved_with_their_chain() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let chain = vec![me.device_cert().unwrap().clone()];
        let body = |b: u8| EntryBody {
            epoch: 1,
            change: vec![b],
        };
        let (one, h1) = Envelope::seal_v2(&keys, &me, 1, [0; 32], &body(1), 0, chain.clone()).unwrap();
        let (two, _) = Envelope::seal_v2(&keys, &me, 2, h1, &body(2), 0, Vec::new()).unwrap();
        let (two_b, _) = Envelope::seal_v2(&keys, &me, 2, h1, &body(3), 0, Vec::new()).unwrap();
        // Neither entry carries the chain: without it nothing is proved.
        let bare = ForkProof {
            first: two.clone(),
            second: two_b.clone(),
            certs: Vec::new(),
        };
        assert!(bare.check().is_err());
        let proof = ForkProof {
            certs: chain.clone(),
            ..bare
        };
        let fork = proof.check().unwrap();
        assert_eq!((fork.device, fork.seq), (me.device(), 2));
        let bytes = proof.encode();
        assert_eq!(bytes[0], 0);
        assert_eq!(ForkProof::decode(&bytes).unwrap().0, proof);
        // Another device's chain proves nothing.
        let other = Identity::generate("b").unwrap();
        let wrong = ForkProof {
            certs: vec![other.device_cert().unwrap().clone()],
            ..proof.clone()
        };
        assert!(wrong.check().is_err());
        // A first entry carrying its own chain needs none in the proof.
        let (one_b, _) = Envelope::seal_v2(&keys, &me, 1, [0; 32], &body(4), 0, chain).unwrap();
        let own = ForkProof {
            first: one,
            second: one_b,
            certs: Vec::new(),
        };
        assert_eq!(own.check().unwrap().seq, 1);
    }
}
