//! `dedupctl bench` against a real three-node cluster: a smoke run of each path (seconds, not a
//! benchmark) that checks what the numbers mean: duplicate checks write no Raft entry, new
//! claims do, batches count their items, `fill` keys can be read back by a later run.

use std::process::Command;

use dedup_tests::workspace_binary;
use dedup_tests::Cluster;
use serde_json::Value;

/// Runs `dedupctl bench ARGS -o json` against `endpoints`: (exit code, one JSON object per run, stderr).
fn bench(endpoints: &[String], args: &[&str]) -> (i32, Vec<Value>, String) {
    let output = Command::new(workspace_binary("dedupctl"))
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(["-o", "json", "bench"])
        .args(args)
        .args(["--client-threads", "1"])
        .output()
        .expect("run dedupctl bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let runs = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    (output.status.code().unwrap_or(-1), runs, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn number(run: &Value, field: &str) -> u64 {
    run[field].as_u64().unwrap_or_else(|| panic!("{field} missing in {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_path_runs_and_reports_what_it_did() {
    let mut cluster = Cluster::start().await;
    cluster.wait_for_leader(None).await;
    let endpoints = cluster.endpoints();

    let (code, runs, err) = bench(&endpoints, &["claim-new", "--concurrency", "4", "--duration", "1s"]);
    assert_eq!(code, 0, "{err}");
    let run = &runs[0];
    assert_eq!(run["path"], "claim-new");
    assert!(number(run, "ops") > 0 && run["ops_per_sec"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!((number(run, "errors"), number(run, "unexpected_answers")), (0, 0), "{run}");
    assert!(number(run, "raft_entries") > 0, "new claims are Raft writes: {run}");
    assert!(run["p99_ms"].as_f64().unwrap() >= run["p50_ms"].as_f64().unwrap(), "{run}");

    // Duplicates on a follower: answered there, nothing written to the log.
    let (code, runs, err) = bench(
        &endpoints,
        &["claim-dup", "--target", "follower", "--keys", "300", "--concurrency", "8", "--duration", "1s"],
    );
    assert_eq!(code, 0, "{err}");
    let run = &runs[0];
    assert!(number(run, "ops") > 0, "{run}");
    assert_eq!((number(run, "errors"), number(run, "unexpected_answers")), (0, 0), "{run}");
    assert_eq!(number(run, "raft_entries"), 0, "duplicate checks wrote Raft entries: {run}");

    let (code, runs, err) =
        bench(&endpoints, &["batch-claim", "--batch", "16", "--concurrency", "2", "--duration", "1s"]);
    assert_eq!(code, 0, "{err}");
    let run = &runs[0];
    assert_eq!(number(run, "items"), number(run, "ops") * 16, "{run}");
    assert_eq!(number(run, "errors"), 0, "{run}");

    // complete uses up its claimed keys and stops when they run out.
    let (code, runs, err) = bench(&endpoints, &["complete", "--keys", "100", "--duration", "5s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!((number(&runs[0], "items"), number(&runs[0], "errors")), (100, 0), "{}", runs[0]);

    // fill, then read its keys back as duplicates from another run.
    let (code, runs, err) =
        bench(&endpoints, &["fill", "--keys", "500", "--key-prefix", "smoke-", "--duration", "20s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!((number(&runs[0], "items"), runs[0]["complete"].as_bool()), (500, Some(true)), "{}", runs[0]);
    let (code, runs, err) = bench(
        &endpoints,
        &[
            "claim-dup",
            "--skip-preload",
            "--key-prefix",
            "smoke-",
            "--keys",
            "500",
            "--duration",
            "1s",
            "--target",
            "all",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!((number(&runs[0], "unexpected_answers"), number(&runs[0], "raft_entries")), (0, 0), "{}", runs[0]);

    // A flag outside its limit: exit 2 and the limit named.
    let (code, _, err) = bench(&endpoints, &["claim-new", "--concurrency", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--concurrency must be within 1..=4096"), "{err}");
}
