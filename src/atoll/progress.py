"""Progress reporting: what long operations tell about themselves.

Library code reports through a :class:`ProgressSink`; it never draws.  The
command line picks a renderer: a rich progress bar on a terminal, JSON lines on
``--progress-fd N`` (shaped like bootc's progress events), or nothing.

JSON-lines events (one object per line, documented in docs/progress.md)::

    {"type": "Start", "version": 1}
    {"type": "ProgressBytes", "task": "copy", "description": "...", "id": "...",
     "bytesCached": 0, "bytes": 123, "bytesTotal": 456,
     "stepsCached": 0, "steps": 1, "stepsTotal": 3,
     "subtasks": [{"subtask": "blob", "description": "...", "id": "sha256:...",
                   "bytesCached": 0, "bytes": 12, "bytesTotal": 34}]}
    {"type": "End", "task": "copy", "id": "...", "ok": true}

Sinks are called from worker threads and must be thread-safe.
"""

from __future__ import annotations

import json
import threading
import time
from typing import IO, Protocol

PROGRESS_VERSION = 1


class ProgressSink(Protocol):
    def begin(self, task: str, description: str, ident: str, steps_total: int) -> None: ...

    def subtask(self, ident: str, kind: str, description: str, total: int) -> None: ...

    def advance(self, ident: str, nbytes: int) -> None: ...

    def done(self, ident: str, *, cached: bool = False) -> None: ...

    def end(self, ok: bool) -> None: ...


class NullProgress:
    def begin(self, task: str, description: str, ident: str, steps_total: int) -> None:
        pass

    def subtask(self, ident: str, kind: str, description: str, total: int) -> None:
        pass

    def advance(self, ident: str, nbytes: int) -> None:
        pass

    def done(self, ident: str, *, cached: bool = False) -> None:
        pass

    def end(self, ok: bool) -> None:
        pass


class _Sub:
    """One transfer's progress within a task."""

    __slots__ = ("cached", "description", "done_bytes", "finished", "kind", "total")

    def __init__(self, kind: str, description: str, total: int) -> None:
        self.kind = kind
        self.description = description
        self.total = total
        self.done_bytes = 0
        self.cached = False
        self.finished = False


class _State:
    """The task being shown, and its transfers."""

    __slots__ = ("description", "ident", "steps_total", "subs", "task")

    def __init__(
        self, task: str = "", description: str = "", ident: str = "", steps_total: int = 0
    ) -> None:
        self.task = task
        self.description = description
        self.ident = ident
        self.steps_total = steps_total
        self.subs: dict[str, _Sub] = {}

    def totals(self) -> dict[str, int]:
        subs = self.subs.values()
        return {
            "bytesCached": sum(s.total for s in subs if s.cached),
            "bytes": sum(s.done_bytes for s in subs),
            "bytesTotal": sum(s.total for s in subs),
            "stepsCached": sum(1 for s in subs if s.cached),
            "steps": sum(1 for s in subs if s.finished),
            "stepsTotal": max(self.steps_total, len(self.subs)),
        }


class JsonLinesProgress:
    """Writes bootc-shaped JSON events to a file, at most every *interval* s
    per byte update (start and completion events are always written)."""

    def __init__(self, stream: IO[str], interval: float = 0.1) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._state = _State()
        self._interval = interval
        self._last = 0.0
        self._emit({"type": "Start", "version": PROGRESS_VERSION})

    def _emit(self, event: dict[str, object]) -> None:
        self._stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._stream.flush()

    def _bytes_event(self) -> None:
        st = self._state
        subtasks = [
            {
                "subtask": s.kind,
                "description": s.description,
                "id": ident,
                "bytesCached": s.total if s.cached else 0,
                "bytes": s.done_bytes,
                "bytesTotal": s.total,
            }
            for ident, s in st.subs.items()
            if not s.finished
        ]
        self._emit(
            {
                "type": "ProgressBytes",
                "task": st.task,
                "description": st.description,
                "id": st.ident,
                **st.totals(),
                "subtasks": subtasks,
            }
        )
        self._last = time.monotonic()

    def begin(self, task: str, description: str, ident: str, steps_total: int) -> None:
        with self._lock:
            self._state = _State(task, description, ident, steps_total)
            self._bytes_event()

    def subtask(self, ident: str, kind: str, description: str, total: int) -> None:
        with self._lock:
            self._state.subs[ident] = _Sub(kind, description, total)
            self._bytes_event()

    def advance(self, ident: str, nbytes: int) -> None:
        with self._lock:
            sub = self._state.subs.get(ident)
            if sub is None:
                return
            sub.done_bytes += nbytes
            if time.monotonic() - self._last >= self._interval:
                self._bytes_event()

    def done(self, ident: str, *, cached: bool = False) -> None:
        with self._lock:
            sub = self._state.subs.get(ident)
            if sub is None:
                return
            sub.finished = True
            sub.cached = cached
            sub.done_bytes = sub.total
            self._bytes_event()

    def end(self, ok: bool) -> None:
        with self._lock:
            self._bytes_event()
            self._emit({"type": "End", "task": self._state.task, "id": self._state.ident, "ok": ok})


class FanOut:
    """Sends every event to several sinks (a bar on the terminal and a fd)."""

    def __init__(self, *sinks: ProgressSink) -> None:
        self._sinks = sinks

    def begin(self, task: str, description: str, ident: str, steps_total: int) -> None:
        for s in self._sinks:
            s.begin(task, description, ident, steps_total)

    def subtask(self, ident: str, kind: str, description: str, total: int) -> None:
        for s in self._sinks:
            s.subtask(ident, kind, description, total)

    def advance(self, ident: str, nbytes: int) -> None:
        for s in self._sinks:
            s.advance(ident, nbytes)

    def done(self, ident: str, *, cached: bool = False) -> None:
        for s in self._sinks:
            s.done(ident, cached=cached)

    def end(self, ok: bool) -> None:
        for s in self._sinks:
            s.end(ok)
