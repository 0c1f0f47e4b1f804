//! The simulated clocks of one node.
//!
//! Monotonic time is tokio's (paused) `Instant` since the run started, shared by every node.
//! Wall time is a fixed epoch plus monotonic time plus a per-node offset that the nemesis jumps
//! forward and backward (an NTP step on the leader). The epoch is in 2020, below the real
//! system clock: the one reader of the real clock, the `local-clock-apply` bug of the zoo, then
//! sees a clock far from ledger time that differs between replicas applying at different
//! moments.

use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering;

use dedup_cluster::clock::Clock;
use tokio::time::Instant;

/// Wall-clock milliseconds at the start of every run: 2020-09-13.
pub const SIM_EPOCH_MS: u64 = 1_600_000_000_000;

pub struct SimClock {
    origin: Instant,
    offset_ms: AtomicI64,
}

impl SimClock {
    /// Must be called inside the simulation's runtime (paused tokio time).
    pub fn new(origin: Instant) -> SimClock {
        SimClock { origin, offset_ms: AtomicI64::new(0) }
    }

    /// Steps this node's wall clock by `delta_ms` (negative: backwards).
    pub fn jump(&self, delta_ms: i64) {
        self.offset_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

impl Clock for SimClock {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn wall_ms(&self) -> u64 {
        let wall = SIM_EPOCH_MS as i64 + self.monotonic_ms() as i64 + self.offset_ms();
        wall.max(0) as u64
    }
}
