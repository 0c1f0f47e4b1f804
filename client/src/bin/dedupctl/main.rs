//! `dedupctl`: the command line of dedup-ledger. Key verbs (claim, complete, release, extend,
//! get) and cluster status, as tables for people or `--output json` for scripts.

mod admin;
mod bench;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use dedup_client::display_endpoint;
use dedup_client::parse_endpoint_list;
use dedup_client::ClaimAnswer;
use dedup_client::ClaimRequest;
use dedup_client::ClientConfig;
use dedup_client::CompleteRequest;
use dedup_client::Consistency;
use dedup_client::DedupClient;
use dedup_client::Error;
use dedup_client::ExtendRequest;
use dedup_client::GetRequest;
use dedup_client::NodeStatus;
use dedup_client::Outcome;
use dedup_client::PreviousAttempt;
use dedup_client::Record;
use dedup_client::ReleaseReason;
use dedup_client::ReleaseRequest;
use dedup_client::REQUEST_TIMEOUT_DEFAULT;
use serde_json::json;
use serde_json::Value;

/// Success; IN_PROGRESS and COMPLETED claim answers are successes too.
const EXIT_OK: u8 = 0;
/// Any error not covered below.
const EXIT_GENERIC: u8 = 1;
/// Bad command line or endpoints, or INVALID_ARGUMENT from the server (a value outside a limit).
const EXIT_USAGE: u8 = 2;
/// The ledger refused the request (FAILED_PRECONDITION: FENCED, NOT_CLAIMED, ...).
const EXIT_REJECTED: u8 = 3;
/// The cluster could not answer in time (UNAVAILABLE, TIMEOUT); `status`: no node answered.
const EXIT_UNAVAILABLE: u8 = 4;

const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

const AFTER_HELP: &str = "\
Exit codes:
  0  success (a claim answered IN_PROGRESS or COMPLETED is a success: it is printed)
  1  any other error
  2  usage: bad flags or endpoints, or INVALID_ARGUMENT from the server (KEY_TOO_LONG, ...)
  3  rejected by the ledger: FAILED_PRECONDITION (FENCED, NOT_CLAIMED, LEASE_LAPSED,
     FINGERPRINT_MISMATCH, OUTCOME_IMMUTABLE)
  4  unavailable: UNAVAILABLE (NOT_LEADER, NO_QUORUM, ...) or TIMEOUT after retries;
     `status`: no node answered

Errors go to stderr as `error: REASON: message`, whatever --output says.

Bytes (keys, payloads, checkpoints, fingerprints) are printed as UTF-8 text when they are valid
UTF-8, else as lower-case hex: a table shows `hex:0a1b...`, JSON adds a `<field>_encoding` of
\"utf8\" or \"hex\" next to the field. JSON field names are those of ledger.proto; times are raw
milliseconds (moments are ledger time).";

#[derive(Debug, Parser)]
#[command(name = "dedupctl", version, about = "Command line of dedup-ledger.", after_help = AFTER_HELP)]
struct Cli {
    /// dedupd gRPC endpoints, comma separated (HOST:PORT or http://HOST:PORT).
    #[arg(long, global = true, env = "DEDUP_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, value_name = "LIST")]
    endpoints: String,
    /// Output format of answers (errors always go to stderr as text).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Time limit of the whole command in ms, retries included [default: 15000; operator verbs
    /// such as `member add --wait` or `leader transfer`: 90000]. Also caps each single request
    /// (default 5000 ms), e.g. each node's answer in `status`.
    #[arg(long, global = true, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Claim a key (CheckAndClaim). Prints CLAIMED with the fencing token, IN_PROGRESS with the
    /// holder, or COMPLETED with the stored outcome.
    Claim {
        namespace: String,
        key: String,
        /// Who is claiming (free text).
        #[arg(long)]
        owner: String,
        /// Lease length in ms (server limits: 100 ..= 3600000).
        #[arg(long, default_value_t = 30_000)]
        lease_ms: u64,
        /// Digest of the request payload; a later claim with a different one is refused.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Id of this claim: repeating the command with the same owner and id while the claim
        /// is live returns the same CLAIMED answer. Default: a fresh random id.
        #[arg(long)]
        request_id: Option<String>,
        /// How long the record is kept after it completes or is released [default: cluster's].
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Wait up to this long (at most 30000) while someone else holds the key: answers as soon
        /// as it completes or becomes claimable, IN_PROGRESS when the wait ends.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
    /// Store the outcome of a claim (Complete).
    Complete {
        namespace: String,
        key: String,
        /// The claim's fencing token.
        #[arg(long)]
        token: u64,
        /// The outcome payload (stored as its UTF-8 bytes).
        #[arg(long)]
        outcome: String,
        /// Store a FAILED_FINAL outcome instead of SUCCEEDED.
        #[arg(long)]
        failed_final: bool,
        /// Overrides the retention given at claim time.
        #[arg(long)]
        retention_ms: Option<u64>,
    },
    /// Give a claim up so that a retry can claim the key at once (Release).
    Release {
        namespace: String,
        key: String,
        #[arg(long)]
        token: u64,
        /// How the attempt ended, for the next claimant.
        #[arg(long, value_enum, default_value_t = ReleaseArg::Retryable)]
        reason: ReleaseArg,
        /// Progress note for the next claimant.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Push the lease of a live claim forward (ExtendLease).
    Extend {
        namespace: String,
        key: String,
        #[arg(long)]
        token: u64,
        /// New lease length in ms, counted from now.
        #[arg(long)]
        lease_ms: u64,
        /// Replaces the stored checkpoint.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Read one record (Get).
    Get {
        namespace: String,
        key: String,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// Ask this node only, once (no retries, no leader redirect).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Every endpoint's view of Raft: the leader (or "no leader"/"no quorum" in words), and per
    /// node id, address, role, term, last log, committed and applied index, lag behind the
    /// leader, snapshot and purged index, data bytes, hot tier bytes and hit ratio, or the error
    /// of an unreachable node. Exits 4 if any targeted node did not answer.
    Status {
        /// Every member, from the member list, instead of --endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Cluster membership: list, add a learner, promote it to voter, remove a member.
    #[command(subcommand)]
    Member(admin::MemberVerb),
    /// Leadership: `leader transfer [--to ID]`.
    #[command(subcommand)]
    Leader(admin::LeaderVerb),
    /// Raft snapshots: `snapshot trigger [--cluster]`, and backups: `snapshot save FILE`.
    #[command(subcommand)]
    Snapshot(admin::SnapshotVerb),
    /// SHA-256 of each node's ledger at its applied index; replicas at the same index must agree.
    Hash {
        /// Every member, from the member list, instead of --endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Proves each node can serve a linearizable read (the leader confirms with a quorum, the
    /// node applies up to it) and reports the latency. Exits 4 if any node is unhealthy.
    Health {
        /// Every member, from the member list, instead of --endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Inspect and repair keys: list, forget, force-release (the last two are audited).
    #[command(subcommand)]
    Key(admin::KeyVerb),
    /// The audit trail of `key forget` and `key force-release`, oldest first.
    Audit {
        /// Entries after this position (LOG_INDEX.SLOT, as printed).
        #[arg(long)]
        after: Option<String>,
        /// Entries to print (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Namespace statistics: `namespace stats NS`.
    #[command(subcommand)]
    Namespace(admin::NamespaceVerb),
    /// Load generator against a running cluster: ops/s, errors, latency percentiles (HDR
    /// histogram), client CPU and Raft entries written, per path and concurrency. Every run is
    /// bounded by --duration and --max-ops. Example:
    /// `dedupctl bench claim-dup --target follower --concurrency 64 --duration 10s`.
    Bench(Box<bench::BenchArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReleaseArg {
    Retryable,
    EffectUnknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    AnyReplica,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version print to stdout and succeed; real usage errors exit 2.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    // The load generator needs every core; the other verbs make a handful of calls.
    let runtime = match &cli.command {
        Command::Bench(args) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads()).enable_all().build()
        }
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: RUNTIME: {error}");
            return ExitCode::from(EXIT_GENERIC);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            report(&error);
            ExitCode::from(exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let client = connect(&cli)?;
    let doc = match cli.command {
        Command::Claim { namespace, key, owner, lease_ms, fingerprint, request_id, retention_ms, wait_ms } => {
            let mut request = ClaimRequest::new(namespace, key, owner).with_lease(Duration::from_millis(lease_ms));
            request.wait = (wait_ms > 0).then(|| Duration::from_millis(wait_ms));
            request.fingerprint = fingerprint.map(String::into_bytes);
            request.claim_request_id = request_id;
            request.retention = retention_ms.map(Duration::from_millis);
            claim_doc(&client.check_and_claim(&request).await?)
        }
        Command::Complete { namespace, key, token, outcome, failed_final, retention_ms } => {
            let outcome = if failed_final { Outcome::failed_final(outcome) } else { Outcome::succeeded(outcome) };
            let mut request = CompleteRequest::new(namespace, key, token, outcome);
            request.retention = retention_ms.map(Duration::from_millis);
            let ack = client.complete(&request).await?;
            vec![
                ("completed_at_ms", Field::U64(ack.completed_at_ms)),
                ("retained_until_ms", Field::Moment { ms: ack.retained_until_ms, now_ms: ack.ledger_time_ms }),
                ("replayed", Field::Bool(ack.replayed)),
                ("late", Field::Bool(ack.late)),
                ("applied_index", Field::U64(ack.applied_index)),
                ("ledger_time_ms", Field::U64(ack.ledger_time_ms)),
            ]
        }
        Command::Release { namespace, key, token, reason, checkpoint } => {
            let reason = match reason {
                ReleaseArg::Retryable => ReleaseReason::Retryable,
                ReleaseArg::EffectUnknown => ReleaseReason::EffectUnknown,
            };
            let request = ReleaseRequest::new(namespace, key, token, reason)
                .with_checkpoint(checkpoint.unwrap_or_default().into_bytes());
            let ack = client.release(&request).await?;
            vec![
                ("retained_until_ms", Field::Moment { ms: ack.retained_until_ms, now_ms: ack.ledger_time_ms }),
                ("replayed", Field::Bool(ack.replayed)),
                ("applied_index", Field::U64(ack.applied_index)),
                ("ledger_time_ms", Field::U64(ack.ledger_time_ms)),
            ]
        }
        Command::Extend { namespace, key, token, lease_ms, checkpoint } => {
            let request = ExtendRequest::new(namespace, key, token, Duration::from_millis(lease_ms))
                .with_checkpoint(checkpoint.unwrap_or_default().into_bytes());
            let ack = client.extend_lease(&request).await?;
            vec![
                ("lease_deadline_ms", Field::Moment { ms: ack.lease_deadline_ms, now_ms: ack.ledger_time_ms }),
                ("applied_index", Field::U64(ack.applied_index)),
                ("ledger_time_ms", Field::U64(ack.ledger_time_ms)),
            ]
        }
        Command::Get { namespace, key, consistency, endpoint } => {
            let mut request = GetRequest::new(namespace, key).with_consistency(match consistency {
                ConsistencyArg::Linearizable => Consistency::Linearizable,
                ConsistencyArg::AnyReplica => Consistency::AnyReplica,
            });
            request.endpoint = endpoint;
            let answer = client.get(&request).await?;
            vec![
                ("record", answer.record.as_ref().map_or(Field::Null, record_field)),
                ("purge_horizon_ms", Field::U64(answer.purge_horizon_ms)),
                ("applied_index", Field::U64(answer.applied_index)),
                ("ledger_time_ms", Field::U64(answer.ledger_time_ms)),
            ]
        }
        Command::Bench(args) => {
            let results = bench::bench(client, &args).await?;
            match cli.output {
                OutputFormat::Json => {
                    for result in &results {
                        println!("{result}");
                    }
                }
                OutputFormat::Table => print!("{}", bench::results_table(&results)),
            }
            let failed = results.iter().any(|r| r["ops"].as_u64() == Some(0));
            return Ok(if failed { EXIT_UNAVAILABLE } else { EXIT_OK });
        }
        Command::Status { cluster } => {
            let targets = admin::targets(&client, cluster).await?;
            let results = client.status_of(&targets).await;
            let report = StatusReport::new(results);
            match cli.output {
                OutputFormat::Json => println!("{}", pretty(&report.to_json())),
                OutputFormat::Table => print!("{}", report.to_table()),
            }
            let failed = report.nodes.len() - report.answered();
            if failed > 0 {
                eprintln!("error: UNAVAILABLE: {failed} of the {} targeted node(s) did not answer", report.nodes.len());
                return Ok(EXIT_UNAVAILABLE);
            }
            return Ok(EXIT_OK);
        }
        Command::Member(verb) => return Ok(admin::member(&client, cli.output, verb).await?),
        Command::Leader(verb) => return Ok(admin::leader(&client, cli.output, verb).await?),
        Command::Snapshot(verb) => return admin::snapshot(&client, cli.output, verb).await,
        Command::Hash { cluster } => return Ok(admin::hash(&client, cli.output, cluster).await?),
        Command::Health { cluster } => return Ok(admin::health(&client, cli.output, cluster).await?),
        Command::Key(verb) => return Ok(admin::key(&client, cli.output, verb).await?),
        Command::Audit { after, limit } => return Ok(admin::audit(&client, cli.output, after, limit).await?),
        Command::Namespace(verb) => return Ok(admin::namespace(&client, cli.output, verb).await?),
    };
    match cli.output {
        OutputFormat::Json => println!("{}", pretty(&to_json(&doc))),
        OutputFormat::Table => print!("{}", to_table(&doc)),
    }
    Ok(EXIT_OK)
}

fn connect(cli: &Cli) -> Result<DedupClient, Error> {
    let endpoints = parse_endpoint_list(&cli.endpoints)?;
    let mut config = ClientConfig::new(endpoints);
    if let Some(timeout_ms) = cli.timeout_ms {
        let timeout = Duration::from_millis(timeout_ms);
        config = config
            .with_call_deadline(timeout)
            .with_request_timeout(REQUEST_TIMEOUT_DEFAULT.min(timeout))
            .with_admin_timeout(timeout);
    }
    DedupClient::with_config(config)
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

// ------------------------------------------------------------------------------------------------
// Errors

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<bench::UsageError>().is_some() {
        return EXIT_USAGE;
    }
    match error.downcast_ref::<Error>() {
        Some(error) => client_exit_code(error),
        None => EXIT_GENERIC,
    }
}

fn client_exit_code(error: &Error) -> u8 {
    match error {
        Error::InvalidArgument { .. } | Error::InvalidEndpoint { .. } => EXIT_USAGE,
        error if error.is_rejection() => EXIT_REJECTED,
        error if error.is_unavailable() => EXIT_UNAVAILABLE,
        _ => EXIT_GENERIC,
    }
}

/// `error: REASON: message`, then what the server said about the record or the leader.
fn report(error: &anyhow::Error) {
    let Some(client_error) = error.downcast_ref::<Error>() else {
        eprintln!("error: {error:#}");
        return;
    };
    for line in error_lines(client_error) {
        eprintln!("{line}");
    }
}

fn error_lines(error: &Error) -> Vec<String> {
    let mut lines = vec![format!("error: {error}")];
    if let Some(record) = error.record() {
        let mut parts = Vec::new();
        if let Some(state) = record.state {
            parts.push(format!("state={}", state.as_str_name()));
        }
        if let Some(token) = record.current_token {
            parts.push(format!("current_token={token}"));
        }
        if let Some(owner) = &record.owner {
            parts.push(format!("owner={owner:?}"));
        }
        if let Some(attempt) = record.attempt {
            parts.push(format!("attempt={attempt}"));
        }
        if let Some(deadline) = record.lease_deadline_ms {
            parts.push(format!("lease_deadline_ms={deadline}"));
        }
        lines.push(format!("  record: {}", parts.join(" ")));
    }
    if let Error::Unavailable { leader: Some(leader), .. } = error {
        let id = leader.id.map_or("?".to_string(), |id| id.to_string());
        lines.push(format!("  leader: id={id} address={}", leader.address.as_deref().unwrap_or("?")));
    }
    lines
}

// ------------------------------------------------------------------------------------------------
// Answers as documents: one description, rendered as JSON or as a two-column table

#[derive(Debug, Clone, PartialEq)]
enum Field {
    U64(u64),
    Bool(bool),
    Text(String),
    /// Printed as UTF-8 text when valid, else hex.
    Bytes(Vec<u8>),
    /// A moment in ledger time; the table adds how far it is from `now_ms` (0 = unset).
    Moment {
        ms: u64,
        now_ms: u64,
    },
    Object(Vec<(&'static str, Field)>),
    Null,
}

type Doc = Vec<(&'static str, Field)>;

/// Bytes for display: `(text, "utf8")` when valid UTF-8, else `(lower-case hex, "hex")`.
fn encode_bytes(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (bytes.iter().map(|b| format!("{b:02x}")).collect(), "hex"),
    }
}

fn to_json(doc: &[(&'static str, Field)]) -> Value {
    let mut map = serde_json::Map::new();
    for (name, field) in doc {
        match field {
            Field::Bytes(bytes) => {
                let (text, encoding) = encode_bytes(bytes);
                map.insert(name.to_string(), Value::String(text));
                map.insert(format!("{name}_encoding"), Value::String(encoding.to_string()));
            }
            field => {
                map.insert(name.to_string(), field_json(field));
            }
        }
    }
    Value::Object(map)
}

fn field_json(field: &Field) -> Value {
    match field {
        Field::U64(n) | Field::Moment { ms: n, .. } => json!(n),
        Field::Bool(b) => json!(b),
        Field::Text(s) => json!(s),
        Field::Bytes(bytes) => json!(encode_bytes(bytes).0),
        Field::Object(doc) => to_json(doc),
        Field::Null => Value::Null,
    }
}

fn to_table(doc: &[(&'static str, Field)]) -> String {
    let mut rows = Vec::new();
    flatten(doc, "", &mut rows);
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    rows.iter().map(|(name, value)| format!("{name:<width$}  {value}\n")).collect()
}

fn flatten(doc: &[(&'static str, Field)], prefix: &str, rows: &mut Vec<(String, String)>) {
    for (name, field) in doc {
        let name = format!("{prefix}{name}");
        match field {
            Field::Object(inner) => flatten(inner, &format!("{name}."), rows),
            field => rows.push((name, field_text(field))),
        }
    }
}

fn field_text(field: &Field) -> String {
    match field {
        Field::U64(n) => n.to_string(),
        Field::Bool(b) => b.to_string(),
        Field::Text(s) if s.is_empty() => "-".to_string(),
        Field::Text(s) => printable(s),
        Field::Bytes(bytes) if bytes.is_empty() => "-".to_string(),
        Field::Bytes(bytes) => match encode_bytes(bytes) {
            (text, "utf8") => printable(&text),
            (hex, _) => format!("hex:{hex}"),
        },
        Field::Moment { ms: 0, .. } => "-".to_string(),
        Field::Moment { ms, now_ms: 0 } => ms.to_string(),
        Field::Moment { ms, now_ms } => format!("{ms} ({})", relative(*ms, *now_ms)),
        Field::Object(_) => String::new(),
        Field::Null => "-".to_string(),
    }
}

/// Text with control characters escaped, so one value stays on one table line.
fn printable(text: &str) -> String {
    if text.chars().any(char::is_control) {
        format!("\"{}\"", text.escape_debug())
    } else {
        text.to_string()
    }
}

fn relative(ms: u64, now_ms: u64) -> String {
    if ms >= now_ms {
        format!("in {}", human_duration(ms - now_ms))
    } else {
        format!("{} ago", human_duration(now_ms - ms))
    }
}

/// `850 ms`, `29.9 s`, `12.5 min`, `24.0 h`, `30.0 d`.
fn human_duration(ms: u64) -> String {
    const SECOND: u64 = 1000;
    const MINUTE: u64 = 60 * SECOND;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    let scaled = |unit: u64, name: &str| format!("{:.1} {name}", ms as f64 / unit as f64);
    match ms {
        ms if ms < SECOND => format!("{ms} ms"),
        ms if ms < MINUTE => scaled(SECOND, "s"),
        ms if ms < HOUR => scaled(MINUTE, "min"),
        ms if ms < 2 * DAY => scaled(HOUR, "h"),
        _ => scaled(DAY, "d"),
    }
}

fn outcome_field(outcome: &Outcome) -> Field {
    Field::Object(vec![
        ("kind", Field::Text(outcome.kind.as_str_name().to_string())),
        ("payload", Field::Bytes(outcome.payload.clone())),
    ])
}

fn previous_field(previous: Option<&PreviousAttempt>) -> Field {
    match previous {
        None => Field::Null,
        Some(p) => Field::Object(vec![
            ("ended", Field::Text(p.ended.as_str_name().to_string())),
            ("owner", Field::Text(p.owner.clone())),
            ("token", Field::U64(p.token)),
            ("attempt", Field::U64(p.attempt.into())),
            ("checkpoint", Field::Bytes(p.checkpoint.clone())),
        ]),
    }
}

fn claim_doc(answer: &ClaimAnswer) -> Doc {
    let state = ("state", Field::Text(answer.state_name().to_string()));
    match answer {
        ClaimAnswer::Claimed(c) => vec![
            state,
            ("token", Field::U64(c.token)),
            ("lease_deadline_ms", Field::Moment { ms: c.lease_deadline_ms, now_ms: c.ledger_time_ms }),
            ("attempt", Field::U64(c.attempt.into())),
            ("reentrant", Field::Bool(c.reentrant)),
            ("previous", previous_field(c.previous.as_ref())),
            ("applied_index", Field::U64(c.applied_index)),
            ("ledger_time_ms", Field::U64(c.ledger_time_ms)),
        ],
        ClaimAnswer::InProgress(p) => vec![
            state,
            ("owner", Field::Text(p.owner.clone())),
            ("lease_deadline_ms", Field::Moment { ms: p.lease_deadline_ms, now_ms: p.ledger_time_ms }),
            ("attempt", Field::U64(p.attempt.into())),
            ("retry_after_ms", Field::U64(u64::try_from(p.retry_after.as_millis()).unwrap_or(u64::MAX))),
            ("applied_index", Field::U64(p.applied_index)),
            ("ledger_time_ms", Field::U64(p.ledger_time_ms)),
        ],
        ClaimAnswer::Completed(c) => vec![
            state,
            ("outcome", outcome_field(&c.outcome)),
            ("completed_at_ms", Field::U64(c.completed_at_ms)),
            ("token", Field::U64(c.token)),
            ("attempt", Field::U64(c.attempt.into())),
            ("retained_until_ms", Field::Moment { ms: c.retained_until_ms, now_ms: c.ledger_time_ms }),
            ("applied_index", Field::U64(c.applied_index)),
            ("ledger_time_ms", Field::U64(c.ledger_time_ms)),
        ],
    }
}

fn record_field(r: &Record) -> Field {
    let now_ms = r.ledger_time_ms;
    Field::Object(vec![
        ("namespace", Field::Text(r.namespace.clone())),
        ("key", Field::Bytes(r.key.clone())),
        ("state", Field::Text(r.state.as_str_name().to_string())),
        ("token", Field::U64(r.token)),
        ("attempt", Field::U64(r.attempt.into())),
        ("owner", Field::Text(r.owner.clone())),
        ("lease_deadline_ms", Field::Moment { ms: r.lease_deadline_ms, now_ms }),
        ("fingerprint", Field::Bytes(r.fingerprint.clone())),
        ("created_at_ms", Field::U64(r.created_at_ms)),
        ("completed_at_ms", Field::U64(r.completed_at_ms)),
        ("retained_until_ms", Field::Moment { ms: r.retained_until_ms, now_ms }),
        ("outcome", r.outcome.as_ref().map_or(Field::Null, outcome_field)),
        ("previous", previous_field(r.previous.as_ref())),
        ("checkpoint", Field::Bytes(r.checkpoint.clone())),
        ("applied_index", Field::U64(r.applied_index)),
        ("ledger_time_ms", Field::U64(r.ledger_time_ms)),
    ])
}

// ------------------------------------------------------------------------------------------------
// status

struct StatusReport {
    nodes: Vec<(String, Result<NodeStatus, Error>)>,
}

impl StatusReport {
    fn new(nodes: Vec<(String, Result<NodeStatus, Error>)>) -> StatusReport {
        StatusReport { nodes }
    }

    fn answered(&self) -> usize {
        self.nodes.iter().filter(|(_, result)| result.is_ok()).count()
    }

    fn statuses(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter_map(|(_, result)| result.as_ref().ok())
    }

    /// The leader as seen by the answering node with the highest term that knows one (a node
    /// that says it is the leader wins a tie).
    fn leader(&self) -> Option<&NodeStatus> {
        self.statuses().filter(|s| s.leader_id != 0).max_by_key(|s| (s.term, s.role == "leader"))
    }

    /// The answer of the leader node itself, when it answered.
    fn leader_node(&self) -> Option<&NodeStatus> {
        let leader_id = self.leader()?.leader_id;
        self.statuses().find(|s| s.node_id == leader_id && s.role == "leader")
    }

    /// Entries the node's applied index is behind the leader's last log index.
    fn lag(&self, status: &NodeStatus) -> Option<u64> {
        self.leader_node().map(|leader| leader.last_log_index.saturating_sub(status.applied_index))
    }

    fn members(&self) -> usize {
        self.statuses().map(|s| s.members.len()).max().unwrap_or(0)
    }

    fn summary(&self) -> String {
        match self.leader() {
            Some(view) => {
                let address = if view.leader_address.is_empty() { "?" } else { &view.leader_address };
                let mut line = format!("leader: node {} ({address}), term {}", view.leader_id, view.term);
                // openraft 0.9 keeps a cut-off leader leading: say so when no quorum answers it.
                if let Some(leader) = self.leader_node() {
                    if leader.millis_since_quorum_ack > NO_QUORUM_AFTER_MS {
                        line.push_str(&format!(
                            "; NO QUORUM: no majority has acknowledged the leader for {} ms, writes cannot commit",
                            leader.millis_since_quorum_ack
                        ));
                    }
                }
                line
            }
            None if self.answered() == 0 => {
                format!("leader: unknown: none of the {} endpoint(s) answered", self.nodes.len())
            }
            None => {
                let members = self.members().max(self.nodes.len());
                format!(
                    "leader: none known: {} of {} node(s) answered and none knows a leader; a leader needs a \
                     quorum of {} up",
                    self.answered(),
                    members,
                    members / 2 + 1
                )
            }
        }
    }

    fn to_table(&self) -> String {
        let header = [
            "ENDPOINT",
            "ID",
            "ADDRESS",
            "ROLE",
            "TERM",
            "LAST LOG",
            "COMMITTED",
            "APPLIED",
            "LAG",
            "SNAPSHOT",
            "PURGED",
            "DATA",
            "HOT TIER",
            "HIT %",
            "ERROR",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for (endpoint, result) in &self.nodes {
            let endpoint = display_endpoint(endpoint).to_string();
            rows.push(match result {
                Ok(s) => vec![
                    endpoint,
                    s.node_id.to_string(),
                    if s.address.is_empty() { "-".to_string() } else { s.address.clone() },
                    s.role.clone(),
                    s.term.to_string(),
                    s.last_log_index.to_string(),
                    s.committed_index.to_string(),
                    s.applied_index.to_string(),
                    self.lag(s).map_or("-".to_string(), |lag| lag.to_string()),
                    s.snapshot_index.to_string(),
                    s.purged_index.to_string(),
                    human_bytes(s.data_bytes),
                    format!("{}/{}", human_bytes(s.hot_tier_bytes), human_bytes(s.hot_tier_budget_bytes)),
                    hit_ratio(s).map_or("-".to_string(), |ratio| format!("{:.1}", ratio * 100.0)),
                    String::new(),
                ],
                Err(error) => {
                    let mut row = vec![endpoint];
                    row.extend(std::iter::repeat_n("-".to_string(), header.len() - 2));
                    row.push(error.to_string());
                    row
                }
            });
        }
        format!("{}\n{}", self.summary(), render_columns(&rows))
    }

    fn to_json(&self) -> Value {
        let leader = self.leader();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|(endpoint, result)| match result {
                Ok(s) => json!({
                    "endpoint": display_endpoint(endpoint),
                    "node_id": s.node_id,
                    "address": s.address,
                    "role": s.role,
                    "term": s.term,
                    "leader_id": s.leader_id,
                    "leader_address": s.leader_address,
                    "last_log_index": s.last_log_index,
                    "committed_index": s.committed_index,
                    "applied_index": s.applied_index,
                    "data_bytes": s.data_bytes,
                    "hot_tier_hit_ratio": hit_ratio(s),
                    "lag": self.lag(s),
                    "ledger_time_ms": s.ledger_time_ms,
                    "millis_since_quorum_ack": s.millis_since_quorum_ack,
                    "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index,
                    "entries_proposed": s.entries_proposed,
                    "commands_proposed": s.commands_proposed,
                    "log_flushes": s.log_flushes,
                    "hot_tier_bytes": s.hot_tier_bytes,
                    "hot_tier_budget_bytes": s.hot_tier_budget_bytes,
                    "hot_tier_entries": s.hot_tier_entries,
                    "hot_tier_hits": s.hot_tier_hits,
                    "hot_tier_misses": s.hot_tier_misses,
                    "duplicates_answered_locally": s.duplicates_answered_locally,
                    "members": s.members.iter()
                        .map(|m| json!({"node_id": m.node_id, "address": m.address}))
                        .collect::<Vec<_>>(),
                }),
                Err(error) => json!({
                    "endpoint": display_endpoint(endpoint),
                    "error": {
                        "code": dedup_client::code_name(error.code()),
                        "reason": error.reason(),
                        "message": error.to_string(),
                    },
                }),
            })
            .collect();
        json!({
            "leader_id": leader.map(|s| s.leader_id),
            "leader_address": leader.map(|s| s.leader_address.clone()),
            "term": leader.map(|s| s.term),
            "answered": self.answered(),
            "nodes": nodes,
        })
    }
}

/// A leader that no majority acknowledged for this long has lost its quorum (several election
/// timeouts; heartbeats go out every ~150 ms).
const NO_QUORUM_AFTER_MS: u64 = 3_000;

/// Hot-tier lookups that found a record, of all lookups since the node started.
fn hit_ratio(s: &NodeStatus) -> Option<f64> {
    let lookups = s.hot_tier_hits + s.hot_tier_misses;
    (lookups > 0).then(|| s.hot_tier_hits as f64 / lookups as f64)
}

/// Bytes for people: `512B`, `64.0KiB`, `1.5MiB`, `2.0GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn render_columns(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, value) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(value);
            } else {
                line.push_str(&format!("{value:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn bytes_are_shown_with_binary_units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(64 * 1024), "64.0KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5MiB");
        assert_eq!(human_bytes(5 << 30), "5.0GiB");
    }

    use dedup_client::proto;
    use dedup_client::Claimed;
    use dedup_client::Completed;
    use dedup_client::RecordHint;
    use dedup_client::RecordState;
    use tonic::Code;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dedupctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn claim_parses_with_defaults() {
        let cli = parse(&["claim", "orders", "order-42", "--owner", "worker-a"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Table);
        assert_eq!(cli.timeout_ms, None);
        let Command::Claim { namespace, key, owner, lease_ms, fingerprint, request_id, retention_ms, .. } = cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert_eq!((namespace.as_str(), key.as_str(), owner.as_str()), ("orders", "order-42", "worker-a"));
        assert_eq!(lease_ms, 30_000);
        assert_eq!((fingerprint, request_id, retention_ms), (None, None, None));
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&[
            "get",
            "orders",
            "k",
            "--output",
            "json",
            "--endpoints",
            "10.0.0.1:7101",
            "--timeout-ms",
            "900",
            "--consistency",
            "any-replica",
            "--endpoint",
            "10.0.0.2:7101",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.endpoints, "10.0.0.1:7101");
        assert_eq!(cli.timeout_ms, Some(900));
        assert!(matches!(cli.command, Command::Get { consistency: ConsistencyArg::AnyReplica, endpoint: Some(_), .. }));
        let cli = parse(&["-o", "json", "status"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
    }

    #[test]
    fn endpoints_default_to_the_local_cluster() {
        // DEDUP_ENDPOINTS may be set in the environment running the tests; only check the
        // default when it is not.
        if std::env::var_os("DEDUP_ENDPOINTS").is_none() {
            assert_eq!(parse(&["status"]).unwrap().endpoints, DEFAULT_ENDPOINTS);
        }
        let endpoints = parse_endpoint_list(DEFAULT_ENDPOINTS).unwrap();
        assert_eq!(endpoints.len(), 3);
    }

    #[test]
    fn release_and_complete_flags() {
        let cli = parse(&["release", "ns", "k", "--token", "7", "--reason", "effect-unknown", "--checkpoint", "half"])
            .unwrap();
        assert!(matches!(cli.command, Command::Release { token: 7, reason: ReleaseArg::EffectUnknown, .. }));
        let cli = parse(&["complete", "ns", "k", "--token", "7", "--outcome", "no", "--failed-final"]).unwrap();
        assert!(matches!(cli.command, Command::Complete { failed_final: true, .. }));
        let cli = parse(&["extend", "ns", "k", "--token", "7", "--lease-ms", "5000"]).unwrap();
        assert!(matches!(cli.command, Command::Extend { lease_ms: 5000, checkpoint: None, .. }));
    }

    #[test]
    fn usage_errors_are_refused_by_the_parser() {
        for args in [
            &["claim", "ns", "k"][..],                                        // --owner missing
            &["complete", "ns", "k", "--token", "x", "--outcome", "o"][..],   // token not a number
            &["release", "ns", "k", "--token", "1", "--reason", "maybe"][..], // unknown reason
            &["get", "ns", "k", "--consistency", "eventual"][..],
            &["status", "--timeout-ms", "0"][..],
            &["status", "--output", "yaml"][..],
            &["frobnicate"][..],
        ] {
            let error = parse(args).expect_err(&format!("{args:?}"));
            assert!(error.use_stderr(), "{args:?} is a usage error (exit 2)");
        }
    }

    #[test]
    fn exit_codes_follow_the_error_class() {
        let rejected = Error::Fenced { message: "old".into(), record: None };
        let invalid = Error::InvalidArgument { reason: "KEY_TOO_LONG".into(), message: "x".into() };
        let unavailable = Error::Unavailable { reason: "NO_QUORUM".into(), message: "x".into(), leader: None };
        let timeout = Error::Timeout { elapsed: Duration::from_secs(15), attempts: 3, last: None };
        let endpoint = parse_endpoint_list("nope").unwrap_err();
        let internal = Error::Other { code: Code::Internal, reason: None, message: "x".into() };
        let overloaded =
            Error::Other { code: Code::ResourceExhausted, reason: Some("OVERLOADED".into()), message: "".into() };
        let cases = [
            (rejected, EXIT_REJECTED),
            (invalid, EXIT_USAGE),
            (unavailable, EXIT_UNAVAILABLE),
            (timeout, EXIT_UNAVAILABLE),
            (endpoint, EXIT_USAGE),
            (internal, EXIT_GENERIC),
            (overloaded, EXIT_GENERIC),
        ];
        for (error, code) in cases {
            assert_eq!(exit_code(&anyhow::Error::new(error.clone())), code, "{error:?}");
        }
        assert_eq!(exit_code(&anyhow::anyhow!("something else")), EXIT_GENERIC);
    }

    #[test]
    fn an_error_prints_reason_then_the_record() {
        let error = Error::Fenced {
            message: "token 7 is older than the current token 99".into(),
            record: Some(RecordHint {
                state: Some(RecordState::Claimed),
                current_token: Some(99),
                owner: Some("worker-b".into()),
                lease_deadline_ms: Some(5000),
                attempt: None,
            }),
        };
        assert_eq!(
            error_lines(&error),
            vec![
                "error: FENCED: token 7 is older than the current token 99".to_string(),
                "  record: state=CLAIMED current_token=99 owner=\"worker-b\" lease_deadline_ms=5000".to_string(),
            ]
        );
        let invalid = Error::InvalidArgument { reason: "LEASE_OUT_OF_RANGE".into(), message: "lease is 5 ms".into() };
        assert_eq!(error_lines(&invalid), vec!["error: LEASE_OUT_OF_RANGE: lease is 5 ms".to_string()]);
    }

    #[test]
    fn bytes_are_text_when_utf8_else_hex() {
        assert_eq!(encode_bytes(b"shipped"), ("shipped".to_string(), "utf8"));
        assert_eq!(encode_bytes(&[0xff, 0x00, 0x1a]), ("ff001a".to_string(), "hex"));
        assert_eq!(field_text(&Field::Bytes(vec![0xff, 0x01])), "hex:ff01");
        assert_eq!(field_text(&Field::Bytes(b"two\nlines".to_vec())), "\"two\\nlines\"");
        assert_eq!(field_text(&Field::Bytes(vec![])), "-");
    }

    fn claimed() -> ClaimAnswer {
        ClaimAnswer::Claimed(Claimed {
            token: 1234,
            lease_deadline_ms: 1_000_030_000,
            attempt: 1,
            previous: None,
            reentrant: false,
            applied_index: 1234,
            ledger_time_ms: 1_000_000_000,
        })
    }

    #[test]
    fn claimed_json_mirrors_the_proto() {
        let json = to_json(&claim_doc(&claimed()));
        assert_eq!(
            json,
            json!({
                "state": "CLAIMED",
                "token": 1234,
                "lease_deadline_ms": 1_000_030_000u64,
                "attempt": 1,
                "reentrant": false,
                "previous": null,
                "applied_index": 1234,
                "ledger_time_ms": 1_000_000_000u64,
            })
        );
    }

    #[test]
    fn claimed_table_is_aligned_and_humanises_the_deadline() {
        let table = to_table(&claim_doc(&claimed()));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "state              CLAIMED");
        assert_eq!(lines[1], "token              1234");
        assert_eq!(lines[2], "lease_deadline_ms  1000030000 (in 30.0 s)");
        assert_eq!(lines[5], "previous           -");
    }

    #[test]
    fn completed_json_carries_the_outcome_with_its_encoding() {
        let answer = ClaimAnswer::Completed(Completed {
            outcome: Outcome::succeeded("shipped"),
            completed_at_ms: 10,
            token: 3,
            attempt: 1,
            retained_until_ms: 20,
            applied_index: 5,
            ledger_time_ms: 15,
        });
        let json = to_json(&claim_doc(&answer));
        assert_eq!(json["state"], "COMPLETED");
        assert_eq!(json["outcome"], json!({"kind": "SUCCEEDED", "payload": "shipped", "payload_encoding": "utf8"}));
        assert_eq!(json["token"], 3);
        let table = to_table(&claim_doc(&answer));
        assert!(table.contains("outcome.kind       SUCCEEDED\n"), "{table}");
        assert!(table.contains("outcome.payload    shipped\n"), "{table}");
        assert!(table.contains("retained_until_ms  20 (in 5 ms)\n"), "{table}");
    }

    #[test]
    fn durations_are_humanised_in_tables_only() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(29_900), "29.9 s");
        assert_eq!(human_duration(750_000), "12.5 min");
        assert_eq!(human_duration(86_400_000), "24.0 h");
        assert_eq!(human_duration(30 * 86_400_000), "30.0 d");
        assert_eq!(relative(1_000, 3_500), "2.5 s ago");
        let doc: Doc = vec![("lease_deadline_ms", Field::Moment { ms: 31_000, now_ms: 1_000 })];
        assert_eq!(to_json(&doc), json!({"lease_deadline_ms": 31_000}));
    }

    #[test]
    fn a_missing_record_is_null() {
        let doc: Doc = vec![("record", Field::Null), ("purge_horizon_ms", Field::U64(0))];
        assert_eq!(to_json(&doc), json!({"record": null, "purge_horizon_ms": 0}));
        assert_eq!(to_table(&doc), "record            -\npurge_horizon_ms  0\n");
    }

    fn node(id: u64, role: &str, term: u64, leader: u64, last: u64, applied: u64) -> NodeStatus {
        proto::NodeStatusResponse {
            node_id: id,
            address: format!("127.0.0.1:710{id}"),
            role: role.to_string(),
            term,
            leader_id: leader,
            leader_address: if leader == 0 { String::new() } else { format!("127.0.0.1:710{leader}") },
            last_log_index: last,
            applied_index: applied,
            members: (1..=3).map(|id| proto::Member { node_id: id, address: format!("127.0.0.1:710{id}") }).collect(),
            ..Default::default()
        }
    }

    fn unreachable() -> Error {
        Error::Unavailable { reason: "UNAVAILABLE".into(), message: "tcp connect error".into(), leader: None }
    }

    #[test]
    fn status_names_the_leader_lag_and_unreachable_nodes() {
        let report = StatusReport::new(vec![
            ("http://127.0.0.1:7101".into(), Ok(node(1, "leader", 5, 1, 120, 120))),
            ("http://127.0.0.1:7102".into(), Ok(node(2, "follower", 5, 1, 118, 117))),
            ("http://127.0.0.1:7103".into(), Err(unreachable())),
        ]);
        assert_eq!(report.answered(), 2);
        let table = report.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "leader: node 1 (127.0.0.1:7101), term 5");
        assert!(lines[1].starts_with("ENDPOINT        ID  ADDRESS         ROLE      TERM"), "{table}");
        assert!(lines[3].contains("follower") && lines[3].contains(" 3 "), "lag 3: {table}");
        assert!(lines[4].ends_with("UNAVAILABLE: tcp connect error"), "{table}");

        let json = report.to_json();
        assert_eq!(json["leader_id"], 1);
        assert_eq!(json["nodes"][0]["role"], "leader");
        assert_eq!(json["nodes"][1]["lag"], 3);
        assert_eq!(json["nodes"][2]["error"]["reason"], "UNAVAILABLE");
        assert!(pretty(&json).contains("\"role\": \"leader\""), "scripts/local-cluster.sh greps for this");
    }

    #[test]
    fn a_leader_cut_off_from_its_followers_is_reported_without_quorum() {
        let mut leader = node(1, "leader", 4, 1, 50, 50);
        leader.millis_since_quorum_ack = 7_000;
        let report = StatusReport::new(vec![
            ("http://127.0.0.1:7101".into(), Ok(leader)),
            ("http://127.0.0.1:7102".into(), Err(unreachable())),
            ("http://127.0.0.1:7103".into(), Err(unreachable())),
        ]);
        assert!(report.summary().contains("NO QUORUM") && report.summary().contains("7000 ms"), "{}", report.summary());
        let mut healthy = node(1, "leader", 4, 1, 50, 50);
        healthy.millis_since_quorum_ack = 40;
        let report = StatusReport::new(vec![("http://127.0.0.1:7101".into(), Ok(healthy))]);
        assert!(!report.summary().contains("NO QUORUM"), "{}", report.summary());
    }

    #[test]
    fn status_without_a_leader_explains_the_quorum() {
        let report = StatusReport::new(vec![
            ("http://127.0.0.1:7101".into(), Ok(node(1, "candidate", 6, 0, 120, 120))),
            ("http://127.0.0.1:7102".into(), Err(unreachable())),
            ("http://127.0.0.1:7103".into(), Err(unreachable())),
        ]);
        assert_eq!(
            report.summary(),
            "leader: none known: 1 of 3 node(s) answered and none knows a leader; a leader needs a quorum of 2 up"
        );
        assert_eq!(report.to_json()["leader_id"], Value::Null);
        let none = StatusReport::new(vec![("http://127.0.0.1:7101".into(), Err(unreachable()))]);
        assert_eq!(none.answered(), 0);
        assert_eq!(none.summary(), "leader: unknown: none of the 1 endpoint(s) answered");
    }

    #[test]
    fn a_lagging_follower_with_a_newer_term_wins_the_leader_view() {
        // Node 2 saw a newer election than node 1, which still believes it leads.
        let report = StatusReport::new(vec![
            ("a".into(), Ok(node(1, "leader", 5, 1, 10, 10))),
            ("b".into(), Ok(node(2, "follower", 6, 3, 12, 12))),
        ]);
        assert_eq!(report.leader().unwrap().leader_id, 3);
        assert!(report.leader_node().is_none(), "node 3 did not answer: no lag column");
        assert_eq!(report.lag(&node(2, "follower", 6, 3, 12, 12)), None);
    }
}
