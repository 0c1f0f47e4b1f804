//! The workload of the real-process fault schedules (`tests/tests/faults.rs`): concurrent
//! clients on a rotating hot key set plus fresh keys (claims with request ids, completes,
//! releases, abandoned claims and their retries, late and zombie completes, extends, leases of
//! 1-3 s), every call recorded in a dedup-checker history, and the final read-back of every key
//! from every node. Bounded: every client stops at `OPS_PER_CLIENT_MAX` operations, at
//! `WORKLOAD_DURATION_MAX`, or when told to stop, whichever comes first.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use dedup_checker::Answer;
use dedup_checker::Call;
use dedup_checker::HistoryWriter;
use dedup_checker::ReadAnswer;
use dedup_checker::ReadState;
use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as ClaimResult;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use tonic::Code;

use crate::ledger;
use crate::reason;
use crate::Cluster;

pub const NAMESPACE: &str = "faults";
pub const CLIENTS: u64 = 6;
/// Upper bound of operations per client, whatever the time.
const OPS_PER_CLIENT_MAX: u64 = 400;
/// Upper bound of a workload's duration, whatever the nemesis does.
pub const WORKLOAD_DURATION_MAX: Duration = Duration::from_secs(60);
const HOT_KEYS: u64 = 2;
/// The hot key set changes this often, so keys keep being contended after they complete.
const HOT_KEY_EPOCH: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest lease the workload takes: a pause longer than this outlives every lease.
pub const LEASE_MS_MAX: u64 = 3_000;

pub type History = Arc<HistoryWriter<Vec<u8>>>;

/// What the workload saw, to prove its faults had effects.
#[derive(Default)]
pub struct Counters {
    pub takeovers: AtomicU64,
    pub fenced: AtomicU64,
    pub late_completes: AtomicU64,
    pub acknowledged_completes: AtomicU64,
    /// Set to end the workload early (each client finishes its current operation).
    pub stop: AtomicBool,
}

fn payload_text(outcome: Option<pb::Outcome>) -> String {
    String::from_utf8_lossy(&outcome.map(|o| o.payload).unwrap_or_default()).into_owned()
}

/// Records the end of `op` from a call result: definite rejections are `fail`, everything that
/// might have been applied (timeouts, lost connections, no quorum) is `info`.
fn record_error(history: &History, op: u64, status: &tonic::Status, counters: &Counters) {
    match status.code() {
        Code::FailedPrecondition | Code::InvalidArgument => {
            let reason = reason(status);
            if reason == "FENCED" {
                counters.fenced.fetch_add(1, Ordering::Relaxed);
            }
            history.fail(op, reason);
        }
        _ => history.info(op, format!("{}: {}", status.code(), status.message())),
    }
}

async fn call<T>(
    future: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("client-side timeout")),
    }
}

/// One client of the workload, seeded by `seed` and its `process` number.
pub async fn run_client(process: u64, endpoints: Vec<String>, history: History, counters: Arc<Counters>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (process * 0x9e37_79b9));
    let started = Instant::now();
    let owner = format!("client-{process}");
    for n in 0..OPS_PER_CLIENT_MAX {
        if started.elapsed() >= WORKLOAD_DURATION_MAX || counters.stop.load(Ordering::Relaxed) {
            break;
        }
        let key = if rng.gen_bool(0.8) {
            let epoch = started.elapsed().as_millis() / HOT_KEY_EPOCH.as_millis();
            format!("hot-{epoch}-{}", rng.gen_range(0..HOT_KEYS))
        } else {
            format!("fresh-{process}-{n}")
        };
        let endpoint = &endpoints[rng.gen_range(0..endpoints.len())];
        let lease_ms = rng.gen_range(1_000..=LEASE_MS_MAX);
        let token = claim(process, endpoint, &key, &owner, lease_ms, n, &history, &counters).await;
        let Some((token, _deadline)) = token else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..150))).await;
            continue;
        };
        let endpoint = &endpoints[rng.gen_range(0..endpoints.len())];
        match rng.gen_range(0..100) {
            // Abandon the claim: its lease lapses and someone takes the key over. Half the time that
            // someone is another worker of this client, retrying once the lease has lapsed.
            0..=19 => {
                if rng.gen_bool(0.5) {
                    tokio::time::sleep(Duration::from_millis(lease_ms + 200)).await;
                    let retry_owner = format!("{owner}-retry");
                    let retried =
                        claim(process, endpoint, &key, &retry_owner, 2_000, n + 1_000_000, &history, &counters).await;
                    if let Some((token, _)) = retried {
                        complete(process, endpoint, &key, token, &history, &counters).await;
                    }
                }
            }
            // Release it for a retry.
            20..=34 => release(process, endpoint, &key, token, &history, &counters).await,
            // Work past the lease, then complete: late, or FENCED if someone took over.
            35..=49 => {
                tokio::time::sleep(Duration::from_millis(lease_ms + rng.gen_range(100..600))).await;
                complete(process, endpoint, &key, token, &history, &counters).await;
            }
            // Extend, then complete.
            50..=64 => {
                extend(process, endpoint, &key, token, &history, &counters).await;
                complete(process, endpoint, &key, token, &history, &counters).await;
            }
            // Complete after a short action.
            _ => {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
                complete(process, endpoint, &key, token, &history, &counters).await;
            }
        }
    }
}

/// Claims `key`; on a takeover, also sends the previous holder's zombie complete with its old
/// token (it must be FENCED). Returns the granted token and deadline.
#[allow(clippy::too_many_arguments)]
async fn claim(
    process: u64,
    endpoint: &str,
    key: &str,
    owner: &str,
    lease_ms: u64,
    n: u64,
    history: &History,
    counters: &Counters,
) -> Option<(u64, u64)> {
    let request_id = format!("{owner}-{n}");
    let request = pb::CheckAndClaimRequest {
        namespace: NAMESPACE.into(),
        key: key.as_bytes().to_vec(),
        owner: owner.to_string(),
        lease_ms,
        claim_request_id: request_id.clone(),
        ..Default::default()
    };
    let op = history.invoke(process, NAMESPACE, key, Call::claim_with_id(owner.to_string(), lease_ms, request_id));
    match call(ledger(endpoint).await.check_and_claim(request)).await {
        Ok(answer) => match answer.result {
            Some(ClaimResult::Claimed(c)) => {
                history.ok(op, Answer::claimed(c.token, c.lease_deadline_ms, c.attempt, answer.ledger_time_ms));
                let lapsed = c.previous.as_ref().filter(|p| p.ended == pb::PreviousEnd::LeaseLapsed as i32);
                if let Some(previous) = lapsed {
                    counters.takeovers.fetch_add(1, Ordering::Relaxed);
                    // A zombie: the previous holder's late complete, with its old token.
                    complete(process, endpoint, key, previous.token, history, counters).await;
                }
                Some((c.token, c.lease_deadline_ms))
            }
            Some(ClaimResult::InProgress(p)) => {
                history.ok(op, Answer::in_progress(p.owner, p.lease_deadline_ms, Some(answer.ledger_time_ms)));
                None
            }
            Some(ClaimResult::Completed(c)) => {
                let outcome = payload_text(c.outcome);
                history.ok(
                    op,
                    Answer::already_completed(c.token, outcome, c.completed_at_ms, Some(answer.ledger_time_ms)),
                );
                None
            }
            None => {
                history.info(op, "empty answer");
                None
            }
        },
        Err(status) => {
            record_error(history, op, &status, counters);
            None
        }
    }
}

async fn complete(process: u64, endpoint: &str, key: &str, token: u64, history: &History, counters: &Counters) {
    let outcome = format!("done-by-{process}-token-{token}");
    let op = history.invoke(process, NAMESPACE, key, Call::complete(token, outcome.clone()));
    let request = pb::CompleteRequest {
        namespace: NAMESPACE.into(),
        key: key.as_bytes().to_vec(),
        token,
        outcome: Some(pb::Outcome { kind: pb::OutcomeKind::Succeeded as i32, payload: outcome.into_bytes() }),
        retention_ms: 0,
    };
    match call(ledger(endpoint).await.complete(request)).await {
        Ok(done) => {
            counters.acknowledged_completes.fetch_add(1, Ordering::Relaxed);
            if done.late {
                counters.late_completes.fetch_add(1, Ordering::Relaxed);
            }
            history.ok(
                op,
                Answer::Complete {
                    completed_at_ms: done.completed_at_ms,
                    replayed: done.replayed,
                    late: done.late,
                    ledger_time_ms: done.ledger_time_ms,
                },
            );
        }
        Err(status) => record_error(history, op, &status, counters),
    }
}

async fn release(process: u64, endpoint: &str, key: &str, token: u64, history: &History, counters: &Counters) {
    let op = history.invoke(process, NAMESPACE, key, Call::release(token));
    let request = pb::ReleaseRequest {
        namespace: NAMESPACE.into(),
        key: key.as_bytes().to_vec(),
        token,
        reason: pb::ReleaseReason::Retryable as i32,
        checkpoint: vec![],
    };
    match call(ledger(endpoint).await.release(request)).await {
        Ok(done) => history.ok(op, Answer::Release { ledger_time_ms: done.ledger_time_ms, replayed: done.replayed }),
        Err(status) => record_error(history, op, &status, counters),
    }
}

async fn extend(process: u64, endpoint: &str, key: &str, token: u64, history: &History, counters: &Counters) {
    let lease_ms = 2_000;
    let op = history.invoke(process, NAMESPACE, key, Call::extend(token, lease_ms));
    let request = pb::ExtendLeaseRequest {
        namespace: NAMESPACE.into(),
        key: key.as_bytes().to_vec(),
        token,
        lease_ms,
        checkpoint: vec![],
    };
    match call(ledger(endpoint).await.extend_lease(request)).await {
        Ok(done) => history.ok(op, Answer::extended(done.lease_deadline_ms, done.ledger_time_ms)),
        Err(status) => record_error(history, op, &status, counters),
    }
}

/// Reads every key from every running node once they all applied the same index, as final
/// reads. Returns how many keys it read.
pub async fn read_back(cluster: &mut Cluster, history: &History) -> usize {
    let leader = cluster.wait_for_leader(None).await;
    cluster.wait_until_all_follow(leader).await;
    let target = cluster.status(leader).await.unwrap().applied_index;
    let running: Vec<u64> = (1..=3).filter(|id| cluster.is_running(*id)).collect();
    for id in &running {
        cluster.wait_applied(*id, target, Duration::from_secs(30)).await;
    }
    let nodes: Vec<(u64, String)> = running.iter().map(|id| (*id, cluster.endpoint(*id))).collect();
    read_back_from(&nodes, history).await
}

/// The reads of [`read_back`] from `nodes` (`(id, HOST:PORT)`), which the caller has already
/// brought to one applied index (e.g. the container suite, whose nodes are not a [`Cluster`]).
/// Returns how many keys it read.
pub async fn read_back_from(nodes: &[(u64, String)], history: &History) -> usize {
    let keys: BTreeSet<String> = history.events().unwrap().into_iter().map(|e| e.key).collect();
    for key in &keys {
        for (id, endpoint) in nodes {
            let id = *id;
            let op = history.invoke(100 + id, NAMESPACE, key, Call::final_read());
            let request = pb::GetRequest {
                namespace: NAMESPACE.into(),
                key: key.as_bytes().to_vec(),
                consistency: pb::Consistency::AnyReplica as i32,
            };
            let read = call(ledger(endpoint).await.get(request)).await.expect("final read");
            let (state, token, outcome, digest) = match read.record {
                None => (ReadState::None, None, None, None),
                Some(record) => {
                    let state = match pb::RecordState::try_from(record.state) {
                        Ok(pb::RecordState::Claimed) => ReadState::Claimed,
                        Ok(pb::RecordState::Completed) => ReadState::Completed,
                        Ok(pb::RecordState::Available) => ReadState::Available,
                        _ => panic!("unknown record state {}", record.state),
                    };
                    let digest = record_digest(&record);
                    let outcome = record.outcome.map(|o| String::from_utf8_lossy(&o.payload).into_owned());
                    (state, Some(record.token), outcome, Some(digest))
                }
            };
            history.ok(
                op,
                Answer::Read(ReadAnswer {
                    node: id,
                    state,
                    token,
                    outcome,
                    applied_index: read.applied_index,
                    is_final: true,
                    ledger_time_ms: Some(read.ledger_time_ms),
                    digest,
                }),
            );
        }
    }
    keys.len()
}

/// A digest of every stored field of a record (not the answering node's applied index and
/// ledger time): replicas at one applied index must agree on it.
fn record_digest(record: &pb::RecordView) -> String {
    use prost::Message;
    use std::hash::Hasher;
    let stored = pb::RecordView { applied_index: 0, ledger_time_ms: 0, ..record.clone() };
    // SipHash with fixed keys: the same bytes give the same digest in every run.
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(&stored.encode_to_vec());
    format!("{:016x}", hasher.finish())
}
