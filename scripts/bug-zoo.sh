#!/usr/bin/env bash
# The bug zoo (issue 3): rebuilds dedupd, the store-crash child and the simulation with the
# `bug-zoo` feature, then runs every `zoo` test. Each seeds one known bug (cluster/src/bug_zoo.rs)
# and fails unless a safety suite catches it; each adds bugs seeded / caught to the safety summary.
# The build it leaves in target/ carries the seeded bugs (off unless DEDUP_BUG_ZOO is set):
# scripts/test.sh and scripts/local-cluster.sh rebuild without them.
set -euo pipefail
cd "$(dirname "$0")/.."

features="dedup-tests/bug-zoo"
filter='test(/zoo/) | binary(/zoo/)'
if [[ -f tests/sim/Cargo.toml ]]; then
  features+=",dedup-sim/bug-zoo"
fi
cargo build --workspace --bins --tests --features "$features"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --features "$features" --no-fail-fast -E "$filter" "$@"
else
  cargo test --workspace --features "$features" --no-fail-fast "$@" zoo
fi
