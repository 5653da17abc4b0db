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
//! change:  a post's "t" (an edit's "e:…") is Null (an edit over a Null:
//!          true); the text's slot in its entry's pack is the op's place
//!          among the change's text ops, and its id in the document
//!          ContentId::of_op(actor, counter) of that put
//! depth  = the bits a slot number of the pack takes (0 for one slot)
//! node   = a 16-byte key for the slots under one prefix of their numbers;
//!          child(node, bit) = blake3("hearth v5 text key" | node | bit)[..16]
//! key_i  = the node over slot i, derived down the rest of i's bits
//! leaf_i = blake3("hearth v5 text leaf" | key_i | op_i u64 LE | text_i)
//! root   = blake3("hearth v5 texts root" | n u32 LE | leaf_0 | … | leaf_n-1)
//! body   = sealed postcard(epoch, change, Some(root))     (signed by its hash)
//! pack   = gone u16 LE | XChaCha20-Poly1305(generation key, random nonce,
//!            aad = "hearth v5 texts" | entry header bytes | gone u16 LE,
//!            kind u8 (0 plain, 1 deflate) | postcard([(level, prefix, node)],
//!            [op_i - op_i-1], [Text(length) | Gone(leaf)], texts one after
//!            the other))
//! ```
//!
//! `gone`, in the clear and bound by the seal, counts the slots dropped: a
//! relay, which cannot open a pack, takes an author's drop only when it
//! grows, and by no more bytes than the slots it drops can take (a drop can
//! lengthen a pack: a short text's place takes its leaf and a few nodes),
//! so drops going back and forth can neither grow its files without end
//! nor bend its counts ([`crate::peer::TextDrop::apply`]).
//!
//! `op_i` is the counter of the op that puts slot `i` (the change's author
//! is the entry's device): with it a store knows each text's id from the
//! pack alone, without decoding the change (loading an epoch opens every
//! pack of it), and the root binds it. A receiver checks it against the
//! change once, when it takes the entry.
//!
//! A fresh pack holds one node (the root of the key tree, random) and the
//! texts alone: a text costs its own bytes, deflated with the others.
//! Dropping texts (a delete, an expiry) seals the pack again with each
//! dropped one's leaf in its place and the key tree punctured there: the
//! nodes that cover every other slot and none of the dropped (at most one
//! a level for each dropped slot), so nobody holding the new pack can
//! confirm a guess at a dropped text, and the root still checks. A pack
//! whose leaves do not give its entry's root is refused whole, so neither a
//! forwarder nor the author can hand two receivers two texts for one slot.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::random_bytes;
use crate::op::MAX_TEXT_BYTES;
use crate::seal::{open, seal_with_nonce};

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

/// A node of the key tree (a text's key is one at the bottom).
type Node = [u8; 16];
/// What the root commits to for one slot.
pub type Leaf = [u8; 32];

/// One slot of a pack.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Slot {
    /// A text.
    Text(String),
    /// A dropped text's leaf.
    Gone(Leaf),
}

/// A node of the key tree that a pack holds: it covers the slots whose
/// number's top `level` bits (of the tree's depth) are `prefix`.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    level: u8,
    prefix: u32,
    node: Node,
}

/// The texts of a format 5 entry, by slot (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct TextPack {
    /// The key tree's nodes it holds, by the first slot each covers.
    nodes: Vec<Held>,
    /// The counter of the op that puts each slot.
    ops: Vec<u64>,
    slots: Vec<Slot>,
}

/// A pack as encoded: op counters as steps from the one before (they grow
/// by a few an op: a byte each, which deflate shortens further), each
/// slot's text length or leaf, and the texts one after the other (deflate
/// codes them better together than between length prefixes).
#[derive(Serialize, Deserialize)]
struct PackWire {
    nodes: Vec<Held>,
    steps: Vec<u64>,
    slots: Vec<SlotWire>,
    texts: String,
}

/// A slot as encoded: its text's length in [`PackWire::texts`], or a leaf.
#[derive(Serialize, Deserialize)]
enum SlotWire {
    Text(u32),
    Gone(Leaf),
}

impl std::fmt::Debug for TextPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Texts and keys are content: never in Debug output.
        write!(f, "TextPack({} slots, {} held)", self.slots.len(), self.held())
    }
}

/// The bits a slot number of a pack of `n` slots takes.
fn depth(n: usize) -> u8 {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as u8
    }
}

// Both hashes take their input in one piece where it fits one blake3 chunk:
// `blake3::hash` of a short input costs about half what a `Hasher` does
// (which sets up a whole tree's state), and a pack's root check makes two
// or three of them a slot. The bytes hashed are the same either way.

fn child(node: &Node, bit: u32) -> Node {
    const LEN: usize = KEY_DOMAIN.len() + 17;
    let mut input = [0u8; LEN];
    input[..KEY_DOMAIN.len()].copy_from_slice(KEY_DOMAIN);
    input[KEY_DOMAIN.len()..LEN - 1].copy_from_slice(node);
    input[LEN - 1] = bit as u8;
    let mut k = [0u8; 16];
    k.copy_from_slice(&blake3::hash(&input).as_bytes()[..16]);
    k
}

/// Leaves whose input fits this many bytes are hashed in one piece.
const ONE_PIECE: usize = 1024;

fn leaf(key: &Node, op: u64, text: &str) -> Leaf {
    const HEAD: usize = LEAF_DOMAIN.len() + 16 + 8;
    if HEAD + text.len() <= ONE_PIECE {
        let mut input = [0u8; ONE_PIECE];
        input[..LEAF_DOMAIN.len()].copy_from_slice(LEAF_DOMAIN);
        input[LEAF_DOMAIN.len()..LEAF_DOMAIN.len() + 16].copy_from_slice(key);
        input[LEAF_DOMAIN.len() + 16..HEAD].copy_from_slice(&op.to_le_bytes());
        input[HEAD..HEAD + text.len()].copy_from_slice(text.as_bytes());
        return *blake3::hash(&input[..HEAD + text.len()]).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.update(LEAF_DOMAIN);
    h.update(key);
    h.update(&op.to_le_bytes());
    h.update(text.as_bytes());
    *h.finalize().as_bytes()
}

fn aad(header: &[u8], gone: u16) -> Vec<u8> {
    let mut a = PACK_DOMAIN.to_vec();
    a.extend_from_slice(header);
    a.extend_from_slice(&gone.to_le_bytes());
    a
}

/// The most bytes one dropped slot may add to a sealed pack: its leaf and a
/// node for each level of the deepest tree (a short text's place: 33 and
/// 12 times up to 19 bytes), which deflate may code longer than they are
/// (random bytes in a block tuned to text), with room to spare.
pub const MAX_GROWTH_PER_DROP: usize = 512;

/// How many slots a sealed format 5 pack says are dropped (read without
/// keys; the seal binds it), or `None` for bytes too short to be one.
pub fn gone_of(pack: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(pack.get(..2)?.try_into().ok()?))
}

/// A pack's texts deflated one by one as they are staged, before the pack
/// exists: sealing the pack then deflates only what precedes its texts.
///
/// A pack encodes its texts last, one after the other
/// ([`TextPack`]'s wire: key nodes, op steps, slots, texts). Deflating
/// 20 KiB of texts costs 250 to 300 µs on this machine's VM, which a
/// writer waited for when its write filled an entry. Fed here as each is
/// staged (in the writer's fsync), the texts are one raw deflate stream of
/// their own; at sealing, the bytes before them are deflated with a sync
/// flush (which ends on a byte boundary without ending the stream) and the
/// texts' stream, finished, follows. The result is one valid deflate
/// stream of the whole encoding (the texts' back-references stay within
/// the texts), read like any other; nothing in the format changes.
/// Whether it is used is checked, not assumed: the texts fed must be
/// exactly the pack's, in order (a text dropped or taken out before
/// sealing makes them differ, and the pack is deflated whole).
pub struct TextsDeflate {
    level: flate2::Compression,
    texts: flate2::write::DeflateEncoder<Vec<u8>>,
    fed: String,
    head: flate2::Compress,
}

impl std::fmt::Debug for TextsDeflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The texts are a channel's plaintext: their size only.
        f.debug_struct("TextsDeflate")
            .field("fed_bytes", &self.fed.len())
            .finish()
    }
}

impl Default for TextsDeflate {
    /// An empty one at the level a new entry's pack is sealed at
    /// ([`crate::Envelope::seal_v6_with`]).
    fn default() -> Self {
        TextsDeflate::new(flate2::Compression::default())
    }
}

impl TextsDeflate {
    /// An empty one, deflating at `level` (a pack sealed at another level
    /// is deflated whole).
    pub fn new(level: flate2::Compression) -> Self {
        TextsDeflate {
            level,
            texts: flate2::write::DeflateEncoder::new(Vec::new(), level),
            fed: String::new(),
            head: flate2::Compress::new(level, false),
        }
    }

    /// Deflate `text`, the next text of the pack.
    pub fn push(&mut self, text: &str) {
        std::io::Write::write_all(&mut self.texts, text.as_bytes()).expect("deflate into memory");
        self.fed.push_str(text);
    }

    /// The bytes of text fed since it was made or cleared.
    pub fn fed_bytes(&self) -> usize {
        self.fed.len()
    }

    /// Empty again, for the next pack (its deflate state kept: setting one
    /// up costs more than resetting it).
    pub fn clear(&mut self) {
        if !self.fed.is_empty() {
            // Finishing into memory does not fail.
            let _ = self.texts.reset(Vec::new());
            self.fed.clear();
        }
        if self.head.total_in() > 0 {
            self.head.reset();
        }
    }

    /// The deflate stream of `encoded` (a pack's encoding, ending with
    /// `texts`), if the texts fed are `texts` at `level`; cleared either
    /// way.
    fn finish_for(&mut self, encoded: &[u8], texts: &str, level: flate2::Compression) -> Option<Vec<u8>> {
        let usable =
            level == self.level && !texts.is_empty() && self.fed == texts && encoded.ends_with(texts.as_bytes());
        if !usable {
            self.clear();
            return None;
        }
        let head = &encoded[..encoded.len() - texts.len()];
        let mut out = Vec::with_capacity(head.len() / 2 + self.fed.len() + 64);
        loop {
            let before = self.head.total_in() as usize;
            let status = self
                .head
                .compress_vec(&head[before..], &mut out, flate2::FlushCompress::Sync);
            if status.is_err() {
                self.clear();
                return None;
            }
            if self.head.total_in() as usize == head.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        let texts = self.texts.reset(Vec::new()).ok()?;
        out.extend_from_slice(&texts);
        self.fed.clear();
        self.head.reset();
        Some(out)
    }
}

impl Held {
    /// The slots it covers, in a tree of `depth` levels: [first, end).
    fn range(&self, depth: u8) -> (u64, u64) {
        let shift = u32::from(depth - self.level);
        (u64::from(self.prefix) << shift, (u64::from(self.prefix) + 1) << shift)
    }
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
        let mut texts = String::new();
        let slots = self
            .slots
            .iter()
            .map(|s| match s {
                Slot::Text(t) => {
                    texts.push_str(t);
                    SlotWire::Text(t.len() as u32)
                }
                Slot::Gone(l) => SlotWire::Gone(*l),
            })
            .collect();
        PackWire {
            nodes: self.nodes.clone(),
            steps,
            slots,
            texts,
        }
    }

    /// A pack from its encoding: as many steps as slots, and nodes inside
    /// the tree, in order and apart.
    fn from_wire(w: PackWire) -> std::result::Result<Self, &'static str> {
        if w.steps.len() != w.slots.len() {
            return Err("op counters and slots disagree");
        }
        if w.slots.len() > crate::content::MAX_PACK_TEXTS || w.nodes.len() > crate::content::MAX_PACK_TEXTS {
            return Err("too many texts");
        }
        let d = depth(w.slots.len());
        let mut end = 0u64;
        for n in &w.nodes {
            if n.level > d || u64::from(n.prefix) >> n.level != 0 {
                return Err("a key node outside its tree");
            }
            let (first, last) = n.range(d);
            if first < end {
                return Err("key nodes out of order or overlapping");
            }
            end = last;
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
        let mut at = 0usize;
        let mut slots = Vec::with_capacity(w.slots.len());
        for s in w.slots {
            slots.push(match s {
                SlotWire::Text(len) => {
                    let end = at.saturating_add(len as usize);
                    let text = w
                        .texts
                        .get(at..end)
                        .ok_or("a text length past the texts, or inside a character")?;
                    at = end;
                    Slot::Text(text.to_string())
                }
                SlotWire::Gone(l) => Slot::Gone(l),
            });
        }
        if at != w.texts.len() {
            return Err("bytes after the last text");
        }
        Ok(TextPack {
            nodes: w.nodes,
            ops,
            slots,
        })
    }

    /// A fresh pack of `texts` (slot `i` is `texts[i]`: the counter of the
    /// op that puts it, and the text), with a random key tree. A text
    /// `None` (dropped before its entry was sealed) leaves a random leaf: it
    /// was never written, and nothing can be checked against it.
    pub fn new<'a>(texts: impl IntoIterator<Item = (u64, Option<&'a str>)>) -> Result<Self> {
        let mut node = [0u8; 16];
        random_bytes(&mut node)?;
        let mut ops = Vec::new();
        let mut slots = Vec::new();
        for (op, t) in texts {
            ops.push(op);
            slots.push(match t {
                Some(t) => Slot::Text(t.to_string()),
                None => {
                    let mut l = [0u8; 32];
                    random_bytes(&mut l)?;
                    Slot::Gone(l)
                }
            });
        }
        if slots.len() > crate::content::MAX_PACK_TEXTS {
            return Err(Error::invalid("text pack", "too many texts"));
        }
        let fresh = TextPack {
            nodes: vec![Held {
                level: 0,
                prefix: 0,
                node,
            }],
            ops,
            slots,
        };
        // Slots dropped before sealing are punctured out at once.
        Ok(if fresh.held() < fresh.len() {
            fresh.retain(|_| true)
        } else {
            fresh
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
        self.slots.iter().filter(|s| matches!(s, Slot::Text(_))).count()
    }

    /// The op counter and text of each slot (`None`: dropped).
    pub fn texts(&self) -> Vec<(u64, Option<&str>)> {
        self.ops
            .iter()
            .zip(&self.slots)
            .map(|(op, s)| match s {
                Slot::Text(text) => (*op, Some(text.as_str())),
                Slot::Gone(_) => (*op, None),
            })
            .collect()
    }

    /// The key of slot `i`, from the node that covers it (`None`: none
    /// does).
    #[cfg(test)]
    fn key(&self, i: usize) -> Option<Node> {
        let d = depth(self.slots.len());
        let i = i as u64;
        let at = self.nodes.partition_point(|n| n.range(d).1 <= i);
        let n = self.nodes.get(at)?;
        let (first, end) = n.range(d);
        if i < first || i >= end {
            return None;
        }
        let mut node = n.node;
        for level in n.level..d {
            node = child(&node, ((i >> (d - level - 1)) & 1) as u32);
        }
        Some(node)
    }

    /// Every slot's key the nodes held give, each node of the tree
    /// derived once (about two hashes a slot, where one slot at a time
    /// takes one a level).
    fn keys(&self) -> Vec<Option<Node>> {
        let n = self.slots.len() as u64;
        let d = depth(self.slots.len());
        let mut keys = vec![None; self.slots.len()];
        for held in &self.nodes {
            let mut stack = vec![(held.level, held.prefix, held.node)];
            while let Some((level, prefix, node)) = stack.pop() {
                let first = u64::from(prefix) << (d - level);
                if first >= n {
                    continue;
                }
                if level == d {
                    keys[first as usize] = Some(node);
                    continue;
                }
                stack.push((level + 1, (prefix << 1) | 1, child(&node, 1)));
                stack.push((level + 1, prefix << 1, child(&node, 0)));
            }
        }
        keys
    }

    /// The root its slots give (what its entry's body carries); `None`
    /// when a text's key is not held.
    pub fn root(&self) -> Option<[u8; 32]> {
        let keys = self.keys();
        let mut h = blake3::Hasher::new();
        h.update(ROOT_DOMAIN);
        h.update(&(self.slots.len() as u32).to_le_bytes());
        for ((s, op), key) in self.slots.iter().zip(&self.ops).zip(&keys) {
            let l = match s {
                Slot::Text(text) => leaf(key.as_ref()?, *op, text),
                Slot::Gone(l) => *l,
            };
            h.update(&l);
        }
        Some(*h.finalize().as_bytes())
    }

    /// Whether a key node it holds covers a dropped slot: the key of a
    /// text its sealer dropped can still be derived, and a guess at that
    /// text checked against its leaf. [`TextPack::retain`] never leaves one;
    /// a member or an author that seals by other means may
    /// ([`crate::Envelope::puncture_dropped`] mends it).
    pub fn covers_dropped(&self) -> bool {
        let d = depth(self.slots.len());
        self.nodes.iter().any(|n| {
            let (first, end) = n.range(d);
            (first..end.min(self.slots.len() as u64)).any(|i| matches!(self.slots[i as usize], Slot::Gone(_)))
        })
    }

    /// This pack with `slot` dropped and its key tree left whole: what a
    /// careless sealer makes ([`TextPack::covers_dropped`]).
    #[cfg(test)]
    pub(crate) fn dropped_unpunctured(&self, slot: usize) -> TextPack {
        let keys = self.keys();
        let mut out = self.clone();
        if let Slot::Text(text) = &self.slots[slot] {
            out.slots[slot] = Slot::Gone(leaf(&keys[slot].expect("held"), self.ops[slot], text));
        }
        out
    }

    /// The same pack with only the texts `keep` says yes to (asked with
    /// each slot's op counter) still held: each dropped one's leaf takes its
    /// place and the key tree is punctured there (the root is unchanged).
    pub fn retain(&self, keep: impl Fn(u64) -> bool) -> TextPack {
        let d = depth(self.slots.len());
        let keys = self.keys();
        let slots: Vec<Slot> = self
            .slots
            .iter()
            .zip(&self.ops)
            .zip(&keys)
            .map(|((s, op), key)| match s {
                Slot::Text(text) if keep(*op) => Slot::Text(text.clone()),
                Slot::Text(text) => Slot::Gone(leaf(&key.unwrap_or([0; 16]), *op, text)),
                Slot::Gone(l) => Slot::Gone(*l),
            })
            .collect();
        let gone = |first: u64, end: u64| {
            (first..end.min(slots.len() as u64)).any(|i| matches!(slots[i as usize], Slot::Gone(_)))
        };
        // Every held node over no dropped slot stays; one over some is split
        // down to the nodes that are not.
        let mut nodes = Vec::new();
        let mut stack: Vec<Held> = self.nodes.iter().rev().copied().collect();
        while let Some(n) = stack.pop() {
            let (first, end) = n.range(d);
            if first >= slots.len() as u64 || !gone(first, end) {
                if first < slots.len() as u64 {
                    nodes.push(n);
                }
                continue;
            }
            if n.level == d {
                continue;
            }
            for bit in [1u32, 0] {
                stack.push(Held {
                    level: n.level + 1,
                    prefix: (n.prefix << 1) | bit,
                    node: child(&n.node, bit),
                });
            }
        }
        TextPack {
            nodes,
            ops: self.ops.clone(),
            slots,
        }
    }

    /// Seal it for the format 5 entry whose header encodes to `header`,
    /// deflated at `level` when that is shorter.
    pub fn seal(&self, key: &crate::SecretKey, header: &[u8], level: flate2::Compression) -> Result<Vec<u8>> {
        let mut nonce = [0u8; 24];
        random_bytes(&mut nonce)?;
        self.seal_at(key, header, level, nonce)
    }

    /// [`TextPack::seal`] under `nonce` (a fresh pack of a new entry: the
    /// entry's [`crate::seal::counted_nonce`] of kind pack). A pack sealed
    /// again after drops takes a random nonce ([`TextPack::seal`]): two
    /// members may drop different texts of one pack.
    pub fn seal_at(
        &self,
        key: &crate::SecretKey,
        header: &[u8],
        level: flate2::Compression,
        nonce: [u8; 24],
    ) -> Result<Vec<u8>> {
        self.seal_at_with(key, header, level, nonce, None)
    }

    /// [`TextPack::seal_at`], its texts deflated early when `early` holds
    /// them ([`TextPack::encode_plain_with`]).
    pub fn seal_at_with(
        &self,
        key: &crate::SecretKey,
        header: &[u8],
        level: flate2::Compression,
        nonce: [u8; 24],
        early: Option<&mut TextsDeflate>,
    ) -> Result<Vec<u8>> {
        let gone = (self.len() - self.held()) as u16;
        let mut out = gone.to_le_bytes().to_vec();
        out.extend(seal_with_nonce(
            key,
            &aad(header, gone),
            &self.encode_plain_with(level, early),
            nonce,
        )?);
        Ok(out)
    }

    /// Its plaintext as sealed (`kind u8 | data`: deflated at `level` when
    /// that is shorter).
    pub fn encode_plain(&self, level: flate2::Compression) -> Vec<u8> {
        self.encode_plain_with(level, None)
    }

    /// [`TextPack::encode_plain`], its texts taken already deflated from
    /// `early` when it was fed exactly this pack's texts at `level`
    /// ([`TextsDeflate`]); otherwise (and `early` is then cleared) as
    /// `encode_plain`.
    pub fn encode_plain_with(&self, level: flate2::Compression, early: Option<&mut TextsDeflate>) -> Vec<u8> {
        let wire = self.wire();
        let encoded = postcard::to_stdvec(&wire).expect("a text pack encodes");
        let early = early.and_then(|e| e.finish_for(&encoded, &wire.texts, level));
        let deflated = if encoded.len() < MIN_DEFLATE_BYTES {
            None
        } else if early.is_some() {
            early
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
        plain
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
        let gone = gone_of(sealed).ok_or_else(|| Error::corrupted("text pack", "too short"))?;
        let aad = aad(header, gone);
        let mut last = None;
        for key in keys.opening_keys(generation) {
            match open(key, &aad, &sealed[2..], "text pack") {
                Ok(plain) => {
                    let pack = Self::decode_plain(&plain)?;
                    if pack.root().as_ref() != Some(root) {
                        return Err(Error::corrupted("text pack", "does not match its entry's root"));
                    }
                    if usize::from(gone) != pack.len() - pack.held() {
                        return Err(Error::corrupted("text pack", "miscounts its dropped slots"));
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

    /// [`TextPack::open`] without the check against the root: for a pack
    /// a store checked when it took its entry, loaded again (an epoch's
    /// load opens every pack of it, and the root needs the body opened and
    /// every key and leaf hashed).
    pub fn open_held(keys: &crate::ChannelKeys, generation: u32, header: &[u8], sealed: &[u8]) -> Result<TextPack> {
        let gone = gone_of(sealed).ok_or_else(|| Error::corrupted("text pack", "too short"))?;
        let aad = aad(header, gone);
        let mut last = None;
        for key in keys.opening_keys(generation) {
            match open(key, &aad, &sealed[2..], "text pack") {
                Ok(plain) => return Self::decode_plain(&plain),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::corrupted("text pack", "no key of its generation")))
    }

    /// A pack from its plaintext (`kind u8 | data`, once opened): a kind
    /// this build does not know, data that does not inflate or inflates
    /// past [`crate::content::MAX_PACK_PLAIN_BYTES`], bytes after it, more
    /// than [`crate::content::MAX_PACK_TEXTS`] slots or key nodes, nodes
    /// outside the tree or overlapping, or a text past the longest are
    /// refused. Any member can seal a pack, so the plaintext is untrusted:
    /// fuzzed (`text_pack_v5`).
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
        let pack = TextPack::from_wire(wire).map_err(bad)?;
        for s in &pack.slots {
            if let Slot::Text(text) = s
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

    fn pack_of(t: &[String]) -> TextPack {
        TextPack::new(
            t.iter()
                .enumerate()
                .map(|(i, t)| (100 + 2 * i as u64, Some(t.as_str()))),
        )
        .unwrap()
    }

    /// Texts deflated as they came: the pack decodes to the same texts, at
    /// about the size of the pack deflated whole; fed other texts (one
    /// missing, one changed, another level), the pack is deflated whole;
    /// and the same state serves the next pack.
    #[test]
    fn texts_deflated_early_make_the_same_pack() {
        let keys = ChannelKeys::generate().unwrap();
        let key = keys.sealing_key(0).unwrap();
        let level = flate2::Compression::default();
        let mut early = TextsDeflate::new(level);
        for round in 0..3 {
            let t: Vec<String> = (0..200)
                .map(|i| format!("{round} message {i}: {}", "the quick brown fox ".repeat(i % 7)))
                .collect();
            let pack = pack_of(&t);
            let root = pack.root().unwrap();
            for text in &t {
                early.push(text);
            }
            assert_eq!(early.fed_bytes(), t.iter().map(String::len).sum::<usize>());
            let plain = pack.encode_plain_with(level, Some(&mut early));
            assert_eq!(early.fed_bytes(), 0, "taken");
            assert_eq!(plain[0], DEFLATE);
            assert_eq!(TextPack::decode_plain(&plain).unwrap(), pack);
            let whole = pack.encode_plain(level);
            assert_ne!(plain, whole, "a stream of its own");
            assert!(
                plain.len() <= whole.len() + whole.len() / 20,
                "{} against {}",
                plain.len(),
                whole.len()
            );
            let sealed = pack
                .seal_at_with(key, b"header", level, [round; 24], Some(&mut early))
                .unwrap();
            let (back, _) = TextPack::open(&keys, 0, b"header", &sealed, &root).unwrap();
            assert_eq!(back, pack);

            // Fed something else: the pack deflated whole, and the state
            // cleared for the next.
            for text in &t[1..] {
                early.push(text);
            }
            assert_eq!(pack.encode_plain_with(level, Some(&mut early)), whole);
            assert_eq!(early.fed_bytes(), 0);
            for (i, text) in t.iter().enumerate() {
                early.push(if i == 7 { "changed" } else { text });
            }
            assert_eq!(pack.encode_plain_with(level, Some(&mut early)), whole);
            for text in &t {
                early.push(text);
            }
            let fast = flate2::Compression::fast();
            assert_eq!(pack.encode_plain_with(fast, Some(&mut early)), pack.encode_plain(fast));
        }
        // A pack too small to deflate: plain, early or not.
        let one = pack_of(&["hi".to_string()]);
        early.push("hi");
        assert_eq!(one.encode_plain_with(level, Some(&mut early)), one.encode_plain(level));
        assert_eq!(format!("{early:?}"), "TextsDeflate { fed_bytes: 0 }");
    }

    #[test]
    fn a_pack_opens_against_its_root_only_and_drops_keep_the_root() {
        let keys = ChannelKeys::generate().unwrap();
        let key = keys.sealing_key(0).unwrap();
        let t = texts(40);
        let pack = pack_of(&t);
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
        // The count of dropped slots is bound by the seal.
        assert_eq!(gone_of(&sealed), Some(0));
        let mut recounted = sealed.clone();
        recounted[0] = 1;
        assert!(TextPack::open(&keys, 0, b"header", &recounted, &root).is_err());
        // Another text in a slot, or the text of another op (the author's
        // or a member's): refused.
        let mut swapped = pack.clone();
        swapped.slots[5] = Slot::Text("something else".into());
        let s = swapped.seal(key, b"header", flate2::Compression::default()).unwrap();
        assert!(TextPack::open(&keys, 0, b"header", &s, &root).is_err());
        let mut moved = pack.clone();
        moved.ops.swap(5, 6);
        let s = moved.seal(key, b"header", flate2::Compression::default()).unwrap();
        assert!(TextPack::open(&keys, 0, b"header", &s, &root).is_err());

        // Two texts dropped: the root still checks, the tree's top node is
        // gone, and the dropped texts are nowhere in the plaintext.
        let kept = pack.retain(|op| op != 110 && op != 114);
        assert_eq!(kept.root(), Some(root));
        assert_eq!((kept.len(), kept.held()), (40, 38));
        assert!(kept.nodes.iter().all(|n| n.level > 0));
        assert_eq!(kept.texts()[5], (110, None));
        let plain = kept.encode_plain(flate2::Compression::none());
        assert!(!plain.windows(t[5].len()).any(|w| w == t[5].as_bytes()));
        let s = kept.seal(key, b"header", flate2::Compression::default()).unwrap();
        assert_eq!(gone_of(&s), Some(2));
        assert!(s.len() <= sealed.len() + 2 * MAX_GROWTH_PER_DROP);
        let (back, _) = TextPack::open(&keys, 0, b"header", &s, &root).unwrap();
        assert_eq!(back.texts()[6], (112, Some(t[6].as_str())));
        // The dropped slots' keys are derivable from no node held, the
        // others' are.
        assert!(back.key(5).is_none() && back.key(7).is_none());
        assert_eq!(back.key(6), pack.key(6));
        // Puncturing costs a node a level for a dropped slot, not a key a
        // text: the pack grows by less than the leaves and nodes of two.
        assert!(
            back.nodes.len() <= 2 * usize::from(depth(40)),
            "{} nodes",
            back.nodes.len()
        );
        // Dropped again later, down to none: still the same root.
        assert_eq!(back.retain(|op| op != 100).root(), Some(root));
        let none = back.retain(|_| false);
        assert_eq!((none.held(), none.root()), (0, Some(root)));
        assert!(none.nodes.is_empty());
        assert_eq!(format!("{kept:?}"), "TextPack(40 slots, 38 held)");
    }

    #[test]
    fn every_drop_keeps_every_other_key() {
        // Packs of 1 to 70 slots, each slot dropped alone and in pairs.
        for n in 1..70 {
            let t = texts(n);
            let pack = pack_of(&t);
            let root = pack.root().unwrap();
            for a in 0..n {
                let b = (a * 7 + 3) % n;
                let kept = pack.retain(|op| op != 100 + 2 * a as u64 && op != 100 + 2 * b as u64);
                assert_eq!(kept.root(), Some(root), "n {n}, dropped {a} and {b}");
                for i in 0..n {
                    assert_eq!(kept.key(i).is_some(), i != a && i != b, "n {n}, slot {i}");
                }
            }
        }
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
        let one = TextPack::new([(3, Some("a"))]).unwrap();
        let p = one.encode_plain(flate2::Compression::default());
        assert_eq!(TextPack::decode_plain(&p).unwrap(), one);
        let mut trailing = p.clone();
        trailing.push(0);
        assert!(TextPack::decode_plain(&trailing).is_err());
        let encode = |w: &PackWire| {
            let mut p = vec![PLAIN];
            p.extend(postcard::to_stdvec(w).unwrap());
            p
        };
        // As many op counters as slots; texts as long as their lengths say,
        // cut at characters.
        let mut w = one.wire();
        w.steps.push(1);
        assert!(TextPack::decode_plain(&encode(&w)).is_err());
        let mut w = one.wire();
        w.texts.push('x');
        assert!(TextPack::decode_plain(&encode(&w)).is_err());
        let mut w = one.wire();
        w.slots[0] = SlotWire::Text(2);
        assert!(TextPack::decode_plain(&encode(&w)).is_err());
        let accented = TextPack::new([(3, Some("é"))]).unwrap();
        let mut w = accented.wire();
        w.slots = vec![SlotWire::Text(1), SlotWire::Text(1)];
        w.steps.push(1);
        assert!(TextPack::decode_plain(&encode(&w)).is_err());
        // Key nodes inside the tree, in order, apart.
        let two = pack_of(&texts(2)).retain(|_| true);
        let mut w = two.wire();
        w.nodes[0].level = 5;
        assert!(TextPack::decode_plain(&encode(&w)).is_err());
        let mut w = pack_of(&texts(4)).retain(|op| op != 100).wire();
        assert!(w.nodes.len() >= 2);
        w.nodes.swap(0, 1);
        assert!(TextPack::decode_plain(&encode(&w)).is_err());
        let mut w = two.wire();
        w.nodes.push(w.nodes[0]);
        assert!(TextPack::decode_plain(&encode(&w)).is_err());
        // A slot dropped before sealing: a leaf, no text, no key, the root
        // stands.
        let early = TextPack::new([(3, Some("a")), (5, None)]).unwrap();
        assert_eq!((early.len(), early.held()), (2, 1));
        assert!(early.root().is_some() && early.key(1).is_none());
        // A text past the longest.
        let long = TextPack::new([(1, Some("x".repeat(MAX_TEXT_BYTES + 1).as_str()))]).unwrap();
        let sealed = long.seal(key, b"h", flate2::Compression::default()).unwrap();
        let root = long.root().unwrap();
        assert!(TextPack::open(&keys, 0, b"h", &sealed, &root).is_err());
        // A text whose key no node gives: no root.
        let keyless = TextPack {
            nodes: Vec::new(),
            ops: vec![1],
            slots: vec![Slot::Text("x".into())],
        };
        assert_eq!(keyless.root(), None);
    }
}
