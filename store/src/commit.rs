//! The group commit: a write's journal entries staged into their epoch
//! documents ([`Engine::apply`], also the journal's replay), then a group
//! closed ([`Engine::finish_batch`]): one automerge change per touched
//! epoch, sealed and signed into the device's feed, written to the feed
//! log, then every row of the group as one sled batch.

use hearth_core::{
    ChannelId, ChannelKeys, ChannelRecord, DeviceId, EntryBody, Envelope, Epoch, META_EPOCH, MessageId, Op, SecretKey,
};

use hearth_core::textpack::TextsDeflate;

use crate::channel::FeedHead;
use crate::engine::*;
use crate::error::Result;
use crate::journal::JournalEntry;
use crate::layout::*;
use crate::log::{self, kind};

impl Engine {
    /// This device's receipt now says `author`'s messages up to `up_to` are
    /// held: that much is no longer owed. The row change goes with the current
    /// group's batch, so with the receipt entry itself when there is one (a
    /// crash before it owes the receipt again, and writing it again finds it
    /// held). Journal replay settles the same way.
    pub(crate) fn settle_owed(&mut self, channel: ChannelId, author: DeviceId, up_to: MessageId) -> Result<()> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        if ch.owed.get(&author).is_some_and(|owed| *owed <= up_to) {
            ch.owed.remove(&author);
            put_owed(&mut self.batch, &self.records, &ch.keys.wire(), &ch.owed)?;
            self.rows_pending = true;
        }
        Ok(())
    }

    /// Stage journal entries into the documents and views. Used for new writes
    /// and for journal replay alike.
    pub(crate) fn apply(&mut self, entries: &[JournalEntry]) -> Result<()> {
        for e in entries {
            match e {
                JournalEntry::Channel { id, key } => self.add_channel(id, key, None)?,
                JournalEntry::Joined { id, key, name } => self.add_channel(id, key, Some(name))?,
                JournalEntry::Op { channel, op } => self.stage(*channel, op)?,
            }
            if let JournalEntry::Channel { id, .. } | JournalEntry::Joined { id, .. } = e
                && self.chat.listening()
            {
                self.chat_staged.push(channel_added(entries, id));
            }
        }
        Ok(())
    }

    /// A channel created or joined here: its keys (and invited name) go to
    /// sled and the log with the current group.
    pub(crate) fn add_channel(&mut self, id: &ChannelId, key: &[u8; 32], invited: Option<&String>) -> Result<()> {
        if self.channels.contains_key(id) {
            return Ok(());
        }
        let keys = ChannelKeys::new(*id, SecretKey::from_bytes(*key));
        let k = channel_key(&keys.wire());
        let record = ChannelRecord::encode_named(&keys, invited.map(String::as_str));
        self.batch.insert(&k[..], seal_record(&self.records, &k, &record)?);
        let sealed = self.seal_log(kind::CHANNEL, &record)?;
        self.log_record(kind::CHANNEL, &sealed);
        self.load_channel(keys)?;
        if let Some(ch) = self.channels.get_mut(id) {
            ch.invited_name = invited.cloned();
        }
        Ok(())
    }

    pub(crate) fn stage(&mut self, channel: ChannelId, op: &Op) -> Result<()> {
        if let Op::Keys { package, .. } = op {
            return self.stage_keys(channel, op, package);
        }
        let epoch = op.epoch();
        if let Op::Post { id, .. } = op {
            self.hlc.observe(id.timestamp());
        }
        // An op into an epoch that died since it was taken (replayed from
        // the journal): every message there expired, so it has nothing
        // left to act on.
        if self.channel(&channel)?.dead.contains(&epoch) {
            return Ok(());
        }
        self.ensure_epoch(channel, epoch, true)?;
        let (user, device) = (self.identity.user(), self.identity.device());
        let ch = self
            .channels
            .get_mut(&channel)
            .expect("ensure_epoch checked the channel");
        let le = self.epochs.get_mut(&(channel, epoch)).expect("ensure_epoch loaded it");
        le.doc.stage(&user, &device, op)?;
        if !self.chat_muted
            && self.chat.listening()
            && let Some(e) = crate::events::of_local_op(channel, user, op)
        {
            self.chat_staged.push(e);
        }
        let size = OP_ALLOWANCE
            + match op {
                Op::Post { text, .. } | Op::Edit { text, .. } => text.len() + SEGMENT_ALLOWANCE,
                _ => 0,
            };
        // A delete drops the message's texts; so does an edit of a message
        // already deleted (replayed from the journal after the delete came).
        if let Op::Delete { msg } | Op::Edit { msg, .. } = op
            && (matches!(op, Op::Delete { .. }) || le.view.is_deleted(msg))
        {
            self.prune_queue.push((channel, epoch, *msg));
        }
        match op {
            Op::CreateChannel { .. }
            | Op::Rename { .. }
            | Op::SetName { .. }
            | Op::Delivered { .. }
            | Op::Member { .. }
            | Op::SetRetention { .. } => le.view = le.doc.view(&ch.devices),
            _ => le.view.apply_local(&user, op),
        }
        match op {
            Op::Post { id, .. } => ch.staged_newest = ch.staged_newest.max(Some(*id)),
            Op::ReadUpTo { msg } => ch.staged_read = ch.staged_read.max(Some(*msg)),
            _ => {}
        }
        if let Op::Post { .. } = op {
            ch.count_post(epoch);
        }
        let staged = self.touched.entry((channel, epoch)).or_default();
        *staged += size;
        let staged = *staged;
        if let Op::Post { text, .. } | Op::Edit { text, .. } = op {
            self.early_text((channel, epoch), staged, text);
        }
        if staged >= ENTRY_BUDGET {
            self.commit_epoch(channel, epoch)?;
            self.touched.insert((channel, epoch), 0);
        }
        if let Op::Delivered { author, up_to } = op {
            self.settle_owed(channel, *author, *up_to)?;
        }
        // A moderator's delete of someone else's message: the document gets
        // the moderators, and the view takes it from the document
        // (apply_local knows only the author's).
        if let Op::Delete { msg } = op {
            self.ensure_moderators(channel, epoch)?;
            let ch = self.channels.get(&channel).expect("ensure_epoch checked the channel");
            if let Some(le) = self.epochs.get_mut(&(channel, epoch))
                && !le.view.is_deleted(msg)
                && let Some(m) = le.doc.message(msg, &ch.devices)
            {
                le.view.insert(m);
            }
        }
        if let (Op::Member { .. }, Some(ch)) = (op, self.channels.get_mut(&channel)) {
            ch.hidden = None;
            let _ = self.events.send(crate::StoreEvent::Roster { channel });
            self.refresh_moderators(channel)?;
        }
        Ok(())
    }

    /// Deflate `text`, just staged into `at`'s next entry (`staged` bytes
    /// so far), with the texts staged there before it
    /// ([`TextsDeflate`]): once the entry holds [`EARLY_FROM`] bytes (a
    /// small entry's pack deflates quickly when sealed, and a burst closed
    /// at once, as with listeners, would only pay for the state), in a
    /// state kept for `at` if fewer than [`EARLY_TEXTS`] epochs have one.
    /// Otherwise not at all: the pack is then deflated whole when sealed.
    fn early_text(&mut self, at: (ChannelId, Epoch), staged: usize, text: &str) {
        if let Some(e) = self.early_texts.get_mut(&at) {
            e.push(text);
            return;
        }
        if staged < EARLY_FROM || self.early_texts.len() >= EARLY_TEXTS || self.identity.device_keys().is_none() {
            return;
        }
        let Some(le) = self.epochs.get(&at) else { return };
        let texts = le.doc.staged_texts();
        // A text dropped already, or one put in no slot: the pack will not
        // hold these texts one after the other.
        if texts.iter().any(|c| c.slot.is_none_or(|s| s.gone)) {
            return;
        }
        let mut e = self.early_spare.pop().unwrap_or_default();
        for c in texts {
            e.push(&c.text);
        }
        self.early_texts.insert(at, e);
    }

    /// A key package goes alone into an entry sealed under generation 0
    /// (what is staged before it is closed first, under the newest
    /// generation), then this device takes the keys sealed to it.
    pub(crate) fn stage_keys(&mut self, channel: ChannelId, op: &Op, package: &hearth_core::KeyPackage) -> Result<()> {
        self.ensure_epoch(channel, META_EPOCH, true)?;
        if self.touched.contains_key(&(channel, META_EPOCH)) {
            self.commit_epoch(channel, META_EPOCH)?;
            self.touched.insert((channel, META_EPOCH), 0);
        }
        let (user, device) = (self.identity.user(), self.identity.device());
        {
            let ch = self
                .channels
                .get_mut(&channel)
                .expect("ensure_epoch checked the channel");
            let le = self
                .epochs
                .get_mut(&(channel, META_EPOCH))
                .expect("ensure_epoch loaded it");
            le.doc.stage(&user, &device, op)?;
            le.view = le.doc.view(&ch.devices);
        }
        self.commit_epoch_under(channel, META_EPOCH, Some(0))?;
        self.touched.insert((channel, META_EPOCH), 0);
        if self.take_keys(channel, (&user, &device), std::slice::from_ref(package)) {
            self.save_channel_keys(channel)?;
        }
        Ok(())
    }

    /// Add the keys `packages` (written by `author`) seal to this device;
    /// whether any was new. A removed writer's packages are not taken.
    pub(crate) fn take_keys(
        &mut self,
        channel: ChannelId,
        author: (&hearth_core::UserId, &DeviceId),
        packages: &[hearth_core::KeyPackage],
    ) -> bool {
        let Some(mine) = self.identity.device_keys() else {
            return false;
        };
        if let Some((le, ch)) = self.loaded(&channel, META_EPOCH).zip(self.channels.get(&channel))
            && (le.view.roster.role(author.0).is_none() || ch.revocations(&le.view.roster).contains_key(author.1))
        {
            return false;
        }
        // A package written before this device moved to its keyed id names
        // its former id; the keys are the same.
        let ids: Vec<DeviceId> = std::iter::once(self.identity.device())
            .chain(self.identity.former().iter().copied())
            .collect();
        let Some(ch) = self.channels.get_mut(&channel) else {
            return false;
        };
        let wire = ch.keys.wire();
        let mut added = false;
        for p in packages {
            for device in &ids {
                for (generation, key) in p.open_for(&wire, device, mine) {
                    added |= ch.keys.add_generation(generation, key);
                }
            }
        }
        added
    }

    /// The channel's keys (with every generation held) to sled and the log,
    /// with the current group.
    pub(crate) fn save_channel_keys(&mut self, channel: ChannelId) -> Result<()> {
        let (k, record) = self.channel_record(channel)?;
        self.batch.insert(&k[..], seal_record(&self.records, &k, &record)?);
        let sealed = self.seal_log(kind::CHANNEL, &record)?;
        self.log_record(kind::CHANNEL, &sealed);
        Ok(())
    }

    /// A channel's sled key and record (plain).
    pub(crate) fn channel_record(&self, channel: ChannelId) -> Result<(Vec<u8>, Vec<u8>)> {
        let ch = self.channel(&channel)?;
        let k = channel_key(&ch.keys.wire());
        let record = ChannelRecord::encode_named(&ch.keys, ch.invited_name.as_deref());
        Ok((k.to_vec(), record))
    }

    /// Close an epoch's staged ops into a feed entry, queued in the batch.
    pub(crate) fn commit_epoch(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        self.commit_epoch_under(channel, epoch, None)
    }

    /// [`Engine::commit_epoch`], sealed under `generation` (default: the
    /// newest held). Key packages go under generation 0, which every member
    /// holds, so that a device that missed rotations opens them.
    pub(crate) fn commit_epoch_under(
        &mut self,
        channel: ChannelId,
        epoch: Epoch,
        generation: Option<u32>,
    ) -> Result<()> {
        // The channel's front page goes in the batch that stores the entry.
        let wire = self.channel(&channel)?.keys.wire();
        if let Some(k) = self.unfront_key(&wire) {
            self.batch.remove(&k[..]);
        }
        let le = self
            .epochs
            .get_mut(&(channel, epoch))
            .expect("touched epochs stay loaded");
        // The change's own time stays 0: every message id carries its time
        // already, nothing reads the change's, and a wall clock in ms costs
        // six bytes of every entry (five more than 0) on disk and the wire.
        let Some(change) = le.doc.commit(0)? else {
            return Ok(());
        };
        let texts = le.doc.take_texts();
        let mut early = self.early_texts.remove(&(channel, epoch));
        let seq = self.append_own_entry(
            channel,
            epoch,
            EntryBody { epoch, change },
            &texts,
            generation,
            early.as_mut(),
        );
        if let Some(mut e) = early {
            e.clear();
            self.early_spare.push(e);
        }
        let seq = seq?;
        let device = self.identity.device();
        let le = self
            .epochs
            .get_mut(&(channel, epoch))
            .expect("touched epochs stay loaded");
        // (A device without keys yet stages its texts inline: none here.)
        for c in texts.iter().filter(|c| !c.slot.is_some_and(|s| s.gone)) {
            le.segments.entry(c.id()).or_default().push((device, seq));
        }
        let ch = self.channels.get_mut(&channel).expect("touched channels exist");
        ch.summaries
            .get_mut(&epoch)
            .expect("counted by append_own_entry")
            .refresh(&le.view, &self.identity.user());
        self.put_summary(channel, epoch)
    }

    /// Seal `body` and `texts` into this device's next entry of `channel`
    /// and put it in the current group: its record in the log's buffer
    /// (unless the log is being replayed), its entry, head and epoch-log
    /// rows in the batch, and `epoch`'s summary counts one more entry (its
    /// other counts and its row are the caller's: [`Engine::put_summary`]).
    /// Format 6, sealed under `generation` (default: the newest held),
    /// signed by this device's key; the feed's first such entry carries the
    /// chain (kept in `T_CHAINS`). A device without keys yet (an older
    /// store replaying its journal before it gets them) writes format 1.
    /// Returns the entry's seq.
    pub(crate) fn append_own_entry(
        &mut self,
        channel: ChannelId,
        epoch: Epoch,
        body: EntryBody,
        texts: &[hearth_core::Content],
        generation: Option<u32>,
        early: Option<&mut TextsDeflate>,
    ) -> Result<u64> {
        self.appended.insert(channel);
        let ch = self.channels.get_mut(&channel).expect("checked by the caller");
        let wire = ch.keys.wire();
        let device = self.identity.device();
        let (seq, prev) = ch
            .heads
            .get(&device)
            .map(|h| (h.seq + 1, h.hash))
            .unwrap_or((1, [0; 32]));
        let (bytes, hash) = match (self.identity.device_keys(), self.identity.device_chain()) {
            (Some(keys), Some(own)) => {
                let chain = if ch.chains.contains_key(&device) {
                    Vec::new()
                } else {
                    own.to_vec()
                };
                let generation = generation.unwrap_or_else(|| ch.keys.current_generation());
                let nonces = self.nonces.for_entry(wire, seq)?;
                let sealed = Envelope::seal_v6_with(
                    &ch.keys,
                    &self.identity,
                    (seq, prev),
                    &body,
                    generation,
                    chain.clone(),
                    texts,
                    nonces,
                    early,
                )?;
                if !chain.is_empty() {
                    let k = prefixed(T_CHAINS, &wire, &device);
                    self.batch
                        .insert(&k[..], seal_record(&self.records, &k, &encode_chain(&chain))?);
                    ch.chains.insert(device, (keys.public().signing, chain));
                }
                sealed
            }
            // Its texts are inline (`EpochDoc::set_inline_texts`).
            _ => Envelope::seal(&ch.keys, &self.identity, seq, prev, &body)?,
        };
        if !self.replaying {
            log::encode_record(&mut self.log_buf, kind::ENTRY, &bytes);
            if self.events.receiver_count() > 0 {
                let fresh = self.fresh.entry(channel).or_insert_with(|| Some(Vec::new()));
                match fresh {
                    Some(list)
                        if list.len() < crate::replica::OUTGOING_MAX
                            && list.iter().map(|(_, b)| b.len()).sum::<usize>() + bytes.len()
                                <= crate::replica::OUTGOING_BYTES =>
                    {
                        list.push((seq, bytes.clone()))
                    }
                    _ => *fresh = None,
                }
            }
        }
        self.batch.insert(&feed_key(&wire, &device, seq)[..], bytes);
        let head = FeedHead {
            user: self.identity.user(),
            seq,
            hash,
        };
        self.batch.insert(
            &head_key(&wire, &device)[..],
            postcard::to_stdvec(&head).expect("head encodes"),
        );
        let old = ch.heads.insert(device, head);
        let s = ch.summaries.entry(epoch).or_default();
        s.entries += 1;
        self.batch
            .insert(&elog_key(&wire, epoch, s.entries)[..], &elog_value(&device, seq)[..]);
        self.root_head_moved(&wire, &device, old.as_ref(), &head);
        Ok(seq)
    }

    /// Put `epoch`'s summary row in the current batch (and drop the
    /// channel's copy of its summaries, which no longer holds).
    pub(crate) fn put_summary(&mut self, channel: ChannelId, epoch: Epoch) -> Result<()> {
        let ch = self.channels.get(&channel).expect("checked by the caller");
        let wire = ch.keys.wire();
        let s = ch.summaries.get(&epoch).expect("the epoch has a summary");
        let (k, v) = summary_row(&self.records, &wire, epoch, s)?;
        self.batch.insert(&k[..], v);
        self.summary_rows.remove_in(&wire, &mut self.batch);
        Ok(())
    }

    /// Close every touched epoch and write the group to sled as one batch,
    /// recording `journal_seq` as applied.
    pub(crate) fn finish_batch(&mut self, journal_seq: u64) -> Result<()> {
        let started = std::time::Instant::now();
        // Deleted texts first: one staged in this group goes into no segment.
        self.run_prunes()?;
        let touched: Vec<(ChannelId, Epoch)> = self.touched.keys().copied().collect();
        let epochs = touched.len();
        for (c, e) in touched {
            self.commit_epoch(c, e)?;
        }
        self.touched.clear();
        // Every touched epoch's entry is sealed: what is left was fed for
        // texts that went another way (a document loaded again).
        for (_, mut e) in self.early_texts.drain() {
            e.clear();
            self.early_spare.push(e);
        }
        self.watermark = self.watermark.max(journal_seq);
        self.batch
            .insert(META_HLC, hlc_value(&self.records, self.hlc.last().0)?);
        let mut batch = std::mem::take(&mut self.batch);
        self.put_root(&mut batch)?;
        crash_point!("group.before_log");
        self.write_log_batch(&mut batch)?;
        crash_point!("group.log_written");
        let mut durable = None;
        if !self.appended.is_empty() {
            self.own_unsynced = true;
            self.own_end = self.log.end();
            // A peer waits for them (a sync node listens): their sync starts
            // now, behind (before sled's batch), rather than when the node
            // asks for them.
            if self.events.receiver_count() > 0 {
                durable = Some(self.log.durable_shared(self.own_end)?);
            }
        }
        // Told before sled's batch is applied (150 to 400 us on a live
        // path): the entries are in the log, and go out with the event once
        // it is durable. Were the batch to fail, the store is poisoned and
        // its next open applies the log's batch again, the same bytes.
        self.send_appended(durable)?;
        self.tree.apply_batch(batch)?;
        crash_point!("group.applied");
        self.rows_pending = false;
        self.dirty = true;
        self.apply_prune_rows()?;
        tracing::debug!(
            epochs,
            journal_seq,
            micros = started.elapsed().as_micros() as u64,
            "group committed"
        );
        self.chat.send(std::mem::take(&mut self.chat_staged));
        Ok(())
    }

    /// Tell the listeners which channels the group wrote to, each with its
    /// new entries ([`crate::Outgoing`]) when they are few and `durable`
    /// says when they may leave (`Some(None)`: durable already).
    fn send_appended(&mut self, durable: Option<Option<crate::log::Durable>>) -> Result<()> {
        let device = self.identity.device();
        let mut fresh = std::mem::take(&mut self.fresh);
        for channel in std::mem::take(&mut self.appended) {
            let wire = self.channel(&channel)?.keys.wire();
            let outgoing = match (fresh.remove(&channel).flatten(), &durable) {
                (Some(entries), Some(durable)) => {
                    // Marked before the event tells anyone of them.
                    let early = match (&mut self.early, entries.last()) {
                        (Some(run), Some((seq, _))) => {
                            run.mark(&wire, *seq);
                            true
                        }
                        _ => false,
                    };
                    crate::Outgoing::new(wire, self.vector_of(&channel)?, device, entries, durable.clone(), early)
                }
                _ => None,
            };
            let _ = self.events.send(crate::StoreEvent::Appended {
                channel,
                wire,
                local: true,
                outgoing,
            });
        }
        Ok(())
    }
}

/// The event of a channel added by a group's `entries`: created here (with
/// its name) when they create it, else joined (with the invite's name).
fn channel_added(entries: &[JournalEntry], id: &ChannelId) -> crate::ChatEvent {
    let created = entries.iter().find_map(|e| match e {
        JournalEntry::Op {
            channel,
            op: Op::CreateChannel { name },
        } if channel == id => Some(name.clone()),
        _ => None,
    });
    let invited = entries.iter().find_map(|e| match e {
        JournalEntry::Joined { id: j, name, .. } if j == id => Some(name.clone()),
        _ => None,
    });
    crate::ChatEvent::ChannelAdded {
        channel: *id,
        local: created.is_some(),
        name: created.or(invited),
    }
}
