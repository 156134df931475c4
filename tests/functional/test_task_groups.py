"""Many small tasks: task groups, outputs gathered into one object, long jobs kept alive."""

import http.client
import json
import os
import time
import urllib.parse

import pytest
from swiftclient.client import ClientException

from tests.functional.helpers import listing, own_cluster
from zerocompute.client import submit_job
from zerocompute.guests import build_c_guest

GUESTS = os.path.join(os.path.dirname(__file__), "..", "guests")


@pytest.fixture(scope="module")
def copier(swift):
    """The hostile guest: it copies any input whose first line names no misdeed."""
    with open(build_c_guest(os.path.join(GUESTS, "hostile.c")), "rb") as f:
        wasm = f.read()
    swift.put_container("apps-groups")
    swift.put_object("apps-groups", "copy.wasm", wasm)
    return "swift://~/apps-groups/copy.wasm"


def inputs(swift, container, count):
    swift.put_container(container)
    bodies = {f"rec-{i:04d}": f"record {i}\n".encode() * (1 + i % 3) for i in range(count)}
    for name, body in bodies.items():
        swift.put_object(container, name, body)
    return bodies


def test_many_small_tasks_each_write_their_own_output(swift, copier, unique):
    bodies = inputs(swift, f"in-{unique}", 120)
    report = submit_job(swift, {"map": {"exec": copier, "inputs": [f"swift://~/in-{unique}/*"]},
                                "output": f"swift://~/out-{unique}/*.out"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    assert len(report["tasks"]) == 120 and all(t["local"] for t in report["tasks"])
    # Spread over the nodes holding the inputs (no node holds all 120), though not
    # necessarily over all of them: the load-aware scheduler sends bigger groups to the
    # nodes that finish this job's tasks soonest, and on a busy machine two may take all.
    assert len({t["node"] for t in report["tasks"]}) >= 2
    for name, body in bodies.items():
        assert swift.get_object(f"out-{unique}", f"{name}.out")[1] == body
    assert sorted(listing(swift, f"out-{unique}")) == sorted(
        [f"{n}.out" for n in bodies] + ["_SUCCESS", "_report.json"])


def test_outputs_gathered_into_one_object_in_input_order(swift, copier, unique):
    bodies = inputs(swift, f"in-{unique}", 90)
    report = submit_job(swift, {"map": {"exec": copier, "inputs": [f"swift://~/in-{unique}/*"]},
                                "output": f"swift://~/out-{unique}/all.txt"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
    assert report["outputs"] == [f"swift://AUTH_test/out-{unique}/all.txt"]
    # Listing order is name order: the gathered object follows it, whatever order
    # the tasks finished in.
    expected = b"".join(bodies[name] for name in sorted(bodies))
    assert swift.get_object(f"out-{unique}", "all.txt")[1] == expected
    assert [t["bytes_out"] for t in report["tasks"]] == [len(bodies[n]) for n in sorted(bodies)]
    assert sorted(listing(swift, f"out-{unique}")) == ["_SUCCESS", "_report.json", "all.txt"]


def test_a_failed_task_leaves_no_gathered_object(swift, copier, unique):
    inputs(swift, f"in-{unique}", 30)
    swift.put_object(f"in-{unique}", "rec-0017", b"trap\n")
    report = submit_job(swift, {"map": {"exec": copier, "inputs": [f"swift://~/in-{unique}/*"]},
                                "output": f"swift://~/out-{unique}/all.txt"})
    assert report["status"] == "failed" and report["outputs"] == []
    (failed,) = [t for t in report["tasks"] if t["error"]]
    assert failed["input"].endswith("/rec-0017") and "out-of-bounds" in failed["error"]
    with pytest.raises(ClientException) as err:
        swift.head_object(f"out-{unique}", "all.txt")
    assert err.value.http_status == 404
    assert "_SUCCESS" not in listing(swift, f"out-{unique}")


@pytest.fixture(scope="module")
def heartbeating(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "heartbeat",
                           # One group in flight per job: its tasks run one after another.
                           proxy_options={"heartbeat_s": "0.3", "concurrency": "1"})


def test_long_synchronous_job_keeps_its_connection_alive(heartbeating, sleepy_wasm):
    """A job 10x longer than the client's read timeout still returns its report.

    The proportions of a 10-minute job and a 60 s timeout: here about 10 s of
    work, a client that gives up after 1.2 s without a byte, a heartbeat every
    0.3 s.
    """
    swift = heartbeating.connection()
    swift.put_container("apps")
    swift.put_object("apps", "sleepy.wasm", sleepy_wasm)
    swift.put_container("in")
    for i in range(16):
        swift.put_object("in", f"o{i}", b"x\n")
    manifest = {"map": {"exec": "swift://~/apps/sleepy.wasm", "args": ["600"],
                        "inputs": ["swift://~/in/*"]},
                "output": "swift://~/out/*", "backup_tasks": False}
    url, token = swift.get_auth()
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=1.2)
    started = time.monotonic()
    conn.request("POST", parsed.path, body=json.dumps(manifest), headers={
        "X-Auth-Token": token, "X-Zerocompute-Execute": "1"})
    resp = conn.getresponse()  # raises TimeoutError if nothing comes for 1.2 s
    first_byte = None
    body = b""
    while chunk := resp.read1(65536):
        first_byte = first_byte or time.monotonic() - started
        body += chunk
    took = time.monotonic() - started
    assert resp.status == 200
    report = json.loads(body)
    assert report["status"] == "succeeded", report
    assert took > 6 * 1.2, f"the job took {took:.1f} s: too short to prove anything"
    assert first_byte < took / 2, "the body started only when the report was ready"
    assert body.startswith(b" ")
