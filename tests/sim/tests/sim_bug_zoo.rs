//! `sim-bug-zoo`: proves sim-safety catches known bugs. Each bug of `dedup_cluster::bug_zoo` is
//! seeded in turn (process-wide, so this is its own test binary) and seeds run until the
//! checker, the replica digests, the heal phase or an assertion in the node code catches it,
//! within a budget per bug (`DEDUP_SIM_ZOO_SECONDS`, default 60 real seconds).
//!
//! `DEDUP_SIM_ZOO_SEEDS=N` instead runs exactly N seeds per bug and prints how many caught it
//! (the detection rate); `DEDUP_BUG_ZOO=<name>` hunts one bug only.
//!
//! `cargo nextest run -p dedup-sim --features bug-zoo --test sim_bug_zoo --no-capture`
#![cfg(feature = "bug-zoo")]

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use dedup_checker::summary::SuiteSummary;
use dedup_cluster::bug_zoo;
use dedup_cluster::bug_zoo::Bug;
use dedup_sim::run_seed;
use dedup_sim::SeedResult;
use dedup_sim::SimOptions;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// What caught one bug.
struct Caught {
    seed: u64,
    seeds_run: u64,
    seeds_failed: u64,
    elapsed: Duration,
    how: String,
}

/// Runs seeds 1, 2, 3, ... (`threads` at a time) with `bug` seeded until one fails (or, with
/// `exactly`, until that many seeds ran) or `budget` ends.
fn hunt(bug: Bug, budget: Duration, threads: u64, exactly: Option<u64>) -> Result<Caught, (u64, Duration)> {
    bug_zoo::select(Some(bug));
    let options = SimOptions::default();
    let started = Instant::now();
    let next = AtomicU64::new(1);
    let stop = AtomicBool::new(false);
    let ran = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let found: Mutex<Option<SeedResult>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) && started.elapsed() < budget {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if exactly.is_some_and(|n| seed > n) {
                        break;
                    }
                    let result = run_seed(seed, &options);
                    ran.fetch_add(1, Ordering::SeqCst);
                    if result.failed() {
                        failed.fetch_add(1, Ordering::SeqCst);
                        stop.store(exactly.is_none(), Ordering::SeqCst);
                        let mut found = found.lock().unwrap();
                        if found.as_ref().is_none_or(|f| f.seed > seed) {
                            *found = Some(result);
                        }
                    }
                }
            });
        }
    });
    bug_zoo::select(None);
    let elapsed = started.elapsed();
    let seeds_run = ran.load(Ordering::SeqCst);
    match found.into_inner().unwrap() {
        Some(result) => {
            let how: Vec<String> =
                result.violations().into_iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
            eprintln!("{}", result.explain());
            let seeds_failed = failed.load(Ordering::SeqCst);
            Ok(Caught { seed: result.seed, seeds_run, seeds_failed, elapsed, how: how.join(" ") })
        }
        None => Err((seeds_run, elapsed)),
    }
}

#[test]
fn every_seeded_bug_is_caught() {
    let budget = Duration::from_secs(env_u64("DEDUP_SIM_ZOO_SECONDS").unwrap_or(60));
    let threads = env_u64("DEDUP_SIM_THREADS").unwrap_or(2).max(1);
    let exactly = env_u64("DEDUP_SIM_ZOO_SEEDS");
    let only: Option<Bug> = std::env::var("DEDUP_BUG_ZOO").ok().filter(|s| !s.is_empty()).map(|s| s.parse().unwrap());
    let bugs: Vec<Bug> = Bug::ALL.into_iter().filter(|bug| only.is_none_or(|o| o == *bug)).collect();

    let mut summary = SuiteSummary::default();
    let mut missed = Vec::new();
    for bug in &bugs {
        summary.bugs_seeded += 1;
        match hunt(*bug, budget, threads, exactly) {
            Ok(caught) => {
                summary.bugs_caught += 1;
                summary.seeds += caught.seeds_run;
                eprintln!(
                    "BUG-ZOO {bug}: caught by seed {} ({} of {} seeds failed, {:.1}s): {}",
                    caught.seed,
                    caught.seeds_failed,
                    caught.seeds_run,
                    caught.elapsed.as_secs_f64(),
                    caught.how
                );
            }
            Err((seeds_run, elapsed)) => {
                summary.seeds += seeds_run;
                missed.push(bug.name());
                eprintln!("BUG-ZOO {bug}: NOT caught by {seeds_run} seeds in {:.1}s", elapsed.as_secs_f64());
            }
        }
    }
    eprintln!("BUG-ZOO caught {}/{} bugs; missed: {missed:?}", summary.bugs_caught, summary.bugs_seeded);
    if let Err(error) = summary.record("sim-bug-zoo") {
        eprintln!("could not record the suite summary: {error}");
    }
    assert!(missed.is_empty(), "bugs not caught by the simulation: {missed:?}");
}
