//! `hearth demo`: the main job, with no set-up. In a temporary directory it
//! creates a store, two channels and a conversation with threads, reactions, an
//! edit and a delete; closes the store; reopens it (a restart); prints the
//! recovered history and a verify summary. Then sync, on loopback only: Alice
//! links her phone, invites Bob into #general, the phone goes offline and
//! catches up, restarts in the middle of a sync, and all three end with
//! identical views, delivery and read receipts included.

use std::process::ExitCode;

use std::time::Duration;

use anyhow::{Result, bail};
use hearth::sync::{Multiaddr, NodeConfig, NodeEvent};
use hearth::{ChannelId, Config, Hearth, Passphrase, SyncHandle};
use serde_json::json;

use crate::output::{Names, message_json, message_line, print_json};

async fn show_channel(h: &Hearth, id: ChannelId, name: &str, json: bool) -> Result<()> {
    let names = Names {
        names: h.members(id).await?,
    };
    let page = h.page(id, None, 50).await?;
    if !json {
        println!("\n#{name} (newest first)");
    }
    for m in page {
        if json {
            let mut v = message_json(&m, &names);
            v["channel"] = json!(name);
            print_json(&v);
        } else {
            println!("  {}", message_line(&m, &names));
        }
        if m.reply_count > 0 {
            for r in h.thread(m.id).await?.replies {
                if json {
                    let mut v = message_json(&r, &names);
                    v["channel"] = json!(name);
                    print_json(&v);
                } else {
                    println!("      ↳ {}", message_line(&r, &names));
                }
            }
        }
    }
    Ok(())
}

/// Run the demo.
pub async fn run(json: bool) -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");
    let pass = Passphrase::new("demo passphrase (use a real one)");
    let say = |s: &str| {
        if !json {
            println!("{s}");
        }
    };
    say(&format!("Hearth demo: a store in {}", path.display()));

    let h = Hearth::create(&path, &pass, "alice", Config::default()).await?;
    let general = h.create_channel("general").await?;
    let random = h.create_channel("random").await?;
    say("created channels #general and #random");

    let standup = h.post(general, "Morning! Standup in 10 minutes.").await?;
    h.reply(standup, "Agenda: release checklist, then demos.").await?;
    h.reply(standup, "I'll bring the release notes.").await?;
    let lunch = h.post(general, "Who's up for lunch at 12:30?").await?;
    h.react(lunch, "🍕").await?;
    h.react(lunch, "👍").await?;
    h.reply(lunch, "Count me in, the usual place.").await?;
    let typo = h.post(general, "The release is on Fridya.").await?;
    h.edit(typo, "The release is on Friday.").await?;
    let oops = h.post(general, "oops, this was meant for someone else").await?;
    h.delete(oops).await?;
    h.mark_read(general, Some(lunch)).await?;
    let coffee = h.post(random, "Anyone tried the new coffee machine?").await?;
    h.react(coffee, "☕").await?;
    h.rename_channel(random, "watercooler").await?;
    say("posted a conversation: 2 threads, 3 reactions, an edit, a delete; read #general up to the lunch message");
    say("renamed #random to #watercooler");

    h.close().await?;
    say("\nclosed the store; reopening it (a restart)...");

    let h = Hearth::open(&path, &pass, Config::default()).await?;
    let channels = h.channels().await?;
    if !json {
        println!("\nchannels after the restart:");
    }
    for c in &channels {
        if json {
            print_json(&json!({"channel": c.name, "id": c.id.to_hex(), "messages": c.messages, "unread": c.unread}));
        } else {
            println!("  #{:<12} {} messages, {} unread", c.name, c.messages, c.unread);
        }
    }
    for c in &channels {
        show_channel(&h, c.id, &c.name, json).await?;
    }
    let report = h.verify().await?;
    let stats = h.stats().await?;
    if json {
        print_json(&json!({"verify": report, "stats": stats}));
    } else {
        println!(
            "\nverify: {} channels, {} feed entries, {} epochs checked: {}",
            report.channels,
            report.entries,
            report.epochs,
            if report.is_clean() { "clean" } else { "PROBLEMS" }
        );
        println!(
            "disk: {} bytes for {} messages, all sealed (most of it the journal, preallocated to 8 MiB)",
            stats.disk_bytes, stats.messages
        );
    }
    if !report.is_clean() {
        h.close().await?;
        bail!("verify found {} problems", report.problems.len());
    }
    let general = channels.iter().find(|c| c.name == "general").map(|c| c.id);
    let general = general.ok_or_else(|| anyhow::anyhow!("#general is missing"))?;
    let res = sync_demo(&h, dir.path(), &pass, general, lunch, standup, json).await;
    h.close().await?;
    res?;
    Ok(ExitCode::SUCCESS)
}

/// Everything a user sees of a channel, to compare devices.
async fn view_of(h: &Hearth, c: ChannelId) -> Result<String> {
    let mut out = String::new();
    for m in h.page(c, None, 1000).await? {
        out += &format!("{m:?}\n");
        if m.reply_count > 0 {
            out += &format!("{:?}\n", h.thread(m.id).await?.replies);
        }
    }
    Ok(out)
}

/// Wait until every device shows the same channel and holds the same entries.
async fn wait_identical(devices: &[&Hearth], c: ChannelId, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let first = view_of(devices[0], c).await?;
        let vector = devices[0].plumbing().vector(c).await?;
        let mut same = true;
        for d in &devices[1..] {
            same &= d.plumbing().vector(c).await? == vector && view_of(d, c).await? == first;
        }
        if same {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("devices did not converge within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(h: &Hearth) -> Result<SyncHandle> {
    let node = h
        .start_sync(NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..NodeConfig::default()
        })
        .await?;
    node.wait_listening(Duration::from_secs(2)).await?;
    Ok(node)
}

async fn addr_of(node: &SyncHandle) -> Result<Multiaddr> {
    node.listen_addrs()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))
}

#[allow(clippy::too_many_arguments)]
async fn sync_demo(
    laptop: &Hearth,
    dir: &std::path::Path,
    pass: &Passphrase,
    general: ChannelId,
    lunch: hearth::MessageId,
    standup: hearth::MessageId,
    json: bool,
) -> Result<()> {
    let say = |s: &str| {
        if !json {
            println!("{s}");
        } else {
            print_json(&json!({"step": s}));
        }
    };
    const T: Duration = Duration::from_secs(30);
    say("\n--- sync, on loopback (127.0.0.1); mDNS stays off ---");
    let laptop_node = start(laptop).await?;
    let laptop_addr = addr_of(&laptop_node).await?;
    say(&format!("Alice's laptop listens on {laptop_addr}"));

    // Alice links her phone: one-time ticket, a code both screens show,
    // then the sealed identity and channel keys.
    let ticket = laptop.link_ticket(vec![laptop_addr.clone()]).await?;
    let phone_dir = dir.join("phone");
    let on_phone = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let mut laptop_events = laptop_node.events();
    let confirm = {
        let (node, on_phone) = (laptop_node.clone(), on_phone.clone());
        tokio::spawn(async move {
            while let Ok(e) = laptop_events.recv().await {
                if let NodeEvent::LinkRequested { peer, code } = e {
                    // Alice looks at both screens: the phone shows its code
                    // before it asks, so it is there by now.
                    let same = on_phone
                        .lock()
                        .map(|c| c.as_deref() == Some(code.as_str()))
                        .unwrap_or(false);
                    let _ = node.confirm_link(peer, same).await;
                    return Some((code, same));
                }
            }
            None
        })
    };
    let phone = Hearth::create_linked(&phone_dir, pass, &ticket, Config::default(), T, |code| {
        if let Ok(mut c) = on_phone.lock() {
            *c = Some(code.to_string());
        }
    })
    .await?;
    let Some((code, true)) = confirm.await? else {
        anyhow::bail!("the two devices showed different link codes");
    };
    say(&format!(
        "linked Alice's phone with a one-time ticket ({}...): both screens showed {code}, Alice confirmed; same user, device {}",
        &ticket.to_string()[..24],
        &phone.whoami().device.to_hex()[..8]
    ));
    let mut phone_node = start(&phone).await?;
    phone_node.dial(laptop_addr.clone()).await?;
    wait_identical(&[laptop, &phone], general, T).await?;
    say(&format!(
        "the phone caught up: {} messages in #general",
        phone.channel(general).await?.messages
    ));

    // Alice invites Bob into #general: one use, for a day. The ticket holds
    // no channel key; Alice's node lets Bob in and seals the keys to his device.
    let invite = laptop
        .invite(general, vec![laptop_addr.clone()], Some(Duration::from_secs(86_400)), 1)
        .await?;
    let bob = Hearth::create(dir.join("bob"), pass, "bob", Config::default()).await?;
    bob.join(&invite).await?;
    let bob_node = start(&bob).await?;
    let laptop_peer = bob_node.connect(std::slice::from_ref(&laptop_addr), T).await?;
    // Lets Bob in through the pending invite, then syncs until both hold the same.
    let synced = bob_node.sync_until_equal(laptop_peer, T).await?;
    if synced.joined.is_empty() {
        bail!("Alice's node did not let Bob in: {:?}", synced.refused);
    }
    wait_identical(&[laptop, &bob], general, T).await?;
    say("Bob joined #general with a one-use invite that holds no channel key, and received its history");

    // The same ticket again, from someone else: the invite is used up.
    let eve = Hearth::create(dir.join("eve"), pass, "eve", Config::default()).await?;
    eve.join(&invite).await?;
    let eve_node = start(&eve).await?;
    eve_node.connect(std::slice::from_ref(&laptop_addr), T).await?;
    let attempt = eve.join_through(laptop_peer).await?;
    let Some((_, why)) = attempt.refused.first().filter(|_| attempt.joined.is_empty()) else {
        bail!("a used-up invite let a second user in");
    };
    say(&format!("Eve tried the same ticket: refused ({why})"));
    eve.close().await?;

    // The phone goes offline; Bob and the laptop keep talking.
    phone.close().await?;
    say("the phone goes offline");
    bob.reply(standup, "Bob here: I'll demo the sync.").await?;
    bob.react(lunch, "🥗").await?;
    bob.mark_read(general, None).await?;
    let late = laptop.post(general, "Release notes are up.").await?;
    let deadline = tokio::time::Instant::now() + T;
    while bob.message(late).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!("Alice's post never reached Bob");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.reply(late, "Thanks, reading them now.").await?;
    wait_identical(&[laptop, &bob], general, T).await?;
    say("while it was offline: Bob replied in the standup thread, reacted to lunch, read the channel; Alice posted");

    // The phone comes back, and restarts in the middle of its catch-up.
    let phone = Hearth::open(&phone_dir, pass, Config::default()).await?;
    phone_node = start(&phone).await?;
    let mut events = phone_node.events();
    phone_node.dial(laptop_addr.clone()).await?;
    let first = tokio::time::timeout(T, async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Store(hearth::store::StoreEvent::Received { messages, .. })) => return Ok(messages.len()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            }
        }
    })
    .await??;
    phone.close().await?;
    say(&format!(
        "the phone came back online, received {first} message(s), and restarted mid-sync"
    ));
    let phone = Hearth::open(&phone_dir, pass, Config::default()).await?;
    let phone_node = start(&phone).await?;
    phone_node.dial(laptop_addr.clone()).await?;
    bob_node.dial(addr_of(&phone_node).await?).await?;
    wait_identical(&[laptop, &phone, &bob], general, T).await?;
    say("after the restart it caught up; laptop, phone and Bob now show identical views:");
    show_channel(&phone, general, "general (on the phone)", json).await?;

    // Receipts for Alice's lunch message.
    let deadline = tokio::time::Instant::now() + T;
    let receipts = loop {
        let r = laptop.receipts(lunch).await?;
        if (r.delivered.len() >= 2 && !r.read.is_empty()) || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names = Names {
        names: laptop.members(general).await?,
    };
    let delivered: Vec<String> = receipts
        .delivered
        .iter()
        .map(|(u, d)| format!("{}'s device {}", names.of(u), &d.to_hex()[..8]))
        .collect();
    let read: Vec<String> = receipts.read.iter().map(|u| names.of(u)).collect();
    say(&format!(
        "receipts for \"Who's up for lunch\": delivered to {}; read by {}",
        delivered.join(", "),
        if read.is_empty() {
            "-".to_string()
        } else {
            read.join(", ")
        }
    ));
    for n in [&laptop_node, &phone_node, &bob_node] {
        n.stop().await;
    }
    for h in [&phone, &bob] {
        let r = h.verify().await?;
        if !r.is_clean() {
            bail!("verify found problems: {:?}", r.problems);
        }
    }
    phone.close().await?;
    bob.close().await?;
    say("verify on the phone and on Bob's device: clean");
    Ok(())
}
