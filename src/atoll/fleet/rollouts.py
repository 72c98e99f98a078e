"""Rollouts: a fleet moves to a new OS image in batches.

At the start the fleet's devices (ordered by name) are cut into the batches
given (``count`` or ``percent`` of the fleet; what is left over forms one last
batch), all ``waiting``.  A device is *released* (``updating``; it renders the
target image) when its batch is the current one and the rollout's disruption
budget allows: at most ``maxUnavailable`` devices updating or retrying at once
among those sharing the values of the ``groupBy`` labels.

:func:`reconcile` runs in the transaction of every device status report and
of every operator action on the rollout, and every few seconds in each API
process (:func:`reconcile_due`, which skips a rollout another process holds),
always with the rollout's row locked (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite has one writer at a time), so two API replicas never advance one
rollout twice.  It

1. adds the fleet's devices that are not in the rollout yet (enrolled while it
   runs) to its last batch;
2. marks a released device ``succeeded`` when it reports the target digest
   booted and a green health check, ``failed`` when it reports a failed update
   or a red boot (with its reason), or has not booted the target green
   ``deviceTimeout`` seconds after its release; with ``retries``, a failed
   device is ``retrying`` instead until its attempts are used up, and
   ``updating`` again after ``backoff`` seconds (doubled each time): only its
   reports after that count;
3. releases the current batch's waiting devices the budget allows;
4. pauses the rollout, naming the failed devices and their reasons, when the
   failed share of the batch reaches ``errorThreshold`` percent;
5. when no device of the batch is waiting, updating or retrying, moves to the
   next batch if the succeeded share reaches ``successThreshold`` (or pauses,
   saying so) and the rollout's ``window`` (cron expression and time zone) is
   open (else it waits, saying until when); after the last batch the fleet's
   template takes the target image and the rollout is ``done``.

Resume accepts the failures of the current batch (its failed devices are
``skipped`` and no longer counted) and reconciles again.  Abort stops the
rollout; its devices render the fleet's template again.
"""

from __future__ import annotations

import datetime
import math
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from atoll.errors import FleetConflictError, FleetNotFoundError
from atoll.fleet.db import Device, Fleet, Rollout, RolloutDevice, utcnow
from atoll.fleet.render import ACTIVE_ROLLOUT, resolve_os
from atoll.timeutil import human_time, utc_timestamp
from atoll.updates.cron import CronExpression

REVOKED = "the device was revoked"


def _fleet_devices(session: Session, fleet: Fleet) -> list[str]:
    query = select(Device.name).where(Device.state == "enrolled", Device.fleet == fleet.name)
    return list(session.scalars(query.order_by(Device.name)))


def batch_sizes(batches: list[dict[str, Any]], total: int) -> list[int]:
    sizes = []
    left = total
    for batch in batches:
        want = (
            batch["count"]
            if batch.get("count") is not None
            else (math.ceil(batch["percent"] * total / 100))
        )
        size = min(want, left)
        sizes.append(size)
        left -= size
    if left:
        sizes.append(left)
    return sizes


def start(session: Session, name: str, spec: dict[str, Any]) -> Rollout:
    if session.get(Rollout, name) is not None:
        raise FleetConflictError(f"rollout {name!r} exists already")
    fleet = session.get(Fleet, spec["fleet"], with_for_update=True)
    if fleet is None:
        raise FleetNotFoundError(f"fleet {spec['fleet']!r} does not exist")
    running = session.scalars(
        select(Rollout.name).where(Rollout.fleet == fleet.name, Rollout.state.in_(ACTIVE_ROLLOUT))
    ).first()
    if running is not None:
        raise FleetConflictError(
            f"fleet {fleet.name!r} has rollout {running!r} in progress",
            hint=f"abort it first: atoll fleet rollout abort {running}",
        )
    target = resolve_os(session, spec["os"])
    if target is None:
        raise FleetNotFoundError(f"channel {spec['os'].get('channel')!r} does not exist")
    rollout = Rollout(name=name, fleet=fleet.name, spec=spec, target=target, state="running")
    session.add(rollout)
    session.flush()
    devices = _fleet_devices(session, fleet)
    index = 0
    members = []
    for batch, size in enumerate(batch_sizes(spec["batches"], len(devices))):
        # Released by reconcile, within the disruption budget.
        members += [
            {"rollout": name, "device": d, "batch": batch, "state": "waiting", "attempts": 0}
            for d in devices[index : index + size]
        ]
        index += size
    if members:
        # One statement for the whole fleet (a 10,000-device fleet starts in a moment).
        session.execute(insert(RolloutDevice), members)
    reconcile(session, rollout)
    return rollout


def _lock(session: Session, name: str) -> Rollout:
    rollout = session.get(Rollout, name, with_for_update=True, populate_existing=True)
    if rollout is None:
        raise FleetNotFoundError(f"rollout {name!r} does not exist")
    return rollout


def pause(session: Session, name: str, reason: str) -> Rollout:
    rollout = _lock(session, name)
    if rollout.state != "running":
        raise FleetConflictError(f"rollout {name!r} is {rollout.state}, not running")
    rollout.state, rollout.reason, rollout.updated_at = "paused", reason, utcnow()
    return rollout


def resume(session: Session, name: str) -> Rollout:
    rollout = _lock(session, name)
    if rollout.state != "paused":
        raise FleetConflictError(f"rollout {name!r} is {rollout.state}, not paused")
    for member in _members(session, name, rollout.current_batch):
        if member.state == "failed":
            member.state = "skipped"
    rollout.state, rollout.reason, rollout.updated_at = "running", "", utcnow()
    reconcile(session, rollout)
    return rollout


def abort(session: Session, name: str, reason: str) -> Rollout:
    rollout = _lock(session, name)
    if rollout.state not in ACTIVE_ROLLOUT:
        raise FleetConflictError(f"rollout {name!r} is {rollout.state} already")
    rollout.state, rollout.reason, rollout.updated_at = "aborted", reason, utcnow()
    return rollout


#: Devices read by one statement of :func:`_devices`.
_CHUNK = 2000


def _devices(session: Session, names: list[str]) -> list[Device]:
    """The devices of *names*, read in a few statements: while the caller holds
    the list, ``session.get`` finds each in the session (its identity map keeps
    only what is referenced) instead of reading them one by one, a thousand
    round trips for a batch of a thousand."""
    found: list[Device] = []
    for start in range(0, len(names), _CHUNK):
        chunk = names[start : start + _CHUNK]
        found.extend(session.scalars(select(Device).where(Device.name.in_(chunk))))
    return found


def _members(session: Session, name: str, batch: int | None = None) -> list[RolloutDevice]:
    query = select(RolloutDevice).where(RolloutDevice.rollout == name)
    if batch is not None:
        query = query.where(RolloutDevice.batch == batch)
    return list(session.scalars(query.order_by(RolloutDevice.device)))


def reconcile_for(session: Session, device: Device) -> bool:
    """Reconcile the rollout *device*'s fleet is in, if one is running and no
    other transaction holds its row (``SKIP LOCKED``); False when one does:
    that one may have read the devices before this one's report, so the
    caller asks for a reconciliation soon (atoll.fleet.reconciler)."""
    if device.fleet is None:
        return True
    rollout = session.scalars(
        select(Rollout)
        .where(Rollout.fleet == device.fleet, Rollout.state == "running")
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()
    if rollout is not None:
        reconcile(session, rollout)
        return True
    running = select(Rollout.name).where(Rollout.fleet == device.fleet, Rollout.state == "running")
    return session.scalars(running).first() is None


def _outcome(device: Device | None, member: RolloutDevice, digest: str) -> tuple[str, str] | None:
    """("succeeded"|"failed", reason) from a device's last report since its batch
    was released (an older report says nothing about the target), or None."""
    if device is None or device.state != "enrolled":
        return ("failed", REVOKED)
    if device.status_at is None or (
        member.released_at is not None and device.status_at <= member.released_at
    ):
        return None
    status = device.status or {}
    update = status.get("update") or {}
    if update.get("state") == "failed":
        return ("failed", update.get("reason") or "the update failed")
    if status.get("health") == "red":
        return ("failed", status.get("healthReason") or "the boot was red")
    if status.get("bootedDigest") == digest and status.get("health") == "green":
        return ("succeeded", "")
    return None


def reconcile_due(session: Session, *, wait: bool = False) -> list[str]:
    """Reconcile every running rollout no other process is reconciling now
    (``FOR UPDATE SKIP LOCKED`` on PostgreSQL); the names reconciled.  For
    what moves without a report: an open window, a device's timeout.
    *wait*: take each rollout's row when it is free instead of skipping it
    (reports skipped it: atoll.fleet.reconciler)."""
    rows = session.scalars(
        select(Rollout)
        .where(Rollout.state == "running")
        .with_for_update(skip_locked=not wait)
        .order_by(Rollout.name)
        .execution_options(populate_existing=True)
    ).all()
    for rollout in rows:
        reconcile(session, rollout)
    return [r.name for r in rows]


def _timed_out(rollout: Rollout, member: RolloutDevice) -> tuple[str, str] | None:
    timeout = rollout.spec.get("deviceTimeout")
    if timeout is None or member.released_at is None:
        return None
    if utcnow() - member.released_at < datetime.timedelta(seconds=timeout):
        return None
    return ("failed", f"no green boot of the target within {timeout} s")


def _window_closed(rollout: Rollout) -> str:
    """Why the next batch waits ("" when it need not): the rollout's window."""
    window = rollout.spec.get("window")
    if not window or not window.get("window"):
        return ""
    zone = ZoneInfo(window.get("timezone", "UTC"))
    expression = CronExpression.parse(window["window"], zone)
    now = utcnow()
    if expression.matches(now):
        return ""
    opens = expression.next_match(now).astimezone(zone)
    return (
        f"batch {rollout.current_batch + 1} waits for the window {window['window']} "
        f"({zone.key}); it opens at {human_time(opens, zone.key)}"
    )


#: States of a batch's devices that keep the batch from completing.
IN_PROGRESS = ("waiting", "updating", "retrying")
#: The longest wait between two attempts of one device.
MAX_BACKOFF = datetime.timedelta(days=1)


def _settle(session: Session, rollout: Rollout, member: RolloutDevice, digest: str) -> None:
    """Move one device of the current batch on: an updating device succeeds or
    fails (and is retried while the rollout's retries allow), a retrying
    device whose time has come is updating again (only reports made after
    that count)."""
    now = utcnow()
    if member.state == "retrying":
        if member.retry_at is not None and member.retry_at <= now:
            member.state, member.released_at, member.retry_at = "updating", now, None
        return
    if member.state != "updating":
        return
    outcome = _outcome(session.get(Device, member.device), member, digest)
    if outcome is None:
        outcome = _timed_out(rollout, member)
    if outcome is None:
        return
    state, reason = outcome
    retries = rollout.spec.get("retries")
    revoked = reason == REVOKED
    if state == "failed" and retries and member.attempts < retries["limit"] and not revoked:
        member.attempts += 1
        delay = min(
            datetime.timedelta(seconds=retries["backoff"] * 2 ** (member.attempts - 1)),
            MAX_BACKOFF,
        )
        member.state, member.retry_at = "retrying", now + delay
        member.reason = (
            f"attempt {member.attempts} of {retries['limit'] + 1} failed ({reason}); "
            f"retried at {utc_timestamp(member.retry_at)}"
        )
        return
    member.state, member.reason = state, reason


def _group(labels: dict[str, Any], keys: list[str]) -> tuple[str | None, ...]:
    return tuple(labels.get(key) for key in keys)


def _release(session: Session, rollout: Rollout, batch: list[RolloutDevice]) -> None:
    """Release the batch's waiting devices (in name order) as far as the
    rollout's disruption budget allows: in each label group, at most
    ``maxUnavailable`` devices of the rollout updating or retrying at once."""
    waiting = [m for m in batch if m.state == "waiting"]
    if not waiting:
        return
    budget = rollout.spec.get("disruptionBudget")
    now = utcnow()
    if budget is None:
        for member in waiting:
            member.state, member.released_at, member.reason = "updating", now, ""
        session.flush()
        return
    keys, limit = list(budget.get("groupBy", [])), budget["maxUnavailable"]
    members = _members(session, rollout.name)
    names = [m.device for m in members]
    labels = {
        d.name: d.labels for d in session.scalars(select(Device).where(Device.name.in_(names)))
    }
    busy: dict[tuple[str | None, ...], int] = {}
    for member in members:
        if member.state in ("updating", "retrying"):
            group = _group(labels.get(member.device, {}), keys)
            busy[group] = busy.get(group, 0) + 1
    held = f"held by the disruption budget ({limit} unavailable at most in its group)"
    for member in waiting:
        group = _group(labels.get(member.device, {}), keys)
        if busy.get(group, 0) < limit:
            busy[group] = busy.get(group, 0) + 1
            member.state, member.released_at, member.reason = "updating", now, ""
        elif member.reason != held:
            member.reason = held
    session.flush()


def reconcile(session: Session, rollout: Rollout) -> None:
    if rollout.state != "running":
        return
    fleet = session.get(Fleet, rollout.fleet)
    if fleet is None:
        rollout.state, rollout.reason = "aborted", f"fleet {rollout.fleet!r} was deleted"
        return
    # Names and batches only: a rollout of 10,000 devices is reconciled with
    # every report of a device in flight, and loads only its current batch.
    members = session.execute(
        select(RolloutDevice.device, RolloutDevice.batch).where(
            RolloutDevice.rollout == rollout.name
        )
    ).all()
    known = {device for device, _ in members}
    last = max((batch for _, batch in members), default=0)
    for name in _fleet_devices(session, fleet):
        if name not in known:
            session.add(RolloutDevice(rollout=rollout.name, device=name, batch=last))
    session.flush()
    digest = rollout.target.rpartition("@")[2]
    while True:
        batch = _members(session, rollout.name, rollout.current_batch)
        held = _devices(session, [m.device for m in batch if m.state == "updating"])
        for member in batch:
            _settle(session, rollout, member, digest)
        del held
        _release(session, rollout, batch)
        counted = [m for m in batch if m.state != "skipped"]
        failed = [m for m in counted if m.state == "failed"]
        if counted and len(failed) * 100 >= rollout.spec["errorThreshold"] * len(counted):
            _pause_for(rollout, "error threshold", failed, len(counted))
            return
        if any(m.state in IN_PROGRESS for m in counted):
            return
        succeeded = sum(m.state == "succeeded" for m in counted)
        if counted and succeeded * 100 < rollout.spec["successThreshold"] * len(counted):
            _pause_for(rollout, "success threshold not reached", failed, len(counted))
            return
        if rollout.current_batch >= last:
            _finish(session, rollout, fleet)
            return
        waiting = _window_closed(rollout)
        if waiting:
            if rollout.reason != waiting:
                rollout.reason, rollout.updated_at = waiting, utcnow()
            return
        rollout.reason = ""
        rollout.current_batch += 1
        rollout.updated_at = utcnow()


def _pause_for(rollout: Rollout, why: str, failed: list[RolloutDevice], size: int) -> None:
    names = "; ".join(f"{m.device}: {m.reason}" for m in failed[:10])
    rollout.state = "paused"
    rollout.reason = (
        f"batch {rollout.current_batch}: {why}: {len(failed)} of {size} devices failed"
        + (f" ({names})" if names else "")
    )
    rollout.updated_at = utcnow()


def _finish(session: Session, rollout: Rollout, fleet: Fleet) -> None:
    spec = dict(fleet.spec)
    spec["template"] = {**spec["template"], "os": {"image": rollout.target}}
    fleet.spec = spec
    fleet.generation += 1
    fleet.updated_at = utcnow()
    rollout.state, rollout.reason, rollout.updated_at = "done", "", utcnow()
