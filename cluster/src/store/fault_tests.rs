//! Fail-stop (DESIGN §4.6) at the storage boundary: when the engine fails, the log store and the
//! state machine report a `StorageError` (which stops openraft) and never report durability.

use std::io;
use std::ops::Bound;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;

use super::*;
use crate::ledger::*;
use crate::raft_types::*;

/// A real engine that fails every call once `failing` is set, as a full or broken disk does, or
/// sets it itself after `writes_left` more writes, as a process killed mid-way would stop.
pub(super) struct FailingEngine {
    inner: Arc<dyn Engine>,
    failing: Arc<AtomicBool>,
    writes_left: std::sync::atomic::AtomicU64,
}

impl FailingEngine {
    pub(super) fn new(inner: Arc<dyn Engine>, failing: Arc<AtomicBool>) -> FailingEngine {
        FailingEngine { inner, failing, writes_left: u64::MAX.into() }
    }

    /// Lets `writes` writes through, then fails every call.
    pub(super) fn after_writes(inner: Arc<dyn Engine>, writes: u64) -> FailingEngine {
        FailingEngine { inner, failing: Arc::default(), writes_left: writes.into() }
    }

    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected: no space left on device"));
        }
        Ok(())
    }
}

impl Engine for FailingEngine {
    fn get(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.check()?;
        self.inner.get(space, key)
    }
    fn write(&self, space: Space, batch: engine::WriteBatch) -> io::Result<()> {
        if self.writes_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            self.failing.store(true, Ordering::SeqCst);
        }
        self.check()?;
        self.inner.write(space, batch)
    }
    fn scan(
        &self,
        space: Space,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check()?;
        self.inner.scan(space, from, to, limit)
    }
    fn last(&self, space: Space) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.check()?;
        self.inner.last(space)
    }
    fn flush(&self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
    fn size_on_disk(&self) -> io::Result<u64> {
        self.inner.size_on_disk()
    }
}

fn stores(dir: &std::path::Path) -> (LogStore, StateMachineStore, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let sled: Arc<dyn Engine> = Arc::new(SledEngine::open(&dir.join("sled")).unwrap());
    let engine: Arc<dyn Engine> = Arc::new(FailingEngine::new(sled, failing.clone()));
    let log = LogStore::new(engine.clone());
    let state_machine = StateMachineStore::new(engine, dir.join("snapshot"), None).unwrap();
    (log, state_machine, failing)
}

fn claim_entry(index: u64) -> Entry {
    let command = Command::Claim(ClaimCommand {
        key: RecordKey::new("ns", format!("k{index}")),
        owner: "o".into(),
        lease_ms: 1000,
        fingerprint: None,
        request_id: None,
        retention_ms: None,
    });
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LedgerEntry { time: LedgerTime(1_000), commands: vec![command] }),
    }
}

#[tokio::test]
async fn a_failing_disk_fails_votes_log_changes_and_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut state_machine, failing) = stores(dir.path());

    // Healthy: the vote is stored and an apply answers.
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    let answers = state_machine.apply([claim_entry(1)]).await.unwrap();
    assert!(matches!(answers[0].results[0], Ok(Answer::Claim(ClaimOutcome::Claimed { .. }))));

    failing.store(true, Ordering::SeqCst);
    assert!(log.save_vote(&Vote::new(2, 1)).await.is_err(), "a vote that is not on disk must be an error");
    let at = LogId::new(CommittedLeaderId::new(1, 1), 1);
    assert!(log.truncate(at).await.is_err(), "a failed truncate must be an error");
    assert!(log.purge(at).await.is_err(), "a failed purge must be an error");
    assert!(log.get_log_state().await.is_err(), "an unreadable log must be an error");
    assert!(state_machine.apply([claim_entry(2)]).await.is_err(), "an apply that cannot read or write must fail");

    // After the fault, what was stored before it is intact and nothing half-written shows.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
    let reader = state_machine.reader();
    assert_eq!(reader.applied().log_index, 1);
    assert!(reader.record(&RecordKey::new("ns", "k1")).unwrap().is_some());
    assert!(reader.record(&RecordKey::new("ns", "k2")).unwrap().is_none());
}
