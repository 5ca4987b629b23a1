"""The host console keeps a muted microphone muted when it reconnects by
itself: one real `townhall serve`, the host page in Chromium with a fake
microphone, mute, the server stopped and started again; with no click the
page comes back, still muted (its own track silent: the level meter reads
0) and the server's seat says muted. (The takeover across nodes is
tests/scale/test_pages_takeover.py.)"""

from __future__ import annotations

import json
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
UI_TIMEOUT_MS = 30_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "data").start()
    try:
        yield live
    finally:
        live.stop()


def my_seat(client: httpx.Client, space_id: str, username: str) -> dict[str, Any]:
    state = client.get(f"/spaces/{space_id}/state.json").json()
    return next((s for s in state["speakers"] if s["username"] == username), {})


def until_seat(client: httpx.Client, space_id: str, username: str, **want: Any) -> None:
    deadline = time.monotonic() + 20
    while any((seat := my_seat(client, space_id, username)).get(k) != v for k, v in want.items()):
        assert time.monotonic() < deadline, f"seat {seat} is not {want}"
        time.sleep(0.3)


def test_a_muted_host_comes_back_muted(server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/api/accounts", json={"username": "mutedhost", "password": PASSWORD})
        session = client.post(
            "/api/sessions", json={"username": "mutedhost", "password": PASSWORD}
        ).json()
        headers = {"Authorization": f"Bearer {session['token']}"}
        space = client.post("/api/spaces", json={"title": "Muted"}, headers=headers).json()
        wav = write_voice_wav(tmp_path / "host.wav", 440.0)
        with (
            sync_playwright() as playwright,
            chromium(playwright, tmp_path / "profile", wav) as context,
        ):
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.new_page()
            page.goto(server.url + "/signin")
            document = {k: session[k] for k in ("token", "expires_at", "account")}
            page.evaluate("s => localStorage.setItem('townhall.session', s)", json.dumps(document))
            page.goto(f"{server.url}/spaces/{space['id']}/host")
            page.click("#golive-button")
            mic = page.locator("#mic-status")
            mic.filter(has_text="You are live").wait_for()
            until_seat(client, space["id"], "mutedhost", connected=True, muted=False)
            page.click("#mute-button")
            mic.filter(has_text="You are muted").wait_for()
            until_seat(client, space["id"], "mutedhost", connected=True, muted=True)

            server.stop()
            mic.filter(has_text="do not hear you").wait_for(timeout=40_000)
            server.start()
            # back by itself, still muted, and it says so
            mic.filter(has_text="Reconnected").wait_for(timeout=60_000)
            assert "You are muted" in mic.inner_text(), mic.inner_text()
            button = page.locator("#mute-button")
            assert button.get_attribute("aria-pressed") == "true"
            assert button.inner_text() == "Unmute"
            # the restarted server knows the mute (the page told it again)
            until_seat(client, space["id"], "mutedhost", connected=True, muted=True)
            # the local track sends silence: the meter (0 when the track is
            # disabled) stays at 0 over a second of looks
            levels = []
            for _ in range(10):
                levels.append(float(page.eval_on_selector("#my-level", "el => el.value")))
                time.sleep(0.1)
            assert levels == [0.0] * 10, levels
