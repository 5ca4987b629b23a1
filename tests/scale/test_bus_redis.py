"""The segment bus on a real Redis: a follower that reads the stream answers
like the owner; only the lease's holder can write; a follower behind the
bounded stream resyncs; Redis restarted mid-room (a redis-server of the
test's own) loses nothing that plays twice or out of order."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.scale.conftest import REDIS_URL
from tests.scale.owner import PARTS, WINDOW_SEGMENTS, FakeOwner, same_answers
from townhall.origin.bus import EpochStart, Message
from townhall.origin.follower import Follower, FollowerState, Gap
from townhall.store.bus_redis import BusPublisher, BusWriter, Fenced, RedisBusReader
from townhall.store.lease import Leases
from townhall.store.recordings import SegmentRecord

pytestmark = [pytest.mark.redis]

SPACE = "room1"


def client(url: str = REDIS_URL, timeout_s: float = 3.0) -> Any:
    import redis.asyncio as aioredis

    return aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Any]:
    r = client()
    try:
        yield r
    finally:
        await r.aclose()


def writer(r: Any, prefix: str, max_entries: int = 1000) -> BusWriter:
    return BusWriter(r, prefix=prefix, space_id=SPACE, max_entries=max_entries, ttl_s=600)


def follower_of(r: Any, blocking: Any, prefix: str) -> tuple[Follower, list[SegmentRecord]]:
    recorded: list[SegmentRecord] = []
    state = FollowerState(
        window_segments=WINDOW_SEGMENTS, on_segment=lambda rec, data: recorded.append(rec)
    )
    reader = RedisBusReader(r, blocking, prefix=prefix, space_id=SPACE)
    return Follower(SPACE, state, reader, block_ms=200, retry_s=0.1), recorded


async def until(ok: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def publish(w: BusWriter, messages: list[Message], token: str = "") -> None:
    for m in messages:
        await w.write(m, token)


async def test_follower_answers_like_the_owner(redis: Any, redis_prefix: str) -> None:
    owner = FakeOwner()
    w = writer(redis, redis_prefix)
    owner.parts(PARTS + 1)
    await publish(w, owner.messages)
    blocking = client()
    follower, recorded = follower_of(redis, blocking, redis_prefix)
    follower.start()
    try:
        await asyncio.wait_for(follower.synced.wait(), 5)
        sent = len(owner.messages)
        owner.parts(PARTS * 4)
        # a parked blocking reload on the follower is answered by the bus's part
        window = follower.window
        assert window is not None
        waiting = asyncio.create_task(window.wait_for((window.open_msn, 3), 5))
        await publish(w, owner.messages[sent:])
        assert await waiting
        await until(
            lambda: (
                follower.window is not None and follower.window.position == owner.window.position
            )
        )
        same_answers(owner.window, follower.window)  # type: ignore[arg-type]
        assert recorded == list(owner.window.history)
    finally:
        await follower.stop()
        await blocking.aclose()


async def test_only_the_lease_holder_writes(redis: Any, redis_prefix: str) -> None:
    a = Leases(redis, prefix=redis_prefix, node_id="a", ttl_ms=300)
    b = Leases(redis, prefix=redis_prefix, node_id="b", ttl_ms=300)
    lease_a = await a.acquire(SPACE)
    assert lease_a is not None and await b.acquire(SPACE) is None
    w = writer(redis, redis_prefix)
    owner = FakeOwner()
    await publish(w, owner.messages, lease_a.token)
    await asyncio.sleep(0.4)  # a's lease lapses (paused, cut off)
    lease_b = await b.acquire(SPACE)
    assert lease_b is not None and lease_b.number > lease_a.number
    # both believe they own the room: only b's writes land
    owner.parts(1)
    with pytest.raises(Fenced):
        await w.write(owner.messages[-1], lease_a.token)
    assert not await a.renew(lease_a) and not await a.release(lease_a)
    seq, _ = await w.write(owner.messages[-1], lease_b.token)
    assert seq == 2
    assert await b.renew(lease_b)
    assert await b.holder(SPACE) == lease_b.token


async def test_publisher_stops_once_fenced(redis: Any, redis_prefix: str) -> None:
    leases = Leases(redis, prefix=redis_prefix, node_id="a", ttl_ms=10_000)
    lease = await leases.acquire(SPACE)
    assert lease is not None
    fenced: list[bool] = []
    owner = FakeOwner()
    token = [lease.token]
    pub = BusPublisher(
        writer(redis, redis_prefix),
        max_queue=16,
        token=lambda: token[0],
        on_fenced=lambda: fenced.append(True),
    )
    pub.start()
    try:
        for m in owner.messages:
            pub.offer(m)
        await pub.flush(5)
        token[0] = "7:someone-else"
        owner.parts(1)
        pub.offer(owner.messages[-1])
        await until(lambda: bool(fenced))
        pub.offer(owner.messages[-1])  # ignored from now on
        assert pub.fenced
    finally:
        await pub.stop()


async def test_follower_behind_the_stream_resyncs(redis: Any, redis_prefix: str) -> None:
    keep = (WINDOW_SEGMENTS + 2) * (PARTS + 1)
    w = writer(redis, redis_prefix, max_entries=keep)
    owner = FakeOwner()
    owner.parts(PARTS)
    await publish(w, owner.messages)
    reader = RedisBusReader(redis, redis, prefix=redis_prefix, space_id=SPACE)
    state = FollowerState(window_segments=WINDOW_SEGMENTS)
    assert state.restore(await reader.snapshot())
    sent = len(owner.messages)
    owner.parts(PARTS * 40)  # far more than the stream keeps
    await publish(w, owner.messages[sent:])
    # the next read skips what was trimmed: the sequence numbers show the gap
    read = await reader.read(100)
    with pytest.raises(Gap):
        state.apply(read[0])
    follower = Follower(SPACE, state, reader, block_ms=100)
    follower.start()
    try:
        await until(
            lambda: state.window is not None and state.window.position == owner.window.position
        )
        assert state.statistics().resyncs == 1 and state.statistics().gaps == 1
        same_answers(owner.window, state.window)  # type: ignore[arg-type]
    finally:
        await follower.stop()


# ------------------------------------------------------- Redis restarted mid-room


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own, without persistence (a restart loses
    everything), that the test may stop and start again on the same port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = free_port()

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        proc: subprocess.Popen[bytes] | None = None

        def start(self) -> None:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp_path),
                ],
                stdout=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    import socket

                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("redis-server did not start")

        def kill(self) -> None:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait(5)
                self.proc = None

    server = Server()
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_redis_restarted_mid_room(own_redis: Any) -> None:
    r, blocking = client(own_redis.url, 0.5), client(own_redis.url, 1.0)
    owner = FakeOwner()
    meta = owner.messages[0]
    assert isinstance(meta, EpochStart)
    pub = BusPublisher(
        BusWriter(r, prefix="t:", space_id=SPACE, max_entries=1000, ttl_s=600),
        max_queue=1000,
        token=lambda: "",
        retry_s=0.05,
    )
    follower, recorded = follower_of(r, blocking, "t:")
    pub.start()
    try:
        owner.parts(PARTS * 2 + 1)
        for m in owner.messages:
            pub.offer(m)
        await pub.flush(5)
        follower.start()
        await until(
            lambda: (
                follower.window is not None and follower.window.position == owner.window.position
            )
        )
        own_redis.kill()
        sent = len(owner.messages)
        owner.parts(PARTS)  # published while Redis is away: queued by the owner
        for m in owner.messages[sent:]:
            pub.offer(m)
        await until(lambda: follower.status.behind_since_s is not None)  # says it is behind
        own_redis.start()  # back, empty
        await pub.flush(10)
        sent = len(owner.messages)
        owner.parts(PARTS * 2)
        for m in owner.messages[sent:]:
            pub.offer(m)
        await until(
            lambda: (
                follower.window is not None and follower.window.position == owner.window.position
            ),
            15,
        )
        same_answers(owner.window, follower.window)  # type: ignore[arg-type]
        msns = [rec.msn for rec in recorded]
        assert msns == sorted(set(msns))  # nothing twice, nothing out of order
        assert recorded == list(owner.window.history)
        # a node joining now still gets the whole history (the owner restored it)
        late = RedisBusReader(r, r, prefix="t:", space_id=SPACE)
        snap = await late.snapshot()
        assert snap.meta == meta and list(snap.records) == list(owner.window.history)
    finally:
        await follower.stop()
        await pub.stop()
        await r.aclose()
        await blocking.aclose()
