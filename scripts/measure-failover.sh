#!/usr/bin/env bash
# Measures the write gap after a leader is killed: starts a local three-node cluster on ports
# 7301-7303 (data in a temporary folder), then TRIALS times: puts LOAD clients of new claims on all
# nodes, kills the leader with SIGKILL 4 s into the load, and times how long the next claim takes
# to be acknowledged (a new `dedupctl claim` after another, each retrying until a leader answers),
# and when the survivors first report a new leader. Restarts the killed node between trials.
# Stops only the processes it started.
#
#   scripts/measure-failover.sh                  # 5 trials, 16 clients of load, release build
#   TRIALS=10 LOAD=0 scripts/measure-failover.sh # no load
#   BIN_DIR=target/debug scripts/measure-failover.sh   # binaries already built there
#
# Knobs: TRIALS (5), LOAD (16; 0: none), BIN_DIR (default: builds target/release), and any
# further arguments go to every dedupd (for example --election-timeout-ms 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${TRIALS:-5}
load=${LOAD:-16}
if [[ -z ${BIN_DIR:-} ]]; then
  cargo build --quiet --release --bins
  BIN_DIR=target/release
fi
dedupd=$BIN_DIR/dedupd
dedupctl=$BIN_DIR/dedupctl
work=$(mktemp -d)
peers=1=127.0.0.1:7301,2=127.0.0.1:7302,3=127.0.0.1:7303
endpoints=127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303
declare -A pids
declare -a helpers=()
start() {
  "$dedupd" --node-id "$1" --listen "127.0.0.1:730$1" --peers "$peers" --data-dir "$work/node-$1" "${@:2}" \
    >>"$work/node-$1.log" 2>&1 &
  pids[$1]=$!
}
cleanup() {
  for pid in "${helpers[@]}" "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# The node that itself answers that it leads (empty while none does).
leader() {
  "$dedupctl" --endpoints "$endpoints" --timeout-ms 2000 -o json status 2>/dev/null | python3 -c 'import json,sys
d = json.load(sys.stdin)
print(next((n["node_id"] for n in d.get("nodes", []) if n.get("role") == "leader" and n.get("node_id") == d.get("leader_id")), ""))' \
    2>/dev/null || true
}
for id in 1 2 3; do start "$id" "$@"; done
for _ in $(seq 1 200); do [[ -n $(leader) ]] && break; sleep 0.1; done
worst=0
for trial in $(seq 1 "$trials"); do
  "$dedupctl" --endpoints "$endpoints" claim failover "warm-$trial" --owner w >/dev/null
  victim=$(leader)
  [[ -n $victim ]] || { echo "no leader before trial $trial" >&2; exit 1; }
  if ((load > 0)); then
    "$dedupctl" --endpoints "$endpoints" bench claim-new --target all --concurrency "$load" --connections 2 \
      --duration 10s >/dev/null 2>&1 &
    helpers+=($!)
    sleep 4
  fi
  killed=$(now_ms)
  kill -9 "${pids[$victim]}"
  wait "${pids[$victim]}" 2>/dev/null || true
  # Watch for the survivors' new leader while the probe claims.
  (for _ in $(seq 1 200); do
    l=$(leader)
    if [[ -n $l && $l != "$victim" ]]; then echo $(($(now_ms) - killed)) >"$work/elected-$trial"; break; fi
    sleep 0.03
  done) &
  helpers+=($!)
  "$dedupctl" --endpoints "$endpoints" --timeout-ms 20000 claim failover "key-$trial" --owner w >/dev/null
  acked=$(($(now_ms) - killed))
  wait "${helpers[@]}" 2>/dev/null || true
  helpers=()
  ((acked > worst)) && worst=$acked
  echo "trial $trial: leader $victim killed; new leader seen after $(cat "$work/elected-$trial" 2>/dev/null || echo '?') ms;" \
    "next claim acknowledged after $acked ms"
  start "$victim" "$@"
  sleep 4
done
echo "worst of $trials trial(s): $worst ms (load: $load clients)"
