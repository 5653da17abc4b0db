//! The bulk path (`Store::import_posts`, issue 10): posts taken in calls of
//! thousands, without the journal, their changes built without automerge's
//! op set in the epochs the import fills. What it stores is what posts
//! written one by one would be: a member that pulls it answers the same,
//! `verify` finds nothing, a restart reads it back, and the epochs it built
//! take later writes (replies, reactions, edits) like any other.

use hearth_core::{ChannelId, MessageId, Passphrase};
use hearth_store::{Config, Error, IMPORT_CHUNK, ImportPost, Store};

#[path = "support/two.rs"]
mod two;
use two::{config, pull};

/// Small epochs, so that a few hundred posts make many of them.
fn small() -> Config {
    config().with_epoch_messages(16)
}

fn post(text: String) -> ImportPost {
    ImportPost { text, reply_to: None }
}

/// Every page of the channel, newest first, and its counts.
async fn everything(s: &Store, ch: ChannelId) -> String {
    let mut out = String::new();
    for m in two::pages(s, ch, 25).await.into_iter().flatten() {
        out += &format!("{m:?}\n");
        out += &format!("  thread {:?}\n", s.thread(m.id).await.unwrap());
    }
    let st = s.stats().await.unwrap();
    out + &format!(
        "{:?}\n{} {}\n{}",
        s.channel(ch).await.unwrap(),
        st.messages,
        st.epochs,
        s.unread(ch).await.unwrap()
    )
}

/// Two members' [`everything`] agree but for what depends on who read
/// what: the channel's line (its unread count) and the unread count last.
fn assert_same_but_unread(mine: &str, theirs: &str) {
    let kept = |s: &str| -> Vec<String> {
        let (all, _unread) = s.rsplit_once('\n').unwrap();
        all.lines()
            .filter(|l| !l.starts_with("ChannelInfo"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(kept(mine), kept(theirs));
}

/// The texts of the channel's top-level messages, oldest first.
async fn top_texts(s: &Store, ch: ChannelId) -> Vec<String> {
    let mut all = s.page(ch, None, 100_000).await.unwrap();
    all.reverse();
    all.into_iter().map(|m| m.text.unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_posts_read_as_posts_written_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let pw = Passphrase::new("pw");
    let a = Store::create(dir.path().join("a"), &pw, "alice", small())
        .await
        .unwrap();
    let ch = a.create_channel("general").await.unwrap();
    // A few posts first: the epoch they started is filled through its
    // document, the ones after it are built by the bulk path.
    let mut roots = Vec::new();
    for i in 0..5 {
        roots.push(a.post(ch, &format!("before {i}")).await.unwrap());
    }
    let mut expected: Vec<String> = (0..5).map(|i| format!("before {i}")).collect();
    // Two calls (the second goes on with the epochs the first built), with
    // replies to messages there before.
    let mut ids: Vec<MessageId> = Vec::new();
    for call in 0..2 {
        let posts: Vec<ImportPost> = (0..150)
            .map(|i| {
                let text = format!("imported {call}.{i}");
                // The second call's first post replies to the first call's
                // last, in an epoch the bulk path built (loaded to be
                // found: the rest of that epoch goes through its document).
                if call == 1 && i == 0 {
                    ImportPost {
                        text,
                        reply_to: ids.last().copied(),
                    }
                } else if i % 10 == 9 {
                    ImportPost {
                        text,
                        reply_to: Some(roots[(i / 10) % roots.len()]),
                    }
                } else {
                    expected.push(text.clone());
                    post(text)
                }
            })
            .collect();
        let got = a.import_posts(ch, posts).await.unwrap();
        assert_eq!(got.len(), 150);
        ids.extend(got);
    }
    // The epochs the bulk path built were not loaded: 300 posts in epochs
    // of 16 make about 19 of them.
    let st = a.stats().await.unwrap();
    assert!(st.cached_epochs <= 4, "{} epochs in memory", st.cached_epochs);
    // Ids in input order, every one new.
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order");
    assert_eq!(top_texts(&a, ch).await, expected);
    let st = a.stats().await.unwrap();
    assert_eq!(st.messages, 305);
    // The last post of the first call replies to roots[4]: a reply to it
    // is one more in that thread.
    assert_eq!(a.thread(ids[149]).await.unwrap().root.id, roots[4]);
    assert_eq!(a.thread(roots[4]).await.unwrap().replies.len(), 7);
    assert!(st.epochs >= 18, "{} epochs", st.epochs);
    // The threads got their replies.
    let thread = a.thread(roots[0]).await.unwrap();
    assert_eq!(thread.replies.len(), 6, "{thread:?}");
    assert!(a.verify().await.unwrap().is_clean());

    // A member that pulls it all, applying everything on arrival, answers
    // the same, and so does the writer after a restart.
    let b = two::member(dir.path(), "bob", &a, ch, small().with_lazy_epochs(false)).await;
    let wire = a.channel_keys(ch).await.unwrap().wire();
    let seen = everything(&a, ch).await;
    assert_same_but_unread(&seen, &everything(&b, ch).await);
    a.close().await.unwrap();
    let a = Store::open(dir.path().join("a"), &pw, small()).await.unwrap();
    assert_eq!(everything(&a, ch).await, seen);
    assert!(a.verify().await.unwrap().is_clean());

    // The epochs it built take later writes like any other: a reply, a
    // reaction, an edit and a delete of imported posts, a post after them.
    let reacted = ids[3];
    a.react(reacted, "👍").await.unwrap();
    a.edit(ids[4], "imported, edited").await.unwrap();
    a.delete(ids[5]).await.unwrap();
    let reply = a.reply(ids[200], "a reply to an imported post").await.unwrap();
    a.post(ch, "after the import").await.unwrap();
    let more = a
        .import_posts(ch, (0..40).map(|i| post(format!("second import {i}"))).collect())
        .await
        .unwrap();
    assert_eq!(more.len(), 40);
    let m = a.message(reacted).await.unwrap().message;
    assert_eq!(m.reactions.len(), 1, "{m:?}");
    assert_eq!(
        a.message(ids[4]).await.unwrap().message.text.as_deref(),
        Some("imported, edited")
    );
    assert!(a.message(ids[5]).await.unwrap().message.deleted);
    assert_eq!(a.thread(ids[200]).await.unwrap().replies[0].id, reply);
    pull(&a, &b, wire, ch).await;
    assert_same_but_unread(&everything(&a, ch).await, &everything(&b, ch).await);
    assert!(a.verify().await.unwrap().is_clean());
    assert!(b.verify().await.unwrap().is_clean());
    for s in [a, b] {
        s.close().await.unwrap();
    }
}

/// An import with a bad post takes none of its posts, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_with_a_bad_post_takes_none() {
    let dir = tempfile::tempdir().unwrap();
    let pw = Passphrase::new("pw");
    let a = Store::create(dir.path().join("a"), &pw, "alice", small())
        .await
        .unwrap();
    let ch = a.create_channel("general").await.unwrap();
    let other = a.create_channel("other").await.unwrap();
    let elsewhere = a.post(other, "in another channel").await.unwrap();
    let gone = a.post(ch, "deleted").await.unwrap();
    a.delete(gone).await.unwrap();
    let before = a.stats().await.unwrap().messages;
    let with = |bad: ImportPost| {
        let mut posts: Vec<ImportPost> = (0..50).map(|i| post(format!("fine {i}"))).collect();
        posts.insert(30, bad);
        posts
    };
    let long = "x".repeat(hearth_core::MAX_TEXT_BYTES + 1);
    assert!(matches!(
        a.import_posts(ch, with(post(long))).await,
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        a.import_posts(ch, with(post(String::new()))).await,
        Err(Error::Invalid { .. })
    ));
    let nowhere = MessageId::new(hearth_core::Timestamp(1 << 40), 1, &ch, [7; 8]);
    let reply = |to| ImportPost {
        text: "a reply".into(),
        reply_to: Some(to),
    };
    assert!(matches!(
        a.import_posts(ch, with(reply(nowhere))).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        a.import_posts(ch, with(reply(elsewhere))).await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        a.import_posts(ch, with(reply(gone))).await,
        Err(Error::Invalid { .. })
    ));
    let too_many: Vec<ImportPost> = (0..=IMPORT_CHUNK).map(|i| post(format!("{i}"))).collect();
    assert!(matches!(
        a.import_posts(ch, too_many).await,
        Err(Error::TooLarge { .. })
    ));
    let unknown = ChannelId([9; 32]);
    assert!(matches!(
        a.import_posts(unknown, vec![post("x".into())]).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(a.import_posts(ch, Vec::new()).await.unwrap(), Vec::<MessageId>::new());
    // Nothing was taken, and the store still writes.
    assert_eq!(a.stats().await.unwrap().messages, before);
    assert_eq!(
        a.import_posts(ch, with(post("fine too".into()))).await.unwrap().len(),
        51
    );
    assert_eq!(a.stats().await.unwrap().messages, before + 51);
    assert!(a.verify().await.unwrap().is_clean());
    a.close().await.unwrap();
}
