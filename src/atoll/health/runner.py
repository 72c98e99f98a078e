"""Running a boot's health checks, in greenboot's order.

1. The built-in watchdog check, then every required check in name order — all
   of them, even after one has failed, so the report names every problem.
2. Only if all of those passed: the wanted checks.  Their failures are logged
   and reported; they do not change the outcome.
3. The outcome is green when every required check passed, red otherwise.
4. The green.d scripts after a green outcome, the red.d scripts after a red
   one.  Their failures are logged and reported, and change nothing.

Each script runs as ``argv = [PATH]`` (PATH as seen inside the root; a file
that starts with neither ``#!`` nor an ELF header is run by ``/bin/bash`` if the
root has one, else ``/bin/sh``, as greenboot runs every script with bash), with
stdin from ``/dev/null`` and this environment and nothing else:

===========================  ================================================================
``PATH``                     ``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``
``LANG``                     ``C.UTF-8``
``ATOLL_DEPLOYMENT``         the deployment being checked ("" if unknown)
``ATOLL_BOOT_ID``            the boot's id
``ATOLL_BOOT_ATTEMPT``       which try of the deployment this boot is ("" if not counted)
``ATOLL_MAX_BOOT_ATTEMPTS``  tries it has in all
``ATOLL_HEALTH_KIND``        ``required``, ``wanted``, ``green`` or ``red``
``ATOLL_HEALTH_REASON``      red.d only: the name of the first failed required check
===========================  ================================================================

plus what the caller passes in ``env`` (which wins).  How a script is started,
timed out and killed is in :mod:`atoll.health.execute`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import HealthRunError
from atoll.fsutil import resolve_in_root
from atoll.health.checks import Check, CheckKind, discover
from atoll.health.config import HealthConfig
from atoll.health.execute import Sandbox, execute
from atoll.health.report import CheckResult, CheckStatus, FailureReason, HealthReport, Outcome
from atoll.health.watchdog import check_watchdog
from atoll.timeutil import utc_timestamp

log = logging.getLogger(__name__)

SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BootInfo:
    """What the caller knows about the boot whose checks run."""

    deployment: str = ""
    boot_id: str = ""
    #: Which try of the deployment this boot is (1 = the first); None: not counted.
    attempt: int | None = None
    #: Tries the deployment has in all; None: GREENBOOT_MAX_BOOT_ATTEMPTS.
    max_attempts: int | None = None
    #: The previous boot ended in a hardware watchdog reset: True, False, or
    #: None when the device has no watchdog or cannot tell.
    watchdog_reset: bool | None = None
    #: When the deployment was made (its origin's ``deployedAt``).
    deployed_at: datetime.datetime | None = None
    #: When this boot started; None: now.
    booted_at: datetime.datetime | None = None


def run_boot_checks(
    root: Path,
    *,
    chroot: bool,
    config: HealthConfig,
    env: Mapping[str, str] | None = None,
    boot_info: BootInfo,
    binds: Sequence[tuple[str, Path]] = (),
    config_warnings: Sequence[str] = (),
) -> HealthReport:
    """Run the checks of the system at *root* and return what they found.

    ``chroot=True`` (needs root): each script runs chrooted into *root*, in a
    mount namespace of its own that has, where *root* has the directory, a
    fresh ``proc`` on ``/proc``, the host's ``/dev``, an empty ``/run`` and
    ``/tmp`` shared by the scripts of this run and removed after it, and each
    host directory of *binds* on its path inside *root* (which must exist):
    pass the stateroot's /var as ``("/var", VAR)``.
    ``chroot=False``: the scripts run in this system; *root* is normally ``/``
    (another directory only changes where they are looked for).

    Nothing is recorded; see :mod:`atoll.health.records`.  *config_warnings*
    (from :func:`load_config`) are carried into the report."""
    root = root.absolute()
    _check_sandbox(root, chroot, binds)
    with _scratch_dirs(root, chroot, binds) as scratch:
        sandbox = Sandbox(
            root, chroot=chroot, binds=(*((i, h.absolute()) for i, h in binds), *scratch)
        )
        return _run(sandbox, config, env, boot_info, config_warnings)


def _run(
    sandbox: Sandbox,
    config: HealthConfig,
    env: Mapping[str, str] | None,
    boot_info: BootInfo,
    config_warnings: Sequence[str],
) -> HealthReport:
    root = sandbox.root
    now = datetime.datetime.now(datetime.UTC)
    started = utc_timestamp(now)
    plan = discover(root, config)
    max_attempts = boot_info.max_attempts or config.max_boot_attempts
    base_env = {
        "PATH": SCRIPT_PATH,
        "LANG": "C.UTF-8",
        "ATOLL_DEPLOYMENT": boot_info.deployment,
        "ATOLL_BOOT_ID": boot_info.boot_id,
        "ATOLL_BOOT_ATTEMPT": "" if boot_info.attempt is None else str(boot_info.attempt),
        "ATOLL_MAX_BOOT_ATTEMPTS": str(max_attempts),
    }

    def run_all(checks: Sequence[Check], **extra: str) -> list[CheckResult]:
        out = []
        for check in checks:
            script_env = {**base_env, "ATOLL_HEALTH_KIND": check.kind.value, **extra, **(env or {})}
            result = _run_one(check, sandbox, script_env, config.check_timeout)
            if result.status is CheckStatus.FAILED:
                # The report carries it; a log line is for whoever watches the boot.
                log.info("health: %s check %s failed: %s", check.kind, check.name, _why(result))
            out.append(result)
        return out

    results = [
        check_watchdog(
            config,
            watchdog_reset=boot_info.watchdog_reset,
            deployed_at=boot_info.deployed_at,
            booted_at=boot_info.booted_at or now,
        )
    ]
    results += run_all(plan.required)
    failed = next((r for r in results if r.status is CheckStatus.FAILED), None)
    if failed is None:
        results += run_all(plan.wanted)
        results += run_all(plan.green)
    else:
        results += [_not_run(c, "not run: a required check failed") for c in plan.wanted]
        results += run_all(plan.red, ATOLL_HEALTH_REASON=failed.name)
    return HealthReport(
        deployment=boot_info.deployment,
        boot_id=boot_info.boot_id,
        started=started,
        finished=utc_timestamp(datetime.datetime.now(datetime.UTC)),
        outcome=Outcome.GREEN if failed is None else Outcome.RED,
        checks=tuple(results),
        reason=FailureReason.of(failed) if failed is not None else None,
        attempt=boot_info.attempt,
        max_attempts=max_attempts,
        warnings=(*config_warnings, *plan.warnings),
    )


def check_chroot_allowed(root: Path) -> None:
    """Raise unless this process may run checks chrooted into *root*."""
    if os.geteuid() != 0:
        raise HealthRunError(
            f"running the health checks of {root} needs root (chroot)",
            hint="run atoll as root, or run the checks inside the booted system with --root /",
        )


def _check_sandbox(root: Path, chroot: bool, binds: Sequence[tuple[str, Path]]) -> None:
    if not root.is_dir():
        raise HealthRunError(f"{root}: no such directory to run the health checks in")
    if not chroot:
        if binds:
            raise HealthRunError("bind mounts for the health checks need chroot=True")
        return
    check_chroot_allowed(root)
    for inside, host in binds:
        target = root / inside.lstrip("/")
        # No symlink on the way: a mount must not land outside the root.
        if (
            not inside.startswith("/")
            or not target.is_dir()
            or resolve_in_root(root, inside) != target
        ):
            raise HealthRunError(f"{target}: no directory to bind {host} on")
        if not host.is_dir():
            raise HealthRunError(f"{host}: no such directory to bind on {inside}")


@contextlib.contextmanager
def _scratch_dirs(
    root: Path, chroot: bool, binds: Sequence[tuple[str, Path]]
) -> Iterator[list[tuple[str, Path]]]:
    """Empty directories to bind on ``/run`` and ``/tmp`` for one run of the checks
    (as a boot starts with them empty), removed afterwards."""
    made: list[Path] = []
    scratch: list[tuple[str, Path]] = []
    taken = {inside.rstrip("/") for inside, _ in binds}
    try:
        for inside, mode in (("/run", 0o755), ("/tmp", 0o1777)):
            target = root / inside.lstrip("/")
            if not chroot or inside in taken or target.is_symlink() or not target.is_dir():
                continue
            directory = Path(tempfile.mkdtemp(prefix=f"atoll-health{inside.replace('/', '-')}-"))
            made.append(directory)
            directory.chmod(mode)
            scratch.append((inside, directory))
        yield scratch
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


def _not_run(check: Check, why: str) -> CheckResult:
    status = CheckStatus.DISABLED if check.disabled else CheckStatus.SKIPPED
    why = check.skip_reason or check.problem or why
    return CheckResult(check.name, check.kind, check.path, status, problem=why)


def _run_one(check: Check, sandbox: Sandbox, env: Mapping[str, str], timeout: float) -> CheckResult:
    if check.skip_reason is not None:
        return _not_run(check, check.skip_reason)
    if check.problem is not None:
        if check.kind is CheckKind.REQUIRED:
            return CheckResult(
                check.name, check.kind, check.path, CheckStatus.FAILED, problem=check.problem
            )
        return _not_run(check, check.problem)
    argv, problem = _argv(sandbox, check.path)
    if problem is not None:
        return CheckResult(check.name, check.kind, check.path, CheckStatus.FAILED, problem=problem)
    done = execute(argv, sandbox=sandbox, env=env, timeout=timeout)
    ok = done.exit_code == 0 and not done.timed_out and done.problem is None
    return CheckResult(
        check.name,
        check.kind,
        check.path,
        CheckStatus.PASSED if ok else CheckStatus.FAILED,
        exit_code=done.exit_code,
        duration=done.duration,
        timed_out=done.timed_out,
        problem=done.problem,
        output=done.output,
    )


def _argv(sandbox: Sandbox, path: str) -> tuple[list[str], str | None]:
    """``[path]``, or a shell and *path* for a script without ``#!`` (which exec
    would refuse, and greenboot runs with bash); or why it cannot start.
    Without a chroot the paths are made host paths under the root."""
    root = sandbox.root
    # Interpreters come from the system the script runs in: the root's, or this one's.
    system = root if sandbox.chroot else Path("/")

    def where(inside: str) -> str:
        return inside if sandbox.chroot else str(root / inside.lstrip("/"))

    try:
        with resolve_in_root(root, path).open("rb") as fh:
            head = fh.read(256)
    except OSError:
        return [where(path)], None  # let exec report it
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].split()
        interpreter = os.fsdecode(words[0]) if words else ""
        if interpreter.startswith("/") and not _exists_in(system, interpreter):
            return [], f"could not start: its interpreter {interpreter} does not exist"
        return [where(path)], None
    if head.startswith(b"\x7fELF"):
        return [where(path)], None
    shell = "/bin/bash" if _exists_in(system, "/bin/bash") else "/bin/sh"
    return [shell, where(path)], None


def _exists_in(system: Path, inside: str) -> bool:
    try:
        return resolve_in_root(system, inside).is_file()
    except OSError:
        return False


def _why(result: CheckResult) -> str:
    return result.problem or f"exit code {result.exit_code}"
