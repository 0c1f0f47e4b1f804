#!/usr/bin/env bash
# What a change buys: the same `dedupctl bench` cells against two dedupd builds (or one build with
# two sets of flags), interleaved A, B, A, B, ... so that the machine's drift hits both alike.
# Each cell starts a fresh three-node cluster on 127.0.0.1:7601-7603 (data in a temporary folder),
# waits for a leader, runs one bench, stops only the nodes it started. Prints one line per run
# and the median per side and cell; the JSON of every run goes to $OUT (default
# target/ab/results.jsonl).
#
#   A=/tmp/dedupd-before B=target/release/dedupd bench/ab.sh
#   A_ARGS="--worker-threads 2" B_ARGS="--worker-threads 1" bench/ab.sh
#
# Knobs (env): A, B (dedupd binaries; default target/release/dedupd), A_ARGS, B_ARGS (extra
# dedupd flags), CELLS (default "claim-new:64 claim-dup:64 claim-new:1"; PATH:CONCURRENCY, with
# claim-dup aimed at a follower), REPS (3), DURATION (5s), DEDUPCTL (target/release/dedupctl).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
a=${A:-$dedupd}
b=${B:-$dedupd}
cells=${CELLS:-claim-new:64 claim-dup:64 claim-new:1}
reps=${REPS:-3}
duration=${DURATION:-5s}
out=${OUT:-target/ab/results.jsonl}
mkdir -p "$(dirname "$out")"
: >"$out"
require_built "$a" "$b" "$dedupctl"
local_cluster 760 3
peers=$PEERS
endpoints=$ENDPOINTS
work=$(mktemp -d /var/tmp/dedup-ab.XXXXXX)
declare -a pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT

# run SIDE EXE ARGS PATH CONCURRENCY: one fresh cluster, one bench, one JSON line.
run() {
  local side=$1 exe=$2 args=$3 path=$4 concurrency=$5
  rm -rf "${work:?}"/node-*
  for id in 1 2 3; do
    # shellcheck disable=SC2086 # ARGS are words on purpose
    "$exe" --node-id "$id" --listen "127.0.0.1:760$id" --peers "$peers" --data-dir "$work/node-$id" $args \
      >"$work/node-$id.log" 2>&1 &
    pids+=($!)
  done
  local target=leader
  [[ $path == claim-dup ]] && target=follower
  local json
  if ! json=$("$dedupctl" --endpoints "$endpoints" bench "$path" --concurrency "$concurrency" \
    --duration "$duration" --target "$target" --output json 2>"$work/bench.err"); then
    echo "bench failed ($side $path c=$concurrency):" >&2
    cat "$work/bench.err" >&2
    stop
    exit 1
  fi
  stop
  python3 - "$side" "$exe" "$args" "$json" >>"$out" <<'EOF'
import json, sys
side, exe, args, text = sys.argv[1:]
for line in text.splitlines():
    if line.strip().startswith("{"):
        row = json.loads(line)
        row.update(side=side, exe=exe, args=args)
        print(json.dumps(row))
EOF
  tail -1 "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("%s %-10s c=%-4s %9.0f ops/s  p50 %.3f ms  p99 %.2f ms  errors %s"
      % (r["side"], r["path"], r["concurrency"], r["ops_per_sec"], r["p50_ms"], r["p99_ms"], r["errors"]))'
}

echo "A: $a ${A_ARGS:-}"
echo "B: $b ${B_ARGS:-}"
for cell in $cells; do
  path=${cell%%:*}
  concurrency=${cell##*:}
  for ((rep = 1; rep <= reps; rep++)); do
    run A "$a" "${A_ARGS:-}" "$path" "$concurrency"
    run B "$b" "${B_ARGS:-}" "$path" "$concurrency"
  done
done

python3 - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cells = sorted({(r["path"], r["concurrency"]) for r in rows}, key=lambda c: (c[0], c[1]))
print("\nmedians            A ops/s   B ops/s   B/A    A p50 ms  B p50 ms  A p99 ms  B p99 ms")
for path, conc in cells:
    def med(side, key):
        return statistics.median(r[key] for r in rows if r["side"] == side and r["path"] == path and r["concurrency"] == conc)
    a, b = med("A", "ops_per_sec"), med("B", "ops_per_sec")
    print(f"{path:<10} c={conc:<4} {a:>9.0f} {b:>9.0f}  {b / a:5.2f}x  {med('A','p50_ms'):>8.3f}  {med('B','p50_ms'):>8.3f}"
          f"  {med('A','p99_ms'):>8.2f}  {med('B','p99_ms'):>8.2f}")
EOF
