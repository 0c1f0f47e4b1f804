//! The `dedup.v1.Admin` service: this node's view of Raft, and the operator's controls of the
//! cluster (members, leadership, snapshots, state hash, health, key inspection and repair).
//!
//! Calls that change the cluster run on the leader; elsewhere they answer NOT_LEADER with the
//! leader's address (UNAVAILABLE, like the client API), which dedupctl follows. Reads of the
//! ledger (key list, stats, audit, hash) answer from this node's applied state and say which
//! index that is.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dedup_cluster::ledger::limits::AUDIT_REASON_BYTES_MAX;
use dedup_cluster::ledger::limits::KEY_LIST_PAGE_MAX;
use dedup_cluster::ledger::limits::OWNER_BYTES_MAX;
use dedup_cluster::ledger::Answer;
use dedup_cluster::ledger::AuditEntry;
use dedup_cluster::ledger::Command;
use dedup_cluster::ledger::LimitViolation;
use dedup_cluster::ledger::OperatorCommand;
use dedup_cluster::ledger::RecordStateFilter;
use dedup_cluster::node::ClusterNode;
use dedup_cluster::raft_types::Node;
use dedup_cluster::raft_types::NodeId;
use dedup_proto::v1 as pb;
use dedup_proto::v1::admin_client::AdminClient;
use openraft::ChangeMembers;
use openraft::ServerState;
use tokio::time::Instant;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::backup::stream_snapshot_file;
use crate::backup::SnapshotChunks;
use crate::convert;
use crate::error::ServiceError;
use crate::forward::LeaderChannels;
use crate::hot_tier::HotTier;
use crate::leadership;
use crate::leadership::TransferError;
use crate::waiters::Waiters;

/// How long MemberAdd with `wait_caught_up` waits for the learner to receive the log.
pub const MEMBER_CATCH_UP_WAIT_MS_MAX: u64 = 60_000;
/// A learner further behind the leader than this many entries is not promoted: as a voter it
/// would count towards quorum long before it could acknowledge anything.
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 1_000;
/// How long a membership change may take to commit.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SnapshotTrigger waits for the snapshot to be built.
pub const SNAPSHOT_WAIT_MS_MAX: u64 = 120_000;
/// How long Health may take: the leader's quorum round plus this node catching up.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Records NamespaceStats scans at most looking for the oldest live claim.
pub const NAMESPACE_SCAN_RECORDS_MAX: usize = 1_000_000;
/// Page size of KeyList and AuditList when the request gives none.
pub const PAGE_DEFAULT: usize = 100;
/// How long the leader waits for a voter's NodeStatus when counting reachable voters.
const VOTER_PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);

pub struct AdminService {
    node: ClusterNode,
    hot_tier: HotTier,
    hot_tier_budget_bytes: u64,
    local_duplicates: Arc<AtomicU64>,
    waiters: Waiters,
    channels: LeaderChannels,
    /// `--election-timeout-ms`: every voter's election timeout (and lease) follows from it.
    election_base_ms: u64,
}

impl AdminService {
    pub fn new(
        node: ClusterNode,
        hot_tier: HotTier,
        hot_tier_budget_bytes: u64,
        local_duplicates: Arc<AtomicU64>,
        waiters: Waiters,
        channels: LeaderChannels,
        election_base_ms: u64,
    ) -> AdminService {
        AdminService { node, hot_tier, hot_tier_budget_bytes, local_duplicates, waiters, channels, election_base_ms }
    }

    fn metrics(&self) -> openraft::RaftMetrics<NodeId, Node> {
        // Clone out of the watch channel: never hold its borrow across an await (research P-11).
        self.node.raft.metrics().borrow().clone()
    }

    /// NOT_LEADER unless this node leads, naming the leader it knows.
    fn require_leader(&self) -> Result<openraft::RaftMetrics<NodeId, Node>, ServiceError> {
        let metrics = self.metrics();
        if metrics.state == ServerState::Leader {
            return Ok(metrics);
        }
        let leader_address = metrics
            .current_leader
            .and_then(|id| metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone()));
        Err(ServiceError::NotLeader { this_node: self.node.node_id, leader_id: metrics.current_leader, leader_address })
    }

    fn member_list(&self) -> pb::MemberListResponse {
        member_list(self.node.node_id, &self.metrics())
    }

    /// Blocking reader work off the async workers; a storage error is STORAGE_FAILURE.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dedup_cluster::store::LedgerReader) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let reader = self.node.reader.clone();
        tokio::task::spawn_blocking(move || work(&reader))
            .await
            .map_err(|e| ServiceError::Storage(e.to_string()))?
            .map_err(reader_error)
    }

    /// The voters (besides this node) that answer NodeStatus within [`VOTER_PROBE_TIMEOUT`].
    async fn reachable_voters(&self, metrics: &openraft::RaftMetrics<NodeId, Node>) -> BTreeSet<NodeId> {
        let membership = metrics.membership_config.membership();
        let mut probes = tokio::task::JoinSet::new();
        for id in membership.voter_ids().filter(|id| *id != self.node.node_id) {
            let Some(member) = membership.get_node(&id) else { continue };
            let Ok(channel) = self.channels.channel(self.node.dial.address(id, &member.addr)) else { continue };
            probes.spawn(async move {
                let mut request = Request::new(pb::NodeStatusRequest {});
                request.set_timeout(VOTER_PROBE_TIMEOUT);
                let answered =
                    tokio::time::timeout(VOTER_PROBE_TIMEOUT, AdminClient::new(channel).node_status(request))
                        .await
                        .is_ok_and(|r| r.is_ok());
                (id, answered)
            });
        }
        let mut reachable = BTreeSet::from([self.node.node_id]);
        while let Some(Ok((id, answered))) = probes.join_next().await {
            if answered {
                reachable.insert(id);
            }
        }
        reachable
    }

    async fn change_membership(&self, change: ChangeMembers<NodeId, Node>) -> Result<u64, ServiceError> {
        let changed = tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, self.node.raft.change_membership(change, false))
            .await
            .map_err(|_| ServiceError::Incomplete {
                reason: "MEMBERSHIP_CHANGE_TIMEOUT",
                message: format!(
                    "the membership change did not commit within {} ms; check `dedupctl member list`",
                    MEMBERSHIP_CHANGE_TIMEOUT.as_millis()
                ),
            })?;
        changed.map(|response| response.log_id.index).map_err(|error| self.raft_write_error(error))
    }

    fn raft_write_error(
        &self,
        error: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Node>>,
    ) -> ServiceError {
        use openraft::error::ClientWriteError;
        use openraft::error::RaftError;
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => ServiceError::NotLeader {
                this_node: self.node.node_id,
                leader_id: forward.leader_id,
                leader_address: forward.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
                ServiceError::Refused { reason: "MEMBERSHIP_CHANGE_REFUSED", message: error.to_string() }
            }
            RaftError::Fatal(fatal) => ServiceError::ShuttingDown(fatal.to_string()),
        }
    }

    async fn operator_command(
        &self,
        request: pb::KeyOperatorRequest,
        command: fn(OperatorCommand) -> Command,
    ) -> Result<pb::KeyOperatorResponse, ServiceError> {
        self.require_leader()?;
        if request.reason.trim().is_empty() || request.reason.len() > AUDIT_REASON_BYTES_MAX {
            return Err(ServiceError::Invalid(LimitViolation {
                reason: "REASON_OUT_OF_RANGE".to_string(),
                message: format!(
                    "reason is {} bytes; it must say why, in 1..={AUDIT_REASON_BYTES_MAX} bytes (AUDIT_REASON_BYTES_MAX)",
                    request.reason.len()
                ),
            }));
        }
        if request.operator.len() > OWNER_BYTES_MAX {
            return Err(ServiceError::Invalid(LimitViolation {
                reason: "OPERATOR_TOO_LONG".to_string(),
                message: format!(
                    "operator is {} bytes; the limit is {OWNER_BYTES_MAX} bytes (OWNER_BYTES_MAX)",
                    request.operator.len()
                ),
            }));
        }
        let key = convert::record_key(request.namespace, request.key)?;
        let command = command(OperatorCommand { key, reason: request.reason, operator: request.operator });
        let applied = self
            .node
            .proposer
            .propose(command)
            .await
            .map_err(|error| ServiceError::from_propose(error, self.node.node_id))?;
        match applied.result.map_err(ServiceError::Rejected)? {
            Answer::Forgotten(ack) | Answer::ForceReleased(ack) => {
                Ok(pb::KeyOperatorResponse { audit: Some(audit_to_pb(&ack.audit)) })
            }
            other => Err(ServiceError::Storage(format!("an operator command was answered {other:?}"))),
        }
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// On the leader: the last log index `id` is known to hold; `None` if it never acknowledged
/// any entry (or this node does not lead).
fn matched_index(metrics: &openraft::RaftMetrics<NodeId, Node>, id: NodeId) -> Option<u64> {
    metrics.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|log_id| log_id.index)
}

fn member_list(node_id: NodeId, metrics: &openraft::RaftMetrics<NodeId, Node>) -> pb::MemberListResponse {
    let stored = &metrics.membership_config;
    let membership = stored.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let matched = |id: NodeId| {
        if id == node_id && metrics.state == ServerState::Leader {
            return metrics.last_log_index.unwrap_or(0);
        }
        metrics.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map_or(0, |log_id| log_id.index)
    };
    let members = membership
        .nodes()
        .map(|(id, node)| pb::MemberInfo {
            node_id: *id,
            address: node.addr.clone(),
            kind: if voters.contains(id) { "voter" } else { "learner" }.to_string(),
            is_leader: metrics.current_leader == Some(*id),
            matched_index: matched(*id),
        })
        .collect();
    pb::MemberListResponse {
        node_id,
        leader_id: metrics.current_leader.unwrap_or(0),
        members,
        membership_log_index: stored.log_id().map_or(0, |id| id.index),
        joint: membership.get_joint_config().len() > 1,
    }
}

/// The `dedupd` flags a node added by MemberAdd needs: its id and address, every member, and
/// `--join` so that it waits to be replicated to instead of forming a cluster of its own.
pub fn dedupd_flags_for(node_id: NodeId, address: &str, members: &[pb::MemberInfo]) -> Vec<String> {
    let mut peers: Vec<String> = members.iter().map(|m| format!("{}={}", m.node_id, m.address)).collect();
    if !members.iter().any(|m| m.node_id == node_id) {
        peers.push(format!("{node_id}={address}"));
    }
    let port = address.rsplit_once(':').map_or("7101", |(_, port)| port);
    vec![
        format!("--node-id={node_id}"),
        format!("--listen=0.0.0.0:{port}"),
        format!("--peers={}", peers.join(",")),
        "--join".to_string(),
        "--data-dir=<an empty directory>".to_string(),
    ]
}

/// The previous record is shown as of the change: its `applied_index` is the change's log index
/// and its `ledger_time_ms` the change's time (the moment the record stopped being current).
fn audit_to_pb(entry: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        log_index: entry.log_index,
        slot: u32::from(entry.slot),
        at_ms: entry.at.as_ms(),
        action: entry.action.name().to_string(),
        namespace: entry.key.namespace.clone(),
        key: entry.key.key.clone(),
        reason: entry.reason.clone(),
        operator: entry.operator.clone(),
        previous: Some(convert::record_view(&entry.key, &entry.previous, entry.log_index, entry.at)),
    }
}

/// A reader refuses bad input (a page too large) with InvalidInput around a LimitViolation:
/// INVALID_ARGUMENT. Anything else is the storage failing.
fn reader_error(error: std::io::Error) -> ServiceError {
    if error.kind() == std::io::ErrorKind::InvalidInput {
        if let Some(violation) = error.get_ref().and_then(|inner| inner.downcast_ref::<LimitViolation>()) {
            return ServiceError::Invalid(violation.clone());
        }
    }
    ServiceError::Storage(error.to_string())
}

fn page_limit(limit: u32) -> Result<usize, ServiceError> {
    match limit as usize {
        0 => Ok(PAGE_DEFAULT),
        n if n <= KEY_LIST_PAGE_MAX => Ok(n),
        n => Err(ServiceError::Invalid(LimitViolation {
            reason: "PAGE_SIZE_OUT_OF_RANGE".to_string(),
            message: format!("limit is {n}; a page holds at most {KEY_LIST_PAGE_MAX} entries (KEY_LIST_PAGE_MAX)"),
        })),
    }
}

fn check_node_id(node_id: NodeId) -> Result<(), ServiceError> {
    if node_id == 0 {
        return Err(ServiceError::Invalid(LimitViolation {
            reason: "NODE_ID_INVALID".to_string(),
            message: "node id 0 is reserved; ids start at 1".to_string(),
        }));
    }
    Ok(())
}

fn transfer_error(error: TransferError) -> ServiceError {
    match error {
        TransferError::NotLeader { this_node, leader_id, leader_address } => {
            ServiceError::NotLeader { this_node, leader_id, leader_address }
        }
        TransferError::NoTarget(message) => ServiceError::Refused { reason: "NO_TRANSFER_TARGET", message },
        error @ TransferError::InProgress => {
            ServiceError::Refused { reason: "TRANSFER_IN_PROGRESS", message: error.to_string() }
        }
        TransferError::Failed(message) => ServiceError::Incomplete { reason: "TRANSFER_FAILED", message },
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let members: Vec<pb::Member> =
            membership.nodes().map(|(id, node)| pb::Member { node_id: *id, address: node.addr.clone() }).collect();
        let address_of = |id: u64| membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        let applied = self.node.reader.applied();
        let voter = membership.voter_ids().any(|id| id == self.node.node_id);
        let role = match metrics.state {
            // openraft reports a non-voting member as a follower; the operator wants to know.
            ServerState::Follower if !voter => "learner",
            state => role_name(state),
        };
        let data_bytes = self.node.reader.size_on_disk().unwrap_or(0);
        Ok(Response::new(pb::NodeStatusResponse {
            node_id: self.node.node_id,
            address: address_of(self.node.node_id),
            role: role.to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_address: metrics.current_leader.map(address_of).unwrap_or_default(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed_index: self.node.committed.load(Ordering::Relaxed),
            applied_index: applied.log_index,
            ledger_time_ms: applied.ledger_time.as_ms(),
            members,
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack.unwrap_or(0),
            entries_proposed: self.node.proposer.stats().entries.load(Ordering::Relaxed),
            commands_proposed: self.node.proposer.stats().commands.load(Ordering::Relaxed),
            log_flushes: self.node.log_flushes.load(Ordering::Relaxed),
            hot_tier_bytes: self.hot_tier.weighted_bytes(),
            hot_tier_budget_bytes: self.hot_tier_budget_bytes,
            hot_tier_entries: self.hot_tier.entries(),
            hot_tier_hits: self.hot_tier.stats().hits.load(Ordering::Relaxed),
            hot_tier_misses: self.hot_tier.stats().misses.load(Ordering::Relaxed),
            duplicates_answered_locally: self.local_duplicates.load(Ordering::Relaxed),
            waiters_parked: self.waiters.parked() as u64,
            data_bytes,
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(self.member_list()))
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let request = request.into_inner();
        check_node_id(request.node_id)?;
        if let Err(message) = crate::config::check_address(&request.address) {
            return Err(ServiceError::Invalid(LimitViolation { reason: "ADDRESS_INVALID".to_string(), message }).into());
        }
        let metrics = self.require_leader()?;
        let membership = metrics.membership_config.membership();
        if let Some(existing) = membership.get_node(&request.node_id) {
            if existing.addr != request.address {
                return Err(ServiceError::Refused {
                    reason: "MEMBER_EXISTS",
                    message: format!(
                        "node {} is already a member at {}; remove it first to change its address",
                        request.node_id, existing.addr
                    ),
                }
                .into());
            }
        }
        let node = Node { addr: request.address.clone() };
        // Non-blocking: openraft's blocking add_learner counts a learner within
        // `replication_lag_threshold` (5000) entries as caught up, even one that never answered.
        let added =
            tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, self.node.raft.add_learner(request.node_id, node, false))
                .await
                .map_err(|_| ServiceError::Incomplete {
                    reason: "MEMBERSHIP_CHANGE_TIMEOUT",
                    message: format!(
                        "adding the learner did not commit within {} ms",
                        MEMBERSHIP_CHANGE_TIMEOUT.as_millis()
                    ),
                })?;
        let log_index = added.map_err(|error| self.raft_write_error(error))?.log_id.index;
        if request.wait_caught_up {
            // Caught up: the learner holds every entry up to the one that added it.
            let id = request.node_id;
            let wait = Duration::from_millis(MEMBER_CATCH_UP_WAIT_MS_MAX);
            self.node
                .raft
                .wait(Some(wait))
                .metrics(|m| matched_index(m, id).is_some_and(|matched| matched >= log_index), "learner caught up")
                .await
                .map_err(|_| ServiceError::Incomplete {
                    reason: "CATCH_UP_TIMEOUT",
                    message: format!(
                        "node {id} was added as a learner but did not reach index {log_index} within \
                         {MEMBER_CATCH_UP_WAIT_MS_MAX} ms (MEMBER_CATCH_UP_WAIT_MS_MAX); is it running with the printed flags?"
                    ),
                })?;
        }
        let membership = self.member_list();
        let dedupd_flags = dedupd_flags_for(request.node_id, &request.address, &membership.members);
        tracing::info!(node_id = request.node_id, address = %request.address, log_index, "added a learner");
        Ok(Response::new(pb::MemberChangeResponse { membership: Some(membership), log_index, dedupd_flags }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let id = request.into_inner().node_id;
        check_node_id(id)?;
        let metrics = self.require_leader()?;
        let membership = metrics.membership_config.membership();
        if membership.voter_ids().any(|voter| voter == id) {
            return Err(ServiceError::Refused {
                reason: "ALREADY_VOTER",
                message: format!("node {id} is already a voter"),
            }
            .into());
        }
        if membership.get_node(&id).is_none() {
            return Err(ServiceError::Refused {
                reason: "NOT_A_MEMBER",
                message: format!("node {id} is not a learner; add it first with `dedupctl member add {id} HOST:PORT`"),
            }
            .into());
        }
        let Some(matched) = matched_index(&metrics, id) else {
            return Err(ServiceError::Refused {
                reason: "LEARNER_BEHIND",
                message: format!(
                    "learner {id} has not received any entry yet; start it with the flags `member add` printed and \
                     wait for it to catch up (`dedupctl member list`)"
                ),
            }
            .into());
        };
        let lag = metrics.last_log_index.unwrap_or(0).saturating_sub(matched);
        if lag > PROMOTE_LAG_ENTRIES_MAX {
            return Err(ServiceError::Refused {
                reason: "LEARNER_BEHIND",
                message: format!(
                    "learner {id} is {lag} entries behind the leader; a voter may be at most \
                     {PROMOTE_LAG_ENTRIES_MAX} behind when promoted (PROMOTE_LAG_ENTRIES_MAX): wait and retry"
                ),
            }
            .into());
        }
        let log_index = self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
        tracing::info!(node_id = id, log_index, "promoted a learner to voter");
        Ok(Response::new(pb::MemberChangeResponse {
            membership: Some(self.member_list()),
            log_index,
            dedupd_flags: Vec::new(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let request = request.into_inner();
        let id = request.node_id;
        check_node_id(id)?;
        let metrics = self.require_leader()?;
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if membership.get_node(&id).is_none() {
            return Err(ServiceError::Refused {
                reason: "NOT_A_MEMBER",
                message: format!("node {id} is not a member"),
            }
            .into());
        }
        let change = if voters.contains(&id) {
            let remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
            if remaining.is_empty() {
                return Err(ServiceError::Refused {
                    reason: "LAST_VOTER",
                    message: format!("node {id} is the only voter; a cluster needs at least one"),
                }
                .into());
            }
            if !request.force {
                let reachable = self.reachable_voters(&metrics).await;
                let up = remaining.iter().filter(|v| reachable.contains(v)).count();
                let majority = remaining.len() / 2 + 1;
                if up < majority {
                    return Err(ServiceError::Refused {
                        reason: "QUORUM_AT_RISK",
                        message: format!(
                            "after removing node {id}, {up} of the remaining {} voters {remaining:?} answer; a quorum \
                             needs {majority}. Bring nodes back first, or pass --force",
                            remaining.len()
                        ),
                    }
                    .into());
                }
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let log_index = self.change_membership(change).await?;
        tracing::warn!(node_id = id, log_index, "removed a member");
        Ok(Response::new(pb::MemberChangeResponse {
            membership: Some(self.member_list()),
            log_index,
            dedupd_flags: Vec::new(),
        }))
    }

    async fn leader_transfer(
        &self,
        request: Request<pb::LeaderTransferRequest>,
    ) -> Result<Response<pb::LeaderTransferResponse>, Status> {
        let to = Some(request.into_inner().to_node_id).filter(|id| *id != 0);
        let done = leadership::transfer_leadership(&self.node, &self.channels, to, self.election_base_ms)
            .await
            .map_err(transfer_error)?;
        Ok(Response::new(pb::LeaderTransferResponse {
            from_node_id: done.from,
            to_node_id: done.to,
            term: done.term,
            elapsed_ms: done.elapsed.as_millis() as u64,
        }))
    }

    async fn campaign(&self, _request: Request<pb::CampaignRequest>) -> Result<Response<pb::CampaignResponse>, Status> {
        let metrics = self.metrics();
        if !metrics.membership_config.membership().voter_ids().any(|id| id == self.node.node_id) {
            return Err(ServiceError::Refused {
                reason: "NOT_A_VOTER",
                message: format!("node {} is not a voter and cannot lead", self.node.node_id),
            }
            .into());
        }
        self.node.raft.trigger().elect().await.map_err(|e| ServiceError::ShuttingDown(e.to_string()))?;
        Ok(Response::new(pb::CampaignResponse {}))
    }

    async fn snapshot_trigger(
        &self,
        _request: Request<pb::SnapshotTriggerRequest>,
    ) -> Result<Response<pb::SnapshotTriggerResponse>, Status> {
        let started = Instant::now();
        let applied = self.node.reader.applied().log_index;
        self.node.raft.trigger().snapshot().await.map_err(|e| ServiceError::ShuttingDown(e.to_string()))?;
        let wait = Duration::from_millis(SNAPSHOT_WAIT_MS_MAX);
        let metrics = self
            .node
            .raft
            .wait(Some(wait))
            .metrics(|m| m.snapshot.is_some_and(|id| id.index >= applied), "snapshot built")
            .await
            .map_err(|_| ServiceError::Incomplete {
                reason: "SNAPSHOT_TIMEOUT",
                message: format!(
                    "no snapshot covering index {applied} within {SNAPSHOT_WAIT_MS_MAX} ms (SNAPSHOT_WAIT_MS_MAX); \
                     one may still be building"
                ),
            })?;
        Ok(Response::new(pb::SnapshotTriggerResponse {
            node_id: self.node.node_id,
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            elapsed_ms: started.elapsed().as_millis() as u64,
        }))
    }

    type SnapshotDownloadStream = SnapshotChunks;

    async fn snapshot_download(
        &self,
        _request: Request<pb::SnapshotDownloadRequest>,
    ) -> Result<Response<Self::SnapshotDownloadStream>, Status> {
        let node = self.node.clone();
        let opened = tokio::task::spawn_blocking(move || node.open_snapshot_file())
            .await
            .map_err(|e| ServiceError::Storage(e.to_string()))?
            .map_err(|e| ServiceError::Storage(format!("opening the snapshot file: {e}")))?;
        let Some(snapshot) = opened else {
            return Err(ServiceError::Missing {
                reason: "NO_SNAPSHOT",
                message: format!(
                    "node {} has no snapshot yet; build one with `dedupctl snapshot trigger` first",
                    self.node.node_id
                ),
            }
            .into());
        };
        Ok(Response::new(stream_snapshot_file(self.node.node_id, snapshot)))
    }

    async fn state_hash(
        &self,
        _request: Request<pb::StateHashRequest>,
    ) -> Result<Response<pb::StateHashResponse>, Status> {
        let digest = self.read(|reader| reader.state_digest()).await?;
        Ok(Response::new(pb::StateHashResponse {
            node_id: self.node.node_id,
            applied_index: digest.applied.log_index,
            sha256: digest.sha256.iter().map(|b| format!("{b:02x}")).collect(),
            pairs: digest.pairs,
        }))
    }

    async fn health(&self, _request: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        let started = Instant::now();
        let metrics = self.metrics();
        let read_index = if metrics.state == ServerState::Leader {
            let read =
                tokio::time::timeout(HEALTH_TIMEOUT, self.node.raft.ensure_linearizable()).await.map_err(|_| {
                    ServiceError::NoQuorum(format!(
                        "NO_QUORUM: no quorum confirmed leadership within {} ms",
                        HEALTH_TIMEOUT.as_millis()
                    ))
                })?;
            match read {
                Ok(log_id) => log_id.map_or(0, |id| id.index),
                Err(error) => return Err(ServiceError::NoQuorum(format!("NO_QUORUM: {error}")).into()),
            }
        } else {
            // Ask the leader for its confirmed commit index, then apply up to it here.
            let leader = self.require_leader().err();
            let Some(ServiceError::NotLeader { leader_id: Some(leader_id), leader_address: Some(address), .. }) =
                leader
            else {
                return Err(ServiceError::NoQuorum(format!(
                    "NO_LEADER: node {} knows no leader (role {})",
                    self.node.node_id,
                    role_name(metrics.state)
                ))
                .into());
            };
            let channel = self
                .channels
                .channel(self.node.dial.address(leader_id, &address))
                .map_err(|e| ServiceError::ForwardFailed { leader_address: address.clone(), message: e })?;
            let mut call = Request::new(pb::HealthRequest {});
            call.set_timeout(HEALTH_TIMEOUT);
            let answer = tokio::time::timeout(HEALTH_TIMEOUT, AdminClient::new(channel).health(call))
                .await
                .map_err(|_| ServiceError::NoQuorum(format!("NO_QUORUM: leader {leader_id} did not answer in time")))??
                .into_inner();
            let remaining = HEALTH_TIMEOUT.saturating_sub(started.elapsed());
            self.node
                .raft
                .wait(Some(remaining))
                .applied_index_at_least(Some(answer.read_index), "health read index applied")
                .await
                .map_err(|_| {
                    ServiceError::NoQuorum(format!(
                        "NO_QUORUM: node {} did not apply index {} within {} ms",
                        self.node.node_id,
                        answer.read_index,
                        HEALTH_TIMEOUT.as_millis()
                    ))
                })?;
            answer.read_index
        };
        let leader_id = self.metrics().current_leader.unwrap_or(0);
        Ok(Response::new(pb::HealthResponse {
            node_id: self.node.node_id,
            leader_id,
            read_index,
            latency_us: started.elapsed().as_micros() as u64,
        }))
    }

    async fn key_list(&self, request: Request<pb::KeyListRequest>) -> Result<Response<pb::KeyListResponse>, Status> {
        let request = request.into_inner();
        let limit = page_limit(request.limit)?;
        // Validates the namespace like any call (the key prefix may be empty).
        convert::record_key(request.namespace.clone(), b"-".to_vec())?;
        let state = match pb::RecordState::try_from(request.state) {
            Ok(pb::RecordState::Unspecified) => None,
            Ok(pb::RecordState::Claimed) => Some(RecordStateFilter::Claimed),
            Ok(pb::RecordState::Completed) => Some(RecordStateFilter::Completed),
            Ok(pb::RecordState::Available) => Some(RecordStateFilter::Available),
            Err(_) => {
                return Err(ServiceError::Invalid(LimitViolation {
                    reason: "STATE_INVALID".to_string(),
                    message: format!("record state {} is not CLAIMED, COMPLETED or AVAILABLE", request.state),
                })
                .into())
            }
        };
        let page = self
            .read(move |reader| {
                let after = (!request.page_token.is_empty()).then_some(request.page_token.as_slice());
                reader.list_records(&request.namespace, &request.key_prefix, state, after, limit)
            })
            .await?;
        let applied = page.applied;
        Ok(Response::new(pb::KeyListResponse {
            records: page
                .records
                .iter()
                .map(|(key, record)| convert::record_view(key, record, applied.log_index, applied.ledger_time))
                .collect(),
            next_page_token: page.next_after_key.unwrap_or_default(),
            applied_index: applied.log_index,
        }))
    }

    async fn key_forget(
        &self,
        request: Request<pb::KeyOperatorRequest>,
    ) -> Result<Response<pb::KeyOperatorResponse>, Status> {
        let response = self.operator_command(request.into_inner(), Command::Forget).await?;
        if let Some(audit) = &response.audit {
            tracing::warn!(namespace = %audit.namespace, reason = %audit.reason, operator = %audit.operator, "an operator forgot a key");
        }
        Ok(Response::new(response))
    }

    async fn key_force_release(
        &self,
        request: Request<pb::KeyOperatorRequest>,
    ) -> Result<Response<pb::KeyOperatorResponse>, Status> {
        let response = self.operator_command(request.into_inner(), Command::ForceRelease).await?;
        if let Some(audit) = &response.audit {
            tracing::warn!(namespace = %audit.namespace, reason = %audit.reason, operator = %audit.operator, "an operator force-released a key");
        }
        Ok(Response::new(response))
    }

    async fn audit_list(
        &self,
        request: Request<pb::AuditListRequest>,
    ) -> Result<Response<pb::AuditListResponse>, Status> {
        let request = request.into_inner();
        let limit = page_limit(request.limit)?;
        let slot = u16::try_from(request.after_slot).map_err(|_| {
            ServiceError::Invalid(LimitViolation {
                reason: "SLOT_INVALID".to_string(),
                message: format!("after_slot {} is not a slot of an entry (at most 65535)", request.after_slot),
            })
        })?;
        let after = (request.after_log_index > 0).then_some((request.after_log_index, slot));
        let applied = self.node.reader.applied();
        let entries = self.read(move |reader| reader.audit(after, limit)).await?;
        Ok(Response::new(pb::AuditListResponse {
            entries: entries.iter().map(audit_to_pb).collect(),
            applied_index: applied.log_index,
        }))
    }

    async fn namespace_stats(
        &self,
        request: Request<pb::NamespaceStatsRequest>,
    ) -> Result<Response<pb::NamespaceStatsResponse>, Status> {
        let namespace = request.into_inner().namespace;
        convert::record_key(namespace.clone(), b"-".to_vec())?;
        let ns = namespace.clone();
        let stats = self.read(move |reader| reader.namespace_stats(&ns, NAMESPACE_SCAN_RECORDS_MAX)).await?;
        let now = stats.applied.ledger_time;
        let purge_lag_ms = stats
            .earliest_retention_deadline
            .filter(|deadline| *deadline <= now)
            .map_or(0, |deadline| now.as_ms().saturating_sub(deadline.as_ms()));
        Ok(Response::new(pb::NamespaceStatsResponse {
            namespace,
            claimed: stats.counts.claimed,
            completed: stats.counts.completed,
            available: stats.counts.available,
            record_bytes: stats.counts.record_bytes,
            oldest_live_claim_created_at_ms: stats.oldest_live_claim_created_at.map_or(0, |t| t.as_ms()),
            scanned_all: stats.scanned_all,
            purge_horizon_ms: stats.purge_horizon.as_ms(),
            purge_lag_ms,
            applied_index: stats.applied.log_index,
            ledger_time_ms: now.as_ms(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_for_a_new_node_name_every_member_and_join() {
        let members = vec![
            pb::MemberInfo { node_id: 1, address: "a:7101".into(), ..Default::default() },
            pb::MemberInfo { node_id: 4, address: "d:7104".into(), ..Default::default() },
        ];
        let flags = dedupd_flags_for(4, "d:7104", &members);
        assert!(flags.contains(&"--node-id=4".to_string()));
        assert!(flags.contains(&"--listen=0.0.0.0:7104".to_string()));
        assert!(flags.contains(&"--peers=1=a:7101,4=d:7104".to_string()));
        assert!(flags.contains(&"--join".to_string()));
    }

    #[test]
    fn page_limits_are_named() {
        assert_eq!(page_limit(0).unwrap(), PAGE_DEFAULT);
        assert_eq!(page_limit(7).unwrap(), 7);
        let error = page_limit(KEY_LIST_PAGE_MAX as u32 + 1).unwrap_err();
        assert!(error.to_string().contains("KEY_LIST_PAGE_MAX"), "{error}");
    }
}
