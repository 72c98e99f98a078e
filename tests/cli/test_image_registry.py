"""``atoll image`` against the real registry, with skopeo as the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.cli.main import main
from helpers.images import build_multiarch
from helpers.registry import FaultProxyView, RegistryView

pytestmark = pytest.mark.integration

TRANSPORTS = ("docker", "oci", "oci-archive", "dir")


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code = main(["image", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data: dict[str, object] = json.loads(captured.out)
    return data


def name_for(transport: str, registry: RegistryView, base: Path, tag: str) -> str:
    if transport == "docker":
        return f"docker://{registry.host}/{registry.new_repo('matrix')}:{tag}"
    base.mkdir(parents=True, exist_ok=True)
    if transport == "dir":
        return f"dir:{base / tag}"
    suffix = ".tar" if transport == "oci-archive" else ""
    return f"{transport}:{base / (tag + suffix)}:{tag}"


def skopeo_name_args(name: str, registry: RegistryView, direction: str) -> list[str]:
    return registry.skopeo_args(direction) if name.startswith("docker://") else []


def skopeo_digest(registry: RegistryView, name: str) -> str:
    raw = registry.skopeo("inspect", "--raw", *skopeo_name_args(name, registry, ""), name).stdout
    import hashlib

    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


@pytest.mark.parametrize("src_transport", TRANSPORTS)
@pytest.mark.parametrize("dst_transport", TRANSPORTS)
def test_every_transport_pair_keeps_the_digest_skopeo_keeps(
    registry: RegistryView,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    src_transport: str,
    dst_transport: str,
) -> None:
    pushed = registry.push_test_image(registry.new_repo("seed"), "v1", layers=2)
    seed = f"oci:{pushed.layout}:v1"
    # The source, put in place by skopeo so atoll reads what another tool wrote.
    src = name_for(src_transport, registry, tmp_path / "src", "v1")
    registry.skopeo("copy", "-q", *skopeo_name_args(src, registry, "dest"), seed, src)
    ours = name_for(dst_transport, registry, tmp_path / "atoll", "v1")
    theirs = name_for(dst_transport, registry, tmp_path / "skopeo", "v1")

    result = run_json(capsys, "copy", src, ours)
    registry.skopeo(
        "copy",
        "-q",
        *skopeo_name_args(src, registry, "src"),
        *skopeo_name_args(theirs, registry, "dest"),
        src,
        theirs,
    )
    assert result["digest"] == pushed.manifest_digest
    assert (
        skopeo_digest(registry, ours) == skopeo_digest(registry, theirs) == pushed.manifest_digest
    )


def test_what_atoll_pushes_skopeo_inspects_and_copies(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.images import build_image

    img = build_image(tmp_path / "img", "v1", labels={"org.opencontainers.image.version": "1.0"})
    dest = f"docker://{registry.host}/{registry.new_repo('push')}:v1"
    run_json(capsys, "copy", f"oci:{img.layout}:v1", dest)
    inspected = json.loads(registry.skopeo("inspect", *registry.skopeo_args(), dest).stdout)
    assert inspected["Digest"] == img.manifest_digest
    assert inspected["Labels"] == {"org.opencontainers.image.version": "1.0"}
    registry.skopeo("copy", "-q", *registry.skopeo_args("src"), dest, f"oci:{tmp_path / 'out'}:v1")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == img.manifest_digest


def test_inspect_matches_skopeo(registry: RegistryView, capsys: pytest.CaptureFixture[str]) -> None:
    repo = registry.new_repo("inspect")
    img = registry.push_test_image(repo, "v2", labels={"containers.bootc": "1"})
    name = f"docker://{registry.host}/{repo}:v2"
    ours = run_json(capsys, "inspect", name)
    theirs = json.loads(registry.skopeo("inspect", *registry.skopeo_args(), name).stdout)
    for key in ("Digest", "RepoTags", "Architecture", "Os", "Labels", "Layers"):
        assert ours[key] == theirs[key], key
    assert ours["Bootable"] is True
    assert main(["image", "inspect", "--raw", name]) == 0
    assert capsys.readouterr().out.encode() == img.manifest
    assert main(["image", "inspect", "--config", "--raw", name]) == 0
    config_raw = registry.skopeo("inspect", "--config", "--raw", *registry.skopeo_args(), name)
    assert capsys.readouterr().out == config_raw.stdout


def test_inspect_format_prints_the_fields_skopeo_prints(
    registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = registry.new_repo("format")
    img = registry.push_test_image(repo, "v3", labels={"b": "2", "a": "1"})
    registry.push_test_image(repo, "v4", seed="v4")
    name = f"docker://{registry.host}/{repo}:v3"
    template = "{{.Digest}} {{.Os}}/{{.Architecture}} {{ .RepoTags }} {{.Labels}} {{.Layers}}"
    assert main(["image", "inspect", "--format", template, name]) == 0
    ours = capsys.readouterr().out
    theirs = registry.skopeo("inspect", "--format", template, *registry.skopeo_args(), name)
    assert ours == theirs.stdout
    assert ours.startswith(img.manifest_digest + " ")
    # One field alone is a whole line, for $(...) in a promote command.
    assert main(["image", "inspect", "--format", "{{.Digest}}", name]) == 0
    assert capsys.readouterr().out == img.manifest_digest + "\n"
    assert main(["image", "inspect", "--format", "{{.Nope}}", name]) == 2
    assert "{{.Nope}}" in capsys.readouterr().err


def test_tags_and_delete(registry: RegistryView, capsys: pytest.CaptureFixture[str]) -> None:
    repo = registry.new_repo("tags")
    for tag in ("a", "b", "c"):
        registry.push_test_image(repo, tag, seed=tag)
    listed = run_json(capsys, "tags", f"docker://{registry.host}/{repo}")
    assert sorted(listed["Tags"]) == ["a", "b", "c"]  # type: ignore[arg-type]
    deleted = run_json(capsys, "delete", f"docker://{registry.host}/{repo}:b")
    assert str(deleted["digest"]).startswith("sha256:")
    assert main(["image", "inspect", f"docker://{registry.host}/{repo}:b"]) == 12
    assert "atoll: error:" in capsys.readouterr().err
    assert sorted(run_json(capsys, "tags", f"docker://{registry.host}/{repo}")["Tags"]) == [  # type: ignore[arg-type]
        "a",
        "c",
    ]


def test_delete_of_a_tag_sharing_its_digest_needs_all_tags(
    registry: RegistryView, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = registry.new_repo("shared")
    base = f"docker://{registry.host}/{repo}"
    img = registry.push_test_image(repo, "v1")
    registry.push_test_image(repo, "other", seed="other")
    registry.skopeo(
        "copy",
        "-q",
        *registry.skopeo_args("src"),
        *registry.skopeo_args("dest"),
        f"{base}:v1",
        f"{base}:latest",
    )
    # The registry deletes by digest, so deleting v1 would remove latest too: refused.
    assert main(["image", "delete", f"{base}:v1"]) == 6
    err = capsys.readouterr().err
    assert "also tagged latest" in err and "--all-tags" in err
    assert sorted(run_json(capsys, "tags", base)["Tags"]) == ["latest", "other", "v1"]  # type: ignore[arg-type]

    deleted = run_json(capsys, "delete", "--all-tags", f"{base}:v1")
    assert deleted["digest"] == img.manifest_digest
    assert sorted(deleted["tags"]) == ["latest", "v1"]  # type: ignore[arg-type]
    assert run_json(capsys, "tags", base)["Tags"] == ["other"]


def test_multiarch_index_from_a_registry(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index_digest, images = build_multiarch(tmp_path / "multi")
    repo = registry.new_repo("multi")
    src = f"docker://{registry.host}/{repo}:latest"
    registry.skopeo(
        "copy", "-q", "--all", *registry.skopeo_args("dest"), f"oci:{tmp_path / 'multi'}", src
    )
    assert run_json(capsys, "copy", src, f"oci:{tmp_path / 'one'}")["digest"] == (
        images["amd64"].manifest_digest
    )
    all_copy = run_json(capsys, "copy", "--all", src, f"docker://{registry.host}/{repo}-all:x")
    assert all_copy["digest"] == index_digest
    arm = run_json(capsys, "inspect", "--override-arch", "arm64", src)
    assert arm["Architecture"] == "arm64"
    assert arm["Digest"] == index_digest


# --- faults: one line, the exit code, nothing left behind ------------------------------


def _seed(proxy: FaultProxyView) -> tuple[str, str]:
    repo = proxy.registry.new_repo("fault")
    img = proxy.registry.push_test_image(repo, "v1", layers=2, layer_size=300_000)
    return f"docker://{proxy.host}/{repo}:v1", img.layer_digests[1]


def _fault(proxy: FaultProxyView, kind: str, layer: str) -> str:
    """Program one fault; return the suffix to give the source name."""
    blob = f"/blobs/{layer}"
    if kind == "truncate":
        proxy.truncate(blob, keep=1000)
    elif kind == "corrupt":
        proxy.corrupt(blob, offset=500)
    elif kind == "missing-blob":
        proxy.fail(blob, 404)
    elif kind == "deny":
        proxy.deny()
    elif kind == "malformed":
        proxy.serve("/manifests/v1", b"{not json", content_type="application/json")
    elif kind == "no-such-tag":
        return "-nope"
    return ""


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        ("truncate", 11, "truncated"),
        ("corrupt", 11, "digest mismatch"),
        ("missing-blob", 12, "reading blob"),
        ("deny", 21, "authentication required"),
        ("malformed", 10, "not valid JSON"),
        ("no-such-tag", 12, "manifest unknown"),
    ],
)
def test_faults_give_one_line_their_code_and_no_destination(
    fault_proxy: FaultProxyView,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    code: int,
    message: str,
) -> None:
    src, layer = _seed(fault_proxy)
    src += _fault(fault_proxy, fault, layer)
    dest = tmp_path / "dest"
    result = main(["image", "copy", "--retry-times", "2", src, f"oci:{dest}:v1"])
    err = capsys.readouterr().err
    assert result == code, err
    assert err.startswith("atoll: error: ")
    assert message in err.splitlines()[0]
    assert not dest.exists()


def test_bad_blob_never_moves_a_registry_tag(
    fault_proxy: FaultProxyView, capsys: pytest.CaptureFixture[str]
) -> None:
    src, layer = _seed(fault_proxy)
    fault_proxy.truncate(f"/blobs/{layer}", keep=10)
    registry = fault_proxy.registry
    dest_repo = registry.new_repo("never")
    dest = f"docker://{registry.host}/{dest_repo}:v1"
    assert main(["image", "copy", "--retry-times", "1", src, dest]) == 11
    capsys.readouterr()
    assert main(["image", "tags", f"docker://{registry.host}/{dest_repo}"]) in (0, 12)
    assert "v1" not in capsys.readouterr().out


def test_server_errors_then_success(
    fault_proxy: FaultProxyView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, layer = _seed(fault_proxy)
    fault_proxy.fail(f"/blobs/{layer}", 500, times=2)
    fault_proxy.fail("/manifests/", 503, times=1)
    result = run_json(capsys, "copy", src, f"oci:{tmp_path / 'dest'}:v1")
    assert result["blobsCopied"] == 3


def test_dropped_connection_is_resumed(
    fault_proxy: FaultProxyView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, layer = _seed(fault_proxy)
    fault_proxy.drop_after(f"/blobs/{layer}", 100_000)
    run_json(capsys, "copy", src, f"oci:{tmp_path / 'dest'}:v1")
    ranged = [r for r in fault_proxy.requests if r.path.endswith(layer) and r.headers.get("range")]
    assert ranged and ranged[0].headers["range"] == "bytes=100000-"


def test_basic_auth_registry_with_creds_and_authfile(
    auth_registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = auth_registry.new_repo("auth")
    img = auth_registry.push_test_image(repo, "v1")
    src = f"docker://{auth_registry.host}/{repo}:v1"
    assert main(["image", "inspect", src]) == 21
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"atoll: error: {auth_registry.host}/{repo}: reading manifest v1: "
        "authentication required (HTTP 401)"
    )
    assert err[1].startswith("hint: log in with atoll login HOST")
    creds = auth_registry.credentials
    assert creds is not None
    out = run_json(capsys, "inspect", "--creds", creds, src)
    assert out["Digest"] == img.manifest_digest
    import base64

    authfile = tmp_path / "auth.json"
    authfile.write_text(
        json.dumps(
            {"auths": {auth_registry.host: {"auth": base64.b64encode(creds.encode()).decode()}}}
        )
    )
    assert (
        run_json(capsys, "inspect", "--authfile", str(authfile), src)["Digest"]
        == img.manifest_digest
    )


def test_token_registry_copy_both_ways(
    token_registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.images import build_image

    creds = token_registry.credentials
    assert creds is not None
    img = build_image(tmp_path / "img", "v1")
    dest = f"docker://{token_registry.host}/{token_registry.new_repo('tok')}:v1"
    pushed = run_json(capsys, "copy", "--dest-creds", creds, f"oci:{img.layout}:v1", dest)
    pulled = run_json(capsys, "copy", "--src-creds", creds, dest, f"oci:{tmp_path / 'back'}:v1")
    assert pushed["digest"] == pulled["digest"] == img.manifest_digest


def test_tls_registry(
    tls_registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.images import build_image

    img = build_image(tmp_path / "img", "v1")
    dest = f"docker://{tls_registry.host}/{tls_registry.new_repo('tls')}:v1"
    assert run_json(capsys, "copy", f"oci:{img.layout}:v1", dest)["digest"] == img.manifest_digest
    # Without the CA (an empty cert dir) the certificate is not trusted: exit 23.
    empty = tmp_path / "no-ca"
    empty.mkdir()
    assert main(["image", "inspect", "--cert-dir", str(empty), dest]) == 23
    assert "atoll: error:" in capsys.readouterr().err


def test_upload_cut_off_is_sent_again(
    fault_proxy: FaultProxyView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.images import build_image

    img = build_image(tmp_path / "img", "v1", layers=1, layer_size=200_000)
    fault_proxy.hang_up("/blobs/uploads/", method="PUT", times=1)
    dest = f"docker://{fault_proxy.host}/{fault_proxy.new_repo('cut')}:v1"
    result = run_json(capsys, "copy", "--retry-times", "3", f"oci:{img.layout}:v1", dest)
    assert result["digest"] == img.manifest_digest
    puts = fault_proxy.seen("PUT", "/blobs/uploads/")
    assert len(puts) >= 3  # config and layer, one of them twice
    assert run_json(capsys, "inspect", "--no-tags", dest)["Digest"] == img.manifest_digest


def test_docker_schema2_images_and_manifest_lists(
    registry: RegistryView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """skopeo turns OCI test images into Docker ones; atoll keeps them as they are."""
    index_digest, _ = build_multiarch(tmp_path / "multi")
    repo = registry.new_repo("docker")
    src = f"docker://{registry.host}/{repo}:v1"
    registry.skopeo(
        "copy",
        "-q",
        "--all",
        "--format",
        "v2s2",
        *registry.skopeo_args("dest"),
        f"oci:{tmp_path / 'multi'}",
        src,
    )
    raw_list = registry.skopeo("inspect", "--raw", *registry.skopeo_args(), src).stdout
    assert json.loads(raw_list)["mediaType"] == (
        "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    expected = skopeo_digest(registry, src)
    copied = run_json(capsys, "copy", "--all", src, f"oci:{tmp_path / 'all'}:v1")
    assert copied["digest"] == expected
    assert copied["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    single = run_json(capsys, "copy", src, f"dir:{tmp_path / 'one'}")
    assert single["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    # zstd needs OCI manifests: the image is converted, and says so.
    zstd = run_json(
        capsys, "copy", "--dest-compress-format", "zstd", src, f"oci:{tmp_path / 'z'}:v1"
    )
    assert zstd["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert zstd["converted"] is True
    raw = registry.skopeo("inspect", "--raw", f"oci:{tmp_path / 'z'}:v1").stdout
    assert {layer["mediaType"] for layer in json.loads(raw)["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    assert index_digest != expected
