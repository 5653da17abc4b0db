//! Building an epoch's view from its document: the whole view
//! ([`EpochDoc::view`]), or only what applied changes touched
//! ([`EpochDoc::refresh_view`]); a message, the roster, the key packages.

#[allow(unused_imports)]
use super::*;

impl EpochDoc {
    /// Update `view` for what applied changes touched (see [`ChangeEffects`]),
    /// instead of rebuilding it: the cost is per touched message, whatever the
    /// epoch's size. Metadata changes need a rebuild ([`EpochDoc::view`]).
    pub fn refresh_view(&mut self, view: &mut EpochView, effects: &ChangeEffects, devices: &Devices) {
        self.materialize_for_read();
        for id in &effects.messages {
            if let Some(m) = self.message_in(id, devices) {
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
    pub fn view(&mut self, devices: &Devices) -> EpochView {
        self.materialize_for_read();
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
            if let Some(m) = self.message_in(&id, devices) {
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
    pub fn message(&mut self, id: &MessageId, devices: &Devices) -> Option<Message> {
        self.materialize_for_read();
        self.message_in(id, devices)
    }

    fn message_in(&self, id: &MessageId, devices: &Devices) -> Option<Message> {
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
