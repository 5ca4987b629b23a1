"""The space feed on the machine's real Redis (a key prefix, so a channel, of
each test's own): a change published by one node is in the other's index at
once; the subscription survives its connection being killed (CLIENT KILL of
that one connection, found by its name) and goes on receiving; with Redis
unreachable it retries with backoff and never stops."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.scale.conftest import REDIS_URL, unreachable
from townhall.config import Settings
from townhall.store.shared import connect
from townhall.store.space_feed import SpaceFeed, connect_subscriber
from townhall.store.space_index import IndexEntry, SpaceIndex

WAIT_S = 5.0


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    import redis.asyncio as aioredis

    client: Any = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        unreachable("Redis", REDIS_URL, exc, "TOWNHALL_TEST_REDIS_URL")
    finally:
        await client.aclose()
    yield f"townhall-test:{secrets.token_hex(6)}:"  # pub/sub leaves no keys behind


class Node:
    def __init__(self, tmp_path: Path, prefix: str, name: str, url: str = REDIS_URL) -> None:
        settings = Settings(data_dir=tmp_path / name, redis_url=url, redis_prefix=prefix)
        self.client_name = f"{prefix}space-feed:{name}"
        self.index = SpaceIndex()
        self.applied: list[str] = []
        self.gaps = 0
        self.redis = connect(settings)
        self.feed = SpaceFeed(
            self.redis,
            connect_subscriber(settings, self.client_name),
            self.index,
            prefix=prefix,
            node=name,
            on_applied=self.applied.append,
            on_gap=self._gap,
            backoff_s=0.05,
            backoff_max_s=0.4,
            ping_s=0.5,
        )

    def _gap(self) -> None:
        self.gaps += 1

    async def close(self) -> None:
        await self.feed.close()
        await self.redis.aclose()


@pytest.fixture
async def nodes(tmp_path: Path, prefix: str) -> AsyncIterator[tuple[Node, Node]]:
    """Nodes a and b, both subscribed."""
    a, b = Node(tmp_path, prefix, "a"), Node(tmp_path, prefix, "b")
    try:
        for node in (a, b):
            node.feed.start()
            assert await node.feed.wait_subscribed(WAIT_S)
        yield a, b
    finally:
        await a.close()
        await b.close()


async def until(check: Any, what: str, timeout_s: float = WAIT_S) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, what
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_a_change_reaches_the_other_node_at_once(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    b.index.put("s1", "scheduled", "public")
    a.feed.publish("s1", IndexEntry("live", "public", None, 100))
    took = await until(lambda: b.applied == ["s1"], "node b never heard of the go-live")
    assert took < 0.5
    assert b.index.get("s1") == IndexEntry("live", "public", None, 100)
    assert a.applied == []  # a node's own change is not applied twice
    assert a.feed.statistics().published == 1


async def kill_connection(name: str) -> None:
    """CLIENT KILL of the one connection called ``name`` (this test's own)."""
    import redis.asyncio as aioredis

    admin: Any = aioredis.Redis.from_url(REDIS_URL)
    try:
        ids = [c["id"] for c in await admin.client_list() if c.get("name") == name]
        assert len(ids) == 1, f"expected one connection named {name}, found {len(ids)}"
        await admin.execute_command("CLIENT", "KILL", "ID", ids[0])
    finally:
        await admin.aclose()


async def test_the_subscriber_survives_its_connection_killed(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await kill_connection(b.client_name)
    await until(lambda: b.feed.statistics().reconnects == 1, "no reconnect counted")
    assert await b.feed.wait_subscribed(WAIT_S)
    assert b.gaps == 1  # what was published meanwhile: an index refresh at once
    a.feed.publish("s2", IndexEntry("live", "public"))
    await until(lambda: b.applied == ["s2"], "node b stopped receiving after the kill")
    await kill_connection(b.client_name)  # and again: the backoff started over
    await until(lambda: b.feed.statistics().reconnects == 2, "no second reconnect")
    assert await b.feed.wait_subscribed(WAIT_S)
    a.feed.publish("s3", IndexEntry("ended", "public"))
    await until(lambda: b.applied == ["s2", "s3"], "node b stopped receiving")


async def test_unreachable_redis_is_retried_with_backoff(tmp_path: Path, prefix: str) -> None:
    # port 9 (discard) on this machine: nothing listens, connects are refused
    node = Node(tmp_path, prefix, "lonely", url="redis://127.0.0.1:9/0")
    try:
        node.feed.start()
        await asyncio.sleep(1.0)
        stats = node.feed.statistics()
        # 0.05, 0.1, 0.2, then 0.4 s apart: a handful of attempts, not a spin
        assert 3 <= stats.reconnects <= 8, stats
        assert stats.running and not stats.subscribed
        node.feed.publish("s1", IndexEntry("live", "public"))  # dropped, counted, no raise
        await until(lambda: node.feed.statistics().dropped == 1, "the failed publish not counted")
        assert node.feed.statistics().running
    finally:
        await node.close()
