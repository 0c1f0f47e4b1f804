//! `store-crash-child`: the process that `tests/store_crash.rs` kills with SIGKILL.
//!
//! It starts a one-node cluster (`dedup_cluster::node::start`) on `--data-dir`, with snapshots
//! every few entries so that snapshot builds and log purges run all the time. Then:
//!
//! 1. It waits until the node leads and has applied everything in its log
//!    (`ensure_linearizable`), and checks every acknowledged write listed in `--verify` through
//!    the state machine's reader. Any missing or different record: exit code 3.
//! 2. It prints `ready verified=<n> applied=<i> last_log=<i> snapshot=<i> purged=<i> term=<t>
//!    startup_ms=<ms>` (from Raft metrics; `-` for none).
//! 3. It writes keys `--first-key`, +1, ... with `--in-flight` workers: a Claim, then a Complete
//!    with outcome `outcome-<key>` under the granted token, and after each acknowledged Complete
//!    prints `ack <key> <token> <outcome> <log index of the complete>` and flushes stdout.
//!
//! It never stops on its own before `--max-keys` keys or `--max-seconds`; the parent kills it.
//! Exit codes: 2 setup or storage failure, 3 verification failure, 74 Raft stopped (fatal
//! storage error), 101 panic anywhere (a panic hook turns task panics into process exits).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use dedup_cluster::clock::SystemClock;
use dedup_cluster::ledger::Answer;
use dedup_cluster::ledger::ClaimCommand;
use dedup_cluster::ledger::ClaimOutcome;
use dedup_cluster::ledger::Command;
use dedup_cluster::ledger::CompleteCommand;
use dedup_cluster::ledger::Outcome;
use dedup_cluster::ledger::OutcomeKind;
use dedup_cluster::ledger::RecordKey;
use dedup_cluster::ledger::RecordState;
use dedup_cluster::node::ClusterNode;
use dedup_cluster::node::NodeConfig;
use dedup_cluster::node::RaftTiming;
use dedup_cluster::proposer::ProposeError;

const NODE_ID: u64 = 1;
const NAMESPACE: &str = "store-crash";
const OWNER: &str = "store-crash-child";
const LEASE_MS: u64 = 60_000;
/// How long startup (open, re-apply, election) may take before the child gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_SETUP: u8 = 2;
const EXIT_VERIFY: u8 = 3;
const EXIT_RAFT_STOPPED: i32 = 74;
const EXIT_PANIC: i32 = 101;

/// Set before an orderly Raft shutdown, after which a stopped Raft is expected.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

struct Args {
    data_dir: PathBuf,
    first_key: u64,
    verify: Option<PathBuf>,
    max_keys: u64,
    max_seconds: u64,
    in_flight: usize,
    snapshot_logs: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        data_dir: PathBuf::new(),
        first_key: 0,
        verify: None,
        max_keys: 100_000,
        max_seconds: 60,
        in_flight: 8,
        snapshot_logs: 20,
    };
    let mut data_dir = None;
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().with_context(|| format!("{flag} {value}: not a number"));
        match flag.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(&value)),
            "--first-key" => args.first_key = number()?,
            "--verify" => args.verify = Some(PathBuf::from(&value)),
            "--max-keys" => args.max_keys = number()?,
            "--max-seconds" => args.max_seconds = number()?,
            "--in-flight" => args.in_flight = number()?.max(1) as usize,
            "--snapshot-logs" => args.snapshot_logs = number()?.max(1),
            other => bail!("unknown argument {other}"),
        }
    }
    args.data_dir = data_dir.context("--data-dir is required")?;
    Ok(args)
}

fn record_key(index: u64) -> RecordKey {
    RecordKey::new(NAMESPACE, format!("k{index:010}"))
}

/// One `ack` line: a write the child reported durable.
struct Acked {
    key: u64,
    token: u64,
    outcome: String,
    log_index: u64,
}

fn parse_acks(text: &str) -> anyhow::Result<Vec<Acked>> {
    let mut acks = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            ["ack", key, token, outcome, log_index] => acks.push(Acked {
                key: key.parse().with_context(|| format!("line {}: {line}", number + 1))?,
                token: token.parse().with_context(|| format!("line {}: {line}", number + 1))?,
                outcome: outcome.to_string(),
                log_index: log_index.parse().with_context(|| format!("line {}: {line}", number + 1))?,
            }),
            _ => bail!("verify file line {}: unexpected {line:?}", number + 1),
        }
    }
    Ok(acks)
}

fn index_text(index: Option<u64>) -> String {
    index.map_or_else(|| "-".to_string(), |i| i.to_string())
}

fn main() -> ExitCode {
    // A panic in any task (RaftCore, the flusher, a worker) must end the process visibly, not
    // leave a hung child: the default hook prints it, then we exit.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(EXIT_PANIC);
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(std::env::var("DEDUP_LOG").unwrap_or_else(|_| "warn".to_string()))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(error) = dedup_cluster::bug_zoo::select_from_env() {
        eprintln!("store-crash-child: {error}");
        return ExitCode::from(EXIT_SETUP);
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("store-crash-child: {error:#}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("store-crash-child: tokio runtime: {error}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Verify(message)) => {
            eprintln!("store-crash-child: VERIFY FAILED: {message}");
            ExitCode::from(EXIT_VERIFY)
        }
        Err(Failure::Other(error)) => {
            eprintln!("store-crash-child: {error:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

enum Failure {
    Verify(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::Other(error)
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let started = Instant::now();
    // No peer is ever dialled in a one-node cluster; the address only has to be well formed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("finding an unused port")?;
    let config = NodeConfig {
        node_id: NODE_ID,
        peers: BTreeMap::from([(NODE_ID, format!("127.0.0.1:{port}"))]),
        data_dir: args.data_dir.clone(),
        timing: RaftTiming { snapshot_logs_since_last: args.snapshot_logs, ..Default::default() },
        dial: Default::default(),
        join: false,
    };
    let node = dedup_cluster::node::start(config, Arc::new(SystemClock::default()), None)
        .await
        .with_context(|| format!("starting the node on {}", args.data_dir.display()))?;
    watch_for_fatal(&node);

    // Leadership, then a linearizable barrier: once it returns, everything in the log (which is
    // where every acknowledged write lives) is applied.
    node.raft
        .wait(Some(STARTUP_TIMEOUT))
        .metrics(|m| m.current_leader == Some(NODE_ID), "this node leads")
        .await
        .map_err(|e| anyhow::anyhow!("no leadership within {STARTUP_TIMEOUT:?}: {e}"))?;
    let read_log_id = tokio::time::timeout(STARTUP_TIMEOUT, node.raft.ensure_linearizable())
        .await
        .map_err(|_| anyhow::anyhow!("ensure_linearizable did not return within {STARTUP_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("ensure_linearizable: {e}"))?;
    let applied = node.reader.applied();
    let metrics = node.raft.metrics().borrow().clone();

    let verified = match &args.verify {
        Some(path) => verify(&node, path, read_log_id.map(|id| id.index), &metrics)?,
        None => 0,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "ready verified={verified} applied={} last_log={} snapshot={} purged={} term={} startup_ms={}",
        applied.log_index,
        index_text(metrics.last_log_index),
        index_text(metrics.snapshot.map(|id| id.index)),
        index_text(metrics.purged.map(|id| id.index)),
        metrics.current_term,
        started.elapsed().as_millis()
    )
    .and_then(|()| stdout.flush())
    .context("writing to stdout")?;
    drop(stdout);

    write_keys(&node, &args).await?;
    // Only reached with --max-keys or --max-seconds: an orderly stop, which must not look fatal.
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    node.raft.shutdown().await.map_err(|e| anyhow::anyhow!("shutting Raft down: {e}"))?;
    println!("done");
    Ok(())
}

/// Exits the process if Raft stops on its own (a fatal storage error), as `dedupd` does.
fn watch_for_fatal(node: &ClusterNode) {
    let mut metrics = node.raft.metrics();
    tokio::spawn(async move {
        loop {
            let fatal = metrics.borrow().running_state.clone().err();
            if let Some(fatal) = fatal {
                if SHUTTING_DOWN.load(Ordering::SeqCst) {
                    return;
                }
                eprintln!("store-crash-child: Raft stopped: {fatal}");
                std::process::exit(EXIT_RAFT_STOPPED);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

fn verify(
    node: &ClusterNode,
    path: &std::path::Path,
    read_index: Option<u64>,
    metrics: &dedup_cluster::raft_types::RaftMetrics,
) -> Result<usize, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(anyhow::anyhow!("reading {}: {error}", path.display()).into()),
    };
    let acks = parse_acks(&text)?;
    let applied = node.reader.applied();
    let context = || {
        format!(
            "(applied index {}, read index {}, last log {}, snapshot {}, purged {}, vote {})",
            applied.log_index,
            index_text(read_index),
            index_text(metrics.last_log_index),
            index_text(metrics.snapshot.map(|id| id.index)),
            index_text(metrics.purged.map(|id| id.index)),
            metrics.vote
        )
    };
    let mut problems = Vec::new();
    if let Some(highest) = acks.iter().map(|a| a.log_index).max() {
        if applied.log_index < highest {
            problems.push(format!(
                "the node applied only up to index {} but a write was acknowledged at index {highest}",
                applied.log_index
            ));
        }
    }
    for ack in &acks {
        let key = record_key(ack.key);
        let problem = match node.reader.record(&key) {
            Err(error) => Some(format!("{key}: unreadable: {error}")),
            Ok(None) => Some(format!(
                "{key}: MISSING (acknowledged: token {} outcome {} at log index {})",
                ack.token, ack.outcome, ack.log_index
            )),
            Ok(Some(record)) => {
                let expected = Outcome { kind: OutcomeKind::Succeeded, payload: ack.outcome.as_bytes().to_vec() };
                let outcome_matches =
                    matches!(&record.state, RecordState::Completed { outcome, .. } if *outcome == expected);
                if record.token.0 != ack.token || !outcome_matches {
                    Some(format!(
                        "{key}: DIFFERENT: acknowledged token {} outcome {} at log index {}, stored {record:?}",
                        ack.token, ack.outcome, ack.log_index
                    ))
                } else {
                    None
                }
            }
        };
        problems.extend(problem);
    }
    if problems.is_empty() {
        return Ok(acks.len());
    }
    let shown: Vec<&String> = problems.iter().take(20).collect();
    Err(Failure::Verify(format!(
        "{} of {} acknowledged writes are wrong {}:\n  {}",
        problems.len(),
        acks.len(),
        context(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
    )))
}

async fn write_keys(node: &ClusterNode, args: &Args) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(args.first_key));
    let end = args.first_key.saturating_add(args.max_keys);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_seconds);
    let workers: Vec<_> = (0..args.in_flight)
        .map(|_| {
            let next = next.clone();
            let proposer = node.proposer.clone();
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= end || tokio::time::Instant::now() >= deadline {
                        return anyhow::Ok(());
                    }
                    write_key(&proposer, index).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.context("a writer task failed")??;
    }
    Ok(())
}

/// Claims and completes one key; prints the `ack` line once the Complete is applied. A commit
/// timeout leaves the key unacknowledged (its outcome is unknown) and moves on.
async fn write_key(proposer: &dedup_cluster::proposer::Proposer, index: u64) -> anyhow::Result<()> {
    let key = record_key(index);
    let claim = Command::Claim(ClaimCommand {
        key: key.clone(),
        owner: OWNER.to_string(),
        lease_ms: LEASE_MS,
        fingerprint: None,
        request_id: None,
        retention_ms: None,
    });
    let claimed = match proposer.propose(claim).await {
        Ok(applied) => applied,
        Err(error @ (ProposeError::Timeout { .. } | ProposeError::Overloaded)) => {
            eprintln!("store-crash-child: claim of {key} not acknowledged: {error}");
            return Ok(());
        }
        Err(error) => bail!("claim of {key}: {error}"),
    };
    let token = match claimed.result {
        Ok(Answer::Claim(ClaimOutcome::Claimed { token, reentrant: false, .. })) => token,
        other => bail!("claim of fresh key {key} at index {} answered {other:?}", claimed.log_index),
    };
    let outcome = format!("outcome-{index}");
    let complete = Command::Complete(CompleteCommand {
        key: key.clone(),
        token,
        outcome: Outcome { kind: OutcomeKind::Succeeded, payload: outcome.clone().into_bytes() },
        retention_ms: None,
    });
    let completed = match proposer.propose(complete).await {
        Ok(applied) => applied,
        Err(error @ (ProposeError::Timeout { .. } | ProposeError::Overloaded)) => {
            eprintln!("store-crash-child: complete of {key} not acknowledged: {error}");
            return Ok(());
        }
        Err(error) => bail!("complete of {key}: {error}"),
    };
    match completed.result {
        Ok(Answer::Complete(ack)) if !ack.replayed => {}
        other => bail!("complete of {key} with token {token} at index {} answered {other:?}", completed.log_index),
    }
    // One write per line under the lock: a line is whole in the pipe or absent.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ack {index} {} {outcome} {}", token.0, completed.log_index)
        .and_then(|()| stdout.flush())
        .context("writing to stdout (parent gone?)")
}
