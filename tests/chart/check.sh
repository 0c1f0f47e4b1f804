#!/usr/bin/env bash
# Offline check of the Helm chart charts/dedup-ledger; needs nothing but python3 (>= 3.10, with
# venv) and PyPI. No helm binary, no cluster:
#   1. helm lint and helm template through Helm's own library (helm-python-sdk) for the default
#      values, replicas=5 with a ServiceMonitor, replicas=1, metrics off, a scaled-up release and
#      a 53-character release name; bad values (even replicas, unknown keys, ...) must fail;
#   2. every rendered object of a built-in kind against the Kubernetes OpenAPI schemas of
#      kubernetes-validate --strict, for Kubernetes 1.28, 1.30 and 1.37 (the newest it has);
#      ServiceMonitor is a CRD it has no schema for: check_manifests.py checks it instead;
#   3. tests/chart/check_manifests.py for what schemas cannot see (ports, probes, peer DNS names,
#      selectors, PDB arithmetic, security context, metrics on/off).
# The virtualenv lives in target/chart-venv and is rebuilt when tests/chart/requirements.txt
# changes. Prints one line per check and ends with `chart check: N checks passed`.
# CHART_DIR=path checks another copy of the chart (to see a deliberately broken one fail).
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)

KUBE_VERSIONS=(1.28.0 1.30.0 1.37.0)
VENV=target/chart-venv
OUT=target/chart-check
REQUIREMENTS=tests/chart/requirements.txt
PY="$VENV/bin/python"

pins=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -x "$PY" || "$(cat "$VENV/.requirements-sha256" 2>/dev/null)" != "$pins" ]]; then
  echo "setting up $VENV (pinned: $(grep -E '^(helm-python-sdk|kubernetes-validate)==' "$REQUIREMENTS" | tr '\n' ' '))"
  rm -rf "$VENV"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "python3 >= 3.10 is needed" >&2; exit 1; }
  python3 -m venv "$VENV" ||
    { echo "python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$PY" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS"
  echo "$pins" >"$VENV/.requirements-sha256"
fi

passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs a step whose lines start with "ok " or "FAIL " and adds them up.
tally() {
  local rc=0
  "$@" >"$log" 2>&1 || rc=$?
  cat "$log"
  passed=$((passed + $(grep -c '^ok ' "$log" || true)))
  failed=$((failed + $(grep -c '^FAIL ' "$log" || true)))
  if [[ $rc -ne 0 ]] && ! grep -q '^FAIL ' "$log"; then
    echo "FAIL $* exited $rc"
    failed=$((failed + 1))
  fi
}

tally "$PY" tests/chart/check_manifests.py render "$OUT"

validate() {
  local files=() version=$1 out rc=0
  mapfile -t files < <(find "$OUT" -path '*/crd' -prune -o -name '*.yaml' -print | sort)
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "FAIL kubernetes-validate: nothing rendered"
    return
  fi
  out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" 2>&1) || rc=$?
  # --quiet prints only problems; a WARN (no schema for a kind) is a failure here too.
  if [[ $rc -eq 0 && -z "$out" ]]; then
    echo "ok   kubernetes-validate --strict -k $version: ${#files[@]} objects of $(find "$OUT" -mindepth 1 -maxdepth 1 -type d | wc -l) scenarios"
  else
    echo "FAIL kubernetes-validate --strict -k $version (exit $rc):"
    echo "$out" | sed -e "s|$OUT/||g" -e 's/^/       /' | head -20
  fi
}
for version in "${KUBE_VERSIONS[@]}"; do
  tally validate "$version"
done

tally "$PY" tests/chart/check_manifests.py verify "$OUT"

echo "($(($(date +%s) - started)) s; rendered objects in $OUT)"
if [[ $failed -ne 0 || $passed -eq 0 ]]; then
  echo "chart check: FAILED: $failed of $((passed + failed)) checks failed"
  exit 1
fi
echo "chart check: $passed checks passed"
