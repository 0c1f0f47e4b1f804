//! dedupd: one node of a dedup-ledger cluster. It serves the client API (`dedup.v1.Ledger`),
//! the admin API (`dedup.v1.Admin`) and the Raft peer transport on one gRPC port.

pub mod admin_service;
pub mod config;
pub mod convert;
pub mod error;
pub mod fail_stop;
pub mod forward;
pub mod hot_tier;
pub mod ledger_service;
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

/// Runs one node until `shutdown` resolves, then stops serving and stops Raft.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    // Bind before starting Raft: a port clash fails fast, and peers find us at once.
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    let commit_timeout = Duration::from_millis(config.commit_timeout_ms);
    let hot_tier = hot_tier::HotTier::new(config.hot_tier_bytes);
    let waiters = waiters::Waiters::default();
    let observer = waiters::NodeObserver { hot_tier: hot_tier.clone(), waiters: waiters.clone() };
    let node = dedup_cluster::node::start(
        NodeConfig {
            node_id: config.node_id,
            peers: config.peers.0.clone(),
            data_dir: config.data_dir.clone(),
            timing: RaftTiming {
                heartbeat_ms: config.heartbeat_ms,
                election_timeout_min_ms: config.election_timeout_ms,
                commit_timeout_ms: config.commit_timeout_ms,
                snapshot_logs_since_last: config.snapshot_logs,
            },
            dial: PeerDial::new(config.peer_dial.0.clone()),
        },
        Arc::new(SystemClock::default()),
        Some(Arc::new(observer)),
    )
    .await
    .context("starting the Raft node")?;
    fail_stop::watch(node.raft.clone());
    tracing::info!(node_id = config.node_id, listen = %config.listen, data_dir = %config.data_dir.display(), "dedupd serving");

    let local_duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ledger = LedgerServer::new(ledger_service::LedgerService::new(
        node.clone(),
        hot_tier.clone(),
        waiters.clone(),
        local_duplicates.clone(),
        commit_timeout,
    ))
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let admin = AdminServer::new(admin_service::AdminService::new(
        node.clone(),
        hot_tier,
        config.hot_tier_bytes,
        local_duplicates,
        waiters,
    ));
    let peer = RaftPeerService::new(node.node_id, node.raft.clone()).into_server();
    // tonic applies `tcp_nodelay` only to listeners it binds itself: set it on every accepted
    // connection, or Nagle's algorithm holds back the tail of large answers (~40 ms each).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        .add_service(ledger)
        .add_service(admin)
        .add_service(peer)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    fail_stop::begin_shutdown();
    if let Err(error) = node.raft.shutdown().await {
        tracing::warn!(%error, "stopping Raft");
    }
    served.context("serving gRPC")?;
    tracing::info!(node_id = config.node_id, "dedupd stopped");
    Ok(())
}
