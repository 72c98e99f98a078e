"""Interoperability with containers/image's sigstore code, with podman 5 as the oracle.

Debian bookworm's podman 4.3.1 and skopeo 1.9.3 are built with sigstore
disabled ("Debian-local change"), so the oracle is Debian trixie's podman
5.4.2, booted under systemd-nspawn (helpers.podman5).  It shares this machine's
network and reaches the test registry over plain HTTP (registries.conf marks it
insecure; registries.d has ``use-sigstore-attachments: true`` for it).  atoll
runs here, as the ``atoll`` command; podman runs in the host; the keys,
passphrases and policies both read are files in the host's ``/etc/containers``.

(a) podman reads atoll's signatures: ``atoll sign`` signs, and ``podman pull``
    under a policy requiring ``sigstoreSigned`` with atoll's public key admits
    the image, and refuses it with another key or with one byte of the signed
    payload changed.  ``atoll verify --policy`` with the same policy agrees.
(b) atoll reads podman's: ``podman push --sign-by-sigstore-private-key`` with a
    key ``atoll key generate --passphrase-file`` wrote (in both PEM types, so
    podman also proves the key format), and ``atoll verify`` accepts the image
    with that key's public half and refuses it with another.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from atoll.errors import BadSignatureError, SignedIdentityMismatchError
from atoll.oci.client import RegistryClient
from atoll.oci.digest import Digest
from atoll.oci.reference import ImageReference
from atoll.pipeline.keys import (
    COSIGN_PEM_TYPE,
    SIGSTORE_PEM_TYPE,
    load_private_key,
    read_passphrase,
    sign_bytes,
)
from atoll.pipeline.sigstore import SIGNATURE_ANNOTATION, attachment_tag
from helpers.cli import run_atoll
from helpers.parts import missing
from helpers.podman5 import SystemdHost, ensure_tree, unavailable
from helpers.registry import RegistryView

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

#: Where the host's /etc/containers (helpers.podman5's ``conf``) keeps this file's files.
SHARED = "atoll-interop"


@dataclass(frozen=True)
class Oracle:
    """The podman 5 host and the directory it shares with this process."""

    host: SystemdHost
    #: On this machine; the same files are ``/etc/containers/atoll-interop`` in the host.
    shared: Path

    def inside(self, path: Path) -> str:
        return f"/etc/containers/{SHARED}/{path.relative_to(self.shared)}"

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.host.run("podman", *args, check=False)

    def push_signed(self, key: Path, passphrase: Path, source: str, dest: str) -> None:
        """``podman push`` *source* (in podman's store) to *dest*, signing it with *key*."""
        pushed = self.podman(
            "push", "--quiet",
            "--sign-by-sigstore-private-key", self.inside(key),
            "--sign-passphrase-file", self.inside(passphrase),
            source, dest,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr

    def set_policy(self, policy: dict[str, object]) -> Path:
        """Make *policy* the host's policy.json; return a copy of it for ``atoll verify``.

        Key paths in *policy* are this machine's: the host's copy names the same
        files where the host sees them."""
        text = json.dumps(policy, indent=2) + "\n"
        inside = text.replace(f'"{self.shared}/', f'"/etc/containers/{SHARED}/')
        (self.host.conf / "policy.json").write_text(inside)
        copy = self.shared / "policy.json"
        copy.write_text(text)
        return copy


@pytest.fixture(scope="module")
def oracle(registry_servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    why = unavailable()
    if why is not None:
        missing(f"a host with podman 5 (the sigstore oracle): {why}")
    root = ensure_tree()
    registry_host = registry_servers.get("plain").host
    host = SystemdHost(root, tmp_path_factory.mktemp("podman5"), (registry_host,))
    registries_d = host.conf / "registries.d"
    registries_d.mkdir(exist_ok=True)
    (registries_d / "atoll-interop.yaml").write_text(
        f"docker:\n  {registry_host}:\n    use-sigstore-attachments: true\n"
    )
    shared = host.conf / SHARED
    shared.mkdir()
    host.start()
    try:
        version = host.run("podman", "--version").stdout.split()[-1]
        assert int(version.split(".")[0]) >= 5, f"the oracle must be podman 5, not {version}"
        yield Oracle(host, shared)
    finally:
        host.stop()


def atoll(*args: str, code: int = 0) -> dict[str, object]:
    proc = run_atoll(*args, "--json")
    assert proc.returncode == code, f"atoll {' '.join(args)}: {proc.returncode} {proc.stderr}"
    if code != 0:
        return {}
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def generate_key(directory: Path, name: str, pem_type: str = "cosign") -> tuple[Path, Path, Path]:
    """``atoll key generate --passphrase-file``: (private key, public key, passphrase file)."""
    passphrase = directory / f"{name}.passphrase"
    passphrase.write_text(f"{name} passphrase\n")
    prefix = directory / name
    atoll("key", "generate", "--output", str(prefix), "--passphrase-file", str(passphrase),
          "--pem-type", pem_type)  # fmt: skip
    return directory / f"{name}.key", directory / f"{name}.pub", passphrase


def sigstore_policy(public_key: Path) -> dict[str, object]:
    """Reject everything but docker images signed by *public_key* (given as keyData,
    so one policy file serves podman in the host and atoll here)."""
    key_data = base64.b64encode(public_key.read_bytes()).decode()
    return {
        "default": [{"type": "reject"}],
        "transports": {"docker": {"": [{"type": "sigstoreSigned", "keyData": key_data}]}},
    }


ACCEPT_ANYTHING: dict[str, object] = {"default": [{"type": "insecureAcceptAnything"}]}


def rewrite_payload(
    registry: RegistryView,
    ref: ImageReference,
    edit: Callable[[bytes], bytes],
    key: ec.EllipticCurvePrivateKey | None = None,
) -> None:
    """Rewrite the one signature of the image's attachment with its payload
    changed by *edit*: signed again with *key*, or with the old signature kept."""
    with RegistryClient(ref.registry, registry.ctx()) as client:
        digest = client.get_manifest(ref.repository, ref.manifest_ref).digest
        tag = attachment_tag(digest)
        fetched = client.get_manifest(ref.repository, tag)
        manifest = json.loads(fetched.raw)
        (layer,) = manifest["layers"]
        payload = client.fetch_blob(ref.repository, Digest.parse(layer["digest"]), layer["size"])
        changed = edit(payload)
        assert changed != payload
        changed_digest = Digest.of(changed)
        client.upload_blob(ref.repository, changed_digest, [changed], size=len(changed))
        layer.update(digest=str(changed_digest), size=len(changed))
        if key is not None:
            signature = base64.b64encode(sign_bytes(key, changed)).decode()
            layer["annotations"][SIGNATURE_ANNOTATION] = signature
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        client.put_manifest(ref.repository, tag, raw, fetched.media_type)


def same_claims_other_bytes(payload: bytes) -> bytes:
    """The signing time's last digit changes: the same length and the same
    critical claims, so only the signature check can tell."""
    match = re.search(rb'"timestamp":(\d+)', payload)
    assert match is not None, payload
    digits = match.group(1)
    other = digits[:-1] + str((int(digits[-1:]) + 1) % 10).encode()
    changed = payload[: match.start(1)] + other + payload[match.end(1) :]
    assert len(changed) == len(payload)
    assert json.loads(changed)["critical"] == json.loads(payload)["critical"]
    return changed


def test_podman_5_pulls_an_atoll_signed_image_only_with_the_signers_key(
    oracle: Oracle, registry: RegistryView
) -> None:
    key, public, passphrase = generate_key(oracle.shared, "signer")
    _, stranger, _ = generate_key(oracle.shared, "stranger")
    repo = registry.new_repo("interop")
    registry.push_test_image(repo, "v1", seed="atoll-signed")
    ref = f"{registry.host}/{repo}:v1"
    signed = atoll("sign", f"docker://{ref}", "--key", str(key),
                   "--passphrase-file", str(passphrase))  # fmt: skip
    assert signed["signatures"] == 1

    policy = oracle.set_policy(sigstore_policy(public))
    pulled = oracle.podman("pull", "--quiet", ref)
    assert pulled.returncode == 0, pulled.stderr
    inspected = oracle.podman("image", "inspect", "--format", "{{.Digest}}", ref)
    assert inspected.stdout.strip() == signed["digest"], inspected.stderr
    assert atoll("verify", f"docker://{ref}", "--policy", str(policy))["admitted_by"] == (
        "sigstoreSigned"
    )
    assert oracle.podman("rmi", "--force", ref).returncode == 0

    def both_refuse(trusted: Path) -> None:
        policy = oracle.set_policy(sigstore_policy(trusted))
        refused = oracle.podman("pull", "--quiet", ref)
        assert refused.returncode != 0
        assert "cryptographic signature verification failed" in refused.stderr, refused.stderr
        assert oracle.podman("image", "exists", ref).returncode != 0
        atoll("verify", f"docker://{ref}", "--policy", str(policy),
              code=BadSignatureError.exit_code)  # fmt: skip
        atoll("verify", f"docker://{ref}", "--key", str(trusted),
              code=BadSignatureError.exit_code)  # fmt: skip

    both_refuse(stranger)
    rewrite_payload(registry, ImageReference.parse(ref), same_claims_other_bytes)
    both_refuse(public)


@pytest.mark.parametrize("pem_type", ["cosign", "sigstore"])
def test_atoll_verifies_an_image_podman_5_signed_with_an_atoll_key(
    oracle: Oracle, registry: RegistryView, pem_type: str
) -> None:
    key, public, passphrase = generate_key(oracle.shared, f"podman-{pem_type}", pem_type)
    wanted = COSIGN_PEM_TYPE if pem_type == "cosign" else SIGSTORE_PEM_TYPE
    assert f"BEGIN {wanted}" in key.read_text()
    _, stranger, _ = generate_key(oracle.shared, f"stranger-{pem_type}")
    repo = registry.new_repo("interop")
    registry.push_test_image(repo, "unsigned", seed=f"podman-signed-{pem_type}")
    source = f"{registry.host}/{repo}:unsigned"
    ref = f"{registry.host}/{repo}:v1"

    oracle.set_policy(ACCEPT_ANYTHING)
    pulled = oracle.podman("pull", "--quiet", source)
    assert pulled.returncode == 0, pulled.stderr
    oracle.push_signed(key, passphrase, source, ref)

    verified = atoll("verify", f"docker://{ref}", "--key", str(public))
    assert verified["verified"] == 1
    assert verified["identity"] == ref
    atoll("verify", f"docker://{ref}", "--key", str(stranger), code=BadSignatureError.exit_code)
    policy = oracle.set_policy(sigstore_policy(public))
    assert atoll("verify", f"docker://{ref}", "--policy", str(policy))["admitted_by"] == (
        "sigstoreSigned"
    )
    # podman reads back what it signed under the same policy: the oracle agrees with itself.
    again = oracle.podman("pull", "--quiet", ref)
    assert again.returncode == 0, again.stderr


#: signedIdentity kinds (containers-policy.json(5)): the identity an image was
#: signed as (in A, and in its copy in B, a mirror keeping the original identity)
#: and which of the references A:v1, A:other (the same digest), A@digest, B:v1
#: and B@digest each kind admits.
IDENTITY_CASES: dict[str, tuple[str, dict[str, str], set[str]]] = {
    "matchRepoDigestOrExact": (
        "{A}:v1", {"type": "matchRepoDigestOrExact"}, {"A:v1", "A@digest"}
    ),
    "matchExact": ("{A}:v1", {"type": "matchExact"}, {"A:v1"}),
    "matchRepository": (
        "{A}:v1", {"type": "matchRepository"}, {"A:v1", "A:other", "A@digest"}
    ),
    "exactReference": (
        "{A}:v1",
        {"type": "exactReference", "dockerReference": "{A}:v1"},
        {"A:v1", "A:other", "A@digest", "B:v1", "B@digest"},
    ),
    "exactReference-other-tag": (
        "{A}:v1", {"type": "exactReference", "dockerReference": "{A}:other"}, set()
    ),
    "exactRepository": (
        "{A}:v1",
        {"type": "exactRepository", "dockerRepository": "{A}"},
        {"A:v1", "A:other", "A@digest", "B:v1", "B@digest"},
    ),
    "remapIdentity": (
        "{A}:v1",
        {"type": "remapIdentity", "prefix": "{B}", "signedPrefix": "{A}"},
        {"A:v1", "A@digest", "B:v1", "B@digest"},
    ),
    "by-digest-matchRepoDigestOrExact": (
        "{A}@{digest}", {"type": "matchRepoDigestOrExact"}, {"A@digest"}
    ),
    "by-digest-matchExact": ("{A}@{digest}", {"type": "matchExact"}, {"A@digest"}),
    "by-digest-matchRepository": (
        "{A}@{digest}", {"type": "matchRepository"}, {"A:v1", "A:other", "A@digest"}
    ),
    "by-digest-exactReference": (
        "{A}@{digest}",
        {"type": "exactReference", "dockerReference": "{A}@{digest}"},
        {"A:v1", "A:other", "A@digest", "B:v1", "B@digest"},
    ),
    "by-digest-remapIdentity": (
        "{A}@{digest}",
        {"type": "remapIdentity", "prefix": "{B}", "signedPrefix": "{A}"},
        {"A@digest", "B@digest"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(IDENTITY_CASES))
def test_podman_5_and_atoll_agree_on_signed_identities(
    oracle: Oracle, registry: RegistryView, case: str
) -> None:
    key, public, passphrase = generate_key(oracle.shared, f"identity-{case}")
    names = {"A": f"{registry.host}/{registry.new_repo('origin')}",
             "B": f"{registry.host}/{registry.new_repo('mirror')}"}  # fmt: skip
    for name in names.values():
        repo = name.split("/", 1)[1]
        registry.push_test_image(repo, "v1", seed=f"identity-{case}")
    origin = ImageReference.parse(f"{names['A']}:v1")
    with RegistryClient(origin.registry, registry.ctx()) as client:
        fetched = client.get_manifest(origin.repository, "v1")
        client.put_manifest(origin.repository, "other", fetched.raw, fetched.media_type)
        mirror_digest = client.get_manifest(names["B"].split("/", 1)[1], "v1").digest
    assert mirror_digest == fetched.digest  # one signature by digest names both
    signed_as, identity, admitted = IDENTITY_CASES[case]
    signed_as = signed_as.format(**names, digest=fetched.digest)
    for name in names.values():
        atoll("sign", f"docker://{name}:v1", "--key", str(key), "--passphrase-file",
              str(passphrase), "--identity", signed_as)  # fmt: skip
    refs = {
        "A:v1": f"{names['A']}:v1",
        "A:other": f"{names['A']}:other",
        "A@digest": f"{names['A']}@{fetched.digest}",
        "B:v1": f"{names['B']}:v1",
        "B@digest": f"{names['B']}@{fetched.digest}",
    }
    policy = sigstore_policy(public)
    requirement = policy["transports"]["docker"][""][0]  # type: ignore[index]
    requirement["signedIdentity"] = {
        k: v.format(**names, digest=fetched.digest) for k, v in identity.items()
    }
    policy_file = oracle.set_policy(policy)

    by_podman, by_atoll = set(), set()
    for label, ref in refs.items():
        oracle.podman("rmi", "--all", "--force")
        pulled = oracle.podman("pull", "--quiet", ref)
        if pulled.returncode == 0:
            by_podman.add(label)
        else:
            assert "Source image rejected" in pulled.stderr, pulled.stderr
        verified = run_atoll("verify", f"docker://{ref}", "--policy", str(policy_file))
        if verified.returncode == 0:
            by_atoll.add(label)
        else:
            assert verified.returncode == SignedIdentityMismatchError.exit_code, verified.stderr
    assert (by_podman, by_atoll) == (admitted, admitted)


def test_podman_5_and_atoll_add_signatures_to_each_others_attachments(
    oracle: Oracle, registry: RegistryView
) -> None:
    """podman signs, atoll adds a signature to podman's attachment, podman adds
    one to that: each reads and extends what the other wrote."""
    names = ("podman", "atoll", "podman-again")
    keys = {who: generate_key(oracle.shared, f"joint-{who}") for who in names}
    repo = registry.new_repo("interop")
    registry.push_test_image(repo, "unsigned", seed="joint")
    source = f"{registry.host}/{repo}:unsigned"
    ref = f"{registry.host}/{repo}:v1"
    oracle.set_policy(ACCEPT_ANYTHING)
    assert oracle.podman("pull", "--quiet", source).returncode == 0

    def podman_sign(who: str) -> None:
        key, _, passphrase = keys[who]
        oracle.push_signed(key, passphrase, source, ref)

    podman_sign("podman")
    key, _, passphrase = keys["atoll"]
    signed = atoll("sign", f"docker://{ref}", "--key", str(key),
                   "--passphrase-file", str(passphrase))  # fmt: skip
    assert signed["signatures"] == 2
    podman_sign("podman-again")

    for who, (_, public, _) in keys.items():
        verified = atoll("verify", f"docker://{ref}", "--key", str(public))
        assert (verified["digest"], verified["signatures"], verified["verified"]) == (
            signed["digest"], 3, 1,
        ), who  # fmt: skip
        oracle.set_policy(sigstore_policy(public))
        oracle.podman("rmi", "--all", "--force")
        pulled = oracle.podman("pull", "--quiet", ref)
        assert pulled.returncode == 0, f"{who}: {pulled.stderr}"


@pytest.mark.parametrize(
    ("field", "trusted", "admitted"),
    [
        ("keyPaths", ("stranger", "signer"), True),
        ("keyPaths", ("stranger",), False),
        ("keyDatas", ("signer", "stranger"), True),
        ("keyDatas", ("stranger",), False),
    ],
)
def test_podman_5_and_atoll_agree_on_a_list_of_keys(
    oracle: Oracle, registry: RegistryView, field: str, trusted: tuple[str, ...], admitted: bool
) -> None:
    """sigstoreSigned with keyPaths or keyDatas (containers/image 5.34, podman
    5.4): a signature by any one of the keys is enough."""
    case = f"{field}-{len(trusted)}-{admitted}"
    keys = {who: generate_key(oracle.shared, f"{case}-{who}") for who in ("signer", "stranger")}
    repo = registry.new_repo("interop")
    registry.push_test_image(repo, "v1", seed=case)
    ref = f"{registry.host}/{repo}:v1"
    key, _, passphrase = keys["signer"]
    atoll("sign", f"docker://{ref}", "--key", str(key), "--passphrase-file", str(passphrase))
    publics = [keys[who][1] for who in trusted]
    if field == "keyPaths":
        listed = [str(public) for public in publics]
    else:
        listed = [base64.b64encode(public.read_bytes()).decode() for public in publics]
    policy = oracle.set_policy(
        {
            "default": [{"type": "reject"}],
            "transports": {"docker": {"": [{"type": "sigstoreSigned", field: listed}]}},
        }
    )
    pulled = oracle.podman("pull", "--quiet", ref)
    assert (pulled.returncode == 0) is admitted, pulled.stderr
    code = 0 if admitted else BadSignatureError.exit_code
    atoll("verify", f"docker://{ref}", "--policy", str(policy), code=code)


def _payload_edit(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def edit(payload: bytes) -> bytes:
        # atoll sign writes the signing time; the cases start from a payload without it.
        payload = re.sub(rb'"optional":\{"timestamp":\d+\}', b'"optional":null', payload)
        assert payload.count(old) == 1, payload
        return payload.replace(old, new)

    return edit


#: Payloads signed with the trusted key but written otherwise than a signer
#: writes them, and whether podman 5 admits the image: containers/image reads
#: them strictly (exactly the known fields, no duplicated key) but for
#: "optional", where fields it does not know are ignored.
PAYLOAD_CASES: dict[str, tuple[Callable[[bytes], bytes], bool]] = {
    "optional-with-fields": (
        _payload_edit(b'"optional":null', b'"optional":{"creator":"x","timestamp":1,"a":{}}'),
        True,
    ),
    "spaces": (_payload_edit(b'{"critical":', b'{ "critical" : '), True),
    "no-optional": (_payload_edit(b',"optional":null', b""), False),
    "extra-top-level-field": (_payload_edit(b'"optional":null', b'"optional":null,"x":1'), False),
    "extra-critical-field": (_payload_edit(b'"type":"cosign', b'"x":1,"type":"cosign'), False),
    "extra-identity-field": (
        _payload_edit(b'{"docker-reference"', b'{"x":1,"docker-reference"'), False
    ),
    "duplicate-identity-first-other": (
        _payload_edit(b'"identity":', b'"identity":{"docker-reference":"o.io/x:1"},"identity":'),
        False,
    ),
    "duplicate-identity-last-other": (
        _payload_edit(b'"image":', b'"identity":{"docker-reference":"o.io/x:1"},"image":'),
        False,
    ),
    "optional-duplicate-key": (
        _payload_edit(b'"optional":null', b'"optional":{"a":1,"a":2}'), False
    ),
    "other-type": (_payload_edit(b'"cosign container', b'"other container'), False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PAYLOAD_CASES))
def test_podman_5_and_atoll_agree_on_how_strict_a_payload_is(
    oracle: Oracle, registry: RegistryView, case: str
) -> None:
    key, public, passphrase = generate_key(oracle.shared, f"payload-{case}")
    repo = registry.new_repo("interop")
    registry.push_test_image(repo, "v1", seed=f"payload-{case}")
    ref = f"{registry.host}/{repo}:v1"
    atoll("sign", f"docker://{ref}", "--key", str(key), "--passphrase-file", str(passphrase))
    edit, accepted = PAYLOAD_CASES[case]
    private = load_private_key(key, read_passphrase(passphrase))
    rewrite_payload(registry, ImageReference.parse(ref), edit, private)
    policy = oracle.set_policy(sigstore_policy(public))
    pulled = oracle.podman("pull", "--quiet", ref)
    assert (pulled.returncode == 0) is accepted, pulled.stderr
    verified = run_atoll("verify", f"docker://{ref}", "--policy", str(policy))
    assert verified.returncode == (0 if accepted else BadSignatureError.exit_code), verified.stderr
