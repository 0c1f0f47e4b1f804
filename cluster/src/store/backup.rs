//! Backups outside the cluster: reading a node's snapshot file to hand it out, and restoring a
//! pristine node's storage from such a file (how a whole cluster is restored).
//!
//! A restore writes into an empty data folder what a node that installed the snapshot from its
//! leader would hold: the ledger as of the snapshot's last log id, the snapshot file itself, and
//! a vote in the snapshot's term. openraft then starts the node with its log purged up to the
//! snapshot (its startup treats a state machine ahead of an empty log as purged up to it). The
//! vote matters: with the default vote (term 0) the first election of a restored cluster would
//! be in term 1, and its leader would append entries whose log ids sort before the snapshot's.

use std::collections::BTreeMap;
use std::io;
use std::io::Read;
use std::io::Seek;
use std::path::Path;
use std::path::PathBuf;

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::Membership;
use openraft::StoredMembership;

use super::engine::Engine;
use super::engine::SledEngine;
use super::log::save_vote_offline;
use super::snapshot_bytes::SnapshotBodyBytes;
use super::state_machine::decode_body;
use super::state_machine::StateMachineStore;
use super::state_machine::SNAPSHOT_FILE;
use crate::codec;
use crate::ledger::LedgerTime;
use crate::raft_types::*;

/// The head of a snapshot file read to find its meta: the meta (log id and membership) is a few
/// hundred bytes, so a file whose meta does not fit is not one of ours.
pub const SNAPSHOT_HEAD_BYTES_MAX: usize = 1 << 20;

/// A node's current snapshot file, opened: its meta, and the file from its first byte. The file
/// is replaced by renaming a new one over it, so an open file stays one whole snapshot while
/// it is read, however many snapshots are built meanwhile.
pub struct SnapshotFileReader {
    pub meta: SnapshotMeta,
    /// Bytes of the whole file (what a copy of it holds).
    pub size: u64,
    pub file: std::fs::File,
    /// Where the body starts in the file; it runs to the end.
    body_offset: u64,
}

impl SnapshotFileReader {
    /// The snapshot's body as a window of the file: nothing is read until it is.
    pub fn into_body(self) -> SnapshotBodyBytes {
        SnapshotBodyBytes::file_window(self.file, self.body_offset, self.size - self.body_offset)
    }
}

/// Opens the snapshot file under `snapshot_dir` (a data folder's `snapshot/`); `None` if the
/// node has not built or installed one yet. Blocking.
pub fn open_snapshot_file(snapshot_dir: &Path) -> io::Result<Option<SnapshotFileReader>> {
    let mut file = match std::fs::File::open(snapshot_dir.join(SNAPSHOT_FILE)) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let size = file.metadata()?.len();
    let mut head = Vec::with_capacity(SNAPSHOT_HEAD_BYTES_MAX.min(size as usize));
    (&mut file).take(SNAPSHOT_HEAD_BYTES_MAX as u64).read_to_end(&mut head)?;
    let (meta, rest) = codec::decode_prefix::<SnapshotMeta>(&head)
        .map_err(|e| io::Error::other(format!("the snapshot file's meta does not decode: {e}")))?;
    // The body follows as postcard bytes: its length, then itself, to the end of the file.
    let (body_len, body) = postcard::take_from_bytes::<usize>(rest)
        .map_err(|e| io::Error::other(format!("the snapshot file's body length does not decode: {e}")))?;
    let body_offset = (head.len() - body.len()) as u64;
    if body_offset.checked_add(body_len as u64) != Some(size) {
        return Err(io::Error::other(format!(
            "the snapshot file is {size} bytes, but its head says {body_offset} + a body of {body_len}"
        )));
    }
    file.rewind()?;
    Ok(Some(SnapshotFileReader { meta, size, file, body_offset }))
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("not a dedup-ledger snapshot file: {0}")]
    NotASnapshot(String),
    #[error("the snapshot holds no applied entries: there is nothing to restore")]
    Empty,
    #[error(
        "node {node_id} is not in the snapshot's membership (nodes {members:?}): restore each member's data \
         folder with its own id"
    )]
    NotAMember { node_id: NodeId, members: Vec<NodeId> },
    #[error(
        "the new addresses name nodes {given:?} but the snapshot's membership has nodes {members:?}: give an \
         address for each of them and for no other"
    )]
    AddressesMismatch { given: Vec<NodeId>, members: Vec<NodeId> },
    #[error(
        "data folder {0} is not empty: a restore writes only into an empty or missing folder (move its \
         contents aside first, or let the restore do it with --move-aside; they may be the only copy of \
         newer writes)"
    )]
    DataDirNotEmpty(PathBuf),
    #[error("writing the restored storage under {dir}: {source}")]
    Storage { dir: PathBuf, source: io::Error },
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct RestoredNode {
    /// The last log id the snapshot covers: the restored ledger is the ledger at this entry.
    pub last_log_id: LogId,
    pub voters: Vec<NodeId>,
    /// Every member (voters and learners) and the address the restored membership gives it.
    pub members: BTreeMap<NodeId, String>,
    pub records: u64,
    pub ledger_time: LedgerTime,
    /// Where the folder's earlier contents went (restores with `move_aside` of a used folder).
    pub moved_aside: Option<PathBuf>,
}

/// Entries of a data folder a restore ignores: a file system's own folder (the root of an ext4
/// volume has one), and what earlier restores moved aside.
fn ignored_by_restore(name: &str) -> bool {
    name == "lost+found" || name.starts_with(MOVED_ASIDE_PREFIX)
}

/// Name prefix of the folder a restore with `move_aside` moves a data folder's contents into.
pub const MOVED_ASIDE_PREFIX: &str = "before-restore-";

/// The entries of `data_dir` a restore would overwrite (none if it is missing).
fn data_dir_contents(data_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut contents = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !ignored_by_restore(&entry.file_name().to_string_lossy()) {
            contents.push(entry.path());
        }
    }
    Ok(contents)
}

/// Moves `contents` of `data_dir` into a new folder `before-restore-<unix ms>` inside it: the
/// old data is kept (it may hold writes newer than the snapshot), out of the node's way.
fn move_aside(data_dir: &Path, contents: &[PathBuf]) -> io::Result<PathBuf> {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut aside = data_dir.join(format!("{MOVED_ASIDE_PREFIX}{now_ms}"));
    let mut attempt = 1;
    while let Err(error) = std::fs::create_dir(&aside) {
        // Two restores within one millisecond: a name of its own.
        if error.kind() != io::ErrorKind::AlreadyExists || attempt >= 100 {
            return Err(error);
        }
        attempt += 1;
        aside = data_dir.join(format!("{MOVED_ASIDE_PREFIX}{now_ms}-{attempt}"));
    }
    for path in contents {
        let name = path.file_name().ok_or_else(|| io::Error::other("a data folder entry without a name"))?;
        std::fs::rename(path, aside.join(name))?;
    }
    Ok(aside)
}

/// Restores node `node_id`'s storage under `data_dir` (empty or missing; with `move_aside`,
/// what it holds is first moved into a `before-restore-*` folder inside it, never deleted)
/// from the bytes of a snapshot file (`current.snap` of any member). Every member of a cluster restored from one
/// file holds the same ledger, so the restored cluster starts where the snapshot was taken;
/// writes acknowledged after it are not in it. `addresses` replaces the members' addresses
/// (a cluster restored elsewhere); every member of the restored cluster must be given the same.
///
/// Checks the whole file before it writes anything. Must be called inside a tokio runtime.
pub async fn restore_node(
    data_dir: &Path,
    node_id: NodeId,
    snapshot_file: &[u8],
    addresses: Option<&BTreeMap<NodeId, String>>,
    move_aside_contents: bool,
) -> Result<RestoredNode, RestoreError> {
    let (mut meta, body): (SnapshotMeta, Vec<u8>) =
        codec::decode(snapshot_file).map_err(|e| RestoreError::NotASnapshot(e.to_string()))?;
    decode_body(&body).map_err(|e| RestoreError::NotASnapshot(format!("its body does not decode: {e}")))?;
    let last_log_id = meta.last_log_id.ok_or(RestoreError::Empty)?;
    let membership = meta.last_membership.membership().clone();
    let members: Vec<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    if membership.get_node(&node_id).is_none() {
        return Err(RestoreError::NotAMember { node_id, members });
    }
    if let Some(addresses) = addresses {
        let given: Vec<NodeId> = addresses.keys().copied().collect();
        if given != members {
            return Err(RestoreError::AddressesMismatch { given, members });
        }
        let nodes: BTreeMap<NodeId, Node> = addresses.iter().map(|(id, addr)| (*id, Node::new(addr))).collect();
        let readdressed = Membership::new(membership.get_joint_config().clone(), nodes);
        meta.last_membership = StoredMembership::new(*meta.last_membership.log_id(), readdressed);
    }
    let storage_error = |source: io::Error| RestoreError::Storage { dir: data_dir.to_path_buf(), source };
    let contents = data_dir_contents(data_dir).map_err(storage_error)?;
    let moved_aside = match (contents.is_empty(), move_aside_contents) {
        (true, _) => None,
        (false, false) => return Err(RestoreError::DataDirNotEmpty(data_dir.to_path_buf())),
        (false, true) => Some(move_aside(data_dir, &contents).map_err(storage_error)?),
    };
    let written = async {
        // No log store: it would start a flusher task that keeps the database open (and locked)
        // after the restore returns.
        std::fs::create_dir_all(data_dir)?;
        let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&data_dir.join(super::SLED_DIR))?);
        let mut state_machine = StateMachineStore::new(engine.clone(), data_dir.join(super::SNAPSHOT_DIR), None)?;
        state_machine
            .install_snapshot(&meta, Box::new(SnapshotBodyBytes::in_memory(body)))
            .await
            .map_err(io::Error::other)?;
        // A vote for itself in the snapshot's term, never granted to anyone: elections of the
        // restored cluster start at the next term (see the module comment).
        save_vote_offline(engine.as_ref(), &Vote::new(last_log_id.leader_id.term, node_id))?;
        let records = state_machine.reader().total_counts()?.records();
        let ledger_time = state_machine.reader().applied().ledger_time;
        io::Result::Ok((records, ledger_time))
    }
    .await;
    let (records, ledger_time) = match written {
        Ok(done) => done,
        Err(source) => {
            // Leave the folder as it was found (empty) rather than half restored.
            for part in [super::SLED_DIR, super::SNAPSHOT_DIR] {
                let _ = std::fs::remove_dir_all(data_dir.join(part));
            }
            return Err(storage_error(source));
        }
    };
    let restored_membership = meta.last_membership.membership();
    Ok(RestoredNode {
        last_log_id,
        voters: restored_membership.voter_ids().collect(),
        members: restored_membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
        records,
        ledger_time,
        moved_aside,
    })
}
