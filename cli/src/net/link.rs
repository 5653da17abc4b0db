//! `hearth link` and `hearth init --link`: a new device of this user.

#[allow(unused_imports)]
use super::*;

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
