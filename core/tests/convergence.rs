//! Convergence of an epoch document: devices that write concurrently, sync
//! partially, and finally exchange every change in any order, duplicated and in
//! any batching, all show the same view, and that view is what a small model of
//! the ops predicts (tombstones hide text and reactions, reactions are add-wins
//! per (message, user, emoji), read markers are the newest per user).
//!
//! The model tracks every map key as a multi-value register, which is exactly
//! what automerge keeps: a put or delete supersedes the values its device could
//! see, and a key shows the values nothing has superseded.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, AutomergeError, ObjId, ObjType, ROOT, ReadDoc};
use hearth_core::{
    ChannelId, Content, DeviceId, Devices, EpochDoc, EpochView, Error, Hlc, Identity, Message, MessageId, Op,
    Timestamp, UserId, decode_change, writer_tag,
};
use proptest::prelude::*;
use proptest::sample::Index;

const EPOCH: u32 = 1;
const EMOJI: [&str; 2] = ["👍", ":eyes:"];
const CHANNEL: ChannelId = ChannelId([0xc4; 32]);
/// Wall clock at the start of a run; devices drift around it.
const T0: u64 = 1_700_000_000_000;
/// Posts device 0 makes in the shared base document.
const BASE_POSTS: usize = 3;

/// A map key of the epoch document, named by the user (or device) that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Reaction(MessageId, UserId, usize),
    Edit(MessageId, UserId),
    Tombstone(MessageId, UserId),
    Read(usize),
}

/// What one change did (every change here carries exactly one op). A `Put`'s
/// token is the change's index in the log.
#[derive(Clone, Debug)]
enum Effect {
    Post {
        id: MessageId,
        author: UserId,
        text: String,
        reply_to: Option<MessageId>,
    },
    Put {
        key: Key,
        value: String,
        supersedes: Vec<usize>,
    },
    Remove {
        key: Key,
        supersedes: Vec<usize>,
    },
}

struct Entry {
    device: DeviceId,
    bytes: Vec<u8>,
    /// The texts the change introduced, which travel beside it (the segments
    /// of its feed entry): a doc that applies the change is handed them.
    texts: Vec<Content>,
    effect: Effect,
}

struct Device {
    user: UserId,
    id: DeviceId,
    doc: EpochDoc,
    hlc: Hlc,
    skew_ms: u64,
    /// Indices of the log entries this device has.
    known: BTreeSet<usize>,
}

/// A message the acting device knows: when `base`, one of the base posts, so that
/// devices often touch the same keys.
#[derive(Clone, Debug)]
struct Target {
    base: bool,
    index: Index,
}

#[derive(Clone, Debug)]
enum Action {
    Post,
    Reply(Index),
    React(Target, usize),
    Unreact(Target, usize),
    Edit(Target),
    Delete(Target),
    ReadUpTo(Target),
    /// Pull what one device knows, or (past the last device) what all know.
    Sync(usize),
}

fn action() -> impl Strategy<Value = Action> {
    let target = || (any::<bool>(), any::<Index>()).prop_map(|(base, index)| Target { base, index });
    let emoji = 0..EMOJI.len();
    prop_oneof![
        3 => Just(Action::Post),
        2 => any::<Index>().prop_map(Action::Reply),
        3 => (target(), emoji.clone()).prop_map(|(m, e)| Action::React(m, e)),
        2 => (target(), emoji).prop_map(|(m, e)| Action::Unreact(m, e)),
        2 => target().prop_map(Action::Edit),
        1 => target().prop_map(Action::Delete),
        2 => target().prop_map(Action::ReadUpTo),
        4 => (0..6usize).prop_map(Action::Sync),
    ]
}

/// The values under `key` that no entry in `known` superseded, with their tokens.
fn live<'a>(log: &'a [Entry], known: &BTreeSet<usize>, key: Key) -> Vec<(usize, &'a str)> {
    let mut superseded: BTreeSet<usize> = BTreeSet::new();
    let mut values = Vec::new();
    for &i in known {
        match &log[i].effect {
            Effect::Put {
                key: k,
                value,
                supersedes,
            } if *k == key => {
                superseded.extend(supersedes);
                values.push((i, value.as_str()));
            }
            Effect::Remove { key: k, supersedes } if *k == key => superseded.extend(supersedes),
            _ => {}
        }
    }
    values.retain(|(i, _)| !superseded.contains(i));
    values
}

/// The messages some entries create, in log order, with their thread root.
fn posts(log: &[Entry], known: &BTreeSet<usize>) -> Vec<(MessageId, Option<MessageId>)> {
    let post = |i: &usize| match &log[*i].effect {
        Effect::Post { id, reply_to, .. } => Some((*id, *reply_to)),
        _ => None,
    };
    known.iter().filter_map(post).collect()
}

/// Decode the changes of `batch` as the store would, each checked against the
/// user its device belongs to, and apply them in one call, handing the doc the
/// texts that travel beside them.
fn deliver<'a>(doc: &mut EpochDoc, users: &Devices, log: &[Entry], batch: impl IntoIterator<Item = &'a usize>) {
    let batch: Vec<&Entry> = batch.into_iter().map(|i| &log[*i]).collect();
    let decode = |Entry { device, bytes, .. }: &&Entry| decode_change(bytes, device, &users[device]).expect("decodes");
    doc.apply_remote(batch.iter().map(decode).collect()).expect("applies");
    doc.add_texts(batch.iter().flat_map(|e| e.texts.iter().cloned()));
}

/// A small deterministic generator for delivery orders (splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// Every index of the log, some twice, shuffled and cut into batches.
fn scrambled(len: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let dups: Vec<usize> = (0..len).filter(|_| rng.below(4) == 0).collect();
    let mut order: Vec<usize> = (0..len).chain(dups).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut batches = vec![Vec::new()];
    for i in order {
        if rng.below(3) == 0 {
            batches.push(Vec::new());
        }
        batches.last_mut().expect("one batch").push(i);
    }
    batches
}

/// Devices writing ops, and the log of every change they wrote.
struct Sim {
    devs: Vec<Device>,
    /// Which user each device belongs to (what signed feed headers prove).
    users: Devices,
    log: Vec<Entry>,
    step: u64,
}

impl Sim {
    /// Up to four devices of three users: devices 0 and 2 both belong to alice.
    fn new(n: usize) -> Self {
        let [alice, bob, carol] = ["alice", "bob", "carol"].map(|name| Identity::generate(name).unwrap());
        let laptop = DeviceId::generate().unwrap();
        let parts = [
            (alice.user(), alice.device(), 0),
            (bob.user(), bob.device(), 40),
            (alice.user(), laptop, 3),
            (carol.user(), carol.device(), 25),
        ];
        let device = |(user, id, skew_ms)| Device {
            user,
            id,
            doc: EpochDoc::new(EPOCH, &id),
            hlc: Hlc::default(),
            skew_ms,
            known: BTreeSet::new(),
        };
        let devs: Vec<Device> = parts.into_iter().take(n).map(device).collect();
        let users = devs.iter().map(|x| (x.id, x.user)).collect();
        Sim {
            devs,
            users,
            log: Vec::new(),
            step: 0,
        }
    }

    /// Run one op on device `d` and log its change. `noop` is whether the model
    /// expects the op to change nothing; `apply_local` must agree.
    fn write(&mut self, d: usize, op: Op, effect: Effect, noop: bool) {
        let dev = &mut self.devs[d];
        let ops = std::slice::from_ref(&op);
        let out = dev.doc.apply_local(&dev.user, &dev.id, ops, self.step as i64).unwrap();
        assert_eq!(out.is_none(), noop, "apply_local result for {op:?}");
        let texts = dev.doc.take_texts();
        if let Some(bytes) = out {
            dev.known.insert(self.log.len());
            self.log.push(Entry {
                device: dev.id,
                bytes,
                texts,
                effect,
            });
        } else {
            assert!(texts.is_empty(), "texts staged by a no-op {op:?}");
        }
    }

    /// A put under `key`, unless the model cannot predict it: a put of a value the
    /// key already holds among concurrent values resolves the conflict in favour
    /// of the Lamport-newest one, an order the model does not track.
    fn put(&mut self, d: usize, op: Op, key: Key, value: String) {
        let current = live(&self.log, &self.devs[d].known, key);
        let same = current.iter().filter(|(_, v)| *v == value).count();
        if same > 0 && current.len() > 1 {
            return;
        }
        let supersedes = current.iter().map(|(t, _)| *t).collect();
        self.write(d, op, Effect::Put { key, value, supersedes }, same == 1);
    }

    fn post(&mut self, d: usize, reply_to: Option<MessageId>) {
        let dev = &mut self.devs[d];
        let ts = dev.hlc.tick(T0 + self.step + dev.skew_ms);
        let id = MessageId::new(ts, EPOCH, &CHANNEL, writer_tag(&dev.user, &dev.id));
        let text = format!("d{d} s{}", self.step);
        let effect = Effect::Post {
            id,
            author: dev.user,
            text: text.clone(),
            reply_to,
        };
        self.write(d, Op::Post { id, text, reply_to }, effect, false);
    }

    fn act(&mut self, d: usize, action: &Action) {
        let known = posts(&self.log, &self.devs[d].known);
        let roots: Vec<MessageId> = known.iter().filter(|p| p.1.is_none()).map(|p| p.0).collect();
        // Every device has the base posts, and they come first in the log.
        let target = |t: &Target| known[t.index.index(if t.base { BASE_POSTS } else { known.len() })].0;
        let user = self.devs[d].user;
        match action {
            Action::Post => self.post(d, None),
            Action::Reply(i) => self.post(d, Some(roots[i.index(roots.len())])),
            Action::React(t, e) => {
                let msg = target(t);
                let op = Op::React {
                    msg,
                    emoji: EMOJI[*e].into(),
                };
                self.put(d, op, Key::Reaction(msg, user, *e), "true".into());
            }
            Action::Unreact(t, e) => {
                let (msg, emoji) = (target(t), EMOJI[*e].into());
                let key = Key::Reaction(msg, user, *e);
                let current = live(&self.log, &self.devs[d].known, key);
                let supersedes: Vec<usize> = current.iter().map(|(t, _)| *t).collect();
                let noop = supersedes.is_empty();
                self.write(d, Op::Unreact { msg, emoji }, Effect::Remove { key, supersedes }, noop);
            }
            // Edits and deletes may target another user's message: they land under
            // the writer's own key, which the view must ignore.
            Action::Edit(t) => {
                let (msg, text) = (target(t), format!("edit d{d} s{}", self.step));
                self.put(
                    d,
                    Op::Edit {
                        msg,
                        text: text.clone(),
                    },
                    Key::Edit(msg, user),
                    text,
                );
            }
            Action::Delete(t) => {
                let msg = target(t);
                self.put(d, Op::Delete { msg }, Key::Tombstone(msg, user), "true".into());
            }
            Action::ReadUpTo(t) => {
                let msg = target(t);
                self.put(d, Op::ReadUpTo { msg }, Key::Read(d), msg.to_hex());
            }
            Action::Sync(from) => {
                let from = if *from < self.devs.len() {
                    *from..*from + 1
                } else {
                    0..self.devs.len()
                };
                let all: BTreeSet<usize> = self.devs[from].iter().flat_map(|x| x.known.clone()).collect();
                let missing: BTreeSet<usize> = all.difference(&self.devs[d].known).copied().collect();
                let dev = &mut self.devs[d];
                deliver(&mut dev.doc, &self.users, &self.log, &missing);
                for (id, _) in posts(&self.log, &missing) {
                    dev.hlc.observe(id.timestamp());
                }
                dev.known.extend(missing);
            }
        }
    }
}

/// Check a converged view against the model of the whole log.
fn check_model(view: &EpochView, sim: &Sim) -> Result<(), TestCaseError> {
    let all: BTreeSet<usize> = (0..sim.log.len()).collect();
    let now = |key| live(&sim.log, &all, key);
    let deleted = |id, author| !now(Key::Tombstone(id, author)).is_empty();
    let users: BTreeSet<UserId> = sim.devs.iter().map(|x| x.user).collect();
    let mut count = 0;
    for entry in &sim.log {
        let Effect::Post {
            id,
            author,
            text,
            reply_to,
        } = &entry.effect
        else {
            continue;
        };
        count += 1;
        let m = view
            .get(id)
            .ok_or_else(|| TestCaseError::fail(format!("{id} is missing")))?;
        let gone = deleted(*id, *author);
        prop_assert_eq!((m.author, m.reply_to, m.deleted), (*author, *reply_to, gone));
        let replies = sim.log.iter().filter(|e| match &e.effect {
            Effect::Post {
                id: r,
                author: a,
                reply_to: Some(p),
                ..
            } => p == id && !deleted(*r, *a),
            _ => false,
        });
        prop_assert_eq!(m.reply_count as usize, replies.count());
        if gone {
            prop_assert_eq!((&m.text, m.edited, m.reactions.len()), (&None, false, 0));
            continue;
        }
        let mut reactions: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
        for user in &users {
            for (e, emoji) in EMOJI.iter().enumerate() {
                if !now(Key::Reaction(*id, *user, e)).is_empty() {
                    reactions.entry(emoji.to_string()).or_default().insert(*user);
                }
            }
        }
        prop_assert_eq!(&m.reactions, &reactions);
        let edits: Vec<&str> = now(Key::Edit(*id, *author)).into_iter().map(|(_, v)| v).collect();
        prop_assert_eq!(m.edited, !edits.is_empty());
        let shown = m.text.as_deref().expect("a live message has text");
        match edits.as_slice() {
            [] => prop_assert_eq!(shown, text.as_str()),
            // Concurrent edits by two devices of the author: one of them wins,
            // the same one on every replica (the caller checks that).
            many => prop_assert!(many.contains(&shown), "{shown} not among {many:?}"),
        }
    }
    prop_assert_eq!(view.len(), count);
    let mut read: BTreeMap<UserId, MessageId> = BTreeMap::new();
    for (d, dev) in sim.devs.iter().enumerate() {
        if let [(_, hex)] = now(Key::Read(d)).as_slice() {
            let msg: MessageId = hex.parse().unwrap();
            let newest = read.entry(dev.user).or_insert(msg);
            *newest = msg.max(*newest);
        }
    }
    let shown: BTreeMap<UserId, MessageId> = view.read_markers().map(|(u, m)| (*u, *m)).collect();
    prop_assert_eq!(shown, read);
    prop_assert!(view.name.is_none() && view.names.is_empty());
    Ok(())
}

/// Invariants any view must hold, whatever produced it.
fn check_invariants(view: &EpochView) -> Result<(), TestCaseError> {
    for m in view.messages() {
        if m.deleted {
            prop_assert!(m.text.is_none() && m.reactions.is_empty() && !m.edited, "{m:?}");
        }
        let live_replies = view.replies(&m.id).iter().filter(|r| !r.deleted).count();
        prop_assert_eq!(m.reply_count as usize, live_replies);
    }
    Ok(())
}

fn run(n: usize, steps: &[(usize, Action)], seeds: &[u64]) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(n);
    // The shared base: device 0's first posts, delivered to everyone.
    for _ in 0..BASE_POSTS {
        sim.post(0, None);
        sim.step += 1;
    }
    let base: BTreeSet<usize> = (0..BASE_POSTS).collect();
    for dev in sim.devs.iter_mut().skip(1) {
        deliver(&mut dev.doc, &sim.users, &sim.log, &base);
        dev.known.extend(&base);
    }
    for (d, action) in steps {
        sim.act(d % n, action);
        sim.step += 1;
    }

    let registry = &sim.users;
    let observer = DeviceId::generate().unwrap();
    // The reference gets one change at a time in the order they were written,
    // which is a causal order.
    let mut causal = EpochDoc::new(EPOCH, &observer);
    for i in 0..sim.log.len() {
        deliver(&mut causal, registry, &sim.log, [&i]);
    }
    let reference = causal.view(registry);
    let snapshot = causal.save().unwrap();
    // A loaded snapshot holds no texts: the store hands it the ones it keeps.
    let mut loaded = EpochDoc::load(EPOCH, &snapshot, &observer).unwrap();
    loaded.add_texts(sim.log.iter().flat_map(|e| e.texts.iter().cloned()));
    let mut replicas = vec![loaded];
    for &seed in seeds {
        let mut doc = EpochDoc::new(EPOCH, &observer);
        for batch in scrambled(sim.log.len(), &mut Rng(seed)) {
            deliver(&mut doc, registry, &sim.log, &batch);
        }
        replicas.push(doc);
    }
    // The devices themselves catch up, their own changes arriving again too.
    for (d, dev) in sim.devs.iter_mut().enumerate() {
        for batch in scrambled(sim.log.len(), &mut Rng(seeds[0] ^ d as u64)) {
            deliver(&mut dev.doc, registry, &sim.log, &batch);
        }
        replicas.push(std::mem::replace(&mut dev.doc, EpochDoc::new(EPOCH, &dev.id)));
    }

    let expected: Vec<Message> = reference.messages().collect();
    for doc in &mut replicas {
        // Every queued change was applied once its dependencies arrived.
        prop_assert_eq!(doc.change_count().unwrap(), sim.log.len());
        let view = doc.view(registry);
        prop_assert_eq!(&view, &reference);
        prop_assert_eq!(&view.messages().collect::<Vec<_>>(), &expected);
    }
    check_invariants(&reference)?;
    check_model(&reference, &sim)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_to_the_model(
        n in 3..=4usize,
        steps in prop::collection::vec((0..4usize, action()), 1..=40),
        seeds in prop::collection::vec(any::<u64>(), 3),
    ) {
        run(n, &steps, &seeds)?;
    }
}

fn say(id: MessageId, text: &str) -> Op {
    Op::Post {
        id,
        text: text.into(),
        reply_to: None,
    }
}

fn react(msg: MessageId, emoji: &str) -> Op {
    Op::React {
        msg,
        emoji: emoji.into(),
    }
}

/// A change as a feed entry carries it: its bytes, and beside them the texts it
/// introduced (the entry's segments), which a doc applying it is handed.
struct Written {
    bytes: Vec<u8>,
    texts: Vec<Content>,
}

/// The change `doc` just committed (`bytes`), with the texts it introduced.
fn written(doc: &mut EpochDoc, bytes: Vec<u8>) -> Written {
    Written {
        bytes,
        texts: doc.take_texts(),
    }
}

/// Ops `author` writes from `device`, as one non-empty change.
fn change(doc: &mut EpochDoc, author: UserId, device: DeviceId, ops: &[Op]) -> Written {
    let bytes = doc.apply_local(&author, &device, ops, 0).unwrap().expect("a change");
    written(doc, bytes)
}

/// Decode changes as the store does, each checked against the user the feed's
/// signed header names for its device, and apply them in one call, handing the
/// doc the texts that travel beside them.
fn receive(doc: &mut EpochDoc, changes: &[(DeviceId, UserId, &Written)]) {
    let decode = |(d, u, w): &(DeviceId, UserId, &Written)| decode_change(&w.bytes, d, u).unwrap();
    doc.apply_remote(changes.iter().map(decode).collect()).unwrap();
    doc.add_texts(changes.iter().flat_map(|(_, _, w)| w.texts.iter().cloned()));
}

/// Apply changes the way a replica that skipped [`decode_change`] would: only
/// the view's own filters stand between them and what users see. The texts that
/// travel beside them are handed over too.
fn receive_unchecked(doc: &mut EpochDoc, changes: &[&Written]) {
    let decode = |w: &&Written| automerge::Change::from_bytes(w.bytes.clone()).unwrap();
    doc.apply_remote(changes.iter().map(decode).collect()).unwrap();
    doc.add_texts(changes.iter().flat_map(|w| w.texts.iter().cloned()));
}

/// A change written by `device` with automerge directly, on top of `base`: what a
/// modified client can send, whatever [`EpochDoc::stage`] lets through. It
/// carries no texts beside it: what it writes is in the change.
fn forge(
    device: &DeviceId,
    base: &[&Written],
    write: impl FnOnce(&mut AutoCommit) -> Result<(), AutomergeError>,
) -> Written {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(&device.0[..]));
    let base = base
        .iter()
        .map(|b| automerge::Change::from_bytes(b.bytes.clone()).unwrap());
    doc.apply_changes(base).unwrap();
    write(&mut doc).unwrap();
    doc.commit().expect("a change");
    let mut change = doc.get_last_local_change().expect("a change");
    Written {
        bytes: change.bytes().into_owned(),
        texts: Vec::new(),
    }
}

/// A post under `m:<id>` by `device`, replacing the map there in `base` if any
/// (its text inline, as documents before content ids held it).
fn forge_post(device: &DeviceId, base: &[&Written], id: MessageId, text: &str) -> Written {
    forge(device, base, |d| {
        let m = d.put_object(ROOT, format!("m:{id}"), ObjType::Map)?;
        d.put(&m, "t", text)
    })
}

fn assert_corrupted<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    assert!(matches!(r, Err(Error::Corrupted { .. })), "{what}: {r:?}");
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    assert!(matches!(r, Err(Error::Invalid { .. })), "{what}: {r:?}");
}

/// An id minted at `T0 + ms` for `user` writing from `device`.
fn at(ms: u64, user: &UserId, device: &DeviceId) -> MessageId {
    MessageId::new(
        Timestamp::from_millis(T0 + ms),
        EPOCH,
        &CHANNEL,
        writer_tag(user, device),
    )
}

/// The add-wins case the property test reaches only now and then: one device of
/// alice removes a reaction while her other device, concurrently, removes and adds
/// it again. The removal never saw the new reaction, so the reaction stays.
#[test]
fn a_reaction_concurrent_with_its_removal_survives() {
    let alice = Identity::generate("alice").unwrap();
    let (user, phone, laptop) = (alice.user(), alice.device(), DeviceId::generate().unwrap());
    let devices = Devices::from([(phone, user), (laptop, user)]);
    let msg = at(0, &user, &phone);
    let unreact = Op::Unreact {
        msg,
        emoji: "👍".into(),
    };
    let mut p = EpochDoc::new(EPOCH, &phone);
    let shared = change(&mut p, user, phone, &[say(msg, "hi"), react(msg, "👍")]);
    let removed = change(&mut p, user, phone, std::slice::from_ref(&unreact));
    let again = change(&mut p, user, phone, &[react(msg, "👍")]);
    let mut l = EpochDoc::new(EPOCH, &laptop);
    receive(&mut l, &[(phone, user, &shared)]);
    let concurrent = change(&mut l, user, laptop, &[unreact]);
    assert!(l.view(&devices).get(&msg).unwrap().reactions.is_empty());

    receive(&mut l, &[(phone, user, &removed), (phone, user, &again)]);
    receive(&mut p, &[(laptop, user, &concurrent)]);
    let view = p.view(&devices);
    assert_eq!(view, l.view(&devices));
    assert_eq!(view.get(&msg).unwrap().reactions["👍"], BTreeSet::from([user]));
}

#[test]
fn a_change_under_another_device_is_rejected() {
    let alice = Identity::generate("alice").unwrap();
    let bob = Identity::generate("bob").unwrap();
    let id = at(0, &alice.user(), &alice.device());
    let mut doc = EpochDoc::new(EPOCH, &alice.device());
    let hi = change(&mut doc, alice.user(), alice.device(), &[say(id, "hi")]);
    let bytes = &hi.bytes;

    // Whichever user the header names, the actor must be the feed's device.
    assert_corrupted(decode_change(bytes, &bob.device(), &bob.user()), "bob's feed");
    assert_corrupted(
        decode_change(bytes, &bob.device(), &alice.user()),
        "bob's device as alice",
    );
    let cut = decode_change(&bytes[..bytes.len() - 1], &alice.device(), &alice.user());
    assert_corrupted(cut, "truncated");
    let mut replica = EpochDoc::new(EPOCH, &bob.device());
    receive(&mut replica, &[(alice.device(), alice.user(), &hi)]);
    let devices = Devices::from([(alice.device(), alice.user())]);
    assert_eq!(replica.view(&devices).get(&id).unwrap().text.as_deref(), Some("hi"));
}

#[test]
fn values_from_unregistered_devices_or_under_other_names_are_ignored() {
    let [alice, bob, mallory] = ["alice", "bob", "mallory"].map(|n| Identity::generate(n).unwrap());
    let (hello, intruder) = (
        at(1, &alice.user(), &alice.device()),
        at(2, &mallory.user(), &mallory.device()),
    );
    // A fresh id that carries alice's writer tag.
    let forged = at(3, &alice.user(), &alice.device());
    let mut a = EpochDoc::new(EPOCH, &alice.device());
    let first = change(&mut a, alice.user(), alice.device(), &[say(hello, "hello")]);

    // Mallory's device is in no signed header, so nothing it writes counts.
    let mut m = EpochDoc::new(EPOCH, &mallory.device());
    receive(&mut m, &[(alice.device(), alice.user(), &first)]);
    let reply = Op::Post {
        id: intruder,
        text: "buy now".into(),
        reply_to: Some(hello),
    };
    let ops = [reply, react(hello, "👍"), Op::ReadUpTo { msg: hello }];
    let from_mallory = change(&mut m, mallory.user(), mallory.device(), &ops);
    // Bob's device writes under alice's name: an edit and a delete of her
    // message, a reaction and a read marker as her, and a post under an id
    // minted with her writer tag. Each op on its own is refused when decoded from bob's feed.
    let mut b = EpochDoc::new(EPOCH, &bob.device());
    receive(&mut b, &[(alice.device(), alice.user(), &first)]);
    let ops = [
        Op::Edit {
            msg: hello,
            text: "hacked".into(),
        },
        Op::Delete { msg: hello },
        react(hello, "🎉"),
        Op::ReadUpTo { msg: hello },
    ];
    let mut from_bob: Vec<Written> = ops
        .iter()
        .map(|op| change(&mut b, alice.user(), bob.device(), std::slice::from_ref(op)))
        .collect();
    // The post goes through automerge directly, on top of bob's other changes.
    let base: Vec<&Written> = [&first].into_iter().chain(&from_bob).collect();
    from_bob.push(forge_post(&bob.device(), &base, forged, "alice says hi"));
    for w in &from_bob {
        let decoded = decode_change(&w.bytes, &bob.device(), &bob.user());
        assert_corrupted(decoded, "a write as alice from bob's feed");
    }

    // A replica that skipped that check still shows none of it as alice's, even
    // holding the texts that came beside the forgeries (bob's edit as alice).
    let mut replica = EpochDoc::new(EPOCH, &DeviceId::generate().unwrap());
    let all = [
        (alice.device(), alice.user(), &first),
        (mallory.device(), mallory.user(), &from_mallory),
    ];
    receive(&mut replica, &all);
    let forgeries: Vec<&Written> = from_bob.iter().collect();
    receive_unchecked(&mut replica, &forgeries);
    assert_eq!(replica.change_count().unwrap(), 2 + from_bob.len());
    let mut devices = Devices::from([(alice.device(), alice.user()), (bob.device(), bob.user())]);
    let view = replica.view(&devices);
    let msg = view.get(&hello).unwrap();
    assert_eq!(msg.text.as_deref(), Some("hello"));
    assert!(!msg.edited && !msg.deleted && msg.reactions.is_empty() && msg.reply_count == 0);
    assert!(!view.contains(&intruder));
    // The forged post is not shown at all: authorship comes from the writing
    // device, never from the id, and bob's device and user do not hash to the
    // id's writer tag.
    assert!(!view.contains(&forged));
    assert_eq!(view.read_markers().count(), 0);

    // Mallory's values were there all along; only the registry hid them.
    devices.insert(mallory.device(), mallory.user());
    let view = replica.view(&devices);
    let msg = view.get(&hello).unwrap();
    assert_eq!(view.get(&intruder).unwrap().author, mallory.user());
    assert_eq!(msg.reply_count, 1);
    assert_eq!(msg.reactions["👍"], BTreeSet::from([mallory.user()]));
    assert_eq!(view.read_marker(&mallory.user()), Some(hello));
    assert_eq!(view.read_markers().count(), 1);
    assert!(!view.contains(&forged));
}

/// The forgeries a view-time filter cannot catch, because they remove or
/// supersede a value instead of adding one: only decode_change stops them.
#[test]
fn another_member_cannot_unreact_edit_or_replace_for_me() {
    let [alice, bob] = ["alice", "bob"].map(|n| Identity::generate(n).unwrap());
    let laptop = DeviceId::generate().unwrap();
    // Bob may even register a device under alice's very device id: the writer
    // tag binds the user too, and every key names its user.
    let twin = alice.device();
    let hello = at(1, &alice.user(), &alice.device());
    let mut a = EpochDoc::new(EPOCH, &alice.device());
    let ops = [
        say(hello, "hello"),
        react(hello, "👍"),
        Op::Edit {
            msg: hello,
            text: "hello!".into(),
        },
    ];
    let mine = change(&mut a, alice.user(), alice.device(), &ops);

    let unreact = Op::Unreact {
        msg: hello,
        emoji: "👍".into(),
    };
    let edit = Op::Edit {
        msg: hello,
        text: "rewritten".into(),
    };
    for device in [bob.device(), twin] {
        let mut b = EpochDoc::new(EPOCH, &device);
        receive(&mut b, &[(alice.device(), alice.user(), &mine)]);
        for op in [&unreact, &edit] {
            let forged = change(&mut b, alice.user(), device, std::slice::from_ref(op));
            let decoded = decode_change(&forged.bytes, &device, &bob.user());
            assert_corrupted(decoded, &format!("{op:?} by {device} as bob"));
        }
        // Replacing is refused whoever the header names: the map already exists
        // (and, as bob, the id carries another writer's tag).
        let replaced = forge_post(&device, &[&mine], hello, "replaced");
        for user in [bob.user(), alice.user()] {
            let decoded = decode_change(&replaced.bytes, &device, &user);
            assert_corrupted(decoded, &format!("post over {hello} by {device} as {user}"));
        }
    }

    // Alice's other device may do all of it but the replacement.
    let mut l = EpochDoc::new(EPOCH, &laptop);
    receive(&mut l, &[(alice.device(), alice.user(), &mine)]);
    let own: Vec<Written> = [&unreact, &edit]
        .into_iter()
        .map(|op| change(&mut l, alice.user(), laptop, std::slice::from_ref(op)))
        .collect();
    let replaced = forge_post(&laptop, &[&mine], hello, "replaced");
    assert_corrupted(
        decode_change(&replaced.bytes, &laptop, &alice.user()),
        "post over a message of alice's other device",
    );
    let mut replica = EpochDoc::new(EPOCH, &bob.device());
    receive(&mut replica, &[(alice.device(), alice.user(), &mine)]);
    let devices = Devices::from([(alice.device(), alice.user()), (laptop, alice.user())]);
    let before = replica.view(&devices).get(&hello).unwrap();
    assert_eq!(before.text.as_deref(), Some("hello!"));
    assert_eq!(before.reactions["👍"], BTreeSet::from([alice.user()]));
    let own: Vec<_> = own.iter().map(|w| (laptop, alice.user(), w)).collect();
    receive(&mut replica, &own);
    let after = replica.view(&devices).get(&hello).unwrap();
    assert_eq!(after.author, alice.user());
    assert_eq!(after.text.as_deref(), Some("rewritten"));
    assert!(after.edited && after.reactions.is_empty());
}

/// automerge closes an open transaction on save, apply and history reads, and
/// the staged ops would then never come back from `commit`: those calls refuse
/// while ops are staged, and the change comes out whole afterwards.
#[test]
fn staged_ops_survive_refused_save_apply_and_history_reads() {
    let [alice, bob] = ["alice", "bob"].map(|n| Identity::generate(n).unwrap());
    let devices = Devices::from([(alice.device(), alice.user()), (bob.device(), bob.user())]);
    let hello = at(1, &alice.user(), &alice.device());
    let mut a = EpochDoc::new(EPOCH, &alice.device());
    let first = change(&mut a, alice.user(), alice.device(), &[say(hello, "hello")]);
    let mut b = EpochDoc::new(EPOCH, &bob.device());
    receive(&mut b, &[(alice.device(), alice.user(), &first)]);
    let from_bob = change(&mut b, bob.user(), bob.device(), &[react(hello, "🎉")]);

    let ops = [
        react(hello, "👍"),
        Op::Edit {
            msg: hello,
            text: "hello!".into(),
        },
    ];
    for op in &ops {
        a.stage(&alice.user(), &alice.device(), op).unwrap();
    }
    let staged = a.pending_ops();
    assert!(staged > 0);
    // The view sees staged ops at once.
    let msg = a.view(&devices).get(&hello).unwrap();
    assert_eq!(msg.text.as_deref(), Some("hello!"));
    let bob_change = || vec![decode_change(&from_bob.bytes, &bob.device(), &bob.user()).unwrap()];
    assert_invalid(a.apply_remote(bob_change()), "apply_remote");
    assert_invalid(a.apply_remote(Vec::new()), "apply_remote of nothing");
    assert_invalid(a.save(), "save");
    assert_invalid(a.change_count(), "change_count");
    let more = [react(hello, "👀")];
    assert_invalid(a.apply_local(&alice.user(), &alice.device(), &more, 1), "apply_local");
    assert_eq!(a.pending_ops(), staged);

    let sealed = a.commit(2).unwrap().expect("the staged change");
    let sealed = written(&mut a, sealed);
    assert_eq!(a.pending_ops(), 0);
    assert_eq!(a.commit(3).unwrap(), None);
    a.apply_remote(bob_change()).unwrap();
    assert_eq!(a.change_count().unwrap(), 3);
    let snapshot = a.save().unwrap();

    let mut replica = EpochDoc::new(EPOCH, &DeviceId::generate().unwrap());
    let all = [
        (alice.device(), alice.user(), &first),
        (alice.device(), alice.user(), &sealed),
        (bob.device(), bob.user(), &from_bob),
    ];
    receive(&mut replica, &all);
    let view = replica.view(&devices);
    let msg = view.get(&hello).unwrap();
    assert_eq!(msg.text.as_deref(), Some("hello!"));
    assert_eq!(msg.reactions["👍"], BTreeSet::from([alice.user()]));
    assert_eq!(msg.reactions["🎉"], BTreeSet::from([bob.user()]));
    assert!(!msg.reactions.contains_key("👀"));
    // A loaded snapshot holds no texts until it is handed them.
    let mut loaded = EpochDoc::load(EPOCH, &snapshot, &alice.device()).unwrap();
    loaded.add_texts(all.iter().flat_map(|(_, _, w)| w.texts.iter().cloned()));
    assert_eq!(loaded.view(&devices), view);
}

#[test]
fn apply_local_is_all_or_nothing() {
    let alice = Identity::generate("alice").unwrap();
    let (user, device) = (alice.user(), alice.device());
    let devices = Devices::from([(device, user)]);
    let hello = at(1, &user, &device);
    let elsewhere = MessageId::new(
        Timestamp::from_millis(T0),
        EPOCH + 1,
        &CHANNEL,
        writer_tag(&user, &device),
    );
    let mut a = EpochDoc::new(EPOCH, &device);
    let first = change(&mut a, user, device, &[say(hello, "hello")]);
    let before = a.view(&devices);

    let bad = [
        vec![react(hello, "👍"), react(elsewhere, "👍")],
        vec![react(hello, "👍"), react(hello, "")],
        vec![react(hello, "👍"), say(hello, "")],
        vec![say(at(2, &user, &device), "hi"), Op::Delete { msg: elsewhere }],
    ];
    for ops in &bad {
        assert_invalid(a.apply_local(&user, &device, ops, 1), &format!("{ops:?}"));
        assert_eq!(a.pending_ops(), 0, "{ops:?}");
        assert_eq!(a.view(&devices), before, "{ops:?}");
        assert_eq!(a.change_count().unwrap(), 1);
    }
    // `stage` validates too, and a refused op stages nothing.
    assert_invalid(a.stage(&user, &device, &react(hello, " ")), "stage of a bad emoji");
    assert_invalid(
        a.stage(&user, &device, &react(elsewhere, "👍")),
        "stage into another epoch",
    );
    assert_eq!(a.pending_ops(), 0);

    // The rolled-back ops never leak into a later change.
    let next = change(&mut a, user, device, &[react(hello, "🎉")]);
    assert!(next.texts.is_empty(), "{:?}", next.texts);
    let mut replica = EpochDoc::new(EPOCH, &DeviceId::generate().unwrap());
    receive(&mut replica, &[(device, user, &first), (device, user, &next)]);
    let view = replica.view(&devices);
    assert_eq!(view.len(), 1);
    let reactions = view.get(&hello).unwrap().reactions;
    assert_eq!(reactions, BTreeMap::from([("🎉".into(), BTreeSet::from([user]))]));
    assert_eq!(view, a.view(&devices));
}

/// Bob, who never received alice's post `hello`, writing from `twin`: two
/// reactions (a valid change), then a post creating `m:<hello>` with no preds,
/// written with automerge directly since `stage` refuses it. The reactions make
/// his op counter the greater one, so his map wins the automerge conflict
/// whatever the actor order. Returns (reactions, post).
fn concurrent_post_under(hello: MessageId, bob: &UserId, twin: DeviceId) -> (Written, Written) {
    let mut b = EpochDoc::new(EPOCH, &twin);
    let ops = [react(hello, "🎉"), react(hello, "👀"), say(hello, "replaced")];
    assert_invalid(
        b.apply_local(bob, &twin, &ops, 0),
        &format!("post under {hello} by {twin} as bob"),
    );
    assert_eq!(b.pending_ops(), 0);
    let reactions = change(&mut b, *bob, twin, &ops[..2]);
    decode_change(&reactions.bytes, &twin, bob).unwrap();
    let post = forge_post(&twin, &[&reactions], hello, "replaced");
    (reactions, post)
}

/// The writer tag on `m:<id>` is what keeps another member from creating a
/// message under my id. A device id is 16 bytes its owner picks at will, so bob
/// may pick any: his own, a fresh one, one a bit away from mine, or mine. The tag
/// hashes the user with the device, so none of them yields my tag, and creating
/// my `m:<id>` concurrently (without having seen my post, so with no preds) is
/// refused by `stage` and by decode_change: replicas that validate show my
/// message with my text, and bob's reactions on it.
#[test]
fn a_device_with_my_tag_cannot_replace_my_message_concurrently() {
    let [alice, bob] = ["alice", "bob"].map(|n| Identity::generate(n).unwrap());
    let hello = at(1, &alice.user(), &alice.device());
    let mut a = EpochDoc::new(EPOCH, &alice.device());
    let mine = change(&mut a, alice.user(), alice.device(), &[say(hello, "hello")]);
    let mut near = alice.device();
    near.0[15] ^= 1;
    for twin in [bob.device(), DeviceId::generate().unwrap(), near, alice.device()] {
        assert_ne!(writer_tag(&bob.user(), &twin), hello.writer(), "{twin}");
        let (reactions, theirs) = concurrent_post_under(hello, &bob.user(), twin);
        let decoded = decode_change(&theirs.bytes, &twin, &bob.user());
        assert_corrupted(decoded, &format!("post under {hello} by {twin} as bob"));

        // Alice's own device id cannot be registered for bob too.
        if twin == alice.device() {
            continue;
        }
        let devices = Devices::from([(alice.device(), alice.user()), (twin, bob.user())]);
        let mut replica = EpochDoc::new(EPOCH, &DeviceId::generate().unwrap());
        receive(
            &mut replica,
            &[(twin, bob.user(), &reactions), (alice.device(), alice.user(), &mine)],
        );
        let view = replica.view(&devices);
        let msg = view.get(&hello).expect("alice's message is shown");
        assert_eq!((msg.author, msg.text.as_deref()), (alice.user(), Some("hello")));
        let bobs = BTreeSet::from([bob.user()]);
        let expected = BTreeMap::from([("🎉".into(), bobs.clone()), ("👀".into(), bobs)]);
        assert_eq!(msg.reactions, expected);
        assert_eq!(view.len(), 1);
    }
}

/// Defence in depth for the test above: a replica that applies bob's concurrent
/// `m:<id>` unvalidated must still show alice's message with alice's text (the
/// view ignores a message map whose creating device and user do not hash to the
/// id's writer tag). Regression: `EpochDoc::message` once read only the winning
/// value of `m:<id>` (the greatest op id), so bob's forgery, which wins by op
/// counter, made alice's message disappear; it now picks, among the conflicting
/// maps, the one whose writer matches the tag.
#[test]
fn a_concurrent_map_under_my_id_does_not_hide_my_message() {
    let [alice, bob] = ["alice", "bob"].map(|n| Identity::generate(n).unwrap());
    let hello = at(1, &alice.user(), &alice.device());
    let mut a = EpochDoc::new(EPOCH, &alice.device());
    let mine = change(&mut a, alice.user(), alice.device(), &[say(hello, "hello")]);
    let mut near = alice.device();
    near.0[15] ^= 1;
    for twin in [bob.device(), DeviceId::generate().unwrap(), near] {
        let (reactions, theirs) = concurrent_post_under(hello, &bob.user(), twin);
        let devices = Devices::from([(alice.device(), alice.user()), (twin, bob.user())]);
        let valid = [(alice.device(), alice.user(), &mine), (twin, bob.user(), &reactions)];
        let mut views = Vec::new();
        for valid_first in [true, false] {
            let mut replica = EpochDoc::new(EPOCH, &DeviceId::generate().unwrap());
            if valid_first {
                receive(&mut replica, &valid);
                receive_unchecked(&mut replica, &[&theirs]);
            } else {
                receive(&mut replica, &valid[1..]);
                receive_unchecked(&mut replica, &[&theirs]);
                receive(&mut replica, &valid[..1]);
            }
            // The premise: both maps are kept, and bob's is the one automerge
            // shows under the key.
            let raw = AutoCommit::load(&replica.save().unwrap()).unwrap();
            assert_eq!(raw.get_all(ROOT, format!("m:{hello}")).unwrap().len(), 2);
            let (_, obj) = raw.get(ROOT, format!("m:{hello}")).unwrap().unwrap();
            let ObjId::Id(_, actor, _) = obj else {
                panic!("m:{hello} is not an object")
            };
            assert_eq!(actor.to_bytes(), &twin.0[..], "bob's map wins the conflict");

            let view = replica.view(&devices);
            let msg = view.get(&hello).expect("alice's message is shown");
            assert_eq!((msg.author, msg.text.as_deref()), (alice.user(), Some("hello")));
            assert!(!msg.edited && !msg.deleted && msg.reply_count == 0);
            let bobs = BTreeSet::from([bob.user()]);
            let expected = BTreeMap::from([("🎉".into(), bobs.clone()), ("👀".into(), bobs)]);
            assert_eq!(msg.reactions, expected);
            assert_eq!(view.len(), 1);
            views.push(view);
        }
        assert_eq!(views[0], views[1]);
    }
}

/// What `stage` accepts, `decode_change` must accept for the same writer: the
/// store decodes a device's own feed entries when it loads an epoch, and every
/// peer decodes them too, so a change the writer's own doc made but
/// decode_change refuses makes the epoch fail to load and the feed entry be
/// rejected everywhere. So `stage` refuses (Invalid) a post whose id is already
/// used or was minted for another writer, and apply_local then stages nothing.
#[test]
fn every_change_apply_local_returns_decodes_for_its_writer() {
    let [alice, bob] = ["alice", "bob"].map(|n| Identity::generate(n).unwrap());
    let (user, device) = (alice.user(), alice.device());
    let other = DeviceId::generate().unwrap();
    let hello = at(1, &user, &device);
    let later = at(7, &user, &device);
    // The ops of one apply_local, and whether stage refuses them.
    let cases = [
        (vec![say(hello, "hello")], false),
        // The same post again (a replayed op), alone or twice in one change.
        (vec![say(hello, "hello")], true),
        (
            vec![say(at(2, &user, &device), "a"), say(at(2, &user, &device), "a")],
            true,
        ),
        // Ids minted for another writer: alice's other device, bob on alice's
        // device, bob on his own.
        (vec![say(at(3, &user, &other), "hi")], true),
        (vec![say(at(4, &bob.user(), &device), "hi")], true),
        (vec![say(at(5, &bob.user(), &bob.device()), "hi")], true),
        // A good post does not carry a refused one along.
        (
            vec![say(at(6, &user, &device), "ok"), say(at(6, &user, &other), "hi")],
            true,
        ),
        (vec![say(later, "later"), react(hello, "👍")], false),
    ];
    let mut a = EpochDoc::new(EPOCH, &device);
    let mut refused = Vec::new();
    let mut accepted = Vec::new();
    for (ops, invalid) in &cases {
        let before = a.change_count().unwrap();
        let out = a.apply_local(&user, &device, ops, 0);
        if *invalid {
            assert_invalid(out, &format!("{ops:?}"));
            assert_eq!(a.pending_ops(), 0, "{ops:?}");
            assert_eq!(a.change_count().unwrap(), before, "{ops:?}");
            continue;
        }
        let bytes = out.unwrap().expect("a change");
        let w = written(&mut a, bytes);
        match decode_change(&w.bytes, &device, &user) {
            Ok(_) => accepted.push(w),
            Err(e) => refused.push(format!("{ops:?}: {e}")),
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");

    // `stage` on its own refuses the same, staging nothing; so does a document
    // loaded from a snapshot, replaying a post it holds.
    let again = say(hello, "hello");
    assert_invalid(a.stage(&user, &device, &again), "stage of a used id");
    let foreign = say(at(8, &user, &other), "hi");
    assert_invalid(a.stage(&user, &device, &foreign), "stage of a foreign id");
    assert_eq!(a.pending_ops(), 0);
    let mut loaded = EpochDoc::load(EPOCH, &a.save().unwrap(), &device).unwrap();
    assert_invalid(
        loaded.apply_local(&user, &device, std::slice::from_ref(&again), 1),
        "replay after load",
    );
    // Alice's other device posts under its own tag once it has her messages.
    let mut o = EpochDoc::new(EPOCH, &other);
    let mine: Vec<_> = accepted.iter().map(|w| (device, user, w)).collect();
    receive(&mut o, &mine);
    assert_invalid(
        o.apply_local(&user, &other, std::slice::from_ref(&again), 1),
        "another device replaying alice's post",
    );
    let theirs = change(&mut o, user, other, &[say(at(3, &user, &other), "hi")]);
    decode_change(&theirs.bytes, &other, &user).unwrap();

    // A replica shows exactly the accepted posts.
    let devices = Devices::from([(device, user), (other, user)]);
    let mut replica = EpochDoc::new(EPOCH, &bob.device());
    receive(&mut replica, &mine);
    assert_eq!(replica.view(&devices), a.view(&devices));
    receive(&mut replica, &[(other, user, &theirs)]);
    let ids: Vec<MessageId> = replica.view(&devices).messages().map(|m| m.id).collect();
    assert_eq!(ids, vec![hello, at(3, &user, &other), later]);
}
