//! openraft's own storage test suite against our sled log and state machine stores.

use openraft::testing::StoreBuilder;
use openraft::testing::Suite;

use super::*;
use crate::raft_types::StorageError;
use crate::raft_types::TypeConfig;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (log, state_machine) = open(dir.path(), None).expect("open the stores");
        Ok((dir, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(SledStoreBuilder).expect("openraft storage suite");
}
