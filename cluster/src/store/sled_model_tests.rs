//! Differential test of the sled state machine against the pure core's `MemoryLedger`.
//!
//! Random runs of `RaftStateMachine::apply` calls, each carrying several entries (blank entries
//! and normal ones with several commands), go both to a `StateMachineStore` on a temporary sled
//! database and, entry by entry, to a `MemoryLedger` through `apply_entry`. Retention is short
//! (1-3 s) against the clock steps, so records are purged inside one apply call (a key completed
//! in one entry and expiring in a later entry of the same call) and across calls, and bursts of
//! records sharing one deadline exceed the purge limit per entry. Operators forget and
//! force-release keys now and then. After every call the answers, the applied index and ledger
//! time, every record ever named, the purge horizons, the on-disk deadline index and the audit
//! trail must match the reference, and the record counts must equal a full scan of the records.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::Config;
use proptest::test_runner::TestRunner;

use super::*;
use crate::ledger::limits::PURGE_PER_ENTRY_MAX;
use crate::ledger::*;
use crate::raft_types::*;

/// Namespaces of different lengths: "aa" sorts before "b" as a `RecordKey`, after it in a
/// length-prefixed storage key.
const NAMESPACES: [&str; 3] = ["b", "aa", "orders"];
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const OWNERS: [&str; 2] = ["w0", "w1"];

fn outcome(index: usize) -> Outcome {
    match index % 2 {
        0 => Outcome { kind: OutcomeKind::Succeeded, payload: b"ok".to_vec() },
        _ => Outcome { kind: OutcomeKind::FailedFinal, payload: b"no".to_vec() },
    }
}

#[derive(Debug, Clone)]
enum TokenPick {
    /// The token of the latest claim of the key earlier in this entry, else of its record.
    Current,
    /// One less than that: an older token (FENCED) or one never granted.
    Older,
}

#[derive(Debug, Clone)]
enum Op {
    Claim { ns: usize, key: usize, owner: usize, lease_ms: u64, retention_ms: Option<u64> },
    Complete { ns: usize, key: usize, token: TokenPick, outcome: usize, retention_ms: Option<u64> },
    Release { ns: usize, key: usize, token: TokenPick },
    Extend { ns: usize, key: usize, token: TokenPick, lease_ms: u64 },
    Forget { ns: usize, key: usize },
    ForceRelease { ns: usize, key: usize },
}

#[derive(Debug, Clone)]
enum EntrySpec {
    Blank,
    /// The leader's clock moves on by `advance_ms`; the entry is stamped `older_by` earlier.
    Normal {
        advance_ms: u64,
        older_by: u64,
        ops: Vec<Op>,
    },
    /// `count` fresh keys in each of `namespaces`, claimed and completed in this one entry with
    /// one retention: they all expire at the same ledger time.
    Burst {
        advance_ms: u64,
        namespaces: Vec<usize>,
        count: usize,
        retention_ms: u64,
    },
}

/// The entries of one `apply` call.
type Call = Vec<EntrySpec>;

fn retention_strategy() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        2 => Just(None),
        6 => prop::sample::select(vec![Some(1_000u64), Some(1_500), Some(2_000), Some(3_000)]),
    ]
}

fn token_strategy() -> impl Strategy<Value = TokenPick> {
    prop_oneof![6 => Just(TokenPick::Current), 1 => Just(TokenPick::Older)]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let ns = 0..NAMESPACES.len();
    let key = 0..KEYS.len();
    let lease = prop::sample::select(vec![100u64, 500, 2_000]);
    prop_oneof![
        5 => (ns.clone(), key.clone(), 0..OWNERS.len(), lease.clone(), retention_strategy()).prop_map(
            |(ns, key, owner, lease_ms, retention_ms)| Op::Claim { ns, key, owner, lease_ms, retention_ms }
        ),
        4 => (ns.clone(), key.clone(), token_strategy(), 0..2usize, retention_strategy()).prop_map(
            |(ns, key, token, outcome, retention_ms)| Op::Complete { ns, key, token, outcome, retention_ms }
        ),
        2 => (ns.clone(), key.clone(), token_strategy()).prop_map(|(ns, key, token)| Op::Release { ns, key, token }),
        1 => (ns.clone(), key.clone(), token_strategy(), lease).prop_map(|(ns, key, token, lease_ms)| Op::Extend {
            ns,
            key,
            token,
            lease_ms
        }),
        1 => (ns.clone(), key.clone()).prop_map(|(ns, key)| Op::Forget { ns, key }),
        1 => (ns, key).prop_map(|(ns, key)| Op::ForceRelease { ns, key }),
    ]
}

fn advance_strategy() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![0u64, 0, 1, 10, 100, 500, 999, 1_000, 1_001, 2_000, 3_000])
}

fn entry_strategy() -> impl Strategy<Value = EntrySpec> {
    prop_oneof![
        1 => Just(EntrySpec::Blank),
        8 => (
            advance_strategy(),
            prop_oneof![6 => Just(0u64), 1 => prop::sample::select(vec![1u64, 300, 5_000])],
            prop::collection::vec(op_strategy(), 0..=6),
        )
            .prop_map(|(advance_ms, older_by, ops)| EntrySpec::Normal { advance_ms, older_by, ops }),
        1 => (
            prop::sample::select(vec![0u64, 1, 1_000]),
            prop::sample::subsequence(vec![0usize, 1, 2], 1..=3),
            1..=40usize,
            prop::sample::select(vec![1_000u64, 2_000]),
        )
            .prop_map(|(advance_ms, namespaces, count, retention_ms)| EntrySpec::Burst {
                advance_ms,
                namespaces,
                count,
                retention_ms
            }),
    ]
}

fn run_strategy() -> impl Strategy<Value = Vec<Call>> {
    prop::collection::vec(prop::collection::vec(entry_strategy(), 1..=5), 1..=10)
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal_entry(index: u64, time: LedgerTime, commands: Vec<Command>) -> Entry {
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(LedgerEntry { time, commands }) }
}

/// The index key the state machine keeps for a record retained until `deadline`: `x`, the
/// deadline in big-endian milliseconds, the record's storage key.
fn index_key(deadline: LedgerTime, key: &RecordKey) -> Vec<u8> {
    let mut out = vec![b'x'];
    out.extend_from_slice(&deadline.as_ms().to_be_bytes());
    out.extend_from_slice(key.namespace.as_bytes());
    out.push(0);
    out.extend_from_slice(&key.key);
    out
}

/// A sled state machine on a temporary directory, with the engine kept for direct reads.
struct Sled {
    _dir: tempfile::TempDir,
    engine: Arc<dyn Engine>,
    store: StateMachineStore,
}

impl Sled {
    fn open() -> Sled {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let engine: Arc<dyn Engine> = Arc::new(SledEngine::open(&dir.path().join("sled")).expect("open sled"));
        let store = StateMachineStore::new(engine.clone(), dir.path().join("snapshot"), None).expect("open the store");
        Sled { _dir: dir, engine, store }
    }
}

/// The reference, fed entry by entry, and what the run has named so far.
#[derive(Default)]
struct Reference {
    memory: MemoryLedger,
    keys: BTreeSet<RecordKey>,
    /// Events the run exercised, for the coverage check.
    coverage: BTreeMap<&'static str, usize>,
}

impl Reference {
    fn count(&mut self, label: &'static str, n: usize) {
        if n > 0 {
            *self.coverage.entry(label).or_default() += n;
        }
    }

    /// Applies `entries` to the reference, returning the answers the state machine must give.
    fn apply_call(&mut self, entries: &[Entry]) -> Vec<EntryResults> {
        // Keys whose record an earlier entry of this call changed or purged.
        let mut written_in_call: BTreeSet<RecordKey> = BTreeSet::new();
        let mut answers = Vec::new();
        for entry in entries {
            let EntryPayload::Normal(ledger_entry) = &entry.payload else {
                answers.push(EntryResults::default());
                continue;
            };
            let now = ledger_entry.time.max(self.memory.time);
            let expiring = self.memory.expired(now, usize::MAX);
            let purged = self.memory.expired(now, PURGE_PER_ENTRY_MAX);
            self.count("purged", purged.len());
            self.count(
                "purged in the call that wrote it",
                purged.iter().filter(|k| written_in_call.contains(*k)).count(),
            );
            self.count("purged in a later call", purged.iter().filter(|k| !written_in_call.contains(*k)).count());
            self.count("more expired than one entry purges", usize::from(expiring.len() > PURGE_PER_ENTRY_MAX));
            if ledger_entry.time < self.memory.time {
                self.count("purged by an entry stamped older", purged.len());
            }
            let before = self.memory.clone();
            let results = apply_entry(&mut self.memory, entry.log_id.index, ledger_entry.time, &ledger_entry.commands);
            for (command, result) in ledger_entry.commands.iter().zip(&results) {
                self.keys.insert(command.key().clone());
                match result {
                    Ok(Answer::Forgotten(_)) => self.count("forgotten", 1),
                    Ok(Answer::ForceReleased(_)) => self.count("force-released", 1),
                    _ => {}
                }
                let afresh = matches!(
                    result,
                    Ok(Answer::Claim(ClaimOutcome::Claimed { attempt: 1, previous: None, reentrant: false, .. }))
                );
                if afresh && purged.contains(command.key()) {
                    self.count("claim in the entry that purged its key", 1);
                }
                if before.records.get(command.key()) != self.memory.records.get(command.key()) {
                    written_in_call.insert(command.key().clone());
                }
            }
            for key in &purged {
                written_in_call.insert(key.clone());
            }
            answers.push(EntryResults { results, ledger_time: self.memory.time });
        }
        answers
    }
}

/// Compares everything the state machine exposes with the reference.
fn compare(sled: &Sled, reference: &Reference, last_index: u64) -> Result<(), TestCaseError> {
    let reader = sled.store.reader();
    let memory = &reference.memory;
    prop_assert_eq!(reader.applied(), AppliedState { log_index: last_index, ledger_time: memory.time });
    for key in &reference.keys {
        let stored = reader.record(key).expect("read a record");
        prop_assert_eq!(stored.as_ref(), memory.records.get(key), "record {} after index {}", key, last_index);
    }
    for namespace in NAMESPACES {
        let horizon = reader.purge_horizon(namespace).expect("read a horizon");
        prop_assert_eq!(
            horizon,
            memory.purge_horizon(namespace),
            "horizon of {} after index {}",
            namespace,
            last_index
        );
    }
    // The on-disk deadline index holds one entry per COMPLETED or AVAILABLE record, and no other.
    let until = Bound::Excluded(vec![b'x' + 1]);
    let on_disk: BTreeSet<Vec<u8>> = sled
        .engine
        .scan(Space::Ledger, Bound::Included(vec![b'x']), until, usize::MAX)
        .expect("scan the deadline index")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let expected: BTreeSet<Vec<u8>> =
        memory.deadlines.iter().map(|(deadline, key)| index_key(*deadline, key)).collect();
    prop_assert_eq!(on_disk, expected, "deadline index after index {}", last_index);

    // The counts kept by the applies equal a full scan of the records, and the reference's.
    let mut scanned: BTreeMap<String, NamespaceCounts> = BTreeMap::new();
    let records = sled
        .engine
        .scan(Space::Ledger, Bound::Included(vec![b'r']), Bound::Excluded(vec![b'r' + 1]), usize::MAX)
        .expect("scan the records");
    for (storage_key, bytes) in &records {
        let namespace_len = usize::from(storage_key[1]);
        let namespace = String::from_utf8(storage_key[2..2 + namespace_len].to_vec()).expect("a namespace");
        let record: Record = crate::codec::decode(bytes).expect("a record");
        scanned.entry(namespace).or_default().add(record.state_kind(), bytes.len() as u64);
    }
    let mut from_reference: BTreeMap<String, NamespaceCounts> = BTreeMap::new();
    for (key, record) in &memory.records {
        let bytes = crate::codec::encode(record).expect("encode a record").len() as u64;
        from_reference.entry(key.namespace.clone()).or_default().add(record.state_kind(), bytes);
    }
    prop_assert_eq!(&scanned, &from_reference, "records after index {}", last_index);
    let mut total = NamespaceCounts::default();
    for namespace in NAMESPACES {
        let counts = scanned.get(namespace).copied().unwrap_or_default();
        prop_assert_eq!(reader.namespace_counts(namespace).expect("read counts"), counts, "counts of {}", namespace);
        total.claimed += counts.claimed;
        total.completed += counts.completed;
        total.available += counts.available;
        total.record_bytes += counts.record_bytes;
    }
    prop_assert_eq!(reader.total_counts().expect("read the total"), total, "total counts after {}", last_index);

    // The audit trail, read in pages, is the reference's.
    let mut trail = Vec::new();
    let mut after = None;
    loop {
        let page = reader.audit(after, 3).expect("read the audit trail");
        let Some(last) = page.last() else { break };
        after = Some((last.log_index, last.slot));
        trail.extend(page);
    }
    prop_assert!(trail.iter().eq(memory.audit.iter()), "audit trail after index {}", last_index);
    Ok(())
}

/// Turns one abstract op into a command at `slot` of entry `index`.
fn resolve(op: &Op, index: u64, earlier: &[Command], memory: &MemoryLedger) -> Command {
    let key_of = |ns: usize, key: usize| RecordKey::new(NAMESPACES[ns], KEYS[key]);
    let token_for = |key: &RecordKey, pick: &TokenPick| {
        let claimed_here = earlier.iter().rposition(|c| matches!(c, Command::Claim(c) if c.key == *key));
        let current = match claimed_here {
            Some(slot) => FencingToken::new(index, slot as u16),
            None => memory.records.get(key).map_or(FencingToken::new(1 << 40, 0), |r| r.token),
        };
        match pick {
            TokenPick::Current => current,
            TokenPick::Older => FencingToken(current.0 - 1),
        }
    };
    match op {
        Op::Claim { ns, key, owner, lease_ms, retention_ms } => Command::Claim(ClaimCommand {
            key: key_of(*ns, *key),
            owner: OWNERS[*owner].to_string(),
            lease_ms: *lease_ms,
            fingerprint: None,
            request_id: None,
            retention_ms: *retention_ms,
        }),
        Op::Complete { ns, key, token, outcome: which, retention_ms } => {
            let key = key_of(*ns, *key);
            Command::Complete(CompleteCommand {
                token: token_for(&key, token),
                key,
                outcome: outcome(*which),
                retention_ms: *retention_ms,
            })
        }
        Op::Release { ns, key, token } => {
            let key = key_of(*ns, *key);
            Command::Release(ReleaseCommand {
                token: token_for(&key, token),
                key,
                reason: ReleaseReason::Retryable,
                checkpoint: Vec::new(),
            })
        }
        Op::Extend { ns, key, token, lease_ms } => {
            let key = key_of(*ns, *key);
            Command::ExtendLease(ExtendLeaseCommand {
                token: token_for(&key, token),
                key,
                lease_ms: *lease_ms,
                checkpoint: None,
            })
        }
        Op::Forget { ns, key } => Command::Forget(OperatorCommand {
            key: key_of(*ns, *key),
            reason: "model".to_string(),
            operator: "op".to_string(),
        }),
        Op::ForceRelease { ns, key } => Command::ForceRelease(OperatorCommand {
            key: key_of(*ns, *key),
            reason: "model".to_string(),
            operator: String::new(),
        }),
    }
}

/// Runs the calls through sled and the reference, comparing after each call; then lets every
/// short retention end and checks that each expired record is purged from sled.
async fn run(calls: &[Call], coverage: &mut BTreeMap<&'static str, usize>) -> Result<(), TestCaseError> {
    let mut sled = Sled::open();
    let mut reference = Reference::default();
    let mut index: u64 = 0;
    let mut clock: u64 = 0;
    for call in calls {
        // Resolve the entries against a scratch reference as the call's earlier entries left it.
        let mut scratch = reference.memory.clone();
        let mut entries = Vec::with_capacity(call.len());
        for spec in call {
            index += 1;
            let entry = match spec {
                EntrySpec::Blank => Entry { log_id: log_id(index), payload: EntryPayload::Blank },
                EntrySpec::Normal { advance_ms, older_by, ops } => {
                    clock += advance_ms;
                    let mut commands: Vec<Command> = Vec::with_capacity(ops.len());
                    for op in ops {
                        let command = resolve(op, index, &commands, &scratch);
                        commands.push(command);
                    }
                    normal_entry(index, LedgerTime(clock.saturating_sub(*older_by)), commands)
                }
                EntrySpec::Burst { advance_ms, namespaces, count, retention_ms } => {
                    clock += advance_ms;
                    let mut commands = Vec::with_capacity(2 * count * namespaces.len());
                    for ns in namespaces {
                        for i in 0..*count {
                            commands.push(Command::Claim(ClaimCommand {
                                key: RecordKey::new(NAMESPACES[*ns], format!("burst-{index}-{i}")),
                                owner: OWNERS[0].to_string(),
                                lease_ms: 1_000,
                                fingerprint: None,
                                request_id: None,
                                retention_ms: Some(*retention_ms),
                            }));
                        }
                    }
                    let claims = commands.len();
                    for slot in 0..claims {
                        commands.push(Command::Complete(CompleteCommand {
                            key: commands[slot].key().clone(),
                            token: FencingToken::new(index, slot as u16),
                            outcome: outcome(slot),
                            retention_ms: None,
                        }));
                    }
                    normal_entry(index, LedgerTime(clock), commands)
                }
            };
            if let EntryPayload::Normal(ledger_entry) = &entry.payload {
                apply_entry(&mut scratch, index, ledger_entry.time, &ledger_entry.commands);
            }
            entries.push(entry);
        }
        let expected = reference.apply_call(&entries);
        let answers = sled.store.apply(entries.clone()).await.expect("sled applies");
        prop_assert_eq!(answers.len(), expected.len());
        for ((entry, got), want) in entries.iter().zip(&answers).zip(&expected) {
            prop_assert_eq!(got, want, "answers to entry {:?}", entry);
        }
        compare(&sled, &reference, index)?;
    }

    // Every short retention ends; entries apply until nothing expired is left (64 per entry).
    clock = reference.memory.time.as_ms() + 10_000;
    let now = LedgerTime(clock);
    let backlog = reference.memory.expired(now, usize::MAX).len();
    for _ in 0..backlog.div_ceil(PURGE_PER_ENTRY_MAX).max(1) {
        index += 1;
        let entries = vec![normal_entry(index, now, Vec::new())];
        let expected = reference.apply_call(&entries);
        let answers = sled.store.apply(entries).await.expect("sled applies");
        prop_assert_eq!(answers, expected);
        compare(&sled, &reference, index)?;
    }
    let reader = sled.store.reader();
    for key in &reference.keys {
        let record = reader.record(key).expect("read a record");
        let until = record.as_ref().and_then(Record::retained_until);
        prop_assert!(until.is_none_or(|until| until > now), "{} expired at {:?} but is still in sled", key, until);
    }
    for (label, n) in reference.coverage {
        *coverage.entry(label).or_default() += n;
    }
    Ok(())
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(future)
}

const CASES: u32 = 64;

proptest! {
    #![proptest_config(Config { cases: CASES, ..Config::default() })]

    #[test]
    fn sled_state_machine_matches_the_memory_ledger_with_purges(calls in run_strategy()) {
        block_on(run(&calls, &mut BTreeMap::new()))?;
    }
}

/// A deterministic sample of generated runs reaches what the property test is for.
#[test]
fn generated_runs_purge_within_and_across_apply_calls() {
    let mut runner = TestRunner::deterministic();
    let strategy = run_strategy();
    let mut coverage = BTreeMap::new();
    for _ in 0..CASES {
        let calls = strategy.new_tree(&mut runner).expect("a generated run").current();
        block_on(run(&calls, &mut coverage)).expect("a deterministic run passes");
    }
    let wanted = [
        "purged",
        "purged in the call that wrote it",
        "purged in a later call",
        "more expired than one entry purges",
        "claim in the entry that purged its key",
        "purged by an entry stamped older",
        "forgotten",
        "force-released",
    ];
    let missing: Vec<&str> = wanted.iter().copied().filter(|w| !coverage.contains_key(*w)).collect();
    assert!(missing.is_empty(), "never exercised: {missing:?}\ncoverage: {coverage:#?}");
}

/// More than one entry's worth of records expire at one ledger time in namespaces whose
/// `RecordKey` order ("aa" < "b") differs from their length-prefixed storage order: the first
/// entry must purge the same 64 records (earliest deadline, then key) as the core's reference.
#[test]
fn a_burst_of_ties_across_namespaces_is_purged_in_key_order() {
    block_on(async {
        let mut sled = Sled::open();
        let mut reference = Reference::default();
        let mut commands = Vec::new();
        for (namespace, count) in [("b", PURGE_PER_ENTRY_MAX), ("aa", 4)] {
            for i in 0..count {
                commands.push(Command::Claim(ClaimCommand {
                    key: RecordKey::new(namespace, format!("k{i:02}")),
                    owner: "w".to_string(),
                    lease_ms: 1_000,
                    fingerprint: None,
                    request_id: None,
                    retention_ms: Some(1_000),
                }));
            }
        }
        let claims = commands.len();
        for slot in 0..claims {
            commands.push(Command::Complete(CompleteCommand {
                key: commands[slot].key().clone(),
                token: FencingToken::new(1, slot as u16),
                outcome: outcome(0),
                retention_ms: None,
            }));
        }
        for (index, entries) in [
            (1, vec![normal_entry(1, LedgerTime(0), commands)]),
            (2, vec![normal_entry(2, LedgerTime(1_000), Vec::new())]),
            (3, vec![normal_entry(3, LedgerTime(1_000), Vec::new())]),
        ] {
            let expected = reference.apply_call(&entries);
            let answers = sled.store.apply(entries).await.expect("sled applies");
            assert_eq!(answers, expected);
            if let Err(error) = compare(&sled, &reference, index) {
                panic!("{error}");
            }
        }
    });
}

/// A backlog of more expired records than one entry purges, then an entry stamped older than
/// the ledger time: it purges by the ledger time, in its own apply call and within one call.
#[test]
fn an_entry_stamped_older_purges_the_backlog_by_the_ledger_time() {
    block_on(async {
        for one_call in [false, true] {
            let mut sled = Sled::open();
            let mut reference = Reference::default();
            let mut commands: Vec<Command> = (0..100)
                .map(|i| {
                    Command::Claim(ClaimCommand {
                        key: RecordKey::new("orders", format!("k{i:03}")),
                        owner: "w".to_string(),
                        lease_ms: 1_000,
                        fingerprint: None,
                        request_id: None,
                        retention_ms: Some(1_000),
                    })
                })
                .collect();
            for slot in 0..100 {
                commands.push(Command::Complete(CompleteCommand {
                    key: commands[slot].key().clone(),
                    token: FencingToken::new(1, slot as u16),
                    outcome: outcome(0),
                    retention_ms: None,
                }));
            }
            let entries = vec![
                normal_entry(1, LedgerTime(100), commands),
                normal_entry(2, LedgerTime(1_100), Vec::new()),
                normal_entry(3, LedgerTime(500), Vec::new()),
            ];
            let calls = if one_call { vec![entries] } else { entries.into_iter().map(|e| vec![e]).collect() };
            for call in calls {
                let expected = reference.apply_call(&call);
                let answers = sled.store.apply(call).await.expect("sled applies");
                assert_eq!(answers, expected);
            }
            if let Err(error) = compare(&sled, &reference, 3) {
                panic!("one call: {one_call}: {error}");
            }
            assert!(reference.memory.records.is_empty(), "the reference left a backlog");
        }
    });
}

/// A record completed in one entry expires in a later entry of the same apply call: it is
/// purged there, from the call's own writes (it never reached the on-disk index).
#[test]
fn a_record_written_and_expired_in_one_apply_call_is_purged_in_that_call() {
    block_on(async {
        let mut sled = Sled::open();
        let mut reference = Reference::default();
        let key = RecordKey::new("orders", "a");
        let claim = Command::Claim(ClaimCommand {
            key: key.clone(),
            owner: "w".to_string(),
            lease_ms: 1_000,
            fingerprint: None,
            request_id: None,
            retention_ms: Some(1_000),
        });
        let complete = Command::Complete(CompleteCommand {
            key: key.clone(),
            token: FencingToken::new(1, 0),
            outcome: outcome(0),
            retention_ms: None,
        });
        let entries = vec![
            normal_entry(1, LedgerTime(0), vec![claim.clone(), complete]),
            normal_entry(2, LedgerTime(999), Vec::new()),
            normal_entry(3, LedgerTime(1_000), vec![claim]),
        ];
        let expected = reference.apply_call(&entries);
        let answers = sled.store.apply(entries).await.expect("sled applies");
        assert_eq!(answers, expected);
        let Ok(Answer::Claim(ClaimOutcome::Claimed { token, attempt: 1, previous: None, .. })) = &answers[2].results[0]
        else {
            panic!("the claim after the purge did not start afresh: {:?}", answers[2]);
        };
        assert_eq!(*token, FencingToken::new(3, 0));
        if let Err(error) = compare(&sled, &reference, 3) {
            panic!("{error}");
        }
        assert_eq!(sled.store.reader().purge_horizon("orders").unwrap(), LedgerTime(1_000));
    });
}
