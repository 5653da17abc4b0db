//! Network commands: invite, join, node, sync, relay.
//!
//! A store directory remembers three lists next to the sealed data, sealed too
//! (`Store::write_private_file`: addresses travel in tickets, but they show
//! where a device was reachable): `node.addrs`, the addresses the last
//! `hearth node` listened on (what `invite` puts in a ticket), `node.listen`,
//! the listen addresses it was given with the ports it bound (what a node
//! started without `--listen` asks for again, so that its tickets outlive a
//! restart), and `peers`, addresses learned from tickets (what `node` dials).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hearth::store::StoreEvent;
use hearth::sync::ticket::Ticket;
use hearth::sync::{Multiaddr, NodeConfig, NodeEvent, RelayStore, listen};
use hearth::{Event, Hearth, SyncHandle};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::output::print_json;

const ADDRS_FILE: &str = "node.addrs";
/// The listen addresses of the last `hearth node`, ports as bound.
const LISTEN_FILE: &str = "node.listen";
const PEERS_FILE: &str = "peers";

/// Where a node listens when told nothing: a free loopback TCP port.
fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("a valid address")
}

/// One multiaddr per line (a file written before they were sealed is read
/// the same way).
async fn read_addrs(h: &Hearth, name: &str) -> Result<Vec<Multiaddr>> {
    let bytes = h.plumbing().read_private_file(name).await?.unwrap_or_default();
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Replaced whole (never torn by a crash or a power cut), sealed.
async fn write_addrs(h: &Hearth, name: &str, addrs: &[Multiaddr]) -> Result<()> {
    let mut text = String::new();
    for a in addrs {
        text.push_str(&a.to_string());
        text.push('\n');
    }
    h.plumbing()
        .write_private_file(name, text.into_bytes())
        .await
        .with_context(|| format!("writing {name}"))
}

/// Most peer addresses kept for `hearth node` (the oldest go first).
const MAX_KEPT_PEERS: usize = 256;

/// Remember where a peer found through the DHT was reached, in place of
/// what was kept for it before (its address changed).
async fn learn_peer(h: &Hearth, addr: &Multiaddr) -> Result<()> {
    let peer = hearth::sync::peer_of(addr);
    let mut all = read_addrs(h, PEERS_FILE).await?;
    all.retain(|a| peer.is_none() || hearth::sync::peer_of(a) != peer);
    all.push(addr.clone());
    let over = all.len().saturating_sub(MAX_KEPT_PEERS);
    all.drain(..over);
    write_addrs(h, PEERS_FILE, &all).await
}

/// Remember peer addresses (from a ticket) for `hearth node`.
async fn remember_peers(h: &Hearth, addrs: &[Multiaddr]) -> Result<()> {
    let mut all = read_addrs(h, PEERS_FILE).await?;
    for a in addrs {
        if !all.contains(a) {
            all.push(a.clone());
        }
    }
    write_addrs(h, PEERS_FILE, &all).await
}

/// `hearth invite CHANNEL [--addr A]...`
pub async fn invite(
    h: &Hearth,
    channel: &str,
    addrs: &[Multiaddr],
    expires: Option<Duration>,
    uses: u32,
    as_json: bool,
) -> Result<()> {
    let channel = h.resolve_channel(channel).await?;
    let mut addrs = addrs.to_vec();
    if addrs.is_empty() {
        addrs = read_addrs(h, ADDRS_FILE).await?;
    }
    let ticket = h.invite(channel, addrs.clone(), expires, uses).await?;
    if addrs.is_empty() {
        eprintln!(
            "note: the ticket carries no address; run `hearth node --listen ...` once first, or pass --addr, \
             so that the invited device can reach this one"
        );
    }
    if as_json {
        print_json(&json!({
            "ticket": ticket.to_string(), "channel": channel.to_hex(),
            "invite": ticket.invite_id().map(|i| hearth::core::member::invite_hex(&i)),
            "expires": ticket.expires(), "uses": (uses != 0).then_some(uses),
        }));
    } else {
        println!("{ticket}");
        if let Some(id) = ticket.invite_id() {
            let id = hearth::core::member::invite_hex(&id);
            let uses = if uses == 0 {
                "any number of users".to_string()
            } else {
                format!("{uses} user(s)")
            };
            let ends = expires.map_or("until revoked".to_string(), |d| format!("for {} s", d.as_secs()));
            eprintln!(
                "invite {}: lets in {uses}, {ends}; the ticket holds no channel key. End it with `hearth invite revoke {} {}`",
                &id[..8],
                channel.to_hex().get(..8).unwrap_or_default(),
                &id[..8]
            );
        }
    }
    Ok(())
}

/// `hearth join TICKET`: join (an invite that can end: keep it until a
/// member's node lets this device in), remember the inviter's addresses, try
/// to be let in and to sync now.
pub async fn join(h: &Hearth, ticket: &str, timeout: Duration, as_json: bool) -> Result<ExitCode> {
    let ticket: Ticket = ticket.parse().context("reading the ticket")?;
    let joined = h.join(&ticket).await?;
    remember_peers(h, ticket.addrs()).await?;
    let (channel, name) = match &joined {
        hearth::Joined::Channel(c) => (*c, h.channel(*c).await?.name),
        hearth::Joined::Pending { channel, name } => (*channel, name.clone()),
    };
    let mut synced = None;
    let mut refused = Vec::new();
    if !timeout.is_zero() {
        for addrs in by_peer(ticket.addrs()) {
            let before = held_entries(h).await?;
            match sync_once(h, addrs.clone(), false, timeout).await {
                Ok(o) => {
                    // The peer may push the new channel's entries itself (its
                    // session started when the join was written): count what
                    // is held now.
                    let received = held_entries(h).await?.saturating_sub(before);
                    refused.extend(o.refused);
                    let via = o.via.unwrap_or_else(|| addrs[0].clone());
                    synced = Some((via, (received, o.sent)));
                    break;
                }
                Err(e) => eprintln!("note: {}: {e:#}", addrs[0]),
            }
        }
    }
    let member = h.channel(channel).await.is_ok();
    let reached = synced.is_some();
    if as_json {
        print_json(&json!({
            "channel": channel.to_hex(), "name": name, "pending": !member,
            "synced_with": synced.as_ref().map(|(a, _)| a.to_string()),
            "received": synced.as_ref().map(|(_, o)| o.0),
            "refused": refused.iter().map(|(_, why)| why).collect::<Vec<_>>(),
        }));
    } else if !member {
        for (_, why) in &refused {
            eprintln!("note: {why}");
        }
        println!(
            "kept the invite to {name} ({channel}): a member's node lets this device in when one is reachable \
             (`hearth node` or `hearth sync`)"
        );
    } else {
        match synced {
            Some((addr, (received, _))) => {
                println!("joined {name} ({channel}); {received} entries from {addr}")
            }
            None => println!("joined {channel}; its history arrives when a peer is reachable (`hearth node`)"),
        }
    }
    // A member refused the invite (revoked, expired, used up): say so.
    if !member && reached && !refused.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Let pending invites in through `peer` (for `hearth node`), printing what
/// happened as JSON lines.
async fn join_through(h: &Hearth, peer: hearth::sync::PeerId) -> Result<hearth::JoinAttempt> {
    let attempt = h.join_through(peer).await?;
    for (channel, name) in &attempt.joined {
        print_json(&json!({"event": "joined", "channel": channel.to_hex(), "name": name, "peer": peer.to_string()}));
    }
    for (name, why) in &attempt.refused {
        print_json(&json!({"event": "invite_refused", "name": name, "peer": peer.to_string(), "why": why}));
    }
    Ok(attempt)
}

/// Entries of other devices held, over every channel.
async fn held_entries(h: &Hearth) -> Result<u64> {
    let me = h.whoami().device;
    Ok(h.plumbing()
        .vectors()
        .await?
        .iter()
        .flat_map(|(_, v)| v.0.iter())
        .filter(|(d, _)| **d != me)
        .fold(0u64, |n, (_, p)| n.saturating_add(p.seq)))
}

/// A ticket's addresses grouped by the peer they reach, in order: a peer
/// is dialed at all of its addresses at once (some are private ones that
/// time out from elsewhere, one may be a circuit through a relay).
fn by_peer(addrs: &[Multiaddr]) -> Vec<Vec<Multiaddr>> {
    let mut groups: Vec<(Option<hearth::PeerId>, Vec<Multiaddr>)> = Vec::new();
    for addr in addrs {
        let peer = hearth::sync::peer_of(addr);
        match groups.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, list)) => list.push(addr.clone()),
            None => groups.push((peer, vec![addr.clone()])),
        }
    }
    groups.into_iter().map(|(_, list)| list).collect()
}

/// Dial one peer (at each of `addrs` at once, all ending in its
/// `/p2p/<peer id>`), let pending invites in through it, reconcile until a
/// session finds every shared channel equal (with `trusted`, the peer is a
/// relay this user trusts: it is granted every channel).
async fn sync_once(h: &Hearth, addrs: Vec<Multiaddr>, trusted: bool, timeout: Duration) -> Result<hearth::SyncReport> {
    let first = addrs.first().context("no address")?;
    let peer = hearth::sync::peer_of(first).context("the address must end in /p2p/<peer id>")?;
    let node = h
        .start_sync(NodeConfig {
            relays: if trusted { vec![peer] } else { Vec::new() },
            ..NodeConfig::default()
        })
        .await?;
    let _bar = crate::progress::Receiving::show(h);
    let res = async {
        let started = tokio::time::Instant::now();
        node.connect(&addrs, timeout).await?;
        node.sync_until_equal(peer, timeout.saturating_sub(started.elapsed()))
            .await
    }
    .await;
    h.stop_sync().await;
    match res {
        Err(hearth::Error::Timeout { .. }) => bail!("not in sync after {} s", timeout.as_secs()),
        other => Ok(other?),
    }
}

/// `hearth sync --peer ADDR`: exit 0 once both sides hold the same entries.
pub async fn sync(h: &Hearth, peer: &Multiaddr, trusted: bool, timeout: Duration, as_json: bool) -> Result<ExitCode> {
    match sync_once(h, vec![peer.clone()], trusted, timeout).await {
        Ok(hearth::SyncReport {
            received,
            sent,
            refused,
            ..
        }) => {
            for (name, why) in refused {
                eprintln!("note: the invite to {name} was not taken: {why}");
            }
            if as_json {
                print_json(
                    &json!({"event": "synced", "peer": peer.to_string(), "received": received, "sent": sent, "in_sync": true}),
                );
            } else {
                println!("in sync with {peer}: {received} entries received, {sent} sent");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("sync with {peer} failed: {e:#}"),
    }
}

/// One JSON-line command on a node's stdin.
#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum NodeCmd {
    Post {
        channel: String,
        text: String,
        #[serde(default)]
        reply_to: Option<hearth::MessageId>,
    },
    Reply {
        to: hearth::MessageId,
        text: String,
    },
    React {
        msg: hearth::MessageId,
        emoji: String,
        #[serde(default)]
        remove: bool,
    },
    Edit {
        msg: hearth::MessageId,
        text: String,
    },
    Delete {
        msg: hearth::MessageId,
    },
    Read {
        channel: String,
        #[serde(default)]
        up_to: Option<hearth::MessageId>,
    },
    /// Write a backup of the store this node serves (`hearth backup`, which
    /// cannot open a store a node holds).
    Backup {
        file: std::path::PathBuf,
    },
    Invite {
        channel: String,
        /// How long the invite lets people in ("24h"); default: until revoked.
        #[serde(default)]
        expires: Option<String>,
        /// How many users it lets in; default: any number.
        #[serde(default)]
        uses: Option<u32>,
    },
}

async fn node_cmd(h: &Hearth, node: &SyncHandle, line: &str) -> Result<Value> {
    let cmd: NodeCmd = serde_json::from_str(line).context("not a command")?;
    let (name, id) = match cmd {
        NodeCmd::Backup { file } => {
            let r = h.backup(&file).await?;
            return Ok(json!({
                "event": "done", "cmd": "backup", "file": r.path, "bytes": r.bytes,
                "log_records": r.log_records, "rows": r.rows_copied, "writes_applied": r.writes_applied,
                "paused_ms": r.paused.as_secs_f64() * 1e3, "seconds": r.took.as_secs_f64(),
            }));
        }
        NodeCmd::Invite { channel, expires, uses } => {
            let channel = h.resolve_channel(&channel).await?;
            let expires = expires
                .as_deref()
                .map(crate::parse_span)
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            if uses == Some(0) {
                bail!("uses must be at least 1 (leave it out for any number)");
            }
            let ticket = h
                .invite(channel, node.listen_addrs().await?, expires, uses.unwrap_or(0))
                .await?;
            return Ok(json!({
                "event": "done", "cmd": "invite", "ticket": ticket.to_string(),
                "invite": ticket.invite_id().map(|i| hearth::core::member::invite_hex(&i)),
            }));
        }
        NodeCmd::Post {
            channel,
            text,
            reply_to,
        } => {
            let channel = h.resolve_channel(&channel).await?;
            ("post", Some(h.queue_post(channel, &text, reply_to).await?.await?))
        }
        NodeCmd::Reply { to, text } => ("reply", Some(h.reply(to, &text).await?)),
        NodeCmd::React { msg, emoji, remove } => {
            if remove {
                h.unreact(msg, &emoji).await?
            } else {
                h.react(msg, &emoji).await?
            }
            ("react", None)
        }
        NodeCmd::Edit { msg, text } => {
            h.edit(msg, &text).await?;
            ("edit", None)
        }
        NodeCmd::Delete { msg } => {
            h.delete(msg).await?;
            ("delete", None)
        }
        NodeCmd::Read { channel, up_to } => {
            h.mark_read(h.resolve_channel(&channel).await?, up_to).await?;
            ("read", None)
        }
    };
    let mut v = json!({"event": "done", "cmd": name});
    if let Some(id) = id {
        v["id"] = json!(id.to_hex());
    }
    Ok(v)
}

fn event_json(e: NodeEvent) -> Option<Value> {
    Some(match e {
        NodeEvent::Listening { addr } => json!({"event": "listening", "addr": addr.to_string()}),
        NodeEvent::PeerConnected { peer, addr } => {
            json!({"event": "peer_connected", "peer": peer.to_string(), "addr": addr.to_string()})
        }
        NodeEvent::PeerDisconnected { peer } => json!({"event": "peer_disconnected", "peer": peer.to_string()}),
        NodeEvent::Synced {
            peer,
            channels,
            received,
            sent,
            pushed,
            round_trips,
            in_sync,
        } => json!({
            "event": "synced", "peer": peer.to_string(), "channels": channels, "received": received,
            "sent": sent, "pushed": pushed, "round_trips": round_trips, "in_sync": in_sync,
        }),
        NodeEvent::Rejected { peer, reason, dropped } => {
            json!({"event": "rejected", "peer": peer.to_string(), "reason": reason, "dropped": dropped})
        }
        NodeEvent::Incompatible { peer, offers } => json!({
            "event": "incompatible", "peer": peer.to_string(), "offers": offers,
            "speaks": hearth::sync::proto::PROTOCOL.to_string(),
        }),
        NodeEvent::DialFailed { addr, error, retry_in } => json!({
            "event": "dial_failed", "addr": addr.to_string(), "error": error, "retry_in_ms": retry_in.as_millis() as u64,
        }),
        NodeEvent::Reserved { relay } => json!({"event": "reserved", "relay": relay.to_string()}),
        NodeEvent::ReservationFailed { relay, error } => {
            json!({"event": "reservation_failed", "relay": relay.to_string(), "error": error})
        }
        NodeEvent::HolePunch { peer, error } => {
            json!({"event": "hole_punch", "peer": peer.to_string(), "direct": error.is_none(), "error": error})
        }
        NodeEvent::Discovered { peer, addr } => {
            json!({"event": "discovered", "peer": peer.to_string(), "addr": addr.to_string()})
        }
        NodeEvent::Reachability { addr, reachable } => {
            json!({"event": "reachability", "addr": addr.to_string(), "reachable": reachable})
        }
        NodeEvent::Store(StoreEvent::Forked {
            channel,
            user,
            device,
            seq,
        }) => json!({
            "event": "forked", "channel": channel.to_hex(), "user": user.to_hex(), "device": device.to_hex(), "seq": seq,
        }),
        _ => return None,
    })
}

/// The JSON line of an app-level event (docs/node-protocol.md); peers and
/// sessions are left to the node's own lines.
async fn app_event_json(h: &Hearth, e: Event) -> Option<Value> {
    let text = |id| async move { h.message(id).await.ok().and_then(|l| l.message.text) };
    Some(match e {
        Event::Message {
            channel,
            id,
            author,
            local,
        } => json!({
            "event": "message", "channel": channel.to_hex(), "id": id.to_hex(), "author": author.to_hex(),
            "local": local, "text": text(id).await,
        }),
        Event::Reply {
            channel,
            id,
            root,
            author,
            local,
        } => json!({
            "event": "reply", "channel": channel.to_hex(), "id": id.to_hex(), "root": root.to_hex(),
            "author": author.to_hex(), "local": local, "text": text(id).await,
        }),
        Event::Edited {
            channel,
            msg,
            by,
            local,
        } => json!({
            "event": "edited", "channel": channel.to_hex(), "msg": msg.to_hex(), "by": by.to_hex(), "local": local,
            "text": text(msg).await,
        }),
        Event::Deleted {
            channel,
            msg,
            by,
            local,
        } => json!({
            "event": "deleted", "channel": channel.to_hex(), "msg": msg.to_hex(), "by": by.to_hex(), "local": local,
        }),
        Event::ReactionAdded {
            channel,
            msg,
            user,
            emoji,
            local,
        } => reaction_json(channel, msg, user, &emoji, true, local),
        Event::ReactionRemoved {
            channel,
            msg,
            user,
            emoji,
            local,
        } => reaction_json(channel, msg, user, &emoji, false, local),
        Event::ReadMarker {
            channel,
            user,
            up_to,
            local,
        } => json!({
            "event": "read_marker", "channel": channel.to_hex(), "user": user.to_hex(), "up_to": up_to.to_hex(),
            "local": local,
        }),
        Event::ChannelCreated { channel, name, local } => {
            json!({"event": "channel_created", "channel": channel.to_hex(), "name": name, "local": local})
        }
        Event::ChannelRenamed { channel, name, local } => {
            json!({"event": "channel_renamed", "channel": channel.to_hex(), "name": name, "local": local})
        }
        Event::MemberJoined { channel, user } => {
            json!({"event": "member_joined", "channel": channel.to_hex(), "user": user.to_hex()})
        }
        Event::MemberLeft { channel, user } => {
            json!({"event": "member_left", "channel": channel.to_hex(), "user": user.to_hex()})
        }
        Event::Receipt {
            channel,
            user,
            device,
            author,
            up_to,
        } => json!({
            "event": "receipt", "kind": "delivered", "channel": channel.to_hex(), "user": user.to_hex(),
            "device": device.to_hex(), "writer_device": author.to_hex(), "up_to": up_to.to_hex(),
        }),
        Event::SyncProgress {
            channel,
            entries,
            messages,
        } => json!({"event": "sync_progress", "channel": channel.to_hex(), "entries": entries, "messages": messages}),
        Event::Lagged { missed } => json!({"event": "lagged", "missed": missed}),
        _ => return None,
    })
}

fn reaction_json(
    channel: hearth::ChannelId,
    msg: hearth::MessageId,
    user: hearth::UserId,
    emoji: &str,
    added: bool,
    local: bool,
) -> Value {
    json!({
        "event": "reaction", "channel": channel.to_hex(), "msg": msg.to_hex(), "user": user.to_hex(),
        "emoji": emoji, "added": added, "local": local,
    })
}

/// SIGINT or SIGTERM. The handlers are installed when this is called (not
/// when it is first awaited): call it before announcing anything, so that a
/// signal sent right after the announcement is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let recv = |s: &mut Option<tokio::signal::unix::Signal>| {
            let s = s.take();
            async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            _ = recv(&mut term) => {}
            _ = recv(&mut int) => {}
        }
    }
}

/// `hearth node`: run until SIGINT/SIGTERM (or stdin closes with `--exit-on-eof`).
pub async fn node(h: &Hearth, mut config: NodeConfig, exit_on_eof: bool) -> Result<ExitCode> {
    // Without --listen: the addresses of the last run, on the ports it bound,
    // so that the tickets and peer lists printed before a restart still reach
    // this node (loopback TCP the first time).
    let remembered = config.listen.is_empty();
    if remembered {
        config.listen = read_addrs(h, LISTEN_FILE).await?;
        if config.listen.is_empty() {
            config.listen.push(loopback());
        }
    }
    for a in read_addrs(h, PEERS_FILE).await? {
        if !config.peers.contains(&a) {
            config.peers.push(a);
        }
    }
    let signals = shutdown_signal();
    // Dial after subscribing, so that no peer_connected event is missed.
    let peers = std::mem::take(&mut config.peers);
    // What to try when the last run's addresses cannot be had (a port taken
    // meanwhile, an address the machine no longer has): the same addresses
    // on ports of the system's choice, then loopback.
    let mut fallbacks = if remembered {
        vec![
            vec![loopback()],
            config.listen.iter().map(listen::with_any_port).collect(),
        ]
    } else {
        Vec::new()
    };
    let node = loop {
        match h.start_sync(config.clone()).await {
            Ok(node) => break node,
            Err(hearth::Error::Network(why)) if !fallbacks.is_empty() => {
                print_json(&json!({"event": "listen_moved", "error": why}));
                config.listen = fallbacks.pop().expect("not empty");
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut events = node.events();
    for p in peers {
        node.dial(p).await?;
    }
    // Listen addresses may come up before the subscription: report them from the node.
    let addrs = node.wait_listening(LISTEN_WAIT).await.unwrap_or_default();
    write_addrs(h, ADDRS_FILE, &addrs).await?;
    write_addrs(h, LISTEN_FILE, &listen::with_bound_ports(&config.listen, &addrs)).await?;
    for a in &addrs {
        print_json(&json!({"event": "listening", "addr": a.to_string()}));
    }
    let printer = {
        let h = h.clone();
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        print_json(&json!({"event": "lagged", "missed": n}));
                        continue;
                    }
                    Err(_) => return,
                };
                if let NodeEvent::PeerConnected { peer, .. } = &e {
                    // Invites kept by `hearth join`: any member's node lets
                    // this device in; then a session brings the history.
                    let (h, node, peer) = (h.clone(), node.clone(), *peer);
                    tokio::spawn(async move {
                        if let Ok(a) = join_through(&h, peer).await
                            && !a.joined.is_empty()
                        {
                            let _ = node.sync_with(peer).await;
                        }
                    });
                }
                if let NodeEvent::Discovered { addr, .. } = &e
                    && let Err(err) = learn_peer(&h, addr).await
                {
                    print_json(&json!({"event": "error", "error": format!("keeping {addr}: {err:#}")}));
                }
                if let NodeEvent::Listening { addr } = &e {
                    if addrs.contains(addr) {
                        continue;
                    }
                    if let Ok(all) = node.listen_addrs().await {
                        let _ = write_addrs(&h, ADDRS_FILE, &all).await;
                    }
                }
                if let Some(v) = event_json(e) {
                    print_json(&v);
                }
            }
        })
    };
    // What changed, local and remote: the app-level events (peers and
    // sessions come from the node's own lines above, with more detail).
    let app = {
        let h = h.clone();
        let mut events = h.subscribe();
        tokio::spawn(async move {
            while let Some(e) = futures::StreamExt::next(&mut events).await {
                if let Some(v) = app_event_json(&h, e).await {
                    print_json(&v);
                }
            }
        })
    };
    let stdin = async {
        stdin_commands(h, &node).await;
        if !exit_on_eof {
            // Without a script attached, stdin closing does not stop the node.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = signals => {}
        _ = stdin => {}
    }
    h.stop_sync().await;
    // An aborted task may still be printing on another thread: `stopped`
    // goes out once it has ended, so that it is always the last line.
    printer.abort();
    app.abort();
    let _ = printer.await;
    let _ = app.await;
    print_json(&json!({"event": "stopped"}));
    Ok(ExitCode::SUCCESS)
}

/// Run the JSON-line commands of stdin until it closes; one result line each.
async fn stdin_commands(h: &Hearth, node: &SyncHandle) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        match node_cmd(h, node, &line).await {
            Ok(v) => print_json(&v),
            Err(e) => print_json(&json!({"event": "error", "input": line, "error": crate::output::one_line(&e)})),
        }
    }
}

/// How long `hearth link` serves the new device's first sync at most.
const SERVE_THE_NEW_DEVICE: Duration = Duration::from_secs(60);

/// `hearth link`: offer this user's identity to a new device, once; serve its
/// first sync; exit.
pub async fn link(h: &Hearth, mut listen: Vec<Multiaddr>, timeout: Duration, as_json: bool) -> Result<ExitCode> {
    if listen.is_empty() {
        listen.push(loopback());
    }
    let signals = shutdown_signal();
    let node = h
        .start_sync(NodeConfig {
            listen,
            ..NodeConfig::default()
        })
        .await?;
    let mut events = node.events();
    let addrs = node.wait_listening(LISTEN_WAIT).await.unwrap_or_default();
    let ticket = h.link_ticket(addrs).await?;
    if as_json {
        print_json(&json!({"event": "link_ticket", "ticket": ticket.to_string()}));
    } else {
        println!("{ticket}");
        eprintln!(
            "on the new device: hearth init --link <ticket above>   (waiting up to {} s)",
            timeout.as_secs()
        );
    }
    let wait = async {
        let mut answers = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut linked = None;
        // Once linked, the wait for the new device to come back is bounded.
        let mut until = None;
        loop {
            let next = match until {
                Some(t) => match tokio::time::timeout_at(t, events.recv()).await {
                    Ok(e) => e,
                    Err(_) => return Ok(()),
                },
                None => events.recv().await,
            };
            let Ok(e) = next else { break };
            match e {
                // Nothing leaves this device before its user compares the codes.
                NodeEvent::LinkRequested { peer, code } => {
                    if as_json {
                        print_json(&json!({"event": "link_request", "code": code}));
                    } else {
                        eprint!(
                            "a device asks to link. Does it show the code {code}? Answer y only if it does [y/N]: "
                        );
                    }
                    let answer = answers.next_line().await.ok().flatten().unwrap_or_default();
                    let accept = matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes");
                    let _ = node.confirm_link(peer, accept).await;
                    if !accept {
                        if as_json {
                            print_json(&json!({"event": "link_declined"}));
                        }
                        return Err("declined: the codes were not confirmed to match".to_string());
                    }
                }
                NodeEvent::Linked { peer } => {
                    linked = Some(peer);
                    until = Some(tokio::time::Instant::now() + SERVE_THE_NEW_DEVICE);
                    if as_json {
                        print_json(&json!({"event": "linked"}));
                    }
                }
                // The new device comes back under its own peer id and syncs
                // until it finds both sides equal (with its delivery receipts),
                // then hangs up: serve it until then. The link itself is done
                // (the bundle went out), so a new device that never comes back
                // ends the wait after a while, not in a failure.
                NodeEvent::PeerConnected { peer, .. } if linked.is_some_and(|l| l != peer) => {
                    let gone = async {
                        while let Ok(e) = events.recv().await {
                            if matches!(e, NodeEvent::PeerDisconnected { peer: p } if p == peer) {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout_at(until.unwrap_or_else(tokio::time::Instant::now), gone).await;
                    return Ok(());
                }
                _ => {}
            }
        }
        Err("the node stopped".to_string())
    };
    let done = tokio::select! {
        r = tokio::time::timeout(timeout, wait) => {
            r.unwrap_or_else(|_| Err(format!("no device completed the link within {} s", timeout.as_secs())))
        }
        _ = signals => Err("interrupted".to_string()),
    };
    h.stop_sync().await;
    match done {
        Ok(()) => {
            if !as_json {
                println!("linked a new device");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => bail!("no device was linked: {why}"),
    }
}

/// `hearth init --link TICKET`: become a new device of the ticket's user.
pub async fn init_linked(
    store: &Path,
    pass: &hearth::Passphrase,
    ticket: &str,
    timeout: Duration,
    as_json: bool,
) -> Result<ExitCode> {
    let ticket: Ticket = ticket.parse().context("reading the ticket")?;
    let show = |code: &str| {
        if as_json {
            print_json(&json!({"event": "link_code", "code": code}));
        } else {
            eprintln!("code: {code}. Check that the linking device shows the same code, and confirm it there.");
        }
    };
    let h = Hearth::create_linked(store, pass, &ticket, hearth::Config::default(), timeout, show).await?;
    let mut synced = (0, 0);
    for addrs in by_peer(ticket.addrs()) {
        if let Ok(r) = sync_once(&h, addrs, false, timeout).await {
            synced = (r.received, r.sent);
            break;
        }
    }
    let w = h.whoami().clone();
    let channels = h.channels().await?.len();
    if as_json {
        print_json(&json!({
            "dir": w.dir, "user": w.user.to_hex(), "device": w.device.to_hex(), "name": w.name,
            "channels": channels, "received": synced.0,
        }));
    } else {
        println!(
            "created store at {} as a new device of {} (user {}): {channels} channels, {} entries received",
            w.dir.display(),
            w.name,
            w.user,
            synced.0
        );
    }
    h.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// How long a node's listeners get to come up.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// `hearth relay --store DIR --listen A`: store and forward sealed entries.
pub async fn relay(
    dir: &Path,
    listen: Vec<Multiaddr>,
    peers: Vec<Multiaddr>,
    retention: Option<Duration>,
) -> Result<ExitCode> {
    if listen.is_empty() {
        bail!("a relay needs at least one --listen address");
    }
    hearth::store::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let signals = shutdown_signal();
    let relay = RelayStore::open_with(dir, hearth::sync::RelayConfig::default().with_retention(retention))?;
    let secret = relay_secret(dir)?;
    let node = hearth::sync::start(
        relay.clone(),
        &secret,
        NodeConfig {
            listen,
            peers,
            // Hearth's relays serve circuits too (NATed members reach each
            // other through them, then directly after a hole punch).
            serve_circuits: true,
            ..NodeConfig::default()
        },
    )
    .await?;
    let mut events = node.subscribe();
    let addrs = node.wait_listening(LISTEN_WAIT).await.unwrap_or_default();
    for a in &addrs {
        print_json(&json!({"event": "listening", "addr": a.to_string()}));
    }
    let printer = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            let v = match e {
                NodeEvent::Listening { addr } if !addrs.contains(&addr) => {
                    json!({"event": "listening", "addr": addr.to_string()})
                }
                NodeEvent::PeerConnected { peer, addr } => {
                    json!({"event": "peer_connected", "peer": peer.to_string(), "addr": addr.to_string()})
                }
                NodeEvent::PeerDisconnected { peer } => json!({"event": "peer_disconnected", "peer": peer.to_string()}),
                NodeEvent::Synced {
                    peer,
                    received,
                    sent,
                    in_sync,
                    ..
                } => json!({
                    "event": "synced", "peer": peer.to_string(), "received": received, "sent": sent, "in_sync": in_sync,
                }),
                NodeEvent::Rejected { peer, reason, dropped } => {
                    json!({"event": "rejected", "peer": peer.to_string(), "reason": reason, "dropped": dropped})
                }
                NodeEvent::Incompatible { peer, offers } => json!({
                    "event": "incompatible", "peer": peer.to_string(), "offers": offers,
                    "speaks": hearth::sync::proto::PROTOCOL.to_string(),
                }),
                _ => continue,
            };
            print_json(&v);
        }
    });
    // Texts past the relay's retention go every minute; texts members
    // dropped (deletes) and expired ones leave the relay's files: a
    // compaction every RELAY_COMPACT_EVERY once some were.
    let compactor = {
        let relay = relay.clone();
        tokio::spawn(async move {
            let mut last = std::time::Instant::now();
            loop {
                tokio::time::sleep(RELAY_EXPIRE_EVERY).await;
                match relay.expire().await {
                    Ok(0) => {}
                    Ok(n) => print_json(&json!({"event": "expired", "entries": n})),
                    Err(e) => print_json(&json!({"event": "error", "error": format!("expiry: {e}")})),
                }
                if relay.stats().dropped_bytes == 0 || last.elapsed() < RELAY_COMPACT_EVERY {
                    continue;
                }
                last = std::time::Instant::now();
                let v = match relay.compact().await {
                    Ok(r) => json!({
                        "event": "compacted", "rows": r.rows_copied, "log_bytes_before": r.log_bytes_before,
                        "log_bytes_after": r.log_bytes_after, "paused_ms": r.paused.as_secs_f64() * 1e3,
                    }),
                    Err(e) => json!({"event": "error", "error": format!("compaction: {e}")}),
                };
                print_json(&v);
            }
        })
    };
    signals.await;
    compactor.abort();
    node.stop().await.ok();
    // An aborted task may still be printing on another thread: `stopped`
    // goes out once it has ended, so that it is always the last line.
    printer.abort();
    let _ = printer.await;
    print_json(&json!({"event": "stopped"}));
    Ok(ExitCode::SUCCESS)
}

/// How often a relay compacts at most, once texts were dropped.
const RELAY_COMPACT_EVERY: Duration = Duration::from_secs(600);
/// How often a relay drops the texts past its retention.
const RELAY_EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// A relay's network key: random, kept in `node.key` (it guards no data; it
/// only keeps the relay's peer id stable across restarts).
fn relay_secret(dir: &Path) -> Result<hearth::core::SecretKey> {
    let path = dir.join("node.key");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(b) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(hearth::core::SecretKey::from_bytes(b));
    }
    let key = hearth::core::SecretKey::generate()?;
    hearth::store::write_atomic(&path, key.expose()).with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}
