"""Sending tasks to object servers, from the proxy.

:class:`Dispatcher` owns this proxy process's view of the object servers'
load (what each last reported, plus what this proxy has in flight there),
asks the scheduler for a replica, sends the signed task, and moves on to the
next candidate when a node cannot run it (connection error, timeout, 404 not
on this node, 503 busy, 507, any 5xx).  A guest that fails is not retried:
its failure is deterministic and would fail the same way elsewhere.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventlet import Timeout
from swift.common.bufferedhttp import http_connect
from swift.common.exceptions import ConnectionTimeout

from zerocompute import wire
from zerocompute.report import Attempt
from zerocompute.scheduler import NodeLoad, choose_node, parse_load_header

RETRYABLE = {404, 500, 502, 503, 504, 507}


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


class Dispatcher:
    def __init__(self, secret: str, conn_timeout: float, logger: Any,
                 rng: random.Random | None = None):
        self.secret = secret
        self.conn_timeout = conn_timeout
        self.logger = logger
        self.rng = rng or random.Random()
        self.loads: dict[str, NodeLoad] = {}
        self.in_flight: dict[str, int] = defaultdict(int)

    def run(self, call: TaskCall, primaries: list[dict], handoffs: list[dict],
            policy: str, consume: Callable[[TaskResponse], str | None],
            ) -> tuple[TaskResponse | None, int, list[Attempt]]:
        """Run ``call`` on the best primary, falling back to the others, then handoffs.

        ``consume`` handles a node's final answer (writes the output) and returns
        an error string when the attempt must be retried elsewhere.  Returns the
        answer that was consumed, the number of attempts and the failed ones.
        """
        failed: list[Attempt] = []
        attempts = 0
        for group in (primaries, handoffs):
            remaining = {node_key(n): n for n in group}
            while remaining:
                key = choose_node(list(remaining), self.loads, self.in_flight, policy, self.rng)
                node = remaining.pop(key)
                attempts += 1
                answer, error = self._attempt(node, call)
                if answer is not None:
                    retry_error = consume(answer)
                    answer.connection.close()
                    if retry_error is None:
                        return answer, attempts, failed
                    error = retry_error
                failed.append(Attempt(node_label(node), error))
                self.logger.info("zerocompute: task %s failed on %s: %s; trying another",
                                 call.task.get("task"), node_label(node), error)
        return None, attempts, failed

    def _attempt(self, node: dict, call: TaskCall) -> tuple[TaskResponse | None, str]:
        key = node_key(node)
        self.in_flight[key] += 1
        try:
            # Only the ETag goes first: a node that already caches the executable
            # runs at once, one that does not asks for the bytes with a 412.
            resp, conn = self._send(node, call, with_executable=False)
            if resp.status == 412 and resp.getheader(wire.NEED_EXECUTABLE_HEADER):
                resp.read()
                conn.close()
                resp, conn = self._send(node, call, with_executable=True)
            self._note_load(key, resp)
            if resp.status in RETRYABLE or resp.status // 100 == 5:
                detail = resp.read(200).decode("utf-8", "replace").strip()
                conn.close()
                return None, f"{resp.status} {detail}".strip()
            # 2xx is the guest's result; a 4xx (invalid executable, refused input)
            # would fail the same way on any node.
            return TaskResponse(node, resp, conn), ""
        except (Exception, Timeout) as err:  # noqa: BLE001 - any node failure means retry
            return None, f"{type(err).__name__}: {err}".rstrip(": ")
        finally:
            self.in_flight[key] -= 1

    def _send(self, node: dict, call: TaskCall, with_executable: bool):
        device_path = f"/{node['device']}/{call.partition}{call.path}"
        headers = wire.sign_task(self.secret, device_path, call.task)
        headers["X-Backend-Storage-Policy-Index"] = str(call.policy_index)
        body = call.executable if with_executable else b""
        headers["Content-Length"] = str(len(body))
        with ConnectionTimeout(self.conn_timeout):
            conn = http_connect(node["ip"], node["port"], node["device"], call.partition,
                                wire.METHOD, call.path, headers=headers)
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

    def _note_load(self, key: str, resp: Any) -> None:
        load = parse_load_header(resp.getheader(wire.LOAD_HEADER), time.time())
        if load is not None:
            self.loads[key] = load
