"""The MapReduce paper's examples on the dev cluster, in C and in Python guests, each
against a plain-Python reference on the same data, with three reduce partitions."""

import collections
import json
import random

import pytest

from tests.functional.helpers import make_text
from zerocompute.client import submit_job
from zerocompute.guests import build_c_guest, source_path

PARTITIONS = 3


def web_log(seed: int) -> bytes:
    rng = random.Random(seed)
    paths = [f"/shop/item-{i}" for i in range(40)] + ["/", "/about", "/cart"]
    return "".join(f"{rng.choice(['GET', 'POST'])} {rng.choice(paths)} "
                   f"{rng.choice([200, 200, 404])}\n" for _ in range(300)).encode()


def link_graph(seed: int) -> bytes:
    rng = random.Random(seed)
    pages = [f"page{i}" for i in range(30)]
    return "".join(f"page{seed}-{i} " + " ".join(rng.sample(pages, rng.randint(1, 5))) + "\n"
                   for i in range(20)).encode()


def words(text: str):
    word = ""
    for c in text + " ":
        if c.isascii() and c.isalnum():
            word += c.lower()
        elif word:
            yield word
            word = ""


def reference(algorithm: str, docs: dict[str, bytes], pattern: str) -> dict:
    lines = [(name, line) for name, data in docs.items() for line in data.decode().splitlines()]
    if algorithm == "grep":
        return dict(collections.Counter(line for _, line in lines if pattern in line))
    if algorithm == "url":
        return dict(collections.Counter(line.split(" ")[1] for _, line in lines))
    pairs = collections.defaultdict(set)
    for name, line in lines:
        if algorithm == "links":
            source, *targets = line.split(" ")
            for target in targets:
                pairs[target].add(source)
        else:
            for word in words(line):
                pairs[word].add(name)
    return {key: ",".join(sorted(values)) for key, values in pairs.items()}


DATA = {"grep": lambda i: make_text(40 + i, 300), "url": web_log, "links": link_graph,
        "index": lambda i: make_text(60 + i, 120)}
C_ARGS = {"grep": (["grep-map", "storage"], ["sum"]), "url": (["url-map"], ["sum"]),
          "links": (["links-map"], ["join"]), "index": (["index-map"], ["join"])}


@pytest.fixture(scope="module")
def apps(swift):
    swift.put_container("apps-algorithms")
    with open(build_c_guest(source_path("algorithms.c")), "rb") as f:
        swift.put_object("apps-algorithms", "algorithms.wasm", f.read())
    with open(source_path("algorithms.py"), "rb") as f:
        swift.put_object("apps-algorithms", "algorithms.py", f.read())


@pytest.mark.parametrize("algorithm", sorted(DATA))
def test_algorithm_in_c_and_python_equals_plain_python(swift, apps, unique, algorithm):
    docs = {f"doc-{i}": DATA[algorithm](i) for i in range(5)}
    swift.put_container(f"in-{unique}")
    for name, data in docs.items():
        swift.put_object(f"in-{unique}", name, data)
    expected = reference(algorithm, docs, "storage")
    assert expected, "the data gives the algorithm something to find"
    outputs = {}
    for guest in ("c", "py"):
        if guest == "c":
            map_args, reduce_args = C_ARGS[algorithm]
            exe, env = "algorithms.wasm", {}
        else:
            map_args, reduce_args = ["map"], ["reduce"]
            exe, env = "algorithms.py", {"ALGORITHM": algorithm, "PATTERN": "storage"}
        report = submit_job(swift, {
            "name": f"{algorithm}-{guest}",
            "map": {"exec": f"swift://~/apps-algorithms/{exe}", "args": map_args, "env": env,
                    "inputs": [f"swift://~/in-{unique}/*"]},
            "reduce": {"exec": f"swift://~/apps-algorithms/{exe}", "args": reduce_args,
                       "env": env, "partitions": PARTITIONS},
            "output": f"swift://~/out-{guest}-{unique}/"})
        assert report["status"] == "succeeded", json.dumps(report, indent=1)[:3000]
        parts = [swift.get_object(f"out-{guest}-{unique}", f"part-{n:05d}")[1]
                 for n in range(PARTITIONS)]
        got = {}
        for part in parts:
            for line in part.decode().splitlines():
                key, value = line.split("\t", 1)
                assert key not in got, "each key once, in one partition"
                got[key] = json.loads(value)
        assert got == expected
        outputs[guest] = parts
    assert outputs["c"] == outputs["py"], "C and Python guests write the same records"
