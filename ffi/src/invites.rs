//! Who is in a channel and how others get in: members and roles, invite
//! tickets out and in.

use std::time::Duration;

use crate::error::{HearthError, parse_addrs, parse_id, parse_ticket};
use crate::store::Hearth;
use crate::types::{JoinOutcome, Member, Role};

#[uniffi::export]
impl Hearth {
    /// Invite someone into `channel` (admins and owners): returns a ticket,
    /// a line of text to hand over (a link, a QR code). It holds an invite's
    /// secret and `addrs`, where a node serving the channel can be reached
    /// ([`crate::SyncHandle::listen_addrs`] of this store's), never a channel
    /// key. Any member's node lets its holder in until `valid_for` has passed
    /// (`None`: no end), `uses` users have joined (0: any number) or it is
    /// revoked.
    pub async fn invite(
        &self,
        channel: String,
        addrs: Vec<String>,
        valid_for: Option<Duration>,
        uses: u32,
    ) -> Result<String, HearthError> {
        let channel = parse_id(&channel)?;
        let addrs = parse_addrs(&addrs)?;
        let ticket = self
            .run(move |h| async move { h.invite(channel, addrs, valid_for, uses).await })
            .await?;
        Ok(ticket.to_string())
    }

    /// Join the channel of an invite ticket. Mostly the invite is kept
    /// ([`JoinOutcome::Pending`]) until a member's node lets this device in:
    /// start sync and [`crate::SyncHandle::sync_until_equal`] with a peer of
    /// the ticket's addresses. [`HearthError::BadTicket`] if it does not parse.
    pub async fn join(&self, ticket: String) -> Result<JoinOutcome, HearthError> {
        let ticket = parse_ticket(&ticket)?;
        Ok(self.run(move |h| async move { h.join(&ticket).await }).await?.into())
    }

    /// A one-time ticket (good for 10 minutes) that makes a new device this
    /// user's: hand it to the new device's [`Hearth::create_linked`]. Sync
    /// must run; `addrs` are where the new device reaches this one
    /// ([`crate::SyncHandle::listen_addrs`]). When it asks, this store's
    /// [`crate::EventStream`] gives [`crate::Event::LinkRequested`] with the
    /// code to compare.
    pub async fn link_ticket(&self, addrs: Vec<String>) -> Result<String, HearthError> {
        let addrs = parse_addrs(&addrs)?;
        let ticket = self.run(move |h| async move { h.link_ticket(addrs).await }).await?;
        Ok(ticket.to_string())
    }

    /// The invite tickets this device was given and not let in through yet.
    pub async fn pending_invites(&self) -> Result<Vec<String>, HearthError> {
        let pending = self.run(|h| async move { h.pending_invites().await }).await?;
        Ok(pending.iter().map(ToString::to_string).collect())
    }

    /// A channel's members, with their display names and roles.
    pub async fn members(&self, channel: String) -> Result<Vec<Member>, HearthError> {
        let channel = parse_id(&channel)?;
        self.run(move |h| async move {
            let names = h.members(channel).await?;
            let roster = h.roster(channel).await?;
            Ok(names
                .into_iter()
                .map(|(user, name)| {
                    let role = roster.members.iter().find(|m| m.user == user).and_then(|m| m.role);
                    Member {
                        user: user.to_string(),
                        name,
                        role: role.map(Role::from),
                    }
                })
                .collect())
        })
        .await
    }

    /// Add `user` (back) to a channel with `role`.
    pub async fn add_member(&self, channel: String, user: String, role: Role) -> Result<(), HearthError> {
        let channel = parse_id(&channel)?;
        let user = parse_id(&user)?;
        self.run(move |h| async move { h.add_member(channel, user, role.into()).await })
            .await
    }

    /// Remove `user` from a channel; the channel moves to a new key that the
    /// removed user's devices do not get.
    pub async fn remove_member(&self, channel: String, user: String) -> Result<(), HearthError> {
        let channel = parse_id(&channel)?;
        let user = parse_id(&user)?;
        self.run(move |h| async move { h.remove_member(channel, user).await })
            .await
    }

    /// Give `user` a role in a channel.
    pub async fn set_role(&self, channel: String, user: String, role: Role) -> Result<(), HearthError> {
        let channel = parse_id(&channel)?;
        let user = parse_id(&user)?;
        self.run(move |h| async move { h.set_role(channel, user, role.into()).await })
            .await
    }
}
