//! Operator verbs of `dedupctl`: members, leadership, snapshots, state hash, health, key
//! inspection and repair, audit trail and namespace stats (the `dedup.v1.Admin` service).
//!
//! Verbs that act on one node per row (`hash`, `health`, `snapshot trigger`) ask every
//! `--endpoints` entry, or every member with `--cluster`; they exit non-zero if any targeted node
//! failed. Verbs that change the cluster go to the leader.

use clap::Subcommand;
use clap::ValueEnum;
use dedup_client::display_endpoint;
use dedup_client::proto as pb;
use dedup_client::DedupClient;
use dedup_client::Error;
use dedup_client::Record;
use serde_json::json;

type AdminClient = pb::admin_client::AdminClient<tonic::transport::Channel>;
use serde_json::Value;

use super::pretty;
use super::record_field;
use super::render_columns;
use super::to_json;
use super::to_table;
use super::Field;
use super::OutputFormat;
use super::EXIT_OK;
use super::EXIT_UNAVAILABLE;

#[derive(Debug, Subcommand)]
pub enum MemberVerb {
    /// Voters and learners, the leader, and (from the leader) how far each has replicated.
    List,
    /// Add a node as a learner and print the `dedupd` flags it needs. Start it with them, then
    /// `member promote` it.
    Add {
        node_id: u64,
        /// HOST:PORT the new node serves gRPC on, as the other nodes reach it.
        address: String,
        /// Wait until the learner has received the log (at most 60 s).
        #[arg(long)]
        wait: bool,
    },
    /// Make a learner a voter (refused while it is more than 1000 entries behind).
    Promote { node_id: u64 },
    /// Remove a member. Refused if the remaining voters that answer could not form a quorum,
    /// unless --force. Stop the node afterwards; it does not stop by itself.
    Remove {
        node_id: u64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LeaderVerb {
    /// Hand leadership to another voter (the most caught-up one unless --to). Writes pause for
    /// about an election timeout; clients retry them at the new leader.
    Transfer {
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotVerb {
    /// Build a Raft snapshot now on each targeted node (and purge the log behind it).
    Trigger {
        /// Every member, from the member list, instead of --endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Back the ledger up to FILE: on the first --endpoints node, wait until it applied every
    /// write acknowledged so far (a linearizable read), build a snapshot and download it. The
    /// file holds every write acknowledged before the save began. Restore a cluster from it
    /// with `dedupd restore` (docs/deploy.md).
    Save {
        /// Where to write the snapshot (written beside it, then renamed over it).
        file: std::path::PathBuf,
        /// Download the node's current snapshot as it is, without the read and the new build
        /// (a node without a quorum can still hand out its last snapshot).
        #[arg(long)]
        no_trigger: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Claimed,
    Completed,
    Available,
}

#[derive(Debug, Subcommand)]
pub enum KeyVerb {
    /// Records of a namespace in key order, a page at a time (read from one node).
    List {
        namespace: String,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only keys starting with this text.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Records per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this page token (printed at the end of the previous page).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Remove a key's record whatever its state, so that the next claim runs the action again.
    /// Recorded in the audit trail.
    Forget {
        namespace: String,
        key: String,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: String,
        /// Who [default: $USER].
        #[arg(long)]
        operator: Option<String>,
    },
    /// Turn a CLAIMED record AVAILABLE now, fencing its holder's token; the next claimant is told
    /// the previous attempt was FORCE_RELEASED. Recorded in the audit trail.
    ForceRelease {
        namespace: String,
        key: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceVerb {
    /// Records by state, stored bytes, the oldest live claim and the purge lag.
    Stats { namespace: String },
}

fn operator_name(given: Option<String>) -> String {
    given.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "dedupctl".to_string())
}

fn print_doc(output: OutputFormat, doc: &[(&'static str, Field)]) {
    match output {
        OutputFormat::Json => println!("{}", pretty(&to_json(doc))),
        OutputFormat::Table => print!("{}", to_table(doc)),
    }
}

fn print_rows(
    output: OutputFormat,
    header: &[&str],
    rows: Vec<Vec<String>>,
    json_value: Value,
    footer: Option<String>,
) {
    match output {
        OutputFormat::Json => println!("{}", pretty(&json_value)),
        OutputFormat::Table => {
            let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            all.extend(rows);
            print!("{}", render_columns(&all));
            if let Some(footer) = footer {
                println!("{footer}");
            }
        }
    }
}

fn error_json(error: &Error) -> Value {
    json!({
        "code": dedup_client::code_name(error.code()),
        "reason": error.reason(),
        "message": error.to_string(),
    })
}

/// The endpoints a per-node verb targets: `--endpoints`, or with `cluster` every member's
/// address from the member list of the first node that answers.
pub async fn targets(client: &DedupClient, cluster: bool) -> Result<Vec<String>, Error> {
    if !cluster {
        return Ok(client.endpoints());
    }
    let mut last = None;
    for endpoint in client.endpoints() {
        match client
            .admin_at(&endpoint, pb::MemberListRequest {}, |mut c, r| async move { c.member_list(r).await })
            .await
        {
            Ok(list) => return Ok(list.members.into_iter().map(|m| m.address).collect()),
            Err(error) => last = Some(error),
        }
    }
    Err(last.map_or_else(
        || Error::Other { code: tonic::Code::Unavailable, reason: None, message: "no endpoints".to_string() },
        |error| Error::Other {
            code: error.code(),
            reason: Some("NO_MEMBER_LIST".to_string()),
            message: format!("--cluster: could not read the member list from any endpoint (last: {error})"),
        },
    ))
}

/// Calls `rpc` on every target concurrently; results in target order.
async fn fan_out<Req, Resp, F, Fut>(
    client: &DedupClient,
    targets: &[String],
    message: Req,
    rpc: F,
) -> Vec<(String, Result<Resp, Error>)>
where
    Req: Clone,
    F: Fn(pb::admin_client::AdminClient<tonic::transport::Channel>, tonic::Request<Req>) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let calls = targets.iter().map(|target| {
        let rpc = rpc.clone();
        let message = message.clone();
        async move { (target.clone(), client.admin_at(target, message, rpc).await) }
    });
    futures_join_all(calls).await
}

/// Runs the futures concurrently on this task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_some() {
                continue;
            }
            match future.as_mut().poll(cx) {
                std::task::Poll::Ready(value) => *output = Some(value),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// One table row and one JSON object per targeted node: `cells` and `fields` render an answer;
/// a node that failed gets dashes and its error.
fn per_node<T>(
    results: &[(String, Result<T, Error>)],
    columns: usize,
    cells: impl Fn(&T) -> Vec<String>,
    fields: impl Fn(&T) -> Value,
) -> (Vec<Vec<String>>, Value) {
    let mut rows = Vec::with_capacity(results.len());
    let mut values = Vec::with_capacity(results.len());
    for (endpoint, result) in results {
        let endpoint = display_endpoint(endpoint).to_string();
        match result {
            Ok(answer) => {
                let mut row = vec![endpoint.clone()];
                row.extend(cells(answer));
                row.push(String::new());
                rows.push(row);
                let mut value = fields(answer);
                value["endpoint"] = json!(endpoint);
                values.push(value);
            }
            Err(error) => {
                let mut row = vec![endpoint.clone()];
                row.extend(std::iter::repeat_n("-".to_string(), columns.saturating_sub(2)));
                row.push(error.to_string());
                rows.push(row);
                values.push(json!({"endpoint": endpoint, "error": error_json(error)}));
            }
        }
    }
    (rows, Value::Array(values))
}

fn any_failed<T>(results: &[(String, Result<T, Error>)]) -> u8 {
    let failed: Vec<&Error> = results.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    for ((endpoint, _), error) in results.iter().filter(|(_, r)| r.is_err()).zip(&failed) {
        eprintln!("error: {}: {}: {error}", display_endpoint(endpoint), error.reason());
    }
    if failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_UNAVAILABLE
    }
}

fn members_rows(list: &pb::MemberListResponse) -> (Vec<Vec<String>>, Value) {
    let rows = list
        .members
        .iter()
        .map(|m| {
            vec![
                m.node_id.to_string(),
                m.address.clone(),
                m.kind.clone(),
                if m.is_leader { "yes" } else { "" }.to_string(),
                if list.leader_id == list.node_id { m.matched_index.to_string() } else { "-".to_string() },
            ]
        })
        .collect();
    let value = json!({
        "answered_by": list.node_id,
        "leader_id": list.leader_id,
        "membership_log_index": list.membership_log_index,
        "joint": list.joint,
        "members": list.members.iter().map(|m| json!({
            "node_id": m.node_id, "address": m.address, "kind": m.kind,
            "is_leader": m.is_leader, "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    });
    (rows, value)
}

const MEMBER_HEADER: [&str; 5] = ["ID", "ADDRESS", "KIND", "LEADER", "MATCHED"];

fn print_membership(output: OutputFormat, change: &pb::MemberChangeResponse, what: String) {
    let list = change.membership.clone().unwrap_or_default();
    let (rows, mut value) = members_rows(&list);
    value["change"] = json!(what);
    value["log_index"] = json!(change.log_index);
    value["dedupd_flags"] = json!(change.dedupd_flags);
    if output == OutputFormat::Table {
        println!("{what} (log index {})", change.log_index);
    }
    print_rows(output, &MEMBER_HEADER, rows, value, None);
    if output == OutputFormat::Table && !change.dedupd_flags.is_empty() {
        println!("\nStart the new node with:\n  dedupd {}", change.dedupd_flags.join(" "));
        let id = change.dedupd_flags.iter().find_map(|f| f.strip_prefix("--node-id=")).unwrap_or("<ID>");
        println!("then, once it has caught up: dedupctl member promote {id}");
    }
}

pub async fn member(client: &DedupClient, output: OutputFormat, verb: MemberVerb) -> Result<u8, Error> {
    match verb {
        MemberVerb::List => {
            let rpc = |mut c: AdminClient, r| async move { c.member_list(r).await };
            let mut list = client.admin_at_leader(pb::MemberListRequest {}, rpc).await?;
            // Any member answers the list; only the leader knows how far each one replicated.
            if list.leader_id != 0 && list.leader_id != list.node_id {
                let leader = list.members.iter().find(|m| m.node_id == list.leader_id).map(|m| m.address.clone());
                if let Some(Ok(view)) = match leader {
                    Some(address) => Some(client.admin_at(&address, pb::MemberListRequest {}, rpc).await),
                    None => None,
                } {
                    list = view;
                }
            }
            let (rows, value) = members_rows(&list);
            let footer = (list.leader_id == 0).then(|| "no leader known: MATCHED is unknown".to_string());
            print_rows(output, &MEMBER_HEADER, rows, value, footer);
        }
        MemberVerb::Add { node_id, address, wait } => {
            let request = pb::MemberAddRequest { node_id, address: address.clone(), wait_caught_up: wait };
            let change = client.admin_at_leader(request, |mut c, r| async move { c.member_add(r).await }).await?;
            print_membership(output, &change, format!("added node {node_id} ({address}) as a learner"));
        }
        MemberVerb::Promote { node_id } => {
            let request = pb::MemberPromoteRequest { node_id };
            let change = client.admin_at_leader(request, |mut c, r| async move { c.member_promote(r).await }).await?;
            print_membership(output, &change, format!("node {node_id} is now a voter"));
        }
        MemberVerb::Remove { node_id, force } => {
            let request = pb::MemberRemoveRequest { node_id, force };
            let change = client.admin_at_leader(request, |mut c, r| async move { c.member_remove(r).await }).await?;
            print_membership(output, &change, format!("removed node {node_id}; stop its dedupd now"));
        }
    }
    Ok(EXIT_OK)
}

pub async fn leader(client: &DedupClient, output: OutputFormat, verb: LeaderVerb) -> Result<u8, Error> {
    let LeaderVerb::Transfer { to } = verb;
    let request = pb::LeaderTransferRequest { to_node_id: to.unwrap_or(0) };
    let done = client.admin_at_leader(request, |mut c, r| async move { c.leader_transfer(r).await }).await?;
    match output {
        OutputFormat::Json => println!(
            "{}",
            pretty(&json!({
                "from_node_id": done.from_node_id, "to_node_id": done.to_node_id,
                "term": done.term, "elapsed_ms": done.elapsed_ms,
            }))
        ),
        OutputFormat::Table => println!(
            "leadership transferred from node {} to node {} (term {}) in {} ms",
            done.from_node_id, done.to_node_id, done.term, done.elapsed_ms
        ),
    }
    Ok(EXIT_OK)
}

pub async fn snapshot(client: &DedupClient, output: OutputFormat, verb: SnapshotVerb) -> anyhow::Result<u8> {
    let cluster = match verb {
        SnapshotVerb::Trigger { cluster } => cluster,
        SnapshotVerb::Save { file, no_trigger } => return snapshot_save(client, output, &file, no_trigger).await,
    };
    let targets = targets(client, cluster).await?;
    let results =
        fan_out(client, &targets, pb::SnapshotTriggerRequest {}, |mut c, r| async move { c.snapshot_trigger(r).await })
            .await;
    let header = ["ENDPOINT", "ID", "SNAPSHOT", "PURGED", "TOOK MS", "ERROR"];
    let (rows, value) = per_node(
        &results,
        header.len(),
        |s| {
            vec![
                s.node_id.to_string(),
                s.snapshot_index.to_string(),
                s.purged_index.to_string(),
                s.elapsed_ms.to_string(),
            ]
        },
        |s| {
            json!({"node_id": s.node_id, "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                "elapsed_ms": s.elapsed_ms})
        },
    );
    print_rows(output, &header, rows, value, None);
    Ok(any_failed(&results))
}

/// `snapshot save`: see [`SnapshotVerb::Save`].
async fn snapshot_save(
    client: &DedupClient,
    output: OutputFormat,
    file: &std::path::Path,
    no_trigger: bool,
) -> anyhow::Result<u8> {
    use anyhow::Context;
    use sha2::Digest;
    use std::io::Write;

    let endpoint = client.endpoints().into_iter().next().context("no --endpoints given")?;
    if !no_trigger {
        // Applied up to the commit index of a moment after the save began, then a snapshot of
        // at least that: every write acknowledged before the save is in the file.
        client.admin_at(&endpoint, pb::HealthRequest {}, |mut c, r| async move { c.health(r).await }).await?;
        client
            .admin_at(&endpoint, pb::SnapshotTriggerRequest {}, |mut c, r| async move { c.snapshot_trigger(r).await })
            .await?;
    }
    let mut chunks = client
        .admin_at(&endpoint, pb::SnapshotDownloadRequest {}, |mut c, r| async move { c.snapshot_download(r).await })
        .await?;
    let first = chunks.message().await.map_err(|s| Error::from_status(&s))?;
    let info = first.and_then(|chunk| chunk.info).context("the node sent no snapshot description")?;
    let partial = file.with_extension(format!("partial.{}", std::process::id()));
    let mut out = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let received = async {
        let mut hasher = sha2::Sha256::new();
        let mut written: u64 = 0;
        loop {
            let chunk = chunks
                .message()
                .await
                .map_err(|s| Error::from_status(&s))?
                .context("the download ended before the file's checksum: the copy is incomplete")?;
            if !chunk.sha256.is_empty() {
                let sha256 = hex_encode(&hasher.finalize());
                anyhow::ensure!(
                    written == info.size_bytes && sha256 == chunk.sha256,
                    "the copy does not match the node's file: {written} of {} bytes, sha256 {sha256} vs {}",
                    info.size_bytes,
                    chunk.sha256
                );
                return anyhow::Ok(sha256);
            }
            hasher.update(&chunk.data);
            written += chunk.data.len() as u64;
            out.write_all(&chunk.data).with_context(|| format!("writing {}", partial.display()))?;
        }
    }
    .await;
    let finished = received.and_then(|sha256| {
        out.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
        std::fs::rename(&partial, file).with_context(|| format!("renaming to {}", file.display()))?;
        Ok(sha256)
    });
    let sha256 = match finished {
        Ok(sha256) => sha256,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    match output {
        OutputFormat::Json => println!(
            "{}",
            pretty(&json!({
                "file": file.display().to_string(), "node_id": info.node_id, "endpoint": display_endpoint(&endpoint),
                "snapshot_index": info.snapshot_index, "snapshot_term": info.snapshot_term,
                "size_bytes": info.size_bytes, "sha256": sha256, "voter_ids": info.voter_ids,
            }))
        ),
        OutputFormat::Table => println!(
            "saved node {}'s snapshot (the ledger after entry {}, term {}; voters {:?}) to {}: {} bytes, sha256 {sha256}",
            info.node_id,
            info.snapshot_index,
            info.snapshot_term,
            info.voter_ids,
            file.display(),
            info.size_bytes
        ),
    }
    Ok(EXIT_OK)
}

pub async fn hash(client: &DedupClient, output: OutputFormat, cluster: bool) -> Result<u8, Error> {
    let targets = targets(client, cluster).await?;
    let results =
        fan_out(client, &targets, pb::StateHashRequest {}, |mut c, r| async move { c.state_hash(r).await }).await;
    let answers: Vec<&pb::StateHashResponse> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let footer = match answers.first() {
        None => None,
        Some(first) if answers.iter().all(|a| a.applied_index == first.applied_index) => {
            if answers.iter().all(|a| a.sha256 == first.sha256) {
                Some(format!("{} node(s) agree at applied index {}", answers.len(), first.applied_index))
            } else {
                Some(format!("DIVERGED: nodes at the same applied index {} hold different state", first.applied_index))
            }
        }
        Some(_) => Some("applied indexes differ: compare again when writes pause".to_string()),
    };
    let header = ["ENDPOINT", "ID", "APPLIED", "PAIRS", "SHA256", "ERROR"];
    let (rows, nodes) = per_node(
        &results,
        header.len(),
        |h| vec![h.node_id.to_string(), h.applied_index.to_string(), h.pairs.to_string(), h.sha256.clone()],
        |h| json!({"node_id": h.node_id, "applied_index": h.applied_index, "pairs": h.pairs, "sha256": h.sha256}),
    );
    let value = json!({"nodes": nodes, "summary": footer});
    print_rows(output, &header, rows, value, footer.clone());
    let diverged = footer.is_some_and(|f| f.starts_with("DIVERGED"));
    if diverged {
        eprintln!("error: DIVERGED: replicas at the same applied index hold different state");
        return Ok(super::EXIT_GENERIC);
    }
    Ok(any_failed(&results))
}

pub async fn health(client: &DedupClient, output: OutputFormat, cluster: bool) -> Result<u8, Error> {
    let targets = targets(client, cluster).await?;
    let results = fan_out(client, &targets, pb::HealthRequest {}, |mut c, r| async move { c.health(r).await }).await;
    let header = ["ENDPOINT", "HEALTH", "ID", "LEADER", "READ INDEX", "TOOK MS", "ERROR"];
    let (mut rows, mut value) = per_node(
        &results,
        header.len(),
        |h| {
            vec![
                "healthy".to_string(),
                h.node_id.to_string(),
                h.leader_id.to_string(),
                h.read_index.to_string(),
                format!("{:.3}", h.latency_us as f64 / 1000.0),
            ]
        },
        |h| {
            json!({"healthy": true, "node_id": h.node_id, "leader_id": h.leader_id, "read_index": h.read_index,
                "latency_us": h.latency_us})
        },
    );
    // A node that failed is unhealthy, in both forms.
    for (row, (_, result)) in rows.iter_mut().zip(&results) {
        if result.is_err() {
            row[1] = "UNHEALTHY".to_string();
        }
    }
    if let Value::Array(nodes) = &mut value {
        for node in nodes.iter_mut().filter(|n| n.get("error").is_some()) {
            node["healthy"] = json!(false);
        }
    }
    print_rows(output, &header, rows, value, None);
    Ok(any_failed(&results))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn audit_doc(entry: &pb::AuditEntry) -> Vec<(&'static str, Field)> {
    vec![
        ("log_index", Field::U64(entry.log_index)),
        ("slot", Field::U64(entry.slot.into())),
        ("at_ms", Field::U64(entry.at_ms)),
        ("action", Field::Text(entry.action.clone())),
        ("namespace", Field::Text(entry.namespace.clone())),
        ("key", Field::Bytes(entry.key.clone())),
        ("reason", Field::Text(entry.reason.clone())),
        ("operator", Field::Text(entry.operator.clone())),
        ("previous", entry.previous.clone().map_or(Field::Null, |view| record_field(&Record::from(view)))),
    ]
}

pub async fn key(client: &DedupClient, output: OutputFormat, verb: KeyVerb) -> Result<u8, Error> {
    match verb {
        KeyVerb::List { namespace, state, prefix, limit, page_token } => {
            let page_token = match page_token {
                None => Vec::new(),
                Some(token) => hex_decode(&token).ok_or_else(|| Error::InvalidArgument {
                    reason: "PAGE_TOKEN_INVALID".to_string(),
                    message: format!("--page-token {token:?} is not the hex token a previous page printed"),
                })?,
            };
            let state = match state {
                None => pb::RecordState::Unspecified,
                Some(StateArg::Claimed) => pb::RecordState::Claimed,
                Some(StateArg::Completed) => pb::RecordState::Completed,
                Some(StateArg::Available) => pb::RecordState::Available,
            };
            let request = pb::KeyListRequest {
                namespace,
                key_prefix: prefix.into_bytes(),
                state: state as i32,
                page_token,
                limit,
            };
            let endpoint = client.preferred_endpoint();
            let page = client.admin_at(&endpoint, request, |mut c, r| async move { c.key_list(r).await }).await?;
            let next = (!page.next_page_token.is_empty()).then(|| hex_encode(&page.next_page_token));
            let records: Vec<Record> = page.records.into_iter().map(Record::from).collect();
            match output {
                OutputFormat::Json => {
                    let records: Vec<Value> = records
                        .iter()
                        .map(|r| match record_field(r) {
                            Field::Object(doc) => to_json(&doc),
                            _ => Value::Null,
                        })
                        .collect();
                    println!(
                        "{}",
                        pretty(
                            &json!({"records": records, "next_page_token": next, "applied_index": page.applied_index})
                        )
                    );
                }
                OutputFormat::Table => {
                    let mut rows =
                        vec![["KEY", "STATE", "TOKEN", "ATTEMPT", "OWNER", "CREATED MS"].map(String::from).to_vec()];
                    for r in &records {
                        rows.push(vec![
                            super::field_text(&Field::Bytes(r.key.clone())),
                            r.state.as_str_name().to_string(),
                            r.token.to_string(),
                            r.attempt.to_string(),
                            r.owner.clone(),
                            r.created_at_ms.to_string(),
                        ]);
                    }
                    print!("{}", render_columns(&rows));
                    println!("{} record(s) at applied index {}", records.len(), page.applied_index);
                    if let Some(next) = next {
                        println!("more: --page-token {next}");
                    }
                }
            }
        }
        KeyVerb::Forget { namespace, key, reason, operator } => {
            let request =
                pb::KeyOperatorRequest { namespace, key: key.into_bytes(), reason, operator: operator_name(operator) };
            let answer = client.admin_at_leader(request, |mut c, r| async move { c.key_forget(r).await }).await?;
            print_doc(output, &audit_doc(&answer.audit.unwrap_or_default()));
        }
        KeyVerb::ForceRelease { namespace, key, reason, operator } => {
            let request =
                pb::KeyOperatorRequest { namespace, key: key.into_bytes(), reason, operator: operator_name(operator) };
            let answer =
                client.admin_at_leader(request, |mut c, r| async move { c.key_force_release(r).await }).await?;
            print_doc(output, &audit_doc(&answer.audit.unwrap_or_default()));
        }
    }
    Ok(EXIT_OK)
}

pub async fn audit(client: &DedupClient, output: OutputFormat, after: Option<String>, limit: u32) -> Result<u8, Error> {
    let (after_log_index, after_slot) = match after.as_deref() {
        None => (0, 0),
        Some(text) => {
            let parsed = text
                .split_once('.')
                .and_then(|(index, slot)| Some((index.parse::<u64>().ok()?, slot.parse::<u32>().ok()?)));
            parsed.ok_or_else(|| Error::InvalidArgument {
                reason: "AFTER_INVALID".to_string(),
                message: format!("--after {text:?} is not LOG_INDEX.SLOT (as the audit list prints them)"),
            })?
        }
    };
    let request = pb::AuditListRequest { after_log_index, after_slot, limit };
    let endpoint = client.preferred_endpoint();
    let list = client.admin_at(&endpoint, request, |mut c, r| async move { c.audit_list(r).await }).await?;
    match output {
        OutputFormat::Json => {
            let entries: Vec<Value> = list.entries.iter().map(|e| to_json(&audit_doc(e))).collect();
            println!("{}", pretty(&json!({"entries": entries, "applied_index": list.applied_index})));
        }
        OutputFormat::Table => {
            let mut rows =
                vec![["AT", "ACTION", "NAMESPACE", "KEY", "OPERATOR", "REASON", "WAS"].map(String::from).to_vec()];
            for e in &list.entries {
                let was = e.previous.as_ref().map_or("-".to_string(), |p| {
                    format!(
                        "{} token {}",
                        pb::RecordState::try_from(p.state).unwrap_or_default().as_str_name(),
                        p.token
                    )
                });
                rows.push(vec![
                    format!("{}.{}", e.log_index, e.slot),
                    e.action.clone(),
                    e.namespace.clone(),
                    super::field_text(&Field::Bytes(e.key.clone())),
                    e.operator.clone(),
                    e.reason.clone(),
                    was,
                ]);
            }
            print!("{}", render_columns(&rows));
            println!(
                "{} entr{} at applied index {}",
                list.entries.len(),
                if list.entries.len() == 1 { "y" } else { "ies" },
                list.applied_index
            );
        }
    }
    Ok(EXIT_OK)
}

pub async fn namespace(client: &DedupClient, output: OutputFormat, verb: NamespaceVerb) -> Result<u8, Error> {
    let NamespaceVerb::Stats { namespace } = verb;
    let endpoint = client.preferred_endpoint();
    let stats =
        client
            .admin_at(&endpoint, pb::NamespaceStatsRequest { namespace }, |mut c, r| async move {
                c.namespace_stats(r).await
            })
            .await?;
    let now_ms = stats.ledger_time_ms;
    print_doc(
        output,
        &[
            ("namespace", Field::Text(stats.namespace.clone())),
            ("claimed", Field::U64(stats.claimed)),
            ("completed", Field::U64(stats.completed)),
            ("available", Field::U64(stats.available)),
            ("record_bytes", Field::U64(stats.record_bytes)),
            (
                "oldest_live_claim_created_at_ms",
                if stats.oldest_live_claim_created_at_ms == 0 {
                    Field::Null
                } else {
                    Field::Moment { ms: stats.oldest_live_claim_created_at_ms, now_ms }
                },
            ),
            ("scanned_all", Field::Bool(stats.scanned_all)),
            ("purge_horizon_ms", Field::Moment { ms: stats.purge_horizon_ms, now_ms }),
            ("purge_lag_ms", Field::U64(stats.purge_lag_ms)),
            ("applied_index", Field::U64(stats.applied_index)),
            ("ledger_time_ms", Field::U64(now_ms)),
        ],
    );
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_node_gets_a_row_of_dashes_with_its_error_and_an_error_object() {
        let results: Vec<(String, Result<u64, Error>)> = vec![
            ("http://127.0.0.1:7101".to_string(), Ok(7)),
            (
                "http://127.0.0.1:7102".to_string(),
                Err(Error::Other { code: tonic::Code::Unavailable, reason: None, message: "refused".to_string() }),
            ),
        ];
        let (rows, value) = per_node(&results, 4, |n| vec![n.to_string(), "x".to_string()], |n| json!({"n": n}));
        assert_eq!(rows[0], vec!["127.0.0.1:7101", "7", "x", ""]);
        assert_eq!(rows[1][..3], ["127.0.0.1:7102", "-", "-"]);
        assert!(rows[1][3].contains("refused"), "{:?}", rows[1]);
        assert_eq!(value[0], json!({"n": 7, "endpoint": "127.0.0.1:7101"}));
        assert_eq!(value[1]["error"]["code"], "UNAVAILABLE");
        assert_eq!(any_failed(&results), EXIT_UNAVAILABLE);
    }

    #[test]
    fn page_tokens_round_trip_as_hex() {
        let token = vec![0x72, 0x06, 0xff, 0x00];
        assert_eq!(hex_decode(&hex_encode(&token)), Some(token));
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("abc"), None);
    }
}
