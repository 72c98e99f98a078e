"""The fleet database: tables, engines and transactions.

The schema is created and changed only by the Alembic migrations beside this
module (``atoll fleet db upgrade``); :data:`SCHEMA_HEAD` is the revision this
code needs.  Every API call runs in one transaction (:func:`transaction`):
it commits whole or not at all.

::

    devices              name, labels, fleet (the one its labels select), public key,
                         certificate, state, specVersion/specHash (the last rendered
                         spec), status, keyRotation (asked to rotate its key; 0003)
    enrollment_requests  name, public key, labels, state (pending/approved/denied)
    enrollment_tokens    sha256 of the secret, one-time or not, expiry, labels
    operator_tokens      sha256 of the secret, role (viewer/operator/admin)
    fleets               name, selector, template (JSON), autoApprove
    channels             name -> image@digest
    rollouts             name, fleet, target digest, batches, thresholds, state
    rollout_devices      rollout, device, batch, state, attempts, retryAt (0002)
    events               who did what, when (every mutation)
    server_keys          the CA and the spec-signing keys (PEM; the CA's private key
                         is empty when it is kept in a file: ``--ca-key``)
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from atoll.errors import FleetDatabaseError

#: The Alembic revision this code reads and writes.
SCHEMA_HEAD = "0003"


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class UtcDateTime(TypeDecorator[datetime.datetime]):
    """A time with its zone; SQLite gives times back without one, they are UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Any
    ) -> datetime.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The fleet whose selector picks it (kept when labels or fleets change).
    fleet: Mapped[str | None] = mapped_column(String(253), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(20), default="enrolled")
    public_key: Mapped[str] = mapped_column(Text)
    certificate: Mapped[str] = mapped_column(Text)
    cert_not_after: Mapped[datetime.datetime] = mapped_column(UtcDateTime())
    spec_version: Mapped[int] = mapped_column(Integer, default=0)
    spec_hash: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_at: Mapped[datetime.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_request_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    #: An operator asked the device to replace its key (cleared when it has).
    key_rotation: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class EnrollmentRequest(Base):
    __tablename__ = "enrollment_requests"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    token_id: Mapped[int | None] = mapped_column(ForeignKey("enrollment_tokens.id"), nullable=True)
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    one_time: Mapped[bool] = mapped_column(Boolean, default=True)
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(253))


class OperatorToken(Base):
    __tablename__ = "operator_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Fleet(Base):
    __tablename__ = "fleets"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Channel(Base):
    __tablename__ = "channels"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    image: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Rollout(Base):
    __tablename__ = "rollouts"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(253))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    target: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), default="running")
    reason: Mapped[str] = mapped_column(Text, default="")
    current_batch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"
    rollout: Mapped[str] = mapped_column(
        ForeignKey("rollouts.name", ondelete="CASCADE"), primary_key=True
    )
    device: Mapped[str] = mapped_column(String(253), primary_key=True)
    batch: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default="waiting")
    reason: Mapped[str] = mapped_column(Text, default="")
    released_at: Mapped[datetime.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    #: Failed attempts retried so far, and when the next one starts (state "retrying").
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_at: Mapped[datetime.datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(253))
    action: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(253))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ServerKey(Base):
    __tablename__ = "server_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    purpose: Mapped[str] = mapped_column(String(20))
    private_pem: Mapped[str] = mapped_column(Text)
    certificate: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime(), default=utcnow)


def open_engine(url: str, *, agents: bool = False) -> Engine:
    """An engine for *url* (``sqlite:///PATH`` or ``postgresql://…``, served by psycopg).

    *agents*: the engine of the agents' frequent requests (:mod:`atoll.fleet.agentpath`),
    one statement each: autocommit, and no ping before each use (a connection the
    database dropped fails one request, and the pool is renewed then)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    elif not url.startswith(("sqlite://", "postgresql+psycopg://")):
        raise FleetDatabaseError(
            f"database {url!r}: not a sqlite:/// or postgresql:// URL",
            hint="e.g. --db sqlite:////var/lib/atoll-fleet/fleet.db",
        )
    # PostgreSQL: as many connections as the threads that serve requests (40).
    pool: dict[str, Any] = (
        {"pool_size": 20, "max_overflow": 20} if url.startswith("postgresql") else {}
    )
    if agents:
        # One short statement per request: half the general pool keeps them flowing.
        pool = {k: v // 2 for k, v in pool.items()} | {"isolation_level": "AUTOCOMMIT"}
    try:
        engine = create_engine(url, pool_pre_ping=not agents, **pool)
    except Exception as exc:
        raise FleetDatabaseError(f"database {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL lets pollers read while one writer commits; the timeout waits for the writer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session in one transaction: committed when the block ends, rolled
    back when it raises."""
    with factory() as session, session.begin():
        yield session
