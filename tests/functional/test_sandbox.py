"""Hostile and broken guests, each beside healthy ones, on the real cluster.

Every hostile task must fail with its own reason, the healthy tasks must
produce their exact output, and the object servers must keep serving
ordinary GETs and PUTs while the job runs and after it.
"""

import json
import os
import threading
import urllib.error
import urllib.request

import pytest

from tests.direct import task_request
from tests.functional.helpers import listing, post_job
from zerocompute.client import submit_job
from zerocompute.guests import build_c_guest
from zerocompute.placement import LOST_RACE

HOSTILE_SOURCE = os.path.join(os.path.dirname(__file__), "..", "guests", "hostile.c")
HEALTHY = b"a healthy input\n" + b"with several lines of text\n" * 50


@pytest.fixture(scope="module")
def hostile_wasm():
    with open(build_c_guest(HOSTILE_SOURCE), "rb") as f:
        return f.read()


class Traffic:
    """Ordinary PUTs and GETs, in a thread, for as long as a job runs."""

    def __init__(self, cluster, container):
        self.swift = cluster.connection()
        self.container = container
        self.done = threading.Event()
        self.ok = 0
        self.errors: list[str] = []
        self.swift.put_container(container)
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        n = 0
        while not self.done.is_set():
            body = os.urandom(4096)
            try:
                self.swift.put_object(self.container, f"o{n % 20}", body)
                if self.swift.get_object(self.container, f"o{n % 20}")[1] != body:
                    self.errors.append("GET returned other bytes")
                self.ok += 1
            except Exception as err:  # noqa: BLE001 - every failure counts
                self.errors.append(repr(err))
            n += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(60)


def by_input(report):
    return {t["input"].rsplit("/", 1)[1]: t for t in report["tasks"]}


def test_hostile_guests_fail_alone_and_the_servers_keep_serving(
        cluster, swift, hostile_wasm, unique):
    apps, source, out = f"apps-{unique}", f"in-{unique}", f"out-{unique}"
    swift.put_container(apps)
    swift.put_object(apps, "hostile.wasm", hostile_wasm)
    swift.put_container(source)
    own_files = " ".join([
        "/etc/passwd", "../../../../etc/passwd", "/proc/self/environ",
        os.path.join(cluster.etc, "swift.conf"), os.path.join(cluster.etc, "object1.conf"),
        cluster.device_path(cluster.object_servers[0]), "/", "."])
    inputs = {
        "healthy-1.txt": HEALTHY, "healthy-2.txt": HEALTHY.upper(),
        "loop.txt": b"loop\n", "membomb.txt": b"membomb\n", "recurse.txt": b"recurse\n",
        "trap.txt": b"trap\n", "stdout.txt": b"stdout\n", "stderr.txt": b"stderr\n",
        "files.txt": f"open {own_files}\n".encode(), "env.txt": b"env\n",
    }
    for name, data in inputs.items():
        swift.put_object(source, name, data)
    servers_before = {s.name: cluster.state["pids"][s.name] for s in cluster.servers}

    with Traffic(cluster, f"traffic-{unique}") as traffic:
        report = submit_job(swift, {
            "name": "hostile",
            "map": {"exec": f"swift://~/{apps}/hostile.wasm", "env": {"VISIBLE": "yes"},
                    "inputs": [f"swift://~/{source}/*.txt"]},
            "output": f"swift://~/{out}/*.out",
            "limits": {"time_s": 3, "memory_mb": 32, "output_mb": 1, "stderr_mb": 1,
                       "stderr_tail_kb": 1},
        })
        ops_during_job = traffic.ok
    assert traffic.errors == []
    assert ops_during_job > 0, "no GET/PUT completed while the job ran"

    tasks = by_input(report)
    detail = json.dumps(report, indent=1)
    assert report["status"] == "failed", detail
    assert {name: t["error"] for name, t in tasks.items()} == {
        "healthy-1.txt": None, "healthy-2.txt": None, "env.txt": None,
        "loop.txt": "time limit 3 s exceeded",
        "membomb.txt": "memory limit 32 MiB exceeded",
        "recurse.txt": "stack overflow",
        "trap.txt": "guest trapped: out-of-bounds memory access",
        "stdout.txt": "output limit 1 MiB exceeded",
        "stderr.txt": "stderr limit 1 MiB exceeded",
        "files.txt": "guest exited with status 1",
    }, detail
    assert "malloc failed" in tasks["membomb.txt"]["stderr"]
    assert "noise line" in tasks["stderr.txt"]["stderr"]
    assert len(tasks["stderr.txt"]["stderr"].encode()) <= 1024
    # No file of the host is visible: every open fails, nothing was read.
    files = tasks["files.txt"]
    assert files["exit"] == 1
    assert files["stderr"].count("cannot open") == len(own_files.split())
    for task in tasks.values():
        # A guest's own failure is never retried elsewhere.  A busy node (503) may
        # hand the task on, and a long task may get a backup copy that is
        # cancelled when the first attempt comes back: nothing else.
        assert all(r["error"].startswith("503") or r["error"] == LOST_RACE
                   for r in task["retries"]), detail
        assert task["attempts"] == 1 + len(task["retries"]), detail
        assert task["local"] is True, detail

    names = set(listing(swift, out))
    assert "_SUCCESS" not in names and "_report.json" in names
    failed = {"loop", "membomb", "recurse", "trap", "stdout", "stderr", "files"}
    assert not {f"{name}.out" for name in failed} & names
    assert swift.get_object(out, "healthy-1.out")[1] == HEALTHY
    assert swift.get_object(out, "healthy-2.out")[1] == HEALTHY.upper()

    # The environment is the manifest's and the task's, nothing of the host's.
    env = dict(line.split("=", 1) for line in
               swift.get_object(out, "env.out")[1].decode().splitlines())
    assert env == {"VISIBLE": "yes", "ZEROCOMPUTE_INPUT": f"swift://AUTH_test/{source}/env.txt",
                   "ZEROCOMPUTE_INPUT_SIZE": "4", "ZEROCOMPUTE_TASK": env["ZEROCOMPUTE_TASK"],
                   "ZEROCOMPUTE_JOB": "hostile", "ZEROCOMPUTE_RECORDS": "text",
                   "ZEROCOMPUTE_PHASE": "map-only"}

    # No server died or restarted, and every one still answers.
    assert {s.name: cluster.state["pids"][s.name] for s in cluster.servers} == servers_before
    assert all(cluster.answers(s) for s in cluster.servers)
    assert swift.get_object(source, "healthy-1.txt")[1] == HEALTHY


def test_cpu_limit_kills_only_the_executor(cluster, swift, hostile_wasm, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "hostile.wasm", hostile_wasm)
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "loop.txt", b"loop\n")
    swift.put_object(f"in-{unique}", "ok.txt", b"fine\n")
    manifest = {"map": {"exec": f"swift://~/apps-{unique}/hostile.wasm",
                        "inputs": [f"swift://~/in-{unique}/*.txt"]},
                "output": f"swift://~/out-{unique}/*", "limits": {"time_s": 30, "cpu_s": 1}}
    report = submit_job(swift, manifest)
    tasks = by_input(report)
    assert tasks["loop.txt"]["error"] == "cpu time limit exceeded", report
    assert tasks["ok.txt"]["error"] is None, report
    assert swift.get_object(f"out-{unique}", "ok")[1] == b"fine\n"
    # The killed executor is replaced: the same nodes run the next job.
    manifest["map"]["inputs"] = [f"swift://~/in-{unique}/ok.txt"]
    manifest["output"] = f"swift://~/out-{unique}/again"
    assert submit_job(swift, manifest)["status"] == "succeeded"


def test_broken_executables_rejected_beside_a_healthy_job(cluster, swift, hostile_wasm, unique):
    apps = f"apps-{unique}"
    swift.put_container(apps)
    swift.put_object(apps, "ok.wasm", hostile_wasm)
    swift.put_object(apps, "garbage.wasm", b"\0asm\x01\0\0\0" + os.urandom(64))
    swift.put_object(apps, "readme.wasm", b"This is a text file, not a program.\n")
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "a.txt", HEALTHY)

    def manifest(exe, out):
        return {"map": {"exec": f"swift://~/{apps}/{exe}", "inputs": [f"swift://~/in-{unique}/*"]},
                "output": f"swift://~/{out}-{unique}/*"}

    results = {}
    healthy = threading.Thread(target=lambda: results.setdefault(
        "ok", submit_job(cluster.connection(), manifest("ok.wasm", "good"))))
    healthy.start()
    for exe, words in (("garbage.wasm", "invalid WebAssembly module"),
                       ("readme.wasm", "not a WebAssembly module")):
        code, error = post_job(cluster, "test:tester",
                               json.dumps(manifest(exe, "bad")).encode())
        assert code == 400 and words in error["error"] and error["field"] == "map.exec"
    healthy.join(120)
    assert results["ok"]["status"] == "succeeded"
    assert swift.get_object(f"good-{unique}", "a.txt")[1] == HEALTHY
    assert f"bad-{unique}" not in [c["name"] for c in swift.get_account()[1]]


def test_object_server_refuses_invalid_executable_even_when_signed(cluster, swift, unique):
    """Defence in depth: even a correctly signed task cannot install garbage."""
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "a.txt", b"x\n")
    part, nodes = cluster.object_ring().get_nodes("AUTH_test", f"in-{unique}", "a.txt")
    node = nodes[0]
    path = f"/{node['device']}/{part}/AUTH_test/in-{unique}/a.txt"
    for body, words in ((b"#!/bin/sh\nrm -rf /\n", b"not a WebAssembly module"),
                        (b"\0asm\x01\0\0\0garbage", b"invalid WebAssembly module")):
        req = task_request(cluster, node["port"], path, body, [])
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 400 and words in err.value.read()
    assert swift.get_object(f"in-{unique}", "a.txt")[1] == b"x\n"
