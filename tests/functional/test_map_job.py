"""Map-only jobs on the dev cluster: data-local placement and correct outputs."""

import json

from swiftclient.client import ClientException

from tests.functional.helpers import expected_counts, listing, make_text
from zerocompute.client import submit_job


def upload_app(swift, container, wasm):
    swift.put_container(container)
    swift.put_object(container, "wordcount.wasm", wasm)
    return f"swift://~/{container}/wordcount.wasm"


def test_map_only_job_runs_each_task_on_a_replica_and_writes_every_output(
        cluster, swift, wordcount_wasm, unique):
    exe = upload_app(swift, f"apps-{unique}", wordcount_wasm)
    source, out = f"in-{unique}", f"out-{unique}"
    swift.put_container(source)
    texts = {f"docs/part-{i:02d}.txt": make_text(i, 200 + 10 * i) for i in range(24)}
    for name, data in texts.items():
        swift.put_object(source, name, data)
    swift.put_object(source, "docs/ignored.csv", b"not,matched\n")

    report = submit_job(swift, {
        "name": "wc24",
        "map": {"exec": exe, "args": ["count"], "inputs": [f"swift://~/{source}/docs/*.txt"]},
        "output": f"swift://~/{out}/counts/*.wc",
        # A first task waits seconds for a new executor on a loaded box; a backup copy of
        # it would be an attempt this test does not count (test_scheduling.py does).
        "backup_tasks": False,
    })

    assert report["status"] == "succeeded", json.dumps(report, indent=1)
    assert len(report["tasks"]) == 24
    ring = cluster.object_ring()
    for task in report["tasks"]:
        obj = task["input"].split("/", 4)[4]
        _part, primaries = ring.get_nodes("AUTH_test", source, obj)
        assert task["node"] in {f"{n['ip']}:{n['port']}/{n['device']}" for n in primaries}
        assert task["local"] is True
        # Only a busy node (503) may have handed a task on to another replica.
        assert all(r["error"].startswith("503") for r in task["retries"]), report
        assert task["attempts"] == 1 + len(task["retries"])
        assert task["kind"] == "map" and task["exit"] == 0 and task["error"] is None
        assert task["bytes_in"] == len(texts[obj])
        assert task["ms"] > 0
    # What the guests used, for accounting: their CPU, their bytes.
    assert report["usage"]["cpu_ms"] > 0 and all(t["cpu_ms"] >= 0 for t in report["tasks"])
    assert report["usage"]["bytes_read"] == sum(len(d) for d in texts.values())
    # With 24 inputs over four servers, placement uses more than one node.
    assert len({t["node"] for t in report["tasks"]}) > 1

    names = listing(swift, out)
    for name, data in texts.items():
        output = "counts/" + name[len("docs/"):-len(".txt")] + ".wc"
        assert output in names
        body = swift.get_object(out, output)[1]
        assert body == expected_counts(data)
    assert "counts/_SUCCESS" in names
    stored = json.loads(swift.get_object(out, "counts/_report.json")[1])
    assert stored["status"] == "succeeded" and len(stored["tasks"]) == 24
    assert len(names) == 24 + 2


def test_failing_guest_fails_the_job_without_success_marker(swift, wordcount_wasm, unique):
    exe = upload_app(swift, f"apps-{unique}", wordcount_wasm)
    source, out = f"in-{unique}", f"out-{unique}"
    swift.put_container(source)
    swift.put_object(source, "a.txt", b"one two\n")

    good = {"map": {"exec": exe, "args": ["count"], "inputs": [f"swift://~/{source}/*"]},
            "output": f"swift://~/{out}/*.wc"}
    assert submit_job(swift, good)["status"] == "succeeded"
    assert "_SUCCESS" in listing(swift, out)

    bad = dict(good, map=dict(good["map"], args=["no-such-mode"]))
    report = submit_job(swift, bad)
    assert report["status"] == "failed"
    (task,) = report["tasks"]
    assert task["exit"] == 64 and task["error"] == "guest exited with status 64"
    assert "usage: wordcount" in task["stderr"]
    assert task["attempts"] == 1  # a guest's own failure is not retried elsewhere
    assert report["outputs"] == []
    # The earlier run's marker is gone: the failed run does not look complete.
    names = listing(swift, out)
    assert "_SUCCESS" not in names
    assert json.loads(swift.get_object(out, "_report.json")[1])["status"] == "failed"
    # The earlier good output was not overwritten by the failed task.
    assert swift.get_object(out, "a.txt.wc")[1] == b"one\t1\ntwo\t1\n"


def test_literal_input_and_explicit_output_name(swift, wordcount_wasm, unique):
    exe = upload_app(swift, f"apps-{unique}", wordcount_wasm)
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "only.txt", b"Hello hello WORLD\n")
    report = submit_job(swift, {
        "map": {"exec": exe, "args": ["count"], "inputs": [f"swift://~/in-{unique}/only.txt"]},
        "output": f"swift://~/out-{unique}/result.tsv"})
    assert report["status"] == "succeeded"
    assert swift.get_object(f"out-{unique}", "result.tsv")[1] == b"hello\t2\nworld\t1\n"
    try:
        swift.head_object(f"in-{unique}", "only.txt")
    except ClientException:  # pragma: no cover - the input must survive
        raise AssertionError("input lost") from None
