"""The shuffle's files on an object server, and a reduce task's fetches.

A map task of a MapReduce job leaves its output here, split into the job's
partitions (``zerocompute.shuffle``), under
``<cache_dir>/shuffle/<server ip>-<port>/<shuffle id>/<map task>/part-NNNNN``
(object servers of one host may share a cache directory, as on a SAIO); the object-server
filter serves those files to reducers (signed ``GET``) and deletes a job's
directory when the job ends (signed ``DELETE``) or once it is older than
``shuffle_max_age_s`` (a job whose proxy died).  A reduce task fetches its
partition from every map's node, merges the sorted runs and hands the
result to the reducer as its stdin.  This runs in the executor processes,
never on the object server's event loop.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator

from zerocompute import shuffle, wire

SECRET_ENV = "ZEROCOMPUTE_SECRET"
ROOT_ENV = "ZEROCOMPUTE_SHUFFLE_DIR"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
FETCH_TIMEOUT_S = 60.0
_CHUNK = 1 << 16


def safe_name(name: str) -> str:
    """A path component that cannot climb out of the shuffle directory."""
    if not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"bad shuffle name {name!r}")
    return name


def shuffle_root(cache_dir: str, server: str) -> str:
    """This object server's map outputs (``server`` is its ``ip:port``)."""
    return os.path.join(cache_dir, "shuffle", safe_name(server.replace(":", "-")))


def map_dir(root: str, shuffle_id: str, task: str) -> str:
    return os.path.join(root, safe_name(shuffle_id), safe_name(task))


def partition_file(root: str, shuffle_id: str, task: str, partition: int) -> str:
    return os.path.join(map_dir(root, shuffle_id, task), f"part-{partition:05d}")


class CombinerFailed(shuffle.BadRecords):
    """The combiner's guest failed, or wrote something that is not records."""


def partition_output(group: wire.TaskGroup, spec: wire.TaskSpec, stdout_path: str,
                     root: str, result: wire.TaskResult,
                     combine: Callable[[Iterator[shuffle.Record]], Iterable[shuffle.Record]]
                     | None = None) -> None:
    """Split a map's stdout into the job's partitions, kept on this node, each through
    the combiner if the job has one; the sizes go in ``result`` (its stdout itself goes
    nowhere)."""
    settings = group.shuffle or {}
    form = settings.get("records", shuffle.TEXT)
    directory = map_dir(root, settings["id"], spec.task)
    shutil.rmtree(directory, ignore_errors=True)  # an earlier attempt's, on this node
    partitioner = shuffle.Partitioner(directory, int(settings["partitions"]), form,
                                      int(settings.get("memory_bytes", 64 << 20)))
    try:
        with open(stdout_path, "rb") as out:
            records = shuffle.read_records(out, form)
            if settings.get("outputs"):
                add_named(partitioner, records, settings["outputs"], form)
            else:
                partitioner.add_all(records)
        result.partitions = [size for _, size in partitioner.finish(combine)]
    except shuffle.BadRecords as err:
        result.error = str(err) if isinstance(err, CombinerFailed) else \
            f"map output is not {form} records: {err}"
        shutil.rmtree(directory, ignore_errors=True)
    finally:
        partitioner.close()
    result.stdout_bytes = 0


def add_named(partitioner: shuffle.Partitioner, records: Iterable[shuffle.Record],
              outputs: list[dict], form: str) -> None:
    """Records naming their output: each goes to one of that output's partitions."""
    ranges, offset = {}, 0
    for out in outputs:
        ranges[out["name"].encode("utf-8")] = (offset, int(out["partitions"]))
        offset += int(out["partitions"])
    for name, value in records:
        if name not in ranges:
            known = ", ".join(sorted(n.decode() for n in ranges))
            raise shuffle.BadRecords(f"a record names no output of this job: {name[:64]!r} "
                                     f"(outputs: {known})")
        first, count = ranges[name]
        key, inner = shuffle.inner_record(value, form)
        partitioner.add(key, inner, first + shuffle.partition_of(key, count))


def reduce_input(group: wire.TaskGroup, spec: wire.TaskSpec, scratch: str,
                 ) -> tuple[str, list[str]]:
    """Fetch the task's partition from every map, merge: the stdin file's path, and the
    map tasks whose output could not be fetched (then nothing is merged)."""
    settings = group.shuffle or {}
    form = settings.get("records", shuffle.TEXT)
    fetched, lost = [], []
    for number, (node, map_task) in enumerate(spec.sources):
        target = os.path.join(scratch, f"run-{number:05d}")
        try:
            fetch(node, wire.shuffle_path(settings["id"], map_task, spec.reduce_partition),
                  target)
            fetched.append(target)
        except (OSError, http.client.HTTPException, ValueError):
            lost.append(map_task)
    if lost:
        return "", lost
    merged = os.path.join(scratch, "input")
    runs = [open(path, "rb") for path in fetched]  # noqa: SIM115 - closed below
    try:
        with open(merged, "wb") as out:
            shuffle.write_records(out, shuffle.merge_sorted(
                shuffle.read_records(run, form) for run in runs), form)
    finally:
        for run in runs:
            run.close()
    return merged, []


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
