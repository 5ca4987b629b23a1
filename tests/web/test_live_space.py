"""The whole web app end to end in real browsers (Debian's Chromium).

One story, in order, on one `townhall serve` process: a host signs up, creates a
space and goes live with a 440 Hz "voice"; a listener who never signs in hears
440 Hz; a second signed-in listener with an 880 Hz microphone asks to speak,
is approved and is heard by the first (440 + 880 Hz); reactions cross from one
listener to another; screenshots of every page are saved; the host ends the
space and the listener page switches to the replay, which plays from the start.

Each fake microphone is a separate Chromium process (the WAV is a launch flag).
Tests wait for conditions with bounded timeouts, never for fixed sleeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import (
    SCREENSHOTS,
    Spectrum,
    chromium,
    require_api,
    require_route,
    spectrum,
    write_voice_wav,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOST_HZ = 440.0
SPEAKER_HZ = 880.0
PASSWORD = "correct horse battery"
UI_TIMEOUT_MS = 20_000
AUDIO_TIMEOUT_S = 40.0


@dataclass
class Story:
    server: LiveServer
    host: Any  # BrowserContext with the 440 Hz microphone
    speaker: Any  # BrowserContext with the 880 Hz microphone
    guest: Any  # BrowserContext without a microphone, never signed in
    pages: dict[str, Any] = field(default_factory=dict)
    space_id: str = ""
    done: set[str] = field(default_factory=set)
    skipped: str = ""
    page_errors: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.server.url + path

    def need(self, step: str) -> None:
        if self.skipped:
            pytest.skip(self.skipped)
        if step not in self.done:
            pytest.fail(f"an earlier step did not complete: {step}")

    def require(self, check: Callable[..., None], *args: str) -> None:
        """Run a require_* probe; remember its skip reason for the later steps."""
        try:
            check(self.server.url, *args)
        except pytest.skip.Exception as skip:
            self.skipped = str(skip.msg)
            raise


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("web-story")
    host_wav = write_voice_wav(root / "host-440.wav", HOST_HZ)
    speaker_wav = write_voice_wav(root / "speaker-880.wav", SPEAKER_HZ)
    server = LiveServer(root / "data").start()
    try:
        with (
            sync_playwright() as playwright,
            chromium(playwright, root / "host-profile", host_wav) as host,
            chromium(playwright, root / "speaker-profile", speaker_wav) as speaker,
            chromium(playwright, root / "guest-profile") as guest,
        ):
            story = Story(server, host, speaker, guest)
            for context in (host, speaker, guest):
                context.set_default_timeout(UI_TIMEOUT_MS)
                # uncaught exceptions in any page of the story fail the test
                context.on("weberror", lambda error: story.page_errors.append(str(error.error)))
            yield story
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_page_errors(story: Story) -> Iterator[None]:
    yield
    errors, story.page_errors[:] = list(story.page_errors), []
    assert not errors, f"uncaught errors in the pages: {errors}"


def wait_until(
    check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def sign_up(page: Any, base_url: str, username: str, display_name: str) -> None:
    page.goto(base_url + "/signup")
    page.fill("#username", username)
    page.fill("#display_name", display_name)
    page.fill("#password", PASSWORD)
    page.click("#signup-form button[type=submit]")
    page.wait_for_url(base_url + "/")
    page.locator("#account strong").filter(has_text=display_name).wait_for()


def audio_time(page: Any, selector: str) -> float:
    return float(page.eval_on_selector(selector, "el => el.currentTime"))


def assert_time_advances(page: Any, selector: str, by_s: float = 1.5) -> float:
    start = wait_until(
        lambda: audio_time(page, selector) or None, AUDIO_TIMEOUT_S, f"{selector} to start playing"
    )
    wait_until(
        lambda: audio_time(page, selector) >= start + by_s,
        AUDIO_TIMEOUT_S,
        f"{selector} currentTime to advance past {start + by_s:.1f}s",
    )
    return float(start)


def wait_for_tones(page: Any, selector: str, tones: list[float]) -> Spectrum:
    seen: list[Spectrum] = []

    def hears_all() -> Spectrum | None:
        result = spectrum(page, selector)
        seen.append(result)
        return result if all(result.has_tone(hz) for hz in tones) else None

    found = wait_until(hears_all, AUDIO_TIMEOUT_S, f"tones {tones} in {selector}", interval_s=0)
    assert isinstance(found, Spectrum), seen[-3:]
    return found


def test_listener_hears_the_host_live(story: Story) -> None:
    story.require(
        require_api,
        "/api/accounts",
        "/api/sessions",
        "/api/spaces",
        "/api/spaces/{space_id}/join",
        "/api/spaces/{space_id}/speaker-token",
        "/api/spaces/{space_id}/webrtc/offer",
    )
    host = story.pages["host"] = story.host.new_page()
    sign_up(host, story.server.url, "hostess", "Ada Host")

    host.goto(story.url("/new"))
    host.fill("#title", "Town hall on tones")
    host.fill("#description", "A conversation between two pure tones.")
    host.click("#create-button")
    host.wait_for_url("**/host")
    story.space_id = host.url.rstrip("/").split("/")[-2]
    host.locator("#space-state[data-state=live]").wait_for()
    story.require(require_route, f"/spaces/{story.space_id}/live.m3u8")

    host.click("#golive-button")
    host.locator("#mic-status").filter(has_text="You are live").wait_for()
    host.locator(".seat[data-speaking]").first.wait_for()

    guest = story.pages["guest"] = story.guest.new_page()
    guest.goto(story.url(f"/spaces/{story.space_id}"))
    guest.locator("#space-title").filter(has_text="Town hall on tones").wait_for()
    guest.click("#play-button")
    guest.locator("#join-status").filter(has_text="listening live").wait_for()
    assert_time_advances(guest, "#player")
    heard = wait_for_tones(guest, "#player", [HOST_HZ])
    assert abs(heard.peak_hz() - HOST_HZ) <= 2 * heard.bin_hz, heard
    assert guest.locator("#latency").inner_text().endswith(" s")
    story.done.add("live")


def test_approved_listener_speaks_and_is_heard(story: Story) -> None:
    story.need("live")
    require_api(
        story.server.url,
        "/api/spaces/{space_id}/requests",
        "/api/spaces/{space_id}/requests/{account_id}/approve",
    )
    speaker = story.pages["speaker"] = story.speaker.new_page()
    sign_up(speaker, story.server.url, "bob_speaks", "Bob Speaker")
    speaker.goto(story.url(f"/spaces/{story.space_id}"))
    speaker.click("#play-button")
    speaker.locator("#join-status").filter(has_text="listening live").wait_for()
    speaker.click("#request-button")
    speaker.locator("#speak-status").filter(has_text="Request sent").wait_for()

    host = story.pages["host"]
    request = host.locator("#requests .request").filter(has_text="Bob Speaker")
    request.wait_for()
    request.get_by_role("button", name="Approve").click()

    speaker.locator("#speak-status").filter(has_text="microphone is live").wait_for(
        timeout=AUDIO_TIMEOUT_S * 1000
    )
    host.locator("#seats .seat").filter(has_text="Bob Speaker").wait_for()

    heard = wait_for_tones(story.pages["guest"], "#player", [HOST_HZ, SPEAKER_HZ])
    assert heard.has_tone(HOST_HZ) and heard.has_tone(SPEAKER_HZ), heard
    story.done.add("two speakers")


def test_reaction_reaches_another_listener(story: Story) -> None:
    story.need("live")
    require_api(story.server.url, "/api/spaces/{space_id}/reactions")
    sender = story.pages.get("speaker") or story.speaker.new_page()
    if sender.url != story.url(f"/spaces/{story.space_id}"):
        sender.goto(story.url(f"/spaces/{story.space_id}"))
    guest = story.pages["guest"]
    before = guest.locator(".reaction[data-emoji='🔥'] .count").inner_text() or "0"

    sender.click(".reaction[data-emoji='🔥']")
    sender.locator(".reaction[data-emoji='🔥'] .count").filter(has_text="1").wait_for()
    assert sender.locator("#reaction-status").inner_text() == ""

    # The guest sees it float up (from the state.json totals) within seconds.
    guest.locator(".float-emoji[data-emoji='🔥']").first.wait_for(state="attached", timeout=10_000)
    after = guest.locator(".reaction[data-emoji='🔥'] .count").inner_text()
    assert int(after) == int(before) + 1


def test_screenshots_of_every_page(story: Story) -> None:
    story.need("live")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    host = story.pages["host"]
    host.locator("#seats .seat").first.wait_for()
    host.screenshot(path=str(SCREENSHOTS / "host-console.png"), full_page=True)
    guest = story.pages["guest"]
    guest.locator("#speakers .seat").first.wait_for()
    guest.screenshot(path=str(SCREENSHOTS / "listener.png"), full_page=True)

    home = story.host.new_page()
    home.goto(story.url("/"))
    home.locator("#list-live .card").filter(has_text="Town hall on tones").wait_for()
    home.screenshot(path=str(SCREENSHOTS / "home.png"), full_page=True)
    home.goto(story.url("/new"))
    home.locator("#new-form").wait_for()
    home.screenshot(path=str(SCREENSHOTS / "new-space.png"), full_page=True)
    home.close()

    signin = story.guest.new_page()
    signin.goto(story.url("/signin"))
    signin.locator("#signin-form").wait_for()
    signin.screenshot(path=str(SCREENSHOTS / "signin.png"), full_page=True)
    signin.set_viewport_size({"width": 390, "height": 844})
    signin.goto(story.url(f"/spaces/{story.space_id}"))
    signin.locator("#speakers .seat").first.wait_for()
    signin.screenshot(path=str(SCREENSHOTS / "listener-phone.png"), full_page=True)
    # usable on a phone: nothing wider than the screen
    assert signin.evaluate("document.documentElement.scrollWidth") <= 390
    signin.close()
    for name in ("host-console", "listener", "home", "new-space", "signin", "listener-phone"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def test_join_refusal_is_explained_and_retried(story: Story) -> None:
    """Admission control (a later issue) answers 503 + retry_after_s (+ place in
    line): the page says so in its status region and retries by itself."""
    story.need("live")
    refused: list[str] = []

    def refuse_once(route: Any) -> None:
        if refused:
            route.continue_()
            return
        refused.append(route.request.url)
        route.fulfill(
            status=503,
            content_type="application/problem+json",
            headers={"Retry-After": "2"},
            body=json.dumps(
                {
                    "type": "https://townhall.invalid/problems/unavailable",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": "The space is full right now.",
                    "retry_after_s": 2,
                    "position": 7,
                }
            ),
        )

    page = story.guest.new_page()
    page.route("**/api/spaces/*/join", refuse_once)
    page.goto(story.url(f"/spaces/{story.space_id}"))
    page.click("#play-button")
    status = page.locator("#join-status")
    status.filter(has_text="You are number 7 in line.").wait_for()
    assert status.get_attribute("role") == "status"
    assert "The space is full right now." in status.inner_text()
    assert "Trying again in" in status.inner_text()
    status.filter(has_text="listening live").wait_for()
    assert len(refused) == 1
    assert_time_advances(page, "#player", by_s=0.5)
    page.close()


def test_host_moderates_a_speaker(story: Story) -> None:
    story.need("two speakers")
    host, speaker = story.pages["host"], story.pages["speaker"]
    seat = host.locator("#seats .seat").filter(has_text="Bob Speaker")

    # Keyboard: focus survives the seats' refresh from state.json, Enter acts.
    seat.get_by_role("button", name="Mute").focus()
    for _ in range(2):
        with host.expect_response(lambda r: r.url.endswith("/state.json")):
            pass
    assert host.evaluate("document.activeElement.textContent") == "Mute"
    host.keyboard.press("Enter")
    seat.locator(".seat-flag").filter(has_text="muted").wait_for()
    speaker.locator("#self-mute-button").filter(has_text="Unmute").wait_for()
    seat.get_by_role("button", name="Unmute").click()
    seat.get_by_role("button", name="Mute").wait_for()

    seat.get_by_role("button", name="Move to audience").click()
    seat.wait_for(state="detached")
    speaker.locator("#on-stage-controls").wait_for(state="hidden")
    speaker.locator("#join-status").filter(has_text="listening live").wait_for()

    host.fill("#invite-username", "bob_speaks")
    host.click("#invite-form button[type=submit]")
    host.locator("#invite-status").filter(has_text="can now speak").wait_for()
    join = speaker.locator("#request-button").filter(has_text="Join the stage")
    join.click()
    speaker.locator("#speak-status").filter(has_text="microphone is live").wait_for(
        timeout=AUDIO_TIMEOUT_S * 1000
    )
    seat.wait_for()

    seat.get_by_role("button", name="Remove and block").click()
    host.locator("#block-dialog").get_by_role("button", name="Remove and block").click()
    seat.wait_for(state="detached")
    host.locator("#console-status").filter(has_text="removed and blocked").wait_for()
    speaker.locator("#on-stage-controls").wait_for(state="hidden")


def test_end_switches_listeners_to_the_replay(story: Story) -> None:
    story.need("live")
    require_api(story.server.url, "/api/spaces/{space_id}/end")
    host = story.pages["host"]
    host.click("#end-button")
    host.locator("#end-dialog").get_by_role("button", name="Yes, end it").click()
    host.locator("#space-state[data-state=ended]").wait_for()

    guest = story.pages["guest"]
    guest.wait_for_url(f"**/spaces/{story.space_id}/replay", timeout=UI_TIMEOUT_MS)
    guest.locator("#replay-audio").wait_for(timeout=UI_TIMEOUT_MS)
    start = assert_time_advances(guest, "#replay-audio", by_s=1.0)
    assert start < 3.0, f"the replay should start at the beginning, started at {start:.1f}s"
    download = guest.locator("#download-link")
    assert download.get_attribute("href") == f"/spaces/{story.space_id}/recording.m4a"
    guest.screenshot(path=str(SCREENSHOTS / "replay.png"), full_page=True)

    replay = story.guest.new_page()
    replay.goto(story.url(f"/spaces/{story.space_id}/replay"))
    replay.locator("#space-title").filter(has_text="Town hall on tones").wait_for()
    replay.locator("#replay-audio").wait_for()
    duration = wait_until(
        lambda: replay.eval_on_selector("#replay-audio", "el => el.duration") or None,
        AUDIO_TIMEOUT_S,
        "the replay's duration",
    )
    assert duration > 3.0
    with httpx.stream(
        "GET", story.url(f"/spaces/{story.space_id}/recording.m4a"), timeout=10
    ) as got:
        assert got.status_code == 200
        assert got.headers["content-type"].startswith("audio/")
    replay.close()
