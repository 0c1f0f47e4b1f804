//! What every fault schedule must show, whichever way its faults were made (processes behind
//! proxies, `tests/tests/faults.rs`; containers, `tests/tests/cluster_docker.rs`).

use dedup_checker::summary::SuiteSummary;
use dedup_checker::Report;

/// The facts of one finished schedule that [`assert_survived`] judges.
pub struct ScheduleOutcome<'a> {
    pub seed: u64,
    pub report: &'a Report,
    /// Keys the workload touched (each must be read back from every node).
    pub keys: usize,
    pub leader_changes: u64,
    pub takeovers: u64,
    pub fenced: u64,
    /// Nodes that exited by themselves (id, whether it was a panic).
    pub exited: &'a [(u64, bool)],
    /// Why the cluster was declared broken, if it was.
    pub broken: Option<&'a str>,
    /// Each node's last snapshot index.
    pub snapshots: &'a [u64],
    /// Each fault of the schedule: its name and whether it deposes the leader.
    pub faults: Vec<(&'static str, bool)>,
    pub logs: &'a str,
}

/// Asserts a schedule kept every rule and proved its faults, then adds it to `suite`'s part of
/// the safety summary.
pub fn assert_survived(suite: &str, run: ScheduleOutcome<'_>) {
    let mut summary = SuiteSummary::default();
    summary.add_report(run.report);
    summary.record(suite).expect("record the safety summary");
    assert!(run.broken.is_none(), "seed {}: {:?}\n{}", run.seed, run.broken, run.logs);
    assert!(run.exited.is_empty(), "seed {}: nodes exited by themselves: {:?}\n{}", run.seed, run.exited, run.logs);
    assert!(run.report.is_valid(), "seed {}: safety violated:\n{}", run.seed, run.report);
    let deposing = run.faults.iter().filter(|(_, deposes)| *deposes).count() as u64;
    assert!(
        run.leader_changes >= deposing,
        "seed {}: {} leader changes for {deposing} deposing faults",
        run.seed,
        run.leader_changes
    );
    assert!(run.takeovers >= 1, "seed {}: no claim was taken over after a lapsed lease", run.seed);
    assert!(run.fenced >= 1, "seed {}: no stale token was fenced", run.seed);
    assert!(
        run.snapshots.iter().all(|index| *index > 0),
        "seed {}: a node never snapshotted: {:?}",
        run.seed,
        run.snapshots
    );
    assert!(run.report.stats.final_reads >= 3 * run.keys, "seed {}: not every key was read from every node", run.seed);
    let mut survived = SuiteSummary { schedules_run: 1, ..Default::default() };
    for (name, _) in &run.faults {
        *survived.schedules.entry(name.to_string()).or_default() += 1;
    }
    survived.record(suite).expect("record the safety summary");
}
