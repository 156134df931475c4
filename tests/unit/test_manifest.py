import json

import pytest

from zerocompute.manifest import Limits, ManifestError, SwiftPath, parse_manifest

MAXIMUM = Limits.from_conf({})


def parse(doc, account="AUTH_test"):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_manifest(body, account, MAXIMUM)


def good(**overrides):
    doc = {"name": "wc",
           "map": {"exec": "swift://~/apps/wc.wasm", "args": ["count"], "env": {"LC_ALL": "C"},
                   "inputs": ["swift://~/corpus/*.txt"]},
           "output": "swift://~/out/*.counts"}
    doc.update(overrides)
    return doc


def error_of(doc):
    with pytest.raises(ManifestError) as info:
        parse(doc)
    return info.value


def test_valid_manifest_resolves_own_account():
    m = parse(good())
    assert m.map.exec == SwiftPath("AUTH_test", "apps", "wc.wasm")
    assert m.map.inputs == (SwiftPath("AUTH_test", "corpus", "*.txt"),)
    assert m.output == SwiftPath("AUTH_test", "out", "*.counts")
    assert m.map.args == ("count",)
    assert m.map.env == (("LC_ALL", "C"),)
    assert m.scheduler == "load-aware"
    assert m.limits == MAXIMUM


def test_explicit_account_is_kept():
    m = parse(good(output="swift://AUTH_other/out/*"))
    assert m.output.account == "AUTH_other"


def test_not_json():
    err = error_of(b"{not json")
    assert "not valid JSON" in err.error and err.status == 400 and err.field is None


def test_not_an_object():
    assert "JSON object" in error_of([1, 2]).error


@pytest.mark.parametrize("doc, field", [
    ({"output": "swift://~/o/*"}, "map"),
    (good(map={"inputs": ["swift://~/c/*"]}), "map.exec"),
    (good(map={"exec": "swift://~/a/x.wasm"}), "map.inputs"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": []}), "map.inputs"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["/c/o"]}), "map.inputs[0]"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c*/o"]}), "map.inputs[0]"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*a*"]}), "map.inputs[0]"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c"]}), "map.inputs[0]"),
    (good(map={"exec": "swift://~/a/x.exe", "inputs": ["swift://~/c/*"]}), "map.exec"),
    (good(map={"exec": "swift://~/a/*.wasm", "inputs": ["swift://~/c/*"]}), "map.exec"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"], "args": "a"}),
     "map.args"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"], "args": [1]}),
     "map.args[0]"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"],
               "env": {"1BAD": "x"}}), "map.env"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"], "env": {"A": 1}}),
     "map.env.A"),
    (good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"], "bogus": 1}), "map"),
    (good(output=None), "output"),
    (good(output="swift://~/out*/x"), "output"),
    (good(limits={"time_s": -1}), "limits.time_s"),
    (good(limits={"memory_mb": 1.5}), "limits.memory_mb"),
    (good(limits={"cpu": 1}), "limits"),
    (good(scheduler="fastest"), "scheduler"),
    (good(name=""), "name"),
    (good(backup_tasks="no"), "backup_tasks"),
    (good(combine={"exec": "swift://~/a/x.wasm"}, output="swift://~/o/"), "combine"),
    (good(combine={"exec": "swift://~/a/x.wasm", "partitions": 2},
          reduce={"exec": "swift://~/a/x.wasm"}, output="swift://~/o/"), "combine"),
    (good(reduce={"exec": "swift://~/a/x.wasm"}, output="swift://~/out/all.txt"), "output"),
    (good(reduce={"exec": "swift://~/a/x.wasm"}), "output"),  # "*.counts" is no prefix
    (good(reduce={"exec": "swift://~/a/x.wasm", "partitions": 0}, output="swift://~/o/"),
     "reduce.partitions"),
    (good(reduce={"exec": "swift://~/a/x.exe"}, output="swift://~/o/"), "reduce.exec"),
    (good(reduce={"args": []}, output="swift://~/o/"), "reduce.exec"),
])
def test_errors_name_the_field(doc, field):
    err = error_of(doc)
    assert err.field == field, err.error
    assert err.status == 400
    assert err.to_dict()["field"] == field and err.to_dict()["error"]


def test_unknown_top_level_key():
    assert "unknown key(s) mapp" in error_of(dict(good(), mapp={})).error


def test_limits_may_lower_but_never_raise():
    m = parse(good(limits={"time_s": 5, "memory_mb": 4096, "stderr_tail_kb": 1}))
    assert m.limits.time_s == 5 and m.limits.memory_mb == 512 and m.limits.stderr_tail_kb == 1
    assert m.limits.output_mb == MAXIMUM.output_mb and m.limits.cpu_s == MAXIMUM.cpu_s


def test_operator_maxima_from_config():
    limits = Limits.from_conf({"max_time_s": "5", "max_memory_mb": "64"})
    assert limits.time_s == 5.0 and limits.memory_mb == 64 and limits.instances == 10


def test_python_scripts_are_executables():
    from zerocompute.manifest import runtime_of
    m = parse(good(map={"exec": "swift://~/apps/wc.py", "inputs": ["swift://~/c/*"]}))
    assert runtime_of(m.map.exec) == "python"
    assert runtime_of(parse(good()).map.exec) == "wasm"


def test_single_literal_input_needs_no_wildcard_in_output():
    m = parse(good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/one.txt"]},
                   output="swift://~/out/one.result"))
    assert m.output.obj == "one.result" and m.gathers


def test_plain_output_name_gathers_many_inputs():
    m = parse(good(output="swift://~/out/all-counts.txt"))
    assert m.gathers and m.output.obj == "all-counts.txt"
    assert not parse(good()).gathers


def test_output_directory_means_one_output_per_input():
    assert parse(good(output="swift://~/out/")).output.obj == "*"
    assert parse(good(output="swift://~/out/run1/")).output.obj == "run1/*"
    assert parse(good(output="swift://~/out")).output.obj == "*"


def test_a_string_input_is_a_list_of_one():
    doc = good()
    doc["map"]["inputs"] = "swift://~/corpus/*.txt"
    assert len(parse(doc).map.inputs) == 1


def test_backup_tasks_may_be_turned_off():
    assert parse(good()).backup_tasks is True
    assert parse(good(backup_tasks=False)).backup_tasks is False


def test_record_form_is_text_unless_framed_is_asked_for():
    assert parse(good()).records == "text"
    assert parse(good(records="framed")).records == "framed"
    with pytest.raises(ManifestError) as err:
        parse(good(records="csv"))
    assert err.value.field == "records" and "text, framed" in err.value.error


def test_reduce_stage_and_its_part_objects():
    m = parse(good(reduce={"exec": "swift://~/a/r.wasm", "args": ["reduce"], "partitions": 3},
                   output="swift://~/results/wc/"))
    assert m.reduce.exec == SwiftPath("AUTH_test", "a", "r.wasm")
    assert m.reduce.args == ("reduce",) and m.reduce.partitions == 3
    assert [m.part(n).obj for n in range(3)] == ["wc/part-00000", "wc/part-00001",
                                                  "wc/part-00002"]


def test_split_size_needs_one_output_for_many_splits():
    with pytest.raises(ManifestError) as err:
        parse(good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"],
                        "split_size": 1024}))
    assert err.value.field == "map.split_size"
    m = parse(good(map={"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"],
                        "split_size": 1024}, output="swift://~/o/all.txt"))
    assert m.map.split_size == 1024


def test_steps_read_the_step_before_unless_told_otherwise():
    m = parse(json.dumps({"name": "chain", "steps": [
        {"map": {"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"]},
         "reduce": {"exec": "swift://~/a/x.wasm", "partitions": 2},
         "output": "swift://~/tmp/wc/"},
        {"map": {"exec": "swift://~/a/y.wasm"}, "output": "swift://~/final/all.txt"},
        {"map": {"exec": "swift://~/a/y.wasm"}, "output": "swift://~/final2/all.txt"},
    ]}).encode())
    first, second, third = m.steps
    assert m.map == first.map and first.name == "chain" == third.name
    assert second.map.inputs == (SwiftPath("AUTH_test", "tmp", "wc/part-*"),)
    assert third.map.inputs == (SwiftPath("AUTH_test", "final", "all.txt"),)


@pytest.mark.parametrize("doc, field", [
    ({"steps": []}, "steps"),
    ({"steps": [{"map": {"exec": "swift://~/a/x.wasm"}, "output": "swift://~/o/"}]},
     "steps[0].map.inputs"),
    ({"map": {"exec": "swift://~/a/x.wasm"}, "steps": [{}]}, "steps"),
    ({"steps": [{"map": {"exec": "swift://~/a/x.wasm", "inputs": ["swift://~/c/*"]},
                 "reduce": {"exec": "swift://~/a/x.wasm"},
                 "outputs": {"a": "swift://~/o/a/"}},
                {"map": {"exec": "swift://~/a/x.wasm"}, "output": "swift://~/p/"}]},
     "steps[1].map.inputs"),
    ({"steps": [{"bogus": 1}]}, "steps[0]"),
])
def test_bad_steps_name_the_step(doc, field):
    err = error_of(doc)
    assert err.field == field, err.error


def test_fuzzed_manifests_fail_only_with_a_manifest_error():
    from tests.fuzz_manifests import manifest_bodies
    parsed = 0
    for body in manifest_bodies(2000, seed=11):
        try:
            parse(body)
            parsed += 1
        except ManifestError as err:
            assert err.status in (400, 413) and err.to_dict()["error"]
    assert parsed < 400, "most fuzzed manifests are malformed"


def test_large_objects_are_read_by_segment_unless_asked_whole():
    assert parse(good()).map.large_objects == "segments"
    doc = good()
    doc["map"]["large_objects"] = "whole"
    assert parse(doc).map.large_objects == "whole"
    for bad in ("all", 1, None, ["whole"]):
        doc["map"]["large_objects"] = bad
        with pytest.raises(ManifestError) as err:
            parse(doc)
        assert err.value.field == "map.large_objects"


def test_a_reduce_partitions_by_hash_unless_it_asks_for_a_total_order():
    reduce = {"exec": "swift://~/apps/wc.wasm", "partitions": 4}
    assert parse(good(reduce=reduce, output="swift://~/out/")).reduce.partitioner == "hash"
    ranged = parse(good(reduce={**reduce, "partitioner": "range"}, output="swift://~/out/"))
    assert ranged.reduce.partitioner == "range"
    err = error_of(good(reduce={**reduce, "partitioner": "sorted"}, output="swift://~/out/"))
    assert err.field == "reduce.partitioner" and "hash, range" in str(err)


@pytest.mark.parametrize("doc, field", [
    ({"reduce": {"exec": "swift://~/a/r.wasm", "partitioner": "range"},
      "outputs": {"day": "swift://~/d/"}}, "reduce.partitioner"),
    ({"reduce": {"exec": "swift://~/a/r.wasm"},
      "outputs": {"day": {"output": "swift://~/d/",
                          "reduce": {"exec": "swift://~/a/r.wasm", "partitioner": "range"}}}},
     "outputs.day.reduce.partitioner"),
])
def test_a_total_order_is_for_one_output(doc, field):
    doc = {"map": {"exec": "swift://~/a/m.wasm", "inputs": ["swift://~/in/*"]}, **doc}
    err = error_of(doc)
    assert err.field == field and "one output" in str(err)
