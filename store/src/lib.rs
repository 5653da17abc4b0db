//! # hearth-store
//!
//! Hearth's local engine: an encrypted, crash-safe commit log of automerge
//! changes in sled, with group commit, epoch snapshots, an in-memory channel
//! cache and the queries a chat app needs (pages, threads, reactions, unread
//! counts), plus `verify`, `stats` and passphrase changes.
//!
//! It is not the sync layer (that is `hearth-sync`) and not the embedding facade
//! (`hearth`, which joins both). Nothing here writes plaintext to disk: every
//! record is sealed (XChaCha20-Poly1305) under keys derived from a master key that
//! the passphrase unwraps (Argon2id).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use hearth_store::{Config, Store};
//! use hearth_core::{KdfParams, Passphrase};
//!
//! let dir = tempfile::tempdir()?;
//! let pass = Passphrase::new("correct horse");
//! // KdfParams::INSECURE_FAST keeps the example quick; keep the default in real use.
//! let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
//! let store = Store::create(dir.path(), &pass, "alice", config.clone()).await?;
//! let general = store.create_channel("general").await?;
//! let hello = store.post(general, "hello").await?; // returns once durable
//! store.reply(hello, "hi back").await?;
//! store.react(hello, "👋").await?;
//! store.close().await?;
//!
//! let store = Store::open(dir.path(), &pass, config).await?;
//! let page = store.page(general, None, 50).await?;
//! assert_eq!(page[0].text.as_deref(), Some("hello"));
//! assert_eq!(page[0].reply_count, 1);
//! assert!(store.verify().await?.is_clean());
//! # store.close().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

#[macro_use]
mod crash;
mod actor;
mod admit;
mod awake;
mod backup;
mod bulk;
mod channel;
mod commit;
mod compact;
mod config;
mod cuts;
mod durable;
mod early;
mod engine;
mod epochs;
mod error;
mod events;
mod front;
mod group_commit;
mod ingest;
mod invite;
mod journal;
mod layout;
mod log;
mod nonces;
mod open;
mod opener;
mod peers;
mod persist;
mod placement;
mod prepare;
mod prune;
mod query;
mod recover;
mod replica;
mod retention;
mod root;
mod rotate;
mod store;
mod summaries;
mod verify;

pub use admit::{Admission, DeviceChains, Feeds, Head, Refusal, Rejection, Verdict, chain_key};
pub use backup::{
    BACKUP_MAGIC, BACKUP_VERSION, BackupInfo, BackupReport, BackupSummary, MAX_BACKUP_CHUNK, RestoreReport,
    check_backup, check_backup_bytes,
};
pub use bulk::{IMPORT_CHUNK, ImportPost};
pub use compact::{
    CompactDue, CompactProgress, CompactReport, CompactStop, DirCompaction, dir_bytes, recover_dir_compaction,
    swap_compacted,
};
pub use config::Config;
pub use crash::CRASH_POINTS;
#[cfg(feature = "failpoints")]
pub use crash::{FailLogSyncs, LogSyncHold, PanicAt, crash_at, fail_log_syncs, hold_log_syncs, panic_at};
pub use durable::{SledFiles, copy_dir_durably, create_private_dir, make_private, sync_dir, write_atomic};
pub use early::{
    EARLY_FILE, EarlyFlag, decode_early_flag, decode_early_mark, early_mark_path, encode_early_flag, encode_early_slot,
};
pub use engine::{Outcome, Write};
pub use error::{Error, Result};
pub use events::ChatEvent;
pub use ingest::IngestReport;
pub use invite::{InviteInfo, JoinRequest, NewInvite};
pub use journal::{
    Decoded as JournalContents, JournalEntry, JournalRecord, decode_records as decode_journal,
    decode_records_as_read as decode_journal_as_read, encode_record as encode_journal_record,
};
pub use layout::{STORE_FORMAT, migration_steps};
pub use log::{
    Commit as LogCommit, DecodedSegment as DecodedLogSegment, LOG_DIR, Log as FeedLog, LogBatch, LogPos, LogRecord,
    ScanEnd, decode_segment as decode_log_segment, encode_record as encode_log_record, kind as log_kind,
    reach as log_reach, scan as scan_log, segment_head as log_segment_head,
};
pub use open::{MigrationPlan, OpenReport, open_sled_config};
pub use query::{ChannelInfo, DeviceInfo, Located, MemberInfo, RosterInfo, Thread};
pub use replica::{EntryBatch, Outgoing, Receipts, StoreEvent};
pub use rotate::{RotateReport, StopAt};
pub use store::{OpenTimings, Pending, Store, Whoami};
pub use verify::{ChannelStats, ForkReport, Problem, Stats, VerifyReport};
