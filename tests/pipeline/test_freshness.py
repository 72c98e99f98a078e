"""``atoll.pipeline.freshness``: no going back in version by following a tag, and
signatures that must be young (signatures handed in, as a bundle does; the
attacks through a real registry are in tests/sysroot/test_stale_registry.py)."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest

from atoll.errors import (
    BadSignatureError,
    DowngradeRefusedError,
    PolicyRejectedError,
    StaleSignatureError,
)
from atoll.oci.digest import Digest
from atoll.pipeline.freshness import check_not_older, signature_age_error
from atoll.pipeline.keys import generate_key_pair, load_private_key, sign_bytes
from atoll.pipeline.policy import Policy, parse_policy
from atoll.pipeline.sigstore import (
    PAYLOAD_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    Signature,
    make_payload,
    parse_payload,
)
from atoll.pipeline.trust import TrustDecision, check_image

IMAGE = "registry.example.com/os/base:stable"
DIGEST = Digest.of(b"the manifest")
NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
WEEK = datetime.timedelta(days=7)


def at(days_ago: float) -> int:
    return int((NOW - datetime.timedelta(days=days_ago)).timestamp())


def signed(key_path: Path, timestamp: int | None) -> Signature:
    payload = make_payload(IMAGE, DIGEST, timestamp)
    raw = sign_bytes(load_private_key(key_path), payload)
    return Signature(
        PAYLOAD_MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: base64.b64encode(raw).decode()}
    )


@pytest.mark.parametrize(
    ("candidate", "deployed"),
    [
        ("2.0", ["2.0"]),
        ("2.0.1", ["2.0"]),
        ("3.0", ["2.0", "2.5"]),
        ("1.0", [None]),  # nothing to protect: the booted image has no version
        ("1.0", ["nightly"]),
        (None, [None]),
        ("1.0.0", ["1.0.0-rc.2"]),
    ],
)
def test_not_older_admits(candidate: str | None, deployed: list[str | None]) -> None:
    check_not_older(IMAGE, candidate, deployed)


@pytest.mark.parametrize(
    ("candidate", "deployed", "says"),
    [
        ("1.0", ["2.0"], "version 1.0, older than the device's 2.0"),
        ("2.0", ["2.0", "2.1"], "older than the device's 2.1"),  # a newer one is staged
        ("1.0.0-rc.2", ["1.0.0"], "older"),
        (None, ["2.0"], "no semantic version"),
        ("latest", ["2.0"], "no semantic version"),
    ],
)
def test_older_or_incomparable_is_refused(
    candidate: str | None, deployed: list[str | None], says: str
) -> None:
    with pytest.raises(DowngradeRefusedError, match=says) as info:
        check_not_older(IMAGE, candidate, deployed)
    assert info.value.exit_code == 85
    assert "atoll switch" in (info.value.hint or "")


def test_signature_age() -> None:
    assert signature_age_error(IMAGE, [at(6.9)], WEEK, NOW) is None
    assert signature_age_error(IMAGE, [at(30), at(1)], WEEK, NOW) is None  # the newest counts
    assert signature_age_error(IMAGE, [at(-1)], WEEK, NOW) is None  # signer's clock ahead
    stale = signature_age_error(IMAGE, [at(8), None], WEEK, NOW)
    assert stale is not None and stale.exit_code == 99
    assert "2026-11-28T12:00:00Z, 8d ago, more than max_signature_age (7d)" in stale.message
    untimed = signature_age_error(IMAGE, [None], WEEK, NOW)
    assert untimed is not None and "no valid signature carries a signing time" in untimed.message


def test_payload_timestamp_round_trips_and_is_checked() -> None:
    assert parse_payload(make_payload(IMAGE, DIGEST, 1780000000)).timestamp == 1780000000
    assert parse_payload(make_payload(IMAGE, DIGEST)).timestamp is None
    doc = json.loads(make_payload(IMAGE, DIGEST, 5))
    doc["optional"] = {"timestamp": 5.0, "creator": "someone", "annotations": {"a": "b"}}
    assert parse_payload(json.dumps(doc).encode()).timestamp == 5
    for bad in ({"timestamp": "5"}, {"timestamp": 5.5}, {"timestamp": True}, [5], "now"):
        doc["optional"] = bad
        with pytest.raises(BadSignatureError, match="malformed"):
            parse_payload(json.dumps(doc).encode())


def policy_for(pub: Path, kind: str = "sigstoreSigned") -> Policy:
    requirement = (
        {"type": kind, "keyPath": str(pub)} if kind == "sigstoreSigned" else {"type": kind}
    )
    return parse_policy(json.dumps({"default": [requirement]}).encode(), "p.json")


def test_check_image_with_a_maximum_age(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "k")
    policy = policy_for(pair.public_path)

    def check(*found: Signature) -> TrustDecision:
        return check_image(
            IMAGE,
            DIGEST,
            policy,
            signatures=lambda r, d: list(found),
            max_signature_age=WEEK,
            now=NOW,
        )

    assert check(signed(pair.private_path, at(1))).signed
    with pytest.raises(StaleSignatureError, match=r"p.json: default requires sigstoreSigned.*8d"):
        check(signed(pair.private_path, at(8)))
    with pytest.raises(StaleSignatureError, match="no valid signature carries a signing time"):
        check(signed(pair.private_path, None))
    # A young signature by another key does not make an old one young.
    other = generate_key_pair(tmp_path / "o")
    with pytest.raises(StaleSignatureError):
        check(signed(pair.private_path, at(8)), signed(other.private_path, at(0)))
    # Without the maximum age, the old signature is as good as ever.
    old = [signed(pair.private_path, at(400))]
    assert check_image(IMAGE, DIGEST, policy, signatures=lambda r, d: old).signed


@pytest.mark.parametrize("kind", ["none", "insecureAcceptAnything"])
def test_a_maximum_age_without_a_signature_requirement_refuses(tmp_path: Path, kind: str) -> None:
    pair = generate_key_pair(tmp_path / "k")
    policy = None if kind == "none" else policy_for(pair.public_path, kind)
    with pytest.raises(PolicyRejectedError, match="asks for no signature") as info:
        check_image(IMAGE, DIGEST, policy, max_signature_age=WEEK, now=NOW)
    assert "sigstoreSigned" in (info.value.hint or "")
