"""Blueprints as Containerfile steps, and the atoll step's additions."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from atoll.build.blueprint import parse_blueprint, parse_blueprint_dict
from atoll.build.containerfile import (
    ATOLL_STEP,
    HOOK_PATHS,
    Family,
    blueprint_context,
    family_of,
    parse_os_release,
    write_additions,
    write_context,
)
from atoll.errors import BaseImageError, BlueprintError
from atoll.podman import isolated_environment
from atoll.units import UNITS
from helpers.parts import missing, require_tool

BLUEPRINT = """\
name = "edge"
version = "2.0.0"
description = "Edge, with \\"quotes\\""
[[packages]]
name = "strace"
[[packages]]
name = "curl"
version = "7.88.1-10"
[[customizations.group]]
name = "app"
gid = 1100
[[customizations.user]]
name = "admin"
password = "clear"
key = "ssh-ed25519 AAAA admin"
groups = ["app"]
[[customizations.files]]
path = "/etc/app.conf"
data = "it's = 1\\n"
mode = "0640"
user = "admin"
group = "app"
[[customizations.directories]]
path = "/srv/app/data"
ensure_parents = true
[customizations.services]
enabled = ["ssh.service"]
masked = ["getty@tty1.service"]
[customizations.firewall]
ports = ["22:tcp", "imap:tcp"]
[customizations.kernel]
append = "console=ttyS0 quiet"
[customizations.timezone]
timezone = "Europe/Berlin"
[customizations.locale]
languages = ["en_US.UTF-8"]
keyboard = "de"
"""


def _hash(password: str) -> str:
    return f"$6$salt${password}hashed"


def test_os_release_and_families() -> None:
    fields = parse_os_release('ID=ubuntu\nID_LIKE=debian\nNAME="Ubuntu 24.04"\n# c\n')
    assert fields == {"ID": "ubuntu", "ID_LIKE": "debian", "NAME": "Ubuntu 24.04"}
    assert family_of(fields, "x") is Family.DEBIAN
    assert family_of({"ID": "almalinux", "ID_LIKE": "rhel centos fedora"}, "x") is Family.FEDORA
    assert family_of({"ID": "fedora"}, "x") is Family.FEDORA
    with pytest.raises(BaseImageError, match="ID/ID_LIKE: alpine"):
        family_of({"ID": "alpine"}, "x")


def test_debian_steps() -> None:
    bp = parse_blueprint(BLUEPRINT)
    plan = blueprint_context(bp, "localhost/base:1", Family.DEBIAN, hash_password=_hash)
    lines = plan.containerfile.splitlines()
    assert lines[1] == "FROM localhost/base:1"
    assert lines[2] == (
        'LABEL containers.bootc="1" org.opencontainers.image.title="edge" '
        'org.opencontainers.image.version="2.0.0" '
        'org.opencontainers.image.description="Edge, with \\"quotes\\""'
    )
    assert lines[3] == (
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
        "--no-install-recommends strace curl=7.88.1-10 && apt-get clean && "
        "rm -rf /var/lib/apt/lists/*"
    )
    text = plan.containerfile
    assert "groupadd -g 1100 app" in text
    # The clear-text password is hashed before it reaches the Containerfile.
    assert "useradd -m -G app admin && usermod -p '$6$salt$clearhashed' admin" in text
    assert "clear'" not in text.replace("clearhashed", "")
    assert "ssh-ed25519 AAAA admin" in text
    assert 'COPY --chown=admin:app --chmod=0640 ["files/0", "/etc/app.conf"]' in text
    assert "mkdir -p /srv/app/data && chmod 0755 /srv/app/data" in text
    assert "RUN systemctl enable ssh.service" in text and "RUN systemctl mask" in text
    assert "firewall-offline-cmd --add-port=22/tcp --add-service=imap" in text
    assert 'kargs = ["console=ttyS0", "quiet"]' in text
    assert "ln -sf ../usr/share/zoneinfo/Europe/Berlin /etc/localtime" in text
    assert "/etc/default/locale" in text and "KEYMAP=de" in text
    assert lines[-1] == ATOLL_STEP
    assert [(f.path, f.data, f.mode) for f in plan.files] == [("files/0", b"it's = 1\n", 0o640)]


def test_fedora_steps_and_groups() -> None:
    bp = parse_blueprint(
        'name = "f"\n[[packages]]\nname = "strace"\nversion = "6.1"\n'
        '[[groups]]\nname = "core"\n[customizations.kernel]\nname = "kernel-rt"\n'
    )
    plan = blueprint_context(
        bp, "quay.io/fedora/fedora-bootc:40", Family.FEDORA, hash_password=_hash, add_atoll=False
    )
    assert "RUN dnf install -y strace-6.1 kernel-rt && dnf clean all" in plan.containerfile
    assert "RUN dnf group install -y core && dnf clean all" in plan.containerfile
    assert ATOLL_STEP not in plan.containerfile
    with pytest.raises(BlueprintError, match=r"\(package groups\) are a dnf feature"):
        blueprint_context(bp, "debian", Family.DEBIAN, hash_password=_hash)


def test_write_context(tmp_path: Path) -> None:
    bp = parse_blueprint(BLUEPRINT)
    plan = blueprint_context(bp, "base", Family.DEBIAN, hash_password=_hash)
    containerfile = write_context(plan, tmp_path)
    assert containerfile.read_text() == plan.containerfile
    assert (tmp_path / "files/0").read_bytes() == b"it's = 1\n"
    assert (tmp_path / "files/0").stat().st_mode & 0o777 == 0o640


def _busybox_root(root: Path, os_release: str) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        missing("busybox is not installed (apt-get install busybox-static)")
    if os.geteuid() != 0:
        missing("running the atoll step in a chroot needs root")
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    shutil.copy(busybox, root / "usr/bin/busybox")
    subprocess.run(["chroot", root, "/usr/bin/busybox", "--install", "-s", "/usr/bin"], check=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text(os_release)
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return root


def _run_step(root: Path) -> list[str]:
    proc = subprocess.run(
        ["chroot", root, "/bin/sh", "/run/atoll-additions/add.sh"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.splitlines()


def test_atoll_step_adds_what_is_missing_and_replaces_nothing(tmp_path: Path) -> None:
    """add.sh runs in a busybox chroot here, as it runs in the build container."""
    root = _busybox_root(tmp_path / "root", 'ID=debian\nVERSION_ID="12"\n')
    held = write_additions(root / "run/atoll-additions")
    assert held[:2] == ["atoll", "units"]
    # The image brings its own healthcheck unit: it must stay as it is.
    own = root / "usr/lib/systemd/system/atoll-healthcheck.service"
    own.parent.mkdir(parents=True)
    own.write_text("# the image's own\n")
    out = _run_step(root)
    added = [line.removeprefix("atoll-additions: added ") for line in out if "added" in line]
    assert "atoll-healthcheck.service" not in added
    assert own.read_text() == "# the image's own\n"
    assert {"atoll", *UNITS[1:]} <= set(added)
    assert (root / "usr/bin/atoll").stat().st_mode & 0o111
    assert (root / "usr/lib/python3/dist-packages/atoll/cli/main.py").is_file()
    timer_link = root / "etc/systemd/system/timers.target.wants/atoll-fetch-apply-updates.timer"
    assert str(timer_link.readlink()) == "/usr/lib/systemd/system/atoll-fetch-apply-updates.timer"
    if "boot/debian" in held:
        assert HOOK_PATHS[Family.DEBIAN] in added
        assert (root / HOOK_PATHS[Family.DEBIAN]).is_file()
        assert not (root / "usr/lib/dracut").exists()
    # python3 is missing in this root: said, not fatal.
    assert "atoll-additions: warning: no python3 in the image: atoll cannot run" in out
    # A second run adds nothing.
    again = _run_step(root)
    assert not [line for line in again if "added" in line]


def test_atoll_step_makes_the_unit_directories_it_writes_to(tmp_path: Path) -> None:
    """An image without /usr/lib/systemd/system (or /usr/lib/python3) gets them:
    the step creates every directory it copies into."""
    root = _busybox_root(tmp_path / "root", 'ID=debian\nVERSION_ID="12"\n')
    write_additions(root / "run/atoll-additions")
    assert not (root / "usr/lib/systemd").exists()
    out = _run_step(root)
    assert "atoll-additions: added atoll-healthcheck.service" in out
    assert (root / "usr/lib/systemd/system/atoll-healthcheck.service").is_file()


def test_atoll_step_compiles_atolls_modules_with_the_images_python3(
    tmp_path: Path, debian_rootfs: Path
) -> None:
    """In an image with python3 (the Debian test tree), the step leaves
    hash-checked bytecode made by the image's own python3 beside every one of
    atoll's modules: /usr is read-only on a device."""
    root = tmp_path / "root"
    # Hard links are safe: the step adds files and never writes through one.
    subprocess.run(["cp", "-al", "--", debian_rootfs, root], check=True)
    write_additions(root / "run/atoll-additions")
    # No network (the tree lacks the device packages, which the step then
    # tries to install with apt: a warning here, not a failure).
    out = subprocess.run(
        ["unshare", "--net", "chroot", root, "/bin/sh", "/run/atoll-additions/add.sh"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "atoll-additions: added atoll" in out
    assert "could not compile" not in out
    tag = subprocess.run(
        ["chroot", root, "python3", "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    package = root / "usr/lib/python3/dist-packages/atoll"
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 100
    for source in sources:
        cached = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        header = cached.read_bytes()[:16]
        # PEP 552: flags 0b11 = hash-based and checked against the source.
        assert int.from_bytes(header[4:8], "little") == 0b11, cached
        assert header[8:16] == importlib.util.source_hash(source.read_bytes()), cached


# --- values cannot add instructions -------------------------------------------------

INJECTED = "e\\nFROM docker.io/library/alpine AS evil\\nRUN touch /pwn\\n#"


@pytest.mark.parametrize(
    "blueprint",
    [
        f'name = "{INJECTED}"\n',
        f'name = "x"\ndescription = "{INJECTED}"\n',
        f'name = "x"\n[[groups]]\nname = "{INJECTED}"\n',
        f'name = "x"\n[[customizations.user]]\nname = "a"\nhome = "/home/{INJECTED}"\n',
        f'name = "x"\n[[customizations.user]]\nname = "a"\nshell = "/bin/{INJECTED}"\n',
        f'name = "x"\n[[customizations.user]]\nname = "a"\npassword = "$6${INJECTED}"\n',
        f'name = "x"\n[[customizations.directories]]\npath = "/srv/{INJECTED}"\n',
        f'name = "x"\n[[customizations.files]]\npath = "/srv/{INJECTED}"\ndata = "a\\nb"\n',
        f'name = "x"\n[[customizations.sshkey]]\nuser = "a"\nkey = "ssh-ed25519 {INJECTED}"\n',
        f'name = "x"\n[customizations.kernel]\nappend = "quiet {INJECTED}"\n',
        'name = "x\\rRUN touch /pwn"\n',
        'name = "x\\u2028RUN touch /pwn"\n',
    ],
)
def test_no_value_adds_an_instruction_to_the_containerfile(blueprint: str) -> None:
    """A value is refused, or lands in the Containerfile on its own line (files'
    data goes to a context file, not into the Containerfile)."""
    try:
        bp = parse_blueprint(blueprint, "x.toml")
    except BlueprintError as exc:
        assert "must be one line" in exc.message
        return
    for family in Family:
        try:
            text = blueprint_context(
                bp, "base", family, hash_password=lambda p: "$6$x"
            ).containerfile
        except BlueprintError:
            continue  # e.g. [[groups]] on a Debian base
        lines = text.splitlines()
        assert [line for line in lines if line.startswith("FROM")] == ["FROM base"]
        assert not any("touch /pwn" in line and line.startswith("RUN touch") for line in lines)
        assert "\r" not in text and "\u2028" not in text


def test_build_print_containerfile_refuses_an_instruction_in_the_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from atoll.cli.main import main

    path = tmp_path / "bp.toml"
    path.write_text(f'name = "{INJECTED}"\n')
    base = f"oci:{tmp_path}/none"
    code = main(["build", "--blueprint", str(path), "--base", base, "--print-containerfile"])
    out, err = capsys.readouterr()
    assert code == BlueprintError.exit_code, err
    assert "line 1: name: must be one line" in err and "FROM" not in out


def test_kernel_arguments_are_a_valid_toml_array() -> None:
    import tomllib

    bp = parse_blueprint(
        'name = "x"\n[customizations.kernel]\nappend = "a=\\"q\\" b=\\\\ c=\U0001f600"\n', "x.toml"
    )
    text = blueprint_context(bp, "base", Family.DEBIAN, hash_password=str).containerfile
    [line] = [line for line in text.splitlines() if "kargs = [" in line]
    quoted = line.split("printf '%s\\n' ", 1)[1].split(" > ", 1)[0]
    [toml] = shlex.split(quoted)
    assert tomllib.loads(toml) == {"kargs": ['a="q"', "b=\\", "c=\U0001f600"]}


@pytest.mark.integration
def test_podman_build_keeps_labels_and_paths_as_written(tmp_path: Path) -> None:
    """A dollar, a backslash, a quote or a space in a value is not expanded, escaped
    away or split by podman build (buildah expands $NAME in LABEL and COPY)."""
    podman = require_tool("podman")
    require_tool("runc")
    if os.geteuid() != 0:
        missing("podman build with runc and vfs needs root here")
    name = 'edge $HOME ${X} \\ "q"'
    path = "/etc/a $X b\\c"
    bp = parse_blueprint(
        f"name = {json.dumps(name)}\n[[customizations.files]]\npath = {json.dumps(path)}\n"
        'data = "hi"\nuser = 0\ngroup = 0\n',  # scratch has no /etc/passwd
        "x.toml",
    )
    context = tmp_path / "context"
    context.mkdir()
    write_context(
        blueprint_context(bp, "scratch", Family.DEBIAN, hash_password=str, add_atoll=False),
        context,
    )
    env = {**os.environ, **isolated_environment(tmp_path / "podman")}

    def podman_run(*args: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [podman, *args], env=env, capture_output=True, timeout=600, check=False
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc

    podman_run("build", "-q", "-t", "localhost/values:1", str(context))
    labels = json.loads(
        podman_run("image", "inspect", "--format", "{{json .Labels}}", "localhost/values:1").stdout
    )
    assert labels["org.opencontainers.image.title"] == name
    container = podman_run("create", "localhost/values:1", "x").stdout.decode().strip()
    exported = podman_run("export", container).stdout
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        assert path.lstrip("/") in tar.getnames()


def test_failover_adds_keepalived_and_the_unit_that_configures_it(tmp_path: Path) -> None:
    bp = parse_blueprint('name = "edge"\n[customizations.failover]\nenabled = true\n')
    assert parse_blueprint_dict(bp.to_dict()) == bp
    plan = blueprint_context(bp, "localhost/base:1", Family.DEBIAN, hash_password=_hash)
    lines = plan.containerfile.splitlines()
    assert "--no-install-recommends keepalived &&" in lines[3]
    assert lines[-3:] == [
        ATOLL_STEP,
        "COPY --chmod=0644 units/atoll-failover-config.service "
        "/usr/lib/systemd/system/atoll-failover-config.service",
        "RUN systemctl enable keepalived.service atoll-failover-config.service",
    ]
    write_context(plan, tmp_path / "ctx")
    unit = (tmp_path / "ctx/units/atoll-failover-config.service").read_text()
    assert "ExecStart=/usr/bin/atoll failover config" in unit
    assert "Before=keepalived.service" in unit
    without = blueprint_context(
        parse_blueprint('name = "edge"\n'), "b:1", Family.DEBIAN, hash_password=_hash
    )
    assert "keepalived" not in without.containerfile
