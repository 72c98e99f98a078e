"""The one exception hierarchy of atoll, with an exit code for each kind of failure.

Library code raises these; only ``atoll.cli.main`` turns them into exit codes.
Every class carries the exit code the command line uses for it and, where it
helps, a hint telling the user what to do.  ``docs/exit-codes.md`` is checked
against :data:`EXIT_CODES` by the test suite, so the two never drift apart.

Exit codes are grouped by the part of the system that failed:

====  ==========================================================
0     success
1     an unexpected failure (a bug: please report it)
2     the command line is wrong
3-9   input given by the user (references, files, options)
10-19 image content (manifests, digests, blobs, layers)
20-29 talking to registries and other programs
30-39 the local machine (disk space, permissions, locks)
40-49 the device: sysroot, deployments, boot, health checks
50-59 workloads: Quadlet units and the containers they run
60-69 the pipeline: signing keys, signatures, the trust policy;
      67-69 builds: blueprints, build steps, the bootable-image lint
70-78 disks and disk images, the bootloader (GRUB), virtual machines;
      77-78 rechunking images into layers
79    a Python package a device command needs is not installed
80-84 builds: the base image of a blueprint build
85-89 the pipeline: promotion, mirroring, offline bundles
90-94 failover between devices, and the demo
100-109 the fleet: its server, database, enrollment, agent and signed specs
110-119 UEFI: firmware, Secure Boot
====  ==========================================================
"""

from __future__ import annotations

# Every command imports this module: it stays free of dataclasses and typing
# (milliseconds of start-up each), see tests/cli/test_imports.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class AtollError(Exception):
    """Base of every error atoll reports to a user."""

    exit_code: int = 1
    summary: str = "unexpected failure"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(AtollError):
    exit_code = 2
    summary = "the command line is wrong"


class InvalidReferenceError(AtollError):
    exit_code = 3
    summary = "an image reference or transport name cannot be parsed"


class InvalidInputError(AtollError):
    exit_code = 4
    summary = "a file or option given by the user is malformed"


class UnsupportedError(AtollError):
    exit_code = 5
    summary = "the request is valid but not supported (media type, transport, platform)"


class ConflictError(AtollError):
    exit_code = 6
    summary = "the options cannot all be satisfied (e.g. --preserve-digests with conversion)"


class ManifestError(AtollError):
    exit_code = 10
    summary = "a manifest, index or image config is malformed"


class DigestMismatchError(AtollError):
    exit_code = 11
    summary = "content does not match its digest or size"


class NotFoundError(AtollError):
    exit_code = 12
    summary = "an image, manifest, tag or blob does not exist"


class NoMatchingPlatformError(AtollError):
    exit_code = 13
    summary = "an index has no image for the requested platform"


class LayerError(AtollError):
    exit_code = 14
    summary = "a layer archive is corrupt or unsafe (e.g. a path with '..')"


class RegistryError(AtollError):
    exit_code = 20
    summary = "a registry answered with an error"


class RangesIgnoredError(RegistryError):
    """Partial pulls catch it and fetch whole layers instead."""

    exit_code = 28
    summary = "a registry answered a Range request with the whole blob"


class AuthenticationError(RegistryError):
    exit_code = 21
    summary = "a registry refused the credentials, or credentials are needed"


class NetworkError(AtollError):
    exit_code = 22
    summary = "a server could not be reached or the connection broke"


class TLSError(NetworkError):
    exit_code = 23
    summary = "the TLS connection failed (certificate not trusted or invalid)"


class CommandError(AtollError):
    exit_code = 24
    summary = "an external program failed"

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr_tail: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class ToolMissingError(CommandError):
    exit_code = 25
    summary = "an external program atoll needs is not installed"


class DeltaError(AtollError):
    exit_code = 26
    summary = "a binary delta is malformed, for other images, or does not make the image's files"


class NoSpaceError(AtollError):
    exit_code = 30
    summary = "the disk is full"


class LocalIOError(AtollError):
    exit_code = 31
    summary = "reading or writing a local file failed"


class LockedError(AtollError):
    exit_code = 32
    summary = "another atoll process holds the lock"


class StoreVersionError(AtollError):
    exit_code = 33
    summary = "the object store was written by a newer atoll"


class StoreCorruptError(AtollError):
    exit_code = 34
    summary = "the object store has corrupt or missing objects (see atoll store fsck)"


class NetworkSetupError(AtollError):
    exit_code = 35
    summary = "a device's network (namespace, veth pair, bridge) cannot be made or removed"


class KeepalivedConfigError(AtollError):
    exit_code = 36
    summary = (
        "a failover setting cannot be written as keepalived configuration, or keepalived rejects it"
    )


class KeepalivedStateError(AtollError):
    exit_code = 37
    summary = "keepalived is not running, or its state cannot be read (see atoll failover status)"


class SysrootVersionError(AtollError):
    exit_code = 40
    summary = "the sysroot or store was written by a newer atoll"


class NoKernelError(AtollError):
    exit_code = 41
    summary = "the image has no kernel under /usr/lib/modules (see --allow-no-kernel)"


class DeploymentError(AtollError):
    exit_code = 42
    summary = "the deployment operation is not possible in the sysroot's current state"


class EtcMergeConflictError(AtollError):
    exit_code = 43
    summary = "local changes to /etc conflict with the new image (e.g. file vs directory)"

    def __init__(self, message: str, *, paths: Sequence[str] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.paths = tuple(paths)


class BootEntryError(AtollError):
    exit_code = 44
    summary = "a boot entry is malformed or missing, or there is no entry to boot"


class ContainerBootError(AtollError):
    exit_code = 45
    summary = "a deployment cannot be booted as a container (no systemd in it, or no /var)"


class HealthCheckFailedError(AtollError):
    exit_code = 46
    summary = "a required health check failed: the boot is red (see atoll health status)"


class HealthRunError(AtollError):
    exit_code = 47
    summary = "the health checks could not be run (no such root, or no permission to chroot)"


class RebootInhibitedError(AtollError):
    exit_code = 48
    summary = "a reboot is held off by an inhibitor ([inhibitors] in /etc/atoll/updates.toml)"

    def __init__(
        self, message: str, *, holders: Sequence[str] = (), hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        #: Who holds the reboot off: one description per inhibitor.
        self.holders = tuple(holders)


class ImageLayoutError(AtollError):
    exit_code = 49
    summary = "the image cannot be deployed: /etc or /var is not a directory, or it has no /usr"


class QuadletUnitError(AtollError):
    exit_code = 50
    summary = "a Quadlet unit file is malformed (see docs/workloads.md)"


class QuadletDependencyError(AtollError):
    exit_code = 51
    summary = (
        "a Quadlet unit refers to a .network, .volume, .pod or .image unit that does not exist"
    )


class SupervisorNotRunningError(AtollError):
    exit_code = 52
    summary = "the workload supervisor is not running (no control socket; see atoll workload run)"


class UnitFailedError(AtollError):
    exit_code = 53
    summary = "a workload unit failed to start, or its job failed (see atoll workload status)"


class StartLimitHitError(UnitFailedError):
    exit_code = 54
    summary = "a workload unit was started too often (start-limit-hit); start it again by hand"


class UnknownUnitError(AtollError):
    exit_code = 55
    summary = "no workload unit has that name"


class WorkloadUpdateFailedError(AtollError):
    exit_code = 56
    summary = "a workload update failed or was rolled back (see the UPDATED column or the JSON)"


class WorkloadUpdateStateError(AtollError):
    exit_code = 57
    summary = "the workload auto-update state file is malformed or from a newer atoll"


class BoundImageError(AtollError):
    exit_code = 58
    summary = "an image bound to the OS image (bound-images.d) is malformed or cannot be pulled"


class UnsignedImageError(AtollError):
    exit_code = 60
    summary = "the image has no signature (no sha256-DIGEST.sig attachment in its repository)"


class BadSignatureError(AtollError):
    exit_code = 61
    summary = "no signature of the image verifies with the trusted key"


class SignedDigestMismatchError(AtollError):
    exit_code = 62
    summary = (
        "the signature is for another manifest digest (the image was changed or the tag moved)"
    )


class SignedIdentityMismatchError(AtollError):
    exit_code = 63
    summary = "the signature names another image (its docker-reference does not match)"


class PolicyRejectedError(AtollError):
    exit_code = 64
    summary = "the trust policy rejects the image"


class PolicyError(AtollError):
    exit_code = 65
    summary = "the trust policy file (policy.json) is malformed"


class SigningKeyError(AtollError):
    exit_code = 66
    summary = "a signing or verification key cannot be read (format, passphrase)"


class DowngradeRefusedError(AtollError):
    exit_code = 85
    summary = (
        "promotion would move a tag, or an upgrade a device, to an older version "
        "(--allow-downgrade to do it anyway)"
    )


class BundleError(AtollError):
    exit_code = 86
    summary = "an offline bundle is malformed, incomplete or from a newer atoll"


class BundleSignatureError(AtollError):
    exit_code = 87
    summary = "an offline bundle's own signature is missing or does not verify"


class VerificationUnavailableError(AtollError):
    exit_code = 88
    summary = "the trust policy needs signature checks, which need the Python package cryptography"


class PromotionError(AtollError):
    exit_code = 89
    summary = "an image cannot be promoted or mirrored (no version label, or a digest differs)"


class FailoverConfigError(AtollError):
    exit_code = 90
    summary = "a failover setting is wrong (address, peer, priority or interval)"


class FailoverSocketError(AtollError):
    exit_code = 91
    summary = "the failover agent cannot listen for adverts (its address is taken or not local)"


class FailoverNotRunningError(AtollError):
    exit_code = 92
    summary = "no failover agent is running with that status file (see atoll failover run)"


class DemoStepError(AtollError):
    exit_code = 93
    summary = "a step of the demo did not show what it should (the step and its log are named)"


class DemoStateError(AtollError):
    exit_code = 94
    summary = "no demo left running in that directory, or it cannot be stopped"


class StaleSignatureError(AtollError):
    exit_code = 99
    summary = "the image's newest valid signature is older than max_signature_age, or has no time"


class BlueprintError(AtollError):
    exit_code = 67
    summary = "a blueprint file is malformed (unknown key, wrong type); the message names the line"


class BuildError(AtollError):
    exit_code = 68
    summary = "an image build failed (a build step failed; see the output of podman build)"


class LintFailedError(AtollError):
    exit_code = 69
    summary = "the image failed the bootable-image lint (see atoll lint)"

    def __init__(self, message: str, *, report: object = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        #: The lint report (an atoll.build.lint.LintReport) that failed.
        self.report = report


class BaseImageError(AtollError):
    exit_code = 80
    summary = (
        "the base image of a blueprint build has no os-release or an unsupported family, "
        "or base create cannot make it (an unknown distribution, no dnf on the host)"
    )


class NotBootableError(AtollError):
    exit_code = 70
    summary = "the image cannot boot a machine (no kernel, no initramfs or no early-boot hook)"


class BootloaderError(AtollError):
    exit_code = 71
    summary = "the GRUB configuration or environment block is malformed or cannot be written"


class DiskError(AtollError):
    exit_code = 72
    summary = "a disk or disk image cannot be made (target, size, partitions, file system)"


class VMError(AtollError):
    exit_code = 73
    summary = "a virtual machine cannot be started (no disk image, bad option, QEMU refused)"


class FirmwareError(AtollError):
    exit_code = 110
    summary = "the virtual machine's UEFI firmware (OVMF) is not installed or cannot be copied"


class InstallConfigError(AtollError):
    exit_code = 111
    summary = "the install config (install.toml) is malformed or names something impossible"


class InstallTargetError(AtollError):
    exit_code = 112
    summary = "the installer finds no disk, or more than one, matching the install config's rules"


class InstallerIsoError(AtollError):
    exit_code = 113
    summary = "an installer ISO cannot be made or changed (not an atoll ISO, tools missing)"


class RechunkError(AtollError):
    exit_code = 77
    summary = "an image cannot be rechunked (too few layers allowed, or --previous has no layout)"


class PackageDatabaseError(AtollError):
    exit_code = 78
    summary = "the image's package database cannot be read (malformed, or no rpm here to read it)"


class MissingPackageError(AtollError):
    exit_code = 79
    summary = "a Python module this command needs is not installed (the message names its package)"


class FleetSpecError(AtollError):
    exit_code = 100
    summary = "a fleet resource is malformed or refused by the server (unknown field, wrong type)"


class FleetUnavailableError(AtollError):
    exit_code = 101
    summary = "the fleet server cannot be reached, or it answers that its database is down"


class FleetAuthError(AtollError):
    exit_code = 102
    summary = (
        "the fleet server refused the credentials (no token, an unknown one, or a revoked device)"
    )


class FleetRoleError(AtollError):
    exit_code = 109
    summary = "the operator's token is valid but its role is too small for the request"


class FleetNotFoundError(AtollError):
    exit_code = 103
    summary = "the fleet server has no resource of that kind and name"


class FleetConflictError(AtollError):
    exit_code = 104
    summary = "the request conflicts with the fleet's state (e.g. resuming a finished rollout)"


class FleetDatabaseError(AtollError):
    exit_code = 105
    summary = "the fleet database cannot be opened or is not at the schema this atoll needs"


class FleetKeyError(AtollError):
    exit_code = 123
    summary = (
        "the fleet CA's key file (--ca-key) is missing, unreadable, open to other users, "
        "or not the key of the CA in the database"
    )


class EnrollmentError(AtollError):
    exit_code = 106
    summary = "the device is not enrolled: its request is pending, denied, or it was revoked"


class SpecTrustError(AtollError):
    exit_code = 107
    summary = "a rendered spec is not trusted (bad signature, older version, another device's)"


class SpecExpiredError(AtollError):
    exit_code = 108
    summary = "a rendered spec is past its expiry; the agent keeps what it runs (freeze)"


class InterruptedError_(AtollError):
    exit_code = 130
    summary = "interrupted by the user (Ctrl-C)"


class ExitCode:
    """One row of docs/exit-codes.md."""

    __slots__ = ("code", "name", "summary")

    def __init__(self, code: int, name: str, summary: str) -> None:
        self.code = code
        self.name = name
        self.summary = summary

    def _key(self) -> tuple[int, str, str]:
        return (self.code, self.name, self.summary)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExitCode) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"ExitCode{self._key()!r}"


def _collect() -> tuple[ExitCode, ...]:
    seen: dict[int, ExitCode] = {0: ExitCode(0, "-", "success")}
    stack: list[type[AtollError]] = [AtollError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        code = ExitCode(cls.exit_code, cls.__name__.rstrip("_"), cls.summary)
        if cls.exit_code in seen and seen[cls.exit_code] != code:
            raise RuntimeError(f"exit code {cls.exit_code} used twice")
        seen[cls.exit_code] = code
    return tuple(sorted(seen.values(), key=lambda c: c.code))


EXIT_CODES: tuple[ExitCode, ...] = _collect()


def from_oserror(exc: OSError, what: str) -> AtollError:
    """Translate an OSError met while working on *what* into an atoll error."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(
            f"no space left on device while writing {what}",
            hint="free some space or choose another destination; nothing was left half-written",
        )
    detail = exc.strerror or str(exc)
    return LocalIOError(f"{what}: {detail}")
