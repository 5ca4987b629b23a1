"""Two nodes' admission adapters on one real Redis, driven step by step (one
controlled clock, explicit ordering): whenever any node's queue document says
a ticket's turn has come, every node admits it.

The loaded-CI failure this pins down: node B's queue.json said
``admitting_through=1`` and B then answered ticket 1 "not_your_turn". Two ways
there, each made deterministic here: a node's view one tick behind the node
that moved the line, and a slow tick (longer than the tick lock) writing an
older line over a newer one.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.scale.conftest import REDIS_URL, unreachable
from townhall.config import Settings
from townhall.policy.admission import QueueState
from townhall.policy.tickets import TicketSigner
from townhall.policy.tokens import TokenSigner
from townhall.server.admission import Admission, Admitted, Queued
from townhall.store.admission import RedisAdmission
from townhall.store.space_index import SpaceIndex

KEY = b"k" * 32
SPACE = "s1"
TICK_MS = 20  # the tick lock lives 18 ms: a "slow tick" is one that outlives it


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now_s


class HeldCount(RedisAdmission):
    """Redis admission whose next snapshot (inside a tick) waits for a gate:
    the tick has read the line and the count, then stalls."""

    gate: asyncio.Event | None = None
    stalled: asyncio.Event

    async def snapshot(self, space_id: str, now_s: float) -> tuple[QueueState, int]:
        found = await super().snapshot(space_id, now_s)
        gate, self.gate = self.gate, None
        if gate is not None:
            self.stalled.set()
            await gate.wait()
        return found

    def hold(self) -> asyncio.Event:
        self.gate, self.stalled = asyncio.Event(), asyncio.Event()
        return self.gate


@pytest.fixture
async def redis() -> AsyncIterator[tuple[Any, str]]:
    import redis.asyncio as aioredis

    client: Any = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        unreachable("Redis", REDIS_URL, exc, "TOWNHALL_TEST_REDIS_URL")
    prefix = f"townhall-test-{secrets.token_hex(4)}:"
    try:
        yield client, prefix
    finally:
        keys = await client.keys(prefix + "*")
        if keys:
            await client.delete(*keys)
        await client.aclose()


def node(redis: tuple[Any, str], clock: Clock, tmp_path: Path) -> tuple[Admission, HeldCount]:
    client, prefix = redis
    settings = Settings(
        data_dir=tmp_path / "data",
        max_listeners=1,
        admit_rate_per_s=10,
        queue_interval_ms=100,
        ticket_claim_s=30,
    )
    index = SpaceIndex()
    index.put(SPACE, "live", "public")
    store = HeldCount(client, prefix=prefix, tick_ms=TICK_MS)
    admission = Admission(
        settings,
        store,
        TokenSigner([KEY], clock=clock),
        TicketSigner([KEY], 600, clock=clock),
        index,
        clock=clock,
    )
    return admission, store


async def through(admission: Admission) -> int:
    entry = admission.index.get(SPACE)
    assert entry is not None
    doc = await admission.document(SPACE, entry)
    return int(orjson.loads(doc.body)["admitting_through"])


async def full_space_with_ticket_1(a: Admission) -> tuple[Admitted, Queued]:
    entry = a.index.get(SPACE)
    assert entry is not None
    listener = await a.admit(SPACE, entry, "listener")
    queued = await a.admit(SPACE, entry, "waiting")
    assert isinstance(listener, Admitted) and isinstance(queued, Queued)
    assert queued.number == 1 and queued.code == "full"
    return listener, queued


async def exchange(admission: Admission, queued: Queued) -> Admitted | Queued:
    entry = admission.index.get(SPACE)
    assert entry is not None
    ticket = admission.tickets.verify(queued.ticket, SPACE)
    return await admission.admit(SPACE, entry, "waiting", ticket=ticket)


async def lock_expires() -> None:
    await asyncio.sleep(3 * TICK_MS / 1000)


async def test_a_node_one_tick_behind_admits_a_ticket_another_node_called(
    redis: tuple[Any, str], tmp_path: Path
) -> None:
    clock = Clock()
    (a, _), (b, _) = node(redis, clock, tmp_path / "a"), node(redis, clock, tmp_path / "b")
    listener, queued = await full_space_with_ticket_1(a)
    assert await through(b) == 0  # B's view: nobody called
    await a.leave(SPACE, listener.claims)
    clock.now_s += 1
    await lock_expires()
    await a.tick()
    assert await through(a) == 1  # A publishes: ticket 1's turn has come
    # B has not ticked since: its own view still says 0, yet it must admit
    answer = await exchange(b, queued)
    assert isinstance(answer, Admitted), answer
    assert await through(b) == 1  # and B's own document now agrees


async def test_a_slow_tick_never_moves_the_line_back(
    redis: tuple[Any, str], tmp_path: Path
) -> None:
    clock = Clock()
    (a, a_store), (b, _) = node(redis, clock, tmp_path / "a"), node(redis, clock, tmp_path / "b")
    c, _ = node(redis, clock, tmp_path / "c")
    listener, queued = await full_space_with_ticket_1(a)
    await lock_expires()
    clock.now_s += 1
    # A's tick takes the lock, reads the line (nobody called) and the count
    # (the space full), then stalls past its lock
    gate = a_store.hold()
    slow = asyncio.create_task(a.tick())
    await a_store.stalled.wait()
    await b.leave(SPACE, listener.claims)
    await lock_expires()
    await b.tick()  # B moves the line: ticket 1 called, and publishes it
    assert await through(b) == 1
    gate.set()  # A's tick wakes up with its old reading and tries to write it
    await slow
    # nobody's document goes back, and ticket 1 is admitted wherever it goes
    assert await through(a) == 1
    assert await through(c) == 1
    answer = await exchange(a, queued)
    assert isinstance(answer, Admitted), answer
