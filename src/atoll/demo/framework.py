"""How the demo tells its story: sections, the commands it runs, bars, a summary.

A story is a list of steps. Each step is a function that runs the commands a
user would type, printed with ``$`` before they run, and returns one line for
the summary table. Whatever a step starts in the background (the registry,
booted devices, agents) is recorded in ``WORKDIR/demo.json`` as it starts, so
that the demo stops all of it when it ends, fails or is interrupted, and
``atoll demo --stop WORKDIR`` stops it later after ``--keep``::

    {"version": 1, "pid": 4242,
     "processes": [{"name": "registry", "pid": 4250, "stop": "term",
                    "argv": ["docker-registry", "serve", "…"], "log": "…"}, …]}

``stop`` says how a process is asked to end: ``term`` (SIGTERM to its process
group) or ``int`` (SIGINT to the process alone: ``atoll device boot`` then stops
its container itself). Either way, SIGKILL follows after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.markup import escape

from atoll.errors import DemoStateError, DemoStepError
from atoll.fsutil import write_atomic
from atoll.run import PIPE, STDOUT, Process, TimeoutExpired, spawn

if TYPE_CHECKING:
    from rich.console import Console

STATE_VERSION = 1
STATE_FILE = "demo.json"
_GRACE = 15.0


@dataclass
class StepResult:
    number: str
    title: str
    outcome: str = ""
    seconds: float = 0.0
    ok: bool | None = None


@dataclass
class Background:
    name: str
    proc: Process
    stop: str
    log: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.proc.pid,
            "stop": self.stop,
            "argv": [str(a) for a in self.proc.args] if isinstance(self.proc.args, list) else [],
            "log": str(self.log),
        }


@dataclass
class Done:
    """What a command printed and how it ended."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.stdout)

    def check(self) -> None:
        """Raise DemoStepError, with the end of what it said, if it failed."""
        if self.returncode != 0:
            err = self.stderr.strip()
            raise DemoStepError(
                f"{shlex.join(self.argv)} exited with {self.returncode}: "
                + (err.splitlines()[-1] if err else "no message"),
                hint=err[-2000:] if err.count("\n") else None,
            )


@dataclass
class Demo:
    workdir: Path
    console: Console
    env: dict[str, str]
    fast: bool = False
    results: list[StepResult] = field(default_factory=list)
    background: list[Background] = field(default_factory=list)

    # --- telling ------------------------------------------------------------------------

    def section(self, number: str, title: str, explanation: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]{number}. {title}")
        self.console.print(f"[dim]{explanation}")

    def say(self, text: str) -> None:
        self.console.print(f"  {text}", soft_wrap=True)

    def show(self, text: str, *, limit: int = 40) -> None:
        """Output of a command, indented; long output is cut with a note."""
        lines = text.replace(str(self.workdir), "$DEMO").rstrip("\n").splitlines()
        for line in lines[:limit]:
            self.console.print(f"    {line}", markup=False, highlight=False, soft_wrap=True)
        if len(lines) > limit:
            self.console.print(f"    … ({len(lines) - limit} more lines)")

    def echo(self, argv: Sequence[str], *, note: str = "") -> None:
        shown = shlex.join([Path(argv[0]).name, *argv[1:]]).replace(str(self.workdir), "$DEMO")
        self.console.print(
            f"[bold cyan]$ {escape(shown)}[/]" + (f"   [dim]# {escape(note)}[/]" if note else ""),
            highlight=False,
            soft_wrap=True,
        )

    # --- running ------------------------------------------------------------------------

    def atoll(
        self,
        *args: str,
        check: bool = True,
        quiet: bool = False,
        progress: str | None = None,
        note: str = "",
        env: dict[str, str] | None = None,
    ) -> Done:
        """Run ``atoll ARGS`` as a user would; with *progress*, draw a bar from its
        ``--progress-fd`` events titled so."""
        argv = ["atoll", *args]
        if not quiet:
            self.echo(argv, note=note)
        real = [sys.executable, "-m", "atoll", *args]
        if progress is None:
            return self._run(real, argv, check, env=env)
        read_fd, write_fd = os.pipe()
        real = [*real[:3], "--progress-fd", str(write_fd), *real[3:]]
        with _ProgressBar(self.console, progress, read_fd):
            try:
                return self._run(real, argv, check, pass_fds=(write_fd,), env=env)
            finally:
                os.close(write_fd)

    def atoll_together(
        self, runs: Sequence[tuple[Sequence[str], dict[str, str]]], *, check: bool = False
    ) -> list[Done]:
        """Run several ``atoll ARGS`` at once (each with its environment), as one
        would on several devices; every command is shown first, the results come
        back in the same order (with *check*, the first failure is raised once all
        have ended)."""
        python = [sys.executable, "-m", "atoll"]
        done = self.commands_together(
            [([*python, *args], ["atoll", *args], env) for args, env in runs]
        )
        if check:
            for each in done:
                each.check()
        return done

    def commands_together(
        self, runs: Sequence[tuple[Sequence[str], Sequence[str], dict[str, str] | None]]
    ) -> list[Done]:
        """Run several programs at once: each as (argv, shown, environment or None
        for the demo's). Every command is shown first; the results come back in
        the same order and are not checked."""
        for _, shown, _ in runs:
            self.echo(shown)
        with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:
            futures = [
                pool.submit(self._run, list(argv), list(shown), False, env=env)
                for argv, shown, env in runs
            ]
            return [f.result() for f in futures]

    def command(
        self,
        *argv: str,
        check: bool = True,
        quiet: bool = False,
        note: str = "",
        env: dict[str, str] | None = None,
        shown: Sequence[str] | None = None,
    ) -> Done:
        """Run another program (podman, curl, …), shown the same way."""
        if not quiet:
            self.echo(shown or argv, note=note)
        return self._run(list(argv), list(shown or argv), check, env=env)

    def _run(
        self,
        real: list[str],
        shown: list[str],
        check: bool,
        pass_fds: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> Done:
        started = time.monotonic()
        # A session of its own: on Ctrl-C or SIGTERM the demo stops the command and
        # whatever it started (podman build, nspawn) itself, not only its direct child.
        with spawn(
            real,
            env=env or self.env,
            stdout=PIPE,
            stderr=PIPE,
            pass_fds=pass_fds,
            new_session=True,
        ) as proc:
            try:
                stdout, stderr = proc.communicate()
            except BaseException:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=_GRACE)
                except TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
                raise
        done = Done(
            shown,
            proc.returncode,
            stdout.decode(),
            stderr.decode(errors="replace"),
            time.monotonic() - started,
        )
        if check:
            done.check()
        return done

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        shown: Sequence[str] | None = None,
        stop: str = "term",
        env: dict[str, str] | None = None,
        quiet: bool = False,
    ) -> Background:
        """Start a long-running process in a session of its own, logged to
        WORKDIR/logs/NAME.log, and record it for the clean-up."""
        if not quiet:
            self.echo(shown or argv, note="in the background")
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("ab") as sink:
            proc = spawn(argv, env=env or self.env, stdout=sink, stderr=STDOUT, new_session=True)
        bg = Background(name, proc, stop, log)
        self.background.append(bg)
        self.save_state()
        return bg

    def stop(self, name: str, *, kill: bool = False) -> None:
        """Stop one background process (SIGKILL at once with *kill*: a power cut)."""
        for bg in [b for b in self.background if b.name == name]:
            if kill:
                _signal_group(bg.proc.pid, signal.SIGKILL)
            else:
                _stop_process(bg.proc.pid, bg.stop)
            with contextlib.suppress(TimeoutExpired):
                bg.proc.wait(timeout=_GRACE)
            if bg.proc.poll() is None:
                _signal_group(bg.proc.pid, signal.SIGKILL)
                bg.proc.wait()
            self.background.remove(bg)
        self.save_state()

    def forget(self, name: str) -> None:
        """A background process ended by itself: drop it from the record."""
        self.background = [b for b in self.background if b.name != name]
        self.save_state()

    def stop_all(self) -> None:
        # Last started, first stopped: agents before the devices, the registry last.
        for bg in reversed(list(self.background)):
            self.stop(bg.name)

    def save_state(self) -> None:
        doc = {
            "version": STATE_VERSION,
            "pid": os.getpid(),
            "processes": [b.to_json() for b in self.background],
        }
        write_atomic(self.workdir / STATE_FILE, json.dumps(doc, indent=2).encode(), durable=False)

    # --- waiting ------------------------------------------------------------------------

    def wait_until(
        self, what: str, condition: Callable[[], bool], timeout: float, *, every: float = 0.2
    ) -> float:
        """Poll *condition* until it holds; return the seconds it took."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise DemoStepError(f"{what}: not so after {timeout:.0f} s")
            time.sleep(every)
        return time.monotonic() - started


class FileWatch:
    """Whether a file changed (its inode, size or mtime) since the last call, or
    *every* seconds passed: a wait that runs a costly check (a Python process)
    only when the state it reads may have moved. True on the first call."""

    def __init__(self, path: Path, every: float = 5.0) -> None:
        self.path = path
        self.every = every
        self._seen: object = object()
        self._asked = 0.0

    def __call__(self) -> bool:
        try:
            st = self.path.stat()
            seen: object = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            seen = None
        now = time.monotonic()
        if seen == self._seen and now - self._asked < self.every:
            return False
        self._seen, self._asked = seen, now
        return True


def stop_recorded(workdir: Path) -> list[str]:
    """``atoll demo --stop WORKDIR``: stop what a ``--keep`` run left running."""
    path = workdir / STATE_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DemoStateError(
            f"{workdir}: no {STATE_FILE}: no demo was left running here",
            hint="give the directory that atoll demo --keep printed",
        ) from None
    except (OSError, ValueError) as exc:
        raise DemoStateError(f"{path}: cannot read it: {exc}") from None
    stopped = []
    for entry in reversed(doc.get("processes", [])):
        pid = entry.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            continue
        _stop_process(pid, entry.get("stop", "term"))
        deadline = time.monotonic() + _GRACE
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
        stopped.append(str(entry.get("name")))
    keeper = doc.get("pid")
    if isinstance(keeper, int) and keeper != os.getpid() and _alive(keeper):
        with contextlib.suppress(ProcessLookupError):
            os.kill(keeper, signal.SIGTERM)
    doc["processes"] = []
    write_atomic(path, json.dumps(doc, indent=2).encode(), durable=False)
    return stopped


def _stop_process(pid: int, how: str) -> None:
    if how == "int":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    else:
        _signal_group(pid, signal.SIGTERM)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each background process leads a session and so a process group of its own.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class _ProgressBar:
    """A rich bar fed by an ``atoll --progress-fd`` pipe (see atoll.progress)."""

    def __init__(self, console: Console, title: str, fd: int) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn(f"  {title}"),
            BarColumn(bar_width=30),
            DownloadColumn(binary_units=True),
            console=console,
            transient=not console.is_terminal,
        )
        self._task = self._progress.add_task(title, total=None)
        self._stream: IO[str] = os.fdopen(fd, "r")
        self._thread = threading.Thread(target=self._pump, daemon=True)

    def __enter__(self) -> _ProgressBar:
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=5)
        self._progress.stop()
        self._stream.close()

    def _pump(self) -> None:
        for line in self._stream:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(line)
                if event["type"] == "ProgressBytes":
                    total = event.get("bytesTotal") or None
                    self._progress.update(self._task, completed=event["bytes"], total=total)
                elif event["type"] == "End" and event.get("ok"):
                    task = self._progress.tasks[0]
                    self._progress.update(self._task, completed=task.total or task.completed)


@contextlib.contextmanager
def spinner(console: Console, title: str) -> Iterator[None]:
    """A bar without a known end, for long steps that report nothing as they go."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn(f"{title}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        progress.add_task(title, total=None)
        yield
