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

from townhall.config import Settings
from townhall.live.registry import RoomRegistry
from townhall.policy.ratelimit import Limit, Limiter, MemoryLimiter, RedisLimiter
from townhall.policy.tokens import TokenSigner, load_keys
from townhall.server import metrics
from townhall.server.listener import ListenerCounter, ReactionTotals, StateCache
from townhall.store.accounts import Accounts, Passwords, utcnow
from townhall.store.db import Database
from townhall.store.spaces import SpaceIndex, Spaces

log = logging.getLogger("townhall.store")

# Rows changed this long before the previous refresh are read again, so a write
# that committed late (or on a node whose clock is a little behind) is not missed.
INDEX_REFRESH_OVERLAP_S = 10.0


@dataclass
class Limits:
    """The rate limiters of the control plane (in-process, or Redis when set)."""

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
    listeners: ListenerCounter = field(repr=False)
    reactions: ReactionTotals = field(repr=False)
    state: StateCache = field(repr=False)
    redis: Any = field(default=None, repr=False)
    _refresher: asyncio.Task[None] | None = field(default=None, repr=False)

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
        redis = None
        if settings.redis_url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis_url)
        spaces = Spaces(
            db,
            max_cohosts=settings.max_cohosts,
            max_speakers=settings.max_speakers,
            max_schedule_ahead_days=settings.max_schedule_ahead_days,
            index=SpaceIndex(),
        )
        await spaces.refresh_index(None)
        services = cls(
            settings=settings,
            db=db,
            accounts=Accounts(db, passwords),
            spaces=spaces,
            tokens=tokens,
            limits=_limits(settings, redis),
            rooms=RoomRegistry(settings),
            listeners=ListenerCounter(ttl_s=settings.listener_token_ttl_s),
            reactions=ReactionTotals(),
            state=StateCache(interval_s=settings.state_interval_ms / 1000),
            redis=redis,
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
        return services

    async def close(self) -> None:
        """Stop rooms (finishing their recordings), then close connections."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.rooms.close()
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


def _limits(settings: Settings, redis: Any) -> Limits:
    def make(limit: Limit, name: str) -> Limiter:
        if redis is not None:
            return RedisLimiter(redis, limit, prefix=f"townhall:rl:{name}:")
        return MemoryLimiter(limit, max_keys=settings.rate_limit_max_keys)

    return Limits(
        signin_account=make(Limit(settings.signin_per_account_per_min, 60.0), "signin-account"),
        signin_network=make(Limit(settings.signin_per_network_per_min, 60.0), "signin-network"),
        signup_network=make(Limit(settings.signin_per_network_per_min, 60.0), "signup-network"),
        reactions=make(Limit(settings.reactions_per_token_per_10s, 10.0), "reactions"),
    )
