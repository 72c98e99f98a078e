"""A token bucket: caps a byte rate across threads.

The bucket holds up to *burst* tokens (bytes) and fills at *rate* tokens a
second.  :meth:`TokenBucket.consume` takes what it is given at once and, when
that leaves the bucket in debt, sleeps until the debt is paid: a chunk larger
than the bucket is fine, it just waits longer.  Callers in several threads share
one bucket: each takes its tokens under the lock and sleeps outside it, so
together they never go faster than *rate* (plus the initial *burst*).

Time comes from an injectable monotonic clock and sleep, so tests can check the
arithmetic exactly without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Without an explicit burst, the bucket holds this many seconds' worth of bytes.
DEFAULT_BURST_SECONDS = 0.25


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate * DEFAULT_BURST_SECONDS
        if self.burst <= 0:
            raise ValueError(f"burst must be positive, not {burst}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now (negative: in debt)."""
        with self._lock:
            self._refill()
            return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    def consume(self, amount: int) -> float:
        """Take *amount* tokens, sleeping while the bucket is in debt; the seconds slept."""
        if amount <= 0:
            return 0.0
        with self._lock:
            self._refill()
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
