"""The dev cluster as several hosts: each server in its own network namespace, on a
bridge, every link limited by tc.  What crosses the links is read from their
counters: a data-local job moves almost nothing; downloading the same objects
moves all of them."""

import subprocess

import pytest

from tests.functional.helpers import own_cluster
from zerocompute.client import submit_job
from zerocompute.dev.hosts import available

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))
OBJECTS, SIZE = 8, 4 << 20


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    yield from own_cluster(tmp_path_factory, "hosts", hosts=True, link_rate="1gbit")


@pytest.fixture(scope="module")
def loaded(hosts, wordcount_wasm):
    swift = hosts.connection()
    swift.put_container("apps")
    swift.put_object("apps", "wordcount.wasm", wordcount_wasm)
    swift.put_container("in")
    line = b"the quick brown fox jumps over the lazy dog\n"
    for i in range(OBJECTS):
        swift.put_object("in", f"o{i}", line * (SIZE // len(line)))
    return swift


def crossed(cluster, before, names):
    network = cluster.network
    numbers = {s.name: i for i, s in enumerate(cluster.servers)}
    return sum(sum(network.link_bytes(numbers[n])) - sum(before[numbers[n]]) for n in names)


def snapshot(cluster):
    return [cluster.network.link_bytes(i) for i in range(len(cluster.servers))]


def test_every_server_has_its_own_address_and_a_limited_link(hosts):
    addresses = {hosts.address(s) for s in hosts.servers if s.kind != "memcached"}
    assert len(addresses) == len([s for s in hosts.servers if s.kind != "memcached"])
    assert hosts.proxy_url.startswith(f"http://{hosts.address(hosts.server('proxy'))}:")
    for number, server in enumerate(hosts.servers):
        if server.kind == "memcached":
            continue
        shown = subprocess.run(["tc", "qdisc", "show", "dev", hosts.network.veth(number)],
                               capture_output=True, text=True).stdout
        assert "tbf" in shown and "rate 1Gbit" in shown, shown
    ring = hosts.object_ring()
    assert {d["ip"] for d in ring.devs} == {hosts.address(s) for s in hosts.object_servers}


def test_a_data_local_job_moves_almost_nothing_across_the_links(hosts, loaded):
    objects = [s.name for s in hosts.object_servers]
    before = snapshot(hosts)
    report = submit_job(loaded, {
        "map": {"exec": "swift://~/apps/wordcount.wasm", "args": ["count"],
                "inputs": ["swift://~/in/*"]},
        "output": "swift://~/counts/all.txt"})
    job_bytes = crossed(hosts, before, objects)
    assert report["status"] == "succeeded", report
    total = report["bytes"]["in"]
    assert total >= OBJECTS * SIZE * 0.99
    ring = hosts.object_ring()
    for task in report["tasks"]:
        _part, nodes = ring.get_nodes("AUTH_test", "in", task["input"].rsplit("/", 1)[1])
        assert task["local"]
        assert task["node"].split(":")[0] in {n["ip"] for n in nodes}

    # The client-side way: every byte crosses an object server's link and the proxy's.
    before = snapshot(hosts)
    for i in range(OBJECTS):
        loaded.get_object("in", f"o{i}")
    download_bytes = crossed(hosts, before, objects)
    proxy_bytes = crossed(hosts, before, ["proxy"])
    assert download_bytes >= total and proxy_bytes >= 2 * total  # in from a node, out
    # The executable (once per server), task frames, outputs and container updates.
    assert job_bytes < 0.02 * total, (job_bytes, total)
