"""The segment bus on Redis Streams: the owner's writer and a follower's reader.

Keys of one room (``<prefix>bus:<space_id>`` and three beside it)::

    ...bus:<id>         the stream, trimmed to about ``max_entries`` (XADD MAXLEN ~)
    ...bus:<id>:meta    the current epoch's start (kind, header, data of its entry)
    ...bus:<id>:rec     every segment record, in order (a joining node's history)
    ...bus:<id>:seq     the room's entry counter

Every write is one script that first checks the writer's fencing token
against the room's lease (``store/lease.py``; an empty token skips the check,
for deployments without leases), then numbers the entry, appends it, keeps
the meta and the records in step, and refreshes the keys' expiry. A follower
reads the four keys at one instant (one script) to start or resync, then
follows with XREAD BLOCK on a connection of its own.

:class:`BusPublisher` is the owner's side: ``offer`` never waits (a bounded
queue, drops counted); its task writes the entries in order. When Redis
answers that the room's meta is gone (Redis restarted empty), the publisher
writes the meta and the records again, so nodes joining later have history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from townhall import metrics
from townhall.config import Settings
from townhall.errors import TownhallError
from townhall.origin.bus import (
    Entry,
    EpochStart,
    Message,
    SegmentEnded,
    Snapshot,
    decode,
    decode_entry,
    decode_record,
    encode,
    encode_record,
)
from townhall.store.lease import lease_key
from townhall.store.recordings import SegmentRecord

log = logging.getLogger("townhall.store")

_WRITE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[1] then
  return redis.error_reply('FENCED this node no longer holds the room')
end
local seq = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 's', seq, 'k', ARGV[3], 'h', ARGV[4], 'd', ARGV[5])
if ARGV[3] == 'e' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'k', ARGV[3], 'h', ARGV[4], 'd', ARGV[5])
end
if ARGV[6] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[6]) end
local has_meta = redis.call('EXISTS', KEYS[2])
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
return {seq, has_meta}
"""

_RESTORE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[1] then
  return redis.error_reply('FENCED this node no longer holds the room')
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], 'k', ARGV[3], 'h', ARGV[4], 'd', ARGV[5])
for i = 6, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
for i = 2, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return 1
"""

_SNAPSHOT = """
return {
  redis.call('HGETALL', KEYS[2]),
  redis.call('LRANGE', KEYS[3], 0, -1),
  redis.call('XRANGE', KEYS[1], '-', '+'),
  redis.call('GET', KEYS[4])
}
"""


class Fenced(TownhallError):
    """This node's bus write was refused: another node holds the room now."""


def stream_key(prefix: str, space_id: str) -> str:
    return f"{prefix}bus:{space_id}"


def room_keys(prefix: str, space_id: str) -> list[str]:
    """stream, meta, records, seq, lease (the order the scripts expect)."""
    base = stream_key(prefix, space_id)
    return [base, f"{base}:meta", f"{base}:rec", f"{base}:seq", lease_key(prefix, space_id)]


def connect_blocking(settings: Settings) -> Any:
    """A client for followers' XREAD BLOCK: its socket timeout outlasts a block."""
    import redis.asyncio as aioredis

    timeout_s = (settings.bus_block_ms + settings.redis_timeout_ms) / 1000
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=settings.redis_timeout_ms / 1000,
    )
    return aioredis.Redis.from_pool(pool)


class BusWriter:
    """Fenced writes of one room's entries."""

    def __init__(
        self, redis: Any, *, prefix: str, space_id: str, max_entries: int, ttl_s: int
    ) -> None:
        self.redis = redis
        self.keys = room_keys(prefix, space_id)
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._write = redis.register_script(_WRITE)
        self._restore = redis.register_script(_RESTORE)

    async def write(self, message: Message, token: str) -> tuple[int, bool]:
        """Append ``message``: (its sequence number, whether the meta exists)."""
        kind, header, data = encode(message)
        record = encode_record(message.record) if isinstance(message, SegmentEnded) else b""
        args = [token, self.max_entries, kind, header, data, record, self.ttl_s]
        try:
            seq, has_meta = await self._write(keys=self.keys, args=args)
        except Exception as exc:
            if "FENCED" in str(exc):
                metrics.BUS_FENCED.inc()
                raise Fenced("Another node holds this room's lease now.") from None
            raise
        metrics.BUS_PUBLISHED.labels(kind=kind.decode()).inc()
        return int(seq), bool(has_meta)

    async def restore(self, meta: EpochStart, records: Sequence[SegmentRecord], token: str) -> None:
        """Write the meta and the records again (Redis came back empty)."""
        kind, header, data = encode(meta)
        args: list[Any] = [token, self.ttl_s, kind, header, data]
        args.extend(encode_record(r) for r in records)
        try:
            await self._restore(keys=self.keys, args=args)
        except Exception as exc:
            if "FENCED" in str(exc):
                metrics.BUS_FENCED.inc()
                raise Fenced("Another node holds this room's lease now.") from None
            raise


class BusPublisher:
    """The owner's side of one room's bus: ``offer`` queues, a task writes.

    ``token()`` gives the current fencing token ('' without leases);
    ``history`` the segment records from before this run (the publisher
    adds the ones it writes: a restore writes exactly what the bus carried).
    A refused write calls ``on_fenced`` once and stops the task.
    """

    def __init__(
        self,
        writer: BusWriter,
        *,
        max_queue: int,
        token: Callable[[], str],
        history: Sequence[SegmentRecord] = (),
        on_fenced: Callable[[], object] = lambda: None,
        retry_s: float = 0.3,
    ) -> None:
        self.writer = writer
        self._queue: asyncio.Queue[Message] = asyncio.Queue(max_queue)
        self._token = token
        self._records = list(history)
        self._meta: EpochStart | None = None
        self._on_fenced = on_fenced
        self.retry_s = retry_s
        self.dropped = 0
        self.fenced = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bus-publisher")

    def set_history(self, records: Sequence[SegmentRecord]) -> None:
        """The records from before this run (call before the first write)."""
        self._records = list(records)

    def offer(self, message: Message) -> None:
        """Queue ``message`` for the bus; never waits (drops when full)."""
        if self.fenced:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1
            metrics.BUS_DROPPED.inc()

    async def flush(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until everything queued was written."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._send(message)
            except Fenced:
                self.fenced = True
                log.warning("bus write refused: this node lost its room lease")
                self._on_fenced()
                return
            finally:
                self._queue.task_done()

    async def _send(self, message: Message) -> None:
        """Write one entry, retrying while Redis is away (the queue fills up
        meanwhile and newer entries are dropped: followers resync)."""
        while True:
            try:
                _, has_meta = await self.writer.write(message, self._token())
                if isinstance(message, EpochStart):
                    self._meta = message
                elif isinstance(message, SegmentEnded) and (
                    not self._records or self._records[-1].msn < message.record.msn
                ):
                    self._records.append(message.record)
                if not has_meta and self._meta is not None:
                    await self.writer.restore(self._meta, self._records, self._token())
                return
            except Fenced:
                raise
            except Exception as exc:
                metrics.BUS_FAILURES.labels(op="publish").inc()
                log.warning("bus write failed (%s); retrying", exc)
                await asyncio.sleep(self.retry_s)


class RedisBusReader:
    """A follower's reads of one room: a snapshot, then XREAD BLOCK."""

    def __init__(self, redis: Any, blocking: Any, *, prefix: str, space_id: str) -> None:
        self.redis = redis
        self.blocking = blocking
        self.keys = room_keys(prefix, space_id)
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._last_id = b"0-0"

    async def snapshot(self) -> Snapshot:
        raw_meta, raw_records, raw_entries, raw_seq = await self._snapshot(keys=self.keys[:4])
        meta = None
        if raw_meta:
            fields = dict(zip(raw_meta[::2], raw_meta[1::2], strict=True))
            message = decode(fields[b"k"], fields[b"h"], fields.get(b"d", b""))
            if isinstance(message, EpochStart):
                meta = message
        records = tuple(decode_record(r) for r in raw_records)
        entries = tuple(self._entries(raw_entries))
        self._last_id = raw_entries[-1][0] if raw_entries else b"0-0"
        last_seq = int(raw_seq) if raw_seq is not None else 0
        return Snapshot(meta, records, entries, last_seq)

    async def read(self, block_ms: int) -> list[Entry]:
        answer = await self.blocking.xread({self.keys[0]: self._last_id}, count=256, block=block_ms)
        entries: list[Entry] = []
        for _stream, items in answer or ():
            if items:
                self._last_id = items[-1][0]
            entries.extend(self._entries(items))
        return entries

    @staticmethod
    def _entries(items: Any) -> list[Entry]:
        out = []
        for _id, fields in items:
            if isinstance(fields, list):
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append(decode_entry(fields))
        return out
