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

/// Move what `to` lacks of `from`'s channel, one ingest per entry (as live
/// messages come); returns how many entries were kept out of automerge.
async fn pull_each(from: &Store, to: &Store, wire: hearth_core::WireId, ch: ChannelId) -> usize {
    let mut kept_out = 0;
    loop {
        let have = to.vector(ch).await.unwrap();
        let batch = from.entries_after(wire, have, usize::MAX, 1).await.unwrap();
        let Some(entry) = batch.entries.into_iter().next() else {
            return kept_out;
        };
        let report = to.ingest(wire, vec![entry]).await.unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        kept_out += report.kept_out;
    }
}

/// A peer's live posts into an epoch being read are shown from their
/// posts, and reach the epoch's document later, many at once
/// (`EpochDoc::defer_remote`): through edits of them, replies, the
/// member's own reactions in the same epoch, new epochs and a restart,
/// the member shows what the writer and a member that applied each on
/// arrival show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_posts_into_a_read_epoch_are_shown_before_they_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::create(dir.path().join("a"), &Passphrase::new("pw"), "alice", small())
        .await
        .unwrap();
    let ch = a.create_channel("general").await.unwrap();
    let mut posted = Vec::new();
    for i in 0..20 {
        posted.push(a.post(ch, &format!("message {i}")).await.unwrap());
    }
    let kept = member(dir.path(), "kept", &a, ch, small()).await;
    let eager = member(dir.path(), "eager", &a, ch, small().with_lazy_epochs(false)).await;
    let wire = a.channel_keys(ch).await.unwrap().wire();
    let mut kept_out = 0;
    for i in 0..48 {
        // Both show the channel, as an app does.
        assert_eq!(
            kept.page(ch, None, 10).await.unwrap(),
            eager.page(ch, None, 10).await.unwrap()
        );
        let id = if i % 5 == 4 {
            a.reply(posted[posted.len() - 2], &format!("reply {i}")).await.unwrap()
        } else {
            a.post(ch, &format!("live {i}")).await.unwrap()
        };
        posted.push(id);
        if i % 7 == 6 {
            a.edit(posted[posted.len() - 3], &format!("edited at {i}"))
                .await
                .unwrap();
        }
        if i % 11 == 10 {
            kept.react(posted[posted.len() - 2], "👍").await.unwrap();
            pull(&kept, &a, wire, ch).await;
        }
        kept_out += pull_each(&a, &kept, wire, ch).await;
        pull_each(&a, &eager, wire, ch).await;
    }
    assert!(kept_out >= 32, "{kept_out} of 48 live posts kept out");
    let shown = two::pages(&a, ch, 10).await;
    assert_eq!(two::pages(&kept, ch, 10).await, shown);
    assert_eq!(two::pages(&eager, ch, 10).await, shown);
    assert!(shown.concat().iter().any(|m| m.edited) && shown.concat().iter().any(|m| !m.reactions.is_empty()));
    // What was kept out is stored: after a restart, the same.
    kept.close().await.unwrap();
    let kept = Store::open(dir.path().join("kept"), &Passphrase::new("pw"), small())
        .await
        .unwrap();
    assert_eq!(two::pages(&kept, ch, 10).await, shown);
    for s in [a, kept, eager] {
        s.close().await.unwrap();
    }
}
