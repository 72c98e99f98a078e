"""atoll.phases: each thread's time split between phases without overlap."""

from __future__ import annotations

import threading

from atoll.phases import CHECKOUT, DECOMPRESS, FETCH, VERIFY, PhaseClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_inner_phase_pauses_the_outer_one() -> None:
    t = FakeTime()
    clock = PhaseClock(t)
    with clock.phase(DECOMPRESS):
        t.now += 1.0
        with clock.phase(FETCH):
            t.now += 5.0
        t.now += 2.0
        with clock.phase(VERIFY):
            t.now += 0.5
    assert clock.seconds() == {FETCH: 5.0, DECOMPRESS: 3.0, VERIFY: 0.5, CHECKOUT: 0.0}


def test_timed_counts_producing_each_item_and_not_consuming_it() -> None:
    t = FakeTime()
    clock = PhaseClock(t)

    def network() -> object:
        for piece in (b"a", b"b"):
            t.now += 2.0
            yield piece

    got = []
    for piece in clock.timed(network(), FETCH):  # type: ignore[arg-type]
        t.now += 10.0  # the consumer's own work
        got.append(piece)
    assert got == [b"a", b"b"]
    assert clock.seconds()[FETCH] == 4.0


def test_each_thread_has_its_own_phases() -> None:
    """A phase opened in one thread neither pauses nor closes another's."""
    t = FakeTime()
    clock = PhaseClock(t)
    opened, release = threading.Event(), threading.Event()

    def fetcher() -> None:
        with clock.phase(FETCH):
            opened.set()
            release.wait()

    thread = threading.Thread(target=fetcher)
    thread.start()
    opened.wait()
    t.now += 3.0
    with clock.phase(VERIFY):
        t.now += 1.0
    release.set()
    thread.join()
    assert clock.seconds() == {FETCH: 4.0, DECOMPRESS: 0.0, VERIFY: 1.0, CHECKOUT: 0.0}
