"""Registry credentials (containers-auth.json(5)), ``WWW-Authenticate`` challenges
and the bearer token cache.

Where credentials come from, first match wins::

    ctx.credentials ("user:password", --creds)
    ctx.authfile (--authfile)                          the only file read when given
    $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json
    $XDG_CONFIG_HOME/containers/auth.json              (default ~/.config)
    $DOCKER_CONFIG/config.json, else ~/.docker/config.json
    ~/.dockercfg

The first file with an entry for the registry wins.  A file looks like::

    {"auths": {"registry.example.com":           {"auth": "base64(user:password)"},
               "registry.example.com/team/app":  {"auth": "..."},
               "https://index.docker.io/v1/":    {"auth": "..."}}}

``~/.dockercfg`` is the same map without the ``auths`` wrapper.  Keys with a
scheme are the legacy Docker form: only their host counts.  For
``host/ns/repo`` the keys ``host/ns/repo``, ``host/ns`` and ``host`` are tried
in that order, so the most specific entry wins.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from atoll import strictjson
from atoll.errors import InvalidInputError
from atoll.fsutil import write_atomic
from atoll.oci.context import SystemContext
from atoll.oci.manifest import NO_ANNOTATIONS

DOCKER_IO = "docker.io"
_DOCKER_IO_ALIASES = ("index.docker.io", "registry-1.docker.io", "docker.io")
#: Seconds a token lives when the token server does not say.
DEFAULT_TOKEN_LIFETIME = 60.0


class Credentials(NamedTuple):
    """A user name and password for one registry."""

    username: str
    password: str
    #: Where they came from ("--creds" or a file path), for messages.
    source: str = "--creds"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def parse_credentials(text: str, source: str = "--creds") -> Credentials:
    """``user:password`` as given to ``--creds``."""
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise InvalidInputError(
            f"invalid credentials in {source}: expected USERNAME:PASSWORD",
        )
    return Credentials(username, password, source)


# --- auth.json ------------------------------------------------------------------


def auth_file_candidates(ctx: SystemContext) -> list[Path]:
    """The files searched for credentials, in order."""
    if ctx.authfile is not None:
        return [ctx.authfile]
    env = ctx.environ
    home = Path(env.get("HOME") or Path.home())
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    elif env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    files.append(config_home / "containers" / "auth.json")
    docker_config = env.get("DOCKER_CONFIG")
    files.append(
        Path(docker_config) / "config.json" if docker_config else home / ".docker" / "config.json"
    )
    files.append(home / ".dockercfg")
    return files


def login_file(ctx: SystemContext) -> Path:
    """Where ``atoll login`` writes: --authfile, $REGISTRY_AUTH_FILE, or the runtime auth.json."""
    if ctx.authfile is not None:
        return ctx.authfile
    env = ctx.environ
    if env.get("REGISTRY_AUTH_FILE"):
        return Path(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    config_home = Path(
        env.get("XDG_CONFIG_HOME") or Path(env.get("HOME") or Path.home()) / ".config"
    )
    return config_home / "containers" / "auth.json"


def normalize_key(key: str) -> str:
    """An auth file key as atoll compares it: legacy URL keys reduced to their host."""
    if key.startswith(("http://", "https://")):
        key = key.split("://", 1)[1].split("/", 1)[0]
    host, sep, rest = key.partition("/")
    if host in _DOCKER_IO_ALIASES:
        host = DOCKER_IO
    return host + sep + rest


def lookup_keys(registry: str, repository: str | None) -> list[str]:
    """Keys to try for a repository, most specific first."""
    host = normalize_key(registry)
    keys: list[str] = []
    if repository:
        parts = repository.split("/")
        keys.extend(f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1))
    keys.append(host)
    return keys


def read_auth_entries(path: Path) -> dict[str, Credentials]:
    """The entries of one auth file, by normalised key; {} if the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: cannot read credentials file: {exc}") from None
    if not text.strip():
        return {}
    try:
        data = strictjson.loads(text)
    except strictjson.StrictJSONError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    auths = data if path.name == ".dockercfg" else data.get("auths", {})
    if not isinstance(auths, dict):
        raise InvalidInputError(f"{path}: 'auths' must be an object")
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        creds = _decode_entry(entry, path, key)
        if creds is not None:
            out.setdefault(normalize_key(key), creds)
    return out


def _decode_entry(entry: Any, path: Path, key: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{path}: entry {key!r} must be an object")
    encoded = entry.get("auth")
    if not encoded:
        # Entries handled by credential helpers or identity tokens carry no "auth".
        return None
    if not isinstance(encoded, str):
        raise InvalidInputError(f"{path}: entry {key!r}: 'auth' must be a string")
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    # ValueError: a non-ASCII string is refused before it is decoded.
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInputError(
            f"{path}: entry {key!r}: 'auth' is not base64 of USERNAME:PASSWORD"
        ) from None
    return parse_credentials(decoded, str(path))


def find_credentials(
    registry: str, repository: str | None, ctx: SystemContext
) -> Credentials | None:
    """Credentials for *registry* (and *repository*), or None for anonymous access."""
    if ctx.credentials is not None:
        return parse_credentials(ctx.credentials)
    keys = lookup_keys(registry, repository)
    for path in auth_file_candidates(ctx):
        entries = read_auth_entries(path)
        for key in keys:
            if key in entries:
                return entries[key]
    return None


def write_login(
    registry: str, username: str, password: str, ctx: SystemContext, *, key: str | None = None
) -> Path:
    """Store credentials for *registry* (or the more specific *key*) and return the file.

    Other entries and unknown top-level fields are kept; the file is replaced
    atomically with mode 0600.
    """
    path = login_file(ctx)
    data = _load_for_update(path)
    auths = data.setdefault("auths", {})
    raw = f"{username}:{password}".encode()
    auths[normalize_key(key or registry)] = {"auth": base64.b64encode(raw).decode("ascii")}
    _store(path, data)
    return path


def remove_login(registry: str, ctx: SystemContext, *, key: str | None = None) -> bool:
    """Forget credentials for *registry*; True if there was an entry."""
    path = login_file(ctx)
    data = _load_for_update(path)
    auths = data.get("auths", {})
    wanted = normalize_key(key or registry)
    found = [k for k in auths if normalize_key(k) == wanted]
    for k in found:
        del auths[k]
    if found:
        _store(path, data)
    return bool(found)


def _load_for_update(path: Path) -> dict[str, Any]:
    read_auth_entries(path)  # validates, with the same messages
    try:
        data: dict[str, Any] = strictjson.loads(path.read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return {"auths": {}}
    if not isinstance(data.get("auths", {}), dict):
        raise InvalidInputError(f"{path}: 'auths' must be an object")
    return data


def _store(path: Path, data: Mapping[str, Any]) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent="\t") + "\n").encode(), mode=0o600)
    path.chmod(0o600)


# --- WWW-Authenticate -------------------------------------------------------------


class Challenge(NamedTuple):
    """One challenge of a ``WWW-Authenticate`` header; *scheme* is lower case."""

    scheme: str
    params: Mapping[str, str] = NO_ANNOTATIONS

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        scope = self.params.get("scope")
        return tuple(scope.split(" ")) if scope else ()


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Unquoted values should be tokens, but some servers send bare URLs: take up to "," or space.
# Compiled on first use (re caches them): an anonymous registry never needs them.
_PARAM = rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*'
_SCHEME = rf"\s*({_TOKEN})(?:\s+|$|(?=,))"


def parse_www_authenticate(headers: Iterable[str]) -> list[Challenge]:
    """Parse every challenge in the ``WWW-Authenticate`` header values.

    Quoted values may contain commas (``scope="repository:a:pull,push"``);
    one header may carry several challenges (``Basic realm="x", Bearer realm="y"``).
    """
    challenges: list[Challenge] = []
    for header in headers:
        pos = 0
        while pos < len(header):
            if header[pos] in " ,":
                pos += 1
                continue
            scheme_match = re.compile(_SCHEME).match(header, pos)
            if not scheme_match:
                break
            scheme = scheme_match.group(1).lower()
            pos = scheme_match.end()
            params: dict[str, str] = {}
            while pos < len(header):
                param = re.compile(_PARAM).match(header, pos)
                if not param:
                    break
                value = param.group(2)
                value = re.sub(r"\\(.)", r"\1", value) if value is not None else param.group(3)
                params[param.group(1).lower()] = value
                pos = param.end()
                if pos < len(header) and header[pos] == ",":
                    pos += 1
            challenges.append(Challenge(scheme, params))
    return challenges


# --- bearer tokens -----------------------------------------------------------------


class _CachedToken(NamedTuple):
    """A bearer token and when to stop using it."""

    token: str
    expires_at: float


class TokenCache:
    """Bearer tokens by (registry, set of scopes), until shortly before they expire.

    Safe to share between threads and between clients of the same registry.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, frozenset[str]], _CachedToken] = {}

    def get(self, registry: str, scopes: Iterable[str]) -> str | None:
        key = (registry, frozenset(scopes))
        with self._lock:
            cached = self._tokens.get(key)
            if cached is None:
                return None
            if self._clock() >= cached.expires_at:
                del self._tokens[key]
                return None
            return cached.token

    def put(
        self, registry: str, scopes: Iterable[str], token: str, expires_in: float | None
    ) -> None:
        lifetime = DEFAULT_TOKEN_LIFETIME if not expires_in or expires_in <= 0 else expires_in
        # Renew a little early so a token does not expire on its way to the registry.
        margin = min(10.0, lifetime * 0.1)
        entry = _CachedToken(token, self._clock() + lifetime - margin)
        with self._lock:
            self._tokens[(registry, frozenset(scopes))] = entry

    def invalidate(self, registry: str, scopes: Iterable[str], token: str | None = None) -> None:
        """Forget a token the registry refused (only if it is still *token*, when given)."""
        key = (registry, frozenset(scopes))
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and (token is None or cached.token == token):
                del self._tokens[key]
