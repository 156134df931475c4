"""Asynchronous jobs on a cluster of two proxies: status anywhere, cancel, takeover.

The cluster runs two proxy processes over the same rings (as behind a load
balancer), with a short lease (3 s) and cancel poll (0.5 s) so that the tests
take seconds.
"""

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.functional.helpers import listing, own_cluster
from zerocompute import wire

LEASE_S = 3.0


@pytest.fixture(scope="module")
def durable(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "durable", proxies=2,
                           proxy_options={"job_lease_s": str(LEASE_S), "job_poll_s": "0.5"})


@pytest.fixture(scope="module")
def staged(durable, sleepy_wasm):
    swift = durable.connection()
    swift.put_container("apps")
    swift.put_object("apps", "sleepy.wasm", sleepy_wasm)
    swift.put_container("in")
    for i in range(40):
        swift.put_object("in", f"p{i:02d}", f"input {i}\n".encode() * (i + 1))
    return swift


def manifest(output: str, ms: int, inputs: str = "swift://~/in/*") -> bytes:
    return json.dumps({"name": "sleepy", "map": {
        "exec": "swift://~/apps/sleepy.wasm", "args": [str(ms)], "inputs": [inputs]},
        "output": output, "backup_tasks": False}).encode()


def call(url: str, token: str, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"X-Auth-Token": token, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def submit(cluster, body: bytes, proxy: str = "proxy", user: str = "test:tester"):
    _url, token = cluster.connection(user, proxy).get_auth()
    return call(cluster.storage_url("test", proxy), token, "POST", body,
                {"X-Zerocompute-Execute": "1", "X-Zerocompute-Async": "1"})


def status(cluster, location: str, proxy: str = "proxy2", user: str = "test:tester",
           method: str = "GET"):
    _url, token = cluster.connection(user, proxy).get_auth()
    return call(cluster.url_of(proxy) + location, token, method)


def wait_for(cluster, location: str, until, timeout: float = 120, proxy: str = "proxy2"):
    deadline = time.monotonic() + timeout
    while True:
        code, _headers, state = status(cluster, location, proxy)
        assert code == 200, state
        if until(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def timestamps(swift, container: str) -> dict[str, str]:
    return {name: swift.head_object(container, name)["x-timestamp"]
            for name in listing(swift, container)}


def expected(i: int) -> bytes:
    return f"input {i}\n".encode() * (i + 1)


def test_async_job_answers_at_once_and_any_proxy_reports_it(durable, staged):
    started = time.monotonic()
    code, headers, accepted = submit(durable, manifest("swift://~/async-out/*.o", 300))
    assert code == 202, accepted
    assert time.monotonic() - started < 5
    location = accepted["location"]
    assert headers["Location"].endswith(location)
    assert location == f"/v1/AUTH_test?zerocompute_job={accepted['job']}"

    # Read through the *other* proxy: the state lives in Swift, not in proxy 1.
    state = wait_for(durable, location, lambda s: s["status"] != "running")
    assert state["status"] == "succeeded", json.dumps(state, indent=1)
    assert state["progress"] == {"tasks": 40, "done": 40, "failed": 0, "retries": 0,
                                 "bytes_in": sum(len(expected(i)) for i in range(40))}
    assert state["takeovers"] == []
    report = state["report"]
    assert report["id"] == accepted["job"] and report["status"] == "succeeded"
    assert all(t["local"] and t["exit"] == 0 for t in report["tasks"])
    for i in range(40):
        assert staged.get_object("async-out", f"p{i:02d}.o")[1] == expected(i)
        assert staged.head_object("async-out", f"p{i:02d}.o")[
            "x-object-meta-zerocompute-job"] == accepted["job"]
    # The job's state is not among the user's containers.
    assert not any("zerocompute" in c["name"] for c in staged.get_account()[1])


def test_async_job_state_is_the_submitters_and_the_account_owners(durable, staged):
    code, _h, accepted = submit(durable, manifest("swift://~/seen-out/*.o", 0,
                                                  "swift://~/in/p0*"))
    assert code == 202, accepted
    location = accepted["location"]
    wait_for(durable, location, lambda s: s["status"] != "running")
    # Another admin of the account may read it ...
    assert status(durable, location, user="test:tester2")[0] == 200
    # ... a user without access to the account, or of another account, may not; the
    # answer is the same as for a job that does not exist.
    for user in ("test:tester3", "test2:tester2"):
        code, _h, body = status(durable, location, user=user)
        assert code == 404 and "no job" in body["error"], (user, body)
    code, _h, body = status(durable, "/v1/AUTH_test?zerocompute_job=" + "0" * 32)
    assert code == 404 and body["field"] == "job"
    code, _h, body = status(durable, "/v1/AUTH_test?zerocompute_job=../../etc")
    assert code == 404


def test_bad_async_manifest_is_refused_at_once(durable, staged):
    code, _h, body = submit(durable, manifest("swift://~/x/*.o", 0, "swift://~/nothing/*"))
    assert code == 400 and body["field"] == "map.inputs[0]", body
    assert "not found" in body["error"]
    code, _h, body = submit(durable, b"{not json")
    assert code == 400 and "error" in body


def test_cancel_through_the_other_proxy_stops_the_job_within_2_s(durable, staged):
    # 40 tasks of 2 s on 8 slots: 10 s of work.
    code, _h, accepted = submit(durable, manifest("swift://~/cancel-out/*.o", 2000))
    assert code == 202, accepted
    location = accepted["location"]
    wait_for(durable, location, lambda s: s["progress"]["done"] >= 8, timeout=60)

    code, _h, body = status(durable, location, method="DELETE")
    asked = time.monotonic()
    assert code == 202 and body["cancel_requested"], body
    state = wait_for(durable, location, lambda s: s["status"] != "running", timeout=10)
    stopped = time.monotonic() - asked
    assert state["status"] == "cancelled", json.dumps(state, indent=1)
    assert stopped < 2.0, f"the job took {stopped:.2f} s to stop"
    # Within 2 s of the cancel, no guest of the job runs on any object server (a guest
    # asleep in a host call, as these are, is beyond the interrupt: its executor is
    # killed a moment after the hang-up).
    for server in durable.object_servers:
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{wire.LOAD_PATH}",
                                        timeout=5) as resp:
                running = json.loads(resp.read())["running"]
            if running == 0:
                break
            assert time.monotonic() - asked < 2.0, f"{server.name} still runs {running}"
            time.sleep(0.05)

    report = state["report"]
    assert report["status"] == "cancelled" and report["cancelled"] == "cancelled by request"
    done = [t for t in report["tasks"] if t["exit"] == 0]
    assert 8 <= len(done) < 40
    assert all(t["error"] == "cancelled by request" for t in report["tasks"] if t["exit"] != 0)
    # What was written before the cancel stays, whole; nothing is written after it.
    written = timestamps(staged, "cancel-out")
    assert sorted(written) == sorted(t["output"].rsplit("/", 1)[1] for t in done)
    time.sleep(2)  # longer than what was in flight could take to land
    assert timestamps(staged, "cancel-out") == written
    for name in written:
        i = int(name[1:3])
        assert staged.get_object("cancel-out", name)[1] == expected(i)
    # A cancelled job is not a result: no _SUCCESS, no report beside the outputs.
    assert not any(name.startswith("_") for name in written)
    # Cancelling again changes nothing.
    code, _h, body = status(durable, location, method="DELETE")
    assert code == 200 and body["status"] == "cancelled"


def test_sigkill_of_the_running_proxy_then_the_other_takes_over(durable, staged):
    proxy1 = durable.server("proxy")
    swift = durable.connection(proxy="proxy2")  # proxy 1 is about to die
    # 40 tasks of 1 s on 8 slots: about 5 s of work.
    code, _h, accepted = submit(durable, manifest("swift://~/takeover-out/*.o", 1000))
    assert code == 202, accepted
    location = accepted["location"]
    try:
        wait_for(durable, location, lambda s: s["progress"]["done"] >= 10, timeout=60)
        durable.kill(proxy1)
        killed = time.time()
        before = timestamps(swift, "takeover-out")
        assert 10 <= len(before) < 40, sorted(before)

        # Status reads through proxy 2: once the lease lapses, it takes the job over.
        state = wait_for(durable, location, lambda s: s["status"] != "running", timeout=120)
    finally:
        durable.restart(proxy1)
    assert state["status"] == "succeeded", json.dumps(state, indent=1)
    (takeover,) = state["takeovers"]
    assert takeover["previous"] != takeover["by"]
    # It waited for the lease to lapse: never while proxy 1 could still have held it.
    assert killed < takeover["lease_until"] <= takeover["at"]
    report = state["report"]
    assert report["takeovers"] == state["takeovers"]

    after = timestamps(swift, "takeover-out")
    outputs = sorted(f"p{i:02d}.o" for i in range(40))
    assert sorted(n for n in after if not n.startswith("_")) == outputs
    # Written once: what proxy 1 committed was not written again, the rest only after.
    for name, stamp in after.items():
        if name in before:
            assert stamp == before[name], name
        else:
            assert float(stamp) > killed, name
    reused = {t["output"].rsplit("/", 1)[1] for t in report["tasks"] if t["reused"]}
    assert reused == set(before)
    for i in range(40):
        assert swift.get_object("takeover-out", f"p{i:02d}.o")[1] == expected(i)
    assert "_SUCCESS" in after


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Two proxies that sweep for orphaned jobs every second."""
    yield from own_cluster(tmp_path_factory, "swept", proxies=2,
                           proxy_options={"job_lease_s": str(LEASE_S), "job_poll_s": "0.5",
                                          "job_sweep_s": "1"})


def test_the_sweep_takes_over_a_job_nobody_asks_about(swept, sleepy_wasm):
    swift = swept.connection(proxy="proxy2")
    swift.put_container("apps")
    swift.put_object("apps", "sleepy.wasm", sleepy_wasm)
    swift.put_container("in")
    for i in range(16):
        swift.put_object("in", f"p{i:02d}", expected(i))
    # Proxy 2 serves a request first, so that its sweep runs.
    assert swift.head_account()
    code, _h, accepted = submit(swept, manifest("swift://~/swept-out/*.o", 1000))
    assert code == 202, accepted
    deadline = time.monotonic() + 60
    while not listing(swift, "swept-out") and time.monotonic() < deadline:
        time.sleep(0.2)
    swept.kill(swept.server("proxy"))
    killed = time.time()
    try:
        # No status read: wait for the job's _SUCCESS, which only a takeover can write.
        deadline = time.monotonic() + 90
        while "_SUCCESS" not in listing(swift, "swept-out") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "_SUCCESS" in listing(swift, "swept-out")
        # The job's state is saved just after its _SUCCESS (written last of its
        # outputs): a read in between still finds it running, on the proxy that runs it.
        state = wait_for(swept, accepted["location"], lambda s: s["status"] != "running",
                         timeout=10)
    finally:
        swept.restart(swept.server("proxy"))
    assert state["status"] == "succeeded", state
    (takeover,) = state["takeovers"]
    assert takeover["at"] > killed
    for i in range(16):
        assert swift.get_object("swept-out", f"p{i:02d}.o")[1] == expected(i)


def account_stats(swift) -> tuple[int, int, int]:
    headers = swift.head_account()
    return (int(headers["x-account-container-count"]),
            int(headers["x-account-object-count"]), int(headers["x-account-bytes-used"]))


def test_an_async_job_leaves_nothing_in_the_accounts_counts_but_its_outputs(
        durable, sleepy_wasm):
    """The account's HEAD counts the job's outputs and nothing else: its state, cancels
    and index live in the internal account.  An account of its own, that has never
    run an async job."""
    swift = durable.connection("test2:tester2")
    for container in ("apps", "in", "counted-out"):
        swift.put_container(container)
    swift.put_object("apps", "sleepy.wasm", sleepy_wasm)
    for i in range(4):
        swift.put_object("in", f"p{i}", expected(i))
    # A container PUT makes the container server report its stats to the account now
    # (the dev cluster runs no container-updater).
    for container in ("apps", "in", "counted-out"):
        swift.put_container(container)
    before = account_stats(swift)
    url, token = swift.get_auth()
    code, _h, accepted = call(url, token, "POST", manifest("swift://~/counted-out/*.o", 0),
                              {"X-Zerocompute-Execute": "1", "X-Zerocompute-Async": "1"})
    assert code == 202, accepted
    location = accepted["location"]
    assert location.startswith("/v1/AUTH_test2?")
    final = None
    for _ in range(300):
        _code, _h, state = call(durable.url_of("proxy2") + location, token)
        if state["status"] != "running":
            final = state
            break
        time.sleep(0.2)
    assert final is not None and final["status"] == "succeeded", final
    # Cancelling a finished job writes nothing either.
    assert call(durable.url_of("proxy") + location, token, "DELETE")[0] == 200
    swift.put_container("counted-out")
    _headers, outputs = swift.get_container("counted-out")
    assert len(outputs) >= 4
    assert account_stats(swift) == (before[0], before[1] + len(outputs),
                                     before[2] + sum(o["bytes"] for o in outputs))
    assert [c["name"] for c in swift.get_account()[1]] == ["apps", "counted-out", "in"]
