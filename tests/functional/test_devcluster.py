"""The dev cluster as an operator meets it: its CLI, the swift command, GET /info."""

import json
import os
import subprocess
import sys
import urllib.request

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
        status = run(zc, "devcluster", "status", "--dir", directory)
        assert status.returncode == 0
        lines = status.stdout.split("\n")
        assert sum("running" in line for line in lines) == 7  # proxy, a, c, 4 objects
        # The README's recipe: eval the env lines, then use the swift command as is.
        shell = run("bash", "-c", f'eval "$({zc} devcluster env --dir {directory})"; '
                                  f'{os.path.join(BIN, "swift")} stat')
        assert shell.returncode == 0, shell.stderr
        assert "Account: AUTH_test" in shell.stdout
    finally:
        stopped = run(zc, "devcluster", "stop", "--dir", directory)
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
    status = run(zc, "devcluster", "status", "--dir", directory)
    assert status.returncode == 1 and "running" not in status.stdout


def _proxy_port(directory):
    with open(os.path.join(directory, "cluster.json")) as f:
        return json.load(f)["servers"]["proxy"][1]
