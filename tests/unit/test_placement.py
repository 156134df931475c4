"""The dispatch's policy (``zerocompute.placement``), and the simulator that runs it.

The proxy's ``PhaseDispatch`` and the simulator's ``SimPhase`` are both a
``Placement``; given the same view they must make the same decisions, step by
step, or the simulator says nothing about the proxy.
"""

import random

import pytest

from tests.unit.fakes import TEMPLATE, FakeDispatcher
from zerocompute.dev.simulate import Cluster, Simulation
from zerocompute.middleware.proxy.dispatch import PhaseDispatch
from zerocompute.placement import Placement, RunSettings, TaskState, node_key
from zerocompute.scheduler import NodeLoad

NOW = 1000.0
SETTINGS = RunSettings(policy="load-aware", concurrency=12, max_group=8, backups=True,
                       backup_factor=2.0, backup_min_s=0.5)


def cluster(nodes=8, tasks=60, seed=3):
    rng = random.Random(seed)
    replicas = [tuple(rng.sample(range(nodes), 3)) for _ in range(tasks)]
    handoffs = [tuple(n for n in range(nodes) if n not in r)[:2] for r in replicas]
    return Cluster(slots=[2] * nodes, background=[0] * nodes, speed=[1.0] * nodes,
                   replicas=replicas, work=[1.0] * tasks, handoffs=handoffs,
                   sizes=[rng.randrange(1, 4) << 20 for _ in range(tasks)])


def views(sim):
    """The same uneven view of the cluster's nodes, as each side holds it."""
    loads = {}
    for node in sim.nodes:
        i = node.index
        loads[node_key(node.node)] = NodeLoad(
            running=i % 3, queued=1 if i == 5 else 0, slots=2 + i % 2,
            service_ms=100.0 * (1 + i % 4), reported_at=NOW - 0.2 * (i % 3))
    return loads


def tasks_of(sim):
    return [TaskState(s.index, s.spec, [list(tier) for tier in s.candidates], size=s.size)
            for s in sim.phase.tasks]


class Recording:
    """A placement that keeps the groups it would send, in order."""

    def _launch(self, group):
        self.sent.append((group.key, [s.task_id for s in group.tasks], group.backup))


class ProxySide(Recording, PhaseDispatch):
    pass


def both_sides(c):
    sim = Simulation(c, "load-aware", backups=True, seed=11)
    loads = views(sim)
    sim.now = NOW
    sim.view.loads = dict(loads)
    sim.view.rng = random.Random(5)
    sim.view.probed_at = {key: NOW for key in loads}
    simulated = type("SimSide", (Recording, type(sim.phase)), {})(sim, tasks_of(sim), SETTINGS)

    d = FakeDispatcher({})
    d.clock = lambda: NOW
    d.loads = dict(loads)
    d.rng = random.Random(5)
    d.probed_at = {key: NOW for key in loads}
    proxy = ProxySide(d, tasks_of(sim), TEMPLATE, {}, SETTINGS, on_result=None, origin=0.0)
    for side in (simulated, proxy):
        side.sent = []
        side.begin()
    return simulated, proxy


def step(side, now, answers):
    """Answer the head of the first ``answers`` groups in flight (the first as a
    failure), end the groups with nothing left, then let the side dispatch."""
    ordered = sorted(side.streams, key=lambda g: (g.tasks[0].index, g.key, g.backup))
    for n, group in enumerate(ordered[:answers]):
        state = side._take_result(group, "507 device unavailable" if n == 0 else None, now)
        if state is not None:
            side._claimed(state, group, 40.0 + state.index, True, now)
            side._settled(state, group, True, now)
        if group.head() is None:
            side._group_over(group, "", now)
    side.dispatch(now)
    side._back_up_stragglers(now)


def test_the_simulator_and_the_dispatcher_make_the_same_decisions():
    simulated, proxy = both_sides(cluster())
    assert isinstance(simulated, Placement) and isinstance(proxy, Placement)
    now = NOW
    for side in (simulated, proxy):
        side.dispatch(now)
    assert simulated.sent == proxy.sent and simulated.sent, "the first groups differ"
    for round_ in range(40):
        now += 0.5
        for side in (simulated, proxy):
            step(side, now, answers=1 + round_ % 3)
        assert simulated.sent == proxy.sent, f"they part at step {round_}"
        assert simulated.unfinished == proxy.unfinished
    assert simulated.unfinished < 60, "the run made progress"
    assert any(backup for *_, backup in simulated.sent) or simulated.pending, \
        "no backup copy was decided"
    assert {s.task_id: sorted(s.tried) for s in simulated.tasks} == \
        {s.task_id: sorted(s.tried) for s in proxy.tasks}


def test_the_largest_inputs_are_placed_first():
    c = cluster(nodes=4, tasks=12)
    c.sizes = [(i * 7) % 12 + 1 for i in range(12)]
    simulated, _ = both_sides(c)
    order = [s.index for s in simulated._waiting()]
    assert order == sorted(range(12), key=lambda i: -c.sizes[i])


def test_a_node_with_room_takes_first_the_tasks_with_least_room_elsewhere():
    """Node 2 holds tasks whose other replica is node 1 (little waits for it) and,
    later in the order, tasks whose other replica is node 0 (much waits for it):
    it takes the latter, which only it can relieve node 0 of."""
    c = Cluster(slots=[1] * 3, background=[0] * 3, speed=[1.0] * 3,
                replicas=[(2, 1)] * 4 + [(2, 0)] * 4 + [(0,)] * 13, work=[1.0] * 21)
    sim = Simulation(c, "load-aware", backups=False, seed=1)
    sim.view.probe([n.node for n in sim.nodes])
    phase = sim.phase
    phase.begin()
    key = node_key(sim.nodes[2].node)
    takers = ((s, s.untried_on(key, 0.0)) for s in phase.by_node[key].values())
    picked = phase._most_bound(key, takers, 2, 8)
    assert [s.index for s, _node in picked] == [4, 5]


@pytest.mark.parametrize("fail", [True, False])
def test_tasks_on_a_node_that_dies_run_again_elsewhere(fail):
    c = cluster(nodes=6, tasks=80)
    if fail:
        c.fail_at = {0: 5.0, 1: 5.0}
    sim = Simulation(c, "load-aware", backups=True, seed=2)
    sim.run_job()
    assert all(s.done and s.error is None for s in sim.phase.tasks)
    late = [s for s in sim.phase.tasks if s.node["index"] in c.fail_at
            and s.spans[-1].end_ms > 5000]
    assert late == [], "a result came from a dead node"
    rerun = [s for s in sim.phase.tasks
             if any(a.error.startswith("Connection") for a in s.failed)]
    assert bool(rerun) == fail


def test_a_dead_node_is_not_in_the_view_after_it_died():
    c = cluster(nodes=6, tasks=80)
    c.fail_at = {0: 2.0}
    sim = Simulation(c, "load-aware", backups=True, seed=2)
    sim.run_job()
    key = node_key(sim.nodes[0].node)
    assert sim.view.loads[key].reported_at <= 2.0
