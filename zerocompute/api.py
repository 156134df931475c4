"""zerocompute for people: jobs from a script or a notebook, as objects.

::

    import zerocompute
    zc = zerocompute.connect()          # ST_*/OS_* variables, as the CLI and swift
    job = zc.submit(manifest)           # a manifest (a dict); waits, with a progress bar
    job.status                          # "succeeded"
    job.report                          # the report, as a dict
    job.timeline("job.png")             # where the time went (.svg, .pdf; .html: its page)
    zc.jobs()                           # the account's history, newest first

``connect(conn=<swiftclient Connection>)`` or ``connect(auth=..., user=..., key=...)``
take credentials explicitly.  Every job is submitted asynchronously and followed
by its status location, so a notebook's kernel can be interrupted without losing
it: ``zc.job(job_id)`` finds it again.
"""

from __future__ import annotations

import time
from typing import Any

from swiftclient.client import Connection

from zerocompute.client import (
    FINAL,
    connect_swift,
    job_status,
    list_jobs,
    submit_async,
    swift_options,
)
from zerocompute.progress import ProgressBar

POLL_S = 0.5


class JobFailed(Exception):
    """A job that ended other than succeeded: its report, and its first failed task's
    error and stderr tail in the message."""

    def __init__(self, job: Job):
        report = job.report or {}
        failed = [t for t in report.get("tasks", []) if t.get("error")]
        reason = report.get("error") or report.get("cancelled") or (
            f"task {failed[0]['task']} ({failed[0]['input']}): {failed[0]['error']}"
            if failed else job.status)
        tail = failed[0].get("stderr", "").strip()[-1000:] if failed else ""
        super().__init__(f"job {job.id} {job.status}: {reason}"
                         + (f"\n--- its stderr ---\n{tail}" if tail else ""))
        self.job = job
        self.report = report


class Job:
    """One job of the cluster, by its id: its state is read when asked for."""

    def __init__(self, client: Zerocompute, job_id: str, state: dict[str, Any] | None = None):
        self.client = client
        self.id = job_id
        self.state = state or {}

    def __repr__(self) -> str:
        return f"<zerocompute job {self.id} {self.state.get('status', '?')}>"

    def refresh(self) -> dict[str, Any]:
        """Read the job's state now (any proxy answers)."""
        self.state = job_status(self.client.conn, self.id)
        return self.state

    @property
    def status(self) -> str:
        if self.state.get("status") not in FINAL:
            self.refresh()
        return self.state["status"]

    @property
    def report(self) -> dict[str, Any] | None:
        """The report once the job has ended (None while it runs)."""
        self.status  # noqa: B018 - read the state if the job may have ended since
        return self.state.get("report")

    def wait(self, progress: bool = True, check: bool = True) -> Job:
        """Until the job has ended, with a progress bar (``tqdm.auto``: a widget in
        Jupyter, text in a terminal); then :class:`JobFailed` unless it succeeded
        (``check``)."""
        bar = ProgressBar(self.id, enabled=progress, notebook=True)
        try:
            while self.refresh()["status"] not in FINAL:
                bar.update(self.state)
                time.sleep(POLL_S)
            bar.update(self.state)
        finally:
            bar.close()
        if check and self.state["status"] != "succeeded":
            raise JobFailed(self)
        return self

    def timeline(self, path: str) -> str:
        """Draw the job's timeline into ``path``: a picture (``.png``, ``.svg``, ``.pdf``;
        matplotlib) or, for ``.html``, the job's page."""
        if path.endswith((".html", ".htm")):
            from zerocompute.page import job_page
            with open(path, "w", encoding="utf-8") as f:
                f.write(job_page(self.refresh()))
            return path
        from zerocompute.plot import draw_timeline
        report = self.report
        if report is None:
            raise ValueError(f"job {self.id} is {self.status}: its timeline comes with its "
                             "report, when it ends")
        return draw_timeline(report, path)


class Zerocompute:
    """A connection to a cluster's job API (over a swiftclient Connection)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def submit(self, manifest: dict[str, Any] | bytes, wait: bool = True,
               progress: bool = True) -> Job:
        """Start a job; with ``wait``, follow it to its end (:meth:`Job.wait`)."""
        accepted = submit_async(self.conn, manifest)
        job = Job(self, accepted["job"], accepted)
        return job.wait(progress) if wait else job

    def job(self, job_id: str) -> Job:
        """A job already submitted, by its id or status location."""
        job = Job(self, job_id)
        job.refresh()
        job.id = job.state["job"]
        return job

    def jobs(self, limit: int | None = None, marker: str = "") -> list[dict[str, Any]]:
        """The account's jobs, newest first (its owners see all; others their own)."""
        return list_jobs(self.conn, limit, marker)


def connect(conn: Connection | None = None, auth: str | None = None,
            user: str | None = None, key: str | None = None, **options: Any) -> Zerocompute:
    """The job API of a cluster: over ``conn``, or a Connection made from ``auth``,
    ``user``, ``key`` and the ``swift`` command's other options (``os_*``), which
    default to its variables (``ST_AUTH``, ``ST_USER``, ``ST_KEY``, ``OS_*``)."""
    if conn is None:
        conn = connect_swift(swift_options(auth=auth, user=user, key=key, **options))
    return Zerocompute(conn)
