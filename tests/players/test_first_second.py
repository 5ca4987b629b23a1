"""Every player from second one, over real HTTP on `townhall serve`: ffmpeg
(no LL-HLS) opened 0.5 s after the host goes live decodes the tone from both
playlists; blocking reloads follow RFC 8216bis; listener resources carry CORS
and preflights are answered."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import write_voice_wav
from townhall.media.signals import dominant_frequency, read_wav

pytestmark = [pytest.mark.slow]

PASSWORD = "correct horse battery"
TONE_HZ = 440.0


@dataclass
class OnAir:
    server: LiveServer
    space_id: str
    went_live: float  # monotonic time the host's microphone was connected
    root: Path


def _host_connected(client: httpx.Client, space_id: str) -> bool:
    state = client.get(f"/spaces/{space_id}/state.json").json()
    return any(s["connected"] for s in state.get("speakers", []))


@pytest.fixture(scope="module")
def on_air(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnAir]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    root = tmp_path_factory.mktemp("first-second")
    # the product default: nothing is published before the host's microphone
    server = LiveServer(root / "data", extra_env={"TOWNHALL_PROGRAM_WAITS_FOR_HOST": "true"})
    server.start()
    client = httpx.Client(base_url=server.url, timeout=10)
    client.post("/api/accounts", json={"username": "firsthost", "password": PASSWORD})
    token = client.post(
        "/api/sessions", json={"username": "firsthost", "password": PASSWORD}
    ).json()["token"]
    space = client.post(
        "/api/spaces",
        json={"title": "From second one"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    wav = write_voice_wav(root / "tone.wav", TONE_HZ, seconds=3.0)
    bot = subprocess.Popen(
        [sys.executable, "-m", "townhall", "speak", str(wav), "--server", server.url,
         "--space", space["id"], "--username", "firsthost", "--password", PASSWORD,
         "--loop", "--duration-s", "120"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _host_connected(client, space["id"]):
            assert time.monotonic() < deadline, "the bot never connected"
            time.sleep(0.05)
        yield OnAir(server, space["id"], time.monotonic(), root)
    finally:
        bot.terminate()
        bot.wait(timeout=20)
        client.close()
        server.stop()


def ffmpeg_tone(url: str, out: Path) -> float:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", url, "-t", "3",
         "-ac", "1", "-f", "wav", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    samples, rate = read_wav(out)
    assert len(samples) >= rate * 2.5, f"only {len(samples) / rate:.1f} s decoded"
    return float(dominant_frequency(samples[rate // 2 :], rate))


def test_ffmpeg_opened_half_a_second_after_go_live_hears_the_tone(on_air: OnAir) -> None:
    delay = on_air.went_live + 0.5 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    url = f"{on_air.server.url}/spaces/{on_air.space_id}/plain.m3u8"
    assert ffmpeg_tone(url, on_air.root / "plain.wav") == pytest.approx(TONE_HZ, abs=5)
    live = f"{on_air.server.url}/spaces/{on_air.space_id}/live.m3u8"
    assert ffmpeg_tone(live, on_air.root / "live.wav") == pytest.approx(TONE_HZ, abs=5)


def test_blocking_reloads_follow_rfc_8216bis(on_air: OnAir) -> None:
    from tests.media.hls_validator import validate

    base = f"{on_air.server.url}/spaces/{on_air.space_id}/live.m3u8"
    with httpx.Client(timeout=30) as client:
        playlist = validate(client.get(base).text, expect="ll")
        last = playlist.segments[-1].msn
        # satisfiable at once: answered with a short max-age
        now = client.get(base, params={"_HLS_msn": last, "_HLS_part": 0})
        assert now.status_code == 200 and "max-age=1" in now.headers["cache-control"]
        # last + 2 is held until it exists (about two segments), not refused
        started = time.monotonic()
        later = client.get(base, params={"_HLS_msn": last + 2})
        assert later.status_code == 200, later.text
        assert f"seg/{last + 2}.m4s" in later.text or time.monotonic() - started < 13
        # past last + 2 (of the playlist the client has): 400 at once
        fresh = validate(client.get(base).text, expect="ll").segments[-1].msn
        started = time.monotonic()
        never = client.get(base, params={"_HLS_msn": fresh + 3})
        assert never.status_code == 400 and time.monotonic() - started < 1.0
        assert never.headers["content-type"] == "application/problem+json"


def test_listener_resources_allow_other_origins(on_air: OnAir) -> None:
    root = f"{on_air.server.url}/spaces/{on_air.space_id}"
    with httpx.Client(timeout=30) as client:
        for path in ("live.m3u8", "plain.m3u8", "master.m3u8", "init.mp4"):
            response = client.get(f"{root}/{path}", headers={"Origin": "https://news.example"})
            assert response.status_code == 200, path
            assert response.headers.get("access-control-allow-origin") == "*", path
        playlist = client.get(f"{root}/live.m3u8").text
        part = [line for line in playlist.splitlines() if "part/" in line][-1]
        uri = part.split('URI="')[1].split('"')[0]
        got = client.get(f"{root}/{uri}")
        assert got.headers.get("access-control-allow-origin") == "*"
        preflight = client.options(
            f"{root}/live.m3u8",
            headers={"Origin": "https://news.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "GET" in preflight.headers["access-control-allow-methods"]
