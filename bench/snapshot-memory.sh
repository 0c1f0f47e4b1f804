#!/usr/bin/env bash
# What building a Raft snapshot costs in memory: starts NODES (3) dedupd nodes on 127.0.0.1:7701-770N
# (data in a temporary folder), writes RECORDS completed records with `dedupctl bench fill`,
# resets each node's peak-RSS mark (/proc/PID/clear_refs), builds a snapshot on every node
# (`dedupctl snapshot trigger --cluster`), and prints per node the RSS before, the peak RSS during
# the build, the build time, the snapshot file's size and the data folder's bytes per record
# once the log behind the snapshot is purged. Stops only the nodes it started.
#
#   bench/snapshot-memory.sh [RECORDS]        # default 1000000
#   DEDUPD=/tmp/dedupd-before bench/snapshot-memory.sh 1000000
#
# Knobs (env): DEDUPD (default target/release/dedupd), DEDUPCTL (target/release/dedupctl),
# EXTRA_ARGS (more dedupd flags), NODES (3, or 1: a one-node cluster, a third of the disk for a
# large RECORDS). Build first: cargo build --release --bins.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
records=${1:-1000000}
require_built "$dedupd" "$dedupctl"
nodes=${NODES:-3}
[[ $nodes == 1 || $nodes == 3 ]] || { echo "NODES must be 1 or 3" >&2; exit 2; }
ids=$(seq 1 "$nodes")
local_cluster 770 "$nodes"
peers=$PEERS
endpoints=$ENDPOINTS
work=$(mktemp -d /var/tmp/dedup-snapmem.XXXXXX)
declare -a pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for id in $ids; do
  # A snapshot policy far above the fill's entries: the only build is the one measured.
  # shellcheck disable=SC2086 # EXTRA_ARGS are words on purpose
  "$dedupd" --node-id "$id" --listen "127.0.0.1:770$id" --peers "$peers" --data-dir "$work/node-$id" \
    --snapshot-logs 10000000 ${EXTRA_ARGS:-} >"$work/node-$id.log" 2>&1 &
  pids+=($!)
done
kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

echo "dedupd: $dedupd ${EXTRA_ARGS:-}"
started=$(date +%s)
"$dedupctl" --endpoints "$endpoints" -o json bench fill --keys "$records" --concurrency 16 --batch 256 \
  --duration 1800s --target leader >"$work/fill.json"
written=$(python3 -c 'import json,sys; print(sum(json.loads(l)["items"] for l in open(sys.argv[1]) if l.startswith("{")))' "$work/fill.json")
echo "filled $written records in $(( $(date +%s) - started )) s"
[[ "$written" -ge "$records" ]] || { echo "the fill wrote $written of $records records" >&2; exit 1; }
declare -a before=()
for ((i = 0; i < nodes; i++)); do
  before[i]=$(kib "${pids[i]}" VmRSS)
  echo 5 >"/proc/${pids[i]}/clear_refs" # resets VmHWM to the current RSS
done
"$dedupctl" --endpoints "$endpoints" snapshot trigger --cluster -o json >"$work/trigger.json"
for ((i = 0; i < nodes; i++)); do
  id=$((i + 1))
  python3 - "$id" "${before[i]}" "$(kib "${pids[i]}" VmHWM)" "$work/trigger.json" \
    "$(stat -c %s "$work/node-$id/snapshot/current.snap")" "$(du -sb "$work/node-$id" | cut -f1)" "$written" <<'EOF'
import json, sys
node, before, peak, path, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
folder, records = int(sys.argv[6]), int(sys.argv[7])
rows = json.load(open(path))
rows = rows if isinstance(rows, list) else rows.get("nodes", [rows])
took = next((r.get("elapsed_ms") for r in rows if r.get("node_id") == node), None)
print(f"node {node}: RSS before {before / 1024:.0f} MiB, peak during the build {peak / 1024:.0f} MiB "
      f"(+{(peak - before) / 1024:.0f} MiB), build {took} ms, snapshot file {size / 2**20:.1f} MiB, "
      f"data folder {folder / records:.0f} bytes per record")
EOF
done
