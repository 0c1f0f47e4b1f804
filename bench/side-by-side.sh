#!/usr/bin/env bash
# Side-by-side benchmark (issue 6): dedup-ledger (three nodes), etcd 3.4 (three members) and Redis
# (without persistence, and with appendfsync always) on this machine, in one run, then
# docs/benchmarks.md with tables, PNG plots, machine facts and the exact command.
#
#   bench/side-by-side.sh              # the full benchmark (about an hour; run it on a quiet machine)
#   QUICK=1 bench/side-by-side.sh      # smoke run: 1 s cells, 1 repetition, 1 and 16 clients, 10k records
#
# Steps: installs etcd-server, etcd-client, redis-server, protobuf-compiler and fio from Debian if
# missing (stopping and disabling any service those packages start); builds the release dedupd and
# dedupctl and bench/compare-load; starts everything on 127.0.0.1 only; runs claim-new, claim-dup
# and batch-claim (64 keys) at each client count on every system, interleaved (the system order
# rotates from cell to cell), REPS times on freshly started systems, recording the load average
# before each cell; then, dedup-ledger alone: fills of FILL_RECORDS records with RSS per node and
# data bytes per record, restart to serving, duplicate checks on a cold hot tier, and the write
# gap when the leader is SIGKILLed under load. Stops only the processes it started (by PID).
#
# Env knobs (full defaults; QUICK=1 changes those marked *):
#   QUICK=0                 1: smoke-run defaults
#   DURATION_S=10 *         seconds per cell (QUICK: 1)
#   REPS=3 *                repetitions of the whole matrix (QUICK: 1)
#   CONCURRENCY="1 4 16 64 256" *  client counts (QUICK: "1 16")
#   PATHS="claim-new claim-dup batch-claim"
#   SYSTEMS="ledger etcd redis redis-aof"
#   BATCH=64                keys per batch-claim call
#   CONNECTIONS=4           connections per target node (at most one per client)
#   DUP_KEYS=10000 *        keys written before each claim-dup cell (QUICK: 2000)
#   LEASE_MS=3600000        lease of every claim (dedup-ledger's maximum; etcd lease TTL, Redis PX);
#                           longer than a repetition so no etcd lease revocation lands in a cell
#   FILL_RECORDS="1000000 10000000" *  cumulative record counts of the ledger fills (QUICK: 10000)
#   FILL_BATCH=256          records per fill call; FILL_CONCURRENCY=16 calls in flight
#   FILL_TIME_MAX_S=3600    bound of each fill step
#   RESTART_WAIT_MAX_S=120  bound of the restart-to-serving wait
#   COLD_DUP_CONCURRENCY=64 *  clients of the duplicate checks after a restart (QUICK: 16)
#   FAILOVER_TRIALS=3 *     leader kills (QUICK: 1); FAILOVER_LOAD_CONCURRENCY=16
#   FIO=1                   measure fdatasync latency with fio first (22 MB; QUICK: 2 MB)
#   SKIP_INSTALL=0          1: do not apt-get anything (the tools must be there)
#   SKIP_BUILD=0            1: do not build dedupd/dedupctl, use those in LEDGER_BIN_DIR as they are
#   LEDGER_BIN_DIR=target/release   where dedupd and dedupctl are (the loader is always built)
#   BUILD_NICE=10           nice level of the cargo builds
#   WORK_DIR=(mktemp -d /var/tmp/dedup-bench.XXXXXX)   data and logs; removed at the end
#   KEEP_WORK=0             1: keep WORK_DIR (logs, data) after the run
#   RESULTS=bench/target/results/side-by-side-<UTC time>.jsonl
#   DOC=docs/benchmarks.md  PLOTS_DIR=docs/benchmarks
# Ports: dedup-ledger 7401-7403, etcd 23791-23793 (peers 23801-23803), Redis 63791 and 63792.
set -euo pipefail
cd "$(dirname "$0")/.."
# The exact command: the knobs set in the environment, then the script and its arguments.
COMMAND=""
for knob in QUICK DURATION_S REPS CONCURRENCY PATHS SYSTEMS BATCH CONNECTIONS DUP_KEYS LEASE_MS FILL_RECORDS \
  FILL_BATCH FILL_CONCURRENCY FILL_TIME_MAX_S RESTART_WAIT_MAX_S COLD_DUP_CONCURRENCY FAILOVER_TRIALS \
  FAILOVER_LOAD_CONCURRENCY FIO SKIP_INSTALL SKIP_BUILD LEDGER_BIN_DIR BUILD_NICE WORK_DIR KEEP_WORK RESULTS DOC \
  PLOTS_DIR; do
  if [[ -n ${!knob+set} ]]; then COMMAND+="$knob=$(printf '%q' "${!knob}") "; fi
done
COMMAND+="bench/side-by-side.sh${*:+ $*}"
STARTED_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  q() { printf '%s' "$1"; }
else
  q() { printf '%s' "$2"; }
fi
DURATION_S=${DURATION_S:-$(q 1 10)}
REPS=${REPS:-$(q 1 3)}
CONCURRENCY=${CONCURRENCY:-$(q "1 16" "1 4 16 64 256")}
PATHS=${PATHS:-"claim-new claim-dup batch-claim"}
SYSTEMS=${SYSTEMS:-"ledger etcd redis redis-aof"}
BATCH=${BATCH:-64}
CONNECTIONS=${CONNECTIONS:-4}
DUP_KEYS=${DUP_KEYS:-$(q 2000 10000)}
LEASE_MS=${LEASE_MS:-3600000}
FILL_RECORDS=${FILL_RECORDS:-$(q 10000 "1000000 10000000")}
FILL_BATCH=${FILL_BATCH:-256}
FILL_CONCURRENCY=${FILL_CONCURRENCY:-16}
FILL_TIME_MAX_S=${FILL_TIME_MAX_S:-3600}
RESTART_WAIT_MAX_S=${RESTART_WAIT_MAX_S:-120}
COLD_DUP_CONCURRENCY=${COLD_DUP_CONCURRENCY:-$(q 16 64)}
FAILOVER_TRIALS=${FAILOVER_TRIALS:-$(q 1 3)}
FAILOVER_LOAD_CONCURRENCY=${FAILOVER_LOAD_CONCURRENCY:-16}
FIO=${FIO:-1}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
LEDGER_BIN_DIR=${LEDGER_BIN_DIR:-target/release}
BUILD_NICE=${BUILD_NICE:-10}
KEEP_WORK=${KEEP_WORK:-0}
RESULTS=${RESULTS:-bench/target/results/side-by-side-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
DOC=${DOC:-docs/benchmarks.md}
PLOTS_DIR=${PLOTS_DIR:-docs/benchmarks}

KNOBS=(QUICK DURATION_S REPS CONCURRENCY PATHS SYSTEMS BATCH CONNECTIONS DUP_KEYS LEASE_MS FILL_RECORDS FILL_BATCH
  FILL_CONCURRENCY COLD_DUP_CONCURRENCY FAILOVER_TRIALS FAILOVER_LOAD_CONCURRENCY FIO)

LEDGER_PORTS=(7401 7402 7403)
ETCD_CLIENT_PORTS=(23791 23792 23793)
ETCD_PEER_PORTS=(23801 23802 23803)
REDIS_PORT=63791
REDIS_AOF_PORT=63792
LEDGER_EPS=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
LEDGER_PEERS=1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403
ETCD_EPS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
DEDUPD=$LEDGER_BIN_DIR/dedupd
DEDUPCTL=$LEDGER_BIN_DIR/dedupctl
LOADER=bench/target/release/compare-load
VENV=bench/target/venv
PY=python3

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_ns() { date +%s%N; }

# ---------------------------------------------------------------- processes we started
declare -A PIDS=()  # name -> pid
declare -A COMMS=() # name -> expected /proc/PID/comm

# Starts "$@" in the background as NAME, logging to WORK/logs/NAME.log.
spawn() {
  local name=$1 comm=$2
  shift 2
  "$@" >>"$WORK/logs/$name.log" 2>&1 &
  PIDS[$name]=$!
  COMMS[$name]=$comm
}

# Stops the named processes that we started: SIGTERM, up to 20 s, then SIGKILL. Only a PID that
# still runs the program we started is signalled.
stop() {
  local name pid
  local -a waiting=()
  for name in "$@"; do
    pid=${PIDS[$name]:-}
    [[ -n $pid ]] || continue
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${COMMS[$name]}" ]]; then
      kill -TERM "$pid" 2>/dev/null || true
      waiting+=("$name")
    fi
  done
  local deadline=$(($(date +%s) + 20))
  for name in "${waiting[@]}"; do
    pid=${PIDS[$name]}
    while kill -0 "$pid" 2>/dev/null && (($(date +%s) < deadline)); do sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${COMMS[$name]}" ]]; then
      log "$name (pid $pid) did not stop in 20 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  for name in "$@"; do unset "PIDS[$name]"; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((${#PIDS[@]})); then
    log "stopping the processes this run started: ${PIDS[*]}"
    stop "${!PIDS[@]}"
  fi
  if [[ -n ${WORK:-} && -d $WORK ]]; then
    if [[ $KEEP_WORK == 1 || $rc != 0 ]]; then
      log "work folder kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

# ---------------------------------------------------------------- install and build
install_packages() {
  local -a missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v protoc >/dev/null || missing+=(protobuf-compiler)
  command -v ss >/dev/null || missing+=(iproute2)
  [[ $FIO != 1 ]] || command -v fio >/dev/null || missing+=(fio)
  if ((${#missing[@]})); then
    [[ $SKIP_INSTALL != 1 ]] || die "missing ${missing[*]} and SKIP_INSTALL=1"
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # The packages' own services would use the default ports and data folders: stop and disable
    # them (only those of the packages installed just now).
    local unit
    for unit in etcd redis-server; do
      case " ${missing[*]} " in *" ${unit%-server}"*) ;; *) continue ;; esac
      if [[ -d /run/systemd/system ]]; then
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
      elif command -v service >/dev/null; then
        service "$unit" stop >/dev/null 2>&1 || true
      fi
    done
  fi
  if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "creating $VENV with matplotlib (PyPI)"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      [[ $SKIP_INSTALL != 1 ]] || die "python3 -m venv failed and SKIP_INSTALL=1"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q matplotlib
  fi
}

build() {
  if [[ $SKIP_BUILD == 1 ]]; then
    log "SKIP_BUILD=1: using $DEDUPD and $DEDUPCTL as they are"
  else
    log "building release dedupd and dedupctl (cargo build --release --bins)"
    nice -n "$BUILD_NICE" cargo build --quiet --release --bins
  fi
  log "building the etcd/Redis load generator (cargo build --release --manifest-path bench/Cargo.toml)"
  nice -n "$BUILD_NICE" cargo build --quiet --release --manifest-path bench/Cargo.toml
  [[ -x $DEDUPD && -x $DEDUPCTL ]] || die "no $DEDUPD / $DEDUPCTL"
  [[ -x $LOADER ]] || die "no $LOADER"
}

# ---------------------------------------------------------------- systems
start_ledger() { # [fresh]
  local id
  [[ ${1:-} != fresh ]] || rm -rf "$WORK/ledger"
  for id in 1 2 3; do
    mkdir -p "$WORK/ledger/node-$id"
    spawn "ledger-$id" dedupd "$DEDUPD" --node-id "$id" --listen "127.0.0.1:${LEDGER_PORTS[id - 1]}" \
      --peers "$LEDGER_PEERS" --data-dir "$WORK/ledger/node-$id"
  done
}

# The id of the node that itself answers that it is the leader (empty when none does yet).
ledger_leader() {
  "$DEDUPCTL" --endpoints "$LEDGER_EPS" --timeout-ms 2000 -o json status 2>/dev/null | $PY -c 'import json,sys
d = json.load(sys.stdin)
print(next((n["node_id"] for n in d.get("nodes", []) if n.get("role") == "leader" and n.get("node_id") == d.get("leader_id")), ""))' \
    2>/dev/null || true
}

# Appends the status of every node (Raft counters, hot tier, data bytes) to RESULTS.
ledger_status() { # WHEN
  "$DEDUPCTL" --endpoints "$LEDGER_EPS" --timeout-ms 5000 -o json status 2>/dev/null |
    $PY -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"nodes": d.get("nodes", []), "leader_id": d.get("leader_id")}))' \
      2>/dev/null | $PY bench/report.py annotate kind=ledger-status "when=$1" >>"$RESULTS" || true
}

# Waits until a leader answers, and is still the leader a second later (right after a start a
# second election round may follow the first).
wait_ledger() {
  local i leader deadline=$(($(date +%s) + 60))
  for i in $(seq 1 600); do
    (($(date +%s) < deadline)) || break
    leader=$(ledger_leader)
    if [[ -n $leader ]]; then
      sleep 1
      [[ $(ledger_leader) != "$leader" ]] || return 0
    fi
    for id in 1 2 3; do
      [[ -z ${PIDS[ledger-$id]:-} ]] || kill -0 "${PIDS[ledger-$id]}" 2>/dev/null ||
        die "dedupd node $id exited; see $WORK/logs/ledger-$id.log"
    done
    sleep 0.1
  done
  die "dedup-ledger elected no leader in 60 s"
}

start_etcd() {
  rm -rf "$WORK/etcd"
  local i cluster=""
  for i in 1 2 3; do cluster+="${cluster:+,}n$i=http://127.0.0.1:${ETCD_PEER_PORTS[i - 1]}"; done
  for i in 1 2 3; do
    spawn "etcd-$i" etcd etcd --name "n$i" --data-dir "$WORK/etcd/n$i" \
      --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[i - 1]}" \
      --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[i - 1]}" \
      --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[i - 1]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[i - 1]}" \
      --initial-cluster "$cluster" --initial-cluster-token "bench-$$" --initial-cluster-state new \
      --quota-backend-bytes $((8 * 1024 * 1024 * 1024))
  done
}

wait_etcd() {
  local i
  for i in $(seq 1 300); do
    if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" --command-timeout=2s endpoint health >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  die "etcd did not become healthy in 30 s; see $WORK/logs/etcd-*.log"
}

start_redis() {
  rm -rf "$WORK/redis" "$WORK/redis-aof"
  mkdir -p "$WORK/redis" "$WORK/redis-aof"
  spawn redis redis-server redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK/redis" --daemonize no
  spawn redis-aof redis-server redis-server --port "$REDIS_AOF_PORT" --bind 127.0.0.1 --save '' \
    --appendonly yes --appendfsync always --dir "$WORK/redis-aof" --daemonize no
}

wait_redis() {
  local port i
  for port in "$REDIS_PORT" "$REDIS_AOF_PORT"; do
    for i in $(seq 1 100); do
      [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && continue 2
      sleep 0.1
    done
    die "redis on $port did not answer in 10 s"
  done
}

has_system() { [[ " $SYSTEMS " == *" $1 "* ]]; }

start_all() {
  if has_system ledger; then start_ledger fresh; fi
  if has_system etcd; then start_etcd; fi
  if has_system redis || has_system redis-aof; then start_redis; fi
  if has_system ledger; then wait_ledger; fi
  if has_system etcd; then wait_etcd; fi
  if has_system redis || has_system redis-aof; then wait_redis; fi
  sleep 1
}

stop_all() { ((${#PIDS[@]} == 0)) || stop "${!PIDS[@]}"; }

# ---------------------------------------------------------------- cells
# cell_cmd SYSTEM PATH CONCURRENCY DURATION_S -> CMD array
cell_cmd() {
  local system=$1 path=$2 c=$3 duration=$4
  local conns=$((c < CONNECTIONS ? c : CONNECTIONS))
  local -a common=(--concurrency "$c" --connections "$conns" --duration "${duration}s" --key-bytes 32
    --outcome-bytes 64 --lease-ms "$LEASE_MS" --max-ops 100000000)
  case $path in
    claim-dup) common+=(--keys "$DUP_KEYS") ;;
    batch-claim) common+=(--batch "$BATCH") ;;
  esac
  case $system in
    ledger) CMD=("$DEDUPCTL" --endpoints "$LEDGER_EPS" -o json bench "$path" --target leader "${common[@]}") ;;
    etcd) CMD=("$LOADER" etcd "$path" --endpoints "$ETCD_EPS" --target leader -o json "${common[@]}") ;;
    redis) CMD=("$LOADER" redis "$path" --endpoints "127.0.0.1:$REDIS_PORT" -o json "${common[@]}") ;;
    redis-aof) CMD=("$LOADER" redis "$path" --endpoints "127.0.0.1:$REDIS_AOF_PORT" -o json "${common[@]}") ;;
    *) die "unknown system $system" ;;
  esac
}

# run_json KIND CMD... with extra annotations in ANNOTATE: runs the command (bounded by timeout),
# appends its JSON lines to RESULTS with the annotations, the load averages and the command.
run_json() {
  local kind=$1
  shift
  local before after out rc=0 cmd_text
  before=$(cut -d' ' -f1-3 /proc/loadavg)
  cmd_text=$(shell_join "$@")
  out=$(timeout "$CELL_TIMEOUT_S" "$@" 2>"$WORK/logs/last.err") || rc=$?
  after=$(cut -d' ' -f1-3 /proc/loadavg)
  { echo "== $cmd_text (exit $rc)"; cat "$WORK/logs/last.err"; } >>"$WORK/logs/cells.err"
  local -a fields=("kind=$kind" "loadavg_before=$before" "loadavg_after=$after" "load1_before=${before%% *}"
    "cmd=$cmd_text" "exit=$rc" "${ANNOTATE[@]}")
  if grep -q '^{' <<<"$out"; then
    $PY bench/report.py annotate "${fields[@]}" <<<"$out" >>"$RESULTS"
    LAST_JSON=$(grep '^{' <<<"$out" | tail -1)
  else
    fields[0]="kind=$kind-failed"
    fields+=("stderr_tail=$(tail -c 600 "$WORK/logs/last.err")")
    $PY bench/report.py annotate "${fields[@]}" <<<'{}' >>"$RESULTS"
    LAST_JSON=""
    log "  $kind failed (exit $rc): ${cmd_text}: $(tail -n 3 "$WORK/logs/last.err")"
  fi
}

# The arguments as one shell command line, quoting only what needs it.
shell_join() {
  local arg out=""
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then out+="$arg "; else out+="$(printf '%q' "$arg") "; fi
  done
  printf '%s' "${out% }"
}

summary() { # one line of a cell result for the console
  $PY -c 'import json,sys
r=json.loads(sys.stdin.read().strip() or "{}")
print("%10.0f ops/s %10.0f items/s  p50 %.3f ms  p99 %.3f ms  errors %s" % (r.get("ops_per_sec",0), r.get("items_per_sec",0), r.get("p50_ms",0), r.get("p99_ms",0), r.get("errors","?")))' <<<"$LAST_JSON"
}

run_matrix() {
  local rep path c cell=0 i n system
  local -a systems order
  read -r -a systems <<<"$SYSTEMS"
  n=${#systems[@]}
  for rep in $(seq 1 "$REPS"); do
    log "repetition $rep of $REPS: starting fresh systems ($SYSTEMS)"
    start_all
    for path in $PATHS; do
      for c in $CONCURRENCY; do
        order=()
        for i in $(seq 0 $((n - 1))); do order+=("${systems[(i + cell) % n]}"); done
        for system in "${order[@]}"; do
          cell_cmd "$system" "$path" "$c" "$DURATION_S"
          ANNOTATE=("system=$system" "rep=$rep" "cell=$cell")
          run_json cell "${CMD[@]}"
          log "  rep $rep $path c=$c $(printf '%-9s' "$system") $(summary)"
        done
        cell=$((cell + 1))
      done
    done
    if has_system ledger; then ledger_status "after repetition $rep"; fi
    log "repetition $rep done: stopping the systems"
    stop_all
  done
}

# ---------------------------------------------------------------- dedup-ledger alone
node_resources() { # RECORDS WHEN
  local id pid rss hwm bytes
  for id in 1 2 3; do
    pid=${PIDS[ledger-$id]:-}
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo null)
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo null)
    bytes=$(du -sb "$WORK/ledger/node-$id" | cut -f1)
    $PY bench/report.py annotate kind=resources "records=$1" "when=$2" "node=$id" "rss_kb=${rss:-null}" \
      "hwm_kb=${hwm:-null}" "data_bytes=$bytes" <<<'{}' >>"$RESULTS"
    log "  node $id: RSS $((${rss:-0} / 1024)) MiB, data $((bytes / 1048576)) MiB ($2)"
  done
}

# Time from starting all three nodes until a new claim is acknowledged.
restart_to_serving() { # RECORDS
  local records=$1 t0 t1 stop_s i served=null deadline
  t0=$(now_ns)
  stop ledger-1 ledger-2 ledger-3
  t1=$(now_ns)
  stop_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
  t0=$(now_ns)
  start_ledger
  deadline=$(($(date +%s) + RESTART_WAIT_MAX_S))
  for i in $(seq 1 100000); do
    if "$DEDUPCTL" --endpoints "$LEDGER_EPS" --timeout-ms 500 claim bench-restart "r-$records-$i" --owner probe \
      >/dev/null 2>&1; then
      served=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
      break
    fi
    (($(date +%s) < deadline)) || break
    sleep 0.02
  done
  $PY bench/report.py annotate kind=restart "records=$records" "stop_seconds=$stop_s" \
    "seconds_to_serving=$served" "wait_max_s=$RESTART_WAIT_MAX_S" <<<'{}' >>"$RESULTS"
  log "  restart with $records records: stop ${stop_s}s, serving after ${served}s"
  [[ $served != null ]] || wait_ledger
}

probe_claims() { # OUT TRIAL DEADLINE_S: one claim after another, "START END ok|fail" per claim
  local out=$1 trial=$2 deadline=$3 i s
  for i in $(seq 1 100000); do
    (($(date +%s) < deadline)) || break
    s=$(now_ns)
    if "$DEDUPCTL" --endpoints "$LEDGER_EPS" --timeout-ms 10000 claim bench-failover "p-$trial-$i" --owner probe \
      >/dev/null 2>&1; then
      echo "$s $(now_ns) ok"
    else
      echo "$s $(now_ns) fail"
    fi >>"$out"
  done
}

failover() { # RECORDS
  local records=$1 trial victim load_out probe_out kill_ns dead_ns gap load_pid probe_pid load_s=$((DURATION_S + 12))
  for trial in $(seq 1 "$FAILOVER_TRIALS"); do
    victim=$(ledger_leader)
    [[ -n $victim ]] || { wait_ledger; victim=$(ledger_leader); }
    load_out=$WORK/failover-load-$trial.json
    probe_out=$WORK/failover-probe-$trial.log
    : >"$probe_out"
    timeout $((load_s + 60)) "$DEDUPCTL" --endpoints "$LEDGER_EPS" -o json bench claim-new --target all \
      --concurrency "$FAILOVER_LOAD_CONCURRENCY" --connections 2 --duration "${load_s}s" --lease-ms "$LEASE_MS" \
      >"$load_out" 2>>"$WORK/logs/cells.err" &
    load_pid=$!
    probe_claims "$probe_out" "$trial" $(($(date +%s) + load_s)) &
    probe_pid=$!
    sleep 4
    kill_ns=$(now_ns)
    [[ $(cat "/proc/${PIDS[ledger-$victim]}/comm" 2>/dev/null) == dedupd ]] || die "leader node $victim is not running"
    kill -KILL "${PIDS[ledger-$victim]}"
    wait "${PIDS[ledger-$victim]}" 2>/dev/null || true
    dead_ns=$(now_ns)
    unset "PIDS[ledger-$victim]"
    log "  failover trial $trial: killed leader node $victim under load"
    wait "$probe_pid" || true
    wait "$load_pid" || true
    gap=$($PY bench/report.py gap --probe "$probe_out" --kill-ns "$kill_ns" --dead-ns "$dead_ns")
    $PY -c 'import json,sys
gap=json.loads(sys.argv[1]); load={}
for line in open(sys.argv[2]):
    if line.startswith("{"): load=json.loads(line)
gap.update(kind="failover", trial=int(sys.argv[3]), victim=int(sys.argv[4]), records=int(sys.argv[5]),
    load_ops_per_sec=load.get("ops_per_sec"), load_errors=load.get("errors"), load_errors_by_reason=load.get("errors_by_reason"),
    load_p99_ms=load.get("p99_ms"), load_max_ms=load.get("max_ms"))
print(json.dumps(gap, sort_keys=True))' "$gap" "$load_out" "$trial" "$victim" "$records" >>"$RESULTS"
    log "  failover trial $trial: $gap"
    # Bring the killed node back and let it catch up before the next trial.
    spawn "ledger-$victim" dedupd "$DEDUPD" --node-id "$victim" --listen "127.0.0.1:${LEDGER_PORTS[victim - 1]}" \
      --peers "$LEDGER_PEERS" --data-dir "$WORK/ledger/node-$victim"
    wait_ledger
    sleep 5
  done
}

run_ledger_alone() {
  local total=0 records add prefix
  log "dedup-ledger alone: fills of $FILL_RECORDS records, restarts, failover"
  start_ledger fresh
  wait_ledger
  for records in $FILL_RECORDS; do
    add=$((records - total))
    ((add > 0)) || continue
    CELL_TIMEOUT_S=$((FILL_TIME_MAX_S + 120))
    ANNOTATE=("records_total=$records")
    run_json fill "$DEDUPCTL" --endpoints "$LEDGER_EPS" -o json bench fill --keys "$add" --batch "$FILL_BATCH" \
      --concurrency "$FILL_CONCURRENCY" --duration "${FILL_TIME_MAX_S}s" --key-bytes 32 --outcome-bytes 64 \
      --lease-ms "$LEASE_MS"
    log "  fill to $records records: $(summary)"
    if [[ -z $LAST_JSON ]]; then
      log "  retrying the fill once"
      wait_ledger
      sleep 2
      run_json fill "$DEDUPCTL" --endpoints "$LEDGER_EPS" -o json bench fill --keys "$add" --batch "$FILL_BATCH" \
        --concurrency "$FILL_CONCURRENCY" --duration "${FILL_TIME_MAX_S}s" --key-bytes 32 --outcome-bytes 64 \
        --lease-ms "$LEASE_MS"
      log "  fill to $records records: $(summary)"
    fi
    prefix=$($PY -c 'import json,sys; print(json.loads(sys.stdin.read().strip() or "{}").get("key_prefix",""))' <<<"$LAST_JSON")
    written=$($PY -c 'import json,sys; print(json.loads(sys.stdin.read().strip() or "{}").get("items",0))' <<<"$LAST_JSON")
    total=$((total + written))
    sleep 3
    ledger_status "after the fill to $total records"
    node_resources "$total" "after fill"
    restart_to_serving "$total"
    CELL_TIMEOUT_S=$((DURATION_S + 300))
    if [[ -n $prefix ]] && ((written > 0)); then
      ANNOTATE=("system=ledger" "records=$total")
      run_json cold-dup "$DEDUPCTL" --endpoints "$LEDGER_EPS" -o json bench claim-dup --skip-preload \
        --key-prefix "$prefix" --keys "$written" --concurrency "$COLD_DUP_CONCURRENCY" \
        --connections "$CONNECTIONS" --duration "${DURATION_S}s" --key-bytes 32 --lease-ms "$LEASE_MS"
      log "  claim-dup after restart (cold hot tier): $(summary)"
    fi
    node_resources "$total" "after restart"
  done
  failover "$total"
  stop_all
}

# ---------------------------------------------------------------- main
main() {
  [[ $(id -u) == 0 || $SKIP_INSTALL == 1 ]] || die "run as root (apt-get), or install the tools and set SKIP_INSTALL=1"
  install_packages
  build
  local port
  for port in "${LEDGER_PORTS[@]}" "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" "$REDIS_PORT" "$REDIS_AOF_PORT"; do
    port_free "$port" || die "port $port is in use on this machine; stop what uses it (this script stops only what it starts)"
  done
  WORK=${WORK_DIR:-$(mktemp -d /var/tmp/dedup-bench.XXXXXX)}
  mkdir -p "$WORK/logs" "$(dirname "$RESULTS")" "$PLOTS_DIR"
  : >"$RESULTS"
  log "work folder $WORK; results $RESULTS"

  local fio_json=null
  if [[ $FIO == 1 ]]; then
    log "fdatasync probe (fio, etcd WAL pattern)"
    mkdir -p "$WORK/fio"
    if fio --rw=write --ioengine=sync --fdatasync=1 --directory="$WORK/fio" --size="$(q 2m 22m)" --bs=2300 \
      --name=wal-like --output-format=json >"$WORK/fio.json" 2>>"$WORK/logs/fio.err"; then
      fio_json=$($PY bench/report.py fio "$WORK/fio.json")
    fi
    rm -rf "$WORK/fio"
  fi

  machine_facts "$fio_json"
  CELL_TIMEOUT_S=$((DURATION_S + 300))
  run_matrix
  run_ledger_alone
  $PY bench/report.py annotate kind=finished "finished_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)" <<<'{}' >>"$RESULTS"

  cp "$RESULTS" "$PLOTS_DIR/results.jsonl"
  "$VENV/bin/python" bench/report.py report --results "$RESULTS" --doc "$DOC" --plots "$PLOTS_DIR" \
    --raw-copy "$PLOTS_DIR/results.jsonl"
  log "done: $DOC, plots in $PLOTS_DIR, raw results $RESULTS"
}

machine_facts() { # FIO_JSON
  local knobs="{" k
  for k in "${KNOBS[@]}"; do knobs+="\"$k\": \"${!k}\", "; done
  knobs="${knobs%, }}"
  local dirty=false
  git diff --quiet HEAD 2>/dev/null || dirty=true
  $PY bench/report.py machine --out "$RESULTS" --work "$WORK" \
    --fact "command=$COMMAND" --fact "knobs=$knobs" --fact "quick=$([[ $QUICK == 1 ]] && echo true || echo false)" \
    --fact "started_utc=$STARTED_UTC" \
    --fact "git_commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" --fact "git_dirty=$dirty" \
    --fact "rustc=$(rustc --version 2>/dev/null || echo unknown)" \
    --fact "etcd_version=$(etcd --version 2>/dev/null | head -1 | sed 's/^etcd Version: //')" \
    --fact "redis_version=$(redis-server --version | sed 's/^Redis server v=\([^ ]*\).*/\1/')" \
    --fact "fio=$1" \
    --fact "ledger_binaries=$DEDUPD and $DEDUPCTL, $([[ $SKIP_BUILD == 1 ]] && echo "not built by this run (SKIP_BUILD=1)" || echo "built by this run from the working tree")"
}

main
