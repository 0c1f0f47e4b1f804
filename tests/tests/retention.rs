//! Retention and purge (DESIGN §2, §7): a COMPLETED record is kept until its retention ends and
//! then purged on ledger time, identically on every node; "no record" then carries the purge
//! horizon; a purged key can be claimed afresh; no node answers a duplicate from a purged record.

use std::time::Duration;

use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as Answer;
use dedup_tests::ledger;
use dedup_tests::Cluster;

fn claim(key: &str, retention_ms: u64) -> pb::CheckAndClaimRequest {
    pb::CheckAndClaimRequest {
        namespace: "retention".into(),
        key: key.as_bytes().to_vec(),
        owner: "w".into(),
        lease_ms: 30_000,
        retention_ms,
        ..Default::default()
    }
}

async fn claim_answer(endpoint: &str, key: &str, retention_ms: u64) -> Answer {
    ledger(endpoint).await.check_and_claim(claim(key, retention_ms)).await.unwrap().into_inner().result.unwrap()
}

/// Claims and completes `key`; returns (token, retained_until_ms).
async fn complete(endpoint: &str, key: &str, retention_ms: u64) -> (u64, u64) {
    let Answer::Claimed(claimed) = claim_answer(endpoint, key, retention_ms).await else { panic!("{key} not claimed") };
    let done = ledger(endpoint)
        .await
        .complete(pb::CompleteRequest {
            namespace: "retention".into(),
            key: key.as_bytes().to_vec(),
            token: claimed.token,
            outcome: Some(pb::Outcome { kind: pb::OutcomeKind::Succeeded as i32, payload: b"done".to_vec() }),
            retention_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    (claimed.token, done.retained_until_ms)
}

async fn get(endpoint: &str, key: &str) -> pb::GetResponse {
    let request = pb::GetRequest {
        namespace: "retention".into(),
        key: key.as_bytes().to_vec(),
        consistency: pb::Consistency::AnyReplica as i32,
    };
    ledger(endpoint).await.get(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_records_are_purged_after_their_retention_on_every_node() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (leader_ep, follower_ep) = (cluster.endpoint(leader), cluster.endpoint(follower));

    let (short_token, short_until) = complete(&leader_ep, "short", 1_000).await;
    complete(&leader_ep, "long", 0).await; // the default retention, 24 h
                                           // The follower answers a duplicate of "short" itself, so its hot tier holds it.
    let target = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied(follower, target, Duration::from_secs(10)).await;
    assert!(matches!(claim_answer(&follower_ep, "short", 0).await, Answer::Completed(_)));

    // Still inside its retention: a write now must not purge it.
    let Answer::Claimed(_) = claim_answer(&leader_ep, "tick-1", 0).await else { panic!("tick") };
    assert!(get(&leader_ep, "short").await.record.is_some(), "purged inside its retention");

    // Past the retention, the next entry purges it (ledger time moves with entries).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let Answer::Claimed(_) = claim_answer(&leader_ep, "tick-2", 0).await else { panic!("tick") };
    let target = cluster.status(leader).await.unwrap().applied_index;
    for id in 1..=3 {
        cluster.wait_applied(id, target, Duration::from_secs(10)).await;
        let read = get(&cluster.endpoint(id), "short").await;
        assert!(read.record.is_none(), "node {id} still holds the purged record");
        assert!(read.purge_horizon_ms >= short_until, "node {id}: horizon {} < {short_until}", read.purge_horizon_ms);
        assert!(get(&cluster.endpoint(id), "long").await.record.is_some(), "node {id} purged a record early");
    }

    // The purged key is claimed afresh, also through the follower whose hot tier had it.
    match claim_answer(&follower_ep, "short", 0).await {
        Answer::Claimed(claimed) => {
            assert_eq!(claimed.attempt, 1);
            assert!(claimed.previous.is_none());
            assert!(claimed.token > short_token, "a new token after purge must still be larger");
        }
        other => panic!("a purged key must be claimable afresh, got {other:?}"),
    }
}

/// With no writes at all, the leader proposes purge-only entries once a retention ends, so an
/// idle ledger does not keep expired records (and their disk space) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_ledger_purges_expired_records_by_itself() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let leader_ep = cluster.endpoint(leader);
    let (_, until) = complete(&leader_ep, "idle-short", 1_000).await;
    complete(&leader_ep, "idle-long", 0).await;
    let written = cluster.status(leader).await.unwrap().applied_index;

    // Nobody writes; within a few purge ticks after the retention ended, every node dropped it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for id in 1..=3 {
        loop {
            let read = get(&cluster.endpoint(id), "idle-short").await;
            if read.record.is_none() {
                assert!(read.purge_horizon_ms >= until, "node {id}: horizon {} < {until}", read.purge_horizon_ms);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node {id} still holds an expired record on an idle ledger");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(get(&cluster.endpoint(id), "idle-long").await.record.is_some(), "node {id} purged a record early");
    }
    let after = cluster.status(leader).await.unwrap().applied_index;
    assert!(after > written, "the purge came from a purge-only entry ({written} -> {after})");
    // Once nothing is due, the leader stops proposing.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let idle = cluster.status(leader).await.unwrap().applied_index;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(cluster.status(leader).await.unwrap().applied_index, idle, "purge-only entries with nothing to purge");
}
