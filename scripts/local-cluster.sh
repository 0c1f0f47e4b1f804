#!/usr/bin/env bash
# Builds dedupd and dedupctl, then runs a three-node dedup-ledger cluster on this machine:
# client endpoints 127.0.0.1:7101, 127.0.0.1:7102, 127.0.0.1:7103, data under .local-cluster/
# (kept across runs; pass --fresh to start empty). Ctrl-C stops all three nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=${DEDUP_LOCAL_DIR:-.local-cluster}
if [[ ${1:-} == --fresh ]]; then
  rm -rf "$data_dir"
fi
mkdir -p "$data_dir"

echo "building dedupd and dedupctl (cargo build --bins) ..."
cargo build --quiet --bins

peers=1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103
pids=()
stop() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    echo
    echo "stopping nodes ${pids[*]} ..."
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop INT TERM EXIT

for id in 1 2 3; do
  target/debug/dedupd --node-id "$id" --listen "127.0.0.1:710$id" --peers "$peers" \
    --data-dir "$data_dir/node-$id" --metrics-listen "127.0.0.1:910$id" >>"$data_dir/node-$id.log" 2>&1 &
  pids+=($!)
done

# Wait (bounded) until some node reports a leader.
for _ in $(seq 1 100); do
  if target/debug/dedupctl status --output json 2>/dev/null | grep -q '"role": *"leader"'; then
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a node exited; see $data_dir/node-*.log" >&2; exit 1; }
  done
  sleep 0.1
done

target/debug/dedupctl status || true
cat <<TEXT

dedup-ledger is running: client endpoints 127.0.0.1:7101, 127.0.0.1:7102, 127.0.0.1:7103
logs: $data_dir/node-{1,2,3}.log    data: $data_dir/node-{1,2,3}
metrics: http://127.0.0.1:9101/metrics (and :9102, :9103)

Try, in another terminal:
  target/debug/dedupctl claim orders order-42 --owner worker-a --lease-ms 30000
  target/debug/dedupctl complete orders order-42 --token <TOKEN> --outcome shipped
  target/debug/dedupctl claim orders order-42 --owner worker-b      # -> COMPLETED: shipped
  target/debug/dedupctl health --cluster
  target/debug/dedupctl leader transfer

Ctrl-C stops the cluster.
TEXT
wait
