"""Named outputs: day, month and year counts of an event stream in one pass."""

import json
import random

import pytest

from tests.functional.helpers import listing
from zerocompute.client import submit_job

GRAINS = {"day": 10, "month": 7, "year": 4}
ONE_PASS = b"""
def map(record):
    stamp = record.split(" ", 1)[0]
    yield "day", stamp[:10], 1
    yield "month", stamp[:7], 1
    yield "year", stamp[:4], 1

def reduce(key, values):
    return sum(values)
"""
ONE_GRAIN = b"""
import os

CUT = int(os.environ.get("CUT", "10"))  # the reducer needs none

def map(record):
    yield record.split(" ", 1)[0][:CUT], 1

def reduce(key, values):
    return sum(values)
"""


def events(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        year, month, day = rng.choice([2024, 2025, 2026]), rng.randint(1, 12), rng.randint(1, 28)
        lines.append(f"{year}-{month:02d}-{day:02d}T12:00:00 {rng.choice(['get', 'put'])}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def stream(swift, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "one_pass.py", ONE_PASS)
    swift.put_object(f"apps-{unique}", "one_grain.py", ONE_GRAIN)
    swift.put_container(f"ev-{unique}")
    for i in range(6):
        swift.put_object(f"ev-{unique}", f"log-{i}", events(i, 400))
    return unique


def parts(swift, container, prefix, count):
    return [swift.get_object(container, f"{prefix}part-{n:05d}")[1] for n in range(count)]


def test_one_pass_equals_three_jobs_and_reads_the_input_once(swift, stream):
    unique = stream
    partitions = {"day": 3, "month": 2, "year": 1}
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/one_pass.py", "args": ["map"],
                "inputs": [f"swift://~/ev-{unique}/*"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/one_pass.py", "args": ["reduce"]},
        "outputs": {grain: {"output": f"swift://~/by-{unique}/{grain}/",
                            "reduce": {"exec": f"swift://~/apps-{unique}/one_pass.py",
                                       "args": ["reduce"], "partitions": n}}
                    for grain, n in partitions.items()}})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:4000]
    one_pass_read = sum(t["bytes_in"] for t in report["tasks"] if t["kind"] == "map")
    reduces = [t["task"] for t in report["tasks"] if t["kind"] == "reduce"]
    assert reduces == ["day-r00000", "day-r00001", "day-r00002", "month-r00000",
                       "month-r00001", "year-r00000"]

    separate_read = 0
    for grain, cut in GRAINS.items():
        alone = submit_job(swift, {
            "map": {"exec": f"swift://~/apps-{unique}/one_grain.py", "args": ["map"],
                    "env": {"CUT": str(cut)}, "inputs": [f"swift://~/ev-{unique}/*"]},
            "reduce": {"exec": f"swift://~/apps-{unique}/one_grain.py", "args": ["reduce"],
                       "partitions": partitions[grain]},
            "output": f"swift://~/alone-{unique}/{grain}/"})
        assert alone["status"] == "succeeded", json.dumps(alone, indent=1)[:3000]
        separate_read += sum(t["bytes_in"] for t in alone["tasks"] if t["kind"] == "map")
        assert parts(swift, f"by-{unique}", f"{grain}/", partitions[grain]) == \
            parts(swift, f"alone-{unique}", f"{grain}/", partitions[grain])
        assert f"{grain}/_SUCCESS" in listing(swift, f"by-{unique}")
    assert separate_read == 3 * one_pass_read


def test_a_record_naming_no_output_fails_its_map(swift, stream):
    unique = stream
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/one_pass.py", "args": ["map"],
                "inputs": [f"swift://~/ev-{unique}/log-0"]},
        "reduce": {"exec": f"swift://~/apps-{unique}/one_pass.py", "args": ["reduce"]},
        "outputs": {"day": f"swift://~/by-{unique}/day/"}})
    assert report["status"] == "failed"
    (task,) = [t for t in report["tasks"] if t["kind"] == "map"]
    assert "names no output of this job" in task["error"] and "month" in task["error"]
