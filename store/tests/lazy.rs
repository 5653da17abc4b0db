//! Deferred epochs (`Config::lazy_epochs`, issue 10): a member that catches up
//! stores, verifies and counts the entries of epochs nobody has read, and
//! applies them to their documents only when something reads them. Whatever
//! it answers, before and after the reads and across a restart, is what a
//! member that applied everything on arrival answers.

use hearth_core::{ChannelId, Passphrase};
use hearth_store::{Config, Store};

#[path = "support/two.rs"]
mod two;
use two::{config, member, pull};

/// Small epochs, so that a few hundred messages make many of them.
fn small() -> Config {
    config().with_epoch_messages(16)
}

/// Counts that come from the summaries alone (no document is read). Not
/// the feed entries: each member writes its delivery receipts when it will.
async fn counts(s: &Store, ch: ChannelId) -> String {
    let st = s.stats().await.unwrap();
    format!(
        "{:?}\n{:?}\n{} {}\n{}",
        s.channels().await.unwrap(),
        s.channel(ch).await.unwrap(),
        st.messages,
        st.epochs,
        s.unread(ch).await.unwrap()
    )
}

/// Every page of the channel, newest first, then the counts again.
async fn everything(s: &Store, ch: ChannelId) -> String {
    let mut out = String::new();
    // Top-level messages, newest first.
    for page in two::pages(s, ch, 25).await {
        out += &format!("{page:?}\n");
    }
    out + &counts(s, ch).await
}

/// Alice's channel: many epochs of posts and replies, some of them with
/// an edit, a delete, a reaction or a read marker.
async fn alice(dir: &std::path::Path) -> (Store, ChannelId) {
    let a = Store::create(dir.join("a"), &Passphrase::new("pw"), "alice", small())
        .await
        .unwrap();
    let ch = a.create_channel("general").await.unwrap();
    let mut root = None;
    for i in 0..400 {
        let id = if i % 7 == 3 {
            a.reply(root.unwrap(), &format!("reply {i}")).await.unwrap()
        } else {
            let id = a.post(ch, &format!("message {i}")).await.unwrap();
            root = Some(id);
            id
        };
        // Epochs 3 and 20 or so get an edit, a delete and a reaction.
        if i == 40 {
            a.edit(id, "message 40, edited").await.unwrap();
        }
        if i == 41 {
            a.delete(id).await.unwrap();
        }
        if i == 330 {
            a.react(id, "👍").await.unwrap();
        }
    }
    (a, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_leaves_unread_epochs_unapplied_and_answers_as_if_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ch) = alice(dir.path()).await;
    let lazy = member(dir.path(), "lazy", &a, ch, small()).await;
    let eager = member(dir.path(), "eager", &a, ch, small().with_lazy_epochs(false)).await;

    // Only the epoch with a delete (and the metadata epoch) was applied;
    // the eager member applied them all.
    let (l, e) = (lazy.stats().await.unwrap(), eager.stats().await.unwrap());
    assert!(e.epochs >= 25, "{} epochs", e.epochs);
    assert!(l.cached_epochs <= 4, "{} epochs in memory", l.cached_epochs);
    assert!(e.cached_epochs >= 20, "{} epochs in memory", e.cached_epochs);
    // The counts (channel list, unread, stats) from the summaries agree
    // before anything is read.
    assert_eq!(counts(&lazy, ch).await, counts(&eager, ch).await);
    // Every page, and the counts once every epoch was loaded.
    let expected = everything(&eager, ch).await;
    assert_eq!(everything(&lazy, ch).await, expected);
    assert!(lazy.verify().await.unwrap().is_clean());

    // A restart before anything is read: the deferred epochs are ordinary
    // ones then, loaded from their epoch logs when read.
    let fresh = member(dir.path(), "fresh", &a, ch, small()).await;
    assert!(fresh.stats().await.unwrap().cached_epochs <= 4);
    fresh.close().await.unwrap();
    let fresh = Store::open(dir.path().join("fresh"), &Passphrase::new("pw"), small())
        .await
        .unwrap();
    assert_eq!(counts(&fresh, ch).await, counts(&eager, ch).await);
    assert_eq!(everything(&fresh, ch).await, expected);
    assert!(fresh.verify().await.unwrap().is_clean());
    for s in [a, lazy, eager, fresh] {
        s.close().await.unwrap();
    }
}

/// The first page after a catch-up reads the newest epochs' posts as the
/// ingest decoded them, without applying them; each is loaded once the page
/// has replied. An epoch with more than posts (a reaction, an edit) is
/// applied first, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_page_after_a_catch_up_comes_from_the_posts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ch) = alice(dir.path()).await;
    let lazy = member(dir.path(), "lazy", &a, ch, small()).await;
    let eager = member(dir.path(), "eager", &a, ch, small().with_lazy_epochs(false)).await;
    let before = lazy.stats().await.unwrap();
    assert_eq!(before.pages_from_posts, 0);
    // 25 top-level messages: the newest two or three epochs, posts and replies only.
    let page = lazy.page(ch, None, 25).await.unwrap();
    assert_eq!(page.len(), 25);
    assert_eq!(page, eager.page(ch, None, 25).await.unwrap());
    assert!(page.iter().any(|m| m.reply_count > 0), "replies are counted");
    let after = lazy.stats().await.unwrap();
    assert!(
        after.pages_from_posts >= 2,
        "{} epochs read from posts",
        after.pages_from_posts
    );
    assert!(
        after.cached_epochs >= before.cached_epochs + after.pages_from_posts,
        "loaded after the reply: {} epochs in memory, {} before",
        after.cached_epochs,
        before.cached_epochs
    );
    // The same page again comes from the loaded epochs.
    assert_eq!(lazy.page(ch, None, 25).await.unwrap(), page);
    assert_eq!(lazy.stats().await.unwrap().pages_from_posts, after.pages_from_posts);
    // Further back, past the epoch with a reaction: the same pages as the
    // member that applied everything.
    assert_eq!(everything(&lazy, ch).await, everything(&eager, ch).await);
    for s in [a, lazy, eager] {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_touches_a_deferred_epoch_applies_it_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ch) = alice(dir.path()).await;
    let lazy = member(dir.path(), "lazy", &a, ch, small()).await;
    let eager = member(dir.path(), "eager", &a, ch, small().with_lazy_epochs(false)).await;
    let cached = lazy.stats().await.unwrap().cached_epochs;
    let old = a.page(ch, None, 400).await.unwrap();
    let (gone, edited) = (old[100].id, old[120].id);

    // A delete, an edit and a reaction by the writer reach epochs the
    // lazy member never read: the delete's epoch is applied at once (its
    // text is dropped in that batch), the others wait for a read.
    a.delete(gone).await.unwrap();
    a.edit(edited, "edited late").await.unwrap();
    a.react(old[140].id, "🎉").await.unwrap();
    // The lazy member's own writes into unread epochs too.
    let wire = a.channel_keys(ch).await.unwrap().wire();
    for s in [&lazy, &eager] {
        pull(&a, s, wire, ch).await;
    }
    assert!(lazy.stats().await.unwrap().cached_epochs > cached);
    let deleted = lazy.message(gone).await.unwrap().message;
    assert!(deleted.deleted && deleted.text.is_none(), "{deleted:?}");
    let edited = lazy.message(edited).await.unwrap().message;
    assert_eq!(edited.text.as_deref(), Some("edited late"));

    // New posts after the catch-up.
    for i in 0..40 {
        a.post(ch, &format!("later {i}")).await.unwrap();
    }
    for s in [&lazy, &eager] {
        pull(&a, s, wire, ch).await;
    }
    assert_eq!(counts(&lazy, ch).await, counts(&eager, ch).await);
    assert_eq!(everything(&lazy, ch).await, everything(&eager, ch).await);
    assert!(lazy.verify().await.unwrap().is_clean());

    // The member's own writes into epochs it has not read.
    let fresh = member(dir.path(), "fresh", &a, ch, small()).await;
    let cached = fresh.stats().await.unwrap().cached_epochs;
    fresh.react(old[160].id, "👀").await.unwrap();
    fresh.mark_read(ch, Some(old[200].id)).await.unwrap();
    assert!(fresh.stats().await.unwrap().cached_epochs > cached);
    let m = fresh.message(old[160].id).await.unwrap().message;
    assert_eq!(m.reactions.get("👀").map(|u| u.len()), Some(1), "{m:?}");
    assert!(fresh.unread(ch).await.unwrap() < lazy.unread(ch).await.unwrap());
    fresh.close().await.unwrap();
    for s in [a, lazy, eager] {
        s.close().await.unwrap();
    }
}
