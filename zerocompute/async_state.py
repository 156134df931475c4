"""Durable (asynchronous) jobs: their state document, lease and authority, with no I/O.

An asynchronous job's state is one JSON object per job in a container of the
internal account ``.zerocompute``, one container per user account, in Swift's
reserved namespace (users cannot list, read or write it; only the proxy filter
does, on the user's behalf; the user's account never counts it).  The
proxy running the job rewrites the state every ``lease_s / 3`` with its
progress and a new lease; a cancel is a separate marker object, so that the
owner's rewrites never erase it.  When the lease has lapsed, another proxy
may take the job over (:meth:`JobState.take_over`).

A job taken over no longer has its user's request: it acts with the
authority its manifest was granted when it was accepted (:class:`Grant`),
every part of which was checked as the user then.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from zerocompute.manifest import Manifest, SwiftPath
from zerocompute.report import CANCELLED, FAILED, SUCCEEDED
from zerocompute.wire import known_fields

# In the internal account INDEX_ACCOUNT, ``get_reserved_name(JOBS_CONTAINER, account)``
# holds an account's async jobs, and ``get_reserved_name(JOBS_CONTAINER)`` the
# cluster-wide index of running ones (``<account>/<id>`` names) for the operator's
# sweep.  JOB_QUERY is the query parameter that addresses one job.
JOBS_CONTAINER = "zerocompute-jobs"
JOB_QUERY = "zerocompute_job"
INDEX_ACCOUNT = ".zerocompute"
CANCEL_SUFFIX = ".cancel"

RUNNING = "running"
FINAL = (SUCCEEDED, FAILED, CANCELLED)

READ_METHODS = frozenset({"GET", "HEAD"})
WRITE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "POST"})


_TIME_SPAN_MS = 1 << 48  # about 8,900 years of milliseconds


def new_job_id(now: float | None = None) -> str:
    """32 hex digits: 12 that fall as time passes, so that a listing of ids (the
    history's, :mod:`zerocompute.history`) is newest first, then 20 random."""
    now = time.time() if now is None else now
    return f"{_TIME_SPAN_MS - 1 - int(now * 1000):012x}{uuid.uuid4().hex[:20]}"


def valid_job_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def identity_digest(secret: str, identity: str) -> str:
    """Who submitted a job, kept as a keyed digest rather than in the clear."""
    return hashlib.sha256(f"{secret}\n{identity}".encode()).hexdigest()


def status_location(account: str, job_id: str) -> str:
    return f"/v1/{account}?{JOB_QUERY}={job_id}"


@dataclass
class Takeover:
    at: float
    by: str  # the proxy that took the job over
    previous: str  # the proxy whose lease had lapsed
    lease_until: float  # when that lease had lapsed


@dataclass
class JobState:
    """What any proxy knows of an asynchronous job."""

    id: str
    account: str
    name: str
    manifest: str  # the request body, as accepted
    submitter: str  # identity_digest of the user who submitted it
    owner: str  # the proxy running it
    lease_until: float
    submitted: float
    updated: float
    status: str = RUNNING
    user: str = ""  # who submitted it, as the auth middleware named them (the history's)
    progress: dict[str, int] = field(default_factory=dict)
    takeovers: list[Takeover] = field(default_factory=list)
    report: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def lease_lapsed(self, now: float) -> bool:
        return not self.final and now > self.lease_until

    def take_over(self, by: str, now: float, lease_s: float) -> None:
        """``by`` owns the job from ``now``; the takeover is kept for the report."""
        self.takeovers.append(Takeover(at=now, by=by, previous=self.owner,
                                       lease_until=self.lease_until))
        self.owner = by
        self.renew(now, lease_s)

    def renew(self, now: float, lease_s: float) -> None:
        self.lease_until = now + lease_s
        self.updated = now

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")

    @classmethod
    def from_json(cls, body: bytes) -> JobState:
        doc = known_fields(cls, json.loads(body))
        doc["takeovers"] = [Takeover(**t) for t in doc.get("takeovers", [])]
        return cls(**doc)

    def public(self, cancel_requested: bool = False) -> dict[str, Any]:
        """What a status read shows: everything but the stored manifest and submitter."""
        body = {"job": self.id, "name": self.name, "status": self.status,
                "submitted": self.submitted, "updated": self.updated, "owner": self.owner,
                "lease_until": self.lease_until, "progress": self.progress,
                "takeovers": [asdict(t) for t in self.takeovers],
                "location": status_location(self.account, self.id)}
        if cancel_requested and not self.final:
            body["cancel_requested"] = True
        if self.report is not None:
            body["report"] = self.report
        return body


@dataclass(frozen=True)
class Area:
    """A container a job may use, for reading or also for writing."""

    account: str
    container: str
    write: bool


@dataclass(frozen=True)
class Grant:
    """What an accepted job may touch: the containers of its inputs and executables
    (read) and of its outputs (read and write), each checked as the user when the job
    was accepted.  A proxy that takes the job over acts within exactly this."""

    areas: frozenset[Area]

    def allows(self, method: str, account: str, container: str | None) -> bool:
        if not container:
            return False  # nothing at the account level: no listing, no metadata
        return any((area.account, area.container) == (account, container)
                   and (method in READ_METHODS or area.write and method in WRITE_METHODS)
                   for area in self.areas)


def _containers(paths: list[SwiftPath], write: bool) -> set[Area]:
    return {Area(p.account, p.container, write) for p in paths}


def job_grant(manifest: Manifest) -> Grant:
    """The authority a manifest needs: what its checks as the user covered."""
    reads: list[SwiftPath] = []
    writes: list[SwiftPath] = []
    for step in manifest.steps or (manifest,):
        reads.extend(step.map.inputs)
        reads.append(step.map.exec)
        if step.combine is not None:
            reads.append(step.combine.exec)
        for out in step.reduce_outputs:
            reads.append(out.reduce.exec)
            writes.append(out.prefix)
        writes.append(step.output)
    return Grant(frozenset(_containers(reads, False) | _containers(writes, True)))

