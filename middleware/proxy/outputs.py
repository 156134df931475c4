"""What a job writes, in one place: outputs, the gathered output, the job's own files.

Every output is a Swift object written through the rest of the pipeline as
the user (:class:`~zerocompute.middleware.proxy.context.JobContext`), so ACLs,
quotas and every other middleware apply, and a failed write leaves nothing
(a PUT is atomic).  Each carries the job's id (``JOB_ID_META``), so that a
proxy taking an async job over can tell what it committed already.  A job's
``_report.json`` is always written, ``_SUCCESS`` only when every task
succeeded, and last: whoever sees it may trust every output is there.
"""

from __future__ import annotations

import tempfile
from typing import Any

from zerocompute.manifest import SwiftPath
from zerocompute.middleware.proxy.context import JobContext
from zerocompute.planning import job_file
from zerocompute.report import REPORT_NAME, SUCCEEDED, SUCCESS_NAME, JobReport

# A task's output is kept in memory up to this size while it waits to be written;
# beyond it, a part streams from its node straight into its PUT (OutputStream), and
# any other output is spooled to a temporary file.
SPOOL_MEMORY = 1 << 20
GATHER_MEMORY = 16 << 20
WRITE_TRIES = 3
# Every output a job writes names the job (the run's id), so that a proxy taking
# an async job over can tell what the job has committed already.
JOB_ID_META = "X-Object-Meta-Zerocompute-Job"
_COPY_CHUNK = 65536


class OutputLost(OSError):
    """A streamed output that could not be written: its bytes are gone, so its task
    runs again."""


class Outputs:
    """One job's writes: each output (with retries), its job files, its commits."""

    def __init__(self, ctx: JobContext, job_id: str):
        self.ctx = ctx
        self.job_id = job_id
        self.bytes = 0  # written through the proxy, each output once

    def write(self, target: SwiftPath, output: Any, length: int,
              cancelled: Any = lambda: None) -> str | None:
        """PUT ``length`` bytes of ``output`` (a file) as ``target``; the error, if it
        could not be written.  Tried again on a server error, not on a refusal;
        ``cancelled()`` says why to stop instead (None: go on)."""
        status = ""
        for _ in range(WRITE_TRIES):
            reason = cancelled()
            if reason:
                return reason
            output.seek(0)
            resp = self.ctx.subrequest("PUT", target.path, stream=output, length=length,
                                       headers={JOB_ID_META: self.job_id})
            status = resp.status
            if resp.is_success:
                self.bytes += length
                return None
            if resp.status_int // 100 == 4:
                break  # refused (401, 403, 413 ...): trying again changes nothing
        return f"writing output {target} failed: {status}"

    def write_streamed(self, target: SwiftPath, output: OutputStream,
                       cancelled: Any = lambda: None) -> str | None:
        """PUT ``output`` as ``target`` as it arrives from its node: the error if the
        write was refused (the task failed); :class:`OutputLost` if it failed otherwise
        (the task runs again: what was sent is gone).  Either way every byte of
        ``output`` is read or its stream fails."""
        reason = cancelled()
        if reason:
            output.drain()
            return reason
        resp = self.ctx.subrequest("PUT", target.path, stream=output, length=output.length,
                                   headers={JOB_ID_META: self.job_id})
        if output.failed is not None:
            raise OutputLost(f"its output ended early: {output.failed}")
        if resp.is_success:
            self.bytes += output.length
            return None
        if resp.status_int // 100 == 4:  # refused (401, 403, 413 ...): anywhere the same
            output.drain()
            return f"writing output {target} failed: {resp.status}"
        raise OutputLost(f"writing output {target} failed: {resp.status}")

    def write_gathered(self, target: SwiftPath, gathered: Gathered) -> str | None:
        """The one output every task's output went into, in task order."""
        try:
            resp = self.ctx.subrequest("PUT", target.path, stream=gathered.reader(),
                                       length=gathered.size,
                                       headers={JOB_ID_META: self.job_id})
        finally:
            gathered.close()
        if not resp.is_success:
            return f"writing output {target} failed: {resp.status}"
        self.bytes += gathered.size
        return None

    def committed(self, target: SwiftPath) -> int | None:
        """The size of ``target`` if this job has written it already, else None."""
        resp = self.ctx.subrequest("HEAD", target.path)
        if resp.is_success and resp.headers.get(JOB_ID_META) == self.job_id:
            return resp.content_length or 0
        return None

    def delete(self, target: SwiftPath) -> None:
        self.ctx.subrequest("DELETE", target.path)

    def write_job_files(self, output: SwiftPath, report: JobReport) -> None:
        """The report always; ``_SUCCESS`` last, and only when every task succeeded."""
        files = [(REPORT_NAME, "application/json", report.to_json())]
        if report.status == SUCCEEDED:
            # Written last: whoever sees _SUCCESS may trust every output is there.
            files.append((SUCCESS_NAME, "text/plain", b""))
        for name, content_type, body in files:
            target = job_file(output, name)
            try:
                resp = self.ctx.subrequest("PUT", target.path, body=body,
                                           headers={"Content-Type": content_type})
                failure = None if resp.is_success else resp.status
            except Exception as err:  # noqa: BLE001 - said in the report we answer with
                self.ctx.logger.exception("zerocompute: writing %s failed", target)
                failure = f"{type(err).__name__}: {err}"
            if failure is not None:
                report.error = f"writing {target} failed: {failure}"
                return


def read_output(stream: Any, length: int) -> Any:
    """``length`` bytes of a task's stdout, in memory or spooled to a temporary file."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    left = length
    while left > 0:
        chunk = stream.read(min(left, _COPY_CHUNK))
        if not chunk:
            spool.close()
            raise OSError(f"output ended {left} bytes short")
        spool.write(chunk)
        left -= len(chunk)
    spool.seek(0)
    return spool


class OutputStream:
    """A large task output still on its node's answer: read once, in order, by its PUT
    (no spool: its bytes are copied once on their way through the proxy)."""

    def __init__(self, stream: Any, length: int):
        self.stream = stream
        self.length = self.left = length
        self.failed: BaseException | None = None  # why reading it stopped short

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of it (all that is left if negative, as a file gives)."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(_COPY_CHUNK), b""))
        if self.left <= 0:
            return b""
        try:
            chunk = self.stream.read(min(size, self.left))
            if not chunk:
                raise OSError(f"output ended {self.left} bytes short")
        except BaseException as err:  # a timeout too: the PUT must not commit it
            self.failed = err
            raise
        self.left -= len(chunk)
        return chunk

    def drain(self) -> None:
        """Read what is left of it, unsent (the stream's next frame follows it)."""
        while self.left > 0:
            self.read(_COPY_CHUNK)


class Gathered:
    """Every task's output for one object: appended as they come, read in task order."""

    def __init__(self):
        self.file = tempfile.SpooledTemporaryFile(max_size=GATHER_MEMORY)
        self.pieces: dict[int, tuple[int, int]] = {}  # task index -> (offset, length)
        self.size = 0

    def add(self, index: int, output: Any, length: int) -> None:
        # Copied without yielding to the hub, so concurrent streams cannot interleave.
        offset = self.file.seek(0, 2)
        while chunk := output.read(_COPY_CHUNK):
            self.file.write(chunk)
        output.close()
        self.pieces[index] = (offset, length)
        self.size += length

    def reader(self) -> _InOrder:
        return _InOrder(self.file, [self.pieces[i] for i in sorted(self.pieces)])

    def close(self) -> None:
        self.file.close()


class _InOrder:
    """A file-like ``read`` over the pieces of a file, in the given order."""

    def __init__(self, file: Any, pieces: list[tuple[int, int]]):
        self.file = file
        self.pieces = list(reversed(pieces))
        self.left = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if negative), across pieces as a file."""
        wanted = float("inf") if size is None or size < 0 else size
        parts = []
        while wanted > 0:
            if self.left == 0:
                if not self.pieces:
                    break
                offset, self.left = self.pieces.pop()
                self.file.seek(offset)
                continue
            data = self.file.read(int(min(wanted, self.left)))
            if not data:
                raise OSError("gathered output shorter than recorded")
            self.left -= len(data)
            wanted -= len(data)
            parts.append(data)
        return b"".join(parts)
