//! Invites that end (issue 8, item 4).
//!
//! An admin opens an invite: a membership op [`MemberAction::Invite`] with a
//! random id, the public key of a fresh secret, an end and a number of uses.
//! The ticket carries the id and the secret, never a channel key. The holder
//! asks any member's node to let it in: it sends its user id, its device's
//! certificate chain and a signature by the invite's secret over the join
//! ([`hearth_core::member::sign_join`]). The member checks them against the
//! roster, writes [`MemberAction::Join`] (which every member checks again in
//! the fold: the signature, the invite not revoked, not past its end at the
//! op's clock, not used up), and answers with the channel's keys, every
//! generation, sealed to the joining device's X25519 key. An invite that
//! leaked is cut off by revoking it, and whoever it let in by removing them
//! (which rotates the key).

use std::time::Duration;

use hearth_core::device::{DeviceCert, seal_to_device, verify_chain};
use hearth_core::member::{InviteId, InviteState, sign_join};
use hearth_core::{ChannelId, ChannelKeys, ChannelRecord, DeviceId, MemberAction, SecretKey, UserId, random_bytes};
use serde::Serialize;

use crate::engine::{Engine, Write, now_ms};
use crate::error::{Error, Result};
use crate::layout::seal_record;
use crate::log::kind;
use crate::store::Store;

/// Most certificates in a joining device's chain.
const MAX_JOIN_CHAIN: usize = 8;

/// A new invite: what its ticket carries.
#[derive(Clone)]
pub struct NewInvite {
    /// The channel.
    pub channel: ChannelId,
    /// The channel's name now.
    pub name: String,
    /// The invite's id.
    pub id: InviteId,
    /// Its secret: whoever holds it may ask to join, until the invite ends.
    pub secret: SecretKey,
    /// When it ends (unix milliseconds), if it does.
    pub expires: Option<u64>,
}

impl std::fmt::Debug for NewInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewInvite")
            .field("channel", &self.channel)
            .field("id", &hex(&self.id))
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// An invite of a channel, as the roster holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InviteInfo {
    /// Its id, in hex.
    pub id: String,
    /// Who opened it.
    pub by: UserId,
    /// When it ends (unix milliseconds), if it does.
    pub expires: Option<u64>,
    /// How many joins it lets in (`None`: any number).
    pub uses: Option<u32>,
    /// Who it let in.
    pub used: Vec<UserId>,
    /// Why it lets nobody in any more, if it does not.
    pub closed: Option<String>,
}

/// What a device asks a member's node when it joins through an invite.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// The invite.
    pub invite: InviteId,
    /// The joining user.
    pub user: UserId,
    /// The joining device's certificate chain (the last certifies it).
    pub chain: Vec<DeviceCert>,
    /// [`sign_join`] by the invite's secret.
    pub sig: [u8; 64],
}

pub(crate) use hearth_core::member::invite_hex as hex;

/// An invite id from its hex form, or a unique prefix of one in `ids`.
fn parse_id(input: &str, ids: impl Iterator<Item = InviteId>) -> Result<InviteId> {
    let input = input.trim().to_ascii_lowercase();
    if input.is_empty() || !input.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Invalid {
            what: "invite id".into(),
            detail: "expected hex digits".into(),
        });
    }
    let found: Vec<InviteId> = ids.filter(|id| hex(id).starts_with(&input)).collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::NotFound {
            what: "invite",
            id: input,
        }),
        _ => Err(Error::Invalid {
            what: "invite id".into(),
            detail: format!("{input} names more than one invite"),
        }),
    }
}

fn grant_aad(invite: &InviteId, device: &DeviceId) -> Vec<u8> {
    let mut aad = b"hearth v1 invite grant".to_vec();
    aad.extend_from_slice(invite);
    aad.extend_from_slice(&device.0);
    aad
}

impl InviteInfo {
    fn of(id: &InviteId, i: &InviteState, now: u64) -> Self {
        InviteInfo {
            id: hex(id),
            by: i.by,
            expires: (i.expires != 0).then_some(i.expires),
            uses: (i.uses != 0).then_some(i.uses),
            used: i.used.clone(),
            closed: i.closed_at(now).map(str::to_string),
        }
    }
}

impl Engine {
    /// The invites of a channel.
    pub(crate) fn invites(&mut self, channel: &ChannelId) -> Result<Vec<InviteInfo>> {
        let now = now_ms();
        Ok(self
            .roster(channel)?
            .invites
            .iter()
            .map(|(id, i)| InviteInfo::of(id, i, now))
            .collect())
    }

    /// The invite of a channel that `input` (hex id or unique prefix) names.
    pub(crate) fn resolve_invite(&mut self, channel: &ChannelId, input: &str) -> Result<InviteId> {
        let roster = self.roster(channel)?;
        parse_id(input, roster.invites.keys().copied())
    }

    /// The channel holding invite `id`, checked for a join of `user`'s device
    /// (certified by `chain`) signed `sig`: the channel, the device and its
    /// X25519 key, and whether the roster already lets this user in through
    /// this invite (a repeated request: answered again, nothing written).
    fn check_join(&mut self, req: &JoinRequest) -> Result<(ChannelId, DeviceId, [u8; 32], bool)> {
        let refused = |why: &str| Error::NotAllowed {
            action: "let a device in through an invite".into(),
            why: why.into(),
        };
        if req.chain.len() > MAX_JOIN_CHAIN {
            return Err(refused("a certificate chain longer than 8"));
        }
        let cert = verify_chain(&req.chain).map_err(|_| refused("the device certificate does not verify"))?;
        if cert.user != req.user {
            return Err(refused("the device certificate is of another user"));
        }
        let (device, kx) = (cert.device, cert.keys.kx);
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for channel in ids {
            let roster = self.roster(&channel)?;
            let Some(state) = roster.invites.get(&req.invite) else {
                continue;
            };
            // A revoked device, or one linked through a revoked device, is
            // let in nowhere (not even again).
            let claimant = hearth_core::peer::Certifier {
                user: cert.user,
                device,
                key: cert.keys.signing,
                via: hearth_core::device::issuers(&req.chain),
            };
            if crate::peers::revoked_devices(self.channel(&channel)?, &roster)(&claimant) {
                return Err(refused("this device was revoked"));
            }
            let action = MemberAction::join(req.user, device, req.invite, req.sig);
            if state.used.contains(&req.user)
                && roster.role(&req.user).is_some()
                && hearth_core::member::verify_join(&state.key, &req.invite, &req.user, &device, &req.sig)
            {
                return Ok((channel, device, kx, true));
            }
            let me = self.identity.user();
            let hlc = hearth_core::Timestamp::from_millis(now_ms()).0.max(self.hlc.last().0);
            roster.allows_at(&me, &action, hlc).map_err(refused)?;
            return Ok((channel, device, kx, false));
        }
        Err(Error::NotFound {
            what: "invite",
            id: hex(&req.invite),
        })
    }

    /// The channel's keys, every generation, sealed to a joining device.
    fn grant(&mut self, channel: &ChannelId, invite: &InviteId, device: &DeviceId, kx: &[u8; 32]) -> Result<Vec<u8>> {
        let name = self.channel_info(channel)?.name;
        let keys = &self.channel(channel)?.keys;
        let record = zeroize::Zeroizing::new(ChannelRecord::encode_named(keys, Some(&name)));
        Ok(seal_to_device(kx, &grant_aad(invite, device), &record)?)
    }

    /// Open a grant sealed to this device: the channel's keys and name.
    fn open_grant(&self, invite: &InviteId, sealed: &[u8]) -> Result<(ChannelKeys, Option<String>)> {
        let mine = self
            .identity
            .device_keys()
            .ok_or_else(|| Error::corrupted("identity", "no device keys"))?;
        let plain = zeroize::Zeroizing::new(
            mine.open_sealed(&grant_aad(invite, &self.identity.device()), sealed)
                .map_err(|_| Error::Invalid {
                    what: "invite answer".into(),
                    detail: "it does not open with this device's key".into(),
                })?,
        );
        Ok(ChannelRecord::decode_named(&plain)?)
    }

    /// Take key generations a joined channel's grant carried (made durable
    /// in sled and the log at once).
    fn add_generations(&mut self, channel: &ChannelId, keys: &ChannelKeys) -> Result<()> {
        let ch = self.channels.get_mut(channel).ok_or_else(|| Error::NotFound {
            what: "channel",
            id: channel.to_hex(),
        })?;
        let mut added = false;
        for (generation, key) in keys.generations() {
            added |= ch.keys.add_generation(generation, key.clone());
        }
        if !added {
            return Ok(());
        }
        let (k, record) = self.channel_record(*channel)?;
        let mut batch = sled::Batch::default();
        batch.insert(&k[..], seal_record(&self.records, &k, &record)?);
        let sealed = self.seal_log(kind::CHANNEL, &record)?;
        self.log_record(kind::CHANNEL, &sealed);
        self.write_log_batch(&mut batch)?;
        self.tree.apply_batch(batch)?;
        self.dirty = true;
        Ok(())
    }
}

impl Store {
    /// Open an invite of a channel (admins and owners): it lets in whoever
    /// holds its secret, until `valid_for` has passed (if given) and `uses`
    /// joins have been made (0: any number), or until it is revoked. The
    /// secret goes in a ticket; no channel key does.
    pub async fn create_invite(&self, channel: ChannelId, valid_for: Option<Duration>, uses: u32) -> Result<NewInvite> {
        let mut id = [0u8; 16];
        random_bytes(&mut id)?;
        let secret = SecretKey::generate()?;
        let expires = valid_for.map(|d| now_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        let action = MemberAction::Invite {
            id,
            key: hearth_core::member::invite_public(&secret),
            expires: expires.unwrap_or(0),
            uses,
        };
        self.write(Write::Member { channel, action }).await?;
        let name = self.channel(channel).await?.name;
        Ok(NewInvite {
            channel,
            name,
            id,
            secret,
            expires,
        })
    }

    /// End an invite (admins and owners): nobody joins through it any more.
    /// Whoever it let in stays until removed.
    pub async fn revoke_invite(&self, channel: ChannelId, id: InviteId) -> Result<()> {
        self.write(Write::Member {
            channel,
            action: MemberAction::RevokeInvite { id },
        })
        .await
        .map(drop)
    }

    /// A channel's invites, open or ended.
    pub async fn invites(&self, channel: ChannelId) -> Result<Vec<InviteInfo>> {
        self.query(move |e| e.invites(&channel)).await
    }

    /// The invite of a channel that `input` names: its hex id or a unique prefix.
    pub async fn resolve_invite(&self, channel: ChannelId, input: &str) -> Result<InviteId> {
        let input = input.to_string();
        self.query(move |e| e.resolve_invite(&channel, &input)).await
    }

    /// What this device sends a member's node to join through an invite
    /// whose ticket carried `invite` and `secret`.
    pub async fn join_request(&self, invite: InviteId, secret: &SecretKey) -> Result<JoinRequest> {
        let chain = self.device_chain().await?;
        let me = self.whoami();
        Ok(JoinRequest {
            invite,
            user: me.user,
            sig: sign_join(secret, &invite, &me.user, &me.device),
            chain,
        })
    }

    /// Let a device in through an invite this store's roster holds (any
    /// member's node does it for the holder of the invite's secret): write
    /// the join, and return the channel's keys sealed to the device. A
    /// repeated request of a device let in already is answered again.
    pub async fn admit(&self, req: JoinRequest) -> Result<Vec<u8>> {
        let r = req.clone();
        let (channel, device, kx, done) = self.query(move |e| e.check_join(&r)).await?;
        if !done {
            let action = MemberAction::join(req.user, device, req.invite, req.sig);
            self.write(Write::Member { channel, action }).await?;
        }
        let invite = req.invite;
        self.query(move |e| e.grant(&channel, &invite, &device, &kx)).await
    }

    /// Join a channel with the answer of a member's node to this device's
    /// [`JoinRequest`]: its keys, every generation, and its name (the
    /// channel answers to it at once). Its history arrives by sync.
    pub async fn accept_invite(&self, invite: InviteId, sealed: Vec<u8>) -> Result<ChannelId> {
        let (keys, name) = self.query(move |e| e.open_grant(&invite, &sealed)).await?;
        let channel = self.write(Write::Join {
            keys: keys.clone(),
            name: name.filter(|n| !n.is_empty()),
        });
        let channel = match channel.await? {
            crate::engine::Outcome::Channel(c) => c,
            _ => return Err(Error::corrupted("store task", "unexpected reply")),
        };
        self.mutate(move |e| e.add_generations(&channel, &keys)).await?;
        Ok(channel)
    }
}
