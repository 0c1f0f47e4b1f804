//! The Raft peer transport over tonic: openraft messages as versioned postcard bytes inside
//! `dedup.v1.RaftPeer` calls (proto/dedup/v1/raft.proto).
//!
//! Client side: one lazily connected channel per peer address, shared by every replication
//! stream and every `new_client` call (openraft calls it per ReadIndex round). Errors map by
//! status code: UNAVAILABLE (refused, no route) is `Unreachable`, which makes openraft back off;
//! anything else is a `NetworkError`, retried on the next heartbeat; an error the peer's Raft
//! returned is a `RemoteError`, never disguised as a network error.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use dedup_proto::v1::raft_peer_client::RaftPeerClient;
use dedup_proto::v1::raft_peer_server::RaftPeer;
use dedup_proto::v1::raft_peer_server::RaftPeerServer;
use dedup_proto::v1::RaftReply;
use dedup_proto::v1::RaftRequest;
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
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::codec;
use crate::raft_types::*;

/// Largest peer message, either way. Above the largest AppendEntries (max_payload_entries times
/// ENTRY_BYTES_MAX) and the snapshot chunk size.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest piece of a snapshot in one InstallSnapshot call (see `install_snapshot`).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// How long dialling a peer may take before the call counts as unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Waits between retries to an unreachable peer: quick at first, then once a second.
const PEER_BACKOFF_MS: [u64; 5] = [50, 100, 200, 400, 800];
const PEER_BACKOFF_MS_MAX: u64 = 1000;

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

/// Where this node dials each peer. Normally the address the membership holds; a node may be
/// told other addresses for some peers (`dedupd --peer-dial`: a sidecar proxy, a NAT, or the
/// per-link fault proxies of the test suites). Only dialling changes: the membership, and the
/// leader address told to clients, stay as they are.
#[derive(Clone, Debug, Default)]
pub struct PeerDial(Arc<BTreeMap<NodeId, String>>);

impl PeerDial {
    pub fn new(overrides: BTreeMap<NodeId, String>) -> PeerDial {
        PeerDial(Arc::new(overrides))
    }

    /// The address to dial for `node`, whose membership address is `membership_address`.
    pub fn address<'a>(&'a self, node: NodeId, membership_address: &'a str) -> &'a str {
        self.0.get(&node).map_or(membership_address, String::as_str)
    }
}

/// Creates peer connections for openraft, caching one channel per address.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    dial: PeerDial,
}

impl PeerNetwork {
    pub fn new(dial: PeerDial) -> PeerNetwork {
        PeerNetwork { channels: Arc::default(), dial }
    }

    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("peer channel cache lock");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("bad peer address {address:?}: {e}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        let address = self.dial.address(target, &node.addr).to_string();
        let client = self.channel(&address).map(|channel| {
            RaftPeerClient::new(channel)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
        });
        PeerConnection { target, client }
    }
}

/// Calls to one peer.
pub struct PeerConnection {
    target: NodeId,
    client: Result<RaftPeerClient<Channel>, String>,
}

#[derive(Clone, Copy)]
enum PeerCall {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerCall {
    fn name(self) -> &'static str {
        match self {
            PeerCall::AppendEntries => "AppendEntries",
            PeerCall::Vote => "Vote",
            PeerCall::InstallSnapshot => "InstallSnapshot",
        }
    }
}

impl PeerConnection {
    async fn call<Req, Resp, E>(&mut self, call: PeerCall, request: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(message) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(message.clone()))))
            }
        };
        let payload = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if payload.len() > PEER_MESSAGE_BYTES_MAX - 1024 {
            // tonic would fail the body mid-stream and h2 report only a reset: say what happened.
            let error = std::io::Error::other(format!(
                "{} message of {} bytes exceeds PEER_MESSAGE_BYTES_MAX ({PEER_MESSAGE_BYTES_MAX})",
                call.name(),
                payload.len()
            ));
            tracing::warn!(target_node = self.target, bytes = payload.len(), "peer message too large");
            return Err(RPCError::Network(NetworkError::new(&error)));
        }
        let mut grpc_request = tonic::Request::new(RaftRequest { target_node_id: self.target, payload });
        grpc_request.set_timeout(option.hard_ttl());
        let reply = match call {
            PeerCall::AppendEntries => client.append_entries(grpc_request).await,
            PeerCall::Vote => client.vote(grpc_request).await,
            PeerCall::InstallSnapshot => client.install_snapshot(grpc_request).await,
        };
        let reply = match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Err(status) => return Err(RPCError::Network(NetworkError::new(&status))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(PeerCall::AppendEntries, &rpc, &option).await
    }

    /// openraft 0.9's chunked sender fills its chunk with `read_buf` into a `Vec`, which can grow
    /// past the configured chunk size (read from its source, not observed on the wire). Split
    /// any larger chunk here into SNAPSHOT_CHUNK_BYTES pieces at increasing offsets, only the last
    /// carrying `done`, so no InstallSnapshot message comes near PEER_MESSAGE_BYTES_MAX.
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        if rpc.data.len() <= SNAPSHOT_CHUNK_BYTES {
            return self.call(PeerCall::InstallSnapshot, &rpc, &option).await;
        }
        let InstallSnapshotRequest { vote, meta, offset, data, done } = rpc;
        let pieces = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES);
        let mut sent = 0usize;
        for (number, piece) in data.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
            let last = number + 1 == pieces;
            let request: InstallSnapshotRequest<TypeConfig> = InstallSnapshotRequest {
                vote,
                meta: meta.clone(),
                offset: offset + sent as u64,
                data: piece.to_vec(),
                done: done && last,
            };
            let response: InstallSnapshotResponse<NodeId> =
                self.call(PeerCall::InstallSnapshot, &request, &option).await?;
            // A follower with a newer vote refuses the leader: let openraft see it at once.
            if last || response.vote != vote {
                return Ok(response);
            }
            sent += piece.len();
        }
        unreachable!("a non-empty snapshot has a last piece")
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call(PeerCall::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            PEER_BACKOFF_MS.into_iter().chain(std::iter::repeat(PEER_BACKOFF_MS_MAX)).map(Duration::from_millis),
        )
    }
}

/// The receiving side: hands peer calls to the local Raft.
pub struct RaftPeerService {
    node_id: NodeId,
    raft: Raft,
    /// This node's leader lease (`election_timeout_max`): how long after a leader's last call it
    /// refuses votes.
    leader_lease: Duration,
    /// When a leader's AppendEntries or InstallSnapshot was last accepted here.
    last_leader_contact: Mutex<Instant>,
}

impl RaftPeerService {
    pub fn new(node_id: NodeId, raft: Raft, leader_lease: Duration) -> RaftPeerService {
        RaftPeerService { node_id, raft, leader_lease, last_leader_contact: Mutex::new(Instant::now()) }
    }

    fn leader_contact(&self) {
        *self.last_leader_contact.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
    }

    /// This node refused `candidate` only because its own log is newer, while its leader has been
    /// silent for a whole lease: the leader is gone, the candidate can never win, and only a node
    /// with the newest log can. Campaign now rather than after this node's own timeouts (up to
    /// ~1.5 s more), so a crashed leader's successor is elected in one round.
    ///
    /// openraft refused without adopting the candidate's term, so a campaign now would ask for
    /// that same term, which the candidate has voted itself; first this node votes for itself in
    /// the candidate's term (a vote for nobody else, so it only narrows what it may grant), then
    /// campaigns one term above. Liveness only: Raft is safe whoever campaigns and when, and a
    /// live leader keeps the lease fresh, so no follower does this while it leads, and a leader
    /// never does it.
    fn campaign_instead_of(&self, candidate: &VoteRequest<NodeId>, last_log_id: Option<openraft::LogId<NodeId>>) {
        tracing::info!(
            candidate = %candidate.vote,
            candidate_last_log_id = ?candidate.last_log_id,
            ?last_log_id,
            "refused a candidate with an older log while the leader is silent: campaigning"
        );
        let raft = self.raft.clone();
        let own_vote =
            VoteRequest::new(openraft::Vote::new(candidate.vote.leader_id().term, self.node_id), last_log_id);
        tokio::spawn(async move {
            let _ = raft.vote(own_vote).await;
            let _ = raft.trigger().elect().await;
        });
    }

    fn leader_silent_for_a_lease(&self) -> bool {
        self.last_leader_contact.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).elapsed() >= self.leader_lease
    }

    pub fn into_server(self) -> RaftPeerServer<RaftPeerService> {
        RaftPeerServer::new(self)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }

    fn open<T: DeserializeOwned>(&self, request: tonic::Request<RaftRequest>) -> Result<T, tonic::Status> {
        let request = request.into_inner();
        if request.target_node_id != self.node_id {
            // A reused address must not let this node vote or append as another node.
            return Err(tonic::Status::failed_precondition(format!(
                "WRONG_NODE: this is node {}, the call was meant for node {}",
                self.node_id, request.target_node_id
            )));
        }
        codec::decode(&request.payload).map_err(|e| tonic::Status::invalid_argument(format!("bad Raft payload: {e}")))
    }
}

fn reply<T: Serialize>(result: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    let payload = codec::encode(result).map_err(|e| tonic::Status::internal(format!("encoding a Raft reply: {e}")))?;
    Ok(tonic::Response::new(RaftReply { payload }))
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        let result = self.raft.append_entries(rpc).await;
        if matches!(result, Ok(ref response) if !matches!(response, AppendEntriesResponse::HigherVote(_))) {
            self.leader_contact();
        }
        reply(&result)
    }

    async fn vote(&self, request: tonic::Request<RaftRequest>) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = self.open(request)?;
        let candidate = rpc.clone();
        let result = self.raft.vote(rpc).await;
        if let Ok(response) = &result {
            if !response.vote_granted
                && response.last_log_id > candidate.last_log_id
                && self.leader_silent_for_a_lease()
                && !self.raft.metrics().borrow().state.is_leader()
            {
                self.campaign_instead_of(&candidate, response.last_log_id);
            }
        }
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(request)?;
        let leader_vote = rpc.vote;
        let result = self.raft.install_snapshot(rpc).await;
        if matches!(result, Ok(ref response) if response.vote == leader_vote) {
            self.leader_contact();
        }
        reply(&result)
    }
}
