//! Named crash points at every durable step of a write, a group commit, a
//! checkpoint, an ingest and a compaction, for restart-recovery tests.
//!
//! Built only with the cargo feature `failpoints` (the `fail` crate's
//! failpoints); without it [`crash_point!`] is nothing and costs nothing. A
//! test arms a point with [`crash_at`] in a child process, which then
//! aborts (as a `kill -9` would stop it: no destructor, no flush) the
//! `n`-th time the store passes there; the test reopens the store and
//! checks that nothing acknowledged is lost. `tests/crash_points.rs` does
//! it at every point, and `examples/restart_recovery.rs` shows how.

/// Every crash point, in the order a store passes them.
pub const CRASH_POINTS: &[&str] = &[
    // A write: its journal record written, then fdatasync'd (acknowledged after).
    "journal.written",
    "journal.synced",
    // A group commit: the feed log written, then sled's batch applied.
    "group.before_log",
    "group.log_written",
    "group.applied",
    // An ingest of a peer's entries: the same two steps.
    "ingest.before_log",
    "ingest.log_written",
    "ingest.applied",
    // A checkpoint: the log fsync'd, sled flushed, sled's files fsync'd
    // (the journal starts over after).
    "checkpoint.log_synced",
    "checkpoint.sled_flushed",
    "checkpoint.synced",
    // A compaction: its pause (the checkpoint taken, the journal started
    // over), the copy prepared, committed, the swap's steps, the store on
    // the fresh sled, then the journal's old records zeroed.
    "compact.paused",
    "compact.prepared",
    "compact.committed",
    "compact.old_log_moved",
    "compact.new_log_moved",
    "compact.swapped",
    "compact.purged",
];

/// Stop the process here when the point is armed (feature `failpoints`).
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Arm `point` (one of [`CRASH_POINTS`]): the process aborts the
/// `(skip + 1)`-th time the store passes it. Arm one point a process, in a
/// child process of the test.
#[cfg(feature = "failpoints")]
pub fn crash_at(point: &str, skip: u64) -> Result<(), String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    if !CRASH_POINTS.contains(&point) {
        return Err(format!("no crash point {point:?}"));
    }
    let passed = AtomicU64::new(0);
    fail::cfg_callback(point, move || {
        if passed.fetch_add(1, Ordering::SeqCst) == skip {
            std::process::abort();
        }
    })
}

/// The feed log's syncs on its own thread wait while a [`LogSyncHold`] is
/// held (feature `failpoints`): a test holds them to see what waits for
/// them, such as a listened write's acknowledgement.
#[cfg(feature = "failpoints")]
pub fn hold_log_syncs() -> LogSyncHold {
    use std::sync::{Condvar, Mutex};
    static HELD: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
    *HELD.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
    // `cfg_callback` refuses only an empty name.
    let _ = fail::cfg_callback("log.sync_behind", || {
        let mut held = HELD.0.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = HELD.1.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    });
    LogSyncHold {
        release: Box::new(|| {
            *HELD.0.lock().unwrap_or_else(|p| p.into_inner()) = false;
            HELD.1.notify_all();
        }),
    }
}

/// Holds the feed log's syncs behind until dropped ([`hold_log_syncs`]).
#[cfg(feature = "failpoints")]
pub struct LogSyncHold {
    release: Box<dyn Fn() + Send>,
}

#[cfg(feature = "failpoints")]
impl Drop for LogSyncHold {
    fn drop(&mut self) {
        (self.release)();
    }
}

#[cfg(feature = "failpoints")]
impl std::fmt::Debug for LogSyncHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSyncHold")
    }
}

/// The feed log's syncs on its own thread fail while the returned guard is
/// held (feature `failpoints`): a test's way to see what a failed
/// `fdatasync` leaves behind.
#[cfg(feature = "failpoints")]
pub fn fail_log_syncs() -> FailLogSyncs {
    // `cfg` refuses only a bad action; "return" is a good one.
    let _ = fail::cfg("log.sync_behind_fails", "return");
    FailLogSyncs(())
}

/// The feed log's syncs fail until dropped ([`fail_log_syncs`]).
#[cfg(feature = "failpoints")]
#[derive(Debug)]
pub struct FailLogSyncs(());

#[cfg(feature = "failpoints")]
impl Drop for FailLogSyncs {
    fn drop(&mut self) {
        fail::remove("log.sync_behind_fails");
    }
}

/// Make the store panic at `point` (one of [`CRASH_POINTS`]) until the
/// returned guard is dropped (feature `failpoints`): a test's way to see
/// what a bug that panics on the store's thread leaves behind.
#[cfg(feature = "failpoints")]
pub fn panic_at(point: &str) -> Result<PanicAt, String> {
    if !CRASH_POINTS.contains(&point) {
        return Err(format!("no crash point {point:?}"));
    }
    fail::cfg(point, "panic")?;
    Ok(PanicAt(point.to_string()))
}

/// Panics armed at a point until dropped ([`panic_at`]).
#[cfg(feature = "failpoints")]
#[derive(Debug)]
pub struct PanicAt(String);

#[cfg(feature = "failpoints")]
impl Drop for PanicAt {
    fn drop(&mut self) {
        fail::remove(&self.0);
    }
}
