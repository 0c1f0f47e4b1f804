# Helpers the local-cluster benchmark scripts share; source it: . "$(dirname "$0")/common.sh"

# The binaries the scripts run: DEDUPD and DEDUPCTL, else the release build.
dedupd=${DEDUPD:-target/release/dedupd}
dedupctl=${DEDUPCTL:-target/release/dedupctl}

# Exits 2 naming the first of the given executables that is missing.
require_built() {
  local exe
  for exe in "$@"; do
    [[ -x "$exe" ]] || { echo "$exe is missing: build first (cargo build --release --bins)" >&2; exit 2; }
  done
}

# Sets PEERS (1=127.0.0.1:<PREFIX>1,...) and ENDPOINTS (127.0.0.1:<PREFIX>1,...) for nodes 1..N
# listening on port PREFIX followed by the node id.
local_cluster() { # PREFIX N
  local id
  PEERS="" ENDPOINTS=""
  for id in $(seq 1 "$2"); do
    PEERS+="${PEERS:+,}$id=127.0.0.1:$1$id"
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$1$id"
  done
}
