//! Real-process fault schedule (`cluster-proc`): a bounded workload of concurrent clients on a
//! rotating hot key set plus fresh keys (claims, completes, releases, abandoned claims, late
//! completes, retried request ids, leases of 1-3 s) runs while a nemesis kills the leader, a
//! follower and all three nodes with SIGKILL and pauses the leader past every lease with SIGSTOP.
//! Then the cluster heals, every key is read back from every node, and the history checker
//! judges the whole history against DESIGN §4. The schedule must prove its faults happened.
//!
//! The seed fixes the workload's and the nemesis's choices (not the OS scheduling):
//! `DEDUP_FAULT_SEED=<seed> cargo nextest run -p dedup-tests --test faults`.
//! The history is kept under `target/tmp/` for inspection.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use dedup_checker::check;
use dedup_checker::Answer;
use dedup_checker::Call;
use dedup_checker::HistoryWriter;
use dedup_checker::ReadAnswer;
use dedup_checker::ReadState;
use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as ClaimResult;
use dedup_tests::ledger;
use dedup_tests::reason;
use dedup_tests::Cluster;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use tonic::Code;

const NAMESPACE: &str = "faults";
const CLIENTS: u64 = 6;
/// Upper bound of operations per client, whatever the time.
const OPS_PER_CLIENT_MAX: u64 = 400;
const WORKLOAD_DURATION: Duration = Duration::from_secs(26);
const HOT_KEYS: u64 = 2;
/// The hot key set changes this often, so keys keep being contended after they complete.
const HOT_KEY_EPOCH: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const LEASE_MS_MAX: u64 = 3_000;

type History = Arc<HistoryWriter<Vec<u8>>>;

#[derive(Default)]
struct Counters {
    takeovers: AtomicU64,
    fenced: AtomicU64,
    late_completes: AtomicU64,
    acknowledged_completes: AtomicU64,
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

async fn run_client(process: u64, endpoints: Vec<String>, history: History, counters: Arc<Counters>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (process * 0x9e37_79b9));
    let started = Instant::now();
    let owner = format!("client-{process}");
    for n in 0..OPS_PER_CLIENT_MAX {
        if started.elapsed() >= WORKLOAD_DURATION {
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

/// The faults, in order, each followed by recovery. Returns how many leader changes it saw.
async fn nemesis(cluster: &mut Cluster, rng: &mut StdRng) -> u64 {
    let mut leader_changes = 0;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. SIGKILL the leader; a new one takes over; the old one restarts with its data.
    let leader = cluster.wait_for_leader(None).await;
    eprintln!("nemesis: kill -9 leader {leader}");
    cluster.kill_node(leader);
    let next = cluster.wait_for_leader(Some(leader)).await;
    leader_changes += u64::from(next != leader);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
    cluster.start_node(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. SIGKILL a follower while writes go on; restart it.
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    eprintln!("nemesis: kill -9 follower {follower}");
    cluster.kill_node(follower);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2500))).await;
    cluster.start_node(follower);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. SIGSTOP the leader past every lease, then SIGCONT: it comes back deposed.
    let leader = cluster.wait_for_leader(None).await;
    eprintln!("nemesis: SIGSTOP leader {leader} for {} ms", LEASE_MS_MAX + 1_500);
    cluster.pause_node(leader);
    let next = cluster.wait_for_leader(Some(leader)).await;
    leader_changes += u64::from(next != leader);
    tokio::time::sleep(Duration::from_millis(LEASE_MS_MAX + 1_500)).await;
    cluster.resume_node(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. SIGKILL all three, restart all three. openraft 0.9 lets a restarted leader keep its
    //    committed term, so this need not change the leader.
    let leader = cluster.wait_for_leader(None).await;
    let term = cluster.status(leader).await.map(|s| s.term).unwrap_or(0);
    eprintln!("nemesis: kill -9 all nodes");
    for id in 1..=3 {
        cluster.kill_node(id);
    }
    tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1000))).await;
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let next = cluster.wait_for_leader(None).await;
    let next_term = cluster.status(next).await.map(|s| s.term).unwrap_or(0);
    leader_changes += u64::from(next != leader || next_term > term);
    leader_changes
}

/// Reads every key from every node once all nodes applied the same index.
async fn read_back(cluster: &mut Cluster, history: &History) -> usize {
    let leader = cluster.wait_for_leader(None).await;
    cluster.wait_until_all_follow(leader).await;
    let target = cluster.status(leader).await.unwrap().applied_index;
    for id in 1..=3 {
        cluster.wait_applied(id, target, Duration::from_secs(30)).await;
    }
    let keys: BTreeSet<String> = history.events().unwrap().into_iter().map(|e| e.key).collect();
    for key in &keys {
        for id in 1..=3u64 {
            let op = history.invoke(100 + id, NAMESPACE, key, Call::final_read());
            let request = pb::GetRequest {
                namespace: NAMESPACE.into(),
                key: key.as_bytes().to_vec(),
                consistency: pb::Consistency::AnyReplica as i32,
            };
            let read = call(ledger(&cluster.endpoint(id)).await.get(request)).await.expect("final read");
            let (state, token, outcome) = match read.record {
                None => (ReadState::None, None, None),
                Some(record) => {
                    let state = match pb::RecordState::try_from(record.state) {
                        Ok(pb::RecordState::Claimed) => ReadState::Claimed,
                        Ok(pb::RecordState::Completed) => ReadState::Completed,
                        Ok(pb::RecordState::Available) => ReadState::Available,
                        _ => panic!("unknown record state {}", record.state),
                    };
                    let outcome = record.outcome.map(|o| String::from_utf8_lossy(&o.payload).into_owned());
                    (state, Some(record.token), outcome)
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
                }),
            );
        }
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_pauses_keep_the_safety_rules() {
    let seed = std::env::var("DEDUP_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("fault schedule seed {seed}: replay with DEDUP_FAULT_SEED={seed} cargo nextest run -p dedup-tests --test faults");
    let mut cluster = Cluster::start().await;
    let endpoints = cluster.endpoints();
    let history: History = Arc::new(HistoryWriter::in_memory());
    let counters = Arc::new(Counters::default());
    let term_before = cluster.status(1).await.unwrap().term;

    let clients: Vec<_> = (1..=CLIENTS)
        .map(|process| tokio::spawn(run_client(process, endpoints.clone(), history.clone(), counters.clone(), seed)))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let leader_changes = nemesis(&mut cluster, &mut rng).await;
    for client in clients {
        client.await.expect("client task");
    }
    let keys = read_back(&mut cluster, &history).await;
    let term_after = cluster.status(1).await.unwrap().term;

    let history_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{seed}.jsonl"));
    std::fs::write(&history_path, history.json_lines()).expect("keep the history");
    let report = check(&history.events().expect("history parses"));
    let takeovers = counters.takeovers.load(Ordering::Relaxed);
    let fenced = counters.fenced.load(Ordering::Relaxed);
    eprintln!(
        "{keys} keys; leader changes {leader_changes} (term {term_before} -> {term_after}); takeovers {takeovers}; \
         FENCED {fenced}; late completes {}; acknowledged completes {}\n{}\nhistory: {}",
        counters.late_completes.load(Ordering::Relaxed),
        counters.acknowledged_completes.load(Ordering::Relaxed),
        report.summary(),
        history_path.display()
    );
    assert!(report.is_valid(), "safety violated (seed {seed}, history {}):\n{report}", history_path.display());

    // The schedule proves its faults happened.
    // Killing and pausing the leader each force a new leader in a new term.
    assert!(leader_changes >= 2 && term_after >= term_before + 2, "too few leader changes");
    assert!(takeovers >= 1, "no claim was taken over after a lapsed lease");
    assert!(fenced >= 1, "no stale token was fenced");
    assert!(report.stats.final_reads >= 3 * keys, "every key was read back from every node");
}
