//! What the two load generators of dedup-ledger share, in one copy: `dedupctl bench`
//! (`client/src/bin/dedupctl/bench.rs`, against dedup-ledger) and `compare-load`
//! (`bench/src/main.rs`, against etcd and Redis, its own cargo workspace).
//!
//! Both must build the same keys, measure latency the same way and print the same JSON fields
//! and table columns, because `bench/report.py` reads the results of all three systems side by
//! side. What is specific to one system (its calls, retries, extra flags and fields) stays in
//! that program.
//!
//! Kept light on purpose (hdrhistogram, rand, serde_json, libc): `bench/` builds it by path.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use serde_json::Value;

/// `--concurrency` at most: workers of one run, each with one call in flight.
pub const CONCURRENCY_MAX: usize = 4096;
/// `--connections` at most: connections per target node or endpoint.
pub const CONNECTIONS_MAX: usize = 256;
/// `--keys` at most: keys a preload (or dedupctl's `fill`) writes.
pub const KEYS_MAX: u64 = 100_000_000;
/// `--duration` at most: the length of one timed run.
pub const DURATION_MAX: Duration = Duration::from_secs(3600);
/// The concurrency levels of `--sweep`, run in this order (one result per level).
pub const SWEEP_CONCURRENCY: [usize; 5] = [1, 4, 16, 64, 256];
/// `--key-bytes` at least: room for a random prefix ([`KeySpace::random_prefix`], 10 bytes) and
/// [`KEY_SUFFIX_BYTES`].
pub const KEY_BYTES_MIN: usize = 32;
/// `--key-bytes` at most.
pub const KEY_BYTES_MAX: usize = 512;
/// `--outcome-bytes` at most: the length of one outcome (value) payload.
pub const OUTCOME_BYTES_MAX: usize = 65_536;
/// What a key needs beyond the prefix of the run: a level sub-prefix (dedupctl's `complete`
/// adds `{concurrency:x}-`, up to 5 bytes at `CONCURRENCY_MAX` = 0x1000), a kind letter and 16
/// hex digits of the mixed index. A prefix fits when `prefix.len() + KEY_SUFFIX_BYTES <=
/// key_bytes` ([`KeySpace::fits`]), so keys are never longer than `--key-bytes`.
pub const KEY_SUFFIX_BYTES: usize = 22;
/// Latencies are recorded in microseconds, clamped to `1..=LATENCY_MAX_US` (120 s): the bounds
/// of every [`Tally`] histogram, so that any two tallies can be merged.
pub const LATENCY_MAX_US: u64 = 120_000_000;

/// Key kind of keys written (and completed) before the timed phase.
pub const KIND_COMPLETED: char = 'c';
/// Key kind of keys claimed (not completed) before the timed phase (dedupctl's `complete`).
pub const KIND_CLAIMED: char = 'l';
/// Key kind of keys first used in the timed phase.
pub const KIND_NEW: char = 'n';

/// The keys of a run: `prefix` + kind letter + zero padding + 16 hex digits of [`mix`]`(index)`.
///
/// Invariants, as long as `prefix.len() + 17 <= key_bytes` (which [`KeySpace::fits`] implies,
/// with room to spare for a level sub-prefix):
/// * every key is exactly `key_bytes` long;
/// * keys are unique per (kind, index): [`mix`] is a bijection, so distinct indexes give
///   distinct hex digits, and the kind letter sits at the same position in every key;
/// * keys look like hashed message IDs, not a counter (which would flatter sled's and the
///   snapshots' compression).
///
/// The kinds are [`KIND_COMPLETED`], [`KIND_CLAIMED`] and [`KIND_NEW`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    /// What every key of the run starts with.
    pub prefix: String,
    /// The length of every key.
    pub key_bytes: usize,
}

impl KeySpace {
    /// A fresh prefix for a run that was given none: `b` + 8 random hex digits + `-` (10 bytes),
    /// so runs against the same cluster do not collide.
    pub fn random_prefix() -> String {
        format!("b{:08x}-", rand::random::<u32>())
    }

    /// Whether `prefix` leaves room for [`KEY_SUFFIX_BYTES`] in keys of `key_bytes`.
    pub fn fits(prefix: &str, key_bytes: usize) -> bool {
        prefix.len() + KEY_SUFFIX_BYTES <= key_bytes
    }

    /// Key number `index` of `kind`; see the type's invariants.
    pub fn key(&self, kind: char, index: u64) -> Vec<u8> {
        let digits = self.key_bytes - self.prefix.len() - 1;
        format!("{}{kind}{:0digits$x}", self.prefix, mix(index)).into_bytes()
    }
}

/// splitmix64's finalizer: a bijection on u64 (each step is invertible), so distinct indexes
/// give distinct keys, and consecutive indexes give unrelated-looking ones.
pub fn mix(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An outcome (value) payload of `bytes` random bytes: incompressible, like a real result
/// digest.
pub fn random_payload(bytes: usize) -> Vec<u8> {
    let mut payload = vec![0u8; bytes];
    rand::thread_rng().fill(payload.as_mut_slice());
    payload
}

/// What one worker (or a whole run, once merged) saw.
///
/// One operation is one call: `ops` counts calls, `items` the keys they got done (more than one
/// per batch call, none for a failed call). Every call, failed or not, has one latency in
/// `latency_us`, so `latency_us.len() == ops` for tallies filled by [`Tally::record`].
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of each operation in microseconds, within `1..=`[`LATENCY_MAX_US`], 3
    /// significant digits.
    pub latency_us: Histogram<u64>,
    /// Operations (calls) done.
    pub ops: u64,
    /// Items (keys) those operations got done.
    pub items: u64,
    /// Failed operations by reason (the reason strings are each program's own).
    pub errors: BTreeMap<String, u64>,
    /// Answers other than the path expects, by answer.
    pub unexpected: BTreeMap<String, u64>,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Calls answered "not the leader" (dedupctl; always 0 for etcd and Redis).
    pub redirects: u64,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("histogram bounds are valid"),
            ops: 0,
            items: 0,
            errors: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            retries: 0,
            redirects: 0,
        }
    }

    /// One operation that took `latency` (clamped to the histogram's bounds) and got `items`
    /// done.
    pub fn record(&mut self, latency: Duration, items: u64) {
        let micros = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        self.latency_us.record(micros).expect("value within histogram bounds");
        self.ops += 1;
        self.items += items;
    }

    /// One failure of `reason`.
    pub fn error(&mut self, reason: String) {
        *self.errors.entry(reason).or_default() += 1;
    }

    /// One unexpected answer `what`.
    pub fn unexpected(&mut self, what: &str) {
        *self.unexpected.entry(what.to_string()).or_default() += 1;
    }

    /// Adds `other` into this tally: every count and the latency histogram.
    pub fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).expect("histograms share bounds");
        self.ops += other.ops;
        self.items += other.items;
        self.retries += other.retries;
        self.redirects += other.redirects;
        for (name, count) in other.errors {
            *self.errors.entry(name).or_default() += count;
        }
        for (name, count) in other.unexpected {
            *self.unexpected.entry(name).or_default() += count;
        }
    }

    /// Latency at quantile `q` (0..=1) in milliseconds; 0 when there were no operations.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            self.latency_us.value_at_quantile(q) as f64 / 1000.0
        }
    }

    /// Highest latency in milliseconds; 0 when there were no operations.
    pub fn max_ms(&self) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            self.latency_us.max() as f64 / 1000.0
        }
    }

    /// Mean latency in milliseconds; 0 when there were no operations.
    pub fn mean_ms(&self) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            self.latency_us.mean() / 1000.0
        }
    }
}

/// `--duration` and friends: `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds
/// (fractions allowed). The error names the valid units; it is what clap prints for a bad flag.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("not a duration: {text:?} (try 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("bad duration {text:?}: {e}"))
}

/// `Err("{flag} must be within {min}..={max}, got {value}")` unless `min <= value <= max`.
pub fn check_range(flag: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("{flag} must be within {min}..={max}, got {value}"));
    }
    Ok(())
}

/// `--duration` must be more than 0 and at most [`DURATION_MAX`].
pub fn check_duration(duration: Duration) -> Result<(), String> {
    if duration.is_zero() || duration > DURATION_MAX {
        return Err(format!("--duration must be more than 0 and at most {}s", DURATION_MAX.as_secs()));
    }
    Ok(())
}

/// Client CPU time (user + system) of this process so far; zero if the OS does not say.
/// The difference of two readings is the load generator's own cost of a run.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// The wall clock and the client CPU clock of one timed run, started together.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    started: Instant,
    cpu_before: Duration,
}

impl RunClock {
    /// Starts both clocks (the CPU clock first, so the run's own start-up counts).
    pub fn start() -> RunClock {
        let cpu_before = process_cpu_time();
        RunClock { started: Instant::now(), cpu_before }
    }

    /// When the run started: the base of its deadline (and of dedupctl's due times).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// (wall time, client CPU time) since [`RunClock::start`].
    pub fn stop(&self) -> (Duration, Duration) {
        let elapsed = self.started.elapsed();
        (elapsed, process_cpu_time().saturating_sub(self.cpu_before))
    }
}

/// The two bounds of every timed loop, shared by the workers of a run: a deadline and a number
/// of operations. Once [`OpBudget::take`] has said no it says no for good, and it says yes at
/// most `max_ops` times in all, however many workers ask.
#[derive(Debug)]
pub struct OpBudget {
    deadline: Instant,
    max_ops: u64,
    started: AtomicU64,
}

impl OpBudget {
    /// A budget of `max_ops` operations until `deadline`.
    pub fn new(deadline: Instant, max_ops: u64) -> OpBudget {
        OpBudget { deadline, max_ops, started: AtomicU64::new(0) }
    }

    /// When the run ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Takes the slot of one more operation: false once the deadline has passed or `max_ops`
    /// slots were taken (then the worker stops).
    pub fn take(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        self.started.fetch_add(1, Ordering::Relaxed) < self.max_ops
    }
}

/// One timed run (one concurrency level), as both programs report it.
pub struct RunReport<'a> {
    /// The path (workload) name, e.g. `claim-new`.
    pub path: &'a str,
    /// Workers of the run.
    pub concurrency: usize,
    /// `--connections`.
    pub connections_per_node: usize,
    /// The endpoints that received the load.
    pub targets: &'a [String],
    /// Open loop at this many operations per second in total; `None`: closed loop.
    pub rate: Option<u64>,
    /// `--key-bytes`.
    pub key_bytes: usize,
    /// `--outcome-bytes`.
    pub outcome_bytes: usize,
    /// Items per call, for paths that batch; `None` (JSON null) for the others.
    pub batch: Option<usize>,
    /// What the workers saw, merged.
    pub tally: &'a Tally,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Client CPU time the run took ([`process_cpu_time`] after minus before).
    pub cpu: Duration,
    /// Raft entries the run appended; `None` (JSON null) where unknown (Redis).
    pub raft_entries: Option<u64>,
    /// Seconds the preload before the run took (0 without one).
    pub preload_secs: f64,
}

impl RunReport<'_> {
    /// The JSON object scripts read (`bench/report.py`, the tests): `path`, `concurrency`,
    /// `connections_per_node`, `targets`, `mode` (`open-loop` with a rate, else `closed-loop`),
    /// `rate`, `key_bytes`, `outcome_bytes`, `batch`, `duration_s`, `ops`, `ops_per_sec`,
    /// `items`, `items_per_sec`, `errors`, `errors_by_reason`, `unexpected_answers`,
    /// `unexpected_by_answer`, `retries`, `redirects`, `p50_ms`, `p90_ms`, `p99_ms`, `p999_ms`,
    /// `max_ms`, `client_cpu_s`, `client_cpu_percent`, `raft_entries`, `preload_s`; raw
    /// numbers, no units beyond those in the names. Each program may add its own fields.
    pub fn to_json(&self) -> Value {
        let tally = self.tally;
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        let errors: u64 = tally.errors.values().sum();
        let unexpected: u64 = tally.unexpected.values().sum();
        json!({
            "path": self.path,
            "concurrency": self.concurrency,
            "connections_per_node": self.connections_per_node,
            "targets": self.targets,
            "mode": if self.rate.is_some() { "open-loop" } else { "closed-loop" },
            "rate": self.rate,
            "key_bytes": self.key_bytes,
            "outcome_bytes": self.outcome_bytes,
            "batch": self.batch,
            "duration_s": seconds,
            "ops": tally.ops,
            "ops_per_sec": tally.ops as f64 / seconds,
            "items": tally.items,
            "items_per_sec": tally.items as f64 / seconds,
            "errors": errors,
            "errors_by_reason": tally.errors,
            "unexpected_answers": unexpected,
            "unexpected_by_answer": tally.unexpected,
            "retries": tally.retries,
            "redirects": tally.redirects,
            "p50_ms": tally.quantile_ms(0.50),
            "p90_ms": tally.quantile_ms(0.90),
            "p99_ms": tally.quantile_ms(0.99),
            "p999_ms": tally.quantile_ms(0.999),
            "max_ms": tally.max_ms(),
            "client_cpu_s": self.cpu.as_secs_f64(),
            "client_cpu_percent": 100.0 * self.cpu.as_secs_f64() / seconds,
            "raft_entries": self.raft_entries,
            "preload_s": self.preload_secs,
        })
    }
}

/// The columns of the results table both programs print, after any leading columns of their
/// own.
pub const TABLE_COLUMNS: [&str; 14] = [
    "path",
    "conc",
    "ops/s",
    "items/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "errors",
    "unexpected",
    "retries",
    "raft entries",
    "client cpu",
];

/// The results (objects of [`RunReport::to_json`]) as a table for people: a header and one row
/// per run, each cell right-aligned to its column, columns two spaces apart, no trailing
/// blanks. `leading` are extra columns before [`TABLE_COLUMNS`], each a (header, string field)
/// pair, e.g. `("system", "system")`. A missing string shows as `?`.
pub fn results_table(results: &[Value], leading: &[(&str, &str)]) -> String {
    let header = leading.iter().map(|(title, _)| *title).chain(TABLE_COLUMNS);
    let mut rows: Vec<Vec<String>> = vec![header.map(str::to_string).collect()];
    for r in results {
        let number = |name: &str| r[name].as_f64().unwrap_or(0.0);
        let text = |name: &str| r[name].as_str().unwrap_or("?").to_string();
        let mut row: Vec<String> = leading.iter().map(|(_, field)| text(field)).collect();
        row.extend([
            text("path"),
            r["concurrency"].to_string(),
            format!("{:.0}", number("ops_per_sec")),
            format!("{:.0}", number("items_per_sec")),
            format!("{:.3}", number("p50_ms")),
            format!("{:.3}", number("p90_ms")),
            format!("{:.3}", number("p99_ms")),
            format!("{:.3}", number("p999_ms")),
            format!("{:.3}", number("max_ms")),
            r["errors"].to_string(),
            r["unexpected_answers"].to_string(),
            r["retries"].to_string(),
            r["raft_entries"].to_string(),
            format!("{:.0}%", number("client_cpu_percent")),
        ]);
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:>width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The line under the table that spells out a by-reason map of one result:
/// `"{path} c={concurrency}: {label} {map as JSON}\n"`, or `None` when `field` is not a
/// non-empty object.
pub fn breakdown_line(result: &Value, field: &str, label: &str) -> Option<String> {
    let map = result[field].as_object().filter(|m| !m.is_empty())?;
    Some(format!(
        "{} c={}: {label} {}\n",
        result["path"].as_str().unwrap_or("?"),
        result["concurrency"],
        Value::Object(map.clone())
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn keys_are_exactly_key_bytes_long() {
        for key_bytes in [KEY_BYTES_MIN, 33, 64, KEY_BYTES_MAX] {
            let keys = KeySpace { prefix: KeySpace::random_prefix(), key_bytes };
            assert!(KeySpace::fits(&keys.prefix, key_bytes));
            for kind in [KIND_COMPLETED, KIND_CLAIMED, KIND_NEW] {
                for index in [0, 1, 7, u32::MAX as u64, u64::MAX] {
                    assert_eq!(keys.key(kind, index).len(), key_bytes, "{kind} {index} of {key_bytes}");
                }
            }
        }
        // The longest prefix that fits still gives keys of exactly key_bytes.
        let prefix = "p".repeat(KEY_BYTES_MIN - KEY_SUFFIX_BYTES);
        assert!(KeySpace::fits(&prefix, KEY_BYTES_MIN));
        assert!(!KeySpace::fits(&format!("{prefix}x"), KEY_BYTES_MIN));
        let keys = KeySpace { prefix, key_bytes: KEY_BYTES_MIN };
        assert_eq!(keys.key(KIND_NEW, u64::MAX).len(), KEY_BYTES_MIN);
    }

    #[test]
    fn keys_are_distinct_for_distinct_indexes_and_kinds() {
        let keys = KeySpace { prefix: "b1234abcd-".to_string(), key_bytes: 32 };
        let mut seen = HashSet::new();
        for kind in [KIND_COMPLETED, KIND_CLAIMED, KIND_NEW] {
            for index in (0..20_000).chain([u64::MAX - 1, u64::MAX]) {
                assert!(seen.insert(keys.key(kind, index)), "{kind} {index} repeats a key");
            }
        }
        assert!(keys.key(KIND_NEW, 7).starts_with(b"b1234abcd-n"));
    }

    #[test]
    fn mix_is_invertible_on_samples() {
        // The inverse of splitmix64's finalizer: proves the bijection the key invariant needs.
        fn unmix(mut z: u64) -> u64 {
            z = (z ^ (z >> 31) ^ (z >> 62)).wrapping_mul(0x3196_42b2_d24d_8ec3);
            z = (z ^ (z >> 27) ^ (z >> 54)).wrapping_mul(0x96de_1b17_3f11_9089);
            z = z ^ (z >> 30) ^ (z >> 60);
            z.wrapping_sub(0x9e37_79b9_7f4a_7c15)
        }
        for index in (0..10_000).chain([u64::MAX, u64::MAX / 3, 1 << 63]) {
            assert_eq!(unmix(mix(index)), index);
        }
    }

    #[test]
    fn payloads_have_the_asked_length() {
        assert!(random_payload(0).is_empty());
        assert_eq!(random_payload(OUTCOME_BYTES_MAX).len(), OUTCOME_BYTES_MAX);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn junk_durations_are_refused_naming_the_units() {
        let unit = parse_duration("5d").unwrap_err();
        assert_eq!(unit, r#"unknown unit "d" in "5d" (use ms, s, m or h)"#);
        for junk in ["ten", "", "s", "-1s"] {
            let error = parse_duration(junk).unwrap_err();
            assert!(error.contains("10s, 500ms, 2m"), "{junk:?}: {error}");
        }
    }

    #[test]
    fn ranges_and_durations_are_checked() {
        assert_eq!(check_range("--batch", 1, 1, 256), Ok(()));
        assert_eq!(check_range("--batch", 0, 1, 256), Err("--batch must be within 1..=256, got 0".to_string()));
        assert_eq!(check_duration(DURATION_MAX), Ok(()));
        assert!(check_duration(Duration::ZERO).unwrap_err().contains("at most 3600s"));
        assert!(check_duration(DURATION_MAX + Duration::from_millis(1)).is_err());
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = Tally::new();
        a.record(Duration::from_micros(100), 1);
        a.record(Duration::from_micros(200), 3);
        a.error("UNAVAILABLE/NOT_LEADER".to_string());
        a.unexpected("EXISTED");
        a.retries = 2;
        a.redirects = 1;
        let mut b = Tally::new();
        b.record(Duration::from_millis(50), 64);
        b.error("UNAVAILABLE/NOT_LEADER".to_string());
        b.error("TIMEOUT".to_string());
        b.unexpected("CLAIMED");
        b.retries = 5;
        a.merge(b);
        assert_eq!((a.ops, a.items, a.retries, a.redirects), (3, 68, 7, 1));
        assert_eq!(a.latency_us.len(), 3);
        assert_eq!(a.latency_us.min(), 100);
        assert!(a.latency_us.equivalent(a.latency_us.max(), 50_000));
        let errors: Vec<(&str, u64)> = a.errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(errors, [("TIMEOUT", 1), ("UNAVAILABLE/NOT_LEADER", 2)]);
        let unexpected: Vec<(&str, u64)> = a.unexpected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(unexpected, [("CLAIMED", 1), ("EXISTED", 1)]);
    }

    #[test]
    fn latencies_are_clamped_to_the_histogram() {
        let mut tally = Tally::new();
        assert_eq!((tally.quantile_ms(0.5), tally.max_ms(), tally.mean_ms()), (0.0, 0.0, 0.0));
        tally.record(Duration::ZERO, 0);
        tally.record(Duration::from_secs(3600), 0);
        assert_eq!(tally.latency_us.min(), 1);
        assert!(tally.latency_us.equivalent(tally.latency_us.max(), LATENCY_MAX_US));
        assert_eq!((tally.ops, tally.items), (2, 0));
    }

    #[test]
    fn the_budget_bounds_operations_and_time() {
        let budget = OpBudget::new(Instant::now() + Duration::from_secs(3600), 3);
        assert_eq!((0..10).filter(|_| budget.take()).count(), 3);
        let over = OpBudget::new(Instant::now(), u64::MAX);
        assert!(!over.take());
        assert!(over.deadline() <= Instant::now());
    }

    #[test]
    fn cpu_time_does_not_go_backwards() {
        let before = process_cpu_time();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(mix(i));
        }
        std::hint::black_box(x);
        assert!(process_cpu_time() >= before);
        let clock = RunClock::start();
        let (elapsed, cpu) = clock.stop();
        assert!(
            clock.started() <= Instant::now() && elapsed < Duration::from_secs(60) && cpu < Duration::from_secs(60)
        );
    }

    fn sample() -> Value {
        let mut tally = Tally::new();
        tally.record(Duration::from_millis(2), 1);
        tally.error("TIMEOUT".to_string());
        let targets = ["http://127.0.0.1:7401".to_string()];
        RunReport {
            path: "claim-new",
            concurrency: 4,
            connections_per_node: 2,
            targets: &targets,
            rate: None,
            key_bytes: 32,
            outcome_bytes: 64,
            batch: None,
            tally: &tally,
            elapsed: Duration::from_secs(2),
            cpu: Duration::from_secs(1),
            raft_entries: Some(9),
            preload_secs: 0.0,
        }
        .to_json()
    }

    #[test]
    fn results_carry_the_fields_scripts_read() {
        let run = sample();
        assert_eq!(run["path"], "claim-new");
        assert_eq!(run["mode"], "closed-loop");
        assert_eq!((run["rate"].is_null(), run["batch"].is_null()), (true, true));
        assert_eq!((run["ops"].as_u64(), run["items"].as_u64(), run["errors"].as_u64()), (Some(1), Some(1), Some(1)));
        assert_eq!(run["errors_by_reason"], json!({"TIMEOUT": 1}));
        assert_eq!(run["ops_per_sec"].as_f64(), Some(0.5));
        assert_eq!(run["client_cpu_percent"].as_f64(), Some(50.0));
        assert_eq!(run["raft_entries"].as_u64(), Some(9));
        assert!((run["p50_ms"].as_f64().unwrap() - 2.0).abs() < 0.01, "{run}");
        assert_eq!(run.as_object().unwrap().len(), 29);
    }

    #[test]
    fn the_table_aligns_columns_and_spells_out_errors() {
        let mut run = sample();
        run["system"] = json!("etcd");
        let table = results_table(&[run.clone()], &[("system", "system")]);
        assert_eq!(
            table,
            "system       path  conc  ops/s  items/s  p50 ms  p90 ms  p99 ms  p99.9 ms  max ms  errors  unexpected  \
             retries  raft entries  client cpu\n  etcd  claim-new     4      0        0   2.000   2.000   2.000     \
             2.000   2.000       1           0        0             9         50%\n"
        );
        assert_eq!(
            breakdown_line(&run, "errors_by_reason", "errors").unwrap(),
            "claim-new c=4: errors {\"TIMEOUT\":1}\n"
        );
        assert_eq!(breakdown_line(&run, "unexpected_by_answer", "unexpected answers"), None);
        assert!(results_table(&[run], &[]).starts_with("     path  conc"));
    }
}
