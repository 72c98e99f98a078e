"""Schema migrations of the fleet database (Alembic, scripts in ``migrations/``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from atoll.errors import FleetDatabaseError
from atoll.fleet.db import SCHEMA_HEAD

_SCRIPTS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to :data:`SCHEMA_HEAD`; (revision before, revision after)."""
    try:
        before = current_revision(engine)
        with engine.begin() as connection:
            config = _config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise FleetDatabaseError(f"cannot migrate the fleet database: {_first_line(exc)}") from None
    return before, SCHEMA_HEAD


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise FleetDatabaseError(f"cannot open the fleet database: {_first_line(exc)}") from None


def require_head(engine: Engine) -> None:
    revision = current_revision(engine)
    if revision != SCHEMA_HEAD:
        raise FleetDatabaseError(
            f"the fleet database is at schema {revision or 'none'}, this atoll needs {SCHEMA_HEAD}",
            hint="run atoll fleet db upgrade --db URL",
        )


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
