//! A relay between members who are never online together: it stores and hands
//! on sealed entries, refuses forged ones and never holds a readable byte.
//! Sessions run in-process (a direct call to the other replica's `serve`); the
//! network test lives in network.rs.

use std::path::Path;

use hearth_core::{ChannelId, ChannelKeys, EntryBody, Envelope, Identity, KdfParams, Passphrase, Vector, WireId};
use hearth_store::{Config, Refusal, Store};
use hearth_sync::drive::{Conn, run_session, serve};
use hearth_sync::reconcile::Outcome;
use hearth_sync::{RelayStore, Replica};

const CHANNEL_NAME: &str = "plaintext-canary-channel";
const ALICE: &str = "alice-canary-name";
const BOB: &str = "bob-canary-name";

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

fn pass() -> Passphrase {
    Passphrase::new("pw")
}

fn text(i: usize) -> String {
    format!("alice canary message {i:03}")
}

/// A replica's peer id in these in-process sessions: where its handle
/// lives in the test (stable while the test holds it, as a node's is).
fn id_of<R>(r: &R) -> Vec<u8> {
    format!("peer at {:p}", std::ptr::from_ref(r)).into_bytes()
}

/// The two ends of a connection from `a` to `b`: the requester's view and
/// the responder's.
fn conns<A, B>(a: &A, b: &B) -> (Conn, Conn) {
    (Conn::new(id_of(a), id_of(b)), Conn::new(id_of(b), id_of(a)))
}

/// One full session of `local` (the requester) with `remote` (the
/// responder). A member grants a relay it syncs with the channels it lacks,
/// as it does the relays its user configured.
async fn sync<A: Replica, B: Replica>(local: &A, remote: &B) -> Outcome {
    sync_as(local, remote, remote.is_relay()).await
}

/// Sync until one Hello finds `member` and `relay` equal: receiving messages
/// makes a member write delivery receipts, which the next round carries.
async fn settle(member: &Store, relay: &RelayStore) {
    for _ in 0..5 {
        // Receipts gather for a moment before they are written: write them now.
        let flushed = member.flush_receipts().await.unwrap();
        if sync(member, relay).await.in_sync_at_hello && flushed == 0 {
            return;
        }
    }
    panic!("no quiescence after 5 rounds");
}

/// The messages of a channel: its page and every thread.
async fn messages(s: &Store, c: ChannelId) -> String {
    let page = s.page(c, None, 10_000).await.unwrap();
    let mut out = format!("{page:?}");
    for m in &page {
        if m.reply_count > 0 {
            out += &format!("{:?}", s.thread(m.id).await.unwrap());
        }
    }
    out
}

/// The texts of a channel's page.
async fn texts_of(s: &Store, c: ChannelId) -> Vec<String> {
    s.page(c, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.text)
        .collect()
}

/// Everything a user sees of a channel, members included.
async fn snapshot(s: &Store, c: ChannelId) -> String {
    messages(s, c).await + &format!("{:?}", s.members(c).await.unwrap())
}

fn vector_of(vectors: &[(WireId, Vector)], wire: WireId) -> Option<Vector> {
    vectors.iter().find(|(w, _)| *w == wire).map(|(_, v)| v.clone())
}

/// Alice's store with a busy channel: 200 posts, reactions, replies, an edit.
async fn alice(dir: &Path) -> (Store, ChannelId) {
    let a = Store::create(dir, &pass(), ALICE, config()).await.unwrap();
    let general = a.create_channel(CHANNEL_NAME).await.unwrap();
    let mut roots = Vec::new();
    for i in 0..200 {
        roots.push(a.post(general, &text(i)).await.unwrap());
        if i % 20 == 19 {
            // A read closes the posts staged so far into an entry: tests
            // below need several entries, which a writer that never pauses
            // would not otherwise make.
            a.vector(general).await.unwrap();
        }
    }
    for (i, r) in roots.iter().enumerate().step_by(10) {
        a.react(*r, "👍").await.unwrap();
        a.reply(*r, &format!("alice canary reply {i:03}")).await.unwrap();
    }
    a.edit(roots[5], "alice canary edited").await.unwrap();
    (a, general)
}

/// A relay in `dirs[2]`, and Alice's and Bob's stores in `dirs[0]` and
/// `dirs[1]`, with the channel Alice created (Bob holds none yet).
async fn relay_alice_bob(dirs: &[tempfile::TempDir]) -> (RelayStore, Store, Store, ChannelId, ChannelKeys) {
    let relay = RelayStore::open(dirs[2].path()).unwrap();
    let a = Store::create(dirs[0].path(), &pass(), ALICE, config()).await.unwrap();
    let b = Store::create(dirs[1].path(), &pass(), BOB, config()).await.unwrap();
    let general = a.create_channel(CHANNEL_NAME).await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    (relay, a, b, general, keys)
}

/// Posts `texts` into one feed entry, in order. Posts made one by one may
/// not share an entry: a lone writer's group closes in a pause of 1 ms
/// (5 ms after its first op at the earliest), so a slow fsync between two
/// awaited posts parts them. The bulk path closes a call's posts together.
async fn posts_in_one_entry(s: &Store, channel: ChannelId, texts: &[&str]) -> Vec<hearth_core::MessageId> {
    let posts = texts
        .iter()
        .map(|t| hearth_store::ImportPost {
            text: t.to_string(),
            reply_to: None,
        })
        .collect();
    s.import_posts(channel, posts).await.unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn members_never_online_together_converge_through_a_relay() {
    let (da, db, dr) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let relay = RelayStore::open(dr.path()).unwrap();
    let (a, general) = alice(da.path()).await;
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();

    // The relay learns the channel from Alice's Hello (`want`) and takes it all.
    let o = sync(&a, &relay).await;
    assert!(o.peer_relay);
    // Writes are group-committed: an entry holds many operations.
    assert_eq!(o.sent, a.vector(general).await.unwrap().total(), "{o:?}");
    assert_eq!((o.refused_here, o.refused_there), (0, 0), "{o:?}");
    assert_eq!(
        vector_of(&relay.vectors().await.unwrap(), wire),
        Some(a.vector(general).await.unwrap())
    );
    let alice_view = messages(&a, general).await;
    a.close().await.unwrap();

    // Bob joins while Alice is offline and gets everything from the relay.
    let b = Store::create(db.path(), &pass(), BOB, config()).await.unwrap();
    assert_eq!(b.join_channel(keys).await.unwrap(), general);
    let o = sync(&b, &relay).await;
    assert_eq!(o.refused_here, 0, "{o:?}");
    let bob_page = b.page(general, None, 10_000).await.unwrap();
    assert_eq!(bob_page.iter().filter(|m| m.reply_to.is_none()).count(), 200);
    assert_eq!(messages(&b, general).await, alice_view);

    let first = bob_page[bob_page.len() - 1].id;
    let bob_reply = b.reply(first, "bob canary reply").await.unwrap();
    b.react(first, "🎉").await.unwrap();
    let o = sync(&b, &relay).await;
    assert!(o.sent >= 1, "{o:?}");
    settle(&b, &relay).await;
    assert_eq!(
        vector_of(&relay.vectors().await.unwrap(), wire),
        Some(b.vector(general).await.unwrap())
    );
    let bob_view = snapshot(&b, general).await;

    // Alice comes back from disk while Bob is gone, and sees Bob's writes.
    let b_vector = b.vector(general).await.unwrap();
    assert!(b.verify().await.unwrap().is_clean());
    b.close().await.unwrap();
    let a = Store::open(da.path(), &pass(), config()).await.unwrap();
    let o = sync(&a, &relay).await;
    assert!(o.received >= 1, "{o:?}");
    assert_eq!(o.refused_here, 0, "{o:?}");
    assert!(a.vector(general).await.unwrap().covers(&b_vector));
    assert_eq!(snapshot(&a, general).await, bob_view);
    let thread = a.thread(bob_reply).await.unwrap();
    assert_eq!(thread.replies.last().unwrap().text.as_deref(), Some("bob canary reply"));
    assert!(a.verify().await.unwrap().is_clean());

    // Receiving Bob's messages made Alice write delivery receipts: they reach
    // the relay, after which one Hello settles everything.
    settle(&a, &relay).await;
    assert_eq!(
        vector_of(&relay.vectors().await.unwrap(), wire),
        Some(a.vector(general).await.unwrap())
    );

    // Bob comes back and catches up the same way: all three hold one vector.
    let b = Store::open(db.path(), &pass(), config()).await.unwrap();
    sync(&b, &relay).await;
    assert_eq!(b.vector(general).await.unwrap(), a.vector(general).await.unwrap());
    assert_eq!(snapshot(&b, general).await, snapshot(&a, general).await);
    assert!(b.verify().await.unwrap().is_clean());
    b.close().await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test]
async fn the_relay_holds_no_plaintext() {
    let (da, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = RelayStore::open(dr.path()).unwrap();
    let (a, general) = alice(da.path()).await;
    sync(&a, &relay).await;
    let stats = relay.stats();
    assert_eq!((stats.channels, stats.feeds), (1, 1));
    assert!(stats.entries > 0 && stats.bytes > 0);
    a.close().await.unwrap();
    drop(relay);

    let mut needles: Vec<String> = (0..200).map(text).collect();
    needles.extend([
        CHANNEL_NAME.into(),
        ALICE.into(),
        "alice canary reply".into(),
        "alice canary edited".into(),
        "canary".into(),
    ]);
    let id = general.0;
    let found = files(dr.path()).into_iter().any(|p| {
        let bytes = std::fs::read(&p).unwrap();
        let hit = |n: &[u8]| bytes.windows(n.len()).any(|w| w == n);
        needles.iter().any(|n| hit(n.as_bytes())) || hit(&id) || hit(general.to_hex().as_bytes())
    });
    assert!(!found, "plaintext or the channel id under {}", dr.path().display());
}

/// One session of `local` with `remote`, granting (and so certifying) only
/// with `grant`: a member that did not configure the relay.
async fn sync_as<A: Replica, B: Replica>(local: &A, remote: &B, grant: bool) -> Outcome {
    let (mine, theirs) = conns(local, remote);
    let session = mine.session(local, grant).await.unwrap();
    let outcome = run_session(session, local, &mine, |req| {
        let (remote, theirs) = (remote.clone(), theirs.clone());
        async move { Ok(serve(&remote, req, &theirs).await.0) }
    })
    .await;
    assert_eq!(outcome.failed, None, "{outcome:?}");
    outcome
}

/// The pack of the entry the relay serves that carried `text` when it
/// came (found by its place), and whether `text` still opens in it.
async fn served_pack(
    relay: &RelayStore,
    keys: &ChannelKeys,
    place: (hearth_core::DeviceId, u64),
) -> (Option<Vec<u8>>, Vec<String>) {
    let all = relay
        .entries_after(keys.wire(), Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .unwrap();
    let env = all
        .entries
        .iter()
        .map(|b| Envelope::decode(b).unwrap())
        .find(|e| (e.header.device, e.header.seq) == place)
        .expect("the relay holds the entry");
    let texts = env.open_texts(keys).into_iter().map(|c| c.text).collect();
    (env.pack.clone(), texts)
}

/// Where the entry that carried `msg`'s text sits in its feed.
async fn place_of(s: &Store, keys: &ChannelKeys, msg: hearth_core::MessageId) -> (hearth_core::DeviceId, u64) {
    let all = s
        .entries_after(keys.wire(), Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap();
    let env = all
        .entries
        .iter()
        .map(|x| Envelope::decode(x).unwrap())
        .find(|e| e.open_texts(keys).iter().any(|c| c.msg == msg))
        .expect("an entry carries the text");
    (env.header.device, env.header.seq)
}

/// The files under `dir` that hold `needle` anywhere.
fn holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

/// A delete reaches a relay (sync protocol 9): the author's store hands it
/// the entry's pack sealed again without the deleted text, and the relay
/// serves the entry that way from then on (after a rebuild of its database
/// too); a member that comes later never gets the text. A member that is
/// neither the author nor a user that certified the relay hands the same
/// drop, and it is not taken.
#[tokio::test]
async fn a_relay_serves_a_deleted_text_no_more() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (dc, dr) = (&dirs[3], &dirs[2]);
    let (relay, a, b, general, keys) = relay_alice_bob(&dirs).await;
    let ids = posts_in_one_entry(&a, general, &["a message that stays", "the secret that must go"]).await;
    let secret = ids[1];
    // Alice configured the relay (she grants it the channel); Bob did not.
    sync_as(&a, &relay, true).await;
    b.join_channel(keys.clone()).await.unwrap();
    sync_as(&b, &relay, false).await;
    let place = place_of(&a, &keys, secret).await;
    let (before, texts) = served_pack(&relay, &keys, place).await;
    assert!(texts.contains(&"the secret that must go".to_string()));

    // Alice deletes it; Bob, a member, hears of it first and drops the text
    // himself, but the relay does not take his word for it.
    a.delete(secret).await.unwrap();
    sync_as(&a, &b, false).await;
    assert!(
        b.find_text("the secret that must go")
            .await
            .unwrap()
            .iter()
            .all(|w| !w.starts_with("sled"))
    );
    assert!(
        !b.text_drops().await.unwrap().is_empty(),
        "Bob's store keeps the drop for relays"
    );
    // Not even once he certified the relay himself (any member may).
    for grant in [false, true] {
        let o = sync_as(&b, &relay, grant).await;
        assert!(!o.noted.is_empty(), "the drop was handed over: {o:?}");
        assert_eq!(
            served_pack(&relay, &keys, place).await.0,
            before,
            "taken from a plain member"
        );
    }

    // Alice hands it over: the relay serves the entry without the text.
    let drops = a.text_drops().await.unwrap();
    assert!(drops.iter().any(|d| (d.device, d.seq) == place), "{drops:?}");
    sync_as(&a, &relay, true).await;
    let (after, texts) = served_pack(&relay, &keys, place).await;
    assert_ne!(after, before);
    assert!(!texts.iter().any(|t| t.contains("secret")), "{texts:?}");
    // One more slot of the pack dropped (format 5 counts them in the clear).
    let gone = |p: &Option<Vec<u8>>| p.as_deref().and_then(hearth_core::textpack::gone_of);
    assert_eq!((gone(&before), gone(&after)), (Some(0), Some(1)));
    // The drop is in the relay's log: a database rebuilt from it holds it.
    drop(relay);
    std::fs::remove_dir_all(dr.path().join("db")).unwrap();
    let relay = RelayStore::open(dr.path()).unwrap();
    assert_eq!(
        served_pack(&relay, &keys, place).await.0,
        after,
        "replayed from the log"
    );
    // (Its peer id in these sessions is where the handle lives: a new one,
    // which Alice certifies again, as a relay's own key would spare her.)
    sync_as(&a, &relay, true).await;

    // Its old bytes are in the relay's files until a compaction, which
    // runs while a member that comes later takes everything from the relay.
    let old = before.clone().expect("the entry had a pack");
    assert!(
        !holding(dr.path(), &old).is_empty(),
        "the control: the relay's files hold the old pack"
    );
    assert!(relay.stats().dropped_bytes > 0);
    let c = Store::create(dc.path(), &pass(), "carol", config()).await.unwrap();
    c.join_channel(keys.clone()).await.unwrap();
    let (compacted, _) = tokio::join!(relay.compact(), sync_as(&c, &relay, false));
    let report = compacted.unwrap();
    assert!(report.rows_copied > 0, "{report:?}");
    assert_eq!(
        holding(dr.path(), &old),
        Vec::<std::path::PathBuf>::new(),
        "the old pack left every file"
    );
    assert_eq!(relay.stats().dropped_bytes, 0);
    assert_eq!(served_pack(&relay, &keys, place).await.0, after);
    sync_as(&c, &relay, false).await;
    let m = c.message(secret).await.unwrap().message;
    assert!(m.deleted && m.text.is_none(), "{m:?}");
    assert!(c.find_text("the secret that must go").await.unwrap().is_empty());
    assert_eq!(texts_of(&c, general).await, ["a message that stays"]);

    // The relay's database rebuilt from its (new) log: the drop holds, and
    // it takes entries as before.
    drop(relay);
    std::fs::remove_dir_all(dr.path().join("db")).unwrap();
    let relay = RelayStore::open(dr.path()).unwrap();
    assert_eq!(served_pack(&relay, &keys, place).await.0, after);
    a.post(general, "after the compaction").await.unwrap();
    sync_as(&a, &relay, true).await;
    sync_as(&c, &relay, false).await;
    assert_eq!(
        texts_of(&c, general).await,
        ["after the compaction", "a message that stays"]
    );
}

/// Retention reaches a relay the same way: the texts a member's store
/// expired leave what the relay serves once the author's device syncs,
/// and its files at its compaction.
#[tokio::test]
async fn a_relay_drops_expired_texts() {
    let (da, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = RelayStore::open(dr.path()).unwrap();
    let a = Store::create(da.path(), &pass(), ALICE, config()).await.unwrap();
    let general = a.create_channel(CHANNEL_NAME).await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let old = a.post(general, "a text that expires").await.unwrap();
    sync_as(&a, &relay, true).await;
    let place = place_of(&a, &keys, old).await;
    let before = served_pack(&relay, &keys, place).await.0.expect("a pack");
    a.set_retention(general, Some(std::time::Duration::from_secs(1)))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert!(a.expire().await.unwrap() >= 1);
    sync_as(&a, &relay, true).await;
    let (after, texts) = served_pack(&relay, &keys, place).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert_ne!(after.as_ref(), Some(&before));
    relay.compact().await.unwrap();
    let left = holding(dr.path(), &before);
    assert!(left.is_empty(), "{left:?}");
}

/// An admin's delete of another user's message reaches a relay through
/// the author's device: the relay takes no drop from the admin (it cannot
/// tell an admin from a member), but the author's store, once the delete
/// reaches it, drops the text from its own entry and hands the relay that
/// drop, which it takes. The old bytes leave the relay at its compaction.
#[tokio::test]
async fn an_admins_delete_reaches_a_relay_through_the_authors_device() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dr = &dirs[2];
    let (relay, a, b, general, keys) = relay_alice_bob(&dirs).await;
    b.join_channel(keys.clone()).await.unwrap();
    sync_as(&a, &b, false).await;
    let secret = posts_in_one_entry(&b, general, &["bob's text the owner deletes", "bob's text that stays"]).await[0];
    sync_as(&b, &relay, true).await;
    sync_as(&b, &a, false).await;
    let place = place_of(&b, &keys, secret).await;
    let (before, texts) = served_pack(&relay, &keys, place).await;
    assert!(texts.contains(&"bob's text the owner deletes".to_string()));

    // Alice owns the channel: her delete counts everywhere, but the relay
    // does not take her word for Bob's entry.
    a.delete(secret).await.unwrap();
    sync_as(&a, &relay, true).await;
    assert_eq!(served_pack(&relay, &keys, place).await.0, before);
    // Bob's store takes the delete from the relay, drops the text from
    // its own entry and hands the relay that drop, which it takes.
    sync_as(&b, &relay, true).await;
    let m = b.message(secret).await.unwrap().message;
    assert!(m.deleted && m.text.is_none(), "{m:?}");
    sync_as(&b, &relay, true).await;
    let (after, texts) = served_pack(&relay, &keys, place).await;
    assert_ne!(after, before);
    assert_eq!(texts, ["bob's text that stays"]);
    relay.compact().await.unwrap();
    let old = before.expect("the entry had a pack");
    assert!(holding(dr.path(), &old).is_empty());
}

/// A member whose retention killed whole epochs hands a relay that never
/// held them their stubs (store format 12, protocol 10); the relay takes
/// and serves them, and a member that joins later takes them from it: it
/// never holds the old changes, shows what remains, and verifies clean.
#[tokio::test]
async fn a_relay_takes_and_serves_the_stubs_of_dead_epochs() {
    let (da, dc, dr) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let relay = RelayStore::open(dr.path()).unwrap();
    let mut cfg = config();
    cfg.epoch_messages = 2;
    let a = Store::create(da.path(), &pass(), ALICE, cfg.clone()).await.unwrap();
    let general = a.create_channel(CHANNEL_NAME).await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let mut old = Vec::new();
    for i in 0..4 {
        old.push(a.post(general, &format!("old post {i}")).await.unwrap());
        // An entry each (a read closes it), so that two epochs of two fill.
        a.vector(general).await.unwrap();
    }
    a.set_retention(general, Some(std::time::Duration::from_secs(1)))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let fresh = a.post(general, "a fresh post").await.unwrap();
    // The store's own sweep (every second) may have dropped some already.
    a.expire().await.unwrap();
    for id in &old {
        assert!(a.message(*id).await.is_err(), "an expired post stays");
    }
    assert_eq!(a.stats().await.unwrap().epochs, 2, "epochs 1 and 2 died");
    // Longer from now on: the fresh post stays; what died stays dead.
    a.set_retention(general, Some(std::time::Duration::from_secs(3600)))
        .await
        .unwrap();
    sync_as(&a, &relay, true).await;

    let c = Store::create(dc.path(), &pass(), "carol", cfg).await.unwrap();
    c.join_channel(keys.clone()).await.unwrap();
    sync_as(&c, &relay, false).await;
    assert_eq!(c.stats().await.unwrap().epochs, 2);
    assert_eq!(
        c.message(fresh).await.unwrap().message.text.as_deref(),
        Some("a fresh post")
    );
    for id in old {
        assert!(c.message(id).await.is_err());
    }
    assert!(c.verify().await.unwrap().problems.is_empty());
    assert_eq!(
        c.vector(general).await.unwrap().seq(&a.whoami().device),
        a.vector(general).await.unwrap().seq(&a.whoami().device)
    );
}

/// A relay keeps the texts of what it takes for its own retention
/// (`RelayConfig::retention`): past it, entries stay (their feeds still
/// verify and chain) and their packs go, from what it serves and, at its
/// compaction, from its files; when each entry came survives a rebuild of
/// its database (its log's commit records carry the time).
#[tokio::test]
async fn a_relay_keeps_texts_for_its_own_retention() {
    let (da, dc, dr) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let keep = hearth_sync::RelayConfig::default().with_retention(Some(std::time::Duration::from_secs(1)));
    let relay = RelayStore::open_with(dr.path(), keep.clone()).unwrap();
    let a = Store::create(da.path(), &pass(), ALICE, config()).await.unwrap();
    let general = a.create_channel(CHANNEL_NAME).await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let old = a.post(general, "a text the relay keeps a second").await.unwrap();
    sync_as(&a, &relay, true).await;
    let place = place_of(&a, &keys, old).await;
    let before = served_pack(&relay, &keys, place).await.0.expect("a pack");
    assert_eq!(relay.expire().await.unwrap(), 0, "nothing is old yet");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let young = a.post(general, "a text that came later").await.unwrap();
    sync_as(&a, &relay, true).await;
    assert!(relay.expire().await.unwrap() >= 1);
    assert_eq!(served_pack(&relay, &keys, place).await, (None, Vec::new()));
    relay.compact().await.unwrap();
    let left = holding(dr.path(), &before);
    assert!(left.is_empty(), "{left:?}");

    // A member that comes later gets the entry without its text, and the
    // feed still verifies.
    let c = Store::create(dc.path(), &pass(), "carol", config()).await.unwrap();
    c.join_channel(keys.clone()).await.unwrap();
    sync_as(&c, &relay, false).await;
    let m = c.message(old).await.unwrap().message;
    assert!(m.text.is_none() && m.dropped, "{m:?}");
    assert_eq!(
        c.message(young).await.unwrap().message.text.as_deref(),
        Some("a text that came later")
    );
    assert!(c.verify().await.unwrap().problems.is_empty());

    // Rebuilt from its log: what went stays gone, and the later entry keeps
    // the time it came (it is past the retention by now, and expires at
    // once: a time reset by the rebuild would keep it a second more).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    drop(relay);
    std::fs::remove_dir_all(dr.path().join("db")).unwrap();
    let relay = RelayStore::open_with(dr.path(), keep).unwrap();
    assert_eq!(served_pack(&relay, &keys, place).await.0, None);
    assert_eq!(relay.expire().await.unwrap(), 1);
}

#[tokio::test]
async fn forged_entries_are_refused_and_the_good_ones_served() {
    let (da, db, dr) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let relay = RelayStore::open(dr.path()).unwrap();
    let (a, general) = alice(da.path()).await;
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    let good = a
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    assert!(good.len() > 3);

    // Bit flips anywhere in an entry: each one refused on its own.
    for i in (0..good[0].len()).step_by(3) {
        let mut e = good[0].clone();
        e[i] ^= 0x10;
        let r = relay.ingest(wire, vec![e]).await.unwrap().unwrap();
        assert_eq!((r.accepted, r.rejected.len()), (0, 1), "flip at {i}: {r:?}");
    }
    // Entries of another channel.
    let other = a.create_channel("other").await.unwrap();
    a.post(other, "elsewhere").await.unwrap();
    let other_wire = a.channel_keys(other).await.unwrap().wire();
    let foreign = a
        .entries_after(other_wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    let r = relay.ingest(wire, foreign).await.unwrap().unwrap();
    assert_eq!(r.accepted, 0);
    assert!(
        r.rejected
            .iter()
            .all(|x| x.reason == Refusal::OtherChannel && x.is_peer_fault()),
        "{r:?}"
    );
    // A gap: entry 1, then entries from 3 on.
    let mut gapped = vec![good[0].clone()];
    gapped.extend(good[2..].iter().cloned());
    let r = relay.ingest(wire, gapped).await.unwrap().unwrap();
    assert_eq!(r.accepted, 1);
    assert_eq!(r.rejected[0].reason, Refusal::Gap { expected: 2 }, "{r:?}");
    assert!(!r.rejected[0].is_peer_fault());
    assert!(r.rejected[1..].iter().all(|x| x.reason == Refusal::FollowsRefused));

    // A fork: a writer signs two different entries at one position.
    let mallory = Identity::generate("mallory").unwrap();
    let side = ChannelKeys::generate().unwrap();
    let body = |b: u8| EntryBody {
        epoch: 1,
        change: vec![b; 16],
    };
    let (one, h1) = Envelope::seal_next(&side, &mallory, 1, [0; 32], &body(1)).unwrap();
    let (two, _) = Envelope::seal_next(&side, &mallory, 2, h1, &body(2)).unwrap();
    let (two_again, _) = Envelope::seal_next(&side, &mallory, 2, h1, &body(3)).unwrap();
    let r = relay.ingest(side.wire(), vec![one, two]).await.unwrap().unwrap();
    assert_eq!(r.accepted, 2);
    let r = relay.ingest(side.wire(), vec![two_again]).await.unwrap().unwrap();
    assert_eq!(r.accepted, 0);
    assert_eq!(r.rejected[0].reason, Refusal::Forked { seq: 2 }, "{r:?}");
    // The author forked, not whoever forwarded it: no ban for the sender.
    assert!(!r.rejected[0].is_peer_fault());
    assert_eq!(r.vector.seq(&mallory.device()), 2);
    assert_eq!(relay.stats().forked_feeds, 1, "the proof is kept");

    // Alice's good entries go through; Bob gets all of them and nothing forged.
    let o = sync(&a, &relay).await;
    assert_eq!(o.refused_there, 0, "{o:?}");
    let b = Store::create(db.path(), &pass(), BOB, config()).await.unwrap();
    b.join_channel(keys).await.unwrap();
    let o = sync(&b, &relay).await;
    assert_eq!(o.refused_here, 0, "{o:?}");
    assert_eq!(
        b.page(general, None, 10_000).await.unwrap(),
        a.page(general, None, 10_000).await.unwrap()
    );
    assert!(b.verify().await.unwrap().is_clean());
    settle(&b, &relay).await;

    // The relay comes back from disk the same.
    let (vectors, stats) = (relay.vectors().await.unwrap(), relay.stats());
    drop(relay);
    let relay = RelayStore::open(dr.path()).unwrap();
    assert_eq!(relay.vectors().await.unwrap(), vectors);
    assert_eq!(relay.stats(), stats);
    assert!(sync(&b, &relay).await.in_sync_at_hello);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A relay that dials a member takes only the channels it proves, that is,
/// those a member granted it: nothing before Alice trusts it, her later
/// writes once she has.
#[tokio::test]
async fn a_relay_dialing_a_member_takes_the_channels_it_was_granted() {
    let (da, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = RelayStore::open(dr.path()).unwrap();
    let (a, general) = alice(da.path()).await;
    let other = a.create_channel("other").await.unwrap();
    a.post(other, "elsewhere").await.unwrap();

    // Not granted anything: it learns nothing.
    let o = sync(&relay, &a).await;
    assert!(!o.peer_relay);
    assert!(o.proved.is_empty() && o.peer.is_empty(), "{o:?}");
    assert_eq!((o.received, relay.stats().channels), (0, 0));

    // Alice trusts it (her session grants it both channels and fills it).
    let o = sync(&a, &relay).await;
    assert_eq!(o.granted, 2, "{o:?}");
    let mut held = relay.vectors().await.unwrap();
    let mut mine = a.vectors().await.unwrap();
    held.sort_by_key(|(w, _)| *w);
    mine.sort_by_key(|(w, _)| *w);
    assert_eq!(held, mine);
    assert_eq!(relay.stats().channels, 2);

    // Later writes come over when the relay dials her.
    a.post(general, "later").await.unwrap();
    let o = sync(&relay, &a).await;
    assert_eq!(o.received, 1, "{o:?}");
    let wire = a.channel_keys(general).await.unwrap().wire();
    assert_eq!(
        vector_of(&relay.vectors().await.unwrap(), wire),
        Some(a.vector(general).await.unwrap())
    );
    a.close().await.unwrap();
}

/// Every entry a relay holds, per channel: (feed seqs, count, blake3 of all).
async fn holdings(relay: &RelayStore) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (wire, v) in relay.vectors().await.unwrap() {
        let all = relay
            .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        let mut h = blake3::Hasher::new();
        for e in &all.entries {
            h.update(e);
        }
        let feeds: serde_json::Map<String, serde_json::Value> =
            v.0.iter()
                .map(|(d, p)| (d.to_string(), serde_json::json!(p.seq)))
                .collect();
        let wire: String = wire.0.iter().map(|b| format!("{b:02x}")).collect();
        out.insert(
            wire,
            serde_json::json!({"feeds": feeds, "entries": all.entries.len(), "blake3": h.finalize().to_hex().to_string()}),
        );
    }
    serde_json::Value::Object(out)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A relay of format 1 (sled only, written by the code before the feed log):
/// it opens, writes its log, and holds exactly what it held; then it loses
/// its database and rebuilds it from that log.
#[tokio::test]
async fn a_format_1_relay_migrates_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v1").await;
}

/// A relay of format 2 (the feed log, before devices had keys of their own).
#[tokio::test]
async fn a_format_2_relay_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v2").await;
}

/// A relay of format 3 (fork proofs, before relays kept access grants).
#[tokio::test]
async fn a_format_3_relay_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v3").await;
}

/// A relay of format 4 (access grants).
#[tokio::test]
async fn a_format_4_relay_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v4").await;
}

/// A relay of format 5 (device certificate chains), before channels had
/// rosters (membership ops travel inside entries, which relays do not open).
#[tokio::test]
async fn a_format_5_relay_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v5").await;
}

/// A relay written beside the stores of format 6 (rosters; entries of
/// devices on ids formats 4 to 6 derived from their keys), before devices
/// moved to keyed ids.
#[tokio::test]
async fn a_relay_of_the_format_6_stores_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v6").await;
}

/// Relay format 6 (revocation notices), written before relay certificates
/// and removals (format 7).
#[tokio::test]
async fn a_relay_of_the_format_7_stores_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v7").await;
}

/// Relay format 8 (removals with their clocks), written before entries of
/// format 3 (droppable segments, relay format 9).
#[tokio::test]
async fn a_relay_of_the_format_8_stores_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v8").await;
}

/// Relay format 9 (entries of format 3, texts in segments), written before
/// entries of format 4 (texts in packs, relay format 10).
#[tokio::test]
async fn a_relay_of_the_format_9_stores_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v9").await;
}

/// Relay format 10 (entries of format 4), today's: the relay of the format
/// 10 stores (`tests/fixtures/v10`, written by `f08ed70`).
#[tokio::test]
async fn a_relay_of_the_format_10_stores_opens_and_its_database_can_be_rebuilt() {
    old_relay_opens_and_its_database_can_be_rebuilt("v10").await;
}

/// Relay format 8: a relay of format 7 (`tests/fixtures/relay7`, written by
/// `write_relay7_fixture` with the code of `faa7f29`) keeps the removal it
/// took (its records have no clock), and takes a later adding back, which
/// it serves again, through a reopen and a rebuild from its log.
#[tokio::test]
async fn a_relay_of_format_7_keeps_its_removals_and_takes_a_later_adding_back() {
    use hearth_core::peer::{Certifier, RemovalNotice};
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/relay7");
    let people: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("people.json")).unwrap()).unwrap();
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect()
    };
    let wire = WireId(bytes(&people["wire"]).try_into().unwrap());
    let person = |name: &str| Certifier {
        user: hearth_core::UserId(bytes(&people[name]["user"]).try_into().unwrap()),
        device: hearth_core::DeviceId(bytes(&people[name]["device"]).try_into().unwrap()),
        key: bytes(&people[name]["key"]).try_into().unwrap(),
        via: Vec::new(),
    };
    let (alice, bob) = (person("alice"), person("bob"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relay");
    copy_dir(&fixture.join("relay"), &dir);
    let served =
        |relay: RelayStore, who: Certifier| async move { !relay.serving(who, vec![wire]).await.unwrap().is_empty() };
    let relay = RelayStore::open(&dir).unwrap();
    assert!(served(relay.clone(), alice.clone()).await);
    assert!(
        !served(relay.clone(), bob.clone()).await,
        "the removal of format 7 stands"
    );
    assert_eq!(relay.relay_certs(vec![wire]).await.unwrap().len(), 1);
    drop(relay);
    std::fs::remove_dir_all(dir.join("db")).unwrap();
    let relay = RelayStore::open(&dir).unwrap();
    assert!(!served(relay.clone(), bob.clone()).await, "after a rebuild");
    // Alice adds Bob back (any clock is later than none).
    let back = RemovalNotice {
        wire,
        user: bob.user,
        left: false,
        cuts: Vec::new(),
        at: 1,
        back: true,
    };
    assert_eq!(
        relay
            .note(vec![], vec![back], vec![], Some(alice.clone()))
            .await
            .unwrap(),
        Some(1)
    );
    assert!(served(relay.clone(), bob.clone()).await);
    assert_eq!(relay.relay_certs(vec![wire]).await.unwrap().len(), 2);
    drop(relay);
    std::fs::remove_dir_all(dir.join("db")).unwrap();
    let relay = RelayStore::open(&dir).unwrap();
    assert!(
        served(relay.clone(), bob.clone()).await,
        "the adding back, after a rebuild"
    );
}

/// Writes `tests/fixtures/relay7`: a relay of format 7 that holds a channel
/// granted and certified by Alice and Bob, and Alice's removal of Bob (log
/// kind 9, table `X`), with the public ids of both (`people.json`). Run by
/// hand, with the code of relay format 7 only (it was, at `faa7f29`).
#[tokio::test]
#[ignore = "writes tests/fixtures/relay7; run by hand"]
async fn write_relay7_fixture() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/relay7");
    assert!(!out.exists(), "fixtures are never rewritten");
    let tmp = tempfile::tempdir().unwrap();
    let alice = Store::create(tmp.path().join("a"), &pass(), ALICE, config())
        .await
        .unwrap();
    let bob = Store::create(tmp.path().join("b"), &pass(), BOB, config())
        .await
        .unwrap();
    let general = alice.create_channel(CHANNEL_NAME).await.unwrap();
    alice.post(general, "before").await.unwrap();
    let keys = alice.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    bob.join_channel(keys).await.unwrap();
    bob.post(general, "bob was here").await.unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let relay = RelayStore::open(&out.join("relay")).unwrap();
    for s in [&alice, &bob, &alice, &bob] {
        settle(s, &relay).await;
    }
    assert_eq!(relay.relay_certs(vec![wire]).await.unwrap().len(), 2);
    alice.remove_member(general, bob.whoami().user).await.unwrap();
    let o = sync(&alice, &relay).await;
    assert_eq!(o.noted.len(), 1, "{o:?}");
    assert_eq!(relay.relay_certs(vec![wire]).await.unwrap().len(), 1);
    let person = |s: &Store| {
        let s = s.clone();
        async move {
            let c = s.device_cert().await.unwrap();
            serde_json::json!({
                "user": c.body.user.0.to_vec(),
                "device": c.body.device.0.to_vec(),
                "key": c.body.keys.signing.to_vec(),
            })
        }
    };
    let people = serde_json::json!({
        "wire": wire.0.to_vec(),
        "alice": person(&alice).await,
        "bob": person(&bob).await,
    });
    std::fs::write(out.join("people.json"), serde_json::to_vec_pretty(&people).unwrap()).unwrap();
    drop(relay);
    let _ = std::fs::remove_file(out.join("relay").join("LOCK"));
}

async fn old_relay_opens_and_its_database_can_be_rebuilt(format: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(format);
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("relay.answers.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relay");
    copy_dir(&fixture.join("relay"), &dir);
    assert_eq!(dir.join("log").exists(), format != "v1");
    let relay = RelayStore::open(&dir).unwrap();
    assert!(dir.join("log").exists(), "the migration wrote the log");
    assert_eq!(holdings(&relay).await, want);
    drop(relay);
    let relay = RelayStore::open(&dir).unwrap();
    assert_eq!(holdings(&relay).await, want, "after a reopen");
    drop(relay);
    std::fs::remove_dir_all(dir.join("db")).unwrap();
    let relay = RelayStore::open(&dir).unwrap();
    assert_eq!(holdings(&relay).await, want, "rebuilt from the log");
    // From format 4 its access grants are in the log too.
    let number: u8 = format[1..].parse().unwrap();
    let granted = if number >= 4 {
        want.as_object().unwrap().len()
    } else {
        0
    };
    assert_eq!(relay.stats().granted_channels, granted, "grants after a rebuild");
    // It goes on taking entries after the rebuild.
    let (alice, c) = alice(&tmp.path().join("alice")).await;
    let wire = alice.channel_keys(c).await.unwrap().wire();
    let all = alice
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap();
    let n = all.entries.len();
    let r = relay.ingest(wire, all.entries).await.unwrap().unwrap();
    assert_eq!((r.accepted, r.rejected.len()), (n, 0));
    drop(relay);
    std::fs::write(dir.join("db").join("db"), [0xA5; 4096]).unwrap();
    let relay = RelayStore::open(&dir).unwrap();
    assert_eq!(
        relay.stats().entries as usize,
        n + want
            .as_object()
            .unwrap()
            .values()
            .map(|v| v["entries"].as_u64().unwrap() as usize)
            .sum::<usize>()
    );
    alice.close().await.unwrap();
}

/// Two honest members, each holding one branch of a feed its author forked
/// (a copy of Alice's store wrote on beside the original), and a relay: they
/// sync with each other in every direction and nobody is blamed, since the
/// refusals are the author's fault, proved by the author's own signatures.
/// Each keeps its branch and the proof, whether the branches end at the
/// same position or one goes further (its side is then handed the other's
/// version of the position where they part).
#[tokio::test]
async fn honest_peers_forwarding_two_branches_of_a_fork_blame_nobody() {
    two_branches_blame_nobody(false).await;
}

/// The same, with the copy's branch one entry longer than the original's.
#[tokio::test]
async fn honest_peers_on_branches_of_a_fork_at_different_positions_keep_the_proof() {
    two_branches_blame_nobody(true).await;
}

async fn two_branches_blame_nobody(apart: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, general) = alice(&tmp.path().join("a")).await;
    a.checkpoint().await.unwrap();
    copy_dir(&tmp.path().join("a"), &tmp.path().join("a2"));
    let _ = std::fs::remove_file(tmp.path().join("a2").join("LOCK"));
    a.post(general, "branch one").await.unwrap();
    let a2 = Store::open(tmp.path().join("a2"), &pass(), config()).await.unwrap();
    if apart {
        a2.post(general, "branch two").await.unwrap();
        // A read closes the entry: the next post is in another.
        a2.vector(general).await.unwrap();
        a2.post(general, "branch two, again").await.unwrap();
    } else {
        posts_in_one_entry(&a2, general, &["branch two", "branch two, again"]).await;
    }
    let (one, two) = (a.vector(general).await.unwrap(), a2.vector(general).await.unwrap());
    let mine = a.whoami().device;
    assert_eq!(two.seq(&mine), one.seq(&mine) + u64::from(apart));
    let keys = a.channel_keys(general).await.unwrap();
    let (b, c) = (
        Store::create(tmp.path().join("b"), &pass(), BOB, config())
            .await
            .unwrap(),
        Store::create(tmp.path().join("c"), &pass(), "carol", config())
            .await
            .unwrap(),
    );
    b.join_channel(keys.clone()).await.unwrap();
    c.join_channel(keys).await.unwrap();
    let relay = RelayStore::open(&tmp.path().join("relay")).unwrap();
    sync(&b, &a).await;
    sync(&c, &a2).await;
    // B trusts the relay: it grants it the channel with its branch.
    sync(&b, &relay).await;

    /// A session both ways, with the serving side's verdict too.
    async fn both<A: Replica, B: Replica>(x: &A, y: &B) -> (Outcome, bool) {
        let malicious = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = malicious.clone();
        let (mine, theirs) = conns(x, y);
        let session = mine.session(x, y.is_relay()).await.unwrap();
        let outcome = run_session(session, x, &mine, |req| {
            let (y, seen, theirs) = (y.clone(), seen.clone(), theirs.clone());
            async move {
                let (response, served) = serve(&y, req, &theirs).await;
                if served.malicious {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(response)
            }
        })
        .await;
        (outcome, malicious.load(std::sync::atomic::Ordering::SeqCst))
    }
    let mut refusals = 0;
    for _ in 0..2 {
        for (o, served_malicious) in [
            both(&b, &c).await,
            both(&c, &b).await,
            both(&c, &relay).await,
            both(&relay, &c).await,
        ] {
            assert_eq!(o.failed, None, "{o:?}");
            assert!(!o.fault_here, "an honest forwarder was blamed: {o:?}");
            assert!(!served_malicious, "an honest forwarder was blamed by the server");
            refusals += o.refused_here + o.refused_there;
        }
    }

    assert!(refusals > 0, "the other branch was offered and refused");
    // Each keeps its own branch and the proof.
    assert_eq!(b.stats().await.unwrap().forked_feeds, 1);
    assert_eq!(c.stats().await.unwrap().forked_feeds, 1);
    assert_eq!(relay.stats().forked_feeds, 1);
    // The relay's proof is in its log: a rebuilt database still has it.
    drop(relay);
    std::fs::remove_dir_all(tmp.path().join("relay").join("db")).unwrap();
    let relay = RelayStore::open(&tmp.path().join("relay")).unwrap();
    assert_eq!(relay.stats().forked_feeds, 1, "after a rebuild");
    drop(relay);
    let texts = |p: Vec<hearth_core::Message>| p.into_iter().filter_map(|m| m.text).collect::<Vec<_>>();
    assert!(texts(b.page(general, None, 100).await.unwrap()).contains(&"branch one".to_string()));
    assert!(!texts(c.page(general, None, 100).await.unwrap()).contains(&"branch one".to_string()));
    for s in [a, a2, b, c] {
        s.close().await.unwrap();
    }
}

/// A revoked device's entries past its cut are refused by relays too
/// (issue 8, item 1): the revoking device hands its relay the revocation's
/// notice in the next session, before any entry; any other member hands it
/// to a relay it syncs with (Bob, to a relay of his own). Neither relay then
/// takes or serves what the stolen phone writes, and the one that took a
/// late entry before the notice stops handing it out. A device the thief
/// links with the phone afterwards is refused and served nothing too (its
/// chain runs through the phone).
#[tokio::test]
async fn relays_refuse_a_revoked_devices_later_entries() {
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let laptop = Store::create(dirs[0].path(), &pass(), ALICE, config()).await.unwrap();
    let phone_keys = hearth_core::device::DeviceKeys::generate().unwrap();
    let bundle = laptop.link_bundle(phone_keys.public()).await.unwrap();
    let phone = Store::create_linked(dirs[1].path(), &pass(), phone_keys, &bundle, config())
        .await
        .unwrap();
    let bob = Store::create(dirs[2].path(), &pass(), BOB, config()).await.unwrap();
    let (relay, bobs_relay) = (
        RelayStore::open(dirs[3].path()).unwrap(),
        RelayStore::open(dirs[4].path()).unwrap(),
    );
    let general = laptop.create_channel(CHANNEL_NAME).await.unwrap();
    laptop.post(general, "before").await.unwrap();
    let keys = laptop.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    phone.join_channel(keys.clone()).await.unwrap();
    bob.join_channel(keys).await.unwrap();
    for s in [&laptop, &phone, &bob, &laptop, &phone] {
        settle(s, &relay).await;
    }
    phone.post(general, "the phone, still honest").await.unwrap();
    settle(&phone, &relay).await;
    settle(&laptop, &relay).await;
    let phone_id = phone.whoami().device;

    // The phone is stolen: the laptop revokes it and syncs with the relay.
    assert_eq!(laptop.revoke_device(phone_id).await.unwrap(), 1);
    let notices = laptop.revocation_notices().await.unwrap();
    assert_eq!(notices.len(), 1);
    let o = sync(&laptop, &relay).await;
    assert_eq!(o.noted, vec![notices[0].1.clone()], "{o:?}");
    let cut = vector_of(&relay.vectors().await.unwrap(), wire).unwrap().seq(&phone_id);
    assert!(cut > 0);

    // The thief writes on and syncs with the relay: it is served nothing
    // more (its device proof names a revoked device), and nothing it
    // writes gets in.
    phone.post(general, "from the stolen phone").await.unwrap();
    let o = sync(&phone, &relay).await;
    learned_nothing(&o, wire);
    assert!(!o.fault_here);
    assert_eq!(
        vector_of(&relay.vectors().await.unwrap(), wire).unwrap().seq(&phone_id),
        cut
    );

    // The thief links one more device with the phone (its chain runs
    // through the phone, which holds no user key): the relay serves it
    // nothing and refuses its entries, though no notice names it.
    let stray_dir = tempfile::tempdir().unwrap();
    let stray_keys = hearth_core::device::DeviceKeys::generate().unwrap();
    let bundle = phone.link_bundle(stray_keys.public()).await.unwrap();
    let stray = Store::create_linked(stray_dir.path(), &pass(), stray_keys, &bundle, config())
        .await
        .unwrap();
    stray.post(general, "from the stray").await.unwrap();
    let o = sync(&stray, &relay).await;
    learned_nothing(&o, wire);
    let stray_id = stray.whoami().device;
    let entries = stray
        .entries_after(wire, hearth_core::Vector::default(), 1 << 20, 64)
        .await
        .unwrap()
        .entries;
    let report = Replica::ingest(&relay, wire, entries).await.unwrap().unwrap();
    assert_eq!(report.accepted, 0, "{report:?}");
    assert_eq!(
        report.rejected.first().map(|r| r.reason.clone()),
        Some(hearth_store::Refusal::Revoked),
        "{report:?}"
    );
    assert!(
        !vector_of(&relay.vectors().await.unwrap(), wire)
            .unwrap()
            .0
            .contains_key(&stray_id)
    );

    // Bob took the revocation from the relay; he hands the notice to a relay
    // of his own, which then refuses the thief's entries too.
    settle(&bob, &relay).await;
    let o = sync(&bob, &bobs_relay).await;
    assert_eq!(o.noted.len(), 1, "{o:?}");
    let o = sync(&phone, &bobs_relay).await;
    learned_nothing(&o, wire);
    let held = vector_of(&bobs_relay.vectors().await.unwrap(), wire).unwrap();
    assert_eq!(held.seq(&phone_id), cut);
    let texts = texts_of(&bob, general).await;
    assert!(!texts.contains(&"from the stolen phone".to_string()), "{texts:?}");
    assert!(texts.contains(&"the phone, still honest".to_string()), "{texts:?}");
    stray.close().await.unwrap();
}

/// One full session of `local` with `remote` where `local` passes for a
/// relay: no device proof, only the relay certificates `certs` (its own
/// peer id is the conns' "requester").
async fn sync_as_relay<A: Replica, B: Replica>(
    local: &A,
    remote: &B,
    certs: Vec<hearth_core::peer::RelayCert>,
) -> Outcome {
    let (mine, theirs) = conns(local, remote);
    let auth = mine.auth(local.access_keys().await.unwrap()).showing(certs);
    let session = hearth_sync::reconcile::Session::full(local.vectors().await.unwrap(), true, auth);
    run_session(session, local, &mine, |req| {
        let (remote, theirs) = (remote.clone(), theirs.clone());
        async move { Ok(serve(&remote, req, &theirs).await.0) }
    })
    .await
}

/// What a removed member gets from a session: no channel, no vector, no entry.
fn learned_nothing(o: &Outcome, wire: WireId) {
    assert!(o.proved.is_empty(), "{o:?}");
    assert!(!o.peer.contains_key(&wire), "{o:?}");
    assert_eq!((o.received, o.sent), (0, 0), "{o:?}");
}

#[tokio::test]
async fn a_removed_member_learns_nothing_from_members_or_relays_and_one_that_missed_rotations_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = Store::create(dirs[0].path(), &pass(), ALICE, config()).await.unwrap();
    let bob = Store::create(dirs[1].path(), &pass(), BOB, config()).await.unwrap();
    let carol = Store::create(dirs[2].path(), &pass(), "carol", config()).await.unwrap();
    let relay = RelayStore::open(dirs[3].path()).unwrap();
    let general = alice.create_channel(CHANNEL_NAME).await.unwrap();
    alice.post(general, "before").await.unwrap();
    let keys = alice.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    bob.join_channel(keys.clone()).await.unwrap();
    carol.join_channel(keys).await.unwrap();
    bob.post(general, "bob was here").await.unwrap();
    carol.post(general, "carol was here").await.unwrap();
    // Alice configured the relay: it holds her certificate for the channel.
    let o = sync(&alice, &relay).await;
    assert!(o.certified, "{o:?}");
    for s in [&bob, &carol, &alice, &bob, &carol] {
        settle(s, &relay).await;
    }
    // Each of them configured it: it shows their three certificates.
    let certifiers = |certs: Vec<hearth_core::peer::RelayCert>| {
        certs
            .iter()
            .map(|c| c.verify().unwrap().user)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let users = [&alice, &bob, &carol].map(|s| s.whoami().user);
    assert_eq!(
        certifiers(relay.relay_certs(vec![wire]).await.unwrap()),
        users.into_iter().collect()
    );

    // Carol goes offline; Alice removes Bob (a new key generation) and
    // writes on; her relay takes the removal.
    let bob_user = bob.whoami().user;
    alice.remove_member(general, bob_user).await.unwrap();
    alice.post(general, "after the removal").await.unwrap();
    let o = sync(&alice, &relay).await;
    assert_eq!(o.noted.len(), 1, "the removal, once: {o:?}");
    assert_eq!(
        certifiers(relay.relay_certs(vec![wire]).await.unwrap()),
        [users[0], users[2]].into_iter().collect(),
        "a removed user's certificate is no longer shown"
    );
    let alice_vector = alice.vector(general).await.unwrap();
    assert_eq!(
        vector_of(&relay.vectors().await.unwrap(), wire),
        Some(alice_vector.clone())
    );
    bob.post(general, "bob, unaware").await.unwrap();
    let bob_before = bob.vector(general).await.unwrap();

    // Bob's node dials Alice's and the relay (it still proves the access
    // key): nothing, but that he was removed (Alice's signed removal, which
    // his store keeps: it writes there no more). Nor when Alice's node
    // dials Bob's.
    let o = sync(&bob, &alice).await;
    learned_nothing(&o, wire);
    assert_eq!(o.told_here, 1, "{o:?}");
    let e = bob.post(general, "bob, told").await.unwrap_err();
    assert!(
        matches!(&e, hearth_store::Error::NotAllowed { why, .. } if why.contains("removed")),
        "{e}"
    );
    learned_nothing(&sync(&bob, &relay).await, wire);
    let o = sync(&alice, &bob).await;
    learned_nothing(&o, wire);
    assert_eq!(o.withheld, 1, "{o:?}");
    // Posing as a relay, bare or with a certificate of its own.
    let own_cert = bob.relay_cert(id_of(&bob)).await.unwrap();
    for certs in [Vec::new(), vec![own_cert.clone()]] {
        learned_nothing(&sync_as_relay(&bob, &alice, certs.clone()).await, wire);
        learned_nothing(&sync_as_relay(&bob, &relay, certs).await, wire);
    }
    assert_eq!(bob.vector(general).await.unwrap(), bob_before);
    // The relay takes nothing Bob writes after his cut, from anyone.
    assert_eq!(
        vector_of(&relay.vectors().await.unwrap(), wire),
        Some(alice_vector.clone())
    );

    // Carol missed the rotation: she catches up through the relay alone,
    // then through Alice's node, and reads what was written after it.
    let o = sync(&carol, &relay).await;
    assert!(o.received > 0, "{o:?}");
    let texts = texts_of(&carol, general).await;
    assert!(texts.contains(&"after the removal".to_string()), "{texts:?}");
    let o = sync(&carol, &alice).await;
    assert_eq!(o.proved.len(), 1, "{o:?}");
    assert!(!texts_of(&bob, general).await.contains(&"after the removal".to_string()));

    // Alice adds Bob back: her relay takes that too (the latest op of a
    // user stands), and serves Bob again; Bob, whose roster then holds his
    // removal and his adding back, writes again.
    alice
        .add_member(general, bob_user, hearth_core::Role::Member)
        .await
        .unwrap();
    let o = sync(&alice, &relay).await;
    assert_eq!(o.noted.len(), 1, "the adding back: {o:?}");
    let o = sync(&bob, &relay).await;
    assert_eq!(o.proved.len(), 1, "{o:?}");
    assert!(o.received > 0, "{o:?}");
    let texts = texts_of(&bob, general).await;
    assert!(texts.contains(&"after the removal".to_string()), "{texts:?}");
    bob.post(general, "bob is back").await.unwrap();
}
