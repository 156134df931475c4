"""TeraSort's records, made and checked in Python: gensort's ASCII form and valsort.

gensort and valsort (the Sort Benchmark's tools) are in no registry here, so
this module writes records of the same shape and checks a sort the way
valsort does.  A record is 100 bytes: a 10-byte key of printable ASCII
(``' '`` to ``'~'``), two spaces, the record's number as 32 hexadecimal
digits, two spaces, 52 bytes of filler, CR LF (``gensort -a``'s layout).
valsort's checksum is the sum of the records' CRC32s (modulo 2**64), so it
does not depend on their order.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

RECORD_BYTES = 100
KEY_BYTES = 10
_PRINTABLE = bytes(range(32, 127))
_FILLER = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def gensort(first: int, count: int, seed: int = 0) -> bytes:
    """Records ``first`` to ``first + count - 1``, each with a random key."""
    rng = random.Random(seed * 1_000_003 + first)
    keys = rng.choices(_PRINTABLE, k=count * KEY_BYTES)
    keys = bytes(keys)
    records = []
    for number in range(first, first + count):
        at = (number - first) * KEY_BYTES
        fill = _FILLER[number % len(_FILLER):][:4].ljust(4, b"0")
        records.append(b"%s  %032X  %s\r\n" % (keys[at:at + KEY_BYTES], number, fill * 13))
    return b"".join(records)


@dataclass
class Validation:
    """What valsort says of a sequence of records."""

    records: int = 0
    checksum: int = 0
    unordered: int = 0  # records whose key is smaller than the one before
    duplicates: int = 0  # records whose key equals the one before
    bad: int = 0  # pieces that are not whole 100-byte records
    last_key: bytes = b""

    @property
    def sorted(self) -> bool:
        return self.unordered == 0 and self.bad == 0


def valsort(pieces: Iterable[bytes]) -> Validation:
    """Check records read in order (``pieces``: e.g. each part object, in part order)."""
    result = Validation()
    for data in pieces:
        if len(data) % RECORD_BYTES:
            result.bad += 1
        for at in range(0, len(data) - len(data) % RECORD_BYTES, RECORD_BYTES):
            record = data[at:at + RECORD_BYTES]
            key = record[:KEY_BYTES]
            if result.records and key < result.last_key:
                result.unordered += 1
            elif result.records and key == result.last_key:
                result.duplicates += 1
            result.last_key = key
            result.records += 1
            result.checksum = (result.checksum + zlib.crc32(record)) % (1 << 64)
    return result


def checksum(data: bytes) -> int:
    """valsort's checksum of some records, in any order."""
    return sum(zlib.crc32(data[at:at + RECORD_BYTES])
               for at in range(0, len(data), RECORD_BYTES)) % (1 << 64)
