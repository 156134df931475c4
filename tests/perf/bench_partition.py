"""Why CRC32 partitions map output: balance and speed against MD5 and SHA-256.

Run from the repository: ``.venv/bin/python -m tests.perf.bench_partition``.

Real keys: every word (``[A-Za-z0-9_]+``, lower-cased) of the installed Swift
package's source files, as a word count would emit them (one record per
occurrence), and their distinct words; plus URL-like keys of a web log.  For
R reduce partitions: the largest partition against the mean (1.0 is perfect
balance) by records and by distinct keys, and each function's speed.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
import sys
import time
import zlib

import swift

WORD = re.compile(rb"[A-Za-z0-9_]+")


def swift_words() -> list[bytes]:
    words = []
    root = os.path.dirname(swift.__file__)
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    words.extend(w.lower() for w in WORD.findall(f.read()))
    return words


def urls(count: int = 200_000) -> list[bytes]:
    return [f"/v1/AUTH_{i % 37}/c{i % 101}/obj-{(i * 7919) % 50021}.html".encode()
            for i in range(count)]


FUNCTIONS = {
    "crc32": lambda key, r: zlib.crc32(key) % r,
    "md5": lambda key, r: int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest()[:8],
                                         "big") % r,
    "sha256": lambda key, r: int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % r,
}


def imbalance(keys: list[bytes], fn, r: int) -> float:
    loads = [0] * r
    for key in keys:
        loads[fn(key, r)] += 1
    return max(loads) / statistics.mean(loads)


def speed(keys: list[bytes], fn) -> float:
    started = time.perf_counter()
    for key in keys:
        fn(key, 16)
    return len(keys) / (time.perf_counter() - started) / 1e6


def main() -> int:
    words = swift_words()
    sets = {"swift words (records)": words, "swift words (distinct)": sorted(set(words)),
            "web-log paths (records)": urls()}
    print(f"{len(words):,} word records, {len(set(words)):,} distinct words")
    for name, keys in sets.items():
        print(f"{name}: {len(keys):,} keys; largest partition / mean partition")
        for r in (3, 16, 64):
            row = "  ".join(f"{fn_name} {imbalance(keys, fn, r):.3f}"
                            for fn_name, fn in FUNCTIONS.items())
            print(f"  R={r:<3} {row}")
    print("speed, million keys per second (Python, one core):")
    print("  " + "  ".join(f"{n} {speed(words, fn):.2f}" for n, fn in FUNCTIONS.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
