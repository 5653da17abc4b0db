//! Deletes that delete: a deleted message's texts leave every file of the
//! author's store and of a peer's after a compaction (issue 9).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hearth_core::{ChannelId, Envelope, MessageId, Passphrase, Vector, WireId};
use hearth_store::{CompactStop, Store};

#[path = "support/two.rs"]
mod two;
use two::{config, pull};

/// Alice's store with a channel `general`, and Bob's, which joined it with
/// its keys and holds what Alice wrote there.
async fn alice_and_bob(da: &Path, db: &Path) -> (Store, Store, ChannelId, WireId) {
    let pass = Passphrase::new("pw");
    let a = Store::create(da, &pass, "alice", config()).await.unwrap();
    let b = Store::create(db, &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    pull(&a, &b, wire, general).await;
    (a, b, general, wire)
}

/// The sealed bytes of every text pack `store` serves for `channel`: for
/// each message, the pack of each of its texts (a post, each edit).
async fn segments(store: &Store, channel: ChannelId) -> HashMap<MessageId, Vec<Vec<u8>>> {
    let keys = store.channel_keys(channel).await.unwrap();
    let batch = store
        .entries_after(keys.wire(), Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap();
    let mut out: HashMap<MessageId, Vec<Vec<u8>>> = HashMap::new();
    for bytes in batch.entries {
        let env = Envelope::decode(&bytes).unwrap();
        assert!(env.segments.is_empty(), "format 4 entries carry packs");
        let Some(pack) = &env.pack else { continue };
        let texts = env.open_texts_checked(&keys).unwrap();
        assert!(!texts.is_empty());
        for content in texts {
            out.entry(content.msg).or_default().push(pack.clone());
        }
    }
    out
}

/// The files under `dir` that hold `needle` anywhere.
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        // A compaction may remove a directory while this walks the store.
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_leaves_every_file_of_the_author_and_of_a_peer() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keep = a.post(general, "a message that stays").await.unwrap();
    let secret = a.post(general, "the secret that must go").await.unwrap();
    a.edit(secret, "the secret, edited").await.unwrap();
    let reply = a.reply(keep, "a reply that stays").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys.clone()).await.unwrap();
    pull(&a, &b, wire, general).await;
    assert_eq!(
        b.message(secret).await.unwrap().message.text.as_deref(),
        Some("the secret, edited")
    );
    let served = segments(&a, general).await;
    let gone = served[&secret].clone();
    assert_eq!(gone.len(), 2, "the post and its edit");
    a.checkpoint().await.unwrap();
    b.checkpoint().await.unwrap();
    // The control: before the delete both stores hold every pack on disk,
    // and the audit finds the text where a key from the passphrase opens it.
    for (dir, who) in [(da.path(), "alice"), (db.path(), "bob")] {
        for needle in &gone {
            assert!(!holding(dir, needle).is_empty(), "{who} holds it before the delete");
        }
    }
    for (s, who) in [(&a, "alice"), (&b, "bob")] {
        let at = s.find_text("the secret, edited").await.unwrap();
        assert!(at.iter().any(|w| w.starts_with("log")), "{who}: {at:?}");
        assert!(at.iter().any(|w| w.starts_with("sled")), "{who}: {at:?}");
    }
    let at = a.find_text("the secret that must go").await.unwrap();
    assert!(at.iter().any(|w| w.starts_with("journal")), "alice's journal: {at:?}");

    a.delete(secret).await.unwrap();
    // Posted and deleted at once: its text may never leave in a segment.
    let quick = a.post(general, "posted and deleted at once").await.unwrap();
    a.delete(quick).await.unwrap();
    pull(&a, &b, wire, general).await;
    // The packs each store holds now, of the texts that stay (a pack that
    // held the secret too was sealed again without it, on each store).
    let mut kept = HashMap::new();
    for (s, who) in [(&a, "alice"), (&b, "bob")] {
        let m = s.message(secret).await.unwrap().message;
        assert!(m.deleted && m.text.is_none(), "{m:?}");
        // What either serves carries no text of it any more.
        let served = segments(s, general).await;
        assert!(!served.contains_key(&secret) && !served.contains_key(&quick));
        assert_eq!(served[&keep].len(), 1);
        for needle in &gone {
            assert!(served.values().flatten().all(|p| p != needle), "{who}");
        }
        kept.insert(
            who,
            [keep, reply].iter().flat_map(|m| served[m].clone()).collect::<Vec<_>>(),
        );
        assert!(s.verify().await.unwrap().is_clean());
    }
    // A member that joins after the delete never receives it.
    let c = Store::create(dc.path(), &pass, "carol", config()).await.unwrap();
    c.join_channel(keys).await.unwrap();
    pull(&a, &c, wire, general).await;
    assert!(!segments(&c, general).await.contains_key(&secret));
    assert_eq!(
        c.page(general, None, 10).await.unwrap(),
        a.page(general, None, 10).await.unwrap()
    );
    c.close().await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();

    for (dir, who) in [(da.path(), "alice"), (db.path(), "bob")] {
        let report = Store::compact_dir(dir, &pass, config()).await.unwrap();
        // Nothing any key from the passphrase opens holds them any more:
        // not a journal record (stale ones too), an entry or a sled row.
        let s = Store::open(dir, &pass, config()).await.unwrap();
        for text in [
            "the secret that must go",
            "the secret, edited",
            "posted and deleted at once",
        ] {
            assert_eq!(s.find_text(text).await.unwrap(), Vec::<String>::new(), "{who}: {text}");
        }
        assert!(!s.find_text("a reply that stays").await.unwrap().is_empty(), "{who}");
        s.close().await.unwrap();
        assert!(report.entries_rewritten >= 1, "{who}: {report:?}");
        for needle in &gone {
            let left = holding(dir, needle);
            assert!(left.is_empty(), "{who}: a deleted text's segment is still in {left:?}");
        }
        // The search finds what is still there: what was not deleted.
        for needle in &kept[who] {
            assert!(!holding(dir, needle).is_empty(), "{who}: a kept text is on disk");
        }
        let s = Store::open(dir, &pass, config()).await.unwrap();
        assert!(
            s.open_report().rebuilt.is_none(),
            "{who}: the fresh sled opens as it is"
        );
        assert_eq!(
            s.message(keep).await.unwrap().message.text.as_deref(),
            Some("a message that stays")
        );
        assert_eq!(
            s.message(reply).await.unwrap().message.text.as_deref(),
            Some("a reply that stays")
        );
        assert!(s.message(secret).await.unwrap().message.deleted);
        assert!(s.verify().await.unwrap().is_clean(), "{who}");
        // Writing goes on after a compaction.
        s.post(general, &format!("{who} writes on")).await.unwrap();
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_stopped_at_any_step_is_finished_or_dropped_by_the_next_open() {
    let pass = Passphrase::new("pw");
    for stop in [
        CompactStop::Prepared,
        CompactStop::Committed,
        CompactStop::OldLogMoved,
        CompactStop::NewLogMoved,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path(), &pass, "alice", config()).await.unwrap();
        let general = s.create_channel("general").await.unwrap();
        let mut ids = Vec::new();
        for i in 0..50 {
            ids.push(s.post(general, &format!("message {i}")).await.unwrap());
        }
        let secret = s.post(general, "a secret").await.unwrap();
        let needle = segments(&s, general).await[&secret][0].clone();
        s.delete(secret).await.unwrap();
        let before = s.page(general, None, 100).await.unwrap();
        // Stopped there as by a crash: the store writes nothing more.
        s.compact_until(stop).await.unwrap();
        assert!(s.post(general, "after the stop").await.is_err(), "{stop:?}");
        assert!(s.close().await.is_err(), "{stop:?}: poisoned");
        let s = Store::open(dir.path(), &pass, config()).await.unwrap();
        assert_eq!(s.page(general, None, 100).await.unwrap(), before, "{stop:?}");
        assert!(s.verify().await.unwrap().is_clean(), "{stop:?}");
        for left in ["compact", "compacted", "compact.tmp", "log.old"] {
            assert!(!dir.path().join(left).exists(), "{stop:?}: {left} is left");
        }
        let still = !holding(dir.path(), &needle).is_empty();
        // Committed: the next open finished it. Not committed: dropped, and
        // the next compaction does it.
        assert_eq!(still, stop == CompactStop::Prepared, "{stop:?}");
        s.close().await.unwrap();
        if still {
            Store::compact_dir(dir.path(), &pass, config()).await.unwrap();
            assert!(holding(dir.path(), &needle).is_empty(), "{stop:?}");
        }
    }
}

/// A pack is outside what an entry signs and hashes to: nobody can prove
/// who damaged one, and anyone may drop one. So a pack dropped, damaged or
/// moved from another entry costs the receiver that entry's texts (they
/// show as dropped; the entry is taken without a pack) and blames nobody,
/// while every text it shows is one the author's change names. A stub of
/// the metadata epoch (which never dies) is refused, as the sender's fault.
#[tokio::test]
async fn a_forwarder_can_drop_a_pack_but_not_change_one() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b, general, wire) = alice_and_bob(da.path(), db.path()).await;
    let mut posts = Vec::new();
    for text in ["damaged", "swapped", "stripped", "intact"] {
        posts.push(a.post(general, text).await.unwrap());
        // A read closes the group: each post goes into an entry of its own.
        a.message(posts[posts.len() - 1]).await.unwrap();
    }
    a.checkpoint().await.unwrap();
    let have = b.vector(general).await.unwrap();
    let batch = a
        .entries_after(wire, have.clone(), usize::MAX, usize::MAX)
        .await
        .unwrap();
    let envs: Vec<Envelope> = batch.entries.iter().map(|e| Envelope::decode(e).unwrap()).collect();
    let with_texts: Vec<usize> = (0..envs.len()).filter(|i| envs[*i].holds_texts()).collect();
    assert_eq!(with_texts.len(), 4, "one entry per post");
    // A body of the metadata epoch cut to its hash (a stub, which only
    // a dead epoch's entries are: `retention.rs`): refused, as the
    // sender's fault.
    let first = a
        .entries_after(wire, Default::default(), usize::MAX, 1)
        .await
        .unwrap()
        .entries;
    let mut stub = Envelope::decode(&first[0]).unwrap();
    assert_eq!(stub.header.epoch, hearth_core::META_EPOCH);
    stub.prune_body();
    assert!(stub.pruned.is_some());
    let r = b.ingest(wire, vec![stub.encode()]).await.unwrap();
    assert_eq!(r.accepted, 0);
    assert!(r.rejected[0].is_peer_fault(), "{:?}", r.rejected);
    // Damaged, moved in from another entry (it does not open there), dropped.
    let mut rest: Vec<Vec<u8>> = batch.entries.clone();
    let mut damaged = envs[with_texts[0]].clone();
    damaged.pack.as_mut().unwrap()[30] ^= 1;
    rest[with_texts[0]] = damaged.encode();
    let mut swapped = envs[with_texts[1]].clone();
    swapped.pack = envs[with_texts[3]].pack.clone();
    rest[with_texts[1]] = swapped.encode();
    let mut stripped = envs[with_texts[2]].clone();
    stripped.strip_texts();
    rest[with_texts[2]] = stripped.encode();
    let r = b.ingest(wire, rest).await.unwrap();
    assert!(r.rejected.is_empty(), "nobody's fault: {:?}", r.rejected);
    for id in &posts[..3] {
        let m = b.message(*id).await.unwrap().message;
        assert!(m.dropped && m.text.is_none() && !m.deleted, "{m:?}");
    }
    assert_eq!(
        b.message(posts[3]).await.unwrap().message.text.as_deref(),
        Some("intact")
    );
    // What Bob stores and serves: those three without a pack.
    let served = b.entries_after(wire, have, usize::MAX, usize::MAX).await.unwrap();
    let held: Vec<Envelope> = served.entries.iter().map(|e| Envelope::decode(e).unwrap()).collect();
    assert_eq!(held.iter().filter(|e| e.holds_texts()).count(), 1);
    assert!(b.verify().await.unwrap().is_clean());
}

/// Deleting needs the author, or an admin or owner of the channel's roster:
/// a member's delete of another's message is refused, an admin's counts on
/// every member and drops the text there too; one made admin later can.
#[tokio::test]
async fn an_admin_deletes_anyones_message_and_a_member_only_their_own() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let (a, b, general, wire) = alice_and_bob(da.path(), db.path()).await;
    let from_alice = a.post(general, "alice writes").await.unwrap();
    pull(&a, &b, wire, general).await;
    let from_bob = b.post(general, "bob writes").await.unwrap();
    let bob_too = b.post(general, "bob writes again").await.unwrap();
    pull(&b, &a, wire, general).await;
    // Bob is a member: his own message, yes; Alice's, no.
    assert!(matches!(
        b.delete(from_alice).await,
        Err(hearth_store::Error::NotAuthor { .. })
    ));
    // Alice owns the channel: Bob's message goes, everywhere, text and all.
    a.delete(from_bob).await.unwrap();
    pull(&a, &b, wire, general).await;
    for s in [&a, &b] {
        let m = s.message(from_bob).await.unwrap().message;
        assert!(m.deleted && m.text.is_none(), "{m:?}");
        assert!(!segments(s, general).await.contains_key(&from_bob));
        assert_eq!(
            s.message(from_alice).await.unwrap().message.text.as_deref(),
            Some("alice writes")
        );
    }
    // Made an admin, Bob deletes Alice's message; Alice's store takes it.
    a.set_role(general, b.whoami().user, hearth_core::Role::Admin)
        .await
        .unwrap();
    pull(&a, &b, wire, general).await;
    b.delete(from_alice).await.unwrap();
    b.delete(bob_too).await.unwrap();
    pull(&b, &a, wire, general).await;
    for s in [&a, &b] {
        for m in [from_alice, bob_too] {
            let m = s.message(m).await.unwrap().message;
            assert!(m.deleted && m.text.is_none(), "{m:?}");
        }
        assert!(segments(s, general).await.is_empty());
        assert!(s.verify().await.unwrap().is_clean());
    }
    // After a reopen (views built from the documents) the same.
    a.close().await.unwrap();
    let a = Store::open(da.path(), &pass, config()).await.unwrap();
    assert!(a.message(from_alice).await.unwrap().message.deleted);
    assert!(a.message(from_bob).await.unwrap().message.deleted);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Edits made before a delete that reach a member after it (Bob edits his
/// message twice, the owner deletes it, Carol takes the delete first): their
/// texts, the older edit's too, are never stored in a row of Carol's (the
/// entry is stored without them in the batch that takes it, so no crash can
/// leave one that the document no longer names), and a compaction leaves
/// them in no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_that_arrive_after_their_delete_are_never_stored() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let pass = Passphrase::new("pw");
    let (a, b, general, wire) = alice_and_bob(da.path(), db.path()).await;
    let c = Store::create(dc.path(), &pass, "carol", config()).await.unwrap();
    c.join_channel(a.channel_keys(general).await.unwrap()).await.unwrap();
    let words = b.post(general, "bob's first words").await.unwrap();
    let stays = b.post(general, "bob's words that stay").await.unwrap();
    pull(&b, &a, wire, general).await;
    pull(&a, &c, wire, general).await;
    b.edit(words, "an older edit that must go").await.unwrap();
    b.checkpoint().await.unwrap();
    b.edit(words, "the newest edit that must go").await.unwrap();
    // Alice has not seen the edits; Carol takes her delete first.
    a.delete(words).await.unwrap();
    pull(&a, &c, wire, general).await;
    assert!(c.message(words).await.unwrap().message.deleted);
    pull(&b, &c, wire, general).await;
    assert!(
        c.vector(general)
            .await
            .unwrap()
            .covers(&b.vector(general).await.unwrap())
    );
    let m = c.message(words).await.unwrap().message;
    assert!(m.deleted && m.text.is_none(), "{m:?}");
    // Carol's rows hold no text of it; Bob's other message is whole.
    let held = segments(&c, general).await;
    assert!(!held.contains_key(&words), "carol stored a text of the deleted message");
    assert!(held.contains_key(&stays));
    c.compact().await.unwrap();
    for text in [
        "an older edit that must go",
        "the newest edit that must go",
        "bob's first words",
    ] {
        assert_eq!(c.find_text(text).await.unwrap(), Vec::<String>::new(), "{text}");
    }
    assert!(!c.find_text("bob's words that stay").await.unwrap().is_empty());
    assert!(c.verify().await.unwrap().is_clean());
    // Reopened (the epoch loaded from its packs): the same.
    c.close().await.unwrap();
    let c = Store::open(dc.path(), &pass, config()).await.unwrap();
    let m = c.message(words).await.unwrap().message;
    assert!(m.deleted && m.text.is_none(), "{m:?}");
    assert!(!segments(&c, general).await.contains_key(&words));
    assert!(c.verify().await.unwrap().is_clean());
    for s in [a, b, c] {
        s.close().await.unwrap();
    }
}

/// Compaction runs while the store is written and read: posts made while it
/// copies are acknowledged (they wait only for the pause), every one is there
/// after it, and the text deleted before it is gone from every file (the
/// new log, the fresh sled, the journal zeroed past its live records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_runs_while_the_store_is_written_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = std::sync::Arc::new(Store::create(dir.path(), &pass, "alice", config()).await.unwrap());
    let general = s.create_channel("general").await.unwrap();
    for i in 0..1500 {
        s.post(general, &format!("history {i}")).await.unwrap();
    }
    let secret = s.post(general, "the secret that must go").await.unwrap();
    s.checkpoint().await.unwrap();
    let needle = segments(&s, general).await[&secret][0].clone();
    s.delete(secret).await.unwrap();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (s, running) = (s.clone(), running.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut during = 0;
            let mut i = 0;
            while running.load(std::sync::atomic::Ordering::SeqCst) || i < 50 {
                let id = s.post(general, &format!("written meanwhile {i}")).await.unwrap();
                during += usize::from(running.load(std::sync::atomic::Ordering::SeqCst));
                acked.push(id);
                if i % 10 == 0 {
                    assert!(!s.page(general, None, 20).await.unwrap().is_empty());
                }
                i += 1;
            }
            (acked, during)
        })
    };
    let report = s.compact().await.unwrap();
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let (acked, during) = writer.await.unwrap();
    assert!(during > 0, "posts were acknowledged while it ran: {report:?}");
    assert!(report.rows_copied > 0 && report.paused <= report.took, "{report:?}");
    let left = holding(dir.path(), &needle);
    assert!(left.is_empty(), "the deleted text is still in {left:?}");
    let at = s.find_text("the secret that must go").await.unwrap();
    assert!(at.is_empty(), "a key from the passphrase still opens it at {at:?}");
    assert!(!s.find_text("history 7").await.unwrap().is_empty());
    for id in &acked {
        assert!(s.message(*id).await.unwrap().message.text.is_some());
    }
    assert!(s.message(secret).await.unwrap().message.deleted);
    assert!(s.verify().await.unwrap().is_clean());
    let page = s.page(general, None, 100).await.unwrap();
    let s = std::sync::Arc::into_inner(s).unwrap();
    s.close().await.unwrap();
    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    assert!(s.open_report().rebuilt.is_none() && s.open_report().replayed_records == 0);
    assert_eq!(s.page(general, None, 100).await.unwrap(), page);
    assert!(s.verify().await.unwrap().is_clean());
    s.close().await.unwrap();
    assert!(holding(dir.path(), &needle).is_empty());
}

/// A delete schedules a compaction: past `compact_after`, the store compacts
/// itself, and the deleted text leaves every file without anyone asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_schedules_an_automatic_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let mut cfg = config();
    cfg.compact_after = Some(std::time::Duration::from_millis(50));
    cfg.checkpoint_interval = std::time::Duration::from_millis(100);
    let s = Store::create(dir.path(), &pass, "alice", cfg.clone()).await.unwrap();
    let general = s.create_channel("general").await.unwrap();
    let keep = s.post(general, "a message that stays").await.unwrap();
    let secret = s.post(general, "the secret that must go").await.unwrap();
    s.checkpoint().await.unwrap();
    let needle = segments(&s, general).await[&secret][0].clone();
    // No delete, no compaction: the log keeps what it has.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(!holding(dir.path(), &needle).is_empty());
    s.delete(secret).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !holding(dir.path(), &needle).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no automatic compaction");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.message(keep).await.unwrap().message.text.as_deref(),
        Some("a message that stays")
    );
    // The journal is zeroed just after the swap: wait for the last step.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dir.path().join("compacted").exists() {
        assert!(std::time::Instant::now() < deadline, "the compaction did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.find_text("the secret that must go").await.unwrap(),
        Vec::<String>::new()
    );
    assert!(s.verify().await.unwrap().is_clean());
    s.close().await.unwrap();
    let s = Store::open(dir.path(), &pass, cfg).await.unwrap();
    assert!(s.message(secret).await.unwrap().message.deleted);
    s.close().await.unwrap();
}
