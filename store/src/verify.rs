//! `verify`: read every record back, decrypt it and check it — AEAD tags,
//! signatures, hash chains, heads, epoch logs, summaries and snapshots — without
//! trusting sled's own bookkeeping. `stats`: what the store holds.

use std::collections::HashMap;
use std::path::Path;

use hearth_core::{ChannelId, ChannelKeys, Envelope, EpochDoc, Vector, WireId, decode_change};
use serde::Serialize;

use crate::channel::{EpochSummary, FeedHead};
use crate::engine::Engine;
use crate::error::Result;
use crate::layout::*;
use crate::log::kind;

/// One defect found by verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where: table and key, never content.
    pub place: String,
    /// What is wrong.
    pub detail: String,
}

/// What verify checked and what it found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Channels checked.
    pub channels: u64,
    /// Feed entries checked (signature, chain, AEAD, change).
    pub entries: u64,
    /// Epochs checked (summary, log, snapshot).
    pub epochs: u64,
    /// Snapshots that were loaded and checked.
    pub snapshots: u64,
    /// Records of the feed log checked against sled.
    pub log_records: u64,
    /// Feed entries held sealed: under a key generation this device does not
    /// hold (a removed member's store holds the entries after its removal
    /// so), or whose content was refused when their key came.
    pub unopened: u64,
    /// Defects, empty when the store is sound.
    pub problems: Vec<Problem>,
    /// Feeds whose author signed two versions of them, each with a checked
    /// proof held (not a defect of this store: a finding about an author).
    pub forks: Vec<ForkReport>,
}

/// A forked feed (see [`crate::StoreEvent::Forked`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkReport {
    /// The channel.
    pub channel: ChannelId,
    /// The author who signed both versions.
    pub user: hearth_core::UserId,
    /// The forked feed's device.
    pub device: hearth_core::DeviceId,
    /// The position with two versions.
    pub seq: u64,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether `hearth repair` ([`crate::Store::repair`]: sled built afresh
    /// from the feed log) would cure what was found: there are problems, and
    /// none in the log itself (places `log...`: a damaged log, or one behind
    /// sled, is not cured by building from it; what it lacks is on peers).
    /// sled lacking what the log holds is sled's fault (`feeds/`, `heads/`).
    pub fn repair_would_help(&self) -> bool {
        !self.problems.is_empty() && self.problems.iter().all(|p| !p.place.starts_with("log"))
    }

    fn problem(&mut self, place: impl Into<String>, detail: impl std::fmt::Display) {
        self.problems.push(Problem {
            place: place.into(),
            detail: detail.to_string(),
        });
    }
}

/// Counts and sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Channels.
    pub channels: u64,
    /// Messages (replies and tombstones included).
    pub messages: u64,
    /// Feed entries (sealed automerge changes) in the commit log.
    pub feed_entries: u64,
    /// Epoch documents.
    pub epochs: u64,
    /// Epoch documents in memory.
    pub cached_epochs: u64,
    /// Feeds whose author signed two versions of them (proofs held).
    pub forked_feeds: u64,
    /// Bytes of every file under the store directory.
    pub disk_bytes: u64,
    /// Journal bytes written since the last checkpoint (acknowledged writes that
    /// a crash would replay; the file itself is preallocated).
    pub journal_bytes: u64,
    /// Epochs a page read from their posts as a catch-up's ingest decoded
    /// them, before applying them (a catch-up's first page), since the open.
    pub pages_from_posts: u64,
    /// Channels whose epoch summaries came from their one-row copy (written
    /// at the last clean close) since the open, instead of one row per epoch.
    pub summary_copies: u64,
}

/// One channel's counts and sizes ([`crate::Store::channel_stats`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    /// The channel.
    pub channel: ChannelId,
    /// Its wire id (what peers and relays know it by).
    pub wire: WireId,
    /// Messages (replies and tombstones included).
    pub messages: u64,
    /// Feed entries held, every device's.
    pub feed_entries: u64,
    /// Bytes of those entries as stored (sealed, signed envelopes).
    pub entry_bytes: u64,
    /// Devices whose feeds are held.
    pub feeds: u64,
    /// Epoch documents.
    pub epochs: u64,
    /// Of those, in memory now.
    pub cached_epochs: u64,
    /// What this device holds of the channel: per feed, up to where.
    #[serde(skip)]
    pub vector: Vector,
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Engine {
    pub(crate) fn stats(&self) -> Stats {
        let mut s = Stats {
            channels: self.channels.len() as u64,
            ..Stats::default()
        };
        for ch in self.channels.values() {
            s.messages += ch.message_count();
            s.feed_entries += ch.heads.values().map(|h| h.seq).sum::<u64>();
            s.epochs += ch.summaries.len() as u64;
        }
        s.cached_epochs = self.epochs.len() as u64;
        s.forked_feeds = self.tree.scan_prefix([T_FORKS]).count() as u64;
        s.disk_bytes = dir_bytes(&self.dir);
        s.journal_bytes = self.journal_pending;
        s.pages_from_posts = self.pages_from_posts;
        s.summary_copies = self.summary_rows.read;
        s
    }

    pub(crate) fn channel_stats(&self, channel: ChannelId) -> Result<ChannelStats> {
        let ch = self.channel(&channel)?;
        let wire = ch.keys.wire();
        let mut entry_bytes = 0u64;
        for row in self.tree.scan_prefix(channel_prefix(T_FEEDS, &wire)) {
            let (_, v) = row?;
            entry_bytes += v.len() as u64;
        }
        Ok(ChannelStats {
            channel,
            wire,
            messages: ch.message_count(),
            feed_entries: ch.heads.values().map(|h| h.seq).sum(),
            entry_bytes,
            feeds: ch.heads.len() as u64,
            epochs: ch.summaries.len() as u64,
            cached_epochs: self.epochs.keys().filter(|(c, _)| *c == channel).count() as u64,
            vector: self.vector_of(&channel)?,
        })
    }

    pub(crate) fn verify(&mut self) -> Result<VerifyReport> {
        let mut r = VerifyReport::default();
        if let Err(e) = self.tree.get(META_IDENTITY).map_err(crate::Error::from).and_then(|v| {
            let v = v.ok_or_else(|| crate::Error::corrupted("identity", "missing"))?;
            let plain = open_record(&self.records, META_IDENTITY, &v)?;
            Ok(hearth_core::Identity::decode(&plain)?)
        }) {
            r.problem("meta/identity", e);
        }
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            r.channels += 1;
            self.verify_channel(&id, &mut r)?;
        }
        self.verify_log(&mut r)?;
        for row in self.tree.scan_prefix([T_FORKS]) {
            let (k, v) = row?;
            let place = format!(
                "forks/{}",
                k[1..].iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            match hearth_core::ForkProof::decode(&v) {
                Ok((_, fork)) if k[1..] == prefixed(T_FORKS, &fork.wire, &fork.device)[1..] => {
                    if let Some(&channel) = self.by_wire.get(&fork.wire) {
                        r.forks.push(ForkReport {
                            channel,
                            user: fork.user,
                            device: fork.device,
                            seq: fork.seq,
                        });
                    }
                }
                Ok(_) => r.problem(place, "a fork proof under another feed's key"),
                Err(e) => r.problem(place, e),
            }
        }
        // Rows that belong to no known channel are a defect too.
        for row in self.tree.iter() {
            let (k, _) = row?;
            if k.len() < 33
                || !matches!(
                    k[0],
                    T_FEEDS
                        | T_HEADS
                        | T_EPOCHS
                        | T_ELOG
                        | T_SNAPS
                        | T_OWED
                        | T_FORKS
                        | T_CHAINS
                        | T_UNOPENED
                        | T_DROPS
                        | T_FRONTS
                        | T_ALL_SUMMARIES
                )
            {
                continue;
            }
            let wire = WireId::from_slice(&k[1..33]).expect("32 bytes");
            if !self.by_wire.contains_key(&wire) {
                r.problem(format!("{}/{}", table_name(k[0]), wire), "row of an unknown channel");
            }
        }
        Ok(r)
    }

    /// The feed log holds exactly what sled holds: every channel's keys, and
    /// every feed from entry 1 to its head, in order, with the same bytes.
    fn verify_log(&mut self, r: &mut VerifyReport) -> Result<()> {
        let mut feeds: HashMap<(WireId, hearth_core::DeviceId), u64> = HashMap::new();
        let mut channels = std::collections::HashSet::new();
        let mut problems = Vec::new();
        let log_dir = self.dir.join(crate::log::LOG_DIR);
        let end = crate::log::scan(&log_dir, crate::log::LogPos::START, |b| {
            for rec in b.records {
                r.log_records += 1;
                let place = |what: &str| format!("log/{}/{what}", b.end);
                match rec.kind {
                    kind::IDENTITY => match crate::recover::open(&self.records, kind::IDENTITY, &rec.body)
                        .and_then(|p| Ok(hearth_core::Identity::decode(&p)?))
                    {
                        Ok(id) if self.identity.is_this_device(&id.device()) && id.user() == self.identity.user() => {}
                        Ok(_) => problems.push((place("identity"), "another device's identity".to_string())),
                        Err(e) => problems.push((place("identity"), e.to_string())),
                    },
                    kind::CHANNEL => match crate::recover::open(&self.records, kind::CHANNEL, &rec.body)
                        .and_then(|p| Ok(hearth_core::ChannelRecord::decode(&p)?))
                    {
                        Ok(keys) => {
                            channels.insert(keys.id());
                        }
                        Err(e) => problems.push((place("channel"), e.to_string())),
                    },
                    kind::FORK => match hearth_core::ForkProof::decode(&rec.body) {
                        Ok((_, fork)) => {
                            if self.tree.get(prefixed(T_FORKS, &fork.wire, &fork.device))?.as_deref()
                                != Some(&rec.body[..])
                            {
                                problems.push((place("fork"), "fork proof not in sled".to_string()));
                            }
                        }
                        Err(e) => problems.push((place("fork"), e.to_string())),
                    },
                    kind::TOLD => {
                        if let Err(e) = crate::recover::open(&self.records, kind::TOLD, &rec.body)
                            .and_then(|p| Ok(hearth_core::peer::RemovedNotice::decode(&p)?))
                        {
                            problems.push((place("notice of a removal"), e.to_string()));
                        }
                    }
                    kind::EXPIRED => {
                        if let Err(e) = crate::recover::open(&self.records, kind::EXPIRED, &rec.body).and_then(|p| {
                            if p.len() == 32 + 24 {
                                Ok(())
                            } else {
                                Err(crate::Error::corrupted(
                                    "expiry floor",
                                    "not a wire id and a message id",
                                ))
                            }
                        }) {
                            problems.push((place("expiry floor"), e.to_string()));
                        }
                    }
                    kind::COMMIT => {
                        if let Err(e) = crate::recover::open_commit(&self.records, &rec.body) {
                            problems.push((place("commit"), e.to_string()));
                        }
                    }
                    _ => {
                        let env = match Envelope::decode(&rec.body) {
                            Ok(e) => e,
                            Err(e) => {
                                problems.push((place("entry"), e.to_string()));
                                continue;
                            }
                        };
                        let h = &env.header;
                        let next = feeds.entry((h.wire, h.device)).or_insert(0);
                        let here = format!("log/{}/{}", h.device, h.seq);
                        if h.seq != *next + 1 {
                            problems.push((here.clone(), format!("out of order: expected entry {}", *next + 1)));
                        }
                        *next = (*next).max(h.seq);
                        // sled may hold it with fewer texts (texts dropped
                        // since: the log keeps them until a compaction).
                        let held = self.tree.get(feed_key(&h.wire, &h.device, h.seq))?;
                        let keys = self
                            .by_wire
                            .get(&h.wire)
                            .and_then(|c| self.channels.get(c))
                            .map(|ch| &ch.keys);
                        let same = held.as_deref().is_some_and(|v| {
                            v == &rec.body[..]
                                || Envelope::decode(v).is_ok_and(|now| match keys {
                                    Some(keys) => now.is_copy_of_opened(&env, keys),
                                    None => now.is_copy_of(&env),
                                })
                        });
                        if !same {
                            // sled's fault: a repair builds it from the log.
                            problems.push((
                                format!("feeds/{}/{}", h.device, h.seq),
                                "in the log, not in sled (or other bytes there)".to_string(),
                            ));
                        }
                    }
                }
            }
            Ok(true)
        })?;
        if let Some(why) = end.stopped {
            problems.push(("log".to_string(), why));
        }
        for ch in self.channels.values() {
            if !channels.contains(&ch.keys.id()) {
                problems.push((
                    format!("log/channels/{}", ch.keys.id()),
                    "channel keys not in the log".into(),
                ));
            }
            for (device, head) in &ch.heads {
                let logged = feeds.get(&(ch.keys.wire(), *device)).copied().unwrap_or(0);
                if logged != head.seq {
                    // sled behind the log: a repair cures it; the log behind
                    // sled (it lost entries): a repair would lose them too.
                    let place = if logged > head.seq { "heads" } else { "log" };
                    problems.push((
                        format!("{place}/{device}"),
                        format!("the log holds this feed up to {logged}, sled up to {}", head.seq),
                    ));
                }
            }
        }
        for (place, detail) in problems {
            r.problem(place, detail);
        }
        Ok(())
    }

    fn verify_channel(&mut self, id: &ChannelId, r: &mut VerifyReport) -> Result<()> {
        let ch = &self.channels[id];
        let wire = ch.keys.wire();
        // Feeds: a gapless hash chain from 1 to the head, each entry signed by the
        // feed's user and opening under the channel key.
        let mut heads = Vec::new();
        for row in self.tree.scan_prefix(channel_prefix(T_HEADS, &wire)) {
            let (k, v) = row?;
            match postcard::from_bytes::<FeedHead>(&v) {
                Ok(h) => heads.push((hearth_core::DeviceId::from_slice(&k[33..])?, h)),
                Err(e) => r.problem(format!("heads/{wire}"), e),
            }
        }
        // Which epoch each entry's body names, to find it in that epoch's log.
        let mut epoch_of: HashMap<(hearth_core::DeviceId, u64), u32> = HashMap::new();
        for (device, head) in heads {
            let place = format!("feeds/{}/{device}", ch.keys.id());
            let mut expect_seq = 1u64;
            let mut prev = [0u8; 32];
            // The key of the feed's format 2 entries, from its first chain.
            let mut key: Option<[u8; 32]> = None;
            for row in self.tree.scan_prefix(prefixed(T_FEEDS, &wire, &device)) {
                let (k, v) = row?;
                let seq = key_u64(&k)?;
                r.entries += 1;
                if seq != expect_seq {
                    r.problem(format!("{place}/{seq}"), format!("gap: expected entry {expect_seq}"));
                }
                let check = Envelope::decode(&v).map_err(crate::Error::from).and_then(|env| {
                    if env.header.version >= hearth_core::ENVELOPE_V2 {
                        if let Some(k) = env.device_key()? {
                            if key.is_some_and(|held| held != k) {
                                return Err(crate::Error::corrupted("feed entry", "a second key for the device"));
                            }
                            key = Some(k);
                        }
                        let k = key.ok_or_else(|| {
                            crate::Error::corrupted("feed entry", "signed by a key no chain certifies")
                        })?;
                        env.verify_with(&k)?;
                    } else if key.is_some() {
                        return Err(crate::Error::corrupted(
                            "feed entry",
                            "signed by the user key after the device signed with its own",
                        ));
                    } else {
                        env.verify()?;
                    }
                    if env.header.wire != wire || env.header.device != device || env.header.seq != seq {
                        return Err(crate::Error::corrupted("feed entry", "header does not match its key"));
                    }
                    if env.header.user != head.user {
                        return Err(crate::Error::corrupted(
                            "feed entry",
                            "signed by another user than the feed's",
                        ));
                    }
                    if env.header.prev != prev {
                        return Err(crate::Error::corrupted("feed entry", "hash chain broken"));
                    }
                    // A dead epoch's entries are stubs (`crate::retention`);
                    // a stub of a live epoch is an entry whose change this
                    // store never held (a forwarder cut it).
                    let epoch = env.header.epoch;
                    if env.pruned.is_some() {
                        return Ok(());
                    }
                    if env.header.version >= hearth_core::ENVELOPE_V3 && ch.dead.contains(&epoch) {
                        return Err(crate::Error::corrupted(
                            "feed entry",
                            format!("an entry of the dead epoch {epoch}, not cut to a stub"),
                        ));
                    }
                    // Held sealed (a key generation not held, or content
                    // refused when it was opened): marked, and in no epoch.
                    let held = self.tree.get(unopened_key(&wire, &device, seq))?;
                    if let Some(v) = &held {
                        r.unopened += 1;
                        let waiting = v.len() == 4;
                        if waiting && !ch.keys.opening_keys(env.header.generation).is_empty() {
                            return Err(crate::Error::corrupted(
                                "feed entry",
                                "held sealed, but its key generation is held",
                            ));
                        }
                        return Ok(());
                    }
                    let (body, root) = env.open_full(&ch.keys)?;
                    decode_change(&body.change, &device, &head.user)?;
                    // A format 5 pack held matches the root its body
                    // carries and the change's text ops (an epoch's load
                    // takes that on trust: it was checked when taken).
                    if env.header.version >= hearth_core::ENVELOPE_V5 && env.pack.is_some() {
                        let (_, effects) = hearth_core::decode_change_effects(&body.change, &device, &head.user)?;
                        env.open_slots(&ch.keys, root.as_ref(), &effects.slots)?;
                    }
                    // An entry before format 3 (no epoch in its header)
                    // stays whole in a dead epoch.
                    if !ch.dead.contains(&body.epoch) {
                        epoch_of.insert((device, seq), body.epoch);
                    }
                    Ok(())
                });
                if let Err(e) = check {
                    r.problem(format!("{place}/{seq}"), e);
                }
                prev = Envelope::hash_of(&v);
                expect_seq = seq + 1;
            }
            if key.is_some() && ch.chains.get(&device).map(|(k, _)| *k) != key {
                r.problem(place.clone(), "its device chain row does not name its entries' key");
            }
            if head.seq != expect_seq - 1 || head.hash != prev {
                r.problem(
                    place,
                    format!("head says entry {} but the feed ends at {}", head.seq, expect_seq - 1),
                );
            }
        }
        // A dead epoch keeps no document rows.
        for epoch in &ch.dead {
            let left = self.tree.contains_key(epoch_key(T_EPOCHS, &wire, *epoch))?
                || self.tree.scan_prefix(epoch_key(T_ELOG, &wire, *epoch)).next().is_some()
                || self
                    .tree
                    .scan_prefix(epoch_key(T_SNAPS, &wire, *epoch))
                    .next()
                    .is_some()
                || ch.summaries.contains_key(epoch);
            if left {
                r.problem(
                    format!("epochs/{}/{epoch}", ch.keys.id()),
                    "a dead epoch with rows of its document left",
                );
            }
        }
        // An epoch is dead or stubbed, not both.
        if let Some(epoch) = ch.dead.intersection(&ch.stubbed).next() {
            r.problem(
                format!("epochs/{}/{epoch}", ch.keys.id()),
                "an epoch listed both as dead and as stubbed (`M stubbed`)",
            );
        }
        // The copy of the summaries an open reads, if current, says what the
        // `E` rows say (`crate::summaries`).
        if self.summary_copy_agrees(ch)? == Some(false) {
            r.problem(
                format!("summary copies/{}", ch.keys.id()),
                "the copy of the epoch summaries disagrees with the epoch rows",
            );
        }
        // Epochs: summary opens, log rows name existing entries, snapshot loads.
        let summaries: Vec<(u32, EpochSummary)> = ch.summaries.iter().map(|(e, s)| (*e, s.clone())).collect();
        for (epoch, s) in summaries {
            r.epochs += 1;
            let place = format!("epochs/{}/{epoch}", ch.keys.id());
            let k = epoch_key(T_EPOCHS, &wire, epoch);
            match self.tree.get(k)? {
                Some(v) => {
                    if let Err(e) = open_record(&self.records, &k, &v) {
                        r.problem(&place, e);
                    }
                }
                None => r.problem(&place, "summary missing"),
            }
            let mut rows = 0u64;
            for row in self.tree.scan_prefix(epoch_key(T_ELOG, &wire, epoch)) {
                let (k, v) = row?;
                rows += 1;
                match decode_elog_value(&v) {
                    Ok((dev, seq)) if self.tree.contains_key(feed_key(&wire, &dev, seq))? => {
                        match epoch_of.remove(&(dev, seq)) {
                            Some(e) if e == epoch => {}
                            Some(e) => r.problem(
                                &place,
                                format!("epoch log names entry {dev}/{seq}, which is of epoch {e}"),
                            ),
                            None => r.problem(
                                &place,
                                format!("epoch log names entry {dev}/{seq} twice, or one that does not open"),
                            ),
                        }
                        if key_u64(&k)? != rows {
                            r.problem(&place, format!("epoch log row {rows} is numbered {}", key_u64(&k)?));
                        }
                    }
                    Ok((dev, seq)) => r.problem(&place, format!("epoch log names missing entry {dev}/{seq}")),
                    Err(e) => r.problem(&place, e),
                }
            }
            if rows != s.entries {
                r.problem(
                    &place,
                    format!("summary counts {} entries, the log has {rows}", s.entries),
                );
            }
            if s.snapshot_chunks > 0 {
                r.snapshots += 1;
                let mut bytes = Vec::new();
                let mut ok = true;
                for i in 0..s.snapshot_chunks {
                    let k = snap_key(&wire, epoch, i);
                    match self.tree.get(k)?.map(|v| open_record(&self.records, &k, &v)) {
                        Some(Ok(b)) => bytes.extend(b),
                        Some(Err(e)) => {
                            r.problem(format!("snaps/{}/{epoch}/{i}", ch.keys.id()), e);
                            ok = false;
                        }
                        None => {
                            r.problem(format!("snaps/{}/{epoch}/{i}", ch.keys.id()), "chunk missing");
                            ok = false;
                        }
                    }
                }
                if ok && let Err(e) = EpochDoc::load(epoch, &bytes, &self.identity.device()) {
                    r.problem(format!("snaps/{}/{epoch}", ch.keys.id()), e);
                }
            }
        }
        let mut unlogged: Vec<_> = epoch_of.into_iter().collect();
        unlogged.sort();
        for ((device, seq), epoch) in unlogged {
            r.problem(
                format!("feeds/{}/{device}/{seq}", ch.keys.id()),
                format!("not in the log of its epoch {epoch}"),
            );
        }
        Ok(())
    }
}

impl Engine {
    /// Where in the store's files a key reachable from the passphrase opens
    /// something that holds `needle`: journal records (stale ones of earlier
    /// runs too), feed entries in the log and in sled (bodies, packs,
    /// segments) and every sealed sled row. An audit of what a delete and a
    /// compaction left ([`crate::Store::find_text`]); it reads every file.
    pub(crate) fn find_text(&mut self, needle: &str) -> Result<Vec<String>> {
        self.checkpoint()?;
        let needle = needle.as_bytes();
        let holds = |b: &[u8]| !needle.is_empty() && b.windows(needle.len()).any(|w| w == needle);
        let keys: HashMap<WireId, ChannelKeys> = self
            .channels
            .values()
            .map(|ch| (ch.keys.wire(), ch.keys.clone()))
            .collect();
        let entry_holds = |bytes: &[u8]| -> bool {
            let Ok(env) = Envelope::decode(bytes) else { return false };
            let Some(k) = keys.get(&env.header.wire) else {
                return false;
            };
            env.open_texts(k).iter().any(|c| holds(c.text.as_bytes())) || env.open(k).is_ok_and(|b| holds(&b.change))
        };
        let mut found = Vec::new();
        let journal = match std::fs::read(self.dir.join(JOURNAL_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for (at, plain) in crate::journal::every_sealed_record(&self.records, &journal) {
            if holds(&plain) {
                found.push(format!("journal@{at}"));
            }
        }
        let proof_holds = |bytes: &[u8]| {
            hearth_core::ForkProof::decode(bytes).is_ok_and(|(p, _)| entry_holds(&p.first) || entry_holds(&p.second))
        };
        crate::log::scan(
            &self.dir.join(crate::log::LOG_DIR),
            crate::log::LogPos::START,
            |batch| {
                for r in batch.records {
                    let hit = match r.kind {
                        crate::log::kind::ENTRY => entry_holds(&r.body),
                        crate::log::kind::FORK => proof_holds(&r.body),
                        _ => false,
                    };
                    if hit {
                        found.push(format!("log record ending at {}", r.end));
                    }
                }
                Ok(true)
            },
        )?;
        for row in self.tree.iter() {
            let (k, v) = row?;
            let hit = match k.first() {
                Some(&T_FEEDS) => entry_holds(&v),
                Some(&T_FORKS) => proof_holds(&v),
                _ => open_record(&self.records, &k, &v).is_ok_and(|p| holds(&p)),
            };
            if hit {
                found.push(format!("sled row {}", k.first().map_or("?", |t| table_name(*t))));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repair builds sled from the log: it cures problems in sled's rows,
    /// never one in the log (building from a damaged log loses more).
    #[test]
    fn repair_helps_only_when_the_log_is_sound() {
        let mut r = VerifyReport::default();
        assert!(!r.repair_would_help(), "nothing to cure");
        r.problem("snaps/x/1/0", "chunk missing");
        r.problem("epochs/x/1", "summary counts 2 entries, the log has 0");
        assert!(r.repair_would_help());
        r.problem("log", "torn record at 00000001:77");
        assert!(!r.repair_would_help());
    }
}
