"""What a registry client knows of who it is to one registry: the challenge the
registry answered ``/v2/`` with, the credentials for each repository (looked up
once) and the bearer tokens it was given.

:class:`RegistryAuth` makes the ``Authorization`` headers; fetching a token is
the client's (it owns the connections), from the request :meth:`token_request`
describes and the answer :func:`read_token` reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from atoll.errors import AuthenticationError
from atoll.logs import Logger
from atoll.oci.auth import Challenge, Credentials, TokenCache, find_credentials
from atoll.oci.context import SystemContext
from atoll.oci.plainhttp import URL, Response

log = Logger(__name__)

#: Fetches a token for (challenge, scopes, repository): the token and its lifetime.
TokenFetcher = Callable[[Challenge, Sequence[str], str | None], tuple[str, float | None]]


class RegistryAuth:
    """Credentials, the challenge and tokens for one registry; thread-safe."""

    def __init__(self, registry: str, ctx: SystemContext, tokens: TokenCache) -> None:
        self.registry = registry
        self.ctx = ctx
        self.tokens = tokens
        #: How the registry asked to be authenticated (None: not known yet, or anonymous).
        self.challenge: Challenge | None = None
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._credentials: dict[str, Credentials | None] = {}

    @property
    def scheme(self) -> str:
        return self.challenge.scheme if self.challenge else "anonymous"

    def credentials(self, repository: str | None) -> Credentials | None:
        key = repository or ""
        with self._lock:
            if key not in self._credentials:
                self._credentials[key] = find_credentials(self.registry, repository, self.ctx)
            return self._credentials[key]

    def header(
        self, scopes: Sequence[str], repository: str | None, fetch: TokenFetcher
    ) -> dict[str, str]:
        """The ``Authorization`` header the challenge asks for (a token for *scopes*,
        fetched with *fetch* unless one is cached), or none."""
        challenge = self.challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            creds = self.credentials(repository)
            return {"Authorization": creds.basic_header()} if creds else {}
        if challenge.scheme == "bearer":
            return {"Authorization": f"Bearer {self._token(challenge, scopes, repository, fetch)}"}
        return {}

    def refresh(
        self, challenge: Challenge, scopes: Sequence[str], repository: str | None
    ) -> list[str]:
        """After a 401 carrying *challenge*: use it from now on, drop the tokens that
        were refused; return the scopes to ask for (with those the challenge names)."""
        self.challenge = challenge
        if challenge.scheme != "bearer":
            return sorted(scopes)
        key = self._token_key(repository)
        self.tokens.invalidate(key, sorted(scopes))
        wider = sorted(set(scopes) | set(challenge.scopes))
        self.tokens.invalidate(key, wider)
        return wider

    def token_request(
        self, challenge: Challenge, scopes: Sequence[str], repository: str | None, name: str
    ) -> tuple[URL, dict[str, str]]:
        """The URL and headers of the request for a token (*name*: for messages)."""
        if not challenge.realm:
            raise AuthenticationError(f"{name}: the registry asks for a token but names no realm")
        creds = self.credentials(repository)
        params = [("service", challenge.service)] if challenge.service else []
        params.extend(("scope", scope) for scope in sorted(scopes))
        if creds:
            params.append(("account", creds.username))
        try:
            url = URL(challenge.realm).copy_add_params(params)
        except ValueError:
            raise AuthenticationError(f"{name}: invalid token realm {challenge.realm!r}") from None
        return url, {"Authorization": creds.basic_header()} if creds else {}

    def _token_key(self, repository: str | None) -> str:
        creds = self.credentials(repository)
        return f"{self.registry}|{creds.username if creds else ''}"

    def _token(
        self,
        challenge: Challenge,
        scopes: Sequence[str],
        repository: str | None,
        fetch: TokenFetcher,
    ) -> str:
        key = self._token_key(repository)
        token = self.tokens.get(key, scopes)
        if token is not None:
            return token
        # One fetch at a time, so parallel blob requests share one token.
        with self._token_lock:
            token = self.tokens.get(key, scopes)
            if token is None:
                token, expires_in = fetch(challenge, scopes, repository)
                self.tokens.put(key, scopes, token, expires_in)
                log.debug(
                    "%s: got a token for %s (expires in %s s)", self.registry, scopes, expires_in
                )
            return token


def read_token(response: Response, name: str) -> tuple[str, float | None]:
    """The token and its lifetime in seconds from a token server's 200 answer."""
    try:
        data = response.json()
        token = data.get("token") or data.get("access_token")
        expires_in = data.get("expires_in")
    except (ValueError, AttributeError):
        token, expires_in = None, None
    if not isinstance(token, str) or not token:
        raise AuthenticationError(f"{name}: the token server at {response.url.host} sent no token")
    return token, float(expires_in) if isinstance(expires_in, int | float) else None
