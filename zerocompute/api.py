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

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from swiftclient.client import ClientException, Connection

from zerocompute.client import (
    FINAL,
    connect_swift,
    job_status,
    list_jobs,
    submit_async,
    swift_options,
)
from zerocompute.progress import ProgressBar
from zerocompute.shipping import digest, map_reduce_script, map_script

POLL_S = 0.5
# In the caller's account: the guest scripts of Python functions, by digest, and the
# results of jobs given no output.
CODE_CONTAINER = "zerocompute-code"
RESULTS_CONTAINER = "zerocompute-results"


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

    def __init__(self, client: Zerocompute, job_id: str, state: dict[str, Any] | None = None,
                 shape: str | None = None):
        self.client = client
        self.id = job_id
        self.state = state or {}
        self.shape = shape  # "map_reduce" or "map": how results() reads the outputs
        self.script: str | None = None  # the deployed guest script of Python functions

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

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """What the job's guests counted, ``{group: {name: total}}`` (once it has
        ended; ``zerocompute_guest.increment_counter``)."""
        return (self.report or {}).get("counters") or {}

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

    def results(self) -> Any:
        """What the job computed, with its Python types: for a MapReduce job of
        :meth:`Zerocompute.map_reduce`, ``(key, value)`` pairs (``dict(job.results())``),
        by partition and key; for :meth:`Zerocompute.map`, one result per input, in
        input order."""
        report = self.wait(progress=False).report or {}
        conn = self.client.conn
        if self.shape == "map":
            return [json.loads(_read(conn, task["output"])) for task in report["tasks"]]
        return _pairs(conn, report["outputs"])

    def delete_results(self) -> int:
        """Delete the objects the job wrote (its outputs, ``_report.json`` and
        ``_SUCCESS``); how many."""
        report = self.report or {}
        paths = set(report.get("outputs", []))
        for output in paths.copy():
            folder = output.rsplit("/", 1)[0]
            paths |= {f"{folder}/_report.json", f"{folder}/_SUCCESS"}
        deleted = 0
        for path in sorted(paths):
            container, obj = _container_and_object(path)
            try:
                self.client.conn.delete_object(container, obj)
                deleted += 1
            except ClientException as err:
                if err.http_status != 404:
                    raise
        return deleted

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

    def map_reduce(self, mapper: Callable[..., Any], reducer: Callable[..., Any],
                   inputs: str | list[str], combiner: Callable[..., Any] | None = None,
                   partitions: int = 4, output: str | None = None, name: str | None = None,
                   wait: bool = True, progress: bool = True) -> Job:
        """A MapReduce job of Python functions: ``mapper(line)`` yields ``(key, value)``
        pairs, ``reducer(key, values)`` (and ``combiner``) returns one value.  The
        functions travel as source (:mod:`zerocompute.shipping`); results go to
        ``output`` (a ``swift://`` prefix; by default a new one under
        ``zerocompute-results``)."""
        script = self.deploy(map_reduce_script(mapper, reducer, combiner))
        output = output or self.new_output("mapreduce")
        manifest: dict[str, Any] = {
            "name": name or f"{mapper.__name__}-{reducer.__name__}",
            "map": {"exec": script, "inputs": _listed(inputs)},
            "reduce": {"exec": script, "partitions": partitions},
            "output": output}
        if combiner is not None:
            manifest["combine"] = {"exec": script, "args": ["combine"]}
        return self._start(manifest, "map_reduce", script, wait, progress)

    def map(self, function: Callable[..., Any], inputs: str | list[str],
            output: str | None = None, name: str | None = None, wait: bool = True,
            progress: bool = True) -> Job:
        """``function(content)`` over each input object, where it is stored (its
        content as text, or bytes if it is not UTF-8); one result per input, in input
        order (:meth:`Job.results`)."""
        script = self.deploy(map_script(function))
        output = output or self.new_output("map")
        manifest = {"name": name or function.__name__,
                    "map": {"exec": script, "inputs": _listed(inputs)},
                    "output": output.rstrip("/") + "/*"}
        return self._start(manifest, "map", script, wait, progress)

    def _start(self, manifest: dict[str, Any], shape: str, script: str, wait: bool,
               progress: bool) -> Job:
        accepted = submit_async(self.conn, manifest)
        job = Job(self, accepted["job"], accepted, shape=shape)
        job.script = script
        return job.wait(progress) if wait else job

    def deploy(self, script: str) -> str:
        """Keep a guest script under its digest in ``CODE_CONTAINER`` (once: the same
        source is not uploaded again); its ``swift://`` path."""
        name = f"{digest(script)}.py"
        try:
            self.conn.head_object(CODE_CONTAINER, name)
        except ClientException as err:
            if err.http_status != 404:
                raise
            self.conn.put_container(CODE_CONTAINER)
            self.conn.put_object(CODE_CONTAINER, name, script.encode("utf-8"),
                                 content_type="text/x-python")
        return f"swift://~/{CODE_CONTAINER}/{name}"

    @staticmethod
    def new_output(kind: str) -> str:
        """A fresh place for a job's results: ``swift://~/zerocompute-results/<kind>-<time>-<random>/``."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return f"swift://~/{RESULTS_CONTAINER}/{kind}-{stamp}-{uuid.uuid4().hex[:8]}/"

    def jobs(self, limit: int | None = None, marker: str = "") -> list[dict[str, Any]]:
        """The account's jobs, newest first (its owners see all; others their own)."""
        return list_jobs(self.conn, limit, marker)


def _listed(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


def _container_and_object(path: str) -> tuple[str, str]:
    """``swift://AUTH_x/c/o`` -> ``("c", "o")`` (in the caller's own account)."""
    _account, container, obj = path.removeprefix("swift://").split("/", 2)
    return container, obj


def _read(conn: Connection, path: str) -> bytes:
    return conn.get_object(*_container_and_object(path))[1]


def _pairs(conn: Connection, outputs: list[str]) -> list[tuple[Any, Any]]:
    """The ``key<TAB>value`` lines of a MapReduce job's parts, keys and values decoded
    from their JSON."""
    pairs = []
    for output in outputs:
        for line in _read(conn, output).decode("utf-8").splitlines():
            key, _, value = line.partition("\t")
            pairs.append((json.loads(key), json.loads(value)))
    return pairs


def connect(conn: Connection | None = None, auth: str | None = None,
            user: str | None = None, key: str | None = None, **options: Any) -> Zerocompute:
    """The job API of a cluster: over ``conn``, or a Connection made from ``auth``,
    ``user``, ``key`` and the ``swift`` command's other options (``os_*``), which
    default to its variables (``ST_AUTH``, ``ST_USER``, ``ST_KEY``, ``OS_*``)."""
    if conn is None:
        conn = connect_swift(swift_options(auth=auth, user=user, key=key, **options))
    return Zerocompute(conn)
