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


@dataclass(frozen=True)
class InputObject:
    """One input object and the part of its name that the pattern's ``*`` matched."""

    path: SwiftPath
    size: int
    matched: str


@dataclass(frozen=True)
class MapTask:
    task_id: str
    input: InputObject
    output: SwiftPath | None  # None: gathered into the job's one output, or shuffled
    split: tuple[int, int] | None = None  # the byte range of a split input


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
    for n, item in enumerate(unique.values()):
        out = output_for(manifest.output, item)
        if out in unique:
            raise ManifestError(f"output {out} would overwrite an input of this job", "output")
        if out in writers:
            raise ManifestError(f"inputs {writers[out]} and {item.path} would both write {out}",
                                "output")
        writers[out] = item.path
        tasks.append(MapTask(f"m{n:05d}", item, out))
    return tasks
