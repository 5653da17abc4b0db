//! A lone writer's posts kept out of automerge (`EpochDoc`'s deferred
//! posts, issue 10): while an epoch holds nothing but this device's own
//! chain, a post takes only its text slot and its entry's change is built
//! from the posts; automerge sees them when something first reads the
//! document. Whatever the writer answers, with epochs evicted before
//! anything brought their posts in, with reactions, edits, deletes and
//! replies reaching epochs whose posts were deferred, and across a
//! restart, is what a member that applied the writer's entries answers.

use hearth_core::{ChannelId, MessageId, Passphrase};
use hearth_store::{Config, Store};

#[path = "support/two.rs"]
mod two;
use two::{config, pull};

/// Small epochs, and room for only two of them in memory: most epochs
/// are evicted while their posts are still deferred.
fn small() -> Config {
    config().with_epoch_messages(16).with_cached_epochs(2)
}

/// Every page of the channel (top-level messages, newest first) and every
/// thread, as text.
async fn pages(s: &Store, ch: ChannelId) -> String {
    let mut out = String::new();
    for page in two::pages(s, ch, 25).await {
        for m in &page {
            out += &format!(
                "{:?} {:?} {:?} {} {:?}\n",
                m.id, m.text, m.reactions, m.reply_count, m.deleted
            );
            if m.reply_count > 0 {
                for r in s.thread(m.id).await.unwrap().replies {
                    out += &format!("  {:?} {:?} {:?}\n", r.id, r.text, r.edited);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_posts_read_as_applied_ones_after_eviction_edits_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::create(dir.path().join("a"), &Passphrase::new("pw"), "alice", small())
        .await
        .unwrap();
    let ch = a.create_channel("general").await.unwrap();
    let mut roots: Vec<MessageId> = Vec::new();
    let mut all: Vec<MessageId> = Vec::new();
    for i in 0..240usize {
        // Replies go to a root 0 to 40 posts back: often an epoch evicted
        // with its posts deferred, loaded again from its entries.
        let id = if i % 6 == 5 {
            let root = roots[roots.len().saturating_sub(1 + (i * 7) % 40)];
            a.reply(root, &format!("reply {i}")).await.unwrap()
        } else {
            let id = a.post(ch, &format!("message {i}")).await.unwrap();
            roots.push(id);
            id
        };
        all.push(id);
        // Now and then an edit, a delete or a reaction, to the post just
        // written (its epoch's posts deferred) or to one long evicted.
        match i % 37 {
            10 => a.react(id, "👍").await.unwrap(),
            20 => a.edit(all[i / 2], &format!("message {}, edited", i / 2)).await.unwrap(),
            30 => {
                let gone = all[i - 3];
                a.delete(gone).await.unwrap();
                roots.retain(|r| *r != gone);
            }
            _ => {}
        }
        if i % 50 == 49 {
            // A read between the writes brings the newest epoch's posts in
            // mid-change.
            a.page(ch, None, 5).await.unwrap();
        }
    }
    let written = pages(&a, ch).await;
    assert!(written.contains("\"message 0\""), "{written}");
    assert!(written.contains("\"reply 5\""), "{written}");
    assert!(written.contains("edited"), "{written}");
    // A member that applied every entry of the writer's.
    let b = two::member(dir.path(), "bob", &a, ch, small()).await;
    let wire = a.channel_keys(ch).await.unwrap().wire();
    assert_eq!(pages(&b, ch).await, written);
    // A restart: the writer's epochs load from snapshots and entries.
    a.close().await.unwrap();
    let a = Store::open(dir.path().join("a"), &Passphrase::new("pw"), small())
        .await
        .unwrap();
    assert_eq!(pages(&a, ch).await, written);
    // Writes after the restart go on the same chain: the member takes them.
    let late = a.post(ch, "after the restart").await.unwrap();
    a.react(late, "🎉").await.unwrap();
    let late_page = pages(&a, ch).await;
    pull(&a, &b, wire, ch).await;
    assert_eq!(pages(&b, ch).await, late_page);
}
