//! The epoch cache: epoch documents loaded on demand (from their snapshot
//! and log tail, or from entries a catch-up deferred), kept up to the
//! cache size, evicted least recently used (`crate::persist`).

use std::collections::{HashMap, HashSet};

use hearth_core::{ChannelId, DeviceId, Envelope, Epoch, EpochDoc, EpochView, META_EPOCH, MessageId, decode_change};

use crate::channel::{ChannelState, EpochSummary};
use crate::engine::*;
use crate::error::{Error, Result};
use crate::layout::*;

impl Engine {
    /// Make sure an epoch is in memory. With `create`, a missing epoch starts
    /// empty; without, a missing epoch is `Ok(false)`.
    pub(crate) fn ensure_epoch(&mut self, channel: ChannelId, epoch: Epoch, create: bool) -> Result<bool> {
        self.clock += 1;
        if let Some(le) = self.epochs.get_mut(&(channel, epoch)) {
            le.used = self.clock;
            return Ok(true);
        }
        let device = self.identity.device();
        let ch = self.channels.get_mut(&channel).ok_or_else(|| Error::NotFound {
            what: "channel",
            id: channel.to_hex(),
        })?;
        let le = match ch.summaries.get(&epoch) {
            None if !create => return Ok(false),
            None => {
                ch.summaries.insert(epoch, EpochSummary::default());
                let mut doc = EpochDoc::new(epoch, &device);
                doc.set_inline_texts(self.identity.device_keys().is_none());
                doc.set_slot_texts(true);
                LoadedEpoch {
                    doc,
                    view: EpochView::default(),
                    used: self.clock,
                    queued: false,
                    segments: HashMap::new(),
                    moderated: false,
                }
            }
            Some(s) => {
                let s = s.clone();
                let cached = self.take_cached(channel, epoch, &s);
                let (doc, segments, changes) = match cached {
                    Some(c) => c,
                    None => self.read_epoch(channel, epoch, &s, &HashSet::new())?,
                };
                let mut doc = self.apply_loaded(channel, epoch, &s, doc, changes)?;
                let ch = self.channels.get_mut(&channel).expect("looked up above");
                doc.set_cuts(ch.cuts.get(&epoch).cloned().unwrap_or_default());
                if epoch == META_EPOCH {
                    doc.set_issuers(ch.issuers());
                }
                let view = doc.view(&ch.devices);
                let queued = doc.has_queued();
                // A deferred epoch's summary counted its posts one by one:
                // from its first load on, the view counts.
                if self.deferred.remove(&(channel, epoch))
                    && let Some(s) = ch.summaries.get_mut(&epoch)
                {
                    s.refresh(&view, &self.identity.user());
                }
                LoadedEpoch {
                    doc,
                    view,
                    used: self.clock,
                    queued,
                    segments,
                    moderated: false,
                }
            }
        };
        if epoch == META_EPOCH {
            self.retention_known.remove(&channel);
        }
        self.epochs.insert((channel, epoch), le);
        self.ensure_moderators(channel, epoch)?;
        self.prune_loaded(channel, epoch)?;
        Ok(true)
    }

    /// An epoch's document as its snapshot has it, with the texts of all
    /// its entries added, and the changes of its entries past the snapshot
    /// but those in `skip`, not applied yet.
    pub(crate) fn read_epoch(
        &self,
        channel: ChannelId,
        epoch: Epoch,
        s: &EpochSummary,
        skip: &HashSet<(DeviceId, u64)>,
    ) -> Result<(EpochDoc, Segments, Vec<EntryChange>)> {
        let device = self.identity.device();
        let ch = self.channel(&channel)?;
        let wire = ch.keys.wire();
        let mut doc = if s.snapshot_chunks > 0 {
            let mut bytes = Vec::new();
            for i in 0..s.snapshot_chunks {
                let k = snap_key(&wire, epoch, i);
                let v = self
                    .tree
                    .get(k)?
                    .ok_or_else(|| Error::corrupted("snapshot", "missing chunk"))?;
                bytes.extend(open_record(&self.records, &k, &v)?);
            }
            EpochDoc::load(epoch, &bytes, &device)?
        } else {
            EpochDoc::new(epoch, &device)
        };
        doc.set_inline_texts(self.identity.device_keys().is_none());
        doc.set_slot_texts(true);
        let mut changes = Vec::new();
        let mut segments = HashMap::new();
        // Every entry of the epoch is read for the texts its segments
        // carry; those past the snapshot also for their changes.
        let from = elog_key(&wire, epoch, 1);
        let to = elog_key(&wire, epoch, u64::MAX);
        for row in self.tree.range(from..=to) {
            let (k, v) = row?;
            let (dev, seq) = decode_elog_value(&v)?;
            if skip.contains(&(dev, seq)) {
                continue;
            }
            let past_snapshot = key_u64(&k)? > s.snapshot_upto;
            let bytes = self
                .tree
                .get(feed_key(&wire, &dev, seq))?
                .ok_or_else(|| Error::corrupted("feed", format!("epoch log names a missing entry {dev}/{seq}")))?;
            let env = Envelope::decode(&bytes)?;
            if env.holds_texts() && env.header.version >= hearth_core::ENVELOPE_V5 {
                // Format 5: the pack names each text's op; their
                // messages are told when a delete needs them.
                let texts = env.open_pack_texts(&ch.keys).unwrap_or_default();
                doc.add_slot_texts(texts.into_iter().inspect(|(id, _)| {
                    segments.entry(*id).or_insert_with(Vec::new).push((dev, seq));
                }));
            } else if env.holds_texts() {
                let texts = env.open_texts(&ch.keys).into_iter().map(|c| (c.id(), c));
                doc.add_texts_with_ids(texts.inspect(|(id, _)| {
                    segments.entry(*id).or_insert_with(Vec::new).push((dev, seq));
                }));
            }
            if !past_snapshot {
                continue;
            }
            let body = env.open(&ch.keys)?;
            if body.epoch != epoch {
                return Err(Error::corrupted(
                    "feed entry",
                    "epoch log and entry disagree on the epoch",
                ));
            }
            let user = ch
                .devices
                .get(&dev)
                .ok_or_else(|| Error::corrupted("feed", "entry of a device with no head"))?;
            if env.header.user != *user {
                return Err(Error::corrupted("feed entry", "signed by another user than its feed's"));
            }
            changes.push((dev, seq, decode_change(&body.change, &dev, user)?));
        }
        Ok((doc, segments, changes))
    }

    /// A deferred epoch's document, texts and changes from what its ingest
    /// kept (`deferred_cache`), if that is every entry of its epoch log and
    /// it has no snapshot (it never had a document); `None` otherwise.
    pub(crate) fn take_cached(
        &mut self,
        channel: ChannelId,
        epoch: Epoch,
        s: &EpochSummary,
    ) -> Option<(EpochDoc, Segments, Vec<EntryChange>)> {
        let cached = self.uncache(channel, epoch)?;
        if !self.deferred.contains(&(channel, epoch)) || s.snapshot_chunks > 0 || cached.len() as u64 != s.entries {
            return None;
        }
        let mut doc = EpochDoc::new(epoch, &self.identity.device());
        doc.set_inline_texts(self.identity.device_keys().is_none());
        doc.set_slot_texts(true);
        let mut segments: Segments = HashMap::new();
        let mut changes = Vec::with_capacity(cached.len());
        for e in cached {
            for c in &e.texts {
                segments.entry(c.id()).or_default().push((e.device, e.seq));
            }
            doc.add_texts(e.texts);
            changes.push((e.device, e.seq, e.change));
        }
        // Every debug build (all the tests) reads the epoch from sled too,
        // and checks that both agree.
        #[cfg(debug_assertions)]
        if let Ok((_, own_segments, own)) = self.read_epoch(channel, epoch, s, &HashSet::new()) {
            let raw = |v: &[EntryChange]| -> Vec<(DeviceId, u64, Vec<u8>)> {
                v.iter().map(|(d, q, c)| (*d, *q, c.raw_bytes().to_vec())).collect()
            };
            assert_eq!(
                raw(&changes),
                raw(&own),
                "a deferred epoch's cache differs from its log"
            );
            assert_eq!(
                segments, own_segments,
                "a deferred epoch's cached texts differ from its entries'"
            );
        }
        Some((doc, segments, changes))
    }

    /// The view of a deferred epoch built from what its ingest decoded and
    /// kept (`deferred_cache`), without applying a change: when every
    /// entry of the epoch is kept, each only makes posts that name their
    /// texts by id or slot (`ChangeEffects::beyond_posts`), every change's
    /// dependencies are among them (automerge would queue none), no post is
    /// made twice and every writer is one the channel knows. Then each post
    /// shows as the document's view would show it: its text (or dropped,
    /// when its entry did not carry it), no edit, reaction or delete, its
    /// replies counted. `None` otherwise: the epoch is loaded as usual.
    ///
    /// The first page after a catch-up reads the newest epochs this way
    /// (about 0.3 ms for 800 messages against 4 to 6 ms to apply and view
    /// them); the epoch is loaded after the reply (`load_answered`).
    pub(crate) fn posts_view(&self, channel: ChannelId, epoch: Epoch) -> Option<EpochView> {
        if !self.deferred.contains(&(channel, epoch)) {
            return None;
        }
        let cached = self.deferred_cache.get(&(channel, epoch))?;
        let ch = self.channels.get(&channel)?;
        let s = ch.summaries.get(&epoch)?;
        if s.snapshot_chunks > 0 || cached.len() as u64 != s.entries || ch.cuts.contains_key(&epoch) {
            return None;
        }
        let hashes: HashSet<automerge::ChangeHash> = cached.iter().map(|e| e.change.hash()).collect();
        // Each actor's changes as automerge takes them: seqs 1, 2, ... with
        // op counters that do not overlap (two of one seq, as a hostile
        // writer can sign, are refused when the epoch is applied).
        let mut actors: HashMap<&automerge::ActorId, Vec<&automerge::Change>> = HashMap::new();
        for e in cached {
            actors.entry(e.change.actor_id()).or_default().push(&e.change);
        }
        for changes in actors.values_mut() {
            changes.sort_by_key(|c| c.seq());
            let mut next_op = 0;
            for (i, c) in changes.iter().enumerate() {
                if c.seq() != i as u64 + 1 || c.start_op().get() < next_op {
                    return None;
                }
                next_op = c.start_op().get() + c.len() as u64;
            }
        }
        let mut seen = HashSet::new();
        let mut view = EpochView::default();
        for e in cached {
            if ch.devices.get(&e.device) != Some(&e.user) || !e.change.deps().iter().all(|d| hashes.contains(d)) {
                return None;
            }
            for m in posts_of((&e.user, &e.device), &e.texts, &e.effects)? {
                if !seen.insert(m.id) {
                    return None;
                }
                view.insert(m);
            }
        }
        // Every debug build (all the tests) applies the epoch too, and
        // checks that both views agree.
        #[cfg(debug_assertions)]
        if let Ok((mut doc, _, changes)) = self.read_epoch(channel, epoch, s, &HashSet::new()) {
            let changes: Vec<automerge::Change> = changes.into_iter().map(|(_, _, c)| c).collect();
            if doc.apply_remote(changes).is_ok() && !doc.has_queued() {
                assert_eq!(
                    view,
                    doc.view(&ch.devices),
                    "a deferred epoch's posts view differs from its document's"
                );
            }
        }
        Some(view)
    }

    /// Load the deferred epochs a query answered from their posts
    /// ([`Engine::posts_view`]), once it has replied. A failure is left for
    /// the next read of the epoch to report.
    pub(crate) fn load_answered(&mut self) {
        for (channel, epoch) in std::mem::take(&mut self.answered_unloaded) {
            if self.deferred.contains(&(channel, epoch)) {
                let _ = self.ensure_epoch(channel, epoch, false);
            }
        }
    }

    /// Keep what the ingest of a deferred epoch's entries decoded
    /// (`deferred_cache`): `new` for an epoch this batch creates, otherwise
    /// only added to an epoch already cached whole. Past
    /// [`DEFERRED_CACHE_BYTES`], the oldest epochs' go.
    pub(crate) fn cache_deferred(&mut self, channel: ChannelId, epoch: Epoch, new: bool, entries: Vec<CachedEntry>) {
        let key = (channel, epoch);
        if !new && !self.deferred_cache.contains_key(&key) {
            return;
        }
        self.deferred_cache_bytes += entries.iter().map(CachedEntry::bytes).sum::<usize>();
        self.deferred_cache.entry(key).or_default().extend(entries);
        while self.deferred_cache_bytes > DEFERRED_CACHE_BYTES {
            let Some(oldest) = self.deferred_cache.keys().min_by_key(|(_, e)| *e).copied() else {
                break;
            };
            self.cache_dropped(oldest.0, oldest.1);
        }
    }

    /// Forget what `deferred_cache` kept of an epoch (it died).
    pub(crate) fn cache_dropped(&mut self, channel: ChannelId, epoch: Epoch) {
        self.uncache(channel, epoch);
    }

    /// Take what `deferred_cache` kept of an epoch out of it.
    pub(crate) fn uncache(&mut self, channel: ChannelId, epoch: Epoch) -> Option<Vec<CachedEntry>> {
        let gone = self.deferred_cache.remove(&(channel, epoch))?;
        self.deferred_cache_bytes = self
            .deferred_cache_bytes
            .saturating_sub(gone.iter().map(CachedEntry::bytes).sum());
        Some(gone)
    }

    /// Apply an epoch's changes read by [`Engine::read_epoch`] in one call.
    ///
    /// Only a deferred epoch (`Engine::deferred`) can hold a change automerge
    /// refuses (an epoch applied on arrival refused it then): its entries
    /// were verified, signed by their authors and stored, but not applied.
    /// Then the changes are applied one at a time from the snapshot, and one
    /// refused is left out of the document (its entry stays in its feed, as
    /// signed; a warning names it). Its author's later changes that depend on
    /// it wait in automerge's queue.
    pub(crate) fn apply_loaded(
        &self,
        channel: ChannelId,
        epoch: Epoch,
        s: &EpochSummary,
        mut doc: EpochDoc,
        changes: Vec<EntryChange>,
    ) -> Result<EpochDoc> {
        let err = match doc.apply_remote(changes.iter().map(|(_, _, c)| c.clone()).collect()) {
            Ok(()) => return Ok(doc),
            Err(e) => e,
        };
        eprintln!("hearth: automerge refused the changes of epoch {epoch} together ({err}); applying them one by one");
        let mut skip = HashSet::new();
        let mut good = Vec::new();
        let (mut doc, _, _) = self.read_epoch(channel, epoch, s, &skip)?;
        for (dev, seq, change) in changes {
            if doc.apply_remote(vec![change.clone()]).is_ok() {
                good.push(change);
                continue;
            }
            eprintln!("hearth: automerge refused entry {dev}/{seq} of epoch {epoch}: left out of its document");
            skip.insert((dev, seq));
            doc = self.read_epoch(channel, epoch, s, &skip)?.0;
            doc.apply_remote(good.clone())?;
        }
        Ok(doc)
    }

    pub(crate) fn loaded(&self, channel: &ChannelId, epoch: Epoch) -> Option<&LoadedEpoch> {
        self.epochs.get(&(*channel, epoch))
    }

    // ----- writes -----

    pub(crate) fn top_epoch(&self, ch: &ChannelState) -> Epoch {
        let (e, n) = ch.current;
        let top = if n as usize >= self.config.epoch_messages {
            e.saturating_add(1)
        } else {
            e
        };
        // Never a dead epoch, nor one a peer sent stubs of (a member that
        // took only stubs so far).
        let stubs = ch.dead.last().max(ch.stubbed.last());
        top.max(stubs.map_or(1, |d| d.saturating_add(1)))
    }
}

/// The messages of a change that makes posts alone, as the document's view
/// shows them once it is applied: each post with its text (or dropped,
/// when its entry did not carry it), no edit, reaction or delete, its
/// reply root; its writer `(user, device)`, known to the channel. `None`
/// when the view cannot be built from the change's effects: it does more
/// than make posts (`ChangeEffects::beyond_posts`), makes a post twice, a
/// post of another writer or one that names no text.
pub(crate) fn posts_of(
    (user, device): (&hearth_core::UserId, &hearth_core::DeviceId),
    texts: &[hearth_core::Content],
    effects: &hearth_core::ChangeEffects,
) -> Option<Vec<hearth_core::Message>> {
    if effects.beyond_posts {
        return None;
    }
    let tag = hearth_core::writer_tag(user, device);
    let texts: HashMap<hearth_core::ContentId, &hearth_core::Content> = texts.iter().map(|c| (c.id(), c)).collect();
    let named: HashMap<MessageId, hearth_core::ContentId> = effects.texts.iter().copied().collect();
    let roots: HashMap<MessageId, MessageId> = effects.reply_roots.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(effects.posts.len());
    for id in &effects.posts {
        if id.writer() != tag || !seen.insert(*id) {
            return None;
        }
        let content = named.get(id)?;
        let text = texts.get(content).filter(|c| c.msg == *id).map(|c| c.text.clone());
        out.push(hearth_core::Message {
            id: *id,
            author: *user,
            dropped: text.is_none(),
            text,
            reply_to: roots.get(id).copied(),
            edited: false,
            deleted: false,
            reactions: Default::default(),
            reply_count: 0,
        });
    }
    Some(out)
}
