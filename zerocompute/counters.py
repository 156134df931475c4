"""Counters, as Hadoop's and mrjob's: guests count things, the job sums them. No I/O.

A guest counts by writing a line to stderr in Hadoop Streaming's own form::

    reporter:counter:<group>,<name>,<amount>

(``zerocompute_guest.increment_counter(group, name, amount)`` in Python, which sums
in memory and writes each counter once when the task ends;
``zc_increment_counter(group, name, amount)`` in ``zerocompute.h``).  The executor
takes such lines out of the guest's stderr (they are not in its tail) and sums them
per task; the proxy sums the tasks' into the job's ``counters``, ``{group: {name:
total}}``.  Only the attempt whose result the job keeps counts: a backup copy that
lost, a failed try, or a combiner (which may run any number of times, as in
Hadoop) does not.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = b"reporter:counter:"
# A line longer than this is not a counter: it passes through as stderr.
MAX_LINE = 1024

Counts = dict[str, dict[str, int]]


def parse(line: bytes) -> tuple[str, str, int] | None:
    """``(group, name, amount)`` of one counter line (without its newline), or None."""
    if not line.startswith(PREFIX) or len(line) > MAX_LINE:
        return None
    try:
        group, name, amount = line[len(PREFIX):].decode("utf-8").rsplit(",", 2)
        return group, name, int(amount)
    except ValueError:
        return None


def line(group: str, name: str, amount: int) -> str:
    """The stderr line that counts ``amount`` of ``group``/``name``."""
    for part in (group, name):
        if not part or "\n" in part or "," in part:
            raise ValueError(f"a counter's group and name are non-empty, without commas "
                             f"or newlines: {part!r}")
    return f"{PREFIX.decode()}{group},{name},{int(amount)}\n"


class CounterFilter:
    """A guest's stderr, write by write: counter lines taken out and summed, the rest
    passed on (to the tail).  A line may arrive in pieces."""

    def __init__(self) -> None:
        self.counts: Counts = {}
        self.pending = b""  # the start of a line that may be a counter's

    def feed(self, data: bytes) -> bytes:
        """What of ``data`` is ordinary stderr."""
        data = self.pending + data
        self.pending = b""
        kept = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0:
                rest = data[start:]
                if _may_be_counter(rest):
                    self.pending = rest
                else:
                    kept.append(rest)
                break
            counted = parse(data[start:end])
            if counted is None:
                kept.append(data[start:end + 1])
            else:
                self.add(*counted)
            start = end + 1
        return b"".join(kept)

    def add(self, group: str, name: str, amount: int) -> None:
        names = self.counts.setdefault(group, {})
        names[name] = names.get(name, 0) + amount

    def close(self) -> bytes:
        """The unfinished last line, as stderr (a counter line ends with a newline)."""
        rest, self.pending = self.pending, b""
        return rest


def _may_be_counter(start: bytes) -> bool:
    return len(start) <= MAX_LINE and (PREFIX.startswith(start) or start.startswith(PREFIX))


def total(all_counts: Iterable[Counts | None]) -> Counts:
    """Counters summed over tasks, groups and names sorted."""
    summed: Counts = {}
    for counts in all_counts:
        for group, names in (counts or {}).items():
            into = summed.setdefault(group, {})
            for name, amount in names.items():
                into[name] = into.get(name, 0) + amount
    return {group: dict(sorted(names.items())) for group, names in sorted(summed.items())}
