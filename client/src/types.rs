//! Requests and typed answers. They mirror `ledger.proto`; times ending in `_ms` that name a
//! moment are ledger time (milliseconds, close to Unix epoch milliseconds).

use std::time::Duration;

use dedup_proto::v1 as pb;

use crate::Consistency;
use crate::OutcomeKind;
use crate::PreviousEnd;
use crate::RecordState;
use crate::ReleaseReason;

/// A lease used when a request names none (the CLI's default too).
pub const LEASE_DEFAULT: Duration = Duration::from_secs(30);

/// Milliseconds of a duration for the wire, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

// ------------------------------------------------------------------------------------------------
// Requests

/// A `CheckAndClaim` call. Build it with [`ClaimRequest::new`] and the `with_` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub namespace: String,
    pub key: Vec<u8>,
    /// Who is claiming (free text, at most 128 bytes, not empty).
    pub owner: String,
    /// Lease length, 100 ms ..= 1 h on the server. Default [`LEASE_DEFAULT`].
    pub lease: Duration,
    /// Digest of the request payload (at most 64 bytes); a later claim with a different one is
    /// answered `FINGERPRINT_MISMATCH`.
    pub fingerprint: Option<Vec<u8>>,
    /// Id of this logical claim (at most 64 bytes). When `None` the client generates one per
    /// `check_and_claim` call and reuses it for that call's retries, so that a retry after a lost
    /// answer gets the same CLAIMED answer back instead of IN_PROGRESS.
    pub claim_request_id: Option<String>,
    /// How long the record is kept after it completes or is released; `None`: cluster default.
    pub retention: Option<Duration>,
    /// How long the server may park this claim while someone else holds the key (at most
    /// 30 s): it answers as soon as the key completes or becomes claimable (then it claims it),
    /// or IN_PROGRESS when the wait ends. `None`: answer at once.
    pub wait: Option<Duration>,
}

impl ClaimRequest {
    pub fn new(namespace: impl Into<String>, key: impl Into<Vec<u8>>, owner: impl Into<String>) -> ClaimRequest {
        ClaimRequest {
            namespace: namespace.into(),
            key: key.into(),
            owner: owner.into(),
            lease: LEASE_DEFAULT,
            fingerprint: None,
            claim_request_id: None,
            retention: None,
            wait: None,
        }
    }

    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    pub fn with_fingerprint(mut self, fingerprint: impl Into<Vec<u8>>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    pub fn with_claim_request_id(mut self, id: impl Into<String>) -> Self {
        self.claim_request_id = Some(id.into());
        self
    }

    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    pub(crate) fn to_proto(&self, claim_request_id: String) -> pb::CheckAndClaimRequest {
        pb::CheckAndClaimRequest {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            owner: self.owner.clone(),
            lease_ms: millis(self.lease),
            fingerprint: self.fingerprint.clone().unwrap_or_default(),
            claim_request_id,
            wait_ms: self.wait.map(millis).unwrap_or(0),
            retention_ms: self.retention.map(millis).unwrap_or(0),
        }
    }
}

/// A `Complete` call: store `outcome` under the claim's `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteRequest {
    pub namespace: String,
    pub key: Vec<u8>,
    pub token: u64,
    pub outcome: Outcome,
    /// Overrides the retention given at claim time; `None` keeps it.
    pub retention: Option<Duration>,
}

impl CompleteRequest {
    pub fn new(namespace: impl Into<String>, key: impl Into<Vec<u8>>, token: u64, outcome: Outcome) -> Self {
        CompleteRequest { namespace: namespace.into(), key: key.into(), token, outcome, retention: None }
    }

    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    pub(crate) fn to_proto(&self) -> pb::CompleteRequest {
        pb::CompleteRequest {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            token: self.token,
            outcome: Some(self.outcome.to_proto()),
            retention_ms: self.retention.map(millis).unwrap_or(0),
        }
    }
}

/// A `Release` call: give the claim up so a retry can claim the key at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    pub namespace: String,
    pub key: Vec<u8>,
    pub token: u64,
    pub reason: ReleaseReason,
    /// Progress note for the next claimant (at most 4 KiB); empty: none.
    pub checkpoint: Vec<u8>,
}

impl ReleaseRequest {
    pub fn new(namespace: impl Into<String>, key: impl Into<Vec<u8>>, token: u64, reason: ReleaseReason) -> Self {
        ReleaseRequest { namespace: namespace.into(), key: key.into(), token, reason, checkpoint: Vec::new() }
    }

    pub fn with_checkpoint(mut self, checkpoint: impl Into<Vec<u8>>) -> Self {
        self.checkpoint = checkpoint.into();
        self
    }

    pub(crate) fn to_proto(&self) -> pb::ReleaseRequest {
        pb::ReleaseRequest {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            token: self.token,
            reason: self.reason as i32,
            checkpoint: self.checkpoint.clone(),
        }
    }
}

/// An `ExtendLease` call: the lease ends `lease` after now (ledger time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendRequest {
    pub namespace: String,
    pub key: Vec<u8>,
    pub token: u64,
    pub lease: Duration,
    /// Replaces the stored checkpoint when not empty.
    pub checkpoint: Vec<u8>,
}

impl ExtendRequest {
    pub fn new(namespace: impl Into<String>, key: impl Into<Vec<u8>>, token: u64, lease: Duration) -> Self {
        ExtendRequest { namespace: namespace.into(), key: key.into(), token, lease, checkpoint: Vec::new() }
    }

    pub fn with_checkpoint(mut self, checkpoint: impl Into<Vec<u8>>) -> Self {
        self.checkpoint = checkpoint.into();
        self
    }

    pub(crate) fn to_proto(&self) -> pb::ExtendLeaseRequest {
        pb::ExtendLeaseRequest {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            token: self.token,
            lease_ms: millis(self.lease),
            checkpoint: self.checkpoint.clone(),
        }
    }
}

/// A `Get` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    pub namespace: String,
    pub key: Vec<u8>,
    /// Default `Linearizable`.
    pub consistency: Consistency,
    /// Ask this endpoint only (no retries, no leader redirects): "what does this node think".
    /// `None`: the usual leader-following retry loop.
    pub endpoint: Option<String>,
}

impl GetRequest {
    pub fn new(namespace: impl Into<String>, key: impl Into<Vec<u8>>) -> GetRequest {
        GetRequest {
            namespace: namespace.into(),
            key: key.into(),
            consistency: Consistency::Linearizable,
            endpoint: None,
        }
    }

    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// Pins the call to one endpoint (`HOST:PORT` or `http://HOST:PORT`).
    pub fn on_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    pub(crate) fn to_proto(&self) -> pb::GetRequest {
        pb::GetRequest {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            consistency: self.consistency as i32,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Answers

/// A stored outcome: what a duplicate gets back instead of running the action again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub payload: Vec<u8>,
}

impl Outcome {
    /// The side effect happened; `payload` is its result.
    pub fn succeeded(payload: impl Into<Vec<u8>>) -> Outcome {
        Outcome { kind: OutcomeKind::Succeeded, payload: payload.into() }
    }

    /// The action failed for good; the failure is replayed to duplicates.
    pub fn failed_final(payload: impl Into<Vec<u8>>) -> Outcome {
        Outcome { kind: OutcomeKind::FailedFinal, payload: payload.into() }
    }

    pub fn is_success(&self) -> bool {
        self.kind == OutcomeKind::Succeeded
    }

    pub(crate) fn to_proto(&self) -> pb::Outcome {
        pb::Outcome { kind: self.kind as i32, payload: self.payload.clone() }
    }

    pub(crate) fn from_proto(outcome: Option<pb::Outcome>) -> Outcome {
        let outcome = outcome.unwrap_or_default();
        Outcome { kind: OutcomeKind::try_from(outcome.kind).unwrap_or_default(), payload: outcome.payload }
    }
}

/// How the attempt before a claim ended, and its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousAttempt {
    pub ended: PreviousEnd,
    pub owner: String,
    pub token: u64,
    pub attempt: u32,
    pub checkpoint: Vec<u8>,
}

impl PreviousAttempt {
    pub(crate) fn from_proto(previous: Option<pb::PreviousAttempt>) -> Option<PreviousAttempt> {
        previous.map(|p| PreviousAttempt {
            ended: PreviousEnd::try_from(p.ended).unwrap_or_default(),
            owner: p.owner,
            token: p.token,
            attempt: p.attempt,
            checkpoint: p.checkpoint,
        })
    }

    /// True when the previous attempt may have taken effect (it released with EFFECT_UNKNOWN,
    /// its lease lapsed mid-action, or an operator force-released it): the new holder should
    /// reconcile before acting.
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(self.ended, PreviousEnd::ReleasedEffectUnknown | PreviousEnd::LeaseLapsed | PreviousEnd::ForceReleased)
    }
}

/// CLAIMED: run the action under `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Fencing token: pass it to complete/release/extend and to downstream systems.
    pub token: u64,
    pub lease_deadline_ms: u64,
    pub attempt: u32,
    /// Set when this claim follows an earlier attempt (takeover, or after a release).
    pub previous: Option<PreviousAttempt>,
    /// This answer repeats an earlier claim with the same owner and claim_request_id.
    pub reentrant: bool,
    pub applied_index: u64,
    pub ledger_time_ms: u64,
}

/// IN_PROGRESS: someone else holds a live claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgress {
    pub owner: String,
    pub lease_deadline_ms: u64,
    pub attempt: u32,
    /// Until the lease lapses; a claim after that may take the key over.
    pub retry_after: Duration,
    pub applied_index: u64,
    pub ledger_time_ms: u64,
}

/// COMPLETED: a duplicate; here is the stored outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub outcome: Outcome,
    pub completed_at_ms: u64,
    /// Token of the claim that completed the key.
    pub token: u64,
    pub attempt: u32,
    pub retained_until_ms: u64,
    pub applied_index: u64,
    pub ledger_time_ms: u64,
}

/// The answer to a claim: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    Claimed(Claimed),
    InProgress(InProgress),
    Completed(Completed),
}

impl ClaimAnswer {
    /// `CLAIMED`, `IN_PROGRESS` or `COMPLETED`.
    pub fn state_name(&self) -> &'static str {
        match self {
            ClaimAnswer::Claimed(_) => "CLAIMED",
            ClaimAnswer::InProgress(_) => "IN_PROGRESS",
            ClaimAnswer::Completed(_) => "COMPLETED",
        }
    }

    pub(crate) fn from_proto(response: pb::CheckAndClaimResponse) -> Option<ClaimAnswer> {
        use pb::check_and_claim_response::Result as R;
        let applied_index = response.applied_index;
        let ledger_time_ms = response.ledger_time_ms;
        Some(match response.result? {
            R::Claimed(c) => ClaimAnswer::Claimed(Claimed {
                token: c.token,
                lease_deadline_ms: c.lease_deadline_ms,
                attempt: c.attempt,
                previous: PreviousAttempt::from_proto(c.previous),
                reentrant: c.reentrant,
                applied_index,
                ledger_time_ms,
            }),
            R::InProgress(p) => ClaimAnswer::InProgress(InProgress {
                owner: p.owner,
                lease_deadline_ms: p.lease_deadline_ms,
                attempt: p.attempt,
                retry_after: Duration::from_millis(p.retry_after_ms),
                applied_index,
                ledger_time_ms,
            }),
            R::Completed(c) => ClaimAnswer::Completed(Completed {
                outcome: Outcome::from_proto(c.outcome),
                completed_at_ms: c.completed_at_ms,
                token: c.token,
                attempt: c.attempt,
                retained_until_ms: c.retained_until_ms,
                applied_index,
                ledger_time_ms,
            }),
        })
    }
}

/// The answer to `Complete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteAck {
    pub completed_at_ms: u64,
    pub retained_until_ms: u64,
    /// The same completion was already stored (e.g. a retried call): nothing changed.
    pub replayed: bool,
    /// The lease had lapsed but nobody took over, so the completion was accepted.
    pub late: bool,
    pub applied_index: u64,
    /// Ledger time the entry was applied at.
    pub ledger_time_ms: u64,
}

impl From<pb::CompleteResponse> for CompleteAck {
    fn from(r: pb::CompleteResponse) -> Self {
        CompleteAck {
            completed_at_ms: r.completed_at_ms,
            retained_until_ms: r.retained_until_ms,
            replayed: r.replayed,
            late: r.late,
            applied_index: r.applied_index,
            ledger_time_ms: r.ledger_time_ms,
        }
    }
}

/// The answer to `Release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseAck {
    pub retained_until_ms: u64,
    /// This token had already released the key: nothing changed.
    pub replayed: bool,
    pub applied_index: u64,
    pub ledger_time_ms: u64,
}

impl From<pb::ReleaseResponse> for ReleaseAck {
    fn from(r: pb::ReleaseResponse) -> Self {
        ReleaseAck {
            retained_until_ms: r.retained_until_ms,
            replayed: r.replayed,
            applied_index: r.applied_index,
            ledger_time_ms: r.ledger_time_ms,
        }
    }
}

/// The answer to `ExtendLease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendAck {
    pub lease_deadline_ms: u64,
    pub applied_index: u64,
    pub ledger_time_ms: u64,
}

impl From<pb::ExtendLeaseResponse> for ExtendAck {
    fn from(r: pb::ExtendLeaseResponse) -> Self {
        ExtendAck {
            lease_deadline_ms: r.lease_deadline_ms,
            applied_index: r.applied_index,
            ledger_time_ms: r.ledger_time_ms,
        }
    }
}

/// A record as stored (`RecordView`). Fields that do not apply to `state` are zero/empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub namespace: String,
    pub key: Vec<u8>,
    pub state: RecordState,
    /// Token of the current (CLAIMED) or last (COMPLETED, AVAILABLE) claim.
    pub token: u64,
    pub attempt: u32,
    pub owner: String,
    /// CLAIMED: when the lease ends.
    pub lease_deadline_ms: u64,
    pub fingerprint: Vec<u8>,
    pub created_at_ms: u64,
    pub completed_at_ms: u64,
    pub retained_until_ms: u64,
    /// COMPLETED: the stored outcome.
    pub outcome: Option<Outcome>,
    pub previous: Option<PreviousAttempt>,
    pub checkpoint: Vec<u8>,
    pub applied_index: u64,
    pub ledger_time_ms: u64,
}

impl From<pb::RecordView> for Record {
    fn from(r: pb::RecordView) -> Self {
        Record {
            namespace: r.namespace,
            key: r.key,
            state: RecordState::try_from(r.state).unwrap_or_default(),
            token: r.token,
            attempt: r.attempt,
            owner: r.owner,
            lease_deadline_ms: r.lease_deadline_ms,
            fingerprint: r.fingerprint,
            created_at_ms: r.created_at_ms,
            completed_at_ms: r.completed_at_ms,
            retained_until_ms: r.retained_until_ms,
            outcome: r.outcome.map(|o| Outcome::from_proto(Some(o))),
            previous: PreviousAttempt::from_proto(r.previous),
            checkpoint: r.checkpoint,
            applied_index: r.applied_index,
            ledger_time_ms: r.ledger_time_ms,
        }
    }
}

/// The answer to `Get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetAnswer {
    /// `None`: no record. Not conclusive for a key last written before `purge_horizon_ms`.
    pub record: Option<Record>,
    /// Records of this namespace whose retention ended at or before this ledger time may have
    /// been purged. 0: nothing purged.
    pub purge_horizon_ms: u64,
    pub applied_index: u64,
    pub ledger_time_ms: u64,
}

impl From<pb::GetResponse> for GetAnswer {
    fn from(r: pb::GetResponse) -> Self {
        GetAnswer {
            record: r.record.map(Record::from),
            purge_horizon_ms: r.purge_horizon_ms,
            applied_index: r.applied_index,
            ledger_time_ms: r.ledger_time_ms,
        }
    }
}

/// One node's view of Raft (`NodeStatusResponse`, as sent).
pub type NodeStatus = pb::NodeStatusResponse;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_request_maps_to_the_proto_with_defaults() {
        let request = ClaimRequest::new("orders", "order-42", "worker-a");
        let proto = request.to_proto("id-1".to_string());
        assert_eq!(proto.lease_ms, 30_000);
        assert_eq!(proto.retention_ms, 0, "0 = cluster default");
        assert_eq!(proto.wait_ms, 0, "no wait unless asked");
        let waiting = ClaimRequest::new("orders", "order-42", "worker-a").with_wait(Duration::from_millis(2_500));
        assert_eq!(waiting.to_proto("id-2".to_string()).wait_ms, 2_500);
        assert!(proto.fingerprint.is_empty());
        assert_eq!(proto.claim_request_id, "id-1");
        assert_eq!(proto.key, b"order-42");

        let proto = ClaimRequest::new("orders", vec![0u8, 1], "w")
            .with_lease(Duration::from_millis(1500))
            .with_fingerprint(*b"fp")
            .with_retention(Duration::from_secs(60))
            .to_proto(String::new());
        assert_eq!((proto.lease_ms, proto.retention_ms, proto.fingerprint), (1500, 60_000, b"fp".to_vec()));
    }

    #[test]
    fn claim_answers_decode_each_branch() {
        use pb::check_and_claim_response::Result as R;
        let claimed = ClaimAnswer::from_proto(pb::CheckAndClaimResponse {
            result: Some(R::Claimed(pb::Claimed {
                token: 17,
                lease_deadline_ms: 1000,
                attempt: 2,
                previous: Some(pb::PreviousAttempt {
                    ended: PreviousEnd::ReleasedEffectUnknown as i32,
                    owner: "a".into(),
                    token: 9,
                    attempt: 1,
                    checkpoint: b"half".to_vec(),
                }),
                reentrant: true,
            })),
            applied_index: 17,
            ledger_time_ms: 900,
        })
        .unwrap();
        let ClaimAnswer::Claimed(c) = &claimed else { panic!("{claimed:?}") };
        assert_eq!((c.token, c.attempt, c.reentrant, c.applied_index), (17, 2, true, 17));
        assert!(c.previous.as_ref().unwrap().may_have_taken_effect());
        assert_eq!(claimed.state_name(), "CLAIMED");

        let busy = ClaimAnswer::from_proto(pb::CheckAndClaimResponse {
            result: Some(R::InProgress(pb::InProgress {
                owner: "b".into(),
                lease_deadline_ms: 5,
                attempt: 1,
                retry_after_ms: 250,
            })),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(busy, ClaimAnswer::InProgress(InProgress { ref owner, retry_after, .. })
            if owner == "b" && retry_after == Duration::from_millis(250)));

        let done = ClaimAnswer::from_proto(pb::CheckAndClaimResponse {
            result: Some(R::Completed(pb::Completed {
                outcome: Some(pb::Outcome { kind: OutcomeKind::FailedFinal as i32, payload: b"no".to_vec() }),
                token: 3,
                ..Default::default()
            })),
            ..Default::default()
        })
        .unwrap();
        let ClaimAnswer::Completed(c) = done else { panic!() };
        assert_eq!(c.outcome, Outcome::failed_final("no"));

        assert_eq!(ClaimAnswer::from_proto(pb::CheckAndClaimResponse::default()), None);
    }

    #[test]
    fn unknown_enum_numbers_decode_as_unspecified() {
        let record = Record::from(pb::RecordView { state: 99, ..Default::default() });
        assert_eq!(record.state, RecordState::Unspecified);
        let outcome = Outcome::from_proto(Some(pb::Outcome { kind: 42, payload: vec![] }));
        assert_eq!(outcome.kind, OutcomeKind::Unspecified);
    }
}
