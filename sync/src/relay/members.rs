//! Who a relay serves (issue 8, item 5): a relay has no roster, so it
//! learns from the users that configured it. Each gives it a certificate
//! of the relay (`hearth_core::peer::RelayCert`), which the relay keeps for
//! the channels of that connection and shows members, so that they serve
//! it; and each hands it the removals of those channels
//! (`hearth_core::peer::RemovalNotice`), after which the relay serves the
//! removed user's devices nothing more of the channel and takes none of
//! their entries past the cuts. A device proves who it is on every Hello
//! (`hearth_core::peer::Who`), checked against the chains the relay holds.
//!
//! ```text
//! C | wire [32] | user [32] -> postcard(RelayCert)      (log record kind 8: wire | cert)
//! X | wire [32] | user [32] -> postcard(RemovalNotice)  (log record kind 9)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use hearth_core::peer::{Certifier, Claim, RelayCert, RemovalNotice, Vetting};
use hearth_core::{DeviceId, UserId, WireId};
use hearth_store::{Error, Result, log_kind};

use super::{Inner, State, corrupted, sled_error};

/// `C | wire [32] | user [32]` -> postcard([`RelayCert`]): a user's
/// certificate of this relay, shown to members for the channel (format 7).
pub(super) const T_CERTS: u8 = b'C';
/// `X | wire [32] | user [32]` -> postcard([`RemovalNotice`]): a user a
/// certifying user removed from the channel (format 7).
pub(super) const T_REMOVED: u8 = b'X';
/// Most certificates one channel keeps.
const MAX_CERTS_PER_CHANNEL: usize = 256;
/// Most removals one channel keeps.
const MAX_REMOVALS_PER_CHANNEL: usize = 4096;
/// How far ahead of this relay's clock a removal's clock may be (as members
/// allow remote timestamps: `hearth_store::Config::max_clock_skew`).
const MAX_NOTICE_SKEW_MS: u64 = 10 * 60 * 1000;
/// Devices whose keys the relay remembers from peers' proofs, at most.
pub(super) const MAX_PEER_KEYS: usize = 4096;

/// The sled key of a channel's row for a user.
pub(super) fn user_key(table: u8, wire: &WireId, user: &UserId) -> [u8; 65] {
    let mut k = [0u8; 65];
    k[0] = table;
    k[1..33].copy_from_slice(&wire.0);
    k[33..].copy_from_slice(&user.0);
    k
}

/// A certificate log record's body: the wire id, then the certificate.
pub(super) fn cert_record(wire: &WireId, cert: &RelayCert) -> Vec<u8> {
    let mut body = wire.0.to_vec();
    body.extend_from_slice(&cert.encode());
    body
}

/// A certificate record or row, checked: its channel, the certificate and
/// who made it.
pub(super) fn decode_cert(wire: &[u8], cert: &[u8]) -> Option<(WireId, RelayCert, Certifier)> {
    let wire = WireId(wire.try_into().ok()?);
    let cert = RelayCert::decode(cert).ok()?;
    let by = cert.verify().ok()?;
    Some((wire, cert, by))
}

impl State {
    /// The removal of `user` from `wire` held here, if any (the latest
    /// notice of the user, unless it says the user was added back).
    pub(super) fn removal(&self, wire: &WireId, user: &UserId) -> Option<&RemovalNotice> {
        self.removed.get(wire)?.get(user).filter(|r| r.removes())
    }

    /// Whether `c` (a device, or a relay's certifier) is served `wire`:
    /// its user not removed there, its device not revoked.
    pub(super) fn serves(&self, wire: &WireId, c: &Certifier) -> bool {
        self.removal(wire, &c.user).is_none()
            && self.revocation_cut(wire, &c.device, &c.user, Some(c.key)).is_none()
            && !self.revoked_through(wire, &c.user, None, &c.via)
    }

    pub(super) fn take_cert(&mut self, wire: WireId, cert: RelayCert, by: Certifier) {
        self.certs.entry(wire).or_default().insert(by.user, (cert, by));
    }

    /// Keep `r` if it stands for a later op than the notice held of its
    /// user there (of two of the same clock, the first stands; a notice of
    /// relay format 7 has none, and any later one overrules it). Returns
    /// whether it was kept.
    pub(super) fn take_removal(&mut self, r: RemovalNotice) -> bool {
        let slot = self.removed.entry(r.wire).or_default();
        if slot.get(&r.user).is_some_and(|old| old.at >= r.at) {
            return false;
        }
        slot.insert(r.user, r);
        true
    }
}

impl Inner {
    /// The user, key and issuers of `device`, from a chain a feed here
    /// holds or one a peer sent.
    fn held_key(&self, st: &State, device: &DeviceId) -> Option<Certifier> {
        st.chains
            .values()
            .find_map(|c| {
                let (key, chain) = c.get(device)?;
                Some(Certifier {
                    user: chain.last()?.body.user,
                    device: *device,
                    key: *key,
                    via: hearth_core::device::issuers(chain),
                })
            })
            .or_else(|| self.peer_keys().get(device).cloned())
    }

    fn peer_keys(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Certifier>> {
        self.peer_keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Which of `wires` the peer making `claim` is served: a device whose
    /// user no certifying user removed and whose device is not revoked; a
    /// relay, if one of its certifiers is such.
    pub(super) fn vet(&self, claim: &Claim, wires: &[WireId]) -> Vetting {
        let st = self.state();
        let device = match claim.device(|d| self.held_key(&st, d)) {
            Ok(d) => d,
            Err(None) => return Vetting::Unknown,
            Err(Some(e)) => return Vetting::Forged(e.to_string()),
        };
        if let (Some(c), Some(who)) = (&device, &claim.who)
            && !who.chain.is_empty()
        {
            let mut keys = self.peer_keys();
            if keys.len() >= MAX_PEER_KEYS {
                keys.clear();
            }
            keys.insert(c.device, c.clone());
        }
        let certifiers = claim.certifiers();
        let allowed = wires
            .iter()
            .filter(|w| match &device {
                Some(c) => st.serves(w, c),
                None => certifiers.iter().any(|c| st.serves(w, c)),
            })
            .copied()
            .collect();
        Vetting::Allowed { wires: allowed, device }
    }

    /// The certificates this relay shows for `wires` (each once, at most
    /// [`crate::proto::MAX_CERTS`]).
    pub(super) fn certs_for(&self, wires: &[WireId]) -> Vec<RelayCert> {
        let st = self.state();
        let mut out: Vec<RelayCert> = Vec::new();
        for w in wires {
            for (cert, by) in st.certs.get(w).into_iter().flat_map(BTreeMap::values) {
                if out.len() >= crate::proto::MAX_CERTS {
                    return out;
                }
                // Not a certificate by a user removed here, or a device revoked.
                if st.serves(w, by) && !out.contains(cert) {
                    out.push(cert.clone());
                }
            }
        }
        out
    }

    /// Keep `cert` (of this relay, `me`) for the granted channels of
    /// `wires` whose certifier is not removed there. Durable (log, fsynced)
    /// before it returns; a certificate held already is not written again.
    pub(super) fn certify(&self, cert: RelayCert, me: &[u8], wires: Vec<WireId>) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let Ok(by) = cert.verify() else {
            return Err(corrupted("relay certificate", "a certificate that does not verify"));
        };
        if cert.relay.as_slice() != me {
            return Err(corrupted("relay certificate", "a certificate of another relay"));
        }
        let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let new: Vec<WireId> = {
            let st = self.state();
            wires
                .into_iter()
                .filter(|wire| {
                    st.grants.contains_key(wire)
                        && st.serves(wire, &by)
                        && st.certs.get(wire).and_then(|m| m.get(&by.user)).map(|(c, _)| c) != Some(&cert)
                        && st.certs.get(wire).map_or(0, BTreeMap::len) < MAX_CERTS_PER_CHANNEL
                })
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let bodies: Vec<Vec<u8>> = new
            .iter()
            .map(|wire| {
                batch.insert(&user_key(T_CERTS, wire, &by.user)[..], cert.encode());
                cert_record(wire, &cert)
            })
            .collect();
        let records: Vec<(u8, &[u8])> = bodies.iter().map(|b| (log_kind::CERT, b.as_slice())).collect();
        let written = self.write(&mut w, batch, &records, None);
        if written.is_err() {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        written?;
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        for wire in new {
            st.take_cert(wire, cert.clone(), by.clone());
        }
        Ok(())
    }

    /// Of `removals`, those `by` may make: of channels it certified this
    /// relay for, of another user, while `by` itself is not removed there.
    /// The notice of the latest op of a user stands (a removal, or its
    /// adding back). Returns the new ones and how many of those sent are
    /// held (new or before).
    pub(super) fn removals_taken(
        &self,
        removals: Vec<RemovalNotice>,
        by: Option<Certifier>,
    ) -> (Vec<RemovalNotice>, u32) {
        let Some(by) = by else { return (Vec::new(), 0) };
        // A notice's clock no later than this relay's clock allows: one from
        // the far future would stand for good (nothing later could overrule it).
        let latest = hearth_core::Timestamp::from_millis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                .saturating_add(MAX_NOTICE_SKEW_MS),
        )
        .0;
        let st = self.state();
        let mut new: Vec<RemovalNotice> = Vec::new();
        let mut held = 0;
        for r in removals {
            if r.check().is_err()
                || r.at > latest
                || r.user == by.user
                || !st.certs.get(&r.wire).is_some_and(|m| m.contains_key(&by.user))
                || !st.serves(&r.wire, &by)
            {
                continue;
            }
            let kept = st.removed.get(&r.wire).and_then(|m| m.get(&r.user));
            if kept.is_some_and(|k| k.at >= r.at) {
                held += 1;
                continue;
            }
            if let Some(i) = new.iter().position(|n| n.wire == r.wire && n.user == r.user) {
                held += 1;
                if new[i].at < r.at {
                    new[i] = r;
                }
                continue;
            }
            let count =
                st.removed.get(&r.wire).map_or(0, BTreeMap::len) + new.iter().filter(|n| n.wire == r.wire).count();
            if kept.is_none() && count >= MAX_REMOVALS_PER_CHANNEL {
                continue;
            }
            held += 1;
            new.push(r);
        }
        (new, held)
    }

    /// Rows of the certificates and removals in sled, into `st`.
    pub(super) fn load_members(tree: &sled::Tree, st: &mut State) -> Result<()> {
        for row in tree.scan_prefix([T_CERTS]) {
            let (k, v) = row.map_err(sled_error)?;
            let (wire, cert, by) = k
                .get(1..33)
                .and_then(|w| decode_cert(w, &v))
                .ok_or_else(|| corrupted("relay certificates", "a certificate that does not verify"))?;
            if k.len() != 65 || k[33..] != by.user.0 {
                return Err(corrupted("relay certificates", "a key that is not its certificate's"));
            }
            st.take_cert(wire, cert, by);
        }
        for row in tree.scan_prefix([T_REMOVED]) {
            let (k, v) = row.map_err(sled_error)?;
            let r = RemovalNotice::decode_kept(&v).map_err(|e| corrupted("relay removals", e))?;
            if k.len() != 65 || k[1..33] != r.wire.0 || k[33..] != r.user.0 {
                return Err(corrupted("relay removals", "a key that is not its removal's"));
            }
            st.take_removal(r);
        }
        Ok(())
    }
}
