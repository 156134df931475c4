"""Groups, retries, claims and backup tasks of the proxy's dispatch, with fake nodes.

``Dispatcher.open_group`` is replaced by fake object servers that answer a
group frame by frame (sleeping, green, as told); everything else (placement,
grouping, claims, cancellation, backups) is the real code under eventlet.
Every test runs under an ``eventlet.Timeout``: a regression fails, it does
not hang.
"""

import itertools
import statistics
from dataclasses import replace

import eventlet
import pytest

from tests.unit.fakes import TEMPLATE, FakeDispatcher, node
from zerocompute import wire
from zerocompute.middleware.proxy.config import ProxyConfig
from zerocompute.middleware.proxy.dispatch import PhaseDispatch
from zerocompute.placement import LOST_RACE, RunSettings, TaskState, node_key
from zerocompute.scheduler import PROBE_AGE_S


def states(count, primaries, handoffs=()):
    return [TaskState(index=i, spec=wire.TaskSpec(task=f"m{i}", device="", partition=1,
                                                  path=f"/a/c/o{i}"),
                      candidates=[[node(p) for p in primaries], [node(p) for p in handoffs]])
            for i in range(count)]


def run_settings(**changes):
    """A phase's dispatch settings: the proxy's defaults, a quicker tick."""
    defaults = ProxyConfig(secret="s")
    return RunSettings(**{"policy": "load-aware", "concurrency": defaults.concurrency,
                          "max_group": defaults.max_group, "backups": defaults.backup_tasks,
                          "backup_factor": defaults.backup_factor,
                          "backup_min_s": defaults.backup_min_s, "tick_s": 0.02, **changes})


def run(dispatcher, tasks, policy="load-aware", backups=False, on_result=None, **settings):
    results = []

    def collect(state, node, result, stream):
        data = stream.read(result.stdout_bytes)
        results.append((state.task_id, node["port"], result.exit, data))
    before = dict(dispatcher.in_flight)
    job = PhaseDispatch(dispatcher, tasks, TEMPLATE, {}, run_settings(
        policy=policy, backups=backups, **settings), on_result or collect)
    with eventlet.Timeout(10):
        job.run()
        while job.streams:  # the losers of races end soon after
            eventlet.sleep(0.01)
    leaked = {k: v - before.get(k, 0) for k, v in dispatcher.in_flight.items()
              if v != before.get(k, 0)}
    assert not leaked, f"tasks still counted in flight: {leaked}"
    return job, results


def test_every_task_runs_once_and_hands_its_output_on():
    d = FakeDispatcher({1: {}, 2: {}, 3: {}})
    tasks = states(50, [1, 2, 3])
    job, results = run(d, tasks)
    assert sorted(r[0] for r in results) == sorted(t.task_id for t in tasks)
    for task_id, port, exit_code, data in results:
        assert exit_code == 0 and data == f"out-{task_id}-sd{port}".encode()
    assert all(t.attempts == 1 and t.failed == [] for t in tasks)


def test_co_located_tasks_travel_in_groups_that_shrink_near_the_end():
    d = FakeDispatcher({1: {}, 2: {}, 3: {}})
    tasks = states(400, [1, 2, 3])
    run(d, tasks, concurrency=4)
    sizes = [len(ids) for _port, ids in d.groups]
    assert len(d.groups) < 400 / 4, f"{len(d.groups)} requests for 400 tasks"
    assert max(sizes) >= 16
    assert sizes[-1] == 1, "the last groups are single tasks"
    assert sizes[0] == 1, "no node gets a big group before it has finished one task"
    # A task in a group begins when the one before it ends: one span each, and
    # the spans of a group's tasks do not overlap.
    assert all([s.outcome for s in t.spans] == ["succeeded"] for t in tasks)
    by_task = {t.task_id: t.spans[0] for t in tasks}
    for _port, ids in d.groups:
        spans = [by_task[i] for i in ids]
        assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(spans))


def test_failures_move_on_to_other_replicas_then_handoffs():
    d = FakeDispatcher({1: {"retry": "404 object not on this node"},
                        2: {"refuse": "connection refused"},
                        3: {"retry": "507 device unavailable"}, 4: {}})
    tasks = states(3, [1, 2, 3], handoffs=[4])
    job, results = run(d, tasks)
    assert sorted(port for _, port, _, _ in results) == [4, 4, 4]
    for t in tasks:
        errors = sorted(a.error.split(":")[0] for a in t.failed)
        assert {"404 object not on this node", "507 device unavailable"} <= set(errors)
        assert set(errors) <= {"404 object not on this node", "507 device unavailable",
                               "ConnectionRefusedError"}
        assert t.attempts == len(errors) + 1
        # One span per attempt the node began; each ends where the next may begin.
        assert sorted(s.node for s in t.spans if s.outcome == "failed") == sorted(
            a.node for a in t.failed)
        assert [s.node for s in t.spans if s.outcome == "succeeded"] == ["127.0.0.1:4/sd4"]
        assert all(s.start_ms <= s.end_ms for s in t.spans)
    assert all(port == 4 for port, _ in d.groups[-1:])
    # The node that refused a connection is passed over (Swift's error limiting):
    # once it refused the first task sent there, no other task tried it.
    refused = [t for t in tasks if any(a.error.startswith("ConnectionRefused")
                                       for a in t.failed)]
    assert len(refused) == 1
    assert d.is_limited(node(2)) and not d.is_limited(node(1))


def test_a_node_dying_mid_group_reruns_only_what_it_had_not_answered():
    d = FakeDispatcher({1: {"die_after": 6, "delay": 0.002}, 2: {"delay": 0.002}})
    tasks = states(40, [1, 2])
    d.in_flight[node_key(node(2))] = 100  # steer the first groups to node 1
    job, results = run(d, tasks)
    d.in_flight[node_key(node(2))] = 0
    assert sorted(r[0] for r in results) == sorted(t.task_id for t in tasks), \
        "every task handed on exactly once"
    on_1 = [r for r in results if r[1] == 1]
    assert on_1, "node 1 answered some tasks before it died"
    assert len(on_1) == 6
    rerun = [t for t in tasks if t.failed]
    assert rerun and all(t.node["port"] == 2 for t in rerun)
    assert all("ConnectionResetError" in t.failed[0].error
               or "node died" in t.failed[0].error for t in rerun)


def test_busy_nodes_are_tried_again_after_retry_after():
    d = FakeDispatcher({1: {"busy_once": True}, 2: {"busy_once": True}})
    tasks = states(1, [1, 2])
    job, results = run(d, tasks)
    assert len(results) == 1
    assert [a.error for a in tasks[0].failed] == ["503 refused", "503 refused"]
    assert tasks[0].attempts == 3


def test_busy_wait_is_bounded():
    d = FakeDispatcher({1: {"busy": True}})
    d.max_busy_wait_s = 0.0
    tasks = states(1, [1])
    job, results = run(d, tasks)
    assert results == [] and tasks[0].error.startswith("no node could run the task")


def test_every_node_failing_fails_the_task():
    d = FakeDispatcher({1: {"retry": "404 object not on this node"},
                        2: {"refuse": "RemoteDisconnected"}})
    tasks = states(2, [1, 2])
    job, results = run(d, tasks)
    assert results == []
    for t in tasks:
        assert t.done and t.node is None and t.attempts == 2
        assert "no node could run the task" in t.error and "404" in t.error


def test_a_failing_guest_is_not_retried():
    d = FakeDispatcher({1: {"exit": 3}, 2: {"exit": 3}})
    tasks = states(5, [1, 2])
    job, results = run(d, tasks)
    assert len(results) == 5 and all(r[2] == 3 for r in results)
    assert all(t.attempts == 1 for t in tasks)


def test_output_that_does_not_arrive_whole_runs_again_elsewhere():
    d = FakeDispatcher({1: {}, 2: {}})
    tasks = states(1, [1, 2])
    seen = []

    def flaky(state, node, result, stream):
        seen.append(node["port"])
        if len(seen) == 1:
            raise OSError("output ended 7 bytes short")
    run(d, tasks, on_result=flaky)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert "reading its output failed" in tasks[0].failed[0].error


def test_backup_races_the_straggler_and_only_the_winner_is_handed_on():
    # Node 1 is slow; once nothing is left to dispatch a backup runs on node 2
    # and wins; the straggler's request is hung up on, its result never used.
    d = FakeDispatcher({1: {"delay": 3.0}, 2: {"delay": 0.01}})
    tasks = states(1, [1, 2])
    d.in_flight[node_key(node(2))] = 5  # steer the first attempt to node 1
    job = PhaseDispatch(d, tasks, TEMPLATE, {}, run_settings(
        policy="load-aware", backups=True, backup_min_s=0.1, tick_s=0.02),
        lambda state, node, result, stream: results.append(node["port"]))
    results = []
    job.durations = [0.01]  # the job's typical task so far
    with eventlet.Timeout(2):
        job.run()
    d.in_flight[node_key(node(2))] = 0
    assert results == [2]
    assert tasks[0].backed_up and sum(t.backed_up for t in tasks) == 1 \
        and tasks[0].attempts == 2
    assert [a.error for a in tasks[0].failed] == [LOST_RACE]
    assert [port for port, _ in d.groups] == [1, 2]
    # Its timeline: the straggler, hung up on once the backup (begun later) won.
    straggler, backup = sorted(tasks[0].spans, key=lambda span: span.start_ms)
    assert (straggler.node, straggler.outcome, straggler.backup) == (
        "127.0.0.1:1/sd1", "cancelled", False)
    assert (backup.node, backup.outcome, backup.backup) == ("127.0.0.1:2/sd2", "succeeded", True)
    assert 0 <= straggler.start_ms < backup.start_ms < backup.end_ms
    assert abs(straggler.end_ms - backup.end_ms) < 100  # the loser stops when the winner ends


def test_no_backups_while_tasks_wait_for_dispatch():
    d = FakeDispatcher({1: {"delay": 0.3}, 2: {"delay": 0.3}})
    tasks = states(6, [1, 2])
    job, results = run(d, tasks, backups=True, concurrency=1, backup_min_s=0.0,
                       backup_factor=0.01)
    assert len(results) == 6
    # Only the last task ran with nothing left to dispatch: only it can be backed up.
    assert [t.task_id for t in tasks if t.backed_up] in ([], ["m5"])


def test_stale_views_are_probed_before_placing_but_at_most_once_per_age():
    d = FakeDispatcher({1: {}, 2: {}})
    clock = [1000.0]
    d.clock = lambda: clock[0]
    run(d, states(1, [1, 2]))
    assert sorted(d.probes) == [1, 2]
    run(d, states(1, [1, 2]))
    assert sorted(d.probes) == [1, 2], "probed again within PROBE_AGE_S"
    clock[0] += PROBE_AGE_S + 0.1
    run(d, states(1, [1, 2]))
    assert sorted(d.probes) == [1, 1, 2, 2]


def test_random_policy_does_not_probe():
    d = FakeDispatcher({1: {}, 2: {}})
    run(d, states(3, [1, 2]), policy="random")
    assert d.probes == []


@pytest.mark.parametrize("slow_ms", [40.0])
def test_a_node_slow_on_this_job_gets_fewer_tasks(slow_ms):
    """Free slots do not hide a slow node: the job's own task times do."""
    d = FakeDispatcher({1: {"delay": 0.004, "ms": slow_ms}, 2: {"delay": 0.001, "ms": 4.0}})
    tasks = states(200, [1, 2])
    job, results = run(d, tasks, concurrency=2, max_group=4)
    on_slow = sum(1 for r in results if r[1] == 1)
    assert job.speeds.task_ms(node_key(node(1))) > 1.5 * job.speeds.median_ms
    assert on_slow < 60, f"{on_slow} of 200 tasks on the node ten times slower"


def test_abort_ends_every_unfinished_task_and_hangs_up_at_once():
    # Slow nodes and many tasks: some results arrive, then the job is cancelled.
    d = FakeDispatcher({1: {"delay": 0.05}, 2: {"delay": 0.05}})
    tasks = states(60, [1, 2])
    results = []
    job = PhaseDispatch(d, tasks, TEMPLATE, {}, run_settings(policy="load-aware", tick_s=0.02),
                 lambda state, node, result, stream: results.append(
                     (state.task_id, stream.read(result.stdout_bytes))))
    eventlet.spawn_after(0.3, job.abort, "cancelled by request")
    with eventlet.Timeout(2):
        job.run()
        while job.streams:  # hung up: each request ends at its next read
            eventlet.sleep(0.01)
    handed_on = {task_id for task_id, _ in results}
    assert 0 < len(handed_on) < 60
    for state in tasks:
        assert state.done
        if state.task_id in handed_on:
            assert state.error is None
        else:
            assert state.error == "cancelled by request"
    # Nothing was handed on after the abort, and nothing is counted in flight.
    eventlet.sleep(0.2)
    assert {task_id for task_id, _ in results} == handed_on
    assert not any(d.in_flight.values())


def test_a_slow_node_takes_the_newest_waiting_tasks_only_while_much_work_waits():
    """The best node is full and much work waits: a node ten times slower with a
    free slot takes waiting tasks, the newest first, instead of idling; once what
    waits would drain sooner than it finishes a task, it gets none."""
    d = FakeDispatcher({1: {"delay": 0.002, "ms": 2.0, "service_ms": 2.0},
                        2: {"delay": 0.02, "ms": 20.0, "service_ms": 20.0}})
    job, results = run(d, states(150, [1, 2]), concurrency=4, max_group=1)
    assert sorted(int(task[1:]) for task, *_ in results) == list(range(150))
    dispatched = [(port, task) for port, tasks in d.groups for task in tasks]
    on_slow = [int(task[1:]) for port, task in dispatched if port == 2]
    assert job.speeds.task_ms(node_key(node(2))) > 3 * job.speeds.median_ms
    assert len(on_slow) >= 5, f"the slow node idled: {on_slow}"
    assert statistics.median(on_slow) > 100, f"not the newest tasks: {on_slow}"
    after_last = len(dispatched) - 1 - max(
        i for i, (port, _) in enumerate(dispatched) if port == 2)
    assert after_last >= 5, f"the slow node got work near the end: {dispatched[-12:]}"


def test_nodes_with_room_do_not_wait_behind_the_oldest_tasks_full_replicas():
    """The oldest waiting tasks' replicas are all full; nodes holding only later
    inputs have room and take their tasks now, not once the first ones drain."""
    fast = {"delay": 0.005, "ms": 5.0, "service_ms": 5.0}
    d = FakeDispatcher({port: dict(fast) for port in range(1, 7)})
    tasks = states(60, [1, 2, 3]) + states(60, [4, 5, 6])
    for i, state in enumerate(tasks):
        state.index, state.spec = i, replace(state.spec, task=f"m{i}")
    job, results = run(d, tasks, concurrency=12, max_group=1)
    assert len(results) == 120
    first_half = [port for port, tasks in d.groups[:60] for _ in tasks]
    assert set(first_half) == set(range(1, 7)), f"nodes idled: {sorted(set(first_half))}"
