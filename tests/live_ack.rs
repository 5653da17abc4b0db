//! While someone listens to a store's events (a sync node), a write's group
//! closes at once and goes to the feed log, and the write is acknowledged
//! once the log's sync that covers it ends: its journal record is not
//! synced (ARCHITECTURE.md, "A live post is made durable by the log's
//! sync"). Here the log's syncs are held (`hearth_store::hold_log_syncs`,
//! cargo feature `failpoints`), and a listened post must not be
//! acknowledged until they go on; an unlisted one goes through the journal
//! and does not wait for them.

use std::time::Duration;

use hearth::store::{Store, hold_log_syncs};
use hearth::{Config, KdfParams, Passphrase};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listened_post_waits_for_the_log_sync_that_covers_it() {
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
