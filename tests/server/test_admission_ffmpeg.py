"""A capped space heard by a player without cookies: ffmpeg given only
``live.m3u8?t=<token>`` (or plain.m3u8) decodes the host's tone, because every
URI of the playlist it gets carries the same ``t=``; without the token it is
refused. Browsers (the cookie) keep getting the one shared playlist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.web.browser import write_voice_wav
from townhall.media.signals import dominant_frequency, read_wav

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
]

PASSWORD = "correct horse battery"
TONE_HZ = 440.0


def ffmpeg(url: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", url, "-t", "3",
         "-ac", "1", "-f", "wav", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_ffmpeg_plays_a_capped_space_with_the_token_in_the_url_only(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra_env={"TOWNHALL_MAX_LISTENERS": "3"}).start()
    bot = None
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            client.post("/api/accounts", json={"username": "caphost", "password": PASSWORD})
            session = client.post(
                "/api/sessions", json={"username": "caphost", "password": PASSWORD}
            ).json()["token"]
            space = client.post(
                "/api/spaces",
                json={"title": "Capped, on the radio"},
                headers={"Authorization": f"Bearer {session}"},
            ).json()
            sid = space["id"]
            wav = write_voice_wav(tmp_path / "tone.wav", TONE_HZ, seconds=3.0)
            bot = subprocess.Popen(
                [sys.executable, "-m", "townhall", "speak", str(wav), "--server", server.url,
                 "--space", sid, "--username", "caphost", "--password", PASSWORD,
                 "--loop", "--duration-s", "120"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            joined = client.post(f"/api/spaces/{sid}/join", json={})
            assert joined.status_code == 200, joined.text
            token = joined.json()["token"]
            base = f"/spaces/{sid}/"
            deadline = time.monotonic() + 40
            while True:  # a few whole segments of the tone, through the cookie the join set
                shared = client.get(base + "plain.m3u8")
                if shared.status_code == 200 and shared.text.count("seg/") >= 4:
                    break
                assert time.monotonic() < deadline, shared.text
                time.sleep(0.2)
            # the cookie's playlist: no token in it, one shared cache object
            assert "t=" not in shared.text
            assert shared.headers["cache-control"].startswith("public")

        with httpx.Client(base_url=server.url, timeout=30) as bare:  # no cookie
            for name in ("live.m3u8", "plain.m3u8"):
                mine = bare.get(base + name, params={"t": token})
                assert mine.status_code == 200, mine.text
                assert mine.headers["cache-control"].startswith("private")
                uris = re.findall(r'URI="([^"]+)"', mine.text) + [
                    line for line in mine.text.splitlines() if line and not line.startswith("#")
                ]
                assert uris and all(u.endswith(f"t={token}") for u in uris), uris
            assert bare.get(base + "init.mp4").status_code == 401

        # ffmpeg: the URL only (it keeps no cookie and drops the playlist's query)
        refused = ffmpeg(f"{server.url}{base}live.m3u8", tmp_path / "none.wav")
        assert refused.returncode != 0
        for name in ("plain.m3u8", "live.m3u8"):
            out = tmp_path / f"{name}.wav"
            done = ffmpeg(f"{server.url}{base}{name}?t={token}", out)
            assert done.returncode == 0, done.stderr[-2000:]
            samples, rate = read_wav(out)
            assert len(samples) >= rate * 2.5, f"only {len(samples) / rate:.1f} s decoded"
            assert dominant_frequency(samples[rate // 2 :], rate) == pytest.approx(TONE_HZ, abs=5)
    finally:
        if bot is not None:
            bot.terminate()
            bot.wait(timeout=20)
        server.stop()
