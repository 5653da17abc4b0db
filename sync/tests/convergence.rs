//! Convergence of real stores through sync sessions run in-process: 3 to 5
//! users in one channel write at random (posts, replies, reactions, edits,
//! deletions, read markers) between random pairwise sessions whose requests
//! are lost, whose answers are lost, or which are delivered twice, while stores
//! restart from disk. Once every pair has synced until nothing moves, every
//! replica shows the same channel, and that channel is what a small model of
//! the writes predicts.

#[path = "../../tests/support/rng.rs"]
mod rng;

use std::collections::{BTreeMap, BTreeSet};

use hearth_core::{ChannelId, KdfParams, Message, MessageId, Passphrase, UserId};
use hearth_store::{Config, Store};
use hearth_sync::drive::{Conn, run_session, serve};
use hearth_sync::reconcile::Outcome;
use proptest::prelude::*;
use proptest::sample::Index;
use rng::Rng;

const EMOJI: [&str; 3] = ["👍", "🎉", ":eyes:"];
/// Rounds of all-pairs sessions allowed to reach quiescence.
const MAX_ROUNDS: usize = 4;

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn pass() -> Passphrase {
    Passphrase::new("pw")
}

/// One user's device: its store, closed and reopened on restarts.
struct Node {
    dir: tempfile::TempDir,
    store: Option<Store>,
    user: UserId,
}

impl Node {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    async fn restart(&mut self) {
        self.store.take().expect("open").close().await.unwrap();
        self.store = Some(Store::open(self.dir.path(), &pass(), config()).await.unwrap());
    }
}

/// What the writes predict for a message. Each user writes from one device, so
/// its own writes are ordered: the last one counts.
#[derive(Debug)]
struct Expected {
    author: UserId,
    root: Option<MessageId>,
    text: String,
    deleted: bool,
    reactions: BTreeMap<(UserId, &'static str), bool>,
}

struct World {
    channel: ChannelId,
    nodes: Vec<Node>,
    messages: Vec<MessageId>,
    model: BTreeMap<MessageId, Expected>,
    sessions: u32,
    failed: u32,
}

async fn world(n: usize) -> World {
    let mut nodes = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path(), &pass(), &format!("user{i}"), config())
            .await
            .unwrap();
        let user = store.whoami().user;
        nodes.push(Node {
            dir,
            store: Some(store),
            user,
        });
    }
    let channel = nodes[0].store().create_channel("general").await.unwrap();
    let keys = nodes[0].store().channel_keys(channel).await.unwrap();
    for node in &nodes[1..] {
        assert_eq!(node.store().join_channel(keys.clone()).await.unwrap(), channel);
    }
    World {
        channel,
        nodes,
        messages: Vec::new(),
        model: BTreeMap::new(),
        sessions: 0,
        failed: 0,
    }
}

/// How a request fares on its way to the peer.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    Once,
    /// The request never arrives.
    LostRequest,
    /// The peer serves it; the answer never arrives.
    LostAnswer,
    /// The peer serves it twice; the requester sees one of the answers.
    Twice {
        first_answer: bool,
    },
}

fn delivery(rng: &mut Option<Rng>) -> Delivery {
    let Some(rng) = rng else { return Delivery::Once };
    match rng.below(100) {
        0..8 => Delivery::LostRequest,
        8..16 => Delivery::LostAnswer,
        16..30 => Delivery::Twice {
            first_answer: rng.chance(50),
        },
        _ => Delivery::Once,
    }
}

/// A full session from `a` to `b`, through a link that may lose or repeat
/// messages (`faults` seeds it; `None`: a perfect link).
async fn session(a: &Store, b: &Store, faults: Option<u64>) -> Outcome {
    let mut rng = faults.map(Rng);
    let (mine, theirs) = (
        Conn::new(b"a".to_vec(), b"b".to_vec()),
        Conn::new(b"b".to_vec(), b"a".to_vec()),
    );
    let theirs = &theirs;
    let session = mine.session(a, false).await.unwrap();
    let outcome = run_session(session, a, &mine, |req| {
        let how = delivery(&mut rng);
        async move {
            match how {
                Delivery::Once => Ok(serve(b, req, theirs).await.0),
                Delivery::LostRequest => Err("request lost".to_string()),
                Delivery::LostAnswer => {
                    serve(b, req, theirs).await;
                    Err("answer lost".to_string())
                }
                Delivery::Twice { first_answer } => {
                    let first = serve(b, req.clone(), theirs).await.0;
                    let second = serve(b, req, theirs).await.0;
                    Ok(if first_answer { first } else { second })
                }
            }
        }
    })
    .await;
    // Honest peers never refuse each other's entries, whatever the link did.
    assert_eq!(
        (outcome.refused_here, outcome.refused_there, &outcome.refusal),
        (0, 0, &None),
        "{outcome:?}"
    );
    if faults.is_none() {
        assert_eq!(outcome.failed, None);
    }
    outcome
}

#[derive(Clone, Debug)]
enum Step {
    Post(Index),
    Reply(Index, Index),
    React(Index, Index, usize),
    Unreact(Index, Index, usize),
    Edit(Index, Index),
    Delete(Index, Index),
    MarkRead(Index, Option<Index>),
    Sync(Index, Index, Option<u64>),
    /// Two sessions into one replica at the same time.
    SyncBoth(Index, Index, Index, Option<u64>),
    Restart(Index),
}

fn step() -> impl Strategy<Value = Step> {
    let i = any::<Index>;
    let faults = || prop_oneof![1 => Just(None), 2 => any::<u64>().prop_map(Some)];
    prop_oneof![
        4 => i().prop_map(Step::Post),
        3 => (i(), i()).prop_map(|(n, m)| Step::Reply(n, m)),
        2 => (i(), i(), 0..EMOJI.len()).prop_map(|(n, m, e)| Step::React(n, m, e)),
        1 => (i(), i(), 0..EMOJI.len()).prop_map(|(n, m, e)| Step::Unreact(n, m, e)),
        1 => (i(), i()).prop_map(|(n, m)| Step::Edit(n, m)),
        1 => (i(), i()).prop_map(|(n, m)| Step::Delete(n, m)),
        1 => (i(), proptest::option::of(i())).prop_map(|(n, m)| Step::MarkRead(n, m)),
        4 => (i(), i(), faults()).prop_map(|(a, b, f)| Step::Sync(a, b, f)),
        1 => (i(), i(), i(), faults()).prop_map(|(a, b, c, f)| Step::SyncBoth(a, b, c, f)),
        1 => i().prop_map(Step::Restart),
    ]
}

impl World {
    /// A message `node` holds and has not seen deleted.
    async fn target(&self, node: usize, pick: &Index) -> Option<MessageId> {
        if self.messages.is_empty() {
            return None;
        }
        let id = *pick.get(&self.messages);
        match self.nodes[node].store().message(id).await {
            Ok(l) if !l.message.deleted => Some(id),
            Ok(_) | Err(hearth_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// One of `node`'s own messages it has not deleted.
    fn own(&self, node: usize, pick: &Index) -> Option<MessageId> {
        let user = self.nodes[node].user;
        let mine: Vec<MessageId> = self
            .model
            .iter()
            .filter(|(_, e)| e.author == user && !e.deleted)
            .map(|(id, _)| *id)
            .collect();
        (!mine.is_empty()).then(|| *pick.get(&mine))
    }

    fn created(&mut self, id: MessageId, node: usize, root: Option<MessageId>, text: String) {
        self.messages.push(id);
        self.model.insert(
            id,
            Expected {
                author: self.nodes[node].user,
                root,
                text,
                deleted: false,
                reactions: BTreeMap::new(),
            },
        );
    }

    async fn sync(&mut self, a: usize, b: usize, faults: Option<u64>) {
        if a == b {
            return;
        }
        let o = session(self.nodes[a].store(), self.nodes[b].store(), faults).await;
        self.count(&o);
    }

    fn count(&mut self, o: &Outcome) {
        self.sessions += 1;
        self.failed += u32::from(o.failed.is_some());
    }

    async fn run(&mut self, s: &Step) {
        let n = self.nodes.len();
        let node = |i: &Index| i.index(n);
        match s {
            Step::Post(i) => {
                let text = format!("post {}", self.messages.len());
                let id = self.nodes[node(i)].store().post(self.channel, &text).await.unwrap();
                self.created(id, node(i), None, text);
            }
            Step::Reply(i, m) => {
                if let Some(to) = self.target(node(i), m).await {
                    let text = format!("reply {}", self.messages.len());
                    let id = self.nodes[node(i)].store().reply(to, &text).await.unwrap();
                    let root = self.model[&to].root.unwrap_or(to);
                    self.created(id, node(i), Some(root), text);
                }
            }
            Step::React(i, m, e) | Step::Unreact(i, m, e) => {
                if let Some(msg) = self.target(node(i), m).await {
                    let store = self.nodes[node(i)].store();
                    let add = matches!(s, Step::React(..));
                    if add {
                        store.react(msg, EMOJI[*e]).await.unwrap();
                    } else {
                        store.unreact(msg, EMOJI[*e]).await.unwrap();
                    }
                    let user = self.nodes[node(i)].user;
                    let m = self.model.get_mut(&msg).expect("modelled");
                    m.reactions.insert((user, EMOJI[*e]), add);
                }
            }
            Step::Edit(i, m) => {
                if let Some(msg) = self.own(node(i), m) {
                    let text = format!("edit {} of {msg}", self.sessions);
                    self.nodes[node(i)].store().edit(msg, &text).await.unwrap();
                    self.model.get_mut(&msg).expect("modelled").text = text;
                }
            }
            Step::Delete(i, m) => {
                if let Some(msg) = self.own(node(i), m) {
                    self.nodes[node(i)].store().delete(msg).await.unwrap();
                    self.model.get_mut(&msg).expect("modelled").deleted = true;
                }
            }
            Step::MarkRead(i, m) => {
                let up_to = match m {
                    Some(m) => match self.target(node(i), m).await {
                        Some(id) => Some(id),
                        None => return,
                    },
                    None => None,
                };
                self.nodes[node(i)]
                    .store()
                    .mark_read(self.channel, up_to)
                    .await
                    .unwrap();
            }
            Step::Sync(a, b, f) => self.sync(node(a), node(b), *f).await,
            Step::SyncBoth(a, b, c, f) => {
                let (a, b, c) = (node(a), node(b), node(c));
                if a == b || c == b {
                    return self.sync(a, c, *f).await;
                }
                let (x, y) = (self.nodes[a].store(), self.nodes[c].store());
                let target = self.nodes[b].store();
                let (o1, o2) = tokio::join!(session(x, target, *f), session(y, target, f.map(|s| s ^ 1)));
                self.count(&o1);
                self.count(&o2);
            }
            Step::Restart(i) => self.nodes[node(i)].restart().await,
        }
    }

    /// Sync every ordered pair on a perfect link until a round moves nothing.
    async fn settle(&mut self) -> usize {
        let n = self.nodes.len();
        for round in 1..=MAX_ROUNDS {
            // A write's feed entry exists once its group closes; so do the
            // delivery receipts the last round queued.
            for node in &self.nodes {
                node.store().flush_receipts().await.unwrap();
                node.store().checkpoint().await.unwrap();
            }
            let mut moved = 0;
            let mut all_in_sync = true;
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        let o = session(self.nodes[a].store(), self.nodes[b].store(), None).await;
                        moved += o.received + o.sent;
                        all_in_sync &= o.in_sync_at_hello && o.round_trips == 1;
                    }
                }
            }
            if moved == 0 {
                assert!(all_in_sync, "nothing moved, yet some Hello found a difference");
                return round;
            }
        }
        panic!("still moving entries after {MAX_ROUNDS} rounds of all-pairs sync");
    }

    /// Every replica shows the same channel, the one the model predicts.
    async fn check(&self) {
        let ch = self.channel;
        let first = self.nodes[0].store();
        let vectors = first.vectors().await.unwrap();
        assert_eq!(vectors.len(), 1);
        let page = first.page(ch, None, 10_000).await.unwrap();
        let members = first.members(ch).await.unwrap();
        let expected_members: BTreeSet<UserId> = self.nodes.iter().map(|n| n.user).collect();
        assert_eq!(members.keys().copied().collect::<BTreeSet<_>>(), expected_members);
        let mut threads = Vec::new();
        for m in &page {
            threads.push(first.thread(m.id).await.unwrap());
        }
        let mut everything: BTreeMap<MessageId, Message> = BTreeMap::new();
        for t in &threads {
            everything.insert(t.root.id, t.root.clone());
            everything.extend(t.replies.iter().map(|r| (r.id, r.clone())));
        }
        assert_eq!(
            everything.keys().copied().collect::<BTreeSet<_>>(),
            self.model.keys().copied().collect::<BTreeSet<_>>(),
            "every message is in a page or a thread"
        );
        for (id, m) in &everything {
            self.check_message(m, &self.model[id], &everything);
        }
        for node in &self.nodes {
            let s = node.store();
            assert_eq!(s.vectors().await.unwrap(), vectors);
            assert_eq!(s.page(ch, None, 10_000).await.unwrap(), page);
            assert_eq!(s.members(ch).await.unwrap(), members);
            for (t, m) in threads.iter().zip(&page) {
                assert_eq!(&s.thread(m.id).await.unwrap(), t);
            }
            for (id, m) in &everything {
                let l = s.message(*id).await.unwrap();
                assert_eq!((l.channel, &l.message), (ch, m));
            }
            // Unread: others' live messages newer than this user's marker.
            let info = s.channel(ch).await.unwrap();
            let unread = everything
                .values()
                .filter(|m| m.author != node.user && !m.deleted && info.read_up_to.is_none_or(|r| m.id > r))
                .count() as u64;
            assert_eq!((s.unread(ch).await.unwrap(), info.unread), (unread, unread));
            assert_eq!(info.messages, everything.len() as u64);
            let report = s.verify().await.unwrap();
            assert!(report.is_clean(), "{report:?}");
        }
    }

    fn check_message(&self, m: &Message, e: &Expected, all: &BTreeMap<MessageId, Message>) {
        assert_eq!(
            (m.author, m.reply_to, m.deleted),
            (e.author, e.root, e.deleted),
            "{}",
            m.id
        );
        if e.deleted {
            assert_eq!(m.text, None);
            return;
        }
        assert_eq!(m.text.as_deref(), Some(e.text.as_str()));
        let mut reactions: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
        for ((user, emoji), on) in &e.reactions {
            if *on {
                reactions.entry(emoji.to_string()).or_default().insert(*user);
            }
        }
        assert_eq!(m.reactions, reactions, "{}", m.id);
        let replies = all.values().filter(|r| r.reply_to == Some(m.id) && !r.deleted).count();
        assert_eq!(m.reply_count as usize, replies, "{}", m.id);
    }

    async fn close(self) {
        for node in self.nodes {
            node.store.expect("open").close().await.unwrap();
        }
    }
}

/// Entries a replica holds of its one channel.
async fn total(s: &Store) -> u64 {
    s.vectors().await.unwrap()[0].1.total()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_whatever_the_link_does(n in 3..=5usize, steps in prop::collection::vec(step(), 10..50)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut w = world(n).await;
            for s in &steps {
                w.run(s).await;
            }
            for i in 0..n {
                // Stores restarted mid-run and now: what they acknowledged is on disk.
                if i % 2 == 0 {
                    w.nodes[i].restart().await;
                }
            }
            let rounds = w.settle().await;
            eprintln!(
                "{n} replicas, {} steps: {} sessions ({} cut short by the link), settled in {rounds} rounds",
                steps.len(), w.sessions, w.failed
            );
            w.check().await;
            w.close().await;
        });
    }
}

/// A replica 500 messages behind catches up in one session: one Hello, then
/// Fetches in batches, and its own join pushed back. A third replica then takes
/// everything from the second (entries travel as stored, whoever wrote them).
#[test]
fn a_replica_catches_up_on_500_messages_in_one_session() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut w = world(3).await;
        for i in 0..500 {
            let text = format!("message {i}");
            let id = w.nodes[0].store().post(w.channel, &text).await.unwrap();
            w.created(id, 0, None, text);
        }
        let (a, b, c) = (w.nodes[0].store(), w.nodes[1].store(), w.nodes[2].store());
        // Entries, not messages: a group commit carries several posts, and its
        // entry exists once the group closes (checkpoint closes it now).
        a.checkpoint().await.unwrap();
        b.checkpoint().await.unwrap();
        let (behind, joined) = (total(a).await, total(b).await);
        let o = session(b, a, None).await;
        eprintln!(
            "catch-up of 500 messages: {} round trips, {} entries received, {} sent",
            o.round_trips, o.received, o.sent
        );
        // b also sends its delivery receipt when its group closed in time.
        assert_eq!(o.received, behind);
        assert!(o.sent >= joined, "{o:?}");
        assert_eq!(o.round_trips, 3, "Hello, one Fetch, one Push: {o:?}");
        assert_eq!(b.vectors().await.unwrap(), a.vectors().await.unwrap());
        assert_eq!(b.page(w.channel, None, 10_000).await.unwrap().len(), 500);

        // c lacks all that b holds; b lacks c's join.
        b.checkpoint().await.unwrap();
        c.checkpoint().await.unwrap();
        let (behind, joined) = (total(b).await, total(c).await);
        let o = session(c, b, None).await;
        eprintln!("relayed through b: {} round trips", o.round_trips);
        assert_eq!(o.received, behind);
        assert!(o.sent >= joined, "{o:?}");
        assert_eq!(o.round_trips, 3, "{o:?}");
        w.settle().await;
        w.check().await;
        w.close().await;
    });
}
