//! Model-based property test of the pure ledger core.
//!
//! Random runs of entries (1-4 commands each) over a few keys, owners, fingerprints, request ids
//! and outcomes, with ledger time advancing in small steps, jumping to exactly a lease deadline
//! (and one ms either side) and sometimes stamped older than the last entry. Each entry goes to
//! `apply_entry` on a `MemoryLedger` and, in parallel, to a naive model written from DESIGN.md
//! §2-§5: the model keeps, per key, the list of every claim granted and how each one ended, and
//! derives every answer from that history. Every answer is compared, then the whole stored state
//! and the purge horizons.
//!
//! Retention is short (1 s or 3 s, or the 24 h default) against the clock steps, so records are
//! purged during runs: at the start of each entry, once the entry's ledger time is known, the
//! model forgets (treats as never seen) every key whose COMPLETED or AVAILABLE record's retention
//! ended at or before that time, at most `PURGE_PER_ENTRY_MAX` per entry, earliest deadline first
//! and then by key, and raises the namespace's purge horizon to the purged record's deadline.
//!
//! Independently of the model, an observer that sees only the core's answers and state checks
//! the safety rules of DESIGN §4 over the whole run:
//! 1. at most one live claim per key at any ledger time,
//! 2. tokens of one key strictly increase across grants (and are the grant's log position), also
//!    across a purge: a key claimed afresh after its record was purged gets a larger token,
//! 3. only the current token completes, releases or extends; once COMPLETED the outcome never
//!    changes and every later claim returns it, until the record is purged (never before its
//!    retention ended),
//!
//! every record the core held at the start of an entry whose retention had not ended by then is
//! still there after it (and unchanged unless a command of the entry named it; only an
//! operator's forget removes one early), and every entry is applied a second time one command at
//! a time (purge first, then each command) to check that a rejected command never changes the
//! state.
//!
//! Operator commands take part: a forget removes the key's history (the next claim starts
//! afresh, with a larger token), a force-release ends the open claim as a release would, with
//! `PreviousEnd::ForceReleased`. Each accepted one must add exactly its entry to the audit trail.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use dedup_cluster::ledger::limits::AUDIT_ENTRIES_MAX;
use dedup_cluster::ledger::limits::AUDIT_REASON_BYTES_MAX;
use dedup_cluster::ledger::limits::LEASE_MS_MAX;
use dedup_cluster::ledger::limits::LEASE_MS_MIN;
use dedup_cluster::ledger::limits::OWNER_BYTES_MAX;
use dedup_cluster::ledger::limits::PURGE_PER_ENTRY_MAX;
use dedup_cluster::ledger::limits::RETENTION_MS_DEFAULT;
use dedup_cluster::ledger::limits::RETENTION_MS_MAX;
use dedup_cluster::ledger::limits::RETENTION_MS_MIN;
use dedup_cluster::ledger::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::Config;
use proptest::test_runner::FileFailurePersistence;
use proptest::test_runner::TestRunner;

const NAMESPACE: &str = "model";
/// Index 3 is the empty key (KEY_EMPTY).
const KEYS: [&str; 4] = ["k0", "k1", "k2", ""];
/// Index 3 is the empty owner (OWNER_EMPTY).
const OWNERS: [&str; 4] = ["w0", "w1", "w2", ""];
const FINGERPRINTS: [&[u8]; 2] = [b"fp-a", b"fp-b"];
const REQUEST_IDS: [&str; 2] = ["req-a", "req-b"];
/// Empty: a release without a checkpoint.
const CHECKPOINTS: [&[u8]; 3] = [b"", b"cp-1", b"cp-2"];
/// Reasons of operator commands: index 0 is empty (REASON_EMPTY), index 2 one byte too long.
const REASONS: [&str; 3] = ["", "stuck worker", "r"];
/// Operators: empty is allowed; index 2 is one byte too long.
const OPERATORS: [&str; 3] = ["", "alice", "o"];

fn reason(index: usize) -> String {
    match index {
        2 => "r".repeat(AUDIT_REASON_BYTES_MAX + 1),
        _ => REASONS[index].to_string(),
    }
}

fn operator(index: usize) -> String {
    match index {
        2 => "o".repeat(OWNER_BYTES_MAX + 1),
        _ => OPERATORS[index].to_string(),
    }
}

fn outcome(index: usize) -> Outcome {
    match index % 3 {
        0 => Outcome { kind: OutcomeKind::Succeeded, payload: b"ok-1".to_vec() },
        1 => Outcome { kind: OutcomeKind::Succeeded, payload: b"ok-2".to_vec() },
        _ => Outcome { kind: OutcomeKind::FailedFinal, payload: b"ok-1".to_vec() },
    }
}

/// Key `index` of key generation `generation` (the empty key stays empty).
fn record_key(generation: u32, index: usize) -> RecordKey {
    let name = KEYS[index];
    if name.is_empty() {
        return RecordKey::new(NAMESPACE, Vec::new());
    }
    RecordKey::new(NAMESPACE, format!("{name}-{generation}"))
}

// =============================================================================================
// The naive model.

/// One claim that was granted, and how it ended.
#[derive(Debug, Clone)]
struct Grant {
    token: FencingToken,
    owner: String,
    request_id: Option<String>,
    granted_at: u64,
    /// Moved by extensions.
    deadline: u64,
    /// Set by extensions.
    checkpoint: Vec<u8>,
    end: Option<End>,
}

#[derive(Debug, Clone)]
enum End {
    /// By its holder (`PreviousEnd::Released`) or an operator (`PreviousEnd::ForceReleased`).
    Released {
        ended: PreviousEnd,
        checkpoint: Vec<u8>,
        at: u64,
        retained_until: u64,
    },
    Completed {
        outcome: Outcome,
        at: u64,
        retained_until: u64,
    },
}

/// Everything that happened to one key.
#[derive(Debug, Clone, Default)]
struct History {
    /// From the first granted claim that carried one.
    fingerprint: Option<Vec<u8>>,
    /// Named by the last granted claim that named one.
    retention_ms: Option<u64>,
    grants: Vec<Grant>,
}

impl History {
    fn attempt(&self) -> u32 {
        self.grants.len() as u32
    }

    /// How grant `index` ended, as the next claimant is told.
    fn describe(&self, index: usize) -> PreviousAttempt {
        let grant = &self.grants[index];
        let (ended, checkpoint) = match &grant.end {
            Some(End::Released { ended, checkpoint, .. }) => (*ended, checkpoint.clone()),
            // A grant followed by another grant without ending lost its lease.
            None => (PreviousEnd::LeaseLapsed, grant.checkpoint.clone()),
            Some(End::Completed { .. }) => unreachable!("a completed key is never claimed again"),
        };
        PreviousAttempt { ended, owner: grant.owner.clone(), token: grant.token, attempt: index as u32 + 1, checkpoint }
    }

    /// `previous` of grant `index`: how the grant before it ended.
    fn previous_of(&self, index: usize) -> Option<PreviousAttempt> {
        index.checked_sub(1).map(|before| self.describe(before))
    }

    fn retention(&self) -> u64 {
        self.retention_ms.unwrap_or(RETENTION_MS_DEFAULT)
    }
}

/// What the model expects of one command.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    /// Boxed: an operator's answer carries a whole record.
    Answer(Box<Answer>),
    /// Rejected with one of `reasons` (more than one when several limits are broken at once),
    /// carrying the record whose current token is `record_token`.
    Rejected { reasons: Vec<&'static str>, record_token: Option<FencingToken> },
}

impl Expected {
    fn answer(answer: Answer) -> Expected {
        Expected::Answer(Box::new(answer))
    }

    fn as_answer(&self) -> Option<&Answer> {
        match self {
            Expected::Answer(answer) => Some(answer),
            Expected::Rejected { .. } => None,
        }
    }
}

fn rejected(reason: &'static str, record_token: Option<FencingToken>) -> Expected {
    Expected::Rejected { reasons: vec![reason], record_token }
}

#[derive(Debug, Clone, Default)]
struct Model {
    time: u64,
    keys: BTreeMap<RecordKey, History>,
    /// Tokens granted to keys before their records were purged or forgotten, for picking stale
    /// tokens.
    purged_tokens: BTreeMap<RecordKey, Vec<FencingToken>>,
    /// How each key's last removed record went: "purge" or "forget".
    removed_by: BTreeMap<RecordKey, &'static str>,
    /// Per namespace: the latest retention deadline of a record purged so far.
    purge_horizons: BTreeMap<String, u64>,
}

/// The limits a generated command can break (the generator only breaks these).
fn broken_limits(command: &Command) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if command.key().key.is_empty() {
        reasons.push("KEY_EMPTY");
    }
    let lease_bad = |ms: u64| !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&ms);
    let retention_bad = |ms: Option<u64>| ms.is_some_and(|ms| !(RETENTION_MS_MIN..=RETENTION_MS_MAX).contains(&ms));
    let token_bad = |token: FencingToken| token.0 == 0;
    match command {
        Command::Claim(c) => {
            if c.owner.is_empty() {
                reasons.push("OWNER_EMPTY");
            }
            if lease_bad(c.lease_ms) {
                reasons.push("LEASE_OUT_OF_RANGE");
            }
            if retention_bad(c.retention_ms) {
                reasons.push("RETENTION_OUT_OF_RANGE");
            }
        }
        Command::Complete(c) => {
            if token_bad(c.token) {
                reasons.push("TOKEN_INVALID");
            }
            if retention_bad(c.retention_ms) {
                reasons.push("RETENTION_OUT_OF_RANGE");
            }
        }
        Command::Release(c) => {
            if token_bad(c.token) {
                reasons.push("TOKEN_INVALID");
            }
        }
        Command::ExtendLease(c) => {
            if token_bad(c.token) {
                reasons.push("TOKEN_INVALID");
            }
            if lease_bad(c.lease_ms) {
                reasons.push("LEASE_OUT_OF_RANGE");
            }
        }
        Command::Forget(c) | Command::ForceRelease(c) => {
            if c.reason.is_empty() {
                reasons.push("REASON_EMPTY");
            }
            if c.reason.len() > AUDIT_REASON_BYTES_MAX {
                reasons.push("REASON_TOO_LONG");
            }
            if c.operator.len() > OWNER_BYTES_MAX {
                reasons.push("OPERATOR_TOO_LONG");
            }
        }
    }
    reasons
}

impl Model {
    /// Ledger time of an entry stamped `entry_time`: it never goes backwards.
    fn begin_entry(&mut self, entry_time: u64) -> u64 {
        self.time = self.time.max(entry_time);
        self.time
    }

    /// Forgets up to `PURGE_PER_ENTRY_MAX` keys whose COMPLETED or AVAILABLE record's retention
    /// ended at or before `now`, earliest deadline first, then by key. Returns each purged key
    /// with the state its record was in.
    fn purge(&mut self, now: u64) -> Vec<(RecordKey, &'static str)> {
        let mut expired: Vec<(u64, RecordKey, &'static str)> = Vec::new();
        for (key, history) in &self.keys {
            let Some(last) = history.grants.last() else { continue };
            let (retained_until, state) = match &last.end {
                None => continue,
                Some(End::Completed { retained_until, .. }) => (*retained_until, "COMPLETED"),
                Some(End::Released { retained_until, .. }) => (*retained_until, "AVAILABLE"),
            };
            if retained_until <= now {
                expired.push((retained_until, key.clone(), state));
            }
        }
        expired.sort();
        expired.truncate(PURGE_PER_ENTRY_MAX);
        let mut purged = Vec::with_capacity(expired.len());
        for (retained_until, key, state) in expired {
            let history = self.keys.remove(&key).expect("an expired key has a history");
            self.purged_tokens.entry(key.clone()).or_default().extend(history.grants.iter().map(|g| g.token));
            self.removed_by.insert(key.clone(), "purge");
            let horizon = self.purge_horizons.entry(key.namespace.clone()).or_default();
            *horizon = (*horizon).max(retained_until);
            purged.push((key, state));
        }
        purged
    }

    fn history(&self, key: &RecordKey) -> Option<&History> {
        self.keys.get(key).filter(|h| !h.grants.is_empty())
    }

    /// The current claim of `key` if it has not ended (live or lapsed).
    fn open_grant(&self, key: &RecordKey) -> Option<&Grant> {
        self.history(key)?.grants.last().filter(|g| g.end.is_none())
    }

    fn current_token(&self, key: &RecordKey) -> Option<FencingToken> {
        self.history(key).map(|h| h.grants.last().unwrap().token)
    }

    fn apply(&mut self, now: u64, position_token: FencingToken, command: &Command) -> Expected {
        let broken = broken_limits(command);
        if !broken.is_empty() {
            return Expected::Rejected { reasons: broken, record_token: None };
        }
        match command {
            Command::Claim(c) => self.claim(now, position_token, c),
            Command::Complete(c) => self.complete(now, c),
            Command::Release(c) => self.release(now, c),
            Command::ExtendLease(c) => self.extend(now, c),
            Command::Forget(c) => self.forget(now, position_token, c),
            Command::ForceRelease(c) => self.force_release(now, position_token, c),
        }
    }

    fn audit(
        now: u64,
        position: FencingToken,
        action: OperatorAction,
        c: &OperatorCommand,
        previous: Record,
    ) -> AuditEntry {
        AuditEntry {
            log_index: position.log_index(),
            slot: position.slot(),
            at: LedgerTime(now),
            action,
            key: c.key.clone(),
            reason: c.reason.clone(),
            operator: c.operator.clone(),
            previous,
        }
    }

    /// The key's history goes; its tokens stay known as stale ones.
    fn forget(&mut self, now: u64, position: FencingToken, c: &OperatorCommand) -> Expected {
        let Some(previous) = self.render(&c.key) else {
            return rejected("NO_RECORD", None);
        };
        let history = self.keys.remove(&c.key).expect("a rendered key has a history");
        self.purged_tokens.entry(c.key.clone()).or_default().extend(history.grants.iter().map(|g| g.token));
        self.removed_by.insert(c.key.clone(), "forget");
        let audit = Self::audit(now, position, OperatorAction::Forget, c, previous);
        Expected::answer(Answer::Forgotten(OperatorAck { audit }))
    }

    /// The open claim (live or lapsed) ends as a release with effect unknown would end it.
    fn force_release(&mut self, now: u64, position: FencingToken, c: &OperatorCommand) -> Expected {
        let Some(previous) = self.render(&c.key) else {
            return rejected("NO_RECORD", None);
        };
        let history = self.keys.get_mut(&c.key).expect("a rendered key has a history");
        let retention = history.retention();
        let grant = history.grants.last_mut().expect("a rendered key has a grant");
        if grant.end.is_some() {
            return rejected("NOT_CLAIMED", Some(grant.token));
        }
        grant.end = Some(End::Released {
            ended: PreviousEnd::ForceReleased,
            checkpoint: grant.checkpoint.clone(),
            at: now,
            retained_until: now + retention,
        });
        let audit = Self::audit(now, position, OperatorAction::ForceRelease, c, previous);
        Expected::answer(Answer::ForceReleased(OperatorAck { audit }))
    }

    fn claim(&mut self, now: u64, new_token: FencingToken, c: &ClaimCommand) -> Expected {
        let history = self.keys.entry(c.key.clone()).or_default();
        let current_token = history.grants.last().map(|g| g.token);
        if let (Some(stored), Some(given)) = (&history.fingerprint, &c.fingerprint) {
            if stored != given {
                return rejected("FINGERPRINT_MISMATCH", current_token);
            }
        }
        if let Some(last) = history.grants.last() {
            match &last.end {
                Some(End::Completed { outcome, at, retained_until }) => {
                    return Expected::answer(Answer::Claim(ClaimOutcome::Completed {
                        outcome: outcome.clone(),
                        completed_at: LedgerTime(*at),
                        token: last.token,
                        attempt: history.attempt(),
                        retained_until: LedgerTime(*retained_until),
                    }));
                }
                None if now < last.deadline => {
                    let same_call = c.request_id.is_some() && c.request_id == last.request_id && c.owner == last.owner;
                    if same_call {
                        return Expected::answer(Answer::Claim(ClaimOutcome::Claimed {
                            token: last.token,
                            lease_deadline: LedgerTime(last.deadline),
                            attempt: history.attempt(),
                            previous: history.previous_of(history.grants.len() - 1),
                            reentrant: true,
                        }));
                    }
                    return Expected::answer(Answer::Claim(ClaimOutcome::InProgress {
                        owner: last.owner.clone(),
                        lease_deadline: LedgerTime(last.deadline),
                        attempt: history.attempt(),
                        retry_after_ms: last.deadline - now,
                    }));
                }
                // Released, or the lease lapsed: a new grant.
                _ => {}
            }
        }
        history.grants.push(Grant {
            token: new_token,
            owner: c.owner.clone(),
            request_id: c.request_id.clone(),
            granted_at: now,
            deadline: now + c.lease_ms,
            checkpoint: Vec::new(),
            end: None,
        });
        if history.fingerprint.is_none() {
            history.fingerprint = c.fingerprint.clone();
        }
        if c.retention_ms.is_some() {
            history.retention_ms = c.retention_ms;
        }
        Expected::answer(Answer::Claim(ClaimOutcome::Claimed {
            token: new_token,
            lease_deadline: LedgerTime(now + c.lease_ms),
            attempt: history.attempt(),
            previous: history.previous_of(history.grants.len() - 1),
            reentrant: false,
        }))
    }

    /// The current grant if `token` is its token, else the rejection for a wrong token.
    fn grant_of_token(&mut self, key: &RecordKey, token: FencingToken) -> Result<(&mut History, usize), Expected> {
        let Some(current) = self.current_token(key) else {
            return Err(rejected("NOT_CLAIMED", None));
        };
        if token < current {
            return Err(rejected("FENCED", Some(current)));
        }
        if token > current {
            return Err(rejected("NOT_CLAIMED", Some(current)));
        }
        let history = self.keys.get_mut(key).unwrap();
        let index = history.grants.len() - 1;
        Ok((history, index))
    }

    fn complete(&mut self, now: u64, c: &CompleteCommand) -> Expected {
        let (history, index) = match self.grant_of_token(&c.key, c.token) {
            Ok(found) => found,
            Err(rejection) => return rejection,
        };
        let retention = c.retention_ms.unwrap_or(history.retention());
        let grant = &mut history.grants[index];
        match &grant.end {
            Some(End::Completed { outcome, at, retained_until }) => {
                if *outcome != c.outcome {
                    return rejected("OUTCOME_IMMUTABLE", Some(grant.token));
                }
                Expected::answer(Answer::Complete(CompleteAck {
                    completed_at: LedgerTime(*at),
                    retained_until: LedgerTime(*retained_until),
                    replayed: true,
                    // DESIGN leaves the flag of a replay open; the core answers false.
                    late: false,
                }))
            }
            Some(End::Released { .. }) => rejected("NOT_CLAIMED", Some(grant.token)),
            None => {
                let late = now >= grant.deadline;
                grant.end =
                    Some(End::Completed { outcome: c.outcome.clone(), at: now, retained_until: now + retention });
                Expected::answer(Answer::Complete(CompleteAck {
                    completed_at: LedgerTime(now),
                    retained_until: LedgerTime(now + retention),
                    replayed: false,
                    late,
                }))
            }
        }
    }

    fn release(&mut self, now: u64, c: &ReleaseCommand) -> Expected {
        let (history, index) = match self.grant_of_token(&c.key, c.token) {
            Ok(found) => found,
            Err(rejection) => return rejection,
        };
        let retention = history.retention();
        let grant = &mut history.grants[index];
        match &grant.end {
            Some(End::Released { retained_until, .. }) => Expected::answer(Answer::Release(ReleaseAck {
                retained_until: LedgerTime(*retained_until),
                replayed: true,
            })),
            Some(End::Completed { .. }) => rejected("NOT_CLAIMED", Some(grant.token)),
            None => {
                // An empty checkpoint means "none given": keep the last extension's.
                let checkpoint = if c.checkpoint.is_empty() { grant.checkpoint.clone() } else { c.checkpoint.clone() };
                grant.end = Some(End::Released {
                    ended: PreviousEnd::Released(c.reason),
                    checkpoint,
                    at: now,
                    retained_until: now + retention,
                });
                Expected::answer(Answer::Release(ReleaseAck {
                    retained_until: LedgerTime(now + retention),
                    replayed: false,
                }))
            }
        }
    }

    fn extend(&mut self, now: u64, c: &ExtendLeaseCommand) -> Expected {
        let (history, index) = match self.grant_of_token(&c.key, c.token) {
            Ok(found) => found,
            Err(rejection) => return rejection,
        };
        let grant = &mut history.grants[index];
        if grant.end.is_some() {
            return rejected("NOT_CLAIMED", Some(grant.token));
        }
        if now >= grant.deadline {
            return rejected("LEASE_LAPSED", Some(grant.token));
        }
        grant.deadline = now + c.lease_ms;
        if let Some(checkpoint) = &c.checkpoint {
            grant.checkpoint = checkpoint.clone();
        }
        Expected::answer(Answer::ExtendLease(ExtendAck { lease_deadline: LedgerTime(grant.deadline) }))
    }

    /// The record the core should hold for `key`, with `retention_ms` left out (0).
    fn render(&self, key: &RecordKey) -> Option<Record> {
        let history = self.history(key)?;
        let index = history.grants.len() - 1;
        let last = &history.grants[index];
        let (previous, state) = match &last.end {
            None => (
                history.previous_of(index),
                RecordState::Claimed {
                    lease_deadline: LedgerTime(last.deadline),
                    request_id: last.request_id.clone(),
                    checkpoint: last.checkpoint.clone(),
                },
            ),
            Some(End::Completed { outcome, at, retained_until }) => (
                history.previous_of(index),
                RecordState::Completed {
                    outcome: outcome.clone(),
                    completed_at: LedgerTime(*at),
                    retained_until: LedgerTime(*retained_until),
                },
            ),
            // AVAILABLE describes the released attempt itself.
            Some(End::Released { at, retained_until, .. }) => (
                Some(history.describe(index)),
                RecordState::Available { released_at: LedgerTime(*at), retained_until: LedgerTime(*retained_until) },
            ),
        };
        Some(Record {
            token: last.token,
            attempt: history.attempt(),
            owner: last.owner.clone(),
            fingerprint: history.fingerprint.clone(),
            created_at: LedgerTime(history.grants[0].granted_at),
            retention_ms: 0,
            previous,
            state,
        })
    }
}

// =============================================================================================
// The safety observer: sees only the core's answers and state.

#[derive(Debug, Clone)]
struct ObservedGrant {
    token: FencingToken,
    deadline: u64,
    ended: bool,
}

#[derive(Debug, Clone, Default)]
struct ObservedKey {
    grant: Option<ObservedGrant>,
    /// Outcome, completing token and retention deadline of the key's COMPLETED record.
    completed: Option<(Outcome, FencingToken, u64)>,
    /// Retention deadline of the key's AVAILABLE record (the grant was released).
    available_until: Option<u64>,
    /// The largest token ever granted for the key, kept across purges.
    max_token: Option<FencingToken>,
}

impl ObservedKey {
    /// When the key's record may be purged: COMPLETED or AVAILABLE, never CLAIMED.
    fn retained_until(&self) -> Option<u64> {
        self.completed.as_ref().map(|(_, _, until)| *until).or(self.available_until)
    }
}

#[derive(Debug, Default)]
struct Observer {
    keys: BTreeMap<RecordKey, ObservedKey>,
}

impl Observer {
    fn observe(
        &mut self,
        now: u64,
        position: FencingToken,
        command: &Command,
        result: &CommandResult,
    ) -> Result<(), TestCaseError> {
        let seen = self.keys.entry(command.key().clone()).or_default();
        let Ok(answer) = result else {
            if let (Err(rejection), Command::Complete(c)) = (result, command) {
                if rejection.reason() == "OUTCOME_IMMUTABLE" {
                    let stored = seen.completed.as_ref().map(|(outcome, _, _)| outcome);
                    prop_assert!(stored.is_some() && stored != Some(&c.outcome), "OUTCOME_IMMUTABLE without a change");
                }
            }
            return Ok(());
        };
        match (command, answer) {
            (
                Command::Claim(_),
                Answer::Claim(ClaimOutcome::Claimed { token, lease_deadline, reentrant, attempt, previous }),
            ) => {
                if *reentrant {
                    prop_assert!(seen.completed.is_none(), "rule 3: a completed key was claimed again");
                    let grant = seen.grant.as_ref().expect("a re-entrant claim of a grant");
                    prop_assert_eq!(*token, grant.token);
                    prop_assert!(!grant.ended && now < grant.deadline, "re-entrant answer for a dead claim");
                    prop_assert_eq!(lease_deadline.as_ms(), grant.deadline);
                } else {
                    prop_assert_eq!(*token, position, "rule 2: the token is the grant's log position");
                    if let Some(max) = seen.max_token {
                        prop_assert!(*token > max, "rule 2: token {} after {}", token, max);
                    }
                    // A claim that starts afresh (attempt 1, nothing before it) of a key seen
                    // before: its record was purged, which is allowed only once it was COMPLETED
                    // or AVAILABLE and its retention had ended.
                    let afresh = *attempt == 1 && previous.is_none();
                    if seen.grant.is_some() && afresh {
                        let until = seen.retained_until();
                        prop_assert!(
                            until.is_some_and(|until| until <= now),
                            "a record was purged at {now} before its retention ended ({until:?}), or while CLAIMED"
                        );
                        *seen = ObservedKey { max_token: seen.max_token, ..ObservedKey::default() };
                    }
                    prop_assert!(seen.completed.is_none(), "rule 3: a completed key was claimed again");
                    if let Some(before) = &seen.grant {
                        prop_assert!(
                            before.ended || before.deadline <= now,
                            "rule 1: token {} granted at {now} while {} is live until {}",
                            token,
                            before.token,
                            before.deadline
                        );
                    }
                    seen.grant = Some(ObservedGrant { token: *token, deadline: lease_deadline.as_ms(), ended: false });
                    seen.available_until = None;
                    seen.max_token = Some(*token);
                }
            }
            (Command::Claim(_), Answer::Claim(ClaimOutcome::InProgress { lease_deadline, .. })) => {
                prop_assert!(seen.completed.is_none(), "rule 3: IN_PROGRESS for a completed key");
                let grant = seen.grant.as_ref().expect("in progress under a grant");
                prop_assert!(!grant.ended && now < grant.deadline, "IN_PROGRESS without a live claim");
                prop_assert_eq!(lease_deadline.as_ms(), grant.deadline);
            }
            (Command::Claim(_), Answer::Claim(ClaimOutcome::Completed { outcome, token, retained_until, .. })) => {
                prop_assert_eq!(
                    seen.completed.as_ref(),
                    Some(&(outcome.clone(), *token, retained_until.as_ms())),
                    "rule 3"
                );
            }
            (Command::Complete(c), Answer::Complete(ack)) => {
                if ack.replayed {
                    prop_assert_eq!(
                        seen.completed.as_ref(),
                        Some(&(c.outcome.clone(), c.token, ack.retained_until.as_ms())),
                        "rule 3: replay"
                    );
                } else {
                    prop_assert!(seen.completed.is_none(), "rule 3: completed twice");
                    let grant = seen.grant.as_mut().expect("complete of a grant");
                    prop_assert_eq!(c.token, grant.token, "rule 3: only the current token completes");
                    prop_assert!(!grant.ended);
                    prop_assert_eq!(ack.late, now >= grant.deadline);
                    prop_assert!(ack.retained_until.as_ms() > now, "completed with its retention already over");
                    grant.ended = true;
                    seen.completed = Some((c.outcome.clone(), c.token, ack.retained_until.as_ms()));
                }
            }
            (Command::Release(c), Answer::Release(ack)) => {
                prop_assert!(seen.completed.is_none(), "a completed key was released");
                let grant = seen.grant.as_mut().expect("release of a grant");
                prop_assert_eq!(c.token, grant.token, "rule 3: only the current token releases");
                prop_assert_eq!(ack.replayed, grant.ended);
                if ack.replayed {
                    prop_assert_eq!(seen.available_until, Some(ack.retained_until.as_ms()));
                }
                grant.ended = true;
                seen.available_until = Some(ack.retained_until.as_ms());
            }
            (Command::ExtendLease(c), Answer::ExtendLease(ack)) => {
                let grant = seen.grant.as_mut().expect("extension of a grant");
                prop_assert_eq!(c.token, grant.token, "rule 3: only the current token extends");
                prop_assert!(!grant.ended && now < grant.deadline, "a dead claim was extended");
                grant.deadline = ack.lease_deadline.as_ms();
            }
            (Command::Forget(_), Answer::Forgotten(ack)) => {
                // The record goes; only the largest token is remembered, for rule 2.
                let grant = seen.grant.as_ref().expect("forget of a key that had a record");
                prop_assert_eq!(ack.audit.previous.token, grant.token);
                *seen = ObservedKey { max_token: seen.max_token, ..ObservedKey::default() };
            }
            (Command::ForceRelease(_), Answer::ForceReleased(ack)) => {
                prop_assert!(seen.completed.is_none(), "a completed key was force-released");
                let grant = seen.grant.as_mut().expect("force-release of a grant");
                prop_assert_eq!(ack.audit.previous.token, grant.token);
                prop_assert!(!grant.ended, "force-released an ended claim");
                grant.ended = true;
                seen.available_until = Some(now + ack.audit.previous.retention_ms);
            }
            (command, answer) => prop_assert!(false, "answer {answer:?} to {command:?}"),
        }
        Ok(())
    }

    /// After each entry, at ledger time `now`: a completed key stays COMPLETED with its outcome
    /// and token until its record is purged, and it is not purged before its retention ended.
    fn check_state(&self, core: &MemoryLedger, now: u64) -> Result<(), TestCaseError> {
        for (key, seen) in &self.keys {
            if let Some((outcome, token, retained_until)) = &seen.completed {
                let Some(record) = core.records.get(key) else {
                    prop_assert!(
                        *retained_until <= now,
                        "rule 3: COMPLETED {key} was purged at {now}, its retention ends at {retained_until}"
                    );
                    continue;
                };
                prop_assert_eq!(record.token, *token);
                let stored = match &record.state {
                    RecordState::Completed { outcome, .. } => Some(outcome),
                    _ => None,
                };
                prop_assert_eq!(stored, Some(outcome), "rule 3: the outcome of {} changed", key);
            }
            if let (Some(grant), None) = (&seen.grant, seen.retained_until()) {
                let record = core.records.get(key);
                prop_assert!(record.is_some_and(|r| r.token == grant.token), "CLAIMED {} was purged", key);
            }
        }
        Ok(())
    }
}

// =============================================================================================
// Generated runs.

#[derive(Debug, Clone)]
enum TokenPick {
    /// The key's current token.
    Current,
    /// One of the key's earlier tokens (also of its purged records).
    Stale(usize),
    /// Any token granted so far, for any key.
    AnySeen(usize),
    /// One more than the current token: never granted for this key.
    MadeUpNewer,
    /// One less than the current token (older, never granted, or a stale one).
    MadeUpOlder,
    Zero,
}

#[derive(Debug, Clone)]
enum Op {
    Claim {
        key: usize,
        owner: usize,
        lease_ms: u64,
        fingerprint: Option<usize>,
        request_id: Option<usize>,
        retention_ms: Option<u64>,
    },
    Complete {
        key: usize,
        token: TokenPick,
        outcome: usize,
        retention_ms: Option<u64>,
    },
    Release {
        key: usize,
        token: TokenPick,
        effect_unknown: bool,
        checkpoint: usize,
    },
    Extend {
        key: usize,
        token: TokenPick,
        lease_ms: u64,
        checkpoint: Option<usize>,
    },
    Forget {
        key: usize,
        reason: usize,
        operator: usize,
    },
    ForceRelease {
        key: usize,
        reason: usize,
        operator: usize,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// The leader's clock moves on.
    Advance(u64),
    /// The leader's clock jumps to the lease deadline of a key's open claim, plus -1, 0 or 1 ms.
    ToDeadline { key: usize, offset: i64 },
    /// One entry, stamped with the leader's clock minus `older_by`.
    Entry { older_by: u64, ops: Vec<Op> },
    /// Later ops use three fresh keys (keys tend to end COMPLETED; this keeps runs busy).
    NewKeys,
}

fn key_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![30 => 0..3usize, 1 => Just(3usize)]
}

fn lease_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => prop::sample::select(vec![LEASE_MS_MIN, 250, 1_000]),
        1 => prop::sample::select(vec![LEASE_MS_MIN - 1, LEASE_MS_MAX + 1]),
    ]
}

fn retention_strategy() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        8 => Just(None),
        4 => prop::sample::select(vec![Some(RETENTION_MS_MIN), Some(3_000)]),
        1 => prop::sample::select(vec![Some(0), Some(RETENTION_MS_MIN - 1)]),
    ]
}

fn token_strategy() -> impl Strategy<Value = TokenPick> {
    prop_oneof![
        10 => Just(TokenPick::Current),
        4 => any::<usize>().prop_map(TokenPick::Stale),
        2 => any::<usize>().prop_map(TokenPick::AnySeen),
        1 => Just(TokenPick::MadeUpNewer),
        1 => Just(TokenPick::MadeUpOlder),
        1 => Just(TokenPick::Zero),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let claim = (
        key_strategy(),
        prop_oneof![30 => 0..3usize, 1 => Just(3usize)],
        lease_strategy(),
        prop::option::weighted(0.5, 0..FINGERPRINTS.len()),
        prop::option::weighted(0.6, 0..REQUEST_IDS.len()),
        retention_strategy(),
    )
        .prop_map(|(key, owner, lease_ms, fingerprint, request_id, retention_ms)| Op::Claim {
            key,
            owner,
            lease_ms,
            fingerprint,
            request_id,
            retention_ms,
        });
    let complete = (key_strategy(), token_strategy(), 0..3usize, retention_strategy())
        .prop_map(|(key, token, outcome, retention_ms)| Op::Complete { key, token, outcome, retention_ms });
    let release = (key_strategy(), token_strategy(), any::<bool>(), 0..CHECKPOINTS.len())
        .prop_map(|(key, token, effect_unknown, checkpoint)| Op::Release { key, token, effect_unknown, checkpoint });
    let extend = (key_strategy(), token_strategy(), lease_strategy(), prop::option::of(1..CHECKPOINTS.len()))
        .prop_map(|(key, token, lease_ms, checkpoint)| Op::Extend { key, token, lease_ms, checkpoint });
    // Mostly valid reasons and operators; now and then one past a limit or an empty reason.
    let operator_fields = || {
        (
            key_strategy(),
            prop_oneof![12 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)],
            prop_oneof![
                6 => 0..2usize,
                1 => Just(2usize)
            ],
        )
    };
    let forget = operator_fields().prop_map(|(key, reason, operator)| Op::Forget { key, reason, operator });
    let force_release =
        operator_fields().prop_map(|(key, reason, operator)| Op::ForceRelease { key, reason, operator });
    prop_oneof![5 => claim, 3 => complete, 2 => release, 2 => extend, 1 => forget, 1 => force_release]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::NewKeys),
        4 => prop::sample::select(vec![1u64, 49, 50, 99, 100, 101, 250, 999, 1_000, 2_500]).prop_map(Step::Advance),
        2 => (0..3usize, -1i64..=1).prop_map(|(key, offset)| Step::ToDeadline { key, offset }),
        8 => (
            prop_oneof![8 => Just(0u64), 1 => prop::sample::select(vec![1u64, 300, 5_000])],
            prop::collection::vec(op_strategy(), 1..=4),
        )
            .prop_map(|(older_by, ops)| Step::Entry { older_by, ops }),
    ]
}

fn run_strategy() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step_strategy(), 1..=60)
}

/// Turns an abstract op into a command, picking tokens from what the run has seen so far.
fn resolve(op: &Op, generation: u32, model: &Model, seen_tokens: &[FencingToken]) -> Command {
    let token_for = |key: &RecordKey, pick: &TokenPick| -> FencingToken {
        let current = model.current_token(key);
        let never_granted = FencingToken::new(1 << 40, 0);
        match pick {
            TokenPick::Current => current.unwrap_or(never_granted),
            TokenPick::Stale(i) => {
                // Tokens of the key's purged records, then its earlier grants.
                let grants = model.history(key).map_or(&[][..], |h| &h.grants[..]);
                let mut earlier = model.purged_tokens.get(key).cloned().unwrap_or_default();
                earlier.extend(grants.iter().take(grants.len().saturating_sub(1)).map(|g| g.token));
                match (earlier.len(), grants.last()) {
                    (0, None) => never_granted,
                    (0, Some(last)) => last.token,
                    (n, _) => earlier[i % n],
                }
            }
            TokenPick::AnySeen(i) => {
                if seen_tokens.is_empty() {
                    never_granted
                } else {
                    seen_tokens[i % seen_tokens.len()]
                }
            }
            TokenPick::MadeUpNewer => current.map_or(never_granted, |t| FencingToken(t.0 + 1)),
            TokenPick::MadeUpOlder => current.map_or(FencingToken(1), |t| FencingToken(t.0 - 1)),
            TokenPick::Zero => FencingToken(0),
        }
    };
    match op {
        Op::Claim { key, owner, lease_ms, fingerprint, request_id, retention_ms } => Command::Claim(ClaimCommand {
            key: record_key(generation, *key),
            owner: OWNERS[*owner].to_string(),
            lease_ms: *lease_ms,
            fingerprint: fingerprint.map(|i| FINGERPRINTS[i].to_vec()),
            request_id: request_id.map(|i| REQUEST_IDS[i].to_string()),
            retention_ms: *retention_ms,
        }),
        Op::Complete { key, token, outcome: which, retention_ms } => {
            let key = record_key(generation, *key);
            Command::Complete(CompleteCommand {
                token: token_for(&key, token),
                key,
                outcome: outcome(*which),
                retention_ms: *retention_ms,
            })
        }
        Op::Release { key, token, effect_unknown, checkpoint } => {
            let key = record_key(generation, *key);
            Command::Release(ReleaseCommand {
                token: token_for(&key, token),
                key,
                reason: if *effect_unknown { ReleaseReason::EffectUnknown } else { ReleaseReason::Retryable },
                checkpoint: CHECKPOINTS[*checkpoint].to_vec(),
            })
        }
        Op::Extend { key, token, lease_ms, checkpoint } => {
            let key = record_key(generation, *key);
            Command::ExtendLease(ExtendLeaseCommand {
                token: token_for(&key, token),
                key,
                lease_ms: *lease_ms,
                checkpoint: checkpoint.map(|i| CHECKPOINTS[i].to_vec()),
            })
        }
        Op::Forget { key, reason: r, operator: o } => Command::Forget(OperatorCommand {
            key: record_key(generation, *key),
            reason: reason(*r),
            operator: operator(*o),
        }),
        Op::ForceRelease { key, reason: r, operator: o } => Command::ForceRelease(OperatorCommand {
            key: record_key(generation, *key),
            reason: reason(*r),
            operator: operator(*o),
        }),
    }
}

/// A label for what a command's result exercised, for the coverage check. `removed_by`: how the
/// command's key last lost a record ("purge", "forget"), if it did.
fn label(command: &Command, result: &CommandResult, removed_by: Option<&str>) -> String {
    match result {
        Err(Rejection::NotForceReleasable { record }) => format!("rejected force-release of {}", record.state_name()),
        Err(rejection) => format!("rejected {}", rejection.reason()),
        Ok(Answer::Claim(ClaimOutcome::Claimed { reentrant: true, .. })) => "claim reentrant".to_string(),
        Ok(Answer::Claim(ClaimOutcome::Claimed { previous, token, .. })) => match previous {
            None => match removed_by {
                Some(how) => format!("claim after {how}"),
                None => "claim first".to_string(),
            },
            Some(p) if p.ended == PreviousEnd::LeaseLapsed => "claim takeover".to_string(),
            Some(p) if p.ended == PreviousEnd::ForceReleased => "claim after force-release".to_string(),
            Some(p) if p.token.log_index() == token.log_index() => "claim after release in the same entry".to_string(),
            Some(_) => "claim after release".to_string(),
        },
        Ok(Answer::Claim(ClaimOutcome::InProgress { .. })) => "claim in progress".to_string(),
        Ok(Answer::Claim(ClaimOutcome::Completed { .. })) => "claim completed".to_string(),
        Ok(Answer::Complete(ack)) => format!("complete replayed={} late={}", ack.replayed, ack.late),
        Ok(Answer::Release(ack)) => format!("release replayed={}", ack.replayed),
        Ok(Answer::ExtendLease(_)) => match command {
            Command::ExtendLease(ExtendLeaseCommand { checkpoint: Some(_), .. }) => {
                "extend with checkpoint".to_string()
            }
            _ => "extend".to_string(),
        },
        Ok(Answer::Forgotten(ack)) => format!("forget {}", ack.audit.previous.state_name()),
        Ok(Answer::ForceReleased(_)) => "force-release".to_string(),
    }
}

/// `answer` with the record an operator ack carries stripped of `retention_ms`, which the model
/// leaves out.
fn without_retention(answer: &Answer) -> Answer {
    let mut answer = answer.clone();
    if let Answer::Forgotten(ack) | Answer::ForceReleased(ack) = &mut answer {
        ack.audit.previous.retention_ms = 0;
    }
    answer
}

/// Runs one generated sequence through the core, the model and the observer.
fn run(steps: &[Step], coverage: &mut BTreeMap<String, usize>) -> Result<(), TestCaseError> {
    let mut core = MemoryLedger::default();
    let mut model = Model::default();
    let mut observer = Observer::default();
    let mut seen_tokens: Vec<FencingToken> = Vec::new();
    let mut leader_clock: u64 = 0;
    let mut log_index: u64 = 0;
    let mut generation: u32 = 0;
    let mut audit_trail: Vec<AuditEntry> = Vec::new();

    for step in steps {
        let (older_by, ops) = match step {
            Step::Advance(ms) => {
                leader_clock += ms;
                continue;
            }
            Step::NewKeys => {
                generation += 1;
                continue;
            }
            Step::ToDeadline { key, offset } => {
                if let Some(grant) = model.open_grant(&record_key(generation, *key)) {
                    leader_clock = grant.deadline.saturating_add_signed(*offset);
                    *coverage.entry("clock at a deadline".to_string()).or_default() += 1;
                }
                continue;
            }
            Step::Entry { older_by, ops } => (*older_by, ops),
        };
        log_index += 1;
        let entry_time = leader_clock.saturating_sub(older_by);
        if entry_time < model.time {
            *coverage.entry("entry stamped older".to_string()).or_default() += 1;
        }
        let now = model.begin_entry(entry_time);
        let purged = model.purge(now);
        for (_, state) in &purged {
            *coverage.entry("purged".to_string()).or_default() += 1;
            *coverage.entry(format!("purged {state}")).or_default() += 1;
        }

        // Resolve each op against the model as it stands after the entry's earlier commands.
        let mut commands = Vec::with_capacity(ops.len());
        let mut expected = Vec::with_capacity(ops.len());
        for (slot, op) in ops.iter().enumerate() {
            let command = resolve(op, generation, &model, &seen_tokens);
            let position = FencingToken::new(log_index, slot as u16);
            let answer = model.apply(now, position, &command);
            if let Some(Answer::Claim(ClaimOutcome::Claimed { token, reentrant: false, .. })) = answer.as_answer() {
                seen_tokens.push(*token);
            }
            commands.push(command);
            expected.push(answer);
        }

        let before = core.clone();
        let results = apply_entry(&mut core, log_index, LedgerTime(entry_time), &commands);
        prop_assert_eq!(results.len(), commands.len());
        prop_assert_eq!(core.time, LedgerTime(now), "ledger time is max(entry time, last applied time)");
        prop_assert!(core.time >= before.time, "ledger time went backwards");

        for (slot, ((command, result), expected)) in commands.iter().zip(&results).zip(&expected).enumerate() {
            let position = FencingToken::new(log_index, slot as u16);
            match (expected, result) {
                (Expected::Answer(want), Ok(got)) => {
                    prop_assert_eq!(
                        &without_retention(got),
                        want.as_ref(),
                        "entry {} slot {}: {:?}",
                        log_index,
                        slot,
                        command
                    );
                    if let Answer::Forgotten(ack) | Answer::ForceReleased(ack) = got {
                        audit_trail.push(ack.audit.clone());
                    }
                }
                (Expected::Rejected { reasons, record_token }, Err(rejection)) => {
                    prop_assert!(
                        reasons.contains(&rejection.reason()),
                        "entry {log_index} slot {slot}: {command:?} rejected with {rejection}, expected one of {reasons:?}"
                    );
                    prop_assert_eq!(rejection.record().map(|r| r.token), *record_token, "{}", rejection);
                }
                (want, got) => {
                    prop_assert!(false, "entry {log_index} slot {slot}: {command:?}: model {want:?}, core {got:?}");
                }
            }
            observer.observe(now, position, command, result)?;
            let removed_by = model.removed_by.get(command.key()).copied();
            *coverage.entry(label(command, result, removed_by)).or_default() += 1;
        }
        observer.check_state(&core, now)?;
        // The audit trail holds every accepted operator command, in log order.
        let kept = audit_trail.len().saturating_sub(AUDIT_ENTRIES_MAX);
        prop_assert!(core.audit.iter().eq(&audit_trail[kept..]), "the audit trail after entry {}", log_index);

        // No record is purged before its retention ended (a CLAIMED record never is), and a record
        // no command of the entry named is left as it was. Only a forget removes one earlier.
        for (key, record) in &before.records {
            if record.retained_until().is_some_and(|until| until <= LedgerTime(now)) {
                continue;
            }
            let forgotten = commands
                .iter()
                .zip(&results)
                .any(|(c, r)| matches!((c, r), (Command::Forget(f), Ok(_)) if f.key == *key));
            if forgotten {
                // Gone, or claimed afresh later in the entry: the model comparison below checks which.
                continue;
            }
            let after = core.records.get(key);
            prop_assert!(after.is_some(), "{} ({:?}) was purged at {}", key, record, now);
            if !commands.iter().any(|c| c.key() == key) {
                prop_assert_eq!(after, Some(record), "{} changed at {} though no command named it", key, now);
            }
        }
        // The deadline index holds exactly the COMPLETED and AVAILABLE records.
        let indexed: BTreeSet<(LedgerTime, RecordKey)> =
            core.records.iter().filter_map(|(key, r)| Some((r.retained_until()?, key.clone()))).collect();
        prop_assert_eq!(&core.deadlines, &indexed, "the deadline index is out of step after entry {}", log_index);

        // The same entry, one command at a time: the purge first, then each command; a rejection
        // leaves the state exactly as it was.
        let mut one_by_one = before;
        one_by_one.set_ledger_time(LedgerTime(now));
        let purged_count = purge_expired(&mut one_by_one, LedgerTime(now), PURGE_PER_ENTRY_MAX);
        prop_assert_eq!(purged_count, purged.len(), "records purged at {}", now);
        for (slot, command) in commands.iter().enumerate() {
            let snapshot = one_by_one.clone();
            let position = LogPosition { log_index, slot: slot as u16 };
            let result = apply(&mut one_by_one, position, LedgerTime(now), command);
            prop_assert_eq!(&result, &results[slot]);
            if result.is_err() {
                prop_assert_eq!(&one_by_one, &snapshot, "rejected {:?} changed the state", command);
            }
        }
        prop_assert_eq!(&one_by_one, &core);

        // The whole stored state agrees with the model's history.
        let mut keys: Vec<&RecordKey> = core.records.keys().collect();
        keys.extend(model.keys.keys().filter(|k| model.history(k).is_some()));
        keys.sort();
        keys.dedup();
        for key in keys {
            let stored = core.records.get(key).map(|r| Record { retention_ms: 0, ..r.clone() });
            prop_assert_eq!(stored, model.render(key), "record {} after entry {}", key, log_index);
        }
        let horizons: BTreeMap<String, u64> =
            core.purge_horizons.iter().map(|(ns, t)| (ns.clone(), t.as_ms())).collect();
        prop_assert_eq!(&horizons, &model.purge_horizons, "purge horizons after entry {}", log_index);
        prop_assert_eq!(
            core.purge_horizon(NAMESPACE).as_ms(),
            model.purge_horizons.get(NAMESPACE).copied().unwrap_or(0)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 256,
        // A failing run is saved next to this file (the default looks for a lib.rs and finds none).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    })]

    #[test]
    fn core_matches_the_naive_model_and_keeps_the_safety_rules(steps in run_strategy()) {
        run(&steps, &mut BTreeMap::new())?;
    }
}

/// The generator reaches every transition and rejection the model knows (a deterministic sample
/// of the same size as the property test).
#[test]
fn generated_runs_cover_every_transition_and_rejection() {
    let mut runner = TestRunner::deterministic();
    let strategy = run_strategy();
    let mut coverage = BTreeMap::new();
    for _ in 0..256 {
        let steps = strategy.new_tree(&mut runner).expect("a generated run").current();
        run(&steps, &mut coverage).expect("a deterministic run passes");
    }
    let wanted = [
        "claim first",
        "claim after purge",
        "claim takeover",
        "claim after release",
        "claim after release in the same entry",
        "claim reentrant",
        "claim in progress",
        "claim completed",
        "complete replayed=false late=false",
        "complete replayed=false late=true",
        "complete replayed=true late=false",
        "release replayed=false",
        "release replayed=true",
        "extend",
        "extend with checkpoint",
        "rejected FENCED",
        "rejected NOT_CLAIMED",
        "rejected LEASE_LAPSED",
        "rejected OUTCOME_IMMUTABLE",
        "rejected FINGERPRINT_MISMATCH",
        "rejected KEY_EMPTY",
        "rejected OWNER_EMPTY",
        "rejected LEASE_OUT_OF_RANGE",
        "rejected RETENTION_OUT_OF_RANGE",
        "rejected TOKEN_INVALID",
        "clock at a deadline",
        "entry stamped older",
        "purged",
        "purged COMPLETED",
        "purged AVAILABLE",
        "forget CLAIMED",
        "forget COMPLETED",
        "forget AVAILABLE",
        "claim after forget",
        "force-release",
        "claim after force-release",
        "rejected NO_RECORD",
        "rejected force-release of COMPLETED",
        "rejected force-release of AVAILABLE",
        "rejected REASON_EMPTY",
        "rejected REASON_TOO_LONG",
        "rejected OPERATOR_TOO_LONG",
    ];
    let missing: Vec<&str> = wanted.iter().copied().filter(|w| !coverage.contains_key(*w)).collect();
    assert!(missing.is_empty(), "never exercised: {missing:?}\ncoverage: {coverage:#?}");
    println!("coverage over 256 runs: {coverage:#?}");
}
