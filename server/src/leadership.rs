//! Handing leadership to another voter (`dedupctl leader transfer`, and SIGTERM on a leader).
//!
//! openraft 0.9 has no transfer API, and a follower refuses to vote while it hears from a live
//! leader (the leader lease, one election timeout). So the leader makes itself quiet and lets the
//! target win an ordinary election:
//! 1. hold new proposals (answered LEADER_TRANSFER, unwritten: clients retry elsewhere) and stop
//!    its own heartbeats and elections;
//! 2. wait until the target holds the whole log, so that it can win the vote;
//! 3. wait until enough voters' leases ran out for the target to win a vote (a follower refuses
//!    votes for its longest election timeout after it last heard from the leader), then ask the
//!    target to campaign (Admin.Campaign) once, and again only if no leader emerged after
//!    [`CAMPAIGN_WAIT`]: asking sooner would start a new term before the running vote finished
//!    (which livelocked transfers under load), until [`LEADER_TRANSFER_TIMEOUT`] ends, or until
//!    the target refused twice in a row (it is stopping too, or gone);
//! 4. whatever happened, switch heartbeats and elections back on and release the hold.
//!
//! Safety does not depend on any of this: it is an ordinary Raft election. The only cost of a
//! failed transfer is a pause of at most the timeout.

use std::time::Duration;

use dedup_cluster::node::ClusterNode;
use dedup_cluster::raft_types::NodeId;
use dedup_proto::v1 as pb;
use dedup_proto::v1::admin_client::AdminClient;
use openraft::ServerState;
use tokio::time::Instant;

use crate::forward::LeaderChannels;

/// The whole transfer, from the hold to a new leader, at most.
pub const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an election the target started may take before it is asked to campaign again.
pub const CAMPAIGN_WAIT: Duration = Duration::from_millis(1_500);
/// Margin past a voter's lease before the target campaigns.
const LEASE_MARGIN: Duration = Duration::from_millis(50);
/// How long the target may take to receive the rest of the log before it is asked to campaign.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one Campaign call.
const CAMPAIGN_CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Campaign calls in a row the target may refuse (connection refused, Raft stopped) before the
/// transfer gives up: a target that is stopping too (a whole cluster shut down at once) or gone
/// cannot take over, and waiting out [`LEADER_TRANSFER_TIMEOUT`] for it only delays this node's
/// own stop.
const CAMPAIGN_REFUSALS_MAX: u32 = 2;
/// Pause before asking again after a refused Campaign call.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("NOT_LEADER: node {this_node} is not the leader")]
    NotLeader { this_node: NodeId, leader_id: Option<NodeId>, leader_address: Option<String> },
    #[error("NO_TARGET: {0}")]
    NoTarget(String),
    #[error("TRANSFER_IN_PROGRESS: another leadership transfer is running on this node")]
    InProgress,
    #[error("TRANSFER_FAILED: {0}")]
    Failed(String),
}

/// A completed transfer.
#[derive(Debug, Clone)]
pub struct Transferred {
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub elapsed: Duration,
}

/// Moves leadership from this node (which must lead) to `to`, or to the most caught-up voter.
/// `election_base_ms` is `--election-timeout-ms` (node 1's election timeout), from which every
/// voter's lease follows.
pub async fn transfer_leadership(
    node: &ClusterNode,
    channels: &LeaderChannels,
    to: Option<NodeId>,
    election_base_ms: u64,
) -> Result<Transferred, TransferError> {
    let started = Instant::now();
    let metrics = node.raft.metrics().borrow().clone();
    if metrics.state != ServerState::Leader {
        let leader_address = metrics
            .current_leader
            .and_then(|id| metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone()));
        return Err(TransferError::NotLeader {
            this_node: node.node_id,
            leader_id: metrics.current_leader,
            leader_address,
        });
    }
    let membership = metrics.membership_config.membership().clone();
    let voters: Vec<NodeId> = membership.voter_ids().filter(|id| *id != node.node_id).collect();
    let matched = |id: NodeId| {
        metrics.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map_or(0, |log_id| log_id.index)
    };
    let target = match to {
        Some(id) if id == node.node_id => {
            return Err(TransferError::NoTarget(format!("node {id} already leads")));
        }
        Some(id) if !voters.contains(&id) => {
            return Err(TransferError::NoTarget(format!(
                "node {id} is not a voter; voters other than this leader: {voters:?}"
            )));
        }
        Some(id) => id,
        None => *voters
            .iter()
            .max_by_key(|id| (matched(**id), std::cmp::Reverse(**id)))
            .ok_or_else(|| TransferError::NoTarget("this leader is the only voter".to_string()))?,
    };
    let target_address = membership
        .get_node(&target)
        .map(|n| node.dial.address(target, &n.addr).to_string())
        .ok_or_else(|| TransferError::NoTarget(format!("node {target} has no address")))?;

    let hold = node.proposer.hold().ok_or(TransferError::InProgress)?;
    let runtime = node.raft.runtime_config();
    runtime.heartbeat(false);
    runtime.elect(false);
    // The target needs the votes of a majority, itself included: wait out the leases of the
    // (majority - 1) voters that release theirs first.
    let mut leases: Vec<u64> = membership
        .voter_ids()
        .filter(|id| *id != target)
        .map(|id| dedup_cluster::node::election_timeout_max_ms(election_base_ms, id))
        .collect();
    leases.sort_unstable();
    let majority = membership.voter_ids().count() / 2 + 1;
    let quiet = Duration::from_millis(leases.get(majority.saturating_sub(2)).copied().unwrap_or(0)) + LEASE_MARGIN;
    let result = hand_over(node, channels, target, &target_address, started, quiet).await;
    // Back to normal whatever happened: as a follower the timers are what let this node take
    // over again if the new leader fails; as a still-leader they keep it leading.
    let runtime = node.raft.runtime_config();
    runtime.heartbeat(true);
    runtime.elect(true);
    drop(hold);
    match result {
        Ok(term) => {
            let elapsed = started.elapsed();
            tracing::info!(
                from = node.node_id,
                to = target,
                term,
                elapsed_ms = elapsed.as_millis() as u64,
                "leadership transferred"
            );
            Ok(Transferred { from: node.node_id, to: target, term, elapsed })
        }
        Err(error) => {
            tracing::warn!(to = target, %error, "leadership transfer failed");
            Err(error)
        }
    }
}

async fn hand_over(
    node: &ClusterNode,
    channels: &LeaderChannels,
    target: NodeId,
    target_address: &str,
    started: Instant,
    quiet: Duration,
) -> Result<u64, TransferError> {
    let deadline = started + LEADER_TRANSFER_TIMEOUT;
    // 2. The target must hold every entry this leader has, or it cannot win the vote.
    let last_log = node.raft.metrics().borrow().last_log_index.unwrap_or(0);
    node.raft
        .wait(Some(CATCH_UP_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()))))
        .metrics(
            |m| {
                m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten()).map_or(0, |id| id.index)
                    >= last_log
            },
            "transfer target caught up",
        )
        .await
        .map_err(|e| TransferError::Failed(format!("node {target} did not catch up to index {last_log}: {e}")))?;

    // 3. Nothing reaches the followers now (no heartbeats, no proposals): once the leases ran
    // out, ask the target to campaign until it leads.
    tokio::time::sleep(quiet.min(deadline.saturating_duration_since(Instant::now()))).await;
    let channel = channels.channel(target_address).map_err(TransferError::Failed)?;
    let mut last_error = String::from("no answer yet");
    let mut refusals = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(TransferError::Failed(format!(
                "node {target} did not become leader within {} ms (last: {last_error})",
                LEADER_TRANSFER_TIMEOUT.as_millis()
            )));
        }
        let mut request = tonic::Request::new(pb::CampaignRequest {});
        request.set_timeout(CAMPAIGN_CALL_TIMEOUT);
        // Refused: the target cannot take over (its server is gone or its Raft stopped). A slow
        // answer is not a refusal: a loaded target gets the usual wait.
        let mut client = AdminClient::new(channel.clone());
        let refused = match tokio::time::timeout(CAMPAIGN_CALL_TIMEOUT, client.campaign(request)).await {
            Ok(Ok(_)) => false,
            Ok(Err(status)) => {
                last_error = format!("Campaign on node {target}: {}", status.message());
                // Every answer of our service carries an ErrorInfo: a status without one came
                // from the transport (connection refused or reset). A target whose Raft already
                // stopped answers SHUTTING_DOWN.
                tonic_types::StatusExt::get_details_error_info(&status)
                    .is_none_or(|info| info.reason == "SHUTTING_DOWN")
            }
            Err(_) => {
                last_error = format!("Campaign on node {target}: no answer");
                false
            }
        };
        if refused {
            refusals += 1;
            if refusals >= CAMPAIGN_REFUSALS_MAX {
                return Err(TransferError::Failed(format!(
                    "node {target} does not answer (stopping, or unreachable): {last_error}"
                )));
            }
            tokio::time::sleep(CAMPAIGN_RETRY.min(deadline.saturating_duration_since(Instant::now()))).await;
            continue;
        }
        refusals = 0;
        let wait = CAMPAIGN_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        let led = node
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader == Some(target) || m.current_leader.is_some_and(|l| l != node.node_id),
                "new leader",
            )
            .await;
        if let Ok(metrics) = led {
            if metrics.current_leader == Some(target) {
                return Ok(metrics.current_term);
            }
            return Err(TransferError::Failed(format!(
                "node {:?} won the election instead of node {target}",
                metrics.current_leader
            )));
        }
    }
}
