"""Submitting jobs with python-swiftclient."""

from __future__ import annotations

import json
from typing import Any

from swiftclient.client import ClientException, Connection

from zerocompute.wire import EXECUTE_HEADER


class JobRejected(Exception):
    """The cluster refused the manifest (a 4xx with a JSON error)."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(f"{status}: {body.get('error', body)}"
                         + (f" (field {body['field']})" if body.get("field") else ""))
        self.status = status
        self.body = body


def submit_job(conn: Connection, manifest: dict[str, Any] | bytes) -> dict[str, Any]:
    """Run a job synchronously; return its report, or raise :class:`JobRejected`."""
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode("utf-8")
    try:
        _headers, content = conn.post_account(
            {EXECUTE_HEADER: "1", "Content-Type": "application/json"}, data=body)
    except ClientException as err:
        try:
            detail = json.loads(err.http_response_content or b"{}")
        except ValueError:
            detail = {"error": (err.http_response_content or b"").decode("utf-8", "replace")}
        raise JobRejected(err.http_status or 0, detail) from None
    return json.loads(content)
