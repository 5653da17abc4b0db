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
//! | `x:<msg>:<user>`                 | `true` (tombstone)             | the author      |
//! | `r:<msg>:<user>:<emoji>`         | `true`; deleted on unreact     | the reactor     |
//! | `rd:<user>:<device>`             | id of the newest message read  | that device     |
//! | `name` (epoch 0)                 | channel name, last writer wins | any member      |
//! | `n:<user>` (epoch 0)             | the user's display name        | that user       |
//!
//! Authorship is never taken from a value: it is the automerge actor (= device)
//! of the op that wrote it, mapped to a user through [`Devices`], which the store
//! fills from signed feed headers. A value under a key that names another user is
//! ignored, so a member cannot edit, delete or react for somebody else.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef,
};

use crate::error::{Error, Result};
use crate::id::{DeviceId, Epoch, MessageId, UserId, writer_tag};
use crate::op::Op;
use crate::view::{EpochView, Message};

/// Which user each device (automerge actor) belongs to, as proven by signed feed
/// headers. Values written by unknown actors are ignored.
pub type Devices = HashMap<DeviceId, UserId>;

/// One epoch of one channel.
pub struct EpochDoc {
    epoch: Epoch,
    doc: AutoCommit,
}

fn device_of(actor: &ActorId) -> Option<DeviceId> {
    DeviceId::from_slice(actor.to_bytes()).ok()
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

impl EpochDoc {
    /// An empty epoch document written by `device`.
    pub fn new(epoch: Epoch, device: &DeviceId) -> Self {
        let doc = AutoCommit::new().with_actor(ActorId::from(&device.0[..]));
        EpochDoc { epoch, doc }
    }

    /// Load a saved document (a snapshot).
    pub fn load(epoch: Epoch, bytes: &[u8], device: &DeviceId) -> Result<Self> {
        let doc = AutoCommit::load(bytes)
            .map_err(|e| Error::corrupted("epoch snapshot", e))?
            .with_actor(ActorId::from(&device.0[..]));
        Ok(EpochDoc { epoch, doc })
    }

    /// The epoch number.
    pub fn epoch(&self) -> Epoch {
        self.epoch
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
        for op in ops {
            if let Err(e) = self.stage(author, device, op) {
                self.doc.rollback();
                return Err(e);
            }
        }
        Ok(self.commit(time_ms))
    }

    /// automerge closes an open change on save, apply and history reads; staged
    /// ops would then never come back from [`EpochDoc::commit`]. Refuse instead.
    fn no_pending(&self) -> Result<()> {
        if self.doc.pending_ops() > 0 {
            return Err(Error::invalid("epoch document", "ops are staged; commit them first"));
        }
        Ok(())
    }

    /// Apply one local op to the document without closing the change: the view
    /// functions see it at once, and [`EpochDoc::commit`] later seals every staged
    /// op into one change (group commit at the CRDT level).
    pub fn stage(&mut self, author: &UserId, device: &DeviceId, op: &Op) -> Result<()> {
        op.validate()?;
        if op.epoch() != self.epoch {
            return Err(Error::invalid("op", "op does not belong to this epoch"));
        }
        let user = author.to_hex();
        let d = &mut self.doc;
        match op {
            Op::CreateChannel { name } | Op::Rename { name } => {
                d.put(ROOT, "name", name.as_str())?;
            }
            Op::SetName { name } => {
                d.put(ROOT, format!("n:{user}"), name.as_str())?;
            }
            Op::Post { id, text, reply_to } => {
                // What decode_change refuses for the writer, stage refuses too:
                // an id minted for another writer, or one already used.
                if id.writer() != writer_tag(author, device) {
                    return Err(Error::invalid("message id", "minted for another writer"));
                }
                let key = format!("m:{id}");
                if d.get(ROOT, key.as_str())?.is_some() {
                    return Err(Error::invalid("message id", "already used"));
                }
                let m = d.put_object(ROOT, key, ObjType::Map)?;
                d.put(&m, "t", text.as_str())?;
                if let Some(root) = reply_to {
                    d.put(&m, "p", root.to_hex())?;
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
            Op::Edit { msg, text } => {
                d.put(ROOT, format!("e:{msg}:{user}"), text.as_str())?;
            }
            Op::Delete { msg } => {
                d.put(ROOT, format!("x:{msg}:{user}"), true)?;
            }
            Op::ReadUpTo { msg } => {
                d.put(ROOT, format!("rd:{user}:{device}"), msg.to_hex())?;
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
    pub fn apply_remote(&mut self, changes: Vec<Change>) -> Result<()> {
        self.no_pending()?;
        self.doc.apply_changes(changes)?;
        Ok(())
    }

    /// Build the full view of this epoch.
    pub fn view(&self, devices: &Devices) -> EpochView {
        let mut view = EpochView::default();
        let ids: Vec<MessageId> = self
            .doc
            .map_range(ROOT, "m:".to_string().."m;".to_string())
            .filter_map(|item| item.key.strip_prefix("m:").and_then(|h| h.parse().ok()))
            .collect();
        for id in ids {
            if let Some(m) = self.message(&id, devices) {
                view.insert(m);
            }
        }
        for item in self.doc.map_range(ROOT, "rd:".to_string().."rd;".to_string()) {
            let Some((user, _device)) = item.key["rd:".len()..].split_once(':') else {
                continue;
            };
            let (Ok(user), Some(Ok(msg))) = (
                user.parse::<UserId>(),
                value_str(&item.value).map(str::parse::<MessageId>),
            ) else {
                continue;
            };
            if writer(&item.id(), devices) == Some(user) {
                view.mark_read(user, msg);
            }
        }
        self.read_meta(&mut view, devices);
        view
    }

    fn read_meta(&self, view: &mut EpochView, devices: &Devices) {
        if let Ok(Some((Value::Scalar(s), id))) = self.doc.get(ROOT, "name")
            && let ScalarValue::Str(name) = s.as_ref()
            && writer(&id, devices).is_some()
        {
            view.name = Some(name.to_string());
        }
        for item in self.doc.map_range(ROOT, "n:".to_string().."n;".to_string()) {
            if let (Ok(user), Some(name)) = (item.key[2..].parse::<UserId>(), value_str(&item.value))
                && writer(&item.id(), devices) == Some(user)
            {
                view.names.insert(user, name.to_string());
            }
        }
    }

    /// The newest value under `key` that `user` wrote, if any.
    fn authored(&self, key: &str, user: &UserId, devices: &Devices) -> Option<Value<'_>> {
        let all = self.doc.get_all(ROOT, key).ok()?;
        all.into_iter()
            .rev()
            .find(|(_, id)| writer(id, devices).as_ref() == Some(user))
            .map(|(v, _)| v)
    }

    /// Materialise one message, or `None` if it does not exist (or was written by
    /// a device no signed header vouches for).
    pub fn message(&self, id: &MessageId, devices: &Devices) -> Option<Message> {
        let (value, obj) = self.doc.get(ROOT, format!("m:{id}")).ok()??;
        if !matches!(value, Value::Object(ObjType::Map)) {
            return None;
        }
        let author = writer(&obj, devices)?;
        let ObjId::Id(_, actor, _) = &obj else { return None };
        if writer_tag(&author, &device_of(actor)?) != id.writer() {
            return None;
        }
        let field = |name: &str| -> Option<String> {
            let all = self.doc.get_all(&obj, name).ok()?;
            all.into_iter()
                .rev()
                .find(|(_, w)| writer(w, devices) == Some(author))
                .and_then(|(v, _)| v.as_str().map(str::to_string))
        };
        let original = field("t")?;
        let reply_to = field("p").and_then(|p| p.parse().ok());
        let a = author.to_hex();
        let deleted = self.authored(&format!("x:{id}:{a}"), &author, devices).is_some();
        let edit = self
            .authored(&format!("e:{id}:{a}"), &author, devices)
            .and_then(|v| v.as_str().map(str::to_string));
        let mut reactions: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
        if !deleted {
            let prefix = format!("r:{id}:");
            let end = format!("r:{id};");
            for item in self.doc.map_range(ROOT, prefix.clone()..end) {
                let Some((user, emoji)) = item.key[prefix.len()..].split_once(':') else {
                    continue;
                };
                let Ok(user) = user.parse::<UserId>() else { continue };
                if writer(&item.id(), devices) == Some(user) {
                    reactions.entry(emoji.to_string()).or_default().insert(user);
                }
            }
        }
        Some(Message {
            id: *id,
            author,
            text: if deleted {
                None
            } else {
                Some(edit.clone().unwrap_or(original))
            },
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
    let change = Change::from_bytes(bytes.to_vec()).map_err(|e| Error::corrupted("automerge change", e))?;
    if change.actor_id().to_bytes() != device.0 {
        return Err(Error::corrupted("automerge change", "actor is not the feed's device"));
    }
    let expanded = change.decode();
    for op in &expanded.operations {
        if op.insert {
            return Err(Error::corrupted(
                "automerge change",
                "sequence insert in a chat document",
            ));
        }
        match (&op.obj, &op.key) {
            (ObjectId::Root, Key::Map(k)) => check_root_op(k, &op.action, op.pred.len(), user, device)?,
            (ObjectId::Id(id), Key::Map(k)) if id.actor() == change.actor_id() => {
                if !matches!((k.as_str(), &op.action), ("t" | "p", OpType::Put(ScalarValue::Str(_)))) {
                    return Err(Error::corrupted("automerge change", "unexpected field in a message"));
                }
            }
            _ => {
                return Err(Error::corrupted(
                    "automerge change",
                    "writes into an object of another device",
                ));
            }
        }
    }
    Ok(change)
}

fn check_root_op(key: &str, action: &OpType, preds: usize, user: &UserId, device: &DeviceId) -> Result<()> {
    let (me, dev) = (user.to_hex(), device.to_hex());
    let (me, dev) = (me.as_str(), dev.as_str());
    let bad = |why: &str| Err(Error::corrupted("automerge change", why));
    let is_str = matches!(action, OpType::Put(ScalarValue::Str(_)));
    let is_true = matches!(action, OpType::Put(ScalarValue::Boolean(true)));
    let parts: Vec<&str> = key.splitn(4, ':').collect();
    let ok = match parts.as_slice() {
        ["name"] => is_str,
        ["m", id] => {
            // A message is created once by its author's device and never replaced.
            let Ok(id) = id.parse::<MessageId>() else {
                return bad("malformed message id");
            };
            matches!(action, OpType::Make(ObjType::Map)) && preds == 0 && id.writer() == writer_tag(user, device)
        }
        ["e", _, u] | ["n", u] => *u == me && is_str,
        ["x", _, u] => *u == me && is_true,
        ["r", _, u, emoji] => *u == me && !emoji.is_empty() && (is_true || matches!(action, OpType::Delete)),
        ["rd", u, d] => *u == me && *d == dev && is_str,
        _ => return bad("unknown key"),
    };
    if ok {
        Ok(())
    } else {
        bad("key does not belong to the writer")
    }
}
