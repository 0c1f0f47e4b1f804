//! The fast duplicate path (DESIGN §6): a duplicate claim of a COMPLETED key is answered by
//! whichever node receives it, from its hot tier or sled, with no Raft entry; the hot tier keeps
//! within its byte budget.

use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as Answer;
use dedup_tests::ledger;
use dedup_tests::reason;
use dedup_tests::Cluster;
use std::time::Duration;

const DUPLICATES: usize = 300;

fn claim(key: &str, owner: &str, fingerprint: &[u8]) -> pb::CheckAndClaimRequest {
    pb::CheckAndClaimRequest {
        namespace: "hot".into(),
        key: key.as_bytes().to_vec(),
        owner: owner.into(),
        lease_ms: 30_000,
        fingerprint: fingerprint.to_vec(),
        ..Default::default()
    }
}

async fn claim_and_complete(endpoint: &str, key: &str, fingerprint: &[u8], payload: Vec<u8>) {
    let answer = ledger(endpoint).await.check_and_claim(claim(key, "first", fingerprint)).await.unwrap();
    let Some(Answer::Claimed(claimed)) = answer.into_inner().result else { panic!("{key} not claimed") };
    let complete = pb::CompleteRequest {
        namespace: "hot".into(),
        key: key.as_bytes().to_vec(),
        token: claimed.token,
        outcome: Some(pb::Outcome { kind: pb::OutcomeKind::Succeeded as i32, payload }),
        retention_ms: 0,
    };
    ledger(endpoint).await.complete(complete).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_storm_on_a_follower_writes_nothing_to_the_log() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    claim_and_complete(&cluster.endpoint(leader), "order-1", b"fp-a", b"shipped".to_vec()).await;
    let target = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied(follower, target, Duration::from_secs(10)).await;
    let leader_before = cluster.status(leader).await.unwrap();
    let follower_before = cluster.status(follower).await.unwrap();

    let client = ledger(&cluster.endpoint(follower)).await;
    let storm = (0..DUPLICATES).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            // Half without a fingerprint, half with the stored one: both are duplicates.
            let fingerprint: &[u8] = if i % 2 == 0 { b"" } else { b"fp-a" };
            client.check_and_claim(claim("order-1", &format!("retry-{i}"), fingerprint)).await.unwrap().into_inner()
        })
    });
    for call in storm.collect::<Vec<_>>() {
        let answer = call.await.unwrap();
        match answer.result {
            Some(Answer::Completed(c)) => assert_eq!(c.outcome.unwrap().payload, b"shipped"),
            other => panic!("expected COMPLETED, got {other:?}"),
        }
        assert!(answer.applied_index >= target, "the answer names the index it reflects");
    }
    // A different fingerprint is refused on the fast path too.
    let mismatch = ledger(&cluster.endpoint(follower)).await.check_and_claim(claim("order-1", "x", b"fp-b")).await;
    assert_eq!(reason(&mismatch.unwrap_err()), "FINGERPRINT_MISMATCH");

    let leader_after = cluster.status(leader).await.unwrap();
    let follower_after = cluster.status(follower).await.unwrap();
    assert_eq!(leader_after.last_log_index, leader_before.last_log_index, "duplicates wrote Raft entries");
    assert_eq!(
        follower_after.duplicates_answered_locally - follower_before.duplicates_answered_locally,
        DUPLICATES as u64
    );
    assert!(follower_after.hot_tier_hits > follower_before.hot_tier_hits, "the hot tier answered");

    // A new key through the same follower still goes through the leader.
    let answer = ledger(&cluster.endpoint(follower)).await.check_and_claim(claim("order-2", "w", b"")).await.unwrap();
    assert!(matches!(answer.into_inner().result, Some(Answer::Claimed(_))));
    assert!(cluster.status(leader).await.unwrap().last_log_index > leader_after.last_log_index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_tier_stays_within_its_byte_budget() {
    let budget: u64 = 64 * 1024;
    let mut cluster = Cluster::start_with(&["--hot-tier-bytes", &budget.to_string()]).await;
    let endpoint = cluster.endpoint(1);
    // 200 completed keys with 2 KiB outcomes: about 400 KiB, six times the budget.
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move { claim_and_complete(&endpoint, &format!("big-{i}"), b"", vec![b'o'; 2048]).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for i in 0..200 {
        let answer = ledger(&endpoint).await.check_and_claim(claim(&format!("big-{i}"), "dup", b"")).await.unwrap();
        assert!(matches!(answer.into_inner().result, Some(Answer::Completed(_))), "big-{i}");
    }
    let leader = cluster.wait_for_leader(None).await;
    let target = cluster.status(leader).await.unwrap().applied_index;
    for id in 1..=3 {
        // Measure once the node has applied everything (its apply fills the hot tier).
        cluster.wait_applied(id, target, std::time::Duration::from_secs(10)).await;
        let status = cluster.status(id).await.unwrap();
        assert_eq!(status.hot_tier_budget_bytes, budget);
        assert!(
            status.hot_tier_bytes <= budget,
            "node {id}: {} bytes cached over a {budget} budget",
            status.hot_tier_bytes
        );
        assert!(status.hot_tier_entries > 0, "node {id} cached nothing");
    }
}
