"""Word count with Lithops over a zerocompute dev cluster's Swift: "what a user could do instead".

Used by the MapReduce benchmark as the baseline of a general-purpose framework that
moves the data to the compute.  It runs in a virtualenv of its own that has Lithops
3.8 installed, so it imports Lithops and the standard library only, never zerocompute.

    python lithops_wordcount.py < job.json

``job.json`` is one JSON object::

    {"token": "AUTH_tk...", "storage_url": "http://127.0.0.1:8080/v1/AUTH_test",
     "container": "corpus", "objects": ["a.txt", "b.txt"], "workdir": "/tmp/xyz"}

and optionally ``"internal_container"`` (default ``lithops-internal``), the container
Lithops keeps its own job data in, ``"worker_processes"`` (default: the CPU count), and
``"lithops_config"``, sections merged over the config this script writes (for instance
``{"lithops": {"monitoring_interval": 0.5}}`` or ``{"localhost": {"version": 1}}``).

Lithops runs with its ``localhost`` compute backend (every map and the reduce is a
Python subprocess on this machine, at most ``worker_processes`` at a time) and its
``swift`` storage backend, given the ready token and storage URL.  Each map reads one
whole object and counts its words (runs of ASCII letters and digits, lower-cased), the
reduce adds the counters up.  The one line printed on stdout is::

    {"wall_s": ..., "words": ..., "distinct": ..., "digest": ...}

``wall_s`` goes from just before the FunctionExecutor is created to the final result
being in hand; ``digest`` is the SHA-256 of ``"\\n".join(f"{w}\\t{n}")`` over the sorted
counts, as the benchmark computes it for every engine.  Everything else (Lithops'
logging, and the prints its Swift backend makes on errors) goes to stderr.  Any
failure exits with status 1 and a message on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_INTERNAL_CONTAINER = "lithops-internal"


class Failure(Exception):
    """A failure worth one clear line on stderr."""


def map_fn(obj):
    """Count the words of one object, as the benchmark's reference count does."""
    import collections
    import re
    data = obj.data_stream.read()
    # bytes.lower() lowers ASCII letters only, so lowering first and matching
    # [a-z0-9]+ gives the same words as lowering each match of [A-Za-z0-9]+.
    counts = collections.Counter(re.findall(rb"[a-z0-9]+", data.lower()))
    return {word.decode("ascii"): n for word, n in counts.items()}


def reduce_fn(results):
    """Add up the maps' counts."""
    import collections
    total = collections.Counter()
    for counts in results:
        total.update(counts)
    return dict(total)


def digest(counts: dict[str, int]) -> str:
    text = "\n".join(f"{w}\t{n}" for w, n in sorted(counts.items()))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# -- Swift, with the standard library -------------------------------------------------
def _swift(method: str, url: str, token: str, timeout: float = 60.0) -> bytes:
    request = urllib.request.Request(url, method=method, headers={"X-Auth-Token": token})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        if method == "DELETE" and e.code == 404:
            return b""
        raise Failure(f"{method} {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise Failure(f"{method} {url}: {e.reason}") from e


def _object_url(storage_url: str, container: str, name: str = "") -> str:
    url = f"{storage_url.rstrip('/')}/{urllib.parse.quote(container, safe='')}"
    return f"{url}/{urllib.parse.quote(name)}" if name else url


def ensure_container(storage_url: str, token: str, container: str) -> None:
    """Lithops' Swift backend never creates its storage bucket: do it (PUT is idempotent)."""
    _swift("PUT", _object_url(storage_url, container), token)


def clean_internal(storage_url: str, token: str, container: str, executor_id: str) -> None:
    """Delete the job data this run left in Lithops' own container (done here, in the
    foreground, rather than by the cleaner process Lithops would leave behind)."""
    marker = ""
    names: list[str] = []
    while True:
        query = urllib.parse.urlencode({"format": "json", "prefix": "lithops.jobs/",
                                        "marker": marker})
        listing = json.loads(_swift("GET", f"{_object_url(storage_url, container)}?{query}",
                                    token) or b"[]")
        if not listing:
            break
        names += [o["name"] for o in listing if executor_id in o["name"]]
        marker = listing[-1]["name"]
    for name in names:
        _swift("DELETE", _object_url(storage_url, container, name), token)


# -- the job ---------------------------------------------------------------------------
def read_job() -> dict:
    try:
        job = json.load(sys.stdin)
    except ValueError as e:
        raise Failure(f"stdin is not one JSON object: {e}") from e
    if not isinstance(job, dict):
        raise Failure("stdin is not one JSON object")
    missing = [k for k in ("token", "storage_url", "container", "objects", "workdir")
               if not job.get(k)]
    if missing:
        raise Failure(f"the job lacks {', '.join(missing)}")
    if not isinstance(job["objects"], list) or not all(isinstance(o, str) and o
                                                        for o in job["objects"]):
        raise Failure("'objects' must be a list of object names")
    if not os.path.isdir(job["workdir"]):
        raise Failure(f"workdir {job['workdir']} is not a directory")
    return job


def lithops_config(job: dict) -> dict:
    internal = job.get("internal_container") or DEFAULT_INTERNAL_CONTAINER
    return {
        "lithops": {
            "backend": "localhost",
            "storage": "swift",
            "log_level": "WARNING",
            # The job data is deleted by clean_internal, after the timing and in the
            # foreground, not by a detached cleaner process outliving this script.
            "data_cleaner": False,
        },
        "localhost": {
            # Lithops' default runtime is the *name* of the interpreter ("python"),
            # looked up on PATH: the workers must run this venv's interpreter.
            "runtime": sys.executable,
            "worker_processes": int(job.get("worker_processes") or os.cpu_count() or 1),
        },
        "swift": {
            # With a token, Lithops uses token + endpoint and never authenticates, but
            # its config loader insists on the Keystone keys: dummies.
            "token": job["token"],
            "endpoint": job["storage_url"].rstrip("/"),
            "storage_bucket": internal,
            "auth_url": "http://unused.invalid/v3",
            "user_id": "unused",
            "project_id": "unused",
            "password": "unused",
            "region": "unused",
        },
    }


def merge(config: dict, overrides: dict) -> dict:
    """``overrides`` merged over ``config``, section by section."""
    if not isinstance(overrides, dict):
        raise Failure("'lithops_config' must be a JSON object")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge(config[key], value)
        else:
            config[key] = value
    return config


def run(job: dict) -> dict:
    workdir = os.path.abspath(job["workdir"])
    # Lithops keeps its runner, its job files and its logs in $TMPDIR/lithops-$USER, and
    # its localhost workers inherit the environment: a directory of this run's own.
    tmp = os.path.join(workdir, "lithops-tmp")
    os.makedirs(tmp, exist_ok=True)
    os.environ["TMPDIR"] = tmp

    config = merge(lithops_config(job), job.get("lithops_config") or {})
    config_file = os.path.join(workdir, "lithops_config.json")  # for the record, and
    with open(config_file, "w") as f:                           # lithops' CLI (YAML ⊃ JSON)
        json.dump(config, f, indent=2)
    os.chmod(config_file, 0o600)

    import logging

    import lithops
    logging.getLogger("lithops").setLevel(logging.WARNING)

    storage_url, token = job["storage_url"].rstrip("/"), job["token"]
    internal = config["swift"]["storage_bucket"]
    ensure_container(storage_url, token, internal)
    container = job["container"]
    iterdata = [f"swift://{container}/{name}" for name in job["objects"]]

    started = time.perf_counter()
    fexec = lithops.FunctionExecutor(config=config, log_level="WARNING")
    try:
        fexec.map_reduce(map_fn, iterdata, reduce_fn)
        counts = fexec.get_result()
        wall = time.perf_counter() - started
    finally:
        try:
            fexec.__exit__(None, None, None)  # stops the monitor and the local workers
        except Exception as e:
            print(f"lithops_wordcount: warning: shutting Lithops down: {e!r}", file=sys.stderr)
    if not isinstance(counts, dict):
        raise Failure(f"the reduce returned {type(counts).__name__}, not a dict: {counts!r:.200}")
    try:
        clean_internal(storage_url, token, internal, fexec.executor_id)
    except Failure as e:
        print(f"lithops_wordcount: warning: cleaning {internal}: {e}", file=sys.stderr)
    return {"wall_s": round(wall, 3), "words": sum(counts.values()),
            "distinct": len(counts), "digest": digest(counts)}


def main() -> int:
    # Lithops' Swift backend print()s its errors and its workers are subprocesses: fd 1
    # goes to stderr for the whole run, and only the result goes to the real stdout.
    sys.stdout.flush()
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        result = run(read_job())
    except Failure as e:
        print(f"lithops_wordcount: {e}", file=sys.stderr)
        return 1
    except BaseException as e:  # anything Lithops raises, the maps' errors included
        import traceback
        traceback.print_exc(file=sys.stderr)
        print(f"lithops_wordcount: Lithops word count failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
