"""Counters: the guest's stderr lines, the executor's filter, the job's sums."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerocompute import counters
from zerocompute.report import JobReport, TaskReport
from zerocompute.sandbox import zerocompute_guest as sdk
from zerocompute.sandbox.wasm import _Tail


def test_counter_lines_are_taken_out_of_stderr_and_summed_even_in_pieces():
    lines = (b"warming up\nreporter:counter:words,seen,5\nreporter:coun" +
             b"ter:words,seen,7\nreporter:counter:bad line\nreporter:counter:a,b,x\n" +
             b"reporter:counter:skips,empty,-1\nthe end")
    tail = _Tail(4096, 1 << 20)
    for start in range(0, len(lines), 9):  # written nine bytes at a time
        assert tail.write(lines[start:start + 9]) == len(lines[start:start + 9])
    assert tail.value() == (b"warming up\nreporter:counter:bad line\n"
                            b"reporter:counter:a,b,x\nthe end")
    assert tail.counters.counts == {"words": {"seen": 12}, "skips": {"empty": -1}}
    assert tail.written == len(lines), "counter lines count against the stderr limit"


def line_by_line(text: bytes) -> tuple[bytes, dict]:
    """The filter's meaning, one line at a time: a whole line that parses counts."""
    kept, counts = [], {}
    *ended, last = text.split(b"\n")  # lines end at a newline only, not at a \r
    for line in [*(line + b"\n" for line in ended), last]:
        counted = counters.parse(line[:-1]) if line.endswith(b"\n") else None
        if counted is None:
            kept.append(line)
        else:
            group, name, amount = counted
            counts.setdefault(group, {})[name] = counts.get(group, {}).get(name, 0) + amount
    return b"".join(kept), counts


PIECES = st.sampled_from([b"reporter:counter:g,n,3\n", b"noise\n", b"reporter:counter:bad\n",
                          b"x reporter:counter:g,n,1\n", b"rep", b"orter:counter:h,m,2\n", b"\n",
                          b"abc", b"reporter:counter:g,n,", b"5\n", b"z" * 1100 + b"\n",
                          b"\r", b"reporter:counter:g,n,2\r\n"])


@given(st.lists(PIECES, max_size=14), st.lists(st.integers(0, 4000), max_size=6))
def test_the_filter_finds_what_a_line_by_line_reading_does_however_stderr_is_cut(pieces, cuts):
    text = b"".join(pieces)
    cuts = sorted({c % (len(text) + 1) for c in cuts})
    writes = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    found = counters.CounterFilter()
    kept = b"".join(found.feed(w) for w in writes) + found.close()
    assert (kept, found.counts) == line_by_line(text)


def test_a_name_with_a_comma_is_refused_and_the_last_comma_splits_the_amount():
    with pytest.raises(ValueError, match="without commas"):
        counters.line("a,b", "c", 1)
    assert counters.parse(counters.line("g", "n", 3).rstrip("\n").encode()) == ("g", "n", 3)
    assert counters.parse(b"reporter:counter:g,n,") is None


def test_the_sdk_sums_in_memory_and_writes_each_counter_once():
    sdk.increment_counter("lines", "blank")
    sdk.increment_counter("lines", "blank", 2)
    sdk.increment_counter("words", "long", 10)
    err = io.StringIO()
    sdk.write_counters(err)
    assert err.getvalue() == ("reporter:counter:lines,blank,3\n"
                              "reporter:counter:words,long,10\n")
    with pytest.raises(ValueError):
        sdk.increment_counter("lines", "a\nb")
    sdk.write_counters(err)  # nothing more: they were written once
    assert err.getvalue().count("\n") == 2


def test_the_report_sums_the_tasks_counters():
    tasks = [TaskReport("map", "m0", "i", exit=0, counters={"w": {"a": 1, "b": 2}}),
             TaskReport("map", "m1", "i", exit=0, counters={"w": {"a": 4}, "v": {"z": 1}}),
             TaskReport("reduce", "r0", "p", exit=0)]
    assert JobReport("j", "load-aware", tasks).to_dict()["counters"] == {
        "v": {"z": 1}, "w": {"a": 5, "b": 2}}
