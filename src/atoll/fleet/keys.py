"""The server's keys, kept in the database so that every API replica has them:
the certificate authority that certifies devices, and the key that signs
rendered specs.  Both are ECDSA P-256; private keys are stored as PEM, so the
database must be protected as the keys are (docs/fleet.md)."""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from atoll.agent import wire
from atoll.fleet.db import ServerKey, utcnow

CA = "ca"
SPEC = "spec"
#: A spec key announced to devices (in signed specs) before it signs.
SPEC_NEXT = "spec-next"
CA_LIFETIME = datetime.timedelta(days=3650)
#: A device certificate's life; the agent renews it before the end (not yet: see docs/fleet.md).
DEVICE_CERT_LIFETIME = datetime.timedelta(days=365)


@dataclass(frozen=True)
class ServerKeys:
    ca_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate
    spec_key: ec.EllipticCurvePrivateKey
    #: Every spec key still active, PEM public keys, the signing one first.
    spec_public_keys: tuple[str, ...]

    @property
    def ca_pem(self) -> str:
        return self.ca_certificate.public_bytes(serialization.Encoding.PEM).decode()


def ensure_keys(session: Session) -> bool:
    """Make the CA and the spec key when the database has none; whether it made any."""
    purposes = set(session.scalars(select(ServerKey.purpose).where(ServerKey.active)))
    made = False
    if CA not in purposes:
        key = wire.generate_key()
        session.add(
            ServerKey(
                purpose=CA,
                private_pem=wire.private_key_pem(key).decode(),
                certificate=_self_signed(key).public_bytes(serialization.Encoding.PEM).decode(),
            )
        )
        made = True
    if SPEC not in purposes:
        session.add(
            ServerKey(purpose=SPEC, private_pem=wire.private_key_pem(wire.generate_key()).decode())
        )
        made = True
    return made


def load_keys(session: Session) -> ServerKeys | None:
    rows = session.scalars(
        select(ServerKey).where(ServerKey.active).order_by(ServerKey.id.desc())
    ).all()
    ca = next((r for r in rows if r.purpose == CA), None)
    specs = [r for r in rows if r.purpose == SPEC] + [r for r in rows if r.purpose == SPEC_NEXT]
    if ca is None or not specs or specs[0].purpose != SPEC:
        return None
    spec_keys = [_private_key(r.private_pem) for r in specs]
    return ServerKeys(
        ca_key=_private_key(ca.private_pem),
        ca_certificate=x509.load_pem_x509_certificate(ca.certificate.encode()),
        spec_key=spec_keys[0],
        spec_public_keys=tuple(wire.public_key_pem(k.public_key()) for k in spec_keys),
    )


@functools.lru_cache(maxsize=16)
def _private_key(pem: str) -> ec.EllipticCurvePrivateKey:
    # Parsed once per process: every poll needs the keys.
    return wire.load_private_key(pem.encode())


def rotate_spec_key(session: Session) -> str:
    """One step of a rotation of the spec key; what it did.

    Step 1 makes the next key and announces it: every device's signed spec
    lists it, so devices learn it from a key they already trust.  Step 2 (run
    once devices have polled) makes it the signing key and retires the old one,
    which devices then stop trusting."""
    rows = session.scalars(
        select(ServerKey)
        .where(ServerKey.active, ServerKey.purpose.in_((SPEC, SPEC_NEXT)))
        .with_for_update()
    ).all()
    upcoming = [r for r in rows if r.purpose == SPEC_NEXT]
    if not upcoming:
        key = wire.generate_key()
        session.add(ServerKey(purpose=SPEC_NEXT, private_pem=wire.private_key_pem(key).decode()))
        return f"announced spec key {wire.key_id(key.public_key())[:16]}"
    for row in rows:
        if row.purpose == SPEC:
            row.active = False
    upcoming[0].purpose = SPEC
    key = wire.load_private_key(upcoming[0].private_pem.encode())
    return f"spec key {wire.key_id(key.public_key())[:16]} now signs; the old one is retired"


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atoll fleet CA")])
    now = utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )


def issue_certificate(
    keys: ServerKeys, device: str, public_key: ec.EllipticCurvePublicKey
) -> tuple[str, datetime.datetime]:
    """A client certificate for *device*'s key, signed by the CA; (PEM, not after)."""
    now = utcnow()
    not_after = now + DEVICE_CERT_LIFETIME
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .issuer_name(keys.ca_certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(keys.ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), not_after
