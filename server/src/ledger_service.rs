//! The `dedup.v1.Ledger` service. Writes go through the local proposer; a follower forwards them
//! to the leader once (marked by a header, so a stale hint can never loop) and passes the
//! leader's answer back unchanged.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use dedup_cluster::ledger::limits::BATCH_ITEMS_MAX;
use dedup_cluster::ledger::Answer;
use dedup_cluster::ledger::ClaimOutcome;
use dedup_cluster::ledger::Command;
use dedup_cluster::ledger::CommandResult;
use dedup_cluster::ledger::LimitViolation;
use dedup_cluster::ledger::RecordState;
use dedup_cluster::ledger::Rejection;
use dedup_cluster::node::ClusterNode;
use dedup_cluster::proposer::Applied;
use dedup_proto::v1 as pb;
use dedup_proto::v1::ledger_client::LedgerClient;
use openraft::error::CheckIsLeaderError;
use openraft::error::RaftError;
use tonic::transport::Channel;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic_types::StatusExt;

use crate::convert;
use crate::error::ServiceError;
use crate::fail_stop;
use crate::forward::LeaderChannels;
use crate::forward::FORWARDED_HEADER;
use crate::hot_tier::HotTier;
use crate::metrics::ClaimVia;
use crate::metrics::CommandFacts;
use crate::metrics::LedgerMetrics;
use crate::waiters::Waiters;

/// A parked claim retries this long after the holder's lease should have lapsed, so that the
/// retry's ledger time is past the deadline.
const LEASE_LAPSE_SLACK_MS: u64 = 20;

pub struct LedgerService {
    node: ClusterNode,
    hot_tier: HotTier,
    waiters: Waiters,
    /// Duplicate claims answered COMPLETED by this node without a Raft round.
    local_duplicates: Arc<AtomicU64>,
    leaders: LeaderChannels,
    /// Bound on one forwarded call: the leader's own commit timeout plus transport slack.
    forward_timeout: Duration,
    metrics: Arc<LedgerMetrics>,
}

impl LedgerService {
    pub fn new(
        node: ClusterNode,
        hot_tier: HotTier,
        waiters: Waiters,
        local_duplicates: Arc<AtomicU64>,
        commit_timeout: Duration,
    ) -> LedgerService {
        LedgerService {
            node,
            hot_tier,
            waiters,
            local_duplicates,
            leaders: LeaderChannels::default(),
            forward_timeout: commit_timeout + Duration::from_secs(2),
            metrics: Arc::default(),
        }
    }

    /// Counts the answers this service gives into `metrics` (the node's Prometheus metrics).
    pub fn with_metrics(mut self, metrics: Arc<LedgerMetrics>) -> LedgerService {
        self.metrics = metrics;
        self
    }

    /// The fast duplicate path (DESIGN §6): a claim of a key this node knows COMPLETED is
    /// answered here, from the hot tier or sled, with no Raft round. A COMPLETED record never
    /// changes, so the answer is the one the leader would give. `None`: not known completed
    /// here; the claim must go through the leader.
    fn completed_locally(
        &self,
        command: &Command,
    ) -> Result<Option<(pb::CheckAndClaimResponse, ClaimVia)>, ServiceError> {
        let Command::Claim(claim) = command else {
            return Ok(None);
        };
        let applied = self.node.reader.applied();
        let (record, via) = match self.hot_tier.completed(&claim.key) {
            Some(record) => (record, ClaimVia::HotTier),
            None => match self.node.reader.record(&claim.key) {
                Ok(Some(record)) if matches!(record.state, RecordState::Completed { .. }) => {
                    self.hot_tier.offer(&claim.key, &record);
                    (Arc::new(record), ClaimVia::Store)
                }
                Ok(_) => return Ok(None),
                Err(error) => fail_stop::stop(&format!("reading record {}: {error}", claim.key)),
            },
        };
        let RecordState::Completed { outcome, completed_at, retained_until } = &record.state else {
            return Ok(None);
        };
        if let (Some(stored), Some(given)) = (&record.fingerprint, &claim.fingerprint) {
            if stored != given {
                let record = Box::new((*record).clone());
                return Err(ServiceError::Rejected(Rejection::FingerprintMismatch { record }));
            }
        }
        let answer = ClaimOutcome::Completed {
            outcome: outcome.clone(),
            completed_at: *completed_at,
            token: record.token,
            attempt: record.attempt,
            retained_until: *retained_until,
        };
        self.local_duplicates.fetch_add(1, Ordering::Relaxed);
        Ok(Some((convert::claim_response(answer, applied.log_index, applied.ledger_time), via)))
    }

    async fn propose(&self, command: Command) -> Result<Applied, ServiceError> {
        let facts = CommandFacts::of(&command);
        let proposed = self.node.proposer.propose(command).await;
        self.metrics.proposed(&proposed);
        let applied = proposed.map_err(|e| ServiceError::from_propose(e, self.node.node_id))?;
        self.metrics.applied(facts, &applied);
        Ok(applied)
    }

    /// Answers a write locally, or forwards it when this node is not the leader.
    async fn write<Req, Resp, Call, Fut>(
        &self,
        request: Request<Req>,
        to_command: fn(Req) -> Result<Command, ServiceError>,
        to_response: fn(Applied) -> Result<Resp, ServiceError>,
        forward: Call,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        Call: FnOnce(LedgerClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        let command = to_command(message.clone())?;
        self.propose_or_forward(forwarded, message, command, to_response, forward).await
    }

    /// Proposes `command`; when this node is not the leader, forwards the original `message`
    /// (unless it was forwarded here already).
    async fn propose_or_forward<Req, Resp, Call, Fut>(
        &self,
        forwarded: bool,
        message: Req,
        command: Command,
        to_response: fn(Applied) -> Result<Resp, ServiceError>,
        forward: Call,
    ) -> Result<Response<Resp>, Status>
    where
        Call: FnOnce(LedgerClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        match self.propose(command).await {
            Ok(applied) => Ok(Response::new(to_response(applied)?)),
            Err(ServiceError::NotLeader { leader_id, leader_address: Some(address), .. }) if !forwarded => {
                self.forward(leader_id, &address, message, forward).await
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Sends `message` to the leader `leader_id` at its membership `address` (or where
    /// `--peer-dial` says to dial it), marked forwarded.
    async fn forward<Req, Resp, Call, Fut>(
        &self,
        leader_id: Option<u64>,
        address: &str,
        message: Req,
        call: Call,
    ) -> Result<Response<Resp>, Status>
    where
        Call: FnOnce(LedgerClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let address = match leader_id {
            Some(leader) => self.node.dial.address(leader, address),
            None => address,
        };
        let client = self
            .leaders
            .client(address)
            .map_err(|message| ServiceError::ForwardFailed { leader_address: address.to_string(), message })?;
        let mut request = Request::new(message);
        request.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
        request.set_timeout(self.forward_timeout);
        match call(client, request).await {
            Ok(response) => Ok(response),
            // The leader's own answer (it carries ErrorInfo): pass it through unchanged.
            Err(status) if status.get_details_error_info().is_some() => Err(status),
            // Transport trouble on the way to the leader.
            Err(status) => Err(ServiceError::ForwardFailed {
                leader_address: address.to_string(),
                message: format!("{}: {}", status.code(), status.message()),
            }
            .into()),
        }
    }

    /// One claim: the fast duplicate path, else a Raft write (forwarded from a follower). Also
    /// says how the answer was produced, for the metrics.
    async fn claim_now(
        &self,
        request: Request<pb::CheckAndClaimRequest>,
    ) -> Result<(Response<pb::CheckAndClaimResponse>, ClaimVia), Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        // Checked once, for both paths, so a request is refused the same way on either.
        let command = convert::claim_command(message.clone())?;
        if let Some((answer, via)) = self.completed_locally(&command)? {
            return Ok((Response::new(answer), via));
        }
        let sent_to_leader = AtomicBool::new(false);
        let forward = |mut c: LedgerClient<Channel>, r| {
            sent_to_leader.store(true, Ordering::Relaxed);
            async move { c.check_and_claim(r).await }
        };
        let response = self.propose_or_forward(forwarded, message, command, claim_response, forward).await?;
        let via = if sent_to_leader.load(Ordering::Relaxed) { ClaimVia::Forwarded } else { ClaimVia::Raft };
        Ok((response, via))
    }

    /// A claim with `wait_ms`: while the answer is IN_PROGRESS, park until an apply on this node
    /// writes the key (completed, released) or the holder's lease may have lapsed, then claim
    /// again; answer IN_PROGRESS when the wait ends. The waiting happens on the node the client
    /// reached; each claim it makes is an ordinary one (forwarded with `wait_ms = 0`).
    async fn claim_waiting(
        &self,
        request: Request<pb::CheckAndClaimRequest>,
    ) -> Result<(Response<pb::CheckAndClaimResponse>, ClaimVia), Status> {
        // Refuse a bad request (wait_ms over WAIT_MS_MAX included) before parking it.
        let command = convert::claim_command(request.get_ref().clone())?;
        let slot = self.waiters.park(command.key()).map_err(ServiceError::WaitersFull)?;
        let deadline = Instant::now() + Duration::from_millis(request.get_ref().wait_ms);
        let mut message = request.into_inner();
        message.wait_ms = 0;
        loop {
            let notified = slot.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (response, via) = self.claim_now(Request::new(message.clone())).await?;
            let Some(pb::check_and_claim_response::Result::InProgress(busy)) = &response.get_ref().result else {
                return Ok((response, via));
            };
            let now = Instant::now();
            if now >= deadline || self.waiters.is_closing() {
                return Ok((response, via));
            }
            let lapse = Duration::from_millis(busy.retry_after_ms + LEASE_LAPSE_SLACK_MS);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(lapse.min(deadline - now)) => {}
            }
        }
    }

    /// Converts every item, proposes the valid ones as one group (one Raft entry), and answers
    /// each item in request order. An error of the whole group (not the leader, no quorum) is
    /// returned as the call's error.
    async fn write_batch<Req, ItemAnswer>(
        &self,
        items: Vec<Req>,
        to_command: fn(Req) -> Result<Command, ServiceError>,
        to_answer: fn(Applied) -> Result<ItemAnswer, ServiceError>,
    ) -> Result<(Vec<Result<ItemAnswer, ServiceError>>, u64), ServiceError> {
        if items.is_empty() {
            return Err(ServiceError::Invalid(LimitViolation {
                reason: "BATCH_EMPTY".to_string(),
                message: "the batch has no items".to_string(),
            }));
        }
        if items.len() > BATCH_ITEMS_MAX {
            return Err(ServiceError::Invalid(LimitViolation {
                reason: "BATCH_TOO_LARGE".to_string(),
                message: format!(
                    "the batch has {} items; the limit is {BATCH_ITEMS_MAX} (BATCH_ITEMS_MAX)",
                    items.len()
                ),
            }));
        }
        let mut answers: Vec<Option<Result<ItemAnswer, ServiceError>>> = Vec::with_capacity(items.len());
        let mut commands = Vec::new();
        let mut positions = Vec::new();
        for (position, item) in items.into_iter().enumerate() {
            match to_command(item) {
                Ok(command) => {
                    commands.push(command);
                    positions.push(position);
                    answers.push(None);
                }
                Err(error) => answers.push(Some(Err(error))),
            }
        }
        let mut applied_index = 0;
        if !commands.is_empty() {
            let facts: Vec<CommandFacts> = commands.iter().map(CommandFacts::of).collect();
            let proposed = self.node.proposer.propose_group(commands).await;
            self.metrics.proposed(&proposed);
            let applied = proposed.map_err(|e| ServiceError::from_propose(e, self.node.node_id))?;
            for ((position, applied), facts) in positions.into_iter().zip(applied).zip(facts) {
                self.metrics.applied(facts, &applied);
                applied_index = applied.log_index;
                answers[position] = Some(to_answer(applied));
            }
        }
        Ok((answers.into_iter().map(|a| a.expect("every item answered")).collect(), applied_index))
    }

    fn read_local(&self, key: dedup_cluster::ledger::RecordKey) -> Result<pb::GetResponse, ServiceError> {
        // The applied index read first is a lower bound of what the record reflects.
        let applied = self.node.reader.applied();
        let record = match self.node.reader.record(&key) {
            Ok(record) => record,
            Err(error) => fail_stop::stop(&format!("reading record {key}: {error}")),
        };
        if let Some(record) = &record {
            self.hot_tier.offer(&key, record);
        }
        let purge_horizon = match self.node.reader.purge_horizon(&key.namespace) {
            Ok(horizon) => horizon,
            Err(error) => fail_stop::stop(&format!("reading the purge horizon of {}: {error}", key.namespace)),
        };
        Ok(pb::GetResponse {
            record: record.map(|r| convert::record_view(&key, &r, applied.log_index, applied.ledger_time)),
            purge_horizon_ms: purge_horizon.as_ms(),
            applied_index: applied.log_index,
            ledger_time_ms: applied.ledger_time.as_ms(),
        })
    }
}

fn answer(result: CommandResult) -> Result<Answer, ServiceError> {
    result.map_err(ServiceError::Rejected)
}

fn mismatched(answer: &Answer) -> ServiceError {
    ServiceError::Storage(format!("the ledger answered a command with the wrong kind of answer: {answer:?}"))
}

fn claim_response(applied: Applied) -> Result<pb::CheckAndClaimResponse, ServiceError> {
    match answer(applied.result)? {
        Answer::Claim(outcome) => Ok(convert::claim_response(outcome, applied.log_index, applied.ledger_time)),
        other => Err(mismatched(&other)),
    }
}

fn complete_response(applied: Applied) -> Result<pb::CompleteResponse, ServiceError> {
    match answer(applied.result)? {
        Answer::Complete(ack) => Ok(pb::CompleteResponse {
            completed_at_ms: ack.completed_at.as_ms(),
            retained_until_ms: ack.retained_until.as_ms(),
            replayed: ack.replayed,
            late: ack.late,
            applied_index: applied.log_index,
            ledger_time_ms: applied.ledger_time.as_ms(),
        }),
        other => Err(mismatched(&other)),
    }
}

fn release_response(applied: Applied) -> Result<pb::ReleaseResponse, ServiceError> {
    match answer(applied.result)? {
        Answer::Release(ack) => Ok(pb::ReleaseResponse {
            retained_until_ms: ack.retained_until.as_ms(),
            replayed: ack.replayed,
            applied_index: applied.log_index,
            ledger_time_ms: applied.ledger_time.as_ms(),
        }),
        other => Err(mismatched(&other)),
    }
}

fn extend_response(applied: Applied) -> Result<pb::ExtendLeaseResponse, ServiceError> {
    match answer(applied.result)? {
        Answer::ExtendLease(ack) => Ok(pb::ExtendLeaseResponse {
            lease_deadline_ms: ack.lease_deadline.as_ms(),
            applied_index: applied.log_index,
            ledger_time_ms: applied.ledger_time.as_ms(),
        }),
        other => Err(mismatched(&other)),
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn check_and_claim_batch(
        &self,
        request: Request<pb::CheckAndClaimBatchRequest>,
    ) -> Result<Response<pb::CheckAndClaimBatchResponse>, Status> {
        use pb::check_and_claim_batch_item::Result as Item;
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        let count_answers = |response: &pb::CheckAndClaimBatchResponse, via| {
            for item in &response.items {
                if let Some(Item::Answer(answer)) = &item.result {
                    self.metrics.claim_answered(answer, via);
                }
            }
        };
        match self.write_batch(message.items.clone(), convert::claim_command, claim_response).await {
            Ok((results, applied_index)) => {
                let items = results
                    .into_iter()
                    .map(|result| pb::CheckAndClaimBatchItem {
                        result: Some(match result {
                            Ok(answer) => Item::Answer(answer),
                            Err(error) => Item::Error((&error).into()),
                        }),
                    })
                    .collect();
                let response = pb::CheckAndClaimBatchResponse { items, applied_index };
                count_answers(&response, ClaimVia::Raft);
                Ok(Response::new(response))
            }
            Err(ServiceError::NotLeader { leader_id, leader_address: Some(address), .. }) if !forwarded => {
                let response = self
                    .forward(leader_id, &address, message, |mut c, r| async move { c.check_and_claim_batch(r).await })
                    .await?;
                count_answers(response.get_ref(), ClaimVia::Forwarded);
                Ok(response)
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn complete_batch(
        &self,
        request: Request<pb::CompleteBatchRequest>,
    ) -> Result<Response<pb::CompleteBatchResponse>, Status> {
        use pb::complete_batch_item::Result as Item;
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        match self.write_batch(message.items.clone(), convert::complete_command, complete_response).await {
            Ok((results, applied_index)) => {
                let items = results
                    .into_iter()
                    .map(|result| pb::CompleteBatchItem {
                        result: Some(match result {
                            Ok(answer) => Item::Answer(answer),
                            Err(error) => Item::Error((&error).into()),
                        }),
                    })
                    .collect();
                Ok(Response::new(pb::CompleteBatchResponse { items, applied_index }))
            }
            Err(ServiceError::NotLeader { leader_id, leader_address: Some(address), .. }) if !forwarded => {
                self.forward(leader_id, &address, message, |mut c, r| async move { c.complete_batch(r).await }).await
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn check_and_claim(
        &self,
        request: Request<pb::CheckAndClaimRequest>,
    ) -> Result<Response<pb::CheckAndClaimResponse>, Status> {
        let (response, via) = if request.get_ref().wait_ms == 0 {
            self.claim_now(request).await?
        } else {
            self.claim_waiting(request).await?
        };
        self.metrics.claim_answered(response.get_ref(), via);
        Ok(response)
    }

    async fn complete(&self, request: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        self.write(request, convert::complete_command, complete_response, |mut c, r| async move { c.complete(r).await })
            .await
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        self.write(request, convert::release_command, release_response, |mut c, r| async move { c.release(r).await })
            .await
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        self.write(request, convert::extend_command, extend_response, |mut c, r| async move { c.extend_lease(r).await })
            .await
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        let key = convert::record_key(message.namespace.clone(), message.key.clone())?;
        let consistency = pb::Consistency::try_from(message.consistency).unwrap_or(pb::Consistency::Linearizable);
        if consistency == pb::Consistency::AnyReplica {
            return Ok(Response::new(self.read_local(key)?));
        }
        // Linearizable: confirm leadership with a quorum (ReadIndex) and wait until that index is
        // applied here, then read locally.
        let this_node = self.node.node_id;
        match self.node.raft.ensure_linearizable().await {
            Ok(_) => Ok(Response::new(self.read_local(key)?)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
                let leader_address = to.leader_node.map(|node| node.addr);
                match leader_address {
                    Some(address) if !forwarded => {
                        self.forward(to.leader_id, &address, message, |mut c, r| async move { c.get(r).await }).await
                    }
                    leader_address => {
                        Err(ServiceError::NotLeader { this_node, leader_id: to.leader_id, leader_address }.into())
                    }
                }
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(ServiceError::NoQuorum(format!("NO_QUORUM: the leader could not confirm a quorum: {e}")).into())
            }
            Err(RaftError::Fatal(fatal)) => Err(ServiceError::ShuttingDown(fatal.to_string()).into()),
        }
    }
}
