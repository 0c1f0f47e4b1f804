//! `sim-safety`: pinned regression seeds plus fresh seeds of the deterministic simulation until
//! a time box closes, every one judged by dedup-checker and the replica digests.
//!
//! - `DEDUP_SIM_SECONDS` (default 150): real seconds of fresh seeds after the pinned ones.
//! - `DEDUP_SIM_MIN_SEEDS` (default 200): run at least this many seeds, whatever the time.
//! - `DEDUP_SIM_SEED=N`: replay seed N only.
//! - `DEDUP_SIM_THREADS` (default 1): seeds run in parallel, each on its own thread. One by
//!   default, so that the real-process suites running beside it keep a core.
//!
//! `cargo nextest run -p dedup-sim --test sim_safety --no-capture`

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use dedup_checker::summary::SuiteSummary;
use dedup_sim::run_seed;
use dedup_sim::SeedResult;
use dedup_sim::SimOptions;
use dedup_sim::FAULT_KINDS;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn regression_seeds() -> Vec<u64> {
    let text = include_str!("../regression-seeds.txt");
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| line.parse().unwrap_or_else(|_| panic!("bad seed {line:?} in regression-seeds.txt")))
        .collect()
}

/// Fresh seeds differ per run; the first one is printed, and every failing one.
fn fresh_seed_base() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 1
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    failed: Vec<u64>,
    faults: BTreeMap<&'static str, u64>,
    violations: BTreeMap<String, u64>,
    summary: SuiteSummary,
    leader_changes: u64,
    takeovers: u64,
    fenced: u64,
    late_completes: u64,
    acked_completes: u64,
    crashes: u64,
    dropped_batches: u64,
    snapshot_installs: u64,
    purged_logs: u64,
    ops: u64,
    sim_ms: u64,
}

impl Totals {
    fn add(&mut self, result: &SeedResult) {
        self.seeds += 1;
        if result.failed() {
            self.failed.push(result.seed);
        }
        for (kind, count) in &result.faults {
            *self.faults.entry(kind).or_default() += count;
            // The summary counts schedules (seeds) by the fault kinds they applied.
            if *count > 0 && !result.failed() {
                *self.summary.schedules.entry(kind.to_string()).or_default() += 1;
            }
        }
        for (name, count) in result.violations() {
            *self.violations.entry(name).or_default() += count;
        }
        if let Some(report) = &result.report {
            self.summary.add_report(report);
        }
        let s = &result.stats;
        self.summary.add_violations("replica_divergence", result.digest_mismatches);
        for (name, count) in result.violations() {
            if !dedup_checker::Rule::ALL.iter().any(|rule| rule.name() == name) {
                self.summary.add_violations(&name, count);
            }
        }
        self.leader_changes += s.leader_changes;
        self.takeovers += s.takeovers;
        self.fenced += s.fenced;
        self.late_completes += s.late_completes;
        self.acked_completes += s.acked_completes;
        self.crashes += s.crashes;
        self.dropped_batches += s.unflushed_batches_dropped;
        self.snapshot_installs += s.snapshot_installs;
        self.purged_logs += s.nodes_with_purged_log;
        self.ops += s.ops;
        self.sim_ms += s.sim_ms;
    }
}

fn report_failure(result: &SeedResult) {
    eprintln!("{}", result.explain());
    eprintln!("replay: DEDUP_SIM_SEED={} cargo nextest run -p dedup-sim --test sim_safety --no-capture", result.seed);
}

fn describe(result: &SeedResult) -> String {
    let s = &result.stats;
    format!(
        "seed {} {} in {:.2}s real / {:.1}s sim: ops {} keys {} leader changes {} takeovers {} fenced {} \
         crashes {} installs {} faults {:?}",
        result.seed,
        if result.failed() { "FAILED" } else { "ok" },
        result.real.as_secs_f64(),
        s.sim_ms as f64 / 1000.0,
        s.ops,
        s.keys,
        s.leader_changes,
        s.takeovers,
        s.fenced,
        s.crashes,
        s.snapshot_installs,
        result.faults,
    )
}

#[test]
fn sim_seeds() {
    let options = SimOptions::default();
    if let Some(seed) = env_u64("DEDUP_SIM_SEED") {
        let result = run_seed(seed, &options);
        eprintln!("{}", describe(&result));
        if result.failed() {
            report_failure(&result);
            panic!("seed {seed} violated the safety rules");
        }
        return;
    }

    let time_box = Duration::from_secs(env_u64("DEDUP_SIM_SECONDS").unwrap_or(150));
    let min_seeds = env_u64("DEDUP_SIM_MIN_SEEDS").unwrap_or(200);
    let threads = env_u64("DEDUP_SIM_THREADS").unwrap_or(1).max(1);
    let pinned = regression_seeds();
    let base = fresh_seed_base();
    eprintln!(
        "sim-safety: {} pinned seeds, then fresh seeds from {base} for {}s and at least {min_seeds} seeds",
        pinned.len(),
        time_box.as_secs()
    );

    let started = Instant::now();
    let next = AtomicU64::new(0);
    let totals = Mutex::new(Totals::default());
    let seed_at = |n: u64| -> u64 {
        match pinned.get(n as usize) {
            Some(seed) => *seed,
            None => base.wrapping_add(n - pinned.len() as u64),
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let in_box = started.elapsed() < time_box;
                if n >= pinned.len() as u64 && n >= min_seeds && !in_box {
                    break;
                }
                let seed = seed_at(n);
                let result = run_seed(seed, &options);
                if result.failed() {
                    report_failure(&result);
                }
                if std::env::var_os("DEDUP_SIM_VERBOSE").is_some() {
                    eprintln!("{}", describe(&result));
                }
                totals.lock().unwrap().add(&result);
            });
        }
    });
    let elapsed = started.elapsed();
    let mut totals = totals.into_inner().unwrap();

    let faults: Vec<String> =
        FAULT_KINDS.iter().map(|k| format!("{k}={}", totals.faults.get(k).unwrap_or(&0))).collect();
    let violations: Vec<String> = totals.violations.iter().map(|(k, n)| format!("{k}={n}")).collect();
    eprintln!(
        "SIM-SAFETY seeds={} failed={} real={:.1}s ({:.2} seeds/s, {:.1}s simulated) ops={} leader_changes={} \
         takeovers={} fenced={} late_completes={} acked_completes={} crashes={} unflushed_batches_dropped={} \
         snapshot_installs={} purged_logs={} faults: {} violations: {}",
        totals.seeds,
        totals.failed.len(),
        elapsed.as_secs_f64(),
        totals.seeds as f64 / elapsed.as_secs_f64(),
        totals.sim_ms as f64 / 1000.0,
        totals.ops,
        totals.leader_changes,
        totals.takeovers,
        totals.fenced,
        totals.late_completes,
        totals.acked_completes,
        totals.crashes,
        totals.dropped_batches,
        totals.snapshot_installs,
        totals.purged_logs,
        faults.join(" "),
        violations.join(" "),
    );

    totals.summary.seeds = totals.seeds;
    if let Err(error) = totals.summary.record("sim-safety") {
        eprintln!("could not record the suite summary: {error}");
    }

    assert!(totals.failed.is_empty(), "seeds violated the safety rules: {:?}", totals.failed);
    // The batch must prove that its faults happened.
    assert!(totals.seeds >= min_seeds.max(pinned.len() as u64), "too few seeds ran");
    if totals.seeds >= 20 {
        for kind in FAULT_KINDS {
            assert!(totals.faults.get(kind).copied().unwrap_or(0) > 0, "fault {kind} never happened");
        }
        assert!(totals.leader_changes > 0, "no leader change");
        assert!(totals.takeovers > 0, "no lease takeover");
        assert!(totals.fenced > 0, "no stale token was fenced");
        assert!(totals.late_completes > 0, "no late complete");
        assert!(totals.crashes > 0 && totals.dropped_batches > 0, "no crash lost unflushed writes");
        assert!(totals.snapshot_installs > 0, "no snapshot was installed");
        assert!(totals.purged_logs > 0, "no Raft log was purged behind a snapshot");
    }
}
