"""MapReduce under failure, on a cluster of its own: a map's node dies after its map."""

import collections
import json
import os
import threading
import time

import pytest

from tests.functional.helpers import make_text, own_cluster
from zerocompute.client import submit_job
from zerocompute.dev.demo import count_words

# Each reduce waits before it reduces, so the reduces of a job that runs one task
# at a time span seconds after the maps are done: time to kill a map's node.
SLOW_REDUCER = b"""import time

def reduce_init():
    time.sleep(1.5)

def reduce(key, values):
    return sum(values)
"""


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    # A sort buffer of 4 KiB: every map's output spills to disk many times.
    yield from own_cluster(tmp_path_factory, "mr-faults",
                           proxy_options={"concurrency": "1", "backup_tasks": "false",
                                          "shuffle_buffer_bytes": "4096"})


def map_outputs(cluster):
    """Map task directories kept per object server (name -> count), from the shared cache."""
    root = os.path.join(cluster.directory, "cache", "shuffle")
    counts = collections.Counter()
    for server in cluster.object_servers:
        folder = os.path.join(root, f"127.0.0.1-{server.port}")
        for _job, _dirs, _files in os.walk(folder):
            if os.path.basename(_job).startswith("m") and _job.count(os.sep) > folder.count(
                    os.sep) + 1:
                counts[server.name] += 1
    return counts


def test_lost_map_output_is_made_again_and_the_job_completes(serial, wordcount_wasm):
    swift = serial.connection()
    swift.put_container("apps")
    swift.put_object("apps", "wc.wasm", wordcount_wasm)
    swift.put_object("apps", "slow_reduce.py", SLOW_REDUCER)
    swift.put_container("in")
    texts = {f"doc-{i:02d}.txt": make_text(300 + i, 100) for i in range(8)}
    for name, data in texts.items():
        swift.put_object("in", name, data)

    victim = []

    def kill_a_map_node_after_the_maps():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = map_outputs(serial)
            if sum(counts.values()) >= len(texts):
                name, _ = counts.most_common(1)[0]
                victim.append(name)
                serial.kill(serial.server(name))  # SIGKILL, its map outputs unreachable
                return
            time.sleep(0.02)
    killer = threading.Thread(target=kill_a_map_node_after_the_maps, daemon=True)
    killer.start()
    try:
        report = submit_job(swift, {
            "map": {"exec": "swift://~/apps/wc.wasm", "args": ["map"],
                    "inputs": ["swift://~/in/*.txt"]},
            "reduce": {"exec": "swift://~/apps/slow_reduce.py", "args": ["reduce"],
                       "partitions": 3},
            "output": "swift://~/out/wc/"})
    finally:
        killer.join(60)
        for name in victim:
            serial.restart(serial.server(name))
    assert victim, "the maps never finished"
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:4000]
    label = f"127.0.0.1:{serial.server(victim[0]).port}/"
    remade = [t for t in report["tasks"] if t["kind"] == "map" and any(
        r["node"].startswith(label) and "map output lost" in r["error"] for r in t["retries"])]
    assert remade, "no map was run again"
    assert all(not t["node"].startswith(label) for t in remade)
    expected = collections.Counter()
    for data in texts.values():
        expected.update(count_words(data))
    seen = collections.Counter()
    for n in range(3):
        for line in swift.get_object("out", f"wc/part-{n:05d}")[1].decode().splitlines():
            word, count = line.split("\t")
            seen[word] += int(count)
    assert seen == expected


def test_partitions_far_larger_than_the_sort_buffer_come_out_sorted(serial, wordcount_wasm):
    """Each map's output is over forty times the 4 KiB buffer: spilled, merged, right."""
    swift = serial.connection()
    swift.put_container("apps")
    swift.put_object("apps", "wc.wasm", wordcount_wasm)
    swift.put_container("big")
    texts = {f"doc-{i}.txt": b"".join(make_text(700 + 10 * i + j, 600) for j in range(40))
             for i in range(3)}
    for name, data in texts.items():
        swift.put_object("big", name, data)
    report = submit_job(swift, {
        "map": {"exec": "swift://~/apps/wc.wasm", "args": ["map"],
                "inputs": ["swift://~/big/*.txt"]},
        "reduce": {"exec": "swift://~/apps/wc.wasm", "args": ["reduce"], "partitions": 3},
        "output": "swift://~/big-out/"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    maps = [t for t in report["tasks"] if t["kind"] == "map"]
    assert min(t["bytes_out"] for t in maps) > 40 * 4096, "the buffer was not too small"
    expected = collections.Counter()
    for data in texts.values():
        expected.update(count_words(data))
    seen = collections.Counter()
    for n in range(3):
        lines = swift.get_object("big-out", f"part-{n:05d}")[1].decode().splitlines()
        words = [line.split("\t")[0] for line in lines]
        assert words == sorted(words) and len(words) == len(set(words))
        seen.update({w: int(c) for w, c in (line.split("\t") for line in lines)})
    assert seen == expected
