"""The listener page's presence beat follows the sample (join.js), in the real
browser against a real `townhall serve`: a page outside the sample does not
beat, and starts at once when state.json's band widens to include it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import chromium

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_and_space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("presence-js")
    server = LiveServer(root / "data").start()
    try:
        with httpx.Client(base_url=server.url) as client:
            client.post("/api/accounts", json={"username": "beats", "password": "correct horse 1"})
            session = client.post(
                "/api/sessions", json={"username": "beats", "password": "correct horse 1"}
            ).json()["token"]
            space = client.post(
                "/api/spaces", json={"title": "t"}, headers={"Authorization": f"Bearer {session}"}
            ).json()["id"]
        with sync_playwright() as playwright, chromium(playwright, root / "profile") as context:
            page = context.new_page()
            page.goto(server.url + "/signin")
            yield page, space
    finally:
        server.stop()


BEATS = """async (space) => {
  const { ListenerPass } = await import('/static/js/join.js');
  const sent = [];
  const realFetch = window.fetch;
  window.fetch = (url, init) => {
    if (String(url).endsWith('/presence')) sent.push(performance.now());
    return realFetch(url, init);
  };
  const pass = new ListenerPass(space);
  const grant = await pass.join();  // a real join answer (its presence_rank)
  const answered = { rank: grant.presence_rank, sample: grant.presence_sample };
  // put this page outside the band, as a sampled big room would
  pass.grant = { ...grant, presence_interval_s: 0.1, presence_sample: grant.presence_rank / 2 };
  pass.sample = null;
  pass.beatSoon();
  await new Promise((r) => setTimeout(r, 600));
  const outside = sent.length;
  pass.setSample(1);  // state.json: the room shrank, every page beats again
  await new Promise((r) => setTimeout(r, 50));
  const atOnce = sent.length;
  await new Promise((r) => setTimeout(r, 600));
  const inside = sent.length;
  pass.stop();
  window.fetch = realFetch;
  return { answered, outside, atOnce, inside };
}"""


def test_page_beats_only_inside_the_sample(page_and_space: tuple[Any, str]) -> None:
    page, space = page_and_space
    result = page.evaluate(BEATS, space)
    assert result["answered"]["sample"] == 1.0  # a small room: every page is in the sample
    assert 0 <= result["answered"]["rank"] < 1
    assert result["outside"] == 0  # outside the band: no beat in 0.6 s at 0.1 s intervals
    assert result["atOnce"] == 1  # let in: says so at once
    assert result["inside"] >= 4  # then every 0.1 s
