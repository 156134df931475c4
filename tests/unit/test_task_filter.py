"""The object-server filter, as Swift tests its servers: real DiskFiles in a
temporary directory, a fake app behind the filter, and a stub executor pool
in place of the wasmtime processes (``tests/unit/test_sandbox.py`` and the
functional tests cover those)."""

import hashlib
import json
import os

import pytest
import wasmtime
from swift.common.storage_policy import POLICIES
from swift.common.swob import Request, Response
from swift.common.utils import Timestamp

from tests.direct import frames
from zerocompute import wire
from zerocompute.manifest import Limits
from zerocompute.middleware.task import TaskFilterConfig, TaskMiddleware
from zerocompute.sandbox.executor import CANCELLED

SECRET = "s3cret"
WASM = bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
ETAG = hashlib.md5(WASM).hexdigest()


class StubPool:
    """Runs a "guest" that upper-cases its input, or answers what it is told."""

    def __init__(self):
        self.calls = []
        self.reply = None

    def run(self, task, fds, time_s, client=None):
        self.calls.append(task)
        (spec,) = task.tasks
        if self.reply is not None:
            return wire.TaskResult(spec.task, **self.reply)
        data = os.pread(fds[0], 1 << 20, 0)
        with open(f"/proc/self/fd/{fds[1]}", "wb") as out:
            out.write(data.upper())
        return wire.TaskResult(spec.task, exit=0, stdout_bytes=len(data), ms=3.0)


class App:
    def __init__(self):
        self.calls = []

    def __call__(self, env, start_response):
        self.calls.append((env["REQUEST_METHOD"], env["PATH_INFO"]))
        return Response(status=204)(env, start_response)


@pytest.fixture
def server(tmp_path):
    conf = {"devices": str(tmp_path / "srv"), "mount_check": "false"}
    os.makedirs(tmp_path / "srv" / "sda1")
    config = TaskFilterConfig(secret=SECRET, slots=2, queue=1, cache_dir=str(tmp_path / "cache"))
    mw = TaskMiddleware(App(), config, pool=StubPool(), conf=conf)
    return mw


def put_object(server, name, data, **metadata):
    policy = POLICIES[0]
    df = server.diskfile_router[policy].get_diskfile("sda1", "7", "AUTH_a", "c", name,
                                                     policy=policy)
    timestamp = Timestamp.now()
    with df.create() as writer:
        writer.write(data)
        writer.put({"ETag": hashlib.md5(data).hexdigest(), "X-Timestamp": timestamp.internal,
                    "Content-Length": str(len(data)), "name": f"/AUTH_a/c/{name}",
                    "Content-Type": "text/plain", **metadata})
        writer.commit(timestamp)
    return f"/AUTH_a/c/{name}"


def group(*names, device="sda1"):
    return wire.TaskGroup(job="j", exec_etag=ETAG, exec_name="g.wasm", runtime="wasm",
                          args=("x",), env=(("A", "1"),), limits=Limits.from_conf({}),
                          tasks=tuple(wire.TaskSpec(f"t{i}", device, 7, f"/AUTH_a/c/{n}", 0,
                                                    (("ZEROCOMPUTE_TASK", f"t{i}"),))
                                      for i, n in enumerate(names)))


def send(server, grp, executable=b"", secret=SECRET, tamper=None):
    body, headers = wire.sign_group(secret, grp)
    if tamper:
        body = tamper(body)
    req = Request.blank(wire.TASKS_PATH, method=wire.METHOD, headers=headers,
                        body=body + executable)
    return req.get_response(server)


def run_group(server, grp):
    resp = send(server, grp, WASM)
    assert resp.status_int == 200, resp.body
    return frames(resp.body)


def test_runs_each_task_of_a_group_in_order_and_streams_its_output(server):
    for name in ("a", "b", "c"):
        put_object(server, name, f"data of {name}\n".encode())
    got = run_group(server, group("a", "b", "c"))
    assert [(r.task, r.exit, out) for r, out in got] == [
        ("t0", 0, b"DATA OF A\n"), ("t1", 0, b"DATA OF B\n"), ("t2", 0, b"DATA OF C\n")]
    assert all(r.bytes_in == 10 and r.load.startswith("running=") for r, _ in got)
    task = server.pool.calls[1]
    assert task.tasks[0].task == "t1" and task.args == ("x",) and task.env == (("A", "1"),)
    assert task.tasks[0].env == (("ZEROCOMPUTE_TASK", "t1"),)
    assert server.app.calls == [], "a task never reaches the object server app"
    assert (server.admission.total, server.pending, server.waiting, server.running) == \
        (0, 0, 0, 0)


def test_an_object_this_node_lacks_is_handed_back_and_the_rest_still_runs(server):
    put_object(server, "here", b"x\n")
    got = run_group(server, group("gone", "here"))
    assert got[0][0].retry == "404 object not on this node" and got[0][0].exit is None
    assert got[1][0].exit == 0 and got[1][1] == b"X\n"
    assert len(server.pool.calls) == 1


def test_a_missing_device_is_handed_back(server):
    got = run_group(server, group("a", device="sdz9"))
    assert got[0][0].retry and got[0][0].retry.startswith(("404", "507"))


@pytest.mark.parametrize("metadata, words", [
    ({"X-Object-Sysmeta-Crypto-Body-Meta": "{}"}, "encrypted"),
    ({"X-Object-Sysmeta-Ec-Frag-Index": "2"}, "erasure-coded"),
    ({"X-Static-Large-Object": "True"}, "large-object"),
    ({"X-Object-Manifest": "segs/prefix"}, "large-object"),
])
def test_inputs_that_are_not_their_bytes_on_disk_are_refused(server, metadata, words):
    put_object(server, "odd", b"[]", **metadata)
    ((result, out),) = run_group(server, group("odd"))
    assert words in result.error and result.retry is None and out == b""
    assert server.pool.calls == [], "no guest ever saw those bytes"


@pytest.mark.parametrize("how", ["unsigned", "wrong secret", "tampered", "stale"])
def test_forged_groups_are_refused_and_run_nothing(server, how):
    put_object(server, "a", b"x\n")
    grp = group("a")
    if how == "unsigned":
        req = Request.blank(wire.TASKS_PATH, method=wire.METHOD, body=grp.encode() + WASM,
                            headers={wire.GROUP_LENGTH_HEADER: str(len(grp.encode()))})
        resp = req.get_response(server)
    elif how == "wrong secret":
        resp = send(server, grp, WASM, secret="other")
    elif how == "tampered":
        resp = send(server, grp, WASM, tamper=lambda b: b.replace(b'"x"', b'"y"'))
    else:
        body, headers = wire.sign_group(SECRET, grp, now=1.0)
        resp = Request.blank(wire.TASKS_PATH, method=wire.METHOD, headers=headers,
                             body=body).get_response(server)
    assert resp.status_int == 403
    assert server.pool.calls == []


def test_executable_is_asked_for_once_then_cached(server):
    put_object(server, "a", b"x\n")
    resp = send(server, group("a"))
    assert resp.status_int == 412 and resp.headers[wire.NEED_EXECUTABLE_HEADER] == ETAG
    assert server.pool.calls == []
    assert send(server, group("a"), WASM).status_int == 200
    ((result, out),) = frames(send(server, group("a")).body)
    assert result.exit == 0 and out == b"X\n"


def test_invalid_executable_is_refused(server):
    garbage = b"\0asm\x01\0\0\0garbage"
    grp = wire.TaskGroup(**{**group("a").__dict__, "exec_etag": hashlib.md5(garbage).hexdigest()})
    resp = send(server, grp, garbage)
    assert resp.status_int == 400 and b"invalid WebAssembly module" in resp.body
    mismatched = send(server, group("a"), garbage)
    assert mismatched.status_int == 400 and b"does not match its ETag" in mismatched.body


def test_a_full_server_answers_busy(server):
    for _ in range(server.slots + server.config.queue):
        server.admission.enter(group("a").account)
    resp = send(server, group("a"), WASM)
    assert resp.status_int == 503 and resp.headers["Retry-After"] == "1"
    assert wire.LOAD_HEADER in resp.headers


def test_load_probe_and_other_requests(server):
    resp = Request.blank(wire.LOAD_PATH).get_response(server)
    assert json.loads(resp.body) == {"running": 0, "queued": 0, "slots": 2, "service_ms": 50.0}
    assert Request.blank("/sda1/7/AUTH_a/c/o").get_response(server).status_int == 204
    assert server.app.calls == [("GET", "/sda1/7/AUTH_a/c/o")]


def test_only_completed_guests_feed_the_service_time(server):
    put_object(server, "a", b"x\n")
    server.pool.reply = {"error": CANCELLED}
    ((result, _),) = run_group(server, group("a"))
    assert result.error == CANCELLED and server.service_ms == 50.0 and server.completed == 0
    server.pool.reply = None
    run_group(server, group("a"))
    assert server.service_ms == 3.0 and server.completed == 1


def test_failed_guest_reports_its_exit_and_sends_no_output(server):
    put_object(server, "a", b"x\n")
    server.pool.reply = {"exit": 2, "stdout_bytes": 5, "stderr": "boom\n", "ms": 1.0}
    ((result, out),) = run_group(server, group("a"))
    assert result.exit == 2 and result.stderr == "boom\n" and out == b""
    assert result.stdout_bytes == 0


def shuffle_request(server, method, path, secret=SECRET, now=None):
    headers = wire.sign_request(secret, method, path, now=now)
    return Request.blank(path, method=method, headers=headers).get_response(server)


def keep_map_output(server, shuffle_id="feed", task="m00001", data=b"a\t1\n"):
    directory = os.path.join(server.shuffle_root, shuffle_id, task)
    os.makedirs(directory)
    with open(os.path.join(directory, "part-00002"), "wb") as f:
        f.write(data)
    return directory


def test_map_outputs_are_served_to_signed_requests_only(server):
    keep_map_output(server)
    path = wire.shuffle_path("feed", "m00001", 2)
    resp = shuffle_request(server, "GET", path)
    assert resp.status_int == 200 and resp.body == b"a\t1\n"
    assert shuffle_request(server, "GET", wire.shuffle_path("feed", "m00001", 3)).status_int \
        == 404
    for forged in (shuffle_request(server, "GET", path, secret="other"),
                   shuffle_request(server, "GET", path, now=1.0),
                   Request.blank(path).get_response(server)):
        assert forged.status_int == 403
    climbing = "/zerocompute/shuffle/../m00001/00002"
    assert shuffle_request(server, "GET", climbing).status_int == 400
    assert server.app.calls == []


def test_a_jobs_map_outputs_are_deleted_and_old_ones_reaped(server):
    kept = keep_map_output(server, "job1")
    old = keep_map_output(server, "job2")
    assert shuffle_request(server, "DELETE", wire.shuffle_path("job1")).status_int == 204
    assert not os.path.exists(kept) and os.path.exists(old)
    job2 = os.path.dirname(old)
    os.utime(job2, (1, 1))  # last touched long ago: its proxy never cleaned up
    keep_map_output(server, "job3")
    server.reaped_at = 0.0
    server.reap_shuffle()
    assert not os.path.exists(job2)
    assert os.path.exists(os.path.join(server.shuffle_root, "job3"))


def test_a_replayed_group_is_refused_and_runs_nothing_twice(server):
    put_object(server, "a", b"x\n")
    body, headers = wire.sign_group(SECRET, group("a"))

    def send_again():
        return Request.blank(wire.TASKS_PATH, method=wire.METHOD, headers=headers,
                             body=body + WASM).get_response(server)
    first = send_again()
    assert first.status_int == 200 and len(frames(first.body)) == 1
    again = send_again()
    assert again.status_int == 403 and b"replayed" in again.body
    assert len(server.pool.calls) == 1
