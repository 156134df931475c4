"""The demo: a word count over a small real corpus, on a fresh dev cluster.

It builds the C word-count guest to WASI, starts a dev cluster in a temporary
directory, uploads the corpus and the guest, runs a map-only job (one task
per text, each on an object server holding that text), adds up the per-text
counts, checks them against a plain-Python count, and stops the cluster.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import tempfile
from importlib import resources

from zerocompute.client import submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest, source_path

WORD = re.compile(rb"[A-Za-z0-9]+")


def count_words(data: bytes) -> collections.Counter:
    """The reference count: the guest's rule, in plain Python."""
    return collections.Counter(w.lower().decode("ascii") for w in WORD.findall(data))


def parse_counts(data: bytes) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for line in data.decode("utf-8").splitlines():
        word, _, n = line.partition("\t")
        counts[word] += int(n)
    return counts


def corpus() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("demo_corpus")
    return {item.name: item.read_bytes() for item in sorted(folder.iterdir(), key=str)
            if item.name.endswith(".txt")}


def run_demo(directory: str | None = None, keep: bool = False) -> int:
    print("building the word-count guest (C -> wasm32-wasi with zig cc) ...")
    wasm = build_c_guest(source_path("wordcount.c"))
    owned = directory is None
    directory = directory or tempfile.mkdtemp(prefix="zerocompute-demo-")
    cluster = DevCluster(directory)
    print(f"starting the dev cluster in {directory} ...")
    cluster.start()
    try:
        print(f"  auth {cluster.auth_url}, user test:tester, key testing")
        conn = cluster.connection()
        texts = corpus()
        conn.put_container("apps")
        with open(wasm, "rb") as f:
            conn.put_object("apps", "wordcount.wasm", f, content_type="application/wasm")
        conn.put_container("corpus")
        for name, data in texts.items():
            conn.put_object("corpus", name, data, content_type="text/plain")
        print(f"uploaded {len(texts)} texts to swift://AUTH_test/corpus/ and the guest "
              "to swift://AUTH_test/apps/wordcount.wasm")

        manifest = {
            "name": "wordcount",
            "map": {"exec": "swift://~/apps/wordcount.wasm", "args": ["count"],
                    "inputs": ["swift://~/corpus/*.txt"]},
            "output": "swift://~/results/*.counts",
        }
        report = submit_job(conn, manifest)
        print(f"\njob {report['job']}: {report['status']} in {report['ms']:.0f} ms")
        for task in report["tasks"]:
            where = "local" if task["local"] else "remote"
            print(f"  {task['input']:<55} -> {task['node']} ({where}), exit {task['exit']}, "
                  f"{task['bytes_in']} B in, {task['bytes_out']} B out, {task['ms']:.1f} ms")
        if report["status"] != "succeeded":
            print("the job failed")
            return 1

        totals: collections.Counter = collections.Counter()
        for output in report["outputs"]:
            container, obj = output.split("/", 4)[3:5]
            totals += parse_counts(conn.get_object(container, obj)[1])
        expected = count_words(b"\n".join(texts.values()))
        print(f"\n{sum(totals.values())} words, {len(totals)} distinct; the most common:")
        for word, n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:15]:
            print(f"  {word:<12} {n}")
        if totals != expected:
            print("MISMATCH: the job's counts differ from a plain-Python count")
            return 1
        print("\nthe counts equal a plain-Python count of the same corpus")
        return 0
    finally:
        if not keep:
            cluster.stop(wipe=True)
            if owned:
                shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"\nthe cluster keeps running; stop it with: "
                  f"zerocompute devcluster stop --dir {directory}")


def main() -> int:  # pragma: no cover - thin wrapper
    return run_demo(os.environ.get("ZEROCOMPUTE_DEMO_DIR"))
