//! Queries: pages, threads, single messages, unread counts, channel lists.
//! Each loads only the epochs it needs.

use std::collections::{BTreeMap, BTreeSet};

use hearth_core::{ChannelId, Epoch, META_EPOCH, Message, MessageId, UserId};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// A user of a channel's roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    /// The user.
    pub user: UserId,
    /// The display name the user set in this channel, if any.
    pub name: Option<String>,
    /// Its role; `None`: removed.
    pub role: Option<hearth_core::Role>,
    /// Its devices that wrote in the channel, with their feed heads.
    pub devices: Vec<(hearth_core::DeviceId, u64)>,
}

/// A device of the local user, as this store knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// The device.
    pub device: hearth_core::DeviceId,
    /// Whether it is this device.
    pub this: bool,
    /// Whether it is an id this device wrote under before it moved to its
    /// keyed id (store format 7): its old feeds.
    pub former: bool,
    /// Channels where it wrote (that this store holds).
    pub channels: usize,
    /// Channels whose roster revokes it.
    pub revoked_in: usize,
}

/// A channel's roster, as this store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RosterInfo {
    /// Whether the roster is started (a channel older than rosters has none
    /// until a member claims it; every key holder may write in it until then).
    pub started: bool,
    /// Members (owners, admins, then members, by user id), then removed users.
    pub members: Vec<MemberInfo>,
    /// Membership ops that changed nothing, with why.
    pub refused: usize,
    /// Membership ops waiting for ops they name.
    pub waiting: usize,
}

/// A channel in the channel list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelInfo {
    /// Its id.
    pub id: ChannelId,
    /// Its current name.
    pub name: String,
    /// Messages in it (replies and tombstones included).
    pub messages: u64,
    /// Messages by others, not deleted, newer than the local user's read marker.
    pub unread: u64,
    /// Its newest message.
    pub newest: Option<MessageId>,
    /// The local user's read marker (the newest message marked read).
    pub read_up_to: Option<MessageId>,
    /// How long the channel keeps messages, in seconds (`None`: for ever;
    /// left out of its JSON then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<u64>,
}

/// A thread: its root and its replies, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Thread {
    /// The root message.
    pub root: Message,
    /// The replies, oldest first.
    pub replies: Vec<Message>,
}

/// A message with where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Located {
    /// The channel.
    pub channel: ChannelId,
    /// The message.
    pub message: Message,
}

impl Engine {
    /// One message by id.
    pub(crate) fn get_message(&mut self, msg: &MessageId) -> Result<Located> {
        let candidates: Vec<ChannelId> = self
            .channels
            .keys()
            .filter(|c| c.tag() == msg.channel_tag())
            .copied()
            .collect();
        for c in candidates {
            // Cuts first: they may change the view; an expired message is
            // not shown either.
            let hidden = self.is_hidden(&c, msg)? || self.expiry_floor(&c)?.is_some_and(|f| *msg < f);
            let hidden = hidden || self.root_expired(&c, msg)?;
            if self.ensure_epoch(c, msg.epoch(), false)?
                && let Some(m) = self.loaded(&c, msg.epoch()).and_then(|le| le.view.get(msg))
                && !hidden
            {
                return Ok(Located { channel: c, message: m });
            }
        }
        Err(Error::NotFound {
            what: "message",
            id: msg.to_hex(),
        })
    }

    /// Top-level messages older than `before`, newest first.
    /// Every message of a channel, top-level and replies, deleted ones too
    /// (without their text), oldest first: what an export holds. Messages a
    /// removal cut hides are left out, as from every other read.
    pub(crate) fn all_messages(&mut self, channel: &ChannelId) -> Result<Vec<Message>> {
        let hidden = self.hidden(channel)?.clone();
        let floor = self.expiry_floor(channel)?;
        let epochs: Vec<Epoch> = self
            .channel(channel)?
            .summaries
            .keys()
            .copied()
            .filter(|e| *e != META_EPOCH)
            .collect();
        let mut out = Vec::new();
        for epoch in epochs {
            self.ensure_epoch(*channel, epoch, false)?;
            if let Some(le) = self.loaded(channel, epoch) {
                out.extend(
                    le.view
                        .messages()
                        .filter(|m| !hidden.contains(&m.id) && floor.is_none_or(|f| m.id >= f)),
                );
            }
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    pub(crate) fn page(
        &mut self,
        channel: &ChannelId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        if limit == 0 {
            self.channel(channel)?;
            return Ok(Vec::new());
        }
        // The first page, from the channel's front page while it is valid.
        if before.is_none()
            && let Some(newest) = self.front_page(channel, limit)?
        {
            return Ok(newest);
        }
        self.ensure_summaries()?;
        if let Some(b) = before {
            // A cursor must name a message of this channel.
            let loc = self.get_message(&b)?;
            if loc.channel != *channel {
                return Err(Error::invalid("cursor", "the message is in another channel"));
            }
        }
        // Messages a removal cut hides are left out (asked for on top), and
        // expired ones (retention).
        let hidden = self.hidden(channel)?.clone();
        let floor = self.expiry_floor(channel)?;
        let ch = self.channel(channel)?;
        // Epochs in order of their newest top-level message. Messages of an epoch
        // can be newer than those of a higher-numbered one (an offline device), so
        // the order comes from the summaries, not the epoch numbers.
        let mut order: Vec<(MessageId, MessageId, u32)> = ch
            .summaries
            .iter()
            .filter(|(e, _)| **e != META_EPOCH)
            .filter_map(|(e, s)| Some((s.top_max?, s.top_min?, *e)))
            .filter(|(_, min, _)| before.is_none_or(|b| *min < b))
            .filter(|(max, _, _)| floor.is_none_or(|f| *max >= f))
            .collect();
        order.sort_by_key(|o| std::cmp::Reverse(o.0));
        let mut out: Vec<Message> = Vec::new();
        for (top_max, _, epoch) in order {
            if out.len() >= limit && out.get(limit - 1).is_some_and(|m| m.id > top_max) {
                break;
            }
            // A deferred epoch that only holds posts answers from them; it
            // is loaded once this query has replied.
            let posts = self.posts_view(*channel, epoch);
            let view = match &posts {
                Some(v) => {
                    self.answered_unloaded.push((*channel, epoch));
                    self.pages_from_posts += 1;
                    Some(v)
                }
                None => {
                    self.ensure_epoch(*channel, epoch, false)?;
                    self.loaded(channel, epoch).map(|le| &le.view)
                }
            };
            if let Some(view) = view {
                out.extend(
                    view.page(before, limit.saturating_add(hidden.len()))
                        .into_iter()
                        .filter(|m| !hidden.contains(&m.id) && floor.is_none_or(|f| m.id >= f))
                        .map(|mut m| {
                            // Expired replies are not counted either.
                            if let Some(f) = floor {
                                m.reply_count = view.replies_from(&m.id, f);
                            }
                            m
                        }),
                );
                out.sort_by_key(|m| std::cmp::Reverse(m.id));
                out.truncate(limit);
            }
        }
        Ok(out)
    }

    /// A thread, given its root or any of its replies.
    pub(crate) fn thread(&mut self, msg: &MessageId) -> Result<Thread> {
        let loc = self.get_message(msg)?;
        let root_id = loc.message.reply_to.unwrap_or(loc.message.id);
        let root = if root_id == loc.message.id {
            loc.message
        } else {
            self.get_message(&root_id)?.message
        };
        let mut replies = self
            .loaded(&loc.channel, root_id.epoch())
            .map(|le| le.view.replies(&root_id))
            .unwrap_or_default();
        let floor = self.expiry_floor(&loc.channel)?;
        let hidden = self.hidden(&loc.channel)?;
        replies.retain(|m| !hidden.contains(&m.id) && floor.is_none_or(|f| m.id >= f));
        Ok(Thread { root, replies })
    }

    /// Unread messages for the local user.
    pub(crate) fn unread(&mut self, channel: &ChannelId) -> Result<u64> {
        let me = self.identity.user();
        let floor = self.expiry_floor(channel)?;
        let ch = self.channel(channel)?;
        let marker = ch.my_read();
        let mut total = 0;
        let mut straddling = Vec::new();
        for (e, s) in &ch.summaries {
            if s.others_live == 0 {
                continue;
            }
            match (marker, s.min, s.max) {
                (_, None, _) | (_, _, None) => {}
                // Expired whole; one that expired in part is counted below.
                (_, _, Some(max)) if floor.is_some_and(|f| max < f) => {}
                (_, Some(min), _) if floor.is_some_and(|f| min < f) => straddling.push(*e),
                (None, _, _) => total += s.others_live,
                (Some(m), Some(min), _) if min > m => total += s.others_live,
                (Some(m), _, Some(max)) if max <= m => {}
                _ => straddling.push(*e),
            }
        }
        for e in straddling {
            self.ensure_epoch(*channel, e, false)?;
            if let Some(le) = self.loaded(channel, e) {
                total += le.view.unread_from(&me, marker, floor);
            }
        }
        Ok(total)
    }

    /// Display names of a channel's members.
    pub(crate) fn members(&mut self, channel: &ChannelId) -> Result<BTreeMap<UserId, String>> {
        self.channel(channel)?;
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        self.hidden(channel)?;
        Ok(self
            .loaded(channel, META_EPOCH)
            .map(|le| le.view.names.clone())
            .unwrap_or_default())
    }

    /// The channel's roster: everyone it names, and every other writer.
    pub(crate) fn roster_info(&mut self, channel: &ChannelId) -> Result<RosterInfo> {
        let roster = self.roster(channel)?;
        let names = self.members(channel)?;
        let ch = self.channel(channel)?;
        let mut users: BTreeMap<UserId, Vec<(hearth_core::DeviceId, u64)>> = BTreeMap::new();
        for u in roster.roles.keys().chain(roster.removed.keys()).chain(names.keys()) {
            users.entry(*u).or_default();
        }
        for (d, h) in &ch.heads {
            users.entry(h.user).or_default().push((*d, h.seq));
        }
        let mut members: Vec<MemberInfo> = users
            .into_iter()
            .map(|(user, devices)| MemberInfo {
                user,
                name: names.get(&user).cloned(),
                role: roster.role(&user),
                devices,
            })
            .collect();
        members.sort_by_key(|m| (m.role.is_none(), std::cmp::Reverse(m.role), m.user));
        Ok(RosterInfo {
            started: roster.is_started(),
            members,
            refused: roster.refused.len(),
            waiting: roster.waiting.len(),
        })
    }

    /// The local user's devices: this one, and every one that wrote in a
    /// channel held here.
    pub(crate) fn devices(&mut self) -> Result<Vec<DeviceInfo>> {
        let (me, this) = (self.identity.user(), self.identity.device());
        let mut out: BTreeMap<hearth_core::DeviceId, DeviceInfo> = BTreeMap::new();
        out.insert(
            this,
            DeviceInfo {
                device: this,
                this: true,
                former: false,
                channels: 0,
                revoked_in: 0,
            },
        );
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            let roster = self.roster(&id)?;
            let ch = self.channel(&id)?;
            for (d, h) in &ch.heads {
                if h.user != me {
                    continue;
                }
                let e = out.entry(*d).or_insert(DeviceInfo {
                    device: *d,
                    this: *d == this,
                    former: self.identity.former().contains(d),
                    channels: 0,
                    revoked_in: 0,
                });
                e.channels += 1;
            }
            for (d, u) in roster.revoked.keys() {
                if *u == me
                    && let Some(e) = out.get_mut(d)
                {
                    e.revoked_in += 1;
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// Every revocation notice relays should hold, by channel: one per
    /// signed revocation in a roster here whose revoking device's chain is
    /// held (`hearth_core::member::RevocationNotice`).
    pub(crate) fn revocation_notices(&mut self) -> Result<Vec<(hearth_core::WireId, Vec<u8>)>> {
        let mut out = Vec::new();
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            let roster = self.roster(&id)?;
            let ch = self.channel(&id)?;
            let wire = ch.keys.wire();
            for ((device, user), (by, sig)) in &roster.revoke_sigs {
                // Only a revocation by the device's own user counts.
                if ch.devices.get(device).is_some_and(|owner| owner != user) {
                    continue;
                }
                let (Some(upto), Some((_, chain))) = (roster.revoked.get(&(*device, *user)), ch.chains.get(by)) else {
                    continue;
                };
                let notice = hearth_core::member::RevocationNotice::new(wire, *device, *upto, chain.clone(), *sig);
                if notice.verify().is_ok() {
                    out.push((wire, notice.encode()));
                }
            }
        }
        Ok(out)
    }

    /// Every removal relays should hold, by channel: one per user a roster
    /// here removes, and one per user it added back after a removal
    /// (`hearth_core::peer::RemovalNotice`, with the clock of the op).
    pub(crate) fn removal_notices(&mut self) -> Result<Vec<hearth_core::peer::RemovalNotice>> {
        let mut out = Vec::new();
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            let roster = self.roster(&id)?;
            let wire = self.channel(&id)?.keys.wire();
            for (user, cuts) in &roster.removed {
                let left = roster.left.contains(user);
                out.push(hearth_core::peer::RemovalNotice {
                    wire,
                    user: *user,
                    left,
                    cuts: if left {
                        Vec::new()
                    } else {
                        cuts.iter()
                            .take(hearth_core::peer::MAX_REMOVAL_CUTS)
                            .map(|(d, s)| (*d, *s))
                            .collect()
                    },
                    at: roster.removed_at.get(user).copied().unwrap_or(0),
                    back: false,
                });
            }
            // Added back: a relay that took the removal serves them again.
            for (user, at) in &roster.added_back {
                out.push(hearth_core::peer::RemovalNotice {
                    wire,
                    user: *user,
                    left: false,
                    cuts: Vec::new(),
                    at: *at,
                    back: true,
                });
            }
        }
        Ok(out)
    }

    /// `device` and every other id of this user's devices that a feed held
    /// here signs with the same key (a device that moved to its keyed id),
    /// then every device of this user certified through one of those; in
    /// that order, so that the revocation of `device` itself is written
    /// first, under the key generation all of them hold (each revocation
    /// starts a generation that leaves the revoked out, and a device linked
    /// through `device` learns it is revoked from that first one).
    pub(crate) fn ids_of_device(&self, device: &hearth_core::DeviceId) -> Result<Vec<hearth_core::DeviceId>> {
        let me = self.identity.user();
        let key = self
            .channels
            .values()
            .find_map(|ch| ch.chains.get(device).map(|(k, _)| *k));
        let mut ids = BTreeSet::from([*device]);
        if let Some(key) = key {
            for ch in self.channels.values() {
                ids.extend(
                    ch.chains
                        .iter()
                        .filter(|(d, (k, _))| *k == key && ch.devices.get(d) == Some(&me))
                        .map(|(d, _)| *d),
                );
            }
        }
        // Devices certified through one of those (linked by it, or by a
        // device it linked) go with it, each named with its own cut.
        let keys: BTreeSet<[u8; 32]> = key.into_iter().collect();
        for ch in self.channels.values() {
            for (d, (_, chain)) in &ch.chains {
                if ch.devices.get(d) == Some(&me)
                    && hearth_core::device::issuers(chain)
                        .iter()
                        .any(|(i, k)| ids.contains(i) || keys.contains(k))
                {
                    ids.insert(*d);
                }
            }
        }
        let mut out = vec![*device];
        out.extend(ids.into_iter().filter(|d| d != device));
        Ok(out)
    }

    /// A user of a channel's roster by user id, unique id prefix (4 hex
    /// digits or more) or display name.
    pub(crate) fn resolve_member(&mut self, channel: &ChannelId, input: &str) -> Result<UserId> {
        let info = self.roster_info(channel)?;
        if let Ok(user) = input.parse::<UserId>() {
            return Ok(user);
        }
        let items = info
            .members
            .iter()
            .map(|m| (m.user, m.user.to_hex(), m.name.as_deref() == Some(input)));
        match named_or_prefixed(input, items).as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::NotFound {
                what: "member",
                id: input.to_string(),
            }),
            _ => Err(Error::invalid(
                "member",
                format!("{input:?} matches more than one member; use the user id"),
            )),
        }
    }

    /// The channel's own name (epoch 0), or until that arrives by sync, the
    /// name its invite gave it.
    fn channel_name(&mut self, channel: &ChannelId) -> Result<String> {
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        self.hidden(channel)?;
        let own = self.loaded(channel, META_EPOCH).and_then(|le| le.view.name.clone());
        Ok(own
            .or_else(|| self.channels.get(channel).and_then(|ch| ch.invited_name.clone()))
            .unwrap_or_default())
    }

    /// One channel's entry in the list.
    pub(crate) fn channel_info(&mut self, channel: &ChannelId) -> Result<ChannelInfo> {
        let name = self.channel_name(channel)?;
        let unread = self.unread(channel)?;
        let messages = self.live_message_count(channel)?;
        let retention = self.retention(channel)?;
        let floor = self.expiry_floor(channel)?;
        let ch = self.channel(channel)?;
        Ok(ChannelInfo {
            retention,
            id: *channel,
            name,
            messages,
            unread,
            newest: ch.newest().filter(|n| floor.is_none_or(|f| *n >= f)),
            read_up_to: ch.my_read(),
        })
    }

    /// Every channel, by name.
    pub(crate) fn list_channels(&mut self) -> Result<Vec<ChannelInfo>> {
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.channel_info(&id)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Find a channel by full id, unique id prefix (at least 4 hex digits) or exact name.
    pub(crate) fn resolve_channel(&mut self, input: &str) -> Result<ChannelId> {
        if let Ok(id) = input.parse::<ChannelId>() {
            return self.channel(&id).map(|_| id);
        }
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let named = self.channel_name(&id)? == input;
            items.push((id, id.to_hex(), named));
        }
        match named_or_prefixed(input, items).as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::NotFound {
                what: "channel",
                id: input.to_string(),
            }),
            _ => Err(Error::Ambiguous {
                input: input.to_string(),
            }),
        }
    }
}

/// The items `input` names, of `(item, id in hex, whether its name is
/// input)`: those whose name is `input`; failing that, when `input` is 4 hex
/// digits or more, those whose id starts with it.
fn named_or_prefixed<T>(input: &str, items: impl IntoIterator<Item = (T, String, bool)>) -> Vec<T> {
    let items: Vec<(T, String, bool)> = items.into_iter().collect();
    if items.iter().any(|(_, _, named)| *named) {
        return items
            .into_iter()
            .filter(|(_, _, named)| *named)
            .map(|(t, _, _)| t)
            .collect();
    }
    if input.len() < 4 || !input.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Vec::new();
    }
    let lower = input.to_ascii_lowercase();
    items
        .into_iter()
        .filter(|(_, hex, _)| hex.starts_with(&lower))
        .map(|(t, _, _)| t)
        .collect()
}
