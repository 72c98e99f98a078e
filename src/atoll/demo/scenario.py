"""``atoll demo``: the edge story on one machine, from a registry to failover.

Runs the steps of :mod:`atoll.demo.story` in order, prints a summary table of
steps, results and times, and stops everything it started — when the story
ends, fails or is interrupted — unless ``--keep`` asks to leave it running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

import atoll
from atoll.demo import basetree
from atoll.demo.fleetstep import FleetChapter
from atoll.demo.framework import Demo, StepResult, stop_recorded
from atoll.demo.services import Services
from atoll.demo.story import VIP, WEB_PORT, Story, remove_lan
from atoll.errors import AtollError
from atoll.run import base_environment, run


def run_demo(
    workdir: Path | None,
    *,
    keep: bool = False,
    fast: bool = False,
    base_tree: Path | None = None,
    cache: Path | None = None,
    apt_source: str | None = None,
    console: Console | None = None,
) -> int:
    # Off a terminal (CI logs, pipes) use a wide page so commands stay on one line.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    own_dir = workdir is None
    base = (workdir or Path(tempfile.mkdtemp(prefix="atoll-demo-"))).absolute()
    base.mkdir(parents=True, exist_ok=True)
    registries = base / "registries.conf"
    registries.write_text("")
    # Every atoll the demo runs (builds, installs, device boots, the registry bridge)
    # is the demo's own, also where another atoll is installed for the interpreter.
    env = base_environment(
        {
            "CONTAINERS_REGISTRIES_CONF": str(registries),
            "PYTHONPATH": str(Path(atoll.__file__).resolve().parent.parent),
        }
    )
    demo = Demo(base, console, env, fast=fast)
    story = Story(demo, base_tree, basetree.cache_dir(cache), apt_source)
    services = Services(story)
    steps: list[tuple[str, str, Callable[[], str]]] = [
        ("1", "registry", story.registry_step),
        ("2", "OS and workload images", services.images_step),
        ("3", "devices on their LAN", story.devices_step),
        ("4", "failover by keepalived", services.failover_step),
        ("5", "restart of a killed workload", services.restart_step),
        ("6", "workload update and rollback", services.auto_update_step),
        ("7", "fleet rollouts of the OS", FleetChapter(story).step),
        ("8", "transfer report", story.transfer_step),
    ]
    console.print(
        f"[bold]atoll demo[/]: the edge story on this machine{' (fast timers)' if fast else ''}."
        f"\n$DEMO is {base}"
    )
    ok = False
    started = time.monotonic()
    try:
        for number, title, step in steps:
            result = StepResult(number, title)
            demo.results.append(result)
            begun = time.monotonic()
            try:
                result.outcome = step()
                result.ok = True
            except BaseException as exc:
                result.ok = False
                if isinstance(exc, AtollError):
                    result.outcome = exc.message
                elif isinstance(exc, KeyboardInterrupt):
                    result.outcome = "interrupted"
                else:
                    result.outcome = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                result.seconds = time.monotonic() - begun
        ok = True
    finally:
        console.print()
        console.print(_summary(demo.results, time.monotonic() - started))
        if ok and keep:
            _explain_keep(demo, story)
        else:
            with _interrupts_held():
                demo.stop_all()
                _reset_podman(base, env)
                _unmount_below(base)
                remove_lan(base)
                if own_dir and ok:
                    shutil.rmtree(base, ignore_errors=True)
                elif not ok:
                    console.print(f"Logs and files are kept in {base} (see logs/).")
    return 0


def stop_demo(workdir: Path, console: Console | None = None) -> int:
    """``atoll demo --stop WORKDIR``: stop what ``--keep`` left running."""
    console = console or Console()
    stopped = stop_recorded(workdir.absolute())
    _reset_podman(workdir.absolute(), base_environment())
    _unmount_below(workdir.absolute())
    removed = remove_lan(workdir.absolute())
    console.print(f"stopped: {', '.join(stopped + removed) or 'nothing was running'}")
    console.print(f"the files are still in {workdir}; remove them with: rm -rf {workdir}")
    return 0


def _summary(results: list[StepResult], seconds: float) -> Table:
    table = Table(title=f"What happened ({seconds:.0f} s)")
    for column in ("step", "", "result", "time"):
        table.add_column(column)
    for r in results:
        mark = "[green]ok[/]" if r.ok else "[red]failed[/]" if r.ok is False else ""
        table.add_row(f"{r.number}. {r.title}", mark, r.outcome, f"{r.seconds:.1f} s")
    return table


def _explain_keep(demo: Demo, story: Story) -> None:
    base = demo.workdir
    c = demo.console
    c.print("\n[bold]Left running[/] (--keep): " + ", ".join(b.name for b in demo.background))
    c.print("Look around:")
    for device in story.devices:
        c.print(f"  atoll status --sysroot {device.sysroot}")
        c.print(f"  ip -n {device.netns} addr show eth0")
    c.print(f"  ip netns exec {story.netns('client')} curl http://{VIP}:{WEB_PORT}/")
    c.print(
        f"  CONTAINERS_REGISTRIES_CONF={base / 'registries.conf'} "
        f"atoll image tags docker://{story.registry}/prod/edge-os"
    )
    if story.fleet_url:
        c.print(
            f"  the fleet's dashboard: {story.fleet_url} (token: {base / 'fleet/viewer.token'})"
        )
    c.print(f"  ls {base / 'logs'}")
    c.print(f"Stop it all:\n  atoll demo --stop {base}")


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Clean-up runs to the end: a second Ctrl-C does not cut it short."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield None
    finally:
        signal.signal(signal.SIGINT, previous)


def _reset_podman(base: Path, env: dict[str, str]) -> None:
    podman = shutil.which("podman")
    if podman is None:
        return
    from atoll.podman import isolated_environment

    storages = [
        storage
        for parent in (base / "podman",)
        if parent.is_dir()
        for storage in sorted(parent.iterdir())
    ]
    for storage in storages:
        if not (storage / "storage.conf").is_file():
            continue
        # Containers first (a supervisor killed hard leaves its own running); then vfs
        # layers, which may be owned by other uids: podman removes its own store.
        for argv in (["rm", "--all", "--force", "--time", "0"], ["system", "reset", "--force"]):
            run([podman, *argv], env={**env, **isolated_environment(storage)}, check=False)


def _unmount_below(base: Path) -> None:
    top = os.path.realpath(base)
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(top + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        run(["umount", "--lazy", point], check=False)
