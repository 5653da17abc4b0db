//! Format 5 text packs (entry format 5, store format 13): the texts of an
//! entry, committed to by one root its sealed body carries, named by slot.
//!
//! Format 4 named each text in the change by a 16-byte content id and gave
//! each a 16-byte salt and its message id in the pack: about 44 bytes a text
//! that do not compress, a third more bytes on the wire and on disk than
//! texts inside automerge (docs/lifecycle.md, "Measured"). Format 5 moves
//! the commitment out of the change:
//!
//! ```text
//! change:  a post's "t" (an edit's "e:…") is Uint(slot), the text's index
//!          in its entry's pack (an edit may add 4096 to it); the text's id
//!          in the document is ContentId::of_op(actor, counter) of that put
//! key_i  = blake3("hearth v5 text key" | seed [16] | i u32 LE)[..16]
//! leaf_i = blake3("hearth v5 text leaf" | key_i | op_i u64 LE | text_i)
//! root   = blake3("hearth v5 texts root" | n u32 LE | leaf_0 | … | leaf_n-1)
//! body   = sealed postcard(epoch, change, Some(root))     (signed by its hash)
//! pack   = XChaCha20-Poly1305(generation key, random nonce, aad = "hearth v5
//!            texts" | entry header bytes, kind u8 (0 plain, 1 deflate) |
//!            postcard(seed?, [op_i - op_i-1], [Text { key?, text } | Gone(leaf)]))
//! ```
//!
//! `op_i` is the counter of the op that puts slot `i` (the change's author
//! is the entry's device): with it a store knows each text's id from the
//! pack alone, without decoding the change (loading an epoch opens every
//! pack of it), and the root binds it. A receiver checks it against the
//! change once, when it takes the entry.
//!
//! A fresh pack holds the seed and the texts alone (every key derived): a
//! text costs its own bytes, deflated with the others. Dropping texts (a
//! delete, an expiry) seals the pack again with the seed gone, each kept
//! text's key written out and each dropped one's leaf in its place: the root
//! still checks, and nobody holding the new pack can confirm a guess at a
//! dropped text (its key went with the seed). A pack whose leaves do not
//! give its entry's root is refused whole, so neither a forwarder nor the
//! author can hand two receivers two texts for one slot.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::random_bytes;
use crate::op::MAX_TEXT_BYTES;
use crate::seal::{open, seal};

/// AAD label of format 5 text packs.
const PACK_DOMAIN: &[u8] = b"hearth v5 texts";
const KEY_DOMAIN: &[u8] = b"hearth v5 text key";
const LEAF_DOMAIN: &[u8] = b"hearth v5 text leaf";
const ROOT_DOMAIN: &[u8] = b"hearth v5 texts root";
/// Plaintext kinds, as in format 4.
const PLAIN: u8 = 0;
const DEFLATE: u8 = 1;
/// Packs whose encoding is shorter are sealed plain.
const MIN_DEFLATE_BYTES: usize = 160;

/// A text's key, as the pack derives it from its seed.
type TextKey = [u8; 16];
/// What the root commits to for one slot.
pub type Leaf = [u8; 32];

/// One slot of a pack.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Slot {
    /// A text, with its key (`None`: derived from the pack's seed).
    Text { key: Option<TextKey>, text: String },
    /// A dropped text's leaf.
    Gone(Leaf),
}

/// The texts of a format 5 entry, by slot (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct TextPack {
    seed: Option<[u8; 16]>,
    /// The counter of the op that puts each slot.
    ops: Vec<u64>,
    slots: Vec<Slot>,
}

/// A pack as encoded: op counters as steps from the one before (they grow
/// by a few an op: a byte each, which deflate shortens further).
#[derive(Serialize, Deserialize)]
struct PackWire {
    seed: Option<[u8; 16]>,
    steps: Vec<u64>,
    slots: Vec<Slot>,
}

impl TextPack {
    fn wire(&self) -> PackWire {
        let mut last = 0u64;
        let steps = self
            .ops
            .iter()
            .map(|op| {
                let step = op.wrapping_sub(last);
                last = *op;
                step
            })
            .collect();
        PackWire {
            seed: self.seed,
            steps,
            slots: self.slots.clone(),
        }
    }

    fn from_wire(w: PackWire) -> Option<Self> {
        if w.steps.len() != w.slots.len() {
            return None;
        }
        let mut last = 0u64;
        let ops = w
            .steps
            .iter()
            .map(|s| {
                last = last.wrapping_add(*s);
                last
            })
            .collect();
        Some(TextPack {
            seed: w.seed,
            ops,
            slots: w.slots,
        })
    }
}

impl std::fmt::Debug for TextPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Texts are content: never in Debug output.
        write!(f, "TextPack({} slots, {} held)", self.slots.len(), self.held())
    }
}

fn derive_key(seed: &[u8; 16], slot: usize) -> TextKey {
    let mut h = blake3::Hasher::new();
    h.update(KEY_DOMAIN);
    h.update(seed);
    h.update(&(slot as u32).to_le_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finalize().as_bytes()[..16]);
    k
}

fn leaf(key: &TextKey, op: u64, text: &str) -> Leaf {
    let mut h = blake3::Hasher::new();
    h.update(LEAF_DOMAIN);
    h.update(key);
    h.update(&op.to_le_bytes());
    h.update(text.as_bytes());
    *h.finalize().as_bytes()
}

fn aad(header: &[u8]) -> Vec<u8> {
    let mut a = PACK_DOMAIN.to_vec();
    a.extend_from_slice(header);
    a
}

impl TextPack {
    /// A fresh pack of `texts` (slot `i` is `texts[i]`: the counter of the
    /// op that puts it, and the text), with a random seed.
    pub fn new<'a>(texts: impl IntoIterator<Item = (u64, &'a str)>) -> Result<Self> {
        let mut seed = [0u8; 16];
        random_bytes(&mut seed)?;
        let (ops, slots): (Vec<u64>, Vec<Slot>) = texts
            .into_iter()
            .map(|(op, t)| {
                (
                    op,
                    Slot::Text {
                        key: None,
                        text: t.to_string(),
                    },
                )
            })
            .unzip();
        if slots.len() > crate::content::MAX_PACK_TEXTS {
            return Err(Error::invalid("text pack", "too many texts"));
        }
        Ok(TextPack {
            seed: Some(seed),
            ops,
            slots,
        })
    }

    /// How many slots (texts, held or dropped).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it has no slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many texts it still holds.
    pub fn held(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s, Slot::Text { .. })).count()
    }

    /// The op counter and text of each slot (`None`: dropped).
    pub fn texts(&self) -> Vec<(u64, Option<&str>)> {
        self.ops
            .iter()
            .zip(&self.slots)
            .map(|(op, s)| match s {
                Slot::Text { text, .. } => (*op, Some(text.as_str())),
                Slot::Gone(_) => (*op, None),
            })
            .collect()
    }

    fn key(&self, slot: usize, explicit: &Option<TextKey>) -> Option<TextKey> {
        explicit.or_else(|| self.seed.as_ref().map(|s| derive_key(s, slot)))
    }

    /// The root its slots give (what its entry's body carries); `None`
    /// when a text has neither a key nor a seed to derive one from.
    pub fn root(&self) -> Option<[u8; 32]> {
        let mut h = blake3::Hasher::new();
        h.update(ROOT_DOMAIN);
        h.update(&(self.slots.len() as u32).to_le_bytes());
        for (i, (s, op)) in self.slots.iter().zip(&self.ops).enumerate() {
            let l = match s {
                Slot::Text { key, text } => leaf(&self.key(i, key)?, *op, text),
                Slot::Gone(l) => *l,
            };
            h.update(&l);
        }
        Some(*h.finalize().as_bytes())
    }

    /// The same pack with only the slots `keep` says yes to still holding
    /// their texts: the seed goes, each kept text's key is written out and
    /// each dropped one's leaf takes its place (the root is unchanged).
    /// (`keep` is asked with each slot's op counter.)
    pub fn retain(&self, keep: impl Fn(u64) -> bool) -> TextPack {
        let slots = self
            .slots
            .iter()
            .zip(&self.ops)
            .enumerate()
            .map(|(i, (s, op))| match s {
                Slot::Text { key, text } => {
                    let k = self.key(i, key).unwrap_or([0; 16]);
                    if keep(*op) {
                        Slot::Text {
                            key: Some(k),
                            text: text.clone(),
                        }
                    } else {
                        Slot::Gone(leaf(&k, *op, text))
                    }
                }
                Slot::Gone(l) => Slot::Gone(*l),
            })
            .collect();
        TextPack {
            seed: None,
            ops: self.ops.clone(),
            slots,
        }
    }

    /// Seal it for the format 5 entry whose header encodes to `header`,
    /// deflated at `level` when that is shorter.
    pub fn seal(&self, key: &crate::SecretKey, header: &[u8], level: flate2::Compression) -> Result<Vec<u8>> {
        let encoded = postcard::to_stdvec(&self.wire()).expect("a text pack encodes");
        let deflated = if encoded.len() < MIN_DEFLATE_BYTES {
            None
        } else {
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), level);
            Some(
                std::io::Write::write_all(&mut enc, &encoded)
                    .and_then(|_| enc.finish())
                    .expect("deflate into memory"),
            )
        };
        let mut plain = Vec::with_capacity(encoded.len() + 1);
        match deflated {
            Some(d) if d.len() < encoded.len() => {
                plain.push(DEFLATE);
                plain.extend_from_slice(&d);
            }
            _ => {
                plain.push(PLAIN);
                plain.extend_from_slice(&encoded);
            }
        }
        seal(key, &aad(header), &plain)
    }

    /// Open the pack of the format 5 entry whose header encodes to
    /// `header`, sealed under `generation`, and check it against the root
    /// its body carries; returns it with the key that opened it.
    pub fn open<'k>(
        keys: &'k crate::ChannelKeys,
        generation: u32,
        header: &[u8],
        sealed: &[u8],
        root: &[u8; 32],
    ) -> Result<(TextPack, &'k crate::SecretKey)> {
        let aad = aad(header);
        let mut last = None;
        for key in keys.opening_keys(generation) {
            match open(key, &aad, sealed, "text pack") {
                Ok(plain) => {
                    let pack = Self::decode_plain(&plain)?;
                    if pack.root().as_ref() != Some(root) {
                        return Err(Error::corrupted("text pack", "does not match its entry's root"));
                    }
                    return Ok((pack, key));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::corrupted(
                "text pack",
                format!("sealed under key generation {generation}, which this device does not hold"),
            )
        }))
    }

    /// A pack from its plaintext (`kind u8 | data`, once opened): a kind
    /// this build does not know, data that does not inflate or inflates
    /// past [`crate::content::MAX_PACK_PLAIN_BYTES`], bytes after it, more
    /// than [`crate::content::MAX_PACK_TEXTS`] slots or a text past the
    /// longest are refused. Any member can seal a pack, so the plaintext
    /// is untrusted: fuzzed (`text_pack`).
    pub fn decode_plain(plain: &[u8]) -> Result<TextPack> {
        let bad = |why: &str| Error::corrupted("text pack", why.to_string());
        let inflated;
        let encoded = match plain.split_first() {
            Some((&PLAIN, rest)) => rest,
            Some((&DEFLATE, rest)) => {
                inflated = crate::content::inflate_capped(rest)?;
                &inflated[..]
            }
            _ => return Err(bad("unknown kind")),
        };
        let (wire, rest): (PackWire, &[u8]) =
            postcard::take_from_bytes(encoded).map_err(|e| Error::corrupted("text pack", e))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let pack = TextPack::from_wire(wire).ok_or_else(|| bad("op counters and slots disagree"))?;
        if pack.slots.len() > crate::content::MAX_PACK_TEXTS {
            return Err(bad("too many texts"));
        }
        for s in &pack.slots {
            if let Slot::Text { text, .. } = s
                && text.len() > MAX_TEXT_BYTES
            {
                return Err(Error::TooLarge {
                    what: "message text",
                    size: text.len(),
                    limit: MAX_TEXT_BYTES,
                });
            }
        }
        Ok(pack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChannelKeys;

    fn texts(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("message number {i} of a long conversation"))
            .collect()
    }

    #[test]
    fn a_pack_opens_against_its_root_only_and_drops_keep_the_root() {
        let keys = ChannelKeys::generate().unwrap();
        let key = keys.sealing_key(0).unwrap();
        let t = texts(40);
        let pack = TextPack::new(t.iter().enumerate().map(|(i, t)| (100 + 2 * i as u64, t.as_str()))).unwrap();
        let root = pack.root().unwrap();
        let sealed = pack.seal(key, b"header", flate2::Compression::default()).unwrap();
        let (back, _) = TextPack::open(&keys, 0, b"header", &sealed, &root).unwrap();
        assert_eq!(back, pack);
        assert_eq!(back.texts()[3], (106, Some(t[3].as_str())));
        // Texts alone: about their own bytes once deflated together.
        let plain: usize = t.iter().map(String::len).sum();
        assert!(sealed.len() < plain, "{} >= {plain}", sealed.len());
        // Another root, header or channel, damaged bytes: refused.
        assert!(TextPack::open(&keys, 0, b"header", &sealed, &[0; 32]).is_err());
        assert!(TextPack::open(&keys, 0, b"other", &sealed, &root).is_err());
        assert!(TextPack::open(&ChannelKeys::generate().unwrap(), 0, b"header", &sealed, &root).is_err());
        let mut damaged = sealed.clone();
        damaged[30] ^= 1;
        assert!(TextPack::open(&keys, 0, b"header", &damaged, &root).is_err());
        // Another text in a slot, or the text of another op (the author's
        // or a member's): refused.
        let mut swapped = pack.clone();
        swapped.slots[5] = Slot::Text {
            key: None,
            text: "something else".into(),
        };
        let s = swapped.seal(key, b"header", flate2::Compression::default()).unwrap();
        assert!(TextPack::open(&keys, 0, b"header", &s, &root).is_err());
        let mut moved = pack.clone();
        moved.ops.swap(5, 6);
        let s = moved.seal(key, b"header", flate2::Compression::default()).unwrap();
        assert!(TextPack::open(&keys, 0, b"header", &s, &root).is_err());

        // Two texts dropped: the root still checks, the seed is gone, and
        // the dropped texts are nowhere in the plaintext.
        let kept = pack.retain(|op| op != 110 && op != 114);
        assert_eq!(kept.root(), Some(root));
        assert_eq!((kept.len(), kept.held()), (40, 38));
        assert!(kept.seed.is_none());
        assert_eq!(kept.texts()[5], (110, None));
        let plain = postcard::to_stdvec(&kept.wire()).unwrap();
        assert!(!plain.windows(t[5].len()).any(|w| w == t[5].as_bytes()));
        let s = kept.seal(key, b"header", flate2::Compression::default()).unwrap();
        let (back, _) = TextPack::open(&keys, 0, b"header", &s, &root).unwrap();
        assert_eq!(back.texts()[6], (112, Some(t[6].as_str())));
        // Dropped again later: still the same root.
        assert_eq!(back.retain(|op| op != 100).root(), Some(root));
        // A guess at a dropped text does not give its leaf without its key.
        let Slot::Gone(l) = kept.slots[5] else { panic!() };
        assert_ne!(l, leaf(&[0; 16], 110, &t[5]));
        assert_eq!(format!("{kept:?}"), "TextPack(40 slots, 38 held)");
    }

    #[test]
    fn a_members_pack_is_bounded() {
        let keys = ChannelKeys::generate().unwrap();
        let key = keys.sealing_key(0).unwrap();
        // Inflating past the limit, an unknown kind, trailing bytes: refused.
        let mut bomb = vec![DEFLATE];
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![0u8; crate::content::MAX_PACK_PLAIN_BYTES + 10]).unwrap();
        bomb.extend(enc.finish().unwrap());
        assert!(TextPack::decode_plain(&bomb).is_err());
        assert!(TextPack::decode_plain(&[7, 1, 2]).is_err());
        let mut p = vec![PLAIN];
        p.extend(postcard::to_stdvec(&TextPack::new([(3, "a")]).unwrap().wire()).unwrap());
        assert!(TextPack::decode_plain(&p).is_ok());
        p.push(0);
        assert!(TextPack::decode_plain(&p).is_err());
        // As many op counters as slots.
        let mut w = TextPack::new([(3, "a")]).unwrap().wire();
        w.steps.push(1);
        let mut p = vec![PLAIN];
        p.extend(postcard::to_stdvec(&w).unwrap());
        assert!(TextPack::decode_plain(&p).is_err());
        // A text past the longest.
        let long = TextPack {
            seed: None,
            ops: vec![1],
            slots: vec![Slot::Text {
                key: Some([1; 16]),
                text: "x".repeat(MAX_TEXT_BYTES + 1),
            }],
        };
        let sealed = long.seal(key, b"h", flate2::Compression::default()).unwrap();
        let root = long.root().unwrap();
        assert!(TextPack::open(&keys, 0, b"h", &sealed, &root).is_err());
        // A text with no key and no seed gives no root.
        let keyless = TextPack {
            seed: None,
            ops: vec![1],
            slots: vec![Slot::Text {
                key: None,
                text: "x".into(),
            }],
        };
        assert_eq!(keyless.root(), None);
    }
}
