"""Resident Python interpreters (sandbox/resident.py), with real wasmtime and the real
CPython for WASI: tasks of one job share an interpreter, and each task's input,
output, environment, limits, failure and counters stay its own."""

import hashlib
import os
import threading
import time

import pytest

from zerocompute import wire
from zerocompute.sandbox import python
from zerocompute.sandbox.executor import run_task
from zerocompute.sandbox.wasm import INTERRUPTED, ExecutableStore, WasmRuntime

pytestmark = pytest.mark.skipif(not python.available(), reason="no Python runtime")

# Counts the tasks this interpreter has run, in a module every task sees (sys).
TASKS_SEEN = "import sys\nseen = getattr(sys, 'zc_seen', 0)\nsys.zc_seen = seen + 1\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    os.makedirs(os.path.join(cache, "scratch"))
    return WasmRuntime(cache), ExecutableStore(cache), cache


def run(sandbox, tmp_path, source, data=b"", args=(), env=(), job="j", time_s=10, task="t"):
    runtime, executables, cache = sandbox
    script = source.encode()
    etag = hashlib.md5(script).hexdigest()
    executables.add(etag, script, "python")
    group = wire.TaskGroup(
        job="job", run=job, exec_etag=etag, exec_name="main.py", runtime="python", args=tuple(args),
        env=(), limits=wire.Limits.from_dict({
            "time_s": time_s, "cpu_s": 100, "memory_mb": 256, "output_mb": 16,
            "stderr_mb": 1, "stderr_tail_kb": 4, "table_elements": 100000, "instances": 10}),
        tasks=(wire.TaskSpec(task=task, device="sd1", partition=0, path="/a/c/o",
                             env=tuple(env)),))
    stdin, stdout = tmp_path / f"{task}.in", tmp_path / f"{task}.out"
    stdin.write_bytes(data)
    stdout.write_bytes(b"")
    fds = [os.open(stdin, os.O_RDONLY), os.open(stdout, os.O_RDWR)]
    try:
        result = run_task(runtime, executables, cache, group, fds, lambda: None)
    finally:
        for fd in fds:
            os.close(fd)
    return result, stdout.read_bytes()


def in_one_run(sandbox, tmp_path, source, job, tasks=2, **kwargs):
    """``tasks`` tasks of ``source`` in one run of a job, one after another: their
    (result, output) pairs."""
    return [run(sandbox, tmp_path, source, job=job, task=f"t{n}", **kwargs)
            for n in range(tasks)]


def succeeded(result) -> bool:
    return result.exit == 0 and result.error is None


def test_tasks_of_a_job_share_the_interpreter_each_with_its_own_namespace_argv_env_and_input(
        sandbox, tmp_path):
    source = TASKS_SEEN + (
        "import os\nX = globals().get('X', 0) + 1\n"
        "print(seen, X, sys.argv[1:], os.environ.get('T'), sys.stdin.read())\n")
    outputs = [run(sandbox, tmp_path, source, f"in{n}".encode(), [f"a{n}"], [("T", str(n))],
                   job="share", task=f"t{n}") for n in range(3)]
    assert [succeeded(result) for result, _ in outputs] == [True] * 3
    assert [out for _, out in outputs] == [
        f"{n} 1 ['a{n}'] {n} in{n}\n".encode() for n in range(3)]


def test_a_task_reading_part_of_its_input_leaves_nothing_for_the_next(sandbox, tmp_path):
    first, _ = run(sandbox, tmp_path, "import sys\nsys.stdin.readline()\n", b"a\n" * 100000,
                   job="part", task="t1")
    second, out = run(sandbox, tmp_path, TASKS_SEEN + "sys.stdout.write(sys.stdin.read())\n",
                      b"only this\n", job="part", task="t2")
    assert succeeded(first) and succeeded(second)
    assert out == b"only this\n"


def test_environment_changes_and_the_token_stay_out_of_the_next_task(sandbox, tmp_path):
    source = TASKS_SEEN + (
        "import os\nprint(seen, sorted(k for k in os.environ if k.startswith(('ZC', 'ZERO'))))"
        "\nos.environ['ZC_LEAK'] = '1'\n")
    outs = [out for _, out in in_one_run(sandbox, tmp_path, source, "env")]
    assert outs == [b"0 []\n", b"1 []\n"]


def test_stdout_and_stderr_are_each_tasks_own(sandbox, tmp_path):
    source = TASKS_SEEN + (
        "import sys\nsys.stdout.write(f'out{seen}')\nsys.stderr.write(f'err{seen}')\n")
    (first, out1), (second, out2) = in_one_run(sandbox, tmp_path, source, "io")
    assert (out1, first.stderr, out2, second.stderr) == (b"out0", "err0", b"out1", "err1")


def test_a_task_that_replaced_the_standard_streams_leaves_the_next_its_own(
        sandbox, tmp_path):
    source = TASKS_SEEN + (
        "import io\nprint(seen)\nsys.stdout = sys.__stdout__ = io.StringIO()\n"
        "sys.stderr = sys.__stderr__ = io.StringIO()\n")
    outs = [out for _, out in in_one_run(sandbox, tmp_path, source, "streams")]
    assert outs == [b"0\n", b"1\n"]


def test_counters_are_each_tasks_own(sandbox, tmp_path):
    source = TASKS_SEEN + (
        "import zerocompute_guest\nzerocompute_guest.increment_counter('g', 'n', seen + 1)\n")
    results = [result for result, _ in in_one_run(sandbox, tmp_path, source, "counters")]
    assert [r.counters for r in results] == [{"g": {"n": 1}}, {"g": {"n": 2}}]


@pytest.mark.parametrize("failure, error", [
    ("sys.exit(3)", None), ("raise ValueError('boom')", None),
    ("while True: pass", "time limit 1 s exceeded")])
def test_a_failed_task_is_its_own_and_the_next_gets_a_fresh_interpreter(
        sandbox, tmp_path, failure, error):
    job = f"fail-{hash(failure)}"
    ok, _ = run(sandbox, tmp_path, TASKS_SEEN, job=job, task="t1", time_s=1)
    failed, _ = run(sandbox, tmp_path, TASKS_SEEN + failure, job=job, task="t2", time_s=1)
    after, out = run(sandbox, tmp_path, TASKS_SEEN + "print(seen)", job=job, task="t3",
                     time_s=1)
    assert succeeded(ok) and not succeeded(failed) and succeeded(after)
    assert failed.error == error
    if error is None:
        assert failed.exit in (1, 3)
    assert out == b"0\n"  # a fresh interpreter: it has seen no task before this one


def test_the_time_limit_is_per_task(sandbox, tmp_path):
    spin = TASKS_SEEN + ("import time\nend = time.monotonic() + 0.6\n"
                         "while time.monotonic() < end: pass\nprint(seen)")
    outs = in_one_run(sandbox, tmp_path, spin, "deadline", tasks=3, time_s=1)
    assert [(succeeded(r), out) for r, out in outs] == [
        (True, b"0\n"), (True, b"1\n"), (True, b"2\n")]


def test_another_run_gets_another_interpreter_and_tasks_of_no_known_run_share_none(
        sandbox, tmp_path):
    """``run`` is the job's id (its name, ``job``, is the same in every run)."""
    source = TASKS_SEEN + "print(seen)"
    outs = [run(sandbox, tmp_path, source, job=job, task=f"t{n}")[1]
            for n, job in enumerate(("a", "a", "b", "", ""))]
    assert outs == [b"0\n", b"1\n", b"0\n", b"0\n", b"0\n"]


def test_descriptor_0_is_the_tasks_input_for_seek_stat_and_read(sandbox, tmp_path):
    source = TASKS_SEEN + (
        "import os\nfirst = os.read(0, 3)\nos.lseek(0, 0, 0)\n"
        "print(seen, os.fstat(0).st_size, first, sys.stdin.buffer.read())\n"
        "try:\n    os.write(0, b'x')\nexcept OSError as e:\n    print(e.errno)\n")
    outs = [run(sandbox, tmp_path, source, b"abcdef" * (n + 1), job="fd0", task=f"t{n}")[1]
            for n in range(2)]
    assert outs == [b"0 6 b'abc' b'abcdef'\n8\n", b"1 12 b'abc' b'abcdefabcdef'\n8\n"]


def test_an_interrupted_task_ends_and_the_next_runs_fresh(sandbox, tmp_path):
    runtime = sandbox[0]
    runtime.begin(1)
    run(sandbox, tmp_path, TASKS_SEEN, job="cancel", task="t1")
    timer = threading.Timer(1.0, runtime.interrupt, args=(1,))
    timer.start()
    began = time.monotonic()
    cancelled, _ = run(sandbox, tmp_path, "while True: pass", job="cancel", task="t2")
    assert cancelled.error == INTERRUPTED and time.monotonic() - began < 5
    runtime.begin(2)
    after, out = run(sandbox, tmp_path, TASKS_SEEN + "print(seen)", job="cancel", task="t3")
    assert succeeded(after) and out == b"0\n"
