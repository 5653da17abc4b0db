//! Message content that can be dropped: texts travel beside the change that
//! posts them, not inside it.
//!
//! A post or an edit puts a 16-byte *content id* in its epoch document where
//! the text used to be; the text itself rides in a *segment* of the same
//! feed entry ([`crate::Envelope`], format 3), sealed under the entry's key
//! generation and bound to the entry's header and the id. The entry's
//! signature and hash cover each segment's id and the hash of its sealed
//! bytes, not the bytes: any holder can drop a segment's bytes (a delete, an
//! expiry) and the feed still verifies, while nobody can add, swap or damage
//! one unnoticed (a relay checks that too, without keys); the id, which the
//! signed change carries, commits to the text:
//!
//! ```text
//! content id = blake3("hearth v1 content id" | salt [16] | message id [24] | text)[..16]
//! segment    = { id, hash = blake3(sealed), sealed?: XChaCha20-Poly1305(generation
//!                  key, random nonce, aad = "hearth v3 segment" | entry header bytes | id,
//!                  postcard(Content { salt, msg, text })) }   (sealed: absent once dropped)
//! ```
//!
//! The salt is random per text, so an id tells nothing about its text once
//! the segment is gone (no one can confirm a guess), and a receiver checks a
//! segment's text against the id before it shows it: neither a forwarder nor
//! the author can hand two receivers two texts for one message.
//!
//! Format 4 entries (written from store format 10) carry one *pack* of texts
//! instead of a segment per text: the entry's texts sealed together, deflated
//! when that is shorter, outside the signature and the hash:
//!
//! ```text
//! pack = XChaCha20-Poly1305(generation key, random nonce, aad = "hearth v4 texts"
//!          | entry header bytes, kind u8 (0 plain, 1 deflate) | postcard([Content]))
//! ```
//!
//! Nothing about a pack is signed: the change, which the entry signs, names
//! each text by its id, and a receiver keeps a text only when a change names
//! its id (the id commits to the text, its message and its salt). A member
//! drops a text by sealing the pack again without it (under the key that
//! opened it); anyone can drop the whole pack, and a pack that does not open
//! counts as dropped. Packed, the texts of a group commit compress together (message
//! ids of one writer share most of their bytes) and share one nonce and tag:
//! a segment cost about 150 bytes beside its text, a packed text about 40.

use serde::{Deserialize, Serialize};

use crate::channel::ChannelKeys;
use crate::error::{Error, Result};
use crate::id::{MessageId, random_bytes, to_hex};
use crate::op::MAX_TEXT_BYTES;
use crate::seal::{open, seal};

/// Signing-domain label of content ids.
const ID_DOMAIN: &[u8] = b"hearth v1 content id";
/// Domain label of format 5 text ids ([`ContentId::of_op`]).
const REF_DOMAIN: &[u8] = b"hearth v5 text ref";
/// AAD label of sealed segments.
const SEGMENT_DOMAIN: &[u8] = b"hearth v3 segment";
/// Largest sealed segment accepted: the longest text, its salt, postcard's
/// length prefix and the seal's nonce and tag, with room to spare.
pub const MAX_SEGMENT_BYTES: usize = MAX_TEXT_BYTES + 128;

/// AAD label of format 4 text packs.
const PACK_DOMAIN: &[u8] = b"hearth v4 texts";
/// A pack's plaintext kinds: postcard as is, or deflated.
const PACK_PLAIN: u8 = 0;
const PACK_DEFLATE: u8 = 1;
/// Packs whose texts encode to fewer bytes are sealed plain.
const MIN_DEFLATE_BYTES: usize = 160;
/// Most texts a pack holds.
pub const MAX_PACK_TEXTS: usize = 4096;
/// Most bytes a pack's texts take once inflated: a pack is a part of an
/// entry, itself at most [`crate::envelope::MAX_ENTRY_BYTES`], and deflate
/// codes no text in less than a tenth of it.
pub const MAX_PACK_PLAIN_BYTES: usize = 1024 * 1024;

/// The id of one text (a post's or an edit's), as its epoch document holds it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 16]);

impl std::fmt::Debug for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentId({})", to_hex(&self.0))
    }
}

impl ContentId {
    /// The id from its 16 bytes (as a document value holds them).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(ContentId(b.try_into().ok()?))
    }

    /// The id of a format 5 text ([`crate::textpack`]): named by the op
    /// that puts its slot into the document (the op's actor and counter,
    /// unique in a document), never written anywhere.
    pub fn of_op(actor: &[u8], counter: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(REF_DOMAIN);
        h.update(actor);
        h.update(&counter.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        ContentId(id)
    }
}

/// Where a format 5 text sits ([`Content::slot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slotted {
    /// Its id ([`ContentId::of_op`]).
    pub id: ContentId,
    /// The counter of the op that puts it.
    pub op: u64,
    /// Dropped before its entry was sealed (a delete in the same group):
    /// its slot is sealed empty, the text never written.
    pub gone: bool,
}

/// A text, its message and its salt: what a segment seals.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Random per text, so the id says nothing about the text.
    pub salt: [u8; 16],
    /// The message whose text (posted or edited) this is.
    pub msg: MessageId,
    /// The text.
    pub text: String,
    /// A format 5 text's slot: its id ([`ContentId::of_op`]: it has no
    /// salt, and its id is not a hash of it) and the op that puts it;
    /// `None` in formats 3 and 4.
    #[serde(skip)]
    pub slot: Option<Slotted>,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Message text is content: never in Debug output or logs.
        write!(f, "Content({} bytes)", self.text.len())
    }
}

impl Content {
    /// A text of `msg` with a fresh salt.
    pub fn new(msg: MessageId, text: String) -> Result<Self> {
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        Ok(Content {
            salt,
            msg,
            text,
            slot: None,
        })
    }

    /// A format 5 text of `msg`, named `id` by the op (counter `op`) that
    /// put its slot.
    pub fn in_slot(id: ContentId, op: u64, msg: MessageId, text: String) -> Self {
        Content {
            salt: [0; 16],
            msg,
            text,
            slot: Some(Slotted { id, op, gone: false }),
        }
    }

    /// The id that commits to this text (format 5: the id of the op that
    /// put its slot).
    pub fn id(&self) -> ContentId {
        if let Some(s) = self.slot {
            return s.id;
        }
        let mut h = blake3::Hasher::new();
        h.update(ID_DOMAIN);
        h.update(&self.salt);
        h.update(&self.msg.0);
        h.update(self.text.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        ContentId(id)
    }
}

/// One droppable part of a feed entry: a text sealed for the entry. The
/// entry signs its id and hash; the sealed bytes can be dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The content id the entry's change names.
    pub id: ContentId,
    /// blake3 of the sealed bytes.
    pub hash: [u8; 32],
    /// The sealed [`Content`], or `None` once dropped.
    #[serde(with = "serde_bytes")]
    pub sealed: Option<Vec<u8>>,
}

fn segment_aad(header: &[u8], id: &ContentId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEGMENT_DOMAIN.len() + header.len() + 16);
    aad.extend_from_slice(SEGMENT_DOMAIN);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&id.0);
    aad
}

impl Segment {
    /// Seal `content` for the entry whose header encodes to `header`, under
    /// key generation `generation` of `keys`.
    pub fn seal(keys: &ChannelKeys, generation: u32, header: &[u8], content: &Content) -> Result<Self> {
        let key = keys
            .sealing_key(generation)
            .ok_or_else(|| Error::invalid("key generation", "not held"))?;
        let id = content.id();
        let plain = postcard::to_stdvec(content).expect("content encodes");
        let sealed = seal(key, &segment_aad(header, &id), &plain)?;
        Ok(Segment {
            id,
            hash: *blake3::hash(&sealed).as_bytes(),
            sealed: Some(sealed),
        })
    }

    /// Whether its bytes are held and match the hash the entry signs.
    pub fn intact(&self) -> bool {
        self.sealed
            .as_ref()
            .is_some_and(|s| s.len() <= MAX_SEGMENT_BYTES && *blake3::hash(s).as_bytes() == self.hash)
    }

    /// Open a segment of the entry whose header encodes to `header`, sealed
    /// under `generation`, and check its text against its id.
    pub fn open(&self, keys: &ChannelKeys, generation: u32, header: &[u8]) -> Result<Content> {
        if self.sealed.is_some() && !self.intact() {
            return Err(Error::corrupted(
                "content segment",
                "does not match the hash its entry signs",
            ));
        }
        self.open_decoded(keys, generation, header)
    }

    /// [`Segment::open`] of a segment of a decoded entry, whose bytes
    /// `Envelope::decode` already checked against their hash (the AEAD and
    /// the id check still stand between it and a wrong text).
    pub(crate) fn open_decoded(&self, keys: &ChannelKeys, generation: u32, header: &[u8]) -> Result<Content> {
        let Some(sealed) = self.sealed.as_deref() else {
            return Err(Error::corrupted("content segment", "dropped"));
        };
        let aad = segment_aad(header, &self.id);
        let mut last = None;
        for key in keys.opening_keys(generation) {
            match open(key, &aad, sealed, "content segment") {
                Ok(plain) => {
                    let content: Content =
                        postcard::from_bytes(&plain).map_err(|e| Error::corrupted("content segment", e))?;
                    if content.text.len() > MAX_TEXT_BYTES {
                        return Err(Error::TooLarge {
                            what: "message text",
                            size: content.text.len(),
                            limit: MAX_TEXT_BYTES,
                        });
                    }
                    if content.id() != self.id {
                        return Err(Error::corrupted("content segment", "text does not match its id"));
                    }
                    return Ok(content);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::corrupted(
                "content segment",
                format!("sealed under key generation {generation}, which this device does not hold"),
            )
        }))
    }
}

fn pack_aad(header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PACK_DOMAIN.len() + header.len());
    aad.extend_from_slice(PACK_DOMAIN);
    aad.extend_from_slice(header);
    aad
}

/// Seal `texts` into the pack of the format 4 entry whose header encodes to
/// `header`, under key generation `generation` (`None`: no texts, no pack).
pub fn seal_pack(keys: &ChannelKeys, generation: u32, header: &[u8], texts: &[Content]) -> Result<Option<Vec<u8>>> {
    let key = keys
        .sealing_key(generation)
        .ok_or_else(|| Error::invalid("key generation", "not held"))?;
    seal_pack_with(key, header, texts)
}

/// [`seal_pack`] under `key` itself (the one a pack opened with, when a
/// member seals it again without some texts: a generation may have two
/// keys for a while, and the receivers hold the author's).
pub fn seal_pack_with(key: &crate::SecretKey, header: &[u8], texts: &[Content]) -> Result<Option<Vec<u8>>> {
    seal_pack_at(key, header, texts, flate2::Compression::default())
}

/// [`seal_pack_with`] at a deflate level of the caller's (the strongest,
/// when a pack sealed again must fit where the author's did).
pub fn seal_pack_at(
    key: &crate::SecretKey,
    header: &[u8],
    texts: &[Content],
    level: flate2::Compression,
) -> Result<Option<Vec<u8>>> {
    if texts.is_empty() {
        return Ok(None);
    }
    let encoded = postcard::to_stdvec(texts).expect("texts encode");
    let mut plain = Vec::with_capacity(encoded.len() + 1);
    // One short text (a lone post: the live path) does not deflate shorter
    // (its salt and message id are random): not worth the encoder's set-up.
    let deflated = if encoded.len() < MIN_DEFLATE_BYTES {
        encoded.clone()
    } else {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), level);
        std::io::Write::write_all(&mut enc, &encoded)
            .and_then(|_| enc.finish())
            .expect("deflate into memory")
    };
    if deflated.len() < encoded.len() {
        plain.push(PACK_DEFLATE);
        plain.extend_from_slice(&deflated);
    } else {
        plain.push(PACK_PLAIN);
        plain.extend_from_slice(&encoded);
    }
    Ok(Some(seal(key, &pack_aad(header), &plain)?))
}

/// Open the pack of the format 4 entry whose header encodes to `header`,
/// sealed under `generation`. The texts are not checked against any id yet:
/// a caller keeps a text only where a change names [`Content::id`].
pub fn open_pack(keys: &ChannelKeys, generation: u32, header: &[u8], sealed: &[u8]) -> Result<Vec<Content>> {
    open_pack_keyed(keys, generation, header, sealed).map(|(texts, _)| texts)
}

/// [`open_pack`], with the key that opened it.
pub fn open_pack_keyed<'k>(
    keys: &'k ChannelKeys,
    generation: u32,
    header: &[u8],
    sealed: &[u8],
) -> Result<(Vec<Content>, &'k crate::SecretKey)> {
    let aad = pack_aad(header);
    let mut last = None;
    for key in keys.opening_keys(generation) {
        let plain = match open(key, &aad, sealed, "text pack") {
            Ok(p) => p,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        return Ok((decode_pack_plain(&plain)?, key));
    }
    Err(last.unwrap_or_else(|| {
        Error::corrupted(
            "text pack",
            format!("sealed under key generation {generation}, which this device does not hold"),
        )
    }))
}

/// Deflated pack data inflated, at most [`MAX_PACK_PLAIN_BYTES`], with
/// nothing after it.
pub(crate) fn inflate_capped(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read;
    let bad = |why: &str| Error::corrupted("text pack", why.to_string());
    let mut decoder = flate2::bufread::DeflateDecoder::new(data);
    let mut out = Vec::new();
    (&mut decoder)
        .take(MAX_PACK_PLAIN_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| bad("does not inflate"))?;
    if out.len() > MAX_PACK_PLAIN_BYTES {
        return Err(bad("inflates beyond the size limit"));
    }
    if !decoder.into_inner().is_empty() {
        return Err(bad("bytes after the compressed data"));
    }
    Ok(out)
}

/// The texts of a pack's plaintext (`kind u8 | data`, once opened): a kind
/// this build does not know, data that does not inflate or inflates past
/// [`MAX_PACK_PLAIN_BYTES`], bytes after it, more than [`MAX_PACK_TEXTS`]
/// texts or a text past the longest are refused. The plaintext comes from a
/// member (any member can seal a pack), so it is untrusted: fuzzed (`text_pack`).
pub fn decode_pack_plain(plain: &[u8]) -> Result<Vec<Content>> {
    let bad = |why: &str| Error::corrupted("text pack", why.to_string());
    let inflated;
    let encoded = match plain.split_first() {
        Some((&PACK_PLAIN, rest)) => rest,
        Some((&PACK_DEFLATE, rest)) => {
            inflated = inflate_capped(rest)?;
            &inflated[..]
        }
        _ => return Err(bad("unknown kind")),
    };
    let (texts, rest): (Vec<Content>, &[u8]) =
        postcard::take_from_bytes(encoded).map_err(|e| Error::corrupted("text pack", e))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    if texts.len() > MAX_PACK_TEXTS {
        return Err(bad("too many texts"));
    }
    if let Some(t) = texts.iter().find(|t| t.text.len() > MAX_TEXT_BYTES) {
        return Err(Error::TooLarge {
            what: "message text",
            size: t.text.len(),
            limit: MAX_TEXT_BYTES,
        });
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_opens_only_for_its_entry_and_matches_its_id() {
        let keys = ChannelKeys::generate().unwrap();
        let msg = MessageId([5; 24]);
        let c = Content::new(msg, "hello".into()).unwrap();
        let s = Segment::seal(&keys, 0, b"header", &c).unwrap();
        assert_eq!(s.id, c.id());
        assert_eq!(s.open(&keys, 0, b"header").unwrap(), c);
        // Another entry's header, another channel: refused.
        assert!(s.open(&keys, 0, b"other").is_err());
        assert!(s.open(&ChannelKeys::generate().unwrap(), 0, b"header").is_err());
        // The id commits to the text: a segment moved under another id fails
        // (the aad binds it), and a text under a forged id fails the check.
        let mut moved = s.clone();
        moved.id = Content::new(msg, "hello".into()).unwrap().id();
        assert!(moved.open(&keys, 0, b"header").is_err());
        let forged = Content {
            salt: c.salt,
            msg,
            text: "bye".into(),
            slot: None,
        };
        let mut s2 = Segment::seal(&keys, 0, b"header", &forged).unwrap();
        s2.id = c.id();
        let aad = segment_aad(b"header", &s2.id);
        let sealed = seal(
            keys.sealing_key(0).unwrap(),
            &aad,
            &postcard::to_stdvec(&forged).unwrap(),
        )
        .unwrap();
        s2.hash = *blake3::hash(&sealed).as_bytes();
        s2.sealed = Some(sealed);
        assert!(s2.open(&keys, 0, b"header").is_err());
        // Same text, new salt: another id (an id tells nothing of its text).
        assert_ne!(Content::new(msg, "hello".into()).unwrap().id(), c.id());
        assert_eq!(format!("{c:?}"), "Content(5 bytes)");
        // Bytes that do not match the signed hash, or none: not opened.
        let mut damaged = s.clone();
        damaged.sealed.as_mut().unwrap()[30] ^= 1;
        assert!(!damaged.intact() && damaged.open(&keys, 0, b"header").is_err());
        let mut dropped = s.clone();
        dropped.sealed = None;
        assert!(!dropped.intact() && dropped.open(&keys, 0, b"header").is_err());
    }

    #[test]
    fn a_pack_opens_only_for_its_entry_and_compresses_what_repeats() {
        let keys = ChannelKeys::generate().unwrap();
        assert_eq!(seal_pack(&keys, 0, b"header", &[]).unwrap(), None);
        let texts: Vec<Content> = (0..50u8)
            .map(|i| {
                let mut m = [9u8; 24];
                m[7] = i;
                Content::new(MessageId(m), format!("message number {i} of a long conversation")).unwrap()
            })
            .collect();
        let pack = seal_pack(&keys, 0, b"header", &texts).unwrap().unwrap();
        assert_eq!(open_pack(&keys, 0, b"header", &pack).unwrap(), texts);
        // Fewer bytes than the texts' own encoding: they compress together.
        let plain = postcard::to_stdvec(&texts).unwrap().len();
        assert!(pack.len() < plain, "{} >= {plain}", pack.len());
        // Another entry, another channel, damaged bytes: refused.
        assert!(open_pack(&keys, 0, b"other", &pack).is_err());
        assert!(open_pack(&ChannelKeys::generate().unwrap(), 0, b"header", &pack).is_err());
        let mut damaged = pack.clone();
        damaged[30] ^= 1;
        assert!(open_pack(&keys, 0, b"header", &damaged).is_err());
        // One short text that deflate cannot shorten is packed plain.
        let one = [Content::new(MessageId([1; 24]), "x".into()).unwrap()];
        let p = seal_pack(&keys, 0, b"h", &one).unwrap().unwrap();
        assert_eq!(open_pack(&keys, 0, b"h", &p).unwrap(), one);
        // A member's pack that inflates past the limit, or of an unknown
        // kind, is refused, not allocated.
        let key = keys.sealing_key(0).unwrap();
        let mut bomb = vec![PACK_DEFLATE];
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![0u8; MAX_PACK_PLAIN_BYTES + 10]).unwrap();
        bomb.extend(enc.finish().unwrap());
        let sealed = seal(key, &pack_aad(b"h"), &bomb).unwrap();
        assert!(open_pack(&keys, 0, b"h", &sealed).is_err());
        let sealed = seal(key, &pack_aad(b"h"), &[7, 1, 2]).unwrap();
        assert!(open_pack(&keys, 0, b"h", &sealed).is_err());
    }
}
