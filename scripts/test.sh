#!/usr/bin/env bash
# The project's test command (README): builds the binaries the multi-process tests spawn, runs
# every test of the workspace with cargo-nextest (plain `cargo test` when nextest is absent),
# then the bug zoo (scripts/bug-zoo.sh) and the offline Helm chart check (tests/chart/check.sh:
# helm-python-sdk and kubernetes-validate from PyPI in target/chart-venv), and prints the one safety summary line of the run
# (seeds, schedules per fault kind, crash cycles, bugs caught / seeded, every violation counter).
#
# Arguments go to the test runner (e.g. a filter); with arguments the bug zoo and the summary's
# minimums are skipped, since a filtered run proves less.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each safety suite adds its figures here; start the run's summary afresh.
export DEDUP_SAFETY_DIR="$PWD/target/safety"
rm -rf "$DEDUP_SAFETY_DIR"

# One build serves every suite and the image: everything links statically (glibc, crt-static),
# as the image FROM scratch needs, for an explicit target so that build scripts and proc macros
# stay dynamic. Binaries and tests land in target/x86_64-unknown-linux-gnu/debug; each cargo
# command below (and in scripts/bug-zoo.sh) inherits these settings, so none rebuilds.
export CARGO_BUILD_TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
cargo build --workspace --bins --tests
# The container fault suite (tests/tests/cluster_docker.rs) runs the dedup-ledger:dev image: build
# it when a Docker engine answers, and then require the suite to run rather than skip. Longer
# container schedules, on demand:
#   DEDUP_DOCKER_LONG=5 cargo nextest run -p dedup-tests --test cluster_docker
if docker_why=$(docker version --format '{{.Server.Version}}' 2>&1); then
  DEDUP_IMAGE_BINARIES="target/$CARGO_BUILD_TARGET/debug" scripts/build-image.sh
  export DEDUP_DOCKER_REQUIRED=1
else
  echo "no Docker engine answers (docker version: ${docker_why//$'\n'/ }); the cluster-docker suite will skip" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; running cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi

if [[ $# -gt 0 ]]; then
  cargo run -q -p dedup-checker --bin safety-summary
  exit 0
fi
scripts/bug-zoo.sh
tests/chart/check.sh
# Fails if any violation counter is above 0, or the run proved less than issue 3 asks.
cargo run -q -p dedup-checker --bin safety-summary -- \
  --min-seeds 200 --min-schedules 3 --min-crash-cycles 50 --all-bugs-caught
