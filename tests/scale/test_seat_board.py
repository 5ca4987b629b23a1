"""store/seat_board.py on the machine's Redis (a prefix of its own): only the
room's lease holder can publish its seats; a read tells the document, its
age by Redis's clock, who wrote it and who holds the room now; the
document outlives its writer's lease (the next owner reads the mutes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.scale.conftest import REDIS_URL
from townhall.live.seats import MOVING, OK, STARTING, encode_seats, follower_view, muted_ids
from townhall.live.tracks import SpeakerStatus
from townhall.store.lease import Leases
from townhall.store.seat_board import SeatBoard, seats_key

pytestmark = [pytest.mark.redis]

SPACE = "room1"
MUTED = SpeakerStatus(connected=True, muted=True, speaking=False, level=0.0)


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        yield r
    finally:
        await r.aclose()


async def test_only_the_holder_publishes_and_a_read_tells_age_and_holder(
    redis: Any, redis_prefix: str
) -> None:
    board = SeatBoard(redis, prefix=redis_prefix, ttl_s=60)
    node_a = Leases(redis, prefix=redis_prefix, node_id="a", ttl_ms=2000)
    node_b = Leases(redis, prefix=redis_prefix, node_id="b", ttl_ms=2000)
    nothing = await board.read(SPACE)
    assert nothing.raw is None and nothing.age_ms is None and nothing.holder_token is None
    assert follower_view(nothing, 1000).status == MOVING

    lease = await node_a.acquire(SPACE)
    assert lease is not None
    held = await board.read(SPACE)
    assert held.raw is None and held.holder_token == lease.token
    assert follower_view(held, 1000).status == STARTING

    doc = encode_seats({"guest": MUTED}, {"program": {"status": "ok", "message": ""}})
    assert await board.publish(SPACE, lease.token, doc)
    await asyncio.sleep(0.3)
    seats = await board.read(SPACE)
    assert seats.raw == doc and seats.writer_token == seats.holder_token == lease.token
    assert seats.age_ms is not None and 250 <= seats.age_ms < 2000, seats.age_ms
    assert follower_view(seats, 1000).status == OK
    assert follower_view(seats, 200).status == MOVING  # older than that bound: stale

    # another node's token is refused; a lapsed lease leaves the document readable
    assert not await board.publish(SPACE, "9:b", b"{}")
    await node_a.release(lease)
    assert (await board.read(SPACE)).raw == doc
    taken = await node_b.acquire(SPACE)
    assert taken is not None
    read = await board.read(SPACE)
    assert read.holder_token == taken.token and read.writer_token == lease.token
    assert follower_view(read, 1000).status == MOVING  # the new owner has not published
    assert muted_ids(read.raw) == ["guest"]  # what the new owner mutes again
    assert not await board.publish(SPACE, lease.token, b"{}")  # the old owner is fenced
    assert 0 < await redis.ttl(seats_key(redis_prefix, SPACE)) <= 60
