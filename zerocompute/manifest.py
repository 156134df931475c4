"""The job manifest: parsing and validation, with no I/O.

A manifest is the JSON body of ``POST /v1/<account>`` with
``X-Zerocompute-Execute: 1`` (see ``doc/manifest.md``).  Everything here is a
pure function of the request body, the caller's account and the operator's
limits, so it is tested as plain functions and every error names the field
that is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from zerocompute.errors import JobError
from zerocompute.scheduler import POLICIES as SCHEDULERS
from zerocompute.wire import LIMIT_DEFAULTS, Limits

SCHEME = "swift://"
OWN_ACCOUNT = "~"
WILDCARD = "*"
RUNTIMES = (".wasm", ".py")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_ARGS = 256
_MAX_ENV = 256
_MAX_STRING = 4096
_MAX_INPUT_PATTERNS = 1024
_TOP_LEVEL = {"name", "map", "combine", "reduce", "output", "outputs", "limits", "scheduler",
              "backup_tasks", "records", "steps"}
_SHARED = {"name", "limits", "scheduler", "backup_tasks", "records"}  # given to every step
_STEP_KEYS = {"map", "combine", "reduce", "output", "outputs"}
MAX_STEPS = 16
# How key/value records travel between guests (the guest SDK's forms).
RECORD_FORMS = ("text", "framed")
_STAGE_KEYS = {"exec", "args", "env"}
_MAP_KEYS = _STAGE_KEYS | {"inputs", "split_size", "large_objects"}
# How a large object (SLO/DLO) input is read: a task per segment, beside each, or the
# whole object by one task, streamed through the proxy.
LARGE_OBJECT_MODES = ("segments", "whole")
_REDUCE_KEYS = _STAGE_KEYS | {"partitions", "partitioner"}
PARTITIONERS = ("hash", "range")
MAX_PARTITIONS = 1024


class ManifestError(JobError, ValueError):
    """A manifest the cluster will not run; ``field`` says where it is wrong."""


@dataclass(frozen=True)
class SwiftPath:
    """``swift://account/container/object``; ``object`` may hold one ``*``."""

    account: str
    container: str
    obj: str = ""

    @classmethod
    def parse(cls, text: Any, where: str) -> SwiftPath:
        if not isinstance(text, str) or not text.startswith(SCHEME):
            raise ManifestError(f"expected a path like swift://~/container/object, got {text!r}",
                                where)
        account, _, rest = text[len(SCHEME):].partition("/")
        container, _, obj = rest.partition("/")
        if not account or not container:
            raise ManifestError(f"{text!r} must name an account and a container", where)
        if WILDCARD in account or WILDCARD in container:
            raise ManifestError(f"{text!r}: '*' may only appear in the object name", where)
        if obj.count(WILDCARD) > 1:
            raise ManifestError(f"{text!r}: at most one '*' per path", where)
        return cls(account, container, obj)

    def resolve(self, own_account: str) -> SwiftPath:
        """Replace ``~`` with the caller's account."""
        if self.account == OWN_ACCOUNT:
            return replace(self, account=own_account)
        return self

    @property
    def has_wildcard(self) -> bool:
        return WILDCARD in self.obj

    @property
    def container_path(self) -> str:
        return f"/v1/{self.account}/{self.container}"

    @property
    def path(self) -> str:
        """The Swift API path (unquoted)."""
        if self.obj:
            return f"{self.container_path}/{self.obj}"
        return self.container_path

    def __str__(self) -> str:
        return f"{SCHEME}{self.account}/{self.container}/{self.obj}" if self.obj \
            else f"{SCHEME}{self.account}/{self.container}"


@dataclass(frozen=True)
class Stage:
    exec: SwiftPath
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MapStage(Stage):
    inputs: tuple[SwiftPath, ...] = field(default_factory=tuple)
    split_size: int | None = None  # inputs larger than this are read by several tasks
    large_objects: str = "segments"  # or "whole": one task, streamed through the proxy


@dataclass(frozen=True)
class ReduceStage(Stage):
    partitions: int = 1
    # "hash" (CRC32 of the key) or "range": a total order, the parts in order are one
    # sorted sequence (split points sampled from the map's own keys).
    partitioner: str = "hash"


@dataclass(frozen=True)
class NamedOutput:
    """Where one output of a MapReduce job goes, and its reducer.  A job with one
    ``output`` has one, named ``""``: its map writes plain records."""

    name: str
    prefix: SwiftPath  # its object name ends in "*": part-00000 ... replace it
    reduce: ReduceStage

    def part(self, number: int) -> SwiftPath:
        return replace(self.prefix, obj=self.prefix.obj.replace(WILDCARD, f"part-{number:05d}"))


@dataclass(frozen=True)
class Manifest:
    name: str
    map: MapStage
    output: SwiftPath
    limits: Limits
    scheduler: str
    backup_tasks: bool = True
    records: str = "text"
    reduce: ReduceStage | None = None
    combine: Stage | None = None
    named: tuple[NamedOutput, ...] = ()  # "outputs": the map writes name<TAB>key<TAB>value
    steps: tuple[Manifest, ...] = ()  # a chain: each step's output is the next one's input

    @property
    def reduce_outputs(self) -> tuple[NamedOutput, ...]:
        """The outputs a MapReduce job reduces into (one, unnamed, without "outputs")."""
        if self.named:
            return self.named
        return (NamedOutput("", self.output, self.reduce),) if self.reduce else ()

    def part(self, number: int) -> SwiftPath:
        """The object of a one-output MapReduce job's partition ``number``: ``part-00000``."""
        return self.reduce_outputs[0].part(number)

    @property
    def gathers(self) -> bool:
        """Whether every task's output goes into the one object ``output`` names."""
        return not self.output.has_wildcard


def _require(condition: bool, error: str, where: str) -> None:
    if not condition:
        raise ManifestError(error, where)


def parse_string_list(value: Any, where: str, limit: int = _MAX_ARGS) -> tuple[str, ...]:
    _require(isinstance(value, list), "must be a list of strings", where)
    _require(len(value) <= limit, f"at most {limit} entries", where)
    for i, item in enumerate(value):
        _require(isinstance(item, str) and len(item) <= _MAX_STRING,
                 f"must be a string of at most {_MAX_STRING} characters", f"{where}[{i}]")
        _require("\0" not in item, "must not contain NUL", f"{where}[{i}]")
    return tuple(value)


def _parse_env(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    _require(isinstance(value, dict), "must be an object of string values", where)
    _require(len(value) <= _MAX_ENV, f"at most {_MAX_ENV} variables", where)
    pairs = []
    for name, val in value.items():
        _require(bool(_ENV_NAME.match(name)), f"invalid variable name {name!r}", where)
        _require(isinstance(val, str) and len(val) <= _MAX_STRING and "\0" not in val,
                 "must be a string without NUL", f"{where}.{name}")
        pairs.append((name, val))
    return tuple(pairs)


def parse_exec(value: Any, where: str, own_account: str) -> SwiftPath:
    path = SwiftPath.parse(value, where).resolve(own_account)
    _require(bool(path.obj) and not path.has_wildcard,
             "must name one executable object, without '*'", where)
    _require(path.obj.endswith(RUNTIMES), "must name a .wasm (WASI) executable or a .py "
             "script (run by the Python runtime)", where)
    return path


def runtime_of(executable: SwiftPath) -> str:
    """``python`` for ``.py`` scripts, ``wasm`` for WASI modules."""
    return "python" if executable.obj.endswith(".py") else "wasm"


def _parse_map(value: Any, own_account: str,
               inherited: tuple[SwiftPath, ...] = ()) -> MapStage:
    _require(isinstance(value, dict), "is required and must be an object", "map")
    unknown = sorted(set(value) - _MAP_KEYS)
    _require(not unknown, f"unknown key(s) {', '.join(unknown)}", "map")
    _require("exec" in value, "is required", "map.exec")
    _require("inputs" in value or bool(inherited), "is required", "map.inputs")
    split_size = value.get("split_size")
    if split_size is not None:
        split_size = _parse_number(split_size, "map.split_size", int)
    large_objects = value.get("large_objects", "segments")
    _require(large_objects in LARGE_OBJECT_MODES,
             f"must be one of {', '.join(LARGE_OBJECT_MODES)}", "map.large_objects")
    raw_inputs = value["inputs"] if "inputs" in value else [str(p) for p in inherited]
    if isinstance(raw_inputs, str):
        raw_inputs = [raw_inputs]
    _require(isinstance(raw_inputs, list) and raw_inputs, "must be a non-empty list of paths",
             "map.inputs")
    _require(len(raw_inputs) <= _MAX_INPUT_PATTERNS,
             f"at most {_MAX_INPUT_PATTERNS} entries", "map.inputs")
    inputs = []
    for i, raw in enumerate(raw_inputs):
        where = f"map.inputs[{i}]"
        path = SwiftPath.parse(raw, where).resolve(own_account)
        _require(bool(path.obj), "must name an object or an object pattern with '*'", where)
        inputs.append(path)
    return MapStage(
        exec=parse_exec(value["exec"], "map.exec", own_account),
        args=parse_string_list(value.get("args", []), "map.args", _MAX_ARGS),
        env=_parse_env(value.get("env", {}), "map.env"),
        inputs=tuple(inputs),
        split_size=split_size,
        large_objects=large_objects,
    )


def _parse_stage(value: Any, own_account: str, where: str, keys: set[str]) -> Stage:
    _require(isinstance(value, dict), "must be an object", where)
    unknown = sorted(set(value) - keys)
    _require(not unknown, f"unknown key(s) {', '.join(unknown)}", where)
    _require("exec" in value, "is required", f"{where}.exec")
    return Stage(exec=parse_exec(value["exec"], f"{where}.exec", own_account),
                 args=parse_string_list(value.get("args", []), f"{where}.args", _MAX_ARGS),
                 env=_parse_env(value.get("env", {}), f"{where}.env"))


def _parse_reduce(value: Any, own_account: str, where: str = "reduce") -> ReduceStage:
    stage = _parse_stage(value, own_account, where, _REDUCE_KEYS)
    partitions = value.get("partitions", 1)
    _require(isinstance(partitions, int) and not isinstance(partitions, bool)
             and 1 <= partitions <= MAX_PARTITIONS,
             f"must be an integer from 1 to {MAX_PARTITIONS}", f"{where}.partitions")
    partitioner = value.get("partitioner", "hash")
    _require(partitioner in PARTITIONERS, f"must be one of {', '.join(PARTITIONERS)}",
             f"{where}.partitioner")
    _require(partitioner == "hash" or where == "reduce", "a total order (range) is for a job "
             "with one output; named outputs are partitioned by hash", f"{where}.partitioner")
    return ReduceStage(exec=stage.exec, args=stage.args, env=stage.env, partitions=partitions,
                       partitioner=partitioner)


_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_OUTPUTS = 32


def _parse_named_outputs(value: Any, own_account: str, top: ReduceStage | None,
                         ) -> tuple[NamedOutput, ...]:
    _require(isinstance(value, dict) and value, "must be an object of named outputs",
             "outputs")
    _require(len(value) <= MAX_OUTPUTS, f"at most {MAX_OUTPUTS} outputs", "outputs")
    named, prefixes = [], set()
    for name, spec in value.items():
        where = f"outputs.{name}"
        _require(bool(_OUTPUT_NAME.match(name)),
                 "names are 1 to 64 letters, digits, '_', '.' or '-'", where)
        if isinstance(spec, str):
            spec = {"output": spec}
        _require(isinstance(spec, dict) and set(spec) <= {"output", "reduce"},
                 "must be a prefix, or an object with 'output' and optionally 'reduce'", where)
        prefix = _parse_prefix(spec.get("output"), own_account, f"{where}.output")
        _require(prefix not in prefixes, "two outputs share this prefix", f"{where}.output")
        prefixes.add(prefix)
        reduce = _parse_reduce(spec["reduce"], own_account, f"{where}.reduce") \
            if "reduce" in spec else top
        _require(reduce is not None, "needs a reduce (its own, or the job's 'reduce')", where)
        named.append(NamedOutput(name, prefix, reduce))
    return tuple(named)


def _parse_output(value: Any, own_account: str, where: str = "output") -> SwiftPath:
    """A pattern with ``*`` (one output per input) or one plain object (every
    task's output gathered into it, in input order)."""
    _require(value is not None, "is required", where)
    path = SwiftPath.parse(value, where).resolve(own_account)
    if not path.obj or path.obj.endswith("/"):
        # A bare container or "dir/" means one output per input under it.
        path = replace(path, obj=path.obj + WILDCARD)
    return path


def _parse_prefix(value: Any, own_account: str, where: str) -> SwiftPath:
    """Where a reduce writes ``part-00000`` ...: a container or a name ending in '/'."""
    path = _parse_output(value, own_account, where)
    _require(path.obj.endswith(WILDCARD) and path.obj.count(WILDCARD) == 1,
             "with reduce, output is a prefix for part-00000 ...: end it with '/' "
             "(swift://~/results/wordcount/)", where)
    return path


def _parse_number(value: Any, where: str, kind: type) -> float | int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    _require(ok, "must be a positive number" if kind is float else "must be a positive integer",
             where)
    return kind(value)


def _parse_limits(value: Any, maximum: Limits) -> Limits:
    if value is None:
        return Limits().capped_by(maximum)
    _require(isinstance(value, dict), "must be an object", "limits")
    unknown = sorted(set(value) - set(LIMIT_DEFAULTS))
    _require(not unknown, f"unknown key(s) {', '.join(unknown)}; known: "
             f"{', '.join(LIMIT_DEFAULTS)}", "limits")
    mine = Limits(**{key: _parse_number(raw, f"limits.{key}", type(LIMIT_DEFAULTS[key]))
                     for key, raw in value.items()})
    return mine.capped_by(maximum)


def parse_manifest(body: bytes, own_account: str, maximum: Limits,
                   default_scheduler: str = "load-aware") -> Manifest:
    """Parse and validate a manifest; raise :class:`ManifestError` naming the field."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"manifest is not valid JSON: {err}") from None
    except RecursionError:
        raise ManifestError("manifest is nested too deeply") from None
    _require(isinstance(doc, dict), "manifest must be a JSON object", None)
    unknown = sorted(set(doc) - _TOP_LEVEL)
    _require(not unknown, f"unknown key(s) {', '.join(unknown)}", None)
    if "steps" not in doc:
        return _parse_job(doc, own_account, maximum, default_scheduler)
    return _parse_steps(doc, own_account, maximum, default_scheduler)


def _parse_steps(doc: dict, own_account: str, maximum: Limits,
                 default_scheduler: str) -> Manifest:
    """A chain of jobs; a step without ``map.inputs`` reads the step before's output."""
    alone = sorted(set(doc) - _SHARED - {"steps"})
    _require(not alone, f"with steps, {', '.join(alone)} go inside each step", "steps")
    steps = doc["steps"]
    _require(isinstance(steps, list) and 0 < len(steps) <= MAX_STEPS,
             f"must be a list of 1 to {MAX_STEPS} steps", "steps")
    shared = {key: doc[key] for key in _SHARED if key in doc}
    parsed: list[Manifest] = []
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        _require(isinstance(step, dict), "must be an object", where)
        unknown = sorted(set(step) - _STEP_KEYS)
        _require(not unknown, f"unknown key(s) {', '.join(unknown)}", where)
        try:
            inherited = outputs_as_inputs(parsed[-1]) if parsed else ()
            parsed.append(_parse_job({**shared, **step}, own_account, maximum,
                                     default_scheduler, inherited))
        except ManifestError as err:
            raise ManifestError(err.error, f"{where}.{err.field}" if err.field else where,
                                err.status) from None
    return replace(parsed[0], steps=tuple(parsed))


def outputs_as_inputs(step: Manifest) -> tuple[SwiftPath, ...]:
    """What a step leaves for the next one to read: its parts, its outputs' pattern, or
    its gathered object."""
    if step.named:
        raise ManifestError("after a step with named outputs, name this step's inputs",
                            "map.inputs")
    if step.reduce is not None:
        return (replace(step.output, obj=step.output.obj.replace(WILDCARD, f"part-{WILDCARD}")),)
    return (step.output,)


def _parse_job(doc: dict, own_account: str, maximum: Limits, default_scheduler: str,
               inherited: tuple[SwiftPath, ...] = ()) -> Manifest:
    _require(not ("outputs" in doc and "output" in doc), "give 'output' or 'outputs', not both",
             "outputs")

    name = doc.get("name", "job")
    _require(isinstance(name, str) and 0 < len(name) <= 128 and "/" not in name,
             "must be a non-empty string of at most 128 characters without '/'", "name")
    scheduler = doc.get("scheduler", default_scheduler)
    _require(scheduler in SCHEDULERS, f"must be one of {', '.join(SCHEDULERS)}", "scheduler")

    backup_tasks = doc.get("backup_tasks", True)
    _require(isinstance(backup_tasks, bool), "must be true or false", "backup_tasks")
    records = doc.get("records", "text")
    _require(records in RECORD_FORMS, f"must be one of {', '.join(RECORD_FORMS)}", "records")
    map_stage = _parse_map(doc.get("map"), own_account, inherited)
    top_reduce = _parse_reduce(doc["reduce"], own_account) if "reduce" in doc else None
    named: tuple[NamedOutput, ...] = ()
    if "outputs" in doc:
        _require(top_reduce is None or top_reduce.partitioner == "hash", "a total order "
                 "(range) is for a job with one output; named outputs are partitioned by "
                 "hash", "reduce.partitioner")
        named = _parse_named_outputs(doc["outputs"], own_account, top_reduce)
        output = named[0].prefix
    elif top_reduce is not None:
        output = _parse_prefix(doc.get("output"), own_account, "output")
    else:
        output = _parse_output(doc.get("output"), own_account)
    reduce_stage = named[0].reduce if named else top_reduce
    combine_stage = None
    if "combine" in doc:
        _require(reduce_stage is not None, "a combiner needs a reduce", "combine")
        combine_stage = _parse_stage(doc["combine"], own_account, "combine", _STAGE_KEYS)
    _require(map_stage.split_size is None or reduce_stage is not None
             or not output.has_wildcard,
             "a split input has several outputs: gather them into one object or reduce "
             "them", "map.split_size")
    return Manifest(
        name=name,
        map=map_stage,
        reduce=reduce_stage,
        combine=combine_stage,
        named=named,
        output=output,
        limits=_parse_limits(doc.get("limits"), maximum),
        scheduler=scheduler,
        backup_tasks=backup_tasks,
        records=records,
    )
