"""How the supervisor learns that a container ended, and its exit status.

``podman wait CONTAINER`` tells both, but one of them per container is one
podman process per running workload for as long as it runs: with podman 4.3,
about 8 MB of memory of its own and 0.4 % of a core each (it looks every
250 ms).  Thirty workloads cost 240 MB and a tenth of a core doing nothing.

Instead, one ``podman events --filter event=died`` stream serves every container
of a podman environment.  podman writes a ``died`` event with the exit status
when it cleans up after a container, ``--rm`` ones included (they are gone
right after, so nothing else can be asked then).  Because a stream can miss
what it never got, there are three safety nets:

* the stream replays from a little before it started or restarted
  (``--since``): a container that dies between ``podman run -d`` and the start
  of its wait, or while the stream restarts, is still seen;
* when the container's ``conmon`` has exited and no event came within
  :data:`GRACE` seconds, podman is asked about the container directly;
* where podman writes no events (``events_logger = "none"``) or the stream
  keeps failing, each container gets its ``podman wait``, as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping

from atoll.errors import AtollError
from atoll.run import DEVNULL, PIPE, Process, TimeoutExpired, dies_with_caller, spawn
from atoll.workloads.supervise.runtime import environment_key, inspect_container, podman

log = logging.getLogger(__name__)

#: Seconds after conmon's exit before podman is asked instead of the stream.
GRACE = 5.0
#: The stream replays this many seconds before it (re)started.
REPLAY = 2.0
#: Deaths remembered for containers nobody waits for yet (the oldest go first).
REMEMBERED = 4096
#: A stream that fails this many times in a row, each after less than STEADY
#: seconds, is given up for ``podman wait``.
FAILURES = 3
STEADY = 10.0


class DeathStream:
    """``podman events`` of the ``died`` kind for one podman environment."""

    def __init__(self, env: Mapping[str, str], since: float) -> None:
        """Follow the deaths of containers of *env* from *since* (a time.time())."""
        self.env = dict(env)
        self._cond = threading.Condition()
        self._deaths: OrderedDict[str, int | None] = OrderedDict()
        self._since = since - REPLAY
        self._proc: Process | None = None
        self._closing = False
        self.broken = not self._podman_writes_events()
        if self.broken:
            log.info("podman keeps no events here: one podman wait per container")
            return
        self._thread = threading.Thread(target=self._follow, name="podman-events", daemon=True)
        self._thread.start()

    def _podman_writes_events(self) -> bool:
        proc = podman("info", "--format", "{{.Host.EventLogger}}", env=self.env, timeout=60.0)
        logger = proc.stdout.decode(errors="replace").strip()
        return proc.returncode == 0 and logger not in ("", "none")

    def exit_status(self, container_id: str) -> tuple[bool, int | None]:
        """(True, status) once the container's death is known, else (False, None)."""
        with self._cond:
            return self._lookup(container_id)

    def wait(self, container_id: str, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the container's death; True once known."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._lookup(container_id)[0] and not self.broken:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._lookup(container_id)[0]

    def _lookup(self, container_id: str) -> tuple[bool, int | None]:
        """By the full ID, as podman run -d and podman ps --format json give it."""
        if container_id in self._deaths:
            return True, self._deaths[container_id]
        return False, None

    def close(self) -> None:
        with self._cond:
            self._closing = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _follow(self) -> None:
        failures = 0
        while True:
            started = time.time()
            events = ["podman", "events", "--format", "json",
                      "--filter", "event=died", "--since", f"{self._since:.3f}"]  # fmt: skip
            # stderr to a file: a pipe nobody reads until the end could fill and stall it.
            with tempfile.TemporaryFile() as errors:
                try:
                    # The stream never ends by itself: it must end with the supervisor.
                    proc = spawn(
                        dies_with_caller(events, "SIGKILL"), stdout=PIPE, stderr=errors,
                        env=self.env,
                    )  # fmt: skip
                except (OSError, AtollError) as exc:
                    self._give_up(f"cannot run podman events: {exc}")
                    return
                with self._cond:
                    if self._closing:
                        proc.kill()
                    self._proc = proc
                assert proc.stdout is not None
                for line in proc.stdout:
                    self._record(line)
                proc.wait()
                errors.seek(0)
                lines = errors.read().decode(errors="replace").strip().splitlines()
                error = lines[-1] if lines else ""
            with self._cond:
                if self._closing:
                    return
            failures = failures + 1 if time.time() - started < STEADY else 1
            if failures >= FAILURES:
                self._give_up(f"podman events keeps ending ({error or proc.returncode})")
                return
            log.info("podman events ended (%s); following again", error or proc.returncode)
            self._since = started - REPLAY
            time.sleep(0.5)

    def _record(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            container_id = str(event["ID"])
        except (ValueError, KeyError, TypeError):
            return
        if event.get("Status") != "died":
            return
        # podman leaves the status out when it is 0.
        code = event.get("ContainerExitCode", 0)
        with self._cond:
            self._deaths[container_id] = code if isinstance(code, int) else None
            self._deaths.move_to_end(container_id)
            while len(self._deaths) > REMEMBERED:
                self._deaths.popitem(last=False)
            self._cond.notify_all()

    def _give_up(self, why: str) -> None:
        log.warning("%s: one podman wait per container from now on", why)
        with self._cond:
            self.broken = True
            self._cond.notify_all()


class Waiter(ABC):
    """The end of one container: :meth:`done`, :meth:`wait`, :meth:`exit_status`."""

    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds; True once the container has ended."""

    @abstractmethod
    def exit_status(self) -> int | None:
        """The exit status (128+N: killed by signal N); None when unknown."""

    @abstractmethod
    def close(self) -> None:
        """Stop waiting (the container may still run)."""


class PodmanWait(Waiter):
    """A ``podman wait`` child whose output is the exit status."""

    def __init__(self, container_id: str, env: Mapping[str, str]) -> None:
        self._proc = spawn(["podman", "wait", container_id], stdout=PIPE, stderr=DEVNULL, env=env)
        self._out: bytes | None = None

    def done(self) -> bool:
        return self._proc.poll() is not None

    def wait(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutExpired):
            self._proc.wait(timeout)
        return self.done()

    def exit_status(self) -> int | None:
        text = self._output().decode(errors="replace").strip()
        return int(text) if text.lstrip("-").isdigit() else None

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._output()

    def _output(self) -> bytes:
        if self._out is None:
            self._out, _ = self._proc.communicate()
        return self._out


class EventWait(Waiter):
    """The container's ``died`` event, with conmon's exit as the safety net."""

    def __init__(
        self,
        stream: DeathStream,
        container_id: str,
        conmon_pid: int | None,
        env: Mapping[str, str],
    ) -> None:
        self.stream = stream
        self.container_id = container_id
        self.env = env
        self._fallback: PodmanWait | None = None
        self._answer: tuple[bool, int | None] = (False, None)
        self._conmon_gone_at: float | None = None
        self._pidfd: int | None = None
        if not conmon_pid:
            # podman named none (0 once the container has exited): it is most
            # likely gone already, which the stream or podman will tell.
            self._conmon_gone_at = time.monotonic()
            return
        try:
            self._pidfd = os.pidfd_open(conmon_pid)
        except ProcessLookupError:
            self._conmon_gone_at = time.monotonic()
        except OSError:
            self._fallback = PodmanWait(container_id, env)  # no pidfd on this kernel

    def done(self) -> bool:
        if self._answer[0]:
            return True
        if self._fallback is not None:
            return self._fallback.done()
        self._answer = self.stream.exit_status(self.container_id)
        if self._answer[0]:
            return True
        if self.stream.broken:
            self._fallback = PodmanWait(self.container_id, self.env)
            return self._fallback.done()
        if self._conmon_gone_at is None and self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], 0)
            if readable:
                self._conmon_gone_at = time.monotonic()
        if self._conmon_gone_at is not None and time.monotonic() - self._conmon_gone_at > GRACE:
            self._answer = self._ask_podman()
            if not self._answer[0]:
                self._conmon_gone_at = time.monotonic()  # ask again after another grace
        return self._answer[0]

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._fallback is not None:
                return self._fallback.wait(remaining)
            # Short steps: conmon's exit is looked at between them.
            self.stream.wait(self.container_id, min(remaining, 0.25))
        return True

    def exit_status(self) -> int | None:
        if self._fallback is not None:
            return self._fallback.exit_status()
        return self._answer[1]

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _ask_podman(self) -> tuple[bool, int | None]:
        """conmon is gone and no event came: the container's state, from podman."""
        info = inspect_container(self.container_id, self.env)
        known = self.stream.exit_status(self.container_id)
        if known[0]:
            return known
        if info is None:
            log.warning("%s: gone without a died event; its exit status is unknown",
                        self.container_id[:12])  # fmt: skip
            return True, None
        state = info.get("State") or {}
        if state.get("Running"):
            return False, None
        code = state.get("ExitCode")
        return True, code if isinstance(code, int) else None


class ContainerDeaths:
    """The supervisor's death streams, one per podman environment, made when first needed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[tuple[tuple[str, str], ...], DeathStream] = {}

    def waiter(
        self, container_id: str, conmon_pid: int | None, env: Mapping[str, str], since: float
    ) -> Waiter:
        """What tells when *container_id* ends: started with *env*, not before
        *since* (a time.time()), and monitored by *conmon_pid*."""
        key = environment_key(env)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = DeathStream(env, since)
        if stream.broken:
            return PodmanWait(container_id, env)
        return EventWait(stream, container_id, conmon_pid, env)

    def close(self) -> None:
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.close()
