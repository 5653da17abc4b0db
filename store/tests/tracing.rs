//! Tracing (issue 11): an open, a group commit, a checkpoint, an ingest, a
//! rejected entry and a compaction each leave an event a developer can turn on with
//! `RUST_LOG`, and no event carries a passphrase or a message's text.
//!
//! One test in its own binary: it installs the process's global subscriber,
//! since the store logs from threads of its own.

use hearth_core::Passphrase;
use hearth_store::Store;

#[path = "support/capture.rs"]
mod capture;
use capture::Captured;
#[path = "support/two.rs"]
mod two;
use two::{config, pull};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_durable_steps_and_rejections_are_traced_without_secrets() {
    let out = Captured::install("hearth_store=debug");

    let mut all = String::new();
    let dir = tempfile::tempdir().unwrap();
    let phrase = "correct horse battery staple";
    let pw = Passphrase::new(phrase);
    let secret_text = "the launch code is 0000";
    let a = Store::create(dir.path().join("a"), &pw, "alice", config())
        .await
        .unwrap();
    let ch = a.create_channel("general").await.unwrap();
    a.post(ch, secret_text).await.unwrap();
    a.checkpoint().await.unwrap();
    a.close().await.unwrap();

    // The open: where, how long, what it replayed.
    let a = Store::open(dir.path().join("a"), &pw, config()).await.unwrap();
    a.post(ch, "after the open").await.unwrap();
    a.checkpoint().await.unwrap();
    let lines = out.take(&mut all);
    assert!(lines.contains("store opened"), "{lines}");
    assert!(lines.contains("open_ms="), "{lines}");
    assert!(lines.contains("group committed"), "{lines}");
    assert!(lines.contains("checkpoint"), "{lines}");

    // An ingest, and an entry refused: a forged signature is the peer's fault.
    let b = Store::create(dir.path().join("b"), &pw, "bob", config()).await.unwrap();
    let keys = a.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    b.join_channel(keys).await.unwrap();
    pull(&a, &b, wire, ch).await;
    let lines = out.take(&mut all);
    assert!(
        lines.lines().any(|l| l.contains("ingest") && l.contains("accepted=")),
        "{lines}"
    );
    a.post(ch, "one more").await.unwrap();
    let have = b.vector(ch).await.unwrap();
    let mut batch = a.entries_after(wire, have, 16 * 1024, 64).await.unwrap();
    // A bit of the signed header flipped (the texts' pack at the end is
    // outside the signature).
    batch.entries.last_mut().unwrap()[40] ^= 1;
    let report = b.ingest(wire, batch.entries).await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    let lines = out.take(&mut all);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("WARN") && l.contains("entry rejected") && l.contains("peer_fault=true")),
        "{lines}"
    );

    // A compaction, after a delete.
    let gone = a.post(ch, "soon deleted").await.unwrap();
    a.delete(gone).await.unwrap();
    let report = a.compact().await.unwrap();
    let lines = out.take(&mut all);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("compaction committed") && l.contains(&format!("records={}", report.records))),
        "{lines}"
    );

    // A backup, and a restore of it.
    let file = dir.path().join("a.backup");
    let backup = a.backup(&file).await.unwrap();
    let lines = out.take(&mut all);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("backup written") && l.contains(&format!("bytes={}", backup.bytes))),
        "{lines}"
    );
    Store::restore(&file, dir.path().join("restored"), &pw, Default::default())
        .await
        .unwrap();
    let lines = out.take(&mut all);
    assert!(lines.contains("store restored from a backup"), "{lines}");

    // A store that does not open says why.
    let wrong = Store::open(dir.path().join("a-copy"), &pw, config()).await;
    assert!(wrong.is_err());
    a.close().await.unwrap();
    b.close().await.unwrap();
    let lines = out.take(&mut all);
    assert!(lines.contains("store did not open"), "{lines}");

    // Nothing traced holds the passphrase or a message's text.
    out.take(&mut all);
    for secret in [phrase, secret_text] {
        assert!(!all.contains(secret), "{secret:?} was traced");
    }
}
