//! `dedupctl bench`: a bounded load generator against a running cluster.
//!
//! Every loop is bounded twice: by `--duration` and by `--max-ops`; preloads by `--keys`
//! (at most [`KEYS_MAX`]). Latency is measured per call into an HDR histogram per worker
//! (microseconds, 3 significant digits); in open-loop mode (`--rate`) from the moment the call
//! was due, so a stalled server shows as latency instead of hiding as fewer sends.
//!
//! Keys, tallies, durations, CPU time, the result JSON and the table are shared with
//! `bench/`'s compare-load (etcd, Redis) through the `dedup-loadgen` crate.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Args;
use clap::ValueEnum;
use dedup_client::proto as pb;
use dedup_client::proto::ledger_client::LedgerClient;
use dedup_client::ClaimAnswer;
use dedup_client::ClaimRequest;
use dedup_client::CompleteRequest;
use dedup_client::DedupClient;
use dedup_client::Error;
use dedup_client::NodeStatus;
use dedup_client::Outcome;
use dedup_loadgen::breakdown_line;
use dedup_loadgen::check_duration;
use dedup_loadgen::check_range;
use dedup_loadgen::parse_duration;
use dedup_loadgen::random_payload;
use dedup_loadgen::results_table as table;
use dedup_loadgen::KeySpace;
use dedup_loadgen::OpBudget;
use dedup_loadgen::RunClock;
use dedup_loadgen::RunReport;
use dedup_loadgen::Tally;
use dedup_loadgen::CONCURRENCY_MAX;
use dedup_loadgen::CONNECTIONS_MAX;
use dedup_loadgen::KEYS_MAX;
use dedup_loadgen::KEY_BYTES_MAX;
use dedup_loadgen::KEY_BYTES_MIN;
use dedup_loadgen::KIND_CLAIMED;
use dedup_loadgen::KIND_COMPLETED;
use dedup_loadgen::KIND_NEW;
use dedup_loadgen::OUTCOME_BYTES_MAX;
use dedup_loadgen::SWEEP_CONCURRENCY;
use rand::Rng;
use serde_json::json;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// Items per batch call (the server's BATCH_ITEMS_MAX).
const BATCH_ITEMS_MAX: usize = 256;
/// Attempts of one operation that failed UNAVAILABLE or DEADLINE_EXCEEDED (leader change).
const ATTEMPTS_MAX: u32 = 4;
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Concurrent batch calls of a preload, and how long it may take.
const PRELOAD_TASKS: usize = 8;
const PRELOAD_TIME_MAX: Duration = Duration::from_secs(1800);
const OWNER: &str = "dedupctl-bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchPath {
    /// CheckAndClaim of keys never seen: one Raft write each (coalesced by the leader).
    ClaimNew,
    /// CheckAndClaim of keys completed beforehand: answered by the receiving node, no Raft entry.
    ClaimDup,
    /// Complete of keys claimed beforehand: one Raft write each.
    Complete,
    /// CheckAndClaimBatch of `--batch` new keys per call: one Raft entry per call.
    BatchClaim,
    /// CheckAndClaim where `--dup-ratio` of the calls hit completed keys and the rest are new.
    Mix,
    /// Writes `--keys` completed records (batch claim + batch complete); for sizing and restarts.
    Fill,
}

impl BenchPath {
    fn name(self) -> &'static str {
        match self {
            BenchPath::ClaimNew => "claim-new",
            BenchPath::ClaimDup => "claim-dup",
            BenchPath::Complete => "complete",
            BenchPath::BatchClaim => "batch-claim",
            BenchPath::Mix => "mix",
            BenchPath::Fill => "fill",
        }
    }

    /// Paths whose timed phase reads keys written beforehand.
    fn preloads(self) -> Option<Preload> {
        match self {
            BenchPath::ClaimDup | BenchPath::Mix => Some(Preload::Completed),
            BenchPath::Complete => Some(Preload::Claimed),
            BenchPath::ClaimNew | BenchPath::BatchClaim | BenchPath::Fill => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preload {
    Claimed,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// Only the node that is leader when the run starts.
    Leader,
    /// Only one follower (writes are forwarded by it to the leader).
    Follower,
    /// Every endpoint that answered, workers spread round-robin.
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    path: BenchPath,
    /// Workers, each with one call in flight (closed loop) [1..=4096].
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Run concurrency 1, 4, 16, 64 and 256 in turn (one result per level).
    #[arg(long)]
    sweep: bool,
    /// HTTP/2 connections per target node; workers share them round-robin [1..=256].
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of each timed run, e.g. 10s, 500ms, 2m (at most 1h).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Upper bound on operations per run, whatever the duration.
    #[arg(long, default_value_t = 100_000_000)]
    max_ops: u64,
    /// Open loop: this many operations per second in total, latency measured from each call's
    /// due time. Default: closed loop (each worker sends when its previous call returned).
    #[arg(long)]
    rate: Option<u64>,
    /// Which nodes receive the load.
    #[arg(long, value_enum, default_value_t = BenchTarget::Leader)]
    target: BenchTarget,
    /// Key length in bytes [32..=512].
    #[arg(long, default_value_t = 32)]
    key_bytes: usize,
    /// Outcome payload length in bytes [0..=65536].
    #[arg(long, default_value_t = 64)]
    outcome_bytes: usize,
    /// Items per call of batch-claim, and per call of preloads and fill [1..=256].
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// mix: share of calls that hit completed keys [0..=1].
    #[arg(long, default_value_t = 0.9)]
    dup_ratio: f64,
    /// Keys written before the timed phase (claim-dup, mix: completed; complete: claimed), and
    /// the records `fill` writes [1..=100000000]. `complete` stops early when they run out.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Prefix of every key of the run [default: random]. Give the prefix of an earlier `fill`
    /// together with --skip-preload to read its keys (after a restart, say).
    #[arg(long)]
    key_prefix: Option<String>,
    /// claim-dup, mix: do not write the completed keys; they were written by `fill` before.
    #[arg(long)]
    skip_preload: bool,
    /// Namespace of the keys.
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Lease of each claim in ms.
    #[arg(long, default_value_t = 600_000)]
    lease_ms: u64,
    /// Retention of each record in ms after it completes [default: the cluster's].
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Worker threads of the load generator [default: the number of CPUs].
    #[arg(long)]
    client_threads: Option<usize>,
}

impl BenchArgs {
    pub fn client_threads(&self) -> usize {
        self.client_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.check_flags().map_err(usage)
    }

    fn check_flags(&self) -> Result<(), String> {
        check_range("--concurrency", self.concurrency as u64, 1, CONCURRENCY_MAX as u64)?;
        check_range("--connections", self.connections as u64, 1, CONNECTIONS_MAX as u64)?;
        check_range("--key-bytes", self.key_bytes as u64, KEY_BYTES_MIN as u64, KEY_BYTES_MAX as u64)?;
        check_range("--outcome-bytes", self.outcome_bytes as u64, 0, OUTCOME_BYTES_MAX as u64)?;
        check_range("--batch", self.batch as u64, 1, BATCH_ITEMS_MAX as u64)?;
        check_range("--keys", self.keys, 1, KEYS_MAX)?;
        check_range("--max-ops", self.max_ops, 1, u64::MAX)?;
        check_duration(self.duration)?;
        if !(0.0..=1.0).contains(&self.dup_ratio) {
            return Err(format!("--dup-ratio must be within 0..=1, got {}", self.dup_ratio));
        }
        if self.rate == Some(0) {
            return Err("--rate must be at least 1 operation per second".to_string());
        }
        if self.skip_preload && self.key_prefix.is_none() {
            return Err("--skip-preload needs the --key-prefix of the fill that wrote the keys".to_string());
        }
        if let Some(prefix) = &self.key_prefix {
            if !KeySpace::fits(prefix, self.key_bytes) {
                return Err(format!(
                    "--key-prefix of {} bytes leaves no room for the index in --key-bytes {}",
                    prefix.len(),
                    self.key_bytes
                ));
            }
        }
        Ok(())
    }
}

/// A bench flag outside its limit (dedupctl exits 2, like any usage error).
#[derive(Debug, thiserror::Error)]
#[error("BENCH_USAGE: {0}")]
pub struct UsageError(String);

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(message))
}

/// The nodes a run talks to.
struct Cluster {
    admin: DedupClient,
    targets: Vec<String>,
}

/// How long a run waits for the nodes it targets to answer in the roles it needs (a cluster that
/// just started may still be electing).
const RESOLVE_WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    /// The target endpoints, waiting up to [`RESOLVE_WAIT`] for them to exist.
    async fn resolve(admin: DedupClient, target: BenchTarget) -> anyhow::Result<Cluster> {
        let deadline = Instant::now() + RESOLVE_WAIT;
        loop {
            match Cluster::resolve_once(&admin, target).await {
                Ok(targets) => return Ok(Cluster { admin, targets }),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!("after waiting {} s", RESOLVE_WAIT.as_secs())))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn resolve_once(admin: &DedupClient, target: BenchTarget) -> anyhow::Result<Vec<String>> {
        let statuses = admin.cluster_status().await;
        let answered: Vec<(String, NodeStatus)> =
            statuses.into_iter().filter_map(|(endpoint, status)| status.ok().map(|s| (endpoint, s))).collect();
        if answered.is_empty() {
            bail!("none of the endpoints answered NodeStatus");
        }
        let is_leader = |status: &NodeStatus| status.role == "leader";
        let targets: Vec<String> = match target {
            BenchTarget::All => answered.iter().map(|(endpoint, _)| endpoint.clone()).collect(),
            BenchTarget::Leader => answered
                .iter()
                .filter(|(_, status)| is_leader(status))
                .map(|(endpoint, _)| endpoint.clone())
                .take(1)
                .collect(),
            BenchTarget::Follower => answered
                .iter()
                .filter(|(_, status)| status.role == "follower")
                .map(|(endpoint, _)| endpoint.clone())
                .take(1)
                .collect(),
        };
        if targets.is_empty() {
            bail!("no endpoint is a {target:?} now (see `dedupctl status`)");
        }
        Ok(targets)
    }

    async fn connect(&self, connections: usize) -> anyhow::Result<Vec<LedgerClient<Channel>>> {
        let mut clients = Vec::new();
        for target in &self.targets {
            for _ in 0..connections {
                // One Endpoint::connect per connection: each is its own HTTP/2 connection.
                let channel = Endpoint::from_shared(target.clone())
                    .with_context(|| format!("bad endpoint {target}"))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(3))
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {target}"))?;
                clients.push(LedgerClient::new(channel));
            }
        }
        Ok(clients)
    }

    /// Last log index per node id, as every endpoint sees it now.
    async fn log_indexes(&self) -> BTreeMap<u64, u64> {
        let mut indexes = BTreeMap::new();
        for (_, status) in self.admin.cluster_status().await {
            if let Ok(status) = status {
                indexes.insert(status.node_id, status.last_log_index);
            }
        }
        indexes
    }
}

/// A failed call as `errors_by_reason` counts it: `CODE/REASON`.
fn error_reason(status: &tonic::Status) -> String {
    format!("{}/{}", dedup_client::code_name(status.code()), Error::from_status(status).reason())
}

/// Shared, read-only description of a run plus the cursors workers draw work from.
struct Run {
    path: BenchPath,
    keys: KeySpace,
    namespace: String,
    lease_ms: u64,
    retention_ms: u64,
    outcome_bytes: usize,
    batch: usize,
    dup_ratio: f64,
    preloaded: u64,
    /// Tokens of the preloaded claimed keys (path `complete`), by key index.
    tokens: Vec<u64>,
    /// Next new key (claim-new, batch-claim, mix) or next claimed key (complete).
    next_index: Arc<AtomicU64>,
    /// `--duration` and `--max-ops`.
    budget: OpBudget,
}

impl Run {
    fn claim(&self, key: Vec<u8>) -> pb::CheckAndClaimRequest {
        pb::CheckAndClaimRequest {
            namespace: self.namespace.clone(),
            key,
            owner: OWNER.to_string(),
            lease_ms: self.lease_ms,
            fingerprint: Vec::new(),
            claim_request_id: String::new(),
            wait_ms: 0,
            retention_ms: self.retention_ms,
        }
    }
}

/// Whether a failed call is worth repeating (leader change, overload), not a ledger answer.
fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
}

fn is_redirect(status: &tonic::Status) -> bool {
    Error::from_status(status).reason() == "NOT_LEADER"
}

/// Calls `call` until it succeeds, fails for good, or ATTEMPTS_MAX is reached.
async fn with_retries<T, Fut>(tally: &mut Tally, mut call: impl FnMut() -> Fut) -> Option<T>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for attempt in 1..=ATTEMPTS_MAX {
        match call().await {
            Ok(response) => return Some(response.into_inner()),
            Err(status) => {
                if is_redirect(&status) {
                    tally.redirects += 1;
                }
                if attempt < ATTEMPTS_MAX && retryable(&status) {
                    tally.retries += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                tally.error(error_reason(&status));
                return None;
            }
        }
    }
    None
}

fn claim_answer_name(response: &pb::CheckAndClaimResponse) -> &'static str {
    use pb::check_and_claim_response::Result as Answer;
    match response.result {
        Some(Answer::Claimed(_)) => "CLAIMED",
        Some(Answer::InProgress(_)) => "IN_PROGRESS",
        Some(Answer::Completed(_)) => "COMPLETED",
        None => "EMPTY",
    }
}

/// One operation of the run's path; records its result in `tally` and returns the items done.
async fn one_op(run: &Run, client: &LedgerClient<Channel>, tally: &mut Tally) -> u64 {
    match run.path {
        BenchPath::ClaimNew => {
            claim_expecting(run, client, tally, KIND_NEW, run.next_index.fetch_add(1, Ordering::Relaxed), "CLAIMED")
                .await
        }
        BenchPath::ClaimDup => {
            let index = rand::thread_rng().gen_range(0..run.preloaded);
            claim_expecting(run, client, tally, KIND_COMPLETED, index, "COMPLETED").await
        }
        BenchPath::Mix => {
            let duplicate = rand::thread_rng().gen_bool(run.dup_ratio);
            if duplicate {
                let index = rand::thread_rng().gen_range(0..run.preloaded);
                claim_expecting(run, client, tally, KIND_COMPLETED, index, "COMPLETED").await
            } else {
                claim_expecting(run, client, tally, KIND_NEW, run.next_index.fetch_add(1, Ordering::Relaxed), "CLAIMED")
                    .await
            }
        }
        BenchPath::Complete => {
            let index = run.next_index.fetch_add(1, Ordering::Relaxed);
            let Some(&token) = run.tokens.get(index as usize) else {
                return 0;
            };
            let request = pb::CompleteRequest {
                namespace: run.namespace.clone(),
                key: run.keys.key(KIND_CLAIMED, index),
                token,
                outcome: Some(pb::Outcome {
                    kind: pb::OutcomeKind::Succeeded as i32,
                    payload: random_payload(run.outcome_bytes),
                }),
                retention_ms: 0,
            };
            match with_retries(tally, || {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.complete(request).await }
            })
            .await
            {
                Some(answer) if answer.replayed => {
                    tally.unexpected("replayed");
                    1
                }
                Some(_) => 1,
                None => 0,
            }
        }
        BenchPath::BatchClaim => {
            let first = run.next_index.fetch_add(run.batch as u64, Ordering::Relaxed);
            let items =
                (first..first + run.batch as u64).map(|index| run.claim(run.keys.key(KIND_NEW, index))).collect();
            let request = pb::CheckAndClaimBatchRequest { items };
            let Some(answer) = with_retries(tally, || {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.check_and_claim_batch(request).await }
            })
            .await
            else {
                return 0;
            };
            let mut done = 0;
            for item in answer.items {
                match item.result {
                    Some(pb::check_and_claim_batch_item::Result::Answer(answer)) => {
                        let name = claim_answer_name(&answer);
                        if name == "CLAIMED" {
                            done += 1;
                        } else {
                            tally.unexpected(name);
                        }
                    }
                    Some(pb::check_and_claim_batch_item::Result::Error(error)) => {
                        tally.error(format!("{}/{}", error.code, error.reason));
                    }
                    None => tally.unexpected("EMPTY"),
                }
            }
            done
        }
        BenchPath::Fill => unreachable!("fill is run by fill(), not by workers"),
    }
}

async fn claim_expecting(
    run: &Run,
    client: &LedgerClient<Channel>,
    tally: &mut Tally,
    kind: char,
    index: u64,
    expected: &str,
) -> u64 {
    let request = run.claim(run.keys.key(kind, index));
    match with_retries(tally, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.check_and_claim(request).await }
    })
    .await
    {
        Some(answer) => {
            let name = claim_answer_name(&answer);
            if name != expected {
                tally.unexpected(name);
            }
            1
        }
        None => 0,
    }
}

async fn worker(
    run: Arc<Run>,
    client: LedgerClient<Channel>,
    start: Instant,
    due_every: Option<Duration>,
    offset: Duration,
) -> Tally {
    let mut tally = Tally::new();
    let mut sent: u32 = 0;
    while run.budget.take() {
        let began = match due_every {
            Some(period) => {
                let due = start + offset + period * sent;
                sent = sent.saturating_add(1);
                if due >= run.budget.deadline() {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let items = one_op(&run, &client, &mut tally).await;
        if run.path == BenchPath::Complete && items == 0 && tally.errors.is_empty() {
            break; // the preloaded claims ran out
        }
        tally.record(began.elapsed(), items);
    }
    tally
}

/// What a preload wrote: tokens of claimed keys by index ('l' only), how many keys it wrote,
/// and the latency of each batch (claim plus complete) in a tally.
struct Preloaded {
    tokens: Vec<u64>,
    written: u64,
    tally: Tally,
}

/// Writes keys `0..count` of `kind` ('c': completed, 'l': claimed) in batches of `--batch`, with
/// `tasks` batches in flight, until done or `deadline`.
async fn preload(
    client: &DedupClient,
    keys: &KeySpace,
    args: &BenchArgs,
    kind: char,
    count: u64,
    tasks: usize,
    deadline: Instant,
) -> anyhow::Result<Preloaded> {
    let tokens = Arc::new(std::sync::Mutex::new(vec![0u64; if kind == KIND_CLAIMED { count as usize } else { 0 }]));
    let cursor = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let batch = args.batch as u64;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let client = client.clone();
        let cursor = cursor.clone();
        let written = written.clone();
        let tokens = tokens.clone();
        let keys = keys.clone();
        let namespace = args.namespace.clone();
        let lease = Duration::from_millis(args.lease_ms);
        let retention = args.retention_ms.map(Duration::from_millis);
        let outcome_bytes = args.outcome_bytes;
        workers.spawn(async move {
            let mut tally = Tally::new();
            loop {
                if Instant::now() >= deadline {
                    return Ok::<Tally, anyhow::Error>(tally);
                }
                let first = cursor.fetch_add(batch, Ordering::Relaxed);
                if first >= count {
                    return Ok(tally);
                }
                let began = Instant::now();
                let indexes: Vec<u64> = (first..(first + batch).min(count)).collect();
                let claims: Vec<ClaimRequest> = indexes
                    .iter()
                    .map(|&index| {
                        let mut request =
                            ClaimRequest::new(namespace.clone(), keys.key(kind, index), OWNER).with_lease(lease);
                        request.retention = retention;
                        request
                    })
                    .collect();
                let answers = client.check_and_claim_batch(&claims).await.context("preload claim batch")?;
                let mut completes = Vec::new();
                for (index, answer) in indexes.iter().zip(answers) {
                    match answer.context("preload claim")? {
                        ClaimAnswer::Claimed(claim) if kind == KIND_CLAIMED => {
                            tokens.lock().expect("token table lock")[*index as usize] = claim.token;
                        }
                        ClaimAnswer::Claimed(claim) => completes.push(CompleteRequest::new(
                            namespace.clone(),
                            keys.key(kind, *index),
                            claim.token,
                            Outcome::succeeded(random_payload(outcome_bytes)),
                        )),
                        other => {
                            bail!("preload key {index} answered {} (is the key prefix in use?)", other.state_name())
                        }
                    }
                }
                if !completes.is_empty() {
                    for answer in client.complete_batch(&completes).await.context("preload complete batch")? {
                        answer.context("preload complete")?;
                    }
                }
                tally.record(began.elapsed(), indexes.len() as u64);
                written.fetch_add(indexes.len() as u64, Ordering::Relaxed);
            }
        });
    }
    let mut tally = Tally::new();
    while let Some(joined) = workers.join_next().await {
        tally.merge(joined.context("preload task")??);
    }
    let tokens = std::mem::take(&mut *tokens.lock().expect("token table lock"));
    Ok(Preloaded { tokens, written: written.load(Ordering::Relaxed), tally })
}

/// Runs the bench described by `args`: one result object per concurrency level.
pub async fn bench(admin: DedupClient, args: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    args.validate()?;
    let cluster = Cluster::resolve(admin, args.target).await?;
    let prefix = args.key_prefix.clone().unwrap_or_else(KeySpace::random_prefix);
    let keys = KeySpace { prefix, key_bytes: args.key_bytes };
    if !KeySpace::fits(&keys.prefix, keys.key_bytes) {
        return Err(usage(format!("--key-bytes {} is too short for the key prefix {:?}", keys.key_bytes, keys.prefix)));
    }
    let levels: Vec<usize> = if args.sweep { SWEEP_CONCURRENCY.to_vec() } else { vec![args.concurrency] };
    if args.path == BenchPath::Fill {
        let mut results = Vec::new();
        for concurrency in levels {
            results.push(fill(&cluster, args, &keys, concurrency).await?);
        }
        return Ok(results);
    }
    // Completed keys are written once and read by every level; new keys never repeat across
    // levels because the index cursor is shared.
    let mut preload_secs = 0.0;
    if args.path.preloads() == Some(Preload::Completed) && !args.skip_preload {
        let started = Instant::now();
        preload_all(&cluster, &keys, args, KIND_COMPLETED).await?;
        preload_secs = started.elapsed().as_secs_f64();
    }
    let new_keys = Arc::new(AtomicU64::new(0));
    let mut results = Vec::new();
    for concurrency in levels {
        results.push(bench_level(&cluster, args, &keys, concurrency, new_keys.clone(), preload_secs).await?);
    }
    Ok(results)
}

/// A preload of all `--keys` keys before a timed run, within PRELOAD_TIME_MAX.
async fn preload_all(cluster: &Cluster, keys: &KeySpace, args: &BenchArgs, kind: char) -> anyhow::Result<Preloaded> {
    let deadline = Instant::now() + PRELOAD_TIME_MAX;
    let done = preload(&cluster.admin, keys, args, kind, args.keys, PRELOAD_TASKS, deadline).await?;
    if done.written < args.keys {
        bail!(
            "preload wrote {} of {} keys in {}s; use fewer --keys",
            done.written,
            args.keys,
            PRELOAD_TIME_MAX.as_secs()
        );
    }
    Ok(done)
}

async fn bench_level(
    cluster: &Cluster,
    args: &BenchArgs,
    keys: &KeySpace,
    concurrency: usize,
    new_keys: Arc<AtomicU64>,
    mut preload_secs: f64,
) -> anyhow::Result<Value> {
    // `complete` uses up its claimed keys: each level claims its own under a sub-prefix.
    let level_keys = KeySpace { prefix: format!("{}{concurrency:x}-", keys.prefix), key_bytes: keys.key_bytes };
    let mut tokens = Vec::new();
    if args.path.preloads() == Some(Preload::Claimed) {
        let started = Instant::now();
        tokens = preload_all(cluster, &level_keys, args, KIND_CLAIMED).await?.tokens;
        preload_secs = started.elapsed().as_secs_f64();
    }
    let preloaded = if args.path.preloads().is_some() { args.keys } else { 0 };
    let clients = cluster.connect(args.connections).await?;
    let log_before = cluster.log_indexes().await;
    let clock = RunClock::start();
    let start = clock.started();
    let run = Arc::new(Run {
        path: args.path,
        keys: if args.path == BenchPath::Complete { level_keys } else { keys.clone() },
        namespace: args.namespace.clone(),
        lease_ms: args.lease_ms,
        retention_ms: args.retention_ms.unwrap_or(0),
        outcome_bytes: args.outcome_bytes,
        batch: args.batch,
        dup_ratio: args.dup_ratio,
        preloaded,
        tokens,
        next_index: if args.path == BenchPath::Complete { Arc::new(AtomicU64::new(0)) } else { new_keys },
        budget: OpBudget::new(start + args.duration, args.max_ops),
    });
    let due_every = args.rate.map(|rate| Duration::from_secs_f64(concurrency as f64 / rate as f64));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, client) in (0..concurrency).zip(clients.iter().cycle()) {
        let offset = due_every.map_or(Duration::ZERO, |period| period.mul_f64(index as f64 / concurrency as f64));
        tasks.spawn(worker(run.clone(), client.clone(), start, due_every, offset));
    }
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("bench worker")?);
    }
    let (elapsed, cpu) = clock.stop();
    let raft_entries = log_growth(&log_before, &cluster.log_indexes().await);
    Ok(result_json(args, concurrency, &cluster.targets, &total, elapsed, cpu, raft_entries, preload_secs))
}

/// `fill`: writes `--keys` completed records with `concurrency` batch pairs in flight, for at
/// most `--duration`; `ops` are batch pairs, `items` the records written.
async fn fill(cluster: &Cluster, args: &BenchArgs, keys: &KeySpace, concurrency: usize) -> anyhow::Result<Value> {
    let log_before = cluster.log_indexes().await;
    let clock = RunClock::start();
    let start = clock.started();
    let done =
        preload(&cluster.admin, keys, args, KIND_COMPLETED, args.keys, concurrency, start + args.duration).await?;
    let (elapsed, cpu) = clock.stop();
    let raft_entries = log_growth(&log_before, &cluster.log_indexes().await);
    let mut value = result_json(args, concurrency, &cluster.targets, &done.tally, elapsed, cpu, raft_entries, 0.0);
    value["key_prefix"] = json!(keys.prefix);
    value["complete"] = json!(done.written == args.keys);
    Ok(value)
}

/// Raft entries appended between two readings: growth of the highest last log index (the
/// leader's; a follower that lagged at the first reading must not count its catch-up).
fn log_growth(before: &BTreeMap<u64, u64>, after: &BTreeMap<u64, u64>) -> u64 {
    let highest = |indexes: &BTreeMap<u64, u64>| indexes.values().copied().max().unwrap_or(0);
    highest(after).saturating_sub(highest(before))
}

/// One run as JSON: the fields scripts read (`path`, `concurrency`, `ops_per_sec`, `errors`,
/// `p50_ms`, `p99_ms`, ...) with raw numbers.
#[allow(clippy::too_many_arguments)]
fn result_json(
    args: &BenchArgs,
    concurrency: usize,
    targets: &[String],
    tally: &Tally,
    elapsed: Duration,
    cpu: Duration,
    raft_entries: u64,
    preload_secs: f64,
) -> Value {
    RunReport {
        path: args.path.name(),
        concurrency,
        connections_per_node: args.connections,
        targets,
        rate: args.rate,
        key_bytes: args.key_bytes,
        outcome_bytes: args.outcome_bytes,
        batch: if matches!(args.path, BenchPath::BatchClaim | BenchPath::Fill) { Some(args.batch) } else { None },
        tally,
        elapsed,
        cpu,
        raft_entries: Some(raft_entries),
        preload_secs,
    }
    .to_json()
}

/// The results as a table for people, one row per run.
pub fn results_table(results: &[Value]) -> String {
    let mut out = table(results, &[]);
    for r in results {
        for (field, label) in [("errors_by_reason", "errors"), ("unexpected_by_answer", "unexpected answers")] {
            out.extend(breakdown_line(r, field, label));
        }
        if let Some(prefix) = r["key_prefix"].as_str() {
            out.push_str(&format!(
                "fill wrote {} records under key prefix {prefix:?} (complete: {})\n",
                r["items"], r["complete"]
            ));
        }
    }
    out
}
