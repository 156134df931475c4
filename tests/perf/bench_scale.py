"""Scale benchmark: a thousand objects, a thousand instances, against the write floor.

Run from the repository: ``make bench-scale`` (or ``.venv/bin/python -m
tests.perf.bench_scale [--sizes 1000 10000] [--rounds R]``).

One dev cluster (four object servers, two task slots each).  For each size N:
N input objects of 2 KiB, and a map-only job whose trivial C guest copies
its input to its output, so the job writes N output objects of 2 KiB.  In
the same run and at the same concurrency (16, the proxy's default), the
**write floor**: the time to PUT N objects of 2 KiB through the same proxy
with python-swiftclient, the writes the job cannot avoid.  Floor and job
alternate ``--rounds`` times; medians.  Then the same N tasks as one job whose
outputs are gathered into a single object: tasks per second with no
per-task write.  For the sizes in ``--python-sizes`` (1,000 by default), each
round also runs the same job with a Python guest of two lines that copies its
input the same way (:data:`COPY_PY`): Python over C, same run, same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.perf.bench_sandbox import percentile
from zerocompute.client import submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest
from zerocompute.sandbox import procfs

COPY = os.path.join(os.path.dirname(__file__), "..", "guests", "copy.c")
CONCURRENCY = 16
SIZE = 2048
COPY_PY = b"import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n"


def cpu_seconds(cluster: DevCluster) -> dict[str, float]:
    """CPU seconds used so far by each server with its executors, and by this
    benchmark process (the client)."""
    pids = cluster.state["pids"]
    families = procfs.families(pids.values())
    used = {name: sum(p.cpu_s for p in families[pid].values()) for name, pid in pids.items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used["client"] = usage.ru_utime + usage.ru_stime
    return used


def cpu_during(cluster: DevCluster, work, *args) -> tuple[Any, dict[str, float]]:
    before = cpu_seconds(cluster)
    result = work(*args)
    after = cpu_seconds(cluster)
    return result, {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


def put_many(cluster: DevCluster, container: str, count: int, seed: int) -> float:
    """PUT ``count`` objects of 2 KiB, ``CONCURRENCY`` at a time; the seconds it took."""
    url, token = cluster.connection().get_auth()
    conns = [cluster.connection(preauthurl=url, preauthtoken=token) for _ in range(CONCURRENCY)]
    conns[0].put_container(container)
    body = (f"{seed:08d} ".encode() * (SIZE // 9 + 1))[:SIZE - 1] + b"\n"

    def put(i: int) -> None:
        conns[i % CONCURRENCY].put_object(container, f"obj-{i:06d}", body)

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(put, range(count)))
    return time.perf_counter() - started


def run_job(conn, inputs: str, output: str, exe: str = "copy.wasm") -> tuple[float, dict]:
    manifest = {"name": "scale", "map": {"exec": f"swift://~/apps/{exe}",
                                         "inputs": [f"swift://~/{inputs}/*"]},
                "output": output}
    started = time.perf_counter()
    report = submit_job(conn, manifest)
    took = time.perf_counter() - started
    if report["status"] != "succeeded":
        failed = [t for t in report["tasks"] if t["error"]][:3]
        raise RuntimeError(f"job failed: {report.get('error')} {json.dumps(failed)}")
    return took, report


def measure(cluster: DevCluster, n: int, rounds: int, python: bool) -> dict:
    conn = cluster.connection()
    inputs = f"in-{n}"
    put_many(cluster, inputs, n, 0)
    floors, jobs, p50s, p99s, python_jobs = [], [], [], [], []
    for r in range(rounds):
        floor, floor_cpu = cpu_during(cluster, put_many, cluster, f"floor-{n}-{r}", n, r + 1)
        floors.append(floor)
        (took, report), job_cpu = cpu_during(cluster, run_job, conn, inputs,
                                             f"swift://~/out-{n}-{r}/*")
        print(f"  CPU s by process: floor {floor_cpu}\n                    job   {job_cpu}")
        jobs.append(took)
        walls = sorted(t["wall_ms"] for t in report["tasks"])
        p50s.append(percentile(walls, 50))
        p99s.append(percentile(walls, 99))
        print(f"  N={n} round {r + 1}: floor {floors[-1]:.2f} s, job {took:.2f} s "
              f"({took / floors[-1]:.3f}x)", flush=True)
        if python:
            took_py, _report = run_job(conn, inputs, f"swift://~/py-out-{n}-{r}/*", "copy.py")
            python_jobs.append(took_py)
            print(f"  N={n} round {r + 1}: the same job with the Python guest {took_py:.2f} s "
                  f"({took_py / took:.2f}x the C guest's)", flush=True)
    gathered, report = run_job(conn, inputs, f"swift://~/gathered-{n}/all.txt")
    size = int(conn.head_object(f"gathered-{n}", "all.txt")["content-length"])
    assert size == n * SIZE, f"gathered output is {size} bytes, not {n * SIZE}"
    floor, job = statistics.median(floors), statistics.median(jobs)
    return {"tasks": n, "floor_s": floor, "job_s": job, "job_over_floor": job / floor,
            "tasks_per_s": n / job, "task_ms_per_task": job / n * 1000,
            "task_wall_p50_ms": statistics.median(p50s), "task_wall_p99_ms":
            statistics.median(p99s), "gathered_s": gathered,
            "gathered_tasks_per_s": n / gathered,
            "python_job_s": statistics.median(python_jobs) if python_jobs else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--python-sizes", type=int, nargs="*", default=[1000],
                        help="sizes at which the Python guest's job runs too")
    args = parser.parse_args(argv)
    with open(build_c_guest(COPY), "rb") as f:
        wasm = f.read()
    cluster = DevCluster(tempfile.mkdtemp(prefix="zc-bench-scale-"))
    cluster.start()
    results = []
    try:
        conn = cluster.connection()
        conn.put_container("apps")
        conn.put_object("apps", "copy.wasm", wasm)
        conn.put_object("apps", "copy.py", COPY_PY)
        conn.put_container("warm")
        for i in range(8):
            conn.put_object("warm", f"w{i}", b"warm\n")
        for exe in ("copy.wasm", "copy.py"):  # executables cached, executors up
            run_job(conn, "warm", f"swift://~/warm-out-{exe}/*", exe)
        for n in args.sizes:
            results.append(measure(cluster, n, args.rounds, n in args.python_sizes))
    finally:
        cluster.stop(wipe=True)
    print(f"map-only jobs of a trivial C guest over N objects of {SIZE} B; "
          f"4 object servers x 2 slots; {CONCURRENCY} in flight; medians of {args.rounds}")
    for r in results:
        print(f"  N={r['tasks']:>6}: job {r['job_s']:7.2f} s ({r['tasks_per_s']:6.1f} tasks/s, "
              f"task wall p50 {r['task_wall_p50_ms']:.0f} ms p99 {r['task_wall_p99_ms']:.0f} ms)"
              f"; write floor {r['floor_s']:7.2f} s; job / floor {r['job_over_floor']:.3f} "
              f"(target <= 1.15)")
        print(f"           gathered into one object: {r['gathered_s']:.2f} s, "
              f"{r['gathered_tasks_per_s']:.0f} tasks/s (target >= 300)")
        if r["python_job_s"] is not None:
            print(f"           the same job with a Python guest: {r['python_job_s']:.2f} s, "
                  f"{r['python_job_s'] / r['job_s']:.2f}x the C guest's (target <= 2)")
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            ratio = r["task_ms_per_task"] / base["task_ms_per_task"]
            print(f"  per-task cost at N={r['tasks']} / at N={base['tasks']}: {ratio:.3f} "
                  f"(target <= 1.2)")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
