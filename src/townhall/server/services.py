"""The long-lived objects one server process holds, opened at start-up and
closed at shutdown, in that order. Route handlers reach them through
``request.app.state.services``.

Owners: the control plane adds its database, tokens and limits here; the live
plane adds its registry of running rooms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from townhall import metrics
from townhall.config import Settings
from townhall.live.registry import RoomRegistry
from townhall.live.roomstate import (
    ListenerCounter,
    ListenerSink,
    ReactionSink,
    ReactionTotals,
    StateCache,
)
from townhall.policy.ratelimit import (
    FailClosed,
    FailOver,
    Limit,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
)
from townhall.policy.tokens import TokenSigner, load_keys
from townhall.server.auth import Networks, parse_networks
from townhall.store.accounts import Accounts, Passwords, utcnow
from townhall.store.db import Database
from townhall.store.shared import RedisHealth, SharedState, connect
from townhall.store.spaces import SpaceIndex, Spaces

log = logging.getLogger("townhall.store")

# Rows changed this long before the previous refresh are read again, so a write
# that committed late (or on a node whose clock is a little behind) is not missed.
INDEX_REFRESH_OVERLAP_S = 10.0

SIGNIN_PAUSED = (
    "Sign-in is paused because this server cannot reach its shared rate-limit store, and "
    "it refuses sign-ins rather than let password guessing through unlimited; try again in a "
    "moment."
)


@dataclass
class Limits:
    """The rate limiters of the control plane: in-process, or shared through
    Redis when ``redis_url`` is set. With Redis unreachable, sign-in refuses
    (503, fail closed) and the others fall back to per-node limits."""

    signin_account: Limiter
    signin_network: Limiter
    signup_network: Limiter
    reactions: Limiter


@dataclass
class Services:
    settings: Settings
    db: Database = field(repr=False)
    accounts: Accounts = field(repr=False)
    spaces: Spaces = field(repr=False)
    tokens: TokenSigner = field(repr=False)
    limits: Limits = field(repr=False)
    rooms: RoomRegistry = field(repr=False)
    # join and react feed these (memory only): the node's own tallies, or the
    # buffers towards Redis when ``shared`` is set
    listeners: ListenerSink = field(repr=False)
    reactions: ReactionSink = field(repr=False)
    state: StateCache = field(repr=False)
    redis: Any = field(default=None, repr=False)
    shared: SharedState | None = field(default=None, repr=False)
    # proxies whose X-Forwarded-For is believed (settings.trusted_proxies)
    trusted_proxies: Networks = ()
    _refresher: asyncio.Task[None] | None = field(default=None, repr=False)
    _flusher: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        """Create the data directory, apply migrations, load keys, start rooms."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url())
        await db.migrate()
        tokens = TokenSigner(load_keys(settings.signing_keys, settings.data_dir))
        passwords = Passwords(
            time_cost=settings.argon2_time_cost, memory_kib=settings.argon2_memory_kib
        )
        redis: Any = None
        health: RedisHealth | None = None
        if settings.redis_url:
            redis = connect(settings)
            health = RedisHealth(
                backoff_s=settings.redis_backoff_ms / 1000,
                warn_interval_s=settings.redis_warn_interval_s,
            )
        spaces = Spaces(
            db,
            max_cohosts=settings.max_cohosts,
            max_speakers=settings.max_speakers,
            max_schedule_ahead_days=settings.max_schedule_ahead_days,
            index=SpaceIndex(),
        )
        await spaces.refresh_index(None)
        local_count = ListenerCounter(ttl_s=settings.listener_token_ttl_s)
        listeners: ListenerSink = local_count
        reactions: ReactionSink = ReactionTotals()
        shared_state: SharedState | None = None
        if redis is not None and health is not None:
            shared_state = SharedState(
                redis,
                health,
                local_count,
                prefix=settings.redis_prefix,
                bucket_s=settings.listener_token_ttl_s,
                max_ids=settings.shared_flush_max_ids,
            )
            listeners, reactions = shared_state.listeners, shared_state.reactions
            if await shared_state.ping():
                log.info("shared state in Redis (key prefix %r)", settings.redis_prefix)
        services = cls(
            settings=settings,
            db=db,
            accounts=Accounts(db, passwords),
            spaces=spaces,
            tokens=tokens,
            limits=_limits(settings, redis, health),
            rooms=RoomRegistry(settings),
            listeners=listeners,
            reactions=reactions,
            state=StateCache(interval_s=settings.state_interval_ms / 1000),
            redis=redis,
            shared=shared_state,
            trusted_proxies=parse_networks(settings.trusted_proxies),
        )
        for space_id in await spaces.live_ids():
            try:
                await services.rooms.start(space_id)
            except Exception:
                # One room that cannot resume must not keep the others down.
                log.exception("could not resume live space %s", space_id)
        services._refresher = asyncio.create_task(
            services._refresh_index_forever(), name="townhall-space-index"
        )
        if shared_state is not None:
            services._flusher = asyncio.create_task(
                shared_state.run(settings.state_interval_ms / 1000), name="townhall-shared-flush"
            )
        return services

    async def close(self) -> None:
        """Stop rooms (finishing their recordings), flush what Redis has not
        seen yet, then close connections."""
        for task in (self._refresher, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.rooms.close()
        if self.shared is not None:
            await self.shared.close()
        await self.db.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _refresh_index_forever(self) -> None:
        """Keep the join path's index in step with writes made by other nodes."""
        period_s = self.settings.space_index_refresh_ms / 1000
        since = utcnow()
        while True:
            await asyncio.sleep(period_s)
            started = utcnow()
            try:
                await self.spaces.refresh_index(since - timedelta(seconds=INDEX_REFRESH_OVERLAP_S))
            except Exception:
                metrics.SPACE_INDEX_REFRESH_FAILURES.inc()
                log.exception("space index refresh failed; retrying")
                continue
            since = started


def _limits(settings: Settings, redis: Any, health: RedisHealth | None) -> Limits:
    retry_s = max(1.0, settings.redis_backoff_ms / 1000)

    def make(limit: Limit, name: str, *, fail_closed: bool = False) -> Limiter:
        memory = MemoryLimiter(limit, max_keys=settings.rate_limit_max_keys)
        if redis is None or health is None:
            return memory
        inner = RedisLimiter(redis, limit, prefix=f"{settings.redis_prefix}rl:{name}:")
        if fail_closed:
            return FailClosed(
                inner, health, detail=SIGNIN_PAUSED, retry_after_s=retry_s, op=f"ratelimit-{name}"
            )
        return FailOver(inner, memory, health, op=f"ratelimit-{name}")

    return Limits(
        signin_account=make(
            Limit(settings.signin_per_account_per_min, 60.0), "signin-account", fail_closed=True
        ),
        signin_network=make(
            Limit(settings.signin_per_network_per_min, 60.0), "signin-network", fail_closed=True
        ),
        signup_network=make(Limit(settings.signin_per_network_per_min, 60.0), "signup-network"),
        reactions=make(Limit(settings.reactions_per_token_per_10s, 10.0), "reactions"),
    )
