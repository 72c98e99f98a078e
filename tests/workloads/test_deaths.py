"""How the supervisor learns that a container ended (atoll.workloads.supervise.deaths), with
real podman: one ``podman events`` stream for all containers instead of a
``podman wait`` each, and its safety nets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atoll.workloads.supervise import deaths
from atoll.workloads.supervise.deaths import ContainerDeaths, DeathStream, EventWait, PodmanWait
from helpers.workloads import WorkloadEnv, push_workload_image, wait_for

pytestmark = pytest.mark.integration


def _image(env: WorkloadEnv) -> str:
    image = push_workload_image(env.registry, env.registry.new_repo("deaths"))
    env.podman("pull", "--quiet", image)
    return image


def _run(env: WorkloadEnv, image: str, script: str, *, rm: bool = True) -> tuple[str, int | None]:
    """Start ``sh -c SCRIPT``; return its container ID and conmon's PID (None when
    the container is gone already)."""
    args = ["run", "-d", *(["--rm"] if rm else []), image, "sh", "-c", script]
    container = env.podman(*args).strip()
    conmon = env.podman("inspect", "--format", "{{.State.ConmonPid}}", container, check=False)
    return container, int(conmon) if conmon.strip().isdigit() else None


def _gone(env: WorkloadEnv, container: str) -> bool:
    return container not in env.podman("ps", "--all", "--no-trunc", "--format", "{{.ID}}")


def test_exit_statuses_come_from_one_events_stream(workload_env: WorkloadEnv) -> None:
    env = {**os.environ, **workload_env.podman_env}
    image = _image(workload_env)
    since = time.time()
    watching = ContainerDeaths()
    try:
        exits, conmon = _run(workload_env, image, "sleep 1; exit 3")
        waiter = watching.waiter(exits, conmon, env, since)
        assert isinstance(waiter, EventWait)
        assert not waiter.done()
        assert waiter.wait(60)
        assert waiter.exit_status() == 3
        waiter.close()

        # A clean exit: podman leaves the status out of the event.
        clean, conmon = _run(workload_env, image, "sleep 1")
        waiter = watching.waiter(clean, conmon, env, since)
        assert waiter.wait(60)
        assert waiter.exit_status() == 0
        waiter.close()

        killed, conmon = _run(workload_env, image, "sleep 300")
        waiter = watching.waiter(killed, conmon, env, since)
        workload_env.podman("kill", "--signal", "KILL", killed)
        assert waiter.wait(60)
        assert waiter.exit_status() == 128 + signal.SIGKILL
        waiter.close()

        # Ended and removed (--rm) before anyone waited: the stream has seen it.
        early, conmon = _run(workload_env, image, "exit 7")
        wait_for(lambda: _gone(workload_env, early), "the container's removal")
        waiter = watching.waiter(early, conmon, env, since)
        assert waiter.wait(60)
        assert waiter.exit_status() == 7
        waiter.close()
        (stream,) = watching._streams.values()
    finally:
        watching.close()
    assert stream._proc is not None
    stream._proc.wait(30)


def test_a_stream_that_ends_follows_again_and_misses_nothing(workload_env: WorkloadEnv) -> None:
    """podman events killed from outside: the stream starts again from before its
    last start, so a container that ended in the gap is still seen."""
    env = {**os.environ, **workload_env.podman_env}
    image = _image(workload_env)
    watching = ContainerDeaths()
    try:
        running, conmon = _run(workload_env, image, "sleep 300")
        watching.waiter(running, conmon, env, time.time()).close()  # starts the stream
        (stream,) = watching._streams.values()
        first = wait_for(lambda: stream._proc, "podman events to start")
        assert isinstance(first, subprocess.Popen)
        first.kill()
        gap, conmon = _run(workload_env, image, "exit 9")
        wait_for(lambda: stream._proc is not first, "podman events to be started again")
        waiter = watching.waiter(gap, conmon, env, time.time())
        assert waiter.wait(60)
        assert waiter.exit_status() == 9
        assert not stream.broken
        waiter.close()
    finally:
        watching.close()


def test_without_an_event_podman_is_asked_once_conmon_is_gone(
    workload_env: WorkloadEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream misses the death (its events are dropped here): after conmon's
    exit and the grace, the container's own state answers, or nothing does."""
    monkeypatch.setattr(deaths, "GRACE", 0.5)
    monkeypatch.setattr(DeathStream, "_record", lambda self, line: None)
    env = {**os.environ, **workload_env.podman_env}
    image = _image(workload_env)
    watching = ContainerDeaths()
    try:
        kept, conmon = _run(workload_env, image, "sleep 1; exit 5", rm=False)
        waiter = watching.waiter(kept, conmon, env, time.time())
        assert waiter.wait(60)
        assert waiter.exit_status() == 5
        waiter.close()

        removed, conmon = _run(workload_env, image, "exit 6")
        wait_for(lambda: _gone(workload_env, removed), "the container's removal")
        waiter = watching.waiter(removed, conmon, env, time.time())
        assert waiter.wait(60)
        assert waiter.exit_status() is None  # gone, and no event said how
        waiter.close()
    finally:
        watching.close()


def test_podman_wait_where_podman_keeps_no_events(workload_env: WorkloadEnv) -> None:
    conf = Path(workload_env.podman_env["CONTAINERS_CONF"])
    quiet = conf.with_name("no-events.conf")
    quiet.write_text(conf.read_text().replace('events_logger = "file"', 'events_logger = "none"'))
    env = {**os.environ, **workload_env.podman_env, "CONTAINERS_CONF": str(quiet)}
    image = _image(workload_env)
    watching = ContainerDeaths()
    try:
        container = subprocess.run(
            ["podman", "run", "-d", "--rm", image, "sh", "-c", "sleep 5; exit 4"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        waiter = watching.waiter(container, 1, env, time.time())
        assert isinstance(waiter, PodmanWait)
        assert waiter.wait(60)
        assert waiter.exit_status() == 4
        waiter.close()
    finally:
        watching.close()


_FOLLOW = """
import os, sys, time
from atoll.workloads.supervise.deaths import DeathStream
stream = DeathStream(dict(os.environ), time.time())
while stream._proc is None:
    time.sleep(0.05)
print(stream._proc.pid, flush=True)
time.sleep(600)
"""


def test_the_stream_ends_with_the_process_that_follows_it(workload_env: WorkloadEnv) -> None:
    """Even a supervisor killed with SIGKILL leaves no podman events behind."""
    follower = subprocess.Popen(
        [sys.executable, "-c", _FOLLOW], stdout=subprocess.PIPE, text=True,
        env={**os.environ, **workload_env.podman_env},
    )  # fmt: skip
    assert follower.stdout is not None
    events_pid = int(follower.stdout.readline())
    assert Path(f"/proc/{events_pid}").exists()
    follower.kill()
    follower.wait()
    wait_for(lambda: not _alive(events_pid), "podman events to end")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
