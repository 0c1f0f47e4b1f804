//! One summary line for every safety suite of a run.
//!
//! Each suite (sim-safety, cluster-proc, store-crash, store-full, bug-zoo) adds what it did to
//! its own file `<suite>.json` in [`safety_dir`] with [`SuiteSummary::record`]; the
//! `safety-summary` binary folds every file into one line (`.ci/run` prints it last). Files are
//! merged, not overwritten, so that several tests of one suite add up.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::check::Report;
use crate::check::Rule;

/// Where summaries go: `$DEDUP_SAFETY_DIR`, else `target/safety` of the workspace.
pub fn safety_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEDUP_SAFETY_DIR") {
        return PathBuf::from(dir);
    }
    // CARGO_MANIFEST_DIR of this crate is <workspace>/tests/checker.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/safety")
}

/// What one suite did and found. Counters only ever add up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteSummary {
    /// Simulated seeds run.
    #[serde(default)]
    pub seeds: u64,
    /// Real-process or container fault schedules survived.
    #[serde(default)]
    pub schedules_run: u64,
    /// Schedules survived by fault kind (e.g. `kill-leader`): a schedule of several faults
    /// counts once under each of its kinds.
    #[serde(default)]
    pub schedules: BTreeMap<String, u64>,
    /// Kill-and-reopen cycles of the storage crash suite.
    #[serde(default)]
    pub crash_cycles: u64,
    /// Bugs of the zoo seeded, and how many of them a suite caught.
    #[serde(default)]
    pub bugs_seeded: u64,
    #[serde(default)]
    pub bugs_caught: u64,
    /// Violations per checker rule (by `Rule::name`), plus suite-specific ones (e.g.
    /// `lost_acknowledged_writes` of the crash suite).
    #[serde(default)]
    pub violations: BTreeMap<String, u64>,
}

impl SuiteSummary {
    /// Adds a checker report's violation counts.
    pub fn add_report(&mut self, report: &Report) {
        for rule in Rule::ALL {
            *self.violations.entry(rule.name().to_string()).or_default() += report.count(rule) as u64;
        }
    }

    pub fn add_violations(&mut self, name: &str, count: u64) {
        *self.violations.entry(name.to_string()).or_default() += count;
    }

    fn merge(&mut self, other: &SuiteSummary) {
        self.seeds += other.seeds;
        self.schedules_run += other.schedules_run;
        self.crash_cycles += other.crash_cycles;
        self.bugs_seeded += other.bugs_seeded;
        self.bugs_caught += other.bugs_caught;
        for (kind, count) in &other.schedules {
            *self.schedules.entry(kind.clone()).or_default() += count;
        }
        for (name, count) in &other.violations {
            *self.violations.entry(name.clone()).or_default() += count;
        }
    }

    /// Adds this summary to `<safety_dir>/<suite>.json`. Tests of one suite may run in
    /// parallel processes, so the file is updated under an exclusive lock file.
    pub fn record(&self, suite: &str) -> io::Result<()> {
        let dir = safety_dir();
        fs::create_dir_all(&dir)?;
        let _lock = LockFile::acquire(&dir.join(format!("{suite}.lock")))?;
        let path = dir.join(format!("{suite}.json"));
        let mut total: SuiteSummary = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => SuiteSummary::default(),
            Err(error) => return Err(error),
        };
        total.merge(self);
        let tmp = dir.join(format!("{suite}.json.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&total).map_err(io::Error::other)?)?;
        fs::rename(tmp, path)
    }
}

/// A lock held by creating a file exclusively; removed on drop.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(path: &Path) -> io::Result<LockFile> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(_) => return Ok(LockFile(path.to_path_buf())),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    if std::time::Instant::now() > deadline {
                        // A holder that died leaves the file behind; take it over.
                        let _ = fs::remove_file(path);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Every suite's summary found in `dir`, by suite name.
pub fn read_all(dir: &Path) -> io::Result<BTreeMap<String, SuiteSummary>> {
    let mut suites = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(suites),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let suite = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let summary: SuiteSummary = serde_json::from_slice(&fs::read(&path)?)
                .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
            suites.insert(suite, summary);
        }
    }
    Ok(suites)
}

/// The one line: seeds, schedules per fault kind, crash cycles, bugs caught / seeded, and
/// every violation counter (each checker rule always shown, 0 included).
pub fn one_line(suites: &BTreeMap<String, SuiteSummary>) -> String {
    let mut total = SuiteSummary::default();
    for summary in suites.values() {
        total.merge(summary);
    }
    for rule in Rule::ALL {
        total.violations.entry(rule.name().to_string()).or_default();
    }
    let schedules = total.schedules_run;
    let per_kind: Vec<String> = total.schedules.iter().map(|(kind, n)| format!("{kind}={n}")).collect();
    let violations: Vec<String> = total.violations.iter().map(|(name, n)| format!("{name}={n}")).collect();
    format!(
        "SAFETY seeds={} schedules={} by fault kind [{}] crash_cycles={} bugs_caught={}/{} violations: {} (suites: {})",
        total.seeds,
        schedules,
        per_kind.join(" "),
        total.crash_cycles,
        total.bugs_caught,
        total.bugs_seeded,
        violations.join(" "),
        suites.keys().cloned().collect::<Vec<_>>().join(", "),
    )
}

/// Sum of every violation counter.
pub fn total_violations(suites: &BTreeMap<String, SuiteSummary>) -> u64 {
    suites.values().flat_map(|s| s.violations.values()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_add_up_and_the_line_shows_every_rule() {
        let dir = std::env::temp_dir().join(format!("dedup-safety-summary-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        std::env::set_var("DEDUP_SAFETY_DIR", &dir);
        let mut first = SuiteSummary { seeds: 3, ..Default::default() };
        first.schedules.insert("kill-leader".into(), 1);
        first.record("sim").unwrap();
        let mut second = SuiteSummary { seeds: 2, crash_cycles: 7, schedules_run: 1, ..Default::default() };
        second.schedules.insert("kill-leader".into(), 2);
        second.add_violations("lost_acknowledged_writes", 1);
        second.record("sim").unwrap();
        let suites = read_all(&dir).unwrap();
        std::env::remove_var("DEDUP_SAFETY_DIR");
        assert_eq!(suites["sim"].seeds, 5);
        assert_eq!(suites["sim"].schedules["kill-leader"], 3);
        let line = one_line(&suites);
        assert!(line.contains("seeds=5"), "{line}");
        assert!(line.contains("kill-leader=3"), "{line}");
        assert!(line.contains("schedules=1 "), "{line}");
        assert!(line.contains("crash_cycles=7"), "{line}");
        assert!(line.contains("double_claims=0"), "{line}");
        assert!(line.contains("lost_acknowledged_writes=1"), "{line}");
        assert_eq!(total_violations(&suites), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
