"""SystemContext.rate_limit against the real registry: blob downloads are paced."""

from __future__ import annotations

import time

import pytest

from atoll.oci.client import RegistryClient
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest
from helpers.registry import RegistryView

MiB = 1024 * 1024


@pytest.mark.integration
def test_rate_limit_paces_blob_downloads(registry: RegistryView) -> None:
    repo = registry.new_repo("ratelimit")
    image = registry.push_test_image(repo, layers=1, layer_size=2 * MiB)
    layer = image.layer_digests[0]
    expected = (image.layout / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
    assert len(expected) > 1.9 * MiB  # pseudo-random content does not compress

    def download(ctx: SystemContext) -> float:
        start = time.monotonic()
        with (
            RegistryClient(registry.host, ctx) as client,
            client.open_blob(repo, Digest.parse(layer), len(expected)) as stream,
        ):
            data = b"".join(stream)
        assert data == expected
        return time.monotonic() - start

    unlimited = download(registry.ctx())
    limited = download(registry.ctx(rate_limit=MiB))
    # 2 MiB at 1 MiB/s, less the bucket's 0.25 s burst: about 1.75 s.
    assert limited >= 1.5, limited
    assert limited < 6, limited
    assert unlimited < 1.0, unlimited
