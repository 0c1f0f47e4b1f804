//! Three nodes of the real code (`dedup_cluster::node::start_with`: openraft, the log and
//! state-machine stores, the proposer and the ledger clock) on [`MemEngine`]s, the simulated
//! network and simulated clocks; crash and restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use dedup_cluster::ledger::Record;
use dedup_cluster::ledger::RecordKey;
use dedup_cluster::node::ClusterNode;
use dedup_cluster::node::NodeConfig;
use dedup_cluster::node::RaftTiming;
use dedup_cluster::raft_types::*;
use dedup_cluster::store::ApplyObserver;
use dedup_cluster::store::Engine;
use dedup_cluster::store::Space;
use openraft::ServerState;
use rand::Rng;
use tokio::time::Instant;

use crate::clock::SimClock;
use crate::engine::MemEngine;
use crate::net::SimNet;
use crate::net::SimNetworkFactory;

pub const NODES: [NodeId; 3] = [1, 2, 3];

/// Counts snapshot installs (the state machine replaces the whole ledger).
#[derive(Default)]
pub struct InstallCounter {
    pub installs: AtomicU64,
}

impl ApplyObserver for InstallCounter {
    fn records_applied(&self, _records: &mut dyn Iterator<Item = (&RecordKey, Option<&Record>)>) {}

    fn ledger_replaced(&self) {
        self.installs.fetch_add(1, Ordering::Relaxed);
    }
}

struct Slot {
    clock: Arc<SimClock>,
    engine: Arc<MemEngine>,
    node: Option<ClusterNode>,
    observer: Arc<InstallCounter>,
    data_dir: PathBuf,
}

/// What the crashes of a run lost.
#[derive(Debug, Default, Clone, Copy)]
pub struct CrashStats {
    pub crashes: u64,
    pub unflushed_batches: u64,
    pub dropped_batches: u64,
}

pub struct SimCluster {
    pub net: Arc<SimNet>,
    timing: RaftTiming,
    slots: Mutex<BTreeMap<NodeId, Slot>>,
    crash_stats: Mutex<CrashStats>,
    /// Holds every node's snapshot directory; removed with the cluster.
    _dir: tempfile::TempDir,
}

impl SimCluster {
    pub fn new(net: Arc<SimNet>, timing: RaftTiming, origin: Instant) -> std::io::Result<SimCluster> {
        let dir = tempfile::Builder::new().prefix("dedup-sim-").tempdir()?;
        let slots = NODES
            .iter()
            .map(|id| {
                let slot = Slot {
                    clock: Arc::new(SimClock::new(origin)),
                    engine: Arc::new(MemEngine::new()),
                    node: None,
                    observer: Arc::new(InstallCounter::default()),
                    data_dir: dir.path().join(format!("node-{id}")),
                };
                (*id, slot)
            })
            .collect();
        Ok(SimCluster { net, timing, slots: Mutex::new(slots), crash_stats: Mutex::default(), _dir: dir })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts node `id` on whatever its disk holds (a no-op if it runs).
    pub async fn start(&self, id: NodeId) -> Result<(), String> {
        let (config, clock, observer, engine) = {
            let slots = self.lock();
            let slot = &slots[&id];
            if slot.node.is_some() {
                return Ok(());
            }
            let config = NodeConfig {
                node_id: id,
                peers: NODES.iter().map(|n| (*n, format!("sim-node-{n}"))).collect(),
                data_dir: slot.data_dir.clone(),
                timing: self.timing.clone(),
                dial: Default::default(),
                join: false,
            };
            (config, slot.clock.clone(), slot.observer.clone(), slot.engine.clone())
        };
        let network = SimNetworkFactory { from: id, net: self.net.clone() };
        let observer: Arc<dyn ApplyObserver> = observer;
        let engine: Arc<dyn Engine> = engine;
        let node = dedup_cluster::node::start_with(config, clock, Some(observer), network, engine)
            .await
            .map_err(|e| format!("starting node {id}: {e}"))?;
        self.net.node_up(id, node.raft.clone());
        self.lock().get_mut(&id).expect("a node slot").node = Some(node);
        Ok(())
    }

    /// `kill -9` of node `id`: its engine keeps only what was flushed plus a seeded prefix of
    /// the rest; its Raft is shut down. Returns false if it was not running.
    pub async fn crash(&self, id: NodeId, rng: &mut impl Rng) -> bool {
        let mode = rng.gen_range(0..3);
        let draw: u64 = rng.gen();
        let node = {
            let mut slots = self.lock();
            let slot = slots.get_mut(&id).expect("a node slot");
            let Some(node) = slot.node.take() else {
                return false;
            };
            // Drop everything unflushed, keep a random prefix of it, or keep it all (sled's
            // background flusher got there first).
            let (image, loss) = slot.engine.crash(|unflushed| match mode {
                0 => 0,
                1 => (draw % (unflushed as u64 + 1)) as usize,
                _ => unflushed,
            });
            slot.engine = Arc::new(image);
            let mut stats = self.crash_stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.crashes += 1;
            stats.unflushed_batches += loss.unflushed_batches as u64;
            stats.dropped_batches += loss.dropped_batches as u64;
            node
        };
        self.net.node_down(id);
        let _ = tokio::time::timeout(Duration::from_secs(10), node.raft.shutdown()).await;
        true
    }

    pub fn crash_stats(&self) -> CrashStats {
        *self.crash_stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn node(&self, id: NodeId) -> Option<ClusterNode> {
        self.lock().get(&id).and_then(|slot| slot.node.clone())
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.lock().iter().filter(|(_, slot)| slot.node.is_some()).map(|(id, _)| *id).collect()
    }

    pub fn down(&self) -> Vec<NodeId> {
        self.lock().iter().filter(|(_, slot)| slot.node.is_none()).map(|(id, _)| *id).collect()
    }

    pub fn clock(&self, id: NodeId) -> Arc<SimClock> {
        self.lock()[&id].clock.clone()
    }

    pub fn engine(&self, id: NodeId) -> Arc<MemEngine> {
        self.lock()[&id].engine.clone()
    }

    pub fn snapshot_installs(&self) -> u64 {
        self.lock().values().map(|slot| slot.observer.installs.load(Ordering::Relaxed)).sum()
    }

    pub fn metrics(&self, id: NodeId) -> Option<RaftMetrics> {
        self.node(id).map(|node| node.raft.metrics().borrow().clone())
    }

    /// The running node that believes it leads in the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        NODES
            .iter()
            .filter_map(|id| self.metrics(*id).map(|m| (*id, m)))
            .filter(|(_, m)| m.state == ServerState::Leader)
            .max_by_key(|(_, m)| m.current_term)
            .map(|(id, _)| id)
    }

    /// Waits until every node runs, one leader leads all of them in one term, and every node
    /// applied the leader's last log entry. Returns that index, or why not within `limit`.
    pub async fn converge(&self, limit: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.converged() {
                Ok(index) => return Ok(index),
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{last}; {}", self.describe()))
    }

    /// Each node's Raft state in one line (for failure reports).
    pub fn describe(&self) -> String {
        let nodes: Vec<String> = NODES
            .iter()
            .map(|id| match self.metrics(*id) {
                None => format!("node {id}: down"),
                Some(m) => format!(
                    "node {id}: {:?} ({:?}) term {} vote {} leader {:?} last_log {:?} applied {:?} purged {:?} \
                     snapshot {:?} replication {:?}",
                    m.state,
                    m.running_state,
                    m.current_term,
                    m.vote,
                    m.current_leader,
                    m.last_log_index,
                    m.last_applied.map(|l| l.index),
                    m.purged.map(|l| l.index),
                    m.snapshot.map(|l| l.index),
                    m.replication,
                ),
            })
            .collect();
        nodes.join("; ")
    }

    fn converged(&self) -> Result<u64, String> {
        let metrics: Vec<(NodeId, RaftMetrics)> = NODES
            .iter()
            .map(|id| self.metrics(*id).map(|m| (*id, m)).ok_or(format!("node {id} is down")))
            .collect::<Result<_, _>>()?;
        let leaders: Vec<&(NodeId, RaftMetrics)> =
            metrics.iter().filter(|(_, m)| m.state == ServerState::Leader).collect();
        let [(leader, leader_metrics)] = leaders.as_slice() else {
            return Err(format!("{} leaders", leaders.len()));
        };
        let last_log = leader_metrics.last_log_index.unwrap_or(0);
        for (id, m) in &metrics {
            if m.current_leader != Some(*leader) || m.current_term != leader_metrics.current_term {
                return Err(format!("node {id} follows {:?} in term {}", m.current_leader, m.current_term));
            }
            let applied = m.last_applied.map_or(0, |l| l.index);
            if applied != last_log {
                return Err(format!("node {id} applied {applied}, the leader's last log is {last_log}"));
            }
            let state_machine = self.node(*id).map_or(0, |n| n.reader.applied().log_index);
            if state_machine != last_log {
                return Err(format!("node {id}'s state machine is at {state_machine}, not {last_log}"));
            }
        }
        Ok(last_log)
    }

    /// Every pair of node `id`'s ledger space (records, deadline index, horizons, applied
    /// metadata) as its reads see it.
    pub fn ledger_dump(&self, id: NodeId) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.engine(id).dump(Space::Ledger)
    }

    /// Shuts every node down (end of a run).
    pub async fn shutdown(&self) {
        for id in NODES {
            let node = self.lock().get_mut(&id).and_then(|slot| slot.node.take());
            if let Some(node) = node {
                self.net.node_down(id);
                let _ = tokio::time::timeout(Duration::from_secs(10), node.raft.shutdown()).await;
            }
        }
    }
}
