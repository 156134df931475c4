"""Fixtures the proxy side's unit tests share (their fakes: ``tests/unit/fakes.py``)."""

import pytest

from tests.unit.fakes import WASM, FakeDispatcher, FakeSwift, config, make_ring, restore_ring
from zerocompute.middleware.proxy import ProxyMiddleware


@pytest.fixture(scope="module")
def swift_dir(tmp_path_factory):
    """An object ring of three fake object servers (ports 1, 2, 3)."""
    directory = str(tmp_path_factory.mktemp("ring"))
    saved = make_ring(directory)
    yield directory
    restore_ring(saved)


@pytest.fixture
def cluster(swift_dir):
    """The proxy filter over a fake Swift holding an executable and eight inputs, its
    dispatcher talking to three fake object servers."""
    app = FakeSwift()
    app.objects["/v1/AUTH_a/apps/g.wasm"] = WASM
    for i in range(8):
        app.objects[f"/v1/AUTH_a/in/part-{i}"] = f"input {i}\n".encode()
    mw = ProxyMiddleware(app, config(swift_dir))
    mw.dispatcher = FakeDispatcher({1: {}, 2: {}, 3: {}})
    return mw
