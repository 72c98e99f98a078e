"""The install config: what an unattended install from an atoll ISO does
(docs/install.md, "The install config").  Version :data:`VERSION`::

    version = 1
    hostname = "edge-01"                      # /etc/hostname (optional)

    [image]
    source = "embedded"                       # the OCI archive on the ISO, or an image
                                              # (REF or TRANSPORT:DETAILS) fetched at install
    track = "registry.example.com/os/edge:stable"   # what updates follow (optional)

    [disk]                                    # which disk to install to: every rule given
    path = "/dev/vda"                         # must hold, and exactly one disk may match
    model = "QEMU HARDDISK*"                  # a shell pattern (fnmatch) on the model
    min-size = "8G"
    max-size = "2T"
    boot = "uefi"                             # uefi | bios | hybrid
    secure-boot = false

    [kernel]
    args = ["console=ttyS0,115200"]

    [[user]]                                  # root or an account made at first boot
    name = "root"
    ssh-authorized-keys = ["ssh-ed25519 AAAA… admin@example.com"]

    [signature]
    policy = '''{"default": [{"type": "reject"}], …}'''   # containers-policy.json text

Every key is checked when the file is read (:func:`parse_config`), so
``atoll disk-image --type iso`` and ``atoll iso customize`` refuse a config
the installer would refuse; errors name the file, the line and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.configfile import KeyLines, KeyPath, kind_of, locate
from atoll.errors import AtollError, InstallConfigError
from atoll.stricttoml import loads

VERSION = 1
#: ``[image] source`` for the OCI archive the ISO carries.
EMBEDDED = "embedded"
BOOT_MODES = ("uefi", "bios", "hybrid")
_HOSTNAME = re.compile(
    r"^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_KEYS: dict[KeyPath, tuple[str, ...]] = {
    (): ("version", "hostname", "image", "disk", "kernel", "user", "signature"),
    ("image",): ("source", "track"),
    ("disk",): ("path", "model", "min-size", "max-size", "boot", "secure-boot"),
    ("kernel",): ("args",),
    ("user",): ("name", "ssh-authorized-keys"),
    ("signature",): ("policy",),
}


@dataclass(frozen=True)
class DiskRules:
    path: str | None = None
    model: str | None = None
    min_size: int | None = None
    max_size: int | None = None

    def describe(self) -> str:
        parts = []
        if self.path:
            parts.append(f"path {self.path}")
        if self.model:
            parts.append(f"model {self.model!r}")
        if self.min_size is not None:
            parts.append(f"at least {self.min_size} bytes")
        if self.max_size is not None:
            parts.append(f"at most {self.max_size} bytes")
        return ", ".join(parts) or "any disk"


@dataclass(frozen=True)
class User:
    name: str
    ssh_authorized_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstallConfig:
    source: str
    track: str | None = None
    disk: DiskRules = field(default_factory=DiskRules)
    boot: str = "uefi"
    secure_boot: bool = False
    kargs: tuple[str, ...] = ()
    hostname: str | None = None
    users: tuple[User, ...] = ()
    #: containers-policy.json text; None: no signature check.
    policy: str | None = None

    @property
    def embedded(self) -> bool:
        return self.source == EMBEDDED


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = KeyLines(text)

    def fail(self, path: KeyPath, problem: str, hint: str | None = None) -> InstallConfigError:
        return InstallConfigError(
            f"{locate(self.source, self.lines, path)}{problem}",
            hint=hint or "fix the install config (docs/install.md, 'The install config')",
        )

    def table(self, doc: dict[str, Any], path: KeyPath) -> dict[str, Any]:
        value = doc.get(str(path[-1]), {}) if path else doc
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, found {kind_of(value)}")
        self.known(value, path, path)
        return value

    def known(self, table: dict[str, Any], path: KeyPath, schema: KeyPath) -> None:
        for key in table:
            if key not in _KEYS[schema]:
                raise self.fail(
                    (*path, key), "unknown key", hint=f"known here: {', '.join(_KEYS[schema])}"
                )

    def string(self, table: dict[str, Any], path: KeyPath, *, required: bool = False) -> str | None:
        value = table.get(str(path[-1]))
        if value is None:
            if required:
                raise self.fail(path, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, found {kind_of(value)}")
        return value

    def strings(self, table: dict[str, Any], path: KeyPath) -> tuple[str, ...]:
        value = table.get(str(path[-1]), [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(path, "expected an array of non-empty strings")
        return tuple(value)

    def size(self, table: dict[str, Any], path: KeyPath) -> int | None:
        value = table.get(str(path[-1]))
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            raise self.fail(path, f"{value!r} is not a size", hint='e.g. "8G", "512M" or bytes')
        return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_config(text: str, source: str) -> InstallConfig:
    """The install config in *text* (*source* names it in errors)."""
    try:
        doc = loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstallConfigError(
            f"{source}: not TOML: {exc}", hint="fix the install config's syntax"
        ) from None
    r = _Reader(text, source)
    r.table(doc, ())
    if doc.get("version") != VERSION:
        raise r.fail(("version",), f"expected {VERSION}, found {doc.get('version')!r}")
    image = r.table(doc, ("image",))
    disk = r.table(doc, ("disk",))
    kernel = r.table(doc, ("kernel",))
    signature = r.table(doc, ("signature",))
    source_ref = r.string(image, ("image", "source"), required=True)
    assert source_ref is not None
    track = r.string(image, ("image", "track"))
    if source_ref.strip() != EMBEDDED:
        _check_image_name(r, ("image", "source"), source_ref)
    if track is not None:
        _check_image_name(r, ("image", "track"), track)
    rules = DiskRules(
        path=r.string(disk, ("disk", "path")),
        model=r.string(disk, ("disk", "model")),
        min_size=r.size(disk, ("disk", "min-size")),
        max_size=r.size(disk, ("disk", "max-size")),
    )
    if rules.path is not None and not rules.path.startswith("/dev/"):
        raise r.fail(("disk", "path"), f"{rules.path!r} is not a device path under /dev/")
    if rules.min_size and rules.max_size and rules.min_size > rules.max_size:
        raise r.fail(("disk", "max-size"), "smaller than min-size: no disk can match")
    boot = r.string(disk, ("disk", "boot")) or "uefi"
    if boot not in BOOT_MODES:
        raise r.fail(("disk", "boot"), f"{boot!r} is not one of {', '.join(BOOT_MODES)}")
    secure_boot = disk.get("secure-boot", False)
    if not isinstance(secure_boot, bool):
        raise r.fail(("disk", "secure-boot"), f"expected a boolean, found {kind_of(secure_boot)}")
    if secure_boot and boot == "bios":
        raise r.fail(("disk", "secure-boot"), 'needs boot = "uefi" or "hybrid"')
    kargs = r.strings(kernel, ("kernel", "args"))
    for i, karg in enumerate(kargs):
        if karg.split("=", 1)[0] in ("root", "atoll") or any(c.isspace() for c in karg):
            raise r.fail(
                ("kernel", "args", i),
                f"{karg!r}: one argument without spaces, and not root= or atoll= (atoll sets them)",
            )
    hostname = r.string(doc, ("hostname",))
    if hostname is not None and not _HOSTNAME.match(hostname):
        raise r.fail(("hostname",), f"{hostname!r} is not a host name")
    users = _users(r, doc)
    policy = r.string(signature, ("signature", "policy"))
    if policy is not None:
        _check_policy(r, policy)
    return InstallConfig(
        source=source_ref.strip(),
        track=track,
        disk=rules,
        boot=boot,
        secure_boot=secure_boot,
        kargs=kargs,
        hostname=hostname,
        users=users,
        policy=policy,
    )


def _users(r: _Reader, doc: dict[str, Any]) -> tuple[User, ...]:
    value = doc.get("user", [])
    if not isinstance(value, list) or not all(isinstance(u, dict) for u in value):
        raise r.fail(("user",), "expected an array of tables ([[user]])")
    users: list[User] = []
    for i, table in enumerate(value):
        r.known(table, ("user", i), ("user",))
        name = r.string(table, ("user", i, "name"), required=True)
        assert name is not None
        if not _USER.match(name):
            raise r.fail(("user", i, "name"), f"{name!r} is not a user name")
        if name in (u.name for u in users):
            raise r.fail(("user", i, "name"), f"{name!r} is given twice")
        keys = r.strings(table, ("user", i, "ssh-authorized-keys"))
        for k, key in enumerate(keys):
            if "\n" in key or len(key.split()) < 2:
                raise r.fail(
                    ("user", i, "ssh-authorized-keys", k),
                    "not an authorized_keys line (TYPE BASE64 [COMMENT])",
                )
        users.append(User(name, keys))
    return tuple(users)


def _check_image_name(r: _Reader, path: KeyPath, text: str) -> None:
    from atoll.oci.transports import parse_bootc_name

    try:
        parse_bootc_name(text)
    except AtollError as exc:
        raise r.fail(path, exc.message) from None


def _check_policy(r: _Reader, text: str) -> None:
    from atoll.pipeline.policy import parse_policy

    try:
        parse_policy(text.encode(), "policy")
    except AtollError as exc:
        raise r.fail(("signature", "policy"), exc.message) from None


def load_config(path: Path) -> InstallConfig:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallConfigError(f"{path}: cannot read the install config ({exc})") from None
    return parse_config(text, str(path))
