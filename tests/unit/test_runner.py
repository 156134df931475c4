"""The proxy side's harder paths against fakes (``tests/unit/fakes.py``): a lost map
output, a chain of steps, execution on GET, large objects' segments, inputs streamed
through the proxy, and the exchange that sends a node the executables it lacks.

The proxy filter, its jobs and its dispatcher are the real code; the Swift
behind it is a dict and the object servers answer task groups in memory
(``FakeNodes``: only the HTTP request is fake), except in the last tests, where
a real HTTP server on loopback receives the dispatcher's requests.
"""

import hashlib
import json

import eventlet
import pytest
from eventlet import wsgi
from swift.common.swob import Request, Response

from tests.unit.fakes import WASM, CutShort, FakeNodes, FakeSwift, config, manifest, post
from zerocompute import wire
from zerocompute.manifest import SwiftPath
from zerocompute.middleware.proxy import ProxyMiddleware
from zerocompute.middleware.proxy.context import JobContext
from zerocompute.middleware.proxy.dispatch import Dispatcher
from zerocompute.middleware.proxy.outputs import SPOOL_MEMORY
from zerocompute.middleware.proxy.runner import shared_run
from zerocompute.placement import node_key

WASM_ETAG = hashlib.md5(WASM, usedforsecurity=False).hexdigest()


def proxy(swift_dir, answer, **options):
    """The proxy filter over a fake Swift holding ``apps/g.wasm`` and four inputs."""
    app = FakeSwift()
    app.objects["/v1/AUTH_a/apps/g.wasm"] = WASM
    for i in range(4):
        app.objects[f"/v1/AUTH_a/in/part-{i}"] = f"input {i}\n".encode()
    mw = ProxyMiddleware(app, config(swift_dir, **options))
    mw.dispatcher = FakeNodes(answer)
    return mw


def ran(output=b"", **result):
    def answer(port, group, spec, streamed):
        return wire.TaskResult(spec.task, exit=0, **result), output
    return answer


# -- a lost map output -------------------------------------------------------------------
def test_a_lost_map_output_reruns_that_map_elsewhere_and_the_reduce_gets_its_new_place(
        swift_dir):
    lost_once = []

    def answer(port, group, spec, streamed):
        if group.kind == "map":
            return wire.TaskResult(spec.task, exit=0, partitions=[5, 5]), b""
        if spec.reduce_partition == 0 and not lost_once:
            lost_once.append([m for _, m in spec.sources])
            return wire.TaskResult(spec.task, lost=["m00001"],
                                   error="map output lost: m00001"), b""
        return wire.TaskResult(spec.task, exit=0), f"part {spec.reduce_partition}".encode()
    mw = proxy(swift_dir, answer)
    resp, report = post(mw, manifest(
        reduce={"exec": "swift://~/apps/g.wasm", "partitions": 2}, output="swift://~/out/"))
    assert report["status"] == "succeeded", report
    sent = mw.dispatcher
    first_node = {spec.task: port for port, group in sent.groups("map")[:-1]
                  for spec in group.tasks}["m00001"]
    maps = [(port, spec.task) for port, group in sent.groups("map") for spec in group.tasks]
    assert [t for _, t in maps].count("m00001") == 2, "the map that lost its output ran again"
    again = [port for port, task in maps if task == "m00001"][-1]
    assert again != first_node, "on another replica than the one that lost it"
    reduces = [spec for _, group in sent.groups("reduce") for spec in group.tasks
               if spec.reduce_partition == 0]
    assert len(reduces) == 2
    assert dict((m, n) for n, m in reduces[-1].sources)["m00001"] == node_key(
        {"ip": "127.0.0.1", "port": again}), "the reduce fetches it from its new node"
    (m1,) = [t for t in report["tasks"] if t["task"] == "m00001"]
    assert [r["error"] for r in m1["retries"]] == ["map output lost: a reduce could not fetch it"]
    assert mw.app.objects["/v1/AUTH_a/out/part-00000"] == b"part 0"


# -- large outputs, streamed into their PUT ------------------------------------------------
LARGE = SPOOL_MEMORY * 2 + 3  # past what is spooled: it streams from its node


def part_of(partition):
    return bytes([65 + partition]) * LARGE


def reduce_job(mw):
    return post(mw, manifest(reduce={"exec": "swift://~/apps/g.wasm", "partitions": 2},
                             output="swift://~/out/"))


def large_parts(cut=None):
    """Maps that shuffle, reduces whose parts are LARGE; ``cut(partition, runs)`` may
    make a part's stream die part way (a CutShort)."""
    runs = {}

    def answer(port, group, spec, streamed):
        if group.kind == "map":
            return wire.TaskResult(spec.task, exit=0, partitions=[5, 5]), b""
        partition = spec.reduce_partition
        runs[partition] = runs.get(partition, 0) + 1
        out = part_of(partition)
        if cut is not None and cut(partition, runs[partition]):
            out = CutShort(out, SPOOL_MEMORY)
        return wire.TaskResult(spec.task, exit=0), out
    return answer, runs


def test_a_large_part_streams_into_its_put_whole(swift_dir):
    answer, runs = large_parts()
    mw = proxy(swift_dir, answer)
    resp, report = reduce_job(mw)
    assert report["status"] == "succeeded", report
    assert runs == {0: 1, 1: 1}
    for partition in range(2):
        assert mw.app.objects[f"/v1/AUTH_a/out/part-{partition:05d}"] == part_of(partition)
    (r1,) = [t for t in report["tasks"] if t["kind"] == "reduce" and t["input"] == "partition 1"]
    assert r1["bytes_out"] == LARGE and r1["error"] is None


def test_a_large_part_whose_put_is_refused_fails_the_job_and_leaves_no_part(swift_dir):
    answer, runs = large_parts()
    mw = proxy(swift_dir, answer)
    mw.app.errors[("PUT", "/v1/AUTH_a/out/part-00001")] = [413]
    resp, report = reduce_job(mw)
    assert report["status"] == "failed"
    assert runs == {0: 1, 1: 1}, "a refusal is the same anywhere: not run again"
    (r1,) = [t for t in report["tasks"] if t["kind"] == "reduce" and t["input"] == "partition 1"]
    assert r1["error"] == "writing output swift://AUTH_a/out/part-00001 failed: 413 " \
                          "Request Entity Too Large"
    left = [p for p in mw.app.objects if p.startswith("/v1/AUTH_a/out/")]
    assert left == ["/v1/AUTH_a/out/_report.json"], "no part, no _SUCCESS"


def test_a_large_part_whose_put_fails_on_the_server_runs_its_reduce_again(swift_dir):
    answer, runs = large_parts()
    mw = proxy(swift_dir, answer)
    mw.app.errors[("PUT", "/v1/AUTH_a/out/part-00000")] = [503]
    resp, report = reduce_job(mw)
    assert report["status"] == "succeeded", report
    assert runs == {0: 2, 1: 1}, "its bytes were sent once: only a new run has them"
    assert mw.app.objects["/v1/AUTH_a/out/part-00000"] == part_of(0)
    (r0,) = [t for t in report["tasks"] if t["kind"] == "reduce" and t["input"] == "partition 0"]
    assert [r["error"] for r in r0["retries"]] == [
        "reading its output failed: OutputLost: writing output "
        "swift://AUTH_a/out/part-00000 failed: 503 Service Unavailable"]


def test_a_large_part_cut_short_by_its_node_is_never_committed_and_runs_again(swift_dir):
    answer, runs = large_parts(cut=lambda partition, run: partition == 1 and run == 1)
    mw = proxy(swift_dir, answer)
    resp, report = reduce_job(mw)
    assert report["status"] == "succeeded", report
    assert runs == {0: 1, 1: 2}
    assert mw.app.objects["/v1/AUTH_a/out/part-00001"] == part_of(1)
    (r1,) = [t for t in report["tasks"] if t["kind"] == "reduce" and t["input"] == "partition 1"]
    assert [r["error"] for r in r1["retries"]] == [
        "reading its output failed: ConnectionResetError: the node went away"]


# -- steps ----------------------------------------------------------------------------------
def test_a_steps_output_is_the_next_steps_input(swift_dir):
    def answer(port, group, spec, streamed):
        source = dict(spec.env)["ZEROCOMPUTE_INPUT"].rsplit("/", 1)[1]
        return wire.TaskResult(spec.task, exit=0), f"{group.args[0]}({source})".encode()
    mw = proxy(swift_dir, answer)
    resp, report = post(mw, json.dumps({"name": "chain", "steps": [
        {"map": {"exec": "swift://~/apps/g.wasm", "args": ["one"],
                 "inputs": ["swift://~/in/part-*"]}, "output": "swift://~/mid/*.m"},
        {"map": {"exec": "swift://~/apps/g.wasm", "args": ["two"]},
         "output": "swift://~/end/*.e"}]}).encode())
    assert report["status"] == "succeeded", report
    second = [t for t in report["tasks"] if t["step"] == 1]
    assert sorted(t["input"] for t in second) == [f"swift://AUTH_a/mid/{i}.m" for i in range(4)]
    assert mw.app.objects["/v1/AUTH_a/mid/2.m"] == b"one(part-2)"
    assert mw.app.objects["/v1/AUTH_a/end/2.e"] == b"two(2.m)"
    assert report["id"] and all(
        mw.app.meta[f"/v1/AUTH_a/mid/{i}.m"]["X-Object-Meta-Zerocompute-Job"]
        == f"{report['id']}-0" for i in range(4)), "each step's outputs carry its id"
    assert all(mw.app.meta[f"/v1/AUTH_a/end/{i}.e"]["X-Object-Meta-Zerocompute-Job"]
               == f"{report['id']}-1" for i in range(4))


# -- execution on GET ------------------------------------------------------------------------
def get_run(mw, path, **headers):
    req = Request.blank(path, headers={wire.RUN_HEADER: "swift://~/apps/g.wasm", **headers})
    with eventlet.Timeout(10):
        return req.get_response(mw)


def test_execution_on_get_answers_the_guests_output_over_a_range(swift_dir):
    seen = []

    def answer(port, group, spec, streamed):
        seen.append(spec)
        return wire.TaskResult(spec.task, exit=0), b"guest says hi"
    mw = proxy(swift_dir, answer)
    resp = get_run(mw, "/v1/AUTH_a/in/part-3", Range="bytes=2-4")
    assert resp.status_int == 200 and resp.body == b"guest says hi"
    (spec,) = seen
    assert spec.split == (2, 5) and spec.exact, "exactly the bytes asked for"
    assert spec.path == "/AUTH_a/in/part-3"
    assert resp.headers[wire.NODE_HEADER] in {f"127.0.0.1:{p}/sd{p}" for p in (1, 2, 3)}
    assert resp.headers["X-Zerocompute-Local"] == "true"


def test_execution_on_get_answers_a_failed_guest_with_its_error(swift_dir):
    def answer(port, group, spec, streamed):
        return wire.TaskResult(spec.task, exit=3, stderr="it broke"), b"half"
    mw = proxy(swift_dir, answer)
    resp = get_run(mw, "/v1/AUTH_a/in/part-1")
    assert resp.status_int == 422
    body = json.loads(resp.body)
    assert body["error"] == "guest exited with status 3" and body["stderr"] == "it broke"
    missing = get_run(mw, "/v1/AUTH_a/in/nothing")
    assert missing.status_int == 400 and json.loads(missing.body)["field"] == "path"


# -- large objects' segments -------------------------------------------------------------------
SEGMENTS = [b"first line\nsecond li", b"ne\nthird", b" line\nfourth line\n"]


def segmented(swift: FakeSwift, kind: str) -> SwiftPath:
    """A large object of ``SEGMENTS`` (lines cut across segments), as an SLO or a DLO."""
    swift.containers.add("/v1/AUTH_a/segs")
    for number, data in enumerate(SEGMENTS):
        swift.objects[f"/v1/AUTH_a/segs/big/{number:03d}"] = data
    path = "/v1/AUTH_a/in/big"
    swift.objects[path] = b""
    if kind == "slo":
        swift.headers[path] = {"X-Static-Large-Object": "True"}
        swift.manifests[path] = json.dumps([
            {"name": f"/segs/big/{n:03d}", "bytes": len(d)} for n, d in enumerate(SEGMENTS)
        ]).encode()
    else:
        swift.headers[path] = {"X-Object-Manifest": "segs/big/"}
    return SwiftPath("AUTH_a", "in", "big")


@pytest.mark.parametrize("kind", ["slo", "dlo"])
def test_a_large_objects_segments_each_read_whole_lines(swift_dir, kind):
    app = FakeSwift()
    ctx = JobContext(Request.blank("/v1/AUTH_a"), app, config(swift_dir), None)
    (found,) = ctx.expand_input(segmented(app, kind))
    assert [str(s.path) for s in found.segments] == [
        f"swift://AUTH_a/segs/big/{n:03d}" for n in range(3)]
    pieces = [data[segment.skip:] + segment.carry
              for data, segment in zip(SEGMENTS, found.segments, strict=True)]
    assert b"".join(pieces) == b"".join(SEGMENTS), "every line read once"
    assert pieces == [b"first line\nsecond line\n", b"third line\n", b"fourth line\n"], \
        "each segment's task reads the lines that begin in it, whole"


# -- inputs streamed through the proxy -------------------------------------------------------
def test_an_input_encrypted_at_rest_is_streamed_through_the_proxy(swift_dir):
    def answer(port, group, spec, streamed):
        if spec.stream_bytes < 0:  # read in place: the node finds ciphertext
            return wire.TaskResult(spec.task, error=wire.ENCRYPTED_INPUT), b""
        assert spec.ec is None and len(streamed) == spec.stream_bytes
        return wire.TaskResult(spec.task, exit=0), b"saw " + streamed
    mw = proxy(swift_dir, answer)
    resp, report = post(mw, manifest(map={"exec": "swift://~/apps/g.wasm",
                                          "inputs": ["swift://~/in/part-2"]},
                                     output="swift://~/out/two.o"))
    assert report["status"] == "succeeded", report
    (task,) = report["tasks"]
    assert [r["error"] for r in task["retries"]] == [wire.ENCRYPTED_INPUT]
    assert task["local"] is False, "streamed: read through the proxy, not in place"
    assert mw.app.objects["/v1/AUTH_a/out/two.o"] == b"saw input 2\n"


def test_encrypted_inputs_fail_clearly_when_the_operator_streams_none(swift_dir):
    def answer(port, group, spec, streamed):
        return wire.TaskResult(spec.task, error=wire.ENCRYPTED_INPUT), b""
    mw = proxy(swift_dir, answer, stream_encrypted_inputs=False)
    resp, report = post(mw, manifest(map={"exec": "swift://~/apps/g.wasm",
                                          "inputs": ["swift://~/in/part-2"]},
                                     output="swift://~/out/two.o"))
    assert report["status"] == "failed"
    assert "stream_encrypted_inputs = false" in report["tasks"][0]["error"]
    assert not [s for _, _, _, s, _ in mw.dispatcher.sent if s], "nothing was streamed"


# -- the executables a node lacks ------------------------------------------------------------
def test_a_node_gets_each_executable_once_when_it_asks(swift_dir):
    mw = proxy(swift_dir, ran(b"out"), max_group=1)
    resp, report = post(mw, manifest())
    assert report["status"] == "succeeded", report
    by_node: dict[int, list[bytes]] = {}
    for port, _group, executable, _streamed, _ran in mw.dispatcher.sent:
        by_node.setdefault(port, []).append(executable)
    for sent in by_node.values():
        assert sent[0] == b"" and sent[1] == WASM, "the first group asks; the resend has it"
        assert all(e == b"" for e in sent[2:]), "then the node has it: never sent again"


class TaskServer:
    """An object server's task endpoint on loopback, as the filter answers: it checks
    the group's signature (403), asks for an executable it lacks (412), then runs."""

    def __init__(self, secret="secret"):
        self.secret = secret
        self.requests = []  # (executable bytes in the body, content length, group length)
        self.cached: set[str] = set()
        self.sock = eventlet.listen(("127.0.0.1", 0))
        self.node = {"ip": "127.0.0.1", "port": self.sock.getsockname()[1], "device": "sd1"}
        self.server = eventlet.spawn(wsgi.server, self.sock, self.app, log_output=False)

    def app(self, env, start_response):
        req = Request(env)
        length = int(req.headers[wire.GROUP_LENGTH_HEADER])
        head = req.body_file.read(length)
        rest = req.body_file.read()
        self.requests.append((rest, int(req.content_length), length))
        try:
            group = wire.verify_group(self.secret, req.method, req.path_info, req.headers,
                                      head)
        except wire.BadSignature:
            return Response(status=403)(env, start_response)
        if rest:
            self.cached.add(hashlib.md5(rest, usedforsecurity=False).hexdigest())
        if group.exec_etag not in self.cached:
            return Response(status=412, headers={
                wire.NEED_EXECUTABLE_HEADER: group.exec_etag})(env, start_response)
        frames = b"".join(wire.TaskResult(spec.task, exit=0).frame_head()
                          for spec in group.tasks)
        return Response(status=200, body=frames)(env, start_response)

    def close(self):
        self.server.kill()
        self.sock.close()


def open_and_read(dispatcher, node, group, executables):
    resp = dispatcher.open_group(node, group, executables)
    frames = [r.task for r, _, _ in wire.read_frames(resp)] if resp.status == 200 else []
    resp.connection.close()
    return resp.status, frames


def test_the_dispatcher_signs_groups_and_answers_a_412_with_the_executable():
    servers = [TaskServer(), TaskServer()]
    dispatcher = Dispatcher("secret", 1.0, None, max_busy_wait_s=5.0)
    group = wire.TaskGroup(job="j", exec_etag=WASM_ETAG, exec_name="g.wasm", runtime="wasm",
                           args=(), env=(), limits=wire.Limits.from_dict({}),
                           tasks=(wire.TaskSpec("m1", "sd1", 0, "/a/c/o"),))
    try:
        with eventlet.Timeout(10):
            first = open_and_read(dispatcher, servers[0].node, group, {WASM_ETAG: WASM})
            cached = open_and_read(dispatcher, servers[0].node, group, {WASM_ETAG: WASM})
            lacking = open_and_read(dispatcher, servers[1].node, group, {})
            forged = open_and_read(Dispatcher("other", 1.0, None, max_busy_wait_s=5.0),
                                   servers[1].node, group, {WASM_ETAG: WASM})
    finally:
        for server in servers:
            server.close()
    assert first == (200, ["m1"]) and cached == (200, ["m1"])
    (asked, resent, again) = servers[0].requests
    assert asked[0] == b"" and resent[0] == WASM, "the executable goes when the node asks"
    assert resent[1] == resent[2] + len(WASM), "the length covers the group and it"
    assert again[0] == b"", "never again to a node that has it"
    assert lacking == (412, []), "a node's need the dispatcher cannot meet: its 412"
    assert forged == (403, []), "a group signed with another secret is refused"


def test_only_a_phase_of_several_tasks_names_its_run_for_a_shared_interpreter():
    assert shared_run("job-id", ["one task"]) == ""
    assert shared_run("job-id", ["a", "b"]) == "job-id"
