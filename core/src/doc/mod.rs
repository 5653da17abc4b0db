//! The epoch document: one automerge document per (channel, epoch).
//!
//! Keys are flat at the root so that no two replicas ever create the same nested
//! object concurrently (STACK-NOTES gotcha 10): only a message's author creates
//! its map, and everything anyone else adds lives under a key that names them.
//!
//! | root key                         | value                          | written by      |
//! |----------------------------------|--------------------------------|-----------------|
//! | `m:<msg>`                        | map {`t`: text, `p`: root id}  | the author      |
//! | `e:<msg>:<user>`                 | edited text                    | the author      |
//!
//! A text is a 16-byte content id (bytes) from store format 9 on: the text
//! rides in a droppable segment of the same feed entry ([`crate::content`]),
//! and the document holds what it was handed ([`EpochDoc::add_texts`]); a
//! text whose segment is gone shows as dropped. Older documents hold the
//! text itself (a string), which is read as before.
//! | `x:<msg>:<user>`                 | `true` (tombstone)             | the author      |
//! | `r:<msg>:<user>:<emoji>`         | `true`; deleted on unreact     | the reactor     |
//! | `rd:<user>:<device>`             | id of the newest message read  | that device     |
//! | `dl:<user>:<device>:<writer>` (epoch 0) | newest message of device `writer` held | that device |
//! | `name` (epoch 0)                 | channel name, last writer wins | any member      |
//! | `n:<user>` (epoch 0)             | the user's display name        | that user       |
//!
//! Authorship is never taken from a value: it is the automerge actor (= device)
//! of the op that wrote it, mapped to a user through [`Devices`], which the store
//! fills from signed feed headers. A value under a key that names another user is
//! ignored, so a member cannot edit, delete or react for somebody else.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, ScalarValueRef, Value,
    ValueRef,
};

use crate::bulk::ChangeTail;
use crate::content::{Content, ContentId};
use crate::error::{Error, Result};
use crate::happening::Happening;
use crate::hlc::Timestamp;
use crate::id::{ChannelId, DeviceId, Epoch, MessageId, UserId, writer_tag};
use crate::member::{MemberBody, MemberOp, OpKey, Role, Roster};
use crate::op::{MAX_EMOJI_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES, Op};
use crate::rotation::KeyPackage;
use crate::view::{EpochView, Message};

mod admission;
mod view;

pub use admission::{ChangeEffects, SlotRef, decode_change, decode_change_effects, decode_change_posts};

/// Which user each device (automerge actor) belongs to, as proven by signed feed
/// headers. Values written by unknown actors are ignored.
pub type Devices = HashMap<DeviceId, UserId>;

/// Where a removal or a revocation cuts one device's ops in one document:
/// its ops from `counter` on do not count (an actor's op counters grow with
/// each of its changes), and `heads` is the document as that device had it
/// just before the first of them (the dependencies of that change), where
/// a value it overwrote past the cut is found again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpCut {
    /// The first op counter of the device's first change past the cut.
    pub counter: u64,
    /// That change's dependencies.
    pub heads: Vec<automerge::ChangeHash>,
}

/// The cuts of one document, by device (automerge actor).
pub type Cuts = HashMap<DeviceId, OpCut>;

/// One epoch of one channel.
#[derive(Clone)]
pub struct EpochDoc {
    epoch: Epoch,
    doc: AutoCommit,
    /// automerge panicked inside an apply: the document may be half-updated and
    /// must be dropped and loaded again from the log.
    broken: bool,
    /// Ops that do not count in views ([`EpochDoc::set_cuts`]).
    cuts: Cuts,
    /// The devices each device was linked through ([`EpochDoc::set_issuers`]).
    issuers: HashMap<DeviceId, Vec<DeviceId>>,
    /// The texts held, by content id, with their message.
    /// A format 5 text loaded from its pack has no message yet (`None`: the
    /// pack does not say; [`EpochDoc::attribute`] tells it).
    texts: HashMap<ContentId, (Option<MessageId>, String)>,
    /// Texts staged since the last commit: the segments of the next entry.
    pending: Vec<Content>,
    /// Stage texts into the document itself, as before store format 9 (a
    /// writer whose entries cannot carry segments: format 1).
    inline_texts: bool,
    /// Name texts by slot (entry format 5) rather than by content id.
    slot_texts: bool,
    /// Users whose deletes count for anyone's message: the channel's
    /// admins and owners ([`EpochDoc::set_moderators`]).
    moderators: BTreeSet<UserId>,
    /// Where this device's chain of changes stands, while nothing but its
    /// own changes came into the document since it was made or last
    /// collected (`None`: unknown, after a load, an apply or a new
    /// writer): what lets [`EpochDoc::commit`] build a change of posts
    /// itself.
    tail: Option<ChangeTail>,
    /// The posts staged since the last commit (ids and thread roots), while
    /// `posts_only`: nothing else was staged.
    staged_posts: Vec<(MessageId, Option<MessageId>)>,
    posts_only: bool,
    /// Deferred posts ([`EpochDoc::stage`]): what this device's own posts
    /// did that automerge has not seen yet, and peers' changes of posts
    /// kept out of it ([`EpochDoc::defer_remote`]).
    deferred: Deferred,
    /// Each writer's (automerge actor's) last change in the document,
    /// deferred changes included (`None`: not known since the document was
    /// loaded or an apply failed), read from the document when
    /// [`EpochDoc::defer_remote`] or [`EpochDoc::apply_remote`] first needs
    /// it, then kept up to date by them.
    actor_tails: Option<HashMap<ActorId, ActorTail>>,
    /// Changes passed to automerge that wait in its queue for a dependency
    /// ([`EpochDoc::apply_remote`]): each writer's, by seq.
    queued: HashMap<ActorId, BTreeMap<u64, QueuedChange>>,
    /// Changes [`EpochDoc::commit`] built from their posts.
    #[cfg(test)]
    built_apart: usize,
}

/// A lone writer's posts kept out of automerge: staging a post into the op
/// set costs about 15 µs, and a change of posts alone is built from the
/// posts anyway ([`crate::bulk`]). While a document holds nothing but this
/// device's chain of changes (its `tail` is known) and nothing but posts
/// are staged, a post only takes its text slot, and [`EpochDoc::commit`]
/// builds its change without automerge. Those changes reach the op set
/// when anything first needs it ([`EpochDoc::materialize`]): a view built
/// from the document, a message read from it, any other op, a remote
/// apply, a save. Until then the store's views are updated from the ops
/// themselves, as for any local op.
#[derive(Clone, Default)]
struct Deferred {
    /// Changes committed from deferred posts, and peers' changes of posts
    /// ([`EpochDoc::defer_remote`]), not applied to the op set yet.
    changes: Vec<Change>,
    /// Their hashes.
    hashes: HashSet<ChangeHash>,
    /// The posts staged since the last commit (`staged_posts`) are deferred.
    open: bool,
    /// The op counter the next deferred post's map takes (the first's is
    /// the chain's next, `tail`, which stays known while posts are open).
    next_op: u64,
    /// The ids of the deferred posts (a post id is used once).
    ids: HashSet<MessageId>,
}

/// A writer's last change in a document: its seq and its last op counter.
#[derive(Clone, Copy, Debug, Default)]
struct ActorTail {
    seq: u64,
    max_op: u64,
}

/// A change automerge holds in its queue: its op counters and hash.
#[derive(Clone, Copy, Debug)]
struct QueuedChange {
    start_op: u64,
    max_op: u64,
    hash: ChangeHash,
}

impl QueuedChange {
    fn of(change: &Change) -> Self {
        QueuedChange {
            start_op: change.start_op().get(),
            max_op: change.max_op(),
            hash: change.hash(),
        }
    }
}

/// The ops of these posts: a map and a text slot each, and a reply's root.
fn posts_ops(posts: &[(MessageId, Option<MessageId>)]) -> usize {
    posts.iter().map(|(_, root)| 2 + usize::from(root.is_some())).sum()
}

fn device_of(actor: &ActorId) -> Option<DeviceId> {
    DeviceId::from_slice(actor.to_bytes()).ok()
}

/// A text value as the document holds it: the text itself (before store
/// format 9), the content id of a segment or packed text (formats 3 and
/// 4), or the slot of a format 5 text (its id: that of the op).
enum TextRef<'a> {
    Inline(&'a str),
    Id(ContentId),
    Slot(ContentId),
}

fn text_ref<'a>(v: &'a ValueRef<'_>, at: &ObjId) -> Option<TextRef<'a>> {
    match v {
        ValueRef::Scalar(ScalarValueRef::Str(s)) => Some(TextRef::Inline(s)),
        ValueRef::Scalar(ScalarValueRef::Bytes(b)) => ContentId::from_slice(b).map(TextRef::Id),
        ValueRef::Scalar(ScalarValueRef::Null | ScalarValueRef::Boolean(true)) => slot_id(at).map(TextRef::Slot),
        _ => None,
    }
}

/// A format 5 text op's value: the text's slot is the op's place among
/// the change's text ops, and the value only says so (`Null`, or `true`
/// for an edit whose key holds `Null` already: automerge writes no op for
/// the value already there).
fn is_slot_marker(action: &OpType) -> bool {
    matches!(action, OpType::Put(ScalarValue::Null | ScalarValue::Boolean(true)))
}

/// [`text_ref`] of a value read with `get`/`get_all`.
fn text_of<'a>(v: &'a Value<'_>, at: &ObjId) -> Option<TextRef<'a>> {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => Some(TextRef::Inline(s)),
            ScalarValue::Bytes(b) => ContentId::from_slice(b).map(TextRef::Id),
            ScalarValue::Null | ScalarValue::Boolean(true) => slot_id(at).map(TextRef::Slot),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

/// The id of the format 5 text whose slot the op `at` put
/// ([`ContentId::of_op`]).
fn slot_id(at: &ObjId) -> Option<ContentId> {
    match at {
        ObjId::Id(counter, actor, _) => Some(ContentId::of_op(actor.to_bytes(), *counter)),
        ObjId::Root => None,
    }
}

fn value_str<'a>(v: &'a ValueRef<'_>) -> Option<&'a str> {
    match v {
        ValueRef::Scalar(ScalarValueRef::Str(s)) => Some(s),
        _ => None,
    }
}

fn writer(id: &ObjId, devices: &Devices) -> Option<UserId> {
    match id {
        ObjId::Id(_, actor, _) => device_of(actor).and_then(|d| devices.get(&d).copied()),
        ObjId::Root => None,
    }
}

/// Apply the read marker under key `rd:<rest>` (`rest` = `<user>:<device>`),
/// written by `writer`, if that is the user it names.
fn read_marker(view: &mut EpochView, rest: &str, value: &ValueRef<'_>, writer: Option<UserId>) {
    let Some((user, _device)) = rest.split_once(':') else {
        return;
    };
    if let (Ok(user), Some(Ok(msg))) = (user.parse::<UserId>(), value_str(value).map(str::parse::<MessageId>))
        && writer == Some(user)
    {
        view.mark_read(user, msg);
    }
}

/// The device (actor) that wrote an object or value.
fn id_device(id: &ObjId) -> Option<DeviceId> {
    match id {
        ObjId::Id(_, actor, _) => device_of(actor),
        ObjId::Root => None,
    }
}

impl EpochDoc {
    /// An empty epoch document written by `device`.
    pub fn new(epoch: Epoch, device: &DeviceId) -> Self {
        let doc = AutoCommit::new().with_actor(ActorId::from(&device.0[..]));
        EpochDoc {
            epoch,
            doc,
            broken: false,
            cuts: Cuts::new(),
            issuers: HashMap::new(),
            texts: HashMap::new(),
            pending: Vec::new(),
            inline_texts: false,
            slot_texts: false,
            moderators: BTreeSet::new(),
            tail: Some(ChangeTail::new_document()),
            staged_posts: Vec::new(),
            posts_only: true,
            deferred: Deferred::default(),
            actor_tails: Some(HashMap::new()),
            queued: HashMap::new(),
            #[cfg(test)]
            built_apart: 0,
        }
    }

    /// Load a saved document (a snapshot).
    pub fn load(epoch: Epoch, bytes: &[u8], device: &DeviceId) -> Result<Self> {
        // automerge 0.12 panics on some crafted documents (found by fuzzing:
        // fuzz/corpus/snapshot/crash-*); a damaged snapshot must be an error.
        crate::chunk::check_document_chunks(bytes).map_err(|why| Error::corrupted("epoch snapshot", why))?;
        let doc = std::panic::catch_unwind(|| AutoCommit::load(bytes))
            .map_err(|_| Error::corrupted("epoch snapshot", "malformed document"))?
            .map_err(|e| Error::corrupted("epoch snapshot", e))?
            .with_actor(ActorId::from(&device.0[..]));
        Ok(EpochDoc {
            epoch,
            doc,
            broken: false,
            cuts: Cuts::new(),
            issuers: HashMap::new(),
            texts: HashMap::new(),
            pending: Vec::new(),
            inline_texts: false,
            slot_texts: false,
            moderators: BTreeSet::new(),
            tail: None,
            staged_posts: Vec::new(),
            posts_only: true,
            deferred: Deferred::default(),
            actor_tails: None,
            queued: HashMap::new(),
            #[cfg(test)]
            built_apart: 0,
        })
    }

    /// Hold texts (from segments: of entries applied, or held on disk), each
    /// of them for the message its content names.
    pub fn add_texts(&mut self, texts: impl IntoIterator<Item = Content>) {
        for c in texts {
            let id = c.id();
            self.texts.insert(id, (Some(c.msg), c.text));
        }
    }

    /// Hold format 5 texts loaded from their packs, by id
    /// ([`crate::Envelope::open_pack_texts`]): their messages are not known
    /// until [`EpochDoc::attribute`] (a view needs none: a text is named by
    /// the op that puts it).
    pub fn add_slot_texts(&mut self, texts: impl IntoIterator<Item = (ContentId, String)>) {
        for (id, text) in texts {
            self.texts.entry(id).or_insert((None, text));
        }
    }

    /// Whether a text is held whose message is not known yet.
    pub fn unattributed(&self) -> bool {
        self.texts.values().any(|(m, _)| m.is_none())
    }

    /// The ids of the texts held whose message is not known yet.
    pub fn unattributed_ids(&self) -> Vec<ContentId> {
        self.texts
            .iter()
            .filter(|(_, (m, _))| m.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Tell the messages of format 5 texts (from the changes that put them:
    /// [`ChangeEffects::slots`]).
    pub fn attribute(&mut self, slots: impl IntoIterator<Item = (MessageId, ContentId)>) {
        for (msg, id) in slots {
            if let Some((m, _)) = self.texts.get_mut(&id) {
                *m = Some(msg);
            }
        }
    }

    /// [`EpochDoc::add_texts`] of texts whose ids the caller computed
    /// ([`Content::id`]: a hash, so once is enough).
    pub fn add_texts_with_ids(&mut self, texts: impl IntoIterator<Item = (ContentId, Content)>) {
        for (id, c) in texts {
            self.texts.insert(id, (Some(c.msg), c.text));
        }
    }

    /// The texts staged since the last commit, in the order the next
    /// commit's entry will carry them.
    pub fn staged_texts(&self) -> &[Content] {
        &self.pending
    }

    /// The texts staged since the last commit, for the segments of the entry
    /// that commit made (taken once).
    pub fn take_texts(&mut self) -> Vec<Content> {
        std::mem::take(&mut self.pending)
    }

    /// The content ids of every text held for `msg` (its post and edits).
    /// A format 5 text whose message is not known yet counts when the
    /// document names it for `msg` now (its post's text, its current
    /// edits); an edit's older text counts once attributed
    /// ([`EpochDoc::attribute`]).
    pub fn text_ids(&self, msg: &MessageId) -> Vec<ContentId> {
        let mut ids: Vec<ContentId> = self
            .texts
            .iter()
            .filter(|(_, (m, _))| m.as_ref() == Some(msg))
            .map(|(id, _)| *id)
            .collect();
        if self.unattributed() {
            for id in self.slot_refs(msg) {
                if self.texts.get(&id).is_some_and(|(m, _)| m.is_none()) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// The ids of the format 5 texts the document names for `msg` now: its
    /// post's, and each user's current edit.
    fn slot_refs(&self, msg: &MessageId) -> Vec<ContentId> {
        let mut ids = Vec::new();
        let key = format!("m:{msg}");
        for (value, obj) in self.doc.get_all(ROOT, key.as_str()).unwrap_or_default() {
            if matches!(value, Value::Object(ObjType::Map)) {
                for (v, at) in self.doc.get_all(&obj, "t").unwrap_or_default() {
                    if let Some(TextRef::Slot(id)) = text_of(&v, &at) {
                        ids.push(id);
                    }
                }
            }
        }
        let from = format!("e:{msg}:");
        let to = format!("e:{msg};");
        for item in self.doc.map_range(ROOT, from..to) {
            for (v, at) in self.doc.get_all(ROOT, &*item.key).unwrap_or_default() {
                if let Some(TextRef::Slot(id)) = text_of(&v, &at) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Forget these texts (a delete, an expiry): they show as dropped, and
    /// one staged but not committed yet goes into no segment.
    pub fn drop_texts(&mut self, ids: &[ContentId]) {
        for id in ids {
            self.texts.remove(id);
        }
        // A format 5 text keeps its slot (the change names it), sealed
        // empty.
        for c in &mut self.pending {
            if let Some(s) = &mut c.slot
                && ids.contains(&s.id)
            {
                s.gone = true;
                c.text.clear();
            }
        }
        self.pending.retain(|c| c.slot.is_some() || !ids.contains(&c.id()));
    }

    /// The users whose deletes count for anyone's message (the channel's
    /// admins and owners, by its roster now): a delete is the author's, or
    /// theirs. Returns whether the set changed (views must be rebuilt).
    pub fn set_moderators(&mut self, moderators: BTreeSet<UserId>) -> bool {
        let changed = moderators != self.moderators;
        self.moderators = moderators;
        changed
    }

    /// Write texts into the document itself, as before store format 9, or
    /// (the default) as content ids with the texts beside.
    pub fn set_inline_texts(&mut self, inline: bool) {
        self.inline_texts = inline;
    }

    /// Name texts by their slot in the entry's pack (entry format 5, store
    /// format 13: [`crate::textpack`]) instead of by content id.
    pub fn set_slot_texts(&mut self, slots: bool) {
        self.slot_texts = slots;
    }

    /// Whether a delete here was written by someone other than its
    /// message's writer (a moderator's, or a forgery): only then do views
    /// need the moderators ([`EpochDoc::set_moderators`]).
    pub fn has_foreign_deletes(&self) -> bool {
        self.doc
            .map_range(ROOT, "x:".to_string().."x;".to_string())
            .any(|item| {
                let mut parts = item.key[2..].splitn(2, ':');
                let (Some(msg), Some(user)) = (parts.next(), parts.next()) else {
                    return false;
                };
                let (Ok(msg), Ok(user)) = (msg.parse::<MessageId>(), user.parse::<UserId>()) else {
                    return false;
                };
                id_device(&item.id()).is_none_or(|d| writer_tag(&user, &d) != msg.writer())
            })
    }

    /// The messages with a text held (as far as known: see
    /// [`EpochDoc::text_ids`]).
    pub fn text_messages(&self) -> BTreeSet<MessageId> {
        self.texts.values().filter_map(|(m, _)| *m).collect()
    }

    /// The text a value of message `msg` names: `Some(None)` when it names a
    /// text not held (dropped), `None` when it is no text value at all. A
    /// text of another message is none of this one's (an author cannot show
    /// another message's text under its own).
    fn resolve(&self, r: TextRef<'_>, msg: &MessageId) -> Option<Option<String>> {
        Some(match r {
            TextRef::Inline(s) => Some(s.to_string()),
            TextRef::Id(id) => self.held_text(&id, msg, false),
            TextRef::Slot(id) => self.held_text(&id, msg, true),
        })
    }

    fn held_text(&self, id: &ContentId, msg: &MessageId, slot: bool) -> Option<String> {
        // A text loaded from a format 5 pack is bound to the op that puts
        // it (its id), so to the message that op writes: only a slot
        // marker reaches it (a content id written as bytes that happens to
        // be a slot text's would show another message's text).
        self.texts
            .get(id)
            .filter(|(m, _)| match m {
                Some(m) => m == msg,
                None => slot,
            })
            .map(|(_, t)| t.clone())
    }

    /// Stage a text: its content (with a fresh salt) goes into the next
    /// entry's segments, its id into the document.
    fn stage_text(&mut self, msg: MessageId, text: &str) -> Result<ScalarValue> {
        if self.inline_texts {
            return Ok(ScalarValue::Str(text.into()));
        }
        if self.slot_texts {
            // Its id is that of the op that puts it: bound once put
            // ([`EpochDoc::bind_slot`]); its slot, its place among the
            // change's text ops.
            return Ok(ScalarValue::Null);
        }
        let c = Content::new(msg, text.to_string())?;
        let id = c.id();
        self.texts.insert(id, (Some(msg), c.text.clone()));
        self.pending.push(c);
        Ok(ScalarValue::Bytes(id.0.to_vec()))
    }

    /// The format 5 text just put at `at` (its slot's op): held, and staged
    /// for the pack of the entry the next commit makes.
    fn bind_slot(&mut self, msg: MessageId, text: &str, at: Option<ObjId>) -> Result<()> {
        let (Some(id), Some(ObjId::Id(counter, _, _))) = (at.as_ref().and_then(slot_id), &at) else {
            return Err(Error::invalid("epoch document", "a text slot just put is not there"));
        };
        self.texts.insert(id, (Some(msg), text.to_string()));
        self.pending.push(Content::in_slot(id, *counter, msg, text.to_string()));
        Ok(())
    }

    /// Write what comes next as `device` (a device that moved to its keyed
    /// id). Call it with nothing staged.
    pub fn set_writer(&mut self, device: &DeviceId) {
        // What was deferred is the former id's: into the op set under it.
        let _ = self.materialize();
        self.doc.set_actor(ActorId::from(&device.0[..]));
        self.tail = None;
    }

    /// The epoch number.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Set which ops do not count in views: those a removal or revocation
    /// cuts (what a removed member or a revoked device wrote past its cut:
    /// its posts, edits, deletes, reactions, read markers, receipts, names).
    /// A value it overwrote past the cut shows as it was before. Returns
    /// whether anything changed (the caller rebuilds its view then). The
    /// roster and key packages ignore cuts (the fold has its own rules).
    pub fn set_cuts(&mut self, cuts: Cuts) -> bool {
        if self.cuts == cuts {
            return false;
        }
        self.cuts = cuts;
        true
    }

    /// Set the devices each device's certificate was issued through (from
    /// the chains of the feeds held), for the roster's fold
    /// ([`Roster::fold_with`]): a device linked through a revoked one
    /// writes no membership ops that count. Returns whether anything
    /// changed (the caller rebuilds its view then).
    pub fn set_issuers(&mut self, issuers: HashMap<DeviceId, Vec<DeviceId>>) -> bool {
        if self.issuers == issuers {
            return false;
        }
        self.issuers = issuers;
        true
    }

    /// The cut `id` (an op) falls past, if any.
    fn cut_of(&self, id: &ObjId) -> Option<&OpCut> {
        if self.cuts.is_empty() {
            return None;
        }
        match id {
            ObjId::Id(counter, actor, _) => {
                let cut = self.cuts.get(&device_of(actor)?)?;
                (*counter >= cut.counter).then_some(cut)
            }
            ObjId::Root => None,
        }
    }

    /// The user who wrote op `id`, unless a cut leaves it out.
    fn author(&self, id: &ObjId, devices: &Devices) -> Option<UserId> {
        if self.cut_of(id).is_some() {
            return None;
        }
        writer(id, devices)
    }

    /// The newest value under root `key` written by `user` and not cut: for
    /// a value that `user` overwrote past a cut, the one before it.
    fn authored_value(&self, key: &str, user: &UserId, devices: &Devices) -> Option<Value<'_>> {
        self.authored(key, user, devices).map(|(v, _)| v)
    }

    /// [`EpochDoc::authored_value`], with the op that put it.
    fn authored(&self, key: &str, user: &UserId, devices: &Devices) -> Option<(Value<'_>, ObjId)> {
        let all = self.doc.get_all(ROOT, key).ok()?;
        for (value, id) in all.into_iter().rev() {
            if self.author(&id, devices).as_ref() == Some(user) {
                return Some((value, id));
            }
            if let Some(cut) = self.cut_of(&id)
                && writer(&id, devices).as_ref() == Some(user)
            {
                return self.before_cut(key, cut, devices, |w| w == Some(*user));
            }
        }
        None
    }

    /// The newest value under root `key`, as the document was before `cut`,
    /// whose (uncut) writer satisfies `counts`.
    fn before_cut(
        &self,
        key: &str,
        cut: &OpCut,
        devices: &Devices,
        counts: impl Fn(Option<UserId>) -> bool,
    ) -> Option<(Value<'_>, ObjId)> {
        let before = self.doc.get_all_at(ROOT, key, &cut.heads).ok()?;
        before
            .into_iter()
            .rev()
            .find(|(_, id)| counts(self.author(id, devices)))
    }

    /// Save the whole document (compressed), for a snapshot.
    pub fn save(&mut self) -> Result<Vec<u8>> {
        self.no_pending()?;
        self.materialize()?;
        Ok(self.doc.save())
    }

    /// Number of changes in the document.
    pub fn change_count(&mut self) -> Result<usize> {
        self.no_pending()?;
        self.materialize()?;
        Ok(self.doc.get_changes(&[]).len())
    }

    /// Apply ops written by the local device as one automerge change and return
    /// its bytes (compressed), or `None` if the ops changed nothing.
    ///
    /// All or nothing: if any op fails, none of them stays staged.
    pub fn apply_local(
        &mut self,
        author: &UserId,
        device: &DeviceId,
        ops: &[Op],
        time_ms: i64,
    ) -> Result<Option<Vec<u8>>> {
        self.no_pending()?;
        let staged = self.pending.len();
        for op in ops {
            if let Err(e) = self.stage(author, device, op) {
                self.doc.rollback();
                for (id, _) in self.staged_posts.drain(..) {
                    self.deferred.ids.remove(&id);
                }
                self.deferred.open = false;
                self.posts_only = true;
                for c in self.pending.drain(staged..) {
                    self.texts.remove(&c.id());
                }
                return Err(e);
            }
        }
        self.commit(time_ms)
    }

    /// automerge closes an open change on save, apply and history reads; staged
    /// ops would then never come back from [`EpochDoc::commit`]. Refuse instead.
    fn no_pending(&self) -> Result<()> {
        if self.broken {
            return Err(Error::invalid(
                "epoch document",
                "broken by a failed apply; load it again",
            ));
        }
        if self.doc.pending_ops() > 0 || self.deferred.open {
            return Err(Error::invalid("epoch document", "ops are staged; commit them first"));
        }
        Ok(())
    }

    /// Bring what was deferred ([`Deferred`]) into automerge: the changes
    /// committed from deferred posts applied to the op set (in one call),
    /// then the posts staged since, staged as [`EpochDoc::stage`] stages a
    /// post (their texts were taken when they were staged). Every method
    /// that reads or writes the op set calls it first. A failure (only an
    /// automerge bug could make one: the changes are this document's own)
    /// leaves the document broken ([`EpochDoc::is_broken`]): it refuses
    /// every later op, and the error reaches the write or the close that
    /// asked (a close that fails poisons the store, and a reopen loads the
    /// epoch again from its entries).
    fn materialize(&mut self) -> Result<()> {
        if !self.deferred.changes.is_empty() {
            let changes = std::mem::take(&mut self.deferred.changes);
            self.deferred.hashes.clear();
            let doc = &mut self.doc;
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.apply_changes(changes))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.broken = true;
                    return Err(e.into());
                }
                Err(_) => {
                    self.broken = true;
                    return Err(Error::corrupted("automerge change", "automerge could not apply it"));
                }
            }
        }
        if std::mem::take(&mut self.deferred.open) {
            let mut counter = self.first_deferred_op();
            for i in 0..self.staged_posts.len() {
                let (id, root) = self.staged_posts[i];
                let m = match self.put_post(id, root, ScalarValue::Null) {
                    Ok(m) => m,
                    Err(e) => {
                        self.broken = true;
                        return Err(e);
                    }
                };
                // The slot each text took when it was deferred is the op
                // automerge numbers now.
                if !matches!(m, ObjId::Id(c, _, _) if c == counter) {
                    self.broken = true;
                    return Err(Error::invalid("epoch document", "a deferred post's ops moved"));
                }
                counter += 2 + u64::from(root.is_some());
            }
        }
        self.deferred.ids.clear();
        Ok(())
    }

    /// [`EpochDoc::materialize`] before a read that cannot fail: a failure
    /// leaves the document broken, and the read sees the op set as it is.
    pub(crate) fn materialize_for_read(&mut self) {
        let _ = self.materialize();
    }

    /// The first deferred post's map counter: where the chain stands.
    fn first_deferred_op(&self) -> u64 {
        self.tail.as_ref().map_or(0, |t| t.start_op)
    }

    /// The ops of a post (its map, its text `t`, its thread's root `p`), as
    /// [`crate::bulk`] writes them for a slot (`Null`); returns the map.
    fn put_post(&mut self, id: MessageId, root: Option<MessageId>, text: ScalarValue) -> Result<ObjId> {
        let d = &mut self.doc;
        let m = d.put_object(ROOT, crate::bulk::key_str(&crate::bulk::post_key(&id)), ObjType::Map)?;
        d.put(&m, "t", text)?;
        if let Some(root) = root {
            d.put(&m, "p", root.to_hex())?;
        }
        Ok(m)
    }

    /// Whether a post can be deferred now: texts by slot, this device's
    /// chain known, nothing but deferred posts staged.
    fn can_defer(&self) -> bool {
        self.slot_texts
            && !self.inline_texts
            && !self.broken
            && self.posts_only
            && self.tail.is_some()
            && (self.deferred.open || (self.staged_posts.is_empty() && self.doc.pending_ops() == 0))
    }

    /// Stage a post without automerge ([`Deferred`]): checked as
    /// `stage_op` checks it, its text put in the slot its op will have.
    fn defer_post(&mut self, author: &UserId, device: &DeviceId, op: &Op) -> Result<()> {
        let Op::Post { id, text, reply_to } = op else {
            return Err(Error::invalid("epoch document", "only a post is deferred"));
        };
        self.check_op(author, device, op)?;
        if !self.deferred.open {
            self.deferred.next_op = self.first_deferred_op();
        }
        let slot = self.deferred.next_op + 1;
        let content = ContentId::of_op(self.doc.get_actor().to_bytes(), slot);
        self.texts.insert(content, (Some(*id), text.clone()));
        self.pending.push(Content::in_slot(content, slot, *id, text.clone()));
        self.deferred.next_op = slot + 1 + u64::from(reply_to.is_some());
        self.deferred.ids.insert(*id);
        self.deferred.open = true;
        self.staged_posts.push((*id, *reply_to));
        Ok(())
    }

    /// Whether changes committed here from deferred posts (see
    /// [`EpochDoc::stage`]) wait to reach automerge's op set: a snapshot,
    /// a view or any other op would apply them first.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.changes.is_empty()
    }

    /// Apply one local op to the document without closing the change: the view
    /// functions see it at once, and [`EpochDoc::commit`] later seals every staged
    /// op into one change (group commit at the CRDT level).
    ///
    /// A post is deferred instead while the document holds nothing but
    /// this device's chain and nothing but posts are staged: it takes its
    /// text slot, and automerge sees it (and the changes committed from
    /// such posts) only when something first reads or writes the op set,
    /// which costs what staging it would have cost. A lone writer's posts
    /// then cost about 1 µs each here instead of 15.
    pub fn stage(&mut self, author: &UserId, device: &DeviceId, op: &Op) -> Result<()> {
        if matches!(op, Op::Post { .. }) && self.can_defer() {
            return self.defer_post(author, device, op);
        }
        self.materialize()?;
        // A change of posts alone is built at commit from the posts (format
        // 5 slots only); anything else staged, or a failure part way, and
        // it is collected from automerge instead.
        let only = std::mem::replace(&mut self.posts_only, false);
        self.stage_op(author, device, op)?;
        if let Op::Post { id, reply_to, .. } = op
            && self.slot_texts
            && !self.inline_texts
        {
            self.posts_only = only;
            self.staged_posts.push((*id, *reply_to));
        }
        Ok(())
    }

    /// What staging checks of an op before it stages it, deferred or not:
    /// the document usable, the op valid and of this epoch, and (what
    /// decode_change refuses for the writer, stage refuses too) a post's id
    /// minted for its writer and not used yet.
    fn check_op(&self, author: &UserId, device: &DeviceId, op: &Op) -> Result<()> {
        if self.broken {
            return Err(Error::invalid(
                "epoch document",
                "broken by a failed apply; load it again",
            ));
        }
        op.validate()?;
        if op.epoch() != self.epoch {
            return Err(Error::invalid("op", "op does not belong to this epoch"));
        }
        if let Op::Post { id, .. } = op {
            if id.writer() != writer_tag(author, device) {
                return Err(Error::invalid("message id", "minted for another writer"));
            }
            let key = crate::bulk::post_key(id);
            if self.deferred.ids.contains(id) || self.doc.get(ROOT, crate::bulk::key_str(&key))?.is_some() {
                return Err(Error::invalid("message id", "already used"));
            }
        }
        Ok(())
    }

    fn stage_op(&mut self, author: &UserId, device: &DeviceId, op: &Op) -> Result<()> {
        self.check_op(author, device, op)?;
        let user = author.to_hex();
        let text = match op {
            Op::Post { id, text, .. } => Some(self.stage_text(*id, text)?),
            Op::Edit { msg, text } => Some(self.stage_text(*msg, text)?),
            _ => None,
        };
        let d = &mut self.doc;
        match op {
            Op::CreateChannel { name } | Op::Rename { name } => {
                d.put(ROOT, "name", name.as_str())?;
            }
            Op::SetName { name } => {
                d.put(ROOT, format!("n:{user}"), name.as_str())?;
            }
            Op::SetRetention { secs, at } => {
                let mut v = secs.to_be_bytes().to_vec();
                v.extend_from_slice(&at.to_be_bytes());
                d.put(ROOT, format!("ret:{user}"), ScalarValue::Bytes(v))?;
            }
            Op::Post {
                id,
                reply_to,
                text: plain,
            } => {
                let m = self.put_post(*id, *reply_to, text.expect("a post stages its text"))?;
                if self.slot_texts && !self.inline_texts {
                    // The text's op is the one right after the map's, by the
                    // same actor (automerge numbers a transaction's ops in
                    // order): no look-up on the write path.
                    let at = match &m {
                        ObjId::Id(counter, actor, idx) => Some(ObjId::Id(counter + 1, actor.clone(), *idx)),
                        ObjId::Root => None,
                    };
                    debug_assert_eq!(at, self.doc.get(&m, "t")?.map(|(_, op)| op));
                    self.bind_slot(*id, plain, at)?;
                }
            }
            Op::React { msg, emoji } => {
                d.put(ROOT, format!("r:{msg}:{user}:{emoji}"), true)?;
            }
            Op::Unreact { msg, emoji } => {
                let key = format!("r:{msg}:{user}:{emoji}");
                if d.get(ROOT, key.as_str())?.is_some() {
                    d.delete(ROOT, key.as_str())?;
                }
            }
            Op::Edit { msg, text: plain } => {
                let key = format!("e:{msg}:{user}");
                let mut value = text.expect("an edit stages its text");
                let before = d.get(ROOT, key.as_str())?;
                // automerge puts nothing when the value is the one there
                // already: an edit over an earlier one's marker takes the
                // other marker.
                if let (ScalarValue::Null, Some((Value::Scalar(old), _))) = (&value, &before)
                    && old.as_ref() == &ScalarValue::Null
                {
                    value = ScalarValue::Boolean(true);
                }
                let before = before.map(|(_, op)| op);
                d.put(ROOT, key.as_str(), value)?;
                if self.slot_texts && !self.inline_texts {
                    let at = self.doc.get(ROOT, key.as_str())?.map(|(_, op)| op);
                    if at == before {
                        return Err(Error::invalid("epoch document", "an edit's text slot was not put"));
                    }
                    self.bind_slot(*msg, plain, at)?;
                }
            }
            Op::Delete { msg } => {
                d.put(ROOT, format!("x:{msg}:{user}"), true)?;
            }
            Op::ReadUpTo { msg } => {
                d.put(ROOT, format!("rd:{user}:{device}"), msg.to_hex())?;
            }
            Op::Delivered { author: writer, up_to } => {
                d.put(ROOT, format!("dl:{user}:{device}:{writer}"), up_to.to_hex())?;
            }
            Op::Keys { n, package } => {
                let key = format!("kp:{user}:{device}:{n}");
                if d.get(ROOT, key.as_str())?.is_some() {
                    return Err(Error::invalid("key package", "number already used"));
                }
                d.put(ROOT, key, ScalarValue::Bytes(package.encode()))?;
            }
            Op::Member { n, body } => {
                let key = OpKey { device: *device, n: *n }.doc_key(author);
                if d.get(ROOT, key.as_str())?.is_some() {
                    return Err(Error::invalid("membership op", "number already used"));
                }
                d.put(ROOT, key, ScalarValue::Bytes(body.encode()))?;
            }
        }
        Ok(())
    }

    /// Number of ops staged since the last commit.
    pub fn pending_ops(&self) -> usize {
        if self.deferred.open {
            return posts_ops(&self.staged_posts);
        }
        self.doc.pending_ops()
    }

    /// Close the staged ops into one change and return its bytes (compressed), or
    /// `None` if nothing was staged.
    ///
    /// A change of posts alone, staged where this device's chain is known
    /// (`tail`), is built from the posts ([`crate::bulk`]), 70 to 100 µs
    /// for 200 posts, instead of collected back from automerge's op set
    /// (about 165 µs), and taken only if its hash is the one automerge
    /// committed. Compressed by `chunk::compress_change`. Deferred posts
    /// (see [`EpochDoc::stage`]) are built the same way, with no automerge
    /// commit at all; their change reaches the op set later.
    ///
    /// An error only when deferred posts had to be brought into automerge
    /// (it could not encode their change) and that failed: the document is
    /// broken then ([`EpochDoc::is_broken`]).
    pub fn commit(&mut self, time_ms: i64) -> Result<Option<Vec<u8>>> {
        if self.deferred.open {
            if let Some(bytes) = self.commit_deferred(time_ms) {
                return Ok(Some(bytes));
            }
            // automerge could not encode it: the posts go into the op set,
            // and the change is committed there.
            self.materialize()?;
        }
        let posts = std::mem::take(&mut self.staged_posts);
        // Posts alone, and every op staged since the last commit is theirs
        // (automerge closes an open change by itself on a save, an apply or
        // a history read: a change closed so is not in this one).
        let only = std::mem::replace(&mut self.posts_only, true) && self.doc.pending_ops() == posts_ops(&posts);
        let tail = self.tail.take();
        let Some(hash) = self.doc.commit_with(CommitOptions::default().with_time(time_ms)) else {
            self.tail = tail;
            return Ok(None);
        };
        if let Some(tail) = tail.filter(|_| only && !posts.is_empty())
            && let Ok(change) = crate::bulk::staged_posts_change(self.doc.get_actor(), &tail, &posts, time_ms)
        {
            if change.hash() == hash {
                #[cfg(test)]
                {
                    self.built_apart += 1;
                }
                self.tail = Some(ChangeTail {
                    seq: tail.seq + 1,
                    start_op: change.max_op() + 1,
                    deps: vec![hash],
                });
                self.note_tail(&change);
                return Ok(Some(crate::chunk::compress_change(change.raw_bytes())));
            }
            debug_assert!(false, "a change of posts built apart is not the one committed");
        }
        let change = self.doc.get_last_local_change().expect("a change was just committed");
        self.tail = Some(ChangeTail {
            seq: change.seq() + 1,
            start_op: change.max_op() + 1,
            deps: vec![hash],
        });
        self.note_tail(&change);
        Ok(Some(crate::chunk::compress_change(change.raw_bytes())))
    }

    /// The change of the deferred posts staged since the last commit,
    /// built from them and kept to reach the op set later ([`Deferred`]);
    /// `None` (everything left as it was) if automerge cannot encode it.
    fn commit_deferred(&mut self, time_ms: i64) -> Option<Vec<u8>> {
        let tail = self.tail.as_ref()?;
        let change = crate::bulk::staged_posts_change(self.doc.get_actor(), tail, &self.staged_posts, time_ms).ok()?;
        debug_assert_eq!(change.max_op() + 1, self.deferred.next_op);
        self.tail = Some(ChangeTail {
            seq: tail.seq + 1,
            start_op: change.max_op() + 1,
            deps: vec![change.hash()],
        });
        self.staged_posts.clear();
        self.posts_only = true;
        self.deferred.open = false;
        #[cfg(test)]
        {
            self.built_apart += 1;
        }
        let bytes = crate::chunk::compress_change(change.raw_bytes());
        self.note_tail(&change);
        self.deferred.hashes.insert(change.hash());
        self.deferred.changes.push(change);
        Some(bytes)
    }

    /// `change` is now the last of its writer in the document.
    fn note_tail(&mut self, change: &Change) {
        if let Some(tails) = &mut self.actor_tails {
            tails.insert(
                change.actor_id().clone(),
                ActorTail {
                    seq: change.seq(),
                    max_op: change.max_op(),
                },
            );
        }
    }

    /// Keep a peer's change out of automerge, as a lone writer's own posts
    /// are (see [`EpochDoc::stage`]). A change that makes posts alone
    /// (`effects.beyond_posts` false: new message maps with their text
    /// slot or id and reply root, nothing superseded) takes about 100 µs
    /// to apply to a document of 1,000 posts on its own, against 15 µs a
    /// change when many apply in one call; the store builds its view from
    /// the change's effects. It reaches the op set with the other deferred
    /// changes, when anything first needs the op set
    /// (`materialize`).
    ///
    /// Only a change that automerge will then take, without queueing it:
    /// every dependency in the document (or deferred), its writer's next
    /// seq with op counters past its last change's, no post made before,
    /// nothing staged or queued here. Otherwise false, and the document is
    /// left as it was: the caller applies the change
    /// ([`EpochDoc::apply_remote`]), which checks it as before.
    pub fn defer_remote(&mut self, change: &Change, effects: &ChangeEffects) -> bool {
        if self.broken
            || effects.beyond_posts
            || !effects.counted_by_posts()
            || effects.posts.is_empty()
            || self.deferred.open
            || self.doc.pending_ops() > 0
            || self.deferred.hashes.contains(&change.hash())
        {
            return false;
        }
        // What is missing includes the dependencies of changes automerge
        // queued: a document with changes queued is never deferred into.
        let deps: Vec<ChangeHash> = change
            .deps()
            .iter()
            .filter(|d| !self.deferred.hashes.contains(*d))
            .copied()
            .collect();
        if !self.doc.get_missing_deps(&deps).is_empty() {
            return false;
        }
        let last = match self.tails() {
            Some(tails) => tails.get(change.actor_id()).copied().unwrap_or_default(),
            None => return false,
        };
        if change.seq() != last.seq + 1 || change.start_op().get() <= last.max_op {
            return false;
        }
        let mut ids = HashSet::new();
        for id in &effects.posts {
            if !ids.insert(*id) || self.deferred.ids.contains(id) {
                return false;
            }
            if !matches!(
                self.doc.get(ROOT, crate::bulk::key_str(&crate::bulk::post_key(id))),
                Ok(None)
            ) {
                return false;
            }
            // An edit, delete or reaction that came before its post: the
            // view of the post is then the document's to say.
            for kind in ["e", "x", "r"] {
                if self
                    .doc
                    .map_range(ROOT, format!("{kind}:{id}:")..format!("{kind}:{id};"))
                    .next()
                    .is_some()
                {
                    return false;
                }
            }
        }
        // This device's chain is no longer all the document holds.
        self.tail = None;
        self.deferred.ids.extend(ids);
        self.note_tail(change);
        self.deferred.hashes.insert(change.hash());
        self.deferred.changes.push(change.clone());
        true
    }

    /// Each writer's last change ([`EpochDoc::actor_tails`]), read from
    /// the document when not known (about 300 µs for 1,000 changes);
    /// `None` while ops are staged.
    fn tails(&mut self) -> Option<&HashMap<ActorId, ActorTail>> {
        if self.actor_tails.is_none() {
            if self.doc.pending_ops() > 0 {
                return None;
            }
            let mut tails: HashMap<ActorId, ActorTail> = HashMap::new();
            let deferred = self
                .deferred
                .changes
                .iter()
                .map(|c| (c.actor_id().clone(), c.seq(), c.max_op()));
            let metas = self.doc.document().get_changes_meta(&[]);
            for (actor, seq, max_op) in metas
                .into_iter()
                .map(|m| (m.actor.into_owned(), m.seq, m.max_op))
                .chain(deferred)
            {
                let t = tails.entry(actor).or_default();
                t.seq = t.seq.max(seq);
                t.max_op = t.max_op.max(max_op);
            }
            self.actor_tails = Some(tails);
        }
        self.actor_tails.as_ref()
    }

    /// Apply a batch of remote changes in one automerge call (never one call per
    /// change: each call costs time proportional to the document).
    ///
    /// automerge 0.12 panics on some changes that decode cleanly (an op naming an
    /// actor the document has never seen; found by fuzzing:
    /// fuzz/corpus/change/crash-unknown-other-actor-*). Such a panic becomes an
    /// error, and the document refuses further use ([`EpochDoc::is_broken`]):
    /// the caller drops it and loads the epoch again.
    ///
    /// Each writer's changes must follow each other: seq after seq, each
    /// one's ops numbered past its predecessor's. automerge does not check
    /// the op numbers, and a change whose ops overlap its predecessor's (or
    /// that comes without its predecessor) applies fine, yet makes the
    /// document's snapshot unloadable: its changes are rebuilt from their
    /// ops. Such a change is refused here, before anything is applied,
    /// against the writers' last changes, those waiting in automerge's
    /// queue, and the rest of the batch.
    pub fn apply_remote(&mut self, changes: Vec<Change>) -> Result<()> {
        self.no_pending()?;
        self.materialize()?;
        self.tail = None;
        let metas: Vec<(ActorId, u64, QueuedChange)> = changes
            .iter()
            .map(|c| (c.actor_id().clone(), c.seq(), QueuedChange::of(c)))
            .collect();
        self.check_order(&metas)?;
        let doc = &mut self.doc;
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.apply_changes(changes)));
        match applied {
            Ok(Ok(())) => self.note_applied(metas),
            Ok(Err(e)) => {
                self.actor_tails = None;
                Err(e.into())
            }
            Err(_) => {
                self.broken = true;
                Err(Error::corrupted("automerge change", "automerge could not apply it"))
            }
        }
    }

    /// Refuse the changes of `metas` (writer, seq, ops) if one of them does
    /// not follow its writer's previous change ([`EpochDoc::apply_remote`]).
    fn check_order(&mut self, metas: &[(ActorId, u64, QueuedChange)]) -> Result<()> {
        let refuse = |why| Err(Error::corrupted("automerge change", why));
        let mut batch: HashMap<&ActorId, BTreeMap<u64, QueuedChange>> = HashMap::new();
        for (actor, seq, c) in metas {
            batch.entry(actor).or_default().insert(*seq, *c);
        }
        if self.tails().is_none() {
            return refuse("ops are staged");
        }
        let tails = self.actor_tails.as_ref().expect("read just above");
        for (actor, mine) in &batch {
            let tail = tails.get(*actor).copied().unwrap_or_default();
            let queued = self.queued.get(*actor);
            let known = |seq: u64| mine.get(&seq).or_else(|| queued.and_then(|q| q.get(&seq))).copied();
            for (&seq, c) in mine {
                // A seq the document holds: automerge skips the same change
                // and refuses another one.
                if seq <= tail.seq {
                    continue;
                }
                // Without its predecessor, automerge queues a change (an
                // honest one depends on it); one that applies all the same
                // is refused once applied (`note_applied`).
                let before = if seq == tail.seq + 1 {
                    Some(tail.max_op)
                } else {
                    known(seq - 1).map(|p| p.max_op)
                };
                if before.is_some_and(|before| c.start_op <= before) {
                    return refuse("its ops do not follow its writer's previous change");
                }
                if let Some(next) = queued.and_then(|q| q.get(&(seq + 1)))
                    && next.start_op <= c.max_op
                {
                    return refuse("its ops overlap its writer's next change");
                }
            }
        }
        Ok(())
    }

    /// After an apply: the writers' last changes moved to those applied,
    /// and what automerge still queues is kept. A change applied without
    /// its predecessor (its dependencies were there, its writer's previous
    /// change was not: no honest writer makes that) leaves the document
    /// broken ([`EpochDoc::is_broken`]) and is refused.
    fn note_applied(&mut self, changes: Vec<(ActorId, u64, QueuedChange)>) -> Result<()> {
        let pending = std::mem::take(&mut self.queued)
            .into_iter()
            .flat_map(|(a, q)| q.into_iter().map(move |(seq, c)| (a.clone(), seq, c)));
        let all: Vec<(ActorId, u64, QueuedChange)> = pending.chain(changes).collect();
        let queue = !self.doc.get_missing_deps(&[]).is_empty();
        let mut applied: Vec<(ActorId, u64, QueuedChange)> = Vec::with_capacity(all.len());
        for (actor, seq, c) in all {
            if queue && self.doc.get_change_meta_by_hash(&c.hash).is_none() {
                self.queued.entry(actor).or_default().insert(seq, c);
            } else {
                applied.push((actor, seq, c));
            }
        }
        applied.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let Some(tails) = &mut self.actor_tails else {
            return Ok(());
        };
        for (actor, seq, c) in applied {
            let t = tails.entry(actor).or_default();
            // A change the document held already (sent again) is skipped.
            if seq <= t.seq {
                continue;
            }
            if seq != t.seq + 1 || c.start_op <= t.max_op {
                self.broken = true;
                self.actor_tails = None;
                return Err(Error::corrupted(
                    "automerge change",
                    "applied without its writer's previous change",
                ));
            }
            *t = ActorTail { seq, max_op: c.max_op };
        }
        Ok(())
    }

    /// The document's heads.
    #[cfg(test)]
    pub(crate) fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        let _ = self.materialize();
        self.doc.get_heads()
    }

    /// Whether changes wait in automerge's queue for dependencies not applied yet.
    pub fn has_queued(&mut self) -> bool {
        if self.doc.pending_ops() > 0 {
            // automerge closes the open change to answer: `commit` must
            // collect what comes next.
            self.tail = None;
            self.posts_only = false;
            self.actor_tails = None;
        }
        !self.doc.get_missing_deps(&[]).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::id::ChannelId;
    use crate::identity::Identity;

    /// The store updates views from ops (`EpochView::apply_local`) instead of
    /// reading the document back; both must agree after any sequence of local ops.
    #[test]
    fn views_updated_from_ops_match_views_built_from_the_document() {
        // Texts named by content id (formats 3 and 4), then by slot (5).
        views_match(false);
        views_match(true);
    }

    /// A writer's change whose ops overlap its previous change's applied
    /// fine in automerge and made the document's snapshot unloadable
    /// ("max_op is lower than start_op", "malformed document"): refused,
    /// whether its predecessor is applied, in the same batch or waiting in
    /// automerge's queue; a change that comes without its predecessor too.
    /// The writers' honest changes still apply, in any of those ways.
    #[test]
    fn a_change_whose_ops_overlap_its_writers_last_is_refused() {
        let (me, other) = (Identity::generate("me").unwrap(), Identity::generate("other").unwrap());
        let (user, device) = (me.user(), me.device());
        let channel = ChannelId([3; 32]);
        let devices = Devices::from([(device, user), (other.device(), other.user())]);
        let decode = |bytes: &[u8], who: &Identity| decode_change(bytes, &who.device(), &who.user()).unwrap();
        let crafted = |change: &[u8], seq, start| crate::chunk::restamp_change(change, &device.0, seq, start).unwrap();
        // The other device posts; this one reacts to it twice (depending on
        // it), then posts.
        let mut theirs = EpochDoc::new(1, &other.device());
        let their_post = numbered_post(
            &channel,
            writer_tag(&other.user(), &other.device()),
            1,
            None,
            &mut Vec::new(),
        );
        theirs.stage(&other.user(), &other.device(), &their_post).unwrap();
        let b1 = theirs.commit(0).unwrap().unwrap();
        let mut mine = EpochDoc::new(1, &device);
        mine.apply_remote(vec![decode(&b1, &other)]).unwrap();
        let Op::Post { id, .. } = their_post else {
            unreachable!()
        };
        let mut changes = Vec::new();
        for emoji in ["👍", "🎉"] {
            let react = Op::React {
                msg: id,
                emoji: emoji.into(),
            };
            mine.stage(&user, &device, &react).unwrap();
            changes.push(mine.commit(0).unwrap().unwrap());
        }
        mine.stage(
            &user,
            &device,
            &numbered_post(&channel, writer_tag(&user, &device), 2, None, &mut Vec::new()),
        )
        .unwrap();
        changes.push(mine.commit(0).unwrap().unwrap());
        let [a1, a2, a3] = [0, 1, 2].map(|i| decode(&changes[i], &me));
        assert_eq!((a1.seq(), a2.seq(), a2.start_op().get()), (1, 2, a1.max_op() + 1));
        let overlapping: Vec<Change> = [1, a1.max_op()]
            .into_iter()
            .map(|start| decode(&crafted(&changes[1], None, Some(start)), &me))
            .collect();
        let reader = DeviceId([9; 16]);
        #[track_caller]
        fn refused(r: Result<()>) -> String {
            match r {
                Err(Error::Corrupted {
                    what: "automerge change",
                    detail,
                }) => detail,
                other => panic!("not refused: {other:?}"),
            }
        }

        for bad in &overlapping {
            // Its predecessor applied before.
            let mut doc = EpochDoc::new(1, &reader);
            doc.apply_remote(vec![decode(&b1, &other), a1.clone()]).unwrap();
            let why = refused(doc.apply_remote(vec![bad.clone()]));
            assert!(why.contains("do not follow"), "{why}");
            // In the same batch.
            let mut doc = EpochDoc::new(1, &reader);
            refused(doc.apply_remote(vec![bad.clone(), decode(&b1, &other), a1.clone()]));
            // Its predecessor waiting in automerge's queue (for b1).
            let mut doc = EpochDoc::new(1, &reader);
            doc.apply_remote(vec![a1.clone()]).unwrap();
            assert!(doc.has_queued());
            refused(doc.apply_remote(vec![bad.clone()]));
            // The document was left as it was: the honest changes apply, and
            // its snapshot loads with the same view.
            doc.apply_remote(vec![a2.clone(), decode(&b1, &other), a3.clone()])
                .unwrap();
            assert!(!doc.has_queued());
            let view = doc.view(&devices);
            let mut loaded = EpochDoc::load(1, &doc.save().unwrap(), &reader).unwrap();
            assert_eq!(loaded.view(&devices), view);
            assert_eq!(view.messages().count(), 2);
        }
        // Without its predecessor, its dependencies there (a1 said to be
        // the writer's second change): refused (automerge 0.12 panics on it
        // here), and the document is to be loaded again.
        let mut doc = EpochDoc::new(1, &reader);
        doc.apply_remote(vec![decode(&b1, &other)]).unwrap();
        let second = decode(&crafted(&changes[0], Some(2), None), &me);
        refused(doc.apply_remote(vec![second]));
        assert!(doc.is_broken());
        // Without its predecessor, queued: its predecessor applies it.
        let mut doc = EpochDoc::new(1, &reader);
        doc.apply_remote(vec![a2.clone()]).unwrap();
        doc.apply_remote(vec![decode(&b1, &other)]).unwrap();
        assert!(doc.has_queued());
        doc.apply_remote(vec![a1.clone()]).unwrap();
        assert!(!doc.has_queued());
        // The honest chain, one change at a time, its first queued: every
        // snapshot loads.
        let mut doc = EpochDoc::new(1, &reader);
        for batch in [
            vec![a1.clone()],
            vec![a2.clone()],
            vec![decode(&b1, &other)],
            vec![a3.clone()],
        ] {
            doc.apply_remote(batch).unwrap();
            EpochDoc::load(1, &doc.save().unwrap(), &reader).unwrap();
        }
        assert_eq!(doc.view(&devices).messages().count(), 2);
        // A change past its predecessor's ops with a gap between is fine.
        let mut doc = EpochDoc::new(1, &reader);
        let gapped = decode(&crafted(&changes[1], None, Some(a1.max_op() + 5)), &me);
        doc.apply_remote(vec![decode(&b1, &other), a1.clone(), gapped]).unwrap();
        EpochDoc::load(1, &doc.save().unwrap(), &reader).unwrap();
    }

    /// Post number `n` of the writer `tag` into epoch 1 of `channel` (its
    /// id stamped `1000 + n` ms, its text "post n"), its id pushed to `ids`.
    fn numbered_post(
        channel: &ChannelId,
        tag: [u8; 8],
        n: u64,
        reply_to: Option<MessageId>,
        ids: &mut Vec<MessageId>,
    ) -> Op {
        let id = MessageId::new(Timestamp::from_millis(1000 + n), 1, channel, tag);
        ids.push(id);
        Op::Post {
            id,
            text: format!("post {n}"),
            reply_to,
        }
    }

    /// A peer's changes of posts kept out of automerge
    /// ([`EpochDoc::defer_remote`]) give, once the document is read, the
    /// document that applying them gives; a change automerge would refuse
    /// or queue, or one whose view the document must say, is not kept out.
    #[test]
    fn a_peers_posts_are_kept_out_only_when_automerge_will_take_them() {
        let (w, r) = (Identity::generate("w").unwrap(), Identity::generate("r").unwrap());
        let devices = Devices::from([(w.device(), w.user()), (r.device(), r.user())]);
        let channel = ChannelId([3; 32]);
        let tag = writer_tag(&w.user(), &w.device());
        let mut writer = EpochDoc::new(1, &w.device());
        writer.set_slot_texts(true);
        let (mut kept, mut applied) = (EpochDoc::new(1, &r.device()), EpochDoc::new(1, &r.device()));
        let mut ids = Vec::new();
        let mut n = 0u64;
        // The writer's next change: `k` posts (a reply every third).
        let mut change_of = |writer: &mut EpochDoc, k: usize, ids: &mut Vec<MessageId>| {
            for _ in 0..k {
                n += 1;
                let reply_to = n.is_multiple_of(3).then(|| ids[0]);
                let op = numbered_post(&channel, tag, n, reply_to, ids);
                writer.stage(&w.user(), &w.device(), &op).unwrap();
            }
            let bytes = writer.commit(0).unwrap().unwrap();
            let texts = writer.take_texts();
            let (change, effects) = decode_change_effects(&bytes, &w.device(), &w.user()).unwrap();
            (change, effects, texts)
        };
        let take = |kept: &mut EpochDoc, applied: &mut EpochDoc, c: &(Change, ChangeEffects, Vec<Content>)| {
            kept.add_texts(c.2.iter().cloned());
            applied.add_texts(c.2.iter().cloned());
            applied.apply_remote(vec![c.0.clone()]).unwrap();
            kept.defer_remote(&c.0, &c.1)
        };
        let c1 = change_of(&mut writer, 3, &mut ids);
        let before_c2 = writer.clone();
        let c2 = change_of(&mut writer, 2, &mut ids);
        assert!(take(&mut kept, &mut applied, &c1));
        assert!(take(&mut kept, &mut applied, &c2), "a change on one kept out");
        assert!(kept.has_deferred() && kept.doc.get_heads().is_empty());

        // Another change of the same seq (a writer that signed two): automerge
        // refuses it, so it is not kept out.
        let mut forked = before_c2;
        let other = change_of(&mut forked, 1, &mut ids);
        assert!(!kept.defer_remote(&other.0, &other.1));
        assert!(applied.clone().apply_remote(vec![other.0.clone()]).is_err());
        // A change whose dependency is missing: automerge would queue it.
        let c3 = change_of(&mut writer, 1, &mut ids);
        let c4 = change_of(&mut writer, 1, &mut ids);
        assert!(!kept.defer_remote(&c4.0, &c4.1));
        // A post made before (the same id, the writer's next seq).
        let tail = ChangeTail {
            seq: c3.0.seq(),
            start_op: c3.0.start_op().get(),
            deps: c3.0.deps().to_vec(),
        };
        let again =
            crate::bulk::staged_posts_change(&ActorId::from(&w.device().0[..]), &tail, &[(ids[0], None)], 0).unwrap();
        let again_effects = decode_change_effects(again.raw_bytes(), &w.device(), &w.user())
            .unwrap()
            .1;
        assert!(!kept.defer_remote(&again, &again_effects));
        assert!(take(&mut kept, &mut applied, &c3));
        assert!(take(&mut kept, &mut applied, &c4));

        // A reaction that came before its post: the document says how the
        // post shows, so the post is applied.
        let next = MessageId::new(Timestamp::from_millis(1000 + ids.len() as u64 + 1), 1, &channel, tag);
        let react = Op::React {
            msg: next,
            emoji: "+1".into(),
        };
        for doc in [&mut kept, &mut applied] {
            doc.apply_local(&r.user(), &r.device(), std::slice::from_ref(&react), 0)
                .unwrap();
        }
        assert!(!kept.has_deferred(), "a local op brought the kept-out changes in");
        let c5 = change_of(&mut writer, 1, &mut ids);
        assert_eq!(c5.1.posts, vec![next]);
        assert!(!take(&mut kept, &mut applied, &c5));
        kept.apply_remote(vec![c5.0.clone()]).unwrap();
        // An edit does more than post: applied.
        let edit = Op::Edit {
            msg: ids[1],
            text: "edited".into(),
        };
        let bytes = writer.apply_local(&w.user(), &w.device(), &[edit], 0).unwrap().unwrap();
        let (change, effects) = decode_change_effects(&bytes, &w.device(), &w.user()).unwrap();
        assert!(effects.beyond_posts && !kept.defer_remote(&change, &effects));

        // Kept out, then read: the very document applying them gave.
        let c6 = change_of(&mut writer, 4, &mut ids);
        kept.apply_remote(vec![change.clone()]).unwrap();
        applied.apply_remote(vec![change]).unwrap();
        assert!(take(&mut kept, &mut applied, &c6));
        assert_eq!(kept.view(&devices), applied.view(&devices));
        assert!(!kept.has_deferred());
        assert_eq!(kept.heads(), applied.heads());
        assert_eq!(kept.save().unwrap(), applied.save().unwrap());
    }

    /// Posts kept out of automerge ([`Deferred`]) give what staged ones
    /// give: the same changes, texts and pending ops; the same view and
    /// messages once the document is read (deferred changes applied, the
    /// open posts staged); the same snapshot; and a post id is still used
    /// once. Any other op, a remote apply or a save brings them in first.
    #[test]
    fn deferred_posts_reach_the_op_set_when_it_is_read() {
        let me = Identity::generate("me").unwrap();
        let (user, device) = (me.user(), me.device());
        let devices = Devices::from([(device, user)]);
        let channel = ChannelId([3; 32]);
        let tag = writer_tag(&user, &device);
        let mut lazy = EpochDoc::new(1, &device);
        let mut eager = EpochDoc::new(1, &device);
        lazy.set_slot_texts(true);
        eager.set_slot_texts(true);
        let mut ids: Vec<MessageId> = Vec::new();
        let mut n = 0u64;
        let mut post = |ids: &mut Vec<MessageId>| {
            n += 1;
            let reply_to = n.is_multiple_of(4).then(|| ids[ids.len() / 2]);
            numbered_post(&channel, tag, n, reply_to, ids)
        };
        let stage_both = |op: &Op, lazy: &mut EpochDoc, eager: &mut EpochDoc| {
            lazy.stage(&user, &device, op).unwrap();
            eager.tail = None;
            eager.stage(&user, &device, op).unwrap();
            assert_eq!(lazy.pending_ops(), eager.pending_ops());
            assert_eq!(lazy.staged_texts(), eager.staged_texts());
        };
        let commit_both = |lazy: &mut EpochDoc, eager: &mut EpochDoc| {
            let (a, b) = (lazy.commit(0).unwrap().unwrap(), eager.commit(0).unwrap().unwrap());
            assert_eq!(a, b);
            assert_eq!(lazy.take_texts(), eager.take_texts());
        };
        // Three changes of deferred posts: automerge has seen none of them.
        for _ in 0..3 {
            for _ in 0..20 {
                let op = post(&mut ids);
                stage_both(&op, &mut lazy, &mut eager);
            }
            commit_both(&mut lazy, &mut eager);
        }
        assert!(lazy.has_deferred() && !eager.has_deferred());
        assert_eq!(lazy.doc.get_heads(), Vec::new());
        // A post id is used once, deferred or not.
        let again = Op::Post {
            id: ids[3],
            text: "again".into(),
            reply_to: None,
        };
        assert!(lazy.stage(&user, &device, &again).is_err());
        // Posts staged and not committed, then a read: the same view, with
        // every post and its thread.
        for _ in 0..7 {
            let op = post(&mut ids);
            stage_both(&op, &mut lazy, &mut eager);
        }
        assert!(lazy.save().is_err(), "ops are staged");
        let view = lazy.view(&devices);
        assert!(!lazy.has_deferred());
        assert_eq!(view, eager.view(&devices));
        assert_eq!(view.len(), ids.len());
        assert_eq!(lazy.message(&ids[5], &devices), eager.message(&ids[5], &devices));
        assert!(lazy.message(&ids[5], &devices).is_some());
        // The open posts are in automerge now: their change is committed
        // there, and built the same.
        commit_both(&mut lazy, &mut eager);
        // Deferred again; then a reaction brings them in before it.
        let op = post(&mut ids);
        stage_both(&op, &mut lazy, &mut eager);
        commit_both(&mut lazy, &mut eager);
        assert!(lazy.has_deferred());
        let react = Op::React {
            msg: ids[ids.len() - 1],
            emoji: "👍".into(),
        };
        stage_both(&react, &mut lazy, &mut eager);
        assert!(!lazy.has_deferred());
        commit_both(&mut lazy, &mut eager);
        // Deferred once more, then saved: the snapshot holds everything.
        let op = post(&mut ids);
        stage_both(&op, &mut lazy, &mut eager);
        commit_both(&mut lazy, &mut eager);
        let mut loaded = EpochDoc::load(1, &lazy.save().unwrap(), &device).unwrap();
        let mut other = EpochDoc::load(1, &eager.save().unwrap(), &device).unwrap();
        loaded.set_slot_texts(true);
        other.set_slot_texts(true);
        assert_eq!(loaded.heads(), other.heads());
        assert_eq!(lazy.heads(), eager.heads());
        assert_eq!(lazy.view(&devices), eager.view(&devices));
        assert_eq!(lazy.change_count().unwrap(), eager.change_count().unwrap());
    }

    /// A change of posts alone is built from its posts at commit, not
    /// collected from automerge's op set: the same bytes as collected, for
    /// posts and replies; a change with anything else in it is collected,
    /// and so is the first after a remote apply (the chain's place is not
    /// known then), after which changes are built again.
    #[test]
    fn changes_of_posts_are_built_as_automerge_commits_them() {
        let me = Identity::generate("me").unwrap();
        let (user, device) = (me.user(), me.device());
        let channel = ChannelId([3; 32]);
        let tag = writer_tag(&user, &device);
        let mut built = EpochDoc::new(1, &device);
        let mut collected = EpochDoc::new(1, &device);
        built.set_slot_texts(true);
        collected.set_slot_texts(true);
        let mut n = 0;
        let mut ids = Vec::new();
        let mut post = |ids: &mut Vec<MessageId>, i: u64| {
            n += 1;
            let reply_to = (i % 5 == 3).then(|| ids[ids.len() / 2]);
            numbered_post(&channel, tag, n, reply_to, ids)
        };
        let stage_both = |op: &Op, built: &mut EpochDoc, collected: &mut EpochDoc| {
            built.stage(&user, &device, op).unwrap();
            // Nothing known of the chain: staged into automerge, collected.
            collected.tail = None;
            collected.stage(&user, &device, op).unwrap();
        };
        let commit_both = |built: &mut EpochDoc, collected: &mut EpochDoc| {
            let (a, b) = (built.commit(0).unwrap().unwrap(), collected.commit(0).unwrap().unwrap());
            assert_eq!(a, b);
            decode_change_effects(&a, &device, &user).unwrap();
            a
        };
        let mut changes = Vec::new();
        for round in 0..3 {
            for i in 0..(1 + round * 40) {
                let op = post(&mut ids, i);
                stage_both(&op, &mut built, &mut collected);
            }
            changes.push(commit_both(&mut built, &mut collected));
            assert_eq!((built.built_apart, collected.built_apart), (round as usize + 1, 0));
        }
        // A reaction among the posts: collected.
        let op = post(&mut ids, 1);
        stage_both(&op, &mut built, &mut collected);
        let react = Op::React {
            msg: ids[0],
            emoji: "👍".into(),
        };
        stage_both(&react, &mut built, &mut collected);
        changes.push(commit_both(&mut built, &mut collected));
        assert_eq!(built.built_apart, 3);
        // Posts alone again: built.
        let op = post(&mut ids, 1);
        stage_both(&op, &mut built, &mut collected);
        changes.push(commit_both(&mut built, &mut collected));
        assert_eq!(built.built_apart, 4);

        // Another device's change applied: the next change is collected,
        // the one after built again.
        let other = Identity::generate("other").unwrap();
        let mut theirs = EpochDoc::new(1, &other.device());
        theirs.set_slot_texts(true);
        let their_post = Op::Post {
            id: MessageId::new(
                Timestamp::from_millis(5000),
                1,
                &channel,
                writer_tag(&other.user(), &other.device()),
            ),
            text: "theirs".into(),
            reply_to: None,
        };
        theirs.stage(&other.user(), &other.device(), &their_post).unwrap();
        let change = theirs.commit(0).unwrap().unwrap();
        changes.push(change.clone());
        let (change, _) = decode_change_effects(&change, &other.device(), &other.user()).unwrap();
        built.apply_remote(vec![change.clone()]).unwrap();
        collected.apply_remote(vec![change]).unwrap();
        for expect in [4, 5] {
            let op = post(&mut ids, 1);
            stage_both(&op, &mut built, &mut collected);
            changes.push(commit_both(&mut built, &mut collected));
            assert_eq!(built.built_apart, expect);
        }
        // Every change, applied in order to a fresh document, gives the
        // same document: the built ones chain as automerge's own.
        let mut fresh = EpochDoc::new(1, &DeviceId([9; 16]));
        for c in &changes {
            let c = automerge::Change::from_bytes(crate::chunk::plain_change(c).unwrap().into_owned()).unwrap();
            fresh.doc.apply_changes(vec![c]).unwrap();
        }
        assert!(!fresh.has_queued());
        assert_eq!(fresh.heads(), built.heads());
    }

    fn views_match(slots: bool) {
        let me = Identity::generate("me").unwrap();
        let (user, device) = (me.user(), me.device());
        let devices = Devices::from([(device, user)]);
        let channel = ChannelId([3; 32]);
        let mut doc = EpochDoc::new(1, &device);
        doc.set_slot_texts(slots);
        let mut view = EpochView::default();
        let mut ids = Vec::new();
        let mut texts = Vec::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for step in 0..400u64 {
            let pick = |ids: &Vec<MessageId>, r: u64| ids[(r as usize) % ids.len()];
            let op = match (next(8), ids.is_empty()) {
                (_, true) | (0 | 1, _) => {
                    let id = MessageId::new(
                        Timestamp::from_millis(1000 + step),
                        1,
                        &channel,
                        writer_tag(&user, &device),
                    );
                    let root = if next(3) == 0 && !ids.is_empty() {
                        let r: MessageId = pick(&ids, next(1000));
                        Some(view.get(&r).and_then(|m| m.reply_to).unwrap_or(r))
                    } else {
                        None
                    };
                    ids.push(id);
                    Op::Post {
                        id,
                        text: format!("m{step}"),
                        reply_to: root,
                    }
                }
                (2, _) => Op::React {
                    msg: pick(&ids, next(1000)),
                    emoji: ["👍", "🎉"][next(2) as usize].into(),
                },
                (3, _) => Op::Unreact {
                    msg: pick(&ids, next(1000)),
                    emoji: "👍".into(),
                },
                (4, _) => Op::Edit {
                    msg: pick(&ids, next(1000)),
                    text: format!("e{step}"),
                },
                (5, _) => Op::Delete {
                    msg: pick(&ids, next(1000)),
                },
                _ => {
                    // Like the store, only ever move the marker forward: the
                    // document keeps each device's last marker, the view the max.
                    let msg = pick(&ids, next(1000));
                    if view.read_marker(&user) >= Some(msg) {
                        continue;
                    }
                    Op::ReadUpTo { msg }
                }
            };
            doc.stage(&user, &device, &op).unwrap();
            view.apply_local(&user, &op);
            if next(5) == 0 {
                commit_and_check(&mut doc, &user, &device, slots, &mut texts);
            }
        }
        commit_and_check(&mut doc, &user, &device, slots, &mut texts);
        assert_eq!(view, doc.view(&devices));
        let saved = doc.save().unwrap();
        let mut loaded = EpochDoc::load(1, &saved, &device).unwrap();
        // A loaded document holds no texts until it is handed them: its
        // messages show as dropped (deleted ones as deleted).
        let bare = loaded.view(&devices);
        for m in view.messages() {
            let b = bare.get(&m.id).unwrap();
            assert_eq!((b.text.is_none(), b.dropped, b.deleted), (true, !m.deleted, m.deleted));
        }
        loaded.add_texts(texts);
        assert_eq!(view, loaded.view(&devices));
    }

    /// Format 5 texts loaded from their packs show without their messages
    /// known; a delete finds the texts the document names now, and an
    /// edit's older text once the changes attribute it.
    #[test]
    fn texts_loaded_by_slot_show_and_are_found_for_deletes() {
        let me = Identity::generate("me").unwrap();
        let (user, device) = (me.user(), me.device());
        let devices = Devices::from([(device, user)]);
        let channel = ChannelId([3; 32]);
        let mut doc = EpochDoc::new(1, &device);
        doc.set_slot_texts(true);
        let tag = writer_tag(&user, &device);
        let ids: Vec<MessageId> = (0..2)
            .map(|i| MessageId::new(Timestamp::from_millis(1000 + i), 1, &channel, tag))
            .collect();
        let mut all = Vec::new();
        let mut slots = Vec::new();
        let ops = [
            Op::Post {
                id: ids[0],
                text: "first".into(),
                reply_to: None,
            },
            Op::Post {
                id: ids[1],
                text: "second".into(),
                reply_to: None,
            },
            Op::Edit {
                msg: ids[0],
                text: "first, edited".into(),
            },
            Op::Edit {
                msg: ids[0],
                text: "first, edited again".into(),
            },
        ];
        for op in &ops {
            // One change each: the two edits take slot 0 both (the second
            // one's marker is `true`: its key holds `Null` already).
            doc.stage(&user, &device, op).unwrap();
            let change = doc.commit(0).unwrap().unwrap();
            let (_, effects) = decode_change_effects(&change, &device, &user).unwrap();
            slots.extend(effects.slots.iter().map(|(_, m, id)| (*m, *id)));
            all.extend(doc.take_texts());
        }
        assert_eq!(all.len(), 4);
        let view = doc.view(&devices);
        let mut loaded = EpochDoc::load(1, &doc.save().unwrap(), &device).unwrap();
        loaded.add_slot_texts(all.iter().map(|c| (c.id(), c.text.clone())));
        assert!(loaded.unattributed());
        assert_eq!(view, loaded.view(&devices));
        assert_eq!(
            loaded.view(&devices).get(&ids[0]).unwrap().text.as_deref(),
            Some("first, edited again")
        );
        // A loaded text reaches only a slot marker: a content id written as
        // bytes that is a slot text's shows nothing (it would be another
        // message's text on some stores).
        assert_eq!(loaded.held_text(&all[1].id(), &ids[0], true).as_deref(), Some("second"));
        assert_eq!(loaded.held_text(&all[1].id(), &ids[0], false), None);
        // Named now: the post's text and the current edit, not the older one.
        let now = loaded.text_ids(&ids[0]);
        assert_eq!(now.len(), 2);
        assert!(!now.contains(&all[2].id()));
        assert_eq!(loaded.text_ids(&ids[1]), vec![all[1].id()]);
        loaded.attribute(slots);
        assert!(!loaded.unattributed());
        let mut every: Vec<ContentId> = [0, 2, 3].iter().map(|i| all[*i].id()).collect();
        every.sort();
        assert_eq!(loaded.text_ids(&ids[0]), every);
        assert_eq!(loaded.text_messages(), ids.iter().copied().collect());
    }

    /// Commit, take the texts staged, and check that the change names
    /// each by slot, in order (slot mode), or by content id.
    fn commit_and_check(doc: &mut EpochDoc, user: &UserId, device: &DeviceId, slots: bool, all: &mut Vec<Content>) {
        let Some(change) = doc.commit(0).unwrap() else {
            assert!(doc.take_texts().is_empty(), "texts staged, no change");
            return;
        };
        let texts = doc.take_texts();
        let (_, effects) = decode_change_effects(&change, device, user).unwrap();
        let named: Vec<(MessageId, ContentId)> = texts.iter().map(|c| (c.msg, c.id())).collect();
        assert_eq!(effects.texts, named);
        if slots {
            let by_slot: Vec<(u64, MessageId, ContentId)> =
                named.iter().enumerate().map(|(i, (m, c))| (i as u64, *m, *c)).collect();
            assert_eq!(effects.slots, by_slot);
        } else {
            assert!(effects.slots.is_empty());
        }
        all.extend(texts);
    }
}
