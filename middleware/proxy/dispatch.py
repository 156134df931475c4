"""Sending a job's tasks to object servers: groups, retries and backup tasks.

A :class:`Dispatcher` belongs to the proxy filter: it keeps the load view of
the object servers (their reports, this proxy's in-flight tasks, probes) and
opens task-group requests.  A :class:`PhaseDispatch` belongs to one phase of a
job: it sends the *groups* (one request per node carrying several tasks,
``zerocompute.wire``) that its :class:`~zerocompute.placement.Placement` forms,
keeps at most ``concurrency`` of them in flight, and hands each task's result to
the job as its frame arrives, while the rest of the group is still running.
Every decision (which node, how many tasks, when to retry, when to copy a
straggler) is the placement's, with no I/O, so that the simulator
(``zerocompute.dev.simulate``) runs the very same code at scale.

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

import random
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import eventlet
from eventlet import Timeout
from eventlet.queue import Empty, LightQueue
from swift.common.bufferedhttp import http_connect_raw
from swift.common.error_limiter import ErrorLimiter
from swift.common.exceptions import ConnectionTimeout

from zerocompute import wire
from zerocompute.placement import (
    Group,
    Placement,
    RunSettings,
    TaskState,
    node_key,
    node_label,
)
from zerocompute.scheduler import PROBE_AGE_S, NodeLoad, due_for_probe, parse_load_header

RETRYABLE = {404, 500, 502, 503, 504, 507}
# Longest wait for the next frame beyond the guest's own time limit.
FRAME_GRACE_S = 30.0


@dataclass(eq=False)
class GroupRequest(Group):
    """One task-group request in flight to one node."""

    sock: Any = None
    bytes: int = 0  # sent and received through the proxy for this request

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
        self.clock = time.monotonic  # of the reports' ages, as of the placements' ``now``
        # A node that cannot be connected to is passed over for a minute, as Swift's
        # proxy does (its defaults: error_suppression_interval, _limit).
        self.errors = ErrorLimiter(suppression_interval=60.0, suppression_limit=10)

    # -- load view ------------------------------------------------------------
    def is_limited(self, node: dict) -> bool:
        return self.errors.is_limited(node)

    def probe(self, nodes: list[dict], max_age_s: float = PROBE_AGE_S) -> None:
        """Refresh the load of nodes we have not heard from lately (in parallel).

        A node is probed at most once per ``max_age_s`` whether or not it
        answers, so a dead node does not cost every dispatch a connect timeout.
        """
        stale = due_for_probe({node_key(n): n for n in nodes}, self.loads, self.probed_at,
                              self.clock(), max_age_s)
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
        load = parse_load_header(header, self.clock())
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
        try:
            with ConnectionTimeout(self.conn_timeout):
                conn = http_connect_raw(node["ip"], node["port"], wire.METHOD, wire.TASKS_PATH,
                                        headers=headers)
        except (Exception, Timeout):
            self.errors.limit(node)  # no connection at all: passed over for a while
            raise
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



class PhaseDispatch(Placement):
    """The dispatch of one phase of a job, until each of its tasks is claimed or has
    failed."""

    group_class = GroupRequest

    def __init__(self, dispatcher: Dispatcher, tasks: list[TaskState],
                 template: wire.TaskGroup, executables: dict[str, bytes], settings: RunSettings,
                 on_result: ResultHandler, origin: float | None = None):
        super().__init__(dispatcher, tasks, settings,
                         time.monotonic() if origin is None else origin)
        self.dispatcher = dispatcher
        self.template = template
        self.executables = executables
        self.on_result = on_result
        self.bytes = 0  # task traffic through the proxy: groups, executables, frames
        self._wake: LightQueue = LightQueue()

    # -- the loop -------------------------------------------------------------
    def run(self) -> None:
        self.begin()
        while self.unfinished > 0:
            self.dispatch(time.monotonic())
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

    def _launch(self, group: Group) -> None:
        eventlet.spawn_n(self._run_stream, group)

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

    def _take_frame(self, stream: GroupRequest, result: wire.TaskResult, body: Any) -> None:
        head = stream.head()
        if head is None or result.task != head.task_id:
            raise wire.BadFrame(f"result for {result.task!r} out of order")
        now = time.monotonic()
        self.dispatcher.note_load(stream.key, result.load)
        state = self._take_result(stream, result.retry, now)
        if state is not None:
            self._claim(state, stream, result, body, now)
        elif not result.retry:
            body.read(result.stdout_bytes)  # lost the race: drop it unread by anyone
        self._wake.put(None)

    def _claim(self, state: TaskState, stream: GroupRequest, result: wire.TaskResult, body: Any,
               now: float) -> None:
        self._claimed(state, stream, result.ms, result.completed, now)
        try:
            self.on_result(state, stream.node, result, body)
        except Exception as err:
            # The output did not arrive whole (the node died mid-stream): run it again.
            self._unclaimed(state, stream, f"reading its output failed: {_describe(err)}",
                            time.monotonic())
            raise
        self._settled(state, stream, result.exit == 0 and not (result.error or result.invalid),
                      now)

    def _failed_on(self, state: TaskState, node: dict, error: str, now: float,
                   retry_after: float | None = None) -> None:
        super()._failed_on(state, node, error, now, retry_after)
        self.dispatcher.logger.info("zerocompute: task %s failed on %s: %s; trying another",
                                    state.task_id, node_label(node), error)

    def _fail_unanswered(self, stream: GroupRequest, error: str) -> None:
        now = time.monotonic()
        while stream.head() is not None:
            state = self._answer(stream)
            self._end_attempt(stream, state, "failed", now)
            if not state.done:
                state.done = True
                state.node = stream.node
                state.error = error
                self.unfinished -= 1

    def _stream_over(self, stream: GroupRequest, error: str, retry_after: float | None = None,
                     ) -> None:
        """The request ended: its unanswered tasks go back to wait for a node."""
        self._group_over(stream, error, time.monotonic(), retry_after)
        self.bytes += stream.bytes
        self._wake.put(None)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".rstrip(": ")
