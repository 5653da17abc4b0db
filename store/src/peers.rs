//! Who a sync peer is, checked against this store's rosters (issue 8, item
//! 5; the proofs are `hearth_core::peer`'s).
//!
//! A peer that proves a channel's access key is served the channel only if
//! it is also a device this channel's roster neither removes nor revokes
//! (by id, or by key: a device that moved to its keyed id), or a relay
//! certified by such a device. So a removed member, which keeps the access
//! key, learns nothing more of the channel from this store's node, and
//! cannot pose as a relay either: its own certificates name a removed user.

use hearth_core::WireId;
use hearth_core::device::DeviceCert;
use hearth_core::peer::{Certifier, Claim, Ends, Nonce, RelayCert, Vetting, Who, WhoRole};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::store::Store;

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
            let revoked = ch.revocations(&roster);
            let keys: Vec<[u8; 32]> = revoked
                .keys()
                .filter_map(|d| ch.chains.get(d).map(|(k, _)| *k))
                .collect();
            let current = |c: &Certifier| {
                roster.role(&c.user).is_some() && !c.revoked_by(|d, k| revoked.contains_key(d) || keys.contains(k))
            };
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

impl Store {
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
