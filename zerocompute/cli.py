"""The ``zerocompute`` command: the dev cluster, the demo and job submission."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from zerocompute.dev.devcluster import DEFAULT_DIR, DevCluster


def _devcluster(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.dir)
    if args.action == "start":
        cluster.start()
        print(f"dev cluster running in {cluster.directory}")
        print(f"auth URL {cluster.auth_url}; users test:tester/testing, "
              "test:tester2/testing2, test:tester3/testing3, test2:tester2/testing2, "
              "admin:admin/admin")
        print(f'for the swift command: eval "$(zerocompute devcluster env --dir {args.dir})"')
    elif args.action == "stop":
        cluster.stop()
        print("dev cluster stopped")
    elif args.action == "status":
        states = cluster.status()
        if not states:
            print(f"no dev cluster in {cluster.directory}")
            return 1
        for name, state in states.items():
            print(f"{name:<10} {state}")
        return 0 if all(s == "running" for s in states.values()) else 1
    elif args.action == "env":
        if not cluster.state:
            print(f"no dev cluster in {cluster.directory}", file=sys.stderr)
            return 1
        sys.stdout.write(cluster.env_lines(args.user))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from swiftclient.client import Connection

    from zerocompute.client import JobRejected, submit_job
    missing = [v for v in ("ST_AUTH", "ST_USER", "ST_KEY") if not os.environ.get(v)]
    if missing:
        print(f"set {', '.join(missing)} (e.g. eval \"$(zerocompute devcluster env)\")",
              file=sys.stderr)
        return 2
    with open(args.manifest, "rb") as f:
        manifest = f.read()
    conn = Connection(os.environ["ST_AUTH"], os.environ["ST_USER"], os.environ["ST_KEY"],
                      retries=0)
    try:
        report = submit_job(conn, manifest)
    except JobRejected as err:
        print(f"job rejected: {err}", file=sys.stderr)
        return 1
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0 if report.get("status") == "succeeded" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zerocompute", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("devcluster", help="a real Swift cluster on loopback")
    dev.add_argument("action", choices=["start", "stop", "status", "env"])
    dev.add_argument("--dir", default=DEFAULT_DIR, help=f"where it lives (default {DEFAULT_DIR})")
    dev.add_argument("--user", default="test:tester", help="tempauth user for 'env'")
    dev.set_defaults(func=_devcluster)

    demo = sub.add_parser("demo", help="word count on a fresh dev cluster")
    demo.add_argument("--dir", help="cluster directory (default: a new temporary one)")
    demo.add_argument("--keep", action="store_true", help="leave the cluster running")
    demo.set_defaults(func=lambda a: importlib.import_module("zerocompute.dev.demo").run_demo(
        a.dir, a.keep))

    submit = sub.add_parser("submit", help="run a job (manifest file) as $ST_USER")
    submit.add_argument("manifest")
    submit.set_defaults(func=_submit)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
