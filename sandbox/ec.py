"""Erasure-coded inputs: an object's bytes rebuilt from its fragment archives.

An object in an erasure-coded policy is, on each of ``k + m`` nodes, a
*fragment archive*: for every segment of the object (``segment_size`` bytes,
the last one shorter), one fragment of ``fragment_size`` bytes (pyeclib's
header included).  Any ``k`` archives give the object back, segment by
segment, through pyeclib with the policy's own parameters, as Swift's proxy
does on a GET and its reconstructor on a rebuild.

The task runs on a node that holds one archive.  It reads its own from disk
and fetches ``k - 1`` more straight from the other holders' object servers
(a backend ``GET`` with ``X-Backend-Storage-Policy-Index``, as the proxy
does), data fragments first: with a systematic code (Swift's ``rs_vand``
and ``isa_l_rs_vand``) the data fragments decode without arithmetic.  A
holder that does not answer, answers something else, or holds another
version is skipped for the next one, parity included.  Decoded segments go
to the guest's input file one at a time: the object is never held whole in
memory.  Each task reports the bytes it read locally and those it fetched.
"""

from __future__ import annotations

import http.client
import os
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote

from zerocompute.shuffle import line_aligned
from zerocompute.wire import ErasureCode

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


class ECError(Exception):
    """The object cannot be rebuilt here (too few fragments answer): try elsewhere."""


@dataclass
class Rebuilt:
    size: int  # bytes of the object written
    local_bytes: int  # read from this node's own archive
    peer_bytes: int  # fetched from other fragment holders
    fragments: list[int]  # the fragment indexes used, this node's first


class _Archive:
    """One fragment archive, read in fragment-sized pieces."""

    def __init__(self, index: int, stream: BinaryIO, connection: Any = None):
        self.index = index
        self.stream = stream
        self.connection = connection
        self.read_bytes = 0

    def read(self, size: int) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        return data

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _driver(ec: ErasureCode):
    from pyeclib.ec_iface import ECDriver
    return ECDriver(k=ec.k, m=ec.m, ec_type=ec.ec_type)


def _fetch(peer: tuple[str, int, str, int], ec: ErasureCode, offset: int = 0) -> _Archive | None:
    """A peer's archive of the same version of the object (from ``offset``), or None."""
    ip, port, device, _index = peer
    path = f"/{device}/{ec.partition}{quote(ec.path)}"
    connection = http.client.HTTPConnection(ip, int(port), timeout=CONNECT_TIMEOUT_S)
    headers = {"X-Backend-Storage-Policy-Index": str(ec.policy),
               "User-Agent": "zerocompute-ec"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        connection.request("GET", path, headers=headers)
        connection.sock.settimeout(READ_TIMEOUT_S)
        resp = connection.getresponse()
        index = resp.getheader("X-Object-Sysmeta-Ec-Frag-Index")
        if resp.status != (206 if offset else 200) or index is None \
                or resp.getheader("X-Backend-Timestamp") != ec.timestamp:
            connection.close()
            return None
        return _Archive(int(index), resp, connection)
    except (OSError, http.client.HTTPException, ValueError):
        connection.close()
        return None


def _sources(local: _Archive, ec: ErasureCode, offset: int = 0) -> list[_Archive]:
    """``k`` archives of distinct fragments: this node's, then data fragments, then parity."""
    k = ec.k
    sources = [local]
    peers = sorted((p for p in ec.peers if int(p[3]) != local.index),
                   key=lambda p: (int(p[3]) >= k, int(p[3])))
    for peer in peers:
        if len(sources) == k:
            break
        if any(s.index == int(peer[3]) for s in sources):
            continue
        archive = _fetch(peer, ec, offset)
        if archive is not None and all(s.index != archive.index for s in sources):
            sources.append(archive)
        elif archive is not None:
            archive.close()
    if len(sources) < k:
        for source in sources[1:]:
            source.close()
        raise ECError(f"only {len(sources)} of the {k} fragments needed could be read")
    return sources


class Rebuilder:
    """The object's segments, decoded one at a time from ``first_segment`` on."""

    def __init__(self, local_fd: int, local_index: int, ec: ErasureCode,
                 first_segment: int = 0):
        self.driver = _driver(ec)
        self.fragment_size = ec.fragment_size
        offset = first_segment * self.fragment_size
        self.own = os.fdopen(os.dup(local_fd), "rb")
        self.own.seek(offset)
        self.local = _Archive(local_index, self.own)
        try:
            self.sources = _sources(self.local, ec, offset)
        except BaseException:
            self.own.close()
            raise

    def segments(self) -> Any:
        while True:
            fragments = [source.read(self.fragment_size) for source in self.sources]
            if not fragments[0]:
                return
            if any(len(f) != len(fragments[0]) for f in fragments):
                raise ECError("fragment archives of different lengths")
            yield self.driver.decode(fragments)

    def done(self, size: int) -> Rebuilt:
        return Rebuilt(size, self.local.read_bytes,
                       sum(s.read_bytes for s in self.sources[1:]),
                       [s.index for s in self.sources])

    def close(self) -> None:
        for source in self.sources[1:]:
            source.close()
        self.own.close()


def rebuild(local_fd: int, local_index: int, ec: ErasureCode, out: BinaryIO) -> Rebuilt:
    """Write the object whose fragment archive ``local_fd`` is into ``out``."""
    rebuilder = Rebuilder(local_fd, local_index, ec)
    try:
        size = 0
        for segment in rebuilder.segments():
            out.write(segment)
            size += len(segment)
    finally:
        rebuilder.close()
    if size != ec.content_length:
        raise ECError(f"rebuilt {size} bytes, the object has {ec.content_length}")
    return rebuilder.done(size)


def rebuild_range(local_fd: int, local_index: int, ec: ErasureCode,
                  split: tuple[int, int], exact: bool, out: BinaryIO) -> tuple[int, Rebuilt]:
    """A split of the object (``shuffle.line_aligned``'s lines, or ``exact`` bytes), from
    only the segments that hold it: its size, and what was read."""
    segment_size = ec.segment_size
    size = ec.content_length
    start, end = min(split[0], size), min(split[1], size)
    first = max(0, start - 1) // segment_size
    base = first * segment_size
    data = bytearray()
    rebuilder = Rebuilder(local_fd, local_index, ec, first)
    try:
        for segment in rebuilder.segments():
            data += segment
            covered = base + len(data)
            if covered >= end and (exact or covered >= size
                                   or b"\n" in data[max(0, end - 1 - base):]):
                break
    finally:
        rebuilder.close()
    if exact:
        lo, hi = start, end
    else:
        lo, hi = line_aligned(lambda at, n: bytes(data[at - base:at - base + n]),
                              min(size, base + len(data)), start, end)
    out.write(data[lo - base:hi - base])
    return hi - lo, rebuilder.done(hi - lo)
