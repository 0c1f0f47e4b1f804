//! `grpc.health.v1`: liveness and readiness for Kubernetes probes and load balancers.
//!
//! - Service `""` (liveness) is SERVING while the process runs and answers: it never depends on
//!   quorum, so a partition does not get every pod restarted at once.
//! - Service `dedup.v1.Ledger` (readiness) is SERVING when this node can serve clients: it
//!   knows a leader (as leader: a quorum acknowledged it recently) and has applied what it knows
//!   to be committed, within [`READY_APPLY_LAG_ENTRIES_MAX`]. It turns NOT_SERVING when quorum is
//!   lost and as soon as shutdown begins.

use std::sync::atomic::Ordering;
use std::time::Duration;

use dedup_cluster::node::ClusterNode;
use openraft::ServerState;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The readiness service name (the client API's gRPC service).
pub const READINESS_SERVICE: &str = "dedup.v1.Ledger";
/// How often readiness is re-evaluated.
pub const READINESS_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// A node more than this many committed entries from having applied them is not ready.
pub const READY_APPLY_LAG_ENTRIES_MAX: u64 = 1_000;

/// Why this node is or is not ready; `None` when ready.
pub fn not_ready_reason(node: &ClusterNode, quorum_ack_max: Duration) -> Option<String> {
    let metrics = node.raft.metrics().borrow().clone();
    if metrics.current_leader.is_none() {
        return Some(format!("no leader known ({:?}, term {})", metrics.state, metrics.current_term));
    }
    match metrics.state {
        ServerState::Leader => {
            let since = metrics.millis_since_quorum_ack.unwrap_or(u64::MAX);
            if since > quorum_ack_max.as_millis() as u64 {
                return Some(format!("leader without quorum acknowledgement for {since} ms"));
            }
        }
        ServerState::Follower | ServerState::Learner => {}
        state => return Some(format!("{state:?}")),
    }
    let committed = node.committed.load(Ordering::Relaxed);
    let applied = node.reader.applied().log_index;
    let lag = committed.saturating_sub(applied);
    (lag > READY_APPLY_LAG_ENTRIES_MAX).then(|| format!("{lag} committed entries not applied yet"))
}

/// Keeps the readiness status current until `stopping` turns true, then sets NOT_SERVING.
pub async fn watch_readiness(
    node: ClusterNode,
    reporter: HealthReporter,
    quorum_ack_max: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let mut last: Option<bool> = None;
    let mut tick = tokio::time::interval(READINESS_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stopping.borrow() {
            reporter.set_service_status(READINESS_SERVICE, ServingStatus::NotServing).await;
            tracing::info!("readiness: NOT_SERVING (shutting down)");
            return;
        }
        let reason = not_ready_reason(&node, quorum_ack_max);
        let ready = reason.is_none();
        if last != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(READINESS_SERVICE, status).await;
            match &reason {
                None => tracing::info!("readiness: SERVING"),
                Some(reason) => tracing::info!(%reason, "readiness: NOT_SERVING"),
            }
            last = Some(ready);
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.changed() => {}
        }
    }
}
