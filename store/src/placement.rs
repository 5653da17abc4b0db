//! Where the store thread runs: out of the way of the writers' fsyncs.
//!
//! A writer's fsync ([`crate::group_commit`]) returns soonest on the CPU
//! that takes the disk's completion interrupts: woken on another, the
//! writer's thread waits for a wake-up sent across to that CPU (tens of
//! microseconds when it is halted). The scheduler moves a woken thread to
//! the interrupt's CPU when that CPU is idle and leaves it where it was
//! when the CPU is busy, and the store thread is often what keeps it busy:
//! it wakes just before the fsync should end, to take the writer's next
//! command. On the 2-core VM of docs/reach.md that alone made a lone
//! writer's post 85 or 115 µs (p50), by where the scheduler happened to put
//! the two threads.
//!
//! So the store thread finds that CPU. It first counts the device interrupts
//! over 32 of the writers' fsyncs (`/proc/interrupts`, read twice), and
//! stays out of the CPU that took them if one clearly did
//! ([`Placement::by_interrupts`]). Otherwise it measures: it takes each CPU in turn out of its own
//! affinity mask (four times round, 12 fsyncs each time) while the
//! writers' fsyncs are timed, and stays out of the one whose absence made
//! them fastest, if their median was 5% or more below the slowest CPU's
//! and it was the fastest to leave out in most turns (if not, it keeps its
//! whole mask and measures again a second later, up to three times). It
//! measures again every few minutes, since interrupts can be moved. Nothing is learnt without
//! writes, and only the store thread's own mask is changed: the callers'
//! threads are never touched. [`crate::Config::place_store_thread`] turns it
//! off.

use std::time::{Duration, Instant};

/// Fsyncs ignored after the mask changes (the threads settle).
const SKIP: usize = 4;
/// Fsyncs timed each time a CPU is left out.
const PHASE: usize = 12;
/// Times each CPU is left out in a measurement (in turn, so that a slow
/// spell of the disk does not fall on one CPU only). The CPU chosen must
/// have been the fastest to leave out in most turns, not only overall: a
/// spell of slow fsyncs over two phases once made the wrong CPU win by
/// its median (52 against 280 µs), and the writer ran 15% slower for the
/// whole run.
const TURNS: usize = 4;
/// How long a choice holds before the store thread measures again.
const REMEASURE: Duration = Duration::from_secs(300);
/// After a measurement that chose nothing (no CPU 5% faster to leave out,
/// or not in most turns), how soon it measures again, up to [`RETRIES`]
/// times in a row before it keeps its whole mask for [`REMEASURE`]: the
/// two placements of a 2-CPU VM differ by 15% in a lone writer's rate,
/// and one measurement can miss that on a noisy disk.
const RETRY: Duration = Duration::from_secs(1);
const RETRIES: u32 = 3;
/// Writers' fsyncs before a measurement starts (a store opened to be read
/// is never moved: a move costs its thread its caches).
const START_AFTER: u64 = 8;
/// Most CPUs the store thread measures; with more, it keeps its mask (a
/// measurement per CPU would take long, and such machines' disks usually
/// have a completion queue per CPU).
const MAX_CPUS: usize = 16;

/// The store thread's placement: measuring, or settled until a time and a
/// count of writers' fsyncs.
#[derive(Debug)]
pub(crate) struct Placement {
    /// The CPUs the store thread may run on (its mask when it started).
    cpus: Vec<usize>,
    state: State,
    /// Measurements in a row that chose nothing.
    misses: u32,
}

#[derive(Debug)]
enum State {
    /// Too few or too many CPUs, or turned off.
    Off,
    /// Turn `turn`: CPU `cpus[turn % cpus.len()]` is out of the mask, and
    /// `seen` fsyncs were since; `timed[i]` the fsyncs (microseconds) with
    /// `cpus[i]` out; `irqs` the look at the device interrupts alongside.
    Measuring {
        turn: usize,
        seen: usize,
        timed: Vec<Vec<u32>>,
        irqs: Irqs,
    },
    /// The mask is chosen until then, and until the writers have made
    /// `after` fsyncs.
    Settled { until: Instant, after: u64 },
}

impl Placement {
    /// The placement of a thread allowed on `cpus` (none: off), first
    /// measured at `now`.
    pub(crate) fn new(cpus: Option<Vec<usize>>, now: Instant) -> Placement {
        match cpus {
            Some(cpus) if (2..=MAX_CPUS).contains(&cpus.len()) => Placement {
                cpus,
                state: State::Settled {
                    until: now,
                    after: START_AFTER,
                },
                misses: 0,
            },
            _ => Placement {
                cpus: Vec::new(),
                state: State::Off,
                misses: 0,
            },
        }
    }

    /// The store thread's placement, if `on`, from its current mask (kept
    /// for the threads it spawns: [`spawn_unplaced`]).
    pub(crate) fn for_this_thread(on: bool) -> Placement {
        let cpus = on.then(thread_cpus).flatten();
        GIVEN.with(|g| *g.borrow_mut() = cpus.clone());
        Placement::new(cpus, Instant::now())
    }

    /// The writers' fsyncs are to be timed.
    pub(crate) fn measuring(&self) -> bool {
        matches!(self.state, State::Measuring { .. })
    }

    /// Whether [`Placement::observe`] has anything to do, the writers having
    /// made `synced` fsyncs so far (cheap: no clock read).
    pub(crate) fn due(&self, synced: u64) -> bool {
        match self.state {
            State::Off => false,
            State::Measuring { .. } => true,
            State::Settled { after, .. } => synced >= after,
        }
    }

    /// Take fsync times (microseconds) measured since the last call, the
    /// writers having made `synced` fsyncs so far; the mask the store
    /// thread is to take now, if it changes.
    pub(crate) fn observe(&mut self, fsyncs: &[u32], synced: u64, now: Instant) -> Option<Vec<usize>> {
        match &mut self.state {
            State::Off => None,
            State::Settled { until, after } => {
                if now < *until || synced < *after {
                    return None;
                }
                self.state = State::Measuring {
                    turn: 0,
                    seen: 0,
                    timed: vec![Vec::with_capacity(PHASE * TURNS); self.cpus.len()],
                    irqs: Irqs::Unread,
                };
                Some(self.without(Some(0)))
            }
            State::Measuring { turn, seen, timed, .. } => {
                let n = self.cpus.len();
                let now_out = &mut timed[*turn % n];
                let want = PHASE * (*turn / n + 1);
                for &us in fsyncs {
                    *seen += 1;
                    if *seen > SKIP && now_out.len() < want {
                        now_out.push(us);
                    }
                }
                if now_out.len() < want {
                    return None;
                }
                *seen = 0;
                *turn += 1;
                if *turn < n * TURNS {
                    let next = *turn % n;
                    return Some(self.without(Some(next)));
                }
                let wins = turn_wins(timed);
                let medians: Vec<u32> = timed
                    .iter_mut()
                    .map(|t| {
                        t.sort_unstable();
                        t[t.len() / 2]
                    })
                    .collect();
                let choice = choose(&medians).filter(|&c| wins[c] * 2 > TURNS);
                let wait = match choice {
                    None if self.misses < RETRIES => {
                        self.misses += 1;
                        RETRY
                    }
                    _ => {
                        self.misses = 0;
                        REMEASURE
                    }
                };
                tracing::debug!(
                    cpus = ?self.cpus,
                    fsync_median_us_by_cpu_left_out = ?medians,
                    turns_fastest_by_cpu_left_out = ?wins,
                    stays_off = ?choice.map(|i| self.cpus[i]),
                    "store thread placed"
                );
                self.state = State::Settled {
                    until: now + wait,
                    after: synced + START_AFTER,
                };
                Some(self.without(choice))
            }
        }
    }

    /// While measuring, look at the device interrupts instead: counted
    /// (`read` gives `/proc/interrupts`) when the measurement starts and
    /// again [`IRQ_SYNCS`] writers' fsyncs later, the CPU that took a
    /// device's interrupts for them ([`interrupt_cpu`]) is the one to stay
    /// out of, and the measurement ends at once. The mask the store thread
    /// is to take then, if any; otherwise the fsyncs' timing goes on.
    ///
    /// The timing alone chose wrongly in 4 of 18 runs of `hearth bench`
    /// with the journal written direct: the writer's thread stayed on the
    /// CPU without the interrupts for the whole turn that left the other
    /// one out, so that turn timed the two threads sharing a CPU, and the
    /// store thread settled on the interrupts' CPU (a lone writer's post 44
    /// against 39 µs p50 for the whole run).
    pub(crate) fn by_interrupts(
        &mut self,
        synced: u64,
        now: Instant,
        read: impl FnOnce() -> Option<String>,
    ) -> Option<Vec<usize>> {
        let State::Measuring { irqs, .. } = &mut self.state else {
            return None;
        };
        let cpu = match std::mem::replace(irqs, Irqs::Done) {
            Irqs::Unread => {
                if let Some(counts) = read().as_deref().and_then(parse_interrupts) {
                    *irqs = Irqs::Since(synced, counts);
                }
                return None;
            }
            Irqs::Since(at, before) if synced >= at + IRQ_SYNCS => {
                let after = read().as_deref().and_then(parse_interrupts)?;
                interrupt_cpu(&before, &after, synced - at)
            }
            waiting @ Irqs::Since(..) => {
                *irqs = waiting;
                return None;
            }
            Irqs::Done => return None,
        };
        let i = self.cpus.iter().position(|&c| Some(c) == cpu)?;
        tracing::debug!(cpus = ?self.cpus, stays_off = self.cpus[i], "store thread placed by the disk's interrupts");
        self.misses = 0;
        self.state = State::Settled {
            until: now + REMEASURE,
            after: synced + START_AFTER,
        };
        Some(self.without(Some(i)))
    }

    /// The mask without `cpus[i]` (all of them for `None`).
    fn without(&self, i: Option<usize>) -> Vec<usize> {
        let skip = i.map(|i| self.cpus[i]);
        self.cpus.iter().copied().filter(|&c| Some(c) != skip).collect()
    }
}

/// Writers' fsyncs between the two counts of device interrupts
/// ([`Placement::by_interrupts`]).
const IRQ_SYNCS: u64 = 32;

/// Where a measurement stands with the device interrupts.
#[derive(Debug)]
enum Irqs {
    /// Not counted yet.
    Unread,
    /// Counted when the writers had made this many fsyncs.
    Since(u64, Interrupts),
    /// Looked at (or unreadable): the timing decides.
    Done,
}

/// Device interrupt counts, from `/proc/interrupts`.
#[derive(Debug, PartialEq)]
struct Interrupts {
    /// The CPU of each column.
    cpus: Vec<usize>,
    /// Each numbered line (a device's interrupt): its number and counts.
    lines: Vec<(u64, Vec<u64>)>,
}

/// Read `/proc/interrupts`' text: its header names the CPUs' columns, and
/// lines numbered `N:` are devices' interrupts (the named ones, such as
/// `LOC` or `RES`, are the CPUs' own and are left out). `None` if the
/// header is not one.
fn parse_interrupts(text: &str) -> Option<Interrupts> {
    let mut lines = text.lines();
    let cpus = lines
        .next()?
        .split_whitespace()
        .map(|c| c.strip_prefix("CPU")?.parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    if cpus.is_empty() {
        return None;
    }
    let lines = lines
        .filter_map(|l| {
            let (n, rest) = l.split_once(':')?;
            let n = n.trim().parse().ok()?;
            let counts = rest
                .split_whitespace()
                .take(cpus.len())
                .map(|v| v.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            (counts.len() == cpus.len()).then_some((n, counts))
        })
        .collect();
    Some(Interrupts { cpus, lines })
}

/// The CPU that took the disk's completions over `syncs` fsyncs: every
/// device line that counted at least one interrupt for two fsyncs (a
/// write and its flush make one or two each) must have 90% of them on
/// one CPU, and the same CPU for all. `None` when no line did, or they
/// are spread (a completion queue per CPU, interrupts moved meanwhile) or
/// disagree (another busy device elsewhere).
fn interrupt_cpu(before: &Interrupts, after: &Interrupts, syncs: u64) -> Option<usize> {
    if before.cpus != after.cpus {
        return None;
    }
    let mut found = None;
    for (n, counts) in &after.lines {
        let Some((_, was)) = before.lines.iter().find(|(m, _)| m == n) else {
            continue;
        };
        let d: Vec<u64> = counts.iter().zip(was).map(|(a, b)| a.saturating_sub(*b)).collect();
        let total: u64 = d.iter().sum();
        if total.saturating_mul(2) < syncs {
            continue;
        }
        let (i, top) = d.iter().copied().enumerate().max_by_key(|&(_, v)| v)?;
        if top.saturating_mul(10) < total.saturating_mul(9) {
            return None;
        }
        match found {
            None => found = Some(after.cpus[i]),
            Some(c) if c == after.cpus[i] => {}
            Some(_) => return None,
        }
    }
    found
}

thread_local! {
    /// On the store thread: the mask it was given, before it placed itself.
    static GIVEN: std::cell::RefCell<Option<Vec<usize>>> = const { std::cell::RefCell::new(None) };
}

/// Spawn `f` on a thread made by `builder` that runs with the mask the
/// spawning store thread was given, not the one it narrowed for itself (a
/// compaction's copy or a backup's end must not share its one CPU).
pub(crate) fn spawn_unplaced<T: Send + 'static>(
    builder: std::thread::Builder,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let given = GIVEN.with(|g| g.borrow().clone());
    builder.spawn(move || {
        if let Some(cpus) = given {
            // Refused: the thread runs where it was put, only slower.
            let _ = set_thread_cpus(&cpus);
        }
        f()
    })
}

/// In how many turns leaving each CPU out gave the fastest fsyncs (the
/// lowest median of the turn's phase; a tie counts for none), from each
/// CPU's fsyncs in the order timed (`PHASE` a turn).
fn turn_wins(timed: &[Vec<u32>]) -> Vec<usize> {
    let mut wins = vec![0; timed.len()];
    for turn in 0..TURNS {
        let medians: Vec<Option<u32>> = timed
            .iter()
            .map(|t| {
                let mut phase = t.get(turn * PHASE..(turn + 1) * PHASE)?.to_vec();
                phase.sort_unstable();
                Some(phase[PHASE / 2])
            })
            .collect();
        let Some(low) = medians.iter().flatten().min() else {
            continue;
        };
        let at: Vec<usize> = (0..medians.len()).filter(|&i| medians[i] == Some(*low)).collect();
        if let [only] = at[..] {
            wins[only] += 1;
        }
    }
    wins
}

/// Which CPU to stay out of, given the median fsync with each left out:
/// the fastest, if it is at least 5% faster than the slowest.
fn choose(medians: &[u32]) -> Option<usize> {
    let (best, fastest) = medians.iter().copied().enumerate().min_by_key(|&(_, m)| m)?;
    let slowest = medians.iter().copied().max()?;
    (u64::from(fastest) * 20 <= u64::from(slowest) * 19).then_some(best)
}

/// The CPUs this thread may run on, if they can be read.
#[cfg(target_os = "linux")]
pub(crate) fn thread_cpus() -> Option<Vec<usize>> {
    cpus_of(0)
}

/// The CPUs the process's main thread may run on (those of the process,
/// unless someone pinned that thread), if they can be read.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn process_cpus() -> Option<Vec<usize>> {
    // SAFETY: a call without arguments that reads the process's id.
    cpus_of(unsafe { libc::getpid() })
}

/// The CPUs thread `tid` (0: the calling one) may run on.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn cpus_of(tid: libc::pid_t) -> Option<Vec<usize>> {
    // SAFETY: `set` is a plain bit set sized as the call is told; the call
    // writes only into it, and reads that thread's mask.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    // SAFETY: `CPU_ISSET` reads a bit of `set`, below its size.
    Some((0..max).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Allow this thread only on `cpus`. False if the system refused (the mask
/// is then unchanged).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set_thread_cpus(cpus: &[usize]) -> bool {
    if cpus.is_empty() {
        return false;
    }
    // SAFETY: `set` is a plain bit set sized as the call is told; `CPU_SET`
    // writes a bit of it below `CPU_SETSIZE`, and the call only reads it and
    // changes this thread's mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
        for &c in cpus.iter().filter(|&&c| c < max) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPU this thread is running on now, if it can be read.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: a call without arguments that reads where the caller runs.
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
}

/// Elsewhere than Linux where a thread runs is not read.
#[cfg(not(target_os = "linux"))]
pub(crate) fn current_cpu() -> Option<usize> {
    None
}

/// Elsewhere than Linux the mask is not read (the placement is off).
#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_cpus() -> Option<Vec<usize>> {
    None
}

/// Elsewhere than Linux the mask is not read.
#[cfg(not(target_os = "linux"))]
pub(crate) fn process_cpus() -> Option<Vec<usize>> {
    None
}

/// Elsewhere than Linux the mask is not changed.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_thread_cpus(_cpus: &[usize]) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_runs_on_one_of_its_allowed_cpus() {
        let (cpu, allowed) = (current_cpu(), thread_cpus());
        if cfg!(target_os = "linux") {
            let (cpu, allowed) = (
                cpu.expect("Linux tells where a thread runs"),
                allowed.expect("and where it may"),
            );
            assert!(allowed.contains(&cpu), "{cpu} not in {allowed:?}");
        } else {
            assert_eq!((cpu, allowed), (None, None));
        }
    }

    /// Feed `p` the fsyncs of `fast` µs while `cpu` is left out, `slow`
    /// otherwise, until it settles; the masks it asked for on the way.
    fn run(p: &mut Placement, now: Instant, cpu: usize, fast: u32, slow: u32) -> Vec<Vec<usize>> {
        run_at(p, now, START_AFTER, cpu, fast, slow)
    }

    /// [`run`], the writers having made `synced` fsyncs.
    fn run_at(p: &mut Placement, now: Instant, synced: u64, cpu: usize, fast: u32, slow: u32) -> Vec<Vec<usize>> {
        let mut masks = vec![p.observe(&[], synced, now).expect("a first mask")];
        while p.measuring() {
            let mask = masks.last().unwrap().clone();
            let us = if !mask.contains(&cpu) { fast } else { slow };
            // A few at a time, as the store thread sees them.
            if let Some(m) = p.observe(&[us; 3], synced, now) {
                masks.push(m);
            }
        }
        masks
    }

    #[test]
    fn it_stays_out_of_the_cpu_whose_absence_makes_fsyncs_fastest() {
        let now = Instant::now();
        let mut p = Placement::new(Some(vec![0, 1, 2]), now);
        let masks = run(&mut p, now, 1, 85, 115);
        // One CPU left out at a time, each in turn TURNS times, then the choice.
        let turn = [vec![1, 2], vec![0, 2], vec![0, 1]];
        let mut want: Vec<Vec<usize>> = (0..TURNS).flat_map(|_| turn.clone()).collect();
        want.push(vec![0, 2]);
        assert_eq!(masks, want);
        // Settled: nothing until it measures again.
        assert!(!p.measuring());
        assert_eq!(p.observe(&[200; 64], 1000, now + Duration::from_secs(1)), None);
        // Then it measures again, once time has passed and writers wrote;
        // the interrupts moved to CPU 2.
        let later = now + REMEASURE;
        assert!(!p.due(START_AFTER * 2 - 1));
        assert_eq!(p.observe(&[], START_AFTER * 2 - 1, later), None);
        assert!(p.due(START_AFTER * 2));
        assert_eq!(p.observe(&[], START_AFTER * 2, later), Some(vec![1, 2]));
        let mut last = None;
        while p.measuring() {
            let mask: Vec<usize> = last.clone().unwrap_or(vec![1, 2]);
            let us = if mask.contains(&2) { 115 } else { 85 };
            if let Some(m) = p.observe(&[us], START_AFTER * 2, later) {
                last = Some(m);
            }
        }
        assert_eq!(last, Some(vec![0, 1]));
    }

    #[test]
    fn it_keeps_its_whole_mask_when_no_cpu_matters() {
        let now = Instant::now();
        let mut p = Placement::new(Some(vec![0, 1]), now);
        // 4% apart: not enough to give up a CPU. It measures again soon,
        // RETRIES times, then holds for REMEASURE.
        let masks = run(&mut p, now, 0, 100, 104);
        assert_eq!(masks.last(), Some(&vec![0, 1]));
        let (mut at, mut synced) = (now, START_AFTER);
        for _ in 0..RETRIES {
            synced += START_AFTER;
            assert_eq!(p.observe(&[], synced, at + RETRY - Duration::from_millis(1)), None);
            at += RETRY;
            let masks = run_at(&mut p, at, synced, 0, 100, 104);
            assert_eq!(masks.last(), Some(&vec![0, 1]));
        }
        synced += START_AFTER;
        assert_eq!(p.observe(&[], synced, at + RETRY), None);
        assert_eq!(p.observe(&[], synced, at + REMEASURE), Some(vec![1]));
    }

    /// A slow spell of the disk over two of the phases a CPU is left out
    /// makes it lose by its median; the CPU that was faster to leave out in
    /// only half of the turns is not chosen either: it measures again.
    #[test]
    fn a_cpu_is_chosen_only_if_it_was_faster_in_most_turns() {
        let now = Instant::now();
        let mut p = Placement::new(Some(vec![0, 1]), now);
        let mut mask = p.observe(&[], START_AFTER, now).expect("a first mask");
        let mut turns = 0;
        let mut last = None;
        while p.measuring() {
            // CPU 1 out: 40 µs, but 280 in the first two turns' phases;
            // CPU 0 out: 50 µs.
            let us = if mask.contains(&1) {
                50
            } else if turns < 4 {
                280
            } else {
                40
            };
            if let Some(m) = p.observe(&[us; 4], START_AFTER, now) {
                turns += 1;
                mask = m.clone();
                last = Some(m);
            }
        }
        assert_eq!(last, Some(vec![0, 1]), "not chosen: faster in two turns of four");
        let synced = START_AFTER * 2;
        assert_eq!(
            p.observe(&[], synced, now + RETRY),
            Some(vec![1]),
            "measured again soon"
        );
        // A spell over one phase only: still chosen (three turns of four).
        let mut mask = vec![1];
        let mut turns = 0;
        let mut last = None;
        while p.measuring() {
            let us = if mask.contains(&1) {
                50
            } else if turns == 1 {
                280
            } else {
                40
            };
            if let Some(m) = p.observe(&[us; 4], synced, now + RETRY) {
                turns += 1;
                mask = m.clone();
                last = Some(m);
            }
        }
        assert_eq!(last, Some(vec![0]));
    }

    #[test]
    fn the_first_fsyncs_after_a_change_are_not_counted() {
        let now = Instant::now();
        let mut p = Placement::new(Some(vec![0, 1]), now);
        // Nothing before the writers have made a few fsyncs.
        assert!(!p.due(START_AFTER - 1));
        assert_eq!(p.observe(&[], START_AFTER - 1, now), None);
        assert_eq!(p.observe(&[], START_AFTER, now), Some(vec![1]));
        // Slow ones while the threads settle, then fast ones: the phase's
        // median is fast.
        assert_eq!(p.observe(&[1000; SKIP], START_AFTER, now), None);
        assert_eq!(p.observe(&[80; PHASE], START_AFTER, now), Some(vec![0]));
        assert_eq!(p.observe(&[120; SKIP + PHASE], START_AFTER, now), Some(vec![1]));
        // The second turn: CPU 0 out again, then CPU 1.
        assert_eq!(p.observe(&[1000; SKIP], START_AFTER, now), None);
        assert_eq!(p.observe(&[80; PHASE], START_AFTER, now), Some(vec![0]));
        assert_eq!(p.observe(&[120; SKIP + PHASE], START_AFTER, now), Some(vec![1]));
    }

    #[test]
    fn one_cpu_or_none_known_is_off() {
        let now = Instant::now();
        for cpus in [None, Some(vec![3]), Some((0..MAX_CPUS + 1).collect())] {
            let mut p = Placement::new(cpus, now);
            assert!(!p.due(u64::MAX));
            assert_eq!(p.observe(&[100; 100], u64::MAX, now + REMEASURE), None);
        }
    }

    /// `/proc/interrupts` of a 2-CPU VM whose disk (line 36) took `disk`
    /// interrupts on each CPU, and a network card (line 34) `net`.
    fn interrupts(disk: [u64; 2], net: [u64; 2]) -> String {
        format!(
            "           CPU0       CPU1\n \
             28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config\n \
             34:  {}  {} PCI-MSIX-0000:00:05.0   1-edge      virtio4-input\n \
             36:  {}  {} PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n\
             NMI:          0          0   Non-maskable interrupts\n\
             LOC:    9000000    8000000   Local timer interrupts\n",
            net[0], net[1], disk[0], disk[1]
        )
    }

    #[test]
    fn device_interrupts_are_read_and_the_cpus_own_left_out() {
        let i = parse_interrupts(&interrupts([5, 70], [3, 0])).unwrap();
        assert_eq!(i.cpus, vec![0, 1]);
        assert_eq!(i.lines, vec![(28, vec![0, 0]), (34, vec![3, 0]), (36, vec![5, 70])]);
        assert_eq!(parse_interrupts("garbage\n 1: 2 3\n"), None);
        assert_eq!(parse_interrupts(""), None);
        // A short line (CPUs hot-added) is left out, not misread.
        let i = parse_interrupts("  CPU0 CPU1\n 7: 1\n 8: 1 2 x\n").unwrap();
        assert_eq!(i.lines, vec![(8, vec![1, 2])]);
    }

    #[test]
    fn the_cpu_that_took_the_disks_completions_is_found() {
        let before = parse_interrupts(&interrupts([5, 1000], [3, 0])).unwrap();
        let at = |disk, net| interrupt_cpu(&before, &parse_interrupts(&interrupts(disk, net)).unwrap(), 32);
        // Two a sync on CPU 1, a stray one on CPU 0.
        assert_eq!(at([6, 1064], [3, 0]), Some(1));
        // Fewer than one for two syncs: not the disk's line.
        assert_eq!(at([5, 1015], [3, 0]), None);
        // Spread over both CPUs (a queue per CPU, or moved meanwhile).
        assert_eq!(at([40, 1040], [3, 0]), None);
        // Another busy device on the other CPU: they disagree.
        assert_eq!(at([5, 1064], [80, 0]), None);
        // ... on the same CPU: they agree.
        assert_eq!(at([5, 1064], [3, 60]), Some(1));
        // CPUs changed between the two counts.
        let other = parse_interrupts("  CPU0 CPU2\n 36: 5 1064\n").unwrap();
        assert_eq!(interrupt_cpu(&before, &other, 32), None);
    }

    #[test]
    fn a_measurement_ends_at_the_disks_interrupt_cpu() {
        let now = Instant::now();
        let mut p = Placement::new(Some(vec![0, 1]), now);
        // Not measuring: nothing is read.
        assert_eq!(p.by_interrupts(0, now, || panic!("read while settled")), None);
        assert_eq!(p.observe(&[], START_AFTER, now), Some(vec![1]));
        // Counted when the measurement starts, then IRQ_SYNCS fsyncs later.
        assert_eq!(
            p.by_interrupts(START_AFTER, now, || Some(interrupts([5, 1000], [3, 0]))),
            None
        );
        let later = START_AFTER + IRQ_SYNCS - 1;
        assert_eq!(p.by_interrupts(later, now, || panic!("read too soon")), None);
        let done = START_AFTER + IRQ_SYNCS;
        assert_eq!(
            p.by_interrupts(done, now, || Some(interrupts([5, 1070], [3, 0]))),
            Some(vec![0])
        );
        assert!(!p.measuring());
        assert_eq!(p.observe(&[40; 64], done + 100, now + Duration::from_secs(1)), None);

        // Unreadable, or no CPU found: the fsyncs' timing decides, as before.
        for read in [None, Some(interrupts([40, 1040], [3, 0]))] {
            let mut p = Placement::new(Some(vec![0, 1]), now);
            let first = p.observe(&[], START_AFTER, now).unwrap();
            assert_eq!(
                p.by_interrupts(START_AFTER, now, || Some(interrupts([5, 1000], [3, 0]))),
                None
            );
            assert_eq!(p.by_interrupts(START_AFTER + IRQ_SYNCS, now, || read.clone()), None);
            assert!(p.measuring());
            // Looked at once only.
            assert_eq!(
                p.by_interrupts(START_AFTER + 2 * IRQ_SYNCS, now, || panic!("read again")),
                None
            );
            let mut masks = vec![first];
            while p.measuring() {
                let us = if masks.last().unwrap().contains(&1) { 115 } else { 85 };
                if let Some(m) = p.observe(&[us; 3], START_AFTER, now) {
                    masks.push(m);
                }
            }
            assert_eq!(masks.last(), Some(&vec![0]));
        }
    }

    #[test]
    fn choose_needs_five_percent() {
        assert_eq!(choose(&[90, 100]), Some(0));
        assert_eq!(choose(&[100, 95]), Some(1));
        assert_eq!(choose(&[100, 96]), None);
        assert_eq!(choose(&[120, 80, 119]), Some(1));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn threads_spawned_by_a_placed_thread_get_its_given_mask() {
        let Some(cpus) = thread_cpus() else { return };
        if cpus.len() < 2 {
            return;
        }
        std::thread::spawn(move || {
            let p = Placement::for_this_thread(true);
            assert!(p.due(START_AFTER));
            // Placed: this thread on one CPU only.
            assert!(set_thread_cpus(&cpus[..1]));
            let child = spawn_unplaced(std::thread::Builder::new(), thread_cpus).unwrap();
            assert_eq!(child.join().unwrap(), Some(cpus.clone()));
            // A plain spawn would have inherited the narrowed mask.
            let plain = std::thread::spawn(thread_cpus);
            assert_eq!(plain.join().unwrap(), Some(cpus[..1].to_vec()));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn this_threads_mask_can_be_read_and_narrowed() {
        let Some(cpus) = thread_cpus() else { return };
        assert!(!cpus.is_empty());
        std::thread::spawn(move || {
            assert!(set_thread_cpus(&cpus[..1]));
            assert_eq!(thread_cpus(), Some(cpus[..1].to_vec()));
            assert!(!set_thread_cpus(&[]));
            assert_eq!(thread_cpus(), Some(cpus[..1].to_vec()));
        })
        .join()
        .unwrap();
    }
}
