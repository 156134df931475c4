"""Sending tasks to object servers, from the proxy.

:class:`Dispatcher` owns this proxy process's view of the object servers'
load (what each last reported on a task response or a probe, plus what this
proxy has in flight there), asks the scheduler for a replica, sends the
signed task, and moves on to the next candidate when a node cannot run it
(connection error, timeout, 404 not on this node, 503 busy, 507, any 5xx).
A node that is only busy (503 with ``Retry-After``) is tried again after
that delay: the task waits for a slot somewhere rather than failing, for at
most ``max_busy_wait_s``.  A guest that fails is not retried: its failure
would repeat anywhere.

Backup tasks (MapReduce's): once a job has nothing left to dispatch, a
:class:`JobTracker` watches the tasks still running, and one that has run
far longer than the job's typical task gets a second attempt on another
replica.  Both attempts race; the first to come back *claims* the task and
alone writes its output; the other's result is dropped unread.  A claim is
released only if writing failed, so an output is never written twice, and a
Swift PUT is atomic, so never half.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import eventlet
from eventlet import Timeout
from eventlet.event import Event
from swift.common.bufferedhttp import http_connect, http_connect_raw
from swift.common.exceptions import ConnectionTimeout

from zerocompute import wire
from zerocompute.report import Attempt
from zerocompute.scheduler import (
    RANDOM,
    NodeLoad,
    choose_node,
    parse_load_header,
    straggler_threshold_s,
)

RETRYABLE = {404, 500, 502, 503, 504, 507}
# A view older than this is refreshed by a probe before a task is placed on it.
PROBE_AGE_S = 1.0
LOST_RACE = "cancelled: another attempt finished first"


def node_key(node: dict[str, Any]) -> str:
    """One object-server process: load is per server, not per device."""
    return f"{node['ip']}:{node['port']}"


def node_label(node: dict[str, Any]) -> str:
    return f"{node['ip']}:{node['port']}/{node['device']}"


@dataclass
class TaskCall:
    """What is sent for one task, wherever it runs."""

    partition: int
    path: str  # /account/container/object, unquoted
    policy_index: int
    task: dict[str, Any]
    executable: bytes
    exec_etag: str
    time_s: float


@dataclass
class TaskResponse:
    """The response of the node that ran the task (its body still unread)."""

    node: dict[str, Any]
    response: Any
    connection: Any


@dataclass
class Outcome:
    """How a task ended: the answer that settled it (None if every node failed),
    how many attempts were made, the ones that did not count, and whether a
    backup copy was started."""

    answer: TaskResponse | None
    attempts: int
    failed: list[Attempt]
    backed_up: bool


# ``consume`` handles a node's answer (writes the output) and returns an error
# string when the task must be tried elsewhere, None when it is settled.
Consumer = Callable[[TaskResponse], "str | None"]


@dataclass
class TaskState:
    """One task's attempts, on one or more nodes at once."""

    call: TaskCall
    candidates: list[list[dict]]  # primaries, then handoffs
    policy: str
    consume: Consumer
    tried: set[str] = field(default_factory=set)  # failed, or being tried now
    busy_until: dict[str, float] = field(default_factory=dict)  # 503 + Retry-After
    failed: list[Attempt] = field(default_factory=list)
    attempts: int = 0
    live: int = 0  # attempts under way
    started_at: float = 0.0
    backed_up: bool = False
    claimed: bool = False
    answer: TaskResponse | None = None
    done: Event = field(default_factory=Event)
    open: dict[str, tuple[dict, Any]] = field(default_factory=dict)  # key -> (node, conn)

    def untried(self, now: float | None = None) -> list[dict]:
        """Nodes still worth trying, primaries first; with ``now``, only those not busy."""
        for group in self.candidates:
            rest = [n for n in group if node_key(n) not in self.tried]
            if rest:
                if now is None:
                    return rest
                return [n for n in rest if self.busy_until.get(node_key(n), 0) <= now]
        return []

    def settle(self, answer: TaskResponse | None) -> None:
        """The task is decided: cancel the attempts still waiting on other nodes."""
        if self.done.ready():
            return
        self.answer = answer
        for key, (node, conn) in list(self.open.items()):
            if answer is None or key != node_key(answer.node):
                self.failed.append(Attempt(node_label(node), LOST_RACE))
                conn.close()  # wakes the waiting greenthread, which then gives up
        self.open.clear()
        self.done.send(answer)


class Dispatcher:
    def __init__(self, secret: str, conn_timeout: float, logger: Any,
                 rng: random.Random | None = None, max_busy_wait_s: float = 300.0):
        self.secret = secret
        self.conn_timeout = conn_timeout
        self.max_busy_wait_s = max_busy_wait_s
        self.logger = logger
        self.rng = rng or random.Random()
        self.loads: dict[str, NodeLoad] = {}
        self.in_flight: dict[str, int] = defaultdict(int)
        self.probed_at: dict[str, float] = {}

    # -- load view ------------------------------------------------------------
    def probe(self, nodes: list[dict], max_age_s: float = PROBE_AGE_S) -> None:
        """Refresh the load of nodes we have not heard from lately (in parallel).

        A node is probed at most once per ``max_age_s`` whether or not it
        answers, so a dead node does not cost every dispatch a connect timeout.
        """
        now = time.time()
        stale = {}
        for node in nodes:
            key = node_key(node)
            heard = max(self.loads.get(key, NodeLoad()).reported_at,
                        self.probed_at.get(key, 0.0))
            if now - heard > max_age_s:
                self.probed_at[key] = now
                stale[key] = node
        pile = eventlet.GreenPile(32)
        for node in stale.values():
            pile.spawn(self._probe_one, node)
        list(pile)

    def _probe_one(self, node: dict) -> None:
        try:
            with ConnectionTimeout(self.conn_timeout):
                conn = http_connect_raw(node["ip"], node["port"], "GET", wire.LOAD_PATH)
            with Timeout(max(2.0, self.conn_timeout * 2)):
                resp = conn.getresponse()
                resp.read()
            conn.close()
            self._note_load(node_key(node), resp)
        except (Exception, Timeout):  # noqa: BLE001 - an unreachable node stays unknown
            pass

    def _note_load(self, key: str, resp: Any) -> None:
        load = parse_load_header(resp.getheader(wire.LOAD_HEADER), time.time())
        if load is not None:
            self.loads[key] = load

    # -- running one task -------------------------------------------------------
    def run(self, call: TaskCall, primaries: list[dict], handoffs: list[dict], policy: str,
            consume: Consumer, tracker: JobTracker | None = None) -> Outcome:
        """Run ``call`` on the best primary, falling back to the others, then handoffs."""
        state = TaskState(call, [primaries, handoffs], policy, consume,
                          started_at=time.monotonic())
        if tracker:
            tracker.started(state)
        self.launch(state)
        answer = state.done.wait()
        if tracker:
            tracker.finished(state)
        # A copy: attempts that end later must not change a report already made.
        return Outcome(answer, state.attempts, list(state.failed), state.backed_up)

    def launch(self, state: TaskState) -> bool:
        """Start one more attempt of ``state`` on a node it has not tried; False if none."""
        if state.done.ready() or not state.untried():
            return False
        state.live += 1
        eventlet.spawn_n(self._attempt_loop, state)
        return True

    def _attempt_loop(self, state: TaskState) -> None:
        try:
            while not state.done.ready():
                if not state.untried():
                    break  # every candidate failed
                now = time.monotonic()
                remaining = {node_key(n): n for n in state.untried(now)}
                if not remaining:
                    # Every candidate left is busy: wait for the first Retry-After.
                    wake = min(state.busy_until.values())
                    if wake - state.started_at > self.max_busy_wait_s:
                        break
                    eventlet.sleep(max(0.0, wake - now))
                    continue
                if state.policy != RANDOM:
                    self.probe(list(remaining.values()))
                key = choose_node(list(remaining), self.loads, self.in_flight, state.policy,
                                  self.rng, now=time.time())
                node = remaining[key]
                state.tried.add(key)
                state.attempts += 1
                answer, error, retry_after = self._attempt(node, state)
                if answer is not None:
                    error = self._claim(state, answer)
                    if error is None:
                        return
                if state.done.ready():
                    return  # cancelled, or lost the race: already in the report
                state.failed.append(Attempt(node_label(node), error))
                if retry_after is not None:
                    # Busy is not broken: the node may take the task a little later.
                    state.tried.discard(key)
                    state.busy_until[key] = time.monotonic() + retry_after
                self.logger.info("zerocompute: task %s failed on %s: %s; trying another",
                                 state.call.task.get("task"), node_label(node), error)
        finally:
            state.live -= 1
            if state.live == 0:
                state.settle(None)  # every node tried, none worked

    def _claim(self, state: TaskState, answer: TaskResponse) -> str | None:
        """Let the first attempt back write the task's output; drop the others."""
        try:
            if state.claimed or state.done.ready():
                return LOST_RACE
            state.claimed = True
            error = state.consume(answer)
            if error is None:
                state.settle(answer)
                return None
            state.claimed = False
            return error
        finally:
            answer.connection.close()

    def _attempt(self, node: dict, state: TaskState,
                 ) -> tuple[TaskResponse | None, str, float | None]:
        """Send the task to ``node``: its answer, or an error and, if the node was
        only busy, the seconds it asked us to wait."""
        key = node_key(node)
        self.in_flight[key] += 1
        try:
            # Only the ETag goes first: a node that already caches the executable
            # runs at once, one that does not asks for the bytes with a 412.
            resp, conn = self._send(node, state, with_executable=False)
            if resp.status == 412 and resp.getheader(wire.NEED_EXECUTABLE_HEADER):
                resp.read()
                conn.close()
                resp, conn = self._send(node, state, with_executable=True)
            self._note_load(key, resp)
            if resp.status in RETRYABLE or resp.status // 100 == 5:
                detail = resp.read(200).decode("utf-8", "replace").strip()
                conn.close()
                return None, f"{resp.status} {detail}".strip(), _retry_after(resp)
            # 2xx is the guest's result; a 4xx (invalid executable, refused input)
            # would fail the same way on any node.
            return TaskResponse(node, resp, conn), "", None
        except (Exception, Timeout) as err:  # noqa: BLE001 - any node failure means retry
            return None, f"{type(err).__name__}: {err}".rstrip(": "), None
        finally:
            self.in_flight[key] -= 1
            state.open.pop(key, None)

    def _send(self, node: dict, state: TaskState, with_executable: bool):
        call = state.call
        device_path = f"/{node['device']}/{call.partition}{call.path}"
        headers = wire.sign_task(self.secret, device_path, call.task)
        headers["X-Backend-Storage-Policy-Index"] = str(call.policy_index)
        body = call.executable if with_executable else b""
        headers["Content-Length"] = str(len(body))
        with ConnectionTimeout(self.conn_timeout):
            conn = http_connect(node["ip"], node["port"], node["device"], call.partition,
                                wire.METHOD, call.path, headers=headers)
        state.open[node_key(node)] = (node, conn)
        try:
            if body:
                conn.send(body)
            # A backstop only: the object server enforces the guest's limits itself.
            with Timeout(call.time_s + wire.PREPARE_TIMEOUT_S + 30):
                resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        return resp, conn


def _retry_after(resp: Any) -> float | None:
    """Seconds a busy node (503 with Retry-After) asked us to wait, else None."""
    if resp.status != 503:
        return None
    try:
        return max(0.0, float(resp.getheader("Retry-After")))
    except (TypeError, ValueError):
        return None


class JobTracker:
    """Watches one job's running tasks and backs up stragglers near the end."""

    def __init__(self, dispatcher: Dispatcher, total: int, factor: float = 2.0,
                 min_s: float = 1.0, interval_s: float = 0.2):
        self.dispatcher = dispatcher
        self.total = total
        self.factor = factor
        self.min_s = min_s
        self.interval_s = interval_s
        self.running: list[TaskState] = []
        self.durations: list[float] = []
        self.dispatched = 0
        self.backups = 0

    def started(self, state: TaskState) -> None:
        self.dispatched += 1
        self.running.append(state)

    def finished(self, state: TaskState) -> None:
        self.running.remove(state)
        if state.answer is not None:
            self.durations.append(time.monotonic() - state.started_at)

    def stragglers(self, now: float) -> list[TaskState]:
        """Tasks to back up: only once nothing is left to dispatch (the phase's end)."""
        if self.dispatched < self.total or not self.durations:
            return []
        threshold = straggler_threshold_s(self.durations, self.factor, self.min_s)
        return [s for s in self.running
                if not s.backed_up and not s.done.ready() and now - s.started_at > threshold]

    def watch(self) -> None:
        """Run in a greenthread until every task is done."""
        while self.dispatched < self.total or self.running:
            for state in self.stragglers(time.monotonic()):
                state.backed_up = True
                if self.dispatcher.launch(state):
                    self.backups += 1
            eventlet.sleep(self.interval_s)
