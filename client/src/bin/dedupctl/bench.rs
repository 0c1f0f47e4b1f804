//! `dedupctl bench`: a bounded load generator against a running cluster.
//!
//! Every loop is bounded twice: by `--duration` and by `--max-ops`; preloads by `--keys`
//! (at most [`BENCH_KEYS_MAX`]). Latency is measured per call into an HDR histogram per worker
//! (microseconds, 3 significant digits); in open-loop mode (`--rate`) from the moment the call
//! was due, so a stalled server shows as latency instead of hiding as fewer sends.

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
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

/// Concurrency of one run (workers, each with one call in flight).
pub const BENCH_CONCURRENCY_MAX: usize = 4096;
/// Connections per target node.
pub const BENCH_CONNECTIONS_MAX: usize = 256;
/// Keys a preload or `fill` writes.
pub const BENCH_KEYS_MAX: u64 = 100_000_000;
/// Length of one run.
pub const BENCH_DURATION_MAX: Duration = Duration::from_secs(3600);
/// The concurrency levels of `--sweep`.
pub const SWEEP_CONCURRENCY: [usize; 5] = [1, 4, 16, 64, 256];
/// Items per batch call (the server's BATCH_ITEMS_MAX).
const BATCH_ITEMS_MAX: usize = 256;
/// Attempts of one operation that failed UNAVAILABLE or DEADLINE_EXCEEDED (leader change).
const ATTEMPTS_MAX: u32 = 4;
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Latencies above this are recorded as this (the histogram's upper bound).
const LATENCY_MAX_US: u64 = 120_000_000;
/// Concurrent batch calls of a preload, and how long it may take.
const PRELOAD_TASKS: usize = 8;
const PRELOAD_TIME_MAX: Duration = Duration::from_secs(1800);
const OWNER: &str = "dedupctl-bench";
/// What a key needs beyond its prefix: a level sub-prefix (up to 4 bytes), a kind letter and
/// 16 hex digits of the mixed index.
const KEY_SUFFIX_BYTES: usize = 21;
const KEY_BYTES_MIN: usize = 32;

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
        check_range("--concurrency", self.concurrency as u64, 1, BENCH_CONCURRENCY_MAX as u64)?;
        check_range("--connections", self.connections as u64, 1, BENCH_CONNECTIONS_MAX as u64)?;
        check_range("--key-bytes", self.key_bytes as u64, KEY_BYTES_MIN as u64, 512)?;
        check_range("--outcome-bytes", self.outcome_bytes as u64, 0, 65_536)?;
        check_range("--batch", self.batch as u64, 1, BATCH_ITEMS_MAX as u64)?;
        check_range("--keys", self.keys, 1, BENCH_KEYS_MAX)?;
        check_range("--max-ops", self.max_ops, 1, u64::MAX)?;
        if self.duration.is_zero() || self.duration > BENCH_DURATION_MAX {
            return Err(usage(format!("--duration must be more than 0 and at most {}s", BENCH_DURATION_MAX.as_secs())));
        }
        if !(0.0..=1.0).contains(&self.dup_ratio) {
            return Err(usage(format!("--dup-ratio must be within 0..=1, got {}", self.dup_ratio)));
        }
        if self.rate == Some(0) {
            return Err(usage("--rate must be at least 1 operation per second".to_string()));
        }
        if self.skip_preload && self.key_prefix.is_none() {
            return Err(usage("--skip-preload needs the --key-prefix of the fill that wrote the keys".to_string()));
        }
        if let Some(prefix) = &self.key_prefix {
            if prefix.len() + KEY_SUFFIX_BYTES > self.key_bytes {
                return Err(usage(format!(
                    "--key-prefix of {} bytes leaves no room for the index in --key-bytes {}",
                    prefix.len(),
                    self.key_bytes
                )));
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

fn check_range(flag: &str, value: u64, min: u64, max: u64) -> anyhow::Result<()> {
    if value < min || value > max {
        return Err(usage(format!("{flag} must be within {min}..={max}, got {value}")));
    }
    Ok(())
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds.
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

/// Keys of a run: `PREFIX` + kind letter + zero padding + 16 hex digits of a bijective mix of the
/// index, exactly `key_bytes` long: unique per index, and as incompressible as hashed message IDs
/// (a counter would flatter sled's and the snapshots' compression). Kind `c` marks preloaded
/// completed keys, `l` preloaded claimed keys, `n` keys first used in the run.
struct KeySpace {
    prefix: String,
    key_bytes: usize,
}

impl KeySpace {
    fn key(&self, kind: char, index: u64) -> Vec<u8> {
        let digits = self.key_bytes - self.prefix.len() - 1;
        format!("{}{kind}{:0digits$x}", self.prefix, mix(index)).into_bytes()
    }
}

/// splitmix64's finalizer: a bijection on u64 (each step is invertible), so distinct indexes give
/// distinct keys.
fn mix(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An outcome payload of `bytes` random bytes (incompressible, like a real result digest).
fn random_payload(bytes: usize) -> Vec<u8> {
    let mut payload = vec![0u8; bytes];
    rand::thread_rng().fill(payload.as_mut_slice());
    payload
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

/// What one worker saw.
struct WorkerTally {
    latency_us: Histogram<u64>,
    ops: u64,
    items: u64,
    errors: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    retries: u64,
    redirects: u64,
}

impl WorkerTally {
    fn new() -> WorkerTally {
        WorkerTally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("histogram bounds are valid"),
            ops: 0,
            items: 0,
            errors: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            retries: 0,
            redirects: 0,
        }
    }

    fn merge(&mut self, other: WorkerTally) {
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

    fn error(&mut self, status: &tonic::Status) {
        let error = Error::from_status(status);
        *self.errors.entry(format!("{}/{}", dedup_client::code_name(status.code()), error.reason())).or_default() += 1;
    }

    fn unexpected(&mut self, what: &str) {
        *self.unexpected.entry(what.to_string()).or_default() += 1;
    }
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
    ops_started: AtomicU64,
    max_ops: u64,
    deadline: Instant,
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

    /// Takes the next operation slot, or `None` when the run is over.
    fn next_op(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let op = self.ops_started.fetch_add(1, Ordering::Relaxed);
        (op < self.max_ops).then_some(op)
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
async fn with_retries<T, Fut>(tally: &mut WorkerTally, mut call: impl FnMut() -> Fut) -> Option<T>
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
                tally.error(&status);
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
async fn one_op(run: &Run, client: &LedgerClient<Channel>, tally: &mut WorkerTally) -> u64 {
    match run.path {
        BenchPath::ClaimNew => {
            claim_expecting(run, client, tally, 'n', run.next_index.fetch_add(1, Ordering::Relaxed), "CLAIMED").await
        }
        BenchPath::ClaimDup => {
            let index = rand::thread_rng().gen_range(0..run.preloaded);
            claim_expecting(run, client, tally, 'c', index, "COMPLETED").await
        }
        BenchPath::Mix => {
            let duplicate = rand::thread_rng().gen_bool(run.dup_ratio);
            if duplicate {
                let index = rand::thread_rng().gen_range(0..run.preloaded);
                claim_expecting(run, client, tally, 'c', index, "COMPLETED").await
            } else {
                claim_expecting(run, client, tally, 'n', run.next_index.fetch_add(1, Ordering::Relaxed), "CLAIMED")
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
                key: run.keys.key('l', index),
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
            let items = (first..first + run.batch as u64).map(|index| run.claim(run.keys.key('n', index))).collect();
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
                        *tally.errors.entry(format!("{}/{}", error.code, error.reason)).or_default() += 1;
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
    tally: &mut WorkerTally,
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
) -> WorkerTally {
    let mut tally = WorkerTally::new();
    let mut sent: u32 = 0;
    while run.next_op().is_some() {
        let began = match due_every {
            Some(period) => {
                let due = start + offset + period * sent;
                sent = sent.saturating_add(1);
                if due >= run.deadline {
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
        let micros = (began.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US);
        tally.latency_us.record(micros).expect("value within histogram bounds");
        tally.ops += 1;
        tally.items += items;
    }
    tally
}

/// What a preload wrote: tokens of claimed keys by index ('l' only), how many keys it wrote,
/// and the latency of each batch (claim plus complete) in a tally.
struct Preloaded {
    tokens: Vec<u64>,
    written: u64,
    tally: WorkerTally,
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
    let tokens = Arc::new(std::sync::Mutex::new(vec![0u64; if kind == 'l' { count as usize } else { 0 }]));
    let cursor = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let batch = args.batch as u64;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let client = client.clone();
        let cursor = cursor.clone();
        let written = written.clone();
        let tokens = tokens.clone();
        let keys = KeySpace { prefix: keys.prefix.clone(), key_bytes: keys.key_bytes };
        let namespace = args.namespace.clone();
        let lease = Duration::from_millis(args.lease_ms);
        let retention = args.retention_ms.map(Duration::from_millis);
        let outcome_bytes = args.outcome_bytes;
        workers.spawn(async move {
            let mut tally = WorkerTally::new();
            loop {
                if Instant::now() >= deadline {
                    return Ok::<WorkerTally, anyhow::Error>(tally);
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
                        ClaimAnswer::Claimed(claim) if kind == 'l' => {
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
                let micros = (began.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US);
                tally.latency_us.record(micros).expect("value within histogram bounds");
                tally.ops += 1;
                tally.items += indexes.len() as u64;
                written.fetch_add(indexes.len() as u64, Ordering::Relaxed);
            }
        });
    }
    let mut tally = WorkerTally::new();
    while let Some(joined) = workers.join_next().await {
        tally.merge(joined.context("preload task")??);
    }
    let tokens = std::mem::take(&mut *tokens.lock().expect("token table lock"));
    Ok(Preloaded { tokens, written: written.load(Ordering::Relaxed), tally })
}

/// Client CPU time (user + system) of this process so far.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Runs the bench described by `args`: one result object per concurrency level.
pub async fn bench(admin: DedupClient, args: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    args.validate()?;
    let cluster = Cluster::resolve(admin, args.target).await?;
    let prefix = args.key_prefix.clone().unwrap_or_else(|| format!("b{:08x}-", rand::random::<u32>()));
    let keys = KeySpace { prefix, key_bytes: args.key_bytes };
    if keys.prefix.len() + KEY_SUFFIX_BYTES > keys.key_bytes {
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
        preload_all(&cluster, &keys, args, 'c').await?;
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
        tokens = preload_all(cluster, &level_keys, args, 'l').await?.tokens;
        preload_secs = started.elapsed().as_secs_f64();
    }
    let preloaded = if args.path.preloads().is_some() { args.keys } else { 0 };
    let clients = cluster.connect(args.connections).await?;
    let log_before = cluster.log_indexes().await;
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let run = Arc::new(Run {
        path: args.path,
        keys: if args.path == BenchPath::Complete {
            level_keys
        } else {
            KeySpace { prefix: keys.prefix.clone(), key_bytes: keys.key_bytes }
        },
        namespace: args.namespace.clone(),
        lease_ms: args.lease_ms,
        retention_ms: args.retention_ms.unwrap_or(0),
        outcome_bytes: args.outcome_bytes,
        batch: args.batch,
        dup_ratio: args.dup_ratio,
        preloaded,
        tokens,
        next_index: if args.path == BenchPath::Complete { Arc::new(AtomicU64::new(0)) } else { new_keys },
        ops_started: AtomicU64::new(0),
        max_ops: args.max_ops,
        deadline: start + args.duration,
    });
    let due_every = args.rate.map(|rate| Duration::from_secs_f64(concurrency as f64 / rate as f64));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, client) in (0..concurrency).zip(clients.iter().cycle()) {
        let offset = due_every.map_or(Duration::ZERO, |period| period.mul_f64(index as f64 / concurrency as f64));
        tasks.spawn(worker(run.clone(), client.clone(), start, due_every, offset));
    }
    let mut total = WorkerTally::new();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("bench worker")?);
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    let raft_entries = log_growth(&log_before, &cluster.log_indexes().await);
    Ok(result_json(args, concurrency, &cluster.targets, &total, elapsed, cpu, raft_entries, preload_secs))
}

/// `fill`: writes `--keys` completed records with `concurrency` batch pairs in flight, for at
/// most `--duration`; `ops` are batch pairs, `items` the records written.
async fn fill(cluster: &Cluster, args: &BenchArgs, keys: &KeySpace, concurrency: usize) -> anyhow::Result<Value> {
    let log_before = cluster.log_indexes().await;
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let done = preload(&cluster.admin, keys, args, 'c', args.keys, concurrency, start + args.duration).await?;
    let elapsed = start.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
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
    tally: &WorkerTally,
    elapsed: Duration,
    cpu: Duration,
    raft_entries: u64,
    preload_secs: f64,
) -> Value {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let quantile_ms = |q: f64| if tally.ops == 0 { 0.0 } else { tally.latency_us.value_at_quantile(q) as f64 / 1000.0 };
    let errors: u64 = tally.errors.values().sum();
    let unexpected: u64 = tally.unexpected.values().sum();
    json!({
        "path": args.path.name(),
        "concurrency": concurrency,
        "connections_per_node": args.connections,
        "targets": targets,
        "mode": if args.rate.is_some() { "open-loop" } else { "closed-loop" },
        "rate": args.rate,
        "key_bytes": args.key_bytes,
        "outcome_bytes": args.outcome_bytes,
        "batch": if matches!(args.path, BenchPath::BatchClaim | BenchPath::Fill) { Some(args.batch) } else { None },
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
        "p50_ms": quantile_ms(0.50),
        "p90_ms": quantile_ms(0.90),
        "p99_ms": quantile_ms(0.99),
        "p999_ms": quantile_ms(0.999),
        "max_ms": if tally.ops == 0 { 0.0 } else { tally.latency_us.max() as f64 / 1000.0 },
        "client_cpu_s": cpu.as_secs_f64(),
        "client_cpu_percent": 100.0 * cpu.as_secs_f64() / seconds,
        "raft_entries": raft_entries,
        "preload_s": preload_secs,
    })
}

/// The results as a table for people, one row per run.
pub fn results_table(results: &[Value]) -> String {
    let mut rows = vec![[
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for r in results {
        let number = |name: &str| r[name].as_f64().unwrap_or(0.0);
        rows.push(vec![
            r["path"].as_str().unwrap_or("?").to_string(),
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
    }
    let mut out = String::new();
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:>width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in results {
        if let Some(errors) = r["errors_by_reason"].as_object().filter(|e| !e.is_empty()) {
            out.push_str(&format!(
                "{} c={}: errors {}\n",
                r["path"].as_str().unwrap_or("?"),
                r["concurrency"],
                Value::Object(errors.clone())
            ));
        }
        if let Some(unexpected) = r["unexpected_by_answer"].as_object().filter(|e| !e.is_empty()) {
            out.push_str(&format!(
                "{} c={}: unexpected answers {}\n",
                r["path"].as_str().unwrap_or("?"),
                r["concurrency"],
                Value::Object(unexpected.clone())
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn keys_have_the_asked_length_and_do_not_collide_across_kinds() {
        let keys = KeySpace { prefix: "b1234abcd-".to_string(), key_bytes: 32 };
        let completed = keys.key('c', 7);
        let new = keys.key('n', 7);
        assert_eq!(completed.len(), 32);
        assert_eq!(new.len(), 32);
        assert_ne!(completed, new);
        assert_ne!(keys.key('n', 8), new);
    }
}
