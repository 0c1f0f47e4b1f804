//! The ledger's state transitions (DESIGN §2-§5): a pure function of the record, the entry's
//! position in the log and its ledger time. No clock, no I/O, no randomness, so every replica
//! that applies the same log reaches the same state.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;

use super::types::*;
use super::validate::validate_command;

/// The storage a ledger applies commands to. Implemented by the sled state machine and by
/// [`MemoryLedger`]; the transition logic never sees which.
pub trait LedgerState {
    fn record(&self, key: &RecordKey) -> Option<Record>;
    /// Stores `record`, keeping the index by retention deadline in step with it.
    fn put_record(&mut self, key: &RecordKey, record: Record);
    fn remove_record(&mut self, key: &RecordKey);
    /// Up to `limit` keys whose record's retention ended at or before `now`, earliest deadline
    /// first, ties by key: the same list on every replica that applied the same log.
    fn expired(&self, now: LedgerTime, limit: usize) -> Vec<RecordKey>;
    /// Records of `namespace` whose retention ended at or before this time may have been purged.
    fn purge_horizon(&self, namespace: &str) -> LedgerTime;
    fn set_purge_horizon(&mut self, namespace: &str, horizon: LedgerTime);
    /// Ledger time of the last applied entry (0 before the first).
    fn ledger_time(&self) -> LedgerTime;
    fn set_ledger_time(&mut self, time: LedgerTime);
    /// Adds `entry` to the audit trail of operator commands, then drops the oldest entries
    /// (smallest `(log_index, slot)`) beyond AUDIT_ENTRIES_MAX. Entries arrive in log order.
    fn append_audit(&mut self, entry: AuditEntry);
}

/// Where a command sits in the log: the Raft index of its entry and its position inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub log_index: u64,
    pub slot: u16,
}

impl LogPosition {
    /// The token a claim granted at this position receives.
    pub fn token(self) -> FencingToken {
        FencingToken::new(self.log_index, self.slot)
    }
}

/// Applies the commands of one log entry in order. Ledger time never goes backwards: the entry
/// is applied at `max(entry_time, last applied time)` (DESIGN §5).
pub fn apply_entry<S: LedgerState>(
    state: &mut S,
    log_index: u64,
    entry_time: LedgerTime,
    commands: &[Command],
) -> Vec<CommandResult> {
    assert!(
        commands.len() <= super::limits::ENTRY_COMMANDS_MAX,
        "entry {log_index} carries {} commands, more than ENTRY_COMMANDS_MAX",
        commands.len()
    );
    let now = entry_time.max(state.ledger_time());
    state.set_ledger_time(now);
    purge_expired(state, purge_time(now), super::limits::PURGE_PER_ENTRY_MAX);
    commands
        .iter()
        .enumerate()
        .map(|(slot, command)| apply(state, LogPosition { log_index, slot: slot as u16 }, now, command))
        .collect()
}

/// The ledger time purging judges retention by: the entry's own time (a seeded bug of the zoo
/// moves it a default retention ahead).
pub fn purge_time(now: LedgerTime) -> LedgerTime {
    if crate::bug_zoo::active(crate::bug_zoo::Bug::EarlyPurge) {
        return now.plus_ms(super::limits::RETENTION_MS_DEFAULT);
    }
    now
}

/// Purges up to `limit` COMPLETED or AVAILABLE records whose retention ended at or before
/// `now`, and raises their namespaces' purge horizons. Returns how many it purged. Runs before
/// an entry's commands, so a claim of a purged key starts afresh.
pub fn purge_expired<S: LedgerState>(state: &mut S, now: LedgerTime, limit: usize) -> usize {
    let expired = state.expired(now, limit);
    assert!(expired.len() <= limit, "expired() returned more than {limit} keys");
    for key in &expired {
        let record = state.record(key).expect("an indexed record exists");
        let retained_until = record.retained_until().expect("only COMPLETED and AVAILABLE records are indexed");
        // Purging never drops a record inside its retention.
        assert!(
            retained_until <= now,
            "record {key} purged at {now:?} before its retention ended at {retained_until:?}"
        );
        state.remove_record(key);
        let horizon = state.purge_horizon(&key.namespace).max(retained_until);
        state.set_purge_horizon(&key.namespace, horizon);
    }
    expired.len()
}

/// Applies one command at ledger time `now`. A rejection changes nothing.
pub fn apply<S: LedgerState>(
    state: &mut S,
    position: LogPosition,
    now: LedgerTime,
    command: &Command,
) -> CommandResult {
    validate_command(command).map_err(Rejection::Invalid)?;
    let key = command.key();
    let current = state.record(key);
    let (change, result) = decide(current.as_ref(), position, now, command);
    match change {
        Change::Keep => {}
        Change::Put(next) => {
            check_transition(current.as_ref(), &next, position.token(), command);
            state.put_record(key, next);
        }
        Change::Remove => {
            check_removal(current.as_ref(), command);
            state.remove_record(key);
        }
    }
    if let Ok(Answer::Forgotten(ack) | Answer::ForceReleased(ack)) = &result {
        check_audit(&ack.audit, current.as_ref(), position, now, command);
        state.append_audit(ack.audit.clone());
    }
    result
}

/// What a command does to its key's record.
enum Change {
    Keep,
    Put(Record),
    /// Only an operator's forget removes a record (purging is not a command).
    Remove,
}

/// Safety rules that must hold for every stored transition. A violation is a bug in `decide`;
/// stopping is better than persisting it.
fn check_transition(current: Option<&Record>, next: &Record, grant: FencingToken, command: &Command) {
    assert!(next.token <= grant, "a record token {} from the future (grant {grant})", next.token);
    if let Some(current) = current {
        // Rule 2: tokens of one key never go backwards; a new claim gets a strictly larger one.
        assert!(next.token >= current.token, "token went backwards: {} -> {}", current.token, next.token);
        if next.token != current.token {
            assert!(next.token > current.token && next.token == grant);
            assert_eq!(next.attempt, current.attempt + 1, "a new claim must count one more attempt");
        }
        // Rule 3: a completed outcome never changes.
        if let RecordState::Completed { .. } = current.state {
            assert_eq!(current, next, "a COMPLETED record changed");
        }
    }
    // Only a claim grants, and an operator only ends a claim: a force-release keeps the token
    // and attempt and leaves the record AVAILABLE, saying so.
    if let Command::ForceRelease(_) = command {
        let current = current.expect("a force-release stores only over a record");
        assert!(
            matches!(current.state, RecordState::Claimed { .. }),
            "force-released a {} record",
            current.state_name()
        );
        assert_eq!((next.token, next.attempt), (current.token, current.attempt), "a force-release changed the claim");
        assert!(
            matches!(next.state, RecordState::Available { .. }),
            "a force-release left a {} record",
            next.state_name()
        );
        assert_eq!(next.previous.as_ref().map(|p| p.ended), Some(PreviousEnd::ForceReleased));
    }
}

/// A command removes a record only if it is a forget of a record that exists.
fn check_removal(current: Option<&Record>, command: &Command) {
    assert!(matches!(command, Command::Forget(_)), "{command:?} removed a record");
    assert!(current.is_some(), "a forget removed a record that did not exist");
}

/// An audit entry describes exactly the operator command that was applied and the record it
/// replaced.
fn check_audit(
    audit: &AuditEntry,
    current: Option<&Record>,
    position: LogPosition,
    now: LedgerTime,
    command: &Command,
) {
    let (action, operator_command) = match command {
        Command::Forget(c) => (OperatorAction::Forget, c),
        Command::ForceRelease(c) => (OperatorAction::ForceRelease, c),
        other => panic!("{other:?} answered with an audit entry"),
    };
    assert_eq!((audit.log_index, audit.slot, audit.at), (position.log_index, position.slot, now));
    assert_eq!(audit.action, action);
    assert_eq!(&audit.key, &operator_command.key);
    assert!(
        current.is_some_and(|current| audit.previous == audited_record(current)),
        "the audit entry must hold the record as it was (bulk cut to AUDIT_RECORD_BYTES_KEPT)"
    );
}

/// The transition itself: what happens to the record, and the answer.
fn decide(
    current: Option<&Record>,
    position: LogPosition,
    now: LedgerTime,
    command: &Command,
) -> (Change, CommandResult) {
    let grant = position.token();
    let (next, result) = match command {
        Command::Claim(claim) => decide_claim(current, grant, now, claim),
        Command::Complete(complete) => decide_complete(current, now, complete),
        Command::Release(release) => decide_release(current, now, release),
        Command::ExtendLease(extend) => decide_extend(current, now, extend),
        Command::Forget(forget) => return decide_forget(current, position, now, forget),
        Command::ForceRelease(force) => decide_force_release(current, position, now, force),
    };
    (next.map_or(Change::Keep, Change::Put), result)
}

fn unchanged(result: CommandResult) -> (Option<Record>, CommandResult) {
    (None, result)
}

/// A token that is not the record's current one: older tokens were fenced by a later claim,
/// newer ones were never granted for this key.
fn wrong_token(given: FencingToken, record: &Record) -> Rejection {
    if given < record.token {
        Rejection::Fenced { given, record: Box::new(record.clone()) }
    } else {
        Rejection::NotClaimed { given, record: Some(Box::new(record.clone())) }
    }
}

fn decide_claim(
    current: Option<&Record>,
    grant: FencingToken,
    now: LedgerTime,
    claim: &ClaimCommand,
) -> (Option<Record>, CommandResult) {
    let Some(record) = current else {
        let record = new_claim(None, grant, now, claim, None);
        let answer = claimed_answer(&record, false);
        return (Some(record), Ok(answer));
    };
    if let (Some(stored), Some(given)) = (&record.fingerprint, &claim.fingerprint) {
        if stored != given {
            return unchanged(Err(Rejection::FingerprintMismatch { record: Box::new(record.clone()) }));
        }
    }
    match &record.state {
        RecordState::Claimed { lease_deadline, request_id, checkpoint } => {
            if now < *lease_deadline {
                let same_call =
                    claim.request_id.is_some() && *request_id == claim.request_id && record.owner == claim.owner;
                if same_call {
                    return unchanged(Ok(claimed_answer(record, true)));
                }
                return unchanged(Ok(Answer::Claim(ClaimOutcome::InProgress {
                    owner: record.owner.clone(),
                    lease_deadline: *lease_deadline,
                    attempt: record.attempt,
                    retry_after_ms: now.ms_until(*lease_deadline),
                })));
            }
            // The lease lapsed and nobody completed: take the key over under a new token.
            let previous = PreviousAttempt {
                ended: PreviousEnd::LeaseLapsed,
                owner: record.owner.clone(),
                token: record.token,
                attempt: record.attempt,
                checkpoint: checkpoint.clone(),
            };
            let next = new_claim(Some(record), grant, now, claim, Some(previous));
            let answer = claimed_answer(&next, false);
            (Some(next), Ok(answer))
        }
        RecordState::Available { .. } => {
            let next = new_claim(Some(record), grant, now, claim, record.previous.clone());
            let answer = claimed_answer(&next, false);
            (Some(next), Ok(answer))
        }
        RecordState::Completed { outcome, completed_at, retained_until } => {
            unchanged(Ok(Answer::Claim(ClaimOutcome::Completed {
                outcome: outcome.clone(),
                completed_at: *completed_at,
                token: record.token,
                attempt: record.attempt,
                retained_until: *retained_until,
            })))
        }
    }
}

fn new_claim(
    before: Option<&Record>,
    grant: FencingToken,
    now: LedgerTime,
    claim: &ClaimCommand,
    previous: Option<PreviousAttempt>,
) -> Record {
    let retention_ms =
        claim.retention_ms.or(before.map(|r| r.retention_ms)).unwrap_or(super::limits::RETENTION_MS_DEFAULT);
    Record {
        token: grant,
        attempt: before.map_or(1, |r| r.attempt + 1),
        owner: claim.owner.clone(),
        fingerprint: before.and_then(|r| r.fingerprint.clone()).or_else(|| claim.fingerprint.clone()),
        created_at: before.map_or(now, |r| r.created_at),
        retention_ms,
        previous,
        state: RecordState::Claimed {
            lease_deadline: now.plus_ms(claim.lease_ms),
            request_id: claim.request_id.clone(),
            checkpoint: Vec::new(),
        },
    }
}

fn claimed_answer(record: &Record, reentrant: bool) -> Answer {
    let RecordState::Claimed { lease_deadline, .. } = record.state else {
        unreachable!("claimed_answer on a {} record", record.state_name());
    };
    Answer::Claim(ClaimOutcome::Claimed {
        token: record.token,
        lease_deadline,
        attempt: record.attempt,
        previous: record.previous.clone(),
        reentrant,
    })
}

fn decide_complete(
    current: Option<&Record>,
    now: LedgerTime,
    complete: &CompleteCommand,
) -> (Option<Record>, CommandResult) {
    let Some(record) = current else {
        return unchanged(Err(Rejection::NotClaimed { given: complete.token, record: None }));
    };
    let stale_accepted = crate::bug_zoo::active(crate::bug_zoo::Bug::StaleTokenComplete)
        && complete.token < record.token
        && matches!(record.state, RecordState::Claimed { .. });
    if complete.token != record.token && !stale_accepted {
        return unchanged(Err(wrong_token(complete.token, record)));
    }
    match &record.state {
        RecordState::Claimed { lease_deadline, .. } => {
            let retention_ms = complete.retention_ms.unwrap_or(record.retention_ms);
            let retained_until = now.plus_ms(retention_ms);
            let next = Record {
                retention_ms,
                state: RecordState::Completed { outcome: complete.outcome.clone(), completed_at: now, retained_until },
                ..record.clone()
            };
            let ack = CompleteAck { completed_at: now, retained_until, replayed: false, late: now >= *lease_deadline };
            (Some(next), Ok(Answer::Complete(ack)))
        }
        RecordState::Completed { outcome, completed_at, retained_until } => {
            if *outcome != complete.outcome {
                return unchanged(Err(Rejection::OutcomeImmutable { record: Box::new(record.clone()) }));
            }
            let ack = CompleteAck {
                completed_at: *completed_at,
                retained_until: *retained_until,
                replayed: true,
                late: false,
            };
            unchanged(Ok(Answer::Complete(ack)))
        }
        RecordState::Available { .. } => {
            unchanged(Err(Rejection::NotClaimed { given: complete.token, record: Some(Box::new(record.clone())) }))
        }
    }
}

fn decide_release(
    current: Option<&Record>,
    now: LedgerTime,
    release: &ReleaseCommand,
) -> (Option<Record>, CommandResult) {
    let Some(record) = current else {
        return unchanged(Err(Rejection::NotClaimed { given: release.token, record: None }));
    };
    if release.token != record.token {
        return unchanged(Err(wrong_token(release.token, record)));
    }
    match &record.state {
        RecordState::Claimed { checkpoint, .. } => {
            let retained_until = now.plus_ms(record.retention_ms);
            let checkpoint =
                if release.checkpoint.is_empty() { checkpoint.clone() } else { release.checkpoint.clone() };
            let next = Record {
                previous: Some(PreviousAttempt {
                    ended: PreviousEnd::Released(release.reason),
                    owner: record.owner.clone(),
                    token: record.token,
                    attempt: record.attempt,
                    checkpoint,
                }),
                state: RecordState::Available { released_at: now, retained_until },
                ..record.clone()
            };
            (Some(next), Ok(Answer::Release(ReleaseAck { retained_until, replayed: false })))
        }
        RecordState::Available { retained_until, .. } => {
            unchanged(Ok(Answer::Release(ReleaseAck { retained_until: *retained_until, replayed: true })))
        }
        RecordState::Completed { .. } => {
            unchanged(Err(Rejection::NotClaimed { given: release.token, record: Some(Box::new(record.clone())) }))
        }
    }
}

fn decide_extend(
    current: Option<&Record>,
    now: LedgerTime,
    extend: &ExtendLeaseCommand,
) -> (Option<Record>, CommandResult) {
    let Some(record) = current else {
        return unchanged(Err(Rejection::NotClaimed { given: extend.token, record: None }));
    };
    if extend.token != record.token {
        return unchanged(Err(wrong_token(extend.token, record)));
    }
    match &record.state {
        RecordState::Claimed { lease_deadline, request_id, checkpoint } => {
            if now >= *lease_deadline {
                return unchanged(Err(Rejection::LeaseLapsed {
                    given: extend.token,
                    record: Box::new(record.clone()),
                }));
            }
            let lease_deadline = now.plus_ms(extend.lease_ms);
            let next = Record {
                state: RecordState::Claimed {
                    lease_deadline,
                    request_id: request_id.clone(),
                    checkpoint: extend.checkpoint.clone().unwrap_or_else(|| checkpoint.clone()),
                },
                ..record.clone()
            };
            (Some(next), Ok(Answer::ExtendLease(ExtendAck { lease_deadline })))
        }
        RecordState::Completed { .. } | RecordState::Available { .. } => {
            unchanged(Err(Rejection::NotClaimed { given: extend.token, record: Some(Box::new(record.clone())) }))
        }
    }
}

fn audit_entry(
    action: OperatorAction,
    position: LogPosition,
    now: LedgerTime,
    command: &OperatorCommand,
    previous: &Record,
) -> AuditEntry {
    AuditEntry {
        log_index: position.log_index,
        slot: position.slot,
        at: now,
        action,
        key: command.key.clone(),
        reason: command.reason.clone(),
        operator: command.operator.clone(),
        previous: audited_record(previous),
    }
}

/// The record an audit entry keeps: outcome payload and checkpoints cut to
/// AUDIT_RECORD_BYTES_KEPT each, so that the trail stays small (at most AUDIT_ENTRIES_MAX
/// entries of a few KiB) whatever the records held. The cut is deterministic.
fn audited_record(record: &Record) -> Record {
    let keep = super::limits::AUDIT_RECORD_BYTES_KEPT;
    let mut kept = record.clone();
    if let RecordState::Completed { outcome, .. } = &mut kept.state {
        outcome.payload.truncate(keep);
    }
    if let RecordState::Claimed { checkpoint, .. } = &mut kept.state {
        checkpoint.truncate(keep);
    }
    if let Some(previous) = &mut kept.previous {
        previous.checkpoint.truncate(keep);
    }
    kept
}

/// Forget: the record goes, whatever its state, so the next claim starts afresh (attempt 1, no
/// previous). Its tokens stay fenced without a tombstone: the next grant's token is a later log
/// position, so larger than any token the record ever had. A holder of a live claim that was
/// forgotten gets NOT_CLAIMED (or FENCED once the key is claimed again) from then on.
fn decide_forget(
    current: Option<&Record>,
    position: LogPosition,
    now: LedgerTime,
    forget: &OperatorCommand,
) -> (Change, CommandResult) {
    let Some(record) = current else {
        return (Change::Keep, Err(Rejection::NoRecord));
    };
    let audit = audit_entry(OperatorAction::Forget, position, now, forget, record);
    (Change::Remove, Ok(Answer::Forgotten(OperatorAck { audit })))
}

/// Force-release: a CLAIMED record (live or lapsed) becomes AVAILABLE as a release with effect
/// unknown would make it (same retention, the claim's checkpoint kept for the next claimant),
/// but `previous.ended` says an operator ended it. The old token is then refused as after any
/// release.
fn decide_force_release(
    current: Option<&Record>,
    position: LogPosition,
    now: LedgerTime,
    force: &OperatorCommand,
) -> (Option<Record>, CommandResult) {
    let Some(record) = current else {
        return unchanged(Err(Rejection::NoRecord));
    };
    let RecordState::Claimed { checkpoint, .. } = &record.state else {
        return unchanged(Err(Rejection::NotForceReleasable { record: Box::new(record.clone()) }));
    };
    let retained_until = now.plus_ms(record.retention_ms);
    let next = Record {
        previous: Some(PreviousAttempt {
            ended: PreviousEnd::ForceReleased,
            owner: record.owner.clone(),
            token: record.token,
            attempt: record.attempt,
            checkpoint: checkpoint.clone(),
        }),
        state: RecordState::Available { released_at: now, retained_until },
        ..record.clone()
    };
    let audit = audit_entry(OperatorAction::ForceRelease, position, now, force, record);
    (Some(next), Ok(Answer::ForceReleased(OperatorAck { audit })))
}

/// An in-memory ledger: the reference state for tests and simulations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryLedger {
    pub records: BTreeMap<RecordKey, Record>,
    pub time: LedgerTime,
    /// `(retained_until, key)` of every COMPLETED and AVAILABLE record.
    pub deadlines: BTreeSet<(LedgerTime, RecordKey)>,
    pub purge_horizons: BTreeMap<String, LedgerTime>,
    /// The audit trail, oldest first: at most AUDIT_ENTRIES_MAX entries.
    pub audit: VecDeque<AuditEntry>,
}

impl LedgerState for MemoryLedger {
    fn record(&self, key: &RecordKey) -> Option<Record> {
        self.records.get(key).cloned()
    }

    fn put_record(&mut self, key: &RecordKey, record: Record) {
        if let Some(deadline) = record.retained_until() {
            self.deadlines.insert((deadline, key.clone()));
        }
        if let Some(old) = self.records.insert(key.clone(), record) {
            let new_deadline = self.records[key].retained_until();
            if let Some(old_deadline) = old.retained_until().filter(|d| Some(*d) != new_deadline) {
                self.deadlines.remove(&(old_deadline, key.clone()));
            }
        }
    }

    fn remove_record(&mut self, key: &RecordKey) {
        if let Some(old) = self.records.remove(key) {
            if let Some(deadline) = old.retained_until() {
                self.deadlines.remove(&(deadline, key.clone()));
            }
        }
    }

    fn expired(&self, now: LedgerTime, limit: usize) -> Vec<RecordKey> {
        self.deadlines.iter().take_while(|(deadline, _)| *deadline <= now).take(limit).map(|(_, k)| k.clone()).collect()
    }

    fn purge_horizon(&self, namespace: &str) -> LedgerTime {
        self.purge_horizons.get(namespace).copied().unwrap_or_default()
    }

    fn set_purge_horizon(&mut self, namespace: &str, horizon: LedgerTime) {
        self.purge_horizons.insert(namespace.to_string(), horizon);
    }

    fn ledger_time(&self) -> LedgerTime {
        self.time
    }

    fn set_ledger_time(&mut self, time: LedgerTime) {
        self.time = time;
    }

    fn append_audit(&mut self, entry: AuditEntry) {
        assert!(
            self.audit.back().is_none_or(|last| (last.log_index, last.slot) < (entry.log_index, entry.slot)),
            "audit entries arrive in log order"
        );
        self.audit.push_back(entry);
        while self.audit.len() > super::limits::AUDIT_ENTRIES_MAX {
            self.audit.pop_front();
        }
    }
}
