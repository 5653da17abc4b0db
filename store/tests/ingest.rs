//! Sync's view of the store: vectors, entries a peer lacks, verified ingest.

use hearth_core::{KdfParams, Passphrase, Vector};
use hearth_store::{Config, Refusal, Store, StoreEvent};

#[path = "support/dirs.rs"]
mod dirs;
use dirs::copy_dir;

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// Move everything `from` holds of a channel that `to` lacks; returns entries moved.
async fn pull(from: &Store, to: &Store, wire: hearth_core::WireId, channel: hearth_core::ChannelId) -> usize {
    let mut moved = 0;
    loop {
        let have = to.vector(channel).await.unwrap();
        let batch = from.entries_after(wire, have, 16 * 1024, 64).await.unwrap();
        if batch.entries.is_empty() {
            return moved;
        }
        moved += batch.entries.len();
        let report = to.ingest(wire, batch.entries).await.unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }
}

#[tokio::test]
async fn two_stores_converge_through_entries_and_ingest() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    // No delivery receipts while the test runs (they would come 250 ms
    // after each ingest, between two of its steps on a slow machine).
    let config = || config().with_receipt_delay(std::time::Duration::from_secs(3600));
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let mut events = b.subscribe();
    let general = a.create_channel("general").await.unwrap();
    let mut roots = Vec::new();
    for i in 0..300 {
        roots.push(a.post(general, &format!("alice {i}")).await.unwrap());
    }
    a.react(roots[3], "👍").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    assert_eq!(b.join_channel(keys.clone()).await.unwrap(), general);
    assert_eq!(b.join_channel(keys).await.unwrap(), general, "joining twice is a no-op");
    assert!(pull(&a, &b, wire, general).await > 1);
    assert_eq!(
        b.page(general, None, 1000).await.unwrap(),
        a.page(general, None, 1000).await.unwrap()
    );
    assert_eq!(b.channel(general).await.unwrap().name, "general");
    assert_eq!(b.unread(general).await.unwrap(), 300);
    let mut received = 0;
    while let Ok(e) = events.try_recv() {
        if let StoreEvent::Received { messages, .. } = e {
            received += messages.len();
        }
    }
    assert_eq!(received, 300);

    // Bob replies, reacts, reads; Alice edits concurrently.
    let r = b.reply(roots[0], "bob here").await.unwrap();
    b.react(roots[1], "🎉").await.unwrap();
    b.mark_read(general, None).await.unwrap();
    a.edit(roots[2], "edited").await.unwrap();
    pull(&b, &a, wire, general).await;
    pull(&a, &b, wire, general).await;
    assert_eq!(a.vector(general).await.unwrap(), b.vector(general).await.unwrap());
    assert_eq!(
        b.page(general, None, 1000).await.unwrap(),
        a.page(general, None, 1000).await.unwrap()
    );
    assert_eq!(a.thread(r).await.unwrap(), b.thread(r).await.unwrap());
    assert_eq!(a.members(general).await.unwrap().len(), 2);
    assert_eq!(a.unread(general).await.unwrap(), 1, "bob's reply");
    assert_eq!(b.unread(general).await.unwrap(), 0);

    // Duplicates are recognised; nothing changes.
    let all = a
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap();
    let report = b.ingest(wire, all.entries).await.unwrap();
    assert_eq!(report.accepted, 0);
    assert!(report.rejected.is_empty());
    assert!(report.duplicates > 0);

    // Both survive a restart and verify clean.
    let before = b.page(general, None, 1000).await.unwrap();
    b.close().await.unwrap();
    let b = Store::open(db.path(), &pass, config()).await.unwrap();
    assert_eq!(b.page(general, None, 1000).await.unwrap(), before);
    assert!(b.verify().await.unwrap().is_clean(), "{:?}", b.verify().await.unwrap());
    assert!(a.verify().await.unwrap().is_clean());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn bad_entries_are_refused_and_nothing_is_lost() {
    let (da, db, dm) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    for i in 0..20 {
        a.post(general, &format!("m{i}")).await.unwrap();
    }
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys.clone()).await.unwrap();
    let all = a
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    assert!(all.len() >= 2);

    // Garbage, a flipped bit anywhere, a gap, an entry of another channel.
    let mut bad = vec![vec![], vec![0xff; 100], vec![1; hearth_core::MAX_ENTRY_BYTES + 1]];
    for i in (0..all[0].len()).step_by(7) {
        let mut e = all[0].clone();
        e[i] ^= 0x40;
        bad.push(e);
    }
    let report = b.ingest(wire, bad.clone()).await.unwrap();
    assert_eq!(report.accepted, 0);
    assert_eq!(report.rejected.len(), bad.len());
    let gap = b.ingest(wire, vec![all[1].clone()]).await.unwrap();
    assert_eq!(gap.accepted, 0);
    assert!(
        matches!(gap.rejected[0].reason, hearth_store::Refusal::Gap { .. }),
        "{:?}",
        gap.rejected
    );

    // A member of another channel cannot inject entries here.
    let m = Store::create(dm.path(), &pass, "mallory", config()).await.unwrap();
    let other = m.create_channel("other").await.unwrap();
    m.post(other, "spam").await.unwrap();
    let mwire = m.channel_keys(other).await.unwrap().wire();
    let spam = m
        .entries_after(mwire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    assert!(b.ingest(mwire, spam.clone()).await.is_err(), "unknown channel");
    let report = b.ingest(wire, spam).await.unwrap();
    assert_eq!(report.accepted, 0);

    // The good entries still go in afterwards, and the store is whole.
    let report = b.ingest(wire, all).await.unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(b.page(general, None, 100).await.unwrap().len(), 20);
    assert!(b.verify().await.unwrap().is_clean());
    for s in [a, b, m] {
        s.close().await.unwrap();
    }
}

/// A member stores messages and dies before their delivery receipts are
/// written (they gather first): the receipts are owed on disk with the
/// messages, and the next open writes them, once.
#[tokio::test]
async fn delivery_receipts_owed_at_a_crash_are_written_at_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let a = Store::create(tmp.path().join("a"), &pass, "alice", config())
        .await
        .unwrap();
    // Receipts that would gather for an hour: the crash comes first.
    let slow = config().with_receipt_delay(std::time::Duration::from_secs(3600));
    let b = Store::create(tmp.path().join("b"), &pass, "bob", slow.clone())
        .await
        .unwrap();
    let general = a.create_channel("general").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(a.post(general, &format!("hello {i}")).await.unwrap());
    }
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    pull(&a, &b, wire, general).await;
    assert!(
        b.receipts(ids[2]).await.unwrap().delivered.is_empty(),
        "still gathering"
    );
    // What a SIGKILL leaves now: the ingest made durable, no receipt written.
    b.checkpoint().await.unwrap();
    let image = tmp.path().join("b-crashed");
    copy_dir(&tmp.path().join("b"), &image);
    let bob = (b.whoami().user, b.whoami().device);
    drop(b);

    let b = Store::open(&image, &pass, config()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while b.receipts(ids[2]).await.unwrap().delivered != vec![bob] {
        assert!(
            std::time::Instant::now() < deadline,
            "the owed receipt was never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(b.receipts(ids[0]).await.unwrap().delivered, vec![bob]);
    // It travels like any receipt.
    pull(&b, &a, wire, general).await;
    assert_eq!(a.receipts(ids[2]).await.unwrap().delivered, vec![bob]);

    // Written once: reopening owes nothing more, so it writes nothing more.
    b.close().await.unwrap();
    let held = a.vector(general).await.unwrap();
    let b = Store::open(&image, &pass, slow).await.unwrap();
    assert_eq!(b.flush_receipts().await.unwrap(), 0, "nothing owed after the reopen");
    assert_eq!(b.vector(general).await.unwrap(), held);
    assert!(b.verify().await.unwrap().is_clean());
    b.close().await.unwrap();
    a.close().await.unwrap();
}

/// An author that signs two versions of its feed (here: a copy of a store
/// that went on writing beside the original) is caught: the second branch is
/// refused, the sender is not blamed, the proof is kept (in the log too, so
/// a rebuild keeps it) and reported by an event, `verify` and `stats`.
#[tokio::test]
async fn a_forked_feed_is_proved_reported_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let a = Store::create(tmp.path().join("a"), &pass, "alice", config())
        .await
        .unwrap();
    let general = a.create_channel("general").await.unwrap();
    a.post(general, "one").await.unwrap();
    a.checkpoint().await.unwrap();
    let common = a.vector(general).await.unwrap().seq(&a.whoami().device);
    copy_dir(&tmp.path().join("a"), &tmp.path().join("a2"));
    let _ = std::fs::remove_file(tmp.path().join("a2").join("LOCK"));
    a.post(general, "two").await.unwrap();
    let a2 = Store::open(tmp.path().join("a2"), &pass, config()).await.unwrap();
    a2.post(general, "another two").await.unwrap();

    let b = Store::create(tmp.path().join("b"), &pass, "bob", config())
        .await
        .unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    let mut events = b.subscribe();
    pull(&a, &b, wire, general).await;
    let other = a2
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    let r = b.ingest(wire, other).await.unwrap();
    assert_eq!(r.accepted, 0);
    assert_eq!(r.duplicates as u64, common, "the entries before the fork are the same");
    let alice = a.whoami();
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    assert_eq!(r.rejected[0].reason, Refusal::Forked { seq: common + 1 });
    assert!(!r.rejected[0].is_peer_fault(), "the forwarder is not to blame");
    let mut forked = None;
    while let Ok(e) = events.try_recv() {
        if let StoreEvent::Forked { user, device, seq, .. } = e {
            forked = Some((user, device, seq));
        }
    }
    assert_eq!(forked, Some((alice.user, alice.device, common + 1)));
    let check = |report: hearth_store::VerifyReport| {
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!(report.forks.len(), 1);
        assert_eq!(
            (report.forks[0].user, report.forks[0].device, report.forks[0].seq),
            (alice.user, alice.device, common + 1)
        );
    };
    check(b.verify().await.unwrap());
    assert_eq!(b.stats().await.unwrap().forked_feeds, 1);
    // Seen again: nothing new is kept or announced.
    let again = a2
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    assert_eq!(b.ingest(wire, again).await.unwrap().rejected.len(), 1);
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok()).any(|e| matches!(e, StoreEvent::Forked { .. })),
        "one event per forked feed"
    );
    // The first branch goes on; the proof survives a reopen and a rebuild.
    a.post(general, "three").await.unwrap();
    pull(&a, &b, wire, general).await;
    b.close().await.unwrap();
    let b = Store::repair(tmp.path().join("b"), &pass, config()).await.unwrap();
    check(b.verify().await.unwrap());
    assert_eq!(b.stats().await.unwrap().forked_feeds, 1);
    assert_eq!(b.page(general, None, 10).await.unwrap().len(), 3);
    // The proof carries the refused branch's text; a compaction keeps the
    // proof (it still proves the fork) and drops the texts it came with, in
    // the log and in sled.
    let proof_at = b.find_text("another two").await.unwrap();
    assert!(proof_at.iter().any(|w| w.starts_with("log")), "{proof_at:?}");
    assert!(proof_at.iter().any(|w| w.starts_with("sled")), "{proof_at:?}");
    b.compact().await.unwrap();
    assert_eq!(b.find_text("another two").await.unwrap(), Vec::<String>::new());
    assert!(!b.find_text("three").await.unwrap().is_empty());
    check(b.verify().await.unwrap());
    for s in [a, a2, b] {
        s.close().await.unwrap();
    }
}

/// Feeds are signed by device keys (entry format 2): the first entry of a
/// feed carries the chain that certifies its device's key, later ones are
/// checked under that key. A chain of another device, a second key for the
/// device, and an entry signed by the user key after the device's own are
/// refused; the chains survive a reopen and a rebuild.
#[tokio::test]
async fn feeds_are_signed_by_device_keys() {
    use hearth_core::device::{DeviceCert, DeviceKeys};
    use hearth_core::{ENVELOPE_V2, ENVELOPE_V6, ENVELOPE_VERSION, EntryHeader, Envelope, Identity};

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let alice_id = Identity::generate("alice").unwrap();
    let a = Store::create_as(da.path(), &pass, alice_id.clone(), config())
        .await
        .unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    for i in 0..5 {
        a.post(general, &format!("m{i}")).await.unwrap();
    }
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys.clone()).await.unwrap();
    let all = a
        .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    let envs: Vec<Envelope> = all.iter().map(|e| Envelope::decode(e).unwrap()).collect();
    let cert = a.device_cert().await.unwrap();
    assert!(envs.iter().all(|e| e.header.version == ENVELOPE_V6));
    assert_eq!(
        envs[0].certs,
        vec![cert.clone()],
        "the feed's first entry carries its chain"
    );
    assert!(envs[1..].iter().all(|e| e.certs.is_empty()));
    assert_eq!(envs[0].device_key().unwrap(), Some(cert.body.keys.signing));
    assert_eq!(a.whoami().device, cert.body.device);
    assert!(!cert.body.legacy, "a new device's id is its key's");
    pull(&a, &b, wire, general).await;
    let alices = |v: hearth_core::Vector| v.0.get(&a.whoami().device).copied();
    assert_eq!(
        alices(b.vector(general).await.unwrap()),
        alices(a.vector(general).await.unwrap())
    );

    // What a hostile member holding Alice's user key could try (a device
    // linked before link bundle version 2 holds it).
    let user_secret = alice_id.secret().unwrap();
    let user_key = ed25519_dalek::SigningKey::from_bytes(user_secret.expose());
    let head = a.vector(general).await.unwrap().0[&a.whoami().device];
    let body = hearth_core::seal(keys.feed_key(), b"unused", b"x").unwrap();
    let next_header = |version: u8| EntryHeader {
        version,
        wire,
        user: a.whoami().user,
        device: a.whoami().device,
        seq: head.seq + 1,
        prev: head.hash,
        generation: 0,
        epoch: 0,
    };
    // 1. Format 1, signed by the user key, after the device's own: refused
    // (for a keyed id as squatting, before it is a downgrade).
    let h = next_header(ENVELOPE_VERSION);
    let mut signed = h.encode();
    signed.extend_from_slice(&body);
    let downgrade = Envelope {
        header: h,
        certs: Vec::new(),
        body: body.clone(),
        sig: Identity::new_device(&user_secret, "x")
            .unwrap()
            .sign(&signed)
            .unwrap()
            .to_vec(),
        pruned: None,
        segments: Vec::new(),
        pack: None,
    }
    .encode();
    // 2. A second key for the device, bound by the user key as a kept id:
    // a keyed id is never bound so, the chain does not verify.
    let other = DeviceKeys::generate().unwrap();
    let rebound = DeviceCert::by_user(&user_key, a.whoami().device, other.public(), 1, true);
    let h = next_header(ENVELOPE_V2);
    let mut msg = h.encode();
    msg.extend(postcard::to_stdvec(&vec![rebound.clone()]).unwrap());
    msg.extend_from_slice(&body);
    let rekeyed = Envelope {
        header: h,
        certs: vec![rebound],
        body: body.clone(),
        sig: other.sign(b"hearth v2 entry", &msg).to_vec(),
        pruned: None,
        segments: Vec::new(),
        pack: None,
    }
    .encode();
    // 3. Signed by another key, without a chain: a forgery.
    let h = next_header(ENVELOPE_V2);
    let mut msg = h.encode();
    msg.extend(postcard::to_stdvec(&Vec::<DeviceCert>::new()).unwrap());
    msg.extend_from_slice(&body);
    let forged = Envelope {
        header: h,
        certs: Vec::new(),
        body: body.clone(),
        sig: other.sign(b"hearth v2 entry", &msg).to_vec(),
        pruned: None,
        segments: Vec::new(),
        pack: None,
    }
    .encode();
    // 4. Mallory's chain in an entry claiming Alice's device.
    let mallory = Identity::generate("mallory").unwrap();
    let mut claimed = envs[1].clone();
    claimed.certs = vec![mallory.device_cert().unwrap().clone()];
    let claimed = claimed.encode();
    for (what, bytes, want) in [
        ("downgrade", downgrade, Refusal::Squatting),
        ("rekeyed", rekeyed, Refusal::BadSignature),
        ("forged", forged, Refusal::BadSignature),
    ] {
        let r = b.ingest(wire, vec![bytes]).await.unwrap();
        assert_eq!(r.accepted, 0, "{what}");
        assert_eq!(r.rejected[0].reason, want, "{what}");
        assert_eq!(r.rejected[0].is_peer_fault(), want == Refusal::BadSignature, "{what}");
    }
    let c = tempfile::tempdir().unwrap();
    let fresh = Store::create(c.path(), &pass, "carol", config()).await.unwrap();
    fresh.join_channel(keys.clone()).await.unwrap();
    let r = fresh.ingest(wire, vec![all[0].clone(), claimed]).await.unwrap();
    assert_eq!(r.accepted, 1);
    assert_eq!(r.rejected[0].reason, Refusal::BadSignature, "another device's chain");

    // The chain is kept: later entries verify after a reopen and a rebuild.
    b.close().await.unwrap();
    for i in 0..3 {
        a.post(general, &format!("later {i}")).await.unwrap();
        if i == 1 {
            std::fs::remove_dir_all(db.path().join("db")).unwrap();
        }
        let b = Store::open(db.path(), &pass, config()).await.unwrap();
        assert_eq!(b.open_report().rebuilt.is_some(), i == 1);
        pull(&a, &b, wire, general).await;
        assert_eq!(
            alices(b.vector(general).await.unwrap()),
            alices(a.vector(general).await.unwrap())
        );
        let v = b.verify().await.unwrap();
        assert!(v.is_clean(), "{v:?}");
        b.close().await.unwrap();
    }
    assert!(a.verify().await.unwrap().is_clean());
    a.close().await.unwrap();
    fresh.close().await.unwrap();
}

/// Squatting (issue 8, item 1): Mallory, a member, claims Alice's device id
/// in a channel before Alice's entries reach Bob: by a format 1 entry (signed
/// by Mallory's user key, which may name any device) and by a chain binding
/// Alice's id to Mallory's device key as a kept (legacy) id. Both are
/// refused, neither blames the forwarder, and Alice's entries are then taken.
/// Before store format 7 the first was taken and Alice's feed refused at Bob
/// as another user's.
#[tokio::test]
async fn a_squatted_device_id_is_impossible() {
    use hearth_core::device::{DeviceCert, DeviceKeys, is_keyed_id};
    use hearth_core::{ENVELOPE_V2, ENVELOPE_VERSION, EntryHeader, Envelope, Identity};

    let (da, dm, db) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let mallory_id = Identity::generate("mallory").unwrap();
    let m = Store::create_as(dm.path(), &pass, mallory_id.clone(), config())
        .await
        .unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    a.post(general, "alice's first").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    m.join_channel(keys.clone()).await.unwrap();
    b.join_channel(keys.clone()).await.unwrap();
    let alice = a.whoami().device;
    assert!(is_keyed_id(&alice), "a new device's id is keyed");

    let mallory_secret = mallory_id.secret().unwrap();
    let mallory_user = ed25519_dalek::SigningKey::from_bytes(mallory_secret.expose());
    let mallory = hearth_core::Identity::new_device(&mallory_secret, "m").unwrap();
    let body = hearth_core::seal(keys.feed_key(), b"unused", b"x").unwrap();
    let header = |version: u8| EntryHeader {
        version,
        wire,
        user: m.whoami().user,
        device: alice,
        seq: 1,
        prev: [0; 32],
        generation: 0,
        epoch: 0,
    };
    // A format 1 entry naming Alice's device, signed by Mallory's user key.
    let h = header(ENVELOPE_VERSION);
    let mut signed = h.encode();
    signed.extend_from_slice(&body);
    let by_user_key = Envelope {
        header: h,
        certs: Vec::new(),
        body: body.clone(),
        sig: mallory.sign(&signed).unwrap().to_vec(),
        pruned: None,
        segments: Vec::new(),
        pack: None,
    }
    .encode();
    // A chain binding Alice's id to Mallory's device key as a kept id.
    let mkeys = DeviceKeys::generate().unwrap();
    let kept = DeviceCert::by_user(&mallory_user, alice, mkeys.public(), 1, true);
    let h = header(ENVELOPE_V2);
    let mut msg = h.encode();
    msg.extend(postcard::to_stdvec(&vec![kept.clone()]).unwrap());
    msg.extend_from_slice(&body);
    let by_kept_binding = Envelope {
        header: h,
        certs: vec![kept],
        body: body.clone(),
        sig: mkeys.sign(b"hearth v2 entry", &msg).to_vec(),
        pruned: None,
        segments: Vec::new(),
        pack: None,
    }
    .encode();
    for (what, bytes, want) in [
        ("format 1", by_user_key, Refusal::Squatting),
        ("kept binding", by_kept_binding, Refusal::BadSignature),
    ] {
        let r = b.ingest(wire, vec![bytes]).await.unwrap();
        assert_eq!(r.accepted, 0, "{what}");
        assert_eq!(r.rejected[0].reason, want, "{what}");
        assert!(r.rejected[0].device == Some(alice), "{what}");
    }
    assert!(
        !Refusal::Squatting.is_peer_fault(),
        "the author's doing, not the forwarder's"
    );
    // Nothing of Alice's device is bound to Mallory at Bob: Alice's feed is taken.
    assert_eq!(
        pull(&a, &b, wire, general).await,
        2,
        "the channel's creation and a post"
    );
    let page = b.page(general, None, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].author, a.whoami().user);
    for s in [a, m, b] {
        s.close().await.unwrap();
    }
}

/// A catch-up's next batch handed over ahead ([`Store::prepare`]) while the
/// one before is taken: the member ends as one that took every batch
/// plainly, and a batch prepared but not ingested, or ingested with other
/// bytes, changes nothing.
#[tokio::test]
async fn batches_prepared_ahead_are_taken_as_plain_ones_are() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let config = || config().with_receipt_delay(std::time::Duration::from_secs(3600));
    let a = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    for i in 0..200 {
        a.post(general, &format!("alice {i}")).await.unwrap();
        if i % 20 == 0 {
            a.entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
                .await
                .unwrap();
        }
    }
    let mut batches = Vec::new();
    let mut have = Vector::default();
    loop {
        let b = a.entries_after(wire, have.clone(), 2048, 4).await.unwrap();
        if b.entries.is_empty() {
            break;
        }
        for e in &b.entries {
            let env = hearth_core::Envelope::decode(e).unwrap();
            have.0.insert(
                env.header.device,
                hearth_core::FeedPos {
                    seq: env.header.seq,
                    hash: env.hash(),
                },
            );
        }
        batches.push(b.entries);
    }
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert!(sizes.len() >= 3 && sizes[..3].iter().all(|&n| n >= 2), "{sizes:?}");
    let plain = Store::create(dirs[1].path(), &pass, "bob", config()).await.unwrap();
    let ahead = Store::create(dirs[2].path(), &pass, "carol", config()).await.unwrap();
    for s in [&plain, &ahead] {
        s.join_channel(keys.clone()).await.unwrap();
    }
    // A batch with one entry forged, prepared: the real one is not taken
    // for it, nor it for the real one.
    let mut forged = batches[0].clone();
    let mut env = hearth_core::Envelope::decode(&forged[1]).unwrap();
    env.sig[3] ^= 1;
    forged[1] = env.encode();
    ahead.prepare(wire, forged.clone()).await;
    ahead.prepare(wire, batches[0].clone()).await;
    for (i, b) in batches.iter().enumerate() {
        let r = plain.ingest(wire, b.clone()).await.unwrap();
        assert!(r.rejected.is_empty() && r.accepted == b.len());
        if let Some(next) = batches.get(i + 1) {
            ahead.prepare(wire, next.clone()).await;
        }
        let r = ahead.ingest(wire, b.clone()).await.unwrap();
        assert!(r.rejected.is_empty() && r.accepted == b.len(), "{r:?}");
    }
    let r = ahead.ingest(wire, forged).await.unwrap();
    assert_eq!(r.duplicates, 1, "the untouched entry is held already");
    assert_eq!(r.rejected[0].reason, Refusal::BadSignature);
    let alice = a.vector(general).await.unwrap();
    assert!(ahead.vector(general).await.unwrap().covers(&alice));
    assert!(plain.vector(general).await.unwrap().covers(&alice));
    assert_eq!(
        ahead.page(general, None, 500).await.unwrap(),
        plain.page(general, None, 500).await.unwrap()
    );
    assert_eq!(ahead.page(general, None, 500).await.unwrap().len(), 200);
}
