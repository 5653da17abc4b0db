//! `passwd --rotate-key`: a new master key, the store re-sealed under it.
//! Afterwards the store answers exactly as before under the new passphrase;
//! nothing opens with the old key, not even with an old copy of the header;
//! and a rotation stopped at any step (as a crash there would) is finished or
//! dropped by the next open, with nothing lost.

use std::path::Path;

use hearth_core::{KdfParams, Passphrase};
use hearth_store::{Config, StopAt, Store};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// What a user sees, and what peers see.
async fn answers(s: &Store) -> String {
    let mut out = String::new();
    for c in s.channels().await.unwrap() {
        out += &format!("{:?}", c);
        for m in s.page(c.id, None, 1000).await.unwrap() {
            out += &format!("{m:?}");
            if m.reply_count > 0 {
                out += &format!("{:?}", s.thread(m.id).await.unwrap());
            }
        }
    }
    out += &format!("{:?}", s.vectors().await.unwrap());
    out
}

/// A store with two channels, replies, reactions, an edit, and a node file.
async fn populated(dir: &Path, pass: &Passphrase) -> String {
    let s = Store::create(dir, pass, "alice", config()).await.unwrap();
    let a = s.create_channel("general").await.unwrap();
    let b = s.create_channel("random").await.unwrap();
    for i in 0..30 {
        let m = s
            .post(if i % 2 == 0 { a } else { b }, &format!("message {i}"))
            .await
            .unwrap();
        if i % 7 == 0 {
            s.reply(m, "a reply").await.unwrap();
            s.react(m, "👍").await.unwrap();
        }
        if i == 3 {
            s.edit(m, "edited").await.unwrap();
        }
    }
    s.write_private_file("peers", b"/ip4/127.0.0.1/tcp/1".to_vec())
        .await
        .unwrap();
    let want = answers(&s).await;
    s.close().await.unwrap();
    want
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_rotated_store_answers_the_same_and_the_old_key_opens_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (old, new) = (Passphrase::new("old pass"), Passphrase::new("new pass"));
    let want = populated(&dir, &old).await;
    let old_header = std::fs::read(dir.join("header")).unwrap();
    let before = Store::open(&dir, &old, config()).await.unwrap();
    let old_node = before.node_secret().await.unwrap();
    before.close().await.unwrap();

    let report = Store::rotate_master_key(&dir, &old, &new, config()).await.unwrap();
    // Identity, two channel records, and a commit per batch.
    assert!(report.resealed >= 4 && report.batches >= 2, "{report:?}");
    assert_eq!(report.files, 1);
    for d in ["rotate", "rotate.tmp", "log.old", "db"] {
        assert!(!dir.join(d).exists(), "{d} left behind");
    }

    assert!(
        Store::open(&dir, &old, config()).await.is_err(),
        "the old passphrase still opens it"
    );
    let s = Store::open(&dir, &new, config()).await.unwrap();
    assert!(
        s.open_report().rebuilt.is_some(),
        "sled is rebuilt from the re-sealed log"
    );
    assert_eq!(answers(&s).await, want);
    assert_eq!(
        s.read_private_file("peers").await.unwrap().as_deref(),
        Some(&b"/ip4/127.0.0.1/tcp/1"[..])
    );
    assert!(s.verify().await.unwrap().is_clean());
    assert_ne!(
        s.node_secret().await.unwrap(),
        old_node,
        "the peer id changes with the key"
    );
    // It goes on working: a write, a reopen.
    let c = s.channels().await.unwrap()[0].id;
    s.post(c, "after the rotation").await.unwrap();
    let want = answers(&s).await;
    s.close().await.unwrap();
    let s = Store::open(&dir, &new, config()).await.unwrap();
    assert_eq!(answers(&s).await, want);
    s.close().await.unwrap();

    // An old copy of the header and the old passphrase open nothing: the
    // master key it wraps seals none of the files now.
    let new_header = std::fs::read(dir.join("header")).unwrap();
    std::fs::write(dir.join("header"), &old_header).unwrap();
    assert!(Store::open(&dir, &old, config()).await.is_err());
    std::fs::write(dir.join("header"), &new_header).unwrap();
    let s = Store::open(&dir, &new, config()).await.unwrap();
    assert_eq!(
        answers(&s).await,
        want,
        "a failed open with the old header changed nothing"
    );
    s.close().await.unwrap();

    // A wrong passphrase rotates nothing.
    assert!(
        Store::rotate_master_key(&dir, &old, &Passphrase::new("x"), config())
            .await
            .is_err()
    );
    let s = Store::open(&dir, &new, config()).await.unwrap();
    assert_eq!(answers(&s).await, want);
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_rotation_stopped_at_any_step_is_finished_or_dropped_by_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (Passphrase::new("old pass"), Passphrase::new("new pass"));
    let original = tmp.path().join("original");
    let want = populated(&original, &old).await;
    for (stop, committed) in [
        (StopAt::Prepared, false),
        (StopAt::HeaderWritten, false),
        (StopAt::Committed, true),
        (StopAt::OldLogMoved, true),
        (StopAt::NewLogMoved, true),
    ] {
        let dir = tmp.path().join(format!("{stop:?}"));
        copy_dir(&original, &dir);
        Store::rotate_master_key_until(&dir, &old, &new, config(), Some(stop))
            .await
            .unwrap();
        let (right, wrong) = if committed { (&new, &old) } else { (&old, &new) };
        assert!(
            Store::open(&dir, wrong, config()).await.is_err(),
            "{stop:?}: the wrong passphrase opens it"
        );
        let s = Store::open(&dir, right, config()).await.unwrap();
        assert_eq!(answers(&s).await, want, "{stop:?}");
        assert_eq!(
            s.read_private_file("peers").await.unwrap().as_deref(),
            Some(&b"/ip4/127.0.0.1/tcp/1"[..]),
            "{stop:?}"
        );
        assert!(s.verify().await.unwrap().is_clean(), "{stop:?}");
        s.close().await.unwrap();
        for d in ["rotate", "rotate.tmp", "log.old"] {
            assert!(!dir.join(d).exists(), "{stop:?}: {d} left behind");
        }
        // And a rotation can run again from there.
        Store::rotate_master_key(&dir, right, &Passphrase::new("third"), config())
            .await
            .unwrap();
        let s = Store::open(&dir, &Passphrase::new("third"), config()).await.unwrap();
        assert_eq!(answers(&s).await, want, "{stop:?}: rotated again");
        s.close().await.unwrap();
    }
}
