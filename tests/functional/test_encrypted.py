"""Inputs encrypted at rest (Swift's keymaster and encryption middleware in the proxy):
their object servers hold ciphertext, so the proxy reads them through its own read
path, decrypted, and streams them to a guest through a pipe.  No plaintext ever
touches an object server's disk; the report says the input was not local."""

import json
import subprocess

import pytest

from tests.functional.helpers import expected_counts, own_cluster
from zerocompute.client import submit_job

MARKER = b"zerocompute-plaintext-marker"


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "encrypted", encryption=True)


def on_disk(cluster, needle: bytes) -> list[str]:
    """Files of the object servers (data and caches) that hold ``needle``."""
    found = subprocess.run(["grep", "-rl", "--binary-files=text", needle.decode(),
                            cluster.data_dir, f"{cluster.directory}/cache"],
                           capture_output=True, text=True)
    return found.stdout.split()


def test_encrypted_inputs_are_streamed_decrypted_and_never_stored_in_the_clear(
        encrypted, wordcount_wasm):
    swift = encrypted.connection()
    swift.put_container("apps")
    swift.put_object("apps", "wordcount.wasm", wordcount_wasm)
    swift.put_container("secret")
    texts = {f"s{i}": MARKER + b" alpha beta\ngamma " * (3000 * (i + 1)) + b"\n"
             for i in range(3)}
    for name, data in texts.items():
        swift.put_object("secret", name, data)
    assert on_disk(encrypted, MARKER) == []  # encrypted at rest indeed

    report = submit_job(swift, {"map": {"exec": "swift://~/apps/wordcount.wasm",
                                        "args": ["count"], "inputs": ["swift://~/secret/*"]},
                                "output": "swift://~/counts/*.wc"})
    assert report["status"] == "succeeded", json.dumps(report, indent=1)
    for name, data in texts.items():
        assert swift.get_object("counts", f"{name}.wc")[1] == expected_counts(data)
    for task in report["tasks"]:
        size = len(texts[task["input"].rsplit("/", 1)[1]])
        # Not local: every byte came through the proxy.
        assert not task["local"] and task["bytes_peer"] == size == task["bytes_in"]
        assert task["bytes_local"] == 0
        assert [r["error"] for r in task["retries"]] == ["encrypted objects cannot be read "
                                                         "in place"]
    assert report["bytes"]["through_proxy"] >= sum(map(len, texts.values()))
    # The plaintext went through a pipe: no object server wrote it anywhere.
    assert on_disk(encrypted, MARKER) == []


def test_execution_on_get_over_an_encrypted_object(encrypted, wordcount_wasm):
    import urllib.request

    swift = encrypted.connection()
    swift.put_container("apps")
    swift.put_object("apps", "wordcount.wasm", wordcount_wasm)
    swift.put_container("vault")
    data = MARKER + b" delta epsilon\n" * 500
    swift.put_object("vault", "doc", data)
    url, token = swift.get_auth()
    req = urllib.request.Request(f"{url}/vault/doc", headers={
        "X-Auth-Token": token, "X-Zerocompute-Run": "swift://~/apps/wordcount.wasm",
        "X-Zerocompute-Args": json.dumps(["count"])})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        assert resp.read() == expected_counts(data)
        assert resp.headers["X-Zerocompute-Local"] == "false"  # streamed, decrypted
