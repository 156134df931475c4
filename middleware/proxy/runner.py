"""Running a job: its phases, its tasks' placement, their results and outputs.

A job is built from a checked manifest (:func:`accept`: every executable,
input and output checked as the user first, nothing written before) and
runs on this proxy (:meth:`Job.run`, synchronous or as an async job):

- :class:`MapJob`: one map task per input object or split, beside a replica
  (or a fragment holder); each output written as it arrives, or gathered into
  the one output object;
- :class:`MapReduceJob`: maps whose outputs stay on their nodes, partitioned
  (``doc/shuffle.md``), then one reduce per partition; for a total order, a
  sampling phase before the maps;
- :class:`StepsJob`: jobs in a chain, each step's output the next one's input.

Each phase of a job is a :class:`Phase` (its task states, what its groups
share, the executables they may need, what to do with each claimed result,
and the reports they go into), run by the job's :class:`PhaseRunner` through
the proxy's :class:`~zerocompute.middleware.proxy.dispatch.Dispatcher`.
:func:`run_one_task` runs a single task the same way, for execution on GET.
"""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import eventlet
from eventlet import GreenPool
from swift.common.storage_policy import EC_POLICY, POLICIES
from swift.common.swob import str_to_wsgi
from swift.common.wsgi import make_env
from swift.proxy.controllers.base import get_container_info

from zerocompute import wire
from zerocompute.async_state import new_job_id
from zerocompute.errors import JobError
from zerocompute.manifest import Manifest, NamedOutput, Stage, SwiftPath, runtime_of
from zerocompute.middleware.proxy.context import JobContext
from zerocompute.middleware.proxy.dispatch import Dispatcher, PhaseDispatch, ResultHandler
from zerocompute.middleware.proxy.outputs import (
    SPOOL_MEMORY,
    Gathered,
    Outputs,
    OutputStream,
    read_output,
)
from zerocompute.placement import RunSettings, TaskState, node_key, node_label
from zerocompute.planning import InputObject, MapTask, evenly_spaced, plan_map_tasks
from zerocompute.report import SUCCEEDED, Attempt, JobReport, TaskReport
from zerocompute.shuffle import HASH, RANGE, framed_keys, split_points

# A total order's sample (MapReduceJob.sample_split_points): inputs, bytes of each, keys
# of each.  TeraSort's sampler reads 100,000 keys from ten splits.
SAMPLE_TASKS = 10
SAMPLE_BYTES = 1 << 20
SAMPLE_KEYS = 10_000
# The maps of a lost output, and the reduces that needed it, run again at most twice.
LOST_OUTPUT_ROUNDS = 3

Executables = dict[SwiftPath, tuple[str, bytes]]  # path -> (ETag, bytes)


class Job(Protocol):
    """What the proxy filter and the async API need of a job."""

    job_id: str
    manifest: Manifest

    def run(self) -> JobReport: ...

    def cancel(self, reason: str) -> None: ...

    def progress(self) -> dict[str, int]: ...


# -- building a job ----------------------------------------------------------------------
def accept(ctx: JobContext, dispatcher: Dispatcher, manifest: Manifest,
           job_id: str | None = None, resume: bool = False) -> MapJob | StepsJob:
    """Check everything a manifest names as the request's user: the job, ready to run,
    or a :class:`JobError` saying what is wrong (nothing written).  A job taken over
    keeps its ``job_id`` and ``resume``s: it skips what it committed before."""
    steps = manifest.steps or (manifest,)
    executables: Executables = {}
    for number, step in enumerate(steps):
        fetch_executables(ctx, step, executables, f"steps[{number}]." if manifest.steps else "")
    if not manifest.steps:
        return build_job(ctx, dispatcher, manifest, executables, job_id, resume)
    chain_id = job_id or new_job_id()
    try:
        first = build_job(ctx, dispatcher, steps[0], executables, f"{chain_id}-0", resume)
    except JobError as err:
        raise JobError(err.error, f"steps[0].{err.field}" if err.field else "steps[0]",
                       err.status) from None
    return StepsJob(ctx, dispatcher, manifest, first, executables, chain_id, resume)


def fetch_executables(ctx: JobContext, manifest: Manifest, executables: Executables,
                      where: str) -> None:
    """Every executable of a job, read as the user (once each)."""
    wanted = [(manifest.map.exec, "map.exec")]
    if manifest.combine is not None:
        wanted.append((manifest.combine.exec, "combine.exec"))
    for out in manifest.reduce_outputs:
        wanted.append((out.reduce.exec, f"outputs.{out.name}.reduce.exec" if out.name
                       else "reduce.exec"))
    for path, field in wanted:
        if path not in executables:
            with ctx.checking(where + field):
                executables[path] = ctx.fetch_executable(path)


def build_job(ctx: JobContext, dispatcher: Dispatcher, manifest: Manifest,
              executables: Executables, job_id: str | None = None,
              resume: bool = False) -> MapJob:
    """Expand the inputs, plan the tasks, prepare the outputs: the job, ready to run."""
    whole = manifest.map.large_objects == "whole"
    found = []
    for number, pattern in enumerate(manifest.map.inputs):
        with ctx.checking(f"map.inputs[{number}]"):
            found.append(ctx.expand_input(pattern, whole))
    tasks = plan_map_tasks(manifest, found)
    if len(tasks) > ctx.config.max_tasks:
        raise JobError(f"{len(tasks)} tasks; this cluster runs at most "
                       f"{ctx.config.max_tasks} per job", "map.inputs", status=413)
    if not manifest.reduce_outputs:
        ctx.prepare_output(manifest.output)
        return MapJob(ctx, dispatcher, manifest, executables, tasks, job_id, resume)
    for out in manifest.reduce_outputs:
        ctx.prepare_output(out.prefix)
    return MapReduceJob(ctx, dispatcher, manifest, executables, tasks, job_id, resume)


# -- placing and running a phase --------------------------------------------------------------
@dataclass
class Phase:
    """One phase of a job: its tasks, what their groups share, the executables a group
    may need, what to do with each claimed result, and the reports the results go
    into (by each state's ``index``)."""

    states: list[TaskState]
    template: wire.TaskGroup
    executables: dict[str, bytes]
    on_result: ResultHandler
    reports: list[TaskReport]
    # A state's input object and its size, for a task that may be streamed through
    # the proxy (its input encrypted at rest); None: the phase's never are.
    input_of: Callable[[TaskState], tuple[SwiftPath, int]] | None = None


class Placer:
    """Where a job's inputs are: their policy, partition and nodes (ring lookups, and
    container info once per container)."""

    def __init__(self, ctx: JobContext, dispatcher: Dispatcher):
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.policies: dict[str, int] = {}

    def state(self, index: int, task: MapTask, exact: bool = False) -> TaskState | None:
        """A map task's state, or None when its input cannot be located."""
        item = task.input
        path = f"/{item.path.account}/{item.path.container}/{item.path.obj}"
        env = (("ZEROCOMPUTE_INPUT", str(item.path)),
               ("ZEROCOMPUTE_INPUT_SIZE", str(item.size)),
               ("ZEROCOMPUTE_TASK", task.task_id))
        if task.whole:  # a large object read whole: nowhere local, streamed
            return self.streamed(TaskState(index, wire.TaskSpec(
                task=task.task_id, device="", partition=0, path=path, env=env),
                candidates=[[], []], size=item.size), item.path, item.size)
        placement = self.placement(item.path)
        if placement is None:
            return None
        policy_index, partition, primaries, handoffs = placement
        if task.split is not None:
            env += (("ZEROCOMPUTE_SPLIT_START", str(task.split[0])),
                    ("ZEROCOMPUTE_SPLIT_END", str(task.split[1])))
        ec = erasure_code(policy_index, partition, path, primaries)
        if ec is None:
            candidates = [primaries, handoffs]
        else:
            # Data fragments first: a systematic code then decodes without arithmetic.
            data = [n for n in primaries if n["index"] < ec.k]
            candidates = [data, [n for n in primaries if n not in data], handoffs]
        edges = None if task.segment is None else (
            task.segment.skip, base64.b64encode(task.segment.carry).decode("ascii"))
        spec = wire.TaskSpec(task=task.task_id, device="", partition=partition, path=path,
                             policy=policy_index, env=env, split=task.split, exact=exact,
                             ec=ec, edges=edges)
        size = item.size if task.split is None else task.split[1] - task.split[0]
        return TaskState(index, spec, candidates, size=size)

    def placement(self, path: SwiftPath) -> tuple[int, int, list, list] | None:
        """Policy, partition, primaries and handoffs of an object (None if unknown)."""
        try:
            policy_index = self.policies.get(path.container_path)
            if policy_index is None:
                env = make_env(self.ctx.req.environ, path=str_to_wsgi(path.container_path))
                info = get_container_info(env, self.ctx.app, swift_source=wire.SWIFT_SOURCE)
                policy_index = self.policies[path.container_path] = \
                    int(info.get("storage_policy") or 0)
            ring = POLICIES.get_object_ring(policy_index, self.ctx.config.swift_dir)
            partition, primaries = ring.get_nodes(path.account, path.container, path.obj)
            handoffs = list(itertools.islice(ring.get_more_nodes(partition), 2))
        except Exception as err:  # noqa: BLE001 - reported per task
            self.ctx.logger.warning("zerocompute: cannot locate %s: %s", path, err)
            return None
        return policy_index, partition, primaries, handoffs

    def streamed(self, state: TaskState, target: SwiftPath, size: int) -> TaskState:
        """``state`` as a task whose plaintext the proxy streams to any object server."""
        return state.attempt_afresh(
            candidates=[self.any_nodes(), []], spec=replace(state.spec, ec=None,
                                                           stream_bytes=size),
            opener=lambda: self.ctx.open_plaintext(target, size))

    def any_nodes(self) -> list[dict]:
        """Every object server of the ring the inputs live in, once each, shuffled: for
        a task that may run anywhere (a reduce, a streamed input)."""
        policy_index = next(iter(self.policies.values()), 0)
        ring = POLICIES.get_object_ring(policy_index, self.ctx.config.swift_dir)
        nodes = list({node_key(n): n for n in ring.devs if n}.values())
        self.dispatcher.rng.shuffle(nodes)
        return nodes


class PhaseRunner:
    """Runs one job's phases: places and dispatches their tasks, puts what each
    attempt did into the reports, and streams through this proxy the inputs no node
    could read in place (encrypted)."""

    def __init__(self, ctx: JobContext, dispatcher: Dispatcher, placer: Placer,
                 scheduler: str, backup_tasks: bool):
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.placer = placer
        config = ctx.config
        self.settings = RunSettings(
            policy=scheduler, concurrency=config.concurrency, max_group=config.max_group,
            backups=config.backup_tasks and backup_tasks,
            backup_factor=config.backup_factor, backup_min_s=config.backup_min_s)
        self.writes = GreenPool(config.concurrency)
        self.cancelled: str | None = None
        self.runs: list[PhaseDispatch] = []  # the phases running now
        self.sent_to: dict[str, dict] = {}  # every node a group of this job went to
        self.bytes = 0  # task traffic through the proxy: groups, executables, frames

    def run(self, phase: Phase) -> None:
        """Run a phase's tasks to their end (each claimed or failed), then wait for
        their writes."""
        if self.cancelled:
            for state in phase.states:
                phase.reports[state.index].error = self.cancelled
        if not phase.states or self.cancelled:
            return
        self.dispatcher.probe(list({node_key(n): n for s in phase.states
                                    for n in s.candidates[0]}.values()))
        # The tasks take this account's share of each server's slots (middleware/slots.py).
        template = replace(phase.template, account=self.ctx.account)
        run = PhaseDispatch(self.dispatcher, phase.states, template, phase.executables,
                            self.settings, phase.on_result, origin=self.ctx.started)
        # Listed until its failed attempts are in the reports: progress() counts both.
        self.runs.append(run)
        try:
            run.run()
            self.writes.waitall()
            self.bytes += run.bytes
            for state in phase.states:
                report = phase.reports[state.index]
                report.attempts, report.retries, report.backup = \
                    len(report.retries) + state.attempts, report.retries + state.failed, \
                    report.backup or state.backed_up
                report.timeline = sorted(report.timeline + state.spans,
                                         key=lambda span: span.start_ms)
                if state.error is not None:
                    report.error = state.error
                    report.exit = None
                if state.first_sent is not None and not report.wall_ms:
                    report.wall_ms = round((time.monotonic() - state.first_sent) * 1000, 3)
        finally:
            self.runs.remove(run)
        self.sent_to.update(run.nodes)
        self.stream_encrypted(phase)

    def stream_encrypted(self, phase: Phase) -> None:
        """Run again, streamed through the proxy's read path (which decrypts), the tasks
        whose object servers found their input encrypted at rest."""
        refused = [s for s in phase.states if s.opener is None
                   and phase.reports[s.index].error == wire.ENCRYPTED_INPUT]
        if not refused or self.cancelled:
            return
        again = []
        for state in refused:
            report = phase.reports[state.index]
            if phase.input_of is None:
                continue
            if not self.ctx.config.stream_encrypted_inputs:
                report.error = (f"{wire.ENCRYPTED_INPUT}, and this cluster does not read them "
                                "through the proxy (stream_encrypted_inputs = false)")
            elif state.spec.split is not None or state.spec.edges is not None:
                report.error = (f"{wire.ENCRYPTED_INPUT}: splits and segments of encrypted "
                                "objects are not supported yet")
            else:
                report.retries.append(Attempt(report.node or "", wire.ENCRYPTED_INPUT))
                report.error, report.exit, report.node = None, None, None
                again.append(self.placer.streamed(state, *phase.input_of(state)))
        if again:
            self.run(replace(phase, states=again))

    def cancel(self, reason: str) -> None:
        if self.cancelled is None:
            self.cancelled = reason
        for run in list(self.runs):
            run.abort(reason)

    def claim(self, report: TaskReport, state: TaskState, node: dict,
              result: wire.TaskResult, stream: Any, streamed: bool = False) -> Any:
        """A task's claiming result into its report, and its output (a file; with
        ``streamed``, an :class:`OutputStream` when larger than ``SPOOL_MEMORY``, to be
        read before the next frame), unless the task failed (then None: its output,
        read off the stream, is dropped)."""
        record(report, state, node, result)
        if streamed and report.ok and result.stdout_bytes > SPOOL_MEMORY:
            return OutputStream(stream, result.stdout_bytes)
        output = read_output(stream, result.stdout_bytes)
        if report.ok:
            return output
        output.close()
        return None


def record(report: TaskReport, state: TaskState, node: dict, result: wire.TaskResult) -> None:
    """What a task's claiming result says, into its report."""
    report.node = node_label(node)
    report.local = node_key(node) in {node_key(n) for n in state.holders}
    report.exit = result.exit
    report.error = result.invalid or result.error
    report.stderr = result.stderr
    report.ms = result.ms
    report.cpu_ms = round(result.cpu_ms, 3)
    report.bytes_in = result.bytes_in or report.bytes_in
    report.bytes_local, report.bytes_peer = result.bytes_local, result.bytes_peer
    report.fragments = result.fragments
    report.counters = result.counters
    if result.shuffle_steps:
        report.shuffle = {step: [wall, cpu] for step, wall, cpu in result.shuffle_steps}
    if result.partitions is not None:
        report.records, report.records_shuffled = result.records, result.records_combined
    if report.exit is not None and report.exit != 0 and report.error is None:
        report.error = f"guest exited with status {report.exit}"


def finish(state: TaskState, report: TaskReport) -> None:
    """The task's wall time, from its first dispatch to now (its output done)."""
    if state.first_sent is not None:
        report.wall_ms = round((time.monotonic() - state.first_sent) * 1000, 3)


def template(manifest: Manifest, stage: Stage, etag: str, kind: str = "map",
             shuffle: wire.ShuffleSpec | None = None, run: str = "") -> wire.TaskGroup:
    """What every task of a phase shares (``run``: the job's id)."""
    env = [*stage.env, ("ZEROCOMPUTE_JOB", manifest.name),
           ("ZEROCOMPUTE_RECORDS", manifest.records),
           ("ZEROCOMPUTE_PHASE", kind if shuffle is not None else wire.PHASE_MAP_ONLY)]
    if kind == "map" and shuffle is not None and shuffle.combine is not None \
            and shuffle.combine.exec_etag == etag:
        # The job's combiner is this very program, run with these arguments: its SDK
        # may combine in memory with the function they name, within the sort buffer
        # (doc/guests.md, "In-mapper combining").
        env += [("ZEROCOMPUTE_COMBINER", shuffle.combine.args[0] if shuffle.combine.args
                 else ""), ("ZEROCOMPUTE_SORT_BUFFER", str(shuffle.memory_bytes))]
    return wire.TaskGroup(
        job=manifest.name, exec_etag=etag, exec_name=stage.exec.obj.rsplit("/", 1)[-1],
        runtime=runtime_of(stage.exec), args=stage.args, env=tuple(env),
        limits=manifest.limits, tasks=(), kind=kind, shuffle=shuffle, run=run)


def shared_run(job_id: str, states: list[TaskState]) -> str:
    """What a phase's tasks name as their run, so that its Python tasks may share an
    interpreter (sandbox/resident.py): none for a phase of one task, which has no
    next task to share it with, and whose guest starts sooner on its own."""
    return job_id if len(states) > 1 else ""


def erasure_code(policy_index: int, partition: int, path: str,
                 primaries: list[dict]) -> wire.ErasureCode | None:
    """What a task over an erasure-coded object needs to rebuild it (None when the
    policy is replicated): the policy's code and every fragment holder."""
    policy = POLICIES.get_by_index(policy_index)
    if policy is None or policy.policy_type != EC_POLICY:
        return None
    return wire.ErasureCode(
        k=policy.ec_ndata, m=policy.ec_nparity, ec_type=policy.ec_type,
        fragment_size=policy.fragment_size, segment_size=policy.ec_segment_size,
        policy=policy_index, partition=partition, path=path,
        peers=tuple((n["ip"], int(n["port"]), n["device"], int(n["index"])) for n in primaries))


def reuse(report: TaskReport, size: int) -> None:
    """A task not run again: its output was committed before a takeover."""
    report.reused = True
    report.exit = 0
    report.error = None
    report.bytes_out = size


# -- one task, for execution on GET ---------------------------------------------------------
def run_one_task(ctx: JobContext, dispatcher: Dispatcher, stage: Stage,
                 executable: tuple[str, bytes], target: SwiftPath, size: int,
                 span: tuple[int, int] | None) -> tuple[TaskReport, Any]:
    """Run one guest over one object (``span``: exactly those bytes of it), on a node
    that holds it, under the operator's maximum limits: its report, and its output (a
    file; None when it failed)."""
    etag, code = executable
    manifest = Manifest(name="run", map=stage, output=target, limits=ctx.config.maximum,
                        scheduler=ctx.config.default_scheduler, backup_tasks=False)
    task = MapTask("g00000", InputObject(target, size, target.obj), None, span)
    report = TaskReport(kind="map", task=task.task_id, input=str(target),
                        bytes_in=size if span is None else span[1] - span[0],
                        split=None if span is None else list(span))
    placer = Placer(ctx, dispatcher)
    runner = PhaseRunner(ctx, dispatcher, placer, manifest.scheduler, backup_tasks=False)
    outputs: list[Any] = []

    def keep(state: TaskState, node: dict, result: wire.TaskResult, stream: Any) -> None:
        output = runner.claim(report, state, node, result, stream)
        if output is not None:
            outputs.append(output)
    state = placer.state(0, task, exact=span is not None)
    if state is None:
        report.error = "cannot locate the input in the ring"
        return report, None
    runner.run(Phase([state], template(manifest, stage, etag), {etag: code}, keep, [report],
                     lambda _state: (target, size)))
    for extra in outputs[:-1]:
        extra.close()
    return report, outputs[-1] if outputs and report.ok else None


# -- the jobs ----------------------------------------------------------------------------------
class MapJob:
    """One map-only job: its context, manifest, executable, tasks and reports.

    Built once the manifest has been checked; :meth:`run` places and runs the
    tasks, writes each output as its result arrives (``concurrency`` writes at
    once; a stream that finds every writer busy waits, which bounds the outputs
    held in memory) or gathers them into the one output object, and writes the
    job's own files.
    """

    def __init__(self, ctx: JobContext, dispatcher: Dispatcher, manifest: Manifest,
                 executables: Executables, tasks: list[MapTask], job_id: str | None = None,
                 resume: bool = False):
        self.ctx = ctx
        self.config = ctx.config
        self.manifest = manifest
        self.executables = executables
        self.etag, self.code = executables[manifest.map.exec]
        self.tasks = tasks
        self.reports = [TaskReport(kind="map", task=t.task_id, input=str(t.input.path),
                                   output=None if t.output is None else str(t.output),
                                   bytes_in=t.input.size if t.split is None
                                   else t.split[1] - t.split[0],
                                   split=None if t.split is None else list(t.split))
                        for t in tasks]
        # Every output this job writes carries its id; a job taken over (``resume``)
        # does not run again a task whose output carries it already.
        self.job_id = job_id or new_job_id()
        self.resume = resume
        self.gathered = Gathered() if manifest.gathers else None
        self.placer = Placer(ctx, dispatcher)
        self.phases = PhaseRunner(ctx, dispatcher, self.placer, manifest.scheduler,
                                  manifest.backup_tasks)
        self.outputs = Outputs(ctx, self.job_id)

    @property
    def cancelled(self) -> str | None:
        return self.phases.cancelled

    @property
    def proxy_bytes(self) -> int:
        """Bytes through the proxy: task traffic, and the outputs it writes (once each;
        Swift's proxy then sends each to every replica)."""
        return self.phases.bytes + self.outputs.bytes

    def run(self) -> JobReport:
        started = time.perf_counter()
        try:
            if self.resume:
                self.skip_committed()
            states = self.task_states()
            self.phases.run(Phase(
                states, template(self.manifest, self.manifest.map, self.etag,
                                 run=shared_run(self.job_id, states)),
                {self.etag: self.code}, self.take_result, self.reports, self.input_of))
            error = self.write_gathered()
        except Exception as err:  # noqa: BLE001 - the report says what happened
            self.ctx.logger.exception("zerocompute: job %s failed", self.manifest.name)
            error = f"internal error: {type(err).__name__}: {err}"
        report = self.job_report(started, self.reports, error,
                                 output=str(self.manifest.output) if self.gathered else None)
        if not self.cancelled:
            self.outputs.write_job_files(self.manifest.output, report)
        return report

    def job_report(self, started: float, tasks: list[TaskReport], error: str | None,
                   **extra: Any) -> JobReport:
        return JobReport(self.manifest.name, self.manifest.scheduler, tasks,
                         ms=(time.perf_counter() - started) * 1000, error=error,
                         proxy_bytes=self.proxy_bytes, id=self.job_id,
                         cancelled=self.cancelled, **extra)

    @property
    def all_reports(self) -> list[TaskReport]:
        return self.reports

    def progress(self) -> dict[str, int]:
        """Tasks done and failed so far (an async job's status shows it)."""
        reports = self.all_reports
        retries = sum(len(r.retries) for r in reports) + sum(
            len(s.failed) for run in self.phases.runs for s in run.tasks)
        return {"tasks": len(reports), "done": sum(1 for r in reports if r.ok),
                "failed": sum(1 for r in reports if r.error is not None),
                "bytes_in": sum(r.bytes_in for r in reports if r.ok), "retries": retries}

    def cancel(self, reason: str) -> None:
        """Stop now: no task is sent, running ones are hung up on, nothing more is
        written (writes already under way finish)."""
        self.phases.cancel(reason)

    # -- a job taken over ---------------------------------------------------------
    def skip_committed(self) -> None:
        """Mark the tasks whose outputs this job committed before it was taken over."""
        if self.gathered is not None:
            if self.outputs.committed(self.manifest.output) is not None:
                for report in self.reports:
                    reuse(report, 0)
            return
        self.skip_written([(report, task.output) for report, task in zip(
            self.reports, self.tasks, strict=True)])

    def skip_written(self, targets: list[tuple[TaskReport, SwiftPath | None]]) -> None:
        pile = eventlet.GreenPile(self.config.concurrency)
        for report, target in targets:
            if target is not None:
                pile.spawn(lambda r, t: (r, self.outputs.committed(t)), report, target)
        for report, size in pile:
            if size is not None:
                reuse(report, size)

    # -- the tasks --------------------------------------------------------------
    def task_states(self) -> list[TaskState]:
        states = []
        for index, task in enumerate(self.tasks):
            if self.reports[index].reused:
                continue
            state = self.placer.state(index, task)
            if state is None:
                self.reports[index].error = "cannot locate the input in the ring"
                continue
            states.append(state)
        return states

    def input_of(self, state: TaskState) -> tuple[SwiftPath, int]:
        item = self.tasks[state.index].input
        return item.path, item.size

    def take_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                    stream: Any) -> None:
        """A map-only task's claiming result: record it and hand its output on."""
        report = self.reports[state.index]
        output = self.phases.claim(report, state, node, result, stream,
                                   streamed=self.gathered is None)
        if output is None:
            return
        if self.gathered is not None:
            self.gathered.add(state.index, output, result.stdout_bytes)
            report.bytes_out = result.stdout_bytes
            finish(state, report)
            return
        self.hand_on(state, report, output, result.stdout_bytes, self.tasks[state.index].output)

    def hand_on(self, state: TaskState, report: TaskReport, output: Any, length: int,
                target: SwiftPath) -> None:
        """Write a claimed output: a streamed one now, from the stream (a failure the
        task's output cannot survive raises :class:`OutputLost`: the task runs again);
        a spooled one by the writers, which retry it."""
        if isinstance(output, OutputStream):
            report.error = self.outputs.write_streamed(target, output, lambda: self.cancelled)
            if report.error is None:
                report.bytes_out = length
            finish(state, report)
            return
        # Blocks while every writer is busy: the stream waits, memory stays bounded.
        self.phases.writes.spawn_n(self.write_output, state, report, output, length, target)

    def write_output(self, state: TaskState, report: TaskReport, output: Any,
                     length: int, target: SwiftPath) -> None:
        try:
            report.error = self.outputs.write(target, output, length, lambda: self.cancelled)
            if report.error is None:
                report.bytes_out = length
        except Exception as err:  # noqa: BLE001 - one task's write, reported on it
            self.ctx.logger.exception("zerocompute: writing %s failed", target)
            report.error = f"writing output {target} failed: {type(err).__name__}: {err}"
        finally:
            output.close()
            finish(state, report)

    def write_gathered(self) -> str | None:
        """The one output of a gathering job, in input order, once every task succeeded."""
        if self.gathered is None or not all(r.ok for r in self.reports) or self.cancelled \
                or all(r.reused for r in self.reports):
            return None
        return self.outputs.write_gathered(self.manifest.output, self.gathered)


class MapReduceJob(MapJob):
    """A job with a reduce: map, shuffle, reduce (``doc/shuffle.md``).

    Each map runs beside its input as in a map-only job, but its output stays
    on its node, split into the job's partitions and sorted by key (the shuffle
    core, in the executors).  Then one reduce task per partition, placed by the
    same scheduler on any object server, fetches its partition from every map's
    node, merges them and runs the reducer; its output becomes ``part-NNNNN``
    under the output's prefix.  With named outputs, each has its own partitions,
    reducer and prefix, and the map writes ``name<TAB>key<TAB>value``.  A map
    output that cannot be fetched (its node died) has its map run again on
    another replica, and the reduces that needed it run again.  A job that fails
    leaves no part objects: those written are deleted.  Map outputs are deleted
    from the nodes when the job ends.
    """

    def __init__(self, ctx: JobContext, dispatcher: Dispatcher, manifest: Manifest,
                 executables: Executables, tasks: list[MapTask], job_id: str | None = None,
                 resume: bool = False):
        super().__init__(ctx, dispatcher, manifest, executables, tasks, job_id, resume)
        self.dispatcher = dispatcher
        combine = manifest.combine
        self.combiner = executables[combine.exec] if combine else None
        # Every executable a map group may need: its own, and the combiner's.
        self.map_executables = {self.etag: self.code,
                                **dict([self.combiner] if self.combiner else [])}
        self.shuffle_id = uuid.uuid4().hex
        self.named_outputs = manifest.reduce_outputs
        # Each partition's output and its number there: partitions are numbered across
        # outputs, output i has the next R_i of them.
        self.parts = [(out, n) for out in self.named_outputs
                      for n in range(out.reduce.partitions)]
        self.partitions = len(self.parts)
        self.map_outputs: dict[int, tuple[dict, list[int]]] = {}  # map -> (node, sizes)
        self.lost: dict[int, list[str]] = {}  # reduce partition -> maps it could not fetch
        self.reduce_reports = [
            TaskReport(kind="reduce", task=self.reduce_task_id(out, n),
                       input=f"partition {n}" + (f" of {out.name}" if out.name else ""),
                       output=str(out.part(n))) for out, n in self.parts]
        # A total order: its split points, from the keys the sampling maps return.
        self.ranged = self.named_outputs[0].reduce.partitioner == RANGE \
            and self.partitions > 1
        self.sample_reports: list[TaskReport] = []
        self.sampled: list[bytes] = []
        self.split_points: list[bytes] = []

    @staticmethod
    def reduce_task_id(out: NamedOutput, number: int) -> str:
        return f"{out.name}-r{number:05d}" if out.name else f"r{number:05d}"

    def run(self) -> JobReport:
        started = time.perf_counter()
        error = None
        try:
            if self.resume:
                self.skip_committed()
            self.map_reduce()
        except Exception as err:  # noqa: BLE001 - the report says what happened
            self.ctx.logger.exception("zerocompute: job %s failed", self.manifest.name)
            error = f"internal error: {type(err).__name__}: {err}"
        finally:
            self.dispatcher.delete_shuffle(list(self.phases.sent_to.values()), self.shuffle_id)
        report = self.job_report(started, self.all_reports, error,
                                 partitioning=self.partitioning())
        if report.status != SUCCEEDED:
            # Parts without _SUCCESS are no result: a failed or cancelled job leaves none.
            self.delete_parts()
        if not self.cancelled:
            for out in self.named_outputs:
                self.outputs.write_job_files(out.prefix, report)
        return report

    @property
    def all_reports(self) -> list[TaskReport]:
        return self.sample_reports + self.reports + self.reduce_reports

    def skip_committed(self) -> None:
        """Parts this job committed before it was taken over are not reduced again; when
        every part is there, no map runs either."""
        self.skip_written([(report, out.part(local)) for report, (out, local)
                           in zip(self.reduce_reports, self.parts, strict=True)])
        if all(r.reused for r in self.reduce_reports):
            for report in self.reports:
                reuse(report, 0)

    def map_reduce(self) -> None:
        todo = [n for n in range(self.partitions) if not self.reduce_reports[n].reused]
        if not todo:
            return
        map_states = self.task_states()
        if self.ranged and not self.sample_split_points(map_states):
            return
        maps = Phase(map_states, template(self.manifest, self.manifest.map, self.etag,
                                          shuffle=self.shuffle,
                                          run=shared_run(self.job_id, map_states)),
                     self.map_executables, self.take_map_result, self.reports, self.input_of)
        self.phases.run(maps)
        if not all(r.ok for r in self.reports) or self.cancelled:
            return
        for _ in range(LOST_OUTPUT_ROUNDS):
            self.run_reduces(todo)
            lost = {task for n in todo for task in self.lost.get(n, ())}
            if not lost:
                return
            # Run those maps again, on another replica than the one that lost them.
            again = []
            for state in (s for s in map_states if s.task_id in lost):
                node, _ = self.map_outputs.pop(state.index)
                self.reports[state.index].retries.append(
                    Attempt(node_label(node), "map output lost: a reduce could not fetch it"))
                again.append(state.attempt_afresh(tried={node_key(node)}))
            self.phases.run(replace(maps, states=again))
            if not all(r.ok for r in self.reports) or self.cancelled:
                return
            todo = [n for n in todo if n in self.lost]
            for n in todo:
                report = self.reduce_reports[n]
                report.retries.append(Attempt(report.node or "", report.error or ""))
                report.error = None

    def sample_split_points(self, states: list[TaskState]) -> bool:
        """A total order's split points (Hadoop's ``InputSampler``, as TeraSort uses it):
        the map runs over the first ``SAMPLE_BYTES`` of up to ``SAMPLE_TASKS`` inputs
        spread over the job's, each returning up to ``SAMPLE_KEYS`` of its keys (the
        map's keys, whatever it makes of its input), and the sorted sample's quantiles
        cut the key space into the job's partitions.  Whether every sample ran."""
        readable = [s for s in states if s.spec.edges is None and s.opener is None] or states
        chosen = [readable[i] for i in evenly_spaced(len(readable), SAMPLE_TASKS)]
        sample_states = []
        for number, state in enumerate(chosen):
            start, end = state.spec.split or (0, self.tasks[state.index].input.size)
            split = (start, min(end, start + SAMPLE_BYTES))
            task_id = f"s{number:05d}"
            sample_states.append(replace(state, index=number, spec=replace(
                state.spec, task=task_id, split=split)))
            self.sample_reports.append(TaskReport(
                kind="sample", task=task_id, input=self.reports[state.index].input,
                split=list(split)))
        self.phases.run(Phase(
            sample_states, template(self.manifest, self.manifest.map, self.etag,
                                    shuffle=replace(self.shuffle, sample=SAMPLE_KEYS)),
            self.map_executables, self.take_sample_result, self.sample_reports))
        if not all(r.ok for r in self.sample_reports) or self.cancelled:
            for report in self.reports:  # no map ran: the job failed before them
                report.error = report.error or "the key sample for the total order failed"
            return False
        self.split_points = split_points(self.sampled, self.partitions)
        return True

    def take_sample_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                           stream: Any) -> None:
        report = self.sample_reports[state.index]
        output = self.phases.claim(report, state, node, result, stream)
        if output is not None:
            try:
                report.bytes_out = result.stdout_bytes
                self.sampled += framed_keys(output.read())
            except ValueError as err:
                report.error = f"the key sample is damaged: {err}"
            finally:
                output.close()
        finish(state, report)

    def partitioning(self) -> dict[str, Any]:
        """The report's account of how keys were partitioned."""
        if not self.ranged:
            return {"partitioner": HASH}
        return {"partitioner": RANGE, "sampled_keys": len(self.sampled),
                "split_points": [p.decode("utf-8", "backslashreplace")
                                 for p in self.split_points]}

    def run_reduces(self, partitions: list[int]) -> None:
        """The reduces of ``partitions``, each output's with its own reducer, at once."""
        pile = eventlet.GreenPile(max(1, len(self.named_outputs)))
        for out in self.named_outputs:
            states = [self.reduce_state(n) for n in partitions if self.parts[n][0] is out]
            if not states:
                continue
            etag, code = self.executables[out.reduce.exec]
            pile.spawn(self.phases.run, Phase(
                states, template(self.manifest, out.reduce, etag, "reduce", self.shuffle,
                              shared_run(self.job_id, states)),
                {etag: code}, self.take_reduce_result, self.reduce_reports))
        list(pile)

    @property
    def shuffle(self) -> wire.ShuffleSpec:
        combine, spec = self.manifest.combine, None
        if combine is not None and self.combiner is not None:
            spec = wire.CombineSpec(
                exec_etag=self.combiner[0], exec_name=combine.exec.obj.rsplit("/", 1)[-1],
                runtime=runtime_of(combine.exec), args=tuple(combine.args),
                env=(*combine.env, ("ZEROCOMPUTE_JOB", self.manifest.name),
                     ("ZEROCOMPUTE_RECORDS", self.manifest.records),
                     ("ZEROCOMPUTE_PHASE", wire.PHASE_COMBINE)))
        return wire.ShuffleSpec(
            id=self.shuffle_id, partitions=self.partitions, records=self.manifest.records,
            memory_bytes=self.config.shuffle_buffer_bytes,
            outputs=tuple((out.name, out.reduce.partitions) for out in self.named_outputs)
            if self.manifest.named else (), combine=spec,
            splits=tuple(base64.b64encode(p).decode("ascii") for p in self.split_points))

    def reduce_state(self, number: int) -> TaskState:
        """Partition ``number``'s reduce: any object server may run it."""
        self.lost.pop(number, None)
        out, local = self.parts[number]
        task_id = self.reduce_task_id(out, local)
        sources = tuple((node_key(node), self.tasks[index].task_id)
                        for index, (node, sizes) in sorted(self.map_outputs.items())
                        if sizes[number])
        spec = wire.TaskSpec(task=task_id, device="", partition=0, path="",
                             env=(("ZEROCOMPUTE_TASK", task_id),
                                  ("ZEROCOMPUTE_PARTITION", str(local)),
                                  ("ZEROCOMPUTE_OUTPUT", out.name)),
                             reduce_partition=number, sources=sources)
        return TaskState(number, spec, candidates=[self.placer.any_nodes(), []])

    def take_map_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                        stream: Any) -> None:
        report = self.reports[state.index]
        output = self.phases.claim(report, state, node, result, stream)
        if output is not None:  # nothing, for a shuffling map
            output.close()
            sizes = result.partitions or [0] * self.partitions
            self.map_outputs[state.index] = (node, sizes)
            report.bytes_out = sum(sizes)
        finish(state, report)

    def take_reduce_result(self, state: TaskState, node: dict, result: wire.TaskResult,
                           stream: Any) -> None:
        report = self.reduce_reports[state.index]
        report.bytes_in = sum(self.map_outputs[i][1][state.index] for i in self.map_outputs)
        if result.lost:
            self.lost[state.index] = list(result.lost)
        output = self.phases.claim(report, state, node, result, stream, streamed=True)
        report.local = False  # a reduce reads from every map's node, wherever it runs
        if output is None:
            return
        out, local = self.parts[state.index]
        self.hand_on(state, report, output, result.stdout_bytes, out.part(local))

    def delete_parts(self) -> None:
        """A failed job leaves no part objects of its own."""
        for report, (out, local) in zip(self.reduce_reports, self.parts, strict=True):
            if report.ok:
                self.outputs.delete(out.part(local))


class StepsJob:
    """Jobs in a chain (``steps``): each step's output is the next one's input.

    Every step's executables were read as the user before anything ran; a
    step's inputs are listed, and its outputs prepared, when it starts (they
    are the step before's outputs).  A step that fails ends the chain.  Each
    step writes its own ``_report.json`` and ``_SUCCESS`` beside its outputs;
    the response covers every step.  Step ``n``'s outputs carry the id
    ``<chain's id>-n``.
    """

    def __init__(self, ctx: JobContext, dispatcher: Dispatcher, manifest: Manifest,
                 first: MapJob, executables: Executables, job_id: str, resume: bool = False):
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.manifest = manifest
        self.executables = executables
        self.job_id = job_id
        self.resume = resume
        self.cancelled: str | None = None
        self.current: MapJob = first
        self.number = 0

    def progress(self) -> dict[str, int]:
        return {"step": self.number, "steps": len(self.manifest.steps),
                **self.current.progress()}

    def cancel(self, reason: str) -> None:
        self.cancelled = self.cancelled or reason
        self.current.cancel(reason)

    def step(self, number: int) -> MapJob:
        """Step ``number``'s job (the first was built with the chain)."""
        if number == 0:
            return self.current
        return build_job(self.ctx, self.dispatcher, self.manifest.steps[number],
                         self.executables, f"{self.job_id}-{number}", self.resume)

    def run(self) -> JobReport:
        started = time.perf_counter()
        reports: list[JobReport] = []
        error = None
        for number in range(len(self.manifest.steps)):
            try:
                job = self.step(number)
            except JobError as err:
                error = f"step {number} could not start: {err.error}" + (
                    f" ({err.field})" if err.field else "")
                break
            self.current, self.number = job, number
            if self.cancelled:
                job.cancel(self.cancelled)
            report = job.run()
            reports.append(report)
            if report.status != SUCCEEDED:
                break
        tasks = []
        for number, report in enumerate(reports):
            for task in report.tasks:
                task.step = number
                tasks.append(task)
        if error is None and len(reports) < len(self.manifest.steps) and not self.cancelled:
            error = f"step {len(reports) - 1} failed; the steps after it did not run"
        return JobReport(self.manifest.name, self.manifest.scheduler, tasks,
                         ms=(time.perf_counter() - started) * 1000, error=error,
                         steps=[r.to_dict(with_tasks=False) for r in reports],
                         proxy_bytes=sum(r.proxy_bytes for r in reports), id=self.job_id,
                         cancelled=self.cancelled)

