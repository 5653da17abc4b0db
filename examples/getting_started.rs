//! Getting started: create a store, write a conversation, read it back,
//! close, reopen.
//!
//! ```sh
//! cargo run --example getting_started            # in a temporary directory
//! cargo run --example getting_started -- ./store # or in one of yours
//! ```

use hearth::{Config, Error, Hearth, Passphrase};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| temp.path().join("store"), Into::into);
    // The passphrase unlocks the store's key (Argon2id); everything on disk
    // is sealed under it.
    let pass = Passphrase::new("correct horse battery staple");

    let hearth = if Hearth::exists(&dir) {
        Hearth::open(&dir, &pass, Config::default()).await?
    } else {
        Hearth::create(&dir, &pass, "alice", Config::default()).await?
    };
    println!("store at {} for {}", dir.display(), hearth.whoami().name);

    // Writes return once they are durable (a crash right after loses nothing).
    let general = match hearth.resolve_channel("general").await {
        Ok(id) => id,
        Err(Error::NotFound { .. }) => hearth.create_channel("general").await?,
        Err(e) => return Err(e.into()),
    };
    let lunch = hearth.post(general, "lunch at noon?").await?;
    let reply = hearth.reply(lunch, "count me in").await?;
    hearth.react(lunch, "👍").await?;
    hearth.edit(lunch, "lunch at 12:30?").await?;
    hearth.mark_read(general, None).await?;

    // Pages are newest first; threads oldest first.
    for m in hearth.page(general, None, 10).await? {
        let reactions: Vec<String> = m
            .reactions
            .iter()
            .map(|(e, who)| format!("{e}×{}", who.len()))
            .collect();
        println!(
            "{} {}{} ({} replies) {}",
            m.id,
            m.text.as_deref().unwrap_or("(deleted)"),
            if m.edited { " (edited)" } else { "" },
            m.reply_count,
            reactions.join(" ")
        );
    }
    let thread = hearth.thread(lunch).await?;
    assert_eq!(thread.replies[0].id, reply);

    // Errors are one typed enum that says what to do.
    match hearth.post(general, &"x".repeat(hearth::MAX_TEXT_BYTES + 1)).await {
        Err(Error::TooLarge { limit, .. }) => println!("too long: the limit is {limit} bytes"),
        other => println!("unexpected: {other:?}"),
    }

    let info = hearth.channel(general).await?;
    println!("#{}: {} messages, {} unread", info.name, info.messages, info.unread);
    hearth.close().await?;

    // Everything is there after a reopen (or a crash).
    let hearth = Hearth::open(&dir, &pass, Config::default()).await?;
    let thread = hearth.thread(lunch).await?;
    println!(
        "after a reopen: {:?} has {} reply",
        thread.root.text,
        thread.replies.len()
    );
    hearth.close().await?;
    Ok(())
}
