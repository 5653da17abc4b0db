//! `hearth bench lifecycle`: what a delete that deletes costs (issue 9).
//!
//! A channel of `--messages` messages (default 100,000) is built through the
//! import path; then one message is deleted and the store compacted
//! (`Hearth::compact`: a new feed log written from sled's rows, committed,
//! swapped in; sled and the journal deleted) and opened again (sled built
//! afresh from the new log, the cost a compaction has today). Side by side:
//! a plain close and open of the same store, and the store's size on disk
//! before and after. The target is delete + compaction under 1 s.

use std::time::Instant;

use anyhow::Result;
use hearth::{Config, Hearth, KdfParams, Passphrase, dir_bytes};
use serde_json::json;

/// Options of `hearth bench lifecycle`.
#[derive(clap::Args, Debug, Clone)]
pub struct LifecycleArgs {
    /// Messages in the channel.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Bytes of each message's text.
    #[arg(long, default_value_t = 100)]
    pub text_len: usize,
}

pub async fn run(args: &LifecycleArgs, json_out: bool) -> Result<std::process::ExitCode> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("store");
    let pass = Passphrase::new("bench passphrase");
    let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
    let h = Hearth::create(&dir, &pass, "bench", config.clone()).await?;
    let ch = h.create_channel("big").await?;
    let t = Instant::now();
    super::hearth_stream(&h, ch, args.messages, args.text_len, 7).await?;
    let build_s = t.elapsed().as_secs_f64();
    let victim = h.page(ch, None, 1).await?[0].id;
    h.close().await?;
    // The store as it is, closed and opened (the floor of anything that
    // reopens it).
    let t = Instant::now();
    let h = Hearth::open(&dir, &pass, config.clone()).await?;
    h.page(ch, None, 50).await?;
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    let before = dir_bytes(&dir);
    let t = Instant::now();
    h.delete(victim).await?;
    let delete_ms = t.elapsed().as_secs_f64() * 1e3;
    h.close().await?;
    let t = Instant::now();
    let report = Hearth::compact(&dir, &pass, config.clone()).await?;
    let compact_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let h = Hearth::open(&dir, &pass, config).await?;
    let page = h.page(ch, None, 50).await?;
    let rebuild_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(page.iter().all(|m| m.id != victim || m.deleted));
    let clean = h.verify().await?.is_clean();
    h.close().await?;
    let after = dir_bytes(&dir);
    let total_ms = delete_ms + compact_ms + rebuild_ms;
    let out = json!({
        "messages": args.messages,
        "build_s": build_s,
        "delete_ms": delete_ms,
        "compact_ms": compact_ms,
        "reopen_after_compact_ms": rebuild_ms,
        "delete_compact_reopen_ms": total_ms,
        "plain_reopen_ms": reopen_ms,
        "over_plain_reopen": total_ms / reopen_ms,
        "texts_dropped": report.texts_dropped,
        "log_bytes_before": report.log_bytes_before,
        "log_bytes_after": report.log_bytes_after,
        "store_bytes_before": before,
        "store_bytes_after": after,
        "verify_clean": clean,
        "target_ms": 1000,
    });
    if json_out {
        println!("{out}");
    } else {
        println!(
            "{} messages: delete {delete_ms:.1} ms, compact {compact_ms:.0} ms, reopen (sled built afresh) \
             {rebuild_ms:.0} ms: {total_ms:.0} ms in all (target < 1000 ms); a plain reopen {reopen_ms:.0} ms\n\
             store {before} -> {after} bytes; verify: {}",
            args.messages,
            if clean { "clean" } else { "problems found" }
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
