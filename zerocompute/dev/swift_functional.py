"""Swift's own functional tests against the dev cluster, zerocompute in its pipeline.

``make test-swift`` (``python -m zerocompute.dev.swift_functional``) fetches
the source distribution of the installed Swift version (the wheel has no
``test/``), starts a dev cluster of its own (the suite deletes every
container of its accounts), points the suite at it with
``SWIFT_TEST_CONFIG_FILE`` and runs the files below with pytest.  First, as
both of the suite's accounts, it runs one job of every kind
(:mod:`zerocompute.dev.every_job`; ``--no-jobs`` skips them): Swift must
look like Swift to everyone, whatever jobs its users ran.  Other arguments
go to pytest (``-k``, ``-x`` ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata

from zerocompute.dev.devcluster import DevCluster
from zerocompute.dev.every_job import run_every_kind_of_job

SUITE = ["test_object.py", "test_container.py", "test_account.py", "tests.py",
         "test_access_control.py", "test_symlink.py", "test_slo.py", "test_dlo.py"]
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "zerocompute", "swift-tests")


def swift_tests(version: str) -> str:
    """The directory holding Swift ``version``'s ``test`` package (fetched once)."""
    root = os.path.join(CACHE, version)
    if os.path.isdir(os.path.join(root, "test", "functional")):
        return root
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"swift=={version}", "-d", download],
                       check=True)
        (archive,) = os.listdir(download)
        staging = tempfile.mkdtemp(dir=CACHE)
        with tarfile.open(os.path.join(download, archive)) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.split("/", 2)[1:2] == ["test"]]
            tar.extractall(staging, members=members, filter="data")
        (top,) = os.listdir(staging)
        os.replace(os.path.join(staging, top), root)
        os.rmdir(staging)
    return root


def test_config(cluster: DevCluster) -> str:
    """The suite's config: SAIO's users, on the dev cluster's proxy."""
    path = os.path.join(cluster.directory, "swift-functional.conf")
    with open(path, "w") as f:
        f.write(f"""[func_test]
auth_uri = {cluster.auth_url}
account = test
username = tester
password = testing
account2 = test2
username2 = tester2
password2 = testing2
username3 = tester3
password3 = testing3
collate = C
""")
    return path


def main(argv: list[str]) -> int:
    jobs_first = "--no-jobs" not in argv
    argv = [a for a in argv if a != "--no-jobs"]
    version = metadata.version("swift")
    root = swift_tests(version)
    with tempfile.TemporaryDirectory(prefix="zc-swift-functional-") as directory:
        cluster = DevCluster(directory).start()
        try:
            if cluster.data_note:
                print(f"note: {cluster.data_note}", file=sys.stderr)
            env = dict(os.environ, SWIFT_TEST_CONFIG_FILE=test_config(cluster))
            if not jobs_first:
                print("(--no-jobs: on a cluster that has run no job)")
            for user in ("test:tester", "test2:tester2") if jobs_first else ():
                print(f"First, every kind of job as {user}:", flush=True)
                run_every_kind_of_job(cluster.connection(user))
            print(f"Swift {version}'s functional tests against {cluster.proxy_url} "
                  "(zerocompute in the pipeline)", flush=True)
            files = [os.path.join("test", "functional", name) for name in SUITE]
            return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra",
                                   "-p", "no:cacheprovider", *files, *argv],
                                  cwd=root, env=env).returncode
        finally:
            cluster.stop(wipe=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
