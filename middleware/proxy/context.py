"""A job request as its user: every check and sub-request made on the user's behalf.

A :class:`JobContext` is made once per request (as Swift's ``SloGetContext``
is): it holds the user's request (its identity, which the auth middleware
checks, and one info cache for every sub-request of the job), the rest of
the pipeline, and the manifest field being checked, which every error names.
Nothing a job touches is read or written other than through it, so ACLs
apply exactly as for requests made by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote, unquote

from swift.common.swob import Request, Response
from swift.common.utils import close_if_possible, config_true_value
from swift.common.wsgi import make_env, make_subrequest

from zerocompute import wire
from zerocompute.async_state import identity_digest
from zerocompute.errors import JobError
from zerocompute.manifest import SwiftPath, runtime_of
from zerocompute.middleware.proxy.config import ProxyConfig
from zerocompute.planning import (
    EDGE_BYTES,
    InputObject,
    Segment,
    job_file,
    listing_prefix,
    match_listing,
    segment_edges,
)
from zerocompute.report import SUCCESS_NAME
from zerocompute.sandbox.python import available as python_runtime_available
from zerocompute.sandbox.wasm import InvalidExecutable, check_wasm

LISTING_LIMIT = 10000


def caller_identity(env: dict) -> str:
    """Who the auth middleware says the caller is (Keystone's user id, or tempauth's
    groups, which name the user)."""
    return env.get("HTTP_X_USER_ID") or env.get("REMOTE_USER") or ""


def caller_name(env: dict) -> str:
    """The caller as a person reads it: Keystone's user name, tempauth's
    ``account:user`` (the group of its groups that names the user)."""
    if env.get("HTTP_X_USER_NAME"):
        return env["HTTP_X_USER_NAME"]
    groups = caller_identity(env).split(",")
    return next((g for g in groups if ":" in g), groups[0])


def owns_account(env: dict, account: str) -> bool:
    """Whether the caller may read ``account`` itself (its owners; an operator)."""
    authorize = env.get("swift.authorize")
    if authorize is None:
        return True  # no auth middleware in the pipeline
    return authorize(Request(make_env(env, "HEAD", f"/v1/{account}"))) is None


def may_see_job(env: dict, secret: str, account: str, submitter: str) -> bool:
    """A job is seen by who submitted it (``submitter``: the identity's digest) and by
    the account's owners."""
    identity = caller_identity(env)
    return bool(identity) and identity_digest(secret, identity) == submitter or \
        owns_account(env, account)


class JobContext:
    """One job request: the user's checks and sub-requests, through the pipeline."""

    def __init__(self, req: Request, app: Any, config: ProxyConfig, logger: Any):
        # One info cache for every sub-request of the job: account and container
        # info is looked up once per job, not once per input checked or output written.
        req.environ.setdefault("swift.infocache", {})
        self.req = req
        self.app = app
        self.config = config
        self.logger = logger
        self.field: str | None = None  # the manifest field being checked, for errors
        self.account = req.split_path(2, 4, rest_with_last=True)[1]
        # The job's start: its report's timeline counts from here (time.monotonic()),
        # and its history record (time.time()).
        self.started = time.monotonic()
        self.started_at = time.time()

    @contextlib.contextmanager
    def checking(self, field: str | None) -> Iterator[None]:
        """What is checked meanwhile is ``field`` of the manifest (its errors say so)."""
        before, self.field = self.field, field
        try:
            yield
        finally:
            self.field = before

    # -- sub-requests --------------------------------------------------------------
    def subrequest(self, method: str, path: str, query: str = "",
                   headers: dict | None = None, body: bytes | None = None,
                   stream: Any = None, length: int = 0) -> Response:
        """A request through the rest of the pipeline, authorized as the caller.

        The body is ``body``, or ``length`` bytes read from ``stream`` as they
        are sent on (a task's buffered output, or a gathered output read piece
        by piece).
        """
        if body is not None:
            length = len(body)
        if body is not None or stream is not None:
            headers = dict(headers or {}, **{"Content-Length": str(length)})
        # A path with '?' keeps the sub-request from inheriting the job's query string.
        sub = make_subrequest(self.req.environ, method=method, path=quote(path) + "?" + query,
                              headers=headers, body=body, swift_source=wire.SWIFT_SOURCE)
        if stream is not None:
            sub.environ["wsgi.input"] = stream
        return sub.get_response(self.app)

    def check(self, resp: Response, what: SwiftPath, noun: str) -> None:
        """Refuse, naming the field checked, what the user may not read or is not there."""
        if resp.status_int == 404:
            raise JobError(f"{noun} {what} not found", self.field)
        if resp.status_int in (401, 403):
            raise JobError(f"not allowed to read {noun} {what}", self.field, status=403)
        if not resp.is_success:
            raise JobError(f"cannot read {noun} {what}: {resp.status}", self.field, status=502)

    # -- what a manifest names ------------------------------------------------------
    def fetch_executable(self, path: SwiftPath) -> tuple[str, bytes]:
        """The executable's bytes and MD5 (the key object servers cache it under)."""
        resp = self.subrequest("GET", path.path)
        self.check(resp, path, "executable")
        size = resp.content_length or 0
        if size > self.config.max_executable_bytes:
            close_if_possible(resp.app_iter)  # not read: the proxy drops the connection
            raise JobError(f"executable {path} is {size} bytes; at most "
                           f"{self.config.max_executable_bytes} are allowed", self.field)
        data = resp.body
        if runtime_of(path) == "python":
            if not python_runtime_available():
                raise JobError("this cluster has no Python runtime for .py executables",
                               self.field)
        else:
            try:
                check_wasm(data)
            except InvalidExecutable as err:
                raise JobError(f"executable {path}: {err}", self.field) from None
        return hashlib.md5(data, usedforsecurity=False).hexdigest(), data

    def expand_input(self, pattern: SwiftPath, whole: bool = False) -> list[InputObject]:
        """The objects a pattern names, as the user; large objects with their segments
        (``whole``: the large objects are read whole, their segments need no edges)."""
        if not pattern.has_wildcard:
            resp = self.subrequest("HEAD", pattern.path)
            self.check(resp, pattern, "input")
            return [InputObject(pattern, resp.content_length or 0, pattern.obj,
                                self.segments_of(pattern, resp.headers, whole))]
        prefix = listing_prefix(pattern)
        found: list[InputObject] = []
        marker = ""
        while True:
            query = (f"format=json&limit={LISTING_LIMIT}&prefix={quote(prefix, safe='')}"
                     f"&marker={quote(marker, safe='')}")
            resp = self.subrequest("GET", pattern.container_path, query)
            self.check(resp, SwiftPath(pattern.account, pattern.container), "container")
            listing = json.loads(resp.body or b"[]") if resp.status_int == 200 else []
            matched = match_listing(pattern, ((item["name"], item["bytes"])
                                              for item in listing if "name" in item))
            # A manifest is listed as an SLO (slo_etag) or as an empty object (DLO).
            maybe_large = {item["name"] for item in listing
                           if "name" in item and ("slo_etag" in item or item["bytes"] == 0)}
            for item in matched:
                if item.path.obj in maybe_large:
                    head = self.subrequest("HEAD", item.path.path)
                    self.check(head, item.path, "input")
                    segments = self.segments_of(item.path, head.headers, whole)
                    if segments:
                        item = replace(item, size=head.content_length or 0, segments=segments)
                found.append(item)
            if len(listing) < LISTING_LIMIT:
                return found
            marker = listing[-1].get("name") or listing[-1]["subdir"]

    def segments_of(self, path: SwiftPath, headers: Any,
                    whole: bool = False) -> tuple[Segment, ...]:
        """A large object's segments with their edges (``()`` for a plain object), read as
        the user: an SLO's manifest, or a DLO's segment listing, and a few bytes at each
        segment boundary (``planning.segment_edges``; not for an object read whole)."""
        if config_true_value(headers.get("X-Static-Large-Object")):
            resp = self.subrequest("GET", path.path, "multipart-manifest=get")
            self.check(resp, path, "input")
            parts = []
            for item in json.loads(resp.body):
                if item.get("sub_slo") or "range" in item or "data" in item:
                    raise JobError(f"{path}: an SLO with nested SLOs, ranges or inline "
                                   "data cannot be an input yet", self.field)
                container, _, obj = item["name"].lstrip("/").partition("/")
                parts.append((SwiftPath(path.account, container, obj), int(item["bytes"])))
        elif headers.get("X-Object-Manifest"):
            container, _, prefix = unquote(headers["X-Object-Manifest"]).partition("/")
            pattern = SwiftPath(path.account, container, prefix + "*")
            parts = [(found.path, found.size) for found in self.expand_input(pattern)]
        else:
            return ()
        if not parts:
            raise JobError(f"{path} is a large object without segments", self.field)
        if whole:
            return tuple(Segment(segment, size) for segment, size in parts)
        last_bytes, heads = [], []
        for number, (segment, size) in enumerate(parts):
            # The last segment's last byte decides nothing: it is not read.
            last_bytes.append(self.read_range(segment, f"bytes={size - 1}-{size - 1}")
                              if size and number + 1 < len(parts) else b"")
            heads.append(self.read_range(segment, f"bytes=0-{EDGE_BYTES - 1}")
                         if number and size else b"")
        return segment_edges([p for p, _ in parts], [s for _, s in parts], last_bytes, heads,
                             str(path))

    def read_range(self, path: SwiftPath, byte_range: str) -> bytes:
        resp = self.subrequest("GET", path.path, headers={"Range": byte_range})
        self.check(resp, path, "segment")
        return resp.body

    def open_plaintext(self, target: SwiftPath, size: int) -> tuple[int, Any]:
        """The object's bytes through the rest of the pipeline, as the user (decrypted)."""
        resp = self.subrequest("GET", target.path)
        if not resp.is_success or resp.content_length != size:
            close_if_possible(resp.app_iter)
            raise OSError(f"reading {target} through the proxy: {resp.status}, "
                          f"{resp.content_length} bytes (expected {size})")
        return size, resp.app_iter

    def prepare_output(self, output: SwiftPath) -> None:
        """Create the output container if needed; forget a previous run's ``_SUCCESS``."""
        container = SwiftPath(output.account, output.container)
        resp = self.subrequest("HEAD", container.path)
        if resp.status_int == 404:
            resp = self.subrequest("PUT", container.path)
        if resp.status_int in (401, 403):
            raise JobError(f"not allowed to write to {container}", "output", status=403)
        if not resp.is_success:
            raise JobError(f"cannot use output container {container}: {resp.status}",
                           "output", status=502)
        resp = self.subrequest("DELETE", job_file(output, SUCCESS_NAME).path)
        if resp.status_int in (401, 403):
            raise JobError(f"not allowed to write to {container}", "output", status=403)
