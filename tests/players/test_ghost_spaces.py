"""No ghost spaces: the program starts when someone is on the microphone, and a
space whose host and co-hosts are gone ends by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Api
from townhall.config import Settings
from townhall.live.room import Room
from townhall.live.stage import SpeakerStatus
from townhall.server.absence import AbsenceClock
from townhall.server.app import create_app

SPACE = "abcdefgh2345"
FRAME = np.zeros(960, dtype=np.int16)


def test_room_feeds_its_program_only_once_a_microphone_is_connected(tmp_path: Path) -> None:
    room = Room(SPACE, Settings(data_dir=tmp_path, program_waits_for_host=True))
    pushed: list[int] = []
    room.program.push_frame = lambda pcm: pushed.append(len(pcm))  # type: ignore[method-assign]
    statuses: dict[str, SpeakerStatus] = {}
    room.stage.speaker_status = lambda: statuses  # type: ignore[method-assign]
    for _ in range(50):
        room._frame(FRAME)
    assert pushed == [] and not room.on_air
    statuses["host"] = SpeakerStatus(connected=True, muted=False, speaking=False, level=0.0)
    room._frame(FRAME)
    assert pushed == [960] and room.on_air
    statuses.clear()  # once on the air, a blip does not stop the program
    room._frame(FRAME)
    assert pushed == [960, 960]


def test_room_without_waiting_feeds_at_once(tmp_path: Path) -> None:
    room = Room(SPACE, Settings(data_dir=tmp_path, program_waits_for_host=False))
    assert room.on_air


def test_absence_clock_ends_after_the_configured_time() -> None:
    now = [0.0]
    clock = AbsenceClock(10.0, clock=lambda: now[0])
    assert not clock.observe("a", False)  # first sight starts the clock
    now[0] = 9.0
    assert not clock.observe("a", False)
    now[0] = 9.5
    assert not clock.observe("a", True)  # back: the clock restarts
    now[0] = 19.0
    assert not clock.observe("a", False)
    now[0] = 19.6
    assert clock.observe("a", False)
    clock.keep_only([])
    assert not clock.observe("a", False)
    assert not AbsenceClock(0.0, clock=lambda: 1e9).observe("b", False)


async def test_space_without_its_host_ends_by_itself(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", host_absent_end_s=0.4, host_absent_check_s=0.1)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            api = Api(client)
            _, headers = await api.account("ghosthost")
            space: dict[str, Any] = await api.space(headers, title="Nobody comes")
            assert space["state"] == "live"
            deadline = time.monotonic() + 10
            state = "live"
            while state == "live" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                state = (await client.get(f"/api/spaces/{space['id']}")).json()["state"]
            assert state == "ended"
            assert app.state.services.rooms.get(space["id"]) is None


@pytest.mark.parametrize("absent_end_s", [0.0])
async def test_zero_never_ends_a_space(tmp_path: Path, absent_end_s: float) -> None:
    settings = Settings(data_dir=tmp_path / "data", host_absent_end_s=absent_end_s)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert app.state.services._absence is None
