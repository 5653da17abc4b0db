//! A hybrid logical clock: timestamps that follow wall time but never go
//! backwards, and that move past every timestamp the clock has observed, so ids
//! sort causally even when device clocks disagree.

use serde::{Deserialize, Serialize};

/// A timestamp: milliseconds since the Unix epoch in the high 48 bits, a logical
/// counter in the low 16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Wall-clock milliseconds of this timestamp.
    pub fn millis(self) -> u64 {
        self.0 >> 16
    }

    /// The timestamp at the start of a millisecond.
    pub fn from_millis(ms: u64) -> Self {
        Timestamp(ms << 16)
    }
}

/// The clock. `now_ms` is passed in so that the core does no I/O and tests can
/// drive time.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: Timestamp,
}

impl Hlc {
    /// A clock that will never issue a timestamp at or below `floor`.
    pub fn new(floor: Timestamp) -> Self {
        Hlc { last: floor }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// Issue a fresh timestamp, strictly greater than every earlier one.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        let wall = Timestamp::from_millis(now_ms);
        // When the logical counter of a millisecond runs out we borrow the next
        // millisecond: the clock runs slightly ahead rather than repeating.
        // Received posts are bounded by the allowed clock skew, so the
        // counter cannot reach the top; if it ever did, it stays there.
        self.last = if wall > self.last {
            wall
        } else {
            Timestamp(self.last.0.saturating_add(1))
        };
        self.last
    }

    /// Move past a timestamp seen from elsewhere (a remote message).
    pub fn observe(&mut self, seen: Timestamp) {
        if seen > self.last {
            self.last = seen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards_when_wall_time_does() {
        let mut c = Hlc::default();
        let a = c.tick(1000);
        let b = c.tick(900);
        let d = c.tick(1000);
        assert!(a < b && b < d);
        c.observe(Timestamp::from_millis(5000));
        assert!(c.tick(1001) > Timestamp::from_millis(5000));
    }
}
