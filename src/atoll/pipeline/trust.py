"""Admitting one image, by digest, under a trust policy: what devices and bundles call.

:func:`check_image` is the one entry point for every consumer that is about
to use an image it has already resolved to a manifest digest (``atoll
upgrade``, ``switch``, ``install --enforce-policy``, ``bundle apply``,
workload auto-update).  Unlike :func:`atoll.pipeline.policy.check_policy`,
which resolves the name again, it checks the signatures *of that digest*: the
image that is staged is the image that was verified, even if a tag moves
between the two.

Where the policy comes from on a device (as bootc does it): the booted
deployment's ``/etc/containers/policy.json``, unless ``--policy FILE`` names
another.  When neither exists the device behaves as before policies existed:
every image is admitted, and the decision says so (requirement ``none``).  A
policy that exists but cannot be read or parsed (a directory, a duplicated key,
a byte-order mark) refuses every image: it fails closed.

Dependencies: the standard library, until a ``sigstoreSigned`` requirement
has to be checked; only then is ``cryptography`` imported, and its absence is
reported as :class:`~atoll.errors.VerificationUnavailableError`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll.errors import AtollError, PolicyRejectedError, VerificationUnavailableError
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport
from atoll.pipeline.policy import (
    VERIFY_ERRORS,
    Policy,
    Requirement,
    RequirementType,
    admitted_reason,
    check_unsigned,
    load_policy,
    refusal,
    requirements_for,
    scope_of,
)

if TYPE_CHECKING:
    from atoll.pipeline.sigstore import Signature

#: Where a deployment keeps its trust policy, relative to its root.
DEVICE_POLICY = Path("etc/containers/policy.json")
#: The requirement recorded when there is no policy at all.
NO_POLICY = "none"

#: Gives the signatures attached to a digest (from a registry, or from a bundle).
SignatureSource = Callable[[ImageReference, Digest], Sequence["Signature"]]


@dataclass(frozen=True)
class TrustDecision:
    """Why an image was admitted."""

    image: str
    digest: str
    #: The policy file, or ``None`` when there was none.
    policy: str | None
    #: The scope that applied (``default`` when none matched).
    scope: str
    #: ``sigstoreSigned``, ``insecureAcceptAnything`` (or both, ``+``-joined), ``none``.
    requirement: str
    reason: str

    @property
    def signed(self) -> bool:
        return RequirementType.SIGSTORE_SIGNED.value in self.requirement.split("+")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def device_policy_path(deployment_root: Path, override: Path | None = None) -> Path | None:
    """The policy a device applies: *override*, else the deployment's own file if
    anything is there, else None (no policy).

    Anything at the path counts (a directory, a dangling symlink), and so does a
    path that cannot be looked at (``etc/containers`` a file, no permission):
    loading it then fails and every image is refused, where treating it as
    absent would admit all."""
    if override is not None:
        return override
    path = deployment_root / DEVICE_POLICY
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        pass  # not a directory on the way, no permission: not "no policy"
    return path


def load_optional_policy(path: Path | None) -> Policy | None:
    return load_policy(path) if path is not None else None


def check_image(
    name: ImageName | ImageReference | str,
    manifest_digest: Digest | str,
    policy: Policy | Path | None,
    *,
    ctx: SystemContext | None = None,
    signatures: SignatureSource | None = None,
    max_signature_age: datetime.timedelta | None = None,
    now: datetime.datetime | None = None,
) -> TrustDecision:
    """Admit the image *name* whose manifest is *manifest_digest*, or raise the refusal.

    *name* is what the user asked for (its tag decides the identity a signature
    must carry); *policy* a loaded policy, a policy file, or None (admit all).
    Signatures come from *signatures* when given (a bundle), else from the
    image's registry (``sha256-HEX.sig`` in its repository).  Refusals are the
    errors of :mod:`atoll.pipeline.policy`: UnsignedImageError (60),
    BadSignatureError (61), SignedDigestMismatchError (62),
    SignedIdentityMismatchError (63), PolicyRejectedError (64).

    With *max_signature_age*, a signature that verifies must also have been
    made within that age of *now* (:mod:`atoll.pipeline.freshness`):
    StaleSignatureError (99); a policy that asks for no signature cannot
    show that and refuses (64).
    """
    image = _image_name(name)
    digest = (
        manifest_digest if isinstance(manifest_digest, Digest) else Digest.parse(manifest_digest)
    )
    if isinstance(policy, Path):
        policy = load_policy(policy)
    if max_signature_age is not None and not _asks_signature(policy, image):
        raise PolicyRejectedError(
            f"{image}: max_signature_age is set, and the trust policy "
            f"({policy.source if policy else 'none'}) asks for no signature of it",
            hint="add a sigstoreSigned requirement for it to /etc/containers/policy.json, "
            "or remove max_signature_age from /etc/atoll/updates.toml",
        )
    if policy is None:
        return TrustDecision(
            str(image), str(digest), None, "default", NO_POLICY, "no trust policy: admitted"
        )
    label, kinds, requirements = scope_of(policy, image)
    reasons: list[str] = []
    age = None if max_signature_age is None else (max_signature_age, now or _utcnow())
    for req in requirements:
        error = _check(req, image, digest, ctx or SystemContext(), signatures, age)
        if error is not None:
            raise refusal(policy, label, req, error)
        reasons.append(admitted_reason(req))
    return TrustDecision(str(image), str(digest), policy.source, label, kinds, "; ".join(reasons))


def signature_keys(policy: Policy | None, name: ImageName | ImageReference | str) -> list[Any]:
    """The public keys the policy's scope for *name* trusts (its sigstoreSigned
    requirements); empty when the scope asks for no signature."""
    if policy is None:
        return []
    _, requirements = requirements_for(policy, _image_name(name))
    wanted = [r for r in requirements if r.type is RequirementType.SIGSTORE_SIGNED]
    if wanted:
        require_crypto(f"policy {policy.source}")
    return [key for r in wanted for key in r.public_keys()]


def require_crypto(what: str) -> None:
    """Raise VerificationUnavailableError unless ``cryptography`` can be imported."""
    try:
        import cryptography.hazmat.primitives.asymmetric.ec  # noqa: F401
    except ImportError:
        raise VerificationUnavailableError(
            f"{what} requires signature verification, and the Python package "
            "'cryptography' is not installed",
            hint="install it (Debian: apt-get install python3-cryptography) "
            "or change the trust policy",
        ) from None


def registry_signatures(ctx: SystemContext) -> SignatureSource:
    """Signatures read from the registry: the ``.sig`` attachment of the digest."""

    def read(ref: ImageReference, digest: Digest) -> Sequence[Signature]:
        from atoll.pipeline.sigstore import read_signatures

        by_digest = ref._replace(tag=None, digest=digest)
        _, found = read_signatures(by_digest, ctx)
        return found

    return read


# --- helpers --------------------------------------------------------------------------


def _image_name(name: ImageName | ImageReference | str) -> ImageName:
    if isinstance(name, ImageName):
        return name
    if isinstance(name, ImageReference):
        return ImageName(Transport.DOCKER, reference=name)
    if "://" in name or name.split(":", 1)[0] in {t.value for t in Transport}:
        return ImageName.parse(name)
    return ImageName(Transport.DOCKER, reference=ImageReference.parse(name))


def _check(
    req: Requirement,
    name: ImageName,
    digest: Digest,
    ctx: SystemContext,
    signatures: SignatureSource | None,
    age: tuple[datetime.timedelta, datetime.datetime] | None = None,
) -> AtollError | None:
    if req.type is not RequirementType.SIGSTORE_SIGNED:
        return check_unsigned(req, name)
    if name.transport is not Transport.DOCKER or name.reference is None:
        return PolicyRejectedError(
            f"{name}: sigstore signatures are only read from registries (docker://) "
            "and offline bundles",
            hint="pull from the registry, or apply an offline bundle (atoll bundle apply)",
        )
    require_crypto(f"{req.where.split(':', 1)[0] or 'the trust policy'} ({name})")
    from atoll.pipeline.sigstore import verify_signatures

    ref = name.reference
    keys = req.public_keys()
    found = (signatures or registry_signatures(ctx))(ref, digest)
    try:
        claims = verify_signatures(
            ref, digest, found, keys, lambda signed: req.signed_identity.matches(ref, signed)
        )
    except VERIFY_ERRORS as exc:
        return exc
    if age is not None:
        from atoll.pipeline.freshness import signature_age_error

        return signature_age_error(str(ref), [c.timestamp for c in claims], *age)
    return None


def _asks_signature(policy: Policy | None, name: ImageName) -> bool:
    if policy is None:
        return False
    _, requirements = requirements_for(policy, name)
    return any(r.type is RequirementType.SIGSTORE_SIGNED for r in requirements)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
