//! A malicious member: it holds the channel key and signs what it likes. What
//! it writes is bounded (issue 8, item 6): no epoch beyond the newest held plus
//! one, no message id of another epoch or channel, no timestamp further ahead
//! than the allowed skew, the local size limits on every text, name and emoji.
//! Each attempt is refused as the author's fault (not the forwarder's), and
//! leaves the receiver's clock, epochs and content as they were.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ROOT};
use hearth_core::{
    ChannelId, ChannelKeys, Content, EntryBody, EntryHash, Envelope, Identity, KdfParams, MessageId, Passphrase,
    Timestamp, Vector, writer_tag,
};
use hearth_store::{Config, IngestReport, Refusal, Store};

fn config() -> Config {
    Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_max_clock_skew(Duration::from_secs(60))
}

/// A member that writes raw automerge changes into its own feed.
struct Mallory {
    me: Identity,
    keys: ChannelKeys,
    seq: u64,
    prev: EntryHash,
    doc: AutoCommit,
}

impl Mallory {
    fn new(keys: ChannelKeys) -> Self {
        let me = Identity::generate("mallory").unwrap();
        let doc = AutoCommit::new().with_actor(ActorId::from(&me.device().0[..]));
        Mallory {
            me,
            keys,
            seq: 0,
            prev: [0; 32],
            doc,
        }
    }

    fn id(&self, ts: Timestamp, epoch: u32, channel: &ChannelId) -> MessageId {
        MessageId::new(ts, epoch, channel, writer_tag(&self.me.user(), &self.me.device()))
    }

    /// The next entry of its feed: `write` edits a fresh document of `epoch`.
    fn entry(&mut self, epoch: u32, write: impl FnOnce(&mut AutoCommit, &str)) -> Vec<u8> {
        self.doc = AutoCommit::new().with_actor(ActorId::from(&self.me.device().0[..]));
        write(&mut self.doc, &self.me.user().to_hex());
        self.doc.commit();
        let change = self.doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        let body = EntryBody { epoch, change };
        let (bytes, hash) = Envelope::seal_next(&self.keys, &self.me, self.seq + 1, self.prev, &body).unwrap();
        (self.seq, self.prev) = (self.seq + 1, hash);
        bytes
    }

    /// An entry whose posts name their texts by content id, the texts
    /// carried beside the change (entry format 4), as a store writes them.
    fn entry_with_texts(&mut self, epoch: u32, posts: &[(MessageId, &str)]) -> Vec<u8> {
        self.doc = AutoCommit::new().with_actor(ActorId::from(&self.me.device().0[..]));
        let mut texts = Vec::new();
        for (id, text) in posts {
            let c = Content::new(*id, text.to_string()).unwrap();
            let m = self.doc.put_object(ROOT, format!("m:{id}"), ObjType::Map).unwrap();
            self.doc.put(&m, "t", c.id().0.to_vec()).unwrap();
            texts.push(c);
        }
        self.doc.commit();
        let change = self.doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        let body = EntryBody { epoch, change };
        let certs = match self.me.device_chain() {
            Some(c) if self.seq == 0 => c.to_vec(),
            _ => Vec::new(),
        };
        let generation = self.keys.current_generation();
        let (bytes, hash) = Envelope::seal_v4(
            &self.keys,
            &self.me,
            self.seq + 1,
            self.prev,
            &body,
            generation,
            certs,
            &texts,
        )
        .unwrap();
        (self.seq, self.prev) = (self.seq + 1, hash);
        bytes
    }

    /// The next entry of its feed: `write` edits the document of its last
    /// entry, so that the change follows its previous one (seq after seq);
    /// `start_op`, when given, replaces the change's first op number.
    fn entry_after(&mut self, epoch: u32, start_op: Option<u64>, write: impl FnOnce(&mut AutoCommit, &str)) -> Vec<u8> {
        write(&mut self.doc, &self.me.user().to_hex());
        self.doc.commit();
        let mut change = self.doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        if start_op.is_some() {
            change = hearth_core::restamp_change(&change, &self.me.device().0, None, start_op).unwrap();
        }
        let body = EntryBody { epoch, change };
        let (bytes, hash) = Envelope::seal_next(&self.keys, &self.me, self.seq + 1, self.prev, &body).unwrap();
        (self.seq, self.prev) = (self.seq + 1, hash);
        bytes
    }

    /// Forget the last entry (it was refused; the next one takes its place).
    fn undo(&mut self, prev: EntryHash) {
        self.seq -= 1;
        self.prev = prev;
    }
}

fn post(doc: &mut AutoCommit, id: &MessageId, text: &str) {
    let m = doc.put_object(ROOT, format!("m:{id}"), ObjType::Map).unwrap();
    doc.put(&m, "t", text).unwrap();
}

fn only_refusal(r: &IngestReport) -> &Refusal {
    assert_eq!(r.accepted, 0, "{r:?}");
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    assert!(
        !r.rejected[0].is_peer_fault(),
        "the author's fault, not the forwarder's"
    );
    &r.rejected[0].reason
}

fn content(r: &IngestReport, what: &str) {
    match only_refusal(r) {
        Refusal::Content(why) => assert!(why.contains(what), "{why:?} does not say {what:?}"),
        other => panic!("refused for {other:?}, not content"),
    }
}

/// Alice's store in `tmp`, with a channel.
async fn alice(tmp: &tempfile::TempDir) -> (Store, ChannelId) {
    let a = Store::create(tmp.path().join("a"), &Passphrase::new("pw"), "alice", config())
        .await
        .unwrap();
    let general = a.create_channel("general").await.unwrap();
    (a, general)
}

/// Bob (who defers epochs he has not read) and Carol (who applies on
/// arrival), in `tmp`'s `b` and `c`, both in Alice's channel; Mallory, a
/// member writing into it; the time now in milliseconds.
async fn lazy_eager_mallory(tmp: &tempfile::TempDir, a: &Store, general: ChannelId) -> (Store, Store, Mallory, u64) {
    let keys = a.channel_keys(general).await.unwrap();
    let pass = Passphrase::new("pw");
    let lazy = Store::create(tmp.path().join("b"), &pass, "bob", config())
        .await
        .unwrap();
    let eager = Store::create(tmp.path().join("c"), &pass, "carol", config().with_lazy_epochs(false))
        .await
        .unwrap();
    for s in [&lazy, &eager] {
        s.join_channel(keys.clone()).await.unwrap();
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (lazy, eager, Mallory::new(keys), ms)
}

#[tokio::test]
async fn a_members_hostile_writes_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, general) = alice(&tmp).await;
    let other = a.create_channel("other").await.unwrap();
    let hello = a.post(general, "hello").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    let mut m = Mallory::new(keys);
    let now = Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    let before = a.page(general, None, 100).await.unwrap();

    // An honest first entry, so that what follows is judged on its content.
    let ok = m.id(now, 1, &general);
    let e = m.entry(1, |d, _| post(d, &ok, "mallory says hi"));
    assert_eq!(a.ingest(wire, vec![e]).await.unwrap().accepted, 1);
    let attempt = |m: &mut Mallory, epoch: u32, write: &dyn Fn(&mut AutoCommit, &str)| {
        let prev = m.prev;
        let e = m.entry(epoch, |d, u| write(d, u));
        m.undo(prev);
        e
    };

    // Epochs: far ahead (and at the top of the range, where `+ 1` overflowed).
    for epoch in [3, u32::MAX] {
        let id = m.id(now, epoch, &general);
        let e = attempt(&mut m, epoch, &|d, _| post(d, &id, "far ahead"));
        content(&a.ingest(wire, vec![e]).await.unwrap(), "epoch beyond");
    }
    // An id whose epoch is not its entry's, or of another channel.
    let id = m.id(now, 2, &general);
    let e = attempt(&mut m, 1, &|d, _| post(d, &id, "wrong epoch"));
    content(&a.ingest(wire, vec![e]).await.unwrap(), "is not of epoch 1");
    let id = m.id(now, 1, &other);
    let e = attempt(&mut m, 1, &|d, _| post(d, &id, "wrong channel"));
    content(&a.ingest(wire, vec![e]).await.unwrap(), "of another channel");
    // A reaction to, and a reply under, a message of another epoch.
    let elsewhere = m.id(now, 2, &general);
    let e = attempt(&mut m, 1, &|d, u| {
        d.put(ROOT, format!("r:{elsewhere}:{u}:👍"), true).unwrap();
    });
    content(&a.ingest(wire, vec![e]).await.unwrap(), "is not of epoch 1");
    let id = m.id(now, 1, &general);
    let e = attempt(&mut m, 1, &|d, _| {
        let o = d.put_object(ROOT, format!("m:{id}"), ObjType::Map).unwrap();
        d.put(&o, "t", "a reply").unwrap();
        d.put(&o, "p", elsewhere.to_hex()).unwrap();
    });
    content(&a.ingest(wire, vec![e]).await.unwrap(), "is not of epoch 1");

    // A post stamped a day ahead: refused (for now), the clock not dragged.
    let ahead = Timestamp::from_millis(now.millis() + 86_400_000);
    let id = m.id(ahead, 1, &general);
    let e = attempt(&mut m, 1, &|d, _| post(d, &id, "from the future"));
    content(&a.ingest(wire, vec![e]).await.unwrap(), "ahead of this device's clock");
    let mine = a.post(general, "after the attempt").await.unwrap();
    assert!(mine.timestamp() < ahead, "the receiver's clock was dragged forward");

    // Sizes: text, edit, channel name, display name, emoji.
    let big = "x".repeat(hearth_core::MAX_TEXT_BYTES + 1);
    let id = m.id(now, 1, &general);
    let e = attempt(&mut m, 1, &|d, _| post(d, &id, &big));
    content(&a.ingest(wire, vec![e]).await.unwrap(), "too large");
    let e = attempt(&mut m, 1, &|d, u| {
        d.put(ROOT, format!("e:{ok}:{u}"), big.as_str()).unwrap();
    });
    content(&a.ingest(wire, vec![e]).await.unwrap(), "too large");
    let long = "n".repeat(hearth_core::MAX_NAME_BYTES + 1);
    let e = attempt(&mut m, 0, &|d, _| {
        d.put(ROOT, "name", long.as_str()).unwrap();
    });
    content(&a.ingest(wire, vec![e]).await.unwrap(), "too large");
    let e = attempt(&mut m, 0, &|d, u| {
        d.put(ROOT, format!("n:{u}"), long.as_str()).unwrap();
    });
    content(&a.ingest(wire, vec![e]).await.unwrap(), "too large");
    let emoji = "🎉".repeat(hearth_core::MAX_EMOJI_BYTES);
    let e = attempt(&mut m, 1, &|d, u| {
        d.put(ROOT, format!("r:{hello}:{u}:{emoji}"), true).unwrap();
    });
    content(&a.ingest(wire, vec![e]).await.unwrap(), "emoji");

    // Nothing of it got in; the store is whole and goes on.
    let mut want = before;
    let page = a.page(general, None, 100).await.unwrap();
    want.retain(|x| x.id != mine);
    assert_eq!(page.len(), want.len() + 2, "only the honest post and Alice's own");
    assert!(page.iter().all(|x| x.text.as_deref().is_some_and(|t| t.len() < 100)));
    assert!(a.verify().await.unwrap().is_clean());
    let next = a.post(general, "still fine").await.unwrap();
    assert!(next.epoch() < 3);
    a.close().await.unwrap();
}

/// A catch-up that brings a feed jumping from epoch 1 to 3 before the feed
/// that filled epoch 2 is taken whole, in one batch, with nothing refused:
/// the entry waits within the batch until the epoch before it is in.
#[tokio::test]
async fn a_feed_that_jumps_epochs_is_taken_in_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let small = config().with_epoch_messages(4);
    let a = Store::create(tmp.path().join("a"), &pass, "alice", small.clone())
        .await
        .unwrap();
    let b = Store::create(tmp.path().join("b"), &pass, "bob", small.clone())
        .await
        .unwrap();
    let c = Store::create(tmp.path().join("c"), &pass, "carol", small)
        .await
        .unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    for s in [&b, &c] {
        s.join_channel(keys.clone()).await.unwrap();
    }
    let all = |s: &Store| {
        let s = s.clone();
        async move {
            s.entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
                .await
                .unwrap()
                .entries
        }
    };
    for i in 0..4 {
        a.post(general, &format!("alice {i}")).await.unwrap();
    }
    b.ingest(wire, all(&a).await).await.unwrap();
    for i in 0..8 {
        b.post(general, &format!("bob {i}")).await.unwrap();
    }
    a.ingest(wire, all(&b).await).await.unwrap();
    let late = a.post(general, "alice, later").await.unwrap();
    assert!(late.epoch() >= 3, "alice's feed jumps to epoch {}", late.epoch());
    // Alice's whole feed first, then Bob's.
    let alice = a.whoami().device;
    let mut batch: Vec<Vec<u8>> = all(&a).await;
    batch.sort_by_key(|e| Envelope::decode(e).unwrap().header.device != alice);
    let r = c.ingest(wire, batch).await.unwrap();
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    assert_eq!(
        c.page(general, None, 100).await.unwrap(),
        a.page(general, None, 100).await.unwrap()
    );
    for s in [a, b, c] {
        s.close().await.unwrap();
    }
}

/// A stub (an entry's body cut to its hash: what a dead epoch's entries
/// are, `retention.rs`) kills no epoch that is not behind the newest one
/// held: one of the epoch new posts go to, or of the next, is kept in its
/// feed and kills nothing; one further ahead (up to the top of the range,
/// where `+ 1` would overflow) is refused as any entry there is; posts go
/// on into a live epoch past them and verify stays clean. A stub of the metadata
/// epoch is the sender's fault.
#[tokio::test]
async fn a_stub_kills_no_epoch_that_is_not_behind_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, general) = alice(&tmp).await;
    a.post(general, "hello").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    let mut m = Mallory::new(keys);
    let epochs = a.stats().await.unwrap().epochs;
    let stub = |bytes: Vec<u8>| {
        let mut e = Envelope::decode(&bytes).unwrap();
        e.prune_body();
        assert!(e.pruned.is_some());
        e.encode()
    };
    for epoch in [1, 2] {
        let e = stub(m.entry(epoch, |d, _| d.put(ROOT, "name", "x").unwrap()));
        let r = a.ingest(wire, vec![e]).await.unwrap();
        assert_eq!((r.accepted, r.rejected.len()), (1, 0), "{r:?}");
        assert_eq!(a.stats().await.unwrap().epochs, epochs, "epoch {epoch}");
    }
    // Bound like any entry: no epoch beyond the newest plus one.
    for epoch in [4, u32::MAX] {
        let prev = m.prev;
        let e = stub(m.entry(epoch, |d, _| d.put(ROOT, "name", "x").unwrap()));
        m.undo(prev);
        content(&a.ingest(wire, vec![e]).await.unwrap(), "epoch beyond");
        assert_eq!(a.stats().await.unwrap().epochs, epochs, "epoch {epoch}");
    }
    let prev = m.prev;
    let meta = stub(m.entry(0, |d, _| d.put(ROOT, "name", "x").unwrap()));
    m.undo(prev);
    let r = a.ingest(wire, vec![meta]).await.unwrap();
    assert!(r.rejected.len() == 1 && r.rejected[0].is_peer_fault(), "{r:?}");
    // Posts skip the epochs stubs came for (an honest peer cuts only dead
    // ones: a post there would be cut on arrival).
    let after = a.post(general, "after the stubs").await.unwrap();
    assert_eq!(after.epoch(), 3);
    assert_eq!(a.page(general, None, 10).await.unwrap().len(), 2);
    let v = a.verify().await.unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

/// Deferred epochs (`Config::lazy_epochs`): a member takes the entries of an
/// epoch it has not read without applying them, so a change automerge would
/// refuse (here a second change of the author's automerge actor with the
/// same sequence number) is stored, signed and verified. The epoch's first
/// read leaves it out of the document and reads the rest; counts follow the
/// document from then on. A member that applies on arrival refuses it.
#[tokio::test]
async fn a_change_refused_when_its_deferred_epoch_is_first_read_is_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, general) = alice(&tmp).await;
    let (lazy, eager, mut m, ms) = lazy_eager_mallory(&tmp, &a, general).await;
    let wire = m.keys.wire();
    let (first, second) = (
        m.id(Timestamp::from_millis(ms), 1, &general),
        m.id(Timestamp::from_millis(ms + 1), 1, &general),
    );
    // Each entry is a change of a fresh document: both are seq 1 of the
    // same actor.
    let entries = vec![
        m.entry_with_texts(1, &[(first, "the first")]),
        m.entry_with_texts(1, &[(second, "the same seq again")]),
    ];

    let r = eager.ingest(wire, entries.clone()).await.unwrap();
    assert_eq!(r.rejected.len(), 2, "applied together on arrival: {r:?}");
    let r = lazy.ingest(wire, entries).await.unwrap();
    assert!(r.rejected.is_empty(), "{r:?}");
    assert_eq!(r.accepted, 2);
    assert_eq!(lazy.channel(general).await.unwrap().messages, 2, "counted, not applied");

    let page = lazy.page(general, None, 10).await.unwrap();
    let texts: Vec<_> = page.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, [Some("the first".to_string())]);
    // The page came from the document, not from the posts as decoded.
    assert_eq!(lazy.stats().await.unwrap().pages_from_posts, 0);
    assert_eq!(lazy.channel(general).await.unwrap().messages, 1);
    assert!(lazy.message(second).await.is_err());
    assert!(lazy.verify().await.unwrap().is_clean());
    // The store goes on: its own posts land in the same epoch.
    lazy.post(general, "bob is here").await.unwrap();
    assert_eq!(lazy.page(general, None, 10).await.unwrap().len(), 2);
    for s in [a, lazy, eager] {
        s.close().await.unwrap();
    }
}

/// A member's change whose ops overlap its previous change's (its first op
/// number rewritten, the entry signed as any other): automerge applies it,
/// and the epoch's snapshot would no longer load. A member that applies on
/// arrival refuses it as the author's fault; one that defers the epoch
/// stores it and leaves it out when the epoch is first read. Both reopen
/// with the epoch whole, and the author's honest change in its place is
/// taken.
#[tokio::test]
async fn a_change_whose_ops_overlap_its_authors_last_is_refused_and_the_epoch_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, general) = alice(&tmp).await;
    let (lazy, eager, mut m, ms) = lazy_eager_mallory(&tmp, &a, general).await;
    let wire = m.keys.wire();
    let pass = Passphrase::new("pw");
    let (bob, carol) = (tmp.path().join("b"), tmp.path().join("c"));
    let first = m.id(Timestamp::from_millis(ms), 1, &general);
    let e1 = m.entry_after(1, None, |d, _| post(d, &first, "the first"));
    let react = |d: &mut AutoCommit, u: &str| {
        d.put(ROOT, format!("r:{first}:{u}:👍"), true).unwrap();
    };
    // The reaction's change numbered from op 1 again: over the post's ops.
    let mut fork = AutoCommit::load(&m.doc.save())
        .unwrap()
        .with_actor(ActorId::from(&m.me.device().0[..]));
    std::mem::swap(&mut m.doc, &mut fork);
    let prev = m.prev;
    let overlapping = m.entry_after(1, Some(1), react);
    m.undo(prev);
    std::mem::swap(&mut m.doc, &mut fork);
    let honest = m.entry_after(1, None, react);

    assert_eq!(eager.ingest(wire, vec![e1.clone()]).await.unwrap().accepted, 1);
    content(
        &eager.ingest(wire, vec![overlapping.clone()]).await.unwrap(),
        "do not follow",
    );
    let r = lazy.ingest(wire, vec![e1, overlapping]).await.unwrap();
    assert_eq!((r.accepted, r.rejected.len()), (2, 0), "{r:?}");
    let page = lazy.page(general, None, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert!(page[0].reactions.is_empty(), "the overlapping change was left out");
    assert!(lazy.verify().await.unwrap().is_clean());

    // Both reopen with the epoch whole (its snapshot loads).
    lazy.close().await.unwrap();
    eager.close().await.unwrap();
    for (dir, cfg) in [(&bob, config()), (&carol, config().with_lazy_epochs(false))] {
        let s = Store::open(dir, &pass, cfg).await.unwrap();
        let page = s.page(general, None, 10).await.unwrap();
        assert_eq!(
            page.iter().map(|m| m.text.as_deref()).collect::<Vec<_>>(),
            [Some("the first")]
        );
        assert!(s.verify().await.unwrap().is_clean());
        s.close().await.unwrap();
    }
    // Carol takes the honest reaction in the overlapping one's place.
    let eager = Store::open(&carol, &pass, config().with_lazy_epochs(false))
        .await
        .unwrap();
    assert_eq!(eager.ingest(wire, vec![honest]).await.unwrap().accepted, 1);
    let page = eager.page(general, None, 10).await.unwrap();
    assert_eq!(page[0].reactions.get("👍").map(|u| u.len()), Some(1));
    eager.close().await.unwrap();
    a.close().await.unwrap();
}
