"""Issue 11's takeover from the host's page: three `townhall serve` nodes
behind nginx (deploy/nginx-nodes.conf, the machine's PostgreSQL and Redis),
the host console in Debian's Chromium with a fake microphone playing a tone,
a listener reading LL-HLS through nginx and decoding it. kill -9 of the node
that runs the room: with no action on the page, the page notices the loss,
re-offers through nginx until the new owner answers, the tone is back for
the listener within 5 s, and the page's status line says it reconnected.
A listener brought on stage comes back the same way (her page says so, the
new owner's seat says she is connected). Prints where the time went."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api, LiveServer
from tests.scale.test_bus_nodes import live_edge, until_tone
from tests.scale.test_three_nodes_nginx import (
    holder,
    lease_changes,
    owner_port,
    player_hears_tone,
    three_nodes,  # noqa: F401 (the fixture)
)
from tests.test_end_to_end import TONE_HZ
from tests.web.browser import BASE_ARGS, CHROMIUM, write_voice_wav
from townhall.media.signals import tone, write_wav

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.browser,
]

BACK_WITHIN_S = 5.0  # issue 11: the tone is back for listeners within 5 s
UI_TIMEOUT_MS = 30_000

# Every text #mic-status shows, with the wall-clock time it appeared.
_STATUS_LOG_JS = """
(id) => {
  const el = document.getElementById(id);
  const log = [[Date.now(), el.textContent]];
  window.__statusLogs = {...window.__statusLogs, [id]: log};
  new MutationObserver(() => log.push([Date.now(), el.textContent]))
    .observe(el, {childList: true, characterData: true, subtree: true});
}
"""


@contextlib.asynccontextmanager
async def host_browser(profile: Path, mic_wav: Path) -> AsyncIterator[Any]:
    """Debian's Chromium (Playwright's async API: this test runs in an event
    loop) whose fake microphone plays ``mic_wav`` in a loop."""
    from playwright.async_api import async_playwright

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --test installs it)")
    args = [
        *BASE_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
    ]
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=args,
            ignore_default_args=["--mute-audio"],
        )
        try:
            await context.grant_permissions(["microphone"])
            context.set_default_timeout(UI_TIMEOUT_MS)
            yield context
        finally:
            await context.close()


async def status_log(page: Any, element_id: str) -> list[tuple[float, str]]:
    log = await page.evaluate("(id) => window.__statusLogs[id]", element_id)
    return [(at_ms / 1000.0, text) for at_ms, text in log]


async def sign_in(http: httpx.AsyncClient, context: Any, url: str, username: str) -> Any:
    """A new account, signed in in a new page of ``context``: (page, account id, headers)."""
    account_id, _ = await Api(http).account(username)
    session = await http.post(
        "/api/sessions", json={"username": username, "password": Api.PASSWORD}
    )
    assert session.status_code == 200, session.text
    page = await context.new_page()
    await page.goto(url + "/signin")
    document = {k: session.json()[k] for k in ("token", "expires_at", "account")}
    await page.evaluate(
        "(doc) => localStorage.setItem('townhall.session', doc)", json.dumps(document)
    )
    return page, account_id, {"Authorization": f"Bearer {session.json()['token']}"}


async def seat(node: LiveServer, space_id: str, account_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=node.url, timeout=5) as direct:
        state = (await direct.get(f"/spaces/{space_id}/state.json")).json()
    return next((s for s in state["speakers"] if s["account_id"] == account_id), {})


async def until_seat(node: LiveServer, space_id: str, account_id: str, **want: Any) -> None:
    deadline = time.monotonic() + 15
    while (got := await seat(node, space_id, account_id)) and any(
        got.get(k) != v for k, v in want.items()
    ):
        assert time.monotonic() < deadline, f"seat {got} is not {want} on {node.url}"
        await asyncio.sleep(0.3)
    assert got, f"no seat for {account_id} on {node.url}"


async def test_host_and_speaker_pages_follow_the_room_to_its_new_node(
    three_nodes: tuple[list[LiveServer], str],  # noqa: F811 (the fixture)
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    nodes, url = three_nodes
    host_wav = write_voice_wav(tmp_path / "host-tone.wav", TONE_HZ)
    speaker_wav = tmp_path / "speaker-silence.wav"
    write_wav(speaker_wav, tone(TONE_HZ, 2.0, amplitude=0.0))
    errors: list[str] = []
    async with (
        httpx.AsyncClient(base_url=url, timeout=20) as http,
        host_browser(tmp_path / "host-profile", host_wav) as host_context,
        host_browser(tmp_path / "speaker-profile", speaker_wav) as speaker_context,
    ):
        host, host_id, headers = await sign_in(http, host_context, url, "pagehost")
        speaker, speaker_id, _ = await sign_in(http, speaker_context, url, "pagespeaker")
        space_id = (await Api(http).space(headers, title="Pages follow the room"))["id"]
        offers: list[tuple[float, int]] = []  # (monotonic time, status) of each offer answered
        for page in (host, speaker):
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "response",
                lambda r: (
                    offers.append((time.monotonic(), r.status))
                    if "/webrtc/offer" in r.url
                    else None
                ),
            )
        await host.goto(f"{url}/spaces/{space_id}/host")
        await host.locator("#space-state[data-state=live]").wait_for()
        await host.evaluate(_STATUS_LOG_JS, "mic-status")
        await host.click("#golive-button")
        await host.locator("#mic-status").filter(has_text="You are live").wait_for()
        await until_tone(http, space_id, 30)  # a listener hears the host through nginx
        # a listener asks to speak, is approved and goes live (her microphone is
        # silent: what the listener hears is the host's tone)
        await speaker.goto(f"{url}/spaces/{space_id}")
        await speaker.click("#request-button")
        await speaker.locator("#speak-status").filter(has_text="Request sent").wait_for()
        approved = await http.post(
            f"/api/spaces/{space_id}/requests/{speaker_id}/approve", headers=headers
        )
        assert approved.status_code == 200, approved.text
        await speaker.locator("#speak-status").filter(has_text="microphone is live").wait_for()
        await speaker.evaluate(_STATUS_LOG_JS, "speak-status")

        port = await owner_port(redis_prefix, space_id)
        owner = next(n for n in nodes if n.port == port)
        await until_seat(owner, space_id, speaker_id, connected=True)
        lease = await holder(redis_prefix, space_id)
        async with httpx.AsyncClient(base_url=owner.url, timeout=5) as direct:
            edge = await live_edge(direct, space_id)  # no part past this is heard yet
        killed_wall, killed_at = time.time(), time.monotonic()
        owner.stop(signal.SIGKILL)
        taken = asyncio.create_task(lease_changes(redis_prefix, space_id, lease))
        try:
            back_at = await player_hears_tone(http, space_id, 25, after=edge)
            taken_at = await asyncio.wait_for(taken, 5)
        finally:
            taken.cancel()
        # no click: each page says by itself that it is back
        await host.locator("#mic-status").filter(has_text="Reconnected").wait_for(timeout=10_000)
        await (
            speaker.locator("#speak-status").filter(has_text="Reconnected").wait_for(timeout=10_000)
        )
        print(
            f"after kill -9: lease taken {taken_at - killed_at:.2f} s, "
            f"host's tone back for a player through nginx {back_at - killed_at:.2f} s"
        )
        logs = {}
        for name, page, element_id in (
            ("host", host, "mic-status"),
            ("speaker", speaker, "speak-status"),
        ):
            logs[name] = await status_log(page, element_id)
            for at, text in logs[name]:
                print(f"  {name} page {at - killed_wall:+.2f} s: {text}")
        after = [(at - killed_at, status) for at, status in offers]
        print("  offers answered: " + ", ".join(f"{t:+.2f} s {s}" for t, s in after))

        said = [text for at, text in logs["host"] if at >= killed_wall]
        back_wall = next(
            at for at, text in logs["host"] if at >= killed_wall and "Reconnected" in text
        )
        # the tone heard is the reconnected microphone's, not parts the dead node left
        assert back_at >= killed_at + (back_wall - killed_wall) - 0.1, logs
        assert any("Reconnecting to the room" in text for text in said), logs
        assert "Reconnected" in said[-1] and "You are live" in said[-1], logs
        assert await host.locator("#golive-button").is_hidden()
        assert back_at - killed_at <= BACK_WITHIN_S, logs
        new_port = await owner_port(redis_prefix, space_id)
        assert new_port != port and new_port in {n.port for n in nodes}
        new_owner = next(n for n in nodes if n.port == new_port)
        # the speaker came back too, and the new owner has both seats connected
        said = [text for at, text in logs["speaker"] if at >= killed_wall]
        assert any("Reconnecting to the room" in text for text in said), logs
        assert "Reconnected" in said[-1] and "microphone is live" in said[-1], logs
        await until_seat(new_owner, space_id, speaker_id, connected=True)
        await until_seat(new_owner, space_id, host_id, connected=True)
        assert not errors, errors
