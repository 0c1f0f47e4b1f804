#!/usr/bin/env bash
# How long a wiped node takes to catch up: starts three dedupd nodes on 127.0.0.1:7711-7713 (data
# in a temporary folder), writes RECORDS completed records with `dedupctl bench fill`, builds a
# snapshot on every node, then stops node 3, deletes its data folder, starts it again empty and
# times until it has installed the leader's snapshot and applied up to the leader's applied index
# (polling `dedupctl status` every 100 ms). Prints the catch-up time, node 3's peak RSS during it
# and the leader's applied index. Stops only the nodes it started.
#
#   bench/catch-up.sh [RECORDS]                 # default 1000000
#
# Knobs (env): DEDUPD (default target/release/dedupd), DEDUPCTL (target/release/dedupctl),
# EXTRA_ARGS (more dedupd flags), CATCH_UP_MAX_S (600: bound of the wait), KEEP_LOGS (a folder
# to copy the nodes' logs to). Build first:
# cargo build --release --bins.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
records=${1:-1000000}
max_s=${CATCH_UP_MAX_S:-600}
require_built "$dedupd" "$dedupctl"
local_cluster 771 3
peers=$PEERS
endpoints=$ENDPOINTS
work=$(mktemp -d /var/tmp/dedup-catchup.XXXXXX)
declare -A pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n ${KEEP_LOGS:-} ]]; then mkdir -p "$KEEP_LOGS" && cp "$work"/node-*.log "$KEEP_LOGS"/; fi
  rm -rf "$work"
}
trap cleanup EXIT
start() {
  # shellcheck disable=SC2086 # EXTRA_ARGS are words on purpose
  "$dedupd" --node-id "$1" --listen "127.0.0.1:771$1" --peers "$peers" --data-dir "$work/node-$1" \
    ${EXTRA_ARGS:-} >>"$work/node-$1.log" 2>&1 &
  pids[$1]=$!
}
# "LEADER_APPLIED NODE3_APPLIED" from one status call (empty fields while a node does not answer).
applied() {
  "$dedupctl" --endpoints "$endpoints" --timeout-ms 2000 -o json status 2>/dev/null | python3 -c 'import json,sys
d = json.load(sys.stdin)
nodes = {n.get("node_id"): n for n in d.get("nodes", []) if "node_id" in n}
leader = nodes.get(d.get("leader_id"), {})
print(leader.get("applied_index", ""), nodes.get(3, {}).get("applied_index", ""))' 2>/dev/null || true
}
for id in 1 2 3; do start "$id"; done
echo "dedupd: $dedupd ${EXTRA_ARGS:-}"
started=$(date +%s)
"$dedupctl" --endpoints "$endpoints" -o json bench fill --keys "$records" --concurrency 16 --batch 256 \
  --duration 1800s --target leader >"$work/fill.json"
echo "filled $records records in $(($(date +%s) - started)) s"
"$dedupctl" --endpoints "$endpoints" snapshot trigger --cluster -o json >/dev/null
kill "${pids[3]}"
wait "${pids[3]}" 2>/dev/null || true
rm -rf "$work/node-3"
read -r target _ <<<"$(applied)"
[[ -n $target ]] || { echo "no leader answered after stopping node 3" >&2; exit 1; }
t0=$(date +%s%N)
start 3
peak=0
while :; do
  read -r leader_applied node3_applied <<<"$(applied)"
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/${pids[3]}/status" 2>/dev/null || echo 0)
  ((hwm > peak)) && peak=$hwm
  if [[ -n ${node3_applied:-} && $node3_applied -ge $target ]]; then break; fi
  (($(date +%s%N) - t0 < max_s * 1000000000)) || { echo "node 3 did not catch up in $max_s s" >&2; exit 1; }
  kill -0 "${pids[3]}" 2>/dev/null || { echo "node 3 exited; see its log:" >&2; tail -5 "$work/node-3.log" >&2; exit 1; }
  sleep 0.1
done
took_ms=$((($(date +%s%N) - t0) / 1000000))
echo "wiped node 3 caught up to applied index $target (leader now at ${leader_applied:-?}) in $took_ms ms;" \
  "its peak RSS $((peak / 1024)) MiB; data folder $(du -sb "$work/node-3" | cut -f1) bytes"
