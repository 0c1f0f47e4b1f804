//! Raft snapshots and log truncation (DESIGN §7): with a short snapshot policy the log is
//! truncated under load, and a node that lost its whole data folder rejoins by installing the
//! leader's snapshot and then holds every record the others hold.
//!
//! The completions carry 1,200-byte outcomes, so their entries are near ENTRY_BYTES_MAX and the
//! leader's catch-up AppendEntries are as large as they get.

use std::time::Duration;
use std::time::Instant;

use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_batch_item::Result as ClaimItem;
use dedup_proto::v1::check_and_claim_response::Result as Answer;
use dedup_tests::ledger;
use dedup_tests::Cluster;

const NAMESPACE: &str = "snap";
const BATCHES: usize = 60;
const BATCH: usize = 64;
const OUTCOME_BYTES: usize = 1_200;

fn key(batch: usize, item: usize) -> Vec<u8> {
    format!("key-{batch:03}-{item:03}").into_bytes()
}

/// Claims and completes `BATCHES * BATCH` keys, one batch pair per two Raft entries.
async fn write_completed_records(endpoint: &str) {
    let mut client = ledger(endpoint).await;
    for batch in 0..BATCHES {
        let items = (0..BATCH)
            .map(|item| pb::CheckAndClaimRequest {
                namespace: NAMESPACE.into(),
                key: key(batch, item),
                owner: "writer".into(),
                lease_ms: 60_000,
                ..Default::default()
            })
            .collect();
        let claimed = client.check_and_claim_batch(pb::CheckAndClaimBatchRequest { items }).await.unwrap().into_inner();
        let items = claimed
            .items
            .into_iter()
            .enumerate()
            .map(|(item, answer)| {
                let Some(ClaimItem::Answer(pb::CheckAndClaimResponse { result: Some(Answer::Claimed(c)), .. })) =
                    answer.result
                else {
                    panic!("batch {batch} item {item} not claimed")
                };
                pb::CompleteRequest {
                    namespace: NAMESPACE.into(),
                    key: key(batch, item),
                    token: c.token,
                    outcome: Some(pb::Outcome {
                        kind: pb::OutcomeKind::Succeeded as i32,
                        payload: vec![b'o'; OUTCOME_BYTES],
                    }),
                    retention_ms: 0,
                }
            })
            .collect();
        client.complete_batch(pb::CompleteBatchRequest { items }).await.unwrap();
    }
}

/// The record of every written key as node `endpoint` has applied it (ANY_REPLICA reads).
async fn records(endpoint: &str) -> Vec<(Vec<u8>, i32, u64)> {
    let mut client = ledger(endpoint).await;
    let mut seen = Vec::new();
    for batch in 0..BATCHES {
        for item in 0..BATCH {
            let request = pb::GetRequest {
                namespace: NAMESPACE.into(),
                key: key(batch, item),
                consistency: pb::Consistency::AnyReplica as i32,
            };
            let answer = client.get(request).await.unwrap().into_inner();
            let record = answer.record.unwrap_or_else(|| panic!("{endpoint} lacks key {batch}/{item}"));
            seen.push((record.key, record.state, record.token));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_by_installing_the_leaders_snapshot() {
    let mut cluster = Cluster::start_with(&["--snapshot-logs", "40"]).await;
    let leader = cluster.wait_for_leader(None).await;
    let wiped = (1..=3).find(|id| *id != leader).unwrap();
    write_completed_records(&cluster.endpoint(leader)).await;

    // The log was snapshotted and truncated on the leader: a fresh node cannot replay it.
    let status = cluster.status(leader).await.unwrap();
    assert!(status.snapshot_index > 0 && status.purged_index > 0, "no snapshot or truncation: {status:?}");

    cluster.kill_node(wiped);
    let data_dir = cluster.nodes[&wiped].data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("wipe the node's data folder");
    let wiped_at = Instant::now();
    cluster.start_node(wiped);
    let target = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied(wiped, target, Duration::from_secs(60)).await;
    eprintln!("wiped node {wiped} caught up to index {target} in {:?}", wiped_at.elapsed());
    assert_eq!(cluster.log_count(wiped, "installed a snapshot from the leader"), 1, "{}", cluster.log_tail(wiped));

    let expected = records(&cluster.endpoint(leader)).await;
    assert!(expected.iter().all(|(_, state, _)| *state == pb::RecordState::Completed as i32));
    assert_eq!(records(&cluster.endpoint(wiped)).await, expected, "the rejoined node differs from the leader");

    // It answers duplicates itself again, from what the snapshot gave it.
    let duplicate = pb::CheckAndClaimRequest {
        namespace: NAMESPACE.into(),
        key: key(7, 7),
        owner: "late".into(),
        lease_ms: 1_000,
        ..Default::default()
    };
    let answer = ledger(&cluster.endpoint(wiped)).await.check_and_claim(duplicate).await.unwrap().into_inner();
    assert!(matches!(answer.result, Some(Answer::Completed(_))), "{answer:?}");
}
