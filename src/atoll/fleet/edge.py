"""The fleet server's outermost layer: every answer measured and logged, and
request bodies over :data:`MAX_BODY` refused before anything reads them; and
the one shape of an error answer (``{"error": "one line"}``) with the status
code of each error."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError

from atoll import errors
from atoll.fleet.metrics import Metrics

access_log = logging.getLogger("atoll.fleet.access")

#: The largest request body accepted.
MAX_BODY = 1 << 20


#: The status code of each error; another :class:`~atoll.errors.AtollError` is a 400.
STATUS = {
    errors.FleetAuthError: 401,
    errors.FleetRoleError: 403,
    errors.FleetNotFoundError: 404,
    errors.FleetConflictError: 409,
    errors.FleetSpecError: 422,
    errors.SpecTrustError: 422,
    errors.EnrollmentError: 403,
    errors.FleetUnavailableError: 503,
    errors.FleetDatabaseError: 503,
    errors.FleetKeyError: 503,
}


def problem(status: int, message: str) -> JSONResponse:
    """An error answer: ``{"error": message}`` with *status*."""
    return JSONResponse({"error": message}, status_code=status)


def error_answer(exc: errors.AtollError) -> JSONResponse:
    return problem(STATUS.get(type(exc), 400), exc.message)


def database_answer(exc: DBAPIError) -> JSONResponse:
    if isinstance(exc, IntegrityError):
        return problem(409, "the change conflicts with another one; try again")
    return problem(503, "the fleet database is unavailable; try again later")


class Edge:
    """The outermost layer (plain ASGI, no per-request task): refuses a body
    over :data:`MAX_BODY` from its Content-Length, and measures and logs every
    answer."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            refusal = problem(413, f"the request body is larger than {MAX_BODY} bytes")
            await refusal(scope, receive, send)
            self._record(scope, 413, time.perf_counter() - start)
            return
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Any, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.observe(scope["method"], route, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %d",
                scope["method"],
                route,
                status,
                extra={
                    "fields": {
                        "method": scope["method"],
                        "route": route,
                        "path": scope["path"],
                        "status": status,
                        "durationMs": round(seconds * 1000, 3),
                    }
                },
            )
