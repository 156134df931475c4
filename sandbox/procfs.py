"""What the kernel says about processes (``/proc``, proc(5)).

The scratch reaper asks whether an executor still runs; the dev cluster whether
its servers do; tests and benchmarks find executors by their command line and add
up the CPU the servers and their executors used.  One reader of
``/proc/<pid>/stat`` for all of them, free of eventlet so the CLI can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

EXECUTOR_MODULE = b"zerocompute.sandbox.executor"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Process:
    """One process (or thread) as ``/proc/<pid>/stat`` and ``cmdline`` describe it."""

    pid: int
    state: str  # "R", "S", ... "Z" for a zombie: dead, not yet reaped
    ppid: int
    pgid: int
    cpu_s: float  # user and system time so far
    nice: int
    policy: int  # SCHED_OTHER 0, SCHED_BATCH 3, SCHED_IDLE 5
    argv: tuple[bytes, ...]

    @property
    def alive(self) -> bool:
        return self.state != "Z"

    @property
    def is_executor(self) -> bool:
        return self.argv[1:3] == (b"-m", EXECUTOR_MODULE)

    def mentions(self, text: str) -> bool:
        """Whether one of its arguments holds ``text`` (a cluster's directory)."""
        return any(text.encode() in arg for arg in self.argv)


def read(pid: int, thread: int | None = None) -> Process | None:
    """Process ``pid`` (or its thread ``thread``), or None once it is gone."""
    where = f"/proc/{pid}" if thread is None else f"/proc/{pid}/task/{thread}"
    try:
        with open(f"{where}/stat") as f:
            stat = f.read()
        with open(f"{where}/cmdline", "rb") as f:
            argv = tuple(f.read().split(b"\0")[:-1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself.
    fields = stat.rsplit(")", 1)[1].split()
    return Process(pid=thread or pid, state=fields[0], ppid=int(fields[1]),
                   pgid=int(fields[2]),
                   cpu_s=(int(fields[11]) + int(fields[12])) / _TICKS_PER_S,
                   nice=int(fields[16]), policy=int(fields[38]), argv=argv)


def processes() -> Iterator[Process]:
    """Every process this one can see."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            process = read(int(entry))
            if process is not None:
                yield process


def families(leaders: Iterable[int], seen: Iterable[Process] | None = None
             ) -> dict[int, dict[int, Process]]:
    """For each process-group leader (a dev cluster's server), the processes of its
    group and every descendant of them, by pid: an executor starts a session of its
    own (``priority.py``) but stays its server's child."""
    procs = {p.pid: p for p in (processes() if seen is None else seen)}
    children: dict[int, list[int]] = {}
    for process in procs.values():
        children.setdefault(process.ppid, []).append(process.pid)
    found = {}
    for leader in leaders:
        family = [pid for pid, p in procs.items() if p.pgid == leader]
        for pid in family:  # grows as it goes: children, then theirs
            family.extend(c for c in children.get(pid, ()) if c not in family)
        found[leader] = {pid: procs[pid] for pid in family}
    return found


def threads(pid: int) -> Iterator[Process]:
    """The threads of process ``pid``."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return
    for tid in tids:
        thread = read(pid, int(tid))
        if thread is not None:
            yield thread


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    process = read(pid)
    return process is not None and process.alive
