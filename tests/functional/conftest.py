"""A real dev cluster (proxy, account, container, four object servers, tempauth,
real rings) shared by the functional tests, and the guests they run."""

import os

import pytest

from zerocompute.dev.devcluster import DevCluster
from zerocompute.guests import build_c_guest, source_path


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("devcluster")
    dev = DevCluster(str(directory)).start()
    yield dev
    dev.stop(wipe=True)


@pytest.fixture(scope="session")
def wordcount_wasm():
    with open(build_c_guest(source_path("wordcount.c")), "rb") as f:
        return f.read()


@pytest.fixture(scope="session")
def swift(cluster):
    """test:tester's python-swiftclient connection."""
    return cluster.connection()


@pytest.fixture
def unique(request):
    """A name unique to the test, for containers."""
    return request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40] \
        + "-" + os.urandom(3).hex()
