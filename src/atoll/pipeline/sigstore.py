"""Sigstore signatures kept in the registry, as cosign and containers/image keep them.

For an image whose manifest digest is ``sha256:HEX``, the signatures live in
the same repository as an OCI image manifest tagged ``sha256-HEX.sig``
(containers/image's ``use-sigstore-attachments: true``; cosign's default)::

    REPO:sha256-HEX.sig  (application/vnd.oci.image.manifest.v1+json)
    ├── config   application/vnd.oci.image.config.v1+json
    │            {"architecture":"","os":"","config":{},
    │             "rootfs":{"type":"layers","diff_ids":[LAYER DIGESTS]}}
    └── layers   one per signature, appended by each signer
        ├── mediaType    application/vnd.dev.cosign.simplesigning.v1+json
        ├── digest/size  of the payload blob below
        └── annotations  {"dev.cosignproject.cosign/signature": BASE64(DER ECDSA)}

The payload blob ("simple signing", as cosign and containers/image write it)::

    {"critical": {"identity": {"docker-reference": "HOST/REPO:TAG"},
                  "image": {"docker-manifest-digest": "sha256:HEX"},
                  "type": "cosign container image signature"},
     "optional": {"timestamp": UNIX-SECONDS}}

``optional`` is ``null`` in cosign's payloads without annotations; ``atoll
sign`` writes the signing time as containers-signature(5)'s
``optional.timestamp`` (an integer, seconds since the epoch), which a device
can require to be recent (``max_signature_age``, docs/updates.md): a mirror
that keeps serving an old, validly signed image stops being believed.
Other keys of ``optional`` are ignored, as containers/image ignores them.

The ECDSA P-256 signature is over SHA-256 of the payload bytes exactly as
stored; the verifier reads ``critical`` and ``optional`` only after the
signature checks.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from atoll import strictjson
from atoll.errors import (
    AtollError,
    BadSignatureError,
    ManifestError,
    NotFoundError,
    SignedDigestMismatchError,
    SignedIdentityMismatchError,
    UnsignedImageError,
    UnsupportedError,
)
from atoll.oci.client import RegistryClient
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from atoll.oci.pullsource import PullEndpoint
from atoll.oci.reference import ImageReference
from atoll.pipeline.keys import sign_bytes, verify_bytes

PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
#: Annotations containers/image refuses to accept without Fulcio/Rekor support.
_UNSUPPORTED_ANNOTATIONS = ("dev.sigstore.cosign/certificate", "dev.sigstore.cosign/chain")

#: Decides whether a signed docker-reference is acceptable for the image.
IdentityMatcher = Callable[[str], bool]


def attachment_tag(digest: Digest) -> str:
    """``sha256-HEX.sig``: where the signatures of *digest* live."""
    return f"{digest.algorithm}-{digest.hex}.sig"


def make_payload(identity: str, digest: Digest, timestamp: int | None = None) -> bytes:
    """The simple-signing payload; *timestamp* (seconds since the epoch) is the
    signing time, None for none (``"optional": null``)."""
    payload = {
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": str(digest)},
            "type": SIGNATURE_TYPE,
        },
        "optional": None if timestamp is None else {"timestamp": timestamp},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignedClaims:
    """What a verified payload says."""

    identity: str
    digest: str
    #: ``optional.timestamp``: when it was signed (seconds since the epoch); None if not said.
    timestamp: int | None = None


def parse_payload(payload: bytes) -> SignedClaims:
    """The claims of a payload; raises BadSignatureError if it is not a simple signing one.

    As strict as containers/image: exactly the fields above, no key twice (two
    verifiers must never read different claims from one signed payload), and in
    ``optional`` only ``creator`` (a string) and ``timestamp`` (an integer) checked.
    """
    try:
        doc = strictjson.loads(payload)
    except ValueError as exc:
        raise BadSignatureError(f"signature payload is malformed ({exc})") from None
    top = _exact_fields(doc, "the payload", "critical", "optional")
    _check_optional(top["optional"])
    critical = _exact_fields(top["critical"], "critical", "identity", "image", "type")
    if critical["type"] != SIGNATURE_TYPE:
        raise BadSignatureError(f"signature payload has type {critical['type']!r}")
    identity = _exact_fields(critical["identity"], "critical.identity", "docker-reference")
    image = _exact_fields(critical["image"], "critical.image", "docker-manifest-digest")
    reference, digest = identity["docker-reference"], image["docker-manifest-digest"]
    if not isinstance(reference, str) or not isinstance(digest, str):
        raise BadSignatureError("signature payload is malformed (identity or digest not a string)")
    return SignedClaims(reference, digest, _timestamp(top["optional"]))


def _exact_fields(value: Any, where: str, *fields: str) -> dict[str, Any]:
    if not isinstance(value, dict) or sorted(value) != sorted(fields):
        raise BadSignatureError(
            f"signature payload is malformed ({where} must be an object with exactly "
            f"{', '.join(fields)})"
        )
    return value


def _timestamp(optional: Any) -> int | None:
    """The signing time in ``optional.timestamp`` (checked by _check_optional)."""
    if not isinstance(optional, dict) or "timestamp" not in optional:
        return None
    return int(optional["timestamp"])


def _check_optional(optional: Any) -> None:
    if optional is None:
        return
    if not isinstance(optional, dict):
        raise BadSignatureError("signature payload is malformed (optional is not an object)")
    creator, timestamp = optional.get("creator", ""), optional.get("timestamp", 0)
    integral = isinstance(timestamp, int) or (
        isinstance(timestamp, float) and timestamp.is_integer()
    )
    if not isinstance(creator, str) or isinstance(timestamp, bool) or not integral:
        raise BadSignatureError(
            "signature payload is malformed (optional.creator or optional.timestamp)"
        )


@dataclass(frozen=True)
class Signature:
    """One layer of the attachment manifest: a payload and its claimed signature."""

    media_type: str
    payload: bytes
    annotations: dict[str, str]

    def signature_bytes(self) -> bytes | None:
        text = self.annotations.get(SIGNATURE_ANNOTATION)
        if text is None:
            return None
        try:
            return base64.b64decode(text, validate=True)
        # ValueError: a non-ASCII string is refused before it is decoded.
        except (binascii.Error, ValueError):
            return None


@dataclass(frozen=True)
class SignResult:
    image: str
    identity: str
    digest: Digest
    signatures: int
    attachment: str
    #: Every identity signed now (a refresh may sign several); ``identity`` is the first.
    identities: tuple[str, ...] = ()
    #: The signing time written (seconds since the epoch).
    timestamp: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "identity": self.identity,
            "identities": list(self.identities or (self.identity,)),
            "digest": str(self.digest),
            "signatures": self.signatures,
            "attachment": self.attachment,
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True)
class VerifyResult:
    image: str
    digest: Digest
    identity: str
    #: How many signatures the attachment holds, and how many verified.
    signatures: int
    verified: int

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "digest": str(self.digest),
            "identity": self.identity,
            "signatures": self.signatures,
            "verified": self.verified,
        }


def default_identity(ref: ImageReference) -> str:
    """The docker-reference a signature names: NAME:TAG, or NAME@DIGEST without a tag."""
    if ref.tag is not None:
        return f"{ref.name}:{ref.tag}"
    return f"{ref.name}@{ref.digest}"


def sign_image(
    ref: ImageReference,
    key: ec.EllipticCurvePrivateKey,
    ctx: SystemContext,
    *,
    identity: str | None = None,
    refresh: bool = False,
    timestamp: int | None = None,
) -> SignResult:
    """Sign the manifest *ref* names and add the signature to its ``.sig`` attachment.

    The payload carries the signing time, *timestamp* (default: now).  With
    *refresh*, the manifest must already carry a signature by *key*: each
    identity *key* signed (or only *identity*) is signed again, and the older
    signatures by *key* for it are dropped, so a scheduled refresh keeps the
    attachment one signature per identity and signer.
    """
    stamp = int(time.time()) if timestamp is None else timestamp
    with RegistryClient(ref.registry, ctx) as client:
        digest = client.get_manifest(ref.repository, ref.manifest_ref).digest
        manifest, config = _read_attachment(client, ref, digest)
        if manifest is None:
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}
            config = {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers"}}
        if refresh:
            identities, manifest["layers"] = _drop_own(client, ref, digest, manifest, key, identity)
        else:
            identities = [identity or default_identity(ref)]
        for name in identities:
            ImageReference.parse(name)  # refuse an identity containers/image could not parse
            payload = make_payload(name, digest, stamp)
            signature = base64.b64encode(sign_bytes(key, payload)).decode()
            payload_digest = Digest.of(payload)
            client.upload_blob(ref.repository, payload_digest, [payload], size=len(payload))
            manifest["layers"].append(
                {
                    "mediaType": PAYLOAD_MEDIA_TYPE,
                    "digest": str(payload_digest),
                    "size": len(payload),
                    "annotations": {SIGNATURE_ANNOTATION: signature},
                }
            )
        rootfs = config.setdefault("rootfs", {"type": "layers"})
        rootfs["diff_ids"] = [str(layer.get("digest")) for layer in manifest["layers"]]
        config_raw = json.dumps(config, separators=(",", ":")).encode()
        config_digest = Digest.of(config_raw)
        client.upload_blob(ref.repository, config_digest, [config_raw], size=len(config_raw))
        manifest["config"] = {
            "mediaType": OCI_CONFIG,
            "digest": str(config_digest),
            "size": len(config_raw),
        }
        tag = attachment_tag(digest)
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        client.put_manifest(ref.repository, tag, raw, OCI_MANIFEST)
    return SignResult(
        str(ref),
        identities[0],
        digest,
        len(manifest["layers"]),
        f"{ref.name}:{tag}",
        tuple(identities),
        stamp,
    )


def _drop_own(
    client: RegistryClient,
    ref: ImageReference,
    digest: Digest,
    manifest: dict[str, Any],
    key: ec.EllipticCurvePrivateKey,
    identity: str | None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """For a refresh: the identities *key* signed *digest* as (only *identity*
    when given), and the attachment's layers without those signatures."""
    public = key.public_key()
    identities: list[str] = []
    kept: list[dict[str, Any]] = []
    for layer in manifest["layers"]:
        claims = _own_claims(client, ref, digest, layer, public)
        if claims is not None and identity in (None, claims.identity):
            identities.append(claims.identity)
        else:
            kept.append(layer)
    if not identities:
        raise UnsignedImageError(
            f"{ref}: nothing to refresh: manifest {digest} carries no signature by this key"
            + (f" for {identity}" if identity else ""),
            hint="a refresh re-signs what was signed before; sign it first with atoll sign",
        )
    return list(dict.fromkeys(identities)), kept


def _own_claims(
    client: RegistryClient,
    ref: ImageReference,
    digest: Digest,
    layer: dict[str, Any],
    public: ec.EllipticCurvePublicKey,
) -> SignedClaims | None:
    """The claims of one attachment layer if it is a valid signature by *public* for *digest*."""
    if layer.get("mediaType") != PAYLOAD_MEDIA_TYPE:
        return None
    payload = client.fetch_blob(
        ref.repository, Digest.parse(str(layer.get("digest"))), layer.get("size")
    )
    annotations = layer.get("annotations") or {}
    sig = Signature(PAYLOAD_MEDIA_TYPE, payload, {str(k): str(v) for k, v in annotations.items()})
    try:
        return _verify_one(ref, sig, [public], digest, lambda _: True)
    except (BadSignatureError, SignedDigestMismatchError, SignedIdentityMismatchError):
        return None


def read_signatures(ref: ImageReference, ctx: SystemContext) -> tuple[Digest, list[Signature]]:
    """The manifest digest *ref* names now, and the signatures attached to it,
    both from the endpoint registries.conf sends reads of *ref* to (a mirror
    serves the attachment beside the image)."""
    with PullEndpoint(ref, ctx) as endpoint:
        fetched = endpoint.read(lambda client, repo: client.get_manifest(repo, ref.manifest_ref))
        client, digest = endpoint.client, fetched.digest
        there = ref._replace(registry=endpoint.registry, repository=endpoint.repository)
        manifest, _ = _read_attachment(client, there, digest, read_config=False)
        if manifest is None:
            return digest, []
        signatures = []
        for layer in manifest["layers"]:
            layer_digest = Digest.parse(str(layer.get("digest")))
            payload = client.fetch_blob(there.repository, layer_digest, layer.get("size"))
            annotations = layer.get("annotations") or {}
            signatures.append(
                Signature(
                    str(layer.get("mediaType")),
                    payload,
                    {str(k): str(v) for k, v in annotations.items()},
                )
            )
    return digest, signatures


def verify_image(
    ref: ImageReference,
    keys: list[ec.EllipticCurvePublicKey],
    ctx: SystemContext,
    *,
    matches: IdentityMatcher | None = None,
) -> VerifyResult:
    """Check that a signature by one of *keys* vouches for the manifest *ref* names now.

    *matches* decides whether the signed docker-reference is acceptable
    (default: containers/image's matchRepoDigestOrExact for *ref*).
    Raises UnsignedImageError, BadSignatureError, SignedDigestMismatchError or
    SignedIdentityMismatchError; the most telling one when several signatures fail.
    """
    from atoll.pipeline.identity import match_repo_digest_or_exact

    digest, signatures = read_signatures(ref, ctx)
    if matches is None:
        matches = lambda signed: match_repo_digest_or_exact(ref, signed)  # noqa: E731
    verified = verify_signatures(ref, digest, signatures, keys, matches)
    return VerifyResult(str(ref), digest, verified[0].identity, len(signatures), len(verified))


def verify_signatures(
    ref: ImageReference,
    digest: Digest,
    found: Sequence[Signature],
    keys: Sequence[ec.EllipticCurvePublicKey],
    matches: IdentityMatcher,
) -> list[SignedClaims]:
    """The claims of those of *found* that verify with one of *keys* for *digest*
    and name an identity *matches* accepts; raises the most telling refusal when
    none does (from the registry, or from an offline bundle)."""
    if not found:
        raise UnsignedImageError(
            f"{ref}: the image is not signed: no {attachment_tag(digest)} attachment "
            f"in {ref.name} for manifest {digest}",
            hint="sign it with atoll sign, or check that the image and tag are the ones meant",
        )
    failures: list[AtollError] = []
    verified: list[SignedClaims] = []
    for sig in found:
        try:
            verified.append(_verify_one(ref, sig, list(keys), digest, matches))
        except (BadSignatureError, SignedDigestMismatchError, SignedIdentityMismatchError) as exc:
            failures.append(exc)
    if verified:
        return verified
    # Report the failure that says most: a valid signature for the wrong thing.
    for kind in (SignedDigestMismatchError, SignedIdentityMismatchError):
        for failure in failures:
            if isinstance(failure, kind):
                raise failure
    raise failures[0]


def _verify_one(
    ref: ImageReference,
    sig: Signature,
    keys: list[ec.EllipticCurvePublicKey],
    digest: Digest,
    matches: IdentityMatcher,
) -> SignedClaims:
    if sig.media_type != PAYLOAD_MEDIA_TYPE:
        raise BadSignatureError(f"{ref}: signature layer has media type {sig.media_type!r}")
    for name in _UNSUPPORTED_ANNOTATIONS:
        if name in sig.annotations:
            raise BadSignatureError(
                f"{ref}: a signature carries {name} (Fulcio certificates are not supported)"
            )
    raw = sig.signature_bytes()
    if raw is None:
        raise BadSignatureError(f"{ref}: a signature layer has no valid {SIGNATURE_ANNOTATION}")
    if not any(verify_bytes(key, raw, sig.payload) for key in keys):
        raise BadSignatureError(
            f"{ref}: no signature verifies with the trusted key "
            f"(signed with another key, or altered)",
            hint="check that --key (or the policy's keyPath/keyData) is the signer's public key",
        )
    claims = parse_payload(sig.payload)
    if claims.digest != str(digest):
        raise SignedDigestMismatchError(
            f"{ref}: the signature is for manifest {claims.digest}, but the image is {digest} "
            "(the image was changed or the tag moved after signing)",
            hint="pull by the signed digest, or have the new image signed",
        )
    if not matches(claims.identity):
        raise SignedIdentityMismatchError(
            f"{ref}: the signature is for {claims.identity!r}, which does not match {ref}",
            hint="set signedIdentity in the policy if the image was signed under another name",
        )
    return claims


def _read_attachment(
    client: RegistryClient, ref: ImageReference, digest: Digest, *, read_config: bool = True
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    tag = attachment_tag(digest)
    where = f"{ref.name}:{tag}"
    try:
        fetched = client.get_manifest(ref.repository, tag)
    except NotFoundError:
        return None, {}
    try:
        manifest = strictjson.loads(fetched.raw)
    except strictjson.StrictJSONError as exc:
        raise ManifestError(f"{where}: the signature attachment: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: the signature attachment is not an OCI image manifest")
    media = manifest.get("mediaType") or fetched.media_type
    if media != OCI_MANIFEST or not isinstance(manifest.get("layers"), list):
        raise ManifestError(f"{where}: the signature attachment is not an OCI image manifest")
    config: dict[str, Any] = {}
    if read_config:
        desc = manifest.get("config") or {}
        try:
            config_raw = client.fetch_blob(
                ref.repository, Digest.parse(str(desc.get("digest"))), desc.get("size")
            )
            config = strictjson.loads(config_raw)
        except (ValueError, AtollError) as exc:
            raise ManifestError(f"{where}: cannot read the attachment's config: {exc}") from None
        if not isinstance(config, dict):
            raise ManifestError(f"{where}: the attachment's config is not a JSON object")
    return manifest, config


def require_registry(what: str) -> UnsupportedError:
    return UnsupportedError(
        f"{what}: signatures are kept in registries; name the image as docker://REF"
    )
