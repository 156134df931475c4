"""The WASI calls the runtime answers itself, in the guest's own memory.

A guest's stdio is the runtime's (``wasm._Stdio``, a resident interpreter's
descriptor 0 in ``resident.py``): ``fd_read`` and ``fd_write`` name the
guest's buffers as (pointer, length) pairs in its linear memory, and
:func:`buffers` hands the kernel views of those very bytes, so
``os.readv``/``os.writev`` copy straight between the file and the guest.
WASI's own stdin reads each buffer on one of wasmtime's I/O threads and
copies it into the guest afterwards: 100 MiB of input took 70 ms of CPU that
way and takes 22 ms in place (``doc/sandbox.md``, "Stdio").

:class:`OwnFunctions` reaches WASI's own implementation of a call the
runtime shadows, for the descriptors it leaves to WASI (files in a guest's
mapped directories).
"""

from __future__ import annotations

import ctypes
import functools
import struct
from typing import Any

from wasmtime import Engine, Linker, Module, Store, Trap, ValType, WasmtimeError, _ffi, wat2wasm

WASI = "wasi_snapshot_preview1"
I32, I64 = ValType.i32(), ValType.i64()
# WASI's errno values.
SUCCESS, EBADF, EFAULT, EINVAL, EIO, ESPIPE = 0, 8, 21, 28, 29, 70
ERRNO = {22: EINVAL, 29: ESPIPE}  # the host's EINVAL, ESPIPE


class OutOfBounds(ValueError):
    """A buffer outside the guest's memory."""


def buffers(caller: Any, iovs: int, count: int) -> list[Any]:
    """The guest's ``count`` buffers listed at ``iovs``, as writable views of its memory
    (valid until the call returns: a memory that grows may move); empty ones left out."""
    memory = caller["memory"]
    size = memory.data_len(caller)
    if iovs + 8 * count > size:
        raise OutOfBounds(iovs)
    base = ctypes.addressof(memory.data_ptr(caller).contents)
    vectors = ctypes.string_at(base + iovs, 8 * count)
    views = []
    for number in range(count):
        start, length = struct.unpack_from("<II", vectors, 8 * number)
        if start + length > size:
            raise OutOfBounds(start)
        if length:
            views.append((ctypes.c_ubyte * length).from_address(base + start))
    return views


def answer(caller: Any, pointer: int, value: int, form: str = "<I") -> int:
    """Write a call's result (``form``: a u32 by default) where the guest asked; SUCCESS."""
    caller["memory"].write(caller, struct.pack(form, value), pointer)
    return SUCCESS


# WASI's own functions are called through a module that exports the guest's memory
# as its own: WASI reads and writes the memory of the instance that calls it.
OWN = {"fd_read": [I32] * 4, "fd_pread": [I32, I32, I32, I64, I32],
       "fd_seek": [I32, I64, I32, I32], "fd_tell": [I32, I32],
       "fd_filestat_get": [I32, I32]}
_PARAMS = {name: " ".join(map(str, params)) for name, params in OWN.items()}
_TRAMPOLINE = "\n".join([
    '(module (import "env" "memory" (memory 1)) (export "memory" (memory 0))',
    *(f'(import "{WASI}" "{name}" (func ${name} (param {params}) (result i32)))'
      for name, params in _PARAMS.items()),
    *(f'(func (export "{name}") (param {params}) (result i32) '
      + " ".join(f"local.get {n}" for n in range(len(OWN[name]))) + f" call ${name})"
      for name, params in _PARAMS.items()),
    ")"])


class OwnFunctions:
    """WASI's own functions (:data:`OWN`) of a store, for one engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @functools.cached_property
    def _trampoline(self) -> Module:
        return Module(self._engine, wat2wasm(_TRAMPOLINE))

    def of(self, store: Store, instance: Any) -> dict[str, Any]:
        """WASI's own functions of ``store``, as they would be called by ``instance``."""
        linker = Linker(self._engine)
        linker.define_wasi()
        linker.define(store, "env", "memory", instance.exports(store)["memory"])
        exports = linker.instantiate(store, self._trampoline).exports(store)
        return {name: _RawCall(exports[name], params) for name, params in OWN.items()}


class _RawCall:
    """A wasm function taking integers and returning an i32, called through wasmtime's
    unchecked C call: ``Func.__call__`` builds the function's type and converts each
    value at every call, about 100 µs a call here, and a fresh interpreter's start
    makes some 60 of them (its library's zip, its script)."""

    def __init__(self, func: Any, params: list[ValType]) -> None:
        self._func = func._func
        self._fields = ["i64" if param == I64 else "i32" for param in params]
        self._values = (_ffi.wasmtime_val_raw_t * len(params))()

    def __call__(self, caller: Any, *args: int) -> int:
        values = self._values  # WASI's functions never call back: never in use twice
        for number, (field, value) in enumerate(zip(self._fields, args, strict=True)):
            setattr(values[number], field, value)
        trap = ctypes.POINTER(_ffi.wasm_trap_t)()
        error = _ffi.wasmtime_func_call_unchecked(
            caller._context(), ctypes.byref(self._func), values, len(values),
            ctypes.byref(trap))
        if error:
            raise WasmtimeError._from_ptr(error)
        if trap:
            raise Trap._from_ptr(trap)
        return values[0].i32
