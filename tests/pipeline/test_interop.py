"""Interoperability with containers/image, with skopeo as the oracle.

(a) skopeo reads atoll's signatures: a policy.json requiring ``sigstoreSigned`` and
    a registries.d entry with ``use-sigstore-attachments: true``.
(b) atoll reads skopeo's: ``skopeo copy --sign-by-sigstore-private-key`` with a
    key ``atoll key generate`` wrote (so skopeo also proves the key format).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from atoll.errors import BadSignatureError
from atoll.oci.reference import ImageReference
from atoll.pipeline import (
    generate_key_pair,
    load_private_key,
    load_public_key,
    read_passphrase,
    sign_image,
    verify_image,
)
from atoll.pipeline.keys import COSIGN_PEM_TYPE
from helpers.images import build_image
from helpers.parts import require_tool
from helpers.registry import RegistryView

pytestmark = pytest.mark.integration


def registries_d(tmp_path: Path, host: str) -> Path:
    directory = tmp_path / "registries.d"
    directory.mkdir(exist_ok=True)
    (directory / "atoll-test.yaml").write_text(
        f"docker:\n  {host}:\n    use-sigstore-attachments: true\n"
    )
    return directory


def sigstore_policy(tmp_path: Path, public_key: Path) -> Path:
    policy = tmp_path / "sigstore-policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": [{"type": "reject"}],
                "transports": {
                    "docker": {"": [{"type": "sigstoreSigned", "keyPath": str(public_key)}]},
                    "dir": {"": [{"type": "insecureAcceptAnything"}]},
                    "oci": {"": [{"type": "insecureAcceptAnything"}]},
                },
            }
        )
    )
    return policy


#: What Debian's containers/image 5.23 (skopeo 1.9.3, podman 4.3.1) says: it is
#: built with disable-sigstore.patch, which refuses to sign or verify sigstore.
_SIGSTORE_DISABLED = "sigstore disabled"


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    """Run skopeo; skip when its containers/image was built without sigstore.

    Debian's skopeo 1.9.3 is ("Debian-local change: sigstore disabled"): the tool
    is installed, it just cannot be the oracle, so this skips even in CI."""
    proc = subprocess.run(
        [require_tool("skopeo"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if _SIGSTORE_DISABLED in proc.stderr:
        message = proc.stderr.strip().splitlines()[-1]
        pytest.skip(f"this skopeo cannot use sigstore signatures: {message}")
    return proc


def test_skopeo_accepts_an_atoll_signed_image_and_refuses_another_key(
    registry: RegistryView, tmp_path: Path
) -> None:
    signer = generate_key_pair(tmp_path / "signer")
    stranger = generate_key_pair(tmp_path / "stranger")
    repo = registry.new_repo("interop")
    registry.push_test_image(repo, "v1")
    ref = ImageReference.parse(f"{registry.host}/{repo}:v1")
    sign_image(ref, load_private_key(signer.private_path), registry.ctx())
    regd = registries_d(tmp_path, registry.host)

    def pull(public_key: Path, dest: str) -> subprocess.CompletedProcess[str]:
        return skopeo(
            "--policy", str(sigstore_policy(tmp_path, public_key)),
            "--registries.d", str(regd),
            "copy", "--remove-signatures", "--src-tls-verify=false",
            f"docker://{ref}", f"dir:{tmp_path / dest}",
        )  # fmt: skip

    ok = pull(signer.public_path, "good")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "good" / "manifest.json").is_file()

    refused = pull(stranger.public_path, "bad")
    assert refused.returncode != 0
    assert "signature" in refused.stderr.lower(), refused.stderr


def test_atoll_verifies_an_image_skopeo_signed_with_an_atoll_key(
    registry: RegistryView, tmp_path: Path
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("interop passphrase\n")
    pair = generate_key_pair(tmp_path / "cosign", read_passphrase(passphrase))
    assert COSIGN_PEM_TYPE in pair.private_path.read_text()
    layout = tmp_path / "layout"
    build_image(layout, "v1", seed="skopeo-signed")
    repo = registry.new_repo("interop")
    ref = ImageReference.parse(f"{registry.host}/{repo}:v1")
    proc = skopeo(
        "--policy", str(registry.policy),
        "--registries.d", str(registries_d(tmp_path, registry.host)),
        "copy", "--dest-tls-verify=false",
        "--sign-by-sigstore-private-key", str(pair.private_path),
        "--sign-passphrase-file", str(passphrase),
        f"oci:{layout}:v1", f"docker://{ref}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    result = verify_image(ref, [load_public_key(pair.public_path)], registry.ctx())
    assert result.verified == 1
    assert result.identity == str(ref)
    stranger = generate_key_pair(tmp_path / "stranger")
    with pytest.raises(BadSignatureError):
        verify_image(ref, [load_public_key(stranger.public_path)], registry.ctx())
