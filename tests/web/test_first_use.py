"""What a first use finds (issue 12), in Chromium: a phone-width page with a
long unbroken title, a scheduled space (countdown, calendar file, listeners
who pressed Listen start by themselves when the host goes live), the listener's
error cleared once audio is back, a co-host led to the console and not offered
End, and a host console that says honestly that nothing is sent while the
server restarts, then reconnects by itself."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import chromium, write_voice_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery"
UI_TIMEOUT_MS = 30_000


class Site:
    def __init__(self, server: LiveServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.client = httpx.Client(base_url=server.url, timeout=10)
        self.bots: list[subprocess.Popen[bytes]] = []

    def account(self, username: str) -> dict[str, Any]:
        self.client.post("/api/accounts", json={"username": username, "password": PASSWORD})
        session = self.client.post(
            "/api/sessions", json={"username": username, "password": PASSWORD}
        ).json()
        return {
            "session": session,
            "headers": {"Authorization": f"Bearer {session['token']}"},
            "username": username,
        }

    def space(self, who: dict[str, Any], **body: Any) -> dict[str, Any]:
        response = self.client.post("/api/spaces", json=body, headers=who["headers"])
        assert response.status_code == 201, response.text
        return dict(response.json())

    def speak(self, who: dict[str, Any], space_id: str, hz: float = 440.0) -> None:
        wav = write_voice_wav(self.root / f"bot-{hz:.0f}.wav", hz, seconds=3.0)
        self.bots.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "townhall",
                    "speak",
                    str(wav),
                    "--server",
                    self.server.url,
                    "--space",
                    space_id,
                    "--username",
                    who["username"],
                    "--password",
                    PASSWORD,
                    "--loop",
                    "--duration-s",
                    "120",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
        )

    def close(self) -> None:
        for bot in self.bots:
            bot.terminate()
            bot.wait(timeout=20)
        self.client.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("first-use")
    # the product's default, which tests/conftest.py turns off for the other tests
    server = LiveServer(
        root / "data", extra_env={"TOWNHALL_PROGRAM_WAITS_FOR_HOST": "true"}
    ).start()
    site = Site(server, root)
    try:
        yield site
    finally:
        site.close()
        server.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(site: Site, playwright: Any) -> Iterator[Any]:
    with chromium(playwright, site.root / "guest") as context:
        context.set_default_timeout(UI_TIMEOUT_MS)
        yield context


def sign_in_page(page: Any, site: Site, who: dict[str, Any]) -> None:
    """Put the session where the pages keep it (localStorage)."""
    import json

    page.goto(site.server.url + "/signin")
    page.evaluate(
        "s => localStorage.setItem('townhall.session', s)",
        json.dumps(
            {
                "token": who["session"]["token"],
                "expires_at": who["session"]["expires_at"],
                "account": who["session"]["account"],
            }
        ),
    )


def playing(page: Any, by_s: float = 1.0) -> None:
    page.wait_for_function(
        f"() => document.querySelector('#player').currentTime > {by_s}", timeout=UI_TIMEOUT_MS
    )


def test_long_unbroken_title_fits_a_phone(site: Site, browser: Any) -> None:
    host = site.account("phonehost")
    space = site.space(host, title="W" * 120, description="x" * 900)
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{site.server.url}/spaces/{space['id']}")
    page.locator("#space-title").filter(has_text="WWWW").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.close()


def test_scheduled_space_counts_down_and_starts_by_itself(site: Site, browser: Any) -> None:
    host = site.account("schedhost")
    when = (datetime.now(UTC) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    space = site.space(host, title="Later tonight", scheduled_for=when)
    page = browser.new_page()
    page.goto(f"{site.server.url}/spaces/{space['id']}")
    countdown = page.locator("#countdown")
    countdown.filter(has_text="Starts in 29 min").wait_for()
    first = countdown.inner_text()
    page.wait_for_function(
        "t => document.querySelector('#countdown').textContent !== t", arg=first, timeout=5000
    )  # live: it ticks
    ics = page.locator("#ics-link")
    assert ics.is_visible()
    assert httpx.get(site.server.url + ics.get_attribute("href")).status_code == 200
    button = page.locator("#play-button")
    assert "when it starts" in button.inner_text()
    button.click()
    page.locator("#join-status").filter(has_text="starts here by itself").wait_for()
    time.sleep(1.5)  # nothing tries to play before the start
    assert page.evaluate("document.querySelector('#player').currentTime") == 0
    started = site.client.post(f"/api/spaces/{space['id']}/start", json={}, headers=host["headers"])
    assert started.status_code == 200, started.text
    page.locator("#join-status").filter(has_text="Waiting for the host").wait_for()
    site.speak(host, space["id"])
    page.locator("#join-status").filter(has_text="listening live").wait_for(timeout=40_000)
    playing(page)
    assert page.locator("#countdown").is_hidden()
    page.close()


def test_listener_error_clears_once_audio_is_back(site: Site, browser: Any) -> None:
    host = site.account("blipHost".lower())
    space = site.space(host, title="Blips")
    site.speak(host, space["id"], 523.0)
    page = browser.new_page()
    page.goto(f"{site.server.url}/spaces/{space['id']}")
    page.click("#play-button")
    status = page.locator("#join-status")
    status.filter(has_text="listening live").wait_for(timeout=40_000)
    playing(page)

    # the network goes away for the media: hls.js gives up, the page says so
    def media(url: str) -> bool:
        return any(part in url for part in ("/live.m3u8", "/part/", "/seg/", "/init"))

    page.route(media, lambda route: route.abort())
    status.filter(has_text="retrying").wait_for(timeout=60_000)
    assert status.get_attribute("data-kind") == "error"
    page.unroute(media)
    status.filter(has_text="listening live").wait_for(timeout=60_000)
    assert status.get_attribute("data-kind") == "ok"
    page.close()


def test_cohost_is_led_to_the_console_and_not_offered_end(site: Site, browser: Any) -> None:
    host = site.account("mainhost")
    cohost = site.account("helper_cohost")
    space = site.space(host, title="With a co-host")
    invited = site.client.post(
        f"/api/spaces/{space['id']}/invites",
        json={"username": "helper_cohost", "role": "cohost"},
        headers=host["headers"],
    )
    assert invited.status_code in (200, 201), invited.text
    page = browser.new_page()
    sign_in_page(page, site, cohost)
    page.goto(f"{site.server.url}/spaces/{space['id']}")
    link = page.locator("#console-link")
    link.wait_for(state="visible")
    link.click()
    page.wait_for_url("**/host")
    page.locator("#space-state[data-state=live]").wait_for()
    assert page.locator("#end-section").is_hidden()
    assert page.locator("#start-button").is_hidden()
    page.evaluate("localStorage.clear()")
    page.close()


def test_host_console_is_honest_across_a_server_restart(
    site: Site, playwright: Any, tmp_path: Path
) -> None:
    host = site.account("restarthost")
    space = site.space(host, title="Through a restart")
    wav = write_voice_wav(tmp_path / "host.wav", 440.0)
    with chromium(playwright, tmp_path / "host-profile", wav) as context:
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        sign_in_page(page, site, host)
        page.goto(f"{site.server.url}/spaces/{space['id']}/host")
        page.click("#golive-button")
        mic = page.locator("#mic-status")
        mic.filter(has_text="You are live").wait_for()
        site.server.stop()
        # while the server is gone the page does not claim to be live
        mic.filter(has_text="do not hear you").wait_for(timeout=40_000)
        assert "You are live" not in mic.inner_text()
        site.server.start()
        # back by itself, without pressing Go live
        mic.filter(has_text="You are live").wait_for(timeout=60_000)
        assert page.locator("#golive-button").is_hidden()
        state = site.client.get(f"/spaces/{space['id']}/state.json").json()
        seat = next(s for s in state["speakers"] if s["username"] == "restarthost")
        deadline = time.monotonic() + 20
        while not seat["connected"] and time.monotonic() < deadline:
            time.sleep(0.5)
            state = site.client.get(f"/spaces/{space['id']}/state.json").json()
            seat = next(s for s in state["speakers"] if s["username"] == "restarthost")
        assert seat["connected"]
