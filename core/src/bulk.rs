//! Posts made into an epoch document's change without the document: the
//! bulk path (`Store::import_posts`).
//!
//! Staging a post in automerge (`EpochDoc::stage`) costs about 15 µs: every
//! op is spliced into the document's op set. A change that only makes
//! posts under keys nobody has used has no op with a predecessor, so it is
//! known whole from the posts and from where its writer's chain of changes
//! stands in the document ([`ChangeTail`]): its ops are written straight
//! into automerge's change encoding, about 1 µs a post. The bytes are those
//! [`EpochDoc::stage`](crate::EpochDoc::stage) and
//! [`EpochDoc::commit`](crate::EpochDoc::commit) make for the same posts
//! (`tests` below check it), so everything downstream (sealing, the
//! envelope, a later load of the epoch) cannot tell them apart.

use automerge::legacy::{Key, ObjectId, Op as LegacyOp, OpId, OpType, SortedVec};
use automerge::{ActorId, Change, ChangeHash, ExpandedChange, ObjType, ScalarValue};

use crate::content::{Content, ContentId};
use crate::doc::ChangeEffects;
use crate::error::{Error, Result};
use crate::id::{DeviceId, MessageId};

/// Where one writer's chain of changes stands in an epoch document that
/// holds nothing but that chain: the next change's seq and first op
/// counter, and the document's heads (its last change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeTail {
    /// The next change's sequence number (1 for a new document).
    pub seq: u64,
    /// The next change's first op counter (1 for a new document).
    pub start_op: u64,
    /// The next change's dependencies (none for a new document).
    pub deps: Vec<ChangeHash>,
}

impl ChangeTail {
    /// A document nobody has written to yet.
    pub fn new_document() -> Self {
        ChangeTail {
            seq: 1,
            start_op: 1,
            deps: Vec::new(),
        }
    }
}

/// Check a post's text as [`Op::validate`](crate::Op::validate) does:
/// not empty, at most [`MAX_TEXT_BYTES`](crate::MAX_TEXT_BYTES).
pub fn check_text(text: &str) -> Result<()> {
    crate::op::check_text(text)
}

/// One post of a bulk change: its id (minted for the writer, in the
/// epoch), the root of the thread it replies to, and its text.
#[derive(Clone, Debug)]
pub struct NewPost {
    /// The post's id.
    pub id: MessageId,
    /// The thread's root, for a reply (in the same epoch).
    pub root: Option<MessageId>,
    /// The text.
    pub text: String,
}

/// A change that makes posts, as a document would have committed it.
pub struct PostsChange {
    /// The change as [`EpochDoc::commit`](crate::EpochDoc::commit) returns
    /// it: what a feed entry's body carries.
    pub bytes: Vec<u8>,
    /// The change, as an ingest decodes it from `bytes`.
    pub change: Change,
    /// The posts' texts, each in its slot (the entry's text pack).
    pub texts: Vec<Content>,
    /// What the change does, as `decode_change_effects` reads it.
    pub effects: ChangeEffects,
    /// Where the chain stands after it.
    pub next: ChangeTail,
}

/// The change `device` makes when it posts `posts` (in this order) into a
/// document where its chain stands at `tail`, with format 5 text slots and
/// a change time of 0, as the store's documents commit them. Each post is
/// checked as [`Op::validate`](crate::Op::validate) checks a post.
///
/// The caller vouches for what a document would check: that no post id is
/// in the document already, and that the document holds nothing but
/// `device`'s chain up to `tail` (otherwise the dependencies are wrong).
pub fn posts_change(device: &DeviceId, tail: &ChangeTail, posts: &[NewPost]) -> Result<PostsChange> {
    if posts.is_empty() {
        return Err(Error::invalid("bulk change", "no posts"));
    }
    let actor = ActorId::from(&device.0[..]);
    let mut ops = Vec::with_capacity(posts.len() * 3);
    let mut texts = Vec::with_capacity(posts.len());
    let mut effects = ChangeEffects::default();
    let mut counter = tail.start_op;
    for p in posts {
        crate::op::check_text(&p.text)?;
        if p.root.is_some_and(|root| root.epoch() != p.id.epoch()) {
            return Err(Error::invalid("reply", "a reply lives in its root's epoch"));
        }
        let map = counter;
        let slot = push_post_ops(&mut ops, &actor, map, p.id, p.root);
        counter = slot + 1 + u64::from(p.root.is_some());
        let content = ContentId::of_op(&device.0, slot);
        effects.posts.push(p.id);
        effects.messages.insert(p.id);
        effects.placed.push(p.id);
        effects.texts.push((p.id, content));
        effects.slots.push((effects.slots.len() as u64, p.id, content));
        texts.push(Content::in_slot(content, slot, p.id, p.text.clone()));
        if let Some(root) = p.root {
            effects.placed.push(root);
            effects.replies.push(p.id);
            effects.reply_roots.push((p.id, root));
        }
    }
    let change = change_of(ops, actor, tail, 0)?;
    // What `EpochDoc::commit` hands on: the change compressed past a size.
    let bytes = crate::chunk::compress_change(change.raw_bytes());
    let next = ChangeTail {
        seq: tail.seq + 1,
        start_op: counter,
        deps: vec![change.hash()],
    };
    Ok(PostsChange {
        bytes,
        change,
        texts,
        effects,
        next,
    })
}

/// The ops of one post, as [`EpochDoc::stage`](crate::EpochDoc::stage)
/// makes them, appended to `ops` with the message's map at op counter
/// `map`: the map under `m:<id>`, its text slot (`t`, `Null`), and for a
/// reply its root (`p`). Returns the slot's counter.
fn push_post_ops(ops: &mut Vec<LegacyOp>, actor: &ActorId, map: u64, id: MessageId, root: Option<MessageId>) -> u64 {
    ops.push(LegacyOp {
        action: OpType::Make(ObjType::Map),
        obj: ObjectId::Root,
        key: Key::Map(key_str(&post_key(&id)).into()),
        pred: SortedVec::new(),
        insert: false,
    });
    ops.push(LegacyOp {
        action: OpType::Put(ScalarValue::Null),
        obj: ObjectId::Id(OpId(map, actor.clone())),
        key: Key::Map("t".into()),
        pred: SortedVec::new(),
        insert: false,
    });
    if let Some(root) = root {
        ops.push(LegacyOp {
            action: OpType::Put(ScalarValue::Str(root.to_hex().into())),
            obj: ObjectId::Id(OpId(map, actor.clone())),
            key: Key::Map("p".into()),
            pred: SortedVec::new(),
            insert: false,
        });
    }
    map + 1
}

/// A post's key in its epoch document, `m:<id in hex>` (as
/// `EpochDoc::stage` formats it), without a `String`.
pub(crate) fn post_key(id: &MessageId) -> [u8; 2 + 2 * MessageId::LEN] {
    let mut key = [0u8; 2 + 2 * MessageId::LEN];
    key[..2].copy_from_slice(b"m:");
    crate::id::hex_into(&id.0, &mut key[2..]);
    key
}

/// A key of [`post_key`] as text.
pub(crate) fn key_str(key: &[u8; 2 + 2 * MessageId::LEN]) -> &str {
    std::str::from_utf8(key).expect("hex is ASCII")
}

/// The change of `ops` by `actor` where its chain stands at `tail`.
fn change_of(ops: Vec<LegacyOp>, actor: ActorId, tail: &ChangeTail, time: i64) -> Result<Change> {
    let start_op = std::num::NonZeroU64::new(tail.start_op)
        .ok_or_else(|| Error::invalid("bulk change", "op counters start at 1"))?;
    let expanded = ExpandedChange {
        operations: ops,
        actor_id: actor,
        hash: None,
        seq: tail.seq,
        start_op,
        time,
        message: None,
        deps: tail.deps.clone(),
        extra_bytes: Vec::new(),
        author: None,
    };
    // automerge 0.12 panics on some inputs it cannot encode; none is built
    // here, but a panic must not take the store thread down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Change::from(expanded)))
        .map_err(|_| Error::invalid("bulk change", "automerge could not encode it"))
}

/// The change `actor` commits for posts staged (ids and thread roots, in
/// order) into a document where its chain stands at `tail`, at `time`:
/// what [`EpochDoc::commit`](crate::EpochDoc::commit) builds itself for a
/// change of posts alone, instead of collecting it back from automerge's
/// op set (which costs more than twice as much). Plain (not compressed).
pub(crate) fn staged_posts_change(
    actor: &ActorId,
    tail: &ChangeTail,
    posts: &[(MessageId, Option<MessageId>)],
    time: i64,
) -> Result<Change> {
    let mut ops = Vec::with_capacity(posts.len() * 2 + posts.iter().filter(|(_, r)| r.is_some()).count());
    let mut counter = tail.start_op;
    for (id, root) in posts {
        let slot = push_post_ops(&mut ops, actor, counter, *id, *root);
        counter = slot + 1 + u64::from(root.is_some());
    }
    change_of(ops, actor.clone(), tail, time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{EpochDoc, decode_change_effects};
    use crate::hlc::Timestamp;
    use crate::id::{ChannelId, UserId, writer_tag};
    use crate::op::Op;

    fn ids(user: &UserId, device: &DeviceId, epoch: u32, n: u64) -> Vec<MessageId> {
        let ch = ChannelId([3; 32]);
        (0..n)
            .map(|i| MessageId::new(Timestamp(1_000_000 + (i << 16)), epoch, &ch, writer_tag(user, device)))
            .collect()
    }

    /// Three changes of posts and replies, built here and staged into a
    /// document: the same bytes, texts and effects, and the tail the
    /// document's own chain has.
    #[test]
    fn a_bulk_change_is_the_change_a_document_commits_for_the_same_posts() {
        let (user, device) = (UserId([1; 32]), DeviceId([2; 16]));
        let all = ids(&user, &device, 4, 30);
        let mut doc = EpochDoc::new(4, &device);
        doc.set_slot_texts(true);
        let mut tail = ChangeTail::new_document();
        for (n, chunk) in all.chunks(10).enumerate() {
            let posts: Vec<NewPost> = chunk
                .iter()
                .enumerate()
                .map(|(i, id)| NewPost {
                    id: *id,
                    root: (i % 3 == 2).then_some(all[0]),
                    text: format!("post {n}.{i} ✓"),
                })
                .collect();
            for p in &posts {
                let op = Op::Post {
                    id: p.id,
                    text: p.text.clone(),
                    reply_to: p.root,
                };
                doc.stage(&user, &device, &op).unwrap();
            }
            let bytes = doc.commit(0).unwrap().unwrap();
            let texts = doc.take_texts();
            let built = posts_change(&device, &tail, &posts).unwrap();
            assert_eq!(built.bytes, bytes, "change {n}");
            let (decoded, effects) = decode_change_effects(&bytes, &device, &user).unwrap();
            assert_eq!(built.change.raw_bytes(), decoded.raw_bytes(), "decoded {n}");
            assert_eq!(built.texts, texts, "texts {n}");
            assert_eq!(built.effects, effects, "effects {n}");
            assert_eq!(built.next.deps, doc.heads(), "heads {n}");
            tail = built.next;
        }
    }

    #[test]
    fn a_bulk_change_checks_its_posts_as_ops_are_checked() {
        let (user, device) = (UserId([1; 32]), DeviceId([2; 16]));
        let id = ids(&user, &device, 4, 1)[0];
        let post = |text: String, root| NewPost { id, root, text };
        let tail = ChangeTail::new_document();
        let long = "x".repeat(crate::op::MAX_TEXT_BYTES + 1);
        assert!(matches!(
            posts_change(&device, &tail, &[post(long, None)]),
            Err(Error::TooLarge { .. })
        ));
        // A reply lives in its root's epoch.
        let other = ids(&user, &device, 5, 1)[0];
        assert!(posts_change(&device, &tail, &[post("a".into(), Some(other))]).is_err());
        assert!(posts_change(&device, &tail, &[]).is_err());
        let bad = ChangeTail {
            start_op: 0,
            ..ChangeTail::new_document()
        };
        assert!(posts_change(&device, &bad, &[post("a".into(), None)]).is_err());
    }
}
