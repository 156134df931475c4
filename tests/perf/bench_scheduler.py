"""Scheduler benchmark: random vs load-aware placement on an uneven dev cluster.

Run from the repository: ``make bench-scheduler`` (or
``.venv/bin/python -m tests.perf.bench_scheduler``).

One dev cluster (four object servers, ``--slots`` task slots each).  One
object server is made busy by another tenant: a background thread keeps all
of its slots occupied with long tasks for the whole run (sent to that server
directly, as the proxy would).  Then the same map-only job (``--tasks``
inputs, each task sleeping ``--task-ms`` inside the guest, so tasks occupy
slots without competing for this machine's two cores) runs with each policy,
alternating, ``--rounds`` times.  Makespan is the job's duration; task latency
is each task's wall time from first dispatch to its output written.  Backup
tasks are off for the placement comparison, and on for the last line (the
whole system against random placement with the same safety net).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import urllib.request

from tests.direct import object_on, task_request
from tests.perf.bench_sandbox import percentile
from zerocompute.client import submit_job
from zerocompute.devcluster import DevCluster
from zerocompute.guests import build_c_guest

SLEEPY = "tests/guests/sleepy.c"


class Background:
    """Keeps every slot of one object server busy with another tenant's long tasks."""

    def __init__(self, cluster: DevCluster, server, wasm: bytes, slots: int, ms: int):
        self.cluster, self.server, self.wasm, self.ms = cluster, server, wasm, ms
        self.targets = object_on(cluster, server, "test2:tester2", "background", slots)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.keep_busy, args=(path,), daemon=True)
                        for path in self.targets]

    def keep_busy(self, path: str) -> None:
        while not self.stop.is_set():
            req = task_request(self.cluster, self.server.port, path, self.wasm, [str(self.ms)],
                               "background")
            try:
                urllib.request.urlopen(req, timeout=300).read()
            except OSError:
                pass

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def run(conn, policy: str, tasks: int, ms: int, backups: bool, n: int) -> dict:
    report = submit_job(conn, {
        "name": f"{policy}-{n}", "scheduler": policy, "backup_tasks": backups,
        "map": {"exec": "swift://~/apps/sleepy.wasm", "args": [str(ms)],
                "inputs": ["swift://~/in/*"]},
        "output": f"swift://~/out/{policy}-{int(backups)}-{n}/*"})
    if report["status"] != "succeeded":
        raise SystemExit(f"job failed: {json.dumps(report)[:3000]}")
    return report


def summarize(reports: list[dict], busy_label: str) -> dict:
    latencies = [t["wall_ms"] for r in reports for t in r["tasks"]]
    return {
        "makespan_ms": statistics.median(r["ms"] for r in reports),
        "makespans_ms": [round(r["ms"]) for r in reports],
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "on_busy_node": statistics.mean(
            sum(t["node"] == busy_label for t in r["tasks"]) for r in reports),
        "busy_retries": statistics.mean(
            sum(a["error"].startswith("503") for t in r["tasks"] for a in t["retries"])
            for r in reports),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--task-ms", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--background-ms", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    wasm_path = build_c_guest(SLEEPY)
    with open(wasm_path, "rb") as f:
        wasm = f.read()
    cluster = DevCluster(tempfile.mkdtemp(prefix="zerocompute-bench-sched-"),
                         task_slots=args.slots).start()
    try:
        conn = cluster.connection()
        conn.put_container("apps")
        conn.put_object("apps", "sleepy.wasm", wasm)
        conn.put_container("in")
        for i in range(args.tasks):
            conn.put_object("in", f"part-{i:04d}", f"input {i}\n".encode())
        conn.put_container("out")
        busy = cluster.server("object1")
        busy_label = f"127.0.0.1:{busy.port}/sd1"
        run(conn, "load-aware", args.tasks, 10, False, -1)  # warm: executables cached

        results: dict[str, list[dict]] = {}
        with Background(cluster, busy, wasm, args.slots, args.background_ms):
            for n in range(args.rounds):
                for backups in (False, True):
                    for policy in ("random", "load-aware"):
                        results.setdefault(f"{policy}{'+backups' if backups else ''}",
                                           []).append(run(conn, policy, args.tasks,
                                                          args.task_ms, backups, n))
    finally:
        cluster.stop()

    summary = {name: summarize(reports, busy_label) for name, reports in results.items()}
    ideal_ms = args.tasks * args.task_ms / (3 * args.slots)
    print(f"{args.tasks} tasks of {args.task_ms} ms; 4 object servers x {args.slots} slots; "
          f"object1's slots all busy with another tenant's {args.background_ms} ms tasks; "
          f"{args.rounds} rounds, medians")
    print(f"(the other three servers alone would take {ideal_ms:.0f} ms)")
    for name, s in summary.items():
        print(f"  {name:<20} makespan {s['makespan_ms']:7.0f} ms  task p50 {s['p50_ms']:6.0f} ms"
              f"  p99 {s['p99_ms']:6.0f} ms  tasks on the busy node {s['on_busy_node']:4.1f}"
              f"  503 retries {s['busy_retries']:5.1f}")
    ratio = summary["random"]["makespan_ms"] / summary["load-aware"]["makespan_ms"]
    ratio_b = summary["random+backups"]["makespan_ms"] / \
        summary["load-aware+backups"]["makespan_ms"]
    print(f"makespan ratio random / load-aware: {ratio:.2f} (target >= 1.5); "
          f"with backup tasks on both: {ratio_b:.2f}")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
