"""Rate limits: GCRA (the generic cell rate algorithm), keyed by string.

A :class:`Limit` of ``count`` per ``period_s`` allows a burst of ``count`` and
then one more every ``period_s / count`` seconds. The decision is a pure
function of the stored "theoretical arrival time" (TAT) and the clock
(:func:`gcra`); the stores hold one float per key:

- :class:`MemoryLimiter`: one process, a bounded dict (oldest keys evicted);
- :class:`RedisLimiter`: many nodes, one Lua script per decision (atomic).

Both implement :class:`Limiter`: ``hit`` consumes a unit when allowed,
``check`` only tells whether a hit would be allowed (sign-in checks before
hashing and counts only failures).

A shared store can be unreachable. Two wrappers say what a limit does then:

- :class:`FailClosed` refuses (503 with a sentence): for sign-in, where an
  unlimited window would let password guessing through;
- :class:`FailOver` falls back to a per-node :class:`MemoryLimiter`: for limits
  whose only job is to keep one client from hogging (sign-up, reactions).

Both consult a :class:`StoreHealth` first, so while the store is known to be
down no request waits for its timeout.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from townhall.errors import ServiceUnavailable, TooManyRequests

# What a shared store raises when it cannot answer (refused, reset, timed out).
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    period_s: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.period_s <= 0:
            raise ValueError("a limit needs count >= 1 and period_s > 0")

    @property
    def interval_s(self) -> float:
        return self.period_s / self.count


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed

    def raise_if_refused(self, detail: str) -> None:
        if not self.allowed:
            raise TooManyRequests(detail, retry_after_s=self.retry_after_s)


def gcra(tat_s: float | None, now_s: float, limit: Limit) -> tuple[Decision, float]:
    """Decide one hit: (decision, the TAT to store if the hit is consumed)."""
    tat = now_s if tat_s is None or tat_s < now_s else tat_s
    new_tat = tat + limit.interval_s
    over_s = new_tat - now_s - limit.period_s
    if over_s > 1e-9:
        return Decision(False, over_s), tat
    return Decision(True, 0.0), new_tat


class Limiter(Protocol):
    limit: Limit

    async def hit(self, key: str) -> Decision: ...
    async def check(self, key: str) -> Decision: ...
    async def reset(self, key: str) -> None: ...


class MemoryLimiter:
    """GCRA over a dict of at most ``max_keys`` keys (least recently used go first).

    Evicting a key forgets its history (it gets a fresh burst): the bound keeps
    memory flat under a flood of distinct keys at that cost.
    """

    def __init__(
        self, limit: Limit, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._clock = clock
        self._tats: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def hit_now(self, key: str) -> Decision:
        """Synchronous ``hit`` (the in-memory store never waits)."""
        now = self._clock()
        decision, new_tat = gcra(self._tats.get(key), now, self.limit)
        if decision.allowed:
            self._tats[key] = new_tat
            self._tats.move_to_end(key)
            if len(self._tats) > self.max_keys:
                self._evict(now)
        return decision

    def check_now(self, key: str) -> Decision:
        return gcra(self._tats.get(key), self._clock(), self.limit)[0]

    async def hit(self, key: str) -> Decision:
        return self.hit_now(key)

    async def check(self, key: str) -> Decision:
        return self.check_now(key)

    async def reset(self, key: str) -> None:
        self._tats.pop(key, None)

    def _evict(self, now: float) -> None:
        # Expired entries carry no information; drop them first, then the oldest.
        expired = [k for k, tat in self._tats.items() if tat <= now]
        for key in expired:
            del self._tats[key]
        while len(self._tats) > self.max_keys:
            self._tats.popitem(last=False)


# KEYS[1] = key; ARGV = now_s, interval_s, period_s, consume (1/0).
# Returns {allowed (1/0), retry_after_s as a string} (Lua numbers would be truncated).
_GCRA_LUA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local over = new_tat - now - period
if over > 1e-9 then return {0, string.format('%.17g', over)} end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1)
end
return {1, '0'}
"""


class RedisLimiter:
    """GCRA in Redis, shared by every node; atomic through one Lua script.

    The clock is the caller's (injectable, wall time by default): nodes should
    keep their clocks in sync (NTP), as for token expiry.
    """

    def __init__(
        self,
        redis: Any,
        limit: Limit,
        *,
        prefix: str = "townhall:rl:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self._redis = redis
        self._prefix = prefix
        self._clock = clock
        self._script = redis.register_script(_GCRA_LUA)

    async def _run(self, key: str, consume: bool) -> Decision:
        allowed, retry = await self._script(
            keys=[self._prefix + key],
            args=[
                repr(self._clock()),
                repr(self.limit.interval_s),
                repr(self.limit.period_s),
                "1" if consume else "0",
            ],
        )
        retry_s = float(retry.decode() if isinstance(retry, bytes) else retry)
        return Decision(bool(int(allowed)), 0.0 if int(allowed) else retry_s)

    async def hit(self, key: str) -> Decision:
        return await self._run(key, True)

    async def check(self, key: str) -> Decision:
        return await self._run(key, False)

    async def reset(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)


# ---------------------------------------------------------------- when the store is down


class StoreHealth(Protocol):
    """Whether the shared store is worth asking now (see ``store.shared.RedisHealth``)."""

    def available(self) -> bool: ...
    def failed(self, op: str, exc: BaseException) -> None: ...
    def succeeded(self) -> None: ...


class FailClosed:
    """A shared limiter that refuses with 503 (``detail``) when its store cannot answer."""

    def __init__(
        self,
        inner: Limiter,
        health: StoreHealth,
        *,
        detail: str,
        retry_after_s: float,
        op: str = "ratelimit",
    ) -> None:
        self.limit = inner.limit
        self._inner = inner
        self._health = health
        self._detail = detail
        self._retry_after_s = retry_after_s
        self._op = op

    def _refuse(self) -> ServiceUnavailable:
        return ServiceUnavailable(self._detail, retry_after_s=self._retry_after_s)

    async def hit(self, key: str) -> Decision:
        if not self._health.available():
            raise self._refuse()
        try:
            decision = await self._inner.hit(key)
        except STORE_ERRORS as exc:
            self._health.failed(self._op, exc)
            raise self._refuse() from None
        self._health.succeeded()
        return decision

    async def check(self, key: str) -> Decision:
        if not self._health.available():
            raise self._refuse()
        try:
            decision = await self._inner.check(key)
        except STORE_ERRORS as exc:
            self._health.failed(self._op, exc)
            raise self._refuse() from None
        self._health.succeeded()
        return decision

    async def reset(self, key: str) -> None:
        try:
            await self._inner.reset(key)
        except STORE_ERRORS as exc:
            self._health.failed(self._op, exc)


class FailOver:
    """A shared limiter that decides with ``fallback`` (per node) when its store
    cannot answer. The fallback keeps its own history, so a client limited
    only on the shared store gets a fresh burst on each node during an outage."""

    def __init__(
        self, inner: Limiter, fallback: Limiter, health: StoreHealth, *, op: str = "ratelimit"
    ) -> None:
        self.limit = inner.limit
        self._inner = inner
        self._fallback = fallback
        self._health = health
        self._op = op

    async def hit(self, key: str) -> Decision:
        if self._health.available():
            try:
                decision = await self._inner.hit(key)
            except STORE_ERRORS as exc:
                self._health.failed(self._op, exc)
            else:
                self._health.succeeded()
                return decision
        return await self._fallback.hit(key)

    async def check(self, key: str) -> Decision:
        if self._health.available():
            try:
                decision = await self._inner.check(key)
            except STORE_ERRORS as exc:
                self._health.failed(self._op, exc)
            else:
                self._health.succeeded()
                return decision
        return await self._fallback.check(key)

    async def reset(self, key: str) -> None:
        await self._fallback.reset(key)
        try:
            await self._inner.reset(key)
        except STORE_ERRORS as exc:
            self._health.failed(self._op, exc)
