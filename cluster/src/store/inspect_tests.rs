//! Tests of the operator reads on the sled state machine: the state digest across replicas
//! (applying entries, or installing a snapshot), the audit trail's bound, key listings, counts
//! and namespace stats.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::storage::RaftStateMachine;
use openraft::BasicNode;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::Membership;
use openraft::RaftSnapshotBuilder;

use super::state_machine::INSTALL_CHUNK_PAIRS;
use super::state_machine::META_INSTALLING;
use super::state_machine::SNAPSHOT_FILE;
use super::*;
use crate::codec;
use crate::ledger::limits::AUDIT_ENTRIES_MAX;
use crate::ledger::limits::AUDIT_PAGE_MAX;
use crate::ledger::limits::ENTRY_COMMANDS_MAX;
use crate::ledger::limits::KEY_LIST_PAGE_MAX;
use crate::ledger::limits::KEY_LIST_SCAN_FACTOR;
use crate::ledger::*;
use crate::raft_types::*;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal(index: u64, time_ms: u64, commands: Vec<Command>) -> Entry {
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(LedgerEntry { time: LedgerTime(time_ms), commands }) }
}

fn membership(index: u64) -> Entry {
    let nodes = BTreeMap::from([(1, BasicNode::new("n1:7000")), (2, BasicNode::new("n2:7000"))]);
    let config = Membership::new(vec![BTreeSet::from([1, 2])], nodes);
    Entry { log_id: log_id(index), payload: EntryPayload::Membership(config) }
}

fn claim(namespace: &str, key: &str, lease_ms: u64, retention_ms: Option<u64>) -> Command {
    Command::Claim(ClaimCommand {
        key: RecordKey::new(namespace, key),
        owner: "worker".to_string(),
        lease_ms,
        fingerprint: None,
        request_id: None,
        retention_ms,
    })
}

/// Completes the claim granted at `(index, slot)`.
fn complete(namespace: &str, key: &str, index: u64, slot: u16) -> Command {
    Command::Complete(CompleteCommand {
        key: RecordKey::new(namespace, key),
        token: FencingToken::new(index, slot),
        outcome: Outcome { kind: OutcomeKind::Succeeded, payload: format!("done {key}").into_bytes() },
        retention_ms: None,
    })
}

fn release(namespace: &str, key: &str, index: u64, slot: u16) -> Command {
    Command::Release(ReleaseCommand {
        key: RecordKey::new(namespace, key),
        token: FencingToken::new(index, slot),
        reason: ReleaseReason::Retryable,
        checkpoint: b"cp".to_vec(),
    })
}

fn operator(namespace: &str, key: &str) -> OperatorCommand {
    OperatorCommand { key: RecordKey::new(namespace, key), reason: "test".to_string(), operator: "ops".to_string() }
}

pub(super) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(future)
}

/// One replica's state machine on a temporary sled database.
struct Replica {
    dir: tempfile::TempDir,
    /// The store's engine, for tests that open the store again: sled's lock outlives a dropped
    /// `Db` for a moment (its flusher thread), so reopening the folder at once can fail.
    engine: Arc<dyn Engine>,
    store: StateMachineStore,
}

impl Replica {
    fn open() -> Replica {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&dir.path().join("sled")).expect("open sled"));
        let store = StateMachineStore::new(engine.clone(), dir.path().join("snapshot"), None).expect("open the store");
        Replica { dir, engine, store }
    }

    async fn apply(&mut self, entries: Vec<Entry>) -> Vec<EntryResults> {
        self.store.apply(entries).await.expect("the replica applies")
    }

    fn reader(&self) -> LedgerReader {
        self.store.reader()
    }

    fn digest(&self) -> StateDigest {
        self.reader().state_digest().expect("a digest")
    }
}

/// A log of every kind of change: a membership change, claims in two namespaces with short and
/// default retention, completes, releases, forgets of each state, force-releases, a purge.
pub(super) fn mixed_log() -> Vec<Entry> {
    let mut entries = vec![membership(1)];
    let mut claims = Vec::new();
    for i in 0..12 {
        claims.push(claim("orders", &format!("k{i:02}"), 60_000, (i % 2 == 0).then_some(1_000)));
    }
    for i in 0..4 {
        claims.push(claim("billing", &format!("b{i}"), 60_000, None));
    }
    entries.push(normal(2, 1_000, claims));
    // Slots 0..12 of entry 2 are the orders claims.
    let mut ends = Vec::new();
    for i in 0..8u16 {
        let key = format!("k{i:02}");
        ends.push(if i % 4 == 3 { release("orders", &key, 2, i) } else { complete("orders", &key, 2, i) });
    }
    entries.push(normal(3, 1_500, ends));
    entries.push(normal(
        4,
        1_600,
        vec![
            Command::Forget(operator("orders", "k00")), // COMPLETED
            Command::Forget(operator("orders", "k03")), // AVAILABLE
            Command::Forget(operator("orders", "k08")), // CLAIMED
            Command::ForceRelease(operator("orders", "k09")),
            Command::ForceRelease(operator("billing", "b0")),
            Command::Forget(operator("orders", "nothing")), // NO_RECORD
        ],
    ));
    // Short retentions end: the even keys completed at 1 500 are purged.
    entries.push(normal(5, 3_000, vec![claim("orders", "k00", 1_000, None)]));
    entries
}

#[test]
fn replicas_that_applied_the_same_index_have_the_same_digest_also_from_a_snapshot() {
    block_on(async {
        let log = mixed_log();
        let last = log.len() as u64;
        // One replica applies entry by entry, one applies the whole log in one call.
        let mut stepwise = Replica::open();
        for entry in log.clone() {
            stepwise.apply(vec![entry]).await;
        }
        let mut at_once = Replica::open();
        let answers = at_once.apply(log).await;
        assert!(answers.iter().flat_map(|a| &a.results).any(|r| matches!(r, Ok(Answer::Forgotten(_)))));
        assert!(stepwise.reader().purge_horizon("orders").unwrap() > LedgerTime(0), "the log purges");

        let digest = stepwise.digest();
        assert_eq!(digest.applied.log_index, last);
        assert_eq!(digest.applied, stepwise.reader().applied());
        assert!(digest.pairs > 20, "{digest:?}");
        assert_eq!(at_once.digest(), digest);

        // A third replica installs a snapshot of the first.
        let snapshot = stepwise.store.get_snapshot_builder().await.build_snapshot().await.expect("a snapshot");
        let mut installed = Replica::open();
        installed.store.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        assert_eq!(installed.digest(), digest);
        assert_eq!(installed.reader().total_counts().unwrap(), stepwise.reader().total_counts().unwrap());
        assert_eq!(installed.reader().audit(None, AUDIT_PAGE_MAX).unwrap().len(), 5);

        // A write changes the digest; every replica that applies it agrees again.
        let next = normal(last + 1, 4_000, vec![claim("orders", "fresh", 1_000, None)]);
        for replica in [&mut stepwise, &mut at_once, &mut installed] {
            replica.apply(vec![next.clone()]).await;
        }
        let after = stepwise.digest();
        assert_ne!(after.sha256, digest.sha256);
        assert_eq!(after.applied.log_index, last + 1);
        assert_eq!(after.pairs, digest.pairs + 1, "the new record");
        assert_eq!(at_once.digest(), after);
        assert_eq!(installed.digest(), after);
        // A blank entry moves only the applied index: the digest still changes.
        let blank = Entry { log_id: log_id(last + 2), payload: EntryPayload::Blank };
        stepwise.apply(vec![blank]).await;
        assert_ne!(stepwise.digest().sha256, after.sha256);
    });
}

#[test]
fn the_digest_is_of_one_applied_index_while_applies_go_on() {
    block_on(async {
        let mut replica = Replica::open();
        // Enough pairs for several scan chunks.
        for index in 1..=40u64 {
            let commands = (0..200).map(|i| claim("orders", &format!("k{index:03}-{i:03}"), 60_000, None)).collect();
            replica.apply(vec![normal(index, index, commands)]).await;
        }
        let expected = replica.digest();
        // Pin the point as the digest does, then apply while the point is held, and read it.
        let reader = replica.reader();
        let journal = reader.journals.pin();
        for index in 41..=45u64 {
            let commands = vec![
                Command::Forget(operator("orders", &format!("k{:03}-000", index - 40))),
                claim("orders", &format!("k{index:03}-new"), 60_000, None),
            ];
            replica.apply(vec![normal(index, index, commands)]).await;
        }
        let at_point = super::inspect::digest_at_point(reader.engine.as_ref(), &journal).unwrap();
        assert_eq!(at_point, expected, "the digest of the point pinned at index 40");
        drop(journal);
        let now = replica.digest();
        assert_ne!(now.sha256, expected.sha256, "the applies changed the ledger");
        assert_eq!(now.applied.log_index, 45);
    });
}

#[test]
fn the_audit_trail_keeps_the_newest_audit_entries_max_across_and_within_apply_calls() {
    block_on(async {
        let mut replica = Replica::open();
        let mut reference = MemoryLedger::default();
        // One key claimed and force-released over and over: one audit entry per pair.
        let pairs = ENTRY_COMMANDS_MAX / 2;
        let commands: Vec<Command> = (0..pairs)
            .flat_map(|_| [claim("orders", "hot", 60_000, None), Command::ForceRelease(operator("orders", "hot"))])
            .collect();
        let entries_per_call = AUDIT_ENTRIES_MAX / pairs / 4 + 1;
        let mut index = 0u64;
        // Four calls pass the limit across calls; the fifth appends more than the limit at once.
        for call_entries in [entries_per_call, entries_per_call, entries_per_call, entries_per_call, 80] {
            let mut entries = Vec::new();
            for _ in 0..call_entries {
                index += 1;
                entries.push(normal(index, index, commands.clone()));
                apply_entry(&mut reference, index, LedgerTime(index), &commands);
            }
            let answers = replica.apply(entries).await;
            assert!(answers.iter().flat_map(|a| &a.results).all(Result::is_ok));
            let reader = replica.reader();
            let mut trail = Vec::new();
            let mut after = None;
            loop {
                let page = reader.audit(after, AUDIT_PAGE_MAX).unwrap();
                let Some(last) = page.last() else { break };
                after = Some((last.log_index, last.slot));
                trail.extend(page);
            }
            let appended = index as usize * pairs;
            assert_eq!(trail.len(), appended.min(AUDIT_ENTRIES_MAX), "after {appended} appended");
            assert!(trail.iter().eq(reference.audit.iter()), "the oldest entries are dropped, in log order");
        }
        assert!(index as usize * pairs > 2 * AUDIT_ENTRIES_MAX);
        // Paging starts after the position given.
        let first_two = replica.reader().audit(None, 2).unwrap();
        let second = replica.reader().audit(Some((first_two[0].log_index, first_two[0].slot)), 1).unwrap();
        assert_eq!(second, first_two[1..]);
        let error = replica.reader().audit(None, AUDIT_PAGE_MAX + 1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("AUDIT_PAGE_MAX"), "{error}");
    });
}

/// "orders": `user-000`..`user-099` (COMPLETED if i % 3 == 0, AVAILABLE if 1, else CLAIMED) and
/// `admin-0`..`admin-4` (CLAIMED); neighbours "orderz" and "order" hold `user-` keys too.
async fn listing_replica() -> Replica {
    let mut replica = Replica::open();
    let mut claims: Vec<Command> = (0..100).map(|i| claim("orders", &format!("user-{i:03}"), 60_000, None)).collect();
    claims.extend((0..5).map(|i| claim("orders", &format!("admin-{i}"), 60_000, None)));
    claims.push(claim("orderz", "user-000", 60_000, None));
    claims.push(claim("order", "user-000", 60_000, None));
    replica.apply(vec![normal(1, 0, claims)]).await;
    let ends = (0..100u16)
        .filter_map(|i| match i % 3 {
            0 => Some(complete("orders", &format!("user-{i:03}"), 1, i)),
            1 => Some(release("orders", &format!("user-{i:03}"), 1, i)),
            _ => None,
        })
        .collect();
    replica.apply(vec![normal(2, 10, ends)]).await;
    replica
}

/// Every page of a listing, followed to the end: the records' keys and the page count.
fn list_all(
    reader: &LedgerReader,
    prefix: &[u8],
    state: Option<RecordStateFilter>,
    limit: usize,
) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    for pages in 1.. {
        let page = reader.list_records("orders", prefix, state, after.as_deref(), limit).unwrap();
        assert!(page.records.len() <= limit);
        for (key, record) in &page.records {
            assert_eq!(key.namespace, "orders");
            assert!(key.key.starts_with(prefix));
            assert!(state.is_none_or(|state| state.matches(record)));
            keys.push(String::from_utf8(key.key.clone()).unwrap());
        }
        match page.next_after_key {
            Some(next) => after = Some(next),
            None => return (keys, pages),
        }
    }
    unreachable!()
}

#[test]
fn a_listing_pages_through_a_prefix_in_key_order_within_its_namespace() {
    block_on(async {
        let replica = listing_replica().await;
        let reader = replica.reader();
        let expected: Vec<String> = (0..100).map(|i| format!("user-{i:03}")).collect();
        let (keys, pages) = list_all(&reader, b"user-", None, 30);
        assert_eq!(keys, expected);
        assert_eq!(pages, 4);
        // The whole namespace, in byte order: admin- before user-.
        let (keys, _) = list_all(&reader, b"", None, KEY_LIST_PAGE_MAX);
        assert_eq!(keys.len(), 105);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(keys[0], "admin-0");
        // An after_key before the prefix starts at the prefix; one past it ends the listing.
        let page = reader.list_records("orders", b"user-", None, Some(b"a"), 2).unwrap();
        assert_eq!(page.records[0].0.key, b"user-000");
        let page = reader.list_records("orders", b"user-", None, Some(b"user-099"), 2).unwrap();
        assert!(page.records.is_empty() && page.next_after_key.is_none());
        assert_eq!(page.applied.log_index, 2);
    });
}

#[test]
fn a_listing_filtered_by_state_returns_only_that_state_and_bounds_its_scan() {
    block_on(async {
        let replica = listing_replica().await;
        let reader = replica.reader();
        for (state, rest) in
            [(RecordStateFilter::Completed, 0), (RecordStateFilter::Available, 1), (RecordStateFilter::Claimed, 2)]
        {
            let expected: Vec<String> = (0..100).filter(|i| i % 3 == rest).map(|i| format!("user-{i:03}")).collect();
            let (keys, _) = list_all(&reader, b"user-", Some(state), 7);
            assert_eq!(keys, expected, "{state:?}");
        }
        // One COMPLETED record after 200 CLAIMED ones: a page of one scans at most
        // KEY_LIST_SCAN_FACTOR records, comes back empty and says where to go on.
        let mut replica = replica;
        let claims = (0..201).map(|i| claim("orders", &format!("rare-{i:03}"), 60_000, None)).collect();
        replica.apply(vec![normal(3, 20, claims)]).await;
        replica.apply(vec![normal(4, 30, vec![complete("orders", "rare-200", 3, 200)])]).await;
        let reader = replica.reader();
        let first = reader.list_records("orders", b"rare-", Some(RecordStateFilter::Completed), None, 1).unwrap();
        assert!(first.records.is_empty());
        assert_eq!(first.next_after_key, Some(format!("rare-{:03}", KEY_LIST_SCAN_FACTOR - 1).into_bytes()));
        let (keys, pages) = list_all(&reader, b"rare-", Some(RecordStateFilter::Completed), 1);
        assert_eq!(keys, vec!["rare-200"]);
        // Four bounded scans reach rare-200; its page is full, so a fifth call finds the end.
        assert_eq!(pages, 201usize.div_ceil(KEY_LIST_SCAN_FACTOR) + 1);
    });
}

#[test]
fn a_listing_outside_its_limits_is_invalid_input_naming_the_limit() {
    block_on(async {
        let replica = listing_replica().await;
        let reader = replica.reader();
        for (namespace, prefix, limit, named) in [
            ("orders", &b""[..], 0, "KEY_LIST_PAGE_MAX"),
            ("orders", &b""[..], KEY_LIST_PAGE_MAX + 1, "KEY_LIST_PAGE_MAX"),
            ("not a namespace", &b""[..], 1, "[A-Za-z0-9._-]"),
            ("orders", &[b'k'; 513][..], 1, "KEY_BYTES_MAX"),
        ] {
            let error = reader.list_records(namespace, prefix, None, None, limit).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains(named), "{error}");
        }
        assert_eq!(reader.namespace_counts("no/slash").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    });
}

#[test]
fn counts_and_namespace_stats_describe_the_namespace() {
    block_on(async {
        let mut replica = listing_replica().await;
        let reader = replica.reader();
        let counts = reader.namespace_counts("orders").unwrap();
        assert_eq!((counts.completed, counts.available, counts.claimed), (34, 33, 33 + 5));
        assert!(counts.record_bytes > 105 * 20, "{counts:?}");
        let total = reader.total_counts().unwrap();
        assert_eq!(total.claimed, counts.claimed + 2, "orderz and order hold a claim each");
        assert_eq!(reader.namespace_counts("empty").unwrap(), NamespaceCounts::default());

        // Live claims created at 0 (lease to 60 000) and at 40 (lease to 40 100, lapsing first).
        replica.apply(vec![normal(3, 40, vec![claim("orders", "late", 100, Some(1_000))])]).await;
        let stats = reader.namespace_stats("orders", 10_000).unwrap();
        assert!(stats.scanned_all);
        assert_eq!(stats.counts, reader.namespace_counts("orders").unwrap());
        assert_eq!(stats.oldest_live_claim_created_at, Some(LedgerTime(0)));
        assert_eq!(stats.applied.log_index, 3);
        assert_eq!(stats.purge_horizon, LedgerTime(0));
        // Every completed and released record is retained for the default 24 h from time 10.
        assert_eq!(stats.earliest_retention_deadline, Some(LedgerTime(10 + limits::RETENTION_MS_DEFAULT)));
        // A budget smaller than the namespace stops early and says so.
        let partial = reader.namespace_stats("orders", 3).unwrap();
        assert!(!partial.scanned_all);
        assert_eq!(partial.counts, stats.counts, "counts are kept, not scanned");
        let exact = reader.namespace_stats("orders", 107).unwrap();
        assert!(exact.scanned_all, "a budget of exactly the namespace's records reaches the end");

        // Once the claims made at 0 lapse, the oldest live one is the later claim of "late"...
        let mut commands = vec![claim("orders", "later", 60_000, None)];
        commands.push(claim("orders", "late", 60_000, None));
        replica.apply(vec![normal(4, 60_000, commands)]).await;
        let stats = reader.namespace_stats("orders", 10_000).unwrap();
        assert_eq!(stats.oldest_live_claim_created_at, Some(LedgerTime(40)), "'late' was created at 40");
        let empty = reader.namespace_stats("empty", 10).unwrap();
        assert_eq!((empty.oldest_live_claim_created_at, empty.scanned_all), (None, true));
    });
}

/// Entries `first..` that claim `count` keys `{prefix}{i:05}` in `namespace`, 200 per entry.
fn many_claims(first: u64, namespace: &str, prefix: &str, count: usize) -> Vec<Entry> {
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i:05}")).collect();
    keys.chunks(200)
        .enumerate()
        .map(|(n, chunk)| {
            let index = first + n as u64;
            normal(index, index, chunk.iter().map(|key| claim(namespace, key, 60_000, None)).collect())
        })
        .collect()
}

/// A leader's ledger of several install chunks (9,000 claimed records), and a follower's that diverged from it: keys before, between and after the leader's,
/// some the same, some in a namespace the leader does not have.
fn leader_and_diverged_follower() -> (Replica, Replica) {
    block_on(async {
        let mut leader = Replica::open();
        let mut log = vec![membership(1)];
        log.extend(many_claims(2, "orders", "k", 9_000));
        leader.apply(log).await;
        let mut follower = Replica::open();
        let mut log = vec![membership(1)];
        log.extend(many_claims(2, "orders", "k", 3_000));
        log.extend(many_claims(17, "orders", "k0", 6_000)); // between and among the leader's keys
        log.extend(many_claims(47, "zzz", "z", 1_500)); // after every key of the leader
        follower.apply(log).await;
        assert_ne!(follower.digest().sha256, leader.digest().sha256);
        (leader, follower)
    })
}

#[test]
fn an_install_over_a_diverged_ledger_of_many_chunks_leaves_exactly_the_snapshot() {
    let (leader, mut follower) = leader_and_diverged_follower();
    block_on(async {
        let mut leader = leader;
        let snapshot = leader.store.get_snapshot_builder().await.build_snapshot().await.expect("a snapshot");
        let digest = leader.digest();
        assert!(digest.pairs > 2 * INSTALL_CHUNK_PAIRS as u64, "several chunks: {digest:?}");
        // Received as openraft receives it: chunks written into what begin_receiving_snapshot gave.
        let mut sent = snapshot.snapshot;
        let mut received = follower.store.begin_receiving_snapshot().await.expect("begin receiving");
        let mut chunk = vec![0u8; 4 * 1024];
        loop {
            let read = tokio::io::AsyncReadExt::read(&mut sent, &mut chunk).await.expect("read a chunk");
            if read == 0 {
                break;
            }
            tokio::io::AsyncWriteExt::write_all(&mut received, &chunk[..read]).await.expect("write a chunk");
        }
        assert!(received.len() > 2 * chunk.len() as u64, "several received chunks");
        follower.store.install_snapshot(&snapshot.meta, received).await.expect("install");
        assert_eq!(follower.digest(), digest, "the follower holds the leader's ledger, nothing else");
        let left: Vec<_> = std::fs::read_dir(follower.dir.path().join("snapshot"))
            .expect("snapshot folder")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(SNAPSHOT_FILE)], "the received body left no file");
        assert_eq!(follower.reader().total_counts().unwrap(), leader.reader().total_counts().unwrap());
        assert_eq!(follower.reader().applied(), leader.reader().applied());
    });
}

#[test]
fn an_install_a_crash_interrupted_is_finished_when_the_node_opens() {
    let (leader, follower) = leader_and_diverged_follower();
    let Replica { dir, engine: inner, store } = follower;
    drop(store);
    block_on(async {
        let mut leader = leader;
        let snapshot = leader.store.get_snapshot_builder().await.build_snapshot().await.expect("a snapshot");
        // The marker and the first chunk are written, then the process "dies".
        let failing: Arc<dyn Engine> = Arc::new(super::fault_tests::FailingEngine::after_writes(inner.clone(), 2));
        let mut torn = StateMachineStore::new(failing, dir.path().join("snapshot"), None).expect("open");
        torn.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect_err("the engine fails mid-install");
        drop(torn);
        let torn_digest = StateMachineStore::new(inner.clone(), dir.path().join("snapshot"), None)
            .map(|store| store.reader().state_digest().expect("digest"))
            .expect("open");
        assert_eq!(torn_digest, leader.digest(), "opening finished the install from the snapshot file");
        assert!(inner.get(Space::Ledger, META_INSTALLING).unwrap().is_none(), "the marker is gone");
    });
}

#[test]
fn an_install_marker_without_its_snapshot_file_is_dropped_and_the_ledger_kept() {
    let mut replica = Replica::open();
    block_on(replica.apply(many_claims(1, "orders", "k", 300)));
    let before = replica.digest();
    let Replica { dir, engine, store } = replica;
    drop(store);
    // A crash after the marker, before the snapshot file was written: nothing else changed.
    let marker = codec::encode(&Some(LogId::new(CommittedLeaderId::new(9, 2), 5_000))).unwrap();
    engine.write(Space::Ledger, vec![(META_INSTALLING.to_vec(), Some(marker))]).unwrap();
    let store = StateMachineStore::new(engine.clone(), dir.path().join("snapshot"), None).expect("open");
    assert_eq!(store.reader().state_digest().expect("digest"), before, "the ledger is as it was");
    assert!(engine.get(Space::Ledger, META_INSTALLING).unwrap().is_none(), "the marker is gone");
}
