//! Feed entries that fill inside a group: a change of posts alone is
//! built from its posts when the entry closes (`EpochDoc::commit`), not
//! collected back from automerge, and compressed by Hearth
//! (`chunk::compress_change`). These tests write in the shapes that meet
//! an entry's close (bursts of concurrent posts into the same epoch, posts
//! into another channel, deletes, edits and reads in between), then check
//! that a second store pulling every entry sees exactly what the writer
//! sees, and that the writer does after a reopen.

use std::collections::BTreeMap;

use hearth_core::{ChannelId, Message, MessageId, Passphrase};
use hearth_store::Store;
use tokio::task::JoinSet;

#[path = "support/two.rs"]
mod two;
use two::{config, pull};

/// A text of about 2 KB: a 40 KiB entry fills every 20 or so posts, so
/// that entries fill inside a group (which closes when the writer pauses).
fn text(channel: &str, i: usize) -> String {
    format!(
        "{channel} {i}: {}",
        "the quick brown fox jumps over the lazy dog ".repeat(45)
    )
}

/// Every message of `channel` by id, read in pages larger than a front
/// page (100), so that they are computed from the epochs.
async fn everything(s: &Store, channel: ChannelId) -> BTreeMap<MessageId, Message> {
    two::pages(s, channel, 150)
        .await
        .into_iter()
        .flatten()
        .map(|m| (m.id, m))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_filled_in_bursts_hold_every_post() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    // No delivery receipts (Bob's would come back into Alice's channels).
    let config = || config().with_receipt_delay(std::time::Duration::from_secs(3600));
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let other = a.create_channel("other").await.unwrap();
    let mut posted = 0;
    for round in 0..100 {
        // A burst of concurrent posts: the store thread takes them in one
        // turn, so the one that fills an entry is followed at once by more
        // ops into the same document.
        let mut burst = JoinSet::new();
        for k in 0..8 {
            let (a, t) = (a.clone(), text("general", round * 8 + k));
            burst.spawn(async move { a.post(general, &t).await.unwrap() });
        }
        let ids = burst.join_all().await;
        posted += ids.len();
        // One awaited post elsewhere: two feeds' entries in one group.
        a.post(other, &text("other", round)).await.unwrap();
        if round % 13 == 5 {
            a.delete(ids[0]).await.unwrap();
        }
        if round % 17 == 9 {
            a.edit(ids[1], "edited while an entry closes").await.unwrap();
        }
        if round % 10 == 0 {
            // A read closes the group.
            assert_eq!(everything(&a, general).await.len(), posted);
        }
    }
    let want_general = everything(&a, general).await;
    let want_other = everything(&a, other).await;
    assert_eq!(want_general.len(), 800);
    assert_eq!(want_other.len(), 100);

    // Bob pulls every entry of both feeds: what the entries hold, not
    // Alice's memory, must give the same messages.
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    for channel in [general, other] {
        let keys = a.channel_keys(channel).await.unwrap();
        let wire = keys.wire();
        b.join_channel(keys).await.unwrap();
        pull(&a, &b, wire, channel).await;
        assert!(
            b.vector(channel)
                .await
                .unwrap()
                .covers(&a.vector(channel).await.unwrap())
        );
    }
    assert_eq!(everything(&b, general).await, want_general);
    assert_eq!(everything(&b, other).await, want_other);
    b.close().await.unwrap();

    a.close().await.unwrap();
    let a = Store::open(da.path(), &pass, config()).await.unwrap();
    assert_eq!(everything(&a, general).await, want_general);
    assert_eq!(everything(&a, other).await, want_other);
    a.close().await.unwrap();
}
