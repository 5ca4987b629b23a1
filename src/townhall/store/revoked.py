"""Sign-outs shared by every node through Redis (only when ``redis_url`` is set).

Each node checks revocations in memory (``policy.tokens.Revocations``, a dict
lookup per session token); this module carries them between nodes. One Redis
sorted set holds every revocation of the last session lifetime, scored by
when it was made: ``t|<token id>|<expires_at>`` for one session signed out,
``a|<account id>|<not_before>`` for "sign out everywhere". A node applies its
own revocations at once and adds them to the set; every ``interval_s`` it
reads what the others added since its last read (with an overlap for clock
skew: applying one twice changes nothing) and trims what has run out. While
Redis cannot be reached, revocations made here are kept (bounded) and sent
with the next sync; other nodes learn of them when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from townhall import metrics
from townhall.policy.ratelimit import STORE_ERRORS
from townhall.policy.tokens import Revocations
from townhall.store.shared import RedisHealth

log = logging.getLogger("townhall.store")

SYNC_OVERLAP_S = 10.0  # re-read this much before the last read (clocks of nodes differ)


def encode(kind: str, key: str, when: int) -> str:
    """A member of the revocations set (``kind`` "t" token id, "a" account)."""
    return f"{kind}|{key}|{when}"


def apply(revocations: Revocations, member: str) -> bool:
    """Apply one member read from Redis; False when it is not one of ours."""
    kind, _, rest = member.partition("|")
    key, _, when_text = rest.rpartition("|")
    if not key or not when_text.isdigit():
        return False
    if kind == "t":
        revocations.revoke(key, int(when_text))
    elif kind == "a":
        revocations.revoke_all(key, int(when_text))
    else:
        return False
    return True


class SharedRevocations:
    """The Redis side of :class:`Revocations` (see the module docstring)."""

    def __init__(
        self,
        redis: Any,
        health: RedisHealth,
        revocations: Revocations,
        *,
        prefix: str,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.revocations = revocations
        self.health = health
        self._redis = redis
        self._key = f"{prefix}revoked"
        self._clock = clock
        self._pending: deque[tuple[str, float]] = deque(maxlen=max_pending)
        self._read_since = float("-inf")
        self._lock = asyncio.Lock()

    async def revoke(self, token_id: str, expires_at: int) -> bool:
        """Sign one session out here at once, then tell the other nodes."""
        self.revocations.revoke(token_id, expires_at)
        return await self._publish(encode("t", token_id, expires_at))

    async def revoke_all(self, subject: str, not_before: int) -> bool:
        """Sign every session of ``subject`` issued up to ``not_before`` out."""
        self.revocations.revoke_all(subject, not_before)
        return await self._publish(encode("a", subject, not_before))

    async def _publish(self, member: str) -> bool:
        self._pending.append((member, self._clock()))
        return await self.sync()

    async def sync(self) -> bool:
        """Send what is pending, trim, and apply what other nodes added. True
        when Redis answered."""
        async with self._lock:
            if not self.health.available():
                return False
            now = self._clock()
            pending = list(self._pending)
            pipe = self._redis.pipeline(transaction=False)
            if pending:
                pipe.zadd(self._key, dict(pending))
            pipe.zremrangebyscore(self._key, "-inf", now - self.revocations.horizon_s)
            since = max(self._read_since - SYNC_OVERLAP_S, now - self.revocations.horizon_s)
            pipe.zrangebyscore(self._key, since, "+inf")
            try:
                answers = await pipe.execute()
            except STORE_ERRORS as exc:
                self.health.failed("revocations", exc)
                return False
            self.health.succeeded()
            if pending:
                sent = {member for member, _ in pending}
                kept = [item for item in self._pending if item[0] not in sent]
                self._pending.clear()
                self._pending.extend(kept)
            for raw in answers[-1]:
                apply(self.revocations, raw.decode() if isinstance(raw, bytes) else str(raw))
            self._read_since = now
            self.revocations.prune()
            return True

    async def run(self, interval_s: float) -> None:
        """Sync every ``interval_s`` until cancelled."""
        while True:
            try:
                await self.sync()
            except Exception:
                metrics.REDIS_FAILURES.labels(op="revocations").inc()
                log.exception("syncing sign-outs with Redis failed unexpectedly")
            await asyncio.sleep(interval_s)
