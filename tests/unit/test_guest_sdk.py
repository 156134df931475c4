"""The Python guest SDK, on the host's CPython (it is plain Python)."""

import collections
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


def lines_one_by_one(data: bytes) -> list[str]:
    """What records() meant when it read a line at a time."""
    out = []
    for line in io.BytesIO(data):
        text = line.decode("utf-8", "surrogateescape")
        out.append(text[:-1] if text.endswith("\n") else text)
    return out


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"\n", b"\r\n", b"a", b"word ", b"\xc3\xa9", b"\xff", b"\xe2\x82",
                                 b"\x00", b"\xe2\x82\xac", b"\x0b", b""]), max_size=40),
       st.integers(1, 9))
def test_records_are_the_lines_however_the_blocks_cut_them(pieces, block):
    data = b"".join(pieces)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sdk, "BLOCK", block)
        assert list(sdk.records(io.BytesIO(data))) == lines_one_by_one(data)


def test_a_line_longer_than_many_blocks_is_one_record(monkeypatch):
    monkeypatch.setattr(sdk, "BLOCK", 16)
    data = b"x" * 10_000 + b"\n" + b"y" * 999
    assert list(sdk.records(io.BytesIO(data))) == ["x" * 10_000, "y" * 999]


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


# -- the task's phase, and combining in the map's memory ---------------------------------
def test_each_phase_runs_its_mode_without_args():
    text = TEXT
    mapped = drive_phase(wordcount(), [], text, "map")
    assert mapped.splitlines()[:3] == ["the\t1", "cat\t1", "and\t1"], "map, not map+reduce"
    grouped = "".join(sorted(mapped.splitlines(True)))
    assert drive_phase(wordcount(), [], grouped, "reduce") == drive(wordcount(), ["run"], text)
    assert drive_phase(wordcount(), [], grouped, "combine") == drive(wordcount(), ["run"], text)
    assert drive_phase(wordcount(), [], text, "map-only") == drive(wordcount(), ["run"], text)


@pytest.mark.parametrize("phase, mode", [("map", "run"), ("map", "reduce"), ("map", "combine"),
                                         ("reduce", "map"), ("reduce", "combine"),
                                         ("combine", "run"), ("combine", "map")])
def test_a_mode_contradicting_the_phase_is_an_error_naming_both(phase, mode):
    with pytest.raises(SystemExit) as stopped:
        drive_phase(wordcount(), [mode], TEXT, phase)
    assert f"mode {mode!r}" in str(stopped.value) and f"phase {phase!r}" in str(stopped.value)


def test_in_mapper_combining_folds_each_key_once():
    calls = []

    def combine(key, values):
        calls.append(len(values))
        return sum(values)
    ns = {"map": lambda r: [(w, 1) for w in r.split()], "reduce": lambda k, vs: sum(vs),
          "combine": combine}
    text = "a b a\nb a c\n" * 50
    out = drive_phase(ns, [], text, "map", combiner="")
    assert sorted(out.splitlines()) == ["a\t150", "b\t100", "c\t50"]
    assert calls == [150, 100, 50], "one fold per key, at the end"
    assert drive_phase(ns, [], text, "map", combiner="bogus").count("\n") == 300, \
        "a combiner running another mode of the script: no folding in the map"


def test_in_mapper_combining_writes_out_when_the_buffer_fills():
    ns = {"map": lambda r: [(r, 1), ("common", 1)], "reduce": lambda k, vs: sum(vs)}
    lines = "".join(f"key{i}\n" for i in range(5000))
    out = drive_phase(ns, [], lines, "map", combiner="reduce", budget=20_000)
    totals = collections.Counter()
    for line in out.splitlines():
        key, value = line.split("\t")
        totals[key] += int(value)
    assert totals == {**{f"key{i}": 1 for i in range(5000)}, "common": 5000}
    assert 5001 < len(out.splitlines()) < 5100, "common written once per flush"


def test_in_mapper_combining_keeps_named_outputs_apart():
    ns = {"map": lambda r: [("day", r, 1), ("year", r[:4], 1)], "reduce": lambda k, vs: sum(vs)}
    out = drive_phase(ns, [], "2026-01\n2026-01\n2026-02\n", "map", combiner="reduce")
    assert sorted(out.splitlines()) == ["day\t2026-01\t2", "day\t2026-02\t1", "year\t2026\t3"]


def test_floats_travel_without_json():
    assert sdk.format_value(1.5) == "1.5" and sdk.parse_value("1.5") == 1.5
    assert sdk.parse_value("-2e-07") == -2e-07 and sdk.parse_value("12") == 12


def drive_phase(namespace, args, stdin, phase, combiner=None, budget=64 << 20):
    out = io.BytesIO()
    assert sdk.drive(namespace, args, io.BytesIO(stdin.encode()), out, sdk.TextRecords,
                     phase=phase, combiner=combiner, budget=budget) == 0
    return out.getvalue().decode()


def test_in_mapper_combining_merges_keys_of_the_same_text():
    ns = {"map": lambda r: [(1, 1), ("1", 1)], "reduce": lambda k, vs: sum(vs)}
    assert drive_phase(ns, [], "x\ny\n", "map", combiner="reduce") == "1\t4\n"
    mixed = {"map": lambda r: [("k", 1), ("out", "k", 1)], "reduce": lambda k, vs: sum(vs)}
    with pytest.raises(SystemExit, match="not both"):
        drive_phase(mixed, [], "x\n", "map", combiner="reduce")
    # A ValueError of the script's own is not taken for a mix of pairs and triples.

    def bad_number(record):
        yield record, int(record)
    with pytest.raises(ValueError, match="invalid literal for int"):
        drive_phase({"map": bad_number, "reduce": lambda k, vs: sum(vs)}, [], "1\nx\n", "map",
                    combiner="reduce")
