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

pub use hearth_core::peer::{Claim, Ends, Nonce, RelayCert, Vetting, Who, WhoRole, who_message};
use hearth_core::{SecretKey, WireId};

/// A replica's access keys by channel.
pub type Keyring = BTreeMap<WireId, SecretKey>;

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
    fn bitmaps_round_trip() {
        let map = bitmap(17, |i| i % 3 == 0);
        assert_eq!(map.len(), 3);
        for i in 0..20 {
            assert_eq!(bit(&map, i), i < 17 && i % 3 == 0, "bit {i}");
        }
    }
}
