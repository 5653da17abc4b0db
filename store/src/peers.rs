//! Who a sync peer is, checked against this store's rosters (issue 8, item
//! 5; the proofs are `hearth_core::peer`'s).
//!
//! A peer that proves a channel's access key is served the channel only if
//! it is also a device this channel's roster neither removes nor revokes
//! (by id, or by key: a device that moved to its keyed id), or a relay
//! certified by such a device. So a removed member, which keeps the access
//! key, learns nothing more of the channel from this store's node, and
//! cannot pose as a relay either: its own certificates name a removed user.

use hearth_core::ChannelId;
use hearth_core::WireId;
use hearth_core::device::DeviceCert;
use hearth_core::peer::{Certifier, Claim, Ends, Nonce, RelayCert, RemovedNotice, Vetting, Who, WhoRole};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::{T_TOLD, channel_prefix, seal_record};
use crate::log::kind;
use crate::store::Store;

/// Notices of a removal handed or taken in one go, at most.
pub const MAX_TOLD: usize = 64;
/// How far ahead of the ops held of its writing device a removal op a
/// notice names may be (a notice is lifted once the roster holds that op:
/// one naming an op number no device reaches would never be).
pub const MAX_TOLD_AHEAD: u32 = 4096;

/// Devices whose keys a store remembers from peers' proofs, at most (the
/// memory is cleared when full; a peer then sends its chain once more).
const MAX_PEER_KEYS: usize = 4096;

impl Engine {
    fn own_chain(&self) -> Result<(&hearth_core::device::DeviceKeys, Vec<DeviceCert>)> {
        match (self.identity.device_keys(), self.identity.device_chain()) {
            (Some(k), Some(c)) => Ok((k, c.to_vec())),
            _ => Err(Error::corrupted("identity", "no device keys")),
        }
    }

    /// This device's proof on a sync connection, with its chain or without.
    pub(crate) fn who(
        &self,
        role: WhoRole,
        nonce: &Nonce,
        ends: &Ends,
        matched: &[u8],
        with_chain: bool,
    ) -> Result<Who> {
        let (keys, chain) = self.own_chain()?;
        let chain = if with_chain { chain } else { Vec::new() };
        Ok(Who::sign(keys, chain, role, nonce, ends, matched))
    }

    /// This device's certificate of the relay whose peer id is `relay`.
    pub(crate) fn relay_cert(&self, relay: &[u8]) -> Result<RelayCert> {
        let (keys, chain) = self.own_chain()?;
        Ok(RelayCert::sign(keys, chain, relay))
    }

    /// The user, key and issuers of `device`, from a chain a feed here
    /// holds or one a peer sent.
    fn held_key(&self, device: &hearth_core::DeviceId) -> Option<Certifier> {
        let held = |user, key: [u8; 32], chain: &[DeviceCert]| Certifier {
            user,
            device: *device,
            key,
            via: hearth_core::device::issuers(chain),
        };
        if *device == self.identity.device()
            && let (Some(k), Some(chain)) = (self.identity.device_keys(), self.identity.device_chain())
        {
            return Some(held(self.identity.user(), k.public().signing, chain));
        }
        self.channels
            .values()
            .find_map(|ch| {
                let (key, chain) = ch.chains.get(device)?;
                Some(held(chain.last()?.body.user, *key, chain))
            })
            .or_else(|| self.peer_keys.get(device).cloned())
    }

    /// Which of `wires` the claimant may be served (see the module docs).
    pub(crate) fn vet(&mut self, claim: &Claim, wires: &[WireId]) -> Result<Vetting> {
        let device = match claim.device(|d| self.held_key(d)) {
            Ok(d) => d,
            Err(None) => return Ok(Vetting::Unknown),
            Err(Some(e)) => return Ok(Vetting::Forged(e.to_string())),
        };
        if let (Some(c), Some(who)) = (&device, &claim.who)
            && !who.chain.is_empty()
        {
            if self.peer_keys.len() >= MAX_PEER_KEYS {
                self.peer_keys.clear();
            }
            self.peer_keys.insert(c.device, c.clone());
        }
        let certifiers = claim.certifiers();
        let allowed = self.serving(device.as_ref(), &certifiers, wires)?;
        Ok(Vetting::Allowed { wires: allowed, device })
    }
}

impl Engine {
    /// Of `wires`, those served to `device` (a device proved already), or,
    /// without one, to a relay certified by one of `certifiers`.
    pub(crate) fn serving(
        &mut self,
        device: Option<&Certifier>,
        certifiers: &[Certifier],
        wires: &[WireId],
    ) -> Result<Vec<WireId>> {
        let mut allowed = Vec::new();
        for wire in wires {
            let Some(id) = self.by_wire.get(wire).copied() else {
                continue;
            };
            let roster = self.roster(&id)?;
            let ch = self.channel(&id)?;
            let revoked = revoked_devices(ch, &roster);
            let current = |c: &Certifier| roster.role(&c.user).is_some() && !revoked(c);
            let ok = match device {
                Some(c) => current(c),
                None => certifiers.iter().any(current),
            };
            if ok {
                allowed.push(*wire);
            }
        }
        Ok(allowed)
    }
}

/// Whether the roster (with the chains held in `ch`) revokes a device
/// that proved itself, or one it was issued through: by id or by key, a
/// revocation of the device's own user only.
pub(crate) fn revoked_devices<'a>(
    ch: &'a crate::channel::ChannelState,
    roster: &hearth_core::Roster,
) -> impl Fn(&Certifier) -> bool + 'a {
    let revoked = ch.revocations(roster);
    let keys: std::collections::BTreeMap<[u8; 32], hearth_core::UserId> = revoked
        .iter()
        .filter_map(|(d, (u, _))| ch.chains.get(d).map(|(k, _)| (*k, *u)))
        .collect();
    move |c: &Certifier| {
        c.revoked_by(|d, k| revoked.get(d).is_some_and(|(u, _)| *u == c.user) || keys.get(k) == Some(&c.user))
    }
}

impl Engine {
    /// Whether a member told this device its user was removed from
    /// `channel` by a removal `roster` does not hold (once it holds it, the
    /// roster decides: a user added back writes again).
    pub(crate) fn told_removed(&self, channel: &ChannelId, roster: &hearth_core::Roster) -> bool {
        let Ok(ch) = self.channel(channel) else { return false };
        ch.told
            .as_ref()
            .is_some_and(|n| roster.last_n.get(&n.op.device).is_none_or(|m| *m < n.op.n))
    }

    /// The notices of `user`'s removal from those of `wires` that removed
    /// it by a signed removal (at most [`MAX_TOLD`]), for its devices,
    /// which are served those channels no more.
    pub(crate) fn told(&mut self, user: &hearth_core::UserId, wires: &[WireId]) -> Result<Vec<RemovedNotice>> {
        let mut out = Vec::new();
        for wire in wires {
            let Some(id) = self.by_wire.get(wire).copied() else {
                continue;
            };
            let roster = self.roster(&id)?;
            let (Some((op, sig)), None) = (roster.remove_sigs.get(user), roster.role(user)) else {
                continue;
            };
            let chain = if self.identity.is_this_device(&op.device) {
                self.identity.device_chain().map(<[_]>::to_vec)
            } else {
                self.channel(&id)?.chains.get(&op.device).map(|(_, c)| c.clone())
            };
            let Some(chain) = chain else { continue };
            out.push(RemovedNotice {
                wire: *wire,
                user: *user,
                op: *op,
                chain,
                sig: serde_bytes::ByteArray::new(*sig),
            });
            if out.len() >= MAX_TOLD {
                break;
            }
        }
        Ok(out)
    }

    /// Take notices of this user's removal a member handed this device:
    /// each must be of a channel held here, name this user, verify, and be
    /// signed by a device of an admin or owner by this store's roster, not
    /// revoked; one the roster holds already is left to the roster. Kept
    /// (log record, sled row) and raised as a roster event. Returns how
    /// many stand here.
    pub(crate) fn take_told(&mut self, notices: Vec<RemovedNotice>) -> Result<u32> {
        let me = self.identity.user();
        let mut held = 0;
        let mut batch = sled::Batch::default();
        let mut moved = Vec::new();
        for n in notices.into_iter().take(MAX_TOLD) {
            let Some(channel) = self.by_wire.get(&n.wire).copied() else {
                continue;
            };
            if n.user != me {
                continue;
            }
            let Ok(by) = n.verify() else { continue };
            let roster = self.roster(&channel)?;
            let (allowed, held_here) = {
                let ch = self.channel(&channel)?;
                let revoked = revoked_devices(ch, &roster);
                // The signer may remove this user by the roster here (an
                // admin removes members and admins, only an owner owners,
                // never the last owner), and is not revoked.
                let removal = hearth_core::member::Action::Remove {
                    user: me,
                    upto: Vec::new(),
                };
                let allowed = roster.allows(&by.user, &removal).is_ok() && !revoked(&by);
                (allowed, ch.told.as_ref().is_some_and(|t| t.op == n.op))
            };
            if !allowed {
                continue;
            }
            if held_here {
                held += 1;
                continue;
            }
            let seen = roster.last_n.get(&n.op.device).copied().unwrap_or(0);
            if seen >= n.op.n {
                continue; // the roster holds the removal: it decides
            }
            if n.op.n - seen > MAX_TOLD_AHEAD {
                continue; // an op this far ahead of what is held is made up
            }
            let plain = n.encode();
            let sealed = self.seal_log(kind::TOLD, &plain)?;
            self.log_record(kind::TOLD, &sealed);
            let k = channel_prefix(T_TOLD, &n.wire);
            batch.insert(&k[..], seal_record(&self.records, &k, &plain)?);
            moved.push((channel, n));
            held += 1;
        }
        if moved.is_empty() {
            return Ok(held);
        }
        self.write_log_batch(&mut batch)?;
        self.tree.apply_batch(batch)?;
        self.dirty = true;
        for (channel, n) in moved {
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.told = Some(n);
            }
            let _ = self.events.send(crate::StoreEvent::Roster { channel });
        }
        Ok(held)
    }
}

impl Store {
    /// The notices of `user`'s removal from those of `wires` removed by a
    /// signed removal, to hand that user's device (sync protocol 6: in the
    /// answer to a Hello whose channels it is no longer served).
    pub async fn told(&self, user: hearth_core::UserId, wires: Vec<WireId>) -> Result<Vec<RemovedNotice>> {
        self.query(move |e| e.told(&user, &wires)).await
    }

    /// Take notices of this user's removal that a member handed this device
    /// (the engine's `take_told`): a channel told
    /// so takes no more writes here (`Error::NotAllowed`) until its roster
    /// holds that removal. Returns how many stand.
    pub async fn take_told(&self, notices: Vec<RemovedNotice>) -> Result<u32> {
        self.query(move |e| e.take_told(notices)).await
    }

    /// Of `wires`, those the device `device` (proved on a connection) may be
    /// served: its user not removed there, the device not revoked.
    pub async fn serving(&self, device: Certifier, wires: Vec<WireId>) -> Result<Vec<WireId>> {
        self.query(move |e| e.serving(Some(&device), &[], &wires)).await
    }

    /// This device's proof on a sync connection (`hearth_core::peer::Who`),
    /// with its certificate chain when the peer may not hold it.
    pub async fn sync_who(
        &self,
        role: WhoRole,
        nonce: Nonce,
        ends: Ends,
        matched: Vec<u8>,
        with_chain: bool,
    ) -> Result<Who> {
        self.query(move |e| e.who(role, &nonce, &ends, &matched, with_chain))
            .await
    }

    /// This device's certificate of a relay its user configured (`relay`:
    /// its peer id bytes), which the relay shows other members.
    pub async fn relay_cert(&self, relay: Vec<u8>) -> Result<RelayCert> {
        self.query(move |e| e.relay_cert(&relay)).await
    }

    /// The removals relays should hold: one per user a roster here removes.
    pub async fn removal_notices(&self) -> Result<Vec<hearth_core::peer::RemovalNotice>> {
        self.query(|e| e.removal_notices()).await
    }

    /// Which of `wires` (channels the peer proved it holds the access key
    /// of) the peer that makes `claim` may be served: those whose roster
    /// neither removes its user nor revokes its device, or, for a relay,
    /// where a current member's device certified it.
    pub async fn vet(&self, claim: Claim, wires: Vec<WireId>) -> Result<Vetting> {
        self.query(move |e| e.vet(&claim, &wires)).await
    }
}
