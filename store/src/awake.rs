//! Cores kept awake through a flush ([`crate::Config::awake_flushes`]).
//!
//! On a virtual machine a core with nothing to run halts, and the host
//! stops running it: the disk's completion interrupt, and the wake-up of
//! the thread that waits for the flush, then wait until the host runs that
//! core again. Here that made a flush after a pause take about 1 ms where
//! one right after another takes 40 µs (docs/reach.md, "After the
//! twenty-sixth session"). So while a journal record or the feed log is
//! being made durable after a pause of [`IDLE_GAP`] or more, a thread in
//! the idle scheduling class (`SCHED_IDLE`) spins on each core the process
//! may use, yielding at every turn ([`spin`]). Any other thread that wants
//! the core takes it from the spinner at once; the spinner parks again as
//! soon as no flush is under way, and never spins longer than [`MOST`] at
//! a stretch. Flushes that follow each other closely (a busy writer) get no
//! spinner: there the cores do not halt, and a core kept busy beside a
//! flush slows it (ARCHITECTURE.md, "And no spin while a journal fsync is
//! in flight").
//!
//! The threads are the process's, shared by its stores, and made when the
//! first flush asks for them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Longest a spinner spins without parking, whatever the flush does.
pub(crate) const MOST: Duration = Duration::from_millis(4);
/// A flush this long after the last one ended (or the first) is kept awake.
pub(crate) const IDLE_GAP: Duration = Duration::from_micros(500);

/// When the process's last flush ended, in microseconds from [`epoch`]
/// (0: none yet).
static LAST_END: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Whether a flush starting at `now` (µs) after one that ended at
/// `last_end` (0: none) follows a pause.
fn after_a_pause(last_end: u64, now: u64) -> bool {
    last_end == 0 || now.saturating_sub(last_end) >= u64::try_from(IDLE_GAP.as_micros()).unwrap_or(u64::MAX)
}

/// One spinner thread per core, and the flushes under way.
struct Spinners {
    active: Arc<AtomicUsize>,
    threads: Vec<std::thread::Thread>,
}

static SPINNERS: OnceLock<Option<Spinners>> = OnceLock::new();

/// The process's spinners, made on first use (none where the cores cannot
/// be read, or none could be made).
fn spinners() -> Option<&'static Spinners> {
    SPINNERS
        .get_or_init(|| {
            let cpus = crate::placement::process_cpus()?;
            let active = Arc::new(AtomicUsize::new(0));
            let threads: Vec<std::thread::Thread> = cpus
                .into_iter()
                .filter_map(|cpu| {
                    let active = active.clone();
                    std::thread::Builder::new()
                        .name(format!("hearth-awake-{cpu}"))
                        .spawn(move || spin(cpu, &active))
                        .ok()
                        .map(|h| h.thread().clone())
                })
                .collect();
            (!threads.is_empty()).then_some(Spinners { active, threads })
        })
        .as_ref()
}

/// A spinner's life: on `cpu` alone, in the idle class, spinning while a
/// flush is under way (up to [`MOST`]) and parked otherwise.
///
/// Each turn of the spin is a `sched_yield`. The idle class alone does not
/// keep the spinner off a core that other work wants: the scheduler (EEVDF)
/// preempts it for a thread that *wakes*, but a thread that was itself
/// preempted (the store thread, by the log's sync thread it just woke on
/// its core) waits in the run queue, and the spinner, owed time from its
/// own preemptions, could be picked before it and keep the core for
/// milliseconds. Timed marks in `hearth bench sync` caught the store thread
/// off its core for up to 3.5 ms between asking for the log's sync and
/// telling its event (2 to 10 times in each run's 308 groups, its CPU
/// time unchanged); with the yield, none over 0.3 ms in four runs. A yield
/// with nothing else runnable returns at once, so the core still does not
/// halt.
fn spin(cpu: usize, active: &AtomicUsize) {
    if !crate::placement::set_thread_cpus(&[cpu]) {
        // Not on its core, it would keep the wrong one awake.
        return;
    }
    crate::open::idle_priority();
    loop {
        std::thread::park();
        let since = Instant::now();
        while active.load(Ordering::Relaxed) > 0 && since.elapsed() < MOST {
            std::thread::yield_now();
        }
    }
}

/// A flush under way: while it is alive, the cores are kept from halting
/// if it follows a pause.
pub(crate) struct Awake {
    /// The store asked for it ([`crate::Config::awake_flushes`]).
    on: bool,
    /// The spinners, when they spin for this flush.
    spinning: Option<&'static Spinners>,
}

impl Awake {
    /// A flush starts (if `on`, a store's [`crate::Config::awake_flushes`],
    /// the cores are kept awake until it ends when it follows a pause).
    pub(crate) fn begin(on: bool) -> Awake {
        let spinning = if on && after_a_pause(LAST_END.load(Ordering::Relaxed), now_us()) {
            spinners()
        } else {
            None
        };
        if let Some(s) = spinning {
            s.active.fetch_add(1, Ordering::SeqCst);
            s.threads.iter().for_each(std::thread::Thread::unpark);
        }
        Awake { on, spinning }
    }
}

impl Drop for Awake {
    fn drop(&mut self) {
        if self.on {
            LAST_END.store(now_us(), Ordering::Relaxed);
        }
        if let Some(s) = self.spinning {
            s.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_flush_after_a_pause_is_kept_awake() {
        assert!(after_a_pause(0, 5), "the first flush");
        assert!(!after_a_pause(1_000, 1_040), "40 µs after the last");
        assert!(!after_a_pause(1_000, 1_499));
        assert!(after_a_pause(1_000, 1_500));
        assert!(after_a_pause(1_000, 6_000), "5 ms after the last");
    }

    /// One spinner a core of the process, each in the idle class
    /// (`SCHED_IDLE` = 5, field 41 of its stat) once it has started.
    #[test]
    fn a_spinner_waits_on_each_core_in_the_idle_class() {
        let (cpus, s) = (crate::placement::process_cpus(), spinners());
        if !cfg!(target_os = "linux") {
            // The cores are not read: nothing spins.
            assert!(s.is_none());
            return;
        }
        let (cpus, s) = (cpus.expect("Linux reads the cores"), s.expect("and has spinners"));
        assert_eq!(s.threads.len(), cpus.len());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut idle = 0;
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if !comm.starts_with("hearth-awake-") {
                    continue;
                }
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                idle += usize::from(after.split_whitespace().nth(38) == Some("5"));
            }
            if idle == cpus.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{idle} of {} spinners in the idle class",
                cpus.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
