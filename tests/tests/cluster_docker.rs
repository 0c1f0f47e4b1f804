//! Container fault schedules (`cluster-docker`): the workload, nemesis style and history checker
//! of the real-process suite (`tests/tests/faults.rs`, `dedup_tests::workload`), against three
//! `dedupd` containers of the `dedup-ledger:dev` image on a Docker network of their own
//! (`dedup_tests::docker`): each node takes its id from its hostname and finds its peers by
//! container name, and keeps its data on a named volume. Faults: `docker kill` of the leader and
//! a restart with the same volume, `docker pause` of the leader past every lease, `docker network
//! disconnect` of the leader and of a follower, a rolling restart (`docker stop`, SIGTERM, one
//! node at a time, each back and caught up before the next) under load, and a follower whose
//! volume is wiped and which must catch up by installing a snapshot. Then every key is read back
//! from every node and the checker judges the history; every violation counter must be 0 and
//! each schedule proves its faults happened. Each passing schedule adds itself, by fault kind,
//! to the `cluster-docker` safety summary.
//!
//! Without a Docker engine, or without the image (`scripts/build-image.sh`; `scripts/test.sh`
//! builds it when an engine answers), every test prints why and passes; with
//! `DEDUP_DOCKER_REQUIRED=1` (set by `scripts/test.sh` when an engine answers) it fails instead.
//!
//! CI runs four short schedules. The long run, on demand, adds `DEDUP_DOCKER_LONG` (a number of
//! rounds, default 1 when set) of four faults drawn by the seed from every kind:
//! `DEDUP_DOCKER_LONG=5 cargo nextest run -p dedup-tests --test cluster_docker`.
//! Replay a seed with `DEDUP_FAULT_SEED=<seed> cargo nextest run -p dedup-tests --test
//! cluster_docker <test name>`; histories are kept under `target/tmp/`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use dedup_checker::check;
use dedup_checker::HistoryWriter;
use dedup_checker::Report;
use dedup_tests::docker;
use dedup_tests::docker::DockerCluster;
use dedup_tests::docker::NodeState;
use dedup_tests::docker::READY_WAIT;
use dedup_tests::schedule;
use dedup_tests::schedule::ScheduleOutcome;
use dedup_tests::workload;
use dedup_tests::workload::Counters;
use dedup_tests::workload::History;
use dedup_tests::workload::LEASE_MS_MAX;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;

const SUITE: &str = "cluster-docker";
/// Entries between snapshots (as in the real-process suite): a wiped node must install one.
const SNAPSHOT_LOGS: u64 = 16;
/// How long the nemesis waits for a leader before it declares the cluster broken.
const LEADER_WAIT: Duration = Duration::from_secs(20);
/// A pause or a disconnect lasts past every lease, so claims are taken over meanwhile.
const PAST_EVERY_LEASE: Duration = Duration::from_millis(LEASE_MS_MAX + 1_500);
/// The log line of a node that installed a snapshot sent by the leader.
const SNAPSHOT_INSTALLED: &str = "installed a snapshot from the leader";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `docker kill` of the leader, then `docker start` with the same volume.
    KillLeader,
    /// `docker pause` of the leader past every lease.
    PauseLeader,
    /// `docker network disconnect` of the leader past every lease, then reconnect.
    DisconnectLeader,
    /// `docker network disconnect` of a follower past every lease, then reconnect.
    DisconnectFollower,
    /// `docker stop` (SIGTERM) and `docker start` of each node in turn, under load.
    RollingRestart,
    /// A follower stopped, its volume removed, started on a fresh one: it catches up by snapshot.
    WipeFollower,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::DisconnectLeader,
        Fault::DisconnectFollower,
        Fault::RollingRestart,
        Fault::WipeFollower,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "docker-kill-leader",
            Fault::PauseLeader => "docker-pause-leader",
            Fault::DisconnectLeader => "docker-disconnect-leader",
            Fault::DisconnectFollower => "docker-disconnect-follower",
            Fault::RollingRestart => "docker-rolling-restart",
            Fault::WipeFollower => "docker-wiped-volume",
        }
    }

    /// Faults that must depose the leader (a rolling restart stops every node, the leader too).
    fn deposes_leader(self) -> bool {
        matches!(self, Fault::KillLeader | Fault::PauseLeader | Fault::DisconnectLeader | Fault::RollingRestart)
    }
}

/// Whether the suite must be skipped here (it says why).
fn skip() -> bool {
    let Some(why) = docker::unavailable() else { return false };
    if std::env::var("DEDUP_DOCKER_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("cluster-docker cannot run and DEDUP_DOCKER_REQUIRED=1: {why}");
    }
    eprintln!("cluster-docker skipped: {why}");
    true
}

fn seed_from_env() -> u64 {
    std::env::var("DEDUP_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>)
}

async fn leader_or_break(cluster: &DockerCluster, not: Option<u64>, after: &str) -> Result<u64, String> {
    cluster
        .try_wait_for_leader(not, LEADER_WAIT)
        .await
        .ok_or_else(|| format!("no leader within {LEADER_WAIT:?} after {after}"))
}

/// Applies one fault, checks it had its effect, and recovers from it. Returns whether the leader
/// changed; an error if the cluster did not recover or the fault left no trace.
async fn apply_fault(cluster: &mut DockerCluster, fault: Fault, rng: &mut StdRng) -> Result<bool, String> {
    let name = fault.name();
    let leader = leader_or_break(cluster, None, name).await?;
    let term = cluster.status(leader).await.map(|s| s.term).unwrap_or(0);
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let follower = *followers.choose(rng).expect("two followers");
    eprintln!("nemesis: {name} (leader {leader}, follower {follower})");
    let mut new_leader = None;
    match fault {
        Fault::KillLeader => {
            cluster.kill(leader).await?;
            new_leader = Some(leader_or_break(cluster, Some(leader), name).await?);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
            cluster.restart(leader).await?;
        }
        Fault::PauseLeader => {
            cluster.pause(leader).await?;
            new_leader = Some(leader_or_break(cluster, Some(leader), name).await?);
            tokio::time::sleep(PAST_EVERY_LEASE).await;
            cluster.unpause(leader).await?;
        }
        Fault::DisconnectLeader => {
            cluster.disconnect(leader).await?;
            new_leader = Some(leader_or_break(cluster, Some(leader), name).await?);
            tokio::time::sleep(PAST_EVERY_LEASE).await;
            cluster.reconnect(leader).await?;
        }
        Fault::DisconnectFollower => {
            let before = cluster.status(leader).await?.applied_index;
            cluster.disconnect(follower).await?;
            tokio::time::sleep(PAST_EVERY_LEASE).await;
            // Cut off: not even the test reaches it, and the others went on without it.
            if let Ok(status) = cluster.status(follower).await {
                return Err(format!("{name}: node {follower} still answers while disconnected: {status:?}"));
            }
            let during = leader_or_break(cluster, Some(follower), name).await?;
            let progressed = cluster.status(during).await?.applied_index;
            cluster.reconnect(follower).await?;
            if progressed <= before {
                return Err(format!("{name}: nothing was applied while node {follower} was away ({before})"));
            }
        }
        Fault::RollingRestart => {
            // As a StatefulSet rolls: the highest ordinal first, each ready before the next.
            for id in (1..=3).rev() {
                let rejoins = cluster.log_count(id, "rejoining with existing data").await;
                cluster.stop(id).await?;
                let code = docker::docker(&["inspect", "-f", "{{.State.ExitCode}}", cluster.name(id)]).await?;
                if code.trim() != "0" {
                    return Err(format!(
                        "{name}: node {id} did not stop cleanly on SIGTERM (exit code {})",
                        code.trim()
                    ));
                }
                let during = leader_or_break(cluster, Some(id), name).await?;
                if id == leader {
                    new_leader = Some(during);
                }
                cluster.restart(id).await?;
                cluster.wait_converged(READY_WAIT).await.map_err(|why| format!("{name}: node {id}: {why}"))?;
                if cluster.log_count(id, "rejoining with existing data").await <= rejoins {
                    return Err(format!("{name}: node {id} did not rejoin with its volume"));
                }
                eprintln!("nemesis: {name}: node {id} restarted and caught up");
            }
        }
        Fault::WipeFollower => {
            cluster.wipe(follower).await?;
            cluster.wait_converged(READY_WAIT).await.map_err(|why| format!("{name}: node {follower}: {why}"))?;
            let log = cluster.log(follower).await;
            let fresh = log.rsplit("--- volume wiped, new container ---").next().unwrap_or_default();
            if !fresh.contains(SNAPSHOT_INSTALLED) {
                return Err(format!("{name}: node {follower} caught up without installing a snapshot"));
            }
        }
    }
    // Recovered: some node leads, every node follows it and has applied what it had.
    let after = cluster.wait_converged(READY_WAIT).await.map_err(|why| format!("after {name}: {why}"))?;
    let after_term = cluster.status(after).await.map(|s| s.term).unwrap_or(0);
    // Load on the healed cluster before the next fault.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    Ok(new_leader.is_some_and(|l| l != leader) || after != leader || after_term > term)
}

/// What a schedule did and what the checker found.
struct ScheduleRun {
    seed: u64,
    report: Report,
    keys: usize,
    leader_changes: u64,
    takeovers: u64,
    fenced: u64,
    exited: Vec<(u64, bool)>,
    broken: Option<String>,
    snapshots: Vec<u64>,
    faults: Vec<Fault>,
    logs: String,
}

async fn run_schedule(name: &str, faults: &[Fault], seed: u64) -> ScheduleRun {
    eprintln!(
        "schedule {name} seed {seed}: replay with DEDUP_FAULT_SEED={seed} cargo nextest run -p dedup-tests --test cluster_docker {name}"
    );
    let started = Instant::now();
    let args = vec!["--snapshot-logs".to_string(), SNAPSHOT_LOGS.to_string()];
    let mut cluster = DockerCluster::start(&args).await;
    eprintln!("schedule {name}: cluster {} formed in {:?}", cluster.network, started.elapsed());
    let endpoints = cluster.endpoints();
    let history: History = Arc::new(HistoryWriter::in_memory());
    let counters = Arc::new(Counters::default());
    let clients: Vec<_> = (1..=workload::CLIENTS)
        .map(|process| {
            tokio::spawn(workload::run_client(process, endpoints.clone(), history.clone(), counters.clone(), seed))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut leader_changes = 0;
    let mut broken = None;
    for fault in faults {
        let at = Instant::now();
        match apply_fault(&mut cluster, *fault, &mut rng).await {
            Ok(changed) => leader_changes += u64::from(changed),
            Err(why) => {
                broken = Some(why);
                break;
            }
        }
        eprintln!("nemesis: {} done in {:?}", fault.name(), at.elapsed());
        let gone = cluster.exited_by_themselves().await;
        if !gone.is_empty() {
            broken = Some(format!("nodes {gone:?} exited by themselves after {}", fault.name()));
            break;
        }
    }
    let mut exited = Vec::new();
    for id in cluster.exited_by_themselves().await {
        exited.push((id, cluster.panicked(id).await));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counters.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    // Heal whatever a broken schedule left cut off, so the logs and reads are complete.
    for id in 1..=3 {
        let healed = match cluster.state(id) {
            NodeState::Up => Ok(()),
            NodeState::Down => cluster.restart(id).await,
            NodeState::Paused => cluster.unpause(id).await,
            NodeState::Disconnected => cluster.reconnect(id).await,
        };
        if let Err(why) = healed {
            eprintln!("heal node {id}: {why}");
        }
    }
    let mut keys = 0;
    if broken.is_none() {
        match cluster.wait_converged(READY_WAIT).await {
            Ok(_) => {
                let nodes: Vec<(u64, String)> = (1..=3).map(|id| (id, cluster.endpoint(id))).collect();
                keys = workload::read_back_from(&nodes, &history).await;
            }
            Err(why) => broken = Some(format!("no convergence for the final reads: {why}")),
        }
    }
    let mut snapshots = Vec::new();
    let mut snapshot_installs = 0;
    for id in 1..=3 {
        snapshots.push(cluster.status(id).await.map_or(0, |s| s.snapshot_index));
        snapshot_installs += cluster.log_count(id, SNAPSHOT_INSTALLED).await;
    }
    let history_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-docker-{name}-{seed}.jsonl"));
    std::fs::write(&history_path, history.json_lines()).expect("keep the history");
    let report = check(&history.events().expect("history parses"));
    let run = ScheduleRun {
        seed,
        report,
        keys,
        leader_changes,
        takeovers: counters.takeovers.load(Ordering::Relaxed),
        fenced: counters.fenced.load(Ordering::Relaxed),
        exited,
        broken,
        snapshots,
        faults: faults.to_vec(),
        logs: cluster.all_logs().await,
    };
    eprintln!(
        "schedule {name} seed {seed}: faults [{}]; {} keys; leader changes {}; takeovers {}; FENCED {}; late completes {}; \
         acknowledged completes {}; snapshots at {:?}, {} installed; broken: {:?}; {:?}\n{}\nhistory: {}",
        faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
        run.keys,
        run.leader_changes,
        run.takeovers,
        run.fenced,
        counters.late_completes.load(Ordering::Relaxed),
        counters.acknowledged_completes.load(Ordering::Relaxed),
        run.snapshots,
        snapshot_installs,
        run.broken,
        started.elapsed(),
        run.report.summary(),
        history_path.display()
    );
    drop(cluster);
    run
}

/// Asserts a schedule kept every rule and proved its faults, then adds it to the summary.
fn assert_survived(run: &ScheduleRun) {
    schedule::assert_survived(
        SUITE,
        ScheduleOutcome {
            seed: run.seed,
            report: &run.report,
            keys: run.keys,
            leader_changes: run.leader_changes,
            takeovers: run.takeovers,
            fenced: run.fenced,
            exited: &run.exited,
            broken: run.broken.as_deref(),
            snapshots: &run.snapshots,
            faults: run.faults.iter().map(|fault| (fault.name(), fault.deposes_leader())).collect(),
            logs: &run.logs,
        },
    );
}

async fn schedule(name: &str, faults: &[Fault]) {
    if skip() {
        return;
    }
    let run = run_schedule(name, faults, seed_from_env()).await;
    assert_survived(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_pause_leader() {
    schedule("kill_and_pause_leader", &[Fault::KillLeader, Fault::PauseLeader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_disconnect() {
    schedule("network_disconnect", &[Fault::DisconnectLeader, Fault::DisconnectFollower]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart() {
    schedule("rolling_restart", &[Fault::RollingRestart]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_volume() {
    schedule("wiped_volume", &[Fault::WipeFollower]).await;
}

/// On demand (`DEDUP_DOCKER_LONG=ROUNDS`): rounds of four faults drawn by the seed from every
/// kind, each round on a fresh cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_mixed_schedules() {
    let Some(rounds) = std::env::var("DEDUP_DOCKER_LONG").ok().map(|v| v.parse::<u64>().unwrap_or(1).clamp(1, 100))
    else {
        eprintln!("long container schedules skipped: set DEDUP_DOCKER_LONG=ROUNDS to run them");
        return;
    };
    if skip() {
        return;
    }
    let first = seed_from_env();
    for round in 0..rounds {
        let seed = first.wrapping_add(round);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6d_6978_6564);
        let faults: Vec<Fault> = Fault::ALL.choose_multiple(&mut rng, 4).copied().collect();
        let run = run_schedule(&format!("long_mixed_schedules-{round}"), &faults, seed).await;
        assert_survived(&run);
    }
}
