//! Restart recovery: everything a store answers before a clean close it answers
//! identically after reopening, under the default configuration and under a
//! small-epoch, small-cache configuration (channels span many epochs, epochs are
//! evicted and snapshotted during the run). Also: page ordering across epoch
//! boundaries and cursor errors, and unread counts of a single-user store.
//!
//! Unclean shutdowns (SIGKILL mid-write) are covered by the crash tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use hearth::store::{Outcome, Write};
use hearth::{
    ChannelId, ChannelInfo, Config, Error, Hearth, KdfParams, Located, Message, MessageId, OpenReport, Passphrase,
    Thread, UserId,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PAGE: usize = 50;
const EMOJI: [&str; 6] = ["👍", "❤️", "😂", "🎉", "+1", "eyes"];

fn fast() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn small_epochs() -> Config {
    fast().with_epoch_messages(500).with_cached_epochs(4)
}

fn pass() -> Passphrase {
    Passphrase::new("restart recovery passphrase")
}

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn message_id(o: Outcome) -> MessageId {
    match o {
        Outcome::Message(id) => id,
        other => panic!("expected a message id, got {other:?}"),
    }
}

// ----- the model -----

#[derive(Clone, Debug)]
struct ModelMsg {
    channel: usize,
    text: String,
    root: Option<MessageId>,
    edited: bool,
    deleted: bool,
    /// Emoji the local user (the only author here) has on the message.
    reactions: BTreeSet<String>,
}

/// What the store must answer, kept independently of it.
struct Model {
    me: UserId,
    channels: Vec<ChannelId>,
    names: Vec<String>,
    msgs: BTreeMap<MessageId, ModelMsg>,
    /// Every id in the order it was written.
    order: Vec<MessageId>,
    /// Thread root to its replies.
    replies: BTreeMap<MessageId, BTreeSet<MessageId>>,
    /// Ids that were ever edited, deleted or reacted to.
    touched: BTreeSet<MessageId>,
    /// Ids that were edited, in order.
    edited: Vec<MessageId>,
}

impl Model {
    fn new(me: UserId) -> Self {
        Model {
            me,
            channels: Vec::new(),
            names: Vec::new(),
            msgs: BTreeMap::new(),
            order: Vec::new(),
            replies: BTreeMap::new(),
            touched: BTreeSet::new(),
            edited: Vec::new(),
        }
    }

    /// Record a post; a reply to a reply joins the root's thread.
    fn add(&mut self, id: MessageId, channel: usize, text: String, parent: Option<MessageId>) {
        let root = parent.map(|p| self.msgs[&p].root.unwrap_or(p));
        if let Some(r) = root {
            assert_eq!(self.msgs[&r].channel, channel, "replies stay in their channel");
            self.replies.entry(r).or_default().insert(id);
        }
        let old = self.msgs.insert(
            id,
            ModelMsg {
                channel,
                text,
                root,
                edited: false,
                deleted: false,
                reactions: BTreeSet::new(),
            },
        );
        assert!(old.is_none(), "message id {id} was handed out twice");
        self.order.push(id);
    }

    fn expected(&self, id: &MessageId) -> Message {
        let m = &self.msgs[id];
        let reply_count = match m.root {
            Some(_) => 0,
            None => self
                .replies
                .get(id)
                .map_or(0, |r| r.iter().filter(|x| !self.msgs[*x].deleted).count() as u32),
        };
        Message {
            id: *id,
            author: self.me,
            text: (!m.deleted).then(|| m.text.clone()),
            reply_to: m.root,
            edited: m.edited && !m.deleted,
            deleted: m.deleted,
            dropped: false,
            reactions: if m.deleted {
                BTreeMap::new()
            } else {
                m.reactions
                    .iter()
                    .map(|e| (e.clone(), BTreeSet::from([self.me])))
                    .collect()
            },
            reply_count,
        }
    }

    fn expected_thread(&self, root: &MessageId) -> Thread {
        let replies = self
            .replies
            .get(root)
            .map(|r| r.iter().map(|id| self.expected(id)).collect())
            .unwrap_or_default();
        Thread {
            root: self.expected(root),
            replies,
        }
    }

    /// Top-level messages of a channel, newest first.
    fn roots_newest_first(&self, channel: usize) -> Vec<MessageId> {
        self.msgs
            .iter()
            .rev()
            .filter(|(_, m)| m.channel == channel && m.root.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    fn count(&self, channel: usize) -> u64 {
        self.msgs.values().filter(|m| m.channel == channel).count() as u64
    }

    fn newest(&self, channel: usize) -> Option<MessageId> {
        self.msgs
            .iter()
            .rev()
            .find(|(_, m)| m.channel == channel)
            .map(|(id, _)| *id)
    }

    /// A random message that is not deleted, matching `filter`.
    fn pick_live(&self, rng: &mut Rng, filter: impl Fn(&MessageId, &ModelMsg) -> bool) -> Option<MessageId> {
        for _ in 0..10_000 {
            let id = self.order[rng.below(self.order.len())];
            let m = &self.msgs[&id];
            if !m.deleted && filter(&id, m) {
                return Some(id);
            }
        }
        None
    }
}

// ----- the workload -----

/// Channel weights (percent): the first channel gets most traffic, so with the
/// small-epoch config it spans several epochs.
const WEIGHTS: [usize; 5] = [40, 25, 15, 12, 8];

fn pick_channel(rng: &mut Rng) -> usize {
    let mut x = rng.below(100);
    for (i, w) in WEIGHTS.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    unreachable!()
}

fn text_for(rng: &mut Rng, n: usize) -> String {
    match rng.below(20) {
        0 => format!("message {n}: ünïcødé ✓ — «quoted» 日本語"),
        1 => format!("message {n}: {}", "long ".repeat(200)),
        _ => format!("message {n}"),
    }
}

/// Pipelined posts: submit them all, then await them in order.
async fn pipelined_posts(
    h: &Hearth,
    model: &mut Model,
    rng: &mut Rng,
    count: usize,
    parent: impl Fn(&mut Rng, &Model) -> Option<MessageId>,
) -> hearth::Result<()> {
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        let to = parent(rng, model);
        let channel = match to {
            Some(p) => model.msgs[&p].channel,
            None => pick_channel(rng),
        };
        let text = text_for(rng, model.order.len() + pending.len());
        let w = Write::Post {
            channel: model.channels[channel],
            text: text.clone(),
            reply_to: to,
        };
        pending.push((channel, text, to, h.plumbing().store().submit(w).await?));
    }
    let mut last: Option<MessageId> = None;
    for (channel, text, to, p) in pending {
        let id = message_id(p.await?);
        // Writes apply in submission order, so ids come out increasing.
        assert!(last < Some(id), "pipelined ids must increase in submission order");
        last = Some(id);
        model.add(id, channel, text, to);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Post,
    Reply,
    React,
    Unreact,
    Edit,
    EditAgain,
    DeleteRootWithReplies,
    DeleteReply,
    DeleteRoot,
    MarkRead,
}

/// A post waiting for its id, to be added to the model once acknowledged.
struct NewPost {
    channel: usize,
    text: String,
    parent: Option<MessageId>,
}

impl Model {
    /// A live message matching `filter`: with `near`, one of that channel, mostly
    /// among its newest messages (where a chat's activity is); else anywhere.
    fn pick_target(
        &self,
        rng: &mut Rng,
        near: Option<usize>,
        filter: impl Fn(&MessageId, &ModelMsg) -> bool,
    ) -> Option<MessageId> {
        if let Some(ch) = near {
            // Recent: the channel's newest epoch (replies to old roots live in old epochs).
            let newest = self
                .order
                .iter()
                .filter(|id| self.msgs[*id].channel == ch)
                .map(|id| id.epoch())
                .max();
            let recent: Vec<MessageId> = self
                .order
                .iter()
                .rev()
                .filter(|id| self.msgs[*id].channel == ch && Some(id.epoch()) == newest)
                .take(150)
                .copied()
                .collect();
            let pool: Vec<MessageId> = if rng.chance(80) {
                recent
            } else {
                self.order
                    .iter()
                    .copied()
                    .filter(|id| self.msgs[id].channel == ch)
                    .collect()
            };
            for _ in 0..200 {
                let id = pool[rng.below(pool.len())];
                if !self.msgs[&id].deleted && filter(&id, &self.msgs[&id]) {
                    return Some(id);
                }
            }
        }
        self.pick_live(rng, |id, m| near.is_none_or(|c| m.channel == c) && filter(id, m))
    }

    /// Choose a write of kind `action` and apply it to the model at once: writes
    /// apply in submission order, so the model may run ahead of acknowledgements.
    /// Posts are added to the model when their id is known.
    fn plan(&mut self, rng: &mut Rng, action: Action, near: Option<usize>) -> (Write, Option<NewPost>) {
        let n = self.order.len();
        let w = match action {
            Action::Post => {
                let channel = near.unwrap_or_else(|| pick_channel(rng));
                let text = text_for(rng, n);
                let w = Write::Post {
                    channel: self.channels[channel],
                    text: text.clone(),
                    reply_to: None,
                };
                return (
                    w,
                    Some(NewPost {
                        channel,
                        text,
                        parent: None,
                    }),
                );
            }
            Action::Reply => {
                // To a root or to a reply (which joins the root's thread).
                let to = self.pick_target(rng, near, |_, _| true).expect("a live message");
                let channel = self.msgs[&to].channel;
                let text = text_for(rng, n);
                let w = Write::Post {
                    channel: self.channels[channel],
                    text: text.clone(),
                    reply_to: Some(to),
                };
                return (
                    w,
                    Some(NewPost {
                        channel,
                        text,
                        parent: Some(to),
                    }),
                );
            }
            Action::React => {
                let msg = self.pick_target(rng, near, |_, _| true).expect("a live message");
                let emoji = rng.pick(&EMOJI).to_string();
                self.msgs.get_mut(&msg).unwrap().reactions.insert(emoji.clone());
                self.touched.insert(msg);
                Write::React {
                    msg,
                    emoji,
                    remove: false,
                }
            }
            Action::Unreact => {
                if rng.chance(10) {
                    // Removing a reaction that is not there changes nothing.
                    let msg = self
                        .pick_target(rng, near, |_, m| m.reactions.is_empty())
                        .expect("a live message");
                    Write::React {
                        msg,
                        emoji: "🎉".into(),
                        remove: true,
                    }
                } else {
                    let msg = self
                        .pick_target(rng, near, |_, m| !m.reactions.is_empty())
                        .expect("a reaction");
                    let m = self.msgs.get_mut(&msg).unwrap();
                    let emoji = m.reactions.iter().nth(rng.below(m.reactions.len())).unwrap().clone();
                    m.reactions.remove(&emoji);
                    Write::React {
                        msg,
                        emoji,
                        remove: true,
                    }
                }
            }
            Action::Edit | Action::EditAgain => {
                // A second edit where there is an edited message (in the channel,
                // with `near`), else a first one.
                let edited: Vec<MessageId> = self
                    .edited
                    .iter()
                    .copied()
                    .filter(|id| !self.msgs[id].deleted && near.is_none_or(|c| self.msgs[id].channel == c))
                    .collect();
                let msg = if action == Action::EditAgain && !edited.is_empty() {
                    rng.pick(&edited)
                } else {
                    self.pick_target(rng, near, |_, m| !m.edited).expect("a live message")
                };
                if !self.msgs[&msg].edited {
                    self.edited.push(msg);
                }
                let m = self.msgs.get_mut(&msg).unwrap();
                let text = format!("edit {n}: was {} bytes", m.text.len());
                m.text = text.clone();
                m.edited = true;
                self.touched.insert(msg);
                Write::Edit { msg, text }
            }
            Action::DeleteRootWithReplies | Action::DeleteReply | Action::DeleteRoot => {
                let replies = &self.replies;
                let msg = match action {
                    Action::DeleteRootWithReplies => self.pick_target(rng, near, |id, m| {
                        m.root.is_none() && replies.get(id).is_some_and(|r| r.iter().any(|x| !self.msgs[x].deleted))
                    }),
                    Action::DeleteReply => self.pick_target(rng, near, |_, m| m.root.is_some()),
                    _ => self.pick_target(rng, near, |_, m| m.root.is_none()),
                }
                .expect("a message to delete");
                self.msgs.get_mut(&msg).unwrap().deleted = true;
                self.touched.insert(msg);
                Write::Delete { msg }
            }
            Action::MarkRead => {
                let channel = near.unwrap_or_else(|| pick_channel(rng));
                let up_to = if rng.chance(50) {
                    self.pick_target(rng, Some(channel), |_, _| true)
                } else {
                    None
                };
                Write::MarkRead {
                    channel: self.channels[channel],
                    up_to,
                }
            }
        };
        (w, None)
    }
}

/// Make a write through the convenience method for it (an awaited single call).
async fn call(h: &Hearth, w: Write) -> hearth::Result<Option<MessageId>> {
    match w {
        Write::Post {
            channel,
            text,
            reply_to: None,
        } => h.post(channel, &text).await.map(Some),
        Write::Post {
            text,
            reply_to: Some(to),
            ..
        } => h.reply(to, &text).await.map(Some),
        Write::React {
            msg,
            emoji,
            remove: false,
        } => h.react(msg, &emoji).await.map(|()| None),
        Write::React {
            msg,
            emoji,
            remove: true,
        } => h.unreact(msg, &emoji).await.map(|()| None),
        Write::Edit { msg, text } => h.edit(msg, &text).await.map(|()| None),
        Write::Delete { msg } => h.delete(msg).await.map(|()| None),
        Write::MarkRead { channel, up_to } => h.mark_read(channel, up_to).await.map(|()| None),
        Write::Rename { channel, name } => h.rename_channel(channel, &name).await.map(|()| None),
        Write::CreateChannel { name } => h.create_channel(&name).await.map(|_| None),
        Write::Reply { to, text } => h.reply(to, &text).await.map(Some),
        other => unreachable!("the workload makes no {other:?}"),
    }
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

fn actions(counts: &[(Action, usize)]) -> Vec<Action> {
    counts.iter().flat_map(|&(a, n)| std::iter::repeat_n(a, n)).collect()
}

/// Awaited single calls, in runs of activity in one channel at a time.
const RUNS: usize = 10;
const RUN: [(Action, usize); 8] = [
    (Action::Post, 6),
    (Action::Reply, 5),
    (Action::React, 4),
    (Action::Unreact, 1),
    (Action::Edit, 1),
    (Action::EditAgain, 1),
    (Action::DeleteReply, 1),
    (Action::MarkRead, 1),
];

/// 10,000 messages over five channels with threads, reactions, edits, deletes,
/// read markers and renames.
async fn workload(h: &Hearth, model: &mut Model, rng: &mut Rng) -> hearth::Result<()> {
    let t = Instant::now();
    for i in 0..WEIGHTS.len() {
        let name = format!("channel-{i}");
        let id = h.create_channel(&name).await?;
        model.channels.push(id);
        model.names.push(name);
    }

    // Bulk, pipelined: roots, replies to roots, replies to replies.
    let awaited_posts = RUNS * (RUN[0].1 + RUN[1].1);
    pipelined_posts(h, model, rng, 10_000 - 2_500 - awaited_posts, |_, _| None).await?;
    let roots: Vec<MessageId> = model.order.clone();
    pipelined_posts(h, model, rng, 1_800, |rng, _| Some(rng.pick(&roots))).await?;
    let first_replies: Vec<MessageId> = model.order[roots.len()..].to_vec();
    pipelined_posts(h, model, rng, 700, |rng, _| Some(rng.pick(&first_replies))).await?;
    eprintln!("  pipelined {} posts: {:?}", model.order.len(), t.elapsed());

    // Bulk, pipelined: reactions, edits, deletes and read markers all over.
    let t = Instant::now();
    let mut bulk = actions(&[
        (Action::React, 500),
        (Action::Unreact, 100),
        (Action::Edit, 200),
        (Action::EditAgain, 60),
        (Action::DeleteRootWithReplies, 50),
        (Action::DeleteReply, 50),
        (Action::DeleteRoot, 20),
        (Action::MarkRead, 10),
    ]);
    shuffle(rng, &mut bulk);
    let mut pending = Vec::new();
    for action in bulk {
        let (w, post) = model.plan(rng, action, None);
        assert!(post.is_none());
        pending.push(h.plumbing().store().submit(w).await?);
    }
    for p in pending {
        assert_eq!(p.await?, Outcome::Done);
    }
    eprintln!("  pipelined reactions, edits, deletes: {:?}", t.elapsed());

    // The rest: awaited single calls, a run of activity per channel at a time.
    let t = Instant::now();
    for run in 0..RUNS {
        let channel = pick_channel(rng);
        let mut steps = actions(&RUN);
        steps.push(if run % 2 == 0 {
            Action::DeleteRootWithReplies
        } else {
            Action::DeleteRoot
        });
        shuffle(rng, &mut steps);
        for action in steps {
            let (w, post) = model.plan(rng, action, Some(channel));
            let id = call(h, w).await?;
            if let Some(NewPost { channel, text, parent }) = post {
                model.add(id.expect("a post returns its id"), channel, text, parent);
            }
        }
        if run == RUNS / 2 {
            h.plumbing().store().checkpoint().await?;
        }
    }

    // A read marker moved back is ignored; one from another channel is refused.
    let older = model.order[10];
    let ch = model.msgs[&older].channel;
    h.mark_read(model.channels[ch], Some(older)).await?;
    let other = (ch + 1) % model.channels.len();
    assert!(matches!(
        h.mark_read(model.channels[other], Some(older)).await,
        Err(Error::Invalid { .. })
    ));

    // Writes to deleted messages are typed errors and change nothing.
    let gone = *model
        .touched
        .iter()
        .find(|id| model.msgs[id].deleted)
        .expect("a deleted message");
    assert!(matches!(h.edit(gone, "again").await, Err(Error::Invalid { .. })));
    assert!(matches!(h.react(gone, "👍").await, Err(Error::Invalid { .. })));
    assert!(matches!(h.reply(gone, "late").await, Err(Error::Invalid { .. })));

    // Renames: one channel twice, another once; names stay unique.
    h.rename_channel(model.channels[0], "renamed-zero").await?;
    h.rename_channel(model.channels[0], "general").await?;
    h.rename_channel(model.channels[3], "random ✨").await?;
    model.names[0] = "general".into();
    model.names[3] = "random ✨".into();

    // Most channels read to their newest message; the last keeps an older marker.
    for ch in 0..4 {
        h.mark_read(model.channels[ch], None).await?;
    }

    assert_eq!(model.order.len(), 10_000);
    eprintln!("  awaited single writes: {:?}", t.elapsed());
    Ok(())
}

// ----- the answer set -----

#[derive(Debug, PartialEq)]
struct ChannelAnswers {
    info: ChannelInfo,
    resolved: ChannelId,
    members: BTreeMap<UserId, String>,
    unread: u64,
    /// Every page, walking the cursor until an empty page.
    pages: Vec<Vec<Message>>,
    /// The thread of every root, in page order.
    threads: Vec<Thread>,
    /// `message(id)` of the sample ids of this channel.
    located: Vec<(MessageId, Located)>,
}

#[derive(Debug, PartialEq)]
struct Answers {
    channels: Vec<ChannelInfo>,
    per_channel: Vec<ChannelAnswers>,
    /// channels, messages, feed entries, epochs.
    stats: [u64; 4],
}

/// Sample ids by channel and epoch.
type Sample = BTreeMap<ChannelId, BTreeMap<u32, Vec<MessageId>>>;

/// Ids to look up one by one: 500 random ones plus every edited, deleted or
/// reacted one, by channel and epoch.
fn sample_ids(model: &Model, rng: &mut Rng) -> Sample {
    let mut ids: BTreeSet<MessageId> = model.touched.clone();
    while ids.len() < model.touched.len() + 500 {
        ids.insert(model.order[rng.below(model.order.len())]);
    }
    let mut out = Sample::new();
    for id in ids {
        let ch = model.channels[model.msgs[&id].channel];
        out.entry(ch).or_default().entry(id.epoch()).or_default().push(id);
    }
    out
}

/// Capture everything the store answers. The walk goes epoch by epoch (pages,
/// then the threads of their roots, then the sample ids of the epochs passed) so
/// that a small epoch cache loads each epoch about once.
async fn capture(h: &Hearth, channels: &[ChannelId], sample: &Sample) -> hearth::Result<Answers> {
    let t = Instant::now();
    let mut per_channel = Vec::new();
    for &ch in channels {
        let mut pending = sample.get(&ch).cloned().unwrap_or_default();
        let (mut pages, mut threads, mut located) = (Vec::new(), Vec::new(), Vec::new());
        let mut before = None;
        loop {
            let page = h.page(ch, before, PAGE).await?;
            let Some(last) = page.last() else {
                pages.push(page);
                break;
            };
            before = Some(last.id);
            for m in &page {
                threads.push(h.thread(m.id).await?);
            }
            // Epochs newer than the last root seen hold no more roots.
            for ids in pending.split_off(&(last.id.epoch() + 1)).into_values() {
                for id in ids {
                    located.push((id, h.message(id).await?));
                }
            }
            pages.push(page);
        }
        for id in std::mem::take(&mut pending).into_values().flatten() {
            located.push((id, h.message(id).await?));
        }
        let info = h.channel(ch).await?;
        per_channel.push(ChannelAnswers {
            resolved: h.resolve_channel(&info.name).await?,
            members: h.members(ch).await?,
            unread: h.unread(ch).await?,
            info,
            pages,
            threads,
            located,
        });
    }
    let s = h.stats().await?;
    let answers = Answers {
        channels: h.channels().await?,
        per_channel,
        stats: [s.channels, s.messages, s.feed_entries, s.epochs],
    };
    eprintln!("  capture: {:?}", t.elapsed());
    Ok(answers)
}

/// Compare two answer sets piece by piece, so a failure names what differs.
fn assert_same(before: &Answers, after: &Answers, what: &str) {
    assert_eq!(before.stats, after.stats, "{what}: stats");
    assert_eq!(before.channels, after.channels, "{what}: channel list");
    assert_eq!(before.per_channel.len(), after.per_channel.len());
    for (b, a) in before.per_channel.iter().zip(&after.per_channel) {
        let name = &b.info.name;
        assert_eq!(b.info, a.info, "{what}: channel {name}");
        assert_eq!(b.resolved, a.resolved, "{what}: resolve {name}");
        assert_eq!(b.members, a.members, "{what}: members of {name}");
        assert_eq!(b.unread, a.unread, "{what}: unread in {name}");
        assert_eq!(b.pages.len(), a.pages.len(), "{what}: page count of {name}");
        for (i, (pb, pa)) in b.pages.iter().zip(&a.pages).enumerate() {
            assert_eq!(pb, pa, "{what}: page {i} of {name}");
        }
        assert_eq!(b.threads.len(), a.threads.len(), "{what}: thread count of {name}");
        for (tb, ta) in b.threads.iter().zip(&a.threads) {
            assert_eq!(tb, ta, "{what}: thread {} of {name}", tb.root.id);
        }
        assert_eq!(b.located.len(), a.located.len());
        for (lb, la) in b.located.iter().zip(&a.located) {
            assert_eq!(lb, la, "{what}: message {}", lb.0);
        }
    }
    assert!(before == after, "{what}: answer sets differ");
}

/// Check an answer set against the model.
fn check_model(model: &Model, answers: &Answers, sample: &Sample) {
    let total = model.msgs.len() as u64;
    assert_eq!(answers.stats[0], model.channels.len() as u64, "stats: channels");
    assert_eq!(answers.stats[1], total, "stats: messages");
    let mut listed: Vec<(String, ChannelId)> = model
        .names
        .iter()
        .cloned()
        .zip(model.channels.iter().copied())
        .collect();
    listed.sort();
    let got: Vec<(String, ChannelId)> = answers.channels.iter().map(|c| (c.name.clone(), c.id)).collect();
    assert_eq!(got, listed, "channels() is sorted by name");
    for (i, ca) in answers.per_channel.iter().enumerate() {
        let (id, name) = (model.channels[i], &model.names[i]);
        let info = ChannelInfo {
            id,
            name: name.clone(),
            messages: model.count(i),
            unread: 0,
            newest: model.newest(i),
            // The marker itself is pinned by tests/read_markers.rs; here it only
            // has to survive the restart (the captures are compared whole).
            read_up_to: ca.info.read_up_to,
            retention: None,
        };
        assert_eq!(ca.info, info, "channel({name})");
        assert!(answers.channels.contains(&info), "channels() lists {name}");
        assert_eq!(ca.resolved, id, "resolve_channel({name})");
        assert_eq!(
            ca.members,
            BTreeMap::from([(model.me, "alice".to_string())]),
            "members of {name}"
        );
        assert_eq!(ca.unread, 0, "own messages are never unread");

        // Pages: full pages, then a short one, then an empty one.
        let (last, full) = ca.pages.split_last().expect("at least the empty page");
        assert!(last.is_empty(), "the walk ends on an empty page");
        for (n, p) in full.iter().enumerate() {
            let short_ok = n + 1 == full.len() && !p.is_empty();
            assert!(
                p.len() == PAGE || short_ok,
                "page {n} of {name} has {} messages",
                p.len()
            );
        }
        let roots = model.roots_newest_first(i);
        let paged: Vec<MessageId> = full.iter().flatten().map(|m| m.id).collect();
        assert_eq!(paged.len(), roots.len(), "top-level messages of {name}");
        assert_eq!(paged, roots, "pages of {name}: every root, newest first, no replies");
        for m in full.iter().flatten() {
            assert_eq!(*m, model.expected(&m.id), "page entry {} of {name}", m.id);
        }
        assert_eq!(ca.threads.len(), roots.len());
        for (t, root) in ca.threads.iter().zip(&roots) {
            assert_eq!(*t, model.expected_thread(root), "thread {root} of {name}");
        }
    }
    let mut located = Vec::new();
    for (id, loc) in answers.per_channel.iter().flat_map(|c| &c.located) {
        let m = &model.msgs[id];
        assert_eq!(loc.channel, model.channels[m.channel], "channel of {id}");
        assert_eq!(loc.message, model.expected(id), "message({id})");
        located.push(*id);
    }
    located.sort();
    let mut want: Vec<MessageId> = sample.values().flat_map(|e| e.values().flatten()).copied().collect();
    want.sort();
    assert_eq!(located, want, "message() of every sampled id");
}

/// Every reply's thread is its root's thread (a sample of replies).
async fn check_reply_threads(h: &Hearth, model: &Model, rng: &mut Rng) -> hearth::Result<()> {
    let mut replies: Vec<MessageId> = (0..200)
        .filter_map(|_| {
            let id = model.order[rng.below(model.order.len())];
            model.msgs[&id].root.map(|_| id)
        })
        .collect();
    replies.sort_by_key(|id| (model.msgs[id].channel, id.epoch(), *id));
    for id in replies {
        let root = model.msgs[&id].root.unwrap();
        assert_eq!(
            h.thread(id).await?,
            model.expected_thread(&root),
            "thread({id}) of a reply"
        );
    }
    Ok(())
}

async fn restart_roundtrip(config: Config, other: Config, seed: u64) -> TestResult {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut rng = Rng(seed);
    let h = Hearth::create(dir.path(), &pass(), "alice", config.clone()).await?;
    let mut model = Model::new(h.whoami().user);
    workload(&h, &mut model, &mut rng).await?;

    // Before closing: the store agrees with the model.
    let sample = sample_ids(&model, &mut rng);
    let before = capture(&h, &model.channels, &sample).await?;
    check_model(&model, &before, &sample);
    check_reply_threads(&h, &model, &mut rng).await?;
    let stats = h.stats().await?;
    assert!(stats.cached_epochs <= config.cached_epochs as u64, "{stats:?}");
    if config.epoch_messages == 500 {
        // Channels span many epochs, most of them evicted.
        assert!(stats.epochs >= 20, "{stats:?}");
    }
    h.close().await?;

    // After a clean close nothing is replayed and every answer is the same.
    let h = Hearth::open(dir.path(), &pass(), config.clone()).await?;
    assert_eq!(
        h.open_report(),
        &OpenReport::default(),
        "a clean close leaves nothing to replay (and the summaries for later)"
    );
    // Each channel's epoch summaries come from its one-row copy.
    assert_eq!(h.stats().await?.summary_copies, model.channels.len() as u64);
    let after = capture(&h, &model.channels, &sample).await?;
    assert_same(&before, &after, "after reopening");
    let report = h.verify().await?;
    assert!(report.is_clean(), "verify after reopening: {:?}", report.problems);
    assert_eq!(report.channels, model.channels.len() as u64);
    assert!(report.snapshots > 0, "closing snapshots epochs: {report:?}");
    // The open store holds its lock.
    assert!(matches!(
        Hearth::open(dir.path(), &pass(), config.clone()).await,
        Err(Error::Locked { .. })
    ));

    // The reopened store keeps working, in old (evicted, snapshotted) epochs too.
    let oldest = *model
        .order
        .iter()
        .find(|id| model.msgs[*id].channel == 0 && !model.msgs[*id].deleted)
        .expect("a live message");
    assert_eq!(oldest.epoch(), 1);
    let id = h.reply(oldest, "a reply after reopening").await?;
    model.add(id, 0, "a reply after reopening".into(), Some(oldest));
    h.react(id, "🎉").await?;
    model.msgs.get_mut(&id).unwrap().reactions.insert("🎉".into());
    let target = model.pick_live(&mut rng, |_, _| true).unwrap();
    h.edit(target, "edited after reopening").await?;
    let m = model.msgs.get_mut(&target).unwrap();
    m.text = "edited after reopening".into();
    m.edited = true;
    let victim = model.pick_live(&mut rng, |_, m| m.root.is_some()).unwrap();
    h.delete(victim).await?;
    model.msgs.get_mut(&victim).unwrap().deleted = true;
    let post = h.post(model.channels[4], "a post after reopening").await?;
    // The clock survived the restart: the new id sorts after every older one.
    assert!(
        Some(&post) > model.msgs.keys().next_back(),
        "ids after reopening sort last"
    );
    model.add(post, 4, "a post after reopening".into(), None);
    model.touched.extend([id, target, victim, post]);
    h.mark_read(model.channels[4], None).await?;
    h.rename_channel(model.channels[1], "renamed after reopening").await?;
    model.names[1] = "renamed after reopening".into();
    let new_pass = Passphrase::new("a new passphrase");
    h.change_passphrase(&new_pass).await?;
    h.close().await?;
    assert!(matches!(
        Hearth::open(dir.path(), &pass(), other.clone()).await,
        Err(Error::WrongPassphrase)
    ));

    // A third open, with the new passphrase and under the other configuration
    // (another epoch size and cache size): the writes made after reopening are
    // there, and the store still agrees with the model.
    let h = Hearth::open(dir.path(), &new_pass, other).await?;
    assert_eq!(h.open_report(), &OpenReport::default());
    assert_eq!(h.stats().await?.summary_copies, model.channels.len() as u64);
    let sample = sample_ids(&model, &mut rng);
    let again = capture(&h, &model.channels, &sample).await?;
    check_model(&model, &again, &sample);
    assert_eq!(again.stats[1], 10_002);
    let report = h.verify().await?;
    assert!(
        report.is_clean(),
        "verify after the second reopening: {:?}",
        report.problems
    );
    h.close().await?;
    eprintln!("  total: {:?}", started.elapsed());
    Ok(())
}

/// The acceptance test under the default configuration.
#[tokio::test]
async fn restart_preserves_every_answer_default_config() -> TestResult {
    restart_roundtrip(fast(), small_epochs(), 1).await
}

/// The acceptance test with 500-message epochs and 4 cached epochs: channels
/// span several epochs, which are evicted and snapshotted during the run.
#[tokio::test]
async fn restart_preserves_every_answer_small_epochs() -> TestResult {
    restart_roundtrip(small_epochs(), fast(), 2).await
}

// ----- page ordering -----

/// Pipelined top-level posts, every third one in channel 1, the rest in channel 0.
async fn post_roots(h: &Hearth, model: &mut Model, n: usize) -> hearth::Result<()> {
    let mut pending = Vec::new();
    for i in 0..n {
        let ch = usize::from(i % 3 == 2);
        let text = format!("root {} in {}", model.order.len() + i, model.names[ch]);
        let w = Write::Post {
            channel: model.channels[ch],
            text: text.clone(),
            reply_to: None,
        };
        pending.push((ch, text, h.plumbing().store().submit(w).await?));
    }
    for (ch, text, p) in pending {
        model.add(message_id(p.await?), ch, text, None);
    }
    Ok(())
}

/// Pipelined replies to random messages (roots or replies) of channel 0.
async fn post_replies(h: &Hearth, model: &mut Model, rng: &mut Rng, n: usize) -> hearth::Result<Vec<MessageId>> {
    let mut pending = Vec::new();
    for i in 0..n {
        let to = model
            .pick_live(rng, |_, m| m.channel == 0)
            .expect("a message in channel 0");
        let text = format!("reply {i}");
        let w = Write::Post {
            channel: model.channels[0],
            text: text.clone(),
            reply_to: Some(to),
        };
        pending.push((to, text, h.plumbing().store().submit(w).await?));
    }
    let mut ids = Vec::new();
    for (to, text, p) in pending {
        let id = message_id(p.await?);
        model.add(id, 0, text, Some(to));
        ids.push(id);
    }
    Ok(ids)
}

/// The page checks of [`pages_are_newest_first_across_epochs`].
async fn check_pages(
    h: &Hearth,
    model: &Model,
    early_reply: MessageId,
    tombstone: MessageId,
    round: &str,
) -> TestResult {
    let (a, b) = (model.channels[0], model.channels[1]);
    let roots_a = model.roots_newest_first(0);
    let oldest_first: Vec<MessageId> = roots_a.iter().rev().copied().collect();

    // Walking with several page sizes gives every root, newest first, whatever the
    // page size (37 straddles epoch boundaries, 1,000 is larger than an epoch).
    for limit in [1, 37, 50, 1_000, 5_000] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = h.page(a, before, limit).await?;
            assert!(page.len() <= limit, "{round}: a page of {limit} holds {}", page.len());
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            for m in &page {
                assert_eq!(*m, model.expected(&m.id), "{round}: page entry {}", m.id);
            }
            seen.extend(page.iter().map(|m| m.id));
            // Pages of one: walk across the newest epoch boundary, not all 1,300.
            if limit == 1 && seen.len() > 400 {
                break;
            }
        }
        let want = if limit == 1 {
            &roots_a[..seen.len()]
        } else {
            &roots_a[..]
        };
        assert_eq!(
            seen, want,
            "{round}: walking pages of {limit}: every root, newest first, no replies"
        );
    }
    let all = h.page(a, None, 5_000).await?;
    let dead = all
        .iter()
        .find(|m| m.id == tombstone)
        .expect("a deleted root stays in pages as a tombstone");
    assert!(
        dead.deleted && dead.text.is_none() && dead.reply_count > 0,
        "{round}: {dead:?}"
    );
    assert!(
        all.iter().filter(|m| m.reply_count > 0).count() > 100,
        "{round}: reply counts show in pages"
    );

    // A cursor from the middle gives the next older roots, across epoch boundaries.
    for at in [1, 37, 250, 499, 500, 501, 520, 650, 999, 1_000, 1_001, 1_299] {
        let page = h.page(a, Some(oldest_first[at]), 50).await?;
        let want: Vec<MessageId> = oldest_first[at.saturating_sub(50)..at].iter().rev().copied().collect();
        assert_eq!(
            page.iter().map(|m| m.id).collect::<Vec<_>>(),
            want,
            "{round}: before root #{at}"
        );
    }
    assert!(
        h.page(a, Some(oldest_first[0]), 50).await?.is_empty(),
        "{round}: nothing is older than the oldest root"
    );

    // A reply as the cursor is accepted (it is a message of the channel): the page
    // holds the roots older than the reply, which lives in its root's older epoch
    // with a newer timestamp.
    let page = h.page(a, Some(early_reply), 50).await?;
    let want: Vec<MessageId> = roots_a
        .iter()
        .copied()
        .filter(|id| *id < early_reply)
        .take(50)
        .collect();
    assert_eq!(want.len(), 50);
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        want,
        "{round}: a reply as the cursor"
    );

    // A cursor from another channel is a typed error; so is an unknown message or channel.
    let in_b = model.roots_newest_first(1)[10];
    match h.page(a, Some(in_b), 50).await {
        Err(Error::Invalid { what, .. }) => assert_eq!(what, "cursor"),
        other => panic!("{round}: a cursor from another channel gave {other:?}"),
    }
    let mut unknown = oldest_first[5];
    unknown.0[19] ^= 0xff;
    assert!(matches!(
        h.page(a, Some(unknown), 50).await,
        Err(Error::NotFound { what: "message", .. })
    ));
    assert!(matches!(
        h.page(ChannelId([7; 32]), None, 50).await,
        Err(Error::NotFound { what: "channel", .. })
    ));

    // Channel b, interleaved in time with a, pages on its own.
    let page_b = h.page(b, None, 5_000).await?;
    assert_eq!(
        page_b.iter().map(|m| m.id).collect::<Vec<_>>(),
        model.roots_newest_first(1),
        "{round}: channel b"
    );
    Ok(())
}

/// Pages are newest first across epoch boundaries, hold top-level messages only
/// (replies are counted in `reply_count`), and a cursor must name a message of
/// the channel.
#[tokio::test]
async fn pages_are_newest_first_across_epochs() -> TestResult {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut rng = Rng(3);
    let h = Hearth::create(dir.path(), &pass(), "alice", small_epochs()).await?;
    let mut model = Model::new(h.whoami().user);
    for name in ["a", "b"] {
        model.channels.push(h.create_channel(name).await?);
        model.names.push(name.into());
    }

    // 700 roots in a (interleaved with 350 in b), 100 replies, 600 more roots,
    // 200 more replies: a spans three 500-message epochs, and replies to old roots
    // live in old epochs with newer timestamps.
    post_roots(&h, &mut model, 1_050).await?;
    let early = post_replies(&h, &mut model, &mut rng, 100).await?;
    post_roots(&h, &mut model, 900).await?;
    post_replies(&h, &mut model, &mut rng, 200).await?;
    // A deleted root with replies stays in pages as a tombstone; a deleted reply
    // leaves its root's reply count.
    let tombstone = *model.replies.iter().find(|(_, r)| r.len() >= 2).expect("a thread").0;
    h.delete(tombstone).await?;
    model.msgs.get_mut(&tombstone).unwrap().deleted = true;
    let reply = *model.replies[&tombstone].iter().next().unwrap();
    h.delete(reply).await?;
    model.msgs.get_mut(&reply).unwrap().deleted = true;

    // Epochs fill with 500 top-level posts each, in posting order.
    let oldest_first: Vec<MessageId> = model.roots_newest_first(0).into_iter().rev().collect();
    assert_eq!(oldest_first.len(), 1_300);
    let epochs: Vec<u32> = oldest_first.iter().map(|id| id.epoch()).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "epochs grow with time");
    // An epoch is full at 500 messages, replies included (they live in their
    // root's epoch), so epoch 1 holds the first 500 roots and later epochs fewer.
    assert_eq!((epochs[0], epochs[499], epochs[500], epochs[1_299]), (1, 1, 2, 3));
    for e in 1..3u32 {
        let held = model
            .msgs
            .iter()
            .filter(|(id, m)| id.epoch() == e && m.channel == 0)
            .count();
        assert!(held >= 500, "epoch {e} closed with {held} messages");
    }
    // The early reply lives in its root's epoch, older than the newest roots.
    assert!(early[0].epoch() < 3);

    check_pages(&h, &model, early[0], tombstone, "before reopening").await?;
    h.close().await?;
    let h = Hearth::open(dir.path(), &pass(), small_epochs()).await?;
    check_pages(&h, &model, early[0], tombstone, "after reopening").await?;
    h.close().await?;
    eprintln!("  total: {:?}", started.elapsed());
    Ok(())
}

// ----- unread counts -----

/// The local user's own messages never count as unread, whatever the read
/// markers say. Everything in this store is written by its own user, so every
/// unread count is 0; unread counts of messages by other users (which need a
/// second user's feed) are tested by the sync tests.
#[tokio::test]
async fn own_messages_are_never_unread() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = small_epochs().with_epoch_messages(50);
    let h = Hearth::create(dir.path(), &pass(), "alice", config.clone()).await?;
    let (a, b) = (h.create_channel("a").await?, h.create_channel("b").await?);
    let assert_none_unread = async |h: &Hearth, when: &str| -> TestResult {
        for ch in [a, b] {
            assert_eq!(h.unread(ch).await?, 0, "{when}: unread({ch})");
            assert_eq!(h.channel(ch).await?.unread, 0, "{when}: channel({ch})");
        }
        assert!(h.channels().await?.iter().all(|c| c.unread == 0), "{when}: channels()");
        Ok(())
    };
    assert_none_unread(&h, "empty channels").await?;

    // No read marker yet, over several epochs, with replies.
    let mut roots = Vec::new();
    for i in 0..120 {
        let root = h.post(if i % 4 == 0 { b } else { a }, &format!("post {i}")).await?;
        roots.push(root);
        if i % 10 == 0 {
            let r = h.reply(root, "a reply").await?;
            h.reply(r, "a reply to the reply").await?;
        }
    }
    assert_none_unread(&h, "no read marker").await?;

    // A marker in the middle, at the newest message, moved back (ignored), and at a reply.
    h.mark_read(a, Some(roots[41])).await?;
    assert_none_unread(&h, "marker in the middle").await?;
    h.mark_read(a, None).await?;
    h.mark_read(a, Some(roots[1])).await?;
    assert_none_unread(&h, "marker at the newest").await?;
    let late = h.reply(roots[1], "a late reply in an old epoch").await?;
    h.post(a, "after the marker").await?;
    h.mark_read(b, Some(late))
        .await
        .expect_err("a marker from another channel is refused");
    h.mark_read(a, Some(late)).await?;
    h.delete(roots[2]).await?;
    assert_none_unread(&h, "newer than the marker").await?;
    h.close().await?;

    let h = Hearth::open(dir.path(), &pass(), config).await?;
    assert_none_unread(&h, "after reopening").await?;
    h.close().await?;
    Ok(())
}

// ----- findings -----

/// A page of zero messages is empty, and asking for one must not take the store
/// down.
///
/// Regression (fixed): `Engine::page` (store/src/query.rs) evaluates `out.get(limit - 1)` with
/// `limit == 0` as soon as the channel has an epoch with top-level messages; in
/// builds with overflow checks (debug, tests) the subtraction panics on the store
/// thread, the store task dies and every later call on every handle returns
/// `Error::Closed`. (In release builds it wraps and happens to work.)
#[tokio::test]
async fn page_of_zero_messages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let h = Hearth::create(dir.path(), &pass(), "alice", fast()).await?;
    let ch = h.create_channel("a").await?;
    let first = h.post(ch, "one").await?;
    h.post(ch, "two").await?;
    assert_eq!(h.page(ch, None, 0).await?, vec![]);
    assert_eq!(h.page(ch, Some(first), 0).await?, vec![]);
    // The store is still there.
    assert_eq!(h.page(ch, None, 10).await?.len(), 2);
    h.close().await?;
    Ok(())
}

/// Where the next top-level post goes does not depend on whether the store was
/// restarted.
///
/// Regression (fixed): while running, `ChannelState::current.1` counts only top-level posts
/// (`Engine::stage`), but `Engine::load_channel` restores it from
/// `EpochSummary::messages`, which counts replies and tombstones too. So after a
/// restart the current epoch is treated as fuller than it was and new posts open
/// the next epoch early: the epoch layout depends on when the store was
/// restarted. Here 30 roots + 30 replies with `epoch_messages = 50`: without a
/// restart the 31st root goes to epoch 1, after one it goes to epoch 2.
#[tokio::test]
async fn epoch_of_next_post_survives_restart() -> TestResult {
    let config = fast().with_epoch_messages(50);
    let mut epochs = Vec::new();
    for restart in [false, true] {
        let dir = tempfile::tempdir()?;
        let mut h = Hearth::create(dir.path(), &pass(), "alice", config.clone()).await?;
        let ch = h.create_channel("a").await?;
        // 30 top-level posts with a reply each: 60 messages, 30 of them top-level.
        for i in 0..30 {
            let root = h.post(ch, &format!("root {i}")).await?;
            h.reply(root, "reply").await?;
        }
        if restart {
            h.close().await?;
            h = Hearth::open(dir.path(), &pass(), config.clone()).await?;
        }
        epochs.push(h.post(ch, "the next post").await?.epoch());
        h.close().await?;
    }
    assert_eq!(
        epochs[0], epochs[1],
        "epoch of the next post without and with a restart"
    );
    Ok(())
}
