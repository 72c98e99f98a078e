"""Who is asking: operators by bearer token (with a role), devices by signed
request (:mod:`atoll.agent.wire`).

Tokens are random secrets shown once; the database keeps only their sha256.
Roles nest: a viewer reads, an operator also changes fleets, channels,
devices, enrollment and rollouts, an admin also makes operator tokens.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import secrets
import time
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from atoll.agent import wire
from atoll.errors import FleetAuthError, FleetRoleError
from atoll.fleet.db import Device, OperatorToken, utcnow
from atoll.fleet.models import Role

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
TOKEN_PREFIX = "atf_"


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_operator_token(session: Session, name: str, role: Role) -> str:
    if session.scalars(select(OperatorToken).where(OperatorToken.name == name)).first():
        from atoll.errors import FleetConflictError

        raise FleetConflictError(f"an operator token named {name!r} exists already")
    secret = new_secret()
    session.add(OperatorToken(name=name, secret_sha256=digest(secret), role=role.value))
    return secret


def operator(session: Session, authorization: str | None, need: Role) -> str:
    """The name of the operator whose bearer token is in *authorization*, if
    the token's role is at least *need*."""
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise FleetAuthError("no operator token: send Authorization: Bearer TOKEN")
    token = session.scalars(
        select(OperatorToken).where(OperatorToken.secret_sha256 == digest(secret.strip()))
    ).first()
    if token is None:
        raise FleetAuthError("the operator token is not known to this server")
    if RANK[Role(token.role)] < RANK[need]:
        raise FleetRoleError(f"token {token.name!r} is a {token.role}; this needs {need.value}")
    return f"operator:{token.name}"


def device(
    session: Session,
    headers: dict[str, str],
    method: str,
    target: str,
    body: bytes,
    *,
    now_ms: int | None = None,
) -> Device:
    """The device that signed this request.  For a request that changes
    something (not GET) the device's row is locked and its last request time
    moved on, so that the same request sent again is refused; a GET only reads,
    and is checked for its signature and its time alone."""
    name, stamp, signature = signed_by(headers)
    changes = method.upper() != "GET"
    found = session.get(Device, name, with_for_update=changes)
    if found is None:
        raise FleetAuthError(f"device {name!r} is not enrolled")
    check_signature(
        name,
        found.state,
        found.cert_not_after,
        found.public_key,
        wire.request_message(method, target, stamp, body),
        signature,
        stamp,
        now_ms=now_ms,
    )
    if changes:
        if stamp <= found.last_request_ms:
            raise replayed(name)
        found.last_request_ms = stamp
        found.last_seen = utcnow()
    return found


def signed_by(headers: dict[str, str]) -> tuple[str, int, str]:
    """(device name, timestamp in ms, signature) from a signed request's headers."""
    name = headers.get(wire.HEADER_DEVICE.lower())
    stamp = headers.get(wire.HEADER_TIMESTAMP.lower(), "")
    signature = headers.get(wire.HEADER_SIGNATURE.lower())
    if not name or not signature or not stamp.isdigit():
        raise FleetAuthError("the request is not signed by a device")
    return name, int(stamp), signature


def check_signature(
    name: str,
    state: str,
    cert_not_after: datetime.datetime,
    public_pem: str,
    message: bytes,
    signature: str,
    stamp: int,
    *,
    now_ms: int | None = None,
) -> None:
    """Refuse a request of device *name* (its row's state, certificate expiry
    and key) unless *signature* over *message* is its key's and *stamp* is
    within :data:`~atoll.agent.wire.MAX_SKEW_MS` of now."""
    if state != "enrolled":
        raise FleetAuthError(f"device {name!r} is {state}: refused")
    if cert_not_after <= utcnow():
        raise FleetAuthError(f"device {name!r}: its certificate expired; enroll it again")
    if not wire.verify(device_key(public_pem), message, signature):
        raise FleetAuthError(f"the signature is not device {name!r}'s")
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if abs(now_ms - stamp) > wire.MAX_SKEW_MS:
        raise FleetAuthError(
            f"device {name!r}: the request's time is more than "
            f"{wire.MAX_SKEW_MS // 1000} s from the server's; check the device's clock"
        )


def replayed(name: str) -> FleetAuthError:
    return FleetAuthError(f"device {name!r}: a replayed request (its time is not newer)")


@functools.lru_cache(maxsize=1 << 16)
def device_key(public_pem: str) -> ec.EllipticCurvePublicKey:
    """A device's public key, parsed once per process (every request needs it;
    the PEM is the database's, so a rotated key is another entry)."""
    return wire.load_public_key(public_pem)
