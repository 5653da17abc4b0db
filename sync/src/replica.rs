//! What a node syncs: a member's store, or a relay's store of sealed entries.

use std::future::Future;

use hearth_core::device::DevicePublic;
use hearth_core::peer::{
    Certifier, Claim, Ends, Nonce, RelayCert, RemovalNotice, RemovedNotice, TextDrop, Vetting, Who, WhoRole,
};
use hearth_core::{SecretKey, Vector, WireId};
use hearth_store::{EntryBatch, IngestReport, Outgoing, Store, StoreEvent};
use tokio::sync::broadcast;

/// What happened in a replica that a node acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// New entries are stored for a channel: push them to peers. With this
    /// device's new entries when the store handed them over (a group of
    /// local writes): pushed as they are to a peer that holds the rest.
    Appended(WireId, Option<Outgoing>),
    /// Something an app shows (messages and read markers from other devices).
    Store(StoreEvent),
    /// Events were missed: reconcile everything.
    Lagged,
    /// Who may be served changed (a roster moved; a relay took a removal or
    /// a revocation): check every peer again (a full session with each).
    Recheck,
}

/// A replica's events ([`Replica::subscribe`]), read where they are used: a
/// store's are turned into [`ReplicaEvent`]s as they are received, with no
/// task in between (a hop of 10 to 20 us on every live message).
pub struct ReplicaEvents(Events);

enum Events {
    Replica(broadcast::Receiver<ReplicaEvent>),
    Store(broadcast::Receiver<StoreEvent>),
}

impl ReplicaEvents {
    /// Events a replica sends as [`ReplicaEvent`]s.
    pub fn new(rx: broadcast::Receiver<ReplicaEvent>) -> Self {
        ReplicaEvents(Events::Replica(rx))
    }

    /// A store's events.
    pub fn of_store(rx: broadcast::Receiver<StoreEvent>) -> Self {
        ReplicaEvents(Events::Store(rx))
    }

    /// The next event (cancel safe, as a broadcast receiver's `recv`).
    pub async fn recv(&mut self) -> Result<ReplicaEvent, broadcast::error::RecvError> {
        match &mut self.0 {
            Events::Replica(rx) => rx.recv().await,
            Events::Store(rx) => rx.recv().await.map(of_store),
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<ReplicaEvent, broadcast::error::TryRecvError> {
        match &mut self.0 {
            Events::Replica(rx) => rx.try_recv(),
            Events::Store(rx) => rx.try_recv().map(of_store),
        }
    }
}

fn of_store(e: StoreEvent) -> ReplicaEvent {
    match e {
        StoreEvent::Appended { wire, outgoing, .. } => ReplicaEvent::Appended(wire, outgoing),
        StoreEvent::Roster { .. } => ReplicaEvent::Recheck,
        e => ReplicaEvent::Store(e),
    }
}

/// A set of channel feeds a node reconciles with its peers.
///
/// A member's [`Store`] holds only its channels, opens every entry and refuses
/// channels it has no key for. A [`crate::RelayStore`] takes any channel it
/// is offered and checks only signatures and hash chains.
pub trait Replica: Clone + Send + Sync + 'static {
    /// Whether this replica takes channels it does not hold yet.
    fn is_relay(&self) -> bool;

    /// Every channel's wire id and vector.
    fn vectors(&self) -> impl Future<Output = hearth_store::Result<Vec<(WireId, Vector)>>> + Send;

    /// The access keys this replica proves channels with (and checks a peer's
    /// proofs against): a member's, derived from its channel keys; a relay's,
    /// granted by members.
    fn access_keys(&self) -> impl Future<Output = hearth_store::Result<Vec<(WireId, SecretKey)>>> + Send;

    /// Take channels granted by a member (a relay only): their vectors here,
    /// for the grants taken; `None` when this replica takes no grants.
    fn grant(
        &self,
        grants: Vec<(WireId, SecretKey)>,
    ) -> impl Future<Output = hearth_store::Result<Option<Vec<(WireId, Vector)>>>> + Send;

    /// Let the holder of an invite in (a member's store): the channel's keys
    /// sealed to its device; `None` for a replica that lets nobody in (a relay).
    fn admit(
        &self,
        req: hearth_store::JoinRequest,
    ) -> impl Future<Output = hearth_store::Result<Option<Vec<u8>>>> + Send;

    /// The entries `have` lacks; `None` for a channel not held.
    fn entries_after(
        &self,
        wire: WireId,
        have: Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> impl Future<Output = hearth_store::Result<Option<EntryBatch>>> + Send;

    /// Verify and store entries; `None` for a channel this replica does not take.
    fn ingest(
        &self,
        wire: WireId,
        entries: Vec<Vec<u8>>,
    ) -> impl Future<Output = hearth_store::Result<Option<IngestReport>>> + Send;

    /// Start work on entries that [`Replica::ingest`] will be handed next
    /// (a catch-up's next batch, arrived while the one before is being
    /// taken), so that the ingest finds it done. A hint: the default does
    /// nothing.
    fn prepare(&self, wire: WireId, entries: Vec<Vec<u8>>) -> impl Future<Output = ()> + Send {
        let _ = (wire, entries);
        async {}
    }

    /// The revocation notices to hand relays, by channel (encoded
    /// `hearth_core::member::RevocationNotice`s).
    fn notices(&self) -> impl Future<Output = hearth_store::Result<Vec<(WireId, Vec<u8>)>>> + Send;

    /// Take revocation notices, and the removals `by` (the device that
    /// proved itself on this connection) sends of the channels it
    /// certified this relay for (a relay: how many of the notices and
    /// removals it holds now; `None`: this replica takes none).
    fn note(
        &self,
        notices: Vec<Vec<u8>>,
        removals: Vec<RemovalNotice>,
        drops: Vec<TextDrop>,
        by: Option<Certifier>,
    ) -> impl Future<Output = hearth_store::Result<Option<u32>>> + Send;

    /// The text drops to hand relays (a member's: what its deletes took
    /// from stored entries).
    fn drops(&self) -> impl Future<Output = hearth_store::Result<Vec<TextDrop>>> + Send;

    /// The removals to hand relays (a member's, from its rosters).
    fn removals(&self) -> impl Future<Output = hearth_store::Result<Vec<RemovalNotice>>> + Send;

    /// This device's proof on a connection (`None`: a relay, which has no device).
    fn who(
        &self,
        role: WhoRole,
        nonce: Nonce,
        ends: Ends,
        matched: Vec<u8>,
        with_chain: bool,
    ) -> impl Future<Output = hearth_store::Result<Option<Who>>> + Send;

    /// Which of `wires` the peer that makes `claim` may be served.
    fn vet(&self, claim: Claim, wires: Vec<WireId>) -> impl Future<Output = hearth_store::Result<Vetting>> + Send;

    /// Of `wires`, those the device `device`, proved on a connection, may be
    /// served (what [`Replica::vet`] decides for a proof already checked).
    fn serving(
        &self,
        device: Certifier,
        wires: Vec<WireId>,
    ) -> impl Future<Output = hearth_store::Result<Vec<WireId>>> + Send;

    /// This device's certificate of the relay `relay` (peer id bytes) its
    /// user configured (`None`: a relay certifies nobody).
    fn relay_cert(&self, relay: Vec<u8>) -> impl Future<Output = hearth_store::Result<Option<RelayCert>>> + Send;

    /// A relay's certificates to show for `wires` (a member has none).
    fn relay_certs(&self, wires: Vec<WireId>) -> impl Future<Output = hearth_store::Result<Vec<RelayCert>>> + Send;

    /// Keep a certificate of this relay (`me`: its peer id bytes) for
    /// `wires` (a relay; a member keeps none).
    fn certify(
        &self,
        cert: RelayCert,
        me: Vec<u8>,
        wires: Vec<WireId>,
    ) -> impl Future<Output = hearth_store::Result<()>> + Send;

    /// What the new device of this user whose public keys are `keys` gets
    /// when its link is confirmed: a certificate chain issued by this
    /// device, the name and the channel keys (`None`: this replica links no
    /// devices, as a relay).
    fn link_bundle(
        &self,
        keys: DevicePublic,
    ) -> impl Future<Output = hearth_store::Result<Option<hearth_core::LinkBundle>>> + Send {
        let _ = keys;
        async { Ok(None) }
    }

    /// The notices of `user`'s removal from those of `wires` (channels its
    /// device proved but is not served), to hand it (a member's; a relay has
    /// none).
    fn told(
        &self,
        user: hearth_core::UserId,
        wires: Vec<WireId>,
    ) -> impl Future<Output = hearth_store::Result<Vec<RemovedNotice>>> + Send {
        let _ = (user, wires);
        async { Ok(Vec::new()) }
    }

    /// Take notices of this user's removal a peer handed (a member's store
    /// checks and keeps them, and writes no more in those channels): how
    /// many stand.
    fn take_told(&self, notices: Vec<RemovedNotice>) -> impl Future<Output = hearth_store::Result<u32>> + Send {
        let _ = notices;
        async { Ok(0) }
    }

    /// Let this device's own entries leave as soon as they are in the
    /// replica's log, before they are durable
    /// ([`hearth_store::Store::send_early`]); `true` if they will. The
    /// default (a relay, which writes no entries of its own) does nothing.
    fn send_early(&self) -> impl Future<Output = hearth_store::Result<bool>> + Send {
        async { Ok(false) }
    }

    /// Events, from now on.
    fn subscribe(&self) -> ReplicaEvents;
}

fn unknown_channel(e: &hearth_store::Error) -> bool {
    matches!(e, hearth_store::Error::NotFound { what: "channel", .. })
}

impl Replica for Store {
    fn is_relay(&self) -> bool {
        false
    }

    async fn send_early(&self) -> hearth_store::Result<bool> {
        Store::send_early(self).await
    }

    async fn vectors(&self) -> hearth_store::Result<Vec<(WireId, Vector)>> {
        Store::vectors(self).await
    }

    async fn access_keys(&self) -> hearth_store::Result<Vec<(WireId, SecretKey)>> {
        Store::access_keys(self).await
    }

    async fn grant(&self, _: Vec<(WireId, SecretKey)>) -> hearth_store::Result<Option<Vec<(WireId, Vector)>>> {
        Ok(None)
    }

    async fn admit(&self, req: hearth_store::JoinRequest) -> hearth_store::Result<Option<Vec<u8>>> {
        Store::admit(self, req).await.map(Some)
    }

    async fn entries_after(
        &self,
        wire: WireId,
        have: Vector,
        max_bytes: usize,
        max_entries: usize,
    ) -> hearth_store::Result<Option<EntryBatch>> {
        match Store::entries_after(self, wire, have, max_bytes, max_entries).await {
            Err(e) if unknown_channel(&e) => Ok(None),
            other => other.map(Some),
        }
    }

    async fn ingest(&self, wire: WireId, entries: Vec<Vec<u8>>) -> hearth_store::Result<Option<IngestReport>> {
        match Store::ingest(self, wire, entries).await {
            Err(e) if unknown_channel(&e) => Ok(None),
            other => other.map(Some),
        }
    }

    async fn prepare(&self, wire: WireId, entries: Vec<Vec<u8>>) {
        Store::prepare(self, wire, entries).await
    }

    async fn notices(&self) -> hearth_store::Result<Vec<(WireId, Vec<u8>)>> {
        Store::revocation_notices(self).await
    }

    async fn note(
        &self,
        _: Vec<Vec<u8>>,
        _: Vec<RemovalNotice>,
        _: Vec<TextDrop>,
        _: Option<Certifier>,
    ) -> hearth_store::Result<Option<u32>> {
        // A member reads revocations and removals from the roster, signed in
        // its feeds, and drops texts when the delete arrives.
        Ok(None)
    }

    async fn drops(&self) -> hearth_store::Result<Vec<TextDrop>> {
        Store::text_drops(self).await
    }

    async fn removals(&self) -> hearth_store::Result<Vec<RemovalNotice>> {
        Store::removal_notices(self).await
    }

    async fn who(
        &self,
        role: WhoRole,
        nonce: Nonce,
        ends: Ends,
        matched: Vec<u8>,
        with_chain: bool,
    ) -> hearth_store::Result<Option<Who>> {
        Store::sync_who(self, role, nonce, ends, matched, with_chain)
            .await
            .map(Some)
    }

    async fn vet(&self, claim: Claim, wires: Vec<WireId>) -> hearth_store::Result<Vetting> {
        Store::vet(self, claim, wires).await
    }

    async fn serving(&self, device: Certifier, wires: Vec<WireId>) -> hearth_store::Result<Vec<WireId>> {
        Store::serving(self, device, wires).await
    }

    async fn relay_cert(&self, relay: Vec<u8>) -> hearth_store::Result<Option<RelayCert>> {
        Store::relay_cert(self, relay).await.map(Some)
    }

    async fn link_bundle(&self, keys: DevicePublic) -> hearth_store::Result<Option<hearth_core::LinkBundle>> {
        Store::link_bundle(self, keys).await.map(Some)
    }

    async fn told(&self, user: hearth_core::UserId, wires: Vec<WireId>) -> hearth_store::Result<Vec<RemovedNotice>> {
        Store::told(self, user, wires).await
    }

    async fn take_told(&self, notices: Vec<RemovedNotice>) -> hearth_store::Result<u32> {
        Store::take_told(self, notices).await
    }

    async fn relay_certs(&self, _: Vec<WireId>) -> hearth_store::Result<Vec<RelayCert>> {
        Ok(Vec::new())
    }

    async fn certify(&self, _: RelayCert, _: Vec<u8>, _: Vec<WireId>) -> hearth_store::Result<()> {
        Ok(())
    }

    fn subscribe(&self) -> ReplicaEvents {
        ReplicaEvents::of_store(Store::subscribe(self))
    }
}

/// A replica with no channels: for a node that only links a new device.
#[derive(Clone, Debug, Default)]
pub struct Detached;

impl Replica for Detached {
    fn is_relay(&self) -> bool {
        false
    }

    async fn vectors(&self) -> hearth_store::Result<Vec<(WireId, Vector)>> {
        Ok(Vec::new())
    }

    async fn access_keys(&self) -> hearth_store::Result<Vec<(WireId, SecretKey)>> {
        Ok(Vec::new())
    }

    async fn grant(&self, _: Vec<(WireId, SecretKey)>) -> hearth_store::Result<Option<Vec<(WireId, Vector)>>> {
        Ok(None)
    }

    async fn admit(&self, _: hearth_store::JoinRequest) -> hearth_store::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    async fn entries_after(
        &self,
        _: WireId,
        _: Vector,
        _: usize,
        _: usize,
    ) -> hearth_store::Result<Option<EntryBatch>> {
        Ok(None)
    }

    async fn notices(&self) -> hearth_store::Result<Vec<(WireId, Vec<u8>)>> {
        Ok(Vec::new())
    }

    async fn note(
        &self,
        _: Vec<Vec<u8>>,
        _: Vec<RemovalNotice>,
        _: Vec<TextDrop>,
        _: Option<Certifier>,
    ) -> hearth_store::Result<Option<u32>> {
        Ok(None)
    }

    async fn drops(&self) -> hearth_store::Result<Vec<TextDrop>> {
        Ok(Vec::new())
    }

    async fn removals(&self) -> hearth_store::Result<Vec<RemovalNotice>> {
        Ok(Vec::new())
    }

    async fn who(&self, _: WhoRole, _: Nonce, _: Ends, _: Vec<u8>, _: bool) -> hearth_store::Result<Option<Who>> {
        Ok(None)
    }

    async fn vet(&self, _: Claim, _: Vec<WireId>) -> hearth_store::Result<Vetting> {
        Ok(Vetting::Allowed {
            wires: Vec::new(),
            device: None,
        })
    }

    async fn serving(&self, _: Certifier, _: Vec<WireId>) -> hearth_store::Result<Vec<WireId>> {
        Ok(Vec::new())
    }

    async fn relay_cert(&self, _: Vec<u8>) -> hearth_store::Result<Option<RelayCert>> {
        Ok(None)
    }

    async fn relay_certs(&self, _: Vec<WireId>) -> hearth_store::Result<Vec<RelayCert>> {
        Ok(Vec::new())
    }

    async fn certify(&self, _: RelayCert, _: Vec<u8>, _: Vec<WireId>) -> hearth_store::Result<()> {
        Ok(())
    }

    async fn ingest(&self, _: WireId, _: Vec<Vec<u8>>) -> hearth_store::Result<Option<IngestReport>> {
        Ok(None)
    }

    fn subscribe(&self) -> ReplicaEvents {
        ReplicaEvents::new(broadcast::channel(1).1)
    }
}
