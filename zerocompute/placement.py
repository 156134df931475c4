"""Which of a phase's waiting tasks go to which node, and when: the dispatch's
policy, with no I/O.

:class:`Placement` is the whole of it: the waiting tasks and the nodes that hold
each; groups of co-located tasks formed late, when a dispatch slot frees, from the
freshest view (:func:`zerocompute.scheduler.choose_node` for the first task,
``group_size`` for how many travel with it, ``queue_room`` for whether the best
node may take them now, ``worth_spilling`` for a node that is not the best);
what a result, a failure or the end of a request does to the tasks (retried on
the replicas left, then the handoffs; busy nodes again after ``Retry-After``);
and backup copies of stragglers.  Time is always given (``now``, monotonic
seconds), never read.

The proxy's :class:`~zerocompute.middleware.proxy.dispatch.PhaseDispatch` is a
``Placement`` that sends its groups over HTTP; the simulator
(``zerocompute.dev.simulate``) is one whose object servers are simulated.  What
either knows of the nodes is a :class:`View`.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from random import Random
from typing import Any, Protocol

from zerocompute import wire
from zerocompute.report import Attempt, Span
from zerocompute.scheduler import (
    RANDOM,
    SPECULATIVE_CAP,
    JobSpeeds,
    NodeLoad,
    backlog_ms,
    choose_node,
    expected_finish_ms,
    group_size,
    has_free_slot,
    is_slow,
    queue_room,
    slots_left,
    straggler_threshold_s,
    worth_copying,
    worth_spilling,
)

LOST_RACE = "cancelled: another attempt finished first"
# How long the rate at which a job's waiting tasks drain through its nodes is
# trusted before it is summed again over every node (``_spill``).
DRAIN_REFRESH_S = 0.1
# A node taking spilled tasks picks among this many times a group's worth.
BOUND_WINDOW = 32


def node_key(node: dict[str, Any]) -> str:
    """One object-server process: load is per server, not per device."""
    return f"{node['ip']}:{node['port']}"


def node_label(node: dict[str, Any]) -> str:
    return f"{node['ip']}:{node['port']}/{node['device']}"


class View(Protocol):
    """What a placement knows of the object servers, over all of this proxy's jobs."""

    loads: Mapping[str, NodeLoad]  # node key -> its last report
    in_flight: Mapping[str, int]  # node key -> this proxy's tasks there
    rng: Random
    max_busy_wait_s: float

    def probe(self, nodes: list[dict]) -> None:
        """Refresh the loads of ``nodes`` not heard from lately."""

    def is_limited(self, node: dict) -> bool:
        """Whether ``node`` failed to take a request lately (Swift's error limiting)."""


@dataclass(frozen=True)
class RunSettings:
    """How a phase is dispatched: the job's policy, and the proxy's settings
    (``ProxyConfig``, where their defaults are)."""

    policy: str
    concurrency: int
    max_group: int
    backups: bool
    backup_factor: float
    backup_min_s: float
    tick_s: float = 0.2  # how often the dispatch looks at its tasks when nothing happens


@dataclass(eq=False)
class TaskState:
    """One task of a job: what it is (its spec, sent to whichever node runs it), where
    it may run, and its attempts so far."""

    index: int  # in its phase's reports
    spec: wire.TaskSpec  # its device is the chosen node's, filled in when it is sent
    candidates: list[list[dict]]  # primaries, then handoffs
    size: int = 0  # bytes of input, when known: the larger are placed first
    tried: set[str] = field(default_factory=set)  # nodes that failed it
    busy_until: dict[str, float] = field(default_factory=dict)  # 503 + Retry-After
    failed: list[Attempt] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)  # every attempt, as it ended
    began: dict[str, float] = field(default_factory=dict)  # node key -> when it began it
    live: dict[str, Group] = field(default_factory=dict)  # node key -> its group
    first_sent: float | None = None
    running_since: float | None = None  # when it became the next task of its group
    backed_up: bool = False
    done: bool = False
    node: dict | None = None  # where the claiming result came from
    error: str | None = None  # why no node could run it
    # An input no node can read in place (encrypted): what opens its plaintext (through
    # the proxy's read path) as (length, chunks) to stream to a node
    # (``spec.stream_bytes`` is its length).
    opener: Any = None

    @property
    def task_id(self) -> str:
        return self.spec.task

    @property
    def holders(self) -> list[dict]:
        """The nodes that hold the input: its replicas, or every fragment's holder."""
        if self.opener is not None:
            return []  # streamed to whichever node runs it: never local
        if self.spec.ec is not None:
            return [*self.candidates[0], *self.candidates[1]]
        return self.candidates[0]

    @property
    def attempts(self) -> int:
        return len(self.failed) + (1 if self.node is not None else 0)

    def untried(self, now: float | None = None,
                passed_over: Callable[[dict], bool] | None = None) -> list[dict]:
        """Nodes still worth trying, primaries first; with ``now``, only those not busy.

        A tier whose every untried node is ``passed_over`` (could not be reached
        lately, say) is skipped, as Swift's proxy moves on to handoffs past
        error-limited primaries; such nodes are tried only when nothing else is left.
        """
        rest = self._first_untried_tier(passed_over) if passed_over else []
        rest = rest or self._first_untried_tier()
        if now is None:
            return rest
        return [n for n in rest if self.busy_until.get(node_key(n), 0) <= now]

    def _first_untried_tier(self, passed_over: Callable[[dict], bool] = lambda n: False
                            ) -> list[dict]:
        for tier in self.candidates:
            rest = [n for n in tier if node_key(n) not in self.tried and not passed_over(n)]
            if rest:
                return rest
        return []

    def untried_on(self, key: str, now: float) -> dict | None:
        """The node of ``key`` if the task may try it now, else None."""
        return next((n for n in self.untried(now) if node_key(n) == key), None)

    def spec_for(self, node: dict) -> wire.TaskSpec:
        """The task as sent to ``node``: on its device."""
        return replace(self.spec, device=node["device"])

    def attempt_afresh(self, **changes: Any) -> TaskState:
        """The task again, as if never sent (every attempt forgotten), with ``changes``
        (e.g. other candidates, or ``tried``: nodes not to try again)."""
        return replace(self, **{"tried": set(), "busy_until": {}, "failed": [], "spans": [],
                                "began": {}, "live": {},
                                "first_sent": None, "running_since": None,
                                "backed_up": False, "done": False, "node": None,
                                "error": None, **changes})


@dataclass(eq=False)
class Group:
    """Tasks sent to one node in one request; the node runs them in order, one at a
    time, and answers each as it ends."""

    node: dict
    tasks: list[TaskState]
    answered: int = 0
    cancelled: bool = False
    backup: bool = False  # a second attempt of a straggler

    @property
    def key(self) -> str:
        return node_key(self.node)

    def head(self) -> TaskState | None:
        """The task of the group the node is running now."""
        return self.tasks[self.answered] if self.answered < len(self.tasks) else None

    def cancel(self) -> None:
        """Hang up: the node kills the running guest and drops the rest."""
        self.cancelled = True


class Placement:
    """The tasks of one phase of a job, until each is claimed or has failed.

    A subclass sends the groups (:meth:`_launch`) and tells the placement what
    became of them (:meth:`_take_result`, :meth:`_claimed`, :meth:`_group_over`);
    it may record attempts (:meth:`_end_attempt`).
    """

    group_class: type[Group] = Group

    def __init__(self, view: View, tasks: list[TaskState], settings: RunSettings,
                 origin: float = 0.0):
        self.view = view
        self.tasks = tasks
        self.settings = settings
        self.origin = origin  # the job's start (its timeline's zero)
        self.speeds = JobSpeeds()
        self.durations: list[float] = []  # claimed tasks, from running to result
        self.nodes: dict[str, dict] = {}  # every node sent a group, winners or not
        # The groups in flight, in the order sent (a dict, not a set: the order in
        # which stragglers are looked at must not depend on object addresses).
        self.streams: dict[Group, None] = {}
        self.in_flight: dict[str, int] = defaultdict(int)  # this job's tasks per node
        self.groups_on: Counter[str] = Counter()  # this job's groups in flight per node
        self.unfinished = len(tasks)
        self.pending: dict[int, TaskState] = {}
        self.by_node: dict[str, OrderedDict[int, TaskState]] = defaultdict(OrderedDict)
        self._order: list[tuple[int, int]] = []  # (-size, index): a heap of waiting tasks
        self._in_order: set[int] = set()
        self._may_spill: set[str] = set()  # nodes that freed a slot since last looked at
        self._drain: tuple[float, float] | None = None  # (when, tasks per ms)
        sizes = sorted(state.size for state in tasks if state.size)
        self._typical_size = sizes[len(sizes) // 2] if sizes else 0
        self._pending_work = 0.0  # the waiting tasks' work, in typical tasks (_scale)

    # -- the loop's steps ---------------------------------------------------------
    def begin(self) -> None:
        """Every task waits, the largest inputs first (as Hadoop orders its splits:
        the longest tasks do not start last), then in their phase's order."""
        for state in sorted(self.tasks, key=lambda s: (-s.size, s.index)):
            self._enqueue(state)
        self._may_spill.update(self.by_node)

    def dispatch(self, now: float) -> None:
        """Send groups while the phase may have more in flight and a node should take one."""
        while len(self.streams) < self.settings.concurrency and self.pending:
            picked = self._next_group(now)
            if picked is None:
                return
            self._start(*picked, now)

    def _next_group(self, now: float) -> tuple[dict, list[TaskState]] | None:
        """The next node to send to and the waiting tasks it gets."""
        hopeless = []
        picked = None
        for state in self._waiting():
            if not state.untried():
                hopeless.append(state)
                continue
            ready = self._ready(state, now)
            if ready:
                picked = (state, ready)
                break
            if state.first_sent and now - state.first_sent > self.view.max_busy_wait_s:
                hopeless.append(state)
        for state in hopeless:
            self._dequeue(state)
            self._give_up(state)
        if picked is None:
            return None
        state, ready = picked
        node = self._choose(state, ready, now)
        group = self._fill_group(state, node_key(node), now)
        if group is None:  # the best node has enough of this job queued
            return self._spill(now)
        return node, group

    def _ready(self, state: TaskState, now: float) -> list[dict]:
        """The nodes a task may be sent to now: past the nodes that refused it lately."""
        return state.untried(now, passed_over=self.view.is_limited)

    def _waiting(self) -> Iterator[TaskState]:
        """The waiting tasks in the order they are placed: the first without sorting."""
        order = self._order
        while order and order[0][1] not in self.pending:
            self._in_order.discard(heapq.heappop(order)[1])
        if not order:
            return
        yield self.pending[order[0][1]]
        for _size, index in sorted(order)[1:]:
            if index in self.pending:
                yield self.pending[index]

    def _choose(self, state: TaskState, ready: list[dict], now: float) -> dict:
        view = self.view
        by_key = {node_key(n): n for n in ready}
        waiting = None
        if self.settings.policy != RANDOM:
            view.probe(ready)
            self._may_spill.update(by_key)
            waiting = {key: self._backlog_ms(key) for key in by_key}
        scale = self._scale(state)
        task_ms = {key: ms * scale for key, ms in self.speeds.estimates(list(by_key)).items()}
        key = choose_node(list(by_key), view.loads, view.in_flight, self.settings.policy,
                          view.rng, now=now, task_ms=task_ms, waiting=waiting)
        return by_key[key]

    def _spill(self, now: float) -> tuple[dict, list[TaskState]] | None:
        """While the next task waits for its best node, a node with a free slot takes
        waiting tasks it holds if it would finish them before the job's backlog
        drains, or no later than any other node that may run them would: nodes
        holding only later inputs do not idle behind the first tasks' full
        replicas, and a slow node helps while much work waits but gets none near
        the end.  Of what it holds it takes the tasks with the least room
        elsewhere (:meth:`_most_bound`), and only into a free slot: a node that
        is not the best never queues this job's work.  Only nodes that freed a
        slot (or were probed) since they were last looked at are looked at."""
        view = self.view
        keys = [key for key in self._may_spill if self.by_node.get(key)
                and not (key in self.nodes and view.is_limited(self.nodes[key]))]
        self._may_spill.clear()
        loads = {key: view.loads.get(key, NodeLoad()) for key in keys}
        free = [key for key in keys if has_free_slot(loads[key], self.groups_on[key])]
        if not free:
            return None
        backlog = max(0.0, self._pending_work) / self._drain_rate(now)
        estimates = self.speeds.estimates(free)
        finishes = sorted(
            (expected_finish_ms(loads[key], view.in_flight.get(key, 0), now,
                                estimates.get(key)), key) for key in free)
        for i, (finish, key) in enumerate(finishes):
            # Only as far into the node's waiting tasks as one group needs; a slow
            # node from the end (the smallest, and the latest), any other from the front.
            waiting = self.by_node[key].values()
            size = self._group_size(key)
            window = BOUND_WINDOW * size
            if is_slow(estimates.get(key), self.speeds.median_ms):
                # A slow node takes few tasks: it looks at all it holds, for the work
                # only slow nodes can do (which must start early), else the smallest.
                waiting, window = reversed(waiting), len(waiting)
            takers = ((state, node) for state in waiting if state.opener is None
                      and (node := state.untried_on(key, now)) is not None)
            picked = [(state, node) for state, node in
                      self._most_bound(key, takers, size, window)
                      if worth_spilling(finish * self._scale(state), backlog)
                      or finish * self._scale(state) <= self._finish_elsewhere(state, key, now)]
            if picked:
                # This node and those not reached yet are looked at again next time.
                self._may_spill.update(k for _f, k in finishes[i:])
                for state, _node in picked:
                    self._dequeue(state)
                return picked[0][1], [state for state, _node in picked]
        return None

    def _finish_elsewhere(self, state: TaskState, key: str, now: float) -> float:
        """How soon a task would finish on the best of its other nodes (ms)."""
        return self._soonest_finish_ms(
            state, [k for n in state.untried(now) if (k := node_key(n)) != key], now)

    def _soonest_finish_ms(self, state: TaskState, keys: list[str], now: float) -> float:
        """How soon ``state`` would finish on the best of the nodes of ``keys`` (ms)."""
        loads, scale = self.view.loads, self._scale(state)
        estimates = self.speeds.estimates(keys)
        return min((expected_finish_ms(loads.get(k, NodeLoad()), self.view.in_flight.get(k, 0),
                                       now, estimates.get(k)) * scale for k in keys),
                   default=math.inf)

    def _scale(self, state: TaskState) -> float:
        """A task's work against the phase's typical task, by input size: the job's
        speeds are kept per typical task, so that a node given small tasks does not
        look faster than it is, nor one given large ones slower."""
        if state.size and self._typical_size:
            return state.size / self._typical_size
        return 1.0

    def _most_bound(self, key: str, takers: Iterator[tuple[TaskState, dict]],
                    size: int, window: int) -> list[tuple[TaskState, dict]]:
        """Of the first ``window`` tasks a node could take, the ``size`` with the least room
        elsewhere: those whose other nodes have the most of the job's tasks waiting
        per slot.  A node many tasks could run on does the work only it can do
        first, instead of what the other nodes would have done anyway."""
        first = list(itertools.islice(takers, window))
        if len(first) <= size:
            return first

        backlogs: dict[str, float] = {}

        def backlog(k: str) -> float:
            if k not in backlogs:
                backlogs[k] = self._backlog_ms(k)
            return backlogs[k]

        def room_elsewhere(item: tuple[TaskState, dict]) -> float:
            return min((backlog(k) for n in item[0].untried() if (k := node_key(n)) != key),
                       default=math.inf)
        ranked = sorted(range(len(first)), key=lambda i: (-room_elsewhere(first[i]), i))
        return [first[i] for i in sorted(ranked[:size])]

    def _backlog_ms(self, key: str) -> float:
        """How long the job's tasks waiting for a node would keep its slots left busy."""
        load = self.view.loads.get(key, NodeLoad())
        return backlog_ms(len(self.by_node[key]), ((
            slots_left(load, self.view.in_flight.get(key, 0)),
            load.job_task_ms(self.speeds.task_ms(key))),))

    def _drain_rate(self, now: float) -> float:
        """Tasks per millisecond the job's nodes would take with every slot busy (the
        ``backlog_ms`` of one task), summed afresh at most every ``DRAIN_REFRESH_S``
        once the job's speeds have settled."""
        if self._drain is None or now - self._drain[0] > DRAIN_REFRESH_S \
                or self.speeds.count < 64:
            keys = [key for key, waiting in self.by_node.items() if waiting]
            estimates = self.speeds.estimates(keys)
            loads = {key: self.view.loads.get(key, NodeLoad()) for key in keys}
            one = backlog_ms(1, ((loads[key].slots, loads[key].job_task_ms(estimates.get(key)))
                                 for key in keys))
            self._drain = (now, 1 / one if one > 0 and not math.isinf(one) else 1e-12)
        return self._drain[1]

    def _group_size(self, key: str) -> int:
        estimate = self.speeds.task_ms(key) or self.view.loads.get(key, NodeLoad()).task_ms
        return group_size(len(self.pending), self.settings.concurrency, estimate,
                          self.speeds.completed(key), self.settings.max_group)

    def _fill_group(self, first: TaskState, key: str, now: float) -> list[TaskState] | None:
        size = self._group_size(key)
        # Holding tasks back for a better node is load-aware placement: random
        # (ZeroCloud's baseline) uses no load signal, slots included.
        slots = slots_left(self.view.loads.get(key, NodeLoad()), self.view.in_flight.get(key, 0))
        if self.settings.policy != RANDOM and not queue_room(slots, self.in_flight[key], size):
            return None
        if first.opener is not None:
            size = 1  # a streamed input travels alone
        group = [first]
        for state in self.by_node[key].values():
            if len(group) >= size:
                break
            if state is not first and state.opener is None \
                    and state.untried_on(key, now) is not None:
                group.append(state)
        for state in group:
            self._dequeue(state)
        return group

    def _start(self, node: dict, tasks: list[TaskState], now: float,
               backup: bool = False) -> Group:
        group = self.group_class(node, tasks, backup=backup)
        self.nodes[group.key] = node
        tasks[0].began[group.key] = now
        for state in tasks:
            state.live[group.key] = group
            state.first_sent = state.first_sent or now
        if not backup:  # a backup's task keeps the time it has been running elsewhere
            tasks[0].running_since = now
        self.streams[group] = None
        self.groups_on[group.key] += 1
        self._count(group.key, len(tasks))
        self._launch(group)
        return group

    def _launch(self, group: Group) -> None:
        """Send ``group`` to its node."""
        raise NotImplementedError

    def _count(self, key: str, tasks: int) -> None:
        """Tasks in flight on a node: this job's, and the proxy's over all its jobs."""
        self.in_flight[key] += tasks
        self.view.in_flight[key] += tasks

    # -- the waiting tasks ---------------------------------------------------------
    def _enqueue(self, state: TaskState) -> None:
        if state.done or state.live:
            return
        if state.index not in self.pending:
            self._pending_work += self._scale(state)
        self.pending[state.index] = state
        if state.index not in self._in_order:
            self._in_order.add(state.index)
            heapq.heappush(self._order, (-state.size, state.index))
        # Only where it may run next: its untried primaries, else the next tier's.
        for n in state.untried():
            self.by_node[node_key(n)][state.index] = state

    def _dequeue(self, state: TaskState) -> None:
        if self.pending.pop(state.index, None) is not None:
            self._pending_work -= self._scale(state)
        for group in state.candidates:
            for n in group:
                self.by_node[node_key(n)].pop(state.index, None)

    def _give_up(self, state: TaskState) -> None:
        state.done = True
        state.error = "no node could run the task: " + "; ".join(
            f"{a.node}: {a.error}" for a in state.failed)
        self.unfinished -= 1

    # -- what becomes of a group ---------------------------------------------------
    def _answer(self, group: Group) -> TaskState:
        """Take the group's next task off the node: answered, no longer in flight there."""
        state = group.tasks[group.answered]
        group.answered += 1
        self._count(group.key, -1)
        state.live.pop(group.key, None)
        return state

    def _take_result(self, group: Group, retry: str | None, now: float) -> TaskState | None:
        """The node answered its group's running task (``retry``: it could not run
        it, say why); the task if this answer claims it, None if another attempt
        did or the task waits again.  The group's next task begins now."""
        state = self._answer(group)
        self._may_spill.add(group.key)
        following = group.head()
        if following is not None:
            following.running_since = following.began[group.key] = now
        if retry:
            self._end_attempt(group, state, "failed", now)
            self._failed_on(state, group.node, retry, now)
            self._enqueue(state)
            return None
        if state.done:
            self._end_attempt(group, state, "cancelled", now)  # lost the race
            return None
        return state

    def _claimed(self, state: TaskState, group: Group, ms: float, completed: bool,
                 now: float) -> None:
        """``group``'s result is the task's: its other attempts are hung up on."""
        state.done = True
        state.node = group.node
        if completed:
            self.speeds.add(group.key, ms / self._scale(state))
        if state.running_since is not None:
            self.durations.append(now - state.running_since)
        for other in list(state.live.values()):
            began = state.began.get(other.key)
            if completed and began is not None and (now - began) * 1000 > ms:
                # The loser had run longer than the winner took, unfinished: the job's
                # tasks take at least that long there (never less than it knew).
                # Without it a node whose every task loses its race is never
                # measured, and looks typical.
                lost_ms = (now - began) * 1000 / self._scale(state)
                known = self.speeds.task_ms(other.key) if self.speeds.completed(other.key) else 0
                self.speeds.add(other.key, max(lost_ms, known))
            state.failed.append(Attempt(node_label(other.node), LOST_RACE))
            self._end_attempt(other, state, "cancelled", now)
            other.cancel()
        state.live.clear()

    def _settled(self, state: TaskState, group: Group, ok: bool, now: float) -> None:
        """The claimed result was handed on whole: the task is over."""
        self._end_attempt(group, state, "succeeded" if ok else "failed", now)
        # Counted only now: the job must not finish while an output is on its way.
        self.unfinished -= 1

    def _unclaimed(self, state: TaskState, group: Group, error: str, now: float) -> None:
        """The claimed result did not arrive whole: the task runs again."""
        state.done, state.node = False, None
        self._end_attempt(group, state, "failed", now)
        self._failed_on(state, group.node, error, now)
        self._enqueue(state)

    def _failed_on(self, state: TaskState, node: dict, error: str, now: float,
                   retry_after: float | None = None) -> None:
        key = node_key(node)
        state.failed.append(Attempt(node_label(node), error))
        if retry_after is not None:
            # Busy is not broken: the node may take the task a little later.
            state.busy_until[key] = now + retry_after
        else:
            state.tried.add(key)

    def _end_attempt(self, group: Group, state: TaskState, outcome: str, now: float) -> None:
        """The attempt of ``state`` on ``group``'s node is over: into its timeline
        (if the node had begun it: the tasks of a group behind a failed head had not)."""
        began = state.began.pop(group.key, None)
        if began is None:
            return
        state.spans.append(Span(node_label(group.node), round((began - self.origin) * 1000, 3),
                                round((now - self.origin) * 1000, 3), outcome, group.backup))

    def _group_over(self, group: Group, error: str, now: float,
                    retry_after: float | None = None) -> None:
        """The request ended: its unanswered tasks go back to wait for a node."""
        while group.head() is not None:
            state = self._answer(group)
            self._end_attempt(group, state, "cancelled" if group.cancelled or state.done
                              else "failed", now)
            if state.done:
                continue
            if not group.cancelled:
                self._failed_on(state, group.node, error, now, retry_after)
            self._enqueue(state)
        self.streams.pop(group, None)
        self.groups_on[group.key] -= 1
        self._may_spill.add(group.key)

    # -- backup tasks ------------------------------------------------------------
    def _back_up_stragglers(self, now: float) -> None:
        """Give a straggler a copy on another replica: once nothing waits, any task
        running far longer than the job's typical one (MapReduce's backup tasks);
        any time, one its node is expected to take so long that a copy would finish
        well before it (LATE) and, while tasks wait, after they have drained; at
        most ``SPECULATIVE_CAP`` of the requests."""
        if not self.durations:
            return
        threshold = None if self.pending else straggler_threshold_s(
            self.durations, self.settings.backup_factor, self.settings.backup_min_s)
        room = math.ceil(SPECULATIVE_CAP * self.settings.concurrency) - sum(
            group.backup for group in self.streams)
        for group in list(self.streams):
            state = group.head()
            if state is None or state.done or state.backed_up or state.running_since is None:
                continue
            ready = None
            if threshold is not None and now - state.running_since > threshold:
                ready = [n for n in state.untried(now) if node_key(n) not in state.live]
            elif room > 0 and self.settings.policy != RANDOM:
                # Judged by the nodes' speeds: a load signal, which random does not use.
                ready = self._worth_a_copy(group, state, now)
            if ready is None:
                continue
            state.backed_up = True
            if ready:
                room -= 1
                self._start(self._choose(state, ready, now), [state], now, backup=True)

    def _worth_a_copy(self, group: Group, state: TaskState, now: float) -> list[dict] | None:
        """The nodes a copy of ``group``'s running task could go to, if one of them
        would finish it well before the original (by the job's speeds there)."""
        median = self.speeds.median_ms
        if median is None:
            return None
        scale = self._scale(state)
        here = self.view.loads.get(group.key, NodeLoad()).job_task_ms(
            self.speeds.task_ms(group.key))
        remaining_ms = here * scale - (now - state.running_since) * 1000
        if not worth_copying(remaining_ms, median * scale):  # not even on the fastest node
            return None
        # While tasks wait, a copy takes a slot from them: worth it only for an
        # original that would still run once they have drained (the job's last).
        if self.pending and remaining_ms <= self._pending_work / self._drain_rate(now):
            return None
        ready = [n for n in state.untried(now) if node_key(n) not in state.live]
        copy_ms = self._soonest_finish_ms(state, [node_key(n) for n in ready], now)
        return ready if worth_copying(remaining_ms, copy_ms) else None
