//! Per-channel state the engine keeps in memory: keys, the version vector, and
//! the summaries of every epoch (small; the epoch documents load on demand).

use std::collections::BTreeMap;

use hearth_core::{ChannelKeys, Devices, EntryHash, Epoch, EpochView, MessageId, UserId};
use serde::{Deserialize, Serialize};

/// The head of one device's feed in one channel: `heads` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedHead {
    /// The user who signs this feed.
    pub user: UserId,
    /// Highest sequence number stored (entries 1..=seq are all present).
    pub seq: u64,
    /// Hash of entry `seq`.
    pub hash: EntryHash,
}

/// What the store remembers of an epoch without loading it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSummary {
    /// Messages (replies and tombstones included).
    pub messages: u64,
    /// Messages by other users that are not deleted (for unread counts).
    pub others_live: u64,
    /// Oldest and newest message ids.
    pub min: Option<MessageId>,
    /// Newest message id.
    pub max: Option<MessageId>,
    /// Newest top-level message id (pages skip epochs by it).
    pub top_max: Option<MessageId>,
    /// Oldest top-level message id.
    pub top_min: Option<MessageId>,
    /// The local user's read marker in this epoch.
    pub my_read: Option<MessageId>,
    /// Entries in the epoch log.
    pub entries: u64,
    /// Epoch log rows covered by the snapshot (rows are numbered from 1; 0: no snapshot).
    pub snapshot_upto: u64,
    /// Number of snapshot chunks.
    pub snapshot_chunks: u16,
}

impl EpochSummary {
    /// Refresh the counts from a view.
    pub fn refresh(&mut self, view: &EpochView, me: &UserId) {
        let st = view.stats(me);
        self.messages = st.messages;
        self.others_live = st.others_live;
        self.min = st.min;
        self.max = st.max;
        self.top_min = st.top_min;
        self.top_max = st.top_max;
        self.my_read = view.read_marker(me);
    }

    /// Count the posts of a change whose posts alone move the counts
    /// ([`ChangeEffects::counted_by_posts`](hearth_core::ChangeEffects::counted_by_posts)),
    /// by `author`, into an epoch whose document is not loaded (a deferred
    /// epoch: `Engine::deferred`). The same counts and bounds as
    /// [`EpochSummary::refresh`] would give once the document is read, unless
    /// the author posted one id twice (its own feed's fault; the epoch's first
    /// load counts again).
    pub fn count_posts(&mut self, author: &UserId, me: &UserId, effects: &hearth_core::ChangeEffects) {
        for id in &effects.posts {
            self.messages += 1;
            if author != me {
                self.others_live += 1;
            }
            self.min = Some(self.min.map_or(*id, |m| m.min(*id)));
            self.max = Some(self.max.map_or(*id, |m| m.max(*id)));
            if !effects.replies.contains(id) {
                self.top_min = Some(self.top_min.map_or(*id, |m| m.min(*id)));
                self.top_max = Some(self.top_max.map_or(*id, |m| m.max(*id)));
            }
        }
    }
}

/// A channel's in-memory state.
pub struct ChannelState {
    /// Keys (id, key, wire id, feed key).
    pub keys: ChannelKeys,
    /// Every feed's head, own included.
    pub heads: BTreeMap<hearth_core::DeviceId, FeedHead>,
    /// The key each device signs its feed with (format 2 entries) and the
    /// certificate chain that certifies it (`T_CHAINS` rows).
    pub chains: BTreeMap<hearth_core::DeviceId, ([u8; 32], Vec<hearth_core::device::DeviceCert>)>,
    /// Device to user, from signed heads: who wrote what.
    pub devices: Devices,
    /// Summaries of every epoch (epoch 0 is the metadata epoch), dead ones
    /// left out.
    pub summaries: BTreeMap<Epoch, EpochSummary>,
    /// Epochs whose every message expired and whose documents are gone
    /// (`crate::retention`; `M dead` in sled): their entries are held as
    /// stubs, and an entry of one that comes later is cut to a stub too.
    pub dead: std::collections::BTreeSet<Epoch>,
    /// Epochs a peer sent stubs of that are not dead here (`M stubbed` in
    /// sled): weighed again against the newest epoch on every batch, so
    /// that a catch-up spread over batches kills what one batch would.
    pub stubbed: std::collections::BTreeSet<Epoch>,
    /// The newest epoch and how many messages (replies included) it holds; new
    /// top-level posts go there until it is full.
    pub current: (Epoch, u64),
    /// The newest read marker and message staged since the summaries were last
    /// refreshed (they catch up when the group closes), so that a marker never
    /// moves back between two quick `mark_read` calls.
    pub staged_read: Option<MessageId>,
    /// See `staged_read`.
    pub staged_newest: Option<MessageId>,
    /// Delivery receipts owed: for each writer device, the newest of its
    /// messages stored here that no receipt of this device covers yet (also in
    /// sled, `T_OWED`, so they survive a crash before they are written).
    pub owed: BTreeMap<hearth_core::DeviceId, MessageId>,
    /// The name the invite gave the channel: its name until its own arrives.
    pub invited_name: Option<String>,
    /// Messages that removal cuts hide (`crate::cuts`); `None`: to compute.
    pub hidden: Option<std::collections::BTreeSet<MessageId>>,
    /// Per epoch, the ops cuts leave out of views (`crate::cuts`), as last
    /// computed with `hidden`.
    pub cuts: BTreeMap<hearth_core::Epoch, hearth_core::Cuts>,
    /// A member told this device that its user was removed from the
    /// channel (`T_TOLD`): no writes here while the roster does not hold
    /// that removal.
    pub told: Option<hearth_core::peer::RemovedNotice>,
}

impl ChannelState {
    /// A post of this device's went into `epoch`: `current` counts it (the
    /// epoch size counts every message in it, replies included, exactly
    /// like the summaries it is rebuilt from on open).
    pub(crate) fn count_post(&mut self, epoch: Epoch) {
        if epoch == self.current.0 {
            self.current.1 += 1;
        } else if epoch > self.current.0 {
            self.current = (epoch, 1);
        }
    }

    /// `current` from the summaries: the newest message epoch and its count.
    pub(crate) fn set_current(&mut self) {
        if let Some((&e, s)) = self
            .summaries
            .iter()
            .next_back()
            .filter(|(e, _)| **e != hearth_core::META_EPOCH)
        {
            self.current = (e, s.messages);
        }
    }

    /// The local user's read marker: the newest over every epoch.
    pub fn my_read(&self) -> Option<MessageId> {
        self.summaries
            .values()
            .filter_map(|s| s.my_read)
            .max()
            .max(self.staged_read)
    }

    /// The newest message of the channel.
    pub fn newest(&self) -> Option<MessageId> {
        self.summaries
            .values()
            .filter_map(|s| s.max)
            .max()
            .max(self.staged_newest)
    }

    /// Messages in the channel.
    pub fn message_count(&self) -> u64 {
        self.summaries.values().map(|s| s.messages).sum()
    }

    /// Of the devices whose feeds are held here, those certified through
    /// other devices, with those (ids, nearest first): what the roster's
    /// fold needs to refuse the ops of a device linked through a revoked one.
    pub fn issuers(&self) -> std::collections::HashMap<hearth_core::DeviceId, Vec<hearth_core::DeviceId>> {
        self.chains
            .iter()
            .filter_map(|(d, (_, chain))| {
                let is = hearth_core::device::issuers(chain);
                (!is.is_empty()).then(|| (*d, is.into_iter().map(|(i, _)| i).collect()))
            })
            .collect()
    }

    /// The devices `roster` revokes here, with their user and the last entry
    /// of their feed that stays: those it names; every other feed of the
    /// same user signed by a revoked device's key (a device that moved to
    /// its keyed id, store format 7, after its revoker last saw it); and
    /// every feed whose device was certified through a revoked device
    /// (linked by it, or by a device it linked), the latter two cut at
    /// their start.
    pub fn revocations(&self, roster: &hearth_core::Roster) -> BTreeMap<hearth_core::DeviceId, (UserId, u64)> {
        // A revocation counts for a device of its own user only (the fold
        // checks that its writer is that user; whose the device is, the
        // feeds held here tell).
        let mut out: BTreeMap<hearth_core::DeviceId, (UserId, u64)> = BTreeMap::new();
        for ((d, u), upto) in &roster.revoked {
            match self.devices.get(d) {
                Some(owner) if owner == u => {
                    out.insert(*d, (*u, *upto));
                }
                // A device not held here: whichever revocation of it, until
                // its feed says whose it is (the lowest cut, to be safe).
                None => {
                    let e = out.entry(*d).or_insert((*u, *upto));
                    if *upto < e.1 {
                        *e = (*u, *upto);
                    }
                }
                Some(_) => {}
            }
        }
        if out.is_empty() {
            return out;
        }
        let keys: BTreeMap<[u8; 32], UserId> = out
            .iter()
            .filter_map(|(d, (u, _))| self.chains.get(d).map(|(k, _)| (*k, *u)))
            .collect();
        let named = out.clone();
        for (d, (k, chain)) in &self.chains {
            let Some(u) = self.devices.get(d) else { continue };
            let revoked = |i: &hearth_core::DeviceId, ik: &[u8; 32]| {
                named.get(i).is_some_and(|(ru, _)| ru == u) || keys.get(ik) == Some(u)
            };
            let by_key = keys.get(k) == Some(u);
            let through = hearth_core::device::issuers(chain).iter().any(|(i, ik)| revoked(i, ik));
            if by_key || through {
                out.entry(*d).or_insert((*u, 0));
            }
        }
        out
    }
}
