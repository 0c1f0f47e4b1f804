//! dedupd: one node of a dedup-ledger cluster. It serves the client API (`dedup.v1.Ledger`),
//! the admin API (`dedup.v1.Admin`) and the Raft peer transport on one gRPC port.

pub mod admin_service;
pub mod backup;
pub mod config;
pub mod convert;
pub mod error;
pub mod fail_stop;
pub mod forward;
pub mod health;
pub mod hot_tier;
pub mod leadership;
pub mod ledger_service;
pub mod metrics;
pub mod restore;
pub mod waiters;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dedup_cluster::clock::SystemClock;
use dedup_cluster::ledger::limits::GRPC_MESSAGE_BYTES_MAX;
use dedup_cluster::network::PeerDial;
use dedup_cluster::network::RaftPeerService;
use dedup_cluster::node::NodeConfig;
use dedup_cluster::node::RaftTiming;
use dedup_proto::v1::admin_server::AdminServer;
use dedup_proto::v1::ledger_server::LedgerServer;

use crate::config::Config;

/// Concurrent calls one client connection may have open (HTTP/2 streams).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// How long a leader shutting down tries to hand leadership over before it just stops.
pub const SHUTDOWN_TRANSFER_TIMEOUT: Duration = leadership::LEADER_TRANSFER_TIMEOUT;

/// Runs one node until `shutdown` resolves, then stops in order: readiness NOT_SERVING, hand
/// leadership over if leading, stop taking calls and let in-flight ones finish within
/// `--shutdown-grace-ms`, stop Raft, flush. A member is never removed from the cluster here.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let identity = config.identity().map_err(anyhow::Error::msg)?;
    // Bind before starting Raft: a port clash fails fast, and peers find us at once.
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    let metrics_listener = metrics::bind(config.metrics_listen.as_deref()).await?;
    let shutdown = metrics::Shutdown::new(shutdown);
    let commit_timeout = Duration::from_millis(config.commit_timeout_ms);
    let hot_tier = hot_tier::HotTier::new(config.hot_tier_bytes);
    let waiters = waiters::Waiters::default();
    let waiters_on_shutdown = waiters.clone();
    let observer = waiters::NodeObserver { hot_tier: hot_tier.clone(), waiters: waiters.clone() };
    let node = dedup_cluster::node::start(
        NodeConfig {
            node_id: identity.node_id,
            peers: identity.peers.clone(),
            data_dir: config.data_dir.clone(),
            timing: RaftTiming {
                heartbeat_ms: config.heartbeat_ms,
                election_timeout_min_ms: config.election_timeout_ms,
                commit_timeout_ms: config.commit_timeout_ms,
                snapshot_logs_since_last: config.snapshot_logs,
            },
            dial: PeerDial::new(config.peer_dial.0.clone()),
            join: identity.join,
        },
        Arc::new(SystemClock::default()),
        Some(Arc::new(observer)),
    )
    .await
    .context("starting the Raft node")?;
    fail_stop::watch(node.raft.clone());
    let metrics = metrics::Metrics::new(node.clone(), hot_tier.clone(), config.hot_tier_bytes);
    let metrics_server = metrics::serve(metrics_listener, metrics.clone(), shutdown.clone());
    tracing::info!(node_id = identity.node_id, listen = %config.listen, data_dir = %config.data_dir.display(), "dedupd serving");

    let local_duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ledger = LedgerServer::new(
        ledger_service::LedgerService::new(
            node.clone(),
            hot_tier.clone(),
            waiters.clone(),
            local_duplicates.clone(),
            commit_timeout,
        )
        .with_metrics(metrics.ledger()),
    )
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let channels = forward::LeaderChannels::default();
    let admin = AdminServer::new(admin_service::AdminService::new(
        node.clone(),
        hot_tier,
        config.hot_tier_bytes,
        local_duplicates,
        waiters,
        channels.clone(),
        config.election_timeout_ms,
    ));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    // A leader that no quorum acknowledged for two election timeouts has lost its followers.
    let quorum_ack_max = Duration::from_millis(2 * config.election_timeout_ms + 2 * config.heartbeat_ms);
    tokio::spawn(health::watch_readiness(node.clone(), health_reporter, quorum_ack_max, stopping));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dedup_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the gRPC reflection service")?;
    let leader_lease =
        Duration::from_millis(dedup_cluster::node::election_timeout_max_ms(config.election_timeout_ms, node.node_id));
    let peer = RaftPeerService::new(node.node_id, node.raft.clone(), leader_lease).into_server();
    // tonic applies `tcp_nodelay` only to listeners it binds itself: set it on every accepted
    // connection, or Nagle's algorithm holds back the tail of large answers (~40 ms each).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    let (stop_serving, stop_serving_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        .layer(metrics.grpc_layer())
        .add_service(ledger)
        .add_service(admin)
        .add_service(peer)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_serving_rx.await;
        });
    let mut serving = tokio::spawn(server);
    tokio::select! {
        () = shutdown.signal() => {}
        served = &mut serving => {
            // The server ended by itself: a transport failure, not a shutdown.
            fail_stop::begin_shutdown();
            let _ = node.raft.shutdown().await;
            return served.context("the gRPC server task")?.context("serving gRPC");
        }
    }

    // 1. Readiness NOT_SERVING: probes and balancers stop sending new calls here. Parked
    // claims answer IN_PROGRESS now rather than hold the grace period.
    let _ = stopping_tx.send(true);
    waiters_on_shutdown.close();
    // 2. A leader hands over first, so that writes pause for a transfer, not an election.
    let (leading, other_voters) = {
        let metrics = node.raft.metrics().borrow().clone();
        let others = metrics.membership_config.membership().voter_ids().filter(|id| *id != node.node_id).count();
        (metrics.state == openraft::ServerState::Leader, others)
    };
    if leading && other_voters > 0 {
        match leadership::transfer_leadership(&node, &channels, None, config.election_timeout_ms).await {
            Ok(done) => tracing::info!(
                to = done.to,
                elapsed_ms = done.elapsed.as_millis() as u64,
                "handed leadership over before stopping"
            ),
            Err(error) => tracing::warn!(%error, "could not hand leadership over; the others will elect a leader"),
        }
    }
    // 3. Stop taking calls; in-flight ones get the grace period.
    let _ = stop_serving.send(());
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let served = match tokio::time::timeout(grace, &mut serving).await {
        Ok(served) => served.context("the gRPC server task")?,
        Err(_) => {
            tracing::warn!(
                grace_ms = config.shutdown_grace_ms,
                "in-flight calls did not finish within the grace period"
            );
            serving.abort();
            Ok(())
        }
    };
    // 4. Stop Raft, then make everything applied durable (the log already is).
    fail_stop::begin_shutdown();
    if let Err(error) = node.raft.shutdown().await {
        tracing::warn!(%error, "stopping Raft");
    }
    if let Err(error) = node.flush_storage() {
        tracing::warn!(%error, "flushing storage at shutdown");
    }
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    served.context("serving gRPC")?;
    tracing::info!(node_id = identity.node_id, "dedupd stopped");
    Ok(())
}
