"""The shuffle's files on an object server, and what an executor does with them.

A map task of a MapReduce job leaves its output here, split into the job's
partitions by the shuffle core (``zerocompute.sandbox.shuffle_core``), under
``<cache_dir>/shuffle/<server ip>-<port>/<shuffle id>/<map task>/part-NNNNN``
(object servers of one host may share a cache directory, as on a SAIO); the object-server
filter serves those files to reducers (signed ``GET``) and deletes a job's
directory when the job ends (signed ``DELETE``) or once it is older than
``shuffle_max_age_s`` (a job whose proxy died).  A reduce task fetches its
partition from every map's node, merges the sorted runs and hands the
result to the reducer as its stdin.  This runs in the executor processes,
never on the object server's event loop; the records themselves are only
ever touched by the core.
"""

from __future__ import annotations

import http.client
import itertools
import os
import re
import shutil
import time
from collections.abc import Callable

from zerocompute import wire
from zerocompute.sandbox.shuffle_core import Core, CoreFailed, run_names

SECRET_ENV = "ZEROCOMPUTE_SECRET"
ROOT_ENV = "ZEROCOMPUTE_SHUFFLE_DIR"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
FETCH_TIMEOUT_S = 60.0
_CHUNK = 1 << 20  # a fetch's reads: a MiB of a map's output at a time


def safe_name(name: str) -> str:
    """A path component that cannot climb out of the shuffle directory."""
    if not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"bad shuffle name {name!r}")
    return name


def shuffle_root(cache_dir: str, server: str) -> str:
    """This object server's map outputs (``server`` is its ``ip:port``)."""
    return os.path.join(cache_dir, "shuffle", safe_name(server.replace(":", "-")))


def own_root(root: str, node: str) -> bool:
    """Whether ``root`` is the shuffle root of the object server at ``node``."""
    return root == shuffle_root(os.path.dirname(os.path.dirname(root)), node)


def map_dir(root: str, shuffle_id: str, task: str) -> str:
    return os.path.join(root, safe_name(shuffle_id), safe_name(task))


def partition_file(root: str, shuffle_id: str, task: str, partition: int) -> str:
    return os.path.join(map_dir(root, shuffle_id, task), f"part-{partition:05d}")


class CombinerFailed(ValueError):
    """The combiner's guest failed, or wrote something that is not records."""


# With this many runs or more, a map's runs go through the combiner once more as
# they are merged (Hadoop's min.num.spills.for.combine).
MERGE_COMBINE_RUNS = 3
MAP_OUTPUT = "map-output"  # the map guest's stdout, in the task's scratch directory


def partition_output(core: Core, combine: Callable[[str, str], None] | None) -> tuple[
        list[int], int, int]:
    """Split the map's output (``MAP_OUTPUT`` in the core's scratch) into the job's
    partitions, each sorted by key, in the core's output directory; with a combiner,
    each spill goes through it (``combine(stdin path, stdout path)``) and so do the
    runs as they are merged.  The size of each partition, the map's records and the
    records kept."""
    if combine is None:
        done = core("sort", core.path(MAP_OUTPUT), "--parts")
        return done["parts"], done["records"], done["records_out"]
    runs: list[str] = []
    offset = line = records = 0
    for spill in itertools.count():
        prefix = f"spill-{spill}"
        done = core("sort", core.path(MAP_OUTPUT), "--from", offset, "--line", line,
                    "--once", core.path(prefix), *(["--parts"] if spill == 0 else []))
        records += done["records"]
        if "parts" in done:  # one spill, nothing a combiner could fold
            return done["parts"], records, done["records_out"]
        if "units" in done:
            runs += combined_runs(core, combine, prefix, done["units"])
        else:
            runs += [core.path(run) for run in run_names(prefix, done["runs"])]
        if done["eof"]:
            break
        offset, line = done["next"], done["line"]
    if len(runs) >= MERGE_COMBINE_RUNS:
        merged = core("merge", *runs, "--units", core.path("merged"))
        runs = combined_runs(core, combine, "merged", merged["units"])
    done = core("merge", *runs, "--parts")
    return done["parts"], records, done["records_out"]


def combined_runs(core: Core, combine: Callable[[str, str], None], prefix: str,
                  units: list[list[int]]) -> list[str]:
    """Each unit's sorted records (``PREFIX.uNNNN``) through the combiner, and its
    output sorted again into runs of that unit's partitions: the runs' paths."""
    runs = []
    for unit, _count in units:
        name = f"{prefix}.u{unit:04d}"
        directory = core.scratch
        combine(os.path.join(directory, name), os.path.join(directory, name + ".out"))
        os.unlink(os.path.join(directory, name))
        try:
            done = core("sort", core.path(name + ".out"), "--plain", unit,
                        "--runs", core.path(name + ".run"))
        except CoreFailed as err:
            if err.data:
                raise CombinerFailed(str(err).replace("map output", "the combiner's output",
                                                      1)) from None
            raise
        os.unlink(os.path.join(directory, name + ".out"))
        runs += [core.path(run) for run in run_names(name + ".run", done["runs"])]
    return runs


def sample_keys(core: Core, keys: int) -> str:
    """At most ``keys`` of the map output's keys, spread over it (framed): what a
    sampling map returns to the proxy.  The file's path."""
    core("sample", core.path(MAP_OUTPUT), keys, core.path("sample"))
    return os.path.join(core.scratch, "sample")


def reduce_input(core: Core, spec: wire.TaskSpec, shuffle_id: str,
                 root: str) -> tuple[str, list[str]]:
    """Fetch the task's partition from every map, merge them into the reducer's input:
    its path, and the map tasks whose output could not be fetched (then nothing is
    merged).  ``root`` is this server's shuffle root: its own maps' outputs are
    linked from there, not fetched."""
    fetched, lost = [], []
    started, cpu_started = time.perf_counter(), time.thread_time()
    for number, (node, map_task) in enumerate(spec.sources):
        name = f"in-{number:05d}"
        target = os.path.join(core.scratch, name)
        try:
            if not (own_root(root, node) and link_own_output(
                    partition_file(root, shuffle_id, map_task, spec.reduce_partition), target)):
                fetch(node, wire.shuffle_path(shuffle_id, map_task, spec.reduce_partition),
                      target)
            fetched.append(core.path(name))
        except (OSError, http.client.HTTPException, ValueError):
            lost.append(map_task)
    core.timed("fetch", started, cpu_started)
    if lost:
        return "", lost
    core("reduce", core.path("input"), *fetched)  # (it removes what it merged)
    return os.path.join(core.scratch, "input"), []


def link_own_output(path: str, target: str) -> bool:
    """Hard-link a map output this server holds to ``target`` (Hadoop's LocalFetcher):
    no request, no copy, and the original stays for a rerun of the reduce.  False if
    it cannot be linked (another file system, gone): then it is fetched as any other."""
    try:
        os.link(path, target)
    except OSError:
        return False
    return True


def fetch(node: str, path: str, target: str) -> None:
    """GET one map output from the object server at ``node`` (``ip:port``) into ``target``."""
    host, _, port = node.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=FETCH_TIMEOUT_S)
    try:
        conn.request("GET", path, headers=wire.sign_request(
            os.environ.get(SECRET_ENV, ""), "GET", path))
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"{resp.status} from {node}")
        with open(target, "wb") as out:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
    finally:
        conn.close()


def reap(root: str, max_age_s: float, now: float | None = None) -> list[str]:
    """Remove shuffle directories of jobs older than ``max_age_s``; the ids removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        try:
            if now - os.stat(path).st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        except FileNotFoundError:
            continue
    return removed
