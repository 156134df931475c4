"""Running one WASI guest under wasmtime, with limits.

A guest sees only what the task gives it: stdin is the input object's data
file (an open file descriptor handed to wasmtime through ``/proc/self/fd``,
so the bytes are never copied), argv and environment come from the manifest
and the task, stdout goes to a file the object server owns, stderr to a
bounded tail in memory, and no host directory is preopened (Python guests
get exactly one, read-only: their script and the guest SDK), so a guest can
open no other file and has no network.

Limits: wall-clock time by epoch interruption (a ticker thread advances the
engine's epoch), CPU time by the kernel (``RLIMIT_CPU`` of the executor
process, see :mod:`zerocompute.sandbox.executor`), linear memory, table
elements and instances by the store's limiter, stdout by the kernel
(``RLIMIT_FSIZE`` while the guest runs).

Executables are stored by the MD5 of their bytes (the ETag of their Swift
object).  Compiled modules are cached on disk keyed by the module's SHA-256
and the wasmtime version, written atomically under a lock (so concurrent
executors compile once), and recompiled when a cached file does not load.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import os
import resource
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, NamedTuple

from wasmtime import (
    Config,
    Engine,
    ExitTrap,
    FuncType,
    InstancePre,
    Linker,
    Module,
    Store,
    Trap,
    TrapCode,
    ValType,
    WasiConfig,
)

from zerocompute.counters import CounterFilter, Counts
from zerocompute.sandbox import wasi_io
from zerocompute.sandbox.resident import Handover, Resident, ResidentLinking, task_header
from zerocompute.sandbox.wasi_io import I32, WASI, OwnFunctions
from zerocompute.wire import LIMIT_DEFAULTS, Limits

WASM_MAGIC = b"\0asm"
TICK_S = 0.01
INTERRUPTED = "interrupted: the attempt was cancelled"
MIB = 1024 * 1024
WASMTIME_VERSION = version("wasmtime")


class InvalidExecutable(ValueError):
    """The executable is not something this runtime can run."""


@dataclass(frozen=True)
class GuestLimits:
    """The limits one guest runs under, in runtime units (defaults: the manifest's)."""

    time_s: float = LIMIT_DEFAULTS["time_s"]
    memory_bytes: int = LIMIT_DEFAULTS["memory_mb"] * MIB
    output_bytes: int = LIMIT_DEFAULTS["output_mb"] * MIB
    stderr_bytes: int = LIMIT_DEFAULTS["stderr_mb"] * MIB
    stderr_tail_bytes: int = LIMIT_DEFAULTS["stderr_tail_kb"] * 1024
    table_elements: int = LIMIT_DEFAULTS["table_elements"]
    instances: int = LIMIT_DEFAULTS["instances"]

    @classmethod
    def from_task(cls, limits: Limits) -> GuestLimits:
        """From the limits of a task group (the manifest's units)."""
        return cls(time_s=float(limits.time_s), memory_bytes=int(limits.memory_mb) * MIB,
                   output_bytes=int(limits.output_mb) * MIB,
                   stderr_bytes=int(limits.stderr_mb) * MIB,
                   stderr_tail_bytes=int(limits.stderr_tail_kb) * 1024,
                   table_elements=int(limits.table_elements), instances=int(limits.instances))


class Mount(NamedTuple):
    """A host directory as the guest sees it."""

    host: str
    guest: str
    writable: bool = False


@dataclass
class GuestResult:
    exit: int | None
    error: str | None
    stdout_bytes: int
    stderr_tail: bytes
    ms: float
    cpu_ms: float = 0.0  # of the thread that ran it (wasmtime runs the guest in it)
    counters: Counts | None = None  # what it counted (zerocompute.counters)

    @property
    def ok(self) -> bool:
        return self.exit == 0 and self.error is None


def write_atomically(path: str, data: bytes) -> None:
    """Concurrent writers each write their own temp file; a rename publishes it."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _check_etag(etag: str) -> str:
    if not etag or len(etag) != 32 or not all(c in "0123456789abcdef" for c in etag):
        raise InvalidExecutable(f"bad executable etag {etag!r}")
    return etag


class ExecutableStore:
    """Executables by ETag, as received from the proxy (object-server side)."""

    def __init__(self, cache_dir: str):
        self.directory = os.path.join(cache_dir, "executables")
        os.makedirs(self.directory, exist_ok=True)
        self._validator = Engine()

    def path(self, etag: str) -> str:
        return os.path.join(self.directory, _check_etag(etag))

    def has(self, etag: str) -> bool:
        return os.path.exists(self.path(etag))

    def add(self, etag: str, data: bytes, runtime: str = "wasm") -> None:
        """Keep an executable, after checking it is what was signed and can run."""
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != etag:
            raise InvalidExecutable("executable does not match its ETag")
        if runtime == "wasm":
            check_wasm(data, self._validator)
        else:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidExecutable("script is not UTF-8 text") from None
        write_atomically(self.path(etag), data)


def check_wasm(data: bytes, engine: Engine | None = None) -> None:
    """Refuse anything that is not a valid WebAssembly module."""
    if not data.startswith(WASM_MAGIC):
        raise InvalidExecutable("executable is not a WebAssembly module")
    try:
        Module.validate(engine or Engine(), data)
    except Exception as err:  # noqa: BLE001 - wasmtime raises WasmtimeError
        raise InvalidExecutable(f"invalid WebAssembly module: {_first_line(err)}") from None


class WasmRuntime:
    """One engine, its compiled-module cache and the epoch ticker (executor side)."""

    def __init__(self, cache_dir: str):
        config = Config()
        config.epoch_interruption = True
        self.engine = Engine(config)
        self._compiled = os.path.join(cache_dir, "compiled")
        os.makedirs(self._compiled, exist_ok=True)
        self._prepared: dict[str, Prepared] = {}
        # Two WASI linkers, each linking a module once, not per task: the runtime's own
        # tools (the shuffle core, compiling the Python SDK) write files in the
        # directories they are given; a task's guest writes only stdout and stderr,
        # which the runtime writes itself (_Stdio).
        self._stdio = _Stdio()
        self._tools_linker = Linker(self.engine)
        self._guest_linker = Linker(self.engine)
        for linker in (self._tools_linker, self._guest_linker):
            linker.define_wasi()
            # The shuffle core times its steps by this thread's CPU clock (WASI has
            # none); a guest that imports it learns no more than its own time.
            linker.define_func("zerocompute", "thread_cpu_ns", FuncType([], [ValType.i64()]),
                               time.thread_time_ns)
        self._guest_linker.allow_shadowing = True
        for name in ("fd_read", "fd_write"):
            self._guest_linker.define_func(WASI, name, FuncType([I32] * 4, [I32]),
                                           getattr(self._stdio, name), access_caller=True)
        # Python guests' resident interpreters: a third linker, whose descriptor 0 is
        # the handover and then the task's input (resident.py).
        self._own = OwnFunctions(self.engine)  # WASI's own fd_read & co., for other descriptors
        self._residents = ResidentLinking(self._own, self._stdio.fd_write)
        self._resident_linker = Linker(self.engine)
        self._resident_linker.define_wasi()
        self._residents.define(self._resident_linker)
        self._running = threading.Event()
        # A task is cancelled by its number (``interrupt``): a late cancel must not
        # stop the next task.  The lock orders it against ``begin`` and ``run``.
        self._lock = threading.Lock()
        self._task: int | None = None
        self._cancelled = False
        self._deadline_ticks = 0
        threading.Thread(target=self._tick, name="zerocompute-epoch", daemon=True).start()

    def _tick(self) -> None:
        # Ticks only while a guest runs: an idle executor costs no wake-ups.  A tick
        # per TICK_S of wall time, however late this thread is woken: at nice 19 on a
        # host busy with storage work it may sleep far longer than asked, and a time
        # limit counted in wake-ups would stretch with it.
        while True:
            self._running.wait()
            last = time.monotonic()
            while self._running.is_set():
                time.sleep(TICK_S)
                ticks = int((time.monotonic() - last) / TICK_S)
                for _ in range(ticks):
                    self.engine.increment_epoch()
                last += ticks * TICK_S

    def begin(self, task: int) -> None:
        """The guests run from now on belong to task number ``task``."""
        with self._lock:
            self._task, self._cancelled = task, False

    def interrupt(self, task: int) -> None:
        """Stop task number ``task``'s guests (its attempt was cancelled): the one
        running traps at its next epoch check, later ones do not start.  The
        executor stays, so a cancel costs no new process.  A task that is not the
        current one has ended meanwhile: nothing to stop."""
        with self._lock:
            if task != self._task:
                return
            self._cancelled = True
            if self._running.is_set():
                for _ in range(self._deadline_ticks + 1):
                    self.engine.increment_epoch()

    def prepare(self, path: str, key: str | None = None, tool: bool = False,
                resident: bool = False) -> Prepared:
        """The module of the wasm file at ``path``, compiled and linked (memoized by
        ``key``): as a task's guest, as one of the runtime's ``tool``s, or as a
        ``resident`` interpreter (:meth:`run_resident`)."""
        way = "tool" if tool else "resident" if resident else "guest"
        key = f"{way}:{key or path}"
        prepared = self._prepared.get(key)
        if prepared is None:
            with open(path, "rb") as f:
                module = self._compile(f.read())
            linker = {"tool": self._tools_linker, "resident": self._resident_linker,
                      "guest": self._guest_linker}[way]
            try:
                prepared = Prepared(linker.instantiate_pre(module), tool)
            except Exception as err:  # noqa: BLE001 - e.g. imports WASI does not provide
                raise InvalidExecutable(f"cannot link the module: {_first_line(err)}") from None
            self._prepared[key] = prepared
        return prepared

    def _compile(self, data: bytes) -> Module:
        if not data.startswith(WASM_MAGIC):
            raise InvalidExecutable("executable is not a WebAssembly module")
        digest = hashlib.sha256(data).hexdigest()
        compiled = os.path.join(self._compiled, f"{digest}-{WASMTIME_VERSION}.cwasm")
        with open(compiled + ".lock", "a") as lock:
            # One compiler per module per host; the others wait, then load its result.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(compiled):
                try:
                    return Module.deserialize_file(self.engine, compiled)
                except Exception:  # noqa: BLE001 - a corrupt cache entry is recompiled
                    pass
            try:
                module = Module(self.engine, data)
            except Exception as err:  # noqa: BLE001 - wasmtime raises WasmtimeError
                raise InvalidExecutable(
                    f"invalid WebAssembly module: {_first_line(err)}") from None
            write_atomically(compiled, bytes(module.serialize()))
            return module

    def run(self, prepared: Prepared, stdin_path: str, stdout_path: str,
            argv: Sequence[str], env: Sequence[tuple[str, str]], limits: GuestLimits,
            mounts: Sequence[Mount] = ()) -> GuestResult:
        """Run the module's ``_start`` to completion (blocking).

        ``mounts`` map host directories into the guest, read-only unless
        marked writable (only ever for the runtime's own work: compiling the
        Python SDK, the shuffle core's scratch; never for a task's guest);
        nothing else of the host is visible.
        """
        started, cpu_started = time.perf_counter(), time.thread_time()
        stderr = _Tail(limits.stderr_tail_bytes, limits.stderr_bytes)
        store = self._store(limits)
        ticks = max(1, int(limits.time_s / TICK_S))
        store.set_epoch_deadline(ticks)
        wasi = WasiConfig()
        wasi.argv = list(argv)
        wasi.env = [list(pair) for pair in env]
        stdin_fd = stdout_fd = -1
        if prepared.tool:
            wasi.stdin_file = stdin_path
            wasi.stdout_file = stdout_path
            wasi.stderr_custom = stderr.write
        else:
            # Read and written by _Stdio.  WASI's own streams stay, empty, for what asks
            # about them (a stream's type, whatever file is behind it); never the input
            # itself: WASI may read ahead of the guest, and a pipe's data read is gone.
            wasi.stdin_file = wasi.stdout_file = wasi.stderr_file = os.devnull
            stdin_fd = os.open(stdin_path, os.O_RDONLY)
            stdout_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for mount in mounts:
            wasi.preopen_dir(mount.host, mount.guest, mount.writable)
        store.set_wasi(wasi)
        exit_code: int | None = None
        error: str | None = None
        instance = None
        if not self._begin_guest(ticks, stdin_fd, stdout_fd, stderr):
            for fd in (stdin_fd, stdout_fd):
                if fd >= 0:
                    os.close(fd)
            return GuestResult(None, INTERRUPTED, 0, b"", 0.0)
        with soft_rlimit(resource.RLIMIT_FSIZE, limits.output_bytes + 1):
            try:
                instance = prepared.pre.instantiate(store)
                start = instance.exports(store).get("_start")
                if start is None:
                    raise InvalidExecutable("module has no _start: not a WASI command")
                if mounts and not prepared.tool:  # it reads files of its own too
                    self._stdio.own = self._own.of(store, instance)
                start(store)
                exit_code = 0
            except ExitTrap as trap:
                exit_code = trap.code
            except Exception as err:  # noqa: BLE001 - instantiation errors are the guest's
                error = _explain(err, limits)
            finally:
                if stdin_fd >= 0:
                    os.close(stdin_fd)
                if self._end_guest():
                    exit_code, error = None, INTERRUPTED
        ms = (time.perf_counter() - started) * 1000
        cpu_ms = (time.thread_time() - cpu_started) * 1000
        if stdout_fd < 0:
            stdout_fd = os.open(stdout_path, os.O_RDONLY)
        failed = error is not None or exit_code != 0
        return _result(exit_code, error, stdout_fd, stderr, limits, ms, cpu_ms,
                       failed and _memory_exhausted(instance, store, limits))

    def _store(self, limits: GuestLimits) -> Store:
        """A store for one guest, under ``limits``."""
        store = Store(self.engine)
        store.set_limits(memory_size=limits.memory_bytes,
                         table_elements=limits.table_elements,
                         instances=limits.instances, tables=limits.instances,
                         memories=limits.instances)
        return store

    def _begin_guest(self, ticks: int, stdin_fd: int, stdout_fd: int, stderr: _Tail) -> bool:
        """Mark a guest running from now (the ticker ticks, an interrupt reaches it),
        reading ``stdin_fd``, writing to ``stdout_fd`` and ``stderr``; False if its
        task is cancelled."""
        with self._lock:
            if self._cancelled:
                return False
            self._deadline_ticks = ticks
            self._running.set()
        self._stdio.open(stdin_fd, stdout_fd, stderr)
        return True

    def _end_guest(self) -> bool:
        """The guest has stopped; whether its task was cancelled meanwhile."""
        self._stdio.close()
        with self._lock:
            self._running.clear()
            return self._cancelled

    def run_resident(self, prepared: Prepared, key: Any, launch: Sequence[str],
                     launch_env: Sequence[tuple[str, str]], mounts: Sequence[Mount],
                     stdin_path: str, stdout_path: str, argv: Sequence[str],
                     env: Sequence[tuple[str, str]], limits: GuestLimits) -> GuestResult:
        """Run one task in the resident interpreter of ``key`` (:mod:`.resident`),
        started first with ``launch`` (its argv), ``launch_env`` and ``mounts`` when
        there is none or the last one's key differs or it ended.  The task sees
        ``argv`` and ``env``, as a guest started by :meth:`run` with them would."""
        started = time.perf_counter()
        resident = self._residents.current
        if resident is not None and (resident.key != key or not resident.alive):
            resident.close()
            self._residents.current = resident = None
        if resident is None:
            resident = Resident(prepared.pre, self._store(limits), self._residents, key,
                                limits, launch, launch_env, mounts, _memory_exhausted)
            self._residents.current = resident
        stderr = _Tail(limits.stderr_tail_bytes, limits.stderr_bytes)
        ticks = max(1, int(limits.time_s / TICK_S))
        with contextlib.ExitStack() as files:
            stdin_fd = os.open(stdin_path, os.O_RDONLY)
            files.callback(os.close, stdin_fd)
            stdout_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            # (its descriptor 0 is the resident's: ResidentLinking reads stdin_fd)
            if not self._begin_guest(ticks, -1, stdout_fd, stderr):
                os.close(stdout_fd)
                return GuestResult(None, INTERRUPTED, 0, b"", 0.0)
            try:
                with soft_rlimit(resource.RLIMIT_FSIZE, limits.output_bytes + 1):
                    ending = resident.run(Handover(task_header(argv, env), stdin_fd, ticks))
            finally:
                cancelled = self._end_guest()
        exit_code, error = ending.exit, None
        if cancelled:
            exit_code, error = None, INTERRUPTED
        elif ending.error is not None:
            error = _explain(ending.error, limits)
        return _result(exit_code, error, stdout_fd, stderr, limits,
                       (time.perf_counter() - started) * 1000, ending.cpu_ms,
                       ending.memory_full)


def _result(exit_code: int | None, error: str | None, stdout_fd: int, stderr: _Tail,
            limits: GuestLimits, ms: float, cpu_ms: float, memory_full: bool) -> GuestResult:
    """A guest's result, once it has ended: the limit it crossed, if any, named from
    what it wrote (``stdout_fd`` is closed here)."""
    stdout_bytes = os.fstat(stdout_fd).st_size
    os.close(stdout_fd)
    failed = error is not None or exit_code != 0
    timed_out = error is not None and error.startswith("time limit")
    if stdout_bytes > limits.output_bytes:
        error = f"output limit {_size(limits.output_bytes)} exceeded"
    elif stderr.written > limits.stderr_bytes:
        error = f"stderr limit {_size(limits.stderr_bytes)} exceeded"
    elif failed and not timed_out and memory_full:
        # Out-of-memory shows up as whatever the guest does when malloc fails.
        error = f"memory limit {_size(limits.memory_bytes)} exceeded"
    return GuestResult(exit_code, error, stdout_bytes, stderr.value(), ms, cpu_ms,
                       stderr.counters.counts or None)


@dataclass(frozen=True)
class Prepared:
    """A module linked for one way of running: as a task's guest, or as a tool."""

    pre: InstancePre
    tool: bool


class _OverLimit(Exception):
    """Raised by a write past the output or stderr limit: it traps the guest there.

    A guest that ignores ``EFBIG`` (most loop on ``fwrite``) would otherwise run
    on to its time limit, burning a slot's CPU, and on a host busy with storage
    work (executors at nice 19) the wall clock could run out before the write
    that crossed the limit, reporting a time limit instead.
    """


class _Stdio:
    """A guest's stdin and stdout (files) and stderr (its tail), answered by the runtime.

    wasmtime's WASI writes a stdio stream 4 KiB at a time, each piece a hop
    through its I/O threads: about 55 µs, so 70 MB/s of output (measured:
    60 MiB in 0.84 s), and reads stdin through those threads into a buffer
    of its own.  Here each ``fd_write`` is one ``os.writev`` of the guest's
    buffers and each ``fd_read`` of descriptor 0 one ``os.readv`` into them,
    in place (:mod:`.wasi_io`: the same 60 MiB written in 0.04 s, 100 MiB read
    in 22 ms of CPU where WASI's stdin took 70).  The output limit is the
    kernel's, as before (``RLIMIT_FSIZE``: the write fails with ``EFBIG``).
    Reads of other descriptors (a Python guest's library) go to WASI's own
    ``fd_read`` (``own``).  One guest runs at a time in an executor, so the
    sinks are the runtime's.
    """

    def __init__(self) -> None:
        self.close()

    def open(self, stdin_fd: int, stdout_fd: int, stderr: _Tail) -> None:
        self.stdin_fd, self.stdout_fd, self.stderr = stdin_fd, stdout_fd, stderr

    def close(self) -> None:
        self.stdin_fd, self.stdout_fd = -1, -1
        self.stderr: _Tail | None = None
        self.own: dict[str, Any] = {}

    def fd_read(self, caller: Any, fd: int, iovs: int, count: int, nread: int) -> int:
        if fd != 0 or self.stdin_fd < 0:
            own = self.own.get("fd_read")
            return own(caller, fd, iovs, count, nread) if own else wasi_io.EBADF
        try:
            views = wasi_io.buffers(caller, iovs, count)
            return wasi_io.answer(caller, nread, os.readv(self.stdin_fd, views) if views else 0)
        except OSError as err:
            return wasi_io.ERRNO.get(err.errno, wasi_io.EIO)
        except wasi_io.OutOfBounds:
            return wasi_io.EFAULT

    def fd_write(self, caller: Any, fd: int, iovs: int, count: int, nwritten: int) -> int:
        if (fd != 1 or self.stdout_fd < 0) and (fd != 2 or self.stderr is None):
            return wasi_io.EBADF  # a guest has no other file to write
        try:
            views = wasi_io.buffers(caller, iovs, count)
            if fd == 2:
                total = 0
                for view in views:
                    done = self.stderr.write(bytes(view))
                    if done < 0:
                        raise _OverLimit
                    total += done
                return wasi_io.answer(caller, nwritten, total)
            total = 0
            want = sum(len(view) for view in views)
            while views:
                done = os.writev(self.stdout_fd, views)
                total += done
                if total == want:
                    break
                views = _after(views, done)
            return wasi_io.answer(caller, nwritten, total)
        except OSError as err:
            if err.errno == errno.EFBIG:
                raise _OverLimit from None
            return wasi_io.EIO
        except wasi_io.OutOfBounds:
            return wasi_io.EFAULT


def _after(views: list[Any], done: int) -> list[Any]:
    """What is left of ``views`` once ``done`` bytes of them are written."""
    left = []
    for view in views:
        if done >= len(view):
            done -= len(view)
            continue
        left.append(memoryview(view).cast("B")[done:] if done else view)
        done = 0
    return left


class _Tail:
    """Keeps the last ``size`` bytes written to it, less the counter lines, which it
    sums (:mod:`zerocompute.counters`); refuses writes past ``limit``."""

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        self.written = 0
        self.chunks: collections.deque[bytes] = collections.deque([b""])
        self.kept = 0
        self.counters = CounterFilter()

    def write(self, data: bytes) -> int:
        if self.written > self.limit:
            return -errno.EFBIG
        self.written += len(data)
        self._keep(self.counters.feed(bytes(data)))
        return len(data)

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        self.chunks.append(data[-self.size:])
        self.kept += len(self.chunks[-1])
        while self.kept - len(self.chunks[0]) >= self.size:
            self.kept -= len(self.chunks.popleft())

    def value(self) -> bytes:
        self._keep(self.counters.close())
        return b"".join(self.chunks)[-self.size:]


@contextlib.contextmanager
def soft_rlimit(which: int, soft: int) -> Iterator[None]:
    """Lower this process's soft limit ``which`` to ``soft`` (never above the hard
    limit) for the duration, e.g. the size of files the guest's stdout may reach."""
    saved = resource.getrlimit(which)
    hard = saved[1]
    resource.setrlimit(which, (soft if hard == resource.RLIM_INFINITY else min(soft, hard),
                               hard))
    try:
        yield
    finally:
        resource.setrlimit(which, saved)


_TRAP_WORDS = {
    TrapCode.STACK_OVERFLOW: "stack overflow",
    TrapCode.INTEGER_DIVISION_BY_ZERO: "guest trapped: integer divide by zero",
    TrapCode.UNREACHABLE: "guest trapped: unreachable code (abort)",
    TrapCode.MEMORY_OUT_OF_BOUNDS: "guest trapped: out-of-bounds memory access",
}


def _explain(err: Exception, limits: GuestLimits) -> str | None:
    """What a guest's failure tells its user; None for a write past a limit, which is
    named from what the guest wrote (:func:`_result`)."""
    if isinstance(err, _OverLimit):
        return None
    if isinstance(err, Trap):
        return _explain_trap(err, limits)
    return _explain_failure(err, limits)


def _explain_trap(trap: Trap, limits: GuestLimits) -> str:
    code = trap.trap_code
    if code == TrapCode.INTERRUPT:
        return f"time limit {limits.time_s:g} s exceeded"
    if code in _TRAP_WORDS:
        return _TRAP_WORDS[code]
    if code is not None:
        return f"guest trapped: {code.name.lower().replace('_', ' ')}"
    return f"guest trapped: {_first_line(trap)}"


def _explain_failure(err: Exception, limits: GuestLimits) -> str:
    text = _first_line(err)
    if "resource limit exceeded" in str(err) or "exceeds memory limits" in str(err):
        return f"guest needs more than the task's limits allow: {text}"
    return text


def _memory_exhausted(instance, store: Store, limits: GuestLimits) -> bool:
    """A guest that failed with its memory at the limit most likely failed for lack of it."""
    if instance is None:
        return False
    memory = instance.exports(store).get("memory")
    if memory is None or not hasattr(memory, "data_len"):
        return False
    # Allocators grow memory in steps of a few MiB: a failed step leaves that much unused.
    return memory.data_len(store) + max(4 * MIB, limits.memory_bytes // 16) > limits.memory_bytes


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n % MIB == 0 else f"{n} bytes"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

