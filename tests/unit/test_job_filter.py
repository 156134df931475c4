"""The proxy filter against a fake Swift (the pattern of Swift's ``FakeSwift``)
and fake object servers (``tests/unit/test_dispatch.py``): what it reads and
writes as the user, in what order, and what it answers."""

import json

import eventlet
import pytest
from swift.common.swob import Request, Response

from tests.unit.fakes import FakeDispatcher, config, manifest, post
from zerocompute import wire
from zerocompute.async_state import JobState
from zerocompute.middleware.proxy import ProxyMiddleware, context


def test_job_writes_every_output_then_its_report_then_success(cluster):
    resp, report = post(cluster, manifest())
    assert resp.status_int == 200 and report["status"] == "succeeded", report
    assert resp.headers[wire.JOB_STATUS_HEADER] == "succeeded"
    swift = cluster.app
    outputs = sorted(p for p in swift.objects if p.endswith(".o"))
    assert outputs == [f"/v1/AUTH_a/out/part-{i}.o" for i in range(8)]
    for path in outputs:
        task = path.rsplit("/", 1)[1][:-2]
        assert swift.objects[path].startswith(b"out-m0000")
        assert task in {t["input"].rsplit("/", 1)[1] for t in report["tasks"]}
    puts = swift.puts()
    assert puts[-2:] == ["/v1/AUTH_a/out/_report.json", "/v1/AUTH_a/out/_SUCCESS"]
    assert all(t["local"] and t["attempts"] == 1 for t in report["tasks"])


def test_listing_is_paginated_past_its_limit(cluster, monkeypatch):
    monkeypatch.setattr(context, "LISTING_LIMIT", 3)
    resp, report = post(cluster, manifest())
    assert report["status"] == "succeeded" and len(report["tasks"]) == 8
    listings = [p for m, p in cluster.app.calls if m == "GET" and p == "/v1/AUTH_a/in"]
    assert len(listings) == 3


@pytest.mark.parametrize("body, status, field, words", [
    (manifest(), 413, "map.inputs", "8 tasks; this cluster runs at most 5"),
    (b"{" + b" " * 5000 + b"}", 413, None, "manifest larger than 4096 bytes"),
])
def test_refused_jobs_write_nothing(swift_dir, cluster, body, status, field, words):
    cluster.config = config(swift_dir, max_tasks=5)
    resp, error = post(cluster, body)
    assert resp.status_int == status and words in error["error"]
    assert error.get("field") == field
    assert [c for c in cluster.app.calls if c[0] in ("PUT", "DELETE", "POST")] == []
    assert cluster.dispatcher.groups == []


@pytest.mark.parametrize("answers, puts, ok", [
    ([401], 1, False), ([403], 1, False), ([413], 1, False),  # refused: not tried again
    ([503, 503, 503], 3, False),  # the cluster could not store it
    ([503], 2, True),  # a passing failure
])
def test_output_writes_refused_or_failing(cluster, answers, puts, ok):
    target = "/v1/AUTH_a/out/part-3.o"
    cluster.app.errors[("PUT", target)] = list(answers)
    resp, report = post(cluster, manifest())
    (task,) = [t for t in report["tasks"] if t["output"].endswith("/part-3.o")]
    assert cluster.app.puts().count(target) == puts
    if ok:
        assert report["status"] == "succeeded" and task["error"] is None
        return
    assert task["error"] == (f"writing output swift://AUTH_a/out/part-3.o failed: "
                             f"{Response(status=answers[-1]).status}")
    assert report["status"] == "failed"
    assert "/v1/AUTH_a/out/_SUCCESS" not in cluster.app.objects
    others = [t for t in report["tasks"] if t is not task]
    assert all(t["error"] is None for t in others), "one task's write failed the others"


def test_exception_inside_the_output_writer_is_reported_on_its_task(cluster):
    cluster.app.errors[("PUT", "/v1/AUTH_a/out/part-5.o")] = [RuntimeError("disk on fire")]
    resp, report = post(cluster, manifest())
    (task,) = [t for t in report["tasks"] if t["output"].endswith("/part-5.o")]
    assert "RuntimeError: disk on fire" in task["error"]
    assert task["node"] is not None, "the task ran; only its write failed"
    assert report["status"] == "failed"
    assert "/v1/AUTH_a/out/_SUCCESS" not in cluster.app.objects


def test_failing_to_write_the_job_files_fails_the_job(cluster):
    cluster.app.errors[("PUT", "/v1/AUTH_a/out/_report.json")] = [503]
    resp, report = post(cluster, manifest())
    assert report["status"] == "failed"
    assert report["error"] == ("writing swift://AUTH_a/out/_report.json failed: "
                               "503 Service Unavailable")
    assert "/v1/AUTH_a/out/_SUCCESS" not in cluster.app.objects
    assert all(t["error"] is None for t in report["tasks"])


def test_outputs_gathered_in_input_order(cluster):
    resp, report = post(cluster, manifest(output="swift://~/out/all"))
    assert report["status"] == "succeeded" and report["outputs"] == ["swift://AUTH_a/out/all"]
    tasks = sorted(report["tasks"], key=lambda t: t["input"])
    expected = b"".join(f"out-{t['task']}-{t['node'].rsplit('/', 1)[1]}".encode()
                        for t in tasks)
    assert cluster.app.objects["/v1/AUTH_a/out/all"] == expected
    assert cluster.app.puts() == ["/v1/AUTH_a/out/all", "/v1/AUTH_a/out/_report.json",
                                  "/v1/AUTH_a/out/_SUCCESS"]


def test_a_slow_job_answers_at_once_and_sends_its_report_later(swift_dir, cluster):
    cluster.config = config(swift_dir, heartbeat_s=0.05)
    cluster.dispatcher.behaviour = {p: {"delay": 0.1} for p in (1, 2, 3)}
    resp, report = post(cluster, manifest())
    assert resp.status_int == 200 and wire.JOB_STATUS_HEADER not in resp.headers
    assert resp.body.startswith(b"  ")
    assert report["status"] == "succeeded" and len(report["tasks"]) == 8


def test_client_cannot_pass_internal_headers_through_the_proxy(cluster):
    req = Request.blank("/v1/AUTH_a/in/part-1", headers={
        "X-Zerocompute-Signature": "forged", "X-Zerocompute-Timestamp": "1",
        "X-Zerocompute-Group-Length": "9", "X-Zerocompute-Load": "running=0",
        "X-Object-Meta-Kept": "yes"})
    seen = {}

    def app(env, start_response):
        seen.update(env)
        return Response(status=204)(env, start_response)
    cluster.app = app
    req.get_response(cluster)
    assert not [k for k in seen if k.startswith("HTTP_X_ZEROCOMPUTE_")]
    assert seen["HTTP_X_OBJECT_META_KEPT"] == "yes"


class RecordingLogger:
    def __init__(self):
        self.lines, self.stats = [], []

    def info(self, msg, *args):
        self.lines.append(msg % args)

    def increment(self, metric):
        self.stats.append(("increment", metric, 1))

    def update_stats(self, metric, amount):
        self.stats.append(("update_stats", metric, amount))

    def timing(self, metric, ms):
        self.stats.append(("timing", metric, ms))

    def warning(self, *args):
        pass

    exception = warning


def test_each_job_is_accounted_for(cluster):
    cluster.logger = cluster.dispatcher.logger = RecordingLogger()
    resp, report = post(cluster, manifest())
    assert report["usage"]["tasks"] == 8 and report["usage"]["bytes_read"] == sum(
        len(f"input {i}\n") for i in range(8))
    (line,) = [ln for ln in cluster.logger.lines if ln.startswith("zerocompute accounting")]
    assert "account=AUTH_a job=j status=succeeded tasks=8" in line
    assert ("increment", "jobs.succeeded", 1) in cluster.logger.stats
    assert ("update_stats", "tasks", 8) in cluster.logger.stats


def test_too_many_jobs_of_one_account_at_once_is_429(swift_dir, cluster):
    cluster.config = config(swift_dir, max_jobs_per_account=1)
    cluster.dispatcher.behaviour = {p: {"delay": 0.2} for p in (1, 2, 3)}
    first = eventlet.spawn(post, cluster, manifest())
    eventlet.sleep(0.05)
    resp, error = post(cluster, manifest(output="swift://~/other/*"))
    assert resp.status_int == 429 and "allows 1 at once" in error["error"]
    assert resp.headers["Retry-After"]
    assert first.wait()[1]["status"] == "succeeded"
    assert post(cluster, manifest(output="swift://~/other/*"))[1]["status"] == "succeeded"


# -- asynchronous jobs ---------------------------------------------------------------
def job_call(mw, location, method="GET", remote_user="a,a:u,AUTH_a"):
    req = Request.blank(location, method=method, environ={"REMOTE_USER": remote_user})
    with eventlet.Timeout(10):
        resp = req.get_response(mw)
    return resp, json.loads(resp.body) if resp.body else {}


def submit(mw, body, remote_user="a,a:u,AUTH_a"):
    req = Request.blank("/v1/AUTH_a", method="POST", body=body,
                        environ={"REMOTE_USER": remote_user},
                        headers={wire.EXECUTE_HEADER: "1", wire.ASYNC_HEADER: "1"})
    with eventlet.Timeout(10):
        resp = req.get_response(mw)
    return resp, json.loads(resp.body)


def second_proxy(cluster, swift_dir, **changes):
    """Another proxy filter over the same Swift (as behind a load balancer)."""
    other = ProxyMiddleware(cluster.app, config(swift_dir, **changes))
    other.dispatcher = FakeDispatcher({1: {}, 2: {}, 3: {}})
    return other


def wait_final(mw, location):
    for _ in range(200):
        resp, state = job_call(mw, location)
        if state["status"] != "running":
            return state
        eventlet.sleep(0.02)
    raise AssertionError(state)


def stored_state(swift):
    (path,) = [p for p in swift.objects if "%00zerocompute-jobs" in p
               and not p.endswith(".cancel")]
    return path, json.loads(swift.objects[path])


def test_async_job_is_accepted_then_any_proxy_reads_its_state(swift_dir, cluster):
    resp, accepted = submit(cluster, manifest())
    assert resp.status_int == 202 and accepted["status"] == "running"
    assert resp.headers["Location"].endswith(accepted["location"])
    other = second_proxy(cluster, swift_dir)
    state = wait_final(other, accepted["location"])
    assert state["status"] == "succeeded" and state["progress"]["done"] == 8
    assert state["report"]["id"] == accepted["job"]
    # The state lives in the internal account's reserved namespace, nothing of it in
    # the user's account; every output names its job.
    path, stored = stored_state(cluster.app)
    assert path == (f"/v1/.zerocompute/%00zerocompute-jobs%00AUTH_a/"
                    f"%00{accepted['job']}")  # quoted \x00
    assert stored["status"] == "succeeded"
    assert not [p for p in {*cluster.app.containers, *cluster.app.objects}
                if p.startswith("/v1/AUTH_a/%00")]
    for output in (p for p in cluster.app.objects if p.endswith(".o")):
        assert cluster.app.meta[output] == {"X-Object-Meta-Zerocompute-Job": accepted["job"]}


def test_a_bad_async_manifest_gets_its_error_at_once_and_no_state(cluster):
    resp, error = submit(cluster, manifest(map={"exec": "swift://~/apps/g.wasm"}))
    assert resp.status_int == 400 and error["field"] == "map.inputs"
    assert not any("zerocompute-jobs" in p for p in cluster.app.objects)


def test_a_job_of_the_first_layout_is_still_found_and_taken_over_into_the_new(
        swift_dir, cluster):
    """State the first layout kept in the user's account is read from there; a
    takeover writes it on in the internal account."""
    cluster.dispatcher.behaviour = {p: {"delay": 30} for p in (1, 2, 3)}
    resp, accepted = submit(cluster, manifest())
    job_id = accepted["job"]
    run = cluster.async_jobs.runs[job_id]
    run.job.cancel("the proxy died")
    run.fenced = True
    path, stored = stored_state(cluster.app)
    stored["lease_until"] = 0.0
    legacy_container = "/v1/AUTH_a/%00zerocompute-jobs"
    cluster.app.containers.add(legacy_container)
    cluster.app.objects[f"{legacy_container}/%00{job_id}"] = json.dumps(stored).encode()
    del cluster.app.objects[path]
    cluster.app.containers.discard(path.rsplit("/", 1)[0])
    cluster.dispatcher.behaviour = {}
    other = second_proxy(cluster, swift_dir)
    state = wait_final(other, accepted["location"])
    assert state["status"] == "succeeded" and len(state["takeovers"]) == 1
    assert json.loads(cluster.app.objects[path])["status"] == "succeeded"


def test_another_users_status_read_looks_like_no_job(cluster):
    def deny(req):
        return Response(status=403)
    resp, accepted = submit(cluster, manifest())
    req = Request.blank(accepted["location"],
                        environ={"REMOTE_USER": "a,a:other,AUTH_a", "swift.authorize": deny})
    resp = req.get_response(cluster)
    assert resp.status_int == 404 and "no job" in json.loads(resp.body)["error"]
    assert job_call(cluster, "/v1/AUTH_a?zerocompute_job=" + "f" * 32)[0].status_int == 404
    assert job_call(cluster, "/v1/AUTH_a/c?zerocompute_job=x")[0].status_int == 400


def test_cancel_stops_the_job_and_nothing_is_written_after(swift_dir, cluster):
    cluster.dispatcher.behaviour = {p: {"delay": 0.1} for p in (1, 2, 3)}
    resp, accepted = submit(cluster, manifest())
    eventlet.sleep(0.15)
    resp, body = job_call(cluster, accepted["location"], "DELETE")
    assert resp.status_int == 202 and body["cancel_requested"]
    state = wait_final(cluster, accepted["location"])
    assert state["status"] == "cancelled"
    report = state["report"]
    written = {p for p in cluster.app.objects if p.startswith("/v1/AUTH_a/out/")}
    # Done: ran and written.  A task whose result came in just as the cancel did has its
    # write cancelled: its report says so (error "cancelled by request").
    done = {t["output"].replace("swift://", "/v1/") for t in report["tasks"]
            if t["exit"] == 0 and t["error"] is None}
    assert written == done and len(done) < 8  # and no _report.json, no _SUCCESS
    eventlet.sleep(0.5)
    assert {p for p in cluster.app.objects if p.startswith("/v1/AUTH_a/out/")} == written


def test_takeover_after_the_lease_lapsed_runs_only_what_was_not_committed(swift_dir,
                                                                          cluster):
    # The first proxy "dies" mid-job: its job never ends, its lease is not renewed.
    cluster.dispatcher.behaviour = {p: {"delay": 30} for p in (1, 2, 3)}
    resp, accepted = submit(cluster, manifest())
    job_id = accepted["job"]
    path, stored = stored_state(cluster.app)
    stored["lease_until"] = 0.0
    cluster.app.objects[path] = json.dumps(stored).encode()
    # Two outputs it had committed, and one of the same name written by someone else.
    for i in (0, 1):
        cluster.app.objects[f"/v1/AUTH_a/out/part-{i}.o"] = b"committed"
        cluster.app.meta[f"/v1/AUTH_a/out/part-{i}.o"] = {
            "X-Object-Meta-Zerocompute-Job": job_id}
    cluster.app.objects["/v1/AUTH_a/out/part-2.o"] = b"someone else's"
    cluster.async_jobs.runs[job_id].job.cancel("the proxy died")  # silence the old run
    cluster.async_jobs.runs[job_id].fenced = True

    other = second_proxy(cluster, swift_dir)
    state = wait_final(other, accepted["location"])
    assert state["status"] == "succeeded", state
    (takeover,) = state["takeovers"]
    assert takeover["previous"] == cluster.async_jobs.instance
    assert takeover["by"] == other.async_jobs.instance
    report = state["report"]
    assert report["takeovers"] == state["takeovers"]
    reused = sorted(t["task"] for t in report["tasks"] if t["reused"])
    assert reused == ["m00000", "m00001"]
    puts = [p for p in cluster.app.puts() if p.endswith(".o")]
    assert sorted(puts) == [f"/v1/AUTH_a/out/part-{i}.o" for i in range(2, 8)]
    assert cluster.app.objects["/v1/AUTH_a/out/part-0.o"] == b"committed"
    assert cluster.app.objects["/v1/AUTH_a/out/part-2.o"].startswith(b"out-")


def test_a_job_taken_over_acts_only_within_its_grant(swift_dir, cluster):
    # A takeover has no user: its requests are authorized by the job's grant (the
    # containers its manifest names, checked as the user at submission) and nothing else.
    resp, accepted = submit(cluster, manifest())
    job_id = accepted["job"]
    run = cluster.async_jobs.runs[job_id]
    run.fenced = True
    run.job.cancel("the proxy died")
    path, stored = stored_state(cluster.app)
    other = second_proxy(cluster, swift_dir)
    state = JobState.from_json(json.dumps(stored))
    env = other.async_jobs.grant_environ({}, state, other.parse(state.manifest.encode(),
                                                                state.account))
    authorize = env["swift.authorize"]
    assert authorize(Request.blank("/v1/AUTH_a/in/part-1")) is None
    assert authorize(Request.blank("/v1/AUTH_a/out/x", method="PUT")) is None
    assert authorize(Request.blank("/v1/AUTH_a/in/part-1", method="PUT")).status_int == 403
    assert authorize(Request.blank("/v1/AUTH_a/secret/x")).status_int == 403
    assert authorize(Request.blank("/v1/AUTH_b/in/x")).status_int == 403
    assert authorize(Request.blank("/v1/AUTH_a")).status_int == 403
    assert "REMOTE_USER" not in env


def test_encrypted_inputs_are_refused_clearly_when_the_operator_says_so(swift_dir, cluster):
    cluster.config = config(swift_dir, stream_encrypted_inputs=False)
    cluster.dispatcher.behaviour = {p: {"exit": None, "error": wire.ENCRYPTED_INPUT}
                                    for p in (1, 2, 3)}
    resp, report = post(cluster, manifest())
    assert report["status"] == "failed"
    for task in report["tasks"]:
        assert task["error"] == (f"{wire.ENCRYPTED_INPUT}, and this cluster does not read "
                                 "them through the proxy (stream_encrypted_inputs = false)")
    assert cluster.app.puts() == ["/v1/AUTH_a/out/_report.json"]  # no output, no _SUCCESS
