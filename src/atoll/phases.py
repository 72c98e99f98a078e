"""Where an update's time goes: seconds by phase, summed over the threads.

Phases (the keys of ``transfer.seconds`` in ``atoll upgrade --json``):

``fetch``
    waiting for the registry: reading a blob's stream, a range answer, a delta's payload
``decompress``
    decoding gzip/zstd, and making files from a delta's patches
``verify``
    hashing against digests: a blob against its descriptor, a layer's tar
    against its diff_id, a file against its TOC
``checkout``
    writing the deployment's tree from the store

A phase entered inside another (the decompressor pulling the next compressed
piece from the network) is counted to the inner one only: each thread's
seconds are split without overlap.  Threads run at once (a layer's stream is
fetched and decoded while the importer writes the objects), so the phases can
add up to more than the update's wall-clock ``elapsed``; time spent writing
objects and trees into the store is in ``elapsed`` and in no phase.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

FETCH = "fetch"
DECOMPRESS = "decompress"
VERIFY = "verify"
CHECKOUT = "checkout"
PHASES = (FETCH, DECOMPRESS, VERIFY, CHECKOUT)


@dataclass
class _Open:
    """A phase a thread is in, counting since *since* (its inner phases paused it)."""

    name: str
    since: float


class PhaseClock:
    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._local = threading.local()

    def _stack(self) -> list[_Open]:
        stack: list[_Open] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name] += seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time inside to *name* (and not to the phase around it)."""
        stack = self._stack()
        now = self._now()
        if stack:
            self._add(stack[-1].name, now - stack[-1].since)
        stack.append(_Open(name, now))
        try:
            yield
        finally:
            now = self._now()
            self._add(name, now - stack.pop().since)
            if stack:
                stack[-1].since = now

    def timed(self, items: Iterable[bytes], name: str) -> Iterator[bytes]:
        """*items*, the time taken to produce each one counted to *name*."""
        it = iter(items)
        while True:
            with self.phase(name):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return {name: round(value, 6) for name, value in self._seconds.items()}
