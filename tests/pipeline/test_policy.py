from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from atoll.errors import (
    BadSignatureError,
    PolicyError,
    PolicyRejectedError,
    SignedDigestMismatchError,
    UnsignedImageError,
)
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName
from atoll.pipeline import (
    check_policy,
    enforce,
    load_policy,
    load_private_key,
    parse_policy,
    sign_image,
)
from atoll.pipeline.identity import IdentityKind, SignedIdentity
from atoll.pipeline.policy import docker_scopes, requirements_for
from helpers.registry import RegistryView

from .conftest import Cli

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def policy_of(doc: dict[str, Any]) -> Any:
    return parse_policy(json.dumps(doc).encode(), "test-policy.json")


# --- scopes -------------------------------------------------------------------------


def test_most_specific_docker_scope_wins() -> None:
    policy = policy_of(
        {
            "default": REJECT,
            "transports": {
                "docker": {
                    "reg.example.com/os/base:stable": [{"type": "reject"}],
                    "reg.example.com/os/base": ACCEPT,
                    "reg.example.com/os": REJECT,
                    "reg.example.com": ACCEPT,
                    "*.example.com": REJECT,
                    "": ACCEPT,
                }
            },
        }
    )

    def scope(text: str) -> str:
        return requirements_for(policy, ImageName.parse(text))[0]

    assert scope("docker://reg.example.com/os/base:stable") == "reg.example.com/os/base:stable"
    assert scope("docker://reg.example.com/os/base:next") == "reg.example.com/os/base"
    assert scope("docker://reg.example.com/os/other:1") == "reg.example.com/os"
    assert scope("docker://reg.example.com/apps/x:1") == "reg.example.com"
    assert scope("docker://mirror.example.com/x:1") == "*.example.com"
    assert scope("docker://quay.io/x/y:1") == ""
    assert scope("oci:/tmp/layout:v1") == "default"


def test_scope_order_for_a_port_and_a_digest() -> None:
    name = ImageName.parse("docker://reg.example.com:5000/a/b:t@sha256:" + "0" * 64)
    assert docker_scopes(name) == [
        "reg.example.com:5000/a/b:t",
        "reg.example.com:5000/a/b@sha256:" + "0" * 64,
        "reg.example.com:5000/a/b",
        "reg.example.com:5000/a",
        "reg.example.com:5000",
        "*.example.com",
        "*.com",
        "",
    ]


def test_reject_and_accept_decisions_need_no_registry() -> None:
    from atoll.oci.context import SystemContext

    policy = policy_of({"default": ACCEPT, "transports": {"docker": {"bad.example": REJECT}}})
    ctx = SystemContext()
    allowed = check_policy(policy, ImageName.parse("docker://good.example/a:1"), ctx)
    assert allowed.allowed and allowed.requirement == "insecureAcceptAnything"
    refused = check_policy(policy, ImageName.parse("docker://bad.example/a:1"), ctx)
    assert not refused.allowed
    assert isinstance(refused.error, PolicyRejectedError)
    assert "bad.example" in refused.error.message and "test-policy.json" in refused.error.message


def test_signed_by_is_refused_not_ignored() -> None:
    from atoll.oci.context import SystemContext

    policy = policy_of({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}]})
    decision = check_policy(policy, ImageName.parse("docker://r.example/a:1"), SystemContext())
    assert not decision.allowed and "GPG" in decision.reason


# --- malformed files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "$: expected a JSON object"),
        ("{}", "$: missing 'default'"),
        ('{"default": []}', "$.default: expected a non-empty list"),
        ('{"default": [{"type": "maybe"}]}', "$.default[0].type: unknown requirement type"),
        ('{"default": [{"type": "reject", "keyPath": "/k"}]}', "unknown field 'keyPath'"),
        ('{"default": [{"type": "sigstoreSigned"}]}', "exactly one of keyPath, keyPaths"),
        (
            '{"default": [{"type": "sigstoreSigned", "keyPath": "/a", "keyData": "eA=="}]}',
            "exactly one of keyPath, keyPaths, keyData and keyDatas",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyPath": "/a", "keyPaths": ["/b"]}]}',
            "exactly one of keyPath, keyPaths, keyData and keyDatas",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyPaths": []}]}',
            "$.default[0].keyPaths: expected a non-empty list",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyPaths": "/a"}]}',
            "$.default[0].keyPaths: expected a non-empty list",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyPaths": ["/a", ""]}]}',
            "$.default[0].keyPaths[1]: expected a non-empty string",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyDatas": ["eA==", "***"]}]}',
            "$.default[0].keyDatas: not valid base64",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyData": "***"}]}',
            "$.default[0].keyData: not valid base64",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyPath": "/k", '
            '"signedIdentity": {"type": "matchSomething"}}]}',
            "$.default[0].signedIdentity.type: unknown signedIdentity type",
        ),
        (
            '{"default": [{"type": "sigstoreSigned", "keyPath": "/k", '
            '"signedIdentity": {"type": "exactReference"}}]}',
            "$.default[0].signedIdentity: missing 'dockerReference'",
        ),
        (
            '{"default": [{"type": "reject"}], "transports": {"docker": {"r.io/x": "no"}}}',
            '$.transports.docker["r.io/x"]: expected a non-empty list',
        ),
        (
            '{"default": [{"type": "reject"}], "transports": {"docker": {"docker://r.io": []}}}',
            "expected a non-empty list",
        ),
        (
            '{"default": [{"type": "reject"}], '
            '"transports": {"docker": {"docker://r.io": [{"type": "reject"}]}}}',
            "invalid scope",
        ),
        ('{"default": [{"type": "reject"}], "extra": 1}', "unknown field 'extra'"),
    ],
)
def test_malformed_policy_names_the_file_and_path(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in info.value.message
    assert message in info.value.message


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.json")


# --- signedIdentity -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "image", "signed", "ok"),
    [
        (SignedIdentity(), "r.io/a/b:1", "r.io/a/b:1", True),
        (SignedIdentity(), "r.io/a/b:1", "r.io/a/b:2", False),
        (SignedIdentity(), "r.io/a/b@sha256:" + "1" * 64, "r.io/a/b:2", True),
        (SignedIdentity(), "r.io/a/b@sha256:" + "1" * 64, "r.io/a/c:2", False),
        (SignedIdentity(), "r.io/a/b:1", "r.io/a/b", False),
        (
            SignedIdentity(IdentityKind.MATCH_EXACT),
            "r.io/a/b@sha256:" + "1" * 64,
            "r.io/a/b:2",
            False,
        ),
        # As containers/image: a digest reference matches a signature for that digest.
        (
            SignedIdentity(IdentityKind.MATCH_EXACT),
            "r.io/a/b@sha256:" + "1" * 64,
            "r.io/a/b@sha256:" + "1" * 64,
            True,
        ),
        (
            SignedIdentity(IdentityKind.MATCH_EXACT),
            "r.io/a/b@sha256:" + "1" * 64,
            "r.io/a/b@sha256:" + "2" * 64,
            False,
        ),
        (SignedIdentity(IdentityKind.MATCH_REPOSITORY), "r.io/a/b:1", "r.io/a/b:2", True),
        (SignedIdentity(IdentityKind.EXACT_REFERENCE, "r.io/x:1"), "r.io/a/b:1", "r.io/x:1", True),
        (SignedIdentity(IdentityKind.EXACT_REPOSITORY, "r.io/x"), "r.io/a/b:1", "r.io/x:9", True),
        (SignedIdentity(IdentityKind.EXACT_REPOSITORY, "r.io/x"), "r.io/a/b:1", "r.io/y:9", False),
        (
            SignedIdentity(
                IdentityKind.REMAP_IDENTITY, prefix="mirror.io/os", signed_prefix="r.io/os"
            ),
            "mirror.io/os/base:1",
            "r.io/os/base:1",
            True,
        ),
        (SignedIdentity(), "docker.io/library/busybox:1", "busybox:1", True),
    ],
)
def test_signed_identity(identity: SignedIdentity, image: str, signed: str, ok: bool) -> None:
    assert identity.matches(ImageReference.parse(image), signed) is ok


# --- against a registry ---------------------------------------------------------------


@pytest.mark.integration
def test_enforce_with_sigstore_signed_policy(
    registry: RegistryView, tmp_path: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    repo = registry.new_repo("policy")
    registry.push_test_image(repo, "v1", seed="signed")
    registry.push_test_image(repo, "v2", seed="unsigned")
    signed = ImageName.parse(f"docker://{registry.host}/{repo}:v1")
    unsigned = ImageName.parse(f"docker://{registry.host}/{repo}:v2")
    assert signed.reference is not None
    sign_image(signed.reference, load_private_key(keys[0]), registry.ctx())
    key_data = base64.b64encode(keys[1].read_bytes()).decode()
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": REJECT,
                "transports": {
                    "docker": {
                        f"{registry.host}/{repo}": [
                            {"type": "sigstoreSigned", "keyData": key_data}
                        ],
                        f"{registry.host}": [
                            {"type": "sigstoreSigned", "keyPath": str(other_keys[1])}
                        ],
                    }
                },
            }
        )
    )
    ctx = registry.ctx()
    assert enforce(policy, signed, ctx) == "sigstoreSigned"
    with pytest.raises(UnsignedImageError) as info:
        enforce(policy, unsigned, ctx)
    assert f"{registry.host}/{repo}" in info.value.message and str(policy) in info.value.message

    # The same image under a scope that trusts another key.
    other_scope = json.loads(policy.read_text())
    del other_scope["transports"]["docker"][f"{registry.host}/{repo}"]
    policy.write_text(json.dumps(other_scope))
    with pytest.raises(BadSignatureError):
        enforce(policy, signed, ctx)

    # A tag moved after signing, with the signature copied along, is refused.
    registry.push_test_image(repo, "v1", seed="replaced")
    decision = check_policy(
        parse_policy(
            json.dumps({"default": [{"type": "sigstoreSigned", "keyData": key_data}]}).encode(),
            "p.json",
        ),
        signed,
        ctx,
    )
    assert not decision.allowed
    assert isinstance(decision.error, UnsignedImageError | SignedDigestMismatchError)


@pytest.mark.integration
def test_verify_command_with_a_policy(
    registry: RegistryView, cli: Cli, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    repo = registry.new_repo("policy")
    registry.push_test_image(repo, "v1")
    image = f"docker://{registry.host}/{repo}:v1"
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"default": [{"type": "sigstoreSigned", "keyPath": str(keys[1])}]})
    )
    code, _, err = cli("verify", image, "--policy", str(policy))
    assert code == UnsignedImageError.exit_code
    assert "requires sigstoreSigned" in err
    assert cli("sign", image, "--key", str(keys[0]))[0] == 0
    code, out, err = cli("verify", image, "--policy", str(policy))
    assert code == 0, err
    assert "sigstoreSigned" in out
    policy.write_text('{"default": [{"type": "reject"}]}')
    code, _, err = cli("verify", image, "--policy", str(policy))
    assert code == PolicyRejectedError.exit_code


# --- failing closed -----------------------------------------------------------------

# Each is a policy whose last word admits everything, written so that a lenient
# reader sees only that word: skopeo and podman refuse every one of them.
FAIL_OPEN = {
    "duplicate-default": (
        b'{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}',
        'duplicate key "default"',
    ),
    "duplicate-type": (
        b'{"default": [{"type": "reject", "type": "insecureAcceptAnything"}]}',
        'duplicate key "type"',
    ),
    "byte-order-mark": (
        b'\xef\xbb\xbf{"default": [{"type": "insecureAcceptAnything"}]}',
        "byte-order mark",
    ),
    "deep-nesting": (
        b'{"default": [{"type": "insecureAcceptAnything"}], "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        "exceeded max depth",
    ),
    "type-not-a-string": (b'{"default": [{"type": ["reject"]}]}', "unknown requirement type"),
    "default-not-a-list": (b'{"default": {"type": "insecureAcceptAnything"}}', "expected a non"),
    "transports-not-an-object": (
        b'{"default": [{"type": "reject"}], "transports": []}',
        "$.transports: expected a JSON object",
    ),
    "key-data-not-ascii": (
        b'{"default": [{"type": "sigstoreSigned", "keyData": "ab\\u00e9"}]}',
        "$.default[0].keyData: not valid base64",
    ),
    # Found by fuzzing: reading the key failed later with a ValueError (exit 1).
    "key-path-with-a-nul": (
        b'{"default": [{"type": "sigstoreSigned", "keyPath": "/k\\u0000x"}]}',
        "$.default[0].keyPath: '/k\\x00x' is not a file name",
    ),
}


@pytest.mark.parametrize("case", sorted(FAIL_OPEN))
def test_an_ambiguous_or_malformed_policy_is_refused(tmp_path: Path, case: str) -> None:
    data, message = FAIL_OPEN[case]
    path = tmp_path / "policy.json"
    path.write_bytes(data)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in info.value.message and message in info.value.message


@pytest.mark.parametrize("case", sorted(FAIL_OPEN))
def test_verify_refuses_with_an_ambiguous_policy(tmp_path: Path, cli: Cli, case: str) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(FAIL_OPEN[case][0])
    code, out, err = cli("verify", "docker://r.example/a:1", "--policy", str(path))
    assert code == PolicyError.exit_code, (out, err)
    assert "admitted" not in out and FAIL_OPEN[case][1] in err


def test_a_policy_that_is_a_directory_refuses(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "policy.json").mkdir()
    with pytest.raises(PolicyError, match=r"policy\.json"):
        load_policy(tmp_path / "policy.json")
    code, _, err = cli(
        "verify", "docker://r.example/a:1", "--policy", str(tmp_path / "policy.json")
    )
    assert code == PolicyError.exit_code, err


def test_a_user_policy_that_is_not_a_file_is_still_the_one_used(tmp_path: Path) -> None:
    from atoll.pipeline.policy import default_policy_path

    (tmp_path / ".config/containers/policy.json").mkdir(parents=True)
    path = default_policy_path({"HOME": str(tmp_path)})
    assert path == tmp_path / ".config/containers/policy.json"
    with pytest.raises(PolicyError):
        load_policy(path)


def test_an_error_names_the_line_of_the_key_it_is_about() -> None:
    text = b"""{
  "default": [{"type": "reject"}],
  "transports": {
    "docker": {
      "registry.example/app": [
        {"type": "sigstoreSigned",
         "keyPaths": []}
      ]
    }
  }
}
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "/etc/containers/policy.json")
    assert caught.value.message == (
        '/etc/containers/policy.json: line 7: $.transports.docker["registry.example/app"][0]'
        ".keyPaths: expected a non-empty list"
    )
