"""Proxy filter: the zerocompute job API.

A job is ``POST /v1/<account>`` with ``X-Zerocompute-Execute: 1`` and a JSON
manifest as the body (``doc/manifest.md``).  This filter validates the
manifest, checks the executable, the inputs and the output location *as the
requesting user* (sub-requests through the rest of the pipeline, so the auth
middleware's ACLs apply), expands ``*`` inputs by container listing, runs one
map task per input object on an object server that holds a replica (chosen by
the scheduler from live load; co-located tasks travel in groups), writes
each task's output as a Swift object (or gathers every output into one), and
answers with the job report in JSON.  A job that succeeds also writes
``_SUCCESS`` and ``_report.json`` beside its outputs.

A bad request is answered with a 4xx whose JSON body has ``error`` and, where
it applies, ``field``; nothing is written for it.  A job still running after
``heartbeat_s`` gets its ``200`` at once and a space every ``heartbeat_s``
until the report follows (as SLO's ``heartbeat``), so that no idle timeout
of a client or load balancer cuts it; the report's ``status`` then says how
it ended.  With ``X-Zerocompute-Async: 1`` the job is answered ``202``
at once and kept in Swift, where any proxy reports on it, cancels it or
takes it over (:mod:`zerocompute.middleware.durable`).

Place the filter after the auth middleware::

    [pipeline:main]
    pipeline = catch_errors gatekeeper healthcheck proxy-logging cache
        listing_formats tempauth zerocompute copy slo dlo proxy-logging
        proxy-server

    [filter:zerocompute]
    use = egg:zerocompute#zerocompute
    # Shared with every object server's zerocompute_object filter.
    secret = change-me
    # Default placement policy: load-aware or random.
    # default_scheduler = load-aware
    # Maximum per-task limits; a manifest may lower them, never raise them
    # (also max_cpu_s, max_stderr_mb, max_stderr_tail_kb, max_table_elements,
    # max_instances: see doc/sandbox.md).
    # max_time_s = 60
    # max_memory_mb = 512
    # max_output_mb = 256
    # max_tasks = 10000
    # Jobs one account may run at once on this proxy (more are answered 429).
    # max_jobs_per_account = 8
    # max_manifest_bytes = 65536
    # max_executable_mb = 64
    # Task-group requests of one job in flight at once, and the most tasks
    # one group carries; also the number of output writes in flight.
    # concurrency = 16
    # max_group = 32
    # Backup tasks: once nothing is left to dispatch, a task running longer than
    # backup_factor x the job's median task time (and backup_min_s) gets a second
    # attempt on another replica; the first to finish wins.
    # backup_tasks = true
    # backup_factor = 2.0
    # backup_min_s = 1.0
    # conn_timeout = 0.5
    # How long a task may wait for a slot while every replica answers 503 busy.
    # max_busy_wait_s = 300
    # A synchronous job still running after this many seconds gets its 200 and
    # a space every this many seconds until its report (0: never).
    # heartbeat_s = 10
    # A map's sort buffer on its node, beyond which it spills sorted runs to disk.
    # shuffle_buffer_bytes = 134217728
    # An input encrypted at rest is read through this pipeline (decrypted) and
    # streamed to an object server's guest through a pipe, never to its disk;
    # false: such inputs fail their task.
    # stream_encrypted_inputs = true
    # Asynchronous jobs: the running proxy's lease on a job's state (renewed
    # every third of it), and how often it looks for a cancel.
    # job_lease_s = 30
    # job_poll_s = 1
    # Every this many seconds, take over the async jobs whose proxy died even if
    # nobody reads their status (0: only status reads take jobs over).
    # job_sweep_s = 0
"""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import json
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote

import eventlet
from eventlet import GreenPool
from eventlet.event import Event
from swift.common.bufferedhttp import http_connect_raw
from swift.common.exceptions import ConnectionTimeout
from swift.common.registry import register_swift_info
from swift.common.storage_policy import EC_POLICY, POLICIES
from swift.common.swob import Request, Response, str_to_wsgi
from swift.common.utils import (
    close_if_possible,
    config_positive_int_value,
    config_true_value,
    get_logger,
    non_negative_float,
)
from swift.common.wsgi import make_env, make_subrequest
from swift.proxy.controllers.base import get_container_info

from zerocompute import __version__, wire
from zerocompute.jobs import JOB_QUERY, new_job_id, valid_job_id
from zerocompute.manifest import (
    Limits,
    Manifest,
    ManifestError,
    MapStage,
    NamedOutput,
    Stage,
    SwiftPath,
    parse_exec,
    parse_manifest,
    parse_string_list,
    runtime_of,
)
from zerocompute.middleware.bodies import FileIter, json_response
from zerocompute.middleware.dispatch import (
    Dispatcher,
    JobRun,
    RunSettings,
    TaskState,
    node_key,
    node_label,
)
from zerocompute.middleware.durable import AsyncJobs
from zerocompute.planning import (
    EDGE_BYTES,
    InputObject,
    MapTask,
    Segment,
    evenly_spaced,
    listing_prefix,
    match_listing,
    plan_map_tasks,
    segment_edges,
)
from zerocompute.report import (
    REPORT_NAME,
    SUCCEEDED,
    SUCCESS_NAME,
    Attempt,
    JobReport,
    TaskReport,
)
from zerocompute.sandbox.python import available as python_runtime_available
from zerocompute.sandbox.wasm import InvalidExecutable, check_wasm
from zerocompute.scheduler import POLICIES as SCHEDULER_POLICIES
from zerocompute.shuffle import HASH, RANGE, framed_keys, split_points

LISTING_LIMIT = 10000
# A task's output is kept in memory up to this size while it waits to be
# written, and spooled to a temporary file beyond it.
SPOOL_MEMORY = 1 << 20
GATHER_MEMORY = 16 << 20
WRITE_TRIES = 3
# Every output a job writes names the job (the run's id), so that a proxy taking
# an async job over can tell what the job has committed already.
JOB_ID_META = "X-Object-Meta-Zerocompute-Job"
_COPY_CHUNK = 65536


@dataclass(frozen=True)
class JobFilterConfig:
    """The filter's settings, parsed once by :func:`filter_factory`."""

    secret: str
    swift_dir: str
    maximum: Limits
    default_scheduler: str
    max_tasks: int
    max_manifest_bytes: int
    max_executable_bytes: int
    concurrency: int
    max_group: int
    backup_tasks: bool
    backup_factor: float
    backup_min_s: float
    conn_timeout: float
    max_busy_wait_s: float
    heartbeat_s: float
    shuffle_buffer_bytes: int = wire.SHUFFLE_BUFFER_BYTES
    max_jobs_per_account: int = 8
    stream_encrypted_inputs: bool = True
    job_lease_s: float = 30.0
    job_poll_s: float = 1.0
    job_sweep_s: float = 0.0

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> JobFilterConfig:
        secret = conf.get("secret", "")
        if not secret:
            raise ValueError("zerocompute: 'secret' must be set (shared with object servers)")
        scheduler = conf.get("default_scheduler", "load-aware")
        if scheduler not in SCHEDULER_POLICIES:
            raise ValueError(f"zerocompute: default_scheduler must be one of "
                             f"{', '.join(SCHEDULER_POLICIES)}")
        return cls(
            secret=secret,
            swift_dir=conf.get("swift_dir", "/etc/swift"),
            maximum=Limits.from_conf(conf),
            default_scheduler=scheduler,
            max_tasks=config_positive_int_value(conf.get("max_tasks", 10000)),
            max_manifest_bytes=config_positive_int_value(conf.get("max_manifest_bytes", 65536)),
            max_executable_bytes=config_positive_int_value(
                conf.get("max_executable_mb", 64)) * 1024 * 1024,
            concurrency=config_positive_int_value(conf.get("concurrency", 16)),
            max_group=config_positive_int_value(conf.get("max_group", 32)),
            backup_tasks=config_true_value(conf.get("backup_tasks", "true")),
            backup_factor=non_negative_float(conf.get("backup_factor", 2.0)),
            backup_min_s=non_negative_float(conf.get("backup_min_s", 1.0)),
            conn_timeout=non_negative_float(conf.get("conn_timeout", 0.5)),
            max_busy_wait_s=non_negative_float(conf.get("max_busy_wait_s", 300)),
            heartbeat_s=non_negative_float(conf.get("heartbeat_s", 10)),
            shuffle_buffer_bytes=config_positive_int_value(
                conf.get("shuffle_buffer_bytes", wire.SHUFFLE_BUFFER_BYTES)),
            max_jobs_per_account=config_positive_int_value(
                conf.get("max_jobs_per_account", 8)),
            stream_encrypted_inputs=config_true_value(
                conf.get("stream_encrypted_inputs", "true")),
            job_lease_s=positive_float(conf.get("job_lease_s", 30), "job_lease_s"),
            job_poll_s=positive_float(conf.get("job_poll_s", 1), "job_poll_s"),
            job_sweep_s=non_negative_float(conf.get("job_sweep_s", 0)),
        )


def positive_float(value: Any, name: str) -> float:
    number = non_negative_float(value)
    if number <= 0:
        raise ValueError(f"zerocompute: {name} must be greater than 0")
    return number


def strip_internal_headers(env: dict) -> None:
    """Remove ``X-Zerocompute-*`` headers a client sent that only zerocompute itself may
    set (signatures, timestamps, load reports): defence in depth, they never reach a
    server through this proxy."""
    for key in [k for k in env if k.startswith("HTTP_X_ZEROCOMPUTE_")]:
        if key not in wire.CLIENT_ENV_KEYS:
            del env[key]


class JobMiddleware:
    def __init__(self, app: Any, config: JobFilterConfig, logger: Any = None,
                 conf: dict[str, str] | None = None):
        self.app = app
        self.config = config
        self.logger = logger or get_logger(conf or {}, log_route="zerocompute")
        self.dispatcher = Dispatcher(config.secret, config.conn_timeout, self.logger,
                                     max_busy_wait_s=config.max_busy_wait_s)
        self.running_jobs: collections.Counter[str] = collections.Counter()  # per account
        self.async_jobs = AsyncJobs(self)

    def __call__(self, env: dict, start_response):
        self.async_jobs.ensure_sweeper()
        strip_internal_headers(env)
        req = Request(env)
        if req.method == "GET" and req.headers.get(wire.RUN_HEADER):
            return self.run_on_get(req)(env, start_response)
        if JOB_QUERY in req.params and req.method in ("GET", "HEAD", "DELETE"):
            return self.job_request(req)(env, start_response)
        if req.method != "POST" or not config_true_value(req.headers.get(wire.EXECUTE_HEADER)):
            return self.app(env, start_response)
        try:
            version, account, container = req.split_path(2, 3, True)
        except ValueError:
            return self.app(env, start_response)
        unauthenticated = self.unauthenticated(req)
        if unauthenticated is not None:
            return unauthenticated(env, start_response)
        if container:
            resp = json_response(400, {"error": "jobs are POSTed to the account: "
                                                "POST /v1/<account>"})
        elif self.running_jobs[account] >= self.config.max_jobs_per_account:
            resp = json_response("429 Too Many Requests", {"error": f"{account} runs "
                                                f"{self.running_jobs[account]} jobs already; "
                                                "this cluster allows "
                                                f"{self.config.max_jobs_per_account} at once"},
                                 headers={"Retry-After": "10"})
        else:
            try:
                resp = self.handle_job(req, account)
            except ManifestError as err:
                resp = json_response(err.status, err.to_dict())
        return resp(env, start_response)

    def run_on_get(self, req: Request) -> Response:
        """``GET`` of an object with ``X-Zerocompute-Run``: the guest's stdout over it."""
        try:
            version, account, container, obj = req.split_path(4, 4, True)
        except ValueError:
            return json_response(400, {"error": f"{wire.RUN_HEADER} applies to an object",
                                       "field": wire.RUN_HEADER})
        unauthenticated = self.unauthenticated(req)
        if unauthenticated is not None:
            return unauthenticated
        req.environ.setdefault("swift.infocache", {})
        try:
            return RunOnGet(self, req, SwiftPath(account, container, obj)).respond()
        except ManifestError as err:
            return json_response(err.status, err.to_dict())

    def job_request(self, req: Request) -> Response:
        """``GET``/``HEAD`` (status) or ``DELETE`` (cancel) of an async job."""
        try:
            version, account, container = req.split_path(2, 3, True)
        except ValueError:
            container = "-"
        job_id = req.params[JOB_QUERY]
        if container:
            return json_response(400, {"error": "a job is addressed as "
                                                f"/v1/<account>?{JOB_QUERY}=<id>"})
        unauthenticated = self.unauthenticated(req)
        if unauthenticated is not None:
            return unauthenticated
        if not valid_job_id(job_id):
            return json_response(404, {"error": f"no job {job_id!r} in {account}",
                                       "field": "job"})
        try:
            if req.method == "DELETE":
                return self.async_jobs.cancel(req, account, job_id)
            return self.async_jobs.status(req, account, job_id)
        except ManifestError as err:
            return json_response(err.status, err.to_dict())

    @staticmethod
    def unauthenticated(req: Request) -> Response | None:
        """The auth middleware's 401 for a caller it does not know.

        Only a 401 stops the job here: a known user who may not modify the
        account can still run jobs over what container ACLs let them read and
        write, and every one of those accesses is checked as them later.
        """
        authorize = req.environ.get("swift.authorize")
        if authorize is None or req.environ.get("swift.authorize_override"):
            return None
        denial = authorize(req)
        if denial is not None and denial.status_int == 401:
            return denial
        return None

    # -- the job ------------------------------------------------------------
    def handle_job(self, req: Request, account: str) -> Response:
        limit = self.config.max_manifest_bytes
        body = req.body_file.read(limit + 1)
        if len(body) > limit:
            raise ManifestError(f"manifest larger than {limit} bytes", status=413)
        job = self.accept(req, self.parse(body, account))
        if config_true_value(req.headers.get(wire.ASYNC_HEADER)):
            return self.async_jobs.submit(req, account, body, job)
        return self.respond(job)

    def parse(self, body: bytes, account: str) -> Manifest:
        """A manifest under this cluster's limits and default scheduler."""
        return parse_manifest(body, account, self.config.maximum,
                              self.config.default_scheduler)

    def accept(self, req: Request, manifest: Manifest) -> MapJob | StepsJob:
        """Check everything a manifest names as the request's user: the job, ready to
        run, or a :class:`ManifestError` saying what is wrong."""
        # One info cache for every sub-request of the job: account and container
        # info is looked up once per job, not once per input checked or output written.
        req.environ.setdefault("swift.infocache", {})
        steps = manifest.steps or (manifest,)
        executables: dict[SwiftPath, tuple[str, bytes]] = {}
        for number, step in enumerate(steps):
            self.fetch_executables(req, step, executables,
                                   f"steps[{number}]." if manifest.steps else "")
        if not manifest.steps:
            return self.build_job(req, manifest, executables)
        try:
            first = self.build_job(req, steps[0], executables)
        except ManifestError as err:
            raise ManifestError(err.error, f"steps[0].{err.field}" if err.field else "steps[0]",
                                err.status) from None
        return StepsJob(self, req, manifest, first, executables)

    def account_for(self, account: str, report: JobReport) -> None:
        """An accounting line, and StatsD metrics through Swift's logger, per job."""
        usage = report.usage()
        self.logger.info("zerocompute accounting: account=%s job=%s status=%s tasks=%d "
                         "cpu_ms=%.0f guest_ms=%.0f bytes_read=%d bytes_written=%d ms=%.0f",
                         account, report.job, report.status, usage["tasks"], usage["cpu_ms"],
                         usage["guest_ms"], usage["bytes_read"], usage["bytes_written"],
                         report.ms)
        self.logger.increment(f"jobs.{report.status}")
        self.logger.update_stats("tasks", usage["tasks"])
        self.logger.update_stats("cpu_ms", int(usage["cpu_ms"]))
        self.logger.update_stats("bytes_read", usage["bytes_read"])
        self.logger.update_stats("bytes_written", usage["bytes_written"])
        self.logger.timing("job_ms", report.ms)

    def fetch_executables(self, req: Request, manifest: Manifest,
                          executables: dict[SwiftPath, tuple[str, bytes]], where: str) -> None:
        """Every executable of a job, read as the user (once each)."""
        wanted = [(manifest.map.exec, "map.exec")]
        if manifest.combine is not None:
            wanted.append((manifest.combine.exec, "combine.exec"))
        for out in manifest.reduce_outputs:
            wanted.append((out.reduce.exec, f"outputs.{out.name}.reduce.exec" if out.name
                           else "reduce.exec"))
        for path, field in wanted:
            if path not in executables:
                executables[path] = self.fetch_executable(req, path, where + field)

    def build_job(self, req: Request, manifest: Manifest,
                  executables: dict[SwiftPath, tuple[str, bytes]]) -> MapJob:
        """Expand the inputs, plan the tasks, prepare the outputs: the job, ready to run."""
        whole = manifest.map.large_objects == "whole"
        found = [self.expand_input(req, pattern, f"map.inputs[{i}]", whole)
                 for i, pattern in enumerate(manifest.map.inputs)]
        tasks = plan_map_tasks(manifest, found)
        if len(tasks) > self.config.max_tasks:
            raise ManifestError(f"{len(tasks)} tasks; this cluster runs at most "
                                f"{self.config.max_tasks} per job", "map.inputs", status=413)
        executable = executables[manifest.map.exec]
        if not manifest.reduce_outputs:
            self.prepare_output(req, manifest.output)
            return MapJob(self, req, manifest, executable, tasks)
        for out in manifest.reduce_outputs:
            self.prepare_output(req, out.prefix)
        combiner = executables[manifest.combine.exec] if manifest.combine else None
        return MapReduceJob(self, req, manifest, executable, tasks, executables, combiner)

    def respond(self, job: MapJob | StepsJob) -> Response:
        """The report; after ``heartbeat_s``, the 200 at once and the report when ready."""
        finished = Event()
        account = job.req.split_path(2, 3, True)[1]
        self.running_jobs[account] += 1

        def run() -> None:
            try:
                report = job.run()
            finally:
                self.running_jobs[account] -= 1
            self.account_for(account, report)
            finished.send(report)
        eventlet.spawn_n(run)
        heartbeat = self.config.heartbeat_s
        report = finished.wait(heartbeat) if heartbeat else finished.wait()
        if report is not None:
            return json_response(200, report.to_dict(),
                                 headers={wire.JOB_STATUS_HEADER: report.status})
        # As SLO's heartbeat: every space goes out at once, not once 4 KiB are buffered.
        job.req.environ["eventlet.minimum_write_chunk_size"] = 0
        return Response(status=200, content_type="application/json",
                        app_iter=_heartbeat(finished, heartbeat))

    # -- checks as the user ---------------------------------------------------
    def subrequest(self, req: Request, method: str, path: str, query: str = "",
                   headers: dict | None = None, body: bytes | None = None,
                   stream: Any = None, length: int = 0) -> Response:
        """A request through the rest of the pipeline, authorized as the caller.

        The body is ``body``, or ``length`` bytes read from ``stream`` as they
        are sent on (a task's buffered output, or a gathered output read piece
        by piece).
        """
        if body is not None:
            length = len(body)
        if body is not None or stream is not None:
            headers = dict(headers or {}, **{"Content-Length": str(length)})
        # A path with '?' keeps the sub-request from inheriting the job's query string.
        sub = make_subrequest(req.environ, method=method, path=quote(path) + "?" + query,
                              headers=headers, body=body, swift_source=wire.SWIFT_SOURCE)
        if stream is not None:
            sub.environ["wsgi.input"] = stream
        return sub.get_response(self.app)

    def check_access(self, resp: Response, what: SwiftPath, field: str, noun: str) -> None:
        if resp.status_int == 404:
            raise ManifestError(f"{noun} {what} not found", field)
        if resp.status_int in (401, 403):
            raise ManifestError(f"not allowed to read {noun} {what}", field, status=403)
        if not resp.is_success:
            raise ManifestError(f"cannot read {noun} {what}: {resp.status}", field, status=502)

    def fetch_executable(self, req: Request, path: SwiftPath, field: str) -> tuple[str, bytes]:
        """The executable's bytes and MD5 (the key object servers cache it under)."""
        resp = self.subrequest(req, "GET", path.path)
        self.check_access(resp, path, field, "executable")
        size = resp.content_length or 0
        if size > self.config.max_executable_bytes:
            close_if_possible(resp.app_iter)  # not read: the proxy drops the connection
            raise ManifestError(f"executable {path} is {size} bytes; at most "
                                f"{self.config.max_executable_bytes} are allowed", field)
        data = resp.body
        if runtime_of(path) == "python":
            if not python_runtime_available():
                raise ManifestError("this cluster has no Python runtime for .py executables",
                                    field)
        else:
            try:
                check_wasm(data)
            except InvalidExecutable as err:
                raise ManifestError(f"executable {path}: {err}", field) from None
        return hashlib.md5(data, usedforsecurity=False).hexdigest(), data

    def expand_input(self, req: Request, pattern: SwiftPath, field: str,
                     whole: bool = False) -> list[InputObject]:
        """The objects a pattern names, as the user; large objects with their segments
        (``whole``: the large objects are read whole, their segments need no edges)."""
        if not pattern.has_wildcard:
            resp = self.subrequest(req, "HEAD", pattern.path)
            self.check_access(resp, pattern, field, "input")
            return [InputObject(pattern, resp.content_length or 0, pattern.obj,
                                self.segments_of(req, pattern, resp.headers, field, whole))]
        prefix = listing_prefix(pattern)
        found: list[InputObject] = []
        marker = ""
        while True:
            query = (f"format=json&limit={LISTING_LIMIT}&prefix={quote(prefix, safe='')}"
                     f"&marker={quote(marker, safe='')}")
            resp = self.subrequest(req, "GET", pattern.container_path, query)
            self.check_access(resp, SwiftPath(pattern.account, pattern.container), field,
                               "container")
            listing = json.loads(resp.body or b"[]") if resp.status_int == 200 else []
            matched = match_listing(pattern, ((item["name"], item["bytes"])
                                              for item in listing if "name" in item))
            # A manifest is listed as an SLO (slo_etag) or as an empty object (DLO).
            maybe_large = {item["name"] for item in listing
                           if "name" in item and ("slo_etag" in item or item["bytes"] == 0)}
            for item in matched:
                if item.path.obj in maybe_large:
                    head = self.subrequest(req, "HEAD", item.path.path)
                    self.check_access(head, item.path, field, "input")
                    segments = self.segments_of(req, item.path, head.headers, field, whole)
                    if segments:
                        item = replace(item, size=head.content_length or 0, segments=segments)
                found.append(item)
            if len(listing) < LISTING_LIMIT:
                return found
            marker = listing[-1].get("name") or listing[-1]["subdir"]

    def segments_of(self, req: Request, path: SwiftPath, headers: Any, field: str,
                    whole: bool = False) -> tuple[Segment, ...]:
        """A large object's segments with their edges (``()`` for a plain object), read as
        the user: an SLO's manifest, or a DLO's segment listing, and a few bytes at each
        segment boundary (``planning.segment_edges``; not for an object read whole)."""
        if config_true_value(headers.get("X-Static-Large-Object")):
            resp = self.subrequest(req, "GET", path.path, "multipart-manifest=get")
            self.check_access(resp, path, field, "input")
            parts = []
            for item in json.loads(resp.body):
                if item.get("sub_slo") or "range" in item or "data" in item:
                    raise ManifestError(f"{path}: an SLO with nested SLOs, ranges or inline "
                                        "data cannot be an input yet", field)
                container, _, obj = item["name"].lstrip("/").partition("/")
                parts.append((SwiftPath(path.account, container, obj), int(item["bytes"])))
        elif headers.get("X-Object-Manifest"):
            container, _, prefix = unquote(headers["X-Object-Manifest"]).partition("/")
            pattern = SwiftPath(path.account, container, prefix + "*")
            parts = [(found.path, found.size)
                     for found in self.expand_input(req, pattern, field)]
        else:
            return ()
        if not parts:
            raise ManifestError(f"{path} is a large object without segments", field)
        if whole:
            return tuple(Segment(segment, size) for segment, size in parts)
        last_bytes, heads = [], []
        for number, (segment, size) in enumerate(parts):
            # The last segment's last byte decides nothing: it is not read.
            last_bytes.append(self.read_range(req, segment, f"bytes={size - 1}-{size - 1}",
                                              field) if size and number + 1 < len(parts)
                              else b"")
            heads.append(self.read_range(req, segment, f"bytes=0-{EDGE_BYTES - 1}", field)
                         if number and size else b"")
        return segment_edges([p for p, _ in parts], [s for _, s in parts], last_bytes, heads,
                             str(path))

    def read_range(self, req: Request, path: SwiftPath, byte_range: str, field: str) -> bytes:
        resp = self.subrequest(req, "GET", path.path, headers={"Range": byte_range})
        self.check_access(resp, path, field, "segment")
        return resp.body

    def prepare_output(self, req: Request, output: SwiftPath) -> None:
        """Create the output container if needed; forget a previous run's ``_SUCCESS``."""
        container = SwiftPath(output.account, output.container)
        resp = self.subrequest(req, "HEAD", container.path)
        if resp.status_int == 404:
            resp = self.subrequest(req, "PUT", container.path)
        if resp.status_int in (401, 403):
            raise ManifestError(f"not allowed to write to {container}", "output", status=403)
        if not resp.is_success:
            raise ManifestError(f"cannot use output container {container}: {resp.status}",
                                "output", status=502)
        success = job_file(output, SUCCESS_NAME)
        resp = self.subrequest(req, "DELETE", success.path)
        if resp.status_int in (401, 403):
            raise ManifestError(f"not allowed to write to {container}", "output", status=403)
    def write_job_files(self, req: Request, output: SwiftPath, report: JobReport) -> None:
        """The report always; ``_SUCCESS`` last, and only when every task succeeded."""
        files = [(REPORT_NAME, "application/json", report.to_json())]
        if report.status == SUCCEEDED:
            # Written last: whoever sees _SUCCESS may trust every output is there.
            files.append((SUCCESS_NAME, "text/plain", b""))
        for name, content_type, body in files:
            target = job_file(output, name)
            try:
                resp = self.subrequest(req, "PUT", target.path, body=body,
                                       headers={"Content-Type": content_type})
                failure = None if resp.is_success else resp.status
            except Exception as err:  # noqa: BLE001 - said in the report we answer with
                self.logger.exception("zerocompute: writing %s failed", target)
                failure = f"{type(err).__name__}: {err}"
            if failure is not None:
                report.error = f"writing {target} failed: {failure}"
                return


def _heartbeat(finished: Event, interval: float):
    """Spaces (valid leading JSON whitespace) until the report, then the report.

    The first goes at once: the status line leaves with the first bytes.
    """
    yield b" "
    while (report := finished.wait(interval)) is None:
        yield b" "
    yield json.dumps(report.to_dict(), indent=1).encode("utf-8") + b"\n"


class MapJob:
    """One map-only job: its request, manifest, executable, tasks and reports.

    Built once the manifest has been checked; :meth:`run` places and runs
    the tasks (:class:`JobRun`), writes each output as its result arrives
    (``concurrency`` writes at once; a stream that finds every writer busy
    waits, which bounds the outputs held in memory) or gathers them into the
    one output object, and writes the job's own files.
    """

    def __init__(self, middleware: JobMiddleware, req: Request, manifest: Manifest,
                 executable: tuple[str, bytes], tasks: list[MapTask]):
        self.middleware = middleware
        self.config = middleware.config
        self.req = req
        self.manifest = manifest
        self.etag, self.code = executable
        self.tasks = tasks
        self.reports = [TaskReport(kind="map", task=t.task_id, input=str(t.input.path),
                                   output=None if t.output is None else str(t.output),
                                   bytes_in=t.input.size if t.split is None
                                   else t.split[1] - t.split[0],
                                   split=None if t.split is None else list(t.split))
                         for t in tasks]
        self.writes = GreenPool(self.config.concurrency)
        self.gathered = Gathered() if manifest.gathers else None
        self._policies: dict[str, int] = {}
        # Bytes through the proxy: task traffic, and the outputs it writes (once each;
        # Swift's proxy then sends each to every replica).
        self.proxy_bytes = 0
        # Every output this job writes carries its id; a job taken over (``resume``)
        # does not run again a task whose output carries it already.
        self.job_id = new_job_id()
        self.resume = False
        self.cancelled: str | None = None
        self.runs: list[JobRun] = []  # the phases running now
        self.sent_to: dict[str, dict] = {}  # every node a group of this job went to

    def run(self) -> JobReport:
        started = time.perf_counter()
        try:
            if self.resume:
                self.skip_committed()
            states = self.task_states()
            self.run_tasks(states)
            error = self.write_gathered()
        except Exception as err:  # noqa: BLE001 - the report says what happened
            self.middleware.logger.exception("zerocompute: job %s failed", self.manifest.name)
            error = f"internal error: {type(err).__name__}: {err}"
        report = self.job_report(started, self.reports, error,
                                 output=str(self.manifest.output) if self.gathered else None)
        if not self.cancelled:
            self.middleware.write_job_files(self.req, self.manifest.output, report)
        return report

    def job_report(self, started: float, tasks: list[TaskReport], error: str | None,
                   **extra: Any) -> JobReport:
        return JobReport(self.manifest.name, self.manifest.scheduler, tasks,
                         ms=(time.perf_counter() - started) * 1000, error=error,
                         proxy_bytes=self.proxy_bytes, id=self.job_id,
                         cancelled=self.cancelled, **extra)

    @property
    def all_reports(self) -> list[TaskReport]:
        return self.reports

    def progress(self) -> dict[str, int]:
        """Tasks done and failed so far (an async job's status shows it)."""
        reports = self.all_reports
        retries = sum(len(r.retries) for r in reports) + sum(
            len(s.failed) for run in self.runs for s in run.tasks)
        return {"tasks": len(reports), "done": sum(1 for r in reports if r.ok),
                "failed": sum(1 for r in reports if r.error is not None),
                "bytes_in": sum(r.bytes_in for r in reports if r.ok), "retries": retries}

    def cancel(self, reason: str) -> None:
        """Stop now: no task is sent, running ones are hung up on, nothing more is
        written (writes already under way finish)."""
        if self.cancelled is None:
            self.cancelled = reason
        for run in list(self.runs):
            run.abort(reason)

    # -- a job taken over ---------------------------------------------------------
    def committed(self, target: SwiftPath) -> int | None:
        """The size of ``target`` if this job has written it already, else None."""
        resp = self.middleware.subrequest(self.req, "HEAD", target.path)
        if resp.is_success and resp.headers.get(JOB_ID_META) == self.job_id:
            return resp.content_length or 0
        return None

    def skip_committed(self) -> None:
        """Mark the tasks whose outputs this job committed before it was taken over."""
        if self.gathered is not None:
            size = self.committed(self.manifest.output)
            if size is not None:
                for report in self.reports:
                    reuse(report, 0)
            return
        targets = [(report, task.output) for report, task in zip(self.reports, self.tasks,
                                                                 strict=True)]
        self.skip_written(targets)

    def skip_written(self, targets: list[tuple[TaskReport, SwiftPath | None]]) -> None:
        pile = eventlet.GreenPile(self.config.concurrency)
        for report, target in targets:
            if target is not None:
                pile.spawn(lambda r, t: (r, self.committed(t)), report, target)
        for report, size in pile:
            if size is not None:
                reuse(report, size)

    # -- placing --------------------------------------------------------------
    def task_states(self) -> list[TaskState]:
        states = []
        for index, task in enumerate(self.tasks):
            if self.reports[index].reused:
                continue
            item = task.input
            path = f"/{item.path.account}/{item.path.container}/{item.path.obj}"
            env = (("ZEROCOMPUTE_INPUT", str(item.path)),
                   ("ZEROCOMPUTE_INPUT_SIZE", str(item.size)),
                   ("ZEROCOMPUTE_TASK", task.task_id))
            if task.whole:  # a large object read whole: nowhere local, streamed
                states.append(self.streamed(TaskState(
                    index=index, task_id=task.task_id, partition=0, path=path,
                    policy_index=0, env=env, candidates=[[], []])))
                continue
            placement = self.placement(item.path)
            if placement is None:
                self.reports[index].error = "cannot locate the input in the ring"
                continue
            policy_index, partition, primaries, handoffs = placement
            split_env = () if task.split is None else (
                ("ZEROCOMPUTE_SPLIT_START", str(task.split[0])),
                ("ZEROCOMPUTE_SPLIT_END", str(task.split[1])))
            ec = erasure_code(policy_index, partition, path, primaries)
            if ec is None:
                candidates = [primaries, handoffs]
            else:
                # Data fragments first: a systematic code then decodes without arithmetic.
                data = [n for n in primaries if n["index"] < ec.k]
                candidates = [data, [n for n in primaries if n not in data], handoffs]
            edges = None if task.segment is None else (
                task.segment.skip, base64.b64encode(task.segment.carry).decode("ascii"))
            states.append(TaskState(
                index=index, task_id=task.task_id, partition=partition, path=path,
                policy_index=policy_index, env=(*env, *split_env),
                candidates=candidates, split=task.split, ec=ec, edges=edges))
        return states

    def placement(self, path: SwiftPath) -> tuple[int, int, list, list] | None:
        """Policy, partition, primaries and handoffs of an object (None if unknown)."""
        try:
            policy_index = self._policies.get(path.container_path)
            if policy_index is None:
                env = make_env(self.req.environ, path=str_to_wsgi(path.container_path))
                info = get_container_info(env, self.middleware.app, swift_source=wire.SWIFT_SOURCE)
                policy_index = self._policies[path.container_path] = \
                    int(info.get("storage_policy") or 0)
            ring = POLICIES.get_object_ring(policy_index, self.config.swift_dir)
            partition, primaries = ring.get_nodes(path.account, path.container, path.obj)
            handoffs = list(itertools.islice(ring.get_more_nodes(partition), 2))
        except Exception as err:  # noqa: BLE001 - reported per task
            self.middleware.logger.warning("zerocompute: cannot locate %s: %s", path, err)
            return None
        return policy_index, partition, primaries, handoffs

    # -- running ----------------------------------------------------------------
    def run_tasks(self, states: list[TaskState]) -> None:
        self.run_phase(states, self.template(self.manifest.map, self.etag),
                       {self.etag: self.code}, self.take_result, self.reports)

    def template(self, stage: Stage, etag: str, kind: str = "map",
                 shuffle: wire.ShuffleSpec | None = None) -> wire.TaskGroup:
        """What every task of a phase shares."""
        manifest = self.manifest
        env = [*stage.env, ("ZEROCOMPUTE_JOB", manifest.name),
               ("ZEROCOMPUTE_RECORDS", manifest.records),
               ("ZEROCOMPUTE_PHASE", kind if shuffle is not None else wire.PHASE_MAP_ONLY)]
        if kind == "map" and shuffle is not None and shuffle.combine is not None \
                and shuffle.combine.exec_etag == etag:
            # The job's combiner is this very program, run with these arguments: its SDK
            # may combine in memory with the function they name, within the sort buffer
            # (doc/guests.md, "In-mapper combining").
            env += [("ZEROCOMPUTE_COMBINER", shuffle.combine.args[0] if shuffle.combine.args
                     else ""), ("ZEROCOMPUTE_SORT_BUFFER", str(shuffle.memory_bytes))]
        return wire.TaskGroup(
            job=manifest.name, exec_etag=etag, exec_name=stage.exec.obj.rsplit("/", 1)[-1],
            runtime=runtime_of(stage.exec), args=stage.args, env=tuple(env),
            limits=manifest.limits, tasks=(), kind=kind, shuffle=shuffle)

    def run_phase(self, states: list[TaskState], template: wire.TaskGroup,
                  executables: dict[str, bytes], on_result,
                  reports: list[TaskReport]) -> JobRun | None:
        """Run tasks to their end (each claimed or failed), then wait for their writes."""
        if self.cancelled:
            for state in states:
                reports[state.index].error = self.cancelled
        if not states or self.cancelled:
            return None
        dispatcher = self.middleware.dispatcher
        dispatcher.probe(list({node_key(n): n for s in states
                               for n in s.candidates[0]}.values()))
        manifest = self.manifest
        settings = RunSettings(
            policy=manifest.scheduler, concurrency=self.config.concurrency,
            max_group=self.config.max_group,
            backups=self.config.backup_tasks and manifest.backup_tasks,
            backup_factor=self.config.backup_factor, backup_min_s=self.config.backup_min_s)
        run = JobRun(dispatcher, states, template, executables, settings, on_result)
        # Listed until its failed attempts are in the reports: progress() counts both.
        self.runs.append(run)
        try:
            run.run()
            self.writes.waitall()
            self.proxy_bytes += run.bytes
            for state in states:
                report = reports[state.index]
                report.attempts, report.retries, report.backup = \
                    len(report.retries) + state.attempts, report.retries + state.failed, \
                    report.backup or state.backed_up
                if state.error is not None:
                    report.error = state.error
                    report.exit = None
                if state.first_sent is not None and not report.wall_ms:
                    report.wall_ms = round((time.monotonic() - state.first_sent) * 1000, 3)
        finally:
            self.runs.remove(run)
        self.sent_to.update(run.nodes)
        self.stream_encrypted(states, template, executables, on_result, reports)
        return run

    # -- encrypted inputs ---------------------------------------------------------------
    def stream_encrypted(self, states: list[TaskState], template: wire.TaskGroup,
                         executables: dict[str, bytes], on_result,
                         reports: list[TaskReport]) -> None:
        """Run again, streamed through the proxy's read path (which decrypts), the tasks
        whose object servers found their input encrypted at rest."""
        refused = [s for s in states if s.opener is None
                   and reports[s.index].error == wire.ENCRYPTED_INPUT]
        if not refused or self.cancelled:
            return
        again = []
        for state in refused:
            report = reports[state.index]
            if not self.config.stream_encrypted_inputs:
                report.error = (f"{wire.ENCRYPTED_INPUT}, and this cluster does not read them "
                                "through the proxy (stream_encrypted_inputs = false)")
            elif state.split is not None or state.edges is not None:
                report.error = (f"{wire.ENCRYPTED_INPUT}: splits and segments of encrypted "
                                "objects are not supported yet")
            else:
                report.retries.append(Attempt(report.node or "", wire.ENCRYPTED_INPUT))
                report.error, report.exit, report.node = None, None, None
                again.append(self.streamed(state))
        if again:
            self.run_phase(again, template, executables, on_result, reports)

    def streamed(self, state: TaskState) -> TaskState:
        """``state`` as a task whose plaintext the proxy streams to any object server."""
        item = self.tasks[state.index].input
        nodes = list({node_key(n): n for n in self.object_servers()}.values())
        self.middleware.dispatcher.rng.shuffle(nodes)
        return replace(state, candidates=[nodes, []], tried=set(), busy_until={}, failed=[],
                       live={}, first_sent=None, running_since=None, backed_up=False,
                       done=False, node=None, error=None, ec=None, stream_bytes=item.size,
                       opener=lambda: self.open_plaintext(item.path, item.size))

    def open_plaintext(self, target: SwiftPath, size: int) -> tuple[int, Any]:
        """The object's bytes through the rest of the pipeline, as the user (decrypted)."""
        resp = self.middleware.subrequest(self.req, "GET", target.path)
        if not resp.is_success or resp.content_length != size:
            close_if_possible(resp.app_iter)
            raise OSError(f"reading {target} through the proxy: {resp.status}, "
                          f"{resp.content_length} bytes (expected {size})")
        return size, resp.app_iter

    def object_servers(self) -> list[dict]:
        """Every device of the object ring the inputs live in."""
        policy_index = next(iter(self._policies.values()), 0)
        ring = POLICIES.get_object_ring(policy_index, self.config.swift_dir)
        return [dev for dev in ring.devs if dev]

    @staticmethod
    def record(report: TaskReport, state: TaskState, node: dict,
               result: wire.TaskResult) -> None:
        """What a task's claiming result says, into its report."""
        report.node = node_label(node)
        report.local = node_key(node) in {node_key(n) for n in state.holders}
        report.exit = result.exit
        report.error = result.invalid or result.error
        report.stderr = result.stderr
        report.ms = result.ms
        report.cpu_ms = round(result.cpu_ms, 3)
        report.bytes_in = result.bytes_in or report.bytes_in
        report.bytes_local, report.bytes_peer = result.bytes_local, result.bytes_peer
        report.fragments = result.fragments
        if result.shuffle_steps:
            report.shuffle = {step: [wall, cpu] for step, wall, cpu in result.shuffle_steps}
        if result.partitions is not None:
            report.records, report.records_shuffled = result.records, result.records_combined
        if report.exit is not None and report.exit != 0 and report.error is None:
            report.error = f"guest exited with status {report.exit}"

    def take_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                    stream: Any) -> None:
        """A map-only task's claiming result: record it and hand its output on."""
        report = self.reports[state.index]
        self.record(report, state, node, result)
        output = read_output(stream, result.stdout_bytes)
        if not report.ok:
            output.close()
            return
        if self.gathered is not None:
            self.gathered.add(state.index, output, result.stdout_bytes)
            report.bytes_out = result.stdout_bytes
            self.finish(state, report)
            return
        # Blocks while every writer is busy: the stream waits, memory stays bounded.
        self.writes.spawn_n(self.write_output, state, report, output, result.stdout_bytes,
                            self.tasks[state.index].output)

    def write_output(self, state: TaskState, report: TaskReport, output: Any,
                     length: int, target: SwiftPath) -> None:
        try:
            status = ""
            for _ in range(WRITE_TRIES):
                if self.cancelled:
                    report.error = self.cancelled
                    return
                output.seek(0)
                resp = self.middleware.subrequest(self.req, "PUT", target.path, stream=output,
                                                  length=length,
                                                  headers={JOB_ID_META: self.job_id})
                status = resp.status
                if resp.is_success:
                    report.bytes_out = length
                    self.proxy_bytes += length
                    return
                if resp.status_int // 100 == 4:
                    break  # refused (401, 403, 413 ...): trying again changes nothing
            report.error = f"writing output {target} failed: {status}"
        except Exception as err:  # noqa: BLE001 - one task's write, reported on it
            self.middleware.logger.exception("zerocompute: writing %s failed", target)
            report.error = f"writing output {target} failed: {type(err).__name__}: {err}"
        finally:
            output.close()
            self.finish(state, report)

    @staticmethod
    def finish(state: TaskState, report: TaskReport) -> None:
        if state.first_sent is not None:
            report.wall_ms = round((time.monotonic() - state.first_sent) * 1000, 3)

    def write_gathered(self) -> str | None:
        """The one output of a gathering job, in input order, once every task succeeded."""
        if self.gathered is None or not all(r.ok for r in self.reports) or self.cancelled \
                or all(r.reused for r in self.reports):
            return None
        target = self.manifest.output
        try:
            resp = self.middleware.subrequest(self.req, "PUT", target.path,
                                              stream=self.gathered.reader(),
                                              length=self.gathered.size,
                                              headers={JOB_ID_META: self.job_id})
        finally:
            self.gathered.close()
        if not resp.is_success:
            return f"writing output {target} failed: {resp.status}"
        self.proxy_bytes += self.gathered.size
        return None


# A total order's sample (MapReduceJob.sample_split_points): inputs, bytes of each, keys
# of each.  TeraSort's sampler reads 100,000 keys from ten splits.
SAMPLE_TASKS = 10
SAMPLE_BYTES = 1 << 20
SAMPLE_KEYS = 10_000


class MapReduceJob(MapJob):
    """A job with a reduce: map, shuffle, reduce (``doc/shuffle.md``).

    Each map runs beside its input as in a map-only job, but its output stays
    on its node, split into the job's partitions and sorted by key
    (:mod:`zerocompute.shuffle`, in the executors).  Then one reduce task per
    partition, placed by the same scheduler on any object server, fetches its
    partition from every map's node, merges them and runs the reducer; its
    output becomes ``part-NNNNN`` under the output's prefix.  With named
    outputs, each has its own partitions, reducer and prefix, and the map
    writes ``name<TAB>key<TAB>value``.  A map output that cannot be fetched
    (its node died) has its map run again on another replica, and the reduces
    that needed it run again.  A job that fails leaves no part objects: those
    written are deleted.  Map outputs are deleted from the nodes when the job
    ends.
    """

    def __init__(self, middleware: JobMiddleware, req: Request, manifest: Manifest,
                 executable: tuple[str, bytes], tasks: list[MapTask],
                 reducers: dict[SwiftPath, tuple[str, bytes]],
                 combiner: tuple[str, bytes] | None = None):
        super().__init__(middleware, req, manifest, executable, tasks)
        self.reducers = reducers
        self.combiner = combiner
        # Every executable a map group may need: its own, and the combiner's.
        self.map_executables = {self.etag: self.code, **dict([combiner] if combiner else [])}
        self.shuffle_id = uuid.uuid4().hex
        self.outputs = manifest.reduce_outputs
        # Partitions are numbered across outputs: output i has the next R_i of them.
        self.slots = [(out, n) for out in self.outputs for n in range(out.reduce.partitions)]
        self.partitions = len(self.slots)
        self.map_outputs: dict[int, tuple[dict, list[int]]] = {}  # map -> (node, sizes)
        self.lost: dict[int, list[str]] = {}  # reduce partition -> maps it could not fetch
        self.reduce_reports = [
            TaskReport(kind="reduce", task=self.reduce_task_id(out, n),
                       input=f"partition {n}" + (f" of {out.name}" if out.name else ""),
                       output=str(out.part(n))) for out, n in self.slots]
        # A total order: its split points, from the keys the sampling maps return.
        self.ranged = self.outputs[0].reduce.partitioner == RANGE and self.partitions > 1
        self.sample_reports: list[TaskReport] = []
        self.sampled: list[bytes] = []
        self.split_points: list[bytes] = []

    @staticmethod
    def reduce_task_id(out: NamedOutput, number: int) -> str:
        return f"{out.name}-r{number:05d}" if out.name else f"r{number:05d}"

    def run(self) -> JobReport:
        started = time.perf_counter()
        error = None
        try:
            if self.resume:
                self.skip_committed()
            self.map_reduce()
        except Exception as err:  # noqa: BLE001 - the report says what happened
            self.middleware.logger.exception("zerocompute: job %s failed", self.manifest.name)
            error = f"internal error: {type(err).__name__}: {err}"
        finally:
            self.clean_up_shuffle()
        report = self.job_report(started, self.all_reports, error,
                                 partitioning=self.partitioning())
        if report.status != SUCCEEDED:
            # Parts without _SUCCESS are no result: a failed or cancelled job leaves none.
            self.delete_parts()
        if not self.cancelled:
            for out in self.outputs:
                self.middleware.write_job_files(self.req, out.prefix, report)
        return report

    @property
    def all_reports(self) -> list[TaskReport]:
        return self.sample_reports + self.reports + self.reduce_reports

    def skip_committed(self) -> None:
        """Parts this job committed before it was taken over are not reduced again; when
        every part is there, no map runs either."""
        self.skip_written([(report, out.part(local)) for report, (out, local)
                           in zip(self.reduce_reports, self.slots, strict=True)])
        if all(r.reused for r in self.reduce_reports):
            for report in self.reports:
                reuse(report, 0)

    def map_reduce(self) -> None:
        todo = [n for n in range(self.partitions) if not self.reduce_reports[n].reused]
        if not todo:
            return
        map_states = self.task_states()
        if self.ranged and not self.sample_split_points(map_states):
            return
        map_template = self.template(self.manifest.map, self.etag, shuffle=self.shuffle)
        self.run_maps(map_states, map_template)
        if not all(r.ok for r in self.reports) or self.cancelled:
            return
        for _ in range(3):  # reduces, and maps whose output was lost, run again at most twice
            self.run_reduces(todo)
            lost = {task for n in todo for task in self.lost.get(n, ())}
            if not lost:
                return
            # Run those maps again, on another replica than the one that lost them.
            again = []
            for state in (s for s in map_states if s.task_id in lost):
                node, _ = self.map_outputs.pop(state.index)
                self.reports[state.index].retries.append(
                    Attempt(node_label(node), "map output lost: a reduce could not fetch it"))
                again.append(replace(state, tried={node_key(node)}, busy_until={}, failed=[],
                                     live={}, first_sent=None, running_since=None,
                                     backed_up=False, done=False, node=None, error=None))
            self.run_maps(again, map_template)
            if not all(r.ok for r in self.reports) or self.cancelled:
                return
            todo = [n for n in todo if n in self.lost]
            for n in todo:
                report = self.reduce_reports[n]
                report.retries.append(Attempt(report.node or "", report.error or ""))
                report.error = None

    def sample_split_points(self, states: list[TaskState]) -> bool:
        """A total order's split points (Hadoop's ``InputSampler``, as TeraSort uses it):
        the map runs over the first ``SAMPLE_BYTES`` of up to ``SAMPLE_TASKS`` inputs
        spread over the job's, each returning up to ``SAMPLE_KEYS`` of its keys (the
        map's keys, whatever it makes of its input), and the sorted sample's quantiles
        cut the key space into the job's partitions.  Whether every sample ran."""
        readable = [s for s in states if s.edges is None and s.opener is None] or states
        chosen = [readable[i] for i in evenly_spaced(len(readable), SAMPLE_TASKS)]
        sample_states = []
        for number, state in enumerate(chosen):
            start, end = state.split or (0, self.tasks[state.index].input.size)
            split = (start, min(end, start + SAMPLE_BYTES))
            task_id = f"s{number:05d}"
            sample_states.append(replace(state, index=number, task_id=task_id, split=split))
            self.sample_reports.append(TaskReport(
                kind="sample", task=task_id, input=self.reports[state.index].input,
                split=list(split)))
        template = self.template(self.manifest.map, self.etag,
                                 shuffle=replace(self.shuffle, sample=SAMPLE_KEYS))
        self.run_phase(sample_states, template, self.map_executables, self.take_sample_result,
                       self.sample_reports)
        if not all(r.ok for r in self.sample_reports) or self.cancelled:
            for report in self.reports:  # no map ran: the job failed before them
                report.error = report.error or "the key sample for the total order failed"
            return False
        self.split_points = split_points(self.sampled, self.partitions)
        return True

    def take_sample_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                           stream: Any) -> None:
        report = self.sample_reports[state.index]
        self.record(report, state, node, result)
        output = read_output(stream, result.stdout_bytes)
        try:
            if report.ok:
                report.bytes_out = result.stdout_bytes
                self.sampled += framed_keys(output.read())
        except ValueError as err:
            report.error = f"the key sample is damaged: {err}"
        finally:
            output.close()
        self.finish(state, report)

    def partitioning(self) -> dict[str, Any]:
        """The report's account of how keys were partitioned."""
        if not self.ranged:
            return {"partitioner": HASH}
        return {"partitioner": RANGE, "sampled_keys": len(self.sampled),
                "split_points": [p.decode("utf-8", "backslashreplace")
                                 for p in self.split_points]}

    def run_maps(self, states: list[TaskState], template: wire.TaskGroup) -> None:
        self.run_phase(states, template, self.map_executables, self.take_map_result,
                       self.reports)

    def run_reduces(self, partitions: list[int]) -> None:
        """The reduces of ``partitions``, each output's with its own reducer, at once."""
        pile = eventlet.GreenPile(max(1, len(self.outputs)))
        for out in self.outputs:
            states = [self.reduce_state(n) for n in partitions if self.slots[n][0] is out]
            if not states:
                continue
            etag, code = self.reducers[out.reduce.exec]
            template = self.template(out.reduce, etag, "reduce", self.shuffle)
            pile.spawn(self.run_phase, states, template, {etag: code},
                       self.take_reduce_result, self.reduce_reports)
        list(pile)

    @property
    def shuffle(self) -> wire.ShuffleSpec:
        combine, spec = self.manifest.combine, None
        if combine is not None and self.combiner is not None:
            spec = wire.CombineSpec(
                exec_etag=self.combiner[0], exec_name=combine.exec.obj.rsplit("/", 1)[-1],
                runtime=runtime_of(combine.exec), args=tuple(combine.args),
                env=(*combine.env, ("ZEROCOMPUTE_JOB", self.manifest.name),
                     ("ZEROCOMPUTE_RECORDS", self.manifest.records),
                     ("ZEROCOMPUTE_PHASE", wire.PHASE_COMBINE)))
        return wire.ShuffleSpec(
            id=self.shuffle_id, partitions=self.partitions, records=self.manifest.records,
            memory_bytes=self.config.shuffle_buffer_bytes,
            outputs=tuple((out.name, out.reduce.partitions) for out in self.outputs)
            if self.manifest.named else (), combine=spec,
            splits=tuple(base64.b64encode(p).decode("ascii") for p in self.split_points))

    def reduce_state(self, number: int) -> TaskState:
        """Partition ``number``'s reduce: any object server may run it."""
        self.lost.pop(number, None)
        out, local = self.slots[number]
        task_id = self.reduce_task_id(out, local)
        sources = tuple((node_key(node), self.tasks[index].task_id)
                        for index, (node, sizes) in sorted(self.map_outputs.items())
                        if sizes[number])
        nodes = list({node_key(n): n for n in self.object_servers()}.values())
        self.middleware.dispatcher.rng.shuffle(nodes)
        return TaskState(index=number, task_id=task_id, partition=0, path="",
                         policy_index=0, env=(("ZEROCOMPUTE_TASK", task_id),
                                              ("ZEROCOMPUTE_PARTITION", str(local)),
                                              ("ZEROCOMPUTE_OUTPUT", out.name)),
                         candidates=[nodes, []], reduce_partition=number, sources=sources)

    def take_map_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                        stream: Any) -> None:
        report = self.reports[state.index]
        self.record(report, state, node, result)
        read_output(stream, result.stdout_bytes).close()  # nothing, for a shuffling map
        if report.ok:
            sizes = result.partitions or [0] * self.partitions
            self.map_outputs[state.index] = (node, sizes)
            report.bytes_out = sum(sizes)
        self.finish(state, report)

    def take_reduce_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                           stream: Any) -> None:
        report = self.reduce_reports[state.index]
        self.record(report, state, node, result)
        report.local = False  # a reduce reads from every map's node, wherever it runs
        report.bytes_in = sum(self.map_outputs[i][1][state.index] for i in self.map_outputs)
        if result.lost:
            self.lost[state.index] = list(result.lost)
        output = read_output(stream, result.stdout_bytes)
        if not report.ok:
            output.close()
            return
        out, local = self.slots[state.index]
        self.writes.spawn_n(self.write_output, state, report, output, result.stdout_bytes,
                            out.part(local))

    def delete_parts(self) -> None:
        """A failed job leaves no part objects of its own."""
        for report, (out, local) in zip(self.reduce_reports, self.slots, strict=True):
            if report.ok:
                self.middleware.subrequest(self.req, "DELETE", out.part(local).path)

    def clean_up_shuffle(self) -> None:
        """Ask every node that kept map outputs to delete them (best effort: the
        object servers reap what is left after ``shuffle_max_age_s``)."""
        path = wire.shuffle_path(self.shuffle_id)
        pile = eventlet.GreenPile(16)
        # Backup losers and broken attempts may have left partitions there too.
        for node in self.sent_to.values():
            pile.spawn(self._delete_shuffle, node, path)
        list(pile)

    def _delete_shuffle(self, node: dict, path: str) -> None:
        try:
            with ConnectionTimeout(self.config.conn_timeout):
                conn = http_connect_raw(node["ip"], node["port"], "DELETE", path,
                                        headers=wire.sign_request(self.config.secret,
                                                                  "DELETE", path))
            with eventlet.Timeout(10):
                conn.getresponse().read()
            conn.close()
        except (Exception, eventlet.Timeout):  # noqa: BLE001 - the reaper gets it later
            self.middleware.logger.warning("zerocompute: could not delete map outputs of "
                                           "%s on %s", self.shuffle_id, node_key(node))


class RunOnGet:
    """One guest over one object, its stdout as the response (ZeroCloud's ``open``,
    Storlets' ``X-Run-Storlet``).

    ``X-Zerocompute-Run`` names the executable (``swift://...``), or says
    ``default``: the container's ``X-Container-Meta-Zerocompute-Run``.
    ``X-Zerocompute-Args`` is a JSON list of arguments.  The object and the
    executable are read as the user; a ``Range`` (one range of bytes) is the
    guest's input.  The task runs on a replica holder, under the operator's
    maximum limits; the response is the guest's stdout once it has exited 0
    (``X-Zerocompute-Node`` names where it ran), else a JSON error.
    """

    def __init__(self, middleware: JobMiddleware, req: Request, target: SwiftPath):
        self.middleware = middleware
        self.req = req
        self.target = target

    def executable(self) -> SwiftPath:
        named = self.req.headers[wire.RUN_HEADER].strip()
        if named.lower() == "default":
            resp = self.middleware.subrequest(self.req, "HEAD", self.target.container_path)
            self.middleware.check_access(resp, SwiftPath(self.target.account,
                                                          self.target.container),
                                          wire.RUN_HEADER, "container")
            named = resp.headers.get("X-Container-Meta-Zerocompute-Run", "")
            if not named:
                raise ManifestError("the container names no default executable "
                                    "(X-Container-Meta-Zerocompute-Run)", wire.RUN_HEADER)
        return parse_exec(named, wire.RUN_HEADER, self.target.account)

    def arguments(self) -> tuple[str, ...]:
        raw = self.req.headers.get(wire.ARGS_HEADER)
        if not raw:
            return ()
        try:
            args = json.loads(raw)
        except ValueError:
            raise ManifestError("must be a JSON list of strings", wire.ARGS_HEADER) from None
        return parse_string_list(args, wire.ARGS_HEADER)

    def byte_range(self, size: int) -> tuple[int, int] | None:
        if "Range" not in self.req.headers:
            return None
        ranges = self.req.range.ranges_for_length(size) if self.req.range else None
        if not ranges or len(ranges) != 1:
            raise ManifestError("give one range of bytes", "Range", status=416)
        return ranges[0]

    def respond(self) -> Response:
        middleware, req = self.middleware, self.req
        exe = self.executable()
        args = self.arguments()
        etag, code = middleware.fetch_executable(req, exe, wire.RUN_HEADER)
        head = middleware.subrequest(req, "HEAD", self.target.path)
        middleware.check_access(head, self.target, "path", "object")
        size = head.content_length or 0
        span = self.byte_range(size)
        manifest = Manifest(name="run", map=MapStage(exec=exe, args=args, inputs=(self.target,)),
                            output=self.target, limits=middleware.config.maximum,
                            scheduler=middleware.config.default_scheduler, backup_tasks=False)
        task = MapTask("g00000", InputObject(self.target, size, self.target.obj), None, span)
        job = MapJob(middleware, req, manifest, (etag, code), [task])
        outputs: list[Any] = []

        def keep(state: TaskState, node: dict, result: wire.TaskResult, stream: Any) -> None:
            job.record(job.reports[0], state, node, result)
            output = read_output(stream, result.stdout_bytes)
            if job.reports[0].ok:
                outputs.append(output)
            else:  # e.g. an encrypted object, about to be streamed instead
                output.close()
        states = job.task_states()
        for state in states:
            state.exact = span is not None
        job.run_phase(states, job.template(manifest.map, etag), {etag: code}, keep,
                      job.reports)
        report = job.reports[0]
        if not report.ok:
            for output in outputs:
                output.close()
            return json_response(502 if report.exit is None else 422, {
                "error": report.error or "the guest failed", "node": report.node,
                "stderr": report.stderr})
        output = outputs[0]
        length = output.seek(0, 2)
        output.seek(0)
        return Response(status=200, app_iter=FileIter(output), content_length=length,
                        content_type="application/octet-stream",
                        headers={wire.NODE_HEADER: report.node,
                                 "X-Zerocompute-Local": str(report.local).lower()})


class StepsJob:
    """Jobs in a chain (``steps``): each step's output is the next one's input.

    Every step's executables were read as the user before anything ran; a
    step's inputs are listed, and its outputs prepared, when it starts (they
    are the step before's outputs).  A step that fails ends the chain.  Each
    step writes its own ``_report.json`` and ``_SUCCESS`` beside its outputs;
    the response covers every step.
    """

    def __init__(self, middleware: JobMiddleware, req: Request, manifest: Manifest,
                 first: MapJob, executables: dict[SwiftPath, tuple[str, bytes]]):
        self.middleware = middleware
        self.req = req
        self.manifest = manifest
        self.first = first
        self.executables = executables
        self.job_id = new_job_id()
        self.resume = False
        self.cancelled: str | None = None
        self.current: MapJob = first
        self.number = 0

    def progress(self) -> dict[str, int]:
        return {"step": self.number, "steps": len(self.manifest.steps),
                **self.current.progress()}

    def cancel(self, reason: str) -> None:
        self.cancelled = self.cancelled or reason
        self.current.cancel(reason)

    def run(self) -> JobReport:
        started = time.perf_counter()
        reports: list[JobReport] = []
        error = None
        for number, step in enumerate(self.manifest.steps):
            try:
                job = self.first if number == 0 else \
                    self.middleware.build_job(self.req, step, self.executables)
            except ManifestError as err:
                error = f"step {number} could not start: {err.error}" + (
                    f" ({err.field})" if err.field else "")
                break
            # Each step's outputs carry an id of their own, derived from the chain's.
            job.job_id, job.resume = f"{self.job_id}-{number}", self.resume
            self.current, self.number = job, number
            if self.cancelled:
                job.cancel(self.cancelled)
            report = job.run()
            reports.append(report)
            if report.status != SUCCEEDED:
                break
        tasks = []
        for number, report in enumerate(reports):
            for task in report.tasks:
                task.step = number
                tasks.append(task)
        if error is None and len(reports) < len(self.manifest.steps) and not self.cancelled:
            error = f"step {len(reports) - 1} failed; the steps after it did not run"
        return JobReport(self.manifest.name, self.manifest.scheduler, tasks,
                         ms=(time.perf_counter() - started) * 1000, error=error,
                         steps=[r.to_dict(with_tasks=False) for r in reports],
                         proxy_bytes=sum(r.proxy_bytes for r in reports), id=self.job_id,
                         cancelled=self.cancelled)


def erasure_code(policy_index: int, partition: int, path: str,
                 primaries: list[dict]) -> wire.ErasureCode | None:
    """What a task over an erasure-coded object needs to rebuild it (None when the
    policy is replicated): the policy's code and every fragment holder."""
    policy = POLICIES.get_by_index(policy_index)
    if policy is None or policy.policy_type != EC_POLICY:
        return None
    return wire.ErasureCode(
        k=policy.ec_ndata, m=policy.ec_nparity, ec_type=policy.ec_type,
        fragment_size=policy.fragment_size, segment_size=policy.ec_segment_size,
        policy=policy_index, partition=partition, path=path,
        peers=tuple((n["ip"], int(n["port"]), n["device"], int(n["index"])) for n in primaries))


def reuse(report: TaskReport, size: int) -> None:
    """A task not run again: its output was committed before a takeover."""
    report.reused = True
    report.exit = 0
    report.error = None
    report.bytes_out = size


def read_output(stream: Any, length: int) -> Any:
    """``length`` bytes of a task's stdout, in memory or spooled to a temporary file."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    left = length
    while left > 0:
        chunk = stream.read(min(left, _COPY_CHUNK))
        if not chunk:
            spool.close()
            raise OSError(f"output ended {left} bytes short")
        spool.write(chunk)
        left -= len(chunk)
    spool.seek(0)
    return spool


class Gathered:
    """Every task's output for one object: appended as they come, read in task order."""

    def __init__(self):
        self.file = tempfile.SpooledTemporaryFile(max_size=GATHER_MEMORY)
        self.pieces: dict[int, tuple[int, int]] = {}  # task index -> (offset, length)
        self.size = 0

    def add(self, index: int, output: Any, length: int) -> None:
        # Copied without yielding to the hub, so concurrent streams cannot interleave.
        offset = self.file.seek(0, 2)
        while chunk := output.read(_COPY_CHUNK):
            self.file.write(chunk)
        output.close()
        self.pieces[index] = (offset, length)
        self.size += length

    def reader(self) -> _InOrder:
        return _InOrder(self.file, [self.pieces[i] for i in sorted(self.pieces)])

    def close(self) -> None:
        self.file.close()


class _InOrder:
    """A file-like ``read`` over the pieces of a file, in the given order."""

    def __init__(self, file: Any, pieces: list[tuple[int, int]]):
        self.file = file
        self.pieces = list(reversed(pieces))
        self.left = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if negative), across pieces as a file."""
        wanted = float("inf") if size is None or size < 0 else size
        parts = []
        while wanted > 0:
            if self.left == 0:
                if not self.pieces:
                    break
                offset, self.left = self.pieces.pop()
                self.file.seek(offset)
                continue
            data = self.file.read(int(min(wanted, self.left)))
            if not data:
                raise OSError("gathered output shorter than recorded")
            self.left -= len(data)
            wanted -= len(data)
            parts.append(data)
        return b"".join(parts)


def job_file(output: SwiftPath, name: str) -> SwiftPath:
    """Where a job's own files go: beside its outputs (the pattern's directory)."""
    directory = output.obj.split("*", 1)[0].rpartition("/")[0]
    return SwiftPath(output.account, output.container, f"{directory}/{name}" if directory
                     else name)


def filter_factory(global_conf: dict, **local_conf: str):
    conf = dict(global_conf, **local_conf)
    config = JobFilterConfig.from_conf(conf)
    register_swift_info(
        "zerocompute",
        version=__version__,
        runtimes=["wasm32-wasi", "python3.12"] if python_runtime_available()
        else ["wasm32-wasi"],
        schedulers=list(SCHEDULER_POLICIES),
        default_scheduler=config.default_scheduler,
        max_limits=config.maximum.to_dict(),
        max_tasks=config.max_tasks,
        max_group=config.max_group,
        heartbeat_s=config.heartbeat_s,
        stages=["map", "reduce"],
        async_jobs=True,
        job_lease_s=config.job_lease_s,
    )

    def job_filter(app):
        return JobMiddleware(app, config, conf=conf)
    return job_filter
