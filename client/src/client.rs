//! `DedupClient`: endpoints, lazily connected channels, the leader cache, and the retry loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;

use dedup_proto::v1 as pb;
use dedup_proto::v1::admin_client::AdminClient;
use dedup_proto::v1::ledger_client::LedgerClient;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::Code;
use tonic::Status;

use crate::backoff::Backoff;
use crate::backoff::BACKOFF_INITIAL;
use crate::backoff::BACKOFF_MAX;
use crate::endpoint::display_endpoint;
use crate::endpoint::normalize_all;
use crate::endpoint::normalize_endpoint;
use crate::error::Disposition;
use crate::types::*;
use crate::Error;

/// How long opening a TCP connection to one endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default bound of one attempt (one RPC to one endpoint).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default bound of one call, all attempts, redirects and backoff included.
pub const CALL_DEADLINE_DEFAULT: Duration = Duration::from_secs(15);
/// Leader hints followed in a row without backing off; a longer chain of redirects (a stale or
/// flapping leader) falls back to backoff so that two nodes cannot bounce a call in a hot loop.
pub const IMMEDIATE_REDIRECTS_MAX: u32 = 3;
/// HTTP/2 keepalive ping interval on idle connections: finds a dead peer before a call does.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Largest message the client sends or accepts (the server's limit is 256 KiB).
const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Settings of a [`DedupClient`]. `ClientConfig::new(endpoints)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` or `http://HOST:PORT`, at least one.
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    /// Bound of one attempt.
    pub request_timeout: Duration,
    /// Bound of one call across all its attempts; past it the call fails with
    /// [`Error::Timeout`].
    pub call_deadline: Duration,
    /// First backoff ceiling and its cap (full jitter: each wait is uniform in 0..=ceiling).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Bound of one admin call (`crate::admin`): some wait on purpose (a learner catching up,
    /// a snapshot being built, a leadership transfer).
    pub admin_timeout: Duration,
}

/// Default bound of one admin call: above the server's own bounds of its slowest calls
/// (MemberAdd waits up to 60 s for a learner).
pub const ADMIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(90);

impl ClientConfig {
    pub fn new<I, S>(endpoints: I) -> ClientConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            call_deadline: CALL_DEADLINE_DEFAULT,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
            admin_timeout: ADMIN_TIMEOUT_DEFAULT,
        }
    }

    pub fn with_admin_timeout(mut self, timeout: Duration) -> Self {
        self.admin_timeout = timeout;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn with_call_deadline(mut self, deadline: Duration) -> Self {
        self.call_deadline = deadline;
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
}

/// A client of a dedup-ledger cluster. Cheap to clone (one shared pool of channels).
///
/// Every call goes to the cached leader (or, before one is known, to the endpoint that last
/// answered). A `NOT_LEADER` answer naming the leader is followed at once; any other UNAVAILABLE,
/// a per-attempt timeout or a transport failure moves to the next endpoint after a full-jitter
/// exponential backoff, until [`ClientConfig::call_deadline`]. INVALID_ARGUMENT and
/// FAILED_PRECONDITION are returned at once. Repeating a write is safe: claims carry a
/// `claim_request_id`, and complete, release and extend are idempotent for the same token.
#[derive(Clone)]
pub struct DedupClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    pool: Mutex<Pool>,
}

/// The endpoints calls rotate through: the configured ones plus leader addresses learned from
/// hints. Endpoints named only by a pinned call are kept apart (`pinned`) and never rotated to.
struct Pool {
    slots: Vec<Arc<Slot>>,
    pinned: Vec<Arc<Slot>>,
    /// Where the next call starts: the leader when a hint named it, else the last to answer.
    preferred: usize,
}

struct Slot {
    /// Normalised `http://host:port`.
    uri: String,
    endpoint: Endpoint,
    /// Created on first use: creating a channel needs a running tokio runtime.
    channel: OnceLock<Channel>,
}

impl Slot {
    fn new(uri: String, config: &ClientConfig) -> Result<Slot, Error> {
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| Error::InvalidEndpoint { endpoint: uri.clone(), message: e.to_string() })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(config.connect_timeout.max(Duration::from_secs(1)));
        Ok(Slot { uri, endpoint, channel: OnceLock::new() })
    }

    fn channel(&self) -> Channel {
        self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone()
    }
}

impl DedupClient {
    /// A client with default settings. No connection is made until the first call.
    pub fn new<I, S>(endpoints: I) -> Result<DedupClient, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        DedupClient::with_config(ClientConfig::new(endpoints))
    }

    pub fn with_config(config: ClientConfig) -> Result<DedupClient, Error> {
        let uris = normalize_all(&config.endpoints)?;
        if uris.is_empty() {
            return Err(Error::InvalidEndpoint { endpoint: String::new(), message: "no endpoints given".to_string() });
        }
        let slots = uris.into_iter().map(|uri| Slot::new(uri, &config).map(Arc::new)).collect::<Result<_, _>>()?;
        let pool = Pool { slots, pinned: Vec::new(), preferred: 0 };
        Ok(DedupClient { inner: Arc::new(Inner { config, pool: Mutex::new(pool) }) })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The endpoints calls rotate through (normalised `http://host:port`), in order: the
    /// configured ones, then leader addresses learned from hints.
    pub fn endpoints(&self) -> Vec<String> {
        self.pool().slots.iter().map(|slot| slot.uri.clone()).collect()
    }

    /// The endpoint the next call starts at: the leader if a hint named it, else the last
    /// endpoint that answered.
    pub fn preferred_endpoint(&self) -> String {
        let pool = self.pool();
        pool.slots[pool.preferred].uri.clone()
    }

    // --------------------------------------------------------------------------------------------
    // The API

    /// Claims a key, or learns who holds it, or gets its stored outcome.
    ///
    /// When `request.claim_request_id` is `None` a fresh id is generated for this call and
    /// reused by its retries, so a retry after a lost answer is not a second claim.
    pub async fn check_and_claim(&self, request: &ClaimRequest) -> Result<ClaimAnswer, Error> {
        let id = request.claim_request_id.clone().unwrap_or_else(new_claim_request_id);
        let message = request.to_proto(id);
        // A parked claim may take its whole wait: every attempt and the deadline allow for it.
        let wait = request.wait.unwrap_or(Duration::ZERO);
        let response = self
            .call_with_wait(self.inner.config.call_deadline + wait, wait, message, |channel, request| async move {
                ledger(channel).check_and_claim(request).await
            })
            .await?;
        ClaimAnswer::from_proto(response).ok_or_else(|| Error::Other {
            code: Code::Internal,
            reason: None,
            message: "the server answered CheckAndClaim with no result".to_string(),
        })
    }

    /// Claims many keys in one Raft entry (at most 256, and what fits one 96 KiB entry): one
    /// answer per request, in order, each what [`DedupClient::check_and_claim`] would answer.
    /// No atomicity across items: a bad item gets its error and the others still apply. The
    /// call as a whole is retried like a single claim (each item keeps its claim_request_id).
    pub async fn check_and_claim_batch(
        &self,
        requests: &[ClaimRequest],
    ) -> Result<Vec<Result<ClaimAnswer, Error>>, Error> {
        use pb::check_and_claim_batch_item::Result as Item;
        let items = requests
            .iter()
            .map(|request| request.to_proto(request.claim_request_id.clone().unwrap_or_else(new_claim_request_id)))
            .collect();
        let message = pb::CheckAndClaimBatchRequest { items };
        let response = self
            .call(self.inner.config.call_deadline, message, |channel, request| async move {
                ledger(channel).check_and_claim_batch(request).await
            })
            .await?;
        Ok(response
            .items
            .into_iter()
            .map(|item| match item.result {
                Some(Item::Answer(answer)) => ClaimAnswer::from_proto(answer).ok_or_else(|| missing("claim")),
                Some(Item::Error(error)) => Err(Error::from_item(&error)),
                None => Err(missing("claim")),
            })
            .collect())
    }

    /// Completes many claims in one Raft entry: one answer per request, in order.
    pub async fn complete_batch(&self, requests: &[CompleteRequest]) -> Result<Vec<Result<CompleteAck, Error>>, Error> {
        use pb::complete_batch_item::Result as Item;
        let message = pb::CompleteBatchRequest { items: requests.iter().map(CompleteRequest::to_proto).collect() };
        let response = self
            .call(self.inner.config.call_deadline, message, |channel, request| async move {
                ledger(channel).complete_batch(request).await
            })
            .await?;
        Ok(response
            .items
            .into_iter()
            .map(|item| match item.result {
                Some(Item::Answer(answer)) => Ok(CompleteAck::from(answer)),
                Some(Item::Error(error)) => Err(Error::from_item(&error)),
                None => Err(missing("complete")),
            })
            .collect())
    }

    /// Stores the outcome under the claim's token. Retried safely: a repeat is `replayed`.
    pub async fn complete(&self, request: &CompleteRequest) -> Result<CompleteAck, Error> {
        let message = request.to_proto();
        self.call(self.inner.config.call_deadline, message, |channel, request| async move {
            ledger(channel).complete(request).await
        })
        .await
        .map(CompleteAck::from)
    }

    /// Gives the claim up so that a retry can claim the key at once.
    pub async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseAck, Error> {
        let message = request.to_proto();
        self.call(self.inner.config.call_deadline, message, |channel, request| async move {
            ledger(channel).release(request).await
        })
        .await
        .map(ReleaseAck::from)
    }

    /// Pushes the lease deadline of a live claim forward.
    pub async fn extend_lease(&self, request: &ExtendRequest) -> Result<ExtendAck, Error> {
        self.extend_lease_within(request, self.inner.config.call_deadline).await
    }

    pub(crate) async fn extend_lease_within(
        &self,
        request: &ExtendRequest,
        deadline: Duration,
    ) -> Result<ExtendAck, Error> {
        let message = request.to_proto();
        self.call(deadline, message, |channel, request| async move { ledger(channel).extend_lease(request).await })
            .await
            .map(ExtendAck::from)
    }

    /// Reads one record. With `request.endpoint` set, asks that node only, once.
    pub async fn get(&self, request: &GetRequest) -> Result<GetAnswer, Error> {
        let message = request.to_proto();
        let rpc = |channel, request| async move { ledger(channel).get(request).await };
        let response = match &request.endpoint {
            None => self.call(self.inner.config.call_deadline, message, rpc).await?,
            Some(endpoint) => self.call_pinned(endpoint, message, rpc).await?,
        };
        Ok(GetAnswer::from(response))
    }

    /// Asks one node for its view of Raft: one attempt, bounded by the request timeout.
    pub async fn node_status(&self, endpoint: &str) -> Result<NodeStatus, Error> {
        self.call_pinned(endpoint, pb::NodeStatusRequest {}, |channel, request| async move {
            AdminClient::new(channel).node_status(request).await
        })
        .await
    }

    /// [`DedupClient::node_status`] of every endpoint, concurrently, in endpoint order.
    pub async fn cluster_status(&self) -> Vec<(String, Result<NodeStatus, Error>)> {
        self.status_of(&self.endpoints()).await
    }

    /// [`DedupClient::node_status`] of each of `endpoints` (not necessarily this client's),
    /// concurrently, in the order given.
    pub async fn status_of(&self, endpoints: &[String]) -> Vec<(String, Result<NodeStatus, Error>)> {
        let endpoints = endpoints.to_vec();
        let mut tasks = tokio::task::JoinSet::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let client = self.clone();
            let endpoint = endpoint.clone();
            tasks.spawn(async move { (index, client.node_status(&endpoint).await) });
        }
        let mut results: Vec<Option<Result<NodeStatus, Error>>> = endpoints.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, result)) = joined {
                results[index] = Some(result);
            }
        }
        endpoints
            .into_iter()
            .zip(results)
            .map(|(endpoint, result)| {
                let result = result.unwrap_or_else(|| {
                    Err(Error::Other { code: Code::Internal, reason: None, message: "status task failed".to_string() })
                });
                (endpoint, result)
            })
            .collect()
    }

    // --------------------------------------------------------------------------------------------
    // Plumbing

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // The pool is only touched by short, non-panicking sections; recover from poisoning.
        self.inner.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slot at `index` of the rotation.
    fn slot(&self, index: usize) -> Arc<Slot> {
        let pool = self.pool();
        pool.slots[index % pool.slots.len()].clone()
    }

    fn rotation_len(&self) -> usize {
        self.pool().slots.len()
    }

    /// The rotation index of `address` (a leader hint), adding it when it is new.
    fn index_of_hint(&self, address: &str) -> Option<usize> {
        let uri = normalize_endpoint(address).ok()?;
        let mut pool = self.pool();
        if let Some(index) = pool.slots.iter().position(|slot| slot.uri == uri) {
            return Some(index);
        }
        let slot = Arc::new(Slot::new(uri, &self.inner.config).ok()?);
        pool.slots.push(slot);
        Some(pool.slots.len() - 1)
    }

    fn set_preferred(&self, index: usize) {
        let mut pool = self.pool();
        pool.preferred = index % pool.slots.len();
    }

    /// A pinned endpoint's slot: the rotation's own when it is one of them, else a separate one.
    fn pinned_slot(&self, endpoint: &str) -> Result<Arc<Slot>, Error> {
        let uri = normalize_endpoint(endpoint)?;
        let mut pool = self.pool();
        if let Some(slot) = pool.slots.iter().chain(pool.pinned.iter()).find(|slot| slot.uri == uri) {
            return Ok(slot.clone());
        }
        let slot = Arc::new(Slot::new(uri, &self.inner.config)?);
        pool.pinned.push(slot.clone());
        Ok(slot)
    }

    /// One attempt at `slot`, bounded by `timeout`.
    async fn attempt<Req, Resp, F, Fut>(slot: &Slot, timeout: Duration, message: Req, rpc: &F) -> Result<Resp, Error>
    where
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, rpc(slot.channel(), request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::from_status(&status)),
            Err(_) => Err(Error::Other {
                code: Code::DeadlineExceeded,
                reason: None,
                message: format!("no answer from {} within {} ms", display_endpoint(&slot.uri), timeout.as_millis()),
            }),
        }
    }

    pub(crate) async fn call_pinned<Req, Resp, F, Fut>(
        &self,
        endpoint: &str,
        message: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let timeout = self.inner.config.request_timeout.min(self.inner.config.call_deadline);
        self.call_pinned_within(endpoint, timeout, message, rpc).await
    }

    /// One attempt at `endpoint`, bounded by `timeout`.
    pub(crate) async fn call_pinned_within<Req, Resp, F, Fut>(
        &self,
        endpoint: &str,
        timeout: Duration,
        message: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let slot = self.pinned_slot(endpoint)?;
        Self::attempt(&slot, timeout, message, &rpc).await
    }

    /// The retry loop (gRPC A6 shape, owned here because tonic has none).
    async fn call<Req, Resp, F, Fut>(&self, deadline: Duration, message: Req, rpc: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call_with_wait(deadline, Duration::ZERO, message, rpc).await
    }

    /// [`DedupClient::call`] for a request the server may hold for up to `wait` (a parked
    /// claim): each attempt's timeout is the request timeout plus `wait`.
    async fn call_with_wait<Req, Resp, F, Fut>(
        &self,
        deadline: Duration,
        wait: Duration,
        message: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let config = &self.inner.config;
        let started = Instant::now();
        let give_up_at = started + deadline;
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut index = self.pool().preferred;
        let mut attempts: u32 = 0;
        let mut redirects_in_a_row: u32 = 0;
        let mut last: Option<Error> = None;
        loop {
            let remaining = give_up_at.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout { elapsed: started.elapsed(), attempts, last: last.map(Box::new) });
            }
            let slot = self.slot(index);
            attempts += 1;
            let timeout = (config.request_timeout + wait).min(remaining);
            let error = match Self::attempt(&slot, timeout, message.clone(), &rpc).await {
                Ok(response) => {
                    self.set_preferred(index);
                    return Ok(response);
                }
                Err(error) if error.disposition() == Disposition::Fatal => return Err(error),
                Err(error) => error,
            };
            tracing::debug!(endpoint = %slot.uri, attempts, error = %error, "retrying");

            // A leader hint is followed at once (a few times in a row at most); a hint naming the
            // endpoint that just failed is no hint. Anything else: next endpoint, after backoff.
            let current = index % self.rotation_len();
            let redirect = error.leader_address().and_then(|address| self.index_of_hint(address));
            match redirect.filter(|&leader| leader != current) {
                Some(leader) => {
                    self.set_preferred(leader);
                    index = leader;
                    if redirects_in_a_row < IMMEDIATE_REDIRECTS_MAX {
                        redirects_in_a_row += 1;
                        last = Some(error);
                        continue;
                    }
                }
                None => index = (current + 1) % self.rotation_len(),
            }
            redirects_in_a_row = 0;

            let wait = backoff.next_wait();
            if Instant::now() + wait >= give_up_at {
                return Err(Error::Timeout { elapsed: started.elapsed(), attempts, last: Some(Box::new(error)) });
            }
            last = Some(error);
            tokio::time::sleep(wait).await;
        }
    }
}

impl std::fmt::Debug for DedupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupClient").field("endpoints", &self.endpoints()).finish_non_exhaustive()
    }
}

fn ledger(channel: Channel) -> LedgerClient<Channel> {
    LedgerClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX)
}

/// A fresh `claim_request_id`: 128 random bits as 32 hex digits (the limit is 64 bytes).
/// A batch item the server left without an answer or an error.
fn missing(call: &str) -> Error {
    Error::Other {
        code: Code::Internal,
        reason: None,
        message: format!("the server answered a {call} batch item with no result"),
    }
}

pub fn new_claim_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
