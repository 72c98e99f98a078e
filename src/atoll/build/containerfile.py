"""Build steps: a blueprint as a Containerfile, and what atoll adds to every image it builds.

A blueprint build's context directory, as :func:`write_context` lays it out::

    CONTEXT/
    ├── Containerfile           FROM the base, then one step per customization
    ├── files/N                 the data of [[customizations.files]] entry N
    └── units/NAME              atoll-failover-config.service, with failover

The steps, in this order: labels; packages (``apt-get`` on Debian-family bases,
``dnf`` on Fedora/RHEL-family ones, told apart by ``ID``/``ID_LIKE`` in the
base's os-release); groups; users and their SSH keys; host name; time zone;
locale; kernel arguments; directories; files; services; firewall; the atoll
step; and, for ``[customizations.failover]``, atoll's failover unit (copied from
``units/``) enabled with keepalived's (keepalived joins the packages).

The atoll step (:data:`ATOLL_STEP`) runs ``add.sh`` from a second build context,
the additions directory :func:`write_additions` fills from atoll's own package::

    ADDITIONS/
    ├── add.sh                  copies in what the image lacks; never replaces a file
    ├── atoll/                  atoll itself: usr/lib/python3/dist-packages/atoll, usr/bin/atoll
    ├── units/                  atoll's systemd units and their enablement symlinks
    └── boot/debian/, boot/fedora/
                                the early-boot files of atoll's package (atoll/boot/files,
                                laid out as in an image), without the other family's
                                initramfs generator directory; copied in when the
                                image lacks the family's hook (HOOK_PATHS)

``add.sh`` prints ``atoll-additions: added WHAT`` for each part it adds, and
compiles atoll's modules with the image's python3 (hash-checked bytecode, which
stays valid on a device).  It
also installs, with the image's own package manager (apt-get or dnf), the
distribution packages atoll imports on a device (:data:`atoll.requires.DEVICE_PACKAGES`:
python3-httpx, python3-zstandard, python3-cryptography) when the image's python3
cannot import them; where that fails it warns and the build goes on.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path

from atoll.build.blueprint import Blueprint, Directory, File, User
from atoll.errors import BaseImageError, BlueprintError
from atoll.requires import DEVICE_PACKAGES, DEVICE_REQUIREMENTS
from atoll.units import (
    ATOLL_PACKAGE,
    FAILOVER_UNITS,
    UNIT_DIR,
    UNITS,
    install_units,
    unit_text,
)


class Family(StrEnum):
    """Distribution families a blueprint build knows how to customize."""

    DEBIAN = "debian"
    FEDORA = "fedora"


#: os-release IDs (ID or an ID_LIKE word) of each family.
FAMILY_IDS: Mapping[Family, frozenset[str]] = {
    Family.DEBIAN: frozenset({"debian", "ubuntu"}),
    Family.FEDORA: frozenset({"fedora", "rhel", "centos"}),
}
#: atoll's early-boot hook in an image, by family (the lint looks for these).
HOOK_PATHS: Mapping[Family, str] = {
    Family.DEBIAN: "usr/share/initramfs-tools/hooks/atoll",
    Family.FEDORA: "usr/lib/dracut/modules.d/50atoll/module-setup.sh",
}
#: The build context name and mount point of the additions directory.
ADDITIONS_CONTEXT = "atoll-additions"
ADDITIONS_MOUNT = "/run/atoll-additions"
ATOLL_STEP = (
    f"RUN --mount=type=bind,from={ADDITIONS_CONTEXT},target={ADDITIONS_MOUNT} "
    f"sh {ADDITIONS_MOUNT}/add.sh"
)
#: bootc's directory of kernel argument files; the blueprint's go in this one.
KARGS_FILE = "/usr/lib/bootc/kargs.d/10-blueprint.toml"
#: What ``[customizations.failover] enabled = true`` adds: the distribution's
#: keepalived, and atoll's unit that writes its configuration.
FAILOVER_PACKAGE = "keepalived"
(FAILOVER_UNIT,) = FAILOVER_UNITS
LAUNCHER = """\
#!/usr/bin/python3
import sys

# Where atoll build puts atoll, on every distribution family.
sys.path.insert(0, "/usr/lib/python3/dist-packages")
from atoll.cli.main import main

sys.exit(main())
"""


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): KEY=VALUE lines, values optionally quoted."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value]
        out[key.strip()] = words[0] if words else ""
    return out


def family_of(os_release: Mapping[str, str], where: str) -> Family:
    """The family of a distribution from its os-release ID and ID_LIKE."""
    ids = [os_release.get("ID", ""), *os_release.get("ID_LIKE", "").split()]
    for ident in ids:
        for family, known in FAMILY_IDS.items():
            if ident in known:
                return family
    shown = " ".join(i for i in ids if i) or "none"
    raise BaseImageError(
        f"{where}: os-release names a distribution atoll cannot customize (ID/ID_LIKE: {shown})",
        hint="blueprint builds support Debian-family (apt) and Fedora/RHEL-family (dnf) bases; "
        "use a Containerfile for others",
    )


# --- the blueprint's steps ---------------------------------------------------------------


@dataclass(frozen=True)
class ContextFile:
    path: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class BuildContext:
    """What a blueprint build runs: the Containerfile and the files it copies."""

    containerfile: str
    files: tuple[ContextFile, ...] = ()


def _q(value: str | int) -> str:
    return shlex.quote(str(value))


def _owner(user: str | int, group: str | int) -> str:
    return f"{user}:{group}"


def _label(key: str, value: str) -> str:
    # A double-quoted word of a Containerfile takes JSON's escapes for quotes and
    # backslashes, but expands $NAME: written \$, a dollar stays a dollar.
    return key + "=" + _json_string(value).replace("$", "\\$")


def _json_string(value: str) -> str:
    return json.dumps(value)


def _toml_string(value: str) -> str:
    # A TOML basic string is a JSON string, except that TOML has no surrogate
    # escapes (\ud83d\ude00): non-ASCII text is written as itself.
    return json.dumps(value, ensure_ascii=False)


def _package_steps(bp: Blueprint, family: Family) -> list[str]:
    names = []
    for package in bp.packages:
        if package.version in ("", "*"):
            names.append(package.name)
        elif family is Family.DEBIAN:
            names.append(f"{package.name}={package.version}")
        else:
            names.append(f"{package.name}-{package.version}")
    kernel = bp.customizations.kernel
    if kernel is not None and kernel.name:
        names.append(kernel.name)
    if bp.customizations.failover and FAILOVER_PACKAGE not in (p.name for p in bp.packages):
        names.append(FAILOVER_PACKAGE)
    steps = []
    if family is Family.DEBIAN:
        if bp.package_groups:
            raise BlueprintError(
                f"blueprint {bp.name}: [[groups]] (package groups) are a dnf feature; "
                "the base is Debian-family",
                hint="list the packages in [[packages]] instead",
            )
        if names:
            steps.append(
                "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                f"--no-install-recommends {' '.join(_q(n) for n in names)} && "
                "apt-get clean && rm -rf /var/lib/apt/lists/*"
            )
        return steps
    if names:
        steps.append(f"RUN dnf install -y {' '.join(_q(n) for n in names)} && dnf clean all")
    for group in bp.package_groups:
        steps.append(f"RUN dnf group install -y {_q(group)} && dnf clean all")
    return steps


def _user_step(user: User, hash_password: Callable[[str], str]) -> str:
    args = ["useradd", "-m"]
    if user.description is not None:
        args += ["-c", user.description]
    if user.home is not None:
        args += ["-d", user.home]
    if user.shell is not None:
        args += ["-s", user.shell]
    if user.uid is not None:
        args += ["-u", str(user.uid)]
    if user.gid is not None:
        args += ["-g", str(user.gid)]
    if user.groups:
        args += ["-G", ",".join(user.groups)]
    args.append(user.name)
    command = " ".join(_q(a) for a in args)
    if user.password is not None:
        hashed = user.password if user.password_is_hashed else hash_password(user.password)
        command += f" && usermod -p {_q(hashed)} {_q(user.name)}"
    return f"RUN {command}"


def _ssh_key_step(user: str, key: str) -> str:
    # The home directory is the account's, wherever useradd (or the base) put it.
    script = (
        f"home=$(getent passwd {_q(user)} | cut -d: -f6) && "
        f'test -n "$home" && install -d -m 700 -o {_q(user)} -g "$(id -gn {_q(user)})" '
        f'"$home/.ssh" && printf "%s\\n" {_q(key)} >> "$home/.ssh/authorized_keys" && '
        f'chown {_q(user)}:"$(id -gn {_q(user)})" "$home/.ssh/authorized_keys" && '
        f'chmod 600 "$home/.ssh/authorized_keys"'
    )
    return f"RUN {script}"


def _directory_step(d: Directory) -> str:
    make = (
        f"mkdir -p {_q(d.path)}"
        if d.ensure_parents
        else f"{{ [ -d {_q(d.path)} ] || mkdir {_q(d.path)}; }}"
    )
    return (
        f"RUN {make} && chmod {d.mode:04o} {_q(d.path)} && "
        f"chown {_q(_owner(d.user, d.group))} {_q(d.path)}"
    )


def _file_step(index: int, f: File) -> str:
    # The JSON form keeps spaces in the path; its words still expand $NAME and
    # take backslash escapes, so both are escaped for the path to stay as written.
    path = f.path.replace("\\", "\\\\").replace("$", "\\$")
    return f"COPY --chown={_owner(f.user, f.group)} --chmod={f.mode:04o} " + json.dumps(
        [f"files/{index}", path]
    )


def _firewall_step(bp: Blueprint) -> str | None:
    fw = bp.customizations.firewall
    if fw is None or not (fw.ports or fw.services_enabled or fw.services_disabled):
        return None
    args = [f"--add-port={p.replace(':', '/')}" for p in fw.ports if p.split(":")[0][0].isdigit()]
    # A port named by service ("imap:tcp") is the service's port: firewalld adds it by name.
    args += [f"--add-service={p.split(':')[0]}" for p in fw.ports if not p[0].isdigit()]
    args += [f"--add-service={s}" for s in fw.services_enabled]
    args += [f"--remove-service={s}" for s in fw.services_disabled]
    check = (
        "command -v firewall-offline-cmd >/dev/null || { echo 'atoll: "
        "[customizations.firewall] needs firewalld in the image: add it to [[packages]]' >&2; "
        "exit 1; }"
    )
    return f"RUN {check} && firewall-offline-cmd {' '.join(_q(a) for a in args)}"


def blueprint_context(
    bp: Blueprint,
    base: str,
    family: Family,
    *,
    hash_password: Callable[[str], str],
    add_atoll: bool = True,
) -> BuildContext:
    """The Containerfile (and the files it copies) that builds *bp* on *base*."""
    c = bp.customizations
    lines = [f"# Blueprint {bp.name}" + (f" {bp.version}" if bp.version else ""), f"FROM {base}"]
    labels = [_label("containers.bootc", "1"), _label("org.opencontainers.image.title", bp.name)]
    if bp.version:
        labels.append(_label("org.opencontainers.image.version", bp.version))
    if bp.description:
        labels.append(_label("org.opencontainers.image.description", bp.description))
    lines.append("LABEL " + " ".join(labels))
    lines += _package_steps(bp, family)
    for group in c.groups:
        gid = f"-g {group.gid} " if group.gid is not None else ""
        lines.append(
            f"RUN getent group {_q(group.name)} >/dev/null || groupadd {gid}{_q(group.name)}"
        )
    for user in c.users:
        lines.append(_user_step(user, hash_password))
        if user.key:
            lines.append(_ssh_key_step(user.name, user.key))
    for sshkey in c.sshkeys:
        lines.append(_ssh_key_step(sshkey.user, sshkey.key))
    if c.hostname is not None:
        lines.append(f"RUN echo {_q(c.hostname)} > /etc/hostname")
    if c.timezone is not None:
        tz = c.timezone.timezone
        if tz is not None:
            zone = f"/usr/share/zoneinfo/{tz}"
            lines.append(
                f"RUN test -e {_q(zone)} || {{ echo 'atoll: no time zone {tz} in the image "
                f"(is tzdata installed?)' >&2; exit 1; }}; ln -sf {_q('..' + zone)} "
                f"/etc/localtime && echo {_q(tz)} > /etc/timezone"
            )
        if c.timezone.ntpservers:
            conf = "[Time]\\nNTP=" + " ".join(c.timezone.ntpservers) + "\\n"
            lines.append(
                "RUN mkdir -p /etc/systemd/timesyncd.conf.d && "
                f"printf {_q(conf)} > /etc/systemd/timesyncd.conf.d/50-blueprint.conf"
            )
    if c.locale is not None:
        lines += _locale_steps(c.locale.languages, c.locale.keyboard, family)
    if c.kernel is not None and c.kernel.append:
        kargs = "kargs = [" + ", ".join(_toml_string(a) for a in c.kernel.append.split()) + "]"
        lines.append(
            f"RUN mkdir -p {_q(str(Path(KARGS_FILE).parent))} && "
            f"printf '%s\\n' {_q(kargs)} > {KARGS_FILE}"
        )
    for directory in c.directories:
        lines.append(_directory_step(directory))
    files = []
    for i, f in enumerate(c.files):
        files.append(ContextFile(f"files/{i}", f.data.encode(), f.mode))
        lines.append(_file_step(i, f))
    if c.services is not None:
        s = c.services
        for verb, units in (("enable", s.enabled), ("disable", s.disabled), ("mask", s.masked)):
            if units:
                lines.append(f"RUN systemctl {verb} {' '.join(_q(u) for u in units)}")
    firewall = _firewall_step(bp)
    if firewall is not None:
        lines.append(firewall)
    if add_atoll:
        lines.append(ATOLL_STEP)
    if c.failover:
        files.append(
            ContextFile(f"units/{FAILOVER_UNIT}", unit_text(FAILOVER_UNIT).encode(), 0o644)
        )
        lines.append(f"COPY --chmod=0644 units/{FAILOVER_UNIT} /{UNIT_DIR}/{FAILOVER_UNIT}")
        # keepalived.service pulls the config unit in ([Install] WantedBy=keepalived.service).
        lines.append(f"RUN systemctl enable keepalived.service {FAILOVER_UNIT}")
    for line in lines:
        # The blueprint's reader refuses control characters; this keeps any value
        # that slips past it from starting an instruction of its own.
        if "\n" in line or "\r" in line:
            raise BlueprintError(
                f"blueprint {bp.name!r}: a value would break the Containerfile line {line!r}",
                hint="values must be one line of text",
            )
    return BuildContext("\n".join(lines) + "\n", tuple(files))


def _locale_steps(languages: tuple[str, ...], keyboard: str | None, family: Family) -> list[str]:
    steps = []
    if languages:
        conf = f"LANG={languages[0]}\\n"
        script = f"printf {_q(conf)} > /etc/locale.conf"
        if family is Family.DEBIAN:
            # Debian builds locales from /etc/locale.gen with locale-gen (package locales).
            script += (
                f" && printf {_q(conf)} > /etc/default/locale"
                " && if command -v locale-gen >/dev/null; then for l in "
                + " ".join(_q(lang) for lang in languages)
                + '; do echo "$l ${l##*.}" >> /etc/locale.gen; done; locale-gen; fi'
            )
        steps.append(f"RUN {script}")
    if keyboard is not None:
        conf = f"KEYMAP={keyboard}\\n"
        steps.append(f"RUN printf {_q(conf)} > /etc/vconsole.conf")
    return steps


def write_context(context: BuildContext, dest: Path) -> Path:
    """Lay *context* out in the empty directory *dest*; return the Containerfile's path."""
    for f in context.files:
        path = dest / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.data)
        path.chmod(f.mode)
    containerfile = dest / "Containerfile"
    containerfile.write_text(context.containerfile)
    return containerfile


# --- what atoll adds ---------------------------------------------------------------------


#: The directory of each family's initramfs generator, in atoll's boot files; the
#: other family's is left out of an image.
_GENERATOR_DIRS: Mapping[Family, str] = {
    Family.DEBIAN: "usr/share/initramfs-tools",
    Family.FEDORA: "usr/lib/dracut",
}


def boot_files_dir() -> Path | None:
    """atoll's early-boot files in its package (``atoll/boot/files``, laid out
    as in an image), if this atoll has them."""
    try:
        folder = Path(str(resources.files("atoll").joinpath("boot", "files")))
    except (ModuleNotFoundError, TypeError):
        return None
    return folder if folder.is_dir() else None


def _copy_boot_files(source: Path, dest: Path, family: Family) -> bool:
    """Copy the boot files *family* needs; False when its hook is not among them."""
    if not (source / HOOK_PATHS[family]).is_file():
        return False
    others = [d for f, d in _GENERATOR_DIRS.items() if f is not family]

    def ignore(directory: str, names: list[str]) -> list[str]:
        rel = Path(directory).relative_to(source)
        return [
            n for n in names if str(rel / n) in others or n == "__pycache__" or n.endswith(".pyc")
        ]

    shutil.copytree(source, dest, ignore=ignore, symlinks=True)
    return True


def write_additions(dest: Path) -> list[str]:
    """Fill the additions directory *dest* (see the module docstring); return
    what it holds, e.g. ``["atoll", "units", "boot/debian"]``."""
    from atoll.units import install_atoll

    held = ["atoll", "units"]
    install_atoll(dest / "atoll")
    launcher = dest / "atoll/usr/bin/atoll"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    install_units(dest / "units")
    source = boot_files_dir()
    for family in Family:
        if source is not None and _copy_boot_files(source, dest / "boot" / family.value, family):
            held.append(f"boot/{family.value}")
    (dest / "add.sh").write_text(_add_script(dest))
    return held


def _device_packages_lines() -> list[str]:
    """Install the distribution packages atoll imports on a device (atoll.requires)
    when the image's python3 cannot import them.  A base whose repositories cannot
    be reached still builds: the lint's device-python check names what is missing."""
    modules = ", ".join(r.module for r in DEVICE_REQUIREMENTS)
    packages = " ".join(DEVICE_PACKAGES)
    warn = (
        f'echo "atoll-additions: warning: could not install {packages}: '
        'atoll on the device cannot update from a registry"'
    )
    return [
        "if command -v python3 >/dev/null && "
        f"! python3 -c {_q('import ' + modules)} 2>/dev/null; then",
        "    if command -v apt-get >/dev/null; then",
        "        if apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        f"--no-install-recommends {packages}; then added {_q(packages)}; else {warn}; fi",
        "        apt-get clean; rm -rf /var/lib/apt/lists/*",
        "    elif command -v dnf >/dev/null; then",
        f"        if dnf install -y {packages}; then added {_q(packages)}; else {warn}; fi",
        "        dnf clean all",
        "    else",
        f"        {warn}",
        "    fi",
        "fi",
    ]


def _add_script(additions: Path) -> str:
    a = ADDITIONS_MOUNT
    lines = [
        "#!/bin/sh",
        "# atoll build: add what a bootable atoll image needs and this image lacks.",
        "# Nothing the image has is replaced.",
        "set -eu",
        f"A={a}",
        'added() { echo "atoll-additions: added $1"; }',
        "if [ ! -e /usr/bin/atoll ]; then",
        '    cp -a "$A/atoll/." / && added atoll',
        # Hash-checked bytecode by the image's own python3: /usr is read-only on a
        # device, where modules without bytecode are compiled at every start.
        "    if command -v python3 >/dev/null; then",
        "        PYTHONHASHSEED=0 python3 -m compileall -q -f --invalidation-mode checked-hash "
        f"/{ATOLL_PACKAGE} >/dev/null || "
        'echo "atoll-additions: warning: python3 could not compile atoll\'s modules"',
        "    fi",
        "fi",
        "command -v python3 >/dev/null || "
        'echo "atoll-additions: warning: no python3 in the image: atoll cannot run"',
        *_device_packages_lines(),
    ]
    for unit in UNITS:
        # Enablement symlinks point into the image: os.walk, as glob skips dangling ones.
        links = sorted(
            str(Path(d, unit).relative_to(additions / "units"))
            for d, _, names in os.walk(additions / "units/etc/systemd/system")
            if unit in names
        )
        lines.append(f"if [ ! -e /{UNIT_DIR}/{unit} ] && [ ! -e /etc/systemd/system/{unit} ]; then")
        # The image may have no unit directory yet (a bare base): made, not assumed.
        lines.append(f'    mkdir -p /{UNIT_DIR} && cp -a "$A/units/{UNIT_DIR}/{unit}" /{UNIT_DIR}/')
        for link in links:
            lines.append(f'    mkdir -p /{Path(link).parent} && cp -a "$A/units/{link}" /{link}')
        lines.append(f"    added {unit}")
        lines.append("fi")
    lines += [
        "ID= ID_LIKE=",
        "if [ -r /etc/os-release ]; then . /etc/os-release; "
        "elif [ -r /usr/lib/os-release ]; then . /usr/lib/os-release; fi",
        'family=""',
        "for id in $ID $ID_LIKE; do",
        '    case "$id" in',
    ]
    for family, ids in FAMILY_IDS.items():
        pattern = "|".join(sorted(ids))
        lines.append(f"        {pattern}) family=${{family:-{family.value}}} ;;")
    lines += [
        "    esac",
        "done",
    ]
    lines.append(
        # One file at a time: cp -n does not merge directories everywhere (busybox).
        'add_file() { [ -e "$2" ] || [ -L "$2" ] || '
        '{ mkdir -p "$(dirname "$2")" && cp -a "$1" "$2"; }; }'
    )
    for family, hook in HOOK_PATHS.items():
        tree = additions / "boot" / family.value
        files = sorted(
            str(Path(d, n).relative_to(tree)) for d, _, names in os.walk(tree) for n in names
        )
        lines.append(f'if [ "$family" = {family.value} ] && [ ! -e /{hook} ]; then')
        if files:
            lines += [f'    add_file "$A/boot/{family.value}/{f}" /{f}' for f in files]
            lines.append(f"    added {hook}")
        else:
            lines.append(
                '    echo "atoll-additions: warning: this atoll has no early-boot hook '
                f'for {family.value}"'
            )
        lines.append("fi")
    return "\n".join(lines) + "\n"
