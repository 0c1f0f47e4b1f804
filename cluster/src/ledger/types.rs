//! The ledger's vocabulary: keys, time, tokens, records, commands and answers.

use serde::Deserialize;
use serde::Serialize;

/// Bits of a fencing token that hold the command's position inside its Raft entry.
pub const TOKEN_SLOT_BITS: u32 = 16;

/// Milliseconds of ledger time: the clock the leader stamps into each entry (DESIGN §5). Apply
/// never reads a clock; it only compares these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct LedgerTime(pub u64);

impl LedgerTime {
    pub fn as_ms(self) -> u64 {
        self.0
    }

    /// `self + duration_ms`, saturating: a deadline far in the future never wraps into the past.
    pub fn plus_ms(self, duration_ms: u64) -> LedgerTime {
        LedgerTime(self.0.saturating_add(duration_ms))
    }

    /// Milliseconds from `self` until `later`, or 0 if `later` is not after `self`.
    pub fn ms_until(self, later: LedgerTime) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

/// The end of a claim's lease, in ledger time. The lease is live while `now < deadline`.
pub type LeaseDeadline = LedgerTime;

/// A fencing token: `log_index << 16 | slot`, where `log_index` is the Raft index of the entry
/// that granted the claim and `slot` the command's position inside that entry.
///
/// Committed log indexes are never reused, so tokens are unique cluster-wide and ordered by the
/// log: a later grant always has a larger token. The slot keeps that true when one entry grants
/// two claims of the same key (a release and a re-claim coalesced into one entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl FencingToken {
    pub fn new(log_index: u64, slot: u16) -> FencingToken {
        assert!(log_index < 1 << (64 - TOKEN_SLOT_BITS), "log index {log_index} overflows a fencing token");
        FencingToken(log_index << TOKEN_SLOT_BITS | u64::from(slot))
    }

    pub fn log_index(self) -> u64 {
        self.0 >> TOKEN_SLOT_BITS
    }

    pub fn slot(self) -> u16 {
        (self.0 & ((1 << TOKEN_SLOT_BITS) - 1)) as u16
    }
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `(namespace, key)`: the identity of a record. Validated by [`super::validate`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub namespace: String,
    pub key: Vec<u8>,
}

impl RecordKey {
    pub fn new(namespace: impl Into<String>, key: impl Into<Vec<u8>>) -> RecordKey {
        RecordKey { namespace: namespace.into(), key: key.into() }
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, String::from_utf8_lossy(&self.key))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutcomeKind {
    Succeeded,
    FailedFinal,
}

/// What a completed action produced. Never changes once stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// The action did not take effect.
    Retryable,
    /// The action may have taken effect; the next claimant must reconcile first.
    EffectUnknown,
}

/// How the attempt before the current claim (or the released one, for AVAILABLE) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PreviousEnd {
    LeaseLapsed,
    Released(ReleaseReason),
    /// An operator force-released the claim (`key force-release`): the action may have taken
    /// effect, as with [`ReleaseReason::EffectUnknown`]; the next claimant must reconcile first.
    ForceReleased,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PreviousAttempt {
    pub ended: PreviousEnd,
    pub owner: String,
    pub token: FencingToken,
    pub attempt: u32,
    pub checkpoint: Vec<u8>,
}

/// One record of the ledger. `token`, `attempt` and `owner` belong to the current claim
/// (CLAIMED) or the last one (COMPLETED, AVAILABLE).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    pub token: FencingToken,
    pub attempt: u32,
    pub owner: String,
    /// Given by the first claim that carried one; every later claim must match it.
    pub fingerprint: Option<Vec<u8>>,
    pub created_at: LedgerTime,
    /// Retention to apply when the record completes or is released.
    pub retention_ms: u64,
    /// How the attempt before `token` ended, if there was one.
    pub previous: Option<PreviousAttempt>,
    pub state: RecordState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RecordState {
    Claimed {
        lease_deadline: LeaseDeadline,
        /// `claim_request_id` of the call that made this claim, for re-entrant claims.
        request_id: Option<String>,
        checkpoint: Vec<u8>,
    },
    Completed {
        outcome: Outcome,
        completed_at: LedgerTime,
        retained_until: LedgerTime,
    },
    /// Released; `Record::previous` describes the released attempt.
    Available {
        released_at: LedgerTime,
        retained_until: LedgerTime,
    },
}

impl Record {
    /// When the record may be purged: COMPLETED and AVAILABLE records are kept until then;
    /// a CLAIMED record is never purged.
    pub fn retained_until(&self) -> Option<LedgerTime> {
        match self.state {
            RecordState::Claimed { .. } => None,
            RecordState::Completed { retained_until, .. } | RecordState::Available { retained_until, .. } => {
                Some(retained_until)
            }
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            RecordState::Claimed { .. } => "CLAIMED",
            RecordState::Completed { .. } => "COMPLETED",
            RecordState::Available { .. } => "AVAILABLE",
        }
    }

    /// Which of the three states the record is in, without its fields.
    pub fn state_kind(&self) -> RecordStateFilter {
        match self.state {
            RecordState::Claimed { .. } => RecordStateFilter::Claimed,
            RecordState::Completed { .. } => RecordStateFilter::Completed,
            RecordState::Available { .. } => RecordStateFilter::Available,
        }
    }
}

/// One of the three record states, without their fields: a filter for listings and the key of
/// per-state counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RecordStateFilter {
    Claimed,
    Completed,
    Available,
}

impl RecordStateFilter {
    pub fn matches(self, record: &Record) -> bool {
        record.state_kind() == self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCommand {
    pub key: RecordKey,
    pub owner: String,
    pub lease_ms: u64,
    pub fingerprint: Option<Vec<u8>>,
    pub request_id: Option<String>,
    /// `None`: keep the record's retention (or the default for a new record).
    pub retention_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteCommand {
    pub key: RecordKey,
    pub token: FencingToken,
    pub outcome: Outcome,
    pub retention_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCommand {
    pub key: RecordKey,
    pub token: FencingToken,
    pub reason: ReleaseReason,
    pub checkpoint: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendLeaseCommand {
    pub key: RecordKey,
    pub token: FencingToken,
    pub lease_ms: u64,
    /// `None`: keep the stored checkpoint.
    pub checkpoint: Option<Vec<u8>>,
}

/// An operator's override of one record (`dedupctl key forget` / `key force-release`). It
/// names no token: it acts on whatever record the key holds when it is applied, and leaves an
/// [`AuditEntry`] saying who did it, why, and what the record was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCommand {
    pub key: RecordKey,
    /// Why, for the audit trail: 1..=AUDIT_REASON_BYTES_MAX bytes.
    pub reason: String,
    /// Who, for the audit trail: free text, at most OWNER_BYTES_MAX bytes (may be empty).
    pub operator: String,
}

/// A state change asked of the ledger. Carried in Raft entries; applied by [`super::apply`].
///
/// Variants are only ever appended: the log encodes them by position (postcard), so an entry
/// written by an older build must decode to the same command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Claim(ClaimCommand),
    Complete(CompleteCommand),
    Release(ReleaseCommand),
    ExtendLease(ExtendLeaseCommand),
    /// Removes the record whatever its state, so that the next claim starts afresh (attempt 1).
    /// Its tokens stay fenced: the next grant's token is a later log position.
    Forget(OperatorCommand),
    /// Turns a CLAIMED record into AVAILABLE as a release with effect unknown would, with
    /// `previous.ended` = [`PreviousEnd::ForceReleased`].
    ForceRelease(OperatorCommand),
}

impl Command {
    pub fn key(&self) -> &RecordKey {
        match self {
            Command::Claim(c) => &c.key,
            Command::Complete(c) => &c.key,
            Command::Release(c) => &c.key,
            Command::ExtendLease(c) => &c.key,
            Command::Forget(c) | Command::ForceRelease(c) => &c.key,
        }
    }
}

/// What an operator command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OperatorAction {
    Forget,
    ForceRelease,
}

impl OperatorAction {
    /// The stable name shown to operators and scripts.
    pub fn name(&self) -> &'static str {
        match self {
            OperatorAction::Forget => "FORGET",
            OperatorAction::ForceRelease => "FORCE_RELEASE",
        }
    }
}

/// One applied operator command, kept in the ledger's audit trail (the newest
/// AUDIT_ENTRIES_MAX of them). `(log_index, slot)` is the command's log position: unique, and
/// the trail's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub log_index: u64,
    pub slot: u16,
    /// Ledger time the command was applied at.
    pub at: LedgerTime,
    pub action: OperatorAction,
    pub key: RecordKey,
    pub reason: String,
    pub operator: String,
    /// The record as it was before the command (outcome payload and checkpoints cut to
    /// AUDIT_RECORD_BYTES_KEPT bytes each).
    pub previous: Record,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAck {
    /// The entry the command added to the audit trail.
    pub audit: AuditEntry,
}

/// The answer to a claim: exactly one of three.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimOutcome {
    /// The caller owns the key: run the action under `token`.
    Claimed {
        token: FencingToken,
        lease_deadline: LeaseDeadline,
        attempt: u32,
        previous: Option<PreviousAttempt>,
        /// This repeats an earlier claim with the same owner and request id.
        reentrant: bool,
    },
    /// Someone else holds a live claim.
    InProgress { owner: String, lease_deadline: LeaseDeadline, attempt: u32, retry_after_ms: u64 },
    /// The key completed: here is its outcome; do not run the action again.
    Completed {
        outcome: Outcome,
        completed_at: LedgerTime,
        token: FencingToken,
        attempt: u32,
        retained_until: LedgerTime,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteAck {
    pub completed_at: LedgerTime,
    pub retained_until: LedgerTime,
    pub replayed: bool,
    pub late: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAck {
    pub retained_until: LedgerTime,
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendAck {
    pub lease_deadline: LeaseDeadline,
}

/// Variants are only ever appended (postcard encodes them by position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Claim(ClaimOutcome),
    Complete(CompleteAck),
    Release(ReleaseAck),
    ExtendLease(ExtendAck),
    Forgotten(OperatorAck),
    ForceReleased(OperatorAck),
}

/// A request outside a named limit. `reason` is the stable string clients match on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct LimitViolation {
    pub reason: String,
    pub message: String,
}

/// Why the ledger refused a command. These are answers recorded in the log, not storage errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Invalid(LimitViolation),
    #[error("FINGERPRINT_MISMATCH: the key was claimed with a different fingerprint")]
    FingerprintMismatch { record: Box<Record> },
    #[error("FENCED: token {given} is older than the key's current token {}", record.token)]
    Fenced { given: FencingToken, record: Box<Record> },
    #[error("NOT_CLAIMED: the key is not claimed by token {given}")]
    NotClaimed { given: FencingToken, record: Option<Box<Record>> },
    #[error("LEASE_LAPSED: the lease of token {given} ended; complete is still accepted, extend is not")]
    LeaseLapsed { given: FencingToken, record: Box<Record> },
    #[error("OUTCOME_IMMUTABLE: the key is completed with a different outcome")]
    OutcomeImmutable { record: Box<Record> },
    #[error("NO_RECORD: the key has no record")]
    NoRecord,
    #[error(
        "NOT_CLAIMED: force-release applies only to a CLAIMED record; this one is {}; `key forget` removes a record in any state",
        record.state_name()
    )]
    NotForceReleasable { record: Box<Record> },
}

impl Rejection {
    /// The stable reason string (`google.rpc.ErrorInfo.reason`).
    pub fn reason(&self) -> &str {
        match self {
            Rejection::Invalid(v) => &v.reason,
            Rejection::FingerprintMismatch { .. } => "FINGERPRINT_MISMATCH",
            Rejection::Fenced { .. } => "FENCED",
            Rejection::NotClaimed { .. } => "NOT_CLAIMED",
            Rejection::LeaseLapsed { .. } => "LEASE_LAPSED",
            Rejection::OutcomeImmutable { .. } => "OUTCOME_IMMUTABLE",
            Rejection::NoRecord => "NO_RECORD",
            Rejection::NotForceReleasable { .. } => "NOT_CLAIMED",
        }
    }

    /// The record the rejection is about, where there is one.
    pub fn record(&self) -> Option<&Record> {
        match self {
            Rejection::Invalid(_) | Rejection::NoRecord => None,
            Rejection::FingerprintMismatch { record }
            | Rejection::Fenced { record, .. }
            | Rejection::LeaseLapsed { record, .. }
            | Rejection::OutcomeImmutable { record }
            | Rejection::NotForceReleasable { record } => Some(record),
            Rejection::NotClaimed { record, .. } => record.as_deref(),
        }
    }
}

/// What applying one command produced.
pub type CommandResult = Result<Answer, Rejection>;
