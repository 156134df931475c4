"""A thousand malformed or hostile manifests: each a 4xx with a JSON error, nothing
written, and the cluster runs a good job afterwards."""

import http.client
import json
import urllib.parse

from tests.functional.helpers import expected_counts
from tests.fuzz_manifests import manifest_bodies
from zerocompute.client import submit_job


def snapshot(swift):
    return {c["name"]: (c["count"], c["bytes"]) for c in swift.get_account(full_listing=True)[1]}


def test_a_thousand_hostile_manifests(cluster, swift, wordcount_wasm, unique):
    before = snapshot(swift)
    url, token = swift.get_auth()
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    answers = {}
    for body in manifest_bodies(1000, seed=23):
        # Names no test uses: a manifest that parses still finds nothing to run.
        body = body.replace(b"~/apps/", f"~/fz-apps-{unique}/".encode()) \
            .replace(b"~/in/", f"~/fz-in-{unique}/".encode()) \
            .replace(b"~/out/", f"~/fz-out-{unique}/".encode())
        conn.request("POST", parsed.path, body=body, headers={
            "X-Auth-Token": token, "X-Zerocompute-Execute": "1"})
        resp = conn.getresponse()
        data = resp.read()
        answers[resp.status] = answers.get(resp.status, 0) + 1
        assert 400 <= resp.status < 500, (resp.status, body[:300], data[:300])
        assert json.loads(data)["error"], data[:300]
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    assert sum(answers.values()) == 1000 and answers.get(400, 0) > 500, answers
    assert snapshot(swift) == before, "a refused manifest wrote something"

    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "wc.wasm", wordcount_wasm)
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "a.txt", b"still works\n")
    report = submit_job(swift, {"map": {"exec": f"swift://~/apps-{unique}/wc.wasm",
                                        "args": ["count"],
                                        "inputs": [f"swift://~/in-{unique}/*"]},
                                "output": f"swift://~/out-{unique}/*"})
    assert report["status"] == "succeeded"
    assert swift.get_object(f"out-{unique}", "a.txt")[1] == expected_counts(b"still works\n")
