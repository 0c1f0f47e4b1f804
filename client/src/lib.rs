//! Rust client of dedup-ledger, a Raft-replicated deduplication ledger.
//!
//! [`DedupClient`] talks to the `dedupd` nodes of one cluster: it keeps one lazily connected
//! channel per endpoint, caches the leader, follows `NOT_LEADER` hints at once, and retries
//! UNAVAILABLE and timeouts with full-jitter exponential backoff within a call deadline. Answers
//! are typed ([`ClaimAnswer`]: CLAIMED, IN_PROGRESS and COMPLETED are answers, not errors);
//! errors carry the server's stable reason ([`Error::reason`]).
//!
//! [`DedupClient::once`] wraps the whole protocol around an async action (see [`mod@once`]).
//!
//! ```no_run
//! use dedup_client::{ClaimAnswer, ClaimRequest, CompleteRequest, DedupClient, Outcome};
//!
//! # async fn run() -> Result<(), dedup_client::Error> {
//! let client = DedupClient::new(["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"])?;
//! let request = ClaimRequest::new("orders", "order-42", "worker-a");
//! match client.check_and_claim(&request).await? {
//!     ClaimAnswer::Claimed(claim) => {
//!         // ... perform the side effect, passing claim.token downstream ...
//!         let done = CompleteRequest::new("orders", "order-42", claim.token, Outcome::succeeded("shipped"));
//!         client.complete(&done).await?;
//!     }
//!     ClaimAnswer::InProgress(busy) => println!("{} is on it; retry in {:?}", busy.owner, busy.retry_after),
//!     ClaimAnswer::Completed(done) => println!("duplicate; stored outcome {:?}", done.outcome),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Retrying writes is safe: a claim carries a `claim_request_id` (generated per call when the
//! caller gives none) so its retry returns the same CLAIMED answer, and complete, release and
//! extend are idempotent for the same token. A DEADLINE_EXCEEDED or NO_QUORUM write has an
//! unknown outcome; the client resolves it by repeating the call.

pub mod admin;
mod backoff;
mod client;
mod endpoint;
mod error;
pub mod once;
mod types;

pub use backoff::BACKOFF_INITIAL;
pub use backoff::BACKOFF_MAX;
pub use backoff::BACKOFF_MULTIPLIER;
pub use client::new_claim_request_id;
pub use client::ClientConfig;
pub use client::DedupClient;
pub use client::ADMIN_TIMEOUT_DEFAULT;
pub use client::CALL_DEADLINE_DEFAULT;
pub use client::CONNECT_TIMEOUT;
pub use client::IMMEDIATE_REDIRECTS_MAX;
pub use client::REQUEST_TIMEOUT_DEFAULT;
/// The generated protobuf and gRPC code (`dedup.v1`).
pub use dedup_proto::v1 as proto;
/// Enums shared with the wire format (their `as_str_name()` is the proto name, e.g. `CLAIMED`).
pub use dedup_proto::v1::Consistency;
pub use dedup_proto::v1::OutcomeKind;
pub use dedup_proto::v1::PreviousEnd;
pub use dedup_proto::v1::RecordState;
pub use dedup_proto::v1::ReleaseReason;
pub use endpoint::display_endpoint;
pub use endpoint::normalize_endpoint;
pub use endpoint::parse_endpoint_list;
pub use error::code_name;
pub use error::Error;
pub use error::LeaderHint;
pub use error::RecordHint;
pub use once::ClaimContext;
pub use once::Failure;
pub use once::Once;
pub use once::OnceError;
pub use once::OnceOptions;
pub use once::ONCE_WAIT_DEFAULT;
pub use types::*;

/// The endpoints of the local three-node cluster (`scripts/local-cluster.sh`).
pub const LOCAL_CLUSTER_ENDPOINTS: [&str; 3] = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"];
