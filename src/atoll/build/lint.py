"""``atoll lint``: is an image bootable, and will it update well?

Each check has a name and a level: a *fatal* finding means a device cannot boot
or update the image as it is; a *warning* means it will, but something will not
work the way its author probably expects.  The checks are declared once, in
:data:`CHECKS`, which drives the report, the JSON and the documentation.

The JSON document (``atoll lint --json``), version :data:`REPORT_VERSION`::

    {"version": 1, "image": "docker://…", "digest": "sha256:…", "family": "debian",
     "ok": true, "fatal": 0, "warnings": 2,
     "checks": [{"name": "kernel", "level": "fatal", "passed": true}, …],
     "findings": [{"check": "var-content", "level": "warning",
                   "message": "…", "paths": ["/var/lib/dpkg", …]}]}

``ok`` is false when there is a fatal finding, or a warning and the lint was
run with ``fatal_warnings``.  The checks of :data:`SECURE_BOOT_CHECKS` run (and
are listed) only with ``secure_boot`` (``atoll lint --secure-boot``).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from atoll.build.containerfile import HOOK_PATHS, Family, family_of, parse_os_release
from atoll.build.imagetree import ImageTree, read_image_tree
from atoll.errors import BaseImageError
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName
from atoll.progress import ProgressSink
from atoll.requires import DEVICE_REQUIREMENTS
from atoll.units import TRIGGERED, UNIT_DIR, UNITS

REPORT_VERSION = 1
#: Paths shown per finding at most (the count says how many there are).
MAX_PATHS = 20
#: /var entries every image may have: symlinks the OS expects, and scratch space.
_VAR_ALLOWED = frozenset({"var/run", "var/lock", "var/tmp"})
#: The share of the image one layer may hold before layer-share warns.
MAX_LAYER_SHARE = 0.25
#: Smaller images are moved whole anyway: layer-share does not look at them.
LAYER_SHARE_MIN_BYTES = 32 << 20


class Level(StrEnum):
    FATAL = "fatal"
    WARNING = "warning"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    description: str


CHECKS: tuple[Check, ...] = (
    Check("kernel", Level.FATAL, "a kernel at /usr/lib/modules/KVER/vmlinuz"),
    Check("initramfs", Level.FATAL, "an initramfs at /usr/lib/modules/KVER/initramfs.img"),
    Check("os-release", Level.FATAL, "/etc/os-release (or /usr/lib/os-release) with an ID"),
    Check(
        "early-boot",
        Level.FATAL,
        "atoll's initramfs hook: /" + HOOK_PATHS[Family.DEBIAN] + " (Debian family) or /"
        f"{HOOK_PATHS[Family.FEDORA]} (Fedora family)",
    ),
    Check(
        "atoll-units",
        Level.FATAL,
        "atoll's units (" + ", ".join(UNITS) + "), /usr/bin/atoll and /usr/bin/python3",
    ),
    Check("atoll-units-enabled", Level.WARNING, "atoll's units are enabled"),
    Check("usr-etc", Level.FATAL, "nothing in /usr/etc (configuration belongs in /etc)"),
    Check(
        "var-content",
        Level.WARNING,
        "no files in /var: a device takes /var from the image once, at install; "
        "updates never change it",
    ),
    Check("etc-passwd", Level.FATAL, "/etc/passwd and /etc/group exist and name root"),
    Check(
        "file-owners",
        Level.WARNING,
        "every file's owner and group are in /etc/passwd and /etc/group",
    ),
    Check("boot-content", Level.WARNING, "nothing in /boot (kernels go to /usr/lib/modules)"),
    Check("bootable-label", Level.WARNING, "the label containers.bootc=1"),
    Check(
        "layer-share",
        Level.WARNING,
        "no layer holds more than the set share of an image of 32 MiB or more "
        "(default 25 %): an update re-fetches a changed layer whole (see atoll rechunk)",
    ),
    Check(
        "python-bytecode",
        Level.WARNING,
        "Python bytecode under /usr is hash-based, or timestamp-based for a source "
        "mtime of 0: a deployment's files have mtime 0; every module on the import path "
        "of the image's python3.N has bytecode for it",
    ),
    Check(
        "device-python",
        Level.WARNING,
        "the Python modules atoll's device commands import resolve in the image's python3 "
        "(" + ", ".join(f"{r.module} from {r.package}" for r in DEVICE_REQUIREMENTS) + ")",
    ),
)
#: Checks for an image that boots with Secure Boot on (atoll lint --secure-boot).
SECURE_BOOT_CHECKS: tuple[Check, ...] = (
    Check(
        "kernel-signed",
        Level.FATAL,
        "each kernel is an EFI binary with an Authenticode signature (a PE certificate "
        "table), which shim checks at boot: an unsigned kernel does not start",
    ),
)
_BY_NAME: Mapping[str, Check] = {c.name: c for c in (*CHECKS, *SECURE_BOOT_CHECKS)}
#: PE: where the offset of the PE header is; the optional header's magic for
#: PE32+; where its data directories start; the certificate table's index.
_PE_OFFSET_AT = 0x3C
_PE32_PLUS = 0x20B
_DATA_DIRECTORIES = {0x10B: 96, _PE32_PLUS: 112}
_CERTIFICATE_TABLE = 4
#: Files whose contents the checks read.
WANTED = (
    "etc/os-release",
    "usr/lib/os-release",
    "etc/passwd",
    "etc/group",
)


def wants_head(path: str) -> bool:
    """The files whose first bytes the checks read: Python bytecode under /usr,
    kernels."""
    if path.startswith("usr/lib/modules/") and path.endswith("/vmlinuz"):
        return True
    return path.startswith("usr/") and path.endswith(".pyc") and "/__pycache__/" in path


def unsigned_reason(head: bytes, size: int) -> str | None:
    """Why a kernel whose first bytes are *head* and whose size is *size* bytes
    carries no Authenticode signature, or None when it carries one (whether
    its key is trusted is decided by shim at boot)."""
    try:
        if head[:2] != b"MZ":
            return "not an EFI binary (no MZ header)"
        (pe,) = struct.unpack_from("<I", head, _PE_OFFSET_AT)
        if head[pe : pe + 4] != b"PE\0\0":
            return "not an EFI binary (no PE header)"
        optional = pe + 24
        (magic,) = struct.unpack_from("<H", head, optional)
        if magic not in _DATA_DIRECTORIES:
            return f"not an EFI binary (PE optional header magic {magic:#x})"
        entry = optional + _DATA_DIRECTORIES[magic] + 8 * _CERTIFICATE_TABLE
        offset, length = struct.unpack_from("<II", head, entry)
    except struct.error:
        return "not an EFI binary (its PE headers are cut short)"
    if length == 0:
        return "no signature (its PE certificate table is empty)"
    if offset + length > size:
        return "a broken signature (its certificate table runs past the end of the file)"
    return None


def stale_on_device(header: bytes) -> bool:
    """True for a .pyc header (PEP 552) that Python will find stale once deployed:
    validated by the source's mtime, which was not 0 when it was compiled."""
    if len(header) < 16:
        return False
    flags = int.from_bytes(header[4:8], "little")
    return flags == 0 and int.from_bytes(header[8:12], "little") != 0


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    message: str
    paths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level.value,
            "message": self.message,
            "paths": list(self.paths),
        }


@dataclass(frozen=True)
class LintReport:
    image: str
    digest: str
    family: Family | None
    findings: tuple[Finding, ...]
    fatal_warnings: bool = False
    secure_boot: bool = False

    @property
    def checks(self) -> tuple[Check, ...]:
        return (*CHECKS, *SECURE_BOOT_CHECKS) if self.secure_boot else CHECKS

    @property
    def fatal(self) -> int:
        return sum(1 for f in self.findings if f.level is Level.FATAL)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.level is Level.WARNING)

    @property
    def ok(self) -> bool:
        return self.fatal == 0 and not (self.fatal_warnings and self.warnings)

    def failed_checks(self) -> list[str]:
        return list(dict.fromkeys(f.check for f in self.findings))

    def to_json(self) -> dict[str, Any]:
        failed = set(self.failed_checks())
        return {
            "version": REPORT_VERSION,
            "image": self.image,
            "digest": self.digest,
            "family": self.family.value if self.family else None,
            "ok": self.ok,
            "fatal": self.fatal,
            "warnings": self.warnings,
            "checks": [
                {"name": c.name, "level": c.level.value, "passed": c.name not in failed}
                for c in self.checks
            ],
            "findings": [f.to_json() for f in self.findings],
        }

    def to_text(self) -> str:
        lines = []
        for f in self.findings:
            lines.append(f"{f.level.value}: {f.check}: {f.message}")
            lines.extend(f"  {p}" for p in f.paths)
        verdict = "passed" if self.ok else "FAILED"
        lines.append(
            f"{self.image}: lint {verdict}: {self.fatal} fatal, {self.warnings} warning(s), "
            f"{len(self.checks) - len(self.failed_checks())} of {len(self.checks)} checks clean"
        )
        return "\n".join(lines)


class _Linter:
    def __init__(
        self,
        tree: ImageTree,
        max_layer_share: float = MAX_LAYER_SHARE,
        secure_boot: bool = False,
    ) -> None:
        self.tree = tree
        self.secure_boot = secure_boot
        self.max_layer_share = max_layer_share
        self.findings: list[Finding] = []
        self.family: Family | None = None

    def add(self, check: str, message: str, paths: list[str] | tuple[str, ...] = ()) -> None:
        shown = tuple(paths[:MAX_PATHS])
        if len(paths) > MAX_PATHS:
            message += f" ({len(paths) - MAX_PATHS} more not shown)"
        self.findings.append(Finding(check, _BY_NAME[check].level, message, shown))

    def run(self) -> None:
        self.kernel()
        self.os_release()
        self.early_boot()
        self.units()
        self.usr_etc()
        self.var_content()
        self.owners()
        self.boot_content()
        self.bytecode()
        self.missing_bytecode()
        self.device_python()
        self.layer_share()
        if not self.tree.config.bootable:
            self.add(
                "bootable-label",
                "the image has no label containers.bootc=1 (atoll build sets it)",
            )

    def kernel(self) -> None:
        t = self.tree
        kernels = [
            kver
            for kver in t.children("usr/lib/modules")
            if (node := t.node(f"usr/lib/modules/{kver}/vmlinuz")) is not None and node.is_file
        ]
        if not kernels:
            self.add("kernel", "no kernel: /usr/lib/modules/KVER/vmlinuz is missing")
            return
        for kver in kernels:
            if self.secure_boot:
                path = f"usr/lib/modules/{kver}/vmlinuz"
                node = t.node(path)
                reason = unsigned_reason(t.heads.get(path, b""), node.size if node else 0)
                if reason is not None:
                    self.add("kernel-signed", f"kernel {kver}: {reason}", [f"/{path}"])
            node = t.node(f"usr/lib/modules/{kver}/initramfs.img")
            if node is None or not node.is_file:
                self.add(
                    "initramfs",
                    f"kernel {kver} has no initramfs at /usr/lib/modules/{kver}/initramfs.img",
                )

    def os_release(self) -> None:
        t = self.tree
        raw = t.read("etc/os-release") or t.read("usr/lib/os-release")
        if raw is None:
            self.add("os-release", "no /etc/os-release or /usr/lib/os-release")
            return
        fields = parse_os_release(raw.decode(errors="replace"))
        if not fields.get("ID"):
            self.add("os-release", "os-release has no ID=")
            return
        try:
            self.family = family_of(fields, t.name)
        except BaseImageError:
            self.family = None

    def early_boot(self) -> None:
        families = [self.family] if self.family is not None else list(Family)
        hooks = [HOOK_PATHS[f] for f in families]
        if not any((n := self.tree.node(h)) is not None and n.is_file for h in hooks):
            which = " or ".join(f"/{h}" for h in hooks)
            self.add(
                "early-boot",
                f"atoll's initramfs hook is missing ({which}): a device cannot make the "
                "deployment its root at boot",
                [f"/{h}" for h in hooks],
            )

    def units(self) -> None:
        t = self.tree
        missing = [
            f"/{UNIT_DIR}/{unit}"
            for unit in UNITS
            if t.node(f"{UNIT_DIR}/{unit}") is None and t.node(f"etc/systemd/system/{unit}") is None
        ]
        for program in ("usr/bin/atoll", "usr/bin/python3"):
            if t.node(program) is None:
                missing.append(f"/{program}")
        if missing:
            self.add(
                "atoll-units",
                "atoll's units or the programs they run are missing: no health checks, "
                "finalization or automatic updates",
                missing,
            )
        enabled = {
            path.rsplit("/", 1)[1]
            for path, _ in t.under("etc/systemd/system")
            if path.count("/") == 4 and path.split("/")[3].endswith((".wants", ".requires"))
        }
        enabled |= {
            path.rsplit("/", 1)[1]
            for path, _ in t.under("usr/lib/systemd/system")
            if path.count("/") == 5 and path.split("/")[4].endswith((".wants", ".requires"))
        }
        # The update and finalize services run from their timer and path units.
        not_enabled = [u for u in UNITS if u not in enabled and u not in TRIGGERED]
        if not_enabled and not missing:
            self.add(
                "atoll-units-enabled", "atoll's units are present but not enabled", not_enabled
            )

    def bytecode(self) -> None:
        stale = [path for path, head in self.tree.heads.items() if stale_on_device(head)]
        self._bytecode_finding(
            [path.rsplit("/__pycache__/", 1)[0] for path in stale],
            f"{len(stale)} Python bytecode files record their source's mtime, which is 0 "
            "on a device: Python finds them stale and, /usr being read-only, compiles "
            "those modules again every time a program starts.",
        )

    def missing_bytecode(self) -> None:
        missing = _missing_bytecode(self.tree)
        self._bytecode_finding(
            [path.rsplit("/", 1)[0] for path in missing],
            f"{len(missing)} Python modules on python3's import path have no bytecode for "
            "it: /usr being read-only on a device, Python compiles them again every time a "
            "program imports them.",
        )

    def _bytecode_finding(self, folders: list[str], why: str) -> None:
        """One python-bytecode finding: *why*, the fix, and the count per folder."""
        if not folders:
            return
        counts = Counter("/" + folder for folder in folders)
        self.add(
            "python-bytecode",
            f"{why} Compile them in the build with "
            "`python3 -m compileall -f --invalidation-mode checked-hash DIR`",
            [f"{folder} ({n})" for folder, n in sorted(counts.items())],
        )

    def device_python(self) -> None:
        """Each device requirement is found where the image's python3 imports from."""
        t = self.tree
        if t.node("usr/bin/python3") is None:
            return  # the atoll-units check reports it
        dirs = _python_path(t)
        absent = [
            r for r in DEVICE_REQUIREMENTS if not any(_has_module(t, d, r.module) for d in dirs)
        ]
        if absent:
            self.add(
                "device-python",
                "the image's python3 cannot import "
                + ", ".join(r.module for r in absent)
                + ", needed for "
                + ", ".join(r.needed_for for r in absent)
                + " (atoll build installs them where the image's package manager can)",
                [r.package for r in absent],
            )

    def usr_etc(self) -> None:
        found = [f"/{p}" for p, n in self.tree.under("usr/etc") if not n.is_dir]
        if found or "usr/etc" in self.tree.entries:
            self.add(
                "usr-etc",
                "/usr/etc exists: it is where a device keeps the image's /etc defaults; "
                "put configuration in /etc",
                found or ["/usr/etc"],
            )

    def var_content(self) -> None:
        counts: Counter[str] = Counter()
        for path, node in self.tree.under("var"):
            if node.is_dir or path in _VAR_ALLOWED or path.startswith("var/tmp/"):
                continue
            # Counted by directory, at most three levels deep: /var/lib/dpkg, /var/log.
            parent = path.rsplit("/", 1)[0]
            counts["/" + "/".join(parent.split("/")[:3])] += 1
        if counts:
            total = sum(counts.values())
            self.add(
                "var-content",
                f"{total} file(s) in /var: a device copies the image's /var only when it is "
                "installed, so updates to these never reach it (create them at boot with "
                "systemd-tmpfiles, or move them under /usr)",
                [f"{where} ({n})" for where, n in sorted(counts.items())],
            )

    def owners(self) -> None:
        t = self.tree
        passwd, group = t.read("etc/passwd"), t.read("etc/group")
        if passwd is None or group is None:
            absent = [f"/etc/{n}" for n, d in (("passwd", passwd), ("group", group)) if d is None]
            self.add("etc-passwd", "no " + " or ".join(absent), absent)
            return
        uids = _ids(passwd, 2)
        gids = _ids(group, 2)
        if 0 not in uids or 0 not in gids:
            self.add("etc-passwd", "/etc/passwd or /etc/group has no entry for root (id 0)")
        strays = [
            f"/{path} ({node.uid}:{node.gid})"
            for path, node in sorted(t.entries.items())
            if node.uid not in uids or node.gid not in gids
        ]
        if strays:
            self.add(
                "file-owners",
                f"{len(strays)} file(s) belong to a user or group that /etc/passwd or "
                "/etc/group does not name",
                strays,
            )

    def boot_content(self) -> None:
        found = [f"/{p}" for p, n in self.tree.under("boot") if not n.is_dir]
        if found:
            self.add(
                "boot-content",
                "/boot has files: atoll takes kernels from /usr/lib/modules and does not "
                "update /boot from the image",
                found,
            )

    def layer_share(self) -> None:
        sizes = self.tree.layer_sizes
        total = sum(sizes)
        if total < LAYER_SHARE_MIN_BYTES:
            return
        biggest = max(range(len(sizes)), key=lambda i: sizes[i])
        if sizes[biggest] > self.max_layer_share * total:
            self.add(
                "layer-share",
                f"layer {biggest + 1} of {len(sizes)} holds {100 * sizes[biggest] / total:.0f} % "
                f"of the image (more than {100 * self.max_layer_share:.0f} %): any change in it "
                "makes every device fetch it whole; atoll rechunk splits it by package",
            )


def _python_path(tree: ImageTree) -> list[str]:
    """The directories an image's python3 imports third-party modules from: Debian's
    dist-packages and the site-packages of the Fedora family, for each python3.N."""
    dirs = ["usr/lib/python3/dist-packages"]
    for top in ("usr/lib", "usr/lib64", "usr/local/lib"):
        for name in tree.children(top):
            if name.startswith("python3."):
                dirs += [f"{top}/{name}/site-packages", f"{top}/{name}/dist-packages"]
    return dirs


def _missing_bytecode(tree: ImageTree) -> list[str]:
    """The modules (``.py`` files) on the import path of the image's newest
    ``usr/lib/python3.N`` (its standard library and :func:`_python_path`) that
    have no ``__pycache__/NAME.cpython-3N.pyc``; none when there is no python3.N."""
    versions = [n for n in tree.children("usr/lib") if n.startswith("python3.")]
    minors = sorted(int(n[8:]) for n in versions if n[8:].isdigit())
    if not minors:
        return []
    newest = f"python3.{minors[-1]}"
    dirs = tuple(f"{d}/" for d in (f"usr/lib/{newest}", *_python_path(tree)))
    missing = []
    for path, node in tree.entries.items():
        if not path.endswith(".py") or not node.is_file or not path.startswith(dirs):
            continue
        folder, _, name = path.rpartition("/")
        if "/__pycache__" in f"/{folder}/":
            continue
        # A module under a python3.N directory is that Python's; the others the newest's.
        version = next((p for p in path.split("/") if p.startswith("python3.")), newest)
        tag = "cpython-3" + version.removeprefix("python3.")
        if f"{folder}/__pycache__/{name[:-3]}.{tag}.pyc" not in tree.entries:
            missing.append(path)
    return sorted(missing)


def _has_module(tree: ImageTree, directory: str, module: str) -> bool:
    if (n := tree.node(f"{directory}/{module}/__init__.py")) is not None and n.is_file:
        return True
    if (n := tree.node(f"{directory}/{module}.py")) is not None and n.is_file:
        return True
    # An extension module: NAME.cpython-311-x86_64-linux-gnu.so, NAME.abi3.so, NAME.so.
    return any(
        name.startswith(f"{module}.") and name.endswith(".so") for name in tree.children(directory)
    )


def _ids(data: bytes, field_index: int) -> set[int]:
    out = set()
    for line in data.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > field_index and fields[field_index].isdigit():
            out.add(int(fields[field_index]))
    return out


def lint_tree(
    tree: ImageTree,
    *,
    fatal_warnings: bool = False,
    max_layer_share: float = MAX_LAYER_SHARE,
    secure_boot: bool = False,
) -> LintReport:
    """Run every check on an image already read (with *secure_boot*, those of
    :data:`SECURE_BOOT_CHECKS` too)."""
    linter = _Linter(tree, max_layer_share, secure_boot)
    linter.run()
    return LintReport(
        tree.name,
        str(tree.digest),
        linter.family,
        tuple(linter.findings),
        fatal_warnings,
        secure_boot,
    )


def lint_image(
    name: ImageName,
    ctx: SystemContext,
    *,
    fatal_warnings: bool = False,
    progress: ProgressSink | None = None,
    max_layer_share: float = MAX_LAYER_SHARE,
    secure_boot: bool = False,
) -> LintReport:
    """Read *name* (every layer, streamed) and run every check on it."""
    tree = read_image_tree(name, ctx, want=WANTED, heads=wants_head, progress=progress)
    return lint_tree(
        tree,
        fatal_warnings=fatal_warnings,
        max_layer_share=max_layer_share,
        secure_boot=secure_boot,
    )
