"""The zerocompute guest SDK for Python scripts.

A script defines ``map`` and, optionally, ``reduce``; nothing else::

    import re

    def map(record):
        for word in re.findall(r"[A-Za-z0-9]+", record):
            yield word.lower(), 1

    def reduce(key, values):
        return sum(values)

Records are the lines of the input (text, without the newline).  ``map``
yields (or returns an iterable of) ``(key, value)`` pairs, or ``(output,
key, value)`` triples in a job with named outputs; ``reduce`` gets a
key and the list of its values and returns one value.  Optional hooks, as
mrjob's: ``combine(key, values)`` (the combiner; ``reduce`` stands in for
it), ``map_init()`` / ``reduce_init()`` run once before the first record of
the task, ``map_final()`` / ``reduce_final()`` once after the last, and may
yield more pairs.

Pairs travel in the job's record form (``ZEROCOMPUTE_RECORDS``):

- ``text`` (the default, Hadoop Streaming's): ``key<TAB>value`` lines; the
  key is the text before the first tab (it may hold neither a tab nor a
  newline) and the value is JSON, always, so that every value comes back
  exactly as it went out: ``"12"`` stays a string and ``12`` a number.  A
  value line that is not JSON (written by another program) is read as text.
- ``framed``: each record is a 4-byte big-endian key length, the key's bytes
  (UTF-8 for a ``str`` key), a 4-byte value length and the value's bytes
  (its JSON); keys may hold any bytes, tabs, newlines and NUL included.

The first argument picks the mode; without one, a script with ``reduce``
runs ``run`` and a script without it runs ``map``:

- ``map``: emit every pair of every record;
- ``reduce`` (or ``combine``): stdin is records sorted by key; emit
  ``(key, reduce(key, values))`` per key (``combine`` when defined);
- ``run``: ``map``, then sort and ``reduce`` locally: one pass that turns an
  object into its final result (the mode for map-only jobs).

A script that defines no ``map`` and no ``reduce`` is simply a program: it
ran when it was loaded, with stdin, argv and the environment of the task.
This file runs on the host's CPython too, so it is tested like any module.
It imports only built-in modules up front: in the guest, every stdlib module
is compiled from source at each start (``json`` alone costs ~50 ms), so
numbers and plain strings are written and read without ``json``.
"""

from __future__ import annotations

import itertools
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, BinaryIO

MODES = ("map", "reduce", "combine", "run")
TEXT, FRAMED = "text", "framed"
# Characters a JSON string must escape: quote, backslash and the control characters.
_ESCAPES = {**{chr(i): f"\\u{i:04x}" for i in range(32)}, '"': '\\"', "\\": "\\\\",
            "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def records(stream: BinaryIO) -> Iterator[str]:
    """The input's lines, without their newline."""
    for line in stream:
        text = line.decode("utf-8", "surrogateescape")
        yield text[:-1] if text.endswith("\n") else text


def _quote(text: str) -> str:
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def format_value(value: Any) -> str:
    """A value as JSON (compact), without importing ``json`` for the common kinds."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    import json
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_value(text: str) -> Any:
    """A value written by :func:`format_value` (or, failing JSON, the text itself)."""
    if text[:1].isdigit() or text[:1] == "-":
        try:
            return int(text)
        except ValueError:
            pass
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if len(text) >= 2 and text[0] == '"' == text[-1] and "\\" not in text \
            and '"' not in text[1:-1]:
        return text[1:-1]
    import json
    try:
        return json.loads(text)
    except ValueError:
        return text


def _text_key(key: Any) -> str:
    key = key if isinstance(key, str) else str(key)
    if "\t" in key or "\n" in key:
        raise ValueError(f"a key may not contain a tab or a newline in the text record "
                         f"form (use \"records\": \"framed\"): {key!r}")
    return key


class TextRecords:
    """``key<TAB>value`` lines."""

    @staticmethod
    def write(out: BinaryIO, key: Any, value: Any) -> None:
        out.write(f"{_text_key(key)}\t{format_value(value)}\n".encode("utf-8",
                                                                       "surrogateescape"))

    @staticmethod
    def write_named(out: BinaryIO, name: str, key: Any, value: Any) -> None:
        """``name<TAB>key<TAB>value``: a record for the job's output ``name``."""
        out.write(f"{_text_key(name)}\t{_text_key(key)}\t{format_value(value)}\n".encode(
            "utf-8", "surrogateescape"))

    @staticmethod
    def read(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
        for line in records(stream):
            if not line:
                continue
            key, tab, text = line.partition("\t")
            if not tab:
                raise ValueError(f"expected key<TAB>value, got {line!r}")
            yield key, parse_value(text)


class FramedRecords:
    """Length-framed records: any bytes in keys and values."""

    @staticmethod
    def write(out: BinaryIO, key: Any, value: Any) -> None:
        out.write(FramedRecords.encode(key, format_value(value).encode("utf-8",
                                                                       "surrogateescape")))

    @staticmethod
    def write_named(out: BinaryIO, name: str, key: Any, value: Any) -> None:
        """A record for the job's output ``name``: its value is the framed record."""
        inner = FramedRecords.encode(key, format_value(value).encode("utf-8",
                                                                     "surrogateescape"))
        out.write(FramedRecords.encode(name, inner))

    @staticmethod
    def encode(key: Any, data: bytes) -> bytes:
        if not isinstance(key, bytes):
            key = (key if isinstance(key, str) else str(key)).encode("utf-8", "surrogateescape")
        return len(key).to_bytes(4, "big") + key + len(data).to_bytes(4, "big") + data

    @staticmethod
    def read(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
        while True:
            key = _frame(stream, first=True)
            if key is None:
                return
            value = _frame(stream)
            yield (key.decode("utf-8", "surrogateescape"),
                   parse_value(value.decode("utf-8", "surrogateescape")))


# The same framing as zerocompute.shuffle's reader, on purpose: this file runs alone
# inside the guest, where zerocompute is not importable.
def _frame(stream: BinaryIO, first: bool = False) -> bytes | None:
    head = stream.read(4)
    if not head and first:
        return None
    if len(head) < 4:
        raise ValueError("truncated record: a length is cut short")
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        raise ValueError(f"truncated record: {len(data)} of {size} bytes")
    return data


def record_form(name: str | None = None) -> type:
    """The record form of the job (``ZEROCOMPUTE_RECORDS``), text by default."""
    name = name or os.environ.get("ZEROCOMPUTE_RECORDS") or TEXT
    if name not in (TEXT, FRAMED):
        raise SystemExit(f"zerocompute: unknown record form {name!r}")
    return FramedRecords if name == FRAMED else TextRecords


def mapped(namespace: dict[str, Any], lines: Iterable[str]) -> Iterator[tuple[Any, Any]]:
    _call(namespace, "map_init")
    map_fn = namespace["map"]
    for record in lines:
        yield from map_fn(record) or ()
    yield from _call(namespace, "map_final") or ()


def reduced(namespace: dict[str, Any], fn: Callable,
            pairs: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """``pairs`` sorted by key, reduced per key by ``fn``."""
    _call(namespace, "reduce_init")
    for key, group in itertools.groupby(pairs, key=lambda kv: kv[0]):
        yield key, fn(key, [value for _, value in group])
    yield from _call(namespace, "reduce_final") or ()


def _call(namespace: dict[str, Any], hook: str) -> Any:
    fn = namespace.get(hook)
    return fn() if callable(fn) else None


def drive(namespace: dict[str, Any], argv: list[str], stdin: BinaryIO, stdout: BinaryIO,
          form: type | None = None) -> int:
    """Run the mode of ``argv`` over a loaded script's functions, in the job's record form."""
    form = form or record_form()
    map_fn, reduce_fn = namespace.get("map"), namespace.get("reduce")
    mode = argv[0] if argv and argv[0] in MODES else ("run" if reduce_fn else "map")
    if mode in ("map", "run") and not callable(map_fn):
        raise SystemExit(f"zerocompute: mode {mode!r} needs a map(record) function")
    if mode in ("reduce", "combine", "run") and not callable(reduce_fn):
        raise SystemExit(f"zerocompute: mode {mode!r} needs a reduce(key, values) function")
    if mode == "map":
        out: Iterable[tuple[Any, Any]] = mapped(namespace, records(stdin))
    elif mode == "run":
        pairs = sorted(((k if isinstance(k, str) else str(k), v)
                        for k, v in mapped(namespace, records(stdin))), key=lambda kv: kv[0])
        out = reduced(namespace, reduce_fn, pairs)
    else:
        combine = namespace.get("combine") if mode == "combine" else None
        out = reduced(namespace, combine if callable(combine) else reduce_fn, form.read(stdin))
    for record in out:
        if len(record) == 3:
            form.write_named(stdout, *record)  # (output name, key, value)
        else:
            form.write(stdout, *record)
    stdout.flush()
    return 0


def main() -> int:
    """``python zerocompute_guest.py SCRIPT [ARGS...]``: load SCRIPT, then drive it."""
    script, args = sys.argv[1], sys.argv[2:]
    sys.argv = [script, *args]
    with open(script, encoding="utf-8") as f:
        code = compile(f.read(), script, "exec")
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": script}
    exec(code, namespace)  # noqa: S102 - running the user's script is the point
    if not callable(namespace.get("map")) and not callable(namespace.get("reduce")):
        return 0
    return drive(namespace, args, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main())
