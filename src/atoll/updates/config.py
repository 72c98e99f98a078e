"""``/etc/atoll/updates.toml``: what a device does about updates on its own.

Read from the running system's /etc (the booted deployment's), validated as a
whole before anything happens, and turned into frozen dataclasses.  No file
means ``policy = "none"``, as rpm-ostreed's AutomaticUpdatePolicy defaults::

    policy = "stage"                 # none | check | stage | apply
    [download]
    window = "* 2-4 * * *"           # cron expression (atoll.updates.cron); default: anytime
    timezone = "Europe/Berlin"       # IANA zone; default UTC
    random_delay = "30m"             # this device's windows open 0..30m later (needs a window)
    rate_limit = "2MiB/s"            # cap on blob downloads; default: none
    [apply]
    window = "* 3 * * sun"           # when a staged update may be applied (reboot)
    timezone = "UTC"
    [inhibitors]
    files = ["/run/atoll/inhibit-reboot"]        # a reboot waits while one exists
    commands = ["/usr/bin/app-ready-for-reboot"] # a reboot waits while one exits non-zero
    [trust]
    max_signature_age = "7d"         # refuse an image whose newest valid signature is older
    allow_downgrade = false          # let an upgrade follow the tag to an older version

Every error names the file, the key and what to write instead.
"""

from __future__ import annotations

import datetime
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atoll import stricttoml
from atoll.configfile import KeyLines, key_path, kind_of, toml_syntax_error, where
from atoll.errors import InvalidInputError, from_oserror
from atoll.timeutil import parse_timespan
from atoll.updates.cron import CronExpression
from atoll.updates.window import Window

#: Where the file lives, relative to the running system's root.
CONFIG_PATH = Path("etc/atoll/updates.toml")
#: The longest random delay accepted: longer is almost surely a unit mistake.
MAX_RANDOM_DELAY = datetime.timedelta(days=7)
#: The lowest rate limit accepted, in bytes per second.
MIN_RATE_LIMIT = 1024


class UpdatePolicy(StrEnum):
    """rpm-ostreed's AutomaticUpdatePolicy, plus ``apply``."""

    #: Do nothing on their own.
    NONE = "none"
    #: Look for an update (manifest and config only) and remember what was found.
    CHECK = "check"
    #: Download and stage it; it is applied at the next reboot, whoever reboots.
    STAGE = "stage"
    #: Stage it, then, in the apply window and with no inhibitor holding, reboot into it.
    APPLY = "apply"


#: Every key of the file and what it means (unknown keys are refused with this list).
SETTINGS: Mapping[str, str] = {
    "policy": "none, check, stage or apply",
    "download.window": "cron expression: when checks and downloads may run",
    "download.timezone": "IANA time zone of download.window",
    "download.random_delay": "this device opens its download window up to this much later",
    "download.rate_limit": "cap on the download rate, e.g. 2MiB/s",
    "apply.window": "cron expression: when a staged update may be applied (reboot)",
    "apply.timezone": "IANA time zone of apply.window",
    "inhibitors.files": "absolute paths; a reboot waits while one exists",
    "inhibitors.commands": "commands; a reboot waits while one exits non-zero",
    "trust.max_signature_age": "refuse an image whose newest valid signature is older than this",
    "trust.allow_downgrade": "true: an upgrade may follow the tag to an older version",
}


@dataclass(frozen=True)
class DownloadSettings:
    window: Window = field(default_factory=Window)
    random_delay: datetime.timedelta = datetime.timedelta(0)
    #: Bytes per second; None: no limit.
    rate_limit: int | None = None


@dataclass(frozen=True)
class ApplySettings:
    window: Window = field(default_factory=Window)


@dataclass(frozen=True)
class InhibitorSettings:
    files: tuple[str, ...] = ()
    #: Each command as an argv list (a string in the file is split like a shell would,
    #: but no shell runs it).
    commands: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class TrustSettings:
    """Protection against a mirror that serves old, validly signed images
    (atoll.pipeline.freshness)."""

    #: None: signatures of any age (or none, as the trust policy says) are accepted.
    max_signature_age: datetime.timedelta | None = None
    allow_downgrade: bool = False


@dataclass(frozen=True)
class UpdatesConfig:
    policy: UpdatePolicy = UpdatePolicy.NONE
    download: DownloadSettings = field(default_factory=DownloadSettings)
    apply: ApplySettings = field(default_factory=ApplySettings)
    inhibitors: InhibitorSettings = field(default_factory=InhibitorSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    #: The file it came from; None when there is none (every setting at its default).
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "policy": self.policy.value,
            "download": {
                **self.download.window.to_json(),
                "randomDelaySeconds": int(self.download.random_delay.total_seconds()),
                "rateLimit": self.download.rate_limit,
            },
            "apply": self.apply.window.to_json(),
            "inhibitors": {
                "files": list(self.inhibitors.files),
                "commands": [list(c) for c in self.inhibitors.commands],
            },
            "trust": {
                "maxSignatureAgeSeconds": (
                    int(self.trust.max_signature_age.total_seconds())
                    if self.trust.max_signature_age is not None
                    else None
                ),
                "allowDowngrade": self.trust.allow_downgrade,
            },
        }


# --- reading ----------------------------------------------------------------------------


def config_path(root: Path) -> Path:
    return root / CONFIG_PATH


def load_config(root: Path) -> UpdatesConfig:
    """The configuration of the system whose root is *root* (defaults without a file)."""
    path = config_path(root)
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return UpdatesConfig()
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text", hint="save the file as UTF-8") from None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> UpdatesConfig:
    try:
        data = stricttoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(
            toml_syntax_error(str(path), exc),
            hint="see docs/updates.md for the format",
        ) from None
    return _Parser(path, KeyLines(text)).config(data)


class _Parser:
    def __init__(self, path: Path, lines: KeyLines) -> None:
        self.path = path
        self.lines = lines

    def error(self, key: str, problem: str, hint: str) -> InvalidInputError:
        place = where(str(self.path), self.lines, key_path(key))
        return InvalidInputError(f"{place}{key}: {problem}", hint=hint)

    def table(self, data: Any, section: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(
                section,
                f"expected a table, got {kind_of(data)}",
                hint=f"write it as a [{section}] section",
            )
        prefix = f"{section}." if section else ""
        if section:
            known = {k.removeprefix(prefix) for k in SETTINGS if k.startswith(prefix)}
        else:
            known = {k.split(".", 1)[0] for k in SETTINGS}
        for key in data:
            if key not in known:
                choices = sorted(known)
                raise self.error(
                    f"{prefix}{key}",
                    "unknown key",
                    hint=f"the keys{' of [' + section + ']' if section else ''} are "
                    f"{', '.join(choices)} (see docs/updates.md)",
                )
        return data

    def string(self, data: dict[str, Any], section: str, key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(
                f"{section}.{key}",
                f"expected a string, got {kind_of(value)}",
                hint=f'put the value in quotes: {key} = "…"',
            )
        return value

    def config(self, data: dict[str, Any]) -> UpdatesConfig:
        self.table(data, "")
        policy_text = data.get("policy", UpdatePolicy.NONE.value)
        choices = ", ".join(p.value for p in UpdatePolicy)
        # A list or a table is no policy either (and cannot be looked up in a set).
        if not isinstance(policy_text, str) or policy_text not in {p.value for p in UpdatePolicy}:
            raise self.error(
                "policy",
                f"unknown policy {policy_text!r}",
                hint=f'use one of {choices}, e.g. policy = "stage"',
            )
        download = self.download(self.table(data.get("download", {}), "download"))
        apply = ApplySettings(self.window(self.table(data.get("apply", {}), "apply"), "apply"))
        inhibitors = self.inhibitors(self.table(data.get("inhibitors", {}), "inhibitors"))
        trust = self.trust(self.table(data.get("trust", {}), "trust"))
        return UpdatesConfig(
            UpdatePolicy(policy_text), download, apply, inhibitors, trust, self.path
        )

    def trust(self, data: dict[str, Any]) -> TrustSettings:
        max_age = None
        if "max_signature_age" in data:
            max_age = self.duration(data["max_signature_age"], "trust.max_signature_age")
            if not max_age:
                raise self.error(
                    "trust.max_signature_age",
                    "a maximum age of 0 refuses every image",
                    hint='give the refresh interval and some slack, e.g. "7d"',
                )
        allow = data.get("allow_downgrade", False)
        if not isinstance(allow, bool):
            raise self.error(
                "trust.allow_downgrade",
                f"expected a boolean, got {kind_of(allow)}",
                hint="write allow_downgrade = true or false (no quotes)",
            )
        return TrustSettings(max_age, allow)

    def window(self, data: dict[str, Any], section: str) -> Window:
        zone_name = self.string(data, section, "timezone") or "UTC"
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.error(
                f"{section}.timezone",
                f"unknown time zone {zone_name!r}",
                hint='use an IANA name such as "UTC" or "Europe/Berlin" '
                "(the tzdata package provides them)",
            ) from None
        text = self.string(data, section, "window")
        if text is None:
            return Window(None, zone_name)
        try:
            expression = CronExpression.parse(text, zone)
        except InvalidInputError as exc:
            raise self.error(f"{section}.window", exc.message, hint=exc.hint or "") from None
        return Window(expression, zone_name)

    def download(self, data: dict[str, Any]) -> DownloadSettings:
        window = self.window(data, "download")
        delay = datetime.timedelta(0)
        if "random_delay" in data:
            delay = self.duration(data["random_delay"], "download.random_delay")
            if delay > MAX_RANDOM_DELAY:
                raise self.error(
                    "download.random_delay",
                    f"{format_duration(delay)} is longer than 7 days",
                    hint='give it with a unit, e.g. random_delay = "30m"',
                )
            if delay and window.anytime:
                raise self.error(
                    "download.random_delay",
                    "needs download.window: the delay counts from the window's opening",
                    hint='add a window such as window = "* 2-4 * * *", or drop random_delay '
                    "(the timer already spreads its runs by up to 15 minutes)",
                )
        rate = None
        if "rate_limit" in data:
            rate = self.rate(data["rate_limit"], "download.rate_limit")
        return DownloadSettings(window, delay, rate)

    def duration(self, value: Any, key: str) -> datetime.timedelta:
        hint = 'write a duration such as "90s", "30m", "1h30m" or "1d"'
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.error(key, f"expected a duration, got {kind_of(value)}", hint=hint)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.error(key, str(exc), hint=hint) from None

    def rate(self, value: Any, key: str) -> int:
        hint = 'write a rate such as "2MiB/s", "500KiB/s" or "10Mbit/s"'
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.error(key, f"expected a rate, got {kind_of(value)}", hint=hint)
        try:
            rate = parse_rate(value)
        except ValueError as exc:
            raise self.error(key, str(exc), hint=hint) from None
        if rate < MIN_RATE_LIMIT:
            raise self.error(
                key,
                f"{rate} bytes/s is below the minimum of 1 KiB/s",
                hint=f"{hint}; a bare number is bytes per second",
            )
        return rate

    def inhibitors(self, data: dict[str, Any]) -> InhibitorSettings:
        files = self.string_list(data, "files")
        for i, name in enumerate(files):
            if not name.startswith("/"):
                raise self.error(
                    f"inhibitors.files[{i}]",
                    f"{name!r} is not an absolute path",
                    hint='write the full path, e.g. "/run/atoll/inhibit-reboot"',
                )
        commands: list[tuple[str, ...]] = []
        raw = data.get("commands", [])
        if not isinstance(raw, list):
            raise self.error(
                "inhibitors.commands",
                f"expected a list, got {kind_of(raw)}",
                hint='write commands = ["/usr/bin/app-ready-for-reboot"]',
            )
        for i, item in enumerate(raw):
            key = f"inhibitors.commands[{i}]"
            hint = 'write a command line ("/usr/bin/check --quiet") or an argv list'
            if isinstance(item, str):
                try:
                    argv = shlex.split(item)
                except ValueError as exc:
                    raise self.error(key, f"cannot split {item!r}: {exc}", hint=hint) from None
            elif isinstance(item, list) and all(isinstance(a, str) for a in item):
                argv = list(item)
            else:
                raise self.error(key, f"expected a string, got {kind_of(item)}", hint=hint)
            if not argv or not argv[0]:
                raise self.error(key, "empty command", hint=hint)
            commands.append(tuple(argv))
        return InhibitorSettings(tuple(files), tuple(commands))

    def string_list(self, data: dict[str, Any], key: str) -> list[str]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(
                f"inhibitors.{key}",
                f"expected a list of strings, got {kind_of(value)}",
                hint=f'write {key} = ["/run/atoll/inhibit-reboot"]',
            )
        return list(value)


# --- durations and rates ------------------------------------------------------------------


def parse_duration(value: int | str) -> datetime.timedelta:
    """``90`` or ``"90s"``, ``"30m"`` (or ``"30min"``), ``"1h30m"``, ``"1d"``: a time
    span (atoll.timeutil) in whole seconds."""
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{value} is negative")
    try:
        seconds = parse_timespan(str(value), whole_seconds=True, infinity=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration") from None
    try:
        return datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{value!r} is too long a duration") from None


def format_duration(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKMG]?i?B|[kKMG]?bit)?\s*(?:/\s*s|ps)?")
_RATE_UNITS = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "kiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "bit": 1 / 8,
    "kbit": 1000 / 8,
    "Kbit": 1000 / 8,
    "Mbit": 1000**2 / 8,
    "Gbit": 1000**3 / 8,
}


def parse_rate(value: int | str) -> int:
    """Bytes per second from ``2097152``, ``"2MiB/s"``, ``"500 KB/s"``, ``"10Mbit/s"``."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} is not a positive rate")
        return value
    match = _RATE.fullmatch(value.strip())
    if match is None or (match.group(2) or "B") not in _RATE_UNITS:
        raise ValueError(f"{value!r} is not a rate")
    rate = int(float(match.group(1)) * _RATE_UNITS[match.group(2) or "B"])
    if rate <= 0:
        raise ValueError(f"{value!r} is not a positive rate")
    return rate


def format_rate(rate: int) -> str:
    for unit, size in (("GiB/s", 1024**3), ("MiB/s", 1024**2), ("KiB/s", 1024)):
        if rate >= size:
            value = rate / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{rate} B/s"
