//! Channel membership: a roster kept as signed CRDT data in the channel's
//! metadata epoch (epoch 0).
//!
//! Every membership change is one op, written once under its own root key
//! `mo:<user>:<device>:<n>` by the device it names (checked like every key,
//! see `doc.rs`), so it is signed by that device's feed and travels with it.
//! Its value is a [`MemberBody`]: the action, the writer's clock, and the ops
//! its writer had seen (`parents`, the heads of the roster's history then).
//!
//! The roster is a function of the *set* of ops, so every replica holding the
//! same ops computes the same roster, whatever order they arrived in:
//!
//! 1. Ops are put in one order: parents before children; among ops ready at
//!    the same time, removals first, then the lower clock, then the lower key.
//!    An op whose parents are not all held (or that names itself in a cycle)
//!    waits ([`Roster::waiting`]).
//! 2. Each op is checked against the roster at its place in that order (the
//!    rules are in [`Roster::allows`]); an op that fails is kept in the
//!    history but changes nothing ([`Roster::refused`]).
//! 3. Removal wins: an op by a user whom a removal that stands removes, and
//!    that the removal did not see (concurrent with it), is refused, and the
//!    fold runs again without it, until nothing changes.
//!
//! Who is a member: the users the roster names (owner, admins, members), and
//! every other user who writes in the channel (a key holder: let in through
//! an invite, added, a linked device, or the holder of an old ticket that
//! carried the key), as a member, unless removed. Invites
//! ([`Action::Invite`]) let the holder of their secret in: any member writes
//! the [`Action::Join`], which stands only within the invite's end and uses
//! and before its revocation. A removal names, for each device
//! of the removed user, the last entry of its feed its author held
//! ([`Action::Remove`]'s `upto`): later entries are held, never applied, by
//! every member. Leaving (removing oneself) cuts nothing.
//! A channel made before rosters existed has none until a member claims it
//! ([`Action::Create`]; the first claim in the order above stands).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{DeviceId, UserId};

/// Most parents one op may name.
pub const MAX_PARENTS: usize = 32;
/// Most device feeds one removal may cut.
pub const MAX_CUT_DEVICES: usize = 256;
/// Most membership ops a roster folds (more are refused as "too many").
pub const MAX_ROSTER_OPS: usize = 4096;
/// Most invites one roster holds (open or ended).
pub const MAX_INVITES: usize = 1024;
/// Version of [`MemberBody`].
pub const MEMBER_BODY_VERSION: u8 = 1;

/// A member's role, from least to most authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads and writes.
    Member,
    /// Also adds, removes and promotes members and admins.
    Admin,
    /// Also manages owners; the last owner cannot be removed or demoted.
    Owner,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            _ => Err(Error::invalid("role", "expected owner, admin or member")),
        }
    }
}

/// One membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Start the roster with its writer as owner (written when a channel is
    /// made; for a channel older than rosters, the first claim stands).
    Create,
    /// Add `user` (a removed user included) with `role`.
    Add {
        /// Who.
        user: UserId,
        /// As what.
        role: Role,
    },
    /// Remove `user` (the writer itself: leave). Entries of its devices after
    /// `upto` (per device, the last entry the writer held; absent: none) are
    /// refused.
    Remove {
        /// Who.
        user: UserId,
        /// Per device of `user`, the last entry of its feed that stays.
        upto: Vec<(DeviceId, u64)>,
    },
    /// Change a member's role.
    SetRole {
        /// Who.
        user: UserId,
        /// The new role.
        role: Role,
    },
    /// Revoke a device of the writer's own user (written from another of its
    /// devices): its feed's entries after `upto` (the last one the writer
    /// held) are cut, and the device is left out of key generations.
    RevokeDevice {
        /// The device's user (the writer).
        user: UserId,
        /// The device.
        device: DeviceId,
        /// The last entry of its feed that stays.
        upto: u64,
    },
    /// Open an invite (admins and owners): whoever holds its secret (the
    /// ticket) may be let in by any member, within its end and uses.
    Invite {
        /// The invite's id (random).
        id: InviteId,
        /// The ed25519 public key of the invite's secret: a join carries a
        /// signature by it.
        key: [u8; 32],
        /// When it ends: unix milliseconds, compared with the milliseconds of
        /// the joining op's clock; 0 for never.
        expires: u64,
        /// How many joins it lets in; 0 for any number.
        uses: u32,
    },
    /// End an invite (admins and owners): no join through it stands after.
    RevokeInvite {
        /// The invite.
        id: InviteId,
    },
    /// Let `user` in through an invite (any member, for the holder of the
    /// invite's secret, whose signature over the join it carries).
    Join {
        /// Who joins.
        user: UserId,
        /// The joining device.
        device: DeviceId,
        /// Through which invite.
        invite: InviteId,
        /// [`sign_join`] by the invite's secret.
        sig: serde_bytes::ByteArray<64>,
    },
    /// [`Action::RevokeDevice`] with `sig`, the revoking device's signature
    /// of the revocation's notice for relays ([`RevocationNotice`]; what a
    /// store writes from sync protocol 4 on). The fold treats both alike;
    /// any member can hand a relay the notice, which the relay checks with
    /// no roster.
    RevokeDeviceSigned {
        /// The device's user (the writer).
        user: UserId,
        /// The device.
        device: DeviceId,
        /// The last entry of its feed that stays.
        upto: u64,
        /// [`sign_revocation`] by the writing device's key.
        sig: serde_bytes::ByteArray<64>,
    },
    /// [`Action::Remove`] of another user with `sig`, the removing device's
    /// signature of the removal's notice to the removed user
    /// ([`crate::peer::RemovedNotice`]; what a store writes from sync
    /// protocol 6 on). The fold treats both alike; any member can hand the
    /// notice to the removed user's devices, which are served the channel no
    /// more and so would not learn of it otherwise.
    RemoveSigned {
        /// Who.
        user: UserId,
        /// Per device of `user`, the last entry of its feed that stays.
        upto: Vec<(DeviceId, u64)>,
        /// [`sign_removal`] by the writing device's key.
        sig: serde_bytes::ByteArray<64>,
    },
}

impl Action {
    /// The user and cuts of a removal ([`Action::Remove`] or
    /// [`Action::RemoveSigned`]).
    pub fn removal(&self) -> Option<(&UserId, &[(DeviceId, u64)])> {
        match self {
            Action::Remove { user, upto } | Action::RemoveSigned { user, upto, .. } => Some((user, upto)),
            _ => None,
        }
    }

    /// The user, device and cut of a revocation ([`Action::RevokeDevice`]
    /// or [`Action::RevokeDeviceSigned`]).
    pub fn revocation(&self) -> Option<(&UserId, &DeviceId, u64)> {
        match self {
            Action::RevokeDevice { user, device, upto } | Action::RevokeDeviceSigned { user, device, upto, .. } => {
                Some((user, device, *upto))
            }
            _ => None,
        }
    }

    /// [`Action::RevokeDeviceSigned`] of `user`'s `device` at `upto`, its
    /// notice signed `sig` ([`sign_revocation`]).
    pub fn revoke_signed(user: UserId, device: DeviceId, upto: u64, sig: [u8; 64]) -> Action {
        Action::RevokeDeviceSigned {
            user,
            device,
            upto,
            sig: serde_bytes::ByteArray::new(sig),
        }
    }

    /// [`Action::RemoveSigned`] of `user` with cuts `upto`, its notice
    /// signed `sig` ([`sign_removal`]).
    pub fn remove_signed(user: UserId, upto: Vec<(DeviceId, u64)>, sig: [u8; 64]) -> Action {
        Action::RemoveSigned {
            user,
            upto,
            sig: serde_bytes::ByteArray::new(sig),
        }
    }

    /// [`Action::Join`] of `user`'s `device` through `invite`, signed `sig`.
    pub fn join(user: UserId, device: DeviceId, invite: InviteId, sig: [u8; 64]) -> Action {
        Action::Join {
            user,
            device,
            invite,
            sig: serde_bytes::ByteArray::new(sig),
        }
    }
}

/// An invite's id.
pub type InviteId = [u8; 16];

/// An invite id in hex.
pub fn invite_hex(id: &InviteId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signing-domain label of a join's signature.
const JOIN_DOMAIN: &[u8] = b"hearth v1 invite join";

fn join_message(invite: &InviteId, user: &UserId, device: &DeviceId) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + 32 + 16);
    m.extend_from_slice(invite);
    m.extend_from_slice(&user.0);
    m.extend_from_slice(&device.0);
    crate::device::domain_message(JOIN_DOMAIN, &m)
}

/// The public key of an invite secret (what [`Action::Invite`] names).
pub fn invite_public(secret: &crate::SecretKey) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(secret.expose())
        .verifying_key()
        .to_bytes()
}

/// The signature by an invite's secret that lets `user`'s `device` join
/// through it.
pub fn sign_join(secret: &crate::SecretKey, invite: &InviteId, user: &UserId, device: &DeviceId) -> [u8; 64] {
    use ed25519_dalek::Signer;
    ed25519_dalek::SigningKey::from_bytes(secret.expose())
        .sign(&join_message(invite, user, device))
        .to_bytes()
}

/// Whether `sig` is [`sign_join`] by the secret whose public key is `key`
/// (`verify_strict`).
pub fn verify_join(key: &[u8; 32], invite: &InviteId, user: &UserId, device: &DeviceId, sig: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(key) else {
        return false;
    };
    key.verify_strict(
        &join_message(invite, user, device),
        &ed25519_dalek::Signature::from_bytes(sig),
    )
    .is_ok()
}

/// An invite as the roster holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteState {
    /// Who opened it.
    pub by: UserId,
    /// Its public key.
    pub key: [u8; 32],
    /// When it ends (unix ms; 0 never).
    pub expires: u64,
    /// How many joins it lets in (0: any number).
    pub uses: u32,
    /// The users it let in, in fold order.
    pub used: Vec<UserId>,
    /// Ended by [`Action::RevokeInvite`].
    pub revoked: bool,
}

impl InviteState {
    /// Why no join through it stands at `now` (unix milliseconds), if none does.
    pub fn closed_at(&self, now: u64) -> Option<&'static str> {
        if self.revoked {
            Some("the invite was revoked")
        } else if self.expires != 0 && now > self.expires {
            Some("the invite has expired")
        } else if self.uses != 0 && self.used.len() >= self.uses as usize {
            Some("the invite is used up")
        } else {
            None
        }
    }
}

/// What a membership op says (its key says who wrote it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberBody {
    /// [`MEMBER_BODY_VERSION`].
    pub version: u8,
    /// The writer's clock (milliseconds, hybrid logical clock).
    pub hlc: u64,
    /// The ops the writer had seen: the heads of the roster's history.
    pub parents: Vec<OpKey>,
    /// The change.
    pub action: Action,
}

impl MemberBody {
    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a member body encodes")
    }

    /// Decode and check the bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (body, rest): (MemberBody, _) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted("membership op", e))?;
        if !rest.is_empty() {
            return Err(Error::corrupted("membership op", "trailing bytes"));
        }
        body.validate()?;
        Ok(body)
    }

    /// Check the version and the bounds.
    pub fn validate(&self) -> Result<()> {
        if self.version != MEMBER_BODY_VERSION {
            return Err(Error::corrupted("membership op", "unknown version"));
        }
        if self.parents.len() > MAX_PARENTS {
            return Err(Error::corrupted("membership op", "too many parents"));
        }
        if let Some((_, upto)) = self.action.removal()
            && upto.len() > MAX_CUT_DEVICES
        {
            return Err(Error::corrupted("membership op", "too many devices cut"));
        }
        Ok(())
    }
}

/// Names one membership op: the device that wrote it and its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpKey {
    /// The writing device.
    pub device: DeviceId,
    /// Its count of membership ops in this channel, from 1.
    pub n: u32,
}

impl OpKey {
    /// The document key of this op, written by `user`.
    pub fn doc_key(&self, user: &UserId) -> String {
        format!("mo:{user}:{}:{}", self.device, self.n)
    }
}

/// One membership op as read from a document: its writer (from the signed
/// feed the change came in) and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberOp {
    /// Which op.
    pub key: OpKey,
    /// Its writer.
    pub author: UserId,
    /// What it says.
    pub body: MemberBody,
}

/// The roster of a channel: see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    /// The op that started it (`None`: a channel without a roster yet, which
    /// every key holder may write in).
    pub genesis: Option<OpKey>,
    /// Users with a role. Writers not named here (and not removed) are members.
    pub roles: BTreeMap<UserId, Role>,
    /// Removed users, with the last entry of each of their feeds that stays.
    pub removed: BTreeMap<UserId, BTreeMap<DeviceId, u64>>,
    /// Removed users who left on their own: their feeds are not cut (the
    /// entry that says so comes after any cut it could name; a store that
    /// left writes nothing more, and one that writes anyway can be removed).
    pub left: BTreeSet<UserId>,
    /// Revoked devices, by device and the user whose revocation it is (a
    /// user revokes its own devices only; the fold cannot tell whose a
    /// device is, so another user's "revocation" of it is kept apart and
    /// never blocks the real one): the last entry of the feed that stays.
    pub revoked: BTreeMap<(DeviceId, UserId), u64>,
    /// Of revocations written signed ([`Action::RevokeDeviceSigned`]): the
    /// revoking device and its signature of the notice relays take.
    pub revoke_sigs: BTreeMap<(DeviceId, UserId), (DeviceId, [u8; 64])>,
    /// Of users removed by a removal written signed ([`Action::RemoveSigned`]),
    /// as they stand: the removal op and its signature of the notice the
    /// removed user's devices are handed ([`crate::peer::RemovedNotice`]).
    pub remove_sigs: BTreeMap<UserId, (OpKey, [u8; 64])>,
    /// Of removed users, the clock of the removal that stands.
    pub removed_at: BTreeMap<UserId, u64>,
    /// Users added back after a removal, with the clock of the add (what a
    /// relay that took the removal needs to serve them again).
    pub added_back: BTreeMap<UserId, u64>,
    /// Invites, open or not.
    pub invites: BTreeMap<InviteId, InviteState>,
    /// Ops kept in the history that changed nothing, with why.
    pub refused: BTreeMap<OpKey, String>,
    /// Ops whose parents are not all held yet.
    pub waiting: BTreeSet<OpKey>,
    /// Ops no other op names as a parent: the parents of the next op.
    pub heads: Vec<OpKey>,
    /// The highest op number of each device (the next op of a device is one more).
    pub last_n: BTreeMap<DeviceId, u32>,
}

impl Roster {
    /// The roster the ops give (see the module docs for the rules).
    pub fn fold(ops: Vec<MemberOp>) -> Roster {
        Self::fold_with(ops, &HashMap::new())
    }

    /// [`Roster::fold`], knowing the devices each device's certificate was
    /// issued through (`issuers`, from its chain: [`crate::device::issuers`]):
    /// ops of a device linked through one its user revoked count no more
    /// than the revoked device's own.
    pub fn fold_with(ops: Vec<MemberOp>, issuers: &HashMap<DeviceId, Vec<DeviceId>>) -> Roster {
        // One op per key (a document holds one value per key; of two, the
        // same one is kept whatever their order).
        let mut ops: Vec<MemberOp> = ops;
        ops.sort_by_cached_key(|o| (o.key, o.author, o.body.encode()));
        ops.dedup_by_key(|o| o.key);
        let mut last_n = BTreeMap::new();
        for o in &ops {
            let n = last_n.entry(o.key.device).or_insert(0);
            *n = (*n).max(o.key.n);
        }
        let mut refused = BTreeMap::new();
        if ops.len() > MAX_ROSTER_OPS {
            for o in ops.drain(MAX_ROSTER_OPS..) {
                refused.insert(o.key, "too many membership ops".to_string());
            }
        }
        let index: HashMap<OpKey, usize> = ops.iter().enumerate().map(|(i, o)| (o.key, i)).collect();
        let order = order(&ops, &index);
        let placed: BTreeSet<usize> = order.iter().copied().collect();
        let waiting = (0..ops.len())
            .filter(|i| !placed.contains(i))
            .map(|i| ops[i].key)
            .collect();
        // Ancestors (as indexes) of every placed op, in order, so parents first.
        let mut ancestors: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); ops.len()];
        for &i in &order {
            let mut a = BTreeSet::new();
            for p in &ops[i].body.parents {
                let p = index[p];
                a.insert(p);
                a.extend(ancestors[p].iter().copied());
            }
            ancestors[i] = a;
        }
        let mut named = BTreeSet::new();
        for &i in &order {
            named.extend(ops[i].body.parents.iter().copied());
        }
        let heads = order
            .iter()
            .map(|&i| ops[i].key)
            .filter(|k| !named.contains(k))
            .collect();
        // Removal wins: refold without the ops a standing removal did not see.
        let mut excluded: BTreeSet<usize> = BTreeSet::new();
        let mut roster;
        let mut rounds = 0;
        loop {
            let (r, stood) = run(&ops, &order, &excluded, issuers);
            roster = r;
            let mut more = BTreeSet::new();
            for &rm in &stood {
                // Revocation wins too: the ops of the revoked device, and of
                // devices linked through it, that the revocation did not see.
                if let Some((user, device, _)) = ops[rm].body.action.revocation() {
                    for &i in &order {
                        let o = &ops[i];
                        let by_it =
                            o.key.device == *device || issuers.get(&o.key.device).is_some_and(|is| is.contains(device));
                        if o.author == *user
                            && by_it
                            && i != rm
                            && !excluded.contains(&i)
                            && !ancestors[rm].contains(&i)
                            && !ancestors[i].contains(&rm)
                            && !roster.refused.contains_key(&o.key)
                        {
                            more.insert(i);
                        }
                    }
                    continue;
                }
                let Some((user, _)) = ops[rm].body.action.removal() else {
                    continue;
                };
                if *user == ops[rm].author {
                    continue; // leaving: nothing of one's own to overrule
                }
                for &i in &order {
                    if ops[i].author == *user
                        && i != rm
                        && !excluded.contains(&i)
                        && !ancestors[rm].contains(&i)
                        && !ancestors[i].contains(&rm)
                        && !roster.refused.contains_key(&ops[i].key)
                    {
                        more.insert(i);
                    }
                }
            }
            rounds += 1;
            if more.is_empty() || rounds > ops.len() {
                break;
            }
            excluded.extend(more);
        }
        for &i in &excluded {
            roster
                .refused
                .insert(ops[i].key, "concurrent with its writer's removal or revocation".into());
        }
        roster.refused.extend(refused);
        roster.waiting = waiting;
        roster.heads = heads;
        roster.last_n = last_n;
        roster
    }

    /// Whether the channel has a roster (else any key holder may do anything
    /// but claim it with [`Action::Create`]).
    pub fn is_started(&self) -> bool {
        self.genesis.is_some()
    }

    /// `user`'s role: named, or member for any other writer not removed.
    pub fn role(&self, user: &UserId) -> Option<Role> {
        if self.removed.contains_key(user) {
            return None;
        }
        Some(self.roles.get(user).copied().unwrap_or(Role::Member))
    }

    /// Whether entry `seq` of `device`'s feed, written by `user`, is taken: no
    /// removal of `user` that stands cuts it off.
    pub fn admits(&self, user: &UserId, device: &DeviceId, seq: u64) -> bool {
        if let Some(cut) = self.revoked.get(&(*device, *user))
            && seq > *cut
        {
            return false;
        }
        if self.left.contains(user) {
            return true;
        }
        match self.removed.get(user) {
            None => true,
            Some(cut) => seq <= cut.get(device).copied().unwrap_or(0),
        }
    }

    fn owners(&self) -> usize {
        self.roles.values().filter(|r| **r == Role::Owner).count()
    }

    /// Whether `author` may do `action` now, and if not, why. The same rules
    /// decide remote ops in the fold and local ones before they are written.
    pub fn allows(&self, author: &UserId, action: &Action) -> std::result::Result<(), &'static str> {
        if self.genesis.is_none() {
            return match action {
                Action::Create => Ok(()),
                // A user's own devices are the user's business, roster or not.
                a if a.revocation().is_some_and(|(user, device, _)| {
                    user == author && !self.revoked.contains_key(&(*device, *user))
                }) =>
                {
                    Ok(())
                }
                _ => Err("the channel has no roster yet"),
            };
        }
        let Some(mine) = self.role(author) else {
            return Err("the writer was removed");
        };
        match action {
            Action::Create => Err("the channel already has a roster"),
            Action::Add { user, role } => {
                if mine < Role::Admin {
                    Err("only admins and owners add members")
                } else if *role > mine {
                    Err("a role above the writer's own")
                } else if !self.removed.contains_key(user) && self.roles.contains_key(user) {
                    Err("already a member")
                } else {
                    Ok(())
                }
            }
            Action::Remove { user, .. } | Action::RemoveSigned { user, .. } => {
                let Some(theirs) = self.role(user) else {
                    return Err("not a member");
                };
                if theirs == Role::Owner && self.owners() <= 1 {
                    Err("the last owner cannot be removed")
                } else if user == author {
                    Ok(())
                } else if mine < Role::Admin {
                    Err("only admins and owners remove others")
                } else if theirs == Role::Owner && mine < Role::Owner {
                    Err("only owners remove owners")
                } else {
                    Ok(())
                }
            }
            Action::RevokeDevice { user, device, .. } | Action::RevokeDeviceSigned { user, device, .. } => {
                if user != author {
                    Err("only the device's own user revokes it")
                } else if self.revoked.contains_key(&(*device, *user)) {
                    Err("already revoked")
                } else {
                    Ok(())
                }
            }
            Action::Invite { id, .. } => {
                if mine < Role::Admin {
                    Err("only admins and owners invite")
                } else if self.invites.contains_key(id) {
                    Err("an invite with this id exists")
                } else if self.invites.len() >= MAX_INVITES {
                    Err("too many invites")
                } else {
                    Ok(())
                }
            }
            Action::RevokeInvite { id } => match self.invites.get(id) {
                None => Err("no such invite"),
                Some(_) if mine < Role::Admin => Err("only admins and owners revoke invites"),
                Some(i) if i.revoked => Err("the invite was revoked already"),
                Some(_) => Ok(()),
            },
            Action::Join {
                user,
                device,
                invite,
                sig,
            } => {
                let Some(i) = self.invites.get(invite) else {
                    return Err("no such invite");
                };
                if !verify_join(&i.key, invite, user, device, sig) {
                    Err("the join is not signed by the invite's secret")
                } else if self.removed.contains_key(user) && !self.left.contains(user) {
                    Err("removed users come back only when an admin adds them")
                } else if self.roles.contains_key(user) {
                    Err("already a member")
                } else {
                    // Revoked or used up; its end is checked against the
                    // op's clock (Roster::allows_at).
                    i.closed_at(0).map_or(Ok(()), Err)
                }
            }
            Action::SetRole { user, role } => {
                let Some(theirs) = self.role(user) else {
                    return Err("not a member");
                };
                if theirs == *role {
                    Err("already has that role")
                } else if theirs == Role::Owner && self.owners() <= 1 {
                    Err("the last owner cannot be demoted")
                } else if mine == Role::Owner || (mine == Role::Admin && theirs < Role::Owner && *role < Role::Owner) {
                    Ok(())
                } else {
                    Err("not allowed for the writer's role")
                }
            }
        }
    }

    /// [`Roster::allows`], for an op written at clock `hlc`: a join also
    /// needs its invite open then (not past its end, not used up).
    pub fn allows_at(&self, author: &UserId, action: &Action, hlc: u64) -> std::result::Result<(), &'static str> {
        self.allows(author, action)?;
        if let Action::Join { invite, .. } = action
            && let Some(why) = self
                .invites
                .get(invite)
                .and_then(|i| i.closed_at(crate::hlc::Timestamp(hlc).millis()))
        {
            return Err(why);
        }
        Ok(())
    }

    /// The roster once `author` has written `action` as op `key` on top of
    /// this one (its parents being [`Roster::heads`]), if the rules allow it:
    /// how a writer checks a change before writing it.
    pub fn after(
        &self,
        key: OpKey,
        author: &UserId,
        action: &Action,
        hlc: u64,
    ) -> std::result::Result<Roster, &'static str> {
        self.allows_at(author, action, hlc)?;
        let mut r = self.clone();
        r.apply(key, author, action, hlc);
        r.heads = vec![key];
        let n = r.last_n.entry(key.device).or_insert(0);
        *n = (*n).max(key.n);
        Ok(r)
    }

    /// Apply an allowed action by `author`.
    fn apply(&mut self, key: OpKey, author: &UserId, action: &Action, hlc: u64) {
        match action {
            Action::Create => {
                self.genesis = Some(key);
                self.roles.insert(*author, Role::Owner);
            }
            Action::Add { user, role } => {
                if self.removed.contains_key(user) || self.added_back.contains_key(user) {
                    self.added_back.insert(*user, hlc);
                }
                self.removed_at.remove(user);
                self.removed.remove(user);
                self.left.remove(user);
                self.roles.insert(*user, *role);
            }
            Action::Remove { user, upto } | Action::RemoveSigned { user, upto, .. } => {
                self.added_back.remove(user);
                self.removed_at.insert(*user, hlc);
                self.roles.remove(user);
                self.removed.insert(*user, upto.iter().copied().collect());
                if user == author {
                    self.left.insert(*user);
                } else {
                    self.left.remove(user);
                }
                match action {
                    Action::RemoveSigned { sig, .. } if user != author => {
                        self.remove_sigs.insert(*user, (key, **sig));
                    }
                    _ => {
                        self.remove_sigs.remove(user);
                    }
                }
            }
            Action::SetRole { user, role } => {
                self.roles.insert(*user, *role);
            }
            Action::RevokeDevice { user, device, upto } => {
                self.revoked.insert((*device, *user), *upto);
            }
            Action::RevokeDeviceSigned {
                user,
                device,
                upto,
                sig,
            } => {
                self.revoked.insert((*device, *user), *upto);
                self.revoke_sigs.insert((*device, *user), (key.device, **sig));
            }
            Action::Invite { id, key, expires, uses } => {
                self.invites.insert(
                    *id,
                    InviteState {
                        by: *author,
                        key: *key,
                        expires: *expires,
                        uses: *uses,
                        used: Vec::new(),
                        revoked: false,
                    },
                );
            }
            Action::RevokeInvite { id } => {
                if let Some(i) = self.invites.get_mut(id) {
                    i.revoked = true;
                }
            }
            Action::Join { user, invite, .. } => {
                // Back through an invite (a user who left): as an Add.
                if self.removed.contains_key(user) || self.added_back.contains_key(user) {
                    self.added_back.insert(*user, hlc);
                }
                self.removed_at.remove(user);
                self.removed.remove(user);
                self.left.remove(user);
                self.roles.insert(*user, Role::Member);
                if let Some(i) = self.invites.get_mut(invite) {
                    i.used.push(*user);
                }
            }
        }
    }
}

/// The fold's order: parents first; among ready ops, removals first, then the
/// lower clock, then the lower key. Ops never ready are left out.
fn order(ops: &[MemberOp], index: &HashMap<OpKey, usize>) -> Vec<usize> {
    let mut missing: Vec<usize> = vec![0; ops.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
    let mut never = vec![false; ops.len()];
    for (i, o) in ops.iter().enumerate() {
        let parents: BTreeSet<&OpKey> = o.body.parents.iter().collect();
        for p in parents {
            match index.get(p) {
                Some(&j) if j != i => {
                    missing[i] += 1;
                    children[j].push(i);
                }
                _ => never[i] = true,
            }
        }
    }
    let rank = |i: usize| {
        let o = &ops[i];
        (o.body.action.removal().is_none(), o.body.hlc, o.key)
    };
    let mut ready: BTreeSet<((bool, u64, OpKey), usize)> = (0..ops.len())
        .filter(|&i| missing[i] == 0 && !never[i])
        .map(|i| (rank(i), i))
        .collect();
    let mut out = Vec::with_capacity(ops.len());
    while let Some(first) = ready.pop_first() {
        let i = first.1;
        out.push(i);
        for &c in &children[i] {
            missing[c] -= 1;
            if missing[c] == 0 && !never[c] {
                ready.insert((rank(c), c));
            }
        }
    }
    out
}

/// One fold in `order`, skipping `excluded`: the roster and the removals that
/// stood.
fn run(
    ops: &[MemberOp],
    order: &[usize],
    excluded: &BTreeSet<usize>,
    issuers: &HashMap<DeviceId, Vec<DeviceId>>,
) -> (Roster, Vec<usize>) {
    let mut r = Roster::default();
    let mut stood = Vec::new();
    for &i in order {
        if excluded.contains(&i) {
            continue;
        }
        let o = &ops[i];
        if r.revoked.contains_key(&(o.key.device, o.author)) {
            r.refused.insert(o.key, "written by a revoked device".into());
            continue;
        }
        if issuers
            .get(&o.key.device)
            .is_some_and(|is| is.iter().any(|i| r.revoked.contains_key(&(*i, o.author))))
        {
            r.refused
                .insert(o.key, "written by a device linked through a revoked one".into());
            continue;
        }
        if o.body
            .action
            .revocation()
            .is_some_and(|(_, device, _)| *device == o.key.device)
        {
            r.refused.insert(o.key, "a device cannot revoke itself".into());
            continue;
        }
        match r.allows_at(&o.author, &o.body.action, o.body.hlc) {
            Ok(()) => {
                r.apply(o.key, &o.author, &o.body.action, o.body.hlc);
                if o.body.action.removal().is_some() || o.body.action.revocation().is_some() {
                    stood.push(i);
                }
            }
            Err(why) => {
                r.refused.insert(o.key, why.to_string());
            }
        }
    }
    (r, stood)
}

/// The signing-domain label of revocation notices.
const NOTICE_DOMAIN: &[u8] = b"hearth v1 device revocation";
/// Bytes of an encoded [`RevocationNotice`] at most (a chain of 8
/// certificates fits).
pub const MAX_NOTICE_BYTES: usize = 8 * crate::device::MAX_CERT_BYTES + 256;

fn notice_message(wire: &crate::id::WireId, device: &DeviceId, upto: u64) -> Vec<u8> {
    let mut m = wire.0.to_vec();
    m.extend_from_slice(&device.0);
    m.extend_from_slice(&upto.to_le_bytes());
    crate::device::domain_message(NOTICE_DOMAIN, &m)
}

/// The signing-domain label of removal notices to the removed.
const REMOVED_DOMAIN: &[u8] = b"hearth v1 removal notice";

/// What the removing device signs for the removed user: the channel, the
/// user, and the removal op (its writing device and number).
pub fn removal_message(wire: &crate::id::WireId, user: &UserId, op: &OpKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + 32 + 16 + 4);
    m.extend_from_slice(&wire.0);
    m.extend_from_slice(&user.0);
    m.extend_from_slice(&op.device.0);
    m.extend_from_slice(&op.n.to_le_bytes());
    crate::device::domain_message(REMOVED_DOMAIN, &m)
}

/// The signature of a removal's notice by the removing device's `keys`
/// (what [`Action::RemoveSigned`] carries), for the op `op`.
pub fn sign_removal(keys: &crate::device::DeviceKeys, wire: &crate::id::WireId, user: &UserId, op: &OpKey) -> [u8; 64] {
    keys.sign_raw(&removal_message(wire, user, op))
}

/// The signature of a revocation's notice by the revoking device's `keys`
/// (what [`Action::RevokeDeviceSigned`] carries).
pub fn sign_revocation(
    keys: &crate::device::DeviceKeys,
    wire: &crate::id::WireId,
    device: &DeviceId,
    upto: u64,
) -> [u8; 64] {
    keys.sign_raw(&notice_message(wire, device, upto))
}

/// What relays learn of a revocation, in the clear: in channel `wire`,
/// `device`'s entries past `upto` are refused. Signed by the revoking device,
/// whose chain (`by`) names its user: a relay takes it for a device of that
/// same user only, so it needs no roster to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationNotice {
    /// The channel.
    pub wire: crate::id::WireId,
    /// The revoked device.
    pub device: DeviceId,
    /// The last entry of its feed that stays.
    pub upto: u64,
    /// The revoking device's certificate chain.
    pub by: Vec<crate::device::DeviceCert>,
    /// [`sign_revocation`] by the revoking device.
    pub sig: serde_bytes::ByteArray<64>,
}

impl RevocationNotice {
    /// The notice of `device`'s revocation in `wire` at `upto`, signed `sig`
    /// by the last device of chain `by`.
    pub fn new(
        wire: crate::id::WireId,
        device: DeviceId,
        upto: u64,
        by: Vec<crate::device::DeviceCert>,
        sig: [u8; 64],
    ) -> Self {
        RevocationNotice {
            wire,
            device,
            upto,
            by,
            sig: serde_bytes::ByteArray::new(sig),
        }
    }

    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a notice encodes")
    }

    /// Decode untrusted bytes: capped, strict and canonical. Nothing is
    /// checked beyond the form: see [`RevocationNotice::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_NOTICE_BYTES {
            return Err(Error::TooLarge {
                what: "revocation notice",
                size: bytes.len(),
                limit: MAX_NOTICE_BYTES,
            });
        }
        let (n, rest): (RevocationNotice, _) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::corrupted("revocation notice", e))?;
        if !rest.is_empty() || n.encode() != bytes {
            return Err(Error::corrupted("revocation notice", "not in canonical encoding"));
        }
        Ok(n)
    }

    /// Check the chain and the signature: the revoking device's user (whose
    /// device `device` must be for the notice to count), never the revoked
    /// device itself.
    pub fn verify(&self) -> Result<UserId> {
        let body = crate::device::verify_chain(&self.by)?;
        if body.device == self.device {
            return Err(Error::corrupted("revocation notice", "a device revoking itself"));
        }
        crate::identity::verify_signature(
            &UserId(body.keys.signing),
            &notice_message(&self.wire, &self.device, self.upto),
            &self.sig,
        )
        .map_err(|_| Error::corrupted("revocation notice", "a signature that does not verify"))?;
        Ok(body.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(b: u8) -> UserId {
        UserId([b; 32])
    }
    fn dev(b: u8) -> DeviceId {
        DeviceId([b; 16])
    }
    fn op(u: u8, n: u32, hlc: u64, parents: &[(u8, u32)], action: Action) -> MemberOp {
        MemberOp {
            key: OpKey { device: dev(u), n },
            author: user(u),
            body: MemberBody {
                version: MEMBER_BODY_VERSION,
                hlc,
                parents: parents.iter().map(|&(d, n)| OpKey { device: dev(d), n }).collect(),
                action,
            },
        }
    }

    #[test]
    fn actions_keep_their_encoding_and_a_signed_revocation_folds_as_one() {
        // Stores of format 6 hold these ops: variants only ever go at the end.
        let first = |a: &Action| postcard::to_stdvec(a).unwrap()[0];
        assert_eq!(first(&Action::RevokeInvite { id: [0; 16] }), 6);
        assert_eq!(
            first(&Action::join(UserId([1; 32]), DeviceId([2; 16]), [3; 16], [4; 64])),
            7
        );
        let signed = Action::revoke_signed(UserId([1; 32]), DeviceId([2; 16]), 5, [6; 64]);
        assert_eq!(first(&signed), 8);
        assert_eq!(signed.revocation(), Some((&UserId([1; 32]), &DeviceId([2; 16]), 5)));
    }

    #[test]
    fn the_creator_owns_admins_manage_members_and_the_last_owner_stays() {
        let ops = vec![
            op(1, 1, 10, &[], Action::Create),
            op(
                1,
                2,
                11,
                &[(1, 1)],
                Action::SetRole {
                    user: user(2),
                    role: Role::Admin,
                },
            ),
            // An admin removes a member, and may not remove the owner.
            op(
                2,
                1,
                12,
                &[(1, 2)],
                Action::Remove {
                    user: user(3),
                    upto: vec![(dev(3), 4)],
                },
            ),
            op(
                2,
                2,
                13,
                &[(2, 1)],
                Action::Remove {
                    user: user(1),
                    upto: vec![],
                },
            ),
            // A member may not promote itself; the last owner may not leave.
            op(
                4,
                1,
                14,
                &[(2, 2)],
                Action::SetRole {
                    user: user(4),
                    role: Role::Admin,
                },
            ),
            op(
                1,
                3,
                15,
                &[(4, 1)],
                Action::Remove {
                    user: user(1),
                    upto: vec![],
                },
            ),
        ];
        let r = Roster::fold(ops);
        assert_eq!(r.role(&user(1)), Some(Role::Owner));
        assert_eq!(r.role(&user(2)), Some(Role::Admin));
        assert_eq!(r.role(&user(3)), None);
        assert_eq!(r.role(&user(4)), Some(Role::Member));
        assert!(r.admits(&user(3), &dev(3), 4) && !r.admits(&user(3), &dev(3), 5));
        assert!(!r.admits(&user(3), &dev(9), 1), "a device the removal did not name");
        assert_eq!(r.refused.len(), 3, "{:?}", r.refused);
        assert_eq!(r.heads, vec![OpKey { device: dev(1), n: 3 }]);
    }

    #[test]
    fn a_removal_wins_over_what_the_removed_did_concurrently() {
        // Owner 1 makes 2 an admin; then, concurrently, 1 removes 2 and 2
        // promotes 3 and removes 4: neither of 2's ops stands.
        let base = [
            op(1, 1, 10, &[], Action::Create),
            op(
                1,
                2,
                11,
                &[(1, 1)],
                Action::SetRole {
                    user: user(2),
                    role: Role::Admin,
                },
            ),
        ];
        let mut ops = base.to_vec();
        ops.push(op(
            1,
            3,
            50,
            &[(1, 2)],
            Action::Remove {
                user: user(2),
                upto: vec![],
            },
        ));
        ops.push(op(
            2,
            1,
            20,
            &[(1, 2)],
            Action::SetRole {
                user: user(3),
                role: Role::Admin,
            },
        ));
        ops.push(op(
            2,
            2,
            21,
            &[(2, 1)],
            Action::Remove {
                user: user(4),
                upto: vec![],
            },
        ));
        let r = Roster::fold(ops.clone());
        assert_eq!(r.role(&user(2)), None);
        assert_eq!(r.role(&user(3)), Some(Role::Member));
        assert_eq!(r.role(&user(4)), Some(Role::Member));
        // Had 1 seen them first, they stand.
        let mut seen = base.to_vec();
        seen.extend(ops[3..].iter().cloned());
        seen.push(op(
            1,
            3,
            50,
            &[(2, 2)],
            Action::Remove {
                user: user(2),
                upto: vec![],
            },
        ));
        let r = Roster::fold(seen);
        assert_eq!(r.role(&user(3)), Some(Role::Admin));
        assert_eq!(r.role(&user(4)), None);
    }

    #[test]
    fn the_roster_is_the_same_whatever_the_order_and_waits_for_parents() {
        let ops = vec![
            op(1, 1, 10, &[], Action::Create),
            op(2, 1, 5, &[], Action::Create),
            op(
                1,
                2,
                11,
                &[(1, 1)],
                Action::Add {
                    user: user(5),
                    role: Role::Admin,
                },
            ),
            op(
                5,
                1,
                12,
                &[(1, 2), (9, 9)],
                Action::Remove {
                    user: user(1),
                    upto: vec![],
                },
            ),
            op(6, 1, 13, &[(6, 2)], Action::Create),
            op(6, 2, 13, &[(6, 1)], Action::Create),
        ];
        let a = Roster::fold(ops.clone());
        let mut rev = ops.clone();
        rev.reverse();
        assert_eq!(a, Roster::fold(rev));
        // The earlier claim stands; 5's op waits for a parent never seen; a cycle waits.
        assert_eq!(a.genesis, Some(OpKey { device: dev(2), n: 1 }));
        assert_eq!(a.waiting.len(), 3);
        assert_eq!(a.role(&user(5)), Some(Role::Member), "added by one who is not an owner");
    }

    #[test]
    fn actions_keep_their_variant_numbers_and_a_signed_removal_folds_as_a_removal() {
        // Stored ops are postcard: a variant's number is its format.
        let sig = [3u8; 64];
        let signed = Action::remove_signed(UserId([1; 32]), vec![(DeviceId([2; 16]), 5)], sig);
        assert_eq!(postcard::to_stdvec(&signed).unwrap()[0], 9);
        let revoke = Action::revoke_signed(UserId([1; 32]), DeviceId([2; 16]), 5, sig);
        assert_eq!(postcard::to_stdvec(&revoke).unwrap()[0], 8);
        assert_eq!(
            signed.removal(),
            Some((&UserId([1; 32]), &[(DeviceId([2; 16]), 5)][..]))
        );
        assert!(
            Action::SetRole {
                user: UserId([1; 32]),
                role: Role::Admin
            }
            .removal()
            .is_none()
        );
    }

    #[test]
    fn a_user_revokes_its_own_devices_only_and_a_revoked_device_writes_nothing_more() {
        // User 1 has devices 1 and 9 (op keys name the writing device).
        let on = |dev_: u8, n: u32, hlc: u64, parents: &[(u8, u32)], action: Action| {
            let mut o = op(1, n, hlc, parents, action);
            o.key.device = dev(dev_);
            o
        };
        let revoke = |device: u8, upto| Action::RevokeDevice {
            user: user(1),
            device: dev(device),
            upto,
        };
        let ops = vec![
            op(1, 1, 10, &[], Action::Create),
            // Another user may not revoke user 1's device; a device not itself.
            op(
                2,
                1,
                11,
                &[(1, 1)],
                Action::RevokeDevice {
                    user: user(1),
                    device: dev(9),
                    upto: 0,
                },
            ),
            on(9, 1, 12, &[(2, 1)], revoke(9, 0)),
            on(1, 2, 13, &[(9, 1)], revoke(9, 4)),
            // Device 9, revoked, writes on: refused.
            on(
                9,
                2,
                14,
                &[(1, 2)],
                Action::SetRole {
                    user: user(3),
                    role: Role::Admin,
                },
            ),
        ];
        let r = Roster::fold(ops);
        assert_eq!(r.revoked.get(&(dev(9), user(1))), Some(&4));
        assert!(r.admits(&user(1), &dev(9), 4) && !r.admits(&user(1), &dev(9), 5));
        assert!(r.admits(&user(1), &dev(1), 99), "the user's other devices write on");
        assert_eq!(r.refused.len(), 3, "{:?}", r.refused);
        assert_eq!(r.role(&user(3)), Some(Role::Member));
    }

    #[test]
    fn removals_and_comings_back_keep_their_clocks() {
        let secret = crate::SecretKey::from_bytes([9; 32]);
        let b = [2u8; 16];
        let join = |u: u8| Action::join(user(u), dev(u), b, sign_join(&secret, &b, &user(u), &dev(u)));
        let t = |ms: u64| ms << 16;
        let ops = vec![
            op(1, 1, t(1), &[], Action::Create),
            op(
                1,
                2,
                t(2),
                &[(1, 1)],
                Action::Invite {
                    id: b,
                    key: invite_public(&secret),
                    expires: 0,
                    uses: 0,
                },
            ),
            op(1, 3, t(3), &[(1, 2)], join(4)),
            // User 4 leaves, and comes back through the invite.
            op(
                4,
                1,
                t(4),
                &[(1, 3)],
                Action::Remove {
                    user: user(4),
                    upto: Vec::new(),
                },
            ),
            op(1, 4, t(5), &[(4, 1)], join(4)),
            // User 5 is removed by the owner, and stays removed.
            op(1, 5, t(6), &[(1, 4)], join(5)),
            op(
                1,
                6,
                t(7),
                &[(1, 5)],
                Action::Remove {
                    user: user(5),
                    upto: Vec::new(),
                },
            ),
        ];
        let r = Roster::fold(ops);
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        assert_eq!(r.added_back.get(&user(4)), Some(&t(5)), "back through an invite");
        assert!(!r.removed_at.contains_key(&user(4)));
        assert_eq!(r.removed_at.get(&user(5)), Some(&t(7)));
        assert!(!r.added_back.contains_key(&user(5)));
    }

    #[test]
    fn invites_let_in_within_their_end_and_uses_until_revoked() {
        let secret = crate::SecretKey::from_bytes([9; 32]);
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let join = |invite: InviteId, u: u8| {
            Action::join(user(u), dev(u), invite, sign_join(&secret, &invite, &user(u), &dev(u)))
        };
        let open = |id, expires, uses| Action::Invite {
            id,
            key: invite_public(&secret),
            expires,
            uses,
        };
        // Clocks in milliseconds, as ops carry them (hybrid: ms << 16).
        let t = |ms: u64| ms << 16;
        let mut forged = join(a, 8);
        if let Action::Join { sig, .. } = &mut forged {
            sig[0] ^= 1;
        }
        let ops = vec![
            op(1, 1, t(1), &[], Action::Create),
            // A member (user 7, a writer not named) may not open an invite.
            op(7, 1, t(2), &[(1, 1)], open([3; 16], 0, 0)),
            op(1, 2, t(3), &[(7, 1)], open(a, 1000, 2)),
            op(1, 3, t(4), &[(1, 2)], open(b, 0, 0)),
            // Any member lets a holder in: user 7 lets user 4 in.
            op(7, 2, t(5), &[(1, 3)], join(a, 4)),
            op(1, 4, t(6), &[(7, 2)], join(a, 4)), // already a member
            op(1, 5, t(7), &[(1, 4)], forged),     // not signed by the secret
            op(1, 6, t(8), &[(1, 5)], join(a, 5)),
            op(1, 7, t(9), &[(1, 6)], join(a, 6)), // used up (2 uses)
            op(1, 8, t(2000), &[(1, 7)], join(b, 6)),
            op(1, 9, t(2001), &[(1, 8)], Action::RevokeInvite { id: b }),
            op(1, 10, t(2002), &[(1, 9)], join(b, 9)), // revoked
            // Past the end of an invite with uses left: refused.
            op(1, 11, t(2003), &[(1, 10)], open([4; 16], 2002, 0)),
            op(1, 12, t(2004), &[(1, 11)], join([4; 16], 10)),
        ];
        let r = Roster::fold(ops);
        let why = |n: u32| r.refused.get(&OpKey { device: dev(1), n }).map(String::as_str);
        assert_eq!(
            r.refused.get(&OpKey { device: dev(7), n: 1 }).map(String::as_str),
            Some("only admins and owners invite")
        );
        assert_eq!(why(4), Some("already a member"));
        assert_eq!(why(5), Some("the join is not signed by the invite's secret"));
        assert_eq!(why(7), Some("the invite is used up"));
        assert_eq!(why(10), Some("the invite was revoked"));
        assert_eq!(why(12), Some("the invite has expired"));
        assert_eq!(r.invites[&a].used, vec![user(4), user(5)]);
        assert_eq!(r.invites[&b].used, vec![user(6)]);
        assert!(r.invites[&b].revoked);
        for u in [4, 5, 6] {
            assert_eq!(r.roles.get(&user(u)), Some(&Role::Member), "user {u}");
        }
        assert!(!r.roles.contains_key(&user(9)) && !r.roles.contains_key(&user(10)));
        assert_eq!(r.refused.len(), 6, "{:?}", r.refused);
    }

    #[test]
    fn a_removed_user_does_not_come_back_through_an_invite() {
        let secret = crate::SecretKey::from_bytes([5; 32]);
        let id = [7u8; 16];
        let ops = vec![
            op(1, 1, 10, &[], Action::Create),
            op(
                1,
                2,
                11,
                &[(1, 1)],
                Action::Invite {
                    id,
                    key: invite_public(&secret),
                    expires: 0,
                    uses: 0,
                },
            ),
            op(
                1,
                3,
                12,
                &[(1, 2)],
                Action::Remove {
                    user: user(4),
                    upto: vec![],
                },
            ),
            op(
                1,
                4,
                13,
                &[(1, 3)],
                Action::join(user(4), dev(4), id, sign_join(&secret, &id, &user(4), &dev(4))),
            ),
        ];
        let r = Roster::fold(ops);
        assert_eq!(
            r.refused.get(&OpKey { device: dev(1), n: 4 }).map(String::as_str),
            Some("removed users come back only when an admin adds them")
        );
        assert_eq!(r.role(&user(4)), None);
    }

    #[test]
    fn bodies_round_trip_and_bounds_hold() {
        let b = MemberBody {
            version: MEMBER_BODY_VERSION,
            hlc: 7,
            parents: vec![OpKey { device: dev(1), n: 1 }],
            action: Action::Remove {
                user: user(2),
                upto: vec![(dev(2), 3)],
            },
        };
        assert_eq!(MemberBody::decode(&b.encode()).unwrap(), b);
        let mut long = b.clone();
        long.parents = vec![OpKey { device: dev(1), n: 1 }; MAX_PARENTS + 1];
        assert!(MemberBody::decode(&long.encode()).is_err());
        let mut bytes = b.encode();
        bytes.push(0);
        assert!(MemberBody::decode(&bytes).is_err());
        assert!(MemberBody::decode(&[9, 1, 2]).is_err());
    }
}
