"""recording.m4a the moment the host ends the talk, on a node whose copy of
the room has not heard the end yet.

A follower (another node, another HTTP worker) learns the end from the bus a
moment after the owner: for that moment its copy is not final. Here the same
moment is made in one process: the space is ended in the database (what the
host's end does first) while the room still runs, and ended a little later.
A request in between used to get 409 "still live"; it waits for the copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api
from tests.media.hls_validator import decode_pcm
from townhall.config import Settings
from townhall.server.app import create_app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        media_process=False,
        part_ms=100,
        segment_parts=4,
        recording_final_wait_s=1.0,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


def services(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.services  # type: ignore[attr-defined]


async def live_space(client: httpx.AsyncClient) -> tuple[str, str]:
    """A live space whose room has made two segments: (space id, host id)."""
    api = Api(client)
    host_id, headers = await api.account("host")
    space_id = (await api.space(headers))["id"]
    room = services(client).rooms.get(space_id)
    assert room is not None
    deadline = time.monotonic() + 20
    while len(room.program.window.history) < 2:
        assert time.monotonic() < deadline, "the room made no segments"
        await asyncio.sleep(0.05)
    return space_id, host_id


async def test_while_live_it_is_409_at_once(client: httpx.AsyncClient) -> None:
    space_id, _ = await live_space(client)
    started = time.monotonic()
    response = await client.get(f"/spaces/{space_id}/recording.m4a")
    assert response.status_code == 409, response.text
    assert "still live" in response.json()["detail"]
    assert time.monotonic() - started < 0.5  # not held: the talk goes on


async def test_a_copy_a_moment_behind_the_end_is_waited_for(client: httpx.AsyncClient) -> None:
    space_id, host_id = await live_space(client)
    await services(client).spaces.end(space_id, host_id)  # the host's end, first step
    asked = asyncio.create_task(client.get(f"/spaces/{space_id}/recording.m4a"))
    await asyncio.sleep(0.3)
    assert not asked.done(), "answered before the copy was final"
    await services(client).rooms.end(space_id)  # the copy hears the end
    response = await asked
    assert response.status_code == 200, response.text
    samples, rate = decode_pcm(response.content)
    assert rate == 48000 and len(samples) >= 2 * 0.4 * 48000  # the two segments at least


async def test_a_copy_that_stays_behind_gets_503_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    space_id, host_id = await live_space(client)
    await services(client).spaces.end(space_id, host_id)
    started = time.monotonic()
    response = await client.get(f"/spaces/{space_id}/recording.m4a")
    waited = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "Try again" in response.json()["detail"]
    assert int(response.headers["retry-after"]) >= 1
    assert 0.9 <= waited < 5  # recording_final_wait_s, not forever
    await services(client).rooms.end(space_id)
    again = await client.get(f"/spaces/{space_id}/recording.m4a")
    assert again.status_code == 200, again.text
