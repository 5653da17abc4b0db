//! Listen addresses kept across restarts.
//!
//! A node asked to listen on port 0 gets a port of the system's choice; every
//! address printed since (in tickets, in peers' lists) names that port. To keep
//! them good across a restart, an application records the addresses it asked
//! for with the ports actually bound ([`with_bound_ports`]), asks for those next
//! time, and falls back to [`with_any_port`] when one is taken meanwhile.

use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// What a listen address binds: its IP, whether UDP (QUIC) or TCP, its port.
fn binding(addr: &Multiaddr) -> Option<(IpAddr, bool, u16)> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(port) => Some((ip, false, port)),
        Protocol::Udp(port) => Some((ip, true, port)),
        _ => None,
    }
}

/// `addr` with its TCP or UDP port replaced by `port`.
fn with_port(addr: &Multiaddr, port: u16) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(port),
            Protocol::Udp(_) => Protocol::Udp(port),
            p => p,
        })
        .collect()
}

/// The listen addresses `configured` with each port 0 replaced by the port
/// the node bound for it, read off `listening` (what the node reports,
/// `/p2p/...` included): the same transport, the same IP (or any of its
/// family for an unspecified one). An address the node reports nothing for
/// is kept as it was asked.
pub fn with_bound_ports(configured: &[Multiaddr], listening: &[Multiaddr]) -> Vec<Multiaddr> {
    configured
        .iter()
        .map(|c| {
            let Some((ip, udp, 0)) = binding(c) else {
                return c.clone();
            };
            let bound = listening.iter().filter_map(binding).find(|&(lip, ludp, _)| {
                ludp == udp && (lip == ip || (ip.is_unspecified() && lip.is_ipv4() == ip.is_ipv4()))
            });
            match bound {
                Some((.., port)) => with_port(c, port),
                None => c.clone(),
            }
        })
        .collect()
}

/// `addr` on a port of the system's choice (port 0).
pub fn with_any_port(addr: &Multiaddr) -> Multiaddr {
    with_port(addr, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().expect("a valid multiaddr")
    }

    #[test]
    fn ports_bound_replace_port_zero_by_transport_and_ip() {
        let peer = "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let listening = [
            a(&format!("/ip4/127.0.0.1/tcp/4101{peer}")),
            a(&format!("/ip4/127.0.0.1/udp/4102/quic-v1{peer}")),
            a(&format!("/ip6/::1/tcp/4104{peer}")),
        ];
        let configured = [
            a("/ip4/127.0.0.1/tcp/0"),
            a("/ip4/127.0.0.1/udp/0/quic-v1"),
            a("/ip4/0.0.0.0/tcp/0"),
            a("/ip6/::/tcp/0"),
            a("/ip4/127.0.0.1/tcp/5000"),
            a("/ip4/192.168.1.1/tcp/0"),
        ];
        assert_eq!(
            with_bound_ports(&configured, &listening),
            vec![
                a("/ip4/127.0.0.1/tcp/4101"),
                a("/ip4/127.0.0.1/udp/4102/quic-v1"),
                // Any IPv4 TCP listener's: every interface shares the port.
                a("/ip4/0.0.0.0/tcp/4101"),
                a("/ip6/::/tcp/4104"),
                // A port asked for, and one nothing reports, stay as asked.
                a("/ip4/127.0.0.1/tcp/5000"),
                a("/ip4/192.168.1.1/tcp/0"),
            ]
        );
        assert_eq!(
            with_any_port(&a("/ip4/127.0.0.1/udp/4102/quic-v1")),
            a("/ip4/127.0.0.1/udp/0/quic-v1")
        );
        assert_eq!(
            with_any_port(&a("/dns4/example.org/tcp/7")),
            a("/dns4/example.org/tcp/0")
        );
    }
}
