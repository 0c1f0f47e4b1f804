//! Lock-free measurements of the storage layer, read by the server's Prometheus endpoint at
//! scrape time (`server/src/metrics.rs`). Recording is a few relaxed atomic adds: nothing here
//! takes a lock or allocates, so the Raft log's hot path is not serialized by it.
//!
//! The log store's measurements are process-wide ([`log`]): `dedupd` runs one node per process.
//! A process hosting several nodes (the deterministic simulation) sums them.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Upper bounds (seconds) of the buckets of every latency histogram: 50 µs (a page-cache write)
/// to 60 s (a parked claim). One layout for all, so histograms aggregate across metrics.
pub const LATENCY_BUCKETS_SECONDS: [f64; 19] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

const BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len();

/// The bucket bounds in nanoseconds, for comparing durations without floating point.
const BUCKET_BOUNDS_NANOS: [u64; BUCKETS] = {
    let mut nanos = [0u64; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        nanos[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// A latency histogram of atomics with the [`LATENCY_BUCKETS_SECONDS`] layout.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment: per-bucket counts (not cumulative), `+Inf` last.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl LatencyHistogram {
    pub const fn new() -> LatencyHistogram {
        LatencyHistogram { counts: [const { AtomicU64::new(0) }; BUCKETS + 1], sum_nanos: AtomicU64::new(0) }
    }

    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now. Not atomic as a whole: an observation racing the read may be in the
    /// count and not yet in the sum; the count is the sum of the buckets read.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|count| count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        HistogramSnapshot { buckets, sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9, count }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

/// What the Raft log store measures (`store/log.rs`).
#[derive(Debug)]
pub struct LogMetrics {
    /// From openraft's `append` call until the entries are durable (the flush that covers them
    /// finished): the engine write plus the wait for the group flush.
    pub append: LatencyHistogram,
    /// One engine flush (fsync), whatever asked for it: appends, votes, truncations, purges.
    pub flush: LatencyHistogram,
}

static LOG: LogMetrics = LogMetrics { append: LatencyHistogram::new(), flush: LatencyHistogram::new() };

/// The Raft log store's measurements of this process.
pub fn log() -> &'static LogMetrics {
    &LOG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let histogram = LatencyHistogram::new();
        histogram.observe(Duration::from_micros(50)); // exactly on the first bound
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(600));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets.len(), BUCKETS + 1);
        assert_eq!(snapshot.buckets[0], (0.000_05, 1));
        let at = |bound: f64| snapshot.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.005), 1);
        assert_eq!(at(f64::INFINITY), 1);
        assert!((snapshot.sum_seconds - 600.00305).abs() < 1e-9);
    }
}
