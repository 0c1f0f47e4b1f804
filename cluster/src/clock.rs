//! Ledger time (DESIGN §5): the leader stamps each entry with the last applied ledger time plus
//! its own monotonic time elapsed since it anchored, slewed toward the wall clock by at most
//! [`SLEW_PER_MILLE`]. Apply never reads a clock. A failover stretches leases by the election
//! gap only, and an NTP step on a leader moves ledger time by at most 2% of elapsed time.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use crate::ledger::LedgerTime;

/// Most ledger time may drift toward the wall clock, per thousand of elapsed monotonic time.
pub const SLEW_PER_MILLE: u64 = 20;

/// The clocks a leader reads. Injected so that simulations can drive time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since an arbitrary origin; never goes backwards.
    fn monotonic_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch; may jump.
    fn wall_ms(&self) -> u64;
}

/// The operating system's clocks.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    term: u64,
    ledger_ms: u64,
    monotonic_ms: u64,
}

/// Stamps entries proposed by this node while it leads.
pub struct LedgerClock {
    clock: Arc<dyn Clock>,
    state: Mutex<(Option<Anchor>, LedgerTime)>,
}

impl LedgerClock {
    pub fn new(clock: Arc<dyn Clock>) -> LedgerClock {
        LedgerClock { clock, state: Mutex::new((None, LedgerTime(0))) }
    }

    /// The time for an entry proposed now in `term`, given the ledger time the local state
    /// machine has applied. Never below `applied` nor below an earlier stamp of this node.
    pub fn stamp(&self, term: u64, applied: LedgerTime) -> LedgerTime {
        let monotonic_ms = self.clock.monotonic_ms();
        let wall_ms = self.clock.wall_ms();
        let mut state = self.state.lock().expect("ledger clock lock");
        let (anchor, last_stamp) = &mut *state;
        let needs_anchor = anchor.is_none_or(|a| a.term != term);
        if needs_anchor {
            // A fresh ledger starts at the wall clock; otherwise continue from what was applied.
            let base = applied.max(*last_stamp).as_ms();
            let ledger_ms = if base == 0 { wall_ms } else { base };
            *anchor = Some(Anchor { term, ledger_ms, monotonic_ms });
        }
        let mut current = anchor.expect("anchored above");
        let mut time = slewed(current, monotonic_ms, wall_ms);
        if applied.as_ms() > time {
            // Entries of an earlier leader ran ahead of our estimate: continue from them.
            current = Anchor { term, ledger_ms: applied.as_ms(), monotonic_ms };
            *anchor = Some(current);
            time = applied.as_ms();
        }
        let stamp = LedgerTime(time).max(*last_stamp);
        *last_stamp = stamp;
        stamp
    }
}

/// Anchor time plus elapsed monotonic time, corrected toward the wall clock by at most
/// `SLEW_PER_MILLE` of the elapsed time.
fn slewed(anchor: Anchor, monotonic_ms: u64, wall_ms: u64) -> u64 {
    let elapsed = monotonic_ms.saturating_sub(anchor.monotonic_ms);
    let raw = anchor.ledger_ms.saturating_add(elapsed);
    let max_correction = elapsed * SLEW_PER_MILLE / 1000;
    if wall_ms >= raw {
        raw + (wall_ms - raw).min(max_correction)
    } else {
        raw - (raw - wall_ms).min(max_correction)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    use super::*;

    #[derive(Default)]
    struct ManualClock {
        monotonic: AtomicU64,
        wall: AtomicU64,
    }

    impl Clock for ManualClock {
        fn monotonic_ms(&self) -> u64 {
            self.monotonic.load(Ordering::SeqCst)
        }
        fn wall_ms(&self) -> u64 {
            self.wall.load(Ordering::SeqCst)
        }
    }

    fn setup(wall: u64) -> (Arc<ManualClock>, LedgerClock) {
        let clock = Arc::new(ManualClock::default());
        clock.wall.store(wall, Ordering::SeqCst);
        let ledger = LedgerClock::new(clock.clone());
        (clock, ledger)
    }

    #[test]
    fn fresh_ledger_starts_at_wall_clock_and_follows_monotonic_time() {
        let (clock, ledger) = setup(1_000_000);
        assert_eq!(ledger.stamp(1, LedgerTime(0)), LedgerTime(1_000_000));
        clock.monotonic.store(500, Ordering::SeqCst);
        clock.wall.store(1_000_500, Ordering::SeqCst);
        assert_eq!(ledger.stamp(1, LedgerTime(1_000_000)), LedgerTime(1_000_500));
    }

    #[test]
    fn wall_clock_step_moves_ledger_time_by_at_most_the_slew_rate() {
        let (clock, ledger) = setup(1_000_000);
        ledger.stamp(1, LedgerTime(0));
        // An NTP step of one hour forward on the leader, 10 s later.
        clock.monotonic.store(10_000, Ordering::SeqCst);
        clock.wall.store(1_000_000 + 10_000 + 3_600_000, Ordering::SeqCst);
        let stamp = ledger.stamp(1, LedgerTime(0)).as_ms();
        assert_eq!(stamp, 1_000_000 + 10_000 + 10_000 * SLEW_PER_MILLE / 1000);
        // A step backwards never moves ledger time backwards.
        clock.monotonic.store(11_000, Ordering::SeqCst);
        clock.wall.store(0, Ordering::SeqCst);
        assert!(ledger.stamp(1, LedgerTime(0)).as_ms() >= stamp);
    }

    #[test]
    fn new_term_continues_from_applied_time_not_the_wall_clock() {
        let (clock, ledger) = setup(1_000_000);
        ledger.stamp(1, LedgerTime(0));
        // Another leader ran the ledger ahead; this node leads again in term 3.
        clock.monotonic.store(100, Ordering::SeqCst);
        let stamp = ledger.stamp(3, LedgerTime(5_000_000));
        assert_eq!(stamp, LedgerTime(5_000_000));
        clock.monotonic.store(300, Ordering::SeqCst);
        // 200 ms elapsed; the wall clock is far behind, so at most 2% of 200 ms is taken off.
        assert_eq!(ledger.stamp(3, LedgerTime(5_000_000)), LedgerTime(5_000_200 - 4));
    }
}
