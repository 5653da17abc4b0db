//! Each command: open the store, call the API, print.

use std::collections::VecDeque;
use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hearth::{Ack, ChannelId, Config, Hearth, MessageId};
use serde::Deserialize;
use serde_json::json;

use crate::output::{Names, message_json, message_line, print_json};
use crate::{ChannelCmd, Cli, Command, DeviceCmd, InviteCmd, MemberCmd};

/// Writes kept in flight by `post --stdin` and `import`: enough to fill a group
/// commit, bounded so memory stays flat on any input size.
const IN_FLIGHT: usize = 2048;

async fn open(cli: &Cli) -> Result<Hearth> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    let h = Hearth::open(&cli.store, &pass, Config::default()).await?;
    let r = h.open_report();
    // Worth a line on stderr: the store was repaired or upgraded on the way in.
    if let Some(from) = r.migrated_from {
        eprintln!("hearth: migrated {} from store format {from}", cli.store.display());
    }
    if let Some(old) = r.moved_from {
        eprintln!(
            "hearth: this device now writes under {} (its key's id; no one can claim it); its feeds of {old} stay",
            h.whoami().device
        );
    }
    if let Some(old) = r.reborn_from {
        eprintln!(
            "hearth: this device continues as {}, a new device of its user: its last run sent entries before \
             they were durable and did not end cleanly, and some may have been lost; its peers give back what it \
             sent as {old}",
            h.whoami().device
        );
    }
    if let Some(why) = &r.rebuilt {
        eprintln!(
            "hearth: rebuilt the database of {} from its feed log ({} entries): {why}",
            cli.store.display(),
            r.log_entries
        );
    }
    if !r.loose_permissions.is_empty() {
        eprintln!(
            "hearth: warning: {} held {} path(s) other accounts could read or write ({}); made owner-only",
            cli.store.display(),
            r.loose_permissions.len(),
            r.loose_permissions
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(h)
}

/// `hearth repair`: rebuild sled from the feed log, then verify.
/// `passwd --rotate-key`: a new master key, and the store re-sealed under it.
async fn rotate_key(cli: &Cli) -> Result<ExitCode> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    let new = crate::pass::new_passphrase()?;
    let started = Instant::now();
    let report = Hearth::rotate_master_key(&cli.store, &pass, &new, Config::default()).await?;
    let took = started.elapsed();
    // Reopened once: sled is rebuilt from the re-sealed log now rather than
    // at the next command, and the new peer id is known.
    let h = Hearth::open(&cli.store, &new, Config::default()).await?;
    let peer = hearth::sync::peer_id_of_secret(&h.plumbing().store().node_secret().await?)?;
    let v = h.verify().await?;
    h.close().await?;
    if cli.json {
        print_json(&json!({
            "passphrase": "changed", "master_key": "rotated", "batches": report.batches,
            "resealed": report.resealed, "files": report.files, "peer_id": peer.to_string(),
            "verify_clean": v.is_clean(), "seconds": took.as_secs_f64(),
        }));
    } else {
        println!(
            "master key replaced in {:.2} s: {} log records and {} node files re-sealed; verify: {}",
            took.as_secs_f64(),
            report.resealed,
            report.files,
            if v.is_clean() { "clean" } else { "problems found" }
        );
        println!("this device's peer id is now {peer}: tickets and addresses printed before no longer reach it");
    }
    Ok(if v.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `hearth migrate [--check]`: what a migration would do, or do it (an open).
async fn migrate(cli: &Cli, check: bool) -> Result<ExitCode> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    let plan = Hearth::migration_plan(&cli.store, &pass).await?;
    let from = plan
        .from
        .map_or("unknown (sled does not open)".to_string(), |f| f.to_string());
    if check {
        if cli.json {
            print_json(&json!({ "from": plan.from, "to": plan.to, "steps": plan.steps, "migrated": false }));
        } else if plan.steps.is_empty() {
            println!("store format {from}: nothing to migrate");
        } else {
            println!("store format {from} -> {}:", plan.to);
            for s in &plan.steps {
                println!("  {s}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let h = Hearth::open(&cli.store, &pass, Config::default()).await?;
    let report = h.open_report().clone();
    let v = h.verify().await?;
    h.close().await?;
    if cli.json {
        print_json(&json!({
            "from": plan.from, "to": plan.to, "steps": plan.steps, "migrated": !plan.steps.is_empty(),
            "rebuilt": report.rebuilt, "verify_clean": v.is_clean(),
        }));
    } else if plan.steps.is_empty() {
        println!(
            "store format {from}: nothing to migrate; verify: {}",
            if v.is_clean() { "clean" } else { "problems found" }
        );
    } else {
        println!(
            "migrated from format {from} to {} ({} steps); verify: {}",
            plan.to,
            plan.steps.len(),
            if v.is_clean() { "clean" } else { "problems found" }
        );
    }
    Ok(if v.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `hearth backup FILE`: a backup of the store, taken while it is open.
async fn backup(cli: &Cli, file: &std::path::Path) -> Result<ExitCode> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    let h = Hearth::open(&cli.store, &pass, Config::default()).await?;
    let progress = std::sync::Arc::new(hearth::CompactProgress::default());
    let shown = crate::progress::Copying::show("backing up", progress.clone());
    let report = h.backup_with(file, progress).await;
    drop(shown);
    let closed = h.close().await;
    let report = report?;
    closed?;
    if cli.json {
        print_json(&json!({
            "file": report.path, "bytes": report.bytes, "log_records": report.log_records,
            "rows": report.rows_copied, "writes_applied": report.writes_applied,
            "paused_ms": report.paused.as_secs_f64() * 1e3, "seconds": report.took.as_secs_f64(),
        }));
    } else {
        println!(
            "backup written to {} in {:.2} s: {} bytes, {} log records, {} rows (writes waited {:.1} ms)",
            report.path.display(),
            report.took.as_secs_f64(),
            report.bytes,
            report.log_records,
            report.rows_copied,
            report.paused.as_secs_f64() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `hearth backup --check FILE`: read it whole, write nothing.
fn backup_check(cli: &Cli, file: &std::path::Path) -> Result<ExitCode> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    match hearth::check_backup(file, &pass) {
        Ok(info) => {
            let s = &info.summary;
            if cli.json {
                print_json(&json!({
                    "ok": true, "user": s.user.to_hex(), "device": s.device.to_hex(), "name": info.name,
                    "taken_ms": s.taken_ms, "store_format": s.store_format, "channels": s.channels,
                    "log_records": s.log_records, "rows": s.rows, "chunks": info.chunks, "bytes": info.bytes,
                }));
            } else {
                println!(
                    "backup ok: {} ({}), device {}, taken at {} (unix ms), store format {}, {} channel(s), {} log records, {} rows, {} bytes",
                    info.name,
                    s.user,
                    s.device,
                    s.taken_ms,
                    s.store_format,
                    s.channels,
                    s.log_records,
                    s.rows,
                    info.bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (hearth::store::Error::WrongPassphrase | hearth::store::Error::Io(_))) => Err(e.into()),
        Err(e) => {
            if cli.json {
                print_json(&json!({"ok": false, "error": e.to_string()}));
            } else {
                eprintln!("error: {} is not a whole backup: {e}", file.display());
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// `hearth restore FILE`: the backup becomes the store in --store, as a new
/// device of the same user.
async fn restore(cli: &Cli, file: &std::path::Path) -> Result<ExitCode> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    let progress = std::sync::Arc::new(hearth::CompactProgress::default());
    let shown = crate::progress::Copying::show("restoring", progress.clone());
    let report = Hearth::restore(file, &cli.store, &pass, progress).await;
    drop(shown);
    let report = report?;
    let h = Hearth::open(&cli.store, &pass, Config::default()).await?;
    let v = h.verify().await?;
    h.close().await?;
    if cli.json {
        print_json(&json!({
            "dir": cli.store, "user": report.info.summary.user.to_hex(),
            "device": report.device.to_hex(), "backed_up_device": report.info.summary.device.to_hex(),
            "taken_ms": report.info.summary.taken_ms, "seconds": report.took.as_secs_f64(),
            "verify_clean": v.is_clean(),
        }));
    } else {
        println!(
            "restored {} into {} in {:.2} s as a new device {} of {} (the backup was of device {}); verify: {}",
            file.display(),
            cli.store.display(),
            report.took.as_secs_f64(),
            report.device,
            report.info.name,
            report.info.summary.device,
            if v.is_clean() { "clean" } else { "problems found" }
        );
    }
    Ok(if v.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `hearth compact`: the bytes of deleted texts leave the store, then verify.
async fn compact(cli: &Cli) -> Result<ExitCode> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    let started = Instant::now();
    let h = Hearth::open(&cli.store, &pass, Config::default()).await?;
    let progress = std::sync::Arc::new(hearth::CompactProgress::default());
    let shown = crate::progress::Copying::show("compacting", progress.clone());
    let report = h.compact_with(progress).await;
    drop(shown);
    let report = report?;
    let took = started.elapsed();
    let v = h.verify().await?;
    h.close().await?;
    let after = hearth::store::dir_bytes(&cli.store);
    if cli.json {
        print_json(&json!({
            "entries_rewritten": report.entries_rewritten, "texts_dropped": report.texts_dropped,
            "records": report.records, "log_bytes_before": report.log_bytes_before,
            "log_bytes_after": report.log_bytes_after, "store_bytes_before": report.store_bytes_before,
            "store_bytes_after": after, "verify_clean": v.is_clean(), "seconds": took.as_secs_f64(),
        }));
    } else {
        println!(
            "compacted in {:.2} s: {} entries rewritten, {} deleted texts dropped; store {} -> {} bytes; verify: {}",
            took.as_secs_f64(),
            report.entries_rewritten,
            report.texts_dropped,
            report.store_bytes_before,
            after,
            if v.is_clean() { "clean" } else { "problems found" }
        );
    }
    Ok(if v.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn repair(cli: &Cli) -> Result<ExitCode> {
    let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), false)?;
    let started = Instant::now();
    let h = Hearth::repair(&cli.store, &pass, Config::default()).await?;
    let took = started.elapsed();
    let report = h.open_report().clone();
    let v = h.verify().await?;
    if cli.json {
        print_json(&json!({"open": report, "verify": v, "seconds": took.as_secs_f64()}));
    } else {
        println!(
            "rebuilt {} from its feed log in {:.2} s: {} batches, {} entries; {} journal records replayed",
            cli.store.display(),
            took.as_secs_f64(),
            report.log_batches,
            report.log_entries,
            report.replayed_records
        );
        if let Some(t) = &report.log_tail {
            println!("the log's readable part ended early: {t}");
        }
        for s in &report.skipped {
            println!("skipped: {s}");
        }
        println!("verify: {}", if v.is_clean() { "clean" } else { "problems found" });
        for p in &v.problems {
            println!("problem: {}: {}", p.place, p.detail);
        }
    }
    h.close().await?;
    Ok(if v.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn names(h: &Hearth, channel: ChannelId) -> Result<Names> {
    Ok(Names {
        names: h.members(channel).await?,
    })
}

/// Run a parsed command line.
/// Write `bytes` to stdout; a reader that stopped reading (a closed pipe)
/// is no error.
fn print_all(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init {
            link: Some(ticket),
            timeout,
            ..
        } => {
            let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), true)?;
            return crate::net::init_linked(&cli.store, &pass, ticket, Duration::from_secs(*timeout), cli.json).await;
        }
        Command::Init { user, .. } => {
            let pass = crate::pass::passphrase(cli.passphrase_file.as_deref(), true)?;
            let h = Hearth::create(&cli.store, &pass, user, Config::default()).await?;
            let w = h.whoami().clone();
            if cli.json {
                print_json(
                    &json!({"dir": w.dir, "user": w.user.to_hex(), "device": w.device.to_hex(), "name": w.name}),
                );
            } else {
                println!("created store at {} for {} (user {})", w.dir.display(), w.name, w.user);
            }
            h.close().await?;
        }
        Command::Demo => return crate::demo::run(cli.json).await,
        Command::Completions { shell } => {
            // Made in memory first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            let mut cmd = <crate::Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "hearth", &mut script);
            return print_all(&script);
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<crate::Cli as clap::CommandFactory>::command()).render(&mut page)?;
            return print_all(&page);
        }
        Command::Relay {
            listen,
            peer,
            retention,
        } => {
            let retention = match retention.as_str() {
                "off" => None,
                span => Some(crate::parse_span(span).map_err(|e| anyhow::anyhow!(e))?),
            };
            return crate::net::relay(&cli.store, listen.clone(), peer.clone(), retention).await;
        }
        Command::Bench(args) => return crate::bench::run(args, cli.json).await,
        Command::Lab(args) => return crate::lab::run(args, cli.json).await,
        Command::LabForward { tun, delay_ms } => {
            let (tun, delay) = (tun.clone(), std::time::Duration::from_millis(*delay_ms));
            return tokio::task::spawn_blocking(move || crate::lab::forward(&tun, delay)).await?;
        }
        Command::Repair => return repair(&cli).await,
        Command::Migrate { check } => return migrate(&cli, *check).await,
        Command::Compact => return compact(&cli).await,
        Command::Backup { file, check: true } => return backup_check(&cli, file),
        Command::Backup { file, check: false } => return backup(&cli, file).await,
        Command::Restore { file } => return restore(&cli, file).await,
        Command::Passwd { rotate_key: true } => return rotate_key(&cli).await,
        _ => {
            let h = open(&cli).await?;
            let code = run_on(&cli, &h).await;
            h.close().await?;
            return code;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_on(cli: &Cli, h: &Hearth) -> Result<ExitCode> {
    match &cli.command {
        Command::Link { listen, timeout } => {
            return crate::net::link(h, listen.clone(), Duration::from_secs(*timeout), cli.json).await;
        }
        Command::Invite { cmd: Some(cmd), .. } => invite_cmd(cli, h, cmd).await?,
        Command::Invite {
            cmd: None,
            channel,
            addr,
            expires,
            uses,
        } => {
            let channel = channel.as_deref().unwrap_or_default();
            crate::net::invite(h, channel, addr, *expires, uses.unwrap_or(0), cli.json).await?
        }
        Command::Join { ticket, timeout } => {
            return crate::net::join(h, ticket, Duration::from_secs(*timeout), cli.json).await;
        }
        Command::Chat {
            channel,
            listen,
            peer,
            offline,
            log: _,
        } => {
            let config = (!*offline).then(|| hearth::sync::NodeConfig {
                listen: listen.clone(),
                peers: peer.clone(),
                ..Default::default()
            });
            return crate::chat::chat(h, config, channel.as_deref()).await;
        }
        Command::Sync { peer, relay, timeout } => {
            let (addr, trusted) = match (peer, relay) {
                (Some(p), None) => (p, false),
                (None, Some(r)) => (r, true),
                _ => bail!("give one of --peer and --relay"),
            };
            return crate::net::sync(h, addr, trusted, Duration::from_secs(*timeout), cli.json).await;
        }
        Command::Node {
            listen,
            peer,
            relay,
            via,
            relay_server,
            bootstrap,
            no_discovery,
            no_send_early,
            mdns,
            exit_on_eof,
            anti_entropy,
        } => {
            // A relay this user names is trusted with the channels' access
            // keys (never their content keys): it must be named by peer id.
            let relays = relay
                .iter()
                .map(|a| {
                    hearth::sync::peer_of(a).ok_or_else(|| {
                        anyhow::anyhow!("--relay {a}: the address must end in /p2p/<the relay's peer id>")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let config = hearth::sync::NodeConfig {
                listen: listen.clone(),
                peers: peer.iter().chain(relay).cloned().collect(),
                relays,
                via: via.clone(),
                serve_circuits: *relay_server,
                bootstrap: bootstrap.clone(),
                discovery: !*no_discovery,
                send_early: !*no_send_early,
                mdns: *mdns,
                anti_entropy: Duration::from_secs((*anti_entropy).max(1)),
                ..Default::default()
            };
            return crate::net::node(h, config, *exit_on_eof).await;
        }
        Command::Channel(ChannelCmd::Create { name }) => {
            let id = h.create_channel(name).await?;
            if cli.json {
                print_json(&json!({"id": id.to_hex(), "name": name}));
            } else {
                println!("{id}");
            }
        }
        Command::Channel(ChannelCmd::List) => {
            for c in h.channels().await? {
                if cli.json {
                    print_json(&json!({
                        "id": c.id.to_hex(), "name": c.name, "messages": c.messages,
                        "unread": c.unread, "newest": c.newest.map(|m| m.to_hex()), "read_up_to": c.read_up_to.map(|m| m.to_hex()),
                        "retention_secs": c.retention, "pending": false,
                    }));
                } else {
                    let keep = c.retention.map(|s| format!("  kept {s} s")).unwrap_or_default();
                    println!(
                        "{}  {:<24} {:>8} messages {:>6} unread{keep}",
                        &c.id.to_hex()[..16],
                        c.name,
                        c.messages,
                        c.unread
                    );
                }
            }
            // Invites kept by `join` that no member's node has let in yet.
            for t in h.pending_invites().await? {
                let hearth::sync::ticket::Ticket::Join { channel, name, .. } = t else {
                    continue;
                };
                if cli.json {
                    print_json(&json!({"id": channel.to_hex(), "name": name, "pending": true}));
                } else {
                    println!(
                        "{}  {:<24} (invited: waiting for a member to let this device in)",
                        &channel.to_hex()[..16],
                        name
                    );
                }
            }
        }
        Command::Member(cmd) => member(cli, h, cmd).await?,
        Command::Device(cmd) => device(cli, h, cmd).await?,
        Command::Channel(ChannelCmd::Rename { channel, name }) => {
            let id = h.resolve_channel(channel).await?;
            h.rename_channel(id, name).await?;
            done(cli, json!({"id": id.to_hex(), "name": name}));
        }
        Command::Channel(ChannelCmd::Retention { channel, keep }) => {
            let id = h.resolve_channel(channel).await?;
            let keep = match keep.as_str() {
                "off" => None,
                span => Some(crate::parse_span(span).map_err(|e| anyhow::anyhow!(e))?),
            };
            h.set_retention(id, keep).await?;
            done(
                cli,
                json!({"id": id.to_hex(), "retention_secs": keep.map(|d| d.as_secs())}),
            );
        }
        Command::Post {
            channel,
            text,
            stdin,
            bulk,
            reply_to,
        } => {
            let id = h.resolve_channel(channel).await?;
            if *stdin && *bulk {
                stream_bulk(cli, h, id, Source::Stdin(*reply_to), false).await?;
            } else if *stdin {
                stream_posts(cli, h, id, Source::Stdin(*reply_to)).await?;
            } else {
                let text = text.as_deref().unwrap_or_default();
                let msg = match reply_to {
                    Some(to) => h.queue_post(id, text, Some(*to)).await?.await?,
                    None => h.post(id, text).await?,
                };
                print_id(cli, msg);
            }
        }
        Command::React { msg, emoji, remove } => {
            if *remove {
                h.unreact(*msg, emoji).await?
            } else {
                h.react(*msg, emoji).await?
            }
            done(cli, json!({"id": msg.to_hex(), "emoji": emoji, "removed": remove}));
        }
        Command::Edit { msg, text } => {
            h.edit(*msg, text).await?;
            done(cli, json!({"id": msg.to_hex(), "edited": true}));
        }
        Command::Delete { msg } => {
            h.delete(*msg).await?;
            done(cli, json!({"id": msg.to_hex(), "deleted": true}));
        }
        Command::Read { channel, up_to } => {
            let id = h.resolve_channel(channel).await?;
            h.mark_read(id, *up_to).await?;
            let unread = h.unread(id).await?;
            if cli.json {
                print_json(&json!({"channel": id.to_hex(), "unread": unread}));
            } else {
                println!("{unread} unread");
            }
        }
        Command::Log { channel, limit, before } => {
            let id = h.resolve_channel(channel).await?;
            let names = names(h, id).await?;
            for m in h.page(id, *before, *limit).await? {
                if cli.json {
                    print_json(&message_json(&m, &names))
                } else {
                    println!("{}", message_line(&m, &names))
                }
            }
        }
        Command::Thread { msg } => {
            let loc = h.message(*msg).await?;
            let names = names(h, loc.channel).await?;
            let t = h.thread(*msg).await?;
            if cli.json {
                print_json(&message_json(&t.root, &names));
                t.replies.iter().for_each(|m| print_json(&message_json(m, &names)));
            } else {
                println!("{}", message_line(&t.root, &names));
                t.replies
                    .iter()
                    .for_each(|m| println!("  ↳ {}", message_line(m, &names)));
            }
        }
        Command::Show { msg } => {
            let loc = h.message(*msg).await?;
            let names = names(h, loc.channel).await?;
            let m = &loc.message;
            let receipts = h.receipts(*msg).await?;
            let delivered: Vec<String> = receipts
                .delivered
                .iter()
                .map(|(u, d)| format!("{} ({})", names.of(u), &d.to_hex()[..8]))
                .collect();
            let read: Vec<String> = receipts.read.iter().map(|u| names.of(u)).collect();
            if cli.json {
                let mut v = message_json(m, &names);
                v["channel"] = json!(loc.channel.to_hex());
                v["delivered"] = json!(
                    receipts
                        .delivered
                        .iter()
                        .map(|(u, d)| json!({"user": u.to_hex(), "name": names.of(u), "device": d.to_hex()}))
                        .collect::<Vec<_>>()
                );
                v["read_by"] = json!(
                    receipts
                        .read
                        .iter()
                        .map(|u| json!({"user": u.to_hex(), "name": names.of(u)}))
                        .collect::<Vec<_>>()
                );
                print_json(&v);
            } else {
                println!("id:       {}", m.id);
                println!("channel:  {}", loc.channel);
                println!("author:   {} ({})", names.of(&m.author), m.author);
                println!("time:     {} ms since the Unix epoch", m.id.timestamp().millis());
                let gone = if m.dropped { "(text dropped)" } else { "(deleted)" };
                println!("text:     {}", m.text.as_deref().unwrap_or(gone));
                println!("edited:   {}", m.edited);
                println!("deleted:  {}", m.deleted);
                if let Some(r) = m.reply_to {
                    println!("reply to: {r}");
                }
                println!("replies:  {}", m.reply_count);
                for (emoji, users) in &m.reactions {
                    let who: Vec<String> = users.iter().map(|u| names.of(u)).collect();
                    println!("reaction: {emoji} {}", who.join(", "));
                }
                println!(
                    "delivered: {}",
                    if delivered.is_empty() {
                        "-".into()
                    } else {
                        delivered.join(", ")
                    }
                );
                println!(
                    "read by:  {}",
                    if read.is_empty() { "-".into() } else { read.join(", ") }
                );
            }
        }
        Command::Import {
            channel,
            file,
            new: false,
        } => {
            let id = h.resolve_channel(channel).await?;
            stream_bulk(cli, h, id, Source::JsonLines(file.clone()), true).await?;
        }
        Command::Import {
            channel,
            file,
            new: true,
        } => {
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(file)?
            };
            let export = hearth::Export::from_json(&bytes)?;
            let r = h.import_export(&export, Some(channel)).await?;
            let id = r.channel.expect("a new channel");
            if cli.json {
                print_json(&json!({
                    "channel": id.to_string(), "messages": r.messages, "edited": r.edited,
                    "deleted": r.deleted, "reactions": r.reactions, "reactions_left_out": r.reactions_left_out,
                }));
            } else {
                println!(
                    "{id}: {} messages ({} edited, {} deleted), {} of your reactions; {} reactions of others left out",
                    r.messages, r.edited, r.deleted, r.reactions, r.reactions_left_out
                );
            }
        }
        Command::Export { channel, format, out } => {
            let id = h.resolve_channel(channel).await?;
            let export = h.export(id).await?;
            let bytes = match format {
                crate::ExportFormat::Json => export.to_json(),
                crate::ExportFormat::Automerge => export.to_automerge(),
            };
            if out.as_os_str() == "-" {
                std::io::stdout().write_all(&bytes)?;
            } else {
                // Owner-only (0600), like the store: an export holds every text.
                hearth::store::write_atomic(out, &bytes)?;
                eprintln!(
                    "{} messages of {} written to {}",
                    export.messages.len(),
                    export.channel.name,
                    out.display()
                );
            }
        }
        Command::Stats => {
            let s = h.stats().await?;
            if cli.json {
                print_json(&serde_json::to_value(&s)?);
            } else {
                println!("channels:      {}", s.channels);
                println!("messages:      {}", s.messages);
                println!("feed entries:  {}", s.feed_entries);
                println!("epochs:        {} ({} in memory)", s.epochs, s.cached_epochs);
                println!("disk:          {} bytes", s.disk_bytes);
                println!("journal:       {} bytes", s.journal_bytes);
            }
        }
        Command::Verify { find: true } => {
            let mut text = String::new();
            std::io::stdin().read_line(&mut text)?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                anyhow::bail!("verify --find reads the text to look for from standard input: none came");
            }
            let places = h.plumbing().find_text(text).await?;
            if cli.json {
                print_json(&json!({ "found": places }));
            } else if places.is_empty() {
                println!("found nowhere");
            } else {
                for p in &places {
                    println!("found in {p}");
                }
            }
            if !places.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Verify { find: false } => {
            let r = h.verify().await?;
            if cli.json {
                let mut v = serde_json::to_value(&r)?;
                v["repair_would_help"] = json!(r.repair_would_help());
                print_json(&v);
            } else {
                println!(
                    "verified {} channels, {} feed entries, {} epochs, {} snapshots: {}",
                    r.channels,
                    r.entries,
                    r.epochs,
                    r.snapshots,
                    if r.is_clean() {
                        "clean".to_string()
                    } else {
                        format!("{} problems", r.problems.len())
                    }
                );
                for p in &r.problems {
                    println!("problem: {}: {}", p.place, p.detail);
                }
                if r.repair_would_help() {
                    println!("every problem is in rows built from the feed log: `hearth repair` builds them afresh");
                } else if !r.is_clean() {
                    println!(
                        "the feed log itself is damaged or behind: sync with a peer (`hearth sync`) to take \
                         back what is missing (see README, \"Recovering a store\")"
                    );
                }
            }
            if !r.is_clean() {
                eprintln!(
                    "error: verify found {} problem(s) in {}",
                    r.problems.len(),
                    cli.store.display()
                );
                return Ok(ExitCode::from(1));
            }
        }
        Command::Passwd { rotate_key: false } => {
            let new = crate::pass::new_passphrase()?;
            h.change_passphrase(&new).await?;
            done(cli, json!({"passphrase": "changed"}));
        }
        Command::Init { .. }
        | Command::Demo
        | Command::Completions { .. }
        | Command::Man
        | Command::Bench(_)
        | Command::Lab(_)
        | Command::LabForward { .. }
        | Command::Relay { .. }
        | Command::Repair
        | Command::Migrate { .. }
        | Command::Compact
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Passwd { rotate_key: true } => {
            unreachable!("handled before opening")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hearth device ...`.
async fn device(cli: &Cli, h: &Hearth, cmd: &DeviceCmd) -> Result<()> {
    match cmd {
        DeviceCmd::List => {
            for d in h.devices().await? {
                if cli.json {
                    print_json(&json!({
                        "device": d.device.to_hex(), "this": d.this, "former": d.former,
                        "channels": d.channels, "revoked_in": d.revoked_in,
                    }));
                } else {
                    println!(
                        "{}{}  {} channel(s){}",
                        d.device,
                        if d.this {
                            " (this device)"
                        } else if d.former {
                            " (this device's former id: its old feeds)"
                        } else {
                            ""
                        },
                        d.channels,
                        if d.revoked_in > 0 {
                            format!(", revoked in {}", d.revoked_in)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        DeviceCmd::Revoke { device } => {
            let lower = device.to_ascii_lowercase();
            let known = h.devices().await?;
            let matches: Vec<_> = known
                .iter()
                .filter(|d| lower.len() >= 4 && d.device.to_hex().starts_with(&lower))
                .collect();
            let target = match matches.as_slice() {
                [one] => one.device,
                [] => bail!("no device of yours matches {device:?} (see `hearth device list`)"),
                _ => bail!("{device:?} matches more than one device; give more of its id"),
            };
            let channels = h.revoke_device(target).await?;
            if cli.json {
                print_json(&json!({"revoked": target.to_hex(), "channels": channels}));
            } else {
                println!("revoked {target} in {channels} channel(s)");
            }
        }
    }
    Ok(())
}

/// `hearth member ...`.
async fn member(cli: &Cli, h: &Hearth, cmd: &MemberCmd) -> Result<()> {
    match cmd {
        MemberCmd::List { channel } => {
            let id = h.resolve_channel(channel).await?;
            let roster = h.roster(id).await?;
            if !cli.json && !roster.started {
                println!("(no roster yet: every member may write; the first to manage it becomes its owner)");
            }
            for m in &roster.members {
                let role = m.role.map(|r| r.to_string()).unwrap_or_else(|| "removed".into());
                if cli.json {
                    print_json(&json!({
                        "user": m.user.to_hex(), "name": m.name, "role": role,
                        "devices": m.devices.iter().map(|(d, seq)| json!({"device": d.to_hex(), "entries": seq})).collect::<Vec<_>>(),
                    }));
                } else {
                    println!(
                        "{}  {:<8} {:<24} {} device(s)",
                        &m.user.to_hex()[..16],
                        role,
                        m.name.as_deref().unwrap_or("-"),
                        m.devices.len()
                    );
                }
            }
        }
        MemberCmd::Remove { channel, user } => {
            let id = h.resolve_channel(channel).await?;
            let user = h.resolve_member(id, user).await?;
            h.remove_member(id, user).await?;
            done(cli, json!({"channel": id.to_hex(), "removed": user.to_hex()}));
        }
        MemberCmd::Role { channel, user, role } => {
            let id = h.resolve_channel(channel).await?;
            let user = h.resolve_member(id, user).await?;
            h.set_role(id, user, *role).await?;
            done(
                cli,
                json!({"channel": id.to_hex(), "user": user.to_hex(), "role": role.to_string()}),
            );
        }
        MemberCmd::Add { channel, user, role } => {
            let id = h.resolve_channel(channel).await?;
            let user = h.resolve_member(id, user).await?;
            h.add_member(id, user, *role).await?;
            done(
                cli,
                json!({"channel": id.to_hex(), "added": user.to_hex(), "role": role.to_string()}),
            );
        }
        MemberCmd::Leave { channel } => {
            let id = h.resolve_channel(channel).await?;
            h.leave(id).await?;
            done(cli, json!({"channel": id.to_hex(), "left": true}));
        }
    }
    Ok(())
}

async fn invite_cmd(cli: &Cli, h: &Hearth, cmd: &InviteCmd) -> Result<()> {
    match cmd {
        InviteCmd::List { channel } => {
            let id = h.resolve_channel(channel).await?;
            for i in h.invites(id).await? {
                if cli.json {
                    print_json(&json!({
                        "invite": i.id, "by": i.by.to_hex(), "expires_ms": i.expires, "uses": i.uses,
                        "used": i.used.iter().map(|u| u.to_hex()).collect::<Vec<_>>(), "closed": i.closed,
                    }));
                } else {
                    let uses = i.uses.map_or("any".to_string(), |u| u.to_string());
                    let state = i.closed.as_deref().unwrap_or("open");
                    println!(
                        "{}  by {}  used {}/{}  {}",
                        &i.id[..16],
                        &i.by.to_hex()[..16],
                        i.used.len(),
                        uses,
                        state
                    );
                }
            }
        }
        InviteCmd::Revoke { channel, invite } => {
            let id = h.resolve_channel(channel).await?;
            let invite = h.resolve_invite(id, invite).await?;
            h.revoke_invite(id, invite).await?;
            done(
                cli,
                json!({"channel": id.to_hex(), "revoked": hearth::core::member::invite_hex(&invite)}),
            );
        }
    }
    Ok(())
}

fn done(cli: &Cli, v: serde_json::Value) {
    if cli.json {
        print_json(&v);
    } else {
        println!("ok");
    }
}

fn print_id(cli: &Cli, id: MessageId) {
    if cli.json {
        print_json(&json!({"id": id.to_hex()}));
    } else {
        println!("{id}");
    }
}

/// Where streamed posts come from.
pub enum Source {
    /// Plain lines on standard input, all replying to the same message or none.
    Stdin(Option<MessageId>),
    /// JSON lines `{"text": .., "reply_to"?: ..}` from a file, or stdin for "-".
    JsonLines(PathBuf),
}

type Line = std::result::Result<(String, Option<MessageId>), String>;

/// Read the source on a blocking thread, one parsed line at a time.
fn read_source(source: Source, tx: tokio::sync::mpsc::Sender<Line>) {
    #[derive(Deserialize)]
    struct JsonLine {
        text: String,
        reply_to: Option<MessageId>,
    }
    let (reader, json, reply): (Box<dyn BufRead>, bool, Option<MessageId>) = match source {
        Source::Stdin(r) => (Box::new(std::io::stdin().lock()), false, r),
        Source::JsonLines(p) if p.as_os_str() == "-" => (Box::new(std::io::stdin().lock()), true, None),
        Source::JsonLines(p) => match std::fs::File::open(&p) {
            Ok(f) => (Box::new(std::io::BufReader::new(f)), true, None),
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("opening {}: {e}", p.display())));
                return;
            }
        },
    };
    for (n, line) in reader.lines().enumerate() {
        let item = match line {
            Err(e) => Err(format!("reading line {}: {e}", n + 1)),
            Ok(l) if !json => Ok((l, reply)),
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => serde_json::from_str::<JsonLine>(&l)
                .map(|j| (j.text, j.reply_to))
                .map_err(|e| format!("line {}: {e}", n + 1)),
        };
        let stop = item.is_err();
        if tx.blocking_send(item).is_err() || stop {
            return;
        }
    }
}

fn emit(json: bool, id: MessageId, out: &mut std::io::StdoutLock) -> Result<()> {
    if json {
        writeln!(out, "{}", json!({"id": id.to_hex()}))?
    } else {
        writeln!(out, "{id}")?
    }
    out.flush()?;
    Ok(())
}

/// On any error, the writes already submitted still become durable: print their
/// ids before reporting it, so the output names everything stored.
async fn drain(json: bool, queue: &mut VecDeque<Ack>, out: &mut std::io::StdoutLock<'_>, done: &mut u64) -> Result<()> {
    while let Some(p) = queue.pop_front() {
        if let Ok(o) = p.await {
            emit(json, o, out)?;
            *done += 1;
        }
    }
    Ok(())
}

/// `post --stdin`: a stream of messages with up to [`IN_FLIGHT`] in flight,
/// printing each id, in input order, as soon as that message is durable.
async fn stream_posts(cli: &Cli, h: &Hearth, channel: ChannelId, source: Source) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Line>(IN_FLIGHT);
    std::thread::spawn(move || read_source(source, tx));
    let mut queue: VecDeque<Ack> = VecDeque::new();
    let mut done = 0u64;
    let mut eof = false;
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            biased;
            r = async { queue.front_mut().expect("guarded by the condition").await }, if !queue.is_empty() => {
                queue.pop_front();
                match r {
                    Ok(o) => emit(cli.json, o, &mut out)?,
                    Err(e) => {
                        drain(cli.json, &mut queue, &mut out, &mut done).await?;
                        bail!("{e} ({done} messages were stored)");
                    }
                }
                done += 1;
            }
            line = rx.recv(), if !eof && queue.len() < IN_FLIGHT => match line {
                Some(Ok((text, _))) if text.is_empty() => eprintln!("hearth: skipped an empty line (no id printed for it)"),
                Some(Ok((text, reply_to))) => queue.push_back(h.queue_post(channel, &text, reply_to).await?),
                Some(Err(e)) => {
                    drain(cli.json, &mut queue, &mut out, &mut done).await?;
                    bail!("{e} ({done} messages before it were stored)");
                }
                None => eof = true,
            },
            else => break,
        }
    }
    Ok(())
}

/// The last line of an import: how many, how fast.
fn import_summary(json: bool, done: u64, started: Instant, out: &mut std::io::StdoutLock<'_>) -> Result<()> {
    let secs = started.elapsed().as_secs_f64();
    if json {
        writeln!(out, "{}", json!({"imported": done, "secs": secs}))?;
    } else {
        writeln!(
            out,
            "imported {done} messages in {secs:.2} s ({:.0} msg/s)",
            done as f64 / secs.max(1e-9)
        )?;
    }
    Ok(())
}

/// `post --stdin --bulk` and `import`: the lines through the bulk path
/// (`Store::import_posts`), in runs of whatever has arrived (up to
/// [`hearth::IMPORT_CHUNK`]), each run's ids printed once it is durable.
/// A line that cannot be a post ends the import after the run before it.
async fn stream_bulk(cli: &Cli, h: &Hearth, channel: ChannelId, source: Source, import: bool) -> Result<()> {
    // On a terminal only (indicatif hides it otherwise).
    let progress = import.then(|| crate::progress::messages("imported"));
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Line>(hearth::IMPORT_CHUNK);
    std::thread::spawn(move || read_source(source, tx));
    let mut out = std::io::stdout().lock();
    let mut done = 0u64;
    let mut failed = None;
    while failed.is_none() {
        let Some(first) = rx.recv().await else { break };
        let mut run = Vec::new();
        let mut next = Some(first);
        while let Some(line) = next.take() {
            match line.and_then(|(text, reply_to)| {
                if text.is_empty() {
                    return Ok(None);
                }
                hearth::core::bulk::check_text(&text).map_err(|e| e.to_string())?;
                Ok(Some(hearth::ImportPost { text, reply_to }))
            }) {
                Ok(Some(p)) => run.push(p),
                Ok(None) => eprintln!("hearth: skipped an empty line (no id printed for it)"),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if run.len() < hearth::IMPORT_CHUNK {
                next = rx.try_recv().ok();
            }
        }
        if run.is_empty() {
            continue;
        }
        let ids = h
            .import_posts(channel, run)
            .await
            .map_err(|e| anyhow::anyhow!("{e} ({done} messages were stored)"))?;
        done += ids.len() as u64;
        if !import {
            for id in ids {
                emit(cli.json, id, &mut out)?;
            }
        } else if let Some(bar) = &progress {
            bar.set_position(done);
        }
    }
    if let Some(e) = failed {
        bail!("{e} ({done} messages before it were stored)");
    }
    if import {
        if let Some(bar) = &progress {
            bar.finish_and_clear();
        }
        import_summary(cli.json, done, started, &mut out)?;
    }
    Ok(())
}
