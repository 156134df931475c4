"""Retries, claims and backup tasks of the proxy's dispatcher, with fake nodes.

``_attempt`` is replaced by a fake that sleeps (green) and answers as told;
everything else (choice of node, claims, cancellation, the tracker) is the
real code running under eventlet.
"""

import logging

import eventlet
import pytest

from zerocompute.middleware.dispatch import (
    LOST_RACE,
    PROBE_AGE_S,
    Dispatcher,
    JobTracker,
    TaskCall,
    TaskResponse,
    node_key,
)


class Conn:
    closed = False

    def close(self):
        self.closed = True


def node(port):
    return {"ip": "127.0.0.1", "port": port, "device": f"sd{port}"}


class FakeDispatcher(Dispatcher):
    """Each node answers after ``delay`` seconds with ``"ok"`` or an error string."""

    def __init__(self, behaviour):
        super().__init__("secret", 0.1, logging.getLogger("test"))
        self.behaviour = behaviour
        self.calls = []
        self.probes = []

    def _probe_one(self, node):
        self.probes.append(node["port"])  # a node that never answers: the view stays unknown

    def _attempt(self, node, state):
        self.calls.append(node["port"])
        delay, result = self.behaviour[node["port"]]
        conn = Conn()
        state.open[node_key(node)] = (node, conn)
        try:
            eventlet.sleep(delay)
        finally:
            state.open.pop(node_key(node), None)
        if conn.closed:
            return None, "connection closed", None
        if result == "ok":
            return TaskResponse(node, response=None, connection=Conn()), "", None
        if result.startswith("busy"):
            self.behaviour[node["port"]] = (delay, "ok")  # it will have room next time
            return None, "503 busy", 0.05
        return None, result, None


def call():
    return TaskCall(partition=1, path="/a/c/o", policy_index=0, task={"task": "m0"},
                    executable=b"", exec_etag="0" * 32, time_s=10)


def run(dispatcher, primaries, handoffs=(), consume=None, tracker=None):
    written = []

    def default_consume(answer):
        written.append(answer.node["port"])
        return None
    outcome = dispatcher.run(call(), list(primaries), list(handoffs), "load-aware",
                             consume or default_consume, tracker)
    return outcome, written


def test_first_healthy_node_wins():
    d = FakeDispatcher({1: (0, "ok"), 2: (0, "ok"), 3: (0, "ok")})
    outcome, written = run(d, [node(1), node(2), node(3)])
    assert outcome.answer is not None and outcome.attempts == 1 and outcome.failed == []
    assert len(written) == 1


def test_failures_move_on_to_other_replicas_then_handoffs():
    d = FakeDispatcher({1: (0, "500 internal error"), 2: (0, "ConnectionRefusedError"),
                        3: (0, "507 insufficient storage"), 4: (0, "ok")})
    outcome, written = run(d, [node(1), node(2), node(3)], [node(4)])
    assert written == [4] and outcome.attempts == 4
    assert sorted(a.error for a in outcome.failed) == [
        "500 internal error", "507 insufficient storage", "ConnectionRefusedError"]
    assert d.calls[-1] == 4  # handoffs only after every primary


def test_busy_nodes_are_tried_again_after_retry_after():
    d = FakeDispatcher({1: (0, "busy"), 2: (0, "busy")})
    outcome, written = run(d, [node(1), node(2)])
    assert outcome.answer is not None and len(written) == 1
    assert [a.error for a in outcome.failed] == ["503 busy", "503 busy"]
    assert outcome.attempts == 3


def test_busy_wait_is_bounded():
    d = FakeDispatcher({})
    d.max_busy_wait_s = 0.0

    def always_busy(node, state):
        return None, "503 busy", 0.01
    d._attempt = always_busy
    outcome, written = run(d, [node(1)])
    assert outcome.answer is None and written == [] and outcome.attempts >= 1


def test_every_node_failing_fails_the_task():
    d = FakeDispatcher({1: (0, "404 not here"), 2: (0, "RemoteDisconnected")})
    outcome, written = run(d, [node(1), node(2)])
    assert outcome.answer is None and written == [] and outcome.attempts == 2


def test_failed_write_releases_the_claim_for_the_next_node():
    d = FakeDispatcher({1: (0, "ok"), 2: (0, "ok")})
    writes = []

    def consume(answer):
        writes.append(answer.node["port"])
        return "writing output failed: 503" if len(writes) == 1 else None
    outcome, _ = run(d, [node(1), node(2)], consume=consume)
    assert outcome.answer is not None and len(writes) == 2 and writes[0] != writes[1]


def test_backup_races_the_straggler_and_only_the_winner_writes():
    # Node 1 is slow; once nothing is left to dispatch the tracker starts a
    # backup on node 2, which wins; the straggler is cancelled, never written.
    d = FakeDispatcher({1: (5.0, "ok"), 2: (0.05, "ok")})
    d.rng.seed(1)
    d.loads = {}
    tracker = JobTracker(d, total=1, factor=2.0, min_s=0.1, interval_s=0.02)
    tracker.durations = [0.01]  # the job's typical task so far
    watcher = eventlet.spawn(tracker.watch)
    d.in_flight[node_key(node(2))] = 5  # steer the first attempt to node 1
    with eventlet.Timeout(3):
        outcome, written = run(d, [node(1), node(2)], tracker=tracker)
    d.in_flight[node_key(node(2))] = 0
    watcher.wait()
    assert written == [2]
    assert outcome.backed_up and tracker.backups == 1 and outcome.attempts == 2
    assert [a.error for a in outcome.failed] == [LOST_RACE]


def test_no_backups_while_tasks_wait_for_dispatch():
    d = FakeDispatcher({})
    tracker = JobTracker(d, total=3, min_s=0)
    tracker.durations = [0.01]

    class State:
        backed_up = False
        started_at = 0.0

        class done:
            @staticmethod
            def ready():
                return False
    tracker.dispatched, tracker.running = 2, [State()]
    assert tracker.stragglers(now=100.0) == []
    tracker.dispatched = 3
    assert tracker.stragglers(now=100.0) == tracker.running
    assert tracker.stragglers(now=0.001) == []  # not yet beyond 2 x the median


@pytest.fixture(autouse=True)
def _no_leftover_greenthreads():
    yield
    eventlet.sleep(0)


def test_stale_views_are_probed_before_placing_but_at_most_once_per_age(monkeypatch):
    d = FakeDispatcher({1: (0, "ok"), 2: (0, "ok")})
    clock = [1000.0]
    monkeypatch.setattr("zerocompute.middleware.dispatch.time.time", lambda: clock[0])
    run(d, [node(1), node(2)])
    assert sorted(d.probes) == [1, 2]
    run(d, [node(1), node(2)])
    assert sorted(d.probes) == [1, 2], "probed again within PROBE_AGE_S"
    clock[0] += PROBE_AGE_S + 0.1
    run(d, [node(1), node(2)])
    assert sorted(d.probes) == [1, 1, 2, 2]


def test_random_policy_does_not_probe():
    d = FakeDispatcher({1: (0, "ok"), 2: (0, "ok")})
    d.run(call(), [node(1), node(2)], [], "random", lambda answer: None)
    assert d.probes == []
