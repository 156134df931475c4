"""Object-server filter: runs zerocompute map tasks beside the data.

The proxy's ``zerocompute`` filter sends a signed ``EXECUTE`` request for an
object this server holds.  This filter verifies the signature, opens the
object through Swift's DiskFile API, and runs the WebAssembly guest in an
executor process, with the open data file as stdin (no copy).  The
guest's stdout is the response body; its exit status, error, stderr tail,
timing and this server's load travel in ``X-Zerocompute-*`` headers.  ``GET
/zerocompute/load`` answers a load probe.  Every other request passes
through untouched.

Executables arrive once per server: the proxy first sends only the
executable's ETag; a server that lacks it answers 412 and the proxy sends it
again with the executable as the body, which is checked against the signed
ETag, compiled and cached (``doc/sandbox.md``).

Guests run in a pool of ``slots`` executor processes
(``zerocompute.sandbox.executor``): the eventlet hub never waits on a guest,
and a crashing guest or runtime takes down one executor, never the object
server.  Beyond ``slots`` running and ``queue`` waiting tasks the server
answers 503 with ``Retry-After`` so the proxy places the task elsewhere.

Configuration, in ``object-server.conf``::

    [pipeline:main]
    pipeline = healthcheck recon zerocompute_object object-server

    [filter:zerocompute_object]
    use = egg:zerocompute#zerocompute_object
    # Must equal the proxy filter's secret.
    secret = change-me
    # Tasks run at once, and tasks allowed to wait for a slot.
    # slots = <number of CPUs>
    # queue = <2 x slots>
    # Where executables and compiled modules are cached.
    # cache_dir = /var/cache/swift/zerocompute
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from eventlet.semaphore import Semaphore
from swift.common.exceptions import DiskFileDeleted, DiskFileExpired, DiskFileNotExist
from swift.common.storage_policy import POLICIES
from swift.common.swob import (
    HTTPBadRequest,
    HTTPConflict,
    HTTPForbidden,
    HTTPNotFound,
    HTTPPreconditionFailed,
    HTTPServiceUnavailable,
    Request,
    Response,
    wsgi_to_str,
)
from swift.common.utils import config_positive_int_value, get_logger, split_path
from swift.obj.diskfile import DiskFileRouter

from zerocompute import wire
from zerocompute.sandbox.executor import CANCELLED, ExecutorPool, hung_up
from zerocompute.sandbox.wasm import ExecutableStore, InvalidExecutable
from zerocompute.scheduler import DEFAULT_SERVICE_MS, format_load_header, update_service_ms

_READ_CHUNK = 65536


class _SpooledOutput:
    """Streams the guest's stdout file and removes it, even if never read (WSGI close)."""

    def __init__(self, path: str):
        self.path = path

    def __iter__(self):
        with open(self.path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                yield chunk

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _client_socket(req: Request) -> Any:
    """The requester's socket under eventlet.wsgi (None elsewhere, e.g. in tests)."""
    return getattr(req.environ.get("eventlet.input"), "_sock", None)


class TaskMiddleware:
    def __init__(self, app: Any, conf: dict[str, str], logger: Any = None):
        self.app = app
        self.logger = logger or get_logger(conf, log_route="zerocompute_object")
        self.secret = conf.get("secret", "")
        if not self.secret:
            raise ValueError("zerocompute_object: 'secret' must be set (same as the proxy's)")
        self.slots = config_positive_int_value(conf.get("slots", os.cpu_count() or 1))
        self.queue = int(conf.get("queue", 2 * self.slots))
        self.cache_dir = conf.get("cache_dir", "/var/cache/swift/zerocompute")
        self.scratch_dir = os.path.join(self.cache_dir, "scratch")
        os.makedirs(self.scratch_dir, exist_ok=True)
        self.executables = ExecutableStore(self.cache_dir)
        self.pool = ExecutorPool(self.slots, self.cache_dir)
        self._slots = Semaphore(self.slots)
        self.diskfile_router = DiskFileRouter(conf, self.logger)
        self.waiting = 0
        self.service_ms = DEFAULT_SERVICE_MS
        self.completed = 0
        self.started: list[float] = []  # when each running task started (monotonic)

    def __call__(self, env: dict, start_response):
        if env.get("PATH_INFO") == wire.LOAD_PATH and env.get("REQUEST_METHOD") == "GET":
            return self.load_response()(env, start_response)
        if env.get("REQUEST_METHOD") != wire.METHOD:
            return self.app(env, start_response)
        req = Request(env)
        try:
            resp = self.handle_task(req)
        except Exception:  # noqa: BLE001 - a task must never take the server down
            self.logger.exception("zerocompute task failed unexpectedly: %s", req.path)
            resp = Response(status=500, body=b"internal error running task\n")
        resp.headers[wire.LOAD_HEADER] = self.load_header()
        return resp(env, start_response)

    @property
    def running(self) -> int:
        return len(self.started)

    def load_header(self) -> str:
        now = time.monotonic()
        elapsed = [now - t for t in self.started]
        elapsed_ms = 1000 * sum(elapsed) / len(elapsed) if elapsed else 0.0
        return format_load_header(self.running, self.waiting, self.slots, self.service_ms,
                                  elapsed_ms)

    def load_response(self) -> Response:
        """The answer to a load probe: cheap, no auth (it says only how busy we are)."""
        body = json.dumps({"running": self.running, "queued": self.waiting,
                           "slots": self.slots, "service_ms": round(self.service_ms, 3)})
        return Response(status=200, content_type="application/json", body=body.encode(),
                        headers={wire.LOAD_HEADER: self.load_header()})

    def handle_task(self, req: Request) -> Response:
        path = wsgi_to_str(req.environ["PATH_INFO"])
        try:
            task = wire.verify_task(self.secret, req.method, path, req.headers)
        except wire.BadSignature as err:
            self.logger.warning("zerocompute: refused unsigned task %s: %s", req.path, err)
            return HTTPForbidden(body=b"task signature refused\n")
        try:
            device, partition, account, container, obj = split_path(path, 5, 5, True)
            policy = POLICIES.get_by_index(req.headers.get("X-Backend-Storage-Policy-Index", 0))
        except ValueError:
            return HTTPBadRequest(body=b"bad task path\n")
        if policy is None:
            return HTTPBadRequest(body=b"unknown storage policy\n")

        etag = task["exec_etag"]
        # Read the body even when the executable is cached: a hang-up of the
        # proxy is seen only once nothing unread is left before it.
        body = req.body_file.read(req.content_length) if req.content_length else b""
        try:
            if not self.executables.has(etag):
                if not body:
                    return HTTPPreconditionFailed(headers={wire.NEED_EXECUTABLE_HEADER: etag})
                self.executables.add(etag, body, task.get("runtime", "wasm"))
        except InvalidExecutable as err:
            return HTTPBadRequest(body=str(err).encode())

        if self.running >= self.slots and self.waiting >= self.queue:
            return HTTPServiceUnavailable(headers={"Retry-After": "1"},
                                          body=b"zerocompute: all task slots busy\n")
        diskfile = self.diskfile_router[policy].get_diskfile(
            device, partition, account, container, obj, policy=policy)
        try:
            with diskfile.open():
                metadata = diskfile.get_metadata()
                refusal = self.refuse_input(metadata)
                if refusal is not None:
                    return refusal
                # The open DiskFile pins this version of the object: the executor gets
                # the same descriptor, so a concurrent overwrite does not change its input.
                return self.run_guest(task, diskfile._fp.fileno(), metadata,
                                      _client_socket(req))
        except (DiskFileNotExist, DiskFileDeleted, DiskFileExpired):
            return HTTPNotFound(body=b"object not on this node\n")

    @staticmethod
    def refuse_input(metadata: dict) -> Response | None:
        if any(k.lower().startswith("x-object-sysmeta-crypto-") for k in metadata):
            return HTTPConflict(body=b"encrypted objects cannot be read in place\n")
        if "X-Static-Large-Object" in metadata or any(
                k.lower() == "x-object-manifest" for k in metadata):
            return HTTPConflict(body=b"large-object manifests are not supported as inputs\n")
        if "X-Object-Sysmeta-Ec-Frag-Index" in metadata:
            return HTTPConflict(body=b"erasure-coded fragments cannot be read in place\n")
        return None

    def run_guest(self, task: dict, input_fd: int, metadata: dict,
                  client: Any = None) -> Response:
        stdout_fd, stdout_path = tempfile.mkstemp(dir=self.scratch_dir, prefix="out-")
        keep_stdout = False
        try:
            reply = self.run_in_executor(task, [input_fd, stdout_fd], client)
            if reply.get("invalid"):
                return HTTPBadRequest(body=reply["invalid"].encode())
            self.service_ms = update_service_ms(self.service_ms, float(reply["ms"]),
                                                self.completed)
            self.completed += 1
            headers = {
                wire.EXIT_HEADER: "" if reply["exit"] is None else str(reply["exit"]),
                wire.STDERR_HEADER: reply["stderr"],
                wire.BYTES_IN_HEADER: str(metadata.get("Content-Length", 0)),
                wire.MS_HEADER: f"{float(reply['ms']):.3f}",
            }
            if reply["error"]:
                headers[wire.ERROR_HEADER] = reply["error"]
            if reply["exit"] != 0 or reply["error"]:
                return Response(status=200, headers=headers, body=b"")
            keep_stdout = True
            return Response(status=200, headers=headers, content_length=reply["stdout_bytes"],
                            app_iter=_SpooledOutput(stdout_path))
        finally:
            os.close(stdout_fd)
            if not keep_stdout:
                os.unlink(stdout_path)

    def run_in_executor(self, task: dict, fds: list[int], client: Any = None) -> dict:
        """Wait for a slot, then run; the counters feed the load header."""
        self.waiting += 1
        try:
            self._slots.acquire()
        finally:
            self.waiting -= 1
        if client is not None and hung_up(client):
            # Cancelled while it waited (the proxy ran it elsewhere): do not run it.
            self._slots.release()
            return {"exit": None, "error": CANCELLED, "stdout_bytes": 0, "stderr": "",
                    "ms": 0.0}
        began = time.monotonic()
        self.started.append(began)
        try:
            return self.pool.run(task, fds, float(task["limits"]["time_s"]), client)
        finally:
            self.started.remove(began)
            self._slots.release()


def filter_factory(global_conf: dict, **local_conf: str):
    conf = dict(global_conf, **local_conf)

    def task_filter(app):
        return TaskMiddleware(app, conf)
    return task_filter

