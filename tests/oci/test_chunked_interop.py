"""Other clients and atoll's zstd:chunked layers: skopeo and podman 4.3 pull them as
ordinary zstd images with the same digests; podman 5.4.2 (Debian trixie under
systemd-nspawn, helpers.podman5) pulls them partially, by ranges, seen through
the fault proxy, which records every request; and atoll pulls the zstd:chunked
layers podman 5 pushes file by file."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from atoll.cli.main import main
from atoll.oci.imagecopy import CopyOptions, copy_image
from atoll.oci.manifest import Compression
from atoll.oci.transports import ImageName
from atoll.podman import isolated_environment
from atoll.store import Store
from atoll.store.partial import RANGES
from atoll.sysroot.fetch import import_remote
from helpers.parts import missing
from helpers.podman5 import SystemdHost, ensure_tree, unavailable
from helpers.registry import FaultProxyView, RegistryView
from helpers.workloads import push_workload_image

pytestmark = pytest.mark.integration

CHUNKED = CopyOptions(dest_compression=Compression.ZSTD, zstd_chunked=True)
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
#: Seconds one podman step in the trixie host may take (each takes a few).
STEP = 60


def chunked_image(registry: RegistryView, page: str, tag: str = "v1") -> str:
    """The busybox workload image pushed gzip, then copied by atoll as zstd:chunked."""
    repo = registry.new_repo("interop")
    plain = push_workload_image(registry, repo, "plain-" + tag, page=page)
    target = f"{registry.server.host}/{repo}:{tag}"
    # Through the command line, as a pipeline would.
    argv = ["image", "copy", "--quiet", "--dest-compress-format", "zstd:chunked"]
    assert main([*argv, f"docker://{plain}", f"docker://{target}"]) == 0
    return target


def test_skopeo_copies_chunked_layers_as_they_are(registry: RegistryView, tmp_path: Path) -> None:
    ref = chunked_image(registry, "skopeo\n")
    remote = registry.skopeo("inspect", "--raw", f"docker://{ref}").stdout
    layers = json.loads(remote)["layers"]
    assert {layer["mediaType"] for layer in layers} == {ZSTD}
    registry.skopeo("copy", "-q", f"docker://{ref}", f"oci:{tmp_path / 'out'}:x")
    local = registry.skopeo("inspect", "--raw", f"oci:{tmp_path / 'out'}:x").stdout
    assert local == remote  # same manifest bytes, so the same digests
    for layer in layers:
        blob = tmp_path / "out/blobs/sha256" / layer["digest"].split(":")[1]
        assert blob.stat().st_size == layer["size"]
        # zstd (a decoder that knows nothing of the TOC) reads it as a tar.
        out = subprocess.run(["zstd", "-dc", str(blob)], capture_output=True, check=True).stdout
        assert b"www/index.html" in out


def test_podman_4_pulls_and_runs_chunked_images(registry: RegistryView) -> None:
    ref = chunked_image(registry, "podman 4\n")
    root = Path(tempfile.mkdtemp(prefix="atc-", dir="/tmp"))
    env = {
        **os.environ,
        **isolated_environment(
            root, registries_conf=Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
        ),
    }

    def podman(*args: str) -> str:
        proc = subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=env, timeout=180, check=False
        )
        assert proc.returncode == 0, proc.stderr[-800:]
        return proc.stdout

    try:
        podman("pull", "-q", ref)
        digest = podman("image", "inspect", "--format", "{{.Digest}}", ref).strip()
        remote = registry.skopeo("inspect", "--raw", f"docker://{ref}").stdout
        import hashlib

        assert digest == "sha256:" + hashlib.sha256(remote.encode()).hexdigest()
        out = podman("run", "--rm", "--network", "none", ref, "cat", "/www/index.html")
        assert out == "podman 4\n"
    finally:
        subprocess.run(
            ["podman", "system", "reset", "-f"], env=env, capture_output=True, check=False
        )
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_podman_5_pulls_chunked_layers_partially(
    fault_proxy: FaultProxyView, tmp_path: Path
) -> None:
    why = unavailable()
    if why is not None:
        missing(f"a host with systemd and podman 5: {why}")
    rootfs = ensure_tree()
    upstream = fault_proxy.registry
    v1 = chunked_image(upstream, "version one\n", "v1")
    repo = v1.split("/", 1)[1].split(":")[0]
    v2 = f"{upstream.server.host}/{repo}:v2"
    # v2: the same files but one page, so the host has all but one file.
    plain2 = push_workload_image(upstream, repo, "plain-v2", page="version two\n")
    copy_image(
        ImageName.parse(f"docker://{plain2}"),
        ImageName.parse(f"docker://{v2}"),
        src_ctx=upstream.ctx(),
        options=CHUNKED,
    )
    raw = json.loads(upstream.skopeo("inspect", "--raw", f"docker://{v2}").stdout)
    (layer,) = raw["layers"]
    blob = layer["digest"]

    host = SystemdHost(rootfs, tmp_path / "host", (fault_proxy.host,))
    (host.conf / "storage.conf").write_text(
        '[storage]\ndriver = "overlay"\nrunroot = "/run/containers/storage"\n'
        'graphroot = "/var/lib/containers/storage"\n[storage.options]\n'
        'pull_options = {enable_partial_images = "true", use_hard_links = "false", '
        'ostree_repos = ""}\n'
    )
    host.start()
    try:
        via = fault_proxy.host
        # Each step fails within STEP seconds with podman's debug log and its stacks.
        host.run("podman", "--log-level=debug", "pull", "-q", f"{via}/{repo}:v1", timeout=STEP)
        fault_proxy.proxy.reset()
        pulled = host.run("podman", "--log-level=debug", "pull", f"{via}/{repo}:v2", timeout=STEP)
        seen = [r for r in fault_proxy.proxy.requests if blob in r.path and r.method == "GET"]
        ranged = [r for r in seen if "range" in r.headers]
        print(pulled.stderr[-3000:])
        # Every read of the new layer was a range: podman took its TOC and the one
        # changed file, not the blob.
        assert seen and len(ranged) == len(seen), [r.headers.get("range") for r in seen]
        asked = 0
        for request in ranged:
            for part in request.headers["range"].removeprefix("bytes=").split(","):
                first, _, last = part.strip().partition("-")
                asked += int(last) - int(first) + 1
        # The TOC, the tar-split and one small page: a small share of the layer.
        assert asked < layer["size"] / 4, (asked, layer["size"])
        print(f"podman 5 asked for {asked} of the layer's {layer['size']} bytes")
        out = host.run("podman", "run", "--rm", "--network", "host", f"{via}/{repo}:v2",
                       "cat", "/www/index.html", timeout=STEP).stdout  # fmt: skip
        assert out == "version two\n"

        # The other way round: layers podman 5 (containers/storage's writer) pushes
        # as zstd:chunked, pulled by atoll file by file.
        for tag in ("v1", "v2"):
            host.run("podman", "push", "-q", "--compression-format", "zstd:chunked",
                     "--force-compression", f"{via}/{repo}:{tag}",
                     f"{via}/{repo}:podman-{tag}", timeout=STEP)  # fmt: skip
        ctx = fault_proxy.ctx()
        store = Store.create(tmp_path / "store")
        import_remote(store, ImageName.parse(f"docker://{via}/{repo}:podman-v1"), ctx)
        name = ImageName.parse(f"docker://{via}/{repo}:podman-v2")
        result, report = import_remote(store, name, ctx)
        (row,) = report.layers
        assert row.path == RANGES, row
        assert row.files_fetched == 1 and row.bytes < row.size / 4, row
        whole, _ = import_remote(Store.create(tmp_path / "other"), name, ctx, partial=False)
        assert whole.commit_id == result.commit_id

        # A step that does not end fails at its timeout with podman's goroutine stacks.
        with pytest.raises(RuntimeError, match=r"(?s)still running after 2 s.*goroutine "):
            host.run("podman", "events", timeout=2)
    finally:
        print(host.console_tail())
        host.stop()
