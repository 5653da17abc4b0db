//! Feed entries: the unit of the commit log and of sync.
//!
//! ```text
//! header (clear): version, channel wire id, user, device, seq, hash of entry seq-1
//! body (sealed):  XChaCha20-Poly1305(feed key, random nonce, aad = header bytes)
//!                 of postcard(EntryBody { epoch, change })
//! signature:      ed25519 by the user over header bytes | body
//! ```
//!
//! The same bytes are stored and sent: an entry is sealed once. Anyone can check
//! the signature and the chain (a relay can); only members can open the body.

use serde::{Deserialize, Serialize};

use crate::channel::ChannelKeys;
use crate::error::{Error, Result};
use crate::id::{DeviceId, Epoch, UserId, WireId};
use crate::identity::{Identity, verify_signature};
use crate::seal::{open, seal};

/// The envelope format this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Largest encoded entry accepted, kept well below sled's 128 KiB blob threshold.
pub const MAX_ENTRY_BYTES: usize = 96 * 1024;

/// A blake3 hash of an encoded entry; entry `n` names entry `n-1` by it.
pub type EntryHash = [u8; 32];

/// The clear part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeader {
    /// Format version.
    pub version: u8,
    /// The channel's wire id.
    pub wire: WireId,
    /// The author (signer).
    pub user: UserId,
    /// The writing device (its automerge actor).
    pub device: DeviceId,
    /// Position in the device's feed for this channel, from 1.
    pub seq: u64,
    /// Hash of entry `seq - 1`, zero for the first entry.
    pub prev: EntryHash,
}

/// The sealed part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    /// The epoch document the change belongs to.
    pub epoch: Epoch,
    /// The automerge change bytes.
    pub change: Vec<u8>,
}

/// A decoded (not yet opened) entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The clear header.
    pub header: EntryHeader,
    /// The sealed body.
    pub body: Vec<u8>,
    /// ed25519 signature over header bytes | body.
    pub sig: Vec<u8>,
}

fn signed_bytes(header_bytes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(header_bytes.len() + body.len());
    m.extend_from_slice(header_bytes);
    m.extend_from_slice(body);
    m
}

impl Envelope {
    /// Seal and sign a new entry; returns its bytes and its hash.
    pub fn seal(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
    ) -> Result<(Vec<u8>, EntryHash)> {
        let header = EntryHeader {
            version: ENVELOPE_VERSION,
            wire: keys.wire(),
            user: identity.user(),
            device: identity.device(),
            seq,
            prev,
        };
        let hb = postcard::to_stdvec(&header).expect("header encodes");
        let plain = postcard::to_stdvec(body).expect("body encodes");
        let sealed = seal(keys.feed_key(), &hb, &plain)?;
        let sig = identity.sign(&signed_bytes(&hb, &sealed)).to_vec();
        let bytes = postcard::to_stdvec(&Envelope {
            header,
            body: sealed,
            sig,
        })
        .expect("envelope encodes");
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(Error::TooLarge {
                what: "feed entry",
                size: bytes.len(),
                limit: MAX_ENTRY_BYTES,
            });
        }
        let hash = *blake3::hash(&bytes).as_bytes();
        Ok((bytes, hash))
    }

    /// Decode entry bytes (size-checked first). Nothing is trusted yet.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(Error::TooLarge {
                what: "feed entry",
                size: bytes.len(),
                limit: MAX_ENTRY_BYTES,
            });
        }
        let (env, rest): (Envelope, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted("feed entry", e))?;
        if !rest.is_empty() {
            return Err(Error::corrupted("feed entry", "trailing bytes"));
        }
        if env.header.version != ENVELOPE_VERSION {
            return Err(Error::UnsupportedFormat {
                what: "feed entry",
                found: env.header.version,
                expected: ENVELOPE_VERSION,
            });
        }
        if env.header.seq == 0 {
            return Err(Error::corrupted("feed entry", "sequence numbers start at 1"));
        }
        // One entry, one encoding: postcard accepts over-long varints, and an
        // entry re-encoded differently would verify (the signature covers the
        // re-encoded header) yet hash differently, breaking chains and dedup.
        // Found by fuzzing (fuzz/corpus/envelope/crash-overlong-*).
        if postcard::to_stdvec(&env).map_err(|e| Error::corrupted("feed entry", e))? != bytes {
            return Err(Error::corrupted("feed entry", "not in canonical encoding"));
        }
        Ok(env)
    }

    /// The hash of an entry's bytes.
    pub fn hash_of(bytes: &[u8]) -> EntryHash {
        *blake3::hash(bytes).as_bytes()
    }

    /// Check the author's signature (no key needed: a relay can do this).
    pub fn verify(&self) -> Result<()> {
        let sig: [u8; 64] = self
            .sig
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupted("feed entry", "signature length"))?;
        let hb = postcard::to_stdvec(&self.header).expect("header encodes");
        verify_signature(&self.header.user, &signed_bytes(&hb, &self.body), &sig)
    }

    /// Whether this entry may follow a feed held up to `have` (whose entry
    /// `have` hashes to `prev`) and owned by `owner`: signature first (a forged
    /// entry is refused as forged wherever it claims to sit), then the position
    /// (no gap), the chain (`prev`) and the owner (one user per device). The
    /// same rules for members and relays; the reason is what peers are told.
    pub fn check_next(&self, have: u64, prev: &EntryHash, owner: Option<UserId>) -> std::result::Result<(), String> {
        self.verify().map_err(|e| e.to_string())?;
        if self.header.seq != have + 1 {
            return Err(format!("gap in the feed: expected entry {}", have + 1));
        }
        if self.header.prev != *prev {
            return Err("does not chain onto the previous entry".into());
        }
        if owner.is_some_and(|o| o != self.header.user) {
            return Err("device belongs to another user".into());
        }
        Ok(())
    }

    /// Open the body with the channel keys (a member only). Verify first.
    pub fn open(&self, keys: &ChannelKeys) -> Result<EntryBody> {
        if self.header.wire != keys.wire() {
            return Err(Error::corrupted("feed entry", "belongs to another channel"));
        }
        let hb = postcard::to_stdvec(&self.header).expect("header encodes");
        let plain = open(keys.feed_key(), &hb, &self.body, "feed entry")?;
        postcard::from_bytes(&plain).map_err(|e| Error::corrupted("feed entry body", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_verify_open_and_tamper() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let body = EntryBody {
            epoch: 1,
            change: vec![1, 2, 3],
        };
        let (bytes, hash) = Envelope::seal(&keys, &me, 1, [0; 32], &body).unwrap();
        assert_eq!(hash, Envelope::hash_of(&bytes));
        let env = Envelope::decode(&bytes).unwrap();
        env.verify().unwrap();
        assert_eq!(env.open(&keys).unwrap(), body);
        assert!(env.open(&ChannelKeys::generate().unwrap()).is_err());
        let mut forged = env.clone();
        forged.header.seq = 2;
        assert!(forged.verify().is_err());
        assert!(forged.open(&keys).is_err());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(e) = Envelope::decode(&b) {
                assert!(
                    e.verify().is_err() || e.open(&keys).is_err(),
                    "flip at {i} went unnoticed"
                );
            }
        }
    }
}
