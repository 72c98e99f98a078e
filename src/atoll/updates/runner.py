"""Running automatic updates: what ``atoll updates run`` (and its timer) does.

One run: read and validate the configuration from the running system's root,
take the updates lock, gather the device's facts, :func:`~atoll.updates.policy.decide`,
and carry the decision out with the device's own operations:

=============  =======================================================================
check          ``device.check()``: manifest and config only; the result is remembered
stage          ``device.stage()``: download and stage (applied at the next reboot)
apply          ``device.stage()`` when asked, then a fresh look at the inhibitors, then
               ``device.finalize()`` and the *reboot* callable the caller passes in
=============  =======================================================================

The state file is written before the reboot is requested.  A failure is
recorded (for the backoff and ``atoll updates status``) and raised again, so
the timer's service fails visibly.  With *max_wait*, a run whose decision is
"not yet, but at T" sleeps until T when T is that close, then decides again:
the timer fires hourly, so this is how a window of a few minutes is caught.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from atoll.errors import AtollError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from atoll.sysroot.fetch import RemoteImage
from atoll.sysroot.layout import Sysroot
from atoll.sysroot.lifecycle import FinalizeResult, StageResult
from atoll.sysroot.origin import Deployment
from atoll.sysroot.rolledback import RolledBackImage, find_rolled_back
from atoll.sysroot.state import SysrootState
from atoll.timeutil import utc_timestamp
from atoll.updates.clock import Clock
from atoll.updates.config import UpdatePolicy, UpdatesConfig, load_config
from atoll.updates.inhibitors import (
    CommandRunner,
    Inhibitor,
    check_inhibitors,
    run_inhibitor_command,
)
from atoll.updates.policy import Action, DeviceFacts, StagedUpdate, UpdateDecision, decide
from atoll.updates.state import CheckRecord, UpdateState, state_path, updates_lock

log = logging.getLogger(__name__)


class UpdatableDevice(Protocol):
    """What automatic updates need of a device; :class:`atoll.sysroot.lifecycle.Device`
    is one."""

    sysroot: Sysroot
    ctx: SystemContext

    def state(self) -> SysrootState: ...

    def check(self, name: ImageName | None = None) -> tuple[Deployment, RemoteImage, bool]: ...

    def stage(
        self, name: ImageName | None = None, *, allow_rolled_back: bool = False
    ) -> StageResult: ...

    def finalize(self) -> FinalizeResult | None: ...


class Outcome(StrEnum):
    #: Nothing was done (see the decision's reason and next opportunity).
    IDLE = "idle"
    #: Checked for an update (see update_available).
    CHECKED = "checked"
    #: Nothing newer than what is deployed or staged.
    UP_TO_DATE = "up-to-date"
    #: An update is staged (now, or it already was).
    STAGED = "staged"
    #: Finalized, and the reboot was requested.
    APPLIED = "applied"
    #: An update is ready but an inhibitor holds the reboot off.
    INHIBITED = "inhibited"
    #: The image available is one this device rolled back from: not staged again.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class UpdateRunResult:
    decision: UpdateDecision
    outcome: Outcome
    message: str
    update_available: bool | None = None
    digest: str | None = None
    version: str | None = None
    #: The staged deployment's id, when there is one.
    deployment: str | None = None
    rebooted: bool = False
    inhibitors: tuple[Inhibitor, ...] = ()
    #: Why the image available was skipped (Outcome.SKIPPED).
    rolled_back: RolledBackImage | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "message": self.message,
            "updateAvailable": self.update_available,
            "digest": self.digest,
            "version": self.version,
            "deployment": self.deployment,
            "rebooted": self.rebooted,
            "inhibitors": [i.to_json() for i in self.inhibitors],
            "decision": self.decision.to_json(),
            "rolledBack": self.rolled_back.to_json() if self.rolled_back else None,
        }


#: The sysroot of a real machine; with it, the running system's root is /.
REAL_SYSROOT = Path("/sysroot")


def running_root(device: UpdatableDevice, root: str | Path | None = None) -> Path:
    """The running system's root, where ``/etc/atoll/updates.toml``, the machine-id
    and inhibitor files are: *root* when given; ``/`` for the sysroot ``/sysroot``
    (a real machine, or a container booted from it); else the booted deployment
    of the sysroot (a directory device)."""
    if root:
        return Path(root)
    if device.sysroot.root.resolve() == REAL_SYSROOT:
        return Path("/")
    state = device.state()
    return state.path(state.current)


# --- facts ------------------------------------------------------------------------------


def device_seed(root: Path, sysroot: Path) -> str:
    """The machine-id of the system at *root*, else the sysroot's path: stable per device."""
    try:
        machine_id = (root / "etc" / "machine-id").read_text().strip()
    except (OSError, UnicodeDecodeError):
        machine_id = ""
    if machine_id and machine_id != "uninitialized":
        return f"machine-id:{machine_id}"
    return f"sysroot:{sysroot.resolve()}"


def staged_update(device: UpdatableDevice) -> StagedUpdate | None:
    staged = device.state().staged
    if staged is None:
        return None
    return StagedUpdate(
        staged.id,
        staged.origin.manifest_digest,
        staged.origin.image_version,
        staged.origin.download_only,
    )


def gather_facts(
    device: UpdatableDevice,
    root: Path,
    config: UpdatesConfig,
    *,
    inhibitors: bool,
    run_command: CommandRunner = run_inhibitor_command,
) -> DeviceFacts:
    held = check_inhibitors(config, root, run_command=run_command) if inhibitors else []
    return DeviceFacts(
        seed=device_seed(root, device.sysroot.root),
        staged=staged_update(device),
        inhibitors=tuple(held),
    )


# --- the run ----------------------------------------------------------------------------


def run_automatic_update(
    device: UpdatableDevice,
    root: Path,
    clock: Clock,
    *,
    reboot: Callable[[], object],
    force: bool = False,
    max_wait: datetime.timedelta = datetime.timedelta(0),
    run_command: CommandRunner = run_inhibitor_command,
    allow_rolled_back: bool = False,
) -> UpdateRunResult:
    """Do what ``/etc/atoll/updates.toml`` of the system at *root* says should happen
    now; *reboot* is called (once the update is finalized) to reboot into it.  An
    image this device rolled back from is skipped unless *allow_rolled_back*."""
    config = load_config(root)
    device.sysroot.check_version()  # before the lock creates anything in it
    sysroot = device.sysroot.root
    path = state_path(sysroot)
    deadline = clock.now().astimezone(datetime.UTC) + max_wait
    while True:
        with updates_lock(sysroot):
            state = UpdateState.load(path)
            facts = gather_facts(
                device,
                root,
                config,
                inhibitors=config.policy is UpdatePolicy.APPLY and not force,
                run_command=run_command,
            )
            decision = decide(config, clock, state, facts, force=force)
            opens = decision.next_opportunity
            if not (
                decision.action is Action.IDLE
                and opens is not None
                and decision.now < opens <= deadline
            ):
                run = _Run(device, root, config, state, path, reboot, run_command)
                run.allow_rolled_back = allow_rolled_back
                return run.carry_out(decision, force=force)
        log.info("waiting until %s: %s", utc_timestamp(opens), decision.reason)
        clock.sleep((opens - clock.now()).total_seconds())


class _Run:
    def __init__(
        self,
        device: UpdatableDevice,
        root: Path,
        config: UpdatesConfig,
        state: UpdateState,
        path: Path,
        reboot: Callable[[], object],
        run_command: CommandRunner,
    ) -> None:
        self.device = device
        self.root = root
        self.config = config
        self.state = state
        self.path = path
        self.reboot = reboot
        self.run_command = run_command
        self.allow_rolled_back = False
        #: Set by _stage when the image available was rolled back on this device.
        self.skipped: RolledBackImage | None = None

    def carry_out(self, decision: UpdateDecision, *, force: bool) -> UpdateRunResult:
        action = decision.action
        if action is Action.IDLE:
            return UpdateRunResult(decision, Outcome.IDLE, decision.reason)
        now = decision.now
        if action is Action.WAIT:
            self.state = self.state.succeeded(now, Outcome.INHIBITED.value)
            self.state.save(self.path)
            return UpdateRunResult(
                decision,
                Outcome.INHIBITED,
                decision.reason,
                update_available=True,
                inhibitors=decision.inhibitors,
            )
        try:
            result = self._act(decision, force=force)
        except AtollError as exc:
            self.state = self.state.failed(now, action.value, exc.message, exc.exit_code)
            self.state.save(self.path)
            raise
        return result

    def _act(self, decision: UpdateDecision, *, force: bool) -> UpdateRunResult:
        now = decision.now
        if decision.action is Action.CHECK:
            with self._download_settings():
                _, image, changed = self.device.check()
            skipped = self._rolled_back(str(image.digest)) if changed else None
            if skipped is not None:
                changed = False
            check = CheckRecord(
                now,
                changed,
                str(image.digest) if changed else None,
                image.version if changed else None,
            )
            self.state = self.state.succeeded(now, Outcome.CHECKED.value, last_check=check)
            self.state.save(self.path)
            message = (
                f"update available: {image.version or '-'} ({str(image.digest)[:19]})"
                if changed
                else f"no update: {image.name} is what is deployed"
            )
            if skipped is not None:
                message = f"no update: {skipped.describe()}; it is not taken again"
            return UpdateRunResult(
                decision,
                Outcome.CHECKED,
                message,
                update_available=changed,
                digest=str(image.digest),
                version=image.version,
                rolled_back=skipped,
            )

        if decision.action is Action.STAGE or decision.stage_first:
            staged = self._stage(now)
        else:
            staged = staged_update(self.device)
        if staged is None and self.skipped is not None:
            self.state.save(self.path)
            return UpdateRunResult(
                decision,
                Outcome.SKIPPED,
                f"not staged: {self.skipped.describe()}",
                False,
                self.skipped.image_digest,
                self.skipped.version,
                rolled_back=self.skipped,
            )
        if decision.action is Action.STAGE:
            self.state.save(self.path)
            if staged is None:
                return UpdateRunResult(decision, Outcome.UP_TO_DATE, "no update to stage", False)
            return UpdateRunResult(
                decision,
                Outcome.STAGED,
                f"update {staged.version or staged.digest[:19]} is staged; "
                "it applies at the next reboot",
                True,
                staged.digest,
                staged.version,
                staged.deployment,
            )

        # Apply.
        if staged is None or staged.download_only:
            self.state.save(self.path)
            return UpdateRunResult(decision, Outcome.UP_TO_DATE, "no update to apply", False)
        what = staged.version or staged.digest[:19]
        if not force:
            # Staging may have taken a while: look again right before the reboot.
            held = check_inhibitors(self.config, self.root, run_command=self.run_command)
            if held:
                self.state = self.state.succeeded(now, Outcome.INHIBITED.value)
                self.state.save(self.path)
                who = "; ".join(i.describe() for i in held)
                return UpdateRunResult(
                    decision,
                    Outcome.INHIBITED,
                    f"update {what} is staged; the reboot is inhibited by {who}",
                    True,
                    staged.digest,
                    staged.version,
                    staged.deployment,
                    inhibitors=tuple(held),
                )
        self.device.finalize()
        self.state = self.state.succeeded(now, Outcome.APPLIED.value, applied_at=now)
        self.state.save(self.path)
        log.info("rebooting into %s (%s)", what, staged.deployment)
        self.reboot()
        return UpdateRunResult(
            decision,
            Outcome.APPLIED,
            f"update {what} is finalized; rebooting into it",
            True,
            staged.digest,
            staged.version,
            staged.deployment,
            rebooted=True,
        )

    def _stage(self, now: datetime.datetime) -> StagedUpdate | None:
        with self._download_settings():
            result = self.device.stage(allow_rolled_back=self.allow_rolled_back)
        self.skipped = result.rolled_back
        staged = staged_update(self.device)
        changes: dict[str, Any] = {
            "last_check": CheckRecord(
                now,
                staged is not None,
                staged.digest if staged else None,
                staged.version if staged else None,
            )
        }
        if result.deployment is not None and staged is not None:
            changes.update(staged_at=now, staged_digest=staged.digest)
        outcome = Outcome.STAGED if staged is not None else Outcome.UP_TO_DATE
        if staged is None and self.skipped is not None:
            outcome = Outcome.SKIPPED
        self.state = self.state.succeeded(now, outcome.value, **changes)
        return staged

    def _rolled_back(self, digest: str) -> RolledBackImage | None:
        if self.allow_rolled_back:
            return None
        return find_rolled_back(self.device.sysroot, digest)

    @contextlib.contextmanager
    def _download_settings(self) -> Iterator[None]:
        """Apply ``download.rate_limit`` to the device's registry traffic for a while."""
        limit = self.config.download.rate_limit
        saved = self.device.ctx
        if limit is None:
            yield
            return
        if saved.rate_limit is not None:
            limit = min(limit, saved.rate_limit)
        self.device.ctx = saved._replace(rate_limit=limit)
        try:
            yield
        finally:
            self.device.ctx = saved
