//! One seed: build the cluster, run the workload against the nemesis, heal, read everything
//! back, compare replica digests and judge the history.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::hash::Hash;
use std::hash::Hasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Once;
use std::time::Duration;

use dedup_checker::check;
use dedup_checker::Answer as Observed;
use dedup_checker::Call;
use dedup_checker::HistoryWriter;
use dedup_checker::ReadAnswer;
use dedup_checker::ReadState;
use dedup_checker::Report;
use dedup_checker::Rule;
use dedup_cluster::ledger::Answer;
use dedup_cluster::ledger::ClaimOutcome;
use dedup_cluster::ledger::RecordKey;
use dedup_cluster::ledger::RecordState;
use dedup_cluster::node::RaftTiming;
use dedup_cluster::raft_types::NodeId;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use tokio::time::Instant;

use crate::cluster::SimCluster;
use crate::cluster::NODES;
use crate::nemesis::FaultMix;
use crate::nemesis::Nemesis;
use crate::net::SimNet;
use crate::workload::Client;
use crate::workload::Counters;
use crate::workload::Exec;
use crate::workload::Workload;
use crate::workload::NAMESPACE;

/// How one seed runs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Simulated time during which clients start operations and the nemesis injects faults.
    pub workload: Duration,
    pub mix: FaultMix,
    /// The heal phase must reach one leader and equal applied indexes within this.
    pub converge_limit: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            workload: Duration::from_secs(16),
            mix: FaultMix::default(),
            converge_limit: Duration::from_secs(30),
        }
    }
}

/// Figures of one run that show what it exercised.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub ops: u64,
    pub keys: u64,
    pub leader_changes: u64,
    pub max_term: u64,
    pub takeovers: u64,
    pub fenced: u64,
    pub late_completes: u64,
    pub acked_completes: u64,
    pub unknown_outcomes: u64,
    pub crashes: u64,
    pub unflushed_batches_dropped: u64,
    pub snapshot_installs: u64,
    /// Nodes whose Raft log was purged behind a snapshot by the end.
    pub nodes_with_purged_log: u64,
    pub purge_namespace_ops: u64,
    pub final_index: u64,
    pub sim_ms: u64,
}

/// The verdict on one seed.
#[derive(Debug, Default)]
pub struct SeedResult {
    pub seed: u64,
    pub report: Option<Report>,
    /// Keys (of the whole ledger space) that differ between replicas at the same applied index.
    pub digest_mismatches: u64,
    pub not_converged: Option<String>,
    /// Panics inside the node code or the harness (assertions included).
    pub panics: Vec<String>,
    /// Nodes that could not start again, and other harness-level findings.
    pub errors: Vec<String>,
    pub faults: BTreeMap<&'static str, u64>,
    pub stats: RunStats,
    pub real: Duration,
    /// Where the history of a failed seed was kept.
    pub history_path: Option<std::path::PathBuf>,
}

impl SeedResult {
    /// Every violation counter of this seed, checker rules included (0s too).
    pub fn violations(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for rule in Rule::ALL {
            let count = self.report.as_ref().map_or(0, |r| r.count(rule) as u64);
            out.insert(rule.name().to_string(), count);
        }
        *out.entry(Rule::ReplicaDivergence.name().to_string()).or_default() += self.digest_mismatches;
        out.insert("history_problems".into(), self.report.as_ref().map_or(0, |r| r.problems.len() as u64));
        out.insert("no_convergence".into(), u64::from(self.not_converged.is_some()));
        out.insert("panics".into(), self.panics.len() as u64);
        out.insert("node_errors".into(), self.errors.len() as u64);
        out
    }

    pub fn failed(&self) -> bool {
        self.violations().values().any(|count| *count > 0)
    }

    /// Why the seed failed, in a few lines.
    pub fn explain(&self) -> String {
        let mut lines = Vec::new();
        let bad: Vec<String> =
            self.violations().into_iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        lines.push(format!("seed {}: {}", self.seed, bad.join(" ")));
        if let Some(why) = &self.not_converged {
            lines.push(format!("  not converged: {why}"));
        }
        for panic in self.panics.iter().take(3) {
            lines.push(format!("  panic: {panic}"));
        }
        for error in self.errors.iter().take(3) {
            lines.push(format!("  error: {error}"));
        }
        if self.digest_mismatches > 0 {
            lines
                .push(format!("  replica digests differ in {} keys at the same applied index", self.digest_mismatches));
        }
        if let Some(path) = &self.history_path {
            lines.push(format!("  history: {}", path.display()));
        }
        if let Some(report) = &self.report {
            for violation in report.violations.iter().take(5) {
                lines.push(format!("  {violation}"));
            }
            for problem in report.problems.iter().take(3) {
                lines.push(format!("  history: {problem}"));
            }
        }
        lines.join("\n")
    }
}

thread_local! {
    /// Panics seen on this thread while a seed runs (the runtime is current-thread, so every
    /// task of the seed runs here).
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records panics of running seeds instead of printing them;
/// panics elsewhere go to the default hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = PANICS.with(|panics| {
                let mut panics = panics.borrow_mut();
                match panics.as_mut() {
                    Some(list) => {
                        let location =
                            info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                        let payload = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "non-string panic".to_string());
                        list.push(format!("{payload}{location}"));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                default(info);
            }
        }));
    });
}

/// Runs one seed on this thread (its own current-thread runtime with paused time). Never
/// panics: panics of the node code or the harness are part of the result.
pub fn run_seed(seed: u64, options: &SimOptions) -> SeedResult {
    install_panic_hook();
    let started = std::time::Instant::now();
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        let result = runtime.block_on(simulate(seed, options.clone()));
        // Node tasks may still hold each other; do not wait for stragglers.
        runtime.shutdown_timeout(Duration::from_secs(5));
        result
    }));
    let panics = PANICS.with(|p| p.borrow_mut().take()).unwrap_or_default();
    let mut result = match outcome {
        Ok(result) => result,
        Err(_) => SeedResult { seed, ..SeedResult::default() },
    };
    result.seed = seed;
    result.panics = panics;
    result.real = started.elapsed();
    result
}

/// A strictly increasing clock for the history: simulated nanoseconds, bumped by one when two
/// events share an instant, so the history's order is the order events happened in the sim.
fn history_clock(origin: Instant) -> impl FnMut() -> u64 + Send + 'static {
    let mut last = 0u64;
    move || {
        let now = origin.elapsed().as_nanos() as u64;
        last = now.max(last + 1);
        last
    }
}

async fn simulate(seed: u64, options: SimOptions) -> SeedResult {
    let origin = Instant::now();
    let mut master = StdRng::seed_from_u64(seed);
    let timing = RaftTiming {
        heartbeat_ms: 100,
        election_timeout_min_ms: 500,
        commit_timeout_ms: 2_000,
        // Small, so snapshots, log purges and snapshot installs happen within a run.
        snapshot_logs_since_last: master.gen_range(16..=64),
    };
    let clients = master.gen_range(3..=5u64);
    let hot_keys = master.gen_range(2..=3u64);
    let net = SimNet::new(StdRng::seed_from_u64(master.gen()));
    let cluster = match SimCluster::new(net, timing, origin) {
        Ok(cluster) => Arc::new(cluster),
        Err(error) => return SeedResult { errors: vec![format!("temp dir: {error}")], ..SeedResult::default() },
    };
    let mut errors = Vec::new();
    for id in NODES {
        if let Err(error) = cluster.start(id).await {
            errors.push(error);
        }
    }
    let history = Arc::new(HistoryWriter::in_memory().with_clock(history_clock(origin)));
    let workload = Arc::new(Workload {
        cluster: cluster.clone(),
        history: history.clone(),
        counters: Counters::default(),
        hot_keys,
        complete_hook: Mutex::new(None),
        origin,
    });

    let end = origin + options.workload;
    let leader_figures = Arc::new(Mutex::new((0u64, 0u64)));
    let monitor = tokio::spawn(watch_leaders(cluster.clone(), leader_figures.clone()));
    let mut tasks = Vec::new();
    for process in 1..=clients {
        let client = Client::new(process, StdRng::seed_from_u64(master.gen()), workload.clone());
        tasks.push(tokio::spawn(client.run(end)));
    }
    let purger = Client::new(50, StdRng::seed_from_u64(master.gen()), workload.clone());
    tasks.push(tokio::spawn(purger.run_purge(end)));
    let nemesis = Nemesis {
        cluster: cluster.clone(),
        workload: workload.clone(),
        rng: StdRng::seed_from_u64(master.gen()),
        mix: options.mix.clone(),
        applied: BTreeMap::new(),
        errors: Vec::new(),
    };
    let nemesis = nemesis.run(end).await;
    for task in tasks {
        let _ = task.await;
    }
    errors.extend(nemesis.errors);
    // In case a client's crash hook left a node down.
    for id in cluster.down() {
        if let Err(error) = cluster.start(id).await {
            errors.push(error);
        }
    }

    // Heal phase: one leader, all applied alike; then a fresh write must succeed.
    let mut not_converged = cluster.converge(options.converge_limit).await.err();
    if not_converged.is_none() {
        not_converged = prove_liveness(&cluster, &workload, &mut master, seed, options.converge_limit).await.err();
    }
    monitor.abort();
    let leader_changes = *leader_figures.lock().unwrap_or_else(|p| p.into_inner());

    let mut digest_mismatches = 0;
    let mut final_index = 0;
    if not_converged.is_none() {
        match final_reads(&cluster, &history) {
            Ok(index) => final_index = index,
            Err(why) => not_converged = Some(why),
        }
        digest_mismatches = compare_digests(&cluster);
    }
    let report = history.events().map(|events| check(&events));
    let report = match report {
        Ok(report) => Some(report),
        Err(error) => {
            errors.push(format!("history unreadable: {error}"));
            None
        }
    };
    if let Some(report) = report.as_ref().filter(|_| not_converged.is_none()) {
        // Non-vacuity: every key was read back from every node, so every acknowledged
        // completion was judged.
        if report.stats.final_reads < NODES.len() * report.stats.keys || report.stats.unverified_completions > 0 {
            errors.push(format!(
                "read-back incomplete: {} final reads of {} keys, {} completions unverified",
                report.stats.final_reads, report.stats.keys, report.stats.unverified_completions
            ));
        }
    }

    let crash_stats = cluster.crash_stats();
    let counters = &workload.counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let max_term = NODES.iter().filter_map(|id| cluster.metrics(*id)).map(|m| m.current_term).max().unwrap_or(0);
    let nodes_with_purged_log =
        NODES.iter().filter_map(|id| cluster.metrics(*id)).filter(|m| m.purged.is_some()).count() as u64;
    let stats = RunStats {
        ops: load(&counters.ops),
        keys: report.as_ref().map_or(0, |r| r.stats.keys as u64),
        leader_changes: leader_changes.0,
        max_term: max_term.max(leader_changes.1),
        takeovers: load(&counters.takeovers),
        fenced: load(&counters.fenced),
        late_completes: load(&counters.late_completes),
        acked_completes: load(&counters.acked_completes),
        unknown_outcomes: load(&counters.unknown),
        crashes: crash_stats.crashes,
        unflushed_batches_dropped: crash_stats.dropped_batches,
        snapshot_installs: cluster.snapshot_installs(),
        nodes_with_purged_log,
        purge_namespace_ops: load(&counters.purge_ops),
        final_index,
        sim_ms: origin.elapsed().as_millis() as u64,
    };
    cluster.shutdown().await;
    let mut result = SeedResult {
        seed,
        report,
        digest_mismatches,
        not_converged,
        panics: Vec::new(),
        errors,
        faults: nemesis.applied,
        stats,
        real: Duration::ZERO,
        history_path: None,
    };
    if result.failed() {
        result.history_path = keep_history(seed, &history);
    }
    result
}

/// Writes a failed seed's history to `target/tmp/sim-<seed>.jsonl` (or `$DEDUP_SIM_HISTORY_DIR`).
fn keep_history(seed: u64, history: &HistoryWriter<Vec<u8>>) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("DEDUP_SIM_HISTORY_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp"));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("sim-{seed}.jsonl"));
    std::fs::write(&path, history.json_lines()).ok()?;
    Some(path)
}

/// After healing, a fresh claim (retried while leadership settles) must be granted and its
/// complete accepted; then all nodes must converge again.
async fn prove_liveness(
    cluster: &SimCluster,
    workload: &Arc<Workload>,
    master: &mut StdRng,
    seed: u64,
    limit: Duration,
) -> Result<u64, String> {
    let mut client = Client::new(99, StdRng::seed_from_u64(master.gen()), workload.clone());
    let key = format!("liveness-{seed}");
    let deadline = Instant::now() + limit;
    let mut why = Vec::new();
    let token = loop {
        let answer = client.claim(&key, "liveness", 10_000, Some("liveness".into())).await;
        match answer {
            Exec::Done(applied) => match applied.result {
                Ok(Answer::Claim(ClaimOutcome::Claimed { token, .. })) => break token.0,
                other => why.push(format!("claim answered {other:?}")),
            },
            Exec::Rejected | Exec::Unknown => why.push(client.last_error.take().unwrap_or_default()),
        }
        if Instant::now() >= deadline {
            why.dedup();
            return Err(format!("a fresh claim after healing was not granted: {why:?}; {}", cluster.describe()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        match client.complete(&key, token).await {
            Exec::Done(_) => break,
            Exec::Rejected | Exec::Unknown => why.push(client.last_error.take().unwrap_or_default()),
        }
        if Instant::now() >= deadline {
            why.dedup();
            return Err(format!("a complete after healing was not accepted: {why:?}; {}", cluster.describe()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.converge(limit).await
}

/// Samples who leads every 50 ms; keeps (leader changes, highest term seen) in `figures`.
async fn watch_leaders(cluster: Arc<SimCluster>, figures: Arc<Mutex<(u64, u64)>>) {
    let mut last: Option<(NodeId, u64)> = None;
    loop {
        if let Some(leader) = cluster.leader() {
            let term = cluster.metrics(leader).map_or(0, |m| m.current_term);
            let mut figures = figures.lock().unwrap_or_else(|p| p.into_inner());
            figures.1 = figures.1.max(term);
            if last.is_some_and(|l| l != (leader, term)) {
                figures.0 += 1;
            }
            last = Some((leader, term));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every key of the history back from every node; all nodes must stand at one applied
/// index. Returns that index.
fn final_reads(cluster: &SimCluster, history: &HistoryWriter<Vec<u8>>) -> Result<u64, String> {
    let events = history.events().map_err(|e| e.to_string())?;
    let keys: BTreeSet<String> = events.into_iter().filter(|e| e.namespace == NAMESPACE).map(|e| e.key).collect();
    let mut indexes = BTreeSet::new();
    for id in NODES {
        let node = cluster.node(id).ok_or(format!("node {id} is down at the read-back"))?;
        let applied = node.reader.applied();
        indexes.insert(applied.log_index);
        for key in &keys {
            let op = history.invoke(100 + id, NAMESPACE, key, Call::final_read());
            let record = node
                .reader
                .record(&RecordKey::new(NAMESPACE, key.as_bytes().to_vec()))
                .map_err(|e| format!("node {id} cannot read {key}: {e}"))?;
            // Every stored field of the record, so the checker compares whole records too.
            let digest = record.as_ref().map(|record| {
                let mut hasher = DefaultHasher::new();
                record.hash(&mut hasher);
                format!("{:016x}", hasher.finish())
            });
            let (state, token, outcome) = match record {
                None => (ReadState::None, None, None),
                Some(record) => {
                    let (state, outcome) = match &record.state {
                        RecordState::Claimed { .. } => (ReadState::Claimed, None),
                        RecordState::Completed { outcome, .. } => {
                            (ReadState::Completed, Some(String::from_utf8_lossy(&outcome.payload).into_owned()))
                        }
                        RecordState::Available { .. } => (ReadState::Available, None),
                    };
                    (state, Some(record.token.0), outcome)
                }
            };
            history.ok(
                op,
                Observed::Read(ReadAnswer {
                    node: id,
                    state,
                    token,
                    outcome,
                    applied_index: applied.log_index,
                    is_final: true,
                    ledger_time_ms: Some(applied.ledger_time.as_ms()),
                    digest,
                }),
            );
        }
        if node.reader.applied() != applied {
            return Err(format!("node {id} applied more entries during the read-back"));
        }
    }
    match indexes.len() {
        1 => Ok(indexes.into_iter().next().unwrap_or(0)),
        _ => Err(format!("nodes read back at different applied indexes {indexes:?}")),
    }
}

/// Compares the whole ledger space of every node with node 1's; returns how many keys differ.
fn compare_digests(cluster: &SimCluster) -> u64 {
    let dumps: Vec<BTreeMap<Vec<u8>, Vec<u8>>> =
        NODES.iter().map(|id| cluster.ledger_dump(*id).into_iter().collect()).collect();
    let digest = |dump: &BTreeMap<Vec<u8>, Vec<u8>>| {
        let mut hasher = DefaultHasher::new();
        dump.hash(&mut hasher);
        hasher.finish()
    };
    let reference = &dumps[0];
    let mut mismatches = 0;
    for other in &dumps[1..] {
        if digest(other) == digest(reference) {
            continue;
        }
        let keys: BTreeSet<&Vec<u8>> = reference.keys().chain(other.keys()).collect();
        mismatches += keys.into_iter().filter(|k| reference.get(*k) != other.get(*k)).count() as u64;
    }
    mismatches
}
