"""A job's timeline, laid out from its report: lanes, bars and phases, with no I/O.

One lane per node (an object server, ``ip:port``), one bar per task attempt
(``TaskReport.timeline``), in milliseconds from the job's start.  A node runs
several attempts at once (its slots): its lane has as many rows as it ran at
once at most, and each attempt takes the first row free at its start, as
Spark's event timeline stacks them.  A map whose
combiner ran gets a second, thinner bar over the end of its winning attempt, as
long as the combiner's wall time (the shuffle's ``combine`` step): the
combiner runs as the map's sorted runs are written, mostly at its end.  The job
page (:mod:`zerocompute.page`, SVG) and the picture from the shell
(:mod:`zerocompute.plot`, matplotlib) draw the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

KINDS = ("sample", "map", "combine", "reduce")
COLOURS = {"sample": "#9c755f", "map": "#4e79a7", "combine": "#f28e2b", "reduce": "#59a14f"}
FAILED_COLOUR = "#e15759"


@dataclass(frozen=True)
class Bar:
    lane: int
    row: int  # across every lane: the rows of lane 0, then of lane 1, ...
    start_ms: float
    end_ms: float
    kind: str  # one of KINDS
    task: str
    node: str
    outcome: str  # report.SPAN_OUTCOMES
    backup: bool = False
    retry: bool = False  # an attempt after one of the same task had failed
    step: int | None = None

    @property
    def label(self) -> str:
        marks = [m for m, on in (("backup", self.backup), ("retry", self.retry)) if on]
        return (f"{self.kind} {self.task} on {self.node}: {self.outcome}"
                + (f" ({', '.join(marks)})" if marks else "")
                + f", {self.start_ms / 1000:.3f}-{self.end_ms / 1000:.3f} s")


@dataclass(frozen=True)
class Phase:
    kind: str
    start_ms: float
    end_ms: float
    tasks: int


@dataclass(frozen=True)
class Lane:
    node: str  # an object server, ip:port
    first_row: int
    rows: int


@dataclass(frozen=True)
class Timeline:
    lanes: list[Lane]
    bars: list[Bar]  # attempts, then combiner overlays
    phases: list[Phase]
    end_ms: float

    @property
    def rows(self) -> int:
        return sum(lane.rows for lane in self.lanes)

    @property
    def attempts(self) -> list[Bar]:
        return [b for b in self.bars if b.kind != "combine"]


def lane_of(node: str) -> str:
    """The object server of a node label (``ip:port/device``)."""
    return node.split("/", 1)[0]


def timeline_of(report: dict[str, Any]) -> Timeline:
    """The layout of a job report (``JobReport.to_dict``); empty without tasks."""
    attempts = []  # (span, task, whether an attempt of the task failed before it)
    for task in report.get("tasks") or []:
        failed_before = False
        for span in sorted(task.get("timeline", []), key=lambda s: s["start_ms"]):
            attempts.append((span, task, failed_before))
            failed_before = failed_before or span["outcome"] == "failed"
    nodes = sorted({lane_of(span["node"]) for span, _t, _f in attempts}, key=_lane_order)
    rows = {node: _stack(sorted((s["start_ms"], s["end_ms"], id(s)) for s, _t, _f in attempts
                                if lane_of(s["node"]) == node)) for node in nodes}
    lanes, first = [], 0
    for node in nodes:
        lanes.append(Lane(node, first, 1 + max(rows[node].values())))
        first += lanes[-1].rows
    bars: list[Bar] = []
    overlays: list[Bar] = []
    for number, lane in enumerate(lanes):
        for span, task, retry in (a for a in attempts if lane_of(a[0]["node"]) == lane.node):
            bar = Bar(number, lane.first_row + rows[lane.node][id(span)], span["start_ms"],
                      span["end_ms"], task["kind"] if task["kind"] in COLOURS else "map",
                      task["task"], span["node"], span["outcome"], span.get("backup", False),
                      retry, task.get("step"))
            bars.append(bar)
            combine = (task.get("shuffle") or {}).get("combine")
            if combine and span["outcome"] == "succeeded":
                overlays.append(replace(bar, kind="combine",
                                        start_ms=max(bar.start_ms, bar.end_ms - combine[0])))
    phases = []
    for kind in KINDS:
        of_kind = [b for b in bars if b.kind == kind]
        if of_kind:
            phases.append(Phase(kind, min(b.start_ms for b in of_kind),
                                max(b.end_ms for b in of_kind),
                                len({(b.step, b.task) for b in of_kind})))
    end = max([b.end_ms for b in bars] + [float(report.get("ms") or 0.0)] + [1.0])
    return Timeline(lanes, bars + overlays, phases, end)


def _stack(intervals: list[tuple[float, float, int]]) -> dict[int, int]:
    """Each interval's row (by its key): the first row free at its start."""
    ends: list[float] = []  # each row's last end
    row_of = {}
    for start, end, key in intervals:
        row = next((r for r, last in enumerate(ends) if last <= start), len(ends))
        if row == len(ends):
            ends.append(end)
        ends[row] = end
        row_of[key] = row
    return row_of


def _lane_order(lane: str) -> tuple:
    host, _, port = lane.rpartition(":")
    return (host, int(port) if port.isdigit() else 0, lane)
