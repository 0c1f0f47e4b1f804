//! The Prometheus endpoint (`--metrics-listen`, docs/metrics.md) of a real three-node cluster:
//! the counters an operator's dashboards and alerts rely on move with the traffic, every node
//! agrees on who leads, and the body is valid Prometheus text.

use std::collections::BTreeMap;
use std::time::Duration;

use dedup_proto::v1 as pb;
use dedup_proto::v1::check_and_claim_response::Result as Answer;
use dedup_tests::ledger;
use dedup_tests::Cluster;
use dedup_tests::ClusterOptions;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

const NAMESPACE: &str = "metrics";
/// Keys claimed and completed through the leader, then claimed again on a follower.
const KEYS: usize = 5;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format, failing on any line that is neither a comment nor a
/// `name{labels} value` sample.
fn parse(body: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).ok_or_else(|| format!("not a sample line: {line:?}"))?);
    }
    Ok(samples)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !is_name(name) {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        // `key="value"` pairs separated by ',', up to '}'.
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, quoted) = inner.split_once("=\"")?;
            if !is_name(key) {
                return None;
            }
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                let (at, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break at,
                    c => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            inner = &quoted[end + 1..];
            if let Some(more) = inner.strip_prefix(',') {
                inner = more;
            } else if !inner.starts_with('}') {
                return None;
            }
        }
    }
    let value = rest.strip_prefix(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// One scrape of a node's endpoint, parsed.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the one sample of `name` whose labels include `labels` (0 if none: a
    /// counter not yet incremented may be absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} matches {} samples: {matching:?}", matching.len());
        matching.first().map_or(0.0, |s| s.value)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

/// `GET path` over HTTP/1.1 with `method`: the status code and the body.
async fn http(address: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to the metrics endpoint");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the endpoint answers within 10 s")
        .unwrap();
    let response = String::from_utf8(response).expect("a UTF-8 answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    (status, body.to_string())
}

async fn scrape(address: &str) -> Scrape {
    let (status, body) = http(address, "GET", "/metrics").await;
    assert_eq!(status, 200, "GET /metrics on {address}: {body}");
    Scrape(parse(&body).unwrap_or_else(|error| panic!("{address}: {error}\n{body}")))
}

fn claim(key: &str, owner: &str, lease_ms: u64) -> pb::CheckAndClaimRequest {
    pb::CheckAndClaimRequest {
        namespace: NAMESPACE.into(),
        key: key.as_bytes().to_vec(),
        owner: owner.into(),
        lease_ms,
        fingerprint: b"fp".to_vec(),
        ..Default::default()
    }
}

async fn claimed(endpoint: &str, key: &str, owner: &str, lease_ms: u64) -> pb::Claimed {
    let answer = ledger(endpoint).await.check_and_claim(claim(key, owner, lease_ms)).await.unwrap().into_inner();
    match answer.result {
        Some(Answer::Claimed(claimed)) => claimed,
        other => panic!("{key}: expected CLAIMED, got {other:?}"),
    }
}

fn complete(key: &str, token: u64, payload: &[u8]) -> pb::CompleteRequest {
    pb::CompleteRequest {
        namespace: NAMESPACE.into(),
        key: key.as_bytes().to_vec(),
        token,
        outcome: Some(pb::Outcome { kind: pb::OutcomeKind::Succeeded as i32, payload: payload.to_vec() }),
        retention_ms: 0,
    }
}

const CLAIMS: &str = "dedup_ledger_claims_total";
const REQUESTS: &str = "dedup_grpc_requests_total";

fn grpc(method: &'static str, code: &'static str) -> [(&'static str, &'static str); 3] {
    [("service", "dedup.v1.Ledger"), ("method", method), ("code", code)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic_on_every_node() {
    let mut cluster = Cluster::start_options(ClusterOptions { metrics: true, ..Default::default() }).await;
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let metrics_of = |id: u64| cluster.nodes[&id].metrics_address.clone().expect("a metrics endpoint");
    let (leader_endpoint, follower_endpoint) = (cluster.endpoint(leader), cluster.endpoint(follower));
    let leader_before = scrape(&metrics_of(leader)).await;
    let follower_before = scrape(&metrics_of(follower)).await;

    // Claims and completions through the leader.
    let payload = b"shipped";
    for i in 0..KEYS {
        let key = format!("order-{i}");
        let token = claimed(&leader_endpoint, &key, "worker", 30_000).await.token;
        ledger(&leader_endpoint).await.complete(complete(&key, token, payload)).await.unwrap();
    }
    // Released and claimed again: a takeover; the old token's completion is FENCED.
    let first = claimed(&leader_endpoint, "released", "a", 30_000).await;
    let release = pb::ReleaseRequest {
        namespace: NAMESPACE.into(),
        key: b"released".to_vec(),
        token: first.token,
        reason: pb::ReleaseReason::Retryable as i32,
        checkpoint: Vec::new(),
    };
    ledger(&leader_endpoint).await.release(release).await.unwrap();
    let second = claimed(&leader_endpoint, "released", "b", 30_000).await;
    assert!(second.previous.is_some(), "the second claim takes over");
    let fenced = ledger(&leader_endpoint).await.complete(complete("released", first.token, b"x")).await;
    assert_eq!(fenced.unwrap_err().code(), tonic::Code::FailedPrecondition);
    // A lapsed lease taken over, and a completion after the lease lapsed (late).
    claimed(&leader_endpoint, "lapsed", "a", 100).await;
    let late = claimed(&leader_endpoint, "late", "a", 100).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    claimed(&leader_endpoint, "lapsed", "b", 30_000).await;
    let ack = ledger(&leader_endpoint).await.complete(complete("late", late.token, b"late")).await.unwrap();
    assert!(ack.into_inner().late);

    // Duplicates on a follower: answered from its hot tier once it applied the completions.
    let target = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied(follower, target, Duration::from_secs(10)).await;
    for i in 0..KEYS {
        let duplicate = claim(&format!("order-{i}"), "retry", 30_000);
        let answer = ledger(&follower_endpoint).await.check_and_claim(duplicate).await.unwrap().into_inner();
        assert!(matches!(answer.result, Some(Answer::Completed(_))));
    }
    // A live claim seen through the follower: forwarded, answered IN_PROGRESS by the leader.
    let answer = ledger(&follower_endpoint).await.check_and_claim(claim("lapsed", "c", 30_000)).await.unwrap();
    assert!(matches!(answer.into_inner().result, Some(Answer::InProgress(_))));
    // A refused claim (another fingerprint): a failed call, answered trailers-only.
    let mut mismatch = claim("order-0", "d", 30_000);
    mismatch.fingerprint = b"other".to_vec();
    let refused = ledger(&follower_endpoint).await.check_and_claim(mismatch).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let leader_after = scrape(&metrics_of(leader)).await;
    let follower_after = scrape(&metrics_of(follower)).await;
    let delta = |before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let on_leader = |name: &str, labels: &[(&str, &str)]| delta(&leader_before, &leader_after, name, labels);
    let on_follower = |name: &str, labels: &[(&str, &str)]| delta(&follower_before, &follower_after, name, labels);

    // gRPC: every call counted with the code its client saw.
    // Leader: 5 + 2 + 2 + 1 claims of its own, and the one the follower forwarded.
    assert_eq!(on_leader(REQUESTS, &grpc("CheckAndClaim", "OK")), 11.0);
    assert_eq!(on_leader(REQUESTS, &grpc("Complete", "OK")), (KEYS + 1) as f64);
    assert_eq!(on_leader(REQUESTS, &grpc("Complete", "FAILED_PRECONDITION")), 1.0);
    assert_eq!(on_leader(REQUESTS, &grpc("Release", "OK")), 1.0);
    assert_eq!(on_follower(REQUESTS, &grpc("CheckAndClaim", "OK")), (KEYS + 1) as f64);
    assert_eq!(on_follower(REQUESTS, &grpc("CheckAndClaim", "FAILED_PRECONDITION")), 1.0);
    let latency = [("service", "dedup.v1.Ledger"), ("method", "CheckAndClaim")];
    assert_eq!(on_follower("dedup_grpc_request_duration_seconds_count", &latency), (KEYS + 2) as f64);
    assert!(
        follower_after
            .value(REQUESTS, &[("service", "dedup.v1.RaftPeer"), ("method", "AppendEntries"), ("code", "OK")])
            > 0.0,
        "a follower serves the leader's AppendEntries"
    );

    // Claims by answer and path.
    let claims = |answer, via| [("answer", answer), ("via", via)];
    assert_eq!(on_leader(CLAIMS, &claims("claimed", "raft")), (KEYS + 5) as f64);
    assert_eq!(on_leader(CLAIMS, &claims("in_progress", "raft")), 1.0);
    assert_eq!(on_follower(CLAIMS, &claims("completed", "hot_tier")), KEYS as f64);
    assert_eq!(on_follower(CLAIMS, &claims("in_progress", "forwarded")), 1.0);
    assert_eq!(on_follower(CLAIMS, &claims("claimed", "raft")), 0.0, "a follower proposes nothing");
    assert!(on_follower("dedup_hot_tier_hits_total", &[]) >= KEYS as f64);
    assert!(follower_after.value("dedup_hot_tier_entries", &[]) >= KEYS as f64);

    // What the leader's ledger decided.
    assert_eq!(on_leader("dedup_ledger_takeovers_total", &[("previous_end", "released_retryable")]), 1.0);
    assert_eq!(on_leader("dedup_ledger_takeovers_total", &[("previous_end", "lease_lapsed")]), 1.0);
    assert_eq!(on_leader("dedup_ledger_fenced_total", &[("call", "complete")]), 1.0);
    assert_eq!(on_leader("dedup_ledger_late_completions_total", &[]), 1.0);
    let completed_bytes = KEYS * payload.len() + b"late".len();
    assert_eq!(on_leader("dedup_ledger_outcome_bytes_completed_total", &[]), completed_bytes as f64);
    assert!(on_leader("dedup_raft_proposals_committed_total", &[]) >= 17.0);
    assert!(leader_after.value("dedup_ledger_records", &[("state", "completed")]) >= (KEYS + 1) as f64);
    assert!(leader_after.value("dedup_raft_log_append_duration_seconds_count", &[]) > 0.0);
    assert_eq!(leader_after.value("dedup_ledger_purge_lag_seconds", &[]), 0.0);

    // Raft: every node knows the leader; exactly one leads; the leader sees its followers.
    let mut leaders = Vec::new();
    for id in 1..=3 {
        let scrape = scrape(&metrics_of(id)).await;
        assert_eq!(scrape.value("dedup_raft_has_leader", &[]), 1.0, "node {id}");
        assert!(scrape.value("dedup_raft_leader_changes_total", &[]) >= 1.0, "node {id}");
        assert_eq!(scrape.value("dedup_node_id", &[]), id as f64);
        assert_eq!(scrape.value("dedup_build_info", &[]), 1.0);
        assert!(scrape.value("dedup_raft_commit_index", &[]) >= 1.0, "node {id}");
        if scrape.value("dedup_raft_is_leader", &[]) == 1.0 {
            leaders.push(id);
            assert!(scrape.has("dedup_raft_replication_lag_entries"), "the leader reports its followers");
        }
    }
    assert_eq!(leaders, vec![leader], "exactly one node reports itself leader");

    // Only GET /metrics is served.
    let (status, _) = http(&metrics_of(follower), "GET", "/other").await;
    assert_eq!(status, 404);
    let (status, _) = http(&metrics_of(follower), "POST", "/metrics").await;
    assert_eq!(status, 405);
}

#[test]
fn the_parser_accepts_prometheus_lines_and_refuses_others() {
    let samples = parse(
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3\nb{x=\"1\",y=\"q\\\"z\"} 2.5\nc_bucket{le=\"+Inf\"} 7\n",
    )
    .unwrap();
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[1].labels["y"], "q\"z");
    assert_eq!(samples[1].value, 2.5);
    assert!(parse("a_total\n").is_err());
    assert!(parse("a{x=1} 2\n").is_err());
    assert!(parse("1a 2\n").is_err());
}
