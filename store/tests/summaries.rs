//! Summary copies (store format 15): a clean close copies each channel's
//! epoch summaries into one sealed row, which the next open reads instead of
//! one row per epoch; any batch that writes a summary takes the copy away in
//! that same batch, and a copy that is stale, damaged or foreign is a miss.

use std::path::Path;

use hearth_core::{ChannelId, Passphrase, WireId};
use hearth_store::{Config, Store};

#[path = "support/dirs.rs"]
mod dirs;
#[path = "support/two.rs"]
mod two;
use dirs::copy_dir;
use two::{config, pull};

/// Small epochs, so that a channel has many summaries.
fn small() -> Config {
    config().with_epoch_messages(4)
}

/// What the summaries decide: the channel list (with unread counts), the
/// counts in `stats`, the first pages and each channel's unread count.
async fn answers(s: &Store, channels: &[ChannelId]) -> String {
    let mut out = format!("{:?}\n", s.channels().await.unwrap());
    let st = s.stats().await.unwrap();
    out += &format!("{} {} {}\n", st.messages, st.epochs, st.feed_entries);
    for c in channels {
        out += &format!("{:?}\n", s.page(*c, None, 30).await.unwrap());
        out += &format!("{}\n", s.unread(*c).await.unwrap());
    }
    out
}

/// A closed store's sled (or one in a copy of its directory) and its tree.
fn closed_tree(db_dir: &Path) -> (sled::Db, sled::Tree) {
    // A closed store's sled lets go of its lock a moment after the close.
    let db = hearth_store::open_sled_config(&sled::Config::new().path(db_dir)).unwrap();
    let tree = db.open_tree("hearth.v1").unwrap();
    (db, tree)
}

/// The rows under `prefix` (key, value).
fn scan(tree: &sled::Tree, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    tree.scan_prefix(prefix)
        .map(|r| r.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

/// The `A` rows of a channel (key, value), read with sled while the store is
/// closed (or in a copy of its directory); with `put`, they are replaced.
fn copy_rows(db_dir: &Path, wire: &WireId, put: Option<&[(Vec<u8>, Vec<u8>)]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (db, tree) = closed_tree(db_dir);
    let mut prefix = vec![b'A'];
    prefix.extend_from_slice(&wire.0);
    let was = scan(&tree, &prefix);
    if let Some(rows) = put {
        for (k, _) in &was {
            tree.remove(k).unwrap();
        }
        for (k, v) in rows {
            tree.insert(k, &v[..]).unwrap();
        }
        db.flush().unwrap();
    }
    was
}

/// Two channels, one of them with many epochs (its copy takes several
/// chunks), replies, an edit, a delete and a read marker.
async fn two_channels(s: &Store) -> (ChannelId, ChannelId) {
    let general = s.create_channel("general").await.unwrap();
    let random = s.create_channel("random").await.unwrap();
    let mut last = None;
    for i in 0..2400 {
        last = Some(s.post(general, &format!("message {i}")).await.unwrap());
    }
    let root = s.post(random, "a root").await.unwrap();
    s.reply(root, "a reply").await.unwrap();
    s.edit(root, "a root, edited").await.unwrap();
    let gone = s.post(random, "gone soon").await.unwrap();
    s.delete(gone).await.unwrap();
    s.mark_read(general, last).await.unwrap();
    (general, random)
}

/// A new store in a temporary directory with [`two_channels`], and the
/// first channel's wire id.
async fn two_channels_in_a_new_store() -> (tempfile::TempDir, Passphrase, Store, ChannelId, ChannelId, WireId) {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", small()).await.unwrap();
    let (general, random) = two_channels(&s).await;
    let wire = s.channel_keys(general).await.unwrap().wire();
    (dir, pass, s, general, random, wire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_after_a_clean_close_reads_each_channels_copy_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", small()).await.unwrap();
    let (general, random) = two_channels(&s).await;
    let wire = s.channel_keys(general).await.unwrap().wire();
    let expected = answers(&s, &[general, random]).await;
    assert!(s.stats().await.unwrap().epochs > 600);
    s.close().await.unwrap();
    let rows = copy_rows(&dir.path().join("db"), &wire, None);
    assert!(rows.len() >= 2, "{} chunks: 600 epochs need more than one", rows.len());

    for round in 0..2 {
        let s = Store::open(dir.path(), &pass, small()).await.unwrap();
        assert_eq!(s.stats().await.unwrap().summary_copies, 2, "round {round}");
        assert_eq!(answers(&s, &[general, random]).await, expected, "round {round}");
        assert!(s.verify().await.unwrap().is_clean());
        s.close().await.unwrap();
    }
    // An open that only read leaves the copy as it was.
    assert_eq!(copy_rows(&dir.path().join("db"), &wire, None), rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_takes_its_channels_copy_away_in_its_own_batch() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path().join("a"), &pass, "alice", small())
        .await
        .unwrap();
    let (general, random) = two_channels(&s).await;
    let wire = s.channel_keys(general).await.unwrap().wire();
    let other = s.channel_keys(random).await.unwrap().wire();
    s.close().await.unwrap();

    let s = Store::open(dir.path().join("a"), &pass, small()).await.unwrap();
    assert_eq!(s.stats().await.unwrap().summary_copies, 2);
    for i in 0..10 {
        s.post(general, &format!("after the copy {i}")).await.unwrap();
    }
    s.checkpoint().await.unwrap();
    let expected = answers(&s, &[general, random]).await;
    // The store as a crash would leave it: no close wrote anything more.
    copy_dir(&dir.path().join("a"), &dir.path().join("b"));
    s.close().await.unwrap();
    assert!(copy_rows(&dir.path().join("b/db"), &wire, None).is_empty());
    assert!(!copy_rows(&dir.path().join("b/db"), &other, None).is_empty());

    let s = Store::open(dir.path().join("b"), &pass, small()).await.unwrap();
    assert_eq!(
        s.stats().await.unwrap().summary_copies,
        1,
        "only the channel nobody wrote in"
    );
    assert_eq!(answers(&s, &[general, random]).await, expected);
    assert!(s.verify().await.unwrap().is_clean());
    s.close().await.unwrap();
    // The close made a new copy, which the next open reads.
    let s = Store::open(dir.path().join("b"), &pass, small()).await.unwrap();
    assert_eq!(s.stats().await.unwrap().summary_copies, 2);
    assert_eq!(answers(&s, &[general, random]).await, expected);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_damaged_copy_is_a_miss() {
    let (dir, pass, s, general, random, wire) = two_channels_in_a_new_store().await;
    let db = dir.path().join("db");
    let other = s.channel_keys(random).await.unwrap().wire();
    s.close().await.unwrap();
    let old = copy_rows(&db, &wire, None);

    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    s.post(general, "a newer message").await.unwrap();
    let expected = answers(&s, &[general, random]).await;
    s.close().await.unwrap();
    let fresh = copy_rows(&db, &wire, None);
    assert!(fresh.len() >= 2);
    assert_ne!(fresh, old);

    // The copy of the first close put back: the feed heads moved since.
    copy_rows(&db, &wire, Some(&old));
    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    assert_eq!(s.stats().await.unwrap().summary_copies, 1);
    assert_eq!(answers(&s, &[general, random]).await, expected);
    assert!(s.verify().await.unwrap().is_clean());
    s.close().await.unwrap();
    // That close replaced it.
    assert_eq!(copy_rows(&db, &wire, None).len(), fresh.len());

    // Another channel's copy under this channel's keys does not open.
    let foreign: Vec<(Vec<u8>, Vec<u8>)> = copy_rows(&db, &other, None)
        .into_iter()
        .map(|(mut k, v)| {
            k[1..33].copy_from_slice(&wire.0);
            (k, v)
        })
        .collect();
    // A damaged chunk, a missing chunk, an extra chunk, garbage.
    let mut damaged = fresh.clone();
    let last = damaged[1].1.len() - 1;
    damaged[1].1[last] ^= 1;
    let missing = vec![fresh[0].clone()];
    let mut extra = fresh.clone();
    let mut k = fresh[0].0.clone();
    k[33..35].copy_from_slice(&40u16.to_be_bytes());
    extra.push((k, fresh[0].1.clone()));
    let garbage = vec![(fresh[0].0.clone(), b"not a sealed record".to_vec())];
    for (what, rows) in [
        ("foreign", foreign),
        ("damaged", damaged),
        ("missing", missing),
        ("extra", extra),
        ("garbage", garbage),
    ] {
        copy_rows(&db, &wire, Some(&rows));
        let s = Store::open(dir.path(), &pass, small()).await.unwrap();
        assert_eq!(s.stats().await.unwrap().summary_copies, 1, "{what}");
        assert_eq!(answers(&s, &[general, random]).await, expected, "{what}");
        assert!(s.verify().await.unwrap().is_clean(), "{what}");
        s.close().await.unwrap();
        // The close put a whole copy in its place, nothing of the bad one left.
        assert_eq!(copy_rows(&db, &wire, None).len(), fresh.len(), "{what}");
        let s = Store::open(dir.path(), &pass, small()).await.unwrap();
        assert_eq!(s.stats().await.unwrap().summary_copies, 2, "{what}");
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_taken_from_a_peer_take_the_copy_away_in_their_own_batch() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let alice = Store::create(dir.path().join("alice"), &pass, "alice", small())
        .await
        .unwrap();
    let bob = Store::create(dir.path().join("bob"), &pass, "bob", small())
        .await
        .unwrap();
    let general = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    for i in 0..100 {
        alice.post(general, &format!("message {i}")).await.unwrap();
    }
    bob.join_channel(keys).await.unwrap();
    pull(&alice, &bob, wire, general).await;
    bob.close().await.unwrap();
    assert!(!copy_rows(&dir.path().join("bob/db"), &wire, None).is_empty());

    let bob = Store::open(dir.path().join("bob"), &pass, small()).await.unwrap();
    assert_eq!(bob.stats().await.unwrap().summary_copies, 1);
    for i in 0..20 {
        alice.post(general, &format!("while bob was away {i}")).await.unwrap();
    }
    pull(&alice, &bob, wire, general).await;
    bob.checkpoint().await.unwrap();
    let expected = answers(&bob, &[general]).await;
    copy_dir(&dir.path().join("bob"), &dir.path().join("bob-crashed"));
    bob.close().await.unwrap();
    assert!(copy_rows(&dir.path().join("bob-crashed/db"), &wire, None).is_empty());
    let bob = Store::open(dir.path().join("bob-crashed"), &pass, small())
        .await
        .unwrap();
    assert_eq!(bob.stats().await.unwrap().summary_copies, 0);
    assert_eq!(answers(&bob, &[general]).await, expected);
    assert!(bob.verify().await.unwrap().is_clean());
    bob.close().await.unwrap();
    alice.close().await.unwrap();
}

/// Rows of a closed store's sled under `prefix` (key, value); with `put`,
/// each row's value is replaced by it.
fn rows_under(db_dir: &Path, prefix: &[u8], put: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (db, tree) = closed_tree(db_dir);
    let was = scan(&tree, prefix);
    if let Some(v) = put {
        for (k, _) in &was {
            tree.insert(k, v).unwrap();
        }
        db.flush().unwrap();
    }
    was
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_the_open_left_for_later_that_do_not_read_rebuild_sled_at_the_next_open() {
    let (dir, pass, s, general, random, wire) = two_channels_in_a_new_store().await;
    let db = dir.path().join("db");
    let expected = answers(&s, &[general, random]).await;
    let first_page = s.page(general, None, 30).await.unwrap();
    s.close().await.unwrap();

    // The open after a clean close leaves the summaries for later, and the
    // first page comes from the front page without them.
    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    assert_eq!(s.open_report().summary_copies, 0);
    assert_eq!(s.page(general, None, 30).await.unwrap(), first_page);
    assert_eq!(answers(&s, &[general, random]).await, expected);
    assert_eq!(s.stats().await.unwrap().summary_copies, 2);
    s.close().await.unwrap();

    // General's copy is garbage (still there, so the open leaves it for
    // later) and so is one of its epoch rows.
    let garbage = b"not a sealed record".to_vec();
    let copy = copy_rows(&db, &wire, None);
    copy_rows(&db, &wire, Some(&[(copy[0].0.clone(), garbage.clone())]));
    let mut epoch_rows = vec![b'E'];
    epoch_rows.extend_from_slice(&wire.0);
    let first_epoch = rows_under(&db, &epoch_rows, None)[0].0.clone();
    rows_under(&db, &first_epoch, Some(&garbage));

    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    assert!(s.open_report().rebuilt.is_none());
    // The front page does not need the summaries.
    assert_eq!(s.page(general, None, 30).await.unwrap(), first_page);
    // Anything that does fails, with the damage named, and the store takes
    // no writes.
    match s.channels().await {
        Err(hearth_store::Error::Corrupted { .. }) => {}
        other => panic!("the channel list read damaged summaries: {other:?}"),
    }
    assert!(s.post(random, "not taken").await.is_err());
    let _ = s.close().await;
    // The copy that did not serve is gone, so the next open loads the
    // channel before it answers, finds the damage and rebuilds sled from
    // the log, with every acknowledged message.
    assert!(copy_rows(&db, &wire, None).is_empty());
    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    assert!(s.open_report().rebuilt.is_some(), "{:?}", s.open_report());
    assert_eq!(answers(&s, &[general, random]).await, expected);
    assert!(s.verify().await.unwrap().is_clean());
    s.close().await.unwrap();
}
