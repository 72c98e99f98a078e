"""The server's keys, kept in the database so that every API replica has them:
the certificate authority that certifies devices, and the key that signs
rendered specs.  Both are ECDSA P-256; private keys are stored as PEM, so the
database must be protected as the keys are (docs/fleet.md).

The CA's private key may live in a file instead (``--ca-key FILE``, PEM, mode
0600 or stricter): the database then keeps only the CA's certificate, its row's
``private_pem`` is empty, and every API process is started with the file.  A
file that other users may read, or whose key is not the certificate's, is
refused (:class:`~atoll.errors.FleetKeyError`)."""

from __future__ import annotations

import datetime
import functools
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from atoll.agent import wire
from atoll.errors import FleetKeyError, SpecTrustError
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
    ca_certificate: x509.Certificate
    spec_key: ec.EllipticCurvePrivateKey
    #: Every spec key still active, PEM public keys, the signing one first.
    spec_public_keys: tuple[str, ...]
    #: The CA's private key as the database holds it ("" when it is in a file).
    ca_private_pem: str = ""
    #: The file that holds the CA's private key (``--ca-key``).
    ca_key_file: Path | None = None

    @property
    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        """The CA's private key, read when a certificate is issued (a poll needs none)."""
        return _ca_key_of(self.ca_private_pem, self.ca_certificate, self.ca_key_file)

    @property
    def ca_pem(self) -> str:
        return self.ca_certificate.public_bytes(serialization.Encoding.PEM).decode()


def ensure_keys(session: Session, ca_key: Path | None = None) -> bool:
    """Make the CA and the spec key when the database has none; whether it made any.

    With *ca_key* the CA's private key is kept in that file, not the database:
    a new CA's key is written there (or taken from it, when the file exists),
    and a key the database holds is moved there."""
    rows = session.scalars(select(ServerKey).where(ServerKey.active)).all()
    purposes = {r.purpose for r in rows}
    made = False
    if CA not in purposes:
        key = read_ca_key(ca_key) if ca_key is not None and ca_key.exists() else None
        key = key or wire.generate_key()
        pem = wire.private_key_pem(key).decode()
        if ca_key is not None:
            _write_key_file(ca_key, pem)
        session.add(
            ServerKey(
                purpose=CA,
                private_pem="" if ca_key is not None else pem,
                certificate=_self_signed(key).public_bytes(serialization.Encoding.PEM).decode(),
            )
        )
        made = True
    elif ca_key is not None:
        ca = next(r for r in rows if r.purpose == CA)
        if ca.private_pem:
            if not ca_key.exists():
                _write_key_file(ca_key, ca.private_pem)
            ca.private_pem = ""
        # The file must hold this CA's key.
        _ca_key_of("", _certificate(ca.certificate), ca_key)
    if SPEC not in purposes:
        session.add(
            ServerKey(purpose=SPEC, private_pem=wire.private_key_pem(wire.generate_key()).decode())
        )
        made = True
    return made


def load_keys(session: Session, ca_key: Path | None = None) -> ServerKeys | None:
    rows = session.scalars(
        select(ServerKey).where(ServerKey.active).order_by(ServerKey.id.desc())
    ).all()
    ca = next((r for r in rows if r.purpose == CA), None)
    specs = [r for r in rows if r.purpose == SPEC] + [r for r in rows if r.purpose == SPEC_NEXT]
    if ca is None or not specs or specs[0].purpose != SPEC:
        return None
    spec_keys = [_private_key(r.private_pem) for r in specs]
    return ServerKeys(
        ca_certificate=_certificate(ca.certificate),
        spec_key=spec_keys[0],
        spec_public_keys=tuple(wire.public_key_pem(k.public_key()) for k in spec_keys),
        ca_private_pem=ca.private_pem,
        ca_key_file=ca_key,
    )


@functools.lru_cache(maxsize=4)
def _certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _ca_key_of(
    private_pem: str, certificate: x509.Certificate, ca_key: Path | None
) -> ec.EllipticCurvePrivateKey:
    """The CA's private key: from the database, or from the file *ca_key*."""
    if private_pem:
        if ca_key is not None:
            raise FleetKeyError(
                f"{ca_key}: the database still holds the CA's key",
                hint=f"move it out with atoll fleet db upgrade --db URL --ca-key {ca_key}",
            )
        return _private_key(private_pem)
    if ca_key is None:
        raise FleetKeyError("the CA's key is kept in a file: start the server with --ca-key FILE")
    key = read_ca_key(ca_key)
    if wire.key_id(key.public_key()) != wire.key_id(certificate.public_key()):  # type: ignore[arg-type]
        raise FleetKeyError(f"{ca_key}: not the key of this database's CA")
    return key


def read_ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The CA key in *path*; refused when others than its owner may read it."""
    try:
        info = path.stat()
    except OSError as exc:
        raise FleetKeyError(f"{path}: cannot read the CA key: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FleetKeyError(f"{path}: the CA key is not a regular file")
    if info.st_mode & 0o077:
        raise FleetKeyError(
            f"{path}: the CA key may be read by others (mode {info.st_mode & 0o777:04o})",
            hint=f"chmod 600 {path}",
        )
    return _key_file(str(path), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=4)
def _key_file(path: str, _mtime_ns: int, _size: int) -> ec.EllipticCurvePrivateKey:
    # Read again only when the file changed: every approval needs the key.
    try:
        return wire.load_private_key(Path(path).read_bytes())
    except OSError as exc:
        raise FleetKeyError(f"{path}: cannot read the CA key: {exc.strerror}") from None
    except (SpecTrustError, ValueError, TypeError):
        raise FleetKeyError(f"{path}: not a PEM private key") from None


def _write_key_file(path: Path, pem: str) -> None:
    from atoll.fsutil import write_atomic

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, pem.encode(), 0o600)


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
