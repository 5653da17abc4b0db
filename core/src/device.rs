//! Device keys and device certificates (issue 8, item 1).
//!
//! Each device has its own ed25519 signing key and X25519 key-agreement key.
//! Its id is derived from its signing key ([`device_id_of`]), so nobody can
//! claim another device's id. A [`DeviceCert`] binds the device's keys to its
//! user, signed by the user key (or, for devices linked later, by a certified
//! device of the same user):
//!
//! ```text
//! cert  = postcard { version u8 (= 1), user [32], device [16], signing [32], kx [32],
//!                    issuer (0 User | 1 Device [16]), issued u64 (unix ms), legacy bool } | sig [64]
//! sig   = ed25519 by the issuer over "hearth v2 device cert" 0x00 | the postcard part (verify_strict)
//! device = device_id_of(signing) (a keyed id: 12 bytes of a hash of the key and
//!          a 4-byte check), or the plain hash formats 4 to 6 derived
//!          (`device_id_v2`, for feeds written then); with `legacy`, a random
//!          id a device wrote feeds under before it had keys, bound to its
//!          keys by its user (never by another device, never a keyed id)
//! ```
//!
//! Sealing to a device ([`seal_to_device`]) is what key rotation (item 3)
//! needs: an ephemeral X25519 key, HKDF-SHA256 of the shared secret and both
//! public keys, XChaCha20-Poly1305 with the caller's associated data.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::signer::LazySigner;

use crate::error::{Error, Result};
use crate::id::{DeviceId, UserId, random_bytes};
use crate::identity::verify_signature;
use crate::secret::SecretKey;

/// Version of the certificate format.
pub const CERT_VERSION: u8 = 1;
/// Bytes of an encoded certificate at most (it is about 170).
pub const MAX_CERT_BYTES: usize = 512;
/// Bytes a sealed box to a device adds: ephemeral key, nonce and tag.
pub const SEAL_TO_DEVICE_OVERHEAD: usize = 32 + crate::seal::SEAL_OVERHEAD;

/// Certificates in a chain at most: a device linked by a device linked by
/// ... the user, seven links deep.
pub const MAX_CHAIN: usize = 8;

/// The signing-domain label of certificates.
const CERT_DOMAIN: &[u8] = b"hearth v2 device cert";

/// The message a signature of `domain` covers: the label, a zero byte, the bytes.
pub fn domain_message(domain: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + msg.len());
    m.extend_from_slice(domain);
    m.push(0);
    m.extend_from_slice(msg);
    m
}

/// The id of the device whose signing public key is `signing` (a *keyed*
/// id): 12 bytes of a hash of the key, then a 4-byte check of those 12
/// ([`is_keyed_id`]). The check is what stops squatting: a keyed id can only
/// be claimed by a chain that certifies its key, never by a legacy binding
/// or a format 1 entry, and anyone can tell a keyed id from a random one.
pub fn device_id_of(signing: &[u8; 32]) -> DeviceId {
    let k = blake3::derive_key("hearth v3 device id", signing);
    let mut id = [0u8; 16];
    id[..12].copy_from_slice(&k[..12]);
    let check = keyed_check(&id[..12]);
    id[12..].copy_from_slice(&check);
    DeviceId(id)
}

fn keyed_check(head: &[u8]) -> [u8; 4] {
    let c = blake3::derive_key("hearth v3 device id check", head);
    c[..4].try_into().expect("4 bytes")
}

/// Whether `id` has the form of a keyed id ([`device_id_of`]): its last 4
/// bytes check its first 12. A random id (a device that wrote feeds before
/// devices had keys) has it with a chance of 2^-32.
pub fn is_keyed_id(id: &DeviceId) -> bool {
    id.0[12..] == keyed_check(&id.0[..12])
}

/// The id the code of store formats 4 to 6 derived from a device's key (a
/// plain hash, indistinguishable from a random id). Chains that certify one
/// still verify, for the feeds written under it; a device that has one moves
/// to its keyed id (store format 7).
pub fn device_id_v2(signing: &[u8; 32]) -> DeviceId {
    let k = blake3::derive_key("hearth v2 device id", signing);
    DeviceId(k[..16].try_into().expect("16 bytes"))
}

/// A device's public keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePublic {
    /// ed25519 verifying key.
    pub signing: [u8; 32],
    /// X25519 public key.
    pub kx: [u8; 32],
}

/// A device's own secret keys. Never printed.
#[derive(Clone)]
pub struct DeviceKeys {
    signing: LazySigner,
    kx: StaticSecret,
    /// The public halves, computed once (an X25519 public key costs a
    /// scalar multiplication).
    public: DevicePublic,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct KeysRecord {
    version: u8,
    signing: [u8; 32],
    kx: [u8; 32],
}

impl DeviceKeys {
    /// Fresh keys.
    pub fn generate() -> Result<Self> {
        let (mut s, mut k) = ([0u8; 32], [0u8; 32]);
        random_bytes(&mut s)?;
        random_bytes(&mut k)?;
        let keys = Self::from_secrets(SigningKey::from_bytes(&s), StaticSecret::from(k));
        s.zeroize();
        k.zeroize();
        Ok(keys)
    }

    /// Keys for the device that succeeds this one in its own store
    /// ([`crate::Identity::reborn`]): a fresh signing key (so a new device
    /// id), the same key-agreement key, so that keys sealed to this device
    /// still open.
    pub fn successor(&self) -> Result<Self> {
        let mut s = [0u8; 32];
        random_bytes(&mut s)?;
        let keys = Self::from_secrets(SigningKey::from_bytes(&s), self.kx.clone());
        s.zeroize();
        Ok(keys)
    }

    fn from_secrets(signing: SigningKey, kx: StaticSecret) -> Self {
        let public = DevicePublic {
            signing: signing.verifying_key().to_bytes(),
            kx: PublicKey::from(&kx).to_bytes(),
        };
        DeviceKeys {
            signing: LazySigner::made(signing),
            kx,
            public,
        }
    }

    /// The public halves.
    pub fn public(&self) -> DevicePublic {
        self.public
    }

    /// The id these keys give a new device.
    pub fn device_id(&self) -> DeviceId {
        device_id_of(&self.public().signing)
    }

    /// Sign `msg` in `domain` (see [`domain_message`]).
    pub fn sign(&self, domain: &[u8], msg: &[u8]) -> [u8; 64] {
        self.signing.key().sign(&domain_message(domain, msg)).to_bytes()
    }

    /// Sign a message that already carries its domain label.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.key().sign(msg).to_bytes()
    }

    /// Encode for sealing into the store (the caller seals it).
    pub fn encode(&self) -> Vec<u8> {
        let rec = KeysRecord {
            version: 1,
            signing: self.signing.to_bytes(),
            kx: self.kx.to_bytes(),
        };
        postcard::to_stdvec(&rec).expect("device keys encode")
    }

    /// Decode what [`DeviceKeys::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let rec = Self::record(bytes)?;
        Ok(Self::from_secrets(
            SigningKey::from_bytes(&rec.signing),
            StaticSecret::from(rec.kx),
        ))
    }

    /// [`DeviceKeys::decode`] for keys whose public halves are known (from
    /// the device's own certificate, in a record only its store sealed,
    /// which checked that they are these keys' before sealing it): neither
    /// public key is computed here (each a scalar multiplication), and the
    /// signing key is made when it first signs.
    pub fn decode_known(bytes: &[u8], public: DevicePublic) -> Result<Self> {
        let rec = Self::record(bytes)?;
        Ok(DeviceKeys {
            signing: LazySigner::later(&rec.signing),
            kx: StaticSecret::from(rec.kx),
            public,
        })
    }

    /// Decode a [`KeysRecord`].
    fn record(bytes: &[u8]) -> Result<KeysRecord> {
        let rec: KeysRecord = postcard::from_bytes(bytes).map_err(|e| Error::corrupted("device keys", e))?;
        if rec.version != 1 {
            return Err(Error::UnsupportedFormat {
                what: "device keys",
                found: rec.version,
                expected: 1,
            });
        }
        Ok(rec)
    }

    /// Open what [`seal_to_device`] sealed to this device.
    pub fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let (eph, rest) = sealed
            .split_first_chunk::<32>()
            .ok_or_else(|| Error::corrupted("sealed to device", "too short"))?;
        let key = box_key(&self.kx, &PublicKey::from(*eph), eph, &self.public().kx)?;
        crate::seal::open(&key, aad, rest, "sealed to device")
    }
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// The key of a box between an ephemeral and a device key: HKDF-SHA256 of the
/// shared secret, salted with both public keys. A shared secret of low order
/// (a public key that forces it) is refused.
fn box_key(secret: &StaticSecret, their: &PublicKey, eph: &[u8; 32], device: &[u8; 32]) -> Result<SecretKey> {
    let shared = secret.diffie_hellman(their);
    if !shared.was_contributory() {
        return Err(Error::corrupted("sealed to device", "a key of low order"));
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(device);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut out = [0u8; 32];
    hk.expand(b"hearth v2 sealed to device", &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    Ok(SecretKey::from_bytes(out))
}

/// Seal `plain` to the device whose X25519 public key is `kx`, bound to `aad`:
/// `ephemeral public [32] | nonce [24] | ciphertext | tag [16]`.
pub fn seal_to_device(kx: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let mut e = [0u8; 32];
    random_bytes(&mut e)?;
    let eph = StaticSecret::from(e);
    e.zeroize();
    let eph_public = PublicKey::from(&eph).to_bytes();
    let key = box_key(&eph, &PublicKey::from(*kx), &eph_public, kx)?;
    let mut out = eph_public.to_vec();
    out.extend(crate::seal::seal(&key, aad, plain)?);
    Ok(out)
}

/// Who signed a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Issuer {
    /// The user key.
    User,
    /// A certified device of the same user (its certificate comes first in a chain).
    Device(DeviceId),
}

/// What a certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBody {
    /// Format version ([`CERT_VERSION`]).
    pub version: u8,
    /// The user the device belongs to.
    pub user: UserId,
    /// The device's id.
    pub device: DeviceId,
    /// The device's keys.
    pub keys: DevicePublic,
    /// Who signed.
    pub issuer: Issuer,
    /// When (unix milliseconds, the issuer's clock).
    pub issued: u64,
    /// The device wrote feeds before it had keys: it keeps its random id.
    pub legacy: bool,
}

/// A device certificate: the body and the issuer's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCert {
    /// What it says.
    pub body: CertBody,
    /// ed25519 signature of the issuer (see the module docs).
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl DeviceCert {
    /// Certify `keys` as device `device` of the user of `user_key` (the
    /// user's signing key). `legacy` keeps an existing random id.
    pub fn by_user(
        user_key: &SigningKey,
        device: DeviceId,
        keys: DevicePublic,
        issued: u64,
        legacy: bool,
    ) -> DeviceCert {
        let body = CertBody {
            version: CERT_VERSION,
            user: UserId(user_key.verifying_key().to_bytes()),
            device,
            keys,
            issuer: Issuer::User,
            issued,
            legacy,
        };
        let bytes = postcard::to_stdvec(&body).expect("a certificate encodes");
        let sig = user_key.sign(&domain_message(CERT_DOMAIN, &bytes)).to_bytes().to_vec();
        DeviceCert { body, sig }
    }

    /// Certify a new device (its id derived from its keys) of `issuer`'s user,
    /// signed by `issuer`, a certified device (`issuer_cert` is its certificate).
    pub fn by_device(issuer: &DeviceKeys, issuer_cert: &CertBody, keys: DevicePublic, issued: u64) -> DeviceCert {
        let body = CertBody {
            version: CERT_VERSION,
            user: issuer_cert.user,
            device: device_id_of(&keys.signing),
            keys,
            issuer: Issuer::Device(issuer_cert.device),
            issued,
            legacy: false,
        };
        let bytes = postcard::to_stdvec(&body).expect("a certificate encodes");
        let sig = issuer.sign(CERT_DOMAIN, &bytes).to_vec();
        DeviceCert { body, sig }
    }

    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a certificate encodes")
    }

    /// Decode (untrusted bytes: capped, strict and canonical). Nothing is
    /// checked beyond the form: see [`verify_chain`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CERT_BYTES {
            return Err(Error::TooLarge {
                what: "device certificate",
                size: bytes.len(),
                limit: MAX_CERT_BYTES,
            });
        }
        let (cert, rest): (DeviceCert, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted("device certificate", e))?;
        if !rest.is_empty() {
            return Err(Error::corrupted("device certificate", "trailing bytes"));
        }
        if cert.body.version != CERT_VERSION {
            return Err(Error::UnsupportedFormat {
                what: "device certificate",
                found: cert.body.version,
                expected: CERT_VERSION,
            });
        }
        if cert.sig.len() != 64 {
            return Err(Error::corrupted("device certificate", "signature length"));
        }
        if cert.encode() != bytes {
            return Err(Error::corrupted("device certificate", "not in canonical encoding"));
        }
        Ok(cert)
    }

    fn signature(&self) -> [u8; 64] {
        self.sig.as_slice().try_into().unwrap_or([0; 64])
    }
}

/// Check a chain of certificates, each issued by the user or by the device of
/// an earlier one, all of one user; the last certifies the device in
/// question. Returns that device's body. A legacy binding (a random id kept)
/// must be signed by the user key itself.
pub fn verify_chain(chain: &[DeviceCert]) -> Result<&CertBody> {
    let bad = |why: &str| Error::corrupted("device certificate", why.to_string());
    let last = chain.last().ok_or_else(|| bad("an empty chain"))?;
    if chain.len() > MAX_CHAIN {
        return Err(bad("a chain longer than 8"));
    }
    let user = last.body.user;
    for (i, cert) in chain.iter().enumerate() {
        let b = &cert.body;
        if b.user != user {
            return Err(bad("a chain across users"));
        }
        if b.legacy {
            if b.issuer != Issuer::User {
                return Err(bad("a kept device id bound by a device, not the user"));
            }
            if is_keyed_id(&b.device) {
                return Err(bad("a keyed device id bound as a kept one (squatting)"));
            }
        } else if b.device != device_id_of(&b.keys.signing) && b.device != device_id_v2(&b.keys.signing) {
            return Err(bad("a device id that is not its key's"));
        }
        let bytes = postcard::to_stdvec(b).expect("a certificate encodes");
        let msg = domain_message(CERT_DOMAIN, &bytes);
        let signer = match b.issuer {
            Issuer::User => user,
            Issuer::Device(d) => {
                let issuer = chain[..i]
                    .iter()
                    .find(|c| c.body.device == d)
                    .ok_or_else(|| bad("an issuing device not certified earlier in the chain"))?;
                UserId(issuer.body.keys.signing)
            }
        };
        verify_signature(&signer, &msg, &cert.signature()).map_err(|_| bad("a signature that does not verify"))?;
    }
    Ok(&last.body)
}

/// The devices a chain's last certificate was issued through, nearest
/// first: its issuer, that one's issuer, and so on up to a certificate the
/// user key signed (id and signing key of each). A revocation of any of
/// them reaches the last device too. Empty for a device the user key
/// certified. The chain is taken as verified ([`verify_chain`]).
pub fn issuers(chain: &[DeviceCert]) -> Vec<(DeviceId, [u8; 32])> {
    let mut out = Vec::new();
    let Some(mut at) = chain.last() else { return out };
    while let Issuer::Device(d) = at.body.issuer {
        let Some(issuer) = chain.iter().find(|c| c.body.device == d) else {
            break;
        };
        if out.len() >= MAX_CHAIN || out.iter().any(|(o, _)| *o == d) {
            break;
        }
        out.push((d, issuer.body.keys.signing));
        at = issuer;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn device_ids_come_from_keys_and_certificates_chain() {
        let (a, b) = (DeviceKeys::generate().unwrap(), DeviceKeys::generate().unwrap());
        assert_ne!(a.device_id(), b.device_id());
        let ca = DeviceCert::by_user(&user(), a.device_id(), a.public(), 1, false);
        assert_eq!(verify_chain(std::slice::from_ref(&ca)).unwrap().device, a.device_id());
        // A device linked by `a`: a chain of two.
        let cb = DeviceCert::by_device(&a, &ca.body, b.public(), 2);
        assert_eq!(verify_chain(&[ca.clone(), cb.clone()]).unwrap().device, b.device_id());
        assert!(
            verify_chain(std::slice::from_ref(&cb)).is_err(),
            "its issuer is not in the chain"
        );
        // What `b` was issued through: `a`; and a third device linked by
        // `b`, through both, nearest first.
        assert!(issuers(std::slice::from_ref(&ca)).is_empty());
        assert_eq!(
            issuers(&[ca.clone(), cb.clone()]),
            vec![(a.device_id(), a.public().signing)]
        );
        let c = DeviceKeys::generate().unwrap();
        let cc = DeviceCert::by_device(&b, &cb.body, c.public(), 3);
        let three = [ca.clone(), cb.clone(), cc];
        assert_eq!(verify_chain(&three).unwrap().device, c.device_id());
        assert_eq!(
            issuers(&three),
            vec![(b.device_id(), b.public().signing), (a.device_id(), a.public().signing)]
        );
        // Round trip, strictly.
        assert_eq!(DeviceCert::decode(&cb.encode()).unwrap(), cb);
        let mut trailing = cb.encode();
        trailing.push(0);
        assert!(DeviceCert::decode(&trailing).is_err());

        // Claiming another device's id, or another user's device: refused.
        let mut squat = DeviceCert::by_user(&user(), a.device_id(), b.public(), 3, false);
        assert!(verify_chain(std::slice::from_ref(&squat)).is_err());
        squat.body.legacy = true; // the signature no longer covers the body
        assert!(verify_chain(std::slice::from_ref(&squat)).is_err());
        let mallory = SigningKey::from_bytes(&[9; 32]);
        let mut stolen = DeviceCert::by_user(&mallory, a.device_id(), a.public(), 4, false);
        stolen.body.user = ca.body.user;
        assert!(verify_chain(std::slice::from_ref(&stolen)).is_err());
        let other = DeviceCert::by_user(&mallory, b.device_id(), b.public(), 5, false);
        assert!(verify_chain(&[ca.clone(), other]).is_err(), "a chain across users");
        // A legacy binding: only by the user key.
        let kept = DeviceId([3; 16]);
        let legacy = DeviceCert::by_user(&user(), kept, b.public(), 6, true);
        assert_eq!(verify_chain(std::slice::from_ref(&legacy)).unwrap().device, kept);
        let mut by_device = DeviceCert::by_device(&a, &ca.body, b.public(), 7);
        by_device.body.device = kept;
        by_device.body.legacy = true;
        by_device.sig = a
            .sign(CERT_DOMAIN, &postcard::to_stdvec(&by_device.body).unwrap())
            .to_vec();
        assert!(verify_chain(&[ca.clone(), by_device]).is_err());
    }

    #[test]
    fn keyed_ids_are_told_from_random_ones_and_never_bound_as_legacy() {
        let (a, m) = (DeviceKeys::generate().unwrap(), DeviceKeys::generate().unwrap());
        assert!(is_keyed_id(&a.device_id()));
        let random = (0..1000)
            .filter(|_| is_keyed_id(&DeviceId::generate().unwrap()))
            .count();
        assert_eq!(random, 0, "a random id passes the check with a chance of 2^-32");
        // Mallory binds Alice's keyed id to Mallory's own key as a kept id:
        // refused, whoever signs it.
        let mallory = SigningKey::from_bytes(&[9; 32]);
        let squat = DeviceCert::by_user(&mallory, a.device_id(), m.public(), 1, true);
        let err = verify_chain(std::slice::from_ref(&squat)).unwrap_err();
        assert!(err.to_string().contains("squatting"), "{err}");
        // Certifying Alice's public key under Mallory's user verifies, but
        // only Alice's key signs for that id.
        let copied = DeviceCert::by_user(&mallory, a.device_id(), a.public(), 2, false);
        assert!(verify_chain(std::slice::from_ref(&copied)).is_ok());
        // An id of formats 4 to 6 (a plain hash of the key) still verifies for
        // its key, and is not keyed.
        let old = device_id_v2(&a.public().signing);
        assert!(!is_keyed_id(&old));
        let c = DeviceCert::by_user(&user(), old, a.public(), 3, false);
        assert_eq!(verify_chain(std::slice::from_ref(&c)).unwrap().device, old);
        let wrong = DeviceCert::by_user(&user(), device_id_v2(&m.public().signing), a.public(), 4, false);
        assert!(verify_chain(std::slice::from_ref(&wrong)).is_err());
    }

    #[test]
    fn sealed_to_a_device_opens_only_there_and_only_with_its_aad() {
        let (a, b) = (DeviceKeys::generate().unwrap(), DeviceKeys::generate().unwrap());
        let sealed = seal_to_device(&a.public().kx, b"aad", b"channel key").unwrap();
        assert_eq!(sealed.len(), 11 + SEAL_TO_DEVICE_OVERHEAD);
        assert_eq!(a.open_sealed(b"aad", &sealed).unwrap(), b"channel key");
        assert!(a.open_sealed(b"other", &sealed).is_err());
        assert!(b.open_sealed(b"aad", &sealed).is_err());
        assert!(a.open_sealed(b"aad", &sealed[..20]).is_err());
        // A low-order public key (all zero) gives no box at all.
        assert!(seal_to_device(&[0; 32], b"aad", b"x").is_err());
        let mut forged = sealed.clone();
        forged[..32].copy_from_slice(&[0; 32]);
        assert!(a.open_sealed(b"aad", &forged).is_err());
        // Keys survive their record; Debug shows no secret.
        let back = DeviceKeys::decode(&a.encode()).unwrap();
        assert_eq!(back.public(), a.public());
        let rec: KeysRecord = postcard::from_bytes(&a.encode()).unwrap();
        let debug = format!("{a:?}");
        assert!(!debug.contains(&format!("{:?}", rec.signing)) && !debug.contains(&format!("{:?}", rec.kx)));
    }
}
