"""The pipeline: signing images, verifying them, and the trust policy that decides."""

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

__all__ = [
    "COSIGN_PEM_TYPE",
    "SIGSTORE_PEM_TYPE",
    "Decision",
    "IdentityKind",
    "KeyPair",
    "Policy",
    "Requirement",
    "RequirementType",
    "SignResult",
    "SignedIdentity",
    "VerifyResult",
    "attachment_tag",
    "check_policy",
    "enforce",
    "generate_key_pair",
    "load_policy",
    "load_private_key",
    "load_public_key",
    "make_payload",
    "parse_policy",
    "read_passphrase",
    "read_signatures",
    "sign_image",
    "verify_image",
]
