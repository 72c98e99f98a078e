"""Reading sigstore payloads as strictly as containers/image does.

The same cases run against podman 5 in tests/pipeline/test_interop.py; these
need no registry and no podman.
"""

from __future__ import annotations

import pytest

from atoll.errors import BadSignatureError
from atoll.oci.digest import Digest
from atoll.pipeline.sigstore import make_payload, parse_payload

PAYLOAD = make_payload("r.io/a/b:1", Digest.parse("sha256:" + "1" * 64)).decode()


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('"optional":null', '"optional":{"creator":"c","timestamp":17,"other":[1]}', None),
        ('{"critical":', '{ "critical" : ', None),
        (',"optional":null', "", "exactly critical, optional"),
        ('"optional":null', '"optional":null,"x":1', "exactly critical, optional"),
        ('"type":"cosign', '"x":1,"type":"cosign', "critical must be an object with exactly"),
        ('{"docker-reference"', '{"x":1,"docker-reference"', "critical.identity must be"),
        ('"identity":', '"identity":{"docker-reference":"o.io/x:1"},"identity":', "duplicate key"),
        ('"image":', '"identity":{"docker-reference":"o.io/x:1"},"image":', "duplicate key"),
        ('"optional":null', '"optional":{"a":1,"a":2}', 'duplicate key "a"'),
        ('"optional":null', '"optional":{"timestamp":"now"}', "optional.timestamp"),
        ('"optional":null', '"optional":[]', "optional is not an object"),
        ('"cosign container', '"other container', "has type"),
    ],
)
def test_payload_is_read_as_strictly_as_containers_image(
    old: str, new: str, error: str | None
) -> None:
    assert PAYLOAD.count(old) == 1
    payload = PAYLOAD.replace(old, new).encode()
    if error is None:
        assert parse_payload(payload).identity == "r.io/a/b:1"
        return
    with pytest.raises(BadSignatureError, match=error):
        parse_payload(payload)
