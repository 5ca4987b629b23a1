"""Captions through the real app: speech pushed into a live space's program
comes back in captions.json, the subtitles playlist and its WebVTT segments,
and after the end in the transcript downloads; the host's switch; a missing
engine leaves the space live, saying why there are no captions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.conftest import FAST_ARGON2, Api
from townhall.bench.captions import espeak_clip, word_error_rate
from townhall.captions.engine import to_float_16k
from townhall.config import Settings
from townhall.server.app import create_app

TEXT = "Good evening and welcome to the town hall. Tonight we talk about the new library."


async def poll(
    client: httpx.AsyncClient, url: str, check: Callable[[Any], bool], timeout_s: float
) -> Any:
    start = time.monotonic()
    while True:
        body = (await client.get(url)).json()
        if check(body):
            return body
        assert time.monotonic() - start < timeout_s, f"{url} never matched; last {body}"
        await asyncio.sleep(0.2)


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        part_ms=100,
        segment_parts=10,
        captions=True,
        captions_chunk_s=4.0,
        **FAST_ARGON2,  # type: ignore[arg-type]
        **extra,
    )


async def test_captions_live_then_transcript(tmp_path: Path) -> None:
    pcm, rate = espeak_clip(TEXT)
    speech = (to_float_16k(pcm, rate) * 32767).astype(np.int16).repeat(3)
    audio = np.concatenate([np.zeros(48_000, np.int16), speech, np.zeros(96_000, np.int16)])
    # the test is the mixer: it feeds the in-process room's program
    app = create_app(_settings(tmp_path, media_process=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client)
            _, host = await api.account("ada")
            sid = (await api.space(host))["id"]
            room = app.state.services.rooms.get(sid)
            room.stage.sink = lambda pcm: None  # the test is the mixer now
            for i in range(0, len(audio) - 959, 960):
                room.program.push_frame(audio[i : i + 960])
                if i % (960 * 25) == 0:
                    await room.program.drained()
            await room.program.drained()

            # final through the end of the speech, no line still being built
            # (captions.json lists the open line too, with "open": true)
            speech_end_s = (48_000 + len(speech)) / 48_000
            doc = await poll(
                client,
                f"/spaces/{sid}/captions.json",
                lambda d: (
                    d["done_s"] >= speech_end_s
                    and len(d["lines"]) >= 2
                    and not any(line.get("open") for line in d["lines"])
                ),
                120,
            )
            assert doc["status"] == "running", doc
            heard = " ".join(line["text"] for line in doc["lines"])
            assert word_error_rate(TEXT, heard) <= 0.25, heard
            assert all(1.0 <= line["start_s"] < line["end_s"] for line in doc["lines"])
            cached = (await client.get(f"/spaces/{sid}/captions.json")).headers["cache-control"]
            assert cached == "public, max-age=1"

            playlist = (await client.get(f"/spaces/{sid}/captions.m3u8")).text
            assert playlist.startswith("#EXTM3U") and "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist
            uris = [ln for ln in playlist.splitlines() if ln.endswith(".vtt")]
            assert uris and uris[0] == f"captions/{room.program.window.history[0].msn}.vtt"
            vtts = [(await client.get(f"/spaces/{sid}/{uri}")) for uri in uris]
            assert all(v.headers["content-type"].startswith("text/vtt") for v in vtts)
            assert vtts[0].text.startswith("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000")
            assert "town hall" in " ".join(v.text for v in vtts).lower()

            off = await client.put(
                f"/api/spaces/{sid}/captions", json={"enabled": False}, headers=host
            )
            assert off.status_code == 200 and off.json()["status"] == "off", off.text
            _, other = await api.account("bob")
            denied = await client.put(
                f"/api/spaces/{sid}/captions", json={"enabled": True}, headers=other
            )
            assert denied.status_code == 403
            assert denied.headers["content-type"] == "application/problem+json"
            on = await client.put(
                f"/api/spaces/{sid}/captions", json={"enabled": True}, headers=host
            )
            assert on.json()["status"] == "running"

            early = await client.get(f"/spaces/{sid}/transcript.txt")
            assert early.status_code == 404
            ended = await client.post(f"/api/spaces/{sid}/end", headers=host)
            assert ended.status_code == 200, ended.text

            text = (await client.get(f"/spaces/{sid}/transcript.txt")).text
            assert text.startswith("[0:0") and "town hall" in text.lower(), text
            vtt = await client.get(f"/spaces/{sid}/transcript.vtt")
            assert vtt.text.startswith("WEBVTT") and "-->" in vtt.text
            lines = (await client.get(f"/spaces/{sid}/transcript.json")).json()["lines"]
            assert lines and lines[0]["start_s"] >= 0.5
            ended_playlist = (await client.get(f"/spaces/{sid}/captions.m3u8")).text
            assert ended_playlist.rstrip().endswith("#EXT-X-ENDLIST")
    assert (tmp_path / "data" / "recordings" / sid / "captions.jsonl").is_file()


async def test_engine_missing_space_goes_on(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, captions_engine="no-such-engine"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client)
            _, host = await api.account("ada")
            sid = (await api.space(host))["id"]
            doc = await poll(
                client,
                f"/spaces/{sid}/captions.json",
                lambda d: d["status"] == "unavailable",
                60,
            )
            assert "Captions are off for this space" in doc["message"]
            assert doc["lines"] == []
            deadline = time.monotonic() + 30
            while True:  # the audio goes on: whole segments keep coming
                live = await client.get(f"/spaces/{sid}/live.m3u8")
                if live.status_code == 200 and live.text.count("#EXTINF") >= 2:
                    break
                assert time.monotonic() < deadline, live.text
                await asyncio.sleep(0.2)
            state = (await client.get(f"/spaces/{sid}/state.json")).json()
            assert state["program"]["status"] == "ok"
