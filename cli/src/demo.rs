//! `hearth demo`: the main job, with no set-up. In a temporary directory it
//! creates a store, two channels and a conversation with threads, reactions, an
//! edit and a delete; closes the store; reopens it (a restart); prints the
//! recovered history and a verify summary.

use std::process::ExitCode;

use anyhow::{Result, bail};
use hearth::{ChannelId, Config, Hearth, Passphrase};
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
    h.close().await?;
    if !report.is_clean() {
        bail!("verify found {} problems", report.problems.len());
    }
    Ok(ExitCode::SUCCESS)
}
