"""An install from an install config: ``atoll install to-disk --config FILE``,
which is what the installer ISO's environment runs (:mod:`atoll.install.iso`).

Everything that can refuse runs before the target is touched: the config is
read and checked, the disk chosen (:mod:`atoll.install.target`), and the image
admitted by the config's signature policy and installed into a staging
directory; only then is the disk partitioned and written
(:func:`atoll.build.disk.install_to_disk`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from atoll.build.disk import DiskOptions, DiskResult, install_to_disk
from atoll.build.partition import BootMode
from atoll.errors import InstallConfigError
from atoll.install.config import InstallConfig, User
from atoll.install.target import SYS_BLOCK, choose_disk, device_of, list_disks
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName, parse_bootc_name
from atoll.progress import ProgressSink
from atoll.sysroot.fetch import RemoteImage
from atoll.sysroot.lifecycle import Admission

#: Beside the config on the installer medium: the image an ``embedded`` config installs.
EMBEDDED_ARCHIVE = "image.tar"
SYSUSERS = "etc/sysusers.d/atoll-install.conf"
USER_TMPFILES = "etc/tmpfiles.d/atoll-install-users.conf"
POLICY = "etc/containers/policy.json"


def source_of(config: InstallConfig, config_dir: Path) -> ImageName:
    """The image to install: the archive beside the config, or the config's reference."""
    if not config.embedded:
        return parse_bootc_name(config.source)
    archive = config_dir / EMBEDDED_ARCHIVE
    if not archive.is_file():
        raise InstallConfigError(
            f'{archive}: the install config says source = "embedded", and there is no '
            "image archive beside it",
            hint="make the ISO with the image (atoll disk-image --type iso IMAGE), or give "
            "[image] source as an image reference",
        )
    return parse_bootc_name(f"oci-archive:{archive}")


def _admission(config: InstallConfig, ctx: SystemContext | None) -> Admission | None:
    if config.policy is None:
        return None
    from atoll.pipeline.policy import parse_policy
    from atoll.pipeline.trust import check_image

    policy = parse_policy(config.policy.encode(), "the install config's [signature] policy")

    def admit(name: ImageName, image: RemoteImage) -> None:
        check_image(name, image.digest, policy, ctx=ctx)

    return admit


def _user_files(users: tuple[User, ...]) -> list[tuple[str, bytes]]:
    """Accounts other than root, made at boot by systemd-sysusers, and every
    user's authorized_keys by systemd-tmpfiles, from /etc (which updates carry over)."""
    sysusers, tmpfiles = [], []
    for user in users:
        if user.name == "root":
            continue
        sysusers.append(f'u {user.name} - "{user.name}" /home/{user.name} /bin/sh\n')
        if user.ssh_authorized_keys:
            keys = "".join(f"{k}\n" for k in user.ssh_authorized_keys).encode()
            encoded = base64.b64encode(keys).decode()
            home, owner = f"/home/{user.name}", f"{user.name} {user.name}"
            tmpfiles += [
                f"d {home} 0700 {owner} -\n",
                f"d {home}/.ssh 0700 {owner} -\n",
                f"f~ {home}/.ssh/authorized_keys 0600 {owner} - {encoded}\n",
            ]
    files = []
    header = "# Written by atoll install from the install config\n"
    if sysusers:
        files.append((SYSUSERS, (header + "".join(sysusers)).encode()))
    if tmpfiles:
        files.append((USER_TMPFILES, (header + "".join(tmpfiles)).encode()))
    return files


def disk_options(config: InstallConfig, *, workdir: Path | None = None) -> DiskOptions:
    """What ``install_to_disk`` does for *config* (the policy excepted)."""
    files: list[tuple[str, bytes]] = []
    if config.hostname:
        files.append(("etc/hostname", f"{config.hostname}\n".encode()))
    files += _user_files(config.users)
    if config.policy is not None:
        # The device enforces for its updates what its install enforced.
        files.append((POLICY, json.dumps(json.loads(config.policy), indent=2).encode() + b"\n"))
    root_keys = next((u.ssh_authorized_keys for u in config.users if u.name == "root"), ())
    return DiskOptions(
        kargs=config.kargs,
        root_ssh_authorized_keys="".join(f"{k}\n" for k in root_keys).encode()
        if root_keys
        else None,
        target_image=parse_bootc_name(config.track) if config.track else None,
        boot=BootMode(config.boot),
        secure_boot=config.secure_boot,
        workdir=workdir,
        files=tuple(files),
    )


def install_from_config(
    config: InstallConfig,
    config_dir: Path,
    *,
    target: Path | None = None,
    workdir: Path | None = None,
    sys_block: Path = SYS_BLOCK,
    ctx: SystemContext | None = None,
    progress: ProgressSink | None = None,
) -> DiskResult:
    """Install what *config* says onto *target*, or onto the one disk its rules
    match (never the disk holding ``/``, the installer's own medium)."""
    source = source_of(config, config_dir)
    if target is None:
        disk = choose_disk(config.disk, list_disks(sys_block), exclude=device_of(Path("/")))
        target = disk.path
    options = disk_options(config, workdir=workdir)
    options = DiskOptions(**{**options.__dict__, "admit": _admission(config, ctx)})
    return install_to_disk(target, source, options=options, ctx=ctx, progress=progress)
