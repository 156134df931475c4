"""Two accounts: a job runs only over what its user may read and write by hand."""

import json
import time
import urllib.error
import urllib.request

import pytest
from swiftclient.client import ClientException

from tests.direct import group_request, task_group
from tests.functional.helpers import expected_counts, post_job
from zerocompute import wire


@pytest.fixture
def b_side(cluster, wordcount_wasm, unique):
    """Account B (test2): an executable, inputs and an output container of its own."""
    b = cluster.connection("test2:tester2")
    for container in (f"b-apps-{unique}", f"b-in-{unique}", f"b-out-{unique}"):
        b.put_container(container)
    b.put_object(f"b-apps-{unique}", "wc.wasm", wordcount_wasm)
    b.put_object(f"b-in-{unique}", "secret.txt", b"b's private words\n")
    return b


def job(exe, inputs, output):
    return json.dumps({"map": {"exec": exe, "args": ["count"], "inputs": [inputs]},
                       "output": output}).encode()


def test_account_a_cannot_use_bs_objects(cluster, swift, wordcount_wasm, b_side, unique):
    swift.put_container(f"a-apps-{unique}")
    swift.put_object(f"a-apps-{unique}", "wc.wasm", wordcount_wasm)
    swift.put_container(f"a-in-{unique}")
    swift.put_object(f"a-in-{unique}", "mine.txt", b"a's words\n")
    mine_exe = f"swift://~/a-apps-{unique}/wc.wasm"
    b = "swift://AUTH_test2"
    cases = [
        (job(mine_exe, f"{b}/b-in-{unique}/secret.txt", f"swift://~/a-out-{unique}/*"),
         "map.inputs[0]"),
        (job(mine_exe, f"{b}/b-in-{unique}/*", f"swift://~/a-out-{unique}/*"),
         "map.inputs[0]"),
        (job(f"{b}/b-apps-{unique}/wc.wasm", f"swift://~/a-in-{unique}/*",
             f"swift://~/a-out-{unique}/*"), "map.exec"),
        (job(mine_exe, f"swift://~/a-in-{unique}/*", f"{b}/b-out-{unique}/*"), "output"),
    ]
    for body, field in cases:
        status, error = post_job(cluster, "test:tester", body)
        assert status == 403 and error["field"] == field, (status, error)
    assert b_side.get_container(f"b-out-{unique}")[1] == []
    with pytest.raises(ClientException):
        swift.head_container(f"a-out-{unique}")

    # B lets A's users read its inputs: the same job now runs, over B's object.
    b_side.post_container(f"b-in-{unique}", {"X-Container-Read": "test:tester"})
    status, report = post_job(cluster, "test:tester", cases[0][0])
    assert status == 200 and report["status"] == "succeeded", report
    assert swift.get_object(f"a-out-{unique}", "secret.txt")[1] == \
        expected_counts(b"b's private words\n")


def test_forged_tampered_expired_and_replayed_groups_are_refused(cluster, swift,
                                                                 wordcount_wasm, unique):
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "a.txt", b"x\n")
    part, nodes = cluster.object_ring().get_nodes("AUTH_test", f"in-{unique}", "a.txt")
    node = nodes[0]
    group = task_group(wordcount_wasm, ["count"],
                       [f"/{node['device']}/{part}/AUTH_test/in-{unique}/a.txt"])

    def send(data, headers):
        req = urllib.request.Request(f"http://127.0.0.1:{node['port']}{wire.TASKS_PATH}",
                                     data=data, method=wire.METHOD, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
    good = group_request(cluster.secret, node["port"], group, wordcount_wasm)
    assert send(good.data, dict(good.header_items())) == 200
    assert send(good.data, dict(good.header_items())) == 403, "replayed"
    body, headers = wire.sign_group(cluster.secret, group, now=time.time() - 3600)
    assert send(body, headers) == 403, "expired"
    body, headers = wire.sign_group(cluster.secret, group)
    assert send(body.replace(b'"count"', b'"map"'), headers) == 403, "tampered"
    body, headers = wire.sign_group("not-the-secret", group)
    assert send(body, headers) == 403, "forged"
