//! Every error a client of `dedupd` can see, and the one place that maps them to gRPC status
//! codes with a `google.rpc.ErrorInfo` (domain `dedup.v1`, a stable reason, and the numbers).

use std::collections::HashMap;

use dedup_cluster::ledger::LimitViolation;
use dedup_cluster::ledger::Record;
use dedup_cluster::ledger::RecordState;
use dedup_cluster::ledger::Rejection;
use dedup_cluster::proposer::ProposeError;
use dedup_cluster::raft_types::NodeId;
use dedup_proto::ERROR_DOMAIN;
use tonic::Code;
use tonic::Status;
use tonic_types::ErrorDetails;
use tonic_types::StatusExt;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request outside a named limit, found before it reached the log.
    #[error("{0}")]
    Invalid(LimitViolation),
    /// The ledger refused the command (fenced, fingerprint mismatch, ...).
    #[error("{0}")]
    Rejected(Rejection),
    #[error("NOT_LEADER: node {this_node} is not the leader; leader is {}", leader_address.as_deref().unwrap_or("unknown"))]
    NotLeader { this_node: NodeId, leader_id: Option<NodeId>, leader_address: Option<String> },
    /// The outcome of the write is unknown: it may still commit.
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Overloaded(String),
    /// Too many calls already wait (`wait_ms`) on this node or key.
    #[error("{0}")]
    WaitersFull(LimitViolation),
    #[error("SHUTTING_DOWN: {0}")]
    ShuttingDown(String),
    /// Local storage failed; the node is stopping (fail-stop).
    #[error("STORAGE_FAILURE: {0}")]
    Storage(String),
    /// Forwarding to the leader failed in transport.
    #[error("FORWARD_FAILED: forwarding to the leader at {leader_address} failed: {message}")]
    ForwardFailed { leader_address: String, message: String },
    /// The leader is handing leadership over; nothing was written.
    #[error("LEADER_TRANSFER: the leader is handing leadership to another node; retry shortly")]
    TransferringLeadership,
    /// An operator request the cluster's state does not allow (FAILED_PRECONDITION), e.g. a
    /// member removal that would leave no quorum. `reason` is the stable reason string.
    #[error("{reason}: {message}")]
    Refused { reason: &'static str, message: String },
    /// What an operator request asks for does not exist (NOT_FOUND), e.g. a snapshot before the
    /// first one was built.
    #[error("{reason}: {message}")]
    Missing { reason: &'static str, message: String },
    /// An operator request that did not finish in its time bound; it may have taken effect.
    #[error("{reason}: {message}")]
    Incomplete { reason: &'static str, message: String },
}

impl ServiceError {
    pub fn from_propose(error: ProposeError, this_node: NodeId) -> ServiceError {
        match error {
            ProposeError::NotLeader { leader_id, leader_address } => {
                ServiceError::NotLeader { this_node, leader_id, leader_address }
            }
            error @ ProposeError::Timeout { .. } => ServiceError::NoQuorum(error.to_string()),
            error @ ProposeError::Overloaded => ServiceError::Overloaded(error.to_string()),
            ProposeError::Stopped(message) => ServiceError::ShuttingDown(message),
            ProposeError::TransferringLeadership => ServiceError::TransferringLeadership,
            error @ ProposeError::GroupTooLarge { .. } => ServiceError::Invalid(LimitViolation {
                reason: "BATCH_TOO_LARGE".to_string(),
                message: error.to_string().trim_start_matches("BATCH_TOO_LARGE: ").to_string(),
            }),
        }
    }
}

fn record_metadata(record: &Record, metadata: &mut HashMap<String, String>) {
    metadata.insert("state".to_string(), record.state_name().to_string());
    metadata.insert("current_token".to_string(), record.token.0.to_string());
    metadata.insert("owner".to_string(), record.owner.clone());
    metadata.insert("attempt".to_string(), record.attempt.to_string());
    if let RecordState::Claimed { lease_deadline, .. } = record.state {
        metadata.insert("lease_deadline_ms".to_string(), lease_deadline.as_ms().to_string());
    }
}

impl ServiceError {
    /// The gRPC code, stable reason and metadata this error is answered with.
    pub fn parts(&self) -> (Code, String, HashMap<String, String>) {
        let mut metadata = HashMap::new();
        let (code, reason) = code_and_reason(self, &mut metadata);
        (code, reason, metadata)
    }
}

fn code_and_reason(error: &ServiceError, metadata: &mut HashMap<String, String>) -> (Code, String) {
    match error {
        ServiceError::Invalid(violation) => (Code::InvalidArgument, violation.reason.clone()),
        ServiceError::Rejected(Rejection::Invalid(violation)) => (Code::InvalidArgument, violation.reason.clone()),
        ServiceError::Rejected(rejection @ Rejection::NoRecord) => (Code::NotFound, rejection.reason().to_string()),
        ServiceError::Rejected(rejection) => {
            if let Some(record) = rejection.record() {
                record_metadata(record, metadata);
            }
            (Code::FailedPrecondition, rejection.reason().to_string())
        }
        ServiceError::NotLeader { leader_id, leader_address, .. } => {
            if let Some(id) = leader_id {
                metadata.insert("leader_id".to_string(), id.to_string());
            }
            if let Some(address) = leader_address {
                metadata.insert("leader_address".to_string(), address.clone());
            }
            (Code::Unavailable, "NOT_LEADER".to_string())
        }
        ServiceError::NoQuorum(_) => (Code::Unavailable, "NO_QUORUM".to_string()),
        ServiceError::Overloaded(_) => (Code::ResourceExhausted, "OVERLOADED".to_string()),
        ServiceError::WaitersFull(violation) => (Code::ResourceExhausted, violation.reason.clone()),
        ServiceError::ShuttingDown(_) => (Code::Unavailable, "SHUTTING_DOWN".to_string()),
        ServiceError::Storage(_) => (Code::Internal, "STORAGE_FAILURE".to_string()),
        ServiceError::ForwardFailed { leader_address, .. } => {
            metadata.insert("leader_address".to_string(), leader_address.clone());
            (Code::Unavailable, "NOT_LEADER".to_string())
        }
        ServiceError::TransferringLeadership => (Code::Unavailable, "LEADER_TRANSFER".to_string()),
        ServiceError::Refused { reason, .. } => (Code::FailedPrecondition, reason.to_string()),
        ServiceError::Missing { reason, .. } => (Code::NotFound, reason.to_string()),
        ServiceError::Incomplete { reason, .. } => (Code::DeadlineExceeded, reason.to_string()),
    }
}

/// The canonical gRPC name of a code, as batch item errors carry it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Unavailable => "UNAVAILABLE",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Internal => "INTERNAL",
        Code::NotFound => "NOT_FOUND",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

impl From<&ServiceError> for dedup_proto::v1::ItemError {
    fn from(error: &ServiceError) -> Self {
        let (code, reason, metadata) = error.parts();
        dedup_proto::v1::ItemError { code: code_name(code).to_string(), reason, message: error.to_string(), metadata }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let message = error.to_string();
        let (code, reason, metadata) = error.parts();
        Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata))
    }
}

#[cfg(test)]
mod tests {
    use dedup_cluster::ledger::*;

    use super::*;

    fn reason_of(status: &Status) -> String {
        status.get_details_error_info().expect("ErrorInfo present").reason
    }

    #[test]
    fn limit_violation_is_invalid_argument_with_its_reason() {
        let status = Status::from(ServiceError::Invalid(LimitViolation {
            reason: "KEY_TOO_LONG".to_string(),
            message: "key is 600 bytes; the limit is 512 bytes (KEY_BYTES_MAX)".to_string(),
        }));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status), "KEY_TOO_LONG");
        assert!(status.message().contains("512"));
    }

    #[test]
    fn fenced_is_failed_precondition_with_the_current_token() {
        let record = Record {
            token: FencingToken(99),
            attempt: 2,
            owner: "worker-b".to_string(),
            fingerprint: None,
            created_at: LedgerTime(1),
            retention_ms: 1000,
            previous: None,
            state: RecordState::Claimed { lease_deadline: LedgerTime(5000), request_id: None, checkpoint: vec![] },
        };
        let status = Status::from(ServiceError::Rejected(Rejection::Fenced {
            given: FencingToken(7),
            record: Box::new(record),
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "FENCED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["current_token"], "99");
        assert_eq!(info.metadata["owner"], "worker-b");
        assert_eq!(info.metadata["lease_deadline_ms"], "5000");
    }

    #[test]
    fn not_leader_is_unavailable_with_the_leader_address() {
        let status = Status::from(ServiceError::NotLeader {
            this_node: 2,
            leader_id: Some(1),
            leader_address: Some("10.0.0.1:7101".to_string()),
        });
        assert_eq!(status.code(), Code::Unavailable);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "NOT_LEADER");
        assert_eq!(info.metadata["leader_address"], "10.0.0.1:7101");
        assert_eq!(info.metadata["leader_id"], "1");
    }
}
