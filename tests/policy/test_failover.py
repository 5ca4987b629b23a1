"""Shared rate limits when their store cannot answer: sign-in fails closed
(503 with a sentence), the others fall back to the per-node limiter; while the
store is known to be down nobody waits for it."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from townhall.errors import ServiceUnavailable
from townhall.policy.ratelimit import Decision, FailClosed, FailOver, Limit, MemoryLimiter


class Health:
    def __init__(self) -> None:
        self.up = True
        self.failures: list[str] = []
        self.successes = 0

    def available(self) -> bool:
        return self.up

    def failed(self, op: str, exc: BaseException) -> None:
        self.failures.append(op)
        self.up = False

    def succeeded(self) -> None:
        self.successes += 1


class Broken:
    """A shared limiter whose store is gone."""

    limit = Limit(1, 60.0)

    def __init__(self) -> None:
        self.calls = 0

    async def hit(self, key: str) -> Decision:
        self.calls += 1
        raise RedisConnectionError("Connection refused")

    async def check(self, key: str) -> Decision:
        self.calls += 1
        raise RedisConnectionError("Connection refused")

    async def reset(self, key: str) -> None:
        self.calls += 1
        raise RedisConnectionError("Connection refused")


async def test_fail_closed_refuses_with_a_sentence_and_stops_asking() -> None:
    health, broken = Health(), Broken()
    limiter = FailClosed(broken, health, detail="Sign-in is paused.", retry_after_s=2.0, op="x")
    with pytest.raises(ServiceUnavailable) as info:
        await limiter.check("ada")
    assert info.value.detail == "Sign-in is paused." and info.value.retry_after_s == 2.0
    assert info.value.status == 503
    assert health.failures == ["x"] and broken.calls == 1
    with pytest.raises(ServiceUnavailable):
        await limiter.hit("ada")
    assert broken.calls == 1  # known down: not asked again
    await limiter.reset("ada")  # never raises
    assert health.failures == ["x", "x"]


async def test_fail_closed_passes_decisions_through() -> None:
    health = Health()
    limiter = FailClosed(MemoryLimiter(Limit(1, 60.0)), health, detail="paused", retry_after_s=1.0)
    assert (await limiter.hit("ada")).allowed
    assert not (await limiter.hit("ada")).allowed
    assert health.successes == 2 and not health.failures


async def test_fail_over_uses_the_node_limit() -> None:
    health, broken = Health(), Broken()
    limiter = FailOver(broken, MemoryLimiter(Limit(2, 10.0)), health, op="reactions")
    assert limiter.limit == broken.limit
    assert (await limiter.hit("t")).allowed  # store failed: decided by the fallback
    assert (await limiter.check("t")).allowed
    assert (await limiter.hit("t")).allowed
    refused = await limiter.hit("t")
    assert not refused.allowed and refused.retry_after_s > 0
    assert broken.calls == 1 and health.failures == ["reactions"]
    health.up = True
    await limiter.reset("t")
    assert health.failures == ["reactions", "reactions"]
    assert (await limiter.hit("t")).allowed  # the fallback was reset too
