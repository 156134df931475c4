"""Response bodies shared by both filters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from swift.common.swob import Response

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


def json_response(status: int | str, body: dict[str, Any],
                  headers: dict | None = None) -> Response:
    """A JSON answer: reports, job states, and errors (``error`` and ``field``)."""
    return Response(status=status, headers=headers, content_type="application/json",
                    body=json.dumps(body, indent=1).encode("utf-8") + b"\n")
