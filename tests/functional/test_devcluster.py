"""The dev cluster as an operator meets it: its CLI, the swift command, GET /info."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from zerocompute.client import submit_job

BIN = os.path.dirname(sys.executable)


def run(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def test_swift_command_works_unchanged(cluster, tmp_path):
    auth, user, key = cluster.credentials("test:tester")
    swift = [os.path.join(BIN, "swift"), "-A", auth, "-U", user, "-K", key]
    stat = run(*swift, "stat")
    assert stat.returncode == 0, stat.stderr
    assert "Account: AUTH_test" in stat.stdout

    (tmp_path / "hello.txt").write_bytes(b"hello from the swift command\n")
    up = run(*swift, "upload", "cli-test", "hello.txt", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    down_dir = tmp_path / "down"
    down_dir.mkdir()
    down = run(*swift, "download", "cli-test", "hello.txt", cwd=down_dir)
    assert down.returncode == 0, down.stderr
    assert (down_dir / "hello.txt").read_bytes() == b"hello from the swift command\n"


def test_info_lists_zerocompute(cluster):
    with urllib.request.urlopen(cluster.proxy_url + "/info", timeout=10) as resp:
        info = json.loads(resp.read())
    zc = info["zerocompute"]
    assert zc["runtimes"] == ["wasm32-wasi", "python3.12"]  # the dev extras install it
    assert set(zc["schedulers"]) == {"load-aware", "random"}
    assert zc["max_limits"]["time_s"] > 0 and zc["max_limits"]["memory_mb"] > 0
    assert "tempauth" in info


def test_devcluster_cli_start_env_status_stop(tmp_path):
    zc = os.path.join(BIN, "zerocompute")
    directory = str(tmp_path / "cli-cluster")
    started = run(zc, "devcluster", "start", "--dir", directory)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "/auth/v1.0" in started.stdout
        if os.geteuid() == 0:  # object data on a tmpfs, as a SAIO's on XFS
            assert "object data on tmpfs" in started.stdout
            assert os.path.ismount(os.path.join(directory, "srv"))
        else:
            assert "metadata exceeds about 3.6 KB" in started.stderr
        status = run(zc, "devcluster", "status", "--dir", directory)
        assert status.returncode == 0
        lines = status.stdout.split("\n")
        # proxy, account, container, 4 object servers, and memcached when installed
        expected = 7 + (shutil.which("memcached") is not None)
        assert sum("running" in line for line in lines) == expected
        # The README's recipe: eval the env lines, then use the swift command as is.
        shell = run("bash", "-c", f'eval "$({zc} devcluster env --dir {directory})"; '
                                  f'{os.path.join(BIN, "swift")} stat')
        assert shell.returncode == 0, shell.stderr
        assert "Account: AUTH_test" in shell.stdout
    finally:
        stopped = run(zc, "devcluster", "stop", "--wipe", "--dir", directory)
    # A stopped cluster: one clear line and a non-zero exit, from any job command.
    env = dict(os.environ, ST_AUTH=f"http://127.0.0.1:{_proxy_port(directory)}/auth/v1.0",
               ST_USER="test:tester", ST_KEY="testing")
    (tmp_path / "job.json").write_text('{"map": {}}')
    for args in (["status", "0" * 32], ["cancel", "0" * 32], ["run", str(tmp_path / "job.json")]):
        down = run(zc, *args, env=env)
        assert down.returncode != 0 and down.stdout == ""
        assert down.stderr.count("\n") == 1, down.stderr
        assert down.stderr.startswith("zerocompute: ") and "Traceback" not in down.stderr
    down = run(zc, "status", "0" * 32, env=env)
    assert "is the cluster running?" in down.stderr, down.stderr
    assert run(zc, "devcluster", "status", "--dir", directory).returncode == 1
    assert stopped.returncode == 0
    assert not os.path.ismount(os.path.join(directory, "srv"))
    status = run(zc, "devcluster", "status", "--dir", directory)
    assert status.returncode == 1 and "running" not in status.stdout


def test_objects_with_as_much_metadata_as_swift_allows(cluster, swift):
    # Swift allows 90 items and 4 KiB of user metadata; ext4 (one block of xattrs)
    # would answer 503.  Swift's own functional tests need it.
    if cluster.data_filesystem() not in ("tmpfs", "xfs"):
        pytest.skip(f"object data on {cluster.data_filesystem()}: {cluster.data_note}")
    headers = {f"X-Object-Meta-K{i:02d}": "v" * 36 for i in range(90)}
    assert sum(len(k) - len("X-Object-Meta-") + len(v) for k, v in headers.items()) <= 4096
    swift.put_container("meta")
    swift.put_object("meta", "full", b"data", headers=headers)
    got = swift.head_object("meta", "full")
    assert sum(1 for k in got if k.startswith("x-object-meta-k")) == 90


def test_second_policy_is_replicated_twice_and_jobs_run_on_its_replicas(cluster, swift,
                                                                         wordcount_wasm):
    swift.put_container("silver-in", headers={"X-Storage-Policy": "silver"})
    assert swift.head_container("silver-in")["x-storage-policy"] == "silver"
    swift.put_container("apps")
    swift.put_object("apps", "wordcount.wasm", wordcount_wasm)
    for i in range(6):
        swift.put_object("silver-in", f"s{i}", b"silver gold silver\n" * (i + 1))
    report = submit_job(swift, {"map": {"exec": "swift://~/apps/wordcount.wasm",
                                        "args": ["count"], "inputs": ["swift://~/silver-in/*"]},
                                "output": "swift://~/silver-out/*.wc"})
    assert report["status"] == "succeeded", report
    ring = cluster.object_ring(1)
    assert ring.replica_count == 2
    for task in report["tasks"]:
        _part, nodes = ring.get_nodes("AUTH_test", "silver-in", task["input"].rsplit("/")[-1])
        assert task["local"] and task["node"] in {
            f"{n['ip']}:{n['port']}/{n['device']}" for n in nodes}
    assert swift.get_object("silver-out", "s2.wc")[1] == b"gold\t3\nsilver\t6\n"


def _proxy_port(directory):
    with open(os.path.join(directory, "cluster.json")) as f:
        return json.load(f)["servers"]["proxy"][1]
