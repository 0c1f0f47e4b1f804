//! The client library and dedupctl against a real cluster: `once` runs an action once per key,
//! retries after a failure, keeps a long action's lease alive, and survives a dead endpoint;
//! dedupctl's verbs print the proto's fields and exit non-zero with the reason on a rejection.

use std::process::Command;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dedup_client::ClaimAnswer;
use dedup_client::ClaimRequest;
use dedup_client::DedupClient;
use dedup_client::Failure;
use dedup_client::Once;
use dedup_client::OnceError;
use dedup_client::OnceOptions;
use dedup_client::PreviousEnd;
use dedup_tests::workspace_binary;
use dedup_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_runs_an_action_once_per_key() {
    let cluster = Cluster::start().await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();
    let runs = Arc::new(AtomicU32::new(0));

    let run = |runs: Arc<AtomicU32>| {
        move |claim: dedup_client::ClaimContext| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Failure<String>>(format!("charged under token {}", claim.token).into_bytes())
        }
    };
    let first = client.once("payments", "charge-1", OnceOptions::new("worker-a"), run(runs.clone())).await.unwrap();
    assert!(!first.is_duplicate());
    let second = client.once("payments", "charge-1", OnceOptions::new("worker-b"), run(runs.clone())).await.unwrap();
    assert!(second.is_duplicate(), "a retry must get the stored outcome");
    assert_eq!(second.outcome(), first.outcome());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the action ran exactly once");

    // A retryable failure releases the claim: the next call runs the action again, told why.
    let failed = client
        .once("payments", "charge-2", OnceOptions::new("worker-a"), |_claim| async {
            Err::<Vec<u8>, _>(Failure::Retryable("card network down".to_string()))
        })
        .await;
    assert!(matches!(failed, Err(OnceError::Action { .. })), "{failed:?}");
    let retried = client
        .once("payments", "charge-2", OnceOptions::new("worker-b"), |claim| async move {
            let previous = claim.previous.clone().expect("the retry is told about the failed attempt");
            assert_eq!(previous.ended, PreviousEnd::ReleasedRetryable);
            assert_eq!(claim.attempt, 2);
            Ok::<_, Failure<String>>(b"charged".to_vec())
        })
        .await
        .unwrap();
    assert!(matches!(retried, Once::Ran { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_keeps_the_lease_of_a_long_action_alive() {
    let cluster = Cluster::start().await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();
    let lease = Duration::from_millis(600);
    let observer = client.clone();
    let action = |_claim| async move {
        // Well past the initial lease: without extensions another worker could take the key over.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let probe = ClaimRequest::new("jobs", "long-1", "intruder");
        let answer = observer.check_and_claim(&probe).await.expect("probe claim");
        assert!(matches!(answer, ClaimAnswer::InProgress(_)), "the lease lapsed under a running action: {answer:?}");
        Ok::<_, Failure<String>>(b"finished".to_vec())
    };
    let done = client.once("jobs", "long-1", OnceOptions::new("worker-a").with_lease(lease), action).await.unwrap();
    assert!(matches!(done, Once::Ran { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_survives_a_dead_endpoint_and_a_killed_leader() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();
    let before = client.once("kv", "a", OnceOptions::new("w"), |_| async { Ok::<_, Failure<()>>(b"1".to_vec()) });
    before.await.unwrap();

    cluster.kill_node(leader);
    // The client finds the new leader by itself (retries within its deadline).
    let after = client.once("kv", "b", OnceOptions::new("w"), |_| async { Ok::<_, Failure<()>>(b"2".to_vec()) });
    assert!(matches!(after.await.unwrap(), Once::Ran { .. }));
    let duplicate = client.once("kv", "a", OnceOptions::new("w"), |_| async { Ok::<_, Failure<()>>(b"x".to_vec()) });
    assert_eq!(duplicate.await.unwrap().outcome().payload, b"1");
}

fn dedupctl(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(workspace_binary("dedupctl"))
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .args(args)
        .output()
        .expect("run dedupctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupctl_verbs_against_a_real_cluster() {
    let cluster = Cluster::start().await;

    let (code, out, err) = dedupctl(&cluster, &["-o", "json", "claim", "orders", "o-1", "--owner", "alice"]);
    assert_eq!(code, 0, "{err}");
    let claimed = json(&out);
    assert_eq!(claimed["state"], "CLAIMED");
    let token = claimed["token"].as_u64().expect("token");

    let (code, out, _) = dedupctl(&cluster, &["-o", "json", "claim", "orders", "o-1", "--owner", "bob"]);
    assert_eq!((code, json(&out)["state"].as_str()), (0, Some("IN_PROGRESS")));

    let (code, _, err) =
        dedupctl(&cluster, &["extend", "orders", "o-1", "--token", &token.to_string(), "--lease-ms", "60000"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        dedupctl(&cluster, &["complete", "orders", "o-1", "--token", &token.to_string(), "--outcome", "shipped"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, _) = dedupctl(&cluster, &["-o", "json", "claim", "orders", "o-1", "--owner", "carol"]);
    let completed = json(&out);
    assert_eq!((code, completed["state"].as_str()), (0, Some("COMPLETED")));
    assert_eq!(completed["outcome"]["payload"], "shipped");

    let (code, out, _) = dedupctl(&cluster, &["-o", "json", "get", "orders", "o-1"]);
    assert_eq!((code, json(&out)["record"]["state"].as_str()), (0, Some("COMPLETED")), "{out}");

    // A rejection: reason on stderr, exit code 3.
    let (code, _, err) =
        dedupctl(&cluster, &["complete", "orders", "o-1", "--token", &token.to_string(), "--outcome", "lost"]);
    assert_eq!(code, 3);
    assert!(err.contains("OUTCOME_IMMUTABLE"), "{err}");
    // Bad input: exit code 2 with the limit named.
    let long_key = "k".repeat(600);
    let (code, _, err) = dedupctl(&cluster, &["claim", "orders", &long_key, "--owner", "alice"]);
    assert_eq!(code, 2);
    assert!(err.contains("KEY_TOO_LONG") && err.contains("512"), "{err}");

    // status: a leader and three nodes.
    let (code, out, err) = dedupctl(&cluster, &["-o", "json", "status"]);
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    let text = status.to_string();
    assert!(text.contains("\"leader\""), "{text}");
    for id in 1..=3 {
        assert!(text.contains(&cluster.endpoint(id)), "node {id} missing from {text}");
    }
}
