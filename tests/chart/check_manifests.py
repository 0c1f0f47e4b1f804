#!/usr/bin/env python3
"""Offline checks of charts/dedup-ledger, driven by tests/chart/check.sh.

    check_manifests.py render OUT   lint and render every scenario through Helm's library
                                    (helm-python-sdk), check that bad values are rejected, and
                                    write each rendered object to OUT/<scenario>/ (built-in
                                    kinds) or OUT/<scenario>/crd/ (ServiceMonitor) for
                                    kubernetes-validate
    check_manifests.py verify OUT   what schemas cannot see: ports, probes, peer DNS names,
                                    selectors, PDB arithmetic, security, metrics on/off, and a
                                    hand-written schema of the ServiceMonitor fields we use

Each check prints one line, `ok ...` or `FAIL ...`; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
# CHART_DIR: check another copy of the chart (e.g. a deliberately broken one).
CHART = Path(os.environ.get("CHART_DIR") or ROOT / "charts" / "dedup-ledger").resolve()
RELEASE = "dedup"
NAMESPACE = "ledger"
# Kubernetes versions for helm lint (kubernetes-validate gets its own list from check.sh).
LINT_KUBE_VERSIONS = ["v1.28.0", "v1.30.0", "v1.37.0"]
# A Helm release name may have 53 characters; this one checks that names are cut to fit.
LONG_RELEASE = "a-very-long-release-name-for-checking-name-truncation"

GRPC_PORT = 7100
METRICS_PORT = 9100
UID = 65532
SLED_CACHE_BYTES = 64 * 1024 * 1024

# Scenarios: name -> (helm --set expression, release name). Expected facts are derived from the
# chart's default values merged with these.
SCENARIOS: dict[str, tuple[str, str]] = {
    "default": ("", RELEASE),
    "five-monitored": ("replicas=5,metrics.enabled=true,metrics.serviceMonitor.enabled=true", RELEASE),
    "single": ("replicas=1", RELEASE),
    "metrics-off": ("metrics.enabled=false", RELEASE),
    # After a scale-up rendered without cluster access (GitOps): 5 pods, 3 initial members.
    "scaled-up": ("replicas=5,initialMembers=3", RELEASE),
    "long-name": ("", LONG_RELEASE),
}

# Values that must be REJECTED: (description, --set expression, error class name, text in error).
REJECTED = [
    ("even replicas (schema)", "replicas=4", "HelmValuesError", "/replicas"),
    ("replicas=0 (schema)", "replicas=0", "HelmValuesError", "/replicas"),
    ("unknown top-level key (schema)", "replicaCount=3", "HelmValuesError", "replicaCount"),
    ("unknown nested key (schema)", "config.heartbeatMillis=50", "HelmValuesError", "heartbeatMillis"),
    ("even initialMembers (schema)", "initialMembers=2", "HelmValuesError", "/initialMembers"),
    ("wrong type (schema)", "metrics.enabled=yes", "HelmValuesError", "/metrics/enabled"),
    ("chart-owned env in extraEnv (schema)", "extraEnv[0].name=DEDUP_INITIAL_MEMBERS,extraEnv[0].value=five",
     "HelmValuesError", "/extraEnv/0/name"),
    ("election timeout < 3 heartbeats (template)", "config.heartbeatMs=400", "HelmRenderError",
     "at least three heartbeats"),
    ("ServiceMonitor without metrics (template)", "metrics.enabled=false,metrics.serviceMonitor.enabled=true",
     "HelmRenderError", "needs metrics.enabled"),
]

LOOKUP_CALL = 'lookup "apps/v1" "StatefulSet" .Release.Namespace (include "dedup-ledger.fullname" .)'

failures = 0


def report(ok: bool, text: str) -> None:
    global failures
    if not ok:
        failures += 1
    print(("ok   " if ok else "FAIL ") + text, flush=True)


# ---------------------------------------------------------------------------------------------
# render


def cmd_render(out: Path) -> None:
    import helm_python as helm

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # helm lint: the chart with its defaults, for each Kubernetes version.
    for kube in LINT_KUBE_VERSIONS:
        lint_ok(helm, None, f"helm lint --strict (defaults, kube {kube})", kube)

    with helm.Chart.load(CHART) as chart:
        report(chart.metadata.get("apiVersion") == "v2" and chart.metadata.get("appVersion") == "0.1.0",
               "Chart.yaml: apiVersion v2, appVersion 0.1.0")
        for name, (expr, release) in SCENARIOS.items():
            values = helm.parse_set_string(expr) if expr else {}
            lint_ok(helm, values, f"helm lint --strict [{name}] {expr or '(defaults)'}", "v1.30.0", quiet=True)
            try:
                manifests = chart.render(values, name=release, namespace=NAMESPACE)
            except helm.HelmError as error:
                report(False, f"helm template [{name}]: {error}")
                continue
            merged = chart.merge_values(values)
            count = write_scenario(out / name, manifests, merged, release)
            report(count > 0, f"helm template [{name}] {expr or '(defaults)'}: {count} objects")

        for description, expr, error_class, text in REJECTED:
            values = helm.parse_set_string(expr)
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE)
                report(False, f"rejects {description}: `--set {expr}` rendered")
            except helm.HelmError as error:
                detail = str(error).strip().splitlines()[-1].split("): ")[-1].strip()[:120]
                report(type(error).__name__ == error_class and text in str(error),
                       f"rejects {description}: --set {expr} -> {type(error).__name__}: {detail}")

        # helm lint sees the schema too.
        report_lint = helm.lint(CHART, helm.parse_set_string("replicas=4"), strict=True, quiet=True)
        report(any(m["severity"] >= 3 and "/replicas" in m["error"] for m in report_lint["messages"]),
               "helm lint reports replicas=4 as an error")

    check_upgrade_guard(helm)


def lint_ok(helm: Any, values: dict | None, label: str, kube: str, quiet: bool = False) -> None:
    result = helm.lint(CHART, values, strict=True, kube_version=kube, quiet=quiet)
    bad = [f"{m['path']}: {m['error']}" for m in result["messages"] if m["severity"] >= 2]
    bad += result["errors"]
    report(not bad and result["total_charts_linted"] == 1, label + (": " + "; ".join(bad) if bad else ""))


def write_scenario(directory: Path, manifests: dict[str, str], values: dict, release: str) -> int:
    """Writes one file per object; ServiceMonitors go to crd/ (kubernetes-validate has no schema)."""
    (directory / "crd").mkdir(parents=True)
    count = 0
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            (directory / "NOTES.txt").write_text(text)
            continue
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            count += 1
            target = directory / "crd" if obj["apiVersion"].startswith("monitoring.coreos.com/") else directory
            path = target / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(obj, sort_keys=False))
    (directory / "values.json").write_text(json.dumps({"release": release, "values": values}, indent=1))
    return count


def check_upgrade_guard(helm: Any) -> None:
    """An upgrade keeps DEDUP_INITIAL_MEMBERS. No cluster here, so a copy of the chart reads the
    'running' StatefulSet from a file instead of lookup."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "dedup-ledger"
        shutil.copytree(CHART, copy)
        helpers = copy / "templates" / "_helpers.tpl"
        source = helpers.read_text()
        if source.count(LOOKUP_CALL) != 1:
            report(False, "upgrade guard: the lookup of the running StatefulSet is not where the check expects it")
            return
        helpers.write_text(source.replace(LOOKUP_CALL, '.Files.Get "running-statefulset.yaml" | fromYaml'))
        running = {
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": f"{RELEASE}-dedup-ledger", "namespace": NAMESPACE},
            "spec": {"template": {"spec": {"containers": [
                {"name": "dedupd", "env": [{"name": "DEDUP_LOG", "value": "info"},
                                           {"name": "DEDUP_INITIAL_MEMBERS", "value": "3"}]}]}}},
        }
        (copy / "running-statefulset.yaml").write_text(yaml.safe_dump(running))
        with helm.Chart.load(copy) as chart:
            def initial_members(expr: str) -> str:
                text = chart.render(helm.parse_set_string(expr), name=RELEASE, namespace=NAMESPACE,
                                    is_upgrade=True)["dedup-ledger/templates/statefulset.yaml"]
                return env_of(container_of(yaml.safe_load(text)))["DEDUP_INITIAL_MEMBERS"]

            kept = initial_members("replicas=5")
            same = initial_members("replicas=5,initialMembers=3")
            try:
                initial_members("replicas=5,initialMembers=5")
                refused = "rendered"
            except helm.HelmRenderError as error:
                refused = "refused" if "installed with DEDUP_INITIAL_MEMBERS=3" in str(error) else str(error)
        report(kept == "3" and same == "3" and refused == "refused",
               "upgrade of a release installed with 3 members to replicas=5: DEDUP_INITIAL_MEMBERS "
               f"stays 3 (empty value: {kept}, initialMembers=3: {same}; initialMembers=5: {refused})")


# ---------------------------------------------------------------------------------------------
# verify


class Scenario:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        meta = json.loads((directory / "values.json").read_text())
        self.release: str = meta["release"]
        self.values: dict = meta["values"]
        self.objects: list[dict] = []
        for path in sorted(directory.glob("*.yaml")) + sorted((directory / "crd").glob("*.yaml")):
            self.objects.append(yaml.safe_load(path.read_text()))
        self.notes = (directory / "NOTES.txt").read_text()

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def replicas(self) -> int:
        return int(self.values["replicas"])

    @property
    def initial_members(self) -> int:
        value = self.values.get("initialMembers")
        return self.replicas if value is None else int(value)

    @property
    def metrics(self) -> bool:
        return bool(self.values["metrics"]["enabled"])

    @property
    def service_monitor(self) -> bool:
        return self.metrics and bool(self.values["metrics"]["serviceMonitor"]["enabled"])

    @property
    def sts(self) -> dict:
        return self.one("StatefulSet")

    @property
    def container(self) -> dict:
        return container_of(self.sts)

    @property
    def pod_labels(self) -> dict:
        return self.sts["spec"]["template"]["metadata"]["labels"]

    def services(self) -> dict[str, dict]:
        return {s["metadata"]["name"]: s for s in self.of_kind("Service")}

    def headless(self) -> dict:
        found = [s for s in self.of_kind("Service") if s["spec"].get("clusterIP") == "None"]
        assert len(found) == 1, f"expected one headless Service, found {len(found)}"
        return found[0]


def container_of(sts: dict) -> dict:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["dedupd"], f"containers: {[c['name'] for c in containers]}"
    return containers[0]


def env_of(container: dict) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        assert "value" in item, f"env {item['name']} has no literal value"
        assert item["name"] not in env, f"env {item['name']} appears twice"
        env[item["name"]] = item["value"]
    return env


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(host_port: str) -> int:
    return int(host_port.rsplit(":", 1)[1])


# Each check takes a scenario and raises AssertionError; it returns a short note or None, or
# the string "skip" when it does not apply.

def check_defaults(s: Scenario) -> str:
    if s.name != "default":
        return "skip"
    v = s.values
    assert v["replicas"] == 3 and v.get("initialMembers") is None, "default replicas / initialMembers"
    assert v["metrics"]["enabled"] is True and v["metrics"]["serviceMonitor"]["enabled"] is False, "default metrics"
    assert v["terminationGracePeriodSeconds"] == 30 and v["pdb"]["enabled"] is True
    assert v["config"] == {"hotTierBytes": 67108864, "snapshotLogs": 10000, "heartbeatMs": 100,
                           "electionTimeoutMs": 1000, "log": "info"}, f"config {v['config']}"
    assert s.sts["spec"]["replicas"] == 3
    return "3 replicas, metrics on, ServiceMonitor off, contract config defaults"


def check_objects(s: Scenario) -> str:
    kinds = sorted(o["kind"] for o in s.objects)
    want = ["Service", "Service", "StatefulSet"]
    if s.replicas > 1:
        want.append("PodDisruptionBudget")
    if s.service_monitor:
        want.append("ServiceMonitor")
    assert kinds == sorted(want), f"kinds {kinds}, want {sorted(want)}"
    for o in s.objects:
        assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']} has namespace {o['metadata'].get('namespace')}"
    return f"{len(kinds)} objects"


def check_names(s: Scenario) -> str:
    sts = s.sts["metadata"]["name"]
    assert len(sts) <= 52, f"StatefulSet name {sts} has {len(sts)} > 52 characters"
    dns_label = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    for o in s.objects:
        name = o["metadata"]["name"]
        assert dns_label.match(name), f"{o['kind']} name {name!r} is not a DNS label"
    for ordinal in range(s.replicas):
        assert dns_label.match(f"{sts}-{ordinal}"), f"pod name {sts}-{ordinal}"
    if s.release == RELEASE:
        assert sts == f"{RELEASE}-dedup-ledger", f"StatefulSet is {sts}, want {RELEASE}-dedup-ledger"
    return f"sts {sts}"


def check_statefulset(s: Scenario) -> None:
    spec = s.sts["spec"]
    assert spec["replicas"] == s.replicas, f"replicas {spec['replicas']}"
    assert spec["podManagementPolicy"] == "Parallel", f"podManagementPolicy {spec['podManagementPolicy']}"
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == s.values["terminationGracePeriodSeconds"], "grace period"
    if s.name == "default":
        assert pod["terminationGracePeriodSeconds"] == 30
    assert s.container["command"] == ["/dedupd"], f"command {s.container['command']}"
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert matches(term["labelSelector"]["matchLabels"], s.pod_labels), "anti-affinity does not select the pods"


def check_ports(s: Scenario) -> str:
    ports = {p["name"]: p["containerPort"] for p in s.container["ports"]}
    want = {"grpc": GRPC_PORT} | ({"metrics": METRICS_PORT} if s.metrics else {})
    assert ports == want, f"container ports {ports}, want {want}"
    env = env_of(s.container)
    assert env["DEDUP_LISTEN"] == f"0.0.0.0:{GRPC_PORT}", f"DEDUP_LISTEN {env['DEDUP_LISTEN']}"
    if s.metrics:
        assert env.get("DEDUP_METRICS_LISTEN") == f"0.0.0.0:{METRICS_PORT}", "DEDUP_METRICS_LISTEN"
    return ", ".join(f"{k} {v}" for k, v in ports.items())


def check_probes(s: Scenario) -> None:
    c = s.container
    names = {p["name"]: p["containerPort"] for p in c["ports"]}
    want = {"startupProbe": "", "livenessProbe": "", "readinessProbe": "dedup.v1.Ledger"}
    for probe, service in want.items():
        assert probe in c, f"no {probe}"
        grpc = c[probe].get("grpc")
        assert grpc is not None, f"{probe} is not a grpc probe"
        port = grpc["port"]
        number = names.get(port) if isinstance(port, str) else port
        assert number == names["grpc"], f"{probe} port {port!r} is not the container's grpc port"
        assert grpc.get("service") == service, f"{probe} service {grpc.get('service')!r}, want {service!r}"
    startup = c["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 300, f"startupProbe allows only {budget} s"
    assert c["livenessProbe"]["timeoutSeconds"] < c["livenessProbe"]["periodSeconds"]


def check_headless(s: Scenario) -> str:
    h = s.headless()
    assert h["spec"].get("publishNotReadyAddresses") is True, "publishNotReadyAddresses is not true"
    assert s.sts["spec"]["serviceName"] == h["metadata"]["name"], \
        f"serviceName {s.sts['spec']['serviceName']} != headless {h['metadata']['name']}"
    assert any(p["name"] == "grpc" and p["port"] == GRPC_PORT for p in h["spec"]["ports"]), "no grpc port"
    return h["metadata"]["name"]


def check_peer_pattern(s: Scenario) -> str:
    env = env_of(s.container)
    pattern = env["DEDUP_PEER_PATTERN"]
    assert pattern.count("{ordinal}") == 1, f"pattern {pattern} lacks exactly one {{ordinal}}"
    m = re.fullmatch(r"([a-z0-9-]+)-\{ordinal\}\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", pattern)
    assert m, f"pattern {pattern!r} is not POD-{{ordinal}}.SERVICE.NAMESPACE.svc.cluster.local:PORT"
    prefix, service, namespace, port = m.group(1), m.group(2), m.group(3), int(m.group(4))
    assert prefix == s.sts["metadata"]["name"], f"hosts are {prefix}-N, pods are {s.sts['metadata']['name']}-N"
    assert service == s.headless()["metadata"]["name"] == s.sts["spec"]["serviceName"], \
        f"pattern's service {service} is not the headless Service / serviceName"
    assert namespace == NAMESPACE, f"namespace {namespace}"
    assert port == GRPC_PORT == port_number(env["DEDUP_LISTEN"]), f"peer port {port}"
    if s.release == RELEASE:
        want = f"{RELEASE}-dedup-ledger-{{ordinal}}.{RELEASE}-dedup-ledger-peers.{NAMESPACE}.svc.cluster.local:7100"
        assert pattern == want, f"{pattern} != {want}"
    for ordinal in range(s.replicas):
        host = pattern.replace("{ordinal}", str(ordinal)).rsplit(":", 1)[0]
        assert len(host.split(".")[0]) <= 63 and len(host) <= 253, f"host {host} too long"
    return pattern


def check_node_identity(s: Scenario) -> str:
    env = env_of(s.container)
    assert env["DEDUP_NODE_ID_FROM_HOSTNAME"] == "true"
    assert env["DEDUP_INITIAL_MEMBERS"] == str(s.initial_members), \
        f"DEDUP_INITIAL_MEMBERS {env['DEDUP_INITIAL_MEMBERS']}, want {s.initial_members}"
    if s.values.get("initialMembers") is None:
        assert env["DEDUP_INITIAL_MEMBERS"] == str(s.replicas), "DEDUP_INITIAL_MEMBERS != replicas"
    assert 1 <= s.initial_members <= s.replicas
    return f"replicas {s.replicas}, initial members {env['DEDUP_INITIAL_MEMBERS']}"


def check_config_env(s: Scenario) -> None:
    env = env_of(s.container)
    config = s.values["config"]
    want = {
        "DEDUP_HOT_TIER_BYTES": str(int(config["hotTierBytes"])),
        "DEDUP_SNAPSHOT_LOGS": str(int(config["snapshotLogs"])),
        "DEDUP_HEARTBEAT_MS": str(int(config["heartbeatMs"])),
        "DEDUP_ELECTION_TIMEOUT_MS": str(int(config["electionTimeoutMs"])),
        "DEDUP_LOG": config["log"],
    }
    for key, value in want.items():
        assert env.get(key) == value, f"{key}={env.get(key)!r}, want {value!r}"
    if s.name == "default":
        assert want["DEDUP_HOT_TIER_BYTES"] == "67108864" and want["DEDUP_SNAPSHOT_LOGS"] == "10000"
        assert want["DEDUP_HEARTBEAT_MS"] == "100" and want["DEDUP_ELECTION_TIMEOUT_MS"] == "1000"
        assert want["DEDUP_LOG"] == "info"
    assert int(env["DEDUP_ELECTION_TIMEOUT_MS"]) >= 3 * int(env["DEDUP_HEARTBEAT_MS"])


def check_storage(s: Scenario) -> None:
    env = env_of(s.container)
    mounts = s.container["volumeMounts"]
    assert [(m["name"], m["mountPath"]) for m in mounts] == [("data", env["DEDUP_DATA_DIR"])], f"mounts {mounts}"
    assert env["DEDUP_DATA_DIR"] == "/var/lib/dedup"
    assert not s.sts["spec"]["template"]["spec"].get("volumes"), "pod has volumes besides the PVC"
    (claim,) = s.sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == s.values["persistence"]["size"]
    sc = s.values["persistence"].get("storageClassName")
    assert claim["spec"].get("storageClassName") == (sc or None), "storageClassName"


def check_resources(s: Scenario) -> str:
    resources = s.container["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"], f"no {key} request"
    limit = parse_quantity(resources["limits"]["memory"])
    floor = int(s.values["config"]["hotTierBytes"]) + SLED_CACHE_BYTES
    assert limit > floor, f"memory limit {limit} <= hot tier + sled cache {floor}"
    assert parse_quantity(resources["requests"]["memory"]) <= limit
    return f"requests {resources['requests']}, memory limit {resources['limits']['memory']}"


def parse_quantity(text: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text))
    assert m, f"quantity {text}"
    return int(m.group(1)) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}[m.group(2)]


def check_security(s: Scenario) -> None:
    pod = s.sts["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == UID and pod["fsGroup"] == UID, f"pod {pod}"
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    c = s.container["securityContext"]
    assert c["readOnlyRootFilesystem"] is True, "root filesystem is writable"
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"]["drop"] == ["ALL"] and not c["capabilities"].get("add")
    assert c.get("runAsNonRoot", True) is True and c.get("runAsUser", UID) == UID
    assert not c.get("privileged")
    spec = s.sts["spec"]["template"]["spec"]
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("enableServiceLinks") is False, "service links put *_SERVICE_HOST variables in the env"
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def check_selectors(s: Scenario) -> str:
    labels = s.pod_labels
    assert matches(s.sts["spec"]["selector"]["matchLabels"], labels), "StatefulSet selector misses its pods"
    selected = []
    for name, svc in s.services().items():
        assert matches(svc["spec"]["selector"], labels), f"Service {name} does not select the pods"
        selected.append(name)
    for pdb in s.of_kind("PodDisruptionBudget"):
        assert matches(pdb["spec"]["selector"]["matchLabels"], labels), "PDB does not select the pods"
        selected.append("pdb")
    # Selectors must not be wider than this release: instance label present everywhere.
    for sel in [s.sts["spec"]["selector"]["matchLabels"]] + [v["spec"]["selector"] for v in s.services().values()]:
        assert sel.get("app.kubernetes.io/instance") == s.release, f"selector {sel} lacks the release"
    return "pods selected by sts, " + ", ".join(selected)


def check_service_ports(s: Scenario) -> None:
    names = {p["name"]: p["containerPort"] for p in s.container["ports"]}
    for name, svc in s.services().items():
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            resolved = names.get(target) if isinstance(target, str) else target
            assert resolved in names.values(), f"Service {name} port {port['name']} targets {target!r}: not a container port"
            assert port["name"] in names and names[port["name"]] == resolved, \
                f"Service {name} port {port['name']} -> {target}"
    client = [svc for svc in s.services().values() if svc["spec"].get("clusterIP") != "None"]
    assert len(client) == 1 and client[0]["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not client[0]["spec"].get("publishNotReadyAddresses"), "client Service lists unready pods"
    assert "grpc" in [p["name"] for p in client[0]["spec"]["ports"]]
    if s.metrics:
        assert "metrics" in [p["name"] for p in client[0]["spec"]["ports"]], "client Service lacks metrics"


def check_pdb(s: Scenario) -> str:
    pdbs = s.of_kind("PodDisruptionBudget")
    if s.replicas == 1:
        assert not pdbs, "a PDB is rendered for 1 replica"
        return "replicas 1: no PDB"
    (pdb,) = pdbs
    assert pdb["apiVersion"] == "policy/v1"
    want = (s.replicas - 1) // 2
    assert pdb["spec"].get("maxUnavailable") == want, f"maxUnavailable {pdb['spec'].get('maxUnavailable')}, want {want}"
    assert "minAvailable" not in pdb["spec"]
    return f"replicas {s.replicas}: maxUnavailable {want}"


SERVICE_MONITOR_SCHEMA = {
    # The part of monitoring.coreos.com/v1 ServiceMonitor (Prometheus Operator CRD) the chart
    # uses, strict: unknown fields fail as the API server's structural schema would prune them.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name", "namespace"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "required": ["matchLabels"],
                             "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                                            "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        # The CRD's Duration pattern.
                        "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                    }}},
            },
        },
    },
}


def check_service_monitor(s: Scenario) -> str:
    if not s.service_monitor:
        return "skip"
    import jsonschema

    sm = s.one("ServiceMonitor")
    jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(sm)
    spec = sm["spec"]
    assert spec.get("namespaceSelector", {}).get("matchNames", [NAMESPACE]) == [NAMESPACE]
    picked = [svc for svc in s.services().values() if matches(spec["selector"]["matchLabels"], svc["metadata"]["labels"])]
    assert len(picked) == 1, f"ServiceMonitor selects {len(picked)} Services, want exactly 1"
    svc = picked[0]
    assert svc["spec"].get("publishNotReadyAddresses") is True, "scraped Service drops pods that are not ready"
    assert matches(svc["spec"]["selector"], s.pod_labels)
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in svc_ports, f"endpoint port {endpoint['port']} not on Service {svc['metadata']['name']}"
        target = svc_ports[endpoint["port"]]["targetPort"]
        assert target == "metrics" and svc_ports[endpoint["port"]]["port"] == METRICS_PORT
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"]), "scrapeTimeout > interval"
    return f"scrapes {svc['metadata']['name']}:metrics"


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def check_metrics_off(s: Scenario) -> str:
    if s.metrics:
        return "skip"
    text = json.dumps(s.objects)
    assert "metrics" not in text, "the word metrics appears in the objects"
    assert str(METRICS_PORT) not in text, f"{METRICS_PORT} appears in the objects"
    assert not s.of_kind("ServiceMonitor")
    assert "DEDUP_METRICS_LISTEN" not in env_of(s.container)
    assert "/metrics" not in s.notes
    return "no metrics port, env, ServiceMonitor or NOTES line"


def check_notes(s: Scenario) -> None:
    sts = s.sts["metadata"]["name"]
    pattern = env_of(s.container)["DEDUP_PEER_PATTERN"]
    endpoints = ",".join(pattern.replace("{ordinal}", str(i)) for i in range(s.replicas))
    command = f"kubectl exec -n {NAMESPACE} {sts}-0 -c dedupd -- /dedupctl --endpoints {endpoints} status"
    assert command in s.notes, f"NOTES lacks: {command}"
    assert "member remove" in s.notes and "initialMembers" in s.notes
    if s.initial_members < s.replicas:
        assert f"{sts}-{s.initial_members}..{sts}-{s.replicas - 1}" in s.notes, "NOTES do not name the non-members"


CHECKS: list[tuple[str, Callable[[Scenario], Any]]] = [
    ("defaults", check_defaults),
    ("objects and namespace", check_objects),
    ("names are DNS labels, StatefulSet <= 52 chars", check_names),
    ("StatefulSet: Parallel, command, anti-affinity on hostname", check_statefulset),
    ("container ports and listen addresses", check_ports),
    ("gRPC probes on the grpc port: startup/liveness \"\", readiness dedup.v1.Ledger", check_probes),
    ("headless Service: publishNotReadyAddresses, = serviceName", check_headless),
    ("DEDUP_PEER_PATTERN hosts = pods . headless Service . namespace", check_peer_pattern),
    ("node identity: from hostname, DEDUP_INITIAL_MEMBERS", check_node_identity),
    ("config rendered as DEDUP_* env", check_config_env),
    ("storage: only /var/lib/dedup, on the PVC data", check_storage),
    ("resources and memory limit above hot tier + sled cache", check_resources),
    ("securityContext: non-root 65532, read-only root fs, no capabilities", check_security),
    ("selectors match the pod labels", check_selectors),
    ("Service ports target named container ports", check_service_ports),
    ("PodDisruptionBudget maxUnavailable = floor((replicas-1)/2)", check_pdb),
    ("ServiceMonitor: schema subset, one Service, its port", check_service_monitor),
    ("metrics off: no metrics anywhere", check_metrics_off),
    ("NOTES: dedupctl status command with every peer", check_notes),
]


def cmd_verify(out: Path) -> None:
    scenarios = [Scenario(name, out / name) for name in SCENARIOS if (out / name).is_dir()]
    if len(scenarios) != len(SCENARIOS):
        report(False, f"verify: rendered {len(scenarios)} of {len(SCENARIOS)} scenarios")
    for title, check in CHECKS:
        notes, applied, errors = [], [], []
        for s in scenarios:
            try:
                note = check(s)
            except (AssertionError, KeyError, TypeError, ValueError) as error:
                errors.append(f"[{s.name}] {type(error).__name__}: {error}")
                continue
            except Exception as error:  # jsonschema.ValidationError and the like
                errors.append(f"[{s.name}] {type(error).__name__}: {str(error).splitlines()[0]}")
                continue
            if note == "skip":
                continue
            applied.append(s.name)
            if note and check in (check_defaults, check_pdb, check_service_monitor, check_metrics_off):
                notes.append(f"{s.name}: {note}")
        for error in errors:
            report(False, f"{title} {error}")
        if not errors:
            if not applied:
                report(False, f"{title}: applied to no scenario")
            else:
                detail = "; ".join(notes) if notes else (
                    f"all {len(applied)} scenarios" if len(applied) == len(SCENARIOS) else ", ".join(applied))
                report(True, f"{title} ({detail})")


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("render", "verify"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[2])
    if sys.argv[1] == "render":
        cmd_render(out)
    else:
        cmd_verify(out)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
