"""Rebuilding an erasure-coded input from fragment archives: real pyeclib, peers as
small HTTP servers answering as object servers do."""

import io
import json
import subprocess
import sys
from dataclasses import replace

import pytest
from swift.common.storage_policy import ECStoragePolicy

from zerocompute import wire
from zerocompute.sandbox import ec

POLICY = ECStoragePolicy(2, "ec42", ec_type="liberasurecode_rs_vand", ec_ndata=4,
                         ec_nparity=2, ec_segment_size=4096)
TIMESTAMP = "1700000000.00000"


def archives(data: bytes) -> list[bytes]:
    """The k + m fragment archives of ``data``, as Swift's proxy writes them."""
    pieces = [[] for _ in range(6)]
    for start in range(0, len(data), POLICY.ec_segment_size):
        for index, fragment in enumerate(POLICY.pyeclib_driver.encode(
                data[start:start + POLICY.ec_segment_size])):
            pieces[index].append(fragment)
    return [b"".join(p) for p in pieces]


PEERS = """
import http.server, json, os, sys, threading

directory = sys.argv[1]
class Peer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(os.path.join(directory, str(self.server.server_port))) as f:
            index, timestamp = json.load(f)
        with open(os.path.join(directory, f"archive-{index}"), "rb") as f:
            archive = f.read()
        assert self.headers["X-Backend-Storage-Policy-Index"] == "2"
        wanted = self.headers.get("Range")
        offset = int(wanted[len("bytes="):-1]) if wanted else 0
        archive = archive[offset:]
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(archive)))
        self.send_header("X-Object-Sysmeta-Ec-Frag-Index", str(index))
        self.send_header("X-Backend-Timestamp", timestamp)
        self.end_headers()
        self.wfile.write(archive)
    def log_message(self, *args):
        pass
servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Peer) for _ in range(5)]
for index, server in enumerate(servers, 1):
    with open(os.path.join(directory, str(server.server_port)), "w") as f:
        json.dump([index, sys.argv[2]], f)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps([s.server_port for s in servers]), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def cluster(tmp_path):
    """Peers holding fragments 1..5, in a process of their own (fragment 0 is the local
    one): (data, archives, peers, directory)."""
    data = b"".join(b"line %d of an erasure-coded object\n" % i for i in range(2000))
    pieces = archives(data)
    directory = tmp_path / "peers"
    directory.mkdir()
    for index, piece in enumerate(pieces):
        (directory / f"archive-{index}").write_bytes(piece)
    process = subprocess.Popen([sys.executable, "-c", PEERS, str(directory), TIMESTAMP],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ports = json.loads(process.stdout.readline())
    peers = [["127.0.0.1", port, f"sd{index}", index] for index, port in enumerate(ports, 1)]
    yield data, pieces, peers, directory
    process.stdin.close()
    process.wait(timeout=10)


def code(peers, data):
    return wire.ErasureCode.from_dict({
        "k": 4, "m": 2, "ec_type": "liberasurecode_rs_vand",
        "fragment_size": POLICY.fragment_size, "segment_size": POLICY.ec_segment_size,
        "policy": 2, "partition": 7, "path": "/AUTH_a/c/o", "peers": peers,
        "timestamp": TIMESTAMP, "content_length": len(data)})


def rebuild(tmp_path, local_index, local_archive, ec_code):
    local = tmp_path / "local"
    local.write_bytes(local_archive)
    out = io.BytesIO()
    with open(local, "rb") as f:
        done = ec.rebuild(f.fileno(), local_index, ec_code, out)
    return done, out.getvalue()


def test_data_fragments_rebuild_the_object_reading_one_archive_set(tmp_path, cluster):
    data, pieces, peers, directory = cluster
    done, rebuilt = rebuild(tmp_path, 0, pieces[0], code(peers, data))
    assert rebuilt == data
    assert done.fragments == [0, 1, 2, 3]  # data fragments: no parity needed
    assert done.local_bytes == len(pieces[0])
    assert done.peer_bytes == sum(len(p) for p in pieces[1:4])
    # What a task reads: the object (plus pyeclib's headers), never more than one set more.
    assert done.local_bytes + done.peer_bytes <= len(data) + len(pieces[0])


def test_a_parity_holder_reads_data_fragments_first(tmp_path, cluster):
    data, pieces, peers, directory = cluster
    done, rebuilt = rebuild(tmp_path, 5, pieces[5], code(peers, data))
    assert rebuilt == data and done.fragments == [5, 1, 2, 3]


def test_dead_peers_are_replaced_by_parity(tmp_path, cluster):
    data, pieces, peers, directory = cluster
    dead = [["127.0.0.1", 1, "sd1", 1], ["127.0.0.1", 1, "sd2", 2]]
    done, rebuilt = rebuild(tmp_path, 0, pieces[0], code(dead + peers[2:], data))
    assert rebuilt == data and sorted(done.fragments) == [0, 3, 4, 5]


def test_another_version_of_the_object_is_not_used(tmp_path, cluster):
    data, pieces, peers, directory = cluster
    (directory / str(peers[0][1])).write_text('[1, "1600000000.00000"]')  # an older version
    done, rebuilt = rebuild(tmp_path, 0, pieces[0], code(peers, data))
    assert rebuilt == data and 1 not in done.fragments


def test_too_few_fragments_is_an_error_to_retry_elsewhere(tmp_path, cluster):
    data, pieces, peers, directory = cluster
    with pytest.raises(ec.ECError, match="only 3 of the 4 fragments"):
        rebuild(tmp_path, 0, pieces[0], code(peers[:2], data))


def test_a_short_rebuild_is_an_error(tmp_path, cluster):
    data, pieces, peers, directory = cluster
    with pytest.raises(ec.ECError, match="rebuilt"):
        rebuild(tmp_path, 0, pieces[0], replace(code(peers, data), content_length=len(data) + 1))


def rebuild_split(tmp_path, archive, ec_code, split, exact=False):
    local = tmp_path / "local"
    local.write_bytes(archive)
    out = io.BytesIO()
    with open(local, "rb") as f:
        size, done = ec.rebuild_range(f.fileno(), 0, ec_code, split, exact, out)
    assert size == len(out.getvalue())
    return out.getvalue(), done


def test_splits_decode_only_their_segments_and_read_every_line_once(tmp_path, cluster):
    data, pieces, peers, _ = cluster
    segment = POLICY.ec_segment_size
    for split_size in (1000, 4096, 5000, 20000):
        parts = []
        for start in range(0, len(data), split_size):
            text, done = rebuild_split(tmp_path, pieces[0], code(peers, data),
                                       (start, start + split_size))
            parts.append(text)
            # Segments from the one before the split's start to the one its last line
            # ends in: never the whole object for a small split.
            needed = (min(len(data), start + split_size + 100) - max(0, start - 1)) \
                // segment + 2
            assert done.local_bytes <= needed * POLICY.fragment_size
        assert b"".join(parts) == data, split_size
        assert all(p == b"" or p.endswith(b"\n") for p in parts)


def test_an_exact_range_is_exactly_those_bytes(tmp_path, cluster):
    data, pieces, peers, _ = cluster
    for start, end in ((0, 10), (4000, 9000), (len(data) - 5, len(data) + 50)):
        text, _done = rebuild_split(tmp_path, pieces[0], code(peers, data), (start, end),
                                    exact=True)
        assert text == data[start:end]
