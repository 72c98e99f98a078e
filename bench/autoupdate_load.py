"""Benchmark part 3 (see autoupdate_bench.py): N workloads on one image tag.

N busybox web units share ``REGISTRY/bench/load:prod`` (health check every 5 s,
``HealthOnFailure=kill``, ``StopTimeout=2``, ``Restart=always``) under the real
``atoll workload run`` and podman 4.3.  Measured, in this order:

* the control socket's first answer after the supervisor starts (a ping), and
  its first answer with the units' status;
* the supervisor at rest (its CPU and that of the health checks it runs), and
  one health check as ``podman healthcheck run`` against ``podman exec``;
* a good image pushed to the tag: ``atoll workload auto-update`` at the default
  settings (target: watch window + 15 s);
* a bad image (it exits at once): the same command, until it rolled back what
  the image reached (target: watch window + 15 s);
* SIGKILL to the supervisor, another started: its control socket's first
  answer (target: 0.5 s) and the time until all N are adopted;
* SIGTERM: the time until every unit is stopped (target: StopTimeout + 5 s).

Each update is also followed from outside (:class:`Timeline`): when the first
container was replaced, the canary's fourth unit healthy, the last container
replaced and healthy, the end, and the podman processes of this load by
subcommand; with the load average before and after the good update.

With ``--load-baseline SRC`` the same runs with the atoll of another source
tree (say, the main branch's ``src``) first, in this run, as the baseline.
podman 5.4.2's ``podman auto-update`` of N units on one tag under systemd is
measured beside (restarts one after another; no watch window).
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.podman import isolated_environment
from atoll.workloads.control import Health, SupervisorClient, UnitState

if TYPE_CHECKING:
    from autoupdate_bench import Bench

    from atoll.demo.registry import LocalRegistry
    from helpers.podman5 import SystemdHost

STOP_TIMEOUT = 2
UNIT = (
    "[Container]\nImage={image}\nAutoUpdate=registry\nNetwork=host\nEnvironment=PORT={port}\n"
    "HealthCmd=kill -0 1\nHealthInterval=5s\nHealthRetries=2\nHealthOnFailure=kill\n"
    f"StopTimeout={STOP_TIMEOUT}\n[Service]\nRestart=always\n"
)
EXITS = ["/usr/bin/sh", "-c", "echo broken >&2; exit 1"]


def _wait(predicate: Callable[[], object], what: str, timeout: float = 300) -> float:
    """Seconds until *predicate* holds (polled every 20 ms)."""
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.02)
    return time.perf_counter() - started


class Load:
    """One supervisor with N units on one tag, run by the atoll of *src*."""

    def __init__(self, bench: Bench, registry: LocalRegistry, count: int, src: Path) -> None:
        from autoupdate_bench import _free_port, web

        self.bench, self.count = bench, count
        self.root = Path(tempfile.mkdtemp(prefix="atl-", dir="/tmp"))  # short: socket paths
        self.env = dict(bench.env)
        self.env.update(
            isolated_environment(self.root / "podman", registries_conf=bench.registries_conf)
        )
        self.env["PYTHONPATH"] = str(src)
        self.image = f"{registry.host}/bench/load:prod"
        self.web = web
        bench.push(*web("v1\n"), self.image)
        self.units = self.root / "units"
        self.units.mkdir()
        for i in range(count):
            text = UNIT.format(image=self.image, port=_free_port())
            (self.units / f"load{i:02d}.container").write_text(text)
        self.state = self.root / "sup"
        self.client = SupervisorClient(self.state)
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = 1

    def start(self) -> tuple[float, float]:
        """Start the supervisor; seconds until its control socket answers a ping,
        and until it answers the units' status."""
        log = (self.root / "supervisor.log").open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atoll", "workload", "run", "--root", str(self.units),
             "--state-dir", str(self.state)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait(self.client.is_running, "the control socket", timeout=120)
        pinged = time.perf_counter() - started
        self.client.status_all()  # waits, on the open socket, until the units are read
        return pinged, time.perf_counter() - started

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"atoll workload run exited: {self.log_tail()}")
        with contextlib.suppress(Exception):
            units = self.client.status()
            return len(units) == self.count and all(
                s.state is UnitState.ACTIVE and s.health is Health.HEALTHY for s in units
            )
        return False

    def left_down(self) -> int:
        """Units not healthy a while after a rollback (started by hand, as a user would)."""
        with contextlib.suppress(SystemExit):
            _wait(self.healthy, "healthy units after the rollback", timeout=90)
            return 0
        down = [s.unit for s in self.client.status() if s.state is not UnitState.ACTIVE]
        for unit in down:
            with contextlib.suppress(Exception):
                self.client.start(unit)
        _wait(self.healthy, "healthy units after starting them by hand")
        return len(down)

    def log_tail(self) -> str:
        return (self.root / "supervisor.log").read_text(errors="replace")[-2000:]

    def cpu(self, seconds: float) -> float:
        """Cores the supervisor and the processes it waited for used over *seconds*."""
        assert self.proc is not None

        def ticks() -> int:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return sum(int(f) for f in fields[11:15])  # utime stime cutime cstime

        before = ticks()
        time.sleep(seconds)
        return (ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds

    def check_cost(self, runs: int = 10) -> tuple[float, float]:
        """CPU seconds of one ``podman healthcheck run`` and of one ``podman exec``."""
        container = "systemd-load00"
        costs = []
        for argv in (
            ["podman", "healthcheck", "run", container],
            ["podman", "exec", container, "kill", "-0", "1"],
        ):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            for _ in range(runs):
                subprocess.run(argv, env=self.env, capture_output=True, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            costs.append(spent / runs)
        return costs[0], costs[1]

    def push(self, bad: bool = False) -> None:
        self.version += 1
        layers, cmd = self.web(f"v{self.version}\n")
        self.bench.push(layers, EXITS if bad else cmd, self.image)

    def auto_update(self, watch: float) -> tuple[float, dict[str, Any]]:
        argv = [sys.executable, "-m", "atoll", "workload", "auto-update",
                "--root", str(self.units), "--state-dir", str(self.state),
                "--update-state-dir", str(self.root / "updates"),
                "--watch", f"{watch:g}s", "--format", "json"]  # fmt: skip
        timeline = Timeline(self)
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=self.env, check=False, timeout=3600)
        ended = time.perf_counter()
        doc: dict[str, Any] = json.loads(proc.stdout or "{}")
        doc["timeline"] = timeline.close(ended)
        return ended - started, doc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> float:
        assert self.proc is not None
        started = time.perf_counter()
        self.proc.terminate()
        self.proc.wait(600)
        return time.perf_counter() - started

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["podman", "rm", "--all", "--force", "--time", "0"], env=self.env,
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


class Timeline:
    """What a run of auto-update does, seen from outside while it runs: the
    units' status every 0.2 s (when each container was replaced, when the new one
    was first healthy) and the podman processes on the machine every 0.1 s (by
    subcommand, each process counted once; those of this load's podman environment)."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.started = time.perf_counter()
        self.replaced: dict[str, float] = {}
        self.healthy: dict[str, float] = {}
        self.podmans: dict[int, str] = {}
        self.mine = str(load.root).encode()
        self._done = threading.Event()
        self._before = {s.unit: s.container_id for s in load.client.status()}
        self._threads = [
            threading.Thread(target=f, daemon=True) for f in (self._units, self._procs)
        ]
        for thread in self._threads:
            thread.start()

    def _units(self) -> None:
        while not self._done.wait(0.2):
            with contextlib.suppress(Exception):
                now = time.perf_counter() - self.started
                for s in self.load.client.status():
                    if s.container_id and s.container_id != self._before.get(s.unit):
                        self.replaced.setdefault(s.unit, now)
                        if s.health is Health.HEALTHY:
                            self.healthy.setdefault(s.unit, now)

    def _procs(self) -> None:
        while not self._done.wait(0.1):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in self.podmans:
                    continue
                with contextlib.suppress(OSError):
                    argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                    # This load's podman only (its CONTAINERS_CONF), not other users'.
                    if argv[0].endswith("podman") and self.mine in (entry / "environ").read_bytes():
                        self.podmans[int(entry.name)] = _subcommand(argv[1:])

    def close(self, ended: float) -> str:
        self._done.set()
        for thread in self._threads:
            thread.join()
        end = ended - self.started
        replaced = sorted(self.replaced.values())
        healthy = sorted(self.healthy.values())
        kinds: dict[str, int] = {}
        for what in self.podmans.values():
            kinds[what] = kinds.get(what, 0) + 1

        def at(values: list[float], i: int) -> str:
            return f"{values[i]:.1f}" if len(values) > abs(i) else "-"

        return (
            f"first replaced {at(replaced, 0)} s, 4th healthy {at(healthy, 3)} s, "
            f"last replaced {at(replaced, -1)} s, last healthy {at(healthy, -1)} s, "
            f"end {end:.1f} s; podman processes seen: "
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        )


#: podman's subcommands, and those named with the word after them.
SUBCOMMANDS = {"run", "pull", "tag", "events", "rm", "ps", "exec", "stop", "kill", "rmi", "push"}
GROUPS = {"healthcheck", "container", "image", "system"}


def _subcommand(words: list[str]) -> str:
    for i, word in enumerate(words):
        if word in GROUPS and i + 1 < len(words):
            return f"{word} {words[i + 1]}"
        if word in SUBCOMMANDS:
            return word
    return "other"


def _outcome(doc: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for unit in doc.get("units", []):
        counts[unit["updated"]] = counts.get(unit["updated"], 0) + 1
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "no report"


def measure(
    bench: Bench, registry: LocalRegistry, count: int, watch: float, src: Path
) -> dict[str, Any]:
    # Compiled, as an installed package is (with PYTHONDONTWRITEBYTECODE set, every
    # start would otherwise compile the modules again).
    compileall.compile_dir(str(src / "atoll"), quiet=1)
    load = Load(bench, registry, count, src)
    figures: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "atoll", "version"], env=load.env, check=True,
                       capture_output=True)  # fmt: skip
        figures["atoll version"] = time.perf_counter() - started
        figures["socket at start"], figures["status at start"] = load.start()
        figures["all healthy"] = _wait(load.healthy, "healthy units")
        figures["at rest, cores"] = load.cpu(20.0)
        figures["check cost"] = load.check_cost()
        load.push()
        before = os.getloadavg()[0]
        figures["good update"] = load.auto_update(watch)
        figures["load average"] = (before, os.getloadavg()[0])
        _wait(load.healthy, "healthy units")
        load.push(bad=True)
        figures["bad update"] = load.auto_update(watch)
        figures["left down"] = load.left_down()
        load.kill()
        figures["socket after kill"], figures["status after kill"] = load.start()
        figures["adopted"] = _wait(load.healthy, "adopted units") + figures["status after kill"]
        figures["stop"] = load.stop()
    finally:
        load.close()
    return figures


def podman5_figures(
    bench: Bench, registry: LocalRegistry, count: int, podman5: SystemdHost
) -> dict[str, float]:
    """podman auto-update of *count* units on one tag under systemd (good, then bad)."""
    from autoupdate_bench import PODMAN5_UNIT, _free_port, web

    image = f"{registry.host}/bench/load5:prod"
    bench.push(*web("v1\n"), image)
    names = [f"p5load{i:02d}.container" for i in range(count)]
    podman5.start_units(
        {n: PODMAN5_UNIT.format(image) + f"Environment=PORT={_free_port()}\n" for n in names}
    )
    figures = {}
    try:
        for what, cmd in (("good update", None), ("bad update", EXITS)):
            layers, good = web(f"{what}\n")
            bench.push(layers, cmd or good, image)
            started = time.perf_counter()
            podman5.run("podman", "auto-update", check=False, timeout=1800)
            figures[what] = time.perf_counter() - started
    finally:
        podman5.stop_units(names)
    return figures


def bench_load(
    bench: Bench,
    registry: LocalRegistry,
    count: int,
    watch: float,
    podman5: SystemdHost | None,
    baseline: Path | None,
) -> None:
    from autoupdate_bench import BUSYBOX

    if not BUSYBOX.is_file() or shutil.which("podman") is None:
        print("\nN units on one tag: skipped (needs podman and /bin/busybox from busybox-static)")
        return
    here = Path(__file__).resolve().parents[1] / "src"
    runs = {"atoll": measure(bench, registry, count, watch, here)}
    if baseline is not None:
        runs["baseline"] = measure(bench, registry, count, watch, baseline)
    other = podman5_figures(bench, registry, count, podman5) if podman5 is not None else {}
    print(f"\n{count} units on one tag (atoll workload run, podman 4.3; watch {watch:g} s):")
    print(f"{'':28}" + "".join(f"{name:>12}" for name in runs) + f"{'podman 5':>12}{'target':>10}")
    rows = [
        ("`atoll version` alone, s", "atoll version", None, "-"),
        ("control socket at start, s", "socket at start", None, "0.5"),
        ("first status at start, s", "status at start", None, "-"),
        ("all healthy after start, s", "all healthy", None, "-"),
        ("good update, s", "good update", "good update", f"{watch + 15:g}"),
        ("bad update rolled back, s", "bad update", "bad update", f"{watch + 15:g}"),
        ("socket after SIGKILL, s", "socket after kill", None, "0.5"),
        ("first status after it, s", "status after kill", None, "-"),
        ("all adopted, s", "adopted", None, "-"),
        ("SIGTERM stops all, s", "stop", None, f"{STOP_TIMEOUT + 5}"),
        ("at rest, cores", "at rest, cores", None, "-"),
    ]
    for label, key, key5, target in rows:
        cells = ""
        for figures in runs.values():
            value = figures[key]
            cells += f"{(value[0] if isinstance(value, tuple) else value):12.2f}"
        five = f"{other[key5]:12.2f}" if key5 and key5 in other else f"{'-':>12}"
        print(f"{label:28}{cells}{five}{target:>10}")
    for name, figures in runs.items():
        check, execed = figures["check cost"]
        print(
            f"{name}: good update: {_outcome(figures['good update'][1])}; bad update: "
            f"{_outcome(figures['bad update'][1])}, {figures['left down']} left down; "
            f"one check: healthcheck run {check:.3f} "
            f"CPU s, exec {execed:.3f} CPU s ({count} every 5 s: "
            f"{count * check / 5:.2f} / {count * execed / 5:.2f} cores)"
        )
        first, last = figures["load average"]
        print(f"{name}: load average {first:.1f} before the good update, {last:.1f} after it")
        for what in ("good update", "bad update"):
            print(f"{name}: {what}: {figures[what][1]['timeline']}")
