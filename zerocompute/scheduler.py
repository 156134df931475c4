"""Choosing the replica a task runs on, with no I/O.

``random`` is ZeroCloud's behaviour and stays as the baseline.  ``load-aware``
estimates when each candidate would finish the task and takes the earliest
(earliest expected finish over all replicas, placed at dispatch time):
the work ahead of the task on that node is what the node last reported
(running + queued, trusted less as the report ages) or what this proxy has in
flight there, whichever is more; it delays the task only once every slot is
taken; the task then takes the node's recent service time.  Ties are broken
at random so equal nodes share the work.  ``doc/scheduler.md`` explains the
choice; ``zerocompute.simulate`` runs this same code at scale.
"""

from __future__ import annotations

import math
import random as _random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RANDOM = "random"
LOAD_AWARE = "load-aware"
POLICIES = (LOAD_AWARE, RANDOM)

# A node nobody has heard from is assumed idle with this many slots: optimistic,
# so that new or quiet nodes get tried and start reporting.
DEFAULT_SLOTS = 1
DEFAULT_SERVICE_MS = 50.0
# A report this old counts for 1/e of its queue: load moves on while we are not looking.
STALE_S = 2.0


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


SERVICE_WEIGHT = 0.2


def update_service_ms(current: float, sample_ms: float, samples: int) -> float:
    """A node's moving average of task time; the first sample replaces the guess."""
    if samples <= 0:
        return sample_ms
    return (1 - SERVICE_WEIGHT) * current + SERVICE_WEIGHT * sample_ms


def straggler_threshold_s(durations_s: Sequence[float], factor: float, min_s: float) -> float:
    """How long a task may run before it gets a backup copy (MapReduce's backup
    tasks): ``factor`` times the median of the phase's finished tasks, at least ``min_s``."""
    return max(min_s, factor * statistics.median(durations_s))


def parse_load_header(value: str | None, now: float) -> NodeLoad | None:
    """Parse ``running=1 queued=0 slots=2 service_ms=12.5 elapsed_ms=3.0`` (task filter)."""
    if not value:
        return None
    fields = {}
    for item in value.split():
        key, _, raw = item.partition("=")
        try:
            fields[key] = float(raw)
        except ValueError:
            continue
    return NodeLoad(running=int(fields.get("running", 0)),
                    queued=int(fields.get("queued", 0)),
                    slots=max(1, int(fields.get("slots", DEFAULT_SLOTS))),
                    service_ms=fields.get("service_ms", DEFAULT_SERVICE_MS),
                    reported_at=now, elapsed_ms=fields.get("elapsed_ms", 0.0))


def format_load_header(running: int, queued: int, slots: int, service_ms: float,
                       elapsed_ms: float = 0.0) -> str:
    return (f"running={running} queued={queued} slots={slots} service_ms={service_ms:.1f} "
            f"elapsed_ms={elapsed_ms:.1f}")


def expected_finish_ms(load: NodeLoad, in_flight: int, now: float | None = None) -> float:
    """When a task sent now would finish on this node, in milliseconds from now."""
    reported = load.running + load.queued
    if now is not None and load.reported_at:
        reported *= math.exp(-max(0.0, now - load.reported_at) / STALE_S)
    ahead = max(reported, in_flight)
    # Work ahead delays us only once every slot is taken; then it drains across the slots.
    waiting = max(0.0, ahead - load.slots + 1)
    return (waiting / load.slots + 1.0) * load.task_ms


def choose_node(candidates: Sequence[str], loads: Mapping[str, NodeLoad],
                in_flight: Mapping[str, int], policy: str = LOAD_AWARE,
                rng: _random.Random | None = None, now: float | None = None) -> str:
    """Pick one of ``candidates`` (node keys) for a task."""
    if not candidates:
        raise ValueError("no candidate node")
    rng = rng or _random
    if policy == RANDOM:
        return rng.choice(list(candidates))
    if policy != LOAD_AWARE:
        raise ValueError(f"unknown scheduler policy {policy!r}")
    scored = [(expected_finish_ms(loads.get(node, NodeLoad()), in_flight.get(node, 0), now),
               node) for node in candidates]
    best = min(score for score, _ in scored)
    return rng.choice([node for score, node in scored if score <= best * 1.0001])
