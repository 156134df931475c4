"""Python guests: CPython for WASI running a script written with the guest SDK."""

import io

import pytest

from zerocompute.client import submit_job
from zerocompute.dev.demo import corpus
from zerocompute.guests import source_path
from zerocompute.sandbox import zerocompute_guest as sdk


@pytest.fixture
def staged(swift, wordcount_wasm, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "wordcount.wasm", wordcount_wasm)
    with open(source_path("wordcount.py"), "rb") as f:
        swift.put_object(f"apps-{unique}", "wordcount.py", f.read())
    swift.put_container(f"in-{unique}")
    for name, data in corpus().items():
        swift.put_object(f"in-{unique}", name, data)
    return unique


def run(swift, unique, exe, out, args=()):
    return submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/{exe}", "args": list(args),
                "inputs": [f"swift://~/in-{unique}/*.txt"]},
        "output": f"swift://~/{out}-{unique}/*.counts"})


def test_python_sdk_wordcount_equals_the_c_guest(swift, staged):
    c_report = run(swift, staged, "wordcount.wasm", "c", ["count"])
    py_report = run(swift, staged, "wordcount.py", "py")
    assert c_report["status"] == "succeeded"
    assert py_report["status"] == "succeeded", py_report
    for name in corpus():
        out = name[:-len(".txt")] + ".counts"
        c_bytes = swift.get_object(f"c-{staged}", out)[1]
        assert c_bytes and swift.get_object(f"py-{staged}", out)[1] == c_bytes
    assert all(t["local"] for t in py_report["tasks"])


def test_python_guest_sees_no_host_files_or_environment(swift, unique):
    script = b"""
import os, sys
for path in ("/etc/passwd", "/proc/self/environ", "/app/../../etc/passwd"):
    try:
        open(path).read()
        print("READ", path)
    except OSError as err:
        print("denied", path, type(err).__name__)
print("listing", sorted(os.listdir("/app")))
try:
    open("/app/evil.py", "w")
    print("WROTE /app")
except OSError:
    print("read-only /app")
print("env", sorted(os.environ))
print("path", os.environ["PYTHONPATH"])
import encodings
print("encodings from", encodings.__file__)
print("stdin", sys.stdin.read().strip())
"""
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "probe.py", script)
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "x.txt", b"the input\n")
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/probe.py", "env": {"MINE": "1"},
                "inputs": [f"swift://~/in-{unique}/x.txt"]},
        "output": f"swift://~/out-{unique}/probe"})
    assert report["status"] == "succeeded", report
    lines = swift.get_object(f"out-{unique}", "probe")[1].decode().splitlines()
    assert not [line for line in lines if line.startswith(("READ", "WROTE"))], lines
    assert sum(line.startswith("denied") for line in lines) == 3
    # The script, the SDK (and its bytecode), and what the interpreter imports at its
    # start, copied out of its own standard library: nothing of the host's.
    assert "listing ['__pycache__', 'main.py', 'startup.zip', 'zerocompute_guest.py']" in lines
    assert "read-only /app" in lines
    assert "env ['MINE', 'PYTHONPATH', 'ZEROCOMPUTE_INPUT', 'ZEROCOMPUTE_INPUT_SIZE', " \
           "'ZEROCOMPUTE_JOB', 'ZEROCOMPUTE_PHASE', 'ZEROCOMPUTE_RECORDS', 'ZEROCOMPUTE_TASK']" \
        in lines
    assert "path /app/startup.zip" in lines
    assert "encodings from /app/startup.zip/encodings/__init__.pyc" in lines
    assert "stdin the input" in lines


def test_python_guest_error_reaches_the_report(swift, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "boom.py", b"def map(record):\n    raise KeyError(record)\n")
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "x.txt", b"missing-key\n")
    report = submit_job(swift, {
        "map": {"exec": f"swift://~/apps-{unique}/boom.py",
                "inputs": [f"swift://~/in-{unique}/x.txt"]},
        "output": f"swift://~/out-{unique}/boom"})
    (task,) = report["tasks"]
    assert report["status"] == "failed" and task["exit"] == 1
    assert "KeyError: 'missing-key'" in task["stderr"]


def test_framed_records_carry_keys_the_text_form_cannot(swift, staged):
    """A Python guest's keys with tabs and newlines survive a job in the framed form."""
    swift.put_object(f"apps-{staged}", "pairs.py", (
        b"def map(record):\n"
        b"    yield record + '\\t\\n', {'len': len(record)}\n"))
    swift.put_object(f"in-{staged}", "lines.dat", b"alpha\nbe ta\n\n")
    manifest = {"map": {"exec": f"swift://~/apps-{staged}/pairs.py", "args": ["map"],
                        "inputs": [f"swift://~/in-{staged}/lines.dat"]},
                "output": f"swift://~/framed-{staged}/lines.rec"}
    text = submit_job(swift, manifest)
    assert text["status"] == "failed" and "tab or a newline" in text["tasks"][0]["stderr"]
    report = submit_job(swift, dict(manifest, records="framed"))
    assert report["status"] == "succeeded", report
    out = swift.get_object(f"framed-{staged}", "lines.rec")[1]
    assert list(sdk.FramedRecords.read(io.BytesIO(out))) == [
        ("alpha\t\n", {"len": 5}), ("be ta\t\n", {"len": 5}), ("\t\n", {"len": 0})]
