//! Counters of the ledger answers this node served, kept in plain atomics (one relaxed add per
//! event, no lock, no label lookup) and read at scrape time.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use dedup_cluster::ledger::Answer;
use dedup_cluster::ledger::ClaimOutcome;
use dedup_cluster::ledger::Command;
use dedup_cluster::ledger::PreviousEnd;
use dedup_cluster::ledger::Rejection;
use dedup_cluster::ledger::ReleaseReason;
use dedup_cluster::proposer::Applied;
use dedup_cluster::proposer::ProposeError;
use dedup_proto::v1 as pb;

/// How a claim's answer was produced: label `via` of `dedup_ledger_claims_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimVia {
    /// A duplicate of a COMPLETED key answered from this node's hot tier (no Raft round).
    HotTier,
    /// A duplicate of a COMPLETED key answered from this node's store (no Raft round).
    Store,
    /// Proposed through this node's Raft log (this node leads).
    Raft,
    /// Forwarded to the leader, whose answer this node passed back (the leader counts it too,
    /// as `raft`).
    Forwarded,
}

impl ClaimVia {
    pub const ALL: [ClaimVia; 4] = [ClaimVia::HotTier, ClaimVia::Store, ClaimVia::Raft, ClaimVia::Forwarded];

    pub fn label(self) -> &'static str {
        match self {
            ClaimVia::HotTier => "hot_tier",
            ClaimVia::Store => "store",
            ClaimVia::Raft => "raft",
            ClaimVia::Forwarded => "forwarded",
        }
    }
}

/// Label `answer` of `dedup_ledger_claims_total`, by position.
pub const CLAIM_ANSWERS: [&str; 3] = ["claimed", "in_progress", "completed"];

/// Label `previous_end` of `dedup_ledger_takeovers_total`, by position.
pub const PREVIOUS_ENDS: [&str; 4] =
    ["lease_lapsed", "released_retryable", "released_effect_unknown", "force_released"];

fn previous_end_position(end: PreviousEnd) -> usize {
    match end {
        PreviousEnd::LeaseLapsed => 0,
        PreviousEnd::Released(ReleaseReason::Retryable) => 1,
        PreviousEnd::Released(ReleaseReason::EffectUnknown) => 2,
        PreviousEnd::ForceReleased => 3,
    }
}

/// Label `call` of `dedup_ledger_fenced_total`, by position.
pub const FENCED_CALLS: [&str; 3] = ["complete", "release", "extend_lease"];

/// Label `reason` of `dedup_raft_proposals_failed_total`, by position.
pub const PROPOSAL_FAILURES: [&str; 6] =
    ["not_leader", "no_quorum", "overloaded", "shutting_down", "leader_transfer", "too_large"];

fn proposal_failure_position(error: &ProposeError) -> usize {
    match error {
        ProposeError::NotLeader { .. } => 0,
        ProposeError::Timeout { .. } => 1,
        ProposeError::Overloaded => 2,
        ProposeError::Stopped(_) => 3,
        ProposeError::TransferringLeadership => 4,
        ProposeError::GroupTooLarge { .. } => 5,
    }
}

/// What [`LedgerMetrics::applied`] needs to know of a command, taken before it is proposed.
#[derive(Debug, Clone, Copy)]
pub struct CommandFacts {
    /// Position in [`FENCED_CALLS`], for the commands a stale token can fence.
    fenceable: Option<usize>,
    /// Payload bytes of a completion's outcome.
    outcome_bytes: u64,
}

impl CommandFacts {
    pub fn of(command: &Command) -> CommandFacts {
        let (fenceable, outcome_bytes) = match command {
            Command::Complete(complete) => (Some(0), complete.outcome.payload.len() as u64),
            Command::Release(_) => (Some(1), 0),
            Command::ExtendLease(_) => (Some(2), 0),
            _ => (None, 0),
        };
        CommandFacts { fenceable, outcome_bytes }
    }
}

#[derive(Debug, Default)]
pub struct LedgerMetrics {
    /// `[answer][via]`.
    claims: [[AtomicU64; ClaimVia::ALL.len()]; CLAIM_ANSWERS.len()],
    takeovers: [AtomicU64; PREVIOUS_ENDS.len()],
    fenced: [AtomicU64; FENCED_CALLS.len()],
    late_completions: AtomicU64,
    outcome_bytes_completed: AtomicU64,
    proposals_committed: AtomicU64,
    proposals_failed: [AtomicU64; PROPOSAL_FAILURES.len()],
}

/// One snapshot of [`LedgerMetrics`], for the scrape.
#[derive(Debug, Clone, Default)]
pub struct LedgerCounts {
    pub claims: Vec<(&'static str, &'static str, u64)>,
    pub takeovers: Vec<(&'static str, u64)>,
    pub fenced: Vec<(&'static str, u64)>,
    pub late_completions: u64,
    pub outcome_bytes_completed: u64,
    pub proposals_committed: u64,
    pub proposals_failed: Vec<(&'static str, u64)>,
}

fn add(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl LedgerMetrics {
    /// A claim answered to the caller (one per answer, batch items included; a parked claim
    /// counts once, with the answer that ended its wait).
    pub fn claim_answered(&self, response: &pb::CheckAndClaimResponse, via: ClaimVia) {
        use pb::check_and_claim_response::Result as Answer;
        let answer = match response.result {
            Some(Answer::Claimed(_)) => 0,
            Some(Answer::InProgress(_)) => 1,
            Some(Answer::Completed(_)) => 2,
            None => return,
        };
        let via = ClaimVia::ALL.iter().position(|v| *v == via).expect("a known path");
        add(&self.claims[answer][via], 1);
    }

    /// The result of one proposal (a command, or a batch's group) through this node's proposer.
    pub fn proposed<T>(&self, result: &Result<T, ProposeError>) {
        match result {
            Ok(_) => add(&self.proposals_committed, 1),
            Err(error) => add(&self.proposals_failed[proposal_failure_position(error)], 1),
        }
    }

    /// One command this node proposed, as the ledger applied it.
    pub fn applied(&self, facts: CommandFacts, applied: &Applied) {
        match &applied.result {
            Ok(Answer::Claim(ClaimOutcome::Claimed { previous: Some(previous), reentrant: false, .. })) => {
                add(&self.takeovers[previous_end_position(previous.ended)], 1);
            }
            Ok(Answer::Complete(ack)) if !ack.replayed => {
                add(&self.outcome_bytes_completed, facts.outcome_bytes);
                if ack.late {
                    add(&self.late_completions, 1);
                }
            }
            Err(Rejection::Fenced { .. }) => {
                if let Some(call) = facts.fenceable {
                    add(&self.fenced[call], 1);
                }
            }
            _ => {}
        }
    }

    pub fn counts(&self) -> LedgerCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut claims = Vec::new();
        for (answer, row) in CLAIM_ANSWERS.iter().zip(&self.claims) {
            for (via, counter) in ClaimVia::ALL.iter().zip(row) {
                claims.push((*answer, via.label(), load(counter)));
            }
        }
        let labelled = |labels: &[&'static str], counters: &[AtomicU64]| {
            labels.iter().copied().zip(counters.iter().map(load)).collect::<Vec<_>>()
        };
        LedgerCounts {
            claims,
            takeovers: labelled(&PREVIOUS_ENDS, &self.takeovers),
            fenced: labelled(&FENCED_CALLS, &self.fenced),
            late_completions: load(&self.late_completions),
            outcome_bytes_completed: load(&self.outcome_bytes_completed),
            proposals_committed: load(&self.proposals_committed),
            proposals_failed: labelled(&PROPOSAL_FAILURES, &self.proposals_failed),
        }
    }
}
