//! Calls to the admin API (`dedup.v1.Admin`), for `dedupctl` and operator tooling.
//!
//! Unlike the client API these are not retried after a failure that may have taken effect (a
//! membership change that timed out, say): an operator decides what to do next. A call meant for
//! the leader follows NOT_LEADER hints, and moves to the next endpoint when one is unreachable.

use std::future::Future;

use dedup_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;

use crate::endpoint::normalize_endpoint;
use crate::DedupClient;
use crate::Error;

/// NOT_LEADER hints followed by one [`DedupClient::admin_at_leader`] call at most.
pub const ADMIN_REDIRECTS_MAX: usize = 3;

impl DedupClient {
    /// One admin call at `endpoint`, one attempt, bounded by [`crate::ClientConfig::admin_timeout`].
    pub async fn admin_at<Req, Resp, F, Fut>(&self, endpoint: &str, message: Req, rpc: F) -> Result<Resp, Error>
    where
        F: Fn(AdminClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let timeout = self.config().admin_timeout;
        self.call_pinned_within(endpoint, timeout, message, |channel, request| rpc(AdminClient::new(channel), request))
            .await
    }

    /// An admin call that must reach the leader: tries the endpoints in order, follows a
    /// NOT_LEADER answer's leader address (at most [`ADMIN_REDIRECTS_MAX`] times), and skips an
    /// endpoint that cannot be reached. Any other answer, success or error, is returned as is.
    pub async fn admin_at_leader<Req, Resp, F, Fut>(&self, message: Req, rpc: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(AdminClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut queue: Vec<String> = self.endpoints();
        let mut tried: Vec<String> = Vec::new();
        let mut redirects = 0;
        let mut last: Option<Error> = None;
        while let Some(endpoint) = queue.first().cloned() {
            queue.remove(0);
            if tried.contains(&endpoint) {
                continue;
            }
            tried.push(endpoint.clone());
            match self.admin_at(&endpoint, message.clone(), &rpc).await {
                Ok(response) => return Ok(response),
                Err(error) => {
                    if let Some(leader) = error.leader_address().and_then(|a| normalize_endpoint(a).ok()) {
                        if redirects < ADMIN_REDIRECTS_MAX && !tried.contains(&leader) {
                            redirects += 1;
                            queue.insert(0, leader);
                            last = Some(error);
                            continue;
                        }
                    }
                    // A follower without a leader hint, or a node that could not be reached (no
                    // ErrorInfo reason: the reason is the code's name): ask the next endpoint.
                    // Not after a timeout: the call may have taken effect there.
                    let no_answer =
                        error.code() == Code::Unavailable && error.reason() == crate::error::code_name(error.code());
                    let unreachable = error.reason() == "NOT_LEADER" || no_answer;
                    if !unreachable {
                        return Err(error);
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Other {
            code: Code::Unavailable,
            reason: None,
            message: "no endpoint to ask".to_string(),
        }))
    }
}
