//! Removal cuts: what a removed member wrote past its removal is not shown.
//!
//! A removal keeps each of the removed user's feeds up to the last entry its
//! writer held ([`hearth_core::member::Action::Remove`]). Entries past the
//! cut are still taken and applied like any other: a member that took one
//! before the removal reached it may have written on top of it (automerge
//! changes depend on everything their writer had), so refusing or undoing it
//! elsewhere would leave that member's later changes waiting for ever. What
//! the cut does is hide what those entries say, from every query, on every
//! member alike: the messages they post, and in each epoch document every op
//! of the cut device from its first change past the cut on (edits, deletes,
//! reactions, read markers, receipts, names; a value it overwrote shows as
//! it was before, see [`hearth_core::EpochDoc::set_cuts`]). Both are
//! functions of the roster and the feeds, which converge.

use std::collections::{BTreeMap, BTreeSet};

use hearth_core::{ChannelId, Cuts, Envelope, Epoch, MessageId, OpCut, decode_change_posts};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::*;

/// `T_UNOPENED` state byte: waiting for a key generation (4-byte rows have none).
pub(crate) const WAITING: u8 = 0;
/// `T_UNOPENED` state byte: the content was refused when the key came.
pub(crate) const REFUSED: u8 = 1;

/// A `T_UNOPENED` value: the generation, and a state byte unless waiting.
pub(crate) fn held_value(generation: u32, state: u8) -> Vec<u8> {
    let mut v = generation.to_le_bytes().to_vec();
    if state != WAITING {
        v.push(state);
    }
    v
}

/// The generation and state of a `T_UNOPENED` value.
pub(crate) fn decode_held(v: &[u8]) -> Result<(u32, u8)> {
    match v.len() {
        4 | 5 => Ok((
            u32::from_le_bytes(v[..4].try_into().expect("4 bytes")),
            v.get(4).copied().unwrap_or(WAITING),
        )),
        _ => Err(Error::corrupted("unopened entry row", "bad length")),
    }
}

impl Engine {
    /// The messages of a channel that removal cuts hide (computed on first
    /// use after the roster or a removed user's feed moved). Computing them
    /// also sets, on every loaded epoch of the channel, which ops the cuts
    /// leave out of its view (edits, deletes, reactions, read markers,
    /// receipts and names written past a cut), rebuilding the views that
    /// change: call it before reading a view.
    pub(crate) fn hidden(&mut self, channel: &ChannelId) -> Result<&BTreeSet<MessageId>> {
        if self.channel(channel)?.hidden.is_none() {
            let (set, cuts) = self.compute_hidden(channel)?;
            let ch = self.channels.get_mut(channel).expect("checked above");
            ch.hidden = Some(set);
            ch.cuts = cuts;
            for ((c, epoch), le) in self.epochs.iter_mut() {
                if c == channel && le.doc.set_cuts(ch.cuts.get(epoch).cloned().unwrap_or_default()) {
                    le.view = le.doc.view(&ch.devices);
                }
            }
        }
        Ok(self.channel(channel)?.hidden.as_ref().expect("computed above"))
    }

    fn compute_hidden(&mut self, channel: &ChannelId) -> Result<(BTreeSet<MessageId>, BTreeMap<Epoch, Cuts>)> {
        let roster = self.roster(channel)?;
        let mut out = BTreeSet::new();
        let mut cuts: BTreeMap<Epoch, Cuts> = BTreeMap::new();
        if roster.removed.is_empty() && roster.revoked.is_empty() {
            return Ok((out, cuts));
        }
        let ch = self.channel(channel)?;
        let wire = ch.keys.wire();
        let revoked = ch.revocations(&roster);
        for (device, head) in &ch.heads {
            // The lower of a removal's cut and a revocation's.
            let removal = match roster.removed.get(&head.user) {
                Some(cut) if !roster.left.contains(&head.user) => Some(cut.get(device).copied().unwrap_or(0)),
                _ => None,
            };
            let revocation = revoked
                .get(device)
                .filter(|(u, _)| *u == head.user)
                .map(|(_, cut)| *cut);
            let Some(upto) = removal.into_iter().chain(revocation).min() else {
                continue;
            };
            for seq in upto.saturating_add(1)..=head.seq {
                let Some(bytes) = self.tree.get(feed_key(&wire, device, seq))? else {
                    continue;
                };
                // An entry that does not open here posts nothing shown here.
                let Ok(body) = Envelope::decode(&bytes).and_then(|e| e.open(&ch.keys)) else {
                    continue;
                };
                if let Ok((change, posts)) = decode_change_posts(&body.change, device, &head.user) {
                    out.extend(posts);
                    // The device's first change past the cut in this epoch:
                    // its ops from there on do not count.
                    let first = OpCut {
                        counter: change.start_op().get(),
                        heads: change.deps().to_vec(),
                    };
                    let slot = cuts.entry(body.epoch).or_default();
                    match slot.get(device) {
                        Some(c) if c.counter <= first.counter => {}
                        _ => {
                            slot.insert(*device, first);
                        }
                    }
                }
            }
        }
        Ok((out, cuts))
    }

    /// Whether a removal cut hides `msg` (of `channel`).
    pub(crate) fn is_hidden(&mut self, channel: &ChannelId, msg: &MessageId) -> Result<bool> {
        Ok(self.hidden(channel)?.contains(msg))
    }
}
