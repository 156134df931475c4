"""A discrete-event simulation of the scheduler at cluster scale, running the
proxy's own placement code.

Every decision is made by :class:`zerocompute.placement.Placement`, the class
the proxy's ``PhaseDispatch`` is: which node, how many tasks in a group, whether
the best node has room (``queue_room``), spilling to a node that is not the best,
retries after a failure, backup copies of stragglers.  Only the object servers,
the clock and the network are simulated:

* a node has task slots and a speed; a background tenant holds some slots of
  some nodes for the whole run;
* a group's tasks run one after another, each in a slot when its turn comes
  (FIFO behind the tasks already waiting there), as ``middleware/task.py`` runs
  them; a node answers each task as it ends, with its load report (running,
  queued, slots, its moving average of service time, how long its running
  tasks have been running), as the real frames carry it;
* the view is the proxy's: those reports, this proxy's tasks in flight, and a
  probe (answered at once) of a node not heard from for ``PROBE_AGE_S``;
* in ``node-failure``, a tenth of the nodes (one zone of ten: a task's three
  replicas are in three zones, as Swift's ring places them) die at 40% of
  the lower bound: a
  group in flight there fails after ``DETECT_S`` (its connection reset), a
  group sent there after ``CONN_TIMEOUT_S`` (the proxy's ``conn_timeout``),
  and a probe gets no answer; the proxy passes over a node it could not
  connect to for a minute (Swift's error limiting); their tasks run again
  on the replicas left;
* the proxy may keep ``(slots + 1) x nodes`` groups in flight (its
  ``concurrency``, scaled to the cluster, so that it is never what limits it).

A task's work is proportional to its input's size, within 10%, as a map that
scans its input is; the size is what the proxy knows of a task.  The network
takes no time and a group is sent at once.

``python -m zerocompute.dev.simulate`` prints the makespan of ``random``
(ZeroCloud: no backups), ``random`` with backup tasks and ``load-aware`` (with
them) against a lower bound no schedule can beat, for each scenario, and can draw
the plot of ``doc/scheduler.md`` (``--plot``, needs matplotlib).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from zerocompute import wire
from zerocompute.placement import Group, Placement, RunSettings, TaskState, node_key
from zerocompute.scheduler import (
    DEFAULT_SERVICE_MS,
    LOAD_AWARE,
    MAX_GROUP,
    RANDOM,
    NodeLoad,
    due_for_probe,
    update_service_ms,
)

# A dead node: a group in flight there fails this long after it died (its
# connection reset); one sent to it, after the proxy's connect timeout.
DETECT_S = 1.0
CONN_TIMEOUT_S = 0.5
ERROR_SUPPRESSION_S = 60.0
BACKUP_FACTOR = 2.0
BACKUP_MIN_S = 1.0
TICK_S = 0.2
# Input bytes per second of work at speed 1.0 (a map's scan rate): sizes only order tasks.
SCAN_RATE = 64 << 20


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: int = 1000
    tasks: int = 100_000
    slots: int = 4
    replicas: int = 3
    # Node speeds: (fraction of nodes, speed) pairs; the rest run at 1.0.
    speeds: tuple[tuple[float, float], ...] = ()
    # Skewed placement: this fraction of nodes is hot and holds this share of replicas.
    hot_nodes: float = 0.0
    hot_share: float = 0.0
    # Background tenant: this fraction of nodes has this many slots busy all run long.
    background_nodes: float = 0.0
    background_slots: int = 0
    # Task work in seconds at speed 1.0: lognormal with this mean and sigma; the
    # work of a task is its input's size over SCAN_RATE, times this much noise.
    work_mean_s: float = 1.0
    work_sigma: float = 0.5
    work_noise: float = 0.1
    # Failure domains (Swift's zones): a task's replicas are in distinct ones.
    zones: int = 0
    # This many zones die at this fraction of the lower bound.
    failing_zones: int = 0
    fail_at: float = 0.4
    seed: int = 1


SCENARIOS = {
    "uniform": Scenario("uniform"),
    "skewed": Scenario("skewed", speeds=((0.2, 0.5), (0.1, 2.0)), hot_nodes=0.05,
                       hot_share=0.3, background_nodes=0.1, background_slots=3),
    # Contended CPUs: a tenth of the nodes run at a fifth of the speed, slots free.
    "cpu-skew": Scenario("cpu-skew", speeds=((0.1, 0.2),)),
    # A tenth of the nodes (one zone of ten: a rack, a power feed) dies mid-job.
    "node-failure": Scenario("node-failure", zones=10, failing_zones=1),
}


@dataclass
class Cluster:
    slots: list[int]  # free to zerocompute (background slots taken away)
    background: list[int]
    speed: list[float]
    replicas: list[tuple[int, ...]]
    work: list[float]  # seconds at speed 1.0
    hot: set[int] = field(default_factory=set)
    sizes: list[int] | None = None  # bytes of each task's input (None: unknown)
    handoffs: list[tuple[int, ...]] | None = None
    fail_at: dict[int, float] = field(default_factory=dict)  # node -> when it dies


def build(s: Scenario) -> Cluster:
    rng = random.Random(s.seed)
    speed = [1.0] * s.nodes
    order = list(range(s.nodes))
    rng.shuffle(order)
    start = 0
    for fraction, value in s.speeds:
        count = int(fraction * s.nodes)
        for i in order[start:start + count]:
            speed[i] = value
        start += count
    background = [0] * s.nodes
    for i in rng.sample(range(s.nodes), int(s.background_nodes * s.nodes)):
        background[i] = min(s.background_slots, s.slots - 1)
    hot = set(rng.sample(range(s.nodes), int(s.hot_nodes * s.nodes))) if s.hot_nodes else set()
    hot_list, cold_list = sorted(hot), [i for i in range(s.nodes) if i not in hot]
    zone = [n % s.zones if s.zones else n for n in range(s.nodes)]
    replicas, handoffs = [], []
    for _ in range(s.tasks):
        chosen: list[int] = []
        while len(chosen) < s.replicas + 2:
            pool = hot_list if hot_list and rng.random() < s.hot_share else cold_list
            node = rng.choice(pool if len(chosen) < s.replicas else order)
            if node not in chosen and zone[node] not in {zone[n] for n in chosen}:
                chosen.append(node)
        replicas.append(tuple(chosen[:s.replicas]))
        handoffs.append(tuple(chosen[s.replicas:]))
    mu = math.log(s.work_mean_s) - s.work_sigma ** 2 / 2
    scan = [rng.lognormvariate(mu, s.work_sigma) for _ in range(s.tasks)]
    sizes = [max(1, int(w * SCAN_RATE)) for w in scan]
    work = [w * rng.lognormvariate(-s.work_noise ** 2 / 2, s.work_noise) for w in scan]
    slots = [s.slots - b for b in background]
    cluster = Cluster(slots, background, speed, replicas, work, hot, sizes, handoffs)
    if s.failing_zones:
        when = s.fail_at * lower_bound(cluster)
        cluster.fail_at = {n: when for n in range(s.nodes) if zone[n] < s.failing_zones}
    return cluster


def node_classes(c: Cluster) -> list[tuple]:
    """Nodes that look alike to a schedule: (hot, speed, free slots, when it dies)."""
    return [(n in c.hot, c.speed[n], c.slots[n], c.fail_at.get(n, math.inf))
            for n in range(len(c.slots))]


def allowed_nodes(c: Cluster, task: int) -> tuple[int, ...]:
    """Where a task may run: its replicas, and its handoffs once a replica dies."""
    replicas = c.replicas[task]
    if c.handoffs and any(n in c.fail_at for n in replicas):
        return replicas + c.handoffs[task]
    return replicas


def lower_bound(c: Cluster) -> float:
    """No schedule can finish sooner (seconds).

    The largest of: the longest task on its fastest node, and the fluid bound
    of a relaxation in which nodes of one class (hot or not, speed, free slots,
    when it dies) pool their capacity: any real schedule, summed per class, is
    a fractional assignment of each task's work to the classes of the nodes it
    may run on that fits in what each class can do by ``T`` (a dying class only
    until it dies); the least such ``T`` is found by bisection with a max-flow
    feasibility test.
    """
    allowed = [allowed_nodes(c, t) for t in range(len(c.work))]
    longest = max(w / max(c.speed[n] for n in nodes)
                  for w, nodes in zip(c.work, allowed, strict=True))
    classes = node_classes(c)
    rate: dict[tuple, float] = {}
    for n, k in enumerate(classes):
        rate[k] = rate.get(k, 0.0) + c.slots[n] * c.speed[n]
    demand: dict[frozenset, float] = {}
    for w, nodes in zip(c.work, allowed, strict=True):
        key = frozenset(classes[n] for n in nodes)
        demand[key] = demand.get(key, 0.0) + w
    total = sum(demand.values())

    def feasible(t: float) -> bool:
        capacity = {k: v * min(t, k[3]) for k, v in rate.items()}
        return _max_flow(demand, capacity) >= total * (1 - 1e-9)
    low = high = total / sum(rate.values())
    while not feasible(high):
        low, high = high, high * 2
    for _ in range(50):
        mid = (low + high) / 2
        if feasible(mid):
            high = mid
        else:
            low = mid
    return max(longest, high)


def _max_flow(demand: dict[frozenset, float], capacity: dict[tuple, float]) -> float:
    """Max flow source -> task types (their work) -> node classes (capacity) -> sink."""
    source, sink = ("source",), ("sink",)
    graph: dict[tuple, dict[tuple, float]] = {source: {}, sink: {}}

    def edge(a, b, cap):
        graph.setdefault(a, {})[b] = graph.get(a, {}).get(b, 0.0) + cap
        graph.setdefault(b, {}).setdefault(a, 0.0)
    for types, work in demand.items():
        node = ("type", types)
        edge(source, node, work)
        for k in types:
            edge(node, ("class", k), float("inf"))
    for k, cap in capacity.items():
        edge(("class", k), sink, cap)
    flow = 0.0
    while True:  # Edmonds-Karp: the graph has a few hundred vertices at most
        parent = {source: None}
        queue = deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, cap in graph[u].items():
                if cap > 1e-12 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            return flow
        path, v = [], sink
        while parent[v] is not None:
            path.append((parent[v], v))
            v = parent[v]
        push = min(graph[u][v] for u, v in path)
        for u, v in path:
            graph[u][v] -= push
            graph[v][u] += push
        flow += push


class SimNode:
    """A simulated object server: its slots, the tasks waiting for one, its reports."""

    def __init__(self, index: int, slots: int, background: int, speed: float):
        self.index = index
        self.node = {"ip": f"10.{index // 250}.{index % 250}.1", "port": 6200,
                     "device": "d1", "index": index}
        self.slots, self.background, self.speed = slots, background, speed
        self.running: dict[SimGroup, float] = {}  # group -> when its task started
        self.waiting: deque[SimGroup] = deque()  # groups whose next task waits for a slot
        self.groups: set[SimGroup] = set()
        self.service_ms = DEFAULT_SERVICE_MS
        self.completed = 0
        self.alive = True

    def load(self, now: float) -> NodeLoad:
        queued = sum(len(g.tasks) - g.answered for g in self.groups) - len(self.running)
        # The background tenant's tasks have run since long before the job began.
        elapsed = [now - t for t in self.running.values()] + [now + 60.0] * self.background
        return NodeLoad(running=len(self.running) + self.background, queued=queued,
                        slots=self.slots + self.background, service_ms=self.service_ms,
                        reported_at=now,
                        elapsed_ms=1000 * sum(elapsed) / len(elapsed) if elapsed else 0.0)


@dataclass(eq=False)
class SimGroup(Group):
    sim: Simulation | None = None
    sent_at: float = 0.0

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.sim.hang_up(self)


class SimView:
    """The proxy's view (``Dispatcher``'s): reports, tasks in flight, probes."""

    def __init__(self, sim: Simulation, seed: int):
        self.sim = sim
        self.loads: dict[str, NodeLoad] = {}
        self.in_flight: dict[str, int] = defaultdict(int)
        self.rng = random.Random(seed)
        self.max_busy_wait_s = 300.0
        self.probed_at: dict[str, float] = {}
        self.limited_until: dict[str, float] = {}

    def is_limited(self, node: dict) -> bool:
        return self.limited_until.get(node_key(node), 0.0) > self.sim.now

    def limit(self, node: dict) -> None:
        """As the proxy's ``ErrorLimiter.limit``: passed over for a minute."""
        self.limited_until[node_key(node)] = self.sim.now + ERROR_SUPPRESSION_S

    def probe(self, nodes: list[dict]) -> None:
        now = self.sim.now
        due = due_for_probe({node_key(n): n for n in nodes}, self.loads, self.probed_at, now)
        for key, node in due.items():
            sim_node = self.sim.nodes[node["index"]]
            if sim_node.alive:
                self.loads[key] = sim_node.load(now)


class SimPhase(Placement):
    """The proxy's placement, its groups sent to simulated object servers."""

    group_class = SimGroup

    def __init__(self, sim: Simulation, tasks: list[TaskState], settings: RunSettings):
        super().__init__(sim.view, tasks, settings)
        self.sim = sim

    def _launch(self, group: Group) -> None:
        self.sim.arrive(group)


class Simulation:
    """One job's map phase on a simulated cluster: events in time order."""

    def __init__(self, c: Cluster, policy: str, backups: bool, seed: int):
        self.c = c
        self.now = 0.0
        self.nodes = [SimNode(i, c.slots[i], c.background[i], c.speed[i])
                      for i in range(len(c.slots))]
        self.view = SimView(self, seed)
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.work: dict[int, float] = {}
        self.dispatched_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.finished_at = 0.0
        states = []
        for t in range(len(c.work)):
            spec = wire.TaskSpec(task=f"m{t}", device="", partition=0, path=f"/a/c/o{t}")
            candidates = [[self.nodes[n].node for n in c.replicas[t]],
                          [self.nodes[n].node for n in (c.handoffs or [()] * len(c.work))[t]]]
            states.append(TaskState(t, spec, candidates,
                                    size=c.sizes[t] if c.sizes else 0))
        total_slots = sum(c.slots)
        settings = RunSettings(policy=policy, concurrency=total_slots + len(c.slots),
                               max_group=MAX_GROUP, backups=backups,
                               backup_factor=BACKUP_FACTOR, backup_min_s=BACKUP_MIN_S,
                               tick_s=TICK_S)
        self.phase = SimPhase(self, states, settings)
        for n, when in c.fail_at.items():
            self.at(when, "die", self.nodes[n])

    def at(self, when: float, kind: str, what: object) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, what))

    # -- the object servers ---------------------------------------------------
    def arrive(self, group: SimGroup) -> None:
        group.sim, group.sent_at = self, self.now
        node = self.nodes[group.node["index"]]
        for state in group.tasks:
            self.dispatched_at.setdefault(state.index, self.now)
        if not node.alive:
            self.at(self.now + CONN_TIMEOUT_S, "unreachable", group)
            return
        node.groups.add(group)
        self.next_task(node, group)

    def next_task(self, node: SimNode, group: SimGroup) -> None:
        """The group's next task takes a free slot, or waits behind those waiting."""
        if group.head() is None:
            node.groups.discard(group)
            self.at(self.now, "over", (group, ""))
        elif len(node.running) < node.slots and not node.waiting:
            self.run(node, group)
        else:
            node.waiting.append(group)

    def run(self, node: SimNode, group: SimGroup) -> None:
        node.running[group] = self.now
        state = group.head()
        took = self.c.work[state.index] / node.speed
        self.at(self.now + took, "done", (group, state))

    def free_slot(self, node: SimNode) -> None:
        while node.waiting and len(node.running) < node.slots:
            self.run(node, node.waiting.popleft())

    def hang_up(self, group: SimGroup) -> None:
        """The proxy closed the request: the node kills the guest, drops the rest."""
        node = self.nodes[group.node["index"]]
        if group in node.groups:
            node.groups.discard(group)
            if node.running.pop(group, None) is not None:
                self.free_slot(node)
            elif group in node.waiting:
                node.waiting.remove(group)
            self.at(self.now, "over", (group, ""))

    def die(self, node: SimNode) -> None:
        node.alive = False
        for group in list(node.groups):
            self.at(self.now + DETECT_S, "over", (group, "ConnectionResetError"))
        node.groups.clear()
        node.running.clear()
        node.waiting.clear()

    def done(self, group: SimGroup, state: TaskState) -> None:
        node = self.nodes[group.node["index"]]
        started = node.running.pop(group, None)
        if started is None or group.cancelled or not node.alive:
            return  # a copy that was stopped, or on a node that died
        ms = (self.now - started) * 1000
        node.service_ms = update_service_ms(node.service_ms, ms, node.completed)
        node.completed += 1
        phase = self.phase
        claimed = phase._take_result(group, None, self.now)
        self.view.loads[group.key] = node.load(self.now)
        if claimed is not None:
            phase._claimed(claimed, group, ms, True, self.now)
            phase._settled(claimed, group, True, self.now)
            self.latencies.append(self.now - self.dispatched_at[claimed.index])
            self.finished_at = self.now
        self.next_task(node, group)
        self.free_slot(node)

    # -- the proxy ------------------------------------------------------------
    def run_job(self) -> None:
        phase = self.phase
        # As the proxy does before a phase (PhaseRunner.run): every primary's load.
        self.view.probe([n.node for n in self.nodes])
        phase.begin()
        phase.dispatch(self.now)
        self.at(TICK_S, "tick", None)
        while phase.unfinished > 0 and self.events:
            self.now, _, kind, what = heapq.heappop(self.events)
            if kind == "done":
                self.done(*what)
            elif kind == "over":
                group, error = what
                if group in phase.streams:
                    phase._group_over(group, error, self.now)
            elif kind == "unreachable":
                self.view.limit(what.node)
                phase._group_over(what, "ConnectionTimeout", self.now)
            elif kind == "die":
                self.die(what)
            elif kind == "tick":
                if phase.settings.backups:
                    phase._back_up_stragglers(self.now)
                self.at(self.now + TICK_S, "tick", None)
            phase.dispatch(self.now)


def simulate(c: Cluster, policy: str, backups: bool = True, seed: int = 7) -> dict:
    """Run the job; its makespan and task latencies (seconds, from first dispatch)."""
    sim = Simulation(c, policy, backups, seed)
    sim.run_job()
    failed = [s.task_id for s in sim.phase.tasks if s.error]
    if failed:
        raise RuntimeError(f"{len(failed)} tasks failed, {failed[0]} first")
    latencies = sorted(sim.latencies)
    return {"makespan_s": sim.finished_at, "p50_s": latencies[len(latencies) // 2],
            "p99_s": latencies[int(len(latencies) * 0.99)],
            "backups": sum(s.backed_up for s in sim.phase.tasks),
            "retries": sum(len(s.failed) for s in sim.phase.tasks)}


POLICIES = (LOAD_AWARE, f"{RANDOM}+backups", RANDOM)


def compare(s: Scenario, sizes_known: bool = True) -> dict:
    """Load-aware (with backup tasks), random with them, and random (ZeroCloud: no
    backups), each over the lower bound; ``sizes_known=False``: the proxy knows
    nothing of the tasks' sizes."""
    started = time.perf_counter()
    cluster = build(s)
    if not sizes_known:
        cluster.sizes = None
    bound = lower_bound(cluster)
    result: dict = {"scenario": s.name, "nodes": s.nodes, "tasks": s.tasks,
                    "sizes_known": sizes_known, "lower_bound_s": bound}
    for name in POLICIES:
        run = simulate(cluster, name.split("+")[0], backups=name != RANDOM)
        run["over_bound"] = run["makespan_s"] / bound
        result[name] = run
    best_random = min(result[f"{RANDOM}+backups"]["makespan_s"], result[RANDOM]["makespan_s"])
    result["best_random_over_load_aware"] = best_random / result[LOAD_AWARE]["makespan_s"]
    result["seconds_to_simulate"] = time.perf_counter() - started
    return result


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    names = [r["scenario"] for r in results]
    series = [("load-aware", LOAD_AWARE, "#2b7bba"),
              ("random + backup tasks", f"{RANDOM}+backups", "#f0ad4e"),
              ("random (ZeroCloud)", RANDOM, "#d9534f")]
    width = 0.26
    for i, (label, name, color) in enumerate(series):
        xs = [x + (i - 1) * width for x in range(len(names))]
        bars = ax.bar(xs, [r[name]["over_bound"] for r in results], width, label=label,
                      color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.0, color="#555555", linewidth=1)
    ax.axhline(1.1, color="#555555", linewidth=0.8, linestyle="--")
    ax.text(len(names) - 0.5, 1.1, " 1.10", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), [
        f"{r['scenario']}\nbound {r['lower_bound_s']:.1f} s" for r in results])
    ax.set_yscale("log")
    ax.set_ylabel("makespan / lower bound (log scale)")
    sizes = {(r["nodes"], r["tasks"]) for r in results}
    scale = ", ".join(f"{n:,} nodes, {t:,} tasks" for n, t in sorted(sizes))
    ax.set_title("zerocompute's placement code, simulated: makespan over what no schedule "
                 f"can beat ({scale})", fontsize=10)
    ax.legend(frameon=False, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--sizes-unknown", action="store_true",
                        help="the proxy does not know the tasks' input sizes")
    parser.add_argument("--plot", help="write a PNG of the results here")
    args = parser.parse_args(argv)
    results = []
    for name in args.scenario or list(SCENARIOS):
        scenario = SCENARIOS[name]
        overrides = {k: v for k, v in (("nodes", args.nodes), ("tasks", args.tasks)) if v}
        if overrides:
            scenario = Scenario(**{**scenario.__dict__, **overrides})
        r = compare(scenario, sizes_known=not args.sizes_unknown)
        results.append(r)
        print(f"{r['scenario']}: {r['nodes']} nodes, {r['tasks']} tasks"
              f"{'' if r['sizes_known'] else ', sizes unknown'}; lower bound "
              f"{r['lower_bound_s']:.1f} s")
        for name, label in zip(POLICIES, ("load-aware", "random + backups",
                                          "random (ZeroCloud)"), strict=True):
            run = r[name]
            print(f"  {label:<19}{run['makespan_s']:7.1f} s = {run['over_bound']:5.2f}x the "
                  f"bound; task latency p50 {run['p50_s']:.1f} s, p99 {run['p99_s']:.1f} s; "
                  f"{run['backups']} copies, {run['retries']} failed attempts")
        print(f"  best of random / load-aware: {r['best_random_over_load_aware']:.2f}")
    print(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
