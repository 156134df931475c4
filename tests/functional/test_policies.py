"""Every storage policy as input: the same word count over the same objects stored
replicated (gold), replicated twice (silver) and erasure-coded (ec42, 4+2) gives
the same outputs; an EC task rebuilds its object from the fragments (its own from
disk, the rest fetched from their holders) and says how many bytes came from where."""

import json
import os

import pytest

from tests.functional.helpers import expected_counts, make_text, own_cluster
from zerocompute.client import submit_job
from zerocompute.guests import build_c_guest

POLICIES = ("gold", "silver", "ec42")
SIZES = [100, 3_000, 60_000, 150_000]  # words: from one segment to several


def wordcount(container, output):
    return {"map": {"exec": "swift://~/apps/wordcount.wasm", "args": ["count"],
                    "inputs": [f"swift://~/{container}/*"]},
            "output": f"swift://~/{output}/*.wc"}


def stage(swift, wordcount_wasm, prefix):
    swift.put_container("apps")
    swift.put_object("apps", "wordcount.wasm", wordcount_wasm)
    texts = {f"t{i}": make_text(i, words) for i, words in enumerate(SIZES)}
    for policy in POLICIES:
        swift.put_container(f"{prefix}-{policy}", headers={"X-Storage-Policy": policy})
        for name, data in texts.items():
            swift.put_object(f"{prefix}-{policy}", name, data)
    return texts


def test_the_same_job_over_every_policy_gives_the_same_outputs(cluster, swift,
                                                                wordcount_wasm):
    texts = stage(swift, wordcount_wasm, "pol")
    reports = {}
    for policy in POLICIES:
        report = submit_job(swift, wordcount(f"pol-{policy}", f"pol-out-{policy}"))
        assert report["status"] == "succeeded", json.dumps(report, indent=1)
        reports[policy] = report
        for name, data in texts.items():
            assert swift.get_object(f"pol-out-{policy}", f"{name}.wc")[1] == \
                expected_counts(data), (policy, name)

    ring = cluster.object_ring(2)
    k = 4
    for task in reports["ec42"]["tasks"]:
        size = task["bytes_in"]
        assert size == len(texts[task["input"].rsplit("/", 1)[1]])
        # It ran on a fragment holder, and read its own archive plus k - 1 others.
        _part, holders = ring.get_nodes("AUTH_test", "pol-ec42", task["input"].rsplit("/")[-1])
        assert task["local"] and task["node"] in {
            f"{n['ip']}:{n['port']}/{n['device']}" for n in holders}
        archive = task["bytes_local"]
        assert archive > 0 and task["bytes_peer"] == (k - 1) * archive
        # No task reads more than the object plus one fragment set (pyeclib's 80-byte
        # header per fragment is all the rest: it dominates only tiny objects).
        read = task["bytes_local"] + task["bytes_peer"]
        segments = -(-size // 1048576)
        fragment_set = (k + 2) * archive // segments  # all k + m fragments of a segment
        assert read <= size + fragment_set, task
        assert read <= size + archive or size < 65536, task
        assert read - size <= k * (80 + 16) * (size // 1048576 + 1), task  # + alignment
    for task in reports["gold"]["tasks"]:
        assert task["bytes_local"] == task["bytes_in"] and task["bytes_peer"] == 0


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "ec-faults")


def test_ec_job_completes_while_a_fragment_holder_is_dead(fragile, wordcount_wasm):
    swift = fragile.connection()
    texts = stage(swift, wordcount_wasm, "ecf")
    ring = fragile.object_ring(2)
    # The server holding the first data fragment of the largest object.
    _part, holders = ring.get_nodes("AUTH_test", "ecf-ec42", "t3")
    victim = next(s for s in fragile.object_servers if s.port == holders[0]["port"])
    fragile.kill(victim)
    try:
        report = submit_job(swift, wordcount("ecf-ec42", "ecf-out"))
    finally:
        fragile.restart(victim)
    assert report["status"] == "succeeded", json.dumps(report, indent=1)
    for name, data in texts.items():
        assert swift.get_object("ecf-out", f"{name}.wc")[1] == expected_counts(data), name
    dead = f"{holders[0]['ip']}:{victim.port}"
    for task in report["tasks"]:
        assert not task["node"].startswith(dead + "/")
        assert task["bytes_peer"] == 3 * task["bytes_local"]  # still k archives, no more
        # No fragment on the dead server was read: its objects used parity instead.
        _part, nodes = ring.get_nodes("AUTH_test", "ecf-ec42", task["input"].rsplit("/")[-1])
        on_victim = {n["index"] for n in nodes if n["port"] == victim.port}
        assert not on_victim & set(task["fragments"]), task
    t3 = next(t for t in report["tasks"] if t["input"].endswith("/t3"))
    assert 0 not in t3["fragments"] and max(t3["fragments"]) >= 4  # a parity fragment


def mapreduce(inputs, output):
    return {"map": {"exec": "swift://~/apps/wordcount.wasm", "args": ["map"],
                    "inputs": [inputs]},
            "reduce": {"exec": "swift://~/apps/wordcount.wasm", "args": ["reduce"],
                       "partitions": 2},
            "output": f"swift://~/{output}/"}


def test_large_objects_are_read_segment_by_segment_with_the_same_result(cluster, swift,
                                                                         wordcount_wasm):
    swift.put_container("apps")
    swift.put_object("apps", "wordcount.wasm", wordcount_wasm)
    data = make_text(11, 30_000)
    cuts = [len(data) * i // 6 + 7 * i for i in range(6)] + [len(data)]  # mid-line cuts
    swift.put_container("lo-plain")
    swift.put_object("lo-plain", "book", data)
    swift.put_container("lo-ec", headers={"X-Storage-Policy": "ec42"})
    swift.put_object("lo-ec", "book", data)
    swift.put_container("lo-segs")
    swift.put_container("lo-ec-segs", headers={"X-Storage-Policy": "ec42"})
    for i in range(6):
        swift.put_object("lo-segs", f"slo/{i:02d}", data[cuts[i]:cuts[i + 1]])
        swift.put_object("lo-ec-segs", f"dlo/{i:02d}", data[cuts[i]:cuts[i + 1]])
    swift.put_container("lo-large")
    swift.put_object("lo-large", "book.slo", json.dumps(
        [{"path": f"/lo-segs/slo/{i:02d}"} for i in range(6)]),
        query_string="multipart-manifest=put")
    swift.put_object("lo-large", "book.dlo", b"",
                     headers={"X-Object-Manifest": "lo-ec-segs/dlo/"})
    assert swift.get_object("lo-large", "book.slo")[1] == data

    reports = {}
    for name, inputs in (("plain", "swift://~/lo-plain/book"), ("ec", "swift://~/lo-ec/book"),
                         ("slo", "swift://~/lo-large/book.slo"),
                         ("dlo", "swift://~/lo-large/book.dlo")):
        reports[name] = report = submit_job(swift, mapreduce(inputs, f"lo-out-{name}"))
        assert report["status"] == "succeeded", json.dumps(report, indent=1)
    expected = expected_counts(data)
    for name in reports:
        parts = b"".join(swift.get_object(f"lo-out-{name}", f"part-{n:05d}")[1]
                         for n in range(2))
        assert sorted(parts.splitlines()) == sorted(expected.splitlines()), name
    # One map task per segment, each beside its segment (the DLO's are erasure-coded),
    # and together they read the object once: every line by exactly one of them.
    for name, container, prefix in (("slo", "lo-segs", "slo/"), ("dlo", "lo-ec-segs", "dlo/")):
        maps = [t for t in reports[name]["tasks"] if t["kind"] == "map"]
        assert [t["input"] for t in maps] == [
            f"swift://AUTH_test/{container}/{prefix}{i:02d}" for i in range(6)]
        assert all(t["local"] for t in maps)
        assert sum(t["bytes_in"] for t in maps) == len(data)
    assert all(t["bytes_peer"] > 0 for t in reports["dlo"]["tasks"] if t["kind"] == "map")
    # Or each large object whole, by one task: streamed through the proxy (so not local).
    whole = submit_job(swift, {"map": {"exec": "swift://~/apps/wordcount.wasm",
                                       "args": ["count"], "inputs": ["swift://~/lo-large/*"],
                                       "large_objects": "whole"},
                               "output": "swift://~/lo-whole/*.wc"})
    assert whole["status"] == "succeeded", json.dumps(whole, indent=1)
    assert len(whole["tasks"]) == 2
    for task in whole["tasks"]:
        assert not task["local"] and task["bytes_peer"] == task["bytes_in"] == len(data)
    for name in ("book.slo", "book.dlo"):
        assert swift.get_object("lo-whole", f"{name}.wc")[1] == expected_counts(data)


def test_splits_of_an_erasure_coded_object_decode_only_their_segments(cluster, swift,
                                                                       wordcount_wasm):
    swift.put_container("apps")
    swift.put_object("apps", "wordcount.wasm", wordcount_wasm)
    swift.put_container("split-ec", headers={"X-Storage-Policy": "ec42"})
    data = make_text(5, 600_000)  # about 4 MiB: four segments
    swift.put_object("split-ec", "big", data)
    job = mapreduce("swift://~/split-ec/big", "split-ec-out")
    job["map"]["split_size"] = 512 * 1024
    report = submit_job(swift, job)
    assert report["status"] == "succeeded", json.dumps(report, indent=1)
    parts = b"".join(swift.get_object("split-ec-out", f"part-{n:05d}")[1] for n in range(2))
    assert sorted(parts.splitlines()) == sorted(expected_counts(data).splitlines())
    maps = [t for t in report["tasks"] if t["kind"] == "map"]
    assert len(maps) == -(-len(data) // (512 * 1024))
    assert sum(t["bytes_in"] for t in maps) == len(data)  # every line once
    for task in maps:
        # One or two 1 MiB segments' worth of fragments, never the whole object.
        read = task["bytes_local"] + task["bytes_peer"]
        assert read <= 2 * (1 << 20) + 4096, task
    # Execution on GET over the EC object, with a Range: only those bytes are the input.
    import urllib.request
    url, token = swift.get_auth()
    copy = build_c_guest(os.path.join(os.path.dirname(__file__), "..", "guests", "copy.c"))
    with open(copy, "rb") as f:
        swift.put_object("apps", "copy.wasm", f.read())
    start = 3 * (1 << 20) - 100  # across the third and fourth segments
    req = urllib.request.Request(f"{url}/split-ec/big", headers={
        "X-Auth-Token": token, "X-Zerocompute-Run": "swift://~/apps/copy.wasm",
        "Range": f"bytes={start}-{start + 299}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.read() == data[start:start + 300]
        assert resp.headers["X-Zerocompute-Local"] == "true"
