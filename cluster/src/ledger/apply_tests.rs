//! Unit tests of the pure ledger core: one test per transition and rejection of DESIGN §2-§3,
//! each named for the behaviour a caller relies on.

use std::collections::BTreeSet;

use super::limits::*;
use super::*;

const NS: &str = "orders";

fn key(name: &str) -> RecordKey {
    RecordKey::new(NS, name.as_bytes())
}

fn claim(name: &str, owner: &str, lease_ms: u64) -> ClaimCommand {
    ClaimCommand {
        key: key(name),
        owner: owner.to_string(),
        lease_ms,
        fingerprint: None,
        request_id: None,
        retention_ms: None,
    }
}

fn claim_with_request(name: &str, owner: &str, lease_ms: u64, request_id: &str) -> ClaimCommand {
    ClaimCommand { request_id: Some(request_id.to_string()), ..claim(name, owner, lease_ms) }
}

fn claim_with_fingerprint(name: &str, owner: &str, fingerprint: &[u8]) -> ClaimCommand {
    ClaimCommand { fingerprint: Some(fingerprint.to_vec()), ..claim(name, owner, 1000) }
}

fn succeeded(payload: &[u8]) -> Outcome {
    Outcome { kind: OutcomeKind::Succeeded, payload: payload.to_vec() }
}

fn complete(name: &str, token: FencingToken, outcome: Outcome) -> Command {
    Command::Complete(CompleteCommand { key: key(name), token, outcome, retention_ms: None })
}

fn release(name: &str, token: FencingToken, reason: ReleaseReason, checkpoint: &[u8]) -> Command {
    Command::Release(ReleaseCommand { key: key(name), token, reason, checkpoint: checkpoint.to_vec() })
}

fn extend(name: &str, token: FencingToken, lease_ms: u64, checkpoint: Option<&[u8]>) -> Command {
    Command::ExtendLease(ExtendLeaseCommand {
        key: key(name),
        token,
        lease_ms,
        checkpoint: checkpoint.map(<[u8]>::to_vec),
    })
}

/// Applies one command as its own entry at `log_index`, ledger time `time_ms`.
fn apply_one(ledger: &mut MemoryLedger, log_index: u64, time_ms: u64, command: Command) -> CommandResult {
    let mut results = apply_entry(ledger, log_index, LedgerTime(time_ms), &[command]);
    assert_eq!(results.len(), 1);
    results.pop().unwrap()
}

/// The fields of a CLAIMED answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Granted {
    token: FencingToken,
    lease_deadline: LedgerTime,
    attempt: u32,
    previous: Option<PreviousAttempt>,
    reentrant: bool,
}

fn expect_claimed(result: CommandResult) -> Granted {
    match result {
        Ok(Answer::Claim(ClaimOutcome::Claimed { token, lease_deadline, attempt, previous, reentrant })) => {
            Granted { token, lease_deadline, attempt, previous, reentrant }
        }
        other => panic!("expected CLAIMED, got {other:?}"),
    }
}

fn expect_complete_ack(result: CommandResult) -> CompleteAck {
    match result {
        Ok(Answer::Complete(ack)) => ack,
        other => panic!("expected a complete ack, got {other:?}"),
    }
}

fn expect_release_ack(result: CommandResult) -> ReleaseAck {
    match result {
        Ok(Answer::Release(ack)) => ack,
        other => panic!("expected a release ack, got {other:?}"),
    }
}

fn expect_extend_ack(result: CommandResult) -> ExtendAck {
    match result {
        Ok(Answer::ExtendLease(ack)) => ack,
        other => panic!("expected an extend ack, got {other:?}"),
    }
}

fn expect_rejection(result: CommandResult) -> Rejection {
    match result {
        Err(rejection) => rejection,
        Ok(answer) => panic!("expected a rejection, got {answer:?}"),
    }
}

/// Applies `command` and checks it is rejected with `reason` and changes nothing, not even the
/// ledger time (the entry is stamped with the ledger's current time).
fn assert_rejected_unchanged(ledger: &mut MemoryLedger, log_index: u64, command: Command, reason: &str) -> Rejection {
    let before = ledger.clone();
    let rejection = expect_rejection(apply_one(ledger, log_index, before.time.as_ms(), command));
    assert_eq!(rejection.reason(), reason, "{rejection}");
    assert_eq!(*ledger, before, "a rejected command ({reason}) changed the ledger");
    rejection
}

fn assert_limit(ledger: &mut MemoryLedger, log_index: u64, command: Command, reason: &str) {
    let rejection = assert_rejected_unchanged(ledger, log_index, command, reason);
    assert!(matches!(rejection, Rejection::Invalid(_)), "{rejection:?}");
    assert!(rejection.record().is_none());
}

/// A ledger where `name` is claimed by `owner` at log index 1, time 0, lease 1000 ms.
fn ledger_with_claim(name: &str, owner: &str) -> (MemoryLedger, FencingToken) {
    let mut ledger = MemoryLedger::default();
    let granted = expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim(name, owner, 1000))));
    (ledger, granted.token)
}

fn record_state(ledger: &MemoryLedger, name: &str) -> RecordState {
    ledger.records.get(&key(name)).expect("record exists").state.clone()
}

// ---------------------------------------------------------------------------------------------
// Claim

#[test]
fn first_claim_grants_token_of_its_log_position_and_attempt_one() {
    let mut ledger = MemoryLedger::default();
    let granted = expect_claimed(apply_one(&mut ledger, 7, 1_000, Command::Claim(claim("a", "worker-1", 500))));
    assert_eq!(
        granted,
        Granted {
            token: FencingToken::new(7, 0),
            lease_deadline: LedgerTime(1_500),
            attempt: 1,
            previous: None,
            reentrant: false,
        }
    );
    assert_eq!(granted.token.log_index(), 7);
    assert_eq!(granted.token.slot(), 0);

    let record = &ledger.records[&key("a")];
    assert_eq!(record.state_name(), "CLAIMED");
    assert_eq!(record.owner, "worker-1");
    assert_eq!(record.token, granted.token);
    assert_eq!(record.attempt, 1);
    assert_eq!(record.created_at, LedgerTime(1_000));
    assert_eq!(record.retention_ms, RETENTION_MS_DEFAULT);
    assert_eq!(ledger.time, LedgerTime(1_000));
}

#[test]
fn first_claim_in_a_later_slot_gets_that_slot_in_its_token() {
    let mut ledger = MemoryLedger::default();
    let results = apply_entry(
        &mut ledger,
        9,
        LedgerTime(10),
        &[
            Command::Claim(claim("a", "w", 100)),
            Command::Claim(claim("b", "w", 100)),
            Command::Claim(claim("c", "w", 100)),
        ],
    );
    let tokens: Vec<FencingToken> = results.into_iter().map(|r| expect_claimed(r).token).collect();
    assert_eq!(tokens, vec![FencingToken::new(9, 0), FencingToken::new(9, 1), FencingToken::new(9, 2)]);
    assert_eq!(tokens[2].log_index(), 9);
    assert_eq!(tokens[2].slot(), 2);
}

#[test]
fn duplicate_claim_while_lease_live_is_in_progress_with_retry_after() {
    let (mut ledger, _) = ledger_with_claim("a", "worker-1");
    let before = ledger.records.clone();
    let answer = apply_one(&mut ledger, 2, 300, Command::Claim(claim("a", "worker-2", 5_000)));
    assert_eq!(
        answer,
        Ok(Answer::Claim(ClaimOutcome::InProgress {
            owner: "worker-1".to_string(),
            lease_deadline: LedgerTime(1_000),
            attempt: 1,
            retry_after_ms: 700,
        }))
    );
    assert_eq!(ledger.records, before, "an in-flight duplicate must not change the record");
}

#[test]
fn duplicate_claim_one_ms_before_deadline_is_still_in_progress() {
    let (mut ledger, _) = ledger_with_claim("a", "worker-1");
    match apply_one(&mut ledger, 2, 999, Command::Claim(claim("a", "worker-2", 1_000))) {
        Ok(Answer::Claim(ClaimOutcome::InProgress { retry_after_ms, .. })) => assert_eq!(retry_after_ms, 1),
        other => panic!("expected IN_PROGRESS, got {other:?}"),
    }
}

#[test]
fn same_owner_without_request_id_is_in_progress_not_reentrant() {
    let (mut ledger, _) = ledger_with_claim("a", "worker-1");
    let answer = apply_one(&mut ledger, 2, 10, Command::Claim(claim("a", "worker-1", 1_000)));
    assert!(matches!(answer, Ok(Answer::Claim(ClaimOutcome::InProgress { .. }))), "{answer:?}");
}

#[test]
fn retried_claim_with_same_owner_and_request_id_gets_same_claimed_answer_reentrant() {
    let mut ledger = MemoryLedger::default();
    let first =
        expect_claimed(apply_one(&mut ledger, 3, 100, Command::Claim(claim_with_request("a", "w1", 1_000, "req-1"))));
    let before = ledger.clone();

    let again =
        expect_claimed(apply_one(&mut ledger, 4, 600, Command::Claim(claim_with_request("a", "w1", 2_000, "req-1"))));
    assert_eq!(again, Granted { reentrant: true, ..first.clone() });
    assert_eq!(ledger.records, before.records, "a retried claim call is not a second claim");
}

#[test]
fn same_request_id_from_a_different_owner_is_in_progress() {
    let mut ledger = MemoryLedger::default();
    expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim_with_request("a", "w1", 1_000, "req-1"))));
    let answer = apply_one(&mut ledger, 2, 10, Command::Claim(claim_with_request("a", "w2", 1_000, "req-1")));
    assert!(
        matches!(answer, Ok(Answer::Claim(ClaimOutcome::InProgress { ref owner, .. })) if owner == "w1"),
        "{answer:?}"
    );
}

#[test]
fn same_owner_with_a_different_request_id_is_in_progress() {
    let mut ledger = MemoryLedger::default();
    expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim_with_request("a", "w1", 1_000, "req-1"))));
    let answer = apply_one(&mut ledger, 2, 10, Command::Claim(claim_with_request("a", "w1", 1_000, "req-2")));
    assert!(matches!(answer, Ok(Answer::Claim(ClaimOutcome::InProgress { .. }))), "{answer:?}");
}

#[test]
fn takeover_at_exactly_the_lease_deadline_gets_larger_token_next_attempt_and_previous_lease_lapsed() {
    let (mut ledger, old_token) = ledger_with_claim("a", "worker-1");
    expect_extend_ack(apply_one(&mut ledger, 2, 500, extend("a", old_token, 500, Some(b"step-3"))));
    // The extension moved the deadline to 1000 again; at exactly 1000 the lease has lapsed.
    let taken = expect_claimed(apply_one(&mut ledger, 3, 1_000, Command::Claim(claim("a", "worker-2", 2_000))));
    assert_eq!(taken.token, FencingToken::new(3, 0));
    assert!(taken.token > old_token);
    assert_eq!(taken.attempt, 2);
    assert_eq!(taken.lease_deadline, LedgerTime(3_000));
    assert!(!taken.reentrant);
    assert_eq!(
        taken.previous,
        Some(PreviousAttempt {
            ended: PreviousEnd::LeaseLapsed,
            owner: "worker-1".to_string(),
            token: old_token,
            attempt: 1,
            checkpoint: b"step-3".to_vec(),
        })
    );
    let record = &ledger.records[&key("a")];
    assert_eq!(record.owner, "worker-2");
    assert_eq!(record.token, taken.token);
    assert_eq!(record.previous, taken.previous);
    assert_eq!(record.created_at, LedgerTime(0), "a takeover keeps the record's creation time");
}

#[test]
fn retried_claim_after_its_lease_lapsed_is_a_takeover_not_a_replay() {
    let mut ledger = MemoryLedger::default();
    let first =
        expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim_with_request("a", "w1", 100, "req-1"))));
    let again =
        expect_claimed(apply_one(&mut ledger, 2, 100, Command::Claim(claim_with_request("a", "w1", 100, "req-1"))));
    assert!(!again.reentrant);
    assert!(again.token > first.token);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.previous.map(|p| (p.ended, p.token)), Some((PreviousEnd::LeaseLapsed, first.token)));
}

#[test]
fn claim_of_a_completed_key_returns_the_stored_outcome() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 200, complete("a", token, succeeded(b"receipt-42"))));
    let before = ledger.clone();
    // Long after the lease, from any owner, with any request id: the outcome, never a new claim.
    for (index, owner) in [(3, "worker-1"), (4, "worker-2")] {
        let answer = apply_one(&mut ledger, index, 5_000, Command::Claim(claim_with_request("a", owner, 1_000, "r")));
        assert_eq!(
            answer,
            Ok(Answer::Claim(ClaimOutcome::Completed {
                outcome: succeeded(b"receipt-42"),
                completed_at: LedgerTime(200),
                token,
                attempt: 1,
                retained_until: ack.retained_until,
            }))
        );
    }
    assert_eq!(ledger.records, before.records);
}

// ---------------------------------------------------------------------------------------------
// Complete

#[test]
fn complete_with_current_token_stores_outcome() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 400, complete("a", token, succeeded(b"ok"))));
    assert_eq!(
        ack,
        CompleteAck {
            completed_at: LedgerTime(400),
            retained_until: LedgerTime(400 + RETENTION_MS_DEFAULT),
            replayed: false,
            late: false,
        }
    );
    assert_eq!(
        record_state(&ledger, "a"),
        RecordState::Completed {
            outcome: succeeded(b"ok"),
            completed_at: LedgerTime(400),
            retained_until: LedgerTime(400 + RETENTION_MS_DEFAULT),
        }
    );
    assert_eq!(ledger.records[&key("a")].token, token, "COMPLETED keeps the completing token");
}

#[test]
fn complete_after_lease_lapsed_without_takeover_is_accepted_late() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    // Exactly at the deadline the lease has lapsed.
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 1_000, complete("a", token, succeeded(b"ok"))));
    assert!(ack.late);
    assert!(!ack.replayed);
    assert_eq!(ack.completed_at, LedgerTime(1_000));
    assert_eq!(ledger.records[&key("a")].state_name(), "COMPLETED");

    let (mut ledger, token) = ledger_with_claim("b", "worker-1");
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 60_000, complete("b", token, succeeded(b"ok"))));
    assert!(ack.late);
}

#[test]
fn complete_one_ms_before_deadline_is_not_late() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 999, complete("a", token, succeeded(b"ok"))));
    assert!(!ack.late);
}

#[test]
fn complete_replay_with_same_outcome_is_replayed_with_original_times() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let first = expect_complete_ack(apply_one(&mut ledger, 2, 400, complete("a", token, succeeded(b"ok"))));
    let before = ledger.records.clone();
    let replay = expect_complete_ack(apply_one(&mut ledger, 3, 9_000, complete("a", token, succeeded(b"ok"))));
    assert!(replay.replayed);
    assert_eq!(replay.completed_at, first.completed_at);
    assert_eq!(replay.retained_until, first.retained_until);
    assert_eq!(ledger.records, before);
}

#[test]
fn complete_with_a_different_outcome_is_outcome_immutable() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    expect_complete_ack(apply_one(&mut ledger, 2, 400, complete("a", token, succeeded(b"ok"))));
    ledger.time = LedgerTime(400);
    let different_payload = complete("a", token, succeeded(b"other"));
    let rejection = assert_rejected_unchanged(&mut ledger, 3, different_payload, "OUTCOME_IMMUTABLE");
    assert_eq!(rejection.record().map(|r| r.state_name()), Some("COMPLETED"));
    let different_kind = complete("a", token, Outcome { kind: OutcomeKind::FailedFinal, payload: b"ok".to_vec() });
    assert_rejected_unchanged(&mut ledger, 4, different_kind, "OUTCOME_IMMUTABLE");
}

#[test]
fn complete_on_a_never_claimed_key_is_not_claimed() {
    let mut ledger = MemoryLedger::default();
    let rejection = assert_rejected_unchanged(
        &mut ledger,
        1,
        complete("a", FencingToken::new(1, 0), succeeded(b"x")),
        "NOT_CLAIMED",
    );
    assert!(rejection.record().is_none(), "no record to return for a key never seen");
    assert!(ledger.records.is_empty());
}

#[test]
fn complete_with_the_released_token_is_not_claimed() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    expect_release_ack(apply_one(&mut ledger, 2, 10, release("a", token, ReleaseReason::Retryable, b"")));
    assert_rejected_unchanged(&mut ledger, 3, complete("a", token, succeeded(b"x")), "NOT_CLAIMED");
}

// ---------------------------------------------------------------------------------------------
// Fencing

#[test]
fn stale_token_after_takeover_is_fenced_for_complete_release_and_extend() {
    let (mut ledger, old) = ledger_with_claim("a", "worker-1");
    let new = expect_claimed(apply_one(&mut ledger, 2, 1_500, Command::Claim(claim("a", "worker-2", 1_000)))).token;
    assert!(new > old);

    for (index, command) in [
        (3, complete("a", old, succeeded(b"zombie"))),
        (4, release("a", old, ReleaseReason::Retryable, b"")),
        (5, extend("a", old, 1_000, None)),
    ] {
        let rejection = assert_rejected_unchanged(&mut ledger, index, command, "FENCED");
        assert_eq!(rejection.record().map(|r| r.token), Some(new), "FENCED carries the current record");
        assert!(matches!(rejection, Rejection::Fenced { given, .. } if given == old));
    }

    // The current holder is unaffected by the zombie.
    expect_extend_ack(apply_one(&mut ledger, 6, 1_600, extend("a", new, 1_000, None)));
    expect_complete_ack(apply_one(&mut ledger, 7, 1_700, complete("a", new, succeeded(b"real"))));
    // And a zombie complete after the successor completed is still fenced, never overwrites.
    assert_rejected_unchanged(&mut ledger, 8, complete("a", old, succeeded(b"zombie")), "FENCED");
    assert!(
        matches!(record_state(&ledger, "a"), RecordState::Completed { outcome, .. } if outcome == succeeded(b"real"))
    );
}

#[test]
fn token_never_granted_is_not_claimed() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let made_up = FencingToken::new(token.log_index() + 10, 0);
    for (index, command) in [
        (2, complete("a", made_up, succeeded(b"x"))),
        (3, release("a", made_up, ReleaseReason::Retryable, b"")),
        (4, extend("a", made_up, 1_000, None)),
    ] {
        let rejection = assert_rejected_unchanged(&mut ledger, index, command, "NOT_CLAIMED");
        assert_eq!(rejection.record().map(|r| r.token), Some(token));
    }
    // The slot is part of the token: same entry, other slot, is another token.
    let other_slot = FencingToken::new(token.log_index(), 1);
    assert_rejected_unchanged(&mut ledger, 5, complete("a", other_slot, succeeded(b"x")), "NOT_CLAIMED");
    // A token granted for another key is not a token of this one.
    let other = expect_claimed(apply_one(&mut ledger, 6, 0, Command::Claim(claim("b", "worker-1", 1_000)))).token;
    assert_rejected_unchanged(&mut ledger, 7, complete("a", other, succeeded(b"x")), "NOT_CLAIMED");
    // On a key never claimed, any token is NOT_CLAIMED.
    for (index, command) in
        [(8, release("zz", token, ReleaseReason::Retryable, b"")), (9, extend("zz", token, 1_000, None))]
    {
        let rejection = assert_rejected_unchanged(&mut ledger, index, command, "NOT_CLAIMED");
        assert!(rejection.record().is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// Release

#[test]
fn release_makes_key_available_and_next_claim_gets_previous_released_with_checkpoint() {
    for reason in [ReleaseReason::Retryable, ReleaseReason::EffectUnknown] {
        let (mut ledger, token) = ledger_with_claim("a", "worker-1");
        let ack = expect_release_ack(apply_one(&mut ledger, 2, 300, release("a", token, reason, b"half-done")));
        assert_eq!(ack, ReleaseAck { retained_until: LedgerTime(300 + RETENTION_MS_DEFAULT), replayed: false });
        assert_eq!(
            record_state(&ledger, "a"),
            RecordState::Available {
                released_at: LedgerTime(300),
                retained_until: LedgerTime(300 + RETENTION_MS_DEFAULT)
            }
        );

        // The lease would still be live: a release lets the retry claim at once.
        let next = expect_claimed(apply_one(&mut ledger, 3, 301, Command::Claim(claim("a", "worker-2", 1_000))));
        assert_eq!(next.token, FencingToken::new(3, 0));
        assert!(next.token > token);
        assert_eq!(next.attempt, 2);
        assert_eq!(
            next.previous,
            Some(PreviousAttempt {
                ended: PreviousEnd::Released(reason),
                owner: "worker-1".to_string(),
                token,
                attempt: 1,
                checkpoint: b"half-done".to_vec(),
            })
        );
    }
}

#[test]
fn release_without_checkpoint_keeps_the_checkpoint_of_the_last_extension() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    expect_extend_ack(apply_one(&mut ledger, 2, 100, extend("a", token, 1_000, Some(b"page-7"))));
    expect_release_ack(apply_one(&mut ledger, 3, 200, release("a", token, ReleaseReason::EffectUnknown, b"")));
    let next = expect_claimed(apply_one(&mut ledger, 4, 300, Command::Claim(claim("a", "worker-2", 1_000))));
    let previous = next.previous.expect("previous attempt");
    assert_eq!(previous.ended, PreviousEnd::Released(ReleaseReason::EffectUnknown));
    assert_eq!(previous.checkpoint, b"page-7".to_vec());
}

#[test]
fn release_replay_is_replayed() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let first =
        expect_release_ack(apply_one(&mut ledger, 2, 300, release("a", token, ReleaseReason::Retryable, b"cp")));
    let before = ledger.records.clone();
    let replay =
        expect_release_ack(apply_one(&mut ledger, 3, 700, release("a", token, ReleaseReason::Retryable, b"cp")));
    assert_eq!(replay, ReleaseAck { retained_until: first.retained_until, replayed: true });
    assert_eq!(ledger.records, before);
}

#[test]
fn release_after_lease_lapsed_without_takeover_is_accepted() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let ack = expect_release_ack(apply_one(&mut ledger, 2, 5_000, release("a", token, ReleaseReason::Retryable, b"")));
    assert!(!ack.replayed);
    assert_eq!(ledger.records[&key("a")].state_name(), "AVAILABLE");
}

#[test]
fn release_or_extend_of_a_completed_key_is_not_claimed() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    expect_complete_ack(apply_one(&mut ledger, 2, 10, complete("a", token, succeeded(b"ok"))));
    assert_rejected_unchanged(&mut ledger, 3, release("a", token, ReleaseReason::Retryable, b""), "NOT_CLAIMED");
    assert_rejected_unchanged(&mut ledger, 4, extend("a", token, 1_000, None), "NOT_CLAIMED");
}

// ---------------------------------------------------------------------------------------------
// ExtendLease

#[test]
fn extend_pushes_the_deadline_and_stores_the_checkpoint() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    let ack = expect_extend_ack(apply_one(&mut ledger, 2, 900, extend("a", token, 2_000, Some(b"cp-1"))));
    assert_eq!(ack.lease_deadline, LedgerTime(2_900));
    assert!(matches!(
        record_state(&ledger, "a"),
        RecordState::Claimed { lease_deadline: LedgerTime(2_900), ref checkpoint, .. } if checkpoint == b"cp-1"
    ));
    // The old deadline no longer frees the key.
    let answer = apply_one(&mut ledger, 3, 1_000, Command::Claim(claim("a", "worker-2", 1_000)));
    assert_eq!(
        answer,
        Ok(Answer::Claim(ClaimOutcome::InProgress {
            owner: "worker-1".to_string(),
            lease_deadline: LedgerTime(2_900),
            attempt: 1,
            retry_after_ms: 1_900,
        }))
    );
    // An extension without a checkpoint keeps the stored one.
    expect_extend_ack(apply_one(&mut ledger, 4, 1_100, extend("a", token, 1_000, None)));
    assert!(matches!(
        record_state(&ledger, "a"),
        RecordState::Claimed { lease_deadline: LedgerTime(2_100), ref checkpoint, .. } if checkpoint == b"cp-1"
    ));
}

#[test]
fn extend_after_lease_lapsed_is_lease_lapsed() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    // Exactly at the deadline the lease has lapsed.
    ledger.time = LedgerTime(1_000);
    let rejection = assert_rejected_unchanged(&mut ledger, 2, extend("a", token, 1_000, Some(b"cp")), "LEASE_LAPSED");
    assert_eq!(rejection.record().map(|r| r.token), Some(token));
    // Completing is still accepted (late) since nobody took over.
    let ack = expect_complete_ack(apply_one(&mut ledger, 3, 1_000, complete("a", token, succeeded(b"ok"))));
    assert!(ack.late);
}

#[test]
fn extend_with_the_released_token_is_not_claimed() {
    let (mut ledger, token) = ledger_with_claim("a", "worker-1");
    expect_release_ack(apply_one(&mut ledger, 2, 10, release("a", token, ReleaseReason::Retryable, b"")));
    assert_rejected_unchanged(&mut ledger, 3, extend("a", token, 1_000, None), "NOT_CLAIMED");
}

// ---------------------------------------------------------------------------------------------
// Fingerprints

#[test]
fn fingerprint_mismatch_is_rejected_while_claimed() {
    let mut ledger = MemoryLedger::default();
    expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim_with_fingerprint("a", "w1", b"sha-1"))));
    let rejection = assert_rejected_unchanged(
        &mut ledger,
        2,
        Command::Claim(claim_with_fingerprint("a", "w2", b"sha-2")),
        "FINGERPRINT_MISMATCH",
    );
    assert_eq!(rejection.record().map(|r| r.state_name()), Some("CLAIMED"));
    // Even after the lease lapsed, a different fingerprint does not take the key over.
    ledger.time = LedgerTime(5_000);
    assert_rejected_unchanged(
        &mut ledger,
        3,
        Command::Claim(claim_with_fingerprint("a", "w2", b"sha-2")),
        "FINGERPRINT_MISMATCH",
    );
    // The same fingerprint, or none, is a normal claim.
    expect_claimed(apply_one(&mut ledger, 4, 5_000, Command::Claim(claim_with_fingerprint("a", "w2", b"sha-1"))));
    let answer = apply_one(&mut ledger, 5, 5_001, Command::Claim(claim("a", "w3", 1_000)));
    assert!(matches!(answer, Ok(Answer::Claim(ClaimOutcome::InProgress { .. }))), "{answer:?}");
}

#[test]
fn fingerprint_mismatch_is_rejected_while_available() {
    let mut ledger = MemoryLedger::default();
    let token =
        expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim_with_fingerprint("a", "w1", b"sha-1")))).token;
    expect_release_ack(apply_one(&mut ledger, 2, 10, release("a", token, ReleaseReason::Retryable, b"")));
    let rejection = assert_rejected_unchanged(
        &mut ledger,
        3,
        Command::Claim(claim_with_fingerprint("a", "w2", b"sha-2")),
        "FINGERPRINT_MISMATCH",
    );
    assert_eq!(rejection.record().map(|r| r.state_name()), Some("AVAILABLE"));
}

#[test]
fn fingerprint_mismatch_is_rejected_while_completed() {
    let mut ledger = MemoryLedger::default();
    let token =
        expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim_with_fingerprint("a", "w1", b"sha-1")))).token;
    expect_complete_ack(apply_one(&mut ledger, 2, 10, complete("a", token, succeeded(b"ok"))));
    let rejection = assert_rejected_unchanged(
        &mut ledger,
        3,
        Command::Claim(claim_with_fingerprint("a", "w2", b"sha-2")),
        "FINGERPRINT_MISMATCH",
    );
    assert_eq!(rejection.record().map(|r| r.state_name()), Some("COMPLETED"));
    // The matching fingerprint gets the stored outcome.
    let answer = apply_one(&mut ledger, 4, 20, Command::Claim(claim_with_fingerprint("a", "w2", b"sha-1")));
    assert!(matches!(answer, Ok(Answer::Claim(ClaimOutcome::Completed { .. }))), "{answer:?}");
}

#[test]
fn first_claim_that_carries_a_fingerprint_sets_it_for_later_claims() {
    let (mut ledger, token) = ledger_with_claim("a", "w1");
    assert_eq!(ledger.records[&key("a")].fingerprint, None);
    expect_release_ack(apply_one(&mut ledger, 2, 10, release("a", token, ReleaseReason::Retryable, b"")));
    expect_claimed(apply_one(&mut ledger, 3, 20, Command::Claim(claim_with_fingerprint("a", "w2", b"sha-1"))));
    assert_eq!(ledger.records[&key("a")].fingerprint, Some(b"sha-1".to_vec()));
    ledger.time = LedgerTime(20);
    assert_rejected_unchanged(
        &mut ledger,
        4,
        Command::Claim(claim_with_fingerprint("a", "w3", b"sha-2")),
        "FINGERPRINT_MISMATCH",
    );
}

// ---------------------------------------------------------------------------------------------
// Limits: each one hit once, with its reason string, leaving the ledger unchanged.

#[test]
fn limit_key_too_long() {
    let (mut ledger, _) = ledger_with_claim("a", "w");
    let long = ClaimCommand { key: RecordKey::new(NS, vec![b'k'; KEY_BYTES_MAX + 1]), ..claim("a", "w", 1_000) };
    assert_limit(&mut ledger, 2, Command::Claim(long), "KEY_TOO_LONG");
    let at_limit = ClaimCommand { key: RecordKey::new(NS, vec![b'k'; KEY_BYTES_MAX]), ..claim("a", "w", 1_000) };
    expect_claimed(apply_one(&mut ledger, 3, 0, Command::Claim(at_limit)));
}

#[test]
fn limit_key_empty() {
    let mut ledger = MemoryLedger::default();
    let empty = ClaimCommand { key: RecordKey::new(NS, Vec::new()), ..claim("a", "w", 1_000) };
    assert_limit(&mut ledger, 1, Command::Claim(empty), "KEY_EMPTY");
    let token = FencingToken::new(1, 0);
    let empty_complete = Command::Complete(CompleteCommand {
        key: RecordKey::new(NS, Vec::new()),
        token,
        outcome: succeeded(b"x"),
        retention_ms: None,
    });
    assert_limit(&mut ledger, 2, empty_complete, "KEY_EMPTY");
}

#[test]
fn limit_namespace_invalid() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    let namespaces =
        [String::new(), "n".repeat(NAMESPACE_BYTES_MAX + 1), "a/b".to_string(), "spa ce".to_string(), "é".to_string()];
    for (index, namespace) in (2..).zip(namespaces) {
        let command = ClaimCommand { key: RecordKey::new(namespace.clone(), "a"), ..claim("a", "w", 1_000) };
        assert_limit(&mut ledger, index, Command::Claim(command), "NAMESPACE_INVALID");
    }
    let on_complete = Command::Complete(CompleteCommand {
        key: RecordKey::new("bad/ns", "a"),
        token,
        outcome: succeeded(b"x"),
        retention_ms: None,
    });
    assert_limit(&mut ledger, 10, on_complete, "NAMESPACE_INVALID");
    let at_limit = ClaimCommand {
        key: RecordKey::new(format!("{}.-_Z9", "n".repeat(NAMESPACE_BYTES_MAX - 5)), "a"),
        ..claim("a", "w", 1_000)
    };
    expect_claimed(apply_one(&mut ledger, 11, 0, Command::Claim(at_limit)));
}

#[test]
fn limit_owner_too_long() {
    let mut ledger = MemoryLedger::default();
    assert_limit(&mut ledger, 1, Command::Claim(claim("a", &"o".repeat(OWNER_BYTES_MAX + 1), 1_000)), "OWNER_TOO_LONG");
    expect_claimed(apply_one(&mut ledger, 2, 0, Command::Claim(claim("a", &"o".repeat(OWNER_BYTES_MAX), 1_000))));
}

#[test]
fn limit_owner_empty() {
    let mut ledger = MemoryLedger::default();
    assert_limit(&mut ledger, 1, Command::Claim(claim("a", "", 1_000)), "OWNER_EMPTY");
}

#[test]
fn limit_outcome_too_large() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    let too_large = Outcome { kind: OutcomeKind::Succeeded, payload: vec![0; OUTCOME_BYTES_MAX + 1] };
    assert_limit(&mut ledger, 2, complete("a", token, too_large), "OUTCOME_TOO_LARGE");
    let at_limit = Outcome { kind: OutcomeKind::FailedFinal, payload: vec![0; OUTCOME_BYTES_MAX] };
    expect_complete_ack(apply_one(&mut ledger, 3, 0, complete("a", token, at_limit)));
}

#[test]
fn limit_lease_out_of_range_on_claim_and_extend() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    for lease_ms in [0, LEASE_MS_MIN - 1, LEASE_MS_MAX + 1, u64::MAX] {
        assert_limit(&mut ledger, 2, Command::Claim(claim("b", "w", lease_ms)), "LEASE_OUT_OF_RANGE");
        assert_limit(&mut ledger, 3, extend("a", token, lease_ms, None), "LEASE_OUT_OF_RANGE");
    }
    expect_extend_ack(apply_one(&mut ledger, 4, 0, extend("a", token, LEASE_MS_MAX, None)));
    expect_extend_ack(apply_one(&mut ledger, 5, 0, extend("a", token, LEASE_MS_MIN, None)));
    expect_claimed(apply_one(&mut ledger, 6, 0, Command::Claim(claim("b", "w", LEASE_MS_MIN))));
    expect_claimed(apply_one(&mut ledger, 7, 0, Command::Claim(claim("c", "w", LEASE_MS_MAX))));
}

#[test]
fn limit_retention_out_of_range_on_claim_and_complete() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    for retention_ms in [0, RETENTION_MS_MIN - 1, RETENTION_MS_MAX + 1] {
        let command = ClaimCommand { retention_ms: Some(retention_ms), ..claim("b", "w", 1_000) };
        assert_limit(&mut ledger, 2, Command::Claim(command), "RETENTION_OUT_OF_RANGE");
        let command = Command::Complete(CompleteCommand {
            key: key("a"),
            token,
            outcome: succeeded(b"x"),
            retention_ms: Some(retention_ms),
        });
        assert_limit(&mut ledger, 3, command, "RETENTION_OUT_OF_RANGE");
    }
    let command = ClaimCommand { retention_ms: Some(RETENTION_MS_MAX), ..claim("b", "w", 1_000) };
    expect_claimed(apply_one(&mut ledger, 4, 0, Command::Claim(command)));
}

#[test]
fn limit_checkpoint_too_large_on_release_and_extend() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    let too_large = vec![1; CHECKPOINT_BYTES_MAX + 1];
    assert_limit(&mut ledger, 2, release("a", token, ReleaseReason::Retryable, &too_large), "CHECKPOINT_TOO_LARGE");
    assert_limit(&mut ledger, 3, extend("a", token, 1_000, Some(&too_large)), "CHECKPOINT_TOO_LARGE");
    let at_limit = vec![1; CHECKPOINT_BYTES_MAX];
    expect_extend_ack(apply_one(&mut ledger, 4, 0, extend("a", token, 1_000, Some(&at_limit))));
    expect_release_ack(apply_one(&mut ledger, 5, 0, release("a", token, ReleaseReason::Retryable, &at_limit)));
}

#[test]
fn limit_fingerprint_too_long() {
    let mut ledger = MemoryLedger::default();
    let long = claim_with_fingerprint("a", "w", &[7; FINGERPRINT_BYTES_MAX + 1]);
    assert_limit(&mut ledger, 1, Command::Claim(long), "FINGERPRINT_TOO_LONG");
    expect_claimed(apply_one(
        &mut ledger,
        2,
        0,
        Command::Claim(claim_with_fingerprint("a", "w", &[7; FINGERPRINT_BYTES_MAX])),
    ));
}

#[test]
fn limit_request_id_too_long() {
    let mut ledger = MemoryLedger::default();
    let long = claim_with_request("a", "w", 1_000, &"r".repeat(REQUEST_ID_BYTES_MAX + 1));
    assert_limit(&mut ledger, 1, Command::Claim(long), "REQUEST_ID_TOO_LONG");
    let at_limit = claim_with_request("a", "w", 1_000, &"r".repeat(REQUEST_ID_BYTES_MAX));
    expect_claimed(apply_one(&mut ledger, 2, 0, Command::Claim(at_limit)));
}

#[test]
fn limit_token_invalid_on_complete_release_and_extend() {
    let (mut ledger, _) = ledger_with_claim("a", "w");
    let zero = FencingToken(0);
    assert_limit(&mut ledger, 2, complete("a", zero, succeeded(b"x")), "TOKEN_INVALID");
    assert_limit(&mut ledger, 3, release("a", zero, ReleaseReason::Retryable, b""), "TOKEN_INVALID");
    assert_limit(&mut ledger, 4, extend("a", zero, 1_000, None), "TOKEN_INVALID");
}

#[test]
fn limit_wait_ms_out_of_range() {
    let violation = validate_wait_ms(WAIT_MS_MAX + 1).unwrap_err();
    assert_eq!(violation.reason, "WAIT_MS_OUT_OF_RANGE");
    assert!(validate_wait_ms(u64::MAX).is_err());
    assert_eq!(validate_wait_ms(0), Ok(()));
}

#[test]
fn limit_messages_name_the_limit_and_the_value() {
    let command = Command::Claim(claim("a", "w", 99));
    let violation = validate_command(&command).unwrap_err();
    assert!(violation.message.contains("99"), "{}", violation.message);
    assert!(violation.message.contains("LEASE_MS_MIN"), "{}", violation.message);
    let long_key = RecordKey::new(NS, vec![b'k'; KEY_BYTES_MAX + 1]);
    let violation = validate_key(&long_key).unwrap_err();
    assert!(violation.message.contains(&(KEY_BYTES_MAX + 1).to_string()), "{}", violation.message);
    assert!(violation.message.contains("KEY_BYTES_MAX"), "{}", violation.message);
}

#[test]
fn rejected_commands_in_an_entry_leave_the_other_commands_applied() {
    let mut ledger = MemoryLedger::default();
    let results = apply_entry(
        &mut ledger,
        4,
        LedgerTime(50),
        &[
            Command::Claim(claim("a", "w", 1_000)),
            Command::Claim(claim("b", "", 1_000)),
            complete("c", FencingToken::new(1, 0), succeeded(b"x")),
            Command::Claim(claim("d", "w", 1_000)),
        ],
    );
    assert_eq!(expect_claimed(results[0].clone()).token, FencingToken::new(4, 0));
    assert_eq!(expect_rejection(results[1].clone()).reason(), "OWNER_EMPTY");
    assert_eq!(expect_rejection(results[2].clone()).reason(), "NOT_CLAIMED");
    assert_eq!(expect_claimed(results[3].clone()).token, FencingToken::new(4, 3));
    let keys: Vec<&[u8]> = ledger.records.keys().map(|k| k.key.as_slice()).collect();
    assert_eq!(keys, vec![b"a".as_slice(), b"d".as_slice()]);
}

// ---------------------------------------------------------------------------------------------
// Ledger time and tokens within one entry

#[test]
fn ledger_time_never_goes_backwards_when_an_entry_carries_an_older_time() {
    let mut ledger = MemoryLedger::default();
    let first = expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(claim("a", "w1", 1_000))));
    apply_entry(&mut ledger, 2, LedgerTime(1_500), &[]);
    assert_eq!(ledger.time, LedgerTime(1_500));

    // Stamped 500, applied at 1500: the lease of `a` has lapsed, the new lease starts at 1500.
    let taken = expect_claimed(apply_one(&mut ledger, 3, 500, Command::Claim(claim("a", "w2", 1_000))));
    assert_eq!(ledger.time, LedgerTime(1_500));
    assert!(taken.token > first.token);
    assert_eq!(taken.lease_deadline, LedgerTime(2_500));

    // An extension stamped in the past cannot bring a lapsed lease back either.
    apply_entry(&mut ledger, 4, LedgerTime(2_500), &[]);
    let rejection = expect_rejection(apply_one(&mut ledger, 5, 2_000, extend("a", taken.token, 1_000, None)));
    assert_eq!(rejection.reason(), "LEASE_LAPSED");
    assert_eq!(ledger.time, LedgerTime(2_500));

    // A completion stamped in the past is recorded at ledger time.
    let ack = expect_complete_ack(apply_one(&mut ledger, 6, 100, complete("a", taken.token, succeeded(b"ok"))));
    assert_eq!(ack.completed_at, LedgerTime(2_500));
    assert!(ack.late);
}

#[test]
fn release_and_reclaim_of_one_key_in_one_entry_get_distinct_increasing_tokens() {
    let (mut ledger, first) = ledger_with_claim("a", "w1");
    let results = apply_entry(
        &mut ledger,
        5,
        LedgerTime(10),
        &[
            release("a", first, ReleaseReason::Retryable, b""),
            Command::Claim(claim("a", "w2", 1_000)),
            release("a", FencingToken::new(5, 1), ReleaseReason::Retryable, b""),
            Command::Claim(claim("a", "w3", 1_000)),
        ],
    );
    expect_release_ack(results[0].clone());
    let second = expect_claimed(results[1].clone());
    expect_release_ack(results[2].clone());
    let third = expect_claimed(results[3].clone());
    assert_eq!(second.token, FencingToken::new(5, 1));
    assert_eq!(third.token, FencingToken::new(5, 3));
    assert!(first < second.token && second.token < third.token);
    assert_eq!((second.attempt, third.attempt), (2, 3));
    assert_eq!(third.previous.map(|p| p.token), Some(second.token));
    // The token of the middle claim is fenced now, the last one is current.
    ledger.time = LedgerTime(10);
    assert_rejected_unchanged(&mut ledger, 6, complete("a", second.token, succeeded(b"x")), "FENCED");
    expect_complete_ack(apply_one(&mut ledger, 7, 10, complete("a", third.token, succeeded(b"x"))));
}

#[test]
fn tokens_order_by_log_index_then_slot() {
    assert!(FencingToken::new(1, u16::MAX) < FencingToken::new(2, 0));
    assert!(FencingToken::new(2, 0) < FencingToken::new(2, 1));
    let token = FencingToken::new(123_456, 789);
    assert_eq!((token.log_index(), token.slot()), (123_456, 789));
}

// ---------------------------------------------------------------------------------------------
// Retention

#[test]
fn retention_defaults_to_retention_ms_default_from_completion_time() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 777, complete("a", token, succeeded(b"ok"))));
    assert_eq!(ack.retained_until, LedgerTime(777 + RETENTION_MS_DEFAULT));
}

#[test]
fn retention_of_the_claim_applies_when_complete_names_none() {
    let mut ledger = MemoryLedger::default();
    let command = ClaimCommand { retention_ms: Some(5_000), ..claim("a", "w", 1_000) };
    let token = expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(command))).token;
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 300, complete("a", token, succeeded(b"ok"))));
    assert_eq!(ack.retained_until, LedgerTime(5_300));
}

#[test]
fn retention_of_the_complete_overrides_the_claims() {
    let mut ledger = MemoryLedger::default();
    let command = ClaimCommand { retention_ms: Some(5_000), ..claim("a", "w", 1_000) };
    let token = expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(command))).token;
    let complete = Command::Complete(CompleteCommand {
        key: key("a"),
        token,
        outcome: succeeded(b"ok"),
        retention_ms: Some(60_000),
    });
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 300, complete));
    assert_eq!(ack.retained_until, LedgerTime(60_300));
    assert!(matches!(
        record_state(&ledger, "a"),
        RecordState::Completed { completed_at: LedgerTime(300), retained_until: LedgerTime(60_300), .. }
    ));
}

#[test]
fn retention_of_a_release_is_the_claims_from_release_time() {
    let mut ledger = MemoryLedger::default();
    let command = ClaimCommand { retention_ms: Some(2_000), ..claim("a", "w", 1_000) };
    let token = expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(command))).token;
    let ack = expect_release_ack(apply_one(&mut ledger, 2, 100, release("a", token, ReleaseReason::Retryable, b"")));
    assert_eq!(ack.retained_until, LedgerTime(2_100));
}

#[test]
fn retention_named_by_an_earlier_claim_carries_over_to_a_retry_that_names_none() {
    let mut ledger = MemoryLedger::default();
    let command = ClaimCommand { retention_ms: Some(5_000), ..claim("a", "w1", 100) };
    expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(command)));
    // Takeover without a retention keeps 5000; a takeover naming one replaces it.
    let second = expect_claimed(apply_one(&mut ledger, 2, 100, Command::Claim(claim("a", "w2", 100)))).token;
    assert_eq!(ledger.records[&key("a")].retention_ms, 5_000);
    let command = ClaimCommand { retention_ms: Some(9_000), ..claim("a", "w3", 100) };
    let third = expect_claimed(apply_one(&mut ledger, 3, 200, Command::Claim(command))).token;
    assert!(third > second);
    let ack = expect_complete_ack(apply_one(&mut ledger, 4, 250, complete("a", third, succeeded(b"ok"))));
    assert_eq!(ack.retained_until, LedgerTime(9_250));
}

#[test]
fn retention_named_by_an_in_flight_duplicate_is_ignored() {
    let (mut ledger, token) = ledger_with_claim("a", "w1");
    let duplicate = ClaimCommand { retention_ms: Some(2_000), ..claim("a", "w2", 1_000) };
    apply_one(&mut ledger, 2, 10, Command::Claim(duplicate)).unwrap();
    let ack = expect_complete_ack(apply_one(&mut ledger, 3, 20, complete("a", token, succeeded(b"ok"))));
    assert_eq!(ack.retained_until, LedgerTime(20 + RETENTION_MS_DEFAULT));
}

// ---------------------------------------------------------------------------------------------
// Purge

/// A claim of `name` with retention `retention_ms` and a long lease.
fn claim_retained(name: &str, owner: &str, retention_ms: u64) -> Command {
    Command::Claim(ClaimCommand { retention_ms: Some(retention_ms), ..claim(name, owner, 60_000) })
}

/// A ledger where `name` was claimed at log index 1, time 0, with retention 1000 ms, and
/// completed at log index 2, time 100: retained until 1100.
fn ledger_with_completed(name: &str) -> (MemoryLedger, FencingToken) {
    let mut ledger = MemoryLedger::default();
    let token = expect_claimed(apply_one(&mut ledger, 1, 0, claim_retained(name, "w", 1_000))).token;
    let ack = expect_complete_ack(apply_one(&mut ledger, 2, 100, complete(name, token, succeeded(b"ok"))));
    assert_eq!(ack.retained_until, LedgerTime(1_100));
    (ledger, token)
}

/// The deadline index holds exactly the COMPLETED and AVAILABLE records.
fn assert_deadlines_in_step(ledger: &MemoryLedger) {
    let expected: BTreeSet<(LedgerTime, RecordKey)> =
        ledger.records.iter().filter_map(|(key, r)| Some((r.retained_until()?, key.clone()))).collect();
    assert_eq!(ledger.deadlines, expected);
}

#[test]
fn purge_happens_at_the_first_entry_whose_time_reaches_retained_until_not_a_ms_earlier() {
    let (mut ledger, _) = ledger_with_completed("a");
    apply_entry(&mut ledger, 3, LedgerTime(1_099), &[]);
    assert!(matches!(record_state(&ledger, "a"), RecordState::Completed { .. }), "purged inside its retention");
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(0));
    assert_deadlines_in_step(&ledger);

    apply_entry(&mut ledger, 4, LedgerTime(1_100), &[]);
    assert!(!ledger.records.contains_key(&key("a")), "not purged when ledger time reached retained_until");
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(1_100));
    assert!(ledger.deadlines.is_empty());
}

#[test]
fn completed_and_available_records_are_purged_claimed_never_even_with_a_lapsed_lease() {
    let mut ledger = MemoryLedger::default();
    let results = apply_entry(
        &mut ledger,
        1,
        LedgerTime(0),
        &[
            claim_retained("done", "w", 1_000),
            claim_retained("released", "w", 1_000),
            Command::Claim(ClaimCommand { retention_ms: Some(1_000), ..claim("stuck", "w", 100) }),
        ],
    );
    let done = expect_claimed(results[0].clone()).token;
    let released = expect_claimed(results[1].clone()).token;
    let stuck = expect_claimed(results[2].clone()).token;
    apply_entry(
        &mut ledger,
        2,
        LedgerTime(10),
        &[complete("done", done, succeeded(b"ok")), release("released", released, ReleaseReason::Retryable, b"")],
    );
    assert_deadlines_in_step(&ledger);

    // Long after every retention and the lease ended: only the CLAIMED record is left.
    let purged = purge_expired(&mut ledger.clone(), LedgerTime(1_000_000), PURGE_PER_ENTRY_MAX);
    assert_eq!(purged, 2);
    apply_entry(&mut ledger, 3, LedgerTime(1_000_000), &[]);
    let keys: Vec<&[u8]> = ledger.records.keys().map(|k| k.key.as_slice()).collect();
    assert_eq!(keys, vec![b"stuck".as_slice()]);
    assert!(matches!(record_state(&ledger, "stuck"), RecordState::Claimed { lease_deadline: LedgerTime(100), .. }));
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(1_010));
    apply_entry(&mut ledger, 4, LedgerTime(u64::MAX), &[]);
    assert!(ledger.records.contains_key(&key("stuck")), "a CLAIMED record was purged");

    // Its late completion starts its retention; only then may it go.
    let ack = expect_complete_ack(apply_one(&mut ledger, 5, 0, complete("stuck", stuck, succeeded(b"late"))));
    assert!(ack.late);
    assert_eq!(ack.retained_until, LedgerTime(u64::MAX), "a deadline saturates rather than wrapping");
    apply_entry(&mut ledger, 6, LedgerTime(0), &[]);
    assert!(!ledger.records.contains_key(&key("stuck")));
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(u64::MAX));
}

#[test]
fn the_horizon_of_the_namespace_becomes_the_purged_records_retained_until_and_only_its() {
    let mut ledger = MemoryLedger::default();
    let billing = RecordKey::new("billing", "a");
    let claims = [
        claim_retained("a", "w", 1_000),
        Command::Claim(ClaimCommand { key: billing.clone(), ..claim("a", "w", 60_000) }),
    ];
    let results = apply_entry(&mut ledger, 1, LedgerTime(0), &claims);
    let (orders_token, billing_token) =
        (expect_claimed(results[0].clone()).token, expect_claimed(results[1].clone()).token);
    let complete_billing = Command::Complete(CompleteCommand {
        key: billing.clone(),
        token: billing_token,
        outcome: succeeded(b"ok"),
        retention_ms: Some(5_000),
    });
    apply_entry(&mut ledger, 2, LedgerTime(100), &[complete("a", orders_token, succeeded(b"ok")), complete_billing]);

    apply_entry(&mut ledger, 3, LedgerTime(3_000), &[]);
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(1_100), "the purged record's retained_until, not the time");
    assert_eq!(ledger.purge_horizon("billing"), LedgerTime(0), "another namespace's horizon moved");
    assert!(!ledger.purge_horizons.contains_key("billing"));
    assert!(ledger.records.contains_key(&billing));

    apply_entry(&mut ledger, 4, LedgerTime(9_000), &[]);
    assert_eq!(ledger.purge_horizon("billing"), LedgerTime(5_100));
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(1_100));
    assert!(ledger.records.is_empty());
}

#[test]
fn more_than_64_expired_records_are_purged_64_per_entry_earliest_deadline_then_key_first() {
    const RECORDS: usize = 150;
    let mut ledger = MemoryLedger::default();
    let name = |i: usize| format!("k{i:03}");
    let claims: Vec<Command> = (0..RECORDS).map(|i| claim_retained(&name(i), "w", 1_000)).collect();
    let tokens: Vec<FencingToken> =
        apply_entry(&mut ledger, 1, LedgerTime(0), &claims).into_iter().map(|r| expect_claimed(r).token).collect();
    // Completed two at a time, highest keys first: deadlines fall against key order, and the two
    // keys of one entry tie on their deadline.
    let mut expected: Vec<(LedgerTime, RecordKey)> = Vec::new();
    for pair in 0..RECORDS / 2 {
        let (low, high) = (RECORDS - 2 - 2 * pair, RECORDS - 1 - 2 * pair);
        let time = 10 + pair as u64;
        let commands = [
            complete(&name(high), tokens[high], succeeded(b"ok")),
            complete(&name(low), tokens[low], succeeded(b"ok")),
        ];
        for result in apply_entry(&mut ledger, 2 + pair as u64, LedgerTime(time), &commands) {
            assert_eq!(expect_complete_ack(result).retained_until, LedgerTime(time + 1_000));
        }
        expected.push((LedgerTime(time + 1_000), key(&name(low))));
        expected.push((LedgerTime(time + 1_000), key(&name(high))));
    }
    assert!(ledger.records.len() == RECORDS && ledger.deadlines.len() == RECORDS);

    let mut index = 100;
    for batch in expected.chunks(PURGE_PER_ENTRY_MAX) {
        let before: BTreeSet<RecordKey> = ledger.records.keys().cloned().collect();
        index += 1;
        apply_entry(&mut ledger, index, LedgerTime(10_000), &[]);
        let after: BTreeSet<RecordKey> = ledger.records.keys().cloned().collect();
        let purged: BTreeSet<RecordKey> = before.difference(&after).cloned().collect();
        let wanted: BTreeSet<RecordKey> = batch.iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(purged, wanted, "entry {index} purged the wrong records");
        assert_eq!(ledger.purge_horizon(NS), batch.last().unwrap().0);
        assert_deadlines_in_step(&ledger);
    }
    assert_eq!(index, 103, "150 records take three entries: 64, 64, 22");
    assert!(ledger.records.is_empty());
}

#[test]
fn a_claim_in_the_entry_that_purges_its_key_starts_afresh_with_attempt_one_and_no_previous() {
    // AVAILABLE after a takeover and a release: attempt 2, with a previous attempt.
    let mut ledger = MemoryLedger::default();
    let first =
        ClaimCommand { fingerprint: Some(b"fp-1".to_vec()), retention_ms: Some(1_000), ..claim("a", "w1", 100) };
    let first = expect_claimed(apply_one(&mut ledger, 1, 0, Command::Claim(first))).token;
    let second = expect_claimed(apply_one(&mut ledger, 2, 100, Command::Claim(claim("a", "w2", 100)))).token;
    let ack =
        expect_release_ack(apply_one(&mut ledger, 3, 150, release("a", second, ReleaseReason::EffectUnknown, b"")));
    assert_eq!(ack.retained_until, LedgerTime(1_150));

    // One ms early the record is still there and the claim is its third attempt.
    let mut early = ledger.clone();
    let retry = expect_claimed(apply_one(&mut early, 4, 1_149, Command::Claim(claim("a", "w3", 100))));
    assert_eq!(retry.attempt, 3);
    assert!(retry.previous.is_some());

    // At the deadline the record is purged first: the claim is a first claim, and a different
    // fingerprint is accepted because the old one is forgotten.
    let fresh = ClaimCommand { fingerprint: Some(b"fp-2".to_vec()), ..claim("a", "w3", 100) };
    let granted = expect_claimed(apply_one(&mut ledger, 4, 1_150, Command::Claim(fresh)));
    assert_eq!(granted.token, FencingToken::new(4, 0));
    assert!(granted.token > second && second > first, "tokens of a key still increase across a purge");
    assert_eq!((granted.attempt, granted.previous, granted.reentrant), (1, None, false));
    let record = &ledger.records[&key("a")];
    assert_eq!(record.created_at, LedgerTime(1_150));
    assert_eq!(record.fingerprint.as_deref(), Some(b"fp-2".as_slice()));
    assert_eq!(record.retention_ms, RETENTION_MS_DEFAULT, "the purged record's retention is forgotten too");
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(1_150));
    // Tokens of the purged record are fenced by the new one.
    assert_rejected_unchanged(&mut ledger, 5, complete("a", second, succeeded(b"x")), "FENCED");

    // A COMPLETED record purged in the same entry as a claim of its key: CLAIMED, not COMPLETED.
    let (mut ledger, token) = ledger_with_completed("b");
    let results = apply_entry(
        &mut ledger,
        7,
        LedgerTime(1_100),
        &[Command::Claim(claim("b", "w", 1_000)), complete("b", token, succeeded(b"ok"))],
    );
    let granted = expect_claimed(results[0].clone());
    assert_eq!((granted.token, granted.attempt, granted.previous), (FencingToken::new(7, 0), 1, None));
    assert_eq!(expect_rejection(results[1].clone()).reason(), "FENCED");
}

#[test]
fn a_completed_record_is_answered_until_the_entry_that_reaches_its_deadline() {
    let (mut ledger, token) = ledger_with_completed("a");
    let answer = apply_one(&mut ledger, 3, 1_099, Command::Claim(claim("a", "w2", 1_000))).unwrap();
    assert!(matches!(answer, Answer::Claim(ClaimOutcome::Completed { token: t, .. }) if t == token));
    let replay = expect_complete_ack(apply_one(&mut ledger, 4, 1_099, complete("a", token, succeeded(b"ok"))));
    assert!(replay.replayed);
    // At the deadline the record is gone: a replayed complete finds nothing.
    let rejection =
        assert_rejected_unchanged_after_purge(&mut ledger, 5, 1_100, complete("a", token, succeeded(b"ok")));
    assert!(matches!(rejection, Rejection::NotClaimed { record: None, .. }), "{rejection:?}");
}

/// Applies `command` as its own entry at `time_ms` and checks it is rejected.
fn assert_rejected_unchanged_after_purge(
    ledger: &mut MemoryLedger,
    log_index: u64,
    time_ms: u64,
    command: Command,
) -> Rejection {
    let mut purged_only = ledger.clone();
    apply_entry(&mut purged_only, log_index, LedgerTime(time_ms), &[]);
    let rejection = expect_rejection(apply_one(ledger, log_index, time_ms, command));
    assert_eq!(*ledger, purged_only, "a rejected command changed the ledger");
    rejection
}

#[test]
fn an_entry_stamped_older_than_the_ledger_time_purges_by_the_ledger_time() {
    // A backlog: 100 records expire at 1100, an entry at 1100 purges 64 of them; the next entry
    // is stamped 500 but applies at 1100 and purges the rest.
    let mut ledger = MemoryLedger::default();
    let name = |i: usize| format!("k{i:03}");
    let claims: Vec<Command> = (0..100).map(|i| claim_retained(&name(i), "w", 1_000)).collect();
    let completes: Vec<Command> = apply_entry(&mut ledger, 1, LedgerTime(0), &claims)
        .into_iter()
        .enumerate()
        .map(|(i, r)| complete(&name(i), expect_claimed(r).token, succeeded(b"ok")))
        .collect();
    apply_entry(&mut ledger, 2, LedgerTime(100), &completes);
    apply_entry(&mut ledger, 3, LedgerTime(1_100), &[]);
    assert_eq!(ledger.records.len(), 100 - PURGE_PER_ENTRY_MAX);
    apply_entry(&mut ledger, 4, LedgerTime(500), &[]);
    assert_eq!(ledger.time, LedgerTime(1_100));
    assert!(ledger.records.is_empty(), "an entry stamped older purged by its own stamp");
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(1_100));

    // The ledger time is past a deadline no entry has reached yet: an entry stamped 0 purges.
    let (mut ledger, _) = ledger_with_completed("a");
    ledger.set_ledger_time(LedgerTime(1_100));
    apply_entry(&mut ledger, 3, LedgerTime(0), &[]);
    assert!(ledger.records.is_empty());
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(1_100));
}

#[test]
fn applying_one_command_does_not_purge() {
    let (mut ledger, _) = ledger_with_completed("a");
    let position = LogPosition { log_index: 3, slot: 0 };
    expect_claimed(apply(&mut ledger, position, LedgerTime(5_000), &Command::Claim(claim("b", "w", 1_000))));
    assert!(matches!(record_state(&ledger, "a"), RecordState::Completed { .. }));
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(0));
    // purge_expired does, bounded by its limit.
    assert_eq!(purge_expired(&mut ledger, LedgerTime(5_000), 0), 0);
    assert!(ledger.records.contains_key(&key("a")));
    assert_eq!(purge_expired(&mut ledger, LedgerTime(5_000), PURGE_PER_ENTRY_MAX), 1);
    assert!(!ledger.records.contains_key(&key("a")));
}

// ---------------------------------------------------------------------------------------------
// Operator commands: forget, force-release, the audit trail

fn operator_command(name: &str, reason: &str, operator: &str) -> OperatorCommand {
    OperatorCommand { key: key(name), reason: reason.to_string(), operator: operator.to_string() }
}

fn forget(name: &str) -> Command {
    Command::Forget(operator_command(name, "poison message", "alice"))
}

fn force_release(name: &str) -> Command {
    Command::ForceRelease(operator_command(name, "worker host lost", "bob"))
}

fn expect_forgotten(result: CommandResult) -> AuditEntry {
    match result {
        Ok(Answer::Forgotten(ack)) => ack.audit,
        other => panic!("expected FORGOTTEN, got {other:?}"),
    }
}

fn expect_force_released(result: CommandResult) -> AuditEntry {
    match result {
        Ok(Answer::ForceReleased(ack)) => ack.audit,
        other => panic!("expected FORCE_RELEASED, got {other:?}"),
    }
}

/// `name` in each of the three states, claimed at index 1 (time 0) and, for COMPLETED and
/// AVAILABLE, ended at index 2 (time 100).
fn ledgers_in_each_state(name: &str) -> Vec<(&'static str, MemoryLedger, FencingToken)> {
    let (claimed, token) = ledger_with_claim(name, "w");
    let mut completed = claimed.clone();
    expect_complete_ack(apply_one(&mut completed, 2, 100, complete(name, token, succeeded(b"ok"))));
    let mut available = claimed.clone();
    expect_release_ack(apply_one(&mut available, 2, 100, release(name, token, ReleaseReason::Retryable, b"")));
    vec![("CLAIMED", claimed, token), ("COMPLETED", completed, token), ("AVAILABLE", available, token)]
}

#[test]
fn forget_of_each_state_removes_the_record_and_the_next_claim_starts_afresh_with_a_larger_token() {
    for (state, mut ledger, old_token) in ledgers_in_each_state("a") {
        let before = ledger.records[&key("a")].clone();
        assert_eq!(before.state_name(), state);
        let audit = expect_forgotten(apply_one(&mut ledger, 5, 200, forget("a")));
        assert_eq!(
            audit,
            AuditEntry {
                log_index: 5,
                slot: 0,
                at: LedgerTime(200),
                action: OperatorAction::Forget,
                key: key("a"),
                reason: "poison message".to_string(),
                operator: "alice".to_string(),
                previous: before,
            }
        );
        assert!(!ledger.records.contains_key(&key("a")), "{state}: the record is gone");
        assert_deadlines_in_step(&ledger);
        assert_eq!(ledger.purge_horizon(NS), LedgerTime(0), "{state}: a forget is not a purge");
        assert_eq!(ledger.audit.iter().collect::<Vec<_>>(), vec![&audit]);

        let granted = expect_claimed(apply_one(&mut ledger, 6, 300, Command::Claim(claim("a", "w2", 1000))));
        assert!(granted.token > old_token, "{state}: {} after {old_token}", granted.token);
        assert_eq!((granted.attempt, granted.previous), (1, None), "{state}: the claim starts afresh");
        // The forgotten claim's token is fenced by the new one.
        let rejection =
            assert_rejected_unchanged(&mut ledger, 7, complete("a", old_token, succeeded(b"late")), "FENCED");
        assert_eq!(rejection.record().map(|r| r.token), Some(granted.token));
    }
}

#[test]
fn a_forgotten_live_claim_is_not_claimed_for_its_holder_until_the_key_is_claimed_again() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    expect_forgotten(apply_one(&mut ledger, 2, 10, forget("a")));
    let rejection = assert_rejected_unchanged(&mut ledger, 3, complete("a", token, succeeded(b"x")), "NOT_CLAIMED");
    assert!(rejection.record().is_none());
    assert_rejected_unchanged(&mut ledger, 4, extend("a", token, 1_000, None), "NOT_CLAIMED");
    assert_rejected_unchanged(&mut ledger, 5, release("a", token, ReleaseReason::Retryable, b""), "NOT_CLAIMED");
}

#[test]
fn a_forgotten_record_is_never_purged_later_and_its_deadline_leaves_the_index() {
    let (mut ledger, _) = ledger_with_completed("a");
    expect_forgotten(apply_one(&mut ledger, 3, 200, forget("a")));
    assert!(ledger.deadlines.is_empty());
    apply_one(&mut ledger, 4, 5_000, Command::Claim(claim("b", "w", 1000))).unwrap();
    assert_eq!(ledger.purge_horizon(NS), LedgerTime(0));
}

#[test]
fn force_release_makes_a_claimed_record_available_as_an_effect_unknown_release_would() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    apply_one(&mut ledger, 2, 50, extend("a", token, 1_000, Some(b"cp"))).unwrap();
    let before = ledger.records[&key("a")].clone();
    let audit = expect_force_released(apply_one(&mut ledger, 3, 100, force_release("a")));
    assert_eq!(
        (audit.action, audit.log_index, audit.slot, audit.at),
        (OperatorAction::ForceRelease, 3, 0, LedgerTime(100))
    );
    assert_eq!((audit.reason.as_str(), audit.operator.as_str()), ("worker host lost", "bob"));
    assert_eq!(audit.previous, before);

    // The same record a release with effect unknown makes, but saying an operator ended it.
    let (mut released, released_token) = ledger_with_claim("a", "w");
    apply_one(&mut released, 2, 50, extend("a", released_token, 1_000, Some(b"cp"))).unwrap();
    let effect_unknown = release("a", released_token, ReleaseReason::EffectUnknown, b"");
    expect_release_ack(apply_one(&mut released, 3, 100, effect_unknown));
    let mut expected = released.records[&key("a")].clone();
    expected.previous.as_mut().unwrap().ended = PreviousEnd::ForceReleased;
    assert_eq!(ledger.records[&key("a")], expected);
    assert_eq!(
        record_state(&ledger, "a"),
        RecordState::Available { released_at: LedgerTime(100), retained_until: LedgerTime(100 + RETENTION_MS_DEFAULT) }
    );
    assert_deadlines_in_step(&ledger);

    // The next claimant is told, with the claim's checkpoint.
    let granted = expect_claimed(apply_one(&mut ledger, 4, 200, Command::Claim(claim("a", "w2", 1000))));
    assert_eq!(granted.attempt, 2);
    assert_eq!(
        granted.previous,
        Some(PreviousAttempt {
            ended: PreviousEnd::ForceReleased,
            owner: "w".to_string(),
            token,
            attempt: 1,
            checkpoint: b"cp".to_vec(),
        })
    );
}

#[test]
fn after_a_force_release_the_old_token_is_refused_as_after_any_release() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    expect_force_released(apply_one(&mut ledger, 2, 10, force_release("a")));
    // Before anyone claims again: the key is not claimed by that token.
    assert_rejected_unchanged(&mut ledger, 3, complete("a", token, succeeded(b"x")), "NOT_CLAIMED");
    assert_rejected_unchanged(&mut ledger, 4, extend("a", token, 1_000, None), "NOT_CLAIMED");
    // Its own release finds the claim already released.
    assert!(
        expect_release_ack(apply_one(&mut ledger, 5, 20, release("a", token, ReleaseReason::Retryable, b""))).replayed
    );
    // Once the key is claimed again, the old token is fenced.
    let granted = expect_claimed(apply_one(&mut ledger, 6, 30, Command::Claim(claim("a", "w2", 1000))));
    let rejection = assert_rejected_unchanged(&mut ledger, 7, complete("a", token, succeeded(b"x")), "FENCED");
    assert_eq!(rejection.record().map(|r| r.token), Some(granted.token));
    expect_complete_ack(apply_one(&mut ledger, 8, 40, complete("a", granted.token, succeeded(b"ok"))));
}

#[test]
fn force_release_of_a_lapsed_claim_is_accepted() {
    let (mut ledger, _) = ledger_with_claim("a", "w");
    expect_force_released(apply_one(&mut ledger, 2, 5_000, force_release("a")));
    assert!(matches!(record_state(&ledger, "a"), RecordState::Available { .. }));
}

#[test]
fn force_release_of_a_completed_or_available_record_is_not_claimed_and_points_to_forget() {
    for (state, mut ledger, _) in ledgers_in_each_state("a").into_iter().skip(1) {
        let rejection = assert_rejected_unchanged(&mut ledger, 5, force_release("a"), "NOT_CLAIMED");
        assert!(matches!(rejection, Rejection::NotForceReleasable { .. }), "{rejection:?}");
        assert_eq!(rejection.record().map(Record::state_name), Some(state));
        let message = rejection.to_string();
        assert!(message.contains(state) && message.contains("key forget"), "{message}");
        assert!(ledger.audit.is_empty(), "a rejected command leaves no audit entry");
    }
}

#[test]
fn operator_commands_on_a_key_without_a_record_are_no_record() {
    let mut ledger = MemoryLedger::default();
    for command in [forget("a"), force_release("a")] {
        let rejection = assert_rejected_unchanged(&mut ledger, 1, command, "NO_RECORD");
        assert_eq!(rejection, Rejection::NoRecord);
        assert!(rejection.record().is_none());
    }
    assert!(ledger.audit.is_empty());
}

#[test]
fn limit_operator_reason_and_operator() {
    let (mut ledger, _) = ledger_with_claim("a", "w");
    let with = |reason: &str, operator: &str| Command::Forget(operator_command("a", reason, operator));
    assert_limit(&mut ledger, 2, with("", "alice"), "REASON_EMPTY");
    let too_long = "r".repeat(AUDIT_REASON_BYTES_MAX + 1);
    assert_limit(&mut ledger, 3, with(&too_long, "alice"), "REASON_TOO_LONG");
    let violation = validate_command(&with(&too_long, "alice")).unwrap_err();
    assert!(violation.message.contains(&too_long.len().to_string()), "{}", violation.message);
    assert!(violation.message.contains("AUDIT_REASON_BYTES_MAX"), "{}", violation.message);
    assert_limit(&mut ledger, 4, with("why", &"o".repeat(OWNER_BYTES_MAX + 1)), "OPERATOR_TOO_LONG");
    let force = Command::ForceRelease(operator_command("a", "", "alice"));
    assert_limit(&mut ledger, 5, force, "REASON_EMPTY");
    let bad_key =
        Command::Forget(OperatorCommand { key: RecordKey::new("bad ns", "a"), ..operator_command("a", "why", "") });
    assert_limit(&mut ledger, 6, bad_key, "NAMESPACE_INVALID");
    // At the limits, and with no operator named, the command is accepted.
    let at_limits = "r".repeat(AUDIT_REASON_BYTES_MAX);
    expect_force_released(apply_one(&mut ledger, 7, 0, Command::ForceRelease(operator_command("a", &at_limits, ""))));
    expect_forgotten(apply_one(&mut ledger, 8, 0, with("why", &"o".repeat(OWNER_BYTES_MAX))));
}

#[test]
fn the_audit_trail_keeps_the_newest_audit_entries_max_in_log_order() {
    let mut ledger = MemoryLedger::default();
    let appended = AUDIT_ENTRIES_MAX + 10;
    // One key claimed and force-released over and over: one audit entry per pair.
    let commands: Vec<Command> = (0..super::limits::ENTRY_COMMANDS_MAX / 2)
        .flat_map(|_| [Command::Claim(claim("a", "w", 1000)), force_release("a")])
        .collect();
    let mut log_index = 0;
    while ledger.audit.len() < AUDIT_ENTRIES_MAX || ledger.audit.front().unwrap().log_index == 1 {
        log_index += 1;
        let results = apply_entry(&mut ledger, log_index, LedgerTime(log_index), &commands);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let total = log_index as usize * commands.len() / 2;
    assert!(total >= appended);
    assert_eq!(ledger.audit.len(), AUDIT_ENTRIES_MAX);
    // The oldest went: the trail is the last AUDIT_ENTRIES_MAX force-releases, in log order.
    let positions: Vec<(u64, u16)> = ledger.audit.iter().map(|e| (e.log_index, e.slot)).collect();
    let all: Vec<(u64, u16)> =
        (1..=log_index).flat_map(|i| (0..commands.len() as u16 / 2).map(move |p| (i, 2 * p + 1))).collect();
    assert_eq!(positions, all[all.len() - AUDIT_ENTRIES_MAX..]);
}

#[test]
fn operator_commands_keep_their_enum_positions_after_the_older_variants() {
    // postcard encodes an enum variant by its position (after the codec's version byte): entries
    // written before these variants existed must decode unchanged, so the new ones come last.
    let variant = |bytes: Vec<u8>| bytes[1];
    assert_eq!(variant(crate::codec::encode(&forget("a")).unwrap()), 4);
    assert_eq!(variant(crate::codec::encode(&force_release("a")).unwrap()), 5);
    assert_eq!(variant(crate::codec::encode(&PreviousEnd::ForceReleased).unwrap()), 2);
    let ack = OperatorAck {
        audit: AuditEntry {
            log_index: 1,
            slot: 0,
            at: LedgerTime(0),
            action: OperatorAction::Forget,
            key: key("a"),
            reason: "r".to_string(),
            operator: String::new(),
            previous: ledger_with_claim("a", "w").0.records[&key("a")].clone(),
        },
    };
    assert_eq!(variant(crate::codec::encode(&Answer::Forgotten(ack.clone())).unwrap()), 4);
    assert_eq!(variant(crate::codec::encode(&Answer::ForceReleased(ack)).unwrap()), 5);
}

#[test]
fn an_audit_entry_keeps_at_most_a_kibibyte_of_the_outcome_it_replaced() {
    let (mut ledger, token) = ledger_with_claim("a", "w");
    let big = vec![7u8; 3 * super::limits::AUDIT_RECORD_BYTES_KEPT];
    apply_one(&mut ledger, 2, 10, complete("a", token, succeeded(&big))).expect("completed");
    let audit = expect_forgotten(apply_one(&mut ledger, 3, 20, forget("a")));
    let RecordState::Completed { outcome, .. } = &audit.previous.state else {
        panic!("the audit keeps the COMPLETED record: {:?}", audit.previous)
    };
    assert_eq!(outcome.payload, big[..super::limits::AUDIT_RECORD_BYTES_KEPT].to_vec());
    assert_eq!(audit.previous.token, token, "everything but the bulk is kept");
}
