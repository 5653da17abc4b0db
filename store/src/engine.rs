//! The engine: owns the sled tree, the feed log, the channel states and the
//! loaded epoch documents. Single-threaded by design; the store task
//! ([`crate::actor`]) drives it. This file holds its state, its open (the
//! channels read, on a second thread when it can) and its types; its work
//! is in files of their own: the epoch cache (`crate::epochs`), write
//! preparation (`crate::prepare`), the group commit (`crate::commit`),
//! durability (log batches, checkpoints, snapshots: `crate::persist`),
//! ingest (`crate::ingest`) and queries (`crate::query`).
//!
//! A write goes through three steps:
//! 1. [`Engine::prepare`] validates it against the current view and assigns ids
//!    (HLC), producing journal entries;
//! 2. [`Engine::apply`] stages those entries into the epoch documents (views
//!    see them at once) — the same function replays the journal on open;
//! 3. [`Engine::finish_batch`] closes one automerge change per touched epoch,
//!    seals and signs each into the device's feed, writes the new entries to
//!    the feed log, then applies every row of the group (entries, heads, epoch
//!    log, summaries, watermark, log position) as one sled batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_core::textpack::TextsDeflate;
use hearth_core::{
    ChannelId, ChannelKeys, ChannelRecord, ContentId, DeviceId, Epoch, EpochDoc, EpochView, Hlc, Identity,
    MemberAction, MessageId, SecretKey, WireId,
};

use crate::channel::{ChannelState, EpochSummary, FeedHead};
use crate::config::Config;
use crate::durable::SledFiles;
use crate::error::{Error, Result};
use crate::layout::*;
use crate::log::Log;

/// Staged bytes (text plus a per-op allowance) after which an epoch's change is
/// closed early, so every feed entry stays far below [`hearth_core::MAX_ENTRY_BYTES`].
pub(crate) const ENTRY_BUDGET: usize = 40 * 1024;
/// Most epochs whose next entry's texts are deflated as they are staged
/// (`Engine::early_texts`): a lone writer has one, and each holds two
/// deflate states, about 0.6 MiB.
pub(crate) const EARLY_TEXTS: usize = 4;
/// Staged bytes (as [`ENTRY_BUDGET`] counts them) from which an epoch's
/// texts are deflated as they are staged.
pub(crate) const EARLY_FROM: usize = 4 * 1024;
pub(crate) const OP_ALLOWANCE: usize = 96;
/// What a text adds to an entry beside the text itself (entry format 5:
/// its op's step and its length in the pack; the op is counted in
/// `OP_ALLOWANCE`). Format 4 needed 112 (content id, salt, message id):
/// entries held fewer messages, and their own overhead showed (docs/
/// lifecycle.md, "Measured").
pub(crate) const SEGMENT_ALLOWANCE: usize = 8;
/// Store events buffered per subscriber; a slower one misses events and is told
/// it lagged (a sync node then reconciles everything).
const EVENT_QUEUE: usize = 4096;

/// A new channel for the store's events. Making one costs about 0.3 ms on a
/// fresh process (its 4,096 slots are memory first touched), so an open
/// makes it on the thread that opens sled, during the unlock.
pub(crate) fn event_channel() -> tokio::sync::broadcast::Sender<crate::StoreEvent> {
    tokio::sync::broadcast::channel(EVENT_QUEUE).0
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The sled row of an epoch summary: its key and the sealed value.
pub(crate) fn summary_row(
    records: &SecretKey,
    wire: &WireId,
    epoch: Epoch,
    s: &EpochSummary,
) -> Result<([u8; 37], Vec<u8>)> {
    let k = epoch_key(T_EPOCHS, wire, epoch);
    let v = seal_record(records, &k, &postcard::to_stdvec(s).expect("summary encodes"))?;
    Ok((k, v))
}

/// Queue a channel's owed receipts into `batch` (the row goes when none are owed).
pub(crate) fn put_owed(
    batch: &mut sled::Batch,
    records: &SecretKey,
    wire: &WireId,
    owed: &BTreeMap<DeviceId, MessageId>,
) -> Result<()> {
    let k = channel_prefix(T_OWED, wire);
    if owed.is_empty() {
        batch.remove(&k[..]);
    } else {
        let plain = postcard::to_stdvec(owed).expect("owed receipts encode");
        batch.insert(&k[..], seal_record(records, &k, &plain)?);
    }
    Ok(())
}

/// The entries whose segments carry each text held, by text.
pub(crate) type Segments = HashMap<ContentId, Vec<(DeviceId, u64)>>;

/// A stored entry's change, with its feed and seq.
pub(crate) type EntryChange = (DeviceId, u64, automerge::Change);

/// An epoch document in memory with its view.
pub(crate) struct LoadedEpoch {
    /// Remote changes wait in automerge's queue for their dependencies: when
    /// they apply, what they touch is unknown, so the view is rebuilt.
    pub queued: bool,
    pub doc: EpochDoc,
    pub view: EpochView,
    pub(crate) used: u64,
    /// The entries whose segments carry each text held (`crate::prune`).
    pub segments: Segments,
    /// Whether the channel's moderators were given to the document (once
    /// a delete by someone other than its message's writer is in it).
    pub moderated: bool,
}

/// A user write, before it has ids.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Write {
    /// Create a channel with a name.
    CreateChannel {
        /// Its name.
        name: String,
    },
    /// Rename a channel.
    Rename {
        /// The channel.
        channel: ChannelId,
        /// The new name.
        name: String,
    },
    /// Keep the channel's messages `secs` seconds from their time on every
    /// member's device (0: for ever). Admins and owners only.
    SetRetention {
        /// The channel.
        channel: ChannelId,
        /// Seconds; 0: no retention.
        secs: u64,
    },
    /// Post a message or a reply.
    Post {
        /// The channel.
        channel: ChannelId,
        /// The text.
        text: String,
        /// A message of the thread to reply to (its root is used).
        reply_to: Option<MessageId>,
    },
    /// Reply in the thread of a message (its channel comes from the message).
    Reply {
        /// A message of the thread (its root is used).
        to: MessageId,
        /// The text.
        text: String,
    },
    /// Add or remove the local user's reaction.
    React {
        /// The message.
        msg: MessageId,
        /// The reaction.
        emoji: String,
        /// Remove instead of add.
        remove: bool,
    },
    /// Edit one's own message.
    Edit {
        /// The message.
        msg: MessageId,
        /// The new text.
        text: String,
    },
    /// Delete one's own message.
    Delete {
        /// The message.
        msg: MessageId,
    },
    /// Join a channel whose keys came in an invite (nothing happens if it is
    /// already here). The channel's history arrives by sync.
    Join {
        /// The channel's id and key.
        keys: ChannelKeys,
        /// The name the invite gave it, answered to until the channel's own
        /// name arrives by sync.
        name: Option<String>,
    },
    /// Record delivery receipts: this device holds each writing device's
    /// messages up to the given one.
    Delivered {
        /// The channel.
        channel: ChannelId,
        /// Writing device and its newest message held here.
        marks: Vec<(DeviceId, MessageId)>,
    },
    /// Write the delivery receipts this device owes for the messages sync
    /// stored (every channel; see [`crate::Store::flush_receipts`]).
    OwedReceipts,
    /// Change the channel's roster: add, remove (the local user: leave) or
    /// change a role. A channel without a roster yet is claimed first (the
    /// local user becomes its owner). A removal's `upto` is filled here with
    /// the removed user's feeds as held.
    Member {
        /// The channel.
        channel: ChannelId,
        /// The change.
        action: MemberAction,
    },
    /// Mark a channel read up to a message (default: its newest).
    MarkRead {
        /// The channel.
        channel: ChannelId,
        /// The newest message read.
        up_to: Option<MessageId>,
    },
}

/// What an acknowledged write returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new channel.
    Channel(ChannelId),
    /// A new message.
    Message(MessageId),
    /// Done, nothing new to name.
    Done,
    /// Owed delivery receipts written: for how many channels.
    Receipts(usize),
}

pub(crate) struct Engine {
    pub dir: PathBuf,
    pub config: Config,
    pub db: sled::Db,
    pub tree: sled::Tree,
    pub master: SecretKey,
    pub records: SecretKey,
    pub identity: Identity,
    pub hlc: Hlc,
    pub channels: BTreeMap<ChannelId, ChannelState>,
    pub by_wire: HashMap<WireId, ChannelId>,
    pub epochs: HashMap<(ChannelId, Epoch), LoadedEpoch>,
    pub(crate) clock: u64,
    /// Last journal sequence number applied.
    pub watermark: u64,
    /// XOR digest of every feed head (`root.rs`).
    pub root_heads: [u8; 32],
    /// The counter of the last store root written.
    pub root_counter: u64,
    pub(crate) touched: BTreeMap<(ChannelId, Epoch), usize>,
    /// The texts of epochs' next entries, deflated as they are staged
    /// (`hearth_core::textpack::TextsDeflate`): at most `EARLY_TEXTS` epochs
    /// at once, and their states kept for reuse in `early_spare`.
    pub(crate) early_texts: HashMap<(ChannelId, Epoch), TextsDeflate>,
    pub(crate) early_spare: Vec<TextsDeflate>,
    /// Channels with feed entries in the current batch (announced once it is applied).
    pub(crate) appended: std::collections::BTreeSet<ChannelId>,
    /// Channels where a member device may lack a key generation this device
    /// holds (a new device's chain arrived): shares go out with the next
    /// owed receipts.
    pub(crate) shares_due: std::collections::BTreeSet<ChannelId>,
    /// Devices whose chains sync peers sent (`crate::peers`): their user and
    /// key, so that a peer's later proofs need no chain.
    pub(crate) peer_keys: HashMap<hearth_core::DeviceId, hearth_core::peer::Certifier>,
    pub(crate) batch: sled::Batch,
    /// Whether `batch` holds rows that no staged op will flush (owed receipts
    /// cleared by a receipt write that wrote nothing new).
    pub rows_pending: bool,
    /// Whether sled holds writes not yet covered by a checkpoint.
    pub dirty: bool,
    /// Whether the feed log holds entries of this device that are not yet
    /// durable (they must not leave the device before; see `entries_after`).
    pub own_unsynced: bool,
    /// The log's end after the last batch with entries of this device.
    pub own_end: crate::log::LogPos,
    /// The last log batch written since the actor cleared it: the journal
    /// watermark its commit carries, and the log's end after it (what
    /// covers a deferred record, `GroupCommit::cover`).
    pub logged: Option<(u64, crate::log::LogPos)>,
    /// This run sends its own entries before they are durable
    /// ([`crate::Store::send_early`], `crate::early`).
    pub(crate) early: Option<crate::early::EarlyRun>,
    /// This device's entries of the group being closed, by channel, while
    /// someone listens (`None`: more than [`crate::replica::OUTGOING_MAX`]
    /// or [`crate::replica::OUTGOING_BYTES`]):
    /// they go out with the group's [`crate::StoreEvent::Appended`].
    pub(crate) fresh: HashMap<ChannelId, Option<crate::replica::Fresh>>,
    /// Journal bytes written since the last checkpoint (kept by the store task).
    pub journal_pending: u64,
    /// How long the Argon2id unlock took when this engine was opened.
    pub unlock_time: std::time::Duration,
    /// Where [`crate::StoreEvent`]s go (subscribers hold receivers).
    pub events: tokio::sync::broadcast::Sender<crate::StoreEvent>,
    /// Where chat events go ([`crate::events`]).
    pub chat: crate::events::ChatEvents,
    /// Chat events of local writes staged, sent when their group commits.
    pub(crate) chat_staged: Vec<crate::ChatEvent>,
    /// A bulk import is staging posts: it sends their events itself.
    pub(crate) chat_muted: bool,
    /// The feed log: what sled is rebuilt from ([`crate::log`]).
    pub log: Log,
    /// Log records of the sled batch being gathered (written to the log, with
    /// a commit record, just before that batch is applied).
    pub(crate) log_buf: Vec<u8>,
    /// Applying the feed log to sled at open: entries of this device are
    /// accepted, and nothing is written to the log again.
    pub replaying: bool,
    /// The nonces of this device's new entries ([`crate::nonces`]).
    pub(crate) nonces: crate::nonces::FeedNonces,
    pub(crate) sled_files: SledFiles,
    pub _lock: File,
    /// Messages deleted since the last prune, whose texts go
    /// (`crate::prune`).
    pub(crate) prune_queue: Vec<(ChannelId, Epoch, MessageId)>,
    /// Retention's progress, by epoch: the floor below which its expired
    /// messages' texts are dropped, and its message count then (a message
    /// that arrives later makes it look again).
    pub(crate) expired: HashMap<(ChannelId, Epoch), (MessageId, u64)>,
    /// Channels whose text drops grew since their cap was last applied
    /// (`crate::prune`).
    pub(crate) drops_due: std::collections::BTreeSet<WireId>,
    /// The channel the next expiry pass starts with (each gets its turn).
    pub(crate) expire_turn: usize,
    /// The highest expiry floor applied, by channel (`M expired` rows, read
    /// when first needed).
    pub(crate) expired_high: HashMap<ChannelId, Option<MessageId>>,
    /// Each channel's retention as its meta epoch's view said when that
    /// epoch was last evicted (`crate::retention`): expiry asks every
    /// channel once a second, and must not reload every meta epoch to
    /// answer. An entry goes when its meta epoch is loaded again (the
    /// loaded view answers then) or the channel's devices change.
    pub(crate) retention_known: HashMap<ChannelId, Option<u64>>,
    /// Stored entries to rewrite without dropped segments, once the batch
    /// that wrote them is applied (`crate::prune`).
    pub(crate) prune_rows: crate::prune::PruneRows,
    /// Texts dropped from stored entries since the last compaction.
    pub(crate) dropped_since_compaction: Option<crate::compact::CompactDue>,
    /// Front pages read and rows removed this session (`crate::front`).
    pub(crate) fronts: crate::front::Fronts,
    /// Each channel's copy of its epoch summaries in one row (`crate::summaries`).
    pub(crate) summary_rows: crate::summaries::SummaryRows,
    /// Summary copies read ahead during the open, for its channel load.
    pub(crate) copies_ahead: Option<crate::summaries::Ahead>,
    /// The channels' states, being read on the open's second thread.
    pub(crate) channels_ahead: Option<ChannelsAhead>,
    /// Threads that read sled and were let go ([`crate::summaries::Ahead`]'s
    /// once its copies are no longer wanted): joined before sled closes.
    pub(crate) readers_ending: Vec<std::thread::JoinHandle<()>>,
    /// Channels the open loaded without their epoch summaries, which
    /// [`Engine::ensure_summaries`] gives them before anything but a front
    /// page reads the engine (`crate::summaries`, "Summaries after the open").
    pub(crate) summaries_due: Vec<ChannelId>,
    /// Deferred epochs ([`Config::lazy_epochs`]): epochs first heard of in
    /// this session through entries whose posts alone move their counts
    /// (posts, edits, reactions), taken into sled
    /// and counted in their summaries but not applied, and not loaded since.
    /// Loading one applies what it holds and counts it again from the view.
    /// Not kept on disk: after a restart such an epoch is an ordinary one,
    /// loaded when read (its entries are all in its epoch log).
    pub(crate) deferred: HashSet<(ChannelId, Epoch)>,
    /// Where this device's chain stands in the epochs the bulk path built
    /// (`crate::bulk`).
    pub(crate) bulk_tails: HashMap<(ChannelId, Epoch), crate::bulk::BulkTail>,
    /// What the ingest of a deferred epoch's entries decoded and opened
    /// (each entry's change and texts, in epoch-log order), kept so that its
    /// first load need not read, open and decode them again; only for an
    /// epoch whose every entry is here, newest epochs first within
    /// [`DEFERRED_CACHE_BYTES`].
    pub(crate) deferred_cache: BTreeMap<(ChannelId, Epoch), Vec<CachedEntry>>,
    /// Bytes of changes and texts in `deferred_cache`.
    pub(crate) deferred_cache_bytes: usize,
    /// Deferred epochs a query answered from their posts
    /// ([`Engine::posts_view`]): loaded once the query has replied
    /// ([`Engine::load_answered`]).
    pub(crate) answered_unloaded: Vec<(ChannelId, Epoch)>,
    /// Epochs pages read from their posts since the open (`Stats`).
    pub(crate) pages_from_posts: u64,
}

/// A deferred epoch's entry as its ingest decoded and opened it.
pub(crate) struct CachedEntry {
    pub device: DeviceId,
    /// The user who signed it.
    pub user: hearth_core::UserId,
    pub seq: u64,
    pub change: automerge::Change,
    pub texts: Vec<hearth_core::Content>,
    /// What its change does, as its ingest decoded it.
    pub effects: hearth_core::ChangeEffects,
}

impl CachedEntry {
    pub(crate) fn bytes(&self) -> usize {
        self.change.raw_bytes().len() + self.texts.iter().map(|c| c.text.len() + 64).sum::<usize>()
    }
}

/// Most bytes of decoded changes and texts kept for deferred epochs.
pub(crate) const DEFERRED_CACHE_BYTES: usize = 32 << 20;

impl Engine {
    /// `events`: the store's event channel when one was made ahead
    /// ([`event_channel`]), else one is made here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dir: PathBuf,
        config: Config,
        db: sled::Db,
        master: SecretKey,
        identity: Identity,
        lock: File,
        log: Log,
        events: Option<tokio::sync::broadcast::Sender<crate::StoreEvent>>,
    ) -> Result<Self> {
        let tree = db.open_tree(TREE)?;
        let sled_files = SledFiles::new(&dir.join(DB_DIR));
        let records = hearth_core::derive(&master, hearth_core::Purpose::LocalRecords);
        let events = events.unwrap_or_else(event_channel);
        let nonces = crate::nonces::FeedNonces::new()?;
        Ok(Engine {
            dir,
            config,
            db,
            tree,
            master,
            records,
            identity,
            hlc: Hlc::default(),
            channels: BTreeMap::new(),
            by_wire: HashMap::new(),
            epochs: HashMap::new(),
            clock: 0,
            watermark: 0,
            root_heads: [0; 32],
            root_counter: 0,
            touched: BTreeMap::new(),
            early_texts: HashMap::new(),
            early_spare: Vec::new(),
            appended: Default::default(),
            shares_due: Default::default(),
            peer_keys: HashMap::new(),
            batch: sled::Batch::default(),
            rows_pending: false,
            dirty: false,
            own_unsynced: false,
            own_end: crate::log::LogPos::default(),
            logged: None,
            early: None,
            fresh: HashMap::new(),
            journal_pending: 0,
            unlock_time: std::time::Duration::ZERO,
            events,
            chat: Default::default(),
            chat_staged: Vec::new(),
            chat_muted: false,
            log,
            log_buf: Vec::new(),
            replaying: false,
            nonces,
            sled_files,
            _lock: lock,
            prune_queue: Vec::new(),
            expired: HashMap::new(),
            drops_due: Default::default(),
            expire_turn: 0,
            expired_high: HashMap::new(),
            retention_known: HashMap::new(),
            deferred: HashSet::new(),
            bulk_tails: HashMap::new(),
            deferred_cache: BTreeMap::new(),
            deferred_cache_bytes: 0,
            answered_unloaded: Vec::new(),
            pages_from_posts: 0,
            prune_rows: Default::default(),
            fronts: Default::default(),
            summary_rows: Default::default(),
            copies_ahead: None,
            channels_ahead: None,
            readers_ending: Vec::new(),
            summaries_due: Vec::new(),
            dropped_since_compaction: None,
        })
    }

    /// Read meta values and every channel's state (not the epoch documents).
    pub(crate) fn load(&mut self) -> Result<()> {
        if let Some(v) = self.tree.get(META_WATERMARK)? {
            self.watermark = key_u64(&v)?;
        }
        if let Some(v) = self.tree.get(META_HLC)? {
            self.hlc.observe(hearth_core::Timestamp(read_hlc(&self.records, &v)?));
        }
        if let Some(v) = self.tree.get(META_COMPACT_DUE)? {
            let plain = open_record(&self.records, META_COMPACT_DUE, &v)?;
            self.dropped_since_compaction =
                Some(postcard::from_bytes(&plain).map_err(|e| Error::corrupted("compaction due", e.to_string()))?);
        }
        let read = match self.channels_ahead.take().and_then(ChannelsAhead::wait) {
            Some(read) => read,
            None => read_channels(&self.tree, &self.records, self.copies_ahead.is_some()),
        };
        for c in read? {
            self.adopt_channel(c)?;
        }
        Ok(())
    }

    /// Load a channel's state from sled, its summaries with it.
    pub(crate) fn load_channel(&mut self, keys: ChannelKeys) -> Result<()> {
        let c = read_channel(&self.tree, &self.records, keys, None, false)?;
        self.adopt_channel(c)
    }

    /// Take a channel's state as read from sled: this device among its
    /// devices, its heads in the store root, its summaries read now or left
    /// to [`Engine::ensure_summaries`] (the open's load, whose copies are
    /// being read on the second core).
    fn adopt_channel(&mut self, c: ChannelRead) -> Result<()> {
        let ChannelRead { mut state, root, later } = c;
        // Its heads name this device's user where it wrote.
        state
            .devices
            .entry(self.identity.device())
            .or_insert(self.identity.user());
        crate::root::xor_into(&mut self.root_heads, &root);
        if later {
            self.summaries_due.push(state.keys.id());
        } else {
            state.summaries = self.load_summaries(&state, false)?;
            state.set_current();
        }
        self.by_wire.insert(state.keys.wire(), state.keys.id());
        self.channels.insert(state.keys.id(), state);
        Ok(())
    }

    /// Give the channels the open loaded without them their epoch
    /// summaries (from the copies read on the second core, or their own
    /// rows). Cheap once done; every command but a front page's calls it
    /// first (`crate::actor`), and so does the open before anything it
    /// replays or writes.
    pub(crate) fn ensure_summaries(&mut self) -> Result<()> {
        if !self.summaries_due.is_empty()
            && let Some(a) = self.copies_ahead.as_mut()
        {
            a.begin();
        }
        while let Some(id) = self.summaries_due.last().copied() {
            let Some(mut state) = self.channels.remove(&id) else {
                self.summaries_due.pop();
                continue;
            };
            let loaded = self.load_summaries(&state, true);
            let failed = match loaded {
                Ok(s) => {
                    state.summaries = s;
                    state.set_current();
                    None
                }
                Err(e) => Some(e),
            };
            self.channels.insert(id, state);
            if let Some(e) = failed {
                // Left due: every later call fails too (the store is
                // poisoned by it), and the next open loads it first.
                return Err(self.summaries_failed(id, e));
            }
            self.summaries_due.pop();
        }
        if let Some(t) = self.copies_ahead.take().and_then(crate::summaries::Ahead::let_go) {
            self.readers_ending.push(t);
        }
        Ok(())
    }

    /// Take `identity` as this device's (a newer record of it: keys given,
    /// or moved to its keyed id): epoch documents in memory write as its
    /// device from now on.
    pub(crate) fn take_identity(&mut self, identity: Identity) {
        let (user, device) = (identity.user(), identity.device());
        if device != self.identity.device() {
            for le in self.epochs.values_mut() {
                le.doc.set_writer(&device);
            }
            for ch in self.channels.values_mut() {
                ch.devices.insert(device, user);
            }
            self.retention_known.clear();
        }
        self.identity = identity;
    }

    pub(crate) fn channel(&self, id: &ChannelId) -> Result<&ChannelState> {
        self.channels.get(id).ok_or_else(|| Error::NotFound {
            what: "channel",
            id: id.to_hex(),
        })
    }
}

/// A device's certificate chain as a `T_CHAINS` row holds it (postcard).
pub(crate) fn encode_chain(chain: &[hearth_core::device::DeviceCert]) -> Vec<u8> {
    postcard::to_stdvec(chain).expect("a chain encodes")
}

/// Decode a `T_CHAINS` row's chain.
pub(crate) fn decode_chain(bytes: &[u8]) -> Result<Vec<hearth_core::device::DeviceCert>> {
    postcard::from_bytes(bytes).map_err(|e| Error::corrupted("device chain", e))
}

/// A channel's state as sled holds it, its summaries not read yet.
pub(crate) struct ChannelRead {
    state: ChannelState,
    /// Its feed heads' part of the store root ([`crate::root`]).
    root: [u8; 32],
    /// Its summaries are left for later: it has a summary copy, which the
    /// open's second thread reads.
    later: bool,
}

/// Every channel's state, as the open loads it (not their epoch
/// documents, nor their summaries). `ahead`: the summary copies are read
/// ahead ([`crate::summaries::read_copies_ahead`]), so a channel that has
/// one leaves its summaries for later. Needs no engine: the open's second
/// thread reads them while the open's own reads the journal and the
/// identity ([`ChannelsAhead`]).
pub(crate) fn read_channels(tree: &sled::Tree, records: &SecretKey, ahead: bool) -> Result<Vec<ChannelRead>> {
    let mut out = Vec::new();
    for row in tree.scan_prefix([T_CHANNELS]) {
        let (k, v) = row?;
        let plain = open_record(records, &k, &v)?;
        let (keys, invited) = ChannelRecord::decode_named(&plain)?;
        if channel_key(&keys.wire()) != *k {
            return Err(Error::corrupted("channel record", "stored under another channel's key"));
        }
        let later = ahead && crate::summaries::has_copy(tree, &keys.wire())?;
        out.push(read_channel(tree, records, keys, invited, later)?);
    }
    Ok(out)
}

/// A channel's state from sled.
fn read_channel(
    tree: &sled::Tree,
    records: &SecretKey,
    keys: ChannelKeys,
    invited_name: Option<String>,
    later: bool,
) -> Result<ChannelRead> {
    let wire = keys.wire();
    let mut state = ChannelState {
        keys,
        heads: BTreeMap::new(),
        chains: BTreeMap::new(),
        devices: Default::default(),
        summaries: BTreeMap::new(),
        current: (1, 0),
        staged_read: None,
        staged_newest: None,
        owed: BTreeMap::new(),
        invited_name,
        hidden: None,
        cuts: BTreeMap::new(),
        told: None,
        dead: Default::default(),
        stubbed: Default::default(),
    };
    let mut root = [0u8; 32];
    for (key, set, what) in [
        (crate::layout::dead_key(&wire), &mut state.dead, "dead epochs"),
        (crate::layout::stubbed_key(&wire), &mut state.stubbed, "stubbed epochs"),
    ] {
        if let Some(v) = tree.get(&key)? {
            let plain = open_record(records, &key, &v)?;
            *set = postcard::from_bytes(&plain).map_err(|e| Error::corrupted(what, e))?;
        }
    }
    let owed_key = channel_prefix(T_OWED, &wire);
    let told_key = channel_prefix(T_TOLD, &wire);
    if let Some(v) = tree.get(told_key)? {
        let plain = open_record(records, &told_key, &v)?;
        state.told = Some(hearth_core::peer::RemovedNotice::decode(&plain)?);
    }
    if let Some(v) = tree.get(owed_key)? {
        let plain = open_record(records, &owed_key, &v)?;
        state.owed = postcard::from_bytes(&plain).map_err(|e| Error::corrupted("owed receipts", e))?;
    }
    for row in tree.scan_prefix(channel_prefix(T_HEADS, &wire)) {
        let (k, v) = row?;
        let device = hearth_core::DeviceId::from_slice(&k[33..])?;
        let head: FeedHead = postcard::from_bytes(&v).map_err(|e| Error::corrupted("feed head", e))?;
        state.devices.insert(device, head.user);
        crate::root::xor_into(&mut root, &crate::root::head_term(&wire, &device, &head));
        state.heads.insert(device, head);
    }
    for row in tree.scan_prefix(channel_prefix(T_CHAINS, &wire)) {
        let (k, v) = row?;
        let device = hearth_core::DeviceId::from_slice(&k[33..])?;
        let chain = decode_chain(&open_record(records, &k, &v)?)?;
        // Verified before it was stored; the sealed row (only the
        // record key writes one) is its own proof since.
        let key = chain
            .last()
            .map(|c| c.body.keys.signing)
            .ok_or_else(|| Error::corrupted("device chain", "empty"))?;
        state.chains.insert(device, (key, chain));
    }
    Ok(ChannelRead { state, root, later })
}

/// The channels' states, read on the open's second thread once the key is
/// unlocked ([`read_channels`]), on their way to the open's load.
pub(crate) struct ChannelsAhead(pub(crate) std::sync::mpsc::Receiver<Result<Vec<ChannelRead>>>);

impl ChannelsAhead {
    /// What the thread read, waited for awake (it is a fraction of a
    /// millisecond, and a parked thread takes longer to wake on this kind
    /// of machine); `None` if the thread is gone.
    fn wait(self) -> Option<Result<Vec<ChannelRead>>> {
        crate::open::recv_awake(&self.0, Some(AHEAD_SPIN))
    }
}

/// How long [`ChannelsAhead::wait`] waits awake.
const AHEAD_SPIN: std::time::Duration = std::time::Duration::from_millis(3);
