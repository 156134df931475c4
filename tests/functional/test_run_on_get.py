"""Execution on GET: a guest over one object, its stdout as the response."""

import json
import os
import urllib.error
import urllib.request

import pytest

from tests.functional.helpers import expected_counts, make_text
from zerocompute.guests import build_c_guest

HOSTILE = os.path.join(os.path.dirname(__file__), "..", "guests", "hostile.c")


@pytest.fixture
def staged(swift, wordcount_wasm, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "wc.wasm", wordcount_wasm)
    with open(build_c_guest(HOSTILE), "rb") as f:
        swift.put_object(f"apps-{unique}", "copy.wasm", f.read())
    swift.put_container(f"data-{unique}")
    swift.put_object(f"data-{unique}", "text", make_text(5, 400))
    return unique


def get(cluster, user, path, headers):
    conn = cluster.connection(user)
    url, token = conn.get_auth()
    base = cluster.storage_url("test")
    req = urllib.request.Request(f"{base}/{path}", headers={"X-Auth-Token": token, **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_guest_output_from_a_replica_holder(cluster, swift, staged):
    unique = staged
    status, headers, body = get(cluster, "test:tester", f"data-{unique}/text", {
        "X-Zerocompute-Run": f"swift://~/apps-{unique}/wc.wasm",
        "X-Zerocompute-Args": json.dumps(["count"])})
    assert status == 200, body
    assert body == expected_counts(swift.get_object(f"data-{unique}", "text")[1])
    _part, nodes = cluster.object_ring().get_nodes("AUTH_test", f"data-{unique}", "text")
    assert headers["X-Zerocompute-Node"] in {f"{n['ip']}:{n['port']}/{n['device']}"
                                             for n in nodes}
    assert headers["X-Zerocompute-Local"] == "true"


def test_a_range_is_the_guests_input(cluster, swift, staged):
    unique = staged
    data = swift.get_object(f"data-{unique}", "text")[1]
    status, _, body = get(cluster, "test:tester", f"data-{unique}/text", {
        "X-Zerocompute-Run": f"swift://~/apps-{unique}/copy.wasm", "Range": "bytes=100-299"})
    assert status == 200 and body == data[100:300]


def test_container_default_executable(cluster, swift, staged):
    unique = staged
    swift.post_container(f"data-{unique}", {
        "X-Container-Meta-Zerocompute-Run": f"swift://AUTH_test/apps-{unique}/copy.wasm"})
    status, _, body = get(cluster, "test:tester", f"data-{unique}/text",
                          {"X-Zerocompute-Run": "default"})
    assert status == 200 and body == swift.get_object(f"data-{unique}", "text")[1]


def test_no_read_access_to_the_object_or_the_executable_is_403(cluster, swift, staged):
    unique = staged
    run = {"X-Zerocompute-Run": f"swift://~/apps-{unique}/copy.wasm"}
    # tester3 has no role in AUTH_test: neither the object nor the executable.
    status, _, body = get(cluster, "test:tester3", f"data-{unique}/text", run)
    assert status == 403, body
    # Readable data, unreadable executable: still 403, naming the executable.
    swift.post_container(f"data-{unique}", {"X-Container-Read": "test:tester3"})
    status, _, body = get(cluster, "test:tester3", f"data-{unique}/text", run)
    assert status == 403 and json.loads(body)["field"] == "X-Zerocompute-Run"
    swift.post_container(f"apps-{unique}", {"X-Container-Read": "test:tester3"})
    status, _, body = get(cluster, "test:tester3", f"data-{unique}/text", run)
    assert status == 200


def test_a_failing_guest_is_an_error_not_a_short_200(cluster, swift, staged):
    unique = staged
    swift.put_object(f"data-{unique}", "bad", b"trap\n")
    status, headers, body = get(cluster, "test:tester", f"data-{unique}/bad", {
        "X-Zerocompute-Run": f"swift://~/apps-{unique}/copy.wasm"})
    assert status == 502 and "out-of-bounds" in json.loads(body)["error"]
    status, _, body = get(cluster, "test:tester", f"data-{unique}/text", {
        "X-Zerocompute-Run": f"swift://~/apps-{unique}/wc.wasm",
        "X-Zerocompute-Args": json.dumps(["bogus"])})
    assert status == 422 and "status 64" in json.loads(body)["error"]
    status, _, body = get(cluster, "test:tester", f"data-{unique}/text", {
        "X-Zerocompute-Run": f"swift://~/apps-{unique}/wc.wasm",
        "X-Zerocompute-Args": "not json"})
    assert status == 400 and json.loads(body)["field"] == "X-Zerocompute-Args"
