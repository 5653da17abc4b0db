//! `hearth relay`: a store-and-forward relay for sealed entries.

#[allow(unused_imports)]
use super::*;

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
