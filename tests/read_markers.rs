//! Read markers only move forward, also across a restart.
//!
//! Regression: the "forward only" check once compared against epoch summaries,
//! which lag behind the staged ops by up to a few milliseconds, so two quick
//! `mark_read` calls (newest, then older) both passed; the document kept the
//! older one and after a reopen the marker had moved back.

use hearth::{Config, Hearth, KdfParams, Passphrase};

#[tokio::test]
async fn a_read_marker_never_moves_back() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
    let h = Hearth::create(dir.path(), &pass, "alice", config.clone()).await?;
    let ch = h.create_channel("general").await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.post(ch, &format!("m{i}")).await?);
    }
    h.mark_read(ch, Some(ids[4])).await?;
    h.mark_read(ch, Some(ids[2])).await?;
    assert_eq!(h.channel(ch).await?.read_up_to, Some(ids[4]));
    h.close().await?;

    let h = Hearth::open(dir.path(), &pass, config).await?;
    assert_eq!(h.channel(ch).await?.read_up_to, Some(ids[4]));
    // Marking the newest without naming it, right after a post, covers that post.
    let last = h.post(ch, "m5").await?;
    h.mark_read(ch, None).await?;
    assert_eq!(h.channel(ch).await?.read_up_to, Some(last));
    h.close().await?;
    Ok(())
}
