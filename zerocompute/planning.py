"""From a manifest and container listings to map tasks, with no I/O.

The proxy filter does the listing (as the user) and hands the names here;
this module decides which names match an input pattern, what each task's
output object is called, and refuses plans that would clobber their own
inputs or write two tasks to one object.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from zerocompute.manifest import WILDCARD, Manifest, ManifestError, SwiftPath
from zerocompute.shuffle import split_ranges

# How far past a segment boundary the proxy looks for the end of the line that
# crosses it; a longer line crossing a boundary is refused.
EDGE_BYTES = 65536


@dataclass(frozen=True)
class Segment:
    """One segment of a large object (SLO or DLO), read by a task of its own.

    The large object's lines are read once each, by the segment they begin in
    (the rule of split inputs): a segment skips ``skip`` bytes (the end of a line
    begun in the segment before it) and reads ``carry`` (the rest of its own last
    line, from the segment after it) once its bytes are done.
    """

    path: SwiftPath
    size: int
    skip: int = 0
    carry: bytes = b""


@dataclass(frozen=True)
class InputObject:
    """One input object and the part of its name that the pattern's ``*`` matched."""

    path: SwiftPath
    size: int
    matched: str
    segments: tuple[Segment, ...] = ()  # a large object's segments, in order


@dataclass(frozen=True)
class MapTask:
    task_id: str
    input: InputObject
    output: SwiftPath | None  # None: gathered into the job's one output, or shuffled
    split: tuple[int, int] | None = None  # the byte range of a split input
    segment: Segment | None = None  # a large object's segment: the task's input
    whole: bool = False  # a large object read whole, streamed through the proxy


def line_to_newline(head: bytes, where: str) -> bytes:
    """The start of a segment up to and including its first newline."""
    found = head.find(b"\n")
    if found < 0:
        raise ManifestError(f"a line of more than {len(head)} bytes crosses a segment "
                            f"boundary of {where}", "map.inputs")
    return head[:found + 1]


def segment_edges(paths: list[SwiftPath], sizes: list[int], last_bytes: list[bytes],
                  heads: list[bytes], where: str) -> tuple[Segment, ...]:
    """The segments of a large object with their edges, from each segment's last byte
    and the first bytes (up to ``EDGE_BYTES``) of each one but the first."""
    segments = []
    for j, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        ends_line = size == 0 or last_bytes[j] == b"\n"
        skip = 0
        if j > 0 and not (sizes[j - 1] == 0 or last_bytes[j - 1] == b"\n"):
            skip = len(line_to_newline(heads[j], where))
        carry = b""
        if j + 1 < len(paths) and not ends_line:
            carry = line_to_newline(heads[j + 1], where)
        segments.append(Segment(path, size, skip, carry))
    return tuple(segments)


def listing_prefix(pattern: SwiftPath) -> str:
    """The literal part of a pattern before its ``*``: the listing's ``prefix``."""
    return pattern.obj.split(WILDCARD, 1)[0]


def match_name(pattern: SwiftPath, name: str) -> str | None:
    """What ``*`` matched in ``name``, or ``None`` when ``name`` does not match."""
    if not pattern.has_wildcard:
        return name if name == pattern.obj else None
    head, tail = pattern.obj.split(WILDCARD, 1)
    if len(name) < len(head) + len(tail) or not name.startswith(head) \
            or not name.endswith(tail):
        return None
    return name[len(head):len(name) - len(tail)]


def match_listing(pattern: SwiftPath, listing: Iterable[tuple[str, int]]) -> list[InputObject]:
    """The objects of a container listing (``(name, bytes)`` pairs) that match."""
    found = []
    for name, size in listing:
        matched = match_name(pattern, name)
        if matched is not None:
            found.append(InputObject(replace(pattern, obj=name), size, matched))
    return found


def output_for(output: SwiftPath, item: InputObject) -> SwiftPath:
    """ZeroCloud's rule: the output's ``*`` receives what the input's ``*`` matched."""
    return replace(output, obj=output.obj.replace(WILDCARD, item.matched, 1))


def _split_tasks(manifest: Manifest, inputs: list[InputObject]) -> list[MapTask]:
    """One task per input, or per split of an input larger than ``map.split_size``."""
    tasks: list[MapTask] = []
    for item in inputs:
        if item.segments and manifest.map.large_objects == "whole":
            tasks.append(MapTask(f"m{len(tasks):05d}", item, None, whole=True))
            continue
        for segment in item.segments:
            part = InputObject(segment.path, segment.size, item.matched)
            tasks.append(MapTask(f"m{len(tasks):05d}", part, None, segment=segment))
        if item.segments:
            continue
        split_size = manifest.map.split_size
        ranges = split_ranges(item.size, split_size) if split_size else [None]
        for split in ranges:
            if len(ranges) == 1:
                split = None  # read whole: no split
            tasks.append(MapTask(f"m{len(tasks):05d}", item, None, split))
    return tasks


def plan_map_tasks(manifest: Manifest,
                   inputs_per_pattern: list[list[InputObject]]) -> list[MapTask]:
    """One map task per input object (or per split of one), in input order; refuse
    empty, colliding or self-overwriting plans."""
    for i, (pattern, found) in enumerate(zip(manifest.map.inputs, inputs_per_pattern,
                                             strict=True)):
        if not found:
            raise ManifestError(f"no object matches {pattern}", f"map.inputs[{i}]")
    # An object matched by two patterns is still one task.
    unique: dict[SwiftPath, InputObject] = {}
    for found in inputs_per_pattern:
        for item in found:
            unique.setdefault(item.path, item)
    if manifest.reduce is not None or manifest.gathers:
        if manifest.gathers and manifest.output in unique:
            raise ManifestError(f"output {manifest.output} would overwrite an input of this "
                                "job", "output")
        return _split_tasks(manifest, list(unique.values()))
    tasks: list[MapTask] = []
    writers: dict[SwiftPath, SwiftPath] = {}
    whole = manifest.map.large_objects == "whole"
    for n, item in enumerate(unique.values()):
        if item.segments and not whole:
            raise ManifestError(f"{item.path} is a large object of {len(item.segments)} "
                                "segments, each read by a task of its own: gather their "
                                "outputs into one object or reduce them", "output")
        out = output_for(manifest.output, item)
        if out in unique:
            raise ManifestError(f"output {out} would overwrite an input of this job", "output")
        if out in writers:
            raise ManifestError(f"inputs {writers[out]} and {item.path} would both write {out}",
                                "output")
        writers[out] = item.path
        tasks.append(MapTask(f"m{n:05d}", item, out, whole=bool(item.segments)))
    return tasks


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """``wanted`` indexes (or all ``count``) spread evenly over ``range(count)``: which
    inputs a total order's sample reads (Hadoop's TeraSort samples ten splits so)."""
    if count <= wanted:
        return list(range(count))
    return [number * count // wanted for number in range(wanted)]


def job_file(output: SwiftPath, name: str) -> SwiftPath:
    """Where a job's own files go (``_SUCCESS``, ``_report.json``): beside its outputs
    (the output pattern's directory)."""
    directory = output.obj.split("*", 1)[0].rpartition("/")[0]
    return SwiftPath(output.account, output.container, f"{directory}/{name}" if directory
                     else name)
