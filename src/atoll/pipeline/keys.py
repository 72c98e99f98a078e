"""Signing keys: ECDSA P-256, in the PEM forms cosign and containers/image use.

Private keys are read in any of these PEM forms:

===================================  ==============================================
``ENCRYPTED SIGSTORE PRIVATE KEY``   cosign >= 2.0: the JSON below, base64 in PEM
``ENCRYPTED COSIGN PRIVATE KEY``     cosign < 2.0 and containers/image 5.23
                                     (podman 4.3, skopeo 1.9) — the same JSON
``PRIVATE KEY``                      plain PKCS#8 (atoll's own use only)
``EC PRIVATE KEY``                   plain SEC1 (atoll's own use only)
===================================  ==============================================

The encrypted forms hold go-securesystemslib's ``encrypted`` JSON::

    {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1},
             "salt": BASE64(32 bytes)},
     "cipher": {"name": "nacl/secretbox", "nonce": BASE64(24 bytes)},
     "ciphertext": BASE64(secretbox(PKCS#8 DER))}

Public keys are ``PUBLIC KEY`` (SubjectPublicKeyInfo) PEM, as ``cosign
generate-key-pair`` writes ``cosign.pub``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from atoll import strictjson
from atoll.errors import SigningKeyError, from_oserror
from atoll.pipeline import secretbox

#: The PEM type containers/image 5.23 (podman 4.3, skopeo 1.9) requires.
COSIGN_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
#: The PEM type cosign 2 writes; newer containers/image reads both.
SIGSTORE_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
ENCRYPTED_PEM_TYPES = (COSIGN_PEM_TYPE, SIGSTORE_PEM_TYPE)
SCRYPT_N = 32768
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_SIZE = 32


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    encrypted: bool


def generate_key_pair(
    prefix: Path, passphrase: bytes | None = None, *, pem_type: str = COSIGN_PEM_TYPE
) -> KeyPair:
    """Write PREFIX.key and PREFIX.pub; encrypted (cosign form) when *passphrase* is given.

    An empty passphrase still encrypts, as ``cosign generate-key-pair`` does.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    if passphrase is None:
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        private_pem = encrypt_private_key(key, passphrase, pem_type=pem_type)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(
                f"{path}: already exists", hint="remove it or choose another --output prefix"
            )
    _write(private_path, private_pem, 0o600)
    _write(public_path, public_pem, 0o644)
    return KeyPair(private_path, public_path, passphrase is not None)


def encrypt_private_key(
    key: ec.EllipticCurvePrivateKey, passphrase: bytes, *, pem_type: str = COSIGN_PEM_TYPE
) -> bytes:
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(_SALT_SIZE)
    nonce = os.urandom(secretbox.NONCE_SIZE)
    box = secretbox.seal(der, nonce, _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    document = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": _b64(salt),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
        "ciphertext": _b64(box),
    }
    return _pem(pem_type, json.dumps(document, separators=(",", ":")).encode())


def load_private_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    data = _read(path)
    pem_type, body = _pem_block(path, data)
    if pem_type in ENCRYPTED_PEM_TYPES:
        if passphrase is None:
            raise SigningKeyError(
                f"{path}: the key is encrypted and no passphrase was given",
                hint="pass --passphrase-file FILE",
            )
        der = _decrypt(path, body, passphrase)
        key: Any = _parse(path, lambda: serialization.load_der_private_key(der, None))
    elif pem_type in ("PRIVATE KEY", "EC PRIVATE KEY"):
        key = _parse(path, lambda: serialization.load_pem_private_key(data, None))
    else:
        raise SigningKeyError(f"{path}: not a private key (PEM type {pem_type!r})")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{path}: not an ECDSA P-256 key", hint="use atoll key generate")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    return public_key_from_pem(_read(path), str(path))


def public_key_from_pem(data: bytes, where: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{where}: not an ECDSA P-256 public key")
    return key


def sign_bytes(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """An ASN.1 DER ECDSA signature over SHA-256(*data*), as cosign makes."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def read_passphrase(path: Path) -> bytes:
    """The passphrase in *path*, without one trailing newline (as containers/image reads it)."""
    data = _read(path)
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data.removesuffix(b"\n")


# --- helpers --------------------------------------------------------------------------


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=secretbox.KEY_SIZE, n=n, r=r, p=p).derive(passphrase)


def _decrypt(path: Path, body: bytes, passphrase: bytes) -> bytes:
    try:
        doc = strictjson.loads(body)
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise SigningKeyError(
                f"{path}: unsupported key encryption {kdf['name']}/{cipher['name']}"
            )
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        box = base64.b64decode(doc["ciphertext"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SigningKeyError(f"{path}: malformed encrypted key ({exc})") from None
    if n > 1 << 20 or r > 32 or p > 16 or len(nonce) != secretbox.NONCE_SIZE:
        raise SigningKeyError(f"{path}: unreasonable key encryption parameters")
    try:
        return secretbox.open_box(box, nonce, _derive(passphrase, salt, n, r, p))
    except secretbox.SecretBoxError:
        raise SigningKeyError(
            f"{path}: cannot decrypt the key: wrong passphrase",
            hint="check the file given with --passphrase-file",
        ) from None


def _parse(path: Path, load: Any) -> Any:
    try:
        return load()
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: cannot read the private key ({exc})") from None


def _pem(pem_type: str, body: bytes) -> bytes:
    encoded = base64.b64encode(body).decode()
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    text = f"-----BEGIN {pem_type}-----\n" + "\n".join(lines) + f"\n-----END {pem_type}-----\n"
    return text.encode()


def _pem_block(path: Path, data: bytes) -> tuple[str, bytes]:
    text = data.decode("ascii", errors="replace")
    begin = text.find("-----BEGIN ")
    if begin < 0:
        raise SigningKeyError(f"{path}: not a PEM file")
    head_end = text.find("-----", begin + 11)
    pem_type = text[begin + 11 : head_end]
    end = text.find(f"-----END {pem_type}-----", head_end)
    if head_end < 0 or end < 0:
        raise SigningKeyError(f"{path}: truncated PEM block")
    try:
        body = base64.b64decode("".join(text[head_end + 5 : end].split()), validate=True)
    except binascii.Error as exc:
        raise SigningKeyError(f"{path}: bad base64 in PEM ({exc})") from None
    return pem_type, body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise from_oserror(exc, str(path)) from None
