//! The engine: owns the sled tree, the feed log, the channel states and the
//! loaded epoch documents. Single-threaded by design; the store task
//! ([`crate::actor`]) drives it. Durability (log batches, checkpoints,
//! snapshots) is in [`crate::persist`].
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

use hearth_core::member::MEMBER_BODY_VERSION;
use hearth_core::{
    ChannelId, ChannelKeys, ChannelRecord, ContentId, DeviceId, EntryBody, Envelope, Epoch, EpochDoc, EpochView, Hlc,
    Identity, META_EPOCH, MemberAction, MemberBody, MessageId, Op, OpKey, Roster, SecretKey, WireId, decode_change,
    writer_tag,
};

use crate::channel::{ChannelState, EpochSummary, FeedHead};
use crate::config::Config;
use crate::durable::SledFiles;
use crate::error::{Error, Result};
use crate::journal::JournalEntry;
use crate::layout::*;
use crate::log::{self, Log, kind};

/// Staged bytes (text plus a per-op allowance) after which an epoch's change is
/// closed early, so every feed entry stays far below [`hearth_core::MAX_ENTRY_BYTES`].
pub(crate) const ENTRY_BUDGET: usize = 40 * 1024;
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
type EntryChange = (DeviceId, u64, automerge::Change);

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
    clock: u64,
    /// Last journal sequence number applied.
    pub watermark: u64,
    /// XOR digest of every feed head (`root.rs`).
    pub root_heads: [u8; 32],
    /// The counter of the last store root written.
    pub root_counter: u64,
    pub(crate) touched: BTreeMap<(ChannelId, Epoch), usize>,
    /// Channels with feed entries in the current batch (announced once it is applied).
    appended: std::collections::BTreeSet<ChannelId>,
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
    /// The journal's thread and queue, made during the open's unlock
    /// ([`crate::actor::Prepared`]); the store task takes them.
    pub(crate) prepared: Option<crate::actor::Prepared>,
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
    fn bytes(&self) -> usize {
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
            appended: Default::default(),
            shares_due: Default::default(),
            peer_keys: HashMap::new(),
            batch: sled::Batch::default(),
            rows_pending: false,
            dirty: false,
            own_unsynced: false,
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
            prepared: None,
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

    // ----- epochs -----

    /// Make sure an epoch is in memory. With `create`, a missing epoch starts
    /// empty; without, a missing epoch is `Ok(false)`.
    pub(crate) fn ensure_epoch(&mut self, channel: ChannelId, epoch: Epoch, create: bool) -> Result<bool> {
        self.clock += 1;
        if let Some(le) = self.epochs.get_mut(&(channel, epoch)) {
            le.used = self.clock;
            return Ok(true);
        }
        let device = self.identity.device();
        let ch = self.channels.get_mut(&channel).ok_or_else(|| Error::NotFound {
            what: "channel",
            id: channel.to_hex(),
        })?;
        let le = match ch.summaries.get(&epoch) {
            None if !create => return Ok(false),
            None => {
                ch.summaries.insert(epoch, EpochSummary::default());
                let mut doc = EpochDoc::new(epoch, &device);
                doc.set_inline_texts(self.identity.device_keys().is_none());
                doc.set_slot_texts(true);
                LoadedEpoch {
                    doc,
                    view: EpochView::default(),
                    used: self.clock,
                    queued: false,
                    segments: HashMap::new(),
                    moderated: false,
                }
            }
            Some(s) => {
                let s = s.clone();
                let cached = self.take_cached(channel, epoch, &s);
                let (doc, segments, changes) = match cached {
                    Some(c) => c,
                    None => self.read_epoch(channel, epoch, &s, &HashSet::new())?,
                };
                let mut doc = self.apply_loaded(channel, epoch, &s, doc, changes)?;
                let ch = self.channels.get_mut(&channel).expect("looked up above");
                doc.set_cuts(ch.cuts.get(&epoch).cloned().unwrap_or_default());
                if epoch == META_EPOCH {
                    doc.set_issuers(ch.issuers());
                }
                let view = doc.view(&ch.devices);
                let queued = doc.has_queued();
                // A deferred epoch's summary counted its posts one by one:
                // from its first load on, the view counts.
                if self.deferred.remove(&(channel, epoch))
                    && let Some(s) = ch.summaries.get_mut(&epoch)
                {
                    s.refresh(&view, &self.identity.user());
                }
                LoadedEpoch {
                    doc,
                    view,
                    used: self.clock,
                    queued,
                    segments,
                    moderated: false,
                }
            }
        };
        if epoch == META_EPOCH {
            self.retention_known.remove(&channel);
        }
        self.epochs.insert((channel, epoch), le);
        self.ensure_moderators(channel, epoch)?;
        self.prune_loaded(channel, epoch)?;
        Ok(true)
    }

    /// An epoch's document as its snapshot has it, with the texts of all
    /// its entries added, and the changes of its entries past the snapshot
    /// but those in `skip`, not applied yet.
    fn read_epoch(
        &self,
        channel: ChannelId,
        epoch: Epoch,
        s: &EpochSummary,
        skip: &HashSet<(DeviceId, u64)>,
    ) -> Result<(EpochDoc, Segments, Vec<EntryChange>)> {
        let device = self.identity.device();
        let ch = self.channel(&channel)?;
        let wire = ch.keys.wire();
        let mut doc = if s.snapshot_chunks > 0 {
            let mut bytes = Vec::new();
            for i in 0..s.snapshot_chunks {
                let k = snap_key(&wire, epoch, i);
                let v = self
                    .tree
                    .get(k)?
                    .ok_or_else(|| Error::corrupted("snapshot", "missing chunk"))?;
                bytes.extend(open_record(&self.records, &k, &v)?);
            }
            EpochDoc::load(epoch, &bytes, &device)?
        } else {
            EpochDoc::new(epoch, &device)
        };
        doc.set_inline_texts(self.identity.device_keys().is_none());
        doc.set_slot_texts(true);
        let mut changes = Vec::new();
        let mut segments = HashMap::new();
        // Every entry of the epoch is read for the texts its segments
        // carry; those past the snapshot also for their changes.
        let from = elog_key(&wire, epoch, 1);
        let to = elog_key(&wire, epoch, u64::MAX);
        for row in self.tree.range(from..=to) {
            let (k, v) = row?;
            let (dev, seq) = decode_elog_value(&v)?;
            if skip.contains(&(dev, seq)) {
                continue;
            }
            let past_snapshot = key_u64(&k)? > s.snapshot_upto;
            let bytes = self
                .tree
                .get(feed_key(&wire, &dev, seq))?
                .ok_or_else(|| Error::corrupted("feed", format!("epoch log names a missing entry {dev}/{seq}")))?;
            let env = Envelope::decode(&bytes)?;
            if env.holds_texts() && env.header.version >= hearth_core::ENVELOPE_V5 {
                // Format 5: the pack names each text's op; their
                // messages are told when a delete needs them.
                let texts = env.open_pack_texts(&ch.keys).unwrap_or_default();
                doc.add_slot_texts(texts.into_iter().inspect(|(id, _)| {
                    segments.entry(*id).or_insert_with(Vec::new).push((dev, seq));
                }));
            } else if env.holds_texts() {
                let texts = env.open_texts(&ch.keys).into_iter().map(|c| (c.id(), c));
                doc.add_texts_with_ids(texts.inspect(|(id, _)| {
                    segments.entry(*id).or_insert_with(Vec::new).push((dev, seq));
                }));
            }
            if !past_snapshot {
                continue;
            }
            let body = env.open(&ch.keys)?;
            if body.epoch != epoch {
                return Err(Error::corrupted(
                    "feed entry",
                    "epoch log and entry disagree on the epoch",
                ));
            }
            let user = ch
                .devices
                .get(&dev)
                .ok_or_else(|| Error::corrupted("feed", "entry of a device with no head"))?;
            if env.header.user != *user {
                return Err(Error::corrupted("feed entry", "signed by another user than its feed's"));
            }
            changes.push((dev, seq, decode_change(&body.change, &dev, user)?));
        }
        Ok((doc, segments, changes))
    }

    /// A deferred epoch's document, texts and changes from what its ingest
    /// kept (`deferred_cache`), if that is every entry of its epoch log and
    /// it has no snapshot (it never had a document); `None` otherwise.
    fn take_cached(
        &mut self,
        channel: ChannelId,
        epoch: Epoch,
        s: &EpochSummary,
    ) -> Option<(EpochDoc, Segments, Vec<EntryChange>)> {
        let cached = self.uncache(channel, epoch)?;
        if !self.deferred.contains(&(channel, epoch)) || s.snapshot_chunks > 0 || cached.len() as u64 != s.entries {
            return None;
        }
        let mut doc = EpochDoc::new(epoch, &self.identity.device());
        doc.set_inline_texts(self.identity.device_keys().is_none());
        doc.set_slot_texts(true);
        let mut segments: Segments = HashMap::new();
        let mut changes = Vec::with_capacity(cached.len());
        for e in cached {
            for c in &e.texts {
                segments.entry(c.id()).or_default().push((e.device, e.seq));
            }
            doc.add_texts(e.texts);
            changes.push((e.device, e.seq, e.change));
        }
        // Every debug build (all the tests) reads the epoch from sled too,
        // and checks that both agree.
        #[cfg(debug_assertions)]
        if let Ok((_, own_segments, own)) = self.read_epoch(channel, epoch, s, &HashSet::new()) {
            let raw = |v: &[EntryChange]| -> Vec<(DeviceId, u64, Vec<u8>)> {
                v.iter().map(|(d, q, c)| (*d, *q, c.raw_bytes().to_vec())).collect()
            };
            assert_eq!(
                raw(&changes),
                raw(&own),
                "a deferred epoch's cache differs from its log"
            );
            assert_eq!(
                segments, own_segments,
                "a deferred epoch's cached texts differ from its entries'"
            );
        }
        Some((doc, segments, changes))
    }

    /// The view of a deferred epoch built from what its ingest decoded and
    /// kept (`deferred_cache`), without applying a change: when every
    /// entry of the epoch is kept, each only makes posts that name their
    /// texts by id or slot (`ChangeEffects::beyond_posts`), every change's
    /// dependencies are among them (automerge would queue none), no post is
    /// made twice and every writer is one the channel knows. Then each post
    /// shows as the document's view would show it: its text (or dropped,
    /// when its entry did not carry it), no edit, reaction or delete, its
    /// replies counted. `None` otherwise: the epoch is loaded as usual.
    ///
    /// The first page after a catch-up reads the newest epochs this way
    /// (about 0.3 ms for 800 messages against 4 to 6 ms to apply and view
    /// them); the epoch is loaded after the reply (`load_answered`).
    pub(crate) fn posts_view(&self, channel: ChannelId, epoch: Epoch) -> Option<EpochView> {
        if !self.deferred.contains(&(channel, epoch)) {
            return None;
        }
        let cached = self.deferred_cache.get(&(channel, epoch))?;
        let ch = self.channels.get(&channel)?;
        let s = ch.summaries.get(&epoch)?;
        if s.snapshot_chunks > 0 || cached.len() as u64 != s.entries || ch.cuts.contains_key(&epoch) {
            return None;
        }
        let hashes: HashSet<automerge::ChangeHash> = cached.iter().map(|e| e.change.hash()).collect();
        // Each actor's changes as automerge takes them: seqs 1, 2, ... with
        // op counters that do not overlap (two of one seq, as a hostile
        // writer can sign, are refused when the epoch is applied).
        let mut actors: HashMap<&automerge::ActorId, Vec<&automerge::Change>> = HashMap::new();
        for e in cached {
            actors.entry(e.change.actor_id()).or_default().push(&e.change);
        }
        for changes in actors.values_mut() {
            changes.sort_by_key(|c| c.seq());
            let mut next_op = 0;
            for (i, c) in changes.iter().enumerate() {
                if c.seq() != i as u64 + 1 || c.start_op().get() < next_op {
                    return None;
                }
                next_op = c.start_op().get() + c.len() as u64;
            }
        }
        let mut seen = HashSet::new();
        let mut view = EpochView::default();
        for e in cached {
            if e.effects.beyond_posts
                || ch.devices.get(&e.device) != Some(&e.user)
                || !e.change.deps().iter().all(|d| hashes.contains(d))
            {
                return None;
            }
            let tag = hearth_core::writer_tag(&e.user, &e.device);
            let texts: HashMap<hearth_core::ContentId, &hearth_core::Content> =
                e.texts.iter().map(|c| (c.id(), c)).collect();
            let named: HashMap<MessageId, hearth_core::ContentId> = e.effects.texts.iter().copied().collect();
            let roots: HashMap<MessageId, MessageId> = e.effects.reply_roots.iter().copied().collect();
            for id in &e.effects.posts {
                if id.writer() != tag || !seen.insert(*id) {
                    return None;
                }
                let content = named.get(id)?;
                let text = texts.get(content).filter(|c| c.msg == *id).map(|c| c.text.clone());
                view.insert(hearth_core::Message {
                    id: *id,
                    author: e.user,
                    dropped: text.is_none(),
                    text,
                    reply_to: roots.get(id).copied(),
                    edited: false,
                    deleted: false,
                    reactions: Default::default(),
                    reply_count: 0,
                });
            }
        }
        // Every debug build (all the tests) applies the epoch too, and
        // checks that both views agree.
        #[cfg(debug_assertions)]
        if let Ok((mut doc, _, changes)) = self.read_epoch(channel, epoch, s, &HashSet::new()) {
            let changes: Vec<automerge::Change> = changes.into_iter().map(|(_, _, c)| c).collect();
            if doc.apply_remote(changes).is_ok() && !doc.has_queued() {
                assert_eq!(
                    view,
                    doc.view(&ch.devices),
                    "a deferred epoch's posts view differs from its document's"
                );
            }
        }
        Some(view)
    }

    /// Load the deferred epochs a query answered from their posts
    /// ([`Engine::posts_view`]), once it has replied. A failure is left for
    /// the next read of the epoch to report.
    pub(crate) fn load_answered(&mut self) {
        for (channel, epoch) in std::mem::take(&mut self.answered_unloaded) {
            if self.deferred.contains(&(channel, epoch)) {
                let _ = self.ensure_epoch(channel, epoch, false);
            }
        }
    }

    /// Keep what the ingest of a deferred epoch's entries decoded
    /// (`deferred_cache`): `new` for an epoch this batch creates, otherwise
    /// only added to an epoch already cached whole. Past
    /// [`DEFERRED_CACHE_BYTES`], the oldest epochs' go.
    pub(crate) fn cache_deferred(&mut self, channel: ChannelId, epoch: Epoch, new: bool, entries: Vec<CachedEntry>) {
        let key = (channel, epoch);
        if !new && !self.deferred_cache.contains_key(&key) {
            return;
        }
        self.deferred_cache_bytes += entries.iter().map(CachedEntry::bytes).sum::<usize>();
        self.deferred_cache.entry(key).or_default().extend(entries);
        while self.deferred_cache_bytes > DEFERRED_CACHE_BYTES {
            let Some(oldest) = self.deferred_cache.keys().min_by_key(|(_, e)| *e).copied() else {
                break;
            };
            self.cache_dropped(oldest.0, oldest.1);
        }
    }

    /// Forget what `deferred_cache` kept of an epoch (it died).
    pub(crate) fn cache_dropped(&mut self, channel: ChannelId, epoch: Epoch) {
        self.uncache(channel, epoch);
    }

    /// Take what `deferred_cache` kept of an epoch out of it.
    fn uncache(&mut self, channel: ChannelId, epoch: Epoch) -> Option<Vec<CachedEntry>> {
        let gone = self.deferred_cache.remove(&(channel, epoch))?;
        self.deferred_cache_bytes = self
            .deferred_cache_bytes
            .saturating_sub(gone.iter().map(CachedEntry::bytes).sum());
        Some(gone)
    }

    /// Apply an epoch's changes read by [`Engine::read_epoch`] in one call.
    ///
    /// Only a deferred epoch (`Engine::deferred`) can hold a change automerge
    /// refuses (an epoch applied on arrival refused it then): its entries
    /// were verified, signed by their authors and stored, but not applied.
    /// Then the changes are applied one at a time from the snapshot, and one
    /// refused is left out of the document (its entry stays in its feed, as
    /// signed; a warning names it). Its author's later changes that depend on
    /// it wait in automerge's queue.
    fn apply_loaded(
        &self,
        channel: ChannelId,
        epoch: Epoch,
        s: &EpochSummary,
        mut doc: EpochDoc,
        changes: Vec<EntryChange>,
    ) -> Result<EpochDoc> {
        let err = match doc.apply_remote(changes.iter().map(|(_, _, c)| c.clone()).collect()) {
            Ok(()) => return Ok(doc),
            Err(e) => e,
        };
        eprintln!("hearth: automerge refused the changes of epoch {epoch} together ({err}); applying them one by one");
        let mut skip = HashSet::new();
        let mut good = Vec::new();
        let (mut doc, _, _) = self.read_epoch(channel, epoch, s, &skip)?;
        for (dev, seq, change) in changes {
            if doc.apply_remote(vec![change.clone()]).is_ok() {
                good.push(change);
                continue;
            }
            eprintln!("hearth: automerge refused entry {dev}/{seq} of epoch {epoch}: left out of its document");
            skip.insert((dev, seq));
            doc = self.read_epoch(channel, epoch, s, &skip)?.0;
            doc.apply_remote(good.clone())?;
        }
        Ok(doc)
    }

    pub(crate) fn loaded(&self, channel: &ChannelId, epoch: Epoch) -> Option<&LoadedEpoch> {
        self.epochs.get(&(*channel, epoch))
    }

    // ----- writes -----

    pub(crate) fn top_epoch(&self, ch: &ChannelState) -> Epoch {
        let (e, n) = ch.current;
        let top = if n as usize >= self.config.epoch_messages {
            e.saturating_add(1)
        } else {
            e
        };
        // Never a dead epoch, nor one a peer sent stubs of (a member that
        // took only stubs so far).
        let stubs = ch.dead.last().max(ch.stubbed.last());
        top.max(stubs.map_or(1, |d| d.saturating_add(1)))
    }

    fn message_at(&mut self, msg: &MessageId) -> Result<(ChannelId, hearth_core::Message)> {
        self.get_message(msg).map(|l| (l.channel, l.message))
    }

    /// Validate a write and give it ids. Nothing changes yet.
    pub(crate) fn prepare(&mut self, w: Write) -> Result<(Vec<JournalEntry>, Outcome)> {
        let me = self.identity.user();
        let op_entry = |channel, op: Op| -> Result<JournalEntry> {
            op.validate()?;
            Ok(JournalEntry::Op { channel, op })
        };
        Ok(match w {
            Write::CreateChannel { name } => {
                Op::CreateChannel { name: name.clone() }.validate()?;
                let keys = ChannelKeys::generate()?;
                let id = keys.id();
                let entries = vec![
                    JournalEntry::Channel {
                        id,
                        key: *keys.key().expose(),
                    },
                    op_entry(id, Op::CreateChannel { name })?,
                    op_entry(
                        id,
                        Op::SetName {
                            name: self.identity.name().to_string(),
                        },
                    )?,
                    // The roster starts with its maker as owner.
                    op_entry(
                        id,
                        Op::Member {
                            n: 1,
                            body: MemberBody {
                                version: MEMBER_BODY_VERSION,
                                hlc: self.hlc.tick(now_ms()).0,
                                parents: Vec::new(),
                                action: MemberAction::Create,
                            },
                        },
                    )?,
                ];
                (entries, Outcome::Channel(id))
            }
            Write::Join { keys, name } => {
                let id = keys.id();
                if self.channels.contains_key(&id) {
                    return Ok((vec![], Outcome::Channel(id)));
                }
                let key = *keys.key().expose();
                let joined = match name {
                    Some(name) => {
                        Op::Rename { name: name.clone() }.validate()?;
                        JournalEntry::Joined { id, key, name }
                    }
                    None => JournalEntry::Channel { id, key },
                };
                let entries = vec![
                    joined,
                    op_entry(
                        id,
                        Op::SetName {
                            name: self.identity.name().to_string(),
                        },
                    )?,
                ];
                (entries, Outcome::Channel(id))
            }
            Write::Rename { channel, name } => {
                self.writable(&channel)?;
                (vec![op_entry(channel, Op::Rename { name })?], Outcome::Done)
            }
            Write::SetRetention { channel, secs } => {
                self.writable(&channel)?;
                let roster = self.roster(&channel)?;
                if roster.is_started()
                    && !matches!(
                        roster.role(&me),
                        Some(hearth_core::Role::Owner | hearth_core::Role::Admin)
                    )
                {
                    return Err(Error::NotAllowed {
                        action: "set the channel's retention".into(),
                        why: "only its admins and owners may".into(),
                    });
                }
                let at = self.hlc.tick(now_ms()).0;
                (vec![op_entry(channel, Op::SetRetention { secs, at })?], Outcome::Done)
            }
            Write::Reply { to, text } => {
                let channel = self.message_at(&to)?.0;
                return self.prepare(Write::Post {
                    channel,
                    text,
                    reply_to: Some(to),
                });
            }
            Write::Post {
                channel,
                text,
                reply_to,
            } => {
                self.writable(&channel)?;
                let epoch = match reply_to {
                    None => self.top_epoch(self.channel(&channel)?),
                    Some(_) => 0,
                };
                let root = match reply_to {
                    None => None,
                    Some(parent) => {
                        let (c, m) = self.message_at(&parent)?;
                        if c != channel {
                            return Err(Error::invalid("reply", "the message is in another channel"));
                        }
                        if m.deleted {
                            return Err(Error::invalid("reply", "the message was deleted"));
                        }
                        Some(m.reply_to.unwrap_or(m.id))
                    }
                };
                let epoch = root.map(|r| r.epoch()).unwrap_or(epoch);
                let ts = self.hlc.tick(now_ms());
                let id = MessageId::new(ts, epoch, &channel, writer_tag(&me, &self.identity.device()));
                (
                    vec![op_entry(
                        channel,
                        Op::Post {
                            id,
                            text,
                            reply_to: root,
                        },
                    )?],
                    Outcome::Message(id),
                )
            }
            Write::React { msg, emoji, remove } => {
                let (c, m) = self.message_at(&msg)?;
                self.writable(&c)?;
                if m.deleted {
                    return Err(Error::invalid("reaction", "the message was deleted"));
                }
                let op = if remove {
                    Op::Unreact { msg, emoji }
                } else {
                    Op::React { msg, emoji }
                };
                (vec![op_entry(c, op)?], Outcome::Done)
            }
            Write::Edit { msg, text } => {
                let (c, m) = self.message_at(&msg)?;
                self.writable(&c)?;
                if m.author != me {
                    return Err(Error::NotAuthor { action: "edit" });
                }
                if m.deleted {
                    return Err(Error::invalid("edit", "the message was deleted"));
                }
                (vec![op_entry(c, Op::Edit { msg, text })?], Outcome::Done)
            }
            Write::Delete { msg } => {
                let (c, m) = self.message_at(&msg)?;
                self.writable(&c)?;
                // The author, or an admin or owner of a channel with a roster.
                if m.author != me && !self.moderators(&c)?.contains(&me) {
                    return Err(Error::NotAuthor { action: "delete" });
                }
                (vec![op_entry(c, Op::Delete { msg })?], Outcome::Done)
            }
            Write::Delivered { channel, marks } => {
                self.writable(&channel)?;
                (self.receipt_entries(channel, &marks)?, Outcome::Done)
            }
            Write::OwedReceipts => {
                let owing: Vec<(ChannelId, Vec<(DeviceId, MessageId)>)> = self
                    .channels
                    .iter()
                    .filter(|(_, ch)| !ch.owed.is_empty())
                    .map(|(id, ch)| (*id, ch.owed.iter().map(|(d, m)| (*d, *m)).collect()))
                    .collect();
                let (mut entries, mut channels) = (Vec::new(), 0);
                for (channel, marks) in &owing {
                    // A channel whose metadata epoch cannot be read keeps what it
                    // owes; the others' receipts still go out.
                    if self.writable(channel).is_ok()
                        && let Ok(e) = self.receipt_entries(*channel, marks)
                        && !e.is_empty()
                    {
                        entries.extend(e);
                        channels += 1;
                    }
                }
                // Key shares owed go out with them (a failure keeps them due).
                for channel in std::mem::take(&mut self.shares_due) {
                    match self.owed_shares(&channel) {
                        Ok(ops) => {
                            for op in ops {
                                entries.push(op_entry(channel, op)?);
                            }
                        }
                        Err(_) => {
                            self.shares_due.insert(channel);
                        }
                    }
                }
                (entries, Outcome::Receipts(channels))
            }
            Write::Member { channel, action } => {
                let ops = self.member_ops(channel, action)?;
                (
                    ops.into_iter().map(|op| op_entry(channel, op)).collect::<Result<_>>()?,
                    Outcome::Done,
                )
            }
            Write::MarkRead { channel, up_to } => {
                self.writable(&channel)?;
                let target = match up_to {
                    Some(msg) => {
                        let (c, _) = self.message_at(&msg)?;
                        if c != channel {
                            return Err(Error::invalid("read marker", "the message is in another channel"));
                        }
                        Some(msg)
                    }
                    None => self.channel(&channel)?.newest(),
                };
                match target {
                    Some(msg) if self.channel(&channel)?.my_read() < Some(msg) => {
                        (vec![op_entry(channel, Op::ReadUpTo { msg })?], Outcome::Done)
                    }
                    _ => (vec![], Outcome::Done),
                }
            }
        })
    }

    /// The channel's roster (empty, not started, for a channel whose metadata
    /// has not arrived yet).
    pub(crate) fn roster(&mut self, channel: &ChannelId) -> Result<Roster> {
        self.channel(channel)?;
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        Ok(self
            .loaded(channel, META_EPOCH)
            .map(|le| le.view.roster.clone())
            .unwrap_or_default())
    }

    /// The users whose deletes count for anyone's message in a channel:
    /// its admins and owners (none for a channel without a roster).
    pub(crate) fn moderators(
        &mut self,
        channel: &ChannelId,
    ) -> Result<std::collections::BTreeSet<hearth_core::UserId>> {
        let roster = self.roster(channel)?;
        if !roster.is_started() {
            return Ok(Default::default());
        }
        Ok(roster
            .roles
            .iter()
            .filter(|(u, r)| {
                matches!(r, hearth_core::Role::Admin | hearth_core::Role::Owner) && !roster.removed.contains_key(*u)
            })
            .map(|(u, _)| *u)
            .collect())
    }

    /// Give a loaded message epoch the channel's moderators if a delete in
    /// it is not its message's writer's (only then do they matter: the
    /// roster is not read for every epoch that loads).
    pub(crate) fn ensure_moderators(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let due = epoch != META_EPOCH
            && self
                .epochs
                .get(&(channel, epoch))
                .is_some_and(|le| !le.moderated && le.doc.has_foreign_deletes());
        if due {
            self.apply_moderators(channel, epoch)?;
        }
        Ok(())
    }

    /// Give a loaded message epoch the channel's moderators; its view is
    /// built again if they changed.
    fn apply_moderators(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let moderators = self.moderators(&channel)?;
        let ch = self.channels.get(&channel).expect("the caller checked the channel");
        if let Some(le) = self.epochs.get_mut(&(channel, epoch)) {
            le.moderated = true;
            if le.doc.set_moderators(moderators) {
                le.view = le.doc.view(&ch.devices);
            }
        }
        Ok(())
    }

    /// The roster moved: every loaded message epoch of the channel takes the
    /// moderators it names (a delete by a new admin counts now, one by a
    /// former admin no longer), and drops the texts of what is deleted.
    pub(crate) fn refresh_moderators(&mut self, channel: ChannelId) -> Result<()> {
        let epochs: Vec<Epoch> = self
            .epochs
            .keys()
            .filter(|(c, e)| *c == channel && *e != META_EPOCH)
            .map(|(_, e)| *e)
            .collect();
        for epoch in epochs {
            // Staged ops stay staged: a view is built from the document,
            // which holds them. An epoch whose deletes are all its writers'
            // keeps needing none.
            if self.epochs.get(&(channel, epoch)).is_some_and(|le| le.moderated) {
                self.apply_moderators(channel, epoch)?;
            } else {
                self.ensure_moderators(channel, epoch)?;
            }
            self.prune_loaded(channel, epoch)?;
        }
        Ok(())
    }

    /// A mark of the membership ops a channel's roster holds (each op has
    /// a number one more than its device's last): it moves with every new
    /// op, and only then. `None` while the metadata epoch is not loaded.
    pub(crate) fn roster_mark(&self, channel: &ChannelId) -> Option<(usize, u64)> {
        self.loaded(channel, META_EPOCH).map(|le| {
            let r = &le.view.roster;
            (r.last_n.len(), r.last_n.values().map(|n| u64::from(*n)).sum())
        })
    }

    /// Refuse writes in a channel the local user was removed from.
    pub(crate) fn writable(&mut self, channel: &ChannelId) -> Result<()> {
        let me = self.identity.user();
        self.channel(channel)?;
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        let Some(roster) = self.loaded(channel, META_EPOCH).map(|le| &le.view.roster) else {
            return Ok(());
        };
        if roster.role(&me).is_none() {
            return Err(Error::NotAllowed {
                action: "write in this channel".into(),
                why: "you were removed from it".into(),
            });
        }
        if self.revoked_here(channel, roster) {
            return Err(Error::NotAllowed {
                action: "write in this channel".into(),
                why: "this device was revoked".into(),
            });
        }
        if self.told_removed(channel, roster) {
            return Err(Error::NotAllowed {
                action: "write in this channel".into(),
                why: "you were removed from it (a member's node said so, signed by the admin)".into(),
            });
        }
        Ok(())
    }

    /// Whether `roster` revokes this device in `channel`: under its present
    /// id, a former one, or its key, or a device it was linked through
    /// ([`crate::channel::ChannelState::revocations`]).
    fn revoked_here(&self, channel: &ChannelId, roster: &Roster) -> bool {
        if roster.revoked.is_empty() {
            return false;
        }
        let me = &self.identity;
        // Revocations by this user only (another user cannot revoke ours).
        let mine_revoked: Vec<&DeviceId> = roster
            .revoked
            .keys()
            .filter(|(_, u)| *u == me.user())
            .map(|(d, _)| d)
            .collect();
        if mine_revoked.iter().any(|d| me.is_this_device(d)) {
            return true;
        }
        let Ok(ch) = self.channel(channel) else {
            return false;
        };
        let mut mine: Vec<(hearth_core::DeviceId, [u8; 32])> =
            me.device_chain().map(hearth_core::device::issuers).unwrap_or_default();
        if let Some(k) = me.device_keys() {
            mine.push((me.device(), k.public().signing));
        }
        mine_revoked.iter().any(|d| {
            mine.iter()
                .any(|(m, k)| m == *d || ch.chains.get(*d).is_some_and(|(rk, _)| rk == k))
        })
    }

    /// The membership ops a roster change takes (a claim first, for a
    /// channel without a roster), each checked against the roster it lands on.
    fn member_ops(&mut self, channel: ChannelId, action: MemberAction) -> Result<Vec<Op>> {
        let mut roster = self.roster(&channel)?;
        let (me, device) = (self.identity.user(), self.identity.device());
        let action = match action {
            MemberAction::RevokeDevice { device, .. } if self.identity.is_this_device(&device) => {
                return Err(Error::NotAllowed {
                    action: "revoke this device".into(),
                    why: "a device cannot revoke itself; revoke it from another device of yours".into(),
                });
            }
            MemberAction::RevokeDevice { user, device, .. } => {
                let ch = self.channel(&channel)?;
                let upto = ch.heads.get(&device).map_or(0, |h| h.seq);
                // Signed for relays (a notice any member can hand them).
                match self.identity.device_keys() {
                    Some(keys) => MemberAction::revoke_signed(
                        user,
                        device,
                        upto,
                        hearth_core::member::sign_revocation(keys, &ch.keys.wire(), &device, upto),
                    ),
                    None => MemberAction::RevokeDevice { user, device, upto },
                }
            }
            MemberAction::Remove { user, .. } => {
                let upto = self
                    .channel(&channel)?
                    .heads
                    .iter()
                    .filter(|(_, h)| h.user == user)
                    .map(|(d, h)| (*d, h.seq))
                    .collect();
                MemberAction::Remove { user, upto }
            }
            other => other,
        };
        // Removing someone else starts a new key generation for the members
        // left (a leaver's store cannot: see docs/trust.md).
        let rotate = match &action {
            MemberAction::Remove { user, .. } => *user != me,
            a => a.revocation().is_some(),
        };
        let mut actions = Vec::new();
        if !(roster.is_started() || matches!(action, MemberAction::Create) || action.revocation().is_some()) {
            actions.push(MemberAction::Create);
        }
        actions.push(action);
        let mut ops = Vec::new();
        let wire = self.channel(&channel)?.keys.wire();
        for action in actions {
            let key = OpKey {
                device,
                n: roster.last_n.get(&device).copied().unwrap_or(0).saturating_add(1),
            };
            // Removing someone else: signed, so that any member can tell the
            // removed user's devices (`crate::peers`, `RemovedNotice`).
            let action = match (action, self.identity.device_keys()) {
                (MemberAction::Remove { user, upto }, Some(k)) if user != me => {
                    let sig = hearth_core::member::sign_removal(k, &wire, &user, &key);
                    MemberAction::remove_signed(user, upto, sig)
                }
                (a, _) => a,
            };
            let body = MemberBody {
                version: MEMBER_BODY_VERSION,
                hlc: self.hlc.tick(now_ms()).0,
                parents: roster.heads.clone(),
                action: action.clone(),
            };
            roster = roster
                .after(key, &me, &action, body.hlc)
                .map_err(|why| Error::NotAllowed {
                    action: describe(&action),
                    why: why.into(),
                })?;
            ops.push(Op::Member { n: key.n, body });
        }
        // Adding someone (back) shares the later generations with their
        // devices known here, before the op (so that they can open it).
        if matches!(ops.last(), Some(Op::Member { body, .. }) if matches!(body.action, MemberAction::Add { .. })) {
            let after = self.last_package(&channel);
            let mut shares = self.owed_shares_under(&channel, &roster, after)?;
            shares.extend(ops);
            ops = shares;
        }
        if rotate {
            let keys = &self.channel(&channel)?.keys;
            let (generation, key) = hearth_core::rotation::next_generation(keys)?;
            let devices = self.member_devices(&channel, &roster)?;
            let first = self.last_package(&channel);
            ops.extend(self.packages(&channel, &[(generation, &key)], &devices, first)?);
        }
        Ok(ops)
    }

    /// Every device of the roster's members whose key-agreement key is known
    /// here (from its feed's certificate chain), this device first.
    fn member_devices(&self, channel: &ChannelId, roster: &Roster) -> Result<Vec<(DeviceId, [u8; 32])>> {
        let ch = self.channel(channel)?;
        let me = &self.identity;
        let mut out = Vec::new();
        if let Some(k) = self.identity.device_keys() {
            out.push((me.device(), k.public().kx));
        }
        let revoked = ch.revocations(roster);
        for (d, (_, chain)) in &ch.chains {
            if me.is_this_device(d)
                || revoked.contains_key(d)
                || ch.devices.get(d).is_none_or(|u| roster.role(u).is_none())
            {
                continue;
            }
            if let Some(cert) = chain.last().filter(|c| c.body.device == *d) {
                out.push((*d, cert.body.keys.kx));
            }
        }
        Ok(out)
    }

    /// Key package ops sealing `keys` to `devices`, as many as the package
    /// bounds call for, numbered after `after`.
    fn packages(
        &self,
        channel: &ChannelId,
        keys: &[(u32, &SecretKey)],
        devices: &[(DeviceId, [u8; 32])],
        after: u32,
    ) -> Result<Vec<Op>> {
        let wire = self.channel(channel)?.keys.wire();
        let mut n = after;
        let mut ops = Vec::new();
        for group in devices.chunks(hearth_core::rotation::MAX_PACKAGE_RECIPIENTS) {
            for ks in keys.chunks(hearth_core::rotation::MAX_PACKAGE_KEYS) {
                n = n.saturating_add(1);
                ops.push(Op::Keys {
                    n,
                    package: hearth_core::KeyPackage::seal(&wire, ks, group)?,
                });
            }
        }
        Ok(ops)
    }

    /// The number of this device's last key package in a channel.
    fn last_package(&self, channel: &ChannelId) -> u32 {
        let me = self.identity.device();
        let Some((ch, le)) = self.channels.get(channel).zip(self.loaded(channel, META_EPOCH)) else {
            return 0;
        };
        le.doc
            .key_packages(&ch.devices)
            .iter()
            .filter(|(_, d, _, _)| *d == me)
            .map(|(_, _, n, _)| *n)
            .max()
            .unwrap_or(0)
    }

    /// Key shares this device owes in a channel: for every later generation
    /// it holds, the member devices (known keys) that no package reaches.
    /// First, a rotation, if one is owed and this device's user is an admin
    /// or owner (see [`Engine::rotation_owed`]).
    fn owed_shares(&mut self, channel: &ChannelId) -> Result<Vec<Op>> {
        let roster = self.roster(channel)?;
        let mut ops = Vec::new();
        let first = self.last_package(channel);
        if roster.role(&self.identity.user()) >= Some(hearth_core::Role::Admin)
            && !self.revoked_here(channel, &roster)
            && self.rotation_owed(channel, &roster)?
        {
            let keys = &self.channel(channel)?.keys;
            let (generation, key) = hearth_core::rotation::next_generation(keys)?;
            let devices = self.member_devices(channel, &roster)?;
            ops.extend(self.packages(channel, &[(generation, &key)], &devices, first)?);
        }
        let after = first.saturating_add(ops.len() as u32);
        ops.extend(self.owed_shares_under(channel, &roster, after)?);
        Ok(ops)
    }

    /// Whether the channel's roster names removed users or revoked devices
    /// (then a roster change may owe a rotation).
    pub(crate) fn roster_has_outsiders(&self, channel: &ChannelId) -> bool {
        self.loaded(channel, META_EPOCH)
            .is_some_and(|le| !le.view.roster.removed.is_empty() || !le.view.roster.revoked.is_empty())
    }

    /// Whether the newest key generation may be held by someone who must not
    /// hold it: a removed user (or one who left), or a revoked device. For
    /// generation 0 (the channel key), any removal or revocation; for a later
    /// one, a package of it sealed to such a device (a rotation concurrent
    /// with the removal, made by a member who had not seen it yet), or
    /// written by one (the removed member's own, taken before its removal).
    fn rotation_owed(&mut self, channel: &ChannelId, roster: &Roster) -> Result<bool> {
        if roster.removed.is_empty() && roster.revoked.is_empty() {
            return Ok(false);
        }
        let ch = self.channel(channel)?;
        let generation = ch.keys.current_generation();
        if generation == 0 {
            return Ok(true);
        }
        let revoked = ch.revocations(roster);
        let outsider =
            |d: &DeviceId| revoked.contains_key(d) || ch.devices.get(d).is_some_and(|u| roster.removed.contains_key(u));
        let packages = self
            .loaded(channel, META_EPOCH)
            .map(|le| le.doc.key_packages(&ch.devices))
            .unwrap_or_default();
        // Sealed to an outsider, or written by one: a removed member's own
        // package (written before its removal reached this store, and
        // taken) may leave out its own device, but its writer knows the key.
        Ok(packages.iter().any(|(writer, device, _, p)| {
            let of_it = p.keys.iter().filter(|k| k.generation == generation);
            let by_outsider = outsider(device) || roster.removed.contains_key(writer);
            of_it.clone().any(|k| k.recipients.iter().any(|(d, _)| outsider(d))) || (by_outsider && of_it.count() > 0)
        }))
    }

    /// [`Engine::owed_shares`] for the members of `roster`.
    fn owed_shares_under(&mut self, channel: &ChannelId, roster: &Roster, after: u32) -> Result<Vec<Op>> {
        if self.channel(channel)?.keys.current_generation() == 0 || roster.role(&self.identity.user()).is_none() {
            return Ok(Vec::new());
        }
        self.ensure_epoch(*channel, META_EPOCH, false)?;
        let devices = self.member_devices(channel, roster)?;
        let ch = self.channel(channel)?;
        let packages = self
            .loaded(channel, META_EPOCH)
            .map(|le| le.doc.key_packages(&ch.devices))
            .unwrap_or_default();
        let held = ch.keys.generations();
        let mut n = after;
        let mut ops = Vec::new();
        for (generation, key) in &held {
            let lacking: Vec<(DeviceId, [u8; 32])> = devices
                .iter()
                .filter(|(d, _)| !packages.iter().any(|(_, _, _, p)| p.reaches(*generation, d)))
                .copied()
                .collect();
            if !lacking.is_empty() {
                let more = self.packages(channel, &[(*generation, key)], &lacking, n)?;
                n = n.saturating_add(more.len() as u32);
                ops.extend(more);
            }
        }
        Ok(ops)
    }

    /// The receipt ops `marks` call for (those not held already). Owed receipts
    /// that held ones cover are settled here; the rest are settled when their
    /// op is staged (see [`Engine::settle_owed`]), so nothing is settled for a
    /// write that fails before it reaches the journal.
    fn receipt_entries(&mut self, channel: ChannelId, marks: &[(DeviceId, MessageId)]) -> Result<Vec<JournalEntry>> {
        self.ensure_epoch(channel, META_EPOCH, true)?;
        let user = self.identity.user();
        let ids: Vec<DeviceId> = std::iter::once(self.identity.device())
            .chain(self.identity.former().iter().copied())
            .collect();
        let mut held: BTreeMap<DeviceId, MessageId> = BTreeMap::new();
        if let Some(le) = self.loaded(&channel, META_EPOCH) {
            for id in &ids {
                for (a, m) in le.view.delivered.get(&(user, *id)).into_iter().flatten() {
                    let e = held.entry(*a).or_insert(*m);
                    *e = (*e).max(*m);
                }
            }
        }
        let mut entries = Vec::new();
        for (author, up_to) in marks {
            if !self.identity.is_this_device(author) && held.get(author).is_none_or(|h| h < up_to) {
                let op = Op::Delivered {
                    author: *author,
                    up_to: *up_to,
                };
                op.validate()?;
                entries.push(JournalEntry::Op { channel, op });
            }
        }
        for (author, up_to) in held {
            self.settle_owed(channel, author, up_to)?;
        }
        Ok(entries)
    }

    /// This device's receipt now says `author`'s messages up to `up_to` are
    /// held: that much is no longer owed. The row change goes with the current
    /// group's batch, so with the receipt entry itself when there is one (a
    /// crash before it owes the receipt again, and writing it again finds it
    /// held). Journal replay settles the same way.
    fn settle_owed(&mut self, channel: ChannelId, author: DeviceId, up_to: MessageId) -> Result<()> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        if ch.owed.get(&author).is_some_and(|owed| *owed <= up_to) {
            ch.owed.remove(&author);
            put_owed(&mut self.batch, &self.records, &ch.keys.wire(), &ch.owed)?;
            self.rows_pending = true;
        }
        Ok(())
    }

    /// Stage journal entries into the documents and views. Used for new writes
    /// and for journal replay alike.
    pub(crate) fn apply(&mut self, entries: &[JournalEntry]) -> Result<()> {
        for e in entries {
            match e {
                JournalEntry::Channel { id, key } => self.add_channel(id, key, None)?,
                JournalEntry::Joined { id, key, name } => self.add_channel(id, key, Some(name))?,
                JournalEntry::Op { channel, op } => self.stage(*channel, op)?,
            }
            if let JournalEntry::Channel { id, .. } | JournalEntry::Joined { id, .. } = e
                && self.chat.listening()
            {
                self.chat_staged.push(channel_added(entries, id));
            }
        }
        Ok(())
    }

    /// A channel created or joined here: its keys (and invited name) go to
    /// sled and the log with the current group.
    fn add_channel(&mut self, id: &ChannelId, key: &[u8; 32], invited: Option<&String>) -> Result<()> {
        if self.channels.contains_key(id) {
            return Ok(());
        }
        let keys = ChannelKeys::new(*id, SecretKey::from_bytes(*key));
        let k = channel_key(&keys.wire());
        let record = ChannelRecord::encode_named(&keys, invited.map(String::as_str));
        self.batch.insert(&k[..], seal_record(&self.records, &k, &record)?);
        let sealed = self.seal_log(kind::CHANNEL, &record)?;
        self.log_record(kind::CHANNEL, &sealed);
        self.load_channel(keys)?;
        if let Some(ch) = self.channels.get_mut(id) {
            ch.invited_name = invited.cloned();
        }
        Ok(())
    }

    pub(crate) fn stage(&mut self, channel: ChannelId, op: &Op) -> Result<()> {
        if let Op::Keys { package, .. } = op {
            return self.stage_keys(channel, op, package);
        }
        let epoch = op.epoch();
        if let Op::Post { id, .. } = op {
            self.hlc.observe(id.timestamp());
        }
        // An op into an epoch that died since it was taken (replayed from
        // the journal): every message there expired, so it has nothing
        // left to act on.
        if self.channel(&channel)?.dead.contains(&epoch) {
            return Ok(());
        }
        self.ensure_epoch(channel, epoch, true)?;
        let (user, device) = (self.identity.user(), self.identity.device());
        let ch = self
            .channels
            .get_mut(&channel)
            .expect("ensure_epoch checked the channel");
        let le = self.epochs.get_mut(&(channel, epoch)).expect("ensure_epoch loaded it");
        le.doc.stage(&user, &device, op)?;
        if !self.chat_muted
            && self.chat.listening()
            && let Some(e) = crate::events::of_local_op(channel, user, op)
        {
            self.chat_staged.push(e);
        }
        let size = OP_ALLOWANCE
            + match op {
                Op::Post { text, .. } | Op::Edit { text, .. } => text.len() + SEGMENT_ALLOWANCE,
                _ => 0,
            };
        // A delete drops the message's texts; so does an edit of a message
        // already deleted (replayed from the journal after the delete came).
        if let Op::Delete { msg } | Op::Edit { msg, .. } = op
            && (matches!(op, Op::Delete { .. }) || le.view.is_deleted(msg))
        {
            self.prune_queue.push((channel, epoch, *msg));
        }
        match op {
            Op::CreateChannel { .. }
            | Op::Rename { .. }
            | Op::SetName { .. }
            | Op::Delivered { .. }
            | Op::Member { .. }
            | Op::SetRetention { .. } => le.view = le.doc.view(&ch.devices),
            _ => le.view.apply_local(&user, op),
        }
        match op {
            Op::Post { id, .. } => ch.staged_newest = ch.staged_newest.max(Some(*id)),
            Op::ReadUpTo { msg } => ch.staged_read = ch.staged_read.max(Some(*msg)),
            _ => {}
        }
        if let Op::Post { .. } = op {
            ch.count_post(epoch);
        }
        let staged = self.touched.entry((channel, epoch)).or_default();
        *staged += size;
        if *staged >= ENTRY_BUDGET {
            self.commit_epoch(channel, epoch)?;
            self.touched.insert((channel, epoch), 0);
        }
        if let Op::Delivered { author, up_to } = op {
            self.settle_owed(channel, *author, *up_to)?;
        }
        // A moderator's delete of someone else's message: the document gets
        // the moderators, and the view takes it from the document
        // (apply_local knows only the author's).
        if let Op::Delete { msg } = op {
            self.ensure_moderators(channel, epoch)?;
            let ch = self.channels.get(&channel).expect("ensure_epoch checked the channel");
            if let Some(le) = self.epochs.get_mut(&(channel, epoch))
                && !le.view.is_deleted(msg)
                && let Some(m) = le.doc.message(msg, &ch.devices)
            {
                le.view.insert(m);
            }
        }
        if let (Op::Member { .. }, Some(ch)) = (op, self.channels.get_mut(&channel)) {
            ch.hidden = None;
            let _ = self.events.send(crate::StoreEvent::Roster { channel });
            self.refresh_moderators(channel)?;
        }
        Ok(())
    }

    /// A key package goes alone into an entry sealed under generation 0
    /// (what is staged before it is closed first, under the newest
    /// generation), then this device takes the keys sealed to it.
    fn stage_keys(&mut self, channel: ChannelId, op: &Op, package: &hearth_core::KeyPackage) -> Result<()> {
        self.ensure_epoch(channel, META_EPOCH, true)?;
        if self.touched.contains_key(&(channel, META_EPOCH)) {
            self.commit_epoch(channel, META_EPOCH)?;
            self.touched.insert((channel, META_EPOCH), 0);
        }
        let (user, device) = (self.identity.user(), self.identity.device());
        {
            let ch = self
                .channels
                .get_mut(&channel)
                .expect("ensure_epoch checked the channel");
            let le = self
                .epochs
                .get_mut(&(channel, META_EPOCH))
                .expect("ensure_epoch loaded it");
            le.doc.stage(&user, &device, op)?;
            le.view = le.doc.view(&ch.devices);
        }
        self.commit_epoch_under(channel, META_EPOCH, Some(0))?;
        self.touched.insert((channel, META_EPOCH), 0);
        if self.take_keys(channel, (&user, &device), std::slice::from_ref(package)) {
            self.save_channel_keys(channel)?;
        }
        Ok(())
    }

    /// Add the keys `packages` (written by `author`) seal to this device;
    /// whether any was new. A removed writer's packages are not taken.
    pub(crate) fn take_keys(
        &mut self,
        channel: ChannelId,
        author: (&hearth_core::UserId, &DeviceId),
        packages: &[hearth_core::KeyPackage],
    ) -> bool {
        let Some(mine) = self.identity.device_keys() else {
            return false;
        };
        if let Some((le, ch)) = self.loaded(&channel, META_EPOCH).zip(self.channels.get(&channel))
            && (le.view.roster.role(author.0).is_none() || ch.revocations(&le.view.roster).contains_key(author.1))
        {
            return false;
        }
        // A package written before this device moved to its keyed id names
        // its former id; the keys are the same.
        let ids: Vec<DeviceId> = std::iter::once(self.identity.device())
            .chain(self.identity.former().iter().copied())
            .collect();
        let Some(ch) = self.channels.get_mut(&channel) else {
            return false;
        };
        let wire = ch.keys.wire();
        let mut added = false;
        for p in packages {
            for device in &ids {
                for (generation, key) in p.open_for(&wire, device, mine) {
                    added |= ch.keys.add_generation(generation, key);
                }
            }
        }
        added
    }

    /// The channel's keys (with every generation held) to sled and the log,
    /// with the current group.
    pub(crate) fn save_channel_keys(&mut self, channel: ChannelId) -> Result<()> {
        let (k, record) = self.channel_record(channel)?;
        self.batch.insert(&k[..], seal_record(&self.records, &k, &record)?);
        let sealed = self.seal_log(kind::CHANNEL, &record)?;
        self.log_record(kind::CHANNEL, &sealed);
        Ok(())
    }

    /// A channel's sled key and record (plain).
    pub(crate) fn channel_record(&self, channel: ChannelId) -> Result<(Vec<u8>, Vec<u8>)> {
        let ch = self.channel(&channel)?;
        let k = channel_key(&ch.keys.wire());
        let record = ChannelRecord::encode_named(&ch.keys, ch.invited_name.as_deref());
        Ok((k.to_vec(), record))
    }

    /// Close an epoch's staged ops into a feed entry, queued in the batch.
    fn commit_epoch(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        self.commit_epoch_under(channel, epoch, None)
    }

    /// [`Engine::commit_epoch`], sealed under `generation` (default: the
    /// newest held). Key packages go under generation 0, which every member
    /// holds, so that a device that missed rotations opens them.
    fn commit_epoch_under(&mut self, channel: ChannelId, epoch: Epoch, generation: Option<u32>) -> Result<()> {
        // The channel's front page goes in the batch that stores the entry.
        let wire = self.channel(&channel)?.keys.wire();
        if let Some(k) = self.unfront_key(&wire) {
            self.batch.remove(&k[..]);
        }
        let le = self
            .epochs
            .get_mut(&(channel, epoch))
            .expect("touched epochs stay loaded");
        // The change's own time stays 0: every message id carries its time
        // already, nothing reads the change's, and a wall clock in ms costs
        // six bytes of every entry (five more than 0) on disk and the wire.
        let Some(change) = le.doc.commit(0) else {
            return Ok(());
        };
        let texts = le.doc.take_texts();
        let seq = self.append_own_entry(channel, epoch, EntryBody { epoch, change }, &texts, generation)?;
        let device = self.identity.device();
        let le = self
            .epochs
            .get_mut(&(channel, epoch))
            .expect("touched epochs stay loaded");
        // (A device without keys yet stages its texts inline: none here.)
        for c in texts.iter().filter(|c| !c.slot.is_some_and(|s| s.gone)) {
            le.segments.entry(c.id()).or_default().push((device, seq));
        }
        let ch = self.channels.get_mut(&channel).expect("touched channels exist");
        ch.summaries
            .get_mut(&epoch)
            .expect("counted by append_own_entry")
            .refresh(&le.view, &self.identity.user());
        self.put_summary(channel, epoch)
    }

    /// Seal `body` and `texts` into this device's next entry of `channel`
    /// and put it in the current group: its record in the log's buffer
    /// (unless the log is being replayed), its entry, head and epoch-log
    /// rows in the batch, and `epoch`'s summary counts one more entry (its
    /// other counts and its row are the caller's: [`Engine::put_summary`]).
    /// Format 6, sealed under `generation` (default: the newest held),
    /// signed by this device's key; the feed's first such entry carries the
    /// chain (kept in `T_CHAINS`). A device without keys yet (an older
    /// store replaying its journal before it gets them) writes format 1.
    /// Returns the entry's seq.
    pub(crate) fn append_own_entry(
        &mut self,
        channel: ChannelId,
        epoch: Epoch,
        body: EntryBody,
        texts: &[hearth_core::Content],
        generation: Option<u32>,
    ) -> Result<u64> {
        self.appended.insert(channel);
        let ch = self.channels.get_mut(&channel).expect("checked by the caller");
        let wire = ch.keys.wire();
        let device = self.identity.device();
        let (seq, prev) = ch
            .heads
            .get(&device)
            .map(|h| (h.seq + 1, h.hash))
            .unwrap_or((1, [0; 32]));
        let (bytes, hash) = match (self.identity.device_keys(), self.identity.device_chain()) {
            (Some(keys), Some(own)) => {
                let chain = if ch.chains.contains_key(&device) {
                    Vec::new()
                } else {
                    own.to_vec()
                };
                let generation = generation.unwrap_or_else(|| ch.keys.current_generation());
                let nonces = self.nonces.for_entry(wire, seq)?;
                let sealed = Envelope::seal_v6(
                    &ch.keys,
                    &self.identity,
                    seq,
                    prev,
                    &body,
                    generation,
                    chain.clone(),
                    texts,
                    nonces,
                )?;
                if !chain.is_empty() {
                    let k = prefixed(T_CHAINS, &wire, &device);
                    self.batch
                        .insert(&k[..], seal_record(&self.records, &k, &encode_chain(&chain))?);
                    ch.chains.insert(device, (keys.public().signing, chain));
                }
                sealed
            }
            // Its texts are inline (`EpochDoc::set_inline_texts`).
            _ => Envelope::seal(&ch.keys, &self.identity, seq, prev, &body)?,
        };
        if !self.replaying {
            log::encode_record(&mut self.log_buf, kind::ENTRY, &bytes);
        }
        self.batch.insert(&feed_key(&wire, &device, seq)[..], bytes);
        let head = FeedHead {
            user: self.identity.user(),
            seq,
            hash,
        };
        self.batch.insert(
            &head_key(&wire, &device)[..],
            postcard::to_stdvec(&head).expect("head encodes"),
        );
        let old = ch.heads.insert(device, head);
        let s = ch.summaries.entry(epoch).or_default();
        s.entries += 1;
        self.batch
            .insert(&elog_key(&wire, epoch, s.entries)[..], &elog_value(&device, seq)[..]);
        self.root_head_moved(&wire, &device, old.as_ref(), &head);
        Ok(seq)
    }

    /// Put `epoch`'s summary row in the current batch (and drop the
    /// channel's copy of its summaries, which no longer holds).
    pub(crate) fn put_summary(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let ch = self.channels.get(&channel).expect("checked by the caller");
        let wire = ch.keys.wire();
        let s = ch.summaries.get(&epoch).expect("the epoch has a summary");
        let (k, v) = summary_row(&self.records, &wire, epoch, s)?;
        self.batch.insert(&k[..], v);
        self.summary_rows.remove_in(&wire, &mut self.batch);
        Ok(())
    }

    /// Close every touched epoch and write the group to sled as one batch,
    /// recording `journal_seq` as applied.
    pub(crate) fn finish_batch(&mut self, journal_seq: u64) -> Result<()> {
        let started = std::time::Instant::now();
        // Deleted texts first: one staged in this group goes into no segment.
        self.run_prunes()?;
        let touched: Vec<(ChannelId, Epoch)> = self.touched.keys().copied().collect();
        let epochs = touched.len();
        for (c, e) in touched {
            self.commit_epoch(c, e)?;
        }
        self.touched.clear();
        self.watermark = self.watermark.max(journal_seq);
        self.batch
            .insert(META_HLC, hlc_value(&self.records, self.hlc.last().0)?);
        let mut batch = std::mem::take(&mut self.batch);
        self.put_root(&mut batch)?;
        crash_point!("group.before_log");
        self.write_log_batch(&mut batch)?;
        crash_point!("group.log_written");
        self.tree.apply_batch(batch)?;
        crash_point!("group.applied");
        self.rows_pending = false;
        self.dirty = true;
        self.own_unsynced |= !self.appended.is_empty();
        self.apply_prune_rows()?;
        tracing::debug!(
            epochs,
            journal_seq,
            micros = started.elapsed().as_micros() as u64,
            "group committed"
        );
        for channel in std::mem::take(&mut self.appended) {
            let wire = self.channel(&channel)?.keys.wire();
            let _ = self.events.send(crate::StoreEvent::Appended {
                channel,
                wire,
                local: true,
            });
        }
        self.chat.send(std::mem::take(&mut self.chat_staged));
        Ok(())
    }
}

/// The event of a channel added by a group's `entries`: created here (with
/// its name) when they create it, else joined (with the invite's name).
fn channel_added(entries: &[JournalEntry], id: &ChannelId) -> crate::ChatEvent {
    let created = entries.iter().find_map(|e| match e {
        JournalEntry::Op {
            channel,
            op: Op::CreateChannel { name },
        } if channel == id => Some(name.clone()),
        _ => None,
    });
    let invited = entries.iter().find_map(|e| match e {
        JournalEntry::Joined { id: j, name, .. } if j == id => Some(name.clone()),
        _ => None,
    });
    crate::ChatEvent::ChannelAdded {
        channel: *id,
        local: created.is_some(),
        name: created.or(invited),
    }
}

/// What a roster change is, for an error message.
fn describe(action: &MemberAction) -> String {
    match action {
        MemberAction::Create => "claim the channel's roster".into(),
        MemberAction::Add { user, role } => format!("add {} as {role}", &user.to_hex()[..16]),
        MemberAction::Remove { user, .. } | MemberAction::RemoveSigned { user, .. } => {
            format!("remove {}", &user.to_hex()[..16])
        }
        MemberAction::SetRole { user, role } => format!("make {} {role}", &user.to_hex()[..16]),
        MemberAction::RevokeDevice { device, .. } | MemberAction::RevokeDeviceSigned { device, .. } => {
            format!("revoke device {device}")
        }
        MemberAction::Invite { .. } => "open an invite".into(),
        MemberAction::RevokeInvite { id } => format!("revoke invite {}", crate::invite::hex(id)),
        MemberAction::Join { user, .. } => format!("let {} in through an invite", &user.to_hex()[..16]),
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
        let start = std::time::Instant::now();
        loop {
            match self.0.try_recv() {
                Ok(read) => return Some(read),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
                Err(std::sync::mpsc::TryRecvError::Empty) if start.elapsed() < AHEAD_SPIN => std::thread::yield_now(),
                Err(std::sync::mpsc::TryRecvError::Empty) => return self.0.recv().ok(),
            }
        }
    }
}

/// How long [`ChannelsAhead::wait`] waits awake.
const AHEAD_SPIN: std::time::Duration = std::time::Duration::from_millis(3);
