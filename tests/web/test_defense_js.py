"""The listener page's proof-of-work solver (a Web Worker) against a server
under pressure, in the real browser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import chromium

pytestmark = pytest.mark.browser

# every join is "pressure"; no lane for clients that do not solve
PRESSED = {
    "TOWNHALL_CHALLENGE_JOINS_PER_S": "0.01",
    "TOWNHALL_CHALLENGE_START_BITS": "12",
    "TOWNHALL_CHALLENGE_MIN_BITS": "8",
    "TOWNHALL_CHALLENGE_UNSOLVED_JOINS_PER_S": "0",
}


@pytest.fixture(scope="module")
def pressed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("defense-js")
    server = LiveServer(root / "data", PRESSED).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            client.post(
                "/api/accounts", json={"username": "hostess", "password": "correct horse 1"}
            )
            session = client.post(
                "/api/sessions", json={"username": "hostess", "password": "correct horse 1"}
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


def test_worker_solves_and_the_join_goes_through(pressed: tuple[Any, str]) -> None:
    page, space = pressed
    result = page.evaluate(
        """async (space) => {
          await fetch(`/api/spaces/${space}/join`, {method: "POST"});  // pressure
          await new Promise((done) => setTimeout(done, 1300));  // one effort-control step
          const r = await fetch(`/api/spaces/${space}/join`, {method: "POST"});
          const problem = await r.json();
          const { ListenerPass } = await import('/static/js/join.js');
          const pass = new ListenerPass(space);
          const started = performance.now();
          const grant = await pass.join();
          pass.stop();
          return {status: r.status, bits: problem.bits, token: Boolean(grant.token),
                  mark: localStorage.getItem('townhall.seen') !== null,
                  ms: performance.now() - started};
        }""",
        space,
    )
    assert result["status"] == 429 and result["bits"] == 12
    assert result["token"] and result["mark"]
    assert result["ms"] < 10_000
