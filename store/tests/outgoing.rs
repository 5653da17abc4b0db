//! This device's new entries handed over with their group's
//! `StoreEvent::Appended` (`Outgoing`): the same entries `Store::entries_after`
//! gives a peer that holds everything else, and nothing for any other peer.

use std::time::Duration;

use hearth_core::{KdfParams, Passphrase, Vector};
use hearth_store::{Config, ImportPost, Outgoing, Store, StoreEvent};
use tokio::sync::broadcast;

fn config() -> Config {
    // No delivery receipts: they would be groups of their own.
    Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_receipt_delay(Duration::from_secs(3600))
}

/// The next local `Appended` event's handed-over entries.
async fn next_local(events: &mut broadcast::Receiver<StoreEvent>) -> Option<Outgoing> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an Appended event")
            .unwrap();
        if let StoreEvent::Appended {
            local: true, outgoing, ..
        } = e
        {
            return outgoing;
        }
    }
}

const BIG: usize = 1 << 20;

#[tokio::test]
async fn a_group_hands_over_what_entries_after_gives_a_peer_lacking_only_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let ch = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    let me = a.whoami().device;

    let mut events = a.subscribe();
    a.post(ch, "one").await.unwrap();
    let o = next_local(&mut events).await.expect("a post's entry handed over");
    o.durable().await.unwrap();
    assert_eq!(o.wire(), wire);
    let now = a.vector(ch).await.unwrap();
    assert_eq!(o.vector(), &now);

    // A peer that lacks only the new entry gets it, as the store gives it.
    let mut before = now.clone();
    before.step_back(&me);
    let handed = o.entries_after(&before, BIG, 64).expect("the peer lacks only it");
    assert_eq!(handed, a.entries_after(wire, before.clone(), BIG, 64).await.unwrap());
    assert_eq!(handed.entries.len(), 1);
    // One that holds it gets nothing; one that lacks more is for the store.
    assert_eq!(o.entries_after(&now, BIG, 64).unwrap().entries.len(), 0);
    assert!(o.entries_after(&Vector::default(), BIG, 64).is_none());
    // A budget it does not fit in is the store's to split.
    assert!(o.entries_after(&before, BIG, 0).is_none());

    // Bob's entries reach Alice; her next entry is handed over with them in
    // its vector, and a peer lacking Bob's gets nothing from it.
    b.post(ch, "from bob").await.unwrap();
    let theirs = b
        .entries_after(wire, a.vector(ch).await.unwrap(), BIG, 64)
        .await
        .unwrap();
    a.ingest(wire, theirs.entries).await.unwrap();
    a.post(ch, "two").await.unwrap();
    let o = next_local(&mut events).await.expect("handed over");
    let bob = b.whoami().device;
    assert!(o.vector().seq(&bob) > 0, "the vector holds bob's feed");
    let mut lacks_bob = o.vector().clone();
    lacks_bob.step_back(&me);
    lacks_bob.step_back(&bob);
    assert!(o.entries_after(&lacks_bob, BIG, 64).is_none());
    let mut lacks_mine = o.vector().clone();
    lacks_mine.step_back(&me);
    let handed = o.entries_after(&lacks_mine, BIG, 64).unwrap();
    assert_eq!(handed, a.entries_after(wire, lacks_mine, BIG, 64).await.unwrap());
}

#[tokio::test]
async fn a_group_of_many_entries_or_large_ones_is_left_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::create(
        dir.path(),
        &Passphrase::new("pw"),
        "alice",
        config().with_epoch_messages(4),
    )
    .await
    .unwrap();
    let ch = a.create_channel("general").await.unwrap();
    // The channel's own group closes (a query closes it).
    a.vector(ch).await.unwrap();
    let mut events = a.subscribe();
    // 100 posts in epochs of 4: an entry each epoch, 25 in one group.
    let posts = (0..100)
        .map(|i| ImportPost {
            text: format!("post {i}"),
            reply_to: None,
        })
        .collect();
    let me = a.whoami().device;
    a.import_posts(ch, posts).await.unwrap();
    assert!(
        a.vector(ch).await.unwrap().seq(&me) > 16,
        "more entries than are handed over"
    );
    let o = next_local(&mut events).await;
    assert!(o.is_none(), "too many to hand over: {o:?}");
    // A lone post after it is handed over again.
    a.post(ch, "after").await.unwrap();
    assert!(next_local(&mut events).await.is_some());
    // One too large to be held in the events' queue (more than 8 KiB of
    // entry) is left to the store too.
    // (Text that does not deflate.)
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let noise: String = (0..14 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % 64) as usize])
        })
        .collect();
    a.post(ch, &noise).await.unwrap();
    assert!(
        next_local(&mut events).await.is_none(),
        "a large entry is not handed over"
    );
}
