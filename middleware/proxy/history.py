"""The history of every job, kept by the proxy in ``.zerocompute``.

A synchronous job's record is written once it ends, with its report; an
asynchronous job's when it is accepted (running) and again when it ends (its
report stays in its state).  ``GET /v1/<account>?zerocompute_jobs`` lists an
account's jobs, newest first, as JSON (``limit``, ``marker``: the last job id of
the page before); the account's owners see every job, anyone else only those
they submitted.  Records expire ``job_history_days`` after the job ended.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from eventlet import GreenPile
from swift.common.request_helpers import get_reserved_name
from swift.common.utils import RESERVED

from zerocompute.async_state import INDEX_ACCOUNT, valid_job_id
from zerocompute.history import HISTORY_CONTAINER, HistoryRecord
from zerocompute.middleware.proxy.config import ProxyConfig
from zerocompute.middleware.proxy.store import SAVE_TRIES, JobStore

DAY_S = 86400
# HEADs of records in flight at once while listing.
LISTING_CONCURRENCY = 10
# A listing for someone who sees only their own jobs reads at most this many pages
# of records to fill one page of theirs.
MAX_PAGES_SCANNED = 10


class JobHistory:
    """Records of jobs: kept, read back, and listed."""

    def __init__(self, store: JobStore, config: ProxyConfig, logger: Any):
        self.store = store
        self.config = config
        self.logger = logger

    @staticmethod
    def records_of(account: str) -> str:
        return f"/v1/{INDEX_ACCOUNT}/{get_reserved_name(HISTORY_CONTAINER, account)}"

    def expiry_headers(self) -> dict[str, str]:
        """What makes Swift remove a kept job ``job_history_days`` from now."""
        days = self.config.job_history_days
        return {"X-Delete-After": str(max(1, round(days * DAY_S)))} if days else {}

    def keep(self, env: dict, record: HistoryRecord) -> str | None:
        """Write ``record``; None, or why it could not be kept."""
        container = self.records_of(record.account)
        failed = self.store.ensure_container(env, container)
        if failed is not None:
            return f"the history cannot be written: {failed.status}"
        headers = {**record.headers(), **self.expiry_headers()}
        status = ""
        for _ in range(SAVE_TRIES):
            resp = self.store.request(env, "PUT", container, record.id, record.to_json(),
                                      headers=headers)
            if resp.is_success:
                return None
            status = resp.status
            if resp.status_int == 404:  # the container went away: make it again
                self.store.containers.discard(container)
                self.store.ensure_container(env, container)
        self.logger.error("zerocompute: could not keep job %s in the history: %s",
                          record.id, status)
        return f"the history cannot be written: {status}"

    def load(self, env: dict, account: str, job_id: str) -> HistoryRecord | None:
        resp = self.store.request(env, "GET", self.records_of(account), job_id)
        if resp.status_int == 404:
            return None
        if not resp.is_success:
            raise OSError(f"cannot read the history: {resp.status}")
        return HistoryRecord.from_json(resp.body)

    def listing(self, env: dict, account: str, limit: int, marker: str,
                visible: Callable[[HistoryRecord], bool]) -> list[dict[str, Any]]:
        """Up to ``limit`` summaries of jobs after ``marker``, newest first, of those
        ``visible`` shows."""
        container = self.records_of(account)
        found: list[dict[str, Any]] = []
        for _page in range(MAX_PAGES_SCANNED):
            names = self._names(env, container, limit, marker)
            if names is None:
                raise OSError("cannot read the history")
            for record in self._summaries(env, account, names):
                if record is not None and visible(record):
                    found.append(record.summary())
                    if len(found) == limit:
                        return found
            if len(names) < limit:
                break
            marker = names[-1]
        return found

    def _names(self, env: dict, container: str, limit: int, marker: str) -> list[str] | None:
        """A page of job ids in the history's container (None: it could not be read)."""
        query = f"format=json&limit={limit}"
        if marker:
            query += f"&marker={quote(get_reserved_name(marker))}"
        resp = self.store.request(env, "GET", container, query=query)
        if resp.status_int == 404:
            return []  # no job kept yet
        if resp.status_int not in (200, 204):
            return None
        names = [item["name"].lstrip(RESERVED) for item in json.loads(resp.body or b"[]")]
        return [name for name in names if valid_job_id(name)]

    def _summaries(self, env: dict, account: str, names: list[str]
                   ) -> list[HistoryRecord | None]:
        """Each job's summary, from its record's metadata (None: expired or gone)."""
        container = self.records_of(account)

        def head(name: str) -> HistoryRecord | None:
            resp = self.store.request(env, "HEAD", container, name)
            if not resp.is_success:
                return None
            return HistoryRecord.from_headers(account, name, resp.headers)
        pile = GreenPile(LISTING_CONCURRENCY)
        for name in names:
            pile.spawn(head, name)
        return list(pile)
