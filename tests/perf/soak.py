"""Chaos soak: every kind of job from two accounts, ordinary traffic, and servers
SIGKILLed and restarted at random moments.

Run from the repository: ``make soak`` (or ``.venv/bin/python -m tests.perf.soak
[--rounds 12] [--seed N] [--kill-every 3]``).  Minutes, not hours.

One dev cluster of four object servers and two proxies.  For ``--rounds``
rounds, two accounts (test:tester through the first proxy, test2:tester2
through the second) each run a job of every kind at once
(``zerocompute.dev.every_job``: map-only, MapReduce with a combiner, steps,
async, execution on GET, erasure-coded and SLO inputs), while a third stream
PUTs and GETs small objects through the first proxy, and a chaos thread
SIGKILLs an object server or the second proxy every ``--kill-every`` seconds
on average and restarts it one to five seconds later.  A job may fail (its
proxy died under it, its node died and no copy was left); a job that
succeeds with a wrong answer may not.  At the end it prints the jobs
started, succeeded and failed (each with its reason) and checks:

- every succeeded job's outputs are exact;
- no failed job left a ``_SUCCESS`` beside outputs that are not exact, or a
  gathered output object that is not exact (whatever looks complete is);
- every ordinary PUT that was acknowledged reads back intact;
- nothing leaked once the cluster settles: no map outputs kept (the object
  servers forget a dead proxy's after ``shuffle_max_age_s``, 20 s here), no
  scratch files, no executor without its server or beyond its slots, and no
  async job left running in its state record.

It exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import tempfile
import threading
import time
import traceback
from typing import Any

from zerocompute.client import job_status, submit_job
from zerocompute.dev.devcluster import DevCluster
from zerocompute.dev.every_job import (
    WC,
    JobFailed,
    Kind,
    gathered_counts,
    job_kinds,
    parts_counts,
    stage,
    wrong_counts,
)
from zerocompute.sandbox import procfs

TENANTS = (("test:tester", "proxy"), ("test2:tester2", "proxy2"))
SHUFFLE_MAX_AGE_S = 20
FINAL_STATES = ("succeeded", "failed", "cancelled")


class Chaos(threading.Thread):
    """Kills a random object server or the second proxy now and then, restarts it."""

    def __init__(self, cluster: DevCluster, rng: random.Random, mean_s: float):
        super().__init__(daemon=True)
        self.cluster, self.rng, self.mean_s = cluster, rng, mean_s
        self.stopping = threading.Event()
        self.kills: list[tuple[float, str, float]] = []  # when, what, down for (s)
        self.began = time.monotonic()
        self.errors: list[str] = []

    def run(self) -> None:
        victims = [s for s in self.cluster.servers if s.kind == "object"]
        victims.append(self.cluster.server("proxy2"))
        while not self.stopping.wait(self.rng.expovariate(1 / self.mean_s)):
            victim = self.rng.choice(victims)
            killed = time.monotonic()
            self.cluster.kill(victim)
            self.stopping.wait(self.rng.uniform(1, 5))
            self.kills.append((killed - self.began, victim.name, time.monotonic() - killed))
            try:
                self.cluster.restart(victim)
            except Exception as err:  # noqa: BLE001 - reported at the end
                self.errors.append(f"restart of {victim.name}: {err}")

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class Traffic(threading.Thread):
    """Ordinary small PUTs and GETs; remembers what each acknowledged PUT stored."""

    def __init__(self, cluster: DevCluster, rng: random.Random):
        super().__init__(daemon=True)
        self.conn = cluster.connection("test2:tester2", "proxy", retries=2)
        self.conn.put_container("traffic")
        self.rng = rng
        self.stopping = threading.Event()
        self.acked: dict[str, str] = {}
        self.failed: collections.Counter[str] = collections.Counter()
        self.bad_reads: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(0.1):
            n += 1
            name, body = f"o{n}", os.urandom(self.rng.randint(1, 64 * 1024))
            try:
                self.conn.put_object("traffic", name, body)
                self.acked[name] = hashlib.md5(body).hexdigest()
                old = self.rng.choice(list(self.acked))
                _headers, got = self.conn.get_object("traffic", old)
                if hashlib.md5(got).hexdigest() != self.acked[old]:
                    self.bad_reads.append(old)
            except Exception as err:  # noqa: BLE001 - counted: a request may fail
                self.failed[type(err).__name__] += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def read_back(self, patience_s: float = 90.0) -> list[str]:
        """The acknowledged objects that do not read back as they were stored.

        A read that fails is tried again until ``patience_s`` has passed: right
        after the chaos, Swift's proxy still error-limits the nodes that died (60 s
        after ten errors) and may answer 404 or 503 for an object whose every
        copy is on them.  A lost object fails however long one waits.
        """
        bad = list(self.bad_reads)
        unread = dict(self.acked)
        deadline = time.monotonic() + patience_s
        while unread:
            for name, md5 in list(unread.items()):
                try:
                    _headers, got = self.conn.get_object("traffic", name)
                except Exception as err:  # noqa: BLE001 - tried again below
                    unread[name] = md5
                    last = f"{name}: {str(err)[:120]}"
                    continue
                del unread[name]
                if hashlib.md5(got).hexdigest() != md5:
                    bad.append(name)
            if unread and time.monotonic() > deadline:
                bad += [f"{name} (last: {last})" for name in unread]
                break
            if unread:
                time.sleep(5)
        return bad


class Outcome:
    def __init__(self, user: str, kind: Kind, round_: int):
        self.user, self.kind, self.round = user, kind, round_
        self.ok = False
        self.reason = ""
        self.wrong: str | None = None  # a wrong answer: the one unforgivable outcome
        self.async_jobs: list[str] = []


def run_kind(user: str, kind: Kind, round_: int) -> Outcome:
    outcome = Outcome(user, kind, round_)
    try:
        outcome.wrong = wrong_counts(kind.run())
        outcome.ok = outcome.wrong is None
    except JobFailed as err:
        report = err.report
        errors = [t.get("error") for t in report.get("tasks", []) if t.get("error")]
        outcome.reason = (f"{report.get('status')}: {report.get('error') or ''} "
                          f"{errors[:1]}").strip()
    except Exception as err:  # noqa: BLE001 - the proxy died under it, for one
        outcome.reason = f"{type(err).__name__}: {str(err)[:200]}"
    return outcome


def run_round(conns: dict[str, Any], round_: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def tenant(user: str) -> None:
        # The kinds of one round run one after another per tenant, the tenants at once.
        async_ids: list[str] = []
        for kind in job_kinds(conns[user], f"-r{round_}", async_ids):
            outcome = run_kind(user, kind, round_)
            outcome.async_jobs = list(async_ids)
            async_ids.clear()
            with lock:
                outcomes.append(outcome)
            print(f"  round {round_ + 1}, {user}, {kind.what}: "
                  f"{'ok' if outcome.ok else outcome.wrong or outcome.reason}", flush=True)

    threads = [threading.Thread(target=tenant, args=(user,)) for user in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def what_a_failed_job_left(conn: Any, kind: Kind) -> str | None:
    """Whatever of a failed job's outputs looks complete must be exact: parts beside
    a ``_SUCCESS``, and a gathered output object."""
    if not kind.output:
        return None
    _headers, listing = conn.get_container("zc-out", prefix=kind.output)
    for name in sorted(item["name"] for item in listing):
        if name.endswith("/_SUCCESS"):
            wrong = wrong_counts(parts_counts(conn, name[:-len("_SUCCESS")]))
            if wrong:
                return f"{name} beside parts with {wrong}"
        elif "/" not in name:
            wrong = wrong_counts(gathered_counts(conn, name))
            if wrong:
                return f"{name}, a gathered output, has {wrong}"
    return None


def leaks(cluster: DevCluster, conns: dict[str, Any], async_ids: list[tuple[str, str]],
          ) -> list[str]:
    found = []
    cache = os.path.join(cluster.directory, "cache")
    for root, _dirs, files in os.walk(os.path.join(cache, "shuffle")):
        found += [f"map output kept: {os.path.join(root, f)}" for f in files]
    scratch = os.path.join(cache, "scratch")
    if os.path.isdir(scratch):
        found += [f"scratch file left: {name}" for name in os.listdir(scratch)]
    found += executor_leaks(cluster)
    for user, job in async_ids:
        try:
            state = job_status(conns[user], job)
        except Exception as err:  # noqa: BLE001
            found.append(f"async job {job} of {user}: no state ({err})")
            continue
        if state.get("status") not in FINAL_STATES:
            found.append(f"async job {job} of {user} still {state.get('status')}")
    return found


def executor_leaks(cluster: DevCluster) -> list[str]:
    servers = {cluster.state["pids"].get(s.name): s for s in cluster.servers
               if s.kind == "object"}
    per_server: collections.Counter[int] = collections.Counter()
    found = []
    for process in procfs.processes():
        if not process.is_executor or not process.alive or \
                not process.mentions(cluster.directory):
            continue
        if process.ppid not in servers:
            found.append(f"executor {process.pid} without its server (parent {process.ppid})")
        per_server[process.ppid] += 1
    for pid, count in per_server.items():
        server = servers.get(pid)
        slots = cluster.slots.get(server.name, cluster.task_slots) if server else 0
        if server is not None and count > slots:
            found.append(f"{server.name} has {count} executors for {slots} slots")
    return found


def settle(conns: dict[str, Any]) -> None:
    """Give the object servers time to forget dead proxies' map outputs, then make
    each reap them: a server reaps when a group arrives, so run a job over every
    of the ordinary objects (hundreds: a group reaches every server)."""
    time.sleep(SHUFFLE_MAX_AGE_S + 1)
    conn = conns["test2:tester2"]
    for _attempt in range(6):  # the proxy may still error-limit nodes that died
        report = submit_job(conn, {"name": "settle", "map": {
            "exec": WC, "args": ["count"], "inputs": ["swift://~/traffic/o1*"]},
            "output": "swift://~/zc-out/settle"})
        if report["status"] == "succeeded":
            return
        time.sleep(10)
    raise RuntimeError(f"the settling job failed: {report.get('error')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kill-every", type=float, default=3.0,
                        help="mean seconds between kills")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    print(f"soak: {args.rounds} rounds, seed {seed}, a kill every {args.kill_every:g} s "
          "on average", flush=True)
    cluster = DevCluster(tempfile.mkdtemp(prefix="zc-soak-"), proxies=2,
                         object_options={"shuffle_max_age_s": str(SHUFFLE_MAX_AGE_S)}).start()
    problems: list[str] = []
    outcomes: list[Outcome] = []
    chaos = traffic = None
    took = 0.0
    try:
        conns = {user: cluster.connection(user, proxy, retries=4)
                 for user, proxy in TENANTS}
        for conn in conns.values():
            stage(conn)
        traffic, chaos = Traffic(cluster, rng), Chaos(cluster, rng, args.kill_every)
        traffic.start()
        chaos.start()
        began = time.monotonic()
        try:
            for n in range(args.rounds):
                outcomes += run_round(conns, n)
        finally:
            chaos.stop()
            traffic.stop()
        took = time.monotonic() - began
        for server in cluster.servers:
            cluster.restart(server)
        problems += chaos.errors
        for outcome in outcomes:
            if outcome.wrong:
                problems.append(f"{outcome.user} {outcome.kind.what} round "
                                f"{outcome.round + 1} SUCCEEDED WITH A WRONG ANSWER: "
                                f"{outcome.wrong}")
            elif not outcome.ok:
                left = what_a_failed_job_left(conns[outcome.user], outcome.kind)
                if left:
                    problems.append(f"{outcome.user} {outcome.kind.what} round "
                                    f"{outcome.round + 1} failed and left {left}")
        settle(conns)
        problems += [f"acknowledged PUT {name} does not read back" for name in
                     traffic.read_back()]
        async_ids = [(o.user, job) for o in outcomes for job in o.async_jobs]
        problems += leaks(cluster, conns, async_ids)
    except Exception:  # noqa: BLE001 - the soak itself broke: say where
        problems.append("the soak stopped: " + traceback.format_exc())
    finally:
        cluster.stop(wipe=True)
    print_summary(outcomes, took, chaos, traffic, problems)
    return 1 if problems else 0


def print_summary(outcomes: list[Outcome], took: float, chaos: Chaos | None,
                  traffic: Traffic | None, problems: list[str]) -> None:
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok and not o.wrong]
    print(f"\n{len(outcomes)} jobs started in {took:.0f} s, {len(ok)} succeeded, "
          f"{len(failed)} failed, {len(outcomes) - len(ok) - len(failed)} wrong")
    if chaos is not None:
        print(f"{len(chaos.kills)} SIGKILLs: " + ", ".join(
            f"{name} at {at:.1f} s (down {down:.1f} s)" for at, name, down in chaos.kills))
    for outcome in failed:
        print(f"  failed: {outcome.user} {outcome.kind.what} round {outcome.round + 1}: "
              f"{outcome.reason}")
    if traffic is not None:
        print(f"ordinary traffic: {len(traffic.acked)} PUTs acknowledged, failed requests "
              f"{dict(traffic.failed) or 0}")
    if problems:
        print(f"\n{len(problems)} PROBLEMS:")
        for problem in problems:
            print(f"  {problem}")
    else:
        print("every check passed: succeeded outputs exact, failed jobs left nothing that "
              "looks complete, every acknowledged PUT intact, nothing leaked")


if __name__ == "__main__":
    raise SystemExit(main())
