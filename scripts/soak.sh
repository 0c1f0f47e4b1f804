#!/usr/bin/env bash
# The safety suites, longer (issue 3): `scripts/soak.sh 30m` (a duration in s, m or h) shares the
# time between the deterministic simulation (fresh seeds), the real-process fault schedules
# (fresh seeds, repeated) and the storage crash suite (more kill cycles), then prints the one
# safety summary line. Any violation fails it; each failure prints the seed that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:?usage: scripts/soak.sh DURATION (e.g. 600s, 30m, 2h)}
case "$duration" in
  *h) total=$(( ${duration%h} * 3600 )) ;;
  *m) total=$(( ${duration%m} * 60 )) ;;
  *s) total=${duration%s} ;;
  *) total=$duration ;;
esac
[[ $total -ge 60 ]] || { echo "soak.sh: give at least 60s" >&2; exit 2; }

export DEDUP_SAFETY_DIR="$PWD/target/safety-soak"
rm -rf "$DEDUP_SAFETY_DIR"
cargo build --workspace --bins --tests
started=$(date +%s)
status=0

# 40 %: the simulation, as many fresh seeds as fit, in runs of at most 240 s.
until_sim=$(( started + total * 40 / 100 ))
while [[ -f tests/sim/Cargo.toml && $(date +%s) -lt $until_sim ]]; do
  chunk=$(( until_sim - $(date +%s) ))
  (( chunk > 240 )) && chunk=240
  DEDUP_SIM_SECONDS=$chunk DEDUP_SIM_MIN_SEEDS=0 DEDUP_SIM_THREADS=2 \
    cargo nextest run -p dedup-sim --no-fail-fast --no-capture -E 'binary(sim_safety)' || status=1
done
# 20 %: the storage crash suite, repeated.
until_crash=$(( started + total * 60 / 100 ))
while [[ $(date +%s) -lt $until_crash ]]; do
  cargo nextest run -p dedup-tests --test store_crash --no-fail-fast || status=1
done
# The rest: the fault schedules with fresh seeds, repeated.
until_faults=$(( started + total ))
while [[ $(date +%s) -lt $until_faults ]]; do
  cargo nextest run -p dedup-tests --test faults --no-fail-fast || status=1
done
cargo run -q -p dedup-checker --bin safety-summary || status=1
exit $status
