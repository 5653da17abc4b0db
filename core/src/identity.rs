//! The local identity: the user's signing key, this device's id and the user's name.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};
use crate::id::{DeviceId, UserId};
use crate::secret::SecretKey;

/// A user's identity on one device. The secret never prints.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    user: UserId,
    device: DeviceId,
    name: String,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct IdentityRecord {
    version: u8,
    secret: [u8; 32],
    device: [u8; 16],
    name: String,
}

const IDENTITY_VERSION: u8 = 1;

impl Identity {
    /// A new user with a new device.
    pub fn generate(name: &str) -> Result<Self> {
        let secret = SecretKey::generate()?;
        Ok(Self::from_parts(&secret, DeviceId::generate()?, name))
    }

    /// A new device of an existing user (from the user's secret key, as a
    /// linked device receives it).
    pub fn new_device(secret: &SecretKey, name: &str) -> Result<Self> {
        Ok(Self::from_parts(secret, DeviceId::generate()?, name))
    }

    /// The user's secret signing key (for linking a new device; handle with care).
    pub fn secret(&self) -> SecretKey {
        SecretKey::from_bytes(self.signing.to_bytes())
    }

    fn from_parts(secret: &SecretKey, device: DeviceId, name: &str) -> Self {
        let signing = SigningKey::from_bytes(secret.expose());
        let user = UserId(signing.verifying_key().to_bytes());
        Identity {
            signing,
            user,
            device,
            name: name.to_string(),
        }
    }

    /// The user id (public key).
    pub fn user(&self) -> UserId {
        self.user
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The user's display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sign bytes as the user.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// Encode for sealing into the store (the caller seals it).
    pub fn encode(&self) -> Vec<u8> {
        let rec = IdentityRecord {
            version: IDENTITY_VERSION,
            secret: self.signing.to_bytes(),
            device: self.device.0,
            name: self.name.clone(),
        };
        postcard::to_stdvec(&rec).expect("identity encodes")
    }

    /// Decode what [`Identity::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let rec: IdentityRecord = postcard::from_bytes(bytes).map_err(|e| Error::corrupted("identity", e))?;
        if rec.version != IDENTITY_VERSION {
            return Err(Error::UnsupportedFormat {
                what: "identity",
                found: rec.version,
                expected: IDENTITY_VERSION,
            });
        }
        Ok(Self::from_parts(
            &SecretKey::from_bytes(rec.secret),
            DeviceId(rec.device),
            &rec.name,
        ))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Verify an ed25519 signature by `user` over `msg`, strictly: weak
/// (small-order) public keys and non-canonical signatures are refused, so a
/// "user" whose key is the identity point cannot have one signature verify
/// over every message.
pub fn verify_signature(user: &UserId, msg: &[u8], sig: &[u8; 64]) -> Result<()> {
    let key = VerifyingKey::from_bytes(&user.0).map_err(|_| Error::corrupted("signature", "invalid public key"))?;
    key.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| Error::corrupted("signature", "does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_signs() {
        let id = Identity::generate("alice").unwrap();
        let back = Identity::decode(&id.encode()).unwrap();
        assert_eq!(back.user(), id.user());
        assert_eq!(back.device(), id.device());
        assert_eq!(back.name(), "alice");
        let sig = id.sign(b"m");
        assert!(verify_signature(&id.user(), b"m", &sig).is_ok());
        assert!(verify_signature(&id.user(), b"n", &sig).is_err());
        assert!(!format!("{id:?}").contains("secret"));
    }

    #[test]
    fn a_small_order_key_verifies_nothing() {
        // The identity point as the key and (R = identity, s = 0) as the
        // signature satisfy the plain ed25519 equation for every message.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let mut sig = [0u8; 64];
        sig[0] = 1;
        for msg in [&b"one"[..], b"another"] {
            assert!(verify_signature(&UserId(identity_point), msg, &sig).is_err());
        }
    }
}
