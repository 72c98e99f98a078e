"""The pipeline: signing images, verifying them, and the trust policy that decides.

Names are imported on first use: signing needs ``cryptography``, and devices
that run ``atoll upgrade`` with the standard library only import
:mod:`atoll.pipeline.trust`, which needs it only when a policy asks for
signatures.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atoll.pipeline.identity import IdentityKind, SignedIdentity
    from atoll.pipeline.keys import (
        COSIGN_PEM_TYPE,
        SIGSTORE_PEM_TYPE,
        KeyPair,
        generate_key_pair,
        load_private_key,
        load_public_key,
        read_passphrase,
    )
    from atoll.pipeline.policy import (
        Decision,
        Policy,
        Requirement,
        RequirementType,
        check_policy,
        enforce,
        load_policy,
        parse_policy,
    )
    from atoll.pipeline.sigstore import (
        SignResult,
        VerifyResult,
        attachment_tag,
        make_payload,
        read_signatures,
        sign_image,
        verify_image,
    )
    from atoll.pipeline.trust import check_image

_MODULE_OF = {
    "IdentityKind": "identity",
    "SignedIdentity": "identity",
    "COSIGN_PEM_TYPE": "keys",
    "SIGSTORE_PEM_TYPE": "keys",
    "KeyPair": "keys",
    "generate_key_pair": "keys",
    "load_private_key": "keys",
    "load_public_key": "keys",
    "read_passphrase": "keys",
    "Decision": "policy",
    "Policy": "policy",
    "Requirement": "policy",
    "RequirementType": "policy",
    "check_policy": "policy",
    "enforce": "policy",
    "load_policy": "policy",
    "parse_policy": "policy",
    "SignResult": "sigstore",
    "VerifyResult": "sigstore",
    "attachment_tag": "sigstore",
    "make_payload": "sigstore",
    "read_signatures": "sigstore",
    "sign_image": "sigstore",
    "verify_image": "sigstore",
    "check_image": "trust",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [  # noqa: RUF022 - grouped by module, as _MODULE_OF
    "IdentityKind",
    "SignedIdentity",
    "COSIGN_PEM_TYPE",
    "SIGSTORE_PEM_TYPE",
    "KeyPair",
    "generate_key_pair",
    "load_private_key",
    "load_public_key",
    "read_passphrase",
    "Decision",
    "Policy",
    "Requirement",
    "RequirementType",
    "check_policy",
    "enforce",
    "load_policy",
    "parse_policy",
    "SignResult",
    "VerifyResult",
    "attachment_tag",
    "make_payload",
    "read_signatures",
    "sign_image",
    "verify_image",
    "check_image",
]
