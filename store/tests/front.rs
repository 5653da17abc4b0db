//! Front pages (store format 14): a clean close keeps each channel's newest
//! messages sealed, so that the first page after an open loads no epoch
//! document; the row never answers for a channel that changed since, never
//! shows what expired, and goes in the same batch as a delete or an expiry
//! that drops its texts.

use std::path::Path;
use std::time::Duration;

use hearth_core::{ChannelId, Message, MessageId, Passphrase, WireId};
use hearth_store::{Config, Store};

#[path = "support/two.rs"]
mod two;
use two::{config, pull};

/// Small epochs, so that a page of 50 spans several of them.
fn small() -> Config {
    config().with_epoch_messages(16)
}

/// A channel with 130 top-level messages over several epochs, replies,
/// reactions, an edit and a delete among the newest.
async fn busy_channel(s: &Store) -> (ChannelId, Vec<MessageId>) {
    let general = s.create_channel("general").await.unwrap();
    let mut roots = Vec::new();
    for i in 0..130 {
        roots.push(s.post(general, &format!("message {i}")).await.unwrap());
    }
    s.reply(roots[120], "a reply").await.unwrap();
    s.reply(roots[120], "another reply").await.unwrap();
    s.reply(roots[10], "a reply far back").await.unwrap();
    s.react(roots[125], "👍").await.unwrap();
    s.edit(roots[126], "message 126, edited").await.unwrap();
    s.delete(roots[127]).await.unwrap();
    (general, roots)
}

/// The epochs loaded now.
async fn loaded(s: &Store) -> u64 {
    s.stats().await.unwrap().cached_epochs
}

/// Where `needle` is held as a front page (a sled row of that table).
async fn in_front_row(s: &Store, needle: &str) -> bool {
    s.find_text(needle)
        .await
        .unwrap()
        .iter()
        .any(|w| w == "sled row front pages")
}

fn texts(page: &[Message]) -> Vec<Option<&str>> {
    page.iter().map(|m| m.text.as_deref()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_page_after_a_clean_close_loads_no_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", small()).await.unwrap();
    let (general, roots) = busy_channel(&s).await;
    let mut expected = Vec::new();
    for n in [1, 50, 100, 101] {
        expected.push(s.page(general, None, n).await.unwrap());
    }
    let older = s.page(general, Some(roots[100]), 20).await.unwrap();
    assert_eq!(expected[1][0].text.as_deref(), Some("message 129"));
    assert_eq!(expected[3].len(), 101);
    s.close().await.unwrap();

    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    for (i, n) in [1, 50, 100].into_iter().enumerate() {
        assert_eq!(s.page(general, None, n).await.unwrap(), expected[i], "limit {n}");
    }
    // Computed, 100 messages would have loaded seven epochs of 16; the
    // metadata epoch may load on its own (expiry asks for the retention).
    assert!(loaded(&s).await <= 1, "{} epochs loaded", loaded(&s).await);
    // Past the front page, and once epochs are loaded, pages are computed,
    // and say the same.
    assert_eq!(s.page(general, None, 101).await.unwrap(), expected[3]);
    assert!(loaded(&s).await > 1);
    assert_eq!(s.page(general, None, 50).await.unwrap(), expected[1]);
    assert_eq!(s.page(general, Some(roots[100]), 20).await.unwrap(), older);
    // A reply and a reaction after the open: the page shows them, and the
    // next open's front page does too.
    s.reply(roots[129], "a late reply").await.unwrap();
    s.react(roots[128], "🎉").await.unwrap();
    let now = s.page(general, None, 50).await.unwrap();
    assert_eq!(now[0].reply_count, 1);
    assert!(now[1].reactions.contains_key("🎉"));
    s.close().await.unwrap();

    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    assert_eq!(s.page(general, None, 50).await.unwrap(), now);
    assert!(loaded(&s).await <= 1);
    // An open that only reads keeps the row: the next one is as quick.
    s.close().await.unwrap();
    let s = Store::open(dir.path(), &pass, small()).await.unwrap();
    assert_eq!(s.page(general, None, 50).await.unwrap(), now);
    assert!(loaded(&s).await <= 1);
    assert!(s.verify().await.unwrap().is_clean());
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_takes_the_front_page_with_it_on_the_author_and_on_a_peer() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    a.post(general, "a message that stays").await.unwrap();
    let secret = a.post(general, "a front page secret").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    pull(&a, &b, wire, general).await;
    b.page(general, None, 10).await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();

    let a = Store::open(da.path(), &pass, config()).await.unwrap();
    let b = Store::open(db.path(), &pass, config()).await.unwrap();
    // The control: each holds the text in its front page, and shows it.
    for (s, who) in [(&a, "alice"), (&b, "bob")] {
        let page = s.page(general, None, 10).await.unwrap();
        assert_eq!(
            texts(&page),
            vec![Some("a front page secret"), Some("a message that stays")],
            "{who}"
        );
        assert!(in_front_row(s, "a front page secret").await, "{who}");
    }
    a.delete(secret).await.unwrap();
    pull(&a, &b, wire, general).await;
    for (s, who) in [(&a, "alice"), (&b, "bob")] {
        assert!(!in_front_row(s, "a front page secret").await, "{who}");
        let page = s.page(general, None, 10).await.unwrap();
        assert!(page[0].deleted && page[0].text.is_none(), "{who}: {page:?}");
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
    for (dir, who) in [(da.path(), "alice"), (db.path(), "bob")] {
        Store::compact_dir(dir, &pass, config()).await.unwrap();
        let s = Store::open(dir, &pass, config()).await.unwrap();
        assert_eq!(
            s.find_text("a front page secret").await.unwrap(),
            Vec::<String>::new(),
            "{who}"
        );
        // The front page written at the close shows the tombstone.
        let page = s.page(general, None, 10).await.unwrap();
        assert!(loaded(&s).await <= 1, "{who}");
        assert!(page[0].deleted && page[0].text.is_none(), "{who}: {page:?}");
        assert_eq!(page[1].text.as_deref(), Some("a message that stays"));
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_page_never_shows_what_expired_and_goes_with_the_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", config()).await.unwrap();
    let general = s.create_channel("general").await.unwrap();
    s.set_retention(general, Some(Duration::from_secs(4))).await.unwrap();
    let posted = std::time::Instant::now();
    s.post(general, "a short-lived message").await.unwrap();
    assert_eq!(s.page(general, None, 10).await.unwrap().len(), 1);
    s.close().await.unwrap();

    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    assert!(in_front_row(&s, "a short-lived message").await);
    let page = s.page(general, None, 10).await.unwrap();
    if posted.elapsed() < Duration::from_secs(3) {
        assert_eq!(texts(&page), vec![Some("a short-lived message")]);
        assert!(loaded(&s).await <= 1);
    }
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(posted.elapsed()) + Duration::from_millis(300)).await;
    // Expired: the front page does not answer, though nothing changed
    // in the channel's feeds.
    assert_eq!(s.page(general, None, 10).await.unwrap(), Vec::new());
    // The expiry that drops the text takes the row with it.
    s.expire().await.unwrap();
    assert!(!in_front_row(&s, "a short-lived message").await);
    s.close().await.unwrap();
}

/// The `N` row of a channel, read or written with sled while the store is
/// closed.
fn front_row(dir: &Path, wire: &WireId, put: Option<&[u8]>) -> Option<Vec<u8>> {
    // A closed store's sled lets go of its lock a moment after the close.
    let db = hearth_store::open_sled_config(&sled::Config::new().path(dir.join("db"))).unwrap();
    let tree = db.open_tree("hearth.v1").unwrap();
    let mut k = vec![b'N'];
    k.extend_from_slice(&wire.0);
    let was = tree.get(&k).unwrap().map(|v| v.to_vec());
    if let Some(v) = put {
        tree.insert(&k, v).unwrap();
        db.flush().unwrap();
    }
    was
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_damaged_front_page_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", config()).await.unwrap();
    let general = s.create_channel("general").await.unwrap();
    let wire = s.channel_keys(general).await.unwrap().wire();
    for i in 0..20 {
        s.post(general, &format!("message {i}")).await.unwrap();
    }
    s.close().await.unwrap();
    let old = front_row(dir.path(), &wire, None).expect("a front page written at the close");

    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    s.post(general, "a newer message").await.unwrap();
    let expected = s.page(general, None, 10).await.unwrap();
    s.close().await.unwrap();
    // The row of the first close put back: it was computed from other feed
    // heads than the channel has.
    assert_ne!(front_row(dir.path(), &wire, Some(&old)).as_deref(), Some(&old[..]));
    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    assert_eq!(s.page(general, None, 10).await.unwrap(), expected);
    s.close().await.unwrap();
    // A row that does not open is a miss, not an error.
    let mut bad = old.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    front_row(dir.path(), &wire, Some(&bad));
    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    assert_eq!(s.page(general, None, 10).await.unwrap(), expected);
    assert!(s.verify().await.unwrap().is_clean());
    s.close().await.unwrap();
    front_row(dir.path(), &wire, Some(b"not a sealed record"));
    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    assert_eq!(s.page(general, None, 10).await.unwrap(), expected);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_page_of_long_messages_keeps_the_newest_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", config()).await.unwrap();
    let general = s.create_channel("general").await.unwrap();
    for i in 0..30 {
        s.post(general, &format!("{i} {}", "x".repeat(10_000))).await.unwrap();
    }
    let expected = s.page(general, None, 30).await.unwrap();
    s.close().await.unwrap();
    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    // 64 KiB hold the newest three of 10 KB (halved from 30 until it fits).
    assert_eq!(s.page(general, None, 3).await.unwrap(), expected[..3]);
    assert!(loaded(&s).await <= 1);
    assert_eq!(s.page(general, None, 10).await.unwrap(), expected[..10]);
    assert!(loaded(&s).await >= 2, "computed: the metadata epoch and the newest");
    assert_eq!(s.page(general, None, 30).await.unwrap(), expected);
    s.close().await.unwrap();
}
