"""The messages between the proxy filter and the object-server filter.

The proxy sends ``EXECUTE /zerocompute/tasks`` to an object server with a
*task group*: one or more tasks of one job whose inputs that server holds.
The body is the group (:class:`TaskGroup`, JSON), followed by the
executable's bytes when the server asked for them.  ``X-Zerocompute-Group-
Length`` says where the JSON ends, and ``X-Zerocompute-Signature`` is an
HMAC-SHA256 over the method, the path and the JSON, with a secret shared by
the proxy and the object servers: clients cannot forge or alter a group, and
a group older than :data:`MAX_AGE_S` is refused.  A custom method (rather
than POST or GET) means an object server without the filter answers 405
instead of doing something else with the request.

The object server answers ``200`` and streams one frame per task, in the
group's order, each as soon as its guest is done: a line of JSON
(:class:`TaskResult`) and then exactly ``stdout_bytes`` of the guest's
stdout.  A task the server could not run (its object is not there, its disk
is gone) has ``retry`` set: the proxy tries another replica.  Every frame
carries the server's load, so the proxy's view stays fresh mid-stream.

Everything that crosses a hop is one of these dataclasses; nothing else
builds or parses the JSON.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

METHOD = "EXECUTE"
TASKS_PATH = "/zerocompute/tasks"
# The object-server filter answers load probes here (GET, no auth).
LOAD_PATH = "/zerocompute/load"
# Map outputs kept for the reducers: GET .../<id>/<map task>/<partition>, DELETE .../<id>
# (signed, object servers only).
SHUFFLE_PATH = "/zerocompute/shuffle"
TIMESTAMP_HEADER = "X-Zerocompute-Timestamp"

# How the proxy filter's own sub-requests show in the proxy's logs.
SWIFT_SOURCE = "ZC"

# Client-facing headers of the job API.
EXECUTE_HEADER = "X-Zerocompute-Execute"
ASYNC_HEADER = "X-Zerocompute-Async"
JOB_STATUS_HEADER = "X-Zerocompute-Job-Status"
# Execution on GET: the guest to run over the object, its arguments (a JSON list),
# and where it ran (response).
RUN_HEADER = "X-Zerocompute-Run"
ARGS_HEADER = "X-Zerocompute-Args"
NODE_HEADER = "X-Zerocompute-Node"
# The only X-Zerocompute-* request headers a client may send (as WSGI keys).
CLIENT_ENV_KEYS = frozenset("HTTP_" + h.upper().replace("-", "_")
                            for h in (EXECUTE_HEADER, ASYNC_HEADER, RUN_HEADER, ARGS_HEADER))

# Task-group request and response headers (proxy <-> object server only).
SIGNATURE_HEADER = "X-Zerocompute-Signature"
GROUP_LENGTH_HEADER = "X-Zerocompute-Group-Length"
NEED_EXECUTABLE_HEADER = "X-Zerocompute-Need-Executable"
LOAD_HEADER = "X-Zerocompute-Load"

# What an object server answers for an input whose .data file is ciphertext (Swift's
# at-rest encryption): the proxy then streams the object's plaintext to a node.
ENCRYPTED_INPUT = "encrypted objects cannot be read in place"

MAX_AGE_S = 300
# The longest an object server may take to prepare a module (compiling the
# Python runtime takes seconds, more on a busy host) before the guest starts.
PREPARE_TIMEOUT_S = 600.0
MAX_GROUP_BYTES = 4 << 20
MAX_FRAME_LINE = 1 << 20

# Every per-task limit: its manifest key and the operator's default maximum
# (``max_<key>`` in the proxy filter's config).  Shared by the manifest (the
# proxy) and the sandbox (the object servers): it is part of the message.
LIMIT_DEFAULTS: dict[str, float | int] = {
    "time_s": 60.0,          # wall-clock seconds (wasmtime epoch interruption)
    "cpu_s": 60.0,           # CPU seconds (kernel RLIMIT_CPU on the executor)
    "memory_mb": 512,        # linear memory (the store's limiter)
    "output_mb": 256,        # stdout (kernel RLIMIT_FSIZE on the output file)
    "stderr_mb": 16,         # stderr a guest may write
    "stderr_tail_kb": 4,     # the end of stderr kept for the report
    "table_elements": 1_000_000,  # elements of all tables
    "instances": 10,         # module instances
}


# A task's phase, as its guest sees it (ZEROCOMPUTE_PHASE): a map whose output is
# shuffled, the job's combiner, a reduce, or a map of a job without a reduce (its
# output is the job's).
PHASE_MAP, PHASE_COMBINE, PHASE_REDUCE, PHASE_MAP_ONLY = "map", "combine", "reduce", "map-only"

# A map's sort buffer by default (the proxy's shuffle_buffer_bytes): about Hadoop's
# io.sort.mb, and room for a 64 MiB split of 100-byte records (TeraSort's) in one spill.
SHUFFLE_BUFFER_BYTES = 128 << 20

# The shuffle's steps, as task results and reports name them: the map side parses
# and partitions its output, sorts it in the sort buffer, spills it, combines and
# merges; the reduce side fetches the maps' outputs and merges them.
SHUFFLE_STEPS = ("partition", "sort", "spill", "combine", "fetch", "merge")


@dataclass(frozen=True)
class Limits:
    """Per-task resource limits.  In a manifest ``None`` means the operator's maximum;
    in a task group every limit is set (the manifest's, capped by the maximum)."""

    time_s: float | None = None
    cpu_s: float | None = None
    memory_mb: int | None = None
    output_mb: int | None = None
    stderr_mb: int | None = None
    stderr_tail_kb: int | None = None
    table_elements: int | None = None
    instances: int | None = None

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> Limits:
        """The operator's maxima: ``max_<limit>`` keys of a filter's config."""
        return cls(**{key: type(default)(conf.get(f"max_{key}", default))
                      for key, default in LIMIT_DEFAULTS.items()})

    def capped_by(self, maximum: Limits) -> Limits:
        """Take each limit from the manifest, never above the operator's maximum."""
        def pick(mine, most):
            return most if mine is None else min(mine, most)
        return Limits(**{key: pick(getattr(self, key), getattr(maximum, key))
                         for key in LIMIT_DEFAULTS})

    def to_dict(self) -> dict[str, float | int | None]:
        return {key: getattr(self, key) for key in LIMIT_DEFAULTS}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Limits:
        """A task group's limits: each one given, or the default maximum."""
        return cls(**{key: type(default)(doc.get(key, default))
                      for key, default in LIMIT_DEFAULTS.items()})


@dataclass(frozen=True)
class ErasureCode:
    """What a task over an erasure-coded object needs to rebuild it
    (``zerocompute.sandbox.ec``): the policy's code, where the object is, and every
    fragment holder.  The object server that runs the task fills in the rest from
    the fragment archive it holds."""

    k: int
    m: int
    ec_type: str
    fragment_size: int
    segment_size: int
    policy: int
    partition: int
    path: str  # /account/container/object, unquoted
    peers: tuple[tuple[str, int, str, int], ...]  # (ip, port, device, fragment index)
    local_index: int = -1  # the fragment this node holds
    timestamp: str = ""  # of the version it holds (peers must hold the same)
    content_length: int = 0  # of the object, not of a fragment

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ErasureCode:
        return cls(k=int(doc["k"]), m=int(doc["m"]), ec_type=str(doc["ec_type"]),
                   fragment_size=int(doc["fragment_size"]),
                   segment_size=int(doc["segment_size"]), policy=int(doc["policy"]),
                   partition=int(doc["partition"]), path=str(doc["path"]),
                   peers=tuple((str(ip), int(port), str(device), int(index))
                               for ip, port, device, index in doc["peers"]),
                   local_index=int(doc.get("local_index", -1)),
                   timestamp=str(doc.get("timestamp", "")),
                   content_length=int(doc.get("content_length", 0)))


@dataclass(frozen=True)
class LoadReport:
    """How busy an object server is (``X-Zerocompute-Load``, on every frame and probe):
    ``running=1 queued=0 slots=2 service_ms=12.5 elapsed_ms=3.0``."""

    running: int = 0
    queued: int = 0
    slots: int = 1
    service_ms: float = 0.0  # its typical task's time
    elapsed_ms: float = 0.0  # how long its running tasks have run, on average

    def header(self) -> str:
        return (f"running={self.running} queued={self.queued} slots={self.slots} "
                f"service_ms={self.service_ms:.1f} elapsed_ms={self.elapsed_ms:.1f}")

    @classmethod
    def parse(cls, value: str | None, default_slots: int,
              default_service_ms: float) -> LoadReport | None:
        """The report in a header (None without one); what is missing or garbled is
        the default."""
        if not value:
            return None
        found: dict[str, float] = {}
        for item in value.split():
            key, _, raw = item.partition("=")
            try:
                found[key] = float(raw)
            except ValueError:
                continue
        return cls(running=int(found.get("running", 0)), queued=int(found.get("queued", 0)),
                   slots=max(1, int(found.get("slots", default_slots))),
                   service_ms=found.get("service_ms", default_service_ms),
                   elapsed_ms=found.get("elapsed_ms", 0.0))


class BadSignature(Exception):
    pass


class BadFrame(ValueError):
    """The object server's stream is not what the protocol says."""


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def known_fields(cls: type, doc: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``doc`` that are fields of dataclass ``cls``: what a newer
    writer added is left out, so that proxies and servers can be upgraded one by one."""
    names = _field_names(cls)
    return {k: v for k, v in doc.items() if k in names}


def _plain(message: Any) -> dict[str, Any]:
    """A message's fields, one level deep (JSON takes the tuples and lists as they
    are): ``asdict`` deep-copies every field, and a frame is built for every task."""
    return {name: getattr(message, name) for name in _field_names(type(message))}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a group: where its input is on the receiving server."""

    task: str
    device: str
    partition: int
    path: str  # /account/container/object, unquoted
    policy: int = 0
    env: tuple[tuple[str, str], ...] = ()  # this task's own variables (input, task id)
    # A reduce task: its partition, and the map outputs it merges: (node "ip:port",
    # map task id) each (device, partition and path are then empty).
    reduce_partition: int = -1
    sources: tuple[tuple[str, str], ...] = ()
    # A split of a large input: the byte range [start, end) whose lines it reads.
    split: tuple[int, int] | None = None
    exact: bool = False  # the split is exactly those bytes (a GET's Range), not lines
    # An erasure-coded input: the policy's code and every fragment holder.
    ec: ErasureCode | None = None
    # A segment of a large object: the bytes to skip at its start (a line begun in the
    # segment before), and the rest of its last line (base64), from the segment after.
    edges: tuple[int, str] | None = None
    # An input the node cannot read in place (encrypted at rest): the proxy streams
    # its plaintext, this many bytes, after the group in the request body.
    stream_bytes: int = -1

    @property
    def disk_path(self) -> str:
        return f"/{self.device}/{self.partition}{self.path}"


@dataclass(frozen=True)
class CombineSpec:
    """The job's combiner, as the map's node runs it over each spill."""

    exec_etag: str
    exec_name: str
    runtime: str  # wasm or python
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CombineSpec:
        return cls(exec_etag=str(doc["exec_etag"]), exec_name=str(doc["exec_name"]),
                   runtime=str(doc["runtime"]), args=tuple(map(str, doc.get("args", ()))),
                   env=tuple((str(k), str(v)) for k, v in doc.get("env", ())))


@dataclass(frozen=True)
class ShuffleSpec:
    """What a task of a MapReduce job needs to know of its shuffle (``doc/shuffle.md``)."""

    id: str  # the job run's shuffle id: where map outputs are kept and served
    partitions: int  # R, across every named output
    records: str = "text"  # the job's record form
    memory_bytes: int = SHUFFLE_BUFFER_BYTES  # the map's sort buffer
    # Named outputs in order, each with its number of partitions (numbered one output
    # after another); empty for a job with one output.
    outputs: tuple[tuple[str, int], ...] = ()
    combine: CombineSpec | None = None
    # A total order: the partitions' split points (base64 keys, partitions - 1 of them).
    splits: tuple[str, ...] = ()
    # A sampling map (for the split points): keep at most this many of its keys.
    sample: int = 0

    def to_doc(self) -> dict[str, Any]:
        doc = _plain(self)
        doc["combine"] = None if self.combine is None else _plain(self.combine)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ShuffleSpec:
        combine = doc.get("combine")
        return cls(id=str(doc["id"]), partitions=int(doc["partitions"]),
                   records=str(doc.get("records", "text")),
                   memory_bytes=int(doc.get("memory_bytes", SHUFFLE_BUFFER_BYTES)),
                   outputs=tuple((str(n), int(p)) for n, p in doc.get("outputs", ())),
                   combine=CombineSpec.from_doc(combine) if isinstance(combine, dict) else None,
                   splits=tuple(map(str, doc.get("splits", ()))),
                   sample=int(doc.get("sample", 0)))


@dataclass(frozen=True)
class TaskGroup:
    """Tasks of one job that share an executable, arguments and limits."""

    job: str
    exec_etag: str
    exec_name: str
    runtime: str  # wasm or python
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    limits: Limits
    tasks: tuple[TaskSpec, ...]
    ts: float = 0.0
    kind: str = "map"  # map or reduce
    # A task of a MapReduce job: a map's output is partitioned where it ran, a reduce
    # fetches its partition from the maps' nodes.
    shuffle: ShuffleSpec | None = None
    # The account whose job this is: an object server shares its slots between
    # accounts (middleware/slots.py).
    account: str = ""
    # The run of the job these tasks belong to (unique, where ``job`` is its name): the
    # Python tasks of one run may share an interpreter (sandbox/resident.py); "" shares
    # none (the proxy leaves it empty in a phase of one task).
    run: str = ""

    def encode(self) -> bytes:
        doc = dict(_plain(self), limits=self.limits.to_dict(),
                   tasks=[_spec_doc(spec) for spec in self.tasks],
                   shuffle=None if self.shuffle is None else self.shuffle.to_doc())
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> TaskGroup:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list):
            raise ValueError("not a task group")
        tasks = tuple(TaskSpec(
            task=t["task"], device=t["device"], partition=int(t["partition"]), path=t["path"],
            policy=int(t.get("policy", 0)),
            env=tuple((str(k), str(v)) for k, v in t.get("env", ())),
            reduce_partition=int(t.get("reduce_partition", -1)),
            sources=tuple((str(n), str(m)) for n, m in t.get("sources", ())),
            split=(int(t["split"][0]), int(t["split"][1])) if t.get("split") else None,
            exact=bool(t.get("exact", False)),
            ec=ErasureCode.from_dict(t["ec"]) if isinstance(t.get("ec"), dict) else None,
            edges=(int(t["edges"][0]), str(t["edges"][1])) if t.get("edges") else None,
            stream_bytes=int(t.get("stream_bytes", -1))) for t in doc["tasks"])
        shuffle = doc.get("shuffle")
        return cls(job=str(doc["job"]), exec_etag=str(doc["exec_etag"]),
                   exec_name=str(doc["exec_name"]), runtime=str(doc["runtime"]),
                   args=tuple(map(str, doc["args"])),
                   env=tuple((str(k), str(v)) for k, v in doc["env"]),
                   limits=Limits.from_dict(doc["limits"]), tasks=tasks, ts=float(doc["ts"]),
                   kind=str(doc.get("kind", "map")), account=str(doc.get("account", "")),
                   run=str(doc.get("run", "")),
                   shuffle=ShuffleSpec.from_doc(shuffle) if isinstance(shuffle, dict) else None)


def _spec_doc(spec: TaskSpec) -> dict[str, Any]:
    doc = _plain(spec)
    if spec.ec is not None:
        doc["ec"] = _plain(spec.ec)
    return doc


def _mac(secret: str, method: str, path: str, body: bytes) -> str:
    message = b"\n".join((method.encode("utf-8"), path.encode("utf-8"), body))
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_group(secret: str, group: TaskGroup, now: float | None = None,
               path: str = TASKS_PATH) -> tuple[bytes, dict[str, str]]:
    """The group stamped with the time, encoded, and the headers that sign it."""
    body = replace(group, ts=time.time() if now is None else now).encode()
    return body, {SIGNATURE_HEADER: _mac(secret, METHOD, path, body),
                  GROUP_LENGTH_HEADER: str(len(body))}


def verify_group(secret: str, method: str, path: str, headers: Any, body: bytes,
                 now: float | None = None) -> TaskGroup:
    """The group of a signed request body, or :class:`BadSignature`."""
    signature = headers.get(SIGNATURE_HEADER)
    if not signature or not body:
        raise BadSignature("missing task group or signature")
    if not hmac.compare_digest(_mac(secret, method, path, body), signature):
        raise BadSignature("signature does not match")
    try:
        group = TaskGroup.decode(body)
    except (ValueError, KeyError, TypeError):
        raise BadSignature("undecodable task group") from None
    now = time.time() if now is None else now
    if abs(now - group.ts) > MAX_AGE_S:
        raise BadSignature("stale task group")
    return group


def sign_request(secret: str, method: str, path: str, now: float | None = None,
                 ) -> dict[str, str]:
    """Headers that sign a body-less request between object servers and proxies."""
    stamp = f"{time.time() if now is None else now:.6f}"
    return {TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: _mac(secret, method, path, stamp.encode("ascii"))}


def verify_request(secret: str, method: str, path: str, headers: Any,
                   now: float | None = None) -> None:
    """:class:`BadSignature` unless :func:`sign_request` signed this, lately."""
    stamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not stamp or not signature:
        raise BadSignature("missing signature")
    if not hmac.compare_digest(_mac(secret, method, path, stamp.encode("ascii")), signature):
        raise BadSignature("signature does not match")
    try:
        age = abs((time.time() if now is None else now) - float(stamp))
    except ValueError:
        raise BadSignature("bad timestamp") from None
    if age > MAX_AGE_S:
        raise BadSignature("stale request")


def shuffle_path(shuffle_id: str, task: str = "", partition: int | None = None) -> str:
    """Where a map's partition (or a whole job's shuffle) is served."""
    path = f"{SHUFFLE_PATH}/{shuffle_id}"
    if task:
        path += f"/{task}"
        if partition is not None:
            path += f"/{partition:05d}"
    return path


@dataclass
class TaskResult:
    """How one task of a group ended on the object server (one frame's header)."""

    task: str
    exit: int | None = None
    error: str | None = None
    stderr: str = ""  # the tail, as text
    ms: float = 0.0  # the guest's run time
    cpu_ms: float = 0.0  # the CPU time it used
    bytes_in: int = 0
    # Of the input: bytes read from this node's disk, and fetched from other nodes
    # (an erasure-coded object's other fragments).
    bytes_local: int = 0
    bytes_peer: int = 0
    fragments: list[int] | None = None  # an erasure-coded input: the fragments it used
    stdout_bytes: int = 0
    retry: str | None = None  # the task could not run here: try another replica
    invalid: str | None = None  # the executable cannot run anywhere
    load: str = ""  # the server's X-Zerocompute-Load when the task ended
    partitions: list[int] | None = None  # a shuffling map: bytes of each partition kept here
    lost: list[str] | None = None  # a reduce: map tasks whose output could not be fetched
    # The shuffle's work in this task, step by step: (step, wall ms, CPU ms), steps
    # from SHUFFLE_STEPS; and the map's output records, before and after combining.
    shuffle_steps: list[tuple[str, float, float]] = field(default_factory=list)
    # What the guest counted ({group: {name: amount}}, zerocompute.counters).
    counters: dict[str, dict[str, int]] | None = None
    records: int = 0
    records_combined: int = 0

    @property
    def completed(self) -> bool:
        """The guest ran to its end (whatever its exit status): its time means something."""
        return self.exit is not None

    def frame_head(self) -> bytes:
        return json.dumps(_plain(self), separators=(",", ":")).encode("utf-8") + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> TaskResult:
        try:
            return cls(**known_fields(cls, json.loads(line)))
        except (ValueError, TypeError, AttributeError) as err:
            raise BadFrame(f"bad result frame: {err}") from None


def read_frames(stream: Any) -> Iterator[tuple[TaskResult, Any, int]]:
    """The frames of an object server's answer: each result, ``stream`` itself
    positioned at its stdout (the caller reads exactly ``stdout_bytes`` of it
    before asking for the next frame), and the size of the frame's head."""
    while True:
        line = stream.readline(MAX_FRAME_LINE)
        if not line:
            return
        if not line.endswith(b"\n"):
            raise BadFrame("truncated result frame")
        yield TaskResult.parse(line), stream, len(line)
