//! openraft type configuration: what a log entry carries and what applying it answers.

use serde::Deserialize;
use serde::Serialize;

use crate::ledger::Command;
use crate::ledger::CommandResult;
use crate::ledger::LedgerTime;

pub type NodeId = u64;
/// A member of the cluster: `addr` is the `host:port` where the node serves gRPC (client, admin
/// and Raft peer services share one listener).
pub type Node = openraft::BasicNode;

/// The application data of one Raft entry: a batch of ledger commands stamped by the leader
/// with ledger time (DESIGN §5). Many concurrent client requests share one entry, so one leader
/// flush and one follower flush per entry cover all of them (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub time: LedgerTime,
    pub commands: Vec<Command>,
}

/// What applying one entry answered: one result per command, in order. Blank and membership
/// entries answer an empty list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EntryResults {
    pub results: Vec<CommandResult>,
    /// The ledger time the entry was applied at: `max(entry time, last applied time)`.
    pub ledger_time: LedgerTime,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = LedgerEntry,
        R = EntryResults,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::store::SnapshotBodyBytes,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
