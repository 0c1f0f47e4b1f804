//! Orderly stops and probes with real `dedupd` processes: SIGTERM of a leader under load hands
//! leadership over, exits 0 and loses no acknowledged claim; the readiness probe
//! (`grpc.health.v1`, service `dedup.v1.Ledger`) follows quorum while liveness (`""`) does not;
//! a node configured through `--config FILE` with `--log-format json` serves and logs JSON.

use std::net::TcpListener;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use dedup_client::ClaimAnswer;
use dedup_client::ClaimRequest;
use dedup_client::Consistency;
use dedup_client::DedupClient;
use dedup_client::GetRequest;
use dedup_client::RecordState;
use dedup_tests::dedupctl;
use dedup_tests::node_status;
use dedup_tests::workspace_binary;
use dedup_tests::Cluster;
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `hash` over `endpoints` until every node reports the same applied index; asserts one digest.
async fn agreed_hash(endpoints: &[String], within: Duration) -> (u64, String) {
    let deadline = Instant::now() + within;
    loop {
        let (code, out, err) = dedupctl(endpoints, &["-o", "json", "hash"]).await;
        if code == 0 {
            let answer = json(&out);
            let nodes = answer["nodes"].as_array().expect("nodes").clone();
            let applied: Vec<u64> = nodes.iter().map(|n| n["applied_index"].as_u64().unwrap()).collect();
            if nodes.len() == endpoints.len() && applied.iter().all(|a| *a == applied[0]) {
                let digests: Vec<&str> = nodes.iter().map(|n| n["sha256"].as_str().unwrap()).collect();
                assert!(digests.iter().all(|d| *d == digests[0]), "replicas diverged: {answer}");
                return (applied[0], digests[0].to_string());
            }
        }
        assert!(Instant::now() < deadline, "no agreement on the applied index within {within:?}: {out} {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const CLAIMS_PER_WORKER_MAX: u64 = 500;
const LOAD_MAX: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_under_load_loses_nothing() {
    let grace_ms = 3_000;
    let mut cluster = Cluster::start_with(&["--shutdown-grace-ms", &grace_ms.to_string()]).await;
    let leader = cluster.wait_for_leader(None).await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();

    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..3)
        .map(|worker| {
            let (client, acknowledged, failures, stop, ops) =
                (client.clone(), acknowledged.clone(), failures.clone(), stop.clone(), ops.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                for i in 0..CLAIMS_PER_WORKER_MAX {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > LOAD_MAX {
                        return;
                    }
                    let key = format!("w{worker}-{i}");
                    let request = ClaimRequest::new("sigterm", key.clone(), "w").with_lease(Duration::from_secs(600));
                    match client.check_and_claim(&request).await {
                        Ok(ClaimAnswer::Claimed(claimed)) => acknowledged.lock().unwrap().push((key, claimed.token)),
                        other => failures.lock().unwrap().push(format!("{key}: {other:?}")),
                    }
                    ops.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_ops = |more: u64| {
        let ops = ops.clone();
        async move {
            let target = ops.load(Ordering::SeqCst) + more;
            let deadline = Instant::now() + Duration::from_secs(20);
            while ops.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_ops(30).await;

    cluster.terminate_node(leader);
    let signalled = Instant::now();
    // A handover (at most LEADER_TRANSFER_TIMEOUT, 10 s) then at most the grace period.
    let exit = cluster.wait_exit(leader, Duration::from_millis(10_000 + grace_ms + 5_000)).await;
    let took = signalled.elapsed();
    let exit = exit
        .unwrap_or_else(|| panic!("node {leader} still runs {took:?} after SIGTERM:\n{}", cluster.log_tail(leader)));
    assert!(exit.success(), "SIGTERM must end in exit 0, got {exit:?}:\n{}", cluster.log_tail(leader));
    let log = cluster.log(leader);
    assert!(
        log.contains("handed leadership over before stopping"),
        "node {leader} did not hand over:\n{}",
        cluster.all_logs()
    );
    assert!(log.contains("readiness: NOT_SERVING (shutting down)"), "{}", cluster.log_tail(leader));
    assert!(log.contains("dedupd stopped"), "{}", cluster.log_tail(leader));
    let new_leader = cluster.wait_for_leader(Some(leader)).await;
    assert_ne!(new_leader, leader);

    wait_ops(30).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker).await.expect("a worker hung").unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    eprintln!("{} claims acknowledged; node {leader} stopped in {took:?}", acknowledged.len());
    assert!(failures.is_empty(), "{} claim(s) failed across the SIGTERM: {failures:#?}", failures.len());

    for (key, token) in &acknowledged {
        let request = GetRequest::new("sigterm", key.clone()).with_consistency(Consistency::Linearizable);
        let read = client.get(&request);
        let record = read.await.unwrap_or_else(|e| panic!("{key}: {e}")).record;
        let record = record.unwrap_or_else(|| panic!("acknowledged claim of {key} lost"));
        assert_eq!((record.state, record.token), (RecordState::Claimed, *token), "{key}");
    }

    // The stopped node rejoins with its data and catches up.
    let target = cluster.status(new_leader).await.unwrap().applied_index;
    cluster.start_node(leader);
    let (index, _digest) = agreed_hash(&cluster.endpoints(), Duration::from_secs(30)).await;
    assert!(index >= target, "{index} < {target}");
    assert_ne!(cluster.status(leader).await.unwrap().role, "leader");
}

async fn health_status(address: &str, service: &str) -> Result<ServingStatus, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_string() })
        .await
        .map_err(|e| e.to_string())?;
    ServingStatus::try_from(answer.into_inner().status).map_err(|e| e.to_string())
}

/// Waits up to `within` until `address` answers `service` with `want`.
async fn wait_health(address: &str, service: &str, want: ServingStatus, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = health_status(address, service).await;
        if got == Ok(want) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{address} {service:?}: {got:?}, not {want:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const READINESS: &str = "dedup.v1.Ledger";
const LIVENESS: &str = "";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_quorum_and_liveness_does_not() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    for id in 1..=3 {
        wait_health(&cluster.endpoint(id), READINESS, ServingStatus::Serving, Duration::from_secs(5)).await;
        wait_health(&cluster.endpoint(id), LIVENESS, ServingStatus::Serving, Duration::from_secs(5)).await;
    }

    // The leader alone: it keeps its role (openraft 0.9) but no quorum acknowledges it.
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.kill_node(*id);
    }
    let survivor = cluster.endpoint(leader);
    let took = wait_health(&survivor, READINESS, ServingStatus::NotServing, Duration::from_secs(5)).await;
    eprintln!("readiness NOT_SERVING {took:?} after quorum loss");
    for _ in 0..5 {
        assert_eq!(
            health_status(&survivor, LIVENESS).await,
            Ok(ServingStatus::Serving),
            "liveness must not follow quorum"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for id in &followers {
        cluster.start_node(*id);
    }
    for id in 1..=3 {
        wait_health(&cluster.endpoint(id), READINESS, ServingStatus::Serving, Duration::from_secs(20)).await;
        assert_eq!(health_status(&cluster.endpoint(id), LIVENESS).await, Ok(ServingStatus::Serving));
    }

    // A follower alone: its leader is gone and it cannot win an election.
    let leader = cluster.wait_for_leader(None).await;
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.kill_node(id);
    }
    let address = cluster.endpoint(survivor);
    let took = wait_health(&address, READINESS, ServingStatus::NotServing, Duration::from_secs(10)).await;
    eprintln!("follower readiness NOT_SERVING {took:?} after quorum loss");
    assert_eq!(health_status(&address, LIVENESS).await, Ok(ServingStatus::Serving));
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.start_node(id);
    }
    for id in 1..=3 {
        wait_health(&cluster.endpoint(id), READINESS, ServingStatus::Serving, Duration::from_secs(20)).await;
    }
}

/// A whole cluster stopped at once (`docker compose down`, `helm uninstall`): the leader's
/// handover finds no voter that answers and gives up at once instead of waiting out the
/// transfer bound (it took the whole 10 s before), and every node exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_every_node_at_once_does_not_wait_out_the_transfer_bound() {
    let mut cluster = Cluster::start_with(&["--shutdown-grace-ms", "1000"]).await;
    let leader = cluster.wait_for_leader(None).await;
    for id in 1..=3 {
        cluster.terminate_node(id);
    }
    // Under LEADER_TRANSFER_TIMEOUT (10 s): a leader that waited it out fails this.
    let bound = Duration::from_secs(7);
    for id in 1..=3 {
        let exit = cluster.wait_exit(id, bound).await;
        let exit = exit.unwrap_or_else(|| panic!("node {id} still runs after {bound:?}:\n{}", cluster.log_tail(id)));
        assert!(exit.success(), "node {id}: {exit:?}:\n{}", cluster.log_tail(id));
    }
    let log = cluster.log(leader);
    assert!(
        log.contains("could not hand leadership over") && log.contains("does not answer"),
        "the leader gave up because its target stopped too:\n{}",
        cluster.log_tail(leader)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_follower_and_of_a_waiting_joiner_exits_zero() {
    let mut cluster = Cluster::start_with(&["--shutdown-grace-ms", "2000"]).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.terminate_node(follower);
    let exit = cluster.wait_exit(follower, Duration::from_secs(10)).await;
    let exit = exit.unwrap_or_else(|| panic!("follower still runs:\n{}", cluster.log_tail(follower)));
    assert!(exit.success(), "{exit:?}:\n{}", cluster.log_tail(follower));
    let log = cluster.log(follower);
    assert!(
        log.contains("dedupd stopped") && !log.contains("handed leadership over"),
        "{}",
        cluster.log_tail(follower)
    );
    assert_eq!(cluster.status(leader).await.unwrap().role, "leader", "the leader was not disturbed");

    // A --join node that was never added: nothing to hand over, it just stops.
    cluster.add_node(4, &["--join"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.terminate_node(4);
    let exit = cluster.wait_exit(4, Duration::from_secs(10)).await;
    let exit = exit.unwrap_or_else(|| panic!("joiner still runs:\n{}", cluster.log_tail(4)));
    assert!(exit.success(), "{exit:?}:\n{}", cluster.log_tail(4));

    // The follower comes back with its data and catches up.
    cluster.start_node(follower);
    let target = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied(follower, target, Duration::from_secs(20)).await;
    agreed_hash(&endpoints_of(&cluster, &[1, 2, 3]), Duration::from_secs(20)).await;
}

fn endpoints_of(cluster: &Cluster, ids: &[u64]) -> Vec<String> {
    ids.iter().map(|id| cluster.endpoint(*id)).collect()
}

/// A `dedupd` started by hand, killed when dropped.
struct Standalone {
    child: Child,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_configured_by_file_serves_and_logs_json() {
    let root = tempfile::tempdir().unwrap();
    let stderr_path = root.path().join("dedupd.stderr");
    let data_dir = root.path().join("data");
    let (mut node, address) = 'started: {
        for _attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let address = format!("127.0.0.1:{port}");
            let config = root.path().join("dedupd.toml");
            std::fs::write(
                &config,
                format!(
                    "node-id = 1\nlisten = \"{address}\"\npeers = \"1={address}\"\ndata-dir = \"{}\"\n\
                     heartbeat-ms = 50\nelection-timeout-ms = 300\nshutdown-grace-ms = 2000\n",
                    data_dir.display()
                ),
            )
            .unwrap();
            let stderr = std::fs::File::create(&stderr_path).unwrap();
            let mut command = Command::new(workspace_binary("dedupd"));
            command.arg("--config").arg(&config).args(["--log-format", "json"]);
            for name in ["NODE_ID", "LISTEN", "PEERS", "DATA_DIR", "LOG_FORMAT", "CONFIG", "JOIN", "HEARTBEAT_MS"] {
                command.env_remove(format!("DEDUP_{name}"));
            }
            let child = command
                .env("DEDUP_LOG", "info,openraft=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn dedupd");
            let mut node = Standalone { child };
            tokio::time::sleep(Duration::from_millis(300)).await;
            if node.child.try_wait().unwrap().is_none() {
                break 'started (node, address);
            }
            eprintln!("dedupd exited at start:\n{}", std::fs::read_to_string(&stderr_path).unwrap_or_default());
        }
        panic!("dedupd did not start in 3 attempts");
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if node_status(&address).await.is_ok_and(|s| s.role == "leader") {
            break;
        }
        assert!(node.child.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&stderr_path).unwrap());
        assert!(Instant::now() < deadline, "no leader: {}", std::fs::read_to_string(&stderr_path).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let endpoints = vec![address.clone()];
    let (code, out, err) = dedupctl(&endpoints, &["-o", "json", "status"]).await;
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    assert_eq!(status["leader_id"], 1, "{status}");
    assert_eq!(status["nodes"][0]["address"], address.as_str(), "{status}");
    let (code, out, err) = dedupctl(&endpoints, &["-o", "json", "claim", "cfg", "k", "--owner", "w"]).await;
    assert_eq!((code, json(&out)["state"].as_str()), (0, Some("CLAIMED")), "{err}");
    assert!(data_dir.is_dir(), "the data folder comes from the file");

    // An orderly stop, so that the log is complete.
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = node.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "dedupd did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");

    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    let mut messages = Vec::new();
    for line in &lines {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(value.is_object(), "{line}");
        assert!(value["level"].is_string() && value["timestamp"].is_string(), "{line}");
        messages.push(value["fields"]["message"].as_str().unwrap_or_default().to_string());
    }
    for expected in ["dedupd serving", "shutdown requested", "dedupd stopped"] {
        assert!(messages.iter().any(|m| m == expected), "no {expected:?} in {messages:?}");
    }
    let serving = lines.iter().map(|l| json(l)).find(|v| v["fields"]["message"] == "dedupd serving").unwrap();
    assert_eq!(serving["fields"]["node_id"], 1, "{serving}");
    assert_eq!(serving["fields"]["listen"], address.as_str(), "{serving}");
}

/// A claim parked on the stopping node (`wait_ms` longer than the grace period) does not hold
/// the process past `--shutdown-grace-ms`: it still exits 0 in time, and the parked caller gets
/// an answer or an error at once instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_parked_claim_stops_within_the_grace_period() {
    let grace = Duration::from_millis(2_000);
    let mut cluster = Cluster::start_with(&["--shutdown-grace-ms", &grace.as_millis().to_string()]).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let claim = |owner: &str, wait_ms: u64| dedup_proto::v1::CheckAndClaimRequest {
        namespace: "parked".into(),
        key: b"k".to_vec(),
        owner: owner.into(),
        lease_ms: 60_000,
        wait_ms,
        ..Default::default()
    };
    let first = dedup_tests::ledger(&cluster.endpoint(leader)).await.check_and_claim(claim("a", 0)).await.unwrap();
    assert!(matches!(first.into_inner().result, Some(dedup_proto::v1::check_and_claim_response::Result::Claimed(_))));
    let mut parked_client = dedup_tests::ledger(&cluster.endpoint(follower)).await;
    let parked = tokio::spawn(async move {
        let answer = parked_client.check_and_claim(claim("b", 20_000)).await;
        (answer.map(|a| a.into_inner()), Instant::now())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.status(follower).await.map_or(0, |s| s.waiters_parked) == 0 {
        assert!(Instant::now() < deadline, "the claim never parked on node {follower}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.terminate_node(follower);
    let signalled = Instant::now();
    let exit = cluster.wait_exit(follower, grace + Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM:\n{}", cluster.log_tail(follower)));
    assert!(exit.success(), "{exit:?}:\n{}", cluster.log_tail(follower));
    assert!(took < grace + Duration::from_secs(3), "stopped after {took:?}, grace {grace:?}");
    let (answer, answered) = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("the parked caller still hangs after the node exited")
        .unwrap();
    eprintln!("stopped in {took:?}; parked caller got {answer:?} {:?} after SIGTERM", answered - signalled);
}
