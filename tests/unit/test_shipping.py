"""Python functions as guest scripts: what travels, what is refused, and that the script
computes what the functions compute (run by the guest SDK on the host's CPython)."""

import collections
import io
import json
import math
import re
import socket
import subprocess
import sys
import tempfile

import pytest

from zerocompute import increment_counter, shipping
from zerocompute.sandbox import zerocompute_guest as sdk

WORD = re.compile(r"[a-z']+", re.IGNORECASE)
STOP = {"the", "a", "and"}
SCALE = 10


def mapper(line):
    for word in WORD.findall(line):
        if word.lower() not in STOP:
            yield word.lower(), 1


def reducer(word, counts):
    return sum(counts)


def length_key(line):
    yield (len(line), line[:1]), math.floor(SCALE * 1.5)


def total(key, values):
    return sum(values)


def loaded(script):
    namespace = {"__name__": "__main__"}
    exec(compile(script, "guest.py", "exec"), namespace)  # noqa: S102 - what the guest does
    return namespace


def run(namespace, args, data, **task):
    out = io.BytesIO()
    assert sdk.drive(namespace, args, io.BytesIO(data), out, sdk.TextRecords, **task) == 0
    return out.getvalue()


TEXT = b"The cat and the hat\nA cat, a hat; THE end\n"


def test_a_word_count_travels_with_its_regex_and_set_and_counts_the_same():
    script = shipping.map_reduce_script(mapper, reducer, combiner=reducer)
    assert f"WORD = re.compile(\"[a-z']+\", {int(WORD.flags)})" in script
    assert "STOP = {'a', 'and', 'the'}" in script  # sorted: the same in every interpreter
    guest = loaded(script)
    mapped = run(guest, [], TEXT, phase="map")
    shuffled = b"".join(sorted(mapped.splitlines(True)))
    reduced = run(guest, [], shuffled, phase="reduce")
    got = {json.loads(k): json.loads(v) for k, v in
           (line.split("\t") for line in reduced.decode().splitlines())}
    expected = collections.Counter(w for line in TEXT.decode().splitlines()
                                   for w, _ in mapper(line))
    assert got == expected and all(type(v) is int for v in got.values())


def test_keys_keep_their_python_types():
    guest = loaded(shipping.map_reduce_script(length_key, total))
    mapped = run(guest, [], b"ab\nab\nc\n", phase="map")
    reduced = run(guest, [], b"".join(sorted(mapped.splitlines(True))), phase="reduce")
    pairs = [(json.loads(k), json.loads(v)) for k, v in
             (line.split("\t") for line in reduced.decode().splitlines())]
    assert sorted(pairs) == [([1, "c"], 15), ([2, "a"], 30)]  # a tuple comes back a list


def test_literals_are_written_so_they_read_back_equal():
    import ast
    for value in ({"b", "a"}, set(), (1,), (), [1, (2, {3: {"x", "y"}})], {"k": [None, 1.5]},
                  b"\x00", "tab\t", -0.0, 10**40):
        text = shipping.literal_source(value)
        assert ast.literal_eval(text) == value and type(ast.literal_eval(text)) is type(value)


def test_the_same_functions_make_the_same_script_and_name():
    one = shipping.map_reduce_script(mapper, reducer)
    assert shipping.map_reduce_script(mapper, reducer) == one
    assert shipping.digest(one) == shipping.digest(shipping.map_reduce_script(mapper, reducer))
    assert shipping.digest(one) != shipping.digest(shipping.map_reduce_script(mapper, total))


def count_lines(content):
    return len(content.splitlines())


def test_a_map_script_is_a_program_of_its_input(tmp_path):
    script = tmp_path / "guest.py"
    script.write_text(shipping.map_script(count_lines))
    sdk_path = sdk.__file__
    done = subprocess.run([sys.executable, sdk_path, str(script)], input=TEXT,
                          capture_output=True, check=True)
    assert json.loads(done.stdout) == 2


OPEN_FILE = tempfile.TemporaryFile()
A_SOCKET = socket.socket()
A_SOCKET.close()


def reads_a_file(line):
    yield OPEN_FILE.read(), 1


def uses_a_socket(line):
    yield str(A_SOCKET), 1


def uses_pytest(line):
    yield pytest.__name__, 1


def uses_nothing_defined(line):
    yield undefined_name, 1  # noqa: F821 - the case under test


def make_closure(n):
    def times(line):
        yield line, n
    return times


@pytest.mark.parametrize("function, words", [
    (reads_a_file, "reads_a_file -> OPEN_FILE is a _io.BufferedRandom"),
    (uses_a_socket, "uses_a_socket -> A_SOCKET is a socket.socket"),
    (uses_pytest, "the module 'pytest', which is not in the guests' standard library"),
    (uses_nothing_defined, "uses 'undefined_name', which is not defined"),
    (lambda line: [(line, 1)], "is a lambda"),
    (print, "is builtin_function_or_method, not a function defined with def"),
])
def test_what_cannot_travel_is_named_before_anything_is_sent(function, words):
    with pytest.raises(shipping.CannotShip, match=re.escape(words)):
        shipping.map_reduce_script(function, reducer)


def test_a_closures_values_travel_as_module_names():
    guest = loaded(shipping.map_reduce_script(make_closure(7), reducer))
    assert run(guest, [], b"x\n", phase="map") == b'"x"\t7\n'


def counting_mapper(line):
    increment_counter("lines", "seen")
    yield line, 1


def test_the_sdks_counter_travels_as_the_guests_import(monkeypatch):
    script = shipping.map_reduce_script(counting_mapper, reducer)
    assert "from zerocompute_guest import increment_counter" in script
    monkeypatch.setitem(sys.modules, "zerocompute_guest", sdk)  # as in the guest
    sdk._counters.clear()
    run(loaded(script), [], b"a\nb\n", phase="map")
    err = io.StringIO()
    sdk.write_counters(err)
    assert err.getvalue() == "reporter:counter:lines,seen,2\n"
