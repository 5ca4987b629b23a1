"""The space feed: each node publishes the spaces it writes (created, started,
ended, cap set) on one Redis pub/sub channel under the deployment's key
prefix, and every node puts what it hears into its space index at once, so
a go-live draws and shows in queue.json on every node within milliseconds
instead of at each node's next index refresh.

The feed is an accelerator, not the source of truth: pub/sub loses what is
published while a subscriber is disconnected, so the periodic index refresh
(``server/services.py``) stays on, and this feed asks for one at once
(``on_gap``) each time it subscribes again. Reordering is harmless:
``SpaceIndex.put_entry`` never moves a space back. Guarantees:

- publishing never waits for Redis: a change goes into a bounded queue
  (``queue``) that one task sends; a full queue or a failed send drops the
  change (counted);
- the subscriber never stops: a lost subscription (Redis away, its
  connection killed, a ping unanswered for two ``ping_s``) is made again
  after ``backoff_s``, doubled after each failure in a row up to
  ``backoff_max_s`` (counted in ``townhall_space_feed_reconnects_total``);
- a message that is not a space change (``store/space_change.py``) is
  ignored and counted, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from townhall import metrics
from townhall.config import Settings
from townhall.policy.ratelimit import STORE_ERRORS
from townhall.store.space_change import BadSpaceChange, encode_change, parse_change
from townhall.store.space_index import IndexEntry, SpaceIndex

log = logging.getLogger("townhall.store")

WARN_INTERVAL_S = 30.0  # a failing feed logs at most this often


def channel_of(prefix: str) -> str:
    return f"{prefix}spaces:changes"


def connect_subscriber(settings: Settings, name: str) -> Any:
    """A client of its own for the subscription: no read timeout (it waits for
    messages; ``ping_s`` finds a dead link), a named connection (CLIENT LIST
    shows whose it is), and no retry inside redis-py (the feed reconnects
    itself, with backoff, and counts it)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_ms / 1000,
        socket_timeout=None,
        client_name=name,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    running: bool  # both tasks (sending, listening) alive
    subscribed: bool
    queued: int
    published: int
    dropped: int
    received: int
    applied: int
    bad: int
    reconnects: int


class SpaceFeed:
    """One node's end of the feed (see the module docstring). ``publish`` is
    what ``Spaces.on_change`` calls; ``on_applied(space_id)`` is told of each
    change another node made that changed this node's index; ``on_gap`` when
    changes may have been missed (each subscription after the first)."""

    def __init__(
        self,
        redis: Any,
        subscriber: Any,
        index: SpaceIndex,
        *,
        prefix: str,
        node: str,
        on_applied: Callable[[str], None],
        on_gap: Callable[[], None],
        queue: int = 256,
        max_message_bytes: int = 4096,
        backoff_s: float = 0.1,
        backoff_max_s: float = 5.0,
        ping_s: float = 5.0,
    ) -> None:
        self.redis = redis
        self.subscriber = subscriber
        self.index = index
        self.channel = channel_of(prefix)
        self.node = node
        self.on_applied = on_applied
        self.on_gap = on_gap
        self.max_message_bytes = max_message_bytes
        self.backoff_s = backoff_s
        self.backoff_max_s = max(backoff_s, backoff_max_s)
        self.ping_s = ping_s
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue)
        self._subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._counts = {"published": 0, "dropped": 0, "received": 0, "applied": 0, "bad": 0}
        self._reconnects = 0
        self._warned_at: dict[str, float] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._send_forever(), name="townhall-space-feed-send"),
                asyncio.create_task(self._listen_forever(), name="townhall-space-feed-listen"),
            ]

    async def wait_subscribed(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        return self._subscribed.is_set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.subscriber.aclose()

    def statistics(self) -> FeedStatistics:
        return FeedStatistics(
            running=bool(self._tasks) and not any(t.done() for t in self._tasks),
            subscribed=self._subscribed.is_set(),
            queued=self._outbox.qsize(),
            reconnects=self._reconnects,
            **self._counts,
        )

    # ------------------------------------------------------------ publishing

    def publish(self, space_id: str, entry: IndexEntry) -> None:
        """Queue this node's change of ``space_id`` for the other nodes; never waits."""
        try:
            self._outbox.put_nowait(encode_change(self.node, space_id, entry))
        except asyncio.QueueFull:
            self._dropped("queue_full")

    def _dropped(self, reason: str) -> None:
        self._counts["dropped"] += 1
        metrics.SPACE_FEED_DROPPED.labels(reason=reason).inc()

    async def _send_forever(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self.redis.publish(self.channel, message)
            except STORE_ERRORS as exc:
                self._dropped("redis")
                self._warn(
                    "publish", "cannot publish a space change (%s: %s)", type(exc).__name__, exc
                )
            else:
                self._counts["published"] += 1
                metrics.SPACE_FEED_PUBLISHED.inc()

    # ------------------------------------------------------------ receiving

    def receive(self, data: bytes) -> bool:
        """Apply one message from the channel: whether it changed the index.
        A bad message is counted and ignored."""
        self._counts["received"] += 1
        try:
            change = parse_change(data, max_bytes=self.max_message_bytes)
        except BadSpaceChange as exc:
            self._counts["bad"] += 1
            metrics.SPACE_FEED_RECEIVED.labels(outcome="bad").inc()
            self._warn("bad", "ignored a space feed message: %s", exc)
            return False
        if change.node == self.node:
            metrics.SPACE_FEED_RECEIVED.labels(outcome="own").inc()
            return False
        if not self.index.put_entry(change.space_id, change.entry):
            metrics.SPACE_FEED_RECEIVED.labels(outcome="unchanged").inc()
            return False
        self._counts["applied"] += 1
        metrics.SPACE_FEED_RECEIVED.labels(outcome="applied").inc()
        self.on_applied(change.space_id)
        return True

    async def _listen_forever(self) -> None:
        failures = 0  # in a row, without a subscription between
        first = True
        while True:
            lost = True
            try:
                await self._listen_once(first)
                lost = False  # fell silent: subscribe again at once
            except STORE_ERRORS as exc:
                self._warn(
                    "lost",
                    "the space feed's subscription was lost (%s: %s)",
                    type(exc).__name__,
                    exc,
                )
            except Exception:  # the task's top level: log, count, subscribe again
                metrics.TASK_FAILURES.labels(task="space-feed").inc()
                log.exception("the space feed failed; subscribing again")
            if self._subscribed.is_set():
                failures = 0  # it worked for a while: the backoff starts over
            self._subscribed.clear()
            first = False
            self._reconnects += 1
            metrics.SPACE_FEED_RECONNECTS.inc()
            if lost:
                await asyncio.sleep(min(self.backoff_max_s, self.backoff_s * 2**failures))
                failures = min(failures + 1, 30)

    async def _listen_once(self, first: bool) -> None:
        """Subscribe, then apply messages until the link is lost (raises) or
        falls silent for two pings (returns)."""
        pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self._subscribed.set()
            if not first:
                self.on_gap()  # what was published meanwhile is lost: refresh now
            heard_at = time.monotonic()
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=self.ping_s)
                if message is not None:
                    heard_at, pinged = time.monotonic(), False
                    if message.get("type") == "message":
                        data = message.get("data")
                        self.receive(data if isinstance(data, bytes) else b"")
                    continue
                if time.monotonic() - heard_at < self.ping_s:
                    continue
                if pinged:
                    self._warn(
                        "silent", "the space feed's subscription fell silent; subscribing again"
                    )
                    return
                await pubsub.ping()  # answered with a pong message
                pinged = True
        finally:
            with contextlib.suppress(*STORE_ERRORS, RuntimeError):
                await pubsub.aclose()

    def _warn(self, kind: str, text: str, *args: object) -> None:
        """A warning of ``kind`` at most every WARN_INTERVAL_S (all are counted)."""
        now = time.monotonic()
        if now - self._warned_at.get(kind, float("-inf")) >= WARN_INTERVAL_S:
            self._warned_at[kind] = now
            log.warning(text, *args)
