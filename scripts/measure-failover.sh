#!/usr/bin/env bash
# Measures the write gap after a leader is killed: starts a local three-node cluster on ports
# 7301-7303 (data in a temporary folder), then TRIALS times kills the leader with SIGKILL and times
# how long the next claim takes to be acknowledged (dedupctl retries until the new leader answers),
# restarting the killed node between trials. Stops only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${TRIALS:-3}
cargo build --quiet --bins
work=$(mktemp -d)
peers=1=127.0.0.1:7301,2=127.0.0.1:7302,3=127.0.0.1:7303
endpoints=127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303
declare -A pids
start() { target/debug/dedupd --node-id "$1" --listen "127.0.0.1:730$1" --peers "$peers" --data-dir "$work/node-$1" >>"$work/node-$1.log" 2>&1 & pids[$1]=$!; }
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for id in 1 2 3; do start "$id"; done
leader() { target/debug/dedupctl --endpoints "$endpoints" status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"] or "")'; }
for _ in $(seq 1 100); do [[ -n $(leader 2>/dev/null) ]] && break; sleep 0.1; done
for trial in $(seq 1 "$trials"); do
  target/debug/dedupctl --endpoints "$endpoints" claim failover "warm-$trial" --owner w >/dev/null
  victim=$(leader)
  kill -9 "${pids[$victim]}"; wait "${pids[$victim]}" 2>/dev/null || true
  started=$(date +%s%N)
  target/debug/dedupctl --endpoints "$endpoints" claim failover "key-$trial" --owner w >/dev/null
  echo "trial $trial: leader $victim killed; next claim acknowledged after $(( ($(date +%s%N) - started) / 1000000 )) ms"
  start "$victim"
  sleep 4
done
