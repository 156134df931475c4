"""Running one WASI guest under wasmtime, with limits.

A guest sees only what the task gives it: its stdin is the input object's
data file (opened by wasmtime from the path it is handed, so the bytes are
never copied), its argv and environment come from the manifest and the task,
stdout and stderr go to files the caller owns, and no host directory is
preopened, so it can open no file and has no network.  Wall-clock time is cut
by epoch interruption (a ticker thread advances the engine's epoch), linear
memory by the store's limiter.

Executables are kept by the ETag of their Swift object; compiled modules are
cached on disk keyed by the wasm's SHA-256 and the wasmtime version, written
atomically, and recompiled when a cached file does not load.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import wasmtime
from wasmtime import Config, Engine, ExitTrap, Linker, Module, Store, Trap, TrapCode, WasiConfig

try:  # The object server runs under eventlet: the ticker must be a real thread.
    from eventlet.patcher import original as _original

    _threading = _original("threading")
except ImportError:  # pragma: no cover - eventlet is a dependency
    import threading as _threading

WASM_MAGIC = b"\0asm"
TICK_S = 0.01
MIB = 1024 * 1024


class InvalidExecutable(ValueError):
    """The executable is not a WebAssembly module this runtime can run."""


@dataclass(frozen=True)
class GuestLimits:
    time_s: float = 60.0
    memory_bytes: int = 512 * MIB
    output_bytes: int = 256 * MIB
    stderr_tail_bytes: int = 2048


@dataclass
class GuestResult:
    exit: int | None
    error: str | None
    stdout_bytes: int
    stderr_tail: bytes
    ms: float

    @property
    def ok(self) -> bool:
        return self.exit == 0 and self.error is None


def _wasmtime_version() -> str:
    return getattr(wasmtime, "__version__", None) or _dist_version()


def _dist_version() -> str:
    from importlib.metadata import version
    return version("wasmtime")


def _write_atomically(path: str, data: bytes) -> None:
    """Concurrent writers each write their own temp file; the last rename wins."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
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


class WasmRuntime:
    """One engine, its module caches and the epoch ticker, shared by all tasks."""

    def __init__(self, cache_dir: str):
        config = Config()
        config.epoch_interruption = True
        self.engine = Engine(config)
        self.cache_dir = cache_dir
        self._executables = os.path.join(cache_dir, "executables")
        self._compiled = os.path.join(cache_dir, "compiled")
        os.makedirs(self._executables, exist_ok=True)
        os.makedirs(self._compiled, exist_ok=True)
        self._version = _wasmtime_version()
        self._modules: dict[str, Module] = {}
        self._lock = _threading.Lock()
        ticker = _threading.Thread(target=self._tick, name="zerocompute-epoch", daemon=True)
        ticker.start()

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            self.engine.increment_epoch()

    # -- executables ------------------------------------------------------
    def _executable_path(self, etag: str) -> str:
        if not etag or not all(c in "0123456789abcdef" for c in etag):
            raise InvalidExecutable(f"bad executable etag {etag!r}")
        return os.path.join(self._executables, etag + ".wasm")

    def has_executable(self, etag: str) -> bool:
        return etag in self._modules or os.path.exists(self._executable_path(etag))

    def add_executable(self, etag: str, data: bytes) -> None:
        """Keep an executable that arrived with a task, after checking it is what was signed."""
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != etag:
            raise InvalidExecutable("executable does not match its ETag")
        self._compile(data)  # refuse invalid wasm before it is cached
        _write_atomically(self._executable_path(etag), data)

    def module(self, etag: str) -> Module:
        """The compiled module of a cached executable."""
        with self._lock:
            cached = self._modules.get(etag)
        if cached is not None:
            return cached
        with open(self._executable_path(etag), "rb") as f:
            module = self._compile(f.read())
        with self._lock:
            self._modules[etag] = module
        return module

    def _compile(self, data: bytes) -> Module:
        if not data.startswith(WASM_MAGIC):
            raise InvalidExecutable("executable is not a WebAssembly module")
        digest = hashlib.sha256(data).hexdigest()
        compiled = os.path.join(self._compiled, f"{digest}-{self._version}.cwasm")
        if os.path.exists(compiled):
            try:
                return Module.deserialize_file(self.engine, compiled)
            except Exception:  # noqa: BLE001 - a corrupt cache entry is recompiled
                pass
        try:
            module = Module(self.engine, data)
        except Exception as err:  # noqa: BLE001 - wasmtime raises WasmtimeError
            raise InvalidExecutable(f"invalid WebAssembly module: {_first_line(err)}") from None
        _write_atomically(compiled, bytes(module.serialize()))
        return module

    # -- running ----------------------------------------------------------
    def run(self, module: Module, stdin_path: str, argv: Sequence[str],
            env: Sequence[tuple[str, str]], limits: GuestLimits,
            stdout_path: str, stderr_path: str) -> GuestResult:
        """Run ``module``'s ``_start`` to completion; blocking (call it off the hub)."""
        started = time.perf_counter()
        store = Store(self.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_epoch_deadline(max(1, int(limits.time_s / TICK_S)))
        wasi = WasiConfig()
        wasi.argv = list(argv)
        wasi.env = [list(pair) for pair in env]
        wasi.stdin_file = stdin_path
        wasi.stdout_file = stdout_path
        wasi.stderr_file = stderr_path
        store.set_wasi(wasi)
        linker = Linker(self.engine)
        linker.define_wasi()
        exit_code: int | None = None
        error: str | None = None
        instance = None
        try:
            instance = linker.instantiate(store, module)
            start = instance.exports(store).get("_start")
            if start is None:
                raise InvalidExecutable("module has no _start: not a WASI command")
            start(store)
            exit_code = 0
        except ExitTrap as trap:
            exit_code = trap.code
        except Trap as trap:
            error = self._explain_trap(trap, limits)
        except InvalidExecutable as err:
            error = str(err)
        except Exception as err:  # noqa: BLE001 - instantiation errors are the guest's
            error = _first_line(err)
        ms = (time.perf_counter() - started) * 1000
        stdout_bytes = os.path.getsize(stdout_path)
        timed_out = error is not None and error.startswith("time limit")
        failed = error is not None or exit_code != 0
        if failed and not timed_out and _memory_exhausted(instance, store, limits):
            # Out-of-memory shows up as whatever the guest does when malloc fails.
            error = f"memory limit {limits.memory_bytes // MIB} MiB exceeded"
        if error is None and stdout_bytes > limits.output_bytes:
            error = f"output limit {limits.output_bytes // MIB} MiB exceeded"
        return GuestResult(exit_code, error, stdout_bytes,
                           _tail(stderr_path, limits.stderr_tail_bytes), ms)

    @staticmethod
    def _explain_trap(trap: Trap, limits: GuestLimits) -> str:
        code = trap.trap_code
        if code == TrapCode.INTERRUPT:
            return f"time limit {limits.time_s:g} s exceeded"
        if code == TrapCode.STACK_OVERFLOW:
            return "stack overflow"
        return f"guest trapped: {_first_line(trap)}"


def _memory_exhausted(instance, store: Store, limits: GuestLimits) -> bool:
    """A guest that failed with its memory at the limit most likely failed for lack of it."""
    if instance is None:
        return False
    memory = instance.exports(store).get("memory")
    if memory is None or not hasattr(memory, "data_len"):
        return False
    page = 64 * 1024
    return memory.data_len(store) + 16 * page > limits.memory_bytes


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _tail(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read()
