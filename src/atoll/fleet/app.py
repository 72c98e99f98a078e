"""The fleet server's HTTP API (FastAPI), mounted under ``/api/v1``.

Every call runs in one database transaction (:func:`atoll.fleet.db.transaction`)
and every mutation writes an :class:`~atoll.fleet.db.Event` in that same
transaction, so the audit trail never misses a change nor records one that
did not happen.  Errors are ``{"error": "one line"}`` with the status code:
401 unknown credentials, 403 too small a role, 404, 409 conflicting state,
413 too large a body, 422 invalid input, 503 the database is down.

The API keeps no state of its own between requests: any number of replicas
can serve one database behind an HTTP load balancer.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from atoll import errors
from atoll.agent import wire
from atoll.fleet import agentpath, auth, dashboard, keys, models, render, rollouts
from atoll.fleet import db as tables
from atoll.fleet.agentroutes import AgentPaths, AgentRoutes, SpecNotifier
from atoll.fleet.db import transaction, utcnow
from atoll.fleet.edge import Edge, database_answer, error_answer, problem
from atoll.fleet.metrics import Metrics
from atoll.fleet.reconciler import RECONCILE_EVERY, Reconciler
from atoll.fleet.selector import parse_selector

log = logging.getLogger(__name__)
#: How often each process reconciles the running rollouts, in seconds.

#: The longest a spec poll waits for a change, and how often it looks.
MAX_WAIT = 60.0
POLL_STEP = 0.5

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T", bound=tables.Base)


def _describe(exc: RequestValidationError | ValidationError) -> str:
    problems = exc.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def _operator(need: models.Role) -> Callable[..., str]:
    def check(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
        with transaction(request.app.state.factory) as session:
            return auth.operator(session, authorization, need)

    return check


Viewer = Annotated[str, Depends(_operator(models.Role.VIEWER))]
Operator = Annotated[str, Depends(_operator(models.Role.OPERATOR))]
Admin = Annotated[str, Depends(_operator(models.Role.ADMIN))]


def create_app(
    factory: sessionmaker[Session],
    *,
    spec_lifetime: datetime.timedelta = datetime.timedelta(days=7),
    reconcile_every: float = RECONCILE_EVERY,
    ca_key: Path | None = None,
    agent_fast_path: bool = True,
) -> FastAPI:
    """The API on the database *factory* opens; *ca_key*: the file holding the
    CA's private key, when the database does not (atoll.fleet.keys);
    *agent_fast_path*: the agents' two routes answered before FastAPI
    (:mod:`atoll.fleet.agentroutes`), else by the FastAPI routes below."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(reconciler.run())]
        if agent_fast_path:
            tasks.append(asyncio.create_task(notifier.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            engine.dispose()

    app = FastAPI(
        title="atoll fleet", version="1", docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.factory = factory
    reconciler = Reconciler(factory, reconcile_every)
    engine = tables.open_engine(
        factory.kw["bind"].url.render_as_string(hide_password=False), agents=True
    )
    key_cache = agentpath.KeyCache()
    notifier = SpecNotifier(engine, key_cache)
    #: Told when the server stops (atoll.fleet.serve): waiting long polls end then.
    app.state.spec_notifier = notifier
    measured = Metrics()

    @app.exception_handler(errors.AtollError)
    async def _atoll_error(_: Request, exc: errors.AtollError) -> JSONResponse:
        return error_answer(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, _describe(exc))

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database_down(_: Request, exc: DBAPIError) -> JSONResponse:
        return database_answer(exc)

    @contextmanager
    def tx() -> Iterator[Session]:
        with transaction(factory) as session:
            yield session

    def found(session: Session, table: type[T], name: str, kind: str, *, lock: bool = False) -> T:
        row = session.get(table, name, with_for_update=lock)
        if row is None:
            raise errors.FleetNotFoundError(f"{kind} {name!r} does not exist")
        return row

    def server_keys(session: Session) -> keys.ServerKeys:
        found = keys.load_keys(session, ca_key)
        if found is None:
            raise errors.FleetDatabaseError(
                "the fleet database has no keys: run atoll fleet db upgrade"
            )
        return found

    def event(
        session: Session, actor: str, action: str, kind: str, name: str, **detail: Any
    ) -> None:
        session.add(tables.Event(actor=actor, action=action, kind=kind, name=name, detail=detail))

    def parse(model: type[M], body: bytes) -> M:
        try:
            return model.model_validate_json(body or b"null")
        except ValidationError as exc:
            raise errors.FleetSpecError(_describe(exc)) from None

    # -- health ---------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        with tx() as session:
            devices = session.execute(
                select(tables.Device.state, func.count()).group_by(tables.Device.state)
            ).all()
            members = session.execute(
                select(tables.RolloutDevice.rollout, tables.RolloutDevice.state, func.count())
                .join(tables.Rollout, tables.Rollout.name == tables.RolloutDevice.rollout)
                .where(tables.Rollout.state.in_(render.ACTIVE_ROLLOUT))
                .group_by(tables.RolloutDevice.rollout, tables.RolloutDevice.state)
            ).all()
        gauges: dict[str, dict[tuple[tuple[str, str], ...], int]] = {
            "atoll_fleet_devices": {(("state", state),): count for state, count in devices},
            "atoll_fleet_rollout_devices": {
                (("rollout", rollout), ("state", state)): count for rollout, state, count in members
            },
        }
        return Response(measured.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        with tx() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ready"}

    # -- fleets ---------------------------------------------------------------

    def fleet_out(session: Session, fleet: tables.Fleet) -> models.Fleet:
        count = session.scalar(
            select(func.count()).select_from(tables.Device).where(tables.Device.fleet == fleet.name)
        )
        return models.Fleet(
            name=fleet.name,
            spec=fleet.spec,
            generation=fleet.generation,
            devices=count or 0,
            created_at=fleet.created_at,
            updated_at=fleet.updated_at,
        )

    @app.get("/api/v1/fleets", response_model=list[models.Fleet], response_model_by_alias=True)
    def list_fleets(_: Viewer) -> list[models.Fleet]:
        with tx() as session:
            rows = session.scalars(select(tables.Fleet).order_by(tables.Fleet.name))
            return [fleet_out(session, f) for f in rows]

    @app.get("/api/v1/fleets/{name}", response_model=models.Fleet)
    def get_fleet(name: str, _: Viewer) -> models.Fleet:
        with tx() as session:
            fleet = found(session, tables.Fleet, name, "fleet")
            return fleet_out(session, fleet)

    @app.put("/api/v1/fleets/{name}", response_model=models.Fleet)
    def put_fleet(name: models.Name, body: models.FleetSpec, actor: Operator) -> models.Fleet:
        spec = body.model_dump(by_alias=True, exclude_none=True)
        with tx() as session:
            fleet = session.get(tables.Fleet, name, with_for_update=True)
            if fleet is None:
                fleet = tables.Fleet(name=name, spec=spec, generation=1)
                session.add(fleet)
                event(session, actor, "create", "Fleet", name)
            elif fleet.spec != spec:
                fleet.spec, fleet.generation, fleet.updated_at = (
                    spec,
                    fleet.generation + 1,
                    utcnow(),
                )
                event(session, actor, "update", "Fleet", name, generation=fleet.generation)
            session.flush()
            render.assign_fleets(session)
            session.flush()
            return fleet_out(session, fleet)

    @app.delete("/api/v1/fleets/{name}", status_code=204)
    def delete_fleet(name: str, actor: Operator) -> Response:
        with tx() as session:
            fleet = found(session, tables.Fleet, name, "fleet")
            session.delete(fleet)
            event(session, actor, "delete", "Fleet", name)
            session.flush()
            render.assign_fleets(session)
        return Response(status_code=204)

    # -- channels -------------------------------------------------------------

    def channel_out(c: tables.Channel) -> models.Channel:
        return models.Channel(name=c.name, image=c.image, digest=c.digest, updated_at=c.updated_at)

    @app.get("/api/v1/channels", response_model=list[models.Channel])
    def list_channels(_: Viewer) -> list[models.Channel]:
        with tx() as session:
            rows = session.scalars(select(tables.Channel).order_by(tables.Channel.name))
            return [channel_out(c) for c in rows]

    @app.get("/api/v1/channels/{name}", response_model=models.Channel)
    def get_channel(name: str, _: Viewer) -> models.Channel:
        with tx() as session:
            channel = found(session, tables.Channel, name, "channel")
            return channel_out(channel)

    @app.put("/api/v1/channels/{name}", response_model=models.Channel)
    def put_channel(name: models.Name, body: models.ChannelSpec, actor: Operator) -> models.Channel:
        with tx() as session:
            channel = session.get(tables.Channel, name, with_for_update=True)
            if channel is None:
                channel = tables.Channel(name=name, image=body.image, digest=body.digest)
                session.add(channel)
                event(session, actor, "create", "Channel", name, digest=body.digest)
            elif (channel.image, channel.digest) != (body.image, body.digest):
                before = channel.digest
                channel.image, channel.digest, channel.updated_at = (
                    body.image,
                    body.digest,
                    utcnow(),
                )
                event(session, actor, "promote", "Channel", name, before=before, after=body.digest)
            session.flush()
            return channel_out(channel)

    @app.delete("/api/v1/channels/{name}", status_code=204)
    def delete_channel(name: str, actor: Operator) -> Response:
        with tx() as session:
            channel = found(session, tables.Channel, name, "channel")
            session.delete(channel)
            event(session, actor, "delete", "Channel", name)
        return Response(status_code=204)

    # -- devices --------------------------------------------------------------

    def device_out(session: Session, d: tables.Device) -> models.Device:
        return models.Device(
            name=d.name,
            labels=d.labels,
            state=d.state,
            fleet=d.fleet,
            spec_version=d.spec_version,
            status=d.status,
            last_seen=d.last_seen,
            certificate_not_after=d.cert_not_after,
            key_rotation=d.key_rotation,
            created_at=d.created_at,
        )

    @app.get("/api/v1/devices", response_model=list[models.Device])
    def list_devices(_: Viewer, selector: str = "") -> list[models.Device]:
        try:
            wanted = parse_selector(selector)
        except ValueError as exc:
            raise errors.FleetSpecError(f"selector: {exc}") from None
        with tx() as session:
            rows = session.scalars(select(tables.Device).order_by(tables.Device.name))
            return [device_out(session, d) for d in rows if wanted.matches(d.labels)]

    def get_device_row(session: Session, name: str, *, lock: bool = False) -> tables.Device:
        return found(session, tables.Device, name, "device", lock=lock)

    @app.get("/api/v1/devices/{name}", response_model=models.Device)
    def get_device(name: str, _: Viewer) -> models.Device:
        with tx() as session:
            return device_out(session, get_device_row(session, name))

    @app.put("/api/v1/devices/{name}/labels", response_model=models.Device)
    def put_labels(name: str, body: models.DeviceLabels, actor: Operator) -> models.Device:
        with tx() as session:
            device = get_device_row(session, name, lock=True)
            if device.labels != body.labels:
                event(session, actor, "relabel", "Device", name, labels=body.labels)
                device.labels = dict(body.labels)
                render.assign_fleet(session, device)
            return device_out(session, device)

    @app.post("/api/v1/devices/{name}/revoke", response_model=models.Device)
    def revoke_device(name: str, actor: Operator) -> models.Device:
        with tx() as session:
            device = get_device_row(session, name, lock=True)
            if device.state != "revoked":
                device.state = "revoked"
                event(session, actor, "revoke", "Device", name)
            return device_out(session, device)

    @app.post("/api/v1/devices/{name}/rotatekey", response_model=models.Device)
    def request_key_rotation(name: str, actor: Operator) -> models.Device:
        """Ask the device to replace its key at its next status report."""
        with tx() as session:
            device = get_device_row(session, name, lock=True)
            if device.state != "enrolled":
                raise errors.FleetConflictError(f"device {name!r} is {device.state}")
            device.key_rotation = True
            event(session, actor, "request-key-rotation", "Device", name)
            return device_out(session, device)

    @app.delete("/api/v1/devices/{name}", status_code=204)
    def delete_device(name: str, actor: Operator) -> Response:
        with tx() as session:
            device = get_device_row(session, name, lock=True)
            session.delete(device)
            request = session.get(tables.EnrollmentRequest, name)
            if request is not None:
                session.delete(request)
            event(session, actor, "decommission", "Device", name)
        return Response(status_code=204)

    # -- enrollment -----------------------------------------------------------

    @app.post("/api/v1/enrollmenttokens", response_model=models.EnrollmentToken, status_code=201)
    def create_enrollment_token(
        body: models.EnrollmentTokenIn, actor: Operator
    ) -> models.EnrollmentToken:
        secret = auth.new_secret()
        expires = utcnow() + datetime.timedelta(seconds=body.expires_in)
        with tx() as session:
            token = tables.EnrollmentToken(
                secret_sha256=auth.digest(secret),
                one_time=body.one_time,
                labels=dict(body.labels),
                expires_at=expires,
                created_by=actor,
            )
            session.add(token)
            session.flush()
            event(session, actor, "create", "EnrollmentToken", str(token.id), oneTime=body.one_time)
        return models.EnrollmentToken(token=secret, one_time=body.one_time, expires_at=expires)

    def request_out(r: tables.EnrollmentRequest) -> models.EnrollmentRequest:
        return models.EnrollmentRequest(
            name=r.name, labels=r.labels, state=r.state, created_at=r.created_at
        )

    def approve(session: Session, request: tables.EnrollmentRequest, actor: str) -> tables.Device:
        found = server_keys(session)
        public = wire.load_public_key(request.public_key)
        certificate, not_after = keys.issue_certificate(found, request.name, public)
        request.state = "approved"
        device = tables.Device(
            name=request.name,
            labels=dict(request.labels),
            public_key=request.public_key,
            certificate=certificate,
            cert_not_after=not_after,
        )
        render.assign_fleet(session, device)
        session.add(device)
        event(session, actor, "approve", "EnrollmentRequest", request.name)
        return device

    @app.post(
        "/api/v1/enrollmentrequests", response_model=models.EnrollmentRequest, status_code=201
    )
    def create_enrollment_request(
        body: models.EnrollmentRequestIn,
    ) -> models.EnrollmentRequest:
        try:
            wire.load_public_key(body.public_key)
        except errors.SpecTrustError as exc:
            raise errors.FleetSpecError(f"publicKey: {exc.message}") from None
        with tx() as session:
            token = session.scalars(
                select(tables.EnrollmentToken)
                .where(tables.EnrollmentToken.secret_sha256 == auth.digest(body.token))
                .with_for_update()
            ).first()
            if token is None:
                raise errors.FleetAuthError("the enrollment token is not known to this server")
            if token.expires_at <= utcnow():
                raise errors.FleetAuthError("the enrollment token has expired")
            if token.one_time and token.used:
                raise errors.FleetAuthError("the one-time enrollment token was used already")
            taken = session.get(tables.EnrollmentRequest, body.name) is not None
            if taken or session.get(tables.Device, body.name) is not None:
                raise errors.FleetConflictError(f"device name {body.name!r} is taken")
            token.used = True
            labels = {**body.labels, **token.labels}
            request = tables.EnrollmentRequest(
                name=body.name, public_key=body.public_key, labels=labels, token_id=token.id
            )
            session.add(request)
            event(session, f"device:{body.name}", "request", "EnrollmentRequest", body.name)
            fleet = render.fleet_of(session, labels)
            if fleet is not None and fleet.spec.get("autoApprove"):
                approve(session, request, f"fleet:{fleet.name}")
            session.flush()
            return request_out(request)

    @app.get("/api/v1/enrollmentrequests", response_model=list[models.EnrollmentRequest])
    def list_enrollment_requests(_: Viewer) -> list[models.EnrollmentRequest]:
        with tx() as session:
            rows = session.scalars(
                select(tables.EnrollmentRequest).order_by(tables.EnrollmentRequest.name)
            )
            return [request_out(r) for r in rows]

    def decide(name: str, actor: str, state: str) -> models.EnrollmentRequest:
        with tx() as session:
            request = found(
                session, tables.EnrollmentRequest, name, "enrollment request", lock=True
            )
            if request.state != "pending":
                raise errors.FleetConflictError(f"enrollment request {name!r} is {request.state}")
            if state == "approved":
                approve(session, request, actor)
            else:
                request.state = state
                event(session, actor, "deny", "EnrollmentRequest", name)
            session.flush()
            return request_out(request)

    @app.post("/api/v1/enrollmentrequests/{name}/approve", response_model=models.EnrollmentRequest)
    def approve_request(name: str, actor: Operator) -> models.EnrollmentRequest:
        return decide(name, actor, "approved")

    @app.post("/api/v1/enrollmentrequests/{name}/deny", response_model=models.EnrollmentRequest)
    def deny_request(name: str, actor: Operator) -> models.EnrollmentRequest:
        return decide(name, actor, "denied")

    # -- operator tokens and events -------------------------------------------

    @app.post("/api/v1/tokens", response_model=models.OperatorToken, status_code=201)
    def create_token(body: models.OperatorTokenIn, actor: Admin) -> models.OperatorToken:
        with tx() as session:
            secret = auth.create_operator_token(session, body.name, models.Role(body.role))
            event(session, actor, "create", "OperatorToken", body.name, role=body.role)
        return models.OperatorToken(name=body.name, role=body.role, token=secret)

    @app.get("/api/v1/events", response_model=list[models.Event])
    def list_events(
        _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[models.Event]:
        with tx() as session:
            rows = session.scalars(
                select(tables.Event).order_by(tables.Event.id.desc()).limit(limit)
            )
            return [
                models.Event(
                    id=e.id,
                    at=e.at,
                    actor=e.actor,
                    action=e.action,
                    kind=e.kind,
                    name=e.name,
                    detail=e.detail,
                )
                for e in rows
            ]

    # -- rollouts -------------------------------------------------------------

    def rollout_out(session: Session, r: tables.Rollout) -> models.Rollout:
        batches: dict[int, list[models.RolloutDevice]] = {}
        for member in session.scalars(
            select(tables.RolloutDevice)
            .where(tables.RolloutDevice.rollout == r.name)
            .order_by(tables.RolloutDevice.batch, tables.RolloutDevice.device)
        ):
            batches.setdefault(member.batch, []).append(
                models.RolloutDevice(
                    name=member.device,
                    state=member.state,
                    reason=member.reason,
                    attempts=member.attempts,
                )
            )
        return models.Rollout(
            name=r.name,
            spec=r.spec,
            target=r.target,
            state=r.state,
            reason=r.reason,
            current_batch=r.current_batch,
            batches=[models.RolloutBatch(index=i, devices=d) for i, d in sorted(batches.items())],
            created_at=r.created_at,
            updated_at=r.updated_at,
        )

    @app.get("/api/v1/rollouts", response_model=list[models.Rollout])
    def list_rollouts(_: Viewer) -> list[models.Rollout]:
        with tx() as session:
            rows = session.scalars(select(tables.Rollout).order_by(tables.Rollout.created_at))
            return [rollout_out(session, r) for r in rows]

    @app.get("/api/v1/rollouts/{name}", response_model=models.Rollout)
    def get_rollout(name: str, _: Viewer) -> models.Rollout:
        with tx() as session:
            rollout = found(session, tables.Rollout, name, "rollout")
            rollouts.reconcile(session, rollout)
            return rollout_out(session, rollout)

    @app.put("/api/v1/rollouts/{name}", response_model=models.Rollout, status_code=201)
    def start_rollout(
        name: models.Name, body: models.RolloutSpec, actor: Operator
    ) -> models.Rollout:
        with tx() as session:
            rollout = rollouts.start(
                session, name, body.model_dump(by_alias=True, exclude_none=True)
            )
            event(session, actor, "start", "Rollout", name, target=rollout.target)
            return rollout_out(session, rollout)

    def act(name: str, actor: str, action: str, reason: str) -> models.Rollout:
        with tx() as session:
            if action == "pause":
                rollout = rollouts.pause(session, name, reason or f"paused by {actor}")
            elif action == "resume":
                rollout = rollouts.resume(session, name)
            else:
                rollout = rollouts.abort(session, name, reason or f"aborted by {actor}")
            event(session, actor, action, "Rollout", name, reason=reason)
            return rollout_out(session, rollout)

    dashboard.mount(app, factory, rollout_view=rollout_out, rollout_action=act)

    @app.post("/api/v1/rollouts/{name}/pause", response_model=models.Rollout)
    def pause_rollout(name: str, actor: Operator, reason: str = "") -> models.Rollout:
        return act(name, actor, "pause", reason)

    @app.post("/api/v1/rollouts/{name}/resume", response_model=models.Rollout)
    def resume_rollout(name: str, actor: Operator) -> models.Rollout:
        return act(name, actor, "resume", "")

    @app.post("/api/v1/rollouts/{name}/abort", response_model=models.Rollout)
    def abort_rollout(name: str, actor: Operator, reason: str = "") -> models.Rollout:
        return act(name, actor, "abort", reason)

    # -- the agent's side: signed requests ------------------------------------

    async def signed(request: Request) -> tuple[dict[str, str], str, bytes]:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return dict(request.headers), target, body

    def approved(device: tables.Device, found: keys.ServerKeys) -> models.Enrollment:
        return models.Enrollment(
            state="approved",
            certificate=device.certificate,
            ca_certificate=found.ca_pem,
            spec_keys=list(found.spec_public_keys),
        )

    def enrollment_status(headers: dict[str, str], target: str, body: bytes) -> models.Enrollment:
        name = headers.get(wire.HEADER_DEVICE.lower(), "")
        with tx() as session:
            request = session.get(tables.EnrollmentRequest, name)
            if request is None:
                raise errors.FleetAuthError(f"device {name!r} has not asked to enroll")
            if request.state != "approved":
                # Not enrolled yet: the signature is checked against the key it enrolled with.
                stamp = headers.get(wire.HEADER_TIMESTAMP.lower(), "0")
                message = wire.request_message(
                    "GET", target, int(stamp) if stamp.isdigit() else 0, body
                )
                key = wire.load_public_key(request.public_key)
                if not wire.verify(key, message, headers.get(wire.HEADER_SIGNATURE.lower(), "")):
                    raise errors.FleetAuthError(f"the signature is not device {name!r}'s")
                return models.Enrollment(state=request.state)
            device = auth.device(session, headers, "GET", target, body)
            return approved(device, server_keys(session))

    @app.get("/api/v1/agent/enrollment", response_model=models.Enrollment)
    async def agent_enrollment(request: Request) -> models.Enrollment:
        headers, target, body = await signed(request)
        return await run_in_threadpool(enrollment_status, headers, target, body)

    def rotate_key(headers: dict[str, str], target: str, body: bytes) -> models.Enrollment:
        with tx() as session:
            device = auth.device(session, headers, "POST", target, body)
            rotation = parse(models.KeyRotationIn, body)
            try:
                public = wire.load_public_key(rotation.public_key)
            except errors.SpecTrustError as exc:
                raise errors.FleetSpecError(f"publicKey: {exc.message}") from None
            proof = wire.rotation_message(device.name, rotation.public_key)
            if not wire.verify(public, proof, rotation.proof):
                raise errors.FleetSpecError("proof: not the new key's signature")
            if rotation.public_key.strip() == device.public_key.strip():
                raise errors.FleetConflictError("publicKey: the device's current key")
            found = server_keys(session)
            device.certificate, device.cert_not_after = keys.issue_certificate(
                found, device.name, public
            )
            device.public_key = rotation.public_key
            device.key_rotation = False
            event(session, f"device:{device.name}", "rotate-key", "Device", device.name)
            return approved(device, found)

    @app.post("/api/v1/agent/key", response_model=models.Enrollment)
    async def agent_key(request: Request) -> models.Enrollment:
        """The device's new key, certified; its old key is refused from now on."""
        headers, target, body = await signed(request)
        return await run_in_threadpool(rotate_key, headers, target, body)

    def poll_once(
        headers: dict[str, str] | None, name: str, target: str, body: bytes, known: int
    ) -> dict[str, Any] | None:
        with tx() as session:
            if headers is not None:
                device = auth.device(session, headers, "GET", target, body)
            else:
                device = get_device_row(session, name)
                if device.state != "enrolled":
                    raise errors.FleetAuthError(f"device {name!r} is {device.state}: refused")
            found_keys = server_keys(session)
            spec = render.refresh_spec(session, device, found_keys)
            if device.spec_version == known:
                return None
            return render.signed_spec(
                found_keys, device.name, device.spec_version, spec, utcnow(), spec_lifetime
            )

    def first_poll(
        headers: dict[str, str], name: str, target: str, body: bytes, known: int
    ) -> dict[str, Any] | None:
        """The poll's first look: most often the fast path's answer alone."""
        if not body:
            quick = agentpath.poll(
                engine, key_cache, headers, target, known, lifetime=spec_lifetime
            )
            if isinstance(quick, agentpath.Unchanged):
                return None
            if not isinstance(quick, agentpath.Changed):
                return quick
        return poll_once(headers, name, target, body, known)

    @app.get("/api/v1/agent/spec", responses={204: {"description": "unchanged"}})
    async def agent_spec(
        request: Request,
        known_version: Annotated[int, Query(alias="knownVersion", ge=0)] = 0,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
    ) -> Response:
        headers, target, body = await signed(request)
        name = headers.get(wire.HEADER_DEVICE.lower(), "")
        envelope = await run_in_threadpool(first_poll, headers, name, target, body, known_version)
        waited = 0.0
        while envelope is None and waited < wait:
            # The signature was checked once; later looks only read the device's spec.
            await asyncio.sleep(POLL_STEP)
            if await request.is_disconnected():
                break  # a device that went away costs no more reads
            waited += POLL_STEP
            envelope = await run_in_threadpool(poll_once, None, name, target, body, known_version)
        if envelope is None:
            return Response(status_code=204)
        return Response(json.dumps(envelope), media_type="application/json")

    def status_of(body: bytes) -> dict[str, Any]:
        return parse(models.DeviceStatus, body).model_dump(by_alias=True)

    def report(headers: dict[str, str], target: str, body: bytes) -> bool:
        """Record the device's status; whether it is asked to rotate its key."""
        rotate = agentpath.report(engine, headers, target, body, status_of)
        if rotate is not None:
            return rotate
        return reconciled_report(headers, target, body)

    def reconciled_report(headers: dict[str, str], target: str, body: bytes) -> bool:
        with tx() as session:
            # A device of a rollout in flight: its rollout is reconciled with the report.
            device = auth.device(session, headers, "PUT", target, body)
            device.status = status_of(body)
            device.status_at = utcnow()
            session.flush()
            if not rollouts.reconcile_for(session, device):
                reconciler.soon()  # another transaction holds the rollout: see reconciler.py
            return device.key_rotation

    @app.put("/api/v1/agent/status", status_code=204)
    async def agent_status(request: Request) -> Response:
        headers, target, body = await signed(request)
        rotate = await run_in_threadpool(report, headers, target, body)
        return Response(
            status_code=204, headers={wire.HEADER_ROTATION: "requested"} if rotate else None
        )

    # The agents' requests are nearly all of them: their routes are matched first
    # (and answered before FastAPI, by AgentRoutes, unless agent_fast_path is off).
    app.router.routes.sort(key=lambda r: not getattr(r, "path", "").startswith("/api/v1/agent/"))
    if agent_fast_path:
        paths = AgentPaths(
            engine=engine,
            key_cache=key_cache,
            lifetime=spec_lifetime,
            notifier=notifier,
            general_poll=poll_once,
            general_report=reconciled_report,
            status_of=status_of,
            max_wait=MAX_WAIT,
        )
        app.add_middleware(AgentRoutes, paths=paths)
    app.add_middleware(Edge, metrics=measured)  # the outermost: it sees every answer
    return app
