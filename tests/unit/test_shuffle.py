"""The shuffle's pure parts (zerocompute.shuffle), and the reference shuffle that the
shuffle core is held to (tests/reference_shuffle.py)."""

import collections
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference_shuffle import (
    BadRecords,
    Partitioner,
    add_named,
    group_by_key,
    merge_sorted,
    read_records,
    write_records,
)
from zerocompute.shuffle import (
    FRAMED,
    TEXT,
    framed_keys,
    line_aligned,
    partition_of,
    range_partition_of,
    split_points,
    split_ranges,
)

ANY_BYTES = st.binary(max_size=24)
TEXT_KEYS = st.binary(max_size=16).filter(lambda b: b"\t" not in b and b"\n" not in b)
TEXT_VALUES = st.binary(max_size=16).filter(lambda b: b"\n" not in b)
FRAMED_RECORDS = st.lists(st.tuples(ANY_BYTES, ANY_BYTES), max_size=120)
TEXT_RECORDS = st.lists(st.tuples(TEXT_KEYS, TEXT_VALUES), max_size=120)


def partition_files(directory, records, partitions, form, memory, combine=None):
    p = Partitioner(str(directory), partitions, form, memory_bytes=memory)
    p.add_all(records)
    spills = p.spills
    files = p.finish(combine)
    out = []
    for path, size in files:
        assert os.path.getsize(path) == size
        with open(path, "rb") as f:
            out.append(list(read_records(f, form)))
    return out, spills


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([FRAMED, TEXT]).flatmap(
    lambda form: st.tuples(st.just(form), FRAMED_RECORDS if form == FRAMED else TEXT_RECORDS)),
       st.integers(1, 5), st.sampled_from([0, 200, 2000, 1 << 20]))
def test_partitions_are_complete_sorted_and_by_crc32(tmp_path_factory, form_records,
                                                     partitions, memory):
    form, records = form_records
    parts, _ = partition_files(tmp_path_factory.mktemp("p"), records, partitions, form, memory)
    assert len(parts) == partitions
    for number, part in enumerate(parts):
        keys = [k for k, _ in part]
        assert keys == sorted(keys), "each partition is sorted by key"
        assert all(partition_of(k, partitions) == number for k in keys)
    assert collections.Counter(r for part in parts for r in part) == \
        collections.Counter(records), "nothing lost, nothing twice"


def test_a_small_memory_budget_spills_and_still_sorts(tmp_path):
    records = [(f"k{i % 97:03d}".encode(), str(i).encode()) for i in range(5000)]
    parts, spills = partition_files(tmp_path, records, 3, TEXT, memory=4096)
    assert spills > 10, "the budget forced spills to disk"
    merged = list(merge_sorted(parts))
    assert [k for k, _ in merged] == sorted(k for k, _ in records)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("run-")], "runs removed"


def test_combiner_output_is_stored_sorted(tmp_path):
    words = [w.encode() for w in "the cat the hat a cat the end".split()] * 50

    def summed(records):
        # Backwards on purpose: the partitioner sorts a combiner's output again.
        totals = [(k, str(sum(int(v) for v in vs)).encode()) for k, vs in group_by_key(records)]
        return reversed(totals)
    parts, _ = partition_files(tmp_path, [(w, b"1") for w in words], 2, TEXT, 512, summed)
    combined = dict(r for part in parts for r in part)
    assert combined == {w: str(n).encode() for w, n in collections.Counter(words).items()}
    for part in parts:
        assert [k for k, _ in part] == sorted(k for k, _ in part)


@settings(max_examples=100, deadline=None)
@given(st.lists(FRAMED_RECORDS, max_size=5))
def test_merge_of_sorted_runs_is_sorted_and_complete(runs):
    runs = [sorted(run, key=lambda r: r[0]) for run in runs]
    merged = list(merge_sorted(runs))
    assert [k for k, _ in merged] == sorted(k for run in runs for k, _ in run)
    assert collections.Counter(merged) == collections.Counter(r for run in runs for r in run)
    grouped = list(group_by_key(merged))
    assert [k for k, _ in grouped] == sorted({k for k, _ in merged})
    assert sum(len(vs) for _, vs in grouped) == len(merged)


@settings(max_examples=100, deadline=None)
@given(FRAMED_RECORDS)
def test_framed_records_round_trip(records):
    out = io.BytesIO()
    write_records(out, records, FRAMED)
    assert list(read_records(io.BytesIO(out.getvalue()), FRAMED)) == records


def test_malformed_records_are_refused():
    with pytest.raises(BadRecords, match="line 2"):
        list(read_records(io.BytesIO(b"a\t1\nno tab\n"), TEXT))
    with pytest.raises(BadRecords, match="truncated"):
        list(read_records(io.BytesIO(b"\0\0\0\x09abc"), FRAMED))
    with pytest.raises(BadRecords, match="cannot carry"):
        write_records(io.BytesIO(), [(b"a\tb", b"1")], TEXT)
    assert list(read_records(io.BytesIO(b"k\tv"), TEXT)) == [(b"k", b"v")], \
        "a last line without its newline is still a record"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=40), st.booleans(), st.integers(1, 64),
       st.integers(1, 7))
def test_splits_read_every_line_exactly_once(line_lengths, final_newline, split_size, chunk):
    data = b"".join(b"x" * n + b"\n" for n in line_lengths)
    if not final_newline and data:
        data = data[:-1]
    pieces = []
    for start, end in split_ranges(len(data), split_size):
        first, last = line_aligned(lambda at, n: data[at:at + n], len(data), start, end,
                                   chunk=chunk)
        assert first in (0, len(data)) or data[first - 1:first] == b"\n", \
            "a split starts at a line start"
        pieces.append(data[first:last])
    assert b"".join(pieces) == data, "together the splits are the input, nothing twice"


def test_split_ranges():
    assert split_ranges(0, 10) == [(0, 0)]
    assert split_ranges(10, 10) == [(0, 10)]
    assert split_ranges(25, 10) == [(0, 10), (10, 20), (20, 25)]


@pytest.mark.parametrize("form", [TEXT, FRAMED])
def test_named_records_go_to_their_outputs_partitions(tmp_path, form):
    def named(name, key, value):
        inner = io.BytesIO()
        write_records(inner, [(key, value)], form)
        return (name, inner.getvalue()[:-1]) if form == TEXT else (name, inner.getvalue())
    records = [named(b"day", f"2026-11-{d:02d}".encode(), b"1") for d in range(1, 29)]
    records += [named(b"year", b"2026", b"1")] * 5
    p = Partitioner(str(tmp_path), 3 + 1, form, memory_bytes=256)
    add_named(p, records, [("day", 3), ("year", 1)], form)
    parts = []
    for path, _ in p.finish():
        with open(path, "rb") as f:
            parts.append(list(read_records(f, form)))
    assert sum(len(part) for part in parts[:3]) == 28
    assert all(partition_of(k, 3) == n for n, part in enumerate(parts[:3]) for k, _ in part)
    assert parts[3] == [(b"2026", b"1")] * 5
    with pytest.raises(BadRecords, match="names no output"):
        add_named(p, [named(b"week", b"k", b"1")], [("day", 3)], form)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=6), max_size=300), st.integers(1, 12))
def test_split_points_cut_a_sample_into_ordered_ranges(sample, partitions):
    points = split_points(sample, partitions)
    assert len(points) <= partitions - 1
    assert points == sorted(set(points)) and set(points) <= set(sample)
    counts = collections.Counter(range_partition_of(k, points) for k in sample)
    assert not sample or set(counts) == set(range(len(points) + 1)), \
        "every range holds some of the sample"
    if len(set(sample)) >= 2 and partitions >= 2:
        assert points, "two keys or more: at least two ranges"


def test_split_points_balance_distinct_keys():
    sample = [b"%06d" % i for i in range(10000)]
    points = split_points(sample, 8)
    sizes = collections.Counter(range_partition_of(k, points) for k in sample)
    assert max(sizes.values()) <= 1.01 * len(sample) / 8
    assert range_partition_of(b"", points) == 0
    assert range_partition_of(points[0], points) == 1, "a split point begins its range"


def test_framed_keys():
    assert framed_keys(b"\0\0\0\2ab\0\0\0\0") == [b"ab", b""]
    with pytest.raises(ValueError):
        framed_keys(b"\0\0\0\5ab")
