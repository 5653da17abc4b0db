//! Store configuration.

use std::time::Duration;

use hearth_core::KdfParams;

/// How a store behaves. Every field has a default suited to a chat app.
///
/// | field | default |
/// |---|---|
/// | `kdf` | Argon2id m = 64 MiB, t = 3, p = 4 (used when creating or re-keying) |
/// | `epoch_messages` | 1024 messages per epoch document before a new epoch opens |
/// | `cached_epochs` | 48 epoch documents kept in memory |
/// | `max_batch_ops` | 1024 operations per group commit |
/// | `checkpoint_bytes` | 4 MiB of journal before sled is flushed and the journal emptied |
/// | `checkpoint_interval` | 2 s: a store checkpoints this long after a write, at its first quiet moment (2 ms without a command), and at most twice this long after it |
/// | `snapshot_entries` | 64 feed entries past an epoch's snapshot before it is re-snapshotted on eviction or close |
/// | `command_queue` | 4096 commands queued to the store task before senders wait |
/// | `receipt_delay` | 250 ms: delivery receipts of received messages gather this long into one entry per channel |
/// | `max_clock_skew` | 10 min: a received post stamped further ahead of this device's clock waits (is refused until the clock gets there) |
/// | `place_store_thread` | on: the store thread keeps off the CPU where it slows the writers' fsyncs (it measures) |
/// | `lazy_epochs` | on: received posts, edits and reactions for an epoch nobody has read are verified, stored and counted, and applied to its document when it is first read |
/// | `awake_flushes` | on: while events are listened to, a flush after a pause has an idle-priority thread on each core keep the cores from halting |
#[derive(Clone, Debug)]
pub struct Config {
    /// Argon2id parameters for new headers.
    pub kdf: KdfParams,
    /// Messages in an epoch before new top-level posts open the next epoch.
    pub epoch_messages: usize,
    /// Epoch documents kept in memory (least recently used are dropped).
    pub cached_epochs: usize,
    /// Most operations in one group commit.
    pub max_batch_ops: usize,
    /// Journal size that triggers a checkpoint.
    pub checkpoint_bytes: u64,
    /// Time between a write and the checkpoint that covers it: the store
    /// checkpoints at its first quiet moment after it (2 ms without a
    /// command), and at the latest after twice this time.
    pub checkpoint_interval: Duration,
    /// Entries past a snapshot that make an epoch worth re-snapshotting.
    pub snapshot_entries: u64,
    /// Capacity of the command queue.
    pub command_queue: usize,
    /// How long delivery receipts gather before they are written (one entry
    /// per channel and period instead of one per received batch). Receipts
    /// owed are recorded with the messages they are for, so a crash in this
    /// window only delays them to the next open.
    pub receipt_delay: Duration,
    /// How far ahead of this device's clock a received post may be stamped.
    /// One stamped later is refused for now (its feed waits; the sender
    /// offers it again at the next sync, and it is taken once this clock is
    /// close enough): refused rather than clamped, since its id is signed and
    /// cannot change, and waiting costs only that writer. It keeps a peer from
    /// dragging every receiver's clock, and so every later id, forward.
    pub max_clock_skew: Duration,
    /// Automatic compaction ([`crate::Store::compact`]) once texts were
    /// dropped from stored entries (a delete, an expiry): it starts this long
    /// after the first drop since the last compaction, or at once when the
    /// bytes dropped pass [`Config::compact_dead_bytes`]. `None`: only when
    /// asked.
    pub compact_after: Option<Duration>,
    /// Bytes of dropped texts that start an automatic compaction at once.
    pub compact_dead_bytes: u64,
    /// Deferred epochs: entries that make posts, edits and reactions (no
    /// delete, read marker or metadata), received for an epoch
    /// this store has not loaded since it first heard of it, are verified,
    /// stored and counted in the epoch's summary, but applied to the epoch's
    /// automerge document only when something first reads it (a catch-up
    /// then applies only the epochs a reader opens). Off: every received
    /// entry is applied at once. ARCHITECTURE.md, "Deferred epochs".
    pub lazy_epochs: bool,
    /// The store thread measures the writers' fsyncs with each CPU in turn
    /// left out of its own affinity mask, and keeps out of the one where it
    /// slowed them (the CPU that takes the disk's interrupts, where a
    /// writer's fsync returns soonest), if one clearly did; it measures
    /// again every few minutes. Only the store thread's own mask is ever
    /// changed. Off: it runs wherever the scheduler puts it.
    /// ARCHITECTURE.md, "The store thread keeps off the disk's CPU".
    pub place_store_thread: bool,
    /// While anything listens to the store's events (a node, whose peers
    /// wait for this device's entries; an app's screen) and a journal
    /// record or the feed log is being made durable after a pause, a
    /// thread in the idle scheduling class spins on each core the process
    /// may use, so that no core halts: on a virtual machine a halted core
    /// wakes only when the host runs it again, which here made the disk's
    /// completion and the wake-up of its waiter cost more than the flush.
    /// The threads give way to any other at once and park when the flush
    /// ends (at the latest 4 ms after it began). Off: nothing spins, for a
    /// device where the power those microseconds cost matters more than
    /// the latency.
    /// ARCHITECTURE.md, "Cores kept awake through a flush".
    pub awake_flushes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kdf: KdfParams::default(),
            epoch_messages: 1024,
            cached_epochs: 48,
            max_batch_ops: 1024,
            checkpoint_bytes: 4 << 20,
            checkpoint_interval: Duration::from_secs(2),
            snapshot_entries: 64,
            command_queue: 4096,
            receipt_delay: Duration::from_millis(250),
            max_clock_skew: Duration::from_secs(600),
            compact_after: Some(Duration::from_secs(600)),
            compact_dead_bytes: 16 << 20,
            lazy_epochs: true,
            place_store_thread: true,
            awake_flushes: true,
        }
    }
}

impl Config {
    /// The configuration with every field in a workable range (fields are public,
    /// so a caller can set any value): queues and batches of at least one, epochs
    /// of at least one message, a checkpoint interval of at least 10 ms.
    pub fn clamped(mut self) -> Self {
        self.epoch_messages = self.epoch_messages.max(1);
        self.cached_epochs = self.cached_epochs.max(2);
        self.max_batch_ops = self.max_batch_ops.max(1);
        self.command_queue = self.command_queue.max(1);
        self.checkpoint_interval = self.checkpoint_interval.max(Duration::from_millis(10));
        self
    }

    /// Set the Argon2id parameters.
    pub fn with_kdf(mut self, kdf: KdfParams) -> Self {
        self.kdf = kdf;
        self
    }

    /// Set the epoch size.
    pub fn with_epoch_messages(mut self, n: usize) -> Self {
        self.epoch_messages = n.max(1);
        self
    }

    /// Set how many epoch documents stay in memory.
    pub fn with_cached_epochs(mut self, n: usize) -> Self {
        self.cached_epochs = n.max(2);
        self
    }

    /// Set the checkpoint interval.
    pub fn with_checkpoint_interval(mut self, d: Duration) -> Self {
        self.checkpoint_interval = d;
        self
    }

    /// Set how long delivery receipts gather before they are written.
    pub fn with_receipt_delay(mut self, d: Duration) -> Self {
        self.receipt_delay = d;
        self
    }

    /// Set how far ahead of this clock a received post may be stamped.
    pub fn with_max_clock_skew(mut self, d: Duration) -> Self {
        self.max_clock_skew = d;
        self
    }

    /// Turn the store thread's placement ([`Config::place_store_thread`])
    /// on or off.
    pub fn with_store_thread_placement(mut self, on: bool) -> Self {
        self.place_store_thread = on;
        self
    }

    /// Turn the spinning through flushes ([`Config::awake_flushes`]) on or
    /// off.
    pub fn with_awake_flushes(mut self, on: bool) -> Self {
        self.awake_flushes = on;
        self
    }

    /// Turn deferred epochs ([`Config::lazy_epochs`]) on or off.
    pub fn with_lazy_epochs(mut self, on: bool) -> Self {
        self.lazy_epochs = on;
        self
    }
}
