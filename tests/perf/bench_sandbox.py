"""Sandbox benchmark: guest start-to-exit times and the overhead of the sandbox.

Run from the repository: ``make bench-sandbox`` (or
``.venv/bin/python -m tests.perf.bench_sandbox``).  It starts its own dev
cluster, so nothing else should run on the machine; the numbers that matter
are the ratios printed side by side, measured in this one run.

1. A trivial native guest (C ``int main(void) { return 0; }``, zig cc to
   wasm32-wasi) over many one-line objects, on warm object servers (every
   server has run the job once: executable cached, executors started).
   Guest start-to-exit is the ``ms`` of each task in the job report: from
   the store's creation in the executor to the guest's exit.
2. The same for a trivial Python guest (a script that does nothing, run
   through the guest SDK by CPython for WASI).
3. A 16 MiB text object counted by the C word-count guest, compared with
   the same C program compiled natively by the same compiler, on the same
   bytes: how much of the task's time the sandbox costs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time

from zerocompute.client import submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest, source_path

TRIVIAL_C = "int main(void) { return 0; }\n"
TRIVIAL_PY = b"# does nothing: measures the Python guest's start and exit\n"
WORDS = ("storage compute object ring replica proxy container partition sandbox guest "
         "record value etag policy node swift wasm map reduce shuffle").split()


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def text_of_size(size: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    line = " ".join(rng.choice(WORDS) for _ in range(12)).encode() + b"\n"
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)).encode() + b"\n"
             for _ in range(4096)]
    block = b"".join(lines)
    return (block * (size // len(block) + 1))[:size - len(line)] + line


def run_job(conn, exe: str, inputs: str, output: str, args=()) -> dict:
    report = submit_job(conn, {"name": "bench", "map": {"exec": exe, "args": list(args),
                                                         "inputs": [inputs]},
                               "output": output})
    if report["status"] != "succeeded":
        raise SystemExit(f"benchmark job failed: {json.dumps(report)[:2000]}")
    return report


def startup(conn, exe: str, tasks: int, label: str) -> dict:
    """Start-to-exit of ``tasks`` guests, one task at a time, then all at once."""
    run_job(conn, exe, "swift://~/bench-warm/*", f"swift://~/bench-out/{label}-warm/*")
    alone = [run_job(conn, exe, f"swift://~/bench-in/o{i:05d}",
                     f"swift://~/bench-out/{label}-alone-{i}")["tasks"][0]["ms"]
             for i in range(tasks)]
    report = run_job(conn, exe, "swift://~/bench-in/*", f"swift://~/bench-out/{label}/*")
    busy = [t["ms"] for t in report["tasks"]]
    return {"tasks": tasks, "p50_ms": statistics.median(alone), "p90_ms": percentile(alone, 90),
            "min_ms": min(alone), "busy_p50_ms": statistics.median(busy),
            "busy_p90_ms": percentile(busy, 90),
            "busy_tasks_per_s": len(busy) / report["ms"] * 1000}


def native_run_ms(binary: str, path: str, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        with open(path, "rb") as stdin:
            started = time.perf_counter()
            subprocess.run([binary, "count"], stdin=stdin, stdout=subprocess.DEVNULL, check=True)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=240, help="tasks per startup measurement")
    parser.add_argument("--big-mib", type=int, default=16)
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="zerocompute-bench-")
    with open(f"{work}/trivial.c", "w") as f:
        f.write(TRIVIAL_C)
    trivial_wasm = build_c_guest(f"{work}/trivial.c")
    wordcount_wasm = build_c_guest(source_path("wordcount.c"))
    wordcount_native = build_c_guest(source_path("wordcount.c"), target="native")

    cluster = DevCluster(f"{work}/cluster").start()
    try:
        conn = cluster.connection()
        for container in ("bench-apps", "bench-in", "bench-warm", "bench-big", "bench-out"):
            conn.put_container(container)
        for name, path in (("trivial.wasm", trivial_wasm), ("wordcount.wasm", wordcount_wasm)):
            with open(path, "rb") as f:
                conn.put_object("bench-apps", name, f.read())
        conn.put_object("bench-apps", "trivial.py", TRIVIAL_PY)
        for i in range(args.tasks):
            conn.put_object("bench-in", f"o{i:05d}", b"x\n")
        for i in range(24):
            conn.put_object("bench-warm", f"o{i:05d}", b"x\n")
        big = text_of_size(args.big_mib * 1024 * 1024)
        conn.put_object("bench-big", "big.txt", big)
        big_path = f"{work}/big.txt"
        with open(big_path, "wb") as f:
            f.write(big)

        native = startup(conn, "swift://~/bench-apps/trivial.wasm", args.tasks, "native")
        python = startup(conn, "swift://~/bench-apps/trivial.py", args.tasks, "python")

        exe = "swift://~/bench-apps/wordcount.wasm"
        run_job(conn, exe, "swift://~/bench-big/big.txt", "swift://~/bench-out/big-warm",
                ["count"])
        runs = [run_job(conn, exe, "swift://~/bench-big/big.txt",
                        f"swift://~/bench-out/big-{i}", ["count"]) for i in range(5)]
        guest_ms = statistics.median(r["tasks"][0]["ms"] for r in runs)
        job_ms = statistics.median(r["ms"] for r in runs)
        native_ms = native_run_ms(wordcount_native, big_path)
        start_ms = native["p50_ms"]
        big_result = {
            "input_mib": args.big_mib,
            "native_ms": native_ms,
            "guest_ms": guest_ms,
            "job_ms": job_ms,
            "start_share": start_ms / guest_ms,
            "sandbox_share": max(0.0, guest_ms - native_ms) / guest_ms,
            "wasm_over_native": guest_ms / native_ms,
            "dispatch_share": (job_ms - guest_ms) / job_ms,
        }
    finally:
        cluster.stop(wipe=True)

    for label, r, target in (("native", native, "p50 <= 1 ms"),
                             ("Python", python, "p50 <= 40 ms")):
        print(f"trivial {label} guest, start to exit on a warm server, {r['tasks']} tasks one at "
              f"a time: p50 {r['p50_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms (target {target}); "
              f"all at once in one job: p50 {r['busy_p50_ms']:.3f} ms, "
              f"{r['busy_tasks_per_s']:.0f} tasks/s")
    b = big_result
    print(f"word count of {b['input_mib']} MiB: native {b['native_ms']:.0f} ms, in the sandbox "
          f"{b['guest_ms']:.0f} ms (x{b['wasm_over_native']:.2f}), whole one-task job "
          f"{b['job_ms']:.0f} ms")
    print(f"  sandbox overhead share of the guest's time: {b['sandbox_share']:.1%} "
          f"(of which starting the guest: {b['start_share']:.2%}); dispatch and output "
          f"write share of the job: {b['dispatch_share']:.1%}")
    print(json.dumps({"native": native, "python": python, "big": big_result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
