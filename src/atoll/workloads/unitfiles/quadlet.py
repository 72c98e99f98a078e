"""Quadlet unit files: ``.container``, ``.pod``, ``.volume``, ``.network``, ``.image``.

The format is systemd's INI dialect (systemd.syntax(7)) with the keys of
podman-systemd.unit(5)::

    # comment                    '#' or ';' at the start of a line
    [Container]                  the kind's own section; [Unit], [Service] and
    Image=quay.io/a/b:1          [Install] are kept and passed through
    Environment=A=1 "B=two words"      repeated keys append (list keys) or
    Environment=C=3                    replace (single-value keys)
    Exec=/bin/sh -c \\            a trailing backslash continues the line
         'echo hi'
    Label=                       an empty value resets a list key

Where units are found (the first directory that has a name wins)::

    system:   /run/containers/systemd  /etc/containers/systemd
              /usr/share/containers/systemd
    rootless: $XDG_RUNTIME_DIR/containers/systemd
              $XDG_CONFIG_HOME/containers/systemd
              /etc/containers/systemd/users/$UID  /etc/containers/systemd/users

Drop-ins ``NAME.KIND.d/*.conf`` are read from every directory (for the same
file name the first directory wins), sorted by file name, after the unit.
Unknown keys give a warning naming the file and line, never an error.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.errors import QuadletUnitError, from_oserror

log = logging.getLogger(__name__)

SYSTEM_DIRS = (
    Path("/run/containers/systemd"),
    Path("/etc/containers/systemd"),
    Path("/usr/share/containers/systemd"),
)
PASSTHROUGH_SECTIONS = ("Unit", "Service", "Install")


class UnitKind(StrEnum):
    CONTAINER = "container"
    POD = "pod"
    VOLUME = "volume"
    NETWORK = "network"
    IMAGE = "image"

    @property
    def section(self) -> str:
        return self.value.capitalize()

    def service_name(self, stem: str) -> str:
        """The name of the ``.service`` Quadlet writes for the unit *stem*.KIND."""
        if self is UnitKind.CONTAINER:
            return f"{stem}.service"
        return f"{stem}-{self.value}.service"


class ValueKind(StrEnum):
    STRING = "string"  # single value, the last assignment wins
    BOOL = "bool"  # single value, systemd boolean
    WORDS = "words"  # list: each assignment split into words, appended
    LIST = "list"  # list: each assignment kept whole, appended


@dataclass(frozen=True)
class KeySpec:
    key: str
    kind: ValueKind
    help: str

    @property
    def field(self) -> str:
        special = {"Exec": "exec_", "IPv6": "ipv6", "DisableDNS": "disable_dns", "OS": "os"}
        if self.key in special:
            return special[self.key]
        return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", self.key.replace("TLS", "Tls")).lower()


S, B, W, L = ValueKind.STRING, ValueKind.BOOL, ValueKind.WORDS, ValueKind.LIST

#: The keys atoll honours, per kind: this table drives parsing, generation and docs.
KEYS: Mapping[UnitKind, tuple[KeySpec, ...]] = {
    UnitKind.CONTAINER: (
        KeySpec("Image", S, "image to run, or NAME.image"),
        KeySpec("ContainerName", S, "container name (default systemd-%N)"),
        KeySpec("Exec", S, "command and arguments after the image"),
        KeySpec("Entrypoint", S, "--entrypoint"),
        KeySpec("Environment", W, "--env KEY=VALUE, several per line"),
        KeySpec("EnvironmentFile", W, "--env-file (relative to the unit's directory)"),
        KeySpec("PublishPort", L, "--publish"),
        KeySpec("Volume", L, "-v; SRC may be NAME.volume or a host path"),
        KeySpec("Network", L, "--network; NAME.network adds a dependency"),
        KeySpec("Pod", S, "NAME.pod to join"),
        KeySpec("Label", W, "--label KEY=VALUE"),
        KeySpec("Annotation", W, "--annotation KEY=VALUE"),
        KeySpec("User", S, "--user USER[:GROUP]"),
        KeySpec("Group", S, "the GROUP of --user (needs User)"),
        KeySpec("WorkingDir", S, "--workdir"),
        KeySpec("HealthCmd", S, "--health-cmd"),
        KeySpec("HealthInterval", S, "--health-interval"),
        KeySpec("HealthRetries", S, "--health-retries"),
        KeySpec("HealthStartPeriod", S, "--health-start-period"),
        KeySpec("HealthTimeout", S, "--health-timeout"),
        KeySpec("HealthOnFailure", S, "--health-on-failure"),
        KeySpec("Notify", S, "true: --sdnotify=container; healthy: --sdnotify=healthy"),
        KeySpec("AutoUpdate", S, "--label io.containers.autoupdate=VALUE"),
        KeySpec("PodmanArgs", W, "extra arguments to podman run, before the image"),
        KeySpec("ReadOnly", B, "--read-only"),
        KeySpec("Secret", W, "--secret"),
        KeySpec("AddCapability", W, "--cap-add (lower-cased)"),
        KeySpec("DropCapability", W, "--cap-drop (lower-cased)"),
        KeySpec("Tmpfs", L, "--tmpfs"),
        KeySpec("Timezone", S, "--tz"),
        KeySpec("RunInit", B, "--init"),
        KeySpec("StopTimeout", S, "--stop-timeout"),
        KeySpec("HostName", S, "--hostname"),
        KeySpec("NoNewPrivileges", B, "--security-opt=no-new-privileges"),
    ),
    UnitKind.POD: (
        KeySpec("PodName", S, "pod name (default systemd-NAME)"),
        KeySpec("PublishPort", L, "--publish"),
        KeySpec("Network", L, "--network; NAME.network adds a dependency"),
        KeySpec("Volume", L, "-v; SRC may be NAME.volume or a host path"),
        KeySpec("PodmanArgs", W, "extra arguments to podman pod create"),
    ),
    UnitKind.VOLUME: (
        KeySpec("VolumeName", S, "volume name (default systemd-NAME)"),
        KeySpec("Driver", S, "--driver"),
        KeySpec("Label", W, "--label KEY=VALUE"),
        KeySpec("PodmanArgs", W, "extra arguments to podman volume create"),
    ),
    UnitKind.NETWORK: (
        KeySpec("NetworkName", S, "network name (default systemd-NAME)"),
        KeySpec("Driver", S, "--driver"),
        KeySpec("Subnet", L, "--subnet"),
        KeySpec("Gateway", L, "--gateway (one per Subnet)"),
        KeySpec("Internal", B, "--internal"),
        KeySpec("IPv6", B, "--ipv6"),
        KeySpec("DisableDNS", B, "--disable-dns"),
        KeySpec("Label", W, "--label KEY=VALUE"),
        KeySpec("PodmanArgs", W, "extra arguments to podman network create"),
    ),
    UnitKind.IMAGE: (
        KeySpec("Image", S, "image to pull"),
        KeySpec("ImageTag", S, "name other units use for it (default Image)"),
        KeySpec("AllTags", B, "--all-tags"),
        KeySpec("Arch", S, "--arch"),
        KeySpec("OS", S, "--os"),
        KeySpec("TLSVerify", B, "--tls-verify"),
        KeySpec("PodmanArgs", W, "extra arguments to podman image pull"),
    ),
}

#: Keys podman 5 knows that atoll does not honour yet: a warning, not an error.
PODMAN_ONLY_KEYS: Mapping[UnitKind, frozenset[str]] = {
    UnitKind.CONTAINER: frozenset(
        [
            "AddDevice",
            "AddHost",
            "CgroupsMode",
            "ContainersConfModule",
            "DNS",
            "DNSOption",
            "DNSSearch",
            "EnvironmentHost",
            "ExposeHostPort",
            "GIDMap",
            "GlobalArgs",
            "GroupAdd",
            "HealthLogDestination",
            "HealthMaxLogCount",
            "HealthMaxLogSize",
            "HealthStartupCmd",
            "HealthStartupInterval",
            "HealthStartupRetries",
            "HealthStartupSuccess",
            "HealthStartupTimeout",
            "IP",
            "IP6",
            "LogDriver",
            "LogOpt",
            "Mask",
            "Memory",
            "Mount",
            "NetworkAlias",
            "PidsLimit",
            "Pull",
            "ReadOnlyTmpfs",
            "ReloadCmd",
            "ReloadSignal",
            "RemapGid",
            "RemapUid",
            "RemapUidSize",
            "RemapUsers",
            "Retry",
            "RetryDelay",
            "Rootfs",
            "SeccompProfile",
            "SecurityLabelDisable",
            "SecurityLabelFileType",
            "SecurityLabelLevel",
            "SecurityLabelNested",
            "SecurityLabelType",
            "ServiceName",
            "ShmSize",
            "StartWithPod",
            "StopSignal",
            "SubGIDMap",
            "SubUIDMap",
            "Sysctl",
            "UIDMap",
            "Ulimit",
            "Unmask",
            "UserNS",
            "VolatileTmp",
        ]
    ),
    UnitKind.POD: frozenset(
        [
            "AddHost",
            "ContainersConfModule",
            "DNS",
            "DNSOption",
            "DNSSearch",
            "ExitPolicy",
            "GIDMap",
            "GlobalArgs",
            "HostName",
            "IP",
            "IP6",
            "Label",
            "NetworkAlias",
            "ServiceName",
            "ShmSize",
            "SubGIDMap",
            "SubUIDMap",
            "UIDMap",
            "UserNS",
        ]
    ),
    UnitKind.VOLUME: frozenset(
        [
            "ContainersConfModule",
            "Copy",
            "Device",
            "GlobalArgs",
            "Group",
            "Image",
            "Options",
            "ServiceName",
            "Type",
            "User",
        ]
    ),
    UnitKind.NETWORK: frozenset(
        [
            "ContainersConfModule",
            "DNS",
            "GlobalArgs",
            "IPAMDriver",
            "IPRange",
            "InterfaceName",
            "NetworkDeleteOnStop",
            "Options",
            "ServiceName",
        ]
    ),
    UnitKind.IMAGE: frozenset(
        [
            "AuthFile",
            "CertDir",
            "ContainersConfModule",
            "Creds",
            "DecryptionKey",
            "GlobalArgs",
            "Retry",
            "RetryDelay",
            "ServiceName",
            "Variant",
        ]
    ),
}


@dataclass(frozen=True)
class Entry:
    """One ``Key=Value`` assignment, with where it was written."""

    key: str
    value: str
    path: Path
    line: int


@dataclass(frozen=True)
class ParseWarning:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class ContainerOptions:
    image: str | None = None
    container_name: str | None = None
    exec_: str | None = None
    entrypoint: str | None = None
    environment: tuple[str, ...] = ()
    environment_file: tuple[str, ...] = ()
    publish_port: tuple[str, ...] = ()
    volume: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    pod: str | None = None
    label: tuple[str, ...] = ()
    annotation: tuple[str, ...] = ()
    user: str | None = None
    group: str | None = None
    working_dir: str | None = None
    health_cmd: str | None = None
    health_interval: str | None = None
    health_retries: str | None = None
    health_start_period: str | None = None
    health_timeout: str | None = None
    health_on_failure: str | None = None
    notify: str | None = None
    auto_update: str | None = None
    podman_args: tuple[str, ...] = ()
    read_only: bool | None = None
    secret: tuple[str, ...] = ()
    add_capability: tuple[str, ...] = ()
    drop_capability: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    timezone: str | None = None
    run_init: bool | None = None
    stop_timeout: str | None = None
    host_name: str | None = None
    no_new_privileges: bool | None = None


@dataclass(frozen=True)
class PodOptions:
    pod_name: str | None = None
    publish_port: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    volume: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class VolumeOptions:
    volume_name: str | None = None
    driver: str | None = None
    label: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkOptions:
    network_name: str | None = None
    driver: str | None = None
    subnet: tuple[str, ...] = ()
    gateway: tuple[str, ...] = ()
    internal: bool | None = None
    ipv6: bool | None = None
    disable_dns: bool | None = None
    label: tuple[str, ...] = ()
    podman_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageOptions:
    image: str | None = None
    image_tag: str | None = None
    all_tags: bool | None = None
    arch: str | None = None
    os: str | None = None
    tls_verify: bool | None = None
    podman_args: tuple[str, ...] = ()


Options = ContainerOptions | PodOptions | VolumeOptions | NetworkOptions | ImageOptions
_OPTION_CLASSES: Mapping[UnitKind, type[Any]] = {
    UnitKind.CONTAINER: ContainerOptions,
    UnitKind.POD: PodOptions,
    UnitKind.VOLUME: VolumeOptions,
    UnitKind.NETWORK: NetworkOptions,
    UnitKind.IMAGE: ImageOptions,
}


@dataclass(frozen=True)
class QuadletUnit:
    """A unit file with its drop-ins merged, validated and typed."""

    name: str  # e.g. "web.container"
    kind: UnitKind
    path: Path
    options: Options
    dropins: tuple[Path, ...] = ()
    #: [Unit], [Service] and [Install] assignments, in file order, passed through.
    passthrough: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def service_name(self) -> str:
        return self.kind.service_name(self.stem)


@dataclass(frozen=True)
class LoadResult:
    units: tuple[QuadletUnit, ...]
    warnings: tuple[ParseWarning, ...]

    def by_name(self) -> dict[str, QuadletUnit]:
        return {u.name: u for u in self.units}


_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "s": " ", "\\": "\\", '"': '"', "'": "'", " ": " ",
}  # fmt: skip
#: The hexadecimal escapes of systemd's cunescape(), and their digits.
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_OCTAL = "01234567"


def _unescape(value: str, at: int) -> tuple[str, int]:
    """The character the escape at *value[at]* (just after a backslash) stands for,
    and where the text goes on; as systemd reads it, so that what the generator
    writes as \\xNN (a control character in an Exec= word) reads back the same."""
    c = value[at]
    length = _HEX_DIGITS.get(c, 0)
    if length:
        digits = value[at + 1 : at + 1 + length]
        if len(digits) == length and all(d in "0123456789abcdefABCDEF" for d in digits):
            code = int(digits, 16)
            if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
                return chr(code), at + 1 + length
    elif c in _OCTAL:
        digits = value[at : at + 3]
        if len(digits) == 3 and all(d in _OCTAL for d in digits) and int(digits, 8) < 256:
            return chr(int(digits, 8)), at + 3
    return _ESCAPES.get(c, c), at + 1


def split_words(value: str) -> list[str]:
    """Split *value* into words as systemd does: quotes group, backslash escapes."""
    words: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t\n":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        quote: str | None = None
        while i < n:
            c = value[i]
            if c == "\\" and i + 1 < n:
                decoded, i = _unescape(value, i + 1)
                word.append(decoded)
                continue
            if quote:
                if c == quote:
                    quote = None
                else:
                    word.append(c)
            elif c in "\"'":
                quote = c
            elif c in " \t\n":
                break
            else:
                word.append(c)
            i += 1
        words.append("".join(word))
    return words


def parse_bool(entry: Entry) -> bool:
    lowered = entry.value.lower()
    if lowered in ("1", "yes", "y", "true", "t", "on"):
        return True
    if lowered in ("0", "no", "n", "false", "f", "off"):
        return False
    raise QuadletUnitError(
        f"{entry.path}:{entry.line}: {entry.key}={entry.value} is not a boolean",
        hint="write true or false",
    )


def read_sections(path: Path, warnings: list[ParseWarning]) -> list[tuple[str, Entry]]:
    """The ``(section, entry)`` pairs of one file, in order."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QuadletUnitError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise from_oserror(exc, str(path)) from exc
    if "\0" in text:
        # No value can hold one (a path or an argument ends at it): not a unit file.
        nul_line = text.count("\n", 0, text.index("\0")) + 1
        raise QuadletUnitError(f"{path}:{nul_line}: a NUL byte: not a text file")
    result: list[tuple[str, Entry]] = []
    section: str | None = None
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if pending and stripped[:1] in ("#", ";"):
            continue  # systemd skips comment lines inside a continuation
        if not pending:
            start = number
            if not stripped or stripped[0] in "#;":
                continue
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        line = " ".join([*pending, stripped]) if pending else stripped
        pending = []
        if line.startswith("["):
            if not line.endswith("]"):
                raise QuadletUnitError(f"{path}:{start}: section header {line!r} has no ']'")
            section = line[1:-1].strip()
            continue
        key, eq, value = line.partition("=")
        if not eq:
            warnings.append(ParseWarning(path, start, f"line is not Key=Value, ignored: {line!r}"))
            continue
        if section is None:
            warnings.append(ParseWarning(path, start, f"{key.strip()} is outside any section"))
            continue
        result.append((section, Entry(key.strip(), value.strip(), path, start)))
    if pending:
        warnings.append(ParseWarning(path, start, "file ends in a line continuation"))
    return result


def _fold(
    kind: UnitKind, entries: Iterable[tuple[str, Entry]], warnings: list[ParseWarning]
) -> tuple[Options, dict[str, tuple[Entry, ...]]]:
    specs = {s.key: s for s in KEYS[kind]}
    values: dict[str, Any] = {}
    passthrough: dict[str, list[Entry]] = {}
    for section, entry in entries:
        if section in PASSTHROUGH_SECTIONS:
            passthrough.setdefault(section, []).append(entry)
            continue
        if section != kind.section:
            warnings.append(
                ParseWarning(entry.path, entry.line, f"section [{section}] is not used, ignored")
            )
            continue
        spec = specs.get(entry.key)
        if spec is None:
            why = (
                "is a podman key atoll does not support yet"
                if entry.key in PODMAN_ONLY_KEYS[kind]
                else f"is not a key of [{kind.section}]"
            )
            warnings.append(ParseWarning(entry.path, entry.line, f"{entry.key} {why}, ignored"))
            continue
        name = spec.field
        if spec.kind in (ValueKind.WORDS, ValueKind.LIST):
            if not entry.value:
                values[name] = ()  # an empty assignment resets the list
            elif spec.kind is ValueKind.WORDS:
                values[name] = (*values.get(name, ()), *split_words(entry.value))
            else:
                values[name] = (*values.get(name, ()), entry.value)
        elif not entry.value:
            values.pop(name, None)
        elif spec.kind is ValueKind.BOOL:
            values[name] = parse_bool(entry)
        else:
            values[name] = entry.value
    options: Options = _OPTION_CLASSES[kind](**values)
    return options, {k: tuple(v) for k, v in passthrough.items()}


def default_roots(*, user: bool = False) -> tuple[Path, ...]:
    """The directories podman's Quadlet reads, in order of precedence."""
    if not user:
        return SYSTEM_DIRS
    home = Path(os.environ.get("HOME", "/root"))
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}")
    return (
        runtime / "containers/systemd",
        config / "containers/systemd",
        Path(f"/etc/containers/systemd/users/{os.getuid()}"),
        Path("/etc/containers/systemd/users"),
    )


def _kind_of(name: str) -> UnitKind | None:
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    try:
        return UnitKind(suffix)
    except ValueError:
        return None


def _dropins(name: str, roots: Sequence[Path]) -> list[Path]:
    chosen: dict[str, Path] = {}
    for root in roots:
        directory = root / f"{name}.d"
        if directory.is_dir():
            for conf in directory.glob("*.conf"):
                chosen.setdefault(conf.name, conf)
    return [chosen[k] for k in sorted(chosen)]


def parse_unit(path: Path, dropins: Sequence[Path] = ()) -> tuple[QuadletUnit, list[ParseWarning]]:
    """Parse one unit file and its drop-ins (already in the order to apply them)."""
    kind = _kind_of(path.name)
    if kind is None:
        raise QuadletUnitError(
            f"{path}: not a Quadlet unit",
            hint="name it NAME.container, .pod, .volume, .network or .image",
        )
    warnings: list[ParseWarning] = []
    entries = read_sections(path, warnings)
    for dropin in dropins:
        entries.extend(read_sections(dropin, warnings))
    options, passthrough = _fold(kind, entries, warnings)
    unit = QuadletUnit(path.name, kind, path, options, tuple(dropins), passthrough)
    return unit, warnings


def load_units(roots: Sequence[Path] | None = None, *, user: bool = False) -> LoadResult:
    """Every unit under *roots* (default: podman's directories), drop-ins merged."""
    search = tuple(roots) if roots is not None else default_roots(user=user)
    found: dict[str, Path] = {}
    for root in search:
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if _kind_of(path.name) is not None and path.is_file():
                found.setdefault(path.name, path)
    units: list[QuadletUnit] = []
    warnings: list[ParseWarning] = []
    for name in sorted(found):
        unit, unit_warnings = parse_unit(found[name], _dropins(name, search))
        units.append(unit)
        warnings.extend(unit_warnings)
    for warning in warnings:
        log.warning("%s", warning)
    return LoadResult(tuple(units), tuple(warnings))
