//! Durable storage of one node: the Raft log and the ledger state machine, both in one engine
//! database (one sled `Db` per process: its flush is Db-wide, and several Dbs in one process
//! invite sled's global-lock deadlocks).

mod backup;
mod engine;
mod inspect;
mod log;
mod snapshot_bytes;
mod state_machine;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use backup::open_snapshot_file;
pub use backup::restore_node;
pub use backup::RestoreError;
pub use backup::RestoredNode;
pub use backup::SnapshotFileReader;
pub use backup::MOVED_ASIDE_PREFIX;
pub use backup::SNAPSHOT_HEAD_BYTES_MAX;
pub use engine::Engine;
pub use engine::SledEngine;
pub use engine::Space;
pub use inspect::NamespaceStats;
pub use inspect::RecordPage;
pub use inspect::StateDigest;
pub use log::LogStore;
pub use snapshot_bytes::SnapshotBodyBytes;
pub use state_machine::record_storage_key;
pub use state_machine::AppliedState;
pub use state_machine::ApplyObserver;
pub use state_machine::LedgerReader;
pub use state_machine::NamespaceCounts;
pub use state_machine::ReadError;
pub use state_machine::SnapshotBuilder;
pub use state_machine::StateMachineStore;

/// Re-exported for listings: [`LedgerReader::list_records`] filters by it.
pub use crate::ledger::RecordStateFilter;

/// The folder of a data folder that holds the sled database (Raft log and ledger).
pub const SLED_DIR: &str = "sled";
/// The folder of a data folder that holds the snapshot file.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// Opens the node's storage under `data_dir` (`sled/` and `snapshot/`). Must be called inside a
/// tokio runtime (the log store starts its flusher task).
pub fn open(data_dir: &Path, observer: Option<Arc<dyn ApplyObserver>>) -> io::Result<(LogStore, StateMachineStore)> {
    std::fs::create_dir_all(data_dir)?;
    let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&data_dir.join(SLED_DIR))?);
    open_with_engine(engine, &data_dir.join(SNAPSHOT_DIR), observer)
}

/// The node's storage on any engine (the simulation's in-memory one), with snapshot files under
/// `snapshot_dir`. Must be called inside a tokio runtime (the log store starts its flusher task).
pub fn open_with_engine(
    engine: Arc<dyn Engine>,
    snapshot_dir: &Path,
    observer: Option<Arc<dyn ApplyObserver>>,
) -> io::Result<(LogStore, StateMachineStore)> {
    let log = LogStore::new(engine.clone());
    let state_machine = StateMachineStore::new(engine, snapshot_dir.to_path_buf(), observer)?;
    Ok((log, state_machine))
}

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod inspect_tests;
#[cfg(test)]
mod sled_model_tests;
#[cfg(test)]
mod suite_tests;
