"""The shuffle core (compiled to WebAssembly, run by real wasmtime) against the
pure-Python reference shuffle: the same partitions, record for record, for any
records, forms, partition counts and sort buffers."""

import collections
import io
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import reference_shuffle as ref
from zerocompute.sandbox import shuffle_io
from zerocompute.sandbox.shuffle_core import Core, CoreFailed
from zerocompute.sandbox.wasm import GuestLimits, WasmRuntime
from zerocompute.shuffle import FRAMED, TEXT, partition_of, range_partition_of
from zerocompute.wire import ShuffleSpec

ANY_BYTES = st.binary(max_size=20)
TEXT_KEYS = st.binary(max_size=14).filter(lambda b: b"\t" not in b and b"\n" not in b)
TEXT_VALUES = st.binary(max_size=12).filter(lambda b: b"\n" not in b)
# Few distinct keys, so equal keys (and keys equal in their first 8 bytes) are common.
SHARED_KEYS = st.sampled_from([b"", b"a", b"a\0", b"ab", b"abcdefgh", b"abcdefghi",
                               b"abcdefghij", b"abcdefgh\0", b"zz", b"\xff" * 9])
FRAMED_RECORDS = st.lists(st.tuples(st.one_of(ANY_BYTES, SHARED_KEYS), ANY_BYTES),
                          max_size=150)
TEXT_RECORDS = st.lists(st.tuples(st.one_of(TEXT_KEYS, SHARED_KEYS.filter(
    lambda k: b"\n" not in k and b"\t" not in k)), TEXT_VALUES), max_size=150)
FORMS_AND_RECORDS = st.sampled_from([FRAMED, TEXT]).flatmap(
    lambda form: st.tuples(st.just(form), FRAMED_RECORDS if form == FRAMED else TEXT_RECORDS))
BUDGETS = st.sampled_from([0, 64, 300, 2000, 1 << 20])


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    os.makedirs(os.path.join(cache, "scratch"))
    return cache, WasmRuntime(cache)


def internal_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """The core's internal form: LEB128 key length, LEB128 value length, key, value."""
    def varint(at):
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, at
    records, at = [], 0
    while at < len(data):
        klen, at = varint(at)
        vlen, at = varint(at)
        records.append((data[at:at + klen], data[at + klen:at + klen + vlen]))
        at += klen + vlen
    return records


def job_form(records, form) -> bytes:
    out = io.BytesIO()
    ref.write_records(out, records, form)
    return out.getvalue()


class MapSide:
    """One map task's shuffle in temporary directories."""

    def __init__(self, runtime, spec: ShuffleSpec, output: bytes):
        cache, self.runtime = runtime
        self.scratch, self.out = tempfile.mkdtemp(), tempfile.mkdtemp()
        self.core = Core(self.runtime, cache, spec, self.scratch, self.out,
                         GuestLimits(time_s=120))
        with open(os.path.join(self.scratch, shuffle_io.MAP_OUTPUT), "wb") as f:
            f.write(output)

    def parts(self, combine=None) -> list[list[tuple[bytes, bytes]]]:
        sizes, _, _ = shuffle_io.partition_output(self.core, combine)
        parts = []
        for number, size in enumerate(sizes):
            with open(os.path.join(self.out, f"part-{number:05d}"), "rb") as f:
                data = f.read()
            assert len(data) == size
            parts.append(internal_records(data))
        return parts

    def left_in_scratch(self) -> list[str]:
        return sorted(n for n in os.listdir(self.scratch)
                      if n not in ("layout", "splits", shuffle_io.MAP_OUTPUT))


def reference_parts(tmp_path_factory, records, partitions, form, memory, outputs=()):
    p = ref.Partitioner(str(tmp_path_factory.mktemp("ref")), partitions, form, memory)
    if outputs:
        ref.add_named(p, records, list(outputs), form)
    else:
        p.add_all(records)
    parts = []
    for path, _ in p.finish():
        with open(path, "rb") as f:
            parts.append(list(ref.read_records(f, form)))
    return parts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FORMS_AND_RECORDS, st.integers(1, 6), BUDGETS)
def test_partitions_equal_the_reference_shuffle(runtime, tmp_path_factory, form_records,
                                               partitions, budget):
    form, records = form_records
    spec = ShuffleSpec(id="t", partitions=partitions, records=form, memory_bytes=budget)
    side = MapSide(runtime, spec, job_form(records, form))
    assert side.parts() == reference_parts(tmp_path_factory, records, partitions, form,
                                           budget), "same records, same order, same places"
    assert side.left_in_scratch() == [], "runs removed"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([FRAMED, TEXT]), st.lists(st.tuples(
    st.sampled_from(["day", "month", "year"]), st.sampled_from([b"k1", b"k2", b"2026-11",
                                                               b"a" * 9, b""]),
    st.binary(max_size=6).filter(lambda b: b"\n" not in b)), max_size=80), BUDGETS)
def test_named_outputs_equal_the_reference_shuffle(runtime, tmp_path_factory, form, named,
                                                   budget):
    outputs = (("day", 3), ("month", 2), ("year", 1))
    records = [(name.encode(), job_form([(key, value)], form)[:-1] if form == TEXT
                else job_form([(key, value)], form)) for name, key, value in named]
    spec = ShuffleSpec(id="t", partitions=6, records=form, memory_bytes=budget,
                       outputs=outputs)
    side = MapSide(runtime, spec, job_form(records, form))
    assert side.parts() == reference_parts(tmp_path_factory, records, 6, form, budget,
                                           outputs)


def summing_combiner(form, calls):
    """A combiner as a guest would be, in Python for the test: sums each key's values."""
    def combine(stdin, stdout):
        calls.append(stdin)
        with open(stdin, "rb") as f:
            records = list(ref.read_records(f, form))
        keys = [k for k, _ in records]
        assert keys == sorted(keys), "a combiner reads sorted records"
        totals = collections.Counter()
        for key, value in records:
            totals[key] += int(value)
        with open(stdout, "wb") as f:
            # Backwards on purpose: the core sorts a combiner's output again.
            ref.write_records(f, [(k, str(n).encode()) for k, n in
                                  sorted(totals.items(), reverse=True)], form)
    return combine


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([FRAMED, TEXT]), st.lists(st.sampled_from(
    [b"the", b"cat", b"hat", b"a", b"containers", b"container", b"containerz"]), max_size=300),
       st.integers(1, 4), st.sampled_from([64, 600, 5000, 1 << 20]))
def test_a_combiner_on_every_spill_keeps_every_total(runtime, form, words, partitions, budget):
    spec = ShuffleSpec(id="t", partitions=partitions, records=form, memory_bytes=budget)
    side = MapSide(runtime, spec, job_form([(w, b"1") for w in words], form))
    calls = []
    parts = side.parts(summing_combiner(form, calls))
    seen = collections.Counter()
    for number, part in enumerate(parts):
        assert [k for k, _ in part] == sorted(k for k, _ in part)
        assert all(partition_of(k, partitions) == number for k, _ in part)
        for key, value in part:
            seen[key] += int(value)
    assert seen == collections.Counter(words)
    if len(words) > len(set(words)) * 2 and budget == 1 << 20:
        assert calls and sum(len(p) for p in parts) == len(set(words)), \
            "one spill with repeated keys is combined into one record per key"
    assert side.left_in_scratch() == []


def test_a_combiner_runs_at_the_merge_of_three_spills_or_more(runtime):
    words = [b"w%d" % (i % 7) for i in range(3000)]
    spec = ShuffleSpec(id="t", partitions=2, records=TEXT, memory_bytes=4096)
    side = MapSide(runtime, spec, job_form([(w, b"1") for w in words], TEXT))
    calls = []
    parts = side.parts(summing_combiner(TEXT, calls))
    assert any("merged" in c for c in calls), "once more as the runs merge"
    assert sum(len(p) for p in parts) == 7, "one record per key in the end"
    assert {k: int(v) for part in parts for k, v in part} == collections.Counter(words)


def test_the_combiners_spill_is_each_named_outputs_records(runtime):
    def named(name, key):
        return (name, key + b"\t1")
    records = [named(b"day", b"d%d" % (i % 5)) for i in range(200)]
    records += [named(b"year", b"2026")] * 100
    spec = ShuffleSpec(id="t", partitions=4, records=TEXT, memory_bytes=1 << 20,
                       outputs=(("day", 3), ("year", 1)))
    side = MapSide(runtime, spec, job_form(records, TEXT))
    calls = []
    parts = side.parts(summing_combiner(TEXT, calls))
    assert len(calls) == 2, "one combiner run per named output, not per partition"
    assert parts[3] == [(b"2026", b"100")]
    assert {k: v for part in parts[:3] for k, v in part} == {b"d%d" % i: b"40" for i in range(5)}
    assert all(partition_of(k, 3) == n for n, part in enumerate(parts[:3]) for k, _ in part)


@pytest.mark.parametrize("form, output, message", [
    (TEXT, b"a\t1\nno tab here\n", "map output is not text records: line 2 is not "
                                   "key<TAB>value: b'no tab here'"),
    (FRAMED, b"\0\0\0\x09abc", "map output is not framed records: truncated framed record"),
    (FRAMED, b"\0\0\0\x01a\0\0", "map output is not framed records: truncated framed record: "
                                 "a length is cut short"),
    (FRAMED, b"\xff\xff\xff\xffabc", "map output is not framed records: truncated"),
])
def test_malformed_map_output_is_a_clear_error(runtime, form, output, message):
    side = MapSide(runtime, ShuffleSpec(id="t", partitions=2, records=form), output)
    with pytest.raises(CoreFailed) as failed:
        side.parts()
    assert failed.value.data and str(failed.value).startswith(message), str(failed.value)


def test_a_record_naming_no_output_is_a_clear_error(runtime):
    spec = ShuffleSpec(id="t", partitions=2, outputs=(("day", 1), ("year", 1)))
    side = MapSide(runtime, spec, b"week\tk\t1\n")
    with pytest.raises(CoreFailed, match=r"a record names no output of this job: b'week' "
                                         r"\(outputs: day, year\)"):
        side.parts()


def test_a_combiner_whose_output_is_not_records_fails_the_map(runtime):
    spec = ShuffleSpec(id="t", partitions=1, records=TEXT)
    side = MapSide(runtime, spec, b"a\t1\n" * 100)

    def broken(stdin, stdout):
        with open(stdout, "wb") as f:
            f.write(b"no tab\n")
    with pytest.raises(shuffle_io.CombinerFailed,
                       match="the combiner's output is not text records: line 1"):
        side.parts(broken)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAMED_RECORDS, max_size=6), st.sampled_from([FRAMED, TEXT]))
def test_a_reducers_input_is_every_map_output_merged_in_order(runtime, runs, form):
    cache, rt = runtime
    if form == TEXT:
        runs = [[(k.replace(b"\t", b"").replace(b"\n", b""), v.replace(b"\n", b""))
                 for k, v in run] for run in runs]
    runs = [sorted(run, key=lambda r: r[0]) for run in runs]
    scratch = tempfile.mkdtemp()
    core = Core(rt, cache, ShuffleSpec(id="t", partitions=1, records=form), scratch, None,
                GuestLimits(time_s=60))
    names = []
    for number, run in enumerate(runs):
        with open(os.path.join(scratch, f"in-{number:05d}"), "wb") as f:
            f.write(core_run(run))
        names.append(core.path(f"in-{number:05d}"))
    core("reduce", core.path("input"), *names)
    with open(os.path.join(scratch, "input"), "rb") as f:
        merged = list(ref.read_records(f, form))
    assert merged == list(ref.merge_sorted(runs)), "sorted, complete, ties in map order"


def test_a_reducer_merges_more_maps_than_one_merge_takes(runtime):
    cache, rt = runtime
    scratch = tempfile.mkdtemp()
    core = Core(rt, cache, ShuffleSpec(id="t", partitions=1), scratch, None,
                GuestLimits(time_s=60))
    names, expected = [], []
    for number in range(150):  # more than the core's merge factor (64): merged in passes
        run = sorted((b"k%04d" % ((number * 37 + i * 11) % 997), b"%d" % number)
                     for i in range(20))
        expected.append(run)
        with open(os.path.join(scratch, f"in-{number:05d}"), "wb") as f:
            f.write(core_run(run))
        names.append(core.path(f"in-{number:05d}"))
    core("reduce", core.path("input"), *names)
    with open(os.path.join(scratch, "input"), "rb") as f:
        assert list(ref.read_records(f, TEXT)) == list(ref.merge_sorted(expected))


def test_a_damaged_map_output_fails_the_reduce(runtime):
    cache, rt = runtime
    scratch = tempfile.mkdtemp()
    core = Core(rt, cache, ShuffleSpec(id="t", partitions=1), scratch, None,
                GuestLimits(time_s=60))
    with open(os.path.join(scratch, "in-00000"), "wb") as f:
        f.write(_varint(5) + _varint(1) + b"ab")  # cut short
    with pytest.raises(CoreFailed, match="damaged"):
        core("reduce", core.path("input"), core.path("in-00000"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=10).filter(
    lambda b: b"\t" not in b and b"\n" not in b), max_size=120),
       st.lists(st.binary(max_size=10), max_size=5), BUDGETS)
def test_a_total_order_puts_each_key_in_its_range(runtime, keys, points, budget):
    points = sorted(set(points))
    spec = ShuffleSpec(id="t", partitions=len(points) + 1, records=TEXT, memory_bytes=budget,
                       splits=tuple(__import__("base64").b64encode(p).decode() for p in points))
    side = MapSide(runtime, spec, job_form([(k, b"v") for k in keys], TEXT))
    parts = side.parts()
    for number, part in enumerate(parts):
        assert all(range_partition_of(k, points) == number for k, _ in part)
        assert [k for k, _ in part] == sorted(k for k, _ in part)
    in_order = [k for part in parts for k, _ in part]
    assert in_order == sorted(keys), "the parts, read in order, are one sorted sequence"


def core_run(records) -> bytes:
    """``(key, value)`` records in the core's own run form: each one's key and value
    lengths as varints, then both."""
    return b"".join(_varint(len(k)) + _varint(len(v)) + k + v for k, v in records)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
