"""A discrete-event simulation of the scheduler at cluster scale.

The same :func:`zerocompute.scheduler.choose_node` that the proxy runs places
every task; only the cluster is simulated.  Nodes have task slots and a
speed; a background tenant holds some slots of some nodes for the whole run;
each task has an amount of work and three replicas, placed uniformly or
skewed onto a hot set of nodes.  The proxy keeps at most ``in_flight`` tasks
dispatched (twice the free slots by default) and places each one when it
is dispatched (late binding); a node runs what it is sent in FIFO order.
Backup tasks work as in the proxy.

The load view is what the real proxy has: each node's running and queued
tasks and slots (as it would report them), an exponential moving average of
its task service time learnt from completed tasks, this proxy's in-flight
count per node, and the job's own task times per node
(:class:`zerocompute.scheduler.JobSpeeds`).  Tasks are not grouped here: a
group holds at most half a second of work (``group_size``), and the
simulated tasks take a second each.

``python -m zerocompute.dev.simulate`` prints the makespan of ``random``,
``load-aware`` and a lower bound for each scenario, and can draw the plot of
``doc/scheduler.md`` (``--plot``, needs matplotlib).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from zerocompute.scheduler import (
    DEFAULT_SERVICE_MS,
    LOAD_AWARE,
    RANDOM,
    JobSpeeds,
    NodeLoad,
    choose_node,
    straggler_threshold_s,
    update_service_ms,
)


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
    # Task work in seconds at speed 1.0: lognormal with this mean and sigma.
    work_mean_s: float = 1.0
    work_sigma: float = 0.5
    seed: int = 1


SCENARIOS = {
    "uniform": Scenario("uniform"),
    "skewed": Scenario("skewed", speeds=((0.2, 0.5), (0.1, 2.0)), hot_nodes=0.05,
                       hot_share=0.3, background_nodes=0.1, background_slots=3),
    # Contended CPUs: a tenth of the nodes run at a fifth of the speed, slots free.
    "cpu-skew": Scenario("cpu-skew", speeds=((0.1, 0.2),)),
}


@dataclass
class Cluster:
    slots: list[int]  # free to zerocompute (background slots taken away)
    background: list[int]
    speed: list[float]
    replicas: list[tuple[int, ...]]
    work: list[float]
    hot: set[int] = field(default_factory=set)


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
    replicas = []
    for _ in range(s.tasks):
        chosen: list[int] = []
        while len(chosen) < s.replicas:
            pool = hot_list if hot_list and rng.random() < s.hot_share else cold_list
            node = rng.choice(pool)
            if node not in chosen:
                chosen.append(node)
        replicas.append(tuple(chosen))
    mu = math.log(s.work_mean_s) - s.work_sigma ** 2 / 2
    work = [rng.lognormvariate(mu, s.work_sigma) for _ in range(s.tasks)]
    slots = [s.slots - b for b in background]
    return Cluster(slots, background, speed, replicas, work, hot)


def node_classes(c: Cluster) -> list[tuple]:
    """Nodes that look alike to a schedule: (hot, speed, free slots)."""
    return [(n in c.hot, c.speed[n], c.slots[n]) for n in range(len(c.slots))]


def lower_bound(c: Cluster) -> float:
    """No schedule can finish sooner (seconds).

    The largest of: the longest task on its fastest replica, and the fluid
    bound of a relaxation in which nodes of one class (hot or not, speed,
    free slots) pool their capacity: any real schedule, summed per class, is a
    fractional assignment of each task's work to the classes of its replicas
    that fits in ``T`` times each class's capacity; the least such ``T`` is
    found by bisection with a max-flow feasibility test.
    """
    longest = max(w / max(c.speed[n] for n in reps)
                  for w, reps in zip(c.work, c.replicas, strict=True))
    classes = node_classes(c)
    capacity: dict[tuple, float] = {}
    for n, k in enumerate(classes):
        capacity[k] = capacity.get(k, 0.0) + c.slots[n] * c.speed[n]
    demand: dict[frozenset, float] = {}
    for w, reps in zip(c.work, c.replicas, strict=True):
        key = frozenset(classes[n] for n in reps)
        demand[key] = demand.get(key, 0.0) + w
    total = sum(demand.values())
    low, high = total / sum(capacity.values()), total / min(capacity.values()) + longest
    for _ in range(50):
        mid = (low + high) / 2
        if _max_flow(demand, {k: v * mid for k, v in capacity.items()}) >= total * (1 - 1e-9):
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


def simulate(c: Cluster, policy: str, in_flight_factor: float = 2.0, backups: bool = True,
             backup_factor: float = 2.0, backup_min_s: float = 1.0, seed: int = 7) -> dict:
    """Run the job; return its makespan and task latencies (seconds).

    The proxy keeps ``in_flight_factor`` times the free slots dispatched, so
    that a slot freeing up finds work queued on its node.  With ``backups``,
    once nothing is left to dispatch, a task in flight for longer than
    ``backup_factor`` times the median task latency (and ``backup_min_s``)
    gets a copy on its best other replica; the first copy to finish wins and
    the other is dropped from its queue or stopped (as the proxy does).
    """
    rng = random.Random(seed)
    nodes = len(c.slots)
    tasks = len(c.work)
    limit = max(1, int(sum(c.slots) * in_flight_factor))
    running = [0] * nodes
    queues: list[deque[int]] = [deque() for _ in range(nodes)]
    mine = [0] * nodes  # this proxy's tasks on each node (queued or running)
    service_ms = [DEFAULT_SERVICE_MS] * nodes
    completed = [0] * nodes
    speeds = JobSpeeds()
    dispatched_at = [0.0] * tasks
    copies: dict[int, list[int]] = {}  # task -> nodes its live copies are on
    live: set[tuple[int, int]] = set()  # (task, node) copies running now
    backed_up: set[int] = set()
    latencies: list[float] = []
    events: list[tuple[float, int, int, int]] = []  # (time, kind, node, task)
    now = finished_at = 0.0
    next_task = 0
    ticking = False

    def start(node: int, task: int) -> None:
        running[node] += 1
        live.add((task, node))
        heapq.heappush(events, (now + c.work[task] / c.speed[node], 0, node, task))

    def place(task: int, exclude: tuple[int, ...] = ()) -> None:
        candidates = [n for n in c.replicas[task] if n not in exclude]
        keys = [str(n) for n in candidates]
        loads = {str(n): NodeLoad(running=running[n] + c.background[n], queued=len(queues[n]),
                                  slots=c.slots[n] + c.background[n], service_ms=service_ms[n])
                 for n in candidates}
        node = int(choose_node(keys, loads, {str(n): mine[n] for n in candidates}, policy, rng,
                               task_ms=speeds.estimates(keys)))
        mine[node] += 1
        copies.setdefault(task, []).append(node)
        if running[node] < c.slots[node]:
            start(node, task)
        else:
            queues[node].append(task)

    def free_slot(node: int) -> None:
        running[node] -= 1
        if queues[node]:
            start(node, queues[node].popleft())

    def drop_other_copies(task: int, winner: int) -> None:
        for node in copies.pop(task):
            if node == winner:
                continue
            mine[node] -= 1
            if (task, node) in live:
                live.discard((task, node))
                free_slot(node)
            else:
                queues[node].remove(task)

    def dispatch() -> None:
        nonlocal next_task, ticking
        while len(copies) < limit and next_task < tasks:
            dispatched_at[next_task] = now
            place(next_task)
            next_task += 1
        if backups and next_task == tasks and not ticking and copies:
            ticking = True
            heapq.heappush(events, (now + 0.25, 1, -1, -1))

    def back_up_stragglers() -> None:
        threshold = straggler_threshold_s(latencies, backup_factor, backup_min_s)
        for task, on in list(copies.items()):
            if task not in backed_up and now - dispatched_at[task] > threshold \
                    and len(on) < len(c.replicas[task]):
                backed_up.add(task)
                place(task, exclude=tuple(on))

    dispatch()
    while events:
        now, kind, node, task = heapq.heappop(events)
        if kind == 1:  # the tracker's tick
            ticking = False
            if latencies:
                back_up_stragglers()
            dispatch()
            continue
        if (task, node) not in live:
            continue  # a copy that was stopped
        live.discard((task, node))
        mine[node] -= 1
        took_ms = c.work[task] / c.speed[node] * 1000
        service_ms[node] = update_service_ms(service_ms[node], took_ms, completed[node])
        speeds.add(str(node), took_ms)
        completed[node] += 1
        latencies.append(now - dispatched_at[task])
        finished_at = now
        free_slot(node)
        drop_other_copies(task, node)
        dispatch()
    latencies.sort()
    return {"makespan_s": finished_at, "p50_s": latencies[len(latencies) // 2],
            "p99_s": latencies[int(len(latencies) * 0.99)], "backups": len(backed_up)}


def compare(s: Scenario) -> dict:
    """Random (ZeroCloud: no backups), random with backup tasks, load-aware with them."""
    started = time.perf_counter()
    cluster = build(s)
    result = {"scenario": s.name, "nodes": s.nodes, "tasks": s.tasks,
              "lower_bound_s": lower_bound(cluster),
              RANDOM: simulate(cluster, RANDOM, backups=False),
              f"{RANDOM}+backups": simulate(cluster, RANDOM),
              LOAD_AWARE: simulate(cluster, LOAD_AWARE)}
    result["random_over_load_aware"] = (result[RANDOM]["makespan_s"]
                                        / result[LOAD_AWARE]["makespan_s"])
    result["random_backups_over_load_aware"] = (result[f"{RANDOM}+backups"]["makespan_s"]
                                                / result[LOAD_AWARE]["makespan_s"])
    result["load_aware_over_bound"] = (result[LOAD_AWARE]["makespan_s"]
                                       / result["lower_bound_s"])
    result["seconds_to_simulate"] = time.perf_counter() - started
    return result


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    names = [r["scenario"] for r in results]
    series = [("lower bound", [r["lower_bound_s"] for r in results], "#999999"),
              ("load-aware", [r[LOAD_AWARE]["makespan_s"] for r in results], "#2b7bba"),
              ("random + backup tasks", [r[f"{RANDOM}+backups"]["makespan_s"] for r in results],
               "#f0ad4e"),
              ("random (ZeroCloud)", [r[RANDOM]["makespan_s"] for r in results], "#d9534f")]
    width = 0.2
    for i, (label, values, color) in enumerate(series):
        xs = [x + (i - 1.5) * width for x in range(len(names))]
        bars = ax.bar(xs, values, width, label=label, color=color)
        ax.bar_label(bars, fmt="%.0f s", fontsize=8)
    ax.set_xticks(range(len(names)), [
        f"{r['scenario']}\n{r['nodes']} nodes, {r['tasks']:,} tasks" for r in results])
    ax.set_yscale("log")
    ax.set_ylabel("makespan (simulated seconds, log scale)")
    ax.set_title("zerocompute scheduler: random vs load-aware placement")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--plot", help="write a PNG of the results here")
    args = parser.parse_args(argv)
    results = []
    for name in args.scenario or list(SCENARIOS):
        scenario = SCENARIOS[name]
        overrides = {k: v for k, v in (("nodes", args.nodes), ("tasks", args.tasks)) if v}
        if overrides:
            scenario = Scenario(**{**scenario.__dict__, **overrides})
        r = compare(scenario)
        results.append(r)
        la, rb, rz = r[LOAD_AWARE], r[f"{RANDOM}+backups"], r[RANDOM]
        print(f"{r['scenario']}: {r['nodes']} nodes, {r['tasks']} tasks; lower bound "
              f"{r['lower_bound_s']:.1f} s\n"
              f"  load-aware         {la['makespan_s']:7.1f} s = {r['load_aware_over_bound']:.2f}x "
              f"the bound; task latency p50 {la['p50_s']:.1f} s, p99 {la['p99_s']:.1f} s\n"
              f"  random + backups   {rb['makespan_s']:7.1f} s = "
              f"{r['random_backups_over_load_aware']:.2f}x load-aware; "
              f"p50 {rb['p50_s']:.1f} s, p99 {rb['p99_s']:.1f} s\n"
              f"  random (ZeroCloud) {rz['makespan_s']:7.1f} s = "
              f"{r['random_over_load_aware']:.2f}x load-aware; "
              f"p50 {rz['p50_s']:.1f} s, p99 {rz['p99_s']:.1f} s")
    print(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
