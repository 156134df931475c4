"""Asynchronous jobs: accepted at once, kept in Swift, finished by any proxy.

``POST /v1/<account>`` with ``X-Zerocompute-Execute: 1`` and
``X-Zerocompute-Async: 1`` is checked exactly as a synchronous job (a bad
manifest still gets its 4xx at once), then answered ``202 Accepted`` with the
job's id and a ``Location``: ``/v1/<account>?zerocompute_job=<id>``.

* ``GET`` (or ``HEAD``) of that location, through any proxy, answers the
  job's state: status, progress, owner, takeovers, and the report once done.
* ``DELETE`` of it cancels the job: the proxy running it stops dispatching,
  hangs up on every running task (the object servers kill the guests),
  writes nothing more, and records the status ``cancelled``.

The state is one object per job in a reserved-namespace container of the
internal account ``.zerocompute`` (:mod:`zerocompute.async_state`), written by
the proxy itself: the user can reach it only through this API, and the user's
account (its ``HEAD``, listings, quotas) never sees it.  The proxy running a job renews its lease
every ``job_lease_s / 3`` and looks for a cancel every ``job_poll_s``.  When
a status read finds a lease lapsed (the proxy died or was restarted), the
proxy answering it takes the job over: it rebuilds the job from the stored
manifest, acting only within the job's :class:`~zerocompute.async_state.Grant`,
skips every task whose output this job had already committed (outputs carry
``X-Object-Meta-Zerocompute-Job``), and runs the rest.

A synchronous job lives and dies with its request; only asynchronous jobs
are durable.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections import Counter
from typing import Any, Protocol

import eventlet
from swift.common.swob import HTTPForbidden, Request, Response
from swift.common.wsgi import make_env

from zerocompute import wire
from zerocompute.async_state import (
    INDEX_ACCOUNT,
    Grant,
    JobState,
    identity_digest,
    job_grant,
    status_location,
)
from zerocompute.errors import JobError
from zerocompute.history import ASYNC, HistoryRecord
from zerocompute.manifest import Manifest
from zerocompute.middleware.bodies import json_response
from zerocompute.middleware.proxy.config import ProxyConfig
from zerocompute.middleware.proxy.context import (
    caller_identity,
    caller_name,
    may_see_job,
)
from zerocompute.middleware.proxy.history import JobHistory
from zerocompute.middleware.proxy.runner import Job
from zerocompute.middleware.proxy.store import JobStore
from zerocompute.report import JobReport


class JobFilter(Protocol):
    """What the async API needs of the proxy filter that holds it."""

    app: Any
    config: ProxyConfig
    logger: Any
    store: JobStore
    history: JobHistory
    running_jobs: Counter[str]  # per account, on this proxy

    def account_for(self, account: str, report: JobReport) -> None: ...

    def accept(self, req: Request, manifest: Manifest, job_id: str | None = None,
               resume: bool = False) -> Job: ...

    def parse(self, body: bytes, account: str) -> Manifest: ...

# Why a job stopped when its user asked it to (its report's ``cancelled``).
CANCELLED_BY_REQUEST = "cancelled by request"
# After claiming a job, how long to wait before reading the claim back: two proxies
# that claimed at once both read the same winner (the newer timestamp).
CLAIM_SETTLE_S = 0.5


def no_such_job(account: str, job_id: str) -> JobError:
    """The same answer for a job that does not exist and another's: an id reveals
    nothing."""
    return JobError(f"no job {job_id} in {account}", "job", status=404)


def proxy_instance() -> str:
    """This proxy process, as named in job states (host, pid and a random tag)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class GrantAuthorizer:
    """``swift.authorize`` for a job taken over: allows what its grant allows."""

    def __init__(self, grant: Grant):
        self.grant = grant

    def __call__(self, req: Request) -> Response | None:
        try:
            _version, account, container, _obj = req.split_path(2, 4, True)
        except ValueError:
            return HTTPForbidden(request=req)
        if self.grant.allows(req.method, account, container):
            return None
        return HTTPForbidden(request=req)


class LeasedJob:
    """One async job running on this proxy: the job, its lease and its cancel watch."""

    def __init__(self, jobs: AsyncJobs, job: Job, state: JobState, env: dict):
        self.jobs = jobs
        self.job = job
        self.state = state
        self.env = env  # for the state's own requests (pre-authed)
        self.fenced = False  # another proxy took the job over: this one stops, silently

    def start(self) -> None:
        eventlet.spawn_n(self.run)

    def run(self) -> None:
        middleware = self.jobs.middleware
        account = self.state.account
        middleware.running_jobs[account] += 1
        keeper = eventlet.spawn(self.keep)
        try:
            report = self.job.run()
        finally:
            keeper.kill()
            middleware.running_jobs[account] -= 1
            self.jobs.runs.pop(self.state.id, None)
        if self.fenced:
            return
        middleware.account_for(account, report)
        self.state.progress = self.job.progress()
        self.jobs.end(self.env, self.state, report)

    def keep(self) -> None:
        """Look for a cancel every ``job_poll_s``; renew the lease every third of it."""
        config = self.jobs.config
        renew_every = config.job_lease_s / 3
        renewed = time.monotonic()
        store = self.jobs.store
        while True:
            eventlet.sleep(config.job_poll_s)
            try:
                if store.cancel_requested(self.env, self.state.account, self.state.id):
                    self.job.cancel(CANCELLED_BY_REQUEST)
                    return
                if time.monotonic() - renewed >= renew_every:
                    self.renew()
                    renewed = time.monotonic()
                    if self.fenced:
                        return
            except Exception:  # noqa: BLE001 - keep the lease; say why it skipped one
                self.jobs.middleware.logger.exception("zerocompute: lease of job %s",
                                                      self.state.id)

    def renew(self) -> None:
        current = self.jobs.store.load(self.env, self.state.account, self.state.id)
        if current is not None and current.owner != self.state.owner:
            self.fenced = True
            self.job.cancel(f"taken over by {current.owner}")
            return
        self.state.progress = self.job.progress()
        self.state.renew(time.time(), self.jobs.config.job_lease_s)
        self.jobs.store.save(self.env, self.state)

    def cancel(self) -> None:
        self.job.cancel(CANCELLED_BY_REQUEST)


class AsyncJobs:
    """The async job API of one proxy filter."""

    def __init__(self, middleware: JobFilter):
        self.middleware = middleware
        self.config = middleware.config
        self.store = middleware.store
        self.history = middleware.history
        self.instance = proxy_instance()
        self.runs: dict[str, LeasedJob] = {}  # the jobs this proxy runs, by id
        self.sweeper: Any = None

    def submit(self, req: Request, account: str, body: bytes, job: Job) -> Response:
        """Keep the accepted job's state, start it, and answer 202 with its location."""
        now = time.time()
        state = JobState(
            id=job.job_id, account=account, name=job.manifest.name,
            manifest=body.decode("utf-8"),
            submitter=identity_digest(self.config.secret, caller_identity(req.environ)),
            user=caller_name(req.environ), owner=self.instance,
            lease_until=now + self.config.job_lease_s, submitted=now, updated=now,
            progress=job.progress())
        self.store.create(req.environ, state)
        self.history.keep(req.environ, HistoryRecord(
            id=state.id, account=account, name=state.name, kind=ASYNC, status=state.status,
            submitter=state.submitter, user=state.user, submitted=now))
        if self.config.job_sweep_s and not self.store.index(req.environ, state):
            self.middleware.logger.warning("zerocompute: job %s is not in the sweep's index",
                                           state.id)
        self.start(job, state, req.environ)
        location = status_location(account, state.id)
        return json_response(
            "202 Accepted", {"job": state.id, "name": state.name, "status": state.status,
                             "location": location},
            headers={"Location": location, wire.JOB_STATUS_HEADER: state.status})

    def start(self, job: Job, state: JobState, env: dict) -> None:
        run = LeasedJob(self, job, state, env)
        self.runs[state.id] = run
        run.start()

    # -- status and cancel -------------------------------------------------------
    def may_see(self, req: Request, account: str, state: JobState) -> bool:
        return may_see_job(req.environ, self.config.secret, account, state.submitter)

    def find(self, req: Request, account: str, job_id: str) -> JobState:
        state = self.store.load(req.environ, account, job_id)
        if state is None or not self.may_see(req, account, state):
            raise no_such_job(account, job_id)
        return state

    def status(self, req: Request, account: str, job_id: str) -> dict[str, Any] | None:
        """The job's state as a status read shows it (taking the job over if its lease
        lapsed), or None: no async job of that id."""
        state = self.store.load(req.environ, account, job_id)
        if state is None:
            return None
        if not self.may_see(req, account, state):
            raise no_such_job(account, job_id)
        cancel = not state.final and self.store.cancel_requested(req.environ, account, job_id)
        if state.lease_lapsed(time.time()) and job_id not in self.runs:
            state = self.take_over(req, state, cancel)
        return state.public(cancel)

    def cancel(self, req: Request, account: str, job_id: str) -> Response:
        state = self.find(req, account, job_id)
        if not state.final:
            if not self.store.request_cancel(req.environ, account, job_id):
                raise JobError("cannot record the cancel; try again", status=503)
            run = self.runs.get(job_id)
            if run is not None:
                run.cancel()
            elif state.lease_lapsed(time.time()):
                state = self.take_over(req, state, cancel=True)
        return json_response(
            "202 Accepted" if not state.final else 200, state.public(not state.final),
            headers={wire.JOB_STATUS_HEADER: state.status})

    # -- takeover -------------------------------------------------------------------
    def take_over(self, req: Request, state: JobState, cancel: bool) -> JobState:
        """Claim a job whose lease lapsed, and finish it here (or end it, if cancelled)."""
        env = req.environ
        state.take_over(self.instance, time.time(), self.config.job_lease_s)
        if not self.store.save(env, state):
            return state
        eventlet.sleep(CLAIM_SETTLE_S)
        claimed = self.store.load(env, state.account, state.id)
        if claimed is None or claimed.owner != self.instance or state.id in self.runs:
            return claimed or state
        self.middleware.logger.warning("zerocompute: taking over job %s of %s from %s",
                                       state.id, state.account, state.takeovers[-1].previous)
        if cancel:
            self.end(env, state, JobReport(state.name, "", [], id=state.id,
                                           cancelled=CANCELLED_BY_REQUEST))
            return state
        try:
            manifest = self.middleware.parse(state.manifest.encode("utf-8"), state.account)
            job = self.middleware.accept(Request(self.grant_environ(env, state, manifest)),
                                         manifest, job_id=state.id, resume=True)
        except JobError as err:
            self.end(env, state, JobReport(state.name, "", [], id=state.id,
                                           error=f"could not take the job over: {err.error}"))
            return state
        self.start(job, state, env)
        return state

    def end(self, env: dict, state: JobState, report: JobReport) -> None:
        """Keep a job's end (its report, with its takeovers) in its state and the
        history; out of the sweep's index."""
        report.takeovers = [vars(t).copy() for t in state.takeovers] or None
        state.status = report.status
        state.updated = time.time()
        report.history_error = self.history.keep(env, HistoryRecord.of_report(
            state.account, ASYNC, state.submitter, state.user, state.submitted,
            report.to_dict(with_tasks=False), ended=state.updated))
        state.report = report.to_dict()
        if not self.store.save(env, state, self.history.expiry_headers()):
            self.middleware.logger.error("zerocompute: could not save the end of job %s",
                                         state.id)
            return
        self.store.unindex(env, state.account, state.id)

    # -- the operator's sweep ------------------------------------------------------------
    def ensure_sweeper(self) -> None:
        """Start this worker's sweep (``job_sweep_s`` > 0), once, from its first request:
        a green thread started at load time would belong to the parent process."""
        if self.config.job_sweep_s and self.sweeper is None:
            self.sweeper = eventlet.spawn(self.sweep_forever)

    def sweep_forever(self) -> None:
        while True:
            eventlet.sleep(self.config.job_sweep_s * random.uniform(0.8, 1.2))
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - the next sweep tries again
                self.middleware.logger.exception("zerocompute: job sweep failed")

    def sweep(self) -> None:
        """Take over every indexed job whose lease lapsed; drop the ended ones."""
        req = Request.blank(f"/v1/{INDEX_ACCOUNT}")
        for account, job_id in self.store.indexed(req.environ):
            state = self.store.load(req.environ, account, job_id)
            if state is None or state.final:
                self.store.unindex(req.environ, account, job_id)
            elif state.lease_lapsed(time.time()) and job_id not in self.runs:
                self.take_over(req, state,
                               self.store.cancel_requested(req.environ, account, job_id))

    def grant_environ(self, env: dict, state: JobState, manifest: Manifest) -> dict:
        """A request environment that acts as the job: its grant, and nobody's identity."""
        job_env = make_env(env, "POST", f"/v1/{state.account}", swift_source=wire.SWIFT_SOURCE)
        for key in ("REMOTE_USER", "HTTP_X_USER_ID", "HTTP_X_PROJECT_ID",
                    "swift.authorize_override"):
            job_env.pop(key, None)
        job_env["swift.authorize"] = GrantAuthorizer(job_grant(manifest))
        job_env["swift.infocache"] = {}
        return job_env
