"""The task request between the proxy filter and the object-server filter.

The proxy sends ``EXECUTE /<device>/<partition>/<account>/<container>/<object>``
to an object server that holds the object.  The task's description travels in
``X-Zerocompute-Task`` (URL-safe base64 of JSON) and is signed with an
HMAC-SHA256 over the method, the path and that header, using a secret the
proxy and the object servers share.  Clients cannot forge tasks: an object
server refuses any EXECUTE whose signature does not verify or whose timestamp
is too old to be fresh.  A custom method (rather than POST or GET) means an
object server without the filter answers 405 instead of doing something else
with the request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

METHOD = "EXECUTE"
TASK_HEADER = "X-Zerocompute-Task"
SIGNATURE_HEADER = "X-Zerocompute-Signature"

# Response headers of the object-server filter.
EXIT_HEADER = "X-Zerocompute-Exit"
ERROR_HEADER = "X-Zerocompute-Error"
STDERR_HEADER = "X-Zerocompute-Stderr"
BYTES_IN_HEADER = "X-Zerocompute-Bytes-In"
MS_HEADER = "X-Zerocompute-Ms"
LOAD_HEADER = "X-Zerocompute-Load"
NEED_EXECUTABLE_HEADER = "X-Zerocompute-Need-Executable"

# The object-server filter answers load probes here (GET, no auth).
LOAD_PATH = "/zerocompute/load"

MAX_AGE_S = 300
# The longest an object server may take to prepare a module (compiling the
# Python runtime takes seconds, more on a busy host) before the guest starts.
PREPARE_TIMEOUT_S = 600.0


class BadSignature(Exception):
    pass


def _mac(secret: str, method: str, path: str, encoded: str) -> str:
    message = "\n".join((method, path, encoded)).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_task(secret: str, path: str, task: dict[str, Any],
              now: float | None = None) -> dict[str, str]:
    """Headers carrying ``task`` to ``path``, stamped with the time and signed."""
    task = dict(task, ts=time.time() if now is None else now)
    encoded = base64.urlsafe_b64encode(
        json.dumps(task, separators=(",", ":")).encode("utf-8")).decode("ascii")
    return {TASK_HEADER: encoded, SIGNATURE_HEADER: _mac(secret, METHOD, path, encoded)}


def verify_task(secret: str, method: str, path: str, headers: Any,
                now: float | None = None) -> dict[str, Any]:
    """The task of a signed request, or :class:`BadSignature`."""
    encoded = headers.get(TASK_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not encoded or not signature:
        raise BadSignature("missing task or signature")
    if not hmac.compare_digest(_mac(secret, method, path, encoded), signature):
        raise BadSignature("signature does not match")
    try:
        task = json.loads(base64.urlsafe_b64decode(encoded.encode("ascii")))
    except ValueError:
        raise BadSignature("undecodable task") from None
    now = time.time() if now is None else now
    if not isinstance(task, dict) or abs(now - float(task.get("ts", 0))) > MAX_AGE_S:
        raise BadSignature("stale task")
    return task


def encode_tail(data: bytes) -> str:
    """A stderr tail, safe to carry in a header."""
    return base64.b64encode(data).decode("ascii")


def decode_tail(value: str | None) -> str:
    if not value:
        return ""
    try:
        return base64.b64decode(value).decode("utf-8", "replace")
    except ValueError:
        return ""
