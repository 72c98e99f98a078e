"""Blueprints: what an image is made of, in Image Builder's TOML format.

The keys atoll reads (anything else is an error naming the key and its line)::

    name = "edge"                       # required
    description = "Edge devices"
    version = "1.4.0"                   # becomes the org.opencontainers.image.version label
    [[packages]]                        # also [[modules]]; version "*" (default) or exact
    name = "strace"
    version = "*"
    [[groups]]                          # package groups (dnf-family bases only)
    name = "core"
    [customizations]
    hostname = "edge"
    [customizations.kernel]
    append = "console=ttyS0"            # written to /usr/lib/bootc/kargs.d/
    name = "kernel-rt"                  # a kernel package to install
    [[customizations.user]]
    name = "admin"                      # required
    description = "Administrator"
    password = "$6$…"                   # a crypt(3) hash; clear text is accepted, with a warning
    key = "ssh-ed25519 AAAA…"
    home = "/home/admin"
    shell = "/bin/bash"
    groups = ["sudo"]
    uid = 1000
    gid = 1000
    [[customizations.sshkey]]
    user = "root"
    key = "ssh-ed25519 AAAA…"
    [[customizations.group]]
    name = "app"
    gid = 1100
    [customizations.services]
    enabled = ["sshd"]
    disabled = ["apt-daily.timer"]
    masked = ["getty@tty1.service"]
    [customizations.firewall]
    ports = ["22:tcp", "8000-8010:udp"]
    [customizations.firewall.services]
    enabled = ["ssh"]
    disabled = ["dhcpv6-client"]
    [[customizations.files]]
    path = "/etc/app.conf"              # absolute; required
    data = "x = 1\\n"
    mode = "0644"                       # octal string
    user = "root"                       # name or number
    group = "root"
    [[customizations.directories]]
    path = "/etc/app.d"
    mode = "0755"
    user = "root"
    group = "root"
    ensure_parents = false
    [customizations.timezone]
    timezone = "Europe/Berlin"
    ntpservers = ["0.pool.ntp.org"]
    [customizations.locale]
    languages = ["en_US.UTF-8"]
    keyboard = "us"
    [customizations.failover]           # atoll's own: keepalived and its config unit
    enabled = true

:func:`load_blueprint` validates the whole file before any work starts and
returns a frozen :class:`Blueprint`; its ``warnings`` say what is accepted but
unwise (clear-text passwords).  ``to_dict`` gives the file's structure back, so
``parse_blueprint_dict(bp.to_dict()) == bp``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from atoll import stricttoml
from atoll.configfile import KeyLines, KeyPath, kind_of, locate, show_key, toml_syntax_error
from atoll.errors import BlueprintError, from_oserror

T = TypeVar("T")

#: Names that end up in shell commands: checked before they get there.
_PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._:-]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9+.~:_*-]*$")
#: The blueprint's own version: it becomes an image label and is compared on promotion.
_IMAGE_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.~_-]*$")
_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}\$?$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*$")
_TIMEZONE_RE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
_LOCALE_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")
_PORT_RE = re.compile(r"^([a-z0-9-]+|\d{1,5}(-\d{1,5})?):(tcp|udp|sctp|dccp|any)$")
_MODE_RE = re.compile(r"^0?[0-7]{3,4}$")
#: crypt(3) hashes: MD5, blowfish, SHA-256, SHA-512, yescrypt, gost-yescrypt, scrypt.
#: C0 controls, DEL and C1 controls, and the Unicode line and paragraph separators.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CRYPT_RE = re.compile(r"^\$(1|2[abxy]?|5|6|y|gy|7)\$[^:\s]+$")


@dataclass(frozen=True)
class Package:
    name: str
    #: "*" means any version.
    version: str = "*"


@dataclass(frozen=True)
class User:
    name: str
    description: str | None = None
    password: str | None = None
    key: str | None = None
    home: str | None = None
    shell: str | None = None
    groups: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None

    @property
    def password_is_hashed(self) -> bool:
        return self.password is not None and _CRYPT_RE.match(self.password) is not None


@dataclass(frozen=True)
class Group:
    name: str
    gid: int | None = None


@dataclass(frozen=True)
class SshKey:
    user: str
    key: str


@dataclass(frozen=True)
class Services:
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()


@dataclass(frozen=True)
class Firewall:
    ports: tuple[str, ...] = ()
    services_enabled: tuple[str, ...] = ()
    services_disabled: tuple[str, ...] = ()


@dataclass(frozen=True)
class File:
    path: str
    data: str = ""
    mode: int = 0o644
    user: str | int = "root"
    group: str | int = "root"


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755
    user: str | int = "root"
    group: str | int = "root"
    ensure_parents: bool = False


@dataclass(frozen=True)
class Kernel:
    append: str = ""
    name: str | None = None


@dataclass(frozen=True)
class Timezone:
    timezone: str | None = None
    ntpservers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Locale:
    languages: tuple[str, ...] = ()
    keyboard: str | None = None


@dataclass(frozen=True)
class Customizations:
    hostname: str | None = None
    kernel: Kernel | None = None
    users: tuple[User, ...] = ()
    sshkeys: tuple[SshKey, ...] = ()
    groups: tuple[Group, ...] = ()
    services: Services | None = None
    firewall: Firewall | None = None
    files: tuple[File, ...] = ()
    directories: tuple[Directory, ...] = ()
    timezone: Timezone | None = None
    locale: Locale | None = None
    #: keepalived and atoll-failover-config.service in the image (docs/failover.md).
    failover: bool = False


@dataclass(frozen=True)
class Blueprint:
    name: str
    description: str = ""
    version: str | None = None
    packages: tuple[Package, ...] = ()
    #: Package groups ([[groups]]): dnf only.
    package_groups: tuple[str, ...] = ()
    customizations: Customizations = field(default_factory=Customizations)
    #: What is accepted but unwise, one sentence each (with the line); not part of equality.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The blueprint in the file's structure (what ``tomllib`` would give)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.version is not None:
            out["version"] = self.version
        if self.packages:
            out["packages"] = [{"name": p.name, "version": p.version} for p in self.packages]
        if self.package_groups:
            out["groups"] = [{"name": g} for g in self.package_groups]
        custom = _customizations_dict(self.customizations)
        if custom:
            out["customizations"] = custom
        return out


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None and v not in ((), [])}


def _customizations_dict(c: Customizations) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.hostname is not None:
        out["hostname"] = c.hostname
    if c.kernel is not None:
        out["kernel"] = _drop_none({"append": c.kernel.append or None, "name": c.kernel.name})
    if c.users:
        out["user"] = [
            _drop_none(
                {
                    "name": u.name,
                    "description": u.description,
                    "password": u.password,
                    "key": u.key,
                    "home": u.home,
                    "shell": u.shell,
                    "groups": list(u.groups),
                    "uid": u.uid,
                    "gid": u.gid,
                }
            )
            for u in c.users
        ]
    if c.sshkeys:
        out["sshkey"] = [{"user": k.user, "key": k.key} for k in c.sshkeys]
    if c.groups:
        out["group"] = [_drop_none({"name": g.name, "gid": g.gid}) for g in c.groups]
    if c.services is not None:
        out["services"] = _drop_none(
            {
                "enabled": list(c.services.enabled),
                "disabled": list(c.services.disabled),
                "masked": list(c.services.masked),
            }
        )
    if c.firewall is not None:
        fw: dict[str, Any] = _drop_none({"ports": list(c.firewall.ports)})
        services = _drop_none(
            {
                "enabled": list(c.firewall.services_enabled),
                "disabled": list(c.firewall.services_disabled),
            }
        )
        if services:
            fw["services"] = services
        out["firewall"] = fw
    if c.files:
        out["files"] = [
            {
                "path": f.path,
                "data": f.data,
                "mode": f"{f.mode:04o}",
                "user": f.user,
                "group": f.group,
            }
            for f in c.files
        ]
    if c.directories:
        out["directories"] = [
            {
                "path": d.path,
                "mode": f"{d.mode:04o}",
                "user": d.user,
                "group": d.group,
                "ensure_parents": d.ensure_parents,
            }
            for d in c.directories
        ]
    if c.timezone is not None:
        out["timezone"] = _drop_none(
            {"timezone": c.timezone.timezone, "ntpservers": list(c.timezone.ntpservers)}
        )
    if c.locale is not None:
        out["locale"] = _drop_none(
            {"languages": list(c.locale.languages), "keyboard": c.locale.keyboard}
        )
    if c.failover:
        out["failover"] = {"enabled": True}
    return out


# --- validation ----------------------------------------------------------------------


class _Reader:
    def __init__(self, source: str, lines: KeyLines | None) -> None:
        self.source = source
        self.lines = lines
        self.warnings: list[str] = []

    def fail(self, path: KeyPath, message: str, hint: str | None = None) -> BlueprintError:
        return BlueprintError(f"{locate(self.source, self.lines, path)}{message}", hint=hint)

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(f"{locate(self.source, self.lines, path)}{message}")

    def table(
        self, value: Any, path: KeyPath, known: Sequence[str], required: Sequence[str] = ()
    ) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, not {kind_of(value)}")
        for key in value:
            if key not in known:
                raise self.fail(
                    (*path, key),
                    "unknown key",
                    hint=f"keys allowed in {show_key(path) or 'the top level'}: {', '.join(known)}",
                )
        for key in required:
            if key not in value:
                raise self.fail(path, f"'{key}' is required")
        return value

    def tables(self, value: Any, path: KeyPath) -> list[tuple[Any, KeyPath]]:
        if not isinstance(value, list):
            raise self.fail(
                path, f"must be an array of tables ([[{show_key(path)}]]), not {kind_of(value)}"
            )
        return [(item, (*path, i)) for i, item in enumerate(value)]

    def string(
        self,
        data: Mapping[str, Any],
        key: str,
        path: KeyPath,
        *,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
        multiline: bool = False,
    ) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail((*path, key), f"must be a string, not {kind_of(value)}")
        if not multiline:
            self.one_line(value, (*path, key))
        return self.matched(value, (*path, key), pattern=pattern, what=what)

    def one_line(self, value: str, path: KeyPath) -> None:
        """Refuse control characters: the values land in a Containerfile, shell
        commands and config files, where a newline starts a new instruction."""
        bad = _CONTROL_RE.search(value)
        if bad is not None:
            raise self.fail(
                path,
                f"must be one line of text, without control characters "
                f"(found {bad.group(0)!r} at {bad.start()})",
            )

    def matched(
        self, value: str, path: KeyPath, *, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> str:
        """*value*, unless *pattern* is given and does not match it."""
        if pattern is not None and not pattern.match(value):
            raise self.fail(path, f"{value!r} is not a valid {what or path[-1]}")
        return value

    def required_string(self, data: Mapping[str, Any], key: str, path: KeyPath, **kw: Any) -> str:
        value = self.string(data, key, path, **kw)
        if value is None or value == "":
            raise self.fail((*path, key), "must not be empty")
        return value

    def integer(self, data: Mapping[str, Any], key: str, path: KeyPath) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail((*path, key), f"must be an integer, not {kind_of(value)}")
        if value < 0:
            raise self.fail((*path, key), "must not be negative")
        return value

    def boolean(self, data: Mapping[str, Any], key: str, path: KeyPath) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise self.fail((*path, key), f"must be true or false, not {kind_of(value)}")
        return value

    def strings(
        self, data: Mapping[str, Any], key: str, path: KeyPath, **match: Any
    ) -> tuple[str, ...]:
        """An array of strings; *match*: the ``pattern`` and ``what`` of :meth:`matched`."""
        value = data.get(key, [])
        if not isinstance(value, list):
            raise self.fail((*path, key), f"must be an array of strings, not {kind_of(value)}")
        for item in value:
            if not isinstance(item, str):
                raise self.fail((*path, key), f"must hold strings only, not {kind_of(item)}")
            self.one_line(item, (*path, key))
            self.matched(item, (*path, key), **match)
        return tuple(value)

    def owner(self, data: Mapping[str, Any], key: str, path: KeyPath) -> str | int:
        value = data.get(key, "root")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.fail((*path, key), f"must be a name or a number, not {kind_of(value)}")
        if isinstance(value, str) and not _ACCOUNT_RE.match(value):
            raise self.fail((*path, key), f"{value!r} is not a valid user or group name")
        if isinstance(value, int) and value < 0:
            raise self.fail((*path, key), "must not be negative")
        return value

    def mode(self, data: Mapping[str, Any], key: str, path: KeyPath, default: int) -> int:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(
                (*path, key), f'must be an octal string such as "0644", not {kind_of(value)}'
            )
        if not _MODE_RE.match(value):
            raise self.fail((*path, key), f'{value!r} is not an octal mode such as "0644"')
        return int(value, 8)

    def abs_path(self, data: Mapping[str, Any], key: str, path: KeyPath) -> str:
        value = self.required_string(data, key, path)
        pure = PurePosixPath(value)
        if not pure.is_absolute() or ".." in pure.parts or str(pure) != value or value == "/":
            raise self.fail((*path, key), f"{value!r} must be a normalized absolute path below /")
        if value == "/usr/etc" or value.startswith("/usr/etc/"):
            raise self.fail((*path, key), "/usr/etc is not part of a bootable image; use /etc")
        return value


_TOP = ("name", "description", "version", "packages", "modules", "groups", "customizations")
_CUSTOM = (
    "hostname",
    "kernel",
    "user",
    "sshkey",
    "group",
    "services",
    "firewall",
    "files",
    "directories",
    "timezone",
    "locale",
    "failover",
)


def _packages(r: _Reader, data: Mapping[str, Any], key: str) -> list[Package]:
    out = []
    for item, path in r.tables(data[key], (key,)):
        table = r.table(item, path, ("name", "version"), ("name",))
        name = r.required_string(table, "name", path, pattern=_PACKAGE_RE, what="package name")
        version = r.string(table, "version", path, pattern=_VERSION_RE, what="version") or "*"
        out.append(Package(name, version))
    return out


def _user(r: _Reader, item: Any, path: KeyPath) -> User:
    known = ("name", "description", "password", "key", "home", "shell", "groups", "uid", "gid")
    t = r.table(item, path, known, ("name",))
    name = r.required_string(t, "name", path, pattern=_ACCOUNT_RE, what="user name")
    user = User(
        name=name,
        description=r.string(t, "description", path),
        password=r.string(t, "password", path),
        key=r.string(t, "key", path),
        home=r.abs_path(t, "home", path) if "home" in t else None,
        shell=r.abs_path(t, "shell", path) if "shell" in t else None,
        groups=r.strings(t, "groups", path, pattern=_ACCOUNT_RE, what="group name"),
        uid=r.integer(t, "uid", path),
        gid=r.integer(t, "gid", path),
    )
    if user.description is not None and ("\n" in user.description or ":" in user.description):
        raise r.fail((*path, "description"), "must be one line without ':'")
    if user.key is not None and "\n" in user.key:
        raise r.fail((*path, "key"), "must be one line")
    if user.password is not None and not user.password_is_hashed:
        if ":" in user.password or "\n" in user.password:
            raise r.fail((*path, "password"), "a password must not contain ':' or a newline")
        r.warn(
            (*path, "password"),
            f"user {name} has a clear-text password: it is hashed at build time, but the "
            "blueprint holds it in the clear; put a hash there (openssl passwd -6)",
        )
    return user


def _customizations(r: _Reader, value: Any) -> Customizations:
    base: KeyPath = ("customizations",)
    c = r.table(value, base, _CUSTOM)
    kernel = None
    if "kernel" in c:
        p = (*base, "kernel")
        k = r.table(c["kernel"], p, ("append", "name"))
        kernel = Kernel(
            append=r.string(k, "append", p) or "",
            name=r.string(k, "name", p, pattern=_PACKAGE_RE, what="package name"),
        )
        if "\n" in kernel.append:
            raise r.fail((*p, "append"), "must be one line")
    users = [_user(r, item, path) for item, path in r.tables(c.get("user", []), (*base, "user"))]
    sshkeys = []
    for item, path in r.tables(c.get("sshkey", []), (*base, "sshkey")):
        t = r.table(item, path, ("user", "key"), ("user", "key"))
        key = r.required_string(t, "key", path)
        if "\n" in key:
            raise r.fail((*path, "key"), "must be one line")
        user = r.required_string(t, "user", path, pattern=_ACCOUNT_RE, what="user name")
        sshkeys.append(SshKey(user, key))
    groups = []
    for item, path in r.tables(c.get("group", []), (*base, "group")):
        t = r.table(item, path, ("name", "gid"), ("name",))
        groups.append(
            Group(
                r.required_string(t, "name", path, pattern=_ACCOUNT_RE, what="group name"),
                r.integer(t, "gid", path),
            )
        )
    services = None
    if "services" in c:
        p = (*base, "services")
        s = r.table(c["services"], p, ("enabled", "disabled", "masked"))
        services = Services(
            *(r.strings(s, k, p, pattern=_UNIT_RE, what="unit name") for k in _SERVICE_KEYS)
        )
    firewall = None
    if "firewall" in c:
        p = (*base, "firewall")
        f = r.table(c["firewall"], p, ("ports", "services"))
        enabled: tuple[str, ...] = ()
        disabled: tuple[str, ...] = ()
        if "services" in f:
            sp = (*p, "services")
            fs = r.table(f["services"], sp, ("enabled", "disabled"))
            enabled = r.strings(fs, "enabled", sp, pattern=_PACKAGE_RE, what="firewall service")
            disabled = r.strings(fs, "disabled", sp, pattern=_PACKAGE_RE, what="firewall service")
        ports = r.strings(f, "ports", p, pattern=_PORT_RE, what='port (write "22:tcp")')
        firewall = Firewall(ports, enabled, disabled)
    files = []
    for item, path in r.tables(c.get("files", []), (*base, "files")):
        t = r.table(item, path, ("path", "data", "mode", "user", "group"), ("path",))
        files.append(
            File(
                path=r.abs_path(t, "path", path),
                data=r.string(t, "data", path, multiline=True) or "",
                mode=r.mode(t, "mode", path, 0o644),
                user=r.owner(t, "user", path),
                group=r.owner(t, "group", path),
            )
        )
    directories = []
    for item, path in r.tables(c.get("directories", []), (*base, "directories")):
        known = ("path", "mode", "user", "group", "ensure_parents")
        t = r.table(item, path, known, ("path",))
        directories.append(
            Directory(
                path=r.abs_path(t, "path", path),
                mode=r.mode(t, "mode", path, 0o755),
                user=r.owner(t, "user", path),
                group=r.owner(t, "group", path),
                ensure_parents=r.boolean(t, "ensure_parents", path),
            )
        )
    timezone = None
    if "timezone" in c:
        p = (*base, "timezone")
        tz = r.table(c["timezone"], p, ("timezone", "ntpservers"))
        timezone = Timezone(
            r.string(tz, "timezone", p, pattern=_TIMEZONE_RE, what="time zone"),
            r.strings(tz, "ntpservers", p, pattern=_HOSTNAME_RE, what="server name"),
        )
    locale = None
    if "locale" in c:
        p = (*base, "locale")
        lc = r.table(c["locale"], p, ("languages", "keyboard"))
        locale = Locale(
            r.strings(lc, "languages", p, pattern=_LOCALE_RE, what="locale"),
            r.string(lc, "keyboard", p, pattern=_LOCALE_RE, what="keyboard layout"),
        )
    failover = False
    if "failover" in c:
        p = (*base, "failover")
        failover = r.boolean(r.table(c["failover"], p, ("enabled",)), "enabled", p)
    return Customizations(
        hostname=r.string(c, "hostname", base, pattern=_HOSTNAME_RE, what="host name"),
        kernel=kernel,
        users=tuple(users),
        sshkeys=tuple(sshkeys),
        groups=tuple(groups),
        services=services,
        firewall=firewall,
        files=tuple(files),
        directories=tuple(directories),
        timezone=timezone,
        locale=locale,
        failover=failover,
    )


_SERVICE_KEYS = ("enabled", "disabled", "masked")


def _check_unique(r: _Reader, items: Sequence[T], key: Callable[[T], str], path: KeyPath) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = key(item)
        if name in seen:
            raise r.fail((*path, i), f"{name!r} is listed twice")
        seen.add(name)


def parse_blueprint_dict(
    data: Mapping[str, Any], *, source: str = "blueprint", lines: KeyLines | None = None
) -> Blueprint:
    """Validate the parsed TOML of a blueprint; errors name *source* and, with
    *lines*, the line."""
    r = _Reader(source, lines)
    top = r.table(dict(data), (), _TOP, ("name",))
    name = r.required_string(top, "name", ())
    packages: list[Package] = []
    for key in ("packages", "modules"):
        if key in top:
            packages.extend(_packages(r, top, key))
    package_groups = []
    for item, path in r.tables(top.get("groups", []), ("groups",)):
        t = r.table(item, path, ("name",), ("name",))
        package_groups.append(r.required_string(t, "name", path))
    custom = _customizations(r, top["customizations"]) if "customizations" in top else None
    if custom is not None:
        base: KeyPath = ("customizations",)
        _check_unique(r, custom.users, lambda u: u.name, (*base, "user"))
        _check_unique(r, custom.groups, lambda g: g.name, (*base, "group"))
        _check_unique(r, custom.files, lambda f: f.path, (*base, "files"))
        _check_unique(r, custom.directories, lambda d: d.path, (*base, "directories"))
    return Blueprint(
        name=name,
        # A label, written as a JSON string: newlines are escaped there.
        description=r.string(top, "description", (), multiline=True) or "",
        version=r.string(top, "version", (), pattern=_IMAGE_VERSION_RE, what="version"),
        packages=tuple(packages),
        package_groups=tuple(package_groups),
        customizations=custom or Customizations(),
        warnings=tuple(r.warnings),
    )


def parse_blueprint(text: str, source: str = "blueprint") -> Blueprint:
    """Parse and validate a blueprint's TOML text."""
    try:
        data = stricttoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BlueprintError(toml_syntax_error(source, exc)) from None
    return parse_blueprint_dict(data, source=source, lines=KeyLines(text))


def load_blueprint(path: Path) -> Blueprint:
    """Read and validate the blueprint file at *path*."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise from_oserror(exc, f"blueprint {path}") from exc
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise BlueprintError(f"{path}: not UTF-8 text") from None
    return parse_blueprint(text, str(path))
