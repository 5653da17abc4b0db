//! Finding a channel's peers again without a new ticket: Kademlia provider
//! records under a per-channel, time-rotating keyed hash.
//!
//! Every node that holds a channel's access key (its members, and the relays
//! that carry it) announces itself as a provider of
//! `BLAKE3-keyed(access key, "hearth v1 discovery" || period)`, where a period
//! is [`PERIOD`] long, and looks the current period's key up to find the
//! others. A stranger sees random-looking keys that change every period: it
//! cannot tell which channel a key stands for, nor link one period's key of
//! a channel to the next. A DHT node that stores the records can see which
//! peers announced the same key in one period (that they share something);
//! it learns nothing more, and what a peer found this way still has to prove
//! membership in a session before it is given anything.
//!
//! The DHT is Hearth's own (protocol [`KAD_PROTOCOL`], not the public IPFS
//! one), bootstrapped from the nodes given with `--bootstrap` (relays are
//! natural ones: they serve it, `NodeConfig::serve_circuits`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_core::SecretKey;
use libp2p::StreamProtocol;

/// The Kademlia protocol of Hearth's DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hearth/kad/1.0.0");

/// How long one discovery key of a channel lasts.
pub const PERIOD: Duration = Duration::from_secs(6 * 3600);

/// The discovery key of a channel (by its access key) in `period`.
pub fn channel_key(access: &SecretKey, period: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(access.expose());
    h.update(b"hearth v1 discovery");
    h.update(&period.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The period `at` falls in.
pub fn period_at(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / PERIOD.as_secs()
}

/// The periods a node announces itself under at `now`: the current one and
/// its neighbours, so that a peer whose clock is up to a period off (or that
/// looks up across a period's end) still finds it.
pub fn announced_periods(now: SystemTime) -> [u64; 3] {
    let p = period_at(now);
    [p.saturating_sub(1), p, p + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_channel_and_by_period_and_hide_the_access_key() {
        let (a, b) = (SecretKey::from_bytes([1; 32]), SecretKey::from_bytes([2; 32]));
        assert_eq!(channel_key(&a, 7), channel_key(&a, 7));
        assert_ne!(channel_key(&a, 7), channel_key(&a, 8));
        assert_ne!(channel_key(&a, 7), channel_key(&b, 7));
        assert_ne!(channel_key(&a, 7), *a.expose());
    }

    #[test]
    fn a_node_announces_the_periods_around_now() {
        let at = UNIX_EPOCH + PERIOD * 10 + Duration::from_secs(5);
        assert_eq!(period_at(at), 10);
        assert_eq!(announced_periods(at), [9, 10, 11]);
        // A peer a little behind or ahead looks up a period announced.
        for skew in [-3600i64, 3600] {
            let theirs = period_at(
                UNIX_EPOCH
                    + Duration::from_secs((at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + skew) as u64),
            );
            assert!(announced_periods(at).contains(&theirs));
        }
    }
}
