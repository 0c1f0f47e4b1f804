//! Prints the one summary line of every safety suite that ran (see `dedup_checker::summary`)
//! and exits non-zero if any violation counter is above 0 or a required minimum is not met.
//!
//! `safety-summary [--dir D] [--min-seeds N] [--min-schedules N] [--min-crash-cycles N]
//! [--all-bugs-caught]`

use std::path::PathBuf;
use std::process::ExitCode;

use dedup_checker::summary;

fn main() -> ExitCode {
    let mut dir = summary::safety_dir();
    let (mut min_seeds, mut min_schedules, mut min_crash_cycles, mut all_bugs) = (0u64, 0u64, 0u64, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        let parsed = match arg.as_str() {
            "--dir" => args.next().map(|d| dir = PathBuf::from(d)).ok_or_else(|| "--dir needs a path".to_string()),
            "--min-seeds" => number("--min-seeds").map(|n| min_seeds = n),
            "--min-schedules" => number("--min-schedules").map(|n| min_schedules = n),
            "--min-crash-cycles" => number("--min-crash-cycles").map(|n| min_crash_cycles = n),
            "--all-bugs-caught" => {
                all_bugs = true;
                Ok(())
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(message) = parsed {
            eprintln!("safety-summary: {message}");
            return ExitCode::from(2);
        }
    }
    let suites = match summary::read_all(&dir) {
        Ok(suites) => suites,
        Err(error) => {
            eprintln!("safety-summary: reading {}: {error}", dir.display());
            return ExitCode::from(2);
        }
    };
    println!("{}", summary::one_line(&suites));
    let mut failures = Vec::new();
    let violations = summary::total_violations(&suites);
    if violations > 0 {
        failures.push(format!("{violations} violations"));
    }
    let seeds: u64 = suites.values().map(|s| s.seeds).sum();
    let schedules: u64 = suites.values().map(|s| s.schedules_run).sum();
    let cycles: u64 = suites.values().map(|s| s.crash_cycles).sum();
    let (seeded, caught): (u64, u64) =
        suites.values().fold((0, 0), |(s, c), suite| (s + suite.bugs_seeded, c + suite.bugs_caught));
    if seeds < min_seeds {
        failures.push(format!("{seeds} seeds, fewer than {min_seeds}"));
    }
    if schedules < min_schedules {
        failures.push(format!("{schedules} schedules, fewer than {min_schedules}"));
    }
    if cycles < min_crash_cycles {
        failures.push(format!("{cycles} crash cycles, fewer than {min_crash_cycles}"));
    }
    if all_bugs && (seeded == 0 || caught < seeded) {
        failures.push(format!("{caught} of {seeded} seeded bugs caught"));
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("safety-summary: FAILED: {}", failures.join("; "));
        ExitCode::FAILURE
    }
}
