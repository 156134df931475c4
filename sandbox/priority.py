"""How executors yield to the storage they live beside.

An object server's first job is to serve objects.  Its executors (the
processes guests run in) start at a lower CPU and I/O priority than the
server, as Swift's own background daemons (replicator, auditor,
reconstructor) do with the same three options; where the host has the
cgroup ``cpu`` controller, they can also join a group of their own whose
CPU weight the operator sets.  In the ``[filter:zerocompute_object]``
section of ``object-server.conf``::

    # The executors' nice value (-20..19); empty leaves them at the server's.
    # nice_priority = 19
    # Their I/O class (IOPRIO_CLASS_RT, IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE) and
    # priority in it (0..7); an empty class leaves them at the server's.
    # ionice_class = IOPRIO_CLASS_BE
    # ionice_priority = 7
    # Their CPU scheduling policy: idle (SCHED_IDLE: run only when nothing else
    # wants the CPU, and give it up the moment something wakes), batch, or
    # empty to keep the server's.
    # cpu_policy =
    # A cgroup (v1 cpu controller or v2) the executors join, writable by the
    # server's user, and the CPU weight the server gives it at start (cpu.shares
    # in v1, 1024 a process's default; cpu.weight in v2, 100 the default).
    # "auto" makes (or reuses) zerocompute-executors under the host's cpu
    # controller when this server may, and goes without a group when not;
    # empty: no group.  The auto group's weight is 64 unless cpu_weight is set.
    # cpu_cgroup = auto
    # cpu_weight =
    # CPUs kept free of guests: the executors run on the others (the first N
    # CPUs of the server's affinity are the ones kept).
    # reserved_cpus = 0

Linux keeps a nice value and an I/O priority per thread, and a thread starts
with its creator's: the executor lowers its own before it starts any thread
(wasmtime's among them), so every thread a guest runs on has them.

Where the kernel groups processes by session (``kernel.sched_autogroup_enabled
= 1``, the default of most distributions), it shares the CPU between sessions
first and a nice value counts only inside one: executors niced in the object
server's session would still take their session's full share from the proxy,
the container and account servers, and other object servers.  So an executor
that is not in a cgroup of its own starts a session of its own and gives that
session its nice value (``/proc/self/autogroup``, sched(7)); it dies with its
server (``PR_SET_PDEATHSIG``), as it would have with the server's session.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from swift.common.utils import modify_priority
from swift.common.utils.libc import IO_CLASS_ENUM

PRIORITY_ENV = "ZEROCOMPUTE_EXECUTOR_PRIORITY"
AUTOGROUP_SWITCH = "/proc/sys/kernel/sched_autogroup_enabled"
PR_SET_PDEATHSIG = 1

DEFAULT_NICE = 19
DEFAULT_IONICE_CLASS = "IOPRIO_CLASS_BE"
DEFAULT_IONICE_PRIORITY = 7
DEFAULT_CPU_POLICY = ""  # idle starved guests past their wall-clock limits (doc/sandbox.md)
CPU_POLICIES = {"idle": os.SCHED_IDLE, "batch": os.SCHED_BATCH}
AUTO_CGROUP = "auto"
DEFAULT_CPU_WEIGHT = 64
EXECUTORS_GROUP = "zerocompute-executors"
# Where the cpu controller is mounted: cgroup v1 (either name), then a v2 root.
CPU_CONTROLLERS = ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup")
# The filter's options that leave executors at their server's priority.
AT_THE_SERVERS_PRIORITY = {"nice_priority": "", "ionice_class": "", "cpu_policy": "",
                           "cpu_cgroup": ""}


@dataclass(frozen=True)
class Priority:
    """The executors' priority: ``None`` leaves a setting at the object server's."""

    nice_priority: int | None = DEFAULT_NICE
    ionice_class: str | None = DEFAULT_IONICE_CLASS
    ionice_priority: int = DEFAULT_IONICE_PRIORITY
    cpu_cgroup: str = ""  # a group's directory, AUTO_CGROUP (resolved at start) or none
    cpu_policy: str | None = None
    reserved_cpus: int = 0

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> Priority:
        nice = _optional(conf, "nice_priority", str(DEFAULT_NICE))
        io_class = _optional(conf, "ionice_class", DEFAULT_IONICE_CLASS)
        io_priority = int(conf.get("ionice_priority", DEFAULT_IONICE_PRIORITY))
        if nice is not None and not -20 <= int(nice) <= 19:
            raise ValueError(f"zerocompute_object: nice_priority {nice} is not in -20..19")
        if io_class is not None and io_class not in IO_CLASS_ENUM:
            raise ValueError(f"zerocompute_object: ionice_class {io_class!r} is not one of "
                             f"{', '.join(sorted(IO_CLASS_ENUM))}")
        cpu_policy = _optional(conf, "cpu_policy", DEFAULT_CPU_POLICY)
        if cpu_policy is not None and cpu_policy not in CPU_POLICIES:
            raise ValueError(f"zerocompute_object: cpu_policy {cpu_policy!r} is not one of "
                             f"{', '.join(sorted(CPU_POLICIES))} (or empty)")
        if not 0 <= io_priority <= 7:
            raise ValueError(f"zerocompute_object: ionice_priority {io_priority} "
                             "is not in 0..7")
        reserved, cpus = int(conf.get("reserved_cpus", 0)), len(os.sched_getaffinity(0))
        if not 0 <= reserved < cpus:
            raise ValueError(f"zerocompute_object: reserved_cpus {reserved} leaves no CPU of "
                             f"this server's {cpus} for guests")
        return cls(nice_priority=None if nice is None else int(nice), ionice_class=io_class,
                   ionice_priority=io_priority,
                   cpu_cgroup=conf.get("cpu_cgroup", AUTO_CGROUP).strip(),
                   cpu_policy=cpu_policy, reserved_cpus=reserved)

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, text: str) -> Priority:
        return cls(**json.loads(text))


def _optional(conf: dict[str, str], name: str, default: str) -> str | None:
    value = conf.get(name, default).strip()
    return value or None


def lower_own_priority(priority: Priority, logger: Any) -> None:
    """Give this process (and every thread it starts from now on) ``priority``."""
    if priority.cpu_cgroup:
        join_cgroup(priority.cpu_cgroup)
    elif priority.nice_priority is not None and sessions_share_the_cpu():
        start_own_session(priority.nice_priority, logger)
    conf: dict[str, Any] = {}
    if priority.nice_priority is not None:
        conf["nice_priority"] = priority.nice_priority
    if priority.ionice_class is not None:
        conf["ionice_class"] = priority.ionice_class
        conf["ionice_priority"] = priority.ionice_priority
    modify_priority(conf, logger)
    if priority.cpu_policy is not None:
        os.sched_setscheduler(0, CPU_POLICIES[priority.cpu_policy], os.sched_param(0))
    if priority.reserved_cpus:
        os.sched_setaffinity(0, guest_cpus(os.sched_getaffinity(0), priority.reserved_cpus))


def guest_cpus(allowed: set[int], reserved: int) -> set[int]:
    """The CPUs guests may run on: ``allowed`` but its first ``reserved`` (never none).

    Measured on 2 cores (`doc/benchmarks.md`, "Storage first"): with both cores
    running guests, a small GET's p99 doubles even when the kernel hands a woken
    server the CPU at once (SCHED_IDLE); with one core kept free of guests it is
    1.3-1.4x idle, and the job gets the other cores only."""
    cpus = sorted(allowed)
    return set(cpus[reserved:] or cpus[-1:])


def executors_cgroup(controllers: tuple[str, ...] = CPU_CONTROLLERS) -> str:
    """The host's group for executors, made if need be: ``zerocompute-executors``
    under the first cpu controller this server may write ("" where there is none)."""
    for root in controllers:
        if not has_cpu_controller(root) or not os.access(root, os.W_OK):
            continue
        path = os.path.join(root, EXECUTORS_GROUP)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            return path
    return ""


def has_cpu_controller(root: str) -> bool:
    """Whether ``root`` is a cgroup v1 cpu hierarchy, or a v2 one that gives its
    children the cpu controller."""
    if os.path.exists(os.path.join(root, "cpu.shares")):
        return True
    try:
        with open(os.path.join(root, "cgroup.subtree_control")) as f:
            return "cpu" in f.read().split()
    except OSError:
        return False


def resolve_cgroup(priority: Priority, weight: int | None, logger: Any,
                   controllers: tuple[str, ...] = CPU_CONTROLLERS) -> Priority:
    """``priority`` with its group made concrete (the host's group for ``auto``) and
    given ``weight``; refuses, at the server's start, a group executors could not join."""
    cgroup = priority.cpu_cgroup
    if cgroup == AUTO_CGROUP:
        cgroup = executors_cgroup(controllers)
        if not cgroup:
            logger.info("zerocompute_object: no cgroup cpu controller this server may "
                        "write; executors yield by their nice value alone")
            return replace(priority, cpu_cgroup="")
        weight = DEFAULT_CPU_WEIGHT if weight is None else weight
    if cgroup:
        check_cgroup(cgroup)
        if weight is not None:
            set_cpu_weight(cgroup, weight)
    return replace(priority, cpu_cgroup=cgroup)


def check_cgroup(cgroup: str) -> None:
    """Refuse, at the server's start, a cgroup its executors could not join."""
    if not os.access(os.path.join(cgroup, "cgroup.procs"), os.W_OK):
        raise ValueError(f"zerocompute_object: cpu_cgroup {cgroup}: no cgroup.procs this "
                         "server may write (make the group, and give it to this user)")


def join_cgroup(cgroup: str) -> None:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def set_cpu_weight(cgroup: str, weight: int) -> None:
    """Set the group's CPU weight: ``cpu.shares`` under cgroup v1, ``cpu.weight``
    under v2 (whichever the directory has)."""
    for name in ("cpu.shares", "cpu.weight"):
        path = os.path.join(cgroup, name)
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(weight))
            return
    raise ValueError(f"zerocompute_object: {cgroup} has neither cpu.shares nor cpu.weight "
                     "(is it a cgroup with the cpu controller?)")


def sessions_share_the_cpu() -> bool:
    """Whether the kernel's autogroups are on (the CPU shared between sessions first)."""
    try:
        with open(AUTOGROUP_SWITCH) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def start_own_session(nice: int, logger: Any, patience_s: float = 5.0) -> None:
    """Leave the server's session for one whose CPU share has ``nice``'s weight.

    The kernel lets an unprivileged process change an autogroup's nice value
    only once per 100 ms system-wide (EAGAIN otherwise): executors starting
    together take turns.
    """
    parent = os.getppid()
    die_with_parent(parent)
    try:
        os.setsid()
    except PermissionError:  # already a group's leader: its own session is all we can use
        pass
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
            return
        except OSError as err:
            if err.errno != errno.EAGAIN or time.monotonic() > deadline:
                logger.warning("zerocompute executor: cannot set its session's nice value "
                               "(%s); guests compete with the servers as equals", err)
                return
            time.sleep(0.05)


def die_with_parent(parent: int) -> None:
    """Be killed when the server that started us dies (out of its session, its
    group's signals no longer reach us)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)
