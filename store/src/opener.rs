//! Opening a catch-up's entries off the store's thread, in the order their
//! batches came (ARCHITECTURE.md, "Sync").
//!
//! What opening an entry finds (its signature under a given key, the AEAD,
//! the change's decoding and checks, the text pack's root) is a function of
//! its bytes and the keys alone, so it can run on any thread before the
//! batch reaches the store's ([`crate::ingest::open_ahead`]). The process's
//! opening threads (one a core, at most [`MAX_WORKERS`]) take the entries
//! one at a time from one queue, oldest batch first:
//!
//! - a batch is spread over every thread, however its entries differ in
//!   size;
//! - a catch-up's next batch, handed over as soon as it arrives
//!   ([`crate::Store::prepare`]), is opened once the one before is, while
//!   the store's thread takes that one, instead of after it: no core waits
//!   between two batches.
//!
//! The opening threads run at a lower priority ([`NICE`]) than the store's
//! thread and the application's: when the store's thread takes a batch
//! while they open the next, it gets its core at once, where it waited a
//! time slice (2.8 ms measured) and then shared it, while the other core
//! went idle (the scheduler moves a waiting thread to an idle core only on
//! its next balancing tick).
//!
//! Each entry's signature is checked there too, under the key it carries
//! (its certificate chain) or the one its feed was known by when the batch
//! was queued; the store's admission takes that check only for the key it
//! would use itself ([`crate::admit::Admission::check_presigned`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, LazyLock, Mutex};

use hearth_core::{ChannelKeys, DeviceId, WireId};

use crate::ingest::{ToIngest, open_ahead};

/// Opening threads at most, whatever the cores.
pub(crate) const MAX_WORKERS: usize = 4;

/// The opening threads' nice value (the store's thread runs at 0): a
/// thread of each on one core gives the store's about 90% of it.
pub(crate) const NICE: i32 = 10;

/// Batches handed over ahead of their ingest that a store keeps at most
/// (one a session catching up; the oldest is dropped).
const MAX_PREPARED: usize = 4;

/// Feed keys learned from certificate chains that a store keeps at most
/// (hints for its next batches; cleared when full).
const MAX_LEARNED: usize = 4096;

/// Feed keys by channel and device, shared by a store's batches.
type Learned = Arc<Mutex<BTreeMap<(WireId, DeviceId), [u8; 32]>>>;

/// The process's opening threads and their queue.
static POOL: LazyLock<Pool> = LazyLock::new(|| Pool {
    state: Mutex::new(PoolState::default()),
    ready: Condvar::new(),
});

struct Pool {
    state: Mutex<PoolState>,
    ready: Condvar,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    /// Threads started (they live as long as the process, waiting for work).
    workers: usize,
}

struct Job {
    batch: Arc<Batch>,
    index: usize,
    bytes: Vec<u8>,
}

/// A store's side of opening: the batches it was handed ahead, and the
/// feed keys its batches' chains carried.
#[derive(Default)]
pub(crate) struct Opener {
    prepared: Mutex<VecDeque<Arc<Batch>>>,
    /// Feed keys carried by chains of entries opened here, by channel and
    /// device: the key of a feed whose chain came in an earlier batch not
    /// stored yet.
    learned: Learned,
}

/// A batch being opened.
pub(crate) struct Batch {
    wire: WireId,
    keys: ChannelKeys,
    /// The feeds' keys the store held when the batch was queued.
    held: BTreeMap<DeviceId, [u8; 32]>,
    learned: Learned,
    slots: Mutex<Slots>,
    done: tokio::sync::Notify,
}

struct Slots {
    out: Vec<Option<ToIngest>>,
    left: usize,
}

impl Batch {
    /// Its entries with what was opened of each, once all are done (once:
    /// they are taken out).
    pub(crate) async fn wait(&self) -> Vec<ToIngest> {
        loop {
            {
                let mut s = lock(&self.slots);
                if s.left == 0 {
                    return s.out.iter_mut().filter_map(Option::take).collect();
                }
            }
            // `notify_one` keeps a permit: a wake-up between the check and
            // here is not lost.
            self.done.notified().await;
        }
    }

    /// The key a feed is known by: held by the store, or carried by a
    /// chain opened before.
    fn key_of(&self, device: &DeviceId) -> Option<[u8; 32]> {
        self.held
            .get(device)
            .copied()
            .or_else(|| lock(&self.learned).get(&(self.wire, *device)).copied())
    }

    fn len(&self) -> usize {
        lock(&self.slots).out.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Opener {
    /// Queue `entries` of channel `wire` (its keys, and the feed keys the
    /// store holds) behind every batch queued before, and start threads.
    pub(crate) fn start(
        &self,
        wire: WireId,
        keys: ChannelKeys,
        held: BTreeMap<DeviceId, [u8; 32]>,
        entries: Vec<Vec<u8>>,
    ) -> Arc<Batch> {
        let batch = Arc::new(Batch {
            wire,
            keys,
            held,
            learned: self.learned.clone(),
            slots: Mutex::new(Slots {
                out: (0..entries.len()).map(|_| None).collect(),
                left: entries.len(),
            }),
            done: tokio::sync::Notify::new(),
        });
        if entries.is_empty() {
            return batch;
        }
        let wanted = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(1, MAX_WORKERS);
        let mut state = lock(&POOL.state);
        state
            .queue
            .extend(entries.into_iter().enumerate().map(|(index, bytes)| Job {
                batch: batch.clone(),
                index,
                bytes,
            }));
        while state.workers < wanted {
            let started = std::thread::Builder::new()
                .name(format!("hearth-open-{}", state.workers))
                .spawn(work);
            if started.is_err() {
                break;
            }
            state.workers += 1;
        }
        if state.workers == 0 {
            // No thread could start: open here (the caller's thread).
            drop(state);
            while let Some(job) = lock(&POOL.state).queue.pop_front() {
                run(job);
            }
            return batch;
        }
        drop(state);
        POOL.ready.notify_all();
        batch
    }

    /// Keep a batch queued ahead of its ingest, to be found by [`Opener::take`].
    pub(crate) fn keep(&self, batch: Arc<Batch>) {
        let mut prepared = lock(&self.prepared);
        if prepared.len() >= MAX_PREPARED {
            prepared.pop_front();
        }
        prepared.push_back(batch);
    }

    /// The entries opened by a batch handed over ahead that holds exactly
    /// these (waiting for it to finish); `None`: there is none.
    pub(crate) async fn take(&self, wire: &WireId, entries: &[Vec<u8>]) -> Option<Vec<ToIngest>> {
        let candidate = {
            let mut prepared = lock(&self.prepared);
            let at = prepared
                .iter()
                .position(|b| b.wire == *wire && b.len() == entries.len())?;
            prepared.remove(at)?
        };
        let out = candidate.wait().await;
        let same = out.len() == entries.len() && out.iter().zip(entries).all(|((b, _), e)| b == e);
        same.then_some(out)
    }
}

/// An opening thread: at a lower priority, it opens queued entries, and
/// waits when there are none.
fn work() {
    crate::open::lower_priority(NICE);
    loop {
        let job = {
            let mut state = lock(&POOL.state);
            loop {
                if let Some(job) = state.queue.pop_front() {
                    break job;
                }
                state = POOL.ready.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        };
        run(job);
    }
}

/// Open one entry, and hand it to its batch.
fn run(job: Job) {
    let batch = &job.batch;
    // A panic is a bug; the store opens the entry again.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        open_ahead(&batch.keys, &job.bytes, |d| batch.key_of(d))
    }))
    .ok()
    .flatten();
    if let Some((device, key)) = opened.as_ref().and_then(|o| o.carried()) {
        let mut learned = lock(&batch.learned);
        if learned.len() >= MAX_LEARNED {
            learned.clear();
        }
        learned.insert((batch.wire, device), key);
    }
    let mut s = lock(&batch.slots);
    s.out[job.index] = Some((job.bytes, opened));
    s.left -= 1;
    if s.left == 0 {
        batch.done.notify_one();
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Store};
    use hearth_core::{Envelope, KdfParams, Passphrase, Vector};

    /// A channel's keys and its entries: the first carries the writer's
    /// chain, the others are signed by the key it certifies.
    async fn entries(dir: &std::path::Path) -> (Store, ChannelKeys, Vec<Vec<u8>>) {
        let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
        let a = Store::create(dir, &Passphrase::new("pw"), "a", config).await.unwrap();
        let ch = a.create_channel("c").await.unwrap();
        let keys = a.channel_keys(ch).await.unwrap();
        for i in 0..6 {
            a.post(ch, &format!("message {i}")).await.unwrap();
            // An entry leaves the store sealed: the next post starts another.
            a.entries_after(keys.wire(), Vector::default(), usize::MAX, usize::MAX)
                .await
                .unwrap();
        }
        let all = a
            .entries_after(keys.wire(), Vector::default(), usize::MAX, usize::MAX)
            .await
            .unwrap();
        assert!(all.entries.len() >= 3, "{} entries", all.entries.len());
        (a, keys, all.entries)
    }

    /// Its signature flipped: it decodes, and verifies under no key.
    fn forged(bytes: &[u8]) -> Vec<u8> {
        let env = Envelope::decode(bytes).unwrap();
        let mut forged = env.clone();
        forged.sig[7] ^= 1;
        let forged = forged.encode();
        assert!(Envelope::decode(&forged).is_ok());
        forged
    }

    #[tokio::test]
    async fn a_signature_is_checked_ahead_only_under_a_key_that_verifies_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, keys, all) = entries(dir.path()).await;
        let first = open_ahead(&keys, &all[0], |_| None).unwrap();
        let (device, key) = first.carried().expect("the first entry carries its chain");
        assert_eq!(first.signed(), Some(key));
        // A later entry: under the feed's key when known, else unchecked.
        assert_eq!(open_ahead(&keys, &all[1], |_| None).unwrap().signed(), None);
        assert_eq!(
            open_ahead(&keys, &all[1], |d| (*d == device).then_some(key))
                .unwrap()
                .signed(),
            Some(key)
        );
        assert_eq!(open_ahead(&keys, &all[1], |_| Some([9; 32])).unwrap().signed(), None);
        // A forged signature opens (its body is intact) and is never
        // taken as checked, under any key.
        let bad = forged(&all[1]);
        assert_eq!(open_ahead(&keys, &bad, |_| Some(key)).unwrap().signed(), None);
        assert!(
            open_ahead(&keys, &forged(&all[0]), |_| None)
                .unwrap()
                .signed()
                .is_none()
        );
        a.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_prepared_batch_is_taken_only_for_the_same_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (a, keys, all) = entries(dir.path()).await;
        let wire = keys.wire();
        let opener = Opener::default();
        let held = BTreeMap::new();
        // The chain in the first entry is learned for the ones after it.
        let batch = opener.start(wire, keys.clone(), held.clone(), all.clone());
        opener.keep(batch);
        let opened = opener.take(&wire, &all).await.expect("the same entries");
        assert_eq!(opened.len(), all.len());
        for ((bytes, o), want) in opened.iter().zip(&all) {
            assert_eq!(bytes, want);
            assert!(o.is_some(), "every entry opens");
        }
        let key = opened[0].1.as_ref().unwrap().carried().unwrap().1;
        let later = opener
            .start(wire, keys.clone(), held.clone(), all[1..].to_vec())
            .wait()
            .await;
        assert!(later.iter().all(|(_, o)| o.as_ref().unwrap().signed() == Some(key)));
        // Other entries (one forged), another channel, or taken already: none.
        let mut other = all.clone();
        other[1] = forged(&all[1]);
        opener.keep(opener.start(wire, keys.clone(), held.clone(), all.clone()));
        assert!(opener.take(&wire, &other).await.is_none());
        opener.keep(opener.start(wire, keys.clone(), held, all.clone()));
        assert!(opener.take(&hearth_core::WireId([7; 32]), &all).await.is_none());
        assert!(opener.take(&wire, &all).await.is_some());
        assert!(opener.take(&wire, &all).await.is_none());
        a.close().await.unwrap();
    }
}
