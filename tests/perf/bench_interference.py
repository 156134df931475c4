"""Interference benchmark: does a CPU-heavy job slow other tenants' reads and writes?

Run from the repository: ``make bench-interference`` (or ``.venv/bin/python -m
tests.perf.bench_interference [--rounds 3] [--tasks 64] [--spin 300] [--rate 5]
[--reserved-cpus N] [--tenant-proxy] [--only LABEL ...]``).

Two dev clusters side by side (four object servers, each with as many task
slots as this machine has cores), identical but for the executors' priority:

- **equal priority**: ``nice_priority``, ``ionice_class``, ``cpu_policy`` and
  ``cpu_cgroup`` empty, so guests run at the object servers' own priority
  (what zerocompute did before);
- **storage first**: the filter's defaults (nice 19, best-effort I/O at its
  lowest priority, and, where this benchmark may make it (root), the host's
  ``zerocompute-executors`` cgroup of ``cpu_weight`` 64: ``doc/sandbox.md``);
- **storage first, no cgroup**: the defaults with ``cpu_cgroup`` empty (nice 19
  in a session of their own), what a host without a writable cpu controller gets;
- **storage first + SCHED_IDLE**: that and ``cpu_policy = idle``.

Another tenant (test2:tester2) PUTs and GETs 4 KiB objects through the proxy
at a steady rate (``--rate`` pairs a second, open loop), for ``--idle-s``
seconds with nothing else running (idle), then for as long as a CPU-bound map
job runs (``--tasks`` tasks of the ``spin`` guest, more than the slots of every
server).  Printed side by side:
p50 and p99 of the requests idle and during the job, their ratio, the job's
time, and where the CPU went during the job (the Swift servers' processes
against the executors').  Rounds alternate between the clusters; latencies
are percentiles of every round's requests together, times and CPU medians
over ``--rounds``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time

from tests.perf.bench_sandbox import percentile
from zerocompute.client import submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest
from zerocompute.sandbox import procfs
from zerocompute.sandbox.priority import AT_THE_SERVERS_PRIORITY

SPIN = "tests/guests/spin.c"
SMALL = 4096
NAMES = 64


class Traffic:
    """Another tenant's small PUTs and GETs at a steady rate, each timed.

    Open loop, as a service's clients are: a PUT and a GET of one name every
    ``1 / rate`` seconds whether or not the last pair has finished (a closed loop
    would send less when the servers are slower, and so load them less exactly
    when it matters).  Each request is timed from the moment it was due.
    """

    def __init__(self, cluster: DevCluster, rate: float, proxy: str = "proxy"):
        self.cluster, self.rate, self.proxy = cluster, rate, proxy
        self.local = threading.local()
        self.body = os.urandom(SMALL)
        self.conn().put_container("small")
        for i in range(NAMES):
            self.conn().put_object("small", f"o{i}", self.body)
        self.n = 0

    def conn(self):
        if not hasattr(self.local, "conn"):  # a swiftclient Connection per thread
            self.local.conn = self.cluster.connection("test2:tester2", self.proxy)
        return self.local.conn

    def pair(self, name: str, due: float, times: dict[str, list[float]]) -> None:
        self.conn().put_object("small", name, self.body)
        put_done = time.perf_counter()
        times["PUT"].append((put_done - due) * 1000)
        _headers, body = self.conn().get_object("small", name)
        times["GET"].append((time.perf_counter() - put_done) * 1000)
        if body != self.body:
            raise SystemExit(f"GET of {name} returned other bytes")

    def run_while(self, keep_going) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {"GET": [], "PUT": []}
        due = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            pending = []
            while keep_going():
                self.n += 1
                pending.append(pool.submit(self.pair, f"o{self.n % NAMES}", due, times))
                due += 1 / self.rate
                time.sleep(max(0.0, due - time.perf_counter()))
            for future in pending:
                future.result()
        return times


def cpu_ticks(cluster: DevCluster) -> dict[str, float]:
    """CPU seconds so far of the cluster's servers and of their executors (which may
    run in sessions of their own: found by parentage)."""
    totals = {"servers": 0.0, "executors": 0.0}
    for family in procfs.families(cluster.state["pids"].values()).values():
        for process in family.values():
            totals["executors" if process.is_executor else "servers"] += process.cpu_s
    return totals


def spin_job(conn, tasks: int, spin: int, n: int) -> dict:
    report = submit_job(conn, {
        "name": f"spin-{n}", "backup_tasks": False,
        "map": {"exec": "swift://~/apps/spin.wasm", "args": [str(spin)],
                "inputs": ["swift://~/spin-in/*"]},
        "output": f"swift://~/out/spin-{n}/all"})
    if report["status"] != "succeeded":
        raise SystemExit(f"job failed: {json.dumps(report)[:3000]}")
    return report


class Setting:
    """One cluster, its tenants and its measurements."""

    def __init__(self, label: str, options: dict[str, str], args, spin_wasm: bytes,
                 tenant_proxy: bool = False):
        self.label, self.args = label, args
        self.cluster = DevCluster(tempfile.mkdtemp(prefix="zc-bench-interference-"),
                                  task_slots=os.cpu_count() or 1, object_options=options,
                                  proxies=2 if tenant_proxy else 1).start()
        self.conn = self.cluster.connection()
        self.conn.put_container("apps")
        self.conn.put_object("apps", "spin.wasm", spin_wasm)
        self.conn.put_container("spin-in")
        for i in range(args.tasks):
            self.conn.put_object("spin-in", f"part-{i:04d}", f"input {i}\n".encode())
        self.conn.put_container("out")
        self.traffic = Traffic(self.cluster, args.rate, "proxy2" if tenant_proxy else "proxy")
        self.rounds: list[dict] = []
        self.samples: list[dict] = []  # each round's request times, idle and during
        self.jobs = 0
        spin_job(self.conn, args.tasks, 1, self.next_job())  # warm: executors, modules

    def next_job(self) -> int:
        self.jobs += 1
        return self.jobs

    def measure(self) -> dict:
        until = time.monotonic() + self.args.idle_s
        idle = self.traffic.run_while(lambda: time.monotonic() < until)
        done = threading.Event()
        job: dict = {}

        def run_job():
            try:
                job["report"] = spin_job(self.conn, self.args.tasks, self.args.spin,
                                         self.next_job())
            finally:
                done.set()

        before, began = cpu_ticks(self.cluster), time.perf_counter()
        thread = threading.Thread(target=run_job)
        thread.start()
        loaded = self.traffic.run_while(lambda: not done.is_set())
        thread.join()
        wall = time.perf_counter() - began
        after = cpu_ticks(self.cluster)
        if "report" not in job:
            raise SystemExit("the job did not finish")
        result = {"job_s": job["report"]["ms"] / 1000, "wall_s": wall,
                  "cpu_s": {k: after[k] - before[k] for k in after},
                  "requests_per_s": {"idle": 2 * len(idle["GET"]) / self.args.idle_s,
                                     "during": 2 * len(loaded["GET"]) / wall}}
        for op in ("GET", "PUT"):
            result[op] = {"idle_p50": statistics.median(idle[op]),
                          "idle_p99": percentile(idle[op], 99),
                          "during_p50": statistics.median(loaded[op]),
                          "during_p99": percentile(loaded[op], 99)}
        self.rounds.append(result)
        self.samples.append({"idle": idle, "during": loaded})
        return result

    def summary(self) -> dict:
        def med(get):
            return statistics.median(get(r) for r in self.rounds)
        out = {"job_s": med(lambda r: r["job_s"]),
               "servers_cpu_s": med(lambda r: r["cpu_s"]["servers"]),
               "executors_cpu_s": med(lambda r: r["cpu_s"]["executors"]),
               "requests_per_s_idle": med(lambda r: r["requests_per_s"]["idle"]),
               "requests_per_s_during": med(lambda r: r["requests_per_s"]["during"])}
        # Percentiles of every round's requests together: a p99 of one round's hundred
        # requests is its worst but one.
        for op in ("GET", "PUT"):
            for when in ("idle", "during"):
                times = [t for r in self.samples for t in r[when][op]]
                out[f"{op}_{when}_p50"] = statistics.median(times)
                out[f"{op}_{when}_p99"] = percentile(times, 99)
            out[f"{op}_p99_ratio"] = out[f"{op}_during_p99"] / out[f"{op}_idle_p99"]
        return out

    def stop(self) -> None:
        self.cluster.stop(wipe=True)


def print_table(summaries: dict[str, dict], args) -> None:
    print(f"\nSmall GETs and PUTs ({SMALL} B, {args.rate:g} pairs/s, another tenant) through the "
          f"proxy, idle and while a job of {args.tasks} CPU-bound tasks (spin {args.spin}) "
          f"fills every slot of 4 object servers x {os.cpu_count()} slots, on "
          f"{os.cpu_count()} cores; {args.rounds} rounds")
    header = (f"{'':36} {'GET p50':>8} {'p99':>7} {'PUT p50':>8} {'p99':>7}  "
              f"{'p99 x idle':>10}  {'job s':>6}  {'CPU s servers/executors':>23}")
    print(header)
    for label, s in summaries.items():
        print(f"{label + ', idle':36} {s['GET_idle_p50']:8.1f} {s['GET_idle_p99']:7.1f} "
              f"{s['PUT_idle_p50']:8.1f} {s['PUT_idle_p99']:7.1f}")
        print(f"{label + ', during job':36} {s['GET_during_p50']:8.1f} "
              f"{s['GET_during_p99']:7.1f} {s['PUT_during_p50']:8.1f} "
              f"{s['PUT_during_p99']:7.1f}  {s['GET_p99_ratio']:5.2f}/{s['PUT_p99_ratio']:<4.2f}"
              f"  {s['job_s']:6.2f}  {s['servers_cpu_s']:11.1f}/{s['executors_cpu_s']:<11.1f}")
    equal = summaries.get("equal priority")
    for label, s in summaries.items():
        if label != "equal priority":
            versus = (f"; job time / at equal priority: {s['job_s'] / equal['job_s']:.2f} "
                      "(target <= 1.3)") if equal else ""
            print(f"{label}: p99 during the job / idle: GET {s['GET_p99_ratio']:.2f}, PUT "
                  f"{s['PUT_p99_ratio']:.2f} (target <= 1.3){versus}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--spin", type=int, default=300, help="million rounds per task")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=5.0,
                        help="the other tenant's PUT+GET pairs per second")
    parser.add_argument("--tenant-proxy", action="store_true",
                        help="also: the defaults, the other tenant on a proxy of its own (is "
                             "the tail the job's proxy or its guests?)")
    parser.add_argument("--reserved-cpus", type=int, default=0, metavar="N",
                        help="also: the defaults with N CPUs kept free of guests")
    parser.add_argument("--only", nargs="*", metavar="LABEL",
                        help="run only the settings with these labels")
    args = parser.parse_args(argv)
    with open(build_c_guest(SPIN), "rb") as f:
        spin = f.read()
    settings: list[Setting] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [setting.stop() for setting in settings])
        wanted = [("equal priority", AT_THE_SERVERS_PRIORITY, False),
                  ("storage first", {}, False),
                  ("storage first, no cgroup", {"cpu_cgroup": ""}, False),
                  ("storage first + SCHED_IDLE", {"cpu_cgroup": "", "cpu_policy": "idle"},
                   False)]
        if args.reserved_cpus:
            wanted.append((f"storage first + {args.reserved_cpus} CPU kept",
                           {"reserved_cpus": str(args.reserved_cpus)}, False))
        if args.tenant_proxy:
            wanted.append(("storage first, tenant on its own proxy", {}, True))
        for label, options, tenant_proxy in wanted:
            if args.only is None or label in args.only:
                settings.append(Setting(label, options, args, spin, tenant_proxy))
        for n in range(args.rounds):
            for setting in settings:
                result = setting.measure()
                print(f"round {n + 1}, {setting.label}: job {result['job_s']:.2f} s, GET p99 "
                      f"{result['GET']['idle_p99']:.1f} -> {result['GET']['during_p99']:.1f} "
                      f"ms, PUT p99 {result['PUT']['idle_p99']:.1f} -> "
                      f"{result['PUT']['during_p99']:.1f} ms", flush=True)
        summaries = {s.label: s.summary() for s in settings}
    print_table(summaries, args)
    print(json.dumps(summaries, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
