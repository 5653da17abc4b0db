//! The admission rules of a change from a feed entry: decoded with caps,
//! written under its feed's device, touching only keys that belong to its
//! writer (the table in the module docs of `doc`), and what it touches
//! ([`ChangeEffects`], with its happenings).

#[allow(unused_imports)]
use super::*;

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
    /// package, a text written inline, a field of a message another
    /// change made, or any op that supersedes another. A view of changes that do no more can be built from
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
    // Hearth never commits an empty change (automerge makes none of an
    // empty transaction). One whose start op leaves a gap before it applied
    // fine yet made its epoch's snapshot unloadable: a document's changes
    // are rebuilt from their ops, and automerge then looks for ops that
    // were never made (found by fuzzing: fuzz/corpus/change/crash-empty-*).
    if expanded.operations.is_empty() {
        return Err(Error::corrupted("automerge change", "no operations"));
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
        // An op that names what it supersedes (an overwrite, a delete)
        // needs the document to say what it does.
        effects.beyond_posts |= !op.pred.is_empty();
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
