"""The history of jobs: one record per job, what a listing shows of it, with no I/O.

Every job, synchronous or asynchronous, leaves a record in the internal account
``.zerocompute``, in the reserved container ``get_reserved_name(HISTORY_CONTAINER,
<account>)``: one object per job, named by its id.  Job ids begin with the
milliseconds left until 2**48 ms after the epoch
(:func:`zerocompute.async_state.new_job_id`), so Swift's
own listing of that container is newest first, and ``marker`` pages it.

The object's body is the record (a synchronous job's whole report with it; an
asynchronous job's report stays in its state, :mod:`zerocompute.async_state`); its
metadata carries the summary a listing shows, so listing N jobs reads N ``HEAD``s,
never N reports.  Records expire after ``job_history_days`` (``X-Delete-After``,
removed by Swift's object expirer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from zerocompute.async_state import status_location
from zerocompute.wire import known_fields

HISTORY_CONTAINER = "zerocompute-history"
JOBS_QUERY = "zerocompute_jobs"
SYNC, ASYNC = "sync", "async"
DEFAULT_LISTING_LIMIT = 100
MAX_LISTING_LIMIT = 1000

_META = "X-Object-Meta-Zerocompute-"
# Swift limits one metadata value to 256 bytes: longer names are cut in the summary
# (the record itself keeps them whole).
_MAX_META_TEXT = 200


@dataclass
class HistoryRecord:
    """One job, as the history keeps it."""

    id: str
    account: str
    name: str
    kind: str  # SYNC or ASYNC
    status: str
    submitter: str  # identity_digest of who submitted it (whom the history shows it to)
    user: str  # who submitted it, as the auth middleware named them (for the owners)
    submitted: float
    ended: float | None = None
    ms: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    report: dict[str, Any] | None = None  # a synchronous job's report

    @classmethod
    def of_report(cls, account: str, kind: str, submitter: str, user: str,
                  submitted: float, report: dict[str, Any], ended: float) -> HistoryRecord:
        """The record of a job that has ended, from its report (``JobReport.to_dict``)."""
        return cls(id=report["id"], account=account, name=report["job"], kind=kind,
                   status=report["status"], submitter=submitter, user=user,
                   submitted=submitted, ended=ended, ms=report["ms"],
                   counts=report["counts"], bytes=report["bytes"], error=report["error"],
                   report=report if kind == SYNC else None)

    @property
    def location(self) -> str:
        return status_location(self.account, self.id)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")

    @classmethod
    def from_json(cls, body: bytes) -> HistoryRecord:
        return cls(**known_fields(cls, json.loads(body)))

    def summary(self) -> dict[str, Any]:
        """What a listing shows of the job (never the submitter's digest)."""
        return {"job": self.id, "name": self.name, "kind": self.kind, "status": self.status,
                "user": self.user, "submitted": self.submitted, "ended": self.ended,
                "ms": self.ms, "tasks": self.counts.get("tasks", 0),
                "failed": self.counts.get("failed", 0), "location": self.location}

    def public(self) -> dict[str, Any]:
        """A status read of a synchronous job: shaped as an async job's state."""
        body = {"job": self.id, "name": self.name, "kind": self.kind, "status": self.status,
                "submitted": self.submitted, "updated": self.ended or self.submitted,
                "location": self.location}
        if self.report is not None:
            body["report"] = self.report
        return body

    def headers(self) -> dict[str, str]:
        """The summary as object metadata (what a listing reads with a HEAD)."""
        values = {"Name": _meta_text(self.name), "User": _meta_text(self.user),
                  "Kind": self.kind, "Status": self.status, "Submitter": self.submitter,
                  "Submitted": f"{self.submitted:.3f}", "Ms": f"{self.ms:.3f}",
                  "Tasks": str(self.counts.get("tasks", 0)),
                  "Failed": str(self.counts.get("failed", 0))}
        if self.ended is not None:
            values["Ended"] = f"{self.ended:.3f}"
        return {_META + key: value for key, value in values.items()}

    @classmethod
    def from_headers(cls, account: str, job_id: str, headers: Any) -> HistoryRecord:
        """The summary of a record from its metadata (a ``HEAD``; no report)."""
        def get(key: str, default: str = "") -> str:
            return headers.get(_META + key, default)
        ended = get("Ended")
        return cls(id=job_id, account=account, name=unquote(get("Name")), kind=get("Kind"),
                   status=get("Status"), submitter=get("Submitter"), user=unquote(get("User")),
                   submitted=float(get("Submitted", "0")),
                   ended=float(ended) if ended else None, ms=float(get("Ms", "0")),
                   counts={"tasks": int(get("Tasks", "0")), "failed": int(get("Failed", "0"))})


def _meta_text(text: str) -> str:
    """Text made safe for a metadata value, and short enough for one."""
    quoted = quote(text, safe=" /:@,")
    while len(quoted) > _MAX_META_TEXT:
        text = text[:-8]
        quoted = quote(text, safe=" /:@,") + "..."
    return quoted


def listing_limit(value: str | None) -> int:
    """A listing's ``limit``: the default, or a number from 1 to MAX_LISTING_LIMIT."""
    if value in (None, ""):
        return DEFAULT_LISTING_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"limit must be a number, not {value!r}") from None
    if not 1 <= limit <= MAX_LISTING_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LISTING_LIMIT}")
    return limit
