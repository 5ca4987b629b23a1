"""State that many nodes share through Redis (used only when ``redis_url`` is
set): the listener count and the reaction totals of each space, and the
health of the Redis connection, which the rate limits share too.

- Listener count: one HyperLogLog per space and time bucket (a bucket lasts
  one listener-token lifetime); ids are PFADDed into the current bucket and
  the count is PFCOUNT over the current and the previous bucket, so a token
  id is counted for one to two lifetimes after it was last seen (as in the
  in-process counter). Keys expire by themselves.
- Reaction totals: one hash per space (emoji -> total), incremented with
  HINCRBY; no expiry (a space's totals are a few small integers).

The hot paths never wait for Redis: join and react add to bounded in-memory
buffers (:class:`ListenerBuffer`, :class:`ReactionBuffer`, pure); a task
flushes them once per state interval in one transaction that also reads back
the count and totals of the spaces whose state.json is being asked for
(:meth:`SharedState.flush`), so state.json is answered from memory
(:meth:`SharedState.read`; only a space's first read asks Redis directly).
When Redis cannot answer, the node carries on from memory: buffers are kept
(bounded) for the next flush, reads answer the last values read (plus what
this node saw since), a warning is logged at most every
``redis_warn_interval_s`` and every failure is counted in
``townhall_redis_failures_total``.

Delivery of reaction increments is at least once: if Redis applied a flush
but its answer was lost, the increments are sent again with the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from townhall import metrics
from townhall.config import Settings
from townhall.policy.ratelimit import STORE_ERRORS

log = logging.getLogger("townhall.store")

# Ids per PFADD command (keeps each command small inside a large flush).
PFADD_CHUNK = 1000
# Extra lifetime of a listener bucket key beyond the two buckets it is read in.
BUCKET_GRACE_S = 60
# Spaces whose last-read values a node remembers (for reads while Redis is down).
MAX_REMEMBERED_SPACES = 10_000

_DROPPED = metrics.SHARED_IDS_DROPPED
_FLUSHED_IDS = metrics.SHARED_FLUSHED.labels(kind="listener_ids")
_FLUSHED_REACTIONS = metrics.SHARED_FLUSHED.labels(kind="reactions")


# ---------------------------------------------------------------- keys (pure)


def bucket_of(now_s: float, bucket_s: float) -> int:
    """The index of the time bucket ``now_s`` (epoch seconds) falls in."""
    return int(now_s // bucket_s)


def listener_keys(prefix: str, space_id: str, now_s: float, bucket_s: float) -> tuple[str, str]:
    """(current, previous) HyperLogLog keys of a space's listener count."""
    bucket = bucket_of(now_s, bucket_s)
    return f"{prefix}lc:{space_id}:{bucket}", f"{prefix}lc:{space_id}:{bucket - 1}"


def reactions_key(prefix: str, space_id: str) -> str:
    return f"{prefix}rx:{space_id}"


def bucket_ttl_s(bucket_s: float) -> int:
    """How long a bucket key must live after its last write: it is read until
    the end of the next bucket, at most two bucket lengths later."""
    return int(2 * bucket_s) + BUCKET_GRACE_S


# ---------------------------------------------------------------- buffers (pure)


class LocalCount(Protocol):
    """This node's own listener count (``live.roomstate.ListenerCounter``)."""

    def add(self, space_id: str, token_id: str) -> None: ...
    def count(self, space_id: str) -> int: ...


class ListenerBuffer:
    """Listener token ids seen since the last flush, per space, at most ``max_ids``
    in all (a renewal of an id already buffered costs nothing). Beyond that,
    ids are dropped and counted: the count then underestimates until the
    listeners renew."""

    def __init__(self, max_ids: int) -> None:
        self.max_ids = max_ids
        # while Redis is away, every id is also counted here (this node's own count)
        self.mirror: LocalCount | None = None
        self._ids: dict[str, set[str]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, space_id: str, token_id: str) -> None:
        if self.mirror is not None:
            self.mirror.add(space_id, token_id)
        ids = self._ids.get(space_id)
        if ids is None:
            ids = self._ids[space_id] = set()
        elif token_id in ids:
            return
        if self._size >= self.max_ids:
            _DROPPED.inc()
            return
        ids.add(token_id)
        self._size += 1

    def items(self) -> list[tuple[str, set[str]]]:
        return list(self._ids.items())

    def take(self) -> dict[str, set[str]]:
        """Everything buffered; the buffer is empty afterwards."""
        ids, self._ids, self._size = self._ids, {}, 0
        return {space_id: batch for space_id, batch in ids.items() if batch}

    def restore(self, batch: dict[str, set[str]]) -> None:
        """Put back a batch whose flush failed (as far as there is room)."""
        for space_id, ids in batch.items():
            for token_id in ids:
                self.add(space_id, token_id)


class ReactionBuffer:
    """Reaction increments per space since the last flush (a few emoji per
    space: bounded by the number of live spaces)."""

    def __init__(self) -> None:
        self._pending: dict[str, Counter[str]] = {}

    def __len__(self) -> int:
        return sum(sum(c.values()) for c in self._pending.values())

    def add(self, space_id: str, emoji: str) -> None:
        counter = self._pending.get(space_id)
        if counter is None:
            counter = self._pending[space_id] = Counter()
        counter[emoji] += 1

    def pending(self, space_id: str) -> Counter[str]:
        return Counter(self._pending.get(space_id, ()))

    def take(self) -> dict[str, Counter[str]]:
        pending, self._pending = self._pending, {}
        return pending

    def restore(self, batch: dict[str, Counter[str]]) -> None:
        for space_id, counter in batch.items():
            self._pending.setdefault(space_id, Counter()).update(counter)


def chunks(items: set[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- health


class RedisHealth:
    """Whether Redis is worth asking now. After a failure, callers work from
    memory for ``backoff_s`` (no request waits for a timeout meanwhile); a
    warning is logged at most every ``warn_interval_s``; every failure is
    counted in ``townhall_redis_failures_total{op}``."""

    def __init__(
        self,
        *,
        backoff_s: float,
        warn_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff_s = backoff_s
        self.warn_interval_s = warn_interval_s
        self._clock = clock
        self._down_until = float("-inf")
        self._warned_at = float("-inf")
        self._failures_unreported = 0
        self.failures = 0  # consecutive, since Redis last answered
        self.down = False

    def available(self) -> bool:
        return self._clock() >= self._down_until

    def failed(self, op: str, exc: BaseException) -> None:
        now = self._clock()
        metrics.REDIS_FAILURES.labels(op=op).inc()
        self.failures += 1
        self._failures_unreported += 1
        self.down = True
        self._down_until = now + self.backoff_s
        if now - self._warned_at >= self.warn_interval_s:
            log.warning(
                "Redis is unreachable (%s: %s: %s); this node serves from memory: "
                "listener counts and reaction totals are its last known values, "
                "sign-ins are refused. %d failure(s) since the last warning.",
                op,
                type(exc).__name__,
                exc,
                self._failures_unreported,
            )
            self._warned_at = now
            self._failures_unreported = 0

    def succeeded(self) -> None:
        if self.down:
            log.warning("Redis answers again after %d failure(s)", self.failures)
            self.down = False
            self._down_until = float("-inf")
            self.failures = 0
            self._failures_unreported = 0
            self._warned_at = float("-inf")


# ---------------------------------------------------------------- Redis I/O


@dataclass(frozen=True, slots=True)
class Tally:
    listener_count: int
    reactions: dict[str, int]
    shared: bool  # False: Redis did not answer, these are the last known values


def connect(settings: Settings) -> Any:
    """A Redis client for ``settings.redis_url`` that fails fast: bounded pool,
    connect and command timeouts of ``redis_timeout_ms``, one immediate retry
    (for a pooled connection that went stale). Connects lazily."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    timeout_s = settings.redis_timeout_ms / 1000
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
    )
    return aioredis.Redis.from_pool(pool)


class SharedState:
    """Listener count and reaction totals shared through Redis (see the module
    docstring). ``listeners.add`` and ``reactions.add`` are the hot-path
    entries; ``run`` flushes forever; ``read`` is for state.json.

    Each flush is one transaction that writes this node's increments and
    reads back the count and totals of the spaces whose state.json was asked
    for lately ("watched"), so state.json is answered from memory and never
    counts an increment twice or misses one: until the transaction's answer
    arrives, the increments it carries are shown from memory ("in flight").
    """

    def __init__(
        self,
        redis: Any,
        health: RedisHealth,
        local: LocalCount,
        *,
        prefix: str,
        bucket_s: float,
        max_ids: int,
        watch_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listeners = ListenerBuffer(max_ids)
        self.reactions = ReactionBuffer()
        self.health = health
        self.watch_s = watch_s
        self._redis = redis
        self._local = local
        self._prefix = prefix
        self._bucket_s = bucket_s
        self._clock = clock
        self._monotonic = monotonic
        self._flushing = asyncio.Lock()
        self._inflight: dict[str, Counter[str]] = {}
        # space_id -> (listener count, totals) as last read from Redis
        self._known: OrderedDict[str, tuple[int, dict[str, int]]] = OrderedDict()
        # space_id -> when its state was last asked for (monotonic)
        self._watched: OrderedDict[str, float] = OrderedDict()

    async def flush(self, *, force: bool = False) -> bool:
        """Write what was buffered since the last flush and read the watched
        spaces back, in one transaction. True when Redis answered (or there
        was nothing to do); on failure, or while Redis is known to be down,
        the buffers stay for the next flush and this node counts its own
        listeners meanwhile."""
        async with self._flushing:
            watched = self._prune_watched()
            if not self.listeners and not self.reactions and not watched:
                return True
            if not force and not self.health.available():
                self._count_locally()
                return False
            ids = self.listeners.take()
            self._inflight = self.reactions.take()
            now_s = self._clock()
            ttl_s = bucket_ttl_s(self._bucket_s)
            pipe = self._redis.pipeline(transaction=True)
            n_ids = n_reactions = 0
            for space_id, batch in ids.items():
                key = listener_keys(self._prefix, space_id, now_s, self._bucket_s)[0]
                for chunk in chunks(batch, PFADD_CHUNK):
                    pipe.pfadd(key, *chunk)
                pipe.expire(key, ttl_s)
                n_ids += len(batch)
            for space_id, counter in self._inflight.items():
                key = reactions_key(self._prefix, space_id)
                for emoji, n in counter.items():
                    pipe.hincrby(key, emoji, n)
                    n_reactions += n
            n_writes = len(pipe)
            for space_id in watched:
                pipe.pfcount(*listener_keys(self._prefix, space_id, now_s, self._bucket_s))
                pipe.hgetall(reactions_key(self._prefix, space_id))
            try:
                answers = await pipe.execute()  # resets the pipeline, also on failure
            except STORE_ERRORS as exc:
                self.listeners.restore(ids)
                self.reactions.restore(self._inflight)
                self._inflight = {}
                self.health.failed("flush", exc)
                self._count_locally()
                return False
            # no await from here on: the new totals replace the in-flight increments at once
            reads = answers[n_writes:]
            for i, space_id in enumerate(watched):
                self._remember(space_id, int(reads[2 * i]), _totals(reads[2 * i + 1]))
            self._inflight = {}
            self.health.succeeded()
            self.listeners.mirror = None
            _FLUSHED_IDS.inc(n_ids)
            _FLUSHED_REACTIONS.inc(n_reactions)
            return True

    async def read(self, space_id: str) -> Tally:
        """The shared listener count and reaction totals of a space, as of the
        last flush, plus this node's reactions since. The first read of a
        space (or the first after a quiet spell) asks Redis directly; from
        then on each flush refreshes it. While Redis is unreachable: the last
        values read, and this node's own count if larger."""
        watching = space_id in self._watched and space_id in self._known
        self._watched[space_id] = self._monotonic()
        self._watched.move_to_end(space_id)
        if not watching and self.health.available():
            try:
                count, totals = await self._read_redis(space_id)
            except STORE_ERRORS as exc:
                self.health.failed("read", exc)
            else:
                self.health.succeeded()
                self._remember(space_id, count, totals)
        count, totals = self._known.get(space_id, (0, {}))
        shown = Counter(totals)
        shown.update(self._inflight.get(space_id, ()))
        shown.update(self.reactions.pending(space_id))
        if self.health.down:
            count = max(count, self._local.count(space_id))
        return Tally(count, dict(shown), shared=not self.health.down)

    async def _read_redis(self, space_id: str) -> tuple[int, dict[str, int]]:
        current, previous = listener_keys(self._prefix, space_id, self._clock(), self._bucket_s)
        pipe = self._redis.pipeline(transaction=False)
        pipe.pfcount(current, previous)
        pipe.hgetall(reactions_key(self._prefix, space_id))
        count, raw = await pipe.execute()
        return int(count), _totals(raw)

    def _remember(self, space_id: str, count: int, totals: dict[str, int]) -> None:
        self._known[space_id] = (count, totals)
        self._known.move_to_end(space_id)
        while len(self._known) > MAX_REMEMBERED_SPACES:
            self._known.popitem(last=False)

    def _prune_watched(self) -> list[str]:
        """The spaces asked for within ``watch_s`` (the others are forgotten)."""
        horizon = self._monotonic() - self.watch_s
        while self._watched and (
            next(iter(self._watched.values())) < horizon
            or len(self._watched) > MAX_REMEMBERED_SPACES
        ):
            self._watched.popitem(last=False)
        return list(self._watched)

    def _count_locally(self) -> None:
        """Redis is away: count this node's listeners here from now on, starting
        with those buffered since the last flush that Redis took."""
        if self.listeners.mirror is None:
            for space_id, batch in self.listeners.items():
                for token_id in batch:
                    self._local.add(space_id, token_id)
            self.listeners.mirror = self._local

    async def ping(self) -> bool:
        """Try Redis once (at start-up, so an unreachable Redis is reported at once)."""
        try:
            await self._redis.ping()
        except STORE_ERRORS as exc:
            self.health.failed("connect", exc)
            return False
        self.health.succeeded()
        return True

    async def run(self, interval_s: float) -> None:
        """Flush every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception:
                metrics.REDIS_FAILURES.labels(op="flush").inc()
                log.exception("flushing shared state to Redis failed unexpectedly")

    async def close(self) -> None:
        """Last flush at shutdown (tried even while Redis looked down)."""
        pending = len(self.reactions)
        if not await self.flush(force=True) and pending:
            log.warning(
                "shutting down with %d reaction(s) not written to Redis: they are lost", pending
            )


def _totals(raw: Any) -> dict[str, int]:
    return {_text(k): int(v) for k, v in dict(raw).items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
