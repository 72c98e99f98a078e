"""The request and response bodies of the fleet API (``/api/v1``), as pydantic
models: the JSON Schema at ``/openapi.json`` is generated from them.

Every request model refuses unknown fields and wrong types (strict mode), so a
typo is a 422 naming the field, never a silently ignored setting.  Keys are
camelCase on the wire (docs/cli.md).
"""

from __future__ import annotations

import datetime
import posixpath
import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from atoll.errors import AtollError
from atoll.fleet.selector import parse_selector

NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
#: Quadlet unit kinds a template may carry.
UNIT_SUFFIXES = (".container", ".pod", ".volume", ".network", ".kube", ".image", ".build")

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Digest = Annotated[str, StringConstraints(pattern=DIGEST_PATTERN)]


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Request(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class Response(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} is not 1-63 letters, digits, '.', '_', '/', '-'")
        if not LABEL_VALUE.match(value):
            raise ValueError(f"label {key}={value!r}: the value is not 0-63 letters, digits, '.-_'")
    return labels


Labels = Annotated[dict[str, str], AfterValidator(check_labels)]


class OsTemplate(Request):
    """The OS image: a pinned ``REPO@sha256:…`` or a channel resolved at render time."""

    image: str | None = None
    channel: Name | None = None

    @model_validator(mode="after")
    def _one_of(self) -> OsTemplate:
        if (self.image is None) == (self.channel is None):
            raise ValueError("give exactly one of image (REPO@sha256:...) or channel")
        if self.image is not None:
            repo, _, digest = self.image.partition("@")
            if not repo or not re.match(DIGEST_PATTERN, digest) or any(c.isspace() for c in repo):
                raise ValueError(
                    f"image {self.image!r} is not pinned: write REPO@sha256:<64 hex> "
                    "(or name a channel), never a floating tag"
                )
        return self


class ConfigFile(Request):
    path: str
    content: str = Field(max_length=1 << 20)
    mode: int = Field(default=0o644, ge=0, le=0o7777)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/etc/") or posixpath.normpath(value) != value or "\0" in value:
            raise ValueError(f"{value!r} is not a normalized absolute path under /etc/")
        return value


class Window(Request):
    window: str | None = None
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _parse(self) -> Window:
        from atoll.updates.cron import CronExpression

        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone") from None
        if self.window is not None:
            try:
                CronExpression.parse(self.window, zone)
            except AtollError as exc:
                raise ValueError(exc.message) from None
        return self


class UpdatePolicy(Request):
    """The device's automatic updates (``/etc/atoll/updates.toml``; docs/updates.md)."""

    policy: Literal["none", "check", "stage", "apply"] = "none"
    download: Window = Window()
    apply: Window = Window()


class Template(Request):
    os: OsTemplate | None = None
    units: dict[str, Annotated[str, Field(max_length=1 << 16)]] = {}
    files: list[ConfigFile] = []
    update_policy: UpdatePolicy | None = None

    @field_validator("units")
    @classmethod
    def _units(cls, units: dict[str, str]) -> dict[str, str]:
        for name in units:
            stem, dot, suffix = name.rpartition(".")
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_@.-]*$", stem) or f"{dot}{suffix}" not in (
                UNIT_SUFFIXES
            ):
                raise ValueError(f"unit {name!r} is not NAME{{{','.join(UNIT_SUFFIXES)}}}")
        return units

    @field_validator("files")
    @classmethod
    def _files(cls, files: list[ConfigFile]) -> list[ConfigFile]:
        paths = [f.path for f in files]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"files: {', '.join(twice)} given twice")
        return files


class FleetSpec(Request):
    selector: str
    template: Template
    auto_approve: bool = False

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        parse_selector(value)
        return value


class Fleet(Response):
    name: str
    spec: dict[str, Any]
    generation: int
    devices: int
    created_at: datetime.datetime
    updated_at: datetime.datetime


class ChannelSpec(Request):
    image: str = Field(pattern=r"^[^\s@]+$", max_length=512)
    digest: Digest


class Channel(Response):
    name: str
    image: str
    digest: str
    updated_at: datetime.datetime


class DeviceLabels(Request):
    labels: Labels


class Device(Response):
    name: str
    labels: dict[str, str]
    state: str
    fleet: str | None
    spec_version: int
    status: dict[str, Any]
    last_seen: datetime.datetime | None
    certificate_not_after: datetime.datetime
    #: An operator asked the device to replace its key; cleared when it has.
    key_rotation: bool = False
    created_at: datetime.datetime


class KeyRotationIn(Request):
    """A device's new public key and its proof of holding it (atoll.agent.wire)."""

    public_key: str = Field(max_length=4096)
    proof: str = Field(max_length=512)


class EnrollmentRequestIn(Request):
    name: Name
    public_key: str = Field(max_length=4096)
    labels: Labels = {}
    token: str = Field(min_length=16, max_length=128)


class EnrollmentRequest(Response):
    name: str
    labels: dict[str, str]
    state: str
    created_at: datetime.datetime


class EnrollmentTokenIn(Request):
    one_time: bool = True
    expires_in: int = Field(default=86400, ge=60, le=30 * 86400, description="seconds")
    labels: Labels = {}


class EnrollmentToken(Response):
    token: str
    one_time: bool
    expires_at: datetime.datetime


class Enrollment(Response):
    """What an approved device receives: its certificate and the server's keys."""

    state: str
    certificate: str = ""
    ca_certificate: str = ""
    spec_keys: list[str] = []


class OperatorTokenIn(Request):
    name: Name
    role: Literal["viewer", "operator", "admin"]


class OperatorToken(Response):
    name: str
    role: str
    token: str


class Batch(Request):
    count: int | None = Field(default=None, ge=1)
    percent: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> Batch:
        if (self.count is None) == (self.percent is None):
            raise ValueError("a batch gives exactly one of count or percent")
        return self


def _check_label_key(key: str) -> str:
    if not LABEL_KEY.match(key):
        raise ValueError(f"{key!r} is not a label key")
    return key


class DisruptionBudget(Request):
    """At most ``maxUnavailable`` devices of each group (the devices that share
    the values of the ``groupBy`` labels) are being updated at once."""

    group_by: list[Annotated[str, AfterValidator(_check_label_key)]] = Field(
        default=[], max_length=10
    )
    max_unavailable: int = Field(ge=1, le=100_000)


class Retries(Request):
    """A failed device is tried again, up to ``limit`` times, after ``backoff``
    seconds, doubled for each later retry (at most a day)."""

    limit: int = Field(ge=1, le=10)
    backoff: int = Field(default=60, ge=1, le=86400, description="seconds")


class RolloutSpec(Request):
    fleet: Name
    os: OsTemplate
    batches: list[Batch] = Field(min_length=1, max_length=100)
    success_threshold: int = Field(default=90, ge=1, le=100)
    error_threshold: int = Field(default=10, ge=1, le=100)
    #: A released device that has not booted the target green by then has failed.
    device_timeout: int | None = Field(default=None, ge=60, le=30 * 86400, description="seconds")
    #: Batches after the first are released only while this window is open.
    window: Window | None = None
    disruption_budget: DisruptionBudget | None = None
    retries: Retries | None = None


class RolloutDevice(Response):
    name: str
    state: str
    reason: str
    attempts: int = 0


class RolloutBatch(Response):
    index: int
    devices: list[RolloutDevice]


class Rollout(Response):
    name: str
    spec: dict[str, Any]
    target: str
    state: str
    reason: str
    current_batch: int
    batches: list[RolloutBatch]
    created_at: datetime.datetime
    updated_at: datetime.datetime


class UpdateReport(Request):
    state: Literal["idle", "waiting", "staged", "applied", "failed", "frozen"] = "idle"
    reason: str = Field(default="", max_length=2048)


class DeviceStatus(Request):
    """What the agent reports: the engine's view of the device."""

    booted_digest: str | None = None
    staged_digest: str | None = None
    rollback_digest: str | None = None
    health: Literal["green", "red", "unknown"] = "unknown"
    health_reason: str = Field(default="", max_length=2048)
    applied_version: int = Field(default=0, ge=0)
    update: UpdateReport = UpdateReport()
    workloads: dict[str, str] = {}


class Event(Response):
    id: int
    at: datetime.datetime
    actor: str
    action: str
    kind: str
    name: str
    detail: dict[str, Any]


class Problem(Response):
    """Every error answer: one line a person can act on."""

    error: str
