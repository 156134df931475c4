"""Before any test runs: every C guest built once, by the process that starts the run.

On a fresh machine zig first builds its WASI libc (about 20 s on both cores, at
the servers' priority).  Built here, before pytest-xdist starts its workers,
it cannot starve the executors (which run at nice 19) of a test that another
worker is running against a guest's wall-clock limit.
"""

import glob
import os

from zerocompute.guests import build_c_guest, source_path
from zerocompute.sandbox import shuffle_core

GUESTS = os.path.join(os.path.dirname(__file__), "guests")
SHIPPED = ("wordcount.c", "algorithms.c", "terasort.c")


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: its controller built them
        return
    for source in sorted(glob.glob(os.path.join(GUESTS, "*.c"))):
        build_c_guest(source)
    for name in SHIPPED:
        build_c_guest(source_path(name))
    shuffle_core.machine_build()
