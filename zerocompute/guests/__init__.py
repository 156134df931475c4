"""Guest programs shipped with zerocompute, and building them to WASI.

C guests are compiled with the ``zig cc`` of the PyPI package ``ziglang``
(``pip install zerocompute[guests]``): no system toolchain is needed.
Builds are cached by the source's hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import subprocess
import sys
from importlib import resources

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "zerocompute", "guests")
HEADER = "zerocompute.h"


def source_path(name: str) -> str:
    """The path of a shipped guest source, e.g. ``wordcount.c``."""
    return str(resources.files(__name__).joinpath(name))


def build_c_guest(source: str, cache_dir: str = CACHE_DIR, target: str = "wasm32-wasi",
                  flags: tuple[str, ...] = ()) -> str:
    """Compile a C file to a wasm32-wasi command (or ``target="native"``); return its path.

    ``zerocompute.h`` (records in the job's form) is on the include path; ``flags`` go
    to the compiler too.  WebAssembly builds have its SIMD (``-msimd128``, which
    wasmtime runs): zerocompute.h then checks records sixteen bytes a step.
    """
    if target.startswith("wasm") and "-msimd128" not in flags:
        flags = (*flags, "-msimd128")
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in (source, source_path(HEADER)):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest = digest.hexdigest()[:16]
    os.makedirs(cache_dir, exist_ok=True)
    base = os.path.splitext(os.path.basename(source))[0]
    suffix = ".wasm" if target.startswith("wasm") else f".{target}"
    output = os.path.join(cache_dir, f"{base}-{digest}{suffix}")
    if os.path.exists(output):
        return output
    with open(output + ".lock", "a") as lock:  # concurrent builders (executors) build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return output if os.path.exists(output) else _zig_cc(source, output, target, flags)


def _zig_cc(source: str, output: str, target: str, flags: tuple[str, ...]) -> str:
    if importlib.util.find_spec("ziglang") is None:
        raise RuntimeError("building guests needs the 'ziglang' package: "
                           "pip install 'zerocompute[guests]'")
    tmp = f"{output}.{os.getpid()}.tmp"
    command = [sys.executable, "-m", "ziglang", "cc", "-target", target, "-O2", "-s", *flags,
               "-I", os.path.dirname(source_path(HEADER)), source, "-o", tmp]
    env = dict(os.environ)
    if "ZIG_GLOBAL_CACHE_DIR" not in env and not env.get("HOME"):
        # zig keeps its own cache (its WASI libc, built once) under $HOME; an object
        # server's executors run without one.
        env["ZIG_GLOBAL_CACHE_DIR"] = os.path.join(os.path.dirname(output), "zig-cache")
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"compiling {source} failed:\n{err.stderr}") from err
    os.replace(tmp, output)
    return output
