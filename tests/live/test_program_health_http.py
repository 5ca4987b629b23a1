"""What people see when a recording fails, through the real app: /healthz
degraded with the reason while writes fail, state.json's ``recording`` field
for the host console, recovery within seconds of the cause going away, and
after the end a state.json that says what the recording lacks."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAST_ARGON2, Api
from tests.live.test_program_resilience import FlakyWriter
from townhall.config import Settings
from townhall.server.app import create_app


async def poll(
    client: httpx.AsyncClient, url: str, check: Callable[[Any], bool], timeout_s: float
) -> tuple[Any, float]:
    start = time.monotonic()
    while True:
        body = (await client.get(url)).json()
        if check(body):
            return body, time.monotonic() - start
        assert time.monotonic() - start < timeout_s, f"{url} never matched; last {body}"
        await asyncio.sleep(0.1)


async def test_failing_recording_shows_in_healthz_and_state_json(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        part_ms=100,
        segment_parts=4,
        state_interval_ms=100,
        media_process=False,  # the test swaps the in-process program's recording writer
        recording_backlog_bytes=1500,  # ~3 segments of silence: the outage becomes a gap
        recording_retry_ms=50,
        recording_retry_max_ms=500,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client)
            _, host = await api.account("ada")
            space = await api.space(host)  # live at once: its room has started
            sid = space["id"]
            program = app.state.services.rooms.get(sid).program
            old = program.recording.writer
            writer = FlakyWriter(old.dir)
            program.recording.writer = writer  # before the first write (~0.1 s in)
            old.close()
            state_url = f"/spaces/{sid}/state.json"
            state, _ = await poll(
                client, state_url, lambda s: s.get("recording", {}).get("status") == "ok", 5
            )
            assert state["program"] == {"status": "ok", "message": ""}
            await poll(client, "/healthz", lambda h: h["status"] == "ok", 5)

            writer.error = errno.ENOSPC
            health, _ = await poll(client, "/healthz", lambda h: h["status"] == "degraded", 5)
            assert health["problems"][0]["space_id"] == sid
            assert "Recording is failing: the disk is full" in health["problems"][0]["problem"]
            state, _ = await poll(
                client, state_url, lambda s: s["recording"]["status"] == "failing", 5
            )
            assert state["recording"]["message"].startswith(
                "Recording is failing: the disk is full"
            )
            await asyncio.sleep(3.0)  # the outage: ~3 s, minus what the backlog holds, is lost

            writer.error = None
            _, took_s = await poll(client, "/healthz", lambda h: h["status"] == "ok", 5)
            assert took_s < 5
            state, _ = await poll(
                client, state_url, lambda s: s["recording"]["status"] == "incomplete", 5
            )
            assert "missing" in state["recording"]["message"]
            assert state["recording"]["missing_s"] >= 0.5
            await asyncio.sleep(0.5)
            assert (await client.post(f"/api/spaces/{sid}/end", headers=host)).status_code == 200

            state, _ = await poll(client, state_url, lambda s: s["state"] == "ended", 5)
            assert "program" not in state
            recording = state["recording"]
            assert recording["status"] == "incomplete"
            assert "could not be recorded" in recording["message"]
            assert len(recording["missing"]) == 1
            assert 0.5 <= recording["missing"][0]["duration_s"] <= 4.0
            m4a = await client.get(f"/spaces/{sid}/recording.m4a")
            assert m4a.status_code == 200, m4a.text
