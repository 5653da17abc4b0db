//! [`Plumbing`]: what relays, benchmarks and tests reach under the chat API.

use hearth_core::{ChannelId, Vector, WireId};
use hearth_store::{IngestReport, OpenTimings, Pending, Store, StoreEvent, Write};

use crate::error::Result;

/// The sync plumbing under a [`crate::Hearth`] ([`crate::Hearth::plumbing`]):
/// version vectors, raw entries, ingest, raw writes and the engine's own
/// events. Relays, benchmarks and tests use it; a chat app needs none of
/// it, and nothing here checks more than the engine does.
#[derive(Clone, Debug)]
pub struct Plumbing {
    store: Store,
}

impl Plumbing {
    pub(crate) fn new(store: Store) -> Self {
        Plumbing { store }
    }

    /// The engine itself, to start a sync node on by hand
    /// ([`hearth_sync::start`]) or to call what this type leaves out.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queue a raw write; the [`Pending`] resolves to its
    /// [`hearth_store::Outcome`] once durable.
    pub async fn submit(&self, w: Write) -> Result<Pending> {
        Ok(self.store.submit(w).await?)
    }

    /// The engine's events: new entries, messages from other devices,
    /// receipts, forks.
    pub fn store_events(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.store.subscribe()
    }

    /// Every channel's wire id and version vector.
    pub async fn vectors(&self) -> Result<Vec<(WireId, Vector)>> {
        Ok(self.store.vectors().await?)
    }

    /// One channel's version vector.
    pub async fn vector(&self, channel: ChannelId) -> Result<Vector> {
        Ok(self.store.vector(channel).await?)
    }

    /// The sealed entries of a channel that `have` lacks (about
    /// `max_bytes`, at most `max_entries`), as a peer is sent them.
    pub async fn entries_after(
        &self,
        wire: WireId,
        have: Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<hearth_store::EntryBatch> {
        Ok(self.store.entries_after(wire, have, max_bytes, max_entries).await?)
    }

    /// Take sealed entries of a channel from a peer, as sync does.
    pub async fn ingest(&self, wire: WireId, entries: Vec<Vec<u8>>) -> Result<IngestReport> {
        Ok(self.store.ingest(wire, entries).await?)
    }

    /// Write the delivery receipts this device owes now; returns for how
    /// many channels.
    pub async fn flush_receipts(&self) -> Result<usize> {
        Ok(self.store.flush_receipts().await?)
    }

    /// Make every acknowledged write durable in sled and empty the journal now.
    pub async fn checkpoint(&self) -> Result<()> {
        Ok(self.store.checkpoint().await?)
    }

    /// Replace a small file beside the store, sealed under the store's keys,
    /// atomically and durably, owner only (a node's addresses, its known
    /// peers). `name` is a plain file name.
    pub async fn write_private_file(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        Ok(self.store.write_private_file(name, bytes).await?)
    }

    /// A file written with [`Plumbing::write_private_file`], opened (`None`:
    /// there is none).
    pub async fn read_private_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.store.read_private_file(name).await?)
    }

    /// How long the open took, step by step.
    pub fn open_timings(&self) -> OpenTimings {
        self.store.open_timings()
    }

    /// The sealed records in which `needle` appears in plaintext (none, in a
    /// sound store): the at-rest check of tests.
    pub async fn find_text(&self, needle: &str) -> Result<Vec<String>> {
        Ok(self.store.find_text(needle).await?)
    }
}
