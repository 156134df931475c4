"""The shuffle at compiled speed, on the dev cluster: phases the Python SDK knows, a
total order (TeraSort's), the report's account of where time went, and a map's
memory bounded by its sort buffer whatever its output."""

import collections
import json
import os
import re

import pytest

from tests.functional.helpers import make_text, own_cluster
from zerocompute.client import submit_job
from zerocompute.dev import terasort
from zerocompute.dev.demo import count_words
from zerocompute.guests import build_c_guest, source_path
from zerocompute.sandbox import procfs
from zerocompute.shuffle import range_partition_of


@pytest.fixture
def corpus(swift, unique):
    swift.put_container(f"in-{unique}")
    texts = {f"doc-{i:02d}.txt": make_text(500 + i, 400) for i in range(6)}
    for name, data in texts.items():
        swift.put_object(f"in-{unique}", name, data)
    expected = collections.Counter()
    for data in texts.values():
        expected.update(count_words(data))
    return expected


def counts_of(swift, container, prefix, partitions):
    seen = {}
    for n in range(partitions):
        for line in swift.get_object(container, f"{prefix}part-{n:05d}")[1].decode().splitlines():
            word, count = line.split("\t")
            assert word not in seen, "each word in one part, once"
            seen[word] = int(count)
    return seen


def test_a_python_mapreduce_without_args_runs_each_phase_once(swift, corpus, unique):
    """No args: every task runs the phase it is told (ZEROCOMPUTE_PHASE); before, the map
    ran map-sort-reduce and the reduce did it again, and the counts came out wrong."""
    swift.put_container(f"apps-{unique}")
    with open(source_path("wordcount.py"), "rb") as f:
        swift.put_object(f"apps-{unique}", "wc.py", f.read())
    exe = f"swift://~/apps-{unique}/wc.py"
    for combine in (False, True):
        manifest = {"map": {"exec": exe, "inputs": [f"swift://~/in-{unique}/*.txt"]},
                    "reduce": {"exec": exe, "partitions": 3},
                    "output": f"swift://~/out-{unique}/{combine}/"}
        if combine:
            manifest["combine"] = {"exec": exe}
        report = submit_job(swift, manifest)
        assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
        assert counts_of(swift, f"out-{unique}", f"{combine}/", 3) == corpus
        maps = [t for t in report["tasks"] if t["kind"] == "map"]
        if combine:  # folded in the map's memory: one record per distinct word
            assert sum(t["records"] for t in maps) == sum(
                len(count_words(swift.get_object(f"in-{unique}", t["input"].rsplit("/", 1)[1])[1]))
                for t in maps)


def test_a_mode_that_contradicts_the_phase_is_a_clear_task_error(swift, corpus, unique):
    swift.put_container(f"apps-{unique}")
    with open(source_path("wordcount.py"), "rb") as f:
        swift.put_object(f"apps-{unique}", "wc.py", f.read())
    exe = f"swift://~/apps-{unique}/wc.py"
    report = submit_job(swift, {
        "map": {"exec": exe, "args": ["run"], "inputs": [f"swift://~/in-{unique}/doc-00.txt"]},
        "reduce": {"exec": exe}, "output": f"swift://~/out-{unique}/"})
    assert report["status"] == "failed"
    (task,) = [t for t in report["tasks"] if t["kind"] == "map"]
    assert task["error"] == "guest exited with status 1"
    assert "mode 'run' (the task's first argument) contradicts this task's phase 'map'" \
        in task["stderr"], task["stderr"]
    assert not [t for t in report["tasks"] if t["kind"] == "reduce" and t["node"]]


def test_the_report_says_where_the_time_went(swift, wordcount_wasm, corpus, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "wc.wasm", wordcount_wasm)
    exe = f"swift://~/apps-{unique}/wc.wasm"
    report = submit_job(swift, {
        "map": {"exec": exe, "args": ["map"], "inputs": [f"swift://~/in-{unique}/*.txt"]},
        "combine": {"exec": exe, "args": ["reduce"]},
        "reduce": {"exec": exe, "args": ["reduce"], "partitions": 2},
        "output": f"swift://~/out-{unique}/"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    assert counts_of(swift, f"out-{unique}", "", 2) == corpus
    phases = report["phases"]
    assert set(phases) == {"map", "reduce"}
    assert set(phases["map"]["shuffle"]) >= {"partition", "sort", "spill"}
    assert set(phases["reduce"]["shuffle"]) == {"fetch", "merge"}
    for phase in phases.values():
        assert phase["guest"]["wall_ms"] > 0
        assert all(spent["wall_ms"] >= 0 and spent["cpu_ms"] >= 0
                   for spent in phase["shuffle"].values())
    # The C guest folded its words in memory (the combiner is the same program).
    assert phases["map"]["records"] == sum(len(set(count_words(swift.get_object(
        f"in-{unique}", f"doc-{i:02d}.txt")[1]))) for i in range(6))
    assert report["partitioning"] == {"partitioner": "hash"}


@pytest.fixture(scope="module")
def terasort_wasm():
    with open(build_c_guest(source_path("terasort.c")), "rb") as f:
        return f.read()


def test_terasort_parts_in_order_are_the_input_sorted(swift, terasort_wasm, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "terasort.wasm", terasort_wasm)
    swift.put_container(f"ts-{unique}")
    total, checksum = 0, 0
    for number in range(4):
        data = terasort.gensort(number * 6000, 6000, seed=7)
        swift.put_object(f"ts-{unique}", f"in-{number}", data)
        total += 6000
        checksum = (checksum + terasort.checksum(data)) % (1 << 64)
    exe = f"swift://~/apps-{unique}/terasort.wasm"
    report = submit_job(swift, {
        "name": "terasort",
        "map": {"exec": exe, "args": ["map"], "inputs": [f"swift://~/ts-{unique}/in-*"]},
        "reduce": {"exec": exe, "args": ["reduce"], "partitions": 8, "partitioner": "range"},
        "output": f"swift://~/sorted-{unique}/"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    parts = [swift.get_object(f"sorted-{unique}", f"part-{n:05d}")[1] for n in range(8)]
    check = terasort.valsort(parts)
    assert check.sorted and check.records == total and check.checksum == checksum
    mean = total / 8
    assert max(len(p) // terasort.RECORD_BYTES for p in parts) <= 1.3 * mean
    points = report["partitioning"]["split_points"]
    assert report["partitioning"]["partitioner"] == "range" and len(points) == 7
    assert points == sorted(points)
    for number, part in enumerate(parts):  # each part holds its range of keys
        keys = {part[at:at + 10] for at in range(0, len(part), terasort.RECORD_BYTES)}
        assert {range_partition_of(k, [p.encode() for p in points]) for k in keys} == {number}
    samples = [t for t in report["tasks"] if t["kind"] == "sample"]
    assert len(samples) == 4 and all(t["exit"] == 0 and t["error"] is None for t in samples)


# -- a reducer that reads only part of its input -------------------------------------------
# Megabytes of merged input: more than any pipe or buffer between the merge and the reducer.
EARLY_EXITS = {
    "reads nothing": b"import sys\nsys.stdout.write('read nothing\\n')\n",
    "reads one record": b"import sys\nsys.stdout.buffer.write(sys.stdin.buffer.readline())\n",
}


@pytest.mark.parametrize("kind", sorted(EARLY_EXITS))
def test_a_reducer_that_stops_reading_early_keeps_its_output(swift, terasort_wasm, unique,
                                                             kind):
    """What it wrote is its output: the input it left unread is no failure."""
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "terasort.wasm", terasort_wasm)
    swift.put_object(f"apps-{unique}", "early.py", EARLY_EXITS[kind])
    swift.put_container(f"ts-{unique}")
    records = [terasort.gensort(number * 20000, 20000, seed=3) for number in range(2)]
    for number, data in enumerate(records):
        swift.put_object(f"ts-{unique}", f"in-{number}", data)
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/terasort.wasm", "args": ["map"],
                "inputs": [f"swift://~/ts-{unique}/in-*"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/early.py", "partitions": 1},
        "output": f"swift://~/early-{unique}/"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    (reduce,) = [t for t in report["tasks"] if t["kind"] == "reduce"]
    assert reduce["bytes_in"] > 3 << 20 and reduce["attempts"] == 1
    part = swift.get_object(f"early-{unique}", "part-00000")[1]
    if kind == "reads nothing":
        assert part == b"read nothing\n"
    else:
        first = min(r for data in records for r in (data[at:at + 100] for at in
                                                    range(0, len(data), 100)))
        assert part == first[:10] + b"\t" + first[10:98] + b"\n"


# -- a map's memory, whatever its output -------------------------------------------------------
BUFFER = 8 << 20  # the sort buffer this module's cluster gives its maps
# An executor's own memory beside the buffer: Python and wasmtime (about 55 MiB
# measured), compiling modules, the core's read, write and merge buffers (the peak
# measured: 86 MiB in all).  The buffer and it are less than the map's output: a
# shuffle that held that output would fail here.
ALLOWANCE = 100 << 20


@pytest.fixture(scope="module")
def small_buffer(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "small-buffer",
                           proxy_options={"shuffle_buffer_bytes": str(BUFFER)})


def executor_peaks(cluster) -> list[int]:
    """Each executor's peak resident memory (VmHWM), in bytes."""
    peaks = []
    cache = os.path.join(cluster.directory, "cache")
    for process in procfs.processes():
        if not process.is_executor or cache.encode() not in process.argv:
            continue
        try:
            with open(f"/proc/{process.pid}/status") as f:
                peaks += [int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM")]
        except OSError:
            continue
    return peaks


def test_a_maps_memory_stays_within_its_sort_buffer(small_buffer, wordcount_wasm):
    swift = small_buffer.connection()
    swift.put_container("apps")
    swift.put_object("apps", "wc.wasm", wordcount_wasm)
    swift.put_container("big")
    # One input whose map output is more than ten times the sort buffer (a record per
    # word), and more than the buffer and the allowance together.
    line = b" ".join(b"w%05d" % (i * 7919 % 50000) for i in range(1000)) + b"\n"
    data = line * (14 * BUFFER // len(line) + 1)  # its map output: about 17 buffers
    swift.put_object("big", "words.txt", data)
    report = submit_job(swift, {
        "map": {"exec": "swift://~/apps/wc.wasm", "args": ["map"],
                "inputs": ["swift://~/big/words.txt"]},
        "reduce": {"exec": "swift://~/apps/wc.wasm", "args": ["reduce"], "partitions": 2},
        "output": "swift://~/counts/", "limits": {"time_s": 300, "cpu_s": 300}})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    (task,) = [t for t in report["tasks"] if t["kind"] == "map"]
    output_bytes = sum(len(w) + 3 for w in re.findall(rb"[A-Za-z0-9]+", line)) * (
        len(data) // len(line))
    assert output_bytes >= 10 * BUFFER, "the map wrote ten sort buffers' worth"
    assert task["shuffle"]["merge"], "its output spilled and was merged"
    expected = collections.Counter()
    for word in re.findall(rb"[A-Za-z0-9]+", line):
        expected[word.decode()] += len(data) // len(line)
    seen = {}
    for n in range(2):
        for row in swift.get_object("counts", f"part-{n:05d}")[1].decode().splitlines():
            word, count = row.split("\t")
            seen[word] = int(count)
    assert seen == expected
    peaks = executor_peaks(small_buffer)
    assert peaks, "the executors are found"
    assert max(peaks) < BUFFER + ALLOWANCE, (max(peaks), peaks)
    assert BUFFER + ALLOWANCE < output_bytes, "the bound is tight enough to mean something"
