"""The decision engine: given the configuration, the time, what was done before and
what the device looks like, what should automatic updates do now?

:func:`decide` is pure: no files, no network, no clock but the one passed in.
The rules, in order:

1. ``policy = "none"``: nothing, ever.
2. A download-only update is staged (``atoll upgrade --download-only``): nothing;
   the administrator decides when it applies (``atoll upgrade --from-downloaded``).
3. The last runs failed: nothing until the backoff is over (15 minutes after
   the first failure, doubling up to 6 hours).
4. ``apply``, an update staged and the apply window open: reboot into it
   (:attr:`Action.APPLY`), or wait while an inhibitor holds (:attr:`Action.WAIT`).
5. The download window (shifted later by this device's random delay) is closed:
   nothing until it opens.
6. Otherwise, by policy: ``check`` checks, ``stage`` stages, ``apply`` stages
   and, when the apply window is open and no inhibitor holds, applies.

*force* (``atoll updates run --force``) skips the windows, the random delay,
the backoff and the inhibitors (rules 3-5); rules 1 and 2 still hold.

**The random delay** is fixed per device: a hash of a stable seed (the
machine-id) picks a delay from 0 to ``random_delay``.  The device's download
window is the configured one shifted later by that delay, so a fleet's
devices reach the registry spread out, and each one always at the same offset.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from atoll.timeutil import human_time, utc_timestamp
from atoll.updates.clock import Clock
from atoll.updates.config import UpdatePolicy, UpdatesConfig, format_duration
from atoll.updates.inhibitors import Inhibitor
from atoll.updates.state import UpdateState


class Action(StrEnum):
    #: Nothing now; see the decision's next opportunity.
    IDLE = "idle"
    #: Look for an update (manifest and config only).
    CHECK = "check"
    #: Download and stage an update.
    STAGE = "stage"
    #: Finalize the staged update and reboot into it (staging first if asked).
    APPLY = "apply"
    #: An update is ready to apply but an inhibitor holds the reboot off.
    WAIT = "wait-inhibitors"


@dataclass(frozen=True)
class StagedUpdate:
    """The staged deployment, as the decision needs to know it."""

    deployment: str
    digest: str
    version: str | None
    download_only: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "digest": self.digest,
            "version": self.version,
            "downloadOnly": self.download_only,
        }


@dataclass(frozen=True)
class DeviceFacts:
    """What the decision needs to know about the device, gathered beforehand."""

    #: Stable per device (the machine-id): picks the random delay.
    seed: str
    staged: StagedUpdate | None = None
    #: Inhibitors holding right now (gathered for ``policy = "apply"``).
    inhibitors: tuple[Inhibitor, ...] = ()


@dataclass(frozen=True)
class UpdateDecision:
    action: Action
    #: A sentence saying why, for status output and logs.
    reason: str
    #: The instant the decision was made.
    now: datetime.datetime
    #: When something could happen next: *now* when acting, None when nothing
    #: will (policy none) or it depends on something else (an inhibitor).
    next_opportunity: datetime.datetime | None
    #: This device's random delay.
    delay: datetime.timedelta
    download_open: bool
    apply_open: bool
    #: For APPLY: stage (fetch the newest image) before finalizing.
    stage_first: bool = False
    inhibitors: tuple[Inhibitor, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason,
            "now": utc_timestamp(self.now),
            "nextOpportunity": utc_timestamp(self.next_opportunity)
            if self.next_opportunity
            else None,
            "delaySeconds": int(self.delay.total_seconds()),
            "downloadWindowOpen": self.download_open,
            "applyWindowOpen": self.apply_open,
            "stageFirst": self.stage_first,
            "inhibitors": [i.to_json() for i in self.inhibitors],
        }


def device_delay(seed: str, maximum: datetime.timedelta) -> datetime.timedelta:
    """This device's delay: 0 to *maximum* (whole seconds), the same for the same seed."""
    limit = int(maximum.total_seconds())
    if limit <= 0:
        return datetime.timedelta(0)
    digest = hashlib.sha256(f"atoll-updates-delay\0{seed}".encode()).digest()
    return datetime.timedelta(seconds=int.from_bytes(digest[:8], "big") % (limit + 1))


def decide(
    config: UpdatesConfig,
    clock: Clock,
    state: UpdateState,
    facts: DeviceFacts,
    *,
    force: bool = False,
) -> UpdateDecision:
    """What automatic updates should do now (see the module docstring for the rules)."""
    now = clock.now()
    delay = device_delay(facts.seed, config.download.random_delay)
    download_window = config.download.window
    apply_window = config.apply.window
    download_open = force or download_window.is_open(now, delay)
    apply_open = force or apply_window.is_open(now)
    policy = config.policy
    staged = facts.staged

    def decision(
        action: Action,
        reason: str,
        next_opportunity: datetime.datetime | None,
        *,
        stage_first: bool = False,
        inhibitors: tuple[Inhibitor, ...] = (),
    ) -> UpdateDecision:
        return UpdateDecision(
            action,
            reason,
            now,
            next_opportunity,
            delay,
            download_open,
            apply_open,
            stage_first,
            inhibitors,
        )

    if policy is UpdatePolicy.NONE:
        return decision(Action.IDLE, 'automatic updates are off (policy = "none")', None)
    if staged is not None and staged.download_only:
        return decision(
            Action.IDLE,
            f"a download-only update ({staged.version or staged.digest[:19]}) is staged; "
            "apply it with atoll upgrade --from-downloaded, or discard it",
            None,
        )
    retry_at = None if force else state.retry_at()
    if retry_at is not None and now < retry_at:
        error = state.last_error.message if state.last_error else "unknown error"
        return decision(
            Action.IDLE,
            f"{state.failures} failed run(s) in a row (last: {error}); "
            f"trying again from {human_time(retry_at, download_window.timezone)}",
            retry_at,
        )
    held = () if force else facts.inhibitors
    if policy is UpdatePolicy.APPLY and staged is not None and apply_open:
        what = staged.version or staged.digest[:19]
        if held:
            who = "; ".join(i.describe() for i in held)
            return decision(
                Action.WAIT,
                f"update {what} is staged and the apply window is open, "
                f"but the reboot is inhibited by {who}",
                None,
                inhibitors=held,
            )
        return decision(
            Action.APPLY,
            f"update {what} is staged and the apply window is open",
            now,
            stage_first=download_open,
        )
    if not download_open:
        opens = download_window.next_open(now, delay)
        if download_window.is_open(now):
            reason = (
                f"the download window is open, but this device waits its random delay "
                f"({format_duration(delay)}) until {human_time(opens, download_window.timezone)}"
            )
        else:
            reason = (
                f"outside the download window ({download_window.describe()}); "
                f"this device's opens at {human_time(opens, download_window.timezone)}"
            )
        if policy is UpdatePolicy.APPLY and staged is not None:
            applies = apply_window.next_open(now)
            reason = (
                f"update {staged.version or staged.digest[:19]} is staged and waits for the "
                f"apply window ({apply_window.describe()}), which opens at "
                f"{human_time(applies, apply_window.timezone)}; this device's download window "
                f"opens at {human_time(opens, download_window.timezone)}"
            )
            opens = min(opens, applies)
        return decision(Action.IDLE, reason, opens)
    if policy is UpdatePolicy.CHECK:
        return decision(Action.CHECK, "the download window is open: check for an update", now)
    if policy is UpdatePolicy.STAGE:
        return decision(Action.STAGE, "the download window is open: stage any update", now)
    # policy apply; nothing staged yet, or the apply window is closed.
    if apply_open and not held:
        return decision(
            Action.APPLY,
            "the download and apply windows are open: stage any update and reboot into it",
            now,
            stage_first=True,
        )
    if held:
        who = "; ".join(i.describe() for i in held)
        reason = f"stage any update; the reboot is inhibited by {who}"
    else:
        reason = (
            f"stage any update; the apply window ({apply_window.describe()}) opens at "
            f"{human_time(apply_window.next_open(now), apply_window.timezone)}"
        )
    return decision(Action.STAGE, reason, now, inhibitors=held)
