"""Shared listener count and reaction totals: the pure buffers and keys, the
Redis health, and SharedState against a real Redis (two instances = two
nodes) and against a closed port."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import free_port
from tests.scale.conftest import REDIS_URL
from townhall.config import Settings
from townhall.live.roomstate import ListenerCounter
from townhall.store.shared import (
    ListenerBuffer,
    ReactionBuffer,
    RedisHealth,
    SharedState,
    bucket_ttl_s,
    connect,
    listener_keys,
    reactions_key,
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def dropped() -> float:
    return REGISTRY.get_sample_value("townhall_shared_listener_ids_dropped_total") or 0.0


def failures(op: str) -> float:
    return REGISTRY.get_sample_value("townhall_redis_failures_total", {"op": op}) or 0.0


def test_keys_and_buckets() -> None:
    assert listener_keys("p:", "s1", 1000.0, 300) == ("p:lc:s1:3", "p:lc:s1:2")
    assert listener_keys("p:", "s1", 1199.9, 300)[0] == "p:lc:s1:3"
    assert listener_keys("p:", "s1", 1200.0, 300)[0] == "p:lc:s1:4"
    assert reactions_key("p:", "s1") == "p:rx:s1"
    assert bucket_ttl_s(300) >= 600


def test_listener_buffer_dedups_bounds_and_counts_drops() -> None:
    buffer = ListenerBuffer(max_ids=3)
    before = dropped()
    buffer.add("a", "t1")
    buffer.add("a", "t1")  # a renewal already buffered costs nothing
    buffer.add("b", "t2")
    buffer.add("a", "t3")
    buffer.add("a", "t4")  # full
    buffer.add("c", "t5")  # full
    assert len(buffer) == 3 and dropped() - before == 2
    batch = buffer.take()
    assert batch == {"a": {"t1", "t3"}, "b": {"t2"}} and len(buffer) == 0
    buffer.add("a", "t9")
    buffer.restore(batch)  # as far as there is room
    assert len(buffer) == 3
    assert sum(len(ids) for ids in buffer.take().values()) == 3


def test_reaction_buffer_take_and_restore() -> None:
    buffer = ReactionBuffer()
    for emoji in ("👏", "👏", "🔥"):
        buffer.add("s", emoji)
    assert buffer.pending("s") == Counter({"👏": 2, "🔥": 1}) and len(buffer) == 3
    batch = buffer.take()
    assert len(buffer) == 0 and buffer.pending("s") == Counter()
    buffer.add("s", "👏")
    buffer.restore(batch)
    assert buffer.pending("s") == Counter({"👏": 3, "🔥": 1})


def test_health_backs_off_and_warns_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(0.0)
    health = RedisHealth(backoff_s=1.0, warn_interval_s=30.0, clock=clock)
    before = failures("test")
    with caplog.at_level(logging.WARNING, logger="townhall.store"):
        assert health.available()
        health.failed("test", ConnectionError("refused"))
        assert not health.available()
        clock.now = 1.0
        assert health.available()
        for _ in range(5):
            health.failed("test", ConnectionError("refused"))
        clock.now = 31.0
        health.failed("test", ConnectionError("refused"))
        health.succeeded()
    warnings = [r.getMessage() for r in caplog.records]
    assert failures("test") - before == 7
    assert len(warnings) == 3, warnings
    assert "Redis is unreachable" in warnings[0] and "1 failure(s)" in warnings[0]
    assert "6 failure(s) since the last warning" in warnings[1]
    assert "Redis answers again after 7 failure(s)" in warnings[2]
    assert health.available() and not health.down


@pytest.fixture
async def redis_settings(redis_prefix: str) -> AsyncIterator[Settings]:
    yield Settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)


def node(settings: Settings, clock: Clock, *, max_ids: int = 1000) -> tuple[SharedState, Any]:
    redis = connect(settings)
    health = RedisHealth(backoff_s=0.0, warn_interval_s=60.0)
    state = SharedState(
        redis,
        health,
        ListenerCounter(ttl_s=300, clock=clock),
        prefix=settings.redis_prefix,
        bucket_s=300,
        max_ids=max_ids,
        clock=clock,
    )
    return state, redis


@pytest.mark.redis
async def test_two_nodes_share_count_and_totals(redis_settings: Settings) -> None:
    clock = Clock(1_800_000_000.0)
    (a, redis_a), (b, redis_b) = node(redis_settings, clock), node(redis_settings, clock)
    try:
        for i in range(500):
            a.listeners.add("s", f"a{i}")
            b.listeners.add("s", f"b{i}")
        for i in range(100):
            b.listeners.add("s", f"a{i}")  # renewed on the other node
        a.reactions.add("s", "👏")
        b.reactions.add("s", "👏")
        b.reactions.add("s", "🔥")
        # unflushed reactions show on their own node only (a first read asks Redis)
        assert (await a.read("s")).reactions == {"👏": 1}
        assert (await b.read("s")).reactions == {"👏": 1, "🔥": 1}
        assert await a.flush()  # writes, and reads back what Redis has so far
        tally = await a.read("s")
        assert tally.reactions == {"👏": 1} and abs(tally.listener_count - 500) <= 10
        assert await b.flush() and await a.flush()
        for state in (a, b):
            tally = await state.read("s")  # answered from memory, as of the last flush
            assert tally.shared and tally.reactions == {"👏": 2, "🔥": 1}
            assert abs(tally.listener_count - 1000) <= 20
        key = listener_keys(redis_settings.redis_prefix, "s", clock.now, 300)[0]
        assert 0 < await redis_a.ttl(key) <= bucket_ttl_s(300)
        # an id is counted for one to two buckets after it was last seen
        clock.now += 300
        a.listeners.add("s", "late")
        assert await a.flush() and await b.flush()
        assert abs((await b.read("s")).listener_count - 1001) <= 20
        clock.now += 300
        assert await b.flush()
        assert (await b.read("s")).listener_count == 1
        clock.now += 300
        assert await b.flush()
        assert (await b.read("s")).listener_count == 0
        assert (await b.read("s")).reactions == {"👏": 2, "🔥": 1}  # totals stay
    finally:
        await redis_a.aclose()
        await redis_b.aclose()


async def test_unreachable_redis_keeps_last_values_and_buffers() -> None:
    clock = Clock(1_800_000_000.0)
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_ms=200)
    state, redis = node(settings, clock, max_ids=10)
    before = failures("flush")
    try:
        assert not await state.ping()
        for i in range(12):
            state.listeners.add("s", f"t{i}")
        state.reactions.add("s", "🙌")
        assert not await state.flush()
        assert failures("flush") - before == 1
        assert len(state.listeners) == 10 and len(state.reactions) == 1  # kept for next time
        tally = await state.read("s")
        assert not tally.shared
        assert tally.listener_count == 10  # this node's own (nothing read before)
        assert tally.reactions == {"🙌": 1}
        # from now on every join is counted here too, even with the buffer full
        for i in range(12, 17):
            state.listeners.add("s", f"t{i}")
        assert (await state.read("s")).listener_count == 15
        await state.close()  # a last try; nothing raises
    finally:
        await redis.aclose()


class GatedRedis:
    """A stand-in for Redis whose transaction waits for a gate, to look at
    state.json while a flush is in flight. Keeps one hash of totals."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.gate = asyncio.Event()
        self.fail = False

    def pipeline(self, transaction: bool = True) -> GatedPipe:
        return GatedPipe(self)


class GatedPipe:
    def __init__(self, redis: GatedRedis) -> None:
        self.redis = redis
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def __len__(self) -> int:
        return len(self.commands)

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any) -> GatedPipe:
            self.commands.append((name, args))
            return self

        return queue

    async def execute(self) -> list[Any]:
        await self.redis.gate.wait()
        if self.redis.fail:
            raise RedisConnectionError("Connection reset by peer")
        answers: list[Any] = []
        for name, args in self.commands:
            if name == "hincrby":
                self.redis.totals[args[1]] += args[2]
                answers.append(self.redis.totals[args[1]])
            elif name == "hgetall":
                answers.append({k.encode(): str(v).encode() for k, v in self.redis.totals.items()})
            else:
                answers.append(0)
        return answers


async def test_totals_never_jump_while_a_flush_is_in_flight() -> None:
    redis = GatedRedis()
    health = RedisHealth(backoff_s=0.0, warn_interval_s=60.0)
    state = SharedState(
        redis, health, ListenerCounter(ttl_s=300), prefix="p:", bucket_s=300, max_ids=100
    )
    redis.gate.set()
    assert (await state.read("s")).reactions == {}  # first read: asks "Redis"
    redis.gate.clear()
    for _ in range(3):
        state.reactions.add("s", "👏")
    flush = asyncio.create_task(state.flush())
    await asyncio.sleep(0)  # the transaction is sent, its answer not yet in
    state.reactions.add("s", "👏")
    assert (await state.read("s")).reactions == {"👏": 4}
    redis.gate.set()
    assert await flush
    assert redis.totals == {"👏": 3}
    assert (await state.read("s")).reactions == {"👏": 4}  # 3 from Redis + 1 pending
    # a failed flush puts its increments back: shown the same, sent next time
    redis.gate.clear()
    redis.fail = True
    flush = asyncio.create_task(state.flush())
    await asyncio.sleep(0)
    assert (await state.read("s")).reactions == {"👏": 4}
    redis.gate.set()
    assert not await flush
    assert (await state.read("s")).reactions == {"👏": 4}
    assert not (await state.read("s")).shared
    redis.fail = False
    assert await state.flush()
    assert redis.totals == {"👏": 4}
    assert (await state.read("s")).reactions == {"👏": 4}
