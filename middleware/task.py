"""Object-server filter: runs zerocompute tasks beside the data.

The proxy's ``zerocompute`` filter sends ``EXECUTE /zerocompute/tasks`` with
a signed *task group*: one or more tasks of a job whose input objects this
server holds (``zerocompute.wire``).  This filter verifies the signature,
then runs the group's tasks one after another, each in its own sandbox: it
opens the task's object through Swift's DiskFile API and hands the open data
file to an executor process as the guest's stdin (no copy).  Each task's
result streams back as a frame (a JSON line, then the guest's stdout) as soon
as its guest is done.  ``GET /zerocompute/load`` answers a load probe.  Every
other request passes through untouched.

Executables arrive once per server: the proxy first sends only the group;
a server that lacks the executable answers 412 and the proxy sends the group
again followed by the executable, which is checked against the signed ETag,
compiled and cached (``doc/sandbox.md``).

Guests run in a pool of ``slots`` executor processes
(``zerocompute.sandbox.executor``): the eventlet hub never waits on a guest,
and a crashing guest or runtime takes down one executor, never the object
server.  Each task of a group takes a slot for itself, so several groups
share the slots task by task, and accounts share them fairly: a freed slot
goes to the waiting account that runs the fewest tasks here
(``zerocompute.middleware.slots``).  Beyond ``slots + queue`` groups at once
(twice that for an account holding less than its share) the server answers
503 with ``Retry-After`` so the proxy places them elsewhere.
When the proxy hangs up (it cancelled the attempt), the running guest is
killed and the rest of the group is dropped.

Configuration, in ``object-server.conf``::

    [pipeline:main]
    pipeline = healthcheck recon zerocompute_object object-server

    [filter:zerocompute_object]
    use = egg:zerocompute#zerocompute_object
    # Must equal the proxy filter's secret.
    secret = change-me
    # Tasks run at once, and groups allowed to wait for a slot.
    # slots = <number of CPUs>
    # queue = <2 x slots>
    # Where executables and compiled modules are cached, and map outputs kept.
    # cache_dir = /var/cache/swift/zerocompute
    # Map outputs of jobs whose proxy died are removed after this many seconds.
    # shuffle_max_age_s = 86400
    # Executors' CPU and I/O priority, below the server's (doc/sandbox.md).
    # nice_priority = 19
    # ionice_class = IOPRIO_CLASS_BE
    # ionice_priority = 7
    # cpu_policy =
    # cpu_cgroup = auto
    # cpu_weight =

``GET /zerocompute/shuffle/<id>/<map>/<partition>`` and ``DELETE
/zerocompute/shuffle/<id>`` (signed, from reducers and proxies only) serve
and remove the map outputs of MapReduce jobs (``doc/shuffle.md``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import eventlet
from swift.common.exceptions import (
    DiskFileDeleted,
    DiskFileDeviceUnavailable,
    DiskFileExpired,
    DiskFileNotExist,
)
from swift.common.storage_policy import POLICIES
from swift.common.swob import (
    HTTPBadRequest,
    HTTPForbidden,
    HTTPNotFound,
    HTTPPreconditionFailed,
    HTTPRequestEntityTooLarge,
    HTTPServiceUnavailable,
    Request,
    Response,
)
from swift.common.utils import (
    config_positive_int_value,
    get_logger,
    non_negative_float,
    non_negative_int,
    split_path,
)
from swift.obj.diskfile import DiskFileRouter

from zerocompute import wire
from zerocompute.middleware.bodies import FileIter
from zerocompute.middleware.slots import FairAdmission, FairSlots
from zerocompute.sandbox import shuffle_io
from zerocompute.sandbox.executor import CANCELLED, ExecutorPool, hung_up, reap_scratch
from zerocompute.sandbox.priority import Priority, resolve_cgroup
from zerocompute.sandbox.wasm import ExecutableStore, InvalidExecutable
from zerocompute.scheduler import DEFAULT_SERVICE_MS, update_service_ms

_READ_CHUNK = 65536


@dataclass(frozen=True)
class TaskFilterConfig:
    """The filter's settings, parsed once by :func:`filter_factory`."""

    secret: str
    slots: int
    queue: int
    cache_dir: str
    shuffle_max_age_s: float = 86400.0
    priority: Priority = Priority()
    cpu_weight: int | None = None

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> TaskFilterConfig:
        secret = conf.get("secret", "")
        if not secret:
            raise ValueError("zerocompute_object: 'secret' must be set (same as the proxy's)")
        slots = config_positive_int_value(conf.get("slots", os.cpu_count() or 1))
        priority = Priority.from_conf(conf)
        weight = conf.get("cpu_weight", "").strip()
        if weight and not priority.cpu_cgroup:
            raise ValueError("zerocompute_object: cpu_weight needs cpu_cgroup")
        return cls(secret=secret, slots=slots,
                   queue=non_negative_int(conf.get("queue", 2 * slots)),
                   cache_dir=conf.get("cache_dir", "/var/cache/swift/zerocompute"),
                   shuffle_max_age_s=non_negative_float(
                       conf.get("shuffle_max_age_s", 86400)),
                   priority=priority,
                   cpu_weight=config_positive_int_value(weight) if weight else None)


def pump_into_pipe(source: Any, fd: int, length: int) -> int:
    """Copy ``length`` bytes of ``source`` into the pipe ``fd`` without blocking the hub,
    then close it; bytes the guest did not read are drained, so that the proxy's send
    ends.  The number of bytes the guest was given."""
    from eventlet.hubs import trampoline

    os.set_blocking(fd, False)
    left, given, reading = length, 0, True
    try:
        while left > 0:
            chunk = source.read(min(left, _READ_CHUNK))
            if not chunk:
                break
            left -= len(chunk)
            view = memoryview(chunk)
            while reading and view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    trampoline(fd, write=True)
                except BrokenPipeError:
                    reading = False  # the guest is done with its stdin
            given += len(chunk) - len(view)
    finally:
        os.close(fd)
    return given


def _client_socket(req: Request) -> Any:
    """The requester's socket under eventlet.wsgi (None elsewhere, e.g. in tests)."""
    return getattr(req.environ.get("eventlet.input"), "_sock", None)


def refuse_input(metadata: dict, ec: wire.ErasureCode | None = None) -> str | None:
    """Why an object's data file cannot be its task's input (None when it can: its
    bytes, or, given the code, one of its fragment archives)."""
    if any(k.lower().startswith("x-object-sysmeta-crypto-") for k in metadata):
        return wire.ENCRYPTED_INPUT
    if "X-Static-Large-Object" in metadata or any(
            k.lower() == "x-object-manifest" for k in metadata):
        return "large-object manifests are not supported as inputs"
    if "X-Object-Sysmeta-Ec-Frag-Index" in metadata and ec is None:
        return "erasure-coded fragments cannot be read without the policy's code"
    return None


def with_fragment(spec: wire.TaskSpec, metadata: dict) -> wire.TaskSpec:
    """An erasure-coded task, told which fragment of which version this node holds."""
    if spec.ec is None:
        return spec
    return replace(spec, ec=replace(
        spec.ec, local_index=int(metadata["X-Object-Sysmeta-Ec-Frag-Index"]),
        timestamp=metadata["X-Timestamp"],
        content_length=int(metadata.get("X-Object-Sysmeta-Ec-Content-Length", 0))))


class TaskMiddleware:
    def __init__(self, app: Any, config: TaskFilterConfig, logger: Any = None,
                 pool: Any = None, conf: dict[str, str] | None = None):
        """``pool`` runs guests (an :class:`ExecutorPool` unless a test gives a stub)."""
        conf = conf or {}
        self.app = app
        self.config = config
        self.logger = logger or get_logger(conf, log_route="zerocompute_object")
        self.slots = config.slots
        self.scratch_dir = os.path.join(config.cache_dir, "scratch")
        os.makedirs(self.scratch_dir, exist_ok=True)
        reap_scratch(self.scratch_dir)  # of executors killed with this server, say
        self.executables = ExecutableStore(config.cache_dir)
        # This server's own map outputs: object servers of one host may share cache_dir.
        self.shuffle_root = shuffle_io.shuffle_root(
            config.cache_dir, f"{conf.get('bind_ip', '0.0.0.0')}:{conf.get('bind_port', 6200)}")
        priority = resolve_cgroup(config.priority, config.cpu_weight, self.logger)
        self.pool = pool or ExecutorPool(config.slots, config.cache_dir, config.secret,
                                         self.shuffle_root, priority)
        self.seen: set[str] = set()  # signatures of groups received lately (replays)
        self.seen_order: collections.deque[tuple[float, str]] = collections.deque()
        self.reaped_at = 0.0
        self._slots = FairSlots(config.slots)
        self.admission = FairAdmission(config.slots + config.queue)
        self.diskfile_router = DiskFileRouter(conf, self.logger)
        self.pending = 0  # tasks of those groups that wait for their turn in the group
        self.waiting = 0  # tasks whose turn came, waiting for a slot
        self.service_ms = DEFAULT_SERVICE_MS
        self.completed = 0
        self.started: list[float] = []  # when each running task started (monotonic)

    def __call__(self, env: dict, start_response):
        if env.get("PATH_INFO") == wire.LOAD_PATH and env.get("REQUEST_METHOD") == "GET":
            return self.load_response()(env, start_response)
        if env.get("PATH_INFO", "").startswith(wire.SHUFFLE_PATH + "/"):
            return self.shuffle_response(Request(env))(env, start_response)
        if env.get("REQUEST_METHOD") != wire.METHOD:
            return self.app(env, start_response)
        req = Request(env)
        try:
            resp = self.handle_group(req)
        except Exception:  # noqa: BLE001 - a task must never take the server down
            self.logger.exception("zerocompute task group failed unexpectedly")
            resp = Response(status=500, body=b"internal error running tasks\n")
        resp.headers[wire.LOAD_HEADER] = self.load_header()
        return resp(env, start_response)

    # -- load ---------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self.started)

    def load_header(self) -> str:
        now = time.monotonic()
        elapsed = [now - t for t in self.started]
        elapsed_ms = 1000 * sum(elapsed) / len(elapsed) if elapsed else 0.0
        return wire.LoadReport(self.running, self.queued, self.slots, self.service_ms,
                               elapsed_ms).header()

    @property
    def queued(self) -> int:
        return self.pending + self.waiting

    def load_response(self) -> Response:
        """The answer to a load probe: cheap, no auth (it says only how busy we are)."""
        body = json.dumps({"running": self.running, "queued": self.queued,
                           "slots": self.slots, "service_ms": round(self.service_ms, 3)})
        return Response(status=200, content_type="application/json", body=body.encode(),
                        headers={wire.LOAD_HEADER: self.load_header()})

    # -- map outputs kept for reducers ----------------------------------------------------
    def shuffle_response(self, req: Request) -> Response:
        """``GET`` one map's partition, ``DELETE`` a job's map outputs (signed only)."""
        try:
            wire.verify_request(self.config.secret, req.method, req.path_info, req.headers)
        except wire.BadSignature as err:
            self.logger.warning("zerocompute: refused unsigned shuffle request: %s", err)
            return HTTPForbidden(body=b"signature refused\n")
        parts = req.path_info[len(wire.SHUFFLE_PATH) + 1:].split("/")
        try:
            if req.method == "DELETE" and len(parts) == 1:
                shutil.rmtree(os.path.join(self.shuffle_root, shuffle_io.safe_name(parts[0])),
                              ignore_errors=True)
                return Response(status=204)
            if req.method == "GET" and len(parts) == 3:
                path = shuffle_io.partition_file(self.shuffle_root, parts[0], parts[1],
                                                 int(parts[2]))
                f = open(path, "rb")  # noqa: SIM115 - closed by the response's app_iter
                return Response(status=200, app_iter=FileIter(f),
                                content_length=os.fstat(f.fileno()).st_size,
                                content_type="application/octet-stream")
        except FileNotFoundError:
            return HTTPNotFound(body=b"no such map output here\n")
        except ValueError:
            pass
        return HTTPBadRequest(body=b"bad shuffle request\n")

    def reap_shuffle(self) -> None:
        """Now and then, remove map outputs of jobs that never cleaned up (proxy died)."""
        now = time.time()
        if now - self.reaped_at > min(600.0, self.config.shuffle_max_age_s):
            self.reaped_at = now
            for name in shuffle_io.reap(self.shuffle_root, self.config.shuffle_max_age_s, now):
                self.logger.info("zerocompute: reaped map outputs of %s", name)
            for name in reap_scratch(self.scratch_dir):
                self.logger.info("zerocompute: removed scratch %s of a dead executor", name)

    # -- a group --------------------------------------------------------------------
    def handle_group(self, req: Request) -> Response:
        if req.path_info != wire.TASKS_PATH:
            return HTTPBadRequest(body=b"task groups go to " + wire.TASKS_PATH.encode() + b"\n")
        try:
            group_length = int(req.headers.get(wire.GROUP_LENGTH_HEADER, ""))
            body_length = int(req.content_length or 0)
        except ValueError:
            return HTTPBadRequest(body=b"bad task group length\n")
        if not 0 < group_length <= min(body_length, wire.MAX_GROUP_BYTES):
            return HTTPForbidden(body=b"task signature refused\n")
        head = req.body_file.read(group_length)
        try:
            group = wire.verify_group(self.config.secret, req.method, req.path_info,
                                      req.headers, head)
        except wire.BadSignature as err:
            self.logger.warning("zerocompute: refused unsigned task group: %s", err)
            return HTTPForbidden(body=b"task signature refused\n")
        # An input streamed by the proxy (signed: its length is in the group) follows
        # the executable and stays unread until its task runs.
        streamed = [t for t in group.tasks if t.stream_bytes >= 0]
        stream_bytes = streamed[0].stream_bytes if streamed else 0
        if streamed and (len(group.tasks) != 1 or group.kind != "map") \
                or body_length - group_length < stream_bytes:
            return HTTPBadRequest(body=b"a streamed input travels alone, after the group\n")
        # Read the rest of the body even when the executable is cached: a hang-up of
        # the proxy is seen only once nothing unread is left before it.
        body = head + req.body_file.read(body_length - group_length - stream_bytes)
        if self.replayed(req.headers[wire.SIGNATURE_HEADER]):
            self.logger.warning("zerocompute: refused a replayed task group of job %r",
                                group.job)
            return HTTPForbidden(body=b"task group replayed\n")
        try:
            missing = self.missing_executables(group, body[group_length:])
        except InvalidExecutable as err:
            return HTTPBadRequest(body=str(err).encode())
        if missing:
            return HTTPPreconditionFailed(headers={wire.NEED_EXECUTABLE_HEADER: missing[0]})
        if not self.admission.admits(group.account):
            return HTTPServiceUnavailable(headers={"Retry-After": "1"},
                                          body=b"zerocompute: all task slots busy\n")
        if len(group.tasks) > 4096:
            return HTTPRequestEntityTooLarge(body=b"too many tasks in one group\n")
        self.reap_shuffle()
        return Response(status=200, content_type="application/octet-stream",
                        app_iter=GroupFrames(self, group, _client_socket(req),
                                          req.body_file if streamed else None))

    def replayed(self, signature: str) -> bool:
        """Whether this signed group was received before (while it is fresh enough to
        pass the signature check, it is remembered; every send is signed anew)."""
        now = time.time()
        while self.seen_order and self.seen_order[0][0] < now:
            self.seen.discard(self.seen_order.popleft()[1])
        if signature in self.seen:
            return True
        self.seen.add(signature)
        self.seen_order.append((now + 2 * wire.MAX_AGE_S, signature))
        return False

    def missing_executables(self, group: wire.TaskGroup, executable: bytes) -> list[str]:
        """ETags of the group's executables this server still lacks, once the one in
        the body (if any) is checked against its signed ETag and kept."""
        needed = {group.exec_etag: group.runtime}
        combine = group.shuffle.combine if group.shuffle else None
        if combine is not None:
            needed[combine.exec_etag] = combine.runtime
        missing = [etag for etag in needed if not self.executables.has(etag)]
        if executable and missing:
            digest = hashlib.md5(executable, usedforsecurity=False).hexdigest()
            target = digest if digest in missing else missing[0]
            self.executables.add(target, executable, needed[target])  # checks the digest
            missing.remove(target)
        return missing

    def run_task(self, group: wire.TaskGroup, spec: wire.TaskSpec, client: Any,
                 source: Any = None) -> tuple[wire.TaskResult, int | None]:
        """Run one task of a group: its result and, when it produced output, the
        descriptor of its (already unlinked) stdout file."""
        result = wire.TaskResult(task=spec.task)
        if spec.stream_bytes >= 0:
            return self.run_streamed(group, spec, client, source, result)
        if group.kind == "reduce":
            # Its input is fetched from the maps' nodes by the executor.
            with open(os.devnull, "rb") as nothing:
                return self.run_guest(group, spec, nothing.fileno(), result, client)
        try:
            _device, _part, account, container, obj = split_path(
                spec.disk_path, 5, 5, True)
        except ValueError:
            result.error = "bad task path"
            return result, None
        policy = POLICIES.get_by_index(spec.policy)
        if policy is None:
            result.retry = f"unknown storage policy {spec.policy}"
            return result, None
        try:
            diskfile = self.diskfile_router[policy].get_diskfile(
                spec.device, spec.partition, account, container, obj, policy=policy)
            with diskfile.open():
                metadata = diskfile.get_metadata()
                refusal = refuse_input(metadata, spec.ec)
                if refusal is not None:
                    result.error = refusal
                    return result, None
                spec = with_fragment(spec, metadata)
                result.bytes_in = int(spec.ec.content_length if spec.ec
                                      else metadata.get("Content-Length", 0))
                # The open DiskFile pins this version of the object: the executor gets
                # the same descriptor, so a concurrent overwrite does not change its input.
                return self.run_guest(group, spec, diskfile._fp.fileno(), result, client)
        except (DiskFileNotExist, DiskFileDeleted, DiskFileExpired):
            result.retry = "404 object not on this node"
        except DiskFileDeviceUnavailable:
            result.retry = "507 device unavailable"
        return result, None

    def run_streamed(self, group: wire.TaskGroup, spec: wire.TaskSpec, client: Any,
                     source: Any, result: wire.TaskResult) -> tuple[wire.TaskResult, int | None]:
        """A task whose input the proxy streams (an encrypted object's plaintext): the
        guest reads it from a pipe, so it never touches this node's disk."""
        read_end, write_end = os.pipe()
        pump = eventlet.spawn(pump_into_pipe, source, write_end, spec.stream_bytes)
        try:
            ran, stdout_fd = self.run_guest(group, spec, read_end, result, client)
        finally:
            os.close(read_end)
            pumped = pump.wait()
        ran.bytes_in = ran.bytes_peer = pumped
        return ran, stdout_fd

    def run_guest(self, group: wire.TaskGroup, spec: wire.TaskSpec, input_fd: int,
                  result: wire.TaskResult, client: Any) -> tuple[wire.TaskResult, int | None]:
        stdout_fd, stdout_path = tempfile.mkstemp(dir=self.scratch_dir, prefix="out-")
        os.unlink(stdout_path)  # the executor writes through /proc/self/fd; nothing to clean
        try:
            ran = self.run_in_executor(replace(group, tasks=(spec,)), [input_fd, stdout_fd],
                                       float(group.limits.time_s), client)
        except BaseException:
            os.close(stdout_fd)
            raise
        if spec.split is None:  # a split's executor counted the bytes its lines take
            ran.bytes_in = result.bytes_in
        if spec.ec is None and spec.stream_bytes < 0 and group.kind == "map":
            ran.bytes_local = ran.bytes_in
        if ran.completed:
            self.service_ms = update_service_ms(self.service_ms, ran.ms, self.completed)
            self.completed += 1
        if ran.invalid or ran.exit != 0 or ran.error:
            os.close(stdout_fd)
            ran.stdout_bytes = 0
            return ran, None
        return ran, stdout_fd

    def run_in_executor(self, task: wire.TaskGroup, fds: list[int], time_s: float,
                        client: Any = None) -> wire.TaskResult:
        """Wait for a slot, then run; the counters feed the load header."""
        self.waiting += 1
        try:
            self._slots.acquire(task.account)
        finally:
            self.waiting -= 1
        if client is not None and hung_up(client):
            # Cancelled while it waited (the proxy ran it elsewhere): do not run it.
            self._slots.release(task.account)
            return wire.TaskResult(task.tasks[0].task, error=CANCELLED)
        began = time.monotonic()
        self.started.append(began)
        try:
            return self.pool.run(task, fds, time_s, client)
        finally:
            self.started.remove(began)
            self._slots.release(task.account)


class GroupFrames:
    """The response body of a group: runs its tasks in order, yielding each frame.

    Closed early (the proxy hung up), it runs nothing more.
    """

    def __init__(self, server: TaskMiddleware, group: wire.TaskGroup, client: Any,
                 source: Any = None):
        self.server = server
        self.group = group
        self.client = client
        self.source = source  # the request body still to read: a streamed input
        self.left = len(group.tasks)
        server.admission.enter(group.account)
        server.pending += self.left
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for spec in self.group.tasks:
                if self.client is not None and hung_up(self.client):
                    return
                self.left -= 1
                self.server.pending -= 1
                result, stdout_fd = self.server.run_task(self.group, spec, self.client,
                                                         self.source)
                result.load = self.server.load_header()
                yield from self._frame(result, stdout_fd)
        finally:
            self.close()

    @staticmethod
    def _frame(result: wire.TaskResult, stdout_fd: int | None) -> Iterator[bytes]:
        head = result.frame_head()
        if stdout_fd is None:
            yield head
            return
        try:
            left = result.stdout_bytes
            first = os.pread(stdout_fd, min(left, _READ_CHUNK), 0)
            yield head + first  # small outputs travel in one write
            offset = len(first)
            left -= len(first)
            while left > 0:
                chunk = os.pread(stdout_fd, min(left, _READ_CHUNK), offset)
                if not chunk:
                    raise OSError("guest output shorter than reported")
                offset += len(chunk)
                left -= len(chunk)
                yield chunk
        finally:
            os.close(stdout_fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.pending -= self.left
        self.left = 0
        self.server.admission.leave(self.group.account)


def filter_factory(global_conf: dict, **local_conf: str):
    conf = dict(global_conf, **local_conf)
    config = TaskFilterConfig.from_conf(conf)

    def task_filter(app):
        return TaskMiddleware(app, config, conf=conf)
    return task_filter
