"""``atoll login`` / ``atoll logout`` against registries that need credentials."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from atoll.cli.main import main
from helpers.registry import RegistryView

pytestmark = pytest.mark.integration


@pytest.fixture(params=["auth_registry", "token_registry"])
def secured(request: pytest.FixtureRequest) -> RegistryView:
    view: RegistryView = request.getfixturevalue(request.param)
    return view


def login(monkeypatch: pytest.MonkeyPatch, reg: RegistryView, password: str, *extra: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert reg.username is not None
    return main(["login", "-u", reg.username, "--password-stdin", *extra, reg.host])


def test_login_checks_stores_and_logout_removes(
    secured: RegistryView,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = secured.new_repo("login")
    img = secured.push_test_image(repo, "v1")
    authfile = tmp_path / "auth.json"
    name = f"docker://{secured.host}/{repo}:v1"

    assert login(monkeypatch, secured, "wrong", "--authfile", str(authfile)) == 21
    err = capsys.readouterr().err
    assert "atoll: error:" in err
    # The user gave -u and a password, not --creds, and is logging in already.
    assert f"refused user {secured.username!r}" in err
    assert "--creds" not in err and "atoll login HOST" not in err
    assert not authfile.exists()

    assert secured.password is not None
    assert login(monkeypatch, secured, secured.password, "--authfile", str(authfile)) == 0
    assert "Login succeeded" in capsys.readouterr().out
    assert authfile.stat().st_mode & 0o777 == 0o600
    assert secured.host in json.loads(authfile.read_text())["auths"]

    assert main(["image", "inspect", "--json", "--authfile", str(authfile), name]) == 0
    assert json.loads(capsys.readouterr().out)["Digest"] == img.manifest_digest
    assert main(["login", "--get-login", "--authfile", str(authfile), secured.host]) == 0
    assert capsys.readouterr().out.strip() == secured.username

    assert main(["logout", "--authfile", str(authfile), secured.host]) == 0
    capsys.readouterr()
    assert main(["image", "inspect", "--authfile", str(authfile), name]) == 21
    assert main(["logout", "--authfile", str(authfile), secured.host]) == 2
    assert "not logged in" in capsys.readouterr().err
