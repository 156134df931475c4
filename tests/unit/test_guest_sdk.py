"""The Python guest SDK, on the host's CPython (it is plain Python)."""

import io
import json
import runpy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerocompute.dev.demo import count_words
from zerocompute.guests import source_path
from zerocompute.sandbox import zerocompute_guest as sdk

TEXT = "The cat and the hat.\nA CAT, a hat; the end\n"

# Every JSON value: what a map or reduce function may emit.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
# Strings that look like something else are the hard case of a text protocol.
TRICKY = st.sampled_from(["12", "02134", "-7", "1e5", "true", "null", "[1]", '{"a":1}', '"q"',
                          "", " ", "\\", "a\tb", "a\nb", "\0", "é", "\u2028", "NaN"])


def wordcount():
    return runpy.run_path(source_path("wordcount.py"))


def drive(namespace, args, stdin, form=sdk.TextRecords):
    out = io.BytesIO()
    data = stdin if isinstance(stdin, bytes) else stdin.encode()
    assert sdk.drive(namespace, args, io.BytesIO(data), out, form) == 0
    return out.getvalue().decode() if form is sdk.TextRecords else out.getvalue()


def framed(pairs):
    out = io.BytesIO()
    for key, value in pairs:
        sdk.FramedRecords.write(out, key, value)
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


def test_values_are_json_so_strings_stay_strings():
    ns = {"map": lambda r: [(r, {"n": 1}), (r, "text"), (r, "12"), (r, 12)],
          "reduce": lambda k, vs: vs}
    assert drive(ns, ["map"], "k\n") == 'k\t{"n":1}\nk\t"text"\nk\t"12"\nk\t12\n'
    assert drive(ns, ["run"], "k\n") == 'k\t[{"n":1},"text","12",12]\n'


def test_hooks_and_combiner():
    calls = []
    ns = {"map_init": lambda: calls.append("map_init"),
          "map": lambda r: [(r, 1)],
          "map_final": lambda: [("total", 99)],
          "reduce_init": lambda: calls.append("reduce_init"),
          "reduce": lambda k, vs: sum(vs),
          "combine": lambda k, vs: -sum(vs),
          "reduce_final": lambda: [("zz", "end")]}
    assert drive(ns, ["map"], "a\nb\n") == "a\t1\nb\t1\ntotal\t99\n"
    assert drive(ns, ["combine"], "a\t1\na\t2\n") == 'a\t-3\nzz\t"end"\n'
    assert drive(ns, ["reduce"], "a\t1\na\t2\n") == 'a\t3\nzz\t"end"\n'
    assert calls == ["map_init", "reduce_init", "reduce_init"]


def test_framed_records_carry_any_key():
    keys = ["a\tb", "line\nbreak", "nul\0byte", "é"]
    ns = {"map": lambda r: [(k, r) for k in keys], "reduce": lambda k, vs: len(vs)}
    out = drive(ns, ["map"], "x\ny\n", sdk.FramedRecords)
    pairs = list(sdk.FramedRecords.read(io.BytesIO(out)))
    assert pairs == [(k, r) for r in "xy" for k in keys]
    again = drive(ns, ["reduce"], framed(sorted(pairs)), sdk.FramedRecords)
    assert list(sdk.FramedRecords.read(io.BytesIO(again))) == [(k, 2) for k in sorted(keys)]


def test_truncated_framed_input_is_an_error():
    data = framed([("k", "v")])
    for cut in (2, 5, len(data) - 1):
        with pytest.raises(ValueError, match="truncated"):
            list(sdk.FramedRecords.read(io.BytesIO(data[:cut])))


def test_record_form_comes_from_the_environment(monkeypatch):
    assert sdk.record_form() is sdk.TextRecords
    monkeypatch.setenv("ZEROCOMPUTE_RECORDS", "framed")
    assert sdk.record_form() is sdk.FramedRecords
    monkeypatch.setenv("ZEROCOMPUTE_RECORDS", "xml")
    with pytest.raises(SystemExit, match="unknown record form"):
        sdk.record_form()


def test_bad_keys_and_missing_functions():
    with pytest.raises(ValueError, match="tab"):
        drive({"map": lambda r: [("a\tb", 1)]}, ["map"], "x\n")
    with pytest.raises(SystemExit, match="needs a reduce"):
        drive({"map": lambda r: []}, ["run"], "x\n")
    with pytest.raises(ValueError, match="key<TAB>value"):
        drive({"reduce": lambda k, v: 0}, ["reduce"], "no tab here\n")


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES | TRICKY)
def test_value_round_trip(value):
    text = sdk.format_value(value)
    assert "\n" not in text and "\t" not in text, "a value must fit on its line"
    back = sdk.parse_value(text)
    assert back == value and type(back) is type(value)
    assert json.loads(text) == value, "the text form of a value is plain JSON"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text().filter(lambda k: "\t" not in k and "\n" not in k),
                          JSON_VALUES | TRICKY), max_size=8))
def test_text_records_round_trip(pairs):
    out = io.BytesIO()
    for key, value in pairs:
        sdk.TextRecords.write(out, key, value)
    assert list(sdk.TextRecords.read(io.BytesIO(out.getvalue()))) == [
        (k, v) for k, v in pairs]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text() | TRICKY, JSON_VALUES | TRICKY), max_size=8))
def test_framed_records_round_trip(pairs):
    assert list(sdk.FramedRecords.read(io.BytesIO(framed(pairs)))) == pairs


def test_named_records_name_their_output():
    ns = {"map": lambda r: [("day", r[:10], 1), ("year", r[:4], 1)]}
    assert drive(ns, ["map"], "2026-11-23 x\n") == "day\t2026-11-23\t1\nyear\t2026\t1\n"
    out = drive(ns, ["map"], "2026-11-23 x\n", sdk.FramedRecords)
    outer = list(sdk.FramedRecords.read(io.BytesIO(out)))
    assert [name for name, _ in outer] == ["day", "year"]
    with pytest.raises(ValueError, match="tab"):
        drive({"map": lambda r: [("a\tb", "k", 1)]}, ["map"], "x\n")
