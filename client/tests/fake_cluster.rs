//! The client's retry loop, leader following and `once`, against in-process fake `dedupd` nodes:
//! tonic servers whose answers each test scripts. Why: these paths decide safety (never retry a
//! rejection, reuse the claim_request_id, release on failure) and cannot wait for a real cluster.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use dedup_client::proto as pb;
use dedup_client::proto::ledger_server::Ledger;
use dedup_client::proto::ledger_server::LedgerServer;
use dedup_client::*;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic_types::ErrorDetails;
use tonic_types::StatusExt;

type Script<Req, Resp> = Box<dyn Fn(usize, &Req) -> Result<Resp, Status> + Send + Sync>;

/// One fake node. Each RPC answers by its script, given how many calls of that RPC came before.
struct Fake {
    log: Arc<Mutex<Vec<String>>>,
    claims: AtomicUsize,
    completes: AtomicUsize,
    releases: AtomicUsize,
    extends: AtomicUsize,
    gets: AtomicUsize,
    claim: Script<pb::CheckAndClaimRequest, pb::CheckAndClaimResponse>,
    complete: Script<pb::CompleteRequest, pb::CompleteResponse>,
    release: Script<pb::ReleaseRequest, pb::ReleaseResponse>,
    extend: Script<pb::ExtendLeaseRequest, pb::ExtendLeaseResponse>,
    get: Script<pb::GetRequest, pb::GetResponse>,
}

impl Fake {
    fn new(log: &Arc<Mutex<Vec<String>>>) -> Fake {
        Fake {
            log: log.clone(),
            claims: AtomicUsize::new(0),
            completes: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            extends: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            claim: Box::new(|_, _| Err(Status::unimplemented("claim"))),
            complete: Box::new(|_, _| Err(Status::unimplemented("complete"))),
            release: Box::new(|_, _| Err(Status::unimplemented("release"))),
            extend: Box::new(|_, _| Err(Status::unimplemented("extend"))),
            get: Box::new(|_, _| Err(Status::unimplemented("get"))),
        }
    }

    fn note(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }
}

#[tonic::async_trait]
impl Ledger for Fake {
    async fn check_and_claim(
        &self,
        request: Request<pb::CheckAndClaimRequest>,
    ) -> Result<Response<pb::CheckAndClaimResponse>, Status> {
        let n = self.claims.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        self.note(format!("claim id={}", request.claim_request_id));
        if request.owner == "sleepy" && n == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        (self.claim)(n, &request).map(Response::new)
    }

    async fn complete(&self, request: Request<pb::CompleteRequest>) -> Result<Response<pb::CompleteResponse>, Status> {
        let n = self.completes.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let outcome = request.outcome.clone().unwrap_or_default();
        self.note(format!(
            "complete token={} kind={} payload={}",
            request.token,
            pb::OutcomeKind::try_from(outcome.kind).unwrap_or_default().as_str_name(),
            String::from_utf8_lossy(&outcome.payload)
        ));
        (self.complete)(n, &request).map(Response::new)
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let n = self.releases.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        self.note(format!(
            "release token={} reason={}",
            request.token,
            pb::ReleaseReason::try_from(request.reason).unwrap_or_default().as_str_name()
        ));
        (self.release)(n, &request).map(Response::new)
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let n = self.extends.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        self.note(format!("extend token={}", request.token));
        (self.extend)(n, &request).map(Response::new)
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let n = self.gets.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        self.note("get".to_string());
        (self.get)(n, &request).map(Response::new)
    }

    // These fakes script single calls; batches are tested against real servers (tests/).
    async fn check_and_claim_batch(
        &self,
        _request: Request<pb::CheckAndClaimBatchRequest>,
    ) -> Result<Response<pb::CheckAndClaimBatchResponse>, Status> {
        Err(Status::unimplemented("the fake ledger answers single calls only"))
    }

    async fn complete_batch(
        &self,
        _request: Request<pb::CompleteBatchRequest>,
    ) -> Result<Response<pb::CompleteBatchResponse>, Status> {
        Err(Status::unimplemented("the fake ledger answers single calls only"))
    }
}

/// Serves `fake` on a fresh local port; returns `127.0.0.1:PORT`.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(LedgerServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    address
}

/// A local port nobody listens on: connections are refused.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

fn error_status(code: Code, reason: &str, metadata: &[(&str, &str)]) -> Status {
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Status::with_error_details(
        code,
        format!("{reason}: scripted"),
        ErrorDetails::with_error_info(reason, dedup_proto_domain(), metadata),
    )
}

fn dedup_proto_domain() -> &'static str {
    "dedup.v1"
}

fn claimed(token: u64) -> pb::CheckAndClaimResponse {
    pb::CheckAndClaimResponse {
        result: Some(pb::check_and_claim_response::Result::Claimed(pb::Claimed {
            token,
            lease_deadline_ms: 1_000,
            attempt: 1,
            previous: None,
            reentrant: false,
        })),
        applied_index: token,
        ledger_time_ms: 500,
    }
}

fn fast_client(endpoints: Vec<String>) -> DedupClient {
    DedupClient::with_config(
        ClientConfig::new(endpoints)
            .with_request_timeout(Duration::from_millis(500))
            .with_call_deadline(Duration::from_secs(3))
            .with_backoff(Duration::from_millis(5), Duration::from_millis(20)),
    )
    .unwrap()
}

fn log() -> Arc<Mutex<Vec<String>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn entries(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn a_not_leader_hint_is_followed_at_once_and_cached() {
    let leader_log = log();
    let mut leader = Fake::new(&leader_log);
    leader.claim = Box::new(|_, _| Ok(claimed(42)));
    let leader_address = serve(leader).await;

    let follower_log = log();
    let mut follower = Fake::new(&follower_log);
    let hint = leader_address.clone();
    follower.claim = Box::new(move |_, _| {
        Err(error_status(Code::Unavailable, "NOT_LEADER", &[("leader_id", "1"), ("leader_address", &hint)]))
    });
    let follower_address = serve(follower).await;

    // The client knows only the follower; the hint teaches it the leader.
    let client = DedupClient::with_config(
        ClientConfig::new([follower_address.clone()]).with_backoff(Duration::from_secs(1), Duration::from_secs(1)),
    )
    .unwrap();
    let started = Instant::now();
    let answer = client.check_and_claim(&ClaimRequest::new("orders", "k", "w")).await.unwrap();
    assert!(matches!(answer, ClaimAnswer::Claimed(Claimed { token: 42, .. })));
    assert!(started.elapsed() < Duration::from_millis(900), "no backoff before following a hint");
    assert_eq!(client.preferred_endpoint(), format!("http://{leader_address}"));
    assert_eq!(client.endpoints().len(), 2);

    // The next call goes straight to the cached leader.
    client.check_and_claim(&ClaimRequest::new("orders", "k2", "w")).await.unwrap();
    assert_eq!(entries(&follower_log).len(), 1);
    assert_eq!(entries(&leader_log).len(), 2);
}

#[tokio::test]
async fn a_retried_claim_reuses_its_claim_request_id() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|n, _| match n {
        0 => Err(error_status(Code::Unavailable, "NO_QUORUM", &[])),
        1 => Err(Status::deadline_exceeded("commit timed out")),
        _ => Ok(claimed(7)),
    });
    let client = fast_client(vec![serve(node).await]);

    client.check_and_claim(&ClaimRequest::new("orders", "k", "w")).await.unwrap();
    let ids: Vec<String> = entries(&log);
    assert_eq!(ids.len(), 3);
    assert!(ids[0].len() > "claim id=".len(), "an id was generated: {ids:?}");
    assert!(ids.iter().all(|id| id == &ids[0]), "one id for every retry: {ids:?}");

    // A second logical call gets a new id; a caller's own id is kept.
    client.check_and_claim(&ClaimRequest::new("orders", "k", "w")).await.unwrap();
    client.check_and_claim(&ClaimRequest::new("orders", "k", "w").with_claim_request_id("mine")).await.unwrap();
    let ids = entries(&log);
    assert_ne!(ids[3], ids[0]);
    assert_eq!(ids[4], "claim id=mine");
}

#[tokio::test]
async fn rejections_and_invalid_arguments_are_never_retried() {
    let log = log();
    let mut node = Fake::new(&log);
    node.complete = Box::new(|_, _| {
        Err(error_status(Code::FailedPrecondition, "FENCED", &[("state", "CLAIMED"), ("current_token", "99")]))
    });
    node.release = Box::new(|_, _| Err(error_status(Code::InvalidArgument, "CHECKPOINT_TOO_LARGE", &[])));
    let client = fast_client(vec![serve(node).await]);

    let error =
        client.complete(&CompleteRequest::new("orders", "k", 7, Outcome::succeeded("x"))).await.expect_err("fenced");
    assert!(matches!(&error, Error::Fenced { record: Some(RecordHint { current_token: Some(99), .. }), .. }));
    let error =
        client.release(&ReleaseRequest::new("orders", "k", 7, ReleaseReason::Retryable)).await.expect_err("invalid");
    assert_eq!(error.reason(), "CHECKPOINT_TOO_LARGE");
    assert_eq!(entries(&log).len(), 2, "one call each: {:?}", entries(&log));
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_and_the_live_one_preferred() {
    let log = log();
    let mut node = Fake::new(&log);
    node.get = Box::new(|_, _| Ok(pb::GetResponse { applied_index: 9, ..Default::default() }));
    let live = serve(node).await;
    let client = fast_client(vec![dead_endpoint(), live.clone()]);

    let answer = client.get(&GetRequest::new("orders", "k")).await.unwrap();
    assert_eq!(answer.record, None);
    assert_eq!(answer.applied_index, 9);
    assert_eq!(client.preferred_endpoint(), format!("http://{live}"));
}

#[tokio::test]
async fn an_unreachable_cluster_times_out_at_the_call_deadline() {
    let client = DedupClient::with_config(
        ClientConfig::new([dead_endpoint(), dead_endpoint()])
            .with_call_deadline(Duration::from_millis(400))
            .with_backoff(Duration::from_millis(5), Duration::from_millis(50)),
    )
    .unwrap();
    let started = Instant::now();
    let error = client.get(&GetRequest::new("orders", "k")).await.expect_err("nobody listens");
    let elapsed = started.elapsed();
    let Error::Timeout { attempts, last: Some(last), .. } = &error else { panic!("{error:?}") };
    assert!(*attempts >= 2, "rotated and retried: {error}");
    assert_eq!(last.code(), Code::Unavailable);
    assert!(elapsed < Duration::from_millis(1500), "bounded by the deadline: {elapsed:?}");
    assert!(error.is_unavailable());
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_is_retried() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|_, _| Ok(claimed(5)));
    let client = DedupClient::with_config(
        ClientConfig::new([serve(node).await])
            .with_request_timeout(Duration::from_millis(200))
            .with_call_deadline(Duration::from_secs(5))
            .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
    )
    .unwrap();
    // The fake sleeps 2 s on the first claim of owner "sleepy".
    let answer = client.check_and_claim(&ClaimRequest::new("orders", "k", "sleepy")).await.unwrap();
    assert!(matches!(answer, ClaimAnswer::Claimed(_)));
    assert_eq!(entries(&log).len(), 2);
}

#[tokio::test]
async fn a_pinned_get_asks_one_node_once_and_does_not_follow_hints() {
    let log = log();
    let mut node = Fake::new(&log);
    node.get = Box::new(|_, _| {
        Err(error_status(Code::Unavailable, "NOT_LEADER", &[("leader_id", "1"), ("leader_address", "127.0.0.1:1")]))
    });
    let pinned = serve(node).await;
    let client = fast_client(vec![dead_endpoint()]);
    let error = client
        .get(&GetRequest::new("orders", "k").with_consistency(Consistency::AnyReplica).on_endpoint(&pinned))
        .await
        .expect_err("not leader");
    let Error::Unavailable { reason, leader: Some(leader), .. } = &error else { panic!("{error:?}") };
    assert_eq!(reason, "NOT_LEADER");
    assert_eq!(leader.address.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(entries(&log).len(), 1);
    assert_eq!(client.endpoints().len(), 1, "a pinned endpoint does not join the rotation");
}

// ------------------------------------------------------------------------------------------------
// once

#[tokio::test]
async fn once_on_a_completed_key_returns_the_stored_outcome_without_running() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|_, _| {
        Ok(pb::CheckAndClaimResponse {
            result: Some(pb::check_and_claim_response::Result::Completed(pb::Completed {
                outcome: Some(pb::Outcome { kind: OutcomeKind::Succeeded as i32, payload: b"shipped".to_vec() }),
                token: 3,
                ..Default::default()
            })),
            ..Default::default()
        })
    });
    let client = fast_client(vec![serve(node).await]);
    let ran = AtomicUsize::new(0);
    let once = client
        .once("orders", "k", OnceOptions::new("w"), |_| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Failure<String>>(b"again".to_vec())
        })
        .await
        .unwrap();
    assert!(once.is_duplicate());
    assert_eq!(once.outcome().payload, b"shipped");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn once_runs_extends_the_lease_and_completes() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|_, _| Ok(claimed(11)));
    node.extend =
        Box::new(|n, _| Ok(pb::ExtendLeaseResponse { lease_deadline_ms: 2_000 + n as u64, ..Default::default() }));
    node.complete = Box::new(|_, _| Ok(pb::CompleteResponse { completed_at_ms: 5, ..Default::default() }));
    let client = fast_client(vec![serve(node).await]);

    let options = OnceOptions::new("w").with_lease(Duration::from_millis(150));
    let once = client
        .once("orders", "k", options, |claim| async move {
            assert_eq!(claim.token, 11);
            // Outlive the lease twice over: only the background extension keeps it.
            tokio::time::sleep(Duration::from_millis(320)).await;
            assert!(claim.lease_deadline_ms() >= 2_000, "extended while running");
            assert!(claim.lease_lost().is_none());
            Ok::<_, Failure<String>>(b"shipped".to_vec())
        })
        .await
        .unwrap();
    let Once::Ran { claim, outcome, ack } = &once else { panic!("{once:?}") };
    assert_eq!((claim.token, ack.completed_at_ms), (11, 5));
    assert_eq!(outcome, &Outcome::succeeded("shipped"));

    let entries = entries(&log);
    let extends = entries.iter().filter(|e| e.starts_with("extend")).count();
    assert!(extends >= 2, "extended every third of the lease: {entries:?}");
    assert!(entries.contains(&"complete token=11 kind=SUCCEEDED payload=shipped".to_string()), "{entries:?}");
    // The extension stopped with the action.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(self::entries(&log).len(), entries.len(), "no extension after the action ended");
}

#[tokio::test]
async fn once_releases_on_failure_and_stores_final_failures() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|n, _| Ok(claimed(20 + n as u64)));
    node.release = Box::new(|_, _| Ok(pb::ReleaseResponse::default()));
    node.complete = Box::new(|_, _| Ok(pb::CompleteResponse::default()));
    let client = fast_client(vec![serve(node).await]);

    let error = client
        .once("orders", "a", OnceOptions::new("w"), |_| async { Err(Failure::Retryable("card service down")) })
        .await
        .expect_err("the action failed");
    assert!(matches!(
        error,
        OnceError::Action { error: "card service down", reason: ReleaseReason::Retryable, release_error: None }
    ));

    let error = client
        .once("orders", "b", OnceOptions::new("w"), |_| async { Err(Failure::EffectUnknown("timed out")) })
        .await
        .expect_err("the action failed");
    assert!(matches!(error, OnceError::Action { reason: ReleaseReason::EffectUnknown, .. }));

    let error = client
        .once("orders", "c", OnceOptions::new("w"), |_| async { Err(Failure::final_with("card declined", "declined")) })
        .await
        .expect_err("failed for good");
    assert!(
        matches!(&error, OnceError::Final { error: "declined", store_error: None, outcome } if !outcome.is_success())
    );

    assert_eq!(
        entries(&log).into_iter().filter(|e| !e.starts_with("claim")).collect::<Vec<_>>(),
        vec![
            "release token=20 reason=RETRYABLE",
            "release token=21 reason=EFFECT_UNKNOWN",
            "complete token=22 kind=FAILED_FINAL payload=card declined",
        ]
    );
}

#[tokio::test]
async fn once_reports_who_holds_an_in_flight_key() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|_, _| {
        Ok(pb::CheckAndClaimResponse {
            result: Some(pb::check_and_claim_response::Result::InProgress(pb::InProgress {
                owner: "worker-b".into(),
                lease_deadline_ms: 9_000,
                attempt: 1,
                retry_after_ms: 1_500,
            })),
            ..Default::default()
        })
    });
    let client = fast_client(vec![serve(node).await]);
    let error = client
        .once("orders", "k", OnceOptions::new("w"), |_| async { Ok::<_, Failure<String>>(vec![]) })
        .await
        .expect_err("in progress");
    let OnceError::InProgress(busy) = &error else { panic!("{error:?}") };
    assert_eq!(busy.owner, "worker-b");
    assert_eq!(busy.retry_after, Duration::from_millis(1_500));
}

#[tokio::test]
async fn once_tells_the_action_when_its_lease_is_lost() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|_, _| Ok(claimed(30)));
    node.extend = Box::new(|_, _| Err(error_status(Code::FailedPrecondition, "FENCED", &[("current_token", "31")])));
    node.complete = Box::new(|_, _| Err(error_status(Code::FailedPrecondition, "FENCED", &[("current_token", "31")])));
    let client = fast_client(vec![serve(node).await]);

    let options = OnceOptions::new("w").with_lease(Duration::from_millis(150));
    let error = client
        .once("orders", "k", options, |claim| async move {
            let lost = tokio::time::timeout(Duration::from_secs(2), claim.lease_lost_signal()).await.unwrap();
            assert_eq!(lost.reason(), "FENCED");
            Ok::<_, Failure<String>>(b"done anyway".to_vec())
        })
        .await
        .expect_err("fenced at complete");
    let OnceError::NotRecorded { payload, error } = &error else { panic!("{error:?}") };
    assert_eq!(payload, b"done anyway");
    assert_eq!(error.reason(), "FENCED");
}

#[tokio::test]
async fn a_dropped_once_releases_its_claim_as_effect_unknown() {
    let log = log();
    let mut node = Fake::new(&log);
    node.claim = Box::new(|_, _| Ok(claimed(40)));
    node.release = Box::new(|_, _| Ok(pb::ReleaseResponse::default()));
    let client = fast_client(vec![serve(node).await]);

    let call = client.once("orders", "k", OnceOptions::new("w"), |_| async {
        std::future::pending::<()>().await;
        Ok::<_, Failure<String>>(vec![])
    });
    assert!(tokio::time::timeout(Duration::from_millis(200), call).await.is_err(), "still running");
    // The guard's release runs in the background.
    for _ in 0..100 {
        if entries(&log).iter().any(|e| e.starts_with("release")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(entries(&log).contains(&"release token=40 reason=EFFECT_UNKNOWN".to_string()), "{:?}", entries(&log));
}
