"""One blocking read per node for every room it follows.

A node may follow many live rooms. One ``XREAD BLOCK`` per room would hold
one Redis connection and one waiting task per room; :class:`BusMux` holds
one: a single ``XREAD BLOCK`` naming every followed room's stream (each at
its own last id), whose answer is handed out to the rooms' readers.

:class:`MuxReader` is a room's :class:`~townhall.origin.follower.BusReader`
on the mux: ``snapshot`` reads the room's keys at one instant (as
:class:`~townhall.store.bus_redis.RedisBusReader` does) and moves the room's
position in the shared read; ``read`` returns what the mux delivered for it,
waiting at most ``block_ms``. Each room's buffer is bounded
(``max_entries``): a room whose follower does not keep up loses the oldest
entries, which its follower sees as a gap in the sequence numbers and
resyncs from a snapshot (counted). A room added while the read is blocked
joins it at once: the mux wakes its read through a stream of its own
(``<prefix>wake:<node>``, one entry, expiring).

A failed read is handed to every reader (their followers say they are behind
and resync), and the mux retries after ``retry_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from townhall import metrics
from townhall.origin.bus import Entry, Snapshot
from townhall.store.bus_redis import RedisBusReader

log = logging.getLogger("townhall.store")

_WAKE_TTL_S = 60


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class MuxReader(RedisBusReader):
    """One room's reads through the node's :class:`BusMux`."""

    def __init__(self, mux: BusMux, redis: Any, *, prefix: str, space_id: str) -> None:
        super().__init__(redis, mux.blocking, prefix=prefix, space_id=space_id)
        self.mux = mux
        self.stream = self.keys[0]
        self._buffer: deque[Entry] = deque()
        self._arrived = asyncio.Event()
        self._error: BaseException | None = None
        self.ready = False  # in the shared read once its first snapshot set its position
        self.dropped = 0

    @property
    def last_id(self) -> bytes:
        return bytes(self._last_id)

    async def snapshot(self) -> Snapshot:
        snapshot = await super().snapshot()
        self._buffer.clear()  # older than the snapshot, or delivered again after it
        self._error = None
        if not self.ready:
            self.ready = True
            self.mux.wake()
        return snapshot

    async def read(self, block_ms: int) -> list[Entry]:
        if not self._buffer and self._error is None:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), block_ms / 1000)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        out = list(self._buffer)
        self._buffer.clear()
        return out

    # -- the mux's side ----------------------------------------------------------

    def deliver(self, items: Any) -> None:
        """Entries of this room's stream from the shared read (ids past ours only:
        a snapshot may have moved us on while the read was in flight)."""
        mine = _stream_id(self._last_id)
        fresh = [item for item in items if _stream_id(item[0]) > mine]
        if not fresh:
            return
        self._last_id = fresh[-1][0]
        for entry in self._entries(fresh):
            if len(self._buffer) >= self.mux.max_entries:
                self._buffer.popleft()  # the follower sees the gap and resyncs
                self.dropped += 1
                metrics.BUS_FAILURES.labels(op="follow-buffer").inc()
            self._buffer.append(entry)
        self._arrived.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._arrived.set()


class BusMux:
    """The node's single blocking read of every followed room's stream."""

    def __init__(
        self,
        blocking: Any,
        redis: Any,
        *,
        prefix: str,
        node_id: str,
        block_ms: int,
        max_entries: int,
        retry_s: float = 0.5,
    ) -> None:
        self.blocking = blocking
        self.redis = redis
        self.prefix = prefix
        self.block_ms = block_ms
        self.max_entries = max_entries
        self.retry_s = retry_s
        self.wake_key = f"{prefix}wake:{node_id}"
        self._readers: dict[str, MuxReader] = {}  # by stream key
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pokes: set[asyncio.Task[None]] = set()
        self.reads = 0

    def reader(self, space_id: str) -> MuxReader:
        """A room's reader on the mux (its stream joins the shared read now)."""
        reader = MuxReader(self, self.redis, prefix=self.prefix, space_id=space_id)
        self._readers[reader.stream] = reader
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="townhall-bus-mux")
        return reader

    def remove(self, reader: MuxReader) -> None:
        if self._readers.get(reader.stream) is reader:
            del self._readers[reader.stream]

    @property
    def rooms(self) -> int:
        return len(self._readers)

    def wake(self) -> None:
        """A room joined: make the blocked read return so the next names it."""
        self._changed.set()
        if self._task is not None:
            task = asyncio.create_task(self._poke(), name="townhall-bus-mux-wake")
            self._pokes.add(task)
            task.add_done_callback(self._pokes.discard)

    async def _poke(self) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {b"w": b"1"}, maxlen=1, approximate=False)
                pipe.expire(self.wake_key, _WAKE_TTL_S)
                await pipe.execute()
        except Exception as exc:  # the read returns by itself within block_ms
            log.debug("could not wake the bus read: %s", exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            readers = {key: r for key, r in self._readers.items() if r.ready}
            if not readers:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            streams: dict[Any, Any] = {key: r.last_id for key, r in readers.items()}
            streams[self.wake_key] = b"$"
            try:
                answer = await self.blocking.xread(streams, count=256, block=self.block_ms)
                self.reads += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.BUS_FAILURES.labels(op="follow").inc()
                for reader in readers.values():
                    reader.fail(exc)
                await asyncio.sleep(self.retry_s)
                continue
            for stream, items in answer or ():
                key = stream.decode() if isinstance(stream, bytes) else str(stream)
                target = self._readers.get(key)
                if target is not None and items:
                    target.deliver(items)
