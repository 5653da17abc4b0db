//! Membership proofs of the sync protocol (protocol 2).
//!
//! A peer learns about a channel only from a peer that proves, on this
//! connection, that it holds the channel's access key
//! ([`hearth_core::ChannelKeys::access`], derived from the channel key; it
//! opens nothing). All proofs are keyed BLAKE3 under that key, over the
//! requester's fresh nonce and both peer ids (which Noise authenticated), so
//! a proof is good for one connection between these two peers only:
//!
//! ```text
//! tag    = BLAKE3-keyed(access, "hello"  | nonce | requester | responder)[..8]
//! digest = BLAKE3-keyed(access, "digest" | nonce | vector digest)[..6]
//! proof  = XOR over matched channels of
//!          BLAKE3-keyed(access, "answer" | nonce | requester | responder | matched)[..16]
//! ```
//!
//! The Hello lists `(tag, digest)` per channel: a responder without the key
//! cannot tell which channel a tag names, nor compare vectors. The responder
//! computes the tag of each channel it holds, marks those it found in a
//! bitmap (`matched`) and proves all of them at once with one aggregate MAC
//! (the XOR of per-channel MACs: forging it needs every key in the set).
//! Every part is length-prefixed before it is hashed.

use std::collections::BTreeMap;

use hearth_core::{SecretKey, WireId};

/// A requester's fresh random value, one per Hello.
pub type Nonce = [u8; 16];

/// A replica's access keys by channel.
pub type Keyring = BTreeMap<WireId, SecretKey>;

/// The two ends of a connection, by peer id bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ends {
    /// The peer that sent the Hello.
    pub requester: Vec<u8>,
    /// The peer that answers it.
    pub responder: Vec<u8>,
}

fn mac(key: &SecretKey, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key.expose());
    h.update(label);
    for p in parts {
        h.update(&(p.len() as u32).to_le_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// A fresh nonce.
pub fn nonce() -> Nonce {
    let mut n = [0; 16];
    // The OS generator failing leaves a zero nonce: proofs are then replayable
    // on this pair of peers only, which a failing generator breaks worse anyway.
    let _ = hearth_core::random_bytes(&mut n);
    n
}

/// The tag that names a channel in a Hello between `ends`.
pub fn tag(access: &SecretKey, nonce: &Nonce, ends: &Ends) -> [u8; 8] {
    let m = mac(
        access,
        b"hearth sync 2 hello",
        &[nonce, &ends.requester, &ends.responder],
    );
    m[..8].try_into().expect("8 bytes")
}

/// A vector digest as a Hello carries it: comparable only with the key. Six
/// bytes: two replicas that differ are taken for equal with a chance of one
/// in 2^48 per channel and session, and the next session (another nonce)
/// compares again.
pub fn digest(access: &SecretKey, nonce: &Nonce, vector_digest: &[u8; 8]) -> [u8; 6] {
    let m = mac(access, b"hearth sync 2 digest", &[nonce, vector_digest]);
    m[..6].try_into().expect("6 bytes")
}

/// The responder's aggregate proof that it holds every channel set in `matched`.
pub fn answer<'a>(
    keys: impl IntoIterator<Item = &'a SecretKey>,
    nonce: &Nonce,
    ends: &Ends,
    matched: &[u8],
) -> [u8; 16] {
    let mut out = [0u8; 16];
    for k in keys {
        let m = mac(
            k,
            b"hearth sync 2 answer",
            &[nonce, &ends.requester, &ends.responder, matched],
        );
        for (o, b) in out.iter_mut().zip(m) {
            *o ^= b;
        }
    }
    out
}

/// Which side of a session a device proof ([`Who`]) speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhoRole {
    /// The requester, in its Hello.
    Hello,
    /// The responder, in its answer (which also covers `matched`).
    Answer,
}

/// A device's proof, on one connection, that it is the device it names
/// (docs/trust.md, "Serve only members", the plan for item 5): its device
/// key's signature over the Hello's nonce and both peer ids (and, in an
/// answer, the bitmap of the channels matched). The chain that certifies
/// the key travels only when the peer has not seen it; otherwise the peer
/// takes the key from the chain its feeds hold. Not on the wire yet.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Who {
    /// The device.
    pub device: hearth_core::DeviceId,
    /// Its certificate chain, or empty.
    pub chain: Vec<hearth_core::device::DeviceCert>,
    /// The device key's signature ([`who_message`]).
    pub sig: serde_bytes::ByteArray<64>,
}

/// The signing-domain label of [`Who`] proofs.
const WHO_DOMAIN: &[u8] = b"hearth v1 sync who";

/// What a [`Who`] signature covers: the role, the nonce, both ends and
/// (for an answer) the matched bitmap, each length-prefixed.
pub fn who_message(role: WhoRole, nonce: &Nonce, ends: &Ends, matched: &[u8]) -> Vec<u8> {
    hearth_core::device::domain_message(WHO_DOMAIN, &who_body(role, nonce, ends, matched))
}

fn who_body(role: WhoRole, nonce: &Nonce, ends: &Ends, matched: &[u8]) -> Vec<u8> {
    let mut m = vec![match role {
        WhoRole::Hello => 0u8,
        WhoRole::Answer => 1,
    }];
    let matched: &[u8] = if role == WhoRole::Answer { matched } else { &[] };
    for p in [&nonce[..], &ends.requester, &ends.responder, matched] {
        m.extend_from_slice(&(p.len() as u32).to_le_bytes());
        m.extend_from_slice(p);
    }
    m
}

impl Who {
    /// This device's proof for `role` on this connection; `chain` is its
    /// certificate chain, or empty when the peer holds it already.
    pub fn sign(
        keys: &hearth_core::device::DeviceKeys,
        chain: Vec<hearth_core::device::DeviceCert>,
        role: WhoRole,
        nonce: &Nonce,
        ends: &Ends,
        matched: &[u8],
    ) -> Who {
        let sig = keys.sign(WHO_DOMAIN, &who_body(role, nonce, ends, matched));
        Who {
            device: keys.device_id(),
            chain,
            sig: serde_bytes::ByteArray::new(sig),
        }
    }

    /// Check the proof. `held` is the key a feed of the device's holds, if
    /// any; a chain sent must verify, end at this device, and (if a key is
    /// held) certify that key. Returns the device's user and key.
    pub fn verify(
        &self,
        held: Option<(hearth_core::UserId, [u8; 32])>,
        role: WhoRole,
        nonce: &Nonce,
        ends: &Ends,
        matched: &[u8],
    ) -> hearth_core::Result<(hearth_core::UserId, [u8; 32])> {
        let bad = |why: &str| hearth_core::Error::Corrupted {
            what: "device proof",
            detail: why.to_string(),
        };
        let (user, key) = if self.chain.is_empty() {
            held.ok_or_else(|| bad("no chain, and none held for the device"))?
        } else {
            let body = hearth_core::device::verify_chain(&self.chain)?;
            if body.device != self.device {
                return Err(bad("a chain of another device"));
            }
            if held.is_some_and(|(_, k)| k != body.keys.signing) {
                return Err(bad("a chain with another key than the one held"));
            }
            (body.user, body.keys.signing)
        };
        hearth_core::verify_signature(
            &hearth_core::UserId(key),
            &who_message(role, nonce, ends, matched),
            &self.sig,
        )
        .map_err(|_| bad("a signature that does not verify"))?;
        Ok((user, key))
    }
}

/// A bitmap of `n` bits, bit `i` set when `set(i)`.
pub fn bitmap(n: usize, set: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut map = vec![0u8; n.div_ceil(8)];
    for i in (0..n).filter(|i| set(*i)) {
        map[i / 8] |= 1 << (i % 8);
    }
    map
}

/// Bit `i` of a bitmap (false beyond its end).
pub fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn proofs_depend_on_the_key_the_nonce_and_both_ends() {
        let ends = Ends {
            requester: vec![1; 38],
            responder: vec![2; 38],
        };
        let swapped = Ends {
            requester: ends.responder.clone(),
            responder: ends.requester.clone(),
        };
        let n = [7; 16];
        let t = tag(&key(1), &n, &ends);
        assert_ne!(t, tag(&key(2), &n, &ends));
        assert_ne!(t, tag(&key(1), &[8; 16], &ends));
        assert_ne!(t, tag(&key(1), &n, &swapped));
        assert_ne!(digest(&key(1), &n, &[0; 8]), digest(&key(1), &n, &[1; 8]));
        let map = bitmap(3, |i| i != 1);
        let both = answer([&key(1), &key(3)], &n, &ends, &map);
        assert_ne!(both, answer([&key(1)], &n, &ends, &map), "every key counts");
        assert_ne!(both, answer([&key(1), &key(3)], &n, &ends, &bitmap(3, |_| true)));
        assert_eq!(answer([], &n, &ends, &map), [0; 16]);
    }

    #[test]
    fn a_device_proof_holds_for_one_connection_one_role_and_one_device() {
        use hearth_core::Identity;
        let a = Identity::generate("a").unwrap();
        let keys = a.device_keys().unwrap();
        let chain = vec![a.device_cert().unwrap().clone()];
        let ends = Ends {
            requester: vec![1; 38],
            responder: vec![2; 38],
        };
        let n = [7; 16];
        let who = Who::sign(keys, chain.clone(), WhoRole::Answer, &n, &ends, &[0b101]);
        let key = keys.public().signing;
        assert_eq!(
            who.verify(None, WhoRole::Answer, &n, &ends, &[0b101]).unwrap(),
            (a.user(), key)
        );
        // Another bitmap, role, nonce or pair of peers: refused.
        assert!(who.verify(None, WhoRole::Answer, &n, &ends, &[0b111]).is_err());
        assert!(who.verify(None, WhoRole::Hello, &n, &ends, &[0b101]).is_err());
        assert!(who.verify(None, WhoRole::Answer, &[8; 16], &ends, &[0b101]).is_err());
        let swapped = Ends {
            requester: ends.responder.clone(),
            responder: ends.requester.clone(),
        };
        assert!(who.verify(None, WhoRole::Answer, &n, &swapped, &[0b101]).is_err());
        // Without the chain, the key held for the device decides.
        let bare = Who::sign(keys, Vec::new(), WhoRole::Hello, &n, &ends, &[]);
        assert!(bare.verify(None, WhoRole::Hello, &n, &ends, &[]).is_err());
        assert!(
            bare.verify(Some((a.user(), key)), WhoRole::Hello, &n, &ends, &[])
                .is_ok()
        );
        let other = Identity::generate("b").unwrap();
        let theirs = other.device_keys().unwrap().public().signing;
        assert!(
            bare.verify(Some((other.user(), theirs)), WhoRole::Hello, &n, &ends, &[])
                .is_err()
        );
        // A chain of another device, or with another key than the one held.
        let mut claimed = Who::sign(keys, chain.clone(), WhoRole::Hello, &n, &ends, &[]);
        claimed.device = other.device();
        assert!(claimed.verify(None, WhoRole::Hello, &n, &ends, &[]).is_err());
        let with_chain = Who::sign(keys, chain, WhoRole::Hello, &n, &ends, &[]);
        assert!(
            with_chain
                .verify(Some((a.user(), theirs)), WhoRole::Hello, &n, &ends, &[])
                .is_err()
        );
    }

    #[test]
    fn bitmaps_round_trip() {
        let map = bitmap(17, |i| i % 3 == 0);
        assert_eq!(map.len(), 3);
        for i in 0..20 {
            assert_eq!(bit(&map, i), i < 17 && i % 3 == 0, "bit {i}");
        }
    }
}
