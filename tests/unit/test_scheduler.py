import random
from collections import Counter

import pytest

from zerocompute.scheduler import (
    NodeLoad,
    choose_node,
    expected_finish_ms,
    format_load_header,
    parse_load_header,
    straggler_threshold_s,
)

NODES = ["n1", "n2", "n3"]


def test_load_header_round_trip():
    load = parse_load_header(format_load_header(2, 5, 4, 12.5, 900.0), now=7.0)
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
