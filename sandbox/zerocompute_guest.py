"""The zerocompute guest SDK for Python scripts.

A script defines ``map`` and, optionally, ``reduce``; nothing else::

    import re

    def map(record):
        for word in re.findall(r"[A-Za-z0-9]+", record):
            yield word.lower(), 1

    def reduce(key, values):
        return sum(values)

Records are the lines of the input (text, without the newline).  ``map``
yields (or returns an iterable of) ``(key, value)`` pairs; ``reduce`` gets a
key and the list of its values and returns one value.  Lines on stdout are
``key<TAB>value``, where a value that is not a string is written as JSON (so
``1`` stays a number when it is read back).

The first argument picks the mode; without one, a script with ``reduce``
runs ``run`` and a script without it runs ``map``:

- ``map``: emit every pair of every record;
- ``reduce`` (or ``combine``): stdin is ``key<TAB>value`` lines sorted by key;
  emit ``key<TAB>reduce(key, values)`` per key;
- ``run``: ``map``, then sort and ``reduce`` locally: one pass that turns an
  object into its final result (the mode for map-only jobs).

A script that defines no ``map`` and no ``reduce`` is simply a program: it
ran when it was loaded, with stdin, argv and the environment of the task.
This file runs on the host's CPython too, so it is tested like any module.
It imports only built-in modules up front: in the guest, every stdlib module
is compiled from source at each start (``json`` alone costs ~50 ms), so
``json`` is imported only for values that are not plain numbers or strings.
"""

from __future__ import annotations

import itertools
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, TextIO

MODES = ("map", "reduce", "combine", "run")


def records(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line[:-1] if line.endswith("\n") else line


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value)
    import json
    return json.dumps(value, separators=(",", ":"))


def parse_value(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if text[:1] in ('"', "[", "{") or text[:1].isdigit() or text[:1] == "-":
        import json
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def format_pair(key: Any, value: Any) -> str:
    key = str(key)
    if "\t" in key or "\n" in key:
        raise ValueError(f"a key may not contain a tab or a newline: {key!r}")
    text = format_value(value)
    if "\n" in text:
        raise ValueError(f"a value may not contain a newline: {text!r}")
    return f"{key}\t{text}\n"


def parse_pair(line: str) -> tuple[str, Any]:
    key, tab, text = line.partition("\t")
    if not tab:
        raise ValueError(f"expected key<TAB>value, got {line!r}")
    return key, parse_value(text)


def mapped(map_fn: Callable, lines: Iterable[str]) -> Iterator[tuple[Any, Any]]:
    for record in lines:
        yield from map_fn(record) or ()


def reduced(reduce_fn: Callable, pairs: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """``pairs`` sorted by key, reduced per key."""
    for key, group in itertools.groupby(pairs, key=lambda kv: kv[0]):
        yield key, reduce_fn(key, [value for _, value in group])


def drive(namespace: dict[str, Any], argv: list[str], stdin: TextIO, stdout: TextIO) -> int:
    """Run the mode of ``argv`` over a loaded script's ``map``/``reduce``."""
    map_fn, reduce_fn = namespace.get("map"), namespace.get("reduce")
    mode = argv[0] if argv and argv[0] in MODES else ("run" if reduce_fn else "map")
    if mode in ("map", "run") and not callable(map_fn):
        raise SystemExit(f"zerocompute: mode {mode!r} needs a map(record) function")
    if mode in ("reduce", "combine", "run") and not callable(reduce_fn):
        raise SystemExit(f"zerocompute: mode {mode!r} needs a reduce(key, values) function")
    if mode == "map":
        out: Iterable[tuple[Any, Any]] = mapped(map_fn, records(stdin))
    elif mode == "run":
        pairs = sorted(((str(k), v) for k, v in mapped(map_fn, records(stdin))),
                       key=lambda kv: kv[0])
        out = reduced(reduce_fn, pairs)
    else:
        out = reduced(reduce_fn, (parse_pair(line) for line in records(stdin) if line))
    for key, value in out:
        stdout.write(format_pair(key, value))
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
    return drive(namespace, args, sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
