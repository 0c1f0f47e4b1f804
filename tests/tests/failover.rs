//! Crashes with real processes (DESIGN §4.2, §4.4): `kill -9` of the leader loses no
//! acknowledged write and a new leader keeps tokens growing; a follower that was down catches up.

use std::time::Duration;

use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as Answer;
use dedup_tests::ledger;
use dedup_tests::Cluster;

fn claim(key: &str, owner: &str) -> pb::CheckAndClaimRequest {
    pb::CheckAndClaimRequest {
        namespace: "failover".into(),
        key: key.as_bytes().to_vec(),
        owner: owner.into(),
        lease_ms: 60_000,
        ..Default::default()
    }
}

fn complete(key: &str, token: u64) -> pb::CompleteRequest {
    pb::CompleteRequest {
        namespace: "failover".into(),
        key: key.as_bytes().to_vec(),
        token,
        outcome: Some(pb::Outcome {
            kind: pb::OutcomeKind::Succeeded as i32,
            payload: format!("done:{key}").into_bytes(),
        }),
        retention_ms: 0,
    }
}

/// Claims and completes `keys` through `endpoint`; returns the acknowledged (key, token) pairs.
async fn claim_and_complete(endpoint: &str, keys: &[String]) -> Vec<(String, u64)> {
    let mut acknowledged = Vec::new();
    for key in keys {
        let answer = ledger(endpoint).await.check_and_claim(claim(key, "writer")).await.expect("claim");
        let Some(Answer::Claimed(claimed)) = answer.into_inner().result else { panic!("{key} not claimed") };
        ledger(endpoint).await.complete(complete(key, claimed.token)).await.expect("complete");
        acknowledged.push((key.clone(), claimed.token));
    }
    acknowledged
}

/// Asserts that every acknowledged completion is answered as COMPLETED by `endpoint`.
async fn assert_all_completed(endpoint: &str, acknowledged: &[(String, u64)]) {
    for (key, token) in acknowledged {
        let answer = ledger(endpoint).await.check_and_claim(claim(key, "checker")).await.expect("duplicate check");
        match answer.into_inner().result {
            Some(Answer::Completed(c)) => {
                assert_eq!(c.token, *token, "{key}: completing token changed");
                assert_eq!(c.outcome.unwrap().payload, format!("done:{key}").into_bytes(), "{key}: outcome changed");
            }
            other => panic!("acknowledged completion of {key} lost on {endpoint}: {other:?}"),
        }
    }
}

/// Retries a claim on the surviving nodes until the new leader serves it (bounded).
async fn claim_on_survivors(endpoints: &[String], key: &str) -> pb::Claimed {
    for _attempt in 0..100 {
        for endpoint in endpoints {
            if let Ok(answer) = ledger(endpoint).await.check_and_claim(claim(key, "after-failover")).await {
                match answer.into_inner().result {
                    Some(Answer::Claimed(claimed)) => return claimed,
                    other => panic!("{key}: expected CLAIMED, got {other:?}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no survivor served a claim within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("before-{i}")).collect();
    // Half through the leader, half through a follower (forwarded).
    let mut acknowledged = claim_and_complete(&cluster.endpoint(leader), &keys[..20]).await;
    acknowledged.extend(claim_and_complete(&cluster.endpoint(follower), &keys[20..]).await);
    let highest_token = acknowledged.iter().map(|(_, t)| *t).max().unwrap();
    let term_before = cluster.status(follower).await.unwrap().term;

    cluster.kill_node(leader);
    let new_leader = cluster.wait_for_leader(Some(leader)).await;
    assert_ne!(new_leader, leader);
    assert!(cluster.status(new_leader).await.unwrap().term > term_before, "a new term began");

    let survivors: Vec<String> = (1..=3).filter(|id| *id != leader).map(|id| cluster.endpoint(id)).collect();
    let fresh = claim_on_survivors(&survivors, "after-1").await;
    assert!(fresh.token > highest_token, "token {} after failover must exceed {highest_token}", fresh.token);
    for endpoint in &survivors {
        assert_all_completed(endpoint, &acknowledged).await;
    }

    // The old leader comes back, rejoins as a follower and serves the same answers.
    cluster.start_node(leader);
    let target = cluster.status(new_leader).await.unwrap().applied_index;
    cluster.wait_applied(leader, target, Duration::from_secs(30)).await;
    assert_all_completed(&cluster.endpoint(leader), &acknowledged).await;
    assert_ne!(cluster.status(leader).await.unwrap().role, "leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let leader_endpoint = cluster.endpoint(leader);
    let mut acknowledged = claim_and_complete(&leader_endpoint, &["early".to_string()]).await;

    cluster.kill_node(follower);
    // Two of three nodes are a quorum: writes go on while the follower is down.
    let keys: Vec<String> = (0..30).map(|i| format!("while-down-{i}")).collect();
    acknowledged.extend(claim_and_complete(&leader_endpoint, &keys).await);

    cluster.start_node(follower);
    let target = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied(follower, target, Duration::from_secs(30)).await;
    // Read the follower's own state (ANY_REPLICA): everything written while it was down is there.
    for (key, token) in &acknowledged {
        let read = ledger(&cluster.endpoint(follower))
            .await
            .get(pb::GetRequest {
                namespace: "failover".into(),
                key: key.as_bytes().to_vec(),
                consistency: pb::Consistency::AnyReplica as i32,
            })
            .await
            .expect("local read")
            .into_inner();
        let record = read.record.unwrap_or_else(|| panic!("{key} missing on the restarted follower"));
        assert_eq!((record.state, record.token), (pb::RecordState::Completed as i32, *token));
        assert!(read.applied_index >= target);
    }
}
