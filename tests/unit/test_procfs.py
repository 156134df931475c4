"""The one reader of /proc: live processes, zombies, the dead, and odd command names."""

import os
import subprocess
import sys
import time

from zerocompute.sandbox import procfs


def test_this_process_reads_as_itself():
    me = procfs.read(os.getpid())
    assert me is not None and me.alive
    assert me.ppid == os.getppid() and me.pgid == os.getpgid(0)
    with open("/proc/self/cmdline", "rb") as f:
        own_argv = tuple(f.read().split(b"\0")[:-1])
    assert me.argv == own_argv and me.mentions(os.path.basename(sys.executable))
    assert me.cpu_s > 0
    assert me.nice == os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpid() in {p.pid for p in procfs.processes()}
    assert {t.pid for t in procfs.threads(os.getpid())} >= {os.getpid()}


def test_a_zombie_is_not_alive_and_a_reaped_process_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while procfs.read(child.pid).state != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procfs.pid_alive(child.pid)  # exited, not yet waited for
    child.wait()
    assert procfs.read(child.pid) is None and not procfs.pid_alive(child.pid)


def test_a_command_name_with_spaces_and_parentheses_parses():
    # The kernel's comm field is "(name)"; a name may hold ") " itself.
    child = subprocess.Popen([sys.executable, "-c", (
        "import ctypes, time; "
        "ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0); time.sleep(30)")])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/comm") as f:
                if f.read().strip() == "a) b (c":
                    break
            time.sleep(0.05)
        seen = procfs.read(child.pid)
        assert seen.ppid == os.getpid() and seen.state in "RS" and seen.alive
    finally:
        child.kill()
        child.wait()


def test_an_executor_is_known_by_its_module():
    executor = procfs.Process(1, "S", 0, 0, 0.0, 19, 0,
                              (b"/usr/bin/python3", b"-m", procfs.EXECUTOR_MODULE, b"7"))
    bystander = procfs.Process(2, "S", 0, 0, 0.0, 0, 0,
                               (b"grep", procfs.EXECUTOR_MODULE))
    assert executor.is_executor and not bystander.is_executor
    assert executor.mentions("python3") and not executor.mentions("/srv")


def test_a_family_is_the_group_and_the_children_in_sessions_of_their_own():
    """As a dev cluster's server (a group leader) and its executors (own sessions)."""
    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],"
         " start_new_session=True)\nprint(child.pid, flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, start_new_session=True)
    try:
        child = int(leader.stdout.readline())
        assert procfs.read(child).pgid != leader.pid
        family = procfs.families([leader.pid])[leader.pid]
        assert set(family) == {leader.pid, child}
        assert os.getpid() not in family
    finally:
        os.killpg(leader.pid, 9)
        os.killpg(child, 9)
        leader.wait()
