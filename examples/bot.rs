//! A bot that answers messages in a channel: it subscribes to its store's
//! events and replies in the thread of every message that asks it
//! something. Alice, on her own device, asks it twice over loopback sync.
//!
//! ```sh
//! cargo run --example bot
//! ```

use std::time::Duration;

use futures::StreamExt;
use hearth::{Config, Event, Hearth, NodeConfig, Passphrase};

const T: Duration = Duration::from_secs(30);

/// What the bot answers, if anything.
fn answer(text: &str) -> Option<String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("!echo ") {
        Some(rest.to_string())
    } else if text == "!time" {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(format!("it is {secs} seconds past the epoch"))
    } else {
        None
    }
}

/// The bot's loop: every message by someone else that asks it something
/// gets a reply in its thread. Ends when its store closes.
async fn run_bot(bot: Hearth) -> Result<(), hearth::Error> {
    let mut events = bot.subscribe();
    while let Some(e) = events.next().await {
        let (id, local) = match e {
            Event::Message { id, local, .. } | Event::Reply { id, local, .. } => (id, local),
            // Missed events: a real bot would re-read the channel's newest page.
            Event::Lagged { missed } => {
                eprintln!("bot: missed {missed} events");
                continue;
            }
            _ => continue,
        };
        if local {
            continue; // its own replies
        }
        let text = bot.message(id).await?.message.text.unwrap_or_default();
        if let Some(reply) = answer(&text) {
            bot.reply(id, &reply).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("correct horse battery staple");
    let alice = Hearth::create(dir.path().join("alice"), &pass, "alice", Config::default()).await?;
    let bot = Hearth::create(dir.path().join("bot"), &pass, "bot", Config::default()).await?;

    // Alice's channel, her node, and an invite the bot joins through.
    let general = alice.create_channel("general").await?;
    let alice_sync = alice
        .start_sync(NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..NodeConfig::default()
        })
        .await?;
    let addrs = alice_sync.wait_listening(T).await?;
    let invite = alice
        .invite(general, addrs.clone(), Some(Duration::from_secs(600)), 1)
        .await?;
    bot.join(&invite).await?;
    let bot_sync = bot.start_sync(NodeConfig::default()).await?;
    let alice_peer = bot_sync.connect(&addrs, T).await?;
    bot_sync.sync_until_equal(alice_peer, T).await?;
    let bot_task = tokio::spawn(run_bot(bot.clone()));

    // Alice asks; the bot's answers come back as replies.
    let mut events = alice.subscribe();
    for question in ["!echo hello, bot", "just chatting", "!time"] {
        let id = alice.post(general, question).await?;
        if answer(question).is_none() {
            println!("alice: {question:?} (the bot stays quiet)");
            continue;
        }
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let e = tokio::time::timeout_at(deadline, events.next())
                .await?
                .ok_or("events ended")?;
            if let Event::Reply {
                id: reply,
                root,
                local: false,
                ..
            } = e
                && root == id
            {
                let text = alice.message(reply).await?.message.text.unwrap_or_default();
                println!("alice: {question:?} -> bot: {text:?}");
                break;
            }
        }
    }
    bot.close().await?;
    bot_task.await??;
    alice.close().await?;
    Ok(())
}
