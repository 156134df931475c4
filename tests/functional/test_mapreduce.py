"""MapReduce on the dev cluster: map beside the data, shuffle, reduce into part objects."""

import collections
import io
import json
import os

import pytest
from swiftclient.client import ClientException

from tests.functional.helpers import listing, make_text
from zerocompute.client import submit_job
from zerocompute.dev.demo import count_words
from zerocompute.guests import build_c_guest, source_path
from zerocompute.sandbox import zerocompute_guest as sdk
from zerocompute.shuffle import partition_of

HOSTILE = os.path.join(os.path.dirname(__file__), "..", "guests", "hostile.c")


@pytest.fixture
def corpus(swift, wordcount_wasm, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "wc.wasm", wordcount_wasm)
    with open(source_path("wordcount.py"), "rb") as f:
        swift.put_object(f"apps-{unique}", "wc.py", f.read())
    swift.put_container(f"in-{unique}")
    texts = {f"doc-{i:02d}.txt": make_text(100 + i, 150 + 20 * i) for i in range(12)}
    for name, data in texts.items():
        swift.put_object(f"in-{unique}", name, data)
    return texts


def read_parts(swift, container, prefix, partitions):
    parts = {}
    for n in range(partitions):
        parts[n] = swift.get_object(container, f"{prefix}part-{n:05d}")[1]
    return parts


@pytest.mark.parametrize("exe, map_args, reduce_args", [
    ("wc.wasm", ["map"], ["reduce"]),
    ("wc.py", ["map"], ["reduce"]),
])
def test_word_count_map_shuffle_reduce(cluster, swift, corpus, unique, exe, map_args,
                                       reduce_args):
    report = submit_job(swift, {
        "name": "wc-mr",
        "map": {"exec": f"swift://~/apps-{unique}/{exe}", "args": map_args,
                "inputs": [f"swift://~/in-{unique}/*.txt"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/{exe}", "args": reduce_args,
                   "partitions": 3},
        "output": f"swift://~/out-{unique}/wc/"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:4000]
    maps = [t for t in report["tasks"] if t["kind"] == "map"]
    reduces = [t for t in report["tasks"] if t["kind"] == "reduce"]
    assert len(maps) == 12 and all(t["local"] for t in maps)
    assert [t["task"] for t in reduces] == ["r00000", "r00001", "r00002"]

    expected = collections.Counter()
    for data in corpus.values():
        expected.update(count_words(data))
    parts = read_parts(swift, f"out-{unique}", "wc/", 3)
    seen = collections.Counter()
    for number, data in parts.items():
        lines = data.decode().splitlines()
        words = [line.split("\t")[0] for line in lines]
        assert words == sorted(words), "a reducer's output is sorted by key"
        for line in lines:
            word, count = line.split("\t")
            assert partition_of(word.encode(), 3) == number, "CRC32 partitioning"
            seen[word] += int(count)
    assert seen == expected
    assert sorted(listing(swift, f"out-{unique}")) == [
        "wc/_SUCCESS", "wc/_report.json", "wc/part-00000", "wc/part-00001", "wc/part-00002"]
    assert sum(t["bytes_in"] for t in reduces) == sum(t["bytes_out"] for t in maps)
    # The job's map outputs were deleted from every node when it ended.
    root = os.path.join(cluster.directory, "cache", "shuffle")
    left = [job for server in os.listdir(root) for job in os.listdir(os.path.join(root, server))]
    assert left == [], left


def test_failing_reducer_leaves_no_parts_and_no_success(swift, corpus, unique):
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["map"],
                "inputs": [f"swift://~/in-{unique}/*.txt"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["no-such-mode"],
                   "partitions": 3},
        "output": f"swift://~/out-{unique}/wc/"})
    assert report["status"] == "failed"
    reduces = [t for t in report["tasks"] if t["kind"] == "reduce"]
    assert reduces and all(t["error"] == "guest exited with status 64" for t in reduces)
    names = listing(swift, f"out-{unique}")
    assert [n for n in names if "part-" in n] == [] and "wc/_SUCCESS" not in names
    assert json.loads(swift.get_object(f"out-{unique}", "wc/_report.json")[1])["status"] \
        == "failed"


def test_map_output_that_is_not_records_fails_the_map(swift, corpus, unique):
    # A plain program (no map function): it copies its input, which has no tab.
    swift.put_object(f"apps-{unique}", "cat.py",
                     b"import sys\nsys.stdout.write(sys.stdin.read())\n")
    swift.put_object(f"in-{unique}", "notes.txt", b"no tab on this line\n")
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/cat.py",
                "inputs": [f"swift://~/in-{unique}/notes.txt"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["reduce"]},
        "output": f"swift://~/out-{unique}/"})
    assert report["status"] == "failed"
    (task,) = report["tasks"][:1]
    assert task["kind"] == "map" and task["error"].startswith(
        "map output is not text records: line 1 is not key<TAB>value")
    assert not [t for t in report["tasks"] if t["kind"] == "reduce" and t["node"]], \
        "no reduce ran"
    with pytest.raises(ClientException):
        swift.head_object(f"out-{unique}", "part-00000")


@pytest.mark.parametrize("exe", ["wc.wasm", "wc.py"])
def test_combiner_shrinks_the_shuffle_and_changes_no_result(swift, corpus, unique, exe):
    def job(out, combine):
        manifest = {"map": {"exec": f"swift://~/apps-{unique}/{exe}", "args": ["map"],
                            "inputs": [f"swift://~/in-{unique}/*.txt"]},
                    "reduce": {"exec": f"swift://~/apps-{unique}/{exe}", "args": ["reduce"],
                               "partitions": 3},
                    "output": f"swift://~/{out}-{unique}/"}
        if combine:
            # The Python SDK's "combine" mode, the C guest's "reduce": both sum per word.
            manifest["combine"] = {"exec": f"swift://~/apps-{unique}/{exe}",
                                   "args": ["combine" if exe.endswith(".py") else "reduce"]}
        report = submit_job(swift, manifest)
        assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
        shuffled = sum(t["bytes_out"] for t in report["tasks"] if t["kind"] == "map")
        return read_parts(swift, f"{out}-{unique}", "", 3), shuffled

    plain, plain_bytes = job("plain", combine=False)
    combined, combined_bytes = job("combined", combine=True)
    assert combined == plain
    assert combined_bytes < plain_bytes / 2, (combined_bytes, plain_bytes)


def test_failing_combiner_fails_its_map(swift, corpus, unique):
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["map"],
                "inputs": [f"swift://~/in-{unique}/doc-01.txt"]},
        "combine": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["bogus"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["reduce"]},
        "output": f"swift://~/out-{unique}/"})
    assert report["status"] == "failed"
    (task,) = [t for t in report["tasks"] if t["kind"] == "map"]
    assert task["error"].startswith("the combiner failed: exit status 64"), task["error"]


def test_splits_of_any_size_give_the_same_word_count(swift, corpus, unique):
    big = b"".join(make_text(900 + i, 400) for i in range(30))  # about 80 KiB
    swift.put_object(f"in-{unique}", "big.txt", big)
    results, tasks = {}, {}
    for split in (1024, 65536, None):
        manifest = {"map": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["map"],
                            "inputs": [f"swift://~/in-{unique}/*.txt"]},
                    "reduce": {"exec": f"swift://~/apps-{unique}/wc.wasm",
                               "args": ["reduce"], "partitions": 3},
                    "output": f"swift://~/out-{split}-{unique}/"}
        if split:
            manifest["map"]["split_size"] = split
        report = submit_job(swift, manifest)
        assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
        maps = [t for t in report["tasks"] if t["kind"] == "map"]
        assert all(t["local"] for t in maps)
        big_maps = [t for t in maps if t["input"].endswith("/big.txt")]
        assert sum(t["bytes_in"] for t in big_maps) == len(big), "every byte read once"
        tasks[split] = len(big_maps)
        results[split] = read_parts(swift, f"out-{split}-{unique}", "", 3)
    assert tasks == {None: 1, 65536: 2, 1024: -(-len(big) // 1024)}
    assert results[1024] == results[65536] == results[None]


def test_split_inputs_gathered_are_the_inputs_again(swift, corpus, unique):
    """Copying each split's lines and gathering them in order rebuilds every input:
    no line lost or read twice, whatever the split size."""
    with open(build_c_guest(HOSTILE), "rb") as f:
        swift.put_object(f"apps-{unique}", "copy.wasm", f.read())
    for split in (1024, 4000):
        report = submit_job(swift, {
            "map": {"exec": f"swift://~/apps-{unique}/copy.wasm",
                    "inputs": [f"swift://~/in-{unique}/*.txt"], "split_size": split},
            "output": f"swift://~/copied-{unique}/all-{split}"})
        assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
        expected = b"".join(corpus[name] for name in sorted(corpus))
        assert swift.get_object(f"copied-{unique}", f"all-{split}")[1] == expected


def test_steps_chain_each_output_into_the_next(swift, corpus, unique):
    with open(build_c_guest(HOSTILE), "rb") as f:
        swift.put_object(f"apps-{unique}", "copy.wasm", f.read())
    report = submit_job(swift, {"name": "chain", "steps": [
        {"map": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["map"],
                 "inputs": [f"swift://~/in-{unique}/*.txt"]},
         "reduce": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["reduce"],
                    "partitions": 3},
         "output": f"swift://~/step1-{unique}/counts/"},
        # No inputs: the step before's part-* objects.
        {"map": {"exec": f"swift://~/apps-{unique}/copy.wasm"},
         "output": f"swift://~/step2-{unique}/all-counts.txt"}]})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:4000]
    assert [s["status"] for s in report["steps"]] == ["succeeded", "succeeded"]
    assert {t["step"] for t in report["tasks"]} == {0, 1}
    second = [t for t in report["tasks"] if t["step"] == 1]
    assert [t["input"].rsplit("/", 1)[1] for t in second] == [
        "part-00000", "part-00001", "part-00002"]
    parts = read_parts(swift, f"step1-{unique}", "counts/", 3)
    assert swift.get_object(f"step2-{unique}", "all-counts.txt")[1] == \
        b"".join(parts[n] for n in range(3))
    assert report["outputs"] == [f"swift://AUTH_test/step2-{unique}/all-counts.txt"]


def test_a_failing_step_ends_the_chain(swift, corpus, unique):
    report = submit_job(swift, {"steps": [
        {"map": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["bogus"],
                 "inputs": [f"swift://~/in-{unique}/doc-00.txt"]},
         "output": f"swift://~/s1-{unique}/out.txt"},
        {"map": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["count"]},
         "output": f"swift://~/s2-{unique}/out.txt"}]})
    assert report["status"] == "failed" and len(report["steps"]) == 1
    assert "step 0 failed" in report["error"]
    assert f"s2-{unique}" not in [c["name"] for c in swift.get_account()[1]]


def test_framed_records_through_the_shuffle(swift, corpus, unique):
    """Keys with tabs, newlines and NUL survive partitioning, sorting and reducing."""
    swift.put_object(f"apps-{unique}", "odd_keys.py", (
        b"def map(record):\n"
        b"    for word in record.split():\n"
        b"        yield word[:1] + '\\t\\n\\0' + word[1:], 1\n"
        b"def reduce(key, values):\n"
        b"    return sum(values)\n"))
    report = submit_job(swift, {
        "records": "framed",
        "map": {"exec": f"swift://~/apps-{unique}/odd_keys.py", "args": ["map"],
                "inputs": [f"swift://~/in-{unique}/doc-0*.txt"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/odd_keys.py", "args": ["reduce"],
                   "partitions": 3},
        "output": f"swift://~/framed-{unique}/"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    expected = collections.Counter()
    for name, data in corpus.items():
        if name.startswith("doc-0"):
            expected.update(w[:1] + "\t\n\0" + w[1:] for w in data.decode().split())
    seen = {}
    for n in range(3):
        data = swift.get_object(f"framed-{unique}", f"part-{n:05d}")[1]
        records = list(sdk.FramedRecords.read(io.BytesIO(data)))
        assert [k for k, _ in records] == sorted(k for k, _ in records)
        seen.update(records)
    assert seen == dict(expected)
