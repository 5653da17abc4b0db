//! Finding peers again: the DHT rounds (announce this node's channels,
//! look their peers up) and circuit relay reservations.

#[allow(unused_imports)]
use super::*;

impl<R: Replica> Loop<R> {
    /// Compute this round's discovery keys off the swarm's task (they need
    /// the replica), then run the round (`Cmd::Discover`).
    pub(super) fn start_discovery(&self) {
        if !self.config.discovery {
            return;
        }
        let (replica, cmd) = (self.replica.clone(), self.cmd_tx.clone());
        tokio::spawn(async move {
            let Ok(keys) = replica.access_keys().await else { return };
            let now = std::time::SystemTime::now();
            let current = crate::discovery::period_at(now);
            let mut announce = Vec::new();
            let mut lookup = Vec::new();
            for (_, access) in &keys {
                for p in crate::discovery::announced_periods(now) {
                    announce.push(crate::discovery::channel_key(access, p));
                }
                lookup.push(crate::discovery::channel_key(access, current));
            }
            let _ = cmd.send(Cmd::Discover(announce, lookup)).await;
        });
    }

    /// A discovery round: announce under `announce` (and no longer under
    /// keys of past periods), look `lookup` up.
    pub(super) fn discover(&mut self, announce: Vec<[u8; 32]>, lookup: Vec<[u8; 32]>) {
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let now: BTreeSet<[u8; 32]> = announce.into_iter().collect();
        for old in self.providing.difference(&now) {
            kad.stop_providing(&kad::RecordKey::new(old));
        }
        for key in &now {
            let _ = kad.start_providing(kad::RecordKey::new(key));
        }
        self.providing = now;
        for key in lookup {
            kad.get_providers(kad::RecordKey::new(&key));
        }
    }

    /// A peer that serves the DHT told its addresses: the DHT keeps them
    /// (a loopback one only from a peer reached over loopback), and the
    /// first such peer starts discovery.
    pub(super) fn kad_learn(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let local = self
            .peers
            .get(&peer)
            .and_then(|p| p.status.addr.as_ref())
            .and_then(ip_of)
            .is_some_and(|ip| ip.is_loopback());
        let usable: Vec<Multiaddr> = addrs
            .iter()
            .filter(|a| local || !ip_of(a).is_some_and(|ip| ip.is_loopback()))
            .cloned()
            .collect();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        for a in &usable {
            kad.add_address(&peer, a.clone());
        }
        self.told.insert(peer, usable);
        if self.next_discovery.is_none() {
            let _ = kad.bootstrap();
            // A moment for the bootstrap to fill the routing table.
            self.next_discovery = Some(Instant::now() + DISCOVERY_FIRST);
        }
    }

    /// A peer that announced a channel this node holds, reached at `addr`:
    /// kept and redialed from now on, like a configured peer (reported once
    /// a connection).
    pub(super) fn found(&mut self, peer: PeerId, addr: Multiaddr) {
        let full = if peer_of(&addr) == Some(peer) {
            addr
        } else {
            addr.with(Protocol::P2p(peer))
        };
        self.add_known(full.clone(), false);
        self.reported.insert(peer);
        self.emit(NodeEvent::Discovered { peer, addr: full });
    }

    /// What the DHT said.
    pub(super) fn on_kad(&mut self, ev: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            result: kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })),
            ..
        } = ev
        else {
            return;
        };
        let me = *self.swarm.local_peer_id();
        for peer in providers {
            if peer == me || self.banned_until(&peer).is_some() || self.reported.contains(&peer) {
                continue;
            }
            // Connected already (the DHT's own queries connect its nodes):
            // kept at the address it told, or the one this node dialed.
            if self.swarm.is_connected(&peer) {
                let told = self.told.get(&peer).and_then(|a| a.first().cloned());
                let dialed = self.peers.get(&peer).and_then(|p| p.status.addr.clone());
                if let Some(addr) = told.or(dialed) {
                    self.found(peer, addr);
                }
                continue;
            }
            // By peer id: the DHT gives the addresses the query learned.
            if self.discovering.insert(peer) {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer).build();
                if self.swarm.dial(opts).is_err() {
                    self.discovering.remove(&peer);
                }
            }
        }
    }

    /// Whether this node listens through `peer` when it serves circuits: a
    /// relay this user configured, or one named in `via`.
    pub(super) fn wants_circuits_of(&self, peer: &PeerId) -> bool {
        self.config.relays.contains(peer) || self.config.via.iter().any(|a| peer_of(a) == Some(*peer))
    }

    /// Listen through every circuit relay that is connected, identified,
    /// wanted, not listened through and not waiting for a retry.
    pub(super) fn reserve_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .identified
            .iter()
            .filter(|(p, hop)| **hop && !self.reservations.contains_key(p))
            .filter(|(p, _)| self.reserve_next.get(p).is_none_or(|(t, _)| *t <= now))
            .map(|(p, _)| *p)
            .filter(|p| self.wants_circuits_of(p))
            .collect();
        for relay in due {
            // The relay's address as this node dials it (or as it reached it).
            let known = self
                .known
                .values()
                .find(|k| k.peer == Some(relay) && !is_relayed(&k.addr));
            let Some(addr) = known
                .map(|k| k.addr.clone())
                .or_else(|| self.peers.get(&relay).and_then(|p| p.status.addr.clone()))
                .filter(|a| !is_relayed(a))
            else {
                continue;
            };
            let base: Multiaddr = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
            let circuit = base.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(id) => {
                    self.reservations.insert(relay, id);
                }
                Err(e) => self.reservation_failed(relay, e.to_string()),
            }
        }
    }

    /// A reservation failed or ended: ask again later, waiting longer each time.
    pub(super) fn reservation_failed(&mut self, relay: PeerId, error: String) {
        self.reservations.remove(&relay);
        let wait = self.reserve_next.get(&relay).map_or(RESERVE_RETRY_MIN, |(_, w)| *w);
        self.reserve_next
            .insert(relay, (Instant::now() + wait, (wait * 2).min(RESERVE_RETRY_MAX)));
        self.emit(NodeEvent::ReservationFailed { relay, error });
    }
}
