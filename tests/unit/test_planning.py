import pytest

from zerocompute.manifest import Limits, Manifest, ManifestError, MapStage, SwiftPath
from zerocompute.planning import (
    InputObject,
    listing_prefix,
    match_listing,
    match_name,
    output_for,
    plan_map_tasks,
)


def path(obj, container="c"):
    return SwiftPath("AUTH_t", container, obj)


def manifest(inputs, output):
    return Manifest(name="j", map=MapStage(exec=path("x.wasm", "apps"), inputs=tuple(inputs)),
                    output=output, limits=Limits(), scheduler="random")


def test_match_name():
    p = path("logs/2024-*.txt")
    assert match_name(p, "logs/2024-01.txt") == "01"
    assert match_name(p, "logs/2024-.txt") == ""
    assert match_name(p, "logs/2023-01.txt") is None
    assert match_name(p, "logs/2024-01.txt.gz") is None
    # head and tail must not overlap: "ab*ba" does not match "aba"
    assert match_name(path("ab*ba"), "aba") is None
    assert match_name(path("exact.txt"), "exact.txt") == "exact.txt"
    assert match_name(path("exact.txt"), "exact.txt2") is None


def test_listing_prefix():
    assert listing_prefix(path("logs/2024-*.txt")) == "logs/2024-"
    assert listing_prefix(path("*")) == ""


def test_match_listing_and_output_naming():
    found = match_listing(path("in/*.txt"), [("in/a.txt", 3), ("in/b.csv", 4), ("in/c.txt", 5)])
    assert [(f.path.obj, f.size, f.matched) for f in found] == [("in/a.txt", 3, "a"),
                                                                ("in/c.txt", 5, "c")]
    assert output_for(path("out/*.count", "o"), found[0]) == path("out/a.count", "o")


def test_plan_one_task_per_object_and_dedup():
    a = InputObject(path("a.txt"), 1, "a")
    b = InputObject(path("b.txt"), 1, "b")
    m = manifest([path("*.txt"), path("a*")], path("*.out", "o"))
    tasks = plan_map_tasks(m, [[a, b], [InputObject(path("a.txt"), 1, ".txt")]])
    assert [(t.task_id, t.input.path.obj, t.output.obj) for t in tasks] == [
        ("m00000", "a.txt", "a.out"), ("m00001", "b.txt", "b.out")]


def test_plan_refuses_empty_pattern():
    m = manifest([path("*.txt"), path("*.csv")], path("*.out", "o"))
    with pytest.raises(ManifestError) as err:
        plan_map_tasks(m, [[InputObject(path("a.txt"), 1, "a")], []])
    assert err.value.field == "map.inputs[1]" and "no object matches" in err.value.error


def test_plan_refuses_overwriting_an_input():
    m = manifest([path("*")], path("*"))
    with pytest.raises(ManifestError) as err:
        plan_map_tasks(m, [[InputObject(path("a"), 1, "a")]])
    assert "overwrite an input" in err.value.error and err.value.field == "output"


def test_plan_refuses_two_tasks_writing_one_object():
    m = manifest([path("x/*"), path("y/*")], path("*", "o"))
    with pytest.raises(ManifestError) as err:
        plan_map_tasks(m, [[InputObject(path("x/a"), 1, "a")], [InputObject(path("y/a"), 1, "a")]])
    assert "would both write" in err.value.error


def test_gathering_plan_keeps_input_order_and_refuses_overwriting_an_input():
    m = manifest([path("b/*"), path("a/*")], path("all.txt", "o"))
    tasks = plan_map_tasks(m, [[InputObject(path("b/2"), 1, "2"), InputObject(path("b/1"), 1, "1")],
                              [InputObject(path("a/1"), 1, "1")]])
    assert [t.input.path.obj for t in tasks] == ["b/2", "b/1", "a/1"]
    assert all(t.output is None for t in tasks)
    clobber = manifest([path("*")], path("x"))
    with pytest.raises(ManifestError) as err:
        plan_map_tasks(clobber, [[InputObject(path("x"), 1, "x")]])
    assert "overwrite an input" in err.value.error


def test_inputs_larger_than_the_split_size_become_several_tasks():
    m = Manifest(name="j", map=MapStage(exec=path("x.wasm", "apps"), inputs=(path("*"),),
                                        split_size=10),
                 output=path("all", "o"), limits=Limits(), scheduler="random")
    tasks = plan_map_tasks(m, [[InputObject(path("big"), 25, "big"),
                                InputObject(path("small"), 10, "small")]])
    assert [(t.task_id, t.input.path.obj, t.split) for t in tasks] == [
        ("m00000", "big", (0, 10)), ("m00001", "big", (10, 20)), ("m00002", "big", (20, 25)),
        ("m00003", "small", None)]


# -- large objects: segments and their edges ---------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zerocompute.planning import EDGE_BYTES, Segment, segment_edges  # noqa: E402


def edges_of(data: bytes, cuts: list[int]) -> tuple[Segment, ...]:
    bounds = [0, *cuts, len(data)]
    parts = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    paths = [SwiftPath("AUTH_a", "segs", f"{i:03d}") for i in range(len(parts))]
    return segment_edges(paths, [len(p) for p in parts], [p[-1:] for p in parts],
                         [p[:EDGE_BYTES] for p in parts], "swift://AUTH_a/c/big"), parts


def read_by_tasks(segments, parts) -> list[bytes]:
    """What each segment's task reads (``sandbox.executor.segment_input``)."""
    return [part[s.skip:] + s.carry for s, part in zip(segments, parts, strict=True)]


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
                      min_size=1, max_size=40),
       cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=8),
       final_newline=st.booleans())
def test_every_line_of_a_large_object_is_read_once_whatever_the_segments(
        lines, cuts, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    cuts = sorted({c for c in cuts if 0 < c < len(data)})
    try:
        segments, parts = edges_of(data, cuts)
    except ManifestError:
        # Only when a segment after the first holds no newline at all.
        assert any(b"\n" not in part for part in edges_of_parts(data, cuts)[1:])
        return
    read = read_by_tasks(segments, parts)
    assert b"".join(read) == data
    # Each task reads whole lines: each but the last ends with one.
    for chunk in read[:-1]:
        assert chunk == b"" or chunk.endswith(b"\n")


def edges_of_parts(data, cuts):
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def test_segment_edges_of_a_simple_object():
    segments, parts = edges_of(b"one\ntwo\nthree\n", [5, 8])  # "one\nt", "wo\n", "three\n"
    assert [(s.skip, s.carry) for s in segments] == [(0, b"wo\n"), (3, b""), (0, b"")]
    assert read_by_tasks(segments, parts) == [b"one\ntwo\n", b"", b"three\n"]


def test_a_line_longer_than_the_edge_crossing_a_boundary_is_refused():
    data = b"x" * 10 + b"y" * (EDGE_BYTES + 10) + b"\n"
    with pytest.raises(ManifestError, match="crosses a segment boundary"):
        edges_of(data, [10 + 5])


def test_a_map_only_job_with_one_output_per_input_refuses_a_large_object():
    big_manifest = manifest([path("*")], path("*.o", "out"))
    big = InputObject(path("big"), 20, "big",
                      (Segment(SwiftPath("AUTH_a", "s", "0"), 10),
                       Segment(SwiftPath("AUTH_a", "s", "1"), 10)))
    with pytest.raises(ManifestError, match="large object of 2 segments") as err:
        plan_map_tasks(big_manifest, [[big]])
    assert err.value.field == "output"
    gathered = manifest([path("*")], path("all.txt", "out"))
    tasks = plan_map_tasks(gathered, [[big]])
    assert [t.input.path.obj for t in tasks] == ["0", "1"]
    assert [t.segment for t in tasks] == list(big.segments)
