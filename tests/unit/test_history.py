"""The history of jobs (records, listing, access) and a job's page, against the fake
Swift of ``tests/unit/fakes.py``; the record and the page's layout as pure functions."""

import json
import re

import eventlet
from swift.common.swob import Request, Response

from tests.unit.fakes import manifest, post
from tests.unit.test_job_filter import job_call, submit, wait_final
from zerocompute.async_state import identity_digest
from zerocompute.history import HistoryRecord
from zerocompute.page import job_page
from zerocompute.timeline import timeline_of

HISTORY = "/v1/.zerocompute/%00zerocompute-history%00AUTH_a"


def history_records(swift):
    return {p.rsplit("/%00", 1)[1]: json.loads(body) for p, body in swift.objects.items()
            if p.startswith(HISTORY + "/")}


def listing(mw, query="", **environ):
    req = Request.blank("/v1/AUTH_a?zerocompute_jobs" + query, environ=environ)
    with eventlet.Timeout(10):
        resp = req.get_response(mw)
    return resp, json.loads(resp.body)


def owner_only(req):
    """tempauth's answer for a user of AUTH_a who is not its owner: containers their
    ACLs open, never the account itself."""
    return Response(status=403) if req.path.rstrip("/") == "/v1/AUTH_a" else None


def test_a_synchronous_job_is_kept_with_its_report_and_its_status_location_answers(cluster):
    resp, report = post(cluster, manifest(name="sync one"))
    assert report["status"] == "succeeded" and "history_error" not in report
    records = history_records(cluster.app)
    assert list(records) == [report["id"]]
    record = records[report["id"]]
    assert (record["kind"], record["status"], record["name"]) == ("sync", "succeeded",
                                                                  "sync one")
    assert record["report"]["tasks"] == report["tasks"]
    assert record["ended"] >= record["submitted"] > 0
    # The history lives in the internal account, never in the user's.
    assert not [p for p in cluster.app.objects if p.startswith("/v1/AUTH_a/%00")]
    resp, status = job_call(cluster, f"/v1/AUTH_a?zerocompute_job={report['id']}")
    assert resp.status_int == 200 and status["report"]["id"] == report["id"]
    assert status["kind"] == "sync" and resp.headers["X-Zerocompute-Job-Status"] == "succeeded"


def test_records_expire_after_job_history_days(swift_dir, cluster):
    from tests.unit.fakes import config
    cluster.config = cluster.history.config = config(swift_dir, job_history_days=2.5)
    _resp, report = post(cluster, manifest())
    (path,) = [p for p in cluster.app.objects if p.startswith(HISTORY + "/")]
    assert cluster.app.put_headers[path]["X-Delete-After"] == str(int(2.5 * 86400))
    cluster.config = cluster.history.config = config(swift_dir, job_history_days=0.0)
    post(cluster, manifest())
    kept_forever = [p for p in cluster.app.objects if p.startswith(HISTORY + "/")
                    and p != path]
    assert "X-Delete-After" not in cluster.app.put_headers[kept_forever[0]]


def test_a_job_whose_record_cannot_be_written_still_answers_and_says_so(cluster):
    cluster.app.errors[("PUT", HISTORY)] = [503, 503, 503, 503]  # the container
    resp, report = post(cluster, manifest())
    assert resp.status_int == 200 and report["status"] == "succeeded"
    assert report["history_error"] == "the history cannot be written: 503 Service Unavailable"
    assert "/v1/AUTH_a/out/_SUCCESS" in cluster.app.objects, "the job itself is whole"
    assert history_records(cluster.app) == {}


def test_the_listing_is_newest_first_and_pages_with_limit_and_marker(cluster):
    ids = [post(cluster, manifest(name=f"job {n}"))[1]["id"] for n in range(5)]
    eventlet.sleep(0)
    resp, jobs = listing(cluster)
    assert resp.status_int == 200
    assert [j["job"] for j in jobs] == ids[::-1], "newest first"
    assert [j["name"] for j in jobs] == [f"job {n}" for n in range(4, -1, -1)]
    assert all(j["status"] == "succeeded" and j["tasks"] == 8 and j["failed"] == 0
               and j["kind"] == "sync" for j in jobs)
    _resp, first = listing(cluster, "&limit=2")
    _resp, second = listing(cluster, f"&limit=2&marker={first[-1]['job']}")
    _resp, last = listing(cluster, f"&limit=2&marker={second[-1]['job']}")
    assert [j["job"] for j in first + second + last] == ids[::-1]
    assert listing(cluster, "&limit=0")[0].status_int == 400
    assert listing(cluster, "&limit=x")[1]["field"] == "limit"


def test_owners_see_every_job_and_anyone_else_only_their_own(cluster):
    submit(cluster, manifest(name="the owner's"), remote_user="a,a:owner,AUTH_a")
    _resp, accepted = submit(cluster, manifest(name="u's"), remote_user="a,a:u,AUTH_a")
    wait_final(cluster, accepted["location"])
    _resp, everything = listing(cluster, REMOTE_USER="a,a:owner,AUTH_a")
    assert sorted(j["name"] for j in everything) == ["the owner's", "u's"]
    assert {j["user"] for j in everything} == {"a:owner", "a:u"}
    _resp, mine = listing(cluster, REMOTE_USER="a,a:u,AUTH_a", **{"swift.authorize": owner_only})
    assert [j["name"] for j in mine] == ["u's"]
    resp, none = listing(cluster, REMOTE_USER="b,b:x,AUTH_b", **{"swift.authorize": owner_only})
    assert resp.status_int == 200 and none == []
    assert "submitter" not in json.dumps(everything), "digests stay inside"


def test_an_async_job_is_listed_while_it_runs_and_kept_once_it_ends(cluster):
    cluster.dispatcher.behaviour = {p: {"delay": 0.2} for p in (1, 2, 3)}
    _resp, accepted = submit(cluster, manifest(name="slow"))
    _resp, jobs = listing(cluster)
    assert [(j["job"], j["status"], j["kind"]) for j in jobs] == [
        (accepted["job"], "running", "async")]
    state = wait_final(cluster, accepted["location"])
    _resp, jobs = listing(cluster)
    assert [(j["job"], j["status"]) for j in jobs] == [(accepted["job"], "succeeded")]
    assert jobs[0]["tasks"] == 8 and jobs[0]["ms"] == state["report"]["ms"]
    record = history_records(cluster.app)[accepted["job"]]
    assert record["report"] is None, "an async job's report stays in its state"


def test_the_status_location_answers_a_page_to_a_browser(cluster):
    _resp, report = post(cluster, manifest(name="<img src=x onerror=alert(1)>"))
    req = Request.blank(f"/v1/AUTH_a?zerocompute_job={report['id']}",
                        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    resp = req.get_response(cluster)
    assert resp.status_int == 200 and resp.content_type == "text/html"
    page = resp.body.decode()
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    spans = sum(len(t["timeline"]) for t in report["tasks"])
    assert spans == 8 and page.count('class="attempt ') == spans
    for task in report["tasks"]:
        assert task["input"] in page and task["node"] in page
    # curl's */* and an explicit JSON ask both get JSON.
    for accept in ("*/*", "application/json"):
        req = Request.blank(f"/v1/AUTH_a?zerocompute_job={report['id']}",
                            headers={"Accept": accept})
        assert json.loads(req.get_response(cluster).body)["job"] == report["id"]


def record_of(tasks, **report):
    return {"job": "j", "status": "succeeded", "ms": 3000.0, "tasks": tasks, **report}


def task(name, kind, *spans, shuffle=None, **fields):
    return {"task": name, "kind": kind, "input": f"swift://AUTH_a/in/{name}",
            "timeline": [dict(zip(("node", "start_ms", "end_ms", "outcome", "backup"), s,
                                  strict=True)) for s in spans],
            "shuffle": shuffle, **fields}


def test_the_layout_has_a_lane_per_node_a_bar_per_attempt_and_marks_retries():
    a, b = "10.0.0.1:6200/sda", "10.0.0.2:6200/sdb"
    report = record_of([
        task("m0", "map", (a, 0, 900, "failed", False), (b, 950, 1800, "succeeded", False),
             shuffle={"combine": [300.0, 280.0]}),
        task("m1", "map", (a, 0, 2500, "cancelled", False), (b, 1900, 2400, "succeeded", True)),
        task("r0", "reduce", (a, 2500, 2900, "succeeded", False)),
    ])
    timeline = timeline_of(report)
    assert [lane.node for lane in timeline.lanes] == ["10.0.0.1:6200", "10.0.0.2:6200"]
    assert len(timeline.attempts) == 5
    # Node a ran m0 and m1 at once (two rows), then r0 in the first row free again.
    assert [(lane.first_row, lane.rows) for lane in timeline.lanes] == [(0, 2), (2, 1)]
    rows = {(bar.task, bar.node): bar.row for bar in timeline.attempts}
    assert sorted([rows["m0", a], rows["m1", a]]) == [0, 1] and rows["r0", a] == 0
    assert rows["m0", b] == rows["m1", b] == 2
    retried = [bar for bar in timeline.attempts if bar.retry]
    assert [(bar.task, bar.node) for bar in retried] == [("m0", b)]
    (combine,) = [bar for bar in timeline.bars if bar.kind == "combine"]
    assert (combine.start_ms, combine.end_ms, combine.lane, combine.row) == (1500, 1800, 1, 2)
    assert [(p.kind, p.start_ms, p.end_ms, p.tasks) for p in timeline.phases] == [
        ("map", 0, 2500, 2), ("reduce", 2500, 2900, 1)]
    assert [bar.backup for bar in timeline.attempts if bar.task == "m1"] == [False, True]


def test_the_page_draws_every_attempt_and_lists_failed_tasks_first():
    a = "10.0.0.1:6200/sda"
    report = record_of([
        task("m0", "map", (a, 0, 900, "succeeded", False), exit=0, error=None),
        task("m1", "map", (a, 0, 900, "failed", False), exit=3,
             error="guest exited with status 3"),
    ], counts={"tasks": 2, "failed": 1, "retried": 0}, phases={})
    page = job_page({"job": "f" * 32, "name": "n", "status": "failed", "submitted": 1.0,
                     "updated": 4.0, "report": report})
    assert len(re.findall(r'<rect class="attempt ', page)) == 2
    assert page.index("guest exited with status 3") < page.index("swift://AUTH_a/in/m0")
    assert "http-equiv" not in page, "an ended job's page does not reload"
    assert not re.search(r'(src|href)="(https?:)?//', page), "nothing from elsewhere"
    running = job_page({"job": "f" * 32, "name": "n", "status": "running", "submitted": 1.0,
                        "progress": {"tasks": 8, "done": 3}}, now=11.0)
    assert 'http-equiv="refresh"' in running and "3 of 8 tasks done" in running


def test_a_record_summary_survives_metadata_whole_or_cut_to_swifts_limit():
    record = HistoryRecord(id="0" * 32, account="AUTH_a", name="wörd count " * 40,
                           kind="sync", status="failed", submitter=identity_digest("s", "u"),
                           user="a:u", submitted=1.5, ended=2.5, ms=1000.0,
                           counts={"tasks": 3, "failed": 1})
    headers = record.headers()
    assert all(len(v) <= 256 for v in headers.values())
    back = HistoryRecord.from_headers("AUTH_a", "0" * 32, headers)
    assert back.name.startswith("wörd count wörd") and back.name.endswith("...")
    assert (back.status, back.user, back.submitted, back.ended, back.counts) == (
        "failed", "a:u", 1.5, 2.5, {"tasks": 3, "failed": 1})
    assert back.submitter == record.submitter
