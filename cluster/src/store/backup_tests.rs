//! Tests of restoring a pristine node from a snapshot file: the restored storage holds the
//! snapshot's ledger exactly (same state digest), starts with its log purged up to the snapshot
//! and a vote in the snapshot's term, and bad input or a used data folder is refused without
//! writing anything.

use std::collections::BTreeMap;

use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

use super::inspect_tests::block_on;
use super::inspect_tests::mixed_log;
use super::*;
use crate::raft_types::*;

/// A data folder whose node applied `mixed_log` and built a snapshot: the snapshot file's bytes
/// and the digest of the ledger it holds.
fn source_snapshot() -> (tempfile::TempDir, Vec<u8>, StateDigest) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (bytes, digest) = block_on(async {
        let (_log, mut state_machine) = open(dir.path(), None).expect("open the source");
        state_machine.apply(mixed_log()).await.expect("apply");
        let digest = state_machine.reader().state_digest().expect("a digest");
        let built = state_machine.get_snapshot_builder().await.build_snapshot().await.expect("a snapshot");
        let current = state_machine.get_current_snapshot().await.expect("read").expect("the file");
        assert_eq!(
            built.snapshot.into_bytes().expect("built body"),
            current.snapshot.into_bytes().expect("the file's body"),
            "the built body is the file's"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("snapshot"))
            .expect("the snapshot folder")
            .map(|entry| entry.expect("an entry").file_name())
            .collect();
        assert_eq!(names, ["current.snap"], "no temporary file is left behind");
        let reader = open_snapshot_file(&dir.path().join("snapshot")).expect("read").expect("a snapshot file");
        assert_eq!(reader.meta.last_log_id.map(|id| id.index), Some(digest.applied.log_index));
        let bytes = std::fs::read(dir.path().join("snapshot/current.snap")).expect("the file");
        assert_eq!(reader.size, bytes.len() as u64);
        (bytes, digest)
    });
    (dir, bytes, digest)
}

#[test]
fn a_restored_node_holds_the_snapshot_ledger_with_its_log_purged_and_a_vote_in_its_term() {
    let (_source, bytes, digest) = source_snapshot();
    let target = tempfile::tempdir().expect("a temporary directory");
    let data_dir = target.path().join("node-2");
    block_on(async {
        let restored = restore_node(&data_dir, 2, &bytes, None, false).await.expect("restore");
        assert_eq!(restored.last_log_id.index, digest.applied.log_index);
        assert_eq!(restored.voters, vec![1, 2]);
        assert_eq!(restored.members, BTreeMap::from([(1, "n1:7000".to_string()), (2, "n2:7000".to_string())]));
        assert!(restored.records > 0);
    });
    // What the node opens on its next start.
    block_on(async {
        let (mut log, mut state_machine) = open(&data_dir, None).expect("reopen");
        assert_eq!(state_machine.reader().state_digest().expect("a digest"), digest, "the snapshot's ledger, exactly");
        let (applied, membership) = state_machine.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|id| id.index), Some(digest.applied.log_index));
        assert_eq!(membership.membership().voter_ids().collect::<Vec<_>>(), vec![1, 2]);
        let vote = log.read_vote().await.expect("vote").expect("a vote is stored");
        assert_eq!(vote, Vote::new(applied.expect("applied").leader_id.term, 2));
        assert!(!vote.is_committed(), "a vote for itself that no one granted");
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, None, "no entries: openraft purges up to the snapshot on start");
        let snapshot = state_machine.get_current_snapshot().await.expect("read").expect("the snapshot file is kept");
        assert_eq!(snapshot.meta.last_log_id, applied, "it can be sent to a node that falls behind");
    });
}

#[test]
fn new_addresses_replace_the_members_addresses_and_must_name_every_member() {
    let (_source, bytes, _) = source_snapshot();
    let target = tempfile::tempdir().expect("a temporary directory");
    block_on(async {
        let partial = BTreeMap::from([(1, "a:1".to_string())]);
        let error = restore_node(&target.path().join("n1"), 1, &bytes, Some(&partial), false).await.unwrap_err();
        assert!(matches!(error, RestoreError::AddressesMismatch { .. }), "{error}");
        assert!(!target.path().join("n1").exists(), "nothing written");

        let moved = BTreeMap::from([(1, "new-1:7101".to_string()), (2, "new-2:7101".to_string())]);
        let restored = restore_node(&target.path().join("n1"), 1, &bytes, Some(&moved), false).await.expect("restore");
        assert_eq!(restored.members, moved);
        let (_log, mut state_machine) = open(&target.path().join("n1"), None).expect("reopen");
        let (_, membership) = state_machine.applied_state().await.expect("applied state");
        assert_eq!(membership.membership().get_node(&2).map(|n| n.addr.as_str()), Some("new-2:7101"));
    });
}

#[test]
fn bad_files_strangers_and_used_data_folders_are_refused_without_writing() {
    let (_source, bytes, _) = source_snapshot();
    let target = tempfile::tempdir().expect("a temporary directory");
    block_on(async {
        let error = restore_node(&target.path().join("n"), 3, &bytes, None, false).await.unwrap_err();
        assert!(matches!(error, RestoreError::NotAMember { node_id: 3, .. }), "{error}");

        let error = restore_node(&target.path().join("n"), 1, b"\x01not a snapshot", None, false).await.unwrap_err();
        assert!(matches!(error, RestoreError::NotASnapshot(_)), "{error}");
        let mut truncated = bytes.clone();
        truncated.truncate(bytes.len() - 10);
        let error = restore_node(&target.path().join("n"), 1, &truncated, None, false).await.unwrap_err();
        assert!(matches!(error, RestoreError::NotASnapshot(_)), "{error}");
        assert!(!target.path().join("n").exists(), "nothing written");

        std::fs::create_dir_all(target.path().join("used")).unwrap();
        std::fs::write(target.path().join("used/leftover"), b"x").unwrap();
        let error = restore_node(&target.path().join("used"), 1, &bytes, None, false).await.unwrap_err();
        assert!(matches!(error, RestoreError::DataDirNotEmpty(_)), "{error}");
        assert_eq!(std::fs::read_dir(target.path().join("used")).unwrap().count(), 1, "left as it was");

        // An empty folder is fine, also the root of a fresh ext4 volume.
        std::fs::create_dir_all(target.path().join("empty/lost+found")).unwrap();
        let restored = restore_node(&target.path().join("empty"), 1, &bytes, None, false).await.expect("restore");
        assert!(restored.moved_aside.is_none());

        // Asked to, a restore moves what the folder holds aside (an image without a shell
        // cannot empty a volume), and keeps it.
        let restored = restore_node(&target.path().join("used"), 1, &bytes, None, true).await.expect("restore");
        let aside = restored.moved_aside.expect("moved aside");
        assert!(aside.starts_with(target.path().join("used")), "{aside:?}");
        assert_eq!(std::fs::read(aside.join("leftover")).unwrap(), b"x", "kept, not deleted");
        // A used node folder: its old storage goes aside too, and the restored node opens.
        let again = restore_node(&target.path().join("used"), 1, &bytes, None, true).await.expect("restore again");
        let aside_again = again.moved_aside.expect("moved aside");
        assert!(aside_again.join("sled").is_dir() && aside_again.join("snapshot").is_dir(), "{aside_again:?}");
        let (_log, state_machine) = open(&target.path().join("used"), None).expect("reopen");
        assert!(state_machine.reader().total_counts().unwrap().records() > 0);
    });
}
