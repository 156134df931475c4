"""zerocompute.h, the C guests' record helper, in real wasmtime: what it writes the
Python SDK reads, in both record forms, and back."""

import collections
import io
import os

import pytest

from zerocompute.guests import build_c_guest, source_path
from zerocompute.sandbox import zerocompute_guest as sdk
from zerocompute.sandbox.wasm import GuestLimits, WasmRuntime

RECORDS = os.path.join(os.path.dirname(__file__), "..", "guests", "records.c")
LINES = [b"plain", b"with space", b"\xc3\xa9t\xc3\xa9", b""]


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    runtime = WasmRuntime(str(tmp_path_factory.mktemp("cache")))
    module = runtime.prepare(build_c_guest(RECORDS))
    directory = tmp_path_factory.mktemp("io")

    def run(args, stdin: bytes, form: str, whole: bool = False):
        (directory / "in").write_bytes(stdin)
        result = runtime.run(module, str(directory / "in"), str(directory / "out"),
                             ["records", *args], [("ZEROCOMPUTE_RECORDS", form)], GuestLimits())
        assert result.error is None
        if whole:
            return result
        return result.exit, (directory / "out").read_bytes()
    return run


def test_a_c_guests_counters_are_summed_and_kept_out_of_its_stderr(guest):
    result = guest(["count"], b"one\ntwo\nthree\n", "text", whole=True)
    assert result.exit == 0
    assert result.counters == {"input": {"lines": 3, "bytes": 14}}
    assert result.stderr_tail == b"counting\ndone\n"


def test_framed_keys_hold_any_byte_and_python_reads_them(guest):
    code, out = guest(["emit"], b"".join(line + b"\n" for line in LINES), "framed")
    assert code == 0
    pairs = list(sdk.FramedRecords.read(io.BytesIO(out)))
    assert pairs == [(line.decode() + "\0\t\n", 1) for line in LINES]


def test_framed_records_written_by_python_come_back_unchanged(guest):
    data = io.BytesIO()
    for key, value in [("a\tb", "x\ny"), ("nul\0", [1, 2]), ("", None)]:
        sdk.FramedRecords.write(data, key, value)
    code, out = guest(["echo"], data.getvalue(), "framed")
    assert code == 0 and out == data.getvalue()


def test_text_form_refuses_keys_it_cannot_carry_and_echoes_the_rest(guest):
    code, _ = guest(["emit"], b"line\n", "text")
    assert code == 65
    text = b'word\t12\nother\t"s"\n'
    code, out = guest(["echo"], text, "text")
    assert code == 0 and out == text
    assert list(sdk.TextRecords.read(io.BytesIO(out))) == [("word", 12), ("other", "s")]


def test_malformed_input_is_an_error(guest):
    code, _ = guest(["echo"], b"\0\0\0\x05ab", "framed")
    assert code == 66
    code, _ = guest(["echo"], b"no tab\n", "text")
    assert code == 66


# -- zerocompute.h's map and reduce helpers, through the shipped word count -----------------
@pytest.fixture(scope="module")
def wordcount(tmp_path_factory):
    runtime = WasmRuntime(str(tmp_path_factory.mktemp("cache")))
    module = runtime.prepare(build_c_guest(source_path("wordcount.c")))
    directory = tmp_path_factory.mktemp("wc")

    def run(args, stdin: bytes, env=()):
        (directory / "in").write_bytes(stdin)
        result = runtime.run(module, str(directory / "in"), str(directory / "out"),
                             ["wordcount", *args], [("ZEROCOMPUTE_RECORDS", "text"), *env],
                             GuestLimits())
        assert result.error is None and result.exit == 0, result
        return (directory / "out").read_bytes()
    return run


def totals(output: bytes) -> collections.Counter:
    counts = collections.Counter()
    for line in output.decode().splitlines():
        word, count = line.split("\t")
        counts[word] += int(count)
    return counts


def test_the_c_map_folds_in_memory_only_when_the_combiner_is_its_reduce(wordcount):
    text = b"The cat, the hat.\n" * 1000
    plain = wordcount(["map"], text)
    assert plain.count(b"\n") == 4000 and totals(plain) == {"the": 2000, "cat": 1000,
                                                             "hat": 1000}
    folded = wordcount(["map"], text, [("ZEROCOMPUTE_COMBINER", "reduce")])
    assert sorted(folded.splitlines()) == [b"cat\t1000", b"hat\t1000", b"the\t2000"]
    other = wordcount(["map"], text, [("ZEROCOMPUTE_COMBINER", "bogus")])
    assert other == plain, "a combiner in another mode: nothing folded in the map"


def test_the_c_map_folds_long_keys_too(wordcount):
    long_words = [b"x" * 24, b"y" * 25, b"z" * 100]  # kept in the entry, and not
    text = b" ".join(long_words * 300) + b"\n"
    folded = wordcount(["map"], text, [("ZEROCOMPUTE_COMBINER", "reduce")])
    assert sorted(folded.splitlines()) == [w + b"\t300" for w in long_words]


def test_the_c_map_writes_out_what_it_keeps_when_the_buffer_fills(wordcount):
    text = b"".join(b"w%d common\n" % i for i in range(5000))
    out = wordcount(["map"], text, [("ZEROCOMPUTE_COMBINER", "reduce"),
                                    ("ZEROCOMPUTE_SORT_BUFFER", "65536")])
    assert totals(out) == {**{f"w{i}": 1 for i in range(5000)}, "common": 5000}
    assert 5001 < out.count(b"\n") < 10000, "some keys written more than once, not every one"


def test_the_c_reduce_sums_each_run_of_equal_keys(wordcount):
    records = b"".join(sorted(wordcount(["map"], b"b a b\nc b a\n" * 3).splitlines(True)))
    assert wordcount(["reduce"], records) == b"a\t6\nb\t9\nc\t3\n"
