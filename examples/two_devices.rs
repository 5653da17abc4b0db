//! Two devices of one user: link a phone to a laptop with a one-time
//! ticket, catch it up, then chat live between them over loopback.
//!
//! ```sh
//! cargo run --example two_devices
//! ```
//!
//! On two machines it is the same, with the laptop listening on a reachable
//! address (`/ip4/0.0.0.0/tcp/4001`) and the ticket carried across (a QR
//! code, a message): the ticket holds the laptop's addresses and a one-time
//! secret, never a key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hearth::{Config, Event, Hearth, NodeConfig, Passphrase};

const T: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("correct horse battery staple");

    // The laptop: a store with some history, syncing on loopback.
    let laptop = Hearth::create(dir.path().join("laptop"), &pass, "alice", Config::default()).await?;
    let general = laptop.create_channel("general").await?;
    for text in ["welcome", "the plan for today", "lunch at noon?"] {
        laptop.post(general, text).await?;
    }
    let laptop_sync = laptop
        .start_sync(NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..NodeConfig::default()
        })
        .await?;
    let addrs = laptop_sync.wait_listening(T).await?;

    // Linking: the laptop offers a one-time ticket; the phone presents it
    // and shows a six-digit code; the laptop's user confirms the laptop
    // shows the same code. Nothing leaves the laptop before that.
    let ticket = laptop.link_ticket(addrs.clone()).await?;
    let phone_code = Arc::new(Mutex::new(None::<String>));
    let confirm = {
        let (node, phone_code) = (laptop_sync.clone(), phone_code.clone());
        let mut events = laptop.subscribe();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if let Event::LinkRequested { peer, code } = e {
                    // In an app: show `code` and ask the user whether the
                    // phone shows the same. Here both are on one screen.
                    let same = phone_code.lock().ok().and_then(|c| c.clone()) == Some(code.clone());
                    println!(
                        "laptop: a device asks to link, code {code}: {}",
                        if same { "same, confirmed" } else { "different, refused" }
                    );
                    node.confirm_link(peer, same).await.ok();
                    return;
                }
            }
        })
    };
    let phone = Hearth::create_linked(dir.path().join("phone"), &pass, &ticket, Config::default(), T, |code| {
        println!("phone: shows code {code}");
        *phone_code.lock().expect("not poisoned") = Some(code.to_string());
    })
    .await?;
    confirm.await?;
    println!(
        "phone: linked as user {} (the laptop's), device {}",
        phone.whoami().user,
        phone.whoami().device
    );

    // The phone catches up: its history arrives by sync.
    let phone_sync = phone.start_sync(NodeConfig::default()).await?;
    let laptop_peer = phone_sync.connect(&addrs, T).await?;
    let caught_up = phone_sync.sync_until_equal(laptop_peer, T).await?;
    println!("phone: caught up, {} entries received", caught_up.received);
    for m in phone.page(general, None, 10).await?.iter().rev() {
        println!("phone: #general: {}", m.text.as_deref().unwrap_or("(deleted)"));
    }

    // Live: each side shows what the other writes, as events.
    let mut on_phone = phone.subscribe();
    let mut on_laptop = laptop.subscribe();
    let question = laptop.post(general, "are you on your phone?").await?;
    let seen = wait(
        &mut on_phone,
        |e| matches!(e, Event::Message { id, local: false, .. } if *id == question),
    )
    .await?;
    println!("phone: got {:?}", phone.message(question).await?.message.text);
    let answer = phone.reply(question, "yes, on the train").await?;
    wait(
        &mut on_laptop,
        |e| matches!(e, Event::Reply { id, local: false, .. } if *id == answer),
    )
    .await?;
    println!(
        "laptop: got the reply {:?} ({} event(s) on the phone meanwhile)",
        laptop.message(answer).await?.message.text,
        seen
    );

    // Closing a store stops its node too.
    phone.close().await?;
    laptop.close().await?;
    Ok(())
}

/// Wait for the event `want` accepts; returns how many came before it.
async fn wait(events: &mut hearth::Events, want: impl Fn(&Event) -> bool) -> Result<usize, &'static str> {
    let mut before = 0;
    let deadline = tokio::time::Instant::now() + T;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
        if want(&e) {
            return Ok(before);
        }
        before += 1;
    }
    Err("the event never came")
}
