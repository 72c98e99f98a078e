"""Putting a rendered spec in place on a device: its config files, its Quadlet
units and its update policy, written under a root (``/`` on a device).

Only what the fleet wrote is removed when a later spec drops it: the names of
the files and units it owns are kept in ``applied.json``.  The update policy
becomes ``/etc/atoll/updates.toml``'s ``policy``, ``[download]`` and ``[apply]``;
the device's own ``[trust]`` and ``[inhibitors]`` are kept as they are, so a
spec cannot weaken the device's signature policy.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from atoll.errors import InvalidInputError, SpecTrustError
from atoll.fsutil import write_atomic

UNIT_DIR = Path("etc/containers/systemd")
UPDATES_TOML = Path("etc/atoll/updates.toml")
#: Keys of updates.toml the device keeps; a spec cannot set them.
DEVICE_SECTIONS = ("trust", "inhibitors")


def _inside(root: Path, relative: str) -> Path:
    path = Path(relative.lstrip("/"))
    if not relative.startswith("/etc/") or ".." in path.parts:
        raise SpecTrustError(f"the spec writes {relative!r}, outside /etc")
    return root / path


def _write(root: Path, target: Path, data: bytes, mode: int) -> None:
    """Write *target* under *root*, making its directories; never through a symlink."""
    here = root
    for part in target.relative_to(root).parts:
        here = here / part
        if here.is_symlink():
            raise SpecTrustError(f"{here} is a symlink: the agent does not write through it")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data, mode)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in escaped):
        raise SpecTrustError(f"the update policy value {value!r} has control characters")
    return f'"{escaped}"'


def render_updates_toml(policy: dict[str, Any], existing: str) -> str:
    """updates.toml with *policy*'s settings and *existing*'s device sections."""
    try:
        kept = tomllib.loads(existing) if existing else {}
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{UPDATES_TOML}: {exc}") from None
    lines = [
        "# Written by the fleet agent; [trust] and [inhibitors] are the device's own.",
        f"policy = {_toml_string(str(policy.get('policy', 'none')))}",
    ]
    for section in ("download", "apply"):
        window = policy.get(section) or {}
        lines.append(f"\n[{section}]")
        if window.get("window"):
            lines.append(f"window = {_toml_string(str(window['window']))}")
        lines.append(f"timezone = {_toml_string(str(window.get('timezone', 'UTC')))}")
    for section in DEVICE_SECTIONS:
        values = kept.get(section)
        if isinstance(values, dict) and values:
            lines.append(f"\n[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def unit_changes(
    root: Path, spec: dict[str, Any], owned: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """(units *spec* adds or changes, units the fleet wrote that *spec* drops),
    compared with what is under *root* now."""
    units = dict(spec.get("units") or {})
    changed = []
    for name, text in sorted(units.items()):
        path = root / UNIT_DIR / name
        if "/" in name or not path.is_file() or path.read_text(errors="replace") != text:
            changed.append(name)
    removed = sorted(n for n in owned.get("units", []) if n not in units and "/" not in n)
    return changed, removed


def apply_config(root: Path, spec: dict[str, Any], owned: dict[str, Any]) -> dict[str, list[str]]:
    """Write *spec*'s files, units and update policy under *root*; remove what the
    fleet wrote before (*owned*) and no longer names.  The new ownership."""
    files = {f["path"]: f for f in spec.get("files") or []}
    units = dict(spec.get("units") or {})
    for path, item in files.items():
        _write(root, _inside(root, path), item["content"].encode(), int(item.get("mode", 0o644)))
    for name, text in units.items():
        if "/" in name or name.startswith("."):
            raise SpecTrustError(f"the spec names unit {name!r}")
        _write(root, root / UNIT_DIR / name, text.encode(), 0o644)
    for path in owned.get("files", []):
        if path not in files:
            _inside(root, path).unlink(missing_ok=True)
    for name in owned.get("units", []):
        if name not in units and "/" not in name:
            (root / UNIT_DIR / name).unlink(missing_ok=True)
    policy = spec.get("updatePolicy")
    if policy:
        target = root / UPDATES_TOML
        existing = target.read_text() if target.exists() else ""
        _write(root, target, render_updates_toml(policy, existing).encode(), 0o644)
    return {"files": sorted(files), "units": sorted(units)}
