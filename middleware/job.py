"""Proxy filter: the zerocompute job API.

A job is ``POST /v1/<account>`` with ``X-Zerocompute-Execute: 1`` and a JSON
manifest as the body (``doc/manifest.md``).  This filter validates the
manifest, checks the executable, the inputs and the output location *as the
requesting user* (sub-requests through the rest of the pipeline, so the auth
middleware's ACLs apply), expands ``*`` inputs by container listing, runs one
map task per input object on an object server that holds a replica (chosen by
the scheduler from live load), writes each task's output as a Swift object,
and answers with the job report in JSON.  A job that succeeds also writes
``_SUCCESS`` and ``_report.json`` beside its outputs.

A bad request is answered with a 4xx whose JSON body has ``error`` and, where
it applies, ``field``; nothing is written for it.

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
    # max_manifest_bytes = 65536
    # max_executable_mb = 64
    # Tasks of one job in flight at once.
    # concurrency = 16
    # Backup tasks: once nothing is left to dispatch, a task running longer than
    # backup_factor x the job's median task time (and backup_min_s) gets a second
    # attempt on another replica; the first to finish wins.
    # backup_tasks = true
    # backup_factor = 2.0
    # backup_min_s = 1.0
    # conn_timeout = 0.5
    # How long a task may wait for a slot while every replica answers 503 busy.
    # max_busy_wait_s = 300
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import eventlet
from eventlet import GreenPool
from swift.common.registry import register_swift_info
from swift.common.storage_policy import POLICIES
from swift.common.swob import Request, Response, str_to_wsgi
from swift.common.utils import close_if_possible, config_true_value, get_logger
from swift.common.wsgi import make_env, make_subrequest
from swift.proxy.controllers.base import get_container_info

from zerocompute import __version__, wire
from zerocompute.manifest import (
    Limits,
    Manifest,
    ManifestError,
    SwiftPath,
    parse_manifest,
    runtime_of,
)
from zerocompute.middleware.dispatch import (
    Dispatcher,
    JobTracker,
    TaskCall,
    TaskResponse,
    node_key,
    node_label,
)
from zerocompute.planning import InputObject, MapTask, listing_prefix, match_listing, plan_map_only
from zerocompute.report import REPORT_NAME, SUCCEEDED, SUCCESS_NAME, JobReport, TaskReport
from zerocompute.sandbox.python import available as python_runtime_available
from zerocompute.sandbox.wasm import InvalidExecutable, check_wasm
from zerocompute.scheduler import POLICIES as SCHEDULER_POLICIES

EXECUTE_HEADER = "X-Zerocompute-Execute"
ASYNC_HEADER = "X-Zerocompute-Async"
SWIFT_SOURCE = "ZC"
LISTING_LIMIT = 10000


@dataclass(frozen=True)
class Placement:
    """Where one input lives: its policy, partition and nodes."""

    policy_index: int
    partition: int
    primaries: list[dict]
    handoffs: list[dict]


def json_response(status: int, body: dict[str, Any], headers: dict | None = None) -> Response:
    return Response(status=status, headers=headers, content_type="application/json",
                    body=json.dumps(body, indent=1).encode("utf-8") + b"\n")


class JobMiddleware:
    def __init__(self, app: Any, conf: dict[str, str], logger: Any = None):
        self.app = app
        self.logger = logger or get_logger(conf, log_route="zerocompute")
        self.secret = conf.get("secret", "")
        if not self.secret:
            raise ValueError("zerocompute: 'secret' must be set (shared with object servers)")
        self.swift_dir = conf.get("swift_dir", "/etc/swift")
        self.maximum = Limits.from_conf(conf)
        self.default_scheduler = conf.get("default_scheduler", "load-aware")
        if self.default_scheduler not in SCHEDULER_POLICIES:
            raise ValueError(f"zerocompute: default_scheduler must be one of "
                             f"{', '.join(SCHEDULER_POLICIES)}")
        self.max_tasks = int(conf.get("max_tasks", 10000))
        self.max_manifest_bytes = int(conf.get("max_manifest_bytes", 65536))
        self.max_executable_bytes = int(conf.get("max_executable_mb", 64)) * 1024 * 1024
        self.concurrency = int(conf.get("concurrency", 16))
        self.backup_tasks = config_true_value(conf.get("backup_tasks", "true"))
        self.backup_factor = float(conf.get("backup_factor", 2.0))
        self.backup_min_s = float(conf.get("backup_min_s", 1.0))
        self.dispatcher = Dispatcher(self.secret, float(conf.get("conn_timeout", 0.5)),
                                     self.logger,
                                     max_busy_wait_s=float(conf.get("max_busy_wait_s", 300)))

    def __call__(self, env: dict, start_response):
        req = Request(env)
        if req.method != "POST" or not config_true_value(req.headers.get(EXECUTE_HEADER)):
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
        else:
            try:
                resp = self.handle_job(req, account)
            except ManifestError as err:
                resp = json_response(err.status, err.to_dict())
        return resp(env, start_response)

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
        if config_true_value(req.headers.get(ASYNC_HEADER)):
            raise ManifestError("asynchronous jobs are not supported by this cluster yet",
                                ASYNC_HEADER)
        body = req.body_file.read(self.max_manifest_bytes + 1)
        if len(body) > self.max_manifest_bytes:
            raise ManifestError(f"manifest larger than {self.max_manifest_bytes} bytes",
                                status=413)
        manifest = parse_manifest(body, account, self.maximum, self.default_scheduler)
        executable = self.fetch_executable(req, manifest.map.exec, "map.exec")
        found = [self.expand_input(req, pattern, f"map.inputs[{i}]")
                 for i, pattern in enumerate(manifest.map.inputs)]
        tasks = plan_map_only(manifest, found)
        if len(tasks) > self.max_tasks:
            raise ManifestError(f"{len(tasks)} tasks; this cluster runs at most "
                                f"{self.max_tasks} per job", "map.inputs")
        self.prepare_output(req, manifest.output)

        started = time.perf_counter()
        placements = [self.placement(req, t.input.path) for t in tasks]
        self.dispatcher.probe(list({node_key(n): n for p in placements if p
                                    for n in p.primaries}.values()))
        tracker = JobTracker(self.dispatcher, sum(1 for p in placements if p),
                             self.backup_factor, self.backup_min_s) \
            if self.backup_tasks and manifest.backup_tasks else None
        if tracker:
            eventlet.spawn_n(tracker.watch)
        # Not pool.imap: it stops dispatching while the oldest task is unfinished,
        # so one straggler would hold back the rest and its own backup.
        pool = GreenPool(self.concurrency)
        running = [pool.spawn(self.run_map_task, req, manifest, executable, task, placement,
                              tracker)
                   for task, placement in zip(tasks, placements, strict=True)]
        reports = [thread.wait() for thread in running]
        report = JobReport(manifest.name, manifest.scheduler, reports,
                           ms=(time.perf_counter() - started) * 1000)
        self.write_job_files(req, manifest.output, report)
        return json_response(200, report.to_dict(),
                             headers={"X-Zerocompute-Job-Status": report.status})

    # -- checks as the user ---------------------------------------------------
    def subrequest(self, req: Request, method: str, path: str, query: str = "",
                   headers: dict | None = None, body: bytes | None = None,
                   stream: Any = None, length: int = 0) -> Response:
        """A request through the rest of the pipeline, authorized as the caller.

        The body is ``body``, or ``length`` bytes read from ``stream`` as they
        are sent on (a node's answer, never held whole in the proxy).
        """
        if body is not None:
            length = len(body)
        if body is not None or stream is not None:
            headers = dict(headers or {}, **{"Content-Length": str(length)})
        # A path with '?' keeps the sub-request from inheriting the job's query string.
        sub = make_subrequest(req.environ, method=method, path=quote(path) + "?" + query,
                              headers=headers, body=body, swift_source=SWIFT_SOURCE)
        if stream is not None:
            sub.environ["wsgi.input"] = stream
        return sub.get_response(self.app)

    def _check_access(self, resp: Response, what: SwiftPath, field: str, noun: str) -> None:
        if resp.status_int == 404:
            raise ManifestError(f"{noun} {what} not found", field)
        if resp.status_int in (401, 403):
            raise ManifestError(f"not allowed to read {noun} {what}", field, status=403)
        if not resp.is_success:
            raise ManifestError(f"cannot read {noun} {what}: {resp.status}", field, status=502)

    def fetch_executable(self, req: Request, path: SwiftPath, field: str) -> tuple[str, bytes]:
        """The executable's bytes and MD5 (the key object servers cache it under)."""
        resp = self.subrequest(req, "GET", path.path)
        self._check_access(resp, path, field, "executable")
        size = resp.content_length or 0
        if size > self.max_executable_bytes:
            close_if_possible(resp.app_iter)  # not read: the proxy drops the connection
            raise ManifestError(f"executable {path} is {size} bytes; at most "
                                f"{self.max_executable_bytes} are allowed", field)
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

    def expand_input(self, req: Request, pattern: SwiftPath, field: str) -> list[InputObject]:
        if not pattern.has_wildcard:
            resp = self.subrequest(req, "HEAD", pattern.path)
            self._check_access(resp, pattern, field, "input")
            return [InputObject(pattern, resp.content_length or 0, pattern.obj)]
        prefix = listing_prefix(pattern)
        found: list[InputObject] = []
        marker = ""
        while True:
            query = (f"format=json&limit={LISTING_LIMIT}&prefix={quote(prefix, safe='')}"
                     f"&marker={quote(marker, safe='')}")
            resp = self.subrequest(req, "GET", pattern.container_path, query)
            self._check_access(resp, SwiftPath(pattern.account, pattern.container), field,
                               "container")
            listing = json.loads(resp.body or b"[]") if resp.status_int == 200 else []
            found.extend(match_listing(pattern, ((item["name"], item["bytes"])
                                                 for item in listing if "name" in item)))
            if len(listing) < LISTING_LIMIT:
                return found
            marker = listing[-1].get("name") or listing[-1]["subdir"]

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

    # -- running tasks ----------------------------------------------------------
    def placement(self, req: Request, path: SwiftPath) -> Placement | None:
        """Where an object lives (None if that cannot be found out)."""
        try:
            env = make_env(req.environ, path=str_to_wsgi(path.container_path))
            info = get_container_info(env, self.app, swift_source=SWIFT_SOURCE)
            policy_index = int(info.get("storage_policy") or 0)
            ring = POLICIES.get_object_ring(policy_index, self.swift_dir)
            partition, primaries = ring.get_nodes(path.account, path.container, path.obj)
            handoffs = list(itertools.islice(ring.get_more_nodes(partition), 2))
        except Exception as err:  # noqa: BLE001 - reported per task
            self.logger.warning("zerocompute: cannot locate %s: %s", path, err)
            return None
        return Placement(policy_index, partition, primaries, handoffs)

    def run_map_task(self, req: Request, manifest: Manifest, executable: tuple[str, bytes],
                     task: MapTask, placement: Placement | None,
                     tracker: JobTracker | None) -> TaskReport:
        item = task.input
        report = TaskReport(kind="map", task=task.task_id, input=str(item.path),
                            output=str(task.output), bytes_in=item.size)
        if placement is None:
            report.error = "cannot locate the input in the ring"
            return report
        etag, code = executable
        limits = manifest.limits
        call = TaskCall(
            partition=placement.partition,
            path=f"/{item.path.account}/{item.path.container}/{item.path.obj}",
            policy_index=placement.policy_index, executable=code, exec_etag=etag,
            time_s=limits.time_s,
            task={"job": manifest.name, "task": task.task_id, "exec_etag": etag,
                  "exec_name": manifest.map.exec.obj.rsplit("/", 1)[-1],
                  "args": list(manifest.map.args),
                  "env": [*map(list, manifest.map.env),
                          ["ZEROCOMPUTE_INPUT", str(item.path)],
                          ["ZEROCOMPUTE_INPUT_SIZE", str(item.size)],
                          ["ZEROCOMPUTE_TASK", task.task_id],
                          ["ZEROCOMPUTE_JOB", manifest.name]],
                  "runtime": runtime_of(manifest.map.exec),
                  "limits": limits.to_dict()})
        primary_keys = {node_key(n) for n in placement.primaries}

        def consume(answer: TaskResponse) -> str | None:
            return self.take_result(req, answer, task, report)

        began = time.perf_counter()
        outcome = self.dispatcher.run(call, placement.primaries, placement.handoffs,
                                      manifest.scheduler, consume, tracker)
        report.wall_ms = round((time.perf_counter() - began) * 1000, 3)
        answer = outcome.answer
        report.attempts, report.retries, report.backup = \
            outcome.attempts, outcome.failed, outcome.backed_up
        if answer is None:
            report.error = "no node could run the task: " + "; ".join(
                f"{a.node}: {a.error}" for a in report.retries)
        else:
            report.node = node_label(answer.node)
            report.local = node_key(answer.node) in primary_keys
        return report

    def take_result(self, req: Request, answer: TaskResponse, task: MapTask,
                    report: TaskReport) -> str | None:
        """Record a node's answer and write the output; an error string means retry."""
        resp = answer.response
        headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status // 100 != 2:
            report.error = resp.read(1024).decode("utf-8", "replace").strip() or \
                f"task refused: {resp.status}"
            return None
        exit_value = headers.get(wire.EXIT_HEADER.lower(), "")
        report.exit = int(exit_value) if exit_value.lstrip("-").isdigit() else None
        report.error = headers.get(wire.ERROR_HEADER.lower())
        report.stderr = wire.decode_tail(headers.get(wire.STDERR_HEADER.lower()))
        report.ms = float(headers.get(wire.MS_HEADER.lower(), 0) or 0)
        report.bytes_in = int(headers.get(wire.BYTES_IN_HEADER.lower(), report.bytes_in))
        if report.exit is not None and report.exit != 0 and report.error is None:
            report.error = f"guest exited with status {report.exit}"
        if not report.ok:
            resp.read()
            return None
        length = int(headers.get("content-length", 0))
        put_resp = self.subrequest(req, "PUT", task.output.path, stream=resp, length=length)
        if put_resp.status_int in (401, 403, 413):
            report.error = f"writing output {task.output} failed: {put_resp.status}"
            return None
        if not put_resp.is_success:
            # Most likely the node's stream broke off: run the task elsewhere.
            report.exit = None
            return f"writing output {task.output} failed: {put_resp.status}"
        report.bytes_out = length
        return None

    def write_job_files(self, req: Request, output: SwiftPath, report: JobReport) -> None:
        """The report always; ``_SUCCESS`` last, and only when every task succeeded."""
        files = [(REPORT_NAME, "application/json", report.to_json())]
        if report.status == SUCCEEDED:
            # Written last: whoever sees _SUCCESS may trust every output is there.
            files.append((SUCCESS_NAME, "text/plain", b""))
        for name, content_type, body in files:
            target = job_file(output, name)
            resp = self.subrequest(req, "PUT", target.path, body=body,
                                   headers={"Content-Type": content_type})
            if not resp.is_success:
                report.error = f"writing {target} failed: {resp.status}"
                return


def job_file(output: SwiftPath, name: str) -> SwiftPath:
    """Where a job's own files go: beside its outputs (the pattern's directory)."""
    directory = output.obj.split("*", 1)[0].rpartition("/")[0]
    return SwiftPath(output.account, output.container, f"{directory}/{name}" if directory
                     else name)


def filter_factory(global_conf: dict, **local_conf: str):
    conf = dict(global_conf, **local_conf)
    maximum = Limits.from_conf(conf)
    register_swift_info(
        "zerocompute",
        version=__version__,
        runtimes=["wasm32-wasi", "python3.12"] if python_runtime_available()
        else ["wasm32-wasi"],
        schedulers=list(SCHEDULER_POLICIES),
        default_scheduler=conf.get("default_scheduler", "load-aware"),
        max_limits=maximum.to_dict(),
        max_tasks=int(conf.get("max_tasks", 10000)),
        stages=["map"],
    )

    def job_filter(app):
        return JobMiddleware(app, conf)
    return job_filter
