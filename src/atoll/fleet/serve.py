"""Running the fleet server: the database, then uvicorn on the API."""

from __future__ import annotations

import datetime

from sqlalchemy.engine import Engine

from atoll.fleet import auth, keys, migrate
from atoll.fleet.app import create_app
from atoll.fleet.db import open_engine, session_factory, transaction
from atoll.fleet.models import Role


def upgrade_database(url: str) -> dict[str, object]:
    """Migrate the database at *url* to the newest schema and make the server's keys."""
    engine = open_engine(url)
    try:
        before, after = migrate.upgrade(engine)
        with transaction(session_factory(engine)) as session:
            made = keys.ensure_keys(session)
    finally:
        engine.dispose()
    return {"from": before, "to": after, "keysCreated": made}


def create_token(url: str, name: str, role: Role) -> str:
    """An operator token written straight into the database (the first admin's)."""
    engine = open_engine(url)
    try:
        migrate.require_head(engine)
        with transaction(session_factory(engine)) as session:
            return auth.create_operator_token(session, name, role)
    finally:
        engine.dispose()


def rotate_keys(url: str) -> str:
    """One step of a rotation of the spec-signing key (see keys.rotate_spec_key)."""
    engine = open_engine(url)
    try:
        migrate.require_head(engine)
        with transaction(session_factory(engine)) as session:
            return keys.rotate_spec_key(session)
    finally:
        engine.dispose()


def ready_engine(url: str) -> Engine:
    engine = open_engine(url)
    migrate.require_head(engine)
    return engine


def serve(
    url: str,
    host: str,
    port: int,
    *,
    spec_lifetime: datetime.timedelta,
    log_level: str = "warning",
    json_logs: bool = False,
) -> None:
    """Serve the API until SIGINT or SIGTERM; uvicorn finishes the requests under
    way first.  *json_logs*: every record, one line per request included, as JSON."""
    import logging

    import uvicorn

    from atoll.fleet.logs import log_as_json

    engine = ready_engine(url)
    app = create_app(session_factory(engine), spec_lifetime=spec_lifetime)
    if json_logs:
        log_level = "debug" if log_level == "debug" else "info"
        log_as_json(logging.getLevelName(log_level.upper()))
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG,
        )
    finally:
        engine.dispose()
