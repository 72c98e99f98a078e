"""Running the fleet server: the database, then uvicorn on the API."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import FrameType

from sqlalchemy.engine import Engine

from atoll.fleet import auth, keys, migrate
from atoll.fleet.app import create_app
from atoll.fleet.db import open_engine, session_factory, transaction
from atoll.fleet.models import Role

#: Seconds the requests under way get to finish when the server stops; then
#: they are cancelled.  Waiting long polls are answered at once (unchanged).
SHUTDOWN_GRACE = 30


def upgrade_database(url: str, ca_key: Path | None = None) -> dict[str, object]:
    """Migrate the database at *url* to the newest schema and make the server's
    keys; with *ca_key*, the CA's private key is kept in that file (moved there
    from the database if it is in it)."""
    engine = open_engine(url)
    try:
        before, after = migrate.upgrade(engine)
        with transaction(session_factory(engine)) as session:
            made = keys.ensure_keys(session, ca_key)
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


def ready_engine(url: str, ca_key: Path | None = None) -> Engine:
    """An engine on a database at this atoll's schema whose CA key can be read
    (from the database, or from *ca_key*)."""
    engine = open_engine(url)
    try:
        migrate.require_head(engine)
        with transaction(session_factory(engine)) as session:
            found = keys.load_keys(session, ca_key)
        if found is not None:
            found.ca_key  # noqa: B018 -- refused now rather than at the first approval
    except BaseException:
        engine.dispose()
        raise
    return engine


def serve(
    url: str,
    host: str,
    port: int,
    *,
    spec_lifetime: datetime.timedelta,
    log_level: str = "warning",
    json_logs: bool = False,
    ca_key: Path | None = None,
) -> None:
    """Serve the API until SIGINT or SIGTERM; uvicorn finishes the requests under
    way first (for up to :data:`SHUTDOWN_GRACE` seconds), the agents' waiting
    long polls answered at once.  *json_logs*: every record, one line per
    request included, as JSON."""
    import logging

    import uvicorn

    from atoll.fleet.logs import log_as_json

    engine = ready_engine(url, ca_key)
    app = create_app(session_factory(engine), spec_lifetime=spec_lifetime, ca_key=ca_key)
    if json_logs:
        log_level = "debug" if log_level == "debug" else "info"
        log_as_json(logging.getLevelName(log_level.upper()))
    notifier = app.state.spec_notifier

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # The agents' waiting long polls are answered now, not at the end of
            # their waits: a shutdown takes a moment, not MAX_WAIT.
            notifier.close()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    server = Server(config)
    try:
        server.run()
    finally:
        engine.dispose()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: it logged why (the address is taken, say)
