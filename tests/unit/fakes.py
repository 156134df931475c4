"""Fakes for the proxy side's unit tests: a Swift in a dict, object servers that
answer task groups frame by frame, and a ring of three of them.

The real code runs against them under eventlet (``Dispatcher``'s placement,
grouping, claims and backups; the proxy filter's checks, jobs and writes);
only the network ends are fake.
"""

import hashlib
import io
import json
import logging
import os
from urllib.parse import parse_qs, quote, unquote

import eventlet
import wasmtime
from swift.common import utils
from swift.common.ring import RingBuilder
from swift.common.storage_policy import POLICIES
from swift.common.swob import Request, Response

from zerocompute import wire
from zerocompute.manifest import Limits
from zerocompute.middleware.proxy.config import ProxyConfig
from zerocompute.middleware.proxy.dispatch import Dispatcher

WASM = bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
TEMPLATE = wire.TaskGroup(job="j", exec_etag="0" * 32, exec_name="g.wasm", runtime="wasm",
                          args=(), env=(), limits=wire.Limits.from_dict({"time_s": 10}), tasks=())


def node(port):
    return {"ip": "127.0.0.1", "port": port, "device": f"sd{port}"}


def wire_load(service_ms, slots=1):
    """What an idle node of one slot with this service time reports of itself."""
    return wire.LoadReport(0, 0, slots, service_ms, 0.0).header()


class FakeResponse:
    """An object server's streamed answer: one frame per task, each after ``delay``."""

    def __init__(self, behaviour, group, stream):
        self.status = behaviour.get("status", 200)
        self.behaviour = behaviour
        self.stream = stream
        self.frames = list(group.tasks)
        self.body = io.BytesIO()
        self.connection = self
        self.answered = 0

    def getheader(self, name, default=None):
        if name == "Retry-After" and self.status == 503:
            return "0.05"
        if name == wire.LOAD_HEADER and "service_ms" in self.behaviour:
            return wire_load(self.behaviour["service_ms"])
        return default

    def read(self, n=-1):
        if self.status != 200:
            return b"refused"
        return self.body.read(n)

    def readline(self, limit=-1):
        if not self.frames:
            return b""
        eventlet.sleep(self.behaviour.get("delay", 0))
        if self.stream is not None and self.stream.cancelled:
            raise ConnectionResetError("hung up")
        if self.behaviour.get("answered", 0) == self.behaviour.get("die_after", -1):
            self.behaviour["refuse"] = "node died"  # and stays dead
            raise ConnectionResetError("node died")
        self.behaviour["answered"] = self.behaviour.get("answered", 0) + 1
        spec = self.frames.pop(0)
        self.answered += 1
        if self.behaviour.get("retry"):
            result = wire.TaskResult(spec.task, retry=self.behaviour["retry"])
            out = b""
        else:
            out = f"out-{spec.task}-{spec.device}".encode()
            result = wire.TaskResult(spec.task, exit=self.behaviour.get("exit", 0),
                                     error=self.behaviour.get("error"),
                                     ms=self.behaviour.get("ms", 1.0), stdout_bytes=len(out))
        head = result.frame_head()
        self.body = io.BytesIO(out)
        return head

    def close(self):
        pass


class FakeDispatcher(Dispatcher):
    """The proxy's dispatcher, talking to fake object servers (``behaviour`` per port)."""

    def __init__(self, behaviour):
        super().__init__("secret", 0.1, logging.getLogger("test"), max_busy_wait_s=300.0)
        self.behaviour = behaviour
        self.groups = []  # (port, [task ids])
        self.probes = []

    def _probe_one(self, node):
        self.probes.append(node["port"])  # a node that never answers: the view stays unknown

    def open_group(self, node, group, executable, stream=None):
        self.groups.append((node["port"], [t.task for t in group.tasks]))
        behaviour = self.behaviour[node["port"]]
        if behaviour.get("refuse"):
            eventlet.sleep(0)
            self.errors.limit(node)  # as Dispatcher._send does when it cannot connect
            raise ConnectionRefusedError(behaviour["refuse"])
        if behaviour.get("busy_once"):
            behaviour.pop("busy_once")
            return FakeResponse({"status": 503}, group, stream)
        if behaviour.get("busy"):
            return FakeResponse({"status": 503}, group, stream)
        return FakeResponse(behaviour, group, stream)


class FakeSwift:
    """Accounts, containers and objects in a dict; ``errors`` overrides answers."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.containers = {"/v1/AUTH_a/apps", "/v1/AUTH_a/in"}
        self.calls: list[tuple[str, str]] = []
        self.meta: dict[str, dict[str, str]] = {}  # object path -> X-Object-Meta-* headers
        self.headers: dict[str, dict[str, str]] = {}  # object path -> more headers it has
        self.put_headers: dict[str, dict[str, str]] = {}  # object path -> its PUT's headers
        self.manifests: dict[str, bytes] = {}  # SLO path -> its multipart-manifest=get
        self.errors: dict[tuple[str, str], list] = {}  # (method, path) -> statuses/exceptions

    def __call__(self, env, start_response):
        req = Request(env)
        method, path = req.method, req.path
        self.calls.append((method, path))
        authorize = env.get("swift.authorize")
        denial = authorize(req) if authorize else None  # as the proxy server does
        if denial is not None:
            return denial(env, start_response)
        planned = self.errors.get((method, path))
        if planned:
            outcome = planned.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            req.body  # noqa: B018 - a real server reads what it is sent
            return Response(status=outcome)(env, start_response)
        parts = path.split("/", 4)
        if len(parts) == 3:
            return Response(status=204)(env, start_response)
        container = "/".join(parts[:4])
        if len(parts) == 4:
            return self.container(req, container)(env, start_response)
        if container not in self.containers:
            return Response(status=404)(env, start_response)
        if method == "PUT":
            self.objects[path] = req.body
            self.meta[path] = {k: v for k, v in req.headers.items()
                               if k.lower().startswith("x-object-meta-")}
            self.put_headers[path] = dict(req.headers)
            return Response(status=201)(env, start_response)
        if method == "DELETE":
            found = self.objects.pop(path, None)
            return Response(status=204 if found is not None else 404)(env, start_response)
        if path not in self.objects:
            return Response(status=404)(env, start_response)
        if path in self.manifests and "multipart-manifest=get" in req.query_string:
            return Response(status=200, body=self.manifests[path])(env, start_response)
        body = self.objects[path]
        resp = Response(status=200, body=body, request=req, conditional_response=True,
                        headers={**self.meta.get(path, {}), **self.headers.get(path, {})})
        return resp(env, start_response)

    def container(self, req, container):
        if req.method == "PUT":
            self.containers.add(container)
            return Response(status=201)
        if container not in self.containers:
            return Response(status=404)
        if req.method == "HEAD":
            return Response(status=204, headers={"X-Backend-Storage-Policy-Index": "0"})
        query = {k: v[0] for k, v in parse_qs(req.query_string).items()}
        # As Swift lists them: unquoted (a reserved name begins with "\x00").
        names = sorted(unquote(p[len(container) + 1:]) for p in self.objects
                       if p.startswith(container + "/"))
        names = [n for n in names if n.startswith(query.get("prefix", ""))
                 and n > query.get("marker", "")][:int(query.get("limit", 10000))]
        body = json.dumps([{"name": n, "bytes": len(self.objects[f"{container}/{quote(n)}"])}
                           for n in names]).encode()
        return Response(status=200, body=body, content_type="application/json")

    def puts(self, prefix="/v1/AUTH_a/out"):
        return [p for m, p in self.calls if m == "PUT" and p.startswith(prefix + "/")]



def make_ring(directory: str) -> tuple:
    """An object ring of three fake object servers (ports 1, 2, 3) in ``directory``,
    and a hash suffix for it; what to restore afterwards (the process may hold another
    cluster's)."""
    saved = utils.SWIFT_CONF_FILE, utils.HASH_PATH_PREFIX, utils.HASH_PATH_SUFFIX
    utils.HASH_PATH_SUFFIX = b"endcap"
    builder = RingBuilder(4, 3, 1)
    for i in range(3):
        builder.add_dev({"id": i, "region": 1, "zone": i + 1, "ip": "127.0.0.1",
                         "port": i + 1, "device": f"sd{i + 1}", "weight": 100.0})
    builder.rebalance()
    builder.get_ring().save(os.path.join(directory, "object.ring.gz"))
    POLICIES[0].object_ring = None
    POLICIES[0].load_ring(str(directory))
    return saved


def restore_ring(saved: tuple) -> None:
    POLICIES[0].object_ring = None
    utils.SWIFT_CONF_FILE, utils.HASH_PATH_PREFIX, utils.HASH_PATH_SUFFIX = saved


def config(swift_dir, **changes):
    values = dict(secret="s", swift_dir=swift_dir, maximum=Limits.from_conf({}),
                  default_scheduler="load-aware", max_tasks=100, max_manifest_bytes=4096,
                  max_executable_bytes=1 << 20, concurrency=4, max_group=8, backup_tasks=False,
                  backup_factor=2.0, backup_min_s=1.0, conn_timeout=0.1, max_busy_wait_s=5.0,
                  heartbeat_s=0.0, max_jobs_per_account=8)
    values.update(changes)
    return ProxyConfig(**values)


def manifest(**changes):
    doc = {"name": "j", "map": {"exec": "swift://~/apps/g.wasm", "inputs": ["swift://~/in/*"]},
           "output": "swift://~/out/*.o"}
    doc.update(changes)
    return json.dumps(doc).encode()


def post(mw, body):
    req = Request.blank("/v1/AUTH_a", method="POST", body=body,
                        headers={wire.EXECUTE_HEADER: "1"})
    with eventlet.Timeout(10):
        resp = req.get_response(mw)
    return resp, json.loads(resp.body)


class FakeNodes(Dispatcher):
    """The real dispatcher (its 412 exchange, its streamed inputs) over fake object
    servers: only ``_send``, the HTTP request, is fake.  Each node keeps the
    executables it was sent (by MD5) and asks for one it lacks with a 412, as the
    object-server filter does; ``answer(port, group, spec, streamed)`` says what a
    task does: a :class:`~zerocompute.wire.TaskResult` and its stdout."""

    def __init__(self, answer):
        super().__init__("secret", 0.1, logging.getLogger("test"), max_busy_wait_s=5.0)
        self.answer = answer
        self.cached: dict[int, set[str]] = {}
        # Every request: port, group, the executable sent with it, the input streamed
        # after it, whether the node ran it (or asked for an executable first).
        self.sent: list[tuple[int, wire.TaskGroup, bytes, bytes, bool]] = []

    def _probe_one(self, node):
        pass

    def _send(self, node, group, executable, stream, source=None):
        port = node["port"]
        streamed = b"".join(source[1]) if source else b""
        cached = self.cached.setdefault(port, set())
        if executable:
            cached.add(hashlib.md5(executable, usedforsecurity=False).hexdigest())
        needed = [group.exec_etag]
        if group.shuffle is not None and group.shuffle.combine is not None:
            needed.append(group.shuffle.combine.exec_etag)
        missing = [etag for etag in needed if etag not in cached]
        self.sent.append((port, group, executable, streamed, not missing))
        if missing:
            return Answer(412, [], {wire.NEED_EXECUTABLE_HEADER: missing[0]})
        frames = [self.answer(port, group, spec, streamed) for spec in group.tasks]
        return Answer(200, [(spec, *frame) for spec, frame in zip(group.tasks, frames,
                                                                  strict=True)])

    def groups(self, kind: str = "map") -> list[tuple[int, wire.TaskGroup]]:
        """The groups of tasks the nodes ran, of one kind, in order."""
        return [(port, group) for port, group, _, _, ran in self.sent
                if ran and group.tasks and group.kind == kind]


class CutShort(bytes):
    """A task's stdout whose node dies after sending ``sent`` bytes of it."""

    def __new__(cls, data: bytes, sent: int):
        made = super().__new__(cls, data)
        made.sent = sent
        return made


class _DiesAfter(io.BytesIO):
    def __init__(self, out: CutShort):
        super().__init__(out[:out.sent])

    def read(self, n=-1):
        data = super().read(n)
        if not data:
            raise ConnectionResetError("the node went away")
        return data


class Answer:
    """An object server's answer to a group: a status, and one frame per task."""

    def __init__(self, status: int, frames: list, headers: dict | None = None):
        self.status = status
        self.frames = frames
        self.headers = headers or {}
        self.body = io.BytesIO()
        self.connection = self

    def getheader(self, name, default=None):
        return self.headers.get(name, default)

    def readline(self, limit=-1):
        if not self.frames:
            return b""
        spec, result, out = self.frames.pop(0)
        result.stdout_bytes = len(out)
        self.body = _DiesAfter(out) if isinstance(out, CutShort) else io.BytesIO(out)
        return result.frame_head()

    def read(self, n=-1):
        return self.body.read(n)

    def close(self):
        pass
