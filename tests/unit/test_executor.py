"""The object server's executor pool with real executor processes and real wasmtime:
what a cancelled attempt (the requester hung up) costs."""

import hashlib
import http.server
import os
import socket
import subprocess
import threading
import time

import eventlet
import pytest
from wasmtime import wat2wasm

from tests.unit.test_shuffle_core import core_run
from zerocompute import wire
from zerocompute.sandbox import python, shuffle_io
from zerocompute.sandbox.executor import (
    CANCELLED,
    INTERRUPT_GRACE_S,
    ExecutorPool,
    guest_env,
    run_task,
)
from zerocompute.sandbox.wasm import ExecutableStore, WasmRuntime

SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
READ = """(module
 (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 1)
 (func (export "_start")
  (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 16))
  (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
CAT = """(module
 (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 1)
 (func (export "_start")
  (loop $copy
   (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 4096))
   (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
   (if (i32.load (i32.const 8)) (then
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 12)))
    (br $copy))))))"""


@pytest.fixture
def cache(tmp_path):
    os.makedirs(tmp_path / "scratch")
    return str(tmp_path)


def group(cache, wat, task="t1"):
    wasm = wat2wasm(wat)
    etag = hashlib.md5(wasm).hexdigest()
    ExecutableStore(cache).add(etag, wasm)
    return wire.TaskGroup(job="j", exec_etag=etag, exec_name="g.wasm", runtime="wasm",
                          args=(), env=(), limits=wire.Limits.from_dict({"time_s": 60}),
                          tasks=(wire.TaskSpec(task=task, device="sd1", partition=0,
                                               path="/a/c/o"),))


def run_cancelled(pool, task, stdin_fd, out_path, running_s=1.5):
    """Run ``task`` on behalf of a requester that hangs up after ``running_s``."""
    server_side, requester = socket.socketpair()
    with open(out_path, "wb") as out:
        fds = [os.dup(stdin_fd), os.dup(out.fileno())]
    thread = eventlet.spawn(pool.run, task, fds, 60, server_side)
    eventlet.sleep(running_s)  # the executor has started and the guest runs
    requester.close()
    hung_up = time.monotonic()
    with eventlet.Timeout(20):
        result = thread.wait()
    for fd in fds:
        os.close(fd)
    server_side.close()
    return result, time.monotonic() - hung_up


def test_a_cancelled_guest_is_interrupted_and_its_executor_takes_the_next_task(
        cache, tmp_path):
    pool = ExecutorPool(1, cache)
    try:
        with open(os.devnull, "rb") as empty:
            result, took = run_cancelled(pool, group(cache, SPIN), empty.fileno(),
                                         tmp_path / "out")
        assert result.error == CANCELLED
        assert took < INTERRUPT_GRACE_S, "stopped by a kill, not by the interrupt"
        assert pool.restarts == 0
        (executor,) = [pool.idle.get()]
        pid = executor.process.pid
        pool.idle.put(executor)
        # The same process runs the next task to its end: a stale cancel of the first
        # task (sent again now) does not stop it.
        with open(os.devnull, "rb") as empty, open(tmp_path / "out2", "wb") as out:
            fds = [os.dup(empty.fileno()), os.dup(out.fileno())]
            read = group(cache, READ, task="t2")
            with eventlet.Timeout(20):
                executor.control.send(str(executor.calls).encode())  # the old number
                result = pool.run(read, fds, 60)
            for fd in fds:
                os.close(fd)
        assert result.exit == 0 and result.error is None, result
        assert pool.restarts == 0
        assert pool.idle.get().process.pid == pid
    finally:
        pool.close()


def test_a_guest_the_interrupt_cannot_reach_has_its_executor_killed(cache, tmp_path):
    """Blocked in a host call (reading a pipe nobody writes to), the guest never
    reaches an epoch check: its executor is killed after the grace period."""
    pool = ExecutorPool(1, cache)
    reader, writer = os.pipe()
    try:
        result, took = run_cancelled(pool, group(cache, READ), reader, tmp_path / "out")
        assert result.error == CANCELLED
        assert took >= INTERRUPT_GRACE_S
        assert pool.restarts == 1
    finally:
        os.close(reader)
        os.close(writer)
        pool.close()


def test_scratch_of_dead_executors_is_removed_and_the_living_keep_theirs(tmp_path):
    from zerocompute.sandbox.executor import reap_scratch

    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in (f"shuffle-{dead.pid}-abc", f"split-{os.getpid()}-def", "unrelated"):
        os.makedirs(tmp_path / name / "inside")
    assert reap_scratch(str(tmp_path)) == [f"shuffle-{dead.pid}-abc"]
    assert sorted(os.listdir(tmp_path)) == sorted([f"split-{os.getpid()}-def", "unrelated"])


def test_the_runtime_adds_its_variables_only_where_the_task_sets_none():
    assert guest_env([("A", "1"), ("PYTHONPATH", "/mine")],
                     [("PYTHONPATH", "/app/startup.zip"), ("B", "2")]) == [
        ("A", "1"), ("PYTHONPATH", "/mine"), ("B", "2")]


@pytest.mark.skipif(not python.available(), reason="no Python runtime")
def test_a_python_task_goes_to_the_idle_executor_that_kept_its_runs_interpreter(
        cache, tmp_path):
    """Two runs' interpreters in two executors: each run's next tasks find their own,
    whichever executor went idle first (without the preference the queue's order
    would hand every other task to the other run's executor, a fresh start each)."""
    script = (b"import sys, time\nseen = getattr(sys, 'zc_seen', 0)\nsys.zc_seen = seen + 1\n"
              b"time.sleep(float(sys.argv[1]))\nprint(seen)\n")
    etag = hashlib.md5(script).hexdigest()
    ExecutableStore(cache).add(etag, script, "python")
    stdin = tmp_path / "in"
    stdin.write_bytes(b"")
    pool = ExecutorPool(2, cache)

    def run(run_id, sleep_s=0.0):
        task = wire.TaskGroup(
            job="j", run=run_id, exec_etag=etag, exec_name="main.py", runtime="python",
            args=(str(sleep_s),), env=(), limits=wire.Limits.from_dict({"time_s": 60}),
            tasks=(wire.TaskSpec(task="t", device="sd1", partition=0, path="/a/c/o"),))
        out = tmp_path / f"out-{run_id}"
        with open(stdin, "rb") as inp, open(out, "wb") as outp:
            result = pool.run(task, [os.dup(inp.fileno()), os.dup(outp.fileno())], 60)
        assert result.exit == 0 and result.error is None, result
        return out.read_bytes()

    try:
        with eventlet.Timeout(120):
            first = [eventlet.spawn(run, "a", 1.0), eventlet.spawn(run, "b", 1.5)]
            assert [t.wait() for t in first] == [b"0\n", b"0\n"]
            assert pool.started == 2
            assert [run(r) for r in ("a", "a", "b", "b", "a")] == \
                [b"1\n", b"2\n", b"1\n", b"2\n", b"3\n"]
    finally:
        pool.close()


# -- a reduce whose map output arrives damaged ------------------------------------------------
def serve_map_output(body: bytes, requested: list[str]) -> http.server.HTTPServer:
    """A map's node that answers every shuffle GET with ``body`` (the paths asked go
    to ``requested``); shut it down after the test."""
    class MapNode(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            requested.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), MapNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_reduce(cache, wat, sources, out_path, server):
    """Reduce partition 0 of shuffle ``s1`` from ``sources`` with the guest ``wat``, its
    output to ``out_path``; ``server`` (the maps' node) is shut down after."""
    reducer = group(cache, wat)
    reduce = wire.TaskGroup(
        job="j", kind="reduce", exec_etag=reducer.exec_etag, exec_name="g.wasm",
        runtime="wasm", args=(), env=(), limits=reducer.limits,
        shuffle=wire.ShuffleSpec(id="s1", partitions=1),
        tasks=(wire.TaskSpec(task="r00000", device="", partition=0, path="",
                             reduce_partition=0, sources=sources),))
    fds = [os.open(os.devnull, os.O_RDONLY), os.open(out_path, os.O_RDWR | os.O_CREAT)]
    try:
        return run_task(WasmRuntime(cache), ExecutableStore(cache), cache, reduce, fds,
                        lambda: None)
    finally:
        server.shutdown()
        for fd in fds:
            os.close(fd)


def test_a_damaged_map_output_fails_its_reduce_with_the_cores_reason(cache, tmp_path,
                                                                     monkeypatch):
    """A run cut short in its record (a truncated fetch, a damaged disk): the reduce
    fails with the shuffle core's reason; its executor lives on."""
    damaged = bytes([5, 1]) + b"ab"  # a key of five bytes, two of them sent
    server = serve_map_output(damaged, [])
    node = f"127.0.0.1:{server.server_port}"
    monkeypatch.setenv(shuffle_io.ROOT_ENV, shuffle_io.shuffle_root(cache, "127.0.0.1:1"))
    result = run_reduce(cache, READ, ((node, "m00000"),), tmp_path / "out", server)
    assert result.error is not None and "damaged" in result.error, result
    assert not result.lost, "the run arrived: nothing to make again"


def test_a_reduce_links_its_own_servers_map_outputs_and_fetches_the_rest(
        cache, tmp_path, monkeypatch):
    """Hadoop's LocalFetcher: a map output on the reducer's own server is linked, not
    requested (nothing listens at that server's address here), and stays for a rerun;
    another server's is fetched over HTTP."""
    requested = []
    server = serve_map_output(core_run([(b"b", b"2")]), requested)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        own = f"127.0.0.1:{unused.getsockname()[1]}"
    root = shuffle_io.shuffle_root(cache, own)
    monkeypatch.setenv(shuffle_io.ROOT_ENV, root)
    kept = shuffle_io.partition_file(root, "s1", "m00000", 0)
    os.makedirs(os.path.dirname(kept))
    with open(kept, "wb") as f:
        f.write(core_run([(b"a", b"1"), (b"c", b"3")]))
    result = run_reduce(cache, CAT, ((own, "m00000"), (f"127.0.0.1:{server.server_port}",
                                                       "m00001")), tmp_path / "out", server)
    assert result.error is None and not result.lost, result
    assert (tmp_path / "out").read_bytes() == b"a\t1\nb\t2\nc\t3\n"
    assert requested == [wire.shuffle_path("s1", "m00001", 0)], "only the other server's"
    assert os.path.exists(kept), "the server's own map output stays for a rerun"
