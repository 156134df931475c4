"""What the proxy keeps on its own authority in the internal account ``.zerocompute``.

Async job states and cancels (:mod:`zerocompute.async_state`), the sweep's index of
running jobs, and the history of every job (:mod:`zerocompute.history`) are objects
in reserved-namespace containers there, one per user account: the user reaches
them only through the job API, and the user's account (its ``HEAD``, listings,
quotas, container count) never sees them (``doc/operations.md``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from swift.common.request_helpers import get_reserved_name
from swift.common.swob import Response
from swift.common.utils import RESERVED
from swift.common.wsgi import make_pre_authed_request

from zerocompute import wire
from zerocompute.async_state import (
    CANCEL_SUFFIX,
    INDEX_ACCOUNT,
    JOBS_CONTAINER,
    JobState,
    valid_job_id,
)
from zerocompute.errors import JobError

SAVE_TRIES = 3


# The sweep's index of running jobs: ``<account>/<id>`` names.
INDEX = f"/v1/{INDEX_ACCOUNT}/{get_reserved_name(JOBS_CONTAINER)}"


class JobStore:
    """Async job states, read and written by the proxy on its own authority, in the
    internal account ``.zerocompute``: one reserved container per user account for
    its jobs' states and cancels, and one for the sweep's index of running jobs.
    Nothing is kept in the user's account, whose ``HEAD``, listings, quotas and
    container count never see a job (``doc/operations.md``)."""

    def __init__(self, app: Any):
        self.app = app
        self.containers: set[str] = set()  # containers this proxy has made

    @staticmethod
    def states_of(account: str) -> str:
        return f"/v1/{INDEX_ACCOUNT}/{get_reserved_name(JOBS_CONTAINER, account)}"

    @staticmethod
    def legacy_states_of(account: str) -> str:
        """Where the first layout kept an account's states: in the account itself."""
        return f"/v1/{account}/{get_reserved_name(JOBS_CONTAINER)}"

    def request(self, env: dict, method: str, container: str, name: str = "",
                body: bytes | None = None, query: str = "",
                headers: dict[str, str] | None = None) -> Response:
        """A request of the proxy's own in ``.zerocompute``: ``name`` (an object's name,
        made reserved) in ``container`` (a path)."""
        path = container + ("/" + get_reserved_name(name) if name else "")
        headers = {"X-Backend-Allow-Reserved-Names": "true",
                   "Content-Type": "application/json", **(headers or {})}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        sub = make_pre_authed_request(env, method, quote(path) + "?" + query, body=body,
                                      swift_source=wire.SWIFT_SOURCE, headers=headers)
        return sub.get_response(self.app)

    def ensure_container(self, env: dict, container: str) -> Response | None:
        """Make a container, once per proxy: the failure, if it fails."""
        if container in self.containers:
            return None
        resp = self.request(env, "PUT", container)
        if not resp.is_success:
            return resp
        self.containers.add(container)
        return None

    def create(self, env: dict, state: JobState) -> None:
        failed = self.ensure_container(env, self.states_of(state.account))
        if failed is not None:
            raise JobError(f"cannot keep the job's state: {failed.status}", status=503)
        if not self.save(env, state):
            raise JobError("cannot keep the job's state", status=503)

    def save(self, env: dict, state: JobState, headers: dict[str, str] | None = None
             ) -> bool:
        container = self.states_of(state.account)
        for _ in range(SAVE_TRIES):
            resp = self.request(env, "PUT", container, state.id, state.to_json(),
                                headers=headers)
            if resp.is_success:
                return True
            if resp.status_int == 404:  # no container yet: a job of the first layout
                self.containers.discard(container)
                self.ensure_container(env, container)
        return False

    def load(self, env: dict, account: str, job_id: str) -> JobState | None:
        for container in (self.states_of(account), self.legacy_states_of(account)):
            resp = self.request(env, "GET", container, job_id)
            if resp.is_success:
                return JobState.from_json(resp.body)
            if resp.status_int != 404:
                raise JobError(f"cannot read the job's state: {resp.status}", status=503)
        return None

    def request_cancel(self, env: dict, account: str, job_id: str) -> bool:
        return self.request(env, "PUT", self.states_of(account), job_id + CANCEL_SUFFIX,
                             b"").is_success

    def cancel_requested(self, env: dict, account: str, job_id: str) -> bool:
        return self.request(env, "HEAD", self.states_of(account),
                             job_id + CANCEL_SUFFIX).is_success

    # -- the cluster-wide index of running jobs (for the sweep) ----------------------
    def index(self, env: dict, state: JobState) -> bool:
        self.ensure_container(env, INDEX)
        return self.request(env, "PUT", INDEX, f"{state.account}/{state.id}",
                             b"").is_success

    def unindex(self, env: dict, account: str, job_id: str) -> None:
        self.request(env, "DELETE", INDEX, f"{account}/{job_id}")

    def indexed(self, env: dict) -> list[tuple[str, str]]:
        """(account, job id) of every job indexed as running."""
        resp = self.request(env, "GET", INDEX, query="format=json")
        if resp.status_int != 200:
            return []
        found = []
        for item in json.loads(resp.body):
            account, _, job_id = item["name"].lstrip(RESERVED).partition("/")
            if account and valid_job_id(job_id):
                found.append((account, job_id))
        return found
