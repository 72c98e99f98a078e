"""The supervisor's side of the control socket (the protocol is in control.py).

One thread accepts connections on ``STATE_DIR/control.sock`` (mode 0600) and
one thread per connection reads request lines and writes one answer line each;
a job (start, stop, restart, reload) blocks only its own connection.

This module is the first of the supervisor's to load, and at module level it
imports only what a listening socket needs (os, socket, threading, fcntl;
paths are strings, pathlib alone costs as much CPU as the interpreter's start):
``atoll workload run`` takes the lock and opens the socket
(:func:`open_early`) before the command-line parser and the supervisor load,
and a ping is answered without decoding JSON.  The rest (json, the error
classes) loads with the first other request.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Protocol

    from atoll.workloads.control import UnitStatus

    class Jobs(Protocol):
        """What the control socket asks of the supervisor."""

        def status(self, name: str | None = None) -> list[UnitStatus]: ...

        def start(self, name: str, timeout: float | None = None) -> UnitStatus: ...

        def stop(self, name: str) -> UnitStatus: ...

        def restart(self, name: str, timeout: float | None = None) -> UnitStatus: ...

        def reload(self) -> dict[str, list[str]]: ...


#: The longest path a unix socket address holds on Linux (108 bytes with the NUL).
MAX_SOCKET_PATH = 107
CONTROL_SOCKET = "control.sock"
#: A ping as :class:`~atoll.workloads.control.SupervisorClient` writes it, answered
#: without the JSON decoder.
_PING = b'{"op": "ping"}'


class _Pending:
    """Stands for the jobs of a supervisor that is not attached yet: each request
    waits for it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._jobs: Jobs | None = None

    def attach(self, jobs: Jobs | None) -> None:
        """Answer the waiting requests with *jobs* (None: the supervisor did not start)."""
        self._jobs = jobs
        self._ready.set()

    def _wait(self) -> Jobs:
        self._ready.wait()
        if self._jobs is None:
            from atoll.errors import SupervisorNotRunningError

            raise SupervisorNotRunningError("the workload supervisor stopped while it started")
        return self._jobs

    def __getattr__(self, name: str) -> Any:
        # Every verb of Jobs, whichever it is, waits for the supervisor.
        return getattr(self._wait(), name)


def lock_state_dir(state_dir: Path | str) -> int:
    """flock() ``STATE_DIR/lock`` for this supervisor; return the descriptor."""
    try:
        # os, not pathlib: see the module docstring.
        os.makedirs(state_dir, exist_ok=True)  # noqa: PTH103
        fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)  # noqa: PTH118
    except OSError as exc:
        from atoll.errors import from_oserror

        raise from_oserror(exc, str(state_dir)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        from atoll.errors import LockedError

        raise LockedError(
            f"another workload supervisor runs with state directory {state_dir}",
            hint="stop it first, or use another --state-dir",
        ) from None
    return fd


def answer(jobs: Jobs, line: bytes) -> dict[str, Any]:
    """The answer to one request line."""
    import json

    from atoll.errors import AtollError, InvalidInputError, UnknownUnitError

    malformed = InvalidInputError.exit_code
    unit_name: str | None = None
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("not an object")
        op = request.get("op")
        unit_name = request.get("unit")
        timeout = request.get("timeout")
        if unit_name is not None and not isinstance(unit_name, str):
            raise ValueError("unit must be a string")
        if timeout is not None and not isinstance(timeout, int | float):
            raise ValueError("timeout must be a number")
    except ValueError as exc:
        return {"ok": False, "error": f"malformed request: {exc}", "exit_code": malformed}
    try:
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "status":
            return {"ok": True, "units": [s.to_json() for s in jobs.status(unit_name)]}
        if op == "reload":
            return {"ok": True, **jobs.reload()}
        if op in ("start", "stop", "restart"):
            if unit_name is None:
                raise UnknownUnitError(f"{op} needs a unit")
            if op == "start":
                status = jobs.start(unit_name, timeout)
            elif op == "stop":
                status = jobs.stop(unit_name)
            else:
                status = jobs.restart(unit_name, timeout)
            return {"ok": True, "unit": status.to_json()}
        return {"ok": False, "error": f"unknown op {op!r}", "exit_code": malformed}
    except AtollError as exc:
        reply: dict[str, Any] = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        try:
            reply["unit"] = jobs.status(unit_name)[0].to_json() if unit_name else None
        except AtollError:
            reply["unit"] = None
        return reply


class ControlServer:
    """``atoll workload run`` takes the state directory's lock and opens the
    socket before it imports the supervisor and reads the unit files (this
    module imports little, so that the socket answers within a fraction of a
    second of the start): a ``ping`` is answered at once, any other request when
    the supervisor is attached (:meth:`attach`), once its socket units listen."""

    def __init__(self, path: Path | str, jobs: Jobs | None = None) -> None:
        """Answer for *jobs*; without them, requests wait until :meth:`attach`."""
        self.path = path
        self._pending = _Pending()
        self.jobs: Jobs = jobs if jobs is not None else self._pending
        self._sock: socket.socket | None = None
        self._closing = threading.Event()

    def open(self) -> None:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            from atoll.errors import SupervisorNotRunningError

            raise SupervisorNotRunningError(
                f"{self.path}: the path is too long for a unix socket",
                hint="choose a shorter --state-dir",
            )
        _unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)  # noqa: PTH101
        sock.listen(16)
        self._sock = sock
        threading.Thread(target=self._accept, name="control", daemon=True).start()

    def attach(self, jobs: Jobs) -> None:
        """Answer every request, the waiting ones first, for *jobs*."""
        self.jobs = jobs
        self._pending.attach(jobs)

    def close(self) -> None:
        self._closing.set()
        self._pending.attach(None)
        if self._sock is not None:
            self._sock.close()
            _unlink(self.path)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                if not line.strip():
                    continue
                if line.strip() == _PING:
                    reply = b'{"ok": true, "pid": %d}\n' % os.getpid()
                else:
                    import json

                    reply = json.dumps(answer(self.jobs, line)).encode() + b"\n"
                try:
                    stream.write(reply)
                    stream.flush()
                except OSError:
                    return


#: The socket and lock :func:`open_early` took, by state directory, until
#: :func:`take_early` hands them to the supervisor.
_early: dict[str, tuple[ControlServer, int]] = {}


def open_early(state_dir: str) -> None:
    """Lock *state_dir* and open its control socket now, for the supervisor that
    this process is about to start (``atoll workload run``).  Where that fails
    (another supervisor holds the lock, the path is too long, ...) nothing is
    done: the supervisor's own start meets the same error and reports it."""
    try:
        lock_fd = lock_state_dir(state_dir)
    except Exception:
        return
    server = ControlServer(os.path.join(state_dir, CONTROL_SOCKET))  # noqa: PTH118
    try:
        server.open()
    except Exception:
        os.close(lock_fd)
        return
    _early[os.path.normpath(state_dir)] = (server, lock_fd)


def take_early(state_dir: Path) -> tuple[ControlServer, int] | None:
    """The socket and lock :func:`open_early` took for *state_dir*, if it did;
    those it took for another directory are given up."""
    taken = _early.pop(os.path.normpath(state_dir), None)
    for server, lock_fd in _early.values():
        server.close()
        os.close(lock_fd)
    _early.clear()
    return taken


def _unlink(path: Path | str) -> None:
    try:  # noqa: SIM105 (contextlib is not imported yet)
        os.unlink(path)  # noqa: PTH108
    except FileNotFoundError:
        pass
