"""Executors yield to storage: their every thread runs at the configured nice value, I/O
priority and cgroup (real executor processes, real wasmtime)."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import eventlet
import pytest

from tests.unit.test_executor import SPIN, group
from zerocompute.middleware.task import TaskFilterConfig
from zerocompute.sandbox import procfs
from zerocompute.sandbox.executor import CANCELLED, ExecutorPool
from zerocompute.sandbox.priority import (
    AT_THE_SERVERS_PRIORITY,
    AUTO_CGROUP,
    EXECUTORS_GROUP,
    Priority,
    resolve_cgroup,
    sessions_share_the_cpu,
    set_cpu_weight,
)

CGROUP_CPU = "/sys/fs/cgroup/cpu"


@pytest.fixture
def cache(tmp_path):
    os.makedirs(tmp_path / "scratch")
    return str(tmp_path)


def executors_of(parent: int) -> list[int]:
    return [p.pid for p in procfs.processes() if p.ppid == parent and p.is_executor]


class Seen(NamedTuple):
    threads: dict[str, tuple[int, str, str]]  # each thread's nice, ionice and cgroups
    policies: set[int]  # the threads' scheduling policies
    cpus: set[frozenset[int]]  # the threads' CPU affinities
    session: int
    autogroup: str


def threads_while_a_guest_runs(cache, tmp_path, priority) -> Seen:
    """The executor while its guest spins: its threads' priorities, its session."""
    policies, cpus = set(), set()
    pool = ExecutorPool(1, cache, priority=priority)
    server_side, requester = socket.socketpair()
    try:
        with open(os.devnull, "rb") as empty, open(tmp_path / "out", "wb") as out:
            fds = [os.dup(empty.fileno()), os.dup(out.fileno())]
        running = eventlet.spawn(pool.run, group(cache, SPIN), fds, 60, server_side)
        eventlet.sleep(1.5)  # the module is compiled and the guest spins
        (pid,) = executors_of(os.getpid())
        seen = {}
        for thread in procfs.threads(pid):
            tid = str(thread.pid)
            policies.add(thread.policy)
            cpus.add(frozenset(os.sched_getaffinity(thread.pid)))
            io = subprocess.run(["ionice", "-p", tid], capture_output=True, text=True).stdout
            with open(f"/proc/{pid}/task/{tid}/cgroup") as f:
                seen[tid] = (thread.nice, io.strip(), f.read())
        with open(f"/proc/{pid}/autogroup") as f:
            autogroup = f.read().strip()
        session = os.getsid(pid)
        requester.close()
        with eventlet.Timeout(20):
            assert running.wait().error == CANCELLED
        for fd in fds:
            os.close(fd)
        return Seen(seen, policies, cpus, session, autogroup)
    finally:
        server_side.close()
        pool.close()


def test_every_thread_of_an_executor_runs_at_the_default_low_priority(cache, tmp_path):
    seen = threads_while_a_guest_runs(cache, tmp_path, Priority())
    assert seen.cpus == {frozenset(os.sched_getaffinity(0))}, "no CPU is kept by default"
    assert len(seen.threads) > 1, "no threads but the main one: the inheritance is not tested"
    assert {nice for nice, _io, _cg in seen.threads.values()} == {19}
    assert {io for _nice, io, _cg in seen.threads.values()} == {"best-effort: prio 7"}
    assert seen.policies == {os.sched_getscheduler(0)}  # the policy is left alone


def test_every_thread_of_an_executor_takes_the_configured_cpu_policy(cache, tmp_path):
    seen = threads_while_a_guest_runs(cache, tmp_path, Priority(cpu_policy="idle"))
    assert len(seen.threads) > 1
    assert seen.policies == {os.SCHED_IDLE}


@pytest.mark.skipif(not sessions_share_the_cpu(), reason="the kernel's autogroups are off")
def test_where_sessions_share_the_cpu_an_executor_nices_a_session_of_its_own(cache,
                                                                             tmp_path):
    seen = threads_while_a_guest_runs(cache, tmp_path, Priority())
    assert seen.session != os.getsid(0)
    assert seen.autogroup.endswith(" nice 19"), seen.autogroup


def test_an_executor_in_a_session_of_its_own_dies_with_its_server(cache, tmp_path):
    # A "server" whose executor spins a guest (deaf to its socket), SIGKILLed.
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time, eventlet
        from tests.unit.test_executor import SPIN, group
        from zerocompute.sandbox.executor import ExecutorPool
        from zerocompute.sandbox.priority import Priority
        pool = ExecutorPool(1, {cache!r}, priority=Priority())
        fds = [os.open(os.devnull, os.O_RDONLY), os.open({str(tmp_path / "out")!r},
                                                         os.O_WRONLY | os.O_CREAT)]
        eventlet.spawn(pool.run, group({cache!r}, SPIN), fds, 60)
        eventlet.sleep(1.5)
        print(pool.idle.qsize(), pool.started, flush=True)
        eventlet.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert server.stdout.readline().split() == ["0", "1"]  # its executor is busy
        (executor,) = executors_of(server.pid)
        assert os.getsid(executor) != os.getsid(server.pid)
        server.send_signal(signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + 10
        while procfs.pid_alive(executor) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procfs.pid_alive(executor), "the executor outlived its server"
    finally:
        server.kill()
        server.wait()


def test_empty_settings_leave_the_executor_at_the_servers_priority(cache, tmp_path):
    seen = threads_while_a_guest_runs(
        cache, tmp_path, Priority.from_conf(AT_THE_SERVERS_PRIORITY))
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    own_io = subprocess.run(["ionice", "-p", str(os.getpid())], capture_output=True,
                            text=True).stdout.strip()
    assert {nice for nice, _io, _cg in seen.threads.values()} == {ours}
    assert {io for _nice, io, _cg in seen.threads.values()} == {own_io}
    assert seen.policies == {os.sched_getscheduler(0)}


@pytest.mark.skipif(not os.access(CGROUP_CPU, os.W_OK), reason="needs the cgroup v1 cpu "
                    "controller, writable (root)")
def test_executors_join_the_configured_cgroup_with_its_weight(cache, tmp_path):
    path = os.path.join(CGROUP_CPU, f"zerocompute-test-{os.getpid()}")
    os.makedirs(path)
    try:
        set_cpu_weight(path, 64)
        seen = threads_while_a_guest_runs(cache, tmp_path, Priority(cpu_cgroup=path))
        name = "/" + os.path.basename(path)
        for _nice, _io, cgroups in seen.threads.values():
            assert any(line.split(":")[1] in ("cpu,cpuacct", "cpu", "cpuacct,cpu") and
                       line.split(":")[2] == name for line in cgroups.splitlines()), cgroups
        with open(os.path.join(path, "cpu.shares")) as f:
            assert f.read().strip() == "64"
    finally:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                eventlet.sleep(0.1)


@pytest.mark.parametrize("conf, message", [
    ({"nice_priority": "20"}, "nice_priority 20 is not in -20..19"),
    ({"ionice_class": "IOPRIO_CLASS_FAST"}, "ionice_class 'IOPRIO_CLASS_FAST' is not one of"),
    ({"ionice_priority": "8"}, "ionice_priority 8 is not in 0..7"),
    ({"cpu_policy": "fifo"}, "cpu_policy 'fifo' is not one of batch, idle"),
    ({"cpu_cgroup": "", "cpu_weight": "64"}, "cpu_weight needs cpu_cgroup"),
])
def test_a_bad_priority_setting_stops_the_filter_with_its_name(conf, message):
    with pytest.raises(ValueError, match=message):
        TaskFilterConfig.from_conf({"secret": "s", **conf})


def test_the_defaults_protect_storage():
    config = TaskFilterConfig.from_conf({"secret": "s"})
    assert config.priority == Priority(19, "IOPRIO_CLASS_BE", 7, AUTO_CGROUP, None)
    assert config.cpu_weight is None  # the host's group takes DEFAULT_CPU_WEIGHT


def fake_controller(root, v2=False, group_files=True):
    """A directory laid out as a cpu controller's root, whose executors' group (made
    beforehand, as the kernel would fill it) has the files a group has."""
    os.makedirs(root)
    (root / ("cgroup.subtree_control" if v2 else "cpu.shares")).write_text(
        "cpuset cpu io\n" if v2 else "1024\n")
    if group_files:
        group = root / EXECUTORS_GROUP
        os.makedirs(group)
        (group / "cgroup.procs").write_text("")
        (group / ("cpu.weight" if v2 else "cpu.shares")).write_text("100\n" if v2 else "1024\n")
    return str(root)


class Log:
    def __init__(self):
        self.lines = []

    def info(self, message, *args):
        self.lines.append(message % args)


@pytest.mark.parametrize("v2, weight_file", [(False, "cpu.shares"), (True, "cpu.weight")])
def test_auto_puts_executors_in_the_hosts_group_with_the_default_weight(tmp_path, v2,
                                                                        weight_file):
    no_cpu = tmp_path / "memory"
    os.makedirs(no_cpu)  # a hierarchy without the cpu controller is passed over
    v2_without_cpu = tmp_path / "unified"
    os.makedirs(v2_without_cpu)
    (v2_without_cpu / "cgroup.subtree_control").write_text("memory pids\n")
    root = fake_controller(tmp_path / "cpu", v2=v2)
    log = Log()
    priority = resolve_cgroup(Priority(cpu_cgroup=AUTO_CGROUP), None, log,
                              (str(no_cpu), str(v2_without_cpu), root))
    assert priority == Priority(cpu_cgroup=os.path.join(root, EXECUTORS_GROUP))
    with open(os.path.join(priority.cpu_cgroup, weight_file)) as f:
        assert f.read().strip() == "64"
    assert log.lines == []
    assert resolve_cgroup(Priority(cpu_cgroup=AUTO_CGROUP), 200, log, (root,)) == priority
    with open(os.path.join(priority.cpu_cgroup, weight_file)) as f:
        assert f.read().strip() == "200", "cpu_weight is given to the host's group"


def test_auto_without_a_group_it_may_join_falls_back_to_the_nice_value_and_says_so(
        tmp_path):
    made_but_empty = fake_controller(tmp_path / "cpu", group_files=False)  # no cgroup.procs
    log = Log()
    priority = resolve_cgroup(Priority(cpu_cgroup=AUTO_CGROUP), None, log,
                              (str(tmp_path / "absent"), made_but_empty))
    assert priority == Priority(cpu_cgroup="")
    assert log.lines == ["zerocompute_object: no cgroup cpu controller this server may write; "
                         "executors yield by their nice value alone"]


def test_an_empty_cpu_cgroup_means_no_group_even_where_the_host_has_one(tmp_path):
    root = fake_controller(tmp_path / "cpu")
    config = TaskFilterConfig.from_conf({"secret": "s", "cpu_cgroup": ""})
    assert resolve_cgroup(config.priority, None, Log(), (root,)).cpu_cgroup == ""
    with open(os.path.join(root, EXECUTORS_GROUP, "cpu.shares")) as f:
        assert f.read().strip() == "1024", "the host's group was touched"


@pytest.mark.skipif(not os.access(CGROUP_CPU, os.W_OK), reason="needs the cgroup v1 cpu "
                    "controller, writable (root)")
def test_by_default_executors_run_in_the_hosts_executors_group(cache, tmp_path):
    priority = resolve_cgroup(TaskFilterConfig.from_conf({"secret": "s"}).priority, None,
                              Log())
    assert priority.cpu_cgroup == os.path.join(CGROUP_CPU, EXECUTORS_GROUP)
    seen = threads_while_a_guest_runs(cache, tmp_path, priority)
    name = "/" + EXECUTORS_GROUP
    assert len(seen.threads) > 1
    for _nice, _io, cgroups in seen.threads.values():
        assert any(line.split(":")[2] == name for line in cgroups.splitlines()
                   if "cpu" in line.split(":")[1].split(",")), cgroups
    with open(os.path.join(priority.cpu_cgroup, "cpu.shares")) as f:
        assert f.read().strip() == "64"


def test_a_directory_without_the_cpu_controller_is_refused(tmp_path):
    with pytest.raises(ValueError, match="neither cpu.shares nor cpu.weight"):
        set_cpu_weight(str(tmp_path), 64)


def test_a_cgroup_the_executors_could_not_join_stops_the_filter(tmp_path):
    from zerocompute.middleware.task import TaskMiddleware

    config = TaskFilterConfig.from_conf({"secret": "s", "cpu_cgroup": str(tmp_path / "no"),
                                         "cache_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="no cgroup.procs this server may write"):
        TaskMiddleware(None, config, pool=object())


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="keeping a CPU needs two")
def test_reserved_cpus_keeps_the_first_cpus_free_of_every_guest_thread(cache, tmp_path):
    seen = threads_while_a_guest_runs(cache, tmp_path, Priority(reserved_cpus=1))
    assert len(seen.threads) > 1
    assert seen.cpus == {frozenset(sorted(os.sched_getaffinity(0))[1:])}


def test_reserving_every_cpu_is_refused_at_the_servers_start():
    every = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=f"reserved_cpus {every} leaves no CPU"):
        TaskFilterConfig.from_conf({"secret": "s", "reserved_cpus": str(every)})
    assert TaskFilterConfig.from_conf(
        {"secret": "s", "reserved_cpus": str(every - 1)}).priority.reserved_cpus == every - 1
