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
    ActorId, AutoCommit, Change, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef,
};

use crate::content::{Content, ContentId};
use crate::error::{Error, Result};
use crate::happening::Happening;
use crate::hlc::Timestamp;
use crate::id::{ChannelId, DeviceId, Epoch, MessageId, UserId, writer_tag};
use crate::member::{MemberBody, MemberOp, OpKey, Role, Roster};
use crate::op::{MAX_EMOJI_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES, Op};
use crate::rotation::KeyPackage;
use crate::view::{EpochView, Message};

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
        self.doc.set_actor(ActorId::from(&device.0[..]));
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
        Ok(self.doc.save())
    }

    /// Number of changes in the document.
    pub fn change_count(&mut self) -> Result<usize> {
        self.no_pending()?;
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
                for c in self.pending.drain(staged..) {
                    self.texts.remove(&c.id());
                }
                return Err(e);
            }
        }
        Ok(self.commit(time_ms))
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
        if self.doc.pending_ops() > 0 {
            return Err(Error::invalid("epoch document", "ops are staged; commit them first"));
        }
        Ok(())
    }

    /// Apply one local op to the document without closing the change: the view
    /// functions see it at once, and [`EpochDoc::commit`] later seals every staged
    /// op into one change (group commit at the CRDT level).
    pub fn stage(&mut self, author: &UserId, device: &DeviceId, op: &Op) -> Result<()> {
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
        let user = author.to_hex();
        if let Op::Post { id, .. } = op {
            // What decode_change refuses for the writer, stage refuses too:
            // an id minted for another writer, or one already used.
            if id.writer() != writer_tag(author, device) {
                return Err(Error::invalid("message id", "minted for another writer"));
            }
            if self.doc.get(ROOT, format!("m:{id}").as_str())?.is_some() {
                return Err(Error::invalid("message id", "already used"));
            }
        }
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
                let m = d.put_object(ROOT, format!("m:{id}"), ObjType::Map)?;
                d.put(&m, "t", text.expect("a post stages its text"))?;
                if let Some(root) = reply_to {
                    d.put(&m, "p", root.to_hex())?;
                }
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
        self.doc.pending_ops()
    }

    /// Close the staged ops into one change and return its bytes (compressed), or
    /// `None` if nothing was staged.
    pub fn commit(&mut self, time_ms: i64) -> Option<Vec<u8>> {
        self.doc.commit_with(CommitOptions::default().with_time(time_ms))?;
        let mut change = self.doc.get_last_local_change().expect("a change was just committed");
        Some(change.bytes().into_owned())
    }

    /// Apply a batch of remote changes in one automerge call (never one call per
    /// change: each call costs time proportional to the document).
    ///
    /// automerge 0.12 panics on some changes that decode cleanly (an op naming an
    /// actor the document has never seen; found by fuzzing:
    /// fuzz/corpus/change/crash-unknown-other-actor-*). Such a panic becomes an
    /// error, and the document refuses further use ([`EpochDoc::is_broken`]):
    /// the caller drops it and loads the epoch again.
    pub fn apply_remote(&mut self, changes: Vec<Change>) -> Result<()> {
        self.no_pending()?;
        let doc = &mut self.doc;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.apply_changes(changes))) {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.broken = true;
                Err(Error::corrupted("automerge change", "automerge could not apply it"))
            }
        }
    }

    /// The document's heads.
    #[cfg(test)]
    pub(crate) fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        self.doc.get_heads()
    }

    /// Whether changes wait in automerge's queue for dependencies not applied yet.
    pub fn has_queued(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// Update `view` for what applied changes touched (see [`ChangeEffects`]),
    /// instead of rebuilding it: the cost is per touched message, whatever the
    /// epoch's size. Metadata changes need a rebuild ([`EpochDoc::view`]).
    pub fn refresh_view(&self, view: &mut EpochView, effects: &ChangeEffects, devices: &Devices) {
        for id in &effects.messages {
            if let Some(m) = self.message(id, devices) {
                view.insert(m);
            }
        }
        if effects.read_markers {
            for item in self.doc.map_range(ROOT, "rd:".to_string().."rd;".to_string()) {
                if let Some(rest) = item.key.strip_prefix("rd:") {
                    read_marker(view, rest, &item.value, self.author(&item.id(), devices));
                }
            }
        }
    }

    /// Whether an apply failed half-way; a broken document must be dropped.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Build the full view of this epoch in one pass over the root keys.
    ///
    /// Keys whose value is in conflict (concurrent writes) take the slow path
    /// through `get_all`, which applies the writer checks to every candidate.
    pub fn view(&self, devices: &Devices) -> EpochView {
        let mut view = EpochView::default();
        let mut slow: Vec<MessageId> = Vec::new();
        let mut posts: Vec<Message> = Vec::new();
        let mut edits: HashMap<(MessageId, UserId), Option<String>> = HashMap::new();
        let mut deletes: HashSet<(MessageId, UserId)> = HashSet::new();
        // Messages deleted by a moderator (an admin or owner).
        let mut moderated: HashSet<MessageId> = HashSet::new();
        let mut reactions: Vec<(MessageId, UserId, String)> = Vec::new();
        for item in self.doc.map_range(ROOT, ..) {
            let key: &str = &item.key;
            let Some((kind, rest)) = key.split_once(':') else {
                continue;
            };
            let id = item.id();
            let w = self.author(&id, devices);
            match kind {
                "m" => {
                    let Ok(msg) = rest.parse::<MessageId>() else { continue };
                    match (item.conflict, self.fast_post(&msg, &id, devices)) {
                        (false, Some(m)) => posts.push(m),
                        _ => slow.push(msg),
                    }
                }
                "e" | "x" => {
                    let Some((msg, user)) = rest.split_once(':') else {
                        continue;
                    };
                    let (Ok(msg), Ok(user)) = (msg.parse::<MessageId>(), user.parse::<UserId>()) else {
                        continue;
                    };
                    if item.conflict || w != Some(user) {
                        // Rare (concurrent writes, a cut): resolved per message
                        // on the slow path below.
                        slow.push(msg);
                    } else if kind == "x" {
                        if self.moderators.contains(&user) {
                            moderated.insert(msg);
                        }
                        deletes.insert((msg, user));
                    } else if let Some(text) = text_ref(&item.value, &item.id()).and_then(|r| self.resolve(r, &msg)) {
                        edits.insert((msg, user), text);
                    }
                }
                "r" => {
                    let mut parts = rest.splitn(3, ':');
                    let (Some(msg), Some(user), Some(emoji)) = (parts.next(), parts.next(), parts.next()) else {
                        continue;
                    };
                    let (Ok(msg), Ok(user)) = (msg.parse::<MessageId>(), user.parse::<UserId>()) else {
                        continue;
                    };
                    if item.conflict || self.cut_of(&id).is_some() {
                        slow.push(msg);
                    } else if w == Some(user) {
                        reactions.push((msg, user, emoji.to_string()));
                    }
                }
                "rd" => read_marker(&mut view, rest, &item.value, w),
                "dl" => {
                    let mut parts = rest.splitn(3, ':');
                    let (Some(user), Some(device), Some(writer_dev)) = (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let (Ok(user), Ok(device), Ok(writer_dev), Some(Ok(msg))) = (
                        user.parse::<UserId>(),
                        device.parse::<DeviceId>(),
                        writer_dev.parse::<DeviceId>(),
                        value_str(&item.value).map(str::parse::<MessageId>),
                    ) else {
                        continue;
                    };
                    if w == Some(user) && id_device(&id) == Some(device) {
                        view.mark_delivered(user, device, writer_dev, msg);
                    }
                }
                _ => {}
            }
        }
        for mut m in posts {
            let deleted = deletes.contains(&(m.id, m.author)) || moderated.contains(&m.id);
            if edits.contains_key(&(m.id, m.author)) || deleted {
                if deleted {
                    m.text = None;
                    m.deleted = true;
                    m.dropped = false;
                } else {
                    m.text = edits.remove(&(m.id, m.author)).flatten();
                    m.dropped = m.text.is_none();
                    m.edited = true;
                }
            }
            view.insert(m);
        }
        for (msg, user, emoji) in reactions {
            view.add_reaction(&msg, user, emoji);
        }
        for id in slow {
            if let Some(m) = self.message(&id, devices) {
                view.insert(m);
            }
        }
        self.read_meta(&mut view, devices);
        view
    }

    /// A message map as it was posted (no edits, deletes or reactions applied),
    /// if its fields are free of conflicts; `None` sends it to the slow path.
    fn fast_post(&self, id: &MessageId, obj: &ObjId, devices: &Devices) -> Option<Message> {
        let author = self.author(obj, devices)?;
        let ObjId::Id(_, actor, _) = obj else { return None };
        if writer_tag(&author, &device_of(actor)?) != id.writer() {
            return None;
        }
        let (mut text, mut reply_to) = (None, None);
        for f in self.doc.map_range(obj, ..) {
            if f.conflict || self.author(&f.id(), devices) != Some(author) {
                return None;
            }
            match &*f.key {
                "t" => text = Some(self.resolve(text_ref(&f.value, &f.id())?, id)?),
                "p" => reply_to = Some(value_str(&f.value)?.parse().ok()?),
                _ => {}
            }
        }
        let text = text?;
        Some(Message {
            id: *id,
            author,
            dropped: text.is_none(),
            text,
            reply_to,
            edited: false,
            deleted: false,
            reactions: BTreeMap::new(),
            reply_count: 0,
        })
    }

    /// The channel's name: the newest value by any member whose op is not
    /// cut; one written past a cut gives way to the one before it.
    fn named(&self, devices: &Devices) -> Option<Value<'_>> {
        let (value, id) = self.doc.get(ROOT, "name").ok()??;
        if self.author(&id, devices).is_some() {
            return Some(value);
        }
        self.before_cut("name", self.cut_of(&id)?, devices, |w| w.is_some())
            .map(|(v, _)| v)
    }

    fn read_meta(&self, view: &mut EpochView, devices: &Devices) {
        if let Some(Value::Scalar(s)) = self.named(devices)
            && let ScalarValue::Str(name) = s.as_ref()
        {
            view.name = Some(name.to_string());
        }
        for item in self.doc.map_range(ROOT, "n:".to_string().."n;".to_string()) {
            if let Ok(user) = item.key[2..].parse::<UserId>()
                && let Some(Value::Scalar(s)) = self.authored_value(&item.key, &user, devices)
                && let ScalarValue::Str(name) = s.as_ref()
            {
                view.names.insert(user, name.to_string());
            }
        }
        view.roster = self.roster(devices);
        view.retention = self.retention(devices, &view.roster);
    }

    /// The channel's retention (metadata epoch): of each user's setting its
    /// own signed feed vouches for, those of admins and owners (or of
    /// anyone, while the channel has no roster), the one of the latest
    /// clock (then the greatest user id) stands; 0 seconds is none.
    fn retention(&self, devices: &Devices, roster: &Roster) -> Option<u64> {
        let mut best: Option<(u64, UserId, u64)> = None;
        for item in self.doc.map_range(ROOT, "ret:".to_string().."ret;".to_string()) {
            let Ok(user) = item.key[4..].parse::<UserId>() else {
                continue;
            };
            let allowed = roster.genesis.is_none() || matches!(roster.role(&user), Some(Role::Owner | Role::Admin));
            if !allowed {
                continue;
            }
            if let Some(Value::Scalar(s)) = self.authored_value(&item.key, &user, devices)
                && let ScalarValue::Bytes(b) = s.as_ref()
                && let (Some(secs), Some(at)) = (b.get(..8), b.get(8..16))
            {
                let secs = u64::from_be_bytes(secs.try_into().expect("8 bytes"));
                let at = u64::from_be_bytes(at.try_into().expect("8 bytes"));
                if best.is_none_or(|(a, u, _)| (at, user) > (a, u)) {
                    best = Some((at, user, secs));
                }
            }
        }
        best.map(|(_, _, secs)| secs).filter(|s| *s > 0)
    }

    /// Every byte value under `<kind>:<user>:<device>:<n>` (metadata epoch)
    /// whose writer's signed feed vouches for it, as `(user, device, n,
    /// bytes)`: membership ops and key packages are both kept so.
    fn authored_records(&self, kind: &str, devices: &Devices) -> Vec<(UserId, DeviceId, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for item in self.doc.map_range(ROOT, format!("{kind}:")..format!("{kind};")) {
            let parts: Vec<&str> = item.key.splitn(4, ':').collect();
            let [_, user, device, n] = parts.as_slice() else {
                continue;
            };
            let (Ok(user), Ok(device), Ok(n)) = (user.parse::<UserId>(), device.parse::<DeviceId>(), n.parse::<u32>())
            else {
                continue;
            };
            let id = item.id();
            if writer(&id, devices) != Some(user) || id_device(&id) != Some(device) {
                continue;
            }
            if let ValueRef::Scalar(ScalarValueRef::Bytes(bytes)) = &item.value {
                out.push((user, device, n, bytes.to_vec()));
            }
        }
        out
    }

    /// Every key package of the channel (metadata epoch) whose writer's signed
    /// feed vouches for it: writer, device, number, package.
    pub fn key_packages(&self, devices: &Devices) -> Vec<(UserId, DeviceId, u32, KeyPackage)> {
        self.authored_records("kp", devices)
            .into_iter()
            .filter_map(|(user, device, n, bytes)| Some((user, device, n, KeyPackage::decode(&bytes).ok()?)))
            .collect()
    }

    /// The channel's roster (metadata epoch): every membership op its writer's
    /// signed feed vouches for, folded ([`Roster::fold`]).
    pub fn roster(&self, devices: &Devices) -> Roster {
        let ops = self
            .authored_records("mo", devices)
            .into_iter()
            .filter_map(|(user, device, n, bytes)| {
                Some(MemberOp {
                    key: OpKey { device, n },
                    author: user,
                    body: MemberBody::decode(&bytes).ok()?,
                })
            })
            .collect();
        Roster::fold_with(ops, &self.issuers)
    }

    /// Materialise one message, or `None` if it does not exist (or was written by
    /// a device no signed header vouches for).
    pub fn message(&self, id: &MessageId, devices: &Devices) -> Option<Message> {
        // Among concurrent maps under this key, the message is the one whose
        // creating device and user hash to the id's writer tag; any other is a
        // forgery that must neither show nor hide the real one.
        let candidates = self.doc.get_all(ROOT, format!("m:{id}")).ok()?;
        let (author, obj) = candidates.into_iter().rev().find_map(|(value, obj)| {
            if !matches!(value, Value::Object(ObjType::Map)) {
                return None;
            }
            let author = self.author(&obj, devices)?;
            let ObjId::Id(_, actor, _) = &obj else { return None };
            (writer_tag(&author, &device_of(actor)?) == id.writer()).then_some((author, obj))
        })?;
        let field = |name: &str| -> Option<(Value<'_>, ObjId)> {
            let all = self.doc.get_all(&obj, name).ok()?;
            all.into_iter()
                .rev()
                .find(|(_, w)| self.author(w, devices) == Some(author))
        };
        let (t, at) = field("t")?;
        let original = self.resolve(text_of(&t, &at)?, id)?;
        let reply_to = field("p").and_then(|(p, _)| p.as_str().and_then(|p| p.parse().ok()));
        let a = author.to_hex();
        let deleted = self.authored_value(&format!("x:{id}:{a}"), &author, devices).is_some()
            || self.moderators.iter().any(|u| {
                self.authored_value(&format!("x:{id}:{}", u.to_hex()), u, devices)
                    .is_some()
            });
        let edit = self
            .authored(&format!("e:{id}:{a}"), &author, devices)
            .and_then(|(v, at)| self.resolve(text_of(&v, &at)?, id));
        let current = match &edit {
            Some(e) => e.clone(),
            None => original,
        };
        let mut reactions: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
        if !deleted {
            let prefix = format!("r:{id}:");
            let end = format!("r:{id};");
            for item in self.doc.map_range(ROOT, prefix.clone()..end) {
                let Some((user, emoji)) = item.key[prefix.len()..].split_once(':') else {
                    continue;
                };
                let Ok(user) = user.parse::<UserId>() else { continue };
                let id = item.id();
                let counts = if self.cut_of(&id).is_some() {
                    // Reacted again past a cut: it counts if it did before.
                    self.authored_value(&item.key, &user, devices).is_some()
                } else {
                    writer(&id, devices) == Some(user)
                };
                if counts {
                    reactions.entry(emoji.to_string()).or_default().insert(user);
                }
            }
        }
        Some(Message {
            id: *id,
            author,
            text: if deleted { None } else { current.clone() },
            dropped: !deleted && current.is_none(),
            reply_to,
            edited: edit.is_some() && !deleted,
            deleted,
            reactions,
            reply_count: 0,
        })
    }
}

/// Decode a change from a feed entry and check that it only does what its writer
/// may do: written under the feed's device (actor), and touching only keys that
/// belong to the writer (see the table in the module docs). Checking the ops,
/// not only the visible values, is what stops a member from *removing* someone
/// else's reaction or overwriting their message: a forged delete or overwrite
/// never becomes visible as a value, so a view-time filter cannot catch it.
pub fn decode_change(bytes: &[u8], device: &DeviceId, user: &UserId) -> Result<Change> {
    decode_change_posts(bytes, device, user).map(|(c, _)| c)
}

/// [`decode_change`], also returning the ids of the messages the change creates
/// (in the order of its ops).
pub fn decode_change_posts(bytes: &[u8], device: &DeviceId, user: &UserId) -> Result<(Change, Vec<MessageId>)> {
    decode_change_effects(bytes, device, user).map(|(c, e)| (c, e.posts))
}

/// A text a format 5 change names by slot: (slot, message, id).
pub type SlotRef = (u64, MessageId, ContentId);

/// What a change touches, so that a view can be updated for just that
/// ([`EpochDoc::refresh_view`]) instead of rebuilt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeEffects {
    /// Messages the change creates, in op order.
    pub posts: Vec<MessageId>,
    /// Messages whose text, edit, deletion or reactions it touches (posts included).
    pub messages: BTreeSet<MessageId>,
    /// It moves a read marker.
    pub read_markers: bool,
    /// It touches channel metadata (name, display names, delivery receipts).
    pub meta: bool,
    /// The key packages it writes (sealed channel keys), so that a receiver
    /// can take its keys before opening the entries sealed under them.
    pub packages: Vec<KeyPackage>,
    /// Message ids that must lie in the entry's epoch: posts, the targets of
    /// edits, deletes and reactions, reply roots, read markers.
    pub placed: Vec<MessageId>,
    /// Other message ids it names (delivery receipts), of any epoch.
    pub mentioned: Vec<MessageId>,
    /// The texts it names by content id (posts and edits, format 9), with
    /// their message: what its entry's segments may carry.
    pub texts: Vec<(MessageId, ContentId)>,
    /// The texts it names by slot (entry format 5: [`crate::textpack`]):
    /// (slot, message, id), in op order (a text's slot is its place among
    /// them); their ids are in `texts` too.
    pub slots: Vec<SlotRef>,
    /// The posts it makes that reply to another message.
    pub replies: Vec<MessageId>,
    /// Those replies with the root each names, as (reply, root).
    pub reply_roots: Vec<(MessageId, MessageId)>,
    /// It does more than make posts that name their texts by id or slot:
    /// an edit, delete, reaction, read marker, receipt, metadata or key
    /// package, a text written inline, or a field of a message another
    /// change made. A view of changes that do no more can be built from
    /// their effects alone (`posts`, `texts`, `reply_roots`).
    pub beyond_posts: bool,
    /// It deletes a message, or sets what a message another change made
    /// replies to: an epoch's counts and bounds move other than by its posts.
    pub recounts: bool,
    /// What it says happened besides its posts, in op order: edits,
    /// deletes, reactions, read markers, names, joins and removals.
    pub happenings: Vec<crate::Happening>,
}

impl ChangeEffects {
    /// Add what another change touches.
    pub fn merge(&mut self, other: ChangeEffects) {
        self.posts.extend(other.posts);
        self.messages.extend(other.messages);
        self.read_markers |= other.read_markers;
        self.meta |= other.meta;
        self.packages.extend(other.packages);
        self.placed.extend(other.placed);
        self.mentioned.extend(other.mentioned);
        self.texts.extend(other.texts);
        self.slots.extend(other.slots);
        self.replies.extend(other.replies);
        self.reply_roots.extend(other.reply_roots);
        self.recounts |= other.recounts;
        self.beyond_posts |= other.beyond_posts;
        self.happenings.extend(other.happenings);
    }

    /// Whether an epoch's counts and bounds
    /// ([`EpochStats`](crate::EpochStats)) move by the change's posts alone:
    /// it makes posts (replies included), edits and reactions, and no
    /// delete, read marker, metadata or key package. A store can take such
    /// changes into an epoch nobody reads yet without applying them.
    pub fn counted_by_posts(&self) -> bool {
        !self.recounts && !self.meta && !self.read_markers && self.packages.is_empty()
    }

    /// Check that every message id the change names belongs where its entry
    /// says: in this channel (its tag), posts and what they touch in the
    /// entry's epoch (messages live from epoch 1), and no post stamped after
    /// `latest` (the receiver's clock plus the allowed skew), so that a peer
    /// cannot drag every receiver's clock forward.
    pub fn check_place(&self, epoch: Epoch, channel: &ChannelId, latest: Timestamp) -> Result<()> {
        let bad = |why: String| Err(Error::corrupted("automerge change", why));
        let tag = channel.tag();
        for id in self.placed.iter().chain(&self.mentioned) {
            if id.channel_tag() != tag {
                return bad(format!("message {id} is of another channel"));
            }
        }
        for id in &self.placed {
            if id.epoch() != epoch || epoch == crate::META_EPOCH {
                return bad(format!("message {id} is not of epoch {epoch}"));
            }
        }
        for id in &self.posts {
            if id.timestamp() > latest {
                return bad(format!(
                    "message {id} is stamped {} ms ahead of this device's clock and the allowed skew",
                    id.timestamp().millis().saturating_sub(latest.millis())
                ));
            }
        }
        Ok(())
    }
}

/// [`decode_change`], also returning what the change touches.
pub fn decode_change_effects(bytes: &[u8], device: &DeviceId, user: &UserId) -> Result<(Change, ChangeEffects)> {
    // Compressed changes are inflated here, under a cap (crate::chunk).
    let plain = crate::chunk::plain_change(bytes)?;
    // automerge 0.12 (its column decoder, hexane) panics on some crafted
    // changes instead of failing (found by fuzzing:
    // fuzz/corpus/change/crash-hexane-leb128-eof): an error here.
    let plain = plain.into_owned();
    let change = std::panic::catch_unwind(move || Change::from_bytes(plain))
        .map_err(|_| Error::corrupted("automerge change", "malformed columns"))?
        .map_err(|e| Error::corrupted("automerge change", e))?;
    if change.actor_id().to_bytes() != device.0 {
        return Err(Error::corrupted("automerge change", "actor is not the feed's device"));
    }
    // automerge 0.12 panics on some malformed changes that `from_bytes` accepts
    // (an op naming an actor index the change does not list): found by fuzzing,
    // pinned by fuzz/corpus/change. Untrusted bytes must give an error instead.
    let expanded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
        .map_err(|_| Error::corrupted("automerge change", "malformed operations"))?;
    // Only the canonical encoding of what the ops say: no extra bytes, no message
    // or author fields (Hearth never writes them), nothing automerge keeps but
    // does not understand. A change with unknown columns applied fine yet made
    // its epoch's snapshot unloadable (fuzz/corpus/change/crash-accepted-*).
    if !expanded.extra_bytes.is_empty() || expanded.message.is_some() || expanded.author.is_some() {
        return Err(Error::corrupted("automerge change", "fields Hearth does not write"));
    }
    let writer = Writer::new(user, device);
    let mut effects = ChangeEffects::default();
    // The message maps this change makes, by op counter: a text id put in
    // one is that message's.
    let mut made: HashMap<u64, MessageId> = HashMap::new();
    let start = expanded.start_op.get();
    for (i, op) in expanded.operations.iter().enumerate() {
        if let (ObjectId::Root, Key::Map(k)) = (&op.obj, &op.key) {
            let (kind, rest) = k.split_once(':').unwrap_or((k.as_str(), ""));
            let id = rest.split(':').next().and_then(|id| id.parse::<MessageId>().ok());
            effects.beyond_posts |= kind != "m";
            match (kind, id) {
                ("m", Some(id)) => {
                    made.insert(start + i as u64, id);
                    effects.posts.push(id);
                    effects.messages.insert(id);
                    effects.placed.push(id);
                }
                ("e" | "x" | "r", Some(id)) => {
                    effects.recounts |= kind == "x";
                    let happened = match kind {
                        "e" => Happening::Edited(id),
                        "x" => Happening::Deleted(id),
                        _ => Happening::Reacted {
                            msg: id,
                            // r:<message>:<user>:<emoji>; check_root_op checks the parts.
                            emoji: k.splitn(4, ':').nth(3).unwrap_or_default().to_string(),
                            added: !matches!(op.action, OpType::Delete),
                        },
                    };
                    // An edit is one op, or two (a slot marker and its text).
                    if effects.happenings.last() != Some(&happened) {
                        effects.happenings.push(happened);
                    }
                    effects.messages.insert(id);
                    effects.placed.push(id);
                    if let ("e", OpType::Put(ScalarValue::Bytes(b))) = (kind, &op.action)
                        && let Some(c) = ContentId::from_slice(b)
                    {
                        effects.texts.push((id, c));
                    }
                    if kind == "e" && is_slot_marker(&op.action) {
                        let c = ContentId::of_op(&device.0, start + i as u64);
                        effects.texts.push((id, c));
                        effects.slots.push((effects.slots.len() as u64, id, c));
                    }
                }
                ("rd", _) => {
                    effects.read_markers = true;
                    if let OpType::Put(ScalarValue::Str(s)) = &op.action {
                        let msg = parse_id(s)?;
                        effects.placed.push(msg);
                        effects.happenings.push(Happening::ReadUpTo(msg));
                    }
                }
                ("name", _) => {
                    effects.meta = true;
                    if let OpType::Put(ScalarValue::Str(s)) = &op.action {
                        effects.happenings.push(Happening::Renamed(s.to_string()));
                    }
                }
                ("mo", _) => {
                    effects.meta = true;
                    if let OpType::Put(ScalarValue::Bytes(b)) = &op.action
                        && let Ok(body) = MemberBody::decode(b)
                        && let Some(h) = Happening::of_member_op(user, &body)
                    {
                        effects.happenings.push(h);
                    }
                }
                ("kp", _) => {
                    effects.meta = true;
                    if let OpType::Put(ScalarValue::Bytes(b)) = &op.action
                        && let Ok(p) = KeyPackage::decode(b)
                    {
                        effects.packages.push(p);
                    }
                }
                ("dl", _) => {
                    effects.meta = true;
                    if let OpType::Put(ScalarValue::Str(s)) = &op.action {
                        effects.mentioned.push(parse_id(s)?);
                    }
                }
                _ => effects.meta = true,
            }
        }
        if op.insert {
            return Err(Error::corrupted(
                "automerge change",
                "sequence insert in a chat document",
            ));
        }
        match (&op.obj, &op.key) {
            (ObjectId::Root, Key::Map(k)) => check_root_op(k, &op.action, op.pred.len(), &writer)?,
            (ObjectId::Id(id), Key::Map(k)) if id.actor() == change.actor_id() => match (k.as_str(), &op.action) {
                ("t", OpType::Put(ScalarValue::Str(t))) => {
                    check_len("message text", t, MAX_TEXT_BYTES)?;
                    effects.beyond_posts = true;
                }
                ("t", OpType::Put(ScalarValue::Bytes(b))) => {
                    let (Some(c), Some(msg)) = (ContentId::from_slice(b), made.get(&id.counter())) else {
                        return Err(Error::corrupted(
                            "automerge change",
                            "a text id that is no content id of a post it makes",
                        ));
                    };
                    effects.texts.push((*msg, c));
                }
                ("t", action) if is_slot_marker(action) => {
                    let Some(msg) = made.get(&id.counter()) else {
                        return Err(Error::corrupted("automerge change", "a text slot in no post it makes"));
                    };
                    let c = ContentId::of_op(&device.0, start + i as u64);
                    effects.texts.push((*msg, c));
                    effects.slots.push((effects.slots.len() as u64, *msg, c));
                }
                ("p", OpType::Put(ScalarValue::Str(p))) => {
                    let root = parse_id(p)?;
                    effects.placed.push(root);
                    match made.get(&id.counter()) {
                        Some(msg) => {
                            effects.replies.push(*msg);
                            effects.reply_roots.push((*msg, root));
                        }
                        None => {
                            effects.recounts = true;
                            effects.beyond_posts = true;
                        }
                    }
                }
                _ => return Err(Error::corrupted("automerge change", "unexpected field in a message")),
            },
            _ => {
                return Err(Error::corrupted(
                    "automerge change",
                    "writes into an object of another device",
                ));
            }
        }
    }
    // Re-encoded from the ops (moved: they were read above), it must give
    // the very bytes received.
    let canonical = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Change::from(expanded)))
        .map_err(|_| Error::corrupted("automerge change", "malformed operations"))?;
    if canonical.raw_bytes() != change.raw_bytes() {
        return Err(Error::corrupted("automerge change", "not in canonical encoding"));
    }
    Ok((change, effects))
}

/// The writer a change's root keys must name, as those keys spell it
/// (worked out once a change, not once an op).
struct Writer {
    me: String,
    dev: String,
    tag: [u8; 8],
}

impl Writer {
    fn new(user: &UserId, device: &DeviceId) -> Self {
        Writer {
            me: user.to_hex(),
            dev: device.to_hex(),
            tag: writer_tag(user, device),
        }
    }
}

fn parse_id(s: &str) -> Result<MessageId> {
    s.parse()
        .map_err(|_| Error::corrupted("automerge change", "malformed message id in a value"))
}

fn check_len(what: &'static str, s: &str, limit: usize) -> Result<()> {
    if s.len() > limit {
        return Err(Error::TooLarge {
            what,
            size: s.len(),
            limit,
        });
    }
    Ok(())
}

fn check_root_op(key: &str, action: &OpType, preds: usize, writer: &Writer) -> Result<()> {
    let (me, dev) = (writer.me.as_str(), writer.dev.as_str());
    let bad = |why: &str| Err(Error::corrupted("automerge change", why));
    let text = match action {
        OpType::Put(ScalarValue::Str(s)) => Some(s.as_str()),
        _ => None,
    };
    let is_str = text.is_some();
    // A text: the text itself (before format 9), or the content id of a segment.
    let is_text =
        is_str || matches!(action, OpType::Put(ScalarValue::Bytes(b)) if b.len() == 16) || is_slot_marker(action);
    let is_true = matches!(action, OpType::Put(ScalarValue::Boolean(true)));
    // The local size limits hold for every writer's ops.
    let sized = |what: &'static str, limit: usize| text.map_or(Ok(()), |t| check_len(what, t, limit));
    // At most four parts, without a Vec an op.
    let mut split = key.splitn(4, ':');
    let mut buf = [""; 4];
    let mut n = 0;
    for (slot, part) in buf.iter_mut().zip(&mut split) {
        *slot = part;
        n += 1;
    }
    let parts = &buf[..n];
    match parts {
        ["name"] | ["n", _] => sized("name", MAX_NAME_BYTES)?,
        ["e", ..] => sized("edited text", MAX_TEXT_BYTES)?,
        ["r", _, _, emoji] if emoji.len() > MAX_EMOJI_BYTES => return bad("reaction longer than the emoji limit"),
        _ => {}
    }
    if let ["e" | "x" | "r", id, ..] = parts
        && id.parse::<MessageId>().is_err()
    {
        return bad("malformed message id");
    }
    let ok = match parts {
        ["name"] => is_str,
        ["m", id] => {
            // A message is created once by its author's device and never replaced.
            let Ok(id) = id.parse::<MessageId>() else {
                return bad("malformed message id");
            };
            matches!(action, OpType::Make(ObjType::Map)) && preds == 0 && id.writer() == writer.tag
        }
        ["e", _, u] => *u == me && is_text,
        ["n", u] => *u == me && is_str,
        ["x", _, u] => *u == me && is_true,
        ["r", _, u, emoji] => *u == me && !emoji.is_empty() && (is_true || matches!(action, OpType::Delete)),
        ["rd", u, d] => *u == me && *d == dev && is_str,
        ["ret", u] => *u == me && matches!(action, OpType::Put(ScalarValue::Bytes(b)) if b.len() == 16),
        ["dl", u, d, w] => *u == me && *d == dev && w.parse::<DeviceId>().is_ok() && is_str,
        ["kp", u, d, n] => {
            // A key package is written once, by the device it names.
            *u == me
                && *d == dev
                && n.parse::<u32>().is_ok_and(|n| n > 0)
                && preds == 0
                && matches!(action, OpType::Put(ScalarValue::Bytes(b)) if KeyPackage::decode(b).is_ok())
        }
        ["mo", u, d, n] => {
            // A membership op is written once, by the device it names.
            *u == me
                && *d == dev
                && n.parse::<u32>().is_ok_and(|n| n > 0)
                && preds == 0
                && matches!(action, OpType::Put(ScalarValue::Bytes(b)) if MemberBody::decode(b).is_ok())
        }
        _ => return bad("unknown key"),
    };
    if ok {
        Ok(())
    } else {
        bad("key does not belong to the writer")
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
            let change = doc.commit(0).unwrap();
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
        let Some(change) = doc.commit(0) else {
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
