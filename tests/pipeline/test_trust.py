"""``atoll.pipeline.trust.check_image``: admitting one digest under a policy, with
signatures handed in (as a bundle does) or read from a registry."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.errors import (
    BadSignatureError,
    PolicyError,
    PolicyRejectedError,
    SignedDigestMismatchError,
    SignedIdentityMismatchError,
    UnsignedImageError,
)
from atoll.oci.digest import Digest
from atoll.oci.reference import ImageReference
from atoll.pipeline.keys import generate_key_pair, load_private_key, sign_bytes
from atoll.pipeline.policy import parse_policy
from atoll.pipeline.sigstore import (
    PAYLOAD_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    Signature,
    make_payload,
    sign_image,
)
from atoll.pipeline.trust import check_image, device_policy_path
from helpers.registry import RegistryView

SRC = Path(__file__).resolve().parents[2] / "src"
IMAGE = "registry.example.com/os/base:stable"
DIGEST = Digest.of(b"the manifest")


def signature(key_path: Path, identity: str, digest: Digest) -> Signature:
    payload = make_payload(identity, digest)
    raw = sign_bytes(load_private_key(key_path), payload)
    return Signature(
        PAYLOAD_MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: base64.b64encode(raw).decode()}
    )


def signed_policy(pub: Path) -> bytes:
    return json.dumps(
        {
            "default": [{"type": "reject"}],
            "transports": {
                "docker": {
                    "registry.example.com/os": [{"type": "sigstoreSigned", "keyPath": str(pub)}]
                }
            },
        }
    ).encode()


def test_no_policy_admits_and_says_so() -> None:
    decision = check_image(IMAGE, DIGEST, None)
    assert decision.requirement == "none" and decision.policy is None


def test_scopes_decide(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "k")
    policy = parse_policy(signed_policy(pair.public_path), "p.json")
    with pytest.raises(PolicyRejectedError, match=r"p.json: default requires reject"):
        check_image("other.example.com/x:1", DIGEST, policy, signatures=lambda r, d: [])
    good = [signature(pair.private_path, IMAGE, DIGEST)]
    decision = check_image(IMAGE, DIGEST, policy, signatures=lambda r, d: good)
    assert decision.signed and decision.scope == "transports.docker['registry.example.com/os']"


def test_signature_failures_are_the_documented_refusals(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "k")
    other = generate_key_pair(tmp_path / "o")
    policy = parse_policy(signed_policy(pair.public_path), "p.json")
    cases = [
        ([], UnsignedImageError),
        ([signature(other.private_path, IMAGE, DIGEST)], BadSignatureError),
        ([signature(pair.private_path, IMAGE, Digest.of(b"another"))], SignedDigestMismatchError),
        (
            [signature(pair.private_path, "registry.example.com/os/base:dev", DIGEST)],
            SignedIdentityMismatchError,
        ),
    ]
    for found, error in cases:
        with pytest.raises(error):
            check_image(IMAGE, DIGEST, policy, signatures=lambda r, d, f=found: f)  # type: ignore[misc]


def test_device_policy_is_the_deployments_file_unless_overridden(tmp_path: Path) -> None:
    assert device_policy_path(tmp_path) is None
    (tmp_path / "etc/containers").mkdir(parents=True)
    (tmp_path / "etc/containers/policy.json").write_text("{}")
    assert device_policy_path(tmp_path) == tmp_path / "etc/containers/policy.json"
    assert device_policy_path(tmp_path, Path("/x.json")) == Path("/x.json")


def test_the_standard_library_suffices_until_a_signature_must_be_checked(tmp_path: Path) -> None:
    """Run with ``python -I -S``: no site-packages, so no ``cryptography``."""
    accept = tmp_path / "accept.json"
    accept.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    signed = tmp_path / "signed.json"
    signed.write_text(
        '{"default": [{"type": "sigstoreSigned", "keyData": "'
        + base64.b64encode(b"-----BEGIN PUBLIC KEY-----").decode()
        + '"}]}'
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path;"
        "from atoll.pipeline.trust import check_image;"
        "from atoll.errors import VerificationUnavailableError;"
        f"d = check_image({IMAGE!r}, 'sha256:' + '0' * 64, Path(sys.argv[2]));"
        "assert d.requirement == 'insecureAcceptAnything', d;"
        "assert 'cryptography' not in sys.modules;"
        "\ntry:\n"
        f"    check_image({IMAGE!r}, 'sha256:' + '0' * 64, Path(sys.argv[3]),\n"
        "                signatures=lambda r, d: [])\n"
        "except VerificationUnavailableError as e:\n"
        "    print(e.exit_code, e.message, '|', e.hint)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(SRC), str(accept), str(signed)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("88 ")
    assert (
        "'cryptography' is not installed" in proc.stdout and "python3-cryptography" in proc.stdout
    )
    assert "\n" not in proc.stdout.strip()  # one line


@pytest.mark.integration
def test_registry_signatures_are_read_for_the_digest_given(
    registry: RegistryView, tmp_path: Path
) -> None:
    pair = generate_key_pair(tmp_path / "k")
    repo = registry.new_repo("os")
    first = registry.push_test_image(repo, "stable", seed="one")
    ref = ImageReference.parse(f"{registry.host}/{repo}:stable")
    sign_image(ref, load_private_key(pair.private_path), registry.ctx())
    policy = parse_policy(
        json.dumps(
            {"default": [{"type": "sigstoreSigned", "keyPath": str(pair.public_path)}]}
        ).encode(),
        "p.json",
    )
    assert check_image(ref, first.manifest_digest, policy, ctx=registry.ctx()).signed
    # The tag moves to an unsigned image: the digest that was pulled is what counts.
    second = registry.push_test_image(repo, "stable", seed="two")
    assert check_image(ref, first.manifest_digest, policy, ctx=registry.ctx()).signed
    with pytest.raises(UnsignedImageError):
        check_image(ref, second.manifest_digest, policy, ctx=registry.ctx())


@pytest.mark.parametrize("kind", ["directory", "dangling-symlink", "parent-is-a-file"])
def test_a_device_policy_that_cannot_be_read_refuses_every_image(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "etc/containers/policy.json"
    path.parent.parent.mkdir(parents=True)
    if kind == "parent-is-a-file":
        path.parent.write_text("{}")
    else:
        path.parent.mkdir()
    if kind == "directory":
        path.mkdir()
    elif kind == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere.json")
    assert device_policy_path(tmp_path) == path
    with pytest.raises(PolicyError):
        check_image(IMAGE, DIGEST, device_policy_path(tmp_path))
