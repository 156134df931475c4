"""The one error a job request can end with: a status, what is wrong, and where.

Raised anywhere on the proxy side (a manifest that does not parse, an input
the user may not read, a job state that cannot be kept) and turned into a
response at one place only, the proxy filter's door
(``zerocompute.middleware.proxy``), as Swift turns ``HTTPException``.
"""

from __future__ import annotations


class JobError(Exception):
    """A request the cluster will not run or answer: ``status`` (an HTTP status), the
    ``error`` in words and, where it applies, the ``field`` it is about."""

    def __init__(self, error: str, field: str | None = None, status: int = 400):
        super().__init__(error)
        self.error = error
        self.field = field
        self.status = status

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.field:
            body["field"] = self.field
        return body
