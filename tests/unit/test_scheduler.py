import random
from collections import Counter

import pytest

from zerocompute.scheduler import (
    JobSpeeds,
    NodeLoad,
    backlog_ms,
    choose_node,
    expected_finish_ms,
    group_size,
    has_free_slot,
    parse_load_header,
    straggler_threshold_s,
    update_service_ms,
    worth_spilling,
)
from zerocompute.wire import LoadReport

NODES = ["n1", "n2", "n3"]


def test_load_header_round_trip():
    load = parse_load_header(LoadReport(2, 5, 4, 12.5, 900.0).header(), now=7.0)
    assert load == NodeLoad(running=2, queued=5, slots=4, service_ms=12.5, reported_at=7.0,
                            elapsed_ms=900.0)
    assert parse_load_header(None, 0) is None
    assert parse_load_header("slots=0 junk running=x", 0).slots == 1


def test_random_uses_every_candidate():
    rng = random.Random(1)
    picks = Counter(choose_node(NODES, {}, {}, "random", rng) for _ in range(300))
    assert set(picks) == set(NODES) and min(picks.values()) > 60


def test_load_aware_avoids_the_busy_node():
    loads = {"n1": NodeLoad(running=2, queued=10, slots=2), "n2": NodeLoad(slots=2),
             "n3": NodeLoad(running=1, slots=2)}
    rng = random.Random(2)
    # n3 still has a free slot, so it is as good as the idle n2.
    assert {choose_node(NODES, loads, {}, "load-aware", rng) for _ in range(50)} == {"n2", "n3"}


def test_load_aware_counts_this_proxys_in_flight_tasks():
    loads = {n: NodeLoad(slots=1) for n in NODES}
    assert choose_node(NODES, loads, {"n1": 3, "n2": 1}, "load-aware") == "n3"


def test_load_aware_prefers_faster_nodes_at_equal_queue():
    loads = {"n1": NodeLoad(running=1, service_ms=100), "n2": NodeLoad(running=1, service_ms=10),
             "n3": NodeLoad(running=1, service_ms=50)}
    assert choose_node(NODES, loads, {}, "load-aware") == "n2"


def test_load_aware_spreads_ties():
    rng = random.Random(3)
    picks = Counter(choose_node(NODES, {}, {}, "load-aware", rng) for _ in range(300))
    assert set(picks) == set(NODES)


def test_expected_finish_counts_queueing_only_when_slots_are_full():
    assert expected_finish_ms(NodeLoad(running=1, slots=4, service_ms=10), 0) == 10
    assert expected_finish_ms(NodeLoad(running=4, slots=4, service_ms=10), 0) == 12.5
    assert expected_finish_ms(NodeLoad(running=4, slots=1, service_ms=10), 0) == 50
    assert expected_finish_ms(NodeLoad(slots=1, service_ms=10), 3) == 40


def test_long_running_work_counts_even_before_it_finishes():
    # A node busy with one long task it has not finished: its average says 50 ms,
    # but what it runs has taken 10 s already.
    stuck = NodeLoad(running=1, slots=1, service_ms=50, elapsed_ms=10_000)
    idle = NodeLoad(running=1, slots=2, service_ms=200)
    assert choose_node(["stuck", "idle"], {"stuck": stuck, "idle": idle}, {}) == "idle"


def test_old_reports_count_for_less():
    busy = NodeLoad(running=10, slots=1, service_ms=10, reported_at=100.0)
    fresh = expected_finish_ms(busy, 0, now=100.0)
    aged = expected_finish_ms(busy, 0, now=110.0)
    assert fresh == 110 and aged < 15
    # ... but never below what this proxy itself has in flight there.
    assert expected_finish_ms(busy, 3, now=1000.0) == 40


def test_errors():
    with pytest.raises(ValueError):
        choose_node([], {}, {})
    with pytest.raises(ValueError):
        choose_node(NODES, {}, {}, "fastest")


def test_straggler_threshold_is_a_multiple_of_the_median_with_a_floor():
    assert straggler_threshold_s([1.0, 2.0, 9.0], factor=2.0, min_s=1.0) == 4.0
    assert straggler_threshold_s([0.1, 0.2, 0.3], factor=2.0, min_s=1.0) == 1.0


def test_job_speeds_see_a_slow_node_that_has_free_slots():
    speeds = JobSpeeds()
    assert speeds.task_ms("n1") is None
    for _ in range(5):
        speeds.add("n1", 500.0)  # a fifth of a core
        speeds.add("n2", 100.0)
        speeds.add("n3", 100.0)
    assert speeds.task_ms("n1") == pytest.approx(5.0 * speeds.median_ms)
    assert speeds.task_ms("n4") == 100.0, "an unseen node is assumed to be typical"
    idle = {n: NodeLoad(slots=2, service_ms=50.0) for n in NODES}
    # Both n2 and n3 run one task each already; n1 is idle but five times slower.
    busy = {"n2": 1, "n3": 1}
    rng = random.Random(3)
    picks = {choose_node(NODES, idle, busy, "load-aware", rng,
                         task_ms=speeds.estimates(NODES)) for _ in range(50)}
    assert picks == {"n2", "n3"}
    # Without the job's own times, the node service times (all equal) cannot tell.
    assert "n1" in {choose_node(NODES, idle, busy, "load-aware", rng) for _ in range(50)}


def test_only_completed_work_feeds_the_service_time():
    # The first sample replaces the guess; later ones move the average by 20 %.
    assert update_service_ms(50.0, 400.0, 0) == 400.0
    assert update_service_ms(400.0, 100.0, 1) == pytest.approx(340.0)


def test_group_size_shrinks_near_the_end_and_grows_with_trust():
    assert group_size(pending=1000, concurrency=16, task_ms=1.0, completed_on_node=10) == 32
    assert group_size(1000, 16, 1.0, completed_on_node=0) == 1
    assert group_size(1000, 16, 1.0, completed_on_node=3) == 8
    assert group_size(40, 16, 1.0, 10) == 2
    assert group_size(3, 16, 1.0, 10) == 1
    # Never more than about half a second of work on the node.
    assert group_size(1000, 16, task_ms=100.0, completed_on_node=10) == 5
    assert group_size(1000, 16, task_ms=2000.0, completed_on_node=10) == 1


def test_backlog_drains_through_every_slot_at_each_nodes_speed():
    # Three nodes of 4 slots at 400 ms and one of 4 at 2 s: 32 tasks a second.
    nodes = [(4, 400.0)] * 3 + [(4, 2000.0)]
    assert backlog_ms(190, nodes) == pytest.approx(190 / 32 * 1000)
    assert backlog_ms(0, nodes) == 0
    assert backlog_ms(5, []) == float("inf")


def test_a_slow_node_helps_only_while_the_backlog_outlasts_its_task():
    slow = expected_finish_ms(NodeLoad(slots=4, service_ms=2000.0), in_flight=0)
    nodes = [(4, 400.0)] * 3 + [(4, 2000.0)]
    assert worth_spilling(slow, backlog_ms(190, nodes))  # about 6 s of work waits
    assert not worth_spilling(slow, backlog_ms(40, nodes))  # about 1.25 s: it would be last


def test_a_free_slot_is_free_by_the_nodes_report_and_by_this_jobs_groups():
    idle = NodeLoad(slots=4, reported_at=100.0)
    assert has_free_slot(idle, groups=3)
    assert not has_free_slot(idle, groups=4)
    # Another tenant holds every slot (running or queued): not free, however old the report.
    assert not has_free_slot(NodeLoad(running=4, slots=4, reported_at=100.0), groups=0)
    assert not has_free_slot(NodeLoad(running=2, queued=2, slots=4), groups=1)
