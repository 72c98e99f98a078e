"""The copy engine's threads: at most N blobs at once, errors handed to the waiter,
nothing started after the copy stops."""

from __future__ import annotations

import threading

import pytest

from atoll.oci.digest import Digest
from atoll.oci.imagecopy import _Workers
from atoll.oci.manifest import Descriptor, MediaType


def _desc(n: int) -> Descriptor:
    return Descriptor(MediaType.OCI_LAYER_GZIP, Digest.of(str(n).encode()), n)


def test_no_more_threads_than_asked_and_every_result_comes_back() -> None:
    workers = _Workers(3)
    lock = threading.Lock()
    running = 0
    most = 0
    gate = threading.Event()

    def job(n: int) -> Descriptor:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        gate.wait(5)
        with lock:
            running -= 1
        return _desc(n)

    jobs = [workers.submit(lambda n=n: job(n)) for n in range(10)]
    gate.set()
    assert [j.result() for j in jobs] == [_desc(n) for n in range(10)]
    workers.shutdown()
    assert most == 3


def test_an_error_goes_to_whoever_waits_for_the_job() -> None:
    workers = _Workers(2)

    def fail() -> Descriptor:
        raise ValueError("blob went away")

    job = workers.submit(fail)
    with pytest.raises(ValueError, match="blob went away"):
        job.result()
    workers.shutdown()


def test_shutdown_cancels_waiting_jobs_and_waits_for_running_ones() -> None:
    workers = _Workers(1)
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def slow() -> Descriptor:
        started.set()
        release.wait(5)
        ran.append(0)
        return _desc(0)

    def never() -> Descriptor:
        ran.append(1)
        return _desc(1)

    first = workers.submit(slow)
    second = workers.submit(never)
    assert started.wait(5)
    threading.Timer(0.05, release.set).start()
    workers.shutdown()
    assert ran == [0]
    assert first.result() == _desc(0)
    with pytest.raises(RuntimeError, match="cancelled"):
        second.result()
