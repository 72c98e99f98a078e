"""From a Quadlet unit to the podman commands the supervisor runs, and podman queries.

The commands are the generated service's (:mod:`atoll.workloads.unitfiles.generate`),
with systemd's specifiers expanded (``%t`` is ``STATE_DIR/run``, ``%N``/``%n``
the service name without/with its suffix, ``%p``/``%i`` the template
(the part before/after ``@``), ``%h`` home, ``%U`` uid, ``%%``).
For a container the ``podman run`` line is changed in three ways:

* ``--cgroups=split`` is dropped: it needs a cgroup systemd delegated;
* ``--health-on-failure`` and the ``--health-startup-*`` options are dropped:
  atoll runs the checks, the start-up check and the action
  (:mod:`atoll.workloads.supervise.healthcheck`); ``--sdnotify=healthy`` (podman 4.7+)
  becomes ``--sdnotify=conmon`` and atoll waits for the first passing check;
* ``--label io.atoll.workload.unit=NAME.container`` is added, so a restarted
  supervisor finds and adopts the containers it started.

Options a podman older than the generator's lacks and whose absence only loses
a setting (:data:`OPTIONAL_FLAGS`: the health log's ``--health-log-destination``
and ``--health-max-log-*`` of podman 5.3, ``kube down --force`` of podman 4.4)
are dropped when ``podman SUBCOMMAND --help`` does not list them, with a
warning naming the key that is not honoured.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.errors import CommandError, ToolMissingError
from atoll.podman import podman as run_podman
from atoll.podman import podman_environment
from atoll.run import Completed, run
from atoll.timeutil import utc_timestamp
from atoll.workloads.supervise.healthcheck import HealthSpec
from atoll.workloads.unitfiles.generate import GeneratedService
from atoll.workloads.unitfiles.quadlet import (
    ContainerOptions,
    QuadletUnit,
    UnitKind,
    is_true,
    split_words,
)
from atoll.workloads.unitfiles.restart import EndKind, Result, ServiceSettings
from atoll.workloads.unitfiles.service import container_name

log = logging.getLogger(__name__)

UNIT_LABEL = "io.atoll.workload.unit"


class NotifyMode(StrEnum):
    CONMON = "conmon"  # ready when the container runs
    CONTAINER = "container"  # ready when the container sends READY=1
    HEALTHY = "healthy"  # ready on the first passing health check


#: Run-line options atoll drops because it does their work itself (they take a value).
SUPERVISOR_FLAGS = frozenset(
    [
        "--health-on-failure",
        *(f"--health-startup-{n}" for n in ("cmd", "interval", "retries", "success", "timeout")),
    ]
)
#: (subcommand words, flag) -> (the Quadlet key it comes from, whether it takes a
#: value word): options that an older podman refuses and that are dropped there.
OPTIONAL_FLAGS: dict[tuple[tuple[str, ...], str], tuple[str, bool]] = {
    (("run",), "--health-log-destination"): ("HealthLogDestination", True),
    (("run",), "--health-max-log-count"): ("HealthMaxLogCount", True),
    (("run",), "--health-max-log-size"): ("HealthMaxLogSize", True),
    (("kube", "play"), "--service-exit-code-propagation"): ("ExitCodePropagation", True),
    (("kube", "down"), "--force"): ("KubeDownForce", False),
}


@functools.cache
def _known_flags(podman_path: str, subcommand: tuple[str, ...]) -> frozenset[str]:
    """The long options ``podman SUBCOMMAND --help`` lists (empty when it cannot say)."""
    try:
        proc = run([podman_path, *subcommand, "--help"], check=False, timeout=60.0)
    except (CommandError, ToolMissingError, OSError):
        return frozenset()
    return frozenset(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", proc.stdout.decode()))


def fit_to_podman(argv: Sequence[str], *, what: str) -> tuple[str, ...]:
    """*argv* without the :data:`OPTIONAL_FLAGS` the podman it runs does not know
    (a warning for each that asked for more than podman's default)."""
    wanted = {flag for _, flag in OPTIONAL_FLAGS}
    if not argv or not any(w.split("=", 1)[0] in wanted for w in argv):
        return tuple(argv)
    out: list[str] = []
    skip = False
    subcommand: tuple[str, ...] | None = None
    for word in argv:
        if skip:
            skip = False
            continue
        flag, eq, value = word.partition("=")
        if subcommand is None:
            subcommand = next(
                (sub for sub, _ in OPTIONAL_FLAGS if tuple(out[-len(sub) :]) == sub), None
            )
        entry = OPTIONAL_FLAGS.get((subcommand or (), flag))
        if subcommand is None or entry is None or flag in _known_flags(argv[0], subcommand):
            out.append(word)
            continue
        key, takes_value = entry
        skip = takes_value and not eq
        if takes_value or value.lower() not in ("false", "0"):
            log.warning(
                "%s: this podman has no %s %s option: %s= is not honoured",
                what, " ".join(subcommand), flag, key,
            )  # fmt: skip
    return tuple(out)


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    ignore_failure: bool = False
    #: ``volume create``/``network create``: an existing one is success (what
    #: ``--ignore`` does; podman before 4.4 does not know that flag).
    exists_ok: bool = False

    def succeeded(self, returncode: int, stderr: bytes) -> bool:
        if returncode == 0 or self.ignore_failure:
            return True
        return self.exists_ok and b"already exists" in stderr


@dataclass(frozen=True)
class UnitPlan:
    """Everything the supervisor needs to run one unit."""

    unit: QuadletUnit
    service: str
    settings: ServiceSettings
    env: Mapping[str, str]
    start_pre: tuple[Command, ...] = ()
    start: tuple[Command, ...] = ()
    stop: tuple[Command, ...] = ()
    stop_post: tuple[Command, ...] = ()
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    #: Container units only.
    container: str = ""
    image: str = ""
    notify: NotifyMode = NotifyMode.CONMON
    health: HealthSpec | None = None
    #: systemd's Type= of the generated service: notify, oneshot or forking.
    service_type: str = "notify"
    #: WorkingDirectory= of the generated service (.kube and .build units).
    working_directory: Path | None = None
    #: RemainAfterExit= of the generated service (.volume, .network, .image: yes).
    remain_after_exit: bool = False

    @property
    def name(self) -> str:
        return self.unit.name

    @property
    def kind(self) -> UnitKind:
        return self.unit.kind

    @property
    def exits(self) -> bool:
        """A Type=oneshot service without RemainAfterExit= (a .build): inactive
        once its commands have succeeded, run again by the next start."""
        return self.service_type == "oneshot" and not self.remain_after_exit


def expand_specifiers(text: str, service: str, runtime_dir: Path) -> str:
    stem = service.rsplit(".", 1)[0]
    table = {
        "t": str(runtime_dir),
        "N": stem,
        "n": service,
        "p": stem.split("@", 1)[0],
        "i": stem.partition("@")[2],
        "h": os.environ.get("HOME", "/root"),
        "U": str(os.getuid()),
        "%": "%",
    }
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _commands(values: Sequence[str], service: str, runtime_dir: Path) -> tuple[Command, ...]:
    commands: list[Command] = []
    for value in values:
        if not value:
            commands = []
            continue
        line = value
        ignore = False
        while line[:1] in ("-", "@", "+", "!", ":"):
            ignore = ignore or line[0] == "-"
            line = line[1:]
        argv = tuple(expand_specifiers(w, service, runtime_dir) for w in split_words(line))
        creates = argv[1:3] in (("volume", "create"), ("network", "create"))
        if creates:
            argv = tuple(w for w in argv if w != "--ignore")
        if argv:
            commands.append(Command(argv, ignore, exists_ok=creates))
    return tuple(commands)


def _adapt_run(
    argv: Sequence[str], unit: QuadletUnit, notify: NotifyMode, watchdog: float
) -> tuple[str, ...]:
    # podman [--module=... GlobalArgs...] run
    at = argv.index("run") + 1 if "run" in argv else 2
    out: list[str] = list(argv[:at])
    skip = False
    for word in argv[at:]:
        if skip:
            skip = False
            continue
        if word == "--cgroups=split" or word.split("=", 1)[0] in SUPERVISOR_FLAGS:
            skip = word in SUPERVISOR_FLAGS  # "--flag VALUE": the value goes too
            continue
        healthy = notify is NotifyMode.HEALTHY and word.startswith("--sdnotify=")
        out.append("--sdnotify=conmon" if healthy or word == "--sdnotify=healthy" else word)
    added = ["--label", f"{UNIT_LABEL}={unit.name}"]
    if watchdog > 0 and watchdog != float("inf"):
        # What systemd tells a service with WatchdogSec= (sd_watchdog_enabled(3)).
        added += ["--env", f"WATCHDOG_USEC={int(watchdog * 1_000_000)}"]
    out[at:at] = added
    return tuple(out)


def plan_unit(unit: QuadletUnit, service: GeneratedService, runtime_dir: Path) -> UnitPlan:
    """The commands and settings for *unit*, whose generated service is *service*."""
    name = service.name

    def values(section: str, key: str) -> list[str]:
        return service.values(section, key)

    unit_pairs = [p for s, pairs in service.sections if s == "Unit" for p in pairs]
    service_pairs = [p for s, pairs in service.sections if s == "Service" for p in pairs]
    settings = ServiceSettings.from_values(unit_pairs, service_pairs, source=str(unit.path))
    env: dict[str, str] = {}
    for value in values("Service", "Environment"):
        for word in split_words(value):
            key, eq, val = word.partition("=")
            if eq:
                env[key] = expand_specifiers(val, name, runtime_dir)

    def listed(key: str) -> tuple[str, ...]:
        return tuple(w for v in values("Unit", key) for w in v.split())

    start = _commands(values("Service", "ExecStart"), name, runtime_dir)
    workdir = values("Service", "WorkingDirectory")
    container = ""
    image = ""
    notify = NotifyMode.CONMON
    health = None
    if isinstance(unit.options, ContainerOptions):
        opts = unit.options
        mode = (opts.notify or "").lower()
        if mode == "healthy":
            notify = NotifyMode.HEALTHY
        elif is_true(mode):
            notify = NotifyMode.CONTAINER
        container = expand_specifiers(container_name(unit), name, runtime_dir)
        image = opts.image or ""
        health = HealthSpec.from_options(opts, str(unit.path))
        if start:
            start = (Command(_adapt_run(start[0].argv, unit, notify, settings.watchdog)),)
    return UnitPlan(
        unit=unit,
        service=name,
        settings=settings,
        env=env,
        start_pre=_commands(values("Service", "ExecStartPre"), name, runtime_dir),
        start=start,
        stop=_commands(values("Service", "ExecStop"), name, runtime_dir),
        stop_post=_commands(values("Service", "ExecStopPost"), name, runtime_dir),
        requires=listed("Requires") + listed("BindsTo"),
        wants=listed("Wants"),
        after=listed("After"),
        before=listed("Before"),
        container=container,
        image=image,
        notify=notify,
        health=health,
        service_type=(values("Service", "Type") or ["simple"])[-1],
        working_directory=Path(expand_specifiers(workdir[-1], name, runtime_dir))
        if workdir
        else None,
        remain_after_exit=is_true((values("Service", "RemainAfterExit") or ["no"])[-1]),
    )


@dataclass
class RunEnd:
    """How one run of a unit ended."""

    result: Result
    end: EndKind
    exit_status: int | None = None
    error: str = ""
    #: Restart whatever Restart= says (HealthOnFailure=restart).
    force_restart: bool = False
    #: Never restart (HealthOnFailure=stop).
    no_restart: bool = False
    #: Ended for a restart in place: the container runs on until the next
    #: attempt's ``podman run --replace`` replaces it.
    replaced: bool = False


def replaces_in_place(plan: UnitPlan) -> bool:
    """Whether a restart of *plan*'s unit may leave the stop to its next ``podman
    run``: Quadlet's command line replaces a container of the same name
    (``--replace``: a forced ``podman rm``, with the container's stop timeout)
    and removes its own at exit (``--rm``), and the unit's stop is only
    Quadlet's forced ``podman rm --cidfile`` of that container."""
    if plan.kind is not UnitKind.CONTAINER or plan.service_type != "notify" or not plan.start:
        return False
    run_argv = plan.start[0].argv
    if "--replace" not in run_argv or "--rm" not in run_argv:
        return False
    cidfiles = {w for w in run_argv if w.startswith("--cidfile=")}
    return all(
        "rm" in c.argv and "-f" in c.argv and cidfiles & set(c.argv)
        for c in (*plan.stop, *plan.stop_post)
    )


def run_commands(
    commands: Sequence[Command],
    deadline: float,
    env: Mapping[str, str],
    *,
    what: str,
    cwd: Path | None = None,
) -> RunEnd | None:
    """Run *commands* in order (in *cwd*, if given) until one fails (how it failed)
    or all succeed (None)."""
    for command in commands:
        remaining = max(deadline - time.monotonic(), 0.1)
        argv = fit_to_podman(command.argv, what=what)
        log.debug("%s: run %s", what, " ".join(argv))
        try:
            proc = run(
                argv,
                env=env,
                cwd=cwd,
                timeout=None if remaining == float("inf") else remaining,
                check=False,
            )
        except ToolMissingError as exc:
            return RunEnd(Result.EXIT_CODE, EndKind.UNCLEAN_CODE, 203, str(exc))
        except CommandError:
            return RunEnd(Result.TIMEOUT, EndKind.TIMEOUT, error=f"{command.argv[0]} timed out")
        except OSError as exc:
            return RunEnd(Result.EXIT_CODE, EndKind.UNCLEAN_CODE, 203, str(exc))
        if not command.succeeded(proc.returncode, proc.stderr):
            tail = proc.stderr.decode(errors="replace").strip().splitlines()
            return RunEnd(
                Result.EXIT_CODE, EndKind.UNCLEAN_CODE, proc.returncode, tail[-1] if tail else ""
            )
    return None


def podman_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """podman's environment (atoll.podman: CONTAINERS_CONF and friends of the
    supervisor's own) plus *extra*."""
    return podman_environment(extra=extra)


def podman(
    *args: str, env: Mapping[str, str] | None = None, timeout: float | None = 120.0
) -> Completed:
    """Run ``podman ARGS`` (not checked: callers look at the return code)."""
    return run_podman(args, env=env, check=False, timeout=timeout)


#: Variables that choose which podman, store and events a process sees.
_PODMAN_VARIABLES = ("HOME", "TMPDIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")


def environment_key(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """What of *env* decides the containers podman sees (its configuration and store)."""
    return tuple(
        sorted(
            (k, v) for k, v in env.items() if k.startswith("CONTAINERS_") or k in _PODMAN_VARIABLES
        )
    )


def inspect_container(
    container: str, env: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """``podman container inspect`` of *container*, or None when there is no such container."""
    proc = podman("container", "inspect", container, env=env, timeout=60.0)
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return None
    return data[0] if isinstance(data, list) and data else None


def containers_by_unit(env: Mapping[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every container (running or not) that carries a unit label, by unit name: one
    ``podman ps`` for all units."""
    proc = podman("ps", "-a", "--filter", f"label={UNIT_LABEL}", "--format", "json", env=env)
    if proc.returncode != 0:
        return {}
    try:
        data = json.loads(proc.stdout or b"[]")
    except ValueError:
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    for item in data if isinstance(data, list) else []:
        labels = item.get("Labels") if isinstance(item, dict) else None
        if isinstance(labels, dict) and isinstance(labels.get(UNIT_LABEL), str):
            found.setdefault(labels[UNIT_LABEL], []).append(item)
    return found


@dataclass(frozen=True)
class ServiceContainer:
    """The service container of a ``podman kube play --service-container``."""

    container_id: str
    conmon_pid: int | None
    #: When it started (state.json's form), if podman says.
    since: str | None


def kube_service_container(
    service: str, env: Mapping[str, str] | None = None
) -> ServiceContainer | None:
    """The running service container ``podman kube play --service-container`` made
    for *service* (its containers carry ``PODMAN_SYSTEMD_UNIT=SERVICE``); None when
    there is none."""
    proc = podman(
        "ps", "--filter", f"label=PODMAN_SYSTEMD_UNIT={service}", "--filter", "status=running",
        "--format", "{{.ID}}", env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    for container_id in proc.stdout.decode().split():
        info = inspect_container(container_id, env) or {}
        if info.get("IsService"):
            conmon = (info.get("State") or {}).get("ConmonPid")
            return ServiceContainer(
                str(info.get("Id") or container_id), int(conmon) if conmon else None,
                started_at(info),
            )  # fmt: skip
    return None


def started_at(info: Mapping[str, Any]) -> str | None:
    """When the container of a ``podman container inspect`` started, in state.json's
    form (UTC, microseconds), or None when podman does not say."""
    text = str((info.get("State") or {}).get("StartedAt") or "")
    # podman writes nanoseconds and an offset (2026-12-06T03:54:49.123456789+00:00
    # or ...Z); Python parses at most microseconds.
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", text)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        when = datetime.datetime.fromisoformat(f"{base}.{(fraction or '0')[:6]:0<6}{zone}")
    except ValueError:
        return None
    if when.year < 1971:
        return None  # podman's zero time: never started
    return utc_timestamp(when, microseconds=True)


def health_of(info: Mapping[str, Any]) -> str | None:
    state = info.get("State") or {}
    health = state.get("Health") or state.get("Healthcheck") or {}
    status = health.get("Status") if isinstance(health, dict) else None
    return status or None


def logs_argv(container: str, *, follow: bool = False, lines: int | None = None) -> list[str]:
    argv = ["podman", "logs"]
    if follow:
        argv.append("--follow")
    if lines is not None:
        argv += ["--tail", str(lines)]
    argv.append(container)
    return argv
