#!/usr/bin/env python3
"""Write the seed inputs of tests/fuzz/corpus/ (run again after changing a seed).

Seeds are small, valid inputs of each format, made here with the standard
library (tarfile, json) rather than atoll's own writers, so that the fuzzer
starts from what other tools produce.  The first byte of some targets' inputs
is a selector (tests/fuzz/targets.py says which).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    out = raw.getvalue().rstrip(b"\0")
    out += b"\0" * (-len(out) % 512)
    return out + b"\0" * 1024  # the two end blocks, not tarfile's 10 KiB record


def _info(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data


def tars() -> dict[str, bytes]:
    long = "usr/share/" + "long-directory-name/" * 6 + "file.txt"
    base = [
        _info("etc", tarfile.DIRTYPE),
        _info("etc/hostname", data=b"edge\n", uid=1000, gid=1000),
        _info("etc/link", tarfile.SYMTYPE, linkname="hostname"),
        _info("etc/hard", tarfile.LNKTYPE, linkname="etc/hostname"),
        _info("etc/fifo", tarfile.FIFOTYPE),
        _info(long, data=b"long name\n"),
    ]
    pax = [
        *base,
        _info(
            "usr/bin/ping", data=b"\x7fELF", pax_headers={"SCHILY.xattr.security.capability": "x"}
        ),
    ]
    return {
        "ustar": _tar(base[:5], tarfile.USTAR_FORMAT),
        "gnu": _tar(base, tarfile.GNU_FORMAT),
        "pax": _tar(pax, tarfile.PAX_FORMAT),
        "device": _tar(
            [_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)], tarfile.GNU_FORMAT
        ),
    }


def whiteout_layers() -> bytes:
    first = _tar(
        [
            _info("etc", tarfile.DIRTYPE),
            _info("etc/a", data=b"a"),
            _info("etc/b", data=b"b"),
            _info("opt", tarfile.DIRTYPE),
            _info("opt/x", data=b"x"),
        ],
        tarfile.PAX_FORMAT,
    )
    second = _tar(
        [
            _info("etc/.wh.a"),
            _info("opt/.wh..wh..opq"),
            _info("etc/c", tarfile.LNKTYPE, linkname="etc/b"),
        ],
        tarfile.PAX_FORMAT,
    )
    return (len(first) // 512).to_bytes(2, "big") + first + second


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps(
    {
        "created": "2026-01-02T03:04:05Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.version": "1.2"}, "Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(b"layer")]},
        "history": [{"created_by": "fuzz"}],
    },
    indent=1,
).encode()

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(b"blob"),
                "size": 4,
                "annotations": {"a": "b"},
            }
        ],
        "annotations": {"org.opencontainers.image.ref.name": "1"},
    },
    indent=1,
).encode()

INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(MANIFEST),
                "size": len(MANIFEST),
                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            }
        ],
    },
    indent=1,
).encode()

POLICIES = {
    "simple": {"default": [{"type": "insecureAcceptAnything"}]},
    "key-data": {"default": [{"type": "sigstoreSigned", "keyData": "LS0tLS1CRUdJTg=="}]},
    "scoped": {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                "registry.example:5000/ns": [
                    {
                        "type": "sigstoreSigned",
                        "keyPath": "/etc/pki/app.pub",
                        "signedIdentity": {"type": "matchRepository"},
                    }
                ],
                "*.example": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}],
            },
            "oci": {"": [{"type": "insecureAcceptAnything"}]},
        },
    },
}

QUADLETS = {
    "pod": b"[Pod]\nPodName=p\nPublishPort=80:80\n",
    "volume": b"[Volume]\nVolumeName=data\nLabel=a=b\n",
    "network": b"[Network]\nSubnet=10.0.0.0/24\nGateway=10.0.0.1\n",
    "image": b"[Image]\nImage=docker.io/library/alpine:3\n",
}


def updates_example() -> bytes:
    """The example of docs/updates.md."""
    text = (HERE.parent.parent / "docs" / "updates.md").read_text()
    return text.split("```toml\n", 1)[1].split("```", 1)[0].encode()


REGISTRIES = b"""\
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "quay.io/banned"
location = "quay.io/banned"
blocked = true

[[registry.mirror]]
location = "mirror.example"
"""

AUTH = json.dumps(
    {"auths": {"registry.example:5000": {"auth": "dXNlcjpwYXNz"}, "docker.io": {}}}
).encode()
CHALLENGES = (
    b'Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"\n'
    b'Basic realm="x"'
)


def _bundle_manifest(config_digest: str, size: int) -> str:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.atoll.bundle.v1",
            "config": {
                "mediaType": "application/vnd.atoll.bundle.v1+json",
                "digest": config_digest,
                "size": size,
            },
            "layers": [],
        }
    )


def bundle() -> bytes:
    description = json.dumps(
        {
            "atollBundle": 1,
            "created": "2026-01-02T03:04:05Z",
            "images": [
                {
                    "role": "os",
                    "reference": "registry.example/os:1",
                    "digest": _digest(MANIFEST),
                    "signatures": None,
                    "unit": None,
                }
            ],
            "delta": None,
        }
    ).encode()
    top = _bundle_manifest(_digest(description), len(description)).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(top),
                    "size": len(top),
                    "annotations": {"org.opencontainers.image.ref.name": "atoll-bundle"},
                }
            ],
        }
    ).encode()
    files = [
        ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
        ("index.json", index),
        ("blobs/sha256/" + _digest(top)[7:], top),
        ("blobs/sha256/" + _digest(description)[7:], description),
    ]
    return _tar([_info(name, data=data) for name, data in files], tarfile.USTAR_FORMAT)


def bundle_parts() -> bytes:
    """The parts form of the bundle target: description, signature payload,
    signature manifest, bundle manifest (@Dn@: the digest of part n)."""
    description = json.dumps(
        {
            "atollBundle": 1,
            "created": "2026-01-02T03:04:05Z",
            "images": [{"role": "os", "reference": "registry.example/os:1", "digest": "@D1@"}],
            "delta": {
                "from": "registry.example/os:0",
                "fromDigest": "@D1@",
                "omitted": [{"digest": "@D1@", "diffId": "@D1@", "size": 3, "split": "@D1@"}],
            },
        }
    )
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "registry.example/os:1"},
                "image": {"docker-manifest-digest": "@D3@"},
                "type": "cosign container image signature",
            },
            "optional": {"timestamp": 1767322800},
        }
    )
    signature = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "@D0@",
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": "@D1@",
                    "size": len(payload),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
                }
            ],
        }
    )
    top = _bundle_manifest("@D0@", 1)
    return "\0".join([description, payload, signature, top]).encode()


def grubenv() -> dict[str, bytes]:
    body = b"saved_entry=atoll-1\nboot_counter=3\n# comment\nnext_entry=\n"
    block = b"# GRUB Environment Block\n" + body
    return {"block": block + b"#" * (1024 - len(block)), "body": body}


def seeds() -> dict[str, dict[str, bytes]]:
    blueprint = (HERE.parent / "build" / "test_blueprint.py").read_text()
    full = blueprint.split('FULL = """\\\n', 1)[1].split('"""', 1)[0].encode()
    return {
        "tar": {f"{k}-{sel}": bytes([sel]) + v for k, v in tars().items() for sel in (3, 255)},
        "compression": {
            "gzip": b"g\x03" + gzip.compress(tars()["gnu"], mtime=0),
            "zstd": b"z\x03" + zstandard.ZstdCompressor().compress(tars()["gnu"]),
        },
        "importer": {"whiteouts": whiteout_layers(), "one": b"\0\0" + tars()["pax"]},
        "manifest": {
            "manifest": b"\x01" + MANIFEST,
            "index": b"\x02" + INDEX,
            "config": b"\x03" + CONFIG,
            "untyped": b"\0" + MANIFEST,
        },
        "reference": {
            "docker": b"docker.io/library/alpine:3",
            "digest": b"localhost:5000/a/b:1@sha256:" + b"a" * 64,
            "transport": b"docker://quay.io/x/y:1",
            "oci": b"oci:/srv/layout:app",
            "archive": b"oci-archive:/srv/b.tar:registry.example/os:1",
        },
        "policy": {k: json.dumps(v, indent=1).encode() for k, v in POLICIES.items()},
        "quadlet": {
            "container": b"\0" + (HERE.parent / "workloads/corpus/web.container").read_bytes(),
            **{k: bytes([i + 1]) + v for i, (k, v) in enumerate(QUADLETS.items())},
            "dropin": b"\0[Container]\nImage=a\n\0[Container]\nEnvironment=B=2\n",
        },
        "blueprint": {"full": full, "minimal": b'name = "edge"\n'},
        "updates": {"full": updates_example()},
        "registries": {"full": REGISTRIES},
        "auth": {
            "auth.json": AUTH,
            "dockercfg": b"d" + json.dumps(json.loads(AUTH)["auths"]).encode(),
            "challenges": CHALLENGES,
        },
        "bundle": {"minimal": bundle(), "parts": bundle_parts()},
        "grubenv": grubenv(),
    }


def main() -> int:
    for target, files in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / f"seed-{name}").write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
