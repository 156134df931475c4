"""The job report: what the user gets back, and what is stored beside the outputs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from zerocompute.counters import total

SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

REPORT_NAME = "_report.json"
SUCCESS_NAME = "_SUCCESS"


@dataclass
class Attempt:
    """One try of a task on one node that did not produce the task's result."""

    node: str
    error: str


# How an attempt ended (:class:`Span`): its result became the task's and the guest
# succeeded; it failed (the guest, or the node: then the task was tried elsewhere);
# it was hung up on (another attempt finished first, or the job was cancelled).
SPAN_OUTCOMES = ("succeeded", "failed", "cancelled")


@dataclass
class Span:
    """One attempt of a task as the proxy saw it: on which node, from when to when
    (milliseconds from the job's start), how it ended, and whether it was a backup
    copy.  A task's attempts are its timeline; a job's are its picture."""

    node: str
    start_ms: float
    end_ms: float
    outcome: str
    backup: bool = False


@dataclass
class TaskReport:
    kind: str
    task: str
    input: str
    output: str | None = None
    node: str | None = None
    local: bool = False
    attempts: int = 0
    exit: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    # Of the input: read from the node's own disk, and fetched from other nodes (the
    # other fragments of an erasure-coded object).
    bytes_local: int = 0
    bytes_peer: int = 0
    fragments: list[int] | None = None  # an erasure-coded input: the fragments read
    ms: float = 0.0  # the guest's own run time
    cpu_ms: float = 0.0  # the CPU time the guest used
    wall_ms: float = 0.0  # from first dispatch to the output written, as the proxy saw it
    error: str | None = None
    stderr: str = ""
    backup: bool = False  # a backup copy ran (near the end of the job)
    retries: list[Attempt] = field(default_factory=list)
    timeline: list[Span] = field(default_factory=list)  # every attempt, in start order
    split: list[int] | None = None  # [start, end): the byte range of a split input
    step: int | None = None  # in a chain of steps, which one
    # Its output had been committed by this job before a takeover: not run again.
    reused: bool = False
    # A task of a MapReduce job: the shuffle's work in it, step by step ({step: [wall
    # ms, CPU ms]}, steps of wire.SHUFFLE_STEPS); a map's output records, and those it
    # kept for the reducers (fewer when a combiner folded them).
    shuffle: dict[str, list[float]] | None = None
    records: int | None = None
    records_shuffled: int | None = None
    counters: dict[str, dict[str, int]] | None = None  # what its guest counted

    @property
    def ok(self) -> bool:
        return self.exit == 0 and self.error is None


@dataclass
class JobReport:
    job: str
    scheduler: str
    tasks: list[TaskReport]
    ms: float = 0.0
    error: str | None = None  # a failure of the job itself, not of one task
    output: str | None = None  # the one object every task's output was gathered into
    steps: list[dict[str, Any]] | None = None  # a chain's steps, each's own report
    proxy_bytes: int = 0  # task traffic and outputs that passed through the proxy
    id: str = ""  # unique per run of a job (the name need not be)
    cancelled: str | None = None  # why the job was stopped before its end
    takeovers: list[dict[str, Any]] | None = None  # an async job's changes of proxy
    # A MapReduce job's partitioner: {"partitioner": "hash"} or, for a total order,
    # "range" with its split points and the keys sampled for them.
    partitioning: dict[str, Any] | None = None
    history_error: str | None = None  # why the history could not keep the job

    @property
    def status(self) -> str:
        if self.cancelled is not None:
            return CANCELLED
        ok = self.error is None and self.tasks and all(t.ok for t in self.tasks)
        return SUCCEEDED if ok else FAILED

    @property
    def outputs(self) -> list[str]:
        if self.steps:
            return self.steps[-1]["outputs"] if self.status == SUCCEEDED else []
        if self.output is not None:
            return [self.output] if self.status == SUCCEEDED else []
        return [t.output for t in self.tasks if t.ok and t.output]

    def usage(self) -> dict[str, float | int]:
        """What the job's guests used, summed (what an operator bills)."""
        return {"tasks": len(self.tasks),
                "cpu_ms": round(sum(t.cpu_ms for t in self.tasks), 3),
                "guest_ms": round(sum(t.ms for t in self.tasks), 3),
                "bytes_read": sum(t.bytes_in for t in self.tasks),
                "bytes_written": sum(t.bytes_out for t in self.tasks)}

    def phases(self) -> dict[str, dict[str, Any]]:
        """Where the time went, per kind of task: the guests' wall and CPU, and the
        shuffle's, step by step (summed over the phase's tasks)."""
        phases: dict[str, dict[str, Any]] = {}
        for task in self.tasks:
            phase = phases.setdefault(task.kind, {
                "tasks": 0, "guest": {"wall_ms": 0.0, "cpu_ms": 0.0}, "shuffle": {}})
            phase["tasks"] += 1
            phase["guest"]["wall_ms"] += task.ms
            phase["guest"]["cpu_ms"] += task.cpu_ms
            for step, (wall, cpu) in (task.shuffle or {}).items():
                spent = phase["shuffle"].setdefault(step, {"wall_ms": 0.0, "cpu_ms": 0.0})
                spent["wall_ms"] += wall
                spent["cpu_ms"] += cpu
            if task.records is not None:
                phase["records"] = phase.get("records", 0) + task.records
                phase["records_shuffled"] = phase.get("records_shuffled", 0) + \
                    (task.records_shuffled or 0)
        for phase in phases.values():
            for spent in (phase["guest"], *phase["shuffle"].values()):
                for name in spent:
                    spent[name] = round(spent[name], 3)
        return phases

    def to_dict(self, with_tasks: bool = True) -> dict[str, Any]:
        failed = sum(1 for t in self.tasks if not t.ok)
        body = {
            "job": self.job,
            "id": self.id,
            "status": self.status,
            "scheduler": self.scheduler,
            "ms": round(self.ms, 3),
            "error": self.error,
            "counts": {"tasks": len(self.tasks), "failed": failed,
                       "retried": sum(1 for t in self.tasks if t.attempts > 1)},
            "outputs": self.outputs,
            "bytes": {"in": sum(t.bytes_in for t in self.tasks if t.kind == "map"),
                      "through_proxy": self.proxy_bytes},
            "usage": self.usage(),
            "phases": self.phases(),
            "counters": total(t.counters for t in self.tasks),
        }
        if self.partitioning is not None:
            body["partitioning"] = self.partitioning
        if self.cancelled is not None:
            body["cancelled"] = self.cancelled
        if self.takeovers:
            body["takeovers"] = self.takeovers
        if self.steps is not None:
            body["steps"] = self.steps
        if self.history_error is not None:
            body["history_error"] = self.history_error
        if with_tasks:
            body["tasks"] = [asdict(t) for t in self.tasks]
        return body

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode("utf-8") + b"\n"
