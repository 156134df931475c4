"""The CLI's pure parts: job ids from what a user pastes, the summary, byte counts."""

from zerocompute.cli import human_bytes, summary
from zerocompute.client import job_id_of

JOB = "0e43dcefc12144508e1f73c655f56bd3"


def test_a_job_is_named_by_its_id_or_its_location():
    assert job_id_of(JOB) == JOB
    assert job_id_of(f" {JOB}\n") == JOB
    assert job_id_of(f"/v1/AUTH_test?zerocompute_job={JOB}") == JOB
    assert job_id_of(f"http://proxy:8080/v1/AUTH_test?zerocompute_job={JOB}&x=1") == JOB


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_bytes(5 * 2**40) == "5120.0 GiB"


def report(**changes):
    doc = {"job": "wc", "status": "failed", "error": None, "ms": 2500,
           "counts": {"tasks": 12, "failed": 11, "retried": 1},
           "bytes": {"in": 1000, "through_proxy": 10},
           "usage": {"bytes_written": 2048, "cpu_ms": 1500},
           "outputs": [f"swift://AUTH_t/out/{i}" for i in range(7)],
           "tasks": [{"task": f"m{i:05d}", "input": f"in/{i}", "error": "guest exited with "
                      "status 2", "exit": 2, "reused": i == 0} for i in range(11)]}
    doc.update(changes)
    return doc


def test_summary_says_what_a_user_needs_first():
    text = summary(JOB, report())
    lines = text.splitlines()
    assert lines[0] == f"job       wc ({JOB})"
    assert lines[1] == "status    failed"
    assert "12 (11 failed, 1 retried, 1 reused after a takeover)" in lines[2]
    assert "1000 B in, 2.0 KiB out, 10 B through the proxy (1.00% of the input)" in lines[3]
    assert "2.5 s, guests' CPU 1.5 s" in lines[4]
    assert "... and 2 more" in text  # outputs beyond the first five
    assert text.count("guest exited with status 2") == 10  # failures: the first ten
    assert f"... and 1 more (zerocompute logs {JOB})" in text


def test_summary_of_a_takeover_and_of_an_empty_report():
    text = summary(JOB, report(takeovers=[{"previous": "p1", "by": "p2"}], tasks=[]))
    assert "takeovers p1 -> p2" in text
    assert summary(JOB, {}).splitlines()[1] == "status    ?"


def test_summary_of_a_mapreduce_job_says_where_the_time_went():
    phases = {"map": {"tasks": 16, "guest": {"wall_ms": 2100.0, "cpu_ms": 1980.0},
                      "shuffle": {"partition": {"wall_ms": 10.0, "cpu_ms": 9.0},
                                  "sort": {"wall_ms": 4.0, "cpu_ms": 4.0}},
                      "records": 1042118, "records_shuffled": 30126},
              "reduce": {"tasks": 4, "guest": {"wall_ms": 110.0, "cpu_ms": 100.0},
                         "shuffle": {"fetch": {"wall_ms": 30.0, "cpu_ms": 20.0}}}}
    lines = summary(JOB, report(phases=phases)).splitlines()
    (map_line,) = [line for line in lines if line.startswith("map ")]
    assert map_line.split(None, 1)[1] == (
        "16 tasks: guests 2.10 s (CPU 1.98), shuffle s: partition 0.01, sort 0.00; "
        "1,042,118 records, 30,126 shuffled")
    assert any(line.startswith("reduce    4 tasks: guests 0.11 s") for line in lines)
