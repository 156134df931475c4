"""Durable jobs' pure parts: the state document, its lease, and a job's grant."""

import json

from zerocompute.async_state import (
    Grant,
    JobState,
    identity_digest,
    job_grant,
    new_job_id,
    status_location,
    valid_job_id,
)
from zerocompute.manifest import Limits, parse_manifest

MAXIMUM = Limits(time_s=60, cpu_s=60, memory_mb=512, output_mb=256, stderr_mb=16,
                 stderr_tail_kb=4, table_elements=1000, instances=10)


def state(**overrides):
    values = dict(id=new_job_id(), account="AUTH_a", name="j", manifest="{}",
                  submitter="x", owner="p1", lease_until=130.0, submitted=100.0,
                  updated=100.0)
    values.update(overrides)
    return JobState(**values)


def manifest(doc):
    return parse_manifest(json.dumps(doc).encode(), "AUTH_a", MAXIMUM, "load-aware")


def test_job_ids_are_unguessable_hex_and_nothing_else_is_one():
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(valid_job_id(i) for i in ids)
    for bad in ("", "0" * 31, "0" * 33, "../../etc/passwd", "G" * 32, "0" * 31 + "\x00"):
        assert not valid_job_id(bad)


def test_newer_job_ids_sort_first_and_keep_80_random_bits():
    older, newer = new_job_id(now=1_700_000_000.0), new_job_id(now=1_700_000_000.001)
    assert newer < older  # a listing of ids, ascending, is newest first
    same_ms = {new_job_id(now=1_700_000_000.0) for _ in range(100)}
    assert len(same_ms) == 100 and len({i[:12] for i in same_ms}) == 1
    assert new_job_id(now=0.0)[:12] == "ffffffffffff"


def test_state_round_trips_through_json_with_its_takeovers():
    s = state()
    s.take_over("p2", now=140.0, lease_s=30.0)
    again = JobState.from_json(s.to_json())
    assert again == s
    assert again.owner == "p2" and again.lease_until == 170.0
    assert again.takeovers[0].previous == "p1" and again.takeovers[0].lease_until == 130.0


def test_a_lease_lapses_only_while_running_and_after_its_end():
    s = state()
    assert not s.lease_lapsed(129.0)
    assert s.lease_lapsed(131.0)
    s.renew(now=131.0, lease_s=30.0)
    assert not s.lease_lapsed(150.0)
    for final in ("succeeded", "failed", "cancelled"):
        s.status = final
        assert not s.lease_lapsed(10_000.0)


def test_public_state_hides_the_manifest_and_the_submitter():
    s = state(manifest='{"secret": "env"}', submitter=identity_digest("k", "test:tester"))
    body = s.public(cancel_requested=True)
    assert "manifest" not in body and "submitter" not in body
    assert body["cancel_requested"] is True
    assert body["location"] == status_location("AUTH_a", s.id)
    s.status = "cancelled"
    assert "cancel_requested" not in s.public(cancel_requested=True)


def test_identity_digest_depends_on_the_secret_and_the_user():
    assert identity_digest("k", "u") != identity_digest("k", "v")
    assert identity_digest("k", "u") != identity_digest("l", "u")
    assert "test:tester" not in identity_digest("k", "test:tester")


def test_grant_covers_inputs_and_executables_for_reading_and_outputs_for_writing():
    grant = job_grant(manifest({
        "map": {"exec": "swift://~/apps/wc.wasm", "inputs": ["swift://AUTH_b/logs/*.txt"]},
        "combine": {"exec": "swift://~/apps/comb.wasm"},
        "reduce": {"exec": "swift://~/bin/red.wasm", "partitions": 2},
        "output": "swift://~/results/wc/"}))
    for container in ("apps", "bin"):
        assert grant.allows("GET", "AUTH_a", container)
        assert grant.allows("HEAD", "AUTH_a", container)
        assert not grant.allows("PUT", "AUTH_a", container)
    assert grant.allows("GET", "AUTH_b", "logs")
    for method in ("PUT", "DELETE", "POST"):
        assert not grant.allows(method, "AUTH_b", "logs")
        assert grant.allows(method, "AUTH_a", "results")
    # Nothing else: other containers, other accounts, the account itself, odd methods.
    assert not grant.allows("GET", "AUTH_a", "private")
    assert not grant.allows("GET", "AUTH_b", "apps")
    assert not grant.allows("GET", "AUTH_a", None)
    assert not grant.allows("PUT", "AUTH_a", "")
    assert not grant.allows("COPY", "AUTH_a", "results")
    assert not Grant(frozenset()).allows("GET", "AUTH_a", "apps")


def test_grant_of_a_chain_covers_every_step():
    grant = job_grant(manifest({"steps": [
        {"map": {"exec": "swift://~/apps/a.wasm", "inputs": ["swift://~/in/*"]},
         "output": "swift://~/mid/*.o"},
        {"map": {"exec": "swift://~/apps/b.wasm"}, "output": "swift://~/final/all.txt"}]}))
    assert grant.allows("GET", "AUTH_a", "in")
    assert grant.allows("PUT", "AUTH_a", "mid") and grant.allows("GET", "AUTH_a", "mid")
    assert grant.allows("PUT", "AUTH_a", "final")
    assert not grant.allows("PUT", "AUTH_a", "in")


def test_a_state_written_by_a_newer_proxy_is_still_read():
    written = state(user="a:u")
    doc = json.loads(written.to_json())
    doc["a_field_of_the_future"] = {"x": 1}
    assert JobState.from_json(json.dumps(doc).encode()) == written
    del doc["user"]  # and one of an older proxy, which did not keep the user's name
    assert JobState.from_json(json.dumps(doc).encode()).user == ""
