"""Seeing a job on the real cluster: its page (HTML and SVG, rendered by headless
Chromium), the account's history through ``zerocompute jobs``, and the timeline as a
picture (``zerocompute timeline``)."""

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from swift.common.direct_client import direct_put_object
from swift.common.utils import Timestamp

from tests.functional.helpers import make_text
from zerocompute.client import job_status, submit_async, submit_job, wait_for_job
from zerocompute.dev.demo import count_words

BIN = os.path.dirname(sys.executable)
# A map that straggles on the input holding the line STRAGGLE (a backup copy of it
# starts elsewhere; it straggles too, so either copy may win: on a loaded machine the
# original's head start of about a second is not a guarantee), and counts words
# everywhere.
STRAGGLING_COUNT = b"""import re
import time
WORD = re.compile(r"[a-z]+")

def map(record):
    if record == "STRAGGLE":
        time.sleep(4)
    for word in WORD.findall(record.lower()):
        yield word, 1

def reduce(key, values):
    return sum(values)
"""


def only_on_a_handoff(cluster, swift, container: str, name: str, data: bytes) -> None:
    """An object that none of its primaries holds, only its first handoff (as after a
    failed replica write): its task fails on every primary, then runs there."""
    account = swift.get_auth()[0].rsplit("/", 1)[1]
    swift.put_object(container, name, data)  # its container listing, and its size
    ring = cluster.object_ring()
    part, primaries = ring.get_nodes(account, container, name)
    handoff = next(ring.get_more_nodes(part))
    direct_put_object(handoff, part, account, container, name, data,
                      headers={"X-Timestamp": Timestamp.now().internal})
    removed = 0
    for node in primaries:  # as if their writes had failed
        server = next(s for s in cluster.object_servers if s.port == node["port"])
        where = os.path.join(cluster.device_path(server), node["device"], "objects", str(part))
        for directory, _dirs, files in os.walk(where):
            for data_file in (os.path.join(directory, f) for f in files if f.endswith(".data")):
                with open(data_file, "rb") as f:
                    if f.read() == data:
                        os.unlink(data_file)
                        removed += 1
    assert removed == len(primaries)


def straggler_job(swift, unique):
    swift.put_container(f"apps-{unique}")
    swift.put_object(f"apps-{unique}", "count.py", STRAGGLING_COUNT)
    return {"name": f"seen-{unique}",
            "map": {"exec": f"swift://~/apps-{unique}/count.py", "args": ["map"],
                    "inputs": [f"swift://~/in-{unique}/*"]},
            "combine": {"exec": f"swift://~/apps-{unique}/count.py", "args": ["combine"]},
            "reduce": {"exec": f"swift://~/apps-{unique}/count.py", "args": ["reduce"],
                       "partitions": 2},
            "output": f"swift://~/out-{unique}/"}


@pytest.fixture(scope="module")
def straggled(cluster, tmp_path_factory):
    """A MapReduce job with a backup copy and a retry, run to its end: (its report,
    its words, the connection, the name it ran under)."""
    swift = cluster.connection()
    unique = "hist-" + os.urandom(3).hex()
    swift.put_container(f"in-{unique}")
    texts = {f"doc-{i}.txt": make_text(900 + i, 60) for i in range(5)}
    texts["doc-slow.txt"] = b"STRAGGLE\n" + make_text(950, 60)
    for name, data in texts.items():
        swift.put_object(f"in-{unique}", name, data)
    texts["doc-moved.txt"] = make_text(960, 60)
    only_on_a_handoff(cluster, swift, f"in-{unique}", "doc-moved.txt", texts["doc-moved.txt"])
    # The first Python tasks of an object server wait seconds for its executors and
    # the runtime's compiled module: a run beforehand, so that the job's typical task
    # is a warm one and the straggler stands out.
    warm = submit_job(swift, dict(straggler_job(swift, unique), name=f"warm-{unique}",
                                  output=f"swift://~/warm-{unique}/", backup_tasks=False))
    assert warm["status"] == "succeeded", json.dumps(warm)[:2000]
    report = submit_job(swift, straggler_job(swift, unique))
    words = collections.Counter()
    for data in texts.values():
        words.update(count_words(data))
    return report, words, swift, unique


def page_of(cluster, job_id: str, user: str = "test:tester") -> tuple[int, str, str]:
    import urllib.error
    import urllib.request
    conn = cluster.connection(user)
    url, token = conn.get_auth()
    req = urllib.request.Request(f"{cluster.storage_url()}?zerocompute_job={job_id}",
                                 headers={"X-Auth-Token": token,
                                          "Accept": "text/html,*/*;q=0.8"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_a_jobs_page_shows_every_task_and_one_bar_per_attempt(cluster, straggled, tmp_path):
    report, words, swift, unique = straggled
    assert report["status"] == "succeeded", json.dumps(report, indent=1)[:4000]
    maps = [t for t in report["tasks"] if t["kind"] == "map"]
    # The straggler is backed up; on a loaded machine another task may be too (it ran
    # long for the machine, not for its guest): the page shows whatever ran.
    backed_up = {t["input"].rsplit("/", 1)[1]: t for t in maps if t["backup"]}
    assert "doc-slow.txt" in backed_up, [(t["input"][-12:], t["timeline"], t["ms"])
                                         for t in maps]
    slow = backed_up["doc-slow.txt"]
    # Two attempts, the original and its backup: whichever finished first succeeded,
    # and the other was cancelled then, not left to run.
    attempts = slow["timeline"]
    assert sorted(s["backup"] for s in attempts) == [False, True], attempts
    assert sorted(s["outcome"] for s in attempts) == ["cancelled", "succeeded"], attempts
    (won,) = [s for s in attempts if s["outcome"] == "succeeded"]
    (lost,) = [s for s in attempts if s["outcome"] == "cancelled"]
    assert lost["end_ms"] <= won["end_ms"] + 1000, attempts
    (moved,) = [t for t in maps if t["input"].endswith("/doc-moved.txt")]
    assert [s["outcome"] for s in moved["timeline"]] == ["failed"] * 3 + ["succeeded"]
    assert all("404 object not on this node" in r["error"] for r in moved["retries"])
    # The answer is right, whatever ran twice.
    seen = collections.Counter()
    for n in range(2):
        for line in swift.get_object(f"out-{unique}", f"part-{n:05d}")[1].decode().split("\n"):
            if line:
                word, count = line.split("\t")
                seen[word] += int(count)
    assert seen == words

    status, content_type, page = page_of(cluster, report["id"])
    assert status == 200 and content_type.startswith("text/html")
    for task in report["tasks"]:
        assert task["input"] in page and task["node"] in page
    # One bar per attempt, of its kind and outcome (a busy node's 503 is an attempt
    # too, so the count is the report's, not a number fixed here).
    spans = collections.Counter((t["kind"], s["outcome"]) for t in report["tasks"]
                                for s in t["timeline"])
    assert sum(spans.values()) >= len(report["tasks"]) + 1 + 3  # a backup, three tries
    assert page.count('<rect class="attempt ') == sum(spans.values())
    for (kind, outcome), count in spans.items():
        assert page.count(f'<rect class="attempt {kind} {outcome}"') == count
    assert spans["map", "failed"] >= 3 and spans["map", "cancelled"] >= 1
    # Nobody else's page: another account's user gets what a missing job gets.
    assert page_of(cluster, report["id"], "test2:tester2")[0] == 404


def test_the_page_renders_in_headless_chromium(cluster, straggled, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's package)")
    report = straggled[0]
    _status, _type, page = page_of(cluster, report["id"])
    screenshot = render(chromium, page, tmp_path)  # from a file: nothing else to fetch
    colours = distinct_colours(screenshot)
    assert colours > 8, f"the rendered page looks blank ({colours} colours)"
    keep = os.environ.get("ZEROCOMPUTE_KEEP_PICTURES")
    if keep:
        shutil.copy(screenshot, os.path.join(keep, "job-page.png"))


def render(chromium: str, page: str, tmp_path) -> str:
    """The page rendered by headless Chromium into a PNG."""
    html = tmp_path / "job.html"
    html.write_text(page)
    png = tmp_path / "job.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars",
                        "--window-size=1200,1400", f"--screenshot={png}", html.as_uri()],
                       capture_output=True, timeout=120, check=False)
    assert png.exists() and png.stat().st_size > 0, "chromium wrote no screenshot"
    return str(png)


def distinct_colours(png: str) -> int:
    from PIL import Image
    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def zc(cluster, *args, user="test:tester"):
    auth_url, name, key = cluster.credentials(user)
    env = dict(os.environ, ST_AUTH=auth_url, ST_USER=name, ST_KEY=key)
    return subprocess.run([os.path.join(BIN, "zerocompute"), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_history_lists_a_sync_and_an_async_job_to_their_account_only(cluster, unique):
    swift = cluster.connection()
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "a.txt", make_text(7, 40))
    manifest = straggler_job(swift, unique)
    sync = submit_job(swift, dict(manifest, name=f"sync-{unique}"))
    accepted = submit_async(swift, dict(manifest, name=f"async-{unique}",
                                        output=f"swift://~/out-{unique}-a/"))
    listed = zc(cluster, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = {j["job"]: j for j in json.loads(listed.stdout)}
    assert jobs[sync["id"]]["status"] == "succeeded" and jobs[sync["id"]]["kind"] == "sync"
    assert jobs[accepted["job"]]["kind"] == "async"
    assert jobs[accepted["job"]]["status"] in ("running", "succeeded")
    order = [j for j in jobs if j in (sync["id"], accepted["job"])]
    assert order == [accepted["job"], sync["id"]], "newest first"
    wait_for_job(swift, accepted["job"])
    table = zc(cluster, "jobs")
    assert table.returncode == 0, table.stderr
    for job_id, name in ((sync["id"], f"sync-{unique}"), (accepted["job"], f"async-{unique}")):
        (line,) = [row for row in table.stdout.splitlines() if row.startswith(job_id)]
        assert name in line and "succeeded" in line
    assert table.stdout.splitlines()[0].split()[:4] == ["JOB", "NAME", "KIND", "STATUS"]
    # Another account's user sees neither, by name or otherwise.
    other = zc(cluster, "jobs", "--json", user="test2:tester2")
    assert other.returncode == 0, other.stderr
    assert unique not in other.stdout
    # The status of the synchronous job comes from the history too.
    assert job_status(swift, sync["id"])["report"]["id"] == sync["id"]


def test_the_timeline_is_drawn_as_a_picture(cluster, straggled, tmp_path):
    report, _words, _swift, _unique = straggled
    for name in ("job.png", "job.svg", "job.html"):
        drawn = zc(cluster, "timeline", report["id"], "-o", str(tmp_path / name))
        assert drawn.returncode == 0, drawn.stderr
        assert (tmp_path / name).stat().st_size > 1000
    assert distinct_colours(str(tmp_path / "job.png")) > 8
    svg = (tmp_path / "job.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    assert (tmp_path / "job.html").read_text().count('<rect class="attempt ') == sum(
        len(t["timeline"]) for t in report["tasks"])
    keep = os.environ.get("ZEROCOMPUTE_KEEP_PICTURES")
    if keep:
        shutil.copy(tmp_path / "job.png", os.path.join(keep, "job-timeline.png"))
    missing = zc(cluster, "timeline", "0" * 32, "-o", str(tmp_path / "none.png"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no job" in missing.stderr


FAILING = b"""import sys

def map(record):
    print("cannot read", repr(record[:20]), file=sys.stderr)
    raise SystemExit(3)
"""


def test_the_python_api_waits_shows_and_draws_a_job(cluster, unique, tmp_path, monkeypatch):
    import zerocompute
    auth_url, user, key = cluster.credentials()
    for name, value in (("ST_AUTH", auth_url), ("ST_USER", user), ("ST_KEY", key)):
        monkeypatch.setenv(name, value)
    zc = zerocompute.connect()  # the swift command's variables, as the CLI takes them
    swift = zc.conn
    swift.put_container(f"in-{unique}")
    swift.put_object(f"in-{unique}", "a.txt", make_text(11, 40))
    job = zc.submit(dict(straggler_job(swift, unique), name=f"api-{unique}"), progress=False)
    assert job.status == "succeeded" and job.report["id"] == job.id
    assert zc.jobs(limit=1)[0]["job"] == job.id
    assert job.timeline(str(tmp_path / "t.png")) == str(tmp_path / "t.png")
    assert distinct_colours(str(tmp_path / "t.png")) > 8
    assert zc.job(job.state["location"]).report["id"] == job.id

    swift.put_object(f"apps-{unique}", "fail.py", FAILING)
    failing = dict(straggler_job(swift, unique), name=f"api-fail-{unique}")
    failing["map"] = dict(failing["map"], exec=f"swift://~/apps-{unique}/fail.py")
    with pytest.raises(zerocompute.JobFailed) as raised:
        zc.submit(failing, progress=False)
    message = str(raised.value)
    assert "guest exited with status 3" in message and "cannot read" in message
    assert raised.value.job.status == "failed"
