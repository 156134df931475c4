"""Scheduler benchmark: random vs load-aware placement on an uneven dev cluster.

Run from the repository: ``make bench-scheduler`` (or
``.venv/bin/python -m tests.perf.bench_scheduler [--scenario S]``).

Three scenarios, each on a dev cluster of its own (four object servers of
``--slots`` slots):

- ``busy-slots``: one object server is made busy by another tenant: a
  background thread keeps all of its task slots occupied with long
  tasks for the whole run (sent to that server directly, as the proxy
  would).  The job's tasks (``--tasks`` inputs) sleep ``--task-ms`` inside the
  guest, so they occupy slots without competing for this machine's two cores.
- ``cpu-skew``: a noisy neighbour or an older host.  Each object server's
  executors get a CPU budget of their own, ``--host-cpu`` of a core, as if
  each server were a host (the cgroup v1 ``cpu`` controller; needs root);
  one server's executors are held to a fifth (``--cpu-share``) of that, its
  slots free.  The job's ``--cpu-tasks`` tasks are CPU-bound (``spin``,
  about 45 ms of one core each).
- ``cpu-skew-shared``: the same, but only the slow server is limited (to a
  fifth of a core); the other three share this machine's cores, so a
  placement can at best match the job's time with no server slowed (which
  the benchmark measures first, for both ``cpu-skew`` scenarios).

In each, the same map-only job runs with each policy, with backup tasks off
and on, alternating, ``--rounds`` times; medians.  Each is also measured
against a lower bound from the same run: the job with no server slowed (or
busy) times the capacity the slowed server took away (4/3 for busy-slots,
4/3.2 for cpu-skew, 1.00 for cpu-skew-shared, whose other servers can take
up what the slow one does not).  Makespan is the job's
duration; task latency is each task's wall time from first dispatch to its
output written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

from tests.direct import object_on, task_request
from tests.perf.bench_sandbox import percentile
from zerocompute import wire
from zerocompute.client import submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest
from zerocompute.sandbox import procfs

SLEEPY = "tests/guests/sleepy.c"
SPIN = "tests/guests/spin.c"
CGROUP_CPU = "/sys/fs/cgroup/cpu"


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
                time.sleep(0.1)  # refused (busy): ask again soon, without hammering

    def running(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.port}{wire.LOAD_PATH}",
                                    timeout=5) as resp:
            return json.loads(resp.read())["running"]

    def wait_busy(self, settle_s: float = 2.0) -> None:
        """Until every slot runs a background task, and has for ``settle_s``: a tenant's
        long work in progress, as a job arriving at a busy node finds it."""
        deadline = time.monotonic() + 60
        since = None
        while since is None or time.monotonic() - since < settle_s:
            if self.running() >= len(self.targets):
                since = since or time.monotonic()
            else:
                since = None
            if time.monotonic() > deadline:
                raise RuntimeError("the background tenant could not occupy its slots")
            time.sleep(0.05)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        self.wait_busy()
        return self

    def __exit__(self, *exc):
        self.stop.set()


class CpuLimit:
    """One server's executors held to ``share`` of a core together (the server itself,
    which also stores other tasks' outputs, keeps its CPU).  Executors started
    later (after a cancelled guest's is killed) are moved in as they appear."""

    def __init__(self, cluster: DevCluster, server, share: float):
        self.pgid = cluster.state["pids"][server.name]
        self.share = share
        self.path = os.path.join(CGROUP_CPU, f"zerocompute-bench-{os.getpid()}-{server.name}")
        self.stop = threading.Event()
        self.watcher = threading.Thread(target=self.watch, daemon=True)

    def members(self) -> list[int]:
        """The server's executors: its process group and its descendants (an executor
        starts a session of its own, ``sandbox/priority.py``), less the server."""
        return sorted(procfs.families([self.pgid])[self.pgid].keys() - {self.pgid})

    def watch(self) -> None:
        while not self.stop.wait(0.1):
            self._move(self.path)

    def _move(self, cgroup: str) -> None:
        for pid in self.members():
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass  # gone meanwhile

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(CGROUP_CPU, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(period * self.share)))
        self._move(self.path)
        self.watcher.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.watcher.join()
        self._move(CGROUP_CPU)
        os.rmdir(self.path)


def run(conn, policy: str, tasks: int, ms: int, backups: bool, n: int,
        exe: str = "sleepy.wasm", inputs: str = "in", gather: bool = False) -> dict:
    output = f"swift://~/out/{exe}-{policy}-{int(backups)}-{n}/" + ("all" if gather else "*")
    report = submit_job(conn, {
        "name": f"{policy}-{n}", "scheduler": policy, "backup_tasks": backups,
        "map": {"exec": f"swift://~/apps/{exe}", "args": [str(ms)],
                "inputs": [f"swift://~/{inputs}/*"]},
        "output": output})
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


def alternate(rounds: int, job) -> dict[str, list[dict]]:
    """Each policy with backups off and on, alternating, ``rounds`` times."""
    results: dict[str, list[dict]] = {}
    for n in range(rounds):
        for backups in (False, True):
            for policy in ("random", "load-aware"):
                name = f"{policy}{'+backups' if backups else ''}"
                results.setdefault(name, []).append(job(policy, backups, n))
    return results


def print_summary(title: str, results: dict[str, list[dict]], slow_label: str,
                  where: str) -> dict:
    summary = {name: summarize(reports, slow_label) for name, reports in results.items()}
    print(title)
    for name, s in summary.items():
        print(f"  {name:<20} makespan {s['makespan_ms']:7.0f} ms  task p50 {s['p50_ms']:6.0f} ms"
              f"  p99 {s['p99_ms']:6.0f} ms  tasks on the {where} node "
              f"{s['on_busy_node']:5.1f}  503 retries {s['busy_retries']:5.1f}")
    ratio = summary["random"]["makespan_ms"] / summary["load-aware"]["makespan_ms"]
    ratio_b = summary["random+backups"]["makespan_ms"] / \
        summary["load-aware+backups"]["makespan_ms"]
    summary["ratio"], summary["ratio_with_backups"] = ratio, ratio_b
    return summary


def staged(cluster: DevCluster, exe: str, wasm: bytes, inputs: str, count: int):
    """test:tester's connection, with the guest and ``count`` small inputs uploaded."""
    conn = cluster.connection()
    conn.put_container("apps")
    conn.put_object("apps", exe, wasm)
    conn.put_container(inputs)
    for i in range(count):
        conn.put_object(inputs, f"part-{i:04d}", f"input {i}\n".encode())
    conn.put_container("out")
    return conn


def busy_slots(args, wasm: bytes) -> dict:
    cluster = DevCluster(tempfile.mkdtemp(prefix="zerocompute-bench-sched-"),
                         task_slots=args.slots).start()
    try:
        conn = staged(cluster, "sleepy.wasm", wasm, "in", args.tasks)
        busy = cluster.server("object1")
        busy_label = f"127.0.0.1:{busy.port}/sd1"
        run(conn, "load-aware", args.tasks, 10, False, -1)  # warm: executables cached
        # The same job with every server free: the bound is it on the three left.
        even_ms = statistics.median(run(conn, "load-aware", args.tasks, args.task_ms, False,
                                        100 + n)["ms"] for n in range(args.rounds))
        with Background(cluster, busy, wasm, args.slots, args.background_ms) as background:
            def job(policy, backups, n):
                background.wait_busy(settle_s=0.5)
                return run(conn, policy, args.tasks, args.task_ms, backups, n)
            results = alternate(args.rounds, job)
    finally:
        cluster.stop(wipe=True)
    ideal_ms = args.tasks * args.task_ms / (3 * args.slots)
    summary = print_summary(
        f"busy-slots: {args.tasks} tasks of {args.task_ms} ms; 4 object servers x {args.slots} "
        f"slots; object1's slots all busy with another tenant's {args.background_ms} ms tasks; "
        f"{args.rounds} rounds, medians\n(the other three servers alone would take "
        f"{ideal_ms:.0f} ms)", results, busy_label, "busy")
    print(f"makespan ratio random / load-aware: {summary['ratio']:.2f} (target >= 1.5); "
          f"with backup tasks on both: {summary['ratio_with_backups']:.2f}")
    # One server of four has no slot for the job all run long.
    print_bound(summary, even_ms, 4 / 3, "every server free")
    return summary


def print_bound(summary: dict, even_ms: float, lost: float, even: str) -> None:
    """Each policy's makespan over the lower bound: the job with no server slowed,
    measured in the same run, times the capacity the slowed server took away."""
    bound_ms = even_ms * lost
    summary["even_ms"], summary["bound_ms"] = even_ms, bound_ms
    print(f"lower bound {bound_ms:.0f} ms = {even_ms:.0f} ms ({even}) x {lost:.2f} "
          f"(the capacity left)")
    for name in ("load-aware", "load-aware+backups", "random", "random+backups"):
        over = summary[name]["makespan_ms"] / bound_ms
        summary[name]["over_bound"] = over
        print(f"  {name:<20} {over:.2f}x the bound")


def cpu_limits(cluster: DevCluster, slow, share: float, host_cpu: float) -> contextlib.ExitStack:
    """The slow server's executors held to ``share`` of a core; with ``host_cpu``, every
    object server's executors get a budget of their own, as on separate hosts (the slow
    one ``share`` of its host's)."""
    stack = contextlib.ExitStack()
    if not host_cpu:
        stack.enter_context(CpuLimit(cluster, slow, share))
        return stack
    for server in cluster.object_servers:
        stack.enter_context(CpuLimit(
            cluster, server, host_cpu * (share if server.name == slow.name else 1.0)))
    return stack


def cpu_skew(args, host_cpu: float) -> dict:
    with open(build_c_guest(SPIN), "rb") as f:
        spin = f.read()
    cluster = DevCluster(tempfile.mkdtemp(prefix="zerocompute-bench-skew-"),
                         task_slots=args.slots).start()

    def job(policy, backups, n):
        return run(conn, policy, args.cpu_tasks, args.spin, backups, n, "spin.wasm", "cpu-in",
                   gather=True)

    try:
        conn = staged(cluster, "spin.wasm", spin, "cpu-in", args.cpu_tasks)
        slow = cluster.server("object1")
        slow_label = f"127.0.0.1:{slow.port}/sd1"
        run(conn, "random", args.cpu_tasks, 1, False, -1, "spin.wasm", "cpu-in")  # warm
        # The same job with no server slowed: what the skew costs at best.
        with cpu_limits(cluster, slow, 1.0, host_cpu):
            even_ms = statistics.median(
                job("load-aware", False, 100 + n)["ms"] for n in range(args.rounds))
        with cpu_limits(cluster, slow, args.cpu_share, host_cpu):
            results = alternate(args.rounds, job)
    finally:
        cluster.stop(wipe=True)
    hosts = (f"each object server's executors held to {host_cpu:g} of a core (its host), "
             f"object1's to {args.cpu_share:g} of that" if host_cpu else
             f"object1's executors held to {args.cpu_share:g} of a core, the others "
             f"sharing this machine's cores")
    summary = print_summary(
        f"cpu-skew: {args.cpu_tasks} CPU-bound tasks (spin {args.spin}); 4 object servers x "
        f"{args.slots} slots; {hosts}; {args.rounds} rounds, medians\n(the same job with no "
        f"server slowed: {even_ms:.0f} ms)", results, slow_label, "slow")
    print(f"makespan ratio random / load-aware: {summary['ratio']:.2f} (target >= 1.5); "
          f"with backup tasks on both: {summary['ratio_with_backups']:.2f} (target >= 1.25)")
    # With a host each, the slow one does a fifth of its share: 4 / 3.2 of the time;
    # sharing the cores, the other three can do what it does not.
    lost = 4 / (3 + args.cpu_share) if host_cpu else 1.0
    print_bound(summary, even_ms, lost, "no server slowed")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append",
                        choices=["busy-slots", "cpu-skew", "cpu-skew-shared"])
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--task-ms", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--background-ms", type=int, default=10_000)
    parser.add_argument("--cpu-tasks", type=int, default=200)
    parser.add_argument("--spin", type=int, default=30, help="million rounds per task")
    parser.add_argument("--cpu-share", type=float, default=0.2)
    parser.add_argument("--host-cpu", type=float, default=0.45,
                        help="cpu-skew: cores per object server, as if each were a host")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    scenarios = args.scenario or ["busy-slots", "cpu-skew", "cpu-skew-shared"]
    summaries = {}
    if "busy-slots" in scenarios:
        with open(build_c_guest(SLEEPY), "rb") as f:
            summaries["busy-slots"] = busy_slots(args, f.read())
    if "cpu-skew" in scenarios:
        summaries["cpu-skew"] = cpu_skew(args, args.host_cpu)
    if "cpu-skew-shared" in scenarios:
        summaries["cpu-skew-shared"] = cpu_skew(args, 0.0)
    print(json.dumps(summaries, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
