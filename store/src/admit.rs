//! Feed admission: the rules every received entry passes before anything of
//! it is stored, shared by member ingest (`ingest.rs`) and relays
//! (`hearth_sync::RelayStore`).
//!
//! In order: the entry decodes (size cap, canonical encoding), names the
//! channel it was sent for, does not follow a refused entry of its feed; then,
//! against what is held (stored, or accepted earlier in the same batch): the
//! same bytes again are a duplicate (no signature check needed); anything else
//! must carry its author's valid signature; a second version of a held
//! position, or a next entry naming another previous one, is a fork, proved by
//! the two signed entries ([`ForkProof`]); a gap waits for the missing
//! entries; a device stays with the first user that signed for it. A format 2
//! entry is signed by its device's key: the first of its feed carries the
//! certificate chain that certifies that key for its user and device, later
//! ones are checked under the key held since; a format 1 entry (signed by the
//! user key) after it is refused, and so is one for a keyed device id (only
//! a chain certifying its key may claim one; a legacy binding of a keyed id
//! does not verify). Members
//! then open the body (`Refusal::Content`), relays check their quotas
//! (`Refusal::Full`).
//!
//! Refusals are typed: a sync node bans a peer only for what proves the peer
//! itself sent forged or broken data ([`Refusal::is_peer_fault`]), never for
//! what the author signed (a fork, bad content), which an honest peer may have
//! forwarded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use hearth_core::device::DeviceCert;
use hearth_core::{DeviceId, ENVELOPE_V2, EntryHash, Envelope, ForkProof, UserId, WireId};

use crate::error::Result;

/// Why an entry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The bytes are not an entry (size, encoding, version).
    Malformed(String),
    /// The entry names another channel than the one it was sent for.
    OtherChannel,
    /// The signature does not verify under the author's key.
    BadSignature,
    /// Entries before this one are missing.
    Gap {
        /// The position expected next.
        expected: u64,
    },
    /// An earlier entry of the same feed in this batch was refused.
    FollowsRefused,
    /// The author signed a second version of its feed from this position.
    Forked {
        /// The position with two versions.
        seq: u64,
    },
    /// The first entry of a feed names a previous entry.
    Unchained,
    /// The device's feed is bound to another user in this channel.
    DeviceOfAnotherUser,
    /// An entry of this device that this device does not hold.
    OwnDevice,
    /// Signed by its author, but its sealed content is refused (does not open,
    /// breaks a rule of the document model, or is out of bounds).
    Content(String),
    /// A relay's quota is reached.
    Full(String),
    /// A format 1 entry (signed by the user key) in a feed whose device
    /// signs its entries with its own key already.
    Downgrade,
    /// A certificate chain for the feed's device with another key than the
    /// one its earlier entries were signed with.
    KeyChanged,
    /// A format 1 entry (signed by a user key, for any device id it names)
    /// for a keyed device id ([`hearth_core::device::is_keyed_id`]), which
    /// only a chain certifying its key may claim: squatting.
    Squatting,
    /// The device was revoked in this channel and the entry is past the
    /// last one its revocation keeps (a relay holding the revocation's
    /// notice refuses it; members take it and hide it, see `cuts.rs`).
    Revoked,
}

impl Refusal {
    /// Whether the refusal proves that the *sending peer* sent forged or broken
    /// data: bytes that are no entry, an entry for the wrong channel, a bad
    /// signature. Everything else either is not wrong (a gap, a full relay) or
    /// is signed by its author, whom an honest peer may have trusted before
    /// the proof reached it (a fork, content): the sender is not to blame.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Refusal::Malformed(_) | Refusal::OtherChannel | Refusal::BadSignature
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "malformed entry: {why}"),
            Refusal::OtherChannel => f.write_str("entry of another channel"),
            Refusal::BadSignature => f.write_str("bad signature"),
            Refusal::Gap { expected } => write!(f, "gap in the feed: expected entry {expected}"),
            Refusal::FollowsRefused => f.write_str("follows a refused entry"),
            Refusal::Forked { seq } => write!(f, "forked feed: its author signed two versions of entry {seq}"),
            Refusal::Unchained => f.write_str("the first entry of a feed names a previous entry"),
            Refusal::DeviceOfAnotherUser => f.write_str("device belongs to another user"),
            Refusal::OwnDevice => f.write_str("an entry of this device that this device never wrote"),
            Refusal::Content(why) => write!(f, "content: {why}"),
            Refusal::Full(why) => write!(f, "relay is full: {why}"),
            Refusal::Downgrade => f.write_str("an entry signed by the user key after the device signed with its own"),
            Refusal::KeyChanged => f.write_str("a certificate for the device with another key than its feed's"),
            Refusal::Squatting => f.write_str("a keyed device id claimed by a user key, not its own key (squatting)"),
            Refusal::Revoked => f.write_str("an entry of a revoked device past its revocation"),
        }
    }
}

/// An entry refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The feed, when the header decoded.
    pub device: Option<DeviceId>,
    /// The entry's position, when the header decoded.
    pub seq: Option<u64>,
    /// What is wrong with it.
    pub reason: Refusal,
}

impl Rejection {
    /// See [`Refusal::is_peer_fault`].
    pub fn is_peer_fault(&self) -> bool {
        self.reason.is_peer_fault()
    }
}

/// The head of a feed: its author, its last position and that entry's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The user the device is bound to.
    pub user: UserId,
    /// The last position held.
    pub seq: u64,
    /// The hash of that entry.
    pub hash: EntryHash,
    /// The device's signing key, once a format 2 entry of the feed carried
    /// the chain that certifies it.
    pub key: Option<[u8; 32]>,
}

/// What an admission reads from the storage behind it.
pub trait Feeds {
    /// The stored head of a device's feed in this channel (with its key).
    fn head(&self, device: &DeviceId) -> Option<Head>;
    /// The stored entry at a position.
    fn entry(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>>;
    /// The certificate chain held for a device's feed in this channel.
    fn chain(&self, device: &DeviceId) -> Option<Vec<DeviceCert>>;
}

/// Per device: the key its feed is signed with, and the chain that certifies it.
pub type DeviceChains = BTreeMap<DeviceId, ([u8; 32], Vec<DeviceCert>)>;

/// The signing key a certificate chain certifies (the chain verified).
pub fn chain_key(chain: &[DeviceCert]) -> Option<[u8; 32]> {
    hearth_core::device::verify_chain(chain).ok().map(|b| b.keys.signing)
}

/// Accepted entries by feed and position (envelope bytes).
pub type Accepted = BTreeMap<(DeviceId, u64), Vec<u8>>;

/// The outcome of [`Admission::check`].
#[derive(Debug)]
pub enum Verdict {
    /// The next entry of its feed, signature and chain verified: the caller
    /// checks what else it must, then calls [`Admission::accept`] or
    /// [`Admission::refuse`].
    Next(Box<Envelope>),
    /// Already held, the same bytes.
    Duplicate,
    /// Refused (the feed is refused for the rest of the batch).
    Refused(Rejection),
}

/// The admission of one batch of entries of one channel.
pub struct Admission {
    wire: WireId,
    own: Option<DeviceId>,
    heads: BTreeMap<DeviceId, Head>,
    batch: Accepted,
    refused: BTreeSet<DeviceId>,
    forks: Vec<ForkProof>,
    /// Chains first seen in this batch (the caller keeps them).
    chains: BTreeMap<DeviceId, Vec<DeviceCert>>,
    /// For the entry [`Admission::check`] passed last, per device: the key
    /// its feed is signed with from then on.
    keys: BTreeMap<DeviceId, [u8; 32]>,
    /// Devices whose key the entry passed last certifies for the first time.
    fresh: BTreeSet<DeviceId>,
}

impl Admission {
    /// Admit entries sent for channel `wire`. `own`: this device, whose entries
    /// can only come back from its own log (a member replaying it passes
    /// `None`, as does a relay).
    pub fn new(wire: WireId, own: Option<DeviceId>) -> Self {
        Admission {
            wire,
            own,
            heads: BTreeMap::new(),
            batch: BTreeMap::new(),
            refused: BTreeSet::new(),
            forks: Vec::new(),
            chains: BTreeMap::new(),
            keys: BTreeMap::new(),
            fresh: BTreeSet::new(),
        }
    }

    fn chain(&self, feeds: &impl Feeds, device: &DeviceId) -> Option<Vec<DeviceCert>> {
        self.chains.get(device).cloned().or_else(|| feeds.chain(device))
    }

    fn head(&self, feeds: &impl Feeds, device: &DeviceId) -> Option<Head> {
        self.heads.get(device).copied().or_else(|| feeds.head(device))
    }

    fn held(&self, feeds: &impl Feeds, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>> {
        match self.batch.get(&(*device, seq)) {
            Some(b) => Ok(Some(b.clone())),
            None => feeds.entry(device, seq),
        }
    }

    /// Check one entry against the rules (module docs) and what is held.
    pub fn check(&mut self, feeds: &impl Feeds, bytes: &[u8]) -> Result<Verdict> {
        self.check_presigned(feeds, bytes, None)
    }

    /// [`Admission::check`] for an entry whose signature was checked
    /// already (on another thread, before the batch came here) under
    /// `presigned`: not checked again when that is the key this check
    /// would check it under (the user's for a format 1 entry, else the
    /// device key its chain certifies, or its feed's held key).
    pub(crate) fn check_presigned(
        &mut self,
        feeds: &impl Feeds,
        bytes: &[u8],
        presigned: Option<[u8; 32]>,
    ) -> Result<Verdict> {
        let env = match Envelope::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                return Ok(Verdict::Refused(Rejection {
                    device: None,
                    seq: None,
                    reason: Refusal::Malformed(e.to_string()),
                }));
            }
        };
        let (device, seq) = (env.header.device, env.header.seq);
        let refuse = |reason| Rejection {
            device: Some(device),
            seq: Some(seq),
            reason,
        };
        if env.header.wire != self.wire {
            return Ok(Verdict::Refused(refuse(Refusal::OtherChannel)));
        }
        // A body pruned to its hash (a stub, store format 12) is what
        // retention keeps of an entry of a dead epoch (every message in it
        // expired); the metadata epoch never dies, so whoever sends a stub
        // of it cut it (no key is needed to).
        if env.pruned.is_some() && env.header.epoch == hearth_core::META_EPOCH {
            self.refused.insert(device);
            return Ok(Verdict::Refused(refuse(Refusal::Malformed(
                "a stub of the metadata epoch, which never expires".into(),
            ))));
        }
        if self.refused.contains(&device) {
            return Ok(Verdict::Refused(refuse(Refusal::FollowsRefused)));
        }
        let head = self.head(feeds, &device);
        let (have, prev) = head.map_or((0, [0; 32]), |h| (h.seq, h.hash));
        if seq <= have {
            let held = self.held(feeds, &device, seq)?;
            // The same entry, whatever segments either copy still carries
            // (format 3: they are outside the hash).
            if held
                .as_deref()
                .is_some_and(|h| h == bytes || Envelope::hash_of(h) == env.hash())
            {
                return Ok(Verdict::Duplicate);
            }
        }
        // The signature first: a forgery is the sender's fault, whatever else.
        let held_key = head.and_then(|h| h.key);
        let verifies = |k: &[u8; 32]| {
            let checked = presigned == Some(*k);
            debug_assert!(
                !checked || env.verify_with(k).is_ok(),
                "a signature checked ahead does not verify"
            );
            checked || env.verify_with(k).is_ok()
        };
        let (signed, key_reason) = if env.header.version >= ENVELOPE_V2 {
            match env.device_key() {
                Ok(Some(k)) => (verifies(&k), held_key.filter(|h| *h != k).map(|_| Refusal::KeyChanged)),
                Ok(None) => (held_key.is_some_and(|k| verifies(&k)), None),
                Err(_) => (false, None),
            }
        } else {
            let squat = hearth_core::device::is_keyed_id(&device).then_some(Refusal::Squatting);
            // A format 1 entry is signed by the user key its header names.
            (
                verifies(&env.header.user.0),
                squat.or(held_key.map(|_| Refusal::Downgrade)),
            )
        };
        if !signed {
            self.refused.insert(device);
            // An entry without its chain, past entries not held yet (the one
            // with the chain among them): it cannot be checked before those
            // arrive, which is a gap, not a forgery.
            let unverifiable = env.header.version >= ENVELOPE_V2 && env.certs.is_empty() && held_key.is_none();
            if unverifiable && seq > have + 1 {
                return Ok(Verdict::Refused(refuse(Refusal::Gap { expected: have + 1 })));
            }
            return Ok(Verdict::Refused(refuse(Refusal::BadSignature)));
        }
        let reason = if seq <= have {
            // A second version of a held position.
            self.fork(feeds, &device, seq, bytes)?
        } else if self.own == Some(device) {
            Some(Refusal::OwnDevice)
        } else if seq > have + 1 {
            Some(Refusal::Gap { expected: have + 1 })
        } else if env.header.prev != prev {
            if have == 0 {
                Some(Refusal::Unchained)
            } else {
                // Signed onto another version of entry `have`.
                self.fork(feeds, &device, have, bytes)?
            }
        } else if head.is_some_and(|h| h.user != env.header.user) {
            Some(Refusal::DeviceOfAnotherUser)
        } else {
            key_reason
        };
        match reason {
            Some(reason) => {
                self.refused.insert(device);
                Ok(Verdict::Refused(refuse(reason)))
            }
            None => {
                let carried = env.device_key().ok().flatten();
                if carried.is_some() && held_key.is_none() {
                    self.fresh.insert(device);
                }
                if let Some(k) = carried.or(held_key) {
                    self.keys.insert(device, k);
                }
                Ok(Verdict::Next(Box::new(env)))
            }
        }
    }

    /// The refusal for `bytes`, which conflict with the entry held at `seq`
    /// (at that position, or as its successor): a fork if that entry is of
    /// the same author, else the device is someone else's.
    fn fork(&mut self, feeds: &impl Feeds, device: &DeviceId, seq: u64, bytes: &[u8]) -> Result<Option<Refusal>> {
        let Some(first) = self.held(feeds, device, seq)? else {
            // Held by its head but missing: damage `verify` reports.
            return Ok(Some(Refusal::Forked { seq }));
        };
        // Format 2 entries without their chain are proved with the feed's.
        let certs = self.chain(feeds, device).unwrap_or_default();
        let mut proof = ForkProof {
            first,
            second: bytes.to_vec(),
            certs: Vec::new(),
        };
        if proof.check().is_err() && !certs.is_empty() {
            proof.certs = certs;
        }
        Ok(Some(match proof.check() {
            Ok(fork) => {
                self.forks.push(proof);
                Refusal::Forked { seq: fork.seq }
            }
            Err(_) => Refusal::DeviceOfAnotherUser,
        }))
    }

    /// Take the entry [`Admission::check`] passed: its feed's head moves.
    pub fn accept(&mut self, env: &Envelope, bytes: Vec<u8>) {
        let h = &env.header;
        let key = self.keys.get(&h.device).copied();
        // A chain that certifies the feed's key for the first time is kept.
        if self.fresh.remove(&h.device) {
            self.chains.insert(h.device, env.certs.clone());
        }
        self.heads.insert(
            h.device,
            Head {
                user: h.user,
                seq: h.seq,
                hash: env.hash(),
                key,
            },
        );
        self.batch.insert((h.device, h.seq), bytes);
    }

    /// Refuse the entry [`Admission::check`] passed, for a reason of the
    /// caller's; the rest of its feed in this batch is refused too.
    pub fn refuse(&mut self, env: &Envelope, reason: Refusal) -> Rejection {
        self.refused.insert(env.header.device);
        Rejection {
            device: Some(env.header.device),
            seq: Some(env.header.seq),
            reason,
        }
    }

    /// The heads the accepted entries moved.
    pub fn heads(&self) -> &BTreeMap<DeviceId, Head> {
        &self.heads
    }

    /// The accepted entries, by feed and position, and the fork proofs found.
    pub fn into_accepted(self) -> (Accepted, Vec<ForkProof>) {
        (self.batch, self.forks)
    }

    /// Certificate chains seen for the first time in this batch, by device
    /// (to keep with the accepted entries).
    pub fn new_chains(&self) -> &BTreeMap<DeviceId, Vec<DeviceCert>> {
        &self.chains
    }

    /// Fork proofs found so far.
    pub fn forks(&self) -> &[ForkProof] {
        &self.forks
    }
}
