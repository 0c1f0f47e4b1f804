//! `compare-load`: the etcd and Redis side of the side-by-side benchmark (issue 6).
//!
//! It drives the same workloads as `dedupctl bench` against the systems dedup-ledger is compared
//! with, and prints the same JSON object per run (same field names), so one report generator
//! (`bench/report.py`) reads all three:
//!
//! * etcd 3.4: the check-and-claim transaction
//!   `If(CreateRevision(k) == 0) Then Put(k, v, lease) Else Get(k)`, one shared lease per run.
//!   `batch-claim` sends one transaction whose Then branch holds `--batch` such transactions
//!   nested (etcd >= 3.3), so every key keeps its own compare: one Raft entry per call, per-key
//!   answers, the same semantics as dedup-ledger's CheckAndClaimBatch.
//! * Redis: `SET k v NX PX lease_ms` on multiplexed connections; `batch-claim` is a pipeline of
//!   `--batch` such commands (one round trip, per-key answers, not atomic as a whole).
//!
//! Every loop is bounded twice, by `--duration` and by `--max-ops`; each call by
//! [`CALL_TIMEOUT`]; preloads by `--keys` and [`PRELOAD_TIME_MAX`].

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use clap::ValueEnum;
use etcd_client::Client as EtcdClient;
use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::ConnectOptions;
use etcd_client::KvClient;
use etcd_client::PutOptions;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;
use hdrhistogram::Histogram;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use serde_json::Value;

const CONCURRENCY_MAX: usize = 4096;
const CONNECTIONS_MAX: usize = 256;
const KEYS_MAX: u64 = 100_000_000;
const DURATION_MAX: Duration = Duration::from_secs(3600);
const SWEEP_CONCURRENCY: [usize; 5] = [1, 4, 16, 64, 256];
/// etcd's default --max-txn-ops is 128; keep batches (and preload transactions) within it.
const BATCH_MAX: usize = 128;
/// Bound of one call (all its attempts); a call past it counts as a TIMEOUT error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one call that failed UNAVAILABLE (etcd) or with an I/O error (Redis).
const ATTEMPTS_MAX: u32 = 4;
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const LATENCY_MAX_US: u64 = 120_000_000;
const PRELOAD_TASKS: usize = 8;
const PRELOAD_CHUNK: u64 = 64;
const PRELOAD_TIME_MAX: Duration = Duration::from_secs(1800);
const KEY_SUFFIX_BYTES: usize = 21;
const KEY_BYTES_MIN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    /// A (three-member) etcd 3.x cluster: create-if-absent transaction with a lease.
    Etcd,
    /// A single Redis: SET NX PX.
    Redis,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchPath {
    /// Claims of keys never seen (etcd: the Then branch, a Raft write; Redis: SET NX succeeds).
    ClaimNew,
    /// Claims of keys written beforehand (etcd: the Else branch, still a Raft round because the
    /// transaction is not read-only; Redis: SET NX answers nil).
    ClaimDup,
    /// `--batch` claims of new keys per call (etcd: nested transactions; Redis: a pipeline).
    BatchClaim,
}

impl BenchPath {
    fn name(self) -> &'static str {
        match self {
            BenchPath::ClaimNew => "claim-new",
            BenchPath::ClaimDup => "claim-dup",
            BenchPath::BatchClaim => "batch-claim",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// etcd: only the member that is leader when the run starts. Redis: the one endpoint.
    Leader,
    /// Every endpoint, workers spread round-robin.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

/// Load generator for etcd and Redis with the flags and JSON of `dedupctl bench`.
#[derive(Debug, Parser)]
#[command(name = "compare-load", version)]
struct Args {
    /// Which system to load.
    #[arg(value_enum)]
    system: System,
    /// What to measure.
    #[arg(value_enum)]
    path: BenchPath,
    /// Endpoints, comma separated: etcd client URLs or HOST:PORT; Redis HOST:PORT or redis:// URL.
    #[arg(long)]
    endpoints: String,
    /// Workers, each with one call in flight (closed loop) [1..=4096].
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Run concurrency 1, 4, 16, 64 and 256 in turn (one result per level).
    #[arg(long)]
    sweep: bool,
    /// Connections per target endpoint; workers share them round-robin [1..=256].
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of each timed run, e.g. 10s, 500ms, 2m (at most 1h).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Upper bound on operations per run, whatever the duration.
    #[arg(long, default_value_t = 100_000_000)]
    max_ops: u64,
    /// Which endpoints receive the load (etcd).
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    target: Target,
    /// Key length in bytes [32..=512].
    #[arg(long, default_value_t = 32)]
    key_bytes: usize,
    /// Value (outcome) length in bytes [0..=65536].
    #[arg(long, default_value_t = 64)]
    outcome_bytes: usize,
    /// Claims per call of batch-claim [1..=128].
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Keys written before the timed phase of claim-dup [1..=100000000].
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Lease of each claim in ms (etcd: one lease of this TTL per run, rounded up to seconds;
    /// Redis: PX).
    #[arg(long, default_value_t = 600_000)]
    lease_ms: u64,
    /// Prefix of every key of the run [default: random].
    #[arg(long)]
    key_prefix: Option<String>,
    /// Worker threads of the load generator [default: the number of CPUs].
    #[arg(long)]
    client_threads: Option<usize>,
    /// Output format: a table for people or one JSON object per run.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        check_range("--concurrency", self.concurrency as u64, 1, CONCURRENCY_MAX as u64)?;
        check_range("--connections", self.connections as u64, 1, CONNECTIONS_MAX as u64)?;
        check_range("--key-bytes", self.key_bytes as u64, KEY_BYTES_MIN as u64, 512)?;
        check_range("--outcome-bytes", self.outcome_bytes as u64, 0, 65_536)?;
        check_range("--batch", self.batch as u64, 1, BATCH_MAX as u64)?;
        check_range("--keys", self.keys, 1, KEYS_MAX)?;
        check_range("--max-ops", self.max_ops, 1, u64::MAX)?;
        check_range("--lease-ms", self.lease_ms, 1, 30 * 24 * 3_600_000)?;
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            bail!("--duration must be more than 0 and at most {}s", DURATION_MAX.as_secs());
        }
        if let Some(prefix) = &self.key_prefix {
            if prefix.len() + KEY_SUFFIX_BYTES > self.key_bytes {
                bail!("--key-prefix of {} bytes leaves no room in --key-bytes {}", prefix.len(), self.key_bytes);
            }
        }
        Ok(())
    }

    fn endpoint_list(&self) -> Vec<String> {
        self.endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect()
    }
}

fn check_range(flag: &str, value: u64, min: u64, max: u64) -> anyhow::Result<()> {
    if value < min || value > max {
        bail!("{flag} must be within {min}..={max}, got {value}");
    }
    Ok(())
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds (as `dedupctl bench`).
fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// Keys as `dedupctl bench` makes them: prefix + kind letter + zero-padded hex of a bijective mix
/// of the index, exactly `key_bytes` long ('c': written beforehand, 'n': new in the run).
#[derive(Clone)]
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

/// splitmix64's finalizer: a bijection on u64.
fn mix(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random_payload(bytes: usize) -> Vec<u8> {
    let mut payload = vec![0u8; bytes];
    rand::thread_rng().fill(payload.as_mut_slice());
    payload
}

/// What one worker saw (same shape as dedupctl's).
struct Tally {
    latency_us: Histogram<u64>,
    ops: u64,
    items: u64,
    errors: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    retries: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("histogram bounds are valid"),
            ops: 0,
            items: 0,
            errors: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            retries: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).expect("histograms share bounds");
        self.ops += other.ops;
        self.items += other.items;
        self.retries += other.retries;
        for (name, count) in other.errors {
            *self.errors.entry(name).or_default() += count;
        }
        for (name, count) in other.unexpected {
            *self.unexpected.entry(name).or_default() += count;
        }
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn unexpected(&mut self, what: &str) {
        *self.unexpected.entry(what.to_string()).or_default() += 1;
    }
}

/// The connections of a run.
enum Conns {
    Etcd { kv: Vec<KvClient>, lease: i64 },
    Redis { conns: Vec<MultiplexedConnection> },
}

/// A failed call: its kind for `errors_by_reason`, and whether another attempt may succeed.
struct CallError {
    kind: String,
    retryable: bool,
}

fn etcd_error(error: etcd_client::Error) -> CallError {
    match error {
        etcd_client::Error::GRpcStatus(status) => CallError {
            kind: format!("{:?}/{}", status.code(), status.message().chars().take(60).collect::<String>()),
            retryable: status.code() == tonic::Code::Unavailable,
        },
        etcd_client::Error::TransportError(_) => CallError { kind: "TRANSPORT".to_string(), retryable: true },
        etcd_client::Error::IoError(_) => CallError { kind: "IO".to_string(), retryable: true },
        other => CallError {
            kind: format!("OTHER/{}", other.to_string().chars().take(60).collect::<String>()),
            retryable: false,
        },
    }
}

fn redis_error(error: redis::RedisError) -> CallError {
    let retryable = error.is_io_error() || error.is_connection_dropped() || error.is_timeout();
    let kind = match error.code() {
        Some(code) => format!("SERVER/{code}"),
        None if error.is_timeout() => "TIMEOUT".to_string(),
        None => format!("{:?}", error.kind()),
    };
    CallError { kind, retryable }
}

/// Runs `call` until it succeeds, fails for good, ATTEMPTS_MAX is reached or CALL_TIMEOUT passes.
async fn with_retries<T, Fut>(tally: &mut Tally, mut call: impl FnMut() -> Fut) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    for attempt in 1..=ATTEMPTS_MAX {
        match tokio::time::timeout_at(deadline, call()).await {
            Err(_) => {
                tally.error("TIMEOUT".to_string());
                return None;
            }
            Ok(Ok(value)) => return Some(value),
            Ok(Err(error)) => {
                if attempt < ATTEMPTS_MAX && error.retryable {
                    tally.retries += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                tally.error(error.kind);
                return None;
            }
        }
    }
    None
}

/// Shared description of a run and the cursors workers draw work from.
struct Run {
    path: BenchPath,
    keys: KeySpace,
    lease_ms: u64,
    outcome_bytes: usize,
    batch: usize,
    preloaded: u64,
    next_index: Arc<AtomicU64>,
    ops_started: AtomicU64,
    max_ops: u64,
    deadline: Instant,
}

impl Run {
    fn next_op(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        self.ops_started.fetch_add(1, Ordering::Relaxed) < self.max_ops
    }
}

fn etcd_claim_txn(key: Vec<u8>, value: Vec<u8>, lease: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))])
        .or_else([TxnOp::get(key, None)])
}

/// One claim (single key) against either system: Some(true) = claimed (new), Some(false) = the key
/// existed, None = failed (recorded in the tally).
async fn claim_one(run: &Run, conn: &ConnRef<'_>, tally: &mut Tally, key: Vec<u8>) -> Option<bool> {
    let value = random_payload(run.outcome_bytes);
    match conn {
        ConnRef::Etcd { kv, lease } => {
            let txn = etcd_claim_txn(key, value, *lease);
            with_retries(tally, || {
                let (mut kv, txn) = ((*kv).clone(), txn.clone());
                async move { kv.txn(txn).await.map(|r| r.succeeded()).map_err(etcd_error) }
            })
            .await
        }
        ConnRef::Redis { conn } => {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(&value).arg("NX").arg("PX").arg(run.lease_ms);
            with_retries(tally, || {
                let (mut conn, cmd) = ((*conn).clone(), cmd.clone());
                async move {
                    cmd.query_async::<redis::Value>(&mut conn).await.map(|v| set_nx_claimed(&v)).map_err(redis_error)
                }
            })
            .await
        }
    }
}

/// SET ... NX answers OK when it set the key and nil when the key existed.
fn set_nx_claimed(value: &redis::Value) -> bool {
    !matches!(value, redis::Value::Nil)
}

/// One batch of `run.batch` new keys: returns (claimed, existed) counts, None when the call failed.
async fn claim_batch(run: &Run, conn: &ConnRef<'_>, tally: &mut Tally, first: u64) -> Option<(u64, u64)> {
    let keys: Vec<Vec<u8>> = (first..first + run.batch as u64).map(|index| run.keys.key('n', index)).collect();
    match conn {
        ConnRef::Etcd { kv, lease } => {
            // No compare: the outer Then always runs; each nested txn has its own compare.
            let nested: Vec<TxnOp> = keys
                .into_iter()
                .map(|key| TxnOp::txn(etcd_claim_txn(key, random_payload(run.outcome_bytes), *lease)))
                .collect();
            let txn = Txn::new().and_then(nested);
            let answer = with_retries(tally, || {
                let (mut kv, txn) = ((*kv).clone(), txn.clone());
                async move { kv.txn(txn).await.map_err(etcd_error) }
            })
            .await?;
            let (mut claimed, mut existed) = (0, 0);
            for response in answer.op_responses() {
                match response {
                    TxnOpResponse::Txn(inner) if inner.succeeded() => claimed += 1,
                    TxnOpResponse::Txn(_) => existed += 1,
                    _ => tally.unexpected("NOT_A_TXN"),
                }
            }
            Some((claimed, existed))
        }
        ConnRef::Redis { conn } => {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("SET").arg(key).arg(random_payload(run.outcome_bytes)).arg("NX").arg("PX").arg(run.lease_ms);
            }
            let answer = with_retries(tally, || {
                let (mut conn, pipe) = ((*conn).clone(), pipe.clone());
                async move { pipe.query_async::<Vec<redis::Value>>(&mut conn).await.map_err(redis_error) }
            })
            .await?;
            let claimed = answer.iter().filter(|v| set_nx_claimed(v)).count() as u64;
            Some((claimed, answer.len() as u64 - claimed))
        }
    }
}

/// A borrowed connection of either system.
enum ConnRef<'a> {
    Etcd { kv: &'a KvClient, lease: i64 },
    Redis { conn: &'a MultiplexedConnection },
}

impl Conns {
    fn len(&self) -> usize {
        match self {
            Conns::Etcd { kv, .. } => kv.len(),
            Conns::Redis { conns } => conns.len(),
        }
    }

    fn get(&self, index: usize) -> ConnRef<'_> {
        match self {
            Conns::Etcd { kv, lease } => ConnRef::Etcd { kv: &kv[index % kv.len()], lease: *lease },
            Conns::Redis { conns } => ConnRef::Redis { conn: &conns[index % conns.len()] },
        }
    }
}

/// One operation of the run's path; returns the items done.
async fn one_op(run: &Run, conn: &ConnRef<'_>, tally: &mut Tally) -> u64 {
    match run.path {
        BenchPath::ClaimNew => {
            let key = run.keys.key('n', run.next_index.fetch_add(1, Ordering::Relaxed));
            match claim_one(run, conn, tally, key).await {
                Some(true) => 1,
                Some(false) => {
                    tally.unexpected("EXISTED");
                    1
                }
                None => 0,
            }
        }
        BenchPath::ClaimDup => {
            let key = run.keys.key('c', rand::thread_rng().gen_range(0..run.preloaded));
            match claim_one(run, conn, tally, key).await {
                Some(false) => 1,
                Some(true) => {
                    tally.unexpected("CLAIMED");
                    1
                }
                None => 0,
            }
        }
        BenchPath::BatchClaim => {
            let first = run.next_index.fetch_add(run.batch as u64, Ordering::Relaxed);
            match claim_batch(run, conn, tally, first).await {
                Some((claimed, existed)) => {
                    for _ in 0..existed {
                        tally.unexpected("EXISTED");
                    }
                    claimed
                }
                None => 0,
            }
        }
    }
}

async fn worker(run: Arc<Run>, conns: Arc<Conns>, index: usize) -> Tally {
    let mut tally = Tally::new();
    let conn = conns.get(index);
    while run.next_op() {
        let began = Instant::now();
        let items = one_op(&run, &conn, &mut tally).await;
        let micros = (began.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US);
        tally.latency_us.record(micros).expect("value within histogram bounds");
        tally.ops += 1;
        tally.items += items;
    }
    tally
}

/// The endpoints a run talks to, and (etcd) an admin client on the leader for the Raft index.
struct Cluster {
    system: System,
    targets: Vec<String>,
    etcd_admin: Option<EtcdClient>,
}

fn etcd_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

fn redis_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("redis://{endpoint}/")
    }
}

fn etcd_options() -> ConnectOptions {
    ConnectOptions::new().with_connect_timeout(Duration::from_secs(3)).with_timeout(CALL_TIMEOUT)
}

impl Cluster {
    async fn resolve(args: &Args) -> anyhow::Result<Cluster> {
        let endpoints = args.endpoint_list();
        if endpoints.is_empty() {
            bail!("--endpoints is empty");
        }
        match args.system {
            System::Redis => Ok(Cluster { system: System::Redis, targets: endpoints, etcd_admin: None }),
            System::Etcd => {
                let mut statuses = Vec::new();
                for endpoint in &endpoints {
                    let url = etcd_url(endpoint);
                    let mut client = EtcdClient::connect([url.clone()], Some(etcd_options()))
                        .await
                        .with_context(|| format!("connecting to etcd at {url}"))?;
                    let status = client.status().await.with_context(|| format!("etcd status of {url}"))?;
                    let member = status.header().map_or(0, |h| h.member_id());
                    statuses.push((url, client, member, status.leader()));
                }
                let leader_id = statuses.iter().map(|s| s.3).find(|&l| l != 0).unwrap_or(0);
                let leader_pos = statuses.iter().position(|s| s.2 == leader_id);
                let Some(leader_pos) = leader_pos else {
                    bail!("no etcd endpoint is the leader (leader id {leader_id:x}); give every member in --endpoints");
                };
                let targets = match args.target {
                    Target::Leader => vec![statuses[leader_pos].0.clone()],
                    Target::All => statuses.iter().map(|s| s.0.clone()).collect(),
                };
                let admin = statuses.swap_remove(leader_pos).1;
                Ok(Cluster { system: System::Etcd, targets, etcd_admin: Some(admin) })
            }
        }
    }

    async fn connect(&self, connections: usize, lease_ms: u64) -> anyhow::Result<Conns> {
        match self.system {
            System::Etcd => {
                let mut kv = Vec::new();
                for target in &self.targets {
                    for _ in 0..connections {
                        // One Client per connection: each is its own HTTP/2 connection.
                        let client = EtcdClient::connect([target.clone()], Some(etcd_options()))
                            .await
                            .with_context(|| format!("connecting to etcd at {target}"))?;
                        kv.push(client.kv_client());
                    }
                }
                let mut admin = self.etcd_admin.clone().context("etcd admin client")?;
                let ttl = lease_ms.div_ceil(1000) as i64;
                let lease = admin.lease_grant(ttl, None).await.context("etcd lease grant")?.id();
                Ok(Conns::Etcd { kv, lease })
            }
            System::Redis => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(3)))
                    .set_response_timeout(Some(CALL_TIMEOUT));
                let mut conns = Vec::new();
                for target in &self.targets {
                    let client =
                        redis::Client::open(redis_url(target)).with_context(|| format!("redis URL {target}"))?;
                    for _ in 0..connections {
                        conns.push(
                            client
                                .get_multiplexed_async_connection_with_config(&config)
                                .await
                                .with_context(|| format!("connecting to redis at {target}"))?,
                        );
                    }
                }
                Ok(Conns::Redis { conns })
            }
        }
    }

    /// etcd: the leader's Raft index (entries appended by a run = growth); Redis: none.
    async fn raft_index(&self) -> Option<u64> {
        let mut admin = self.etcd_admin.clone()?;
        admin.status().await.ok().map(|s| s.raft_index())
    }
}

/// Writes keys `0..count` of kind 'c' (plain puts with the lease / SET PX), PRELOAD_TASKS chunks in
/// flight, within PRELOAD_TIME_MAX. Returns the keys written.
async fn preload(
    conns: Arc<Conns>,
    keys: &KeySpace,
    count: u64,
    lease_ms: u64,
    outcome_bytes: usize,
) -> anyhow::Result<u64> {
    let cursor = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + PRELOAD_TIME_MAX;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..PRELOAD_TASKS {
        let (cursor, conns, keys) = (cursor.clone(), conns.clone(), keys.clone());
        tasks.spawn(async move {
            let mut written = 0u64;
            while Instant::now() < deadline {
                let first = cursor.fetch_add(PRELOAD_CHUNK, Ordering::Relaxed);
                if first >= count {
                    break;
                }
                let indexes = first..(first + PRELOAD_CHUNK).min(count);
                let n = indexes.end - indexes.start;
                match conns.get(task) {
                    ConnRef::Etcd { kv, lease } => {
                        let puts: Vec<TxnOp> = indexes
                            .map(|i| {
                                TxnOp::put(
                                    keys.key('c', i),
                                    random_payload(outcome_bytes),
                                    Some(PutOptions::new().with_lease(lease)),
                                )
                            })
                            .collect();
                        let mut kv = kv.clone();
                        tokio::time::timeout(CALL_TIMEOUT, kv.txn(Txn::new().and_then(puts)))
                            .await
                            .context("etcd preload timed out")?
                            .context("etcd preload txn")?;
                    }
                    ConnRef::Redis { conn } => {
                        let mut pipe = redis::pipe();
                        for i in indexes {
                            pipe.cmd("SET")
                                .arg(keys.key('c', i))
                                .arg(random_payload(outcome_bytes))
                                .arg("PX")
                                .arg(lease_ms)
                                .ignore();
                        }
                        let mut conn = conn.clone();
                        tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut conn))
                            .await
                            .context("redis preload timed out")?
                            .context("redis preload pipeline")?;
                    }
                }
                written += n;
            }
            Ok::<u64, anyhow::Error>(written)
        });
    }
    let mut written = 0;
    while let Some(joined) = tasks.join_next().await {
        written += joined.context("preload task")??;
    }
    Ok(written)
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

async fn bench(args: &Args) -> anyhow::Result<Vec<Value>> {
    args.validate()?;
    let cluster = Cluster::resolve(args).await?;
    let prefix = args.key_prefix.clone().unwrap_or_else(|| format!("b{:08x}-", rand::random::<u32>()));
    let keys = KeySpace { prefix, key_bytes: args.key_bytes };
    if keys.prefix.len() + KEY_SUFFIX_BYTES > keys.key_bytes {
        bail!("--key-bytes {} is too short for the key prefix {:?}", keys.key_bytes, keys.prefix);
    }
    let levels: Vec<usize> = if args.sweep { SWEEP_CONCURRENCY.to_vec() } else { vec![args.concurrency] };
    let conns = Arc::new(cluster.connect(args.connections, args.lease_ms).await?);
    let mut preload_secs = 0.0;
    let mut preloaded = 0;
    if args.path == BenchPath::ClaimDup {
        let started = Instant::now();
        preloaded = preload(conns.clone(), &keys, args.keys, args.lease_ms, args.outcome_bytes).await?;
        if preloaded < args.keys {
            bail!(
                "preload wrote {preloaded} of {} keys in {}s; use fewer --keys",
                args.keys,
                PRELOAD_TIME_MAX.as_secs()
            );
        }
        preload_secs = started.elapsed().as_secs_f64();
    }
    let new_keys = Arc::new(AtomicU64::new(0));
    let mut results = Vec::new();
    for concurrency in levels {
        let raft_before = cluster.raft_index().await;
        let cpu_before = process_cpu_time();
        let start = Instant::now();
        let run = Arc::new(Run {
            path: args.path,
            keys: keys.clone(),
            lease_ms: args.lease_ms,
            outcome_bytes: args.outcome_bytes,
            batch: args.batch,
            preloaded,
            next_index: new_keys.clone(),
            ops_started: AtomicU64::new(0),
            max_ops: args.max_ops,
            deadline: start + args.duration,
        });
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..concurrency {
            tasks.spawn(worker(run.clone(), conns.clone(), index % conns.len()));
        }
        let mut total = Tally::new();
        while let Some(joined) = tasks.join_next().await {
            total.merge(joined.context("bench worker")?);
        }
        let elapsed = start.elapsed();
        let cpu = process_cpu_time().saturating_sub(cpu_before);
        let raft_entries = match (raft_before, cluster.raft_index().await) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        results.push(result_json(
            args,
            concurrency,
            &cluster.targets,
            &total,
            elapsed,
            cpu,
            raft_entries,
            preload_secs,
        ));
    }
    Ok(results)
}

/// One run as JSON, with the field names of `dedupctl bench --output json` plus `system`.
#[allow(clippy::too_many_arguments)]
fn result_json(
    args: &Args,
    concurrency: usize,
    targets: &[String],
    tally: &Tally,
    elapsed: Duration,
    cpu: Duration,
    raft_entries: Option<u64>,
    preload_secs: f64,
) -> Value {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let quantile_ms = |q: f64| if tally.ops == 0 { 0.0 } else { tally.latency_us.value_at_quantile(q) as f64 / 1000.0 };
    let errors: u64 = tally.errors.values().sum();
    let unexpected: u64 = tally.unexpected.values().sum();
    json!({
        "system": args.system.name(),
        "path": args.path.name(),
        "concurrency": concurrency,
        "connections_per_node": args.connections,
        "targets": targets,
        "mode": "closed-loop",
        "rate": null,
        "key_bytes": args.key_bytes,
        "outcome_bytes": args.outcome_bytes,
        "batch": if args.path == BenchPath::BatchClaim { Some(args.batch) } else { None },
        "lease_ms": args.lease_ms,
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
        "redirects": 0,
        "p50_ms": quantile_ms(0.50),
        "p90_ms": quantile_ms(0.90),
        "p99_ms": quantile_ms(0.99),
        "p999_ms": quantile_ms(0.999),
        "max_ms": if tally.ops == 0 { 0.0 } else { tally.latency_us.max() as f64 / 1000.0 },
        "mean_ms": if tally.ops == 0 { 0.0 } else { tally.latency_us.mean() / 1000.0 },
        "client_cpu_s": cpu.as_secs_f64(),
        "client_cpu_percent": 100.0 * cpu.as_secs_f64() / seconds,
        "raft_entries": raft_entries,
        "preload_s": preload_secs,
    })
}

fn results_table(results: &[Value]) -> String {
    let header = [
        "system",
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
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in results {
        let number = |name: &str| r[name].as_f64().unwrap_or(0.0);
        rows.push(vec![
            r["system"].as_str().unwrap_or("?").to_string(),
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
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:>width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in results {
        for field in ["errors_by_reason", "unexpected_by_answer"] {
            if let Some(map) = r[field].as_object().filter(|m| !m.is_empty()) {
                out.push_str(&format!(
                    "{} c={}: {field} {}\n",
                    r["path"].as_str().unwrap_or("?"),
                    r["concurrency"],
                    Value::Object(map.clone())
                ));
            }
        }
    }
    out
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let threads =
        args.client_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: tokio runtime: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(bench(&args)) {
        Ok(results) => {
            match args.output {
                OutputFormat::Json => {
                    for result in &results {
                        println!("{result}");
                    }
                }
                OutputFormat::Table => print!("{}", results_table(&results)),
            }
            if results.iter().any(|r| r["ops"].as_u64() == Some(0)) {
                std::process::ExitCode::from(3)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_length_and_differ_by_kind() {
        let keys = KeySpace { prefix: "b1234abcd-".to_string(), key_bytes: 32 };
        assert_eq!(keys.key('c', 7).len(), 32);
        assert_eq!(keys.key('n', 7).len(), 32);
        assert_ne!(keys.key('c', 7), keys.key('n', 7));
        assert_ne!(keys.key('n', 8), keys.key('n', 7));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn set_nx_nil_means_the_key_existed() {
        assert!(set_nx_claimed(&redis::Value::Okay));
        assert!(!set_nx_claimed(&redis::Value::Nil));
    }

    #[test]
    fn urls_get_a_scheme() {
        assert_eq!(etcd_url("127.0.0.1:23791"), "http://127.0.0.1:23791");
        assert_eq!(redis_url("127.0.0.1:63791"), "redis://127.0.0.1:63791/");
        assert_eq!(redis_url("redis://h:1/"), "redis://h:1/");
    }
}
