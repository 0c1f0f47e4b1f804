//! Simulated clients: each sends one command at a time through a node's `Proposer` (the path
//! every gRPC write takes) and records it in the dedup-checker history.
//!
//! Keys: a small hot set that changes every few seconds (contention, takeovers, duplicates of
//! completed keys) plus fresh keys. Per claim: complete, release, abandon (the lease lapses and
//! someone takes over), work past the lease then complete (late, or FENCED after a takeover),
//! extend then complete; a takeover also sends the previous holder's zombie complete with its old
//! token. Leases are 1-3 s. A follower answers NOT_LEADER with a hint; the client retries on
//! the leader. A separate namespace with 1 s retention exercises purging; it is not recorded in
//! the history (the checker assumes no purge during a run) but is part of the replica digests.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use dedup_checker::Answer as Observed;
use dedup_checker::Call;
use dedup_checker::HistoryWriter;
use dedup_cluster::ledger::Answer;
use dedup_cluster::ledger::ClaimCommand;
use dedup_cluster::ledger::ClaimOutcome;
use dedup_cluster::ledger::Command;
use dedup_cluster::ledger::CompleteCommand;
use dedup_cluster::ledger::ExtendLeaseCommand;
use dedup_cluster::ledger::FencingToken;
use dedup_cluster::ledger::Outcome;
use dedup_cluster::ledger::OutcomeKind;
use dedup_cluster::ledger::PreviousEnd;
use dedup_cluster::ledger::RecordKey;
use dedup_cluster::ledger::ReleaseCommand;
use dedup_cluster::ledger::ReleaseReason;
use dedup_cluster::proposer::Applied;
use dedup_cluster::proposer::ProposeError;
use dedup_cluster::raft_types::NodeId;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::cluster::SimCluster;

/// The namespace the checker judges.
pub const NAMESPACE: &str = "sim";
/// Short-retention records that purging removes during the run; not in the history.
pub const PURGE_NAMESPACE: &str = "sim-purge";
/// A client gives up on one call after this long (its outcome is then unknown).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const LEASE_MS_MIN: u64 = 1_000;
const LEASE_MS_MAX: u64 = 3_000;
const HOT_KEY_EPOCH_MS: u128 = 4_000;
/// Sends of one operation (the first plus retries after NOT_LEADER or an unknown outcome).
const SENDS_MAX: usize = 4;

pub type History = HistoryWriter<Vec<u8>>;

/// What the clients saw, for the run's coverage figures.
#[derive(Debug, Default)]
pub struct Counters {
    pub ops: AtomicU64,
    pub takeovers: AtomicU64,
    pub fenced: AtomicU64,
    pub late_completes: AtomicU64,
    pub acked_completes: AtomicU64,
    pub not_leader: AtomicU64,
    pub unknown: AtomicU64,
    pub purge_ops: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The result of one operation after its retries.
// `Applied` holds an `Answer`, which an operator command's ack (it carries a whole record)
// makes large; one short-lived value per operation, so boxing it buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Exec {
    Done(Applied),
    Rejected,
    Unknown,
}

/// Shared by the clients of a run.
pub struct Workload {
    pub cluster: Arc<SimCluster>,
    pub history: Arc<History>,
    pub counters: Counters,
    pub hot_keys: u64,
    /// Armed by the nemesis: the next client that proposes a complete tells it where.
    pub complete_hook: Mutex<Option<oneshot::Sender<NodeId>>>,
    pub origin: Instant,
}

fn key_of(namespace: &str, key: &str) -> RecordKey {
    RecordKey::new(namespace, key.as_bytes().to_vec())
}

fn observed(answer: &Answer, applied: &Applied) -> Observed {
    let time = applied.ledger_time.as_ms();
    match answer {
        Answer::Claim(ClaimOutcome::Claimed { token, lease_deadline, attempt, .. }) => {
            Observed::claimed(token.0, lease_deadline.as_ms(), *attempt, time)
        }
        Answer::Claim(ClaimOutcome::InProgress { owner, lease_deadline, .. }) => {
            Observed::in_progress(owner.clone(), lease_deadline.as_ms(), Some(time))
        }
        Answer::Claim(ClaimOutcome::Completed { outcome, completed_at, token, .. }) => Observed::already_completed(
            token.0,
            String::from_utf8_lossy(&outcome.payload).into_owned(),
            completed_at.as_ms(),
            Some(time),
        ),
        Answer::Complete(ack) => Observed::Complete {
            completed_at_ms: ack.completed_at.as_ms(),
            replayed: ack.replayed,
            late: ack.late,
            ledger_time_ms: time,
        },
        Answer::Release(ack) => Observed::Release { ledger_time_ms: time, replayed: ack.replayed },
        Answer::ExtendLease(ack) => Observed::extended(ack.lease_deadline.as_ms(), time),
        Answer::Forgotten(_) | Answer::ForceReleased(_) => {
            unreachable!("the simulation's clients send no operator commands")
        }
    }
}

/// One client: one operation in flight, its own seeded choices.
pub struct Client {
    pub process: u64,
    pub rng: StdRng,
    /// The node this client believes leads.
    target: Option<NodeId>,
    owner: String,
    workload: Arc<Workload>,
    /// Why the last send was not answered (for failure reports).
    pub last_error: Option<String>,
}

impl Client {
    pub fn new(process: u64, rng: StdRng, workload: Arc<Workload>) -> Client {
        Client { process, rng, target: None, owner: format!("client-{process}"), workload, last_error: None }
    }

    fn pick_target(&mut self) -> Option<NodeId> {
        let running = self.workload.cluster.running();
        if let Some(target) = self.target.filter(|t| running.contains(t)) {
            return Some(target);
        }
        if running.is_empty() {
            return None;
        }
        let target = running[self.rng.gen_range(0..running.len())];
        self.target = Some(target);
        Some(target)
    }

    async fn pause(&mut self, min_ms: u64, max_ms: u64) {
        let ms = self.rng.gen_range(min_ms..=max_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Sends `command` (recorded as `call` when `record`) until it is answered, proven not
    /// applied by a state-machine rejection, or `SENDS_MAX` sends were made.
    pub async fn execute(&mut self, key: &str, call: Call, command: Command, record: bool) -> Exec {
        let workload = self.workload.clone();
        let namespace = command.key().namespace.clone();
        let mut result = Exec::Unknown;
        for _ in 0..SENDS_MAX {
            let Some(target) = self.pick_target() else {
                self.pause(50, 200).await;
                continue;
            };
            let Some(node) = workload.cluster.node(target) else {
                self.target = None;
                continue;
            };
            let op = record.then(|| workload.history.invoke(self.process, &namespace, key, call.clone()));
            if matches!(command, Command::Complete(_)) {
                let hook = workload.complete_hook.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(hook) = hook {
                    let _ = hook.send(target);
                }
            }
            bump(if record { &workload.counters.ops } else { &workload.counters.purge_ops });
            let answer = tokio::time::timeout(CALL_TIMEOUT, node.proposer.propose(command.clone())).await;
            drop(node);
            match answer {
                Ok(Ok(applied)) => match &applied.result {
                    Ok(answer) => {
                        if let Some(op) = op {
                            workload.history.ok(op, observed(answer, &applied));
                        }
                        return Exec::Done(applied);
                    }
                    Err(rejection) => {
                        if let Some(op) = op {
                            workload.history.fail(op, rejection.reason());
                            if rejection.reason() == "FENCED" {
                                bump(&workload.counters.fenced);
                            }
                        }
                        return Exec::Rejected;
                    }
                },
                // The entry was never appended (the proposer checked first) or was truncated
                // (openraft answers ForwardToLeader only then): no effect.
                Ok(Err(ProposeError::NotLeader { leader_id, .. })) => {
                    if let Some(op) = op {
                        workload.history.fail(op, "NOT_LEADER");
                    }
                    bump(&workload.counters.not_leader);
                    self.last_error = Some(format!("node {target}: NOT_LEADER, leader {leader_id:?}"));
                    self.target = leader_id;
                    if leader_id.is_none() {
                        self.pause(20, 150).await;
                    }
                    result = Exec::Rejected;
                }
                Ok(Err(ProposeError::Overloaded)) => {
                    if let Some(op) = op {
                        workload.history.fail(op, "OVERLOADED");
                    }
                    self.pause(20, 100).await;
                    result = Exec::Rejected;
                }
                Ok(Err(error)) => {
                    if let Some(op) = op {
                        workload.history.info(op, error.to_string());
                    }
                    self.last_error = Some(format!("node {target}: {error}"));
                    bump(&workload.counters.unknown);
                    self.target = None;
                    result = Exec::Unknown;
                }
                Err(_elapsed) => {
                    if let Some(op) = op {
                        workload.history.info(op, "client-side timeout");
                    }
                    self.last_error = Some(format!("node {target}: client-side timeout"));
                    bump(&workload.counters.unknown);
                    self.target = None;
                    result = Exec::Unknown;
                }
            }
        }
        result
    }

    pub async fn claim(&mut self, key: &str, owner: &str, lease_ms: u64, request_id: Option<String>) -> Exec {
        let call = match &request_id {
            Some(id) => Call::claim_with_id(owner, lease_ms, id.clone()),
            None => Call::claim(owner, lease_ms),
        };
        let command = Command::Claim(ClaimCommand {
            key: key_of(NAMESPACE, key),
            owner: owner.to_string(),
            lease_ms,
            fingerprint: None,
            request_id,
            retention_ms: None,
        });
        self.execute(key, call, command, true).await
    }

    pub async fn complete(&mut self, key: &str, token: u64) -> Exec {
        let outcome = format!("done-by-{}-token-{token}", self.process);
        let command = Command::Complete(CompleteCommand {
            key: key_of(NAMESPACE, key),
            token: FencingToken(token),
            outcome: Outcome { kind: OutcomeKind::Succeeded, payload: outcome.clone().into_bytes() },
            retention_ms: None,
        });
        let result = self.execute(key, Call::complete(token, outcome), command, true).await;
        if let Exec::Done(Applied { result: Ok(Answer::Complete(ack)), .. }) = &result {
            bump(&self.workload.counters.acked_completes);
            if ack.late {
                bump(&self.workload.counters.late_completes);
            }
        }
        result
    }

    async fn release(&mut self, key: &str, token: u64) -> Exec {
        let command = Command::Release(ReleaseCommand {
            key: key_of(NAMESPACE, key),
            token: FencingToken(token),
            reason: ReleaseReason::Retryable,
            checkpoint: Vec::new(),
        });
        self.execute(key, Call::release(token), command, true).await
    }

    async fn extend(&mut self, key: &str, token: u64, lease_ms: u64) -> Exec {
        let command = Command::ExtendLease(ExtendLeaseCommand {
            key: key_of(NAMESPACE, key),
            token: FencingToken(token),
            lease_ms,
            checkpoint: None,
        });
        self.execute(key, Call::extend(token, lease_ms), command, true).await
    }

    /// Claims; on a takeover also sends the previous holder's zombie complete. Returns the
    /// granted token.
    async fn claim_and_fence(
        &mut self,
        key: &str,
        owner: &str,
        lease_ms: u64,
        request_id: Option<String>,
    ) -> Option<u64> {
        let Exec::Done(applied) = self.claim(key, owner, lease_ms, request_id).await else {
            return None;
        };
        let Ok(Answer::Claim(ClaimOutcome::Claimed { token, previous, reentrant, .. })) = applied.result else {
            return None;
        };
        let lapsed = previous.filter(|p| p.ended == PreviousEnd::LeaseLapsed && !reentrant);
        if let Some(previous) = lapsed {
            bump(&self.workload.counters.takeovers);
            // The previous holder wakes up and completes with its old token: must be FENCED.
            self.complete(key, previous.token.0).await;
        }
        Some(token.0)
    }

    /// The client's loop until `end`.
    pub async fn run(mut self, end: Instant) {
        let owner = self.owner.clone();
        for n in 0u64.. {
            if Instant::now() >= end {
                break;
            }
            let key = if self.rng.gen_bool(0.75) {
                let epoch = self.workload.origin.elapsed().as_millis() / HOT_KEY_EPOCH_MS;
                format!("hot-{epoch}-{}", self.rng.gen_range(0..self.workload.hot_keys))
            } else {
                format!("fresh-{}-{n}", self.process)
            };
            let lease_ms = self.rng.gen_range(LEASE_MS_MIN..=LEASE_MS_MAX);
            let request_id = self.rng.gen_bool(0.7).then(|| format!("{owner}-{n}"));
            let Some(token) = self.claim_and_fence(&key, &owner, lease_ms, request_id).await else {
                self.pause(20, 200).await;
                continue;
            };
            match self.rng.gen_range(0..100) {
                // Abandon the claim; half the time a retry of this client takes it over once the
                // lease lapsed and completes it.
                0..=19 => {
                    if self.rng.gen_bool(0.5) {
                        tokio::time::sleep(Duration::from_millis(lease_ms + self.rng.gen_range(50..400))).await;
                        let retry_owner = format!("{owner}-retry");
                        let request_id = Some(format!("{retry_owner}-{n}"));
                        if let Some(token) = self.claim_and_fence(&key, &retry_owner, 2_000, request_id).await {
                            self.complete(&key, token).await;
                        }
                    }
                }
                20..=34 => {
                    self.release(&key, token).await;
                }
                // Work past the lease, then complete: late, or FENCED after a takeover.
                35..=49 => {
                    tokio::time::sleep(Duration::from_millis(lease_ms + self.rng.gen_range(50..800))).await;
                    self.complete(&key, token).await;
                }
                50..=62 => {
                    let lease_ms = self.rng.gen_range(LEASE_MS_MIN..=LEASE_MS_MAX);
                    self.extend(&key, token, lease_ms).await;
                    self.pause(0, 300).await;
                    self.complete(&key, token).await;
                }
                _ => {
                    self.pause(0, 300).await;
                    self.complete(&key, token).await;
                }
            }
            self.pause(0, 100).await;
        }
    }

    /// Claims and completes fresh keys with 1 s retention, so that purging runs.
    pub async fn run_purge(mut self, end: Instant) {
        for n in 0u64.. {
            if Instant::now() >= end {
                break;
            }
            let key = format!("purge-{n}");
            let claim = Command::Claim(ClaimCommand {
                key: key_of(PURGE_NAMESPACE, &key),
                owner: self.owner.clone(),
                lease_ms: LEASE_MS_MIN,
                fingerprint: None,
                request_id: Some(key.clone()),
                retention_ms: Some(1_000),
            });
            let granted = self.execute(&key, Call::claim(self.owner.clone(), LEASE_MS_MIN), claim, false).await;
            if let Exec::Done(Applied { result: Ok(Answer::Claim(ClaimOutcome::Claimed { token, .. })), .. }) = granted
            {
                let complete = Command::Complete(CompleteCommand {
                    key: key_of(PURGE_NAMESPACE, &key),
                    token,
                    outcome: Outcome { kind: OutcomeKind::FailedFinal, payload: b"purge me".to_vec() },
                    retention_ms: Some(1_000),
                });
                self.execute(&key, Call::complete(token.0, "purge me"), complete, false).await;
            }
            self.pause(100, 400).await;
        }
    }
}
