"""The whole product on a real `townhall serve`: a bot speaker publishes a
1 kHz tone over WebRTC; listeners fetch the LL-HLS parts and the progressive
stream over HTTP and decode the tone; ffprobe reads the playlists; the host
ends the space and the recording is there at once; and a server killed with
SIGKILL mid-talk comes back with the recording intact and the space going on.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.conftest import Api, LiveServer
from townhall.client.speak import publish
from townhall.media.signals import dominant_frequency, tone

pytestmark = [pytest.mark.slow]

TONE_HZ = 1000.0
PART_S = 0.512  # default part_ms 500 rounded up to 24 AAC frames


def decode(data: bytes, fmt: str | None = None) -> np.ndarray:
    """Decode an audio byte string (fMP4 or ADTS) to mono float samples."""
    with av.open(io.BytesIO(data), format=fmt) as container:
        chunks = [
            frame.to_ndarray().reshape(-1).astype(np.float64) for frame in container.decode(audio=0)
        ]
    return np.concatenate(chunks) if chunks else np.zeros(0)


async def wait_until_speaking(
    http: httpx.AsyncClient, space_id: str, timeout_s: float = 20
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = (await http.get(f"/spaces/{space_id}/state.json")).json()
        if any(s["connected"] and s["speaking"] for s in state["speakers"]):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"no speaker became audible in {timeout_s}s: {state}")


async def latest_parts(
    http: httpx.AsyncClient, space_id: str, count: int
) -> tuple[bytes, list[bytes]]:
    """The init segment and the last ``count`` parts the live playlist names."""
    playlist = (await http.get(f"/spaces/{space_id}/live.m3u8")).text
    base = f"/spaces/{space_id}/"
    maps = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
    parts = re.findall(r'#EXT-X-PART:[^\n]*URI="([^"]+)"', playlist)
    assert maps and len(parts) >= count, playlist
    init = (await http.get(base + maps[-1])).content
    bodies = []
    for uri in parts[-count:]:
        response = await http.get(base + uri)
        assert response.status_code == 200, (uri, response.text)
        assert response.headers["content-type"] == "audio/mp4"
        assert "immutable" in response.headers["cache-control"]
        bodies.append(response.content)
    return init, bodies


async def run(*args: str, timeout_s: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode()


class Talk:
    """A host account, a live space and a bot speaker looping the tone."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.http = httpx.AsyncClient(base_url=server.url, timeout=20)
        self.api = Api(self.http)
        self.stop = asyncio.Event()
        self.bot: asyncio.Task[Any] | None = None
        self.space_id = ""
        self.headers: dict[str, str] = {}

    async def open(self, username: str = "host") -> None:
        _, self.headers = await self.api.account(username)
        self.space_id = (await self.api.space(self.headers, title="Tone test"))["id"]

    async def speak(self) -> None:
        response = await self.http.post(
            f"/api/spaces/{self.space_id}/speaker-token", headers=self.headers
        )
        assert response.status_code == 200, response.text
        self.stop = asyncio.Event()
        self.bot = asyncio.create_task(
            publish(
                self.server.url,
                self.space_id,
                response.json()["token"],
                tone(TONE_HZ, 1.0, amplitude=0.3),
                loop=True,
                stop=self.stop,
            )
        )
        await wait_until_speaking(self.http, self.space_id)

    async def silence(self) -> None:
        self.stop.set()
        if self.bot is not None:
            await asyncio.gather(self.bot, return_exceptions=True)

    async def close(self) -> None:
        await self.silence()
        await self.http.aclose()


@pytest.fixture
async def talk(live_server: LiveServer) -> AsyncIterator[Talk]:
    talk = Talk(live_server)
    await talk.open()
    try:
        yield talk
    finally:
        await talk.close()


async def test_a_spoken_tone_reaches_listeners_and_the_recording(talk: Talk) -> None:
    http, sid = talk.http, talk.space_id
    await talk.speak()
    await asyncio.sleep(8 * PART_S)  # the hold-back's worth of parts are the tone by now

    # LL-HLS: the newest six parts decode to the tone, and last as long as they say
    init, parts = await latest_parts(http, sid, 6)
    pcm = decode(init + b"".join(parts))
    assert len(pcm) / 48000 == pytest.approx(6 * PART_S, abs=0.03)
    assert dominant_frequency(pcm) == pytest.approx(TONE_HZ, abs=10)

    # the progressive stream (ADTS over chunked HTTP) carries the same tone
    received = bytearray()
    async with http.stream("GET", f"/spaces/{sid}/live.aac") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("audio/aac")
        async for chunk in response.aiter_bytes():
            received += chunk
            if len(received) > 8 * 1024 * 2:  # ~2 s at 64 kbit/s
                break
    pcm = decode(bytes(received), "aac")
    assert len(pcm) / 48000 > 1.0
    assert dominant_frequency(pcm[4800:]) == pytest.approx(TONE_HZ, abs=10)

    # real players read the live playlist without error
    if shutil.which("ffprobe"):
        code, out = await run(
            "ffmpeg", "-v", "error", "-i", f"{talk.server.url}/spaces/{sid}/live.m3u8",
            "-t", "2", "-f", "null", "-",
        )  # fmt: skip
        assert code == 0 and out.strip() == "", out

    # the host ends the talk: the same URL is now the whole conversation as VOD,
    # and the recording is one file at once
    await talk.silence()
    response = await http.post(f"/api/spaces/{sid}/end", headers=talk.headers)
    assert response.status_code == 200, response.text
    playlist = (await http.get(f"/spaces/{sid}/live.m3u8")).text
    assert "#EXT-X-ENDLIST" in playlist and "#EXT-X-PLAYLIST-TYPE:VOD" in playlist
    response = await http.get(f"/spaces/{sid}/recording.m4a")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/mp4"
    recording = decode(response.content)
    listed_s = sum(float(d) for d in re.findall(r"#EXTINF:([\d.]+)", playlist))
    assert len(recording) / 48000 == pytest.approx(listed_s, abs=0.1)
    assert len(recording) / 48000 >= 8 * PART_S
    # the talking part of the recording is the tone (the start may be silence)
    assert dominant_frequency(recording[-(3 * 48000) :]) == pytest.approx(TONE_HZ, abs=10)


async def test_sigkill_mid_talk_keeps_the_recording_and_the_space_goes_on(
    talk: Talk, tmp_path: Path
) -> None:
    http, sid = talk.http, talk.space_id
    await talk.speak()
    await asyncio.sleep(9.5)  # at least two finished 4.096 s segments of tone
    playlist = (await http.get(f"/spaces/{sid}/live.m3u8")).text
    finished_before = re.findall(r"^(seg/\d+\.m4s)$", playlist, re.MULTILINE)
    assert len(finished_before) >= 2, playlist
    await talk.silence()

    talk.server.stop(signal.SIGKILL)
    restarted = LiveServer(talk.server.data_dir)
    restarted.start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=20) as http2:
            space = (await http2.get(f"/api/spaces/{sid}")).json()
            assert space["state"] == "live"
            playlist = (await http2.get(f"/spaces/{sid}/live.m3u8")).text
            assert "#EXT-X-DISCONTINUITY" in playlist
            # every segment finished before the crash is still listed and decodes
            for uri in finished_before:
                assert uri in playlist
            maps = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
            init = (await http2.get(f"/spaces/{sid}/{maps[0]}")).content
            last_before = (await http2.get(f"/spaces/{sid}/{finished_before[-1]}")).content
            pcm = decode(init + last_before)
            assert len(pcm) / 48000 == pytest.approx(8 * PART_S, abs=0.03)
            assert dominant_frequency(pcm) == pytest.approx(TONE_HZ, abs=10)

            # the space goes on: a speaker reconnects and is heard after the restart
            talk.server = restarted
            talk.http = http2
            talk.api = Api(http2)
            await talk.speak()
            await asyncio.sleep(8 * PART_S)
            init, parts = await latest_parts(http2, sid, 4)
            assert dominant_frequency(decode(init + b"".join(parts))) == pytest.approx(
                TONE_HZ, abs=10
            )
            await talk.silence()
    finally:
        restarted.stop()
