"""Progress on a terminal: a rich bar per blob and one for the whole task."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class RichProgressView:
    """A :class:`atoll.progress.ProgressSink` drawing rich progress bars on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=30),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._overall: TaskID | None = None
        self._started = False

    def begin(self, task: str, description: str, ident: str, steps_total: int) -> None:
        with self._lock:
            if not self._started:
                self._progress.start()
                self._started = True
            if self._overall is None:
                self._overall = self._progress.add_task(description, total=0)

    def subtask(self, ident: str, kind: str, description: str, total: int) -> None:
        with self._lock:
            existing = self._tasks.get(ident)
            if existing is not None:
                # The blob is being sent again: start its bar (and its share) over.
                sent = self._progress.tasks[existing].completed
                self._progress.update(existing, completed=0)
                if self._overall is not None:
                    self._progress.advance(self._overall, -sent)
                return
            self._tasks[ident] = self._progress.add_task(f"  {description}", total=total)
            if self._overall is not None:
                current = self._progress.tasks[self._overall].total or 0
                self._progress.update(self._overall, total=current + total)

    def advance(self, ident: str, nbytes: int) -> None:
        with self._lock:
            task = self._tasks.get(ident)
            if task is not None:
                self._progress.advance(task, nbytes)
            if self._overall is not None:
                self._progress.advance(self._overall, nbytes)

    def done(self, ident: str, *, cached: bool = False) -> None:
        with self._lock:
            task = self._tasks.get(ident)
            if task is None:
                return
            state = self._progress.tasks[task]
            remaining = (state.total or 0) - state.completed
            if cached:
                self._progress.update(task, description=f"{state.description} (exists)")
            self._progress.update(task, completed=state.total)
            if self._overall is not None and remaining > 0:
                self._progress.advance(self._overall, remaining)

    def end(self, ok: bool) -> None:
        with self._lock:
            if self._started:
                self._progress.stop()
                self._started = False
