"""Bad requests get a clear 4xx JSON error, and nothing is written for them."""

import json
import urllib.error
import urllib.request

import pytest
from swiftclient.client import ClientException

from tests.direct import frames, group_request, task_group
from tests.functional.helpers import post_job
from zerocompute import wire


@pytest.fixture
def staged(swift, wordcount_wasm, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "wc.wasm", wordcount_wasm)
    swift.put_object(f"apps-{unique}", "script.wasm", b"#!/bin/sh\necho not wasm\n")
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "a.txt", b"some words\n")
    return unique


def manifest(unique, **changes):
    doc = {"map": {"exec": f"swift://~/apps-{unique}/wc.wasm", "args": ["count"],
                   "inputs": [f"swift://~/in-{unique}/*.txt"]},
           "output": f"swift://~/out-{unique}/*.wc"}
    doc["map"].update(changes)
    return json.dumps(doc).encode()


def assert_nothing_written(swift, unique):
    with pytest.raises(ClientException) as err:
        swift.head_container(f"out-{unique}")
    assert err.value.http_status == 404
    assert [o["name"] for o in swift.get_container(f"in-{unique}")[1]] == ["a.txt"]


@pytest.mark.parametrize("body, status, field, words", [
    (lambda u: b"{this is not json", 400, None, "not valid JSON"),
    (lambda u: manifest(u, exec=f"swift://~/apps-{u}/missing.wasm"), 400, "map.exec",
     "not found"),
    (lambda u: manifest(u, exec=f"swift://~/apps-{u}/script.wasm"), 400, "map.exec",
     "not a WebAssembly module"),
    (lambda u: manifest(u, inputs=[f"swift://~/in-{u}/*.csv"]), 400, "map.inputs[0]",
     "no object matches"),
    (lambda u: manifest(u, inputs=[f"swift://~/nowhere-{u}/*"]), 400, "map.inputs[0]",
     "not found"),
    (lambda u: manifest(u, inputs=[f"swift://~/in-{u}/missing.txt"]), 400, "map.inputs[0]",
     "not found"),
    (lambda u: manifest(u, args="count"), 400, "map.args", "list of strings"),
])
def test_bad_manifest(cluster, swift, staged, body, status, field, words):
    code, error = post_job(cluster, "test:tester", body(staged))
    assert code == status
    assert words in error["error"]
    assert error.get("field") == field
    assert_nothing_written(swift, staged)


def test_other_users_data_is_refused(cluster, swift, staged):
    """test2:tester2 may not read AUTH_test's executable or inputs."""
    doc = json.loads(manifest(staged))
    doc["map"]["exec"] = f"swift://AUTH_test/apps-{staged}/wc.wasm"
    code, error = post_job(cluster, "test2:tester2", json.dumps(doc).encode(), account="test2")
    assert code == 403 and "not allowed to read executable" in error["error"]
    assert error["field"] == "map.exec"
    assert_nothing_written(swift, staged)


def test_job_must_be_posted_to_the_account(cluster, swift, staged):
    conn = cluster.connection()
    url, token = conn.get_auth()
    req = urllib.request.Request(f"{url}/in-{staged}", data=manifest(staged), method="POST",
                                 headers={"X-Auth-Token": token, "X-Zerocompute-Execute": "1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    assert "POSTed to the account" in json.loads(err.value.read())["error"]


def test_unauthenticated_job_refused(cluster, staged):
    req = urllib.request.Request(cluster.storage_url(), data=manifest(staged), method="POST",
                                 headers={"X-Zerocompute-Execute": "1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401


def test_forged_task_refused_by_object_server(cluster, swift, staged, wordcount_wasm):
    """A client that reaches an object server directly cannot run code there."""
    ring = cluster.object_ring()
    part, nodes = ring.get_nodes("AUTH_test", f"in-{staged}", "a.txt")
    node = nodes[0]
    path = f"/{node['device']}/{part}/AUTH_test/in-{staged}/a.txt"
    group = task_group(wordcount_wasm, ["count"], [path])
    body, signed = wire.sign_group(cluster.secret, group)
    _, wrong = wire.sign_group("wrong-secret", group)
    tampered = body.replace(b'"count"', b'"other"')
    for data, headers in ((body, {}),  # unsigned
                          (body, wrong),  # signed with another secret
                          (tampered, signed)):  # altered after signing
        req = urllib.request.Request(f"http://{node['ip']}:{node['port']}{wire.TASKS_PATH}",
                                     data=data + wordcount_wasm, method=wire.METHOD,
                                     headers={**headers,
                                              wire.GROUP_LENGTH_HEADER: str(len(data))})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 403
    # The object server keeps serving ordinary requests, and signed groups.
    assert swift.get_object(f"in-{staged}", "a.txt")[1] == b"some words\n"
    with urllib.request.urlopen(group_request(cluster.secret, node["port"], group,
                                              wordcount_wasm), timeout=30) as resp:
        ((result, out),) = frames(resp.read())
    assert result.exit == 0 and out == b"some\t1\nwords\t1\n"


def test_over_size_executable_refused_unread(cluster, swift, staged):
    # The default max_executable_mb is 64: one byte more is refused before any task runs.
    size = 64 * 1024 * 1024 + 1
    swift.put_object(f"apps-{staged}", "huge.wasm", b"\0asm\x01\0\0\0" + b"\0" * (size - 8))
    code, error = post_job(cluster, "test:tester",
                           manifest(staged, exec=f"swift://~/apps-{staged}/huge.wasm"))
    assert code == 400
    assert error["field"] == "map.exec"
    assert f"is {size} bytes; at most {64 * 1024 * 1024} are allowed" in error["error"]
    assert_nothing_written(swift, staged)
