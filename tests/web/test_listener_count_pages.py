"""The listener count on real listener pages in Chromium (issue 12): two pages
play, the server restarts under them and the count does not drop to 0, one
page closes and the count says so within 10 s."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import chromium, write_voice_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery"
UI_TIMEOUT_MS = 40_000
LEAVE_BOUND_S = 10.0


@pytest.fixture
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


def count(client: httpx.Client, space_id: str) -> int | None:
    """state.json's listener_count, or None while the server does not answer."""
    try:
        response = client.get(f"/spaces/{space_id}/state.json")
    except httpx.HTTPError:
        return None
    return int(response.json()["listener_count"]) if response.status_code == 200 else None


def wait_count(client: httpx.Client, space_id: str, want: int, within_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if count(client, space_id) == want:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"listener_count did not reach {want} within {within_s} s")


def test_count_is_who_listens_through_a_restart_and_a_leave(
    tmp_path: Path, playwright: Any
) -> None:
    server = LiveServer(tmp_path / "data").start()
    client = httpx.Client(base_url=server.url, timeout=10)
    bot: subprocess.Popen[bytes] | None = None
    try:
        client.post("/api/accounts", json={"username": "counthost", "password": PASSWORD})
        session = client.post(
            "/api/sessions", json={"username": "counthost", "password": PASSWORD}
        ).json()
        space = client.post(
            "/api/spaces",
            json={"title": "Who is here"},
            headers={"Authorization": f"Bearer {session['token']}"},
        ).json()
        sid = space["id"]
        wav = write_voice_wav(tmp_path / "host.wav", 440.0, seconds=3.0)
        bot = subprocess.Popen(
            [
                *(sys.executable, "-m", "townhall", "speak", str(wav), "--server", server.url),
                *("--space", sid, "--username", "counthost", "--password", PASSWORD),
                *("--loop", "--duration-s", "180"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        with chromium(playwright, tmp_path / "profile") as context:
            context.set_default_timeout(UI_TIMEOUT_MS)
            pages = []
            for _ in range(2):
                page = context.new_page()
                page.goto(f"{server.url}/spaces/{sid}")
                page.click("#play-button")
                pages.append(page)
            for page in pages:
                page.wait_for_function(
                    "() => document.querySelector('#player').currentTime > 1",
                    timeout=UI_TIMEOUT_MS,
                )
            wait_count(client, sid, 2, within_s=15)

            server.stop()
            server.start()
            # from the first answer on, the count is the two who still listen
            seen = []
            until = time.monotonic() + 12  # longer than a presence window
            while time.monotonic() < until:
                seen.append(count(client, sid))
                time.sleep(0.5)
            assert seen and all(c == 2 for c in seen), seen

            pages[1].close(run_before_unload=True)
            left_after_s = wait_count(client, sid, 1, within_s=LEAVE_BOUND_S)
            print(f"listener count dropped {left_after_s:.1f} s after the page closed")
            time.sleep(3)
            assert count(client, sid) == 1  # the one still listening stays counted
    finally:
        if bot is not None:
            bot.terminate()
            bot.wait(timeout=20)
        client.close()
        server.stop()
