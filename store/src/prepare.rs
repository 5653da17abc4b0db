//! Write preparation ([`Engine::prepare`]): a write is checked against the
//! current view and the channel's roster (who may do what, whether this
//! device may write at all), given its ids, and turned into journal
//! entries; membership writes become roster ops, key packages and shares;
//! delivery receipts become their entries. Nothing changes yet.

use std::collections::BTreeMap;

use hearth_core::member::MEMBER_BODY_VERSION;
use hearth_core::{
    ChannelId, ChannelKeys, DeviceId, Epoch, META_EPOCH, MemberAction, MemberBody, MessageId, Op, OpKey, Roster,
    SecretKey, writer_tag,
};

use crate::engine::*;
use crate::error::{Error, Result};
use crate::journal::JournalEntry;

impl Engine {
    pub(crate) fn message_at(&mut self, msg: &MessageId) -> Result<(ChannelId, hearth_core::Message)> {
        self.get_message(msg).map(|l| (l.channel, l.message))
    }

    /// Validate a write and give it ids. Nothing changes yet.
    pub(crate) fn prepare(&mut self, w: Write) -> Result<(Vec<JournalEntry>, Outcome)> {
        let me = self.identity.user();
        let op_entry = |channel, op: Op| -> Result<JournalEntry> {
            op.validate()?;
            Ok(JournalEntry::Op { channel, op })
        };
        Ok(match w {
            Write::CreateChannel { name } => {
                Op::CreateChannel { name: name.clone() }.validate()?;
                let keys = ChannelKeys::generate()?;
                let id = keys.id();
                let entries = vec![
                    JournalEntry::Channel {
                        id,
                        key: *keys.key().expose(),
                    },
                    op_entry(id, Op::CreateChannel { name })?,
                    op_entry(
                        id,
                        Op::SetName {
                            name: self.identity.name().to_string(),
                        },
                    )?,
                    // The roster starts with its maker as owner.
                    op_entry(
                        id,
                        Op::Member {
                            n: 1,
                            body: MemberBody {
                                version: MEMBER_BODY_VERSION,
                                hlc: self.hlc.tick(now_ms()).0,
                                parents: Vec::new(),
                                action: MemberAction::Create,
                            },
                        },
                    )?,
                ];
                (entries, Outcome::Channel(id))
            }
            Write::Join { keys, name } => {
                let id = keys.id();
                if self.channels.contains_key(&id) {
                    return Ok((vec![], Outcome::Channel(id)));
                }
                let key = *keys.key().expose();
                let joined = match name {
                    Some(name) => {
                        Op::Rename { name: name.clone() }.validate()?;
                        JournalEntry::Joined { id, key, name }
                    }
                    None => JournalEntry::Channel { id, key },
                };
                let entries = vec![
                    joined,
                    op_entry(
                        id,
                        Op::SetName {
                            name: self.identity.name().to_string(),
                        },
                    )?,
                ];
                (entries, Outcome::Channel(id))
            }
            Write::Rename { channel, name } => {
                self.writable(&channel)?;
                (vec![op_entry(channel, Op::Rename { name })?], Outcome::Done)
            }
            Write::SetRetention { channel, secs } => {
                self.writable(&channel)?;
                let roster = self.roster(&channel)?;
                if roster.is_started()
                    && !matches!(
                        roster.role(&me),
                        Some(hearth_core::Role::Owner | hearth_core::Role::Admin)
                    )
                {
                    return Err(Error::NotAllowed {
                        action: "set the channel's retention".into(),
                        why: "only its admins and owners may".into(),
                    });
                }
                let at = self.hlc.tick(now_ms()).0;
                (vec![op_entry(channel, Op::SetRetention { secs, at })?], Outcome::Done)
            }
            Write::Reply { to, text } => {
                let channel = self.message_at(&to)?.0;
                return self.prepare(Write::Post {
                    channel,
                    text,
                    reply_to: Some(to),
                });
            }
            Write::Post {
                channel,
                text,
                reply_to,
            } => {
                self.writable(&channel)?;
                let epoch = match reply_to {
                    None => self.top_epoch(self.channel(&channel)?),
                    Some(_) => 0,
                };
                let root = match reply_to {
                    None => None,
                    Some(parent) => {
                        let (c, m) = self.message_at(&parent)?;
                        if c != channel {
                            return Err(Error::invalid("reply", "the message is in another channel"));
                        }
                        if m.deleted {
                            return Err(Error::invalid("reply", "the message was deleted"));
                        }
                        Some(m.reply_to.unwrap_or(m.id))
                    }
                };
                let epoch = root.map(|r| r.epoch()).unwrap_or(epoch);
                let ts = self.hlc.tick(now_ms());
                let id = MessageId::new(ts, epoch, &channel, writer_tag(&me, &self.identity.device()));
                (
                    vec![op_entry(
                        channel,
                        Op::Post {
                            id,
                            text,
                            reply_to: root,
                        },
                    )?],
                    Outcome::Message(id),
                )
            }
            Write::React { msg, emoji, remove } => {
                let (c, m) = self.message_at(&msg)?;
                self.writable(&c)?;
                if m.deleted {
                    return Err(Error::invalid("reaction", "the message was deleted"));
                }
                let op = if remove {
                    Op::Unreact { msg, emoji }
                } else {
                    Op::React { msg, emoji }
                };
                (vec![op_entry(c, op)?], Outcome::Done)
            }
            Write::Edit { msg, text } => {
                let (c, m) = self.message_at(&msg)?;
                self.writable(&c)?;
                if m.author != me {
                    return Err(Error::NotAuthor { action: "edit" });
                }
                if m.deleted {
                    return Err(Error::invalid("edit", "the message was deleted"));
                }
                (vec![op_entry(c, Op::Edit { msg, text })?], Outcome::Done)
            }
            Write::Delete { msg } => {
                let (c, m) = self.message_at(&msg)?;
                self.writable(&c)?;
                // The author, or an admin or owner of a channel with a roster.
                if m.author != me && !self.moderators(&c)?.contains(&me) {
                    return Err(Error::NotAuthor { action: "delete" });
                }
                (vec![op_entry(c, Op::Delete { msg })?], Outcome::Done)
            }
            Write::Delivered { channel, marks } => {
                self.writable(&channel)?;
                (self.receipt_entries(channel, &marks)?, Outcome::Done)
            }
            Write::OwedReceipts => {
                let owing: Vec<(ChannelId, Vec<(DeviceId, MessageId)>)> = self
                    .channels
                    .iter()
                    .filter(|(_, ch)| !ch.owed.is_empty())
                    .map(|(id, ch)| (*id, ch.owed.iter().map(|(d, m)| (*d, *m)).collect()))
                    .collect();
                let (mut entries, mut channels) = (Vec::new(), 0);
                for (channel, marks) in &owing {
                    // A channel whose metadata epoch cannot be read keeps what it
                    // owes; the others' receipts still go out.
                    if self.writable(channel).is_ok()
                        && let Ok(e) = self.receipt_entries(*channel, marks)
                        && !e.is_empty()
                    {
                        entries.extend(e);
                        channels += 1;
                    }
                }
                // Key shares owed go out with them (a failure keeps them due).
                for channel in std::mem::take(&mut self.shares_due) {
                    match self.owed_shares(&channel) {
                        Ok(ops) => {
                            for op in ops {
                                entries.push(op_entry(channel, op)?);
                            }
                        }
                        Err(_) => {
                            self.shares_due.insert(channel);
                        }
                    }
                }
                (entries, Outcome::Receipts(channels))
            }
            Write::Member { channel, action } => {
                let ops = self.member_ops(channel, action)?;
                (
                    ops.into_iter().map(|op| op_entry(channel, op)).collect::<Result<_>>()?,
                    Outcome::Done,
                )
            }
            Write::MarkRead { channel, up_to } => {
                self.writable(&channel)?;
                let target = match up_to {
                    Some(msg) => {
                        let (c, _) = self.message_at(&msg)?;
                        if c != channel {
                            return Err(Error::invalid("read marker", "the message is in another channel"));
                        }
                        Some(msg)
                    }
                    None => self.channel(&channel)?.newest(),
                };
                match target {
                    Some(msg) if self.channel(&channel)?.my_read() < Some(msg) => {
                        (vec![op_entry(channel, Op::ReadUpTo { msg })?], Outcome::Done)
                    }
                    _ => (vec![], Outcome::Done),
                }
            }
        })
    }

    /// The channel's roster (empty, not started, for a channel whose metadata
    /// has not arrived yet).
    pub(crate) fn roster(&mut self, channel: &ChannelId) -> Result<Roster> {
        self.channel(channel)?;
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        Ok(self
            .loaded(channel, META_EPOCH)
            .map(|le| le.view.roster.clone())
            .unwrap_or_default())
    }

    /// The users whose deletes count for anyone's message in a channel:
    /// its admins and owners (none for a channel without a roster).
    pub(crate) fn moderators(
        &mut self,
        channel: &ChannelId,
    ) -> Result<std::collections::BTreeSet<hearth_core::UserId>> {
        let roster = self.roster(channel)?;
        if !roster.is_started() {
            return Ok(Default::default());
        }
        Ok(roster
            .roles
            .iter()
            .filter(|(u, r)| {
                matches!(r, hearth_core::Role::Admin | hearth_core::Role::Owner) && !roster.removed.contains_key(*u)
            })
            .map(|(u, _)| *u)
            .collect())
    }

    /// Give a loaded message epoch the channel's moderators if a delete in
    /// it is not its message's writer's (only then do they matter: the
    /// roster is not read for every epoch that loads).
    pub(crate) fn ensure_moderators(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let due = epoch != META_EPOCH
            && self
                .epochs
                .get(&(channel, epoch))
                .is_some_and(|le| !le.moderated && le.doc.has_foreign_deletes());
        if due {
            self.apply_moderators(channel, epoch)?;
        }
        Ok(())
    }

    /// Give a loaded message epoch the channel's moderators; its view is
    /// built again if they changed.
    pub(crate) fn apply_moderators(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let moderators = self.moderators(&channel)?;
        let ch = self.channels.get(&channel).expect("the caller checked the channel");
        if let Some(le) = self.epochs.get_mut(&(channel, epoch)) {
            le.moderated = true;
            if le.doc.set_moderators(moderators) {
                le.view = le.doc.view(&ch.devices);
            }
        }
        Ok(())
    }

    /// The roster moved: every loaded message epoch of the channel takes the
    /// moderators it names (a delete by a new admin counts now, one by a
    /// former admin no longer), and drops the texts of what is deleted.
    pub(crate) fn refresh_moderators(&mut self, channel: ChannelId) -> Result<()> {
        let epochs: Vec<Epoch> = self
            .epochs
            .keys()
            .filter(|(c, e)| *c == channel && *e != META_EPOCH)
            .map(|(_, e)| *e)
            .collect();
        for epoch in epochs {
            // Staged ops stay staged: a view is built from the document,
            // which holds them. An epoch whose deletes are all its writers'
            // keeps needing none.
            if self.epochs.get(&(channel, epoch)).is_some_and(|le| le.moderated) {
                self.apply_moderators(channel, epoch)?;
            } else {
                self.ensure_moderators(channel, epoch)?;
            }
            self.prune_loaded(channel, epoch)?;
        }
        Ok(())
    }

    /// A mark of the membership ops a channel's roster holds (each op has
    /// a number one more than its device's last): it moves with every new
    /// op, and only then. `None` while the metadata epoch is not loaded.
    pub(crate) fn roster_mark(&self, channel: &ChannelId) -> Option<(usize, u64)> {
        self.loaded(channel, META_EPOCH).map(|le| {
            let r = &le.view.roster;
            (r.last_n.len(), r.last_n.values().map(|n| u64::from(*n)).sum())
        })
    }

    /// Refuse writes in a channel the local user was removed from.
    pub(crate) fn writable(&mut self, channel: &ChannelId) -> Result<()> {
        let me = self.identity.user();
        self.channel(channel)?;
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        let Some(roster) = self.loaded(channel, META_EPOCH).map(|le| &le.view.roster) else {
            return Ok(());
        };
        if roster.role(&me).is_none() {
            return Err(Error::NotAllowed {
                action: "write in this channel".into(),
                why: "you were removed from it".into(),
            });
        }
        if self.revoked_here(channel, roster) {
            return Err(Error::NotAllowed {
                action: "write in this channel".into(),
                why: "this device was revoked".into(),
            });
        }
        if self.told_removed(channel, roster) {
            return Err(Error::NotAllowed {
                action: "write in this channel".into(),
                why: "you were removed from it (a member's node said so, signed by the admin)".into(),
            });
        }
        Ok(())
    }

    /// Whether `roster` revokes this device in `channel`: under its present
    /// id, a former one, or its key, or a device it was linked through
    /// ([`crate::channel::ChannelState::revocations`]).
    pub(crate) fn revoked_here(&self, channel: &ChannelId, roster: &Roster) -> bool {
        if roster.revoked.is_empty() {
            return false;
        }
        let me = &self.identity;
        // Revocations by this user only (another user cannot revoke ours).
        let mine_revoked: Vec<&DeviceId> = roster
            .revoked
            .keys()
            .filter(|(_, u)| *u == me.user())
            .map(|(d, _)| d)
            .collect();
        if mine_revoked.iter().any(|d| me.is_this_device(d)) {
            return true;
        }
        let Ok(ch) = self.channel(channel) else {
            return false;
        };
        let mut mine: Vec<(hearth_core::DeviceId, [u8; 32])> =
            me.device_chain().map(hearth_core::device::issuers).unwrap_or_default();
        if let Some(k) = me.device_keys() {
            mine.push((me.device(), k.public().signing));
        }
        mine_revoked.iter().any(|d| {
            mine.iter()
                .any(|(m, k)| m == *d || ch.chains.get(*d).is_some_and(|(rk, _)| rk == k))
        })
    }

    /// The membership ops a roster change takes (a claim first, for a
    /// channel without a roster), each checked against the roster it lands on.
    pub(crate) fn member_ops(&mut self, channel: ChannelId, action: MemberAction) -> Result<Vec<Op>> {
        let mut roster = self.roster(&channel)?;
        let (me, device) = (self.identity.user(), self.identity.device());
        let action = match action {
            MemberAction::RevokeDevice { device, .. } if self.identity.is_this_device(&device) => {
                return Err(Error::NotAllowed {
                    action: "revoke this device".into(),
                    why: "a device cannot revoke itself; revoke it from another device of yours".into(),
                });
            }
            MemberAction::RevokeDevice { user, device, .. } => {
                let ch = self.channel(&channel)?;
                let upto = ch.heads.get(&device).map_or(0, |h| h.seq);
                // Signed for relays (a notice any member can hand them).
                match self.identity.device_keys() {
                    Some(keys) => MemberAction::revoke_signed(
                        user,
                        device,
                        upto,
                        hearth_core::member::sign_revocation(keys, &ch.keys.wire(), &device, upto),
                    ),
                    None => MemberAction::RevokeDevice { user, device, upto },
                }
            }
            MemberAction::Remove { user, .. } => {
                let upto = self
                    .channel(&channel)?
                    .heads
                    .iter()
                    .filter(|(_, h)| h.user == user)
                    .map(|(d, h)| (*d, h.seq))
                    .collect();
                MemberAction::Remove { user, upto }
            }
            other => other,
        };
        // Removing someone else starts a new key generation for the members
        // left (a leaver's store cannot: see docs/trust.md).
        let rotate = match &action {
            MemberAction::Remove { user, .. } => *user != me,
            a => a.revocation().is_some(),
        };
        let mut actions = Vec::new();
        if !(roster.is_started() || matches!(action, MemberAction::Create) || action.revocation().is_some()) {
            actions.push(MemberAction::Create);
        }
        actions.push(action);
        let mut ops = Vec::new();
        let wire = self.channel(&channel)?.keys.wire();
        for action in actions {
            let key = OpKey {
                device,
                n: roster.last_n.get(&device).copied().unwrap_or(0).saturating_add(1),
            };
            // Removing someone else: signed, so that any member can tell the
            // removed user's devices (`crate::peers`, `RemovedNotice`).
            let action = match (action, self.identity.device_keys()) {
                (MemberAction::Remove { user, upto }, Some(k)) if user != me => {
                    let sig = hearth_core::member::sign_removal(k, &wire, &user, &key);
                    MemberAction::remove_signed(user, upto, sig)
                }
                (a, _) => a,
            };
            let body = MemberBody {
                version: MEMBER_BODY_VERSION,
                hlc: self.hlc.tick(now_ms()).0,
                parents: roster.heads.clone(),
                action: action.clone(),
            };
            roster = roster
                .after(key, &me, &action, body.hlc)
                .map_err(|why| Error::NotAllowed {
                    action: describe(&action),
                    why: why.into(),
                })?;
            ops.push(Op::Member { n: key.n, body });
        }
        // Adding someone (back) shares the later generations with their
        // devices known here, before the op (so that they can open it).
        if matches!(ops.last(), Some(Op::Member { body, .. }) if matches!(body.action, MemberAction::Add { .. })) {
            let after = self.last_package(&channel);
            let mut shares = self.owed_shares_under(&channel, &roster, after)?;
            shares.extend(ops);
            ops = shares;
        }
        if rotate {
            let keys = &self.channel(&channel)?.keys;
            let (generation, key) = hearth_core::rotation::next_generation(keys)?;
            let devices = self.member_devices(&channel, &roster)?;
            let first = self.last_package(&channel);
            ops.extend(self.packages(&channel, &[(generation, &key)], &devices, first)?);
        }
        Ok(ops)
    }

    /// Every device of the roster's members whose key-agreement key is known
    /// here (from its feed's certificate chain), this device first.
    pub(crate) fn member_devices(&self, channel: &ChannelId, roster: &Roster) -> Result<Vec<(DeviceId, [u8; 32])>> {
        let ch = self.channel(channel)?;
        let me = &self.identity;
        let mut out = Vec::new();
        if let Some(k) = self.identity.device_keys() {
            out.push((me.device(), k.public().kx));
        }
        let revoked = ch.revocations(roster);
        for (d, (_, chain)) in &ch.chains {
            if me.is_this_device(d)
                || revoked.contains_key(d)
                || ch.devices.get(d).is_none_or(|u| roster.role(u).is_none())
            {
                continue;
            }
            if let Some(cert) = chain.last().filter(|c| c.body.device == *d) {
                out.push((*d, cert.body.keys.kx));
            }
        }
        Ok(out)
    }

    /// Key package ops sealing `keys` to `devices`, as many as the package
    /// bounds call for, numbered after `after`.
    pub(crate) fn packages(
        &self,
        channel: &ChannelId,
        keys: &[(u32, &SecretKey)],
        devices: &[(DeviceId, [u8; 32])],
        after: u32,
    ) -> Result<Vec<Op>> {
        let wire = self.channel(channel)?.keys.wire();
        let mut n = after;
        let mut ops = Vec::new();
        for group in devices.chunks(hearth_core::rotation::MAX_PACKAGE_RECIPIENTS) {
            for ks in keys.chunks(hearth_core::rotation::MAX_PACKAGE_KEYS) {
                n = n.saturating_add(1);
                ops.push(Op::Keys {
                    n,
                    package: hearth_core::KeyPackage::seal(&wire, ks, group)?,
                });
            }
        }
        Ok(ops)
    }

    /// The number of this device's last key package in a channel.
    pub(crate) fn last_package(&self, channel: &ChannelId) -> u32 {
        let me = self.identity.device();
        let Some((ch, le)) = self.channels.get(channel).zip(self.loaded(channel, META_EPOCH)) else {
            return 0;
        };
        le.doc
            .key_packages(&ch.devices)
            .iter()
            .filter(|(_, d, _, _)| *d == me)
            .map(|(_, _, n, _)| *n)
            .max()
            .unwrap_or(0)
    }

    /// Key shares this device owes in a channel: for every later generation
    /// it holds, the member devices (known keys) that no package reaches.
    /// First, a rotation, if one is owed and this device's user is an admin
    /// or owner (see [`Engine::rotation_owed`]).
    pub(crate) fn owed_shares(&mut self, channel: &ChannelId) -> Result<Vec<Op>> {
        let roster = self.roster(channel)?;
        let mut ops = Vec::new();
        let first = self.last_package(channel);
        if roster.role(&self.identity.user()) >= Some(hearth_core::Role::Admin)
            && !self.revoked_here(channel, &roster)
            && self.rotation_owed(channel, &roster)?
        {
            let keys = &self.channel(channel)?.keys;
            let (generation, key) = hearth_core::rotation::next_generation(keys)?;
            let devices = self.member_devices(channel, &roster)?;
            ops.extend(self.packages(channel, &[(generation, &key)], &devices, first)?);
        }
        let after = first.saturating_add(ops.len() as u32);
        ops.extend(self.owed_shares_under(channel, &roster, after)?);
        Ok(ops)
    }

    /// Whether the channel's roster names removed users or revoked devices
    /// (then a roster change may owe a rotation).
    pub(crate) fn roster_has_outsiders(&self, channel: &ChannelId) -> bool {
        self.loaded(channel, META_EPOCH)
            .is_some_and(|le| !le.view.roster.removed.is_empty() || !le.view.roster.revoked.is_empty())
    }

    /// Whether the newest key generation may be held by someone who must not
    /// hold it: a removed user (or one who left), or a revoked device. For
    /// generation 0 (the channel key), any removal or revocation; for a later
    /// one, a package of it sealed to such a device (a rotation concurrent
    /// with the removal, made by a member who had not seen it yet), or
    /// written by one (the removed member's own, taken before its removal).
    pub(crate) fn rotation_owed(&mut self, channel: &ChannelId, roster: &Roster) -> Result<bool> {
        if roster.removed.is_empty() && roster.revoked.is_empty() {
            return Ok(false);
        }
        let ch = self.channel(channel)?;
        let generation = ch.keys.current_generation();
        if generation == 0 {
            return Ok(true);
        }
        let revoked = ch.revocations(roster);
        let outsider =
            |d: &DeviceId| revoked.contains_key(d) || ch.devices.get(d).is_some_and(|u| roster.removed.contains_key(u));
        let packages = self
            .loaded(channel, META_EPOCH)
            .map(|le| le.doc.key_packages(&ch.devices))
            .unwrap_or_default();
        // Sealed to an outsider, or written by one: a removed member's own
        // package (written before its removal reached this store, and
        // taken) may leave out its own device, but its writer knows the key.
        Ok(packages.iter().any(|(writer, device, _, p)| {
            let of_it = p.keys.iter().filter(|k| k.generation == generation);
            let by_outsider = outsider(device) || roster.removed.contains_key(writer);
            of_it.clone().any(|k| k.recipients.iter().any(|(d, _)| outsider(d))) || (by_outsider && of_it.count() > 0)
        }))
    }

    /// [`Engine::owed_shares`] for the members of `roster`.
    pub(crate) fn owed_shares_under(&mut self, channel: &ChannelId, roster: &Roster, after: u32) -> Result<Vec<Op>> {
        if self.channel(channel)?.keys.current_generation() == 0 || roster.role(&self.identity.user()).is_none() {
            return Ok(Vec::new());
        }
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        let devices = self.member_devices(channel, roster)?;
        let ch = self.channel(channel)?;
        let packages = self
            .loaded(channel, META_EPOCH)
            .map(|le| le.doc.key_packages(&ch.devices))
            .unwrap_or_default();
        let held = ch.keys.generations();
        let mut n = after;
        let mut ops = Vec::new();
        for (generation, key) in &held {
            let lacking: Vec<(DeviceId, [u8; 32])> = devices
                .iter()
                .filter(|(d, _)| !packages.iter().any(|(_, _, _, p)| p.reaches(*generation, d)))
                .copied()
                .collect();
            if !lacking.is_empty() {
                let more = self.packages(channel, &[(*generation, key)], &lacking, n)?;
                n = n.saturating_add(more.len() as u32);
                ops.extend(more);
            }
        }
        Ok(ops)
    }

    /// The receipt ops `marks` call for (those not held already). Owed receipts
    /// that held ones cover are settled here; the rest are settled when their
    /// op is staged (see [`Engine::settle_owed`]), so nothing is settled for a
    /// write that fails before it reaches the journal.
    pub(crate) fn receipt_entries(
        &mut self,
        channel: ChannelId,
        marks: &[(DeviceId, MessageId)],
    ) -> Result<Vec<JournalEntry>> {
        self.ensure_epoch(channel, META_EPOCH, true)?;
        let user = self.identity.user();
        let ids: Vec<DeviceId> = std::iter::once(self.identity.device())
            .chain(self.identity.former().iter().copied())
            .collect();
        let mut held: BTreeMap<DeviceId, MessageId> = BTreeMap::new();
        if let Some(le) = self.loaded(&channel, META_EPOCH) {
            for id in &ids {
                for (a, m) in le.view.delivered.get(&(user, *id)).into_iter().flatten() {
                    let e = held.entry(*a).or_insert(*m);
                    *e = (*e).max(*m);
                }
            }
        }
        let mut entries = Vec::new();
        for (author, up_to) in marks {
            if !self.identity.is_this_device(author) && held.get(author).is_none_or(|h| h < up_to) {
                let op = Op::Delivered {
                    author: *author,
                    up_to: *up_to,
                };
                op.validate()?;
                entries.push(JournalEntry::Op { channel, op });
            }
        }
        for (author, up_to) in held {
            self.settle_owed(channel, author, up_to)?;
        }
        Ok(entries)
    }
}

/// What a roster change is, for an error message.
fn describe(action: &MemberAction) -> String {
    match action {
        MemberAction::Create => "claim the channel's roster".into(),
        MemberAction::Add { user, role } => format!("add {} as {role}", &user.to_hex()[..16]),
        MemberAction::Remove { user, .. } | MemberAction::RemoveSigned { user, .. } => {
            format!("remove {}", &user.to_hex()[..16])
        }
        MemberAction::SetRole { user, role } => format!("make {} {role}", &user.to_hex()[..16]),
        MemberAction::RevokeDevice { device, .. } | MemberAction::RevokeDeviceSigned { device, .. } => {
            format!("revoke device {device}")
        }
        MemberAction::Invite { .. } => "open an invite".into(),
        MemberAction::RevokeInvite { id } => format!("revoke invite {}", crate::invite::hex(id)),
        MemberAction::Join { user, .. } => format!("let {} in through an invite", &user.to_hex()[..16]),
    }
}
