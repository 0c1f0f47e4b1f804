//! Backups over the admin API: streaming a node's snapshot file to `dedupctl snapshot save`.
//! (Restoring from such a file is offline: `dedupd restore`, in [`crate::restore`].)

use dedup_cluster::raft_types::NodeId;
use dedup_proto::v1 as pb;
use tonic::Status;

use crate::error::ServiceError;

/// Bytes of file data in one SnapshotDownload message (well under the 4 MiB default message
/// limit of gRPC clients).
pub const SNAPSHOT_DOWNLOAD_CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of a slow reader: what one download holds in memory, besides the chunk
/// being read.
const SNAPSHOT_DOWNLOAD_CHUNKS_AHEAD: usize = 2;

pub type SnapshotChunks = tokio_stream::wrappers::ReceiverStream<Result<pb::SnapshotDownloadChunk, Status>>;

/// Streams an open snapshot file: its description, its bytes chunk by chunk as the client takes
/// them, then the SHA-256 of what was sent. Reads on a blocking thread that ends when the file
/// ends or the client goes away.
pub fn stream_snapshot_file(node_id: NodeId, snapshot: dedup_cluster::store::SnapshotFileReader) -> SnapshotChunks {
    use sha2::Digest;
    use std::io::Read;

    let (chunks, stream) = tokio::sync::mpsc::channel(SNAPSHOT_DOWNLOAD_CHUNKS_AHEAD);
    let last_log_id = snapshot.meta.last_log_id;
    let info = pb::SnapshotFileInfo {
        node_id,
        snapshot_index: last_log_id.map_or(0, |id| id.index),
        snapshot_term: last_log_id.map_or(0, |id| id.leader_id.term),
        size_bytes: snapshot.size,
        voter_ids: snapshot.meta.last_membership.membership().voter_ids().collect(),
    };
    tokio::task::spawn_blocking(move || {
        let send = |chunk: Result<pb::SnapshotDownloadChunk, Status>| chunks.blocking_send(chunk).is_ok();
        if !send(Ok(pb::SnapshotDownloadChunk { info: Some(info), ..Default::default() })) {
            return;
        }
        let mut file = snapshot.file;
        let mut hasher = sha2::Sha256::new();
        let mut sent: u64 = 0;
        loop {
            let mut data = Vec::with_capacity(SNAPSHOT_DOWNLOAD_CHUNK_BYTES);
            if let Err(error) = (&mut file).take(SNAPSHOT_DOWNLOAD_CHUNK_BYTES as u64).read_to_end(&mut data) {
                send(Err(ServiceError::Storage(format!("reading the snapshot file: {error}")).into()));
                return;
            }
            if data.is_empty() {
                break;
            }
            hasher.update(&data);
            sent += data.len() as u64;
            if !send(Ok(pb::SnapshotDownloadChunk { data, ..Default::default() })) {
                return;
            }
        }
        // The file is never written in place (a new one is renamed over it), so an open file
        // keeps its size: anything else is a storage fault, not a snapshot.
        if sent != snapshot.size {
            let message = format!("the snapshot file changed size while read ({sent} of {} bytes)", snapshot.size);
            send(Err(ServiceError::Storage(message).into()));
            return;
        }
        let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        send(Ok(pb::SnapshotDownloadChunk { sha256, ..Default::default() }));
    });
    tokio_stream::wrappers::ReceiverStream::new(stream)
}
