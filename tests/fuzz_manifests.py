"""Malformed and hostile manifests, generated from a seed (shared by the unit and the
functional fuzz tests): wrong types, huge strings, deep nesting, path traversal,
foreign accounts, invalid UTF-8, header injection."""

from __future__ import annotations

import copy
import json
import random

GOOD = {"name": "fuzz", "map": {"exec": "swift://~/apps/wc.wasm", "args": ["count"],
                                "env": {"A": "1"}, "inputs": ["swift://~/in/*"]},
        "output": "swift://~/out/*.wc"}
HOSTILE_STRINGS = ["", "../../etc/passwd", "swift://~/../x", "swift://AUTH_test2/c/o",
                   "swift://AUTH_test2/c/*", "swift:///c/o", "swift://~/c/\r\nX-Injected: 1",
                   "swift://~/c/\0", "\ud800", "x" * 70_000, "swift://~/*/o", "swift://~/c/**",
                   "swift://~/apps/wc.exe", "http://example.invalid/", "~", "*", "%00", "\n"]
HOSTILE_VALUES = [None, True, -1, 0, 1.5, 10 ** 30, [], {}, [[[[]]]], {"a": {"b": {}}},
                  "text", ["x"] * 5000, {"k" * 300: "v"}]
PATHS = [("name",), ("map",), ("map", "exec"), ("map", "args"), ("map", "env"),
         ("map", "inputs"), ("map", "split_size"), ("output",), ("limits",),
         ("limits", "time_s"), ("limits", "memory_mb"), ("scheduler",), ("backup_tasks",),
         ("reduce",), ("reduce", "partitions"), ("combine",), ("outputs",), ("steps",),
         ("records",), ("bogus",), ("map", "inputs", 0), ("map", "args", 0),
         ("map", "env", "A")]


def _set(doc: dict, path: tuple, value) -> None:
    target = doc
    for key in path[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(key, {})
        elif isinstance(target, list) and isinstance(key, int) and key < len(target):
            target = target[key]
        else:
            return
    last = path[-1]
    if isinstance(target, dict):
        target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value


def manifest_bodies(count: int, seed: int = 7) -> list[bytes]:
    """``count`` bodies, none of which a cluster may run."""
    rng = random.Random(seed)
    bodies = []
    while len(bodies) < count:
        kind = rng.random()
        if kind < 0.05:
            depth = rng.choice([100, 5000, 200_000])
            bodies.append(b'{"map":' + b"[" * depth + b"]" * depth + b"}")
            continue
        if kind < 0.10:
            raw = bytearray(json.dumps(GOOD).encode())
            for _ in range(rng.randint(1, 5)):
                raw[rng.randrange(len(raw))] = rng.choice([0xff, 0xc3, 0x00, 0x80, ord("{")])
            bodies.append(bytes(raw))
            continue
        doc = copy.deepcopy(GOOD)
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(HOSTILE_STRINGS) if rng.random() < 0.5 \
                else rng.choice(HOSTILE_VALUES)
            _set(doc, rng.choice(PATHS), value)
        try:
            body = json.dumps(doc).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            continue
        # Inputs and executables of the cluster under test do not exist, so even a
        # mutation that leaves the manifest well formed is refused (4xx).
        bodies.append(body)
    return bodies
