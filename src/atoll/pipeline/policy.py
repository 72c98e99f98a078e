"""The trust policy: which images may be pulled, in containers-policy.json(5) form.

The file atoll reads is the one podman and skopeo read::

    {
      "default": [REQUIREMENT, ...],                  # when no scope matches
      "transports": {
        "docker": {
          "registry.example.com/os/base:stable": [...], # one tag (or @digest)
          "registry.example.com/os/base": [...],         # one repository
          "registry.example.com/os": [...],              # a namespace
          "registry.example.com": [...],                 # a registry
          "*.example.com": [...],                        # registries by domain
          "": [...]                                      # any docker:// image
        }
      }
    }

The most specific scope wins, in the order drawn above; ``default`` applies
when none matches.  Every requirement of the chosen list must be met:

``{"type": "insecureAcceptAnything"}``
    anything goes.
``{"type": "reject"}``
    nothing goes.
``{"type": "sigstoreSigned", "keyPath": FILE | "keyData": BASE64, "signedIdentity": {...}}``
    a sigstore signature by that public key (see :mod:`atoll.pipeline.sigstore`;
    ``keyPaths`` or ``keyDatas``, lists, name several keys, any one of which will do)
    vouches for the manifest digest, and its docker-reference matches the image
    per ``signedIdentity`` (see :mod:`atoll.pipeline.identity`; default
    ``matchRepoDigestOrExact``).

``signedBy`` (GPG simple signing) is parsed and always refused: atoll cannot
check it.  Fulcio and Rekor fields are refused when the file is loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoll import configfile
from atoll.errors import (
    AtollError,
    BadSignatureError,
    PolicyError,
    PolicyRejectedError,
    SignedDigestMismatchError,
    SignedIdentityMismatchError,
    UnsignedImageError,
    from_oserror,
)
from atoll.oci.context import SystemContext
from atoll.oci.transports import ImageName, Transport
from atoll.pipeline.identity import IdentityKind, SignedIdentity
from atoll.strictjson import StrictJSONError, loads

if TYPE_CHECKING:
    # cryptography is imported only when a signature is checked: a policy
    # without sigstoreSigned works with the standard library alone.
    from cryptography.hazmat.primitives.asymmetric import ec

#: Where podman and skopeo look, in this order, when no file is named.
USER_POLICY = Path(".config/containers/policy.json")
SYSTEM_POLICY = Path("/etc/containers/policy.json")
#: The refusals of a signature check.
VERIFY_ERRORS = (
    UnsignedImageError,
    BadSignatureError,
    SignedDigestMismatchError,
    SignedIdentityMismatchError,
)


class RequirementType(StrEnum):
    INSECURE_ACCEPT_ANYTHING = "insecureAcceptAnything"
    REJECT = "reject"
    SIGSTORE_SIGNED = "sigstoreSigned"
    SIGNED_BY = "signedBy"


@dataclass(frozen=True)
class Requirement:
    type: RequirementType
    #: sigstoreSigned's keyPath or keyPaths, keyData or keyDatas (PEM bytes).
    key_paths: tuple[Path, ...] = ()
    key_datas: tuple[bytes, ...] = ()
    signed_identity: SignedIdentity = field(default_factory=SignedIdentity)
    #: Where it was written, for messages: ``FILE: $.transports.docker["x"][0]``.
    where: str = ""

    def public_keys(self) -> list[ec.EllipticCurvePublicKey]:
        """The keys a signature may be made with (any one will do, as in containers/image)."""
        from atoll.pipeline.keys import load_public_key, public_key_from_pem

        keys = [load_public_key(path) for path in self.key_paths]
        keys += [public_key_from_pem(data, f"{self.where}.keyData") for data in self.key_datas]
        return keys


@dataclass(frozen=True)
class Policy:
    default: tuple[Requirement, ...]
    #: Transport name -> scope -> requirements.
    transports: Mapping[str, Mapping[str, tuple[Requirement, ...]]]
    source: str = "policy.json"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: The scope that applied (``default`` when none matched).
    scope: str
    #: The requirement types of that scope, e.g. ``sigstoreSigned``.
    requirement: str
    reason: str
    #: Why it was refused, as the error a user would see.
    error: AtollError | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "scope": self.scope,
            "requirement": self.requirement,
            "reason": self.reason,
        }


# --- loading ----------------------------------------------------------------------------


def default_policy_path(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    # As podman: a user file that exists in any form is the one used (and, if
    # it is not a readable policy, refuses everything).
    if home and os.path.lexists(Path(home) / USER_POLICY):
        return Path(home) / USER_POLICY
    return SYSTEM_POLICY


def load_policy(path: Path) -> Policy:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(
            f"{path}: the trust policy file does not exist",
            hint="write one (see containers-policy.json(5)) or name another with --policy",
        ) from None
    except OSError as exc:
        # A policy that is there but cannot be read (a directory, no permission)
        # refuses every image: it must never read as "no policy".
        error = from_oserror(exc, f"reading the trust policy {path}")
        raise PolicyError(
            error.message,
            hint="make it a readable policy.json file; until then no image is admitted",
        ) from None
    return parse_policy(data, str(path))


class _Source:
    """The policy file being read: where an error about one of its paths is."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.lines = configfile.json_key_lines(data.decode("utf-8", "replace"))

    def at(self, path: str) -> str:
        """``FILE: line N: PATH``, the start of an error about the JSON *path*."""
        return configfile.where(self.name, self.lines, configfile.key_path(path)) + path


def parse_policy(data: bytes, name: str) -> Policy:
    try:
        doc = loads(data)
    except StrictJSONError as exc:
        raise PolicyError(
            f"{name}: {exc}", hint="fix the file; until then no image is admitted"
        ) from None
    source = _Source(name, data)
    _object(doc, source, "$", required=("default",), optional=("transports",))
    default = _requirements(doc["default"], source, "$.default")
    transports: dict[str, dict[str, tuple[Requirement, ...]]] = {}
    raw_transports = doc.get("transports", {})
    _object(raw_transports, source, "$.transports")
    for transport, scopes in raw_transports.items():
        where = f"$.transports.{transport}"
        _object(scopes, source, where)
        transports[transport] = {
            scope: _requirements(reqs, source, f"{where}[{json.dumps(scope)}]")
            for scope, reqs in scopes.items()
        }
        if transport == Transport.DOCKER:
            for scope in scopes:
                _check_docker_scope(scope, source, where)
    return Policy(default, transports, name)


def _requirements(value: Any, source: _Source, path: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(
            f"{source.at(path)}: expected a non-empty list of requirements",
            hint='e.g. [{"type": "reject"}]',
        )
    return tuple(_requirement(item, source, f"{path}[{i}]") for i, item in enumerate(value))


def _requirement(value: Any, source: _Source, path: str) -> Requirement:
    if not isinstance(value, dict) or "type" not in value:
        raise PolicyError(f'{source.at(path)}: expected an object with a "type"')
    try:
        kind = RequirementType(value["type"])
    except ValueError:
        known = ", ".join(t.value for t in RequirementType)
        raise PolicyError(
            f"{source.at(path + '.type')}: unknown requirement type {value['type']!r} "
            f"(known: {known})"
        ) from None
    where = source.at(path)
    if kind in (RequirementType.INSECURE_ACCEPT_ANYTHING, RequirementType.REJECT):
        _object(value, source, path, required=("type",))
        return Requirement(kind, where=where)
    if kind is RequirementType.SIGNED_BY:
        _object(
            value,
            source,
            path,
            required=("type", "keyType"),
            optional=("keyPath", "keyPaths", "keyData", "signedIdentity"),
        )
        return Requirement(kind, where=where)
    key_fields = ("keyPath", "keyPaths", "keyData", "keyDatas")
    _object(value, source, path, required=("type",), optional=(*key_fields, "signedIdentity"))
    given = [name for name in key_fields if name in value]
    if len(given) != 1:
        raise PolicyError(
            f"{source.at(path)}: sigstoreSigned needs exactly one of "
            "keyPath, keyPaths, keyData and keyDatas",
            hint="atoll does not support fulcio, pki or rekorPublicKey* requirements",
        )
    (name,) = given
    if name.endswith("s"):
        items = value[name]
        if not isinstance(items, list) or not items:
            raise PolicyError(f"{source.at(f'{path}.{name}')}: expected a non-empty list")
        texts = [_string(item, source, f"{path}.{name}[{i}]") for i, item in enumerate(items)]
    else:
        texts = [_string(value[name], source, f"{path}.{name}")]
    identity = _identity(value.get("signedIdentity"), source, f"{path}.signedIdentity")
    if name.startswith("keyPath"):
        for text in texts:
            if "\0" in text:
                # No file has such a name (reading it would fail with a ValueError, not a refusal).
                raise PolicyError(f"{source.at(f'{path}.{name}')}: {text!r} is not a file name")
        return Requirement(kind, tuple(Path(text) for text in texts), (), identity, where)
    try:
        datas = tuple(base64.b64decode(text, validate=True) for text in texts)
    # ValueError: a non-ASCII string is refused before it is decoded.
    except (binascii.Error, ValueError):
        raise PolicyError(f"{source.at(f'{path}.{name}')}: not valid base64") from None
    return Requirement(kind, (), datas, identity, where)


def _identity(value: Any, source: _Source, path: str) -> SignedIdentity:
    if value is None:
        return SignedIdentity()
    if not isinstance(value, dict) or "type" not in value:
        raise PolicyError(f'{source.at(path)}: expected an object with a "type"')
    try:
        kind = IdentityKind(value["type"])
    except ValueError:
        known = ", ".join(k.value for k in IdentityKind)
        raise PolicyError(
            f"{source.at(path + '.type')}: unknown signedIdentity type {value['type']!r} "
            f"(known: {known})"
        ) from None
    if kind is IdentityKind.EXACT_REFERENCE:
        _object(value, source, path, required=("type", "dockerReference"))
        ref = _string(value["dockerReference"], source, f"{path}.dockerReference")
        return SignedIdentity(kind, reference=ref)
    if kind is IdentityKind.EXACT_REPOSITORY:
        _object(value, source, path, required=("type", "dockerRepository"))
        repo = _string(value["dockerRepository"], source, f"{path}.dockerRepository")
        return SignedIdentity(kind, reference=repo)
    if kind is IdentityKind.REMAP_IDENTITY:
        _object(value, source, path, required=("type", "prefix", "signedPrefix"))
        return SignedIdentity(
            kind,
            prefix=_string(value["prefix"], source, f"{path}.prefix"),
            signed_prefix=_string(value["signedPrefix"], source, f"{path}.signedPrefix"),
        )
    _object(value, source, path, required=("type",))
    return SignedIdentity(kind)


def _object(
    value: Any,
    source: _Source,
    path: str,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] | None = None,
) -> None:
    """Check *value* is an object with the *required* keys and, if *optional* is
    given, no keys outside the two (containers/image refuses unknown fields too)."""
    if not isinstance(value, dict):
        raise PolicyError(f"{source.at(path)}: expected a JSON object")
    for key in required:
        if key not in value:
            raise PolicyError(f"{source.at(path)}: missing {key!r}")
    if optional is not None or required:
        allowed = set(required) | set(optional or ())
        for key in value:
            if key not in allowed:
                raise PolicyError(
                    f"{source.at(path)}: unknown field {key!r} "
                    f"(expected {', '.join(sorted(allowed))})"
                )


def _string(value: Any, source: _Source, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{source.at(path)}: expected a non-empty string")
    return value


def _check_docker_scope(scope: str, source: _Source, where: str) -> None:
    if scope == "":
        return
    path = f"{where}[{json.dumps(scope)}]"
    if scope != scope.strip() or "://" in scope or scope.endswith("/"):
        raise PolicyError(
            f"{source.at(path)}: invalid scope {scope!r}",
            hint="write REGISTRY, REGISTRY/NAMESPACE, REGISTRY/REPO[:TAG|@DIGEST] or *.DOMAIN",
        )
    if scope.startswith("*.") and "/" in scope:
        raise PolicyError(f"{source.at(path)}: a wildcard scope names registries only")


# --- deciding --------------------------------------------------------------------------


def docker_scopes(name: ImageName) -> list[str]:
    """The docker scopes that could apply to *name*, most specific first."""
    ref = name.reference
    assert ref is not None
    scopes: list[str] = []
    if ref.tag is not None:
        scopes.append(f"{ref.name}:{ref.tag}")
    if ref.digest is not None:
        scopes.append(f"{ref.name}@{ref.digest}")
    parts = ref.name.split("/")
    scopes.extend("/".join(parts[:n]) for n in range(len(parts), 0, -1))
    host = ref.registry.split(":")[0] if ref.registry.count(":") == 1 else ref.registry
    labels = host.split(".")
    scopes.extend("*." + ".".join(labels[n:]) for n in range(1, len(labels)))
    scopes.append("")
    return scopes


def requirements_for(policy: Policy, name: ImageName) -> tuple[str, tuple[Requirement, ...]]:
    """The scope that applies to *name* and its requirements."""
    scopes = policy.transports.get(name.transport.value, {})
    if name.transport is Transport.DOCKER:
        candidates = docker_scopes(name)
    else:
        candidates = [str(name).partition(":")[2], ""]
    for scope in candidates:
        if scope in scopes:
            return scope, scopes[scope]
    return "default", policy.default


def scope_of(policy: Policy, name: ImageName) -> tuple[str, str, tuple[Requirement, ...]]:
    """The scope that applies to *name* as messages name it (``default`` or
    ``transports.T['SCOPE']``), its requirement types (``+``-joined) and its requirements."""
    scope, requirements = requirements_for(policy, name)
    label = "default" if scope == "default" else f"transports.{name.transport.value}[{scope!r}]"
    kinds = "+".join(dict.fromkeys(r.type.value for r in requirements))
    return label, kinds, requirements


def refusal(policy: Policy, label: str, req: Requirement, error: AtollError) -> AtollError:
    """*error* (why *req* was not met), as the policy's refusal of the image."""
    message = f"policy {policy.source}: {label} requires {req.type.value}: {error.message}"
    return type(error)(message, hint=error.hint)


def check_unsigned(req: Requirement, name: ImageName) -> PolicyRejectedError | None:
    """The refusal of a requirement that is decided without signatures (all but
    sigstoreSigned): None for insecureAcceptAnything."""
    if req.type is RequirementType.REJECT:
        return PolicyRejectedError(
            f"{name} is rejected: the scope allows no images",
            hint="change the trust policy if this image should be allowed",
        )
    if req.type is RequirementType.SIGNED_BY:
        return PolicyRejectedError(
            f"{name}: signedBy (GPG simple signing) cannot be checked by atoll",
            hint="sign with sigstore keys and use sigstoreSigned",
        )
    return None


def admitted_reason(req: Requirement) -> str:
    """Why an image that met *req* was admitted."""
    if req.type is RequirementType.SIGSTORE_SIGNED:
        keys = [str(path) for path in req.key_paths] or ["keyData"]
        return f"signed with {' or '.join(keys)} ({req.signed_identity.kind.value})"
    return "insecureAcceptAnything admits every image"


def check_policy(policy: Policy, name: ImageName, ctx: SystemContext) -> Decision:
    """Decide whether *name* may be used, fetching and verifying signatures as needed.

    Errors reaching the registry propagate; a refusal is a Decision with ``allowed``
    False.
    """
    label, kinds, requirements = scope_of(policy, name)
    reasons: list[str] = []
    for req in requirements:
        error = _check(req, name, ctx)
        if error is not None:
            refused = refusal(policy, label, req, error)
            return Decision(False, label, kinds, error.message, refused)
        reasons.append(admitted_reason(req))
    return Decision(True, label, kinds, "; ".join(reasons))


def enforce(policy_path: Path | None, name: ImageName, ctx: SystemContext) -> str:
    """Load the policy (the podman/skopeo default when None) and admit *name* or raise.

    Returns the requirement type that admitted the image (``sigstoreSigned`` when
    a list mixes it with ``insecureAcceptAnything``).
    """
    policy = load_policy(policy_path or default_policy_path(ctx.environ))
    decision = check_policy(policy, name, ctx)
    if decision.error is not None:
        raise decision.error
    kinds = decision.requirement.split("+")
    for strongest in (RequirementType.SIGSTORE_SIGNED, RequirementType.INSECURE_ACCEPT_ANYTHING):
        if strongest.value in kinds:
            return strongest.value
    return kinds[0]


def _check(req: Requirement, name: ImageName, ctx: SystemContext) -> AtollError | None:
    if req.type is not RequirementType.SIGSTORE_SIGNED:
        return check_unsigned(req, name)
    if name.transport is not Transport.DOCKER or name.reference is None:
        return PolicyRejectedError(
            f"{name}: sigstore signatures are only read from registries (docker://)"
        )
    from atoll.pipeline.sigstore import verify_image

    ref = name.reference
    keys = req.public_keys()
    try:
        verify_image(
            ref, keys, ctx, matches=lambda signed: req.signed_identity.matches(ref, signed)
        )
    except VERIFY_ERRORS as exc:
        return exc
    return None
