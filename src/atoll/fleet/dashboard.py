"""The dashboard: server-rendered pages under ``/ui`` (Jinja2 templates in
``templates/``, a few lines of plain JavaScript, no build step).

Authentication is the API's: an operator token, here given once in a log-in
form and kept in a cookie (``atoll_fleet_token``: HttpOnly, SameSite=Strict,
path ``/ui``, Secure when the page was served over HTTPS).  The token's role
decides as it does for the API: a viewer sees every page, pausing or resuming
a rollout needs an operator.

Every POST that changes something is guarded twice against cross-site
requests: the cookie is SameSite=Strict, and the form must carry the CSRF
token of the session (an HMAC of the operator token, so no server state), and
a POST whose ``Origin`` names another host is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from atoll import errors
from atoll.fleet import auth, models
from atoll.fleet import db as tables
from atoll.fleet.db import transaction
from atoll.timeutil import human_time

COOKIE = "atoll_fleet_token"
PREFIX = "/ui"
#: The longest form body read (a log-in token or a pause reason).
MAX_FORM = 8192
#: How often list pages reload themselves, in seconds.
REFRESH_SECONDS = 5

RolloutView = Callable[[Session, tables.Rollout], models.Rollout]
RolloutAction = Callable[[str, str, str, str], models.Rollout]

_templates = Environment(
    loader=PackageLoader("atoll.fleet", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def csrf_token(secret: str) -> str:
    """The CSRF token of the session whose operator token is *secret*."""
    return hmac.new(secret.encode(), b"atoll fleet dashboard csrf", hashlib.sha256).hexdigest()


def _ago(when: datetime.datetime | None) -> str:
    if when is None:
        return "never"
    seconds = int((tables.utcnow() - when).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return human_time(when)


def _short(digest: str | None) -> str:
    if not digest:
        return "-"
    algorithm, _, value = digest.rpartition("@")[2].partition(":")
    return f"{algorithm}:{value[:12]}" if value else digest


def _progress(rollout: models.Rollout) -> tuple[int, int, int]:
    """(devices succeeded, devices, percent) of *rollout*."""
    states = [member.state for batch in rollout.batches for member in batch.devices]
    done = states.count("succeeded")
    return done, len(states), round(100 * done / len(states)) if states else 0


_templates.filters["ago"] = _ago
_templates.filters["when"] = lambda when: human_time(when, seconds=True)
_templates.globals["progress"] = _progress
_templates.filters["short"] = _short


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(refresh=REFRESH_SECONDS, **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        raise errors.FleetSpecError(f"the form is larger than {MAX_FORM} bytes")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin on every cross-site POST; its absence is a same-site form.
        return origin is None
    return origin.partition("://")[2] == request.headers.get("host", "")


def mount(
    app: FastAPI,
    factory: sessionmaker[Session],
    *,
    rollout_view: RolloutView,
    rollout_action: RolloutAction,
) -> None:
    """Add the dashboard's routes to *app*."""

    @contextmanager
    def tx() -> Iterator[Session]:
        with transaction(factory) as session:
            yield session

    def who(request: Request, need: models.Role) -> tuple[str, str]:
        """(actor, CSRF token) of the session's operator; FleetAuthError without one."""
        secret = request.cookies.get(COOKIE, "")
        with tx() as session:
            actor = auth.operator(session, f"Bearer {secret}", need)
        return actor, csrf_token(secret)

    def to_login() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/login", status_code=303)

    def view(
        request: Request, template: str, load: Callable[[Session], dict[str, Any]]
    ) -> Response:
        try:
            actor, csrf = who(request, models.Role.VIEWER)
            with tx() as session:
                context = load(session)
        except errors.FleetAuthError:
            return to_login()
        except errors.FleetNotFoundError as exc:
            return _page("error.html", 404, actor="", message=exc.message)
        return _page(template, actor=actor, csrf=csrf, **context)

    # -- logging in and out ----------------------------------------------------

    @app.get(f"{PREFIX}/login", include_in_schema=False)
    def login_page() -> Response:
        return _page("login.html", actor="", error="")

    @app.post(f"{PREFIX}/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return _page("error.html", 403, actor="", message="a log-in from another site")
        secret = (await _form(request)).get("token", "").strip()

        def check() -> str:
            with tx() as session:
                return auth.operator(session, f"Bearer {secret}", models.Role.VIEWER)

        try:
            await run_in_threadpool(check)
        except errors.FleetAuthError as exc:
            return _page("login.html", 401, actor="", error=exc.message)
        answer = RedirectResponse(f"{PREFIX}/", status_code=303)
        answer.set_cookie(
            COOKIE,
            secret,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @app.post(f"{PREFIX}/logout", include_in_schema=False)
    async def logout() -> Response:
        answer = to_login()
        answer.delete_cookie(COOKIE, path=PREFIX)
        return answer

    # -- pages -----------------------------------------------------------------

    @app.get(f"{PREFIX}/", include_in_schema=False)
    def fleets_page(request: Request) -> Response:
        def load(session: Session) -> dict[str, Any]:
            counts = dict(
                session.execute(
                    select(tables.Device.fleet, func.count()).group_by(tables.Device.fleet)
                ).all()
            )
            fleets = session.scalars(select(tables.Fleet).order_by(tables.Fleet.name)).all()
            running = dict(
                session.execute(
                    select(tables.Rollout.fleet, tables.Rollout.name).where(
                        tables.Rollout.state.in_(("running", "paused"))
                    )
                ).all()
            )
            return {"fleets": fleets, "counts": counts, "running": running, "page": "fleets"}

        return view(request, "fleets.html", load)

    @app.get(f"{PREFIX}/devices", include_in_schema=False)
    def devices_page(request: Request) -> Response:
        def load(session: Session) -> dict[str, Any]:
            devices = session.scalars(select(tables.Device).order_by(tables.Device.name)).all()
            return {"devices": devices, "page": "devices"}

        return view(request, "devices.html", load)

    @app.get(f"{PREFIX}/rollouts", include_in_schema=False)
    def rollouts_page(request: Request) -> Response:
        def load(session: Session) -> dict[str, Any]:
            rows = session.scalars(
                select(tables.Rollout).order_by(tables.Rollout.created_at.desc())
            ).all()
            return {"rollouts": [rollout_view(session, r) for r in rows], "page": "rollouts"}

        return view(request, "rollouts.html", load)

    @app.get(f"{PREFIX}/rollouts/{{name}}", include_in_schema=False)
    def rollout_page(request: Request, name: str) -> Response:
        def load(session: Session) -> dict[str, Any]:
            row = session.get(tables.Rollout, name)
            if row is None:
                raise errors.FleetNotFoundError(f"rollout {name!r} does not exist")
            return {"rollout": rollout_view(session, row), "page": "rollouts"}

        return view(request, "rollout.html", load)

    @app.get(f"{PREFIX}/events", include_in_schema=False)
    def events_page(request: Request) -> Response:
        def load(session: Session) -> dict[str, Any]:
            rows = session.scalars(
                select(tables.Event).order_by(tables.Event.id.desc()).limit(200)
            ).all()
            return {"events": rows, "page": "events"}

        return view(request, "events.html", load)

    # -- actions ---------------------------------------------------------------

    async def rollout_post(request: Request, name: str, action: str) -> Response:
        form = await _form(request)
        try:
            actor, csrf = await run_in_threadpool(who, request, models.Role.VIEWER)
        except errors.FleetAuthError:
            return to_login()
        if not _same_origin(request) or not hmac.compare_digest(form.get("csrf", ""), csrf):
            return _page("error.html", 403, actor=actor, message="the form is not this session's")
        try:
            actor, _ = await run_in_threadpool(who, request, models.Role.OPERATOR)
            await run_in_threadpool(
                rollout_action, name, actor, action, form.get("reason", "").strip()[:1024]
            )
        except errors.FleetRoleError as exc:
            return _page("error.html", 403, actor=actor, message=exc.message)
        except errors.FleetNotFoundError as exc:
            return _page("error.html", 404, actor=actor, message=exc.message)
        except errors.FleetConflictError as exc:
            return _page("error.html", 409, actor=actor, message=exc.message)
        return RedirectResponse(f"{PREFIX}/rollouts/{name}", status_code=303)

    @app.post(f"{PREFIX}/rollouts/{{name}}/pause", include_in_schema=False)
    async def pause(request: Request, name: str) -> Response:
        return await rollout_post(request, name, "pause")

    @app.post(f"{PREFIX}/rollouts/{{name}}/resume", include_in_schema=False)
    async def resume(request: Request, name: str) -> Response:
        return await rollout_post(request, name, "resume")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=303)
