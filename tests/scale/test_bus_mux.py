"""One blocking read per node for all the rooms it follows, on a real Redis:
20 rooms' followers answer like their owners while the node holds exactly
one XREAD BLOCK (one connection); a room added while that read is blocked
joins at once; a room whose buffer overflows resyncs instead of playing a
hole. (The counting wrapper only counts calls: every call goes to Redis.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.scale.conftest import REDIS_URL
from tests.scale.owner import PARTS, WINDOW_SEGMENTS, FakeOwner, same_answers
from townhall.origin.follower import Follower, FollowerState
from townhall.store.bus_mux import BusMux, MuxReader
from townhall.store.bus_redis import BusWriter

pytestmark = [pytest.mark.redis]

ROOMS = 20


class CountingBlocking:
    """The real blocking client; counts XREAD calls and how many overlap."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.inner.xread(*args, **kwargs)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def clients(redis_prefix: str) -> AsyncIterator[tuple[Any, Any, str]]:
    import redis.asyncio as aioredis

    name = "mux-" + redis_prefix.split(":")[1]
    redis = aioredis.from_url(REDIS_URL, socket_timeout=5)
    blocking = aioredis.from_url(REDIS_URL, socket_timeout=10, client_name=name)
    try:
        yield redis, blocking, name
    finally:
        await blocking.aclose()
        await redis.aclose()


async def until(ok: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def room_follower(mux: BusMux, space_id: str) -> Follower:
    state = FollowerState(window_segments=WINDOW_SEGMENTS)
    return Follower(space_id, state, mux.reader(space_id), block_ms=200, retry_s=0.1)


async def test_twenty_rooms_cost_one_blocking_read(
    clients: tuple[Any, Any, str], redis_prefix: str
) -> None:
    redis, blocking, name = clients
    spy = CountingBlocking(blocking)
    mux = BusMux(spy, redis, prefix=redis_prefix, node_id="n1", block_ms=5000, max_entries=1000)
    rooms = [f"room-{i}" for i in range(ROOMS)]
    owners = {r: FakeOwner() for r in rooms}
    writers = {
        r: BusWriter(redis, prefix=redis_prefix, space_id=r, max_entries=1000, ttl_s=600)
        for r in rooms
    }
    sent = dict.fromkeys(rooms, 0)

    async def flush() -> None:
        for r in rooms:
            for m in owners[r].messages[sent[r] :]:
                await writers[r].write(m, "")
            sent[r] = len(owners[r].messages)

    for owner in owners.values():
        owner.parts(PARTS + 1)
    await flush()
    followers = {r: room_follower(mux, r) for r in rooms}
    try:
        for f in followers.values():
            f.start()
        await until(lambda: all(f.window is not None for f in followers.values()))
        for _ in range(3):  # parts keep coming to every room
            for owner in owners.values():
                owner.parts(PARTS)
            await flush()
            await until(
                lambda: all(
                    followers[r].window is not None
                    and followers[r].window.position == owners[r].window.position  # type: ignore[union-attr]
                    for r in rooms
                )
            )
        for r in rooms:
            same_answers(owners[r].window, followers[r].window)  # type: ignore[arg-type]
        # one read at a time for all twenty rooms, on one connection
        assert spy.most_in_flight == 1
        # and no busy loop: each read returned entries (or its block timed out)
        assert spy.calls <= sum(sent.values()) + 10, spy.calls
        listing = await redis.client_list()
        assert sum(1 for c in listing if c.get("name") == name) == 1, listing
        assert mux.rooms == ROOMS

        # a room added while the read is blocked (5 s) is served at once
        late = FakeOwner()
        late.parts(2)
        w = BusWriter(redis, prefix=redis_prefix, space_id="late", max_entries=1000, ttl_s=600)
        for m in late.messages:
            await w.write(m, "")
        follower = room_follower(mux, "late")
        follower.start()
        try:
            await asyncio.sleep(0.3)  # its snapshot, then the shared read names it
            started = time.monotonic()
            late.parts(1)
            await w.write(late.messages[-1], "")
            await until(
                lambda: (
                    follower.window is not None and follower.window.position == late.window.position
                ),
                timeout_s=2.0,
            )
            assert time.monotonic() - started < 2.0
        finally:
            await follower.stop()
    finally:
        for f in followers.values():
            await f.stop()
        await mux.close()


async def test_a_room_whose_buffer_overflows_resyncs(
    clients: tuple[Any, Any, str], redis_prefix: str
) -> None:
    redis, blocking, _ = clients
    mux = BusMux(blocking, redis, prefix=redis_prefix, node_id="n2", block_ms=300, max_entries=3)
    owner = FakeOwner()
    owner.parts(PARTS + 1)
    w = BusWriter(redis, prefix=redis_prefix, space_id="r", max_entries=1000, ttl_s=600)
    for m in owner.messages:
        await w.write(m, "")
    follower = room_follower(mux, "r")
    follower.start()
    try:
        await until(lambda: follower.window is not None)
        reader = follower.reader
        assert isinstance(reader, MuxReader)
        # the follower is busy (not reading) while ten entries arrive: its buffer keeps 3
        await follower.stop()
        sent = len(owner.messages)
        owner.parts(PARTS * 2 + 2)
        for m in owner.messages[sent:]:
            await w.write(m, "")
        await until(lambda: reader.dropped > 0)
        # the follower comes back: a snapshot, and the owner's answers again
        state = follower.state
        again = Follower("r", state, reader, block_ms=200, retry_s=0.1)
        again.start()
        try:
            await until(
                lambda: state.window is not None and state.window.position == owner.window.position
            )
            same_answers(owner.window, state.window)  # type: ignore[arg-type]
        finally:
            await again.stop()
    finally:
        await follower.stop()
        await mux.close()
