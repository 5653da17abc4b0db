//! [`Hearth`]: a store opened with its passphrase, and the chat API on it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hearth_core::{ChannelId, DeviceId, Message, MessageId, Passphrase, Role, UserId};
use hearth_store::{
    BackupReport, ChannelInfo, CompactProgress, CompactReport, Config, DeviceInfo, Located, MigrationPlan, OpenReport,
    Outcome, Receipts, RestoreReport, RosterInfo, Stats, Store, Thread, VerifyReport, Whoami, Write,
};

use crate::error::{Error, Result};
use crate::node::Syncing;

/// A Hearth store, opened with its passphrase: the chat API.
///
/// Writes return once durable; reads answer from memory or the store.
/// Clones share one store (and its sync node, once started with
/// [`Hearth::start_sync`]); [`Hearth::close`] closes it for all of them.
#[derive(Clone)]
pub struct Hearth {
    pub(crate) store: Store,
    pub(crate) sync: Arc<Syncing>,
}

impl std::fmt::Debug for Hearth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hearth")
            .field("store", &self.store)
            .field("syncing", &self.sync.is_running())
            .finish()
    }
}

/// A write queued with [`Hearth::queue_post`] or [`Hearth::queue_reply`]:
/// await it for the new message's id, given once the write is durable.
///
/// Writes are applied in the order they are queued, so a caller can keep
/// many in flight (an import, a bot answering a burst) and still get ids in
/// order. The task that awaits it makes the write durable (with every other
/// write queued by then): its poll may block its thread for one journal
/// write and fdatasync, about 0.1 ms ([`crate::store::Pending`]). A write
/// nobody awaits is made durable by the store within a few milliseconds.
#[derive(Debug)]
#[must_use = "a queued write is acknowledged only when awaited"]
pub struct Ack {
    pending: hearth_store::Pending,
}

impl std::future::Future for Ack {
    type Output = Result<MessageId>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.pending).poll(cx).map(|r| match r? {
            Outcome::Message(id) => Ok(id),
            other => Err(Error::Invalid {
                what: "acknowledgement".into(),
                detail: format!("a post was acknowledged as {other:?}"),
            }),
        })
    }
}

impl Hearth {
    pub(crate) fn wrap(store: Store) -> Self {
        Hearth {
            store,
            sync: Arc::new(Syncing::default()),
        }
    }

    /// Create a store in `dir` (created if missing) for a new user named
    /// `user_name`.
    pub async fn create(dir: impl AsRef<Path>, pass: &Passphrase, user_name: &str, config: Config) -> Result<Self> {
        Ok(Self::wrap(Store::create(dir, pass, user_name, config).await?))
    }

    /// Open the store in `dir`. Writes acknowledged before a crash (or a
    /// power cut) are recovered.
    pub async fn open(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<Self> {
        Ok(Self::wrap(Store::open(dir, pass, config).await?))
    }

    /// Open the store in `dir` after rebuilding its database from the feed
    /// log, whatever state it is in: the way out of [`Error::Corrupted`].
    pub async fn repair(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<Self> {
        Ok(Self::wrap(Store::repair(dir, pass, config).await?))
    }

    /// Replace the store's master key, wrapping the new one under `new_pass`;
    /// every record is sealed again. The store must not be open.
    pub async fn rotate_master_key(
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        new_pass: &Passphrase,
        config: Config,
    ) -> Result<hearth_store::RotateReport> {
        Ok(Store::rotate_master_key(dir, pass, new_pass, config).await?)
    }

    /// What opening the store in `dir` would migrate, writing nothing.
    pub async fn migration_plan(dir: impl AsRef<Path>, pass: &Passphrase) -> Result<MigrationPlan> {
        Ok(Store::migration_plan(dir, pass).await?)
    }

    /// Drop the bytes of deleted texts from every file of the store in
    /// `dir` ([`Hearth::compact`] does it on a store that is open). The
    /// store must not be open elsewhere.
    pub async fn compact_dir(dir: impl AsRef<Path>, pass: &Passphrase, config: Config) -> Result<CompactReport> {
        Ok(Store::compact_dir(dir, pass, config).await?)
    }

    /// Restore the backup at `file` into `dir`: the store continues as a
    /// new device of the same user. Open it afterwards.
    pub async fn restore(
        file: impl AsRef<Path>,
        dir: impl AsRef<Path>,
        pass: &Passphrase,
        progress: Arc<CompactProgress>,
    ) -> Result<RestoreReport> {
        Ok(Store::restore(file, dir, pass, progress).await?)
    }

    /// Whether `dir` holds a store.
    pub fn exists(dir: impl AsRef<Path>) -> bool {
        Store::exists(dir)
    }

    /// Who this store belongs to: user, device, name, directory.
    pub fn whoami(&self) -> &Whoami {
        self.store.whoami()
    }

    /// What the open did: what it replayed, rebuilt, migrated or skipped,
    /// and how long it took.
    pub fn open_report(&self) -> &OpenReport {
        self.store.open_report()
    }

    /// The sync plumbing: what relays, benchmarks and tests reach under
    /// the chat API. A chat app needs none of it.
    pub fn plumbing(&self) -> crate::Plumbing {
        crate::Plumbing::new(self.store.clone())
    }

    /// Close the store cleanly: stop its sync node (if started), then
    /// snapshot, checkpoint and release the lock. Other clones get
    /// [`Error::Closed`] afterwards.
    pub async fn close(self) -> Result<()> {
        self.sync.stop().await;
        let closed = self.store.close().await;
        // Every subscription ends with the store.
        self.sync.events.close();
        Ok(closed?)
    }

    // ---- channels ----

    /// Every channel: name, message and unread counts, newest message, read
    /// marker.
    pub async fn channels(&self) -> Result<Vec<ChannelInfo>> {
        Ok(self.store.channels().await?)
    }

    /// One channel.
    pub async fn channel(&self, channel: ChannelId) -> Result<ChannelInfo> {
        Ok(self.store.channel(channel).await?)
    }

    /// Create a channel; this user owns it.
    pub async fn create_channel(&self, name: &str) -> Result<ChannelId> {
        Ok(self.store.create_channel(name).await?)
    }

    /// Rename a channel (admins and owners).
    pub async fn rename_channel(&self, channel: ChannelId, name: &str) -> Result<()> {
        Ok(self.store.rename_channel(channel, name).await?)
    }

    /// Leave a channel (the last owner cannot): nothing more can be written
    /// in it here.
    pub async fn leave(&self, channel: ChannelId) -> Result<()> {
        Ok(self.store.leave(channel).await?)
    }

    /// How long a channel keeps messages (`None`: for ever); admins and
    /// owners set it, and every member's device expires them.
    pub async fn set_retention(&self, channel: ChannelId, keep: Option<std::time::Duration>) -> Result<()> {
        Ok(self.store.set_retention(channel, keep).await?)
    }

    /// A channel's retention.
    pub async fn retention(&self, channel: ChannelId) -> Result<Option<std::time::Duration>> {
        Ok(self.store.retention(channel).await?)
    }

    /// Delete the messages past every channel's retention now (it also
    /// happens on its own); returns how many.
    pub async fn expire(&self) -> Result<u64> {
        Ok(self.store.expire().await?)
    }

    // ---- messages ----

    /// Post a top-level message; returns its id once durable.
    pub async fn post(&self, channel: ChannelId, text: &str) -> Result<MessageId> {
        Ok(self.store.post(channel, text).await?)
    }

    /// Reply in the thread of `to` (a reply to a reply joins the same thread).
    pub async fn reply(&self, to: MessageId, text: &str) -> Result<MessageId> {
        Ok(self.store.reply(to, text).await?)
    }

    /// Queue a post (with `reply_to`, a reply in that message's thread,
    /// which must be of `channel`) and return at once: await the [`Ack`]
    /// for its id, given once durable. Input errors (unknown channel, text
    /// too long, not a member) come from the [`Ack`].
    pub async fn queue_post(&self, channel: ChannelId, text: &str, reply_to: Option<MessageId>) -> Result<Ack> {
        self.queue(Write::Post {
            channel,
            text: text.to_string(),
            reply_to,
        })
        .await
    }

    /// Queue a reply to `to` and return at once (see [`Hearth::queue_post`]).
    pub async fn queue_reply(&self, to: MessageId, text: &str) -> Result<Ack> {
        self.queue(Write::Reply {
            to,
            text: text.to_string(),
        })
        .await
    }

    async fn queue(&self, w: Write) -> Result<Ack> {
        Ok(Ack {
            pending: self.store.submit(w).await?,
        })
    }

    /// Add this user's reaction to a message (once per emoji).
    pub async fn react(&self, msg: MessageId, emoji: &str) -> Result<()> {
        Ok(self.store.react(msg, emoji).await?)
    }

    /// Take this user's reaction back.
    pub async fn unreact(&self, msg: MessageId, emoji: &str) -> Result<()> {
        Ok(self.store.unreact(msg, emoji).await?)
    }

    /// Replace a message's text (its author only).
    pub async fn edit(&self, msg: MessageId, text: &str) -> Result<()> {
        Ok(self.store.edit(msg, text).await?)
    }

    /// Delete a message (its author only): its text is gone from every
    /// device's files once compacted; a tombstone keeps its place.
    pub async fn delete(&self, msg: MessageId) -> Result<()> {
        Ok(self.store.delete(msg).await?)
    }

    /// Mark a channel read up to a message (`None`: its newest).
    pub async fn mark_read(&self, channel: ChannelId, up_to: Option<MessageId>) -> Result<()> {
        Ok(self.store.mark_read(channel, up_to).await?)
    }

    /// Take many posts at once through the bulk path, in order (at most
    /// [`hearth_store::IMPORT_CHUNK`] a call): about ten times the rate of
    /// posts one by one. Durable when it returns.
    pub async fn import_posts(
        &self,
        channel: ChannelId,
        posts: Vec<hearth_store::ImportPost>,
    ) -> Result<Vec<MessageId>> {
        Ok(self.store.import_posts(channel, posts).await?)
    }

    // ---- reading ----

    /// The newest `limit` top-level messages before `before` (`None`: the
    /// newest), newest first, each with its reply count and reactions.
    pub async fn page(&self, channel: ChannelId, before: Option<MessageId>, limit: usize) -> Result<Vec<Message>> {
        Ok(self.store.page(channel, before, limit).await?)
    }

    /// A thread: its root and its replies, oldest first.
    pub async fn thread(&self, msg: MessageId) -> Result<Thread> {
        Ok(self.store.thread(msg).await?)
    }

    /// One message, with its channel.
    pub async fn message(&self, msg: MessageId) -> Result<Located> {
        Ok(self.store.message(msg).await?)
    }

    /// Every message of a channel, replies included, oldest first.
    pub async fn all_messages(&self, channel: ChannelId) -> Result<Vec<Message>> {
        Ok(self.store.all_messages(channel).await?)
    }

    /// Messages by others, not deleted, newer than this user's read marker.
    pub async fn unread(&self, channel: ChannelId) -> Result<u64> {
        Ok(self.store.unread(channel).await?)
    }

    /// Who holds a message: the delivery receipts of this user's devices
    /// and the channel's members, and their read markers.
    pub async fn receipts(&self, msg: MessageId) -> Result<Receipts> {
        Ok(self.store.receipts(msg).await?)
    }

    /// A channel by id, unique id prefix or name; the name of an invite
    /// still pending gives [`Error::NotAllowed`] saying so.
    pub async fn resolve_channel(&self, input: &str) -> Result<ChannelId> {
        match self.store.resolve_channel(input).await {
            Err(hearth_store::Error::NotFound { what, id }) => {
                if self.invite_pending(input).await {
                    Err(Error::NotAllowed {
                        action: format!("use channel {input}"),
                        why: "no member has let this device in yet: run `hearth node` (or `hearth sync`) while \
                              a member's node is reachable"
                            .into(),
                    })
                } else {
                    Err(Error::NotFound { what, id })
                }
            }
            other => Ok(other?),
        }
    }

    // ---- members and devices ----

    /// A channel's members: user id and display name.
    pub async fn members(&self, channel: ChannelId) -> Result<BTreeMap<UserId, String>> {
        Ok(self.store.members(channel).await?)
    }

    /// A channel's roster: members with their roles, removed users, and
    /// who may do what.
    pub async fn roster(&self, channel: ChannelId) -> Result<RosterInfo> {
        Ok(self.store.roster(channel).await?)
    }

    /// A member of a channel by user id, unique prefix or display name.
    pub async fn resolve_member(&self, channel: ChannelId, input: &str) -> Result<UserId> {
        Ok(self.store.resolve_member(channel, input).await?)
    }

    /// Add `user` (back) to a channel with `role`.
    pub async fn add_member(&self, channel: ChannelId, user: UserId, role: Role) -> Result<()> {
        Ok(self.store.add_member(channel, user, role).await?)
    }

    /// Remove `user` from a channel (admins remove members and admins,
    /// owners anyone but the last owner); the channel moves to a new key
    /// generation that the removed user's devices do not get.
    pub async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<()> {
        Ok(self.store.remove_member(channel, user).await?)
    }

    /// Give `user` a role in a channel.
    pub async fn set_role(&self, channel: ChannelId, user: UserId, role: Role) -> Result<()> {
        Ok(self.store.set_role(channel, user, role).await?)
    }

    /// This user's devices, with the channels that revoke each.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self.store.devices().await?)
    }

    /// Revoke another device of this user in every channel; returns the
    /// channels written to.
    pub async fn revoke_device(&self, device: DeviceId) -> Result<usize> {
        Ok(self.store.revoke_device(device).await?)
    }

    /// Change the passphrase (only the wrapped key is rewritten).
    pub async fn change_passphrase(&self, new: &Passphrase) -> Result<()> {
        Ok(self.store.change_passphrase(new).await?)
    }

    // ---- upkeep ----

    /// Counts and sizes of the whole store.
    pub async fn stats(&self) -> Result<Stats> {
        Ok(self.store.stats().await?)
    }

    /// One channel's counts and sizes, and per peer this device has synced
    /// with since sync started, how many of the channel's entries held here
    /// it still lacks (as it last acknowledged).
    pub async fn channel_stats(&self, channel: ChannelId) -> Result<crate::ChannelStats> {
        let store = self.store.channel_stats(channel).await?;
        let peers = self.sync.lacking(&store.wire, &store.vector);
        Ok(crate::ChannelStats { store, peers })
    }

    /// Decrypt and check every record.
    pub async fn verify(&self) -> Result<VerifyReport> {
        Ok(self.store.verify().await?)
    }

    /// Drop the bytes of deleted texts from the store's files, while it
    /// stays open and in use.
    pub async fn compact(&self) -> Result<CompactReport> {
        Ok(self.store.compact().await?)
    }

    /// [`Hearth::compact`], reporting progress.
    pub async fn compact_with(&self, progress: Arc<CompactProgress>) -> Result<CompactReport> {
        Ok(self.store.compact_with(progress).await?)
    }

    /// Write a backup of the store to `path` (sealed; restore it with
    /// [`Hearth::restore`]).
    pub async fn backup(&self, path: impl AsRef<Path>) -> Result<BackupReport> {
        Ok(self.store.backup(path).await?)
    }

    /// [`Hearth::backup`], reporting progress.
    pub async fn backup_with(&self, path: impl AsRef<Path>, progress: Arc<CompactProgress>) -> Result<BackupReport> {
        Ok(self.store.backup_with(path, progress).await?)
    }
}
