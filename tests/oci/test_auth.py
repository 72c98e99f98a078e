from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from atoll.errors import InvalidInputError
from atoll.oci.auth import (
    Challenge,
    TokenCache,
    auth_file_candidates,
    find_credentials,
    parse_credentials,
    parse_www_authenticate,
    remove_login,
    write_login,
)
from atoll.oci.context import SystemContext


def _ctx(**kwargs: object) -> SystemContext:
    return SystemContext(environ=dict(os.environ), **kwargs)  # type: ignore[arg-type]


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_search_order(tmp_path: Path, home: Path) -> None:
    assert auth_file_candidates(_ctx()) == [
        tmp_path / "run" / "containers" / "auth.json",
        home / ".config" / "containers" / "auth.json",
        home / ".docker" / "config.json",
        home / ".dockercfg",
    ]
    explicit = tmp_path / "mine.json"
    assert auth_file_candidates(_ctx(authfile=explicit)) == [explicit]


def test_registry_auth_file_replaces_the_runtime_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "env.json"))
    assert auth_file_candidates(_ctx())[:2] == [
        tmp_path / "env.json",
        home / ".config" / "containers" / "auth.json",
    ]


def test_first_file_with_an_entry_wins(tmp_path: Path, home: Path) -> None:
    _write_json(
        tmp_path / "run" / "containers" / "auth.json",
        {"auths": {"other.example": _auth("other", "x")}},
    )
    _write_json(
        home / ".config" / "containers" / "auth.json",
        {"auths": {"reg.example": _auth("config", "pw1")}},
    )
    _write_json(home / ".docker" / "config.json", {"auths": {"reg.example": _auth("docker", "x")}})
    creds = find_credentials("reg.example", "team/app", _ctx())
    assert creds is not None
    assert (creds.username, creds.password) == ("config", "pw1")
    assert creds.source == str(home / ".config" / "containers" / "auth.json")


def test_most_specific_key_wins(tmp_path: Path) -> None:
    _write_json(
        tmp_path / "run" / "containers" / "auth.json",
        {
            "auths": {
                "reg.example:5000": _auth("host", "a"),
                "reg.example:5000/team": _auth("team", "b"),
                "reg.example:5000/team/app": _auth("app", "c"),
            }
        },
    )
    ctx = _ctx()

    def user(repo: str | None) -> str | None:
        creds = find_credentials("reg.example:5000", repo, ctx)
        return creds.username if creds else None

    assert user("team/app") == "app"
    assert user("team/other") == "team"
    assert user("teamwork/app") == "host"
    assert user(None) == "host"
    assert find_credentials("reg.example", "team/app", ctx) is None, "the port is part of the key"


def test_docker_hub_legacy_key_and_dockercfg(home: Path) -> None:
    _write_json(home / ".dockercfg", {"https://index.docker.io/v1/": _auth("hub", "pw")})
    _write_json(
        home / ".docker" / "config.json",
        {"auths": {"https://legacy.example/v1/": _auth("legacy", "pw")}},
    )
    hub = find_credentials("docker.io", "library/busybox", _ctx())
    assert hub is not None and hub.username == "hub"
    legacy = find_credentials("legacy.example", "a/b", _ctx())
    assert legacy is not None and legacy.username == "legacy"


def test_explicit_authfile_is_the_only_file_read(tmp_path: Path, home: Path) -> None:
    _write_json(home / ".docker" / "config.json", {"auths": {"reg.example": _auth("docker", "x")}})
    empty = _write_json(tmp_path / "mine.json", {"auths": {}})
    assert find_credentials("reg.example", "a", _ctx(authfile=empty)) is None


def test_command_line_credentials_override_files(tmp_path: Path) -> None:
    _write_json(
        tmp_path / "run" / "containers" / "auth.json",
        {"auths": {"reg.example": _auth("file", "x")}},
    )
    creds = find_credentials("reg.example", "a", _ctx(credentials="cli:pa:ss"))
    assert creds is not None
    assert (creds.username, creds.password, creds.source) == ("cli", "pa:ss", "--creds")


def test_entries_without_auth_are_skipped(tmp_path: Path, home: Path) -> None:
    _write_json(
        tmp_path / "run" / "containers" / "auth.json",
        {"auths": {"reg.example": {"identitytoken": "abc"}}, "credHelpers": {}},
    )
    _write_json(home / ".docker" / "config.json", {"auths": {"reg.example": _auth("docker", "x")}})
    creds = find_credentials("reg.example", None, _ctx())
    assert creds is not None and creds.username == "docker"


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('{"auths": {', r"not valid JSON \(.*line 1"),
        # Two readers must not disagree on whose credentials these are.
        ('{"auths": {"r.example": {"auth": "eDp5"}, "r.example": {}}}', "duplicate key"),
        ('\ufeff{"auths": {}}', "byte-order mark"),
        ('{"auths": ' + "[" * 5000 + "]" * 5000 + "}", "exceeded max depth"),
        ('{"auths": []}', "'auths' must be an object"),
        ('{"auths": {"r.example": {"auth": "***"}}}', "not base64"),
        # Found by fuzzing: a non-ASCII character was a ValueError (exit 1).
        ('{"auths": {"r.example": {"auth": "dXNl\u00e9"}}}', "not base64"),
        (
            '{"auths": {"r.example": {"auth": "' + base64.b64encode(b"nocolon").decode() + '"}}}',
            "USERNAME:PASSWORD",
        ),
    ],
)
def test_malformed_auth_file_is_named(tmp_path: Path, content: str, complaint: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=complaint) as info:
        find_credentials("r.example", None, _ctx(authfile=path))
    assert str(path) in str(info.value)


def test_parse_credentials() -> None:
    creds = parse_credentials("user:pass:word")
    assert (creds.username, creds.password) == ("user", "pass:word")
    assert "pass" not in repr(creds)
    with pytest.raises(InvalidInputError, match="USERNAME:PASSWORD"):
        parse_credentials("useronly")


def test_write_login_keeps_other_entries_and_is_private(tmp_path: Path) -> None:
    authfile = _write_json(
        tmp_path / "auth.json", {"auths": {"keep.example": _auth("k", "k")}, "other": 1}
    )
    ctx = _ctx(authfile=authfile)
    assert write_login("reg.example:5000", "me", "pw", ctx) == authfile
    data = json.loads(authfile.read_text())
    assert data["other"] == 1
    assert set(data["auths"]) == {"keep.example", "reg.example:5000"}
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    creds = find_credentials("reg.example:5000", "x", ctx)
    assert creds is not None and (creds.username, creds.password) == ("me", "pw")
    assert remove_login("reg.example:5000", ctx)
    assert find_credentials("reg.example:5000", "x", ctx) is None
    assert not remove_login("reg.example:5000", ctx)


def test_write_login_creates_the_runtime_file(tmp_path: Path) -> None:
    path = write_login("reg.example", "me", "pw", _ctx())
    assert path == tmp_path / "run" / "containers" / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- WWW-Authenticate ---------------------------------------------------------------


def test_bearer_challenge_with_commas_in_quotes() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/app:pull,push",error="insufficient_scope"'
    )
    (challenge,) = parse_www_authenticate([header])
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.example/token"
    assert challenge.service == "registry.example"
    assert challenge.scopes == ("repository:team/app:pull,push",)
    assert challenge.params["error"] == "insufficient_scope"


def test_several_challenges_and_odd_spacing() -> None:
    challenges = parse_www_authenticate(
        ['Basic realm="Registry Realm" , Bearer realm=https://a.example/t,  service="s, t"']
    )
    assert challenges == [
        Challenge("basic", {"realm": "Registry Realm"}),
        Challenge("bearer", {"realm": "https://a.example/t", "service": "s, t"}),
    ]


def test_escaped_quotes_and_separate_headers() -> None:
    challenges = parse_www_authenticate(['Basic realm="say \\"hi\\""', "Negotiate"])
    assert challenges[0].realm == 'say "hi"'
    assert challenges[1] == Challenge("negotiate", {})


def test_multiple_scopes_are_space_separated() -> None:
    (challenge,) = parse_www_authenticate(
        ['Bearer realm="r",scope="repository:a:pull repository:b:pull"']
    )
    assert challenge.scopes == ("repository:a:pull", "repository:b:pull")


# --- token cache --------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_cache_expiry_and_scope_sets() -> None:
    clock = _Clock()
    cache = TokenCache(clock)
    cache.put("reg", ["repository:a:pull", "repository:b:pull"], "tok", 100)
    assert cache.get("reg", ["repository:b:pull", "repository:a:pull"]) == "tok"
    assert cache.get("reg", ["repository:a:pull"]) is None
    assert cache.get("other", ["repository:a:pull", "repository:b:pull"]) is None
    clock.now += 85
    assert cache.get("reg", ["repository:a:pull", "repository:b:pull"]) == "tok"
    clock.now += 10  # within the renewal margin before expiry
    assert cache.get("reg", ["repository:a:pull", "repository:b:pull"]) is None


def test_token_cache_default_lifetime_is_sixty_seconds() -> None:
    clock = _Clock()
    cache = TokenCache(clock)
    cache.put("reg", ["s"], "tok", None)
    clock.now += 50
    assert cache.get("reg", ["s"]) == "tok"
    clock.now += 10
    assert cache.get("reg", ["s"]) is None


def test_token_cache_invalidate_only_the_refused_token() -> None:
    cache = TokenCache()
    cache.put("reg", ["s"], "new", 300)
    cache.invalidate("reg", ["s"], "old")
    assert cache.get("reg", ["s"]) == "new"
    cache.invalidate("reg", ["s"], "new")
    assert cache.get("reg", ["s"]) is None


def test_token_cache_is_thread_safe() -> None:
    cache = TokenCache()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            # Each thread owns its scopes, so every outcome is deterministic;
            # all of them share (and race on) the one cache.
            for i in range(500):
                scope = [f"t{n}-s{i % 7}"]
                cache.put("reg", scope, f"t{n}", 300)
                assert cache.get("reg", scope) == f"t{n}"
                cache.invalidate("reg", scope)
                assert cache.get("reg", scope) is None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
