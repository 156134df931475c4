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
