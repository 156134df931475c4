"""Object-server filter: runs zerocompute map tasks beside the data.

The proxy's ``zerocompute`` filter sends a signed ``EXECUTE`` request for an
object this server holds.  This filter verifies the signature, opens the
object through Swift's DiskFile API, and runs the WebAssembly guest with the
object's data file as stdin (wasmtime reads the file itself: no copy).  The
guest's stdout is the response body; its exit status, error, stderr tail,
timing and this server's load travel in ``X-Zerocompute-*`` headers.  Every
other request passes through untouched.

Executables arrive once per server: the proxy first sends only the
executable's ETag; a server that lacks it answers 412 and the proxy sends it
again with the executable as the body, which is checked against the signed
ETag, compiled and cached (``doc/sandbox.md``).

Guests run in a thread off the eventlet hub.  Beyond ``slots`` running and
``queue`` waiting tasks the server answers 503 with ``Retry-After`` so the
proxy places the task on another replica.

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

import os
import tempfile
from typing import Any

from eventlet import tpool
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
)
from swift.common.utils import config_positive_int_value, get_logger, split_path
from swift.obj.diskfile import DiskFileRouter

from zerocompute import wire
from zerocompute.sandbox.wasm import GuestLimits, InvalidExecutable, WasmRuntime
from zerocompute.scheduler import format_load_header

_READ_CHUNK = 65536


def _file_iter(path: str):
    """Stream a file and remove it once sent (or abandoned)."""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                yield chunk
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


class TaskMiddleware:
    def __init__(self, app: Any, conf: dict[str, str], logger: Any = None):
        self.app = app
        self.logger = logger or get_logger(conf, log_route="zerocompute_object")
        self.secret = conf.get("secret", "")
        if not self.secret:
            raise ValueError("zerocompute_object: 'secret' must be set (same as the proxy's)")
        cpus = os.cpu_count() or 1
        self.slots = config_positive_int_value(conf.get("slots", cpus))
        self.queue = int(conf.get("queue", 2 * self.slots))
        self.cache_dir = conf.get("cache_dir", "/var/cache/swift/zerocompute")
        self.scratch_dir = os.path.join(self.cache_dir, "scratch")
        os.makedirs(self.scratch_dir, exist_ok=True)
        self.runtime = WasmRuntime(self.cache_dir)
        self.diskfile_router = DiskFileRouter(conf, self.logger)
        self._slots = Semaphore(self.slots)
        self.running = 0
        self.waiting = 0
        self.service_ms = 50.0

    def __call__(self, env: dict, start_response):
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

    def load_header(self) -> str:
        return format_load_header(self.running, self.waiting, self.slots, self.service_ms)

    def handle_task(self, req: Request) -> Response:
        try:
            task = wire.verify_task(self.secret, req.method, req.path, req.headers)
        except wire.BadSignature as err:
            self.logger.warning("zerocompute: refused unsigned task %s: %s", req.path, err)
            return HTTPForbidden(body=b"task signature refused\n")
        try:
            device, partition, account, container, obj = split_path(req.path, 5, 5, True)
            policy = POLICIES.get_by_index(req.headers.get("X-Backend-Storage-Policy-Index", 0))
        except ValueError:
            return HTTPBadRequest(body=b"bad task path\n")
        if policy is None:
            return HTTPBadRequest(body=b"unknown storage policy\n")

        etag = task["exec_etag"]
        try:
            if not self.runtime.has_executable(etag):
                if not req.content_length:
                    return HTTPPreconditionFailed(headers={wire.NEED_EXECUTABLE_HEADER: etag})
                self.runtime.add_executable(etag, req.body_file.read(req.content_length))
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
                # The open DiskFile pins the inode: reading through /proc keeps the
                # guest on this version even if a newer PUT replaces the file.
                data_path = f"/proc/self/fd/{diskfile._fp.fileno()}"
                return self.run_guest(task, etag, data_path, metadata)
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

    def run_guest(self, task: dict, etag: str, data_path: str, metadata: dict) -> Response:
        limits = GuestLimits(time_s=float(task["limits"]["time_s"]),
                             memory_bytes=int(task["limits"]["memory_mb"]) * 1024 * 1024,
                             output_bytes=int(task["limits"]["output_mb"]) * 1024 * 1024)
        stdout_fd, stdout_path = tempfile.mkstemp(dir=self.scratch_dir, prefix="out-")
        stderr_fd, stderr_path = tempfile.mkstemp(dir=self.scratch_dir, prefix="err-")
        os.close(stdout_fd)
        os.close(stderr_fd)
        keep_stdout = False
        self.waiting += 1
        try:
            with self._slots:
                self.waiting -= 1
                self.running += 1
                try:
                    module = self.runtime.module(etag)
                    result = tpool.execute(self.runtime.run, module, data_path,
                                           task["argv"], [tuple(p) for p in task["env"]],
                                           limits, stdout_path, stderr_path)
                finally:
                    self.running -= 1
            self.service_ms = 0.8 * self.service_ms + 0.2 * result.ms
            headers = {
                wire.EXIT_HEADER: "" if result.exit is None else str(result.exit),
                wire.STDERR_HEADER: wire.encode_tail(result.stderr_tail),
                wire.BYTES_IN_HEADER: str(metadata.get("Content-Length", 0)),
                wire.MS_HEADER: f"{result.ms:.3f}",
            }
            if result.error:
                headers[wire.ERROR_HEADER] = result.error
            if not result.ok:
                return Response(status=200, headers=headers, body=b"")
            keep_stdout = True
            return Response(status=200, headers=headers, content_length=result.stdout_bytes,
                            app_iter=_file_iter(stdout_path))
        except InvalidExecutable as err:
            return HTTPBadRequest(body=str(err).encode())
        finally:
            os.unlink(stderr_path)
            if not keep_stdout:
                os.unlink(stdout_path)


def filter_factory(global_conf: dict, **local_conf: str):
    conf = dict(global_conf, **local_conf)

    def task_filter(app):
        return TaskMiddleware(app, conf)
    return task_filter

