"""Disks: ``atoll install to-disk`` (registered by :mod:`atoll.cli.host`) and
``atoll disk-image`` (docs/install.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atoll.cli.common import (
    TRANSPORTS,
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)
from atoll.errors import InvalidInputError, UsageError, from_oserror


def add_disk_options(parser: argparse.ArgumentParser) -> None:
    """The options ``install to-disk`` and ``disk-image`` share."""
    parser.add_argument("--transport", choices=TRANSPORTS)
    parser.add_argument("--stateroot", default="default", help="name of the stateroot")
    parser.add_argument(
        "--rootfs",
        "--filesystem",
        dest="filesystem",
        choices=["ext4", "xfs"],
        help="the root file system: ext4 (default) or xfs (docs/install.md says what an "
        "xfs root does not carry over)",
    )
    parser.add_argument(
        "--layout",
        metavar="FILE",
        help="partitions of their own for /var or directories under it, with their sizes "
        "and file systems, from a TOML file (docs/install.md, Partition layouts)",
    )
    parser.add_argument(
        "--boot",
        choices=["uefi", "bios", "hybrid"],
        help="the firmware the disk boots with: uefi (GPT, an EFI system partition; the "
        "default), bios (MBR) or hybrid (GPT, both)",
    )
    parser.add_argument(
        "--secure-boot",
        action="store_true",
        help="put Debian's signed shim and GRUB in the EFI system partition, so that the "
        "disk boots with Secure Boot on (the image's kernel must be signed: atoll lint "
        "--secure-boot)",
    )
    parser.add_argument(
        "--size",
        metavar="SIZE",
        help="size of the disk, e.g. 8G (a raw file: default twice what the image needs "
        "plus 1 GiB, sparse; a device: all of it)",
    )
    parser.add_argument(
        "--karg",
        action="append",
        default=[],
        metavar="ARG",
        help="a kernel argument (repeat for more)",
    )
    parser.add_argument(
        "--root-ssh-authorized-keys",
        metavar="FILE",
        help="authorized_keys for root (kept across updates, through tmpfiles.d in /etc)",
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="where the staging sysroot is made (default: beside the target)",
    )
    add_target_image_option(parser)
    add_registry_options(parser)
    add_platform_options(parser)


def add_target_image_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target-image",
        metavar="IMAGE",
        help="the image later upgrades follow (REF or TRANSPORT:DETAILS), when the source "
        "is a local copy of it, e.g. an oci-archive: for an offline install",
    )


def target_image(args: argparse.Namespace) -> Any:
    """The ``--target-image`` as an image name, or None."""
    from atoll.oci.transports import parse_bootc_name

    if not args.target_image:
        return None
    return parse_bootc_name(args.target_image)


def register_to_disk(install_sub: argparse._SubParsersAction[Any]) -> None:
    to_disk = install_sub.add_parser(
        "to-disk",
        help="make TARGET (a block device or a raw disk image file) a disk that boots IMAGE",
        description="Partition TARGET, make its file system from IMAGE installed as by "
        "to-filesystem, and install GRUB for UEFI and/or BIOS (--boot). A file is replaced; "
        "a device is overwritten.",
    )
    add_global_options(to_disk)
    to_disk.add_argument(
        "target",
        metavar="TARGET",
        nargs="?",
        help="the disk (with --config: default, the one disk its [disk] rules match)",
    )
    to_disk.add_argument(
        "--source",
        metavar="IMAGE",
        help="the image: REF (a registry) or TRANSPORT:DETAILS",
    )
    to_disk.add_argument(
        "--config",
        metavar="FILE",
        help="install as this install config (install.toml, docs/install.md) says: the "
        "disk, image, kernel arguments, users, host name and signature policy",
    )
    add_disk_options(to_disk)
    to_disk.set_defaults(func=_to_disk)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    image = commands.add_parser(
        "disk-image",
        help="make a disk image file (raw, qcow2, vmdk, vhdx, ami) that boots IMAGE "
        "(for a VM, a cloud or dd)",
        description="Make a disk image file that boots IMAGE: as atoll install to-disk, "
        "with the console on the screen and the first serial port unless --karg "
        "gives a console=.",
    )
    add_global_options(image)
    image.add_argument("image", metavar="IMAGE", help="REF (a registry) or TRANSPORT:DETAILS")
    image.add_argument(
        "--type",
        choices=["raw", "qcow2", "vmdk", "vhdx", "ami", "iso"],
        default="raw",
        dest="image_type",
        help="raw (default), qcow2, vmdk (stream-optimized, vSphere), vhdx (Hyper-V), ami "
        "(raw in whole GiB for EC2; boots hybrid unless --boot says otherwise) or iso (an "
        "installer that installs unattended as --config says)",
    )
    image.add_argument("-o", "--output", required=True, metavar="FILE")
    image.add_argument(
        "--config",
        metavar="FILE",
        help="--type iso: the install config the ISO carries (install.toml, docs/install.md); "
        "--karg then gives the installer's own kernel arguments",
    )
    add_disk_options(image)
    image.set_defaults(func=_disk_image)

    iso = commands.add_parser("iso", help="change an installer ISO made by atoll")
    add_global_options(iso)
    iso_sub = iso.add_subparsers(dest="iso_command", metavar="COMMAND")
    iso_sub.required = True
    customize = iso_sub.add_parser(
        "customize",
        help="write ISO again with another install config (as mkksiso does for kickstarts)",
        description="Replace the install config of an installer ISO made by atoll disk-image "
        "--type iso; the image, kernel and installer stay as they are.",
    )
    add_global_options(customize)
    customize.add_argument("iso", metavar="ISO")
    customize.add_argument("--config", required=True, metavar="FILE", help="the install config")
    customize.add_argument("-o", "--output", required=True, metavar="FILE")
    customize.add_argument(
        "--workdir", metavar="DIR", help="where the ISO is taken apart (default: beside it)"
    )
    customize.set_defaults(func=_iso_customize)


def _options(args: argparse.Namespace) -> Any:
    from atoll.build.disk import DiskOptions
    from atoll.build.disklayout import DiskLayout, Filesystem, load_layout, parse_size
    from atoll.build.partition import BootMode

    layout = load_layout(Path(args.layout)) if args.layout else DiskLayout()
    rootfs = args.filesystem or layout.root_filesystem or "ext4"
    if layout.root_filesystem is not None and rootfs != layout.root_filesystem:
        raise InvalidInputError(
            f"--rootfs {rootfs} and {args.layout}'s [root] filesystem = "
            f"{layout.root_filesystem.value!r} disagree",
            hint="give the root file system in one place",
        )

    keys = None
    if args.root_ssh_authorized_keys:
        path = Path(args.root_ssh_authorized_keys)
        try:
            keys = path.read_bytes()
        except OSError as exc:
            raise from_oserror(exc, str(path)) from exc
        if not keys.strip():
            raise InvalidInputError(f"{path}: no keys in it")
    return DiskOptions(
        filesystem=Filesystem(rootfs),
        size=parse_size(args.size) if args.size else None,
        kargs=tuple(args.karg),
        root_ssh_authorized_keys=keys,
        stateroot=args.stateroot,
        workdir=Path(args.workdir) if args.workdir else None,
        target_image=target_image(args),
        boot=BootMode(args.boot or _default_boot(args)),
        secure_boot=args.secure_boot,
        layout=layout,
    )


def _default_boot(args: argparse.Namespace) -> str:
    # EC2 imports boot legacy BIOS unless told otherwise, and instance types differ.
    return "hybrid" if getattr(args, "image_type", None) == "ami" else "uefi"


def _describe(result: Any) -> str:
    version = f" {result.version}" if result.version else ""
    return (
        f"Made {result.target} ({result.type}, {result.size // (1024 * 1024)} MiB): "
        f"{result.image}{version}\n"
        f"  digest {result.digest}\n"
        f"  deployment {result.deployment}\n"
        f"  kernel {result.kernel}; root=UUID={result.fs_uuid}; {result.bootloader}"
    )


#: Options a config (install to-disk --config, disk-image --type iso) says instead.
_CONFIG_SAYS = {
    "boot": "--boot",
    "secure_boot": "--secure-boot",
    "size": "--size",
    "root_ssh_authorized_keys": "--root-ssh-authorized-keys",
    "target_image": "--target-image",
}


def _refuse_with_config(args: argparse.Namespace, also: dict[str, str]) -> None:
    for dest, option in {**_CONFIG_SAYS, **also}.items():
        if getattr(args, dest, None):
            raise UsageError(
                f"{option} does not go with --config: the install config says it",
                hint="see docs/install.md, 'The install config'",
            )


def _read_config(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: cannot read the install config ({exc})") from None


def _to_disk_from_config(args: argparse.Namespace, out: Output) -> int:
    from atoll.install import install_from_config, parse_config

    _refuse_with_config(args, {"source": "--source", "karg": "--karg"})
    path = Path(args.config)
    config = parse_config(_read_config(args.config), str(path))
    result = install_from_config(
        config,
        path.parent,
        target=Path(args.target) if args.target else None,
        workdir=Path(args.workdir) if args.workdir else None,
        ctx=system_context(args),
        progress=out.progress(),
    )
    out.result(result.to_json(), _describe(result))
    return 0


def _to_disk(args: argparse.Namespace, out: Output) -> int:
    from atoll.build.disk import install_to_disk
    from atoll.oci.transports import parse_bootc_name

    if args.config:
        return _to_disk_from_config(args, out)
    if not args.source or not args.target:
        raise UsageError(
            "install to-disk: give TARGET and --source IMAGE, or --config FILE",
            hint="see 'atoll install to-disk --help'",
        )
    name = parse_bootc_name(args.source, args.transport)
    result = install_to_disk(
        Path(args.target),
        name,
        options=_options(args),
        ctx=system_context(args),
        progress=out.progress(),
    )
    out.result(result.to_json(), _describe(result))
    return 0


def _describe_iso(result: Any) -> str:
    version = f" {result.version}" if result.version else ""
    carries = "the image (offline install)" if result.embedded else "no image (fetched at install)"
    return (
        f"Made {result.target} (iso, {result.size // (1024 * 1024)} MiB): installer for "
        f"{result.image}{version}\n"
        f"  digest {result.digest}\n"
        f"  kernel {result.kernel}; carries {carries}"
    )


def _iso(args: argparse.Namespace, out: Output) -> int:
    from atoll.install import make_iso
    from atoll.oci.transports import parse_bootc_name

    if not args.config:
        raise UsageError(
            "disk-image --type iso needs --config FILE: the install config the ISO carries",
            hint="see docs/install.md, 'The install config'",
        )
    _refuse_with_config(args, {})
    result = make_iso(
        Path(args.output),
        parse_bootc_name(args.image, args.transport),
        _read_config(args.config),
        config_source=args.config,
        kargs=tuple(args.karg),
        workdir=Path(args.workdir) if args.workdir else None,
        ctx=system_context(args),
        progress=out.progress(),
    )
    out.result(result.to_json(), _describe_iso(result))
    return 0


def _iso_customize(args: argparse.Namespace, out: Output) -> int:
    from atoll.install import customize_iso

    if args.iso_command != "customize":
        raise UsageError(f"unknown iso command {args.iso_command}")
    result = customize_iso(
        Path(args.iso),
        _read_config(args.config),
        Path(args.output),
        config_source=args.config,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    out.result(result.to_json(), _describe_iso(result))
    return 0


def _disk_image(args: argparse.Namespace, out: Output) -> int:
    from atoll.build.disk import ImageType, make_disk_image
    from atoll.oci.transports import parse_bootc_name

    if args.image_type == "iso":
        return _iso(args, out)
    if args.config:
        raise UsageError("--config goes with --type iso (or atoll install to-disk)")
    name = parse_bootc_name(args.image, args.transport)
    result = make_disk_image(
        Path(args.output),
        name,
        image_type=ImageType(args.image_type),
        options=_options(args),
        ctx=system_context(args),
        progress=out.progress(),
    )
    out.result(result.to_json(), _describe(result))
    return 0
