"""The token bucket, with a fake monotonic clock: exact arithmetic, no sleeping."""

from __future__ import annotations

import threading

import pytest

from atoll.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def bucket(rate: float, burst: float | None = None) -> tuple[TokenBucket, FakeTime]:
    t = FakeTime()
    return TokenBucket(rate, burst, clock=t.clock, sleep=t.sleep), t


def test_burst_goes_at_once_then_the_rate_holds() -> None:
    limiter, t = bucket(100, burst=50)
    assert limiter.consume(30) == 0
    assert limiter.tokens == 20
    assert limiter.consume(70) == pytest.approx(0.5)  # 50 in debt at 100/s
    assert t.slept == [pytest.approx(0.5)]
    assert limiter.tokens == pytest.approx(0)
    assert limiter.consume(10) == pytest.approx(0.1)
    assert t.now == pytest.approx(100.6)


def test_refill_is_capped_at_the_burst() -> None:
    limiter, t = bucket(100, burst=50)
    limiter.consume(50)
    t.now += 10  # idle: would refill 1000, the bucket holds 50
    assert limiter.tokens == 50
    assert limiter.consume(50) == 0
    assert limiter.consume(1) == pytest.approx(0.01)


def test_chunk_larger_than_the_bucket_waits_longer() -> None:
    limiter, _ = bucket(1000, burst=100)
    assert limiter.consume(1100) == pytest.approx(1.0)


def test_long_download_averages_the_rate() -> None:
    rate = 1024 * 1024
    limiter, t = bucket(rate)
    assert limiter.burst == rate / 4
    start = t.now
    for _ in range(64):
        limiter.consume(64 * 1024)  # 4 MiB in 64 KiB pieces
    assert t.now - start == pytest.approx(4 - 0.25)


def test_partial_refill_between_calls() -> None:
    limiter, t = bucket(10, burst=10)
    limiter.consume(10)
    t.now += 0.3
    assert limiter.tokens == pytest.approx(3)
    assert limiter.consume(5) == pytest.approx(0.2)


def test_nothing_to_take() -> None:
    limiter, t = bucket(10)
    assert limiter.consume(0) == 0
    assert t.slept == []


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (10, 0)])
def test_invalid_settings(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_threads_share_one_rate() -> None:
    lock = threading.Lock()
    t = FakeTime()

    def sleep(seconds: float) -> None:
        with lock:
            t.slept.append(seconds)

    limiter = TokenBucket(100, burst=100, clock=t.clock, sleep=sleep)
    threads = [threading.Thread(target=limiter.consume, args=(100,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The clock stood still: the first took the burst, the others queued behind it.
    assert sorted(t.slept) == pytest.approx([1.0, 2.0, 3.0, 4.0])
