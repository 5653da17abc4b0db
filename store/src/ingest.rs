//! Verified ingest of a peer's entries (what sync hands the store; the rest
//! of what it needs is `crate::replica`).
//!
//! Ingest trusts nothing: every entry is decoded with a size cap, its signature
//! checked, its place in its feed's hash chain checked (no gap, no fork, no
//! device claimed by two users), its body opened with the channel key (AEAD) and
//! its automerge change checked against what its writer may touch. Accepted
//! entries of one call are applied with one automerge call per epoch and written
//! as one sled batch, durable at the next checkpoint (the sender keeps every
//! entry, so an acknowledgement lost to a crash is only asked for again).

use std::collections::{BTreeMap, BTreeSet};

use hearth_core::{
    ChangeEffects, ChannelId, ChannelKeys, DeviceId, Envelope, Epoch, Fork, ForkProof, META_EPOCH, MessageId,
    Timestamp, UserId, Vector, WireId, decode_change_effects,
};

use crate::admit::{Admission, Feeds, Head, Refusal, Rejection, Verdict};
use crate::channel::FeedHead;
use crate::engine::{Engine, now_ms, summary_row};
use crate::error::{Error, Result};
use crate::layout::*;
use crate::replica::StoreEvent;

impl Engine {
    /// Keep the first proof of each forked feed (sled row and log record)
    /// and tell subscribers.
    fn keep_forks(&mut self, channel: ChannelId, wire: &WireId, forks: Vec<ForkProof>) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut events = Vec::new();
        for proof in forks {
            let Ok(fork) = proof.check() else { continue };
            let k = prefixed(T_FORKS, wire, &fork.device);
            if self.tree.get(k)?.is_some() || events.iter().any(|e: &Fork| e.device == fork.device) {
                continue;
            }
            let bytes = proof.encode();
            self.log_record(crate::log::kind::FORK, &bytes);
            batch.insert(&k[..], bytes);
            events.push(fork);
        }
        if events.is_empty() {
            return Ok(());
        }
        self.write_log_batch(&mut batch)?;
        self.tree.apply_batch(batch)?;
        self.dirty = true;
        for fork in events {
            let _ = self.events.send(StoreEvent::Forked {
                channel,
                user: fork.user,
                device: fork.device,
                seq: fork.seq,
            });
        }
        Ok(())
    }
}

/// What [`crate::Store::ingest`] did with a batch of entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Entries verified and stored.
    pub accepted: usize,
    /// Entries already held (same bytes).
    pub duplicates: usize,
    /// Entries refused; nothing of them was stored.
    pub rejected: Vec<Rejection>,
    /// The channel's vector after the batch (what to acknowledge).
    pub vector: Vector,
    /// Messages that arrived (posts of accepted entries).
    pub messages: usize,
    /// For each writing device with new messages, its newest one now held
    /// (what this device's delivery receipt says).
    pub newest: BTreeMap<DeviceId, MessageId>,
    /// A member device that may lack a key generation this device holds
    /// appeared: key shares are owed (written with the owed receipts).
    pub keys_owed: bool,
    /// Entries taken past a removal's cut: applied, their messages hidden
    /// (see `crate::cuts`).
    pub cut: usize,
    /// Accepted entries of epochs being read whose changes make posts
    /// alone: shown from their posts at once, and applied to their epoch's
    /// document with others once something needs it (ARCHITECTURE.md,
    /// "Sync").
    pub kept_out: usize,
}

pub(crate) struct Accepted {
    device: DeviceId,
    user: UserId,
    seq: u64,
    bytes: Vec<u8>,
    change: automerge::Change,
    pub(crate) effects: ChangeEffects,
    /// The texts of its segments that its change names.
    texts: Vec<hearth_core::Content>,
}

/// The texts an entry's pack or segments carry, each for the message its
/// change names (format 5: by slot, checked against the root in its body;
/// none when the pack does not open).
fn packed_texts(
    env: &Envelope,
    keys: &hearth_core::ChannelKeys,
    root: Option<&[u8; 32]>,
    effects: &ChangeEffects,
) -> Vec<hearth_core::Content> {
    if env.header.version >= hearth_core::ENVELOPE_V5 {
        env.open_slots(keys, root, &effects.slots).unwrap_or_default()
    } else {
        env.open_texts(keys)
    }
}

/// An entry opened before the batch reached the store's thread
/// ([`crate::Store::ingest`] opens a catch-up's on worker threads while the
/// store waits, `crate::opener`): what the store would find itself, since it
/// is a function of the entry's bytes and the keys that opened it alone.
/// Where it stands in its feed, and every check that needs the store, is
/// still the store's.
pub(crate) struct Opened {
    epoch: Epoch,
    change: automerge::Change,
    effects: ChangeEffects,
    root: Option<[u8; 32]>,
    /// `None` until opened ([`packed_texts`]).
    packed: Option<Vec<hearth_core::Content>>,
    /// The key its signature verifies under, when it was checked: the
    /// user's for a format 1 entry, else the device key its chain
    /// certifies or the one its feed was known by.
    signed: Option<[u8; 32]>,
    /// The device key its own certificate chain certifies.
    carried: Option<[u8; 32]>,
    device: DeviceId,
}

impl Opened {
    /// The device key its chain certifies, with the device.
    pub(crate) fn carried(&self) -> Option<(DeviceId, [u8; 32])> {
        self.carried.map(|k| (self.device, k))
    }

    /// The key its signature was checked under, if it was.
    #[cfg(test)]
    pub(crate) fn signed(&self) -> Option<[u8; 32]> {
        self.signed
    }
}

/// An entry as [`Engine::ingest_opened`] takes it: its bytes, and what was
/// opened of it ahead (`None`: the store opens it).
pub(crate) type ToIngest = (Vec<u8>, Option<Box<Opened>>);

/// Open an entry the way the store does ([`Opened`]), and check its
/// signature under the key its chain certifies or, without one, the key
/// `key_of` knows its feed by; `None` when anything fails (also a stub, or
/// an entry of another channel): the store then opens it itself and says
/// why it refuses it.
pub(crate) fn open_ahead(
    keys: &ChannelKeys,
    bytes: &[u8],
    key_of: impl Fn(&DeviceId) -> Option<[u8; 32]>,
) -> Option<Box<Opened>> {
    let env = Envelope::decode(bytes).ok()?;
    if env.header.wire != keys.wire() || env.pruned.is_some() || keys.opening_keys(env.header.generation).is_empty() {
        return None;
    }
    let (body, root) = env.open_full(keys).ok()?;
    let (change, effects) = decode_change_effects(&body.change, &env.header.device, &env.header.user).ok()?;
    let packed = packed_texts(&env, keys, root.as_ref(), &effects);
    let carried = env.device_key().ok().flatten();
    let signed = if env.header.version < hearth_core::ENVELOPE_V2 {
        env.verify().is_ok().then_some(env.header.user.0)
    } else {
        carried
            .or_else(|| key_of(&env.header.device))
            .filter(|k| env.verify_with(k).is_ok())
    };
    Some(Box::new(Opened {
        epoch: body.epoch,
        change,
        effects,
        root,
        packed: Some(packed),
        signed,
        carried,
        device: env.header.device,
    }))
}

/// The texts an entry carries (`opened`: [`Envelope::open_texts_checked`])
/// that its change names (each checked against its id), and the entry's
/// bytes with only those texts. A format 5 pack whose sealer left a key
/// node over a slot it dropped is punctured there first (`root`: its
/// body's).
fn entry_texts(
    env: &Envelope,
    bytes: Vec<u8>,
    keys: &hearth_core::ChannelKeys,
    (effects, root): (&ChangeEffects, Option<&[u8; 32]>),
    opened: Vec<hearth_core::Content>,
) -> (Vec<hearth_core::Content>, Vec<u8>) {
    if !env.holds_texts() {
        return (Vec::new(), bytes);
    }
    let some_dropped = env
        .pack
        .as_deref()
        .and_then(hearth_core::textpack::gone_of)
        .unwrap_or(0)
        > 0;
    // (Also a pack whose texts are all dropped: it still holds its nodes.)
    if let (true, Some(root)) = (some_dropped, root) {
        let mut mended = env.clone();
        if let Ok(true) = mended.puncture_dropped(keys, root) {
            let bytes = mended.encode();
            return entry_texts(&mended, bytes, keys, (effects, None), opened);
        }
    }
    // A format 5 pack's texts are each the one its change puts in that
    // slot (`Envelope::open_slots` checked it): all named.
    if env.header.version >= hearth_core::ENVELOPE_V5 && !opened.is_empty() {
        return (opened, bytes);
    }
    let in_change: std::collections::HashSet<&(hearth_core::MessageId, hearth_core::ContentId)> =
        effects.texts.iter().collect();
    let texts: Vec<hearth_core::Content> = opened
        .iter()
        .filter(|c| in_change.contains(&(c.msg, c.id())))
        .cloned()
        .collect();
    let all_named = match env.pack {
        Some(_) => !texts.is_empty() && texts.len() == opened.len(),
        None => texts.len() == env.held_segments(),
    };
    if all_named {
        return (texts, bytes);
    }
    // Texts its change does not name (in a pack a member sealed), a pack
    // that does not open, or a segment its author sealed wrong: left out
    // here, and the entry still verifies.
    let named: std::collections::HashSet<hearth_core::ContentId> = texts.iter().map(|c| c.id()).collect();
    let mut kept = env.clone();
    if kept.retain_texts(keys, |id| named.contains(id)).is_err() || !kept.holds_texts() {
        kept.strip_texts();
        return (Vec::new(), kept.encode());
    }
    (texts, kept.encode())
}

/// An entry taken into its feed sealed, under a key generation this device
/// does not hold yet (`T_UNOPENED`).
struct Held {
    device: DeviceId,
    seq: u64,
    generation: u32,
    /// `crate::cuts::WAITING` (for its key).
    state: u8,
    bytes: Vec<u8>,
}

/// What one ingest stores.
struct Incoming {
    /// Opened entries, by epoch.
    accepted: BTreeMap<Epoch, Vec<Accepted>>,
    /// Entries held sealed.
    held: Vec<Held>,
    /// The feeds' new heads.
    heads: BTreeMap<DeviceId, FeedHead>,
    /// New device chains.
    chains: BTreeMap<DeviceId, Vec<hearth_core::device::DeviceCert>>,
    /// Key generations were taken from packages.
    keys_changed: bool,
    /// Entries held sealed earlier, opened now: in the feed and the log
    /// already.
    late: bool,
    /// Entries of dead epochs, cut to stubs: (device, seq, stub bytes).
    stubs: Vec<(DeviceId, u64, Vec<u8>)>,
    /// Epochs the batch brought stubs of.
    stubbed: BTreeSet<Epoch>,
    /// Epochs that die with this batch (stubs of them came, in it or
    /// before).
    kill: BTreeSet<Epoch>,
}

impl Engine {
    /// Verify and store a peer's entries of one channel (see the module docs).
    pub(crate) fn ingest(&mut self, wire: &WireId, entries: Vec<Vec<u8>>) -> Result<IngestReport> {
        self.ingest_opened(wire, entries.into_iter().map(|b| (b, None)).collect())
    }

    /// [`Engine::ingest`], with what was opened of each entry ahead
    /// ([`open_ahead`]) taken instead of opening it again.
    pub(crate) fn ingest_opened(&mut self, wire: &WireId, entries: Vec<ToIngest>) -> Result<IngestReport> {
        let started = std::time::Instant::now();
        let (count, bytes) = (entries.len(), entries.iter().map(|(b, _)| b.len()).sum::<usize>());
        let res = self.take_entries(wire, entries);
        if self.replaying {
            return res;
        }
        let wire = wire.short();
        match &res {
            Ok(r) => {
                tracing::debug!(
                    %wire,
                    entries = count,
                    bytes,
                    accepted = r.accepted,
                    duplicates = r.duplicates,
                    rejected = r.rejected.len(),
                    messages = r.messages,
                    kept_out = r.kept_out,
                    micros = started.elapsed().as_micros() as u64,
                    "ingest"
                );
                for x in &r.rejected {
                    tracing::warn!(
                        %wire,
                        device = x.device.map(|d| d.to_string()),
                        seq = x.seq,
                        reason = %x.reason,
                        peer_fault = x.is_peer_fault(),
                        "entry rejected"
                    );
                }
            }
            Err(e) => tracing::warn!(%wire, entries = count, error = %e, "ingest failed"),
        }
        res
    }

    /// [`Engine::ingest_opened`], untraced.
    fn take_entries(&mut self, wire: &WireId, entries: Vec<ToIngest>) -> Result<IngestReport> {
        let channel = self.channel_by_wire(wire)?;
        // Replaying the feed log at open brings this device's own entries
        // back; from a peer, they can only be forged.
        let own = (!self.replaying).then(|| self.identity.device());
        let mut admission = Admission::new(*wire, own);
        let mut report = IngestReport::default();
        let mut accepted: BTreeMap<Epoch, Vec<Accepted>> = BTreeMap::new();
        // Bounds on what a writer may claim: no epoch beyond the newest held
        // (or accepted earlier in this batch) plus one, no post stamped
        // further ahead than the allowed skew. The log replayed at open
        // passed them when it was first taken.
        // Epochs known only by their stubs count (a catch-up of dead epochs
        // comes in several batches).
        let mut top = {
            let ch = self.channel(&channel)?;
            [ch.summaries.keys().next_back(), ch.dead.last(), ch.stubbed.last()]
                .into_iter()
                .flatten()
                .max()
                .copied()
                .unwrap_or(META_EPOCH)
        };
        let skew = u64::try_from(self.config.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        let latest = Timestamp(Timestamp::from_millis(now_ms().saturating_add(skew)).0 | 0xffff);
        // An entry of an epoch not reached yet waits, with the rest of its
        // feed, until the other entries of the batch are in (a catch-up
        // brings a feed that jumps from epoch 1 to 4 before the feeds that
        // filled 2 and 3); what still does not fit is refused.
        // Entries of a removed writer past the removal's cut are refused (the
        // log replayed at open holds only what was taken).
        let roster = if self.replaying {
            None
        } else {
            Some(self.roster(&channel).unwrap_or_default())
        };
        // Devices revoked here, also by key or through a revoked device that
        // certified them (`ChannelState::revocations`), with their cuts.
        let revoked = match &roster {
            Some(r) if !r.revoked.is_empty() => self.channel(&channel)?.revocations(r),
            _ => BTreeMap::new(),
        };
        let mut keys_changed = false;
        let mut held = Vec::new();
        // Stubs and entries of dead epochs (see `crate::retention`), kept
        // as stubs, and the epochs of the stubs.
        let mut stubs: Vec<(DeviceId, u64, Vec<u8>)> = Vec::new();
        let mut stubbed: BTreeSet<Epoch> = BTreeSet::new();
        let mut pending = entries;
        loop {
            let mut waiting: Vec<ToIngest> = Vec::new();
            let mut waiting_feeds: BTreeSet<DeviceId> = BTreeSet::new();
            let before = pending.len();
            let mut progressed = false;
            for (bytes, ahead) in pending {
                if !waiting_feeds.is_empty()
                    && let Ok(env) = Envelope::decode(&bytes)
                    && waiting_feeds.contains(&env.header.device)
                {
                    waiting.push((bytes, ahead));
                    continue;
                }
                let ch = self.channel(&channel)?;
                let feeds = MemberFeeds {
                    tree: &self.tree,
                    wire,
                    heads: &ch.heads,
                    chains: &ch.chains,
                };
                let presigned = ahead.as_ref().and_then(|a| a.signed);
                let env = match admission.check_presigned(&feeds, &bytes, presigned)? {
                    Verdict::Next(env) => *env,
                    Verdict::Duplicate => {
                        report.duplicates += 1;
                        continue;
                    }
                    Verdict::Refused(r) => {
                        report.rejected.push(r);
                        continue;
                    }
                };
                // What follows is sealed and signed by the author: a failure
                // is the author's, not the forwarding peer's.
                let h = &env.header;
                // A stub, or any entry of a dead epoch (kept as a stub), is
                // taken into its feed as it is: whether its epoch dies here
                // is decided once the batch is in (below).
                // A stub is bound like any entry: no epoch beyond the newest
                // held (or taken in this batch) plus one.
                if h.version >= hearth_core::ENVELOPE_V3
                    && (env.pruned.is_some() || self.channel(&channel)?.dead.contains(&h.epoch))
                {
                    if h.epoch > top.saturating_add(1) && !self.replaying {
                        waiting_feeds.insert(h.device);
                        waiting.push((bytes, None));
                        continue;
                    }
                    if env.pruned.is_some() {
                        stubbed.insert(h.epoch);
                    }
                    top = top.max(h.epoch);
                    progressed = true;
                    let stub = crate::retention::stub_of(&bytes)?.map_or(bytes, |(_, s)| s);
                    stubs.push((h.device, h.seq, stub.clone()));
                    admission.accept(&env, stub);
                    continue;
                }
                let ch = self.channel(&channel)?;
                // Past a removal's cut: taken and applied as any entry, its
                // messages hidden (`crate::cuts`).
                // So is a revoked device's (by id, by key or through a
                // device that certified it), and a new chain while devices
                // are revoked may put its device behind a cut.
                let revoked_past = revoked.get(&h.device).is_some_and(|(_, upto)| h.seq > *upto);
                if let Some(r) = &roster
                    && (!r.admits(&h.user, &h.device, h.seq)
                        || revoked_past
                        || (!r.revoked.is_empty() && !env.certs.is_empty()))
                {
                    report.cut += 1;
                }
                // Sealed under a key generation not held (yet): taken into its
                // feed sealed, and opened when a package brings the key.
                if ch.keys.opening_keys(h.generation).is_empty() {
                    held.push(Held {
                        device: h.device,
                        seq: h.seq,
                        generation: h.generation,
                        state: crate::cuts::WAITING,
                        bytes: bytes.clone(),
                    });
                    progressed = true;
                    admission.accept(&env, bytes);
                    continue;
                }
                // Every debug build (all the tests) opens an entry opened
                // ahead again, and checks that both agree.
                #[cfg(debug_assertions)]
                if let Some(a) = &ahead {
                    let own = open_ahead(&ch.keys, &bytes, |_| None).expect("what opened ahead opens here");
                    assert_eq!(
                        (a.epoch, a.change.raw_bytes(), &a.effects, a.root, &a.packed),
                        (own.epoch, own.change.raw_bytes(), &own.effects, own.root, &own.packed),
                        "an entry opened ahead differs"
                    );
                }
                let opened = match ahead {
                    Some(a) => Ok(*a),
                    None => env.open_full(&ch.keys).and_then(|(body, root)| {
                        let (change, effects) = decode_change_effects(&body.change, &h.device, &h.user)?;
                        Ok(Opened {
                            epoch: body.epoch,
                            change,
                            effects,
                            root,
                            packed: None,
                            signed: None,
                            carried: None,
                            device: h.device,
                        })
                    }),
                }
                .and_then(|o| {
                    if !self.replaying {
                        o.effects.check_place(o.epoch, &channel, latest)?;
                    }
                    Ok(o)
                });
                match opened {
                    Ok(o) if o.epoch > top.saturating_add(1) && !self.replaying => {
                        waiting_feeds.insert(h.device);
                        waiting.push((bytes, Some(Box::new(o))));
                    }
                    Ok(Opened {
                        epoch,
                        change,
                        effects,
                        root,
                        packed,
                        ..
                    }) => {
                        // A pack that does not open is nobody's provable
                        // fault (nothing about it is signed, and anyone may
                        // drop one): the entry is taken without it, its texts
                        // dropped, as if a forwarder had stripped it.
                        let packed = packed.unwrap_or_else(|| packed_texts(&env, &ch.keys, root.as_ref(), &effects));
                        top = top.max(epoch);
                        progressed = true;
                        let (texts, bytes) = entry_texts(&env, bytes, &ch.keys, (&effects, root.as_ref()), packed);
                        // A device linked through a revoked one (its chain may
                        // come in this very entry) gives no keys.
                        let through_revoked = !revoked.is_empty() && {
                            let chain = if env.certs.is_empty() {
                                admission.new_chains().get(&h.device).map(Vec::as_slice)
                            } else {
                                Some(env.certs.as_slice())
                            };
                            chain.is_some_and(|c| {
                                hearth_core::device::issuers(c)
                                    .iter()
                                    .any(|(i, _)| revoked.get(i).is_some_and(|(u, _)| *u == h.user))
                            })
                        };
                        if !effects.packages.is_empty()
                            && !through_revoked
                            && self.take_keys(channel, (&h.user, &h.device), &effects.packages)
                        {
                            keys_changed = true;
                        }
                        accepted.entry(epoch).or_default().push(Accepted {
                            device: h.device,
                            user: h.user,
                            seq: h.seq,
                            bytes: bytes.clone(),
                            change,
                            effects,
                            texts,
                        });
                        admission.accept(&env, bytes);
                    }
                    Err(e) => report
                        .rejected
                        .push(admission.refuse(&env, Refusal::Content(e.to_string()))),
                }
            }
            if waiting.is_empty() {
                break;
            }
            if !progressed || waiting.len() == before {
                for (bytes, _) in waiting {
                    if let Ok(env) = Envelope::decode(&bytes) {
                        let why = format!("an epoch beyond the newest held ({top}) plus one");
                        report.rejected.push(admission.refuse(&env, Refusal::Content(why)));
                    }
                }
                break;
            }
            pending = waiting;
        }
        let kill = self.epochs_to_kill(&channel, &stubbed, &accepted)?;
        let heads: BTreeMap<DeviceId, FeedHead> = admission
            .heads()
            .iter()
            .map(|(d, h)| {
                (
                    *d,
                    FeedHead {
                        user: h.user,
                        seq: h.seq,
                        hash: h.hash,
                    },
                )
            })
            .collect();
        let chains = admission.new_chains().clone();
        let (_, forks) = admission.into_accepted();
        if !accepted.is_empty() || !held.is_empty() || !stubs.is_empty() || !kill.is_empty() {
            let incoming = Incoming {
                accepted,
                held,
                heads,
                chains,
                keys_changed,
                late: false,
                stubs,
                stubbed,
                kill,
            };
            let meta = incoming.accepted.contains_key(&META_EPOCH);
            let roster_before = meta.then(|| self.roster_mark(&channel));
            self.store_accepted(channel, wire, incoming, &mut report)?;
            if keys_changed {
                self.open_waiting(channel, &mut report)?;
            }
            // The roster, or a removed user's feed, moved: hidden messages
            // are computed again on first use.
            if meta || keys_changed || report.cut > 0 {
                self.channels.get_mut(&channel).expect("checked above").hidden = None;
            }
            // Receipts live in the metadata epoch too: only new membership
            // ops count.
            if roster_before.is_some_and(|b| b != self.roster_mark(&channel)) {
                let _ = self.events.send(StoreEvent::Roster { channel });
                self.refresh_moderators(channel)?;
            }
        }
        if !forks.is_empty() {
            self.keep_forks(channel, wire, forks)?;
        }
        report.vector = self.vector_of(&channel)?;
        Ok(report)
    }

    /// The channel's record (with its key generations) into `batch`, and
    /// into `log_records` unless the log is being replayed.
    fn keys_rows(&mut self, channel: ChannelId, batch: &mut sled::Batch, log_records: &mut Vec<u8>) -> Result<()> {
        let (k, record) = self.channel_record(channel)?;
        batch.insert(&k[..], seal_record(&self.records, &k, &record)?);
        if !self.replaying {
            let sealed = self.seal_log(crate::log::kind::CHANNEL, &record)?;
            crate::log::encode_record(log_records, crate::log::kind::CHANNEL, &sealed);
        }
        Ok(())
    }

    /// Open the entries held sealed whose key generation is now held, and
    /// apply them as if they had just arrived (their messages are announced
    /// then). An entry whose content is refused stays in its feed, marked.
    pub(crate) fn open_waiting(&mut self, channel: ChannelId, report: &mut IngestReport) -> Result<()> {
        let ch = self.channel(&channel)?;
        let wire = ch.keys.wire();
        let mut accepted: BTreeMap<Epoch, Vec<Accepted>> = BTreeMap::new();
        let mut refused = Vec::new();
        for row in self.tree.scan_prefix(channel_prefix(T_UNOPENED, &wire)) {
            let (k, v) = row?;
            if v.len() != 4
                || ch
                    .keys
                    .opening_keys(u32::from_le_bytes(v[..4].try_into().expect("4 bytes")))
                    .is_empty()
            {
                continue;
            }
            let device = DeviceId::from_slice(&k[33..49]).map_err(|_| Error::corrupted("sled key", "unopened row"))?;
            let seq = key_u64(&k)?;
            let bytes = self
                .tree
                .get(feed_key(&wire, &device, seq))?
                .ok_or_else(|| Error::corrupted("feed", "an unopened row names a missing entry"))?
                .to_vec();
            let env = Envelope::decode(&bytes)?;
            let user = env.header.user;
            let opened = env.open_full(&ch.keys).and_then(|(body, root)| {
                let (change, effects) = decode_change_effects(&body.change, &device, &user)?;
                effects.check_place(body.epoch, &channel, Timestamp(u64::MAX))?;
                let packed = packed_texts(&env, &ch.keys, root.as_ref(), &effects);
                Ok((body.epoch, change, effects, packed, root))
            });
            match opened {
                Ok((epoch, change, effects, packed, root)) => {
                    let (texts, bytes) = entry_texts(&env, bytes, &ch.keys, (&effects, root.as_ref()), packed);
                    accepted.entry(epoch).or_default().push(Accepted {
                        device,
                        user,
                        seq,
                        bytes,
                        change,
                        effects,
                        texts,
                    })
                }
                Err(e) => refused.push((k.to_vec(), device, seq, e.to_string())),
            }
        }
        if !refused.is_empty() {
            // Marked as refused (a fifth byte): never applied, kept in the feed.
            let mut batch = sled::Batch::default();
            for (k, device, seq, why) in refused {
                let held = self.tree.get(&k)?.map(|v| v.to_vec()).unwrap_or_default();
                let (generation, _) = crate::cuts::decode_held(&held)?;
                batch.insert(k, crate::cuts::held_value(generation, crate::cuts::REFUSED));
                report.rejected.push(Rejection {
                    device: Some(device),
                    seq: Some(seq),
                    reason: Refusal::Content(why),
                });
            }
            self.tree.apply_batch(batch)?;
            self.dirty = true;
        }
        if accepted.is_empty() {
            return Ok(());
        }
        let incoming = Incoming {
            accepted,
            held: Vec::new(),
            heads: BTreeMap::new(),
            chains: BTreeMap::new(),
            keys_changed: false,
            late: true,
            stubs: Vec::new(),
            stubbed: BTreeSet::new(),
            kill: BTreeSet::new(),
        };
        self.store_accepted(channel, &wire, incoming, report)
    }

    fn store_accepted(
        &mut self,
        channel: ChannelId,
        wire: &WireId,
        incoming: Incoming,
        report: &mut IngestReport,
    ) -> Result<()> {
        let Incoming {
            mut accepted,
            mut held,
            heads,
            chains,
            keys_changed,
            late,
            mut stubs,
            stubbed,
            kill,
        } = incoming;
        // Entries of an epoch that is dead, or dies now, are kept as stubs.
        let dead: Vec<Epoch> = {
            let ch = self.channel(&channel)?;
            accepted
                .keys()
                .filter(|e| kill.contains(e) || ch.dead.contains(e))
                .copied()
                .collect()
        };
        let mut unheld = Vec::new();
        for e in dead {
            for a in accepted.remove(&e).unwrap_or_default() {
                let stub = crate::retention::stub_of(&a.bytes)?.map_or(a.bytes, |(_, s)| s);
                if late {
                    unheld.push((a.device, a.seq));
                }
                stubs.push((a.device, a.seq, stub));
            }
        }
        // So are those held sealed (a key generation not held) whose header
        // names such an epoch: they are never opened.
        let mut kept = Vec::with_capacity(held.len());
        for h in held {
            let stub = match crate::retention::stub_of(&h.bytes)? {
                Some((env, stub))
                    if kill.contains(&env.header.epoch) || self.channel(&channel)?.dead.contains(&env.header.epoch) =>
                {
                    stub
                }
                _ => {
                    kept.push(h);
                    continue;
                }
            };
            stubs.push((h.device, h.seq, stub));
        }
        held = kept;
        let (heads, chains) = (&heads, &chains);
        let meta_touched = accepted.contains_key(&META_EPOCH);
        // Phase 1: apply every epoch's changes. If automerge refuses any,
        // nothing of the batch is kept: every touched document is dropped (it
        // reloads from the log), new epochs are forgotten, nothing is written.
        let mut before = BTreeMap::new();
        let mut failure = None;
        // Epochs whose changes this batch kept out of automerge
        // (`EpochDoc::defer_remote`), with the messages they show.
        let mut kept_out: BTreeMap<Epoch, Vec<hearth_core::Message>> = BTreeMap::new();
        // Deferred epochs (`Engine::deferred`, `Config::lazy_epochs`): an
        // epoch not loaded, first heard of in this session through entries
        // whose posts alone move its counts (posts, edits, reactions: no
        // delete, read marker or metadata), whose entries in this batch are
        // such too, is not applied: its entries are stored and its summary
        // counts their posts (phase 2); its first load applies them all.
        let deferred: BTreeSet<Epoch> = if self.config.lazy_epochs && !self.replaying && !late && report.cut == 0 {
            let ch = self.channel(&channel)?;
            accepted
                .iter()
                .filter(|(e, list)| {
                    **e != META_EPOCH
                        && !self.epochs.contains_key(&(channel, **e))
                        && (!ch.summaries.contains_key(e) || self.deferred.contains(&(channel, **e)))
                        && !ch.cuts.contains_key(e)
                        && list.iter().all(|a| a.effects.counted_by_posts())
                })
                .map(|(e, _)| *e)
                .collect()
        } else {
            BTreeSet::new()
        };
        for (epoch, list) in &accepted {
            if deferred.contains(epoch) {
                continue;
            }
            let existed = self.channel(&channel)?.summaries.contains_key(epoch);
            // A storage error here poisons the store (the caller's `mutate`).
            self.ensure_epoch(channel, *epoch, true)?;
            // Changes of posts alone, by writers the channel knows, into an
            // epoch with no cut: their view is built from their effects
            // (`posts_of`), and automerge gets them later, many at once.
            let shown = if *epoch != META_EPOCH && report.cut == 0 {
                let ch = self.channel(&channel)?;
                let mut shown = Vec::new();
                for a in list {
                    match (ch.devices.get(&a.device) == Some(&a.user))
                        .then(|| crate::epochs::posts_of((&a.user, &a.device), &a.texts, &a.effects))
                        .flatten()
                    {
                        Some(m) if !ch.cuts.contains_key(epoch) => shown.extend(m),
                        _ => {
                            shown.clear();
                            break;
                        }
                    }
                }
                Some(shown).filter(|s| !s.is_empty())
            } else {
                None
            };
            let le = self.epochs.get_mut(&(channel, *epoch)).expect("ensure_epoch loaded it");
            let readers: BTreeMap<UserId, MessageId> = le.view.read_markers().map(|(u, m)| (*u, *m)).collect();
            before.insert(*epoch, (readers, le.view.delivered.clone(), existed));
            for a in list {
                for c in &a.texts {
                    le.segments.entry(c.id()).or_default().push((a.device, a.seq));
                }
                le.doc.add_texts(a.texts.iter().cloned());
            }
            // Kept out one after the other; what cannot be (and what
            // follows it) is applied, with those kept out before it.
            let mut taken = 0;
            if shown.is_some() && !le.queued {
                while taken < list.len() && le.doc.defer_remote(&list[taken].change, &list[taken].effects) {
                    taken += 1;
                }
            }
            if let Some(shown) = shown.filter(|_| taken == list.len()) {
                report.kept_out += list.len();
                kept_out.insert(*epoch, shown);
                continue;
            }
            let changes: Vec<automerge::Change> = list[taken..].iter().map(|a| a.change.clone()).collect();
            if let Err(e) = le.doc.apply_remote(changes) {
                failure = Some(e.to_string());
                break;
            }
        }
        if let Some(why) = failure {
            report.kept_out = 0;
            let ch = self.channels.get_mut(&channel).expect("checked by the caller");
            for (epoch, (_, _, existed)) in &before {
                if !existed {
                    ch.summaries.remove(epoch);
                }
            }
            for epoch in accepted.keys() {
                self.epochs.remove(&(channel, *epoch));
            }
            // The content is the author's (its signature and chain verified):
            // refused, but not held against the peer that forwarded it.
            for a in accepted.values().flatten() {
                report.rejected.push(Rejection {
                    device: Some(a.device),
                    seq: Some(a.seq),
                    reason: Refusal::Content(why.clone()),
                });
            }
            for h in &held {
                report.rejected.push(Rejection {
                    device: Some(h.device),
                    seq: Some(h.seq),
                    reason: Refusal::Content(format!("held with entries refused: {why}")),
                });
            }
            // The stubs count as one (their content is nobody's fault).
            if let Some((device, seq, _)) = stubs.first() {
                report.rejected.push(Rejection {
                    device: Some(*device),
                    seq: Some(*seq),
                    reason: Refusal::Content(format!("{} stubs, with entries refused: {why}", stubs.len())),
                });
            }
            // Keys taken from the batch's packages stay (this device may seal
            // with them already): their record is written on its own.
            if keys_changed {
                let mut batch = sled::Batch::default();
                let mut log_records = Vec::new();
                self.keys_rows(channel, &mut batch, &mut log_records)?;
                self.log_buf.extend_from_slice(&log_records);
                self.write_log_batch(&mut batch)?;
                self.tree.apply_batch(batch)?;
                self.dirty = true;
            }
            return Ok(());
        }
        {
            let ch = self.channels.get_mut(&channel).expect("checked by the caller");
            let mut new_device = false;
            for (d, h) in heads {
                new_device |= ch.devices.insert(*d, h.user).is_none();
            }
            if new_device {
                // A view's retention depends on who may set it.
                self.retention_known.remove(&channel);
            }
        }
        // The feed log gets each feed's entries in seq order (they are grouped
        // by epoch below), so that replaying it never sees a gap.
        // Kept aside until the sled batch is written, so that a failure on
        // the way leaves nothing of this batch queued for the log.
        let mut log_records = Vec::new();
        if !self.replaying && !late {
            let mut order: Vec<(DeviceId, u64, &[u8])> = accepted
                .values()
                .flatten()
                .map(|a| (a.device, a.seq, &a.bytes[..]))
                .chain(held.iter().map(|h| (h.device, h.seq, &h.bytes[..])))
                .chain(stubs.iter().map(|(d, seq, b)| (*d, *seq, &b[..])))
                .collect();
            order.sort_by_key(|(d, seq, _)| (*d, *seq));
            for (_, _, bytes) in order {
                crate::log::encode_record(&mut log_records, crate::log::kind::ENTRY, bytes);
            }
        }
        // Phase 2: views, summaries, rows, events.
        let me = self.identity.user();
        let mut batch = sled::Batch::default();
        // The channel's front page goes with whatever this batch changes.
        self.unfront(wire, &mut batch);
        let mut events = Vec::new();
        // Chat events, built only while an app listens.
        let listening = self.chat.listening();
        let mut chat = Vec::new();
        for h in &held {
            batch.insert(&feed_key(wire, &h.device, h.seq)[..], &h.bytes[..]);
            batch.insert(
                &unopened_key(wire, &h.device, h.seq)[..],
                crate::cuts::held_value(h.generation, h.state),
            );
        }
        report.accepted += held.len();
        // Epochs that stubs came for, those that die with this batch, then
        // the stubs.
        let marks = {
            let ch = self.channels.get_mut(&channel).expect("checked by the caller");
            let before = ch.stubbed.len();
            ch.stubbed.extend(stubbed.iter().filter(|e| !ch.dead.contains(e)));
            ch.stubbed.len() != before
        };
        if marks && kill.is_empty() {
            self.put_epoch_marks(&channel, &mut batch)?;
        }
        let mut dropped = 0;
        for e in &kill {
            if !self.channel(&channel)?.dead.contains(e) {
                dropped += self.kill_epoch(channel, *e, &mut batch)?;
            }
        }
        self.note_dropped(&mut batch, dropped)?;
        for (device, seq, stub) in &stubs {
            batch.insert(&feed_key(wire, device, *seq)[..], &stub[..]);
        }
        for (device, seq) in &unheld {
            batch.remove(&unopened_key(wire, device, *seq)[..]);
        }
        report.accepted += stubs.len();
        if late {
            for a in accepted.values().flatten() {
                batch.remove(&unopened_key(wire, &a.device, a.seq)[..]);
            }
        }
        // Bytes of texts this batch stores without (below), dead in the log.
        let mut dropped_here = 0u64;
        #[cfg(debug_assertions)]
        let mut stored_here = BTreeSet::new();
        for (epoch, mut list) in accepted {
            let lazy = deferred.contains(&epoch);
            // A delete by someone other than its message's writer needs the
            // channel's moderators (an admin's counts).
            if !lazy {
                self.ensure_moderators(channel, epoch)?;
            }
            let ch = self.channels.get_mut(&channel).expect("checked by the caller");
            let mut le = if lazy {
                None
            } else {
                Some(self.epochs.get_mut(&(channel, epoch)).expect("loaded in phase 1"))
            };
            let (readers_before, delivered_before, _) = before.remove(&epoch).unwrap_or_default();
            if let Some(le) = le.as_deref_mut() {
                let mut effects = ChangeEffects::default();
                for a in &list {
                    effects.merge(a.effects.clone());
                }
                let queued = le.doc.has_queued();
                if let Some(shown) = kept_out.remove(&epoch) {
                    for m in shown {
                        le.view.insert(m);
                    }
                    // Every debug build (all the tests) checks the view
                    // against a copy of the document with the changes applied.
                    #[cfg(debug_assertions)]
                    {
                        let mut applied = le.doc.clone();
                        assert_eq!(le.view, applied.view(&ch.devices), "a view of kept-out posts diverged");
                        assert!(!applied.is_broken(), "kept-out changes did not apply");
                    }
                } else if epoch == META_EPOCH
                    || effects.meta
                    || le.queued
                    || queued
                    || effects.messages.len() > INCREMENTAL_MAX
                {
                    le.view = le.doc.view(&ch.devices);
                } else {
                    le.doc.refresh_view(&mut le.view, &effects, &ch.devices);
                    // Every debug build (all the tests) checks the shortcut against
                    // the rebuild.
                    debug_assert_eq!(le.view, le.doc.view(&ch.devices), "incremental view diverged");
                }
                le.queued = queued;
                // A delete that counts drops the message's texts (`crate::prune`),
                // also one that arrived before the text it deletes.
                for msg in &effects.messages {
                    if le.view.is_deleted(msg) && !le.doc.text_ids(msg).is_empty() {
                        self.prune_queue.push((channel, epoch, *msg));
                    }
                }
                // A text of a message this batch finds deleted (an edit made
                // before the delete, arriving after it) never reaches a stored
                // row: its entry is stored without it, in this very batch. Pruned
                // after the batch, a crash in between could leave it in a row
                // that nothing prunes again: loaded from its pack, an older
                // edit's text is named by no message the document points at.
                for a in &mut list {
                    let gone: Vec<hearth_core::ContentId> = a
                        .texts
                        .iter()
                        .filter(|c| le.view.is_deleted(&c.msg))
                        .map(hearth_core::Content::id)
                        .collect();
                    if gone.is_empty() {
                        continue;
                    }
                    let mut env = Envelope::decode(&a.bytes)?;
                    env.retain_texts(&ch.keys, |id| !gone.contains(id))?;
                    let now = env.encode();
                    if now != a.bytes {
                        dropped_here += a.bytes.len() as u64;
                        if env.header.version >= hearth_core::ENVELOPE_V4 {
                            crate::prune::keep_drop(&mut batch, &env);
                            self.drops_due.insert(*wire);
                        }
                        a.bytes = now;
                    }
                }
            }
            let new = !ch.summaries.contains_key(&epoch);
            let s = ch.summaries.entry(epoch).or_default();
            for a in &list {
                #[cfg(debug_assertions)]
                stored_here.insert((a.device, a.seq));
                batch.insert(&feed_key(wire, &a.device, a.seq)[..], &a.bytes[..]);
                s.entries += 1;
                batch.insert(&elog_key(wire, epoch, s.entries)[..], &elog_value(&a.device, a.seq)[..]);
                for p in &a.effects.posts {
                    self.hlc.observe(p.timestamp());
                }
                report.messages += a.effects.posts.len();
                if lazy {
                    s.count_posts(&a.user, &me, &a.effects);
                }
                if let Some(last) = a.effects.posts.iter().max() {
                    let e = report.newest.entry(a.device).or_insert(*last);
                    *e = (*e).max(*last);
                }
                if !a.effects.posts.is_empty() {
                    events.push(crate::StoreEvent::Received {
                        channel,
                        author: a.user,
                        device: a.device,
                        messages: a.effects.posts.clone(),
                    });
                }
                if listening {
                    crate::events::of_remote_change(channel, a.user, &a.effects, &mut chat);
                }
            }
            report.accepted += list.len();
            if let Some(le) = &le {
                s.refresh(&le.view, &me);
            }
            let (k, v) = summary_row(&self.records, wire, epoch, s)?;
            batch.insert(&k[..], v);
            self.summary_rows.remove_in(wire, &mut batch);
            let Some(le) = le else {
                let kept = list
                    .into_iter()
                    .map(|a| crate::engine::CachedEntry {
                        device: a.device,
                        user: a.user,
                        seq: a.seq,
                        change: a.change,
                        texts: a.texts,
                        effects: a.effects,
                    })
                    .collect();
                self.cache_deferred(channel, epoch, new, kept);
                continue;
            };
            for ((user, device), marks) in &le.view.delivered {
                for (author, up_to) in marks {
                    let before = delivered_before.get(&(*user, *device)).and_then(|m| m.get(author));
                    if before.is_none_or(|b| b < up_to) {
                        events.push(crate::StoreEvent::Delivered {
                            channel,
                            user: *user,
                            device: *device,
                            author: *author,
                            up_to: *up_to,
                        });
                        if listening {
                            chat.push(crate::ChatEvent::Delivered {
                                channel,
                                user: *user,
                                device: *device,
                                author: *author,
                                up_to: *up_to,
                            });
                        }
                    }
                }
            }
            for (u, m) in le.view.read_markers() {
                if readers_before.get(u).is_none_or(|b| b < m) {
                    events.push(crate::StoreEvent::Read {
                        channel,
                        user: *u,
                        up_to: *m,
                    });
                }
            }
        }
        self.deferred.extend(deferred.into_iter().map(|e| (channel, e)));
        // What the batch shows is told now, before its rows and log record
        // are written: the views hold it, and a reader's query queues behind
        // this ingest on the store's thread. Taken entries are durable only
        // at the next checkpoint either way, so telling first weakens no
        // promise; on a live path it saves the sled batch's time (150 to
        // 400 us). A failure below poisons the store, as before. Chat
        // events that name members joining or leaving wait for the end:
        // they are checked against the roster as this batch leaves it.
        for e in events {
            let _ = self.events.send(e);
        }
        let membership = chat.iter().any(|e| {
            matches!(
                e,
                crate::ChatEvent::MemberJoined { .. } | crate::ChatEvent::MemberLeft { .. }
            )
        });
        let mut chat_late = None;
        if listening && membership {
            chat_late = Some(chat);
        } else if listening {
            self.send_remote_chat(channel, chat, report.accepted as u64, report.messages as u64)?;
        }
        for (d, h) in heads {
            batch.insert(&head_key(wire, d)[..], postcard::to_stdvec(h).expect("head encodes"));
            let ch = self.channels.get_mut(&channel).expect("checked by the caller");
            let old = ch.heads.insert(*d, *h);
            self.root_head_moved(wire, d, old.as_ref(), h);
        }
        for (d, chain) in chains {
            let Some(key) = crate::admit::chain_key(chain) else {
                continue;
            };
            let k = prefixed(T_CHAINS, wire, d);
            batch.insert(
                &k[..],
                seal_record(&self.records, &k, &crate::engine::encode_chain(chain))?,
            );
            let ch = self.channels.get_mut(&channel).expect("checked by the caller");
            ch.chains.insert(*d, (key, chain.clone()));
        }
        // A new chain may name a device linked through a revoked one: the
        // roster's fold then refuses its ops.
        if !chains.is_empty() {
            let ch = self.channels.get(&channel).expect("checked by the caller");
            let issuers = ch.issuers();
            if let Some(le) = self.epochs.get_mut(&(channel, META_EPOCH))
                && le.doc.set_issuers(issuers)
            {
                le.view = le.doc.view(&ch.devices);
            }
        }
        if keys_changed {
            self.keys_rows(channel, &mut batch, &mut log_records)?;
        }
        // A new device of the channel may lack a generation held here, a
        // generation just taken may be lacking on devices known here, and a
        // roster change may call for a rotation.
        if keys_changed || !chains.is_empty() || meta_touched {
            self.shares_due.insert(channel);
            report.keys_owed |= keys_changed || !chains.is_empty() || self.roster_has_outsiders(&channel);
        }
        self.put_root(&mut batch)?;
        let ch = self.channels.get_mut(&channel).expect("checked by the caller");
        if let Some((&e, s)) = ch.summaries.iter().next_back().filter(|(e, _)| **e != META_EPOCH) {
            ch.current = (e, s.messages);
        }
        // The receipts these messages call for are owed from now on, in the
        // same batch as the messages: a crash before they are written owes
        // them still.
        let mut owed_more = false;
        for (d, m) in &report.newest {
            if !self.identity.is_this_device(d) && ch.owed.get(d).is_none_or(|o| o < m) {
                ch.owed.insert(*d, *m);
                owed_more = true;
            }
        }
        if owed_more {
            crate::engine::put_owed(&mut batch, &self.records, wire, &ch.owed)?;
        }
        batch.insert(META_HLC, hlc_value(&self.records, self.hlc.last().0)?);
        self.note_dropped(&mut batch, dropped_here)?;
        self.log_buf.extend_from_slice(&log_records);
        crash_point!("ingest.before_log");
        self.write_log_batch(&mut batch)?;
        crash_point!("ingest.log_written");
        self.tree.apply_batch(batch)?;
        crash_point!("ingest.applied");
        let drops_in = std::mem::take(&mut self.drops_due);
        self.cap_drops(drops_in)?;
        // Durable at the next checkpoint (at most `checkpoint_interval` away,
        // and before any entry of this device leaves it). An acknowledgement
        // sent before that and lost to a crash costs nothing: the sender keeps
        // every entry, and the lower vector after the restart asks for it again.
        self.dirty = true;
        self.run_prunes()?;
        #[cfg(debug_assertions)]
        self.assert_stored_pruned(wire, &stored_here);
        self.apply_prune_rows()?;
        let _ = self.events.send(crate::StoreEvent::Appended {
            channel,
            wire: *wire,
            local: false,
            outgoing: None,
        });
        if let Some(chat) = chat_late {
            self.send_remote_chat(channel, chat, report.accepted as u64, report.messages as u64)?;
        }
        Ok(())
    }

    /// Send a peer's batch's chat events, then its progress. A roster op
    /// the roster's fold refused (not allowed, or undone) says nothing.
    fn send_remote_chat(
        &mut self,
        channel: ChannelId,
        mut chat: Vec<crate::ChatEvent>,
        entries: u64,
        messages: u64,
    ) -> Result<()> {
        use crate::ChatEvent::{MemberJoined, MemberLeft};
        if chat
            .iter()
            .any(|e| matches!(e, MemberJoined { .. } | MemberLeft { .. }))
        {
            let members = self.members(&channel)?;
            chat.retain(|e| match e {
                MemberJoined { user, .. } => members.contains_key(user),
                MemberLeft { user, .. } => !members.contains_key(user),
                _ => true,
            });
        }
        if entries > 0 {
            chat.push(crate::ChatEvent::Received {
                channel,
                entries,
                messages,
            });
        }
        self.chat.send(chat);
        Ok(())
    }
}

/// Above this many touched messages, rebuilding the epoch's view in one pass is
/// cheaper than re-deriving each message (a catch-up batch).
const INCREMENTAL_MAX: usize = 32;

/// A member's stored feeds of one channel, for [`Admission`].
struct MemberFeeds<'a> {
    tree: &'a sled::Tree,
    wire: &'a WireId,
    heads: &'a BTreeMap<DeviceId, FeedHead>,
    chains: &'a crate::admit::DeviceChains,
}

impl Feeds for MemberFeeds<'_> {
    fn head(&self, device: &DeviceId) -> Option<Head> {
        self.heads.get(device).map(|h| Head {
            user: h.user,
            seq: h.seq,
            hash: h.hash,
            key: self.chains.get(device).map(|(k, _)| *k),
        })
    }

    fn chain(&self, device: &DeviceId) -> Option<Vec<hearth_core::device::DeviceCert>> {
        self.chains.get(device).map(|(_, c)| c.clone())
    }

    fn entry(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(feed_key(self.wire, device, seq))?.map(|v| v.to_vec()))
    }
}
