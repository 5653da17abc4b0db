//! The local identity: the user's signing key, this device's id and the user's
//! name, and (from identity record version 2) the device's own keys and its
//! certificate (see [`crate::device`]); from version 3, the ids this device
//! wrote under before it moved to its keyed id; from version 4, the device's
//! whole certificate chain, and no user key on a device linked by another
//! device ([`Identity::linked`]): a stolen linked device cannot certify
//! devices that no revocation of it reaches.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::device::{DeviceCert, DeviceKeys};
use crate::error::{Error, Result};
use crate::id::{DeviceId, UserId};
use crate::secret::SecretKey;
use crate::signer::LazySigner;

/// A user's identity on one device. The secret never prints.
#[derive(Clone)]
pub struct Identity {
    /// The user's signing key: held by the device that made the user (and
    /// devices linked before identity record version 4), not by a device
    /// linked since, whose chain runs through the device that linked it.
    signing: Option<LazySigner>,
    user: UserId,
    device: DeviceId,
    name: String,
    /// The device's own keys and certificate chain (its own certificate
    /// last); `None` for an identity written before devices had keys
    /// (record version 1), until the store gives it some
    /// ([`Identity::with_device_keys`]).
    device_keys: Option<(DeviceKeys, Vec<DeviceCert>)>,
    /// Ids this device wrote feeds under before (record version 3): a random
    /// id of a store older than device keys, or an id formats 4 to 6 derived
    /// from its key ([`crate::device::device_id_v2`]). Oldest first.
    former: Vec<DeviceId>,
    /// The secret of this device's network key, where it is not derived from
    /// the store's master key (record version 5): a device restored from a
    /// backup shares the master key with the device backed up, and must not
    /// share its peer id.
    node: Option<SecretKey>,
}

/// Version 1: the user key, the device id and the name.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct IdentityRecord {
    version: u8,
    secret: [u8; 32],
    device: [u8; 16],
    name: String,
}

/// Version 2 adds the device's keys ([`DeviceKeys::encode`]) and certificate.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct IdentityRecordV2 {
    version: u8,
    secret: [u8; 32],
    device: [u8; 16],
    name: String,
    #[serde(with = "serde_bytes")]
    keys: Vec<u8>,
    #[serde(with = "serde_bytes")]
    cert: Vec<u8>,
}

/// Version 3 adds the ids the device wrote under before its keyed id.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct IdentityRecordV3 {
    version: u8,
    secret: [u8; 32],
    device: [u8; 16],
    name: String,
    #[serde(with = "serde_bytes")]
    keys: Vec<u8>,
    #[serde(with = "serde_bytes")]
    cert: Vec<u8>,
    former: Vec<[u8; 16]>,
}

/// Version 4: the user key only where the device holds it, the user id
/// apart, and the device's whole certificate chain.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct IdentityRecordV4 {
    version: u8,
    secret: Option<[u8; 32]>,
    user: [u8; 32],
    device: [u8; 16],
    name: String,
    keys: Vec<u8>,
    chain: Vec<Vec<u8>>,
    former: Vec<[u8; 16]>,
}

const IDENTITY_VERSION: u8 = 4;
/// Version 5: a version 4 record followed by postcard(node key secret
/// `[u8; 32]`); written only by an identity that has its own network key
/// ([`Identity::restored`]).
const IDENTITY_VERSION_NODE: u8 = 5;

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Identity {
    /// A new user with a new device.
    pub fn generate(name: &str) -> Result<Self> {
        let secret = SecretKey::generate()?;
        Self::new_device(&secret, name)
    }

    /// A new device of an existing user (from the user's secret key, as a
    /// linked device receives it): its own keys, its id derived from them,
    /// certified by the user key.
    pub fn new_device(secret: &SecretKey, name: &str) -> Result<Self> {
        let keys = DeviceKeys::generate()?;
        let mut id = Self::from_parts(secret, keys.device_id(), name);
        let cert = DeviceCert::by_user(id.user_key()?, id.device, keys.public(), unix_millis(), false);
        id.device_keys = Some((keys, vec![cert]));
        Ok(id)
    }

    /// A device linked by another device of the user: its own `keys`, and
    /// the chain the linking device issued (the linking device's chain,
    /// then its certificate of these keys). It holds no user key, so it
    /// certifies devices only under its own chain, which a revocation of it
    /// (or of any device of the chain) reaches.
    pub fn linked(keys: DeviceKeys, chain: Vec<DeviceCert>, name: &str) -> Result<Self> {
        let body = crate::device::verify_chain(&chain)?;
        if body.keys != keys.public() || body.device != keys.device_id() || body.legacy {
            return Err(Error::Invalid {
                what: "device link",
                detail: "the certificate chain is not of this device's keys".into(),
            });
        }
        Ok(Identity {
            signing: None,
            user: body.user,
            device: body.device,
            name: name.to_string(),
            device_keys: Some((keys, chain)),
            former: Vec::new(),
            node: None,
        })
    }

    /// The user key, which a device linked by another device does not hold.
    fn user_key(&self) -> Result<&SigningKey> {
        self.signing
            .as_ref()
            .map(LazySigner::key)
            .ok_or_else(|| Error::Invalid {
                what: "user key",
                detail: "this device was linked by another device and holds no user key".into(),
            })
    }

    /// Whether this device holds the user's key (it made the user, or was
    /// linked before devices linked under their own certificates).
    pub fn holds_user_key(&self) -> bool {
        self.signing.is_some()
    }

    /// A certificate of `keys` (a new device's) for linking it: issued by
    /// this device, after this device's own chain, so that the new device
    /// gets no user key. Fails for an identity without device keys, or one
    /// whose chain is as long as chains go (link from a device nearer the
    /// user).
    pub fn certify_device(&self, keys: crate::device::DevicePublic) -> Result<Vec<DeviceCert>> {
        let (own, chain) = self.device_keys.as_ref().ok_or_else(|| Error::Invalid {
            what: "device link",
            detail: "this device has no keys yet".into(),
        })?;
        if chain.len() >= crate::device::MAX_CHAIN {
            return Err(Error::Invalid {
                what: "device link",
                detail: format!(
                    "this device is {} links from the user; link from a device nearer the user",
                    chain.len()
                ),
            });
        }
        let last = chain.last().expect("a chain is never empty");
        let mut out = chain.clone();
        out.push(DeviceCert::by_device(own, &last.body, keys, unix_millis()));
        Ok(out)
    }

    /// An identity of record version 1 (no device keys) given fresh device
    /// keys, certified by the user key as binding this device's existing id
    /// (it wrote feeds under it). An identity that has keys is returned as
    /// it is.
    pub fn with_device_keys(mut self) -> Result<Self> {
        if self.device_keys.is_none() {
            let keys = DeviceKeys::generate()?;
            let cert = DeviceCert::by_user(self.user_key()?, self.device, keys.public(), unix_millis(), true);
            self.device_keys = Some((keys, vec![cert]));
        }
        Ok(self)
    }

    /// The identity of this device under its keyed id
    /// ([`crate::device::device_id_of`]): given keys if it has none, certified
    /// by the user key, its present id kept in [`Identity::former`]. An
    /// identity on its keyed id already is returned as it is.
    pub fn with_keyed_id(mut self) -> Result<Self> {
        if self.on_keyed_id() {
            return Ok(self);
        }
        let keys = match self.device_keys.take() {
            Some((keys, _)) => keys,
            None => DeviceKeys::generate()?,
        };
        let keyed = keys.device_id();
        if keyed != self.device {
            self.former.push(self.device);
            self.device = keyed;
        }
        let cert = DeviceCert::by_user(self.user_key()?, keyed, keys.public(), unix_millis(), false);
        self.device_keys = Some((keys, vec![cert]));
        Ok(self)
    }

    /// A new device of this user to continue from a backup of this one
    /// (`hearth restore`): its own keys and id, so that it never writes a
    /// feed sequence number the backed-up device may have used after the
    /// backup; its own network key, so that the two never share a peer id;
    /// the same name. It is certified by the user key where this device
    /// holds it (and keeps it), and otherwise through this device's chain,
    /// as a link would certify it (a revocation of this device then reaches
    /// it too). No former ids: what this device wrote is another device's
    /// feed to the new one.
    pub fn restored(&self) -> Result<Self> {
        let mut id = self.certified(DeviceKeys::generate()?)?;
        id.node = Some(SecretKey::generate()?);
        Ok(id)
    }

    /// The device that succeeds this one in its own store after an unclean
    /// shutdown of a run that sent entries before they were durable (a
    /// power cut may have lost some that peers hold): a new signing key and
    /// id, so that it never writes a feed sequence number the lost entries
    /// have; the same key-agreement key, name and network key (the same
    /// store and peer id); certified as [`Identity::restored`] is. This
    /// device's id becomes a former one: the same store wrote under it, and
    /// sync brings the lost entries back as that id's.
    pub fn reborn(&self) -> Result<Self> {
        let keys = match self.device_keys() {
            Some(k) => k.successor()?,
            None => DeviceKeys::generate()?,
        };
        let mut id = self.certified(keys)?;
        id.former = self.former.clone();
        id.former.push(self.device);
        id.node = self.node.clone();
        Ok(id)
    }

    /// Whether [`Identity::reborn`] can certify a successor: this device
    /// holds the user key, or its chain is shorter than chains go.
    pub fn can_be_reborn(&self) -> bool {
        self.holds_user_key() || self.device_chain().is_some_and(|c| c.len() < crate::device::MAX_CHAIN)
    }

    /// A device of this user with `keys` and the same name: certified by
    /// the user key where this device holds it (and keeps it), and
    /// otherwise through this device's chain, as a link would certify it
    /// (a revocation of this device then reaches it too).
    fn certified(&self, keys: DeviceKeys) -> Result<Self> {
        match &self.signing {
            Some(signing) => {
                let mut id = Self::from_parts(&SecretKey::from_bytes(signing.to_bytes()), keys.device_id(), &self.name);
                let cert = DeviceCert::by_user(id.user_key()?, id.device, keys.public(), unix_millis(), false);
                id.device_keys = Some((keys, vec![cert]));
                Ok(id)
            }
            None => {
                let chain = self.certify_device(keys.public())?;
                Self::linked(keys, chain, &self.name)
            }
        }
    }

    /// This identity with `node` as its own network key, if it has one (a
    /// master-key rotation gives a restored device a new peer id, as it
    /// gives any other store one).
    pub fn with_node_secret(mut self, node: &SecretKey) -> Self {
        if self.node.is_some() {
            self.node = Some(node.clone());
        }
        self
    }

    /// The secret of this device's own network key, if it has one (a device
    /// restored from a backup); otherwise the store derives it from its
    /// master key.
    pub fn node_secret(&self) -> Option<SecretKey> {
        self.node.clone()
    }

    /// Whether this device is on its keyed id (has keys, and its id is
    /// theirs): what a store of format 7 holds.
    pub fn on_keyed_id(&self) -> bool {
        self.device_keys().is_some_and(|k| k.device_id() == self.device)
    }

    /// The ids this device wrote feeds under before its present one, oldest first.
    pub fn former(&self) -> &[DeviceId] {
        &self.former
    }

    /// Whether `device` is this device, under its present id or a former one.
    pub fn is_this_device(&self, device: &DeviceId) -> bool {
        *device == self.device || self.former.contains(device)
    }

    /// The device's own keys, if it has them yet.
    pub fn device_keys(&self) -> Option<&DeviceKeys> {
        self.device_keys.as_ref().map(|(k, _)| k)
    }

    /// The device's own certificate (its chain's last), if it has keys yet.
    pub fn device_cert(&self) -> Option<&DeviceCert> {
        self.device_keys.as_ref().and_then(|(_, c)| c.last())
    }

    /// The device's certificate chain (its own certificate last; one
    /// certificate for a device certified by the user key), if it has keys.
    pub fn device_chain(&self) -> Option<&[DeviceCert]> {
        self.device_keys.as_ref().map(|(_, c)| c.as_slice())
    }

    /// The user's secret signing key, where this device holds it (to make
    /// devices of the user by hand in tests and tools; handle with care).
    pub fn secret(&self) -> Option<SecretKey> {
        self.signing.as_ref().map(|s| SecretKey::from_bytes(s.to_bytes()))
    }

    fn from_parts(secret: &SecretKey, device: DeviceId, name: &str) -> Self {
        let signing = SigningKey::from_bytes(secret.expose());
        let user = UserId(signing.verifying_key().to_bytes());
        Identity {
            signing: Some(LazySigner::made(signing)),
            user,
            device,
            name: name.to_string(),
            device_keys: None,
            former: Vec::new(),
            node: None,
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

    /// Sign bytes as the user (format 1 entries, which tools and tests
    /// still write); fails on a device that holds no user key.
    pub fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        Ok(self.user_key()?.sign(msg).to_bytes())
    }

    /// Encode for sealing into the store (the caller seals it): record
    /// version 4 once the device has keys, version 1 before (an identity of
    /// version 1 always holds the user key).
    pub fn encode(&self) -> Vec<u8> {
        match (&self.device_keys, &self.signing) {
            (Some((keys, chain)), signing) => postcard::to_stdvec(&IdentityRecordV4 {
                version: if self.node.is_some() {
                    IDENTITY_VERSION_NODE
                } else {
                    IDENTITY_VERSION
                },
                secret: signing.as_ref().map(LazySigner::to_bytes),
                user: self.user.0,
                device: self.device.0,
                name: self.name.clone(),
                keys: keys.encode(),
                chain: chain.iter().map(DeviceCert::encode).collect(),
                former: self.former.iter().map(|d| d.0).collect(),
            })
            .map(|mut out| {
                if let Some(node) = &self.node {
                    out.extend_from_slice(node.expose());
                }
                out
            }),
            (None, Some(signing)) => postcard::to_stdvec(&IdentityRecord {
                version: 1,
                secret: signing.to_bytes(),
                device: self.device.0,
                name: self.name.clone(),
            }),
            (None, None) => unreachable!("an identity without a user key is made with its device keys"),
        }
        .expect("identity encodes")
    }

    /// Decode what [`Identity::encode`] wrote (either version). A version 2
    /// record's certificate must be the user's, for this device and its keys.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupted = |e: &dyn fmt::Display| Error::corrupted("identity", e.to_string());
        match bytes.first() {
            Some(1) => {
                let rec: IdentityRecord = postcard::from_bytes(bytes).map_err(|e| corrupted(&e))?;
                Ok(Self::from_parts(
                    &SecretKey::from_bytes(rec.secret),
                    DeviceId(rec.device),
                    &rec.name,
                ))
            }
            Some(2) => {
                let rec: IdentityRecordV2 = postcard::from_bytes(bytes).map_err(|e| corrupted(&e))?;
                let id = Self::from_parts(&SecretKey::from_bytes(rec.secret), DeviceId(rec.device), &rec.name);
                id.with_keys(&rec.keys, &rec.cert)
            }
            Some(3) => {
                let rec: IdentityRecordV3 = postcard::from_bytes(bytes).map_err(|e| corrupted(&e))?;
                let mut id = Self::from_parts(&SecretKey::from_bytes(rec.secret), DeviceId(rec.device), &rec.name);
                id.former = rec.former.iter().map(|d| DeviceId(*d)).collect();
                id.with_keys(&rec.keys, &rec.cert)
            }
            Some(&(IDENTITY_VERSION | IDENTITY_VERSION_NODE)) => Self::decode_current(bytes, false),
            found => Err(Error::UnsupportedFormat {
                what: "identity",
                found: found.copied().unwrap_or(0),
                expected: IDENTITY_VERSION,
            }),
        }
    }
}

impl Identity {
    /// [`Identity::decode`] of a record this device's store sealed itself
    /// (under its records key, once its chain was verified, as the device
    /// chains of a channel are): the chain's signatures are not verified
    /// again and the device's X25519 public key is taken from its
    /// certificate, about 0.1 ms of an open. Everything else is checked as
    /// `decode` does; records of older versions are decoded by it.
    pub fn decode_sealed(bytes: &[u8]) -> Result<Self> {
        match bytes.first() {
            Some(&(IDENTITY_VERSION | IDENTITY_VERSION_NODE)) => Self::decode_current(bytes, true),
            _ => Self::decode(bytes),
        }
    }

    /// A record of the current version; `known`: its chain is this store's
    /// own ([`Identity::decode_sealed`]).
    fn decode_current(bytes: &[u8], known: bool) -> Result<Self> {
        let corrupted = |e: &dyn fmt::Display| Error::corrupted("identity", e.to_string());
        let (rec, rest): (IdentityRecordV4, _) = postcard::take_from_bytes(bytes).map_err(|e| corrupted(&e))?;
        let node = match (rec.version, rest) {
            (IDENTITY_VERSION, _) => None,
            (_, rest) => Some(SecretKey::from_bytes(
                rest.try_into()
                    .map_err(|_| corrupted(&"a network key that is not 32 bytes"))?,
            )),
        };
        if rec.chain.len() > crate::device::MAX_CHAIN {
            return Err(corrupted(&"a certificate chain longer than 8"));
        }
        let chain = rec
            .chain
            .iter()
            .map(|c| DeviceCert::decode(c))
            .collect::<Result<Vec<_>>>()?;
        let keys = match chain.last() {
            Some(last) if known => DeviceKeys::decode_known(&rec.keys, last.body.keys)?,
            _ => DeviceKeys::decode(&rec.keys)?,
        };
        let mut id = match &rec.secret {
            // A record this store sealed names its user key's public half,
            // checked when it was sealed: the key is made when first used.
            Some(s) if known => Identity {
                signing: Some(LazySigner::later(s)),
                ..Self::public_parts(&rec)
            },
            Some(s) => Self::from_parts(&SecretKey::from_bytes(*s), DeviceId(rec.device), &rec.name),
            None => Self::public_parts(&rec),
        };
        if id.user.0 != rec.user {
            return Err(corrupted(&"the user id is not the user key's"));
        }
        id.former = rec.former.iter().map(|d| DeviceId(*d)).collect();
        id.node = node;
        if known {
            id.with_known_chain(keys, chain)
        } else {
            id.with_chain(keys, chain)
        }
    }

    /// An identity of a record's user, device and name, holding no keys yet.
    fn public_parts(rec: &IdentityRecordV4) -> Self {
        Identity {
            signing: None,
            user: UserId(rec.user),
            device: DeviceId(rec.device),
            name: rec.name.clone(),
            device_keys: None,
            former: Vec::new(),
            node: None,
        }
    }

    /// This identity with `keys` and their chain (verified, or verified
    /// before it was sealed), which must certify this user's device and
    /// those keys.
    fn with_known_chain(mut self, keys: DeviceKeys, chain: Vec<DeviceCert>) -> Result<Self> {
        let body = &chain
            .last()
            .ok_or_else(|| Error::corrupted("device certificate", "an empty chain"))?
            .body;
        if body.user != self.user || body.device != self.device || body.keys != keys.public() {
            return Err(Error::corrupted(
                "identity",
                "the device certificate is not this device's",
            ));
        }
        self.device_keys = Some((keys, chain));
        Ok(self)
    }

    /// This identity with its record's keys and certificate, which must be
    /// the user's, for this device and its keys.
    fn with_keys(self, keys: &[u8], cert: &[u8]) -> Result<Self> {
        let keys = DeviceKeys::decode(keys)?;
        let cert = DeviceCert::decode(cert)?;
        self.with_chain(keys, vec![cert])
    }

    /// This identity with `keys` and their chain, which must verify and
    /// certify this user's device and those keys.
    fn with_chain(self, keys: DeviceKeys, chain: Vec<DeviceCert>) -> Result<Self> {
        crate::device::verify_chain(&chain)?;
        self.with_known_chain(keys, chain)
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
    fn a_restored_device_is_a_new_device_with_its_own_network_key() {
        let owner = Identity::generate("alice").unwrap();
        let restored = owner.restored().unwrap();
        assert_eq!((restored.user(), restored.name()), (owner.user(), "alice"));
        assert_ne!(restored.device(), owner.device());
        assert!(restored.on_keyed_id() && restored.former().is_empty());
        // Certified by the user key, which it keeps.
        assert!(restored.holds_user_key() && restored.device_chain().unwrap().len() == 1);
        let node = restored.node_secret().expect("its own network key");
        assert!(owner.node_secret().is_none());
        // Version 5 carries the key; without one, version 4 stays.
        let bytes = restored.encode();
        assert_eq!(bytes[0], IDENTITY_VERSION_NODE);
        assert_eq!(owner.encode()[0], IDENTITY_VERSION);
        let back = Identity::decode(&bytes).unwrap();
        assert_eq!(back.node_secret(), Some(node));
        assert_eq!(back.device_cert(), restored.device_cert());
        // A key cut short is refused.
        assert!(Identity::decode(&bytes[..bytes.len() - 1]).is_err());
        // A device linked by another holds no user key: its restored device
        // is certified through its chain.
        let linked_keys = DeviceKeys::generate().unwrap();
        let chain = owner.certify_device(linked_keys.public()).unwrap();
        let linked = Identity::linked(linked_keys, chain, "alice").unwrap();
        let again = linked.restored().unwrap();
        assert!(!again.holds_user_key());
        assert_eq!(again.device_chain().unwrap().len(), 3);
        assert_eq!(
            crate::device::verify_chain(again.device_chain().unwrap())
                .unwrap()
                .device,
            again.device()
        );
        assert_ne!(again.node_secret(), back.node_secret());
    }

    #[test]
    fn a_reborn_device_is_a_new_device_with_the_same_network_key() {
        let owner = Identity::generate("alice").unwrap();
        let reborn = owner.reborn().unwrap();
        assert_eq!((reborn.user(), reborn.name()), (owner.user(), "alice"));
        assert_ne!(reborn.device(), owner.device());
        assert!(reborn.on_keyed_id() && reborn.is_this_device(&owner.device()));
        assert_eq!(reborn.former(), [owner.device()]);
        // Keys sealed to the old device still open: the same exchange key.
        let (old, new) = (owner.device_keys().unwrap(), reborn.device_keys().unwrap());
        assert_eq!(old.public().kx, new.public().kx);
        assert_ne!(old.public().signing, new.public().signing);
        assert!(reborn.holds_user_key() && reborn.device_chain().unwrap().len() == 1);
        assert!(reborn.node_secret().is_none(), "the store's own network key, as before");
        // A restored device's own network key goes with it.
        let restored = owner.restored().unwrap();
        let again = restored.reborn().unwrap();
        assert_eq!(again.node_secret(), restored.node_secret());
        assert_ne!(again.device(), restored.device());
        assert!(again.reborn().unwrap().former().len() == 2, "every id it wrote under");
        // A linked device is reborn through its chain, one link longer each
        // time, until the chain is as long as chains go.
        let keys = DeviceKeys::generate().unwrap();
        let chain = owner.certify_device(keys.public()).unwrap();
        let mut linked = Identity::linked(keys, chain, "alice").unwrap();
        let mut rebirths = 0;
        while linked.can_be_reborn() {
            let next = linked.reborn().unwrap();
            assert!(!next.holds_user_key());
            assert_eq!(
                next.device_chain().unwrap().len(),
                linked.device_chain().unwrap().len() + 1
            );
            assert_eq!(
                crate::device::verify_chain(next.device_chain().unwrap())
                    .unwrap()
                    .device,
                next.device()
            );
            linked = next;
            rebirths += 1;
        }
        assert_eq!(rebirths, crate::device::MAX_CHAIN - 2);
        assert!(linked.reborn().is_err(), "no successor past the chain's limit");
        assert!(owner.can_be_reborn());
    }

    /// An identity record of version 1 (no device keys).
    fn v1_record() -> Vec<u8> {
        postcard::to_stdvec(&IdentityRecord {
            version: 1,
            secret: [5; 32],
            device: [6; 16],
            name: "old".into(),
        })
        .unwrap()
    }

    #[test]
    fn a_sealed_record_decodes_to_the_same_identity_and_its_relations_still_hold() {
        let id = Identity::generate("alice").unwrap().with_keyed_id().unwrap();
        let bytes = id.encode();
        let (full, sealed) = (
            Identity::decode(&bytes).unwrap(),
            Identity::decode_sealed(&bytes).unwrap(),
        );
        assert_eq!(sealed.encode(), bytes);
        assert_eq!(
            (sealed.user(), sealed.device(), sealed.former()),
            (full.user(), full.device(), full.former())
        );
        assert_eq!(
            sealed.device_keys().unwrap().public(),
            full.device_keys().unwrap().public()
        );
        assert_eq!(sealed.device_chain(), full.device_chain());
        assert_eq!(
            sealed.node_secret().map(|k| *k.expose()),
            full.node_secret().map(|k| *k.expose())
        );
        // Both sign alike (ed25519 is deterministic), and open what was
        // sealed to the device.
        let keys = sealed.device_keys().unwrap();
        assert_eq!(keys.sign(b"d", b"m"), full.device_keys().unwrap().sign(b"d", b"m"));
        assert_eq!(sealed.sign(b"m").unwrap(), full.sign(b"m").unwrap());
        assert_eq!(sealed.secret().map(|k| *k.expose()), full.secret().map(|k| *k.expose()));
        let to_device =
            crate::device::seal_to_device(&full.device_keys().unwrap().public().kx, b"aad", b"secret").unwrap();
        assert_eq!(keys.open_sealed(b"aad", &to_device).unwrap(), b"secret");
        // Another device's certificate, another user's id or no chain is
        // refused; keys that are not the ones their certificate names are
        // refused by `decode`, and taken by `decode_sealed`, which trusts
        // what the store checked before sealing and makes them only when
        // they first sign (they would sign what no peer accepts).
        let other = Identity::generate("x").unwrap();
        let rec = || -> IdentityRecordV4 { postcard::from_bytes(&bytes).unwrap() };
        let mut wrong_keys = rec();
        wrong_keys.keys = other.device_keys().unwrap().encode();
        let mut wrong_chain = rec();
        wrong_chain.chain = vec![other.device_cert().unwrap().encode()];
        let mut wrong_user = rec();
        wrong_user.user = other.user().0;
        let mut no_chain = rec();
        no_chain.chain.clear();
        for bad in [wrong_chain, wrong_user, no_chain] {
            let bad = postcard::to_stdvec(&bad).unwrap();
            assert!(Identity::decode_sealed(&bad).is_err());
            assert!(Identity::decode(&bad).is_err());
        }
        assert!(Identity::decode(&postcard::to_stdvec(&wrong_keys).unwrap()).is_err());
        // A record of an older version is read as `decode` reads it.
        let v1 = v1_record();
        assert_eq!(Identity::decode_sealed(&v1).unwrap().encode(), v1);
    }

    #[test]
    fn identity_round_trips_and_signs() {
        let id = Identity::generate("alice").unwrap();
        let back = Identity::decode(&id.encode()).unwrap();
        assert_eq!(back.user(), id.user());
        assert_eq!(back.device(), id.device());
        assert_eq!(back.name(), "alice");
        // A new device's id is its key's, certified by the user.
        let keys = back.device_keys().unwrap();
        assert_eq!(back.device(), keys.device_id());
        assert_eq!(back.device_cert(), id.device_cert());
        assert!(!back.device_cert().unwrap().body.legacy);
        // An identity of version 1 (no device keys) is read, and given keys
        // that keep its id.
        let v1 = v1_record();
        let old = Identity::decode(&v1).unwrap();
        assert!(old.device_keys().is_none());
        assert_eq!(old.encode(), v1);
        let migrated = old.with_device_keys().unwrap();
        assert_eq!(migrated.device(), DeviceId([6; 16]));
        let cert = migrated.device_cert().unwrap();
        assert!(cert.body.legacy && cert.body.device == DeviceId([6; 16]));
        let again = Identity::decode(&migrated.encode()).unwrap();
        assert_eq!(again.device_cert(), migrated.device_cert());
        // A certificate of another device in the record is refused.
        let other = Identity::generate("x").unwrap();
        let mut rec: IdentityRecordV4 = postcard::from_bytes(&again.encode()).unwrap();
        rec.chain = vec![other.device_cert().unwrap().encode()];
        assert!(Identity::decode(&postcard::to_stdvec(&rec).unwrap()).is_err());
        // Nor a user id that is not the user key's.
        let mut rec: IdentityRecordV4 = postcard::from_bytes(&again.encode()).unwrap();
        rec.user = other.user().0;
        assert!(Identity::decode(&postcard::to_stdvec(&rec).unwrap()).is_err());
        // A version 3 record (format 7) still reads.
        let v3 = postcard::to_stdvec(&IdentityRecordV3 {
            version: 3,
            secret: [5; 32],
            device: [6; 16],
            name: "old".into(),
            keys: again.device_keys().unwrap().encode(),
            cert: again.device_cert().unwrap().encode(),
            former: vec![[1; 16]],
        })
        .unwrap();
        let read = Identity::decode(&v3).unwrap();
        assert_eq!(read.former(), &[DeviceId([1; 16])]);
        assert!(read.holds_user_key() && read.device_chain().unwrap().len() == 1);
        // It moves to its keyed id, keeping the old one as a former id.
        let moved = migrated.with_keyed_id().unwrap();
        assert!(moved.on_keyed_id() && !again.on_keyed_id());
        assert_eq!(moved.device(), moved.device_keys().unwrap().device_id());
        assert_eq!(moved.former(), &[DeviceId([6; 16])]);
        assert!(moved.is_this_device(&DeviceId([6; 16])) && moved.is_this_device(&moved.device()));
        assert!(!moved.device_cert().unwrap().body.legacy);
        let back = Identity::decode(&moved.encode()).unwrap();
        assert_eq!((back.device(), back.former()), (moved.device(), moved.former()));
        // A version 2 record (formats 4 to 6) still reads.
        let v2 = postcard::to_stdvec(&IdentityRecordV2 {
            version: 2,
            secret: [5; 32],
            device: [6; 16],
            name: "old".into(),
            keys: again.device_keys().unwrap().encode(),
            cert: again.device_cert().unwrap().encode(),
        })
        .unwrap();
        let read = Identity::decode(&v2).unwrap();
        assert_eq!((read.device(), read.former().len()), (DeviceId([6; 16]), 0));
        // One on its keyed id already stays as it is.
        let fresh = Identity::generate("new").unwrap();
        assert!(fresh.on_keyed_id());
        let same = fresh.clone().with_keyed_id().unwrap();
        assert_eq!((same.device(), same.former().len()), (fresh.device(), 0));
        assert_eq!(same.device_cert(), fresh.device_cert());
        let sig = id.sign(b"m").unwrap();
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
