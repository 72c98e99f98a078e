"""The fleet server: its API, database, certificate authority and rollouts.

Host-only: it imports FastAPI, SQLAlchemy and Alembic at the top of its
modules.  The device side is :mod:`atoll.agent`.
"""
