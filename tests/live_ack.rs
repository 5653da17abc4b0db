//! While someone listens to a store's events (a sync node), a write's group
//! closes at once and goes to the feed log, and the write is acknowledged
//! once the log's sync that covers it ends: its journal record is not
//! synced (ARCHITECTURE.md, "A live post is made durable by the log's
//! sync"). Here the log's syncs are held (`hearth_store::hold_log_syncs`,
//! cargo feature `failpoints`), and a listened post must not be
//! acknowledged until they go on; an unlisted one goes through the journal
//! and does not wait for them. And a store thread that dies in a group's
//! close (a bug that panics) leaves no listened writer waiting: it hears
//! `Poisoned`.

use std::time::Duration;

use hearth::store::{Store, hold_log_syncs, panic_at};
use hearth::{Config, KdfParams, Passphrase};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// The fail points are the process's: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listened_post_waits_for_the_log_sync_that_covers_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::create(dir.path().join("s"), &Passphrase::new("live ack"), "me", config())
        .await
        .expect("create");
    let channel = store.create_channel("c").await.expect("a channel");
    let limit = Duration::from_secs(20);
    let hold = hold_log_syncs();
    // Nobody listens: the journal makes it durable, held syncs or not.
    let quiet = tokio::time::timeout(limit, store.post(channel, "unlistened"))
        .await
        .expect("an unlistened post does not wait for the log's syncs")
        .expect("post");
    let events = store.subscribe();
    let s = store.clone();
    let listened = tokio::spawn(async move { s.post(channel, "listened").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !listened.is_finished(),
        "a listened post was acknowledged before the log's sync that covers it"
    );
    drop(hold);
    let id = tokio::time::timeout(limit, listened)
        .await
        .expect("acknowledged once the sync goes on")
        .expect("the task")
        .expect("post");
    for (id, text) in [(quiet, "unlistened"), (id, "listened")] {
        let m = store.message(id).await.expect("the message");
        assert_eq!(m.message.text.as_deref(), Some(text));
    }
    drop(events);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_thread_that_dies_in_a_close_leaves_no_listened_writer_waiting() {
    let _one = ONE_AT_A_TIME.lock().await;
    for listened in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path().join("s"), &Passphrase::new("live ack"), "me", config())
            .await
            .expect("create");
        let channel = store.create_channel("c").await.expect("a channel");
        let events = listened.then(|| store.subscribe());
        let kept = store.post(channel, "before").await.expect("post");
        let panics = panic_at("group.before_log").expect("a crash point");
        let got = tokio::time::timeout(Duration::from_secs(20), store.post(channel, "during"))
            .await
            .unwrap_or_else(|_| panic!("listened {listened}: the post never ended"));
        drop(panics);
        if listened {
            // Its group's close panicked before any cover: not acknowledged.
            assert!(matches!(got, Err(hearth::store::Error::Poisoned)), "listened: {got:?}");
        }
        drop(events);
        drop(store);
        // What was acknowledged is there after a reopen (once the dead
        // store's threads let go of its lock).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path().join("s"), &Passphrase::new("live ack"), config()).await {
                Err(hearth::store::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => break other.expect("reopen"),
            }
        };
        let m = store.message(kept).await.expect("the first post");
        assert_eq!(m.message.text.as_deref(), Some("before"));
        if let Ok(id) = got {
            assert!(store.message(id).await.is_ok(), "an acknowledged post is lost");
        }
        store.close().await.expect("close");
    }
}
