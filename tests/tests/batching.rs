//! DESIGN §7: concurrent requests on the leader are coalesced into shared Raft entries, so a
//! claim costs a fraction of an entry and of a flush. Checked with the leader's own counters.

use std::collections::BTreeSet;

use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as Answer;
use dedup_tests::ledger;
use dedup_tests::Cluster;

const CONCURRENT_CLAIMS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_share_raft_entries_and_flushes() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let endpoint = cluster.endpoint(leader);
    let before = cluster.status(leader).await.unwrap();

    let client = ledger(&endpoint).await;
    let calls = (0..CONCURRENT_CLAIMS).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let request = pb::CheckAndClaimRequest {
                namespace: "batch".into(),
                key: format!("key-{i}").into_bytes(),
                owner: "burst".into(),
                lease_ms: 60_000,
                ..Default::default()
            };
            match client.check_and_claim(request).await.expect("claim").into_inner().result {
                Some(Answer::Claimed(claimed)) => claimed.token,
                other => panic!("expected CLAIMED, got {other:?}"),
            }
        })
    });
    let mut tokens = BTreeSet::new();
    for call in calls.collect::<Vec<_>>() {
        assert!(tokens.insert(call.await.unwrap()), "two claims got the same token");
    }
    assert_eq!(tokens.len(), CONCURRENT_CLAIMS);

    let after = cluster.status(leader).await.unwrap();
    let commands = after.commands_proposed - before.commands_proposed;
    let entries = after.entries_proposed - before.entries_proposed;
    let flushes = after.log_flushes - before.log_flushes;
    println!("{CONCURRENT_CLAIMS} concurrent claims: {entries} entries, {flushes} leader log flushes");
    assert_eq!(commands, CONCURRENT_CLAIMS as u64, "every claim went through the leader's proposer");
    assert!(entries < commands / 2, "{commands} claims took {entries} entries: not coalesced");
    assert!(flushes < commands / 2, "{commands} claims took {flushes} leader flushes");
}
