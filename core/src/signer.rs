//! An ed25519 signing key made when it first signs.
//!
//! Making a [`SigningKey`] from its secret costs a SHA-512 and a scalar
//! multiplication (its verifying key): about 25 µs each with the caches cold
//! after an Argon2id unlock, and an open reads two of them (the user key and
//! the device key) before its first page. A store that only reads never
//! signs, so the open keeps the secret and the key is made on first use.

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

/// An ed25519 signing key, made from its secret when first needed.
#[derive(Clone)]
pub(crate) struct LazySigner {
    secret: Zeroizing<[u8; 32]>,
    key: OnceLock<SigningKey>,
}

impl LazySigner {
    /// A key made now (its verifying key is wanted at once anyway).
    pub(crate) fn made(key: SigningKey) -> Self {
        LazySigner {
            secret: Zeroizing::new(key.to_bytes()),
            key: OnceLock::from(key),
        }
    }

    /// A key made when it is first used.
    pub(crate) fn later(secret: &[u8; 32]) -> Self {
        LazySigner {
            secret: Zeroizing::new(*secret),
            key: OnceLock::new(),
        }
    }

    /// The key.
    pub(crate) fn key(&self) -> &SigningKey {
        self.key.get_or_init(|| SigningKey::from_bytes(&self.secret))
    }

    /// The secret it is made from.
    pub(crate) fn to_bytes(&self) -> [u8; 32] {
        *self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    #[test]
    fn a_key_made_later_signs_as_one_made_now() {
        let now = LazySigner::made(SigningKey::from_bytes(&[5; 32]));
        let later = LazySigner::later(&[5; 32]);
        assert!(later.key.get().is_none());
        assert_eq!(later.key().sign(b"m"), now.key().sign(b"m"));
        assert_eq!(later.to_bytes(), now.to_bytes());
        assert_eq!(later.key().verifying_key(), now.key().verifying_key());
    }
}
