"""A job's progress bar (tqdm), for the command line and for notebooks."""

from __future__ import annotations

import shutil
import sys
from typing import Any

from zerocompute.page import human_bytes


class ProgressBar:
    """tqdm's bar over an async job's progress: tasks, bytes, retries, ETA."""

    def __init__(self, job: str, enabled: bool, notebook: bool = False):
        self.job = job
        self.enabled = enabled
        self.notebook = notebook  # tqdm.auto: a widget in Jupyter, text elsewhere
        self.bar: Any = None

    def update(self, state: dict[str, Any]) -> None:
        if not self.enabled:
            return
        progress = state.get("progress", {})
        if self.bar is None:
            if not progress.get("tasks"):
                return
            self.bar = self._new(progress["tasks"], state.get("name") or self.job[:8])
        self.bar.total = progress.get("tasks", self.bar.total)
        self.bar.n = progress.get("done", 0) + progress.get("failed", 0)
        self.bar.set_postfix_str(
            f"{human_bytes(progress.get('bytes_in', 0))} in, "
            f"{progress.get('retries', 0)} retries, {progress.get('failed', 0)} failed",
            refresh=False)
        self.bar.refresh()

    def _new(self, total: int, desc: str) -> Any:
        if self.notebook:
            from tqdm.auto import tqdm as auto_tqdm
            return auto_tqdm(total=total, unit="task", desc=desc)
        from tqdm import tqdm
        # A terminal that does not say its size (a bare pty) counts as 80x24: tqdm
        # would draw nothing there.
        size = shutil.get_terminal_size()
        return tqdm(total=total, unit="task", file=sys.stderr, desc=desc, ncols=size.columns,
                    nrows=size.lines)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
