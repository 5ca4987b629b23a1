"""The listener plane inside the real app: a room started through the
registry (real stage clock feeding the program), then ended."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_ARGON2
from tests.media.hls_validator import decode_pcm, validate
from townhall.config import Settings
from townhall.server.app import create_app

SPACE = "mnopqrst2345"


async def test_room_through_the_registry_live_then_vod(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        part_ms=100,
        segment_parts=4,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            rooms = app.state.services.rooms
            room = await rooms.start(SPACE)
            assert room.program.window is not None
            # the first request holds until the first part exists
            first = await client.get(f"/spaces/{SPACE}/live.m3u8")
            assert first.status_code == 200
            parsed = validate(first.text, expect="ll")
            hint = parsed.preload_hints[0]["URI"]
            msn, part = (int(x) for x in hint.removeprefix("part/").removesuffix(".m4s").split("."))
            blocked = await client.get(
                f"/spaces/{SPACE}/live.m3u8", params={"_HLS_msn": msn, "_HLS_part": part}
            )
            assert blocked.status_code == 200
            assert hint in blocked.text
            hinted = await client.get(f"/spaces/{SPACE}/{hint}")
            assert hinted.status_code == 200
            while len(room.program.window.history) < 2:
                await asyncio.sleep(0.05)
            await rooms.end(SPACE)
            vod = await client.get(f"/spaces/{SPACE}/live.m3u8")
            playlist = validate(vod.text, expect="vod")
            m4a = await client.get(f"/spaces/{SPACE}/recording.m4a")
            assert m4a.status_code == 200
            samples, rate = decode_pcm(m4a.content)
            total_s = sum(s.duration_s for s in playlist.segments)
            assert rate == 48000 and abs(len(samples) / 48000 - total_s) < 0.001
            metrics = (await client.get("/metrics")).text
            assert "townhall_program_parts_total" in metrics


@pytest.mark.parametrize("path", ["live.m3u8", "recording.m4a", "live.aac", "seg/0.m4s"])
async def test_unknown_space_is_404_with_a_sentence(
    app_client: httpx.AsyncClient, path: str
) -> None:
    response = await app_client.get(f"/spaces/zzzzzzzzzzzz/{path}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"]
