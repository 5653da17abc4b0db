//! `hearth node`: a sync node on a store, driven by JSON lines
//! (docs/node-protocol.md): commands on stdin, events on stdout.

#[allow(unused_imports)]
use super::*;

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

/// A node started the way `hearth node` and `hearth chat` start one.
pub(crate) struct Serving {
    /// The node.
    pub node: SyncHandle,
    /// Its events, subscribed before any peer was dialed.
    pub events: tokio::sync::broadcast::Receiver<NodeEvent>,
    /// Where it listens (once its listeners are up).
    pub addrs: Vec<Multiaddr>,
}

/// Start `h`'s node: without `--listen`, on the addresses of the last run
/// with the ports it bound, so that the tickets and peer lists printed before
/// a restart still reach it (loopback TCP the first time); dialing the peers
/// of `config` and those kept from tickets. `say` hears, as JSON lines of
/// docs/node-protocol.md, why the last run's addresses could not be had (a
/// port taken meanwhile, an address the machine no longer has: the node then
/// listens elsewhere) and a peer that cannot be dialed at all (the others
/// still are).
pub(crate) async fn serve(h: &Hearth, mut config: NodeConfig, mut say: impl FnMut(Value)) -> Result<Serving> {
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
    // Dial after subscribing, so that no peer_connected event is missed.
    let peers = std::mem::take(&mut config.peers);
    // The same addresses on ports of the system's choice, then loopback.
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
                say(json!({"event": "listen_moved", "error": why}));
                config.listen = fallbacks.pop().expect("not empty");
            }
            Err(e) => return Err(e.into()),
        }
    };
    let events = node.events();
    for p in peers {
        if let Err(e) = node.dial(p.clone()).await {
            say(json!({"event": "error", "error": format!("dialing {p}: {e}")}));
        }
    }
    // Listen addresses may come up before the subscription: ask the node.
    let addrs = node.wait_listening(LISTEN_WAIT).await.unwrap_or_default();
    write_addrs(h, ADDRS_FILE, &addrs).await?;
    write_addrs(h, LISTEN_FILE, &listen::with_bound_ports(&config.listen, &addrs)).await?;
    Ok(Serving { node, events, addrs })
}

/// What a node started by [`serve`] does on each of its events besides
/// reporting it: a peer connected lets in the invites kept by `hearth join`
/// (then a session brings the history), a peer found through the DHT is
/// kept, a new listen address goes into the next tickets. `notify` hears
/// what came of it (JSON lines of docs/node-protocol.md). Whether the event
/// is news: a listen address already reported when the node started is not.
pub(crate) async fn tend(
    h: &Hearth,
    node: &SyncHandle,
    e: &NodeEvent,
    started_on: &[Multiaddr],
    notify: impl Fn(Value) + Send + Sync + 'static,
) -> bool {
    match e {
        NodeEvent::PeerConnected { peer, .. } => {
            let (h, node, peer) = (h.clone(), node.clone(), *peer);
            tokio::spawn(async move {
                if let Ok(a) = join_through(&h, peer, &notify).await
                    && !a.joined.is_empty()
                {
                    let _ = node.sync_with(peer).await;
                }
            });
        }
        NodeEvent::Discovered { addr, .. } => {
            if let Err(err) = learn_peer(h, addr).await {
                notify(json!({"event": "error", "error": format!("keeping {addr}: {err:#}")}));
            }
        }
        NodeEvent::Listening { addr } => {
            if started_on.contains(addr) {
                return false;
            }
            if let Ok(all) = node.listen_addrs().await {
                let _ = write_addrs(h, ADDRS_FILE, &all).await;
            }
        }
        _ => {}
    }
    true
}

/// `hearth node`: run until SIGINT/SIGTERM (or stdin closes with `--exit-on-eof`).
pub async fn node(h: &Hearth, config: NodeConfig, exit_on_eof: bool) -> Result<ExitCode> {
    let signals = shutdown_signal();
    let Serving {
        node,
        mut events,
        addrs,
    } = serve(h, config, |v| print_json(&v)).await?;
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
                if tend(&h, &node, &e, &addrs, |v| print_json(&v)).await
                    && let Some(v) = event_json(e)
                {
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
