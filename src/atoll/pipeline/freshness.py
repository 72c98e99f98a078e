"""Protection against a registry or mirror that serves stale content: TUF's
rollback and freeze attacks, on devices that follow a tag without a fleet server.

An attacker who controls a mirror cannot forge a signature, but can serve an
image that *was* validly signed: an older, vulnerable version under the tag
(rollback), or the same old state for ever, so that a fixed version never
arrives (freeze).  Two checks refuse them, both before anything is imported:

* **rollback** (:func:`check_not_older`): an upgrade that follows the tag
  refuses an image whose ``org.opencontainers.image.version`` is older (in
  semantic version order, as promotion compares them) than the booted
  deployment's or the staged one's, with DowngradeRefusedError (85).  An image
  whose version cannot be compared with a versioned booted image is refused
  too.  ``atoll switch`` (the user names the image) is never refused, nor an
  upgrade with ``--allow-downgrade`` or ``allow_downgrade = true`` in the
  ``[trust]`` section of ``/etc/atoll/updates.toml``.
* **freeze** (:func:`signature_age_error`): with ``max_signature_age`` in that
  section, the newest signature that verifies under the trust policy must
  have been made (its ``optional.timestamp``) within that age; a signature
  without a time does not count (fail closed), and neither does a policy that
  asks for no signature.  The signer runs ``atoll sign --refresh`` on a
  schedule shorter than the age, so the current image keeps passing while a
  frozen mirror's copy stops doing so: StaleSignatureError (99).

The settings live in atoll's own file because policy.json is containers'
format, which podman and skopeo read too: a field they do not know breaks them.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from atoll.errors import DowngradeRefusedError, StaleSignatureError
from atoll.oci.transports import ImageName
from atoll.pipeline.policy import Policy
from atoll.pipeline.promote import compare_versions
from atoll.pipeline.trust import check_image
from atoll.semver import Version
from atoll.sysroot.fetch import RemoteImage
from atoll.sysroot.lifecycle import Admission, Device

#: What the refusals say to do instead.
_DOWNGRADE_HINT = (
    "if the older version is wanted, switch to it explicitly (atoll switch IMAGE) or "
    "pass atoll upgrade --allow-downgrade (for good: allow_downgrade = true in [trust] of "
    "/etc/atoll/updates.toml); otherwise the registry serves stale content"
)


def check_not_older(image: str, candidate: str | None, deployed: Sequence[str | None]) -> None:
    """Refuse *candidate* (the version of *image*) when it is older than one of
    the *deployed* versions, or cannot be compared with one that is a version."""
    for current in deployed:
        if current is None or Version.parse(current.strip(), full=True) is None:
            continue  # nothing to protect: the deployed image has no semantic version
        order = compare_versions(candidate or "", current)
        if order is None:
            raise DowngradeRefusedError(
                f"{image}: no semantic version in the org.opencontainers.image.version label "
                f"({candidate!r}), and the device runs {current}: an upgrade cannot tell "
                "it from an older image",
                hint=_DOWNGRADE_HINT,
            )
        if order < 0:
            raise DowngradeRefusedError(
                f"{image} is version {candidate}, older than the device's {current}: "
                "refusing to go back by following the tag",
                hint=_DOWNGRADE_HINT,
            )


def signature_age_error(
    image: str,
    timestamps: Sequence[int | None],
    max_age: datetime.timedelta,
    now: datetime.datetime,
) -> StaleSignatureError | None:
    """The refusal when none of the signing times *timestamps* (of the signatures
    that verified) is within *max_age* of *now*; None when one is."""
    times = [t for t in timestamps if t is not None]
    if not times:
        return StaleSignatureError(
            f"{image}: max_signature_age is {_age(max_age)}, and no valid signature "
            "carries a signing time (optional.timestamp)",
            hint="have the image signed again with atoll sign (it records the time)",
        )
    newest = datetime.datetime.fromtimestamp(max(times), datetime.UTC)
    age = now - newest
    if age <= max_age:
        return None
    return StaleSignatureError(
        f"{image}: the newest valid signature was made {newest:%Y-%m-%dT%H:%M:%SZ}, "
        f"{_age(age)} ago, more than max_signature_age ({_age(max_age)}): the registry may "
        "be serving frozen content",
        hint="the signer refreshes signatures with atoll sign --refresh; check the "
        "registry or mirror, or raise max_signature_age in /etc/atoll/updates.toml",
    )


def device_admission(
    device: Device,
    policy: Policy | None,
    *,
    decisions: list[Any],
    max_signature_age: datetime.timedelta | None = None,
    follow_tag: bool = False,
    allow_downgrade: bool = False,
    now: Callable[[], datetime.datetime] | None = None,
) -> Admission | None:
    """The check a device applies to an image before staging it: the trust
    *policy* (with *max_signature_age*) and, when *follow_tag* (an upgrade, not
    a switch) and not *allow_downgrade*, no going back in version.  Each trust
    decision is appended to *decisions*.  None when there is nothing to check."""
    guard_versions = follow_tag and not allow_downgrade
    if policy is None and max_signature_age is None and not guard_versions:
        return None
    clock = now or (lambda: datetime.datetime.now(datetime.UTC))

    def admit(name: ImageName, image: RemoteImage) -> None:
        if guard_versions:
            state = device.state()
            current = [state.booted or state.current, state.staged]
            deployed = [d.origin.image_version for d in current if d is not None]
            check_not_older(str(name), image.version, deployed)
        decisions.append(
            check_image(
                name,
                image.digest,
                policy,
                ctx=device.ctx,
                max_signature_age=max_signature_age,
                now=clock(),
            )
        )

    return admit


def _age(delta: datetime.timedelta) -> str:
    """``8d``, ``7d23h``, ``5h30m``, ``45s``: the two largest units, rounded down."""
    seconds = max(0, int(delta.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count or parts:
            parts.append(f"{count}{unit}" if count else "")
    return "".join(parts[:2]) or "0s"
