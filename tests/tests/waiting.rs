//! Waiting instead of polling (`wait_ms`): an in-flight duplicate is parked on the node it
//! reached and answered when the key completes (COMPLETED), becomes claimable by release or lease
//! lapse (the waiter claims it), or the wait ends (IN_PROGRESS). Waiters are capped per key and
//! freed when their client goes away.

use std::time::Duration;
use std::time::Instant;

use dedup_client::ClaimAnswer;
use dedup_client::ClaimRequest;
use dedup_client::CompleteRequest;
use dedup_client::DedupClient;
use dedup_client::Failure;
use dedup_client::Once;
use dedup_client::OnceOptions;
use dedup_client::Outcome;
use dedup_client::PreviousEnd;
use dedup_client::ReleaseReason;
use dedup_client::ReleaseRequest;
use dedup_proto::v1 as pb;
use dedup_tests::ledger;
use dedup_tests::reason;
use dedup_tests::Cluster;

async fn claimed(client: &DedupClient, key: &str, owner: &str, lease: Duration) -> u64 {
    match client.check_and_claim(&ClaimRequest::new("wait", key, owner).with_lease(lease)).await.unwrap() {
        ClaimAnswer::Claimed(claim) => claim.token,
        other => panic!("{key}: expected CLAIMED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_answered_by_completion_release_lease_lapse_or_the_end_of_its_wait() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let holder = DedupClient::new(cluster.endpoints()).unwrap();
    // Waiters park on a follower: it is woken by its own applies.
    let waiter = DedupClient::new([cluster.endpoint(follower)]).unwrap();
    let long = Duration::from_secs(30);

    // Completion: the waiter gets the stored outcome as soon as it is stored.
    let token = claimed(&holder, "done", "holder", long).await;
    let started = Instant::now();
    let wait = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            waiter
                .check_and_claim(&ClaimRequest::new("wait", "done", "waiter").with_wait(Duration::from_secs(10)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    holder.complete(&CompleteRequest::new("wait", "done", token, Outcome::succeeded("shipped"))).await.unwrap();
    match wait.await.unwrap().unwrap() {
        ClaimAnswer::Completed(done) => assert_eq!(done.outcome.payload, b"shipped"),
        other => panic!("expected COMPLETED, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the completion, not by the end of the wait");

    // Release: the waiter claims the key, told how the last attempt ended.
    let token = claimed(&holder, "released", "holder", long).await;
    let wait = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            waiter
                .check_and_claim(&ClaimRequest::new("wait", "released", "waiter").with_wait(Duration::from_secs(10)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    holder.release(&ReleaseRequest::new("wait", "released", token, ReleaseReason::Retryable)).await.unwrap();
    match wait.await.unwrap().unwrap() {
        ClaimAnswer::Claimed(claim) => {
            assert_eq!(claim.attempt, 2);
            assert_eq!(claim.previous.unwrap().ended, PreviousEnd::ReleasedRetryable);
        }
        other => panic!("expected CLAIMED, got {other:?}"),
    }

    // Lease lapse: no apply wakes the waiter; it retries when the lease should have lapsed.
    claimed(&holder, "abandoned", "holder", Duration::from_millis(600)).await;
    let answer = waiter
        .check_and_claim(&ClaimRequest::new("wait", "abandoned", "waiter").with_wait(Duration::from_secs(10)))
        .await
        .unwrap();
    match answer {
        ClaimAnswer::Claimed(claim) => assert_eq!(claim.previous.unwrap().ended, PreviousEnd::LeaseLapsed),
        other => panic!("expected a takeover, got {other:?}"),
    }

    // The wait ends first: IN_PROGRESS, after the wait.
    claimed(&holder, "busy", "holder", long).await;
    let started = Instant::now();
    let answer = waiter
        .check_and_claim(&ClaimRequest::new("wait", "busy", "waiter").with_wait(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(matches!(answer, ClaimAnswer::InProgress(_)), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "answered before its wait ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_capped_per_key_and_freed_when_their_client_leaves() {
    let cluster = Cluster::start().await;
    let endpoint = cluster.endpoint(2);
    let holder = DedupClient::new(cluster.endpoints()).unwrap();
    claimed(&holder, "hot", "holder", Duration::from_secs(60)).await;
    let request = |owner: String, wait_ms: u64| pb::CheckAndClaimRequest {
        namespace: "wait".into(),
        key: b"hot".to_vec(),
        owner,
        lease_ms: 30_000,
        wait_ms,
        ..Default::default()
    };

    // 64 callers park on the key (WAITERS_PER_KEY_MAX), each giving up after 1.5 s client-side.
    let client = ledger(&endpoint).await;
    let parked: Vec<_> = (0..64)
        .map(|i| {
            let mut client = client.clone();
            let request = request(format!("waiter-{i}"), 20_000);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_millis(1_500), client.check_and_claim(request)).await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.status(2).await.unwrap().waiters_parked, 64);
    let refused = ledger(&endpoint).await.check_and_claim(request("one-more".into(), 20_000)).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (tonic::Code::ResourceExhausted, "WAITERS_FULL"));
    assert!(refused.message().contains("64"), "{}", refused.message());

    // The callers go away; their slots are freed without the key changing.
    for call in parked {
        call.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.status(2).await.unwrap().waiters_parked > 0 {
        assert!(Instant::now() < deadline, "waiters of departed clients were not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_waits_for_an_in_flight_duplicate_instead_of_failing() {
    let cluster = Cluster::start().await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let run = |runs: std::sync::Arc<std::sync::atomic::AtomicU32>| {
        move |_claim| async move {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(700)).await;
            Ok::<_, Failure<String>>(b"charged".to_vec())
        }
    };
    let first = client.once("wait", "charge", OnceOptions::new("a"), run(runs.clone()));
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.once("wait", "charge", OnceOptions::new("b"), run(runs.clone())).await
    };
    let (first, second) = tokio::join!(first, second);
    assert!(matches!(first.unwrap(), Once::Ran { .. }));
    let second = second.expect("the duplicate waits for the outcome instead of failing IN_PROGRESS");
    assert!(second.is_duplicate());
    assert_eq!(second.outcome().payload, b"charged");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}
