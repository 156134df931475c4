"""Choosing the replica a task runs on, with no I/O.

``random`` is ZeroCloud's behaviour and stays as the baseline.  ``load-aware``
estimates when each candidate would finish the task and takes the earliest
(earliest expected finish over all replicas, placed at dispatch time):
what the node last reported beyond this proxy's own tasks there is other work
(trusted less as the report ages), which holds slots and, if it waits, is
ahead of us; this proxy's tasks ahead drain through the slots left at the
job's speed there (:class:`JobSpeeds`, or the node's recent service time
until the job has seen it finish one).  Ties go to the node with the least of
the job's work waiting for it, then at random.  :func:`group_size` says how
many co-located tasks travel in one request; the rest of the policy (queue
bound, spilling, backup copies) is :mod:`zerocompute.placement`'s.
``doc/scheduler.md`` explains the choices; ``zerocompute.dev.simulate`` runs
this same code at scale.
"""

from __future__ import annotations

import math
import random as _random
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from zerocompute.wire import LoadReport

RANDOM = "random"
LOAD_AWARE = "load-aware"
POLICIES = (LOAD_AWARE, RANDOM)

# A node nobody has heard from is assumed idle with this many slots: optimistic,
# so that new or quiet nodes get tried and start reporting.
DEFAULT_SLOTS = 1
DEFAULT_SERVICE_MS = 50.0
# A report this old counts for 1/e of its queue: load moves on while we are not looking.
STALE_S = 2.0
# A node not heard from for this long (no load report, no probe) is probed before
# a dispatch; at most once per this long, answered or not, so a dead node does not
# cost every dispatch a connect timeout.
PROBE_AGE_S = 1.0


@dataclass(frozen=True)
class NodeLoad:
    """What an object server last said about itself."""

    running: int = 0
    queued: int = 0
    slots: int = DEFAULT_SLOTS
    service_ms: float = DEFAULT_SERVICE_MS
    reported_at: float = 0.0
    elapsed_ms: float = 0.0  # how long the running tasks have been running, on average

    @property
    def task_ms(self) -> float:
        """The node's time per task: its recent average, or longer if what runs now is."""
        return max(self.service_ms, self.elapsed_ms)

    def job_task_ms(self, job_ms: float | None) -> float:
        """How long a task of a job would run here once it has a slot: what the job
        has seen (``JobSpeeds``), but never less than the node's recent service time
        (a node starved of CPU must look so either way).  How long the running
        tasks have been running is no speed: it says how soon a slot frees."""
        return self.service_ms if job_ms is None else max(job_ms, self.service_ms)


SERVICE_WEIGHT = 0.2
# An early copy of a straggler must be expected to finish in under 1/LATE_MARGIN of
# the original's time left; at most SPECULATIVE_CAP of a phase's requests are copies.
LATE_MARGIN = 2.0
SPECULATIVE_CAP = 0.1
# A node's speed on a job is the median of its last this many tasks of it.
SPEED_WINDOW = 16
# A group is sized to hold about this much work on its node, so that a slow
# node never holds many tasks that another replica could run sooner.
GROUP_TARGET_MS = 500.0
MAX_GROUP = 32
# A node whose tasks of a job take this much longer than the job's median is slow.
SLOW_FACTOR = 1.5


def due_for_probe(nodes: Mapping[str, dict], loads: Mapping[str, NodeLoad],
                  probed_at: dict[str, float], now: float,
                  max_age_s: float = PROBE_AGE_S) -> dict[str, dict]:
    """Of ``nodes`` (by key), those not heard from for ``max_age_s``: each is marked
    probed at ``now`` in ``probed_at``, whether or not it will answer."""
    due = {}
    for key, node in nodes.items():
        heard = max(loads[key].reported_at if key in loads else -math.inf,
                    probed_at.get(key, -math.inf))
        if now - heard > max_age_s:
            probed_at[key] = now
            due[key] = node
    return due


def update_service_ms(current: float, sample_ms: float, samples: int) -> float:
    """A node's moving average of *completed* guests' run time (a cancelled or
    killed attempt says nothing about speed); the first sample replaces the guess."""
    if samples <= 0:
        return sample_ms
    return (1 - SERVICE_WEIGHT) * current + SERVICE_WEIGHT * sample_ms


def straggler_threshold_s(durations_s: Sequence[float], factor: float, min_s: float) -> float:
    """How long a task may run before it gets a backup copy (MapReduce's backup
    tasks): ``factor`` times the median of the phase's finished tasks, at least ``min_s``."""
    return max(min_s, factor * statistics.median(durations_s))


def worth_copying(remaining_ms: float, copy_ms: float) -> bool:
    """Whether a running task should get a copy before the phase runs dry (LATE,
    Zaharia et al.): the copy, where it would run, would finish in well under
    what the original has left by this job's own speed on its node."""
    return copy_ms * LATE_MARGIN < remaining_ms


def parse_load_header(value: str | None, now: float) -> NodeLoad | None:
    """A node's load from its ``X-Zerocompute-Load`` (``wire.LoadReport``)."""
    report = LoadReport.parse(value, DEFAULT_SLOTS, DEFAULT_SERVICE_MS)
    if report is None:
        return None
    return NodeLoad(running=report.running, queued=report.queued, slots=report.slots,
                    service_ms=report.service_ms, reported_at=now,
                    elapsed_ms=report.elapsed_ms)


@dataclass
class JobSpeeds:
    """How long one job's tasks take on each node (completed guests only).

    A node slowed by CPU contention (a noisy neighbour, an older host) has
    free slots and looks idle to the load report; what gives it away is that
    *this job's* tasks take longer there than elsewhere.  Per node, the median
    of its last :data:`SPEED_WINDOW` samples; a node this job has not run on
    yet is assumed to take the job's median (optimistic, so it gets tried).
    """

    samples: dict[str, deque] = field(default_factory=dict)
    count: int = 0  # samples ever added
    _all: deque = field(default_factory=lambda: deque(maxlen=8 * SPEED_WINDOW))
    _medians: dict[str | None, float] = field(default_factory=dict)  # until the next add

    def add(self, node: str, ms: float) -> None:
        self.samples.setdefault(node, deque(maxlen=SPEED_WINDOW)).append(ms)
        self._all.append(ms)
        self.count += 1
        self._medians.pop(node, None)
        self._medians.pop(None, None)

    def completed(self, node: str) -> int:
        return len(self.samples.get(node, ()))

    @property
    def median_ms(self) -> float | None:
        if not self._all:
            return None
        if None not in self._medians:
            self._medians[None] = statistics.median(self._all)
        return self._medians[None]

    def task_ms(self, node: str) -> float | None:
        """This job's expected task time on ``node``; None before any task finished."""
        if node in self._medians:
            return self._medians[node]
        mine = self.samples.get(node)
        if mine:
            self._medians[node] = statistics.median(mine)
            return self._medians[node]
        return self.median_ms

    def estimates(self, nodes: Sequence[str]) -> dict[str, float]:
        return {n: ms for n in nodes if (ms := self.task_ms(n)) is not None}


def group_size(pending: int, concurrency: int, task_ms: float, completed_on_node: int,
               max_group: int = MAX_GROUP, target_ms: float = GROUP_TARGET_MS) -> int:
    """How many tasks to send a node in one request.

    Large while much work remains, down to one near the end of a phase (so
    that balancing, retries and backup tasks keep task granularity); never
    more than about ``target_ms`` of work on that node; and growing as the
    job sees the node finish its tasks (1, 2, 4, ...), so that no node gets a
    big group before its speed on this job is known.
    """
    by_remaining = math.ceil(pending / (2 * max(1, concurrency)))
    by_time = int(target_ms // max(task_ms, 0.001))
    by_trust = 2 ** min(completed_on_node, 16)
    return max(1, min(max_group, by_remaining, by_time, by_trust))


def has_free_slot(load: NodeLoad, groups: int) -> bool:
    """Whether a task sent now would start at once: neither what the node last
    reported nor this job's ``groups`` there (each runs one task at a time) fill
    its slots.  The report is taken as it stands: a slot is only counted free when
    the node said so."""
    return max(load.running + load.queued, groups) < load.slots


def expected_finish_ms(load: NodeLoad, in_flight: int, now: float | None = None,
                       task_ms: float | None = None) -> float:
    """When a task sent now would finish on this node, in milliseconds from now.

    ``in_flight`` is this proxy's tasks there; ``task_ms`` what the job knows of
    its own tasks on this node (:meth:`NodeLoad.job_task_ms`).  What the node
    reports beyond ``in_flight`` is other work (another tenant's, another
    proxy's): it holds slots, and what of it waits is ahead of us; our own
    tasks ahead drain through the slots left, at the job's speed.
    """
    reported = load.running + load.queued
    if now is not None and load.reported_at:
        reported *= math.exp(-max(0.0, now - load.reported_at) / STALE_S)
    others = max(0.0, reported - in_flight)
    mine = max(1.0, load.slots - others)
    run_ms = load.job_task_ms(task_ms)
    # Work ahead delays us only once every slot is taken; then it drains across the slots.
    ours = max(0.0, in_flight - mine + 1) / mine * run_ms
    theirs = max(0.0, others - load.slots + 1) / load.slots * max(run_ms, load.task_ms)
    return ours + theirs + run_ms


def slots_left(load: NodeLoad, in_flight: int) -> int:
    """The node's slots not held by work other than this proxy's ``in_flight``
    tasks (another tenant's, another proxy's), as its last report counts them;
    at least one, for that work ends too."""
    others = max(0, load.running + load.queued - in_flight)
    return max(1, load.slots - others)


def queue_room(slots: int, in_flight: int, group: int) -> bool:
    """Whether a node may take ``group`` more of a job's tasks: a group per slot
    and one more waiting keeps the slots busy until the next group comes; the
    rest wait in the proxy, to be placed later with a fresher view (late binding),
    rather than deepen a queue that makes a node busy with other work look good."""
    return in_flight + group <= (slots + 1) * group


def backlog_ms(waiting: int, nodes: Iterable[tuple[int, float]]) -> float:
    """How long a job's ``waiting`` tasks would take to drain through its nodes,
    given as (slots, time per task in ms), every slot busy: the time the last of
    them would wait in the proxy for a node."""
    rate = sum(slots / max(ms, 0.001) for slots, ms in nodes)
    return waiting / rate if rate > 0 else math.inf


def worth_spilling(finish_ms: float, backlog: float) -> bool:
    """Whether a node that is not the best place for the next task should take a
    waiting task now anyway: it would finish it before the job's backlog drains
    through the better nodes.  A slow node so helps while much work waits and
    gets nothing near the end, when its slowness would make the job wait."""
    return finish_ms < backlog


def is_slow(task_ms: float | None, median_ms: float | None) -> bool:
    """Whether a node takes this job's tasks markedly longer than the job's nodes do
    (by :data:`SLOW_FACTOR`); unknown is not slow."""
    return task_ms is not None and median_ms is not None and task_ms > SLOW_FACTOR * median_ms


def choose_node(candidates: Sequence[str], loads: Mapping[str, NodeLoad],
                in_flight: Mapping[str, int], policy: str = LOAD_AWARE,
                rng: _random.Random | None = None, now: float | None = None,
                task_ms: Mapping[str, float] | None = None,
                waiting: Mapping[str, float] | None = None) -> str:
    """Pick one of ``candidates`` (node keys) for a task; ``task_ms`` is the
    job's own estimate per node (:meth:`JobSpeeds.estimates`).  Among nodes that
    would finish it as soon, the one with the fewest of the job's other tasks
    ``waiting`` for it (per slot) takes it: a node that many tasks can only run
    on is kept for them."""
    if not candidates:
        raise ValueError("no candidate node")
    rng = rng or _random
    if policy == RANDOM:
        return rng.choice(list(candidates))
    if policy != LOAD_AWARE:
        raise ValueError(f"unknown scheduler policy {policy!r}")
    task_ms = task_ms or {}
    scored = [(expected_finish_ms(loads.get(node, NodeLoad()), in_flight.get(node, 0), now,
                                  task_ms.get(node)), node) for node in candidates]
    best = min(score for score, _ in scored)
    soonest = [node for score, node in scored if score <= best * 1.0001]
    if waiting and len(soonest) > 1:
        least = min(waiting.get(node, 0.0) for node in soonest)
        soonest = [node for node in soonest if waiting.get(node, 0.0) <= least]
    return rng.choice(soonest)
