//! A checkpoint due on time waits for a quiet moment of the store (2 ms
//! without a command), and a store never quiet still checkpoints once
//! overdue by another interval.
//!
//! In its own binary: it installs the process's global subscriber, since
//! the store logs its checkpoints from its own thread.

use std::time::{Duration, Instant};

use hearth_core::{KdfParams, Passphrase};
use hearth_store::{Config, Store};

#[path = "support/capture.rs"]
mod capture;
use capture::Captured;

fn checkpoints(out: &Captured) -> usize {
    out.text().lines().filter(|l| l.contains(" checkpoint ")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_waits_for_a_quiet_store_but_not_forever() {
    let out = Captured::install("hearth_store::persist=debug");
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_millis(150);
    let config = Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_checkpoint_interval(interval)
        .with_receipt_delay(Duration::from_secs(3600));
    let s = Store::create(dir.path(), &Passphrase::new("pw"), "a", config)
        .await
        .unwrap();
    let ch = s.create_channel("general").await.unwrap();
    s.checkpoint().await.unwrap();

    // A store that is never quiet (a query every 0.2 ms) checkpoints once
    // overdue: within about two intervals of the write.
    let before = checkpoints(&out);
    let wrote = Instant::now();
    s.post(ch, "hello").await.unwrap();
    let busy = async {
        while checkpoints(&out) == before {
            s.vector(ch).await.unwrap();
            tokio::time::sleep(Duration::from_micros(200)).await;
            assert!(wrote.elapsed() < Duration::from_secs(10), "no checkpoint while busy");
        }
        wrote.elapsed()
    };
    let took = busy.await;
    assert!(took >= interval, "checkpointed {took:?} after the write");

    // A quiet store checkpoints soon after the interval.
    let before = checkpoints(&out);
    let wrote = Instant::now();
    s.post(ch, "again").await.unwrap();
    while checkpoints(&out) == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(wrote.elapsed() < Duration::from_secs(10), "no checkpoint when quiet");
    }
    let took = wrote.elapsed();
    assert!(took >= interval, "checkpointed {took:?} after the write");
    s.close().await.unwrap();
}
