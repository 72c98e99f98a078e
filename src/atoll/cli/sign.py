"""``atoll key generate``, ``atoll sign`` and ``atoll verify``: sigstore signatures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from atoll.cli.common import (
    Output,
    add_global_options,
    add_platform_options,
    add_registry_options,
    system_context,
)
from atoll.errors import UsageError
from atoll.oci.reference import ImageReference
from atoll.oci.transports import ImageName, Transport

# atoll.pipeline needs `cryptography`; it is imported only when a command runs,
# so `atoll` keeps starting in booted images that have the standard library only.
COSIGN_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
SIGSTORE_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    key = commands.add_parser("key", help="make signing keys")
    key_sub = key.add_subparsers(dest="key_command", metavar="COMMAND")
    key_sub.required = True
    generate = key_sub.add_parser(
        "generate",
        help="write an ECDSA P-256 key pair: PREFIX.key and PREFIX.pub",
        description="With --passphrase-file the private key is encrypted as cosign does; "
        "that is the form podman and skopeo --sign-by-sigstore-private-key read.",
    )
    add_global_options(generate)
    generate.add_argument("-o", "--output", required=True, metavar="PREFIX", help="path prefix")
    generate.add_argument(
        "--passphrase-file", metavar="FILE", help="encrypt the private key with this passphrase"
    )
    generate.add_argument(
        "--pem-type",
        choices=("cosign", "sigstore"),
        default="cosign",
        help=f"encrypted key PEM type: cosign ({COSIGN_PEM_TYPE}, read by podman 4.3) "
        f"or sigstore ({SIGSTORE_PEM_TYPE}, cosign 2)",
    )
    generate.set_defaults(func=_generate)

    sign = commands.add_parser("sign", help="sign an image in a registry (sigstore)")
    add_global_options(sign)
    sign.add_argument("name", metavar="IMAGE", help="docker://REGISTRY/REPO[:TAG|@DIGEST]")
    sign.add_argument("--key", required=True, metavar="KEY", help="private key file")
    sign.add_argument("--passphrase-file", metavar="FILE", help="passphrase of an encrypted key")
    sign.add_argument(
        "--identity",
        metavar="REF",
        help="docker-reference to sign for (default: the image's own REGISTRY/REPO:TAG)",
    )
    sign.add_argument(
        "--refresh",
        action="store_true",
        help="sign again, with the time now, what this key signed before (each identity, or "
        "only --identity), dropping the key's older signatures; run it on a schedule shorter "
        "than the devices' max_signature_age",
    )
    add_registry_options(sign)
    add_platform_options(sign, transfers=False)
    sign.set_defaults(func=_sign)

    verify = commands.add_parser(
        "verify", help="check an image's sigstore signature with a key or a trust policy"
    )
    add_global_options(verify)
    verify.add_argument("name", metavar="IMAGE")
    how = verify.add_mutually_exclusive_group(required=True)
    how.add_argument("--key", metavar="PUB", help="public key file")
    how.add_argument("--policy", metavar="FILE", help="containers-policy.json to apply")
    add_registry_options(verify)
    add_platform_options(verify)
    verify.set_defaults(func=_verify)


def _generate(args: argparse.Namespace, out: Output) -> int:
    from atoll.pipeline.keys import generate_key_pair, read_passphrase

    passphrase = read_passphrase(Path(args.passphrase_file)) if args.passphrase_file else None
    pem_type = COSIGN_PEM_TYPE if args.pem_type == "cosign" else SIGSTORE_PEM_TYPE
    pair = generate_key_pair(Path(args.output), passphrase, pem_type=pem_type)
    out.result(
        {
            "private": str(pair.private_path),
            "public": str(pair.public_path),
            "encrypted": pair.encrypted,
        },
        f"Wrote {pair.private_path} ({'encrypted' if pair.encrypted else 'not encrypted'}) "
        f"and {pair.public_path}",
    )
    return 0


def _registry_reference(text: str) -> ImageReference:
    name = ImageName.parse(text)
    if name.transport is not Transport.DOCKER or name.reference is None:
        raise UsageError(
            f"{text}: signatures are kept in registries; name the image as docker://REF"
        )
    return name.reference


def _sign(args: argparse.Namespace, out: Output) -> int:
    ref = _registry_reference(args.name)
    from atoll.pipeline.keys import load_private_key, read_passphrase
    from atoll.pipeline.sigstore import sign_image

    passphrase = read_passphrase(Path(args.passphrase_file)) if args.passphrase_file else None
    key = load_private_key(Path(args.key), passphrase)
    result = sign_image(
        ref, key, system_context(args), identity=args.identity, refresh=args.refresh
    )
    out.result(
        result.to_json(),
        f"{'Refreshed' if args.refresh else 'Signed'} {', '.join(result.identities)} "
        f"({result.digest}); "
        f"{result.signatures} signature(s) in {result.attachment}",
    )
    return 0


def _verify(args: argparse.Namespace, out: Output) -> int:
    from atoll.pipeline.keys import load_public_key
    from atoll.pipeline.policy import enforce
    from atoll.pipeline.sigstore import verify_image

    ctx = system_context(args)
    if args.policy:
        name = ImageName.parse(args.name)
        admitted = enforce(Path(args.policy), name, ctx)
        out.result(
            {"image": str(name), "policy": args.policy, "admitted_by": admitted},
            f"{name}: admitted by {args.policy} ({admitted})",
        )
        return 0
    ref = _registry_reference(args.name)
    result = verify_image(ref, [load_public_key(Path(args.key))], ctx)
    out.result(
        result.to_json(),
        f"Verified {ref} ({result.digest}): signed as {result.identity}, "
        f"{result.verified} of {result.signatures} signature(s) verified",
    )
    return 0
