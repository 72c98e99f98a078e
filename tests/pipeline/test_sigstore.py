"""``atoll sign`` and ``atoll verify`` against a real registry."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from atoll.errors import (
    BadSignatureError,
    SignedDigestMismatchError,
    SignedIdentityMismatchError,
    UnsignedImageError,
)
from atoll.oci.client import RegistryClient
from atoll.oci.digest import Digest
from atoll.oci.reference import ImageReference
from atoll.pipeline import load_private_key, load_public_key, sign_image, verify_image
from atoll.pipeline.sigstore import (
    PAYLOAD_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    attachment_tag,
    parse_payload,
    read_signatures,
)
from helpers.registry import RegistryView

from .conftest import Cli

pytestmark = pytest.mark.integration


def pushed(registry: RegistryView, seed: str = "atoll") -> str:
    repo = registry.new_repo("signed")
    registry.push_test_image(repo, "v1", seed=seed)
    return f"{registry.host}/{repo}:v1"


def test_sign_then_verify_succeeds(
    registry: RegistryView, cli: Cli, keys: tuple[Path, Path]
) -> None:
    image = pushed(registry)
    code, out, err = cli("sign", f"docker://{image}", "--key", str(keys[0]), "--json")
    assert code == 0, err
    signed = json.loads(out)
    assert signed["identity"] == image
    assert signed["signatures"] == 1

    code, out, err = cli("verify", f"docker://{image}", "--key", str(keys[1]), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["digest"] == signed["digest"]
    assert result["identity"] == image
    assert result["verified"] == 1


def test_signature_is_stored_as_cosign_and_containers_image_store_it(
    registry: RegistryView, keys: tuple[Path, Path]
) -> None:
    image = pushed(registry)
    ref = ImageReference.parse(image)
    result = sign_image(ref, load_private_key(keys[0]), registry.ctx(), timestamp=1780000000)
    with RegistryClient(ref.registry, registry.ctx()) as client:
        raw = client.get_manifest(ref.repository, f"sha256-{result.digest.hex}.sig").raw
        manifest = json.loads(raw)
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        [layer] = manifest["layers"]
        assert layer["mediaType"] == PAYLOAD_MEDIA_TYPE
        payload = client.fetch_blob(ref.repository, Digest.parse(layer["digest"]))
        config = json.loads(
            client.fetch_blob(ref.repository, Digest.parse(manifest["config"]["digest"]))
        )
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer["digest"]]}
    assert json.loads(payload) == {
        "critical": {
            "identity": {"docker-reference": image},
            "image": {"docker-manifest-digest": str(result.digest)},
            "type": "cosign container image signature",
        },
        "optional": {"timestamp": 1780000000},
    }
    # The annotation is a DER ECDSA signature over the payload bytes.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    der = base64.b64decode(layer["annotations"][SIGNATURE_ANNOTATION])
    load_public_key(keys[1]).verify(der, payload, ec.ECDSA(hashes.SHA256()))


def test_verify_with_another_key_fails(
    registry: RegistryView, cli: Cli, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    image = pushed(registry)
    assert cli("sign", f"docker://{image}", "--key", str(keys[0]))[0] == 0
    code, _, err = cli("verify", f"docker://{image}", "--key", str(other_keys[1]))
    assert code == BadSignatureError.exit_code
    assert "no signature verifies with the trusted key" in err
    assert err.count("\natoll: error") == 0


def test_unsigned_image_fails(registry: RegistryView, cli: Cli, keys: tuple[Path, Path]) -> None:
    image = pushed(registry)
    code, _, err = cli("verify", f"docker://{image}", "--key", str(keys[1]))
    assert code == UnsignedImageError.exit_code
    assert "is not signed" in err


def test_image_pushed_over_the_signed_tag_fails_with_digest_mismatch(
    registry: RegistryView, keys: tuple[Path, Path]
) -> None:
    repo = registry.new_repo("moved")
    first = registry.push_test_image(repo, "v1", seed="first")
    ref = ImageReference.parse(f"{registry.host}/{repo}:v1")
    sign_image(ref, load_private_key(keys[0]), registry.ctx())
    second = registry.push_test_image(repo, "v1", seed="second")
    assert first.manifest_digest != second.manifest_digest
    # An attacker copies the old signature to the new digest's attachment tag.
    with RegistryClient(ref.registry, registry.ctx()) as client:
        old = client.get_manifest(repo, attachment_tag(Digest.parse(first.manifest_digest))).raw
        client.put_manifest(
            repo,
            attachment_tag(Digest.parse(second.manifest_digest)),
            old,
            "application/vnd.oci.image.manifest.v1+json",
        )
    with pytest.raises(SignedDigestMismatchError, match="the tag moved"):
        verify_image(ref, [load_public_key(keys[1])], registry.ctx())
    # The original image, by digest, still verifies.
    pinned = ImageReference(ref.registry, ref.repository, None, Digest.parse(first.manifest_digest))
    assert verify_image(pinned, [load_public_key(keys[1])], registry.ctx()).verified == 1


def test_moved_tag_without_forged_attachment_is_unsigned(
    registry: RegistryView, cli: Cli, keys: tuple[Path, Path]
) -> None:
    repo = registry.new_repo("moved")
    registry.push_test_image(repo, "v1", seed="first")
    image = f"docker://{registry.host}/{repo}:v1"
    assert cli("sign", image, "--key", str(keys[0]))[0] == 0
    registry.push_test_image(repo, "v1", seed="second")
    code, _, err = cli("verify", image, "--key", str(keys[1]))
    assert code == UnsignedImageError.exit_code, err


def test_second_signature_is_appended(
    registry: RegistryView, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    ref = ImageReference.parse(pushed(registry))
    ctx = registry.ctx()
    sign_image(ref, load_private_key(keys[0]), ctx)
    result = sign_image(ref, load_private_key(other_keys[0]), ctx)
    assert result.signatures == 2
    _, signatures = read_signatures(ref, ctx)
    assert len(signatures) == 2
    for pub in (keys[1], other_keys[1]):
        assert verify_image(ref, [load_public_key(pub)], ctx).signatures == 2


def test_signature_for_another_name_fails_identity_check(
    registry: RegistryView, keys: tuple[Path, Path]
) -> None:
    ref = ImageReference.parse(pushed(registry))
    ctx = registry.ctx()
    sign_image(ref, load_private_key(keys[0]), ctx, identity=f"{ref.name}:other-tag")
    with pytest.raises(SignedIdentityMismatchError):
        verify_image(ref, [load_public_key(keys[1])], ctx)
    # By digest, matchRepoDigestOrExact only needs the same repository.
    digest, _ = read_signatures(ref, ctx)
    by_digest = ImageReference(ref.registry, ref.repository, None, digest)
    assert verify_image(by_digest, [load_public_key(keys[1])], ctx).verified == 1


def test_encrypted_key_signs_with_its_passphrase(
    registry: RegistryView, cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "pass").write_text("correct horse\n")
    (tmp_path / "wrong").write_text("battery staple\n")
    code, _, err = cli(
        "key",
        "generate",
        "--output",
        str(tmp_path / "enc"),
        "--passphrase-file",
        str(tmp_path / "pass"),
    )
    assert code == 0, err
    image = f"docker://{pushed(registry)}"
    key = str(tmp_path / "enc.key")
    code, _, err = cli("sign", image, "--key", key, "--passphrase-file", str(tmp_path / "wrong"))
    assert code == 66 and "wrong passphrase" in err
    code, _, err = cli("sign", image, "--key", key)
    assert code == 66 and "no passphrase" in err
    assert cli("sign", image, "--key", key, "--passphrase-file", str(tmp_path / "pass"))[0] == 0
    assert cli("verify", image, "--key", str(tmp_path / "enc.pub"))[0] == 0


def test_a_payload_with_a_duplicated_key_is_no_signature() -> None:
    """Two readers of one signed payload must not see two digests."""
    from atoll.pipeline.sigstore import parse_payload

    good = Digest.of(b"good")
    evil = Digest.of(b"evil")
    payload = (
        b'{"critical": {"type": "cosign container image signature", '
        b'"identity": {"docker-reference": "r.example/a"}, '
        b'"image": {"docker-manifest-digest": "' + str(good).encode() + b'", '
        b'"docker-manifest-digest": "' + str(evil).encode() + b'"}}, "optional": null}'
    )
    with pytest.raises(BadSignatureError, match="duplicate key"):
        parse_payload(payload)


def test_sign_records_the_time_now(registry: RegistryView, keys: tuple[Path, Path]) -> None:
    ref = ImageReference.parse(pushed(registry))
    before = int(time.time())
    sign_image(ref, load_private_key(keys[0]), registry.ctx())
    _, [signature] = read_signatures(ref, registry.ctx())
    stamp = parse_payload(signature.payload).timestamp
    assert stamp is not None and before <= stamp <= int(time.time())


def test_refresh_replaces_the_keys_old_signatures_and_keeps_others(
    registry: RegistryView, cli: Cli, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    ref = ImageReference.parse(pushed(registry))
    ctx = registry.ctx()
    key = load_private_key(keys[0])
    sign_image(ref, key, ctx, timestamp=1000)
    sign_image(ref, key, ctx, identity=f"{ref.name}:1.0", timestamp=1000)
    sign_image(ref, key, ctx, timestamp=2000)
    sign_image(ref, load_private_key(other_keys[0]), ctx, timestamp=1000)

    code, out, err = cli("sign", "--refresh", f"docker://{ref}", "--key", str(keys[0]), "--json")
    assert code == 0, err
    refreshed = json.loads(out)
    assert refreshed["signatures"] == 3
    assert sorted(refreshed["identities"]) == sorted([str(ref), f"{ref.name}:1.0"])
    _, found = read_signatures(ref, ctx)
    claims = [parse_payload(s.payload) for s in found]
    # The other signer's signature first, untouched; then one fresh one per identity.
    assert [(c.identity, c.timestamp) for c in claims[:1]] == [(str(ref), 1000)]
    assert sorted(c.identity for c in claims[1:]) == sorted([str(ref), f"{ref.name}:1.0"])
    assert all(c.timestamp is not None and c.timestamp > 2000 for c in claims[1:])
    assert verify_image(ref, [load_public_key(keys[1])], ctx).verified == 1
    assert verify_image(ref, [load_public_key(other_keys[1])], ctx).verified == 1

    # --identity refreshes only that one.
    sign_image(ref, key, ctx, refresh=True, identity=f"{ref.name}:1.0", timestamp=3000)
    _, found = read_signatures(ref, ctx)
    stamps = {parse_payload(s.payload).identity: parse_payload(s.payload).timestamp for s in found}
    assert stamps[f"{ref.name}:1.0"] == 3000 and stamps[str(ref)] != 3000


def test_refresh_never_signs_what_the_key_did_not_sign(
    registry: RegistryView, cli: Cli, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    image = f"docker://{pushed(registry)}"
    code, _, err = cli("sign", "--refresh", image, "--key", str(keys[0]))
    assert code == UnsignedImageError.exit_code, err
    assert "nothing to refresh" in err
    assert cli("sign", image, "--key", str(other_keys[0]))[0] == 0
    code, _, err = cli("sign", "--refresh", image, "--key", str(keys[0]))
    assert code == UnsignedImageError.exit_code, err
    code, _, err = cli("verify", image, "--key", str(keys[1]))
    assert code == BadSignatureError.exit_code, err
