//! Summary rows: every epoch summary of a channel in one sealed row (store
//! format 15), so that an open reads one row a channel instead of one per
//! epoch (490 rows at a million messages: 2.3 to 2.6 ms of the cold open).
//!
//! The per-epoch rows (`E | wire | epoch`) stay the truth: every batch
//! writes them as before. A clean close copies them, as sled holds them
//! then, into `A | wire | chunk` (postcard, sealed, in chunks of at most
//! [`SUMMARY_CHUNK`] bytes), for every channel whose copy is not known to
//! be current; the open reads the copy when it is there and scans the `E`
//! rows when it is not.
//!
//! The copy must never disagree with the `E` rows it stands for, so every
//! sled batch that writes or removes an `E` row of a channel removes the
//! copy's chunks in that same batch ([`SummaryRows::remove_in`]: a group
//! commit, an ingest, a snapshot, an epoch's death). sled recovers a prefix
//! of its batches, so no crash keeps a copy while losing the `E` write that
//! removed it. A copy also carries a stamp of the channel's feed heads and
//! dead and stubbed epochs; one that does not match, open or decode is a
//! miss (the `E` rows are scanned) and is replaced at the next clean close.
//! Debug builds (every test) compare a copy they use with the `E` rows, and
//! `verify` reports one that disagrees.
//!
//! Summaries after the open: the open's second thread reads and opens every
//! copy once the store first asks for summaries ([`read_copies_ahead`],
//! [`Ahead::begin`]), while the store thread reads them from the other end.
//! After a clean close (nothing to catch up or replay) the open loads the
//! channels that have a copy without their summaries and returns; the
//! first command that needs them ([`Engine::ensure_summaries`]: any but a
//! page its front page answers) takes them from that thread, checking each
//! copy's stamp as the load would. A channel whose copy does not serve and
//! whose `E` rows do not read then fails that command; its copy is
//! removed, so that the next open loads it before it answers and rebuilds
//! sled ([`Engine::summaries_failed`]).

use std::collections::{BTreeMap, HashMap};

use hearth_core::{ChannelId, Epoch, WireId};
use serde::{Deserialize, Serialize};

use crate::channel::{ChannelState, EpochSummary};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::{T_ALL_SUMMARIES, T_EPOCHS, channel_prefix, open_record, seal_record};

/// Most plaintext bytes in one chunk of a copy (far below sled's blob
/// threshold, like a snapshot's chunks).
const SUMMARY_CHUNK: usize = 32 * 1024;

/// Version of the copy's plaintext.
const SUMMARIES_VERSION: u8 = 1;

/// The copy's plaintext, before it is cut into chunks.
#[derive(Serialize, Deserialize)]
pub(crate) struct SummaryCopy {
    version: u8,
    stamp: [u8; 32],
    summaries: Vec<(Epoch, EpochSummary)>,
}

/// What the engine knows of the copies in sled, by channel.
#[derive(Debug, Default)]
pub(crate) struct SummaryRows {
    /// Channels with a copy in sled: how many chunks it has, and whether it
    /// is known to equal the `E` rows (read and used at open, or written
    /// at this close).
    held: HashMap<WireId, (u16, bool)>,
    /// Channels whose summaries were read from their copy.
    pub(crate) read: u64,
}

/// Key of chunk `i` of a channel's copy.
fn chunk_key(wire: &WireId, i: u16) -> [u8; 35] {
    let mut k = [0u8; 35];
    k[..33].copy_from_slice(&channel_prefix(T_ALL_SUMMARIES, wire));
    k[33..].copy_from_slice(&i.to_be_bytes());
    k
}

impl SummaryRows {
    /// Remove the channel's copy in `batch`, which writes or removes one of
    /// its `E` rows. Nothing to do when it has none (once removed, a copy
    /// comes back only at the close).
    pub(crate) fn remove_in(&mut self, wire: &WireId, batch: &mut sled::Batch) {
        if let Some((chunks, _)) = self.held.remove(wire) {
            for i in 0..chunks {
                batch.remove(&chunk_key(wire, i)[..]);
            }
        }
    }
}

/// What [`stamp`] hashes: a copy is written for these and used only with them.
fn stamp(state: &ChannelState) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("hearth v1 summary copy stamp");
    h.update(&state.keys.wire().0);
    h.update(&(state.heads.len() as u64).to_le_bytes());
    for (device, head) in &state.heads {
        h.update(&device.0);
        h.update(&head.seq.to_le_bytes());
        h.update(&head.hash);
    }
    for set in [&state.dead, &state.stubbed] {
        h.update(&(set.len() as u64).to_le_bytes());
        for e in set {
            h.update(&e.to_le_bytes());
        }
    }
    *h.finalize().as_bytes()
}

/// Read every `E` row of a channel.
pub(crate) fn scan_summaries(tree: &sled::Tree, records: &hearth_core::SecretKey, wire: &WireId) -> Result<Summaries> {
    let mut out = BTreeMap::new();
    for row in tree.scan_prefix(channel_prefix(T_EPOCHS, wire)) {
        let (k, v) = row?;
        let epoch = u32::from_be_bytes(
            k.get(33..37)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::corrupted("epoch summary", "bad key"))?,
        );
        let plain = open_record(records, &k, &v)?;
        let s: EpochSummary = postcard::from_bytes(&plain).map_err(|e| Error::corrupted("epoch summary", e))?;
        out.insert(epoch, s);
    }
    Ok(out)
}

/// Whether the channel has a copy in sled (its first chunk; read, not
/// opened): the open leaves the summaries of such a channel for later.
pub(crate) fn has_copy(tree: &sled::Tree, wire: &WireId) -> Result<bool> {
    Ok(tree.get(chunk_key(wire, 0))?.is_some())
}

/// A channel's summaries by epoch.
type Summaries = BTreeMap<Epoch, EpochSummary>;

/// A channel's copy as read from sled, before its stamp is checked: one
/// past its highest chunk, and the copy when every chunk opens and the
/// whole decodes.
pub(crate) type CopyRead = (u16, Option<SummaryCopy>);

/// Gathers one channel's chunks, in key order, into a [`CopyRead`].
#[derive(Default)]
struct Gather {
    plain: Vec<u8>,
    /// One past the highest chunk seen, and how many were seen.
    end: u16,
    seen: u16,
    whole: bool,
}

impl Gather {
    fn new() -> Self {
        Gather {
            whole: true,
            ..Gather::default()
        }
    }

    fn add(&mut self, records: &hearth_core::SecretKey, k: &[u8], v: &[u8]) {
        let at = (k.len() == 35)
            .then(|| k.get(33..35).and_then(|b| b.try_into().ok()).map(u16::from_be_bytes))
            .flatten();
        // Chunks are numbered from 0 without a gap; anything else is a miss
        // (its rows are still counted, so that they are removed).
        if at != Some(self.seen) {
            self.whole = false;
        }
        self.seen = self.seen.saturating_add(1);
        self.end = self.end.max(at.map_or(0, |a| a.saturating_add(1)));
        if self.whole {
            match open_record(records, k, v) {
                Ok(p) => self.plain.extend_from_slice(&p),
                Err(_) => self.whole = false,
            }
        }
    }

    fn finish(self) -> Option<CopyRead> {
        if self.seen == 0 {
            return None;
        }
        let copy = self
            .whole
            .then(|| postcard::from_bytes::<SummaryCopy>(&self.plain).ok())
            .flatten()
            .filter(|c| c.version == SUMMARIES_VERSION);
        Some((self.end, copy))
    }
}

/// The copy in sled, if one is there: one past its highest chunk, and its
/// summaries when it opens, decodes and carries `want` as its stamp.
fn read_copy(
    tree: &sled::Tree,
    records: &hearth_core::SecretKey,
    wire: &WireId,
    want: &[u8; 32],
) -> Result<Option<(u16, Option<Summaries>)>> {
    let mut g = Gather::new();
    for row in tree.scan_prefix(channel_prefix(T_ALL_SUMMARIES, wire)) {
        let (k, v) = row?;
        g.add(records, &k, &v);
    }
    Ok(g.finish().map(|read| usable(read, want)))
}

/// A copy read, its summaries kept only when it carries `want` as its stamp.
fn usable((end, copy): CopyRead, want: &[u8; 32]) -> (u16, Option<Summaries>) {
    let summaries = copy
        .filter(|c| c.stamp == *want)
        .map(|c| c.summaries.into_iter().collect());
    (end, summaries)
}

/// Every channel's copy, read and opened ahead of the open's channel load,
/// on the open's second thread once the key is unlocked, while the open's
/// own thread reads the journal and the standing and makes the engine:
/// opening and decoding the copies is most of the channels' load (about
/// 0.45 ms of 1,000 epoch summaries at a million messages). Each channel's
/// copy is handed over as soon as it is read ([`Ahead::take`]), in key
/// order, while the store thread, when it needs them first, reads from the
/// other end, so neither waits for the other. Stamps are checked by the
/// load, which knows the heads. Stops at a row that does not read (the
/// store thread reads that copy itself) or once the store has let go of
/// `ahead`.
pub(crate) fn read_copies_ahead(tree: &sled::Tree, records: &hearth_core::SecretKey, ahead: &CopySink) {
    let hand_over = |wire: WireId, g: Gather| match (ahead.upgrade(), g.finish()) {
        (Some(read), Some(copy)) => {
            read.lock().unwrap_or_else(|e| e.into_inner()).insert(wire, copy);
            true
        }
        (Some(_), None) => true,
        (None, _) => false,
    };
    let mut current: Option<(WireId, Gather)> = None;
    for row in tree.scan_prefix([T_ALL_SUMMARIES]) {
        let Ok((k, v)) = row else { return };
        let Some(wire) = k.get(1..33).and_then(|w| w.try_into().ok()).map(WireId) else {
            return;
        };
        if current.as_ref().is_none_or(|(w, _)| *w != wire) {
            if let Some((w, g)) = current.take()
                && !hand_over(w, g)
            {
                return;
            }
            current = Some((wire, Gather::new()));
        }
        if let Some((_, g)) = current.as_mut() {
            g.add(records, &k, &v);
        }
    }
    if let Some((w, g)) = current {
        hand_over(w, g);
    }
}

/// The copies read ahead ([`read_copies_ahead`]) by the open's second
/// thread, at idle priority, once the store asks ([`Ahead::begin`]);
/// nothing if the store lets go first. Whether they were read.
pub(crate) fn read_when_asked(
    tree: &sled::Tree,
    records: &hearth_core::SecretKey,
    ahead: &CopySink,
    asked: Asked,
) -> bool {
    if asked.recv().is_err() {
        return false;
    }
    crate::open::idle_priority();
    read_copies_ahead(tree, records, ahead);
    true
}

/// Copies read ahead and not yet taken, by channel.
type Handed = std::sync::Mutex<HashMap<WireId, CopyRead>>;

/// Where [`read_copies_ahead`] hands copies over: dead once the store lets
/// go of them.
pub(crate) type CopySink = std::sync::Weak<Handed>;

/// The copies [`read_copies_ahead`] reads, on their way from the open's
/// second thread to the store thread, and that thread.
pub(crate) struct Ahead {
    read: Option<std::sync::Arc<Handed>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Tells the thread to begin ([`Ahead::begin`]); dropped, it tells the
    /// thread to end without reading.
    begin: Option<std::sync::mpsc::SyncSender<()>>,
}

/// What the reading thread waits on before it reads: the store asking for
/// summaries ([`Ahead::begin`]), or `Err` once the store let go.
pub(crate) type Asked = std::sync::mpsc::Receiver<()>;

impl Ahead {
    /// Copies the thread `start` makes will hand over, and what that
    /// thread waits on before it reads them.
    pub(crate) fn new() -> (Self, Asked) {
        let (begin, asked) = std::sync::mpsc::sync_channel(1);
        let ahead = Ahead {
            read: Some(Default::default()),
            thread: None,
            begin: Some(begin),
        };
        (ahead, asked)
    }

    /// Let the thread read: the store needs the summaries now. Until then
    /// it waits, not runnable, so that nothing but the open's tail and its
    /// front page runs on two cores (a thread at idle priority still takes
    /// a whole time slice from a thread that yields to it: 0.3 to 0.5 ms of
    /// a cold open that takes 0.4, docs/reach.md).
    pub(crate) fn begin(&mut self) {
        if let Some(b) = self.begin.take() {
            let _ = b.send(());
        }
    }

    /// Where the reading thread hands copies over.
    pub(crate) fn sink(&self) -> CopySink {
        self.read.as_ref().map(std::sync::Arc::downgrade).unwrap_or_default()
    }

    /// The thread that reads them, joined when this is dropped.
    pub(crate) fn reading_on(mut self, thread: std::thread::JoinHandle<()>) -> Self {
        self.thread = Some(thread);
        self
    }

    /// The copy of `wire`, if the thread has read it and it was not taken.
    fn take(&self, wire: &WireId) -> Option<CopyRead> {
        self.read
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(wire)
    }

    /// Let the thread go without waiting for it: it stops at its next
    /// channel. Its handle, to be joined before sled closes.
    pub(crate) fn let_go(mut self) -> Option<std::thread::JoinHandle<()>> {
        self.read = None;
        self.begin = None;
        self.thread.take()
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // The thread holds sled open: it ends before the store lets sled go.
        self.read = None;
        self.begin = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ahead")
    }
}

impl Engine {
    /// A channel's epoch summaries: from its copy when one is current, else
    /// from its `E` rows. `ahead`: the copy as the open's second thread read
    /// it, if it has.
    pub(crate) fn load_summaries(&mut self, state: &ChannelState, ahead: bool) -> Result<Summaries> {
        let wire = state.keys.wire();
        let want = stamp(state);
        // The second thread's copy if it has read it; otherwise this
        // thread reads it (the copies are shared out, not waited for).
        let read = match self.copies_ahead.as_ref().filter(|_| ahead).and_then(|a| a.take(&wire)) {
            Some(r) => Some(usable(r, &want)),
            None => read_copy(&self.tree, &self.records, &wire, &want)?,
        };
        match read {
            Some((chunks, Some(summaries))) => {
                #[cfg(debug_assertions)]
                assert_eq!(
                    summaries,
                    scan_summaries(&self.tree, &self.records, &wire)?,
                    "a summary copy disagrees with the epoch rows"
                );
                self.summary_rows.held.insert(wire, (chunks, true));
                self.summary_rows.read += 1;
                Ok(summaries)
            }
            Some((chunks, None)) => {
                self.summary_rows.held.insert(wire, (chunks, false));
                scan_summaries(&self.tree, &self.records, &wire)
            }
            None => scan_summaries(&self.tree, &self.records, &wire),
        }
    }

    /// A channel whose summaries were left for later did not get them: its
    /// copy did not serve and its `E` rows do not read. Its copy is removed
    /// (as far as sled still writes), so that the next open loads the
    /// channel before it answers, and a failure there rebuilds sled from the
    /// log as any damage found by an open does.
    pub(crate) fn summaries_failed(&mut self, channel: ChannelId, why: Error) -> Error {
        if let Ok(wire) = self.channel(&channel).map(|c| c.keys.wire()) {
            let mut batch = sled::Batch::default();
            for (k, _) in self.tree.scan_prefix(channel_prefix(T_ALL_SUMMARIES, &wire)).flatten() {
                batch.remove(k);
            }
            self.summary_rows.held.remove(&wire);
            let _ = self
                .tree
                .apply_batch(batch)
                .and_then(|()| self.tree.flush().map(|_| ()));
        }
        Error::corrupted(
            "epoch summaries",
            format!("{why}; reopen the store: its open rebuilds sled from the feed log"),
        )
    }

    /// Copy every channel's `E` rows into its summary copy, for each that
    /// has none known current (at a clean close, after the last snapshot
    /// and before the checkpoint). A channel whose copy cannot be made
    /// keeps none; the close goes on.
    pub(crate) fn write_summary_copies(&mut self) -> Result<()> {
        let mut batch = sled::Batch::default();
        let due: Vec<WireId> = self
            .channels
            .values()
            .map(|c| c.keys.wire())
            .filter(|w| self.summary_rows.held.get(w).is_none_or(|(_, current)| !current))
            .collect();
        for wire in due {
            let Some(state) = self.by_wire.get(&wire).and_then(|c| self.channels.get(c)) else {
                continue;
            };
            let copy = SummaryCopy {
                version: SUMMARIES_VERSION,
                stamp: stamp(state),
                summaries: scan_summaries(&self.tree, &self.records, &wire)?.into_iter().collect(),
            };
            let plain = postcard::to_stdvec(&copy).expect("summaries encode");
            let Ok(count) = u16::try_from(plain.len().div_ceil(SUMMARY_CHUNK).max(1)) else {
                continue;
            };
            self.summary_rows.remove_in(&wire, &mut batch);
            for (i, c) in plain.chunks(SUMMARY_CHUNK).enumerate() {
                let k = chunk_key(&wire, i as u16);
                batch.insert(&k[..], seal_record(&self.records, &k, c)?);
            }
            self.summary_rows.held.insert(wire, (count, true));
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Whether the channel's copy in sled, if any, says what its `E` rows
    /// say (`verify`). `Ok(None)`: no copy, or one its stamp puts aside.
    pub(crate) fn summary_copy_agrees(&self, state: &ChannelState) -> Result<Option<bool>> {
        let wire = state.keys.wire();
        let Some((_, Some(copy))) = read_copy(&self.tree, &self.records, &wire, &stamp(state))? else {
            return Ok(None);
        };
        Ok(Some(copy == scan_summaries(&self.tree, &self.records, &wire)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree with one unreadable copy chunk for each of `wires`.
    fn tree_with_copies(wires: &[WireId]) -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for w in wires {
            tree.insert(chunk_key(w, 0), &b"not sealed"[..]).unwrap();
        }
        (dir, tree)
    }

    /// The reader as the open's second thread runs it, on a thread.
    fn reader((ahead, asked): (Ahead, Asked), tree: sled::Tree) -> (Ahead, std::thread::JoinHandle<bool>) {
        let sink = ahead.sink();
        let key = hearth_core::SecretKey::from_bytes([9; 32]);
        let t = std::thread::spawn(move || read_when_asked(&tree, &key, &sink, asked));
        (ahead, t)
    }

    #[test]
    fn copies_are_read_ahead_only_once_the_store_asks() {
        let wires = [WireId([1; 32]), WireId([2; 32])];
        let (_dir, tree) = tree_with_copies(&wires);
        let (mut ahead, t) = reader(Ahead::new(), tree);
        // Not asked: the thread waits and reads nothing, however long.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!t.is_finished());
        assert!(wires.iter().all(|w| ahead.take(w).is_none()));
        ahead.begin();
        // Asked twice is asked once.
        ahead.begin();
        assert!(t.join().unwrap());
        assert!(wires.iter().all(|w| ahead.take(w).is_some()));
    }

    #[test]
    fn a_reader_never_asked_ends_without_reading_when_let_go() {
        let (_dir, tree) = tree_with_copies(&[WireId([1; 32])]);
        let (ahead, t) = reader(Ahead::new(), tree.clone());
        let t2 = ahead.let_go();
        assert!(t2.is_none(), "the reading thread is the test's own here");
        assert!(!t.join().unwrap());
        // Dropped without a word: the same.
        let (ahead, t) = reader(Ahead::new(), tree);
        drop(ahead);
        assert!(!t.join().unwrap());
    }

    #[test]
    fn copies_read_ahead_are_handed_over_one_channel_at_a_time_until_let_go() {
        let wires = [WireId([1; 32]), WireId([2; 32]), WireId([3; 32])];
        let (_dir, tree) = tree_with_copies(&wires);
        let key = hearth_core::SecretKey::from_bytes([9; 32]);
        let (ahead, _) = Ahead::new();
        read_copies_ahead(&tree, &key, &ahead.sink());
        // Each channel's copy is there to take once (a chunk that does not
        // open is a copy that does not serve, its chunks still counted).
        for w in &wires {
            assert_eq!(ahead.take(w).map(|(end, copy)| (end, copy.is_none())), Some((1, true)));
            assert!(ahead.take(w).is_none());
        }
        // Once the store lets go, the reader stops and hands nothing over.
        let sink = ahead.sink();
        assert!(ahead.let_go().is_none());
        read_copies_ahead(&tree, &key, &sink);
        assert!(sink.upgrade().is_none());
    }
}
