//! Authenticated encryption (XChaCha20-Poly1305) and key derivation.
//!
//! Every ciphertext is bound to its place by associated data, so a sealed record
//! moved to another key, channel or sequence number fails to open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::id::random_bytes;
use crate::secret::SecretKey;

/// Bytes a sealed box adds to its plaintext: a 24-byte nonce and a 16-byte tag.
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// One purpose of a sub-key derived from a master key. Each label gives an
/// independent key, so a key compromise in one use says nothing about another.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// Sealing local records: identity, channel records, journal, snapshots, summaries.
    LocalRecords,
    /// The body key of a channel's feed entries (derived from the channel key).
    FeedBody,
    /// The keyed hash that names a channel on the wire and in sled keys.
    WireId,
    /// The device's libp2p node key (a stable peer id across restarts).
    NodeKey,
    /// A channel's access key (derived from the channel key): proves
    /// membership to peers and relays in the sync protocol, opens nothing.
    Access,
    /// The tag of a later key generation (derived from its key): orders two
    /// keys made for the same generation by concurrent rotations.
    GenerationTag,
    /// Sealing a backup file's chunks (`hearth backup`).
    Backup,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::LocalRecords => b"hearth v1 local records",
            Purpose::FeedBody => b"hearth v1 feed body",
            Purpose::WireId => b"hearth v1 wire id",
            Purpose::NodeKey => b"hearth v1 node key",
            Purpose::Access => b"hearth v2 channel access",
            Purpose::GenerationTag => b"hearth v1 key generation tag",
            Purpose::Backup => b"hearth v1 backup",
        }
    }
}

/// Derive a sub-key from `master` for one purpose (HKDF-SHA256, label as info).
pub fn derive(master: &SecretKey, purpose: Purpose) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(None, master.expose());
    let mut out = [0u8; 32];
    hk.expand(purpose.label(), &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    SecretKey::from_bytes(out)
}

fn cipher(key: &SecretKey) -> XChaCha20Poly1305 {
    let k: Key = (*key.expose()).into();
    XChaCha20Poly1305::new(&k)
}

/// Seal `plaintext` under `key`, bound to `aad`. Output: `nonce | ciphertext | tag`.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 24];
    random_bytes(&mut nonce)?;
    seal_with_nonce(key, aad, plaintext, nonce)
}

/// [`seal`] under a nonce the caller chose. The caller answers for the
/// nonce never sealing two plaintexts under one key: a random one
/// ([`seal`]), or a [`counted_nonce`] under a prefix drawn at random for
/// one run of one writer, whose counter never repeats in that run.
pub fn seal_with_nonce(key: &SecretKey, aad: &[u8], plaintext: &[u8], nonce: [u8; 24]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    seal_with_nonce_into(key, aad, nonce, &mut out, |o| {
        o.extend_from_slice(plaintext);
        Ok::<(), Error>(())
    })?;
    Ok(out)
}

/// [`seal_with_nonce`] built in place at the end of `out`, for a caller
/// that frames the box itself: `nonce` is appended, then `plaintext`
/// appends the plaintext, which is encrypted where it lies, and the tag
/// follows it. `out` then ends with exactly the bytes [`seal_with_nonce`]
/// returns, with no copy of the plaintext or the ciphertext. On an error
/// `out` is left holding a part of the box; drop it. The error is
/// `plaintext`'s own, or the encryption's turned into `E`.
pub fn seal_with_nonce_into<E: From<Error>>(
    key: &SecretKey,
    aad: &[u8],
    nonce: [u8; 24],
    out: &mut Vec<u8>,
    plaintext: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    use chacha20poly1305::aead::AeadInOut;
    out.extend_from_slice(&nonce);
    let from = out.len();
    plaintext(out)?;
    let tag = cipher(key)
        .encrypt_inout_detached(&XNonce::from(nonce), aad, out[from..].as_mut().into())
        .map_err(|_| E::from(Error::corrupted("sealed box", "encryption failed")))?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Bytes of a [`counted_nonce`]'s prefix.
pub const NONCE_PREFIX_LEN: usize = 15;

/// What a counted nonce seals: the two boxes of one entry share its prefix
/// and counter, and differ here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NonceKind {
    /// An entry's body.
    Body = 0,
    /// An entry's text pack.
    Pack = 1,
}

/// A nonce made of a random prefix, a kind and a counter (little-endian):
/// `prefix [15] | kind u8 | counter u64 LE`. A receiver that saw the
/// previous entry of a feed knows the prefix and the counter (the entry's
/// seq), so a live stream need not carry the nonce
/// ([`crate::Envelope::encode_lean`]).
pub fn counted_nonce(prefix: &[u8; NONCE_PREFIX_LEN], kind: NonceKind, counter: u64) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    n[NONCE_PREFIX_LEN] = kind as u8;
    n[16..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Open a box made by [`seal`] with the same key and `aad`.
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8], what: &'static str) -> Result<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Error::corrupted(what, "shorter than a sealed box"));
    }
    let (nonce, ct) = sealed.split_at(24);
    let n = XNonce::from(<[u8; 24]>::try_from(nonce).expect("24 bytes"));
    cipher(key)
        .decrypt(&n, Payload { msg: ct, aad })
        .map_err(|_| Error::corrupted(what, "authentication failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_key_and_aad() {
        let k = SecretKey::from_bytes([1; 32]);
        let b = seal(&k, b"place", b"hello").unwrap();
        assert_eq!(open(&k, b"place", &b, "t").unwrap(), b"hello");
        assert!(open(&k, b"other", &b, "t").is_err());
        assert!(open(&SecretKey::from_bytes([2; 32]), b"place", &b, "t").is_err());
        let mut flipped = b.clone();
        flipped[30] ^= 1;
        assert!(open(&k, b"place", &flipped, "t").is_err());
        assert!(open(&k, b"place", &b[..10], "t").is_err());
    }

    #[test]
    fn a_counted_nonce_seals_and_opens_like_a_random_one() {
        let k = SecretKey::from_bytes([1; 32]);
        let prefix = [7u8; NONCE_PREFIX_LEN];
        let body = counted_nonce(&prefix, NonceKind::Body, 9);
        let pack = counted_nonce(&prefix, NonceKind::Pack, 9);
        assert_ne!(body, pack);
        assert_ne!(body, counted_nonce(&prefix, NonceKind::Body, 10));
        assert_eq!(&body[..15], &prefix[..]);
        assert_eq!(body[15], 0);
        assert_eq!(pack[15], 1);
        assert_eq!(u64::from_le_bytes(body[16..].try_into().unwrap()), 9);
        let b = seal_with_nonce(&k, b"place", b"hello", body).unwrap();
        assert_eq!(&b[..24], &body[..]);
        assert_eq!(open(&k, b"place", &b, "t").unwrap(), b"hello");
        assert!(open(&k, b"other", &b, "t").is_err());
    }

    /// Built in place after what the caller framed it with, a box is the
    /// same bytes as the AEAD's whole encryption (and [`seal_with_nonce`]'s),
    /// and opens; the caller's error comes back as it was.
    #[test]
    fn a_box_sealed_in_place_is_the_same_box() {
        let k = SecretKey::from_bytes([3; 32]);
        let nonce = counted_nonce(&[5; NONCE_PREFIX_LEN], NonceKind::Body, 77);
        for plain in [&b""[..], b"hi", &[9u8; 300], &[1u8; 5000]] {
            let mut out = b"frame".to_vec();
            seal_with_nonce_into(&k, b"place", nonce, &mut out, |o| {
                o.extend_from_slice(plain);
                Ok::<(), Error>(())
            })
            .unwrap();
            // The box as the AEAD makes it whole: nonce, ciphertext, tag.
            let ct = cipher(&k)
                .encrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: plain,
                        aad: b"place",
                    },
                )
                .unwrap();
            let whole = [&nonce[..], &ct].concat();
            assert_eq!(&out[..5], b"frame");
            assert_eq!(out[5..], whole[..]);
            assert_eq!(seal_with_nonce(&k, b"place", plain, nonce).unwrap(), whole);
            assert_eq!(open(&k, b"place", &out[5..], "t").unwrap(), plain);
        }
        let mut out = Vec::new();
        let refused = seal_with_nonce_into(&k, b"place", nonce, &mut out, |_| Err(Error::Random));
        assert!(matches!(refused, Err(Error::Random)));
    }

    #[test]
    fn purposes_give_distinct_keys() {
        let m = SecretKey::from_bytes([3; 32]);
        assert_ne!(derive(&m, Purpose::LocalRecords), derive(&m, Purpose::FeedBody));
        assert_ne!(derive(&m, Purpose::FeedBody), derive(&m, Purpose::WireId));
    }
}
