"""The shuffle as it was done in Python, record by record: the reference.

zerocompute's shuffle runs in its shuffle core (``sandbox/shuffle_core.c``,
compiled to WebAssembly); this is the plain, obviously-correct version that
the property tests hold it to (``tests/unit/test_shuffle_core.py``): for any
records, record forms, partition counts and sort buffers, the core's
partitions are these.
"""

from __future__ import annotations

import heapq
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from zerocompute.shuffle import FRAMED, TEXT, partition_of

Record = tuple[bytes, bytes]
# What a buffered record costs beyond its bytes (the tuple, two bytes objects).
RECORD_OVERHEAD = 120
_CHUNK = 1 << 16


class BadRecords(ValueError):
    """A guest's output is not records of the job's form."""


# -- reading and writing records ----------------------------------------------------------
def read_records(stream: BinaryIO, form: str = TEXT) -> Iterator[Record]:
    """The records of ``stream`` in ``form``; :class:`BadRecords` when malformed."""
    if form == FRAMED:
        yield from _read_framed(stream)
        return
    for number, line in enumerate(stream, 1):
        if line.endswith(b"\n"):
            line = line[:-1]
        if not line:
            continue  # a blank line is no record (as the guest SDK reads it)
        key, tab, value = line.partition(b"\t")
        if not tab:
            raise BadRecords(f"line {number} is not key<TAB>value: {line[:80]!r}")
        yield key, value


def _read_framed(stream: BinaryIO) -> Iterator[Record]:
    while True:
        key = _read_frame(stream, first=True)
        if key is None:
            return
        value = _read_frame(stream)
        yield key, value


def _read_frame(stream: BinaryIO, first: bool = False) -> bytes | None:
    head = stream.read(4)
    if not head and first:
        return None
    if len(head) < 4:
        raise BadRecords("truncated framed record: a length is cut short")
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        raise BadRecords(f"truncated framed record: {len(data)} of {size} bytes")
    return data


def inner_record(value: bytes, form: str = TEXT) -> Record:
    """The record inside a named record's value (``name<TAB>key<TAB>value``, or a framed
    record whose value is itself a framed record)."""
    if form == FRAMED:
        inner = list(_read_framed(io.BytesIO(value)))
        if len(inner) != 1:
            raise BadRecords("a named record's value is not one framed record")
        return inner[0]
    key, tab, rest = value.partition(b"\t")
    if not tab:
        raise BadRecords(f"a named record is name<TAB>key<TAB>value: {value[:80]!r}")
    return key, rest


def encode_record(key: bytes, value: bytes, form: str = TEXT) -> bytes:
    if form == FRAMED:
        return len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value
    if b"\t" in key or b"\n" in key or b"\n" in value:
        raise BadRecords(f"the text form cannot carry this record: {key[:80]!r}")
    return key + b"\t" + value + b"\n"


def write_records(out: BinaryIO, records: Iterable[Record], form: str = TEXT) -> int:
    """Write ``records``; the number of bytes written."""
    written = 0
    batch: list[bytes] = []
    size = 0
    for key, value in records:
        data = encode_record(key, value, form)
        batch.append(data)
        size += len(data)
        if size >= _CHUNK:
            out.write(b"".join(batch))
            written += size
            batch, size = [], 0
    out.write(b"".join(batch))
    return written + size


def merge_sorted(runs: Iterable[Iterable[Record]]) -> Iterator[Record]:
    """One stream sorted by key from runs each sorted by key (one record of each in memory)."""
    return heapq.merge(*runs, key=lambda record: record[0])


def group_by_key(records: Iterable[Record]) -> Iterator[tuple[bytes, list[bytes]]]:
    """Sorted records as ``(key, values)``, as a reducer sees them."""
    key: bytes | None = None
    values: list[bytes] = []
    for k, v in records:
        if k != key and key is not None:
            yield key, values
            values = []
        key = k
        values.append(v)
    if key is not None:
        yield key, values


# -- the map side -------------------------------------------------------------------------------
class Partitioner:
    """Splits records into ``partitions`` files, each sorted by key, in bounded memory.

    Records are buffered per partition; when the buffer passes
    ``memory_bytes`` every partition's buffer is sorted and spilled to a run
    file (Hadoop's map-side sort buffer).  :meth:`finish` merges each
    partition's runs and what is left in memory into its final file, in the
    job's record form, optionally through a combiner (called with the
    partition's sorted records, it returns records; its output is sorted
    again, so a combiner need not keep the order).
    """

    def __init__(self, directory: str, partitions: int, form: str = TEXT,
                 memory_bytes: int = 64 << 20):
        if partitions < 1:
            raise ValueError("at least one partition")
        self.directory = directory
        self.partitions = partitions
        self.form = form
        self.memory_bytes = memory_bytes
        self.buffers: list[list[Record]] = [[] for _ in range(partitions)]
        self.buffered = 0
        self.runs: list[list[str]] = [[] for _ in range(partitions)]
        self.records = 0
        self.spills = 0
        os.makedirs(directory, exist_ok=True)

    def add(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        """Buffer a record in its partition (by its key's CRC32, unless given)."""
        if partition is None:
            partition = partition_of(key, self.partitions)
        self.buffers[partition].append((key, value))
        self.buffered += len(key) + len(value) + RECORD_OVERHEAD
        self.records += 1
        if self.buffered > self.memory_bytes:
            self.spill()

    def add_all(self, records: Iterable[Record]) -> None:
        for key, value in records:
            self.add(key, value)

    def spill(self) -> None:
        for number, buffer in enumerate(self.buffers):
            if buffer:
                buffer.sort(key=lambda record: record[0])
                self.runs[number].append(self._write_run(buffer))
                buffer.clear()
        self.buffered = 0
        self.spills += 1

    def _write_run(self, records: Iterable[Record]) -> str:
        fd, path = tempfile.mkstemp(dir=self.directory, prefix="run-")
        with os.fdopen(fd, "wb") as out:
            write_records(out, records, FRAMED)
        return path

    def sorted_partition(self, number: int) -> Iterator[Record]:
        """Partition ``number``'s records in key order: its runs merged with its buffer."""
        buffer = sorted(self.buffers[number], key=lambda record: record[0])
        files = [open(path, "rb") for path in self.runs[number]]  # noqa: SIM115 - closed below
        try:
            yield from merge_sorted([*(_read_framed(f) for f in files), buffer])
        finally:
            for f in files:
                f.close()

    def finish(self, combine: Callable[[Iterator[Record]], Iterable[Record]] | None = None,
               ) -> list[tuple[str, int]]:
        """Write every partition's file; ``(path, bytes)`` per partition, in order."""
        done = []
        for number in range(self.partitions):
            path = os.path.join(self.directory, f"part-{number:05d}")
            records: Iterable[Record] = self.sorted_partition(number)
            if combine is not None:
                records = self._resorted(combine(iter(records)))
            with open(path, "wb") as out:
                size = write_records(out, records, self.form)
            done.append((path, size))
            self._forget(number)
        return done

    def _resorted(self, records: Iterable[Record]) -> Iterator[Record]:
        again = Partitioner(os.path.join(self.directory, "combined"), 1, FRAMED,
                            self.memory_bytes)
        again.add_all(records)
        try:
            yield from again.sorted_partition(0)
        finally:
            again.close()

    def _forget(self, number: int) -> None:
        """Drop partition ``number``'s buffer and remove its run files."""
        for path in self.runs[number]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.runs[number] = []
        self.buffers[number] = []

    def close(self) -> None:
        for number in range(self.partitions):
            self._forget(number)


def add_named(partitioner: Partitioner, records: Iterable[Record],
              outputs: list[tuple[str, int]], form: str) -> None:
    """Records naming their output: each goes to one of that output's partitions."""
    ranges, offset = {}, 0
    for name, count in outputs:
        ranges[name.encode("utf-8")] = (offset, count)
        offset += count
    for name, value in records:
        if name not in ranges:
            known = ", ".join(sorted(n.decode() for n in ranges))
            raise BadRecords(f"a record names no output of this job: {name[:64]!r} "
                             f"(outputs: {known})")
        first, count = ranges[name]
        key, inner = inner_record(value, form)
        partitioner.add(key, inner, first + partition_of(key, count))
