//! Backup and restore (issue 9, item 5): a backup taken while the store is
//! written holds every write acknowledged before it started; its restore
//! continues as a new device of the same user, writes on, and syncs with the
//! original and its peers without a fork; a damaged, cut, spliced or wrongly
//! unlocked backup is refused and leaves no store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hearth_core::{ChannelId, MessageId, Passphrase};
use hearth_store::{Error, Store, check_backup};

#[path = "support/two.rs"]
mod two;
use two::{config, pull};

/// Every message of `channel` as id -> (text, deleted, reactions).
async fn state(s: &Store, channel: ChannelId) -> BTreeMap<MessageId, (Option<String>, bool, usize)> {
    s.all_messages(channel)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id, (m.text, m.deleted, m.reactions.len())))
        .collect()
}

async fn clean(s: &Store, who: &str) {
    let v = s.verify().await.unwrap();
    assert!(v.problems.is_empty(), "{who}: {:?}", v.problems);
    assert!(v.forks.is_empty(), "{who}: a fork: {:?}", v.forks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_restores_as_a_new_device_that_syncs_without_a_fork() {
    let (da, db, dr, files) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let pass = Passphrase::new("pw");
    let a = Arc::new(Store::create(da.path(), &pass, "alice", config()).await.unwrap());
    let b = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    let keys = a.channel_keys(general).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    let root = a.post(general, "lunch?").await.unwrap();
    let doomed = a
        .post(general, "the text that was deleted before the backup")
        .await
        .unwrap();
    a.edit(root, "lunch at noon?").await.unwrap();
    pull(&a, &b, wire, general).await;
    b.reply(root, "yes").await.unwrap();
    b.react(root, "🎉").await.unwrap();
    pull(&b, &a, wire, general).await;
    a.delete(doomed).await.unwrap();

    // A writer posts without a break; the backup is taken in the middle.
    let acked: Arc<Mutex<Vec<MessageId>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (a, acked, stop) = (a.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = a.post(general, &format!("w{i}")).await.unwrap();
                acked.lock().unwrap().push(id);
                i += 1;
            }
        })
    };
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let file = files.path().join("alice.backup");
    let before: Vec<MessageId> = acked.lock().unwrap().clone();
    let report = a.backup(&file).await.unwrap();
    let by_end: Vec<MessageId> = acked.lock().unwrap().clone();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    assert!(report.rows_copied > 0 && report.log_records > 0, "{report:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), report.bytes);
    let left: Vec<_> = std::fs::read_dir(files.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["alice.backup"], "no temporary file left");
    let info = check_backup(&file, &pass).unwrap();
    assert_eq!(
        (info.summary.user, info.summary.device, info.name.as_str()),
        (a.whoami().user, a.whoami().device, "alice")
    );

    let restored = Store::restore(&file, dr.path(), &pass, Arc::default()).await.unwrap();
    assert_eq!(restored.info, info);
    let r = Store::open(dr.path(), &pass, config()).await.unwrap();
    assert_eq!((r.whoami().user, r.whoami().name.as_str()), (a.whoami().user, "alice"));
    assert_eq!(r.whoami().device, restored.device);
    assert_ne!(r.whoami().device, a.whoami().device, "a new device");
    assert!(r.whoami().former.is_empty());
    assert_ne!(
        r.node_secret().await.unwrap(),
        a.node_secret().await.unwrap(),
        "a new peer id"
    );
    clean(&r, "restored").await;

    // Every post acknowledged before the backup started is in it, none it
    // could not have seen, and the delete holds with its text gone.
    let held = state(&r, general).await;
    for id in &before {
        assert!(
            held.contains_key(id),
            "a post acknowledged before the backup is missing"
        );
    }
    let posted: Vec<&MessageId> = held
        .keys()
        .filter(|id| held[id].0.as_deref().is_some_and(|t| t.starts_with('w')))
        .collect();
    assert!(posted.iter().all(|id| by_end.contains(id)));
    assert!(held[&doomed].1, "the delete holds");
    assert!(
        r.find_text("the text that was deleted before the backup")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(held[&root], (Some("lunch at noon?".into()), false, 1));

    // Both alice devices write on; everything meets at bob and at each
    // other with no entry refused and no fork anywhere.
    let after_a = a.post(general, "alice's old device, after the backup").await.unwrap();
    let after_r = r.post(general, "alice's restored device").await.unwrap();
    b.post(general, "bob, meanwhile").await.unwrap();
    for _ in 0..2 {
        pull(&a, &b, wire, general).await;
        pull(&r, &b, wire, general).await;
        pull(&b, &a, wire, general).await;
        pull(&b, &r, wire, general).await;
        pull(&a, &r, wire, general).await;
        pull(&r, &a, wire, general).await;
    }
    let (sa, sb, sr) = (
        state(&a, general).await,
        state(&b, general).await,
        state(&r, general).await,
    );
    assert_eq!(sa, sb);
    assert_eq!(sa, sr);
    assert!(sr.contains_key(&after_a) && sa.contains_key(&after_r));
    assert_eq!(
        r.message(after_r).await.unwrap().message.author,
        a.whoami().user,
        "the restored device writes as the same user"
    );
    for (s, who) in [(&*a, "alice"), (&b, "bob"), (&r, "restored")] {
        clean(s, who).await;
    }

    // The restored log is a source of truth: a repair builds the same.
    r.close().await.unwrap();
    let rebuilt = Store::repair(dr.path(), &pass, config()).await.unwrap();
    assert!(rebuilt.open_report().rebuilt.is_some());
    assert_eq!(rebuilt.whoami().device, restored.device);
    assert_eq!(state(&rebuilt, general).await, sr);
    clean(&rebuilt, "restored, repaired").await;
    // A new master key gives the restored device a new peer id too.
    let node = rebuilt.node_secret().await.unwrap();
    rebuilt.close().await.unwrap();
    Store::rotate_master_key(dr.path(), &pass, &pass, config())
        .await
        .unwrap();
    let rotated = Store::open(dr.path(), &pass, config()).await.unwrap();
    assert_eq!(rotated.whoami().device, restored.device);
    assert_ne!(rotated.node_secret().await.unwrap(), node);
    assert_ne!(rotated.node_secret().await.unwrap(), a.node_secret().await.unwrap());
    clean(&rotated, "restored, rotated").await;
}

/// The head's length and each chunk's (offset, length with its word).
fn chunks(bytes: &[u8]) -> (usize, Vec<(usize, usize)>) {
    let header_len = u32::from_le_bytes(bytes[25..29].try_into().unwrap()) as usize;
    let mut at = 29 + header_len;
    let head = at;
    let mut out = Vec::new();
    while at < bytes.len() {
        let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = (word & !(1 << 31)) as usize;
        out.push((at, 4 + len));
        at += 4 + len;
    }
    (head, out)
}

fn refused(file: &Path, pass: &Passphrase) -> Error {
    check_backup(file, pass).expect_err("a bad backup is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cut_spliced_or_wrongly_unlocked_backup_is_refused_and_leaves_no_store() {
    let (da, dr, files) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    // Enough for several chunks (a chunk seals about 1 MiB), in texts
    // that do not deflate.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..400 {
        let text: String = (0..8000)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from(b'!' + (seed >> 58) as u8)
            })
            .collect();
        a.post(general, &format!("{i} {text}")).await.unwrap();
    }
    let (one, two) = (files.path().join("one"), files.path().join("two"));
    a.backup(&one).await.unwrap();
    a.post(general, "between the two backups").await.unwrap();
    a.backup(&two).await.unwrap();
    check_backup(&one, &pass).unwrap();
    let good = std::fs::read(&one).unwrap();
    let (head, parts) = chunks(&good);
    assert!(parts.len() >= 3, "{} chunks", parts.len());
    let bad = files.path().join("bad");

    // A wrong passphrase, for the check and for a restore.
    assert!(matches!(
        refused(&one, &Passphrase::new("nope")),
        Error::WrongPassphrase
    ));
    let r = Store::restore(&one, dr.path(), &Passphrase::new("nope"), Arc::default()).await;
    assert!(matches!(r, Err(Error::WrongPassphrase)), "{r:?}");

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("the head cut", good[..head - 3].to_vec()),
        ("no chunk", good[..head].to_vec()),
        ("cut inside a chunk", good[..parts[1].0 + 100].to_vec()),
        ("the last chunk dropped", good[..parts.last().unwrap().0].to_vec()),
        ("a byte after the end", [good.clone(), vec![0]].concat()),
        ("not a backup", b"HEARTHLG and some more bytes than a head".to_vec()),
    ];
    let mut flipped = good.clone();
    flipped[parts[1].0 + 200] ^= 1;
    cases.push(("a byte flipped", flipped));
    let mut swapped = good[..head].to_vec();
    swapped.extend_from_slice(&good[parts[1].0..parts[1].0 + parts[1].1]);
    swapped.extend_from_slice(&good[parts[0].0..parts[0].0 + parts[0].1]);
    swapped.extend_from_slice(&good[parts[2].0..]);
    cases.push(("two chunks swapped", swapped));
    let other = std::fs::read(&two).unwrap();
    let (_, other_parts) = chunks(&other);
    let mut spliced = good[..parts[1].0].to_vec();
    spliced.extend_from_slice(&other[other_parts[1].0..other_parts[1].0 + other_parts[1].1]);
    spliced.extend_from_slice(&good[parts[2].0..]);
    cases.push(("a chunk of another backup", spliced));
    for (what, bytes) in &cases {
        std::fs::write(&bad, bytes).unwrap();
        let e = refused(&bad, &pass);
        assert!(
            matches!(e, Error::Corrupted { .. } | Error::Invalid { .. }),
            "{what}: {e:?}"
        );
        // A restore refuses it too and leaves no store behind.
        let r = Store::restore(&bad, dr.path(), &pass, Arc::default()).await;
        assert!(r.is_err(), "{what}: restored");
        assert!(
            matches!(
                Store::open(dr.path(), &pass, config()).await,
                Err(Error::NotAStore { .. })
            ),
            "{what}: a store was left"
        );
    }

    // After all that, the good backup restores into the same directory,
    // and not over a store.
    Store::restore(&one, dr.path(), &pass, Arc::default()).await.unwrap();
    let r = Store::restore(&two, dr.path(), &pass, Arc::default()).await;
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    let r = Store::open(dr.path(), &pass, config()).await.unwrap();
    assert_eq!(r.all_messages(general).await.unwrap().len(), 400);
    clean(&r, "restored").await;
}

/// Two backups to one path at once each write a whole file (the second
/// replaces the first), a compaction asked for during a backup is refused
/// and one asked for after it runs, a backup into the store's own directory
/// is refused, and a restore goes only into a new or empty directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_to_one_path_compactions_and_directories_do_not_collide() {
    let (da, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let a = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let general = a.create_channel("general").await.unwrap();
    for i in 0..300 {
        a.post(general, &format!("post {i}")).await.unwrap();
    }
    let file = files.path().join("same");
    let (one, two) = tokio::join!(a.backup(&file), a.backup(&file));
    let (one, two) = (one.unwrap(), two.unwrap());
    let len = std::fs::metadata(&file).unwrap().len();
    assert!([one.bytes, two.bytes].contains(&len), "{len} is neither backup's");
    check_backup(&file, &pass).unwrap();
    let left: Vec<_> = std::fs::read_dir(files.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["same"], "no temporary file left");

    // A compaction asked for while a backup runs is refused; after it, it runs.
    let other = files.path().join("other");
    let (backed, compacted) = tokio::join!(a.backup(&other), async {
        tokio::task::yield_now().await;
        a.compact().await
    });
    backed.unwrap();
    if let Err(e) = compacted {
        assert!(e.to_string().contains("backup"), "{e}");
    }
    a.compact().await.unwrap();

    // Not into the store's own directory.
    for inside in [da.path().join("header"), da.path().join("log").join("x")] {
        let e = a.backup(&inside).await.unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    }
    assert!(Store::exists(da.path()));
    a.close().await.unwrap();
    Store::open(da.path(), &pass, config())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    // A restore goes into no directory that holds something else.
    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("notes.txt"), "mine").unwrap();
    std::fs::create_dir(full.path().join("log")).unwrap();
    let e = Store::restore(&file, full.path(), &pass, Arc::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    assert_eq!(std::fs::read(full.path().join("notes.txt")).unwrap(), b"mine");
    assert!(full.path().join("log").exists());
}
