"""Sending a signed task group straight to an object server, as the proxy would.

Tests and benchmarks use it to load one server with "another tenant's" work,
or to show what an object server does with a request that skipped the proxy.
"""

from __future__ import annotations

import hashlib
import urllib.request

from zerocompute import wire
from zerocompute.manifest import Limits


def task_group(executable: bytes, args: list[str], paths: list[str],
               job: str = "direct", runtime: str = "wasm") -> wire.TaskGroup:
    """A group of one task per object-server path (``/dev/part/a/c/o``)."""
    specs = []
    for n, path in enumerate(paths):
        _, device, part, rest = path.split("/", 3)
        specs.append(wire.TaskSpec(f"{job}-{n}", device, int(part), "/" + rest))
    return wire.TaskGroup(job=job, exec_etag=hashlib.md5(executable).hexdigest(),
                          exec_name="guest.wasm", runtime=runtime, args=tuple(args), env=(),
                          limits=Limits.from_conf({}), tasks=tuple(specs))


def group_request(secret: str, port: int, group: wire.TaskGroup,
                  executable: bytes = b"") -> urllib.request.Request:
    """``EXECUTE /zerocompute/tasks`` on the object server at ``port``, signed."""
    body, headers = wire.sign_group(secret, group)
    return urllib.request.Request(f"http://127.0.0.1:{port}{wire.TASKS_PATH}",
                                  data=body + executable, method=wire.METHOD, headers=headers)


def task_request(cluster, port: int, path: str, executable: bytes, args: list[str],
                 task_id: str = "direct") -> urllib.request.Request:
    """One task on the object server at ``port``: signed, executable attached."""
    return group_request(cluster.secret, port, task_group(executable, args, [path], task_id),
                         executable)


def frames(body: bytes) -> list[tuple[wire.TaskResult, bytes]]:
    """The frames of an object server's answer, read from its whole body."""
    out = []
    while body:
        line, _, body = body.partition(b"\n")
        result = wire.TaskResult.parse(line)
        out.append((result, body[:result.stdout_bytes]))
        body = body[result.stdout_bytes:]
    return out


def object_on(cluster, server, account_user: str, container: str, count: int = 1) -> list[str]:
    """Create ``count`` objects that ``server`` holds; return their object-server paths."""
    conn = cluster.connection(account_user)
    conn.put_container(container)
    account = conn.get_auth()[0].rsplit("/", 1)[1]
    ring = cluster.object_ring()
    paths = []
    for i in range(1000):
        part, nodes = ring.get_nodes(account, container, f"o{i}")
        node = next((n for n in nodes if n["port"] == server.port), None)
        if node:
            conn.put_object(container, f"o{i}", b"x\n")
            paths.append(f"/{node['device']}/{part}/{account}/{container}/o{i}")
            if len(paths) == count:
                break
    return paths
