//! The record life of DESIGN §2-§3 against a real three-node cluster: every call goes over gRPC
//! to real `dedupd` processes, to the leader and to followers (which forward writes).

use std::time::Duration;

use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as Answer;
use dedup_tests::error_metadata;
use dedup_tests::ledger;
use dedup_tests::reason;
use dedup_tests::Cluster;
use tonic::Code;

fn claim(namespace: &str, key: &str, owner: &str, lease_ms: u64) -> pb::CheckAndClaimRequest {
    pb::CheckAndClaimRequest {
        namespace: namespace.to_string(),
        key: key.as_bytes().to_vec(),
        owner: owner.to_string(),
        lease_ms,
        ..Default::default()
    }
}

fn complete(namespace: &str, key: &str, token: u64, payload: &str) -> pb::CompleteRequest {
    pb::CompleteRequest {
        namespace: namespace.to_string(),
        key: key.as_bytes().to_vec(),
        token,
        outcome: Some(pb::Outcome { kind: pb::OutcomeKind::Succeeded as i32, payload: payload.as_bytes().to_vec() }),
        retention_ms: 0,
    }
}

async fn claimed(endpoint: &str, request: pb::CheckAndClaimRequest) -> pb::Claimed {
    match ledger(endpoint).await.check_and_claim(request).await.expect("claim").into_inner().result {
        Some(Answer::Claimed(claimed)) => claimed,
        other => panic!("expected CLAIMED, got {other:?}"),
    }
}

async fn claim_answer(endpoint: &str, request: pb::CheckAndClaimRequest) -> Answer {
    ledger(endpoint).await.check_and_claim(request).await.expect("claim").into_inner().result.expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_complete_and_duplicates_across_nodes() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (leader_ep, follower_ep) = (cluster.endpoint(leader), cluster.endpoint(follower));

    // A first claim, sent to a follower: forwarded to the leader and granted.
    let first = claimed(&follower_ep, claim("orders", "order-1", "worker-a", 30_000)).await;
    assert_eq!(first.attempt, 1);
    assert!(first.token > 0 && first.previous.is_none() && !first.reentrant);

    // Someone else asks while the claim is live: IN_PROGRESS, naming the holder.
    match claim_answer(&leader_ep, claim("orders", "order-1", "worker-b", 30_000)).await {
        Answer::InProgress(p) => {
            assert_eq!(p.owner, "worker-a");
            assert!(p.retry_after_ms > 0 && p.retry_after_ms <= 30_000);
        }
        other => panic!("expected IN_PROGRESS, got {other:?}"),
    }

    // Complete with the token; a retried complete is accepted as a replay.
    let done = ledger(&leader_ep).await.complete(complete("orders", "order-1", first.token, "shipped")).await.unwrap();
    let done = done.into_inner();
    assert!(!done.replayed && !done.late);
    let again = ledger(&follower_ep).await.complete(complete("orders", "order-1", first.token, "shipped")).await;
    assert!(again.unwrap().into_inner().replayed);

    // A different outcome for the completed key is refused.
    let changed = ledger(&leader_ep).await.complete(complete("orders", "order-1", first.token, "lost")).await;
    let status = changed.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::FailedPrecondition, "OUTCOME_IMMUTABLE"));

    // Every node answers a duplicate with the stored outcome and the completing token.
    for endpoint in cluster.endpoints() {
        match claim_answer(&endpoint, claim("orders", "order-1", "worker-c", 30_000)).await {
            Answer::Completed(c) => {
                assert_eq!(c.outcome.unwrap().payload, b"shipped");
                assert_eq!(c.token, first.token);
            }
            other => panic!("expected COMPLETED from {endpoint}, got {other:?}"),
        }
    }

    // Reads: linearizable from a follower (forwarded), and any-replica on every node once applied.
    let read = ledger(&follower_ep)
        .await
        .get(pb::GetRequest {
            namespace: "orders".into(),
            key: b"order-1".to_vec(),
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let record = read.record.expect("the record");
    assert_eq!(record.state, pb::RecordState::Completed as i32);
    assert_eq!(record.outcome.unwrap().payload, b"shipped");
    let missing = ledger(&leader_ep)
        .await
        .get(pb::GetRequest { namespace: "orders".into(), key: b"never-seen".to_vec(), consistency: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.record.is_none());
    assert_eq!(missing.purge_horizon_ms, 0, "nothing is purged yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_reentrant_claims_and_releases() {
    let cluster = Cluster::start().await;
    let endpoint = cluster.endpoint(1);

    // Same key, different fingerprint: refused with the stored record described.
    let mut with_fp = claim("payments", "pay-7", "worker-a", 30_000);
    with_fp.fingerprint = b"sha256:aaaa".to_vec();
    let granted = claimed(&endpoint, with_fp.clone()).await;
    let mut other_fp = with_fp.clone();
    other_fp.fingerprint = b"sha256:bbbb".to_vec();
    let status = ledger(&endpoint).await.check_and_claim(other_fp).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::FailedPrecondition, "FINGERPRINT_MISMATCH"));
    assert_eq!(error_metadata(&status, "current_token"), Some(granted.token.to_string()));

    // A retried claim call (same owner, same claim_request_id) gets the same claim back.
    let mut request = claim("payments", "pay-8", "worker-a", 30_000);
    request.claim_request_id = "call-1".to_string();
    let original = claimed(&endpoint, request.clone()).await;
    let retried = claimed(&cluster.endpoint(2), request.clone()).await;
    assert_eq!((retried.token, retried.reentrant), (original.token, true));
    // The same id from another owner is not the same call.
    request.owner = "worker-b".to_string();
    assert!(matches!(claim_answer(&endpoint, request).await, Answer::InProgress(_)));

    // Release with EFFECT_UNKNOWN and a checkpoint; the next claimant is told both.
    let released = ledger(&endpoint)
        .await
        .release(pb::ReleaseRequest {
            namespace: "payments".into(),
            key: b"pay-8".to_vec(),
            token: original.token,
            reason: pb::ReleaseReason::EffectUnknown as i32,
            checkpoint: b"charged-card?".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!released.replayed);
    let next = claimed(&cluster.endpoint(3), claim("payments", "pay-8", "worker-c", 30_000)).await;
    assert!(next.token > original.token);
    assert_eq!(next.attempt, 2);
    let previous = next.previous.expect("previous attempt");
    assert_eq!(previous.ended, pb::PreviousEnd::ReleasedEffectUnknown as i32);
    assert_eq!((previous.owner.as_str(), previous.token), ("worker-a", original.token));
    assert_eq!(previous.checkpoint, b"charged-card?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lapse_takeover_fencing_and_late_completion() {
    let cluster = Cluster::start().await;
    let endpoint = cluster.endpoint(2);
    let lease_ms = 300;

    // Takeover: A's lease lapses, B claims with a larger token, A is fenced everywhere.
    let a = claimed(&endpoint, claim("jobs", "job-1", "worker-a", lease_ms)).await;
    tokio::time::sleep(Duration::from_millis(lease_ms + 400)).await;
    let b = claimed(&endpoint, claim("jobs", "job-1", "worker-b", 30_000)).await;
    assert!(b.token > a.token, "takeover token {} must exceed {}", b.token, a.token);
    assert_eq!(b.attempt, 2);
    let previous = b.previous.expect("takeover names the previous attempt");
    assert_eq!((previous.ended, previous.owner.as_str()), (pb::PreviousEnd::LeaseLapsed as i32, "worker-a"));

    let stale = ledger(&endpoint).await.complete(complete("jobs", "job-1", a.token, "done-by-a")).await.unwrap_err();
    assert_eq!((stale.code(), reason(&stale).as_str()), (Code::FailedPrecondition, "FENCED"));
    assert_eq!(error_metadata(&stale, "current_token"), Some(b.token.to_string()));
    let stale_extend = ledger(&endpoint)
        .await
        .extend_lease(pb::ExtendLeaseRequest {
            namespace: "jobs".into(),
            key: b"job-1".to_vec(),
            token: a.token,
            lease_ms: 1000,
            checkpoint: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&stale_extend), "FENCED");
    let stale_release = ledger(&endpoint)
        .await
        .release(pb::ReleaseRequest {
            namespace: "jobs".into(),
            key: b"job-1".to_vec(),
            token: a.token,
            reason: 0,
            checkpoint: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&stale_release), "FENCED");
    // B, the current holder, completes.
    ledger(&endpoint).await.complete(complete("jobs", "job-1", b.token, "done-by-b")).await.unwrap();

    // Late completion: the lease lapsed but nobody took over, so the result is still recorded.
    let late = claimed(&endpoint, claim("jobs", "job-2", "worker-a", lease_ms)).await;
    tokio::time::sleep(Duration::from_millis(lease_ms + 400)).await;
    // Extending a lapsed lease is refused ...
    let lapsed = ledger(&endpoint)
        .await
        .extend_lease(pb::ExtendLeaseRequest {
            namespace: "jobs".into(),
            key: b"job-2".to_vec(),
            token: late.token,
            lease_ms: 1000,
            checkpoint: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!((lapsed.code(), reason(&lapsed).as_str()), (Code::FailedPrecondition, "LEASE_LAPSED"));
    // ... but completing is accepted and flagged late.
    let done = ledger(&endpoint).await.complete(complete("jobs", "job-2", late.token, "ok")).await.unwrap();
    assert!(done.into_inner().late);

    // A live lease can be extended.
    let live = claimed(&endpoint, claim("jobs", "job-3", "worker-a", 5_000)).await;
    let extended = ledger(&endpoint)
        .await
        .extend_lease(pb::ExtendLeaseRequest {
            namespace: "jobs".into(),
            key: b"job-3".to_vec(),
            token: live.token,
            lease_ms: 60_000,
            checkpoint: b"step-2".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(extended.lease_deadline_ms > live.lease_deadline_ms);
    // A token never granted for the key is NOT_CLAIMED.
    let unknown =
        ledger(&endpoint).await.complete(complete("jobs", "job-3", live.token + 1_000_000, "x")).await.unwrap_err();
    assert_eq!(reason(&unknown), "NOT_CLAIMED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_enforced_with_a_named_error() {
    let cluster = Cluster::start().await;
    let endpoint = cluster.endpoint(3);
    let ok = || claim("limits", "key", "owner", 30_000);
    let mut cases: Vec<(&str, pb::CheckAndClaimRequest)> = Vec::new();
    let mut r = ok();
    r.key = vec![b'k'; 513];
    cases.push(("KEY_TOO_LONG", r));
    let mut r = ok();
    r.key = vec![];
    cases.push(("KEY_EMPTY", r));
    let mut r = ok();
    r.namespace = "has space".into();
    cases.push(("NAMESPACE_INVALID", r));
    let mut r = ok();
    r.namespace = "n".repeat(65);
    cases.push(("NAMESPACE_INVALID", r));
    let mut r = ok();
    r.owner = "o".repeat(129);
    cases.push(("OWNER_TOO_LONG", r));
    let mut r = ok();
    r.owner = String::new();
    cases.push(("OWNER_EMPTY", r));
    let mut r = ok();
    r.lease_ms = 99;
    cases.push(("LEASE_OUT_OF_RANGE", r));
    let mut r = ok();
    r.lease_ms = 3_600_001;
    cases.push(("LEASE_OUT_OF_RANGE", r));
    let mut r = ok();
    r.retention_ms = 999;
    cases.push(("RETENTION_OUT_OF_RANGE", r));
    let mut r = ok();
    r.fingerprint = vec![0; 65];
    cases.push(("FINGERPRINT_TOO_LONG", r));
    let mut r = ok();
    r.claim_request_id = "r".repeat(65);
    cases.push(("REQUEST_ID_TOO_LONG", r));
    let mut r = ok();
    r.wait_ms = 30_001;
    cases.push(("WAIT_MS_OUT_OF_RANGE", r));
    for (expected, request) in cases {
        let status = ledger(&endpoint).await.check_and_claim(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{expected}: {status:?}");
        assert_eq!(reason(&status), expected, "{status:?}");
        // The message says what was wrong with numbers: the limit and, where there is one, the value.
        assert!(status.message().chars().any(|c| c.is_ascii_digit()), "{expected}: {}", status.message());
    }

    // Outcome size, checkpoint size and token 0 on the other calls.
    let granted = claimed(&endpoint, ok()).await;
    let big =
        ledger(&endpoint).await.complete(complete("limits", "key", granted.token, &"x".repeat(64 * 1024 + 1))).await;
    let status = big.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "OUTCOME_TOO_LARGE"));
    assert!(status.message().contains("65536"), "the message names the limit: {}", status.message());
    let release = pb::ReleaseRequest {
        namespace: "limits".into(),
        key: b"key".to_vec(),
        token: granted.token,
        reason: 0,
        checkpoint: vec![0; 4 * 1024 + 1],
    };
    assert_eq!(reason(&ledger(&endpoint).await.release(release).await.unwrap_err()), "CHECKPOINT_TOO_LARGE");
    let zero = ledger(&endpoint).await.complete(complete("limits", "key", 0, "x")).await.unwrap_err();
    assert_eq!(reason(&zero), "TOKEN_INVALID");

    // The gRPC message limit (256 KiB) is enforced before decoding.
    let huge =
        ledger(&endpoint).await.complete(complete("limits", "key", granted.token, &"x".repeat(300 * 1024))).await;
    let status = huge.unwrap_err();
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
    assert!(status.message().contains("262144"), "the message names the limit: {}", status.message());

    // None of the rejected calls changed the record: the claim is still live and completable.
    ledger(&endpoint).await.complete(complete("limits", "key", granted.token, "fine")).await.unwrap();
}
