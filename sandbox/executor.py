"""Executor processes: where guests run, apart from the object server.

The object-server filter keeps a pool of executor processes (``slots`` of
them, started on demand).  Each is ``python -m zerocompute.sandbox.executor``
connected by a ``SOCK_SEQPACKET`` socket pair.  A task is one message carrying
two file descriptors: the open input object and the output file.
The executor needs no access to the object server's files: it reads the
input through ``/proc/self/fd`` of the descriptor it received.

A task is a :class:`zerocompute.wire.TaskGroup` of one task; the executor
answers ``{"phase": "running"}`` once the module is ready, and a
:class:`zerocompute.wire.TaskResult` when the guest is done.  If it crashes
(whatever a runtime bug or a guest did), exceeds its CPU limit (the kernel's
``RLIMIT_CPU`` kills it with SIGXCPU) or misses the wall-clock deadline by
more than a grace period,
the object server sees only a dead or killed child: it reports that task's
failure and starts a fresh executor.  A task whose requester hung up (its
attempt was cancelled) is interrupted instead: the object server sends the
task's number on a second socket pair, the executor's wasmtime epoch jumps past
the guest's deadline, and the executor, whole, takes the next task (starting a
new one costs about 0.3 s of CPU); only a guest the interrupt cannot reach
within a quarter of a second has its executor killed.  The eventlet hub never waits on a
guest: the parent's reads go through the hub (``trampoline``).  A Python task runs
in the interpreter the executor kept from the job's last task, if it has one
(:mod:`zerocompute.sandbox.resident`).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import eventlet

from zerocompute import shuffle
from zerocompute.sandbox import ec, python, shuffle_io
from zerocompute.sandbox.priority import PRIORITY_ENV, Priority, lower_own_priority
from zerocompute.sandbox.procfs import EXECUTOR_MODULE, pid_alive
from zerocompute.sandbox.shuffle_core import Core, CoreFailed
from zerocompute.sandbox.shuffle_io import SECRET_ENV
from zerocompute.sandbox.wasm import (
    ExecutableStore,
    GuestLimits,
    InvalidExecutable,
    Mount,
    WasmRuntime,
    soft_rlimit,
)
from zerocompute.wire import PREPARE_TIMEOUT_S, ShuffleSpec, TaskGroup, TaskResult

MAX_MESSAGE = 1 << 20
GRACE_S = 5.0


# -- the executor process ---------------------------------------------------------
def serve(sock: socket.socket, cache_dir: str, control: socket.socket | None = None) -> None:
    """Run tasks from ``sock`` until it closes (the executor's main loop); cancels of
    the task running now arrive on ``control``."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-size output fails the write instead
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    runtime = WasmRuntime(cache_dir)
    executables = ExecutableStore(cache_dir)
    if control is not None:
        threading.Thread(target=obey_cancels, args=(control, runtime), daemon=True,
                         name="zerocompute-cancels").start()
    number = 0
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 2)
        except (ConnectionError, OSError):
            return
        if not message:
            return
        number += 1
        runtime.begin(number)
        try:
            reply = run_task(runtime, executables, cache_dir, TaskGroup.decode(message), fds,
                             lambda: sock.send(RUNNING))
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(reply.frame_head())


RUNNING = b'{"phase": "running"}'


def obey_cancels(control: socket.socket, runtime: WasmRuntime) -> None:
    """Each message on ``control`` is the number of a task to stop (counted from 1 in
    the order tasks arrived); a number that is not the running task's is stale."""
    while True:
        try:
            message = control.recv(64)
        except OSError:
            return
        if not message:
            return
        with contextlib.suppress(ValueError):
            runtime.interrupt(int(message))


def prepare(runtime: WasmRuntime, executables: ExecutableStore, cache_dir: str, etag: str,
            kind: str, exec_name: str, args: Sequence[str], resident: bool = False,
            ) -> tuple[Any, list[str], list[tuple[str, str]], list[Mount]]:
    """A guest's module, argv, the runtime's environment variables and mapped
    directories (:class:`InvalidExecutable`); a Python guest's, for a ``resident``
    interpreter, with the argv of its task (:meth:`WasmRuntime.run_resident`)."""
    if kind == "python":
        module = runtime.prepare(python.interpreter_path(), key="python", resident=resident)
        directory = python.script_dir(cache_dir, etag, executables.path(etag))
        python.ensure_bytecode(directory, lambda argv, writable: runtime.run(
            runtime.prepare(python.interpreter_path(), key="python", tool=True), os.devnull,
            os.devnull, argv, [], GuestLimits(time_s=60),
            [Mount(writable, python.GUEST_DIR, True)]))
        return (module, (python.task_argv if resident else python.argv)(list(args)),
                python.ENV, [Mount(directory, python.GUEST_DIR)])
    return runtime.prepare(executables.path(etag), key=etag), [exec_name, *args], [], []


def guest_env(task_env: list[tuple[str, str]], runtime_env: list[tuple[str, str]]
              ) -> list[tuple[str, str]]:
    """The task's variables, and the runtime's where the task sets none of that name
    (the guest sees each name once, whichever way it reads its environment)."""
    own = {name for name, _value in task_env}
    return [*task_env, *((name, value) for name, value in runtime_env if name not in own)]


def run_task(runtime: WasmRuntime, executables: ExecutableStore, cache_dir: str,
             task: TaskGroup, fds: list[int], started) -> TaskResult:
    """Prepare the module, say so through ``started``, run the guest (the group's
    one task) and, in a MapReduce job, the shuffle's work around it; describe the
    result."""
    (spec,) = task.tasks
    resident = shares_interpreter(task)
    try:
        module, argv, runtime_env, mounts = prepare(
            runtime, executables, cache_dir, task.exec_etag, task.runtime, task.exec_name,
            task.args, resident)
    except InvalidExecutable as err:
        return TaskResult(spec.task, invalid=str(err))
    stdin = f"/proc/self/fd/{fds[0]}"
    stdout = f"/proc/self/fd/{fds[1]}"
    input_fd = fds[0]
    limits = GuestLimits.from_task(task.limits)
    bytes_in = 0
    rebuilt = None
    with contextlib.ExitStack() as cleanup:
        def scratch_dir(kind: str) -> str:
            """A directory of this task's own, removed when it ends (named with this
            process's pid: if the process is killed first, its server removes it,
            :func:`reap_scratch`)."""
            return cleanup.enter_context(tempfile.TemporaryDirectory(
                dir=os.path.join(cache_dir, "scratch"), prefix=f"{kind}-{os.getpid()}-"))
        if spec.ec is not None:
            stdin = os.path.join(scratch_dir("ec"), "object")
            local_index = spec.ec.local_index
            try:
                with open(stdin, "wb") as out:
                    if spec.split is not None:  # only the segments that hold the split
                        bytes_in, rebuilt = ec.rebuild_range(fds[0], local_index, spec.ec,
                                                             spec.split, spec.exact, out)
                    else:
                        rebuilt = ec.rebuild(fds[0], local_index, spec.ec, out)
            except ec.ECError as err:
                return TaskResult(spec.task, retry=f"erasure-coded input: {err}")
            input_fd = cleanup.enter_context(open(stdin, "rb")).fileno()
        if spec.split is not None and spec.ec is None:
            stdin, bytes_in = split_input(input_fd, spec.split, scratch_dir("split"),
                                          spec.exact)
        elif spec.edges is not None:
            stdin, bytes_in = segment_input(input_fd, spec.edges, scratch_dir("segment"))
        core = None
        if task.shuffle is not None:
            try:
                core = shuffle_core(runtime, cache_dir, task, spec, scratch_dir("shuffle"),
                                    limits)
            except CoreFailed as err:
                return TaskResult(spec.task, error=str(err))
        if task.kind == "reduce":
            try:
                stdin, lost = shuffle_io.reduce_input(core, spec, task.shuffle.id,
                                                          os.environ[shuffle_io.ROOT_ENV])
            except CoreFailed as err:  # a damaged map output: the records' fault
                return TaskResult(spec.task, error=str(err), shuffle_steps=core.steps.as_list())
            if lost:
                return TaskResult(spec.task, lost=lost, shuffle_steps=core.steps.as_list(),
                                  error=f"map output lost: {', '.join(lost)}")
        elif core is not None:  # a map's output stays here, for the shuffle
            stdout = os.path.join(core.scratch, shuffle_io.MAP_OUTPUT)
        started()
        cpu_before = _cpu_seconds()
        with _cpu_limit(float(task.limits.cpu_s)):
            env = guest_env([*task.env, *spec.env], runtime_env)
            if resident:
                ran = runtime.run_resident(module, resident_key(task), python.RESIDENT_ARGV,
                                           runtime_env, mounts, stdin, stdout, argv, env, limits)
            else:
                ran = runtime.run(module, stdin, stdout, argv, env, limits, mounts)
            cpu_ms = (_cpu_seconds() - cpu_before) * 1000
            result = TaskResult(spec.task, exit=ran.exit, error=ran.error, cpu_ms=cpu_ms,
                                stdout_bytes=ran.stdout_bytes, bytes_in=bytes_in,
                                bytes_local=rebuilt.local_bytes if rebuilt else 0,
                                bytes_peer=rebuilt.peer_bytes if rebuilt else 0,
                                fragments=rebuilt.fragments if rebuilt else None,
                                stderr=ran.stderr_tail.decode("utf-8", "replace"), ms=ran.ms,
                                counters=ran.counters)
            if core is not None and task.kind == "map":
                result.stdout_bytes = 0
                if ran.ok:
                    shuffle_map_output(runtime, executables, cache_dir, task, spec, core,
                                       limits, fds[1], result)
        if core is not None:
            result.shuffle_steps = core.steps.as_list()
    return result


def shares_interpreter(task: TaskGroup) -> bool:
    """Whether a task runs in the interpreter kept for its run's tasks (resident.py):
    a Python task of a known run (tasks of none start their own, as on their own)."""
    return task.runtime == "python" and bool(task.run)


def resident_key(task: TaskGroup) -> tuple:
    """The tasks that may share a resident interpreter: of one run of a job, account,
    executable and limits (its store's)."""
    return (task.run, task.account, task.exec_etag, tuple(task.limits.to_dict().items()))


def shuffle_core(runtime: WasmRuntime, cache_dir: str, task: TaskGroup, spec: Any,
                 scratch: str, limits: GuestLimits) -> Core:
    """The shuffle core for a task of a MapReduce job: a map's writes its partitions
    into the map's directory of this node's shuffle (an earlier attempt's removed)."""
    output = None
    if task.kind == "map" and not task.shuffle.sample:
        output = shuffle_io.map_dir(os.environ[shuffle_io.ROOT_ENV], task.shuffle.id, spec.task)
        shutil.rmtree(output, ignore_errors=True)
        os.makedirs(output)
    return Core(runtime, cache_dir, task.shuffle, scratch, output, limits)


def shuffle_map_output(runtime: WasmRuntime, executables: ExecutableStore, cache_dir: str,
                       task: TaskGroup, spec: Any, core: Core, limits: GuestLimits,
                       stdout_fd: int, result: TaskResult) -> None:
    """What a map of a MapReduce job does once its guest is done: sample its keys (for
    a total order's split points; they are its stdout), or partition its output."""
    try:
        if task.shuffle.sample:
            path = shuffle_io.sample_keys(core, task.shuffle.sample)
            with open(path, "rb") as keys:
                result.stdout_bytes = copy_range(keys.fileno(), stdout_fd, 0,
                                                 os.fstat(keys.fileno()).st_size)
            return
        combine = None
        if task.shuffle.combine is not None:
            combine = Combiner(runtime, executables, cache_dir, task.shuffle, spec, limits,
                               core)
        result.partitions, result.records, result.records_combined = \
            shuffle_io.partition_output(core, combine)
    except (CoreFailed, shuffle_io.CombinerFailed, InvalidExecutable) as err:
        result.error = str(err)
        if core.mounts[1:]:
            shutil.rmtree(core.mounts[1].host, ignore_errors=True)


def split_input(fd: int, split: tuple[int, int], scratch: str,
                exact: bool = False) -> tuple[str, int]:
    """The lines a split reads (:func:`zerocompute.shuffle.line_aligned`), or exactly its
    bytes, copied by the kernel into a file of their own: its path, and its size."""
    size = os.fstat(fd).st_size
    if exact:
        first, last = min(split[0], size), min(split[1], size)
    else:
        first, last = shuffle.line_aligned(lambda at, n: os.pread(fd, n, at), size, *split)
    path = os.path.join(scratch, "input")
    with open(path, "wb") as out:
        copy_range(fd, out, first, last)
    return path, last - first


def copy_range(fd: int, out: Any, first: int, last: int) -> int:
    """Bytes ``[first, last)`` of ``fd`` appended to ``out`` (a file or a descriptor),
    copied by the kernel; how many."""
    target = out if isinstance(out, int) else out.fileno()
    offset = first
    while offset < last:
        # sendfile, not copy_file_range: the object's device (a tmpfs, XFS) and the
        # scratch directory are often different filesystems (EXDEV).
        copied = os.sendfile(target, fd, offset, last - offset)
        if copied == 0:
            raise OSError("input shorter than its size")
        offset += copied
    return last - first


def segment_input(fd: int, edges: tuple[int, str], scratch: str) -> tuple[str, int]:
    """A large object's segment as its task reads it: without the end of the line the
    segment before began, with the rest of its own last line from the segment after
    (``zerocompute.planning.Segment``).  Its path, and its size."""
    skip, carry = edges[0], base64.b64decode(edges[1])
    size = os.fstat(fd).st_size
    path = os.path.join(scratch, "input")
    with open(path, "wb") as out:
        copy_range(fd, out, min(skip, size), size)
        out.write(carry)
    return path, max(0, size - skip) + len(carry)


class Combiner:
    """The job's combiner, run over a map's spills (a file of sorted records in, a
    file of records out), in the same executor, under the task's limits."""

    def __init__(self, runtime: WasmRuntime, executables: ExecutableStore, cache_dir: str,
                 shuffle: ShuffleSpec, spec: Any, limits: GuestLimits, core: Core):
        combine = shuffle.combine
        self.runtime, self.limits, self.core = runtime, limits, core
        self.module, self.argv, runtime_env, self.mounts = prepare(
            runtime, executables, cache_dir, combine.exec_etag, combine.runtime,
            combine.exec_name, combine.args)
        self.env = guest_env([*combine.env, *spec.env], runtime_env)

    def __call__(self, stdin: str, stdout: str) -> None:
        ran = self.runtime.run(self.module, stdin, stdout, self.argv, self.env, self.limits,
                               self.mounts)
        self.core.steps.add("combine", ran.ms, ran.cpu_ms)
        if not ran.ok:
            tail = ran.stderr_tail.decode("utf-8", "replace").strip()[-200:]
            raise shuffle_io.CombinerFailed(
                f"the combiner failed: {ran.error or f'exit status {ran.exit}'} {tail}")


def _cpu_seconds() -> float:
    """This executor's CPU time so far (user and system): the guest's, around a run."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reap_scratch(scratch: str) -> list[str]:
    """Remove the scratch directories of executors that are no longer alive (killed
    mid-task, with their server or by it); the names removed."""
    removed = []
    try:
        names = os.listdir(scratch)
    except FileNotFoundError:
        return removed
    for name in names:
        match = re.match(r"^[a-z]+-(\d+)-", name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        shutil.rmtree(os.path.join(scratch, name), ignore_errors=True)
        removed.append(name)
    return removed


def _cpu_limit(seconds: float):
    """Let the kernel stop this process once the guest has used ``seconds`` of CPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return soft_rlimit(resource.RLIMIT_CPU,
                       math.ceil(usage.ru_utime + usage.ru_stime + seconds))


def main() -> None:
    if os.environ.get(PRIORITY_ENV):
        lower_own_priority(Priority.parse(os.environ[PRIORITY_ENV]),
                           logging.getLogger("zerocompute.executor"))
    sock = socket.socket(fileno=int(sys.argv[1]))
    control = socket.socket(fileno=int(sys.argv[3])) if len(sys.argv) > 3 else None
    serve(sock, sys.argv[2], control)
    # Skip interpreter teardown: wasmtime's runtime threads panic when it pulls
    # the library out from under them, and there is nothing left to flush.
    os._exit(0)


# -- the object server's side ---------------------------------------------------------
class ExecutorGone(Exception):
    """The executor died or was killed; the message says why, for the report."""


class Executor:
    """One executor process, seen from the object server (eventlet-friendly)."""

    def __init__(self, cache_dir: str, secret: str = "", shuffle_root: str = "",
                 priority: Priority | None = None):
        """``priority`` is the process's (:mod:`zerocompute.sandbox.priority`); None
        leaves it at the object server's."""
        from eventlet.green import subprocess as green_subprocess
        from eventlet.patcher import original

        raw_socket = original("socket")
        parent, child = raw_socket.socketpair(raw_socket.AF_UNIX, raw_socket.SOCK_SEQPACKET)
        control, control_child = raw_socket.socketpair(raw_socket.AF_UNIX,
                                                       raw_socket.SOCK_SEQPACKET)
        # The secret signs fetches of map outputs for reduce tasks; guests never see
        # the executor's environment (theirs is built from the task alone).
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", SECRET_ENV: secret,
               shuffle_io.ROOT_ENV: shuffle_root or os.path.join(cache_dir, "shuffle")}
        if priority is not None:
            env[PRIORITY_ENV] = priority.encode()
        for name in ("PYTHONPATH", "HOME"):  # HOME: where zig caches its builds
            if os.environ.get(name):
                env[name] = os.environ[name]
        try:
            self.process = green_subprocess.Popen(
                [sys.executable, "-m", EXECUTOR_MODULE.decode(), str(child.fileno()),
                 cache_dir, str(control_child.fileno())],
                pass_fds=[child.fileno(), control_child.fileno()], stdin=subprocess.DEVNULL,
                env=env, close_fds=True)
        except BaseException:
            control.close()
            raise
        finally:
            child.close()
            control_child.close()
        parent.setblocking(False)
        control.setblocking(False)
        self.sock = parent
        self.control = control
        self.calls = 0  # tasks sent: the executor numbers them the same way
        self.resident: tuple | None = None  # the key of its last Python task's interpreter

    def call(self, task: TaskGroup, fds: list[int], time_s: float) -> TaskResult:
        self.calls += 1
        socket.send_fds(self.sock, [task.encode()], fds)
        reply = self._receive(PREPARE_TIMEOUT_S, "preparing the module took too long")
        if reply == RUNNING:
            reply = self._receive(time_s + GRACE_S, f"time limit {time_s:g} s exceeded")
        return TaskResult.parse(reply)

    def _receive(self, timeout: float, what: str) -> bytes:
        from eventlet.hubs import trampoline

        try:
            trampoline(self.sock.fileno(), read=True, timeout=timeout,
                       timeout_exc=ExecutorGone(what))
            data = self.sock.recv(MAX_MESSAGE)
        except ExecutorGone:
            self.kill()
            raise
        except OSError:
            data = b""
        if not data:
            raise ExecutorGone(self._death())
        return data

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        if code == -signal.SIGXCPU:
            return "cpu time limit exceeded"
        if code is not None and code < 0:
            return f"sandbox process killed by {signal.Signals(-code).name}"
        return f"sandbox process exited with status {code}"

    def interrupt(self) -> None:
        """Ask the executor to stop the task it runs now (it keeps running itself)."""
        with contextlib.suppress(OSError):
            self.control.send(str(self.calls).encode())

    def kill(self) -> None:
        """Stop the process.  Its sockets stay open: a ``call`` waiting on one wakes to
        the end of the stream (the dead peer), where a socket closed under it (not a
        green one: the hub is not told) could leave it waiting out its timeout."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Stop the process and release its sockets (nobody waits on them any more)."""
        self.kill()
        self.sock.close()
        self.control.close()


CANCELLED = "cancelled: the proxy no longer wants the result"
INTERRUPT_GRACE_S = 0.25


def hung_up(sock: Any) -> bool:
    """Whether the peer of a request whose body has been read has closed."""
    raw = getattr(sock, "fd", sock)  # eventlet's green socket would wait for data
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _watch_hang_up(client: Any, executor: Executor, cancelled: list[bool]) -> None:
    """Stop ``executor``'s guest if the requester goes away (its socket turns readable
    at EOF): interrupted, the guest ends at once and the executor serves the next task;
    a guest the interrupt cannot reach (blocked in a host call) has its executor
    killed after :data:`INTERRUPT_GRACE_S`."""
    from eventlet.hubs import trampoline

    try:
        while True:
            trampoline(client.fileno(), read=True)
            if hung_up(client):
                cancelled.append(True)
                executor.interrupt()
                eventlet.sleep(INTERRUPT_GRACE_S)  # the pool kills this watcher if it ends
                executor.kill()
                return
            eventlet.sleep(0.05)  # readable but not closed: nothing we expect; keep watching
    except (OSError, ValueError):
        return


class ExecutorPool:
    """At most ``size`` executor processes; a task waits for an idle one."""

    def __init__(self, size: int, cache_dir: str, secret: str = "", shuffle_root: str = "",
                 priority: Priority | None = None):
        from eventlet.queue import LightQueue

        self.size = size
        self.priority = priority
        self.cache_dir = cache_dir
        self.secret = secret
        self.shuffle_root = shuffle_root
        self.idle: Any = LightQueue()
        self.started = 0
        self.restarts = 0

    def _acquire(self, resident: tuple | None = None) -> Executor:
        """An idle executor, or a new one while there are fewer than ``size``; among
        the idle, the one whose resident interpreter is ``resident``'s if any
        (a Python task there skips the interpreter's start)."""
        if self.idle.qsize() == 0 and self.started < self.size:
            self.started += 1
            try:
                return Executor(self.cache_dir, self.secret, self.shuffle_root, self.priority)
            except BaseException:
                self.started -= 1
                raise
        if resident is None or self.idle.qsize() < 2:
            return self.idle.get()
        idle = [self.idle.get_nowait() for _ in range(self.idle.qsize())]
        chosen = next((e for e in idle if e.resident == resident), idle[0])
        for executor in idle:  # the others keep their order
            if executor is not chosen:
                self.idle.put_nowait(executor)
        return chosen

    def run(self, task: TaskGroup, fds: list[int], time_s: float,
            client: Any = None) -> TaskResult:
        """Run a task in an idle executor; a lost executor is reported and replaced.

        ``client`` is the requester's socket: if it closes while the guest runs
        (the proxy cancelled this attempt), the executor is killed at once.
        """
        resident = resident_key(task) if shares_interpreter(task) else None
        executor = self._acquire(resident)
        if resident is not None:
            executor.resident = resident
        began = time.perf_counter()
        cancelled: list[bool] = []
        watcher = eventlet.spawn(_watch_hang_up, client, executor, cancelled) if client else None
        try:
            reply = executor.call(task, fds, time_s)
        except ExecutorGone as gone:
            executor.close()
            self.started -= 1
            self.restarts += 1
            return TaskResult(task.tasks[0].task, error=CANCELLED if cancelled else str(gone),
                              ms=(time.perf_counter() - began) * 1000)
        except BaseException:
            executor.close()
            self.started -= 1
            raise
        finally:
            if watcher is not None:
                watcher.kill()
        self.idle.put(executor)
        if cancelled:
            return TaskResult(task.tasks[0].task, error=CANCELLED,
                              ms=(time.perf_counter() - began) * 1000)
        return reply

    def close(self) -> None:
        while self.idle.qsize():
            self.idle.get().close()


if __name__ == "__main__":
    main()

