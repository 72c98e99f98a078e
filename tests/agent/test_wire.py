"""Signed specs: each attack the agent must refuse (docs/fleet.md, "Trust")."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest

from atoll.agent import wire
from atoll.errors import SpecExpiredError, SpecTrustError

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
SERVER = wire.generate_key()
KEYS = {wire.key_id(SERVER.public_key()): SERVER.public_key()}


def envelope(
    version: int = 3,
    device: str = "dev1",
    expires: datetime.timedelta | None = None,
    key: Any = SERVER,
) -> dict[str, Any]:
    payload = {
        "device": device,
        "version": version,
        "issuedAt": NOW.isoformat(),
        "expiresAt": (NOW + (expires or datetime.timedelta(days=1))).isoformat(),
        "spec": {"os": {"image": "reg/os@sha256:" + "a" * 64}},
    }
    return wire.seal_spec(key, payload)


def open_(sealed: Any, applied: int = 2) -> wire.OpenedSpec:
    return wire.open_spec(sealed, KEYS, device="dev1", applied_version=applied, now=NOW)


def test_a_fresh_spec_opens() -> None:
    opened = open_(envelope())
    assert (opened.version, opened.spec["os"]["image"][-4:]) == (3, "aaaa")
    assert open_(envelope(version=2)).version == 2  # the applied one again: no rollback


def test_a_tampered_payload_is_refused() -> None:
    sealed = envelope()
    payload = json.loads(base64.b64decode(sealed["payload"]))
    payload["spec"]["os"]["image"] = "evil/os@sha256:" + "e" * 64
    sealed["payload"] = base64.b64encode(wire.canonical_json(payload)).decode()
    with pytest.raises(SpecTrustError, match="signature does not verify"):
        open_(sealed)


def test_a_key_the_server_did_not_give_is_refused() -> None:
    with pytest.raises(SpecTrustError, match="which the server did not give this device"):
        open_(envelope(key=wire.generate_key()))


def test_another_devices_spec_is_refused() -> None:
    with pytest.raises(SpecTrustError, match="is for device 'dev2', not 'dev1'"):
        open_(envelope(device="dev2"))


def test_an_older_spec_is_a_rollback() -> None:
    with pytest.raises(SpecTrustError, match="version 1 is older than the applied version 2"):
        open_(envelope(version=1))


def test_an_expired_spec_is_a_freeze() -> None:
    with pytest.raises(SpecExpiredError, match="expired at"):
        open_(envelope(expires=datetime.timedelta(seconds=-1)))


@pytest.mark.parametrize(
    "sealed",
    [None, [], {"format": 2}, {**envelope(), "payload": "%%%"}, {**envelope(), "signature": 5}],
)
def test_malformed_envelopes_are_refused(sealed: Any) -> None:
    with pytest.raises(SpecTrustError):
        open_(sealed)


def test_request_signatures_cover_method_target_time_and_body() -> None:
    device = wire.generate_key()
    headers = wire.signed_headers(device, "dev1", "PUT", "/api/v1/agent/status", b"{}", 1000)
    signature = headers[wire.HEADER_SIGNATURE]
    public = device.public_key()
    assert wire.verify(
        public, wire.request_message("PUT", "/api/v1/agent/status", 1000, b"{}"), signature
    )
    for changed in (
        wire.request_message("GET", "/api/v1/agent/status", 1000, b"{}"),
        wire.request_message("PUT", "/api/v1/agent/spec", 1000, b"{}"),
        wire.request_message("PUT", "/api/v1/agent/status", 1001, b"{}"),
        wire.request_message("PUT", "/api/v1/agent/status", 1000, b"{ }"),
    ):
        assert not wire.verify(public, changed, signature)
