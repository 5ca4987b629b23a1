"""The replay page shows the stored transcript: timestamps that seek the
player, a search box that filters, and the downloads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import chromium
from townhall.captions.live import dump_lines
from townhall.captions.track import Line

pytestmark = pytest.mark.browser


@pytest.fixture
def ended_space(tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    server = LiveServer(tmp_path / "data").start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            password = "correct horse 1"
            client.post("/api/accounts", json={"username": "ada", "password": password})
            token = client.post(
                "/api/sessions", json={"username": "ada", "password": password}
            ).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            sid = client.post("/api/spaces", json={"title": "Library night"}, headers=auth).json()[
                "id"
            ]
            time.sleep(6)  # a few segments of (silent) program
            lines = [
                Line(1.0, 2.0, "Welcome to the town hall.", None),
                Line(3.0, 4.5, "Tonight we talk about the library.", None),
            ]
            directory = server.data_dir / "recordings" / sid
            assert client.post(f"/api/spaces/{sid}/end", headers=auth).status_code == 200
            (directory / "captions.jsonl").write_bytes(dump_lines(lines))
        yield server, sid
    finally:
        server.stop()


def test_transcript_seeks_and_filters(ended_space: tuple[LiveServer, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    server, sid = ended_space
    with sync_playwright() as playwright, chromium(playwright, tmp_path / "profile") as context:
        page = context.new_page()
        page.goto(f"{server.url}/spaces/{sid}/replay")
        page.wait_for_selector("#transcript li", timeout=30_000)
        stamps = page.locator("#transcript .stamp")
        assert stamps.count() == 2
        assert stamps.nth(1).inner_text() == "0:03"
        stamps.nth(1).click()
        page.wait_for_function(
            "() => Math.abs(document.getElementById('replay-audio').currentTime - 3) < 1.5",
            timeout=10_000,
        )
        page.fill("#transcript-search", "library")
        assert page.locator("#transcript li:not([hidden])").count() == 1
        assert "1 of 2 lines match" in page.inner_text("#replay-section")
        links = page.locator("#replay-section a[href$='transcript.txt']")
        text = httpx.get(server.url + links.get_attribute("href")).text
        assert (
            text == "[0:01] Welcome to the town hall.\n[0:03] Tonight we talk about the library.\n"
        )
