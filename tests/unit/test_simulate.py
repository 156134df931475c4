"""The scheduler simulator on small clusters."""

import pytest

from zerocompute.dev.simulate import SCENARIOS, Cluster, Scenario, build, lower_bound, simulate


def small(name, **changes):
    return Scenario(**{**SCENARIOS[name].__dict__, "nodes": 40, "tasks": 2000, **changes})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_policy_beats_the_lower_bound(name):
    cluster = build(small(name))
    bound = lower_bound(cluster)
    for policy in ("random", "load-aware"):
        for backups in (False, True):
            result = simulate(cluster, policy, backups=backups)
            assert result["makespan_s"] >= bound * 0.999
            assert result["p50_s"] <= result["p99_s"] <= result["makespan_s"]


def test_job_speeds_steer_work_off_cpu_starved_nodes():
    cluster = build(small("cpu-skew"))
    assert simulate(cluster, "load-aware", backups=False)["makespan_s"] * 1.5 < \
        simulate(cluster, "random", backups=False)["makespan_s"]


def test_load_aware_beats_random_on_the_skewed_cluster():
    cluster = build(small("skewed"))
    assert simulate(cluster, "load-aware")["makespan_s"] * 1.5 < \
        simulate(cluster, "random")["makespan_s"]


def test_lower_bound_sees_hot_only_work():
    # Two hot nodes hold every replica of task 0..9: only they can do that work.
    c = Cluster(slots=[1, 1, 1, 1], background=[0] * 4, speed=[1.0] * 4,
                replicas=[(0, 1)] * 10, work=[1.0] * 10, hot={0, 1})
    assert lower_bound(c) == pytest.approx(5.0, rel=1e-6)
    result = simulate(c, "load-aware", backups=False)
    assert result["makespan_s"] == pytest.approx(5.0)


def test_backup_copies_rescue_a_slow_replica():
    # Node 0 is ten times slower; the last task lands there, a backup finishes it on node 1.
    c = Cluster(slots=[1, 1], background=[0, 0], speed=[0.1, 1.0],
                replicas=[(0, 1)] * 4, work=[1.0] * 4)
    without = simulate(c, "random", backups=False, seed=3)["makespan_s"]
    with_backups = simulate(c, "random", backups=True, seed=3)
    assert with_backups["backups"] >= 1, "no backup copy was made"
    assert with_backups["makespan_s"] < without
    assert with_backups["makespan_s"] >= lower_bound(c)
