//! The store header: the only unsealed file of a store. It holds the Argon2id
//! parameters, the salt and the store master key wrapped by the passphrase key.
//!
//! Layout (docs/format.md): `magic "HEARTHHD" | version u8 | postcard(HeaderBody) |
//! blake3(all preceding bytes) [32]`. The checksum tells a damaged header apart
//! from a wrong passphrase: if it matches and the key does not unwrap, the
//! passphrase is wrong.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::random_bytes;
use crate::seal::{open, seal};
use crate::secret::{Passphrase, SecretKey};

/// The magic bytes that open a header file.
pub const HEADER_MAGIC: &[u8; 8] = b"HEARTHHD";
/// The header format this build writes and reads.
pub const HEADER_VERSION: u8 = 1;
/// Headers larger than this are rejected before decoding.
pub const HEADER_MAX_LEN: usize = 4096;

/// Argon2id cost parameters.
///
/// Default: m = 64 MiB, t = 3, p = 4 (RFC 9106's second recommendation), about
/// 0.1-0.2 s here. [`KdfParams::INSECURE_FAST`] exists for tests only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 4,
        }
    }
}

impl KdfParams {
    /// Minimal cost, for tests that open many stores. Never use for real data:
    /// it is the one preset below [`KdfParams::is_strong`] that new headers
    /// accept, named so that it cannot be picked by accident.
    pub const INSECURE_FAST: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

    /// Whether the parameters meet the floor for new headers (OWASP's Argon2id
    /// minimums): at least 19 MiB with two passes, or 46 MiB with one.
    pub fn is_strong(&self) -> bool {
        (self.m_kib >= 19 * 1024 && self.t >= 2) || (self.m_kib >= 46 * 1024 && self.t >= 1)
    }

    /// Reject parameters a hostile header could use to exhaust memory or time.
    fn check(&self) -> Result<()> {
        let ok = (8..=4 * 1024 * 1024).contains(&self.m_kib)
            && (1..=64).contains(&self.t)
            && (1..=16).contains(&self.p)
            && self.m_kib >= 8 * self.p;
        if ok {
            Ok(())
        } else {
            Err(Error::corrupted("store header", "KDF parameters out of range"))
        }
    }

    /// Derive the key-encryption key from a passphrase.
    pub fn derive(&self, pass: &Passphrase, salt: &[u8; 16]) -> Result<SecretKey> {
        self.check()?;
        let params =
            Params::new(self.m_kib, self.t, self.p, Some(32)).map_err(|e| Error::corrupted("store header", e))?;
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(pass.expose(), salt, &mut out)
            .map_err(|e| Error::invalid("passphrase", e))?;
        Ok(SecretKey::from_bytes(out))
    }
}

#[derive(Serialize, Deserialize)]
struct HeaderBody {
    kdf: KdfParams,
    salt: [u8; 16],
    /// The master key sealed under the passphrase key, aad = [`wrap_aad`].
    wrapped: Vec<u8>,
}

/// A decoded header: enough to unlock the store with the right passphrase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHeader {
    /// The Argon2id parameters.
    pub kdf: KdfParams,
    salt: [u8; 16],
    wrapped: Vec<u8>,
}

fn wrap_aad(kdf: &KdfParams, salt: &[u8; 16]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(48);
    aad.extend_from_slice(HEADER_MAGIC);
    aad.push(HEADER_VERSION);
    for v in [kdf.m_kib, kdf.t, kdf.p] {
        aad.extend_from_slice(&v.to_be_bytes());
    }
    aad.extend_from_slice(salt);
    aad
}

impl StoreHeader {
    /// Wrap `master` under a key derived from `pass` with a fresh salt.
    ///
    /// Parameters below [`KdfParams::is_strong`] are refused (only the
    /// explicitly named [`KdfParams::INSECURE_FAST`] test preset passes):
    /// existing headers with weaker ones still open.
    pub fn wrap(master: &SecretKey, pass: &Passphrase, kdf: KdfParams) -> Result<Self> {
        if !kdf.is_strong() && kdf != KdfParams::INSECURE_FAST {
            return Err(Error::invalid(
                "KDF parameters",
                format!(
                    "m = {} KiB, t = {} is weaker than the floor for new stores (19 MiB with t >= 2, or 46 MiB)",
                    kdf.m_kib, kdf.t
                ),
            ));
        }
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        let kek = kdf.derive(pass, &salt)?;
        let wrapped = seal(&kek, &wrap_aad(&kdf, &salt), master.expose())?;
        Ok(StoreHeader { kdf, salt, wrapped })
    }

    /// Unwrap the master key. A header that decoded cleanly but does not unwrap
    /// means the passphrase is wrong.
    pub fn unwrap(&self, pass: &Passphrase) -> Result<SecretKey> {
        let kek = self.kdf.derive(pass, &self.salt)?;
        let raw = open(&kek, &wrap_aad(&self.kdf, &self.salt), &self.wrapped, "store header")
            .map_err(|_| Error::WrongPassphrase)?;
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupted("store header", "wrapped key has the wrong length"))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// The header file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let body = HeaderBody {
            kdf: self.kdf,
            salt: self.salt,
            wrapped: self.wrapped.clone(),
        };
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(HEADER_MAGIC);
        out.push(HEADER_VERSION);
        out.extend_from_slice(&postcard::to_stdvec(&body).expect("header encodes"));
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Decode header file bytes, checking magic, version, size and checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > HEADER_MAX_LEN {
            return Err(Error::TooLarge {
                what: "store header",
                size: bytes.len(),
                limit: HEADER_MAX_LEN,
            });
        }
        if bytes.len() < HEADER_MAGIC.len() + 1 + 32 || &bytes[..8] != HEADER_MAGIC {
            return Err(Error::corrupted("store header", "not a Hearth store header"));
        }
        if bytes[8] != HEADER_VERSION {
            return Err(Error::UnsupportedFormat {
                what: "store header",
                found: bytes[8],
                expected: HEADER_VERSION,
            });
        }
        let (content, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(content).as_bytes() != sum {
            return Err(Error::corrupted("store header", "checksum mismatch"));
        }
        let body: HeaderBody = postcard::from_bytes(&content[9..]).map_err(|e| Error::corrupted("store header", e))?;
        body.kdf.check()?;
        Ok(StoreHeader {
            kdf: body.kdf,
            salt: body.salt,
            wrapped: body.wrapped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_passphrase_is_told_apart_from_corruption() {
        let master = SecretKey::from_bytes([5; 32]);
        let h = StoreHeader::wrap(&master, &"right".into(), KdfParams::INSECURE_FAST).unwrap();
        let bytes = h.encode();
        let back = StoreHeader::decode(&bytes).unwrap();
        assert_eq!(back.unwrap(&"right".into()).unwrap(), master);
        assert!(matches!(back.unwrap(&"wrong".into()), Err(Error::WrongPassphrase)));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(matches!(
                StoreHeader::decode(&b),
                Err(Error::Corrupted { .. } | Error::UnsupportedFormat { .. })
            ));
        }
        assert!(StoreHeader::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn new_headers_refuse_weak_kdf_parameters() {
        let master = SecretKey::from_bytes([5; 32]);
        for weak in [
            KdfParams {
                m_kib: 1024,
                t: 3,
                p: 1,
            },
            KdfParams {
                m_kib: 19 * 1024,
                t: 1,
                p: 1,
            },
            KdfParams { m_kib: 8, t: 64, p: 1 },
        ] {
            assert!(
                matches!(
                    StoreHeader::wrap(&master, &"pw".into(), weak),
                    Err(Error::Invalid { .. })
                ),
                "{weak:?}"
            );
        }
        for strong in [
            KdfParams::default(),
            KdfParams {
                m_kib: 19 * 1024,
                t: 2,
                p: 1,
            },
            KdfParams {
                m_kib: 46 * 1024,
                t: 1,
                p: 1,
            },
        ] {
            assert!(strong.is_strong(), "{strong:?}");
        }
        assert!(KdfParams::default().is_strong());
    }
}
