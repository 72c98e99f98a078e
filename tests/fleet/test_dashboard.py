"""The dashboard (/ui): its log-in and CSRF rules over HTTP, and an operator's
session in a real browser (Debian's chromium driven headless by Selenium)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.agent import wire
from atoll.agent.client import AgentClient
from atoll.agent.run import enroll
from atoll.agent.state import AgentState
from atoll.fleet.dashboard import COOKIE, csrf_token
from atoll.fleet.models import Role
from atoll.fleet.serve import create_token
from helpers.fleet import FleetServer, operator, report
from helpers.parts import missing

SQLITE = pytest.mark.parametrize("fleet_db", ["sqlite"], indirect=True)
DIGEST_OLD = "sha256:" + "1" * 64
DIGEST_NEW = "sha256:" + "2" * 64


def devices_in_a_rollout(server: FleetServer, tmp_path: Path, *names: str) -> list[AgentClient]:
    """A fleet that approves its devices, *names* enrolled in it (their signing
    clients), and rollout r1 of a new image, one device in its first batch."""
    with operator(server) as client:
        client.put("channels/stable", json={"image": "reg/os", "digest": DIGEST_OLD})
        fleet = {
            "selector": "site=berlin",
            "autoApprove": True,
            "template": {"os": {"channel": "stable"}},
        }
        assert client.put("fleets/berlin", json=fleet).is_success
        devices = []
        for name in names:
            token = client.post("enrollmenttokens", json={}).json()["token"]
            state = AgentState(tmp_path / name)
            assert enroll(state, server.url, token, name, {"site": "berlin"})["state"] == "approved"
            key = wire.load_private_key(state.key_path.read_bytes())
            devices.append(AgentClient(server.url, name, key))
        started = client.put(
            "rollouts/r1",
            json={
                "fleet": "berlin",
                "os": {"image": f"reg/os@{DIGEST_NEW}"},
                "batches": [{"count": 1}],
            },
        )
        assert started.status_code == 201, started.text
    return devices


def rollout_state(server: FleetServer) -> str:
    with operator(server) as client:
        return str(client.get("rollouts/r1").json()["state"])


@SQLITE
def test_log_in_cookie_and_csrf(fleet_server: FleetServer, tmp_path: Path) -> None:
    for device in devices_in_a_rollout(fleet_server, tmp_path, "d1"):
        device.close()
    viewer = create_token(fleet_server.db, "watcher", Role.VIEWER)
    with httpx.Client(base_url=f"{fleet_server.url}/ui", timeout=30) as browser:
        first = browser.get("/rollouts/r1")
        assert (first.status_code, first.headers["location"]) == (303, "/ui/login")
        wrong = browser.post("/login", data={"token": "atf_not-a-token"})
        assert wrong.status_code == 401
        assert "not known to this server" in wrong.text
        assert COOKIE not in browser.cookies
        crossed = browser.post(
            "/login", data={"token": fleet_server.token}, headers={"Origin": "http://evil.example"}
        )
        assert crossed.status_code == 403
        assert COOKIE not in browser.cookies

        answer = browser.post("/login", data={"token": fleet_server.token})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/ui" in cookie
        page = browser.get("/rollouts/r1")
        assert page.status_code == 200
        assert 'id="pause"' in page.text
        csrf = csrf_token(fleet_server.token)
        assert csrf in page.text

        # A POST without the session's CSRF token, or from another site, changes nothing.
        assert browser.post("/rollouts/r1/pause", data={"reason": "x"}).status_code == 403
        forged = browser.post("/rollouts/r1/pause", data={"csrf": csrf_token("atf_other")})
        assert forged.status_code == 403
        foreign = browser.post(
            "/rollouts/r1/pause", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        assert rollout_state(fleet_server) == "running"

        paused = browser.post("/rollouts/r1/pause", data={"csrf": csrf, "reason": "lunch"})
        assert (paused.status_code, paused.headers["location"]) == (303, "/ui/rollouts/r1")
        assert rollout_state(fleet_server) == "paused"
        again = browser.post("/rollouts/r1/pause", data={"csrf": csrf})
        assert again.status_code == 409
        assert "is paused, not running" in again.text
        assert browser.post("/rollouts/nope/resume", data={"csrf": csrf}).status_code == 404

        assert browser.post("/logout").status_code == 303
        assert browser.get("/").status_code == 303

        # A viewer sees the pages and cannot act.
        browser.post("/login", data={"token": viewer})
        assert browser.get("/events").status_code == 200
        refused = browser.post("/rollouts/r1/resume", data={"csrf": csrf_token(viewer)})
        assert refused.status_code == 403
        assert "is a viewer; this needs operator" in refused.text
    assert rollout_state(fleet_server) == "paused"
    with operator(fleet_server) as client:
        pauses = [e for e in client.get("events").json() if e["action"] == "pause"]
    assert [(e["actor"], e["detail"]["reason"]) for e in pauses] == [("operator:admin", "lunch")]


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Debian's chromium, headless, driven by its chromium-driver."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        missing("chromium is not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for argument in ("--headless=new", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium's sandbox refuses to run as root
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(driver)))
    browser.implicitly_wait(0)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.mark.browser
@SQLITE
def test_an_operator_session_in_chromium(
    fleet_server: FleetServer, tmp_path: Path, chromium: Any
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def until(check: Any) -> Any:
        """*check* once it holds; the pages reload themselves, so an element
        found just before a reload is looked for again."""
        ignored = (NoSuchElementException, StaleElementReferenceException)
        waiting = WebDriverWait(chromium, 30, poll_frequency=0.2, ignored_exceptions=ignored)
        return waiting.until(check)

    def text(element_id: str) -> str:
        return str(until(lambda b: b.find_element(By.ID, element_id).text))

    def do(action: Any) -> None:
        until(lambda b: action(b) or True)

    d1, d2 = devices_in_a_rollout(fleet_server, tmp_path, "d1", "d2")
    try:
        report(d1, DIGEST_OLD, health="unknown")
        report(d2, DIGEST_OLD)
        chromium.get(f"{fleet_server.url}/ui/devices")
        assert chromium.current_url.endswith("/ui/login")
        chromium.find_element(By.ID, "token").send_keys(fleet_server.token)
        chromium.find_element(By.ID, "login").click()
        until(lambda b: b.current_url.endswith("/ui/"))
        assert "berlin" in text("fleet-berlin")
        assert all(c["httpOnly"] for c in chromium.get_cookies() if c["name"] == COOKIE)

        do(lambda b: b.find_element(By.LINK_TEXT, "Devices").click())
        until(lambda b: b.current_url.endswith("/ui/devices"))

        def health(browser: Any) -> str:
            return str(browser.find_element(By.CSS_SELECTOR, "#device-d1 .health").text)

        assert until(health) == "unknown"
        # d1 boots the new image green; the page follows without a click.
        report(d1, DIGEST_NEW)
        until(lambda b: health(b).startswith("green"))
        assert "sha256:222222222222" in text("device-d1")

        chromium.get(f"{fleet_server.url}/ui/rollouts/r1")
        assert text("state") == "running"
        assert "succeeded" in text("member-d1")
        assert "updating" in text("member-d2")
        # While the reason field has the focus the page does not reload.
        do(lambda b: b.find_element(By.ID, "pause-reason").send_keys("the shop is open"))
        chromium.find_element(By.ID, "pause").click()
        until(lambda b: b.find_element(By.ID, "state").text == "paused")
        assert text("reason") == "the shop is open"
        shot = os.environ.get("FLEET_DASHBOARD_SCREENSHOT")
        if shot:
            chromium.save_screenshot(shot)
        assert rollout_state(fleet_server) == "paused"

        do(lambda b: b.find_element(By.LINK_TEXT, "Events").click())
        until(lambda b: b.current_url.endswith("/ui/events"))
        rows = text("events")
        assert "operator:admin pause Rollout r1" in rows
        assert "reason: the shop is open" in rows
    finally:
        d1.close()
        d2.close()
