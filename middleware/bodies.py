"""Response bodies shared by both filters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

CHUNK = 65536


class FileIter:
    """A file as a WSGI body, read in chunks and closed even if never read."""

    def __init__(self, f: Any):
        self.f = f

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.f.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.f.close()
