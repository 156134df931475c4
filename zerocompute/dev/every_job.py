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
from typing import Any

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


def check(what: str, report: dict) -> dict:
    if report.get("status") != SUCCEEDED:
        raise SystemExit(f"{what}: the job did not succeed: {json.dumps(report)[:2000]}")
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


def run_every_kind_of_job(conn: Connection, say: Callable[[str], Any] = print) -> None:
    """Run each kind of job in ``conn``'s account; SystemExit names the first wrong one."""
    stage(conn)
    want = expected_counts(TEXTS)
    mapreduce = {"map": {"exec": WC, "args": ["map"], "inputs": ["swift://~/zc-in/*"]},
                 "combine": {"exec": WC, "args": ["reduce"]},
                 "reduce": {"exec": WC, "args": ["reduce"], "partitions": 3}}
    jobs: list[tuple[str, Callable[[], Counter]]] = []

    def map_only(name: str, inputs: str) -> Counter:
        check(name, submit_job(conn, {"name": name, "map": {
            "exec": WC, "args": ["count"], "inputs": [inputs]},
            "output": f"swift://~/zc-out/{name}"}))
        return gathered_counts(conn, name)

    jobs.append(("map-only", lambda: map_only("map-only", "swift://~/zc-in/*")))
    jobs.append(("erasure-coded input", lambda: map_only("ec", "swift://~/zc-ec/all")))
    jobs.append(("SLO input", lambda: map_only("slo", "swift://~/zc-slo/all")))

    def with_combiner() -> Counter:
        check("MapReduce", submit_job(conn, {"name": "mr", **mapreduce,
                                             "output": "swift://~/zc-out/mr/"}))
        return parts_counts(conn, "mr/")

    def steps() -> Counter:
        check("steps", submit_job(conn, {"name": "steps", "steps": [
            {**mapreduce, "output": "swift://~/zc-out/steps-1/"},
            {"map": {"exec": WC, "args": ["reduce"]},
             "output": "swift://~/zc-out/steps-2"}]}))
        return gathered_counts(conn, "steps-2")

    def async_job() -> Counter:
        accepted = submit_async(conn, {"name": "async", **mapreduce,
                                       "output": "swift://~/zc-out/async/"})
        state = wait_for_job(conn, accepted["job"])
        check("async", state.get("report") or state)
        cancel_job(conn, accepted["job"])  # of a job that has ended: changes nothing
        return parts_counts(conn, "async/")

    def on_get() -> Counter:
        _headers, body = conn.get_object("zc-in", "t0", headers={
            "X-Zerocompute-Run": WC, "X-Zerocompute-Args": json.dumps(["count"])})
        return parse_counts(body) + expected_counts(TEXTS[1:])

    jobs += [("MapReduce with a combiner", with_combiner), ("steps", steps),
             ("async MapReduce", async_job), ("execution on GET", on_get)]
    for what, run in jobs:
        got = run()
        if got != want:
            raise SystemExit(f"{what}: wrong counts: {sorted((got - want).items())[:5]} "
                             f"more, {sorted((want - got).items())[:5]} fewer")
        say(f"  {what}: ok")


def main() -> int:
    cluster = DevCluster()
    for user in ("test:tester", "test2:tester2"):
        print(f"every kind of job as {user}")
        run_every_kind_of_job(cluster.connection(user))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
