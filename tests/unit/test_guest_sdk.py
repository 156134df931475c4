"""The Python guest SDK, on the host's CPython (it is plain Python)."""

import io
import runpy

import pytest

from zerocompute.dev.demo import count_words
from zerocompute.guests import source_path
from zerocompute.sandbox import zerocompute_guest as sdk

TEXT = "The cat and the hat.\nA CAT, a hat; the end\n"


def wordcount():
    return runpy.run_path(source_path("wordcount.py"))


def drive(namespace, args, stdin):
    out = io.StringIO()
    assert sdk.drive(namespace, args, io.StringIO(stdin), out) == 0
    return out.getvalue()


def test_run_mode_equals_the_c_guests_count():
    expected = "".join(f"{w}\t{n}\n" for w, n in sorted(count_words(TEXT.encode()).items()))
    assert drive(wordcount(), [], TEXT) == expected
    assert drive(wordcount(), ["run"], TEXT) == expected


def test_map_then_reduce_modes():
    mapped = drive(wordcount(), ["map"], TEXT)
    assert mapped.splitlines()[:3] == ["the\t1", "cat\t1", "and\t1"]
    combined = drive(wordcount(), ["reduce"], "".join(sorted(mapped.splitlines(True))))
    assert combined == drive(wordcount(), ["run"], TEXT)


def test_values_round_trip_as_json_and_strings():
    ns = {"map": lambda r: [(r, {"n": 1}), (r, "text")],
          "reduce": lambda k, vs: [v for v in vs if isinstance(v, dict)]}
    assert drive(ns, ["map"], "k\n") == 'k\t{"n":1}\nk\ttext\n'
    assert drive(ns, ["run"], "k\n") == 'k\t[{"n":1}]\n'


def test_bad_keys_and_missing_functions():
    with pytest.raises(ValueError, match="tab"):
        drive({"map": lambda r: [("a\tb", 1)]}, ["map"], "x\n")
    with pytest.raises(SystemExit, match="needs a reduce"):
        drive({"map": lambda r: []}, ["run"], "x\n")
    with pytest.raises(ValueError, match="key<TAB>value"):
        drive({"reduce": lambda k, v: 0}, ["reduce"], "no tab here\n")


@pytest.mark.parametrize("value", [0, -7, 2**70, 1.5, True, False, None, "text", "12 apples",
                                   [1, "a"], {"k": [None]}, "", "-"])
def test_value_round_trip(value):
    assert sdk.parse_value(sdk.format_value(value)) == value
