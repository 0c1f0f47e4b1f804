#!/usr/bin/env bash
# The project's test command (README): builds the binaries the multi-process tests spawn, then
# runs every test of the workspace with cargo-nextest (plain `cargo test` when nextest is absent).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --tests
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; running cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi
