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
//!
//! Keys, tallies, durations, CPU time, the result JSON and the table come from the
//! `dedup-loadgen` crate (`client/loadgen`), the same code as `dedupctl bench`.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use clap::ValueEnum;
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
use dedup_loadgen::KIND_COMPLETED;
use dedup_loadgen::KIND_NEW;
use dedup_loadgen::OUTCOME_BYTES_MAX;
use dedup_loadgen::SWEEP_CONCURRENCY;
use etcd_client::Client as EtcdClient;
use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::ConnectOptions;
use etcd_client::KvClient;
use etcd_client::PutOptions;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use serde_json::Value;

/// etcd's default --max-txn-ops is 128; keep batches (and preload transactions) within it.
const BATCH_MAX: usize = 128;
/// Bound of one call (all its attempts); a call past it counts as a TIMEOUT error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one call that failed UNAVAILABLE (etcd) or with an I/O error (Redis).
const ATTEMPTS_MAX: u32 = 4;
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const PRELOAD_TASKS: usize = 8;
const PRELOAD_CHUNK: u64 = 64;
const PRELOAD_TIME_MAX: Duration = Duration::from_secs(1800);

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
        self.check_flags().map_err(anyhow::Error::msg)
    }

    fn check_flags(&self) -> Result<(), String> {
        check_range("--concurrency", self.concurrency as u64, 1, CONCURRENCY_MAX as u64)?;
        check_range("--connections", self.connections as u64, 1, CONNECTIONS_MAX as u64)?;
        check_range("--key-bytes", self.key_bytes as u64, KEY_BYTES_MIN as u64, KEY_BYTES_MAX as u64)?;
        check_range("--outcome-bytes", self.outcome_bytes as u64, 0, OUTCOME_BYTES_MAX as u64)?;
        check_range("--batch", self.batch as u64, 1, BATCH_MAX as u64)?;
        check_range("--keys", self.keys, 1, KEYS_MAX)?;
        check_range("--max-ops", self.max_ops, 1, u64::MAX)?;
        check_range("--lease-ms", self.lease_ms, 1, 30 * 24 * 3_600_000)?;
        check_duration(self.duration)?;
        if let Some(prefix) = &self.key_prefix {
            if !KeySpace::fits(prefix, self.key_bytes) {
                return Err(format!(
                    "--key-prefix of {} bytes leaves no room in --key-bytes {}",
                    prefix.len(),
                    self.key_bytes
                ));
            }
        }
        Ok(())
    }

    fn endpoint_list(&self) -> Vec<String> {
        self.endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect()
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
    /// `--duration` and `--max-ops`.
    budget: OpBudget,
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
    let keys: Vec<Vec<u8>> = (first..first + run.batch as u64).map(|index| run.keys.key(KIND_NEW, index)).collect();
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
            let key = run.keys.key(KIND_NEW, run.next_index.fetch_add(1, Ordering::Relaxed));
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
            let key = run.keys.key(KIND_COMPLETED, rand::thread_rng().gen_range(0..run.preloaded));
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
    while run.budget.take() {
        let began = Instant::now();
        let items = one_op(&run, &conn, &mut tally).await;
        tally.record(began.elapsed(), items);
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
                                    keys.key(KIND_COMPLETED, i),
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
                                .arg(keys.key(KIND_COMPLETED, i))
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

async fn bench(args: &Args) -> anyhow::Result<Vec<Value>> {
    args.validate()?;
    let cluster = Cluster::resolve(args).await?;
    let prefix = args.key_prefix.clone().unwrap_or_else(KeySpace::random_prefix);
    let keys = KeySpace { prefix, key_bytes: args.key_bytes };
    if !KeySpace::fits(&keys.prefix, keys.key_bytes) {
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
        let clock = RunClock::start();
        let run = Arc::new(Run {
            path: args.path,
            keys: keys.clone(),
            lease_ms: args.lease_ms,
            outcome_bytes: args.outcome_bytes,
            batch: args.batch,
            preloaded,
            next_index: new_keys.clone(),
            budget: OpBudget::new(clock.started() + args.duration, args.max_ops),
        });
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..concurrency {
            tasks.spawn(worker(run.clone(), conns.clone(), index % conns.len()));
        }
        let mut total = Tally::new();
        while let Some(joined) = tasks.join_next().await {
            total.merge(joined.context("bench worker")?);
        }
        let (elapsed, cpu) = clock.stop();
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

/// One run as JSON, with the field names of `dedupctl bench --output json` plus `system`,
/// `lease_ms` and `mean_ms`.
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
    let mut value = RunReport {
        path: args.path.name(),
        concurrency,
        connections_per_node: args.connections,
        targets,
        rate: None,
        key_bytes: args.key_bytes,
        outcome_bytes: args.outcome_bytes,
        batch: if args.path == BenchPath::BatchClaim { Some(args.batch) } else { None },
        tally,
        elapsed,
        cpu,
        raft_entries,
        preload_secs,
    }
    .to_json();
    value["system"] = json!(args.system.name());
    value["lease_ms"] = json!(args.lease_ms);
    value["mean_ms"] = json!(tally.mean_ms());
    value
}

/// The results as a table for people: the columns of `dedupctl bench` after `system`.
fn results_table(results: &[Value]) -> String {
    let mut out = table(results, &[("system", "system")]);
    for r in results {
        for field in ["errors_by_reason", "unexpected_by_answer"] {
            out.extend(breakdown_line(r, field, field));
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
