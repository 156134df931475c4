"""The shuffle core: the shuffle's per-record work at WebAssembly speed.

``shuffle_core.c`` (beside this file) parses a map's records, partitions,
sorts, spills and merges them, and merges a reducer's input, as a WASI
command the executors run under wasmtime like any guest: compiled code,
sandboxed (it reads what guests wrote), bounded by the sort buffer.  No
record passes through the host's Python; this module only builds the core,
tells it the job's layout and runs its commands over whole files
(``doc/shuffle.md`` has the decision and its measurements).

The core is built from its source with the ``zig cc`` of the ``ziglang``
package on first use, once per host (cached by the source's hash, like the
shipped guests), then compiled and cached by wasmtime as any module is.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from zerocompute.guests import build_c_guest
from zerocompute.sandbox.wasm import (
    MIB,
    GuestLimits,
    InvalidExecutable,
    Mount,
    WasmRuntime,
    write_atomically,
)
from zerocompute.wire import ShuffleSpec

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shuffle_core.c")
FLAGS = ("-msimd128",)  # WebAssembly's SIMD (wasmtime runs it): 16 bytes a step
SCRATCH, OUTPUT = "/s", "/o"  # the core's two directories, as it sees them
EXIT_DATA = 65  # the records are not what they should be: the task's fault
# What the core needs beyond its sort buffer: read and write buffers, a merge's
# sources, its code and stack.
ALLOWANCE_BYTES = 64 * MIB
UNLIMITED_FILE_BYTES = 1 << 50


class CoreFailed(ValueError):
    """The shuffle could not go on: ``data`` when the records were at fault (the
    message is the user's to read), else something went wrong in the core itself."""

    def __init__(self, message: str, data: bool):
        super().__init__(message)
        self.data = data


def module_path(cache_dir: str) -> str:
    """The core's WebAssembly module, built on first use."""
    return build_c_guest(SOURCE, cache_dir=os.path.join(cache_dir, "shuffle-core"),
                         flags=FLAGS)


def machine_build() -> str:
    """The core built once per machine, with the shipped guests' builds."""
    return build_c_guest(SOURCE, flags=FLAGS)


def install(cache_dir: str) -> str:
    """Put the core's :func:`machine_build` where the object servers using
    ``cache_dir`` look for it: a dev cluster's servers then build nothing."""
    built = machine_build()
    target = os.path.join(cache_dir, "shuffle-core", os.path.basename(built))
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(built, "rb") as f:
            write_atomically(target, f.read())
    return target


def layout(spec: ShuffleSpec) -> tuple[str, bytes]:
    """The core's ``layout`` file for a job's shuffle, and its ``splits`` file."""
    lines = [f"form {spec.records}", f"partitions {spec.partitions}",
             f"budget {spec.memory_bytes}", f"named {int(bool(spec.outputs))}"]
    first = 0
    for name, count in spec.outputs:
        lines.append(f"unit {name} {first} {count}")
        first += count
    splits = [base64.b64decode(key) for key in spec.splits]
    lines.append(f"splits {len(splits)}")
    framed = b"".join(len(key).to_bytes(4, "big") + key for key in splits)
    return "\n".join(lines) + "\n", framed


@dataclass
class Steps:
    """Wall and CPU milliseconds per shuffle step, summed over a task's commands."""

    times: dict[str, list[float]]

    @classmethod
    def empty(cls) -> Steps:
        return cls({})

    def add(self, step: str, wall_ms: float, cpu_ms: float) -> None:
        spent = self.times.setdefault(step, [0.0, 0.0])
        spent[0] += wall_ms
        spent[1] += cpu_ms

    def add_core(self, summary: dict) -> None:
        for step, (wall_ns, cpu_ns) in summary.get("steps", {}).items():
            if wall_ns or cpu_ns:
                self.add(step, wall_ns / 1e6, cpu_ns / 1e6)

    def as_list(self) -> list[tuple[str, float, float]]:
        return [(step, round(wall, 3), round(cpu, 3)) for step, (wall, cpu) in self.times.items()]


class Core:
    """Runs the core's commands for one task, in its scratch directory."""

    def __init__(self, runtime: WasmRuntime, cache_dir: str, spec: ShuffleSpec, scratch: str,
                 output: str | None, limits: GuestLimits):
        self.runtime = runtime
        try:
            self.module = runtime.prepare(module_path(cache_dir), key="shuffle-core", tool=True)
        except (RuntimeError, InvalidExecutable) as err:
            raise CoreFailed(f"this object server cannot build its shuffle core: {err}",
                             data=False) from None
        self.scratch = scratch
        self.mounts = [Mount(scratch, SCRATCH, True)]
        if output is not None:
            self.mounts.append(Mount(output, OUTPUT, True))
        text, splits = layout(spec)
        with open(os.path.join(scratch, "layout"), "w") as f:
            f.write(text)
        with open(os.path.join(scratch, "splits"), "wb") as f:
            f.write(splits)
        # The task's time; memory: the sort buffer and what the core needs around it.
        # Its files are as large as the data it is given (a reducer's input is every
        # map's partition): no size limit of their own.
        self.limits = GuestLimits(time_s=limits.time_s,
                                  memory_bytes=spec.memory_bytes + ALLOWANCE_BYTES,
                                  output_bytes=UNLIMITED_FILE_BYTES, stderr_bytes=1 << 20)
        self.steps = Steps.empty()
        self.runs = 0

    def path(self, name: str) -> str:
        """A scratch file, as the core names it."""
        return f"{SCRATCH}/{name}"

    def __call__(self, *argv: str | int) -> dict:
        """Run one command; its summary (:class:`CoreFailed` if it fails)."""
        self.runs += 1
        summary_path = os.path.join(self.scratch, f"summary-{self.runs}")
        ran = self.runtime.run(self.module, os.devnull, summary_path,
                               ["shuffle_core", *map(str, argv)], [], self.limits, self.mounts)
        message = ran.stderr_tail.decode("utf-8", "replace").strip().splitlines()
        if ran.error is not None or ran.exit != 0:
            if ran.exit == EXIT_DATA and message:
                raise CoreFailed(message[-1], data=True)
            why = ran.error or f"exit status {ran.exit}"
            raise CoreFailed(f"the shuffle failed: {why}"
                             + (f": {message[-1]}" if message else ""), data=False)
        with open(summary_path, "rb") as f:
            summary = json.loads(f.read())
        os.unlink(summary_path)
        self.steps.add_core(summary)
        return summary

    def timed(self, step: str, started: float, cpu_started: float) -> None:
        """Count the time since ``started`` (``time.perf_counter``, ``time.thread_time``)
        for ``step``: work done beside the core (a combiner's guest, fetches)."""
        self.steps.add(step, (time.perf_counter() - started) * 1000,
                       (time.thread_time() - cpu_started) * 1000)


def run_names(prefix: str, count: int) -> Sequence[str]:
    """The runs a ``sort --runs PREFIX`` wrote."""
    return [f"{prefix}-{n:04d}" for n in range(count)]
