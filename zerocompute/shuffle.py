"""The shuffle's pure parts: record forms, partitions, splits of inputs, split points.

No I/O here.  The records themselves are parsed, partitioned, sorted,
combined and merged by the shuffle core in the executors
(``zerocompute.sandbox.shuffle_core``, compiled code); what the proxy and
the planner decide about the shuffle is here.

A record is ``(key, value)`` as bytes, exactly as the job's record form
carries them (``doc/manifest.md``): in the ``text`` form a line
``key<TAB>value``, in the ``framed`` form a 4-byte big-endian length and the
key, then the same for the value.  Keys sort as bytes, which for UTF-8 text
is code point order, the order of the Python guest SDK's ``sorted``.

A record goes to partition ``crc32(key) % R`` by default (Hadoop's default
is the key's hash modulo R too; ``doc/shuffle.md`` has the measurement
behind CRC32), or, for a total order, to the partition whose range of keys
holds it: partition ``p`` holds the keys from split point ``p - 1`` up to,
not including, split point ``p`` (Hadoop's ``TotalOrderPartitioner``).
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable, Iterable

TEXT, FRAMED = "text", "framed"
HASH, RANGE = "hash", "range"
_CHUNK = 1 << 16


def partition_of(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


def range_partition_of(key: bytes, split_points: list[bytes]) -> int:
    """The partition of ``key`` under a total order: how many split points are <= it."""
    return bisect.bisect_right(split_points, key)


def split_points(sample: Iterable[bytes], partitions: int) -> list[bytes]:
    """``partitions - 1`` keys that cut a sample of the map's keys into ranges of equal
    size (Hadoop's ``InputSampler.writePartitionFile``): the sorted sample's quantiles,
    each past the one before (and the first past the smallest key), so that every
    range holds some of the sample.  Fewer points when the sample runs out of keys."""
    keys = sorted(sample)
    points: list[bytes] = []
    if not keys or partitions < 2:
        return points
    step = len(keys) / partitions
    at, floor = 0, keys[0]
    for number in range(1, partitions):
        at = max(at, round(step * number))
        while at < len(keys) and keys[at] <= floor:
            at += 1
        if at >= len(keys):
            break
        floor = keys[at]
        points.append(floor)
    return points


def framed_keys(data: bytes) -> list[bytes]:
    """Keys written as 4-byte big-endian length and bytes (a sampling map's output)."""
    keys, at = [], 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        keys.append(data[at + 4:at + 4 + size])
        at += 4 + size
    if at != len(data):
        raise ValueError("truncated key sample")
    return keys


# -- splits of an input --------------------------------------------------------------------
def split_ranges(size: int, split_size: int) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of an input of ``size`` bytes cut every
    ``split_size`` (one range, the whole object, when it is not larger)."""
    if size <= split_size:
        return [(0, size)]
    return [(start, min(start + split_size, size)) for start in range(0, size, split_size)]


def line_aligned(read_at: Callable[[int, int], bytes], size: int, start: int, end: int,
                 chunk: int = _CHUNK) -> tuple[int, int]:
    """The part of an input that the split ``[start, end)`` reads: the lines that
    *begin* inside it (Hadoop's rule for text inputs).  A split after the first
    skips the line it starts in the middle of (its predecessor reads it whole), and
    reads on past ``end`` to the end of its last line.  So every line is read by
    exactly one split, whatever the split size.  ``read_at(offset, length)`` reads
    the input."""
    def after_newline_from(position: int) -> int:
        while position < size:
            data = read_at(position, min(chunk, size - position))
            if not data:
                return size
            found = data.find(b"\n")
            if found >= 0:
                return position + found + 1
            position += len(data)
        return size
    first = 0 if start == 0 else after_newline_from(start - 1)
    last = size if end >= size else after_newline_from(end - 1)
    return first, max(first, last)
