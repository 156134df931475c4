"""The wasmtime runner on small WAT guests (real wasmtime, no cluster)."""

import hashlib
import os

import pytest
from wasmtime import wat2wasm

from zerocompute.sandbox.wasm import MIB, GuestLimits, InvalidExecutable, WasmRuntime

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
SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
GROW = '(module (memory (export "memory") 1) (func (export "_start") ' \
       '(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable))'
RECURSE = '(module (memory (export "memory") 1) (func $f (export "_start") (call $f)))'
NO_START = '(module (memory (export "memory") 1) (func (export "main")))'


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return WasmRuntime(str(tmp_path_factory.mktemp("cache")))


def run(runtime, tmp_path, wat, stdin=b"", **limits):
    wasm = wat2wasm(wat)
    etag = hashlib.md5(wasm).hexdigest()
    runtime.add_executable(etag, wasm)
    (tmp_path / "in").write_bytes(stdin)
    result = runtime.run(runtime.module(etag), str(tmp_path / "in"), ["guest"], [],
                         GuestLimits(**limits), str(tmp_path / "out"), str(tmp_path / "err"))
    return result, (tmp_path / "out").read_bytes()


def test_stdin_reaches_stdout(runtime, tmp_path):
    data = os.urandom(100_000)
    result, out = run(runtime, tmp_path, CAT, data)
    assert result.ok and result.exit == 0 and out == data and result.stdout_bytes == len(data)


def test_exit_status(runtime, tmp_path):
    result, _ = run(runtime, tmp_path, EXIT3)
    assert result.exit == 3 and not result.ok and result.error is None


def test_time_limit(runtime, tmp_path):
    result, _ = run(runtime, tmp_path, SPIN, time_s=0.2)
    assert result.error == "time limit 0.2 s exceeded" and 150 < result.ms < 5000


def test_memory_limit(runtime, tmp_path):
    result, _ = run(runtime, tmp_path, GROW, memory_bytes=8 * MIB)
    assert result.error == "memory limit 8 MiB exceeded"


def test_stack_overflow(runtime, tmp_path):
    result, _ = run(runtime, tmp_path, RECURSE)
    assert result.error == "stack overflow"


def test_output_limit(runtime, tmp_path):
    result, _ = run(runtime, tmp_path, CAT, b"x" * (2 * MIB), output_bytes=MIB)
    assert result.error == "output limit 1 MiB exceeded"


def test_not_a_wasi_command(runtime, tmp_path):
    result, _ = run(runtime, tmp_path, NO_START)
    assert "no _start" in result.error


def test_invalid_executables_refused(runtime):
    text = b"#!/bin/sh\necho hi\n"
    with pytest.raises(InvalidExecutable, match="not a WebAssembly module"):
        runtime.add_executable(hashlib.md5(text).hexdigest(), text)
    broken = b"\0asm\x01\0\0\0garbage"
    with pytest.raises(InvalidExecutable, match="invalid WebAssembly module"):
        runtime.add_executable(hashlib.md5(broken).hexdigest(), broken)
    wasm = wat2wasm(EXIT3)
    with pytest.raises(InvalidExecutable, match="does not match"):
        runtime.add_executable("0" * 32, wasm)
    assert not runtime.has_executable("0" * 32)


def test_compiled_modules_cached_and_corruption_recovered(tmp_path):
    wasm = wat2wasm(EXIT3)
    etag = hashlib.md5(wasm).hexdigest()
    first = WasmRuntime(str(tmp_path))
    first.add_executable(etag, wasm)
    compiled = os.listdir(tmp_path / "compiled")
    assert len(compiled) == 1 and compiled[0].endswith(".cwasm")
    (tmp_path / "compiled" / compiled[0]).write_bytes(b"corrupt")
    second = WasmRuntime(str(tmp_path))  # a restarted server: only the disk cache is left
    assert second.has_executable(etag)
    (tmp_path / "in").write_bytes(b"")
    result = second.run(second.module(etag), str(tmp_path / "in"), ["g"], [], GuestLimits(),
                        str(tmp_path / "out"), str(tmp_path / "err"))
    assert result.exit == 3
