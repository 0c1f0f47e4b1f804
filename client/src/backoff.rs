//! Full-jitter exponential backoff (gRPC A6; AWS "Exponential Backoff and Jitter"): the n-th wait
//! is uniform in `0 ..= min(initial * MULTIPLIER^n, max)`.

use std::time::Duration;

use rand::Rng;

/// The ceiling of the first wait.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(25);
/// No wait's ceiling grows beyond this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Growth of the ceiling per retry.
pub const BACKOFF_MULTIPLIER: u32 = 2;

/// The waits of one call. Cheap to create: one per call.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    retries: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        debug_assert!(initial <= max, "backoff initial {initial:?} above max {max:?}");
        Backoff { initial, max: max.max(initial), retries: 0 }
    }

    /// The ceiling of the next wait, without consuming it.
    pub(crate) fn ceiling(&self) -> Duration {
        // Saturates long before overflow: 2^31 * 1 ns is already beyond any sane maximum.
        let factor = BACKOFF_MULTIPLIER.saturating_pow(self.retries.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next wait, drawn from `rng`.
    pub(crate) fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.retries = self.retries.saturating_add(1);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.gen_range(0..=ceiling_us))
    }

    /// The next wait, from the thread's RNG.
    pub(crate) fn next_wait(&mut self) -> Duration {
        self.next_with(&mut rand::thread_rng())
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn ceilings_double_from_initial_up_to_max() {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_with(&mut rng);
        }
        assert_eq!(ceilings, vec![25, 50, 100, 200, 400, 800, 1000, 1000, 1000, 1000]);
    }

    #[test]
    fn every_wait_is_within_zero_and_its_ceiling() {
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..100 {
            let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
            for _ in 0..20 {
                let ceiling = backoff.ceiling();
                let wait = backoff.next_with(&mut rng);
                assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
                assert!(wait <= BACKOFF_MAX);
            }
        }
    }

    #[test]
    fn waits_are_jittered_not_constant() {
        let mut rng = StdRng::seed_from_u64(1);
        let waits: Vec<Duration> =
            (0..50).map(|_| Backoff::new(BACKOFF_MAX, BACKOFF_MAX).next_with(&mut rng)).collect();
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 40, "full jitter spreads waits: {distinct:?}");
        // Full jitter: the mean of uniform(0, max) is near max/2.
        let mean_ms = waits.iter().map(|w| w.as_secs_f64() * 1000.0).sum::<f64>() / waits.len() as f64;
        assert!((250.0..750.0).contains(&mean_ms), "mean {mean_ms} ms");
    }

    #[test]
    fn many_retries_never_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(7200));
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            assert!(backoff.next_with(&mut rng) <= Duration::from_secs(7200));
        }
    }
}
