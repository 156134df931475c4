"""MapReduce benchmarks: word count against its floors and what a user would do instead,
TeraSort against the PUT of the same bytes, and named outputs.

Run from the repository: ``make bench-mapreduce`` (or ``.venv/bin/python -m
tests.perf.bench_mapreduce [--mib 128 256] [--records 1000000 10000000]
[--rounds 2] [--no-lithops] [--no-python] [--events-mib 16] [--equal-priority]
[--object-option KEY=VALUE]``).  Everything runs on one dev
cluster (four object servers of two slots, on this machine's two cores);
each measurement is the best of ``--rounds``, the rounds interleaved.

1. **Word count** over ``--mib`` MiB of real text (the Python standard
   library's sources, cut into 8 MiB objects, repeated as needed), 4 reduce
   partitions, every result checked against a plain count:

   - the C scan floor: a map-only job whose guest (``wordcount scan``)
     reads and splits every word and writes no records;
   - word count MapReduce in C (``wordcount.c``), without and with a
     combiner (the combiner is the same program: its map folds in memory);
   - the Python scan floor: a map-only Python guest that reads and splits
     every object (``bytes.split``), the Python SDK's word count
     (``wordcount.py``, no ``args``) with its combiner, and the same script
     in a map-only job (each object counted whole in its task, no shuffle:
     what the guest's own Python costs);
   - downloading every object with python-swiftclient (8 threads) and
     counting with ``collections.Counter``;
   - Lithops 3.8 (``backend: localhost``, ``storage: swift``, in a virtual
     environment of its own, made on first use): ``map_reduce`` with
     Counters.

   Each MapReduce job's report splits its time by phase (guests, and the
   shuffle's steps).
2. **TeraSort**: ``--records`` records in gensort's ASCII form
   (``zerocompute.dev.terasort``), in 16 objects, PUT through the proxy (the
   floor, timed), sorted by a job with 8 range partitions (``terasort.c``),
   then checked as valsort does: parts in order sorted, every record once
   (count and checksum), the largest part over the mean.  ``--rounds`` times,
   the PUT and the job side by side each time; the best of each.
3. **Named outputs**: day, month and year counts of ``--events-mib`` MiB of
   events, one job with three named outputs against three jobs.
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.functional.test_named_outputs import ONE_GRAIN, ONE_PASS, events
from zerocompute.client import submit_job
from zerocompute.dev import terasort
from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest, source_path
from zerocompute.sandbox.priority import AT_THE_SERVERS_PRIORITY

OBJECT_MIB = 8
PARTITIONS = 4
WORD = re.compile(rb"[A-Za-z0-9]+")
LITHOPS = "lithops==3.8.0"
LITHOPS_VENV = os.path.join(os.path.expanduser("~"), ".cache", "zerocompute", "lithops-venv")
# The Python scan floor: read every byte and split it into words, in C (bytes.split),
# as cheaply as Python can; the SDK's word count does the same and then its own per-word
# Python (its map yields a pair per word).
PYTHON_SCAN = b"""import sys
sys.stdout.write(f"{len(sys.stdin.buffer.read().split())}\\n")
"""


# -- the corpus ----------------------------------------------------------------------------
def stdlib_text() -> bytes:
    """Real text: the sources of Python's standard library, as every machine has them."""
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "site-packages" not in p and f"{os.sep}test" not in p)
    parts = []
    for path in paths:
        with open(path, "rb") as f:
            parts.append(f.read())
    return b"".join(parts)


def corpus_objects(mib: int) -> dict[str, bytes]:
    """``mib`` MiB of text in objects of 8 MiB, each cut at a line's end."""
    text = stdlib_text()
    objects, at = {}, 0
    for number in range(max(1, mib // OBJECT_MIB)):
        chunk = b""
        while len(chunk) < OBJECT_MIB << 20:
            piece = text[at:at + (OBJECT_MIB << 20) - len(chunk)]
            at = (at + len(piece)) % len(text)
            chunk += piece
        objects[f"part-{number:04d}.txt"] = chunk.rsplit(b"\n", 1)[0] + b"\n"
    return objects


def counted(data: bytes) -> collections.Counter:
    return collections.Counter(WORD.findall(data.lower()))


def digest(counts: collections.Counter) -> str:
    body = "\n".join(f"{w.decode() if isinstance(w, bytes) else w}\t{n}"
                     for w, n in sorted(counts.items()))
    return hashlib.sha256(body.encode()).hexdigest()


def upload(cluster: DevCluster, container: str, bodies: dict[str, bytes],
           threads: int = 4) -> float:
    """PUT every body through the proxy, ``threads`` at a time; the seconds it took."""
    url, token = cluster.connection().get_auth()
    conns = [cluster.connection(preauthurl=url, preauthtoken=token) for _ in range(threads)]
    conns[0].put_container(container)
    names = sorted(bodies)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda n: conns[names.index(n) % threads].put_object(
            container, n, bodies[n]), names))
    return time.perf_counter() - started


# -- ways to count the words -----------------------------------------------------------------
def run_job(conn, manifest: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    report = submit_job(conn, manifest)
    took = time.perf_counter() - started
    if report["status"] != "succeeded":
        raise SystemExit(f"job failed: {json.dumps(report)[:3000]}")
    return took, report


def parts_counts(conn, container: str, prefix: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for number in range(PARTITIONS):
        for line in conn.get_object(container, f"{prefix}part-{number:05d}")[1].splitlines():
            word, count = line.split(b"\t")
            counts[word] += int(count)
    return counts


def word_count_ways(cluster: DevCluster, conn, names: list[str]) -> dict[str, Any]:
    """Each way to count, as a function: its wall time, its counts, its report."""
    inputs = ["swift://~/corpus/*.txt"]

    def c_scan():
        took, report = run_job(conn, {"name": "c-scan", "map": {
            "exec": "swift://~/apps/wc.wasm", "args": ["scan"], "inputs": inputs},
            "output": "swift://~/scan-out/*.n"})
        words = sum(int(conn.get_object("scan-out", f"{n[:-4]}.n")[1]) for n in names)
        return took, {"words": words}, report

    def c_mapreduce(combine: bool):
        def run():
            manifest = {"name": f"c-wc-{combine}",
                        "map": {"exec": "swift://~/apps/wc.wasm", "args": ["map"],
                                "inputs": inputs},
                        "reduce": {"exec": "swift://~/apps/wc.wasm", "args": ["reduce"],
                                   "partitions": PARTITIONS},
                        "output": f"swift://~/wc-out/c-{combine}/",
                        "limits": {"time_s": 600, "cpu_s": 600}}
            if combine:
                manifest["combine"] = {"exec": "swift://~/apps/wc.wasm", "args": ["reduce"]}
            took, report = run_job(conn, manifest)
            return took, parts_counts(conn, "wc-out", f"c-{combine}/"), report
        return run

    def python_scan():
        took, report = run_job(conn, {"name": "py-scan", "map": {
            "exec": "swift://~/apps/scan.py", "inputs": inputs},
            "output": "swift://~/pyscan-out/*.n", "limits": {"time_s": 600, "cpu_s": 600}})
        split = sum(int(conn.get_object("pyscan-out", f"{n[:-4]}.n")[1]) for n in names)
        return took, {"words": split}, report

    def python_mapreduce():
        exe = "swift://~/apps/wc.py"
        took, report = run_job(conn, {
            "name": "py-wc", "map": {"exec": exe, "inputs": inputs},
            "combine": {"exec": exe}, "reduce": {"exec": exe, "partitions": PARTITIONS},
            "output": "swift://~/wc-out/py/", "limits": {"time_s": 900, "cpu_s": 900}})
        return took, parts_counts(conn, "wc-out", "py/"), report

    def python_local():
        took, report = run_job(conn, {
            "name": "py-local", "map": {"exec": "swift://~/apps/wc.py", "inputs": inputs},
            "output": "swift://~/pylocal-out/*.counts", "limits": {"time_s": 900, "cpu_s": 900}})
        total: collections.Counter = collections.Counter()
        for name in names:
            for line in conn.get_object("pylocal-out", f"{name[:-4]}.counts")[1].splitlines():
                word, count = line.split(b"\t")
                total[word] += int(count)
        return took, total, report

    def download():
        url, token = conn.get_auth()
        conns = [cluster.connection(preauthurl=url, preauthtoken=token) for _ in range(8)]
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            counters = list(pool.map(lambda i: counted(conns[i % 8].get_object(
                "corpus", names[i])[1]), range(len(names))))
        total: collections.Counter = collections.Counter()
        for one in counters:
            total.update(one)
        return time.perf_counter() - started, total, None

    return {"C scan floor": c_scan, "C word count": c_mapreduce(False),
            "C word count + combiner": c_mapreduce(True), "Python scan floor": python_scan,
            "Python SDK + combiner": python_mapreduce, "Python SDK, map-only": python_local,
            "download + Counter": download}


def lithops_python() -> str:
    """The interpreter of a virtual environment with Lithops (made once)."""
    python = os.path.join(LITHOPS_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", LITHOPS_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", LITHOPS], check=True)
    return python


def by_lithops(conn, names: list[str], work: str) -> tuple[float, dict]:
    url, token = conn.get_auth()
    job = json.dumps({"token": token, "storage_url": url, "container": "corpus",
                      "objects": names, "workdir": work})
    done = subprocess.run([lithops_python(), os.path.join(os.path.dirname(__file__),
                                                          "lithops_wordcount.py")],
                          input=job, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"lithops failed: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["wall_s"], result


def word_count(cluster: DevCluster, conn, mib: int, rounds: int, lithops: bool,
               work: str, python: bool = True) -> dict[str, Any]:
    objects = corpus_objects(mib)
    for name in list(conn.get_container("corpus")[1] if _exists(conn, "corpus") else []):
        conn.delete_object("corpus", name["name"])
    upload(cluster, "corpus", objects)
    names = sorted(objects)
    expected: collections.Counter = collections.Counter()
    for data in objects.values():
        expected.update(counted(data))
    words = sum(expected.values())
    ways = word_count_ways(cluster, conn, names)
    if not python:
        ways = {name: way for name, way in ways.items() if not name.startswith("Python")}
    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for name, way in ways.items():
            took, counts, report = way()
            if name == "Python scan floor":  # whitespace-separated: its own count
                ok = counts["words"] == sum(len(d.split()) for d in objects.values())
            elif isinstance(counts, dict) and "words" in counts:
                ok = counts["words"] == words
            else:
                ok = digest(counts) == digest(expected)
            if not ok:
                raise SystemExit(f"{name} counted wrong")
            if name not in best or took < best[name]["wall_s"]:
                best[name] = {"wall_s": round(took, 3),
                              "phases": report.get("phases") if report else None}
        if lithops:
            took, result = by_lithops(conn, names, work)
            if result["digest"] != digest(expected):
                raise SystemExit("Lithops counted wrong")
            if "Lithops" not in best or took < best["Lithops"]["wall_s"]:
                best["Lithops"] = {"wall_s": round(took, 3), "phases": None}
    return {"mib": mib, "objects": len(names), "words": words, "distinct": len(expected),
            "ways": best}


def _exists(conn, container: str) -> bool:
    try:
        conn.head_container(container)
        return True
    except Exception:  # noqa: BLE001 - swiftclient's 404
        return False


# -- TeraSort ---------------------------------------------------------------------------------
def tera_sort(cluster: DevCluster, conn, records: int, rounds: int) -> dict[str, Any]:
    # Warm: the first job on each node compiles the guest and the core (once per host).
    upload(cluster, "tera-warm", {f"in-{n}": terasort.gensort(n * 100, 100) for n in range(8)})
    run_job(conn, {"map": {"exec": "swift://~/apps/terasort.wasm", "args": ["map"],
                           "inputs": ["swift://~/tera-warm/in-*"]},
                   "reduce": {"exec": "swift://~/apps/terasort.wasm", "args": ["reduce"],
                              "partitions": 8, "partitioner": "range"},
                   "output": "swift://~/tera-warm-sorted/"})
    objects = 16
    per = records // objects
    bodies, checksum = {}, 0
    for number in range(objects):
        data = terasort.gensort(number * per, per, seed=records)
        bodies[f"in-{number:02d}"] = data
        checksum = (checksum + terasort.checksum(data)) % (1 << 64)
    size = sum(len(b) for b in bodies.values())
    # Each round PUTs the records into a container of its own and sorts them from
    # there, the PUT and the job side by side: the first PUTs into a fresh cluster
    # cost less than later ones, so one PUT alone is no fair floor.
    best: dict[str, Any] = {}
    for number in range(rounds):
        container = f"tera-{records}-{number}"
        put_s = upload(cluster, container, bodies)
        took, report = run_job(conn, {
            "name": f"terasort-{records}-{number}",
            "map": {"exec": "swift://~/apps/terasort.wasm", "args": ["map"],
                    "inputs": [f"swift://~/{container}/in-*"]},
            "reduce": {"exec": "swift://~/apps/terasort.wasm", "args": ["reduce"],
                       "partitions": 8, "partitioner": "range"},
            "output": f"swift://~/{container}-sorted/",
            "limits": {"time_s": 1200, "cpu_s": 1200, "output_mb": 4096}})
        parts = [conn.get_object(f"{container}-sorted", f"part-{n:05d}")[1] for n in range(8)]
        check = terasort.valsort(parts)
        if not check.sorted or check.records != per * objects or check.checksum != checksum:
            raise SystemExit(f"TeraSort of {records} records is wrong: {check}")
        sizes = [len(p) // terasort.RECORD_BYTES for p in parts]
        del parts
        for where in (container, f"{container}-sorted"):
            for name in conn.get_container(where, full_listing=True)[1]:
                conn.delete_object(where, name["name"])
        print(f"  TeraSort {records:,} round {number + 1}: PUT {put_s:.2f} s, "
              f"job {took:.2f} s = {took / put_s:.2f}x", flush=True)
        if not best or put_s < best["put_s"]:
            best["put_s"] = round(put_s, 3)
        if "job_s" not in best or took < best["job_s"]:
            best.update(job_s=round(took, 3), phases=report["phases"],
                        largest_part_over_mean=round(max(sizes) / (sum(sizes) / len(sizes)), 3))
    return {"records": per * objects, "bytes": size, "rounds": rounds,
            "job_over_put": round(best["job_s"] / best["put_s"], 3), **best}


# -- named outputs ------------------------------------------------------------------------------
def named_outputs(cluster: DevCluster, conn, mib: int) -> dict:
    per_object = 1 << 20
    count = max(1, mib)
    lines_per_object = per_object // 30
    upload(cluster, "events", {f"log-{i:04d}": events(i, lines_per_object)
                               for i in range(count)})
    conn.put_object("apps", "one_pass.py", ONE_PASS)
    conn.put_object("apps", "one_grain.py", ONE_GRAIN)
    partitions = {"day": 3, "month": 2, "year": 1}
    one = {"map": {"exec": "swift://~/apps/one_pass.py", "args": ["map"],
                   "inputs": ["swift://~/events/*"]},
           "reduce": {"exec": "swift://~/apps/one_pass.py", "args": ["reduce"]},
           "outputs": {g: {"output": f"swift://~/ev-one/{g}/",
                           "reduce": {"exec": "swift://~/apps/one_pass.py", "args": ["reduce"],
                                      "partitions": n}} for g, n in partitions.items()}}
    run_job(conn, one)  # warm: each script's first run on a node compiles its bytecode
    took_one, report = run_job(conn, one)
    read_one = sum(t["bytes_in"] for t in report["tasks"] if t["kind"] == "map")
    took_three = read_three = 0
    for grain, cut in {"day": 10, "month": 7, "year": 4}.items():
        took, report = run_job(conn, {
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


# -- printing ------------------------------------------------------------------------------
def phase_split(phases: dict | None) -> str:
    if not phases:
        return ""
    parts = []
    for kind, phase in phases.items():
        guest = phase["guest"]["cpu_ms"] / 1000
        shuffle = sum(s["cpu_ms"] for s in phase["shuffle"].values()) / 1000
        parts.append(f"{kind}: guests {guest:.2f} s CPU, shuffle {shuffle:.2f} s CPU")
    return "; ".join(parts)


def print_word_count(result: dict) -> None:
    ways = result["ways"]
    print(f"\nword count, {result['mib']} MiB ({result['objects']} objects, "
          f"{result['words']:,} words, {result['distinct']:,} distinct), {PARTITIONS} "
          f"partitions, best of the rounds:")
    for name, way in ways.items():
        print(f"  {name:<26} {way['wall_s']:7.2f} s  {phase_split(way['phases'])}")

    def ratio(a: str, b: str) -> str:
        return f"{ways[a]['wall_s'] / ways[b]['wall_s']:.2f}" if a in ways and b in ways else "-"
    print("  C + combiner / C scan floor:        "
          f"{ratio('C word count + combiner', 'C scan floor')} (target <= 2)")
    print(f"  C, no combiner / C scan floor:      {ratio('C word count', 'C scan floor')}"
          " (target <= 6)")
    print(f"  C + combiner / download + Counter:  "
          f"{ratio('C word count + combiner', 'download + Counter')} (target < 1)")
    print(f"  C + combiner / Lithops:             {ratio('C word count + combiner', 'Lithops')}"
          " (target < 1)")
    print(f"  Python + combiner / Python floor:   "
          f"{ratio('Python SDK + combiner', 'Python scan floor')} (target <= 2)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="*", default=[128, 256])
    parser.add_argument("--records", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events-mib", type=int, default=16)
    parser.add_argument("--no-lithops", action="store_true")
    parser.add_argument("--no-python", action="store_true",
                        help="skip the Python guests (minutes: CPython in WebAssembly)")
    parser.add_argument("--equal-priority", action="store_true",
                        help="guests at the servers' priority, not below (doc/sandbox.md)")
    parser.add_argument("--object-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the object servers' [filter:zerocompute_object]")
    args = parser.parse_args(argv)
    options = dict(AT_THE_SERVERS_PRIORITY) if args.equal_priority else {}
    options.update(option.split("=", 1) for option in args.object_option)
    work = tempfile.mkdtemp(prefix="zc-bench-mr-")
    cluster = DevCluster(os.path.join(work, "cluster"), object_options=options).start()
    results: dict[str, Any] = {"word_count": [], "terasort": []}
    try:
        conn = cluster.connection()
        conn.put_container("apps")
        for name, source in (("wc.wasm", "wordcount.c"), ("terasort.wasm", "terasort.c")):
            with open(build_c_guest(source_path(source)), "rb") as f:
                conn.put_object("apps", name, f.read())
        with open(source_path("wordcount.py"), "rb") as f:
            conn.put_object("apps", "wc.py", f.read())
        conn.put_object("apps", "scan.py", PYTHON_SCAN)
        for mib in args.mib:
            results["word_count"].append(word_count(cluster, conn, mib, args.rounds,
                                                    not args.no_lithops, work,
                                                    not args.no_python))
            print_word_count(results["word_count"][-1])
        for records in args.records:
            tera = tera_sort(cluster, conn, records, args.rounds)
            results["terasort"].append(tera)
            print(f"\nTeraSort, {tera['records']:,} records ({tera['bytes'] / 2**20:.0f} MiB), "
                  f"8 range partitions, best of {tera['rounds']}: PUT {tera['put_s']:.2f} s, "
                  f"job {tera['job_s']:.2f} s = "
                  f"{tera['job_over_put']:.2f}x the PUT (target <= 2.5); largest part "
                  f"{tera['largest_part_over_mean']:.2f}x the mean (target <= 1.3); sorted, "
                  f"every record once (count, checksum); {phase_split(tera['phases'])}")
        if args.events_mib:
            named = results["named_outputs"] = named_outputs(cluster, conn, args.events_mib)
            print(f"\nnamed outputs over {args.events_mib} MiB of events: one job "
                  f"{named['one_job_s']} s reading {named['one_job_read'] / 2**20:.1f} MiB; "
                  f"three jobs {named['three_jobs_s']} s reading "
                  f"{named['three_jobs_read'] / 2**20:.1f} MiB: {named['bytes_ratio']:.2f}x "
                  f"the bytes (target >= 2.8), {named['time_ratio']:.2f}x the time")
    finally:
        cluster.stop(wipe=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(argv=None))
