"""Execution on GET: one guest over one object, its stdout as the response.

ZeroCloud's ``open``, Storlets' ``X-Run-Storlet``.  ``X-Zerocompute-Run``
names the executable (``swift://...``), or says ``default``: the container's
``X-Container-Meta-Zerocompute-Run``.  ``X-Zerocompute-Args`` is a JSON list
of arguments.  The object and the executable are read as the user; a
``Range`` (one range of bytes) is the guest's input.  The task runs on a
replica holder, under the operator's maximum limits
(:func:`~zerocompute.middleware.proxy.runner.run_one_task`); the response is
the guest's stdout once it has exited 0 (``X-Zerocompute-Node`` names where
it ran), else a JSON error.
"""

from __future__ import annotations

import json

from swift.common.swob import Response

from zerocompute import wire
from zerocompute.errors import JobError
from zerocompute.manifest import MapStage, SwiftPath, parse_exec, parse_string_list
from zerocompute.middleware.bodies import FileIter, json_response
from zerocompute.middleware.proxy.context import JobContext
from zerocompute.middleware.proxy.dispatch import Dispatcher
from zerocompute.middleware.proxy.runner import run_one_task


class RunOnGet:
    """One ``GET`` with ``X-Zerocompute-Run``, as its user."""

    def __init__(self, ctx: JobContext, dispatcher: Dispatcher, target: SwiftPath):
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.target = target
        self.headers = ctx.req.headers

    def executable(self) -> SwiftPath:
        named = self.headers[wire.RUN_HEADER].strip()
        if named.lower() == "default":
            resp = self.ctx.subrequest("HEAD", self.target.container_path)
            self.ctx.check(resp, SwiftPath(self.target.account, self.target.container),
                           "container")
            named = resp.headers.get("X-Container-Meta-Zerocompute-Run", "")
            if not named:
                raise JobError("the container names no default executable "
                               "(X-Container-Meta-Zerocompute-Run)", wire.RUN_HEADER)
        return parse_exec(named, wire.RUN_HEADER, self.target.account)

    def arguments(self) -> tuple[str, ...]:
        raw = self.headers.get(wire.ARGS_HEADER)
        if not raw:
            return ()
        try:
            args = json.loads(raw)
        except ValueError:
            raise JobError("must be a JSON list of strings", wire.ARGS_HEADER) from None
        return parse_string_list(args, wire.ARGS_HEADER)

    def byte_range(self, size: int) -> tuple[int, int] | None:
        req = self.ctx.req
        if "Range" not in req.headers:
            return None
        ranges = req.range.ranges_for_length(size) if req.range else None
        if not ranges or len(ranges) != 1:
            raise JobError("give one range of bytes", "Range", status=416)
        return ranges[0]

    def respond(self) -> Response:
        ctx = self.ctx
        with ctx.checking(wire.RUN_HEADER):
            exe = self.executable()
            args = self.arguments()
            executable = ctx.fetch_executable(exe)
        with ctx.checking("path"):
            head = ctx.subrequest("HEAD", self.target.path)
            ctx.check(head, self.target, "object")
        size = head.content_length or 0
        span = self.byte_range(size)
        report, output = run_one_task(ctx, self.dispatcher, MapStage(exec=exe, args=args),
                                      executable, self.target, size, span)
        if output is None:
            return json_response(502 if report.exit is None else 422, {
                "error": report.error or "the guest failed", "node": report.node,
                "stderr": report.stderr})
        length = output.seek(0, 2)
        output.seek(0)
        return Response(status=200, app_iter=FileIter(output), content_length=length,
                        content_type="application/octet-stream",
                        headers={wire.NODE_HEADER: report.node,
                                 "X-Zerocompute-Local": str(report.local).lower()})
