//! The `dedup.v1.Admin` service: this node's view of Raft.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dedup_cluster::node::ClusterNode;
use dedup_proto::v1 as pb;
use openraft::ServerState;
use tonic::Request;

use crate::hot_tier::HotTier;
use crate::waiters::Waiters;
use tonic::Response;
use tonic::Status;

pub struct AdminService {
    node: ClusterNode,
    hot_tier: HotTier,
    hot_tier_budget_bytes: u64,
    local_duplicates: Arc<AtomicU64>,
    waiters: Waiters,
}

impl AdminService {
    pub fn new(
        node: ClusterNode,
        hot_tier: HotTier,
        hot_tier_budget_bytes: u64,
        local_duplicates: Arc<AtomicU64>,
        waiters: Waiters,
    ) -> AdminService {
        AdminService { node, hot_tier, hot_tier_budget_bytes, local_duplicates, waiters }
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

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        // Clone out of the watch channel: never hold its borrow across an await (research P-11).
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let members: Vec<pb::Member> =
            membership.nodes().map(|(id, node)| pb::Member { node_id: *id, address: node.addr.clone() }).collect();
        let address_of = |id: u64| membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        let applied = self.node.reader.applied();
        Ok(Response::new(pb::NodeStatusResponse {
            node_id: self.node.node_id,
            address: address_of(self.node.node_id),
            role: role_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_address: metrics.current_leader.map(address_of).unwrap_or_default(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
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
        }))
    }
}
