"""The pure parts of the web app's JS modules, run in the real browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.web.browser import chromium

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("js-units")
    server = LiveServer(root / "data").start()
    try:
        with sync_playwright() as playwright, chromium(playwright, root / "profile") as context:
            page = context.new_page()
            page.goto(server.url + "/signin")
            yield page
    finally:
        server.stop()


def run(page: Any, module: str, body: str) -> Any:
    return page.evaluate(f"async () => {{ const m = await import('/static/js/{module}'); {body} }}")


def test_reaction_bursts_count_growth_minus_own_and_cap(page: Any) -> None:
    assert run(page, "reactions.js", "return m.reactionBursts(null, {'👏': 5});") == {
        "bursts": {},
        "pending": {},
    }
    result = run(
        page,
        "reactions.js",
        "return m.reactionBursts({'👏': 1, '🔥': 2}, {'👏': 4, '🔥': 2, '❤️': 1}, {'👏': 1});",
    )
    assert result == {"bursts": {"👏": 2, "❤️": 1}, "pending": {"👏": 0}}
    capped = run(page, "reactions.js", "return m.reactionBursts({}, {'👏': 500, '🔥': 9}, {}, 12);")
    assert sum(capped["bursts"].values()) == 12


def test_refusal_message_tells_place_in_line_and_wait(page: Any) -> None:
    queued = run(
        page,
        "join.js",
        "return m.refusalMessage(503, {detail: 'The space is full.', retry_after_s: 4.2, position: 17});",
    )
    assert queued["queued"] is True
    assert queued["retry_after_s"] == 4.2
    assert (
        queued["text"] == "The space is full. You are number 17 in line. Trying again in 5 seconds."
    )
    limited = run(page, "join.js", "return m.refusalMessage(429, {retry_after_s: 1});")
    assert limited["text"].endswith("Trying again in 1 second.")
    gone = run(page, "join.js", "return m.refusalMessage(404, {detail: 'No such space.'});")
    assert gone == {"text": "No such space.", "retry_after_s": None, "queued": False}


def test_state_poll_interval_follows_max_age(page: Any) -> None:
    assert run(page, "state.js", "return m.maxAgeMs('public, max-age=2');") == 2000
    assert run(page, "state.js", "return m.maxAgeMs('max-age=0');") == 1000
    assert run(page, "state.js", "return m.maxAgeMs('max-age=3600');") == 5000
    assert run(page, "state.js", "return m.maxAgeMs(null);") == 1000


def test_schedule_time_is_sent_as_utc_iso(page: Any) -> None:
    iso = run(page, "ui.js", "return m.localToUtcIso('2031-05-04T10:30');")
    offset_min = page.evaluate("() => new Date('2031-05-04T10:30').getTimezoneOffset()")
    assert iso.endswith(":00Z") and "." not in iso
    minutes = 10 * 60 + 30 + offset_min
    assert iso.startswith("2031-05-0") and f"T{minutes // 60 % 24:02d}:{minutes % 60:02d}" in iso
    assert run(page, "ui.js", "return m.localToUtcIso('');") is None


def test_api_errors_carry_problem_detail(page: Any) -> None:
    detail = run(
        page,
        "api.js",
        "try { await m.api('GET', '/api/no-such-endpoint'); return 'no error'; } "
        "catch (e) { return [e.name, e.status, m.describeError(e)]; }",
    )
    assert detail == ["ApiError", 404, "There is nothing at this address; check the URL."]


def test_signin_page_shows_missing_fields_accessibly(page: Any, tmp_path: Path) -> None:
    page.click("button[type=submit]")
    alert = page.locator("#form-error")
    assert alert.get_attribute("role") == "alert"
    assert alert.inner_text() == "Enter your username and password."
    assert page.evaluate("document.activeElement.id") == "username"
