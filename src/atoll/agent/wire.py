"""The fleet's wire format, shared by the server and the agent.

**Signed requests.**  After enrollment a device signs every request with its
ECDSA P-256 key; the server checks the signature with the public key it
certified.  Three headers carry it::

    X-Atoll-Device:    the device's name
    X-Atoll-Timestamp: milliseconds since the epoch (strictly increasing per device)
    X-Atoll-Signature: base64(ECDSA-SHA256(message))

    message = "atoll-fleet-request-v1" LF METHOD LF PATH[?QUERY] LF TIMESTAMP LF
              hex(sha256(body))

A request further than :data:`MAX_SKEW_MS` from the server's clock is refused;
one that changes something (PUT, POST) must also be newer than the device's
last such request, so a captured one cannot be replayed.  A GET only reads:
sent again, it gets the same signed answer.

**Signed specs.**  The server answers a device's poll with an envelope::

    {"format": 1, "keyId": KEYID, "payload": BASE64(canonical JSON), "signature": BASE64}

    payload = {"device": NAME, "version": N, "issuedAt": ISO-8601, "expiresAt": ISO-8601,
               "specKeys": [PEM, ...],   # the keys the device trusts from now on
               "spec": {"os": {"image": REF@DIGEST} | null, "units": {...}, "files": [...],
                        "updatePolicy": {...} | null}}

KEYID is the hex sha256 of the signing key's DER SubjectPublicKeyInfo.  Canonical
JSON is sorted keys, no spaces, UTF-8.  The agent refuses an envelope whose
signature does not verify with a key the server gave it at enrollment, that names
another device, or whose version is older than the one it applied (a replayed
spec); it keeps what it runs when the envelope is past ``expiresAt``.

**Key rotation.**  A device replaces its key with ``POST /api/v1/agent/key``,
signed with the key it has, whose body names the new public key and proves the
device holds it (the new key's signature over :func:`rotation_message`)::

    {"publicKey": PEM, "proof": BASE64(ECDSA-SHA256(message))}

    message = "atoll-fleet-key-rotation-v1" LF DEVICE LF hex(sha256(PEM))

From then on only the new key is accepted.  The server asks for a rotation by
answering a status report with the header ``X-Atoll-Key-Rotation: requested``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atoll.errors import SpecExpiredError, SpecTrustError
from atoll.lazy import lazy_module
from atoll.timeutil import utc_timestamp

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
else:
    hashes = lazy_module("cryptography.hazmat.primitives.hashes")
    serialization = lazy_module("cryptography.hazmat.primitives.serialization")
    ec = lazy_module("cryptography.hazmat.primitives.asymmetric.ec")

ENVELOPE_FORMAT = 1
REQUEST_CONTEXT = b"atoll-fleet-request-v1"
HEADER_DEVICE = "X-Atoll-Device"
HEADER_TIMESTAMP = "X-Atoll-Timestamp"
HEADER_SIGNATURE = "X-Atoll-Signature"
ROTATION_CONTEXT = b"atoll-fleet-key-rotation-v1"
HEADER_ROTATION = "X-Atoll-Key-Rotation"
#: How far a request's timestamp may be from the server's clock.
MAX_SKEW_MS = 300_000


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SpecTrustError("the key is not an ECDSA P-256 private key")
    return key


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """An ECDSA P-256 public key from PEM; anything else is refused."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise SpecTrustError("the public key is not a PEM SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SpecTrustError("the public key is not an ECDSA P-256 key")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()


def verify(key: ec.EllipticCurvePublicKey, message: bytes, signature: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def request_message(method: str, target: str, timestamp_ms: int, body: bytes) -> bytes:
    """What a device signs for one request (*target*: path and query as sent)."""
    return b"\n".join(
        [
            REQUEST_CONTEXT,
            method.upper().encode(),
            target.encode(),
            str(timestamp_ms).encode(),
            hashlib.sha256(body).hexdigest().encode(),
        ]
    )


def rotation_message(device: str, public_pem: str) -> bytes:
    """What a device's new key signs to show that the device holds it."""
    digest = hashlib.sha256(public_pem.encode()).hexdigest()
    return b"\n".join([ROTATION_CONTEXT, device.encode(), digest.encode()])


def signed_headers(
    key: ec.EllipticCurvePrivateKey,
    device: str,
    method: str,
    target: str,
    body: bytes,
    timestamp_ms: int,
) -> dict[str, str]:
    message = request_message(method, target, timestamp_ms, body)
    return {
        HEADER_DEVICE: device,
        HEADER_TIMESTAMP: str(timestamp_ms),
        HEADER_SIGNATURE: sign(key, message),
    }


def seal_spec(key: ec.EllipticCurvePrivateKey, payload: dict[str, Any]) -> dict[str, Any]:
    data = canonical_json(payload)
    return {
        "format": ENVELOPE_FORMAT,
        "keyId": key_id(key.public_key()),
        "payload": base64.b64encode(data).decode(),
        "signature": sign(key, data),
    }


@dataclass(frozen=True)
class OpenedSpec:
    device: str
    version: int
    issued_at: datetime.datetime
    expires_at: datetime.datetime
    spec: dict[str, Any]
    payload: dict[str, Any]


def _time(payload: dict[str, Any], key: str) -> datetime.datetime:
    text = payload.get(key)
    try:
        when = datetime.datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise SpecTrustError(f"the spec's {key} is not an ISO-8601 time with a zone")
    return when


def open_spec(
    envelope: Any,
    keys: dict[str, ec.EllipticCurvePublicKey],
    *,
    device: str,
    applied_version: int,
    now: datetime.datetime,
) -> OpenedSpec:
    """The payload of a signed spec envelope, once every check holds.

    Raises :class:`SpecTrustError` for a bad envelope or signature, another
    device's spec or one older than *applied_version* (a rollback), and
    :class:`SpecExpiredError` for one past its expiry (a freeze).
    """
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT:
        raise SpecTrustError(f"the spec envelope is not format {ENVELOPE_FORMAT}")
    key = keys.get(str(envelope.get("keyId")))
    if key is None:
        raise SpecTrustError(
            f"the spec is signed with key {str(envelope.get('keyId'))[:16]}, "
            "which the server did not give this device",
            hint="re-enroll the device if the server's spec key was rotated",
        )
    payload_b64, signature = envelope.get("payload"), envelope.get("signature")
    if not isinstance(payload_b64, str) or not isinstance(signature, str):
        raise SpecTrustError("the spec envelope has no payload or signature")
    try:
        data = base64.b64decode(payload_b64, validate=True)
    except binascii.Error:
        raise SpecTrustError("the spec payload is not base64") from None
    if not verify(key, data, signature):
        raise SpecTrustError("the spec's signature does not verify")
    try:
        payload = json.loads(data)
    except ValueError:
        raise SpecTrustError("the signed spec payload is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("spec"), dict):
        raise SpecTrustError("the signed spec payload has no spec")
    if payload.get("device") != device:
        raise SpecTrustError(f"the spec is for device {payload.get('device')!r}, not {device!r}")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SpecTrustError("the spec's version is not a positive integer")
    if version < applied_version:
        raise SpecTrustError(
            f"the spec's version {version} is older than the applied version "
            f"{applied_version}: refused as a rollback"
        )
    opened = OpenedSpec(
        device=device,
        version=version,
        issued_at=_time(payload, "issuedAt"),
        expires_at=_time(payload, "expiresAt"),
        spec=payload["spec"],
        payload=payload,
    )
    if opened.expires_at <= now:
        raise SpecExpiredError(
            f"the spec version {version} expired at {utc_timestamp(opened.expires_at)}: "
            "the device keeps what it runs",
            hint="the server has not signed a fresh spec for this device; check its clock "
            "and that it can reach the server",
        )
    return opened
