//! Retention (issue 9, item 3), with a retention of seconds: an admin's
//! setting, as CRDT data, expires messages on every member's device (no
//! read shows them, their texts are dropped, a compaction takes them out of
//! every file); a member away longer than the retention, and one that
//! joins after, get only what remains; a plain member cannot set it; verify
//! stays clean.

use std::time::Duration;

use hearth_core::{ChannelId, Passphrase};
use hearth_store::{Error, Store};

#[path = "support/two.rs"]
mod two;
use two::{config, pull};

/// The texts a store shows of a channel: its page and every thread.
async fn shown(s: &Store, c: ChannelId) -> Vec<String> {
    let mut out = Vec::new();
    for m in s.page(c, None, 1000).await.unwrap() {
        out.push(m.text.clone().unwrap_or_else(|| "(no text)".into()));
        if m.reply_count > 0 {
            for r in s.thread(m.id).await.unwrap().replies {
                out.push(r.text.unwrap_or_else(|| "(no text)".into()));
            }
        }
    }
    out.sort();
    out
}

/// Three seconds of the store's housekeeping rounds, asking its stats in
/// between: its epoch cache never holds more than `cap`.
async fn cache_stays_within(store: &Store, cap: u64) {
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stats = store.stats().await.unwrap();
        assert!(stats.cached_epochs <= cap, "{stats:?}");
    }
}

/// Whether sled still holds a text (the feed log keeps it until a compaction).
async fn in_sled(s: &Store, text: &str) -> bool {
    s.find_text(text).await.unwrap().iter().any(|w| w.starts_with("sled"))
}

async fn clean(s: &Store, who: &str) {
    let v = s.verify().await.unwrap();
    assert!(v.problems.is_empty(), "{who}: {:?}", v.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_older_than_the_retention_expire_on_every_member() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let a = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let b = Store::create(dirs[1].path(), &pass, "bob", config()).await.unwrap();
    let c = Store::create(dirs[2].path(), &pass, "carol", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    for s in [&b, &c] {
        s.join_channel(keys.clone()).await.unwrap();
    }
    let old_root = a.post(general, "an old root").await.unwrap();
    pull(&a, &b, wire, general).await;
    b.reply(old_root, "an old reply").await.unwrap();
    b.post(general, "bob's old post").await.unwrap();
    pull(&b, &a, wire, general).await;
    // Carol holds the old messages, then goes away.
    pull(&a, &c, wire, general).await;
    assert_eq!(shown(&c, general).await.len(), 3);

    // A plain member cannot set it; the owner can, and it syncs.
    let e = b
        .set_retention(general, Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotAllowed { .. }), "{e:?}");
    // Six seconds: what is posted after the old messages expired must stay
    // younger than that through two compactions and three catch-ups on a
    // busy machine (two seconds were not always enough in CI).
    a.set_retention(general, Some(Duration::from_secs(6))).await.unwrap();
    pull(&a, &b, wire, general).await;
    assert_eq!(b.retention(general).await.unwrap(), Some(Duration::from_secs(6)));
    assert_eq!(a.channels().await.unwrap()[0].retention, Some(6));

    tokio::time::sleep(Duration::from_millis(6300)).await;
    a.post(general, "a fresh post").await.unwrap();
    pull(&a, &b, wire, general).await;
    for (s, who) in [(&a, "alice"), (&b, "bob")] {
        assert_eq!(shown(s, general).await, ["a fresh post"], "{who}");
        assert_eq!(s.all_messages(general).await.unwrap().len(), 1, "{who}");
        assert!(
            matches!(s.message(old_root).await, Err(Error::NotFound { .. })),
            "{who}"
        );
        let info = s.channels().await.unwrap().remove(0);
        assert_eq!(info.messages, 1, "{who}");
    }
    for (s, who) in [(&a, "alice"), (&b, "bob")] {
        // Their texts go, then a compaction takes them out of every file.
        s.expire().await.unwrap();
        s.compact().await.unwrap();
        for t in ["an old root", "an old reply", "bob's old post"] {
            assert_eq!(s.find_text(t).await.unwrap(), Vec::<String>::new(), "{who}: {t}");
        }
        assert!(!s.find_text("a fresh post").await.unwrap().is_empty(), "{who}");
        clean(s, who).await;
    }

    // Carol, away longer than the retention, catches up on what remains
    // (the fresh post may have expired by now too: only what is younger
    // than the retention shows); her own copies of the old messages expire.
    let later = a.post(general, "a later post").await.unwrap();
    pull(&a, &c, wire, general).await;
    let old = ["an old root", "an old reply", "bob's old post"];
    let seen = shown(&c, general).await;
    assert!(seen.contains(&"a later post".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|t| old.contains(&t.as_str())), "{seen:?}");
    c.expire().await.unwrap();
    c.compact().await.unwrap();
    assert!(c.find_text("an old root").await.unwrap().is_empty());
    clean(&c, "carol").await;

    // Dave joins after the expiry: he never receives an expired text.
    let d = Store::create(dirs[3].path(), &pass, "dave", config()).await.unwrap();
    d.join_channel(keys.clone()).await.unwrap();
    pull(&a, &d, wire, general).await;
    let seen = shown(&d, general).await;
    assert!(seen.contains(&"a later post".to_string()), "{seen:?}");
    for t in old {
        assert!(d.find_text(t).await.unwrap().is_empty(), "dave: {t}");
    }
    assert_eq!(
        d.message(later).await.unwrap().message.text.as_deref(),
        Some("a later post")
    );
    clean(&d, "dave").await;

    // Off: nothing more expires, and what expired (its texts gone) does not
    // come back, even across a reopen.
    a.set_retention(general, None).await.unwrap();
    assert_eq!(a.retention(general).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let seen = shown(&a, general).await;
    assert!(seen.contains(&"a later post".to_string()), "{seen:?}");
    assert!(a.message(later).await.is_ok());
    assert!(!seen.iter().any(|t| old.contains(&t.as_str())), "{seen:?}");
    assert!(matches!(a.message(old_root).await, Err(Error::NotFound { .. })));
    a.close().await.unwrap();
    let a = Store::open(dirs[0].path(), &pass, config()).await.unwrap();
    let seen = shown(&a, general).await;
    assert!(!seen.iter().any(|t| old.contains(&t.as_str())), "{seen:?}");
    assert!(seen.contains(&"a later post".to_string()), "{seen:?}");
    assert!(matches!(a.message(old_root).await, Err(Error::NotFound { .. })));
    clean(&a, "alice, reopened").await;
}

/// The store expires on its own, in the background: no call needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_expires_texts_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let a = Store::create(dir.path(), &pass, "alice", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    a.post(general, "a text that expires by itself").await.unwrap();
    a.set_retention(general, Some(Duration::from_secs(1))).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let at = a.find_text("a text that expires by itself").await.unwrap();
        if !at.iter().any(|w| w.starts_with("sled")) {
            gone = true;
            break;
        }
    }
    assert!(gone, "the background expiry did not drop the text from sled");
    clean(&a, "alice").await;
}

/// Expiry asks every channel for its retention once a second. With more
/// channels than the cache holds, that must neither leave the cache over its
/// bound between commands nor keep reloading evicted meta epochs, and a
/// retention set on a channel whose meta epoch was evicted still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_keeps_the_cache_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let a = Store::create(dir.path(), &pass, "alice", config().with_cached_epochs(2))
        .await
        .unwrap();
    let mut channels = Vec::new();
    for i in 0..5 {
        let c = a.create_channel(&format!("channel {i}")).await.unwrap();
        a.post(c, &format!("a text of channel {i}")).await.unwrap();
        channels.push(c);
    }
    a.set_retention(channels[0], Some(Duration::from_secs(1)))
        .await
        .unwrap();
    // Three seconds of expiry rounds, asked in between.
    cache_stays_within(&a, 2).await;
    assert!(!in_sled(&a, "a text of channel 0").await, "channel 0 did not expire");
    // Set on a channel whose meta epoch is out of the cache by now.
    a.set_retention(channels[3], Some(Duration::from_secs(1)))
        .await
        .unwrap();
    cache_stays_within(&a, 2).await;
    assert!(
        !in_sled(&a, "a text of channel 3").await,
        "the retention set after eviction did not expire channel 3"
    );
    for i in [1, 2, 4] {
        let text = format!("a text of channel {i}");
        assert!(in_sled(&a, &text).await, "{text}");
    }
    clean(&a, "alice").await;
}

/// A setting counts while its writer is an admin or owner, by the roster as
/// it stands on the reader's side: an admin demoted afterwards no longer
/// sets the retention anywhere, and the one before stands again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_counts_only_while_its_writer_is_an_admin() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    a.set_retention(general, Some(Duration::from_secs(3600))).await.unwrap();
    a.set_role(general, b.whoami().user, hearth_core::Role::Admin)
        .await
        .unwrap();
    pull(&a, &b, wire, general).await;
    b.set_retention(general, Some(Duration::from_secs(60))).await.unwrap();
    pull(&b, &a, wire, general).await;
    assert_eq!(a.retention(general).await.unwrap(), Some(Duration::from_secs(60)));
    // Demoted: his setting (the later one) counts no more.
    a.set_role(general, b.whoami().user, hearth_core::Role::Member)
        .await
        .unwrap();
    assert_eq!(a.retention(general).await.unwrap(), Some(Duration::from_secs(3600)));
    pull(&a, &b, wire, general).await;
    assert_eq!(b.retention(general).await.unwrap(), Some(Duration::from_secs(3600)));
    let e = b.set_retention(general, None).await.unwrap_err();
    assert!(matches!(e, Error::NotAllowed { .. }), "{e:?}");
}

/// An epoch whose every message expired dies (not the newest): its
/// document's rows go and its entries are kept as stubs that still verify
/// and chain. A member that held it kills it on its own; one that joins
/// later takes the stubs and never the changes; a stub of an epoch whose
/// messages have not all expired is refused; a rebuild from the compacted
/// log keeps the epochs dead; verify stays clean everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wholly_expired_epochs_die_on_every_member() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let mut cfg = config();
    cfg.epoch_messages = 3;
    let a = Store::create(dirs[0].path(), &pass, "alice", cfg.clone())
        .await
        .unwrap();
    let b = Store::create(dirs[1].path(), &pass, "bob", cfg.clone()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys.clone()).await.unwrap();
    for i in 0..9 {
        a.post(general, &format!("old post {i}")).await.unwrap();
    }
    a.set_retention(general, Some(Duration::from_secs(3))).await.unwrap();
    pull(&a, &b, wire, general).await;
    // The metadata epoch and three of messages.
    assert_eq!(a.stats().await.unwrap().epochs, 4);
    assert_eq!(b.stats().await.unwrap().epochs, 4);
    tokio::time::sleep(Duration::from_millis(3300)).await;
    a.post(general, "fresh one").await.unwrap();
    a.post(general, "fresh two").await.unwrap();
    a.expire().await.unwrap();
    // Epochs 1 to 3 died; the metadata epoch and the newest stay.
    assert_eq!(a.stats().await.unwrap().epochs, 2);
    assert_eq!(shown(&a, general).await, ["fresh one", "fresh two"]);
    clean(&a, "alice").await;

    // Bob held them whole: he takes the fresh posts and kills the old
    // epochs himself.
    pull(&a, &b, wire, general).await;
    b.expire().await.unwrap();
    assert_eq!(b.stats().await.unwrap().epochs, 2);
    assert_eq!(shown(&b, general).await, ["fresh one", "fresh two"]);
    clean(&b, "bob").await;
    // A longer retention from now on (the fresh posts stay; what died
    // stays dead).
    a.set_retention(general, Some(Duration::from_secs(3600))).await.unwrap();
    pull(&a, &b, wire, general).await;

    // Carol joins after: she takes the stubs, and never holds an old epoch.
    let c = Store::create(dirs[2].path(), &pass, "carol", cfg.clone())
        .await
        .unwrap();
    c.join_channel(keys.clone()).await.unwrap();
    pull(&a, &c, wire, general).await;
    assert_eq!(c.stats().await.unwrap().epochs, 2);
    assert_eq!(shown(&c, general).await, ["fresh one", "fresh two"]);
    clean(&c, "carol").await;
    // Her marks of the epochs that died in that one batch are as they are
    // in memory once reopened (none left stubbed).
    c.close().await.unwrap();
    let c = Store::open(dirs[2].path(), &pass, cfg.clone()).await.unwrap();
    assert_eq!(c.stats().await.unwrap().epochs, 2);
    clean(&c, "carol, reopened").await;
    // She writes on, into a live epoch.
    c.post(general, "carol's post").await.unwrap();
    pull(&c, &a, wire, general).await;
    assert_eq!(shown(&a, general).await, ["carol's post", "fresh one", "fresh two"]);

    // Eve joins too, and catches up one entry a batch (a long catch-up
    // comes in batches of a few thousand): each stub is bound by the
    // epochs she knows only from earlier stubs, and an epoch dies as soon
    // as a later batch brings a newer one. A rebuild from her log learns
    // the same.
    let e = Store::create(dirs[3].path().join("eve"), &pass, "eve", cfg.clone())
        .await
        .unwrap();
    e.join_channel(keys.clone()).await.unwrap();
    // Alice's feed first (a feed that names epochs ahead of those known
    // waits for the feeds that fill them, within a batch only).
    let alice = a.whoami().device;
    let mut all = a
        .entries_after(wire, Default::default(), 1 << 20, 10_000)
        .await
        .unwrap()
        .entries;
    all.sort_by_key(|e| hearth_core::Envelope::decode(e).unwrap().header.device != alice);
    // Every entry of the three dead epochs is a stub, and only those (how
    // many entries an epoch holds depends on how the posts were grouped).
    let stubbed: std::collections::BTreeSet<u32> = all
        .iter()
        .map(|e| hearth_core::Envelope::decode(e).unwrap())
        .filter(|e| e.pruned.is_some())
        .map(|e| e.header.epoch)
        .collect();
    assert_eq!(stubbed, [1, 2, 3].into(), "the dead epochs");
    for e in &all {
        let e = hearth_core::Envelope::decode(e).unwrap();
        assert_eq!(
            e.pruned.is_some(),
            stubbed.contains(&e.header.epoch),
            "{:?}",
            e.header.epoch
        );
    }
    for (i, entry) in all.into_iter().enumerate() {
        let report = e.ingest(wire, vec![entry]).await.unwrap();
        assert!(report.rejected.is_empty(), "batch {i}: {:?}", report.rejected);
    }
    assert_eq!(e.stats().await.unwrap().epochs, 2);
    assert_eq!(shown(&e, general).await, ["carol's post", "fresh one", "fresh two"]);
    clean(&e, "eve").await;
    e.close().await.unwrap();
    let e = Store::repair(dirs[3].path().join("eve"), &pass, cfg.clone())
        .await
        .unwrap();
    assert_eq!(e.stats().await.unwrap().epochs, 2);
    assert_eq!(shown(&e, general).await, ["carol's post", "fresh one", "fresh two"]);
    clean(&e, "eve, rebuilt").await;
    // She writes into a live epoch (epoch 4 is full: the next), never a
    // dead one.
    assert_eq!(e.post(general, "eve's post").await.unwrap().epoch(), 5);

    // Dave holds the newest epoch but for Alice's last entry (Carol's post
    // waits for it), and is offered that entry cut to a stub. He cannot
    // tell it from an expired one's; he takes it into its feed (so that the
    // feed goes on) and kills nothing: the epoch is live here. (Its change
    // is missing here, as a dropped pack's texts are: ARCHITECTURE.md.)
    let d = Store::create(dirs[3].path(), &pass, "dave", cfg.clone()).await.unwrap();
    d.join_channel(keys.clone()).await.unwrap();
    let all = a
        .entries_after(wire, Default::default(), 1 << 20, 10_000)
        .await
        .unwrap()
        .entries;
    let decode = |e: &Vec<u8>| hearth_core::Envelope::decode(e).unwrap().header;
    let alice = a.whoami().device;
    let at = all
        .iter()
        .position(|e| decode(e).device == alice && decode(e).epoch == 4)
        .unwrap();
    let (mut rest, mut tail) = (Vec::new(), Vec::new());
    for (i, e) in all.iter().enumerate() {
        match i {
            _ if decode(e).device != alice || i < at => rest.push(e.clone()),
            _ if i > at => tail.push(e.clone()),
            _ => {}
        }
    }
    let report = d.ingest(wire, rest).await.unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let epochs = d.stats().await.unwrap().epochs;
    let mut stub = hearth_core::Envelope::decode(&all[at]).unwrap();
    stub.prune_body();
    let report = d.ingest(wire, vec![stub.encode()]).await.unwrap();
    assert_eq!((report.accepted, report.rejected.len()), (1, 0), "{report:?}");
    assert_eq!(d.stats().await.unwrap().epochs, epochs);
    let report = d.ingest(wire, vec![all[at].clone()]).await.unwrap();
    assert_eq!(report.duplicates, 1, "{report:?}");
    let report = d.ingest(wire, tail).await.unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let seen = shown(&d, general).await;
    assert!(!seen.contains(&"fresh one".to_string()), "{seen:?}");
    clean(&d, "dave").await;
    d.post(general, "dave's post").await.unwrap();
    assert!(shown(&d, general).await.contains(&"dave's post".to_string()));

    // Rebuilt from its log before any compaction (the log still holds the
    // old entries whole, and the retention is an hour now): the floor in
    // the log keeps the old posts expired, and the next pass kills their
    // epochs again.
    a.close().await.unwrap();
    let a = Store::repair(dirs[0].path(), &pass, cfg.clone()).await.unwrap();
    assert_eq!(shown(&a, general).await, ["carol's post", "fresh one", "fresh two"]);
    // So does a new master key (the log sealed again, sled rebuilt from it).
    a.close().await.unwrap();
    Store::rotate_master_key(dirs[0].path(), &pass, &pass, cfg.clone())
        .await
        .unwrap();
    let a = Store::open(dirs[0].path(), &pass, cfg.clone()).await.unwrap();
    assert_eq!(shown(&a, general).await, ["carol's post", "fresh one", "fresh two"]);
    a.expire().await.unwrap();
    assert_eq!(a.stats().await.unwrap().epochs, 2);
    clean(&a, "alice, rebuilt before compacting").await;

    // Compacted, then rebuilt from its log: the old epochs stay dead.
    a.compact().await.unwrap();
    for i in 0..9 {
        assert!(a.find_text(&format!("old post {i}")).await.unwrap().is_empty());
    }
    a.close().await.unwrap();
    let a = Store::repair(dirs[0].path(), &pass, cfg.clone()).await.unwrap();
    assert_eq!(a.stats().await.unwrap().epochs, 2);
    assert_eq!(shown(&a, general).await, ["carol's post", "fresh one", "fresh two"]);
    clean(&a, "alice, rebuilt").await;
}

/// A member away writes into an epoch that died meanwhile elsewhere: when
/// he comes back he takes the stubs of it (his own message there keeps it
/// alive on his side, so they kill nothing) and everything after them in
/// their feeds; his message, cut on arrival where the epoch died, shows
/// on his side only (ARCHITECTURE.md, "An epoch whose every message
/// expired dies"). Verify stays clean on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_away_takes_the_stubs_of_an_epoch_he_still_writes_in() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let mut cfg = config();
    cfg.epoch_messages = 3;
    let a = Store::create(da.path(), &pass, "alice", cfg.clone()).await.unwrap();
    let b = Store::create(db.path(), &pass, "bob", cfg.clone()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    a.set_retention(general, Some(Duration::from_secs(3))).await.unwrap();
    a.post(general, "m1").await.unwrap();
    pull(&a, &b, wire, general).await;
    for t in ["m2", "m3", "m4"] {
        a.post(general, t).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(3300)).await;
    a.post(general, "fresh").await.unwrap();
    a.expire().await.unwrap();
    assert_eq!(shown(&a, general).await, ["fresh"]);
    // Bob, away, knows only epoch 1.
    let late = b.post(general, "bob late").await.unwrap();
    assert_eq!(late.epoch(), 1);
    pull(&a, &b, wire, general).await;
    assert_eq!(shown(&b, general).await, ["bob late", "fresh"]);
    clean(&b, "bob").await;
    pull(&b, &a, wire, general).await;
    assert_eq!(shown(&a, general).await, ["fresh"]);
    clean(&a, "alice").await;
}
