"""The admission counters, in memory and in Redis: the same contract."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.scale.conftest import REDIS_URL, unreachable
from townhall.policy.admission import QueueState, advance
from townhall.store.admission import AdmissionStore, ExpirySet, MemoryAdmission, RedisAdmission


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AdmissionStore]:
    if request.param == "memory":
        yield MemoryAdmission()
        return
    import redis.asyncio as aioredis

    client: Any = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        unreachable("Redis", REDIS_URL, exc, "TOWNHALL_TEST_REDIS_URL")
    prefix = f"townhall-test-{secrets.token_hex(4)}:"
    try:
        yield RedisAdmission(client, prefix=prefix, tick_ms=1000)
    finally:
        keys = await client.keys(prefix + "*")
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_admit_holds_the_limit_under_concurrency(store: AdmissionStore) -> None:
    results = await asyncio.gather(
        *(store.admit("s", f"t{i}", 200.0, 100.0, 10) for i in range(100))
    )
    assert sum(results) == 10
    assert await store.count("s", 100.0) == 10
    # an admitted token is admitted again (idempotent), others are not
    assert await store.admit("s", "t0", 300.0, 100.0, 10) or await store.admit(
        "s", next(f"t{i}" for i, ok in enumerate(results) if ok), 300.0, 100.0, 10
    )
    assert not await store.admit("s", "new", 300.0, 100.0, 10)


async def test_expiry_renew_and_leave(store: AdmissionStore) -> None:
    assert await store.admit("s", "a", 110.0, 100.0, 0)
    assert await store.admit("s", "b", 110.0, 100.0, 0)
    await store.renew("s", "a", 200.0)
    assert await store.count("s", 105.0) == 2
    assert await store.count("s", 120.0) == 1  # b stopped renewing
    await store.leave("s", "a")
    assert await store.count("s", 120.0) == 0


async def test_a_ticket_number_is_used_once(store: AdmissionStore) -> None:
    assert await store.use("s", 7, 200.0, 100.0)
    assert await store.is_used("s", 7)
    assert not await store.use("s", 7, 200.0, 100.0)
    await store.unuse("s", 7)
    assert await store.use("s", 7, 200.0, 100.0)
    # forgotten once the ticket would have expired anyway (bounded)
    assert await store.use("s", 7, 300.0, 250.0)


async def test_issue_tick_and_claims(store: AdmissionStore) -> None:
    numbers = await asyncio.gather(*(store.issue("s") for _ in range(30)))
    assert sorted(numbers) == list(range(1, 31))

    def step(state: QueueState, admitted: int) -> QueueState:
        return advance(state, 10.0, cap=100, admitted=admitted, rate_per_s=5, claim_s=5, live=True)

    first = await store.tick("s", 10.0, step)
    assert first is not None and first.lottery == 30 and first.through >= 1
    if isinstance(store, RedisAdmission):
        assert await store.tick("s", 10.0, step) is None  # another node's turn
    batch = first.batches[0]
    await store.claim("s", batch.lo)
    loaded = await store.load("s")
    assert loaded.through == first.through and loaded.issued == 30
    assert loaded.batches[0].claimed == 1


async def test_the_draw_does_not_wait_for_the_intervals_turn(store: AdmissionStore) -> None:
    # a regular tick just before go-live holds the turn for 0.9 interval;
    # the draw at go-live must not wait for it (it did: up to an interval
    # of start delay, 2026-12-02), and only one node draws
    await asyncio.gather(*(store.issue("d") for _ in range(10)))

    def step(live: bool) -> Any:
        def move(state: QueueState, admitted: int) -> QueueState:
            return advance(
                state, 10.0, cap=100, admitted=admitted, rate_per_s=5, claim_s=5, live=live
            )

        return move

    before = await store.tick("d", 10.0, step(False))  # the last tick before go-live
    assert before is not None and before.lottery is None
    drawn = await store.tick("d", 10.0, step(True), draw=True)
    assert drawn is not None and drawn.lottery == 10 and drawn.through >= 1
    assert await store.tick("d", 10.0, step(True), draw=True) is None  # drawn once
    assert (await store.load("d")).through == drawn.through


def test_expiry_set_compacts_its_heap() -> None:
    items = ExpirySet()
    for i in range(10_000):
        items.add("same", float(i))
    assert len(items._heap) < 200
    assert items.count(5.0) == 1 and items.count(10_000.0) == 0
