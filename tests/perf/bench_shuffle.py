"""The shuffle's options, measured side by side on one map output and one reduce input.

Run from the repository: ``.venv/bin/python -m tests.perf.bench_shuffle [--mib 8]``.

The map output is a word count's (``word<TAB>1`` per word) of ``--mib`` MiB of the
benchmark corpus (``tests.perf.bench_mapreduce``); the reduce input is one
partition of 16 such maps.  Each option does the same work (parse, partition
by CRC32 into 4, sort, write; merge 16 sorted runs into the reducer's input):

- the pure-Python shuffle the executors ran before (``tests/reference_shuffle.py``),
- the shuffle core compiled to WebAssembly, run by wasmtime as the executors
  run it (``zerocompute.sandbox.shuffle_core``),
- the same C compiled natively (``cc -O2``): what the work costs without the
  sandbox, the floor for compiled code.

It prints the CPU time per record of each and the ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from tests import reference_shuffle as ref
from tests.perf.bench_mapreduce import corpus_objects
from zerocompute.sandbox import shuffle_io
from zerocompute.sandbox.shuffle_core import SOURCE, Core, layout
from zerocompute.sandbox.wasm import GuestLimits, WasmRuntime
from zerocompute.wire import ShuffleSpec

WORD = re.compile(rb"[A-Za-z0-9]+")
PARTITIONS = 4


def cpu(run) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


def native_core(work: str) -> str:
    binary = os.path.join(work, "shuffle_core-native")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return ""
    subprocess.run([compiler, "-O2", "-o", binary, SOURCE], check=True)
    return binary


def native_dirs(scratch: str | None, out: str | None) -> bool:
    """The native build reads and writes /s and /o as the sandboxed one sees them:
    symlinks to the two directories (None: remove them).  Whether they are there."""
    for name, target in (("/s", scratch), ("/o", out)):
        try:
            if os.path.islink(name):
                os.unlink(name)
            if target is not None:
                os.symlink(target, name)
        except OSError:
            return False
    return scratch is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=8)
    args = parser.parse_args(argv)
    text = corpus_objects(args.mib)["part-0000.txt"]
    output = b"".join(w.lower() + b"\t1\n" for w in WORD.findall(text))
    records = output.count(b"\n")
    work = tempfile.mkdtemp(prefix="zc-bench-shuffle-")
    cache = os.path.join(work, "cache")
    os.makedirs(os.path.join(cache, "scratch"))
    runtime = WasmRuntime(cache)
    spec = ShuffleSpec(id="bench", partitions=PARTITIONS)

    def python_map() -> None:
        p = ref.Partitioner(os.path.join(work, "py"), PARTITIONS, memory_bytes=64 << 20)
        with open(os.path.join(work, "map-output"), "rb") as f:
            p.add_all(ref.read_records(f))
        p.finish()

    def wasm_map(scratch: str, out: str) -> None:
        core = Core(runtime, cache, spec, scratch, out, GuestLimits(time_s=600))
        shuffle_io.partition_output(core, None)

    with open(os.path.join(work, "map-output"), "wb") as f:
        f.write(output)
    scratch, out = os.path.join(work, "s"), os.path.join(work, "o")
    os.makedirs(scratch)
    os.makedirs(out)
    shutil.copy(os.path.join(work, "map-output"), os.path.join(scratch, "map-output"))
    wasm_map(scratch, out)  # warm: compiles the module once
    times = {"Python (before)": cpu(python_map),
             "WebAssembly core": cpu(lambda: wasm_map(scratch, out))}
    binary = native_core(work)
    if binary and native_dirs(scratch, out):
        before = os.times()  # the child's CPU: its rusage, not this process's
        subprocess.run([binary, "sort", "/s/map-output", "--parts"], check=True,
                       stdout=subprocess.DEVNULL)
        after = os.times()
        times["native C (floor)"] = (after.children_user - before.children_user
                                     + after.children_system - before.children_system)
        native_dirs(None, None)

    # The reduce side: 16 sorted runs of partition 0 merged into the reducer's input.
    with open(os.path.join(out, "part-00000"), "rb") as f:
        run_bytes = f.read()
    reduce_scratch = os.path.join(work, "r")
    os.makedirs(reduce_scratch)
    text_layout, _ = layout(spec)
    runs = [run_bytes] * 16
    py_runs = []
    for number, data in enumerate(runs):
        path = os.path.join(work, f"py-run-{number}")
        with open(path, "wb") as f:
            for key, value in _internal(data):
                f.write(key + b"\t" + value + b"\n")
        py_runs.append(path)

    def python_reduce() -> None:
        files = [open(p, "rb") for p in py_runs]  # noqa: SIM115 - closed below
        with open(os.path.join(work, "py-input"), "wb") as out_file:
            ref.write_records(out_file, ref.merge_sorted(ref.read_records(f) for f in files))
        for f in files:
            f.close()

    def wasm_reduce() -> None:
        core = Core(runtime, cache, spec, reduce_scratch, None, GuestLimits(time_s=600))
        names = []
        for number, data in enumerate(runs):
            with open(os.path.join(reduce_scratch, f"in-{number:05d}"), "wb") as f:
                f.write(data)
            names.append(core.path(f"in-{number:05d}"))
        core("reduce", core.path("input"), *names)
    reduce_records = 16 * len(_internal(run_bytes))
    wasm_reduce()
    reduce_times = {"Python (before)": cpu(python_reduce), "WebAssembly core": cpu(wasm_reduce)}

    print(f"map side: {records:,} records ({len(output) / 2**20:.1f} MiB), "
          f"{PARTITIONS} partitions, CPU per record:")
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds:6.3f} s  {seconds / records * 1e9:7.0f} ns/record  "
              f"{seconds / times['WebAssembly core']:5.2f}x the core")
    print(f"reduce side: {reduce_records:,} records merged from 16 runs, CPU per record:")
    for name, seconds in reduce_times.items():
        print(f"  {name:<20} {seconds:6.3f} s  {seconds / reduce_records * 1e9:7.0f} ns/record  "
              f"{seconds / reduce_times['WebAssembly core']:5.2f}x the core")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _internal(data: bytes) -> list[tuple[bytes, bytes]]:
    from tests.unit.test_shuffle_core import internal_records
    return internal_records(data)


if __name__ == "__main__":
    sys.exit(main())
