"""The device's commands, bootc's verbs: install, status, upgrade, switch,
rollback, pin, unpin, cleanup, finalize, config-diff, and ``boot`` for the
directory device."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.cli.common import (
    TRANSPORTS,
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)
from atoll.errors import UsageError

if TYPE_CHECKING:
    from atoll.sysroot.lifecycle import Device, StageResult

# Each command imports what it runs: `atoll status` does not load the code that
# fetches and stages images (tests/cli/test_imports.py holds the import sets).
# The choices are spelled out here for the same reason; the test compares them
# with EtcMergeStrategy.
STRATEGIES = ("fail", "keep-local", "keep-new")


def _sysroot_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sysroot",
        metavar="DIR",
        default="/sysroot",
        help="the device's sysroot (default /sysroot)",
    )


def _command(
    commands: argparse._SubParsersAction[Any], name: str, help_text: str, *, fetches: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text
    )
    add_global_options(parser)
    _sysroot_option(parser)
    if fetches:
        add_registry_options(parser)
        add_platform_options(parser)
        parser.add_argument(
            "--allow-no-kernel",
            action="store_true",
            help="deploy an image without usr/lib/modules/*/vmlinuz",
        )
    return parser


def register(commands: argparse._SubParsersAction[Any]) -> None:
    install = commands.add_parser("install", help="install an image onto a new device")
    install_sub = install.add_subparsers(dest="install_command", metavar="COMMAND")
    install_sub.required = True
    to_fs = install_sub.add_parser(
        "to-filesystem",
        help="make ROOT (an empty, mounted file system or directory) a sysroot running IMAGE",
    )
    add_global_options(to_fs)
    to_fs.add_argument("root", metavar="ROOT")
    to_fs.add_argument(
        "--source",
        required=True,
        metavar="IMAGE",
        help="the image: REF (a registry) or TRANSPORT:DETAILS",
    )
    to_fs.add_argument("--transport", choices=TRANSPORTS)
    to_fs.add_argument("--stateroot", default="default", help="name of the stateroot")
    to_fs.add_argument(
        "--karg",
        action="append",
        default=[],
        metavar="ARG",
        help="a kernel argument (repeat for more)",
    )
    to_fs.add_argument(
        "--allow-no-kernel",
        action="store_true",
        help="install an image without usr/lib/modules/*/vmlinuz",
    )
    from atoll.cli.disk import add_target_image_option, register_to_disk

    add_target_image_option(to_fs)
    add_registry_options(to_fs)
    add_platform_options(to_fs)
    _policy_options(to_fs, install=True)
    to_fs.set_defaults(func=_install)

    register_to_disk(install_sub)

    status = _command(commands, "status", "show the booted, staged and rollback deployments")
    status.add_argument("--format", choices=["human", "json", "yaml"], default=None)
    status.add_argument("--booted", action="store_true", help="only the booted deployment")
    status.set_defaults(func=_status)

    upgrade = _command(
        commands, "upgrade", "fetch and stage the newest version of the image", fetches=True
    )
    upgrade.add_argument(
        "--check",
        action="store_true",
        help="only read manifest and config and say what would change",
    )
    upgrade.add_argument(
        "--download-only",
        action="store_true",
        help="stage the update but do not apply it at the next shutdown",
    )
    upgrade.add_argument(
        "--from-downloaded",
        action="store_true",
        help="apply a download-only update without fetching again",
    )
    upgrade.add_argument(
        "--apply", action="store_true", help="finalize and reboot into the update right away"
    )
    upgrade.add_argument(
        "--etc-merge",
        choices=STRATEGIES,
        default="keep-local",
        help="what to do when local /etc and the image disagree on a type",
    )
    upgrade.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="stage the image the tag names even if its version is older than the booted one",
    )
    upgrade.set_defaults(func=_upgrade)

    switch = _command(commands, "switch", "stage another image", fetches=True)
    switch.add_argument("image", metavar="IMAGE")
    switch.add_argument("--transport", choices=TRANSPORTS)
    switch.add_argument("--apply", action="store_true", help="finalize and reboot right away")
    switch.add_argument("--etc-merge", choices=STRATEGIES, default="keep-local")
    switch.set_defaults(func=_switch)
    for parser in (upgrade, switch):
        _policy_options(parser)
        parser.add_argument(
            "--allow-rolled-back",
            action="store_true",
            help="take the image even if this device rolled back from it before",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="with --apply: reboot even while a reboot inhibitor holds "
            "([inhibitors] in /etc/atoll/updates.toml)",
        )
        parser.add_argument(
            "--wait-inhibitors",
            metavar="DURATION",
            default="0",
            help="with --apply: wait up to DURATION (e.g. 10m) for reboot inhibitors "
            "to let go (default: refuse at once, exit code 48)",
        )

    rollback = _command(commands, "rollback", "boot the previous deployment next time")
    rollback.set_defaults(func=_rollback)

    for name, pinned in (("pin", True), ("unpin", False)):
        parser = _command(commands, name, f"{name} a deployment (pinned ones are never removed)")
        parser.add_argument(
            "deployment",
            nargs="?",
            metavar="DEPLOYMENT",
            help="index in boot order (0, 1, …) or id prefix; default: booted",
        )
        parser.set_defaults(func=_pin, pinned=pinned)

    cleanup = _command(commands, "cleanup", "remove what no deployment needs")
    cleanup.set_defaults(func=_cleanup)

    finalize = _command(
        commands,
        "finalize",
        "apply the staged deployment: merge /etc, write boot entries (what shutdown runs)",
    )
    finalize.add_argument(
        "--etc-merge",
        choices=STRATEGIES,
        default=None,
        help="override the strategy chosen when the update was staged",
    )
    finalize.set_defaults(func=_finalize)

    config_diff = _command(
        commands, "config-diff", "show how /etc differs from the booted image's /etc"
    )
    config_diff.set_defaults(func=_config_diff)

    boot = _command(
        commands,
        "boot",
        "directory device: boot the sysroot as firmware and bootloader would, "
        "and run its health checks",
    )
    boot.add_argument(
        "--max-boots",
        type=int,
        default=1,
        metavar="N",
        help="boot again after a red boot, up to N boots (default 1)",
    )
    boot.set_defaults(func=_boot)


def _policy_options(parser: argparse.ArgumentParser, *, install: bool = False) -> None:
    where = "the host's" if install else "the booted deployment's"
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help=f"trust policy (containers-policy.json) to enforce instead of {where} "
        "/etc/containers/policy.json",
    )
    if install:
        parser.add_argument(
            "--enforce-policy",
            action="store_true",
            help="refuse the image unless /etc/containers/policy.json (or --policy) admits it",
        )


def _enforce_policy(
    args: argparse.Namespace, device: Device, *, install: bool = False, follow_tag: bool = False
) -> Any:
    """Make *device* refuse what the trust policy refuses, before anything is staged,
    and (not at install) what the ``[trust]`` settings of /etc/atoll/updates.toml
    refuse: a stale signature, and with *follow_tag* (an upgrade) an older version.

    Returns the list the decisions are appended to (empty when no policy applies)."""
    from atoll.pipeline.freshness import device_admission
    from atoll.pipeline.trust import load_optional_policy
    from atoll.updates import running_root

    override = Path(args.policy) if args.policy else None
    decisions: list[Any] = []
    if install:
        path = override or (Path("/etc/containers/policy.json") if args.enforce_policy else None)
        # a malformed file fails before any fetch
        device.admit = device_admission(device, load_optional_policy(path), decisions=decisions)
        return decisions
    return guard_staging(
        device,
        running_root(device),
        policy=override,
        follow_tag=follow_tag,
        allow_downgrade=getattr(args, "allow_downgrade", False),
    )


def guard_staging(
    device: Device,
    root: Path,
    *,
    policy: Path | None = None,
    follow_tag: bool,
    allow_downgrade: bool = False,
) -> list[Any]:
    """Make *device* admit only what the booted deployment's trust policy (or
    *policy*) admits and what the ``[trust]`` settings of *root*'s updates.toml
    allow: no stale signature and, with *follow_tag*, no older version.

    Returns the list the decisions are appended to."""
    from atoll.pipeline.freshness import device_admission
    from atoll.pipeline.trust import device_policy_path, load_optional_policy
    from atoll.updates import load_config

    decisions: list[Any] = []
    state = device.state()
    path = device_policy_path(state.path(state.booted or state.current), policy)
    trust = load_config(root).trust
    device.admit = device_admission(
        device,
        load_optional_policy(path),
        decisions=decisions,
        max_signature_age=trust.max_signature_age,
        follow_tag=follow_tag,
        allow_downgrade=trust.allow_downgrade or allow_downgrade,
    )
    return decisions


def _device(args: argparse.Namespace, out: Output, root: str | None = None) -> Device:
    from atoll.cli.hostdevice import open_device

    ctx = system_context(args) if hasattr(args, "override_os") else None
    return open_device(Path(root or args.sysroot), ctx, progress=out.progress())


def _describe_stage(result: StageResult) -> str:
    image = result.image
    version = f" {image.version}" if image.version else ""
    if result.rolled_back is not None:
        return f"{image.name}{version}: {result.message}\n  {_ROLLED_BACK_HINT}"
    if result.deployment is None:
        return f"{image.name}{version}: {result.message}"
    return (
        f"{result.message.capitalize()}: {image.name}{version}\n"
        f"  digest {image.digest}\n"
        f"  deployment {result.deployment.stateroot}/{result.deployment.short}; "
        f"{result.files_new} of {result.files_total} files new, "
        f"{result.bytes_fetched} bytes fetched"
    )


_ROLLED_BACK_HINT = (
    "--allow-rolled-back takes it anyway; atoll updates forget DIGEST lets updates take it"
)


def _install(args: argparse.Namespace, out: Output) -> int:
    from atoll.cli.disk import target_image
    from atoll.oci.transports import parse_bootc_name
    from atoll.sysroot.fetch import open_image

    if args.install_command != "to-filesystem":
        raise UsageError(f"unknown install command {args.install_command}")
    name = parse_bootc_name(args.source, args.transport)
    device = _device(args, out, args.root)
    decisions = _enforce_policy(args, device, install=True)
    if device.admit is not None:
        # Check before the sysroot is created, so a refused image leaves nothing behind.
        with open_image(name, device.ctx) as (_, remote):
            device.admit(name, remote)
    result = device.install(
        name,
        stateroot=args.stateroot,
        kargs=args.karg,
        allow_no_kernel=args.allow_no_kernel,
        target=target_image(args),
    )
    out.result(_with_trust(result, decisions), _describe_stage(result))
    return 0


def _with_trust(result: StageResult, decisions: list[Any]) -> dict[str, Any]:
    data = result.to_json()
    data["trust"] = decisions[-1].to_json() if decisions else None
    return data


def _status(args: argparse.Namespace, out: Output) -> int:
    from atoll.cli.hostdevice import host_status
    from atoll.sysroot.layout import Sysroot
    from atoll.sysroot.state import SysrootState
    from atoll.sysroot.status import describe

    # Only read: the state, without the code that fetches and stages.
    doc = host_status(SysrootState.load(Sysroot(Path(args.sysroot))))
    fmt = args.format or ("json" if out.json else "human")
    if fmt == "json":
        out.json = True
        out.result(doc)
    elif fmt == "yaml":
        import yaml

        out.result(None, yaml.safe_dump(doc, sort_keys=False))
    else:
        out.result(None, describe(doc, booted_only=args.booted))
    return 0


def _after_stage(
    args: argparse.Namespace,
    out: Output,
    device: Device,
    result: StageResult,
    decisions: list[Any] | None = None,
) -> int:
    out.result(_with_trust(result, decisions or []), _describe_stage(result))
    if getattr(args, "apply", False) and result.deployment is not None:
        _apply(args, device, out)
    return 0


def _apply(args: argparse.Namespace, device: Device, out: Output) -> None:
    """Reboot into the staged deployment: on a booted system systemctl reboots and
    atoll-finalize-staged.service finalizes at shutdown (started here rather than
    left to its path unit, which might not see the staged file before the reboot;
    finalized here first if the image lacks that unit); on the directory device,
    its own boot."""
    from atoll.run import run

    _allow_reboot(args, device, out)
    if running_inside(device):
        unit = run(["systemctl", "start", "atoll-finalize-staged.service"], check=False)
        if unit.returncode != 0:
            device.finalize()
        out.info("Rebooting into the new deployment")
        run(["systemctl", "reboot"], capture=False)
        return
    from atoll.health.assess import assess_boot, check_assessable

    check_assessable(device)
    device.finalize()
    record = device.boot()
    outcome = assess_boot(device, inside=False).report.outcome.value
    out.info(f"Rebooted into {record.deployment[:12]} (entry {record.entry}): {outcome}")


def _allow_reboot(args: argparse.Namespace, device: Device, out: Output) -> None:
    """--apply: wait for, or refuse (exit 48) while, a reboot inhibitor holds, unless --force."""
    from atoll.updates import SystemClock, ensure_reboot_allowed, parse_duration, running_root

    try:
        timeout = parse_duration(args.wait_inhibitors)
    except ValueError as exc:
        raise UsageError(f"--wait-inhibitors: {exc}", hint="e.g. --wait-inhibitors 10m") from None
    ignored = ensure_reboot_allowed(
        running_root(device), SystemClock(), force=args.force, timeout=timeout
    )
    for inhibitor in ignored:
        out.info(f"Ignoring reboot inhibitor {inhibitor.describe()} (--force)")


def running_inside(device: Device) -> bool:
    """True when this system was booted from *device* by systemd (a real machine
    or the container-boot device), so a reboot is systemd's to do."""
    return Path("/run/systemd/system").is_dir() and device.sysroot.root.resolve() == Path(
        "/sysroot"
    )


def _upgrade(args: argparse.Namespace, out: Output) -> int:
    from atoll.sysroot.etcmerge import EtcMergeStrategy
    from atoll.sysroot.rolledback import find_rolled_back

    device = _device(args, out)
    if args.check:
        current, image, changed = device.check()
        skipped = None
        if changed and not args.allow_rolled_back:
            skipped = find_rolled_back(device.sysroot, str(image.digest))
        changed = changed and skipped is None
        data = {
            "changed": changed,
            "current": {
                "digest": current.origin.manifest_digest,
                "version": current.origin.image_version,
            },
            "available": {"digest": str(image.digest), "version": image.version},
            "rolledBack": skipped.to_json() if skipped else None,
        }
        text = (
            f"Update available: {current.origin.image_version or '-'} "
            f"({current.origin.manifest_digest[:19]}) -> {image.version or '-'} "
            f"({str(image.digest)[:19]})"
            if changed
            else f"No changes in {image.name}"
        )
        if skipped is not None:
            text = f"No update taken: {skipped.describe()}\n  {_ROLLED_BACK_HINT}"

        out.result(data, text)
        return 0
    if args.from_downloaded:
        unlocked = device.unlock_downloaded()
        out.result(unlocked.to_json(), f"Will apply {unlocked.short} at the next shutdown")
        if args.apply:
            _apply(args, device, out)
        return 0
    if args.apply and not args.force:
        _allow_reboot(args, device, out)  # refuse before downloading anything
    decisions = _enforce_policy(args, device, follow_tag=True)
    result = device.stage(
        download_only=args.download_only,
        allow_no_kernel=args.allow_no_kernel,
        etc_strategy=EtcMergeStrategy(args.etc_merge),
        allow_rolled_back=args.allow_rolled_back,
    )
    return _after_stage(args, out, device, result, decisions)


def _switch(args: argparse.Namespace, out: Output) -> int:
    from atoll.oci.transports import parse_bootc_name
    from atoll.sysroot.etcmerge import EtcMergeStrategy

    name = parse_bootc_name(args.image, args.transport)
    device = _device(args, out)
    if args.apply and not args.force:
        _allow_reboot(args, device, out)  # refuse before downloading anything
    decisions = _enforce_policy(args, device)
    result = device.stage(
        name,
        allow_no_kernel=args.allow_no_kernel,
        etc_strategy=EtcMergeStrategy(args.etc_merge),
        allow_rolled_back=args.allow_rolled_back,
    )
    return _after_stage(args, out, device, result, decisions)


def _rollback(args: argparse.Namespace, out: Output) -> int:
    target = _device(args, out).rollback()
    out.result(
        {"next": target.to_json()},
        f"Next boot: {target.origin.image} {target.origin.image_version or ''} ({target.short})",
    )
    return 0


def _pin(args: argparse.Namespace, out: Output) -> int:
    updated = _device(args, out).set_pinned(args.deployment, args.pinned)
    word = "Pinned" if args.pinned else "Unpinned"
    out.result(updated.to_json(), f"{word} {updated.stateroot}/{updated.short}")
    return 0


def _cleanup(args: argparse.Namespace, out: Output) -> int:
    import json

    report = _device(args, out).cleanup()
    out.result(report, json.dumps(report, indent=2))
    return 0


def _finalize(args: argparse.Namespace, out: Output) -> int:
    from atoll.sysroot.etcmerge import EtcMergeStrategy

    strategy = EtcMergeStrategy(args.etc_merge) if args.etc_merge else None
    result = _device(args, out).finalize(etc_merge=strategy)
    if result is None:
        out.result({"finalized": None}, "Nothing staged")
        return 0
    conflicts = result.etc_merge.get("conflicts") or []
    out.result(
        {"finalized": result.deployment.to_json(), "removed": result.removed},
        f"Finalized {result.deployment.short}: it boots next"
        + (f" ({len(conflicts)} /etc conflicts, see atoll status)" if conflicts else ""),
    )
    return 0


def _config_diff(args: argparse.Namespace, out: Output) -> int:
    from atoll.sysroot.etcmerge import diff_etc

    device = _device(args, out)
    state = device.state()
    current = state.current
    store = device.store()
    with device.workdir() as work:
        pristine = work / "etc"
        device.checkout_etc(store, current.commit, pristine)
        changes = diff_etc(pristine, state.path(current) / "etc")
    data = [c.to_json() for c in changes]
    out.result(data, "\n".join(f"{c.kind:9} /etc/{c.path}" for c in changes) or "No changes")
    return 0


def _boot(args: argparse.Namespace, out: Output) -> int:
    from atoll.cli.health import check_output_lines
    from atoll.errors import HealthCheckFailedError
    from atoll.health.assess import assess_boot, check_assessable
    from atoll.sysroot.status import tries_left

    if args.max_boots < 1:
        raise UsageError("--max-boots must be at least 1")
    device = _device(args, out)
    check_assessable(device)  # before the first boot attempt is counted
    boots = []
    lines = []
    for number in range(1, args.max_boots + 1):
        record = device.boot()
        assessment = assess_boot(device, inside=False)
        boots.append({"boot": number, **record.to_json(), **assessment.to_json()})
        counter = "" if record.tries_left is None else f", {tries_left(record.tries_left)}"
        fallback = ", fallback" if record.fallback else ""
        outcome = assessment.report.outcome.value
        reason = assessment.report.reason
        report = assessment.report
        # The deployment's attempt, counted as health status counts it.
        attempt = (
            f", attempt {report.attempt} of {report.max_attempts}"
            if report.attempt is not None
            else ""
        )
        short = f"{record.deployment[:12]}{record.deployment[64:]}"
        line = (
            f"boot {number}{attempt}: {record.stateroot}/{short}"
            f" ({record.entry}{counter}{fallback}): {outcome}"
            + (f" ({reason.summary()})" if reason else "")
        )
        if assessment.rollback is not None:
            line += f"; rolled back from {assessment.rollback.from_deployment[:12]}"
        lines.append(line)
        if reason is not None:
            lines += check_output_lines(reason.output, "  ")
        if assessment.green:
            break
    # The boot lines are the result: stdout, as --json's document would be.
    out.result(boots if len(boots) > 1 else boots[0], "\n".join(lines))
    if not assessment.green:
        raise HealthCheckFailedError(
            f"the last boot is red: {reason.summary() if reason else 'see atoll health status'}",
            hint="boot again (the bootloader counts attempts) or see atoll health status",
        )
    return 0
