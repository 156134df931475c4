"""Data-local compute against downloading the data: word count and grep, on several hosts.

Every server of the dev cluster runs in its own network namespace with a
1 Gbit/s link (``zerocompute.dev.hosts``; loopback, with a note, when that
needs root and is not available).  The same objects are processed three
ways, one after another in one run:

- **zerocompute**: a map-only job; each task runs beside its object;
- **client + wasm**: python-swiftclient downloads the objects (8 at a time)
  and the client runs the same ``.wasm`` under wasmtime on each;
- **client + Python**: the same downloads, processed by plain Python.

For each it prints the wall time and the bytes that crossed the proxy's link
per input byte (read from the link's counters), and the ratios between them.
Then a **scan** (grep for a string that is nowhere) against two floors: the
raw read rate of the same ``.data`` files, and the same guest run directly
over them with no Swift at all.  Every output is checked against the others.

    python -m tests.perf.bench_locality [--objects 48] [--mib 4] [--plot FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from zerocompute.client import submit_job
from zerocompute.dev.demo import count_words
from zerocompute.dev.devcluster import DevCluster
from zerocompute.dev.hosts import available
from zerocompute.guests import build_c_guest, source_path
from zerocompute.sandbox.wasm import GuestLimits, WasmRuntime
from zerocompute.wire import Limits

WORDS = ("storage compute swift object ring replica proxy account container partition "
         "wasm sandbox guest map reduce shuffle record key value node disk etag").split()
NEEDLE = "needle"  # in about one line in 1,000
ABSENT = "zzzz-nowhere"
WORKERS = 8


def make_object(number: int, size: int) -> bytes:
    """``size`` bytes of text lines, some with the needle; deterministic."""
    rng = __import__("random").Random(number)
    lines, total = [], 0
    while total < size:
        words = [rng.choice(WORDS) for _ in range(12)]
        if rng.random() < 0.001:
            words[rng.randrange(12)] = NEEDLE
        line = " ".join(words) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size].rsplit(b"\n", 1)[0] + b"\n"


class Links:
    """Bytes that crossed the proxy's link (several hosts) or None on loopback."""

    def __init__(self, cluster: DevCluster):
        self.cluster = cluster
        self.network = cluster.network
        self.proxy = [s.name for s in cluster.servers].index("proxy")

    def proxy_bytes(self) -> int | None:
        if self.network is None:
            return None
        return sum(self.network.link_bytes(self.proxy))


def timed(links: Links, run, *args: Any) -> tuple[float, int | None, Any]:
    before = links.proxy_bytes()
    started = time.perf_counter()
    result = run(*args)
    seconds = time.perf_counter() - started
    after = links.proxy_bytes()
    return seconds, None if before is None else after - before, result


# -- the three ways ---------------------------------------------------------------------
def by_zerocompute(conn, exec_name: str, args: list[str], output: str,
                   inputs: str = "swift://~/data/*") -> dict[str, bytes]:
    report = submit_job(conn, {"name": "bench", "map": {
        "exec": f"swift://~/apps/{exec_name}", "args": args, "inputs": [inputs]},
        "output": f"swift://~/{output}/*"})
    if report["status"] != "succeeded":
        raise SystemExit(f"zerocompute job failed: {report.get('error')}")
    return {"through_proxy": report["bytes"]["through_proxy"],
            "outputs": report["outputs"]}


def by_client(cluster: DevCluster, names: list[str], process) -> dict[str, bytes]:
    """Download every object (``WORKERS`` at once, a connection each) and process it."""
    local = threading.local()

    def one(name: str) -> tuple[str, bytes]:
        if not hasattr(local, "conn"):
            local.conn = cluster.connection()
        _headers, data = local.conn.get_object("data", name)
        return name, process(data)
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(pool.map(one, names))


class ClientWasm:
    """The guest under wasmtime on the client, as an object server would run it."""

    def __init__(self, wasm_path: str, args: list[str], work: str):
        self.runtime = WasmRuntime(os.path.join(work, "client-cache"))
        self.prepared = self.runtime.prepare(wasm_path)
        self.args = args
        self.limits = GuestLimits.from_task(Limits.from_dict({}))
        self.work = work

    def __call__(self, data: bytes) -> bytes:
        with tempfile.NamedTemporaryFile(dir=self.work) as stdin, \
                tempfile.NamedTemporaryFile(dir=self.work) as stdout:
            stdin.write(data)
            stdin.flush()
            result = self.runtime.run(self.prepared, stdin.name, stdout.name,
                                      ["guest", *self.args], [], self.limits)
            if not result.ok:
                raise SystemExit(f"client wasm failed: {result.error or result.exit}")
            return open(stdout.name, "rb").read()


def python_wordcount(data: bytes) -> bytes:
    """The guest's rule (``zerocompute.dev.demo.count_words``), in plain Python."""
    counts = count_words(data)
    return "".join(f"{w}\t{n}\n" for w, n in sorted(counts.items())).encode()


def python_grep(data: bytes) -> bytes:
    needle = NEEDLE.encode()
    return b"".join(line + b"\t1\n" for line in data.split(b"\n") if needle in line)


# -- the scan's floors ------------------------------------------------------------------
def data_files(cluster: DevCluster, names: list[str]) -> list[str]:
    """One replica's ``.data`` file per object (the first primary's)."""
    ring = cluster.object_ring()
    found = []
    for name in names:
        _part, nodes = ring.get_nodes("AUTH_test", "data", name)
        server = next(s for s in cluster.object_servers if s.port == nodes[0]["port"])
        root = os.path.join(cluster.device_path(server), nodes[0]["device"])
        found.extend(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                     if f.endswith(".data") and _holds(os.path.join(d, f), name))
    return found


def _holds(path: str, name: str) -> bool:
    from swift.obj.diskfile import read_metadata
    with open(path, "rb") as f:
        return read_metadata(f).get("name", "").endswith(f"/data/{name}")


def raw_read(paths: list[str]) -> float:
    """Seconds to read every file once, 1 MiB at a time, 2 at once (the cores)."""
    def read(path: str) -> int:
        total = 0
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
        return total
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(read, paths))
    return time.perf_counter() - started


def guest_alone(wasm: ClientWasm, paths: list[str]) -> float:
    """Seconds for the guest over every file, straight from disk, 2 at once: no Swift."""
    def run(path: str) -> None:
        with tempfile.NamedTemporaryFile(dir=wasm.work) as stdout:
            result = wasm.runtime.run(wasm.prepared, path, stdout.name,
                                      ["guest", *wasm.args], [], wasm.limits)
            assert result.ok, result
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, paths))
    return time.perf_counter() - started


# -- the run ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=48)
    parser.add_argument("--mib", type=float, default=4.0, help="size of each object")
    parser.add_argument("--rate", default="1gbit", help="tc rate of every link")
    parser.add_argument("--plot", help="write a bar chart (PNG) here (needs matplotlib)")
    args = parser.parse_args(argv)
    size = int(args.mib * (1 << 20))
    why = available()
    if why:
        print(f"note: {why}; measuring on loopback, without link counters", file=sys.stderr)
    work = tempfile.mkdtemp(prefix="zc-bench-locality-")
    cluster = DevCluster(os.path.join(work, "cluster"), hosts=why is None,
                         link_rate=args.rate).start()
    try:
        return run(cluster, work, args.objects, size, args.rate if why is None else None,
                   args.plot)
    finally:
        cluster.stop(wipe=True)


def run(cluster: DevCluster, work: str, objects: int, size: int, rate: str | None,
        plot: str | None) -> int:
    conn = cluster.connection()
    wordcount = build_c_guest(source_path("wordcount.c"))
    algorithms = build_c_guest(source_path("algorithms.c"))
    conn.put_container("apps")
    for path, name in ((wordcount, "wordcount.wasm"), (algorithms, "algorithms.wasm")):
        with open(path, "rb") as f:
            conn.put_object("apps", name, f.read())
    names = [f"part-{i:04d}" for i in range(objects)]
    conn.put_container("data")

    def put(name: str) -> None:
        cluster.connection().put_object("data", name, make_object(names.index(name), size))
    started = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(put, names))
    total = objects * size
    print(f"{objects} objects, {total / 2**20:.0f} MiB, uploaded in "
          f"{time.perf_counter() - started:.1f} s; "
          + (f"several hosts, every link {rate}" if rate else "loopback"))
    links = Links(cluster)
    rows: dict[str, dict[str, tuple[float, int | None]]] = {}
    workloads = [("wordcount", "wordcount.wasm", ["count"], wordcount, python_wordcount),
                 ("grep", "algorithms.wasm", ["grep-map", NEEDLE], algorithms, python_grep)]
    for label, exec_name, args, wasm_path, in_python in workloads:
        # Each side compiles the module once, outside the measurement: the client here,
        # every object server by a job over one object per server.
        client_wasm = ClientWasm(wasm_path, args, work)
        client_wasm(b"warm up\n")
        for server in range(len(cluster.object_servers) * 2):
            by_zerocompute(conn, exec_name, args, "warm-up", f"swift://~/data/{names[server]}")
        zc_s, zc_b, job = timed(links, by_zerocompute, conn, exec_name, args, f"out-{label}")
        cw_s, cw_b, cw_out = timed(links, by_client, cluster, names, client_wasm)
        cp_s, cp_b, cp_out = timed(links, by_client, cluster, names, in_python)
        check(conn, label, job["outputs"], cw_out, cp_out)
        rows[label] = {"zerocompute": (zc_s, zc_b), "client + wasm": (cw_s, cw_b),
                       "client + Python": (cp_s, cp_b)}
        print(f"\n{label} over {total / 2**20:.0f} MiB")
        for way, (seconds, crossed) in rows[label].items():
            share = "" if crossed is None else f", {100 * crossed / total:7.2f}% of the " \
                                               "input crossed the proxy's link"
            print(f"  {way:<16} {seconds:6.2f} s ({total / 2**20 / seconds:6.1f} MiB/s){share}")
        print(f"  client + wasm / zerocompute:   {cw_s / zc_s:.2f}x the wall time")
        print(f"  client + Python / zerocompute: {cp_s / zc_s:.2f}x the wall time")
        print(f"  through the proxy by the job's own count: {job['through_proxy']} bytes "
              f"({100 * job['through_proxy'] / total:.3f}%)")

    # A scan: every byte read and looked at, nothing written.
    scan = ClientWasm(algorithms, ["grep-map", ABSENT], work)
    scan(b"warm up\n")
    scan_s, _b, _job = timed(links, by_zerocompute, conn, "algorithms.wasm",
                             ["grep-map", ABSENT], "out-scan")
    paths = data_files(cluster, names)
    assert len(paths) == objects, (len(paths), objects)
    raw_s = raw_read(paths)
    alone_s = guest_alone(scan, paths)
    mib = total / 2**20
    print(f"\nscan of {mib:.0f} MiB: zerocompute {mib / scan_s:.0f} MiB/s; the same guest "
          f"over the .data files, no Swift: {mib / alone_s:.0f} MiB/s; raw read of the files: "
          f"{mib / raw_s:.0f} MiB/s")
    print(f"  zerocompute / guest alone: {alone_s / scan_s:.2f} of the compute floor; "
          f"/ raw read: {raw_s / scan_s:.3f} of the read floor")
    if plot:
        draw(rows, plot, mib, rate)
    return 0


def check(conn, label: str, job_outputs: list[str], wasm_out: dict, python_out: dict) -> None:
    """The three ways agree, object by object."""
    for output in job_outputs:
        container, name = output.split("/", 4)[3:5]
        data = conn.get_object(container, name)[1]
        if data != wasm_out[name] or data != python_out[name]:
            raise SystemExit(f"{label}: outputs differ for {name}")


def draw(rows: dict, path: str, mib: float, rate: str | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    ways = list(next(iter(rows.values())))
    for axis, (label, by_way) in zip(axes, rows.items(), strict=True):
        seconds = [by_way[w][0] for w in ways]
        axis.bar(ways, seconds, color=["#2a7", "#888", "#bbb"])
        axis.set_title(f"{label}, {mib:.0f} MiB" + (f", links {rate}" if rate else ""))
        axis.set_ylabel("wall time (s)")
        axis.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
