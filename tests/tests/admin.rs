//! The operator verbs of `dedupctl` against real `dedupd` processes (the `dedup.v1.Admin`
//! service): status, health and state hash across the cluster; adding, promoting and removing a
//! member; leader transfer under client load; key listing and repair with its audit trail and
//! namespace stats; snapshots on demand. Every verb runs as a `dedupctl -o json` process and its
//! JSON is what is checked, as an operator's script would read it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use dedup_client::ClaimAnswer;
use dedup_client::ClaimRequest;
use dedup_client::CompleteRequest;
use dedup_client::Consistency;
use dedup_client::DedupClient;
use dedup_client::GetRequest;
use dedup_client::Outcome;
use dedup_client::RecordState;
use dedup_tests::dedupctl;
use dedup_tests::Cluster;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `dedupctl -o json ARGS` against `endpoints`; it must exit 0. Returns its parsed stdout.
async fn ctl(endpoints: &[String], args: &[&str]) -> Value {
    let full: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
    let (code, out, err) = dedupctl(endpoints, &full).await;
    assert_eq!(code, 0, "dedupctl {args:?} exited {code}\nstderr: {err}\nstdout: {out}");
    json(&out)
}

/// `dedupctl -o json ARGS` that must fail: returns its exit code and stderr.
async fn ctl_fails(endpoints: &[String], args: &[&str]) -> (i32, String) {
    let full: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
    let (code, out, err) = dedupctl(endpoints, &full).await;
    assert_ne!(code, 0, "dedupctl {args:?} should have failed; stdout: {out}");
    (code, err)
}

fn endpoints_of(cluster: &Cluster, ids: &[u64]) -> Vec<String> {
    ids.iter().map(|id| cluster.endpoint(*id)).collect()
}

/// Claims `key` (long lease) through dedupctl and returns the token; it must be CLAIMED.
async fn claim(endpoints: &[String], namespace: &str, key: &str, owner: &str) -> Value {
    let answer = ctl(endpoints, &["claim", namespace, key, "--owner", owner, "--lease-ms", "600000"]).await;
    assert_eq!(answer["state"], "CLAIMED", "claim {namespace}/{key}: {answer}");
    answer
}

fn token_of(answer: &Value) -> u64 {
    answer["token"].as_u64().unwrap_or_else(|| panic!("no token in {answer}"))
}

/// `hash` over `endpoints`, repeated until every node reports the same applied index (writes
/// have paused); asserts they then hold the same digest. Returns (applied index, sha256).
async fn agreed_hash(endpoints: &[String], cluster_flag: bool) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let args: &[&str] = if cluster_flag { &["hash", "--cluster"] } else { &["hash"] };
        let answer = ctl(endpoints, args).await;
        let nodes = answer["nodes"].as_array().expect("nodes").clone();
        assert_eq!(nodes.len(), endpoints.len(), "one row per node: {answer}");
        let applied: Vec<u64> = nodes.iter().map(|n| n["applied_index"].as_u64().expect("applied_index")).collect();
        if applied.iter().all(|a| *a == applied[0]) {
            let digests: Vec<&str> = nodes.iter().map(|n| n["sha256"].as_str().expect("sha256")).collect();
            assert!(digests.iter().all(|d| *d == digests[0]), "replicas diverged at index {}: {answer}", applied[0]);
            assert_eq!(digests[0].len(), 64, "a sha256 in hex: {answer}");
            let summary = answer["summary"].as_str().unwrap_or_default();
            assert!(summary.contains("agree"), "{answer}");
            return (applied[0], digests[0].to_string());
        }
        assert!(Instant::now() < deadline, "applied indexes never met: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_and_hash_across_the_cluster() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let all = cluster.endpoints();

    let status = ctl(&all, &["status", "--cluster"]).await;
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{status}");
    let leaders: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {status}");
    assert_eq!(leaders[0]["node_id"], leader);
    assert_eq!(status["leader_id"], leader, "{status}");
    assert_eq!(status["answered"], 3, "{status}");
    for node in nodes {
        assert!(node["error"].is_null(), "{node}");
        assert!(node["committed_index"].is_u64() && node["applied_index"].is_u64(), "{node}");
    }
    assert!(leaders[0]["committed_index"].as_u64() >= Some(1), "the leader committed its first entry: {status}");

    let health = ctl(&all, &["health", "--cluster"]).await;
    let rows = health.as_array().expect("health rows");
    assert_eq!(rows.len(), 3, "{health}");
    for row in rows {
        assert_eq!(row["healthy"], true, "{row}");
        assert_eq!(row["leader_id"], leader, "{row}");
    }
    let ids: Vec<u64> = rows.iter().map(|r| r["node_id"].as_u64().unwrap()).collect();
    assert_eq!(ids.iter().copied().collect::<std::collections::BTreeSet<_>>().len(), 3, "{health}");

    let client = DedupClient::new(cluster.endpoints()).unwrap();
    for i in 0..10 {
        let answer = client.check_and_claim(&ClaimRequest::new("hash", format!("k-{i}"), "w")).await.unwrap();
        assert!(matches!(answer, ClaimAnswer::Claimed(_)), "{answer:?}");
    }
    let (index, digest) = agreed_hash(&all, true).await;

    let answer = client.check_and_claim(&ClaimRequest::new("hash", "one-more", "w")).await.unwrap();
    let ClaimAnswer::Claimed(claimed) = answer else { panic!("{answer:?}") };
    let (after_index, after_digest) = agreed_hash(&all, true).await;
    assert!(after_index >= claimed.applied_index && after_index > index, "{after_index} vs {index}");
    assert_ne!(after_digest, digest, "a write changes the state digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_is_promoted_and_removed() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let three = endpoints_of(&cluster, &[1, 2, 3]);
    let address = cluster.add_node(4, &["--join"]);
    // A pristine --join node waits to be added: it forms no cluster of its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cluster.is_running(4), "node 4 exited:\n{}", cluster.log_tail(4));
    let status = cluster.status(4).await.expect("node 4 answers NodeStatus while it waits");
    assert_ne!(status.role, "leader", "{status:?}");

    let added = ctl(&three, &["member", "add", "4", &address, "--wait"]).await;
    let flags: Vec<&str> =
        added["dedupd_flags"].as_array().expect("flags").iter().map(|f| f.as_str().unwrap()).collect();
    let port = address.rsplit_once(':').unwrap().1;
    assert!(flags.contains(&"--node-id=4"), "{flags:?}");
    assert!(flags.contains(&"--join"), "{flags:?}");
    assert!(flags.contains(&format!("--peers={},4={address}", cluster.peers()).as_str()), "{flags:?}");
    assert!(flags.iter().any(|f| f.starts_with("--listen=") && f.ends_with(&format!(":{port}"))), "{flags:?}");
    let kinds = |list: &Value| -> BTreeMap<u64, String> {
        list["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| (m["node_id"].as_u64().unwrap(), m["kind"].as_str().unwrap().to_string()))
            .collect()
    };
    assert_eq!(kinds(&added).get(&4).map(String::as_str), Some("learner"), "{added}");
    assert_eq!(cluster.status(4).await.unwrap().role, "learner");

    let promoted = ctl(&three, &["member", "promote", "4"]).await;
    assert_eq!(kinds(&promoted).get(&4).map(String::as_str), Some("voter"), "{promoted}");
    let list = ctl(&three, &["member", "list"]).await;
    assert_eq!(list["joint"], false, "{list}");
    assert_eq!(list["leader_id"], leader, "{list}");
    let members = kinds(&list);
    assert_eq!(members.len(), 4, "{list}");
    assert!(members.values().all(|k| k == "voter"), "4 voters: {list}");

    // A write through the cluster reaches node 4.
    let answer = claim(&three, "members", "after-promote", "w").await;
    let token = token_of(&answer);
    cluster.wait_applied(4, answer["applied_index"].as_u64().unwrap(), Duration::from_secs(20)).await;
    let read =
        ctl(&three, &["get", "members", "after-promote", "--consistency", "any-replica", "--endpoint", &address]).await;
    assert_eq!(read["record"]["state"], "CLAIMED", "{read}");
    assert_eq!(read["record"]["token"], token, "{read}");

    let removed = ctl(&three, &["member", "remove", "4"]).await;
    assert!(!kinds(&removed).contains_key(&4), "{removed}");
    cluster.kill_node(4);
    let list = ctl(&three, &["member", "list"]).await;
    let members = kinds(&list);
    assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "{list}");
    assert!(members.values().all(|k| k == "voter"), "{list}");

    // With one of the two other voters down, removing the other live one would leave no quorum.
    let leader = cluster.wait_for_leader(None).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (down, up) = (followers[0], followers[1]);
    cluster.kill_node(down);
    // health and status name the node that is down and exit 4.
    let (code, out, err) = dedupctl(&three, &["-o", "json", "health", "--cluster"]).await;
    assert_eq!(code, 4, "{err}");
    let rows = json(&out);
    let unhealthy: Vec<&Value> = rows.as_array().unwrap().iter().filter(|r| r["healthy"] == false).collect();
    assert_eq!(unhealthy.len(), 1, "{rows}");
    assert_eq!(unhealthy[0]["endpoint"], cluster.endpoint(down).as_str(), "{rows}");
    let (code, _, err) = dedupctl(&three, &["-o", "json", "status"]).await;
    assert_eq!(code, 4, "a node did not answer: {err}");
    let (code, err) = ctl_fails(&three, &["member", "remove", &up.to_string()]).await;
    assert!(err.contains("QUORUM_AT_RISK"), "exit {code}: {err}");
    assert_eq!(code, 3, "a refusal is exit 3: {err}");
    let list = ctl(&three, &["member", "list"]).await;
    assert_eq!(kinds(&list).len(), 3, "nothing changed: {list}");
    // Removing the dead one is what the operator does instead, and is allowed.
    let removed = ctl(&three, &["member", "remove", &down.to_string()]).await;
    assert_eq!(kinds(&removed).keys().copied().collect::<Vec<_>>().len(), 2, "{removed}");
    claim(&[cluster.endpoint(leader)], "members", "after-remove", "w").await;
    let health = ctl(&three, &["health", "--cluster"]).await;
    assert_eq!(health.as_array().unwrap().len(), 2, "{health}");
}

/// `member add --wait` ("Wait until the learner has received the log", MemberAdd
/// `wait_caught_up`) must not answer before the learner holds the log. The operator runs it,
/// then starts the new node 3 s later (within dedupctl's 5 s request timeout): the answer must
/// come after the node started, with the learner's matched index at the leader's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_wait_waits_for_the_learner() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let three = endpoints_of(&cluster, &[1, 2, 3]);
    let address = cluster.define_node(4, &["--join"]);
    let add = {
        let (three, address) = (three.clone(), address.clone());
        tokio::spawn(async move {
            let answer = dedupctl(&three, &["-o", "json", "member", "add", "4", &address, "--wait"]).await;
            (answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    cluster.start_node(4);
    let ((code, out, err), answered) =
        tokio::time::timeout(Duration::from_secs(70), add).await.expect("dedupctl hung").unwrap();
    assert_eq!(code, 0, "{err}");
    let added = json(&out);
    let learner = added["members"].as_array().unwrap().iter().find(|m| m["node_id"] == 4).cloned().unwrap();
    assert_eq!(learner["kind"], "learner", "{added}");
    assert!(
        answered >= started,
        "`member add --wait` answered before the new node was even started (it had received nothing): {added}"
    );
    let last_log = cluster.status(leader).await.unwrap().last_log_index;
    assert!(learner["matched_index"].as_u64() >= Some(added["log_index"].as_u64().unwrap()), "{added} ({last_log})");
}

/// A learner that never received anything (its dedupd is not running) must not be promoted: as
/// a voter it counts towards quorum at once, and a 4-voter cluster with one dead voter tolerates
/// no further failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_never_answered_is_not_promoted() {
    let mut cluster = Cluster::start().await;
    let three = endpoints_of(&cluster, &[1, 2, 3]);
    let address = cluster.define_node(4, &["--join"]);
    ctl(&three, &["member", "add", "4", &address]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = ctl(&three, &["member", "list"]).await;
    let learner = list["members"].as_array().unwrap().iter().find(|m| m["node_id"] == 4).cloned().unwrap();
    assert_eq!((learner["kind"].as_str(), learner["matched_index"].as_u64()), (Some("learner"), Some(0)), "{list}");
    let (code, out, err) = dedupctl(&three, &["-o", "json", "member", "promote", "4"]).await;
    assert_ne!(code, 0, "a learner that never answered (matched index 0) was promoted to voter: {out}");
    assert!(err.contains("LEARNER_BEHIND"), "exit {code}: {err}");
}

/// Bounded background load: `workers` tasks claim and complete fresh keys through `client`
/// until `stop`, `OPS_MAX` claims each or `LOAD_MAX`; a call that does not end in Ok after the
/// client's retries is a failure.
struct Load {
    ops: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    completed: Arc<Mutex<Vec<(String, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const OPS_MAX: u64 = 400;
const LOAD_MAX: Duration = Duration::from_secs(40);

impl Load {
    fn start(client: &DedupClient, namespace: &'static str, workers: u64) -> Load {
        let load = Load {
            ops: Arc::default(),
            failures: Arc::default(),
            stop: Arc::default(),
            completed: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..workers)
            .map(|worker| {
                let (client, ops, failures, stop, completed) = (
                    client.clone(),
                    load.ops.clone(),
                    load.failures.clone(),
                    load.stop.clone(),
                    load.completed.clone(),
                );
                tokio::spawn(async move {
                    let started = Instant::now();
                    for i in 0..OPS_MAX {
                        if stop.load(Ordering::SeqCst) || started.elapsed() > LOAD_MAX {
                            return;
                        }
                        let key = format!("w{worker}-{i}");
                        let request = ClaimRequest::new(namespace, key.clone(), format!("worker-{worker}"))
                            .with_lease(Duration::from_secs(60));
                        let token = match client.check_and_claim(&request).await {
                            Ok(ClaimAnswer::Claimed(claimed)) => claimed.token,
                            other => {
                                failures.lock().unwrap().push(format!("claim {key}: {other:?}"));
                                continue;
                            }
                        };
                        let done = CompleteRequest::new(namespace, key.clone(), token, Outcome::succeeded(key.clone()));
                        match client.complete(&done).await {
                            Ok(_) => completed.lock().unwrap().push((key, token)),
                            Err(error) => failures.lock().unwrap().push(format!("complete {key}: {error}")),
                        }
                        ops.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    /// Waits (bounded) until `more` further claim+complete pairs have been done.
    async fn wait_for(&self, more: u64) {
        let target = self.ops.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ops.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the load made no progress: {:?}", self.failures.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (Vec<(String, u64)>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), task).await.expect("a load task hung").expect("load task");
        }
        let completed = self.completed.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (completed, failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_under_load_fails_no_call() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let client = DedupClient::new(cluster.endpoints()).unwrap();
    let load = Load::start(&client, "transfer", 3);
    load.wait_for(30).await;

    let done = ctl(&cluster.endpoints(), &["leader", "transfer", "--to", &target.to_string()]).await;
    assert_eq!(done["from_node_id"], leader, "{done}");
    assert_eq!(done["to_node_id"], target, "{done}");
    load.wait_for(30).await;
    let (completed, failures) = load.finish().await;

    let status = ctl(&cluster.endpoints(), &["status"]).await;
    assert_eq!(status["leader_id"], target, "{status}");
    assert_eq!(cluster.status(target).await.unwrap().role, "leader");
    assert!(failures.is_empty(), "{} client call(s) failed across the transfer: {failures:#?}", failures.len());
    assert!(completed.len() >= 60, "{}", completed.len());
    for (key, token) in &completed {
        let request = GetRequest::new("transfer", key.clone()).with_consistency(Consistency::Linearizable);
        let read = client.get(&request);
        let record = read.await.unwrap().record.unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!((record.state, record.token), (RecordState::Completed, *token), "{key}");
    }

    // Transfer to the node that leads already is refused; without --to the most caught-up
    // follower is picked.
    let (code, err) = ctl_fails(&cluster.endpoints(), &["leader", "transfer", "--to", &target.to_string()]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("NO_TRANSFER_TARGET"), "{err}");
    let done = ctl(&cluster.endpoints(), &["leader", "transfer"]).await;
    assert_eq!(done["from_node_id"], target, "{done}");
    let next = done["to_node_id"].as_u64().unwrap();
    assert_ne!(next, target, "{done}");
    assert_eq!(cluster.wait_for_leader(Some(target)).await, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_repaired_and_audited() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    let all = cluster.endpoints();
    // Reads of the ledger (key list, audit, stats) answer from the node asked: ask the leader.
    let at_leader = vec![cluster.endpoint(leader)];
    let ns = "keys";

    let mut tokens = BTreeMap::new();
    for key in ["p-1", "p-2", "p-3", "p-4", "p-5", "q-1"] {
        tokens.insert(key, token_of(&claim(&all, ns, key, "worker-a").await));
    }
    // done-1 and gone-1 complete; free-1 is released.
    for key in ["done-1", "gone-1"] {
        let token = token_of(&claim(&all, ns, key, "worker-a").await);
        tokens.insert(key, token);
        ctl(&all, &["complete", ns, key, "--token", &token.to_string(), "--outcome", "ok"]).await;
    }
    let free = token_of(&claim(&all, ns, "free-1", "worker-a").await);
    ctl(&all, &["release", ns, "free-1", "--token", &free.to_string()]).await;

    // Paging: two at a time through every claimed key starting with "p".
    let mut listed = Vec::new();
    let mut page_token: Option<String> = None;
    for _page in 0..10 {
        let mut args = vec!["key", "list", ns, "--state", "claimed", "--prefix", "p", "--limit", "2"];
        if let Some(token) = page_token.as_deref() {
            args.extend(["--page-token", token]);
        }
        let page = ctl(&at_leader, &args).await;
        let records = page["records"].as_array().expect("records");
        assert!(records.len() <= 2, "{page}");
        for record in records {
            assert_eq!(record["state"], "CLAIMED", "{record}");
            listed.push(record["key"].as_str().unwrap().to_string());
        }
        page_token = page["next_page_token"].as_str().map(String::from);
        if page_token.is_none() {
            break;
        }
    }
    assert!(page_token.is_none(), "paging did not end in 10 pages");
    assert_eq!(listed, ["p-1", "p-2", "p-3", "p-4", "p-5"]);

    // force-release: the next claimant is told, and the old holder's token is refused.
    let released =
        ctl(&all, &["key", "force-release", ns, "p-1", "--reason", "worker-a is wedged", "--operator", "alice"]).await;
    assert_eq!(released["action"], "FORCE_RELEASE", "{released}");
    assert_eq!(released["previous"]["state"], "CLAIMED", "{released}");
    let old = tokens["p-1"].to_string();
    let (code, err) = ctl_fails(&all, &["complete", ns, "p-1", "--token", &old, "--outcome", "late"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("FENCED") || err.contains("NOT_CLAIMED"), "{err}");
    let reclaimed = claim(&all, ns, "p-1", "worker-b").await;
    assert_eq!(reclaimed["previous"]["ended"], "FORCE_RELEASED", "{reclaimed}");
    assert_eq!(reclaimed["previous"]["token"], tokens["p-1"], "{reclaimed}");
    assert!(token_of(&reclaimed) > tokens["p-1"], "{reclaimed}");
    let (code, err) = ctl_fails(&all, &["complete", ns, "p-1", "--token", &old, "--outcome", "late"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("FENCED") || err.contains("NOT_CLAIMED"), "{err}");

    // forget: the completed key is claimable again, under a larger token.
    let forgotten =
        ctl(&all, &["key", "forget", ns, "gone-1", "--reason", "charge was refunded", "--operator", "bob"]).await;
    assert_eq!(forgotten["action"], "FORGET", "{forgotten}");
    assert_eq!(forgotten["previous"]["state"], "COMPLETED", "{forgotten}");
    // At the leader: it applied the forget before answering it. A follower that has not applied
    // it yet may still answer COMPLETED from its own state (the duplicate fast path, with the
    // applied index it reflects); CI caught that race once (applied_index 17, before the forget).
    let again = claim(&at_leader, ns, "gone-1", "worker-c").await;
    assert!(token_of(&again) > tokens["gone-1"], "{again}");

    // Refusals: a missing key, an empty reason.
    let (code, err) =
        ctl_fails(&all, &["key", "forget", ns, "never-was", "--reason", "cleanup", "--operator", "bob"]).await;
    assert!(err.contains("NO_RECORD"), "exit {code}: {err}");
    let (code, err) = ctl_fails(&all, &["key", "forget", ns, "done-1", "--reason", "", "--operator", "bob"]).await;
    assert_eq!(code, 2, "an empty reason is a usage error: {err}");
    let (code, err) =
        ctl_fails(&all, &["key", "force-release", ns, "p-2", "--reason", "  ", "--operator", "bob"]).await;
    assert_eq!(code, 2, "a blank reason is a usage error: {err}");

    // The audit trail: both changes, in order, with reason and operator; nothing else.
    let audit = ctl(&at_leader, &["audit"]).await;
    let entries = audit["entries"].as_array().expect("entries");
    let summary: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            let text = |field: &str| e[field].as_str().unwrap_or_default().to_string();
            (text("action"), text("key"), text("reason"), text("operator"))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("FORCE_RELEASE".into(), "p-1".into(), "worker-a is wedged".into(), "alice".into()),
            ("FORGET".into(), "gone-1".into(), "charge was refunded".into(), "bob".into()),
        ],
        "{audit}"
    );
    let positions: Vec<(u64, u64)> =
        entries.iter().map(|e| (e["log_index"].as_u64().unwrap(), e["slot"].as_u64().unwrap())).collect();
    assert!(positions[0] < positions[1], "oldest first: {audit}");
    for entry in entries {
        // The replaced record is shown as of the change, with the state it had then.
        assert_eq!(entry["previous"]["applied_index"], entry["log_index"], "{entry}");
        assert_eq!(entry["previous"]["ledger_time_ms"], entry["at_ms"], "{entry}");
    }
    assert_eq!(entries[0]["previous"]["state"], "CLAIMED", "{audit}");

    // Counts by state: p-1..p-5, q-1, gone-1 claimed; done-1 completed; free-1 available.
    let stats = ctl(&at_leader, &["namespace", "stats", ns]).await;
    assert_eq!(
        (stats["claimed"].as_u64(), stats["completed"].as_u64(), stats["available"].as_u64()),
        (Some(7), Some(1), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["scanned_all"], true, "{stats}");
    assert!(stats["oldest_live_claim_created_at_ms"].as_u64() > Some(0), "{stats}");
    assert!(stats["record_bytes"].as_u64() > Some(0), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_trigger_covers_the_applied_index_on_every_node() {
    let cluster = Cluster::start().await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();
    for i in 0..20 {
        client.check_and_claim(&ClaimRequest::new("snap", format!("k-{i}"), "w")).await.unwrap();
    }
    let mut before = BTreeMap::new();
    for id in 1..=3u64 {
        before.insert(id, cluster.status(id).await.unwrap().applied_index);
    }
    let rows = ctl(&cluster.endpoints(), &["snapshot", "trigger", "--cluster"]).await;
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in rows {
        assert!(row["error"].is_null(), "{row}");
        let id = row["node_id"].as_u64().expect("node_id");
        let snapshot = row["snapshot_index"].as_u64().expect("snapshot_index");
        assert!(snapshot >= before[&id], "node {id}: snapshot {snapshot} < applied {} before the call", before[&id]);
        assert!(row["purged_index"].is_u64(), "{row}");
        assert!(cluster.status(id).await.unwrap().snapshot_index >= snapshot, "node {id}");
    }
}

/// The client library sends each attempt's timeout as `grpc-timeout`; tonic's server enforces it
/// and, when a write outlasts it (a leader waiting for a quorum, or a transfer hold), answers
/// CANCELLED "Timeout expired". The client must treat that like its own per-attempt timeout
/// (retry at the next endpoint), or a call fails outright when the server's answer beats the
/// client's own timer, as seen under `leader transfer` with load ("CANCELLED: Timeout expired").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_enforced_attempt_timeout_is_retryable() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.wait_for_leader(None).await;
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.kill_node(id);
    }
    // No client-side timeout on this channel: only the grpc-timeout header, as the client sends it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(leader)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(dedup_client::proto::CheckAndClaimRequest {
        namespace: "timeouts".into(),
        key: b"k".to_vec(),
        owner: "w".into(),
        lease_ms: 60_000,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(800));
    let mut ledger = dedup_client::proto::ledger_client::LedgerClient::new(channel);
    let call = ledger.check_and_claim(request);
    let status = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the server answered nothing within 10 s")
        .expect_err("a write without quorum cannot succeed");
    assert_eq!((status.code(), status.message()), (tonic::Code::Cancelled, "Timeout expired"));
    // tonic's channel enforces the same grpc-timeout locally and usually wins the race with the
    // server's answer; the server's answer is the same status without a local source. Decode
    // it as it arrives from the server.
    let from_server = tonic::Status::new(status.code(), status.message());
    let error = dedup_client::Error::from_status(&from_server);
    assert!(
        error.is_unavailable(),
        "the server's enforcement of the attempt timeout (CANCELLED \"Timeout expired\") decodes as {error:?}, which \
         the client's retry loop treats as fatal instead of retrying at the next endpoint"
    );
}

/// `dedupd restore` of one node's folder: returns its exit code, stdout and stderr. `stdin`:
/// feed the snapshot through standard input (`--snapshot -`) instead of naming the file.
fn restore(id: u64, data_dir: &std::path::Path, snapshot: &std::path::Path, stdin: bool) -> (i32, String, String) {
    let mut command = std::process::Command::new(dedup_tests::workspace_binary("dedupd"));
    command.args(["restore", "--node-id", &id.to_string(), "--data-dir"]).arg(data_dir);
    if stdin {
        command.args(["--snapshot", "-"]).stdin(std::fs::File::open(snapshot).expect("the backup"));
    } else {
        command.arg("--snapshot").arg(snapshot).stdin(std::process::Stdio::null());
    }
    let output = command.output().expect("run dedupd restore");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A whole cluster lost and restored from a backup: `snapshot save` through a follower holds
/// every write acknowledged before it, `dedupd restore` writes each member's empty folder from
/// the one file, and the restored cluster elects a leader in a later term, agrees on its state
/// hash, answers every record of the backup as it was (outcomes, live claims) and nothing
/// written after it, and keeps fencing tokens growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cluster_is_restored_from_a_saved_snapshot() {
    let mut cluster = Cluster::start().await;
    let client = DedupClient::new(cluster.endpoints()).unwrap();
    let ns = "backup";
    for i in 0..30 {
        let key = format!("done-{i}");
        let ClaimAnswer::Claimed(claim) =
            client.check_and_claim(&ClaimRequest::new(ns, key.clone(), "w")).await.unwrap()
        else {
            panic!("{key} is new")
        };
        let outcome = Outcome::succeeded(format!("outcome {i}"));
        client.complete(&CompleteRequest::new(ns, key, claim.token, outcome)).await.unwrap();
    }
    let held = claim(&cluster.endpoints(), ns, "held", "holder").await;
    let released = token_of(&claim(&cluster.endpoints(), ns, "released", "w").await);
    ctl(&cluster.endpoints(), &["release", ns, "released", "--token", &released.to_string()]).await;

    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3u64).find(|id| *id != leader).expect("a follower");
    let backup = tempfile::tempdir().unwrap();
    let file = backup.path().join("ledger.snap");
    // A young cluster has built no snapshot yet: nothing to download as it is.
    let (code, err) =
        ctl_fails(&[cluster.endpoint(follower)], &["snapshot", "save", file.to_str().unwrap(), "--no-trigger"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NO_SNAPSHOT") && err.contains("snapshot trigger"), "{err}");
    assert!(!file.exists(), "nothing written");
    let saved = ctl(&[cluster.endpoint(follower)], &["snapshot", "save", file.to_str().unwrap()]).await;
    assert_eq!(saved["node_id"], follower, "{saved}");
    let size = std::fs::metadata(&file).expect("the backup file").len();
    assert_eq!(saved["size_bytes"], size, "{saved}");
    assert_eq!(saved["voter_ids"], serde_json::json!([1, 2, 3]), "{saved}");
    let snapshot_term = saved["snapshot_term"].as_u64().expect("snapshot_term");
    assert!(std::fs::read_dir(backup.path()).unwrap().count() == 1, "no partial file is left behind");

    // Written after the backup: not in it.
    claim(&cluster.endpoints(), ns, "after-backup", "w").await;

    // The whole cluster is lost.
    for id in 1..=3u64 {
        cluster.kill_node(id);
        std::fs::remove_dir_all(&cluster.nodes[&id].data_dir).expect("wipe a data folder");
    }
    for id in 1..=3u64 {
        let (code, out, err) = restore(id, &cluster.nodes[&id].data_dir, &file, id == 3);
        assert_eq!(code, 0, "restore node {id}: {err}");
        assert!(out.contains(&format!("restored node {id}")) && out.contains("members 1="), "{out}");
    }
    // A folder that is not empty is refused, and left as it was.
    let (code, _, err) = restore(1, &cluster.nodes[&1].data_dir, &file, false);
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
    let (code, _, err) = restore(9, &backup.path().join("node-9"), &file, false);
    assert_ne!(code, 0);
    assert!(err.contains("node 9 is not in the snapshot's membership"), "{err}");

    for id in 1..=3u64 {
        cluster.start_node(id);
    }
    let leader = cluster.wait_for_leader(None).await;
    let term = cluster.status(leader).await.expect("the leader's status").term;
    assert!(term > snapshot_term, "the restored cluster elects in a later term ({term} <= {snapshot_term})");
    agreed_hash(&cluster.endpoints(), true).await;

    let client = DedupClient::new(cluster.endpoints()).unwrap();
    for i in 0..30 {
        let answer = client.check_and_claim(&ClaimRequest::new(ns, format!("done-{i}"), "again")).await.unwrap();
        let ClaimAnswer::Completed(done) = answer else { panic!("done-{i} is completed: {answer:?}") };
        assert_eq!(done.outcome.payload, format!("outcome {i}").into_bytes());
    }
    let answer = client.check_and_claim(&ClaimRequest::new(ns, "held", "other")).await.unwrap();
    assert!(matches!(answer, ClaimAnswer::InProgress(_)), "the live claim is still held: {answer:?}");
    let answer = client.check_and_claim(&ClaimRequest::new(ns, "after-backup", "w2")).await.unwrap();
    assert!(matches!(answer, ClaimAnswer::Claimed(_)), "written after the backup, so not in it: {answer:?}");
    let ClaimAnswer::Claimed(again) = client.check_and_claim(&ClaimRequest::new(ns, "released", "w2")).await.unwrap()
    else {
        panic!("a released key is claimable")
    };
    assert!(again.token > released && again.token > token_of(&held), "fencing tokens keep growing");
}
