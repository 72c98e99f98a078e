"""Rendering: what one device should run, from its fleet's template, the
channels and the rollout it is part of.

A channel is resolved to ``REPO@DIGEST`` here, at render time: a device never
sees a floating tag.  A device a running or paused rollout has released
(:mod:`atoll.fleet.rollouts`) gets the rollout's target instead of the template's OS image.  The
rendered spec's sha256 is kept with the device; when it changes, the device's
spec version goes up by one, so versions only grow.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from atoll.agent import wire
from atoll.fleet.db import Channel, Device, Fleet, Rollout, RolloutDevice
from atoll.fleet.keys import ServerKeys
from atoll.fleet.selector import parse_selector
from atoll.timeutil import utc_timestamp

ACTIVE_ROLLOUT = ("running", "paused")


def fleet_of(session: Session, labels: dict[str, Any]) -> Fleet | None:
    """The first fleet, by name, whose selector matches *labels*."""
    for fleet in session.scalars(select(Fleet).order_by(Fleet.name)):
        if parse_selector(fleet.spec["selector"]).matches(labels):
            return fleet
    return None


def assign_fleet(session: Session, device: Device) -> None:
    found = fleet_of(session, device.labels)
    device.fleet = None if found is None else found.name


def assign_fleets(session: Session) -> None:
    """Recompute every device's fleet (after a fleet was made, changed or deleted)."""
    fleets = [
        (f.name, parse_selector(f.spec["selector"]))
        for f in session.scalars(select(Fleet).order_by(Fleet.name))
    ]
    for device in session.scalars(select(Device)):
        device.fleet = next((n for n, sel in fleets if sel.matches(device.labels)), None)


def resolve_os(session: Session, os: dict[str, Any] | None) -> str | None:
    """``REPO@DIGEST`` for an OS template (a channel's current digest), or None."""
    if not os:
        return None
    if os.get("image"):
        return str(os["image"])
    channel = session.get(Channel, os["channel"])
    return None if channel is None else f"{channel.image}@{channel.digest}"


def render(session: Session, device: Device) -> dict[str, Any]:
    fleet = None if device.fleet is None else session.get(Fleet, device.fleet)
    if fleet is None:
        return spec_of(None, None, None)
    released = session.execute(
        select(Rollout.target)
        .join(RolloutDevice, RolloutDevice.rollout == Rollout.name)
        .where(
            Rollout.fleet == fleet.name,
            Rollout.state.in_(ACTIVE_ROLLOUT),
            RolloutDevice.device == device.name,
            RolloutDevice.released_at.is_not(None),
        )
    ).scalar_one_or_none()
    image = released or resolve_os(session, fleet.spec["template"].get("os"))
    return spec_of(fleet.name, fleet.spec, image)


def spec_of(fleet: str | None, spec: dict[str, Any] | None, image: str | None) -> dict[str, Any]:
    """The spec a device of *fleet* (whose spec is *spec*) renders, running *image*
    (a released rollout's target, else the template's OS resolved)."""
    if fleet is None or spec is None:
        return {"fleet": None, "os": None, "units": {}, "files": [], "updatePolicy": None}
    template = spec["template"]
    return {
        "fleet": fleet,
        "os": None if image is None else {"image": image},
        "units": template.get("units", {}),
        "files": template.get("files", []),
        "updatePolicy": template.get("updatePolicy"),
    }


def spec_hash(spec: dict[str, Any], keys: ServerKeys) -> str:
    """What a device's spec version follows: the spec and the spec keys announced."""
    return hashlib.sha256(
        wire.canonical_json({"spec": spec, "keys": list(keys.spec_public_keys)})
    ).hexdigest()


def refresh_spec(session: Session, device: Device, keys: ServerKeys) -> dict[str, Any]:
    """Render *device*'s spec and move its version on when the spec, or the set
    of spec keys it announces, changed."""
    spec = render(session, device)
    digest = spec_hash(spec, keys)
    if digest != device.spec_hash:
        # Two polls at once must not both move the version on: lock, look again.
        session.refresh(device, with_for_update=True)
        if digest != device.spec_hash:
            device.spec_hash = digest
            device.spec_version += 1
    return spec


def signed_spec(
    keys: ServerKeys,
    device: str,
    version: int,
    spec: dict[str, Any],
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> dict[str, Any]:
    """The envelope of *device*'s spec at *version*, signed with the spec key."""
    payload = {
        "device": device,
        "version": version,
        "issuedAt": utc_timestamp(now, digits=None),
        "expiresAt": utc_timestamp(now + lifetime, digits=None),
        "specKeys": list(keys.spec_public_keys),
        "spec": spec,
    }
    return wire.seal_spec(keys.spec_key, payload)
