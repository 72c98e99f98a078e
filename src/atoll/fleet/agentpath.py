"""The agent's two frequent requests, the spec poll and the status report, in
as few database statements as they can take: every device makes each once a
minute, so at 10,000 devices they are nearly all the server's work.

A poll whose spec did not change is one ``SELECT`` (the device's row, its
fleet, the fleet's channel, the rollout target released to it and a stamp of
the server's active keys, joined), a signature check with the device's key
parsed once per process (:func:`atoll.fleet.auth.device_key`) and the spec
rendered in memory; nothing is written.  A status report is that ``SELECT``'s
smaller sibling and one ``UPDATE`` whose ``WHERE`` repeats the checks
(enrolled, the same key, a newer timestamp), so it needs no row lock and a
replay racing it changes nothing.  Both run on an engine of their own
(:func:`atoll.fleet.db.open_engine` with ``agents``): one statement is one
transaction, and no ping precedes it.

A spec that changed costs one more statement: an ``UPDATE`` that moves the
version on only while the row still holds the old spec's hash, so two polls
racing move it once.  What is rare takes the general path
(:mod:`atoll.fleet.app`): a poll that lost that race, and a report from a
device of a rollout in flight (the rollout is reconciled in the report's
transaction).
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, literal, select, update
from sqlalchemy.engine import Connection, Engine

from atoll.agent import wire
from atoll.errors import FleetAuthError, FleetNotFoundError
from atoll.fleet import auth, keys, render
from atoll.fleet.db import (
    Channel,
    Device,
    Event,
    Fleet,
    Rollout,
    RolloutDevice,
    ServerKey,
    utcnow,
)

#: Rollout-device states in flight: a report from such a device reconciles its rollout.
IN_FLIGHT = ("updating", "retrying")


@dataclass(frozen=True)
class Unchanged:
    """The device holds the current spec already (a 204)."""


@dataclass(frozen=True)
class Changed:
    """Take the general path: another poll moved the version on meanwhile, or
    the server has no keys."""


#: :meth:`KeyCache.cached`: the keys are to be read again.
STALE = object()


class KeyCache:
    """The server's keys, loaded again only when the set of active keys changed
    (a rotation adds a row or retires one: the sum of their ids changes)."""

    def __init__(self) -> None:
        self._stamp: int | None = None
        self._keys: keys.ServerKeys | None = None
        self._lock = threading.Lock()

    def cached(self, stamp: int) -> keys.ServerKeys | object | None:
        """The keys of *stamp*, None when the server has none, or :data:`STALE`."""
        with self._lock:
            return self._keys if stamp == self._stamp else STALE

    def get(self, connection: Connection, stamp: int) -> keys.ServerKeys | None:
        with self._lock:
            if stamp == self._stamp:
                return self._keys
        from sqlalchemy.orm import Session

        with Session(connection) as session:
            found = keys.load_keys(session)
        with self._lock:
            self._stamp, self._keys = stamp, found
        return found


def _constants(values: tuple[str, ...]) -> list[Any]:
    """Values written into the statement once: a plain ``in_()`` of strings is
    expanded again at every execution."""
    return [literal(v) for v in values]


_KEY_STAMP = (
    select(func.coalesce(func.sum(ServerKey.id), 0)).where(ServerKey.active).scalar_subquery()
)


def _released() -> Any:
    return (
        select(Rollout.target)
        .join(RolloutDevice, RolloutDevice.rollout == Rollout.name)
        .where(
            Rollout.fleet == Device.fleet,
            Rollout.state.in_(_constants(render.ACTIVE_ROLLOUT)),
            RolloutDevice.device == Device.name,
            RolloutDevice.released_at.is_not(None),
        )
        .limit(1)
        .scalar_subquery()
    )


def _with_spec(*columns: Any, fleet_spec: bool = True) -> Any:
    """*columns* of devices, then what their spec is rendered from: the version
    and hash recorded, the fleet, its spec (unless not *fleet_spec*), its
    channel's image and digest, the rollout's release and the keys' stamp."""
    spec = (Fleet.spec,) if fleet_spec else ()
    return (
        select(
            *columns,
            Device.spec_version,
            Device.spec_hash,
            Device.fleet,
            *spec,
            Channel.image,
            Channel.digest,
            _released(),
            _KEY_STAMP,
        )
        .select_from(Device)
        .outerjoin(Fleet, Fleet.name == Device.fleet)
        .outerjoin(Channel, Channel.name == Fleet.spec[("template", "os", "channel")].as_string())
    )


_POLL = _with_spec(Device.state, Device.public_key, Device.cert_not_after).where(
    Device.name == bindparam("b_name")
)

_REPORT = select(
    Device.state,
    Device.public_key,
    Device.cert_not_after,
    Device.last_request_ms,
    Device.key_rotation,
    (
        select(literal(1))
        .select_from(RolloutDevice)
        .join(Rollout, Rollout.name == RolloutDevice.rollout)
        .where(
            Rollout.fleet == Device.fleet,
            Rollout.state == "running",
            RolloutDevice.device == Device.name,
            RolloutDevice.state.in_(_constants(IN_FLIGHT)),
        )
        .limit(1)
        .scalar_subquery()
    ),
).where(Device.name == bindparam("b_name"))

#: A new spec's version, taken when the row still holds the old spec's hash.
_MOVE = (
    update(Device)
    .where(Device.name == bindparam("b_name"), Device.spec_hash == bindparam("b_old"))
    .values(spec_hash=bindparam("b_new"), spec_version=Device.spec_version + 1)
    .returning(Device.spec_version)
)

#: The report, written when the row still holds what was checked.
_WRITE = (
    update(Device)
    .where(
        Device.name == bindparam("b_name"),
        Device.state == "enrolled",
        Device.public_key == bindparam("b_key"),
        Device.last_request_ms < bindparam("b_stamp"),
    )
    .values(
        status=bindparam("b_status", type_=Device.status.type),
        status_at=bindparam("b_now"),
        last_request_ms=bindparam("b_stamp"),
        last_seen=bindparam("b_now"),
    )
)


@dataclass(frozen=True)
class Query:
    """One statement a step asks its driver to run: the row it returns (or
    None), or with *rowcount* the number of rows it changed."""

    statement: Any
    params: dict[str, Any]
    rowcount: bool = False


@dataclass(frozen=True)
class Keys:
    """A step asks its driver for the server's keys whose stamp is *stamp*
    (:class:`KeyCache`: read again only when the stamp moved)."""

    stamp: int


#: The logic of a request as steps: it yields each statement it needs and is
#: sent the statement's answer.  The driver (:func:`run`) owns the connection,
#: so the logic is written once for the first look of a poll, its later looks
#: and a report, and could be driven otherwise (asynchronous connections were
#: tried: docs/performance.md).
Steps = Generator[Query | Keys, Any, Any]


def run(engine: Engine, key_cache: KeyCache, steps: Steps) -> Any:
    """Run *steps* on one connection of *engine*: their result."""
    with engine.connect() as connection:
        answer: Any = None
        try:
            while True:
                step = steps.send(answer)
                if isinstance(step, Keys):
                    answer = key_cache.get(connection, step.stamp)
                elif step.rowcount:
                    answer = connection.execute(step.statement, step.params).rowcount
                else:
                    answer = connection.execute(step.statement, step.params).one_or_none()
        except StopIteration as stop:
            return stop.value


def poll(
    engine: Engine,
    key_cache: KeyCache,
    headers: dict[str, str],
    target: str,
    known: int,
    *,
    lifetime: datetime.timedelta,
) -> Unchanged | Changed | dict[str, Any]:
    """A device's spec poll: :class:`Unchanged`, :class:`Changed`, or the signed
    envelope of its current spec."""
    answer: Unchanged | Changed | dict[str, Any] = run(
        engine, key_cache, poll_steps(headers, target, known, lifetime)
    )
    return answer


def poll_steps(
    headers: dict[str, str], target: str, known: int, lifetime: datetime.timedelta
) -> Steps:
    name, stamp, signature = auth.signed_by(headers)
    row = yield Query(_POLL, {"b_name": name})
    if row is None:
        raise FleetAuthError(f"device {name!r} is not enrolled")
    state, public_pem, not_after = row[:3]
    auth.check_signature(
        name,
        state,
        not_after,
        public_pem,
        wire.request_message("GET", target, stamp, b""),
        signature,
        stamp,
    )
    return (yield from _look(name, known, lifetime, row))


def recheck_steps(name: str, known: int, lifetime: datetime.timedelta) -> Steps:
    """A later look of a long poll whose signature was checked at its first:
    the device must still exist and be enrolled (as the general path's look)."""
    row = yield Query(_POLL, {"b_name": name})
    if row is None:
        raise FleetNotFoundError(f"device {name!r} does not exist")
    if row[0] != "enrolled":
        raise FleetAuthError(f"device {name!r} is {row[0]}: refused")
    return (yield from _look(name, known, lifetime, row))


def _spec(fleet: Any, fleet_spec: Any, image: Any, digest: Any, released: Any) -> Any:
    """The device's spec as rendered now, from its row's fleet, channel and release."""
    if released is None and fleet_spec is not None:
        os = fleet_spec["template"].get("os") or {}
        released = os.get("image") or (None if image is None else f"{image}@{digest}")
    return render.spec_of(fleet, fleet_spec, released)


def _look(name: str, known: int, lifetime: datetime.timedelta, row: Any) -> Steps:
    """The device's spec, from its row (the poll's ``SELECT``)."""
    version, spec_hash = row[3:5]
    key_stamp = row[10]
    found = yield Keys(int(key_stamp))
    if found is None:
        return Changed()  # no keys: the general path says so
    spec = _spec(*row[5:10])
    digest = render.spec_hash(spec, found)
    if digest != spec_hash:
        # The spec changed: its version moves on, once even when two polls race
        # (the second finds the hash moved and takes the general path).
        moved = yield Query(_MOVE, {"b_name": name, "b_old": spec_hash, "b_new": digest})
        if moved is None:
            return Changed()
        version = int(moved[0])
    elif version == known:
        return Unchanged()
    return render.signed_spec(found, name, version, spec, utcnow(), lifetime)


#: What moves when any device's spec may have moved: every operator change
#: writes an event, a rollout's progress moves its ``updated_at`` or releases
#: devices, a key rotation changes the active keys.
_STAMP = select(
    select(func.max(Event.id)).scalar_subquery(),
    select(func.max(Rollout.updated_at)).scalar_subquery(),
    select(func.max(RolloutDevice.released_at)).scalar_subquery(),
    _KEY_STAMP,
)


#: The rows of the devices whose long polls wait, as :func:`moved` reads them: their
#: fleets' specs are read once each (:data:`_FLEETS`), not with every row.
_WAITING = _with_spec(Device.name, Device.state, fleet_spec=False).where(
    Device.name.in_(bindparam("b_names", expanding=True))
)
_FLEETS = select(Fleet.name, Fleet.spec).where(
    Fleet.name.in_(bindparam("b_fleets", expanding=True))
)
#: Devices read by one statement of :func:`moved` (SQLite allows 32,766 parameters).
MOVED_CHUNK = 2000


#: A waiting long poll: the device and the spec version it holds.
Waiting = tuple[str, int]


def moved(engine: Engine, key_cache: KeyCache, waiting: set[Waiting]) -> set[Waiting]:
    """Of the long polls that wait, as (device, the spec version it holds), those
    whose spec may have moved: the device is gone, no longer enrolled or at
    another version, the server has no keys, or its spec as rendered now is
    not the one its row records.  A few statements for all of them, each
    distinct fleet and release rendered once: a change wakes only the polls
    it concerns, instead of each waiting poll looking again by itself."""
    names = sorted({name for name, _ in waiting})
    rows: dict[str, Any] = {}
    hashes: dict[tuple[Any, ...], str | None] = {}
    moving: set[str] = set()
    with engine.connect() as connection:
        for start in range(0, len(names), MOVED_CHUNK):
            chunk = names[start : start + MOVED_CHUNK]
            for row in connection.execute(_WAITING, {"b_names": chunk}):
                rows[row[0]] = row
        fleets = {row[4] for row in rows.values() if row[4] is not None}
        specs: dict[str, Any] = {}
        for fleet_name, fleet_spec in connection.execute(_FLEETS, {"b_fleets": sorted(fleets)}):
            specs[fleet_name] = fleet_spec
        for name, row in rows.items():
            state, _, spec_hash, fleet, image, digest, released, key_stamp = row[1:]
            key = (fleet, image, digest, released, int(key_stamp))
            if key not in hashes:
                found = key_cache.get(connection, int(key_stamp))
                spec = _spec(fleet, specs.get(fleet), image, digest, released)
                hashes[key] = None if found is None else render.spec_hash(spec, found)
            if state != "enrolled" or hashes[key] != spec_hash:
                moving.add(name)  # (no keys: no hash, and the general path says so)
    return {
        (name, known)
        for name, known in waiting
        if name not in rows or name in moving or rows[name][2] != known
    }


def change_stamp(engine: Engine) -> tuple[Any, ...]:
    """A value that differs whenever a spec may have changed since it was read
    (in any process on the database): long polls look again when it moves."""
    with engine.connect() as connection:
        return tuple(connection.execute(_STAMP).one())


def report(
    engine: Engine,
    headers: dict[str, str],
    target: str,
    body: bytes,
    status_of: Callable[[bytes], dict[str, Any]],
) -> bool | None:
    """Record a device's status (*status_of*: its body validated, once the
    request's signature holds): whether it is asked to rotate its key, or None
    when its rollout is to be reconciled (the general path records it then)."""
    rotate: bool | None = run(engine, KeyCache(), report_steps(headers, target, body, status_of))
    return rotate


def report_steps(
    headers: dict[str, str],
    target: str,
    body: bytes,
    status_of: Callable[[bytes], dict[str, Any]],
) -> Steps:
    name, stamp, signature = auth.signed_by(headers)
    row = yield Query(_REPORT, {"b_name": name})
    if row is None:
        raise FleetAuthError(f"device {name!r} is not enrolled")
    state, public_pem, not_after, last_ms, rotation, in_flight = row
    auth.check_signature(
        name,
        state,
        not_after,
        public_pem,
        wire.request_message("PUT", target, stamp, body),
        signature,
        stamp,
    )
    if stamp <= last_ms:
        raise auth.replayed(name)
    status = status_of(body)
    if in_flight is not None:
        return None
    written = yield Query(
        _WRITE,
        {
            "b_name": name,
            "b_key": public_pem,
            "b_stamp": stamp,
            "b_status": status,
            "b_now": utcnow(),
        },
        rowcount=True,
    )
    if written != 1:
        raise auth.replayed(name)
    return bool(rotation)
