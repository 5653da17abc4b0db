//! sled is derived state: the feed log (identity, channel keys, every feed
//! entry) and the journal are enough to build it again. Each test damages or
//! removes sled (or puts it ahead of the log, as a power cut can) and checks
//! that the store opens, says it rebuilt, answers exactly as before, and
//! verifies clean.

use std::path::Path;
use std::time::Duration;

use hearth::store::Store;
use hearth::{Config, KdfParams, Passphrase};

#[path = "support/answers.rs"]
mod answers;
use answers::{answers, copy_dir, pull};

fn config() -> Config {
    Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_epoch_messages(16)
}

/// A store with every kind of op, a joined channel with another user's
/// messages (and the delivery receipts that go with them), closed cleanly.
async fn populated(dir: &Path, peer: &Path) -> serde_json::Value {
    let pass = Passphrase::new("pw");
    let a = Store::create(dir, &pass, "alice", config()).await.expect("create");
    let b = Store::create(peer, &pass, "bob", config()).await.expect("create");
    let general = a.create_channel("general").await.expect("channel");
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(a.post(general, &format!("message {i}")).await.expect("post"));
    }
    a.reply(ids[1], "a reply").await.expect("reply");
    a.react(ids[2], "👍").await.expect("react");
    a.edit(ids[3], "edited").await.expect("edit");
    a.delete(ids[4]).await.expect("delete");
    a.mark_read(general, Some(ids[40])).await.expect("read");
    a.rename_channel(general, "general chat").await.expect("rename");
    let bobs = b.create_channel("bobs").await.expect("channel");
    for i in 0..5 {
        b.post(bobs, &format!("from bob {i}")).await.expect("post");
    }
    a.join_channel(b.channel_keys(bobs).await.expect("keys"))
        .await
        .expect("join");
    pull(&b, &a, bobs).await;
    a.flush_receipts().await.expect("receipts");
    let want = answers(&a).await;
    a.close().await.expect("close");
    b.close().await.expect("close");
    want
}

#[tokio::test]
async fn a_store_whose_database_is_deleted_opens_with_everything() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, peer) = (tmp.path().join("a"), tmp.path().join("b"));
    let want = populated(&dir, &peer).await;
    std::fs::remove_dir_all(dir.join("db")).expect("rm db");
    let pass = Passphrase::new("pw");
    let s = Store::open(&dir, &pass, config()).await.expect("open without db/");
    let r = s.open_report().clone();
    assert!(r.rebuilt.is_some(), "{r:?}");
    assert!(r.log_entries > 0 && r.skipped.is_empty(), "{r:?}");
    assert_eq!(answers(&s).await, want);
    assert_eq!(
        s.flush_receipts().await.expect("receipts"),
        0,
        "receipts already written are not owed again"
    );
    s.close().await.expect("close");
    // The rebuilt database is a database like any other.
    let s = Store::open(&dir, &pass, config()).await.expect("reopen");
    assert_eq!(s.open_report().rebuilt, None);
    assert_eq!(
        s.open_report().log_batches,
        0,
        "a clean close leaves nothing to catch up"
    );
    assert_eq!(answers(&s).await, want);
    s.close().await.expect("close");
}

#[tokio::test]
async fn acknowledged_writes_of_a_crash_survive_the_loss_of_the_database() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pass = Passphrase::new("pw");
    let live = tmp.path().join("live");
    // No checkpoint: the late writes are only in the journal (and in sled's
    // and the log's unsynced state).
    let slow = config().with_checkpoint_interval(Duration::from_secs(3600));
    let s = Store::create(&live, &pass, "alice", slow).await.expect("create");
    let c = s.create_channel("c").await.expect("channel");
    for i in 0..30 {
        s.post(c, &format!("early {i}")).await.expect("post");
    }
    s.checkpoint().await.expect("checkpoint");
    let mut late = Vec::new();
    for i in 0..25 {
        late.push(s.post(c, &format!("late {i}")).await.expect("post"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // What a SIGKILL leaves now, then lose sled too.
    let image = tmp.path().join("image");
    copy_dir(&live, &image);
    s.close().await.expect("close");
    std::fs::remove_dir_all(image.join("db")).expect("rm db");
    let _ = std::fs::remove_file(image.join("LOCK"));
    let s = Store::open(&image, &pass, config()).await.expect("open");
    assert!(s.open_report().rebuilt.is_some());
    let page = s.page(c, None, 1000).await.expect("page");
    assert_eq!(page.len(), 55, "every acknowledged post is there");
    for (i, id) in late.iter().enumerate() {
        let m = s.message(*id).await.expect("a late post").message;
        assert_eq!(m.text.as_deref(), Some(format!("late {i}").as_str()));
    }
    assert!(s.verify().await.expect("verify").is_clean());
    s.close().await.expect("close");
}

#[tokio::test]
async fn a_damaged_database_is_rebuilt_and_repair_rebuilds_on_demand() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, peer) = (tmp.path().join("a"), tmp.path().join("b"));
    let want = populated(&dir, &peer).await;
    let pass = Passphrase::new("pw");
    // Garbage over sled's main file.
    let db = dir.join("db").join("db");
    let len = std::fs::metadata(&db).expect("db file").len() as usize;
    std::fs::write(&db, vec![0xA5; len]).expect("damage");
    let s = Store::open(&dir, &pass, config()).await.expect("open a damaged store");
    assert!(s.open_report().rebuilt.is_some(), "{:?}", s.open_report());
    assert_eq!(answers(&s).await, want);
    s.close().await.expect("close");
    // A repair rebuilds a database that is fine, to the same answers.
    let s = Store::repair(&dir, &pass, config()).await.expect("repair");
    assert!(s.open_report().rebuilt.is_some());
    assert_eq!(answers(&s).await, want);
    s.close().await.expect("close");
}

/// Rows built from the feed log removed while the store is closed (a feed
/// entry, epoch logs, snapshots, receipts owed: docs/format.md, tables `F`,
/// `L`, `S`, `R` of tree `hearth.v1`): the store still opens, `verify` finds what is missing
/// and says a repair would cure it, and `repair` gives back a store that
/// answers exactly as before and verifies clean.
#[tokio::test]
async fn repair_rebuilds_derived_rows_that_were_removed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, peer) = (tmp.path().join("a"), tmp.path().join("b"));
    let want = populated(&dir, &peer).await;
    let pass = Passphrase::new("pw");
    {
        // A closed store's sled lets go of its lock a moment after the close.
        let db = hearth_store::open_sled_config(&sled::Config::new().path(dir.join("db"))).expect("open sled");
        let tree = db.open_tree("hearth.v1").expect("tree");
        let mut removed = 0;
        // One feed entry (table `F`) goes too: sled lacks what the log holds.
        let first = tree.scan_prefix([b'F']).next().expect("an entry").expect("row").0;
        tree.remove(first).expect("remove");
        for tag in [b'L', b'S', b'R'] {
            for row in tree.scan_prefix([tag]) {
                let (k, _) = row.expect("row");
                tree.remove(k).expect("remove");
                removed += 1;
            }
        }
        assert!(removed > 10, "{removed} rows");
        db.flush().expect("flush");
    }
    let s = Store::open(&dir, &pass, config()).await.expect("open");
    let r = s.verify().await.expect("verify");
    assert!(!r.is_clean() && r.repair_would_help(), "{:?}", r.problems);
    assert!(
        r.problems.iter().any(|p| p.place.starts_with("epochs")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.place.starts_with("snaps")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.place.starts_with("feeds")),
        "{:?}",
        r.problems
    );
    s.close().await.expect("close");
    let s = Store::repair(&dir, &pass, config()).await.expect("repair");
    assert!(s.open_report().rebuilt.is_some());
    let r = s.verify().await.expect("verify");
    assert!(r.is_clean() && !r.repair_would_help(), "{:?}", r.problems);
    assert_eq!(answers(&s).await, want);
    s.close().await.expect("close");
}

/// A power cut can leave sled holding batches whose log records were lost
/// (sled's writes reached the disk, the log's did not). sled then names a
/// log position the log does not reach: it is rebuilt from what the log holds.
#[tokio::test]
async fn a_database_ahead_of_its_log_is_rebuilt_from_the_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pass = Passphrase::new("pw");
    let dir = tmp.path().join("a");
    let s = Store::create(&dir, &pass, "alice", config()).await.expect("create");
    let c = s.create_channel("c").await.expect("channel");
    for i in 0..10 {
        s.post(c, &format!("kept {i}")).await.expect("post");
    }
    s.checkpoint().await.expect("checkpoint");
    let seg = dir.join("log").join("00000001");
    let kept = std::fs::metadata(&seg).expect("segment").len();
    for i in 0..10 {
        s.post(c, &format!("lost {i}")).await.expect("post");
    }
    s.close().await.expect("close");
    // The log loses its tail; sled (and the emptied journal) do not know.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("segment")
        .set_len(kept)
        .expect("truncate");
    let s = Store::open(&dir, &pass, config()).await.expect("open");
    let r = s.open_report().clone();
    // (Here the log is cut below even the position sled last saw durable,
    // which only damage could do; a power cut leaves that much. Either way
    // sled names a position the log does not have.)
    assert!(r.rebuilt.is_some(), "{r:?}");
    let page = s.page(c, None, 100).await.expect("page");
    assert_eq!(page.len(), 10, "what the log holds");
    assert!(
        page.iter()
            .all(|m| m.text.as_deref().is_some_and(|t| t.starts_with("kept")))
    );
    assert!(s.verify().await.expect("verify").is_clean());
    // The store goes on: new writes land after what the log holds.
    s.post(c, "after").await.expect("post");
    s.close().await.expect("close");
    let s = Store::open(&dir, &pass, config()).await.expect("open");
    assert_eq!(s.page(c, None, 100).await.expect("page").len(), 11);
    assert!(s.verify().await.expect("verify").is_clean());
    s.close().await.expect("close");
}

#[tokio::test]
async fn an_interrupted_migration_starts_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("alice");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/alice-phone"),
        &dir,
    );
    // What a crash in the middle of writing the log leaves.
    std::fs::create_dir_all(dir.join("log.tmp")).expect("mkdir");
    std::fs::write(dir.join("log.tmp").join("00000001"), b"HEARTHLG\x01\0\0\0\x01garbage").expect("write");
    let pass = Passphrase::new("fixture passphrase");
    let s = Store::open(&dir, &pass, config()).await.expect("open");
    assert_eq!(s.open_report().migrated_from, Some(1));
    assert!(!dir.join("log.tmp").exists());
    assert!(s.verify().await.expect("verify").is_clean());
    s.close().await.expect("close");
}
