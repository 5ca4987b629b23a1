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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from townhall import metrics
from townhall.config import Settings
from townhall.errors import DatabaseUnavailable
from townhall.live.registry import RoomRegistry
from townhall.live.roomstate import (
    ListenerCounter,
    ListenerSink,
    ReactionSink,
    ReactionTotals,
    StateCache,
    load_presence,
    save_presence,
)
from townhall.policy.ratelimit import (
    FailClosed,
    FailOver,
    Limit,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
)
from townhall.policy.tickets import TicketSigner
from townhall.policy.tokens import Revocations, TokenSigner, load_keys
from townhall.server.admission import Admission
from townhall.server.auth import Networks, parse_networks
from townhall.server.defense import Defense
from townhall.server.evidence_node import EvidenceNode
from townhall.server.presence import Presence
from townhall.store.accounts import Accounts, Passwords, utcnow
from townhall.store.admission import AdmissionStore, MemoryAdmission, RedisAdmission
from townhall.store.db import Database
from townhall.store.revoked import SharedRevocations
from townhall.store.shared import RedisHealth, SharedState, connect
from townhall.store.space_feed import SpaceFeed, connect_subscriber
from townhall.store.space_index import IndexEntry, SpaceIndex
from townhall.store.spaces import SpaceLimits, Spaces

log = logging.getLogger("townhall.store")

# Rows changed this long before the previous refresh are read again, so a write
# that committed late (or on a node whose clock is a little behind) is not missed.
INDEX_REFRESH_OVERLAP_S = 10.0
# this node's listener counts, saved at shutdown for the next process (issue 12)
PRESENCE_FILE = "listener-presence.json"

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
    admission: Admission = field(repr=False)
    redis: Any = field(default=None, repr=False)
    shared: SharedState | None = field(default=None, repr=False)
    # proxies whose X-Forwarded-For is believed (settings.trusted_proxies)
    trusted_proxies: Networks = ()
    # sign-outs shared with the other nodes (None: one node, tokens.revocations only)
    revoked: SharedRevocations | None = field(default=None, repr=False)
    _revocation_sync: asyncio.Task[None] | None = field(default=None, repr=False)
    # what each space saw, signed (issue 10)
    evidence: EvidenceNode | None = field(default=None, repr=False)
    defense: Defense | None = field(default=None, repr=False)
    _refresher: asyncio.Task[None] | None = field(default=None, repr=False)
    _flusher: asyncio.Task[None] | None = field(default=None, repr=False)
    _admitter: asyncio.Task[None] | None = field(default=None, repr=False)
    _absence: asyncio.Task[None] | None = field(default=None, repr=False)
    # other nodes' space changes as they happen (None: one node, or space_feed off)
    feed: SpaceFeed | None = field(default=None, repr=False)
    _refresh_now: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    local_count: ListenerCounter | None = field(default=None, repr=False)
    presence: Presence | None = field(default=None, repr=False)

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        """Create the data directory, apply migrations, load keys, start rooms."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(
            settings.resolved_database_url(),
            timeout_s=settings.database_timeout_ms / 1000,
            retry_after_s=settings.database_retry_after_s,
        )
        await db.migrate()
        keys = load_keys(settings.signing_keys, settings.data_dir)
        tokens = TokenSigner(keys)
        tokens.revocations = Revocations(
            horizon_s=settings.session_ttl_s,
            max_entries=settings.revoked_sessions_max,
            on_evict=metrics.REVOCATIONS_EVICTED.inc,
        )
        passwords = Passwords(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            workers=settings.password_hash_workers,
            queue=settings.password_hash_queue,
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
            limits=SpaceLimits(
                live=settings.spaces_live_per_account,
                scheduled=settings.spaces_scheduled_per_account,
                created_per_hour=settings.spaces_created_per_account_per_hour,
            ),
        )
        await spaces.refresh_index(None)
        # who is listening now: ids seen within one to two half presence windows
        local_count = ListenerCounter(ttl_s=settings.listener_presence_s / 2)
        restored = load_presence(
            local_count,
            settings.data_dir / PRESENCE_FILE,
            now_s=time.time(),
            # pages whose token is still valid come back to a restarted server
            max_age_s=settings.listener_token_ttl_s,
        )
        if restored:
            log.info("listener counts of %d space(s) taken over from the last run", restored)
        listeners: ListenerSink = local_count
        reactions: ReactionSink = ReactionTotals()
        shared_state: SharedState | None = None
        if redis is not None and health is not None:
            shared_state = SharedState(
                redis,
                health,
                local_count,
                prefix=settings.redis_prefix,
                bucket_s=settings.listener_presence_s / 2,
                max_ids=settings.shared_flush_max_ids,
            )
            listeners, reactions = shared_state.listeners, shared_state.reactions
            if await shared_state.ping():
                log.info("shared state in Redis (key prefix %r)", settings.redis_prefix)
        admission_store: AdmissionStore = (
            MemoryAdmission()
            if redis is None
            else RedisAdmission(
                redis, prefix=settings.redis_prefix, tick_ms=settings.queue_interval_ms
            )
        )
        admission = Admission(
            settings,
            admission_store,
            tokens,
            TicketSigner(keys, settings.ticket_ttl_s),
            spaces.index,
            health=health,
        )
        services = cls(
            settings=settings,
            db=db,
            accounts=Accounts(db, passwords),
            spaces=spaces,
            tokens=tokens,
            limits=_limits(settings, redis, health),
            rooms=_rooms(settings),
            listeners=listeners,
            reactions=reactions,
            state=StateCache(interval_s=settings.state_interval_ms / 1000),
            admission=admission,
            redis=redis,
            shared=shared_state,
            trusted_proxies=parse_networks(settings.trusted_proxies),
            local_count=local_count,
        )
        if settings.bus_enabled and redis is not None:
            services.rooms.scaleout = _scaleout(settings, redis, spaces, services.rooms)
        services.presence = Presence(settings, listeners, local_count)
        services.evidence = EvidenceNode(settings, _state_of(spaces), services.presence.local_count)
        services.evidence.start()
        services.defense = Defense(settings, services.evidence, keys[0], tokens=tokens)
        services.defense.start()
        if settings.media_process:
            await cast(Any, services.rooms).open()  # spawned now, not at the first go-live
        for space_id in await spaces.live_ids():
            try:
                await services.rooms.start(space_id)
            except Exception:
                # One room that cannot resume must not keep the others down.
                log.exception("could not resume live space %s", space_id)
        if redis is not None and settings.space_feed:
            services.feed = _feed(settings, redis, spaces, admission, services._refresh_now)
        spaces.on_change = services._changed
        services._refresher = asyncio.create_task(
            services._refresh_index_forever(), name="townhall-space-index"
        )
        if services.rooms.scaleout is not None:
            await services.rooms.scaleout.wait_synced(settings.bus_block_ms / 1000 + 2.0)
            services.rooms.scaleout.start_supervisor()
        if redis is not None and health is not None:
            services.revoked = SharedRevocations(
                redis, health, tokens.revocations, prefix=settings.redis_prefix
            )
            services._revocation_sync = asyncio.create_task(
                services.revoked.run(settings.revocation_sync_ms / 1000),
                name="townhall-revocation-sync",
            )
        services._admitter = asyncio.create_task(admission.run(), name="townhall-admission")
        if settings.host_absent_end_s > 0:
            from townhall.server.absence import end_abandoned_forever

            services._absence = asyncio.create_task(
                end_abandoned_forever(services), name="townhall-absent-hosts"
            )
        if shared_state is not None:
            services._flusher = asyncio.create_task(
                shared_state.run(settings.state_interval_ms / 1000), name="townhall-shared-flush"
            )
        return services

    def _changed(self, space_id: str, entry: IndexEntry) -> None:
        """This node wrote a space: tell the other nodes, and look for a go-live here."""
        if self.feed is not None:
            self.feed.publish(space_id, entry)
        self.admission.may_have_gone_live()

    async def close(self) -> None:
        """Stop rooms (finishing their recordings), flush what Redis has not
        seen yet, then close connections."""
        if self.feed is not None:
            await self.feed.close()
        for task in (
            self._refresher,
            self._flusher,
            self._revocation_sync,
            self._admitter,
            self._absence,
        ):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.rooms.close()
        if self.local_count is not None:
            try:
                save_presence(
                    self.local_count, self.settings.data_dir / PRESENCE_FILE, now_s=time.time()
                )
            except OSError as exc:
                log.warning("could not save the listener counts for the next run: %s", exc)
        if self.defense is not None:
            await self.defense.close()
        if self.evidence is not None:
            await self.evidence.close()
        if self.shared is not None:
            await self.shared.close()
        await self.db.close()
        self.accounts.passwords.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _refresh_index_forever(self) -> None:
        """Keep the join path's index in step with writes made by other nodes."""
        period_s = self.settings.space_index_refresh_ms / 1000
        since = utcnow()
        while True:
            # the period, or at once when the space feed may have missed changes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), period_s)
            self._refresh_now.clear()
            started = utcnow()
            try:
                await self.spaces.refresh_index(since - timedelta(seconds=INDEX_REFRESH_OVERLAP_S))
            except DatabaseUnavailable:
                # the database warns (rate-limited); joins go on from the index
                metrics.SPACE_INDEX_REFRESH_FAILURES.inc()
                continue
            except Exception:
                metrics.SPACE_INDEX_REFRESH_FAILURES.inc()
                log.exception("space index refresh failed; retrying")
                continue
            since = started


def _rooms(settings: Settings) -> RoomRegistry:
    """Rooms in this process, or (``media_process``) in a media process of their own."""
    if not settings.media_process:
        return RoomRegistry(settings)
    from townhall.live.mediarooms import MediaRooms

    return cast(RoomRegistry, MediaRooms(settings))  # the same calls (live/mediarooms.py)


def _scaleout(settings: Settings, redis: Any, spaces: Spaces, rooms: RoomRegistry) -> Any:
    """Issue 11: leases, the segment bus and followers (``live/scaleout.py``)."""
    from townhall.live.scaleout import Scaleout

    def is_live(space_id: str) -> bool:
        entry = spaces.index.get(space_id)
        return entry is not None and entry.state == "live"

    scaleout = Scaleout(settings, redis, is_live=is_live, live_ids=spaces.live_ids)
    scaleout.rooms = rooms
    return scaleout


def _feed(
    settings: Settings, redis: Any, spaces: Spaces, admission: Admission, gap: asyncio.Event
) -> SpaceFeed:
    """The space feed (``store/space_feed.py``), subscribed in the background."""
    from townhall.live.scaleout import node_name

    node = node_name(settings)
    feed = SpaceFeed(
        redis,
        connect_subscriber(settings, f"{settings.redis_prefix}space-feed:{node}"),
        spaces.index,
        prefix=settings.redis_prefix,
        node=node,
        on_applied=lambda _space_id: admission.may_have_gone_live(),
        on_gap=gap.set,
        queue=settings.space_feed_queue,
        max_message_bytes=settings.space_feed_max_message_bytes,
        backoff_s=settings.space_feed_backoff_ms / 1000,
        backoff_max_s=settings.space_feed_backoff_max_ms / 1000,
        ping_s=settings.space_feed_ping_s,
    )
    feed.start()
    return feed


def _state_of(spaces: Spaces) -> Callable[[str], str | None]:
    def state_of(space_id: str) -> str | None:
        entry = spaces.index.get(space_id)
        return None if entry is None else entry.state

    return state_of


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
