//! The simulated peer network: openraft's AppendEntries, Vote and InstallSnapshot calls are
//! delivered by calling the target node's `Raft` directly, after a postcard round trip through
//! `dedup_cluster::codec` (the bytes the real transport would send), with seeded delay and loss
//! and directed link cuts.
//!
//! - A cut link `a -> b` or a crashed target answers `Unreachable` at once (connection refused).
//! - A cut link `b -> a` lets the request through and loses the response (`NetworkError` after
//!   the call took effect): a one-way partition.
//! - A lost message is a `NetworkError` after the delay; a slow target is a `NetworkError` once
//!   openraft's hard TTL for the call has passed.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use dedup_cluster::codec;
use dedup_cluster::raft_types::*;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use rand::rngs::StdRng;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

/// Per-message delay and loss, set by the nemesis.
#[derive(Debug, Clone, Copy)]
pub struct LinkQuality {
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
    /// Probability that one leg (request or response) of a call is lost.
    pub loss: f64,
}

impl Default for LinkQuality {
    fn default() -> Self {
        LinkQuality { delay_ms_min: 1, delay_ms_max: 5, loss: 0.0 }
    }
}

/// What the network did, for the coverage report.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    pub delivered: u64,
    pub refused: u64,
    pub lost: u64,
    pub responses_lost: u64,
    pub timed_out: u64,
    pub snapshot_chunks: u64,
}

struct NetState {
    /// Running nodes. A crashed node is absent.
    nodes: BTreeMap<NodeId, Raft>,
    /// Directed cuts: `(from, to)` messages are not delivered.
    cut: BTreeSet<(NodeId, NodeId)>,
    quality: LinkQuality,
    rng: StdRng,
    stats: NetStats,
}

/// The network of one run. Shared by every node's [`SimNetworkFactory`].
pub struct SimNet {
    state: Mutex<NetState>,
}

enum Leg {
    Deliver(Duration),
    Refused,
    Lost(Duration),
}

impl SimNet {
    pub fn new(rng: StdRng) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(NetState {
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                quality: LinkQuality::default(),
                rng,
                stats: NetStats::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn node_up(&self, id: NodeId, raft: Raft) {
        self.lock().nodes.insert(id, raft);
    }

    pub fn node_down(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts `from -> to` (one direction).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    pub fn set_quality(&self, quality: LinkQuality) {
        self.lock().quality = quality;
    }

    /// Every link up, default delay, no loss.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.quality = LinkQuality::default();
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// Decides one leg of a call `from -> to` now.
    fn leg(&self, from: NodeId, to: NodeId) -> Leg {
        let mut state = self.lock();
        if state.cut.contains(&(from, to)) || !state.nodes.contains_key(&to) || !state.nodes.contains_key(&from) {
            state.stats.refused += 1;
            return Leg::Refused;
        }
        let quality = state.quality;
        let delay = Duration::from_millis(
            state.rng.gen_range(quality.delay_ms_min..=quality.delay_ms_max.max(quality.delay_ms_min)),
        );
        if quality.loss > 0.0 && state.rng.gen_bool(quality.loss.min(1.0)) {
            state.stats.lost += 1;
            return Leg::Lost(delay);
        }
        Leg::Deliver(delay)
    }

    fn target(&self, from: NodeId, to: NodeId) -> Option<Raft> {
        let state = self.lock();
        if state.cut.contains(&(from, to)) || !state.nodes.contains_key(&from) {
            return None;
        }
        state.nodes.get(&to).cloned()
    }

    fn count(&self, update: impl FnOnce(&mut NetStats)) {
        update(&mut self.lock().stats);
    }

    /// One call `from -> to`: request leg, the target's Raft, response leg.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        request: &Req,
        option: &RPCOption,
        handle: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize + DeserializeOwned,
        Resp: Serialize + DeserializeOwned,
        E: std::error::Error + Serialize + DeserializeOwned,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let started = tokio::time::Instant::now();
        let ttl = option.hard_ttl();
        // The bytes the real transport sends: a codec change that breaks a message fails here.
        let request: Req = round_trip(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match self.leg(from, to) {
            Leg::Refused => return Err(unreachable("link cut or node down")),
            Leg::Lost(delay) => {
                tokio::time::sleep(delay.min(ttl)).await;
                return Err(network_error("request lost"));
            }
            Leg::Deliver(delay) => tokio::time::sleep(delay).await,
        }
        // Whoever listens at `to` now gets the message (a restarted node included).
        let Some(raft) = self.target(from, to) else {
            return Err(unreachable("link cut or node down while the request was in flight"));
        };
        let remaining = ttl.saturating_sub(started.elapsed());
        let result = match tokio::time::timeout(remaining, handle(raft, request)).await {
            Ok(result) => result,
            Err(_) => {
                self.count(|s| s.timed_out += 1);
                return Err(network_error("deadline exceeded"));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            round_trip(&result).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match self.leg(to, from) {
            Leg::Deliver(delay) => tokio::time::sleep(delay).await,
            Leg::Refused | Leg::Lost(_) => {
                self.count(|s| s.responses_lost += 1);
                return Err(network_error("response lost"));
            }
        }
        self.count(|s| s.delivered += 1);
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Result<T, codec::CodecError> {
    codec::decode(&codec::encode(value)?)
}

fn unreachable<E: std::error::Error>(why: &str) -> RPCError<NodeId, Node, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why.to_string())))
}

fn network_error<E: std::error::Error>(why: &str) -> RPCError<NodeId, Node, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(why.to_string())))
}

/// The network as one node sees it.
#[derive(Clone)]
pub struct SimNetworkFactory {
    pub from: NodeId,
    pub net: Arc<SimNet>,
}

impl RaftNetworkFactory<TypeConfig> for SimNetworkFactory {
    type Network = SimConnection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> SimConnection {
        SimConnection { from: self.from, to: target, net: self.net.clone() }
    }
}

pub struct SimConnection {
    from: NodeId,
    to: NodeId,
    net: Arc<SimNet>,
}

/// Waits between retries to an unreachable peer, as the real transport does.
const BACKOFF_MS: [u64; 5] = [50, 100, 200, 400, 800];
const BACKOFF_MS_MAX: u64 = 1000;

impl RaftNetwork<TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.net
            .call(self.from, self.to, &rpc, &option, |raft, rpc| async move { raft.append_entries(rpc).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.net.count(|s| s.snapshot_chunks += 1);
        self.net
            .call(self.from, self.to, &rpc, &option, |raft, rpc| async move { raft.install_snapshot(rpc).await })
            .await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.net.call(self.from, self.to, &rpc, &option, |raft, rpc| async move { raft.vote(rpc).await }).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(BACKOFF_MS.into_iter().chain(std::iter::repeat(BACKOFF_MS_MAX)).map(Duration::from_millis))
    }
}
