"""MapReduce benchmarks: word count over a large corpus, and named outputs.

Run from the repository: ``make bench-mapreduce`` (or ``.venv/bin/python -m
tests.perf.bench_mapreduce [--mib 256] [--events-mib 16]``).

One dev cluster (four object servers, two slots each).

1. Word count (the C guest) over ``--mib`` MiB of text in 8 MiB objects,
   with 4 reduce partitions, without and with a combiner: wall time, the
   bytes the maps kept for the shuffle (what the reducers fetch), and the
   bytes that passed through the proxy (the report's ``bytes.through_proxy``:
   task groups, executables, result frames and the outputs written) per input
   byte.
2. Day, month and year counts of ``--events-mib`` MiB of timestamped events:
   one job with three named outputs against three jobs, one per count: wall
   time and the input bytes the maps read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tests.functional.test_named_outputs import ONE_GRAIN, ONE_PASS, events
from zerocompute.client import submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest, source_path

OBJECT_MIB = 8
WORDS = [w.encode() for w in (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "storage compute swift object ring replica proxy account container partition wasm sandbox "
    "guest map reduce shuffle record key value node disk etag policy").split()]


def text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    # A Zipf-like mix: a few words are most of the text, as in real prose.
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    out, length = [], 0
    while length < size:
        line = b" ".join(rng.choices(WORDS, weights, k=12)) + b"\n"
        out.append(line)
        length += len(line)
    return b"".join(out)[:size].rsplit(b"\n", 1)[0] + b"\n"


def upload(cluster: DevCluster, container: str, bodies: dict[str, bytes]) -> None:
    url, token = cluster.connection().get_auth()
    conns = [cluster.connection(preauthurl=url, preauthtoken=token) for _ in range(4)]
    conns[0].put_container(container)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item: conns[hash(item[0]) % 4].put_object(container, *item),
                      bodies.items()))


def timed(cluster: DevCluster, conn, manifest: dict) -> tuple[float, int, dict]:
    started = time.perf_counter()
    report = submit_job(conn, manifest)
    took = time.perf_counter() - started
    if report["status"] != "succeeded":
        raise SystemExit(f"job failed: {json.dumps(report)[:3000]}")
    return took, report["bytes"]["through_proxy"], report


def word_count(cluster: DevCluster, conn, mib: int) -> dict:
    count = max(1, mib // OBJECT_MIB)
    upload(cluster, "corpus", {f"part-{i:04d}.txt": text(i, OBJECT_MIB << 20)
                               for i in range(count)})
    total = count * (OBJECT_MIB << 20)
    results = {}
    for combine in (False, True):
        manifest = {"name": "wc", "map": {"exec": "swift://~/apps/wc.wasm", "args": ["map"],
                                          "inputs": ["swift://~/corpus/*"]},
                    "reduce": {"exec": "swift://~/apps/wc.wasm", "args": ["reduce"],
                               "partitions": 4},
                    "output": f"swift://~/wc-out/{'combined' if combine else 'plain'}/",
                    "limits": {"time_s": 600, "cpu_s": 600}}
        if combine:
            manifest["combine"] = {"exec": "swift://~/apps/wc.wasm", "args": ["reduce"]}
        took, proxy_bytes, report = timed(cluster, conn, manifest)
        maps = [t for t in report["tasks"] if t["kind"] == "map"]
        results["with combiner" if combine else "without combiner"] = {
            "input_bytes": total, "wall_s": round(took, 2),
            "shuffle_bytes": sum(t["bytes_out"] for t in maps),
            "proxy_bytes": proxy_bytes, "proxy_bytes_per_input_byte": proxy_bytes / total,
            "map_ms_p50": sorted(t["wall_ms"] for t in maps)[len(maps) // 2]}
    return results


def named_outputs(cluster: DevCluster, conn, mib: int) -> dict:
    per_object = 1 << 20
    count = max(1, mib)
    lines_per_object = per_object // 30
    upload(cluster, "events", {f"log-{i:04d}": events(i, lines_per_object)
                               for i in range(count)})
    conn.put_object("apps", "one_pass.py", ONE_PASS)
    conn.put_object("apps", "one_grain.py", ONE_GRAIN)
    partitions = {"day": 3, "month": 2, "year": 1}
    # Warm: each script's first run on a node compiles its bytecode; time what comes after.
    upload(cluster, "warm", {"line": b"2026-01-01T00:00:00 get\n"})
    for script in ("one_pass.py", "one_grain.py"):
        for _ in range(3):
            timed(cluster, conn, {
                "map": {"exec": f"swift://~/apps/{script}", "args": ["map"],
                        "inputs": ["swift://~/warm/line"]},
                "reduce": {"exec": f"swift://~/apps/{script}", "args": ["reduce"],
                           "partitions": 4},
                "outputs" if script == "one_pass.py" else "output":
                    {g: f"swift://~/warm-out/{g}/" for g in partitions}
                    if script == "one_pass.py" else "swift://~/warm-out/grain/"})
    one = {"map": {"exec": "swift://~/apps/one_pass.py", "args": ["map"],
                   "inputs": ["swift://~/events/*"]},
           "reduce": {"exec": "swift://~/apps/one_pass.py", "args": ["reduce"]},
           "outputs": {g: {"output": f"swift://~/ev-one/{g}/",
                           "reduce": {"exec": "swift://~/apps/one_pass.py", "args": ["reduce"],
                                      "partitions": n}} for g, n in partitions.items()}}
    took_one, _, report = timed(cluster, conn, one)
    read_one = sum(t["bytes_in"] for t in report["tasks"] if t["kind"] == "map")
    took_three = read_three = 0
    for grain, cut in {"day": 10, "month": 7, "year": 4}.items():
        took, _, report = timed(cluster, conn, {
            "map": {"exec": "swift://~/apps/one_grain.py", "args": ["map"],
                    "env": {"CUT": str(cut)}, "inputs": ["swift://~/events/*"]},
            "reduce": {"exec": "swift://~/apps/one_grain.py", "args": ["reduce"],
                       "partitions": partitions[grain]},
            "output": f"swift://~/ev-three/{grain}/"})
        took_three += took
        read_three += sum(t["bytes_in"] for t in report["tasks"] if t["kind"] == "map")
    return {"one_job_s": round(took_one, 2), "three_jobs_s": round(took_three, 2),
            "one_job_read": read_one, "three_jobs_read": read_three,
            "bytes_ratio": read_three / read_one, "time_ratio": took_three / took_one}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--events-mib", type=int, default=16)
    args = parser.parse_args(argv)
    cluster = DevCluster(tempfile.mkdtemp(prefix="zc-bench-mr-")).start()
    try:
        conn = cluster.connection()
        conn.put_container("apps")
        with open(build_c_guest(source_path("wordcount.c")), "rb") as f:
            conn.put_object("apps", "wc.wasm", f.read())
        wc = word_count(cluster, conn, args.mib)
        named = named_outputs(cluster, conn, args.events_mib)
    finally:
        cluster.stop(wipe=True)
    print(f"word count over {args.mib} MiB, 4 partitions, 4 object servers x 2 slots:")
    for name, r in wc.items():
        print(f"  {name:<17} {r['wall_s']:7.1f} s  shuffle {r['shuffle_bytes'] / 2**20:8.2f} MiB"
              f"  proxy {r['proxy_bytes'] / 2**10:8.1f} KiB = "
              f"{100 * r['proxy_bytes_per_input_byte']:.3f} % of the input (target <= 1 %)")
    print(f"named outputs over {args.events_mib} MiB of events: one job {named['one_job_s']} s "
          f"reading {named['one_job_read'] / 2**20:.1f} MiB; three jobs {named['three_jobs_s']} s "
          f"reading {named['three_jobs_read'] / 2**20:.1f} MiB: {named['bytes_ratio']:.2f}x the "
          f"bytes (target >= 2.8), {named['time_ratio']:.2f}x the time")
    print(json.dumps({"word_count": wc, "named_outputs": named}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
