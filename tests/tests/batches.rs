//! Batches (DESIGN §3): CheckAndClaimBatch and CompleteBatch put all their items in one Raft
//! entry and answer each item in request order; a bad item gets its own error and the others
//! still apply; batches over the named limits are refused as a whole.

use dedup_client::ClaimAnswer;
use dedup_client::ClaimRequest;
use dedup_client::CompleteRequest;
use dedup_client::DedupClient;
use dedup_client::Error;
use dedup_client::Outcome;
use dedup_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_entry_with_one_answer_per_item() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // Through a follower: the whole batch is forwarded to the leader.
    let client = DedupClient::new([cluster.endpoint(follower)]).unwrap();

    let mut requests: Vec<ClaimRequest> = (0..100).map(|i| ClaimRequest::new("batch", format!("k-{i}"), "w")).collect();
    requests.push(ClaimRequest::new("batch", vec![b'x'; 600], "w")); // over KEY_BYTES_MAX
    requests.push(ClaimRequest::new("batch", "k-0", "someone-else")); // k-0 again, claimed above
    let answers = client.check_and_claim_batch(&requests).await.unwrap();
    assert_eq!(answers.len(), requests.len());

    let mut tokens = Vec::new();
    for (i, answer) in answers[..100].iter().enumerate() {
        match answer {
            Ok(ClaimAnswer::Claimed(claimed)) => tokens.push(claimed.token),
            other => panic!("item {i}: expected CLAIMED, got {other:?}"),
        }
    }
    let entry = tokens[0] >> 16;
    assert!(tokens.iter().all(|t| t >> 16 == entry), "the batch's claims came from more than one entry");
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens follow request order");
    match &answers[100] {
        Err(Error::InvalidArgument { reason, .. }) => assert_eq!(reason, "KEY_TOO_LONG"),
        other => panic!("the oversized key must be refused on its own, got {other:?}"),
    }
    assert!(matches!(answers[101], Ok(ClaimAnswer::InProgress(_))), "{:?}", answers[101]);

    // Complete them all in one batch, plus one stale token that must be refused on its own.
    let mut completes: Vec<CompleteRequest> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            CompleteRequest::new("batch", format!("k-{i}"), *token, Outcome::succeeded(format!("done-{i}")))
        })
        .collect();
    completes.push(CompleteRequest::new("batch", "k-1", tokens[1] - 1, Outcome::succeeded("zombie")));
    let acks = client.complete_batch(&completes).await.unwrap();
    assert_eq!(acks.len(), completes.len());
    assert!(acks[..100].iter().all(|ack| ack.as_ref().is_ok_and(|a| !a.replayed)), "{acks:?}");
    match &acks[100] {
        Err(error) => assert!(matches!(error.reason(), "FENCED" | "NOT_CLAIMED"), "{error}"),
        Ok(ack) => panic!("a token never current for k-1 completed it: {ack:?}"),
    }
    let duplicate = client.check_and_claim(&ClaimRequest::new("batch", "k-7", "late")).await.unwrap();
    match duplicate {
        ClaimAnswer::Completed(done) => assert_eq!(done.outcome.payload, b"done-7"),
        other => panic!("expected COMPLETED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_limits_are_refused_whole() {
    let cluster = Cluster::start().await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();

    let too_many: Vec<ClaimRequest> = (0..257).map(|i| ClaimRequest::new("batch", format!("m-{i}"), "w")).collect();
    let error = client.check_and_claim_batch(&too_many).await.unwrap_err();
    assert_eq!(error.reason(), "BATCH_TOO_LARGE");
    assert!(error.to_string().contains("256"), "{error}");
    assert_eq!(client.check_and_claim_batch(&[]).await.unwrap_err().reason(), "BATCH_EMPTY");

    // Three 40 KiB outcomes fit a gRPC message (256 KiB) but not one Raft entry (96 KiB).
    let claims: Vec<ClaimRequest> = (0..3).map(|i| ClaimRequest::new("batch", format!("big-{i}"), "w")).collect();
    let tokens: Vec<u64> = client
        .check_and_claim_batch(&claims)
        .await
        .unwrap()
        .into_iter()
        .map(|a| match a {
            Ok(ClaimAnswer::Claimed(c)) => c.token,
            other => panic!("{other:?}"),
        })
        .collect();
    let big: Vec<CompleteRequest> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| CompleteRequest::new("batch", format!("big-{i}"), *t, Outcome::succeeded(vec![b'o'; 40 * 1024])))
        .collect();
    let error = client.complete_batch(&big).await.unwrap_err();
    assert_eq!(error.reason(), "BATCH_TOO_LARGE");
    assert!(error.to_string().contains("98304"), "the message names the entry limit: {error}");
    // Nothing of the refused batch applied: each completes on its own.
    for request in &big {
        client.complete(request).await.unwrap();
    }
}
