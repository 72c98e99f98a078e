"""A client for the OCI distribution API (``/v2/``), as skopeo and podman speak it.

How a :class:`RegistryClient` talks to ``HOST[:PORT]``:

1. **Scheme.**  HTTPS with the system CAs plus certs.d.  If registries.conf
   marks the registry ``insecure`` or ``ctx.tls_verify`` is False: HTTPS
   without verification, then plain HTTP.  The first that answers ``/v2/``
   with 200 or 401 is kept for the life of the client.
2. **Authentication.**  The ``/v2/`` ping tells the scheme.  ``Basic``: the
   credentials are sent with every request.  ``Bearer``: a token is fetched
   from the realm (``GET realm?service=S&scope=repository:NAME:pull[,push]``,
   with Basic credentials when there are any, else anonymously), cached per
   scope set until shortly before ``expires_in``, and sent as
   ``Authorization: Bearer``.  A 401 on a request fetches a fresh token once,
   adding any scope the registry asked for, and retries.
3. **Retries.**  429, 500, 502, 503, 504 and broken connections are retried,
   ``ctx.retries`` attempts in all, waiting ``ctx.retry_delay`` doubling each
   time, or ``Retry-After`` seconds when the registry says (capped at
   :data:`MAX_RETRY_WAIT`).  Requests whose body is a stream are sent once.
4. **Blobs** are streamed in chunks and resumed with ``Range`` when a
   connection breaks (see :mod:`atoll.oci.blobstream`).
5. **Uploads** open a session, send the blob in one ``PUT`` or in ``PATCH``
   chunks, and are cancelled when they fail (see :mod:`atoll.oci.upload`).

Requests whose body is in memory (pings, tokens, manifests, mounts, tag lists)
go over :mod:`atoll.oci.wire` (HTTP/1.1 on a socket); uploads of streamed bodies and
blob downloads (which registries redirect to their storage) over httpx, which
is imported for the first of them: a copy that only mounts blobs never loads it
(see :mod:`atoll.oci.plainhttp`).  Both hand back the same response type and
transport errors, so everything above is one code for both.

Every error is an :mod:`atoll.errors` exception whose message is one line naming
the registry and repository.  Requests are logged at debug level.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, NoReturn

from atoll import strictjson
from atoll.closing import Closeable
from atoll.errors import (
    DigestMismatchError,
    ManifestError,
    NetworkError,
    RangesIgnoredError,
    RegistryError,
    UnsupportedError,
)
from atoll.logs import Logger
from atoll.oci import upload
from atoll.oci.api import (
    FetchedManifest,
    ManifestHead,
    delete_scope,
    pull_scope,
    push_scope,
)
from atoll.oci.auth import Challenge, TokenCache
from atoll.oci.context import SystemContext
from atoll.oci.digest import Digest, Verifier
from atoll.oci.httputil import (
    connection_error,
    content_range_start,
    digest_or_none,
    is_tls_error,
    list_field,
    manifest_head,
    media_type,
    next_link,
    pick_challenge,
    repository_of,
    retry_after,
    status_error,
)
from atoll.oci.manifest import ACCEPT_MANIFEST, MediaType
from atoll.oci.plainhttp import URL, PlainTransport, Response, TransportError
from atoll.oci.registries_conf import load_registries_conf, ssl_context
from atoll.oci.registryauth import RegistryAuth, read_token

if TYPE_CHECKING:
    # Imported where they are used: a copy that only mounts blobs reads none and
    # paces nothing.
    from atoll.oci.blobstream import BlobStream
    from atoll.oci.httpxwire import HttpxTransport
    from atoll.ratelimit import TokenBucket

log = Logger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The longest a ``Retry-After`` or a backoff makes a request wait, in seconds.
MAX_RETRY_WAIT = 60.0
#: Manifests larger than this are refused (containers/image has the same limit).
MAX_MANIFEST_SIZE = 4 << 20
#: Bytes read at once from a blob response.
READ_CHUNK_SIZE = 1 << 20
#: Blobs larger than this are uploaded in PATCH chunks of UPLOAD_CHUNK_SIZE.
CHUNKED_UPLOAD_THRESHOLD = 512 << 20
UPLOAD_CHUNK_SIZE = 32 << 20
CATALOG_SCOPE = "registry:catalog:*"
_MAX_PAGES = 10_000
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: Registries whose API lives on another host than the one in references.
_API_HOSTS = {"docker.io": "registry-1.docker.io"}
_DELETE_HINT = (
    "a Distribution registry allows deletes with REGISTRY_STORAGE_DELETE_ENABLED=true "
    "(storage: delete: enabled: true in its config)"
)

Body = bytes | Iterator[bytes] | None


class RegistryClient(Closeable):
    """One registry; safe to share between the threads of a copy."""

    def __init__(
        self,
        registry: str,
        ctx: SystemContext,
        *,
        token_cache: TokenCache | None = None,
        chunked_upload_threshold: int = CHUNKED_UPLOAD_THRESHOLD,
        upload_chunk_size: int = UPLOAD_CHUNK_SIZE,
        read_chunk_size: int = READ_CHUNK_SIZE,
        sleep: Callable[[float], None] = time.sleep,
        insecure: bool | None = None,
    ) -> None:
        """*insecure*, when given, replaces registries.conf's setting for *registry*
        (a mirror's own); ``ctx.tls_verify`` still overrides both."""
        self.registry = registry
        self.ctx = ctx
        self.chunked_upload_threshold = chunked_upload_threshold
        self.upload_chunk_size = max(1, upload_chunk_size)
        self.read_chunk_size = max(1, read_chunk_size)
        self.sleep = sleep
        #: Paces blob downloads to ``ctx.rate_limit`` (see :mod:`atoll.ratelimit`).
        self.rate_limiter: TokenBucket | None = None
        if ctx.rate_limit:
            from atoll.ratelimit import TokenBucket

            self.rate_limiter = TokenBucket(ctx.rate_limit, sleep=sleep)
        self.auth = RegistryAuth(registry, ctx, token_cache or TokenCache())
        self._conf = load_registries_conf(ctx)
        if ctx.tls_verify is not None:
            self.insecure = not ctx.tls_verify
        elif insecure is not None:
            self.insecure = insecure
        else:
            self.insecure = self._conf.is_insecure(registry)
        self._host = _API_HOSTS.get(registry, registry)
        self._ssl = ssl_context(registry, ctx, verify=not self.insecure)
        # Requests with bodies in memory go over atoll.oci.wire; streams and redirected
        # blob downloads over httpx, imported for the first of them (see plainhttp).
        self._plain = PlainTransport(self._ssl, ctx.timeout, ctx.user_agent)
        self._httpx: HttpxTransport | None = None
        # Reentrant: a ping sends its request under it.
        self._lock = threading.RLock()
        self._base: URL | None = None

    @property
    def _streams(self) -> HttpxTransport:
        """The transport of streamed bodies and redirected downloads, made for the first."""
        with self._lock:
            if self._httpx is None:
                from atoll.oci.httpxwire import HttpxTransport

                self._httpx = HttpxTransport(
                    self._ssl, self.ctx.timeout, max(10, 2 * self.ctx.parallel), self.ctx.user_agent
                )
            return self._httpx

    def close(self) -> None:
        if self._httpx is not None:
            self._httpx.close()
        self._plain.close()

    # --- the API ----------------------------------------------------------------------

    def ping(self, repository: str | None = None) -> URL:
        """Choose the scheme and learn the authentication scheme; return the ``/v2/`` URL.

        *repository* only serves to name what was being done in an error message.
        """
        with self._lock:
            if self._base is not None:
                return self._base
            if self._conf.is_blocked(self.registry):
                raise RegistryError(
                    f"{self.name(repository)}: the registry is blocked in registries.conf",
                    hint=f"see {', '.join(map(str, self._conf.sources))}",
                )
            schemes = ("https", "http") if self.insecure else ("https",)
            for scheme in schemes:
                url = URL(f"{scheme}://{self._host}/v2/")
                last = scheme == schemes[-1]
                try:
                    response = self._send("GET", url, {}, retry_transport=last)
                except TransportError as exc:
                    if last:
                        raise self.transport_error(exc, "connecting", repository) from None
                    log.debug("%s: %s failed (%s), trying plain HTTP", self.registry, url, exc)
                    continue
                if response.status_code in (200, 401):
                    self.auth.challenge = pick_challenge(response)
                    self._base = url
                    log.debug("%s: using %s, auth %s", self.registry, url, self.auth.scheme)
                    return url
                if last:
                    self.fail(response, "checking the registry API at /v2/", repository)
            raise AssertionError("unreachable")

    @property
    def base(self) -> str | None:
        """The ``/v2/`` URL in use, once a ping (or :meth:`assume_base`) chose it."""
        with self._lock:
            return str(self._base) if self._base is not None else None

    def assume_base(self, base: str) -> bool:
        """Skip the ping: send requests to *base*, a ``/v2/`` URL an earlier ping of
        this registry chose, and learn the authentication from the 401s they get.
        Refused (False) when *base* is not this registry's, or is plain HTTP for a
        registry that is no longer insecure."""
        try:
            wanted = URL(base)
            own = URL(f"{wanted.scheme}://{self._host}/v2/")
        except ValueError:
            return False
        if wanted.scheme != "https" and not (wanted.scheme == "http" and self.insecure):
            return False
        if (wanted.origin, wanted.path) != (own.origin, own.path):
            return False
        with self._lock:
            if self._base is None:
                self._base = wanted
        return True

    def forget_base(self, base: str) -> None:
        """Ping again before the next request, unless another thread already has
        replaced *base*."""
        with self._lock:
            if self._base is not None and str(self._base) == base:
                self._base = None
                self.auth.challenge = None

    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """The manifest for a tag or digest, checked against the digest it is known by:
        the reference's, else the ``Docker-Content-Digest`` the registry sent."""
        what = f"reading manifest {reference}"
        with closing(
            self._call(
                "GET",
                repository,
                f"manifests/{reference}",
                what,
                [pull_scope(repository)],
                headers={"Accept": ACCEPT_MANIFEST},
                stream=True,
            )
        ) as response:
            raw = self._read_limited(response, what, repository)
        where = f"{self.name(repository)}: manifest {reference}"
        wanted = digest_or_none(reference)
        source = "the reference"
        sent = response.headers.get("Docker-Content-Digest")
        if wanted is None and sent:
            wanted = digest_or_none(sent)
            source = "Docker-Content-Digest"
            if wanted is None:
                raise RegistryError(f"{where}: invalid Docker-Content-Digest {sent!r}")
        if wanted is not None and Digest.of(raw, wanted.algorithm) != wanted:
            raise DigestMismatchError(
                f"{where}: content does not match {wanted} given by {source}: "
                f"got {Digest.of(raw, wanted.algorithm)}"
            )
        try:
            parsed = strictjson.loads(raw)
        except strictjson.StrictJSONError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        if not isinstance(parsed, dict):
            raise ManifestError(f"{where}: not a JSON object")
        return FetchedManifest(raw, media_type(response.headers), Digest.of(raw))

    def head_manifest(self, repository: str, reference: str) -> ManifestHead:
        response = self._call(
            "HEAD",
            repository,
            f"manifests/{reference}",
            f"checking manifest {reference}",
            [pull_scope(repository)],
            headers={"Accept": ACCEPT_MANIFEST},
        )
        return manifest_head(response.headers, reference)

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> Digest:
        """Store a manifest under a tag or its digest; return its digest."""
        digest = Digest.of(raw)
        response = self._call(
            "PUT",
            repository,
            f"manifests/{reference}",
            f"writing manifest {reference}",
            [push_scope(repository)],
            headers={"Content-Type": media_type},
            content=raw,
            ok=(200, 201, 202),
        )
        stored = response.headers.get("Docker-Content-Digest", "")
        if stored.startswith("sha256:") and stored != str(digest):
            raise DigestMismatchError(
                f"{self.name(repository)}: the registry stored manifest {reference} as "
                f"{stored}, expected {digest}"
            )
        return digest

    def manifest_digest(self, repository: str, reference: str) -> Digest:
        """The digest *reference* (a tag or a digest) names in *repository*."""
        digest = digest_or_none(reference) or self.head_manifest(repository, reference).digest
        if digest is None:
            digest = self.get_manifest(repository, reference).digest
        return digest

    def delete_manifest(self, repository: str, reference: str) -> Digest:
        """Delete a manifest (a tag is resolved to its digest first); return the digest."""
        digest = self.manifest_digest(repository, reference)
        what = f"deleting manifest {reference}"
        response = self._call(
            "DELETE",
            repository,
            f"manifests/{digest}",
            what,
            [delete_scope(repository)],
            ok=(200, 202, 405),
        )
        if response.status_code == 405:
            raise UnsupportedError(
                f"{self.name(repository)}: {what}: registry does not allow deletes",
                hint=_DELETE_HINT,
            )
        return digest

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """Every tag of *repository*, following ``Link: rel="next"`` pages of *page_size*."""
        pages = self._pages(repository, "tags/list", page_size, "listing tags")
        return [str(tag) for page in pages for tag in list_field(page, "tags")]

    def check_login(self) -> None:
        """Ask ``/v2/`` with the credentials (a token for no scope, for Bearer
        registries); raise AuthenticationError if the registry refuses them."""
        base = self.ping()
        response = self._send_authorized("GET", base, [], {})
        if response.status_code != 200:
            self.fail(response, "logging in", None)

    def catalog(self, page_size: int | None = None) -> list[str]:
        """Every repository ``/v2/_catalog`` lists, following its pages."""
        pages = self._pages(None, "_catalog", page_size, "listing repositories")
        return [str(repo) for page in pages for repo in list_field(page, "repositories")]

    def referrers(self, repository: str, subject: Digest, artifact_type: str) -> bytes | None:
        """The OCI referrers API's index for *subject*, or None when the registry
        does not answer it (404: use the referrers tag scheme)."""
        with closing(
            self._call(
                "GET",
                repository,
                f"referrers/{subject}",
                f"listing referrers of {subject}",
                [pull_scope(repository)],
                params={"artifactType": artifact_type},
                headers={"Accept": MediaType.OCI_INDEX.value},
                stream=True,
                ok=(200, 404),
            )
        ) as response:
            if response.status_code == 404:
                return None
            return self._read_limited(response, "listing referrers", repository)

    def blob_exists(self, repository: str, digest: Digest) -> bool:
        response = self._call(
            "HEAD",
            repository,
            f"blobs/{digest}",
            f"checking blob {digest}",
            [pull_scope(repository)],
            ok=(200, 404),
        )
        return response.status_code == 200

    def open_blob(self, repository: str, digest: Digest, size: int | None = None) -> BlobStream:
        """Start reading a blob (NotFoundError now if it is absent); iterate for its chunks."""
        from atoll.oci.blobstream import BlobStream

        stream = BlobStream(self, repository, digest, size)
        stream.start()
        return stream

    def fetch_blob(self, repository: str, digest: Digest, size: int | None = None) -> bytes:
        """A whole (small) blob, verified against *digest* and *size*."""
        verifier = Verifier(digest, size, f"{self.name(repository)}: blob {digest}")
        parts: list[bytes] = []
        with self.open_blob(repository, digest, size) as stream:
            for chunk in stream:
                verifier.update(chunk)
                parts.append(chunk)
        verifier.verify()
        return b"".join(parts)

    def fetch_range(self, repository: str, digest: Digest, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of a blob, by a ``Range`` request.

        A connection that breaks is asked again for what is missing (up to the
        context's retries).  Raises :class:`RangesIgnoredError` when the
        registry answers with the whole blob (200; the body is not read) and
        RegistryError when it sends other bytes than asked.  The bytes are not
        verified here: the caller checks them against the layer's TOC."""
        what = f"reading bytes {start}-{start + length - 1} of blob {digest}"
        got = bytearray()
        failures = 0
        while len(got) < length:
            first = start + len(got)
            headers = {
                "Accept-Encoding": "identity",
                "Range": f"bytes={first}-{start + length - 1}",
            }
            response = self.blob_request(repository, digest, headers, what)
            try:
                if response.status_code == 200:
                    raise RangesIgnoredError(
                        f"{self.name(repository)}: {what}: the registry ignores Range "
                        "and sends whole blobs"
                    )
                if response.status_code != 206:
                    response.read()
                    self.fail(response, what, repository)
                sent = content_range_start(response.headers.get("Content-Range", ""))
                if sent != first:
                    raise RegistryError(
                        f"{self.name(repository)}: {what}: asked for bytes from {first}, "
                        f"the registry sent them from {sent}"
                    )
                for piece in response.iter_raw():
                    got += piece
                    failures = 0
                    if self.rate_limiter is not None:
                        self.rate_limiter.consume(len(piece))
                    if len(got) > length:
                        raise RegistryError(
                            f"{self.name(repository)}: {what}: the registry sent more "
                            "bytes than asked for"
                        )
            except TransportError as exc:
                failures += 1
                if failures >= max(1, self.ctx.retries):
                    raise self.transport_error(exc, what, repository) from None
                log.debug(
                    "%s: %s broke after %d bytes (%s)", self.name(repository), what, len(got), exc
                )
                self.sleep(self.backoff(failures - 1))
                continue
            finally:
                response.close()
            if len(got) < length:
                # A clean end of a short answer is not a broken connection: refuse it.
                raise RegistryError(
                    f"{self.name(repository)}: {what}: the registry sent {len(got)} bytes, "
                    f"not {length}"
                )
        return bytes(got)

    # --- uploads: the steps live in atoll.oci.upload ------------------------------------

    start_upload = upload.start_upload
    mount_blob = upload.mount_blob
    upload_blob = upload.upload_blob
    cancel_upload = upload.cancel_upload

    # --- for BlobStream -------------------------------------------------------------

    def blob_request(
        self, repository: str, digest: Digest, headers: dict[str, str], what: str
    ) -> Response:
        """GET a blob, following redirects; the caller reads and closes the response."""
        url = self._url(repository, f"blobs/{digest}", None)
        try:
            return self._send_authorized(
                "GET", url, [pull_scope(repository)], headers, stream=True, follow_redirects=True
            )
        except TransportError as exc:
            raise self.transport_error(exc, what, repository) from None

    def backoff(self, attempt: int) -> float:
        return float(min(MAX_RETRY_WAIT, self.ctx.retry_delay * (2**attempt)))

    def name(self, repository: str | None) -> str:
        return f"{self.registry}/{repository}" if repository else self.registry

    # --- requests ---------------------------------------------------------------------

    def _url(self, repository: str | None, path: str, params: dict[str, str] | None) -> URL:
        base = self.ping(repository)
        if repository is not None:
            if self._conf.is_blocked(f"{self.registry}/{repository}"):
                raise RegistryError(
                    f"{self.name(repository)}: the repository is blocked in registries.conf",
                    hint=f"see {', '.join(map(str, self._conf.sources))}",
                )
            path = f"{repository}/{path}"
        url = base.join(path)
        return url.copy_merge_params(params) if params else url

    def _call(
        self,
        method: str,
        repository: str | None,
        path: str,
        what: str,
        scopes: Sequence[str],
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
    ) -> Response:
        """One API request; any status outside *ok* raises the matching atoll error."""
        url = self._url(repository, path, params)
        try:
            response = self._send_authorized(
                method, url, scopes, headers or {}, content=content, stream=stream
            )
        except TransportError as exc:
            raise self.transport_error(exc, what, repository) from None
        self._expect(response, ok, what, repository)
        return response

    def _expect(
        self, response: Response, ok: tuple[int, ...], what: str, repository: str | None
    ) -> None:
        if response.status_code not in ok:
            try:
                response.read()
            finally:
                response.close()
            self.fail(response, what, repository)

    def _send_authorized(
        self,
        method: str,
        url: URL,
        scopes: Sequence[str],
        headers: dict[str, str],
        *,
        content: Body = None,
        stream: bool = False,
        follow_redirects: bool = False,
        retry: bool = True,
    ) -> Response:
        """Send with credentials; on 401 get fresh ones once and send again."""
        repository = repository_of(scopes)
        self.ping(repository)
        scopes = sorted(scopes)
        refreshed = False
        while True:
            auth = self._authorization(scopes, repository, (url.host, url.port))
            response = self._send(
                method,
                url,
                {**headers, **auth},
                content=content,
                stream=stream,
                follow_redirects=follow_redirects,
                retry_transport=retry,
                retry_status=retry,
            )
            if response.status_code != 401 or refreshed or not isinstance(content, bytes | None):
                return response
            challenge = pick_challenge(response)
            if challenge is None:
                return response
            # Refused Basic credentials stay refused; a token may only be stale.
            if challenge.scheme == "basic" and (auth or self.auth.credentials(repository) is None):
                return response
            response.close()
            refreshed = True
            scopes = self.auth.refresh(challenge, scopes, repository)
            log.debug("%s: 401 for %s %s; trying fresh credentials", self.registry, method, url)

    def _send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        *,
        content: Body = None,
        stream: bool = False,
        follow_redirects: bool = False,
        retry_transport: bool = True,
        retry_status: bool = True,
    ) -> Response:
        """Send, retrying 429/5xx and broken connections when that is safe."""
        attempts = max(1, self.ctx.retries)
        replayable = isinstance(content, bytes | None)
        for attempt in range(attempts):
            last = attempt == attempts - 1 or not replayable
            started = time.monotonic()
            try:
                if isinstance(content, bytes | None) and not follow_redirects:
                    response = self._plain.send(method, url, headers, content)
                else:
                    response = self._streams.send(
                        method, url, headers, content, follow_redirects=follow_redirects
                    )
            except TransportError as exc:
                # A request that never reached the server may always be sent again.
                if (
                    last
                    or not retry_transport
                    or is_tls_error(exc)
                    or (method not in _IDEMPOTENT and not exc.connecting)
                ):
                    raise
                delay = self.backoff(attempt)
                log.debug("%s %s failed (%s); retrying in %.2f s", method, url, exc, delay)
                self.sleep(delay)
                continue
            status = response.status_code
            elapsed = (time.monotonic() - started) * 1000
            log.debug("%s %s -> %d (%.0f ms)", method, url, status, elapsed)
            if status in RETRY_STATUSES and retry_status and not last:
                asked = retry_after(response, MAX_RETRY_WAIT)
                delay = self.backoff(attempt) if asked is None else asked
                response.close()
                log.debug("%s %s: HTTP %d; retrying in %.2f s", method, url, status, delay)
                self.sleep(delay)
                continue
            if not stream:
                try:
                    response.read()
                finally:
                    response.close()
            return response
        raise AssertionError("unreachable")

    def _read_limited(self, response: Response, what: str, repository: str) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > MAX_MANIFEST_SIZE:
                    raise ManifestError(
                        f"{self.name(repository)}: {what}: larger than {MAX_MANIFEST_SIZE} bytes"
                    )
                parts.append(chunk)
        except TransportError as exc:
            raise self.transport_error(exc, what, repository) from None
        return b"".join(parts)

    def _pages(
        self, repository: str | None, path: str, page_size: int | None, what: str
    ) -> Iterator[dict[str, object]]:
        scopes = [pull_scope(repository)] if repository else [CATALOG_SCOPE]
        params = {"n": str(page_size)} if page_size else None
        response = self._call("GET", repository, path, what, scopes, params=params)
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            try:
                page = response.json()
            except ValueError:
                page = None
            if not isinstance(page, dict):
                raise RegistryError(f"{self.name(repository)}: {what}: the reply is not JSON")
            yield page
            url = next_link(response)
            if url is None or str(url) in seen:
                return
            seen.add(str(url))
            try:
                response = self._send_authorized("GET", url, scopes, {})
            except TransportError as exc:
                raise self.transport_error(exc, what, repository) from None
            self._expect(response, (200,), what, repository)
        raise RegistryError(f"{self.name(repository)}: {what}: more than {_MAX_PAGES} pages")

    # --- authentication ---------------------------------------------------------------

    def _authorization(
        self, scopes: Sequence[str], repository: str | None, origin: tuple[str, int | None]
    ) -> dict[str, str]:
        """The ``Authorization`` header for a request to *origin* (host, port)."""
        base = self._base
        if base is None or origin != (base.host, base.port):
            # Never hand the registry's credentials to another host (e.g. blob storage).
            return {}
        return self.auth.header(scopes, repository, self._fetch_token)

    def _fetch_token(
        self, challenge: Challenge, scopes: Sequence[str], repository: str | None
    ) -> tuple[str, float | None]:
        name = self.name(repository)
        url, headers = self.auth.token_request(challenge, scopes, repository, name)
        what = f"getting a token from {url.host}"
        try:
            response = self._send("GET", url, headers)
        except TransportError as exc:
            raise self.transport_error(exc, what, repository) from None
        self._expect(response, (200,), what, repository)
        return read_token(response, name)

    # --- errors -----------------------------------------------------------------------

    def fail(self, response: Response, what: str, repository: str | None) -> NoReturn:
        """Raise the atoll error for an unexpected status."""
        creds = self.auth.credentials(repository) if response.status_code in (401, 403) else None
        raise status_error(response, self.name(repository), what, creds)

    def transport_error(
        self, exc: TransportError, what: str, repository: str | None
    ) -> NetworkError:
        return connection_error(exc, self.name(repository), what, self.ctx.timeout)
