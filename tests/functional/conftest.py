"""A real dev cluster (proxy, account, container, four object servers, tempauth,
real rings) shared by the functional tests, and the guests they run."""

import os

import pytest

from tests.functional.helpers import own_cluster
from zerocompute.guests import build_c_guest, source_path


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "devcluster")


def built(source: str) -> bytes:
    with open(build_c_guest(source), "rb") as f:
        return f.read()


@pytest.fixture(scope="session")
def wordcount_wasm():
    return built(source_path("wordcount.c"))


@pytest.fixture(scope="session")
def sleepy_wasm():
    """tests/guests/sleepy.c: sleeps the milliseconds it is given, then copies its input."""
    return built(os.path.join(os.path.dirname(__file__), "..", "guests", "sleepy.c"))


@pytest.fixture(scope="session")
def swift(cluster):
    """test:tester's python-swiftclient connection."""
    return cluster.connection()


@pytest.fixture
def unique(request):
    """A name unique to the test, for containers."""
    return request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40] \
        + "-" + os.urandom(3).hex()
