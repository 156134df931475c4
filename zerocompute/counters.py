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
    passed on (to the tail).  A line may arrive in pieces.

    Only counter lines are looked at one by one: the text between them passes
    through in bulk (a guest may write megabytes of ordinary stderr).
    """

    def __init__(self) -> None:
        self.counts: Counts = {}
        self.pending = b""  # the start of a line that may be a counter's
        self.at_line_start = True  # the next byte written begins a line

    def feed(self, data: bytes) -> bytes:
        """What of ``data`` is ordinary stderr."""
        data = self.pending + data
        from_line_start, self.pending = self.at_line_start or bool(self.pending), b""
        kept = []
        start = 0
        while (at := _counter_line_at(data, start, from_line_start)) >= 0:
            end = data.find(b"\n", at)
            if end < 0:
                break
            counted = parse(data[at:end])
            if counted is None:
                kept.append(data[start:end + 1])
            else:
                kept.append(data[start:at])
                self.add(*counted)
            start = end + 1
        last = max(data.rfind(b"\n", start) + 1, start)
        if last < len(data) and (last > 0 or from_line_start) and _may_be_counter(data[last:]):
            kept.append(data[start:last])
            self.pending = data[last:]
        else:
            kept.append(data[start:])
        self.at_line_start = bool(self.pending) or data.endswith(b"\n") or (
            not data and from_line_start)
        return b"".join(kept)

    def add(self, group: str, name: str, amount: int) -> None:
        names = self.counts.setdefault(group, {})
        names[name] = names.get(name, 0) + amount

    def close(self) -> bytes:
        """The unfinished last line, as stderr (a counter line ends with a newline)."""
        rest, self.pending = self.pending, b""
        return rest


def _counter_line_at(data: bytes, start: int, from_line_start: bool) -> int:
    """Where the first line at or after ``start`` that begins with the prefix begins,
    or -1; ``from_line_start`` says whether ``data`` itself begins a line."""
    at = data.find(PREFIX, start)
    while at > 0 and data[at - 1] != 0x0A:
        at = data.find(PREFIX, at + 1)
    if at == 0 and not from_line_start:
        at = data.find(b"\n" + PREFIX)
        return at + 1 if at >= 0 else -1
    return at


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
