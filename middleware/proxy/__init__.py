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
takes it over (:mod:`zerocompute.middleware.proxy.async_api`).  A ``GET`` of an
object with ``X-Zerocompute-Run`` runs a guest over it and answers with its
output (:mod:`zerocompute.middleware.proxy.run_on_get`).

Every job is kept in a history in ``.zerocompute``
(:mod:`zerocompute.middleware.proxy.history`): ``GET
/v1/<account>?zerocompute_jobs`` lists an account's jobs, newest first, and a
job's status location answers its report (a synchronous job's too) or, to a
browser, its page with its timeline (``doc/history.md``).

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
    # Each job's record in the history is removed this many days after it ends
    # (Swift's object expirer; 0: kept until deleted).
    # job_history_days = 30

The filter is a package, one module a concern: ``config`` (every option and
its default), ``context`` (the checks and sub-requests made as the user),
``runner`` (the jobs and their phases), ``dispatch`` (sending task groups to
object servers), ``outputs`` (what a job writes), ``run_on_get``,
``async_api``, ``history`` (every job's record, and the listing) and ``store``
(what the proxy keeps in ``.zerocompute``); ``doc/architecture.md`` walks one job through them.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any

import eventlet
from eventlet.event import Event
from swift.common.registry import register_swift_info
from swift.common.swob import Request, Response
from swift.common.utils import config_true_value, get_logger

from zerocompute import __version__, wire
from zerocompute.async_state import JOB_QUERY, identity_digest, valid_job_id
from zerocompute.errors import JobError
from zerocompute.history import JOBS_QUERY, SYNC, HistoryRecord, listing_limit
from zerocompute.manifest import Manifest, SwiftPath, parse_manifest
from zerocompute.middleware.bodies import json_response
from zerocompute.middleware.proxy.async_api import AsyncJobs, no_such_job
from zerocompute.middleware.proxy.config import ProxyConfig
from zerocompute.middleware.proxy.context import (
    JobContext,
    caller_identity,
    caller_name,
    may_see_job,
    owns_account,
)
from zerocompute.middleware.proxy.dispatch import Dispatcher
from zerocompute.middleware.proxy.history import JobHistory
from zerocompute.middleware.proxy.run_on_get import RunOnGet
from zerocompute.middleware.proxy.runner import Job, accept
from zerocompute.middleware.proxy.store import JobStore
from zerocompute.page import job_page
from zerocompute.report import JobReport
from zerocompute.sandbox.python import available as python_runtime_available
from zerocompute.scheduler import POLICIES as SCHEDULER_POLICIES


def strip_internal_headers(env: dict) -> None:
    """Remove ``X-Zerocompute-*`` headers a client sent that only zerocompute itself may
    set (signatures, timestamps, load reports): defence in depth, they never reach a
    server through this proxy."""
    for key in [k for k in env if k.startswith("HTTP_X_ZEROCOMPUTE_")]:
        if key not in wire.CLIENT_ENV_KEYS:
            del env[key]


class ProxyMiddleware:
    """The job API of one proxy: its routes, and the one place errors become answers."""

    def __init__(self, app: Any, config: ProxyConfig, logger: Any = None,
                 conf: dict[str, str] | None = None):
        self.app = app
        self.config = config
        self.logger = logger or get_logger(conf or {}, log_route="zerocompute")
        self.dispatcher = Dispatcher(config.secret, config.conn_timeout, self.logger,
                                     max_busy_wait_s=config.max_busy_wait_s)
        self.running_jobs: collections.Counter[str] = collections.Counter()  # per account
        self.store = JobStore(app)
        self.history = JobHistory(self.store, config, self.logger)
        self.async_jobs = AsyncJobs(self)

    def __call__(self, env: dict, start_response):
        self.async_jobs.ensure_sweeper()
        strip_internal_headers(env)
        req = Request(env)
        try:
            resp = self.route(req)
        except JobError as err:
            resp = json_response(err.status, err.to_dict())
        if resp is None:
            return self.app(env, start_response)
        return resp(env, start_response)

    def route(self, req: Request) -> Response | None:
        """This filter's answer to ``req``, or None: not a zerocompute request."""
        if req.method == "GET" and req.headers.get(wire.RUN_HEADER):
            return self.run_on_get(req)
        if JOB_QUERY in req.params and req.method in ("GET", "HEAD", "DELETE"):
            # Our answer, not an account listing for listing_formats to reformat.
            req.environ["swift.format_listing"] = False
            return self.job_request(req)
        if JOBS_QUERY in req.params and req.method in ("GET", "HEAD"):
            req.environ["swift.format_listing"] = False
            return self.job_listing(req)
        if req.method != "POST" or not config_true_value(req.headers.get(wire.EXECUTE_HEADER)):
            return None
        try:
            _version, account, container = req.split_path(2, 3, True)
        except ValueError:
            return None
        unauthenticated = self.unauthenticated(req)
        if unauthenticated is not None:
            return unauthenticated
        if container:
            raise JobError("jobs are POSTed to the account: POST /v1/<account>")
        if self.running_jobs[account] >= self.config.max_jobs_per_account:
            return json_response("429 Too Many Requests", {
                "error": f"{account} runs {self.running_jobs[account]} jobs already; this "
                         f"cluster allows {self.config.max_jobs_per_account} at once"},
                headers={"Retry-After": "10"})
        return self.handle_job(req, account)

    def run_on_get(self, req: Request) -> Response:
        """``GET`` of an object with ``X-Zerocompute-Run``: the guest's stdout over it."""
        try:
            _version, account, container, obj = req.split_path(4, 4, True)
        except ValueError:
            raise JobError(f"{wire.RUN_HEADER} applies to an object", wire.RUN_HEADER) from None
        unauthenticated = self.unauthenticated(req)
        if unauthenticated is not None:
            return unauthenticated
        ctx = JobContext(req, self.app, self.config, self.logger)
        return RunOnGet(ctx, self.dispatcher, SwiftPath(account, container, obj)).respond()

    def job_request(self, req: Request) -> Response:
        """``GET``/``HEAD`` of a job (an async job's state, or an ended job's record from
        the history; to a browser, its page) or ``DELETE`` (cancel an async job)."""
        try:
            _version, account, container = req.split_path(2, 3, True)
        except ValueError:
            container = "-"
        job_id = req.params[JOB_QUERY]
        if container:
            raise JobError(f"a job is addressed as /v1/<account>?{JOB_QUERY}=<id>")
        unauthenticated = self.unauthenticated(req)
        if unauthenticated is not None:
            return unauthenticated
        if not valid_job_id(job_id):
            raise JobError(f"no job {job_id!r} in {account}", "job", status=404)
        if req.method == "DELETE":
            return self.async_jobs.cancel(req, account, job_id)
        doc = self.async_jobs.status(req, account, job_id) or \
            self.kept_job(req, account, job_id)
        if wants_html(req):
            return Response(status=200, body=job_page(doc).encode("utf-8"),
                            content_type="text/html", charset="utf-8")
        return json_response(200, doc, headers={wire.JOB_STATUS_HEADER: doc["status"]})

    def kept_job(self, req: Request, account: str, job_id: str) -> dict[str, Any]:
        """A synchronous job's status, from its record in the history."""
        try:
            record = self.history.load(req.environ, account, job_id)
        except OSError as err:
            raise JobError(str(err), status=503) from None
        if record is None or not may_see_job(req.environ, self.config.secret, account,
                                             record.submitter):
            raise no_such_job(account, job_id)
        return record.public()

    def job_listing(self, req: Request) -> Response:
        """``GET /v1/<account>?zerocompute_jobs``: the account's jobs, newest first."""
        try:
            _version, account, container = req.split_path(2, 3, True)
        except ValueError:
            container = "-"
        if container:
            raise JobError(f"jobs are listed as /v1/<account>?{JOBS_QUERY}")
        unauthenticated = self.unauthenticated(req)
        if unauthenticated is not None:
            return unauthenticated
        try:
            limit = listing_limit(req.params.get("limit"))
        except ValueError as err:
            raise JobError(str(err), "limit") from None
        marker = req.params.get("marker", "")
        owner = owns_account(req.environ, account)
        identity = caller_identity(req.environ)
        mine = identity_digest(self.config.secret, identity) if identity else None
        try:
            jobs = self.history.listing(req.environ, account, limit, marker,
                                        lambda record: owner or record.submitter == mine)
        except OSError as err:
            raise JobError(str(err), status=503) from None
        return json_response(200, jobs)

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
        submitted = time.time()
        limit = self.config.max_manifest_bytes
        body = req.body_file.read(limit + 1)
        if len(body) > limit:
            raise JobError(f"manifest larger than {limit} bytes", status=413)
        job = self.accept(req, self.parse(body, account))
        if config_true_value(req.headers.get(wire.ASYNC_HEADER)):
            return self.async_jobs.submit(req, account, body, job)
        return self.respond(req, account, job, submitted)

    def parse(self, body: bytes, account: str) -> Manifest:
        """A manifest under this cluster's limits and default scheduler."""
        return parse_manifest(body, account, self.config.maximum,
                              self.config.default_scheduler)

    def accept(self, req: Request, manifest: Manifest, job_id: str | None = None,
               resume: bool = False) -> Job:
        """The job of a manifest, checked as the request's user (``runner.accept``)."""
        return accept(JobContext(req, self.app, self.config, self.logger), self.dispatcher,
                      manifest, job_id, resume)

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

    def keep_in_history(self, req: Request, account: str, report: JobReport,
                        submitted: float) -> None:
        """A synchronous job's record, with its report; if it cannot be kept, the
        report says so."""
        env = req.environ
        report.history_error = self.history.keep(env, HistoryRecord.of_report(
            account, SYNC, identity_digest(self.config.secret, caller_identity(env)),
            caller_name(env), submitted, report.to_dict(), ended=time.time()))

    def respond(self, req: Request, account: str, job: Job, submitted: float) -> Response:
        """The report; after ``heartbeat_s``, the 200 at once and the report when ready."""
        finished = Event()
        self.running_jobs[account] += 1

        def run() -> None:
            try:
                report = job.run()
            finally:
                self.running_jobs[account] -= 1
            self.account_for(account, report)
            self.keep_in_history(req, account, report, submitted)
            finished.send(report)
        eventlet.spawn_n(run)
        heartbeat = self.config.heartbeat_s
        report = finished.wait(heartbeat) if heartbeat else finished.wait()
        if report is not None:
            return json_response(200, report.to_dict(),
                                 headers={wire.JOB_STATUS_HEADER: report.status})
        # As SLO's heartbeat: every space goes out at once, not once 4 KiB are buffered.
        req.environ["eventlet.minimum_write_chunk_size"] = 0
        return Response(status=200, content_type="application/json",
                        app_iter=_heartbeat(finished, heartbeat))


def _heartbeat(finished: Event, interval: float):
    """Spaces (valid leading JSON whitespace) until the report, then the report.

    The first goes at once: the status line leaves with the first bytes.
    """
    yield b" "
    while (report := finished.wait(interval)) is None:
        yield b" "
    yield json.dumps(report.to_dict(), indent=1).encode("utf-8") + b"\n"


def wants_html(req: Request) -> bool:
    """A browser's request (``Accept: text/html``) for a job's page."""
    try:
        return req.accept.best_match(["application/json", "text/html"]) == "text/html"
    except ValueError:
        return False


def filter_factory(global_conf: dict, **local_conf: str):
    conf = dict(global_conf, **local_conf)
    config = ProxyConfig.from_conf(conf)
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
        return ProxyMiddleware(app, config, conf=conf)
    return job_filter
