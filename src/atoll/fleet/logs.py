"""Structured logs of the fleet server: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging

from atoll.timeutil import utc_timestamp


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", …}``; a record's ``fields``
    (given with ``extra={"fields": {...}}``) are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": utc_timestamp(record.created, microseconds=True),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_as_json(level: int) -> None:
    """Send atoll's and uvicorn's records to stderr as JSON lines at *level*."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("atoll", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
