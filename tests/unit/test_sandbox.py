"""The wasmtime runner on small WAT guests (real wasmtime, no cluster)."""

import hashlib
import os
import threading
import time
import types

import pytest
from wasmtime import wat2wasm

from zerocompute.sandbox import wasm
from zerocompute.sandbox.wasm import (
    MIB,
    ExecutableStore,
    GuestLimits,
    InvalidExecutable,
    WasmRuntime,
)

WASI = '(import "wasi_snapshot_preview1" "{0}" (func ${0} (param {1}) (result i32)))'
IMPORTS = "\n".join([WASI.format("fd_read", "i32 i32 i32 i32"),
                     WASI.format("fd_write", "i32 i32 i32 i32"),
                     '(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'])

CAT = f"""(module {IMPORTS}
 (memory (export "memory") 1)
 (func (export "_start")
  (loop $l
   (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 4096))
   (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
   (if (i32.eqz (i32.load (i32.const 8))) (then (return)))
   (i32.store (i32.const 4) (i32.load (i32.const 8)))
   (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
   (br $l))))"""
EXIT3 = f'(module {IMPORTS} (memory (export "memory") 1) (func (export "_start") ' \
        '(call $exit (i32.const 3))))'
# Writes 64 KiB of its memory to ``fd`` forever, as a guest that ignores EFBIG does.
FLOOD = f"""(module {IMPORTS}
 (memory (export "memory") 2)
 (func (export "_start")
  (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 65536))
  (loop $l (drop (call $fd_write (i32.const {{fd}}) (i32.const 0) (i32.const 1) (i32.const 8)))
   (br $l))))"""
# Calls ``{call}`` on descriptor {fd} with one buffer at {start}, {size} bytes long, its
# list at {iovs}, and exits with the errno it returns.
BAD_BUFFER = f"""(module {IMPORTS}
 (memory (export "memory") 1)
 (func (export "_start")
  (i32.store (i32.const 0) (i32.const {{start}})) (i32.store (i32.const 4) (i32.const {{size}}))
  (call $exit (call ${{call}} (i32.const {{fd}}) (i32.const {{iovs}}) (i32.const 1)
                              (i32.const 8)))))"""
# Reads stdin into two buffers at once (a short one, then the rest), as wasi-libc's
# fread does, and writes both out with one call.
SCATTER = f"""(module {IMPORTS}
 (memory (export "memory") 1)
 (func (export "_start")
  (loop $l
   (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 7))
   (i32.store (i32.const 8) (i32.const 2048)) (i32.store (i32.const 12) (i32.const 5000))
   (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 2) (i32.const 16)))
   (if (i32.eqz (i32.load (i32.const 16))) (then (return)))
   (if (i32.lt_u (i32.load (i32.const 16)) (i32.const 7))
    (then (i32.store (i32.const 4) (i32.load (i32.const 16)))
          (i32.store (i32.const 12) (i32.const 0)))
    (else (i32.store (i32.const 12) (i32.sub (i32.load (i32.const 16)) (i32.const 7)))))
   (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 2) (i32.const 16)))
   (br $l))))"""
SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
GROW = '(module (memory (export "memory") 1) (func (export "_start") ' \
       '(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable))'
RECURSE = '(module (memory (export "memory") 1) (func $f (export "_start") (call $f)))'
NO_START = '(module (memory (export "memory") 1) (func (export "main")))'


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def runtime(cache):
    return WasmRuntime(cache)


def store_wat(cache, wat):
    wasm = wat2wasm(wat)
    etag = hashlib.md5(wasm).hexdigest()
    ExecutableStore(cache).add(etag, wasm)
    return etag


def run(runtime, cache, tmp_path, wat, stdin=b"", **limits):
    etag = store_wat(cache, wat)
    (tmp_path / "in").write_bytes(stdin)
    module = runtime.prepare(ExecutableStore(cache).path(etag), key=etag)
    result = runtime.run(module, str(tmp_path / "in"), str(tmp_path / "out"), ["guest"], [],
                         GuestLimits(**limits))
    return result, (tmp_path / "out").read_bytes()


def test_stdin_reaches_stdout(runtime, cache, tmp_path):
    data = os.urandom(100_000)
    result, out = run(runtime, cache, tmp_path, CAT, data)
    assert result.ok and result.exit == 0 and out == data and result.stdout_bytes == len(data)


def test_stdin_fills_several_buffers_of_one_read(runtime, cache, tmp_path):
    data = os.urandom(300_001)
    result, out = run(runtime, cache, tmp_path, SCATTER, data)
    assert result.ok and out == data


@pytest.mark.parametrize("call, fd", [("fd_read", 0), ("fd_write", 1), ("fd_write", 2)])
@pytest.mark.parametrize("start, size, iovs", [
    (65536 - 10, 100, 0),  # a buffer running past the end of its memory
    (1 << 31, 16, 0),  # one far outside it
    (1024, 16, 65536 - 4),  # the list of buffers itself outside it
])
def test_a_buffer_outside_the_guests_memory_is_refused(runtime, cache, tmp_path, call, fd,
                                                      start, size, iovs):
    """A hostile guest's pointers get WASI's EFAULT (21); nothing is read or written."""
    result, out = run(runtime, cache, tmp_path,
                      BAD_BUFFER.format(call=call, fd=fd, start=start, size=size, iovs=iovs),
                      b"input" * 100)
    assert result.exit == 21 and result.error is None, result
    assert out == b"" and result.stderr_tail == b""


def test_stdin_from_a_pipe_reaches_the_guest_whole(runtime, cache, tmp_path):
    """As a streamed input (an encrypted object's plaintext) does: every byte once,
    none read away by anyone else."""
    data = os.urandom(3 * MIB + 17)
    module = runtime.prepare(ExecutableStore(cache).path(store_wat(cache, CAT)))
    read_end, write_end = os.pipe()

    def feed():
        with os.fdopen(write_end, "wb") as f:
            f.write(data)
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        result = runtime.run(module, f"/proc/self/fd/{read_end}", str(tmp_path / "out"),
                             ["guest"], [], GuestLimits())
    finally:
        feeder.join()
        os.close(read_end)
    assert result.ok and (tmp_path / "out").read_bytes() == data


def test_exit_status(runtime, cache, tmp_path):
    result, _ = run(runtime, cache, tmp_path, EXIT3)
    assert result.exit == 3 and not result.ok and result.error is None


def test_time_limit(runtime, cache, tmp_path):
    result, _ = run(runtime, cache, tmp_path, SPIN, time_s=0.2)
    assert result.error == "time limit 0.2 s exceeded" and 150 < result.ms < 5000


def test_time_limit_counts_wall_time_when_the_ticker_is_woken_late(cache, tmp_path,
                                                                  monkeypatch):
    """At nice 19 on a busy host the epoch thread sleeps far longer than it asks: the
    limit still falls due after its wall-clock seconds, not after as many wake-ups."""
    late = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time)
                                    if not name.startswith("_")})
    late.sleep = lambda seconds: time.sleep(seconds * 20)
    monkeypatch.setattr(wasm, "time", late)
    result, _ = run(WasmRuntime(cache), cache, tmp_path, SPIN, time_s=0.5)
    # Counted in wake-ups, 50 ticks of 0.2 s would be 10 s.
    assert result.error == "time limit 0.5 s exceeded" and 450 < result.ms < 2500


@pytest.mark.parametrize("fd, error", [(1, "output limit 1 MiB exceeded"),
                                       (2, "stderr limit 1 MiB exceeded")])
def test_a_write_past_a_limit_stops_the_guest_there(runtime, cache, tmp_path, fd, error):
    """Not at its time limit: the slot's CPU is not spent on a guest that lost."""
    result, out = run(runtime, cache, tmp_path, FLOOD.format(fd=fd), time_s=30,
                      output_bytes=MIB, stderr_bytes=MIB)
    assert result.error == error and result.ms < 5000
    assert len(out) <= MIB + 1


def test_memory_limit(runtime, cache, tmp_path):
    result, _ = run(runtime, cache, tmp_path, GROW, memory_bytes=8 * MIB)
    assert result.error == "memory limit 8 MiB exceeded"


def test_stack_overflow(runtime, cache, tmp_path):
    result, _ = run(runtime, cache, tmp_path, RECURSE)
    assert result.error == "stack overflow"


def test_output_limit_is_enforced_while_writing(runtime, cache, tmp_path):
    result, out = run(runtime, cache, tmp_path, CAT, b"x" * (3 * MIB), output_bytes=MIB)
    assert result.error == "output limit 1 MiB exceeded"
    # The kernel stopped the file at the limit: a guest cannot fill the disk.
    assert len(out) <= MIB + 1


def test_not_a_wasi_command(runtime, cache, tmp_path):
    result, _ = run(runtime, cache, tmp_path, NO_START)
    assert "no _start" in result.error


def test_invalid_executables_refused(cache):
    store = ExecutableStore(cache)
    text = b"#!/bin/sh\necho hi\n"
    with pytest.raises(InvalidExecutable, match="not a WebAssembly module"):
        store.add(hashlib.md5(text).hexdigest(), text)
    broken = b"\0asm\x01\0\0\0garbage"
    with pytest.raises(InvalidExecutable, match="invalid WebAssembly module"):
        store.add(hashlib.md5(broken).hexdigest(), broken)
    with pytest.raises(InvalidExecutable, match="does not match"):
        store.add("0" * 32, wat2wasm(EXIT3))
    with pytest.raises(InvalidExecutable, match="bad executable etag"):
        store.has("../../etc/passwd")
    assert not store.has("0" * 32)


def test_compiled_modules_cached_and_corruption_recovered(tmp_path):
    etag = store_wat(str(tmp_path), EXIT3)
    path = ExecutableStore(str(tmp_path)).path(etag)
    WasmRuntime(str(tmp_path)).prepare(path)
    compiled = [n for n in os.listdir(tmp_path / "compiled") if n.endswith(".cwasm")]
    assert len(compiled) == 1
    (tmp_path / "compiled" / compiled[0]).write_bytes(b"corrupt")
    second = WasmRuntime(str(tmp_path))  # a restarted executor: only the disk cache is left
    (tmp_path / "in").write_bytes(b"")
    result = second.run(second.prepare(path), str(tmp_path / "in"), str(tmp_path / "out"),
                        ["g"], [], GuestLimits())
    assert result.exit == 3
