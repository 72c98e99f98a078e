from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.errors import SigningKeyError
from atoll.pipeline import secretbox
from atoll.pipeline.keys import (
    COSIGN_PEM_TYPE,
    SIGSTORE_PEM_TYPE,
    _pem_block,
    generate_key_pair,
    load_private_key,
    load_public_key,
    sign_bytes,
    verify_bytes,
)


def test_secretbox_matches_nacl() -> None:
    # The vector of Go's x/crypto/nacl/secretbox tests, made with C NaCl.
    box = secretbox.seal(bytes([3]) * 64, bytes([2]) * 24, bytes([1]) * 32)
    assert box.hex() == (
        "8442bc313f4626f1359e3b50122b6ce6fe66ddfe7d39d14e637eb4fd5b45beadab55198df6ab5368"
        "439792a23c87db70acb6156dc5ef957ac04f6276cf6093b84be77ff0849cc33e34b7254d5a8f65ad"
    )
    assert secretbox.open_box(box, bytes([2]) * 24, bytes([1]) * 32) == bytes([3]) * 64
    tampered = box[:-1] + bytes([box[-1] ^ 1])
    with pytest.raises(secretbox.SecretBoxError):
        secretbox.open_box(tampered, bytes([2]) * 24, bytes([1]) * 32)


@pytest.mark.parametrize("pem_type", [COSIGN_PEM_TYPE, SIGSTORE_PEM_TYPE])
def test_encrypted_key_round_trips_in_cosign_form(tmp_path: Path, pem_type: str) -> None:
    pair = generate_key_pair(tmp_path / "k", b"secret", pem_type=pem_type)
    found, body = _pem_block(pair.private_path, pair.private_path.read_bytes())
    assert found == pem_type
    doc = json.loads(body)
    assert doc["kdf"]["name"] == "scrypt"
    assert doc["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert doc["cipher"]["name"] == "nacl/secretbox"
    key = load_private_key(pair.private_path, b"secret")
    assert verify_bytes(load_public_key(pair.public_path), sign_bytes(key, b"x"), b"x")
    assert pair.private_path.stat().st_mode & 0o777 == 0o600


def test_wrong_or_missing_passphrase_is_refused(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "k", b"secret")
    with pytest.raises(SigningKeyError, match="wrong passphrase"):
        load_private_key(pair.private_path, b"guess")
    with pytest.raises(SigningKeyError, match="no passphrase"):
        load_private_key(pair.private_path)


def test_plain_key_and_other_key_do_not_verify(tmp_path: Path) -> None:
    one = generate_key_pair(tmp_path / "one")
    two = generate_key_pair(tmp_path / "two")
    assert b"BEGIN PRIVATE KEY" in one.private_path.read_bytes()
    signature = sign_bytes(load_private_key(one.private_path), b"payload")
    assert verify_bytes(load_public_key(one.public_path), signature, b"payload")
    assert not verify_bytes(load_public_key(two.public_path), signature, b"payload")
    assert not verify_bytes(load_public_key(one.public_path), signature, b"payload!")


def test_existing_files_are_not_overwritten(tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "k")
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_key_pair(tmp_path / "k")


def test_a_public_key_is_not_a_private_key(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "k")
    with pytest.raises(SigningKeyError, match="not a private key"):
        load_private_key(pair.public_path)
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        load_public_key(pair.private_path)


def test_an_encrypted_key_with_a_duplicated_field_is_refused(tmp_path: Path) -> None:
    from atoll.pipeline.keys import _pem

    pair = generate_key_pair(tmp_path / "k", b"secret")
    pem_type, body = _pem_block(pair.private_path, pair.private_path.read_bytes())
    doubled = body.rstrip()[:-1] + b', "ciphertext": "AAAA"}'
    pair.private_path.write_bytes(_pem(pem_type, doubled))
    with pytest.raises(SigningKeyError, match='duplicate key "ciphertext"'):
        load_private_key(pair.private_path, b"secret")
