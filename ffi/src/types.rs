//! The records and enums that cross: the facade's values with ids as text,
//! `u64`/`u32` for sizes and lists for maps (UniFFI has no `usize` and no
//! `BTreeMap`).

/// How a store is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct StoreConfig {
    /// Derive the store key with Argon2id at a test-only cost (64 KiB, one
    /// pass) instead of the default (64 MiB, three passes): for tests, never
    /// for a real store. A store created so opens only with it set. Default:
    /// false.
    #[uniffi(default)]
    pub insecure_fast_kdf: bool,
}

impl From<StoreConfig> for hearth::Config {
    fn from(c: StoreConfig) -> Self {
        let config = hearth::Config::default();
        if c.insecure_fast_kdf {
            config.with_kdf(hearth::KdfParams::INSECURE_FAST)
        } else {
            config
        }
    }
}

/// Who a store belongs to.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Whoami {
    /// The user id (hex), the same on every device of the user.
    pub user: String,
    /// This device's id (hex).
    pub device: String,
    /// The user's display name.
    pub name: String,
    /// The store directory.
    pub dir: String,
}

impl From<&hearth::Whoami> for Whoami {
    fn from(w: &hearth::Whoami) -> Self {
        Whoami {
            user: w.user.to_string(),
            device: w.device.to_string(),
            name: w.name.clone(),
            dir: w.dir.to_string_lossy().into_owned(),
        }
    }
}

/// A channel in the channel list.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChannelInfo {
    /// Its id (hex).
    pub id: String,
    /// Its current name.
    pub name: String,
    /// Messages in it (replies and tombstones included).
    pub messages: u64,
    /// Messages by others, not deleted, newer than this user's read marker.
    pub unread: u64,
    /// Its newest message.
    pub newest: Option<String>,
    /// This user's read marker (the newest message marked read).
    pub read_up_to: Option<String>,
    /// How long it keeps messages, in seconds (`None`: for ever).
    pub retention_secs: Option<u64>,
}

impl From<hearth::ChannelInfo> for ChannelInfo {
    fn from(c: hearth::ChannelInfo) -> Self {
        ChannelInfo {
            id: c.id.to_string(),
            name: c.name,
            messages: c.messages,
            unread: c.unread,
            newest: c.newest.map(|m| m.to_string()),
            read_up_to: c.read_up_to.map(|m| m.to_string()),
            retention_secs: c.retention,
        }
    }
}

/// One emoji's reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// The users who added it (hex ids).
    pub users: Vec<String>,
}

/// A message as it reads now.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// Its id (hex; ids sort by time).
    pub id: String,
    /// Its author's user id.
    pub author: String,
    /// The current text (the newest edit); `None` once deleted or dropped.
    pub text: Option<String>,
    /// The root of its thread, for a reply.
    pub reply_to: Option<String>,
    /// Whether the author edited it.
    pub edited: bool,
    /// Whether it was deleted (a tombstone keeps its place).
    pub deleted: bool,
    /// Whether its text is gone though it was not deleted (expired, or it
    /// never reached this device).
    pub dropped: bool,
    /// Reactions, by emoji in order.
    pub reactions: Vec<Reaction>,
    /// Replies in its thread that are not deleted.
    pub reply_count: u32,
}

impl From<hearth::Message> for Message {
    fn from(m: hearth::Message) -> Self {
        Message {
            id: m.id.to_string(),
            author: m.author.to_string(),
            text: m.text,
            reply_to: m.reply_to.map(|r| r.to_string()),
            edited: m.edited,
            deleted: m.deleted,
            dropped: m.dropped,
            reactions: m
                .reactions
                .into_iter()
                .map(|(emoji, users)| Reaction {
                    emoji,
                    users: users.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            reply_count: m.reply_count,
        }
    }
}

/// The messages of one list, converted.
pub(crate) fn messages(list: Vec<hearth::Message>) -> Vec<Message> {
    list.into_iter().map(Message::from).collect()
}

/// A thread: its root and its replies, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Thread {
    /// The root message.
    pub root: Message,
    /// The replies, oldest first.
    pub replies: Vec<Message>,
}

impl From<hearth::Thread> for Thread {
    fn from(t: hearth::Thread) -> Self {
        Thread {
            root: t.root.into(),
            replies: messages(t.replies),
        }
    }
}

/// A message with the channel it is in.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LocatedMessage {
    /// The channel's id.
    pub channel: String,
    /// The message.
    pub message: Message,
}

impl From<hearth::Located> for LocatedMessage {
    fn from(l: hearth::Located) -> Self {
        LocatedMessage {
            channel: l.channel.to_string(),
            message: l.message.into(),
        }
    }
}

/// A member's role in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Role {
    /// Reads and writes.
    Member,
    /// Also adds, removes and promotes members and admins.
    Admin,
    /// Also manages owners; the last owner cannot be removed or demoted.
    Owner,
}

impl From<Role> for hearth::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Member => hearth::Role::Member,
            Role::Admin => hearth::Role::Admin,
            Role::Owner => hearth::Role::Owner,
        }
    }
}

impl From<hearth::Role> for Role {
    fn from(r: hearth::Role) -> Self {
        match r {
            hearth::Role::Member => Role::Member,
            hearth::Role::Admin => Role::Admin,
            hearth::Role::Owner => Role::Owner,
        }
    }
}

/// A member of a channel.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// The user id (hex).
    pub user: String,
    /// The user's display name.
    pub name: String,
    /// Its role (`None` for a channel older than rosters, where every key
    /// holder may write).
    pub role: Option<Role>,
}

/// A device that holds a message (a delivery receipt).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Delivery {
    /// The device's user.
    pub user: String,
    /// The device.
    pub device: String,
}

/// Who holds and who has read a message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Receipts {
    /// Devices that have stored it, the writing device apart.
    pub delivered: Vec<Delivery>,
    /// Users whose read marker is at or past it, the author apart.
    pub read: Vec<String>,
}

impl From<hearth::Receipts> for Receipts {
    fn from(r: hearth::Receipts) -> Self {
        Receipts {
            delivered: r
                .delivered
                .into_iter()
                .map(|(user, device)| Delivery {
                    user: user.to_string(),
                    device: device.to_string(),
                })
                .collect(),
            read: r.read.iter().map(ToString::to_string).collect(),
        }
    }
}

/// What [`crate::Hearth::join`] did with a ticket.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum JoinOutcome {
    /// The channel is joined.
    Joined {
        /// Its id.
        channel: String,
    },
    /// The invite is kept until a member's node lets this device in: sync
    /// with one ([`crate::SyncHandle::sync_until_equal`]).
    Pending {
        /// The channel's id.
        channel: String,
        /// Its name, as the ticket says.
        name: String,
    },
}

impl From<hearth::Joined> for JoinOutcome {
    fn from(j: hearth::Joined) -> Self {
        match j {
            hearth::Joined::Channel(c) => JoinOutcome::Joined { channel: c.to_string() },
            hearth::Joined::Pending { channel, name } => JoinOutcome::Pending {
                channel: channel.to_string(),
                name,
            },
        }
    }
}

/// A channel joined through a peer.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct JoinedChannel {
    /// Its id.
    pub channel: String,
    /// Its name.
    pub name: String,
}

/// A pending invite a peer did not let this device in through.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Refusal {
    /// The channel's name, as the ticket says.
    pub name: String,
    /// Why.
    pub why: String,
}

/// Counts and sizes of a whole store.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Stats {
    /// Channels.
    pub channels: u64,
    /// Messages (replies and tombstones included).
    pub messages: u64,
    /// Feed entries (sealed changes) in the commit log.
    pub feed_entries: u64,
    /// Epoch documents.
    pub epochs: u64,
    /// Epoch documents in memory.
    pub cached_epochs: u64,
    /// Feeds whose author signed two versions of them.
    pub forked_feeds: u64,
    /// Bytes of every file under the store directory.
    pub disk_bytes: u64,
    /// Journal bytes written since the last checkpoint.
    pub journal_bytes: u64,
}

impl From<hearth::Stats> for Stats {
    fn from(s: hearth::Stats) -> Self {
        Stats {
            channels: s.channels,
            messages: s.messages,
            feed_entries: s.feed_entries,
            epochs: s.epochs,
            cached_epochs: s.cached_epochs,
            forked_feeds: s.forked_feeds,
            disk_bytes: s.disk_bytes,
            journal_bytes: s.journal_bytes,
        }
    }
}

/// One defect [`crate::Hearth::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Problem {
    /// Where: table and key, never content.
    pub place: String,
    /// What is wrong.
    pub detail: String,
}

/// A feed whose author signed two versions of it (a finding about the
/// author, not a defect of the store).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Fork {
    /// The channel.
    pub channel: String,
    /// The author.
    pub user: String,
    /// The forked feed's device.
    pub device: String,
    /// The position with two versions.
    pub seq: u64,
}

/// What [`crate::Hearth::verify`] checked and found.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct VerifyReport {
    /// Channels checked.
    pub channels: u64,
    /// Feed entries checked (signature, chain, AEAD, change).
    pub entries: u64,
    /// Epochs checked.
    pub epochs: u64,
    /// Feed entries held sealed, under a key this device does not hold.
    pub unopened: u64,
    /// Defects; empty when the store is sound.
    pub problems: Vec<Problem>,
    /// Forked feeds.
    pub forks: Vec<Fork>,
    /// Whether [`crate::Hearth::repair`] would cure the problems found.
    pub repair_would_help: bool,
}

impl From<hearth::VerifyReport> for VerifyReport {
    fn from(r: hearth::VerifyReport) -> Self {
        VerifyReport {
            channels: r.channels,
            entries: r.entries,
            epochs: r.epochs,
            unopened: r.unopened,
            repair_would_help: r.repair_would_help(),
            problems: r
                .problems
                .into_iter()
                .map(|p| Problem {
                    place: p.place,
                    detail: p.detail,
                })
                .collect(),
            forks: r
                .forks
                .into_iter()
                .map(|f| Fork {
                    channel: f.channel.to_string(),
                    user: f.user.to_string(),
                    device: f.device.to_string(),
                    seq: f.seq,
                })
                .collect(),
        }
    }
}

/// A peer the sync node knows.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PeerStatus {
    /// Its peer id.
    pub peer: String,
    /// Connected now.
    pub connected: bool,
    /// Its address, if known.
    pub addr: Option<String>,
    /// The last reconciliation left both with the same entries.
    pub in_sync: bool,
    /// Entries it holds that this node lacks, as last seen.
    pub behind: u64,
    /// Entries this node holds that it lacks, as last seen.
    pub ahead: u64,
    /// Completed reconciliations with it.
    pub sessions: u64,
}

impl From<hearth::PeerStatus> for PeerStatus {
    fn from(s: hearth::PeerStatus) -> Self {
        PeerStatus {
            peer: s.peer.to_string(),
            connected: s.connected,
            addr: s.addr.map(|a| a.to_string()),
            in_sync: s.in_sync,
            behind: s.behind,
            ahead: s.ahead,
            sessions: s.sessions,
        }
    }
}
