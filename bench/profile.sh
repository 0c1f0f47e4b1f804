#!/usr/bin/env bash
# Where a dedup-ledger write spends its time: starts three release nodes on 127.0.0.1:7501-7503
# (metrics on 9501-9503, data in a temporary folder), runs `dedupctl bench claim-new` against the
# leader and looks at it one way, then stops only the nodes it started. The figures in
# bench/profile.md come from these modes (build first: cargo build --release --bins):
#
#   bench/profile.sh metrics [CONCURRENCY]  # per-node storage and gRPC histograms (sums/counts)
#   bench/profile.sh strace  [CONCURRENCY]  # syscall counts of follower node 1 for 3 s (strace -c)
#   bench/profile.sh perf    [CONCURRENCY]  # perf record -g of the leader for 4 s, top symbols
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: bench/profile.sh metrics|strace|perf [CONCURRENCY]}
concurrency=${2:-1}
work=$(mktemp -d /var/tmp/dedup-profile.XXXXXX)
peers=1=127.0.0.1:7501,2=127.0.0.1:7502,3=127.0.0.1:7503
endpoints=127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7503
declare -a pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for id in 1 2 3; do
  target/release/dedupd --node-id "$id" --listen "127.0.0.1:750$id" --peers "$peers" --data-dir "$work/node-$id" \
    --metrics-listen "127.0.0.1:950$id" >"$work/node-$id.log" 2>&1 &
  pids+=($!)
done
sleep 3
bench() { target/release/dedupctl --endpoints "$endpoints" bench claim-new --concurrency "$concurrency" --duration "$1"; }
leader_pid() {
  local leader
  leader=$(target/release/dedupctl --endpoints "$endpoints" status -o json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
  echo "${pids[$((leader - 1))]}"
}
case $mode in
  metrics)
    bench 5s
    for id in 1 2 3; do
      echo "== node $id"
      curl -s "127.0.0.1:950$id/metrics" | grep -E "_sum|_count|is_leader " | grep -v '^#' | grep -v ' 0$' || true
    done
    ;;
  strace)
    bench 6s &
    load=$!
    sleep 1
    timeout 3 strace -f -c -p "${pids[0]}" \
      -e trace=fsync,fdatasync,pwrite64,write,writev,recvfrom,futex,epoll_wait,sync_file_range 2>&1 | tail -15 || true
    wait "$load"
    curl -s 127.0.0.1:9501/metrics | grep -E '^dedup_raft_is_leader '
    ;;
  perf)
    bench 8s &
    load=$!
    sleep 2
    perf record -F 499 -g -p "$(leader_pid)" -o "$work/perf.data" -- sleep 4 2>/dev/null
    wait "$load"
    perf report -i "$work/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | head -8
    perf report -i "$work/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' |
      grep -v '^$' | head -25
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
