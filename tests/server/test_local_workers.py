"""`townhall serve` with two HTTP workers on its embedded default (SQLite,
local files, no Redis): one primary and one listener worker on the one port
(server/local_bus.py). A speaker bot publishes a tone through the port; a
listener on the port hears it; with the primary stopped (SIGSTOP) the
listener worker still answers the live parts from its own copy, with the
primary's bytes; kill -9 of the listener worker: the supervisor restarts it
and the port keeps serving; the recording after the end holds the tone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, LiveServer
from tests.scale.test_bus_nodes import PART_URI, playlist, speaker_token, until_tone
from tests.scale.test_three_nodes_nginx import SpeakBot
from tests.test_end_to_end import TONE_HZ, decode
from townhall.media.signals import dominant_frequency, tone, write_wav

pytestmark = [pytest.mark.slow]

EMBEDDED = {
    "TOWNHALL_DATABASE_URL": "",
    "TOWNHALL_REDIS_URL": "",
    "TOWNHALL_BUS_ENABLED": "false",
    "TOWNHALL_HTTP_WORKERS": "2",
}


async def part_on_new_connection(url: str, path: str) -> bytes | None:
    """A part on a connection of its own (the kernel picks the worker); None
    when nobody answered within 3 s (it landed on the stopped primary)."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=3) as client:
            response = await client.get(path)
    except httpx.TimeoutException:
        return None
    assert response.status_code == 200, response.text
    return response.content


async def test_a_listener_worker_serves_the_primarys_rooms(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra_env=EMBEDDED)
    server.start(timeout_s=120)
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(TONE_HZ, 1.0, amplitude=0.3))
    bot: SpeakBot | None = None
    primary_pid = 0
    try:
        log = server.log()
        assert "2 HTTP workers" in log, log[-3000:]
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            _, headers = await Api(http).account("host")
            space_id = (await Api(http).space(headers, title="Two workers, no Redis"))["id"]
            bot = SpeakBot(server.url, space_id, await speaker_token(http, space_id, headers), wav)
            try:
                await until_tone(http, space_id, 60)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; bot:\n{bot.log()}\n{server.log()[-3000:]}") from None
            # the listener worker follows the room once asked: ask on many connections
            for _ in range(8):
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as fresh:
                    await playlist(fresh, space_id)
            await asyncio.sleep(1.0)
            text = await playlist(http, space_id)
            base = f"/spaces/{space_id}/"
            uri = base + PART_URI.findall(text)[-3]  # a finished part, in every copy
            expected = (await http.get(uri)).content
            found = json.loads((tmp_path / "data" / "run" / "primary.json").read_text())
            primary_pid = int(found["pid"])
            os.kill(primary_pid, signal.SIGSTOP)
            try:
                answers = await asyncio.gather(
                    *(part_on_new_connection(server.url, uri) for _ in range(16))
                )
            finally:
                os.kill(primary_pid, signal.SIGCONT)
            served = [a for a in answers if a is not None]
            print(f"with the primary stopped, {len(served)} of 16 part requests were answered")
            assert served, "no listener worker answered while the primary was stopped"
            assert all(a == expected for a in served)  # the primary's bytes
            await until_tone(http, space_id, 20)

            # kill -9 the listener worker: restarted, and the port serves on
            pids = [int(p) for p in re.findall(r"HTTP worker \S+-w2 started \(pid (\d+)\)", log)]
            assert pids, log[-3000:]
            os.kill(pids[-1], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while len(re.findall(r"HTTP worker \S+-w2 started", server.log())) < 2:
                assert time.monotonic() < deadline, server.log()[-3000:]
                await asyncio.sleep(0.3)
            await until_tone(http, space_id, 30)

            ended = await http.post(f"/api/spaces/{space_id}/end", headers=headers)
            assert ended.status_code == 200, ended.text
            audio = await http.get(f"/spaces/{space_id}/recording.m4a")
            assert audio.status_code == 200, audio.text[:300]
            pcm = decode(audio.content)
            assert abs(dominant_frequency(pcm[-96000:], 48000) - TONE_HZ) < 30
    finally:
        if primary_pid:
            os.kill(primary_pid, signal.SIGCONT)
        if bot is not None:
            bot.stop()
        server.stop()
