//! Runs a side effect at most once per key with `DedupClient::once`.
//!
//! Start the local cluster (`scripts/local-cluster.sh`, endpoints 127.0.0.1:7101..7103; set
//! `DEDUP_ENDPOINTS` to use others), then:
//!
//! ```text
//! cargo run -p dedup-client --example once -- order-42    # runs the action, stores its outcome
//! cargo run -p dedup-client --example once -- order-42    # duplicate: prints the stored outcome
//! cargo run -p dedup-client --example once -- declined    # a final failure, stored and replayed
//! ```

use std::time::Duration;

use dedup_client::parse_endpoint_list;
use dedup_client::DedupClient;
use dedup_client::Failure;
use dedup_client::Once;
use dedup_client::OnceError;
use dedup_client::OnceOptions;
use dedup_client::LOCAL_CLUSTER_ENDPOINTS;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = std::env::args().nth(1).unwrap_or_else(|| "order-42".to_string());
    // DEDUP_ENDPOINTS (comma separated) overrides the local cluster's endpoints, as for dedupctl.
    let client = match std::env::var("DEDUP_ENDPOINTS") {
        Ok(list) => DedupClient::new(parse_endpoint_list(&list)?)?,
        Err(_) => DedupClient::new(LOCAL_CLUSTER_ENDPOINTS)?,
    };
    let options = OnceOptions::new(format!("example-{}", std::process::id())).with_lease(Duration::from_secs(10));

    let declined = key == "declined";
    let result = client
        .once("examples", key.as_bytes(), options, |claim| async move {
            println!("claimed: running the action under fencing token {} (attempt {})", claim.token, claim.attempt);
            if let Some(previous) = claim.previous.as_ref().filter(|p| p.may_have_taken_effect()) {
                // An earlier attempt may have had its effect: look before acting again.
                println!(
                    "previous attempt by {} ended {}: reconciling first",
                    previous.owner,
                    previous.ended.as_str_name()
                );
            }
            // The side effect goes here, e.g. a payment API call that is given claim.token.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if claim.lease_lost().is_some() {
                // Someone took the key over while we ran; do not take an irreversible step now.
                return Err(Failure::Retryable("lease lost".to_string()));
            }
            if declined {
                // A failure that must not be retried: stored as FAILED_FINAL and replayed.
                return Err(Failure::final_with("card declined", "the card was declined".to_string()));
            }
            Ok(format!("shipped under token {}", claim.token).into_bytes())
        })
        .await;

    match result {
        Ok(Once::Ran { outcome, .. }) => println!("ran: {}", String::from_utf8_lossy(&outcome.payload)),
        Ok(Once::Duplicate(done)) => println!(
            "duplicate: not run again; stored outcome {} {:?} (token {})",
            done.outcome.kind.as_str_name(),
            String::from_utf8_lossy(&done.outcome.payload),
            done.token
        ),
        Err(OnceError::InProgress(busy)) => {
            println!("in progress: {} holds the key; try again in {:?}", busy.owner, busy.retry_after)
        }
        Err(OnceError::Final { error, .. }) => println!("failed for good (stored, replayed to duplicates): {error}"),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
    Ok(())
}
