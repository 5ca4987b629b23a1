"""The waiting room in Chromium: a full space shows "You are number N in line,
about ..." in a role=status with a progress bar, polls queue.json, and starts
playing by itself once a place frees (the listener's earlier click counts)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import chromium
from townhall.client.speak import publish
from townhall.media.signals import tone

pytestmark = pytest.mark.browser

UI_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("waiting")
    live = LiveServer(root / "data", extra_env={"TOWNHALL_MAX_LISTENERS": "1"}).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with (
        sync_playwright() as playwright,
        chromium(playwright, tmp_path_factory.mktemp("profile")) as context,
    ):
        yield context


@contextlib.contextmanager
def host_on_air(server: LiveServer, sid: str, session: str) -> Iterator[None]:
    """The host's bot speaker (real WebRTC) talking in ``sid`` until the block
    ends: the listener page only joins once the host is on the air."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        answer = client.post(
            f"/api/spaces/{sid}/speaker-token", headers={"Authorization": f"Bearer {session}"}
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()["token"]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(
            publish(server.url, sid, token, tone(440, 1.0, amplitude=0.3), loop=True, stop=stop)
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=server.url, timeout=5) as client:
            while time.monotonic() < deadline:
                state = client.get(f"/spaces/{sid}/state.json").json()
                if any(s["role"] == "host" and s["connected"] for s in state["speakers"]):
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"the host's bot never connected: {state}")
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)
        loop.close()


def live_space_with_session(server: LiveServer) -> tuple[str, str]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        creds = {"username": "hostq", "password": "correct horse 1"}
        assert client.post("/api/accounts", json=creds).status_code == 201
        token = client.post("/api/sessions", json=creds).json()["token"]
        space = client.post(
            "/api/spaces",
            json={"title": "Queue night"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert space.status_code == 201, space.text
        return str(space.json()["id"]), str(token)


def test_pure_queue_view(server: LiveServer, browser: Any) -> None:
    page = browser.new_page()
    page.goto(server.url + "/signin")

    def run(body: str) -> Any:
        return page.evaluate(
            f"async () => {{ const m = await import('/static/js/queue.js'); {body} }}"
        )

    view = run(
        "return m.queueView({number: 12400}, {admitting_through: 55, admit_rate_per_s: 100}, 20000);"
    )
    assert view["text"] == "You are number 12,345 in line, about 2 minutes."
    assert view["position"] == 12345 and view["turn"] is False
    assert abs(view["progress"] - (20000 - 12345) / 20000) < 1e-9
    assert run("return m.queueView({number: 5}, {admitting_through: 9}, 3).turn;") is True
    undrawn = run("return m.queueView({number: null}, {drawn: false}, null);")
    assert undrawn["text"].startswith("The space has not started yet.")
    assert run("return m.formatWait(20);") == "less than a minute"
    assert run("return m.formatWait(3900);") == "about 1 hour 5 minutes"
    assert run("return m.formatWait(null);") == "waiting for a place to free"
    page.close()


def test_pure_eta_model(server: LiveServer, browser: Any) -> None:
    """queue.js's ETA is policy/eta.py's, case for case (with and without
    the settled speed)."""
    from tests.policy.test_eta import CASES, SETTLED_CASES, SETTLING_CASES
    from townhall.policy.eta import eta_s

    cases = (
        [(*case[:4], None, False) for case in CASES]
        + [(*case[:5], False) for case in SETTLED_CASES]
        + [case[:6] for case in SETTLING_CASES]
    )
    page = browser.new_page()
    page.goto(server.url + "/signin")
    got = page.evaluate(
        """async (cases) => {
          const m = await import('/static/js/queue.js');
          return cases.map(([p, free, a, d, settled, settling]) => m.etaSeconds(p, {
            admit_rate_per_s: a, free_places: free, full_rate_per_s: d,
            settled_rate_per_s: settled, settling, interval_ms: 1000}));
        }""",
        [list(case) for case in cases],
    )
    for case, eta in zip(cases, got, strict=True):
        position, free, admit, full, settled, settling = case
        want = eta_s(
            position,
            free_places=free,
            admit_rate_per_s=admit,
            full_rate_per_s=full,
            lag_s=0.5 + 1.0,  # half an interval, one poll
            settled_rate_per_s=settled,
            settling=settling,
        )
        assert (eta is None) == (want is None), case
        assert eta is None or want is None or abs(eta - want) < 1e-9, case
    page.close()


def test_waiting_page_admits_and_plays(server: LiveServer, browser: Any) -> None:
    sid, session = live_space_with_session(server)
    with host_on_air(server, sid, session), httpx.Client(base_url=server.url, timeout=10) as client:
        holder = client.post(f"/api/spaces/{sid}/join")
        assert holder.status_code == 200
        page = browser.new_page()
        page.goto(f"{server.url}/spaces/{sid}")
        page.click("#play-button")
        status = page.locator("#join-status[role=status]")
        status.filter(has_text="You are number 1 in line").wait_for(timeout=UI_TIMEOUT_MS)
        assert page.locator("#queue-progress").is_visible()
        # the page reads queue.json (same bytes for everyone), not the join route, to follow the line
        with page.expect_response(lambda r: r.url.endswith(f"/spaces/{sid}/queue.json")):
            pass
        # the only listener leaves: the page is let in and plays without another click
        left = client.post(f"/api/spaces/{sid}/leave", json={"token": holder.json()["token"]})
        assert left.status_code == 204
        started = time.monotonic()
        status.filter(has_text="You are listening live").wait_for(timeout=UI_TIMEOUT_MS)
        admitted_s = time.monotonic() - started
        assert not page.locator("#queue-progress").is_visible()
        page.wait_for_function(
            "() => { const a = document.getElementById('player'); return a && !a.paused && a.currentTime > 0.5; }",
            timeout=UI_TIMEOUT_MS,
        )
        # the place is held now: a newcomer queues behind
        assert client.post(f"/api/spaces/{sid}/join").status_code == 202
        assert admitted_s < 10, admitted_s
        page.close()
