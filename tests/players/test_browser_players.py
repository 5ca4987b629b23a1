"""Players nobody on the project wrote, pinned from npm (package.json), each
playing a live space in Chromium for 20 s: hls.js (the pinned version and one
older minor), Shaka Player and video.js/VHS, all four at once (each in a
browser context of its own, one Chromium). A stall is the media time not
advancing for more than a second while playing. Playing starts at the media
time's first advance: a player that seeks to the live edge sets currentTime
before it has the data there, and that start-up (bounded by the waits below)
is not a stall.

The player pages are served by Playwright under the townhall origin (routes
below ``/__players/``), so they need nothing from the server but the
listener resources."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import BASE_ARGS, CHROMIUM, Spectrum, spectrum_async, write_voice_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
PASSWORD = "correct horse battery"
PLAY_S = 20.0
MAX_STALL_S = 1.0
TONE_HZ = 440.0


@dataclass(frozen=True)
class PlayerKind:
    name: str
    script: str  # path under node_modules
    playlist: str  # which listener URL it is given
    start_js: str  # starts playing `url` in `#media`


PLAYERS = [
    PlayerKind(
        "hls.js",
        "hls.js/dist/hls.min.js",
        "live.m3u8",
        """const hls = new Hls({lowLatencyMode: true});
           hls.loadSource(url); hls.attachMedia(media); media.play();""",
    ),
    PlayerKind(
        "hls.js-previous",
        "hls.js-previous/dist/hls.min.js",
        "live.m3u8",
        """const hls = new Hls({lowLatencyMode: true});
           hls.loadSource(url); hls.attachMedia(media); media.play();""",
    ),
    PlayerKind(
        "shaka-player",
        "shaka-player/dist/shaka-player.compiled.js",
        "master.m3u8",
        """shaka.polyfill.installAll();
           const player = new shaka.Player();
           await player.attach(media);
           player.configure({streaming: {lowLatencyMode: true}});
           player.addEventListener('error', (e) => { window.playerError = String(e.detail && e.detail.code); });
           await player.load(url); await media.play();""",
    ),
    PlayerKind(
        "video.js",
        "video.js/dist/video.min.js",
        "live.m3u8",
        """const player = videojs(media, {html5: {vhs: {overrideNative: true}}});
           player.on('error', () => { window.playerError = String(player.error() && player.error().code); });
           player.src({src: url, type: 'application/x-mpegURL'}); player.play();""",
    ),
]

_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/__players/lib.js"></script></head>
<body><video id="media" playsinline></video>
<script>
window.playerError = null;
(async () => {
  const media = document.getElementById('media');
  const url = %(url)r;
  try { %(start)s } catch (e) { window.playerError = String(e && (e.code || e.message) || e); }
})();
</script></body></html>"""


@dataclass
class Live:
    server: LiveServer
    space_id: str
    bot: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("players")
    server = LiveServer(root / "data").start()
    client = httpx.Client(base_url=server.url, timeout=10)
    client.post("/api/accounts", json={"username": "playerhost", "password": PASSWORD})
    token = client.post(
        "/api/sessions", json={"username": "playerhost", "password": PASSWORD}
    ).json()["token"]
    space = client.post(
        "/api/spaces", json={"title": "Players"}, headers={"Authorization": f"Bearer {token}"}
    ).json()
    wav = write_voice_wav(root / "tone.wav", TONE_HZ, seconds=3.0)
    bot = subprocess.Popen(
        [sys.executable, "-m", "townhall", "speak", str(wav), "--server", server.url,
         "--space", space["id"], "--username", "playerhost", "--password", PASSWORD,
         "--loop", "--duration-s", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # a few segments exist before the first player starts
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = client.get(f"/spaces/{space['id']}/live.m3u8").text
            if text.count("#EXTINF") >= 2:
                break
            time.sleep(0.5)
        yield Live(server, space["id"], bot)
    finally:
        bot.terminate()
        bot.wait(timeout=20)
        client.close()
        server.stop()


@dataclass
class Watched:
    """What one player did: media seconds played, the longest stall in s, the
    media times sampled and the spectrum of what it played."""

    played_s: float
    stall_s: float
    samples: list[float]
    heard: Spectrum


async def play_and_watch(page: Any, seconds: float) -> tuple[float, float, list[float]]:
    """(media seconds played, longest stall in s, samples) over ``seconds`` of wall time."""
    await page.wait_for_function(
        "() => document.querySelector('video').currentTime > 0 || window.playerError",
        timeout=30_000,
    )
    error = await page.evaluate("window.playerError")
    assert not error, f"the player failed: {error}"
    first = float(await page.evaluate("document.querySelector('video').currentTime"))
    await page.wait_for_function(
        f"() => document.querySelector('video').currentTime > {first!r} || window.playerError",
        timeout=15_000,
    )
    error = await page.evaluate("window.playerError")
    assert not error, f"the player failed: {error}"
    samples: list[float] = []
    start = float(await page.evaluate("document.querySelector('video').currentTime"))
    last_t, last_change = start, time.monotonic()
    longest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = float(await page.evaluate("document.querySelector('video').currentTime"))
        now = time.monotonic()
        samples.append(t)
        if t > last_t:
            last_t, last_change = t, now
        longest = max(longest, now - last_change)
        await asyncio.sleep(0.25)
    return last_t - start, longest, samples


async def watch(browser: Any, live: Live, kind: PlayerKind) -> Watched:
    """``kind`` playing the live space in a browser context of its own (its own
    cache: no player reads a part another one fetched)."""
    script = (NODE_MODULES / kind.script).read_bytes()
    url = f"/spaces/{live.space_id}/{kind.playlist}"
    page_html = _PAGE % {"url": url, "start": kind.start_js}

    async def lib(route: Any) -> None:
        await route.fulfill(body=script, content_type="application/javascript")

    async def page_doc(route: Any) -> None:
        await route.fulfill(body=page_html, content_type="text/html")

    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = await context.new_page()
        await page.route("**/__players/lib.js", lib)
        await page.route("**/__players/page.html", page_doc)
        await page.goto(live.server.url + "/__players/page.html")
        played_s, stall_s, samples = await play_and_watch(page, PLAY_S)
        heard = await spectrum_async(page, "video")
        deadline = time.monotonic() + 30
        while not heard.has_tone(TONE_HZ) and time.monotonic() < deadline:
            heard = await spectrum_async(page, "video")
    finally:
        await context.close()
    return Watched(played_s, stall_s, samples, heard)


async def watch_all(live: Live, kinds: list[PlayerKind]) -> list[Watched | BaseException]:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=BASE_ARGS,
            ignore_default_args=["--mute-audio"],
        )
        try:
            return await asyncio.gather(
                *(watch(browser, live, kind) for kind in kinds), return_exceptions=True
            )
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def watched(live: Live) -> dict[str, Watched | BaseException | str]:
    """Every player at once, each in its own context of one Chromium, on the
    one live space (the players do not wait for each other: four listeners
    at once): by name, what it did, the error it failed with, or why it is
    skipped."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --test installs it)")
    results: dict[str, Watched | BaseException | str] = {}
    kinds = []
    for kind in PLAYERS:
        if not (NODE_MODULES / kind.script).is_file():
            results[kind.name] = f"{kind.script} is missing: run `npm ci` (scripts/setup.sh --test)"
        elif (
            httpx.get(
                f"{live.server.url}/spaces/{live.space_id}/{kind.playlist}", timeout=10
            ).status_code
            == 404
        ):
            results[kind.name] = f"{kind.playlist} is not served yet"
        else:
            kinds.append(kind)
    for kind, result in zip(kinds, asyncio.run(watch_all(live, kinds)), strict=True):
        results[kind.name] = result
    return results


@pytest.mark.parametrize("kind", PLAYERS, ids=[p.name for p in PLAYERS])
def test_player_plays_20_s_without_a_stall(
    kind: PlayerKind, watched: dict[str, Watched | BaseException | str]
) -> None:
    result = watched[kind.name]
    if isinstance(result, str):
        pytest.skip(result)
    if isinstance(result, BaseException):
        raise result
    stall_s, played_s, samples, heard = (
        result.stall_s,
        result.played_s,
        result.samples,
        result.heard,
    )
    print(f"{kind.name}: played {played_s:.1f} s, longest stall {stall_s:.2f} s")
    assert stall_s <= MAX_STALL_S, f"{kind.name} stalled for {stall_s:.1f} s: {samples[::4]}"
    assert played_s >= PLAY_S - 2.5, f"{kind.name} played {played_s:.1f} s of {PLAY_S:.0f}"
    assert heard.has_tone(TONE_HZ), heard
