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

mod link;
mod node;
mod relay;

pub use link::{init_linked, link};
pub use node::node;
pub(crate) use node::{Serving, serve, tend};
pub use relay::relay;
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

/// Where the last node of this store listened: what a ticket made with no
/// node running carries.
pub(crate) async fn ticket_addrs(h: &Hearth) -> Result<Vec<Multiaddr>> {
    read_addrs(h, ADDRS_FILE).await
}

/// Remember peer addresses (from a ticket) for `hearth node`.
pub(crate) async fn remember_peers(h: &Hearth, addrs: &[Multiaddr]) -> Result<()> {
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
        addrs = ticket_addrs(h).await?;
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

/// Let pending invites in through `peer` (for a running node), telling
/// `notify` what happened as JSON lines.
async fn join_through(h: &Hearth, peer: hearth::sync::PeerId, notify: &impl Fn(Value)) -> Result<hearth::JoinAttempt> {
    let attempt = h.join_through(peer).await?;
    for (channel, name) in &attempt.joined {
        notify(json!({"event": "joined", "channel": channel.to_hex(), "name": name, "peer": peer.to_string()}));
    }
    for (name, why) in &attempt.refused {
        notify(json!({"event": "invite_refused", "name": name, "peer": peer.to_string(), "why": why}));
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

/// SIGINT or SIGTERM. The handlers are installed when this is called (not
/// when it is first awaited): call it before announcing anything, so that a
/// signal sent right after the announcement is not lost.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::SignalKind;
    first_signal([SignalKind::terminate(), SignalKind::interrupt()])
}

/// As [`shutdown_signal`], and SIGHUP (the terminal went away): for
/// `hearth chat`, which lives in its terminal (a node may run under nohup).
pub(crate) fn hangup_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::SignalKind;
    first_signal([SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup()])
}

/// The first of `kinds` to come (handlers installed now; one that cannot be
/// installed never comes).
fn first_signal<const N: usize>(kinds: [tokio::signal::unix::SignalKind; N]) -> impl std::future::Future<Output = ()> {
    let signals: Vec<_> = kinds
        .into_iter()
        .filter_map(|k| tokio::signal::unix::signal(k).ok())
        .collect();
    async move {
        if signals.is_empty() {
            return std::future::pending().await;
        }
        let waits = signals.into_iter().map(|mut s| Box::pin(async move { s.recv().await }));
        futures::future::select_all(waits).await;
    }
}

/// How long a node's listeners get to come up.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
