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

A task tells the script its phase (``ZEROCOMPUTE_PHASE``), and the script
runs it: ``map`` (a MapReduce job's map: emit every pair of every record),
``combine`` (stdin is records sorted by key; emit ``(key, combine(key,
values))`` per key, ``reduce`` standing in for ``combine``), ``reduce``
(the same with ``reduce``), and ``map-only`` (a job without a reduce: a
script with ``reduce`` runs ``run``, ``map`` then sort and ``reduce``
locally, one pass that turns an object into its final result; one without
runs ``map``).  A first argument naming a mode (``map``, ``reduce``,
``combine``, ``run``) picks it instead, and must agree with the phase: a
``run`` in a map phase would reduce twice and count everything wrong, so it
is an error that names both.  Run by hand, with no phase, the argument
decides, as above for ``map-only``.

In a map whose job's combiner is this same script (``ZEROCOMPUTE_COMBINER``
holds the combiner's first argument: ``combine``, ``reduce`` or nothing), the
SDK combines in memory as the map emits, with the function the combiner runs:
each key's values are kept and folded by that function, and everything is
written out when the map ends or the kept keys pass the job's sort buffer
(``ZEROCOMPUTE_SORT_BUFFER``).  A word count's map then writes one record
per distinct word, not one per word (in-mapper combining).

A script that defines no ``map`` and no ``reduce`` is simply a program: it
ran when it was loaded, with stdin, argv and the environment of the task.
This file runs on the host's CPython too, so it is tested like any module.
It imports only built-in modules up front: in the guest, every stdlib module
is compiled from source at each start (``json`` alone costs ~50 ms), so
numbers and plain strings are written and read without ``json``.
"""

from __future__ import annotations

import itertools
import posix  # os's built-in half: importing ``os`` itself costs a guest's start 4 ms
import sys

# The C half of collections, built into the interpreter: importing ``collections``
# itself (from the interpreter's zipped standard library) costs a trivial guest's
# start about 12 ms of its 60.
from _collections import defaultdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, BinaryIO

# Counters (Hadoop's): summed here, written once each when the task ends, as Hadoop
# Streaming's stderr lines, which the host takes out of stderr (zerocompute/counters.py).
COUNTER_LINE = "reporter:counter:{},{},{}\n"
_counters: dict[tuple[str, str], int] = {}


def increment_counter(group: str, name: str, amount: int = 1) -> None:
    """Count ``amount`` more of ``group``/``name`` for the job's ``counters``."""
    for part in (group, name):
        if not isinstance(part, str) or not part or "," in part or "\n" in part:
            raise ValueError(f"a counter's group and name are non-empty strings, without "
                             f"commas or newlines: {part!r}")
    _counters[group, name] = _counters.get((group, name), 0) + int(amount)


def write_counters(stderr: Any = None) -> None:
    """Every counter of the task, once, on stderr."""
    stderr = stderr or sys.stderr
    stderr.write("".join(COUNTER_LINE.format(g, n, a) for (g, n), a in _counters.items()))
    stderr.flush()
    _counters.clear()


MODES = ("map", "reduce", "combine", "run")
# The modes each phase of a task allows (ZEROCOMPUTE_PHASE); a map-only job allows all.
PHASE_MODES = {"map": ("map",), "combine": ("combine", "reduce"), "reduce": ("reduce",)}
# In-mapper combining: a key's kept values are folded once this many are kept in all.
FOLD_EVERY = 50_000
KEY_OVERHEAD = 150  # what a kept key costs beyond its characters (dict slot, list, str)
TEXT, FRAMED = "text", "framed"
# Characters a JSON string must escape: quote, backslash and the control characters.
_ESCAPES = {**{chr(i): f"\\u{i:04x}" for i in range(32)}, '"': '\\"', "\\": "\\\\",
            "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


BLOCK = 1 << 20


def records(stream: BinaryIO) -> Iterator[str]:
    """The input's lines, without their newline.

    Decoded and split a block of whole lines at a time, not line by line: in the
    guest each line's own decode and strip cost as much as a short line's map.
    A newline byte is never part of a multi-byte UTF-8 character, so a block cut
    after one decodes as its lines would."""
    unended: list[bytes] = []  # the pieces of a line begun, not yet ended
    while block := stream.read(BLOCK):
        cut = block.rfind(b"\n") + 1
        if not cut:
            unended.append(block)
            continue
        lines = b"".join([*unended, block[:cut]]).decode("utf-8", "surrogateescape")
        unended = [block[cut:]]
        yield from lines.split("\n")[:-1]  # the last piece is after the last newline
    if any(unended):
        yield b"".join(unended).decode("utf-8", "surrogateescape")


def _quote(text: str) -> str:
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def format_value(value: Any) -> str:
    """A value as JSON (compact), without importing ``json`` for the common kinds."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        return _quote(value)
    if kind is bool or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if kind is float and value - value == 0:  # finite: its repr is JSON
        return repr(value)
    import json
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_value(text: str) -> Any:
    """A value written by :func:`format_value` (or, failing JSON, the text itself)."""
    if text[:1].isdigit() or text[:1] == "-":
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
            if text.lstrip("-")[:1].isdigit() and number - number == 0:
                return number
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
    def encode(key: Any, value: Any) -> bytes:
        return f"{_text_key(key)}\t{format_value(value)}\n".encode("utf-8", "surrogateescape")

    @staticmethod
    def encode_named(name: str, key: Any, value: Any) -> bytes:
        return f"{_text_key(name)}\t{_text_key(key)}\t{format_value(value)}\n".encode(
            "utf-8", "surrogateescape")

    @staticmethod
    def write(out: BinaryIO, key: Any, value: Any) -> None:
        out.write(TextRecords.encode(key, value))

    @staticmethod
    def write_named(out: BinaryIO, name: str, key: Any, value: Any) -> None:
        """``name<TAB>key<TAB>value``: a record for the job's output ``name``."""
        out.write(TextRecords.encode_named(name, key, value))

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
    def encode(key: Any, value: Any) -> bytes:
        return FramedRecords.frame(key, format_value(value).encode("utf-8", "surrogateescape"))

    @staticmethod
    def encode_named(name: str, key: Any, value: Any) -> bytes:
        """A record for the job's output ``name``: its value is the framed record."""
        return FramedRecords.frame(name, FramedRecords.encode(key, value))

    @staticmethod
    def write(out: BinaryIO, key: Any, value: Any) -> None:
        out.write(FramedRecords.encode(key, value))

    @staticmethod
    def write_named(out: BinaryIO, name: str, key: Any, value: Any) -> None:
        out.write(FramedRecords.encode_named(name, key, value))

    @staticmethod
    def frame(key: Any, data: bytes) -> bytes:
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
    name = name or _getenv("ZEROCOMPUTE_RECORDS") or TEXT
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


def choose_mode(argv: list[str], phase: str | None, has_reduce: bool) -> str:
    """The mode a task runs: its phase's, or the one its first argument names (which
    must agree with the phase)."""
    asked = argv[0] if argv and argv[0] in MODES else None
    allowed = PHASE_MODES.get(phase or "")
    if allowed is None:  # a map-only job, or run by hand
        return asked or ("run" if has_reduce else "map")
    if asked is not None and asked not in allowed:
        raise SystemExit(f"zerocompute: mode {asked!r} (the task's first argument) "
                         f"contradicts this task's phase {phase!r} (ZEROCOMPUTE_PHASE): "
                         f"a {phase} task runs {' or '.join(map(repr, allowed))}")
    return asked or phase


def combined_in_memory(namespace: dict[str, Any], lines: Iterable[str], fn: Callable,
                       budget: int) -> Iterator[tuple]:
    """The map's pairs (or named triples) with each key's values folded by ``fn`` in
    memory (in-mapper combining): every key once, unless the kept keys pass
    ``budget`` bytes, when what is kept so far is written out and keeping starts again.

    The loop per pair is as short as CPython allows (a pair, a dictionary slot, an
    append): in the guest every bytecode counts.  Keys are made strings when written
    out, merging keys whose text is the same."""
    _call(namespace, "map_init")
    map_fn = namespace["map"]
    kept: defaultdict[Any, list] = defaultdict(list)
    named = None
    checked = 0
    for number, record in enumerate(lines):
        pairs = map_fn(record)
        if not pairs:
            continue
        if named is None:
            pairs = iter(pairs)
            first = next(pairs, None)
            if first is None:
                continue
            named = len(first) == 3
            _keep(kept, named, (first,))
        _keep(kept, named, pairs)
        if number - checked >= 1024:  # now and then: the budget, and lists grown long
            checked = number
            if len(kept) * KEY_OVERHEAD + sum(map(len, kept)) > budget:
                yield from _folded(kept, fn, named)
                kept.clear()
            elif sum(map(len, kept.values())) > FOLD_EVERY:
                for key, values in kept.items():
                    if len(values) > 1:
                        values[:] = [fn(key[1] if named else key, values)]
    final = _call(namespace, "map_final")
    if final:
        if named is None:
            final = list(final)
            named = len(final[0]) == 3
        _keep(kept, named, final)
    yield from _folded(kept, fn, named)


def _keep(kept: defaultdict, named: bool, pairs: Iterable[tuple]) -> None:
    try:
        if named:
            for name, key, value in pairs:
                kept[name, key].append(value)
        else:
            for key, value in pairs:
                kept[key].append(value)
    except ValueError as err:
        if err.__traceback__.tb_next is not None:
            # Raised further in: by the map's own code, which runs as ``pairs`` is
            # iterated.  The script's error reaches the task as it is.
            raise
        raise SystemExit("zerocompute: map yields (key, value) pairs or, in a job with "
                         f"named outputs, (output, key, value) triples, not both: {err}"
                         ) from None


def _folded(kept: dict[Any, list], fn: Callable, named: bool | None) -> Iterator[tuple]:
    if named:  # keys as text: the same text is the same key
        merged: dict[Any, list] = {}
        for (name, key), values in kept.items():
            merged.setdefault((name, key if type(key) is str else str(key)), []).extend(values)
        for (name, key), values in merged.items():
            yield name, key, values[0] if len(values) == 1 else fn(key, values)
        return
    if not all(type(key) is str for key in kept):
        merged = {}
        for key, values in kept.items():
            merged.setdefault(key if type(key) is str else str(key), []).extend(values)
        kept = merged
    for key, values in kept.items():
        yield key, values[0] if len(values) == 1 else fn(key, values)


def drive(namespace: dict[str, Any], argv: list[str], stdin: BinaryIO, stdout: BinaryIO,
          form: type | None = None, phase: str | None = None,
          combiner: str | None = None, budget: int = 128 << 20) -> int:
    """Run the task's mode over a loaded script's functions, in the job's record form.
    ``phase``, ``combiner`` and ``budget`` are the task's (``ZEROCOMPUTE_PHASE``,
    ``ZEROCOMPUTE_COMBINER``, ``ZEROCOMPUTE_SORT_BUFFER``)."""
    form = form or record_form()
    map_fn, reduce_fn = namespace.get("map"), namespace.get("reduce")
    mode = choose_mode(argv, phase, callable(reduce_fn))
    if mode in ("map", "run") and not callable(map_fn):
        raise SystemExit(f"zerocompute: mode {mode!r} needs a map(record) function")
    if mode in ("reduce", "combine", "run") and not callable(reduce_fn):
        raise SystemExit(f"zerocompute: mode {mode!r} needs a reduce(key, values) function")
    combine = namespace.get("combine")
    combine = combine if callable(combine) else reduce_fn
    if mode == "map" and phase == "map" and combiner in ("", "combine", "reduce") \
            and callable(reduce_fn):
        out: Iterable[tuple] = combined_in_memory(
            namespace, records(stdin), reduce_fn if combiner == "reduce" else combine, budget)
    elif mode == "map":
        out = mapped(namespace, records(stdin))
    elif mode == "run":
        pairs = sorted(((k if isinstance(k, str) else str(k), v)
                        for k, v in mapped(namespace, records(stdin))), key=lambda kv: kv[0])
        out = reduced(namespace, reduce_fn, pairs)
    else:
        out = reduced(namespace, combine if mode == "combine" else reduce_fn, form.read(stdin))
    write_all(stdout, out, form)
    return 0


def write_all(stdout: BinaryIO, records: Iterable[tuple], form: type) -> None:
    """Records, ``(key, value)`` or ``(output name, key, value)``, in batches."""
    encode, encode_named = form.encode, form.encode_named
    batch: list[bytes] = []
    for record in records:
        batch.append(encode(*record) if len(record) == 2 else encode_named(*record))
        if len(batch) >= 4096:
            stdout.write(b"".join(batch))
            batch.clear()
    stdout.write(b"".join(batch))
    stdout.flush()


def main() -> int:
    """``python zerocompute_guest.py SCRIPT [ARGS...]``: load SCRIPT, then drive it."""
    script, args = sys.argv[1], sys.argv[2:]
    sys.argv = [script, *args]
    # "import zerocompute_guest" in the script is this module, with its counters.
    sys.modules.setdefault("zerocompute_guest", sys.modules[__name__])
    try:
        return _run_script(script, args)
    finally:
        write_counters()


_compiled: dict[tuple[str, str], Any] = {}  # a resident interpreter's scripts, compiled


def _run_script(script: str, args: list[str]) -> int:
    with open(script, encoding="utf-8") as f:
        source = f.read()
    code = _compiled.get((script, source))
    if code is None:
        code = _compiled[script, source] = compile(source, script, "exec")
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": script}
    exec(code, namespace)  # noqa: S102 - running the user's script is the point
    if not callable(namespace.get("map")) and not callable(namespace.get("reduce")):
        return 0
    return drive(namespace, args, sys.stdin.buffer, sys.stdout.buffer,
                 phase=_getenv("ZEROCOMPUTE_PHASE"), combiner=_getenv("ZEROCOMPUTE_COMBINER"),
                 budget=int(_getenv("ZEROCOMPUTE_SORT_BUFFER") or 128 << 20))


def _getenv(name: str) -> str | None:
    """A variable of the task's environment: through ``os`` when something has
    imported it (the script, or the host's tests), which sees changes made since."""
    os = sys.modules.get("os")
    if os is not None:
        return os.environ.get(name)
    value = posix.environ.get(name.encode())
    return None if value is None else value.decode("utf-8", "surrogateescape")


# A resident interpreter's token (zerocompute.sandbox.resident): written to descriptor
# 0, it waits for the next task and returns the size of its header (0: none), which
# descriptor 0's reads then give before the task's input.
TOKEN_ENV = b"ZEROCOMPUTE_RESIDENT"


def serve_tasks() -> None:
    """Run the tasks the host hands over, one after another, each as :func:`main`
    runs one in a fresh interpreter, until there is none or one fails (which ends
    the interpreter, with its status, as it would end a fresh one)."""
    token = posix.environ.pop(TOKEN_ENV)  # before any script can see it
    posix.unsetenv(TOKEN_ENV)
    path = list(sys.path)
    stdin = sys.stdin
    while size := posix.write(0, token):
        header = b""
        while len(header) < size:
            header += posix.read(0, size - len(header))
        _begin_task(header, path, stdin.encoding, stdin.errors)
        status = main()
        _flush()
        if status:
            end_task(status)
    end_task(0)


def _begin_task(header: bytes, path: list[str], encoding: str, errors: str) -> None:
    """The task's argv, environment and standard streams, in place of the last one's."""
    items = header.split(b"\0")[:-1]
    argc = int(items[0])
    sys.argv = [arg.decode("utf-8", "surrogateescape") for arg in items[1:1 + argc]]
    for name in list(posix.environ):
        posix.unsetenv(name)
    posix.environ.clear()  # os.environ's own dictionary, when os is imported
    for item in items[1 + argc:]:
        name, _, value = item.partition(b"=")
        posix.environ[name] = value
        posix.putenv(name, value)
    sys.path[:] = path
    # A fresh reader of descriptor 0 (now the task's input), made as the interpreter
    # makes sys.stdin: nothing the last task left buffered reaches this one.
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, errors=errors, newline="\n",
                                     closefd=False)
    # The interpreter's own stdout and stderr, whatever the last task made of sys's.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__ = _STREAMS


def end_task(status: int | None) -> None:
    """End the task with ``status``, without the interpreter's finalisation: the
    instance is thrown away whole, so tearing its objects down one by one would be
    time spent on nothing."""
    _flush()
    posix._exit(status or 0)


# The interpreter's own stdout and stderr, whatever a script makes of sys's.
_STREAMS = (sys.stdout, sys.stderr)


def _flush() -> None:
    """Flush stdout and stderr, and the interpreter's own if a script replaced them
    (their buffers would otherwise be lost: the task ends without finalisation)."""
    sys.stdout.flush()
    sys.stderr.flush()
    for stream in _STREAMS:
        if stream is not sys.stdout and stream is not sys.stderr and not stream.closed:
            stream.flush()


if __name__ == "__main__":
    end_task(main())
