//! Conversions between the protobuf messages and the ledger core's types. Requests are checked
//! against the named limits here, before anything reaches the log.

use dedup_cluster::ledger::*;
use dedup_proto::v1 as pb;

use crate::error::ServiceError;

fn invalid(reason: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(LimitViolation { reason: reason.to_string(), message: message.into() })
}

fn optional_bytes(bytes: Vec<u8>) -> Option<Vec<u8>> {
    (!bytes.is_empty()).then_some(bytes)
}

fn optional_ms(ms: u64) -> Option<u64> {
    (ms != 0).then_some(ms)
}

pub fn record_key(namespace: String, key: Vec<u8>) -> Result<RecordKey, ServiceError> {
    let key = RecordKey { namespace, key };
    validate_key(&key).map_err(ServiceError::Invalid)?;
    Ok(key)
}

fn checked(command: Command) -> Result<Command, ServiceError> {
    validate_command(&command).map_err(ServiceError::Invalid)?;
    Ok(command)
}

pub fn claim_command(request: pb::CheckAndClaimRequest) -> Result<Command, ServiceError> {
    validate_wait_ms(request.wait_ms).map_err(ServiceError::Invalid)?;
    checked(Command::Claim(ClaimCommand {
        key: RecordKey { namespace: request.namespace, key: request.key },
        owner: request.owner,
        lease_ms: request.lease_ms,
        fingerprint: optional_bytes(request.fingerprint),
        request_id: (!request.claim_request_id.is_empty()).then_some(request.claim_request_id),
        retention_ms: optional_ms(request.retention_ms),
    }))
}

fn outcome(outcome: Option<pb::Outcome>) -> Result<Outcome, ServiceError> {
    let outcome = outcome.ok_or_else(|| invalid("OUTCOME_MISSING", "complete needs an outcome"))?;
    // UNSPECIFIED reads as SUCCEEDED: the common case needs no enum.
    let kind = match pb::OutcomeKind::try_from(outcome.kind) {
        Ok(pb::OutcomeKind::Unspecified | pb::OutcomeKind::Succeeded) => OutcomeKind::Succeeded,
        Ok(pb::OutcomeKind::FailedFinal) => OutcomeKind::FailedFinal,
        Err(_) => return Err(invalid("OUTCOME_KIND_INVALID", format!("outcome kind {} is not defined", outcome.kind))),
    };
    Ok(Outcome { kind, payload: outcome.payload })
}

pub fn complete_command(request: pb::CompleteRequest) -> Result<Command, ServiceError> {
    checked(Command::Complete(CompleteCommand {
        key: RecordKey { namespace: request.namespace, key: request.key },
        token: FencingToken(request.token),
        outcome: outcome(request.outcome)?,
        retention_ms: optional_ms(request.retention_ms),
    }))
}

pub fn release_command(request: pb::ReleaseRequest) -> Result<Command, ServiceError> {
    // UNSPECIFIED reads as RETRYABLE.
    let reason = match pb::ReleaseReason::try_from(request.reason) {
        Ok(pb::ReleaseReason::Unspecified | pb::ReleaseReason::Retryable) => ReleaseReason::Retryable,
        Ok(pb::ReleaseReason::EffectUnknown) => ReleaseReason::EffectUnknown,
        Err(_) => {
            return Err(invalid("RELEASE_REASON_INVALID", format!("release reason {} is not defined", request.reason)))
        }
    };
    checked(Command::Release(ReleaseCommand {
        key: RecordKey { namespace: request.namespace, key: request.key },
        token: FencingToken(request.token),
        reason,
        checkpoint: request.checkpoint,
    }))
}

pub fn extend_command(request: pb::ExtendLeaseRequest) -> Result<Command, ServiceError> {
    checked(Command::ExtendLease(ExtendLeaseCommand {
        key: RecordKey { namespace: request.namespace, key: request.key },
        token: FencingToken(request.token),
        lease_ms: request.lease_ms,
        checkpoint: optional_bytes(request.checkpoint),
    }))
}

pub fn outcome_to_pb(outcome: &Outcome) -> pb::Outcome {
    let kind = match outcome.kind {
        OutcomeKind::Succeeded => pb::OutcomeKind::Succeeded,
        OutcomeKind::FailedFinal => pb::OutcomeKind::FailedFinal,
    };
    pb::Outcome { kind: kind as i32, payload: outcome.payload.clone() }
}

pub fn previous_to_pb(previous: &PreviousAttempt) -> pb::PreviousAttempt {
    let ended = match previous.ended {
        PreviousEnd::LeaseLapsed => pb::PreviousEnd::LeaseLapsed,
        PreviousEnd::Released(ReleaseReason::Retryable) => pb::PreviousEnd::ReleasedRetryable,
        PreviousEnd::Released(ReleaseReason::EffectUnknown) => pb::PreviousEnd::ReleasedEffectUnknown,
        PreviousEnd::ForceReleased => pb::PreviousEnd::ForceReleased,
    };
    pb::PreviousAttempt {
        ended: ended as i32,
        owner: previous.owner.clone(),
        token: previous.token.0,
        attempt: previous.attempt,
        checkpoint: previous.checkpoint.clone(),
    }
}

pub fn claim_response(outcome: ClaimOutcome, applied_index: u64, ledger_time: LedgerTime) -> pb::CheckAndClaimResponse {
    use pb::check_and_claim_response::Result as Answer;
    let result = match outcome {
        ClaimOutcome::Claimed { token, lease_deadline, attempt, previous, reentrant } => Answer::Claimed(pb::Claimed {
            token: token.0,
            lease_deadline_ms: lease_deadline.as_ms(),
            attempt,
            previous: previous.as_ref().map(previous_to_pb),
            reentrant,
        }),
        ClaimOutcome::InProgress { owner, lease_deadline, attempt, retry_after_ms } => {
            Answer::InProgress(pb::InProgress {
                owner,
                lease_deadline_ms: lease_deadline.as_ms(),
                attempt,
                retry_after_ms,
            })
        }
        ClaimOutcome::Completed { outcome, completed_at, token, attempt, retained_until } => {
            Answer::Completed(pb::Completed {
                outcome: Some(outcome_to_pb(&outcome)),
                completed_at_ms: completed_at.as_ms(),
                token: token.0,
                attempt,
                retained_until_ms: retained_until.as_ms(),
            })
        }
    };
    pb::CheckAndClaimResponse { result: Some(result), applied_index, ledger_time_ms: ledger_time.as_ms() }
}

pub fn record_view(key: &RecordKey, record: &Record, applied_index: u64, ledger_time: LedgerTime) -> pb::RecordView {
    let mut view = pb::RecordView {
        namespace: key.namespace.clone(),
        key: key.key.clone(),
        token: record.token.0,
        attempt: record.attempt,
        owner: record.owner.clone(),
        fingerprint: record.fingerprint.clone().unwrap_or_default(),
        created_at_ms: record.created_at.as_ms(),
        previous: record.previous.as_ref().map(previous_to_pb),
        applied_index,
        ledger_time_ms: ledger_time.as_ms(),
        ..Default::default()
    };
    match &record.state {
        RecordState::Claimed { lease_deadline, checkpoint, .. } => {
            view.state = pb::RecordState::Claimed as i32;
            view.lease_deadline_ms = lease_deadline.as_ms();
            view.checkpoint = checkpoint.clone();
        }
        RecordState::Completed { outcome, completed_at, retained_until } => {
            view.state = pb::RecordState::Completed as i32;
            view.outcome = Some(outcome_to_pb(outcome));
            view.completed_at_ms = completed_at.as_ms();
            view.retained_until_ms = retained_until.as_ms();
        }
        RecordState::Available { retained_until, .. } => {
            view.state = pb::RecordState::Available as i32;
            view.retained_until_ms = retained_until.as_ms();
        }
    }
    view
}
