"""Sending a job's tasks to object servers: groups, retries and backup tasks.

A :class:`Dispatcher` belongs to the proxy filter: it keeps the load view of
the object servers (their reports, this proxy's in-flight tasks, probes) and
opens task-group requests.  A :class:`PhaseDispatch` belongs to one phase of a
job: it places its tasks, packs co-located ones into *groups* (one request per node
carrying several tasks, ``zerocompute.wire``), keeps at most ``concurrency``
groups in flight, and hands each task's result to the job as its frame
arrives, while the rest of the group is still running.

Placement is late: a group is formed when a dispatch slot frees, from the
freshest view.  The scheduler picks the node for the oldest waiting task and
the group is filled with other waiting tasks that node holds; its size comes
from :func:`zerocompute.scheduler.group_size` (large while much work
remains, single tasks near the end, never more than about half a second of
work, and only as large as the job's experience of that node warrants).

A node that cannot run a task (connection error, timeout, not on this node,
507, any 5xx) is not tried again for it; the task goes back to the waiting
tasks and is placed again among the replicas left, then the handoffs.  A
node that is only busy (503 with ``Retry-After``) is tried again after that
delay, for at most ``max_busy_wait_s``.  A guest that fails is not retried:
its failure would repeat anywhere.

Backup tasks (MapReduce's): once nothing is left to dispatch, a task that has
been running far longer than the job's typical task gets a second attempt,
alone, on another replica.  The first result back *claims* the task; the
other attempt's request is closed (the object server then kills its guest),
and the tasks of that group that had not run yet go back to be placed again.
Only the claiming result is handed to the job, so an output is never written
twice.
"""

from __future__ import annotations

import itertools
import random
import socket
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import eventlet
from eventlet import Timeout
from eventlet.queue import Empty, LightQueue
from swift.common.bufferedhttp import http_connect_raw
from swift.common.exceptions import ConnectionTimeout

from zerocompute import wire
from zerocompute.report import Attempt, Span
from zerocompute.scheduler import (
    RANDOM,
    JobSpeeds,
    NodeLoad,
    backlog_ms,
    choose_node,
    expected_finish_ms,
    group_size,
    has_free_slot,
    parse_load_header,
    queue_room,
    straggler_threshold_s,
    worth_spilling,
)

RETRYABLE = {404, 500, 502, 503, 504, 507}
# A view older than this is refreshed by a probe before a task is placed on it.
PROBE_AGE_S = 1.0
LOST_RACE = "cancelled: another attempt finished first"
# Longest wait for the next frame beyond the guest's own time limit.
FRAME_GRACE_S = 30.0


def node_key(node: dict[str, Any]) -> str:
    """One object-server process: load is per server, not per device."""
    return f"{node['ip']}:{node['port']}"


def node_label(node: dict[str, Any]) -> str:
    return f"{node['ip']}:{node['port']}/{node['device']}"


@dataclass(eq=False)
class TaskState:
    """One task of a job: what it is (its spec, sent to whichever node runs it), where
    it may run, and its attempts so far."""

    index: int  # in its phase's reports
    spec: wire.TaskSpec  # its device is the chosen node's, filled in when it is sent
    candidates: list[list[dict]]  # primaries, then handoffs
    tried: set[str] = field(default_factory=set)  # nodes that failed it
    busy_until: dict[str, float] = field(default_factory=dict)  # 503 + Retry-After
    failed: list[Attempt] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)  # every attempt, as it ended
    began: dict[str, float] = field(default_factory=dict)  # node key -> when it began it
    live: dict[str, GroupRequest] = field(default_factory=dict)  # node key -> its request
    first_sent: float | None = None
    running_since: float | None = None  # when it became the next task of its group
    backed_up: bool = False
    done: bool = False
    node: dict | None = None  # where the claiming result came from
    error: str | None = None  # why no node could run it
    # An input no node can read in place (encrypted): what opens its plaintext (through
    # the proxy's read path) as (length, chunks) to stream to a node
    # (``spec.stream_bytes`` is its length).
    opener: Callable[[], tuple[int, Any]] | None = None

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

    def untried(self, now: float | None = None) -> list[dict]:
        """Nodes still worth trying, primaries first; with ``now``, only those not busy."""
        for group in self.candidates:
            rest = [n for n in group if node_key(n) not in self.tried]
            if rest:
                if now is None:
                    return rest
                return [n for n in rest if self.busy_until.get(node_key(n), 0) <= now]
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
class GroupRequest:
    """One task-group request in flight to one node."""

    node: dict
    tasks: list[TaskState]
    answered: int = 0
    sock: Any = None
    cancelled: bool = False
    bytes: int = 0  # sent and received through the proxy for this request
    backup: bool = False  # a second attempt of a straggler

    @property
    def key(self) -> str:
        return node_key(self.node)

    def head(self) -> TaskState | None:
        """The task of the group the node is running now."""
        return self.tasks[self.answered] if self.answered < len(self.tasks) else None

    def cancel(self) -> None:
        """Hang up: the object server kills the running guest and drops the rest."""
        self.cancelled = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# The job's handler of a task's claiming result: reads exactly
# ``result.stdout_bytes`` from the stream (the guest's stdout).
ResultHandler = Callable[[TaskState, dict, wire.TaskResult, Any], None]


class Dispatcher:
    """The proxy's view of object-server load, and the requests that carry groups."""

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
        if not stale:
            return
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
            self.note_load(node_key(node), resp.getheader(wire.LOAD_HEADER))
        except (Exception, Timeout):  # noqa: BLE001 - an unreachable node stays unknown
            pass

    def note_load(self, key: str, header: str | None) -> None:
        load = parse_load_header(header, time.time())
        if load is not None:
            self.loads[key] = load

    # -- a job's map outputs --------------------------------------------------------
    def delete_shuffle(self, nodes: list[dict], shuffle_id: str) -> None:
        """Ask every node a job's groups went to to delete its map outputs (best effort:
        the object servers reap what is left after ``shuffle_max_age_s``)."""
        path = wire.shuffle_path(shuffle_id)
        pile = eventlet.GreenPile(16)
        for node in nodes:
            pile.spawn(self._delete_shuffle, node, path, shuffle_id)
        list(pile)

    def _delete_shuffle(self, node: dict, path: str, shuffle_id: str) -> None:
        try:
            with ConnectionTimeout(self.conn_timeout):
                conn = http_connect_raw(node["ip"], node["port"], "DELETE", path,
                                        headers=wire.sign_request(self.secret, "DELETE", path))
            with Timeout(10):
                conn.getresponse().read()
            conn.close()
        except (Exception, Timeout):  # noqa: BLE001 - the reaper gets it later
            self.logger.warning("zerocompute: could not delete map outputs of %s on %s",
                                shuffle_id, node_key(node))

    # -- sending ----------------------------------------------------------------
    def open_group(self, node: dict, group: wire.TaskGroup, executables: dict[str, bytes],
                   stream: GroupRequest | None = None) -> Any:
        """Send ``group`` to ``node``; the response (its frames unread).

        Only the group goes first: a node that already caches the executables
        (by ETag) starts at once, one that does not asks for each it lacks
        with a 412 naming it.
        """
        resp = self._send(node, group, b"", stream)
        for _ in executables:
            needed = resp.getheader(wire.NEED_EXECUTABLE_HEADER)
            if resp.status != 412 or needed not in executables:
                break
            resp.read()
            resp.close()
            resp = self._send(node, group, executables[needed], stream)
        return resp

    def open_streamed(self, node: dict, group: wire.TaskGroup, executables: dict[str, bytes],
                      stream: GroupRequest, opener: Callable[[], tuple[int, Any]]) -> Any:
        """Send a group of one task whose input follows it in the body (streamed).

        The node gets the executables first, through a group of no task (the usual
        412 exchange): once the input is on its way there is no going back.
        """
        ready = self.open_group(node, replace(group, tasks=()), executables, stream)
        ready.read()
        ready.connection.close()
        if ready.status != 200 or stream.cancelled:
            return ready
        length, chunks = opener()
        try:
            return self._send(node, group, b"", stream, (length, chunks))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _send(self, node: dict, group: wire.TaskGroup, executable: bytes,
              stream: GroupRequest | None, source: tuple[int, Any] | None = None) -> Any:
        body, headers = wire.sign_group(self.secret, group)
        streamed = source[0] if source else 0
        headers["Content-Length"] = str(len(body) + len(executable) + streamed)
        with ConnectionTimeout(self.conn_timeout):
            conn = http_connect_raw(node["ip"], node["port"], wire.METHOD, wire.TASKS_PATH,
                                    headers=headers)
        if stream is not None:
            stream.sock = conn.sock
            if stream.cancelled:
                stream.cancel()
        if stream is not None:
            stream.bytes += len(body) + len(executable) + streamed
        try:
            conn.send(body + executable)
            if source is not None:
                sent = 0
                for chunk in source[1]:
                    conn.send(chunk)
                    sent += len(chunk)
                if sent != streamed:
                    raise OSError(f"streamed input was {sent} bytes, not {streamed}")
            with Timeout(float(group.limits.time_s) + wire.PREPARE_TIMEOUT_S
                         + FRAME_GRACE_S):
                resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        resp.connection = conn
        return resp


def _retry_after(resp: Any) -> float | None:
    """Seconds a busy node (503 with Retry-After) asked us to wait, else None."""
    if resp.status != 503:
        return None
    try:
        return max(0.0, float(resp.getheader("Retry-After")))
    except (TypeError, ValueError):
        return None


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


class PhaseDispatch:
    """The dispatch of one phase of a job, until each of its tasks is claimed or has
    failed."""

    def __init__(self, dispatcher: Dispatcher, tasks: list[TaskState],
                 template: wire.TaskGroup, executables: dict[str, bytes], settings: RunSettings,
                 on_result: ResultHandler, origin: float | None = None):
        self.dispatcher = dispatcher
        self.origin = time.monotonic() if origin is None else origin  # the job's start
        self.tasks = tasks
        self.template = template
        self.executables = executables
        self.settings = settings
        self.on_result = on_result
        self.speeds = JobSpeeds()
        self.durations: list[float] = []  # claimed tasks, from running to result
        self.bytes = 0  # task traffic through the proxy: groups, executables, frames
        self.nodes: dict[str, dict] = {}  # every node sent a group, winners or not
        self.streams: set[GroupRequest] = set()
        self.in_flight: dict[str, int] = defaultdict(int)  # this job's tasks per node
        self.unfinished = len(tasks)
        self.pending: OrderedDict[int, TaskState] = OrderedDict()
        self.by_node: dict[str, OrderedDict[int, TaskState]] = defaultdict(OrderedDict)
        self._wake: LightQueue = LightQueue()

    # -- the loop -------------------------------------------------------------
    def run(self) -> None:
        for state in self.tasks:
            self._enqueue(state)
        while self.unfinished > 0:
            self._dispatch()
            if self.settings.backups:
                self._back_up_stragglers(time.monotonic())
            if self.unfinished <= 0:
                break
            try:
                self._wake.get(timeout=self.settings.tick_s)
                while self._wake.qsize():
                    self._wake.get_nowait()
            except Empty:
                pass
        for stream in list(self.streams):
            stream.cancel()  # only losers of races remain

    def abort(self, reason: str) -> None:
        """Stop the run now (a cancel): every unfinished task ends with ``reason`` and
        every request in flight is hung up, so the object servers kill their guests.
        A result already being handed to the job still arrives; no other will."""
        for state in self.tasks:
            if not state.done:
                self._dequeue(state)
                state.done = True
                state.error = reason
        self.unfinished = 0
        for stream in list(self.streams):
            stream.cancel()
        self._wake.put(None)

    def _dispatch(self) -> None:
        while len(self.streams) < self.settings.concurrency and self.pending:
            picked = self._next_group(time.monotonic())
            if picked is None:
                return
            self._start(*picked)

    def _next_group(self, now: float) -> tuple[dict, list[TaskState]] | None:
        """The next node to send to and the waiting tasks it gets."""
        hopeless = []
        picked = None
        for state in self.pending.values():
            if not state.untried():
                hopeless.append(state)
                continue
            ready = state.untried(now)
            if ready:
                picked = (state, ready)
                break
            if state.first_sent and now - state.first_sent > self.dispatcher.max_busy_wait_s:
                hopeless.append(state)
        for state in hopeless:
            self._dequeue(state)
            self._give_up(state)
        if picked is None:
            return None
        state, ready = picked
        node = self._choose(state, ready)
        group = self._fill_group(state, node_key(node), now)
        if group is None:  # the best node has enough of this job queued
            return self._spill(now)
        return node, group

    def _choose(self, state: TaskState, ready: list[dict]) -> dict:
        by_key = {node_key(n): n for n in ready}
        d = self.dispatcher
        if self.settings.policy != RANDOM:
            d.probe(ready)
        key = choose_node(list(by_key), d.loads, d.in_flight, self.settings.policy, d.rng,
                          now=time.time(), task_ms=self.speeds.estimates(list(by_key)))
        return by_key[key]

    def _spill(self, now: float) -> tuple[dict, list[TaskState]] | None:
        """While the next task waits for its best node, a node with a free slot takes
        waiting tasks it holds if it would finish them before the job's backlog
        drains: nodes holding only later inputs do not idle behind the oldest
        tasks' full replicas, and a slow node helps while much work waits but gets
        none near the end.  It takes the newest tasks it holds (those that would
        wait longest), and only into a free slot: a node that is not the best
        never queues this job's work."""
        d = self.dispatcher
        keys = [key for key, waiting in self.by_node.items() if waiting]
        estimates = self.speeds.estimates(keys)
        loads = {key: d.loads.get(key, NodeLoad()) for key in keys}
        backlog = backlog_ms(len(self.pending), (
            (loads[key].slots, loads[key].job_task_ms(estimates.get(key))) for key in keys))
        groups = Counter(stream.key for stream in self.streams)
        wall = time.time()
        finishes = sorted(
            (expected_finish_ms(loads[key], d.in_flight[key], wall, estimates.get(key)), key)
            for key in keys if has_free_slot(loads[key], groups[key]))
        for finish, key in finishes:
            if not worth_spilling(finish, backlog):
                return None
            # Only as far into the node's waiting tasks as one group needs.
            takers = ((state, node) for state in reversed(self.by_node[key].values())
                      if state.opener is None
                      and (node := state.untried_on(key, now)) is not None)
            picked = list(itertools.islice(takers, self._group_size(key)))
            if picked:
                for state, _node in picked:
                    self._dequeue(state)
                return picked[0][1], [state for state, _node in picked]
        return None

    def _group_size(self, key: str) -> int:
        estimate = self.speeds.task_ms(key) or self.dispatcher.loads.get(key, NodeLoad()).task_ms
        return group_size(len(self.pending), self.settings.concurrency, estimate,
                          self.speeds.completed(key), self.settings.max_group)

    def _fill_group(self, first: TaskState, key: str, now: float) -> list[TaskState] | None:
        d = self.dispatcher
        size = self._group_size(key)
        # Holding tasks back for a better node is load-aware placement: random
        # (ZeroCloud's baseline) uses no load signal, slots included.
        slots = d.loads.get(key, NodeLoad()).slots
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

    def _start(self, node: dict, group: list[TaskState], backup: bool = False) -> GroupRequest:
        now = time.monotonic()
        stream = GroupRequest(node, group, backup=backup)
        self.nodes[stream.key] = node
        group[0].began[stream.key] = now
        for state in group:
            state.live[stream.key] = stream
            state.first_sent = state.first_sent or now
        if not backup:  # a backup's task keeps the time it has been running elsewhere
            group[0].running_since = now
        self.streams.add(stream)
        self._count(stream.key, len(group))
        eventlet.spawn_n(self._run_stream, stream)
        return stream

    def _count(self, key: str, tasks: int) -> None:
        """Tasks in flight on a node: this job's, and the proxy's over all its jobs."""
        self.in_flight[key] += tasks
        self.dispatcher.in_flight[key] += tasks

    # -- the waiting tasks ---------------------------------------------------------
    def _enqueue(self, state: TaskState) -> None:
        if state.done or state.live:
            return
        self.pending[state.index] = state
        for group in state.candidates:
            for n in group:
                self.by_node[node_key(n)][state.index] = state

    def _dequeue(self, state: TaskState) -> None:
        self.pending.pop(state.index, None)
        for group in state.candidates:
            for n in group:
                self.by_node[node_key(n)].pop(state.index, None)

    def _give_up(self, state: TaskState) -> None:
        state.done = True
        state.error = "no node could run the task: " + "; ".join(
            f"{a.node}: {a.error}" for a in state.failed)
        self.unfinished -= 1

    # -- one group's request ------------------------------------------------------
    def _run_stream(self, stream: GroupRequest) -> None:
        error, retry_after = "", None
        try:
            group = self._group_for(stream)
            opener = stream.tasks[0].opener
            if opener is not None:
                resp = self.dispatcher.open_streamed(stream.node, group, self.executables,
                                                     stream, opener)
            else:
                resp = self.dispatcher.open_group(stream.node, group, self.executables,
                                                  stream)
        except (Exception, Timeout) as err:  # noqa: BLE001 - any node failure means retry
            self._stream_over(stream, _describe(err))
            return
        try:
            self.dispatcher.note_load(stream.key, resp.getheader(wire.LOAD_HEADER))
            if resp.status != 200:
                detail = resp.read(300).decode("utf-8", "replace").strip()
                error = f"{resp.status} {detail}".strip()
                if resp.status in RETRYABLE or resp.status // 100 == 5:
                    retry_after = _retry_after(resp)
                else:
                    # Refused as such (invalid executable): it would fail anywhere.
                    self._fail_unanswered(stream, detail or f"task refused: {resp.status}")
                return
            self._read_frames(stream, resp)
            if stream.head() is not None and not stream.cancelled:
                error = "the node's answer ended early"
        except (Exception, Timeout) as err:  # noqa: BLE001 - the rest is retried elsewhere
            error = _describe(err)
        finally:
            resp.connection.close()
            self._stream_over(stream, error, retry_after)

    def _group_for(self, stream: GroupRequest) -> wire.TaskGroup:
        key = stream.key
        specs = []
        for state in stream.tasks:
            node = next(n for g in state.candidates for n in g if node_key(n) == key)
            specs.append(state.spec_for(node))
        return replace(self.template, tasks=tuple(specs))

    def _read_frames(self, stream: GroupRequest, resp: Any) -> None:
        timeout = float(self.template.limits.time_s) + wire.PREPARE_TIMEOUT_S + FRAME_GRACE_S
        frames = wire.read_frames(resp)
        while stream.head() is not None:
            with Timeout(timeout):
                try:
                    result, body, head_bytes = next(frames)
                except StopIteration:
                    return
            stream.bytes += head_bytes + result.stdout_bytes
            self._take_frame(stream, result, body)

    def _answer(self, stream: GroupRequest) -> TaskState:
        """Take the group's next task off the node: answered, no longer in flight there."""
        state = stream.tasks[stream.answered]
        stream.answered += 1
        self._count(stream.key, -1)
        state.live.pop(stream.key, None)
        return state

    def _take_frame(self, stream: GroupRequest, result: wire.TaskResult, body: Any) -> None:
        head = stream.head()
        if head is None or result.task != head.task_id:
            raise wire.BadFrame(f"result for {result.task!r} out of order")
        now = time.monotonic()
        state = self._answer(stream)
        self.dispatcher.note_load(stream.key, result.load)
        following = stream.head()
        if following is not None:
            following.running_since = following.began[stream.key] = now
        if result.retry:
            self._end_attempt(stream, state, "failed", now)
            self._failed_on(state, stream.node, result.retry)
            self._enqueue(state)
        elif state.done:
            self._end_attempt(stream, state, "cancelled", now)
            body.read(result.stdout_bytes)  # lost the race: drop it unread by anyone
        else:
            self._claim(state, stream, result, body, now)
        self._wake.put(None)

    def _claim(self, state: TaskState, stream: GroupRequest, result: wire.TaskResult, body: Any,
               now: float) -> None:
        state.done = True
        state.node = stream.node
        if result.completed:
            self.speeds.add(stream.key, result.ms)
        if state.running_since is not None:
            self.durations.append(now - state.running_since)
        for other in list(state.live.values()):
            state.failed.append(Attempt(node_label(other.node), LOST_RACE))
            self._end_attempt(other, state, "cancelled", now)
            other.cancel()
        state.live.clear()
        try:
            self.on_result(state, stream.node, result, body)
        except Exception as err:
            # The output did not arrive whole (the node died mid-stream): run it again.
            state.done, state.node = False, None
            self._end_attempt(stream, state, "failed")
            self._failed_on(state, stream.node, f"reading its output failed: {_describe(err)}")
            self._enqueue(state)
            raise
        ok = result.exit == 0 and not (result.error or result.invalid)
        self._end_attempt(stream, state, "succeeded" if ok else "failed", now)
        # Counted only now: the job must not finish while this output is on its way.
        self.unfinished -= 1

    def _failed_on(self, state: TaskState, node: dict, error: str,
                   retry_after: float | None = None) -> None:
        key = node_key(node)
        state.failed.append(Attempt(node_label(node), error))
        if retry_after is not None:
            # Busy is not broken: the node may take the task a little later.
            state.busy_until[key] = time.monotonic() + retry_after
        else:
            state.tried.add(key)
        self.dispatcher.logger.info("zerocompute: task %s failed on %s: %s; trying another",
                                    state.task_id, node_label(node), error)

    def _end_attempt(self, stream: GroupRequest, state: TaskState, outcome: str,
                     now: float | None = None) -> None:
        """The attempt of ``state`` on ``stream``'s node is over: into its timeline
        (if the node had begun it: the tasks of a group behind a failed head had not)."""
        began = state.began.pop(stream.key, None)
        if began is None:
            return
        now = time.monotonic() if now is None else now
        state.spans.append(Span(node_label(stream.node), round((began - self.origin) * 1000, 3),
                                round((now - self.origin) * 1000, 3), outcome, stream.backup))

    def _fail_unanswered(self, stream: GroupRequest, error: str) -> None:
        while stream.head() is not None:
            state = self._answer(stream)
            self._end_attempt(stream, state, "failed")
            if not state.done:
                state.done = True
                state.node = stream.node
                state.error = error
                self.unfinished -= 1

    def _stream_over(self, stream: GroupRequest, error: str, retry_after: float | None = None,
                     ) -> None:
        """The request ended: its unanswered tasks go back to wait for a node."""
        while stream.head() is not None:
            state = self._answer(stream)
            self._end_attempt(stream, state, "cancelled" if stream.cancelled or state.done
                              else "failed")
            if state.done:
                continue
            if not stream.cancelled:
                self._failed_on(state, stream.node, error, retry_after)
            self._enqueue(state)
        self.streams.discard(stream)
        self.bytes += stream.bytes
        self._wake.put(None)

    # -- backup tasks ------------------------------------------------------------
    def _back_up_stragglers(self, now: float) -> None:
        """Once nothing waits, give a long-running task a copy on another replica."""
        if self.pending or not self.durations:
            return
        threshold = straggler_threshold_s(self.durations, self.settings.backup_factor,
                                          self.settings.backup_min_s)
        for stream in list(self.streams):
            state = stream.head()
            if state is None or state.done or state.backed_up or state.running_since is None \
                    or now - state.running_since <= threshold:
                continue
            state.backed_up = True
            ready = [n for n in state.untried(now) if node_key(n) not in state.live]
            if ready:
                self._start(self._choose(state, ready), [state], backup=True)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".rstrip(": ")
