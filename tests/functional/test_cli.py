"""The ``zerocompute`` command as a user meets it, against the shared dev cluster:
deploy, run (with its progress bar, through a pseudo-terminal), status, logs,
cancel, and the one-line errors."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from zerocompute.guests import source_path

BIN = os.path.dirname(sys.executable)
ZC = os.path.join(BIN, "zerocompute")
SLEEPY = os.path.join(os.path.dirname(__file__), "..", "guests", "sleepy.c")


def user_env(cluster, user="test:tester", key=None):
    auth, name, password = cluster.credentials(user)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ST_", "OS_"))}
    return dict(env, ST_AUTH=auth, ST_USER=name, ST_KEY=key or password)


def zc(cluster, *args, key=None, timeout=180):
    return subprocess.run([ZC, *args], env=user_env(cluster, key=key), capture_output=True,
                          text=True, timeout=timeout)


def in_a_terminal(cluster, *args, timeout=180) -> tuple[int, str]:
    """Run the command with a pseudo-terminal (of no stated size) as stdin, stdout and
    stderr."""
    fd, terminal = pty.openpty()
    child = subprocess.Popen([ZC, *args], env=user_env(cluster), stdin=terminal,
                             stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child has exited: EIO
                break
            if not chunk:
                break
            seen += chunk
    os.close(fd)
    return child.wait(timeout=10), seen.decode("utf-8", "replace")


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zerocompute: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def deployed(cluster, swift):
    """The guests deployed with the CLI, and 12 inputs."""
    for args in ([source_path("wordcount.c"), "--compile"], [SLEEPY, "--compile"]):
        done = zc(cluster, "deploy", *args, "--container", "cli-apps")
        assert done.returncode == 0, done.stderr
    swift.put_container("cli-in")
    for i in range(12):
        swift.put_object("cli-in", f"t{i:02d}.txt", f"word{i % 3} shared\n".encode() * (i + 1))
    return swift


def manifest(tmp_path, name, **doc):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, **doc}))
    return str(path)


def test_deploy_names_the_executable_with_the_right_content_type(cluster, deployed):
    headers = deployed.head_object("cli-apps", "wordcount.wasm")
    assert headers["content-type"] == "application/wasm"
    assert deployed.get_object("cli-apps", "wordcount.wasm")[1].startswith(b"\0asm")
    listed = zc(cluster, "deploy", source_path("wordcount.py"), "--container", "cli-apps")
    assert listed.returncode == 0 and listed.stdout == "swift://~/cli-apps/wordcount.py\n"
    assert deployed.head_object("cli-apps", "wordcount.py")["content-type"] == "text/x-python"
    assert_one_line_error(zc(cluster, "deploy", source_path("wordcount.c")), "--compile")


def test_run_shows_a_progress_bar_then_a_summary(cluster, deployed, tmp_path):
    path = manifest(tmp_path, "cli-wc", map={
        "exec": "swift://~/cli-apps/wordcount.wasm", "args": ["count"],
        "inputs": ["swift://~/cli-in/*.txt"]}, output="swift://~/cli-out/*.wc")
    code, seen = in_a_terminal(cluster, "run", path)
    assert code == 0, seen
    # tqdm's bar: name, count of tasks done, the unit and the job's bytes and retries.
    assert "cli-wc:" in seen and "12/12" in seen and "task" in seen, seen
    assert "retries" in seen
    assert "status    succeeded" in seen and "tasks     12 (0 failed" in seen
    assert deployed.get_object("cli-out", "t05.wc")[1] == b"shared\t6\nword2\t6\n"

    # Without a terminal: no bar, and --json gives the report for scripts.
    result = zc(cluster, "run", "--json", path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded" and len(report["tasks"]) == 12
    assert "\r" not in result.stderr


def test_async_run_status_and_logs(cluster, deployed, tmp_path):
    # "bogus" makes every task print its usage to stderr and exit 2.
    path = manifest(tmp_path, "cli-fail", map={
        "exec": "swift://~/cli-apps/wordcount.wasm", "args": ["bogus"],
        "inputs": ["swift://~/cli-in/t0*.txt"]}, output="swift://~/cli-fail/*.wc")
    started = zc(cluster, "run", "--async", path)
    assert started.returncode == 0, started.stderr
    job = started.stdout.strip()
    assert len(job) == 32
    for _ in range(100):
        status = zc(cluster, "status", job, "--json")
        assert status.returncode == 0, status.stderr
        if json.loads(status.stdout)["status"] != "running":
            break
        time.sleep(0.3)
    status = zc(cluster, "status", job)
    assert status.returncode == 1  # the job failed
    assert "status    failed" in status.stdout and "tasks     10 (10 failed" in status.stdout
    logs = zc(cluster, "logs", job)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count("usage: wordcount count|map|reduce") == 10
    assert "== m00003 swift://AUTH_test/cli-in/t03.txt on 127.0.0.1:" in logs.stdout
    one = zc(cluster, "logs", job, "--task", "m00003")
    assert one.stdout.count("==") == 1
    # The location works as well as the id.
    assert zc(cluster, "status", f"/v1/AUTH_test?zerocompute_job={job}").returncode == 1


def test_cancel_waits_until_the_job_has_stopped(cluster, deployed, tmp_path):
    path = manifest(tmp_path, "cli-long", map={
        "exec": "swift://~/cli-apps/sleepy.wasm", "args": ["5000"],
        "inputs": ["swift://~/cli-in/*.txt"]}, output="swift://~/cli-long/*.o")
    job = zc(cluster, "run", "--async", path).stdout.strip()
    time.sleep(1)
    cancelled = zc(cluster, "cancel", job)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"job {job}: cancelled\n"
    assert "status    cancelled" in zc(cluster, "status", job).stdout


def test_errors_are_one_line_and_a_non_zero_exit(cluster, deployed, tmp_path):
    assert_one_line_error(zc(cluster, "status", "0" * 32, key="wrong"), "authorization failed")
    assert_one_line_error(zc(cluster, "status", "0" * 32), "no job")
    assert_one_line_error(zc(cluster, "status", "nonsense"), "not a job id")
    assert_one_line_error(zc(cluster, "logs", "f" * 32), "no job")
    bad = manifest(tmp_path, "bad", map={"exec": "swift://~/cli-apps/wordcount.wasm"},
                   output="swift://~/x/*")
    assert_one_line_error(zc(cluster, "run", bad), "refused (400)", "map.inputs")
    (tmp_path / "broken.json").write_text("{")
    assert_one_line_error(zc(cluster, "run", str(tmp_path / "broken.json")), "not JSON")
    assert_one_line_error(zc(cluster, "run", str(tmp_path / "missing.json")), "cannot read")
    no_credentials = subprocess.run([ZC, "status", "0" * 32], capture_output=True, text=True,
                                    env={k: v for k, v in os.environ.items()
                                         if not k.startswith(("ST_", "OS_"))})
    assert_one_line_error(no_credentials, "ST_AUTH")
