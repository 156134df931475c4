"""The same word count over the same objects, replicated and erasure-coded (4+2).

One dev cluster in several-hosts mode (loopback, with a note, without root):
the objects are stored in ``gold`` (3 replicas) and in ``ec42``, and one
map-only word count runs over each, alternately, ``--rounds`` times.  It
prints wall time and the bytes that crossed the object servers' links per
input byte (from the links' counters), side by side, and their ratios.

    python -m tests.perf.bench_policies [--objects 32] [--mib 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tests.perf.bench_locality import make_object
from zerocompute.client import submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.dev.hosts import available
from zerocompute.guests import build_c_guest, source_path


def link_bytes(cluster: DevCluster) -> int | None:
    network = cluster.network
    if network is None:
        return None
    numbers = [i for i, s in enumerate(cluster.servers) if s.kind == "object"]
    return sum(sum(network.link_bytes(n)) for n in numbers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--mib", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    why = available()
    if why:
        print(f"note: {why}; measuring on loopback, without link counters", file=sys.stderr)
    work = tempfile.mkdtemp(prefix="zc-bench-policies-")
    cluster = DevCluster(os.path.join(work, "cluster"), hosts=why is None).start()
    try:
        return run(cluster, args.objects, int(args.mib * (1 << 20)), args.rounds)
    finally:
        cluster.stop(wipe=True)


def run(cluster: DevCluster, objects: int, size: int, rounds: int) -> int:
    conn = cluster.connection()
    conn.put_container("apps")
    with open(build_c_guest(source_path("wordcount.c")), "rb") as f:
        conn.put_object("apps", "wordcount.wasm", f.read())
    names = [f"part-{i:04d}" for i in range(objects)]
    for policy in ("gold", "ec42"):
        conn.put_container(policy, headers={"X-Storage-Policy": policy})

    def put(name: str) -> None:
        data = make_object(names.index(name), size)
        for policy in ("gold", "ec42"):
            cluster.connection().put_object(policy, name, data)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, names))
    total = objects * size
    results: dict[str, list[tuple[float, int | None, int]]] = {"gold": [], "ec42": []}
    for round_number in range(rounds + 1):  # round 0 warms the module caches up
        for policy in ("gold", "ec42"):
            before = link_bytes(cluster)
            started = time.perf_counter()
            report = submit_job(conn, {"map": {
                "exec": "swift://~/apps/wordcount.wasm", "args": ["count"],
                "inputs": [f"swift://~/{policy}/*"]},
                "output": f"swift://~/out-{policy}/all.txt"})
            seconds = time.perf_counter() - started
            after = link_bytes(cluster)
            if report["status"] != "succeeded":
                raise SystemExit(f"{policy}: {report.get('error')}")
            peer = sum(t["bytes_peer"] for t in report["tasks"])
            if round_number:
                results[policy].append((seconds, None if before is None else after - before,
                                        peer))
    if conn.get_object("out-gold", "all.txt")[1] != conn.get_object("out-ec42", "all.txt")[1]:
        raise SystemExit("the outputs differ")
    print(f"word count over {objects} objects, {total / 2**20:.0f} MiB; medians of {rounds}")
    summary = {}
    for policy, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        crossed = None if runs[0][1] is None else statistics.median(r[1] for r in runs)
        peer = runs[0][2]
        summary[policy] = (seconds, crossed)
        links = "" if crossed is None else \
            f", {100 * crossed / total:6.2f}% of the input crossed object servers' links"
        print(f"  {policy:<5} {seconds:6.2f} s ({total / 2**20 / seconds:6.1f} MiB/s), "
              f"fetched from peers {100 * peer / total:6.2f}%{links}")
    print(f"  ec42 / gold: {summary['ec42'][0] / summary['gold'][0]:.2f}x the wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
