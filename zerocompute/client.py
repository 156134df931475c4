"""Jobs from Python, over python-swiftclient: submit, status, cancel, wait.

A :class:`swiftclient.client.Connection` carries the authentication (v1,
Keystone, tokens: whatever swiftclient supports); these functions add the
job API (``doc/manifest.md``) on top of its storage URL and token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from swiftclient.client import ClientException, Connection

from zerocompute.async_state import JOB_QUERY, valid_job_id
from zerocompute.history import JOBS_QUERY
from zerocompute.wire import ASYNC_HEADER, EXECUTE_HEADER

FINAL = ("succeeded", "failed", "cancelled")
NO_CREDENTIALS = ("no credentials: set ST_AUTH, ST_USER and ST_KEY (or -A, -U, -K), or "
                  "OS_AUTH_URL, OS_USERNAME and OS_PASSWORD for Keystone; on the dev "
                  'cluster: eval "$(zerocompute devcluster env)"')


def swift_options(**given: Any) -> dict[str, Any]:
    """The ``swift`` command's options, from its variables (``ST_*``, ``OS_*``) and
    ``given`` (``auth``, ``user``, ``key``, ``os_*``): what :func:`connect_swift` takes."""
    import argparse

    from swiftclient.shell import add_default_args
    parser = argparse.ArgumentParser()
    add_default_args(parser)
    options = vars(parser.parse_args([]))
    options.update({k: v for k, v in given.items() if v is not None})
    return options


def connect_swift(options: dict[str, Any]) -> Connection:
    """A Connection from the ``swift`` command's options (``ValueError``: none given)."""
    from swiftclient.service import get_conn, process_options
    options = dict(options)
    process_options(options)
    os_options = options["os_options"]
    if os_options.get("object_storage_url") and os_options.get("auth_token"):
        return get_conn(options)
    if not (options["auth"] and (options["user"] or options.get("os_user_id"))
            and options["key"]):
        raise ValueError(NO_CREDENTIALS)
    return get_conn(options)


class JobRejected(Exception):
    """The cluster refused a request of the job API (a 4xx with a JSON error)."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__((f"{body['field']}: " if body.get("field") else "")
                         + f"{body.get('error', body)}")
        self.status = status
        self.body = body


def _rejected(err: ClientException) -> JobRejected | ClientException:
    """A JSON error of the job API as :class:`JobRejected`; anything else unchanged."""
    try:
        detail = json.loads(err.http_response_content or b"{}")
    except ValueError:
        return err
    if not isinstance(detail, dict) or "error" not in detail:
        return err
    return JobRejected(err.http_status or 0, detail)


def _post(conn: Connection, manifest: dict[str, Any] | bytes,
          headers: dict[str, str]) -> dict[str, Any]:
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode("utf-8")
    try:
        _headers, content = conn.post_account(
            {EXECUTE_HEADER: "1", "Content-Type": "application/json", **headers}, data=body)
    except ClientException as err:
        raise _rejected(err) from None
    return json.loads(content)


def submit_job(conn: Connection, manifest: dict[str, Any] | bytes) -> dict[str, Any]:
    """Run a job synchronously; return its report, or raise :class:`JobRejected`."""
    return _post(conn, manifest, {})


def submit_async(conn: Connection, manifest: dict[str, Any] | bytes) -> dict[str, Any]:
    """Start a job (``202``): ``{"job": id, "location": ..., ...}``."""
    return _post(conn, manifest, {ASYNC_HEADER: "1"})


def job_id_of(text: str) -> str:
    """A job id, from the id itself or from its status location."""
    if JOB_QUERY + "=" in text:
        text = text.split(JOB_QUERY + "=", 1)[1].split("&", 1)[0]
    return text.strip()


def _account_query(conn: Connection, method: str, query: str) -> Any:
    """``method /v1/<account>?<query>`` of the job API, its JSON answer (swiftclient's
    retries and re-authentication apply)."""
    def call(url: str, token: str, http_conn: Any, service_token: str | None = None) -> Any:
        parsed, connection = http_conn
        connection.request(method, f"{parsed.path}?{query}", "", {"X-Auth-Token": token})
        resp = connection.getresponse()
        body = resp.read()
        if resp.status // 100 != 2:
            raise ClientException.from_response(resp, f"{method} {query} failed", body)
        return json.loads(body)
    try:
        return conn._retry(None, call)
    except ClientException as err:
        raise _rejected(err) from None


def _job_request(conn: Connection, method: str, job: str) -> dict[str, Any]:
    job_id = job_id_of(job)
    if not valid_job_id(job_id):
        raise JobRejected(404, {"error": f"{job!r} is not a job id (32 hex digits)"})
    return _account_query(conn, method, f"{JOB_QUERY}={quote(job_id)}")


def list_jobs(conn: Connection, limit: int | None = None, marker: str = ""
              ) -> list[dict[str, Any]]:
    """The account's jobs, newest first (its owners see all; others their own)."""
    query = JOBS_QUERY + (f"&limit={limit}" if limit else "") + (
        f"&marker={quote(marker)}" if marker else "")
    return _account_query(conn, "GET", query)


def job_status(conn: Connection, job: str) -> dict[str, Any]:
    """A job's status: an async job's state (any proxy answers), or a synchronous
    job's record in the history (``doc/manifest.md``)."""
    return _job_request(conn, "GET", job)


def cancel_job(conn: Connection, job: str) -> dict[str, Any]:
    return _job_request(conn, "DELETE", job)


def wait_for_job(conn: Connection, job: str, on_state: Callable[[dict], None] | None = None,
                 interval: float = 0.5) -> dict[str, Any]:
    """Poll until the job has ended; ``on_state`` sees every state read."""
    while True:
        state = job_status(conn, job)
        if on_state is not None:
            on_state(state)
        if state["status"] in FINAL:
            return state
        time.sleep(interval)
