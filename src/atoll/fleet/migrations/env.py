"""Alembic's environment for the fleet database: run by :mod:`atoll.fleet.migrate`
with the connection it opened, online only (no SQL scripts)."""

from __future__ import annotations

from alembic import context

from atoll.fleet.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
