//! The swarm's events: connections, identify, relays and hole punches,
//! AutoNAT, the DHT, and requests and answers of the sync protocol.

#[allow(unused_imports)]
use super::*;

impl<R: Replica> Loop<R> {
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                // A relay tells its clients where it is: what it listens on.
                if self.config.serve_circuits && !is_relayed(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                let full = self.with_me(address);
                self.listening.push(full.clone());
                self.emit(NodeEvent::Listening { addr: full });
            }
            // Announced addresses are external ones: announce again with it.
            SwarmEvent::ExternalAddrConfirmed { .. } if self.next_discovery.is_some() => {
                self.next_discovery = Some(Instant::now() + DISCOVERY_FIRST);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = self.with_me(address);
                self.listening.retain(|a| *a != full);
            }
            SwarmEvent::ListenerClosed {
                listener_id, reason, ..
            } => {
                let relay = self
                    .reservations
                    .iter()
                    .find(|(_, id)| **id == listener_id)
                    .map(|(p, _)| *p);
                if let Some(relay) = relay {
                    let why = match reason {
                        Ok(()) => "the relay ended the reservation".to_string(),
                        Err(e) => e.to_string(),
                    };
                    self.reservation_failed(relay, why);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                connection_id,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                tracing::debug!(
                    peer = %peer_id,
                    addr = %endpoint.get_remote_address(),
                    relayed,
                    connections = num_established.get(),
                    "connection established"
                );
                if relayed {
                    // Counted by the relay, per peer, not here by its IP.
                    self.relayed.entry(peer_id).or_default().insert(connection_id);
                } else if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    let n = self.per_ip.entry(ip).or_insert(0);
                    *n += 1;
                    if *n > self.config.max_per_ip {
                        // Counted until its close event, which uncounts it.
                        self.swarm.close_connection(connection_id);
                        self.emit(NodeEvent::Rejected {
                            peer: peer_id,
                            reason: format!("more than {} connections from {ip}", self.config.max_per_ip),
                            dropped: true,
                        });
                        return;
                    }
                }
                if self.banned.get(&peer_id).is_some_and(|t| *t > Instant::now()) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let addr = endpoint.get_remote_address().clone();
                let dialer = endpoint.is_dialer();
                if self.discovering.remove(&peer_id) && dialer {
                    self.found(peer_id, addr.clone());
                }
                for k in self.known.values_mut() {
                    if k.peer == Some(peer_id) || (k.peer.is_none() && k.addr == addr) {
                        k.peer = Some(peer_id);
                        k.backoff = self.config.redial_min;
                        k.next = None;
                    }
                }
                if num_established.get() > 1 {
                    // A direct connection next to a relayed one (a hole punch).
                    if !relayed && let Some(p) = self.peers.get_mut(&peer_id) {
                        p.status.addr = Some(addr);
                    }
                } else {
                    if self.noted.len() >= MAX_NOTED_PEERS && !self.noted.contains_key(&peer_id) {
                        self.noted.clear();
                    }
                    let memo = self.noted.entry(peer_id).or_default().clone();
                    let conn = Conn::new(self.swarm.local_peer_id().to_bytes(), peer_id.to_bytes())
                        .with_memo(memo)
                        .trusting(self.config.relays.contains(&peer_id));
                    let work = spawn_worker(
                        Worker {
                            peer: peer_id,
                            conn: conn.clone(),
                            grant: self.config.relays.contains(&peer_id),
                            live: (self.live.clone(), self.config.request_timeout),
                        },
                        self.replica.clone(),
                        self.cmd_tx.clone(),
                        (self.events.clone(), self.acks.clone()),
                    );
                    if dialer {
                        let _ = work.send(Work::Reconcile(None));
                    } else {
                        // The dialer reconciles at once; the listener follows a
                        // moment later, by then usually finding both in sync in
                        // one round trip, so that its status and its knowledge of
                        // the peer's vectors (for live push) are current.
                        let work = work.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(LISTENER_SESSION_DELAY).await;
                            let _ = work.send(Work::ReconcileAfterPeer);
                        });
                    }
                    self.peers.insert(
                        peer_id,
                        PeerState {
                            work,
                            status: PeerStatus {
                                peer: peer_id,
                                connected: true,
                                addr: Some(addr.clone()),
                                in_sync: false,
                                behind: 0,
                                ahead: 0,
                                sessions: 0,
                                relay: false,
                                incompatible: false,
                            },
                            conn,
                            live_in: Arc::default(),
                        },
                    );
                    self.emit(NodeEvent::PeerConnected { peer: peer_id, addr });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                endpoint,
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(
                    peer = %peer_id,
                    addr = %endpoint.get_remote_address(),
                    connections = num_established,
                    cause = cause.as_ref().map(|c| c.to_string()),
                    "connection closed"
                );
                if endpoint.is_relayed() {
                    if let Some(set) = self.relayed.get_mut(&peer_id) {
                        set.remove(&connection_id);
                        if set.is_empty() {
                            self.relayed.remove(&peer_id);
                        }
                    }
                } else if let Some(ip) = ip_of(endpoint.get_remote_address())
                    && let Some(n) = self.per_ip.get_mut(&ip)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
                if num_established > 0 {
                    return;
                }
                self.peers.remove(&peer_id);
                self.identified.remove(&peer_id);
                self.told.remove(&peer_id);
                self.reported.remove(&peer_id);
                // A banned peer is not redialed before its ban ends.
                let at = self
                    .banned_until(&peer_id)
                    .unwrap_or_else(|| Instant::now() + self.config.redial_min);
                for k in self.known.values_mut() {
                    if k.peer == Some(peer_id) && k.next.is_none_or(|n| n < at) {
                        k.next = Some(at);
                    }
                }
                self.emit(NodeEvent::PeerDisconnected { peer: peer_id });
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some(p) = peer_id {
                    self.discovering.remove(&p);
                }
                let addrs: Vec<Multiaddr> = self
                    .known
                    .values()
                    .filter(|k| k.next.is_none() && (peer_id.is_none() || k.peer == peer_id))
                    .filter(|k| k.peer.is_none_or(|p| !self.swarm.is_connected(&p)))
                    .map(|k| k.addr.clone())
                    .collect();
                for a in addrs {
                    self.dial_failed(&a, error.to_string());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let hop = info.protocols.iter().any(|p| p.as_ref() == HOP);
                let first = self.identified.insert(peer_id, hop).is_none();
                if info.protocols.contains(&crate::discovery::KAD_PROTOCOL) {
                    self.kad_learn(peer_id, &info.listen_addrs);
                }
                if first && !hop && self.config.via.iter().any(|a| peer_of(a) == Some(peer_id)) {
                    self.emit(NodeEvent::ReservationFailed {
                        relay: peer_id,
                        error: "it does not serve circuits".into(),
                    });
                }
                self.reserve_due();
                let ours = proto::PROTOCOL.to_string();
                let offers: Vec<String> = info
                    .protocols
                    .iter()
                    .map(|p| p.to_string())
                    .filter(|p| p.starts_with("/hearth/sync/"))
                    .collect();
                if !offers.is_empty() && !offers.contains(&ours) {
                    self.incompatible(peer_id, offers);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            })) => {
                self.reserve_next.remove(&relay_peer_id);
                if !renewal {
                    self.emit(NodeEvent::Reserved { relay: relay_peer_id });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => {
                let error = result.as_ref().err().map(|e| e.to_string());
                if result.is_ok() {
                    // Direct now: the relayed connections go (requests
                    // would keep going over them too), and a session catches
                    // up whatever a request lost on them as they closed.
                    for id in self.relayed.get(&remote_peer_id).cloned().unwrap_or_default() {
                        self.swarm.close_connection(id);
                    }
                    if let Some(p) = self.peers.get(&remote_peer_id) {
                        let _ = p.work.send(Work::Reconcile(None));
                    }
                }
                self.emit(NodeEvent::HolePunch {
                    peer: remote_peer_id,
                    error,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::v2::client::Event {
                tested_addr, result, ..
            })) => {
                self.emit(NodeEvent::Reachability {
                    addr: tested_addr,
                    reachable: result.is_ok(),
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr.with(Protocol::P2p(peer)));
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_rr(&mut self, ev: request_response::Event<Framed, Response>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: Framed::Malformed(why),
                    channel,
                    ..
                } => {
                    self.reject(peer, format!("malformed frame: {why}"), true);
                    let refused = Response::Refused {
                        reason: "malformed frame".into(),
                    };
                    let _ = self.swarm.behaviour_mut().rr.send_response(channel, refused);
                }
                request_response::Message::Request {
                    request: Framed::Valid(Request::Link { proof, keys }),
                    channel,
                    ..
                } => self.answer_link(peer, proof, keys, channel),
                request_response::Message::Request {
                    request: Framed::Valid(request),
                    channel,
                    ..
                } => {
                    let Ok(permit) = self.inbound.clone().try_acquire_owned() else {
                        let busy = Response::Refused {
                            reason: "busy: too many requests in progress".into(),
                        };
                        let _ = self.swarm.behaviour_mut().rr.send_response(channel, busy);
                        return;
                    };
                    // A peer holds what it pushes: its worker learns that
                    // before the ingest starts, so that the store's notice of
                    // the entries it took does not send them back (a race
                    // between that notice and the answer's, which bounced
                    // about every other live message). A peer that pushed
                    // forgeries only goes without them (and is refused).
                    if let (Request::Push { wire, entries }, Some(p)) = (&request, self.peers.get(&peer)) {
                        let heads = crate::drive::pushed_heads(entries.iter().map(|e| e.as_ref()));
                        let _ = p.work.send(Work::Learned(*wire, heads, Told::Pushed));
                    }
                    let replica = self.replica.clone();
                    let tx = self.cmd_tx.clone();
                    // A request racing the connection's setup proves nothing
                    // lasting: it is served with no proofs but its own.
                    let conn = match self.peers.get(&peer) {
                        Some(p) => p.conn.clone(),
                        None => Conn::new(self.swarm.local_peer_id().to_bytes(), peer.to_bytes()),
                    };
                    tokio::spawn(async move {
                        let (resp, served) = serve(&replica, request, &conn).await;
                        drop(permit);
                        let _ = tx.send(Cmd::Respond(peer, channel, resp, served)).await;
                    });
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(tx) = self.pending.remove(&request_id) {
                        let _ = tx.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if matches!(error, request_response::OutboundFailure::UnsupportedProtocols) {
                    self.incompatible(peer, Vec::new());
                }
                if let Some(tx) = self.pending.remove(&request_id) {
                    let _ = tx.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                // A frame that does not decode or is over its cap is the peer's
                // fault; a timeout or a closed stream is not.
                let malformed = matches!(
                    &error,
                    request_response::InboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData
                );
                if malformed {
                    self.reject(peer, format!("malformed frame: {error}"), true);
                }
            }
            _ => {}
        }
    }
}
