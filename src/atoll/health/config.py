"""``/etc/greenboot/greenboot.conf``: greenboot's settings, read without a shell.

greenboot ``source``s the file with bash.  atoll reads the same file as a list of
shell-style assignments and never runs it:

* ``KEY=VALUE`` with an optional ``export``; VALUE may be quoted as in the shell
  (``'...'``, ``"..."``); a ``#`` outside quotes starts a comment.
* ``KEY=(a "b c")``, a bash array, also spread over several lines, and
  ``KEY+=(...)``, which appends; ``DISABLED_HEALTHCHECKS`` also takes a plain
  string of space-separated names.
* The last assignment of a key wins, as in bash.
* Nothing is expanded: a value with ``$`` or a backquote is refused.

A line or value atoll cannot read gives a warning naming the file and line, and
the key keeps its default; a missing file gives the defaults.  Keys that start
with ``GREENBOOT_`` or ``ATOLL_`` and are not in :data:`SETTINGS` are reported
(likely a typo); other keys are left alone, since other tools keep variables
of their own in the file.

:data:`SETTINGS` declares each key once; the parser, the defaults of
:class:`HealthConfig` and the table in ``docs/health.md`` (checked by a test)
follow from it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from atoll.configfile import at_line

#: Where the file is, relative to the root of the system whose checks run.
CONFIG_PATH = "etc/greenboot/greenboot.conf"

_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)(\+?=)(.*)$", re.DOTALL)
_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


@dataclass(frozen=True)
class HealthConfig:
    """What greenboot.conf says (defaults for what it does not)."""

    max_boot_attempts: int = 3
    disabled: frozenset[str] = field(default_factory=frozenset)
    watchdog_enabled: bool = True
    watchdog_grace_hours: int = 24
    check_timeout: float = 300.0


class _BadValue(ValueError):
    """A value of the right syntax but not acceptable for its key."""


def _positive_int(value: str | list[str]) -> int:
    text = _scalar(value)
    if not text.isdigit() or int(text) < 1:
        raise _BadValue(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def _positive_seconds(value: str | list[str]) -> float:
    text = _scalar(value)
    if not _NUMBER.match(text) or float(text) <= 0:
        raise _BadValue(f"expected a number of seconds above 0, got {text!r}")
    return float(text)


def _boolean(value: str | list[str]) -> bool:
    text = _scalar(value).lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise _BadValue(f"expected true or false, got {text!r}")


def _names(value: str | list[str]) -> frozenset[str]:
    names = value if isinstance(value, list) else value.split()
    for name in names:
        if not name or "/" in name or not name.isprintable():
            raise _BadValue(f"{name!r} is not a check name (a file name without a directory)")
    return frozenset(names)


def _scalar(value: str | list[str]) -> str:
    if isinstance(value, list):
        raise _BadValue("expected a single value, not an array")
    return value


@dataclass(frozen=True)
class Setting:
    key: str
    field: str
    parse: Callable[[str | list[str]], Any]
    #: Who defined the key: greenboot's own, or atoll's addition.
    origin: str
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "GREENBOOT_MAX_BOOT_ATTEMPTS",
        "max_boot_attempts",
        _positive_int,
        "greenboot",
        "boots a new deployment gets before the device falls back to the previous one",
    ),
    Setting(
        "DISABLED_HEALTHCHECKS",
        "disabled",
        _names,
        "greenboot",
        "names of checks (and green/red scripts) not to run: a bash array "
        '`("a.sh" "b.sh")` or a space-separated string',
    ),
    Setting(
        "GREENBOOT_WATCHDOG_CHECK_ENABLED",
        "watchdog_enabled",
        _boolean,
        "greenboot",
        "`true` or `false`: fail the boot when the previous boot ended in a hardware "
        "watchdog reset soon after an update",
    ),
    Setting(
        "GREENBOOT_WATCHDOG_GRACE_PERIOD",
        "watchdog_grace_hours",
        _positive_int,
        "greenboot",
        "hours after a deployment was made during which a watchdog reset is blamed on it",
    ),
    Setting(
        "ATOLL_HEALTHCHECK_TIMEOUT",
        "check_timeout",
        _positive_seconds,
        "atoll",
        "seconds one script may run before it is killed and counts as failed",
    ),
)

_BY_KEY = {s.key: s for s in SETTINGS}


def default_of(setting: Setting) -> Any:
    """The default value of *setting*, as :class:`HealthConfig` declares it."""
    defaults = HealthConfig()
    return getattr(defaults, setting.field)


def load_config(root: Path) -> tuple[HealthConfig, list[str]]:
    """Read ``ROOT/etc/greenboot/greenboot.conf``: the settings and the warnings."""
    path = root / CONFIG_PATH
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return HealthConfig(), []
    except OSError as exc:
        return HealthConfig(), [f"{path}: cannot be read ({exc.strerror}); using the defaults"]
    return parse_config(raw.decode("utf-8", errors="replace"), str(path))


def parse_config(text: str, where: str) -> tuple[HealthConfig, list[str]]:
    """Parse greenboot.conf *text*; *where* names it in warnings."""
    config = HealthConfig()
    problems: list[tuple[int, str]] = []
    for lineno, key, op, value in _assignments(text, problems):
        setting = _BY_KEY.get(key)
        if setting is None:
            if key.startswith(("GREENBOOT_", "ATOLL_")):
                problems.append((lineno, f"unknown setting {key}; ignored"))
            continue
        fallback = default_of(setting)
        try:
            if "$" in _flat(value) or "`" in _flat(value):
                raise _BadValue("shell expansion ($, `) is not supported")
            parsed = setting.parse(value)
        except _BadValue as exc:
            problems.append((lineno, f"{key}: {exc}; using the default ({_show(fallback)})"))
            parsed = fallback
        if op == "+=" and isinstance(parsed, frozenset):
            parsed = getattr(config, setting.field) | parsed
        config = replace(config, **{setting.field: parsed})
    problems.sort(key=lambda p: p[0])
    return config, [at_line(where, lineno) + message for lineno, message in problems]


def _flat(value: str | list[str]) -> str:
    return " ".join(value) if isinstance(value, list) else value


def _show(value: Any) -> str:
    if isinstance(value, frozenset):
        return "none" if not value else " ".join(sorted(value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _assignments(
    text: str, problems: list[tuple[int, str]]
) -> list[tuple[int, str, str, str | list[str]]]:
    """(line number, key, ``=`` or ``+=``, value) for each assignment in *text*."""
    out: list[tuple[int, str, str, str | list[str]]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        lineno, line = index + 1, lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        match = _ASSIGN.match(line)
        if match is None:
            problems.append((lineno, "not a KEY=VALUE line; ignored"))
            continue
        key, op, rest = match.groups()
        if rest.startswith("("):
            # A bash array may go on over the next lines until its ")".
            body = rest
            items = _array(body)
            while items is None and index < len(lines):
                body += "\n" + lines[index]
                index += 1
                items = _array(body)
            if items is None:
                problems.append((lineno, f"{key}: the array has no closing ')'; ignored"))
                continue
            if isinstance(items, str):
                problems.append((lineno, f"{key}: {items}; ignored"))
                continue
            out.append((lineno, key, op, items))
            continue
        try:
            words = shlex.split(rest, comments=True)
        except ValueError as exc:
            problems.append((lineno, f"{key}: {exc}; ignored"))
            continue
        if len(words) > 1:
            problems.append((lineno, f"{key}: more than one word; quote the value; ignored"))
            continue
        out.append((lineno, key, op, words[0] if words else ""))
    return out


def _array(body: str) -> list[str] | str | None:
    """The words of the bash array that *body* (``(...``) starts: None while its
    ``)`` has not come, a message when it cannot be read."""
    quote = ""
    i = 1
    while i < len(body):
        char = body[i]
        if quote == "'":
            quote = "" if char == "'" else quote
        elif quote == '"':
            if char == "\\":
                i += 1
            elif char == '"':
                quote = ""
        elif char == "\\":
            i += 1
        elif char in "'\"":
            quote = char
        elif char == "#" and (body[i - 1].isspace() or body[i - 1] == "("):
            end = body.find("\n", i)
            if end < 0:
                return None
            i = end
        elif char == "(":
            return "nested '(' in an array"
        elif char == ")":
            try:
                words = shlex.split(body[1:i], comments=True)
                rest = shlex.split(body[i + 1 :], comments=True)
            except ValueError as exc:
                return str(exc)
            return "unexpected text after ')'" if rest else words
        i += 1
    return None
