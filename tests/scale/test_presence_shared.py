"""Sampled presence across two nodes sharing a real Redis (issue 12 follow-up):
each node's sampler reads the shared count of its sample's key, and both
nodes settle on a sample and report the room's size within the sampling's
error, while only a fraction of the pages beat."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.scale.conftest import REDIS_URL
from townhall.config import Settings
from townhall.live.presence import rank_of
from townhall.live.roomstate import ListenerCounter
from townhall.server.presence import Presence
from townhall.store.shared import RedisHealth, SharedState, connect


def node(settings: Settings) -> tuple[SharedState, Presence, Any]:
    redis = connect(settings)
    local = ListenerCounter(ttl_s=settings.listener_presence_s / 2)
    state = SharedState(
        redis,
        RedisHealth(backoff_s=0.0, warn_interval_s=60.0),
        local,
        prefix=settings.redis_prefix,
        bucket_s=settings.listener_presence_s / 2,
        max_ids=100_000,
    )
    return state, Presence(settings, state.listeners, local), redis


@pytest.mark.redis
async def test_two_nodes_count_a_sampled_room(redis_prefix: str) -> None:
    settings = Settings(  # type: ignore[call-arg]
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        listener_presence_s=3.0,  # settle 2 s
        presence_sample_target=128,
    )
    (a, pa, ra), (b, pb, rb) = node(settings), node(settings)
    pages = [f"page{i}" for i in range(6000)]  # half on each node
    ranks = {p: rank_of(p) for p in pages}
    estimates: list[tuple[int, int]] = []
    beats = len(pages)
    try:
        for _ in range(40):  # bounded: 40 rounds of 0.25 s
            beats = 0
            for i, page in enumerate(pages):
                presence = pa if i % 2 else pb
                if ranks[page] < presence.sampler.beat_below("s"):
                    presence.beat("s", page, live=True)
                    beats += 1
            assert await a.flush() and await b.flush()
            row = []
            for state, presence in ((a, pa), (b, pb)):
                key = presence.count_key("s")
                raw = (await state.read(key)).listener_count
                row.append(presence.estimate("s", raw))
            estimates.append((row[0], row[1]))
            await asyncio.sleep(0.25)
        assert pa.sampler.level("s") > 0 and pb.sampler.level("s") > 0
        assert beats < len(pages) / 4  # the sample, not the room, beats
        for est in estimates[-4:]:
            for value in est:  # 3 sigma of a sample of at least 64, plus the sketch
                assert abs(value - 6000) <= 6000 * 0.4, estimates[-6:]
    finally:
        await ra.aclose()
        await rb.aclose()
