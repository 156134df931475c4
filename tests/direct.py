"""Sending a signed task straight to an object server, as the proxy would.

Tests and benchmarks use it to load one server with "another tenant's" work,
or to show what an object server does with a request that skipped the proxy.
"""

from __future__ import annotations

import hashlib
import urllib.request

from zerocompute import wire
from zerocompute.manifest import Limits


def task_request(cluster, port: int, path: str, executable: bytes, args: list[str],
                 task_id: str = "direct") -> urllib.request.Request:
    """``EXECUTE path`` on the object server at ``port``: signed, executable attached."""
    headers = wire.sign_task(cluster.secret, path, {
        "job": task_id, "task": task_id, "exec_etag": hashlib.md5(executable).hexdigest(),
        "exec_name": "guest.wasm", "args": args, "env": [], "runtime": "wasm",
        "limits": Limits.from_conf({}).to_dict()})
    return urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=executable,
                                  method=wire.METHOD, headers=headers)


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
