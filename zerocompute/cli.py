"""The ``zerocompute`` command: run jobs and watch them, deploy guests, the dev cluster.

Authentication is python-swiftclient's own, option for option: ``-A/-U/-K``,
``--os-*`` (Keystone included) and the ``ST_*``/``OS_*`` variables, given
before the subcommand as with ``swift``::

    eval "$(zerocompute devcluster env)"
    zerocompute deploy wordcount.wasm
    zerocompute run job.json              # a live progress bar, then a summary
    zerocompute run --async job.json      # prints the job id
    zerocompute status JOB | cancel JOB | logs JOB
    zerocompute jobs                      # the account's jobs, newest first
    zerocompute timeline JOB -o job.png   # where the time went (.svg, .html too)

Every error is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from zerocompute.dev.devcluster import DEFAULT_DIR, DevCluster
from zerocompute.page import human_bytes
from zerocompute.progress import ProgressBar

CONTENT_TYPES = {".wasm": "application/wasm", ".py": "text/x-python"}
WASM_MAGIC = b"\0asm"


class CliError(Exception):
    """What went wrong, in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# -- the connection -------------------------------------------------------------------
def connection(args: argparse.Namespace) -> Any:
    """A swiftclient Connection from swiftclient's own options and variables."""
    from zerocompute.client import connect_swift
    try:
        return connect_swift({k: v for k, v in vars(args).items() if k != "func"})
    except ValueError as err:
        raise CliError(str(err), 2) from None


def describe(err: BaseException, args: argparse.Namespace) -> str:
    """One line for a failure of swiftclient or of the network."""
    from swiftclient.client import ClientException
    if isinstance(err, ClientException):
        if err.http_status == 401:
            return "authorization failed (401): check the user and key"
        if err.http_status:
            return f"{err.msg}: {err.http_status} {err.http_reason}".strip()
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    where = getattr(args, "auth", None) or "the cluster"
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "Connection refused" in reason or "Failed to establish" in reason:
        reason = "connection refused"
    return f"cannot reach {where}: {reason} (is the cluster running?)"


# -- run, status, cancel, logs ----------------------------------------------------------
def read_manifest(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            body = f.read()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    try:
        json.loads(body)
    except ValueError as err:
        raise CliError(f"{path} is not JSON: {err}") from None
    return body


def _run(args: argparse.Namespace) -> int:
    from zerocompute.client import submit_async, wait_for_job
    body = read_manifest(args.manifest)
    conn = connection(args)
    accepted = submit_async(conn, body)
    if args.async_:
        if args.json:
            print(json.dumps(accepted, indent=1))
        else:
            print(accepted["job"])
            print(f"status: zerocompute status {accepted['job']}", file=sys.stderr)
        return 0
    bar = ProgressBar(accepted["job"], enabled=not args.no_progress and sys.stderr.isatty())
    try:
        state = wait_for_job(conn, accepted["job"], bar.update)
    except KeyboardInterrupt:
        bar.close()
        raise CliError(f"stopped watching; job {accepted['job']} still runs "
                       f"(zerocompute cancel {accepted['job']})", 130) from None
    bar.close()
    return show_final(state, args.json)


def _status(args: argparse.Namespace) -> int:
    from zerocompute.client import job_status
    state = job_status(connection(args), args.job)
    if args.json:
        print(json.dumps(state, indent=1))
        return 0
    if state.get("report"):
        return show_final(state, False)
    progress = state.get("progress", {})
    print(f"job       {state.get('name')} ({state['job']})")
    print(f"status    {state['status']}"
          + (" (cancel requested)" if state.get("cancel_requested") else ""))
    print(f"progress  {progress.get('done', 0)}/{progress.get('tasks', 0)} tasks done, "
          f"{progress.get('failed', 0)} failed")
    print(f"proxy     {state.get('owner')}")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from zerocompute.client import list_jobs
    jobs = list_jobs(connection(args), args.limit, args.marker or "")
    if args.json:
        print(json.dumps(jobs, indent=1))
        return 0
    if not jobs:
        print("no jobs", file=sys.stderr)
        return 0
    rows = [("JOB", "NAME", "KIND", "STATUS", "SUBMITTED (UTC)", "TIME", "TASKS", "FAILED",
             "USER")]
    for job in jobs:
        rows.append((job["job"], job["name"], job["kind"], job["status"],
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(job["submitted"])),
                     f"{job['ms'] / 1000:.1f} s" if job.get("ended") else "-",
                     str(job["tasks"]), str(job["failed"]), job["user"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def _timeline(args: argparse.Namespace) -> int:
    from zerocompute.client import job_status
    state = job_status(connection(args), args.job)
    if args.output.endswith((".html", ".htm")):
        from zerocompute.page import job_page
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(job_page(state))
    else:
        from zerocompute.plot import draw_timeline
        if not state.get("report"):
            raise CliError(f"job {state['job']} is {state['status']}: its timeline comes "
                           "with its report, when it ends")
        try:
            draw_timeline(state["report"], args.output)
        except (RuntimeError, ValueError) as err:
            raise CliError(str(err)) from None
    print(args.output)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from zerocompute.client import cancel_job, wait_for_job
    conn = connection(args)
    state = cancel_job(conn, args.job)
    if state["status"] == "running" and not args.no_wait:
        state = wait_for_job(conn, args.job)
    if args.json:
        print(json.dumps(state, indent=1))
    else:
        print(f"job {state['job']}: {state['status']}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from zerocompute.client import job_status
    state = job_status(connection(args), args.job)
    report = state.get("report")
    if report is None:
        raise CliError(f"job {state['job']} is {state['status']}: its logs come with its "
                       "report, when it ends")
    tasks = [t for t in report.get("tasks", [])
             if (args.task is None or t["task"] == args.task)
             and (args.all or t.get("stderr") or t.get("error"))]
    if args.task is not None and not tasks:
        raise CliError(f"no task {args.task} with logs in job {state['job']}")
    for task in tasks:
        print(f"== {task['task']} {task['input']} on {task.get('node') or '-'}: "
              f"exit {task.get('exit')}" + (f", {task['error']}" if task.get("error") else ""))
        if task.get("stderr"):
            sys.stdout.write(task["stderr"] if task["stderr"].endswith("\n")
                             else task["stderr"] + "\n")
    if not tasks:
        print(f"job {state['job']}: no task wrote to stderr or failed", file=sys.stderr)
    return 0


def show_final(state: dict[str, Any], as_json: bool) -> int:
    """The report as a summary (or raw JSON); exit 0 only if the job succeeded."""
    report = state.get("report") or {}
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print(summary(state["job"], report))
    return 0 if report.get("status") == "succeeded" else 1


def summary(job_id: str, report: dict[str, Any]) -> str:
    counts = report.get("counts", {})
    data = report.get("bytes", {})
    usage = report.get("usage", {})
    tasks = report.get("tasks", [])
    reused = sum(1 for t in tasks if t.get("reused"))
    through = data.get("through_proxy", 0)
    share = f" ({100 * through / data['in']:.2f}% of the input)" if data.get("in") else ""
    rows = [
        ("job", f"{report.get('job')} ({job_id})"),
        ("status", report.get("status", "?") + (f": {report['error']}"
                                                 if report.get("error") else "")),
        ("tasks", f"{counts.get('tasks', 0)} ({counts.get('failed', 0)} failed, "
                  f"{counts.get('retried', 0)} retried"
                  + (f", {reused} reused after a takeover" if reused else "") + ")"),
        ("bytes", f"{human_bytes(data.get('in', 0))} in, "
                  f"{human_bytes(usage.get('bytes_written', 0))} out, "
                  f"{human_bytes(through)} through the proxy{share}"),
        ("time", f"{report.get('ms', 0) / 1000:.1f} s, guests' CPU "
                 f"{usage.get('cpu_ms', 0) / 1000:.1f} s"),
    ]
    for kind, phase in report.get("phases", {}).items():
        if phase.get("shuffle"):
            rows.append((kind, phase_line(phase)))
    counted = [f"{group}.{name} = {amount:,}"
               for group, names in (report.get("counters") or {}).items()
               for name, amount in names.items()]
    for number, text in enumerate(counted):
        rows.append(("counters" if number == 0 else "", text))
    if report.get("takeovers"):
        rows.append(("takeovers", ", ".join(f"{t['previous']} -> {t['by']}"
                                            for t in report["takeovers"])))
    outputs = report.get("outputs", [])
    for number, output in enumerate(outputs[:5]):
        rows.append(("outputs" if number == 0 else "", output))
    if len(outputs) > 5:
        rows.append(("", f"... and {len(outputs) - 5} more"))
    failed = [t for t in tasks if t.get("error") or (t.get("exit") not in (0, None))]
    for number, task in enumerate(failed[:10]):
        rows.append(("failed" if number == 0 else "",
                     f"{task['task']} {task['input']}: {task.get('error')}"))
    if len(failed) > 10:
        rows.append(("", f"... and {len(failed) - 10} more (zerocompute logs {job_id})"))
    return "\n".join(f"{name:<10}{value}" for name, value in rows)


def phase_line(phase: dict[str, Any]) -> str:
    """One phase of a MapReduce job: its guests' time, then the shuffle's by step."""
    guest = phase["guest"]
    steps = ", ".join(f"{step} {spent['wall_ms'] / 1000:.2f}"
                      for step, spent in phase["shuffle"].items())
    shuffled = ""
    if phase.get("records") is not None:
        shuffled = f"; {phase['records']:,} records, {phase['records_shuffled']:,} shuffled"
    return (f"{phase['tasks']} tasks: guests {guest['wall_ms'] / 1000:.2f} s "
            f"(CPU {guest['cpu_ms'] / 1000:.2f}), shuffle s: {steps}{shuffled}")


# -- deploy ---------------------------------------------------------------------------
def _deploy(args: argparse.Namespace) -> int:
    path = args.file
    if not os.path.isfile(path):
        raise CliError(f"no file {path}")
    name = args.name or os.path.basename(path)
    base, ext = os.path.splitext(path)
    if ext == ".c":
        if not args.compile:
            raise CliError(f"{path} is C source: add --compile to build it to WebAssembly")
        from zerocompute.guests import build_c_guest
        try:
            path = build_c_guest(path)
        except RuntimeError as err:
            raise CliError(str(err).splitlines()[0]) from None
        name = args.name or os.path.basename(base) + ".wasm"
    ext = os.path.splitext(name)[1]
    if ext not in CONTENT_TYPES:
        raise CliError(f"an executable is a .wasm or a .py object, not {name!r}")
    with open(path, "rb") as f:
        data = f.read()
    if ext == ".wasm" and not data.startswith(WASM_MAGIC):
        raise CliError(f"{path} is not a WebAssembly module")
    conn = connection(args)
    conn.put_container(args.container)
    etag = conn.put_object(args.container, name, data, content_type=CONTENT_TYPES[ext])
    print(f"swift://~/{args.container}/{name}")
    print(f"{len(data)} bytes, etag {etag}", file=sys.stderr)
    return 0


# -- benchmarks -------------------------------------------------------------------------
# name -> (module in the checkout's tests/perf, its arguments, what it compares)
BENCHMARKS = {
    "locality": ("bench_locality", ["--rate", "1gbit"],
                 "word count and grep: data-local against downloading (1 Gbit/s links)"),
    "locality-slow-links": ("bench_locality", ["--rate", "250mbit"],
                            "the same with links scaled to this box's cores per host"),
    "scale": ("bench_scale", ["--sizes", "1000"], "1,000 tiny tasks against the PUT floor"),
    "policies": ("bench_policies", [], "word count over erasure-coded against replicated "
                                       "objects"),
    "sandbox": ("bench_sandbox", [], "guest start-up and throughput"),
    "scheduler": ("bench_scheduler", [], "load-aware against random placement (long)"),
    "mapreduce": ("bench_mapreduce", [], "word count against its floors, downloading and "
                                         "Lithops; TeraSort against the PUT (long)"),
    "shuffle": ("bench_shuffle", [], "the shuffle's options: Python, WebAssembly, native C"),
    "interference": ("bench_interference", [], "another tenant's small GETs and PUTs, idle "
                                               "and under a CPU-heavy job (long)"),
}
QUICK = ["locality", "locality-slow-links", "scale", "policies"]


def checkout() -> str:
    """The zerocompute checkout this command runs from (the benchmarks live in it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, "tests", "perf")):
        raise CliError("the benchmarks live in a zerocompute checkout (tests/perf): run "
                       "'zerocompute bench' from an editable install of one")
    return root


def _bench(args: argparse.Namespace) -> int:
    if args.list:
        for name, (_module, _args, what) in BENCHMARKS.items():
            print(f"{name:<20} {what}" + ("  [default]" if name in QUICK else ""))
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        raise CliError(f"no benchmark {unknown[0]!r}; 'zerocompute bench --list' lists them")
    root = checkout()
    failed = []
    for name in args.names or QUICK:
        module, extra, what = BENCHMARKS[name]
        print(f"\n== {name}: {what}", flush=True)
        done = subprocess.run([sys.executable, "-m", f"tests.perf.{module}", *extra],
                              cwd=root)
        if done.returncode:
            failed.append(name)
    if failed:
        raise CliError(f"benchmark(s) failed: {', '.join(failed)}")
    return 0


# -- the dev cluster --------------------------------------------------------------------
def _devcluster(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.dir, hosts=args.hosts, link_rate=args.link_rate)
    if args.action == "start":
        try:
            cluster.start()
        except RuntimeError as err:
            raise CliError(f"the dev cluster did not start: {str(err).splitlines()[0]} "
                           f"(logs in {cluster.logs})") from None
        if cluster.data_note:
            print(f"zerocompute: note: {cluster.data_note}", file=sys.stderr)
        print(f"dev cluster running in {cluster.directory} (object data on "
              f"{cluster.data_filesystem()})")
        print(f"auth URL {cluster.auth_url}; users test:tester/testing, "
              "test:tester2/testing2, test:tester3/testing3, test2:tester2/testing2, "
              "admin:admin/admin")
        print(f'for the swift command: eval "$(zerocompute devcluster env --dir {args.dir})"')
    elif args.action == "stop":
        cluster.stop(wipe=args.wipe)
        print("dev cluster stopped" + (", its objects dropped" if args.wipe else ""))
    elif args.action == "status":
        states = cluster.status()
        if not states:
            raise CliError(f"no dev cluster in {cluster.directory}")
        for name, state in states.items():
            print(f"{name:<10} {state}")
        return 0 if all(s == "running" for s in states.values()) else 1
    elif args.action == "env":
        if not cluster.state:
            raise CliError(f"no dev cluster in {cluster.directory}")
        sys.stdout.write(cluster.env_lines(args.user))
    return 0


# -- the parser -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from swiftclient.shell import add_default_args
    parser = argparse.ArgumentParser(
        prog="zerocompute", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_default_args(parser)  # -A/-U/-K, --os-*, ST_*/OS_*: exactly the swift command's
    # The job API answers at once or not at all: fail fast on a dead cluster.
    parser.set_defaults(retries=1)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a job (a manifest file) and watch it")
    run.add_argument("manifest")
    run.add_argument("--async", dest="async_", action="store_true",
                     help="print the job id and return at once")
    run.add_argument("--json", action="store_true", help="the raw report, for scripts")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="a job's status and report (its id or location)")
    status.add_argument("job")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    jobs = sub.add_parser("jobs", help="the account's jobs, newest first (the history)")
    jobs.add_argument("--limit", type=int, help="at most this many (default 100)")
    jobs.add_argument("--marker", help="those after this job id (the next page)")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=_jobs)

    timeline = sub.add_parser("timeline", help="draw a job's timeline: -o job.png, .svg "
                                               "(matplotlib) or .html (its page)")
    timeline.add_argument("job")
    timeline.add_argument("-o", "--output", required=True, help="the file to write")
    timeline.set_defaults(func=_timeline)

    cancel = sub.add_parser("cancel", help="cancel a job and wait until it has stopped")
    cancel.add_argument("job")
    cancel.add_argument("--no-wait", action="store_true", help="return once asked")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(func=_cancel)

    logs = sub.add_parser("logs", help="the stderr tails and errors of a job's tasks")
    logs.add_argument("job")
    logs.add_argument("--task", help="one task (e.g. m00003)")
    logs.add_argument("--all", action="store_true", help="every task, even silent ones")
    logs.set_defaults(func=_logs)

    deploy = sub.add_parser("deploy", help="upload an executable (.wasm, .py; .c with "
                                           "--compile)")
    deploy.add_argument("file")
    deploy.add_argument("--container", default="apps", help="where (default: apps)")
    deploy.add_argument("--name", help="the object's name (default: the file's)")
    deploy.add_argument("--compile", action="store_true",
                        help="compile a .c file to wasm32-wasi first (needs ziglang)")
    deploy.set_defaults(func=_deploy)

    bench = sub.add_parser("bench", help="benchmarks, each a ratio measured side by side "
                                         "(default: the quick ones, under 15 minutes)")
    bench.add_argument("names", nargs="*", help="which (default: " + ", ".join(QUICK) + ")")
    bench.add_argument("--list", action="store_true", help="list them")
    bench.set_defaults(func=_bench)

    dev = sub.add_parser("devcluster", help="a real Swift cluster on loopback")
    dev.add_argument("action", choices=["start", "stop", "status", "env"])
    dev.add_argument("--dir", default=DEFAULT_DIR, help=f"where it lives (default {DEFAULT_DIR})")
    dev.add_argument("--user", default="test:tester", help="tempauth user for 'env'")
    dev.add_argument("--wipe", action="store_true",
                     help="with stop: drop the object data too (unmount its tmpfs)")
    dev.add_argument("--hosts", action="store_true",
                     help="with start: each server in its own network namespace (root)")
    dev.add_argument("--link-rate", help="with --hosts: tc rate of every link, e.g. 1gbit")
    dev.set_defaults(func=_devcluster)

    demo = sub.add_parser("demo", help="word count on a fresh dev cluster")
    demo.add_argument("--dir", help="cluster directory (default: a new temporary one)")
    demo.add_argument("--keep", action="store_true", help="leave the cluster running")
    demo.set_defaults(func=lambda a: importlib.import_module("zerocompute.dev.demo").run_demo(
        a.dir, a.keep))
    return parser


def main(argv: list[str] | None = None) -> int:
    from requests.exceptions import RequestException
    from swiftclient.client import ClientException

    from zerocompute.client import JobRejected
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as err:
        message, code = str(err), err.code
    except JobRejected as err:
        message, code = f"refused ({err.status}): {err}", 1
    except (ClientException, RequestException, OSError) as err:
        message, code = describe(err, args), 1
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    print(f"zerocompute: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
