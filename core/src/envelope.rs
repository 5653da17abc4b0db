//! Feed entries: the unit of the commit log and of sync.
//!
//! ```text
//! format 1 (written today)
//! header (clear): version 1, channel wire id, user, device, seq, hash of entry seq-1
//! body (sealed):  XChaCha20-Poly1305(feed key, random nonce, aad = header bytes)
//!                 of postcard(EntryBody { epoch, change })
//! signature:      ed25519 by the user over header bytes | body
//!
//! format 2 (read and checked; written once devices sign: docs/trust.md)
//! header (clear): version 2, wire, user, device, seq, prev, key generation u32
//! certs (clear):  the device's certificate chain ([`crate::device`]), in the
//!                 first format 2 entry of its feed; empty after
//! body (sealed):  as in format 1, aad = the format 2 header bytes
//! signature:      ed25519 by the device key over
//!                 "hearth v2 entry" 0x00 | header bytes | postcard(certs) | body
//!
//! format 3 (written from store format 9: docs/lifecycle.md)
//! header (clear): version 3, wire, user, device, seq, prev, key generation,
//!                 epoch u32
//! certs (clear):  as in format 2
//! body:           Sealed(bytes), as in format 2 (aad = the format 3 header
//!                 bytes), or Pruned(blake3 of them): a stub whose body was
//!                 dropped
//! signature:      ed25519 by the device key over
//!                 "hearth v3 entry" 0x00 | header bytes | postcard(certs) | blake3(body)
//!                 | postcard([(segment id, segment hash)])
//! segments:       the texts the change names by content id
//!                 ([`crate::content`]): id and hash signed, the sealed bytes
//!                 droppable (absent once dropped)
//! entry hash:     blake3 of postcard(header, certs, blake3(body), signature,
//!                 [(segment id, segment hash)])
//!
//! format 4 (written from store format 10)
//! header, certs, body: as in format 3 (version 4)
//! signature:      ed25519 by the device key over
//!                 "hearth v4 entry" 0x00 | header bytes | postcard(certs) | blake3(body)
//! texts:          the texts the change names, sealed together in one pack
//!                 ([`crate::content::seal_pack`]), or none; neither signed
//!                 nor hashed: the change names each text by an id that
//!                 commits to it
//! entry hash:     blake3 of postcard(header, certs, blake3(body), signature)
//!
//! format 5 (written from store format 13)
//! header, certs:  as in format 4 (version 5)
//! body:           Sealed(postcard(epoch, change, root?)) or Pruned, the root
//!                 committing to the texts of the pack ([`crate::textpack`])
//! signature:      as in format 4, labelled "hearth v5 entry"
//! texts:          a [`crate::textpack::TextPack`], sealed, or none; the change
//!                 names each text by its slot
//! entry hash:     as in format 4
//!
//! format 6 (written from store format 16)
//! header, certs:  as in format 5 (version 6)
//! body:           Sealed(postcard(change, root?)) or Pruned, change =
//!                 0 Whole(chunk) | 1 Stripped(the chunk without its magic,
//!                 checksum, type, length and actor: [`crate::chunk::strip_change`]),
//!                 rebuilt with the header's device as its actor; the epoch
//!                 is the header's
//! signature:      as in format 4, labelled "hearth v6 entry"
//! texts, entry hash: as in format 5
//! nonces:         the writer's choice, as in every format; this code seals
//!                 under counted ones (`prefix | kind | seq`,
//!                 [`crate::seal::counted_nonce`]), which a live stream
//!                 leaves out ([`Envelope::encode_lean`])
//! ```
//!
//! The same bytes are stored and sent: an entry is sealed once. Anyone can check
//! the signature and the chain (a relay can); only members can open the body.

use serde::{Deserialize, Serialize};

use crate::channel::ChannelKeys;
use crate::content::{Content, ContentId, Segment, open_pack, open_pack_keyed, seal_pack, seal_pack_at};
use crate::device::{DeviceCert, domain_message, verify_chain};
use crate::error::{Error, Result};
use crate::id::{DeviceId, Epoch, UserId, WireId};
use crate::identity::{Identity, verify_signature};
use crate::seal::{NONCE_PREFIX_LEN, NonceKind, counted_nonce, open, seal, seal_with_nonce};
use crate::textpack::TextPack;

/// The first envelope format (signed by user keys; read, and written only
/// by tools and tests).
pub const ENVELOPE_VERSION: u8 = 1;
/// The envelope format signed by device keys.
pub const ENVELOPE_V2: u8 = 2;
/// The envelope format with droppable content (texts in segments, a body
/// that can be pruned to its hash).
pub const ENVELOPE_V3: u8 = 3;
/// The envelope format with the texts packed together (one sealed pack
/// beside the body, outside the signature).
pub const ENVELOPE_V4: u8 = 4;
/// The signing-domain label of format 4 entries.
const ENTRY_DOMAIN_V4: &[u8] = b"hearth v4 entry";
/// The envelope format whose texts are named by slot and committed to by a
/// root in the body ([`crate::textpack`]).
pub const ENVELOPE_V5: u8 = 5;
/// The signing-domain label of format 5 entries.
const ENTRY_DOMAIN_V5: &[u8] = b"hearth v5 entry";
/// The envelope format whose body holds its change without what the entry
/// says already ([`crate::chunk::strip_change`]: the chunk's framing and
/// actor) and without the epoch its header says.
pub const ENVELOPE_V6: u8 = 6;
/// The signing-domain label of format 6 entries.
const ENTRY_DOMAIN_V6: &[u8] = b"hearth v6 entry";
/// Most segments an entry carries.
pub const MAX_ENTRY_SEGMENTS: usize = 4096;
/// The signing-domain label of format 3 entries.
const ENTRY_DOMAIN_V3: &[u8] = b"hearth v3 entry";
/// Most certificates an entry carries (a chain).
pub const MAX_ENTRY_CERTS: usize = 8;
/// The signing-domain label of format 2 entries.
const ENTRY_DOMAIN: &[u8] = b"hearth v2 entry";
/// Largest encoded entry accepted, kept well below sled's 128 KiB blob threshold.
pub const MAX_ENTRY_BYTES: usize = 96 * 1024;

/// A blake3 hash of an encoded entry; entry `n` names entry `n-1` by it.
pub type EntryHash = [u8; 32];

/// How the sealed boxes of a new entry get their nonces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nonces {
    /// Random, each drawn for the box.
    Random,
    /// [`counted_nonce`]s under this prefix, the entry's seq their counter
    /// (the body's and the pack's differ by kind). The writer draws the
    /// prefix at random for a run and never seals one seq twice under it;
    /// a live stream then carries neither nonce of an entry whose feed it
    /// has carried ([`Envelope::encode_lean`]).
    Counted([u8; NONCE_PREFIX_LEN]),
}

impl Nonces {
    /// The nonce of an entry's box of `kind`: drawn, or counted.
    fn of(self, kind: NonceKind, seq: u64) -> Result<[u8; 24]> {
        match self {
            Nonces::Random => {
                let mut n = [0u8; 24];
                crate::id::random_bytes(&mut n)?;
                Ok(n)
            }
            Nonces::Counted(prefix) => Ok(counted_nonce(&prefix, kind, seq)),
        }
    }
}

/// The clear part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeader {
    /// Format version.
    pub version: u8,
    /// The channel's wire id.
    pub wire: WireId,
    /// The author (signer).
    pub user: UserId,
    /// The writing device (its automerge actor).
    pub device: DeviceId,
    /// Position in the device's feed for this channel, from 1.
    pub seq: u64,
    /// Hash of entry `seq - 1`, zero for the first entry.
    pub prev: EntryHash,
    /// The channel key generation the body is sealed under (format 2; 0 in
    /// format 1, whose encoding does not carry it).
    #[serde(skip)]
    pub generation: u32,
    /// The epoch document the change belongs to (format 3, in the clear so
    /// that a relay keeps what must never expire, epoch 0; 0 in formats 1
    /// and 2, whose body alone says it).
    #[serde(skip)]
    pub epoch: Epoch,
}

/// A format 2 header as encoded.
#[derive(Serialize, Deserialize)]
struct HeaderV2 {
    version: u8,
    wire: WireId,
    user: UserId,
    device: DeviceId,
    seq: u64,
    prev: EntryHash,
    generation: u32,
}

/// A format 3 header as encoded.
#[derive(Serialize, Deserialize)]
struct HeaderV3 {
    version: u8,
    wire: WireId,
    user: UserId,
    device: DeviceId,
    seq: u64,
    prev: EntryHash,
    generation: u32,
    epoch: Epoch,
}

impl EntryHeader {
    /// The header's bytes as its format encodes them (the body's AAD).
    pub fn encode(&self) -> Vec<u8> {
        if self.version >= ENVELOPE_V3 {
            postcard::to_stdvec(&self.v3())
        } else if self.version == ENVELOPE_V2 {
            postcard::to_stdvec(&HeaderV2 {
                version: self.version,
                wire: self.wire,
                user: self.user,
                device: self.device,
                seq: self.seq,
                prev: self.prev,
                generation: self.generation,
            })
        } else {
            postcard::to_stdvec(self)
        }
        .expect("header encodes")
    }

    fn v3(&self) -> HeaderV3 {
        HeaderV3 {
            version: self.version,
            wire: self.wire,
            user: self.user,
            device: self.device,
            seq: self.seq,
            prev: self.prev,
            generation: self.generation,
            epoch: self.epoch,
        }
    }
}

// Byte fields are (de)serialized as bytes (`serde_bytes`): postcard writes
// a byte string and a sequence of `u8` the same way (a varint length, then
// the bytes), so the encoding is the one it always was, but a sequence is
// read and written a byte at a time (10 us for a 13 KB body, against 0.1).

/// The sealed part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    /// The epoch document the change belongs to.
    pub epoch: Epoch,
    /// The automerge change bytes.
    #[serde(with = "serde_bytes")]
    pub change: Vec<u8>,
}

/// A decoded (not yet opened) entry. Its derived serde encoding is format
/// 1's; [`Envelope::encode`] writes either format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The clear header.
    pub header: EntryHeader,
    /// Format 2: the device's certificate chain (first entry of its feed only).
    #[serde(skip)]
    pub certs: Vec<DeviceCert>,
    /// The sealed body (empty in a stub: see `pruned`).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// ed25519 signature (see the module docs).
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
    /// Format 3: the body was dropped and this is its hash (a stub).
    #[serde(skip)]
    pub pruned: Option<[u8; 32]>,
    /// Format 3: the texts the change names, each droppable.
    #[serde(skip)]
    pub segments: Vec<Segment>,
    /// Format 4: the texts the change names, sealed together (`None`: no
    /// texts, or dropped).
    #[serde(skip)]
    pub pack: Option<Vec<u8>>,
}

/// A format 4 or 5 entry as a live stream carries it to a receiver that
/// holds the entry before it in its feed ([`Envelope::encode_lean`]): the
/// header's wire, user, device, seq and prev left out, and each nonce that
/// is the counted one the entry before it implies.
#[derive(Serialize, Deserialize)]
struct Lean {
    head: LeanHead,
    body: LeanBody,
    sig: ([u8; 32], [u8; 32]),
    pack: LeanPack,
}

/// A lean entry's header fields and certificates.
#[derive(Serialize, Deserialize)]
enum LeanHead {
    /// The version, key generation and epoch of the entry before; no
    /// certificates.
    Same,
    /// Any other.
    Set {
        version: u8,
        generation: u32,
        epoch: Epoch,
        certs: Vec<DeviceCert>,
    },
}

/// A lean entry's body.
#[derive(Serialize, Deserialize)]
enum LeanBody {
    /// Sealed: `nonce | ciphertext | tag`.
    Sealed(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Sealed under the [`counted_nonce`] of kind body that the context's
    /// prefix and the entry's seq give: `ciphertext | tag`.
    Counted(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Dropped down to its hash.
    Pruned([u8; 32]),
}

/// A lean entry's text pack.
#[derive(Serialize, Deserialize)]
enum LeanPack {
    /// No pack.
    None,
    /// The pack's bytes.
    Whole(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `ciphertext | tag` of a pack with nothing dropped (`gone` 0), sealed
    /// under the counted nonce of kind pack (a pack sealed again after
    /// drops has a random nonce, and travels whole).
    Fresh(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// `sealed` (`nonce | rest`) without its nonce, when the nonce is `nonce`.
fn without_nonce(sealed: &[u8], nonce: Option<[u8; 24]>) -> Option<Vec<u8>> {
    let n = nonce?;
    (sealed.len() >= 24 && sealed[..24] == n).then(|| sealed[24..].to_vec())
}

/// What a receiver holds of the entry before a lean one in its feed: the
/// header fields [`Envelope::encode_lean`] leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeanContext {
    /// The channel's wire id.
    pub wire: WireId,
    /// The author.
    pub user: UserId,
    /// The writing device.
    pub device: DeviceId,
    /// The seq of the entry before (the lean entry's is one more).
    pub seq: u64,
    /// The hash of the entry before.
    pub hash: EntryHash,
    /// The first 15 bytes of the entry before's body nonce (`None` for a
    /// stub): the prefix of the [`counted_nonce`]s a lean entry leaves out.
    pub nonce_prefix: Option<[u8; NONCE_PREFIX_LEN]>,
    /// The format version of the entry before.
    pub version: u8,
    /// The key generation of the entry before.
    pub generation: u32,
    /// The epoch of the entry before.
    pub epoch: Epoch,
}

/// A format 3 body: sealed, or dropped down to its hash.
#[derive(Serialize, Deserialize)]
enum BodyV3 {
    Sealed(#[serde(with = "serde_bytes")] Vec<u8>),
    Pruned([u8; 32]),
}

/// A format 3 envelope as encoded.
#[derive(Serialize, Deserialize)]
struct EnvelopeV3 {
    header: HeaderV3,
    certs: Vec<DeviceCert>,
    body: BodyV3,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
    segments: Vec<Segment>,
}

/// A format 4 envelope as encoded.
#[derive(Serialize, Deserialize)]
struct EnvelopeV4 {
    header: HeaderV3,
    certs: Vec<DeviceCert>,
    body: BodyV3,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pack: Option<Vec<u8>>,
}

/// What a format 4 entry's hash covers: everything but its texts.
#[derive(Serialize)]
struct SkeletonV4<'a> {
    header: HeaderV3,
    certs: &'a [DeviceCert],
    body: [u8; 32],
    sig: &'a [u8],
}

/// What a format 4 or 5 signature covers.
fn signed_v4(version: u8, header_bytes: &[u8], certs: &[DeviceCert], body_hash: &[u8; 32]) -> Vec<u8> {
    let mut m = header_bytes.to_vec();
    m.extend(postcard::to_stdvec(certs).expect("certificates encode"));
    m.extend_from_slice(body_hash);
    let domain = match version {
        ENVELOPE_V4 => ENTRY_DOMAIN_V4,
        ENVELOPE_V5 => ENTRY_DOMAIN_V5,
        _ => ENTRY_DOMAIN_V6,
    };
    domain_message(domain, &m)
}

/// A format 6 body as sealed (the epoch is the header's).
#[derive(Serialize, Deserialize)]
struct BodyV6 {
    change: ChangeV6,
    /// [`crate::textpack::TextPack::root`] of its texts (`None`: none).
    texts: Option<[u8; 32]>,
}

/// A format 6 body's change.
#[derive(Serialize, Deserialize)]
enum ChangeV6 {
    /// The chunk as automerge wrote it (compressed, or of another actor).
    Whole(#[serde(with = "serde_bytes")] Vec<u8>),
    /// [`crate::chunk::strip_change`] of it, for the entry's device.
    Stripped(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A format 5 body as sealed.
#[derive(Serialize, Deserialize)]
struct BodyV5 {
    epoch: Epoch,
    #[serde(with = "serde_bytes")]
    change: Vec<u8>,
    /// [`crate::textpack::TextPack::root`] of its texts (`None`: none).
    texts: Option<[u8; 32]>,
}

/// For each of a pack's `n` slots, the message and id the change names it
/// for: `None` where no op names it, or more than one does.
fn slot_ids(slots: &[(u64, crate::MessageId, ContentId)], n: usize) -> Vec<Option<(crate::MessageId, ContentId)>> {
    let mut out: Vec<Option<(crate::MessageId, ContentId)>> = vec![None; n];
    let mut seen = vec![0u8; n];
    for (slot, msg, id) in slots {
        if let Ok(i) = usize::try_from(*slot)
            && i < n
        {
            seen[i] = seen[i].saturating_add(1);
            out[i] = Some((*msg, *id));
        }
    }
    for (o, s) in out.iter_mut().zip(seen) {
        if s > 1 {
            *o = None;
        }
    }
    out
}

/// What a format 3 entry's hash covers: everything but its droppable parts.
#[derive(Serialize)]
struct SkeletonV3<'a> {
    header: HeaderV3,
    certs: &'a [DeviceCert],
    body: [u8; 32],
    sig: &'a [u8],
    segments: Vec<(ContentId, [u8; 32])>,
}

/// The signed part of each segment: its id and hash.
fn slots(segments: &[Segment]) -> Vec<(ContentId, [u8; 32])> {
    segments.iter().map(|s| (s.id, s.hash)).collect()
}

/// An entry's bytes fit [`MAX_ENTRY_BYTES`].
fn check_entry_size(size: usize) -> Result<()> {
    if size > MAX_ENTRY_BYTES {
        return Err(Error::TooLarge {
            what: "feed entry",
            size,
            limit: MAX_ENTRY_BYTES,
        });
    }
    Ok(())
}

/// The certificates of a format 2 or 3 entry: at most [`MAX_ENTRY_CERTS`],
/// each passing the checks of a certificate decoded on its own.
fn check_certs(certs: &[DeviceCert]) -> Result<()> {
    if certs.len() > MAX_ENTRY_CERTS {
        return Err(Error::corrupted("feed entry", "too many certificates"));
    }
    for c in certs {
        DeviceCert::decode(&c.encode())?;
    }
    Ok(())
}

/// What a format 3 signature covers.
fn signed_v3(header_bytes: &[u8], certs: &[DeviceCert], body_hash: &[u8; 32], segments: &[Segment]) -> Vec<u8> {
    let mut m = header_bytes.to_vec();
    m.extend(postcard::to_stdvec(certs).expect("certificates encode"));
    m.extend_from_slice(body_hash);
    m.extend(postcard::to_stdvec(&slots(segments)).expect("segment ids encode"));
    domain_message(ENTRY_DOMAIN_V3, &m)
}

/// A format 2 envelope as encoded.
#[derive(Serialize, Deserialize)]
struct EnvelopeV2 {
    header: HeaderV2,
    certs: Vec<DeviceCert>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

fn signed_bytes(header_bytes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(header_bytes.len() + body.len());
    m.extend_from_slice(header_bytes);
    m.extend_from_slice(body);
    m
}

/// What a format 2 signature covers.
fn signed_v2(header_bytes: &[u8], certs: &[DeviceCert], body: &[u8]) -> Vec<u8> {
    let mut m = header_bytes.to_vec();
    m.extend(postcard::to_stdvec(certs).expect("certificates encode"));
    m.extend_from_slice(body);
    domain_message(ENTRY_DOMAIN, &m)
}

impl Envelope {
    /// Seal and sign a new entry; returns its bytes and its hash.
    pub fn seal(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
    ) -> Result<(Vec<u8>, EntryHash)> {
        let header = EntryHeader {
            version: ENVELOPE_VERSION,
            wire: keys.wire(),
            user: identity.user(),
            device: identity.device(),
            seq,
            prev,
            generation: 0,
            epoch: 0,
        };
        let hb = header.encode();
        let plain = postcard::to_stdvec(body).expect("body encodes");
        let sealed = seal(keys.feed_key(), &hb, &plain)?;
        let sig = identity.sign(&signed_bytes(&hb, &sealed))?.to_vec();
        Self::finish(Envelope {
            header,
            certs: Vec::new(),
            body: sealed,
            sig,
            pruned: None,
            segments: Vec::new(),
            pack: None,
        })
    }

    /// Seal entry `seq` of a feed of this device's as a store writes it:
    /// format 4 (with no texts beside), under the channel's newest key
    /// generation, the device's certificate in the feed's first entry (`seq`
    /// 1). For tools and tests that write feeds by hand.
    pub fn seal_next(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
    ) -> Result<(Vec<u8>, EntryHash)> {
        let certs = match identity.device_chain() {
            Some(c) if seq == 1 => c.to_vec(),
            _ => Vec::new(),
        };
        Self::seal_v4(keys, identity, seq, prev, body, keys.current_generation(), certs, &[])
    }

    /// Seal a format 2 entry, signed by this device's key; `certs` is the
    /// device's chain in the first format 2 entry of its feed, empty after.
    pub fn seal_v2(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
        generation: u32,
        certs: Vec<DeviceCert>,
    ) -> Result<(Vec<u8>, EntryHash)> {
        let (header, sealed, device) = Self::seal_body(
            keys,
            identity,
            seq,
            prev,
            body,
            generation,
            (ENVELOPE_V2, Nonces::Random),
            None,
        )?;
        let sig = device.sign_raw(&signed_v2(&header.encode(), &certs, &sealed)).to_vec();
        Self::finish(Envelope {
            header,
            certs,
            body: sealed,
            sig,
            pruned: None,
            segments: Vec::new(),
            pack: None,
        })
    }

    /// The header and sealed body of a device-signed entry (format 2 or 3),
    /// and the device keys that sign it.
    #[allow(clippy::too_many_arguments)]
    fn seal_body<'a>(
        keys: &ChannelKeys,
        identity: &'a Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
        generation: u32,
        (version, nonces): (u8, Nonces),
        root: Option<[u8; 32]>,
    ) -> Result<(EntryHeader, Vec<u8>, &'a crate::device::DeviceKeys)> {
        let device = identity
            .device_keys()
            .ok_or_else(|| Error::corrupted("identity", "no device keys to sign with"))?;
        let header = EntryHeader {
            version,
            wire: keys.wire(),
            user: identity.user(),
            device: identity.device(),
            seq,
            prev,
            generation,
            epoch: if version >= ENVELOPE_V3 { body.epoch } else { 0 },
        };
        let plain = if version >= ENVELOPE_V6 {
            let change = match crate::chunk::strip_change(&body.change, &header.device.0) {
                Some(stripped) => ChangeV6::Stripped(stripped),
                None => ChangeV6::Whole(body.change.clone()),
            };
            postcard::to_stdvec(&BodyV6 { change, texts: root })
        } else if version >= ENVELOPE_V5 {
            postcard::to_stdvec(&BodyV5 {
                epoch: body.epoch,
                change: body.change.clone(),
                texts: root,
            })
        } else {
            postcard::to_stdvec(body)
        }
        .expect("body encodes");
        let key = keys
            .sealing_key(generation)
            .ok_or_else(|| Error::invalid("key generation", "not held"))?;
        let sealed = seal_with_nonce(key, &header.encode(), &plain, nonces.of(NonceKind::Body, seq)?)?;
        Ok((header, sealed, device))
    }

    /// Seal a format 3 entry, signed by this device's key, with the texts its
    /// change names as segments (each sealed for this entry); `certs` as in
    /// [`Envelope::seal_v2`].
    #[allow(clippy::too_many_arguments)]
    pub fn seal_v3(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
        generation: u32,
        certs: Vec<DeviceCert>,
        texts: &[Content],
    ) -> Result<(Vec<u8>, EntryHash)> {
        Self::seal_with_texts(
            keys,
            identity,
            (seq, prev),
            body,
            generation,
            certs,
            texts,
            (ENVELOPE_V3, Nonces::Random),
            None,
        )
    }

    /// Seal a format 4 entry, signed by this device's key, with the texts its
    /// change names sealed together in its pack; `certs` as in
    /// [`Envelope::seal_v2`].
    #[allow(clippy::too_many_arguments)]
    pub fn seal_v4(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
        generation: u32,
        certs: Vec<DeviceCert>,
        texts: &[Content],
    ) -> Result<(Vec<u8>, EntryHash)> {
        Self::seal_with_texts(
            keys,
            identity,
            (seq, prev),
            body,
            generation,
            certs,
            texts,
            (ENVELOPE_V4, Nonces::Random),
            None,
        )
    }

    /// Seal a format 5 entry, signed by this device's key, with the texts its
    /// change names by slot (`texts[i]` in slot `i`: [`crate::textpack`]) in
    /// its pack; `certs` as in [`Envelope::seal_v2`]; the body's and the
    /// pack's nonces as `nonces` says.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_v5(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
        generation: u32,
        certs: Vec<DeviceCert>,
        texts: &[Content],
        nonces: Nonces,
    ) -> Result<(Vec<u8>, EntryHash)> {
        Self::seal_with_texts(
            keys,
            identity,
            (seq, prev),
            body,
            generation,
            certs,
            texts,
            (ENVELOPE_V5, nonces),
            None,
        )
    }

    /// Seal a format 6 entry: as [`Envelope::seal_v5`], its change (an
    /// automerge change chunk by this device) held without its framing and
    /// actor, which the entry says already, and no epoch but the header's.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_v6(
        keys: &ChannelKeys,
        identity: &Identity,
        seq: u64,
        prev: EntryHash,
        body: &EntryBody,
        generation: u32,
        certs: Vec<DeviceCert>,
        texts: &[Content],
        nonces: Nonces,
    ) -> Result<(Vec<u8>, EntryHash)> {
        Self::seal_v6_with(
            keys,
            identity,
            (seq, prev),
            body,
            generation,
            certs,
            texts,
            nonces,
            None,
        )
    }

    /// [`Envelope::seal_v6`] at `(seq, prev)`, the pack's texts taken
    /// already deflated from `early` when it was fed exactly them
    /// ([`crate::textpack::TextsDeflate`]; cleared either way).
    #[allow(clippy::too_many_arguments)]
    pub fn seal_v6_with(
        keys: &ChannelKeys,
        identity: &Identity,
        (seq, prev): (u64, EntryHash),
        body: &EntryBody,
        generation: u32,
        certs: Vec<DeviceCert>,
        texts: &[Content],
        nonces: Nonces,
        early: Option<&mut crate::textpack::TextsDeflate>,
    ) -> Result<(Vec<u8>, EntryHash)> {
        Self::seal_with_texts(
            keys,
            identity,
            (seq, prev),
            body,
            generation,
            certs,
            texts,
            (ENVELOPE_V6, nonces),
            early,
        )
    }

    /// A format 3 entry (a segment per text) or 4 (one pack of texts).
    #[allow(clippy::too_many_arguments)]
    fn seal_with_texts(
        keys: &ChannelKeys,
        identity: &Identity,
        (seq, prev): (u64, EntryHash),
        body: &EntryBody,
        generation: u32,
        certs: Vec<DeviceCert>,
        texts: &[Content],
        (version, nonces): (u8, Nonces),
        early: Option<&mut crate::textpack::TextsDeflate>,
    ) -> Result<(Vec<u8>, EntryHash)> {
        let packed = if version >= ENVELOPE_V5 && !texts.is_empty() {
            let slotted: Option<Vec<(u64, Option<&str>)>> = texts
                .iter()
                .map(|c| c.slot.map(|s| (s.op, (!s.gone).then_some(c.text.as_str()))))
                .collect();
            let slotted = slotted.ok_or_else(|| Error::invalid("format 5 entry", "a text put in no slot"))?;
            Some(TextPack::new(slotted)?)
        } else {
            None
        };
        let root = packed.as_ref().and_then(TextPack::root);
        let (header, sealed, device) =
            Self::seal_body(keys, identity, seq, prev, body, generation, (version, nonces), root)?;
        let hb = header.encode();
        let body_hash = *blake3::hash(&sealed).as_bytes();
        let (segments, pack, signed) = if version >= ENVELOPE_V5 {
            let pack = match &packed {
                // Every text dropped before sealing: no pack (the root
                // stands, over leaves nobody can check).
                Some(p) if p.held() > 0 => {
                    let key = keys
                        .sealing_key(generation)
                        .ok_or_else(|| Error::invalid("key generation", "not held"))?;
                    let nonce = nonces.of(NonceKind::Pack, seq)?;
                    Some(p.seal_at_with(key, &hb, flate2::Compression::default(), nonce, early)?)
                }
                _ => None,
            };
            (Vec::new(), pack, signed_v4(version, &hb, &certs, &body_hash))
        } else if version == ENVELOPE_V4 {
            let pack = seal_pack(keys, generation, &hb, texts)?;
            (Vec::new(), pack, signed_v4(version, &hb, &certs, &body_hash))
        } else {
            let segments = texts
                .iter()
                .map(|c| Segment::seal(keys, generation, &hb, c))
                .collect::<Result<Vec<_>>>()?;
            let signed = signed_v3(&hb, &certs, &body_hash, &segments);
            (segments, None, signed)
        };
        let sig = device.sign_raw(&signed).to_vec();
        Self::finish(Envelope {
            header,
            certs,
            body: sealed,
            sig,
            pruned: None,
            segments,
            pack,
        })
    }

    /// The hash of the body as a format 3 signature covers it.
    pub fn body_hash(&self) -> [u8; 32] {
        self.pruned.unwrap_or_else(|| *blake3::hash(&self.body).as_bytes())
    }

    /// This entry's hash (what the next entry's `prev` names): of its bytes
    /// in formats 1 and 2, of everything but its droppable parts from format 3.
    pub fn hash(&self) -> EntryHash {
        if self.header.version >= ENVELOPE_V4 {
            let skeleton = SkeletonV4 {
                header: self.header.v3(),
                certs: &self.certs,
                body: self.body_hash(),
                sig: &self.sig,
            };
            *blake3::hash(&postcard::to_stdvec(&skeleton).expect("skeleton encodes")).as_bytes()
        } else if self.header.version == ENVELOPE_V3 {
            let skeleton = SkeletonV3 {
                header: self.header.v3(),
                certs: &self.certs,
                body: self.body_hash(),
                sig: &self.sig,
                segments: slots(&self.segments),
            };
            *blake3::hash(&postcard::to_stdvec(&skeleton).expect("skeleton encodes")).as_bytes()
        } else {
            *blake3::hash(&self.encode()).as_bytes()
        }
    }

    /// Drop the bytes of the segments of these content ids (a delete, an
    /// expiry); the entry still verifies and hashes the same. Returns how
    /// many it dropped.
    pub fn drop_segments(&mut self, ids: &[ContentId]) -> usize {
        let mut dropped = 0;
        for s in self.segments.iter_mut().filter(|s| ids.contains(&s.id)) {
            dropped += usize::from(s.sealed.take().is_some());
        }
        dropped
    }

    /// How many segments still hold their bytes.
    pub fn held_segments(&self) -> usize {
        self.segments.iter().filter(|s| s.sealed.is_some()).count()
    }

    /// Whether it still carries texts (format 3: a segment's bytes; format
    /// 4: a pack).
    pub fn holds_texts(&self) -> bool {
        self.pack.is_some() || self.held_segments() > 0
    }

    /// Whether `self` is `other` with no more texts (a copy some of whose
    /// texts were dropped, or the same bytes). A format 4 pack sealed again
    /// without some texts is a copy of the one before only where it is
    /// dropped whole or the same: without the keys nobody can tell more.
    pub fn is_copy_of(&self, other: &Envelope) -> bool {
        self.hash() == other.hash()
            && (self.pack.is_none() || self.pack == other.pack)
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.sealed.is_none() || a.sealed == b.sealed)
    }

    /// [`Envelope::is_copy_of`] as a member sees it: also a copy whose pack
    /// was sealed again with fewer of `other`'s texts.
    pub fn is_copy_of_opened(&self, other: &Envelope, keys: &ChannelKeys) -> bool {
        if self.is_copy_of(other) {
            return true;
        }
        if self.hash() != other.hash() || self.pack.is_none() {
            return false;
        }
        let theirs: std::collections::HashSet<ContentId> = other.open_texts(keys).iter().map(Content::id).collect();
        self.open_texts_checked(keys)
            .is_ok_and(|t| t.iter().all(|c| theirs.contains(&c.id())))
    }

    /// Drop the body down to its hash (from format 3; the texts go with
    /// it): the entry still verifies and chains, and opens to nothing.
    pub fn prune_body(&mut self) {
        if self.header.version >= ENVELOPE_V3 && self.pruned.is_none() {
            self.pruned = Some(self.body_hash());
            self.body = Vec::new();
            self.strip_texts();
        }
    }

    /// Drop every text it carries (no key needed: a forwarder can, and a
    /// fork proof keeps none).
    pub fn strip_texts(&mut self) {
        self.pack = None;
        for s in &mut self.segments {
            s.sealed = None;
        }
    }

    /// Every text it carries that opens (a member only). Format 3: each
    /// segment checked against its id, one that does not open left out (its
    /// author sealed it wrong: the bytes match the hash it signed). Format 4:
    /// the pack's texts, none if it does not open; no text is checked
    /// against a change yet ([`crate::content`]).
    pub fn open_texts(&self, keys: &ChannelKeys) -> Vec<Content> {
        self.open_texts_checked(keys).unwrap_or_default()
    }

    /// [`Envelope::open_texts`], with the error of a pack that does not open
    /// (damaged or moved on the way; a receiver takes the entry without it,
    /// since nothing about a pack is signed and nobody can be blamed).
    pub fn open_texts_checked(&self, keys: &ChannelKeys) -> Result<Vec<Content>> {
        if self.header.version >= ENVELOPE_V5 {
            if self.pack.is_none() {
                return Ok(Vec::new());
            }
            let (root, slots) = self.slots(keys)?;
            return self.open_slots(keys, root.as_ref(), &slots);
        }
        match &self.pack {
            Some(sealed) => open_pack(keys, self.header.generation, &self.header.encode(), sealed),
            None => Ok(self.open_segments(keys)),
        }
    }

    /// Keep only the texts whose ids `keep` says yes to (a member: a format 4
    /// pack is sealed again; one that does not open is dropped, and counts
    /// as none). Returns how many texts went.
    pub fn retain_texts(&mut self, keys: &ChannelKeys, keep: impl Fn(&ContentId) -> bool) -> Result<usize> {
        if self.header.version >= ENVELOPE_V5 {
            let Some(sealed) = &self.pack else { return Ok(0) };
            let hb = self.header.encode();
            let opened = self.open_full(keys).and_then(|(_, root)| {
                let root = root.ok_or_else(|| Error::corrupted("text pack", "beside a body with no root"))?;
                TextPack::open(keys, self.header.generation, &hb, sealed, &root)
            });
            let Ok((pack, key)) = opened else {
                self.pack = None;
                return Ok(0);
            };
            let device = self.header.device;
            let kept = pack.retain(|op| keep(&ContentId::of_op(&device.0, op)));
            let gone = pack.held() - kept.held();
            if gone > 0 {
                self.reseal_within_bounds(|level| (kept.held() > 0).then(|| kept.seal(key, &hb, level)).transpose())?;
            }
            return Ok(gone);
        }
        if let Some(sealed) = &self.pack {
            let hb = self.header.encode();
            let Ok((texts, key)) = open_pack_keyed(keys, self.header.generation, &hb, sealed) else {
                self.pack = None;
                return Ok(0);
            };
            let kept: Vec<Content> = texts.iter().filter(|c| keep(&c.id())).cloned().collect();
            if kept.len() < texts.len() {
                self.reseal_within_bounds(|level| seal_pack_at(key, &hb, &kept, level))?;
            }
            return Ok(texts.len() - kept.len());
        }
        let gone: Vec<ContentId> = self.segments.iter().map(|s| s.id).filter(|id| !keep(id)).collect();
        Ok(self.drop_segments(&gone))
    }

    /// Puncture a format 5 pack's key tree over every slot it says is
    /// dropped, when its sealer left a node over one
    /// ([`TextPack::covers_dropped`]): a member stores no key that opens a
    /// guess at a text the pack dropped. Returns whether the pack changed.
    /// `root`: its body's. Cheap for a pack with no slot dropped (the count
    /// is in the clear).
    pub fn puncture_dropped(&mut self, keys: &ChannelKeys, root: &[u8; 32]) -> Result<bool> {
        if self.header.version < ENVELOPE_V5 {
            return Ok(false);
        }
        let Some(sealed) = &self.pack else { return Ok(false) };
        if crate::textpack::gone_of(sealed).unwrap_or(0) == 0 {
            return Ok(false);
        }
        let hb = self.header.encode();
        let (pack, key) = TextPack::open(keys, self.header.generation, &hb, sealed, root)?;
        if !pack.covers_dropped() {
            return Ok(false);
        }
        let kept = pack.retain(|_| true);
        self.reseal_within_bounds(|level| (kept.held() > 0).then(|| kept.seal(key, &hb, level)).transpose())?;
        Ok(true)
    }

    /// Put in the pack that `seal` makes of what a drop keeps, under the key
    /// that opened it, and never past the largest entry: deflate may code a
    /// subset longer than an author's stronger compression coded the whole,
    /// so the strongest level is tried next, and if even that is too long
    /// the pack goes whole (a caller sees it in `holds_texts`).
    fn reseal_within_bounds(&mut self, seal: impl Fn(flate2::Compression) -> Result<Option<Vec<u8>>>) -> Result<()> {
        self.pack = seal(flate2::Compression::default())?;
        if self.encode().len() > MAX_ENTRY_BYTES {
            self.pack = seal(flate2::Compression::best())?;
        }
        if self.encode().len() > MAX_ENTRY_BYTES {
            self.pack = None;
        }
        Ok(())
    }

    /// The root and the slots (slot, message, id) a format 5 entry's change
    /// names (a member only: the body is opened and its change decoded).
    pub fn slots(&self, keys: &ChannelKeys) -> Result<(Option<[u8; 32]>, Vec<crate::doc::SlotRef>)> {
        let (body, root) = self.open_full(keys)?;
        let (_, effects) = crate::doc::decode_change_effects(&body.change, &self.header.device, &self.header.user)?;
        Ok((root, effects.slots))
    }

    /// The texts of a format 5 entry's pack, each for the message and id its
    /// change names in that slot (`root` and `slots`: from its body, as
    /// [`Envelope::slots`] gives them, or as a caller that decoded the change
    /// already has them). A pack that does not open, does not match the
    /// root, or holds a text in a slot the change names for no op, for two,
    /// or for another op, is an error (taken as dropped).
    pub fn open_slots(
        &self,
        keys: &ChannelKeys,
        root: Option<&[u8; 32]>,
        slots: &[(u64, crate::MessageId, ContentId)],
    ) -> Result<Vec<Content>> {
        let Some(sealed) = &self.pack else {
            return Ok(Vec::new());
        };
        let root = root.ok_or_else(|| Error::corrupted("text pack", "beside a body with no root"))?;
        let (pack, _) = TextPack::open(keys, self.header.generation, &self.header.encode(), sealed, root)?;
        let by_slot = slot_ids(slots, pack.len());
        let device = self.header.device;
        let mut out = Vec::with_capacity(pack.held());
        for ((op, text), named) in pack.texts().into_iter().zip(by_slot) {
            let Some(text) = text else { continue };
            // Every text held is the one a text op of the change puts in
            // that slot: otherwise the pack is the author's mistake, and
            // taken as dropped (as one that does not open).
            match named {
                Some((msg, id)) if ContentId::of_op(&device.0, op) == id => {
                    out.push(Content::in_slot(id, op, msg, text.to_string()))
                }
                _ => {
                    return Err(Error::corrupted(
                        "text pack",
                        "holds a text its change does not name there",
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The texts of a format 5 entry's pack with their ids (from the op
    /// counters the pack carries, which its root binds), without decoding
    /// the change or checking the root: what a store holds (it checked
    /// them against both when it took the entry) and loads with an epoch.
    pub fn open_pack_texts(&self, keys: &ChannelKeys) -> Result<Vec<(ContentId, String)>> {
        let Some(sealed) = &self.pack else {
            return Ok(Vec::new());
        };
        // Checked against the root when the store took it (`verify` checks
        // it again).
        let pack = TextPack::open_held(keys, self.header.generation, &self.header.encode(), sealed)?;
        let device = self.header.device;
        Ok(pack
            .texts()
            .into_iter()
            .filter_map(|(op, text)| Some((ContentId::of_op(&device.0, op), text?.to_string())))
            .collect())
    }

    /// Open every segment whose bytes are held (a member only), each checked
    /// against its id; one that does not open is left out (its author
    /// sealed it wrong: the bytes match the hash it signed).
    pub fn open_segments(&self, keys: &ChannelKeys) -> Vec<Content> {
        if self.held_segments() == 0 {
            return Vec::new();
        }
        let hb = self.header.encode();
        self.segments
            .iter()
            .filter_map(|s| s.open_decoded(keys, self.header.generation, &hb).ok())
            .collect()
    }

    fn finish(env: Envelope) -> Result<(Vec<u8>, EntryHash)> {
        let bytes = env.encode();
        check_entry_size(bytes.len())?;
        Ok((bytes, env.hash()))
    }

    /// The body as formats 3 and later encode it.
    fn body_v3(&self) -> BodyV3 {
        match self.pruned {
            Some(h) => BodyV3::Pruned(h),
            None => BodyV3::Sealed(self.body.clone()),
        }
    }

    /// The entry's bytes in its format.
    pub fn encode(&self) -> Vec<u8> {
        if self.header.version >= ENVELOPE_V4 {
            postcard::to_stdvec(&EnvelopeV4 {
                header: self.header.v3(),
                certs: self.certs.clone(),
                body: self.body_v3(),
                sig: self.sig.clone(),
                pack: self.pack.clone(),
            })
        } else if self.header.version == ENVELOPE_V3 {
            postcard::to_stdvec(&EnvelopeV3 {
                header: self.header.v3(),
                certs: self.certs.clone(),
                body: self.body_v3(),
                sig: self.sig.clone(),
                segments: self.segments.clone(),
            })
        } else if self.header.version == ENVELOPE_V2 {
            let h = &self.header;
            postcard::to_stdvec(&EnvelopeV2 {
                header: HeaderV2 {
                    version: h.version,
                    wire: h.wire,
                    user: h.user,
                    device: h.device,
                    seq: h.seq,
                    prev: h.prev,
                    generation: h.generation,
                },
                certs: self.certs.clone(),
                body: self.body.clone(),
                sig: self.sig.clone(),
            })
        } else {
            postcard::to_stdvec(self)
        }
        .expect("envelope encodes")
    }

    /// The entry's bytes for a receiver that holds the entry before it
    /// (`before`): without the header fields it rebuilds from that
    /// ([`LeanContext`], about 115 bytes), and without each nonce that is
    /// the [`counted_nonce`] `before`'s prefix and this entry's seq give (24
    /// bytes each for the body and the pack). `None` before format 4, for a
    /// signature that is not 64 bytes, or when `before` is not the entry
    /// before this one: such entries travel whole.
    pub fn encode_lean(&self, before: &LeanContext) -> Option<Vec<u8>> {
        let h = &self.header;
        if h.version < ENVELOPE_V4
            || (h.wire, h.user, h.device, h.prev) != (before.wire, before.user, before.device, before.hash)
            || before.seq.checked_add(1) != Some(h.seq)
        {
            return None;
        }
        let sig: [u8; 64] = self.sig.as_slice().try_into().ok()?;
        let (lo, hi) = sig.split_at(32);
        let counted = |kind| before.nonce_prefix.map(|p| counted_nonce(&p, kind, h.seq));
        let body = match self.pruned {
            Some(hash) => LeanBody::Pruned(hash),
            None => match without_nonce(&self.body, counted(NonceKind::Body)) {
                Some(rest) => LeanBody::Counted(rest),
                None => LeanBody::Sealed(self.body.clone()),
            },
        };
        let pack = match &self.pack {
            None => LeanPack::None,
            Some(p) => match p
                .get(2..)
                .and_then(|sealed| without_nonce(sealed, counted(NonceKind::Pack)))
            {
                Some(rest) if p[..2] == [0, 0] => LeanPack::Fresh(rest),
                _ => LeanPack::Whole(p.clone()),
            },
        };
        let head = if (h.version, h.generation, h.epoch) == (before.version, before.generation, before.epoch)
            && self.certs.is_empty()
        {
            LeanHead::Same
        } else {
            LeanHead::Set {
                version: h.version,
                generation: h.generation,
                epoch: h.epoch,
                certs: self.certs.clone(),
            }
        };
        let lean = Lean {
            head,
            body,
            sig: (lo.try_into().expect("32 bytes"), hi.try_into().expect("32 bytes")),
            pack,
        };
        Some(postcard::to_stdvec(&lean).expect("lean entry encodes"))
    }

    /// The context a lean entry after this one is rebuilt with.
    pub fn lean_context(&self) -> LeanContext {
        LeanContext {
            wire: self.header.wire,
            user: self.header.user,
            device: self.header.device,
            seq: self.header.seq,
            hash: self.hash(),
            nonce_prefix: match self.pruned {
                None => self
                    .body
                    .get(..NONCE_PREFIX_LEN)
                    .map(|p| p.try_into().expect("15 bytes")),
                Some(_) => None,
            },
            version: self.header.version,
            generation: self.header.generation,
            epoch: self.header.epoch,
        }
    }

    /// Rebuild an entry from its lean bytes ([`Envelope::encode_lean`]) and
    /// what the receiver holds of the entry before it. Checked as
    /// [`Envelope::decode`] checks whole bytes (size, certificates, one
    /// encoding); nothing is trusted yet: a wrong context gives an entry
    /// whose signature does not verify, or whose boxes do not open.
    pub fn decode_lean(bytes: &[u8], before: &LeanContext) -> Result<Self> {
        check_entry_size(bytes.len())?;
        let malformed = |e: &dyn std::fmt::Display| Error::corrupted("lean feed entry", e.to_string());
        let (w, rest): (Lean, &[u8]) = postcard::take_from_bytes(bytes).map_err(|e| malformed(&e))?;
        if !rest.is_empty() {
            return Err(malformed(&"trailing bytes"));
        }
        let (version, generation, epoch, certs) = match w.head {
            LeanHead::Same => (before.version, before.generation, before.epoch, Vec::new()),
            LeanHead::Set {
                version,
                generation,
                epoch,
                certs,
            } => (version, generation, epoch, certs),
        };
        if !(ENVELOPE_V4..=ENVELOPE_V6).contains(&version) {
            return Err(Error::UnsupportedFormat {
                what: "lean feed entry",
                found: version,
                expected: ENVELOPE_V6,
            });
        }
        check_certs(&certs)?;
        let seq = before
            .seq
            .checked_add(1)
            .ok_or_else(|| malformed(&"sequence number overflows"))?;
        let counted = |kind| {
            before
                .nonce_prefix
                .map(|p| counted_nonce(&p, kind, seq))
                .ok_or_else(|| malformed(&"a counted nonce after an entry without one"))
        };
        let body = match w.body {
            LeanBody::Sealed(b) => BodyV3::Sealed(b),
            LeanBody::Counted(rest) => BodyV3::Sealed([&counted(NonceKind::Body)?[..], &rest[..]].concat()),
            LeanBody::Pruned(h) => BodyV3::Pruned(h),
        };
        let pack = match w.pack {
            LeanPack::None => None,
            LeanPack::Whole(p) => Some(p),
            LeanPack::Fresh(p) => Some([&[0, 0][..], &counted(NonceKind::Pack)?[..], &p[..]].concat()),
        };
        let header = HeaderV3 {
            version,
            wire: before.wire,
            user: before.user,
            device: before.device,
            seq,
            prev: before.hash,
            generation,
            epoch,
        };
        let sig = [w.sig.0, w.sig.1].concat();
        let env = Envelope::from_v3_parts(header, certs, body, sig, Vec::new(), pack)?;
        if env.encode_lean(before).as_deref() != Some(bytes) {
            return Err(malformed(&"not in canonical encoding"));
        }
        Ok(env)
    }

    /// Decode entry bytes (size-checked first). Nothing is trusted yet.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        check_entry_size(bytes.len())?;
        let malformed = |e: &dyn std::fmt::Display| Error::corrupted("feed entry", e.to_string());
        let env = match bytes.first() {
            Some(&ENVELOPE_VERSION) => {
                let (env, rest): (Envelope, &[u8]) = postcard::take_from_bytes(bytes).map_err(|e| malformed(&e))?;
                if !rest.is_empty() {
                    return Err(malformed(&"trailing bytes"));
                }
                env
            }
            Some(&ENVELOPE_V2) => {
                let (w, rest): (EnvelopeV2, &[u8]) = postcard::take_from_bytes(bytes).map_err(|e| malformed(&e))?;
                if !rest.is_empty() {
                    return Err(malformed(&"trailing bytes"));
                }
                check_certs(&w.certs)?;
                Envelope {
                    header: EntryHeader {
                        version: w.header.version,
                        wire: w.header.wire,
                        user: w.header.user,
                        device: w.header.device,
                        seq: w.header.seq,
                        prev: w.header.prev,
                        generation: w.header.generation,
                        epoch: 0,
                    },
                    certs: w.certs,
                    body: w.body,
                    sig: w.sig,
                    pruned: None,
                    segments: Vec::new(),
                    pack: None,
                }
            }
            Some(&ENVELOPE_V3) => {
                let (w, rest): (EnvelopeV3, &[u8]) = postcard::take_from_bytes(bytes).map_err(|e| malformed(&e))?;
                if !rest.is_empty() {
                    return Err(malformed(&"trailing bytes"));
                }
                check_certs(&w.certs)?;
                if w.segments.len() > MAX_ENTRY_SEGMENTS {
                    return Err(malformed(&"too many segments"));
                }
                // Segment bytes must match the hash the entry signs: no one
                // can add, swap or damage one unnoticed (a relay checks it).
                let mut ids = std::collections::HashSet::with_capacity(w.segments.len());
                for s in &w.segments {
                    if !ids.insert(s.id) || (s.sealed.is_some() && !s.intact()) {
                        return Err(malformed(&"a repeated segment, or bytes that do not match its hash"));
                    }
                }
                Envelope::from_v3_parts(w.header, w.certs, w.body, w.sig, w.segments, None)?
            }
            Some(&ENVELOPE_V4 | &ENVELOPE_V5 | &ENVELOPE_V6) => {
                let (w, rest): (EnvelopeV4, &[u8]) = postcard::take_from_bytes(bytes).map_err(|e| malformed(&e))?;
                if !rest.is_empty() {
                    return Err(malformed(&"trailing bytes"));
                }
                check_certs(&w.certs)?;
                Envelope::from_v3_parts(w.header, w.certs, w.body, w.sig, Vec::new(), w.pack)?
            }
            found => {
                return Err(Error::UnsupportedFormat {
                    what: "feed entry",
                    found: found.copied().unwrap_or(0),
                    expected: ENVELOPE_V6,
                });
            }
        };
        if env.header.seq == 0 {
            return Err(Error::corrupted("feed entry", "sequence numbers start at 1"));
        }
        // One entry, one encoding: postcard accepts over-long varints, and an
        // entry re-encoded differently would verify (the signature covers the
        // re-encoded header) yet hash differently, breaking chains and dedup.
        // Found by fuzzing (fuzz/corpus/envelope/crash-overlong-*).
        if env.encode() != bytes {
            return Err(Error::corrupted("feed entry", "not in canonical encoding"));
        }
        Ok(env)
    }

    /// A format 3 or 4 entry from its decoded parts: no texts (segment bytes,
    /// a pack) beside a pruned body.
    fn from_v3_parts(
        h: HeaderV3,
        certs: Vec<DeviceCert>,
        body: BodyV3,
        sig: Vec<u8>,
        segments: Vec<Segment>,
        pack: Option<Vec<u8>>,
    ) -> Result<Self> {
        let (body, pruned) = match body {
            BodyV3::Sealed(b) => (b, None),
            BodyV3::Pruned(_) if pack.is_some() || segments.iter().any(|s| s.sealed.is_some()) => {
                return Err(Error::corrupted("feed entry", "texts beside a pruned body"));
            }
            BodyV3::Pruned(hash) => (Vec::new(), Some(hash)),
        };
        Ok(Envelope {
            header: EntryHeader {
                version: h.version,
                wire: h.wire,
                user: h.user,
                device: h.device,
                seq: h.seq,
                prev: h.prev,
                generation: h.generation,
                epoch: h.epoch,
            },
            certs,
            body,
            sig,
            pruned,
            segments,
            pack,
        })
    }

    /// The feed and position an entry's header names, read from its first
    /// bytes without decoding the rest (every format begins with version,
    /// channel, user, device and position). Nothing is checked: a hint for
    /// choosing which entries to decode.
    pub fn peek_feed(bytes: &[u8]) -> Option<(DeviceId, u64)> {
        let ((_, _, _, device, seq), _): ((u8, WireId, UserId, DeviceId, u64), _) =
            postcard::take_from_bytes(bytes).ok()?;
        Some((device, seq))
    }

    /// The hash of an entry's bytes ([`Envelope::hash`]): of the bytes
    /// themselves before format 3; a later entry is decoded for it (bytes
    /// that do not decode hash as they are, and match no chain).
    pub fn hash_of(bytes: &[u8]) -> EntryHash {
        if bytes.first().is_some_and(|v| *v >= ENVELOPE_V3)
            && let Ok(env) = Envelope::decode(bytes)
        {
            return env.hash();
        }
        *blake3::hash(bytes).as_bytes()
    }

    /// Check the author's signature (no key needed: a relay can do this).
    /// Format 1: the user's key. Format 2: the device key its certificate
    /// chain certifies; one without a chain needs the key held for its feed
    /// ([`Envelope::verify_with`]).
    pub fn verify(&self) -> Result<()> {
        match self.device_key()? {
            Some(key) => self.verify_with(&key),
            None if self.header.version >= ENVELOPE_V2 => Err(Error::corrupted(
                "feed entry",
                "signed by a device key it does not carry",
            )),
            None => {
                let sig = self.signature()?;
                let hb = self.header.encode();
                verify_signature(&self.header.user, &signed_bytes(&hb, &self.body), &sig)
            }
        }
    }

    /// Check a format 2 entry's signature under its device's key (`key`, held
    /// for the feed or taken from [`Envelope::device_key`]); a format 1 entry
    /// is checked under its user's key whatever `key` is.
    pub fn verify_with(&self, key: &[u8; 32]) -> Result<()> {
        if self.header.version < ENVELOPE_V2 {
            let sig = self.signature()?;
            let hb = self.header.encode();
            return verify_signature(&self.header.user, &signed_bytes(&hb, &self.body), &sig);
        }
        let sig = self.signature()?;
        let msg = if self.header.version >= ENVELOPE_V4 {
            signed_v4(
                self.header.version,
                &self.header.encode(),
                &self.certs,
                &self.body_hash(),
            )
        } else if self.header.version == ENVELOPE_V3 {
            signed_v3(&self.header.encode(), &self.certs, &self.body_hash(), &self.segments)
        } else {
            signed_v2(&self.header.encode(), &self.certs, &self.body)
        };
        verify_signature(&UserId(*key), &msg, &sig)
    }

    /// The device key a format 2 entry's certificate chain certifies for its
    /// user and device (`None`: no chain, or a format 1 entry). A chain for
    /// another user or device is an error.
    pub fn device_key(&self) -> Result<Option<[u8; 32]>> {
        if self.certs.is_empty() {
            return Ok(None);
        }
        let body = verify_chain(&self.certs)?;
        if body.user != self.header.user || body.device != self.header.device {
            return Err(Error::corrupted("feed entry", "a certificate of another device"));
        }
        Ok(Some(body.keys.signing))
    }

    fn signature(&self) -> Result<[u8; 64]> {
        self.sig
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupted("feed entry", "signature length"))
    }

    /// Whether this entry may follow a feed held up to `have` (whose entry
    /// `have` hashes to `prev`) and owned by `owner`: signature first (a forged
    /// entry is refused as forged wherever it claims to sit), then the position
    /// (no gap), the chain (`prev`) and the owner (one user per device). The
    /// same rules for members and relays; the reason is what peers are told.
    pub fn check_next(&self, have: u64, prev: &EntryHash, owner: Option<UserId>) -> std::result::Result<(), String> {
        self.verify().map_err(|e| e.to_string())?;
        if self.header.seq != have + 1 {
            return Err(format!("gap in the feed: expected entry {}", have + 1));
        }
        if self.header.prev != *prev {
            return Err("does not chain onto the previous entry".into());
        }
        if owner.is_some_and(|o| o != self.header.user) {
            return Err("device belongs to another user".into());
        }
        Ok(())
    }

    /// Open the body with the channel keys (a member only). Verify first.
    pub fn open(&self, keys: &ChannelKeys) -> Result<EntryBody> {
        self.open_full(keys).map(|(body, _)| body)
    }

    /// [`Envelope::open`], with the root of its texts (format 5; `None`
    /// before, or without texts).
    pub fn open_full(&self, keys: &ChannelKeys) -> Result<(EntryBody, Option<[u8; 32]>)> {
        if self.header.wire != keys.wire() {
            return Err(Error::corrupted("feed entry", "belongs to another channel"));
        }
        if self.pruned.is_some() {
            return Err(Error::corrupted("feed entry", "its body was pruned"));
        }
        let hb = self.header.encode();
        let candidates = keys.opening_keys(self.header.generation);
        if candidates.is_empty() {
            return Err(Error::corrupted(
                "feed entry",
                format!(
                    "sealed under key generation {}, which this device does not hold",
                    self.header.generation
                ),
            ));
        }
        let mut last = None;
        for key in candidates {
            match open(key, &hb, &self.body, "feed entry") {
                Ok(plain) => {
                    let (body, root) = if self.header.version >= ENVELOPE_V6 {
                        let b: BodyV6 =
                            postcard::from_bytes(&plain).map_err(|e| Error::corrupted("feed entry body", e))?;
                        let change = match b.change {
                            ChangeV6::Whole(c) => c,
                            ChangeV6::Stripped(s) => crate::chunk::unstrip_change(&s, &self.header.device.0)?,
                        };
                        (
                            EntryBody {
                                epoch: self.header.epoch,
                                change,
                            },
                            b.texts,
                        )
                    } else if self.header.version >= ENVELOPE_V5 {
                        let b: BodyV5 =
                            postcard::from_bytes(&plain).map_err(|e| Error::corrupted("feed entry body", e))?;
                        (
                            EntryBody {
                                epoch: b.epoch,
                                change: b.change,
                            },
                            b.texts,
                        )
                    } else {
                        let b: EntryBody =
                            postcard::from_bytes(&plain).map_err(|e| Error::corrupted("feed entry body", e))?;
                        (b, None)
                    };
                    if self.header.version >= ENVELOPE_V3 && body.epoch != self.header.epoch {
                        return Err(Error::corrupted("feed entry", "header and body disagree on the epoch"));
                    }
                    return Ok((body, root));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one key was tried"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte fields read and written as bytes keep the encoding they had as
    /// sequences of `u8`: every entry stored before reads the same, and
    /// re-encodes to its own bytes (the canonical check).
    #[test]
    fn byte_fields_encode_as_their_sequences_did() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct AsSequences {
            epoch: Epoch,
            change: Vec<u8>,
            sealed: Option<Vec<u8>>,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct AsBytes {
            epoch: Epoch,
            #[serde(with = "serde_bytes")]
            change: Vec<u8>,
            #[serde(with = "serde_bytes")]
            sealed: Option<Vec<u8>>,
        }
        for len in [0usize, 1, 127, 128, 300, 20_000] {
            let change: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for sealed in [None, Some(change.clone())] {
                let seq = AsSequences {
                    epoch: 9,
                    change: change.clone(),
                    sealed: sealed.clone(),
                };
                let bytes = postcard::to_stdvec(&seq).unwrap();
                let b = AsBytes {
                    epoch: 9,
                    change: change.clone(),
                    sealed,
                };
                assert_eq!(postcard::to_stdvec(&b).unwrap(), bytes, "{len} bytes");
                assert_eq!(postcard::from_bytes::<AsBytes>(&bytes).unwrap(), b);
            }
        }
        let body = EntryBody {
            epoch: 3,
            change: vec![5; 200],
        };
        #[derive(Serialize)]
        struct BodyAsSequence {
            epoch: Epoch,
            change: Vec<u8>,
        }
        let seq = BodyAsSequence {
            epoch: 3,
            change: vec![5; 200],
        };
        assert_eq!(postcard::to_stdvec(&body).unwrap(), postcard::to_stdvec(&seq).unwrap());
    }

    #[test]
    fn format_2_entries_are_signed_by_their_device_and_carry_its_chain() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let chain = vec![me.device_cert().unwrap().clone()];
        let body = EntryBody {
            epoch: 1,
            change: vec![1, 2, 3],
        };
        let (first, h1) = Envelope::seal_v2(&keys, &me, 1, [0; 32], &body, 0, chain).unwrap();
        let mut keys = keys;
        assert!(keys.add_generation(3, crate::SecretKey::generate().unwrap()));
        let (second, _) = Envelope::seal_v2(&keys, &me, 2, h1, &body, 3, Vec::new()).unwrap();
        let e1 = Envelope::decode(&first).unwrap();
        let e2 = Envelope::decode(&second).unwrap();
        assert_eq!((e1.header.version, e2.header.generation), (ENVELOPE_V2, 3));
        // The first carries the chain: it verifies alone, and names the key.
        e1.verify().unwrap();
        let key = e1.device_key().unwrap().unwrap();
        assert_eq!(key, me.device_keys().unwrap().public().signing);
        // The next verifies with the key held for the feed, not alone.
        assert!(e2.verify().is_err());
        e2.verify_with(&key).unwrap();
        assert!(e2.verify_with(&[9; 32]).is_err());
        // Not under the user key: a format 2 signature is the device's.
        assert!(e2.verify_with(&me.user().0).is_err());
        assert_eq!(e1.open(&keys).unwrap(), body);
        // Every byte counts.
        for bytes in [&first, &second] {
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x01;
                if let Ok(e) = Envelope::decode(&b) {
                    assert!(
                        e.verify_with(&key).is_err() || e.open(&keys).is_err(),
                        "flip at {i} went unnoticed"
                    );
                }
            }
        }
        // Another device's chain in the entry: refused.
        let other = Identity::generate("b").unwrap();
        let mut swapped = e1.clone();
        swapped.certs = vec![other.device_cert().unwrap().clone()];
        assert!(swapped.device_key().is_err() && swapped.verify().is_err());
        // A device that claims another's id cannot sign for it: the header's
        // device must be the one its chain certifies.
        let mut squat = e1.clone();
        squat.header.device = other.device();
        assert!(squat.verify().is_err());
        // A format 1 entry is still the user's.
        let (v1, _) = Envelope::seal(&keys, &me, 3, [0; 32], &body).unwrap();
        let e = Envelope::decode(&v1).unwrap();
        assert_eq!(e.header.version, ENVELOPE_VERSION);
        e.verify().unwrap();
        assert!(e.device_key().unwrap().is_none());
        // Every format's first bytes name its feed and position.
        for (bytes, env) in [(&first, &e1), (&second, &e2), (&v1, &e)] {
            assert_eq!(Envelope::peek_feed(bytes), Some((env.header.device, env.header.seq)));
        }
        assert_eq!(Envelope::peek_feed(&first[..40]), None);
    }

    /// Channel keys, a writer and its chain, a body of epoch 4 and two texts
    /// of one message.
    fn two_texts() -> (ChannelKeys, Identity, Vec<DeviceCert>, EntryBody, Vec<Content>) {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let chain = vec![me.device_cert().unwrap().clone()];
        let body = EntryBody {
            epoch: 4,
            change: vec![1, 2, 3],
        };
        let msg = crate::MessageId([7; 24]);
        let texts = vec![
            Content::new(msg, "first".into()).unwrap(),
            Content::new(msg, "second".into()).unwrap(),
        ];
        (keys, me, chain, body, texts)
    }

    #[test]
    fn format_4_packs_drop_texts_without_breaking_the_feed() {
        let (keys, me, chain, body, texts) = two_texts();
        let (bytes, hash) = Envelope::seal_v4(&keys, &me, 1, [0; 32], &body, 0, chain, &texts).unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!((env.header.version, env.header.epoch), (ENVELOPE_V4, 4));
        env.verify().unwrap();
        assert_eq!(env.hash(), hash);
        assert_eq!(Envelope::hash_of(&bytes), hash);
        assert_eq!(env.open(&keys).unwrap(), body);
        assert!(env.holds_texts());
        assert_eq!(env.open_texts(&keys), texts);
        // A member drops one text (the pack sealed again): same hash, still
        // verifies, the other opens; dropping it again changes nothing.
        let mut dropped = env.clone();
        assert_eq!(dropped.retain_texts(&keys, |id| *id != texts[0].id()).unwrap(), 1);
        assert_eq!(dropped.retain_texts(&keys, |id| *id != texts[0].id()).unwrap(), 0);
        let again = Envelope::decode(&dropped.encode()).unwrap();
        again.verify().unwrap();
        assert_eq!(again.hash(), hash);
        assert_eq!(again.open_texts(&keys), vec![texts[1].clone()]);
        assert_ne!(again.pack, env.pack);
        // Its last text dropped: no pack at all.
        let mut none = again.clone();
        assert_eq!(none.retain_texts(&keys, |_| false).unwrap(), 1);
        assert!(!none.holds_texts() && none.pack.is_none() && none.hash() == hash);
        // Anyone can strip the pack, or prune the body (the pack goes with it).
        let mut stripped = env.clone();
        stripped.strip_texts();
        assert!(Envelope::decode(&stripped.encode()).unwrap().verify().is_ok());
        assert!(stripped.is_copy_of(&env) && !env.is_copy_of(&stripped));
        let mut stub = env.clone();
        stub.prune_body();
        let stub = Envelope::decode(&stub.encode()).unwrap();
        stub.verify().unwrap();
        assert_eq!(stub.hash(), hash);
        assert!(stub.open(&keys).is_err() && !stub.holds_texts());
        // A pack beside a pruned body does not decode.
        let mut both = stub.clone();
        both.pack = env.pack.clone();
        assert!(Envelope::decode(&both.encode()).is_err());
        // The next entry chains onto either copy; a pack moved to it does not
        // open there (its AAD is the header), and changes nothing signed.
        let (next, _) = Envelope::seal_v4(&keys, &me, 2, hash, &body, 0, Vec::new(), &[]).unwrap();
        let next = Envelope::decode(&next).unwrap();
        assert!(next.pack.is_none());
        let signing = me.device_keys().unwrap().public().signing;
        next.verify_with(&signing).unwrap();
        let mut moved = next.clone();
        moved.pack = env.pack.clone();
        moved.verify_with(&signing).unwrap();
        assert!(moved.open_texts(&keys).is_empty());
        // A damaged pack opens to nothing, and a member keeping texts drops it.
        let mut damaged = env.clone();
        damaged.pack.as_mut().unwrap()[5] ^= 1;
        assert!(damaged.open_texts(&keys).is_empty());
        assert_eq!(damaged.retain_texts(&keys, |_| true).unwrap(), 0);
        assert!(damaged.pack.is_none());
        // Every byte outside the pack is signed or checked.
        let pack_at = bytes.len() - env.pack.as_ref().unwrap().len();
        for i in 0..pack_at {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(e) = Envelope::decode(&b) {
                let intact = e.verify().is_ok() && e.open(&keys).is_ok() && e.hash() == hash;
                assert!(!intact || e.encode() == bytes, "flip at {i} went unnoticed");
            }
        }
    }

    /// A slot-mode document of epoch 4 with `n` posts staged by `me`
    /// (`text(i)` each), and their ids.
    fn staged_posts(me: &Identity, n: u64, text: impl Fn(u64) -> String) -> (crate::EpochDoc, Vec<crate::MessageId>) {
        let channel = crate::ChannelId([3; 32]);
        let tag = crate::id::writer_tag(&me.user(), &me.device());
        let mut doc = crate::EpochDoc::new(4, &me.device());
        doc.set_slot_texts(true);
        let mut ids = Vec::new();
        for i in 0..n {
            let id = crate::MessageId::new(crate::Timestamp::from_millis(1000 + i), 4, &channel, tag);
            let op = crate::Op::Post {
                id,
                text: text(i),
                reply_to: None,
            };
            doc.stage(&me.user(), &me.device(), &op).unwrap();
            ids.push(id);
        }
        (doc, ids)
    }

    /// The first entry of `me`'s feed, format 5, of what `doc` staged: its
    /// bytes, hash and texts.
    fn sealed_first(
        keys: &ChannelKeys,
        me: &Identity,
        doc: &mut crate::EpochDoc,
    ) -> (Vec<u8>, EntryHash, Vec<Content>) {
        let change = doc.commit(0).unwrap().unwrap();
        let texts = doc.take_texts();
        let body = EntryBody { epoch: 4, change };
        let chain = vec![me.device_cert().unwrap().clone()];
        let (bytes, hash) = Envelope::seal_v5(keys, me, 1, [0; 32], &body, 0, chain, &texts, Nonces::Random).unwrap();
        (bytes, hash, texts)
    }

    /// A change of epoch 4 that posts three messages and edits one, its
    /// texts named by slot, and the texts staged for its pack.
    fn slotted(me: &Identity) -> (EntryBody, Vec<Content>) {
        let (mut doc, ids) = staged_posts(me, 3, |i| format!("text number {i}"));
        let edit = crate::Op::Edit {
            msg: ids[1],
            text: "edited".into(),
        };
        doc.stage(&me.user(), &me.device(), &edit).unwrap();
        let change = doc.commit(0).unwrap().unwrap();
        (EntryBody { epoch: 4, change }, doc.take_texts())
    }

    #[test]
    fn a_lean_entry_rebuilds_to_the_same_bytes_from_the_entry_before_it() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let (mut doc, _) = staged_posts(&me, 2, |i| format!("text number {i}"));
        let (first, hash, _) = sealed_first(&keys, &me, &mut doc);
        let first = Envelope::decode(&first).unwrap();
        let (body, texts) = slotted(&me);
        let (bytes, _) = Envelope::seal_v5(&keys, &me, 2, hash, &body, 0, Vec::new(), &texts, Nonces::Random).unwrap();
        let next = Envelope::decode(&bytes).unwrap();
        let ctx = first.lean_context();
        assert!(
            next.encode_lean(&LeanContext { seq: 2, ..ctx }).is_none(),
            "not the entry before"
        );
        let lean = next.encode_lean(&ctx).unwrap();
        assert_eq!(
            bytes.len() - lean.len(),
            32 + 32 + 16 + 1 + 32 + 1 + 3,
            "wire, user, device, seq, prev, the signature's length; version, \
             generation, epoch and certificates said in one byte"
        );
        let rebuilt = Envelope::decode_lean(&lean, &ctx).unwrap();
        assert_eq!(rebuilt.encode(), bytes);
        let key = first.device_key().unwrap().unwrap();
        rebuilt.verify_with(&key).unwrap();
        // A stub travels lean too.
        let mut stub = next.clone();
        stub.prune_body();
        let rebuilt = Envelope::decode_lean(&stub.encode_lean(&ctx).unwrap(), &ctx).unwrap();
        assert_eq!(rebuilt.encode(), stub.encode());
        // Another context gives an entry that does not verify; trailing
        // bytes, an over-long varint and an older format are refused.
        let wrong = LeanContext { seq: 5, ..ctx };
        assert!(Envelope::decode_lean(&lean, &wrong).unwrap().verify_with(&key).is_err());
        let mut trailing = lean.clone();
        trailing.push(0);
        assert!(Envelope::decode_lean(&trailing, &ctx).is_err());
        let mut overlong = lean.clone();
        overlong.splice(1..2, [0x80 | overlong[1], 0x00]);
        assert!(Envelope::decode_lean(&overlong, &ctx).is_err());
        let mut old = postcard::from_bytes::<Lean>(&lean).unwrap();
        old.head = LeanHead::Set {
            version: ENVELOPE_V3,
            generation: 0,
            epoch: 4,
            certs: Vec::new(),
        };
        assert!(Envelope::decode_lean(&postcard::to_stdvec(&old).unwrap(), &ctx).is_err());
    }

    #[test]
    fn a_lean_entry_leaves_out_the_nonces_its_feed_implies() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let prefix = [9u8; crate::seal::NONCE_PREFIX_LEN];
        let (mut doc, _) = staged_posts(&me, 1, |i| format!("first text {i}"));
        let change = doc.commit(0).unwrap().unwrap();
        let body = EntryBody { epoch: 4, change };
        let chain = vec![me.device_cert().unwrap().clone()];
        let (first, hash) = Envelope::seal_v5(
            &keys,
            &me,
            1,
            [0; 32],
            &body,
            0,
            chain,
            &doc.take_texts(),
            Nonces::Counted(prefix),
        )
        .unwrap();
        let first = Envelope::decode(&first).unwrap();
        let key = first.device_key().unwrap().unwrap();
        assert_eq!(
            first.body[..24],
            crate::seal::counted_nonce(&prefix, NonceKind::Body, 1)
        );
        let ctx = first.lean_context();
        assert_eq!(ctx.nonce_prefix, Some(prefix));
        let (body, texts) = slotted(&me);
        let second = |prefix| {
            Envelope::seal_v5(
                &keys,
                &me,
                2,
                hash,
                &body,
                0,
                Vec::new(),
                &texts,
                Nonces::Counted(prefix),
            )
        };
        let (bytes, next_hash) = second(prefix).unwrap();
        let next = Envelope::decode(&bytes).unwrap();
        assert!(next.pack.is_some(), "the entry has texts");
        let lean = next.encode_lean(&ctx).unwrap();
        assert_eq!(
            bytes.len() - lean.len(),
            32 + 32 + 16 + 1 + 32 + 1 + 3 + 24 + 24 + 2,
            "the header's fields, the signature's length, both nonces, the pack's count of drops"
        );
        let rebuilt = Envelope::decode_lean(&lean, &ctx).unwrap();
        assert_eq!(rebuilt.encode(), bytes);
        rebuilt.verify_with(&key).unwrap();
        assert_eq!(rebuilt.hash(), next_hash);
        assert_eq!(rebuilt.open_texts_checked(&keys).unwrap().len(), texts.len());
        // A pack sealed again after a drop has a random nonce: it travels
        // whole, the body still lean.
        let mut dropped = next.clone();
        dropped.retain_texts(&keys, |id| *id != texts[0].id()).unwrap();
        let lean_dropped = dropped.encode_lean(&ctx).unwrap();
        assert!(matches!(
            postcard::from_bytes::<Lean>(&lean_dropped).unwrap().pack,
            LeanPack::Whole(_)
        ));
        assert_eq!(
            Envelope::decode_lean(&lean_dropped, &ctx).unwrap().encode(),
            dropped.encode()
        );
        // After a restart the writer draws a new prefix: the first entry
        // under it carries its nonces, and sets the prefix for the next.
        let other = [3u8; crate::seal::NONCE_PREFIX_LEN];
        let (moved, _) = second(other).unwrap();
        let moved = Envelope::decode(&moved).unwrap();
        let whole_nonces = moved.encode_lean(&ctx).unwrap();
        assert_eq!(
            whole_nonces.len(),
            lean.len() + 48 + 2,
            "both nonces, the count of drops"
        );
        assert_eq!(
            Envelope::decode_lean(&whole_nonces, &ctx).unwrap().encode(),
            moved.encode()
        );
        assert_eq!(moved.lean_context().nonce_prefix, Some(other));
        // A context with another prefix rebuilds boxes that neither verify
        // nor open; one with none refuses the frame.
        let wrong = LeanContext {
            nonce_prefix: Some(other),
            ..ctx
        };
        let forged = Envelope::decode_lean(&lean, &wrong).unwrap();
        assert!(forged.verify_with(&key).is_err());
        assert!(forged.open(&keys).is_err());
        let none = LeanContext {
            nonce_prefix: None,
            ..ctx
        };
        assert!(Envelope::decode_lean(&lean, &none).is_err());
        // A counted nonce sent whole is not the one encoding.
        let mut whole = postcard::from_bytes::<Lean>(&lean).unwrap();
        whole.body = LeanBody::Sealed(next.body.clone());
        let whole = postcard::to_stdvec(&whole).unwrap();
        assert!(Envelope::decode_lean(&whole, &ctx).is_err());
    }

    #[test]
    fn format_5_packs_name_texts_by_slot_and_drop_them_under_one_root() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let chain = vec![me.device_cert().unwrap().clone()];
        let (body, texts) = slotted(&me);
        assert_eq!(texts.len(), 4);
        let (bytes, hash) = Envelope::seal_v5(&keys, &me, 1, [0; 32], &body, 0, chain, &texts, Nonces::Random).unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!((env.header.version, env.header.epoch), (ENVELOPE_V5, 4));
        env.verify().unwrap();
        assert_eq!((env.hash(), Envelope::hash_of(&bytes)), (hash, hash));
        let (opened, root) = env.open_full(&keys).unwrap();
        assert_eq!(opened, body);
        assert!(root.is_some());
        // Each text comes back for the message and id the change names.
        assert_eq!(env.open_texts(&keys), texts);
        let (_, slots) = env.slots(&keys).unwrap();
        assert_eq!(env.open_slots(&keys, root.as_ref(), &slots).unwrap(), texts);
        // A text in a slot the change names for no op, or for two: the
        // pack is refused (taken as dropped).
        assert!(env.open_slots(&keys, root.as_ref(), &[]).is_err());
        let twice = [slots[0], (0, slots[1].1, slots[1].2)];
        assert!(env.open_slots(&keys, root.as_ref(), &twice).is_err());
        // Under another root (the pack of another entry): refused.
        assert!(env.open_slots(&keys, Some(&[0; 32]), &slots).is_err());
        // A member drops the edit's text: same hash, still verifies, the
        // rest opens; the pack's seed is gone with it.
        let mut dropped = env.clone();
        assert_eq!(dropped.retain_texts(&keys, |id| *id != texts[3].id()).unwrap(), 1);
        assert_eq!(dropped.retain_texts(&keys, |id| *id != texts[3].id()).unwrap(), 0);
        let again = Envelope::decode(&dropped.encode()).unwrap();
        again.verify().unwrap();
        assert_eq!(again.hash(), hash);
        assert_eq!(again.open_texts(&keys), texts[..3].to_vec());
        assert!(again.is_copy_of_opened(&env, &keys) && !env.is_copy_of_opened(&again, &keys));
        let mut none = again.clone();
        assert_eq!(none.retain_texts(&keys, |_| false).unwrap(), 3);
        assert!(!none.holds_texts() && none.hash() == hash);
        // A pack moved to another entry does not open there; a damaged one
        // opens to nothing and a member keeping texts drops it.
        let (next, _) = Envelope::seal_v5(&keys, &me, 2, hash, &body, 0, Vec::new(), &texts, Nonces::Random).unwrap();
        let mut moved = Envelope::decode(&next).unwrap();
        moved.pack = env.pack.clone();
        assert!(moved.open_texts(&keys).is_empty());
        let mut damaged = env.clone();
        damaged.pack.as_mut().unwrap()[5] ^= 1;
        assert!(damaged.open_texts(&keys).is_empty());
        assert_eq!(damaged.retain_texts(&keys, |_| true).unwrap(), 0);
        assert!(damaged.pack.is_none());
        // A stub keeps the chain.
        let mut stub = env.clone();
        stub.prune_body();
        let stub = Envelope::decode(&stub.encode()).unwrap();
        stub.verify().unwrap();
        assert_eq!(stub.hash(), hash);
        // Format 5 is not format 4 under another number: the label differs.
        let mut relabelled = env.clone();
        relabelled.header.version = ENVELOPE_V4;
        assert!(relabelled.verify().is_err());
        // Every byte outside the pack is signed or checked.
        let pack_at = bytes.len() - env.pack.as_ref().unwrap().len();
        for i in 0..pack_at {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(e) = Envelope::decode(&b) {
                let intact = e.verify().is_ok() && e.open(&keys).is_ok() && e.hash() == hash;
                assert!(!intact || e.encode() == bytes, "flip at {i} went unnoticed");
            }
        }
    }

    /// A relay takes a format 5 drop only when the pack's count of dropped
    /// slots grows, and the entry by no more than those slots may take.
    #[test]
    fn a_format_5_drop_only_ever_moves_forward() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let chain = vec![me.device_cert().unwrap().clone()];
        let (body, texts) = slotted(&me);
        let (bytes, hash) = Envelope::seal_v5(&keys, &me, 1, [0; 32], &body, 0, chain, &texts, Nonces::Random).unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        let drop_to = |e: &Envelope| crate::peer::TextDrop {
            wire: e.header.wire,
            device: e.header.device,
            seq: 1,
            entry: hash,
            pack: e.pack.clone().map(serde_bytes::ByteBuf::from),
        };
        let mut one = env.clone();
        one.retain_texts(&keys, |id| *id != texts[0].id()).unwrap();
        let after = drop_to(&one).apply(&bytes).unwrap().expect("one more slot dropped");
        assert_eq!(Envelope::decode(&after).unwrap().pack, one.pack);
        // Back to the whole pack, or to another pack with as many dropped:
        // refused.
        assert!(drop_to(&env).apply(&after).unwrap().is_none());
        let mut again = env.clone();
        again.retain_texts(&keys, |id| *id != texts[1].id()).unwrap();
        assert!(drop_to(&again).apply(&after).unwrap().is_none());
        // Every text dropped: no pack, taken.
        let mut none = one.clone();
        none.retain_texts(&keys, |_| false).unwrap();
        assert!(none.pack.is_none());
        assert!(drop_to(&none).apply(&after).unwrap().is_some());
        // A pack grown past what its dropped slots may take: refused.
        let mut padded = one.pack.clone().unwrap();
        padded.extend(vec![0; 2 * crate::textpack::MAX_GROWTH_PER_DROP]);
        let mut fat = one.clone();
        fat.pack = Some(padded);
        assert!(drop_to(&fat).apply(&bytes).unwrap().is_none());
    }

    /// A drop of one short text from a large pack (groups of a few hundred
    /// posts) stays within what a relay takes, wherever the slot is.
    #[test]
    fn dropping_a_short_text_from_a_large_pack_is_a_drop_a_relay_takes() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let (mut doc, _) = staged_posts(&me, 400, |i| format!("ok {i}"));
        let (bytes, hash, texts) = sealed_first(&keys, &me, &mut doc);
        let env = Envelope::decode(&bytes).unwrap();
        for at in [0, 1, 137, 255, 256, 399] {
            let mut one = env.clone();
            assert_eq!(one.retain_texts(&keys, |id| *id != texts[at].id()).unwrap(), 1);
            let drop = crate::peer::TextDrop {
                wire: env.header.wire,
                device: env.header.device,
                seq: 1,
                entry: hash,
                pack: one.pack.clone().map(serde_bytes::ByteBuf::from),
            };
            let grew = one.encode().len() as i64 - bytes.len() as i64;
            assert!(drop.apply(&bytes).unwrap().is_some(), "slot {at}: grew {grew} bytes");
        }
    }

    /// A pack whose sealer dropped a text but left its key tree whole over
    /// it is punctured by the member that stores it: the text's key is
    /// then derivable from nothing held, and the root still checks.
    #[test]
    fn a_pack_dropped_without_puncturing_is_punctured_when_stored() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let (mut doc, _) = staged_posts(&me, 3, |i| format!("text number {i}"));
        let (bytes, hash, _) = sealed_first(&keys, &me, &mut doc);
        let mut env = Envelope::decode(&bytes).unwrap();
        let (_, root) = env.open_full(&keys).unwrap();
        let root = root.unwrap();
        // Nothing dropped: nothing to do, and the pack is not even opened.
        assert!(!env.clone().puncture_dropped(&keys, &[0; 32]).unwrap());
        let hb = env.header.encode();
        let (pack, key) = TextPack::open(&keys, 0, &hb, env.pack.as_ref().unwrap(), &root).unwrap();
        let careless = pack.dropped_unpunctured(1);
        assert!(careless.covers_dropped() && !pack.retain(|op| op != careless.texts()[1].0).covers_dropped());
        env.pack = Some(careless.seal(key, &hb, flate2::Compression::default()).unwrap());
        assert!(TextPack::open(&keys, 0, &hb, env.pack.as_ref().unwrap(), &root).is_ok());
        assert!(env.puncture_dropped(&keys, &root).unwrap());
        let (mended, _) = TextPack::open(&keys, 0, &hb, env.pack.as_ref().unwrap(), &root).unwrap();
        assert!(!mended.covers_dropped());
        assert_eq!(mended.texts(), careless.texts());
        assert_eq!(env.hash(), hash);
        assert!(env.verify().is_ok());
        // Once punctured, left as it is.
        assert!(!env.puncture_dropped(&keys, &root).unwrap());
    }

    /// A text dropped before its entry is sealed (a post deleted in the
    /// same group) keeps its slot, sealed empty: the others stay in theirs.
    #[test]
    fn a_text_dropped_before_sealing_leaves_its_slot_empty() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let (mut doc, ids) = staged_posts(&me, 3, |i| format!("text number {i}"));
        let first = doc.text_ids(&ids[0]);
        doc.drop_texts(&first);
        let change = doc.commit(0).unwrap().unwrap();
        let texts = doc.take_texts();
        assert_eq!(texts.len(), 3);
        assert!(texts[0].slot.unwrap().gone && texts[0].text.is_empty());
        let body = EntryBody { epoch: 4, change };
        let chain = vec![me.device_cert().unwrap().clone()];
        let (bytes, _) = Envelope::seal_v5(&keys, &me, 1, [0; 32], &body, 0, chain, &texts, Nonces::Random).unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        let opened: Vec<String> = env.open_texts(&keys).into_iter().map(|c| c.text).collect();
        assert_eq!(opened, ["text number 1", "text number 2"]);
    }

    #[test]
    fn format_3_segments_and_bodies_drop_without_breaking_the_feed() {
        let (keys, me, chain, body, texts) = two_texts();
        let (bytes, hash) = Envelope::seal_v3(&keys, &me, 1, [0; 32], &body, 0, chain, &texts).unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!((env.header.version, env.header.epoch), (ENVELOPE_V3, 4));
        env.verify().unwrap();
        assert_eq!(env.hash(), hash);
        assert_eq!(Envelope::hash_of(&bytes), hash);
        assert_eq!(env.open(&keys).unwrap(), body);
        assert_eq!(env.open_segments(&keys), texts);
        // A segment dropped: same hash, still verifies, the other opens.
        let mut dropped = env.clone();
        assert_eq!(dropped.drop_segments(&[texts[0].id()]), 1);
        let again = Envelope::decode(&dropped.encode()).unwrap();
        again.verify().unwrap();
        assert_eq!(again.hash(), hash);
        assert_eq!(again.open_segments(&keys), vec![texts[1].clone()]);
        // The body pruned: a stub that verifies and chains, opens to nothing.
        let mut stub = env.clone();
        stub.prune_body();
        let stub = Envelope::decode(&stub.encode()).unwrap();
        stub.verify().unwrap();
        assert_eq!(stub.hash(), hash);
        assert!(stub.open(&keys).is_err() && stub.held_segments() == 0);
        // The next entry chains onto either copy.
        let (next, _) = Envelope::seal_v3(&keys, &me, 2, hash, &body, 0, Vec::new(), &[]).unwrap();
        let next = Envelope::decode(&next).unwrap();
        next.verify_with(&me.device_keys().unwrap().public().signing).unwrap();
        assert!(
            next.check_next(1, &stub.hash(), None).is_err(),
            "no chain in the entry: verify_with"
        );
        // A segment moved to another entry breaks its signature, and would
        // not open there.
        let mut moved = next.clone();
        moved.segments = env.segments.clone();
        assert!(moved.verify_with(&me.device_keys().unwrap().public().signing).is_err());
        assert!(moved.open_segments(&keys).is_empty());
        // A segment added, swapped or damaged: refused (the entry signs each
        // segment's id and hash).
        let mut added = env.clone();
        added.segments.push(added.segments[0].clone());
        assert!(Envelope::decode(&added.encode()).is_err(), "a repeated segment");
        let mut swapped = env.clone();
        swapped.segments[0].sealed = env.segments[1].sealed.clone();
        assert!(Envelope::decode(&swapped.encode()).is_err(), "another segment's bytes");
        let mut fewer = env.clone();
        fewer.segments.truncate(1);
        assert!(fewer.verify().is_err(), "a segment left out of the list");
        assert!(again.is_copy_of(&env) && !env.is_copy_of(&again));
        // Every byte of the signed part counts.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(e) = Envelope::decode(&b) {
                let intact = e.verify().is_ok() && e.open(&keys).is_ok() && e.hash() == hash;
                let same_texts = e.open_segments(&keys) == texts;
                assert!(
                    !intact || !same_texts || e.encode() == bytes,
                    "flip at {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn seal_verify_open_and_tamper() {
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("a").unwrap();
        let body = EntryBody {
            epoch: 1,
            change: vec![1, 2, 3],
        };
        let (bytes, hash) = Envelope::seal(&keys, &me, 1, [0; 32], &body).unwrap();
        assert_eq!(hash, Envelope::hash_of(&bytes));
        let env = Envelope::decode(&bytes).unwrap();
        env.verify().unwrap();
        assert_eq!(env.open(&keys).unwrap(), body);
        assert!(env.open(&ChannelKeys::generate().unwrap()).is_err());
        let mut forged = env.clone();
        forged.header.seq = 2;
        assert!(forged.verify().is_err());
        assert!(forged.open(&keys).is_err());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(e) = Envelope::decode(&b) {
                assert!(
                    e.verify().is_err() || e.open(&keys).is_err(),
                    "flip at {i} went unnoticed"
                );
            }
        }
    }
}
