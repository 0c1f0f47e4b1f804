//! The client's one error type, and the one place a `tonic::Status` becomes one.
//!
//! The server's contract: every error is a `Status` whose `google.rpc.ErrorInfo` detail (domain
//! [`ERROR_DOMAIN`]) carries a stable `reason` and, for rejections, the numbers of the record
//! (`state`, `current_token`, `owner`, `lease_deadline_ms`). A status may lack ErrorInfo (a
//! transport failure, a proxy, an older server): it is then decoded by its code alone, and its
//! reason is the code's name (`UNAVAILABLE`, `INTERNAL`, ...).

use std::collections::HashMap;
use std::time::Duration;

use dedup_proto::ERROR_DOMAIN;
use tonic::Code;
use tonic::Status;
use tonic_types::StatusExt;

use crate::RecordState;

/// Everything a call of [`crate::DedupClient`] can fail with.
///
/// `IN_PROGRESS` and `COMPLETED` are answers ([`crate::ClaimAnswer`]), never errors. Every
/// variant has a stable [`Error::reason`]; the `Display` form is `REASON: message`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The key was first claimed with a different fingerprint (FAILED_PRECONDITION).
    #[error("FINGERPRINT_MISMATCH: {message}")]
    FingerprintMismatch { message: String, record: Option<RecordHint> },
    /// The token is older than the record's current token: someone took the key over
    /// (FAILED_PRECONDITION). `record.current_token` names the newer claim.
    #[error("FENCED: {message}")]
    Fenced { message: String, record: Option<RecordHint> },
    /// The key is not claimed by this token (FAILED_PRECONDITION).
    #[error("NOT_CLAIMED: {message}")]
    NotClaimed { message: String, record: Option<RecordHint> },
    /// ExtendLease after the lease lapsed (FAILED_PRECONDITION).
    #[error("LEASE_LAPSED: {message}")]
    LeaseLapsed { message: String, record: Option<RecordHint> },
    /// A different outcome for a key already completed (FAILED_PRECONDITION).
    #[error("OUTCOME_IMMUTABLE: {message}")]
    OutcomeImmutable { message: String, record: Option<RecordHint> },
    /// A request outside a named limit (INVALID_ARGUMENT): `KEY_TOO_LONG`, `LEASE_OUT_OF_RANGE`,
    /// ... The message names the limit and the value. Never retried.
    #[error("{reason}: {message}")]
    InvalidArgument { reason: String, message: String },
    /// The cluster could not answer (UNAVAILABLE): `NOT_LEADER`, `NO_QUORUM`, `SHUTTING_DOWN`,
    /// or `UNAVAILABLE` for a transport failure without ErrorInfo. Retried by the client; seen
    /// by a caller only from a call pinned to one endpoint.
    #[error("{reason}: {message}")]
    Unavailable { reason: String, message: String, leader: Option<LeaderHint> },
    /// The call's overall deadline passed while retrying. `last` is the last failure seen.
    #[error("TIMEOUT: no answer after {attempts} attempt(s) in {} ms{}", elapsed.as_millis(), last_error_suffix(last))]
    Timeout { elapsed: Duration, attempts: u32, last: Option<Box<Error>> },
    /// An endpoint given to the client is not `HOST:PORT` or `http://HOST:PORT`.
    #[error("INVALID_ENDPOINT: {endpoint:?}: {message}")]
    InvalidEndpoint { endpoint: String, message: String },
    /// Any other status (RESOURCE_EXHAUSTED, INTERNAL, an unknown FAILED_PRECONDITION reason,
    /// ...). `reason` is the ErrorInfo reason when there was one.
    #[error("{}: {message}", reason.as_deref().unwrap_or(code_name(*code)))]
    Other { code: Code, reason: Option<String>, message: String },
}

fn last_error_suffix(last: &Option<Box<Error>>) -> String {
    match last {
        Some(error) => format!("; last error: {error}"),
        None => String::new(),
    }
}

/// The record a FAILED_PRECONDITION rejection was about, from the ErrorInfo metadata. Each
/// field is `None` when the server did not send it (or sent something unparsable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHint {
    pub state: Option<RecordState>,
    pub current_token: Option<u64>,
    pub owner: Option<String>,
    /// Present when the record is CLAIMED.
    pub lease_deadline_ms: Option<u64>,
    pub attempt: Option<u32>,
}

/// Where the leader is, from a `NOT_LEADER` answer (metadata `leader_id`, `leader_address`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderHint {
    pub id: Option<u64>,
    /// `HOST:PORT` of the leader's gRPC listener.
    pub address: Option<String>,
}

/// How a [`crate::DedupClient`] call should treat an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Give up at once: the request itself is wrong or the ledger refused it.
    Fatal,
    /// Try again (after backoff, on the next endpoint).
    Retry,
}

impl Error {
    /// The stable reason: the ErrorInfo reason (`FENCED`, `KEY_TOO_LONG`, `NOT_LEADER`, ...), the
    /// gRPC code's name when the status had none (`UNAVAILABLE`, `INTERNAL`, ...), or one of the
    /// client's own: `TIMEOUT`, `INVALID_ENDPOINT`.
    pub fn reason(&self) -> &str {
        match self {
            Error::FingerprintMismatch { .. } => "FINGERPRINT_MISMATCH",
            Error::Fenced { .. } => "FENCED",
            Error::NotClaimed { .. } => "NOT_CLAIMED",
            Error::LeaseLapsed { .. } => "LEASE_LAPSED",
            Error::OutcomeImmutable { .. } => "OUTCOME_IMMUTABLE",
            Error::InvalidArgument { reason, .. } | Error::Unavailable { reason, .. } => reason,
            Error::Timeout { .. } => "TIMEOUT",
            Error::InvalidEndpoint { .. } => "INVALID_ENDPOINT",
            Error::Other { code, reason, .. } => reason.as_deref().unwrap_or(code_name(*code)),
        }
    }

    /// The gRPC code this error came with (for client-side errors: DEADLINE_EXCEEDED for
    /// `Timeout`, INVALID_ARGUMENT for `InvalidEndpoint`).
    pub fn code(&self) -> Code {
        match self {
            Error::FingerprintMismatch { .. }
            | Error::Fenced { .. }
            | Error::NotClaimed { .. }
            | Error::LeaseLapsed { .. }
            | Error::OutcomeImmutable { .. } => Code::FailedPrecondition,
            Error::InvalidArgument { .. } | Error::InvalidEndpoint { .. } => Code::InvalidArgument,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Other { code, .. } => *code,
        }
    }

    /// The record a rejection was about, when the server named it.
    pub fn record(&self) -> Option<&RecordHint> {
        match self {
            Error::FingerprintMismatch { record, .. }
            | Error::Fenced { record, .. }
            | Error::NotClaimed { record, .. }
            | Error::LeaseLapsed { record, .. }
            | Error::OutcomeImmutable { record, .. } => record.as_ref(),
            _ => None,
        }
    }

    /// True for the ledger's FAILED_PRECONDITION refusals (fenced, mismatch, ...): the request
    /// was well formed and delivered, and the ledger said no.
    pub fn is_rejection(&self) -> bool {
        self.code() == Code::FailedPrecondition
    }

    /// True when the cluster could not answer in time (`Unavailable`, `Timeout`, or a per-call
    /// deadline): trying again later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.code(), Code::Unavailable | Code::DeadlineExceeded)
    }

    /// Decodes a status following the server's error contract (module docs).
    /// The error of one item of a batch call: what the single call would have failed with.
    pub fn from_item(item: &dedup_proto::v1::ItemError) -> Error {
        let code = match item.code.as_str() {
            "INVALID_ARGUMENT" => Code::InvalidArgument,
            "FAILED_PRECONDITION" => Code::FailedPrecondition,
            "UNAVAILABLE" => Code::Unavailable,
            "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
            "INTERNAL" => Code::Internal,
            "NOT_FOUND" => Code::NotFound,
            "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
            _ => Code::Unknown,
        };
        let details = tonic_types::ErrorDetails::with_error_info(
            item.reason.clone(),
            ERROR_DOMAIN,
            item.metadata.clone().into_iter().collect::<HashMap<_, _>>(),
        );
        Error::from_status(&<Status as tonic_types::StatusExt>::with_error_details(code, item.message.clone(), details))
    }

    pub fn from_status(status: &Status) -> Error {
        let info = status.get_details_error_info().filter(|info| info.domain == ERROR_DOMAIN);
        let (reason, metadata) = match info {
            Some(info) => (Some(info.reason), info.metadata),
            None => (None, HashMap::new()),
        };
        let code = effective_code(status, reason.is_some());
        let message = strip_reason(&with_local_causes(status), reason.as_deref().unwrap_or(code_name(code)));
        let record = || RecordHint::from_metadata(&metadata);
        match (code, reason) {
            (Code::FailedPrecondition, Some(reason)) => match reason.as_str() {
                "FINGERPRINT_MISMATCH" => Error::FingerprintMismatch { message, record: record() },
                "FENCED" => Error::Fenced { message, record: record() },
                "NOT_CLAIMED" => Error::NotClaimed { message, record: record() },
                "LEASE_LAPSED" => Error::LeaseLapsed { message, record: record() },
                "OUTCOME_IMMUTABLE" => Error::OutcomeImmutable { message, record: record() },
                _ => Error::Other { code, reason: Some(reason), message },
            },
            (Code::InvalidArgument, reason) => {
                Error::InvalidArgument { reason: reason.unwrap_or_else(|| code_name(code).to_string()), message }
            }
            (Code::Unavailable, reason) => Error::Unavailable {
                reason: reason.unwrap_or_else(|| code_name(code).to_string()),
                message,
                leader: LeaderHint::from_metadata(&metadata),
            },
            (code, reason) => Error::Other { code, reason, message },
        }
    }

    /// Whether the retry loop may try again. Only UNAVAILABLE and deadline/transport failures
    /// retry: every write of this API is safe to repeat (claims carry a `claim_request_id`,
    /// complete/release/extend are idempotent for the same token), so an unknown outcome after a
    /// timeout is resolved by repeating the call.
    pub(crate) fn disposition(&self) -> Disposition {
        match self.code() {
            Code::Unavailable | Code::DeadlineExceeded => Disposition::Retry,
            _ => Disposition::Fatal,
        }
    }

    /// The leader address of a `NOT_LEADER` answer, if it named one.
    pub(crate) fn leader_address(&self) -> Option<&str> {
        match self {
            Error::Unavailable { reason, leader: Some(LeaderHint { address: Some(address), .. }), .. }
                if reason == "NOT_LEADER" && !address.is_empty() =>
            {
                Some(address)
            }
            _ => None,
        }
    }
}

/// The code to decode a status by. Statuses tonic makes locally from a transport error carry a
/// `source` (statuses received from a server never do): a per-attempt timeout (tonic reports it
/// as CANCELLED "Timeout expired") becomes DEADLINE_EXCEEDED, and any other local failure
/// without ErrorInfo (UNKNOWN "transport error", a reset stream) becomes UNAVAILABLE. A server
/// that enforced the attempt's `grpc-timeout` answers CANCELLED "Timeout expired" without a
/// source: DEADLINE_EXCEEDED as well.
fn effective_code(status: &Status, has_info: bool) -> Code {
    let code = status.code();
    if has_info {
        return code;
    }
    let Some(source) = std::error::Error::source(status) else {
        // The server enforces the `grpc-timeout` this client sends and answers a call that
        // outlived it CANCELLED "Timeout expired": the attempt timed out, its outcome unknown.
        if code == Code::Cancelled && status.message().starts_with("Timeout expired") {
            return Code::DeadlineExceeded;
        }
        return code;
    };
    if source_chain_has::<tonic::TimeoutExpired>(source) {
        return Code::DeadlineExceeded;
    }
    match code {
        Code::Unknown | Code::Cancelled | Code::Internal => Code::Unavailable,
        code => code,
    }
}

fn source_chain_has<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<T>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// The status message, followed by the causes of a locally made status ("tcp connect error:
/// Connection refused (os error 111)"), each once.
fn with_local_causes(status: &Status) -> String {
    let mut message = status.message().to_string();
    let mut next = std::error::Error::source(status);
    while let Some(cause) = next {
        let text = cause.to_string();
        // tonic wraps every local failure in a "transport error" that adds nothing.
        if !text.is_empty() && text != "transport error" && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        next = cause.source();
    }
    message
}

/// The server writes messages as `REASON: details`; the reason is kept in its own field, so the
/// message keeps only the details.
fn strip_reason(message: &str, reason: &str) -> String {
    message.strip_prefix(reason).and_then(|rest| rest.strip_prefix(": ")).unwrap_or(message).to_string()
}

impl RecordHint {
    fn from_metadata(metadata: &HashMap<String, String>) -> Option<RecordHint> {
        let hint = RecordHint {
            state: metadata.get("state").and_then(|s| RecordState::from_str_name(s)),
            current_token: metadata.get("current_token").and_then(|s| s.parse().ok()),
            owner: metadata.get("owner").cloned(),
            lease_deadline_ms: metadata.get("lease_deadline_ms").and_then(|s| s.parse().ok()),
            attempt: metadata.get("attempt").and_then(|s| s.parse().ok()),
        };
        (hint != RecordHint::default()).then_some(hint)
    }
}

impl LeaderHint {
    fn from_metadata(metadata: &HashMap<String, String>) -> Option<LeaderHint> {
        let hint = LeaderHint {
            id: metadata.get("leader_id").and_then(|s| s.parse().ok()),
            address: metadata.get("leader_address").filter(|s| !s.is_empty()).cloned(),
        };
        (hint != LeaderHint::default()).then_some(hint)
    }
}

/// The canonical upper-case name of a gRPC code, as in the gRPC spec (`UNAVAILABLE`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::ErrorDetails;

    use super::*;

    fn status(code: Code, message: &str, reason: &str, metadata: &[(&str, &str)]) -> Status {
        let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata))
    }

    #[test]
    fn fenced_carries_the_record() {
        let error = Error::from_status(&status(
            Code::FailedPrecondition,
            "FENCED: token 7 is older than the current token 99",
            "FENCED",
            &[("state", "CLAIMED"), ("current_token", "99"), ("owner", "worker-b"), ("lease_deadline_ms", "5000")],
        ));
        let Error::Fenced { message, record: Some(record) } = &error else { panic!("{error:?}") };
        assert_eq!(message, "token 7 is older than the current token 99");
        assert_eq!(record.state, Some(RecordState::Claimed));
        assert_eq!(record.current_token, Some(99));
        assert_eq!(record.owner.as_deref(), Some("worker-b"));
        assert_eq!(record.lease_deadline_ms, Some(5000));
        assert_eq!(error.reason(), "FENCED");
        assert!(error.is_rejection());
        assert_eq!(error.disposition(), Disposition::Fatal);
        assert_eq!(error.to_string(), "FENCED: token 7 is older than the current token 99");
    }

    #[test]
    fn every_failed_precondition_reason_has_its_variant() {
        for (reason, check) in [
            ("FINGERPRINT_MISMATCH", (|e| matches!(e, Error::FingerprintMismatch { .. })) as fn(&Error) -> bool),
            ("FENCED", |e| matches!(e, Error::Fenced { .. })),
            ("NOT_CLAIMED", |e| matches!(e, Error::NotClaimed { .. })),
            ("LEASE_LAPSED", |e| matches!(e, Error::LeaseLapsed { .. })),
            ("OUTCOME_IMMUTABLE", |e| matches!(e, Error::OutcomeImmutable { .. })),
        ] {
            let error = Error::from_status(&status(Code::FailedPrecondition, "no", reason, &[]));
            assert!(check(&error), "{reason} decoded as {error:?}");
            assert_eq!(error.reason(), reason);
            assert_eq!(error.record(), None, "no metadata, no record");
        }
    }

    #[test]
    fn an_unknown_failed_precondition_reason_is_other_and_keeps_it() {
        let error = Error::from_status(&status(Code::FailedPrecondition, "later", "SOMETHING_NEW", &[]));
        assert!(
            matches!(&error, Error::Other { code: Code::FailedPrecondition, reason: Some(r), .. } if r == "SOMETHING_NEW")
        );
        assert_eq!(error.reason(), "SOMETHING_NEW");
        assert_eq!(error.disposition(), Disposition::Fatal);
    }

    #[test]
    fn invalid_argument_keeps_reason_and_message_and_is_never_retried() {
        let error = Error::from_status(&status(
            Code::InvalidArgument,
            "KEY_TOO_LONG: key is 600 bytes; the limit is 512 bytes (KEY_BYTES_MAX)",
            "KEY_TOO_LONG",
            &[],
        ));
        let Error::InvalidArgument { reason, message } = &error else { panic!("{error:?}") };
        assert_eq!(reason, "KEY_TOO_LONG");
        assert_eq!(message, "key is 600 bytes; the limit is 512 bytes (KEY_BYTES_MAX)");
        assert_eq!(error.disposition(), Disposition::Fatal);
        assert_eq!(error.to_string(), "KEY_TOO_LONG: key is 600 bytes; the limit is 512 bytes (KEY_BYTES_MAX)");
    }

    #[test]
    fn not_leader_carries_the_leader_hint_and_is_retried() {
        let error = Error::from_status(&status(
            Code::Unavailable,
            "NOT_LEADER: node 2 is not the leader; leader is 10.0.0.1:7101",
            "NOT_LEADER",
            &[("leader_id", "1"), ("leader_address", "10.0.0.1:7101")],
        ));
        let Error::Unavailable { reason, leader: Some(leader), .. } = &error else { panic!("{error:?}") };
        assert_eq!(reason, "NOT_LEADER");
        assert_eq!(leader, &LeaderHint { id: Some(1), address: Some("10.0.0.1:7101".to_string()) });
        assert_eq!(error.leader_address(), Some("10.0.0.1:7101"));
        assert_eq!(error.disposition(), Disposition::Retry);
    }

    #[test]
    fn not_leader_without_an_address_has_no_hint_to_follow() {
        let error = Error::from_status(&status(Code::Unavailable, "no leader", "NOT_LEADER", &[]));
        assert!(matches!(&error, Error::Unavailable { leader: None, .. }));
        assert_eq!(error.leader_address(), None);
        let no_quorum = Error::from_status(&status(Code::Unavailable, "x", "NO_QUORUM", &[("leader_address", "a:1")]));
        assert_eq!(no_quorum.leader_address(), None, "only NOT_LEADER is a redirect");
        assert_eq!(no_quorum.disposition(), Disposition::Retry);
    }

    #[test]
    fn a_status_without_error_info_is_decoded_by_its_code() {
        let refused = Error::from_status(&Status::unavailable("tcp connect error: Connection refused"));
        assert!(matches!(&refused, Error::Unavailable { leader: None, .. }));
        assert_eq!(refused.reason(), "UNAVAILABLE");
        assert_eq!(refused.disposition(), Disposition::Retry);

        let internal = Error::from_status(&Status::internal("boom"));
        assert!(matches!(&internal, Error::Other { code: Code::Internal, reason: None, message } if message == "boom"));
        assert_eq!(internal.reason(), "INTERNAL");
        assert_eq!(internal.to_string(), "INTERNAL: boom");
        assert_eq!(internal.disposition(), Disposition::Fatal);

        let deadline = Error::from_status(&Status::deadline_exceeded("slow"));
        assert_eq!(deadline.reason(), "DEADLINE_EXCEEDED");
        assert_eq!(deadline.disposition(), Disposition::Retry);

        let bad = Error::from_status(&Status::invalid_argument("bad"));
        assert!(matches!(&bad, Error::InvalidArgument { reason, .. } if reason == "INVALID_ARGUMENT"));
    }

    #[test]
    fn error_info_of_another_domain_is_not_trusted_for_a_reason() {
        let status = Status::with_error_details(
            Code::FailedPrecondition,
            "x",
            ErrorDetails::with_error_info("FENCED", "other.example", HashMap::new()),
        );
        let error = Error::from_status(&status);
        assert!(matches!(error, Error::Other { code: Code::FailedPrecondition, reason: None, .. }));
    }

    #[test]
    fn resource_exhausted_keeps_its_reason_and_is_not_retried() {
        let error = Error::from_status(&status(Code::ResourceExhausted, "OVERLOADED: queue full", "OVERLOADED", &[]));
        assert_eq!(error.reason(), "OVERLOADED");
        assert_eq!(error.to_string(), "OVERLOADED: queue full");
        assert_eq!(error.disposition(), Disposition::Fatal);
    }

    #[test]
    fn a_local_timeout_is_a_retryable_deadline() {
        // What tonic's per-request timeout produces: CANCELLED "Timeout expired" with a source.
        let status = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        let error = Error::from_status(&status);
        assert_eq!(error.code(), Code::DeadlineExceeded);
        assert_eq!(error.disposition(), Disposition::Retry);
    }

    #[test]
    fn a_local_transport_failure_is_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let mut status = Status::from_error(Box::new(io));
        assert_eq!(status.code(), Code::Unknown);
        let error = Error::from_status(&status);
        assert_eq!(error.disposition(), Disposition::Retry);
        assert_eq!(error.to_string(), "UNAVAILABLE: reset by peer", "the cause is named once");
        // The same code received from a server (no source) is not retried.
        status = Status::unknown("server said unknown");
        assert_eq!(Error::from_status(&status).disposition(), Disposition::Fatal);
    }

    #[test]
    fn timeout_names_the_last_error() {
        let last = Error::Unavailable { reason: "NO_QUORUM".into(), message: "no quorum".into(), leader: None };
        let error = Error::Timeout { elapsed: Duration::from_millis(1500), attempts: 4, last: Some(Box::new(last)) };
        assert_eq!(error.reason(), "TIMEOUT");
        assert_eq!(
            error.to_string(),
            "TIMEOUT: no answer after 4 attempt(s) in 1500 ms; last error: NO_QUORUM: no quorum"
        );
        assert!(error.is_unavailable());
    }

    #[test]
    fn unparsable_metadata_numbers_are_dropped_not_fatal() {
        let error = Error::from_status(&status(
            Code::FailedPrecondition,
            "x",
            "NOT_CLAIMED",
            &[("state", "AVAILABLE"), ("current_token", "not-a-number")],
        ));
        let record = error.record().expect("a record");
        assert_eq!(record.state, Some(RecordState::Available));
        assert_eq!(record.current_token, None);
    }
}
