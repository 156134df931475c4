"""Placement under load and failure, on a cluster of its own (object1 has one slot)."""

import http.client
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.direct import object_on, task_request
from tests.functional.helpers import own_cluster
from zerocompute import wire
from zerocompute.client import submit_job


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "uneven", slots={"object1": 1})


@pytest.fixture(scope="module")
def staged(uneven, sleepy_wasm):
    """40 inputs and the sleepy guest, as test:tester."""
    swift = uneven.connection()
    swift.put_container("apps")
    swift.put_object("apps", "sleepy.wasm", sleepy_wasm)
    swift.put_container("in")
    for i in range(40):
        swift.put_object("in", f"part-{i:02d}", f"input {i}\n".encode() * (i + 1))
    return swift


def label(server):
    return f"127.0.0.1:{server.port}/sd{server.name[6:]}"


def load(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{wire.LOAD_PATH}",
                                timeout=5) as resp:
        return json.loads(resp.read())


def occupy(cluster, server, wasm, ms):
    """Another tenant's task on ``server`` (sent as the proxy would): holds a slot."""
    (path,) = object_on(cluster, server, "test2:tester2", "bg")
    req = task_request(cluster, server.port, path, wasm, [str(ms)], "background")
    outcome: list = []

    def send():
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                outcome.append((resp.status, dict(resp.headers), resp.read()[:200]))
        except Exception as err:  # noqa: BLE001 - reported by the test
            outcome.append(repr(err))
    thread = threading.Thread(target=send, daemon=True)
    thread.outcome = outcome
    thread.start()
    deadline = time.monotonic() + 10
    while load(server)["running"] < 1:
        assert time.monotonic() < deadline, "background task did not start"
        time.sleep(0.05)
    return thread


def manifest(out, ms=200, scheduler="load-aware"):
    return {"name": out, "scheduler": scheduler,
            "map": {"exec": "swift://~/apps/sleepy.wasm", "args": [str(ms)],
                    "inputs": ["swift://~/in/*"]},
            "output": f"swift://~/{out}/*"}


def test_load_aware_steers_tasks_away_from_a_busy_node(uneven, staged, sleepy_wasm):
    busy = uneven.server("object1")
    # Busy for far longer than the job takes, even on a slow, shared machine.
    background = occupy(uneven, busy, sleepy_wasm, 30_000)
    t0 = time.monotonic()
    report = submit_job(staged, manifest("steered"))
    took = time.monotonic() - t0
    assert report["status"] == "succeeded", json.dumps(report, indent=1)
    assert background.is_alive(), (f"the busy node's task ended early ({took:.1f} s): "
                                   f"{background.outcome}\n{json.dumps(report, indent=1)}")

    ring = uneven.object_ring()
    could_run_there = [t for t in report["tasks"] if busy.port in {
        n["port"] for n in ring.get_nodes("AUTH_test", "in", t["input"].rsplit("/", 1)[1])[1]}]
    ran_there = [t for t in report["tasks"] if t["node"] == label(busy)]
    # Most inputs have a replica on the busy node; the scheduler sent none there.
    assert len(could_run_there) >= 20
    assert ran_there == [], json.dumps(ran_there, indent=1)
    assert all(t["local"] for t in report["tasks"])


def test_killed_object_server_mid_job(uneven, staged):
    reference = submit_job(staged, manifest("reference", ms=50))
    assert reference["status"] == "succeeded"

    victim = uneven.server("object2")
    killed = threading.Event()

    def kill_when_busy():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if load(victim)["running"] >= 1:
                    uneven.kill(victim)  # SIGKILL, tasks in flight
                    killed.set()
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.02)
    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    try:
        report = submit_job(staged, manifest("after-kill", ms=400))
    finally:
        killer.join(30)
        uneven.restart(victim)
    assert killed.is_set()

    assert report["status"] == "succeeded", json.dumps(report, indent=1)
    retried = [t for t in report["tasks"]
               if any(r["node"] == label(victim) for r in t["retries"])]
    assert retried, "the report shows no task retried after the kill"
    for task in retried:
        assert task["node"] != label(victim) and task["attempts"] >= 2
    # The output equals the fault-free run's, object for object.
    names = sorted(t["output"].rsplit("/", 1)[1] for t in report["tasks"])
    assert names == sorted(t["output"].rsplit("/", 1)[1] for t in reference["tasks"])
    for name in names:
        assert staged.get_object("after-kill", name)[1] == \
            staged.get_object("reference", name)[1]
    assert "_SUCCESS" in [o["name"] for o in staged.get_container("after-kill")[1]]


def test_cancelled_attempt_stops_its_guest(uneven, staged, sleepy_wasm):
    """When the proxy hangs up (a backup won elsewhere), the object server stops the guest."""
    server = uneven.server("object3")
    (path,) = object_on(uneven, server, "test2:tester2", "cancel-me")
    req = task_request(uneven, server.port, path, sleepy_wasm, ["30000"], "cancel-me")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request(req.get_method(), wire.TASKS_PATH, body=req.data,
                 headers=dict(req.header_items()))
    deadline = time.monotonic() + 20
    while load(server)["running"] < 1:
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.05)
    conn.close()  # what the proxy does to an attempt that lost the race
    hung_up_at = time.monotonic()
    while load(server)["running"] > 0:
        # The guest would sleep for 30 s; a cancelled one is gone long before.
        assert time.monotonic() - hung_up_at < 15, "the cancelled guest kept running"
        time.sleep(0.1)
    # The server runs the next task normally.
    report = submit_job(staged, manifest("after-cancel", ms=10))
    assert report["status"] == "succeeded"
