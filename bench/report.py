#!/usr/bin/env python3
"""Helpers of bench/side-by-side.sh and the generator of docs/benchmarks.md.

Subcommands:
  annotate KEY=VALUE...      JSON lines on stdin -> the same lines with the fields added (a value
                             that parses as JSON is stored as such, otherwise as a string)
  machine --out FILE ...     machine facts from /proc, nproc, uname and the given versions
  fio FILE                   the fdatasync percentiles of a fio --output-format=json run
  gap --probe FILE --kill-ns N   the write gap around a leader kill from a probe log
  report --results FILE --doc FILE --plots DIR   tables, targets and PNG plots

Only `report` needs matplotlib (run it with bench/target/venv/bin/python); the rest use the
standard library.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

SYSTEMS = ["ledger", "etcd", "redis", "redis-aof"]
SYSTEM_TITLES = {
    "ledger": "dedup-ledger (3 nodes)",
    "etcd": "etcd 3.4 (3 members, txn)",
    "redis": "Redis SET NX PX (no persistence)",
    "redis-aof": "Redis SET NX PX (appendfsync always)",
}
PATHS = ["claim-new", "claim-dup", "batch-claim"]
PATH_TITLES = {
    "claim-new": "New claims (claim-new)",
    "claim-dup": "Duplicate checks (claim-dup)",
    "batch-claim": "Batch claims of 64 keys (batch-claim)",
}


def parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_annotate(args):
    extra = {}
    for item in args.fields:
        key, _, value = item.partition("=")
        extra[key] = parse_value(value)
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        obj.update(extra)
        print(json.dumps(obj, sort_keys=True))


def read_first_line(path):
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def cmd_machine(args):
    cpu_model = None
    flags = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu_model is None:
                    cpu_model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and flags is None:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    os_name = None
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, ValueError, subprocess.CalledProcessError):
        nproc = os.cpu_count()
    disk = None
    if args.work:
        try:
            out = subprocess.run(["df", "-hT", args.work], capture_output=True, text=True, check=True).stdout
            disk = out.strip().splitlines()[-1]
        except (OSError, subprocess.CalledProcessError):
            pass
    facts = {
        "kind": "machine",
        "nproc": nproc,
        "cpu_model": cpu_model,
        "hypervisor": bool(flags and "hypervisor" in flags),
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "os": os_name,
        "loadavg": " ".join((read_first_line("/proc/loadavg") or "").split()[:3]) or None,
        "work_dir_disk": disk,
    }
    for item in args.fact:
        key, _, value = item.partition("=")
        facts[key] = parse_value(value)
    with open(args.out, "a") as f:
        f.write(json.dumps(facts, sort_keys=True) + "\n")


def cmd_fio(args):
    with open(args.file) as f:
        text = f.read()
    # fio may print notes before the JSON document.
    doc = json.loads(text[text.index("{"):])
    job = doc["jobs"][0]
    sync = job.get("sync", {}).get("lat_ns", {})
    pct = sync.get("percentile", {})

    def us(key):
        value = pct.get(key)
        return round(value / 1000, 1) if value is not None else None

    print(json.dumps({
        "fdatasync_p50_us": us("50.000000"),
        "fdatasync_p99_us": us("99.000000"),
        "fdatasync_p999_us": us("99.900000"),
        "fdatasync_mean_us": round(sync["mean"] / 1000, 1) if "mean" in sync else None,
        "write_iops": round(job.get("write", {}).get("iops", 0)),
    }))


def cmd_gap(args):
    """Probe lines: `START_NS END_NS ok|fail`, one claim after another. Writes have resumed at the
    first ok of a claim sent after the killed leader was gone (--dead-ns: it cannot have been
    answered by the old leader; the probe in flight at the kill, retried by the client, ends just
    before it is sent); the gap runs from the last ok acknowledged before the kill."""
    kill = args.kill_ns
    dead = args.dead_ns or kill
    oks_before, oks_after, fails = [], [], 0
    with open(args.probe) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3:
                continue
            start, end, status = int(parts[0]), int(parts[1]), parts[2]
            if status != "ok":
                fails += 1
                continue
            if end <= kill:
                oks_before.append(end)
            elif start >= dead:
                oks_after.append(end)
    result = {
        "probe_ok_before": len(oks_before),
        "probe_ok_after": len(oks_after),
        "probe_failed": fails,
        "kill_to_first_ack_ms": round((min(oks_after) - kill) / 1e6, 1) if oks_after else None,
        "gap_ms": round((min(oks_after) - max(oks_before)) / 1e6, 1) if oks_after and oks_before else None,
    }
    print(json.dumps(result))


# ---------------------------------------------------------------- report


def load_results(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def median(values):
    return statistics.median(values) if values else None


def fmt_num(value, digits=0):
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt_ms(value):
    if value is None:
        return "–"
    if value < 1:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:,.0f}"


class Cells:
    """Cell results grouped by (system, path, concurrency)."""

    def __init__(self, rows):
        self.groups = defaultdict(list)
        for row in rows:
            if row.get("kind") == "cell":
                self.groups[(row["system"], row["path"], int(row["concurrency"]))].append(row)

    def get(self, system, path, concurrency):
        return self.groups.get((system, path, concurrency), [])

    def concurrencies(self, path):
        return sorted({c for (_, p, c) in self.groups if p == path})

    def systems(self):
        present = {s for (s, _, _) in self.groups}
        return [s for s in SYSTEMS if s in present] + sorted(present - set(SYSTEMS))

    def stat(self, system, path, concurrency, field):
        values = [r[field] for r in self.get(system, path, concurrency) if r.get(field) is not None]
        if not values:
            return None
        return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


def rate_field(path):
    return "items_per_sec" if path == "batch-claim" else "ops_per_sec"


def spread(stat, digits=0):
    if stat is None:
        return "–"
    if stat["n"] == 1:
        return fmt_num(stat["median"], digits)
    return f"{fmt_num(stat['median'], digits)} ({fmt_num(stat['min'], digits)}–{fmt_num(stat['max'], digits)})"


def make_plots(cells, plots_dir, doc_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots_dir, exist_ok=True)
    made = {}
    markers = {"ledger": "o", "etcd": "s", "redis": "^", "redis-aof": "v"}
    for path in PATHS:
        levels = cells.concurrencies(path)
        if not levels:
            continue
        for kind, field, ylabel, log_y in [
            ("throughput", rate_field(path), "keys/s" if path == "batch-claim" else "operations/s", True),
            ("p99", "p99_ms", "p99 latency (ms)", True),
        ]:
            fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
            for system in cells.systems():
                xs, ys, lo, hi = [], [], [], []
                for c in levels:
                    st = cells.stat(system, path, c, field)
                    if st is None:
                        continue
                    xs.append(c)
                    ys.append(st["median"])
                    lo.append(st["median"] - st["min"])
                    hi.append(st["max"] - st["median"])
                if xs:
                    ax.errorbar(xs, ys, yerr=[lo, hi], marker=markers.get(system, "x"), capsize=3,
                                label=SYSTEM_TITLES.get(system, system))
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels)
            ax.set_xticklabels([str(c) for c in levels])
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{PATH_TITLES[path]}: {'throughput' if kind == 'throughput' else 'p99 latency'}"
                         " (median, bars min–max)", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"{path}-{kind}.png"
            fig.savefig(os.path.join(plots_dir, name))
            plt.close(fig)
            made[(path, kind)] = os.path.relpath(os.path.join(plots_dir, name), doc_dir)
    return made


def target_rows(cells, rows, quick):
    """Each issue-6 target: (target, measured, verdict)."""
    out = []

    def verdict(ok):
        if ok is None:
            return "not measured"
        return "**met**" if ok else "**not met**"

    def med(system, path, c, field):
        st = cells.stat(system, path, c, field)
        return st["median"] if st else None

    # 1. new claims at 64: >= 5x etcd, p99 <= 10 ms
    ledger64 = med("ledger", "claim-new", 64, "ops_per_sec")
    etcd64 = med("etcd", "claim-new", 64, "ops_per_sec")
    p99_64 = med("ledger", "claim-new", 64, "p99_ms")
    if ledger64 is not None and etcd64:
        ratio = ledger64 / etcd64
        out.append(("New claims at 64 clients: ≥ 5× etcd's create-if-absent txn",
                    f"{fmt_num(ledger64)} ops/s vs etcd {fmt_num(etcd64)} ops/s = {ratio:.1f}×", verdict(ratio >= 5)))
    else:
        out.append(("New claims at 64 clients: ≥ 5× etcd's create-if-absent txn", "–", verdict(None)))
    out.append(("New claims at 64 clients: p99 ≤ 10 ms",
                f"{fmt_ms(p99_64)} ms" if p99_64 is not None else "–",
                verdict(None if p99_64 is None else p99_64 <= 10)))
    # 2. 256: throughput >= c64, p99 <= 50 ms
    ledger256 = med("ledger", "claim-new", 256, "ops_per_sec")
    p99_256 = med("ledger", "claim-new", 256, "p99_ms")
    if ledger256 is not None and ledger64 is not None:
        out.append(("New claims at 256 clients: throughput ≥ the 64-client figure",
                    f"{fmt_num(ledger256)} vs {fmt_num(ledger64)} ops/s", verdict(ledger256 >= ledger64)))
    else:
        out.append(("New claims at 256 clients: throughput ≥ the 64-client figure", "–", verdict(None)))
    out.append(("New claims at 256 clients: p99 ≤ 50 ms", f"{fmt_ms(p99_256)} ms" if p99_256 is not None else "–",
                verdict(None if p99_256 is None else p99_256 <= 50)))
    # 3. batch claims >= 100k keys/s (best concurrency)
    best = None
    for c in cells.concurrencies("batch-claim"):
        value = med("ledger", "batch-claim", c, "items_per_sec")
        if value is not None and (best is None or value > best[1]):
            best = (c, value)
    if best:
        out.append(("Batch claims of 64 keys: ≥ 100,000 keys/s",
                    f"{fmt_num(best[1])} keys/s (best, at {best[0]} clients)", verdict(best[1] >= 100_000)))
    else:
        out.append(("Batch claims of 64 keys: ≥ 100,000 keys/s", "–", verdict(None)))
    # 4. duplicate checks at 64 >= 60k/s, no raft entries
    dup64 = med("ledger", "claim-dup", 64, "ops_per_sec")
    dup_raft = [r.get("raft_entries") for r in cells.get("ledger", "claim-dup", 64) if r.get("raft_entries") is not None]
    if dup64 is not None:
        out.append(("Duplicate checks at 64 clients: ≥ 60,000/s", f"{fmt_num(dup64)} ops/s", verdict(dup64 >= 60_000)))
        out.append(("Duplicate checks at 64 clients: no Raft entries written",
                    f"Raft log grew by {', '.join(str(x) for x in dup_raft)} entries during the runs",
                    verdict(all(x == 0 for x in dup_raft)) if dup_raft else verdict(None)))
    else:
        out.append(("Duplicate checks at 64 clients: ≥ 60,000/s", "–", verdict(None)))
        out.append(("Duplicate checks at 64 clients: no Raft entries written", "–", verdict(None)))
    dup1 = med("ledger", "claim-dup", 1, "p50_ms")
    out.append(("Duplicate checks at 1 client: p50 ≤ 0.15 ms", f"{fmt_ms(dup1)} ms" if dup1 is not None else "–",
                verdict(None if dup1 is None else dup1 <= 0.15)))
    # 5. restart with 10M records <= 3 s
    restarts = [r for r in rows if r.get("kind") == "restart" and r.get("seconds_to_serving") is not None]
    at10m = [r for r in restarts if r.get("records", 0) >= 10_000_000]
    if at10m:
        r = max(at10m, key=lambda r: r["records"])
        out.append(("Restart to serving with 10 million records: ≤ 3 s",
                    f"{r['seconds_to_serving']:.2f} s ({fmt_num(r['records'])} records)",
                    verdict(r["seconds_to_serving"] <= 3)))
    elif restarts:
        r = max(restarts, key=lambda r: r["records"])
        out.append(("Restart to serving with 10 million records: ≤ 3 s",
                    f"only measured with {fmt_num(r['records'])} records: {r['seconds_to_serving']:.2f} s",
                    "not measured at 10M"))
    else:
        out.append(("Restart to serving with 10 million records: ≤ 3 s", "–", verdict(None)))
    # 6. failover: writes resume <= 2 s
    fails = [r for r in rows if r.get("kind") == "failover" and r.get("kill_to_first_ack_ms") is not None]
    if fails:
        worst = max(r["kill_to_first_ack_ms"] for r in fails)
        out.append(("Writes resume ≤ 2 s after the leader is killed (under load)",
                    f"worst of {len(fails)} trial(s): {worst / 1000:.2f} s "
                    f"(all: {', '.join('%.2f' % (r['kill_to_first_ack_ms'] / 1000) for r in fails)} s)",
                    verdict(worst <= 2000)))
    else:
        out.append(("Writes resume ≤ 2 s after the leader is killed (under load)", "–", verdict(None)))
    return out


def cmd_report(args):
    rows = load_results(args.results)
    doc_dir = os.path.dirname(os.path.abspath(args.doc))
    machine = dict(next((r for r in rows if r.get("kind") == "machine"), {}))
    finished = next((r for r in rows if r.get("kind") == "finished"), {})
    machine.setdefault("finished_utc", finished.get("finished_utc"))
    cells = Cells(rows)
    quick = bool(machine.get("quick"))
    plots = make_plots(cells, args.plots, doc_dir)
    systems = cells.systems()
    L = []
    w = L.append
    w("# Benchmarks: dedup-ledger, etcd and Redis side by side")
    w("")
    if quick:
        w("> **QUICK smoke run** (`QUICK=1`): 1-second cells, one repetition, few concurrency levels and a small "
          "fill. It shows that the harness works end to end; its figures are **not** the benchmark. Run the full "
          "script on a quiet machine to replace this page.")
        w("")
    w(f"Generated by `bench/report.py` from one run of `bench/side-by-side.sh` started at "
      f"{machine.get('started_utc', '?')} (UTC) and finished at {machine.get('finished_utc', '?')}, "
      f"on commit `{machine.get('git_commit', '?')}`{' with uncommitted changes' if machine.get('git_dirty') else ''}.")
    w("")
    w("The exact command:")
    w("")
    w("```sh")
    w(machine.get("command", "bench/side-by-side.sh"))
    w("```")
    w("")
    knobs = machine.get("knobs") or {}
    if knobs:
        w("with these settings (env knobs, see `bench/README.md`): " +
          ", ".join(f"`{k}={v}`" for k, v in sorted(knobs.items())) + ".")
        w("")
    w("Raw results (one JSON object per line, every cell with its command and load average): "
      f"[`{os.path.relpath(args.raw_copy or args.results, doc_dir)}`]({os.path.relpath(args.raw_copy or args.results, doc_dir)}).")
    w("")

    # ---- targets
    w("## Issue 6 targets")
    w("")
    w("Medians over the repetitions of dedup-ledger's cells in this run (32-byte keys, 64-byte outcomes, "
      "durable writes).")
    w("")
    w("| Target | Measured | Verdict |")
    w("|---|---|---|")
    targets = target_rows(cells, rows, quick)
    for target, measured, verdict in targets:
        w(f"| {target} | {measured} | {verdict} |")
    w("")
    unmet = [t for t in targets if "not met" in t[2] and "not measured" not in t[2]]
    if unmet:
        w("### Where the time goes for the targets not met")
        w("")
        w("Facts from this run that bound the answer (the profile behind them is the engineer's account, "
          "recorded in the notes of the change that addresses each target):")
        w("")
        for path in ["claim-new", "claim-dup", "batch-claim"]:
            for c in cells.concurrencies(path):
                cell = cells.get("ledger", path, c)
                if not cell or c not in (1, 64, 256) and path != "batch-claim":
                    continue
                cpu = median([r.get("client_cpu_percent", 0) for r in cell])
                load = median([r.get("load1_before", 0) for r in cell if r.get("load1_before") is not None])
                entries = median([r.get("raft_entries") or 0 for r in cell])
                ops = median([r.get("ops", 0) for r in cell]) or 0
                per = f"{entries / ops:.3f}" if ops else "–"
                w(f"- ledger {path} c={c}: load generator CPU {fmt_num(cpu)} % of one core, 1-min load average "
                  f"before the cell {load if load is not None else '–'} on {machine.get('nproc', '?')} cores, "
                  f"Raft entries per operation {per}.")
        w("")
        w(f"All three systems and the load generators share {machine.get('nproc', '?')} vCPUs; a cell whose load "
          "average is above the core count was CPU-bound on the client and servers together.")
        w("")
        # The engineer's profile of the ledger, measured apart from this run, with its commands.
        profile = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profile.md")
        if os.path.exists(profile):
            with open(profile, encoding="utf-8") as f:
                w(f.read().rstrip("\n"))
            w("")

    # ---- tables per path
    w("## Results side by side")
    w("")
    w("Each cell: median of the repetitions, with the min–max spread in brackets when there is more than one. "
      "Closed loop, one call in flight per client, clients spread over "
      f"{knobs.get('CONNECTIONS', '4')} connection(s) per target (fewer when there are fewer clients). "
      "etcd and dedup-ledger receive the load on the leader only.")
    w("")
    for path in PATHS:
        levels = cells.concurrencies(path)
        if not levels:
            continue
        w(f"### {PATH_TITLES[path]}")
        w("")
        if path == "batch-claim":
            w("Keys claimed per second (each call carries 64 keys; calls/s = keys/s ÷ 64).")
        elif path == "claim-dup":
            w("Operations per second on keys written before the timed phase (dedup-ledger: completed keys "
              "answered without Raft; etcd: the txn's Else branch, a full Raft round; Redis: SET NX answering nil).")
        else:
            w("Operations per second, each a claim of a key never seen (one durable replicated write for "
              "dedup-ledger and etcd).")
        w("")
        ratio = "ledger" in systems and "etcd" in systems
        w("| clients | " + " | ".join(SYSTEM_TITLES.get(s, s) for s in systems) + (" | ledger ÷ etcd |" if ratio else " |"))
        w("|---:|" + "---:|" * (len(systems) + (1 if ratio else 0)))
        for c in levels:
            line = f"| {c} | " + " | ".join(spread(cells.stat(s, path, c, rate_field(path))) for s in systems) + " |"
            if ratio:
                a = cells.stat("ledger", path, c, rate_field(path))
                b = cells.stat("etcd", path, c, rate_field(path))
                line += f" {a['median'] / b['median']:.1f}× |" if a and b and b["median"] else " – |"
            w(line)
        w("")
        w("Latency p50 / p99 / p99.9 in ms (medians):")
        w("")
        w("| clients | " + " | ".join(SYSTEM_TITLES.get(s, s) for s in systems) + " |")
        w("|---:|" + "---:|" * len(systems))
        for c in levels:
            cols = []
            for s in systems:
                p50 = cells.stat(s, path, c, "p50_ms")
                p99 = cells.stat(s, path, c, "p99_ms")
                p999 = cells.stat(s, path, c, "p999_ms")
                if p50 is None:
                    cols.append("–")
                else:
                    cols.append(f"{fmt_ms(p50['median'])} / {fmt_ms(p99['median'])} / {fmt_ms(p999['median'])}")
            w(f"| {c} | " + " | ".join(cols) + " |")
        w("")
        for kind in ["throughput", "p99"]:
            if (path, kind) in plots:
                w(f"![{PATH_TITLES[path]}: {kind}]({plots[(path, kind)]})")
                w("")
        if path == "batch-claim":
            w("etcd's batch is one transaction whose Then branch holds 64 nested "
              "`If(CreateRevision(k)==0) Then Put(k,v,lease) Else Get(k)` transactions (etcd ≥ 3.3): every key keeps "
              "its own compare and its own answer, all in one Raft entry, which is the semantics of dedup-ledger's "
              "CheckAndClaimBatch. Redis' batch is a pipeline of 64 `SET NX PX` commands: one round trip with "
              "per-key answers, not atomic as a whole.")
            w("")

    # ---- errors
    w("### Errors, unexpected answers and Raft entries")
    w("")
    w("| system | path | clients | errors (by reason) | unexpected answers | Raft entries per op (median) | "
      "client CPU % |")
    w("|---|---|---:|---|---|---:|---:|")
    for path in PATHS:
        for c in cells.concurrencies(path):
            for s in systems:
                cell = cells.get(s, path, c)
                if not cell:
                    continue
                errors = defaultdict(int)
                unexpected = defaultdict(int)
                for r in cell:
                    for k, v in (r.get("errors_by_reason") or {}).items():
                        errors[k] += v
                    for k, v in (r.get("unexpected_by_answer") or {}).items():
                        unexpected[k] += v
                per_op = [r["raft_entries"] / r["ops"] for r in cell if r.get("raft_entries") is not None and r.get("ops")]
                w(f"| {s} | {path} | {c} | {', '.join(f'{k}: {v}' for k, v in errors.items()) or '0'} | "
                  f"{', '.join(f'{k}: {v}' for k, v in unexpected.items()) or '0'} | "
                  f"{fmt_num(median(per_op), 3) if per_op else '–'} | "
                  f"{fmt_num(median([r.get('client_cpu_percent', 0) for r in cell]))} |")
    w("")
    failed = [r for r in rows if r.get("kind") == "cell-failed"]
    if failed:
        w(f"{len(failed)} cell(s) produced no result: " + "; ".join(
            f"{r.get('system')} {r.get('path')} c={r.get('concurrency')} rep {r.get('rep')} (exit {r.get('exit')})"
            for r in failed) + ". Their logs are in the run's work folder.")
        w("")

    # ---- ledger resources
    w("## dedup-ledger: memory, disk, restart and failover")
    w("")
    fills = [r for r in rows if r.get("kind") == "fill"]
    res = [r for r in rows if r.get("kind") == "resources"]
    if fills:
        w("`dedupctl bench fill` of completed records (claim + complete in batches), on a fresh three-node cluster "
          "with etcd and Redis stopped:")
        w("")
        w("| records in the ledger | written in this step | records/s | complete |")
        w("|---:|---:|---:|---|")
        for r in fills:
            w(f"| {fmt_num(r.get('records_total'))} | {fmt_num(r.get('items'))} | {fmt_num(r.get('items_per_sec'))} | "
              f"{r.get('complete')} |")
        w("")
    if res:
        w("| records | when | node | RSS MiB | peak RSS MiB | data folder MiB | data bytes per record |")
        w("|---:|---|---:|---:|---:|---:|---:|")
        for r in res:
            w(f"| {fmt_num(r.get('records'))} | {r.get('when')} | {r.get('node')} | "
              f"{fmt_num((r.get('rss_kb') or 0) / 1024, 1)} | {fmt_num((r.get('hwm_kb') or 0) / 1024, 1)} | "
              f"{fmt_num((r.get('data_bytes') or 0) / 2**20, 1)} | "
              f"{fmt_num(r['data_bytes'] / r['records'], 0) if r.get('records') and r.get('data_bytes') else '–'} |")
        w("")
    restarts = [r for r in rows if r.get("kind") == "restart"]
    if restarts:
        w("Restart to serving: all three nodes stopped (SIGTERM) and started again; time from starting the "
          "processes until a new claim is acknowledged (polled with `dedupctl claim`, 500 ms per attempt). "
          "Then duplicate checks of the filled keys with a cold hot tier (served from sled):")
        w("")
        w("| records | stop s | restart to serving s | cold claim-dup clients | ops/s | p50 ms | p99 ms | Raft entries |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|")
        colds = {r.get("records"): r for r in rows if r.get("kind") == "cold-dup"}
        for r in restarts:
            cold = colds.get(r.get("records"), {})
            sts = r.get("seconds_to_serving")
            w(f"| {fmt_num(r.get('records'))} | {fmt_num(r.get('stop_seconds'), 2)} | "
              f"{f'{sts:.2f}' if sts is not None else 'did not serve within ' + str(r.get('wait_max_s')) + ' s'} | "
              f"{cold.get('concurrency', '–')} | {fmt_num(cold.get('ops_per_sec'))} | {fmt_ms(cold.get('p50_ms'))} | "
              f"{fmt_ms(cold.get('p99_ms'))} | {cold.get('raft_entries', '–')} |")
        w("")
    fails = [r for r in rows if r.get("kind") == "failover"]
    if fails:
        w("Leader killed with SIGKILL under load (`dedupctl bench claim-new --target all`), while a probe "
          "sends one `dedupctl claim` after another (a new process each, ~ms apart, retrying within the client "
          "until acknowledged): time from the kill to the acknowledgement of the first claim sent after the "
          "killed process was gone (so the old leader cannot have answered it), and the gap between the last "
          "acknowledgement before the kill and that one. The load's errors are the calls of the workers bound "
          "to the killed node.")
        w("")
        w("| trial | records | killed node | kill → first ack ms | ack gap ms | probe acks before / after | "
          "load ops/s | load errors |")
        w("|---:|---:|---:|---:|---:|---|---:|---:|")
        for r in fails:
            w(f"| {r.get('trial')} | {fmt_num(r.get('records'))} | {r.get('victim')} | {fmt_num(r.get('kill_to_first_ack_ms'), 1)} | "
              f"{fmt_num(r.get('gap_ms'), 1)} | {r.get('probe_ok_before')} / {r.get('probe_ok_after')} | "
              f"{fmt_num(r.get('load_ops_per_sec'))} | {r.get('load_errors', '–')} |")
        w("")

    statuses = [r for r in rows if r.get("kind") == "ledger-status"]
    if statuses:
        w("Node counters from `dedupctl status` (cumulative since the node started): commands proposed, Raft "
          "entries they were packed in, log flushes, and duplicates answered without Raft:")
        w("")
        w("| when | node | role | commands proposed | entries proposed | log flushes | commands per entry | "
          "duplicates answered locally | hot tier hit ratio | data MiB |")
        w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in statuses:
            for n in r.get("nodes", []):
                if "node_id" not in n:
                    continue
                cmds, entries = n.get("commands_proposed"), n.get("entries_proposed")
                per = f"{cmds / entries:.1f}" if cmds and entries else "–"
                ratio = n.get("hot_tier_hit_ratio")
                w(f"| {r.get('when')} | {n.get('node_id')} | {n.get('role')} | {fmt_num(cmds)} | {fmt_num(entries)} | "
                  f"{fmt_num(n.get('log_flushes'))} | {per} | {fmt_num(n.get('duplicates_answered_locally'))} | "
                  f"{f'{ratio:.3f}' if isinstance(ratio, (int, float)) else '–'} | "
                  f"{fmt_num((n.get('data_bytes') or 0) / 2**20, 1)} |")
        w("")

    # ---- machine
    w("## Machine")
    w("")
    w("| fact | value |")
    w("|---|---|")
    for key, label in [("nproc", "nproc"), ("cpu_model", "CPU (/proc/cpuinfo)"), ("hypervisor", "virtual machine"),
                       ("mem_total_gib", "memory GiB (/proc/meminfo)"), ("kernel", "kernel"), ("os", "OS"),
                       ("work_dir_disk", "data disk (df -hT)"), ("ledger_binaries", "dedup-ledger binaries"),
                       ("rustc", "rustc"), ("etcd_version", "etcd"),
                       ("redis_version", "Redis"), ("fio", "fdatasync probe (fio, 2300-byte writes)"),
                       ("loadavg", "load average at the start")]:
        value = machine.get(key)
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        w(f"| {label} | {value if value is not None else '–'} |")
    w("")
    w("All servers and load generators run on this one machine and share its cores; published figures for these "
      "systems use one machine per member plus a client machine.")
    w("")

    # ---- method
    w("## Method")
    w("")
    w("- **dedup-ledger**: a fresh three-node cluster from the release binaries on 127.0.0.1:7401–7403; load from "
      "`dedupctl bench` (CheckAndClaim / CheckAndClaimBatch).")
    w("- **etcd 3.4** (Debian's `etcd-server`): three members on 127.0.0.1:23791–23793 (peers 23801–23803), "
      "default flags, backend quota 8 GiB; load from `bench/compare-load` (etcd-client crate): "
      "`Txn(If(CreateRevision(k)==0) Then Put(k, v, lease) Else Get(k))`, one lease per cell.")
    w("- **Redis** (Debian's `redis-server`): one instance without persistence (127.0.0.1:63791) and one with "
      "`appendonly yes`, `appendfsync always` (127.0.0.1:63792); `SET k v NX PX lease` on multiplexed connections. "
      "Redis is single-node and not replicated: an upper bound, not a like-for-like competitor.")
    w("- Same 32-byte keys (random-looking, as hashed message ids) and 64-byte values/outcomes, same lease "
      f"({knobs.get('LEASE_MS', '?')} ms) everywhere. claim-dup reads {knobs.get('DUP_KEYS', '?')} keys written "
      "before each cell (dedup-ledger: completed records).")
    w("- Cells are interleaved: for each path and client count every system runs once, in an order rotated from "
      "cell to cell, before the next cell starts; the whole matrix is repeated "
      f"{knobs.get('REPS', '?')} time(s), each repetition on freshly started, empty systems.")
    w("- The 1-minute load average before each cell is in the raw results (`load1_before`) and below.")
    w("")
    loads = [r for r in rows if r.get("kind") == "cell"]
    if loads:
        w("<details><summary>Load average before each cell</summary>")
        w("")
        w("| # | rep | path | clients | system | load 1 / 5 / 15 min before | after |")
        w("|---:|---:|---|---:|---|---|---|")
        for i, r in enumerate(loads, 1):
            w(f"| {i} | {r.get('rep')} | {r.get('path')} | {r.get('concurrency')} | {r.get('system')} | "
              f"{r.get('loadavg_before', '–')} | {r.get('loadavg_after', '–')} |")
        w("")
        w("</details>")
        w("")
        templates = {}
        for r in loads:
            templates.setdefault((r.get("system"), r.get("path")), r.get("cmd"))
        w("<details><summary>One command per system and path (the raw results hold every cell's)</summary>")
        w("")
        w("```sh")
        for (system, path), cmd in sorted(templates.items()):
            w(f"# {system} {path}")
            w(cmd or "?")
        w("```")
        w("")
        w("</details>")
        w("")
    with open(args.doc, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {args.doc} and {len(plots)} plot(s) in {args.plots}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("annotate")
    p.add_argument("fields", nargs="*")
    p.set_defaults(func=cmd_annotate)
    p = sub.add_parser("machine")
    p.add_argument("--out", required=True)
    p.add_argument("--work")
    p.add_argument("--fact", action="append", default=[], help="KEY=VALUE (JSON or text)")
    p.set_defaults(func=cmd_machine)
    p = sub.add_parser("fio")
    p.add_argument("file")
    p.set_defaults(func=cmd_fio)
    p = sub.add_parser("gap")
    p.add_argument("--probe", required=True)
    p.add_argument("--kill-ns", type=int, required=True)
    p.add_argument("--dead-ns", type=int, help="when the killed process was reaped")
    p.set_defaults(func=cmd_gap)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--doc", required=True)
    p.add_argument("--plots", required=True)
    p.add_argument("--raw-copy", help="where the results were copied next to the doc")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
