//! Key packages: channel key generations sealed to member devices.
//!
//! A rotation makes a random key for the next generation and seals it to the
//! key-agreement key (X25519) of every device of every member left
//! (ephemeral X25519, HKDF-SHA256, XChaCha20-Poly1305; [`crate::device`]),
//! with the channel's wire id, the generation and the device in the AAD. The
//! package is written as one op of the channel's metadata epoch, under the
//! writer's key `kp:<user>:<device>:<n>`, so it is signed by the writer's
//! feed and reaches every member (and relays carry it) like any entry. A
//! member that held the generation already re-seals it, in a package of its
//! own, to member devices that lack it: a device offline during the
//! rotation, a new device, a new member (a *share*).

use serde::{Deserialize, Serialize};

use crate::channel::ChannelKeys;
use crate::device::{DeviceKeys, seal_to_device};
use crate::error::{Error, Result};
use crate::id::{DeviceId, WireId};
use crate::secret::SecretKey;

/// Version of [`KeyPackage`].
pub const KEY_PACKAGE_VERSION: u8 = 1;
/// Most devices one package seals keys to (a larger channel writes several).
pub const MAX_PACKAGE_RECIPIENTS: usize = 256;
/// Most keys one package carries.
pub const MAX_PACKAGE_KEYS: usize = 64;
/// The length of a key sealed to a device: ephemeral key, nonce, key, tag.
const SEALED_KEY_BYTES: usize = 32 + 24 + 32 + 16;

/// Keys of one or more generations, each sealed to some devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackage {
    /// [`KEY_PACKAGE_VERSION`].
    pub version: u8,
    /// The keys.
    pub keys: Vec<PackagedKey>,
}

/// One generation's key, sealed to each recipient device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagedKey {
    /// The generation (1 and up).
    pub generation: u32,
    /// Per device, the key sealed to its key-agreement key.
    pub recipients: Vec<(DeviceId, Vec<u8>)>,
}

fn aad(wire: &WireId, generation: u32, device: &DeviceId) -> Vec<u8> {
    let mut a = b"hearth v1 key generation".to_vec();
    a.extend_from_slice(&wire.0);
    a.extend_from_slice(&generation.to_le_bytes());
    a.extend_from_slice(&device.0);
    a
}

impl KeyPackage {
    /// Seal each of `keys` (generation, key) to each of `recipients` (device,
    /// its X25519 public key).
    pub fn seal(wire: &WireId, keys: &[(u32, &SecretKey)], recipients: &[(DeviceId, [u8; 32])]) -> Result<Self> {
        if keys.len() > MAX_PACKAGE_KEYS || recipients.len() > MAX_PACKAGE_RECIPIENTS {
            return Err(Error::invalid("key package", "too many keys or devices"));
        }
        let mut out = Vec::with_capacity(keys.len());
        for (generation, key) in keys {
            if *generation == 0 {
                return Err(Error::invalid("key package", "generation 0 is the channel key"));
            }
            let mut sealed = Vec::with_capacity(recipients.len());
            for (device, kx) in recipients {
                sealed.push((
                    *device,
                    seal_to_device(kx, &aad(wire, *generation, device), key.expose())?,
                ));
            }
            out.push(PackagedKey {
                generation: *generation,
                recipients: sealed,
            });
        }
        Ok(KeyPackage {
            version: KEY_PACKAGE_VERSION,
            keys: out,
        })
    }

    /// The keys sealed to `device` (whose keys are `mine`): generation and
    /// key. A key that does not open is skipped (its writer's doing).
    pub fn open_for(&self, wire: &WireId, device: &DeviceId, mine: &DeviceKeys) -> Vec<(u32, SecretKey)> {
        let mut out = Vec::new();
        for k in &self.keys {
            for (d, sealed) in &k.recipients {
                if d != device {
                    continue;
                }
                if let Ok(plain) = mine.open_sealed(&aad(wire, k.generation, d), sealed)
                    && let Ok(bytes) = <[u8; 32]>::try_from(plain.as_slice())
                {
                    out.push((k.generation, SecretKey::from_bytes(bytes)));
                }
            }
        }
        out
    }

    /// Whether `device` is a recipient of a key of `generation`.
    pub fn reaches(&self, generation: u32, device: &DeviceId) -> bool {
        self.keys
            .iter()
            .any(|k| k.generation == generation && k.recipients.iter().any(|(d, _)| d == device))
    }

    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a key package encodes")
    }

    /// Decode and check the bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (p, rest): (KeyPackage, _) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted("key package", e))?;
        if !rest.is_empty() {
            return Err(Error::corrupted("key package", "trailing bytes"));
        }
        p.validate()?;
        Ok(p)
    }

    /// Check the version and the bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::corrupted("key package", why));
        if self.version != KEY_PACKAGE_VERSION {
            return bad("unknown version");
        }
        if self.keys.is_empty() || self.keys.len() > MAX_PACKAGE_KEYS {
            return bad("no keys, or too many");
        }
        for k in &self.keys {
            if k.generation == 0 {
                return bad("generation 0 is the channel key");
            }
            if k.recipients.is_empty() || k.recipients.len() > MAX_PACKAGE_RECIPIENTS {
                return bad("no recipients, or too many");
            }
            if k.recipients.iter().any(|(_, s)| s.len() != SEALED_KEY_BYTES) {
                return bad("a sealed key of the wrong length");
            }
        }
        Ok(())
    }
}

/// A new random key for the generation after the newest `keys` holds.
pub fn next_generation(keys: &ChannelKeys) -> Result<(u32, SecretKey)> {
    let next = keys
        .current_generation()
        .checked_add(1)
        .ok_or_else(|| Error::invalid("key generation", "exhausted"))?;
    Ok((next, SecretKey::generate()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChannelId;

    #[test]
    fn a_package_opens_for_its_recipients_only() {
        let wire = WireId([5; 32]);
        let (a, b, c) = (
            DeviceKeys::generate().unwrap(),
            DeviceKeys::generate().unwrap(),
            DeviceKeys::generate().unwrap(),
        );
        let key = SecretKey::generate().unwrap();
        let to = [(a.device_id(), a.public().kx), (b.device_id(), b.public().kx)];
        let p = KeyPackage::seal(&wire, &[(1, &key)], &to).unwrap();
        let p = KeyPackage::decode(&p.encode()).unwrap();
        let got = p.open_for(&wire, &a.device_id(), &a);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1.expose()), (1, key.expose()));
        assert!(p.reaches(1, &b.device_id()) && !p.reaches(1, &c.device_id()) && !p.reaches(2, &a.device_id()));
        // Not for c; not under another channel's wire id; not as another device.
        assert!(p.open_for(&wire, &c.device_id(), &c).is_empty());
        assert!(p.open_for(&WireId([6; 32]), &a.device_id(), &a).is_empty());
        assert!(p.open_for(&wire, &a.device_id(), &b).is_empty());
    }

    #[test]
    fn bounds_and_generations() {
        let wire = WireId([5; 32]);
        let a = DeviceKeys::generate().unwrap();
        let key = SecretKey::generate().unwrap();
        assert!(KeyPackage::seal(&wire, &[(0, &key)], &[(a.device_id(), a.public().kx)]).is_err());
        let p = KeyPackage::seal(&wire, &[(2, &key)], &[(a.device_id(), a.public().kx)]).unwrap();
        let mut bytes = p.encode();
        bytes.push(0);
        assert!(KeyPackage::decode(&bytes).is_err());
        let mut empty = p.clone();
        empty.keys[0].recipients.clear();
        assert!(KeyPackage::decode(&empty.encode()).is_err());
        // Generations: two keys of one generation both open; the higher tag seals.
        let mut keys = ChannelKeys::new(ChannelId([1; 32]), SecretKey::generate().unwrap());
        let (n, k1) = next_generation(&keys).unwrap();
        assert_eq!(n, 1);
        assert!(keys.add_generation(1, k1.clone()));
        assert!(!keys.add_generation(1, k1.clone()), "held already");
        let k2 = SecretKey::generate().unwrap();
        assert!(keys.add_generation(1, k2.clone()));
        assert_eq!(keys.current_generation(), 1);
        assert_eq!(keys.opening_keys(1).len(), 2);
        let sealing = keys.sealing_key(1).unwrap().expose();
        let mut other = ChannelKeys::new(ChannelId([1; 32]), SecretKey::generate().unwrap());
        other.add_generation(1, k2);
        other.add_generation(1, k1);
        assert_eq!(
            other.sealing_key(1).unwrap().expose(),
            sealing,
            "the same choice in any order"
        );
        // The record keeps them.
        let rec = crate::ChannelRecord::encode_named(&keys, Some("x"));
        let (back, name) = crate::ChannelRecord::decode_named(&rec).unwrap();
        assert_eq!(name.as_deref(), Some("x"));
        assert_eq!(back.opening_keys(1).len(), 2);
        assert_eq!(back.sealing_key(1).unwrap().expose(), sealing);
    }
}
