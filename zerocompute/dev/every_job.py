"""One job of every kind, run in an account, each checked: what a cluster that has
served zerocompute users has seen.

``make test-swift`` runs these in Swift's test accounts before Swift's own
functional suite, which must then pass as on a cluster that never ran a job
(``doc/operations.md``): map-only, MapReduce with a combiner, steps, an async
job (and a cancel of it once done), execution on GET, and map-only jobs over
an erasure-coded and a static large object.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from swiftclient.client import Connection

from zerocompute.client import cancel_job, submit_async, submit_job, wait_for_job
from zerocompute.dev.devcluster import POLICIES, DevCluster
from zerocompute.guests import build_c_guest, source_path
from zerocompute.report import SUCCEEDED

TEXTS = [b"the quick brown fox jumps over the lazy dog\n" * 40,
         b"storage first compute second\nthe object is the unit\n" * 30,
         b"a b c d e f g the end\n" * 25]
WC = "swift://~/apps/zc-wc.wasm"


def expected_counts(texts: list[bytes]) -> Counter:
    return Counter(w.lower().decode() for t in texts for w in re.findall(rb"[A-Za-z0-9]+", t))


def parse_counts(body: bytes) -> Counter:
    counts: Counter = Counter()
    for line in body.decode().splitlines():
        word, count = line.split("\t")
        counts[word] += int(count)
    return counts


class JobFailed(Exception):
    """A job that did not succeed (its report says why)."""

    def __init__(self, what: str, report: dict):
        super().__init__(f"{what}: the job did not succeed: {json.dumps(report)[:2000]}")
        self.report = report


def check(what: str, report: dict) -> dict:
    if report.get("status") != SUCCEEDED:
        raise JobFailed(what, report)
    return report


def stage(conn: Connection) -> None:
    """The word count guest and the inputs: plain, erasure-coded and an SLO."""
    ec_policy = next(name for _index, name, _replicas, ec in POLICIES if ec)
    with open(build_c_guest(source_path("wordcount.c")), "rb") as f:
        conn.put_container("apps")
        conn.put_object("apps", "zc-wc.wasm", f.read())
    conn.put_container("zc-in")
    for i, text in enumerate(TEXTS):
        conn.put_object("zc-in", f"t{i}", text)
    conn.put_container("zc-ec", headers={"X-Storage-Policy": ec_policy})
    conn.put_object("zc-ec", "all", b"".join(TEXTS))
    conn.put_container("zc-segments")
    segments = []
    for i, text in enumerate(TEXTS):
        etag = conn.put_object("zc-segments", f"s{i}", text)
        segments.append({"path": f"/zc-segments/s{i}", "etag": etag,
                         "size_bytes": len(text)})
    conn.put_container("zc-slo")
    conn.put_object("zc-slo", "all", json.dumps(segments),
                    query_string="multipart-manifest=put")
    conn.put_container("zc-out")


def gathered_counts(conn: Connection, name: str) -> Counter:
    return parse_counts(conn.get_object("zc-out", name)[1])


def parts_counts(conn: Connection, prefix: str) -> Counter:
    _headers, listing = conn.get_container("zc-out", prefix=prefix + "part-")
    counts: Counter = Counter()
    for item in listing:
        counts.update(parse_counts(conn.get_object("zc-out", item["name"])[1]))
    return counts


class Kind(NamedTuple):
    """One kind of job: what it is, where its outputs go, and how to run and read it."""

    what: str
    output: str  # its outputs' names in zc-out start with this
    run: Callable[[], Counter]  # runs the job; the word counts its outputs hold


def job_kinds(conn: Connection, tag: str = "",
              async_ids: list[str] | None = None) -> list[Kind]:
    """A job of each kind in ``conn``'s account (staged), its outputs named with
    ``tag``; each run raises :class:`JobFailed` if the job does not succeed.  The
    async job's id goes into ``async_ids``."""
    mapreduce = {"map": {"exec": WC, "args": ["map"], "inputs": ["swift://~/zc-in/*"]},
                 "combine": {"exec": WC, "args": ["reduce"]},
                 "reduce": {"exec": WC, "args": ["reduce"], "partitions": 3}}

    def map_only(name: str, inputs: str) -> Counter:
        check(name, submit_job(conn, {"name": name, "map": {
            "exec": WC, "args": ["count"], "inputs": [inputs]},
            "output": f"swift://~/zc-out/{name}"}))
        return gathered_counts(conn, name)

    def with_combiner() -> Counter:
        check("MapReduce", submit_job(conn, {"name": f"mr{tag}", **mapreduce,
                                             "output": f"swift://~/zc-out/mr{tag}/"}))
        return parts_counts(conn, f"mr{tag}/")

    def steps() -> Counter:
        check("steps", submit_job(conn, {"name": f"steps{tag}", "steps": [
            {**mapreduce, "output": f"swift://~/zc-out/steps{tag}-1/"},
            {"map": {"exec": WC, "args": ["reduce"]},
             "output": f"swift://~/zc-out/steps{tag}-2"}]}))
        return gathered_counts(conn, f"steps{tag}-2")

    def async_job() -> Counter:
        accepted = submit_async(conn, {"name": f"async{tag}", **mapreduce,
                                       "output": f"swift://~/zc-out/async{tag}/"})
        if async_ids is not None:
            async_ids.append(accepted["job"])
        state = wait_for_job(conn, accepted["job"])
        check("async", state.get("report") or state)
        cancel_job(conn, accepted["job"])  # of a job that has ended: changes nothing
        return parts_counts(conn, f"async{tag}/")

    def on_get() -> Counter:
        _headers, body = conn.get_object("zc-in", "t0", headers={
            "X-Zerocompute-Run": WC, "X-Zerocompute-Args": json.dumps(["count"])})
        return parse_counts(body) + expected_counts(TEXTS[1:])

    return [Kind("map-only", f"map-only{tag}",
                 lambda: map_only(f"map-only{tag}", "swift://~/zc-in/*")),
            Kind("erasure-coded input", f"ec{tag}",
                 lambda: map_only(f"ec{tag}", "swift://~/zc-ec/all")),
            Kind("SLO input", f"slo{tag}", lambda: map_only(f"slo{tag}", "swift://~/zc-slo/all")),
            Kind("MapReduce with a combiner", f"mr{tag}/", with_combiner),
            Kind("steps", f"steps{tag}-", steps),
            Kind("async MapReduce", f"async{tag}/", async_job),
            Kind("execution on GET", "", on_get)]


def wrong_counts(got: Counter) -> str | None:
    """What is wrong with a job's word counts (None: they are exact)."""
    want = expected_counts(TEXTS)
    if got == want:
        return None
    return (f"wrong counts: {sorted((got - want).items())[:5]} more, "
            f"{sorted((want - got).items())[:5]} fewer")


def run_every_kind_of_job(conn: Connection, say: Callable[[str], Any] = print) -> None:
    """Run each kind of job in ``conn``'s account; SystemExit names the first wrong one."""
    stage(conn)
    for kind in job_kinds(conn):
        try:
            wrong = wrong_counts(kind.run())
        except JobFailed as err:
            raise SystemExit(str(err)) from None
        if wrong:
            raise SystemExit(f"{kind.what}: {wrong}")
        say(f"  {kind.what}: ok")


def main() -> int:
    cluster = DevCluster()
    for user in ("test:tester", "test2:tester2"):
        print(f"every kind of job as {user}")
        run_every_kind_of_job(cluster.connection(user))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
