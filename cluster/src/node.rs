//! Starting one Raft node: storage, network, openraft config and bootstrap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::network::RaftNetworkFactory;
use openraft::SnapshotPolicy;

use crate::clock::Clock;
use crate::clock::LedgerClock;
use crate::network::PeerDial;
use crate::network::PeerNetwork;
use crate::proposer::Proposer;
use crate::raft_types::*;
use crate::store;
use crate::store::ApplyObserver;
use crate::store::Engine;
use crate::store::LedgerReader;
use crate::store::LogStore;
use crate::store::StateMachineStore;

/// Raft timing for three nodes on two busy cores (research openraft-sled.md §9-§10).
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Heartbeats go out every tick (1.5 x this).
    pub heartbeat_ms: u64,
    /// Election timeout of node 1; node N waits `(N - 1) * ELECTION_STAGGER_MS` longer, so
    /// that two survivors can never draw the same timeout and split votes forever (openraft 0.9
    /// draws it once per process, openraft#1838).
    pub election_timeout_min_ms: u64,
    /// How long a proposal may wait for commit before its outcome is reported unknown.
    pub commit_timeout_ms: u64,
    /// A snapshot is built after this many entries since the last one; the log before it is
    /// then purged, keeping `SNAPSHOT_LOGS_KEPT` entries for lagging followers.
    pub snapshot_logs_since_last: u64,
}

/// How long sending a snapshot to a follower and its install there may take before the leader
/// retries it.
pub const SNAPSHOT_INSTALL_TIMEOUT_MS: u64 = 30_000;
/// Entries per AppendEntries (each at most ENTRY_BYTES_MAX, so at most 6 MiB per message).
pub const APPEND_ENTRIES_MAX: u64 = 64;
/// Entries kept behind a snapshot, so that a briefly lagging follower catches up from the log.
pub const SNAPSHOT_LOGS_KEPT: u64 = 1_000;

/// Spread of election timeouts between node ids. A follower that hears nothing campaigns after
/// its lease plus its timeout (openraft 0.9: `election_timeout_max + drawn timeout`), so two
/// neighbours fire `2 x 100 +- 100` ms apart, and they cannot tie forever (openraft draws each
/// timeout once per process, openraft#1838; a split vote repeats with a gap that grows by the
/// stagger each round).
///
/// A voter refuses votes for its own `election_timeout_max` after it last heard the leader (the
/// leader lease). The first survivor to campaign wins at once only if it fires after every other
/// survivor's lease ended: node 1 fires at `2 x base + range` at the earliest, node 3's lease ends
/// at `base + 2 x stagger + range`, so `base > 2 x stagger` for three nodes. With the old 300 ms
/// stagger and 500 ms base the first election after a leader crash was always refused and the
/// second won, about 1.5 s after the crash instead of 1 s (`scripts/measure-failover.sh`).
pub const ELECTION_STAGGER_MS: u64 = 100;
/// Default election timeout of node 1 (`--election-timeout-ms`): above `2 x ELECTION_STAGGER_MS`
/// so that the first election after a leader crash succeeds (see above).
pub const ELECTION_TIMEOUT_BASE_MS_DEFAULT: u64 = 400;
/// Width of each node's election-timeout range.
pub const ELECTION_RANGE_MS: u64 = 100;

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 100,
            election_timeout_min_ms: ELECTION_TIMEOUT_BASE_MS_DEFAULT,
            commit_timeout_ms: 5_000,
            snapshot_logs_since_last: 20_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// The initial members and the `host:port` each serves gRPC on. Must include this node.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub timing: RaftTiming,
    /// Addresses to dial for some peers instead of their membership address (`--peer-dial`).
    pub dial: PeerDial,
    /// A pristine node that joins a running cluster (`dedupctl member add`) must not form a
    /// cluster of its own: it waits, uninitialized, for the leader to replicate to it.
    pub join: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0} is not among the peers {1:?}")]
    NotAMember(NodeId, Vec<NodeId>),
    #[error("opening storage under {dir}: {source}")]
    Storage { dir: PathBuf, source: std::io::Error },
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("starting Raft: {0}")]
    Raft(String),
}

/// A running Raft node of the ledger.
#[derive(Clone)]
pub struct ClusterNode {
    pub node_id: NodeId,
    pub raft: Raft,
    pub reader: LedgerReader,
    pub proposer: Proposer,
    /// Raft log flushes since start (see `LogStore::flush_counter`).
    pub log_flushes: Arc<AtomicU64>,
    /// The last committed log index this node knows.
    pub committed: Arc<AtomicU64>,
    /// Where this node dials its peers (also for forwarding client calls to the leader).
    pub dial: PeerDial,
    /// The storage engine (Raft log and ledger).
    engine: Arc<dyn Engine>,
    /// The folder of this node's snapshot file.
    snapshot_dir: PathBuf,
}

impl ClusterNode {
    /// Makes everything written so far durable (appended entries already are; applied state
    /// rides on later flushes). Blocking: call at shutdown, after Raft stopped.
    pub fn flush_storage(&self) -> std::io::Result<()> {
        self.engine.flush()
    }

    /// Opens this node's current snapshot file (`None` before the first snapshot). Blocking.
    pub fn open_snapshot_file(&self) -> std::io::Result<Option<store::SnapshotFileReader>> {
        store::open_snapshot_file(&self.snapshot_dir)
    }
}

/// The shortest election timeout of `node_id` when node 1's is `base_ms`.
pub fn election_timeout_min_ms(base_ms: u64, node_id: NodeId) -> u64 {
    base_ms + (node_id.saturating_sub(1) % 8) * ELECTION_STAGGER_MS
}

/// The longest election timeout of `node_id`, which is also how long it refuses votes after it
/// last heard from a leader (openraft's leader lease).
pub fn election_timeout_max_ms(base_ms: u64, node_id: NodeId) -> u64 {
    election_timeout_min_ms(base_ms, node_id) + ELECTION_RANGE_MS
}

fn raft_config(node_id: NodeId, timing: &RaftTiming) -> Result<openraft::Config, NodeError> {
    let election_timeout_min = election_timeout_min_ms(timing.election_timeout_min_ms, node_id);
    let config = openraft::Config {
        cluster_name: "dedup-ledger".to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min,
        election_timeout_max: election_timeout_min + ELECTION_RANGE_MS,
        // One InstallSnapshot call of openraft covers the whole snapshot (network.rs splits it)
        // and the follower's install of it (research P-16): 1M records took seconds.
        install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT_MS,
        snapshot_max_chunk_size: crate::network::SNAPSHOT_CHUNK_BYTES as u64,
        max_payload_entries: APPEND_ENTRIES_MAX,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: SNAPSHOT_LOGS_KEPT.min(timing.snapshot_logs_since_last),
        purge_batch_size: 256.min(timing.snapshot_logs_since_last),
        ..Default::default()
    };
    config.validate().map_err(|e| NodeError::Config(e.to_string()))
}

/// Opens storage, starts Raft and, on a pristine node, forms the cluster from `peers`. The
/// `observer` sees every record the state machine writes (the server's hot tier).
///
/// Every pristine node initializes with the same membership, which openraft allows: the vote
/// decides one leader, so no manual bootstrap step is needed. A node with data skips this and
/// rejoins with what it has.
pub async fn start(
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn ApplyObserver>>,
) -> Result<ClusterNode, NodeError> {
    let raft_config = checked_raft_config(&config)?;
    let (log_store, state_machine) = store::open(&config.data_dir, observer)
        .map_err(|source| NodeError::Storage { dir: config.data_dir.clone(), source })?;
    let network = PeerNetwork::new(config.dial.clone());
    start_on(config, raft_config, clock, network, log_store, state_machine).await
}

/// [`start`] with an injected peer network and storage engine (the deterministic simulation,
/// `tests/sim`): the same Raft configuration, stores, bootstrap and proposer. Snapshot files
/// go to `<data_dir>/snapshot`; `engine` holds the log and the ledger.
pub async fn start_with<N: RaftNetworkFactory<TypeConfig>>(
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn ApplyObserver>>,
    network: N,
    engine: Arc<dyn Engine>,
) -> Result<ClusterNode, NodeError> {
    let raft_config = checked_raft_config(&config)?;
    let snapshot_dir = config.data_dir.join(store::SNAPSHOT_DIR);
    let (log_store, state_machine) = store::open_with_engine(engine, &snapshot_dir, observer)
        .map_err(|source| NodeError::Storage { dir: snapshot_dir.clone(), source })?;
    start_on(config, raft_config, clock, network, log_store, state_machine).await
}

fn checked_raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>, NodeError> {
    if !config.peers.contains_key(&config.node_id) {
        return Err(NodeError::NotAMember(config.node_id, config.peers.keys().copied().collect()));
    }
    Ok(Arc::new(raft_config(config.node_id, &config.timing)?))
}

async fn start_on<N: RaftNetworkFactory<TypeConfig>>(
    config: NodeConfig,
    raft_config: Arc<openraft::Config>,
    clock: Arc<dyn Clock>,
    network: N,
    log_store: LogStore,
    state_machine: StateMachineStore,
) -> Result<ClusterNode, NodeError> {
    let reader = state_machine.reader();
    let log_flushes = log_store.flush_counter();
    let committed = log_store.committed_index();
    let engine = log_store.engine();
    let raft = Raft::new(config.node_id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

    let members: BTreeMap<NodeId, Node> =
        config.peers.iter().map(|(id, addr)| (*id, Node { addr: addr.clone() })).collect();
    let initialized = raft.is_initialized().await.map_err(|e| NodeError::Raft(e.to_string()))?;
    if initialized {
        tracing::info!(node_id = config.node_id, "rejoining with existing data");
    } else if config.join {
        tracing::info!(node_id = config.node_id, "waiting to be added to a running cluster (--join)");
    } else {
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id = config.node_id, "initialized a new cluster from --peers"),
            // Another node's membership reached us first: the cluster exists.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!(node_id = config.node_id, "joined the cluster formed from --peers")
            }
            Err(error) => return Err(NodeError::Raft(format!("initialize: {error}"))),
        }
    }

    let ledger_clock = Arc::new(LedgerClock::new(clock));
    let proposer = Proposer::start(
        raft.clone(),
        ledger_clock,
        reader.clone(),
        Duration::from_millis(config.timing.commit_timeout_ms),
    );
    Ok(ClusterNode {
        node_id: config.node_id,
        raft,
        reader,
        proposer,
        log_flushes,
        committed,
        dial: config.dial,
        engine,
        snapshot_dir: config.data_dir.join(store::SNAPSHOT_DIR),
    })
}
