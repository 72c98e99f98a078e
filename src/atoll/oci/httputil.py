"""Small pieces of HTTP the registry client needs: error bodies and the atoll
errors they become, ``Retry-After``, ``Link`` pages, ``Content-Range``, TLS
failures, and regrouping a byte stream."""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

from atoll.errors import (
    AtollError,
    AuthenticationError,
    NetworkError,
    NotFoundError,
    RegistryError,
    TLSError,
)
from atoll.oci.api import ManifestHead
from atoll.oci.auth import Challenge, Credentials, parse_www_authenticate
from atoll.oci.digest import Digest
from atoll.oci.plainhttp import URL, ConnectFailed, Response, TimedOut, TransportError

_AUTH_HINT = "log in with atoll login HOST, or pass --authfile FILE or --creds USER:PASSWORD"
_TLS_HINT = (
    "put the registry's CA certificate in ~/.config/containers/certs.d/HOST:PORT/ca.crt "
    "or /etc/containers/certs.d/HOST:PORT/, pass --cert-dir DIR, "
    "or (for a test registry) --tls-verify=false"
)
_PLAIN_HTTP_HINT = (
    "if the registry is meant to speak plain HTTP, mark it insecure in registries.conf "
    '([[registry]] location = "HOST:PORT" insecure = true) or pass --tls-verify=false'
)

#: Compiled on first use (re caches it): most answers have no Link header.
_LINK_NEXT = r'<([^>]*)>\s*;\s*(?:[^,]*;\s*)?rel="?next"?'

#: Words for the distribution spec's 404 error codes.
NOT_FOUND_CODES = {
    "MANIFEST_UNKNOWN": "manifest unknown",
    "BLOB_UNKNOWN": "blob unknown",
    "NAME_UNKNOWN": "repository name not known to registry",
    "BLOB_UPLOAD_UNKNOWN": "upload session unknown",
}


def registry_error(response: Response) -> tuple[str, str]:
    """The first (code, message) of a distribution error body, or ("", "")."""
    try:
        response.read()
        data = json.loads(response.content)
        first = data["errors"][0]
        code = str(first.get("code") or "")
        message = str(first.get("message") or "")
    except (
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        RuntimeError,
        TransportError,
    ):
        return "", ""
    return code, one_line(message)


def pick_challenge(response: Response) -> Challenge | None:
    """The challenge of a 401 that atoll answers: Bearer if offered, else Basic."""
    challenges = parse_www_authenticate(response.headers.get_list("WWW-Authenticate"))
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def next_link(response: Response) -> URL | None:
    """The ``Link: <URL>; rel="next"`` target, resolved against the request URL."""
    match = re.search(_LINK_NEXT, response.headers.get("Link", ""))
    return response.url.join(match.group(1)) if match else None


def media_type(headers: Mapping[str, str]) -> str | None:
    """The media type of ``Content-Type`` without its parameters; *headers* answers
    names in any case."""
    value = headers.get("content-type", "").split(";", 1)[0].strip()
    return value or None


def manifest_head(headers: Mapping[str, str], reference: str) -> ManifestHead:
    """What a HEAD of a manifest told: its digest (``Docker-Content-Digest``, else the
    reference's own), media type and size.  *headers* answers lower-case names."""
    length = headers.get("content-length", "")
    return ManifestHead(
        digest_or_none(headers.get("docker-content-digest", "")) or digest_or_none(reference),
        media_type(headers),
        int(length) if length.isdigit() else None,
    )


def digest_or_none(reference: str) -> Digest | None:
    """*reference* as a digest if it is one (else it is a tag)."""
    if ":" not in reference:
        return None
    try:
        return Digest.parse(reference)
    except AtollError:
        return None


def retry_after(response: Response, cap: float) -> float | None:
    """Seconds the server asks to wait (a number or an HTTP date), at most *cap*."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # an HTTP date is rare; the module costs start-up

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(cap, seconds))


def content_range_start(value: str) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", value)
    return int(match.group(1)) if match else None


def is_tls_error(exc: BaseException) -> bool:
    """Did *exc* come from TLS (certificate, handshake) rather than the network?"""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or text.startswith("[SSL")


def one_line(text: str) -> str:
    return " ".join(text.split())


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup a stream into pieces of exactly *size* bytes (the last may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer.extend(chunk)
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def repository_of(scopes: Sequence[str]) -> str | None:
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        if kind == "repository":
            return rest.rpartition(":")[0]
    return None


def list_field(page: dict[str, object], key: str) -> list[object]:
    value = page.get(key) or []
    if not isinstance(value, list):
        raise RegistryError(f"malformed reply: {key!r} is not a list")
    return value


def status_error(response: Response, name: str, what: str, creds: Credentials | None) -> AtollError:
    """The atoll error for an unexpected status of a request to the repository
    *name* (*what*: what it was for; *creds*: the credentials sent, if any)."""
    status = response.status_code
    code, message = registry_error(response)
    if status in (401, 403):
        if status == 403:
            text = "access denied"
        elif creds is not None:
            text = f"the credentials from {creds.source} were refused"
        else:
            text = "authentication required"
        if message and message.lower() not in text:
            text += f" ({message})"
        return AuthenticationError(f"{name}: {what}: {text} (HTTP {status})", hint=_AUTH_HINT)
    if status == 404:
        return NotFoundError(f"{name}: {what}: {NOT_FOUND_CODES.get(code, message or 'not found')}")
    detail = message or response.reason_phrase or "error"
    if code and code.lower().replace("_", " ") != detail.lower():
        detail = f"{code}: {detail}"
    return RegistryError(f"{name}: {what}: {detail} (HTTP {status})")


def connection_error(exc: TransportError, name: str, what: str, timeout: float) -> NetworkError:
    """The atoll error for a request to *name* that got no answer."""
    reason = one_line(str(exc)) or type(exc).__name__
    if "WRONG_VERSION_NUMBER" in reason:
        return TLSError(
            f"{name}: {what}: TLS connection failed: the server answers in plain HTTP",
            hint=_PLAIN_HTTP_HINT,
        )
    if is_tls_error(exc):
        return TLSError(f"{name}: {what}: TLS connection failed: {reason}", hint=_TLS_HINT)
    if isinstance(exc, TimedOut):
        return NetworkError(f"{name}: {what}: no answer within {timeout:g} s")
    if isinstance(exc, ConnectFailed):
        return NetworkError(f"{name}: {what}: cannot connect: {reason}")
    return NetworkError(f"{name}: {what}: the connection broke: {reason}")
