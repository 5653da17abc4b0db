//! Someone with the disk edits sled's rows: every row is sealed and bound to
//! its key, so rows can only be deleted or put back as older versions. Those
//! edits are found: `verify` by walking every feed, epoch log and summary, and
//! the open itself by the store root (a sealed digest of every feed head,
//! kept in the same batch as the heads), which sends sled to a rebuild from
//! the feed log.

use hearth_core::{KdfParams, Passphrase};
use hearth_store::{Config, Store};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

const TREE: &str = "hearth.v1";

/// Edit sled's tree of a closed store.
fn edit_sled(dir: &std::path::Path, f: impl FnOnce(&sled::Tree)) {
    // A closed store's sled lets go of its lock a moment after the close.
    let db = hearth_store::open_sled_config(&sled::Config::new().path(dir.join("db"))).unwrap();
    let tree = db.open_tree(TREE).unwrap();
    f(&tree);
    db.flush().unwrap();
}

async fn populated(dir: &std::path::Path, pass: &Passphrase) -> hearth_core::ChannelId {
    let s = Store::create(dir, pass, "alice", config()).await.unwrap();
    let c = s.create_channel("general").await.unwrap();
    for i in 0..20 {
        s.post(c, &format!("message {i}")).await.unwrap();
    }
    s.close().await.unwrap();
    c
}

#[tokio::test]
async fn an_entry_missing_from_its_epoch_log_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let dir = tmp.path().join("s");
    populated(&dir, &pass).await;
    edit_sled(&dir, |t| {
        let (k, _) = t.scan_prefix(b"L").next_back().unwrap().unwrap();
        t.remove(k).unwrap();
    });
    let s = Store::open(&dir, &pass, config()).await.unwrap();
    let report = s.verify().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.detail.contains("not in the log of its epoch")),
        "{:?}",
        report.problems
    );
    s.close().await.unwrap();
}

/// A feed head put back to an older version (taken from a copy of the store
/// made earlier), or removed: the open finds that sled's heads are not those
/// of its last write and rebuilds sled from the feed log, which holds every
/// entry; nothing is lost.
#[tokio::test]
async fn a_rolled_back_or_removed_head_row_is_caught_at_open() {
    for removed in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let pass = Passphrase::new("pw");
        let dir = tmp.path().join("s");
        let c = populated(&dir, &pass).await;
        // The head rows as they are now.
        let mut old = Vec::new();
        edit_sled(&dir, |t| {
            for row in t.scan_prefix(b"H") {
                old.push(row.unwrap());
            }
        });
        let s = Store::open(&dir, &pass, config()).await.unwrap();
        assert_eq!(s.open_report().rebuilt, None, "an untouched store opens as it is");
        for i in 0..5 {
            s.post(c, &format!("later {i}")).await.unwrap();
        }
        let want = s.page(c, None, 100).await.unwrap();
        s.close().await.unwrap();
        edit_sled(&dir, |t| {
            for (k, v) in &old {
                if removed {
                    t.remove(k).unwrap();
                } else {
                    t.insert(k, v).unwrap();
                }
            }
        });
        let s = Store::open(&dir, &pass, config()).await.unwrap();
        let why = s.open_report().rebuilt.clone().expect("sled was rebuilt");
        assert!(why.contains("store root"), "{why}");
        assert_eq!(s.page(c, None, 100).await.unwrap(), want, "nothing lost");
        assert!(s.verify().await.unwrap().is_clean());
        s.close().await.unwrap();
        let s = Store::open(&dir, &pass, config()).await.unwrap();
        assert_eq!(s.open_report().rebuilt, None, "the rebuilt store opens as it is");
        s.close().await.unwrap();
    }
}
