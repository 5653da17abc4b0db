//! Linking a new device to a user: what travels, sealed, from a device of the
//! user to the new one.
//!
//! `hearth link` makes a one-time 32-byte secret and puts it in a ticket. The
//! new device makes its own keys first, proves it holds the ticket by a
//! keyed hash over its own network peer id (which the Noise handshake
//! authenticates), sends its public keys, and (once both users saw the same
//! code) receives the [`LinkBundle`] sealed under a key derived from the
//! secret: a certificate chain for its keys issued by the linking device
//! (never the user key), the display name and every channel key. Its id is
//! its key's; from then on it writes its own feeds as the same user, and a
//! revocation of the linking device reaches it too.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::channel::ChannelKeys;
use crate::device::{DeviceCert, MAX_CHAIN};
use crate::error::{Error, Result};
use crate::id::ChannelId;
use crate::seal::{open, seal};
use crate::secret::SecretKey;

/// Largest sealed bundle accepted (about 20,000 channels).
pub const MAX_LINK_BUNDLE: usize = 1 << 20;
/// Version 2: a certificate chain instead of the user key (version 1).
const VERSION: u8 = 2;
const AAD: &[u8] = b"hearth v1 link bundle";

/// What a new device of a user needs: its certificate chain, the user's
/// name and the channel keys.
pub struct LinkBundle {
    /// The new device's chain: the linking device's, then the linking
    /// device's certificate of the new device's keys
    /// ([`crate::Identity::certify_device`]).
    pub chain: Vec<DeviceCert>,
    /// The user's display name.
    pub name: String,
    /// Every channel of the user.
    pub channels: Vec<ChannelKeys>,
}

impl std::fmt::Debug for LinkBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkBundle")
            .field("name", &self.name)
            .field("chain", &self.chain.len())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    chain: Vec<serde_bytes::ByteBuf>,
    name: String,
    channels: Vec<(ChannelId, [u8; 32])>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        for (_, k) in &mut self.channels {
            k.zeroize();
        }
    }
}

fn bundle_key(secret: &SecretKey) -> SecretKey {
    SecretKey::from_bytes(*blake3::keyed_hash(secret.expose(), b"hearth v1 link bundle key").as_bytes())
}

/// The short code both devices show before the new one gets any key: six
/// digits derived from the link secret and both peer ids (which Noise
/// authenticated). Someone else who got hold of the ticket and asked first
/// has another peer id, so the linking device shows another code than the
/// new device does, and its user declines.
pub fn link_code(secret: &SecretKey, linking_peer: &[u8], new_peer: &[u8]) -> String {
    let mut h = blake3::Hasher::new_keyed(secret.expose());
    h.update(b"hearth v2 link code");
    for p in [linking_peer, new_peer] {
        h.update(&(p.len() as u32).to_le_bytes());
        h.update(p);
    }
    let n = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes")) % 1_000_000;
    format!("{:03} {:03}", n / 1000, n % 1000)
}

/// The proof that a peer holds the link secret: a keyed hash of its peer id bytes.
pub fn link_proof(secret: &SecretKey, peer: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret.expose());
    h.update(b"hearth v1 link proof");
    h.update(peer);
    *h.finalize().as_bytes()
}

impl LinkBundle {
    /// Seal the bundle under the link secret.
    pub fn seal(&self, secret: &SecretKey) -> Result<Vec<u8>> {
        let wire = Wire {
            version: VERSION,
            chain: self
                .chain
                .iter()
                .map(|c| serde_bytes::ByteBuf::from(c.encode()))
                .collect(),
            name: self.name.clone(),
            channels: self.channels.iter().map(|k| (k.id(), *k.key().expose())).collect(),
        };
        let mut plain = postcard::to_stdvec(&wire).expect("a link bundle encodes");
        let sealed = seal(&bundle_key(secret), AAD, &plain);
        plain.zeroize();
        let sealed = sealed?;
        if sealed.len() > MAX_LINK_BUNDLE {
            return Err(Error::TooLarge {
                what: "link bundle",
                size: sealed.len(),
                limit: MAX_LINK_BUNDLE,
            });
        }
        Ok(sealed)
    }

    /// Open a sealed bundle (untrusted bytes: size-checked, authenticated, then decoded).
    pub fn open(secret: &SecretKey, sealed: &[u8]) -> Result<Self> {
        if sealed.len() > MAX_LINK_BUNDLE {
            return Err(Error::TooLarge {
                what: "link bundle",
                size: sealed.len(),
                limit: MAX_LINK_BUNDLE,
            });
        }
        let mut plain = open(&bundle_key(secret), AAD, sealed, "link bundle")?;
        let decoded = postcard::take_from_bytes::<Wire>(&plain);
        let res = match decoded {
            Ok((w, [])) => {
                if w.version != VERSION {
                    Err(Error::UnsupportedFormat {
                        what: "link bundle",
                        found: w.version,
                        expected: VERSION,
                    })
                } else if w.chain.is_empty() || w.chain.len() > MAX_CHAIN {
                    Err(Error::corrupted(
                        "link bundle",
                        "a chain of no or more than 8 certificates",
                    ))
                } else {
                    crate::op::Op::SetName { name: w.name.clone() }.validate()?;
                    let chain = w
                        .chain
                        .iter()
                        .map(|c| DeviceCert::decode(c))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(LinkBundle {
                        chain,
                        name: w.name.clone(),
                        channels: w
                            .channels
                            .iter()
                            .map(|(id, k)| ChannelKeys::new(*id, SecretKey::from_bytes(*k)))
                            .collect(),
                    })
                }
            }
            Ok(_) => Err(Error::corrupted("link bundle", "trailing bytes")),
            Err(e) => Err(Error::corrupted("link bundle", e)),
        };
        plain.zeroize();
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_opens_only_with_its_secret() {
        let secret = SecretKey::generate().unwrap();
        let keys = ChannelKeys::generate().unwrap();
        let laptop = crate::Identity::generate("alice").unwrap();
        let phone_keys = crate::device::DeviceKeys::generate().unwrap();
        let b = LinkBundle {
            chain: laptop.certify_device(phone_keys.public()).unwrap(),
            name: "alice".into(),
            channels: vec![keys.clone()],
        };
        let sealed = b.seal(&secret).unwrap();
        let back = LinkBundle::open(&secret, &sealed).unwrap();
        assert_eq!(back.chain, b.chain);
        assert_eq!(back.name, "alice");
        assert_eq!(back.channels[0].wire(), keys.wire());
        // The new device holds no user key: its chain runs through the laptop.
        let phone = crate::Identity::linked(phone_keys.clone(), back.chain, "alice").unwrap();
        assert!(!phone.holds_user_key() && phone.secret().is_none() && laptop.holds_user_key());
        assert_eq!((phone.user(), phone.device()), (laptop.user(), phone_keys.device_id()));
        assert_eq!(
            crate::device::issuers(phone.device_chain().unwrap()),
            vec![(laptop.device(), laptop.device_keys().unwrap().public().signing)]
        );
        assert!(phone.sign(b"a format 1 entry").is_err());
        let again = crate::Identity::decode(&phone.encode()).unwrap();
        assert!(!again.holds_user_key());
        assert_eq!(again.device_chain(), phone.device_chain());
        // A chain for other keys is not this device's.
        let other = crate::device::DeviceKeys::generate().unwrap();
        assert!(crate::Identity::linked(other, b.chain.clone(), "alice").is_err());
        // Nor does it open with another secret or once tampered with.
        assert!(LinkBundle::open(&SecretKey::generate().unwrap(), &sealed).is_err());
        let mut bad = sealed.clone();
        bad[10] ^= 1;
        assert!(LinkBundle::open(&secret, &bad).is_err());
        assert_ne!(link_proof(&secret, b"peer a"), link_proof(&secret, b"peer b"));
    }

    #[test]
    fn link_codes_are_six_digits_bound_to_both_peers() {
        // Fixed inputs, so that no chance clash (one in a million) can fail this.
        let secret = SecretKey::from_bytes([1; 32]);
        let code = link_code(&secret, b"old", b"new");
        assert_eq!(code.len(), 7);
        assert!(
            code.chars()
                .enumerate()
                .all(|(i, c)| if i == 3 { c == ' ' } else { c.is_ascii_digit() })
        );
        assert_eq!(code, link_code(&secret, b"old", b"new"));
        // Another asking peer, another linking peer, another secret: another code.
        assert_ne!(code, link_code(&secret, b"old", b"mallory"));
        assert_ne!(code, link_code(&secret, b"older", b"new"));
        assert_ne!(code, link_code(&SecretKey::from_bytes([2; 32]), b"old", b"new"));
    }
}
