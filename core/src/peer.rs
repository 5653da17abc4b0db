//! Who is at the other end of a sync connection (issue 8, item 5).
//!
//! A channel's access key is derived from its first key generation, so a
//! removed member keeps it, and so does a member that missed rotations: the
//! two ask for the same things with the same keys. They are told apart by
//! who asks. A member's device signs, on each connection, who it is
//! ([`Who`]); a relay, which has no device, shows instead the certificates
//! its users gave it ([`RelayCert`]). The node that answers serves a channel
//! only to a device its roster neither removes nor revokes, or to a relay
//! certified by a current member ([`Claim`], checked by the replica).
//!
//! ```text
//! who   = { device [16], chain [device cert] (often empty), sig [64] }
//! sig   = ed25519 by the device key over "hearth v1 sync who" 0x00 |
//!         role u8 | len-prefixed nonce, requester, responder, matched (answer only)
//! relay cert = { relay (peer id bytes), chain [device cert], sig [64] }
//! sig   = ed25519 by the certifying device over "hearth v1 relay cert" 0x00 | relay
//! ```

use serde::{Deserialize, Serialize};

use crate::device::{DeviceCert, DeviceKeys, domain_message, verify_chain};
use crate::error::{Error, Result};
use crate::id::{DeviceId, UserId};
use crate::identity::verify_signature;

/// A requester's fresh random value, one per Hello.
pub type Nonce = [u8; 16];

/// Most bytes of a peer id a relay certificate names (libp2p's are 38).
pub const MAX_PEER_ID_BYTES: usize = 64;
/// Most certificates in a chain a proof carries.
pub const MAX_CHAIN: usize = crate::device::MAX_CHAIN;
/// Bytes of an encoded relay certificate at most.
pub const MAX_RELAY_CERT_BYTES: usize = 4 + MAX_PEER_ID_BYTES + MAX_CHAIN * crate::device::MAX_CERT_BYTES + 64;

/// The signing-domain label of [`Who`] proofs.
const WHO_DOMAIN: &[u8] = b"hearth v1 sync who";
/// The signing-domain label of [`RelayCert`]s.
const RELAY_DOMAIN: &[u8] = b"hearth v1 relay cert";

/// The two ends of a connection, by peer id bytes (as Noise authenticated them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ends {
    /// The peer that sent the Hello.
    pub requester: Vec<u8>,
    /// The peer that answers it.
    pub responder: Vec<u8>,
}

/// Which side of a session a device proof ([`Who`]) speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhoRole {
    /// The requester, in its Hello.
    Hello,
    /// The responder, in its answer (which also covers `matched`).
    Answer,
}

/// A device's proof, on one connection, that it is the device it names: its
/// device key's signature over the Hello's nonce and both peer ids (and, in
/// an answer, the bitmap of the channels matched). The chain that certifies
/// the key travels only when the peer may not hold it; otherwise the peer
/// takes the key from the chain its feeds hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// The device.
    pub device: DeviceId,
    /// Its certificate chain, or empty.
    pub chain: Vec<DeviceCert>,
    /// The device key's signature ([`who_message`]).
    pub sig: serde_bytes::ByteArray<64>,
}

/// What a [`Who`] signature covers: the role, the nonce, both ends and
/// (for an answer) the matched bitmap, each length-prefixed.
pub fn who_message(role: WhoRole, nonce: &Nonce, ends: &Ends, matched: &[u8]) -> Vec<u8> {
    domain_message(WHO_DOMAIN, &who_body(role, nonce, ends, matched))
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

/// Decode `bytes` as a `T`, untrusted: at most `limit` bytes, nothing
/// after it, and in canonical encoding (it encodes back to the same bytes).
fn decode_strict<T: Serialize + serde::de::DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    what: &'static str,
) -> Result<T> {
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            what,
            size: bytes.len(),
            limit,
        });
    }
    let (value, rest): (T, &[u8]) = postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted(what, e))?;
    if !rest.is_empty() || postcard::to_stdvec(&value).map_err(|e| Error::corrupted(what, e))? != bytes {
        return Err(Error::corrupted(what, "not in canonical encoding"));
    }
    Ok(value)
}

/// Check `sig` over `msg` by the device `chain` certifies (the chain
/// verified): who signed, with the devices it was issued through.
fn signed_by_chain(chain: &[DeviceCert], msg: &[u8], sig: &[u8; 64], what: &'static str) -> Result<Certifier> {
    let body = verify_chain(chain)?;
    verify_signature(&UserId(body.keys.signing), msg, sig)
        .map_err(|_| bad(what, "a signature that does not verify"))?;
    Ok(Certifier {
        user: body.user,
        device: body.device,
        key: body.keys.signing,
        via: crate::device::issuers(chain),
    })
}

fn bad(what: &'static str, why: &str) -> Error {
    Error::Corrupted {
        what,
        detail: why.to_string(),
    }
}

impl Who {
    /// This device's proof for `role` on this connection; `chain` is its
    /// certificate chain, or empty when the peer holds it already.
    pub fn sign(
        keys: &DeviceKeys,
        chain: Vec<DeviceCert>,
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

    /// Check the proof. `held` is the user and key a feed of the device
    /// holds, if any; a chain sent must verify, end at this device, and (if
    /// a key is held) certify that key. Returns the device's user and key.
    pub fn verify(
        &self,
        held: Option<(UserId, [u8; 32])>,
        role: WhoRole,
        nonce: &Nonce,
        ends: &Ends,
        matched: &[u8],
    ) -> Result<(UserId, [u8; 32])> {
        let bad = |why: &str| bad("device proof", why);
        let (user, key) = if self.chain.is_empty() {
            held.ok_or_else(|| bad("no chain, and none held for the device"))?
        } else {
            if self.chain.len() > MAX_CHAIN {
                return Err(bad("a chain longer than 8"));
            }
            let body = verify_chain(&self.chain)?;
            if body.device != self.device {
                return Err(bad("a chain of another device"));
            }
            if held.is_some_and(|(u, k)| k != body.keys.signing || u != body.user) {
                return Err(bad("a chain with another key than the one held"));
            }
            (body.user, body.keys.signing)
        };
        verify_signature(&UserId(key), &who_message(role, nonce, ends, matched), &self.sig)
            .map_err(|_| bad("a signature that does not verify"))?;
        Ok((user, key))
    }
}

/// A user's certificate that a relay carries its channels: signed by one of
/// its devices over the relay's peer id, so that the relay (and only that
/// peer) can show members that a member configured it. Deterministic (no
/// time in it): the same device certifies the same relay with the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCert {
    /// The relay's peer id bytes.
    pub relay: serde_bytes::ByteBuf,
    /// The certifying device's chain.
    pub chain: Vec<DeviceCert>,
    /// Its signature over the relay's peer id.
    pub sig: serde_bytes::ByteArray<64>,
}

/// A device that proved itself, or certified a relay, as
/// [`Claim::device`] and [`RelayCert::verify`] find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certifier {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// That device's signing key.
    pub key: [u8; 32],
    /// The devices its certificate was issued through, nearest first
    /// ([`crate::device::issuers`]): a revocation of any of them reaches it.
    pub via: Vec<(DeviceId, [u8; 32])>,
}

impl Certifier {
    /// Whether `revoked` (by id or by signing key) holds this device or one
    /// it was issued through.
    pub fn revoked_by(&self, revoked: impl Fn(&DeviceId, &[u8; 32]) -> bool) -> bool {
        revoked(&self.device, &self.key) || self.via.iter().any(|(d, k)| revoked(d, k))
    }
}

impl RelayCert {
    /// `keys`' certificate (its chain is `chain`) of the relay `relay`.
    pub fn sign(keys: &DeviceKeys, chain: Vec<DeviceCert>, relay: &[u8]) -> RelayCert {
        RelayCert {
            relay: serde_bytes::ByteBuf::from(relay.to_vec()),
            sig: serde_bytes::ByteArray::new(keys.sign(RELAY_DOMAIN, relay)),
            chain,
        }
    }

    /// Check the chain and the signature; who certified the relay.
    pub fn verify(&self) -> Result<Certifier> {
        let bad = |why: &str| bad("relay certificate", why);
        if self.relay.len() > MAX_PEER_ID_BYTES {
            return Err(bad("a peer id longer than 64 bytes"));
        }
        if self.chain.len() > MAX_CHAIN {
            return Err(bad("a chain longer than 8"));
        }
        signed_by_chain(
            &self.chain,
            &domain_message(RELAY_DOMAIN, &self.relay),
            &self.sig,
            "relay certificate",
        )
    }

    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a relay certificate encodes")
    }

    /// Decode (untrusted bytes: capped, strict and canonical). Nothing is
    /// checked beyond the form: see [`RelayCert::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode_strict(bytes, MAX_RELAY_CERT_BYTES, "relay certificate")
    }
}

/// What one side of a connection claims it is, to be checked by a replica
/// (a member's store against its rosters, a relay against the removals and
/// revocations it was told of) before it is served a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// A device's proof, or none (a relay).
    pub who: Option<Who>,
    /// A relay's certificates (with no `who`).
    pub certs: Vec<RelayCert>,
    /// Which side claims.
    pub role: WhoRole,
    /// The Hello's nonce.
    pub nonce: Nonce,
    /// The connection.
    pub ends: Ends,
    /// The answer's matched bitmap (an answer's claim only).
    pub matched: Vec<u8>,
}

impl Claim {
    /// The claimant's peer id bytes.
    pub fn claimant(&self) -> &[u8] {
        match self.role {
            WhoRole::Hello => &self.ends.requester,
            WhoRole::Answer => &self.ends.responder,
        }
    }

    /// Check the device proof with what is held of its device (`held`
    /// looks it up: its user, key and the devices it was issued through):
    /// `Ok(None)` without a proof, [`Vetting::Unknown`] territory
    /// (`Err(None)`) when it has no chain and nothing is held.
    pub fn device(
        &self,
        held: impl FnOnce(&DeviceId) -> Option<Certifier>,
    ) -> std::result::Result<Option<Certifier>, Option<Error>> {
        let Some(who) = &self.who else { return Ok(None) };
        let known = held(&who.device);
        if known.is_none() && who.chain.is_empty() {
            return Err(None);
        }
        let (user, key) = who
            .verify(
                known.as_ref().map(|k| (k.user, k.key)),
                self.role,
                &self.nonce,
                &self.ends,
                &self.matched,
            )
            .map_err(Some)?;
        let via = if who.chain.is_empty() {
            known.map(|k| k.via).unwrap_or_default()
        } else {
            crate::device::issuers(&who.chain)
        };
        Ok(Some(Certifier {
            user,
            device: who.device,
            key,
            via,
        }))
    }

    /// The relay certificates that verify and name the claimant.
    pub fn certifiers(&self) -> Vec<Certifier> {
        if self.who.is_some() {
            return Vec::new();
        }
        self.certs
            .iter()
            .filter(|c| c.relay.as_slice() == self.claimant())
            .filter_map(|c| c.verify().ok())
            .collect()
    }
}

/// A replica's decision on a [`Claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vetting {
    /// The channels (of those asked about) the claimant may be served.
    Allowed {
        /// Those channels.
        wires: Vec<crate::id::WireId>,
        /// The device that proved itself (none for a relay).
        device: Option<Certifier>,
    },
    /// A device proof without a chain, for a device nothing here knows:
    /// ask for the chain.
    Unknown,
    /// A proof that does not check: the claimant forged it.
    Forged(String),
}

/// Most devices a removal notice cuts.
pub const MAX_REMOVAL_CUTS: usize = 256;
/// Bytes of an encoded removal notice at most.
pub const MAX_REMOVAL_BYTES: usize = 32 + 32 + 1 + 3 + MAX_REMOVAL_CUTS * (16 + 10) + 10 + 1;

/// What a relay learns of a removal from a user that certified it for the
/// channel (over a connection whose device proof names that user): in
/// `wire`, `user` is served nothing more, and (unless it left on its own)
/// its devices' entries past their cuts are refused; a device not listed is
/// cut from its start. The relay trusts its certifying users on this, as it
/// trusts them with the access key: it has no roster to check it against.
///
/// From sync protocol 6 (relay format 8) a notice carries the clock of the
/// roster op it stands for (`at`), and may say the user was added back
/// (`back`: no cuts, served again); a relay keeps, per channel and user, the
/// notice of the latest op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalNotice {
    /// The channel.
    pub wire: crate::id::WireId,
    /// The removed user.
    pub user: UserId,
    /// The user left on its own: nothing of its feeds is cut.
    pub left: bool,
    /// Per device of the user, the last entry of its feed that stays.
    pub cuts: Vec<(DeviceId, u64)>,
    /// The clock (HLC) of the roster op: its removal, or its adding back.
    pub at: u64,
    /// The user was added back after a removal: it is a member again.
    pub back: bool,
}

/// Largest encoded [`TextDrop`]: an entry's pack is part of the entry, at
/// most [`crate::envelope::MAX_ENTRY_BYTES`].
pub const MAX_TEXT_DROP_BYTES: usize = 32 + 16 + 10 + 32 + 4 + crate::envelope::MAX_ENTRY_BYTES;

/// Texts a member's store dropped from a stored entry (a delete that
/// counts): the entry's pack as that store now holds it (sealed again
/// without the deleted texts, or none). A member hands it to the relays it
/// syncs with (sync protocol 9), which cannot open a pack and so cannot
/// drop a text themselves; a relay takes it from a device of the entry's
/// author only (the connection's proof says who), and only for the very
/// entry (`entry`, its hash) it holds. Nothing in it is signed: it travels
/// only on a proved connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextDrop {
    /// The channel.
    pub wire: crate::id::WireId,
    /// The feed.
    pub device: DeviceId,
    /// The entry's place in it.
    pub seq: u64,
    /// The entry's hash ([`crate::Envelope::hash`]): the pack is replaced
    /// only in that entry.
    pub entry: crate::envelope::EntryHash,
    /// The entry's pack as it is now (none: every text dropped).
    pub pack: Option<serde_bytes::ByteBuf>,
}

impl TextDrop {
    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a text drop encodes")
    }

    /// Decode untrusted bytes: capped, strict and canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode_strict(bytes, MAX_TEXT_DROP_BYTES, "text drop")
    }

    /// The entry `bytes` (the one this drop names, checked by its place and
    /// hash) with its pack replaced by this drop's: `None` when the entry
    /// is another, or the entry would not get strictly smaller (a drop only
    /// ever takes away, so a relay's log and sled cannot be grown or its
    /// counts bent by drops going back and forth); in format 5, when the
    /// pack's count of dropped slots would not grow, or the entry would
    /// grow by more than those slots can take.
    pub fn apply(&self, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut env = crate::Envelope::decode(bytes)?;
        let h = &env.header;
        if (h.wire, h.device, h.seq) != (self.wire, self.device, self.seq) || env.hash() != self.entry {
            return Ok(None);
        }
        let before = env.pack.take();
        env.pack = self.pack.as_ref().map(|p| p.to_vec());
        let after = env.encode();
        if env.header.version >= crate::envelope::ENVELOPE_V5 {
            // Format 5: a pack that drops a short text can grow (its leaf
            // and key nodes take the place): the count of dropped slots,
            // which the seal binds, must grow, and the bytes by no more
            // than those slots can take ([`crate::textpack`]).
            let (Some(before), Some(after_pack)) = (before, &env.pack) else {
                return Ok((after.len() < bytes.len()).then_some(after));
            };
            let counts = crate::textpack::gone_of(&before).zip(crate::textpack::gone_of(after_pack));
            let Some((was, now)) = counts.filter(|(was, now)| now > was) else {
                return Ok(None);
            };
            let room = usize::from(now - was) * crate::textpack::MAX_GROWTH_PER_DROP;
            // Never past the largest entry (its members could not decode
            // it, and would blame whoever serves it).
            return Ok(
                (after.len() <= bytes.len() + room && after.len() <= crate::envelope::MAX_ENTRY_BYTES).then_some(after),
            );
        }
        Ok((after.len() < bytes.len()).then_some(after))
    }
}

/// A removal notice as relay format 7 kept it (no clock, never "back").
#[derive(Deserialize)]
struct RemovalNoticeV7 {
    wire: crate::id::WireId,
    user: UserId,
    left: bool,
    cuts: Vec<(DeviceId, u64)>,
}

impl RemovalNotice {
    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a removal notice encodes")
    }

    /// Decode untrusted bytes: capped, strict and canonical (cuts sorted
    /// by device, each device once).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let n: RemovalNotice = decode_strict(bytes, MAX_REMOVAL_BYTES, "removal notice")?;
        n.check()?;
        Ok(n)
    }

    /// Decode what relay format 7 kept (a removal with no clock, taken as
    /// the oldest: any later notice of the user overrules it); a notice of
    /// today's form is read as [`RemovalNotice::decode`] reads it.
    pub fn decode_kept(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_REMOVAL_BYTES {
            return Err(Error::TooLarge {
                what: "removal notice",
                size: bytes.len(),
                limit: MAX_REMOVAL_BYTES,
            });
        }
        if let Ok(n) = Self::decode(bytes) {
            return Ok(n);
        }
        let (old, rest): (RemovalNoticeV7, _) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted("removal notice", e))?;
        let n = RemovalNotice {
            wire: old.wire,
            user: old.user,
            left: old.left,
            cuts: old.cuts,
            at: 0,
            back: false,
        };
        if !rest.is_empty() || bytes.len() > MAX_REMOVAL_BYTES {
            return Err(Error::corrupted("removal notice", "not in canonical encoding"));
        }
        n.check()?;
        Ok(n)
    }

    /// The form's rules: at most [`MAX_REMOVAL_CUTS`] cuts, sorted by
    /// device, each device once, none for a user that left.
    pub fn check(&self) -> Result<()> {
        if self.cuts.len() > MAX_REMOVAL_CUTS {
            return Err(bad("removal notice", "too many cuts"));
        }
        if self.cuts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(bad("removal notice", "cuts not sorted by device"));
        }
        if self.left && !self.cuts.is_empty() {
            return Err(bad("removal notice", "cuts for a user that left"));
        }
        if self.back && (self.left || !self.cuts.is_empty()) {
            return Err(bad("removal notice", "cuts or a leave for a user added back"));
        }
        Ok(())
    }

    /// Whether this notice says the user is removed (not added back).
    pub fn removes(&self) -> bool {
        !self.back
    }

    /// The last entry of `device`'s feed that stays, if this removal cuts it.
    pub fn cut(&self, device: &DeviceId) -> Option<u64> {
        if self.left || self.back {
            return None;
        }
        Some(
            self.cuts
                .binary_search_by(|(d, _)| d.cmp(device))
                .map_or(0, |i| self.cuts[i].1),
        )
    }
}

/// Bytes of an encoded notice to the removed at most.
pub const MAX_REMOVED_BYTES: usize = 32 + 32 + 16 + 5 + 1 + MAX_CHAIN * (crate::device::MAX_CERT_BYTES + 2) + 64;

/// What a member tells a removed user's device that asks for a channel it is
/// no longer served (sync protocol 6, in the Hello's answer): the removal
/// op and the removing device's signature of it
/// ([`crate::member::sign_removal`], carried by the op,
/// [`crate::member::Action::RemoveSigned`]). The removed store checks that
/// the signer is an admin or owner by its own roster, and then writes
/// nothing more in the channel, though it never gets the op itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedNotice {
    /// The channel.
    pub wire: crate::id::WireId,
    /// The removed user.
    pub user: UserId,
    /// The removal op (written by the removing device).
    pub op: crate::member::OpKey,
    /// The removing device's certificate chain.
    pub chain: Vec<DeviceCert>,
    /// Its signature ([`crate::member::sign_removal`]).
    pub sig: serde_bytes::ByteArray<64>,
}

impl RemovedNotice {
    /// The notice of `user`'s removal from `wire` by the op `op`, signed by
    /// the removing device (`keys`, certified by `chain`).
    pub fn sign(
        keys: &DeviceKeys,
        chain: Vec<DeviceCert>,
        wire: crate::id::WireId,
        user: UserId,
        op: crate::member::OpKey,
    ) -> RemovedNotice {
        let sig = crate::member::sign_removal(keys, &wire, &user, &op);
        RemovedNotice {
            wire,
            user,
            op,
            chain,
            sig: serde_bytes::ByteArray::new(sig),
        }
    }

    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a removed notice encodes")
    }

    /// Decode untrusted bytes: capped, strict and canonical. Nothing is
    /// checked beyond the form: see [`RemovedNotice::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode_strict(bytes, MAX_REMOVED_BYTES, "notice of a removal")
    }

    /// Check the chain (its device wrote the op) and the signature; who
    /// signed.
    pub fn verify(&self) -> Result<Certifier> {
        let bad = |why: &str| bad("notice of a removal", why);
        if self.chain.len() > MAX_CHAIN {
            return Err(bad("a chain longer than 8"));
        }
        let by = signed_by_chain(
            &self.chain,
            &crate::member::removal_message(&self.wire, &self.user, &self.op),
            &self.sig,
            "notice of a removal",
        )?;
        if by.device != self.op.device {
            return Err(bad("a chain of another device than the op's"));
        }
        Ok(by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn a_device_proof_holds_for_one_connection_one_role_and_one_device() {
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
        // A claim without a chain for a device not known asks for it.
        let claim = Claim {
            who: Some(bare),
            certs: Vec::new(),
            role: WhoRole::Hello,
            nonce: n,
            ends: ends.clone(),
            matched: Vec::new(),
        };
        assert!(matches!(claim.device(|_| None), Err(None)));
        let held = |user, key| Certifier {
            user,
            device: a.device(),
            key,
            via: vec![(DeviceId([4; 16]), [4; 32])],
        };
        let known = claim.device(|_| Some(held(a.user(), key))).unwrap().unwrap();
        // The devices it was issued through come from what is held.
        assert_eq!((known.user, known.via.clone()), (a.user(), held(a.user(), key).via));
        assert!(known.revoked_by(|d, _| *d == DeviceId([4; 16])));
        assert!(known.revoked_by(|_, k| *k == key));
        assert!(!known.revoked_by(|d, _| *d == DeviceId([5; 16])));
        assert!(matches!(
            claim.device(|_| Some(held(other.user(), theirs))),
            Err(Some(_))
        ));
    }

    #[test]
    fn notices_to_the_removed_are_bound_to_the_op_channel_and_user() {
        use crate::member::OpKey;
        let admin = Identity::generate("admin").unwrap();
        let keys = admin.device_keys().unwrap();
        let (wire, bob) = (crate::id::WireId([3; 32]), UserId([4; 32]));
        let op = OpKey {
            device: admin.device(),
            n: 7,
        };
        let n = RemovedNotice::sign(keys, admin.device_chain().unwrap().to_vec(), wire, bob, op);
        let by = n.verify().unwrap();
        assert_eq!((by.user, by.device), (admin.user(), admin.device()));
        assert_eq!(RemovedNotice::decode(&n.encode()).unwrap(), n);
        assert!(n.encode().len() <= MAX_REMOVED_BYTES);
        // Another user, channel or op: the signature does not cover it.
        for forged in [
            RemovedNotice {
                user: UserId([5; 32]),
                ..n.clone()
            },
            RemovedNotice {
                wire: crate::id::WireId([6; 32]),
                ..n.clone()
            },
            RemovedNotice {
                op: OpKey { n: 8, ..op },
                ..n.clone()
            },
        ] {
            assert!(forged.verify().is_err());
        }
        // A chain of another device than the op's.
        let other = Identity::generate("other").unwrap();
        let wrong = RemovedNotice {
            chain: other.device_chain().unwrap().to_vec(),
            ..n.clone()
        };
        assert!(wrong.verify().is_err());
        let mut trailing = n.encode();
        trailing.push(0);
        assert!(RemovedNotice::decode(&trailing).is_err());
    }

    #[test]
    fn removal_notices_are_strict_and_cut_unlisted_devices_from_their_start() {
        let n = RemovalNotice {
            wire: crate::id::WireId([1; 32]),
            user: UserId([2; 32]),
            left: false,
            cuts: vec![(DeviceId([3; 16]), 5), (DeviceId([4; 16]), 0)],
            at: 77,
            back: false,
        };
        assert_eq!(RemovalNotice::decode(&n.encode()).unwrap(), n);
        assert!(n.removes());
        // What relay format 7 kept (no clock) still reads, as the oldest.
        #[derive(Serialize)]
        struct V7<'a> {
            wire: crate::id::WireId,
            user: UserId,
            left: bool,
            cuts: &'a [(DeviceId, u64)],
        }
        let old = postcard::to_stdvec(&V7 {
            wire: n.wire,
            user: n.user,
            left: false,
            cuts: &n.cuts,
        })
        .unwrap();
        assert!(RemovalNotice::decode(&old).is_err());
        assert_eq!(
            RemovalNotice::decode_kept(&old).unwrap(),
            RemovalNotice { at: 0, ..n.clone() }
        );
        assert_eq!(RemovalNotice::decode_kept(&n.encode()).unwrap(), n);
        // Added back: no cuts, removes nothing.
        let back = RemovalNotice {
            cuts: Vec::new(),
            at: 99,
            back: true,
            ..n.clone()
        };
        assert_eq!(RemovalNotice::decode(&back.encode()).unwrap(), back);
        assert!(!back.removes() && back.cut(&DeviceId([3; 16])).is_none());
        assert!(
            RemovalNotice::decode(
                &RemovalNotice {
                    back: true,
                    ..n.clone()
                }
                .encode()
            )
            .is_err()
        );
        assert_eq!(n.cut(&DeviceId([3; 16])), Some(5));
        assert_eq!(n.cut(&DeviceId([9; 16])), Some(0));
        let mut unsorted = n.clone();
        unsorted.cuts.reverse();
        assert!(RemovalNotice::decode(&unsorted.encode()).is_err());
        let mut left = n.clone();
        left.left = true;
        assert!(RemovalNotice::decode(&left.encode()).is_err(), "a leave cuts nothing");
        left.cuts.clear();
        assert_eq!(left.cut(&DeviceId([3; 16])), None);
    }

    #[test]
    fn a_relay_certificate_names_one_relay_and_its_certifier() {
        let a = Identity::generate("a").unwrap();
        let keys = a.device_keys().unwrap();
        let chain = vec![a.device_cert().unwrap().clone()];
        let cert = RelayCert::sign(keys, chain, &[9; 38]);
        let by = cert.verify().unwrap();
        assert_eq!((by.user, by.device), (a.user(), a.device()));
        assert_eq!(RelayCert::decode(&cert.encode()).unwrap(), cert);
        let mut moved = cert.clone();
        moved.relay = serde_bytes::ByteBuf::from(vec![8; 38]);
        assert!(moved.verify().is_err(), "bound to the relay's peer id");
        let mut long = cert.encode();
        long.push(0);
        assert!(RelayCert::decode(&long).is_err());
        // Shown by the relay it names only.
        let claim = |responder: Vec<u8>| Claim {
            who: None,
            certs: vec![cert.clone()],
            role: WhoRole::Answer,
            nonce: [0; 16],
            ends: Ends {
                requester: vec![1; 38],
                responder,
            },
            matched: Vec::new(),
        };
        assert_eq!(claim(vec![9; 38]).certifiers().len(), 1);
        assert!(claim(vec![8; 38]).certifiers().is_empty());
    }
}
