"""Resident Python interpreters: one CPython kept for the tasks of one job.

A Python guest's start is CPython initialising inside WebAssembly, about
27 ms of CPU a task (``make bench-sandbox``): with a thousand small objects,
most of a job.  So an executor keeps the interpreter of the Python task it
ran last, parked in a host call, and hands it the next task when that task
is of the same job, executable, account and limits: tasks of one job run one
user's code on data that user may read.  The guest SDK runs each task as a
fresh interpreter would (``zerocompute_guest.serve_tasks``): the script in a
fresh namespace, the task's own ``sys.argv``, environment, ``sys.stdin``
and ``sys.stdout``.  What a task's modules kept (an import, a cache) is
still there for the next, as in the worker processes of Lithops or Spark.

Each task's failure, limits, stderr and report stay its own:

- the wall-clock deadline (the store's epoch deadline) is set anew for each
  task, when it is handed over; CPU time is the executor's, per task as before;
- stdout and stderr are the runtime's sinks (:class:`wasm._Stdio`), the task's
  own for its duration, and the SDK flushes both before it says it is done;
- file descriptor 0 is the task's input: its reads, seeks and ``stat`` are
  answered from the task's input file here, every other descriptor's by
  WASI's own functions (the interpreter's library, the script's directory);
- a task that fails in any way (an exit status, a trap, a limit, an
  exception) ends the interpreter, and the next task starts a fresh one; so
  does a task after which the interpreter's memory is past half its limit,
  so that every task has about the headroom a fresh interpreter has.

The handover is a write to descriptor 0 (which no guest writes: it is
stdin, and CPython for WASI passes no descriptor it did not open to the
host) of the interpreter's token, a secret given in its start-up environment
(:data:`TOKEN_ENV`) that the SDK takes out of it before any script runs.  The
SDK writes it when it is ready for a task, and the write returns when there
is one, with the size of the task's header (its argv and environment), which
the SDK then reads from descriptor 0 before the task's input; a write that
returns 0 means there is no next task, and the interpreter exits.  Any
other write to descriptor 0 fails with ``EBADF``, as in any guest.
"""

from __future__ import annotations

import ctypes
import os
import queue
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wasmtime import ExitTrap, FuncType, Linker, Store, Trap, WasiConfig, _ffi

from zerocompute.sandbox.wasi_io import (
    EBADF,
    EFAULT,
    EINVAL,
    EIO,
    ERRNO,
    I32,
    OWN,
    SUCCESS,
    WASI,
    OutOfBounds,
    OwnFunctions,
    answer,
    buffers,
)

TOKEN_ENV = "ZEROCOMPUTE_RESIDENT"  # the same name as zerocompute_guest's
# WASI's filetype numbers, by the host's file type.
_FILETYPES = {0o100000: 4, 0o040000: 3, 0o020000: 2, 0o060000: 1, 0o140000: 6}


@dataclass
class Handover:
    """One task, as the executor's thread gives it to the interpreter's."""

    header: bytes  # argv and environment (:func:`task_header`)
    stdin_fd: int
    ticks: int  # its wall-clock limit, in epoch ticks


@dataclass
class Ending:
    """How a task ended, as the interpreter's thread saw it."""

    exit: int | None
    error: Exception | None  # a trap or a failure, explained by the runtime
    cpu_ms: float
    memory_full: bool  # the interpreter's memory was near its limit


def task_header(argv: Sequence[str], env: Sequence[tuple[str, str]]) -> bytes:
    """A task's argv and environment as the SDK reads them: the number of arguments,
    then every argument and every ``NAME=value``, each ended by a NUL (neither can
    hold one: they are C strings)."""
    items = [str(len(argv)), *argv, *(f"{name}={value}" for name, value in env)]
    return b"".join(item.encode("utf-8", "surrogateescape") + b"\0" for item in items)


class Resident:
    """One interpreter kept between tasks, on a thread of its own.

    ``run`` hands it a task and waits for that task's :class:`Ending`; the
    thread, parked in the control write between tasks, runs the guest.
    """

    def __init__(self, pre: Any, store: Store, linking: ResidentLinking, key: Any,
                 limits: Any, argv: Sequence[str], env: Sequence[tuple[str, str]],
                 mounts: Sequence[Any], memory_full) -> None:
        """``store`` has the task's limits; ``memory_full(instance, store, limits)``
        says whether a failed guest's memory was at its limit."""
        self.key = key
        self.limits = limits
        self.token = os.urandom(16).hex().encode()
        self._pre = pre
        self._linking = linking
        self._memory_full = memory_full
        self.store = store
        wasi = WasiConfig()
        wasi.argv = list(argv)
        wasi.env = [list(pair) for pair in env] + [[TOKEN_ENV, self.token.decode()]]
        wasi.stdin_file = wasi.stdout_file = wasi.stderr_file = os.devnull
        for mount in mounts:
            wasi.preopen_dir(mount.host, mount.guest, mount.writable)
        self.store.set_wasi(wasi)
        self.wasi: dict[str, Any] = {}  # WASI's own functions (_serve)
        self._inbox: queue.SimpleQueue[Handover | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[Ending] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._instance = None
        self._pending = False  # a task handed over, not yet answered
        self.task: Handover | None = None  # the task running now
        self._header = b""
        self._cpu_started = 0.0
        self.alive = True  # takes tasks (False once it has ended, or will)

    def run(self, task: Handover) -> Ending:
        """Run ``task`` (blocking until it ends)."""
        self._pending = True
        self._inbox.put(task)
        if self._thread is None:
            self.store.set_epoch_deadline(task.ticks)
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name="zerocompute-resident")
            self._thread.start()
        return self._outbox.get()

    def close(self) -> None:
        """Let the interpreter exit (it is parked between tasks, or has ended)."""
        self.alive = False
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()

    # -- the interpreter's thread ---------------------------------------------------------
    def _serve(self) -> None:
        self._cpu_started = time.thread_time()
        exit_code: int | None = None
        error: Exception | None = None
        try:
            self._instance = self._pre.instantiate(self.store)
            self.wasi = self._linking.own.of(self.store, self._instance)
            self._instance.exports(self.store)["_start"](self.store)
            exit_code = 0
        except ExitTrap as trap:
            exit_code = trap.code
        except Trap as trap:
            error = trap
        except Exception as err:  # noqa: BLE001 - the runtime names it (_OverLimit too)
            error = err
        self.alive = False
        if self._pending:  # it ended during a task, or before it could take one
            self._answer(exit_code, error)

    def _answer(self, exit_code: int | None, error: Exception | None) -> None:
        failed = error is not None or exit_code != 0
        memory_full = failed and self._memory_full(self._instance, self.store, self.limits)
        ending = Ending(exit_code, error, (time.thread_time() - self._cpu_started) * 1000,
                        memory_full)
        self.task, self._pending = None, False
        self._outbox.put(ending)

    def control(self, caller: Any) -> int:
        """The SDK's write of the token: the task running now is done
        (unless it is the first write), so answer it; then wait for the next task, set
        it up and return its header's size, or 0: no next task, exit."""
        if self.task is not None:
            # Decided before the answer: the executor reads ``alive`` once it has it.
            if caller["memory"].data_len(caller) > self.limits.memory_bytes // 2:
                self.alive = False
            self._answer(0, None)
            if not self.alive:
                return 0
            task = self._inbox.get()
            if task is None:
                return 0
            # The first task's deadline was set before the interpreter started.
            _ffi.wasmtime_context_set_epoch_deadline(caller._context(), task.ticks)
            self._cpu_started = time.thread_time()
        else:
            task = self._inbox.get()
            if task is None:
                return 0
        self.task, self._header = task, task.header
        return len(task.header)

    def read_stdin(self, views: list[Any], offset: int | None) -> int:
        """A read of descriptor 0 into ``views`` (of the guest's memory): the rest of
        the task's header, then the task's input (nothing before the first task)."""
        if not views:
            return 0
        if self._header:
            size = min(len(views[0]), len(self._header))
            ctypes.memmove(views[0], self._header, size)
            self._header = self._header[size:]
            return size
        if self.task is None:
            return 0
        if offset is None:
            return os.readv(self.task.stdin_fd, views)
        return os.preadv(self.task.stdin_fd, views, offset)


# -- the descriptors a resident interpreter sees differently ------------------------------
class ResidentLinking:
    """The WASI functions of a resident interpreter's linker that answer for descriptor
    0 (the handover, then the task's input), and pass every other descriptor to the
    resident's own WASI functions (writes to the runtime's ``stdio_write``).
    ``current`` is the resident (one per executor at a time)."""

    def __init__(self, own: OwnFunctions, stdio_write) -> None:
        self.current: Resident | None = None
        self.own = own
        self._stdio_write = stdio_write

    def define(self, linker: Linker) -> None:
        linker.allow_shadowing = True
        for name, params in {"fd_write": [I32] * 4, **OWN}.items():
            linker.define_func(WASI, name, FuncType(params, [I32]), getattr(self, name),
                               access_caller=True)

    def fd_write(self, caller: Any, fd: int, iovs: int, count: int, nwritten: int) -> int:
        resident = self.current
        if fd != 0 or resident is None:
            return self._stdio_write(caller, fd, iovs, count, nwritten)
        try:
            message = b"".join(bytes(view) for view in buffers(caller, iovs, count))
        except OutOfBounds:
            return EFAULT
        if message != resident.token:
            return EBADF  # stdin, as in any guest
        return answer(caller, nwritten, resident.control(caller))

    def fd_read(self, caller: Any, fd: int, iovs: int, count: int, nread: int) -> int:
        return self._read(caller, fd, iovs, count, nread, None)

    def fd_pread(self, caller: Any, fd: int, iovs: int, count: int, offset: int,
                 nread: int) -> int:
        return self._read(caller, fd, iovs, count, nread, offset)

    def _wasi(self, name: str, caller: Any, *args: int) -> int:
        """WASI's own function ``name`` (``EBADF`` with no resident)."""
        if self.current is None:
            return EBADF
        return self.current.wasi[name](caller, *args)

    def _input(self, fd: int) -> Handover | None:
        """The task whose input ``fd`` is, if it is descriptor 0 during a task."""
        return self.current.task if fd == 0 and self.current is not None else None

    def _read(self, caller: Any, fd: int, iovs: int, count: int, nread: int,
              offset: int | None) -> int:
        resident = self.current
        if fd != 0 or resident is None:
            if offset is None:
                return self._wasi("fd_read", caller, fd, iovs, count, nread)
            return self._wasi("fd_pread", caller, fd, iovs, count, offset, nread)
        try:
            total = resident.read_stdin(buffers(caller, iovs, count), offset)
        except OSError as err:
            return ERRNO.get(err.errno, EIO)
        except OutOfBounds:
            return EFAULT
        return answer(caller, nread, total)

    def fd_seek(self, caller: Any, fd: int, offset: int, whence: int, newoffset: int) -> int:
        task = self._input(fd)
        if task is None:
            return self._wasi("fd_seek", caller, fd, offset, whence, newoffset)
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            return EINVAL  # WASI's numbers are POSIX's
        return self._answer_offset(caller, lambda: os.lseek(task.stdin_fd, offset, whence),
                                   newoffset)

    def fd_tell(self, caller: Any, fd: int, result: int) -> int:
        task = self._input(fd)
        if task is None:
            return self._wasi("fd_tell", caller, fd, result)
        return self._answer_offset(caller, lambda: os.lseek(task.stdin_fd, 0, os.SEEK_CUR),
                                   result)

    @staticmethod
    def _answer_offset(caller: Any, seek, result: int) -> int:
        try:
            position = seek()
        except OSError as err:
            return ERRNO.get(err.errno, EIO)
        return answer(caller, result, position, "<Q")

    def fd_filestat_get(self, caller: Any, fd: int, result: int) -> int:
        task = self._input(fd)
        if task is None:
            return self._wasi("fd_filestat_get", caller, fd, result)
        try:
            st = os.fstat(task.stdin_fd)
        except OSError:
            return EIO
        kind = _FILETYPES.get(st.st_mode & 0o170000, 0)  # 0: unknown (a pipe)
        # WASI's filestat: dev, ino, filetype (a byte, padded), nlink, size, atim, mtim, ctim.
        caller["memory"].write(caller, struct.pack(
            "<QQB7xQQQQQ", st.st_dev, st.st_ino, kind, st.st_nlink, st.st_size,
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns), result)
        return SUCCESS
