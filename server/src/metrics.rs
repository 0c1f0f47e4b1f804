//! Prometheus metrics of one node (docs/metrics.md lists them all).
//!
//! Nothing on a request's path takes a lock for metrics: events are relaxed atomic adds on
//! counters created at start ([`ledger::LedgerMetrics`], [`grpc::GrpcMetrics`], the log store's
//! histograms in `dedup_cluster::metrics`); Raft, storage and hot-tier state is sampled when
//! Prometheus scrapes. A scrape encodes everything into the Prometheus text format 0.0.4
//! through a `prometheus_client` collector.

pub mod grpc;
pub mod http;
pub mod ledger;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dedup_cluster::metrics::HistogramSnapshot;
use dedup_cluster::node::ClusterNode;
use openraft::ServerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::MetricEncoder;
use prometheus_client::encoding::NoLabelSet;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use self::grpc::GrpcMetricsLayer;
pub use self::http::bind;
pub use self::http::serve;
pub use self::ledger::ClaimVia;
pub use self::ledger::CommandFacts;
pub use self::ledger::LedgerMetrics;
use crate::hot_tier::HotTier;

/// The metrics of one node: counters its services add to, and handles to sample at scrape.
pub struct Metrics {
    ledger: Arc<LedgerMetrics>,
    grpc: Arc<grpc::GrpcMetrics>,
    registry: Registry,
}

/// What the collector samples at scrape time.
struct Sources {
    node: ClusterNode,
    hot_tier: HotTier,
    hot_tier_budget_bytes: u64,
    ledger: Arc<LedgerMetrics>,
    grpc: Arc<grpc::GrpcMetrics>,
    leader_changes: Arc<AtomicU64>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("node_id", &self.node.node_id).finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of `node`. Starts the task that counts leader changes (it ends with Raft).
    pub fn new(node: ClusterNode, hot_tier: HotTier, hot_tier_budget_bytes: u64) -> Arc<Metrics> {
        let ledger = Arc::new(LedgerMetrics::default());
        let grpc = Arc::new(grpc::GrpcMetrics::new(grpc::methods_of(&grpc::served_descriptor_sets())));
        let leader_changes = Arc::new(AtomicU64::new(0));
        tokio::spawn(count_leader_changes(node.raft.metrics(), leader_changes.clone()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sources {
            node,
            hot_tier,
            hot_tier_budget_bytes,
            ledger: ledger.clone(),
            grpc: grpc.clone(),
            leader_changes,
        }));
        Arc::new(Metrics { ledger, grpc, registry })
    }

    /// The counters `LedgerService` adds to.
    pub fn ledger(&self) -> Arc<LedgerMetrics> {
        self.ledger.clone()
    }

    /// The layer that counts every gRPC call on the port.
    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer::new(self.grpc.clone())
    }

    /// Samples everything into the Prometheus text format. Reads sled: call it off the async
    /// workers.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Counts each new `(leader, term)` this node learns: a different leader, or the same node
/// elected again in a later term. The first leader seen after start counts too.
async fn count_leader_changes(
    mut raft_metrics: watch::Receiver<dedup_cluster::raft_types::RaftMetrics>,
    changes: Arc<AtomicU64>,
) {
    let mut known: Option<(u64, u64)> = None;
    loop {
        let seen = {
            let metrics = raft_metrics.borrow_and_update();
            metrics.current_leader.map(|leader| (leader, metrics.current_term))
        };
        if seen.is_some() && seen != known {
            known = seen;
            changes.fetch_add(1, Ordering::Relaxed);
        }
        if raft_metrics.changed().await.is_err() {
            return; // Raft stopped
        }
    }
}

/// A shutdown future shared by the gRPC server and the metrics endpoint.
#[derive(Clone)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

impl Shutdown {
    /// Watches `shutdown` (on a task of its own) for every [`Shutdown::signal`].
    pub fn new(shutdown: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (request, requested) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            request.send_replace(true);
        });
        Shutdown { requested }
    }

    /// Resolves once shutdown was requested.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut requested = self.requested.clone();
        async move {
            // An error means the watching task is gone (the runtime is stopping): stop too.
            let _ = requested.wait_for(|requested| *requested).await;
        }
    }
}

// --- encoding -------------------------------------------------------------------------------

fn descriptor<'a>(
    encoder: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    metric_type: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, metric_type)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: impl Into<f64>) -> std::fmt::Result {
    descriptor(encoder, name, help, MetricType::Gauge)?.encode_gauge(&value.into())
}

fn int_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    descriptor(encoder, name, help, MetricType::Gauge)?.encode_gauge(&value)
}

/// `name` without `_total`: the encoder appends it to counters.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    descriptor(encoder, name, help, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn labelled_counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut metric = descriptor(encoder, name, help, MetricType::Counter)?;
    for (labels, value) in series {
        metric.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn labelled_int_gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut metric = descriptor(encoder, name, help, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn encode_histogram(metric: &mut MetricEncoder, histogram: &HistogramSnapshot) -> std::fmt::Result {
    metric.encode_histogram::<NoLabelSet>(histogram.sum_seconds, histogram.count, &histogram.buckets, None)
}

fn histogram(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: &HistogramSnapshot) -> std::fmt::Result {
    encode_histogram(&mut descriptor(encoder, name, help, MetricType::Histogram)?, value)
}

fn flag(value: bool) -> u64 {
    u64::from(value)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_process(&mut encoder)?;
        self.encode_raft(&mut encoder)?;
        self.encode_ledger(&mut encoder)?;
        self.encode_hot_tier(&mut encoder)?;
        self.encode_grpc(&mut encoder)
    }
}

impl Sources {
    fn encode_process(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        labelled_int_gauge(
            encoder,
            "dedup_build_info",
            "Always 1; the label carries the dedupd version.",
            [([("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        int_gauge(encoder, "dedup_node_id", "This node's Raft id (--node-id).", self.node.node_id)
    }

    fn encode_raft(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        // Copy what is needed out of the watch channel; never hold its borrow longer.
        let (state, leader, term, last_log, snapshot, purged, quorum_ack_ms, replication) = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            (
                m.state,
                m.current_leader,
                m.current_term,
                m.last_log_index.unwrap_or(0),
                m.snapshot.map_or(0, |id| id.index),
                m.purged.map_or(0, |id| id.index),
                m.millis_since_quorum_ack,
                m.replication.clone(),
            )
        };
        let is_leader = state == ServerState::Leader;
        int_gauge(encoder, "dedup_raft_has_leader", "1 if this node knows a current leader.", flag(leader.is_some()))?;
        int_gauge(encoder, "dedup_raft_is_leader", "1 if this node is the leader.", flag(is_leader))?;
        counter(
            encoder,
            "dedup_raft_leader_changes",
            "New leaders this node learned of (a different node, or a new term).",
            self.leader_changes.load(Ordering::Relaxed),
        )?;
        int_gauge(encoder, "dedup_raft_term", "Current Raft term.", term)?;
        int_gauge(encoder, "dedup_raft_last_log_index", "Index of the last entry in this node's log.", last_log)?;
        int_gauge(
            encoder,
            "dedup_raft_commit_index",
            "Last log index this node knows committed (as openraft saved it).",
            self.node.committed.load(Ordering::Relaxed),
        )?;
        int_gauge(
            encoder,
            "dedup_raft_applied_index",
            "Last log index applied to this node's ledger.",
            self.node.reader.applied().log_index,
        )?;
        int_gauge(encoder, "dedup_raft_snapshot_index", "Last log index in this node's snapshot.", snapshot)?;
        int_gauge(encoder, "dedup_raft_purged_index", "Last log index purged from this node's log.", purged)?;
        let stats = self.node.proposer.stats();
        counter(
            encoder,
            "dedup_raft_entries_proposed",
            "Raft entries this node proposed that were applied.",
            stats.entries.load(Ordering::Relaxed),
        )?;
        counter(
            encoder,
            "dedup_raft_commands_proposed",
            "Commands carried by the entries this node proposed.",
            stats.commands.load(Ordering::Relaxed),
        )?;
        let ledger = self.ledger.counts();
        counter(
            encoder,
            "dedup_raft_proposals_committed",
            "Client proposals (a command or a batch) committed and applied through this node.",
            ledger.proposals_committed,
        )?;
        labelled_counter(
            encoder,
            "dedup_raft_proposals_failed",
            "Client proposals this node's proposer refused or could not commit, by reason.",
            ledger.proposals_failed.iter().map(|(reason, n)| ([("reason", *reason)], *n)),
        )?;
        counter(
            encoder,
            "dedup_raft_log_flushes",
            "Raft log flushes (fsyncs) since start.",
            self.node.log_flushes.load(Ordering::Relaxed),
        )?;
        let log = dedup_cluster::metrics::log();
        histogram(
            encoder,
            "dedup_raft_log_append_duration_seconds",
            "From a Raft log append until its entries are durable (write and group flush).",
            &log.append.snapshot(),
        )?;
        histogram(
            encoder,
            "dedup_raft_log_flush_duration_seconds",
            "One Raft log flush (fsync), whatever asked for it.",
            &log.flush.snapshot(),
        )?;
        if is_leader {
            if let Some(ms) = quorum_ack_ms {
                gauge(
                    encoder,
                    "dedup_raft_quorum_ack_age_seconds",
                    "Leader only: time since a quorum last acknowledged this leader.",
                    ms as f64 / 1e3,
                )?;
            }
            let followers: Vec<(String, u64)> = replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != self.node.node_id)
                .map(|(id, matched)| (id.to_string(), last_log.saturating_sub(matched.map_or(0, |m| m.index))))
                .collect();
            labelled_int_gauge(
                encoder,
                "dedup_raft_replication_lag_entries",
                "Leader only: entries in the leader's log a follower has not acknowledged.",
                followers.iter().map(|(id, lag)| ([("follower", id.as_str())], *lag)),
            )?;
        }
        Ok(())
    }

    fn encode_ledger(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let counts = self.ledger.counts();
        labelled_counter(
            encoder,
            "dedup_ledger_claims",
            "Claims this node answered, by answer and by how the answer was produced.",
            counts.claims.iter().map(|(answer, via, n)| ([("answer", *answer), ("via", *via)], *n)),
        )?;
        labelled_counter(
            encoder,
            "dedup_ledger_takeovers",
            "Claims granted over an earlier attempt, by how that attempt ended (leader-side).",
            counts.takeovers.iter().map(|(end, n)| ([("previous_end", *end)], *n)),
        )?;
        labelled_counter(
            encoder,
            "dedup_ledger_fenced",
            "Calls refused FENCED (a stale token), by call (leader-side).",
            counts.fenced.iter().map(|(call, n)| ([("call", *call)], *n)),
        )?;
        counter(
            encoder,
            "dedup_ledger_late_completions",
            "Completions accepted after their lease had lapsed (leader-side).",
            counts.late_completions,
        )?;
        counter(
            encoder,
            "dedup_ledger_outcome_bytes_completed",
            "Outcome payload bytes of completions that took effect (leader-side).",
            counts.outcome_bytes_completed,
        )?;
        match self.node.reader.total_counts() {
            Ok(records) => {
                labelled_int_gauge(
                    encoder,
                    "dedup_ledger_records",
                    "Records in this node's ledger, by state (as of its applied index).",
                    [("claimed", records.claimed), ("completed", records.completed), ("available", records.available)]
                        .map(|(state, n)| ([("state", state)], n)),
                )?;
                int_gauge(
                    encoder,
                    "dedup_ledger_record_bytes",
                    "Encoded bytes of the records' values in this node's ledger.",
                    records.record_bytes,
                )?;
            }
            Err(error) => tracing::warn!(%error, "reading the record counts for metrics"),
        }
        let ledger_time = self.node.reader.applied().ledger_time;
        match self.node.reader.earliest_retention_deadline() {
            Ok(deadline) => {
                let lag_ms = deadline.map_or(0, |deadline| deadline.ms_until(ledger_time));
                gauge(
                    encoder,
                    "dedup_ledger_purge_lag_seconds",
                    "Ledger time past the earliest retention deadline still waiting to be purged (0: none due).",
                    lag_ms as f64 / 1e3,
                )?;
            }
            Err(error) => tracing::warn!(%error, "reading the retention index for metrics"),
        }
        Ok(())
    }

    fn encode_hot_tier(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let stats = self.hot_tier.stats();
        counter(
            encoder,
            "dedup_hot_tier_hits",
            "Hot-tier lookups that found a COMPLETED record.",
            stats.hits.load(Ordering::Relaxed),
        )?;
        counter(
            encoder,
            "dedup_hot_tier_misses",
            "Hot-tier lookups that found nothing.",
            stats.misses.load(Ordering::Relaxed),
        )?;
        int_gauge(
            encoder,
            "dedup_hot_tier_bytes",
            "Bytes the hot tier's entries weigh.",
            self.hot_tier.weighted_bytes(),
        )?;
        int_gauge(encoder, "dedup_hot_tier_entries", "Records cached in the hot tier.", self.hot_tier.entries())?;
        int_gauge(
            encoder,
            "dedup_hot_tier_budget_bytes",
            "Byte budget of the hot tier (--hot-tier-bytes).",
            self.hot_tier_budget_bytes,
        )
    }

    fn encode_grpc(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let methods = self.grpc.counts();
        labelled_counter(
            encoder,
            "dedup_grpc_requests",
            "gRPC calls served on this node's port, by service, method and status code.",
            methods.iter().flat_map(|m| {
                m.codes.iter().map(move |(code, n)| {
                    ([("service", m.service.as_str()), ("method", m.method.as_str()), ("code", *code)], *n)
                })
            }),
        )?;
        let mut metric = descriptor(
            encoder,
            "dedup_grpc_request_duration_seconds",
            "gRPC call latency, from the request until its status went out, by service and method.",
            MetricType::Histogram,
        )?;
        for m in &methods {
            let labels = [("service", m.service.as_str()), ("method", m.method.as_str())];
            encode_histogram(&mut metric.encode_family(&labels)?, &m.latency)?;
        }
        Ok(())
    }
}
