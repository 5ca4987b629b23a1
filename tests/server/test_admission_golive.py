"""The admission loop publishes a space's draw the moment it goes live (not
up to an interval later: issue 9's start delay), and ticks on a fixed grid.
Real adapter, memory store, a controlled clock where the order matters."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from townhall.config import Settings
from townhall.policy.tickets import TicketSigner
from townhall.policy.tokens import TokenSigner
from townhall.server.admission import Admission, Queued
from townhall.store.admission import MemoryAdmission
from townhall.store.space_index import SpaceIndex

KEY = b"k" * 32
SPACE = "s1"


def admission(tmp_path: Path, interval_ms: int = 1000) -> Admission:
    settings = Settings(
        data_dir=tmp_path / "data",
        max_listeners=2,
        admit_rate_per_s=10,
        queue_interval_ms=interval_ms,
        queue_priority_window_s=0,
    )
    index = SpaceIndex()
    index.put(SPACE, "scheduled", "public", datetime.now(UTC) + timedelta(seconds=60))
    return Admission(
        settings, MemoryAdmission(), TokenSigner([KEY]), TicketSigner([KEY], 600), index
    )


async def doc_of(a: Admission) -> dict[str, object]:
    entry = a.index.get(SPACE)
    assert entry is not None
    parsed: dict[str, object] = orjson.loads((await a.document(SPACE, entry)).body)
    return parsed


async def test_a_space_gone_live_is_drawn_before_the_next_tick(tmp_path: Path) -> None:
    a = admission(tmp_path)
    entry = a.index.get(SPACE)
    assert entry is not None
    early = [await a.admit(SPACE, entry, f"early{i}") for i in range(4)]
    assert all(isinstance(q, Queued) and q.number is None for q in early)
    await a.tick_gone_live()  # still scheduled: nothing to do
    assert (await doc_of(a))["drawn"] is False
    a.index.put(SPACE, "live", "public")
    await a.tick_gone_live()
    doc = await doc_of(a)
    assert doc["drawn"] is True and doc["drawn_count"] == 4
    assert doc["state"] == "live"


async def test_the_loop_draws_at_go_live_without_waiting_for_its_interval(
    tmp_path: Path,
) -> None:
    a = admission(tmp_path, interval_ms=1000)
    entry = a.index.get(SPACE)
    assert entry is not None
    await a.admit(SPACE, entry, "early")
    assert (await doc_of(a))["drawn"] is False  # rendered: from now on only ticks redo it
    loop = asyncio.create_task(a.run())
    try:
        await asyncio.sleep(0.05)
        a.index.put(SPACE, "live", "public")
        went_live = time.monotonic()
        while not (await doc_of(a))["drawn"]:
            assert time.monotonic() - went_live < 0.9, "drawn only by the interval's tick"
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
